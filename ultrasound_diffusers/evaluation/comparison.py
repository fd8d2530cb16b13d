"""Compare several generated image sets against one real set: ``evaluate --generated bmap=DIR plain=DIR``.

:func:`compare` runs every metric of :func:`~.report.evaluate` on each named generated set (the same code:
:func:`~.report._evaluate_metrics`), then measures the differences between sets with bootstrap confidence
intervals over images, and writes one report folder::

    out_dir/
      report.md              the tables below and the pictures
      metrics.json           every number (strict JSON): per-set reports, differences, intervals
      plots/depth_profiles.png   the depth-intensity profile of every set overlaid on the real one
      plots/label_grid.png       the same label maps across sets (label map, real, each set)
      plots/<set>/*.png          each set's own evaluate plots (speckle, classes, memorisation)

**Differences.** Every set is compared with a reference set (the first one, or ``reference_set``):
``difference = value(set) - value(reference)``. Its interval is a percentile bootstrap over images
(``confidence`` 95 % by default, ``num_bootstrap`` = :data:`DEFAULT_BOOTSTRAP` resamples, seeded): each
resample draws the real images and each generated set's images with replacement and recomputes the set-level
statistic (a mean, a median over speckle windows, a pooled class contrast, a distance between mean depth
profiles, FID, KID). Generated sets of equal size are resampled with the same indices (a paired bootstrap: the
usual ablation generates every set from the same label maps and seeds, image i of each set from the same map),
sets of different sizes independently. ``excludes_zero`` says whether the interval excludes 0. FID and KID use
``num_feature_bootstrap`` resamples (:data:`DEFAULT_FEATURE_BOOTSTRAP`), computed from Gram matrices of the
features; the bootstrap KID is the unbiased MMD^2 of the whole resampled sets (pairs of copies of one image
left out), so its point value can differ slightly from ``evaluate``'s subset-averaged KID. A bootstrap over
images holds the generator fixed: it measures sampling noise at this number of images, not the spread
between training runs.

**Training runs.** A set may be the images of several training runs of one recipe (other seeds):
``--generated bmap=seed0/ bmap=seed1/`` or ``{"bmap": TrainingRuns([...])}``. Its point values are those of
the pooled images; each resample draws the runs with replacement, then images within each drawn run (a
two-level bootstrap), so the intervals include the spread between runs (with two runs per set that spread is
itself poorly known: the interval is wide, as it should be).

**Depth bands.** Depth-sensitive metrics are also reported in the shallow, middle and deep thirds of the fan
(normalised depth from :class:`~.physics.FanGeometry`: [0, 1/3), [1/3, 2/3), [2/3, 1]): mean intensity,
depth-profile distance to the real profile (bins whose centre lies in the band), speckle mean/std (windows
entirely inside the band), class contrasts (pixels inside the band). The signal outside the fan is split by the
rows of the fan's depth extent in thirds.

**Paired** (``paired=True``): PSNR and SSIM (:mod:`.image_metrics`) of each generated image against the real
image with the same label map. Images are paired by index when the label maps agree index by index, otherwise
by identical label map (so several images per map, or another order, also pair); a generated image whose label
map matches no real one is an error.

LPIPS is not computed: it needs pretrained network weights that are not available offline.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.io import check_output_dir, replace_directory
from .io import ImageSet
from .options import EvaluationOptions
from .physics import (
    FanGeometry,
    depth_intensity_profile,
    plot_depth_profiles,
    speckle_statistics,
)

#: bootstrap resamples for per-image metrics.
DEFAULT_BOOTSTRAP = 1000
#: bootstrap resamples for FID and KID (an SVD per resample).
DEFAULT_FEATURE_BOOTSTRAP = 200
#: (name, low, high) of the depth bands, in normalised depth.
DEPTH_BANDS: Tuple[Tuple[str, float, float], ...] = (
    ("shallow", 0.0, 1.0 / 3.0),
    ("middle", 1.0 / 3.0, 2.0 / 3.0),
    ("deep", 2.0 / 3.0, 1.0),
)
LPIPS_NOTE = "LPIPS is not computed: it needs pretrained network weights (AlexNet/VGG) that are not available offline."
RESERVED_NAMES = ("real", "train")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# --------------------------------------------------------------------------------------------------------------
# Parsing --generated
# --------------------------------------------------------------------------------------------------------------


def parse_generated(specs: Union[str, Path, Sequence[Any], Mapping[str, Any]]) -> Tuple[bool, Dict[str, Any]]:
    """``--generated`` values -> ``(named, {name: source})``.

    Each value is ``NAME=SOURCE`` or a bare ``SOURCE``. A prefix before the first ``=`` counts as a name only when
    it is a plain name (letters, digits, ``_ . + -``; no ``/``), so paths such as ``runs/lr=1e-4`` stay paths.
    One bare source gives ``(False, {"generated": source})`` (the single-set report); names must not be
    ``real``/``train``, and either every value is named or there is exactly one bare one. A name given more than
    once collects the sets of one arm from several training runs (``bmap=seed0/ bmap=seed1/``): its source is a
    :class:`TrainingRuns` of the paths in order, and :func:`compare`'s intervals include the spread between runs.
    """
    if isinstance(specs, Mapping):
        items = list(specs.items())
        if not items:
            raise ValueError("`generated` is empty: give at least one generated set")
        out: Dict[str, Any] = {}
        for name, source in items:
            _check_name(str(name))
            out[str(name)] = source
        return True, out
    if isinstance(specs, (str, Path)) or not isinstance(specs, Sequence):
        specs = [specs]
    if len(specs) == 0:
        raise ValueError("`generated` is empty: give at least one generated set")
    named: List[Tuple[str, Any]] = []
    bare: List[Any] = []
    for spec in specs:
        if isinstance(spec, str) and "=" in spec:
            name, _, source = spec.partition("=")
            if _NAME.match(name) and "/" not in name:
                if not source:
                    raise ValueError(f"`--generated {spec}`: nothing after '='; use NAME=PATH")
                named.append((name, source))
                continue
        bare.append(spec)
    if named and bare:
        raise ValueError(
            f"`--generated`: name every set when comparing several (NAME=PATH), got unnamed {[str(b) for b in bare]}"
        )
    if len(bare) > 1:
        raise ValueError(
            f"`--generated` got {len(bare)} unnamed sets; name them to compare, e.g. --generated bmap=DIR plain=DIR"
        )
    if bare:
        return False, {"generated": bare[0]}
    grouped: Dict[str, List[Any]] = {}
    for name, source in named:
        _check_name(name)
        grouped.setdefault(name, []).append(source)
    return True, {name: sources[0] if len(sources) == 1 else TrainingRuns(sources) for name, sources in grouped.items()}


class TrainingRuns(tuple):
    """The generated sets of one arm from several training runs (the same recipe trained with other seeds), in
    order. :func:`compare` pools their images for the arm's point values and resamples runs, then images within each
    run, so that its intervals include the spread between training runs. A plain list or tuple of paths (or
    :class:`~.io.ImageSet`) given as one set's source means the same."""


