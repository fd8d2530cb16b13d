"""Label maps and sizes: one acceptance rule, one resize rule, one size parser for every entry point.

Training, generation, evaluation, the demo, the converters and the pipelines all read label maps through
:func:`to_label_array` (in memory) or :func:`read_label_file` (on disk), and resize them with
:func:`resize_label_map`, so the same input gives the same answer (or the same error) everywhere.

Acceptance rule (:func:`to_label_array`): a label map is one class index per pixel, an integer >= 0.

* PIL images of mode ``1``, ``L``, ``P``, ``I``, ``I;16`` or ``F`` (whole numbers); ``RGB`` / ``RGBA`` / ``LA``
  only when every pixel's colour channels are equal (a grey image saved as RGB). Colour-coded maps are refused:
  convert colours to class indices first (a luminance conversion would merge classes silently).
* numpy arrays, torch tensors and nested lists of shape ``[H, W]``, ``[1, H, W]`` or ``[H, W, 1]``, of bool,
  integer or float dtype; floats must be finite whole numbers.
* negative values, NaN and infinity are refused.

Resize rule (:func:`resize_label_map`): nearest neighbour sampled at pixel centres, output pixel ``i`` takes
input pixel ``floor((i + 0.5) * in / out)`` (PyTorch's ``nearest-exact``), for numpy arrays and tensors alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

#: File suffixes :func:`read_label_file` reads.
LABEL_FILE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".npy")

_PIL_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F")

__all__ = [
    "LABEL_FILE_SUFFIXES",
    "nearest_indices",
    "parse_size",
    "read_label_file",
    "resize_label_map",
    "to_label_array",
]


def _pil_to_array(image, where: str) -> np.ndarray:
    if image.mode in ("RGB", "RGBA", "LA"):
        array = np.asarray(image)
        colour = array[..., :1] if image.mode == "LA" else array[..., :3]
        if not (colour == colour[..., :1]).all():
            raise ValueError(
                f"{where} is a colour {image.mode} image whose channels differ; a label map holds one class index "
                "per pixel (mode L, P or I): convert colours to class indices first"
            )
        return colour[..., 0]
    if image.mode not in _PIL_LABEL_MODES:
        raise ValueError(f"{where} is a PIL image of mode {image.mode}; label maps must be mode L, P or I")
    return np.asarray(image)


def check_whole_values(values: Any, where: str = "label map") -> None:
    """The acceptance rule for float label maps: finite whole numbers only. ``values`` is a numpy array or a torch
    tensor (checked where it lives, on any device). Raises ValueError naming ``where``."""
    if hasattr(values, "isfinite"):  # a torch tensor
        finite, whole = bool(values.isfinite().all()), bool((values == values.round()).all())
    else:
        finite = bool(np.all(np.isfinite(values)))
        whole = finite and bool(np.array_equal(values, np.round(values)))
    if not finite:
        raise ValueError(f"{where} holds NaN or infinite values; label maps hold integer class indices")
    if not whole:
        raise ValueError(f"{where} holds non-integer values; label maps hold integer class indices")


def to_label_array(value: Any, where: str = "label map") -> np.ndarray:
    """One label map as an int64 array ``[H, W]`` of class indices >= 0 (see the module's acceptance rule).

    Args:
        value: a PIL image, numpy array, torch tensor or nested list (``[H, W]``, ``[1, H, W]`` or ``[H, W, 1]``).
        where: how error messages name the map (for example ``"label map a.png"`` or ``"`segmap`[2]"``).

    Raises:
        ValueError: naming ``where`` for colour images, other shapes, non-integer, non-finite or negative values.
    """
    import PIL.Image

    if isinstance(value, PIL.Image.Image):
        array = _pil_to_array(value, where)
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        array = value.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where} is not an array-like label map: {err}") from None
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise ValueError(f"{where} must be a 2-D label map [H, W] (or [1, H, W]), got shape {tuple(array.shape)}")
    if array.dtype == np.bool_:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        check_whole_values(array, where)
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{where} must hold integer class indices, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{where} holds negative values (minimum {array.min():g}); class indices are >= 0")
    return array.astype(np.int64)


def read_label_file(path: PathLike) -> np.ndarray:
    """Read one label map file: a PNG / TIFF / BMP whose pixel values are class indices, or a ``.npy`` array
    ``[H, W]`` (read with ``allow_pickle=False``). Returns int64 ``[H, W]``; errors name the file."""
    import PIL.Image

    path = Path(path)
    where = f"label map {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    if path.suffix.lower() not in LABEL_FILE_SUFFIXES:
        raise ValueError(f"{where}: expected one of {', '.join(LABEL_FILE_SUFFIXES)}")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{where} is not a readable .npy array: {err}") from None
        return to_label_array(array, where)
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return to_label_array(image, where)
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{where} is not a readable image") from None
    except OSError as err:  # truncated or damaged file
        raise ValueError(f"{where} could not be read: {err}") from None


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel for a nearest-neighbour resize from ``in_size`` to ``out_size``:
    ``floor((i + 0.5) * in_size / out_size)`` (pixel centres; PyTorch's ``nearest-exact``). int64 ``[out_size]``."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    i = np.arange(out_size, dtype=np.float64)
    return np.minimum(np.floor((i + 0.5) * (in_size / out_size)).astype(np.int64), in_size - 1)


def resize_label_map(labels, size: Tuple[int, int]):
    """Resize label maps with the package's one nearest-neighbour rule (see :func:`nearest_indices`).

    Args:
        labels: numpy array or torch tensor ``[..., H, W]`` (any dtype; one-hot or soft maps ``[B, K, H, W]``
            are resized channel by channel with the same rule).
        size: ``(height, width)`` of the result.

    Returns:
        The same type as ``labels``, shape ``[..., height, width]``.
    """
    height, width = int(size[0]), int(size[1])
    in_h, in_w = labels.shape[-2], labels.shape[-1]
    if (in_h, in_w) == (height, width):
        return labels
    rows, cols = nearest_indices(in_h, height), nearest_indices(in_w, width)
    if hasattr(labels, "detach"):  # torch
        import torch

        r = torch.from_numpy(rows).to(labels.device)
        c = torch.from_numpy(cols).to(labels.device)
        return labels.index_select(-2, r).index_select(-1, c)
    return np.asarray(labels)[..., rows[:, None], cols[None, :]]


def parse_size(
    value: Any, argument: str = "size", *, as_pair: bool = False, minimum: int = 1
) -> Optional[Union[int, Tuple[int, int]]]:
    """A size as ``N`` (square) or ``(H, W)`` from an int, a pair, or text ``"N"``, ``"HxW"`` or ``"H,W"``;
    None stays None. With ``as_pair`` a square size is returned as ``(N, N)``. Raises ValueError naming
    ``argument`` for anything else, or for a side below ``minimum`` pixels (1 unless a caller needs more)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.lower().replace(",", "x").split("x")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"`{argument}` must be N or HxW, got {value!r}") from None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = [int(value)]
    elif isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        values = [int(v) for v in value]
    else:
        raise ValueError(f"`{argument}` must be N or (height, width), got {value!r}")
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise ValueError(f"`{argument}` must be one or two positive integers, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"`{argument}` must be at least {minimum} x {minimum} pixels, got {value!r}")
    if len(values) == 1:
        return (values[0], values[0]) if as_pair else values[0]
    return values[0], values[1]
