"""Label-map sources: where the label maps of a generation run come from, opened one way.

:func:`load_label_source` opens the built-in phantoms (``phantoms:ANATOMY:N[:SEED]``, the one spelling of
:mod:`ultrasound_diffusers.data.sources`), a saved dataset or Hub dataset with a label column, a folder of label
images or a ``.npy`` array, as a :class:`LabelSource` (indexable, with a stable id per map for the dataset's
``source_id`` column); :func:`check_label_source` applies the one acceptance rule and nearest resize rule of
:mod:`ultrasound_diffusers.image_processor` to every map and fingerprints them. Used by
:func:`ultrasound_diffusers.generation.generate_dataset` and the ``generate`` command.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..image_processor import load_npy, read_label_file, resize_label_map, to_label_array
from .converters import find_files
from .sources import Source, folder_metadata, folder_pairs, open_source, parse_phantoms_spec

PathLike = Union[str, os.PathLike]
LABEL_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".npy")

__all__ = [
    "ArrayLabelSource",
    "DatasetLabelSource",
    "FolderLabelSource",
    "LABEL_IMAGE_SUFFIXES",
    "LabelSource",
    "check_label_source",
    "load_label_source",
    "parse_phantom_spec",
    "read_label_image",
]




def read_label_image(path: PathLike) -> np.ndarray:
    """Read a label map file (PNG/TIFF/BMP with class values as pixel values, or a ``.npy`` array [H, W]); see
    :func:`ultrasound_diffusers.image_processor.read_label_file`."""
    return read_label_file(path)


class LabelSource:
    """A sequence of label maps with stable ids. Subclasses implement ``__len__``, ``_get`` and ``source_id``.

    ``source[i]`` is label map ``i`` as an int64 array [H, W]; :meth:`get_many` reads several (subclasses read
    consecutive indices in one go); ``description`` says where the maps come from (shown in the dataset card).
    """

    description: str = "label maps"
    #: the kind of source the maps came from (:data:`ultrasound_diffusers.data.sources.SOURCE_KINDS`) and its split
    kind: str = "array"
    split: Optional[str] = "train"

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get(self, index: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def source_id(self, index: int) -> str:
        return str(index)

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"label index {index} out of range for {n} label maps")
        index = index % n
        return to_label_array(self._get(index), where=f"label map {index} ({self.source_id(index)!r})")

    def get_many(self, indices: Sequence[int]) -> List[np.ndarray]:
        return [self[i] for i in indices]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class ArrayLabelSource(LabelSource):
    """Label maps held in memory: an array [N, H, W] or a list of 2-D maps (arrays, tensors, PIL images)."""

    def __init__(self, maps: Union[np.ndarray, Sequence[Any]], ids: Optional[Sequence[str]] = None,
                 description: str = "in-memory label maps"):
        if isinstance(maps, np.ndarray):
            if maps.ndim == 2:
                maps = maps[None]
            if maps.ndim != 3:
                raise ValueError(f"`labels` array must have shape [N, H, W], got {maps.shape}")
            self._maps = list(maps)
        else:
            self._maps = list(maps)
        if ids is not None and len(ids) != len(self._maps):
            raise ValueError(f"`ids` has {len(ids)} entries for {len(self._maps)} label maps")
        self._ids = None if ids is None else [str(i) for i in ids]
        self.description = description

    def __len__(self) -> int:
        return len(self._maps)

    def _get(self, index: int) -> Any:
        return self._maps[index]

    def source_id(self, index: int) -> str:
        return self._ids[index] if self._ids is not None else str(index)


class DatasetLabelSource(LabelSource):
    """Label maps in a column of a ``datasets.Dataset`` (an ``Image`` column or a 2-D array column).

    Args:
        dataset: the dataset.
        label_column: column of the label maps.
        id_column: column(s) naming each row (a name, a comma-separated list or a list; joined with ``_``);
            default: the row index.
    """

    def __init__(self, dataset, label_column: str = "label", id_column: Union[str, Sequence[str], None] = None,
                 description: Optional[str] = None):
        if label_column not in dataset.column_names:
            raise ValueError(
                f"`label_column` {label_column!r} is not a column of the dataset; its columns are {dataset.column_names}"
            )
        if isinstance(id_column, str):
            id_columns = [c.strip() for c in id_column.split(",") if c.strip()]
        else:
            id_columns = list(id_column or [])
        missing = [c for c in id_columns if c not in dataset.column_names]
        if missing:
            raise ValueError(f"`id_column` {missing} not in the dataset's columns {dataset.column_names}")
        self.label_column = label_column
        self.id_columns = id_columns
        self._labels = dataset.select_columns([label_column])
        self._ids = None
        if id_columns:
            table = dataset.select_columns(id_columns).to_dict()
            self._ids = ["_".join(str(table[c][i]) for c in id_columns) for i in range(dataset.num_rows)]
            if len(set(self._ids)) != len(self._ids):
                raise ValueError(f"`id_column` {id_columns} does not identify the rows uniquely")
        self.description = description or f"datasets.Dataset ({dataset.num_rows} rows), column {label_column!r}"

    def __len__(self) -> int:
        return self._labels.num_rows

    def _get(self, index: int) -> Any:
        return self._labels[int(index)][self.label_column]

    def get_many(self, indices: Sequence[int]) -> List[np.ndarray]:
        indices = [int(i) for i in indices]
        if indices and indices == list(range(indices[0], indices[0] + len(indices))):
            values = self._labels[indices[0]: indices[0] + len(indices)][self.label_column]
            return [to_label_array(v, where=f"label map {i} ({self.source_id(i)!r})") for i, v in zip(indices, values)]
        return super().get_many(indices)

    def source_id(self, index: int) -> str:
        return self._ids[index] if self._ids is not None else str(index)


class FolderLabelSource(LabelSource):
    """Label map files under a folder (recursively, sorted; hidden entries skipped); ids are relative paths."""

    def __init__(self, folder: PathLike, suffixes: Sequence[str] = LABEL_IMAGE_SUFFIXES):
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"label folder {root} does not exist")
        files = find_files(root, suffixes)
        if not files:
            raise ValueError(f"label folder {root} holds no label map files ({', '.join(suffixes)})")
        self.root = root
        self.files = files
        self.description = f"label map files in {root} ({len(files)})"

    def __len__(self) -> int:
        return len(self.files)

    def _get(self, index: int) -> Any:
        return read_label_image(self.files[index])

    def source_id(self, index: int) -> str:
        return self.files[index].relative_to(self.root).as_posix()


def parse_phantom_spec(spec: str) -> Dict[str, Any]:
    """Parse ``phantoms:ANATOMY:N[:SEED]`` into ``{"anatomy", "num", "seed"}`` (ValueError if malformed); the
    spelling is :func:`ultrasound_diffusers.data.sources.parse_phantoms_spec`'s, with N required here."""
    parsed = parse_phantoms_spec(spec, argument="labels", require_num=True)
    return {"anatomy": parsed.anatomy, "num": parsed.num, "seed": parsed.seed_or(0)}