def _as_runs(source: Any) -> List[Any]:
    """The sources of one generated set: one per training run (a single source is one run)."""
    if isinstance(source, TrainingRuns) or (
        isinstance(source, (list, tuple)) and len(source) > 0 and all(isinstance(x, (str, Path, ImageSet)) for x in source)
    ):
        return list(source)
    return [source]


def _runs_sentence(report: Mapping[str, Any]) -> str:
    """What the intervals hold fixed: the generators (one run per set) or nothing but the recipe (several)."""
    runs = report.get("runs") or {}
    several = {n: r["num_runs"] for n, r in runs.items() if r["num_runs"] > 1}
    if not several:
        return ("The intervals hold the generators fixed (sampling noise at this number of images), not the spread "
                "between training runs.")
    counts = ", ".join(f"`{n}` {k}" for n, k in several.items())
    return (f"The intervals include the spread between training runs (runs per set: {counts}); with few runs that "
            "spread is itself uncertain.")


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"generated set name {name!r} must be letters, digits, '_', '.', '+' or '-'")
    if name in RESERVED_NAMES:
        raise ValueError(f"generated set name {name!r} is reserved; choose another (not {', '.join(RESERVED_NAMES)})")


# --------------------------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------------------------


def bootstrap_interval(
    replicates: Sequence[float], confidence: float = 0.95, estimate: Optional[float] = None
) -> Tuple[Optional[float], Optional[float]]:
    """Bootstrap interval from replicates (NaN replicates ignored; ``(None, None)`` if none is finite).

    Without ``estimate``: the percentile interval. With the full-sample ``estimate``: the percentile interval
    shifted by the resampling bias ``median(replicates) - estimate``, i.e. the percentile interval of the
    bias-corrected replicates. For statistics that resampling leaves centred (means, medians, contrasts) this is
    the percentile interval; FID and KID see the duplicated images of a resample as a narrower distribution
    and rise, and the shift keeps their interval around their own value with the width the resampling measured.
    """
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return None, None
    alpha = (1.0 - float(confidence)) / 2.0
    low, high = np.percentile(r, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    if estimate is not None and math.isfinite(float(estimate)):
        shift = float(np.median(r)) - float(estimate)
        low, high = low - shift, high - shift
    return float(low), float(high)


def excludes_zero(low: Optional[float], high: Optional[float], scale: float = 0.0) -> Optional[bool]:
    """Whether ``[low, high]`` excludes 0 by more than float rounding (``1e-6 * scale``, scale >= 1e-6)."""
    if low is None or high is None:
        return None
    tol = 1e-6 * max(abs(float(scale)), 1e-6)
    return bool(low > tol or high < -tol)


class _FeatureGrams:
    """Gram matrices of two feature sets, so that FID and KID of any resample cost an index and an SVD."""

    def __init__(self, real: np.ndarray, generated: np.ndarray) -> None:
        x, y = np.asarray(real, np.float64), np.asarray(generated, np.float64)
        self.gxx, self.gyy, self.gxy = x @ x.T, y @ y.T, x @ y.T
        d = x.shape[1]
        self.kxx, self.kyy, self.kxy = ((g / d + 1.0) ** 3 for g in (self.gxx, self.gyy, self.gxy))

    def fid(self, r: np.ndarray, g: np.ndarray) -> float:
        """FID of real rows ``r`` vs generated rows ``g`` (covariances with ddof=1, as :mod:`.fid`)."""
        n1, n2 = len(r), len(g)
        a, b, c = self.gxx[np.ix_(r, r)], self.gyy[np.ix_(g, g)], self.gxy[np.ix_(r, g)]
        m11, m22, m12 = a.mean(), b.mean(), c.mean()
        tr1 = (np.trace(a) - n1 * m11) / (n1 - 1)
        tr2 = (np.trace(b) - n2 * m22) / (n2 - 1)
        cc = c - c.mean(1, keepdims=True) - c.mean(0, keepdims=True) + m12
        trace_sqrt = float(np.linalg.svd(cc, compute_uv=False).sum()) / math.sqrt((n1 - 1) * (n2 - 1))
        return float(max(m11 + m22 - 2.0 * m12 + tr1 + tr2 - 2.0 * trace_sqrt, 0.0))

    def kid(self, r: np.ndarray, g: np.ndarray) -> float:
        """Unbiased MMD^2 (cubic polynomial kernel, gamma 1/D) of rows ``r`` vs ``g``; pairs of copies of one image
        are left out of the within-set terms."""
        kxx, kyy = self.kxx[np.ix_(r, r)], self.kyy[np.ix_(g, g)]
        ox, oy = r[:, None] != r[None, :], g[:, None] != g[None, :]
        if not ox.any() or not oy.any():
            return float("nan")
        return float(kxx[ox].mean() + kyy[oy].mean() - 2.0 * self.kxy[np.ix_(r, g)].mean())


def pair_by_labels(real: ImageSet, generated: ImageSet, name: str = "generated") -> np.ndarray:
    """Index of the real image with the same label map for every generated image: int64 ``[N_generated]``.

    By index when every label map agrees index by index, else by identical label map content. Raises
    ``ValueError`` naming the first generated image whose label map matches no real image.
    """
    if not real.has_labels or not generated.has_labels:
        missing = "real" if not real.has_labels else name
        raise ValueError(f"`--paired` needs label maps on the real set and every generated set; {missing} has none")
    gen = generated.resized(real.size) if generated.size != real.size else generated
    n = min(len(real), len(gen))
    if len(gen) <= len(real) and all(np.array_equal(gen.labels[i], real.labels[i]) for i in range(n)):
        return np.arange(len(gen), dtype=np.int64)
    lookup: Dict[bytes, int] = {}
    for i, lab in enumerate(real.labels):
        lookup.setdefault(np.ascontiguousarray(lab).tobytes(), i)
    index = np.empty(len(gen), dtype=np.int64)
    for i, lab in enumerate(gen.labels):
        j = lookup.get(np.ascontiguousarray(lab).tobytes())
        if j is None:
            raise ValueError(
                f"`--paired`: the label map of {name} image {i} ({gen.names[i]!r}) equals no real label map (not at "
                f"index {i}, nor anywhere else); pair sets generated from the real set's label maps, or drop --paired"
            )
        index[i] = j
    return index


def _try_pairing(real: ImageSet, gen: ImageSet) -> Optional[np.ndarray]:
    try:
        return pair_by_labels(real, gen)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Per-image data of one set
# --------------------------------------------------------------------------------------------------------------


class _SetData:
    """What the bootstrap needs of one image set: per-image arrays, so a resample is an index."""

    def __init__(self, s: ImageSet, geometry: FanGeometry, num_bins: int, speckle_window: int,
                 dynamic_range_db: Optional[float], class_index: Mapping[str, int]) -> None:
        self.n = len(s)
        imgs = s.images.astype(np.float64)
        depth, inside = geometry.depth_and_mask(*s.size)
        bands = [inside & (depth >= lo) & ((depth < hi) if hi < 1.0 else (depth <= hi)) for _, lo, hi in DEPTH_BANDS]
        self.inside_mean = imgs[:, inside].mean(1)
        self.band_mean = np.stack([imgs[:, b].mean(1) if b.any() else np.full(self.n, np.nan) for b in bands], 1)
        prof = depth_intensity_profile(s.images, depth=depth, inside=inside, num_bins=num_bins)
        self.profiles = prof["per_image"]  # [N, B]
        self.bin_centers = prof["bin_centers"]
        # outside the fan, split by the rows of the fan's depth extent
        rows = np.flatnonzero(inside.any(1))
        self.total = imgs.reshape(self.n, -1).sum(1)
        self.outside_count = int((~inside).sum())
        self.outside_sum = imgs[:, ~inside].sum(1) if self.outside_count else np.zeros(self.n)
        self.outside_band_sum, self.outside_band_count = [], []
        if rows.size:
            edges = np.linspace(rows[0], rows[-1] + 1, len(DEPTH_BANDS) + 1)
            rr = np.arange(s.size[0])[:, None] * np.ones((1, s.size[1]))
            for k in range(len(DEPTH_BANDS)):
                m = (~inside) & (rr >= edges[k]) & (rr < edges[k + 1])
                self.outside_band_count.append(int(m.sum()))
                self.outside_band_sum.append(imgs[:, m].sum(1) if m.any() else np.zeros(self.n))
        # speckle windows per image (and per band): value arrays with their image index
        regions = s.labels if s.has_labels else np.broadcast_to(inside.astype(np.int64), s.images.shape)
        self.speckle = [self._speckle(s.images, np.asarray(regions), None, speckle_window, dynamic_range_db)]
        for b in bands:
            self.speckle.append(self._speckle(s.images, np.asarray(regions), b, speckle_window, dynamic_range_db))
        # pooled class sums per image (whole fan and per band)
        self.has_labels = s.has_labels
        self.class_index = dict(class_index)
        if s.has_labels:
            k = max(max(class_index.values(), default=0), int(s.labels.max())) + 1
            self.class_stats = [self._class_sums(imgs, s.labels, np.ones(s.size, bool), k)]
            self.class_stats += [self._class_sums(imgs, s.labels, b, k) for b in bands]
        self.memorization: Optional[np.ndarray] = None
        self.psnr: Optional[np.ndarray] = None
        self.ssim: Optional[np.ndarray] = None

    @staticmethod
    def _speckle(images, regions, band, window, dynamic_range_db) -> Tuple[np.ndarray, np.ndarray]:
        values, owner = [], []
        for i in range(images.shape[0]):
            reg = regions[i] if band is None else np.where(band, regions[i], 0)
            v = np.asarray(speckle_statistics(images[i : i + 1], regions=reg, window=window,
                                              dynamic_range_db=dynamic_range_db)["snr_values"], np.float64)
            values.append(v)
            owner.append(np.full(v.size, i, dtype=np.int64))
        return np.concatenate(values), np.concatenate(owner)

    @staticmethod
    def _class_sums(imgs, labels, mask, k) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = imgs.shape[0]
        lab = np.where(mask[None], labels, -1).reshape(n, -1)
        x = imgs.reshape(n, -1)
        sums, sq, cnt = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
        for c in range(k):
            sel = lab == c
            cnt[:, c] = sel.sum(1)
            sums[:, c] = np.where(sel, x, 0.0).sum(1)
            sq[:, c] = np.where(sel, x * x, 0.0).sum(1)
        return sums, sq, cnt


# statistic(d, idx, real, ridx) -> float ---------------------------------------------------------------------


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(idx, minlength=n).astype(np.float64)


def _profile_mean(d: _SetData, idx: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty bin stays NaN
        return np.nanmean(d.profiles[idx], axis=0)


def _profile_l1(band: Optional[int], shape: bool = False) -> Callable:
    """Mean |difference| of the two depth profiles (in a depth band); ``shape``: with the mean difference (the
    global offset) removed first, so that only a different fall-off with depth counts."""
    def stat(d, idx, r, ridx):
        a, b = _profile_mean(d, idx), _profile_mean(r, ridx)
        sel = np.isfinite(a) & np.isfinite(b)
        if band is not None:
            _, lo, hi = DEPTH_BANDS[band]
            sel &= (d.bin_centers >= lo) & (d.bin_centers < hi)
        if not sel.any():
            return float("nan")
        diff = a[sel] - b[sel]
        return float(np.abs(diff - diff.mean() if shape else diff).mean())

    return stat


def _profile_slope(d, idx, r, ridx):
    y = _profile_mean(d, idx)
    ok = np.isfinite(y)
    return float(np.polyfit(d.bin_centers[ok], y[ok], 1)[0]) if ok.sum() >= 2 else float("nan")


def _inside_mean(band: Optional[int]) -> Callable:
    def stat(d, idx, r, ridx):
        v = d.inside_mean[idx] if band is None else d.band_mean[idx, band]
        return float(np.mean(v))

    return stat


def _outside_mean(band: Optional[int]) -> Callable:
    def stat(d, idx, r, ridx):
        if band is None:
            return float(d.outside_sum[idx].mean() / d.outside_count) if d.outside_count else float("nan")
        if band >= len(d.outside_band_count) or d.outside_band_count[band] == 0:
            return float("nan")
        return float(d.outside_band_sum[band][idx].mean() / d.outside_band_count[band])

    return stat


def _outside_fraction(d, idx, r, ridx):
    total = d.total[idx].sum()
    return float(d.outside_sum[idx].sum() / total) if total > 0 and d.outside_count else float("nan")


def _speckle_median(band: Optional[int]) -> Callable:
    def stat(d, idx, r, ridx):
        values, owner = d.speckle[0 if band is None else band + 1]
        if values.size == 0:
            return float("nan")
        reps = _weights(idx, d.n)[owner].astype(np.int64)
        v = np.repeat(values, reps)
        return float(np.median(v)) if v.size else float("nan")

    return stat


def _contrast(pair: Tuple[str, str], band: Optional[int], kind: str = "difference") -> Callable:
    def stat(d, idx, r, ridx):
        if not d.has_labels or pair[0] not in d.class_index or pair[1] not in d.class_index:
            return float("nan")
        sums, sq, cnt = d.class_stats[0 if band is None else band + 1]
        w = _weights(idx, d.n)
        s, q, c = w @ sums, w @ sq, w @ cnt
        a, b = d.class_index[pair[0]], d.class_index[pair[1]]
        if a >= len(c) or b >= len(c) or c[a] == 0 or c[b] == 0:
            return float("nan")
        ma, mb = s[a] / c[a], s[b] / c[b]
        if kind == "difference":
            return float(ma - mb)
        va, vb = max(q[a] / c[a] - ma * ma, 0.0), max(q[b] / c[b] - mb * mb, 0.0)
        noise = math.sqrt(va + vb)
        return float((ma - mb) / noise) if noise > 0 else float("nan")

    return stat


def _per_image_mean(attr: str, reducer=np.mean) -> Callable:
    def stat(d, idx, r, ridx):
        v = getattr(d, attr)
        return float(reducer(v[idx])) if v is not None else float("nan")

    return stat


# --------------------------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------------------------


def _metric_specs(wanted: Sequence[str], contrast_pairs, paired: bool, have_features: bool,
                  have_memorization: bool, have_outside: bool) -> List[Dict[str, Any]]:
    """The rows of the difference table: key, label, band, statistic, whether the real set has a value."""
    specs: List[Dict[str, Any]] = []

    def add(key, label, fn, band=None, real=True, kind="image"):
        specs.append({"key": key, "label": label, "band": band, "fn": fn, "real": real, "kind": kind})

    if have_features and "fid" in wanted:
        add("fid", "FID", None, real=False, kind="feature")
    if have_features and "kid" in wanted:
        add("kid", "KID (unbiased MMD^2, whole sets)", None, real=False, kind="feature")
    if "depth" in wanted:
        add("mean_inside_fan", "mean intensity inside fan", _inside_mean(None))
        for k, (band, _, _) in enumerate(DEPTH_BANDS):
            add(f"mean_inside_fan[{band}]", "mean intensity inside fan", _inside_mean(k), band)
        add("depth_profile_l1", "depth profile distance to real (L1)", _profile_l1(None), real=False)
        for k, (band, _, _) in enumerate(DEPTH_BANDS):
            add(f"depth_profile_l1[{band}]", "depth profile distance to real (L1)", _profile_l1(k), band, real=False)
        add("depth_profile_shape_l1", "depth profile distance to real, offset removed (L1)", _profile_l1(None, shape=True),
            real=False)
        add("depth_profile_slope", "depth profile slope", _profile_slope)
        if have_outside:
            add("mean_outside_fan", "mean intensity outside fan", _outside_mean(None))
            for k, (band, _, _) in enumerate(DEPTH_BANDS):
                add(f"mean_outside_fan[{band}]", "mean intensity outside fan", _outside_mean(k), band)
            add("outside_fan_fraction", "share of intensity outside fan", _outside_fraction)
    if "speckle" in wanted:
        add("speckle_snr_median", "speckle mean/std, median", _speckle_median(None))
        for k, (band, _, _) in enumerate(DEPTH_BANDS):
            add(f"speckle_snr_median[{band}]", "speckle mean/std, median", _speckle_median(k), band)
    if "classes" in wanted:
        for pair in contrast_pairs:
            name = f"{pair[0]}_vs_{pair[1]}"
            add(f"contrast_{name}", f"contrast {name} (difference)", _contrast(pair, None))
            add(f"cnr_{name}", f"CNR {name}", _contrast(pair, None, "cnr"))
            for k, (band, _, _) in enumerate(DEPTH_BANDS):
                add(f"contrast_{name}[{band}]", f"contrast {name} (difference)", _contrast(pair, k), band)
    if have_memorization:
        add("nearest_train_l2_median", "nearest-train L2, median", _per_image_mean("memorization", np.median),
            real=False)
    if paired:
        add("psnr", "PSNR vs real of the same label map (dB)", _per_image_mean("psnr"), real=False)
        add("ssim", "SSIM vs real of the same label map", _per_image_mean("ssim"), real=False)
    return specs


@dataclass(frozen=True)
class _Bootstrap:
    """How a comparison's intervals are drawn: resamples for per-image metrics and for FID / KID, coverage."""

    num_resamples: int
    num_feature_resamples: int
    confidence: float


def _check_comparison(generated: Any, reference_set: Optional[str], bootstrap: _Bootstrap) -> Tuple[List[str], str]:
    """The set names (in order) and the reference set, after checking the comparison's own arguments."""
    if not isinstance(generated, Mapping) or not generated:
        raise ValueError("`generated` must be a non-empty mapping {name: source}")
    for name in generated:
        _check_name(str(name))
    set_names = [str(n) for n in generated]
    if reference_set is None:
        reference_set = set_names[0]
    if reference_set not in set_names:
        raise ValueError(f"`reference_set` {reference_set!r} is not one of the generated sets {set_names}")
    if int(bootstrap.num_resamples) < 10 or int(bootstrap.num_feature_resamples) < 10:
        raise ValueError(f"`num_bootstrap` and `num_feature_bootstrap` must be >= 10, got {bootstrap.num_resamples} and "
                         f"{bootstrap.num_feature_resamples}")
    if not 0.0 < float(bootstrap.confidence) < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1), got {bootstrap.confidence}")
    return set_names, reference_set


def compare(
    real: Any,
    generated: Mapping[str, Any],
    out_dir: Union[str, Path],
    train: Any = None,
    metrics: Optional[Union[str, Sequence[str]]] = None,
    *,
    reference_set: Optional[str] = None,
    paired: bool = False,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    num_feature_bootstrap: int = DEFAULT_FEATURE_BOOTSTRAP,
    confidence: float = 0.95,
    num_grid_columns: int = 6,
    options: Optional[EvaluationOptions] = None,
    **fields: Any,
) -> Dict[str, Any]:
    """Evaluate several named generated sets against ``real`` and write one comparison report folder.

    Args:
        real: real (held-out) images, any source :func:`~.io.load_image_set` reads.
        generated: ``{name: source}`` (ordered; the first set is the default reference), at least one set.
        out_dir: report folder, written atomically (same rules as :func:`~.report.evaluate`).
        train: optional training images (memorisation, segmentation reference).
        metrics: subset of :data:`~.report.ALL_METRICS`; None: the cheap ones (no ``segmentation``); ``"all"``:
            every metric whose inputs are present.
        reference_set: the set every other set is compared with (default: the first).
        paired: also PSNR and SSIM of each generated image against the real image with the same label map.
        num_bootstrap: bootstrap resamples for per-image metrics (>= 10).
        num_feature_bootstrap: bootstrap resamples for FID and KID (>= 10).
        confidence: interval coverage in (0, 1), default 0.95.
        num_grid_columns: label maps shown in ``plots/label_grid.png``.
        options: the settings shared with :func:`~.report.evaluate` (:class:`~.options.EvaluationOptions`);
            ``seed`` also seeds the bootstrap.
        fields: :class:`~.options.EvaluationOptions` fields by name (``seg_steps=50``), replacing those of
            ``options``; any other name is a TypeError.

    Returns:
        The metrics dict written to ``metrics.json`` (``mode: "comparison"``; ``sets``: each set's evaluate
        report; ``comparison``: one row per metric and depth band with each set's value and interval and each
        set's difference from the reference with its interval and ``excludes_zero``).
    """
    from .report import OPT_IN_REASON, select_metrics

    # 1. settings, the report folder (checked before any work)
    opts = EvaluationOptions.build(options, fields, "compare")
    bootstrap = _Bootstrap(int(num_bootstrap), int(num_feature_bootstrap), float(confidence))
    set_names, reference_set = _check_comparison(generated, reference_set, bootstrap)
    wanted, explicit, opted_out = select_metrics(metrics)
    out_dir = check_output_dir(
        out_dir, "evaluate", inputs=[real, train, *(r for src in generated.values() for r in _as_runs(src))],
        overwrite=opts.overwrite, replace_own=opts.replace_report, argument="`out_dir`",
    )
    # 2. the image sets (a set of several training runs pooled) and how the generated images pair with the real ones
    real_set, train_set, gen_sets, runs = _load_sets(real, train, generated, opts)
    pairing = {n: pair_by_labels(real_set, s, n) if paired else _try_pairing(real_set, s) for n, s in gen_sets.items()}
    # 3. the report's header
    report = _comparison_header(real, train, generated, real_set, train_set, gen_sets, reference_set, opts)
    report["config"].update(metrics_requested=wanted, paired=bool(paired), bootstrap={
        "num_resamples": bootstrap.num_resamples,
        "num_resamples_fid_kid": bootstrap.num_feature_resamples,
        "confidence": bootstrap.confidence,
        "method": "percentile bootstrap over images, shifted by the resampling bias (median of replicates - estimate)",
    })
    report["skipped"] = {m: OPT_IN_REASON for m in opted_out}
    report["runs"] = {n: {"num_runs": len(r), "images_per_run": list(r)} for n, r in runs.items()}
    # 4. every evaluate metric of each set (the same code as the single-set report)
    figures, extras, cache = _evaluate_each_set(report, real_set, train_set, gen_sets, wanted, explicit, opts)
    # 5. the differences between sets with bootstrap intervals over images
    data, real_data = _per_image_data(report, real_set, gen_sets, extras, pairing, paired, opts)
    grams = {n: _FeatureGrams(extras[n]["real_features"], extras[n]["generated_features"]) for n in set_names
             if extras[n].get("real_features") is not None and extras[n].get("generated_features") is not None}
    specs = _metric_specs(wanted, opts.contrast_pairs, paired, bool(grams) and len(grams) == len(set_names),
                          all(d.memorization is not None for d in data.values()), real_data.outside_count > 0)
    report["comparison"] = _bootstrap_rows(report, specs, data, real_data, grams, runs, reference_set, bootstrap,
                                           opts.seed)
    # 6. the sections that pool the sets: segmentation, realism, pairing
    _pooled_sections(report, cache, real_set, pairing if paired else None)
    # 7. pictures, then the folder (written atomically)
    figures.update(_comparison_figures(real_set, gen_sets, pairing, wanted, opts, num_grid_columns, report))
    report = _jsonable_report(report)
    markdown = render_comparison_markdown(report)

    def build(tmp: Path) -> None:
        (tmp / "plots").mkdir()
        for key, fig in figures.items():
            target = tmp / "plots" / f"{key}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(target)
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(markdown, encoding="utf-8")

    replace_directory(build, out_dir, kind="evaluate")
    report["figures"] = sorted(f"plots/{k}.png" for k in figures)
    return report


def _jsonable_report(report: Dict[str, Any]) -> Dict[str, Any]:
    from .report import _jsonable

    return _jsonable(report)


def _load_sets(real: Any, train: Any, generated: Mapping[str, Any], opts: EvaluationOptions):
    """``(real_set, train_set or None, {name: generated set}, {name: [images per run]})`` read with the options'
    columns and split; the runs of a set given as :class:`TrainingRuns` are pooled in order (the same size each)."""
    from .report import _load

    real_set = _load(real, "real", opts)
    train_set = None if train is None else _load(train, "train", opts)
    gen_sets: Dict[str, ImageSet] = {}
    runs: Dict[str, List[int]] = {}
    for n, src in generated.items():
        parts = [_load(r, f"generated {n}" + (f" (run {k + 1})" if isinstance(src, (list, tuple)) else ""), opts)
                 for k, r in enumerate(_as_runs(src))]
        if len({p.size for p in parts}) > 1:
            raise ValueError(f"`generated` set {n!r}: its training runs have different image sizes {[p.size for p in parts]}")
        if len(parts) > 1 and len({p.has_labels for p in parts}) > 1:
            raise ValueError(f"`generated` set {n!r}: some of its training runs have label maps and some do not")
        gen_sets[str(n)] = parts[0] if len(parts) == 1 else ImageSet(
            images=np.concatenate([p.images for p in parts]),
            labels=None if parts[0].labels is None else np.concatenate([p.labels for p in parts]),
            names=[f"run{k + 1}/{name}" for k, p in enumerate(parts) for name in p.names],
            source=" + ".join(p.source for p in parts), kind=parts[0].kind, split=parts[0].split,
        )
        runs[str(n)] = [len(p) for p in parts]
    return real_set, train_set, gen_sets, runs


def _comparison_header(real, train, generated, real_set: ImageSet, train_set: Optional[ImageSet],
                       gen_sets: Mapping[str, ImageSet], reference_set: str, opts: EvaluationOptions) -> Dict[str, Any]:
    """The report's header: sources, counts, sizes, labels and the settings every number depends on."""
    from .report import _describe, add_train_source

    set_names = list(gen_sets)
    report: Dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "comparison",
        "set_names": set_names,
        "reference_set": reference_set,
        "sources": {"real": _describe(real), **{n: " + ".join(_describe(r) for r in _as_runs(src))
                                                for n, src in zip(set_names, generated.values())}},
        "num_images": {"real": len(real_set), **{n: len(s) for n, s in gen_sets.items()}},
        "image_size": {"real": list(real_set.size), **{n: list(s.size) for n, s in gen_sets.items()}},
        "has_labels": {"real": real_set.has_labels, **{n: s.has_labels for n, s in gen_sets.items()}},
        "config": {
            "geometry": opts.fan.to_dict(),
            "seed": int(opts.seed),
            "depth_bands": {b: [lo, hi] for b, lo, hi in DEPTH_BANDS},
        },
        "not_computed": {"lpips": LPIPS_NOTE},
        "skipped": {},
        "warnings": [],
        "sets": {},
    }
    if train_set is not None:
        add_train_source(report, train, train_set)
    return report


