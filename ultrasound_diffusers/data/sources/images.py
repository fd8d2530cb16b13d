# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""The image-set view of a source: what ``evaluate``, ``reconstruct`` and the nnU-Net test cases read.

Every metric in :mod:`ultrasound_diffusers.evaluation` works on an :class:`ImageSet`: grayscale images as a
float32 array ``[N, H, W]`` with values in [0, 1], optional integer label maps ``[N, H, W]`` and one name per
image. :func:`load_image_set` builds one from any source of :func:`~ultrasound_diffusers.data.sources.open_source`
(the one door, with its one split rule):

* ``phantoms:ANATOMY:N[:SEED]``: N built-in phantoms with their label maps;
* a folder of images (PNG, JPEG, BMP, TIFF, WebP). When the folder holds an ``images/`` sub-folder, the images
  are read from there and label maps from a sibling ``labels/`` folder (files matched by stem, e.g.
  ``images/0001.png`` and ``labels/0001.png``: the PNG folders ``generate --export png`` and
  ``phantoms --png_dir`` write); otherwise the image files directly inside the folder are used;
* a ``datasets`` dataset saved with ``save_to_disk``, a ``datasets.Dataset`` / ``DatasetDict`` object, a Hub
  dataset id;
* a file: a ``.npy`` array ``[N, H, W]`` / ``[H, W]`` or one image file;
* a numpy array, torch tensor or list ``[N, H, W]``, ``[N, 1, H, W]`` or ``[N, H, W, C]``.

Pixel values follow the package's image acceptance rule
(:func:`ultrasound_diffusers.image_processor.to_image_array`: uint8, uint16, or floats in [0, 1]; an image in
[-1, 1] is refused with the rescale to use), label maps the label rule. All images of one set are brought to one
size (``size``, or the size of the first image); label maps are resized with the package's nearest rule.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ...image_processor import load_npy, resize_label_map, to_image_array, to_label_array
from .resolve import Source, open_source

