"""Realism of B-mode images, measured against real ultrasound scans.

Small pure functions measure, on a set of images (float in [0, 1], shape [N, H, W] or [H, W], rows = depth)
with an optional scan-area mask (bool, same shape; True inside the fan / scan area):

- :func:`grey_level_stats`: mean, median, fraction of pixels above 0.8 and the skew of the grey-level
  histogram, over the scan area;
- :func:`homogeneous_windows` and :func:`homogeneous_std`: square windows inside the scan area where the
  image is tissue without structure (window mean between ``dark`` and ``bright``, and its nine sub-block
  means agree within ``max_heterogeneity`` of the window mean); the grey std inside them;
- :func:`speckle_grain`: the axial (along rows) and lateral (along columns) full width at half maximum of
  the speckle autocorrelation in those windows, divided by the depth extent of the scan area (rows from the
  first to the last masked row), so it is comparable across image sizes;
- :func:`depth_profile` and :func:`far_field_falloff`: mean grey level of the scan area in equal depth bins,
  and the mean of the last 10 % of depth divided by the profile's maximum (1 when the deepest tissue is the
  brightest; real scans fall off);
- :func:`realism_report` collects them into a flat dict of floats; :func:`compare_to_reference` checks such
  a dict against ranges such as :data:`REAL_SCAN_RANGES`.

The reference ranges were measured with these functions on real scans shipped in ``pydicom-data``
(:data:`REAL_SCANS` gives each file's scan area; :func:`load_real_scan` reads one, which needs ``pydicom``
and ``pydicom-data``). Each scan is measured at its native resolution and resampled (area average) so its
depth extent is 64 or 128 pixels, because grain and window std depend on the pixel size: compare a 64 px
image set with ``REAL_SCAN_RANGES[64]``.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

METRICS = (
    "grey_mean",
    "grey_median",
    "frac_above_0p8",
    "grey_skew",
    "homogeneous_std",
    "grain_axial_rel_depth",
    "grain_lateral_rel_depth",
    "far_field_falloff",
    "far_field_ratio",
)


def _as_batch(images, masks=None) -> Tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"`images` must have shape [H, W] or [N, H, W], got {x.shape}")
    if x.size == 0:
        raise ValueError("`images` is empty")
    if masks is None:
        m = np.ones(x.shape, dtype=bool)
    else:
        m = np.asarray(masks).astype(bool)
        if m.ndim == 2 and m.shape == x.shape[1:]:
            m = np.broadcast_to(m[None], x.shape)
        if m.shape != x.shape:
            raise ValueError(f"`masks` must have shape {x.shape[1:]} or {x.shape}, got {m.shape}")
    return x, m


def grey_level_stats(images, masks=None) -> Dict[str, float]:
    """Grey-level distribution over the scan area (all images pooled): mean, median, fraction > 0.8, skew."""
    x, m = _as_batch(images, masks)
    v = x[m]
    if v.size < 3:
        raise ValueError("`masks` selects fewer than 3 pixels")
    mu, sd = float(v.mean()), float(v.std())
    skew = float(((v - mu) ** 3).mean() / sd**3) if sd > 0 else 0.0
    return {"grey_mean": mu, "grey_median": float(np.median(v)), "frac_above_0p8": float((v > 0.8).mean()), "grey_skew": skew}


def depth_extent(mask: np.ndarray) -> int:
    """Rows from the first to the last row that contain scan area (inclusive)."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def default_window(mask: np.ndarray) -> int:
    """Window side: 8 % of the depth extent, at least 8 pixels."""
    return max(8, int(round(0.08 * depth_extent(mask))))


