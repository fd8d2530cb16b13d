"""A folder of ultrasound DICOM files -> de-identified grayscale frames of the scan area only.

Every file (single frames and cines; RGB, YBR, palette colour and monochrome; any transfer syntax
pydicom can decode) becomes one row per kept frame:

* colour is converted to luminance (``0.299 R + 0.587 G + 0.114 B``; pydicom already turns YBR into
  RGB, palette colour goes through its lookup table), MONOCHROME1 is inverted, more than 8 bits are
  scaled to 0-255;
* the scan area is found per file (:func:`find_scan_area`): textured (and, in cines, moving) pixels,
  within the tissue regions of the Sequence of Ultrasound Regions when the file has them, to which a
  sector (two straight edges meeting at the apex, cut by two arcs around it) or a rectangle is fitted.
  Every pixel outside the fitted shape is set to zero: burned-in text, rulers, colour bars, logos and
  the banners vendors put next to the apex (which lie inside the convex hull of fan + text, but outside
  the fan's edges). In cines, marks that stay identical in every frame inside the scan area (text,
  calipers) are set to zero too. The mask is stored in the ``scan_area`` column (1 inside) and, with
  ``crop``, frames are cropped to it.

De-identification fails closed (the switches below are the fields of :class:`DeidentificationPolicy`, which
:func:`convert_dicom` takes as ``policy=`` or as keywords of the same names):

* a file where no clean sector or rectangle fits (a report page, a screenshot, an empty frame, a fitted
  shape that holds a few grey levels like rendered text rather than speckle), and a frame that does not
  fill its file's scan area with speckle (a report page inside a cine, a blank frame), is dropped; ``keep_frames_without_scan_area=True`` keeps such frames (whole and unmasked when the file has
  no scan area), never for a file marked ``BurnedInAnnotation=YES``;
* a file marked ``BurnedInAnnotation=YES`` is dropped unless ``accept_burned_in_annotation=True``,
  which keeps it, masked to its scan area (and checked for text inside it like every other file);
* every kept frame is searched for burned-in text *inside* its scan area, tag or no tag
  (:func:`find_text_marks`): marks drawn in one exact grey that spikes the local histogram and stands apart from
  the speckle around it, marks brighter than the frame's speckle ever is, marks still between cine frames while
  the speckle moves, colour in a scan area that is otherwise grey, upright strokes of one grey with an edge beside
  them (the stems that thin anti-aliased text keeps at full ink); those shaped like glyphs, words or letter stems,
  grouped into rows. A row of 3 or more is *text*: the frame is dropped (``mask_text_inside_scan_area=True`` keeps
  it with the rows zeroed). Glyph-like marks but no row (a caliper cross, a digit), or a frame too flat to tell
  (posterised or upsampled: pieces of one grey are everywhere), is *uncertain*: dropped unless
  ``keep_uncertain_frames=True``. The report's ``text_inside_scan_area`` lists each such frame (its
  pseudonymous ``source_id`` and index, verdict, action, marks, pixels, cues). Not found: thin anti-aliased
  text in a grey inside the speckle range that keeps almost no pixel of full ink (fewer than a few dozen pixels, no
  upright stem of 4), and dark text. ``learned_text_detector=True`` adds a learned cue that finds most of that text
  on synthetic speckle, but, trained on synthetic frames only, it also drops clean frames of real files: off by
  default;
* only an allow-list of technical values is copied (:data:`COPIED_TAGS`): Modality and Photometric
  Interpretation (checked against DICOM's defined terms), the frame count, frame time and the physical
  pixel size of the ultrasound regions. ``Manufacturer`` is replaced by a canonical vendor name from a
  fixed table (:data:`KNOWN_VENDORS`) or left empty; ``ManufacturerModelName`` and every other free-text
  tag are never copied. Names, IDs, dates, institutions and UIDs are never written;
* ``source_id`` is an HMAC of the SOP Instance UID with a random key drawn for each conversion and never
  stored: rows of one file share it, but it cannot be linked back to the file nor across conversions;
* a :func:`de-identification report <deidentification_report>` (counts of files and frames dropped or
  kept per reason, pixels masked; no file names, which can hold identifiers) is returned with
  ``return_report=True`` and stored in the ``description`` of every split's ``DatasetInfo``.

Files that are not DICOM, hold no pixel data or are not ultrasound are skipped with a warning naming
them (or raise with ``strict``). Splits are made per patient (the Patient ID, read in memory only; the
Study Instance UID or the file when it is missing), so one patient never spans two splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import numbers
import re
import secrets
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.ndimage as ndi

from ..utils.lazy import import_optional
from .converters import (
    ConversionWarning,
    assign_splits,
    box_mask,
    encode_png,
    find_files,
    frame_stack,
    largest_component,
    local_std,
    make_dataset_dict,
    parse_size,
    resize,
)
from .failures import FailureLog

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: the only DICOM attributes whose values reach the dataset (all technical, none free text)
COPIED_TAGS = (
    "Modality", "PhotometricInterpretation", "NumberOfFrames", "FrameTime", "Rows", "Columns",
    "SequenceOfUltrasoundRegions (PhysicalDeltaX/Y of 2-D tissue regions)", "Manufacturer (canonical vendor name only)",
)
#: attributes read in memory but never written: what to drop, the pseudonym key and the split grouping
READ_NOT_COPIED = ("BurnedInAnnotation", "SOPInstanceUID", "PatientID", "StudyInstanceUID")

_MODALITIES = frozenset(
    "US CT MR CR DX MG NM PT XA RF OT SC IVUS OCT ES XC GM SM OP ECG IO PX RG DG BI".split()
)
_PHOTOMETRIC = frozenset(
    ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420",
     "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_422")
)
#: normalised Manufacturer value -> canonical vendor name; anything else is not copied
KNOWN_VENDORS = {
    **dict.fromkeys(("ge", "g e", "ge medical systems", "g e medical systems", "ge healthcare", "ge vingmed ultrasound",
                     "ge ultrasound", "ge healthcare austria", "kretztechnik", "ge medical systems kretz"), "GE"),
    **dict.fromkeys(("philips", "philips medical systems", "philips healthcare", "philips ultrasound", "atl",
                     "advanced technology laboratories", "atl ultrasound"), "Philips"),
    **dict.fromkeys(("siemens", "siemens healthineers", "siemens healthcare", "siemens medical solutions",
                     "siemens medical solutions usa", "acuson"), "Siemens"),
    **dict.fromkeys(("toshiba", "toshiba medical systems", "canon", "canon medical systems"), "Canon"),
    **dict.fromkeys(("samsung medison", "medison", "samsung", "samsung electronics"), "Samsung Medison"),
    **dict.fromkeys(("hitachi", "hitachi aloka", "hitachi aloka medical", "aloka", "hitachi medical"), "Hitachi Aloka"),
    **dict.fromkeys(("sonosite", "fujifilm sonosite", "fujifilm"), "FUJIFILM SonoSite"),
    **dict.fromkeys(("esaote",), "Esaote"),
    **dict.fromkeys(("mindray", "shenzhen mindray", "shenzhen mindray bio medical electronics"), "Mindray"),
    **dict.fromkeys(("bk medical", "b k medical", "bk ultrasound"), "BK Medical"),
    **dict.fromkeys(("butterfly network", "butterfly"), "Butterfly Network"),
    **dict.fromkeys(("clarius", "clarius mobile health"), "Clarius"),
    **dict.fromkeys(("terason",), "Terason"),
    **dict.fromkeys(("supersonic imagine", "supersonic"), "SuperSonic Imagine"),
    **dict.fromkeys(("zonare", "zonare medical systems"), "Zonare"),
    **dict.fromkeys(("sonoscape",), "SonoScape"),
    **dict.fromkeys(("chison",), "Chison"),
    **dict.fromkeys(("alpinion", "alpinion medical systems"), "Alpinion"),
    **dict.fromkeys(("telemed",), "Telemed"),
    **dict.fromkeys(("verasonics",), "Verasonics"),
}
_CORPORATE = frozenset("inc ltd co corp corporation gmbh ag sa spa llc kk bv nv plc company limited".split())


def canonical_vendor(manufacturer) -> str:
    """The canonical vendor name for a ``Manufacturer`` value, or ``""`` when it is not in :data:`KNOWN_VENDORS`.

    Matching is on the whole value (lower-cased, punctuation and corporate suffixes removed), never on a
    part of it, so ``"GE Healthcare / Dr. Smith"`` gives ``""``.
    """
    words = re.sub(r"[^a-z0-9]+", " ", str(manufacturer or "").lower()).split()
    while words and words[-1] in _CORPORATE:
        words.pop()
    return KNOWN_VENDORS.get(" ".join(words), "")


def dicom_features():
    import datasets

    s, i64, f32 = datasets.Value("string"), datasets.Value("int64"), datasets.Value("float32")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "scan_area": datasets.Image(),
            "source_id": s, "frame": i64, "num_frames": i64, "photometric_interpretation": s, "modality": s,
            "manufacturer": s, "scan_area_shape": s, "physical_delta_x_cm": f32, "physical_delta_y_cm": f32,
            "frame_time_ms": f32, "source_height": i64, "source_width": i64, "crop_x0": i64, "crop_y0": i64,
            "height": i64, "width": i64,
        }
    )


def dicom_frames_to_gray(ds, return_chroma: bool = False):
    """Decoded frames of a pydicom dataset as float32 grayscale [T, H, W] in 0-255.

    With ``return_chroma`` a tuple (gray, chroma): ``chroma`` is float32 [T, H, W] in 0-255, the spread
    ``max(R, G, B) - min(R, G, B)`` of every pixel of a colour file (0 on grey pixels), or None for a
    monochrome file.
    """
    apply_color_lut = import_optional("pydicom.pixels", "reading DICOM files").apply_color_lut

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
        chroma = arr.max(-1) - arr.min(-1)
    else:
        chroma = None
        gray = arr
        bits_stored = int(ds.get("BitsStored", 8) or 8)
        if bits_stored > 8:
            gray = gray / float(2**bits_stored - 1) * 255.0
        if photometric == "MONOCHROME1":
            gray = 255.0 - gray
    if gray.ndim == 2:
        gray = gray[None]
        chroma = None if chroma is None else chroma[None]
    if gray.ndim != 3 or (n_frames > 1 and gray.shape[0] != n_frames):
        raise ValueError(f"unexpected pixel array shape {arr.shape} for {n_frames} frame(s)")
    gray = np.clip(gray, 0.0, 255.0)
    if not return_chroma:
        return gray
    return gray, (None if chroma is None else np.clip(chroma, 0.0, 255.0).astype(np.float32))


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


def _opening(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    cv2 = import_optional("cv2", "the DICOM scan-area detection", extra="dicom")

    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, se, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def tissue_candidates(
    frames: np.ndarray,
    threshold: float = 6.0,
    texture_threshold: float = 3.0,
    opening_fraction: float = 1.0 / 50.0,
    region_box: Optional[Tuple[int, int, int, int]] = None,
    use_motion: bool = True,
    motion_threshold: float = 1.0,
) -> np.ndarray:
    """Pixels that look like tissue: bool [H, W].

    Bright enough (``max over frames > threshold``) and either changing over time (cines of 3+ frames
    with ``use_motion``: the 9x9 average of the per-pixel standard deviation over frames above
    ``motion_threshold``; burned-in text is static) or, for single frames, textured (local 7x7 standard
    deviation above ``texture_threshold``); inside ``region_box`` (x0, y0, x1, y1 inclusive) if given, then opened with a disk of radius
    ``opening_fraction * min(H, W)`` (at least 1 px), which removes text strokes, ticks and calipers.
    """
    arr = frame_stack(frames)
    _, H, W = arr.shape
    ref = arr.max(0)
    mask = ref > threshold
    if use_motion and arr.shape[0] >= 3:
        # cines: the (locally averaged) change over time; burned-in text is static. Texture of a single
        # picture is a poorer guide here: the far field of a fan is often dark and smooth.
        mask &= ndi.uniform_filter(arr.std(0), 9) > motion_threshold
    else:
        mask &= local_std(ref) > texture_threshold
    if region_box is not None:
        mask &= box_mask(mask.shape, region_box)
    radius = max(1, int(round(opening_fraction * min(H, W)))) if opening_fraction > 0 else 0
    return _opening(mask, radius)


def _fit_edge(ys: np.ndarray, xs: np.ndarray, tol: float, trials: int = 256) -> Tuple[float, float, float]:
    """Robust line ``x = a + b * y`` through boundary points (RANSAC over point pairs, refined by least
    squares on the inliers). Returns (a, b, fraction of points within ``tol``)."""
    ys, xs = ys.astype(np.float64), xs.astype(np.float64)
    n = len(ys)
    rng = np.random.default_rng(0)  # a local generator: the fit is deterministic, no global state
    i, j = rng.integers(0, n, trials), rng.integers(0, n, trials)
    ok = ys[i] != ys[j]
    i, j = i[ok], j[ok]
    b = (xs[j] - xs[i]) / (ys[j] - ys[i])
    a = xs[i] - b * ys[i]
    # candidates also include the vertical line through the median (rectangles, clipped edges)
    a = np.append(a, np.median(xs))
    b = np.append(b, 0.0)
    support = (np.abs(xs[None] - (a[:, None] + b[:, None] * ys[None])) <= tol).sum(1)
    k = int(np.argmax(support))
    a_k, b_k = a[k], b[k]
    for _ in range(2):
        inl = np.abs(xs - (a_k + b_k * ys)) <= tol
        if inl.sum() >= 2 and np.ptp(ys[inl]) > 0:
            b_k, a_k = np.polyfit(ys[inl], xs[inl], 1)
    inl = np.abs(xs - (a_k + b_k * ys)) <= tol
    return float(a_k), float(b_k), float(inl.mean())


def fit_scan_shape(
    mask: np.ndarray,
    min_area_fraction: float = 0.05,
    min_fill: float = 0.7,
    min_edge_support: float = 0.3,
    min_coverage: float = 0.6,
) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    """Fit a sector or a rectangle to a tissue mask (the largest component of :func:`tissue_candidates`).

    The left and right edges are straight lines ``x = a + b y`` fitted robustly to the first and last
    pixel of every row, so text touching the fan (a banner next to the apex) does not move them. Edges
    that meet above the content give a sector, cut to the radii around their crossing point (the apex)
    that the content spans; parallel edges give a rectangle, cut to the rows the content fills.

    Args:
        mask: bool [H, W].
        min_area_fraction: the shape must cover at least this fraction of the frame.
        min_fill: at least this fraction of the shape must be tissue (a clean fit).
        min_edge_support: at least this fraction of the rows must lie on each fitted edge (the far field
            of a sector is often dark, so its edges are visible only near the apex).
        min_coverage: at least this fraction of the tissue mask must lie inside the shape.

    Returns:
        (bool [H, W] shape or None when no clean fit exists, info dict with ``shape`` and the fit's
        ``fill`` / ``reason``).
    """
    H, W = mask.shape
    rows = np.nonzero(mask.any(1))[0]
    if len(rows) < 8 or mask.sum() < min_area_fraction * H * W * min_fill:
        return None, {"reason": "no tissue-like region large enough"}
    sub = mask[rows]
    x_left = np.argmax(sub, axis=1)
    x_right = W - 1 - np.argmax(sub[:, ::-1], axis=1)
    tol = max(1.5, 0.01 * W)
    edges = []
    for xs, border in ((x_left, 0), (x_right, W - 1)):
        free = xs != border  # rows where the content is not cut by the image border
        if free.mean() < 0.25:
            edges.append((float(border), 0.0, 1.0))
        else:
            edges.append(_fit_edge(rows[free], xs[free], tol))
    (a_l, b_l, s_l), (a_r, b_r, s_r) = edges
    if min(s_l, s_r) < min_edge_support:
        return None, {"reason": f"edges are not straight (support {min(s_l, s_r):.2f} < {min_edge_support})"}
    y_top, y_bot = float(rows[0]), float(rows[-1])
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    band = (xx >= a_l + b_l * yy) & (xx <= a_r + b_r * yy)
    spread = (b_r - b_l) * (y_bot - y_top)
    info: Dict[str, Any] = {}
    if abs(spread) < max(3.0, 0.03 * W):
        inside = mask & band
        width = np.maximum((a_r + b_r * rows) - (a_l + b_l * rows), 1.0)
        filled = rows[inside[rows].sum(1) >= 0.5 * width]
        if len(filled) < 2:
            return None, {"reason": "no rows filled by tissue"}
        shape = band & (yy >= filled[0]) & (yy <= filled[-1])
        info["shape"] = "rectangle"
    elif spread > 0:
        y_apex = (a_l - a_r) / (b_r - b_l)
        x_apex = a_l + b_l * y_apex
        if y_apex > y_top + max(tol, 0.15 * (y_bot - y_top)):  # banners may rise a little above the apex
            return None, {"reason": "the edges meet inside the content"}
        radius = np.hypot(xx - x_apex, yy - y_apex)
        r_in = radius[mask & band]
        if r_in.size == 0:
            return None, {"reason": "no tissue between the edges"}
        r_lo, r_hi = np.percentile(r_in, (0.5, 99.5))
        shape = band & (yy >= y_apex) & (radius >= r_lo) & (radius <= r_hi)
        info.update(shape="sector", apex=(float(x_apex), float(y_apex)), radii=(float(r_lo), float(r_hi)))
    else:
        return None, {"reason": "the edges meet below the content"}
    area = int(shape.sum())
    if area < min_area_fraction * H * W:
        return None, {"reason": f"fitted {info['shape']} covers {area / (H * W):.3f} of the frame (< {min_area_fraction})"}
    fill = float((shape & mask).sum() / area)
    if fill < min_fill:
        return None, {"reason": f"fitted {info['shape']} is only {fill:.2f} tissue (< {min_fill})"}
    coverage = float((shape & mask).sum() / mask.sum())
    if coverage < min_coverage:
        return None, {"reason": f"only {coverage:.2f} of the tissue lies inside the fitted {info['shape']} (< {min_coverage})"}
    info.update(fill=fill, coverage=coverage, edge_support=(s_l, s_r))
    return shape, info


def find_scan_area(
    frames: np.ndarray,
    region_box: Optional[Tuple[int, int, int, int]] = None,
    min_area_fraction: float = 0.05,
    min_fill: float = 0.7,
) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    """The scan area of a grayscale frame or cine [T, H, W] (0-255): a fitted sector or rectangle.

    Returns (bool [H, W] mask, info) or (None, info with the ``reason``) when no clean shape fits;
    a caller that must not leak burned-in text then drops the frames instead of keeping them whole.
    """
    candidates = tissue_candidates(frames, region_box=region_box)
    component = largest_component(candidates)
    if component is None:
        return None, {"reason": "no tissue-like pixels"}
    shape, info = fit_scan_shape(component, min_area_fraction=min_area_fraction, min_fill=min_fill)
    if shape is not None and text_like(np.asarray(frames).max(0)[shape] if np.ndim(frames) == 3 else np.asarray(frames)[shape]):
        return None, {"reason": f"the fitted {info['shape']} holds text or graphics, not speckle"}
    if shape is not None:
        info["masked_inside_hull"] = int((component & ~shape).sum())
    return shape, info


def text_like(values: np.ndarray, max_share: float = 0.5) -> bool:
    """Whether intensities look like rendered text or graphics rather than speckle: a few grey levels
    (background, ink, their anti-aliasing) hold more than ``max_share`` of the non-zero pixels (zero is
    left out: anechoic regions such as a heart cavity are black), or almost everything is zero."""
    v = np.rint(np.asarray(values, dtype=np.float32)).astype(np.int64).ravel()
    total = v.size
    v = v[v > 0]
    if v.size < 0.1 * total or v.size == 0:
        return True
    counts = np.bincount(np.clip(v, 0, 255), minlength=256)
    return bool(np.sort(counts)[-3:].sum() > max_share * v.size)


def static_overlay(frames: np.ndarray, scan_area: np.ndarray, min_motion: float = 2.0) -> np.ndarray:
    """Burned-in marks inside the scan area of a cine: pixels that are not dark yet identical (standard
    deviation below 0.5 grey levels) in every frame, grown by one pixel. Speckle never stays still, so
    in a cine with motion these are text, calipers, markers. bool [H, W]; all False for fewer than 3
    frames or a cine whose scan area hardly changes (median standard deviation below ``min_motion``).
    """
    arr = np.asarray(frames, dtype=np.float32)
    H, W = scan_area.shape
    if arr.ndim != 3 or arr.shape[0] < 3 or not scan_area.any():
        return np.zeros((H, W), dtype=bool)
    std = arr.std(0)
    if float(np.median(std[scan_area])) < min_motion:
        return np.zeros((H, W), dtype=bool)
    still = (std < 0.5) & (arr.min(0) > 16.0) & scan_area
    return ndi.binary_dilation(still, iterations=1) & scan_area


def cover_marks(marks: np.ndarray, scan_area: np.ndarray, max_height: Optional[int] = None, margin: int = 2) -> np.ndarray:
    """What to zero for burned-in marks (bool [H, W]): every connected mark no taller than ``max_height`` (default
    ``max(20, 0.15 * min(H, W))``, a glyph or a word) is replaced by its bounding box grown by ``margin`` px, so the
    hole left behind does not spell the text; taller marks (a caliper line across the image) keep their own
    shape. Clipped to ``scan_area``."""
    marks = np.asarray(marks, bool)
    H, W = marks.shape
    if max_height is None:
        max_height = int(max(20, round(0.15 * min(H, W))))
    out = marks.copy()
    labels, _ = ndi.label(marks, structure=np.ones((3, 3), bool))
    for slc in ndi.find_objects(labels):
        if slc is not None and slc[0].stop - slc[0].start <= max_height:
            out[max(slc[0].start - margin, 0) : slc[0].stop + margin, max(slc[1].start - margin, 0) : slc[1].stop + margin] = True
    return out & np.asarray(scan_area, bool)


def cover_rows(rows: Sequence[Tuple[int, int, int, int]], scan_area: np.ndarray) -> np.ndarray:
    """What to zero for rows of text (boxes x0, y0, x1, y1, exclusive): each box grown by half its height above and
    below and by 1.5 times its height left and right (letters at the ends of a word that were not found as marks),
    clipped to ``scan_area`` (bool [H, W]). bool [H, W]."""
    scan_area = np.asarray(scan_area, bool)
    H, W = scan_area.shape
    out = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in rows:
        h = y1 - y0
        out[max(int(y0 - 0.5 * h), 0) : int(y1 + 0.5 * h) + 1, max(int(x0 - 1.5 * h), 0) : int(x1 + 1.5 * h) + 1] = True
    return out & scan_area


def frame_fill(frame: np.ndarray, scan_area: np.ndarray) -> float:
    """Fraction of ``scan_area`` that is tissue-like in this single frame [H, W] (0 for a report page,
    a text frame or a blank frame; about the file's own fill for an ultrasound frame)."""
    area = int(scan_area.sum())
    if area == 0 or text_like(np.asarray(frame)[scan_area]):
        return 0.0
    return float((tissue_candidates(frame, use_motion=False) & scan_area).sum() / area)


# --- burned-in text inside the scan area ----------------------------------------------------------------------
#
# Speckle is a random texture: neighbouring pixels rarely share a value, it decorrelates from frame to frame in a
# moving cine, and a B-mode image is grey. Rendered text is the opposite: strokes of one ink value (or colour),
# glyph-sized, a few pixels thick, side by side in a row, and identical in the frames that show it. The detector
# collects candidate ink pixels by five cues, cuts them into connected marks, keeps the marks shaped like glyphs
# or words, and groups them into rows; :func:`classify_text_marks` turns that into a verdict per frame.

#: what a frame's verdict means for the frame (see :func:`find_text_marks`)
TEXT_VERDICTS = ("clean", "text", "uncertain")


def _equal_neighbours(q: np.ndarray) -> np.ndarray:
    """For an integer image [H, W]: how many of each pixel's 8 neighbours hold exactly its value (uint8 [H, W], 0-8)."""
    H, W = q.shape
    padded = np.pad(q, 1, constant_values=-1)
    count = np.zeros((H, W), np.uint8)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                count += padded[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] == q
    return count


def _same_value_components(q: np.ndarray, candidates: np.ndarray, min_area: int = 6, gap: int = 1) -> np.ndarray:
    """Label image (int32 [H, W], 0 = none) of the marks drawn in one value: ``candidates`` pixels of the integer
    image ``q`` linked when they hold the same value and lie at most ``gap`` px apart (anti-aliasing breaks the
    full-ink pixels of a stroke into pieces); groups of at least ``min_area`` pixels are kept."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    H, W = q.shape
    out = np.zeros((H, W), np.int32)
    n = int(candidates.sum())
    if n < min_area:
        return out
    index = np.full((H, W), -1, np.int64)
    index[candidates] = np.arange(n)
    reach = gap + 1
    sources, targets = [], []
    for dy in range(0, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy == 0 and dx <= 0:
                continue  # each pair of offsets once
            a = (slice(0, H - dy), slice(max(-dx, 0), W - max(dx, 0)))
            b = (slice(dy, H), slice(max(dx, 0), W - max(-dx, 0)))
            linked = candidates[a] & candidates[b] & (q[a] == q[b])
            sources.append(index[a][linked])
            targets.append(index[b][linked])
    sources, targets = np.concatenate(sources), np.concatenate(targets)
    graph = coo_matrix((np.ones(sources.size, np.int8), (sources, targets)), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    sizes = np.bincount(group)
    keep = sizes >= min_area
    relabel = np.zeros(sizes.size, np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    out[candidates] = relabel[group]
    return out


def upright_strokes(q: np.ndarray, candidates: np.ndarray, min_run: int = 4, min_edge: int = 3) -> np.ndarray:
    """Pixels of upright strokes drawn in one grey (bool [H, W]): runs of at least ``min_run`` vertically adjacent
    ``candidates`` pixels of the integer image ``q`` [H, W] that hold exactly the same value, each with a step of at
    least ``min_edge`` grey levels to its left or right neighbour. Anti-aliased text in a grey inside the speckle
    range keeps full ink mostly in its vertical stems (l, I, M, N, H, 1, 4); speckle, elongated across the beam,
    almost never repeats one value four pixels down, and a smooth region that does has no edge beside it."""
    H, W = q.shape
    same = np.zeros((H, W), bool)
    same[1:] = (q[1:] == q[:-1]) & candidates[1:] & candidates[:-1]
    step = np.zeros((H, W), bool)
    step[:, 1:] |= np.abs(q[:, 1:].astype(np.int32) - q[:, :-1]) >= min_edge
    step[:, :-1] |= np.abs(q[:, :-1].astype(np.int32) - q[:, 1:]) >= min_edge
    ok = candidates & step
    link = np.zeros((H, W), bool)  # link[y]: pixels y-1 and y belong to one run of edged, equal pixels
    link[1:] = same[1:] & ok[1:] & ok[:-1]
    # the length of the run of links ending at each row, then every pixel of a long enough run
    length = np.zeros((H, W), np.int32)
    for y in range(1, H):
        length[y] = np.where(link[y], length[y - 1] + 1, 0)
    ends = length >= min_run - 1
    out = ends.copy()
    longest = int(length[ends].max()) if ends.any() else 0
    for k in range(1, longest + 1):  # the pixels above each run's end, up to its length
        out[:-k] |= ends[k:] & (length[k:] >= k)
    return out


def _stroke_width(mask: np.ndarray) -> float:
    """Typical stroke width in pixels of a bool mark [h, w]: twice the median distance-to-background on its
    ridge (pixels at a local maximum of the distance transform), minus one; 1 for a one-pixel line."""
    dt = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ridge = mask & (dt >= ndi.maximum_filter(dt, 3))
    return float(2.0 * np.median(dt[ridge]) - 1.0) if ridge.any() else 0.0


def mark_shape(mask: np.ndarray, max_height: int, min_height: int = 5, min_area: int = 6) -> Optional[str]:
    """Whether one connected mark (bool [h, w], cropped to its bounding box) is shaped like rendered text.

    ``"glyph"``: ``min_height`` to ``max_height`` pixels tall, at most about twice as wide as tall, strokes no
    thicker than a third of its height (at least 2.5 px allowed), not a solid block (unless one stroke wide, like
    ``l`` or ``1``); one wider than 1.5x its height needs ink over at least half its height in a quarter of its
    columns (a piece of a curved band does not). ``"stroke"``: the same but one straight stroke (the variance of its pixels across their
    main direction at most 0.5 px²): the stem of a letter (anti-aliased text often keeps full ink only in its
    vertical stems) as well as a piece of a needle or a reflector; alone it is no evidence. ``"word"``: as tall as a glyph but wider, crossing at least 4 strokes along some row
    (letters that touch). ``None`` for anything else: specks, blobs, long lines and curves (a needle, the
    pericardium, a box drawn around a region), solid patches.
    """
    h, w = mask.shape
    area = int(mask.sum())
    if area < min_area or not min_height <= h <= max_height:
        return None
    stroke = _stroke_width(mask)
    if stroke > max(2.5, h / 3.0):
        return None
    ys, xs = np.nonzero(mask)
    if np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(np.float64)))[0] <= 0.5:
        return "stroke"  # one straight stroke: a stem of a letter, or a piece of a needle, reflector, tick
    fill = area / float(h * w)
    rows = np.arange(h)[:, None]
    span = np.where(mask, rows, -1).max(0) - np.where(mask, rows, h).min(0)  # ink extent of every column
    if w > 1.5 * h and (span >= 0.5 * h).mean() < 0.25:
        return None  # a long thin band (a curved reflector, a broken line): letters fill their height in many columns
    if w <= 2 * h + 2:
        return None if (fill > 0.85 and w > 3) else "glyph"
    row_runs = int(np.max(np.sum(mask[:, 1:] & ~mask[:, :-1], axis=1) + mask[:, 0]))
    return "word" if row_runs >= 4 and fill <= 0.6 else None


def _ring_stats(image: np.ndarray, mark: np.ndarray, region: np.ndarray) -> Tuple[float, float]:
    """How far the pixels 2-3 px around a mark lie from its value: their mean absolute difference from the mark's
    mean (a flat piece of smooth tissue blends into its surroundings; ink in speckle does not, even at the speckle's
    own mean grey) and the difference of the mark's mean from their median (its contrast). Image float [h, w],
    bool masks [h, w]; (0, 0) when fewer than 4 surrounding pixels lie in ``region``."""
    near = ndi.binary_dilation(mark, iterations=1)
    ring = ndi.binary_dilation(near, iterations=2) & ~near & region
    if ring.sum() < 4:
        return 0.0, 0.0
    values = image[ring]
    ink = float(image[mark].mean())
    return float(np.abs(values - ink).mean()), float(abs(ink - np.median(values)))


def _stands_out(image: np.ndarray, levels: np.ndarray, mark: np.ndarray, region: np.ndarray, min_texture: float, min_contrast: float) -> bool:
    """Whether a mark drawn in one level (bool [h, w] in a window of the image: grey values float [h, w] and
    their integer ``levels`` [h, w]) differs from the speckle around it: its level is a spike of the window's
    histogram (at least 3x as frequent as the 6 nearest levels that occur, on average, plus 4: speckle's histogram
    is smooth; a posterised image's has gaps) and far from the grey of its surroundings (the pixels 2-3 px around
    it differ from it by ``min_texture`` on average), or, at the clipping level (250 or more, where saturated speckle spikes
    too), brighter than its surroundings' median by ``min_contrast``."""
    texture, contrast = _ring_stats(image, mark, region)
    if float(image[mark].mean()) >= 250.0:
        return contrast >= min_contrast
    if texture < min_texture:
        return False
    value = int(levels[mark][0])
    counts = np.bincount(levels[region].astype(np.int64).ravel(), minlength=value + 1)
    occupied = np.nonzero(counts)[0]
    others = occupied[occupied != value]
    near = others[np.argsort(np.abs(others - value), kind="stable")[:6]]
    return counts[value] >= 3.0 * float(counts[near].mean() if near.size else 0.0) + 4


def _marks_of(labels: np.ndarray, image: np.ndarray, region: np.ndarray, max_height: int, cue: str,
              min_texture: Optional[float] = None, min_contrast: Optional[float] = None, levels: Optional[np.ndarray] = None,
              min_area: int = 6) -> List[Dict[str, Any]]:
    """The text-shaped marks among the labelled pieces: list of dicts (``box`` x0, y0, x1, y1 exclusive, ``shape``,
    ``pixels``, ``cue``, ``label``). With ``levels`` (the integer levels the pieces were cut by) a mark must also
    stand out from the speckle around it (:func:`_stands_out`)."""
    sizes = np.bincount(labels.ravel())
    marks = []
    for index, slc in enumerate(ndi.find_objects(labels), start=0):
        if slc is None or sizes[index + 1] < min_area:
            continue
        ys, xs = slc
        pad = max(8, ys.stop - ys.start)  # surroundings: for the histogram around the mark
        y0, y1 = max(ys.start - pad, 0), min(ys.stop + pad, labels.shape[0])
        x0, x1 = max(xs.start - pad, 0), min(xs.stop + pad, labels.shape[1])
        mark = labels[y0:y1, x0:x1] == index + 1
        shape = mark_shape(mark[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0], max_height, min_area=min_area)
        if shape is None:
            continue
        if levels is None and min_contrast is not None and _ring_stats(image[y0:y1, x0:x1], mark, region[y0:y1, x0:x1])[1] < min_contrast:
            continue
        if levels is not None and not _stands_out(image[y0:y1, x0:x1], levels[y0:y1, x0:x1], mark, region[y0:y1, x0:x1], min_texture, min_contrast):
            continue
        marks.append({"box": (xs.start, ys.start, xs.stop, ys.stop), "shape": shape, "pixels": int(sizes[index + 1]), "cue": cue, "label": index + 1})
    return marks


def still_at_ink_level(q: np.ndarray, still: np.ndarray, candidates: np.ndarray, min_pixels: int = 20,
                       min_ratio: float = 6.0) -> np.ndarray:
    """The ``still`` pixels (bool [H, W]) whose grey level (integer image ``q`` [H, W], 0-255) is still far more often
    than the others: at least ``min_ratio`` times the median level's share of still pixels among the ``candidates``,
    and at least ``min_pixels`` of them. Text drawn in one grey keeps that grey where it is shown, even the speckle's
    own; chance equalities of moving speckle, and a real cine's slowly changing dark pixels, come at every level
    alike (at most 2.4x the median share on the benchmark's real cines). Levels with fewer than ``min_pixels``
    candidates are not judged."""
    levels = np.clip(q, 0, 255).astype(np.int64)
    still_at = np.bincount(levels[still], minlength=256)
    all_at = np.bincount(levels[candidates], minlength=256)
    counted = all_at >= min_pixels
    if not counted.any():
        return np.zeros_like(still)
    share = still_at / np.maximum(all_at, 1)
    ink_levels = counted & (still_at >= min_pixels) & (share >= min_ratio * float(np.median(share[counted])))
    return still & ink_levels[levels]


def text_rows(boxes: Sequence[Tuple[int, int, int, int]], weights: Sequence[int]) -> List[Tuple[List[int], int]]:
    """Group marks into rows of text: two marks are in one row when their boxes (x0, y0, x1, y1) overlap
    vertically by at least half the smaller height, their heights differ by at most 3x and the horizontal gap
    between them is at most 1.5 times the taller one. Returns [(indices, summed weight)], heaviest first."""
    n = len(boxes)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        xi0, yi0, xi1, yi1 = boxes[i]
        for j in range(i + 1, n):
            xj0, yj0, xj1, yj1 = boxes[j]
            hi, hj = yi1 - yi0, yj1 - yj0
            overlap = min(yi1, yj1) - max(yi0, yj0)
            gap = max(xi0, xj0) - min(xi1, xj1)
            if overlap >= 0.5 * min(hi, hj) and max(hi, hj) <= 3 * min(hi, hj) and gap <= 1.5 * max(hi, hj):
                parent[root(i)] = root(j)
    groups: Dict[int, List[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    rows = [(members, int(sum(weights[i] for i in members))) for members in groups.values()]
    return sorted(rows, key=lambda r: -r[1])


def text_band_window(height: int, width: int) -> Tuple[int, int]:
    """The (rows, columns) of a line of text at this frame size: 5 x 41 px at 240 px, scaled with min(H, W)."""
    scale = min(height, width) / 240.0
    return max(3, int(round(5 * scale)) | 1), max(15, int(round(41 * scale)) | 1)


def text_bands(probability: np.ndarray, region: np.ndarray, threshold: float) -> List[Tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1, exclusive) of the lines of text the detector's probability (float [H, W]) shows
    inside ``region``: where its mean over a :func:`text_band_window` reaches ``threshold``, each connected stretch
    of such window centres grown by half a window."""
    H, W = probability.shape
    h, w = text_band_window(H, W)
    mean = ndi.uniform_filter(np.where(region, probability, 0.0).astype(np.float32), size=(h, w), mode="constant")
    labels = ndi.label(mean >= threshold)[0]
    boxes = []
    for s in ndi.find_objects(labels):
        if s is None:
            continue
        boxes.append((max(s[1].start - w // 2, 0), max(s[0].start - h // 2, 0), min(s[1].stop + w // 2, W), min(s[0].stop + h // 2, H)))
    return boxes


def find_text_marks(
    frame: np.ndarray,
    region: np.ndarray,
    neighbours: Sequence[np.ndarray] = (),
    chroma: Optional[np.ndarray] = None,
    use_colour: bool = False,
    min_level: float = 16.0,
    bright_percentile: float = 99.0,
    max_flat_fraction: float = 0.1,
    min_texture: float = 15.0,
    min_contrast: float = 40.0,
    max_height: Optional[int] = None,
    min_row: int = 3,
    ink_probability: Optional[np.ndarray] = None,
    ink_threshold: float = 0.5,
    min_ink_area: int = 8,
    band_threshold: float = 0.1,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Text-like marks burned into the scan area of one frame, and the frame's verdict.

    Candidate ink pixels (inside ``region``, not darker than ``min_level``), by cue:

    * ``uniform ink``: pixels that share their exact value with a neighbour, cut into pieces of one value;
      a piece counts only where it stands out from its surroundings (their standard deviation at least
      ``min_texture``: flat ink in speckle, e.g. mid-grey text; or a contrast of ``min_contrast``: white text
      on a smooth region);
    * ``still across frames`` (cines; ``neighbours`` are the frames before and after, float [H, W]): pixels
      identical in this frame and its neighbours, used only where the scan area otherwise changes (fewer than
      5 % of its pixels still): text shown in some frames of a moving cine; and, for text shown in two frames, the
      pixels identical in this frame and one neighbour at a grey level whose pixels are still at least 6 times as
      often as the median level's (text drawn in one grey, even the speckle's own), grown by 1 px;
    * ``colour`` (``chroma`` float [H, W] and ``use_colour``, for a colour file whose scan area is grey):
      pixels with a chroma above 24;
    * ``text detector`` (``ink_probability`` float [H, W] in 0-1, from
      :func:`~ultrasound_diffusers.models.text_ink_detector.ink_probability`): pieces of pixels above
      ``ink_threshold``, at least ``min_ink_area`` of them, no taller than ``max_height``: the learned cue that finds
      thin text in a grey inside the speckle range, which the cues above miss. Pieces are shaped as the other cues'
      (:func:`mark_shape`: glyphs, words, strokes); alone, outside a row, one is no evidence (a piece of a reflector).
      And a band: where the probability averaged over a line of text (:func:`text_band_window`: 5 x 41 px at a
      240-px frame, scaled with the frame) reaches ``band_threshold``, that window is a row of text, even when no
      single pixel is sure (faint text: the detector's evidence is spread along the line).

    Pieces shaped like glyphs or words (:func:`mark_shape`, at most ``max_height`` px tall: default
    ``max(20, 0.15 * min(H, W))``) are grouped into rows (:func:`text_rows`, a word counts as 3 glyphs).

    Args:
        frame: float [H, W] grey levels 0-255.
        region: bool [H, W], where to look (the scan area less masked marks).

    Returns:
        (bool [H, W] the marks' pixels, grown by 1 px; info dict: ``verdict`` ``"text"`` (a row of at least
        ``min_row`` glyphs; ``rows``: their boxes x0, y0, x1, y1, exclusive), ``"uncertain"`` (glyph-like marks, but no such row: a lone caliper cross, a digit,
        or a chance speckle pattern), or ``"clean"``; ``marks``, ``pixels``, ``longest_row``, ``cues`` (marks
        per cue)).
    """
    frame = np.asarray(frame, dtype=np.float32)
    H, W = frame.shape
    region = ndi.binary_erosion(np.asarray(region, bool), iterations=2)  # the fan's own edge is not a mark
    if max_height is None:
        max_height = int(max(20, round(0.15 * min(H, W))))
    q = np.rint(frame).astype(np.int16)
    inked = region & (frame >= min_level)
    out = np.zeros((H, W), bool)
    marks: List[Dict[str, Any]] = []

    doppler = chroma is not None and not use_colour

    def add(labels: np.ndarray, found: List[Dict[str, Any]]) -> None:
        for m in found:
            x0, y0, x1, y1 = m["box"]
            piece = labels[y0:y1, x0:x1] == m["label"]
            if (out[y0:y1, x0:x1] & piece).sum() > 0.5 * piece.sum():
                continue  # the same mark, found by an earlier cue
            if doppler and (np.asarray(chroma)[y0:y1, x0:x1][piece] > 24.0).mean() > 0.5:
                continue  # colour flow of a Doppler image (its palette has flat levels), not ink
            out[y0:y1, x0:x1] |= piece
            marks.append(m)

    equal = _equal_neighbours(q)
    mid = inked & (frame < 250.0)
    flat_fraction = float((equal[mid] >= 3).mean()) if mid.any() else 0.0
    if flat_fraction <= max_flat_fraction:
        labels = _same_value_components(q, inked & (equal > 0))
        add(labels, _marks_of(labels, frame, region, max_height, "uniform ink", min_texture, min_contrast, q))
    if region.any():
        # brighter than the frame's speckle ever is: anti-aliased white or bright text keeps few pixels of full ink
        # (the speckle's percentile leaves saturated pixels out: white text would raise it)
        unsaturated = frame[region & (frame < 250.0)]
        level = float(np.percentile(unsaturated, bright_percentile)) if unsaturated.size else 250.0
        bright = region & (frame > min(level + 10.0, 250.0))
        labels = ndi.label(bright, structure=np.ones((3, 3), bool))[0]
        add(labels, [m for m in _marks_of(labels, frame, region, max_height, "brighter than the speckle", min_contrast=min_contrast)
                     if m["shape"] != "stroke"])  # bright straight pieces: needles, their reverberations
    stems = upright_strokes(q, inked & (frame < 250.0))
    if stems.any():
        labels = ndi.label(stems, structure=np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool))[0]
        add(labels, [{"box": (s[1].start, s[0].start, s[1].stop, s[0].stop), "shape": "stroke", "cue": "upright strokes of one grey",
                      "pixels": int((labels[s] == i).sum()), "label": i}
                     for i, s in enumerate(ndi.find_objects(labels), start=1) if s is not None and s[0].stop - s[0].start <= max_height])
    if len(neighbours):
        equal = [np.abs(np.asarray(other, np.float32) - frame) < 0.5 for other in neighbours]
        still = inked & np.logical_and.reduce(equal)  # identical in this frame and every neighbour
        if still.sum() < 0.05 * max(int(region.sum()), 1):
            labels = ndi.label(still, structure=np.ones((3, 3), bool))[0]
            add(labels, _marks_of(labels, frame, region, max_height, "still across frames"))
            # text shown in two frames: still in at least one neighbour, at a grey level of its own, joined across
            # the anti-aliased gaps of the strokes
            at_ink = still_at_ink_level(q, inked & np.logical_or.reduce(equal), inked)
            if at_ink.any():
                grown = ndi.binary_dilation(at_ink, structure=np.ones((3, 3), bool)) & region
                labels = ndi.label(grown, structure=np.ones((3, 3), bool))[0]
                add(labels, _marks_of(labels, frame, region, max_height, "still across frames"))
    if use_colour and chroma is not None:
        labels = ndi.label(region & (np.asarray(chroma) > 24.0), structure=np.ones((3, 3), bool))[0]
        add(labels, _marks_of(labels, frame, region, max_height, "colour"))
    if ink_probability is not None:
        probability = np.asarray(ink_probability, dtype=np.float32)
        if probability.shape != frame.shape:
            raise ValueError(f"`ink_probability` must have the frame's shape {frame.shape}, got {probability.shape}")
        labels = ndi.label(region & (probability > ink_threshold), structure=np.ones((3, 3), bool))[0]
        found = []
        for i, s in enumerate(ndi.find_objects(labels), start=1):
            if s is None:
                continue
            piece = labels[s] == i
            shape = mark_shape(piece, max_height, min_area=min_ink_area) if piece.sum() >= min_ink_area else None
            if shape is not None:  # glyphs, words, strokes; not bands along a reflector, blobs or specks
                found.append({"box": (s[1].start, s[0].start, s[1].stop, s[0].stop), "shape": shape,
                              "cue": "text detector", "pixels": int(piece.sum()), "label": i})
        add(labels, found)
        band_rows = text_bands(probability, region, band_threshold)
    else:
        band_rows = []
    out = ndi.binary_dilation(out, iterations=1)
    rows = text_rows([m["box"] for m in marks], [3 if m["shape"] == "word" else 1 for m in marks]) if marks else []
    longest = rows[0][1] if rows else 0
    row_boxes = []
    for members, weight in rows:
        if weight >= min_row:
            boxes = np.array([marks[i]["box"] for i in members])
            row_boxes.append((int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())))
    # alone (outside a row of text), a straight stroke, a bright blob, a still one or one piece the learned detector
    # marks is no evidence: pieces of needles and reflectors, bright speckle, a region that happens to stay still
    glyphs = sum(m["shape"] != "stroke" and m["cue"] not in ("brighter than the speckle", "still across frames", "text detector")
                 for m in marks)
    if band_rows:
        row_boxes.extend(band_rows)
        longest = max(longest, min_row)
    verdict = "text" if longest >= min_row else ("uncertain" if glyphs or flat_fraction > max_flat_fraction else "clean")
    if verdict == "clean":
        marks = []
        out[:] = False
    cues = Counter(m["cue"] for m in marks)
    if band_rows:
        cues["text detector (band)"] += len(band_rows)
    if verdict == "clean":
        row_boxes, longest = [], 0
    return out, {"verdict": verdict, "marks": len(marks), "pixels": int(sum(m["pixels"] for m in marks)), "longest_row": int(longest), "rows": row_boxes,
                 "cues": dict(cues), "flat_fraction": round(flat_fraction, 4), "too_flat": flat_fraction > max_flat_fraction}


def technical_metadata(ds) -> Dict[str, Any]:
    """The copied values of :data:`COPIED_TAGS` (strings only from fixed sets, numbers as numbers)."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    frame_time = ds.get("FrameTime")
    try:
        frame_time = float(frame_time) if frame_time not in (None, "") else None
    except (TypeError, ValueError):
        frame_time = None
    if frame_time is not None and not np.isfinite(frame_time):
        frame_time = None
    return {
        "modality": modality if modality in _MODALITIES else "",
        "photometric_interpretation": photometric if photometric in _PHOTOMETRIC else "",
        "manufacturer": canonical_vendor(ds.get("Manufacturer", "")),
        "frame_time_ms": frame_time,
    }


def _split_key(ds, path: Path) -> str:
    """What keeps files together in one split (held in memory only): the patient, else the study, else the file."""
    for tag in ("PatientID", "StudyInstanceUID"):
        value = str(ds.get(tag, "") or "").strip()
        if value:
            return f"{tag}:{value}"
    return f"file:{path.resolve()}"


def _pseudonym(key: bytes, uid: str) -> str:
    return hmac.new(key, uid.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _warn(message: str) -> None:
    """A :class:`ConversionWarning` attributed to the first caller outside this module (the line that called
    :func:`convert_dicom`), however deep in its helpers it is raised."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ConversionWarning, stacklevel=level)


def deidentification_report(counts: Dict[str, Any]) -> str:
    """A short human-readable summary of the report dict returned by :func:`convert_dicom`."""
    lines = [
        f"de-identification: {counts['files_converted']} of {counts['files_seen']} file(s) converted, "
        f"{counts['frames_kept']} frame(s) kept, {counts['frames_dropped_total']} dropped"
    ]
    for key, title in (("files_dropped", "files dropped"), ("frames_dropped", "frames dropped"), ("frames_kept_by_flag", "frames kept by a flag")):
        for reason, n in counts[key].items():
            lines.append(f"  {title}: {n} x {reason}")
    lines.append(
        f"  masked: {counts['pixels_masked_outside_scan_area_fraction']:.3f} of the pixels of kept frames (outside the scan area, static marks); "
        f"{counts['files_with_content_masked_inside_hull']} file(s) had content attached to the scan area (e.g. a banner next to the apex) masked, "
        f"{counts['files_with_static_marks_masked_inside_scan_area']} cine(s) had static marks inside it masked"
    )
    text = counts.get("text_inside_scan_area")
    if text:
        actions = ", ".join(f"{n} {k}" for k, n in text["actions"].items()) or "none"
        cues = ", ".join(f"{k} {n}" for k, n in text["cues"].items()) or "none"
        lines.append(
            f"  text inside the scan area: {text['frames_checked']} frame(s) checked, {text['text']} with text, {text['uncertain']} uncertain "
            f"({actions}); {text['marks']} mark(s), {text['mark_pixels']} px; marks by cue: {cues}"
        )
    lines.append(
        f"  metadata: manufacturer kept for {counts['manufacturer']['canonical vendor name']} file(s), dropped for "
        f"{counts['manufacturer']['not in the vendor allow-list']}; model names, names, IDs, dates, institutions and UIDs never copied"
    )
    return "\n".join(lines)


_TEXT_REASONS = {
    "text": "burned-in text inside the scan area (a row of glyph-like marks; pass --mask_text_inside_scan_area to keep it masked)",
    "uncertain": "possible burned-in text inside the scan area (glyph-like marks but no row of text, or too flat to tell; "
    "pass --keep_uncertain_frames to keep it)",
}


@dataclass(frozen=True)
class DeidentificationPolicy:
    """What :func:`convert_dicom` does with a file or frame it cannot be sure is free of identifiers.

    Every default fails closed (drops what might leak); each switch trades some of that safety for more data.
    ``convert_dicom`` takes the policy as ``policy=`` or field by field (``convert_dicom(folder,
    keep_uncertain_frames=True)``), or both: the keywords replace the object's fields.

    Args:
        require_ultrasound: skip files whose Modality is not ``US``.
        strict: raise on corrupt / unexpected files instead of skipping them with a warning.
        keep_frames_without_scan_area: keep frames where no scan area was found (whole, unmasked) or that
            do not fill their file's scan area, instead of dropping them. Never applies to files marked
            ``BurnedInAnnotation=YES``.
        accept_burned_in_annotation: convert files marked ``BurnedInAnnotation=YES`` (masked to their scan
            area) instead of dropping them.
        min_frame_fill: float in [0, 1]; a frame is kept when at least this fraction of its file's scan area is
            tissue-like in that frame.
        keep_uncertain_frames: keep (unmasked) frames where :func:`find_text_marks` finds glyph-like marks inside
            the scan area but no row of text (a lone caliper cross, a digit), or that are too flat to tell;
            default: drop them.
        mask_text_inside_scan_area: keep frames with burned-in text inside the scan area, with the rows of text
            found zeroed (:func:`cover_rows`, :func:`cover_marks`); default: drop them (the detector finds marks, not
            necessarily every pixel of them, and a zeroed box is an artefact a model would learn).
        learned_text_detector: also look for text with the bundled
            :class:`~ultrasound_diffusers.models.text_ink_detector.TextInkDetector`, trained on synthetic frames
            only: it finds most thin text in a grey inside the speckle range on synthetic speckle, but on real files
            it also fires on colour Doppler, graphics and real speckle and drops clean frames (see
            the README's de-identification numbers), so it is off by default; use it on grey B-mode archives after
            checking the report's drops.

    Raises:
        TypeError: a switch that is not True / False (or 0 / 1), or a ``min_frame_fill`` that is not a number;
            the message names the field.
        ValueError: ``min_frame_fill`` outside [0, 1].

    Example::

        policy = DeidentificationPolicy(keep_uncertain_frames=True)
        dd = convert_dicom("dicoms/", policy=policy)
        dd = convert_dicom("dicoms/", keep_uncertain_frames=True)  # the same
    """

    require_ultrasound: bool = True
    strict: bool = False
    keep_frames_without_scan_area: bool = False
    accept_burned_in_annotation: bool = False
    min_frame_fill: float = 0.25
    keep_uncertain_frames: bool = False
    mask_text_inside_scan_area: bool = False
    learned_text_detector: bool = False

    def __post_init__(self):
        for name in POLICY_FIELDS:
            value = getattr(self, name)
            if name == "min_frame_fill":
                if isinstance(value, str) or not isinstance(value, numbers.Real):
                    raise TypeError(f"`min_frame_fill` must be a number in [0, 1], got {value!r}")
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"`min_frame_fill` must be in [0, 1], got {value}")
            elif not isinstance(value, (bool, np.bool_)) and not (isinstance(value, (int, np.integer)) and value in (0, 1)):
                raise TypeError(f"`{name}` must be True or False, got {value!r}")

    @classmethod
    def build(cls, policy: Optional[DeidentificationPolicy] = None, fields: Optional[Dict[str, Any]] = None,
              caller: str = "convert_dicom") -> DeidentificationPolicy:
        """``policy`` (default: all defaults) with ``fields`` replacing its values.

        Raises:
            TypeError: ``policy`` is not a DeidentificationPolicy, or ``fields`` has a name that is not a field
                (the message names the caller and lists the fields).
        """
        fields = dict(fields or {})
        _check_policy_names(fields, caller)
        if policy is None:
            policy = cls()
        elif not isinstance(policy, cls):
            raise TypeError(f"{caller}(): `policy` must be a DeidentificationPolicy, got {type(policy).__name__}")
        return dataclasses.replace(policy, **fields) if fields else policy

    def report_options(self) -> Dict[str, Any]:
        """The ``options`` entry of the de-identification report: the switches that change what is kept."""
        return {"keep_frames_without_scan_area": bool(self.keep_frames_without_scan_area),
                "accept_burned_in_annotation": bool(self.accept_burned_in_annotation),
                "min_frame_fill": float(self.min_frame_fill), "keep_uncertain_frames": bool(self.keep_uncertain_frames),
                "mask_text_inside_scan_area": bool(self.mask_text_inside_scan_area),
                "learned_text_detector": bool(self.learned_text_detector)}


