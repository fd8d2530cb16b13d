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
from typing import Any, List, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

#: File suffixes :func:`read_label_file` reads.
LABEL_FILE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".npy")

_PIL_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F")

__all__ = [
    "LABEL_FILE_SUFFIXES",
    "LabelMapProcessor",
    "describe_value",
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


def describe_value(value: Any) -> str:
    """A short description of an argument's value for error messages: the repr of a scalar or short text, the type
    and shape of an array, tensor, image or long list (never a screenful of numbers)."""
    import PIL.Image

    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        kind = "numpy array" if isinstance(value, np.ndarray) else "torch tensor"
        return f"a {kind} of shape {tuple(value.shape)}"
    if isinstance(value, PIL.Image.Image):
        return f"a PIL image of mode {value.mode} and size {value.size}"
    if isinstance(value, (list, tuple)) and len(repr(value)) > 80:
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------------------------
# Label maps for the label-conditioned network
# ---------------------------------------------------------------------------------------------------------------


def _is_nested_list(value: Any) -> bool:
    """True for a (nested) Python list / tuple of numbers: one label map written as lists, ``[[0, 1], [2, 3]]``
    (the acceptance rule of :mod:`ultrasound_diffusers.image_processor` reads it like an array)."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    first = value[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    return isinstance(first, (int, float, bool, np.integer, np.floating, np.bool_))




def _check_label_values(x, num_classes: int, index: str) -> None:
    """Labels (any real dtype) must be finite whole numbers in [0, num_classes - 1]; checked before any cast to
    int64, so that a value such as 1e20 is reported as itself, not as the int64 it would overflow to."""
    import torch

    if not x.numel():
        return
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"`segmap`{index} holds NaN or infinite values; label maps hold integer class indices")
        if not bool((x == x.round()).all()):
            raise ValueError(f"`segmap`{index} holds non-integer values; pass integer class labels")
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > num_classes - 1:
        raise ValueError(
            f"`segmap`{index} labels must lie in [0, {num_classes - 1}] for a {num_classes}-class model, "
            f"got values in [{low:g}, {high:g}]"
        )




def _as_tensor_batch(item: Any, num_classes: int, index: str):
    """One segmap item as a batch: (long labels [B, H, W], False) or (float one-hot / soft maps [B, K, H, W], True),
    at the item's own size. Values are checked here: finite whole labels in [0, K-1], soft maps finite in [0, 1]."""
    import PIL.Image
    import torch

    if isinstance(item, PIL.Image.Image):
        item = to_label_array(item, f"`segmap`{index}")
    if _is_nested_list(item):
        try:
            item = np.asarray(item)
        except (ValueError, TypeError) as err:
            raise ValueError(f"`segmap`{index} is a nested list that is not a rectangular label map: {err}") from None
    if isinstance(item, np.ndarray):
        if item.dtype == np.bool_:
            item = item.astype(np.int64)
        if not (np.issubdtype(item.dtype, np.integer) or np.issubdtype(item.dtype, np.floating)):
            raise ValueError(f"`segmap`{index} must hold integer labels, got a numpy array of dtype {item.dtype}")
        if item.dtype == np.uint64 and item.size and item.max() > np.iinfo(np.int64).max:
            raise ValueError(f"`segmap`{index} labels must lie in [0, {num_classes - 1}], got values up to {item.max()}")
        item = torch.from_numpy(np.ascontiguousarray(item.astype(np.int64) if item.dtype.kind == "u" else item))
    if not torch.is_tensor(item):
        raise ValueError(
            f"`segmap`{index} must be a PIL image, a numpy array, a torch tensor, a nested list of numbers or a "
            f"list of them, got {describe_value(item)}"
        )
    x = item.detach()
    if x.dtype == torch.bool:
        x = x.long()
    if x.is_complex():
        raise ValueError(f"`segmap`{index} must hold real integer labels, got a complex tensor")
    if x.is_floating_point() and x.ndim == 4 and x.shape[1] == num_classes and num_classes > 1:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"`segmap`{index} (a soft label map) holds NaN or infinite values")
        if x.numel() and (x.min().item() < 0 or x.max().item() > 1):
            raise ValueError(
                f"`segmap`{index} (a one-hot / soft label map [B, {num_classes}, H, W]) must hold class weights in "
                f"[0, 1], got values in [{x.min().item():g}, {x.max().item():g}]"
            )
        return x.float(), True
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim != 3:
        raise ValueError(
            f"`segmap`{index} must be a label map [H, W], a batch [B, H, W] or [B, 1, H, W], or a float one-hot "
            f"map [B, {num_classes}, H, W]; got shape {tuple(x.shape)}"
        )
    _check_label_values(x, num_classes, index)
    return x.long(), False