def _evaluate_each_set(report: Dict[str, Any], real_set: ImageSet, train_set: Optional[ImageSet],
                       gen_sets: Mapping[str, ImageSet], wanted: Sequence[str], explicit: bool, opts: EvaluationOptions):
    """Run :func:`~.report._evaluate_metrics` on each generated set into ``report["sets"]``. Returns the figures
    (``"<set>/<plot>"``), each set's per-image extras and the cache of what depends on the real set only."""
    from .report import _evaluate_metrics

    def skip_for(set_name: str):
        def skip(metric: str, reason: str) -> None:
            if explicit:
                raise ValueError(f"metric {metric!r} cannot run for set {set_name!r}: {reason}")
            report["skipped"].setdefault(metric, reason)

        return skip

    figures: Dict[str, Any] = {}
    extras: Dict[str, Dict[str, Any]] = {}
    cache: Dict[str, Any] = {}
    for n, s in gen_sets.items():
        fragment: Dict[str, Any] = {"skipped": {}, "warnings": []}
        set_figures: Dict[str, Any] = {}
        extras[n] = _evaluate_metrics(fragment, set_figures, real_set, s, train_set, wanted, skip_for(n), opts, cache=cache)
        report["warnings"].extend(f"{n}: {w}" for w in fragment.pop("warnings"))
        for metric, reason in fragment.pop("skipped").items():
            report["skipped"].setdefault(metric, reason)
        report["sets"][n] = fragment
        for key, fig in set_figures.items():
            figures[f"{n}/{key}"] = fig
    return figures, extras, cache