def _phantom_labels(source: Source, size, argument: str) -> LabelSource:
    from .phantoms import phantom_label_maps

    spec = parse_phantoms_spec(source.spec, argument=argument, require_num=True)
    if size is None:
        raise ValueError("phantom label sources need the image `size` (the model's sample size)")
    seed = spec.seed_or(0)
    maps = phantom_label_maps(spec.num, anatomy=spec.anatomy, size=size, seed=seed)
    ids = [f"phantom-{spec.anatomy}-{seed}-{i}" for i in range(spec.num)]
    h, w = maps.shape[-2:]
    return ArrayLabelSource(maps, ids, description=f"{source.spec} (built-in {spec.anatomy} phantom label maps, {h}x{w})")


def _file_labels(path: Path, argument: str) -> LabelSource:
    if path.suffix.lower() != ".npy":
        if path.suffix.lower() in LABEL_IMAGE_SUFFIXES:
            return ArrayLabelSource([read_label_image(path)], ids=[path.name], description=f"label map file {path}")
        raise ValueError(f"{argument} file {path} must be a .npy array [N, H, W] or a label image "
                         f"({', '.join(LABEL_IMAGE_SUFFIXES)})")
    array = load_npy(path, f"{argument} file {path}")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{argument} file {path} must hold an array [N, H, W], got shape {array.shape}")
    return ArrayLabelSource(array, description=f"{path} ({array.shape[0]} label maps)")


def _array_labels(labels: Any) -> LabelSource:
    if isinstance(labels, (list, tuple)) and labels and all(isinstance(item, (str, os.PathLike)) for item in labels):
        return ArrayLabelSource([read_label_image(p) for p in labels], ids=[os.fspath(p) for p in labels],
                                description=f"{len(labels)} label map files")
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # a torch tensor [N, H, W]
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, (np.ndarray, list, tuple)):
        raise ValueError(
            "`labels` must be a path, a Hub dataset name, 'phantoms:ANATOMY:N', a datasets.Dataset, an array "
            f"[N, H, W] or a list of label maps; got {type(labels).__name__}"
        )
    if len(labels) == 0:
        raise ValueError("`labels` is empty")
    return ArrayLabelSource(labels)


def _folder_labels(path: Path, argument: str) -> LabelSource:
    """A folder of label files; in the package's folder dialect of image + label pairs (a metadata file at the
    top, or ``images/`` + ``labels/``: :func:`ultrasound_diffusers.data.sources.folder_pairs`) its label files."""
    if folder_metadata(path) is None and (path / "images").is_dir() and (path / "labels").is_dir():
        return FolderLabelSource(path / "labels")  # read one by one, as they are asked for
    if folder_metadata(path) is not None:
        _, files = folder_pairs(path)
        if files is None:
            raise ValueError(f"{argument} {path} pairs no label maps with its images (no label_file_name column)")
        return ArrayLabelSource([read_label_image(f) for f in files], ids=[f.relative_to(path).as_posix() for f in files],
                                description=f"label map files of {path} ({len(files)})")
    return FolderLabelSource(path)


