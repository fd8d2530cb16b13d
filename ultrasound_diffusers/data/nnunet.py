"""Export labelled images as an nnU-Net v2 raw dataset (2D PNG, the natural-image convention).

:func:`export_nnunet` writes ``folder/DatasetXXX_Name`` (``XXX`` the three-digit dataset id) in the layout
``nnUNetv2_plan_and_preprocess`` reads from ``nnUNet_raw``::

    Dataset501_EchoSynthetic/
      dataset.json       channel_names, labels (background: 0, ...), numTraining, file_ending ".png", ...
      imagesTr/case_0000_0000.png ...   one 8-bit grayscale PNG per case, channel suffix _0000
      labelsTr/case_0000.png ...        8-bit PNG label maps, pixel value = class (0 .. K-1)
      imagesTs/, labelsTs/              with ``test_dataset``: held-out (e.g. real) cases to predict and score
      cases.csv          case identifier -> split, the dataset's row and metadata (source id, seed, ...)

The folder is written atomically (it appears complete or not at all). nnU-Net reads ``.png`` files with its
``NaturalImage2DIO`` reader (a 2D grayscale PNG is one channel), which ``dataset.json`` names explicitly. Label 0
is called ``background`` whatever it means in the coding (nnU-Net requires it; the echo coding's "outside the fan"
is recorded in ``description``), and the labels must be the consecutive integers 0 .. K-1.

Train on it with nnU-Net (not a dependency of this package)::

    export nnUNet_raw=OUT/nnunet_raw nnUNet_preprocessed=... nnUNet_results=...
    nnUNetv2_plan_and_preprocess -d 501 --verify_dataset_integrity
    nnUNetv2_train 501 2d 0
    nnUNetv2_predict -i OUT/nnunet_raw/Dataset501_.../imagesTs -o pred -d 501 -c 2d -f 0   # with a test set
    nnUNetv2_evaluate_simple OUT/nnunet_raw/Dataset501_.../labelsTs pred -l 1 2 3 4
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.io import check_output_dir, replace_directory

PathLike = Union[str, os.PathLike]

#: ``kind`` of the marker :func:`export_nnunet` leaves in its folders (see :func:`~ultrasound_diffusers.utils.io.check_output_dir`).
EXPORT_KIND = "export-nnunet"
#: Defaults of :func:`export_nnunet` and ``generate --export nnunet``.
DEFAULT_DATASET_ID = 501
DEFAULT_DATASET_NAME = "UltrasoundSynthetic"
#: Metadata columns copied into ``cases.csv`` when the dataset has them.
CASE_METADATA_COLUMNS = ("source_id", "label_index", "copy_index", "seed", "index", "patient", "view", "phase")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def nnunet_dataset_folder(dataset_id: int, dataset_name: str) -> str:
    """``"Dataset{id:03d}_{name}"`` after checking ``dataset_id`` (1-999) and ``dataset_name`` (letters, digits,
    ``_`` and ``-``)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"`dataset_id` must be an integer in [1, 999] (nnU-Net's three digits), got {dataset_id!r}")
    if not isinstance(dataset_name, str) or not _NAME_RE.match(dataset_name):
        raise ValueError(
            f"`dataset_name` must be letters, digits, '_' or '-' (starting with a letter or digit), got {dataset_name!r}"
        )
    return f"Dataset{int(dataset_id):03d}_{dataset_name}"