#: The field names of :class:`DeidentificationPolicy`, in order (the policy keywords of :func:`convert_dicom`).
POLICY_FIELDS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DeidentificationPolicy))


def _check_policy_names(fields: Dict[str, Any], caller: str) -> None:
    unknown = sorted(set(fields) - set(POLICY_FIELDS))
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {names}; its de-identification policy fields are {list(POLICY_FIELDS)}")


@dataclass
class _Tally:
    """The counts of one conversion, filled file by file and frame by frame (:func:`_build_report` reads them)."""

    files_dropped: Counter = field(default_factory=Counter)
    frames_dropped: Counter = field(default_factory=Counter)
    frames_kept_by_flag: Counter = field(default_factory=Counter)
    burned_in: Counter = field(default_factory=Counter)
    vendors: Counter = field(default_factory=lambda: Counter({"canonical vendor name": 0, "not in the vendor allow-list": 0}))
    shapes: Counter = field(default_factory=Counter)
    masked_inside_hull: int = 0
    overlay_files: int = 0
    overlay_pixels: int = 0
    masked_pixels: int = 0
    total_pixels: int = 0
    text_counts: Counter = field(default_factory=Counter)
    text_cues: Counter = field(default_factory=Counter)
    text_frames: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class _Conversion:
    """What every file of one conversion shares: the settings, the pseudonym key, the skipped files and the counts."""

    pydicom: Any
    invalid_dicom_error: type
    policy: DeidentificationPolicy
    crop: bool
    out_size: Any
    frame_step: int
    max_frames: Optional[int]
    key: bytes  # pseudonym key of this conversion: never stored, never reused
    failures: FailureLog
    tally: _Tally = field(default_factory=_Tally)
    text_detector: Any = None  # the TextInkDetector of policy.learned_text_detector, loaded once per conversion