def load_label_source(
    labels: Any,
    label_column: str = "label",
    id_column: Union[str, Sequence[str], None] = None,
    split: Optional[str] = None,
    size: Union[int, Tuple[int, int], None] = None,
    argument: str = "`labels`",
) -> LabelSource:
    """Open a source of label maps through the one input door
    (:func:`ultrasound_diffusers.data.sources.open_source`, with its split rule).

    Args:
        labels: one of

            * ``"phantoms:ANATOMY:N[:SEED]"``: ``N`` built-in phantom label maps
              (:func:`ultrasound_diffusers.data.phantoms.phantom_label_maps`) of size ``size``;
            * a folder written by ``save_to_disk`` (a Dataset or DatasetDict), read with ``load_from_disk``;
            * a folder of label map images (PNG/TIFF/BMP whose pixel values are class indices, or ``.npy``); in
              the PNG dialect of ``generate --export png`` / ``phantoms --png_dir`` (``images/`` + ``labels/``)
              its ``labels/`` folder;
            * a ``.npy`` file with an array [N, H, W], or one label image file;
            * any other string: a dataset on the Hugging Face Hub, read with ``datasets.load_dataset``;
            * a ``datasets.Dataset`` / ``DatasetDict``, an array [N, H, W], a list of 2-D maps or of label map
              files, or a LabelSource.
        label_column: column of the label maps for dataset sources.
        id_column: column(s) naming the rows of a dataset source (default: the row index).
        split: split of a dataset (the package's split rule: else ``"train"``, else the only split).
        size: (height, width) or int, for phantom sources.
        argument: how errors name ``labels`` (e.g. ``"--labels"``).
    """
    if isinstance(labels, LabelSource):
        return labels
    source = open_source(labels, split, argument=argument)
    if source.kind == "phantoms":
        result = _phantom_labels(source, size, argument.strip("`"))
    elif source.dataset is not None:
        where = source.description + (f" split {source.split!r}" if len(source.splits) > 1 or source.split != "train"
                                      else "")
        result = DatasetLabelSource(source.dataset, label_column, id_column,
                                    description=f"{where} ({source.dataset.num_rows} rows), column {label_column!r}")
    elif source.kind == "folder":
        result = _folder_labels(source.path, argument)
    elif source.kind == "file":
        result = _file_labels(source.path, argument)
    else:
        result = _array_labels(source.value)
    result.kind, result.split = source.kind, source.split
    return result


def _resize_nearest(label: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (the package's one rule, :func:`resize_label_map`)."""
    return resize_label_map(label, size).astype(np.int64)


def _prepare_label(label: np.ndarray, size: Tuple[int, int], resize: bool, where: str) -> np.ndarray:
    if tuple(label.shape) != tuple(size):
        if not resize:
            raise ValueError(
                f"{where} has size {label.shape[0]}x{label.shape[1]} but the model generates {size[0]}x{size[1]} "
                "images; resize the labels or pass resize_labels=True (--resize_labels) to resize them (nearest)"
            )
        label = _resize_nearest(label, size)
    return label


def check_label_source(source: LabelSource, num_classes: int, size: Tuple[int, int], resize: bool = False,
                       progress: bool = False) -> str:
    """Check every label map before anything is generated; return a digest of the maps and their ids.

    Raises ValueError naming the first map that is not 2-D, has the wrong size (unless ``resize``) or holds
    labels outside ``[0, num_classes - 1]``.
    """
    from tqdm.auto import tqdm

    n = len(source)
    if n == 0:
        raise ValueError("`labels` holds no label maps")
    digest = hashlib.sha256()
    step = 256
    bar = tqdm(total=n, desc="checking label maps", unit="map", disable=not progress or n < 2 * step, leave=False)
    for start in range(0, n, step):
        indices = list(range(start, min(start + step, n)))
        for i, raw in zip(indices, source.get_many(indices)):
            where = f"label map {i} ({source.source_id(i)!r})"
            label = _prepare_label(raw, size, resize, where)
            low, high = int(label.min()), int(label.max())
            if low < 0 or high >= num_classes:
                raise ValueError(
                    f"{where} holds labels in [{low}, {high}], but the model knows {num_classes} classes "
                    f"[0, {num_classes - 1}]; re-code the labels (e.g. the echo coding with the fan) first"
                )
            digest.update(source.source_id(i).encode("utf-8") + b"\0")
            digest.update(np.asarray(label.shape, dtype=np.int64).tobytes())
            digest.update(label.astype(np.uint8 if high < 256 else np.int64).tobytes())
        bar.update(len(indices))
    bar.close()
    return digest.hexdigest()
