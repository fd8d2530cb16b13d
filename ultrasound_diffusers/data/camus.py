"""CAMUS (echocardiography, Leclerc et al. 2019) -> ``datasets.DatasetDict``.

Two layouts are recognised under ``input_dir``:

* the 2023 NIfTI release: ``database_nifti/patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}[_gt].nii.gz``,
  ``..._half_sequence[_gt].nii.gz``, ``Info_{2CH,4CH}.cfg``, and the official split in
  ``database_split/subgroup_{training,validation,testing}.txt``. Arrays read by nibabel are transposed
  relative to the picture; they are turned back so the apex is at the top.
* the older release: ``training/patientXXXX/...mhd`` (+ ``.raw``) and ``testing/patientXXXX/...``
  (read with SimpleITK; the test ground truth may be absent, its label is then empty).

Without split files, patients 1-50 go to validation (the echo-from-noise convention), patients above
450 (the old ``testing`` set) to test, the rest to train.

Labels: CAMUS coding (0 background, 1 LV cavity, 2 myocardium, 3 left atrium) or, with ``fan_labels``,
the echo-from-noise coding with the fan (0 outside, 1 LV, 2 tissue, 3 myocardium, 4 LA); the fan is the
filled convex hull of the image's non-zero pixels. ``augment_copies`` adds that many augmented label
maps per training example (:mod:`.augment`; rows with ``augmentation > 0`` keep the original image).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.lazy import import_optional
from .augment import LabelAugmentation, augment_label_map
from .converters import detect_scan_area, encode_png, make_dataset_dict, parse_size, report_bad_file, resize
from .failures import FailureLog
from .labels import NUM_CAMUS_CLASSES, NUM_ECHO_CLASSES, recode_camus_with_fan

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
_PATIENT_RE = re.compile(r"^patient(\d+)$")
_INFO_KEYS = {"ED": "ed_frame", "ES": "es_frame", "NbFrame": "nb_frame", "Sex": "sex", "Age": "age", "ImageQuality": "image_quality", "EF": "ef", "FrameRate": "frame_rate"}


def camus_features():
    import datasets

    s, i64, f32 = datasets.Value("string"), datasets.Value("int64"), datasets.Value("float32")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Image(),
            "patient": s, "view": s, "phase": s, "frame": i64, "augmentation": i64, "num_classes": i64,
            "ed_frame": i64, "es_frame": i64, "nb_frame": i64, "sex": s, "age": f32, "image_quality": s,
            "ef": f32, "frame_rate": f32, "spacing_x_mm": f32, "spacing_y_mm": f32,
            "source_height": i64, "source_width": i64, "height": i64, "width": i64,
        }
    )


def read_info_cfg(path: Path) -> Dict[str, Any]:
    """Parse an ``Info_{2CH,4CH}.cfg`` file (``Key: value`` lines) into the metadata columns."""
    out: Dict[str, Any] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if ":" not in line:
            continue
        key, value = (t.strip() for t in line.split(":", 1))
        if key not in _INFO_KEYS:
            continue
        col = _INFO_KEYS[key]
        if col in ("ed_frame", "es_frame", "nb_frame"):
            out[col] = int(float(value))
        elif col in ("age", "ef", "frame_rate"):
            out[col] = float(value)
        else:
            out[col] = value
    return out


def _find_existing(base: Path, stem: str, suffixes: Sequence[str]) -> Optional[Path]:
    for suf in suffixes:
        p = base / f"{stem}{suf}"
        if p.exists():
            return p
    return None


def _read_nifti(path: Path) -> Tuple[np.ndarray, Tuple[float, float]]:
    """[H, W] or [H, W, T] array in picture orientation, and the (x, y) spacing in mm."""
    nib = import_optional("nibabel", "reading CAMUS NIfTI files")

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:2])
    if arr.ndim == 4 and arr.shape[2] == 1:  # [W, H, 1, T]
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 1:  # [W, H, 1]
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return arr.T, zooms
    if arr.ndim == 3:
        return arr.transpose(1, 0, 2), zooms
    raise ValueError(f"expected a 2-D image or a 2-D sequence, got shape {arr.shape}")


def _read_mhd(path: Path) -> Tuple[np.ndarray, Tuple[float, float]]:
    sitk = import_optional("SimpleITK", "reading CAMUS .mhd files")

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)  # [T, H, W] or [H, W]
    spacing = tuple(float(s) for s in img.GetSpacing()[:2])
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return arr, spacing
    if arr.ndim == 3:
        return arr.transpose(1, 2, 0), spacing
    raise ValueError(f"expected a 2-D image or a 2-D sequence, got shape {arr.shape}")


def _read(path: Path):
    return _read_mhd(path) if path.suffix.lower() == ".mhd" else _read_nifti(path)


def _locate(input_dir: Path):
    """Return ("nifti", patients_root, split_dir or None) or ("mhd", {split_name: root})."""
    for cand in (input_dir / "database_nifti", input_dir):
        if cand.is_dir() and any(_PATIENT_RE.match(p.name) and p.is_dir() for p in cand.iterdir()):
            if any(cand.glob("patient*/*.nii*")):
                split_dir = None
                for sd in (input_dir / "database_split", cand.parent / "database_split", cand / "database_split"):
                    if sd.is_dir():
                        split_dir = sd
                        break
                return "nifti", cand, split_dir
    roots = {name: input_dir / name for name in ("training", "testing") if (input_dir / name).is_dir()}
    if roots:
        return "mhd", roots, None
    raise ValueError(
        f"`input_dir` {input_dir} holds no CAMUS layout (database_nifti/patientXXXX/*.nii.gz or training/testing/patientXXXX/*.mhd)"
    )


def _default_split(patient_num: int, validation_patients: int) -> str:
    if patient_num <= validation_patients:
        return "validation"
    if patient_num > 450:
        return "test"
    return "train"


def _official_split(split_dir: Path) -> Dict[str, str]:
    out = {}
    for fname, split in (("subgroup_training.txt", "train"), ("subgroup_validation.txt", "validation"), ("subgroup_testing.txt", "test")):
        p = split_dir / fname
        if p.exists():
            for line in p.read_text().split():
                if line.strip():
                    out[line.strip()] = split
    return out


def convert_camus(
    input_dir,
    views: Sequence[str] = VIEWS,
    phases: Sequence[str] = PHASES,
    half_sequences: bool = False,
    size=None,
    fan_labels: bool = False,
    augment_copies: int = 0,
    augmentation: Optional[LabelAugmentation] = None,
    seed: int = 0,
    validation_patients: int = 50,
    strict: bool = False,
    progress: bool = False,
):
    """Convert a CAMUS download into a ``datasets.DatasetDict`` (train / validation / test).

    Args:
        input_dir: the folder holding ``database_nifti`` (+ ``database_split``) or ``training``/``testing``.
        views: subset of ``("2CH", "4CH")``.
        phases: subset of ``("ED", "ES")``.
        half_sequences: also add every frame of the half sequences (``phase="half_sequence"``; NIfTI only).
        size: None (keep) or int / (height, width) to resize (image bilinear, label nearest).
        fan_labels: re-code labels with the fan (5-class echo-from-noise coding).
        augment_copies: augmented label copies per training example (needs ``fan_labels``).
        augmentation: parameters of the augmentation (default: echo-from-noise).
        seed: seeds the augmentation (copy k of an example depends on seed, patient, view, phase, frame, k).
        validation_patients: without official split files, patients 1..N become validation.
        strict: raise on a corrupt or unexpected file instead of skipping it with a warning.

    Returns:
        ``datasets.DatasetDict`` with columns ``image``, ``label`` (None where no ground truth exists),
        ``patient``, ``view``, ``phase``, ``frame``, ``augmentation`` and the Info.cfg metadata.
    """
    from tqdm.auto import tqdm

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"`input_dir` {input_dir} is not a folder")
    bad_views = [v for v in views if v not in VIEWS]
    bad_phases = [p for p in phases if p not in PHASES]
    if bad_views or not views:
        raise ValueError(f"`views` must be a non-empty subset of {VIEWS}, got {list(views)}")
    if bad_phases:
        raise ValueError(f"`phases` must be a subset of {PHASES}, got {list(phases)}")
    if int(augment_copies) < 0:
        raise ValueError(f"`augment_copies` must be non-negative, got {augment_copies}")
    if augment_copies and not fan_labels:
        raise ValueError("`augment_copies` needs `fan_labels=True` (the augmentation re-applies the fan)")
    out_size = parse_size(size)
    aug_params = augmentation or LabelAugmentation()

    layout = _locate(input_dir)
    patients: List[Tuple[Path, str]] = []  # (patient dir, split)
    if layout[0] == "nifti":
        _, root, split_dir = layout
        official = _official_split(split_dir) if split_dir is not None else {}
        for pdir in sorted(p for p in root.iterdir() if p.is_dir() and _PATIENT_RE.match(p.name)):
            num = int(_PATIENT_RE.match(pdir.name).group(1))
            split = official.get(pdir.name) if official else _default_split(num, validation_patients)
            if split is None:
                continue  # not part of the official split
            patients.append((pdir, split))
        suffixes = (".nii.gz", ".nii")
    else:
        _, roots, _ = layout
        for name, root in roots.items():
            for pdir in sorted(p for p in root.iterdir() if p.is_dir() and _PATIENT_RE.match(p.name)):
                num = int(_PATIENT_RE.match(pdir.name).group(1))
                split = "test" if name == "testing" else ("validation" if num <= validation_patients else "train")
                patients.append((pdir, split))
        suffixes = (".mhd",)
    if not patients:
        raise ValueError(f"no patient folders found under {input_dir}")

    rows: List[Dict[str, Any]] = []
    failures = FailureLog(strict)
    num_classes = NUM_ECHO_CLASSES if fan_labels else NUM_CAMUS_CLASSES
    for pdir, split in tqdm(patients, desc="CAMUS patients", disable=not progress):
        pid = pdir.name
        pnum = int(_PATIENT_RE.match(pid).group(1))
        for vi, view in enumerate(views):
            info_path = pdir / f"Info_{view}.cfg"
            info: Dict[str, Any] = {}
            if info_path.exists():
                try:
                    info = read_info_cfg(info_path)
                except (OSError, ValueError) as err:
                    report_bad_file(info_path, f"unreadable Info file ({err})", strict)
            items = [(phase, f"{pid}_{view}_{phase}") for phase in phases]
            if half_sequences:
                items.append(("half_sequence", f"{pid}_{view}_half_sequence"))
            for phase, stem in items:
                img_path = _find_existing(pdir, stem, suffixes)
                if img_path is None:
                    if phase != "half_sequence":
                        failures.add(pdir / (stem + suffixes[0]), "missing image file", "missing image file")
                    continue
                gt_path = _find_existing(pdir, stem + "_gt", suffixes)
                try:
                    image, spacing = _read(img_path)
                    label = _read(gt_path)[0] if gt_path is not None else None
                except Exception as err:  # corrupt / truncated files: reader-specific exception types
                    failures.add(img_path if gt_path is None else f"{img_path} / {gt_path.name}", "unreadable", f"unreadable ({type(err).__name__}: {err})")
                    continue
                if label is not None and label.shape != image.shape:
                    failures.add(gt_path, "label shape differs from image", f"label shape {label.shape} differs from image shape {image.shape}")
                    continue
                if label is not None and (label.min() < 0 or label.max() > 3):
                    failures.add(gt_path, "labels outside 0..3", f"labels outside the CAMUS coding 0..3 (found {np.unique(label).tolist()})")
                    continue
                if phase == "half_sequence":
                    frames = [(t, image[..., t], None if label is None else label[..., t]) for t in range(image.shape[-1])] if image.ndim == 3 else [(0, image, label)]
                else:
                    if image.ndim != 2:
                        failures.add(img_path, "not a single frame", f"expected a single frame, got shape {image.shape}")
                        continue
                    frame_no = info.get("ed_frame" if phase == "ED" else "es_frame", -1)
                    frames = [(frame_no, image, label)]
                for fi, (frame_no, img2d, lab2d) in enumerate(frames):
                    img_u8 = np.clip(np.rint(np.asarray(img2d, dtype=np.float64)), 0, 255).astype(np.uint8)
                    src_h, src_w = img_u8.shape
                    img_u8 = resize(img_u8, out_size)
                    lab_u8 = None if lab2d is None else resize(np.asarray(lab2d).astype(np.uint8), out_size, label=True)
                    fan = None
                    if fan_labels and lab_u8 is not None:
                        fan = detect_scan_area(img_u8, threshold=0.0, texture_threshold=None, opening_fraction=0.0)
                        lab_u8 = recode_camus_with_fan(lab_u8, fan)
                    base = {
                        "split": split, "patient": pid, "view": view, "phase": phase, "frame": int(frame_no),
                        "num_classes": num_classes, "spacing_x_mm": spacing[0], "spacing_y_mm": spacing[1],
                        "source_height": src_h, "source_width": src_w,
                        "height": img_u8.shape[0], "width": img_u8.shape[1], **info,
                    }
                    image_cell = encode_png(img_u8)
                    rows.append({**base, "image": image_cell, "label": None if lab_u8 is None else encode_png(lab_u8), "augmentation": 0})
                    if augment_copies and split == "train" and lab_u8 is not None:
                        phase_code = PHASES.index(phase) if phase in PHASES else 2
                        for k in range(1, int(augment_copies) + 1):
                            ss = np.random.SeedSequence([int(seed), pnum, vi, phase_code, fi, k])
                            aug = augment_label_map(lab_u8, ss, fan_mask=fan, params=aug_params)
                            rows.append({**base, "image": image_cell, "label": encode_png(aug), "augmentation": k})
    failures.refuse_empty(rows, input_dir, "CAMUS images", hint="check --views / --phases and the patient folders")
    return make_dataset_dict(rows, camus_features())