def homogeneous_windows(image, mask=None, window: Optional[int] = None, dark: float = 0.08, bright: float = 0.6, max_heterogeneity: float = 0.35, edge_margin: int = 2) -> List[Tuple[int, int, int]]:
    """Homogeneous tissue windows of one image: list of ``(row, col, side)`` (top-left corner, side).

    Windows tile the image on a grid with half-window steps; a window qualifies when it lies entirely in
    the scan area, its mean lies in ``(dark, bright)`` (tissue, not fluid or a specular reflector) and its
    nine sub-block means (3 x 3) differ from the window mean by less than ``max_heterogeneity`` times that mean.
    Windows also keep ``edge_margin`` pixels away from the edge of the scan area.
    """
    x, m = _as_batch(image, mask)
    img, msk = x[0], m[0]
    s = int(window) if window is not None else default_window(msk)
    if s < 4:
        raise ValueError(f"`window` must be at least 4 pixels, got {s}")
    H, W = img.shape
    h = s // 2
    if edge_margin > 0:  # keep windows off the scan-area edge (the fan's roll-off is not speckle)
        import scipy.ndimage

        msk = scipy.ndimage.binary_erosion(msk, iterations=int(edge_margin), border_value=0)
    out = []
    for r in range(0, H - s + 1, max(1, h)):
        for c in range(0, W - s + 1, max(1, h)):
            if not msk[r : r + s, c : c + s].all():
                continue
            win = img[r : r + s, c : c + s]
            mu = win.mean()
            if not dark < mu < bright:
                continue
            e = np.linspace(0, s, 4).round().astype(int)
            q = np.array([win[e[i] : e[i + 1], e[j] : e[j + 1]].mean() for i in range(3) for j in range(3)])
            if np.abs(q - mu).max() < max_heterogeneity * mu:
                out.append((r, c, s))
    return out


def _windows_all(x: np.ndarray, m: np.ndarray, window: Optional[int]):
    for img, msk in zip(x, m):
        for (r, c, s) in homogeneous_windows(img, msk, window):
            yield img, msk, img[r : r + s, c : c + s]


def homogeneous_std(images, masks=None, window: Optional[int] = None) -> float:
    """Median over homogeneous windows of the grey-level std inside each window (NaN if none qualifies)."""
    x, m = _as_batch(images, masks)
    stds = [float(w.std()) for _, _, w in _windows_all(x, m, window)]
    return float(np.median(stds)) if stds else float("nan")


def _fwhm(profile: np.ndarray) -> float:
    """Full width at half maximum (pixels) of a symmetric autocorrelation from its non-negative lags."""
    p = profile / profile[0]
    below = np.flatnonzero(p < 0.5)
    if below.size == 0:
        return float(2 * (len(p) - 1))
    k = int(below[0])
    # linear interpolation between lag k - 1 (>= 0.5) and lag k (< 0.5)
    half = (k - 1) + (p[k - 1] - 0.5) / (p[k - 1] - p[k])
    return float(2.0 * half)


