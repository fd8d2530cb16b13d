"""Atomic file and directory writes.

Nothing the package writes should be left half-written when a process is
interrupted: files are written to a temporary sibling and moved into place with
:func:`os.replace`, which is atomic on POSIX and Windows for paths on the same
file system. Directories (a saved ``datasets.Dataset``, a pipeline folder) are
written into a temporary sibling directory and swapped in at the end.

Every command that writes a folder follows one rule, :func:`check_output_dir`, checked before any work: a
folder is replaced only if it is new, empty, or was written by the same command (a small marker file,
:data:`MARKER_NAME`, says which); anything else needs ``--overwrite``, and even then the working directory, a
parent of it, and a folder that contains one of the command's inputs are never replaced. Temporaries left by
an interrupted write (siblings named ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` and ``.NAME.PID.*.tmp``) are
removed by the next write to the same place once their process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

#: Name of the marker file that records which command wrote a folder.
MARKER_NAME = ".ultrasound-diffusers.json"

# Temporaries made by this module carry the writing process's id, so a later run can tell a leftover of a
# dead process from the work of a live one.
# Version 0.1.0 named them without the process id (``.NAME.tmp-HEX8``, ``.NAME.RANDOM.tmp``); those count as stale.
_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$|^\.(?P<fname>.+)\.(?P<fpid>\d+)\.[^.]+\.tmp$")
_LEGACY_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-[0-9a-f]{8}$|^\.(?P<fname>.+)\.[a-z0-9_]{8}\.tmp$")


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
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: PathLike, name: Optional[str] = None) -> list:
    """Remove temporaries of this module left in ``folder`` by processes that no longer run.

    Args:
        folder: the folder to clean (not recursive).
        name: only leftovers of writes to ``folder/name`` (default: of any entry).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_PATTERN.match(entry.name)
        legacy = _LEGACY_TEMP_PATTERN.match(entry.name) if match is None else None
        if match is None and legacy is None:
            continue
        if match is not None:
            owner = match.group("name") or match.group("fname")
            alive = _pid_alive(int(match.group("pid") or match.group("fpid")))
        else:
            owner, alive = legacy.group("name") or legacy.group("fname"), False
        if (name is not None and owner != name) or alive:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def read_marker(folder: PathLike) -> Optional[dict]:
    """The marker a command of this package left in ``folder`` (None if there is none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: PathLike, kind: str) -> None:
    """Record in ``folder`` that the command ``kind`` wrote it."""
    from ..version import __version__

    (Path(folder) / MARKER_NAME).write_text(
        json.dumps({"written_by": "ultrasound-diffusers", "kind": kind, "version": __version__}) + "\n", encoding="utf-8"
    )


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(
    target: PathLike,
    kind: str,
    *,
    inputs: Iterable[Optional[PathLike]] = (),
    overwrite: bool = False,
    replace_own: bool = True,
    argument: str = "--output_dir",
    own_entries: Optional[Callable[[str], bool]] = None,
) -> Path:
    """Refuse an output folder that a write of the command ``kind`` must not replace; call it before any work.

    Allowed: a folder that does not exist, an empty folder, and (if ``replace_own``) a folder whose marker says
    ``kind`` wrote it. Anything else needs ``overwrite=True``. Never allowed, whatever ``overwrite`` says: an
    existing file, the working directory or a parent of it, and a folder that is or contains one of ``inputs``.

    A resumable writer (training, generation) that fills its folder over time passes ``own_entries``, a test of an
    entry name: a folder whose entries all pass it is that writer's own, marker or not; a folder with any other
    entry is the user's and needs ``overwrite``.

    Args:
        target: the output folder.
        kind: the writing command (``"phantoms"``, ``"prepare"``, ``"evaluate"``, ...), stored in the marker.
        inputs: paths the command reads (None entries and non-paths such as Hub ids are ignored).
        overwrite: replace a non-empty folder that another command or the user wrote.
        replace_own: replace a folder this command wrote before without ``overwrite``.
        argument: the flag or parameter name used in error messages.

    Returns:
        ``target`` as a ``Path``.

    Raises:
        ValueError: naming ``argument``, the folder and what to do instead.
    """
    path = Path(target)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{argument} {path} exists and is not a folder; give a folder path")
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, resolved):
        raise ValueError(
            f"{argument} {path} is the working directory or a parent of it; it is never replaced: give a new folder"
        )
    for item in inputs:
        if item is None or not isinstance(item, (str, os.PathLike)):
            continue
        candidate = Path(item)
        if not candidate.exists():
            continue
        if _is_within(candidate.resolve(), resolved):
            raise ValueError(
                f"{argument} {path} contains the input {item}; writing there would delete it: give another folder"
            )
    check_writable(path, argument)
    if not path.is_dir() or not any(path.iterdir()):
        return path
    marker = read_marker(path)
    if replace_own and marker is not None and marker.get("kind") == kind:
        if own_entries is None or not foreign_entries(path, own_entries):
            return path
    elif own_entries is not None and not foreign_entries(path, own_entries):
        return path
    if overwrite:
        return path
    if not replace_own and marker is not None and marker.get("kind") == kind:
        raise ValueError(f"{argument} {path} exists (an earlier `{kind}` output); choose another folder")
    foreign = foreign_entries(path, own_entries) if own_entries is not None else []
    holds = f" (it holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})" if foreign else ""
    raise ValueError(
        f"{argument} {path} is not empty and was not written by `ultrasound-diffusers {kind}`{holds}; choose a new "
        "or empty folder, or pass --overwrite to replace it and everything in it"
    )


def check_writable(target: PathLike, argument: str = "--output_dir", shown: Optional[PathLike] = None) -> None:
    """Refuse, before any work, an output folder that cannot be written: a temporary folder is made and removed
    in ``target`` (when it exists) or in its nearest existing parent (where ``target`` will be made). A read-only
    or full disk, a parent that is a file, a path under ``/proc``: the command says so at once instead of after
    minutes of work. ``shown``: the path the message names (default ``target``; an output file's own name when
    ``target`` is its folder).

    Raises:
        ValueError: naming ``argument``, the folder and the reason.
    """
    path = Path(target).absolute()
    probe_in = path
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    try:
        if not probe_in.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe_in))
        os.rmdir(tempfile.mkdtemp(prefix=".ud-write-probe-", dir=probe_in))
    except OSError as err:
        reason = _WRITE_FAILURES.get(err.errno, os.strerror(err.errno) if err.errno else str(err))
        where = "" if probe_in == path else f" (in {probe_in}, where it would be made)"
        raise ValueError(f"{argument} {target if shown is None else shown} cannot be written{where}: {reason}; "
                         "choose another location") from err


def foreign_entries(folder: PathLike, own_entries: Callable[[str], bool]) -> list:
    """Names in ``folder`` that ``own_entries`` does not claim (the marker and this module's temporaries are
    always claimed), sorted."""
    names = []
    for entry in Path(folder).iterdir():
        name = entry.name
        if name == MARKER_NAME or _TEMP_PATTERN.match(name) or _LEGACY_TEMP_PATTERN.match(name) or own_entries(name):
            continue
        names.append(name)
    return sorted(names)


def check_output_file(
    target: PathLike,
    *,
    inputs: Iterable[Optional[PathLike]] = (),
    overwrite: bool = False,
    argument: str = "--out",
    suffixes: Optional[Iterable[str]] = None,
) -> Path:
    """The output rule for a command that writes one file (a figure, a report): call it before any work.

    Allowed: a path that does not exist (its folder is made when written), and a PNG figure this package wrote
    (its ``Software`` text says so). Any other existing file needs ``overwrite=True``; a folder, or a file that
    is one of ``inputs``, is never allowed.

    Raises:
        ValueError: naming ``argument``, the path and what to do instead.
    """
    path = Path(target)
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if path.suffix.lower() not in allowed:
            raise ValueError(f"{argument} {path} must end in {' or '.join(allowed)}")
    if path.is_dir():
        raise ValueError(f"{argument} {path} is a folder; give a file path")
    for item in inputs:
        if item is None or not isinstance(item, (str, os.PathLike)):
            continue
        if Path(item).exists() and Path(item).resolve() == path.resolve():
            raise ValueError(f"{argument} {path} is one of the command's inputs; writing there would destroy it")
    if path.exists() and not overwrite and not _package_figure(path):
        raise ValueError(f"{argument} {path} exists and was not written by ultrasound-diffusers; choose another file "
                         "name, or pass --overwrite to replace it")
    check_writable(path.absolute().parent, argument, shown=path)
    return path


def _package_figure(path: Path) -> bool:
    """Whether ``path`` is a PNG whose ``Software`` text names this package (see visualization.save_figure)."""
    if path.suffix.lower() != ".png":
        return False
    try:
        from PIL import Image

        with Image.open(path) as image:
            return str(getattr(image, "text", {}).get("Software", "")).startswith("ultrasound-diffusers")
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False


def write_output_folder(
    build: Callable[[Path], None],
    target: PathLike,
    kind: str,
    *,
    inputs: Iterable[Optional[PathLike]] = (),
    overwrite: bool = False,
    argument: str = "--output_dir",
    replace_own: bool = True,
) -> Path:
    """:func:`check_output_dir`, then ``build(tmp)`` into a temporary sibling that replaces ``target`` in one step
    (with the marker of ``kind``). For writers that make a whole folder at once and can check first: call
    :func:`check_output_dir` yourself before any long work, this once more at the end is cheap."""
    path = check_output_dir(target, kind, inputs=inputs, overwrite=overwrite, argument=argument, replace_own=replace_own)
    return replace_directory(build, path, overwrite=True, kind=kind)


def replace_directory(
    build: Callable[[Path], None], target: PathLike, overwrite: bool = True, kind: Optional[str] = None
) -> Path:
    """Build a directory with ``build(tmp_dir)`` and move it onto ``target`` in one step.

    The temporary directory is a sibling of ``target`` (same file system). If
    ``build`` raises, the temporary directory is removed and ``target`` is left
    as it was. With ``overwrite=False`` an existing ``target`` raises
    ``FileExistsError``. With ``kind`` the folder gets a marker saying which
    command wrote it (see :func:`check_output_dir`, which user-facing writers call first).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, target.name)
    pid = os.getpid()
    tmp = target.parent / f".{target.name}.tmp-{pid}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        build(tmp)
        if kind is not None:
            write_marker(tmp, kind)
        if target.exists():
            old = target.parent / f".{target.name}.old-{pid}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_save_to_disk(
    dataset, target: PathLike, overwrite: bool = True, kind: Optional[str] = None, extra_files=None, **kwargs
) -> Path:
    """``dataset.save_to_disk`` into a temporary sibling directory (with ``extra_files``, name -> text, beside
    it), then swap it onto ``target``."""

    def build(tmp: Path) -> None:
        dataset.save_to_disk(str(tmp), **kwargs)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return replace_directory(build, target, overwrite=overwrite, kind=kind)


#: errno values that mean the disk refused a write, not that the program is wrong.
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "the file is too large for the file system",
}


def write_failure_message(error: BaseException) -> Optional[str]:
    """A one-line message for a write the disk refused (full, read-only, over quota, no permission), found in
    ``error`` or its causes: an ``OSError`` with one of those errno values, or safetensors' ``SafetensorError``
    wrapping one. None for anything else (a bug keeps its traceback)."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_FAILURES:
            where = current.filename if current.filename is not None else "the output"
            return f"cannot write {where}: {_WRITE_FAILURES[current.errno]} ({os.strerror(current.errno)}); nothing " \
                   "half-written was left in place; free space or choose another output location"
        if type(current).__name__ == "SafetensorError":
            text = str(current)
            for code, reason in _WRITE_FAILURES.items():
                if os.strerror(code).lower() in text.lower():
                    return f"cannot write the weights: {reason} ({text.strip()}); free space or choose another " \
                           "output location"
        current = current.__cause__ or current.__context__
    return None