__all__ = ["DEFAULT_PHANTOM_SIZE", "IMAGE_EXTENSIONS", "ImageSet", "folder_metadata", "folder_pairs", "image_to_array",
           "label_to_array", "load_image_set", "resize_image", "resize_label"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Files whose presence marks a folder written by ``datasets`` ``save_to_disk``.
#: Column names tried, in order, when ``label_column`` is not given.
_LABEL_COLUMN_GUESSES = ("label", "labels", "segmap", "mask", "segmentation")


@dataclass
class ImageSet:
    """A set of grayscale images, optionally with label maps.

    Attributes:
        images: float32 array ``[N, H, W]`` with values in [0, 1].
        labels: ``None`` or int64 array ``[N, H, W]`` of class indices.
        names: one name per image (file stem or dataset row index).
        source: a short description of where the set came from (for the report).
        kind: the source's kind (:data:`~ultrasound_diffusers.data.sources.SOURCE_KINDS`).
        split: the split read.
    """

    images: np.ndarray
    labels: Optional[np.ndarray] = None
    names: List[str] = field(default_factory=list)
    source: str = "array"
    kind: str = "array"
    split: Optional[str] = "train"

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 3:
            raise ValueError(f"`images` must have shape [N, H, W], got {images.shape}")
        if len(images) == 0:
            raise ValueError(f"`images` of {self.source} is empty")
        self.images = images.astype(np.float32, copy=False)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != images.shape:
                raise ValueError(f"`labels` must have the shape of `images` {images.shape}, got {labels.shape}")
            self.labels = labels.astype(np.int64, copy=False)
        if not self.names:
            self.names = [f"{i:05d}" for i in range(len(images))]
        elif len(self.names) != len(images):
            raise ValueError(f"`names` must have one entry per image ({len(images)}), got {len(self.names)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def subset(self, indices: Union[Sequence[int], np.ndarray, slice]) -> "ImageSet":
        """The images (and labels, names) at ``indices``."""
        idx = np.arange(len(self))[indices]
        return ImageSet(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            names=[self.names[i] for i in idx],
            source=self.source, kind=self.kind, split=self.split,
        )

    def resized(self, size: Union[int, Tuple[int, int]]) -> "ImageSet":
        """A copy at ``size`` (int or (H, W)): images bilinear, labels nearest-neighbour."""
        size = _as_hw(size, "size")
        if size == self.size:
            return self
        images = np.stack([resize_image(im, size) for im in self.images])
        labels = None if self.labels is None else np.stack([resize_label(lb, size) for lb in self.labels])
        return ImageSet(images=images, labels=labels, names=list(self.names), source=self.source, kind=self.kind,
                        split=self.split)


def _as_hw(size: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`{name}` must be a positive int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one float image ``[H, W]`` to ``size`` = (H', W')."""
    if tuple(image.shape) == tuple(size):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


def resize_label(label: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of one label map ``[H, W]`` to ``size`` = (H', W')."""
    return resize_label_map(np.asarray(label), size).astype(np.int64, copy=False)


def image_to_array(image: Any) -> np.ndarray:
    """One image (PIL, numpy, torch or nested list; grey, grey+alpha, RGB or RGBA) as float32 ``[H, W]`` in [0, 1]:
    the package's image acceptance rule (:func:`ultrasound_diffusers.image_processor.to_image_array`)."""
    return to_image_array(image, "image")[0]


def label_to_array(label: Any) -> np.ndarray:
    """One label map (PIL, numpy or torch) as int64 ``[H, W]``; the package's one acceptance rule,
    :func:`ultrasound_diffusers.image_processor.to_label_array`."""
    return to_label_array(label, "a label map")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


#: Metadata files of an ``imagefolder`` (at the folder's top) whose ``*_file_name`` columns pair the files.
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def folder_metadata(folder: Path) -> Optional[Path]:
    """The ``imagefolder`` metadata file at the top of ``folder``, or None."""
    return next((folder / name for name in METADATA_FILES if (folder / name).is_file()), None)


def _metadata_pairs(metadata: Path) -> Tuple[List[Path], Optional[List[Path]]]:
    """Image and label files named by a metadata file: ``image_file_name`` (or ``file_name``) and
    ``label_file_name`` columns, relative to its folder."""
    import csv
    import json

    text = metadata.read_text(encoding="utf-8")
    if metadata.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(text.splitlines()))
    image_key = next((k for k in ("image_file_name", "file_name") if rows and k in rows[0]), None)
    if image_key is None:
        raise ValueError(f"{metadata} names no images (an image_file_name or file_name column)")
    images = [metadata.parent / row[image_key] for row in rows]
    labels = [metadata.parent / row["label_file_name"] for row in rows] if "label_file_name" in rows[0] else None
    missing = [p for p in images + (labels or []) if not p.is_file()]
    if missing:
        raise ValueError(f"{metadata} names {len(missing)} file(s) that do not exist, e.g. {missing[0]}")
    return images, labels


def folder_pairs(folder: Path, label_dir: str = "labels") -> Tuple[List[Path], Optional[List[Path]]]:
    """The image files of a folder and their label files, by the package's folder dialect: a metadata file at the
    top (``metadata.jsonl`` / ``.csv`` of an ``imagefolder``) pairs them by its ``image_file_name`` /
    ``label_file_name`` columns; else with an ``images/`` sub-folder the images are there and the label maps in
    the sibling ``label_dir`` (matched by stem; the PNG folders ``generate --export png`` and
    ``phantoms --png_dir`` write), else the image files directly inside and label maps in ``folder/label_dir``
    when it exists. Returns ``(image files, label files or None)``."""
    metadata = folder_metadata(folder)
    if metadata is not None:
        return _metadata_pairs(metadata)
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    files = _list_images(image_dir)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {image_dir}")
    label_folder = image_dir.parent / label_dir if image_dir != folder else folder / label_dir
    if not label_folder.is_dir():
        return files, None
    by_stem = {p.stem: p for p in _list_images(label_folder)}
    missing = [p.stem for p in files if p.stem not in by_stem]
    if missing:
        raise ValueError(
            f"{label_folder} has no label map for {len(missing)} image(s), e.g. {missing[0]!r}; every image "
            f"needs a label file with the same stem"
        )
    return files, [by_stem[p.stem] for p in files]


def _load_folder(folder: Path, label_dir: str) -> Rows:
    image_files, label_files = folder_pairs(folder, label_dir)
    images = []
    for path in image_files:
        with Image.open(path) as im:
            images.append(to_image_array(im, f"image {path}")[0])
    labels = None
    if label_files is not None:
        labels = []
        for path in label_files:
            with Image.open(path) as lb:
                labels.append(to_label_array(lb, f"label map {path}"))
    return images, labels, [p.stem for p in image_files]


def _image_column(dataset: Any, image_column: Optional[str], source: str, label_column: Optional[str] = None) -> str:
    """``image_column`` as given; else ``"image"``, else the first ``Image`` column that is not the label column,
    else ``"img"`` / ``"pixel_values"``."""
    import datasets

    columns = list(dataset.column_names)
    if image_column is not None and image_column not in columns:
        raise ValueError(f"`image_column` {image_column!r} not in {source}; columns: {columns}")
    image_features = [n for n, f in dataset.features.items() if isinstance(f, datasets.Image) and n != label_column]
    candidates = [image_column, "image", *image_features, "img", "pixel_values"]
    found = next((name for name in candidates if name is not None and name in columns), None)
    if found is not None:
        return found
    raise ValueError(f"no image column found in {source}; columns: {columns}; pass `image_column`")


def _load_dataset_rows(
    dataset: Any,
    image_column: Optional[str],
    label_column: Optional[str],
    max_images: Optional[int],
    source: str,
) -> Tuple[List[np.ndarray], Optional[List[np.ndarray]], List[str]]:
    img_col = _image_column(dataset, image_column, source, label_column)
    columns = list(dataset.column_names)
    if label_column is not None and label_column not in columns:
        raise ValueError(f"`label_column` {label_column!r} not in {source}; columns: {columns}")
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    wanted = [img_col] + ([label_column] if label_column else [])
    rows = dataset.select_columns(wanted).select(range(n))
    images = [image_to_array(x) for x in rows[img_col]]
    labels = None if not label_column else [label_to_array(x) for x in rows[label_column]]
    return images, labels, [f"{i:05d}" for i in range(n)]


#: Size of the phantoms of a ``phantoms:ANATOMY:N[:SEED]`` image-set source when no ``size`` is given.
DEFAULT_PHANTOM_SIZE = 64

Rows = Tuple[List[np.ndarray], Optional[List[np.ndarray]], List[str]]


def _phantom_rows(source: Source, size, max_images: Optional[int], argument: str) -> Rows:
    from ..phantoms import MAP_ANATOMIES, iter_phantom_batches
    from .spelling import parse_phantoms_spec

    spec = parse_phantoms_spec(source.spec, argument=argument, require_num=True)
    seed = spec.seed_or(0)
    count = spec.num if max_images is None else min(spec.num, int(max_images))
    images, labels = [], []
    if size is None:  # map anatomies (lung) are made at their own size only
        size = None if spec.anatomy in MAP_ANATOMIES else DEFAULT_PHANTOM_SIZE
    for batch_images, batch_labels, _ in iter_phantom_batches(count, spec.anatomy, size, seed):
        images.extend(np.asarray(batch_images, dtype=np.float32))
        if batch_labels is not None:  # map anatomies (lung) have maps in [0, 1] and no label maps
            labels.extend(np.asarray(batch_labels, dtype=np.int64))
    return images, labels or None, [f"phantom-{spec.anatomy}-{seed}-{i}" for i in range(count)]


def _file_rows(path: Path) -> Rows:
    if path.suffix.lower() == ".npy":
        return _array_rows(load_npy(path, f"image file {path}"), f"image file {path}")
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"image file {path}: expected a .npy array or one of {', '.join(IMAGE_EXTENSIONS)}")
    with Image.open(path) as im:
        return [to_image_array(im, f"image {path}")[0]], None, [path.stem]


def _array_rows(value: Any, what: str = "image array") -> Rows:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        rows = [_file_rows(Path(v)) for v in value]
        return [r[0][0] for r in rows], None, [r[2][0] for r in rows]
    if isinstance(value, (list, tuple)) and value and not np.isscalar(value[0]) and np.ndim(value[0]) >= 2:
        return [to_image_array(a, f"{what} [{i}]")[0] for i, a in enumerate(value)], None, []
    arr = _to_numpy(value)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 1, -1)
    if arr.ndim not in (3, 4):
        raise ValueError(f"an {what} must be [N, H, W], [N, 1, H, W] or [N, H, W, C], got {arr.shape}")
    return [to_image_array(a, f"{what} [{i}]")[0] for i, a in enumerate(arr)], None, []


