"""Shared helpers for the dataset converters and a registry of them.

One module per source: :mod:`.camus` (:func:`convert_camus`), :mod:`.thyroid` (:func:`convert_thyroid`),
:mod:`.lung` (:func:`convert_lung`) and :mod:`.dicom` (:func:`convert_dicom`). Each returns a
``datasets.DatasetDict`` with the splits ``train``, ``validation`` and ``test`` (possibly empty) that
:func:`save_dataset` writes atomically (or pushes to the Hub).

Bad input: a corrupt or unexpected file is skipped with a :class:`ConversionWarning` naming it, or raises
a ValueError when ``strict=True``. Nothing is written until the whole conversion has succeeded.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.ndimage as ndi

from ..image_processor import parse_size as _parse_size
from ..image_processor import resize_label_map
from ..utils.lazy import import_optional

SPLITS = ("train", "validation", "test")

#: source name -> "module:function" (imported lazily)
CONVERTERS = {
    "camus": "ultrasound_diffusers.data.camus:convert_camus",
    "thyroid": "ultrasound_diffusers.data.thyroid:convert_thyroid",
    "lung": "ultrasound_diffusers.data.lung:convert_lung",
    "dicom": "ultrasound_diffusers.data.dicom:convert_dicom",
}


class ConversionWarning(UserWarning):
    """A file was skipped during a conversion."""


def get_converter(source: str):
    """The converter function for ``source`` (``camus``, ``thyroid``, ``lung`` or ``dicom``)."""
    if source not in CONVERTERS:
        raise ValueError(f"`source` must be one of {sorted(CONVERTERS)}, got {source!r}")
    module, name = CONVERTERS[source].split(":")
    return getattr(importlib.import_module(module), name)


def report_bad_file(path: Union[str, os.PathLike], reason: str, strict: bool) -> None:
    """Skip ``path`` with a :class:`ConversionWarning`, or raise ValueError when ``strict``."""
    message = f"{path}: {reason}"
    if strict:
        raise ValueError(f"cannot convert {message} (drop --strict to skip such files)")
    warnings.warn(f"skipping {message}", ConversionWarning, stacklevel=3)


def encode_png(array: np.ndarray) -> Dict[str, Any]:
    """uint8 [H, W] -> ``{"bytes": PNG, "path": None}`` (the storage form of ``datasets.Image``)."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"expected a uint8 [H, W] array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=3)
    return {"bytes": buf.getvalue(), "path": None}


