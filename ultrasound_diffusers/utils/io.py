"""Atomic file and directory writes.

Nothing the package writes should be left half-written when a process is
interrupted: files are written to a temporary sibling and moved into place with
:func:`os.replace`, which is atomic on POSIX and Windows for paths on the same
file system. Directories (a saved ``datasets.Dataset``, a pipeline folder) are
written into a temporary sibling directory and swapped in at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; move it onto ``path`` only if the block succeeds.

    Example::

        with atomic_write("out/report.json", "w") as f:
            json.dump(report, f)
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"`mode` must be 'w', 'wt' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def replace_directory(build: Callable[[Path], None], target: PathLike, overwrite: bool = True) -> Path:
    """Build a directory with ``build(tmp_dir)`` and move it onto ``target`` in one step.

    The temporary directory is a sibling of ``target`` (same file system). If
    ``build`` raises, the temporary directory is removed and ``target`` is left
    as it was. With ``overwrite=False`` an existing ``target`` raises
    ``FileExistsError``.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        build(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_save_to_disk(dataset, target: PathLike, overwrite: bool = True, **kwargs) -> Path:
    """``dataset.save_to_disk`` into a temporary sibling directory, then swap it onto ``target``."""
    return replace_directory(lambda tmp: dataset.save_to_disk(str(tmp), **kwargs), target, overwrite=overwrite)