def _per_image_data(report: Dict[str, Any], real_set: ImageSet, gen_sets: Mapping[str, ImageSet],
                    extras: Mapping[str, Mapping[str, Any]], pairing: Mapping[str, Optional[np.ndarray]], paired: bool,
                    opts: EvaluationOptions) -> Tuple[Dict[str, "_SetData"], "_SetData"]:
    """The per-image statistics the bootstrap resamples: ``({set: data}, real data)``."""
    class_index = {v: int(k) for k, v in opts.names.items()}

    def data_of(s: ImageSet) -> _SetData:
        return _SetData(s, opts.fan, opts.num_depth_bins, opts.speckle_window, opts.dynamic_range_db, class_index)

    real_data = data_of(real_set)
    data = {n: data_of(s) for n, s in gen_sets.items()}
    for n, s in gen_sets.items():
        mem = extras[n].get("memorization")
        if mem is not None:
            data[n].memorization = np.asarray(mem["train_distances"], np.float64)
        if paired:
            from .image_metrics import psnr, ssim

            g = s.resized(real_set.size) if s.size != real_set.size else s
            ref = real_set.images[pairing[n]]
            data[n].psnr = np.array([psnr(a, b) for a, b in zip(ref, g.images)])
            data[n].ssim = np.array([ssim(a, b) for a, b in zip(ref, g.images)])
            if not np.isfinite(data[n].psnr).all():
                report["warnings"].append(f"{n}: some generated images equal their real image exactly (PSNR inf)")
                data[n].psnr = np.where(np.isfinite(data[n].psnr), data[n].psnr, np.nan)
    return data, real_data