def _read_segmaps(segmap: Any, num_classes: int) -> List[Tuple[Any, bool]]:
    """The pipeline's ``segmap`` argument read and checked, at the maps' own size (nothing is resized or one-hot
    encoded yet, so that size guards can run first): a list of ``(tensor, is_soft)``, each long labels
    [B, H, W] (``is_soft=False``) or float one-hot / soft maps [B, num_classes, H, W]. See :meth:`LabelMapProcessor.preprocess`
    for the accepted forms; raises ValueError naming ``segmap``. ``num_classes`` is checked by the processor."""
    if segmap is None:
        raise ValueError("`segmap` is required: the network is conditioned on label maps")
    if _is_nested_list(segmap):
        items = [segmap]
    elif isinstance(segmap, (list, tuple)):
        items = list(segmap)
    else:
        items = [segmap]
    if not items:
        raise ValueError("`segmap` must not be an empty list")
    read = []
    for i, item in enumerate(items):
        x, is_soft = _as_tensor_batch(item, num_classes, f"[{i}]" if len(items) > 1 else "")
        if x.shape[-2] < 1 or x.shape[-1] < 1 or x.shape[0] < 1:
            raise ValueError(f"`segmap` has an empty shape {tuple(x.shape)}")
        read.append((x, is_soft))
    return read


