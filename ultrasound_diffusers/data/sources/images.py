"""Loading image sets for evaluation.

Every metric in :mod:`ultrasound_diffusers.evaluation` works on an :class:`ImageSet`: grayscale images as a
float32 array ``[N, H, W]`` with values in [0, 1], optional integer label maps ``[N, H, W]`` and one name per
image. :func:`load_image_set` builds one from

* a folder of images (PNG, JPEG, BMP, TIFF, WebP). When the folder holds an ``images/`` sub-folder, the images
  are read from there and label maps from a sibling ``labels/`` folder (files matched by stem, e.g.
  ``images/0001.png`` and ``labels/0001.png``); otherwise the image files directly inside the folder are used;
* a ``datasets`` dataset saved with ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``, pick one with ``split``);
* a ``datasets.Dataset`` / ``DatasetDict`` object;
* a dataset name on the Hugging Face Hub (anything that is not an existing local path), loaded with
  ``datasets.load_dataset(name, split=split or "train")``;
* a numpy array or torch tensor ``[N, H, W]``, ``[N, 1, H, W]`` or ``[N, H, W, C]`` (uint8, or float in [0, 1]).

All images of one set are brought to one size (``size``, or the size of the first image); label maps are resized
with nearest-neighbour interpolation.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..data.sources import is_saved_dataset, looks_like_hub_id

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
    """

    images: np.ndarray
    labels: Optional[np.ndarray] = None
    names: List[str] = field(default_factory=list)
    source: str = "array"

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
            source=self.source,
        )

    def resized(self, size: Union[int, Tuple[int, int]]) -> "ImageSet":
        """A copy at ``size`` (int or (H, W)): images bilinear, labels nearest-neighbour."""
        size = _as_hw(size, "size")
        if size == self.size:
            return self
        images = np.stack([resize_image(im, size) for im in self.images])
        labels = None if self.labels is None else np.stack([resize_label(lb, size) for lb in self.labels])
        return ImageSet(images=images, labels=labels, names=list(self.names), source=self.source)


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
    from ..image_processor import resize_label_map

    return resize_label_map(np.asarray(label), size).astype(np.int64, copy=False)


