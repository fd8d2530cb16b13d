"""Atomic writes: all or nothing, usual permissions."""

import os
import stat

import pytest

from ultrasound_diffusers.utils.io import atomic_write, atomic_write_text, replace_directory


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "a" / "report.txt"
    atomic_write_text(path, "first")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.txt"]


def test_atomic_write_gives_usual_permissions(tmp_path):
    path = atomic_write_text(tmp_path / "card.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_replace_directory_keeps_old_on_failure(tmp_path):
    target = tmp_path / "out"
    replace_directory(lambda d: (d / "x.txt").write_text("1"), target)

    def broken(d):
        (d / "y.txt").write_text("2")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        replace_directory(broken, target)
    assert [p.name for p in target.iterdir()] == ["x.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(FileExistsError):
        replace_directory(lambda d: None, target, overwrite=False)
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "z", "a"):
            pass


def test_build_wheel_refuses_a_folder_without_the_source(tmp_path):
    from ultrasound_diffusers.utils.packaging import build_wheel, source_root

    assert source_root() is not None and (source_root() / "setup.cfg").is_file()  # the tests run from the source
    with pytest.raises(ValueError, match="source folder"):
        build_wheel(tmp_path / "dist", root=tmp_path)