def check_nnunet_target(
    folder: PathLike,
    dataset_id: int = DEFAULT_DATASET_ID,
    dataset_name: str = DEFAULT_DATASET_NAME,
    overwrite: bool = False,
    inputs: Sequence[Optional[PathLike]] = (),
    argument: str = "`folder`",
) -> Path:
    """The folder :func:`export_nnunet` would write, checked before any work.

    Refused: a non-empty folder this exporter did not write (unless ``overwrite``), the working directory or a
    parent of it, a folder holding one of ``inputs``, and a second dataset with the same id in ``folder``
    (``DatasetXXX_Other``: nnU-Net could not tell them apart).

    Returns:
        ``folder / "DatasetXXX_Name"``.
    """
    name = nnunet_dataset_folder(dataset_id, dataset_name)
    parent = Path(folder)
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{argument} {parent} exists and is not a folder; give the nnUNet_raw folder")
    if parent.is_dir():
        prefix = f"Dataset{int(dataset_id):03d}_"
        clash = sorted(p.name for p in parent.iterdir() if p.name.startswith(prefix) and p.name != name)
        if clash:
            raise ValueError(
                f"{argument} {parent} already has {clash[0]} with dataset id {int(dataset_id)}; nnU-Net needs one "
                "dataset per id: choose another dataset id or remove that folder"
            )
    return check_output_dir(parent / name, EXPORT_KIND, inputs=inputs, overwrite=overwrite, argument=argument)


def resolve_label_names(
    label_names: Union[None, str, Sequence[str], Mapping[Any, str]], num_classes: Optional[int] = None
) -> List[str]:
    """Class names in index order, from a coding name (``"echo"``, ``"camus"``, ``"thyroid"``; see
    :data:`~ultrasound_diffusers.data.labels.LABEL_CODINGS`), a list, a ``{index: name}`` mapping (indices
    0 .. K-1, every one present), or None (``class_<k>``, which needs ``num_classes``)."""
    from .labels import LABEL_CODINGS

    if label_names is None:
        if num_classes is None:
            raise ValueError("`label_names` None needs `num_classes`")
        return [f"class_{k}" for k in range(int(num_classes))]
    if isinstance(label_names, str):
        key = label_names.strip().lower()
        if key in LABEL_CODINGS:
            coding = LABEL_CODINGS[key]
            return [coding[k] for k in range(len(coding))]
        names = [n.strip() for n in label_names.split(",")]
        if len(names) < 2:
            raise ValueError(
                f"`label_names` must be a coding ({', '.join(LABEL_CODINGS)}), comma-separated names or a list, "
                f"got {label_names!r}"
            )
        return names
    if isinstance(label_names, Mapping):
        try:
            items = {int(k): str(v) for k, v in label_names.items()}
        except (TypeError, ValueError) as err:
            raise ValueError(f"`label_names` mapping keys must be class indices, got {list(label_names)}") from err
        if sorted(items) != list(range(len(items))):
            raise ValueError(f"`label_names` must name the classes 0 .. K-1 without gaps, got indices {sorted(items)}")
        return [items[k] for k in range(len(items))]
    return [str(v) for v in label_names]


def nnunet_labels(names: Sequence[str]) -> Dict[str, int]:
    """The ``labels`` entry of ``dataset.json``: ``{"background": 0, names[1]: 1, ...}`` (names must be unique)."""
    if len(names) < 2:
        raise ValueError(f"an nnU-Net dataset needs background and at least one class, got {list(names)}")
    if len(names) > 256:
        raise ValueError(f"label maps are written as 8-bit PNG; got {len(names)} > 256 classes")
    keys = ["background"] + [str(n) for n in names[1:]]
    if len(set(keys)) != len(keys) or any(not k.strip() for k in keys):
        raise ValueError(f"class names must be unique and non-empty (label 0 is 'background'), got {keys}")
    return {k: i for i, k in enumerate(keys)}


def _raw_bytes(value: Any) -> Optional[bytes]:
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    return None


def _open(value: Any, what: str):
    from PIL import Image

    data = _raw_bytes(value)
    if data is not None:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image, data
    if isinstance(value, Image.Image):
        return value, None
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2D image, got shape {array.shape}")
    return Image.fromarray(array), None


