"""Argument types and flags shared by the sub-commands (not a command: modules starting with ``_`` are skipped)."""

from __future__ import annotations

import argparse
import math
from typing import Optional

from ..image_processor import parse_size


def add_command(subparsers, name: str, help: str, doc: str) -> argparse.ArgumentParser:
    """The parser of sub-command ``name`` whose ``--help`` shows ``doc`` (the command module's docstring, with its
    line breaks and lists kept as written)."""
    return subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def size_type(flag: str = "--size"):
    """An argparse ``type`` for ``N`` or ``HxW`` / ``H,W`` (see :func:`~ultrasound_diffusers.image_processor.parse_size`)."""

    def parse(text: str):
        try:
            return parse_size(text, argument=flag)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def finite_float(flag: str, minimum: Optional[float] = None, exclusive: bool = False):
    """An argparse ``type`` for a finite float (``nan`` and ``inf`` refused, naming ``flag``), optionally
    ``>= minimum`` (``> minimum`` with ``exclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise argparse.ArgumentTypeError(f"{flag} must be {'>' if exclusive else '>='} {minimum:g}, got {text!r}")
        return value

    return parse


def add_dataset_output_arguments(p: argparse.ArgumentParser) -> None:
    """``--push_to_hub``, ``--hub_dataset_id``, ``--private`` and ``--overwrite`` of the commands that write a dataset."""
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_dataset_id", default=None, help="Hub dataset repo id for --push_to_hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty output folder that this command did not write (never the working "
                   "directory, a parent of it, or a folder holding an input)")
