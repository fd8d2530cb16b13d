"""Ultrasound-specific checks of generated images.

* **Depth-intensity profile**: the mean intensity per normalised depth bin inside the fan, per set. Real images
  are time-gain compensated and log-compressed, so generated profiles are compared with the real profile (mean
  absolute and maximum difference, and the slope of a straight-line fit), not with an exponential decay.
* **Speckle statistics**: in homogeneous regions fully developed speckle has a Rayleigh envelope with
  mean/std = sqrt(pi / (4 - pi)) = 1.91, and after log compression the standard deviation of
  ``20 log10(envelope)`` is about 5.57 dB whatever the mean. Statistics are taken on non-overlapping windows that
  lie inside the fan (and inside one labelled class), are not black, and have no edge (their four quadrant means
  agree within ``max_quadrant_ratio``).
* **Per-class statistics** (with label maps): intensity distribution per class and the contrast between class
  pairs, e.g. LV cavity vs myocardium for the echo label coding 0 outside fan, 1 LV cavity, 2 tissue in the fan,
  3 myocardium, 4 left atrium.
* **Signal outside the fan**: mean intensity outside the fan and the share of the total intensity found there.

Images are float arrays ``[N, H, W]`` in [0, 1] throughout.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..geometry import FanGeometry  # the probe's home (also re-exported from here for earlier imports)

#: mean/std of a Rayleigh envelope (fully developed speckle).
RAYLEIGH_SNR = math.sqrt(math.pi / (4.0 - math.pi))
#: std (dB) of 20 log10 of a Rayleigh envelope: (20 / ln 10) * pi / sqrt(24).
LOG_RAYLEIGH_STD_DB = 20.0 / math.log(10.0) * math.pi / math.sqrt(24.0)

ECHO_CLASS_NAMES: Dict[int, str] = {
    0: "outside_fan",
    1: "lv_cavity",
    2: "tissue",
    3: "myocardium",
    4: "left_atrium",
}
#: (brighter, darker) class pairs whose contrast is reported for echo label maps.
ECHO_CONTRAST_PAIRS: Tuple[Tuple[str, str], ...] = (
    ("myocardium", "lv_cavity"),
    ("myocardium", "left_atrium"),
    ("tissue", "lv_cavity"),
)


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"`{name}` must be [N, H, W] with N >= 1, got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------------------------------------------
# Depth-intensity profile
# ----------------------------------------------------------------------------------------------------------------


def depth_intensity_profile(
    images: np.ndarray,
    geometry: Optional[FanGeometry] = None,
    num_bins: int = 32,
    depth: Optional[np.ndarray] = None,
    inside: Optional[np.ndarray] = None,
) -> Dict[str, np.ndarray]:
    """Mean intensity per normalised-depth bin inside the fan.

    Args:
        images: ``[N, H, W]`` in [0, 1].
        geometry: fan geometry (default: the CAMUS convex fan); ignored when ``depth`` is given.
        num_bins: number of equal-width depth bins over [0, 1].
        depth, inside: a precomputed depth map ``[H, W]`` in [0, 1] and fan mask ``[H, W]``.

    Returns:
        dict with ``bin_centers`` ``[B]``, ``mean`` ``[B]`` (mean over images of the per-image bin means),
        ``std`` ``[B]`` (spread across images), ``per_image`` ``[N, B]`` and ``counts`` ``[B]`` (pixels per bin).
        Bins without pixels hold NaN.
    """
    imgs = _check_images(images)
    if num_bins < 2:
        raise ValueError(f"`num_bins` must be at least 2, got {num_bins}")
    if depth is None:
        depth, inside = (geometry or FanGeometry()).depth_and_mask(*imgs.shape[1:])
    depth = np.asarray(depth, np.float64)
    inside = np.ones_like(depth, dtype=bool) if inside is None else np.asarray(inside, bool)
    if depth.shape != imgs.shape[1:] or inside.shape != imgs.shape[1:]:
        raise ValueError(f"`depth`/`inside` must be {imgs.shape[1:]}, got {depth.shape} and {inside.shape}")
    bins = np.clip((depth[inside] * num_bins).astype(np.int64), 0, num_bins - 1)
    counts = np.bincount(bins, minlength=num_bins).astype(np.float64)
    values = imgs[:, inside]  # [N, P] float32
    one_hot = np.zeros((bins.size, num_bins), dtype=np.float32)
    one_hot[np.arange(bins.size), bins] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_image = (values @ one_hot).astype(np.float64) / counts[None]
    per_image[:, counts == 0] = np.nan
    return {
        "bin_centers": (np.arange(num_bins) + 0.5) / num_bins,
        "mean": per_image.mean(axis=0),
        "std": per_image.std(axis=0),
        "per_image": per_image,
        "counts": counts,
    }


def profile_distance(profile_a: Mapping[str, np.ndarray], profile_b: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """Distances between two depth profiles over the bins both cover: mean |diff| (``l1``), max |diff|
    (``linf``) and root-mean-square (``rmse``), in intensity units ([0, 1] scale); ``mean_difference`` (b - a, the
    global offset) and ``shape_l1``, the mean |diff| once that offset is removed: how differently the two fade with
    depth, whatever their overall brightness (an over-bright image with the right fall-off has ``shape_l1`` 0)."""
    a, b = np.asarray(profile_a["mean"], np.float64), np.asarray(profile_b["mean"], np.float64)
    if a.shape != b.shape:
        raise ValueError(f"profiles must have the same number of bins, got {a.shape} and {b.shape}")
    valid = np.isfinite(a) & np.isfinite(b)
    if not valid.any():
        raise ValueError("the two profiles share no non-empty depth bin")
    diff = a[valid] - b[valid]
    return {
        "l1": float(np.abs(diff).mean()),
        "linf": float(np.abs(diff).max()),
        "rmse": float(np.sqrt((diff**2).mean())),
        "mean_difference": float((b[valid] - a[valid]).mean()),
        "shape_l1": float(np.abs(diff - diff.mean()).mean()),
    }


def profile_slope(profile: Mapping[str, np.ndarray]) -> float:
    """Slope of a least-squares line through the profile: intensity change per unit normalised depth."""
    x, y = np.asarray(profile["bin_centers"]), np.asarray(profile["mean"])
    valid = np.isfinite(y)
    if valid.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[valid], y[valid], 1)[0])


def plot_depth_profiles(profiles: Mapping[str, Mapping[str, np.ndarray]]):
    """Figure with one line (mean) and band (+- std across images) per named profile."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, prof in profiles.items():
        x, m, s = prof["bin_centers"], prof["mean"], prof["std"]
        ax.plot(x, m, label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.set_xlabel("normalised depth")
    ax.set_ylabel("mean intensity inside fan")
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Speckle
# ----------------------------------------------------------------------------------------------------------------


def _windows(array: np.ndarray, window: int) -> np.ndarray:
    """[N, H, W] -> [N, H//w, W//w, w, w] non-overlapping windows (cropped to multiples of w)."""
    n, h, w = array.shape
    hh, ww = h // window, w // window
    cropped = array[:, : hh * window, : ww * window]
    return cropped.reshape(n, hh, window, ww, window).transpose(0, 1, 3, 2, 4)


def speckle_statistics(
    images: np.ndarray,
    regions: Optional[np.ndarray] = None,
    window: int = 8,
    min_mean: float = 0.05,
    max_quadrant_ratio: float = 1.5,
    dynamic_range_db: Optional[float] = None,
) -> Dict[str, object]:
    """Speckle statistics in homogeneous windows.

    Args:
        images: ``[N, H, W]`` in [0, 1].
        regions: integer region map ``[H, W]`` or ``[N, H, W]``; a window counts only when all its pixels share
            one region id > 0 (use the label map, or the fan mask as 0/1). None: the whole image is one region.
        window: window side in pixels (even, >= 4).
        min_mean: skip windows darker than this (noise floor, cavities, outside the fan) on the [0, 1] scale.
        max_quadrant_ratio: skip windows whose largest quadrant mean exceeds the smallest by more than this
            factor (an edge runs through them).
        dynamic_range_db: when the images are log-compressed display values over this dynamic range
            (v = 1 + 20 log10(env / env_max) / DR), the envelope is recovered first and the dB spread is
            reported as well; None treats pixel values as the envelope.

    Returns:
        dict with ``num_windows``, ``snr_median``, ``snr_mean``, ``snr_iqr`` (mean/std per window; Rayleigh:
        1.91), ``db_std_median`` (only with ``dynamic_range_db``; Rayleigh: 5.57 dB) and ``snr_values``.
    """
    imgs = _check_images(images)
    if window < 4 or window % 2:
        raise ValueError(f"`window` must be an even integer >= 4, got {window}")
    if max_quadrant_ratio < 1.0:
        raise ValueError(f"`max_quadrant_ratio` must be >= 1, got {max_quadrant_ratio}")
    if regions is None:
        region_map = np.ones(imgs.shape, dtype=np.int64)
    else:
        region_map = np.asarray(regions).astype(np.int64)
        if region_map.shape == imgs.shape[1:]:
            region_map = np.broadcast_to(region_map, imgs.shape)
        if region_map.shape != imgs.shape:
            raise ValueError(
                f"`regions` must be [H, W] or [N, H, W] matching images {imgs.shape}, got {region_map.shape}"
            )
    if dynamic_range_db is not None:
        if dynamic_range_db <= 0:
            raise ValueError(f"`dynamic_range_db` must be positive, got {dynamic_range_db}")
        envelope = 10.0 ** ((imgs - 1.0) * float(dynamic_range_db) / 20.0)
        mean_ok = _windows(imgs, window).mean((-1, -2)) >= min_mean
    else:
        envelope = imgs
        mean_ok = None
    env_w = _windows(envelope, window)
    reg_w = _windows(region_map, window)
    same_region = (reg_w.min((-1, -2)) == reg_w.max((-1, -2))) & (reg_w[..., 0, 0] > 0)
    mean = env_w.mean((-1, -2))
    std = env_w.std((-1, -2), ddof=1)
    half = window // 2
    quads = np.stack(
        [
            env_w[..., :half, :half].mean((-1, -2)),
            env_w[..., :half, half:].mean((-1, -2)),
            env_w[..., half:, :half].mean((-1, -2)),
            env_w[..., half:, half:].mean((-1, -2)),
        ]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        flat = quads.max(0) <= max_quadrant_ratio * quads.min(0)
        keep = same_region & flat & (std > 0) & (mean_ok if mean_ok is not None else mean >= min_mean)
        snr = mean[keep] / std[keep]
    result: Dict[str, object] = {
        "num_windows": int(keep.sum()),
        "window": int(window),
        "reference_snr": RAYLEIGH_SNR,
        "snr_values": snr,
    }
    if snr.size:
        q1, q3 = np.percentile(snr, [25, 75])
        result.update(snr_median=float(np.median(snr)), snr_mean=float(snr.mean()), snr_iqr=float(q3 - q1))
    else:
        result.update(snr_median=None, snr_mean=None, snr_iqr=None)
    if dynamic_range_db is not None:
        db_w = _windows(imgs * float(dynamic_range_db), window)
        db_std = db_w.std((-1, -2), ddof=1)[keep]
        result["reference_db_std"] = LOG_RAYLEIGH_STD_DB
        result["db_std_median"] = float(np.median(db_std)) if db_std.size else None
    return result


def plot_speckle_histograms(stats: Mapping[str, Mapping[str, object]]):
    """Histogram figure of the per-window speckle SNR of each named set, with the Rayleigh value marked."""
    from ..visualization import density_histograms

    values = {name: np.asarray(s["snr_values"], dtype=np.float64) for name, s in stats.items()}
    top = max([float(np.percentile(v, 99)) for v in values.values() if v.size] + [RAYLEIGH_SNR * 2])
    series = [(f"{name} (median {np.median(v):.2f})" if v.size else name, v) for name, v in values.items()]
    return density_histograms(series, np.linspace(0.0, top, 40), "mean / std in homogeneous windows",
                              marker=RAYLEIGH_SNR, marker_label="Rayleigh 1.91")


# ----------------------------------------------------------------------------------------------------------------
# Per-class statistics and contrast
# ----------------------------------------------------------------------------------------------------------------


def class_intensity_statistics(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Optional[Mapping[int, str]] = None,
) -> Dict[str, Dict[str, float]]:
    """Intensity statistics of every class present in ``labels``.

    Args:
        images: ``[N, H, W]`` in [0, 1].
        labels: int ``[N, H, W]``.
        class_names: class index -> name (default :data:`ECHO_CLASS_NAMES`; unknown indices become ``class_<k>``).

    Returns:
        ``{name: {"class_index", "mean", "std", "median", "p05", "p95", "pixel_fraction"}}``.
    """
    imgs = _check_images(images)
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    if lab.shape != imgs.shape:
        raise ValueError(f"`labels` must match `images` {imgs.shape}, got {lab.shape}")
    names = dict(ECHO_CLASS_NAMES if class_names is None else class_names)
    out: Dict[str, Dict[str, float]] = {}
    for k in np.unique(lab):
        values = imgs[lab == k]
        name = names.get(int(k), f"class_{int(k)}")
        out[name] = {
            "class_index": int(k),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "median": float(np.median(values)),
            "p05": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95)),
            "pixel_fraction": float(values.size / lab.size),
        }
    return out