@dataclass
class _ScanArea:
    """One file's scan area, as its frames are cut and masked.

    Attributes:
        mask: bool [H, W], True inside the scan area (everywhere when none was found and the frames are kept whole).
        shape: the fitted shape (``"sector"``, ``"rectangle"``), or ``"none"``.
        box: (y0, y1, x0, x1) the frames are cropped to (the whole frame without ``crop``).
        overlay: bool [H, W], static marks inside the scan area of a cine (zeroed in every frame).
        grey_scan: the file has colour but its scan area is grey (so colour inside it is a mark, not Doppler flow).
    """

    mask: np.ndarray
    shape: str
    box: Tuple[int, int, int, int]
    overlay: np.ndarray
    grey_scan: bool


def _read_file(conv: _Conversion, path: Path):
    """Read and decode one file -> (dataset, BurnedInAnnotation value, frames [T, H, W], chroma or None), or None
    when the file is skipped (not readable, not ultrasound, no pixel data, marked burned-in, not decodable)."""
    try:
        ds = conv.pydicom.dcmread(str(path))
    except (conv.invalid_dicom_error, OSError, ValueError, EOFError, KeyError, TypeError) as err:
        conv.failures.add(path, "not a readable DICOM file", f"not a readable DICOM file ({type(err).__name__}: {err})")
        return None
    modality = str(ds.get("Modality", ""))
    if conv.policy.require_ultrasound and modality != "US":
        conv.failures.add(path, "not ultrasound", f"Modality is {modality or 'missing'}, not US")
        return None
    if "PixelData" not in ds:
        conv.failures.add(path, "no pixel data", "no pixel data")
        return None
    annotation = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    conv.tally.burned_in[annotation if annotation in ("YES", "NO") else "absent"] += 1
    if annotation == "YES" and not conv.policy.accept_burned_in_annotation:
        conv.tally.files_dropped["BurnedInAnnotation=YES (pass --accept_burned_in_annotation to keep it, masked to the scan area)"] += 1
        _warn(f"dropping {path}: marked BurnedInAnnotation=YES (pass accept_burned_in_annotation / --accept_burned_in_annotation to keep it, masked to its scan area)")
        return None
    try:
        frames, chroma = dicom_frames_to_gray(ds, return_chroma=True)
    except Exception as err:  # decoders raise many types (missing plugin, truncated data, ...)
        conv.failures.add(path, "pixel data not decodable", f"pixel data could not be decoded ({type(err).__name__}: {err})")
        return None
    return ds, annotation, frames, chroma


