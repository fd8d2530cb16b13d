"""Paired (image, label map) datasets for training: where they come from, one check of every row before training,
and the preprocessing of a row into tensors.

* :func:`load_paired_splits`: the training split and, when the source has one, a validation split, from built-in
  phantoms (``"phantoms:echo"``), a ``save_to_disk`` folder, a Hub / local dataset script or an image folder
  with a metadata file.
* :func:`check_paired_dataset`: every row decodes, label maps follow the package's acceptance rule
  (:func:`ultrasound_diffusers.image_processor.to_label_array`), have the size of their image and ids in
  ``[0, num_classes)``; errors name the row and the file.
* :func:`preprocess_image` / :func:`preprocess_labels`, :class:`PairedTransform` (a ``datasets`` transform) and
  :func:`collate_pairs`: ``pixel_values`` ``[C, H, W]`` in [-1, 1] and ``labels`` ``[H, W]`` int64.

A "cell" is one value of an image or label column, as ``datasets`` gives it: a PIL image, an undecoded ``Image``
feature (``{"bytes": ..., "path": ...}``), a file path (relative paths are looked up in ``base_dir``), raw bytes,
or an array / nested list. Error messages name the arguments as given in ``arguments`` (for example
``{"image_column": "--image_column"}`` for a command-line script), by default as ```image_column```.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..image_processor import resize_label_map, to_label_array
from .sources import is_saved_dataset, load_hub_dataset

__all__ = [
    "PairedSplits",
    "PairedTransform",
    "check_paired_dataset",
    "collate_pairs",
    "describe_cell",
    "load_paired_splits",
    "open_cell",
    "parse_phantom_source",
    "preprocess_image",
    "preprocess_labels",
    "read_label_cell",
    "spatial_size",
    "to_image_array",
]

SizeLike = Union[int, Tuple[int, int]]


def _name(arguments: Optional[Mapping[str, str]], key: str) -> str:
    """How an error message names the argument ``key``."""
    return (arguments or {}).get(key, f"`{key}`")


# ---------------------------------------------------------------------------------------------------- sources
class PairedSplits(NamedTuple):
    """What :func:`load_paired_splits` returns."""

    #: the training ``datasets.Dataset``
    train: Any
    #: the first ``num_validation`` examples of the validation split, or None
    validation: Any
    #: the folder that relative file names in the columns refer to, or None
    base_dir: Optional[str]


def parse_phantom_source(name: Optional[str]) -> Optional[str]:
    """The anatomy of a phantom source: ``None`` -> ``"echo"`` (the default source), ``"phantoms"`` ->
    ``"echo"``, ``"phantoms:thyroid"`` -> ``"thyroid"``; any other name -> None (not a phantom source)."""
    if name is None:
        return "echo"
    if not str(name).startswith("phantoms"):
        return None
    return str(name).split(":", 1)[1] if ":" in str(name) else "echo"


def load_paired_splits(
    dataset_name: Optional[str] = None,
    data_dir: Optional[str] = None,
    config_name: Optional[str] = None,
    cache_dir: Optional[str] = None,
    size: SizeLike = 64,
    num_phantoms: int = 256,
    seed: int = 0,
    num_validation: int = 0,
    max_train_samples: Optional[int] = None,
    progress: bool = False,
    arguments: Optional[Mapping[str, str]] = None,
) -> PairedSplits:
    """Load a training split and, when wanted and available, a validation split.

    Sources (give at most one of ``dataset_name`` and ``data_dir``; neither means ``"phantoms:echo"``):

    * ``data_dir``: an image folder read with ``datasets``' ``imagefolder`` builder (a ``metadata.jsonl`` / ``.csv``
      whose ``*_file_name`` columns pair each image with its label map);
    * ``"phantoms"`` / ``"phantoms:<anatomy>"``: ``num_phantoms`` phantoms of ``size`` generated in memory from
      ``seed`` (:func:`ultrasound_diffusers.data.phantoms.generate_phantoms`); the ``num_validation`` validation
      phantoms are new ones (indices after the training ones);
    * a ``save_to_disk`` folder: a ``Dataset``, or a ``DatasetDict`` with a ``train`` and optionally a
      ``validation`` split;
    * otherwise a Hub dataset id or a local dataset script / folder (``config_name``, ``cache_dir``).

    Args:
        size: int or (height, width) of generated phantoms (other sources keep their size).
        num_validation: how many validation examples to return (0: no validation split is loaded).
        max_train_samples: keep only the first N training examples.
        progress: show a progress bar while phantoms are generated.
        arguments: how errors name ``dataset_name`` and ``data_dir`` (see the module docstring).

    Returns:
        :class:`PairedSplits` ``(train, validation, base_dir)``.

    Raises:
        ValueError: for both sources at once, a ``data_dir`` that is not a folder, a ``DatasetDict`` without a
            ``train`` split, an empty training set, or a Hub dataset that cannot be loaded.
    """
    import datasets

    if dataset_name is not None and data_dir is not None:
        raise ValueError(f"pass only one of {_name(arguments, 'dataset_name')} and {_name(arguments, 'data_dir')}")
    validation = None
    anatomy = parse_phantom_source(dataset_name) if data_dir is None else None
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise ValueError(f"{_name(arguments, 'data_dir')} {data_dir!r} is not a directory")
        ds = datasets.load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir)
    elif anatomy is not None:
        from .phantoms import generate_phantoms

        size = (size, size) if isinstance(size, int) else tuple(size)
        ds = generate_phantoms(num_phantoms, anatomy=anatomy, size=size, seed=seed, progress=progress)
        if num_validation:
            validation = generate_phantoms(num_validation, anatomy=anatomy, size=size, seed=seed, start=num_phantoms)
    elif is_saved_dataset(dataset_name):
        ds = datasets.load_from_disk(dataset_name)
    else:
        ds = load_hub_dataset(dataset_name, config_name, cache_dir=cache_dir, argument=_name(arguments, "dataset_name"))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(f"the dataset {dataset_name or data_dir!r} has no 'train' split (splits: {sorted(ds)})")
        validation = ds["validation"] if num_validation and "validation" in ds else None
        ds = ds["train"]
    if max_train_samples is not None:
        ds = ds.select(range(min(len(ds), max_train_samples)))
    if len(ds) == 0:
        raise ValueError("the training dataset is empty")
    if validation is not None:
        validation = validation.select(range(min(len(validation), num_validation))) if len(validation) else None
    base_dir = data_dir or (dataset_name if dataset_name and Path(dataset_name).is_dir() else None)
    return PairedSplits(ds, validation, base_dir)


# ---------------------------------------------------------------------------------------------------- cells
def describe_cell(value: Any, index: int) -> str:
    """``"row i"``, plus the file name when the (undecoded) cell carries one: ``"row 3 (/data/labels/a.png)"``."""
    path = None
    if isinstance(value, dict):
        path = value.get("path")
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
    elif getattr(value, "filename", None):
        path = value.filename
    return f"row {index} ({path})" if path else f"row {index}"


def open_cell(value: Any, base_dir: Optional[Union[str, os.PathLike]] = None):
    """A PIL image or a numpy array from one cell (see the module docstring); ``.npy`` files are read with
    ``allow_pickle=False``. Raises ValueError for a missing value; the readers' own errors otherwise."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        return open_cell(value.get("path"), base_dir)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
            path = Path(base_dir) / path
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        return Image.open(path)
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if value is None:
        raise ValueError("missing value")
    return np.asarray(value)