def image_to_array(image: Any) -> np.ndarray:
    """One image (PIL, numpy or torch; gray, gray+alpha or RGB) as float32 ``[H, W]`` in [0, 1]."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return (np.asarray(image, dtype=np.float32) / 65535.0).clip(0.0, 1.0)
        if image.mode == "F":
            arr = np.asarray(image, dtype=np.float32)
            return _float_to_unit(arr, "image")
        if image.mode not in ("L", "1"):
            image = image.convert("L")
        return np.asarray(image, dtype=np.float32) / 255.0
    arr = _to_numpy(image)
    if arr.ndim == 3:
        if arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        arr = _rgb_to_gray(arr)
    if arr.ndim != 2:
        raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return _float_to_unit(arr.astype(np.float32), "image")


def label_to_array(label: Any) -> np.ndarray:
    """One label map (PIL, numpy or torch) as int64 ``[H, W]``; the package's one acceptance rule,
    :func:`ultrasound_diffusers.image_processor.to_label_array`."""
    from ..image_processor import to_label_array

    return to_label_array(label, "a label map")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _rgb_to_gray(arr: np.ndarray) -> np.ndarray:
    channels = arr.shape[-1]
    if channels == 1:
        return arr[..., 0]
    if channels == 2:  # gray + alpha
        return arr[..., 0]
    if channels in (3, 4):
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
        gray = arr[..., :3].astype(np.float64) @ weights
        return gray.astype(np.uint8) if arr.dtype == np.uint8 else gray.astype(np.float32)
    raise ValueError(f"an image must have 1, 2, 3 or 4 channels, got {channels}")


def _float_to_unit(arr: np.ndarray, name: str) -> np.ndarray:
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(
            f"float `{name}` values must lie in [0, 1] (got [{lo:.4g}, {hi:.4g}]); pass uint8 images or rescale "
            "(images in [-1, 1] map to [0, 1] with (x + 1) / 2)"
        )
    return arr.clip(0.0, 1.0)


def _list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_folder(folder: Path, label_dir: str) -> Tuple[List[np.ndarray], Optional[List[np.ndarray]], List[str]]:
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    files = _list_images(image_dir)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {image_dir}")
    images, names = [], []
    for path in files:
        with Image.open(path) as im:
            images.append(image_to_array(im))
        names.append(path.stem)
    labels = None
    label_folder = image_dir.parent / label_dir if image_dir != folder else folder / label_dir
    if label_folder.is_dir():
        by_stem = {p.stem: p for p in _list_images(label_folder)}
        missing = [n for n in names if n not in by_stem]
        if missing:
            raise ValueError(
                f"{label_folder} has no label map for {len(missing)} image(s), e.g. {missing[0]!r}; every image "
                f"needs a label file with the same stem"
            )
        labels = []
        for name in names:
            with Image.open(by_stem[name]) as lb:
                labels.append(label_to_array(lb))
    return images, labels, names


def _pick_split(dataset: Any, split: Optional[str], source: str) -> Any:
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None:
            split = "train" if "train" in dataset else next(iter(dataset))
        if split not in dataset:
            raise ValueError(f"split {split!r} not in {source}; available: {list(dataset)}")
        return dataset[split]
    return dataset


def _image_column(dataset: Any, image_column: Optional[str], source: str) -> str:
    import datasets

    columns = list(dataset.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(f"`image_column` {image_column!r} not in {source}; columns: {columns}")
        return image_column
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for guess in ("image", "img", "pixel_values"):
        if guess in columns:
            return guess
    raise ValueError(f"no image column found in {source}; columns: {columns}; pass `image_column`")


def _load_dataset_rows(
    dataset: Any,
    image_column: Optional[str],
    label_column: Optional[str],
    max_images: Optional[int],
    source: str,
) -> Tuple[List[np.ndarray], Optional[List[np.ndarray]], List[str]]:
    img_col = _image_column(dataset, image_column, source)
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


def load_image_set(
    source: Any,
    label_column: Optional[str] = None,
    image_column: Optional[str] = None,
    split: Optional[str] = None,
    size: Optional[Union[int, Tuple[int, int]]] = None,
    max_images: Optional[int] = None,
    label_dir: str = "labels",
) -> ImageSet:
    """Load a set of grayscale images (and label maps) from a folder, a ``datasets`` dataset or an array.

    Args:
        source: an :class:`ImageSet`, a path (image folder, ``save_to_disk`` folder), a Hub dataset name, a
            ``datasets.Dataset``/``DatasetDict``, an array ``[N, H, W]`` (uint8 or float in [0, 1]), or the
            built-in phantoms ``phantoms:ANATOMY:N[:SEED]`` (images and label maps, ``size`` or 64 px).
        label_column: column with the label maps in a dataset (``None``: no labels; ``"auto"``: the first of
            "label", "labels", "segmap", "mask", "segmentation" that holds images or arrays). Folders find their
            labels in ``label_dir`` automatically.
        image_column: column with the images (default: the first ``datasets.Image`` column, else ``"image"``).
        split: split of a ``DatasetDict`` or Hub dataset (default ``"train"`` when present, else the first).
        size: int or (H, W) to resize every image to; default: the size of the first image.
        max_images: keep only the first ``max_images`` images.
        label_dir: name of the label folder next to an ``images/`` folder.

    Returns:
        An :class:`ImageSet` with float32 images ``[N, H, W]`` in [0, 1] and int64 labels ``[N, H, W]`` or None.
    """
    if max_images is not None and int(max_images) < 1:
        raise ValueError(f"`max_images` must be positive, got {max_images}")
    labels: Optional[List[np.ndarray]]
    if isinstance(source, ImageSet):
        result = source if max_images is None else source.subset(slice(0, int(max_images)))
        return result if size is None else result.resized(size)

    from ..data.sources import is_phantoms_spec

    if is_phantoms_spec(source) and not Path(source).exists():
        from ..data.phantoms import iter_phantom_batches
        from ..data.sources import parse_phantoms_spec

        spec = parse_phantoms_spec(source, argument="image set source", require_num=True)
        ph_size = DEFAULT_PHANTOM_SIZE if size is None else size
        count = spec.num if max_images is None else min(spec.num, int(max_images))
        images, labels = [], []
        for batch_images, batch_labels, _ in iter_phantom_batches(count, spec.anatomy, ph_size, spec.seed):
            images.extend(np.asarray(batch_images, dtype=np.float32))
            labels.extend(np.asarray(batch_labels, dtype=np.int64))
        names = [f"phantom-{spec.anatomy}-{spec.seed}-{i}" for i in range(count)]
        description = f"{source} (built-in {spec.anatomy} phantoms)"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        description = str(source)
        if path.is_dir():
            if is_saved_dataset(path):
                import datasets

                dataset = _pick_split(datasets.load_from_disk(str(path)), split, description)
                images, labels, names = _load_dataset_rows(
                    dataset, image_column, _resolve_label_column(dataset, label_column), max_images, description
                )
            else:
                images, labels, names = _load_folder(path, label_dir)
        elif path.exists():
            raise ValueError(f"image set source {source!r} is a file; pass a folder, a saved dataset or a Hub name")
        elif not looks_like_hub_id(str(source)) or "\\" in str(source):
            raise FileNotFoundError(f"image set source {source!r} does not exist (and is not a Hub dataset name)")
        else:
            from ..data.sources import load_hub_dataset

            dataset = load_hub_dataset(str(source), split=split or "train", argument="image set source")
            images, labels, names = _load_dataset_rows(
                dataset, image_column, _resolve_label_column(dataset, label_column), max_images, description
            )
    elif _is_datasets_object(source):
        description = f"{type(source).__name__}"
        dataset = _pick_split(source, split, description)
        images, labels, names = _load_dataset_rows(
            dataset, image_column, _resolve_label_column(dataset, label_column), max_images, description
        )
    else:
        description = "array"
        arr = _to_numpy(source)
        if arr.ndim == 4:
            if arr.shape[1] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 1, -1)
            images = [image_to_array(a) for a in arr]
        elif arr.ndim == 3:
            images = [image_to_array(a) for a in arr]
        else:
            raise ValueError(f"an image array must be [N, H, W], [N, 1, H, W] or [N, H, W, C], got {arr.shape}")
        labels, names = None, []

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
    return ImageSet(images=images_arr, labels=labels_arr, names=list(names), source=description)


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


def _is_datasets_object(obj: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a hard dependency
        return False
    return isinstance(obj, (datasets.Dataset, datasets.DatasetDict))
