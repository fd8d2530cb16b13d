"""Thyroid volumes (SegThy-style NIfTI image and label volumes) -> 2-D slices as ``datasets.DatasetDict``.

SegThy's ultrasound part is laid out as ``US_volunteer_dataset/ground_truth_data/US/*.nii`` with the
label volumes in ``.../US_thyroid_label/*.nii``. Any tree works: NIfTI files whose folder or file name
contains ``label`` (or whose name ends in ``_gt``, ``_seg`` or ``_mask``) are label volumes, the others
image volumes; they are paired by name (label tokens removed) or, failing that, in sorted order when the
counts agree. Pass ``image_dir`` / ``label_dir`` to be explicit.

Labels use the thyroid coding (0 tissue, 1 thyroid, 2 carotid artery, 3 jugular vein); SegThy's
left/right vessel labels (2/4 carotid, 3/5 jugular) are merged. Intensities of non-uint8 volumes are
mapped to 0-255 by the volume's 0.5 / 99.5 percentiles. Splits are made per volume.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.lazy import import_optional
from .converters import assign_splits, encode_png, find_files, make_dataset_dict, parse_size, report_bad_file, resize, to_uint8
from .failures import FailureLog
from .labels import NUM_THYROID_CLASSES, SEGTHY_TO_THYROID, remap_labels

_NIFTI = (".nii.gz", ".nii")
_LABEL_TOKENS = re.compile(r"(thyroid_label|labels?|_gt|_seg|_mask)", re.IGNORECASE)


def thyroid_features():
    import datasets

    s, i64 = datasets.Value("string"), datasets.Value("int64")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Image(),
            "volume": s, "slice_index": i64, "axis": i64, "num_classes": i64,
            "height": i64, "width": i64,
        }
    )


def _stem(path: Path) -> str:
    name = path.name
    for suf in _NIFTI:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _is_label(path: Path, root: Path) -> bool:
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    if any("label" in part.lower() for part in rel.parts[:-1]):
        return True
    stem = _stem(path).lower()
    return "label" in stem or stem.endswith(("_gt", "_seg", "_mask"))


def _key(path: Path) -> str:
    return re.sub(r"[^a-z0-9]", "", _LABEL_TOKENS.sub("", _stem(path)).lower())


def pair_volumes(input_dir, image_dir=None, label_dir=None, strict: bool = False, failures: Optional[FailureLog] = None) -> List[Tuple[Path, Path]]:
    """(image volume, label volume) pairs; unmatched images are reported (skipped or, with strict, raised)
    and counted in ``failures`` when given."""
    if image_dir is not None or label_dir is not None:
        if image_dir is None or label_dir is None:
            raise ValueError("give both `image_dir` and `label_dir`, or neither")
        images, labels = find_files(image_dir, _NIFTI), find_files(label_dir, _NIFTI)
    else:
        root = Path(input_dir)
        files = find_files(root, _NIFTI)
        labels = [f for f in files if _is_label(f, root)]
        images = [f for f in files if not _is_label(f, root)]
    if not images:
        raise ValueError(f"no NIfTI image volumes found under {image_dir or input_dir}")
    by_key = {}
    for lab in labels:
        by_key.setdefault(_key(lab), lab)
    pairs, unmatched = [], []
    for img in images:
        lab = by_key.get(_key(img))
        if lab is None:
            unmatched.append(img)
        else:
            pairs.append((img, lab))
    if unmatched and len(images) == len(labels) and not pairs:
        pairs = list(zip(sorted(images), sorted(labels)))
        unmatched = []
    for img in unmatched:
        if failures is not None:
            failures.add(img, "no matching label volume", "no label volume with a matching name")
        else:
            report_bad_file(img, "no label volume with a matching name", strict)
    return pairs


def convert_thyroid(
    input_dir=None,
    image_dir=None,
    label_dir=None,
    axis: int = 2,
    transpose: bool = True,
    skip_empty: bool = False,
    size=None,
    label_mapping: Optional[Dict[int, int]] = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    strict: bool = False,
    progress: bool = False,
):
    """Slice thyroid volumes into a ``datasets.DatasetDict`` (train / validation / test by volume).

    Args:
        input_dir: root of the tree (or give ``image_dir`` and ``label_dir``).
        axis: array axis (of the nibabel array) to slice along.
        transpose: transpose each slice (nibabel arrays are transposed relative to the picture).
        skip_empty: drop slices without any foreground label.
        size: None or int / (height, width) to resize (image bilinear, label nearest).
        label_mapping: label value -> class; default merges SegThy's left/right vessels.
        fractions: (train, validation, test) fractions of the volumes.
        strict: raise on corrupt / unexpected files instead of skipping them with a warning.

    Returns:
        ``datasets.DatasetDict`` with ``image``, ``label``, ``volume``, ``slice_index``, ``axis``.
    """
    nib = import_optional("nibabel", "convert_thyroid (NIfTI volumes)")
    from tqdm.auto import tqdm

    if input_dir is None and image_dir is None:
        raise ValueError("give `input_dir` or `image_dir` and `label_dir`")
    if axis not in (0, 1, 2):
        raise ValueError(f"`axis` must be 0, 1 or 2, got {axis}")
    out_size = parse_size(size)
    mapping = dict(SEGTHY_TO_THYROID if label_mapping is None else label_mapping)
    failures = FailureLog(strict)
    source = input_dir if input_dir is not None else image_dir
    pairs = pair_volumes(input_dir, image_dir, label_dir, strict, failures)
    if not pairs:
        raise ValueError(
            f"no (image, label) volume pairs found under {source}"
            + (f": {failures.total} image volume(s) failed ({failures.summary()})" if failures.total else "")
        )
    splits = assign_splits([_stem(img) for img, _ in pairs], fractions, seed)
    rows: List[Dict[str, Any]] = []
    for img_path, lab_path in tqdm(pairs, desc="thyroid volumes", disable=not progress):
        try:
            vol = np.asarray(nib.load(str(img_path)).dataobj)
            lab = np.asarray(nib.load(str(lab_path)).dataobj)
        except Exception as err:  # nibabel raises several types for corrupt files
            failures.add(f"{img_path} / {lab_path.name}", "unreadable", f"unreadable ({type(err).__name__}: {err})")
            continue
        vol, lab = np.squeeze(vol), np.squeeze(lab)
        if vol.ndim != 3 or vol.shape != lab.shape:
            failures.add(img_path, "not 3-D volumes of one shape", f"expected 3-D image and label volumes of one shape, got {vol.shape} and {lab.shape}")
            continue
        try:
            lab = remap_labels(np.rint(lab).astype(np.int64), mapping, name=str(lab_path))
        except ValueError as err:
            failures.add(lab_path, "labels outside the mapping", str(err))
            continue
        if vol.dtype == np.uint8:
            vol_u8 = vol
        else:
            finite = vol[np.isfinite(vol)]
            lo, hi = (np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0))
            vol_u8 = to_uint8(vol, (float(lo), float(hi)))
        stem = _stem(img_path)
        for k in range(vol.shape[axis]):
            lab2d = np.take(lab, k, axis=axis)
            if skip_empty and not lab2d.any():
                continue
            img2d = np.take(vol_u8, k, axis=axis)
            if transpose:
                img2d, lab2d = img2d.T, lab2d.T
            img2d = resize(np.ascontiguousarray(img2d), out_size)
            lab2d = resize(np.ascontiguousarray(lab2d), out_size, label=True)
            rows.append(
                {
                    "split": splits[stem], "image": encode_png(img2d), "label": encode_png(lab2d), "volume": stem,
                    "slice_index": k, "axis": axis, "num_classes": NUM_THYROID_CLASSES,
                    "height": img2d.shape[0], "width": img2d.shape[1],
                }
            )
    failures.refuse_empty(rows, source, "thyroid slices", hint="no slice carries a label; drop --skip_empty" if skip_empty else "")
    return make_dataset_dict(rows, thyroid_features())