class LabelMapProcessor:
    """Label maps in, the label-conditioned network's input out: what diffusers' ``VaeImageProcessor`` is for
    images. The pipelines, the training loop and the network read label maps through one instance, so there is
    one acceptance rule (:meth:`read`), one resize rule (:func:`resize_label_map`) and one one-hot encoding
    (:meth:`one_hot`).

    Args:
        num_classes: K, the number of label channels of the network (>= 1).

    Example::

        processor = LabelMapProcessor(num_classes=5)
        one_hot, labels = processor.preprocess(label_map, size=(64, 64))   # [1, 5, 64, 64] float, [1, 64, 64] long
    """

    def __init__(self, num_classes: int):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1 for a label-conditioned model, got {num_classes!r}")
        self.num_classes = int(num_classes)

    def read(self, segmap: Any) -> List[Tuple[Any, bool]]:
        """The ``segmap`` argument of a pipeline read and checked at the maps' own size (nothing resized or encoded
        yet, so that size guards can run first): ``[(tensor, is_soft)]``, long labels [B, H, W] or float one-hot /
        soft maps [B, K, H, W]. Accepted forms: see :meth:`preprocess`."""
        return _read_segmaps(segmap, self.num_classes)

    def one_hot(self, labels, dtype=None):
        """Long labels [B, H, W] in [0, K) -> one-hot [B, K, H, W] of ``dtype`` (default float32): the package's one
        one-hot encoding (pipelines, training, the network)."""
        import torch
        import torch.nn.functional as F

        return F.one_hot(labels.long(), self.num_classes).permute(0, 3, 1, 2).to(torch.float32 if dtype is None else dtype)

    def encode(self, read: List[Tuple[Any, bool]], size: Tuple[int, int], device=None, dtype=None):
        """Maps from :meth:`read` resized to ``size`` (nearest) and encoded: ``(one_hot [B, K, H, W], labels
        [B, H, W] or None)`` (labels are None when every map was an all-zero soft map, which has none)."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        one_hots, labels = [], []
        all_zero_soft = True
        for x, is_soft in read:
            x = resize_label_map(x.to(device), size)
            if is_soft:
                one_hots.append(x.to(dtype))
                labels.append(x.argmax(dim=1))
                all_zero_soft = all_zero_soft and not bool(x.any())
            else:
                one_hots.append(self.one_hot(x, dtype))
                labels.append(x)
                all_zero_soft = False
        return torch.cat(one_hots), (None if all_zero_soft else torch.cat(labels))

    def preprocess(self, segmap: Any, size: Tuple[int, int], device=None, dtype=None):
        """A pipeline's ``segmap`` argument -> ``(one_hot [B, K, H, W], labels [B, H, W] or None)`` at ``size``.

        Args:
            segmap: integer label maps, each a PIL image (mode L / P / I), a numpy array, a tensor or a nested
                Python list, of shape [H, W] (one map), [B, H, W] or [B, 1, H, W] (a batch); or a float one-hot /
                soft map [B, K, H, W] with values in [0, 1]; or a list of any of these (concatenated along the
                batch). Maps of any size are resized to ``size`` with nearest interpolation.
            size: (height, width) of the generated images.
            device, dtype: of the one-hot maps (default float32).
        """
        return self.encode(self.read(segmap), size, device=device, dtype=dtype)

    def network_input(self, segmap, batch_size: Optional[int] = None, size: Optional[Tuple[int, int]] = None,
                      dtype=None, device=None):
        """The float [B, K, H, W] map the network's SPADE norms read, from a tensor given to the network itself.

        Args:
            segmap: integer labels [B, H, W] or [B, 1, H, W] with values in [0, K) (float maps of that layout
                with whole values count as labels), or a floating one-hot / soft map [B, K, H, W] (used as given;
                an all-zero map is the "no label" input of classifier-free guidance).
            batch_size: expected batch size; a segmap with batch 1 is repeated to it.
            size: expected (H, W); a map of another size with the same aspect ratio is resized with the package's
                nearest rule, any other size raises.
            dtype, device: of the returned tensor (default float32).

        Raises:
            ValueError: wrong dtype/shape/batch, labels outside [0, K), or a size that cannot be resized.
        """
        import torch

        num_classes = self.num_classes
        dtype = torch.float32 if dtype is None else dtype
        if not isinstance(segmap, torch.Tensor):
            raise ValueError(f"`segmap` must be a torch.Tensor, got {type(segmap).__name__}")
        if segmap.is_floating_point() and (segmap.ndim == 3 or (segmap.ndim == 4 and segmap.shape[1] == 1 != num_classes)):
            # a float map of labels ([B, H, W] or [B, 1, H, W], never a one-hot layout): whole values only
            check_whole_values(segmap, "`segmap` label map")
            if segmap.numel() and (segmap.min().item() < 0 or segmap.max().item() >= num_classes):
                # checked before the cast, where 1e20 would become -9223372036854775808
                raise ValueError(
                    f"`segmap` labels must lie in [0, {num_classes}) (num_classes={num_classes}), "
                    f"got values in [{segmap.min().item():g}, {segmap.max().item():g}]"
                )
            segmap = segmap.long()
        if segmap.dtype == torch.bool or not (segmap.is_floating_point() or segmap.dtype.is_complex):
            if segmap.ndim == 4 and segmap.shape[1] == 1:
                segmap = segmap[:, 0]
            if segmap.ndim != 3:
                raise ValueError(
                    "`segmap` with integer labels must have shape [B, H, W] or [B, 1, H, W], "
                    f"got {tuple(segmap.shape)}"
                )
            labels = segmap.long()
            if labels.numel() > 0 and not _compiling():  # a value check syncs the device, breaks a compiled graph
                lo, hi = int(labels.min()), int(labels.max())
                if lo < 0 or hi >= num_classes:
                    raise ValueError(
                        f"`segmap` labels must lie in [0, {num_classes}) (num_classes={num_classes}), "
                        f"got values in [{lo}, {hi}]"
                    )
            segmap = self.one_hot(labels, dtype)
        elif segmap.is_complex():
            raise ValueError("`segmap` must be an integer label map or a real float one-hot map, got a complex tensor")
        else:
            if segmap.ndim != 4 or segmap.shape[1] != num_classes:
                raise ValueError(
                    f"a floating `segmap` must be a one-hot / soft map of shape [B, {num_classes}, H, W] "
                    f"(num_classes={num_classes}); got {tuple(segmap.shape)}. Pass integer labels (torch.long) "
                    "of shape [B, H, W] to have them one-hot encoded."
                )
            if not _compiling() and not bool(torch.isfinite(segmap).all()):
                raise ValueError("`segmap` (a one-hot / soft map) holds NaN or infinite values")
            segmap = segmap.to(dtype=dtype)
        if device is not None:
            segmap = segmap.to(device)
        if batch_size is not None and segmap.shape[0] != batch_size:
            if segmap.shape[0] != 1:
                raise ValueError(f"`segmap` has batch size {segmap.shape[0]}, expected {batch_size} (or 1)")
            segmap = segmap.expand(batch_size, *segmap.shape[1:])
        if size is not None and tuple(segmap.shape[-2:]) != tuple(size):
            h, w = segmap.shape[-2:]
            th_, tw = size
            if h == 0 or w == 0 or abs(h * tw - w * th_) > 0.01 * max(h * tw, w * th_):
                raise ValueError(
                    f"`segmap` spatial size {(h, w)} cannot be resized to the sample size {tuple(size)}: "
                    "the aspect ratios differ"
                )
            segmap = resize_label_map(segmap, tuple(size))
        return segmap


def _compiling() -> bool:
    """Whether torch.compile is tracing: the eager-mode value checks (which read tensor values, forcing a device
    sync and a graph break) are skipped there; the pipelines check their inputs before the loop anyway."""
    import torch

    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