def class_contrasts(
    class_stats: Mapping[str, Mapping[str, float]],
    pairs: Sequence[Tuple[str, str]] = ECHO_CONTRAST_PAIRS,
) -> Dict[str, Dict[str, float]]:
    """Contrast between class pairs ``(a, b)`` present in ``class_stats``.

    Returns ``{"a_vs_b": {"difference": mean_a - mean_b, "ratio_db": 20 log10(mean_a / mean_b), "cnr":
    (mean_a - mean_b) / sqrt(std_a^2 + std_b^2)}}``; a positive value means ``a`` is brighter.
    """
    out: Dict[str, Dict[str, float]] = {}
    for a, b in pairs:
        if a not in class_stats or b not in class_stats:
            continue
        sa, sb = class_stats[a], class_stats[b]
        diff = float(sa["mean"]) - float(sb["mean"])
        noise = math.sqrt(float(sa["std"]) ** 2 + float(sb["std"]) ** 2)
        ratio = (
            20.0 * math.log10(float(sa["mean"]) / float(sb["mean"]))
            if float(sa["mean"]) > 0 and float(sb["mean"]) > 0
            else None
        )
        out[f"{a}_vs_{b}"] = {"difference": diff, "ratio_db": ratio, "cnr": diff / noise if noise > 0 else None}
    return out