def _draw_indices(rng: np.random.Generator, runs: Mapping[str, Sequence[int]]) -> Dict[str, np.ndarray]:
    """One bootstrap draw of image indices into each set's pooled images, ``{set: int64 [N]}``.

    One run per set: images with replacement, with the same indices for every set when all sets are the same
    size (a paired bootstrap: image i of each set comes from the same label map and seed), independently
    otherwise. Several runs (:class:`TrainingRuns`): the runs with replacement, then images with replacement
    within each drawn run (a two-level bootstrap, so the interval includes the spread between training runs);
    the same draw for every set when all sets have the same runs and sizes (matched by seed and label map).
    """
    names = list(runs)
    same = len({tuple(r) for r in runs.values()}) == 1

    def one(sizes: Sequence[int]) -> np.ndarray:
        if len(sizes) == 1:
            return rng.integers(0, sizes[0], sizes[0])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        chosen = rng.integers(0, len(sizes), len(sizes))
        return np.concatenate([offsets[c] + rng.integers(0, sizes[c], sizes[c]) for c in chosen])

    if same:
        common = one(runs[names[0]])
        return {n: common for n in names}
    return {n: one(runs[n]) for n in names}


def _bootstrap_rows(report: Dict[str, Any], specs: Sequence[Dict[str, Any]], data: Mapping[str, "_SetData"],
                    real_data: "_SetData", grams: Mapping[str, "_FeatureGrams"], runs: Mapping[str, Sequence[int]],
                    reference_set: str, bootstrap: _Bootstrap, seed: int) -> Dict[str, Any]:
    """Each metric's value and interval per set and each set's difference from the reference (the report's
    ``comparison`` entry); records the resampling scheme in ``report["config"]["bootstrap"]``. Draws:
    :func:`_draw_indices` (over training runs too where a set has several)."""
    set_names = list(data)
    same = len({tuple(r) for r in runs.values()}) == 1
    if any(len(r) > 1 for r in runs.values()):
        scheme = ("two-level bootstrap: each set's training runs resampled with replacement, then images within each "
                  "run" + (" (the same draw for every set: matched runs and label maps)" if same else
                           " (sets drawn independently: different runs or sizes)"))
    else:
        scheme = ("generated sets resampled with the same indices (equal sizes: paired by index)" if same
                  else "generated sets resampled independently (different sizes)")
    report["config"]["bootstrap"]["resampling"] = scheme
    rng = np.random.default_rng(seed)

    def evaluate_spec(spec, idx_of, ridx) -> Dict[str, float]:
        out = {}
        for n in set_names:
            if spec["kind"] == "feature":
                g = grams[n]
                out[n] = g.fid(ridx, idx_of[n]) if spec["key"] == "fid" else g.kid(ridx, idx_of[n])
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[n] = spec["fn"](data[n], idx_of[n], real_data, ridx)
        if spec["real"] and spec["kind"] != "feature":
            with np.errstate(invalid="ignore", divide="ignore"):
                out["real"] = spec["fn"](real_data, ridx, real_data, ridx)
        return out

    full_idx = {n: np.arange(d.n) for n, d in data.items()}
    points = [evaluate_spec(spec, full_idx, np.arange(real_data.n)) for spec in specs]
    reps: List[List[Dict[str, float]]] = [[] for _ in specs]
    num_rounds = max(bootstrap.num_resamples, bootstrap.num_feature_resamples if grams else 0)
    for b in range(num_rounds):
        ridx = rng.integers(0, real_data.n, real_data.n)
        idx_of = _draw_indices(rng, runs)
        for i, spec in enumerate(specs):
            limit = bootstrap.num_feature_resamples if spec["kind"] == "feature" else bootstrap.num_resamples
            if b < limit:
                reps[i].append(evaluate_spec(spec, idx_of, ridx))

    rows = []
    for spec, point, rep in zip(specs, points, reps):
        row: Dict[str, Any] = {"key": spec["key"], "label": spec["label"], "band": spec["band"] or "all",
                               "num_resamples": len(rep), "values": {}, "differences": {}}
        for n in (["real"] if "real" in point else []) + set_names:
            lo, hi = bootstrap_interval([r[n] for r in rep], bootstrap.confidence, point[n])
            row["values"][n] = {"value": point[n], "low": lo, "high": hi}
        for n in set_names:
            if n == reference_set:
                continue
            diff = point[n] - point[reference_set]
            lo, hi = bootstrap_interval([r[n] - r[reference_set] for r in rep], bootstrap.confidence, diff)
            scale = max(abs(point[n]), abs(point[reference_set])) if math.isfinite(diff) else 0.0
            row["differences"][n] = {"value": diff, "low": lo, "high": hi,
                                     "excludes_zero": excludes_zero(lo, hi, scale)}
        rows.append(row)
    return {"reference_set": reference_set, "confidence": bootstrap.confidence, "rows": rows}


