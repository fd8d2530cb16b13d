"""A folder of ultrasound DICOM files -> grayscale frames with everything outside the scan area zeroed.

Every file (single frames and cines; RGB, YBR, palette colour and monochrome; any transfer syntax
pydicom can decode) becomes one row per frame:

* colour is converted to luminance (``0.299 R + 0.587 G + 0.114 B``; pydicom already turns YBR into
  RGB, palette colour goes through its lookup table), MONOCHROME1 is inverted, more than 8 bits are
  scaled to 0-255;
* the scan area (fan or rectangle) is found per file with
  :func:`ultrasound_diffusers.data.converters.detect_scan_area` - within the tissue regions of the
  Sequence of Ultrasound Regions when the file has them - and every pixel outside it (burned-in text,
  rulers, colour bars, logos) is set to zero; the mask is stored in the ``scan_area`` column
  (1 inside, 0 outside) and, with ``crop``, both are cropped to its bounding box;
* only de-identified metadata is kept: a pseudonymous ``source_id`` (a hash of the SOP Instance UID),
  frame numbers, the photometric interpretation, manufacturer and model, pixel spacing and frame time.
  Names, IDs, dates and institutions are never read into the dataset.

Files that are not DICOM, hold no pixel data or are not ultrasound are skipped with a warning naming
them (or raise with ``strict``). Splits are made per file.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .converters import assign_splits, detect_scan_area, encode_png, find_files, make_dataset_dict, parse_size, pseudonym, report_bad_file, resize

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def dicom_features():
    import datasets

    s, i64, f32 = datasets.Value("string"), datasets.Value("int64"), datasets.Value("float32")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "scan_area": datasets.Image(),
            "source_id": s, "frame": i64, "num_frames": i64, "photometric_interpretation": s, "modality": s,
            "manufacturer": s, "manufacturer_model": s, "physical_delta_x_cm": f32, "physical_delta_y_cm": f32,
            "frame_time_ms": f32, "source_height": i64, "source_width": i64, "crop_x0": i64, "crop_y0": i64,
            "height": i64, "width": i64,
        }
    )


def dicom_frames_to_gray(ds) -> np.ndarray:
    """Decoded frames of a pydicom dataset as float32 grayscale [T, H, W] in 0-255."""
    from pydicom.pixels import apply_color_lut

    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if "RedPaletteColorLookupTableDescriptor" in ds else 8
        arr = apply_color_lut(arr, ds).astype(np.float32)
        if bits > 8:
            arr = arr / float(2**bits - 1) * 255.0
        samples = 3
    arr = np.asarray(arr, dtype=np.float32)
    if samples == 3:
        if arr.shape[-1] != 3:
            raise ValueError(f"expected RGB samples in the last axis, got shape {arr.shape}")
        gray = arr @ _LUMA
    else:
        gray = arr
        bits_stored = int(ds.get("BitsStored", 8) or 8)
        if bits_stored > 8:
            gray = gray / float(2**bits_stored - 1) * 255.0
        if photometric == "MONOCHROME1":
            gray = 255.0 - gray
    if gray.ndim == 2:
        gray = gray[None]
    if gray.ndim != 3 or (n_frames > 1 and gray.shape[0] != n_frames):
        raise ValueError(f"unexpected pixel array shape {arr.shape} for {n_frames} frame(s)")
    return np.clip(gray, 0.0, 255.0)


def ultrasound_region(ds, height: int, width: int) -> Tuple[Optional[Tuple[int, int, int, int]], Optional[float], Optional[float]]:
    """Bounding box (x0, y0, x1, y1) of the 2-D tissue regions of the Sequence of Ultrasound Regions
    (clipped to the image; None if absent or implausible) and their physical pixel size in cm."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None, None, None
    boxes, dx, dy = [], None, None
    for reg in regions:
        if int(reg.get("RegionSpatialFormat", 0) or 0) != 1 or int(reg.get("RegionDataType", 0) or 0) != 1:
            continue
        try:
            x0, y0 = int(reg.RegionLocationMinX0), int(reg.RegionLocationMinY0)
            x1, y1 = int(reg.RegionLocationMaxX1), int(reg.RegionLocationMaxY1)
        except AttributeError:
            continue
        boxes.append((x0, y0, x1, y1))
        if dx is None and int(reg.get("PhysicalUnitsXDirection", 0) or 0) == 3:
            dx = float(reg.get("PhysicalDeltaX", 0.0) or 0.0) or None
        if dy is None and int(reg.get("PhysicalUnitsYDirection", 0) or 0) == 3:
            dy = float(reg.get("PhysicalDeltaY", 0.0) or 0.0) or None
    if not boxes:
        return None, dx, dy
    x0 = max(0, min(b[0] for b in boxes))
    y0 = max(0, min(b[1] for b in boxes))
    x1 = min(width - 1, max(b[2] for b in boxes))
    y1 = min(height - 1, max(b[3] for b in boxes))
    if x1 <= x0 or y1 <= y0 or (x1 - x0 + 1) * (y1 - y0 + 1) < 0.05 * height * width:
        return None, dx, dy
    return (x0, y0, x1, y1), dx, dy


