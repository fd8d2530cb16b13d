"""Paired (image, label map) datasets for training: where they come from, one check of every row before training,
and the preprocessing of a row into tensors.

* :func:`load_paired_splits`: the training split and, when the source has one, a validation split, opened by
  the one input door (:func:`ultrasound_diffusers.data.sources.open_source`): built-in phantoms
  (``"phantoms:echo"``, ``"phantoms:thyroid:100"``), a ``save_to_disk`` folder, a Hub dataset, the PNG folders
  ``generate --export png`` / ``phantoms --png_dir`` write, or an image folder with a metadata file.
* :func:`check_paired_dataset`: every row decodes, images follow the package's image acceptance rule and label
  maps its label rule (:func:`ultrasound_diffusers.image_processor.to_image_array` / ``to_label_array``), have
  the size of their image and ids in ``[0, num_classes)``; errors name the row and the file.
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

from ..image_processor import load_npy, resize_label_map, to_image_array, to_label_array
from .sources import PHANTOMS_USAGE, Source, folder_metadata, folder_pairs, open_source, pick_split

__all__ = [
    "PairedSplits",
    "PairedTransform",
    "check_paired_dataset",
    "collate_pairs",
    "describe_cell",
    "load_paired_splits",
    "open_cell",
    "preprocess_image",
    "preprocess_labels",
    "read_label_cell",
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
    #: the kind of the source (:data:`ultrasound_diffusers.data.sources.SOURCE_KINDS`) and the split read
    kind: str = "phantoms"
    split: Optional[str] = "train"


def _phantom_pairs(source: Source, size: SizeLike, num_phantoms: int, seed: int, num_validation: int,
                   progress: bool) -> Tuple[Any, Any]:
    """Training (and validation) phantoms of a ``phantoms:ANATOMY[:N[:SEED]]`` source: N (else ``num_phantoms``)
    phantoms from SEED (else ``seed``); the validation phantoms are new ones (indices after the training ones)."""
    from .phantoms import generate_phantoms

    spec = source.phantoms
    num, seed = spec.num or int(num_phantoms), spec.seed_or(seed)
    size = (size, size) if isinstance(size, int) else tuple(size)
    train = generate_phantoms(num, anatomy=spec.anatomy, size=size, seed=seed, progress=progress)
    validation = None
    if num_validation:
        validation = generate_phantoms(num_validation, anatomy=spec.anatomy, size=size, seed=seed, start=num)
    return train, validation


def _folder_pairs_dataset(source: Source, cache_dir: Optional[str]) -> Tuple[Any, Any]:
    """A folder as training pairs: the package's folder dialect (``images/`` + ``labels/`` matched by stem, as
    ``generate --export png`` and ``phantoms --png_dir`` write) as ``image`` / ``label`` columns of file paths;
    a folder with a metadata file at its top (or any other folder) through ``datasets``' ``imagefolder`` builder
    (its ``*_file_name`` columns pair the files, its other columns come along)."""
    import datasets

    path = Path(source.path)
    if folder_metadata(path) is None and (path / "images").is_dir() and (path / "labels").is_dir():
        images, labels = folder_pairs(path)
        columns = {"image": [str(p) for p in images], "label": [str(p) for p in labels]}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
        return datasets.Dataset.from_dict(columns, features=features), None
    loaded = datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
    split = pick_split(loaded, None, source.description)
    return loaded[split], (loaded.get("validation") if split != "validation" else None)


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
    """Load a training split and, when wanted and available, a validation split, through the one input door
    (:func:`ultrasound_diffusers.data.sources.open_source`, with its phantoms spelling and split rule).

    Sources (give at most one of ``dataset_name`` and ``data_dir``; neither means ``"phantoms:echo"``):

    * ``"phantoms:ANATOMY[:N[:SEED]]"``: N (else ``num_phantoms``) phantoms of ``size`` generated in memory from
      SEED (else ``seed``) (:func:`ultrasound_diffusers.data.phantoms.generate_phantoms`); the
      ``num_validation`` validation phantoms are new ones (indices after the training ones);
    * a ``save_to_disk`` folder (whatever its name): a ``Dataset``, or a ``DatasetDict`` read at the split of the
      package's rule (``train``, else the only split) with its ``validation`` split;
    * a folder (``data_dir`` must be one): the PNG dialect ``images/`` + ``labels/``, else an ``imagefolder``
      whose ``metadata.jsonl`` / ``.csv`` ``*_file_name`` columns pair each image with its label map;
    * a Hub dataset id (``config_name``, ``cache_dir``).

    Args:
        size: int or (height, width) of generated phantoms (other sources keep their size).
        num_validation: how many validation examples to return (0: no validation split is loaded).
        max_train_samples: keep only the first N training examples.
        progress: show a progress bar while phantoms are generated.
        arguments: how errors name ``dataset_name`` and ``data_dir`` (see the module docstring).

    Returns:
        :class:`PairedSplits` ``(train, validation, base_dir, kind, split)``.

    Raises:
        ValueError: for both sources at once, a ``data_dir`` that is not a folder, a source that holds no pairs
            (a file, an array), a split the rule cannot choose, an empty training set, or a Hub dataset that
            cannot be loaded.
    """
    if dataset_name is not None and data_dir is not None:
        raise ValueError(f"pass only one of {_name(arguments, 'dataset_name')} and {_name(arguments, 'data_dir')}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(f"{_name(arguments, 'data_dir')} {data_dir!r} is not a directory")
    argument = _name(arguments, "data_dir" if data_dir is not None else "dataset_name")
    spec = data_dir if data_dir is not None else ("phantoms:echo" if dataset_name is None else dataset_name)
    source = open_source(spec, None, argument=argument, config_name=config_name, cache_dir=cache_dir)
    if source.kind == "phantoms":
        ds, validation = _phantom_pairs(source, size, num_phantoms, seed, num_validation, progress)
    elif source.dataset is not None:
        ds, validation = source.dataset, (source.other_split("validation") if source.split != "validation" else None)
    elif source.kind == "folder":
        ds, validation = _folder_pairs_dataset(source, cache_dir)
    else:
        raise ValueError(
            f"{argument} {source.description!r} is a {source.kind}, which holds no (image, label map) pairs; pass a saved dataset, "
            f"a folder (images/ + labels/), a Hub dataset id or {PHANTOMS_USAGE}"
        )
    if max_train_samples is not None:
        ds = ds.select(range(min(len(ds), max_train_samples)))
    if len(ds) == 0:
        raise ValueError("the training dataset is empty")
    if not num_validation:
        validation = None
    if validation is not None:
        validation = validation.select(range(min(len(validation), num_validation))) if len(validation) else None
    base_dir = str(source.path) if source.path is not None and source.path.is_dir() else None
    return PairedSplits(ds, validation, base_dir, source.kind, source.split)


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
            return load_npy(path, f"file {path}")
        return Image.open(path)
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if value is None:
        raise ValueError("missing value")
    return np.asarray(value)


def read_label_cell(value: Any, base_dir: Optional[Union[str, os.PathLike]] = None) -> np.ndarray:
    """One label-map cell as int64 ``[H, W]``, through the package's one acceptance rule
    (:func:`ultrasound_diffusers.image_processor.to_label_array`)."""
    return to_label_array(open_cell(value, base_dir), "a label map")


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
            image_size = to_image_array(open_cell(raw_image, base_dir), "the image").shape[-2:]
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
    """One image (the package's image rule, :func:`ultrasound_diffusers.image_processor.to_image_array`: uint8,
    uint16 or floats in [0, 1]; an image in [-1, 1] is refused, never clipped) as float32
    ``[channels, height, width]`` in [-1, 1], resized to
    ``size`` = (height, width) with bicubic interpolation (antialiased when shrinking)."""
    x = torch.from_numpy(np.ascontiguousarray(to_image_array(obj, channels=channels)))
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