def _scan_area(conv: _Conversion, path: Path, frames: np.ndarray, chroma, region_box, annotation: str, n_keep: int) -> Optional[_ScanArea]:
    """Find the scan area of one file's frames [T, H, W] (within ``region_box`` when given); None when the file
    is dropped for having none (unless the policy keeps its ``n_keep`` frames whole)."""
    policy, tally = conv.policy, conv.tally
    H, W = frames.shape[1:]
    mask, info = find_scan_area(frames, region_box=region_box)
    if mask is None:
        if not policy.keep_frames_without_scan_area or annotation == "YES":
            reason = "no scan area found" + (" (file marked BurnedInAnnotation=YES)" if annotation == "YES" else "")
            tally.files_dropped[reason] += 1
            tally.frames_dropped[reason] += n_keep
            _warn(f"dropping {path}: no ultrasound scan area found ({info['reason']}); its {n_keep} frame(s) could hold burned-in text"
                  + ("" if annotation == "YES" else " (pass keep_frames_without_scan_area / --keep_frames_without_scan_area to keep them whole)"))
            return None
        mask = np.ones((H, W), dtype=bool)
        shape = "none"
        _warn(f"{path}: no scan area found ({info['reason']}); keeping its {n_keep} frame(s) whole and unmasked as asked")
    else:
        shape = info["shape"]
        if info.get("masked_inside_hull", 0) > 0.01 * mask.sum():  # more than edge pixels: e.g. a banner at the apex
            tally.masked_inside_hull += 1
    ys, xs = np.nonzero(mask)
    box = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) if conv.crop else (0, H, 0, W)
    overlay = cover_marks(static_overlay(frames, mask), mask) if shape != "none" else np.zeros_like(mask)
    if overlay.any():
        tally.overlay_files += 1
        tally.overlay_pixels += int(overlay.sum())
    # colour in a scan area that is otherwise grey is a mark; a Doppler file's colour is flow
    grey_scan = chroma is not None and float((chroma.max(0)[mask] > 24.0).mean()) < 0.05  # Doppler colours far more
    return _ScanArea(mask=mask, shape=shape, box=box, overlay=overlay, grey_scan=grey_scan)