def autocorrelation_fwhm(window) -> Tuple[float, float]:
    """Axial (along rows) and lateral (along columns) FWHM in pixels of a window's autocorrelation
    (best-fitting plane removed, so a slow depth or lateral trend does not count as grain; zero-padded FFT,
    each lag normalised by the overlap)."""
    w = np.asarray(window, dtype=np.float64)
    if w.ndim != 2 or min(w.shape) < 4:
        raise ValueError(f"`window` must be 2-D and at least 4 x 4, got {w.shape}")
    H, W = w.shape
    yy, xx = np.mgrid[0:H, 0:W]
    A = np.stack([np.ones(H * W), yy.ravel() - (H - 1) / 2.0, xx.ravel() - (W - 1) / 2.0], 1)
    coef, *_ = np.linalg.lstsq(A, w.ravel(), rcond=None)
    w = w - (A @ coef).reshape(H, W)
    F = np.fft.rfft2(w, s=(2 * H, 2 * W))
    ac = np.fft.irfft2(np.abs(F) ** 2, s=(2 * H, 2 * W))
    n_ax = H - np.arange(H // 2)
    n_lat = W - np.arange(W // 2)
    ax = ac[: H // 2, 0] / (n_ax * W)
    lat = ac[0, : W // 2] / (n_lat * H)
    if ac[0, 0] <= 0:
        return float("nan"), float("nan")
    return _fwhm(ax), _fwhm(lat)


def speckle_grain(images, masks=None, window: Optional[int] = None) -> Tuple[float, float]:
    """Median axial and lateral autocorrelation FWHM over homogeneous windows, each divided by the depth
    extent (pixels) of its image's scan area: fractions of the imaged depth (NaN if no window qualifies)."""
    x, m = _as_batch(images, masks)
    ax, lat = [], []
    for img, msk, w in _windows_all(x, m, window):
        d = depth_extent(msk)
        a, l = autocorrelation_fwhm(w)
        if math.isfinite(a):
            ax.append(a / d)
            lat.append(l / d)
    if not ax:
        return float("nan"), float("nan")
    return float(np.median(ax)), float(np.median(lat))


def depth_profile(images, masks=None, num_bins: int = 20) -> np.ndarray:
    """Mean grey level of the scan area in ``num_bins`` equal depth bins from the first to the last masked
    row, averaged over images: float64 [num_bins] (NaN for an empty bin)."""
    x, m = _as_batch(images, masks)
    if int(num_bins) < 2:
        raise ValueError(f"`num_bins` must be >= 2, got {num_bins}")
    sums = np.zeros(num_bins)
    counts = np.zeros(num_bins)
    for img, msk in zip(x, m):
        rows = np.flatnonzero(msk.any(axis=1))
        if rows.size == 0:
            continue
        r0, r1 = rows[0], rows[-1] + 1
        edges = np.linspace(r0, r1, num_bins + 1)
        for b in range(num_bins):
            a, e = int(round(edges[b])), max(int(round(edges[b + 1])), int(round(edges[b])) + 1)
            sel = msk[a:e]
            sums[b] += img[a:e][sel].sum()
            counts[b] += sel.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def far_field_falloff(images, masks=None) -> float:
    """Mean grey level of the deepest 10 % of the scan area divided by the maximum of the 20-bin depth
    profile (below 1 when the far field fades, 1 when the deepest bins are the brightest)."""
    p = depth_profile(images, masks, num_bins=20)
    return float(np.nanmean(p[-2:]) / np.nanmax(p))


def normalised_depth(mask: np.ndarray) -> np.ndarray:
    """Depth of every pixel in [0, 1] inside a scan area (NaN outside): for a sector (the first scan-area row is
    under a quarter as wide as the widest) the distance from the apex (centre of the first row) over the largest
    distance inside the area, as sound travels; for a rectangular area the row, from the first to the last
    scan-area row. float64 [H, W]."""
    msk = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(msk.any(axis=1))
    out = np.full(msk.shape, np.nan)
    if rows.size == 0:
        return out
    widths = msk.sum(axis=1)
    r0 = rows[0]
    yy, xx = np.mgrid[: msk.shape[0], : msk.shape[1]].astype(np.float64)
    if widths[r0] < 0.25 * widths.max():
        c0 = float(np.flatnonzero(msk[r0]).mean())
        dist = np.hypot(yy - r0, xx - c0)
    else:
        dist = yy - r0
    far = dist[msk].max()
    out[msk] = dist[msk] / far if far > 0 else 0.0
    return out


def tissue_mask(image, mask=None, dark: float = 0.05, window: int = 5) -> np.ndarray:
    """Tissue pixels of one image: inside the scan area, where the local mean over ``window`` x ``window`` pixels
    exceeds ``dark`` (blood pools, fluid and shadows are below it; real scans and phantoms alike). bool [H, W]."""
    x, m = _as_batch(image, mask)
    return m[0] & (_box_mean(x[0], int(window)) > dark)


def far_field_ratio(images, masks=None, tissue=None, deep: Tuple[float, float] = (0.9, 1.0),
                    mid: Tuple[float, float] = (0.6, 0.8)) -> float:
    """Tissue-only far-field ratio: the mean grey level of tissue at normalised depth ``deep`` (the deepest 10 %,
    :func:`normalised_depth`, radial in a sector) over that of tissue at ``mid`` (60-80 % of the depth), pooled
    over images. Real scans fade there (below 1); a profile that rises towards the bottom scores above 1, which
    :func:`far_field_falloff` (deepest bin over the near-field maximum) cannot see.

    Args:
        images, masks: as for :func:`depth_profile`.
        tissue: optional tissue masks (bool, like ``masks``, e.g. from label maps); default :func:`tissue_mask`.
    """
    x, m = _as_batch(images, masks)
    t = None if tissue is None else _as_batch(x, tissue)[1]
    sums = np.zeros(2)
    counts = np.zeros(2)
    for i, (img, msk) in enumerate(zip(x, m)):
        depth = normalised_depth(msk)
        keep = (tissue_mask(img, msk) if t is None else (t[i] & msk))
        for j, (lo, hi) in enumerate((deep, mid)):
            sel = keep & (depth >= lo) & (depth <= hi)
            sums[j] += img[sel].sum()
            counts[j] += sel.sum()
    if counts.min() == 0 or sums[1] <= 0:
        return float("nan")
    return float((sums[0] / counts[0]) / (sums[1] / counts[1]))


def realism_report(images, masks=None, window: Optional[int] = None) -> Dict[str, float]:
    """All realism statistics of an image set as a flat dict (keys :data:`METRICS`, plus the depth profile
    as ``depth_profile`` (list of 20 floats))."""
    x, m = _as_batch(images, masks)
    out = grey_level_stats(x, m)
    out["homogeneous_std"] = homogeneous_std(x, m, window)
    out["grain_axial_rel_depth"], out["grain_lateral_rel_depth"] = speckle_grain(x, m, window)
    out["far_field_falloff"] = far_field_falloff(x, m)
    out["far_field_ratio"] = far_field_ratio(x, m)
    out["depth_profile"] = [float(v) for v in depth_profile(x, m)]
    return out


def compare_to_reference(stats: Mapping[str, float], reference_ranges: Mapping[str, Tuple[float, float]], tolerance: float = 0.0) -> Dict[str, Dict[str, object]]:
    """For each metric in ``reference_ranges``: ``{"value", "low", "high", "inside"}``; a range is widened by
    ``tolerance`` times its width on both sides. Missing or NaN statistics count as outside."""
    out = {}
    for key, (lo, hi) in reference_ranges.items():
        v = stats.get(key, float("nan"))
        pad = tolerance * (hi - lo)
        ok = v is not None and math.isfinite(float(v)) and lo - pad <= float(v) <= hi + pad
        out[key] = {"value": None if v is None else float(v), "low": float(lo), "high": float(hi), "inside": bool(ok)}
    return out


# --------------------------------------------------------------------------------------------------
# Real scans (pydicom-data)
# --------------------------------------------------------------------------------------------------

#: Real B-mode scans of pydicom-data and their scan area: ``box`` (row0, row1, col0, col1) in pixels.
REAL_SCANS: Dict[str, Dict[str, object]] = {
    "gdcm-US-ALOKA-16.dcm": {"description": "curvilinear, pelvis, 15 cm (left panel)", "box": (24, 416, 64, 336)},
    "US1_UNCR.dcm": {"description": "linear, lymph node with colour Doppler (colour pixels excluded)", "box": (112, 336, 16, 624)},
    "color-pl.dcm": {"description": "transoesophageal echo sector", "box": (0, 120, 0, 256)},
}


def _box_mean(a: np.ndarray, k: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(a.astype(np.float64), size=k, mode="nearest")


def load_real_scan(name: str, path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Grey image float64 [H, W] in [0, 1] and its scan-area mask of one :data:`REAL_SCANS` file (cropped
    to its box). Needs ``pydicom`` and ``pydicom-data`` (or ``path``)."""
    if name not in REAL_SCANS:
        raise ValueError(f"`name` must be one of {sorted(REAL_SCANS)}, got {name!r}")
    import pydicom
    from pydicom.pixels import apply_color_lut

    if path is None:
        import pydicom.data

        path = pydicom.data.get_testdata_file(name)
        if path is None:
            raise FileNotFoundError(f"{name} not found; install pydicom-data")
    ds = pydicom.dcmread(path)
    a = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        a = apply_color_lut(a, ds)
    a = np.asarray(a, dtype=np.float64)
    full = 65535.0 if a.max() > 255 else 255.0
    colour = (a.max(-1) - a.min(-1)) > 0.06 * full if a.ndim == 3 else np.zeros(a.shape, bool)
    grey = (a.mean(-1) if a.ndim == 3 else a) / full
    r0, r1, c0, c1 = REAL_SCANS[name]["box"]
    g, col = grey[r0:r1, c0:c1], colour[r0:r1, c0:c1]
    if name == "gdcm-US-ALOKA-16.dcm":
        # above the probe's arc the panel is black: the scan area starts at each column's first echo
        seen = np.maximum.accumulate(_box_mean(g, 5) > 0.01, axis=0)
        mask = seen
    elif name == "color-pl.dcm":
        mask = _box_mean(np.abs(g * 255.0 - 40.0) > 0.5, 7) > 0.6  # the background outside the sector is 40
    else:
        mask = np.ones(g.shape, bool)
    mask &= ~(_box_mean(col, 3) > 0) & (g < 0.98)
    return g, mask


def resample_to_depth(image: np.ndarray, mask: np.ndarray, depth_px: int) -> Tuple[np.ndarray, np.ndarray]:
    """Area-average resampling so the scan area's depth extent becomes ``depth_px`` rows (aspect kept)."""
    from PIL import Image

    d = depth_extent(mask)
    scale = depth_px / d
    H, W = image.shape
    size = (max(4, int(round(W * scale))), max(4, int(round(H * scale))))
    im = np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize(size, Image.BOX), dtype=np.float64)
    mk = np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize(size, Image.BOX)) > 0.999
    return im, mk


def measure_real_scans(resolutions: Sequence[Optional[int]] = (None, 64, 128)) -> Dict[str, Dict[object, Dict[str, float]]]:
    """``{file: {resolution: realism_report}}`` for the :data:`REAL_SCANS` (None: native resolution)."""
    out: Dict[str, Dict[object, Dict[str, float]]] = {}
    for name in REAL_SCANS:
        g, m = load_real_scan(name)
        out[name] = {}
        for res in resolutions:
            im, mk = (g, m) if res is None else resample_to_depth(g, m, res)
            rep = realism_report(im, mk)
            rep.pop("depth_profile")
            out[name][res] = rep
    return out


#: :func:`realism_report` of each real scan (measured with :func:`measure_real_scans`, pydicom-data 1.0.0)
#: at its native resolution (key None) and resampled to a depth extent of 64 and 128 pixels (color-pl.dcm has
#: 120 rows, so its "128" is a slight upsampling; at 64 px it has no homogeneous window: NaN).
REAL_SCAN_STATS: Dict[str, Dict[Optional[int], Dict[str, float]]] = {
    "gdcm-US-ALOKA-16.dcm": {
        None: dict(grey_mean=0.1030, grey_median=0.0706, frac_above_0p8=0.0, grey_skew=1.7609, homogeneous_std=0.0497, grain_axial_rel_depth=0.0069, grain_lateral_rel_depth=0.0177, far_field_falloff=0.5414, far_field_ratio=0.3812),
        64: dict(grey_mean=0.1037, grey_median=0.0785, frac_above_0p8=0.0, grey_skew=1.1054, homogeneous_std=0.0374, grain_axial_rel_depth=0.0214, grain_lateral_rel_depth=0.0348, far_field_falloff=0.5311, far_field_ratio=0.7444),
        128: dict(grey_mean=0.1033, grey_median=0.0749, frac_above_0p8=0.0, grey_skew=1.2540, homogeneous_std=0.0401, grain_axial_rel_depth=0.0110, grain_lateral_rel_depth=0.0211, far_field_falloff=0.5386, far_field_ratio=0.5434),
    },
    "US1_UNCR.dcm": {
        None: dict(grey_mean=0.2063, grey_median=0.1922, frac_above_0p8=0.0001, grey_skew=0.7624, homogeneous_std=0.0610, grain_axial_rel_depth=0.0103, grain_lateral_rel_depth=0.0203, far_field_falloff=0.6483, far_field_ratio=0.9014),
        64: dict(grey_mean=0.2070, grey_median=0.1944, frac_above_0p8=0.0, grey_skew=0.5517, homogeneous_std=0.0432, grain_axial_rel_depth=0.0151, grain_lateral_rel_depth=0.0218, far_field_falloff=0.6540, far_field_ratio=0.8886),
        128: dict(grey_mean=0.2075, grey_median=0.1922, frac_above_0p8=0.0, grey_skew=0.7251, homogeneous_std=0.0545, grain_axial_rel_depth=0.0103, grain_lateral_rel_depth=0.0221, far_field_falloff=0.6462, far_field_ratio=0.892),
    },
    "color-pl.dcm": {
        None: dict(grey_mean=0.1559, grey_median=0.0941, frac_above_0p8=0.0004, grey_skew=1.8264, homogeneous_std=0.0453, grain_axial_rel_depth=0.0099, grain_lateral_rel_depth=0.0440, far_field_falloff=0.3449, far_field_ratio=0.689),
        64: dict(grey_mean=0.1544, grey_median=0.0967, frac_above_0p8=0.0003, grey_skew=1.8107, homogeneous_std=float("nan"), grain_axial_rel_depth=float("nan"), grain_lateral_rel_depth=float("nan"), far_field_falloff=0.3486, far_field_ratio=0.6728),
        128: dict(grey_mean=0.1565, grey_median=0.0941, frac_above_0p8=0.0005, grey_skew=1.8465, homogeneous_std=0.0417, grain_axial_rel_depth=0.0086, grain_lateral_rel_depth=0.0396, far_field_falloff=0.3374, far_field_ratio=0.6953),
    },
}


def reference_ranges(stats: Mapping[str, Mapping[Optional[int], Mapping[str, float]]] = None, resolution: Optional[int] = 128, margin: float = 0.1) -> Dict[str, Tuple[float, float]]:
    """``{metric: (low, high)}``: the smallest and largest value over the scans of ``stats`` (default
    :data:`REAL_SCAN_STATS`) at ``resolution`` (None, 64 or 128), NaN skipped, widened by ``margin`` of the
    values (low * (1 - margin), high * (1 + margin)) for the few windows a single scan offers."""
    stats = REAL_SCAN_STATS if stats is None else stats
    out = {}
    for key in METRICS:
        vals = [float(s[resolution][key]) for s in stats.values() if resolution in s and math.isfinite(float(s[resolution][key]))]
        if not vals:
            raise ValueError(f"no real-scan value of {key!r} at resolution {resolution!r}")
        out[key] = (min(vals) * (1.0 - margin), max(vals) * (1.0 + margin))
    return out


#: Real-scan ranges per resolution (None: native), from :data:`REAL_SCAN_STATS` with a 10 % margin.
REAL_SCAN_RANGES: Dict[Optional[int], Dict[str, Tuple[float, float]]] = {res: reference_ranges(resolution=res) for res in (None, 64, 128)}