def _source_rows(source: Source, label_column, image_column, size, max_images, label_dir, argument) -> Rows:
    """Images, label maps (or None) and names of an opened source."""
    if source.kind == "phantoms":
        return _phantom_rows(source, size, max_images, argument)
    if source.dataset is not None:
        dataset = source.dataset
        return _load_dataset_rows(dataset, image_column, _resolve_label_column(dataset, label_column), max_images,
                                  source.description)
    if source.kind == "folder":
        return _load_folder(source.path, label_dir)
    if source.kind == "file":
        return _file_rows(source.path)
    return _array_rows(source.value)


def load_image_set(
    source: Any,
    label_column: Optional[str] = None,
    image_column: Optional[str] = None,
    split: Optional[str] = None,
    size: Optional[Union[int, Tuple[int, int]]] = None,
    max_images: Optional[int] = None,
    label_dir: str = "labels",
    argument: str = "image set source",
) -> ImageSet:
    """Load a set of grayscale images (and label maps) from any source of the one door.

    Args:
        source: an :class:`ImageSet`, or anything :func:`~ultrasound_diffusers.data.sources.open_source` opens
            (see the module docstring); phantoms need N (``size`` or 64 px).
        label_column: column with the label maps in a dataset (``None``: no labels; ``"auto"``: the first of
            "label", "labels", "segmap", "mask", "segmentation" that holds images or arrays). Folders find their
            labels in ``label_dir`` automatically.
        image_column: column with the images (default: the first ``datasets.Image`` column, else ``"image"``).
        split: split of a dataset (the package's split rule: else ``"train"``, else the only split).
        size: int or (H, W) to resize every image to; default: the size of the first image.
        max_images: keep only the first ``max_images`` images.
        label_dir: name of the label folder next to an ``images/`` folder.
        argument: how errors name ``source`` (e.g. ``"--real"``).

    Returns:
        An :class:`ImageSet` with float32 images ``[N, H, W]`` in [0, 1] and int64 labels ``[N, H, W]`` or None,
        and the source's ``kind`` and ``split``.
    """
    if max_images is not None and int(max_images) < 1:
        raise ValueError(f"`max_images` must be positive, got {max_images}")
    if isinstance(source, ImageSet):
        result = source if max_images is None else source.subset(slice(0, int(max_images)))
        return result if size is None else result.resized(size)
    opened = open_source(source, split, argument=argument)
    description = opened.description if opened.kind != "phantoms" else (
        f"{opened.spec} (built-in {opened.phantoms.anatomy} phantoms)")
    images, labels, names = _source_rows(opened, label_column, image_column, size, max_images, label_dir, argument)
    if max_images is not None:
        images = images[: int(max_images)]
        labels = None if labels is None else labels[: int(max_images)]
        names = names[: int(max_images)]
    if not images:
        raise ValueError(f"image set {description} is empty")
    target = _as_hw(size, "size") if size is not None else tuple(images[0].shape)
    if size is None and any(tuple(im.shape) != target for im in images):
        warnings.warn(f"images of {description} differ in size; resizing all to {target}", UserWarning)
    images_arr = np.stack([resize_image(im, target) for im in images])
    labels_arr = None
    if labels is not None:
        labels_arr = np.stack([resize_label(lb, target) for lb in labels])
    return ImageSet(images=images_arr, labels=labels_arr, names=list(names), source=description, kind=opened.kind,
                    split=opened.split)


def _resolve_label_column(dataset: Any, label_column: Optional[str]) -> Optional[str]:
    """``label_column`` as given; ``"auto"`` picks the first known label column name present (or None)."""
    if label_column != "auto":
        return label_column
    import datasets

    for guess in _LABEL_COLUMN_GUESSES:
        feature = dataset.features.get(guess)
        # a class-label (scalar) column is not a label map: only image-like or nested-array columns qualify
        if isinstance(feature, _label_feature_types(datasets)):
            return guess
    return None


def _label_feature_types(datasets: Any) -> tuple:
    names = ("Image", "Array2D", "Array3D", "List", "LargeList", "Sequence")
    found = [getattr(datasets, n) for n in names if isinstance(getattr(datasets, n, None), type)]
    return tuple(found) + (list,)