def _check_text(conv: _Conversion, frames: np.ndarray, chroma, t: int, area: _ScanArea, source_id: str, kept_by: List[str]) -> Optional[np.ndarray]:
    """Search frame ``t`` for burned-in text inside the scan area and count the verdict -> the pixels to zero
    (bool [H, W]: the static marks, plus the rows of text when they are masked), or None when the frame is dropped.
    Appends to ``kept_by`` the flag that keeps a frame with (possible) text."""
    policy, tally = conv.policy, conv.tally
    T = frames.shape[0]
    neighbours = [frames[k] for k in (t - 1, t + 1) if 0 <= k < T] if T >= 3 else []
    probability = None
    if conv.text_detector is not None:
        from ..models.text_ink_detector import ink_probability

        probability = ink_probability(conv.text_detector, frames[t])
    marks, found = find_text_marks(frames[t], area.mask & ~area.overlay, neighbours, None if chroma is None else chroma[t],
                                   use_colour=area.grey_scan, ink_probability=probability)
    verdict = found["verdict"]
    tally.text_counts[verdict] += 1
    if verdict == "clean":
        return area.overlay
    tally.text_cues.update(found["cues"])
    tally.text_counts["marks"] += found["marks"]
    tally.text_counts["pixels"] += found["pixels"]
    if verdict == "text":
        action = "masked" if policy.mask_text_inside_scan_area else "dropped"
    else:
        action = "kept (--keep_uncertain_frames)" if policy.keep_uncertain_frames else "dropped"
    tally.text_counts[f"{verdict}: {action}"] += 1
    if len(tally.text_frames) < 1000:
        tally.text_frames.append({"source_id": source_id, "frame": t, "verdict": verdict, "action": action, "marks": found["marks"],
                                  "pixels": found["pixels"], "longest_row": found["longest_row"], "cues": found["cues"],
                                  "too_flat_to_tell": found["too_flat"]})
    if action == "dropped":
        tally.frames_dropped[_TEXT_REASONS[verdict]] += 1
        return None
    if verdict == "text":
        kept_by.append("burned-in text inside the scan area: kept, rows of text zeroed")
        return area.overlay | cover_marks(marks, area.mask) | cover_rows(found["rows"], area.mask)
    kept_by.append("possible burned-in text inside the scan area: kept unmasked")
    return area.overlay


