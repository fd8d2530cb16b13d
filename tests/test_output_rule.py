"""The one output rule, walked over every command that writes: a folder or file the user owns is never replaced
without --overwrite, and never the working directory, a parent of it or a folder holding an input, even with it.

Each case builds the command line for a target folder; the rule is checked before any work, so every case here
ends in milliseconds to seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ultrasound_diffusers.cli import build_parser, main
from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH

ROOT = Path(__file__).resolve().parents[1]


def _inputs(tmp: Path) -> dict:
    """Small input files and folders the commands read (created once per test)."""
    (tmp / "in").mkdir(exist_ok=True)
    (tmp / "in" / "ckpt.pt").write_bytes(b"not really a checkpoint")
    (tmp / "in" / "maps").mkdir(exist_ok=True)
    return {"ckpt": tmp / "in" / "ckpt.pt", "maps": tmp / "in" / "maps"}


#: command -> (argv builder for an output folder, the flag that replaces). Every writing command is here.
FOLDER_WRITERS = {
    "phantoms": (lambda out, i: ["phantoms", "--num_images", "2", "--output_dir", str(out)], "--overwrite"),
    "prepare": (lambda out, i: ["prepare", "lung", "--input", str(i["maps"]), "--output_dir", str(out)], "--overwrite"),
    "generate": (lambda out, i: ["generate", "--pipeline", str(DEMO_PIPELINE_PATH), "--labels", "phantoms:echo:2",
                                 "--num_inference_steps", "2", "--output_dir", str(out)], "--overwrite"),
    "evaluate": (lambda out, i: ["evaluate", "--real", "phantoms:echo:4", "--generated", "phantoms:echo:4:7",
                                 "--output_dir", str(out)], "--overwrite"),
    "convert": (lambda out, i: ["convert", "--checkpoint", str(i["ckpt"]), "--num_head_channels", "32",
                                "--output_dir", str(out)], "--overwrite"),
    "demo": (lambda out, i: ["demo", "--num_inference_steps", "2", "--num_images", "1", "--output_dir", str(out)],
             "--overwrite"),
    "reconstruct": (lambda out, i: ["reconstruct", "--num_inference_steps", "2", "--output_dir", str(out)],
                    "--overwrite"),
    "app": (lambda out, i: ["app", "--export_space", str(out)], "--overwrite"),
}
#: Commands that write one file.
FILE_WRITERS = {
    "bmaps": (lambda out, i: ["bmaps", "--size", "16", "--num", "2", "--out", str(out)], "--overwrite"),
}


def test_every_command_is_covered():
    """A new command must join one of the tables (and so the rule) before this passes."""
    parser = build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    assert commands == set(FOLDER_WRITERS) | set(FILE_WRITERS)


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


@pytest.mark.parametrize("command", sorted(FOLDER_WRITERS))
def test_a_users_folder_needs_overwrite(command, tmp_path, capsys):
    inputs = _inputs(tmp_path)
    folder = _user_folder(tmp_path)
    build, _ = FOLDER_WRITERS[command]
    assert main(build(folder, inputs)) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(folder) in err
    assert (folder / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize("command", sorted(FOLDER_WRITERS))
def test_never_the_working_directory_or_a_parent_even_with_overwrite(command, tmp_path, monkeypatch, capsys):
    inputs = _inputs(tmp_path)
    work = _user_folder(tmp_path)
    monkeypatch.chdir(work)
    build, flag = FOLDER_WRITERS[command]
    for target in (Path("."), work, tmp_path):
        assert main(build(target, inputs) + [flag]) == 2
        assert "working directory" in capsys.readouterr().err
    assert (work / "thesis.txt").read_text() == "years of work"
    assert inputs["ckpt"].read_bytes() == b"not really a checkpoint"


def test_convert_never_replaces_the_folder_holding_its_checkpoint(tmp_path, capsys):
    inputs = _inputs(tmp_path)
    assert main(FOLDER_WRITERS["convert"][0](inputs["ckpt"].parent, inputs) + ["--overwrite"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert inputs["ckpt"].read_bytes() == b"not really a checkpoint"


def test_a_users_file_needs_overwrite(tmp_path, capsys):
    from PIL import Image

    mine = tmp_path / "holiday.png"
    Image.new("L", (4, 4), 7).save(mine)
    before = mine.read_bytes()
    build, _ = FILE_WRITERS["bmaps"]
    assert main(build(mine, {})) == 2
    assert "--overwrite" in capsys.readouterr().err and mine.read_bytes() == before
    assert main(build(tmp_path, {})) == 2  # a folder is never a file output
    # a figure this package wrote is replaced on a rerun without the flag
    ours = tmp_path / "bmaps.png"
    assert main(build(ours, {})) == 0 and main(build(ours, {})) == 0
    assert main(build(mine, {}) + ["--overwrite"]) == 0 and mine.read_bytes() != before


def test_phantoms_preview_follows_the_file_rule(tmp_path, capsys):
    mine = tmp_path / "grid.png"
    mine.write_bytes(b"\x89PNG user's own")
    argv = ["phantoms", "--num_images", "2", "--size", "16", "--png_dir", str(tmp_path / "png"), "--preview", str(mine)]
    assert main(argv) == 2 and "--preview" in capsys.readouterr().err
    assert mine.read_bytes() == b"\x89PNG user's own" and not (tmp_path / "png").exists()


def test_training_follows_the_rule(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "training"))
    try:
        import train_semantic
    finally:
        sys.path.remove(str(ROOT / "training"))
    folder = _user_folder(tmp_path)
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        train_semantic.parse_args(["--dataset_name", "phantoms:echo", "--output_dir", str(folder)])
    monkeypatch.chdir(folder)
    with pytest.raises(ValueError, match="working directory"):
        train_semantic.parse_args(["--dataset_name", "phantoms:echo", "--output_dir", ".", "--overwrite_output_dir"])
    # a run folder (only what a run writes) is resumed without the flag
    run = tmp_path / "run"
    (run / "checkpoint-10").mkdir(parents=True)
    (run / "logs").mkdir()
    train_semantic.parse_args(["--dataset_name", "phantoms:echo", "--output_dir", str(run)])
    assert (folder / "thesis.txt").read_text() == "years of work"


def test_demo_rerun_replaces_its_own_folder(tmp_path):
    out = tmp_path / "demo"
    argv = FOLDER_WRITERS["demo"][0](out, {})
    assert main(argv) == 0
    first = sorted(p.name for p in out.iterdir())
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == first and "demo.png" in first


def test_disk_refusals_are_one_line(tmp_path, monkeypatch, capsys):
    """A full or read-only disk ends in one line naming the cause (exit 1), never a traceback."""
    import errno
    import os

    from ultrasound_diffusers.utils import io as io_module

    def refuse(build, target, overwrite=True, kind=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(io_module, "replace_directory", refuse)
    code = main(["phantoms", "--num_images", "2", "--size", "16", "--png_dir", str(tmp_path / "png")])
    err = capsys.readouterr().err
    assert code == 1 and "disk is full" in err and "Traceback" not in err
    assert io_module.write_failure_message(OSError(errno.EROFS, "Read-only file system", "x")).startswith("cannot write x")
    assert io_module.write_failure_message(RuntimeError("a bug")) is None


@pytest.mark.parametrize("command", sorted(FOLDER_WRITERS) + sorted(FILE_WRITERS))
def test_an_unwritable_target_is_refused_before_any_work(command, tmp_path, monkeypatch, capsys):
    """A target under a file (or any place the disk refuses) ends in one line naming the flag, at once: before
    the command's work (demo, reconstruct, generate would otherwise sample first and fail on the write)."""
    from ultrasound_diffusers.utils import io as io_module

    inputs = _inputs(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    build, _ = {**FOLDER_WRITERS, **FILE_WRITERS}[command]
    target = blocker / ("out.png" if command in FILE_WRITERS else "out")
    work = []
    monkeypatch.setattr(io_module, "replace_directory", lambda *a, **k: work.append("wrote"))
    assert main(build(target, inputs)) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Not a directory" in err and str(target) in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder" and not work


def test_write_probe_names_a_read_only_disk(tmp_path, monkeypatch):
    import errno
    import os

    from ultrasound_diffusers.utils import io as io_module

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(io_module.tempfile, "mkdtemp", read_only)
    with pytest.raises(ValueError, match=r"--output_dir .*new cannot be written \(in .*, where it would be made\): the file system is read-only"):
        io_module.check_output_dir(tmp_path / "new", "phantoms")
    with pytest.raises(ValueError, match="--out .*x.png cannot be written: the file system is read-only"):
        io_module.check_output_file(tmp_path / "x.png", argument="--out")
    monkeypatch.undo()
    io_module.check_output_dir(tmp_path / "new", "phantoms")  # a writable place passes and leaves nothing behind
    assert list(tmp_path.iterdir()) == []
