"""Images, label maps and sizes: one acceptance rule each, one resize rule, one size parser for every entry point.

Training, generation, evaluation, the demo, the converters and the pipelines all read label maps through
:func:`to_label_array` (in memory) or :func:`read_label_file` (on disk), and resize them with
:func:`resize_label_map`, so the same input gives the same answer (or the same error) everywhere.

Acceptance rule (:func:`to_label_array`): a label map is one class index per pixel, an integer >= 0.

* PIL images of mode ``1``, ``L``, ``P``, ``I``, ``I;16`` or ``F`` (whole numbers); ``RGB`` / ``RGBA`` / ``LA``
  only when every pixel's colour channels are equal (a grey image saved as RGB). Colour-coded maps are refused:
  convert colours to class indices first (a luminance conversion would merge classes silently).
* numpy arrays, torch tensors and nested lists of shape ``[H, W]``, ``[1, H, W]`` or ``[H, W, 1]``, of bool,
  integer or float dtype; floats must be finite whole numbers.
* negative values, NaN and infinity are refused, and so is a value too large to be a class index (>= 2**31),
  which is named as itself in the message.
* a nested Python list (``[[0, 1], [1, 2]]``) is read as the array it spells; a ragged list is refused.
* ``.npy`` files are read without pickles: an object array is refused with a message naming the file.

Image acceptance rule (:func:`to_image_array`, used by training, evaluation, reconstruction and the nnU-Net
export alike): one image, returned as float32 ``[C, H, W]`` in [0, 1].

* PIL images: 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``RGB``, ``RGBA``; grey+alpha and RGBA drop their alpha),
  ``I;16`` divided by 65535, ``I`` by 255 (values <= 255) or 65535, ``F`` under the float rule.
* arrays, tensors and nested lists ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` with C = 1 (grey), 2 (grey+alpha,
  alpha dropped), 3 (RGB) or 4 (RGBA, alpha dropped): uint8 / 255, uint16 / 65535, other integers / 255 when
  they lie in [0, 255], bool as 0 / 1.
* floats must lie in [0, 1] (up to 1e-3): an image in [-1, 1] (the model's range) is **refused** with a message
  giving the rescale ``(x + 1) / 2``, because clipping it would silently lose the lower half of its range.
  NaN and infinity are refused.
* RGB becomes grey with the ITU-R 601 luma weights (0.299, 0.587, 0.114) when one channel is asked for;
  grey is repeated when three are.

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
    "check_whole_values",
    "load_npy",
    "to_image_array",
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
    if array.size and array.max() >= MAX_CLASS_INDEX:
        # checked before the int64 cast, which would wrap 1e20 to -9223372036854775808
        raise ValueError(f"{where} holds values too large to be class indices (up to {array.max():g}; "
                         f"class indices are < {MAX_CLASS_INDEX})")
    return array.astype(np.int64)


def load_npy(path: PathLike, where: Optional[str] = None) -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` whose errors name the file: a pickled (object) array, a damaged or
    non-``.npy`` file is a ValueError ``"{where} is not a readable .npy array: ..."`` (``where`` defaults to the
    path)."""
    where = str(path) if where is None else where
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{where} is not a readable .npy array: {err}") from None


#: Class indices are below this (a float label of 1e20 is refused as itself, never wrapped around by a cast).
MAX_CLASS_INDEX = 2**31


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
        return to_label_array(load_npy(path, where), where)
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


# ---------------------------------------------------------------------------------------------------- images
_PIL_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
#: Luma weights of ITU-R BT.601 (RGB -> grey).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _float_image(array: np.ndarray, where: str) -> np.ndarray:
    """The float rule: finite values in [0, 1] (1e-3 tolerance, then clipped); anything else is refused."""
    array = array.astype(np.float32, copy=False)
    if array.size == 0:
        raise ValueError(f"{where} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{where} holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        hint = ("; an image in [-1, 1] (the model's range) maps to [0, 1] with (x + 1) / 2"
                if lo >= -1.0 - 1e-3 and hi <= 1.0 + 1e-3 else "")
        raise ValueError(
            f"{where}: float values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; pass 8-bit (uint8) or 16-bit "
            f"(uint16) images or rescale{hint}"
        )
    return np.clip(array, 0.0, 1.0)


def _pil_image(image, channels: int, where: str) -> np.ndarray:
    """A PIL image as float32 [H, W] or [H, W, 3] in [0, 1] (see the module's image rule)."""
    if image.mode in _PIL_16_BIT_MODES:
        return np.asarray(image).astype(np.float32) / 65535.0
    if image.mode == "I":
        array = np.asarray(image).astype(np.float32)
        if array.size and array.min() < 0:
            raise ValueError(f"{where} is a 32-bit integer image with negative values")
        return array / (255.0 if array.size == 0 or array.max() <= 255 else 65535.0)
    if image.mode == "F":
        return _float_image(np.asarray(image), where)
    return np.asarray(image.convert("RGB" if channels == 3 else "L")).astype(np.float32) / 255.0


def _array_image(value: Any, where: str) -> np.ndarray:
    """An array-like image as float32 [H, W] or [H, W, C] in [0, 1] (C = 1..4, channels last)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where} is not an array-like image: {err}") from None
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
        raise ValueError(
            f"{where} must be [H, W], [H, W, C] or [C, H, W] with C = 1 (grey), 2 (grey+alpha), 3 (RGB) or "
            f"4 (RGBA), got shape {tuple(array.shape)}"
        )
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"{where}: integer values must lie in [0, 255] (or be uint16), got [{array.min()}, {array.max()}]"
            )
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{where} must hold numbers, got dtype {array.dtype}")
    return _float_image(array, where)


def to_image_array(value: Any, where: str = "image", channels: int = 1) -> np.ndarray:
    """One image as float32 ``[channels, H, W]`` in [0, 1], by the module's image acceptance rule.

    Args:
        value: a PIL image, numpy array, torch tensor or nested list (``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``,
            C = 1, 2 (grey+alpha), 3 or 4 (RGBA)).
        where: how error messages name the image (e.g. ``"the image of row 3 (a.png)"``).
        channels: 1 (grey; RGB is converted with :data:`LUMA_WEIGHTS`) or 3 (RGB; grey is repeated).

    Raises:
        ValueError: naming ``where``: other shapes, floats outside [0, 1] (an image in [-1, 1] is told to rescale
            with ``(x + 1) / 2``), NaN / infinity, integers outside [0, 255] that are not uint16.
    """
    import PIL.Image

    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}")
    if isinstance(value, PIL.Image.Image):
        array = _pil_image(value, channels, where)
    else:
        array = _array_image(value, where)
    if array.ndim == 3:
        colour = array[..., :1] if array.shape[-1] <= 2 else array[..., :3]  # alpha dropped
        if colour.shape[-1] == 3 and channels == 1:
            colour = (colour @ np.asarray(LUMA_WEIGHTS, np.float32))[..., None]
        array = np.moveaxis(colour, -1, 0)
    else:
        array = array[None]
    if array.shape[0] == 1 and channels == 3:
        array = np.repeat(array, 3, axis=0)
    return np.ascontiguousarray(array, dtype=np.float32)