def _frame_rows(conv: _Conversion, frames: np.ndarray, chroma, keep: List[int], area: _ScanArea, annotation: str,
                meta: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The rows of one file's kept frames (indices ``keep`` into frames [T, H, W]): each frame checked for filling
    the scan area and for text inside it, cropped to ``area.box``, masked, resized and encoded."""
    policy, tally = conv.policy, conv.tally
    H, W = frames.shape[1:]
    mask = area.mask
    y0, y1, x0, x1 = area.box
    mask_c = mask[y0:y1, x0:x1]
    mask_u8 = resize(mask_c.astype(np.uint8), conv.out_size, label=True)
    mask_cell = encode_png(mask_u8)
    rows = []
    for t in keep:
        kept_by: List[str] = []  # the flags this frame is kept by, counted once it is kept
        if area.shape == "none":
            kept_by.append("no scan area found: kept whole")
        elif frame_fill(frames[t], mask) < policy.min_frame_fill:
            if not policy.keep_frames_without_scan_area or annotation == "YES":
                tally.frames_dropped["frame does not fill the scan area (report page, blank or text frame)"] += 1
                continue
            kept_by.append("frame does not fill the scan area: kept, masked")
        hidden = area.overlay
        if area.shape != "none":
            hidden = _check_text(conv, frames, chroma, t, area, meta["source_id"], kept_by)
            if hidden is None:
                continue
        tally.frames_kept_by_flag.update(kept_by)
        tally.masked_pixels += int((frames[t][~mask | hidden] >= 0.5).sum())
        tally.total_pixels += H * W
        img = np.rint(frames[t, y0:y1, x0:x1]).astype(np.uint8)
        img[~(mask_c & ~hidden[y0:y1, x0:x1])] = 0
        img = resize(img, conv.out_size)
        img[mask_u8 == 0] = 0
        rows.append({**meta, "image": encode_png(img), "scan_area": mask_cell, "frame": t, "height": img.shape[0], "width": img.shape[1]})
    return rows


def _convert_file(conv: _Conversion, path: Path) -> Optional[Tuple[str, List[Dict[str, Any]]]]:
    """One file -> (its split key, its rows), or None when it is skipped or every frame of it is dropped."""
    # 1. read and decode (skips what is not a decodable ultrasound file, or marked burned-in)
    read = _read_file(conv, path)
    if read is None:
        return None
    ds, annotation, frames, chroma = read
    T, H, W = frames.shape
    keep = list(range(0, T, int(conv.frame_step)))
    if conv.max_frames is not None:
        keep = keep[: int(conv.max_frames)]
    # 2. the scan area (within the tissue regions of the Sequence of Ultrasound Regions, when given)
    region_box, delta_x, delta_y = ultrasound_region(ds, H, W)
    area = _scan_area(conv, path, frames, chroma, region_box, annotation, len(keep))
    if area is None:
        return None
    # 3. the allow-listed metadata and the pseudonym every row of the file shares
    meta = technical_metadata(ds)
    uid = str(ds.get("SOPInstanceUID", "") or "") or f"file:{path.resolve()}"
    meta.update(
        source_id=_pseudonym(conv.key, uid), num_frames=T, scan_area_shape=area.shape, physical_delta_x_cm=delta_x,
        physical_delta_y_cm=delta_y, source_height=H, source_width=W, crop_x0=int(area.box[2]), crop_y0=int(area.box[0]),
    )
    # 4. the frames: fill and text checks, masking, encoding
    rows = _frame_rows(conv, frames, chroma, keep, area, annotation, meta)
    dropped_here = len(keep) - len(rows)
    if dropped_here:
        _warn(f"{path}: dropped {dropped_here} of {len(keep)} frame(s) that do not fill the scan area (possible report pages or text "
              "frames) or hold burned-in text inside it (see the report's text_inside_scan_area)")
    if not rows:
        conv.tally.files_dropped["every frame dropped (not filling the scan area, or burned-in text inside it)"] += 1
        return None
    conv.tally.shapes[area.shape] += 1
    conv.tally.vendors["canonical vendor name" if meta["manufacturer"] else "not in the vendor allow-list"] += 1
    return _split_key(ds, path), rows


def _build_report(conv: _Conversion, n_files: int, per_file: List[Tuple[str, List[Dict[str, Any]]]]) -> Dict[str, Any]:
    """The de-identification report (counts only: no file names, which can hold identifiers)."""
    tally = conv.tally
    text_counts = tally.text_counts
    return {
        "files_seen": n_files,
        "files_converted": len(per_file),
        "files_dropped": dict(sorted({**conv.failures.counts(), **tally.files_dropped}.items())),
        "frames_kept": sum(len(r) for _, r in per_file),
        "frames_dropped": dict(sorted(tally.frames_dropped.items())),
        "frames_dropped_total": int(sum(tally.frames_dropped.values())),
        "frames_kept_by_flag": dict(sorted(tally.frames_kept_by_flag.items())),
        "burned_in_annotation_tag": dict(sorted(tally.burned_in.items())),
        "scan_area_shapes": dict(sorted(tally.shapes.items())),
        "files_with_content_masked_inside_hull": tally.masked_inside_hull,
        "files_with_static_marks_masked_inside_scan_area": tally.overlay_files,
        "static_mark_pixels_masked_inside_scan_area": tally.overlay_pixels,
        "text_inside_scan_area": {
            "frames_checked": int(text_counts["clean"] + text_counts["text"] + text_counts["uncertain"]),
            "clean": int(text_counts["clean"]), "text": int(text_counts["text"]), "uncertain": int(text_counts["uncertain"]),
            "actions": {k: int(v) for k, v in sorted(text_counts.items()) if ":" in k},
            "marks": int(text_counts["marks"]), "mark_pixels": int(text_counts["pixels"]), "cues": dict(sorted(tally.text_cues.items())),
            "frames": tally.text_frames,
        },
        "pixels_masked_outside_scan_area_fraction": (tally.masked_pixels / tally.total_pixels) if tally.total_pixels else 0.0,
        "manufacturer": dict(tally.vendors),
        "copied_tags": list(COPIED_TAGS),
        "read_but_never_copied": list(READ_NOT_COPIED),
        "source_id": "HMAC-SHA256 of the SOP Instance UID with a random key drawn for this conversion and not stored",
        "options": conv.policy.report_options(),
    }


def _dataset_dict(per_file: List[Tuple[str, List[Dict[str, Any]]]], fractions: Sequence[float], seed: int, report: Dict[str, Any]):
    """Rows of every file -> ``datasets.DatasetDict``, split per patient, the report in every split's description."""
    keys = sorted({k for k, _ in per_file})
    splits = assign_splits(keys, fractions, seed)
    all_rows = [{**row, "split": splits[k]} for k, rows in per_file for row in rows]
    dd = make_dataset_dict(all_rows, dicom_features())
    description = "De-identified ultrasound frames (ultrasound-diffusers prepare dicom). De-identification report: " + json.dumps(report, sort_keys=True)
    for split in dd.values():
        split.info.description = description
    return dd


def convert_dicom(
    input_dir,
    size=None,
    crop: bool = True,
    max_frames: Optional[int] = None,
    frame_step: int = 1,
    *,
    fractions: Sequence[float] = (1.0, 0.0, 0.0),
    seed: int = 0,
    progress: bool = False,
    policy: Optional[DeidentificationPolicy] = None,
    return_report: bool = False,
    **policy_fields,
):
    """Convert a folder of ultrasound DICOM files into a de-identified ``datasets.DatasetDict``.

    Args:
        input_dir: folder (searched recursively; files of any name) or a single file.
        size: None or int / (height, width) to resize the (cropped) frames.
        crop: crop every frame to the bounding box of its file's scan area.
        max_frames: at most this many frames per file (after ``frame_step``).
        frame_step: keep every n-th frame of a cine.
        fractions: (train, validation, test) fractions of the patients.
        seed: seed of the split of the patients.
        progress: show a progress bar over the files.
        policy: :class:`DeidentificationPolicy` (default: every field at its fail-closed default).
        return_report: also return the de-identification report (a dict of counts).
        **policy_fields: fields of :class:`DeidentificationPolicy` (``require_ultrasound``, ``strict``,
            ``keep_frames_without_scan_area``, ``accept_burned_in_annotation``, ``min_frame_fill``,
            ``keep_uncertain_frames``, ``mask_text_inside_scan_area``, ``learned_text_detector``), replacing those of
            ``policy``. Any other
            name is a TypeError.

    Returns:
        ``datasets.DatasetDict`` with ``image`` (grayscale, zero outside the scan area), ``scan_area``
        (uint8 mask: 1 inside) and technical metadata; with ``return_report`` a tuple (DatasetDict, report).
    """
    # 1. check inputs (a keyword that is no policy field first, as Python names an unexpected keyword)
    _check_policy_names(policy_fields, "convert_dicom")
    pydicom = import_optional("pydicom", "convert_dicom")
    InvalidDicomError = import_optional("pydicom.errors", "convert_dicom").InvalidDicomError
    from tqdm.auto import tqdm

    if int(frame_step) < 1:
        raise ValueError(f"`frame_step` must be at least 1, got {frame_step}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"`max_frames` must be None or at least 1, got {max_frames}")
    policy = DeidentificationPolicy.build(policy, policy_fields)
    out_size = parse_size(size)
    files = find_files(input_dir, ("",))
    if not files:
        raise ValueError(f"no files found under {input_dir}")

    # 2. the state of this conversion: a fresh pseudonym key (never stored, never reused), skipped files, counts
    conv = _Conversion(pydicom=pydicom, invalid_dicom_error=InvalidDicomError, policy=policy, crop=crop, out_size=out_size,
                       frame_step=frame_step, max_frames=max_frames, key=secrets.token_bytes(32), failures=FailureLog(policy.strict))
    if policy.learned_text_detector:
        from ..models.text_ink_detector import load_text_detector

        conv.text_detector = load_text_detector()

    # 3. every file: read and decode, find the scan area, check and encode its frames
    per_file: List[Tuple[str, List[Dict[str, Any]]]] = []
    for path in tqdm(files, desc="DICOM files", disable=not progress):
        converted = _convert_file(conv, path)
        if converted is not None:
            per_file.append(converted)

    # 4. the de-identification report; nothing kept is an error that says why
    report = _build_report(conv, len(files), per_file)
    if not per_file:
        dropped = "; ".join(f"{n} x {r}" for r, n in report["files_dropped"].items())
        raise ValueError(f"no usable ultrasound DICOM files under {input_dir}: all {len(files)} file(s) were dropped ({dropped})")

    # 5. split per patient and build the DatasetDict (the report in every split's description)
    dd = _dataset_dict(per_file, fractions, seed, report)
    return (dd, report) if return_report else dd
