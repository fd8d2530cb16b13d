"""The ``ultrasound-diffusers`` console script.

Sub-commands live one per module in :mod:`ultrasound_diffusers.commands`
(see that package's docstring); this module only discovers and dispatches them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

from . import commands as _commands_pkg


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog="ultrasound-diffusers",
        description="Physics-inspired diffusion models for ultrasound imaging (B-map schedules, semantic diffusion).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(_commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_commands_pkg.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return run_reporting_errors(f"ultrasound-diffusers {args.command}", func, args)


def run_reporting_errors(prog: str, func, *args) -> int:
    """``func(*args)`` as a command: a failure caused by the user's input (:data:`EXPECTED_ERRORS`) is one line on
    stderr, ``PROG: error: ...``, and exit code 2 (like argparse); a write the disk refused (full, read-only) is one
    line and exit code 1; anything else is a bug and keeps its traceback."""
    from .utils.io import write_failure_message

    try:
        code = func(*args)
    except EXPECTED_ERRORS as err:
        message = write_failure_message(err) if isinstance(err, PermissionError) else None
        print(f"{prog}: error: {message or err}", file=sys.stderr)
        return 2
    except Exception as err:
        message = write_failure_message(err)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    return int(code or 0)


#: Failures caused by the user's input: one line on stderr and exit code 2 (like argparse). Anything else is a
#: bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                   PermissionError)


def console_main() -> int:
    """The ``ultrasound-diffusers`` executable: :func:`main`, then :func:`settle_before_exit` (the process ends
    next, so the interpreter's exit need not walk every object of torch and diffusers again: 0.8 s saved per
    command). Call :func:`main` from Python code that goes on running."""
    from .utils.garbage_collection import settle_before_exit

    try:
        return main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        settle_before_exit()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