def _image_png(value: Any, what: str):
    """``(png bytes, (H, W))`` of a grayscale image: the stored PNG when it is 8- or 16-bit grayscale already,
    else re-encoded as 8-bit grayscale (colour and palette images are converted)."""
    image, data = _open(value, what)
    if image.mode in ("L", "I;16") and data is not None and data.startswith(_PNG_MAGIC):
        return data, (image.height, image.width)
    if image.mode in ("RGB", "RGBA", "LA", "P", "1"):
        image = image.convert("L")
    elif image.mode not in ("L", "I;16"):
        raise ValueError(f"{what} has image mode {image.mode!r}; nnU-Net PNGs must be 8- or 16-bit grayscale")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), (image.height, image.width)


def _label_png(value: Any, what: str, num_classes: int):
    """``(png bytes, label array)`` of a label map with values in [0, num_classes - 1], as 8-bit PNG."""
    image, data = _open(value, what)
    if image.mode in ("RGB", "RGBA", "P", "LA"):
        raise ValueError(f"{what} is a {image.mode} image; label maps must be single-channel class indices")
    array = np.asarray(image)
    if array.ndim != 2 or (not np.issubdtype(array.dtype, np.integer) and array.dtype != bool):
        raise ValueError(f"{what} must be a 2D integer label map, got {array.dtype} {array.shape}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{what} has label values in [{low}, {high}] but the dataset has {num_classes} classes (0 .. "
            f"{num_classes - 1}); pass `label_names` for every class"
        )
    if image.mode == "L" and data is not None and data.startswith(_PNG_MAGIC):
        return data, array
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue(), array


def _write_case(images_dir: Path, labels_dir: Path, case: str, image: Any, label: Any, what: str,
                num_classes: int):
    """Write one case: ``images_dir/{case}_0000.png`` and, unless ``label`` is None, ``labels_dir/{case}.png``
    (same size as the image). Returns the image size (H, W)."""
    image_png, size = _image_png(image, f"image of {what}")
    if label is not None:
        label_png, label_map = _label_png(label, f"label map of {what}", num_classes)
        if tuple(label_map.shape) != tuple(size):
            raise ValueError(f"{what}: image {size} and label map {label_map.shape} differ in size")
        (labels_dir / f"{case}.png").write_bytes(label_png)
    (images_dir / f"{case}_0000.png").write_bytes(image_png)
    return tuple(size)


def held_out_cases_dataset(source: Any, split: Optional[str] = None, max_images: Optional[int] = None):
    """Held-out cases for :func:`export_nnunet` (``test_dataset``) from any image-set source of ``evaluate``: a
    saved dataset, a Hub dataset, an ``images/`` + ``labels/`` folder, an array or ``phantoms:ANATOMY:N[:SEED]``
    (:func:`ultrasound_diffusers.data.sources.load_image_set`, the one input door; label maps found automatically). Returns a
    ``datasets.Dataset`` with ``image`` (8-bit grayscale) and, when the source has label maps, ``label``."""
    import datasets as hf_datasets

    from .sources import load_image_set

    image_set = load_image_set(source, label_column="auto", split=split, max_images=max_images)
    images = [np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8) for image in image_set.images]
    columns = {"image": images}
    features = {"image": hf_datasets.Image()}
    if image_set.labels is not None:
        if int(image_set.labels.min()) < 0 or int(image_set.labels.max()) > 255:
            raise ValueError(f"the label maps of {source!r} must hold classes 0 .. 255 for nnU-Net's 8-bit PNGs")
        columns["label"] = [labels.astype(np.uint8) for labels in image_set.labels]
        features["label"] = hf_datasets.Image()
    return hf_datasets.Dataset.from_dict(columns, features=hf_datasets.Features(features))


def _dataset_dirs(dataset) -> List[Path]:
    return [Path(f["filename"]).parent for f in getattr(dataset, "cache_files", None) or [] if "filename" in f]