def _pooled_sections(report: Dict[str, Any], cache: Mapping[str, Any], real_set: ImageSet,
                     pairing: Optional[Mapping[str, np.ndarray]]) -> None:
    """The report entries that put the sets side by side: segmentation Dice (one training run per set: no
    interval over images), the realism table (the real set and every generated set) and, for a paired comparison
    (``pairing`` given), how the images were paired."""
    from .report import realism_section

    seg = {n: f["segmentation"] for n, f in report["sets"].items() if "segmentation" in f}
    if seg:
        report["comparison"]["segmentation"] = {
            n: {"mean_dice": v["trained_on_generated"]["mean_dice"]} for n, v in seg.items()
        }
        ref = next(iter(seg.values())).get("trained_on_real")
        if ref is not None:
            report["comparison"]["segmentation"]["real"] = {"mean_dice": ref["mean_dice"]}
    if all("realism" in f for f in report["sets"].values()) and "realism_real" in cache:
        report["realism"] = realism_section(
            {"real": cache["realism_real"],
             **{n: f["realism"]["sets"]["generated"] for n, f in report["sets"].items()}},
            real_set.size,
        )
    if pairing is not None:
        report["paired"] = {
            n: {"by_index": bool(np.array_equal(p, np.arange(len(p)))), "num_pairs": int(len(p)),
                "num_real_used": int(len(np.unique(p)))}
            for n, p in pairing.items()
        }