def plot_class_histograms(
    sets: Mapping[str, Tuple[np.ndarray, np.ndarray]],
    class_names: Optional[Mapping[int, str]] = None,
    num_bins: int = 32,
):
    """One panel per class: intensity histograms of each named set ``{name: (images, labels)}``."""
    from matplotlib.figure import Figure

    names = dict(ECHO_CLASS_NAMES if class_names is None else class_names)
    classes = sorted(set().union(*[set(np.unique(lab).tolist()) for _, lab in sets.values()]))
    fig = Figure(figsize=(2.6 * max(1, len(classes)), 2.6), dpi=100)
    bins = np.linspace(0.0, 1.0, num_bins + 1)
    for i, k in enumerate(classes):
        ax = fig.add_subplot(1, len(classes), i + 1)
        for set_name, (imgs, lab) in sets.items():
            values = np.asarray(imgs)[np.asarray(lab) == k]
            if values.size:
                ax.hist(values, bins=bins, alpha=0.5, density=True, label=set_name)
        ax.set_title(names.get(int(k), f"class_{int(k)}"), fontsize=9)
        ax.set_xlabel("intensity", fontsize=8)
        ax.set_yticks([])
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Signal outside the fan
# ----------------------------------------------------------------------------------------------------------------


def outside_fan_signal(images: np.ndarray, inside: np.ndarray) -> Dict[str, Optional[float]]:
    """How much signal lies outside the fan.

    Args:
        images: ``[N, H, W]`` in [0, 1].
        inside: bool fan mask ``[H, W]`` or ``[N, H, W]`` (e.g. ``labels > 0``).

    Returns:
        ``mean_outside``, ``mean_inside``, ``p99_outside`` and ``energy_fraction_outside`` (sum of intensity
        outside / total sum).
    """
    imgs = _check_images(images)
    mask = np.asarray(inside, dtype=bool)
    if mask.shape == imgs.shape[1:]:
        mask = np.broadcast_to(mask, imgs.shape)
    if mask.shape != imgs.shape:
        raise ValueError(f"`inside` must be [H, W] or [N, H, W] matching images {imgs.shape}, got {mask.shape}")
    outside_values, inside_values = imgs[~mask], imgs[mask]
    total = float(imgs.sum())
    return {
        "mean_outside": float(outside_values.mean()) if outside_values.size else None,
        "mean_inside": float(inside_values.mean()) if inside_values.size else None,
        "p99_outside": float(np.percentile(outside_values, 99)) if outside_values.size else None,
        "energy_fraction_outside": float(outside_values.sum() / total) if total > 0 else 0.0,
    }