def convert_dicom(
    input_dir,
    size=None,
    crop: bool = True,
    max_frames: Optional[int] = None,
    frame_step: int = 1,
    require_ultrasound: bool = True,
    fractions: Sequence[float] = (1.0, 0.0, 0.0),
    seed: int = 0,
    strict: bool = False,
    progress: bool = False,
):
    """Convert a folder of ultrasound DICOM files into a ``datasets.DatasetDict``.

    Args:
        input_dir: folder (searched recursively; files of any name) or a single file.
        size: None or int / (height, width) to resize the (cropped) frames.
        crop: crop every frame to the bounding box of its file's scan area.
        max_frames: at most this many frames per file (after ``frame_step``).
        frame_step: keep every n-th frame of a cine.
        require_ultrasound: skip files whose Modality is not ``US``.
        fractions: (train, validation, test) fractions of the files.
        strict: raise on corrupt / unexpected files instead of skipping them with a warning.

    Returns:
        ``datasets.DatasetDict`` with ``image`` (grayscale, zero outside the scan area), ``scan_area``
        (uint8 mask: 1 inside) and de-identified metadata.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from tqdm.auto import tqdm

    if int(frame_step) < 1:
        raise ValueError(f"`frame_step` must be at least 1, got {frame_step}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"`max_frames` must be None or at least 1, got {max_frames}")
    out_size = parse_size(size)
    files = find_files(input_dir, ("",))
    if not files:
        raise ValueError(f"no files found under {input_dir}")
    per_file: List[Tuple[str, List[Dict[str, Any]]]] = []
    for path in tqdm(files, desc="DICOM files", disable=not progress):
        try:
            ds = pydicom.dcmread(str(path))
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as err:
            report_bad_file(path, f"not a readable DICOM file ({type(err).__name__}: {err})", strict)
            continue
        modality = str(ds.get("Modality", ""))
        if require_ultrasound and modality != "US":
            report_bad_file(path, f"Modality is {modality or 'missing'}, not US", strict)
            continue
        if "PixelData" not in ds:
            report_bad_file(path, "no pixel data", strict)
            continue
        try:
            frames = dicom_frames_to_gray(ds)
        except Exception as err:  # decoders raise many types (missing plugin, truncated data, ...)
            report_bad_file(path, f"pixel data could not be decoded ({type(err).__name__}: {err})", strict)
            continue
        T, H, W = frames.shape
        box, delta_x, delta_y = ultrasound_region(ds, H, W)
        mask = detect_scan_area(frames, region_box=box)
        ys, xs = np.nonzero(mask)
        if crop:
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        else:
            y0, y1, x0, x1 = 0, H, 0, W
        mask_c = mask[y0:y1, x0:x1]
        keep = list(range(0, T, int(frame_step)))
        if max_frames is not None:
            keep = keep[: int(max_frames)]
        uid = str(ds.get("SOPInstanceUID", "")) or str(path.resolve())
        source_id = pseudonym(uid)
        frame_time = ds.get("FrameTime")
        meta = {
            "source_id": source_id, "num_frames": T,
            "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")), "modality": modality,
            "manufacturer": str(ds.get("Manufacturer", "")), "manufacturer_model": str(ds.get("ManufacturerModelName", "")),
            "physical_delta_x_cm": delta_x, "physical_delta_y_cm": delta_y,
            "frame_time_ms": float(frame_time) if frame_time not in (None, "") else None,
            "source_height": H, "source_width": W, "crop_x0": int(x0), "crop_y0": int(y0),
        }
        mask_u8 = resize(mask_c.astype(np.uint8), out_size, label=True)
        mask_cell = encode_png(mask_u8)
        rows = []
        for t in keep:
            img = np.rint(frames[t, y0:y1, x0:x1]).astype(np.uint8)
            img[~mask_c] = 0
            img = resize(img, out_size)
            img[mask_u8 == 0] = 0
            rows.append({**meta, "image": encode_png(img), "scan_area": mask_cell, "frame": t, "height": img.shape[0], "width": img.shape[1]})
        per_file.append((source_id, rows))
    if not per_file:
        raise ValueError(f"no usable ultrasound DICOM files under {input_dir}")
    splits = assign_splits([sid for sid, _ in per_file], fractions, seed)
    all_rows = [{**row, "split": splits[sid]} for sid, rows in per_file for row in rows]
    return make_dataset_dict(all_rows, dicom_features())