def _comparison_figures(real_set: ImageSet, gen_sets: Mapping[str, ImageSet],
                        pairing: Mapping[str, Optional[np.ndarray]], wanted: Sequence[str], opts: EvaluationOptions,
                        num_grid_columns: int, report: Dict[str, Any]) -> Dict[str, Any]:
    """The comparison's own pictures: every set's depth profile over the real one and the label-map grid (its
    note, how images were matched, goes into ``report["label_grid"]``)."""
    figures: Dict[str, Any] = {}
    if "depth" in wanted:
        profiles = {"real": depth_intensity_profile(real_set.images, opts.fan, num_bins=opts.num_depth_bins)}
        for n, s in gen_sets.items():
            profiles[n] = depth_intensity_profile(s.images, opts.fan, num_bins=opts.num_depth_bins)
        fig = plot_depth_profiles(profiles)
        ax = fig.axes[0]
        for _, lo, _ in DEPTH_BANDS[1:]:
            ax.axvline(lo, color="0.6", linewidth=0.8, linestyle=":")
        ax.lines[0].set_color("k")  # the real profile: black, drawn first
        ax.lines[0].set_linewidth(2.0)
        ax.collections[0].set_color("0.5")
        ax.legend(fontsize=8)
        ax.set_title("depth profiles over the real one (dotted: depth-band borders)", fontsize=9)
        fig.tight_layout()
        figures["depth_profiles"] = fig
    names = opts.names
    grid, grid_note = plot_label_grid(real_set, gen_sets, pairing, num_grid_columns, max(names) + 1 if names else 5,
                                      class_names=names)
    figures["label_grid"] = grid
    report["label_grid"] = grid_note
    return figures


def plot_label_grid(real: ImageSet, generated: Mapping[str, ImageSet], pairing: Mapping[str, Optional[np.ndarray]],
                    num: int = 6, num_classes: int = 5, class_names: Optional[Mapping[int, str]] = None):
    """Figure: columns are label maps, rows are the label map (the package's label colours, with a legend of
    ``class_names``), the real image and each generated set's image for that map. Returns ``(figure, note)``;
    the note says how images were matched (label map or index)."""
    from matplotlib.figure import Figure

    from .report import add_label_legend, label_map_rgb

    by_label = real.has_labels and all(p is not None for p in pairing.values())
    if by_label:
        firsts = {}
        for n, p in pairing.items():
            inverse: Dict[int, int] = {}
            for g, r in enumerate(p):
                inverse.setdefault(int(r), g)
            firsts[n] = inverse
        columns = [r for r in range(len(real)) if all(r in inv for inv in firsts.values())][:num]
        note = "columns: real label maps; each set's image generated from the same label map"
    else:
        columns = list(range(min([len(real)] + [len(s) for s in generated.values()] + [num])))
        firsts = {n: {r: r for r in columns} for n in generated}
        note = "columns: image index (no label-map pairing available); images are not from the same label map"
    rows: List[Tuple[str, List[np.ndarray], bool]] = []
    if real.has_labels:
        rows.append(("label map", [real.labels[r] for r in columns], True))
    rows.append(("real", [real.images[r] for r in columns], False))
    for n, s in generated.items():
        rows.append((n, [s.images[firsts[n][r]] for r in columns], False))
    cols = max(1, len(columns))
    legend_height = 0.5 if real.has_labels else 0.0
    fig = Figure(figsize=(1.3 * cols + 0.8, 1.35 * len(rows) + legend_height), dpi=100)
    for i, (title, arrays, is_label) in enumerate(rows):
        for j, arr in enumerate(arrays):
            ax = fig.add_subplot(len(rows), cols, i * cols + j + 1)
            if is_label:
                ax.imshow(label_map_rgb(arr, num_classes), interpolation="nearest")
            else:
                ax.imshow(arr, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=7)
    if real.has_labels:
        add_label_legend(fig, num_classes, class_names)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    return fig, note