def _test_split(test_dataset, image_column: str, label_column: str) -> Tuple[Any, Optional[str]]:
    """``(dataset, label-map column or None)`` of ``test_dataset`` of :func:`export_nnunet`: a dataset (its
    ``label_column`` when it has one) or a ``(dataset, test_label_column)`` pair; the columns are checked."""
    if isinstance(test_dataset, tuple):
        if len(test_dataset) != 2 or not (test_dataset[1] is None or isinstance(test_dataset[1], str)):
            raise ValueError(
                "`test_dataset` as a tuple must be (dataset, label-map column or None), got a tuple of "
                f"{len(test_dataset)}: {tuple(type(v).__name__ for v in test_dataset)}"
            )
        dataset, labels = test_dataset
        explicit = True
    else:
        dataset, labels, explicit = test_dataset, None, False
    columns = list(getattr(dataset, "column_names", []) or [])
    if image_column not in columns:
        raise ValueError(f"`test_dataset` has no image column {image_column!r} (columns: {columns})")
    if not explicit:
        labels = label_column if label_column in columns else None
    elif labels is not None and labels not in columns:
        raise ValueError(f"`test_dataset`'s label column {labels!r} is not one of its columns ({columns})")
    if len(dataset) == 0:
        raise ValueError("`test_dataset` is empty")
    return dataset, labels


