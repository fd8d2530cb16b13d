"""Checks shared by the model and pipeline loaders: weight variants and strict (complete) weights.

* :func:`has_weight_variant` tells whether a model folder holds the weight files of a variant
  (``diffusion_pytorch_model.fp16.safetensors``, shards ``diffusion_pytorch_model.fp16-00001-of-00002.safetensors``
  with their index ``diffusion_pytorch_model.safetensors.index.fp16.json``, or the ``.bin`` equivalents).
* :class:`MissingVariantError` is raised when a requested variant is absent, with diffusers' message; it is a
  ``ValueError`` (what diffusers' pipeline loader raises) and an ``OSError`` (what diffusers' model loader
  raises), so callers catching either keep working.
* :func:`check_loading_info` turns the ``missing_keys`` / ``unexpected_keys`` / ``mismatched_keys`` that
  diffusers only logs into an error naming the keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = ["IncompleteWeightsError", "MissingVariantError", "check_loading_info", "has_weight_variant", "variant_message"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: At most this many keys are listed in an error message (the count is always given).
_MAX_LISTED = 12


class MissingVariantError(ValueError, OSError):
    """A weight variant (``variant="fp16"``, ...) was requested but the folder has no files of it."""


class IncompleteWeightsError(ValueError):
    """A checkpoint does not fill the model exactly: missing, unexpected or wrongly shaped tensors."""


def variant_message(variant: str, where: Union[str, os.PathLike]) -> str:
    """diffusers' wording for a missing variant, with the place that was searched."""
    return (
        f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
        f"available in {os.fspath(where)}. Load without `variant` or save the model with "
        f"`save_pretrained(..., variant={variant!r})`."
    )


def has_weight_variant(folder: Union[str, os.PathLike], variant: str) -> bool:
    """True when ``folder`` holds a weight file (or a shard index) of ``variant``.

    A variant is the dot-separated token before the extension: ``name.<variant>.safetensors``, shards
    ``name.<variant>-00001-of-00002.safetensors`` and their index ``name.safetensors.index.<variant>.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for entry in folder.iterdir():
        name = entry.name
        if not entry.is_file():
            continue
        parts = name.split(".")
        if len(parts) < 3:
            continue
        if name.endswith(_WEIGHT_SUFFIXES) and (parts[-2] == variant or parts[-2].startswith(variant + "-")):
            return True  # name.<variant>.safetensors, or a shard name.<variant>-00001-of-00004.safetensors
        if name.endswith(".json") and parts[-2] == variant and "index" in parts:
            return True
    return False


def _listed(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def check_loading_info(
    info: Mapping[str, Any], model_name: str, where: Union[str, os.PathLike], allow_mismatched: bool = False
) -> None:
    """Raise :class:`IncompleteWeightsError` when a checkpoint did not fill the model exactly.

    Args:
        info: the ``loading_info`` dict of ``ModelMixin.from_pretrained(..., output_loading_info=True)``.
        model_name: the model class name, for the message.
        where: the folder (or repo id) the weights came from.
        allow_mismatched: accept ``mismatched_keys`` (the caller asked for ``ignore_mismatched_sizes=True``).
    """
    missing = list(info.get("missing_keys") or [])
    unexpected = list(info.get("unexpected_keys") or [])
    mismatched = [] if allow_mismatched else list(info.get("mismatched_keys") or [])
    errors = list(info.get("error_msgs") or [])
    if not (missing or unexpected or mismatched or errors):
        return
    lines = []
    if missing:
        lines.append(f"missing keys ({_listed(missing)})")
    if unexpected:
        lines.append(f"unexpected keys ({_listed(unexpected)})")
    if mismatched:
        names = [m[0] if isinstance(m, (list, tuple)) else str(m) for m in mismatched]
        lines.append(f"keys with the wrong shape ({_listed(names)})")
    if errors:
        lines.append("errors: " + "; ".join(str(e) for e in errors[:3]))
    raise IncompleteWeightsError(
        f"the weights in {os.fspath(where)} do not match {model_name} and its config.json: "
        + "; ".join(lines)
        + ". Re-save the model, or fix config.json to the network the weights belong to."
    )


def local_model_folder(
    pretrained_model_name_or_path: Union[str, os.PathLike], subfolder: Optional[str] = None
) -> Optional[Path]:
    """The local folder a ``from_pretrained`` call reads, or None for a Hub repo id."""
    path = Path(os.fspath(pretrained_model_name_or_path))
    if subfolder:
        path = path / subfolder
    return path if path.is_dir() else None