# --------------------------------------------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------------------------------------------


def _interval(entry: Mapping[str, Any]) -> str:
    from .report import _fmt

    if entry.get("low") is None:
        return _fmt(entry.get("value"))
    return f"{_fmt(entry.get('value'))} [{_fmt(entry['low'], 3)}, {_fmt(entry['high'], 3)}]"


def comparison_rows(report: Mapping[str, Any]) -> List[List[str]]:
    """Rows ``[metric, band, real, set1, ..., diff set2, excludes 0, ...]`` of the difference table, with a header."""
    names = report["set_names"]
    ref = report["reference_set"]
    others = [n for n in names if n != ref]
    header = ["metric", "depth band", "real"] + names
    for n in others:
        header += [f"{n} - {ref}", "excludes 0"]
    rows = [header]
    for row in report["comparison"]["rows"]:
        cells = [row["label"], row["band"], _interval(row["values"]["real"]) if "real" in row["values"] else ""]
        cells += [_interval(row["values"][n]) for n in names]
        for n in others:
            d = row["differences"][n]
            flag = d["excludes_zero"]
            cells += [_interval(d), "n/a" if flag is None else ("**yes**" if flag else "no")]
        rows.append(cells)
    return rows


def format_comparison_summary(report: Mapping[str, Any], bands: bool = False) -> str:
    """Plain-text difference table (whole fan only unless ``bands``), skipped metrics and warnings."""
    rows = comparison_rows(report)
    rows = [rows[0]] + [r for r in rows[1:] if bands or r[1] == "all"]
    rows = [[c.replace("**", "") for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    conf = report["comparison"]["confidence"]
    lines.append(f"[low, high]: {100 * conf:.0f} % bootstrap interval over images")
    for metric, reason in report.get("skipped", {}).items():
        lines.append(f"skipped {metric}: {reason}")
    for message in report.get("warnings", []):
        lines.append(f"warning: {message}")
    return "\n".join(lines)


def render_comparison_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` of a comparison: sets, summary per set, the difference table, pictures, realism."""
    from .report import _fmt, closing_sections_markdown, summary_rows

    names = report["set_names"]
    ref = report["reference_set"]
    boot = report["config"]["bootstrap"]
    out = ["# Comparison report", "", f"Created {report['created']}.", ""]
    out += ["| set | source | images | size | labels |", "|---|---|---|---|---|"]
    for n in ["real"] + names + (["train"] if "train" in report["sources"] else []):
        size = "x".join(str(v) for v in report["image_size"][n])
        out.append(f"| {n} | `{report['sources'][n]}` | {report['num_images'][n]} | {size} | "
                   f"{report['has_labels'][n]} |")
    # each set's evaluate summary side by side
    per_set = {n: summary_rows(report["sets"][n]) for n in names}
    labels = list(dict.fromkeys(r[0] for rows in per_set.values() for r in rows))
    out += ["", "## Every metric per set", "", "| metric | real / reference | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names)]
    for label in labels:
        cells = {n: next((r for r in per_set[n] if r[0] == label), None) for n in names}
        real_cell = next((c[1] for c in cells.values() if c is not None and c[1]), "")
        out.append(f"| {label} | {real_cell} | " + " | ".join(c[2] if c else "n/a" for c in cells.values()) + " |")
    out += ["", "Per-set details (as the single-set `evaluate` report) are in `metrics.json` under `sets`; their "
                "plots under `plots/<set>/`.", ""]
    # differences
    conf = 100 * report["comparison"]["confidence"]
    out += [f"## Differences from `{ref}` with {conf:.0f} % bootstrap intervals", "",
            f"Values: point estimate on all images [{conf:.0f} % bootstrap interval over images: percentile interval "
            "shifted by the resampling bias, which matters for FID and KID]. "
            f"{boot['num_resamples']} resamples ({boot['num_resamples_fid_kid']} for FID and KID), seed "
            f"{report['config']['seed']}; {boot['resampling']}. *excludes 0*: the interval of the difference does "
            "not contain 0. Depth bands are thirds of the fan's normalised depth (outside-fan signal: thirds of "
            "the fan's rows). " + _runs_sentence(report), ""]
    rows = comparison_rows(report)
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "---|" * len(rows[0]))
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    out.append("")
    seg = report["comparison"].get("segmentation")
    if seg:
        out += ["Downstream mean Dice (one training run per set, no interval): "
                + ", ".join(f"{n} {_fmt(v['mean_dice'])}" for n, v in seg.items()) + ".", ""]
    if report.get("paired"):
        out += ["PSNR / SSIM pairing: " + "; ".join(
            f"{n}: {p['num_pairs']} pairs, " + ("by index" if p["by_index"] else f"by label map ({p['num_real_used']} "
                                                   "real images used)")
            for n, p in report["paired"].items()) + ".", ""]
    out += [f"Not computed: {LPIPS_NOTE}", ""]
    out += ["## Pictures", ""]
    if (report["config"]["metrics_requested"] and "depth" in report["config"]["metrics_requested"]):
        out += ["Depth-intensity profiles of every set over the real one (mean +- std across images):", "",
                "![depth profiles](plots/depth_profiles.png)", ""]
    out += [f"The same label maps across sets ({report['label_grid']}):", "", "![label grid](plots/label_grid.png)", ""]
    out += closing_sections_markdown(report)
    return "\n".join(out)


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_FEATURE_BOOTSTRAP",
    "DEPTH_BANDS",
    "LPIPS_NOTE",
    "bootstrap_interval",
    "compare",
    "comparison_rows",
    "format_comparison_summary",
    "pair_by_labels",
    "parse_generated",
    "plot_label_grid",
    "render_comparison_markdown",
]