def spatial_size(obj: Any) -> Tuple[int, int]:
    """(height, width) of a PIL image or an array ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (C = 1 or 3)."""
    if hasattr(obj, "size") and not isinstance(obj, np.ndarray):
        width, height = obj.size
        return height, width
    arr = np.asarray(obj)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        return arr.shape[1], arr.shape[2]
    return arr.shape[0], arr.shape[1]


def read_label_cell(value: Any, base_dir: Optional[Union[str, os.PathLike]] = None) -> np.ndarray:
    """One label-map cell as int64 ``[H, W]``, through the package's one acceptance rule
    (:func:`ultrasound_diffusers.image_processor.to_label_array`)."""
    return to_label_array(open_cell(value, base_dir), "a label map")


def to_image_array(obj: Any, channels: int = 1) -> np.ndarray:
    """One image as float32 ``[C, H, W]`` in [0, 1].

    Args:
        obj: a PIL image (8-bit modes; ``I;16`` scaled by 65535; ``I`` by 255 or 65535 depending on its range;
            ``F`` taken as [0, 1]) or an array ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (C = 1, 3, or 4 in the
            last axis, whose alpha is dropped; uint8 / 255, uint16 / 65535, floats taken as [0, 1]).
        channels: 1 (grayscale; RGB is converted with the ITU-R 601 luma weights) or 3 (RGB; grayscale is
            repeated).

    Returns:
        float32 ``[channels, H, W]``, clipped to [0, 1].
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}")
    if isinstance(obj, Image.Image):
        if obj.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            arr = np.asarray(obj).astype(np.float32) / 65535.0
        elif obj.mode == "I":
            arr = np.asarray(obj).astype(np.float32)
            arr = arr / (255.0 if arr.max() <= 255 else 65535.0)
        elif obj.mode == "F":
            arr = np.asarray(obj).astype(np.float32)
        else:
            arr = np.asarray(obj.convert("RGB" if channels == 3 else "L")).astype(np.float32) / 255.0
    else:
        arr = np.asarray(obj)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        else:
            arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3):
        arr = arr[..., :3].transpose(2, 0, 1) if arr.shape[-1] == 4 else arr.transpose(2, 0, 1)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W] with 1 or 3 channels, got {arr.shape}")
    if arr.shape[0] == 3 and channels == 1:
        arr = (0.299 * arr[0] + 0.587 * arr[1] + 0.114 * arr[2])[None]
    elif arr.shape[0] == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=0)
    return np.clip(arr, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- checking
def check_paired_dataset(
    ds: Any,
    image_column: str = "image",
    label_column: Optional[str] = "label",
    num_classes: Optional[int] = None,
    base_dir: Optional[Union[str, os.PathLike]] = None,
    show_progress: bool = False,
    arguments: Optional[Mapping[str, str]] = None,
) -> int:
    """Check every row before training: the columns exist, images decode, label maps are single-channel integer
    maps (the package's acceptance rule) of their image's size with ids in ``[0, num_classes)``.

    Args:
        ds: a ``datasets.Dataset``.
        image_column: the image column.
        label_column: the label-map column, or None (unconditional training: only the images are checked).
        num_classes: the expected number of classes K, or None to infer it as the largest id + 1.
        base_dir: the folder that relative file names in the columns refer to.
        show_progress: show a progress bar.
        arguments: how errors name ``image_column``, ``label_column`` and ``num_classes``.

    Returns:
        The number of classes: ``num_classes``, or the inferred value; 0 without a label column.

    Raises:
        ValueError: naming the column, row and file at fault, e.g. ``the label map of row 3
            (/data/labels/p0004.png) holds class ids in [0, 6], outside [0, 5)``.
    """
    import datasets
    from tqdm.auto import tqdm

    image_flag, label_flag = _name(arguments, "image_column"), _name(arguments, "label_column")
    columns = list(ds.column_names)
    wanted = [(image_flag, image_column)] + ([(label_flag, label_column)] if label_column else [])
    for flag, col in wanted:
        if col not in columns:
            raise ValueError(f"{flag} {col!r} is not a column of the dataset; its columns are {columns}")
    if label_column is not None and label_column == image_column:
        raise ValueError(f"{image_flag} and {label_flag} must differ")
    view = ds.select_columns([c for _, c in wanted])
    for col in view.column_names:  # read the files ourselves: errors can then name them
        if isinstance(view.features[col], datasets.Image):
            view = view.cast_column(col, datasets.Image(decode=False))
    max_label = -1
    for index, row in enumerate(tqdm(view, desc="checking data", disable=not show_progress, leave=False)):
        raw_image = row[image_column]
        where = describe_cell(raw_image, index)
        try:
            image_size = spatial_size(open_cell(raw_image, base_dir))
        except Exception as err:  # noqa: BLE001 - report any decoding failure with its row
            raise ValueError(f"{image_flag} {image_column!r}: cannot read the image of {where}: {err}") from err
        if label_column is None:
            continue
        raw_label = row[label_column]
        where = describe_cell(raw_label, index)
        try:
            labels = read_label_cell(raw_label, base_dir)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{label_flag} {label_column!r}: cannot read the label map of {where}: {err}") from err
        if tuple(labels.shape) != tuple(image_size):
            raise ValueError(
                f"the label map of {where} has size {tuple(labels.shape)} (H, W) but its image has size "
                f"{tuple(image_size)}; image and label map must have the same size"
            )
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            raise ValueError(
                f"the label map of {where} holds class ids in [{lo}, {hi}], outside [0, {num_classes}) "
                f"({_name(arguments, 'num_classes')} {num_classes})"
            )
        max_label = max(max_label, hi)
    if label_column is None:
        return 0
    return int(num_classes) if num_classes is not None else max_label + 1


# ---------------------------------------------------------------------------------------------------- tensors
def preprocess_image(obj: Any, size: Tuple[int, int], channels: int = 1) -> torch.Tensor:
    """One image (see :func:`to_image_array`) as float32 ``[channels, height, width]`` in [-1, 1], resized to
    ``size`` = (height, width) with bicubic interpolation (antialiased when shrinking)."""
    x = torch.from_numpy(np.ascontiguousarray(to_image_array(obj, channels)))
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x[None], size=tuple(size), mode="bicubic", align_corners=False, antialias=True)[0]
    return x.clamp(0.0, 1.0) * 2.0 - 1.0


def preprocess_labels(obj: Any, size: Tuple[int, int]) -> torch.Tensor:
    """One label map (the package's acceptance rule) as int64 ``[height, width]``, resized to ``size`` with the
    package's nearest rule (:func:`ultrasound_diffusers.image_processor.resize_label_map`)."""
    labels = torch.from_numpy(to_label_array(obj, "a label map"))
    return resize_label_map(labels, size).contiguous()


class PairedTransform:
    """A ``datasets`` transform (``Dataset.with_transform``) turning rows into ``pixel_values`` (float32
    ``[C, H, W]`` in [-1, 1]) and, with a label column, ``labels`` (int64 ``[H, W]``), both at ``size``.

    Args:
        image_column, label_column: the columns (``label_column`` None: images only).
        size: (height, width).
        channels: 1 or 3 image channels.
        base_dir: the folder that relative file names in the columns refer to.
    """

    def __init__(self, image_column: str, label_column: Optional[str], size: Tuple[int, int], channels: int = 1,
                 base_dir: Optional[Union[str, os.PathLike]] = None):
        self.image_column = image_column
        self.label_column = label_column
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.base_dir = base_dir

    def __call__(self, batch: Dict[str, List[Any]]) -> Dict[str, List[torch.Tensor]]:
        out = {"pixel_values": [preprocess_image(open_cell(v, self.base_dir), self.size, self.channels)
                                for v in batch[self.image_column]]}
        if self.label_column is not None:
            out["labels"] = [preprocess_labels(open_cell(v, self.base_dir), self.size)
                             for v in batch[self.label_column]]
        return out


def collate_pairs(examples: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack transformed rows: ``pixel_values`` float32 ``[B, C, H, W]`` and, when present, ``labels`` int64
    ``[B, H, W]``."""
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float()}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([e["labels"] for e in examples]).long()
    return batch
