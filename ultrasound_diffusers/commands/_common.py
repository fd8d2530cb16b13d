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


#: The largest seed the samplers and numpy accept.
MAX_SEED = 2**32 - 1


def int_range(flag: str, minimum: int = 1, maximum: Optional[int] = None):
    """An argparse ``type`` for an integer in ``[minimum, maximum]``, refused naming ``flag`` otherwise (counts,
    steps, batch sizes and seeds are checked when the command line is read, before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum:,}"
            raise argparse.ArgumentTypeError(f"{flag} must be an integer {bound}, got {text!r}")
        return value

    return parse


def device_type(flag: str = "--device"):
    """An argparse ``type`` for a torch device this build of torch can use (``cpu``, ``cuda[:N]`` with CUDA,
    ``mps`` on Apple silicon); anything else is refused naming ``flag`` and the devices that are there."""

    def parse(text: str) -> str:
        import torch

        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            raise argparse.ArgumentTypeError(f"{flag} must be a torch device such as cpu or cuda:0, got {text!r}") from None
        usable = ["cpu"]
        if torch.cuda.is_available():
            usable += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            usable.append("mps")
        if device.type == "cuda" and torch.cuda.is_available():
            if device.index is None or device.index < torch.cuda.device_count():
                return text
        elif device.type in ("cpu", "mps") and device.type in [u.split(":")[0] for u in usable]:
            return text
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch {torch.__version__}"
        raise argparse.ArgumentTypeError(f"{flag} {text!r} is not available here ({build}); usable: {', '.join(usable)}")

    return parse


def pipeline_source(flag: str = "--pipeline"):
    """An argparse ``type`` for a pipeline folder or a Hub repo id: a text that does not exist and cannot be a Hub
    id (:func:`~ultrasound_diffusers.data.sources.spelling.looks_like_hub_id`) is refused naming ``flag``."""

    def parse(text: str) -> str:
        import os

        from ..data.sources.spelling import looks_like_hub_id

        if os.path.exists(os.path.expanduser(text)):
            return text
        if not looks_like_hub_id(text) or not text.strip():
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r}: no such folder; give a pipeline folder (holding model_index.json) or a Hub repo id "
                "such as ORG/NAME")
        return text

    return parse


def shard_size(flag: str = "--max_shard_size"):
    """An argparse ``type`` for a safetensors shard size: bytes as an integer or with a unit (``500MB``, ``10GB``,
    ``2GiB``)."""
    import re

    pattern = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)

    def parse(text: str):
        match = pattern.match(text)
        if match is None or float(match.group(1)) <= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive size such as 500MB, 10GB or 2GiB, got {text!r}")
        return int(match.group(1)) if match.group(2) is None and "." not in match.group(1) else text.strip()

    return parse


def add_dataset_output_arguments(p: argparse.ArgumentParser) -> None:
    """``--push_to_hub``, ``--hub_dataset_id``, ``--private`` and ``--overwrite`` of the commands that write a dataset."""
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_dataset_id", default=None, help="Hub dataset repo id for --push_to_hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty output folder that this command did not write (never the working "
                   "directory, a parent of it, or a folder holding an input)")