def to_uint8(array: np.ndarray, value_range: Optional[Tuple[float, float]] = None, percentiles: Tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """Intensities -> uint8.

    uint8 input is returned unchanged when ``value_range`` is None; otherwise values are mapped linearly
    from ``value_range`` (default: the given percentiles of the array) to 0..255 and clipped.
    """
    arr = np.asarray(array)
    if arr.dtype == np.uint8 and value_range is None:
        return arr
    arr = arr.astype(np.float32)
    if value_range is None:
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return np.zeros(arr.shape, dtype=np.uint8)
        lo, hi = np.percentile(finite, percentiles) if percentiles != (0.0, 100.0) else (finite.min(), finite.max())
    else:
        lo, hi = value_range
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.nan_to_num((arr - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def parse_size(size) -> Optional[Tuple[int, int]]:
    """None, int or (height, width) -> None or (height, width): the package's size rule
    (:func:`ultrasound_diffusers.image_processor.parse_size`) with square sizes as pairs."""
    return _parse_size(size, as_pair=True)


def resize(array: np.ndarray, size: Optional[Tuple[int, int]], label: bool = False) -> np.ndarray:
    """Resize a uint8 [H, W] image (bilinear) or label map (the package's one nearest rule,
    :func:`ultrasound_diffusers.image_processor.resize_label_map`) to ``size`` = (height, width)."""
    if size is None or tuple(array.shape[:2]) == tuple(size):
        return array
    if label:
        return np.ascontiguousarray(resize_label_map(array, size))
    from PIL import Image

    return np.array(Image.fromarray(array).resize((size[1], size[0]), resample=Image.BILINEAR))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of the True pixels of a bool [H, W] mask."""
    cv2 = import_optional("cv2", "convex_hull_mask (scan-area detection of the converters)")

    pts = np.argwhere(mask)[:, ::-1].astype(np.int32)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if len(pts) >= 3:
        cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    out[mask] = 1
    return out.astype(bool)


def local_std(image: np.ndarray, size: int = 7) -> np.ndarray:
    """Standard deviation of ``image`` [H, W] in a ``size`` x ``size`` window around every pixel (speckle texture)."""
    from scipy import ndimage as ndi

    mean = ndi.uniform_filter(image, size)
    sq = ndi.uniform_filter(image * image, size)
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))


def box_mask(shape: Tuple[int, int], box: Tuple[int, int, int, int]) -> np.ndarray:
    """Boolean [H, W] mask of the pixel box ``(x0, y0, x1, y1)`` (inclusive, clipped to the image)."""
    H, W = shape
    x0, y0, x1, y1 = box
    mask = np.zeros((H, W), dtype=bool)
    mask[max(y0, 0) : min(y1, H - 1) + 1, max(x0, 0) : min(x1, W - 1) + 1] = True
    return mask


def frame_stack(frames) -> np.ndarray:
    """A grayscale frame [H, W] or cine [T, H, W] as float32 [T, H, W]; any other shape raises a ValueError."""
    arr = np.asarray(frames, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"`frames` must have shape [H, W] or [T, H, W], got {np.shape(frames)}")
    return arr


def largest_component(mask: np.ndarray) -> Optional[np.ndarray]:
    """The largest connected component (4-connectivity) of a bool mask [H, W] with its holes filled; None when
    the mask is empty."""
    labels, n = ndi.label(mask)
    if n == 0:
        return None
    sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
    return ndi.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))


def detect_scan_area(
    frames: np.ndarray,
    threshold: float = 6.0,
    texture_threshold: Optional[float] = 3.0,
    opening_fraction: float = 1.0 / 50.0,
    region_box: Optional[Tuple[int, int, int, int]] = None,
) -> np.ndarray:
    """Find the ultrasound scan area (fan or rectangle) of a grayscale frame or cine.

    Steps: the per-pixel maximum over frames is thresholded (``> threshold``); for cines (3+ frames) only
    pixels that change over time are kept (burned-in text and rulers are static); with
    ``texture_threshold`` only textured pixels (local 7x7 standard deviation above it) are kept, which
    drops flat banners and grey-scale bars; a morphological opening with a disk of radius
    ``opening_fraction * min(H, W)`` (at least 1 px; 0 disables it) removes text, tick marks and calipers; the largest connected
    component is kept and replaced by its filled convex hull (sectors and rectangles are convex).

    Args:
        frames: [H, W] or [T, H, W] grayscale intensities (0-255).
        region_box: optional (x0, y0, x1, y1) inclusive box (e.g. from the DICOM ultrasound regions)
            outside of which nothing is kept.

    Returns:
        bool [H, W]; all True if nothing was found.
    """
    arr = frame_stack(frames)
    _, H, W = arr.shape
    ref = arr.max(0)
    mask = ref > threshold
    if arr.shape[0] >= 3:
        moving = arr.std(0) > 1.0
        mask &= ndi.binary_dilation(moving, _disk(2))
    if texture_threshold is not None:
        mask &= local_std(ref) > texture_threshold
    if region_box is not None:
        mask &= box_mask(mask.shape, region_box)
    radius = max(1, int(round(opening_fraction * min(H, W)))) if opening_fraction > 0 else 0
    if radius > 0:
        mask = ndi.binary_opening(mask, _disk(radius))
    component = largest_component(mask)
    return np.ones((H, W), dtype=bool) if component is None else convex_hull_mask(component)


def assign_splits(keys: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Dict[str, str]:
    """Deterministically assign each key (a patient, volume or file) to train / validation / test.

    Keys are sorted, shuffled with ``seed`` and cut by ``fractions`` (validation and test counts are
    rounded; train takes the rest and at least one key when there is one).
    """
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or sum(fr) <= 0:
        raise ValueError(f"`fractions` must be three non-negative numbers (train, validation, test), got {fractions!r}")
    total = sum(fr)
    fr = [f / total for f in fr]
    uniq = sorted(set(keys))
    order = np.random.default_rng(int(seed)).permutation(len(uniq))
    n = len(uniq)
    n_val = int(round(fr[1] * n))
    n_test = int(round(fr[2] * n))
    if fr[0] > 0 and n_val + n_test >= n and n > 0:
        excess = n_val + n_test - (n - 1)
        take = min(excess, n_test)
        n_test -= take
        n_val -= excess - take
    out = {}
    for rank, k in enumerate(order):
        key = uniq[k]
        out[key] = "validation" if rank < n_val else ("test" if rank < n_val + n_test else "train")
    return out


def make_dataset_dict(rows: Iterable[Dict[str, Any]], features) -> "datasets.DatasetDict":  # noqa: F821
    """Group rows (each with a ``"split"`` entry) into a DatasetDict with all three splits."""
    import datasets

    by_split: Dict[str, List[Dict[str, Any]]] = {s: [] for s in SPLITS}
    names = list(features)
    for row in rows:
        split = row["split"]
        if split not in by_split:
            raise ValueError(f"unknown split {split!r}")
        by_split[split].append({k: row.get(k) for k in names})
    return datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({k: [r[k] for r in by_split[s]] for k in names}, features=features)
            for s in SPLITS
        }
    )


def pseudonym(value: str, length: int = 16) -> str:
    """A stable pseudonymous id (SHA-256 prefix) for an identifier that must not be stored as is."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]


def save_dataset(
    dataset,
    output_dir: Optional[Union[str, os.PathLike]] = None,
    push_to_hub: bool = False,
    hub_dataset_id: Optional[str] = None,
    private: bool = False,
    overwrite: bool = True,
    kind: Optional[str] = None,
    extra_files: Optional[Dict[str, str]] = None,
) -> Optional[Path]:
    """Write a Dataset / DatasetDict atomically with ``save_to_disk`` and/or push it to the Hub.

    ``kind`` names the writing command in the folder's marker (see
    :func:`ultrasound_diffusers.utils.io.check_output_dir`, which commands call before any work).
    ``extra_files`` (name -> text) are written into the same folder inside the same atomic swap.

    Returns the output directory (or None when only pushed).
    """
    from ..utils.io import atomic_save_to_disk

    if output_dir is None and not push_to_hub:
        raise ValueError("give `output_dir` or `push_to_hub=True`")
    if push_to_hub and not hub_dataset_id:
        raise ValueError("`hub_dataset_id` is required with `push_to_hub`")
    path = None
    if output_dir is not None:
        kwargs = {}
        # datasets writes an empty split as 0 shards, which load_from_disk cannot read back: force 1 shard
        if hasattr(dataset, "keys"):
            empty = {name: 1 for name, split in dataset.items() if len(split) == 0}
            if empty:
                kwargs["num_shards"] = empty
        elif len(dataset) == 0:
            kwargs["num_shards"] = 1
        path = atomic_save_to_disk(dataset, output_dir, overwrite=overwrite, kind=kind, extra_files=extra_files, **kwargs)
    if push_to_hub:
        dataset.push_to_hub(hub_dataset_id, private=private)
    return path


def find_files(root: Union[str, os.PathLike], suffixes: Sequence[str]) -> List[Path]:
    """Files under ``root`` (recursively, sorted, hidden entries skipped) whose name ends with a suffix."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"input {root} does not exist")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if any(name.lower().endswith(s) for s in suffixes):
                out.append(Path(dirpath) / name)
    return out