def export_nnunet(
    dataset,
    folder: PathLike,
    dataset_id: int = DEFAULT_DATASET_ID,
    dataset_name: str = DEFAULT_DATASET_NAME,
    label_names: Union[None, str, Sequence[str], Mapping[Any, str]] = None,
    *,
    image_column: str = "image",
    label_column: str = "label",
    channel_name: str = "ultrasound",
    case_prefix: str = "case",
    description: Optional[str] = None,
    overwrite: bool = False,
    test_dataset=None,
) -> Path:
    """Write ``dataset`` as the nnU-Net v2 raw dataset ``folder/DatasetXXX_Name`` (atomically).

    Args:
        dataset: a ``datasets.Dataset`` with an image column and a label-map column (a generated dataset of
            ``ultrasound-diffusers generate``, a phantom or converted dataset, ...). Each row becomes one training
            case, in row order.
        folder: the ``nnUNet_raw`` folder the dataset folder goes into (created if missing).
        dataset_id: nnU-Net dataset id, 1-999 (folder ``Dataset{id:03d}_{name}``; 1-10 are the Medical
            Segmentation Decathlon's; default 501).
        dataset_name: letters, digits, ``_``, ``-``.
        label_names: class names in index order: a coding name (``"echo"``, ``"camus"``, ``"thyroid"``), a list or
            ``{index: name}``; default ``class_<k>`` for 1 + the largest label found. Label 0 is written as
            ``background`` (nnU-Net's rule); its name in the coding goes into ``description``.
        image_column, label_column: the dataset's columns.
        channel_name: ``channel_names["0"]`` of ``dataset.json`` (nnU-Net z-scores any channel not named ``CT``).
        case_prefix: case identifiers are ``{case_prefix}_{row:04d}`` (more digits for 10,000 rows or more).
        description: free text for ``dataset.json`` (default: rows, image size and the label coding).
        overwrite: replace a non-empty folder this exporter did not write (an earlier export is replaced anyway).
        test_dataset: optional held-out cases (e.g. real scans, to train on synthetic images and test on real
            ones), written to ``imagesTs/`` (cases ``{case_prefix}_test_{row}``) and, with label maps,
            ``labelsTs/`` in the same coding. Either a ``datasets.Dataset`` with ``image_column`` (label maps from
            its ``label_column`` when it has that column, else images only; e.g.
            :func:`held_out_cases_dataset`), or a pair ``(dataset, test_label_column)`` naming the test set's
            label-map column (None: images only, even when it has label maps).

    Returns:
        The dataset folder ``folder/DatasetXXX_Name``.

    Raises:
        ValueError: bad id or name, a refused folder, a missing column, an empty dataset, a label outside
            0 .. K-1, an image and label map of different sizes, or a non-grayscale image.
    """
    import datasets as hf_datasets

    from ..version import __version__

    test_data, test_labels = (None, None) if test_dataset is None else _test_split(test_dataset, image_column,
                                                                                   label_column)
    inputs = _dataset_dirs(dataset) + (_dataset_dirs(test_data) if test_data is not None else [])
    target = check_nnunet_target(folder, dataset_id, dataset_name, overwrite=overwrite, inputs=inputs)
    if not isinstance(case_prefix, str) or not _NAME_RE.match(case_prefix):
        raise ValueError(f"`case_prefix` must be letters, digits, '_' or '-', got {case_prefix!r}")
    if not isinstance(channel_name, str) or not channel_name.strip():
        raise ValueError(f"`channel_name` must be a non-empty string, got {channel_name!r}")
    columns = list(getattr(dataset, "column_names", []) or [])
    for argument, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in columns:
            raise ValueError(f"`{argument}` {column!r} is not a column of the dataset (columns: {columns})")
    num_rows = len(dataset)
    if num_rows == 0:
        raise ValueError("`dataset` is empty: nnU-Net needs at least one training case")
    def undecoded(data, cols):
        for column in cols:
            if isinstance(data.features[column], hf_datasets.Image):
                data = data.cast_column(column, hf_datasets.Image(decode=False))
        return data

    raw = undecoded(dataset, (image_column, label_column))
    test_raw = None
    if test_data is not None:
        test_raw = undecoded(test_data, [image_column] + ([test_labels] if test_labels else []))

    if label_names is None:  # one pass over the label maps to count the classes
        high = 0
        sources = [(raw, label_column)] + ([(test_raw, test_labels)] if test_labels else [])
        for data, column in sources:
            for row in data.select_columns([column]):
                image, _ = _open(row[column], "label map")
                high = max(high, int(np.asarray(image).max()))
        names = resolve_label_names(None, max(high + 1, 2))
    else:
        names = resolve_label_names(label_names)
    labels = nnunet_labels(names)
    num_classes = len(names)
    width = max(4, len(str(num_rows - 1)))
    meta_columns = [c for c in CASE_METADATA_COLUMNS if c in columns]

    def build(tmp: Path) -> None:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        sizes = set()
        with open(tmp / "cases.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "split", "row", *meta_columns])
            for i, row in enumerate(raw):
                case = f"{case_prefix}_{i:0{width}d}"
                sizes.add(_write_case(tmp / "imagesTr", tmp / "labelsTr", case, row[image_column], row[label_column],
                                      f"row {i}", num_classes))
                writer.writerow([case, "train", i, *(row[c] for c in meta_columns)])
            if test_raw is not None:
                (tmp / "imagesTs").mkdir()
                if test_labels:
                    (tmp / "labelsTs").mkdir()
                test_width = max(4, len(str(len(test_raw) - 1)))
                for i, row in enumerate(test_raw):
                    case = f"{case_prefix}_test_{i:0{test_width}d}"
                    _write_case(tmp / "imagesTs", tmp / "labelsTs", case, row[image_column],
                                row[test_labels] if test_labels else None, f"test row {i}", num_classes)
                    writer.writerow([case, "test", i, *(row.get(c, "") for c in meta_columns)])
        size_text = ", ".join("x".join(str(v) for v in s) for s in sorted(sizes))
        text = description or (
            f"{num_rows} labelled ultrasound images ({size_text} px) exported by ultrasound-diffusers {__version__}"
            + (f"; label 0 (background) is {names[0]!r} in the source coding" if label_names is not None else "")
        )
        dataset_json = {
            "channel_names": {"0": channel_name},
            "labels": labels,
            "numTraining": num_rows,
            **({"numTest": len(test_raw)} if test_raw is not None else {}),
            "file_ending": ".png",
            "overwrite_image_reader_writer": "NaturalImage2DIO",
            "name": dataset_name,
            "description": text,
            "converted_by": f"ultrasound-diffusers {__version__}",
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n", encoding="utf-8")

    return replace_directory(build, target, kind=EXPORT_KIND)
