# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Image-quality metrics in the ultrasound field's terms.

* :func:`gcnr`: generalized contrast-to-noise ratio (Rodriguez-Molares et al., IEEE TUFFC 2020),
  ``1 - overlap`` of the intensity histograms of two regions: 0 (indistinguishable) to 1 (separable); invariant to
  any monotonic transform of the grey scale, so it can be computed on B-mode images.
* :func:`cnr`: contrast-to-noise ratio ``|mu_1 - mu_2| / sqrt(var_1 + var_2)``.
* :func:`fwhm`: full width at half maximum of a point target along one axis (lateral or axial), with linear
  interpolation of the half-maximum crossings; :func:`point_target_resolution` gives both for a target.

PSNR and SSIM are in :mod:`ultrasound_diffusers.evaluation.image_metrics` (:func:`psnr`, :func:`ssim`) and re-exported
here.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from .image_metrics import psnr, ssim

__all__ = ["cnr", "fwhm", "gcnr", "point_target_resolution", "psnr", "ssim"]


def _regions(image, mask_a, mask_b) -> Tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image, np.float64)
    a, b = np.asarray(mask_a, bool), np.asarray(mask_b, bool)
    if a.shape != image.shape or b.shape != image.shape:
        raise ValueError(f"the masks must have the image's shape {image.shape}, got {a.shape} and {b.shape}")
    if not a.any() or not b.any():
        raise ValueError("both regions must contain at least one pixel")
    return image[a], image[b]


def gcnr(image, mask_a, mask_b, bins: int = 256, value_range: Optional[Tuple[float, float]] = None) -> float:
    """Generalized CNR of two regions of ``image``: ``1 - sum_k min(p_a(k), p_b(k))`` with the histograms
    ``p_a``, ``p_b`` (``bins`` bins over ``value_range``, default the joint range of the two regions)."""
    va, vb = _regions(image, mask_a, mask_b)
    if value_range is None:
        lo, hi = float(min(va.min(), vb.min())), float(max(va.max(), vb.max()))
        if hi <= lo:
            return 0.0
        value_range = (lo, hi)
    pa, _ = np.histogram(va, bins=bins, range=value_range)
    pb, _ = np.histogram(vb, bins=bins, range=value_range)
    pa = pa / pa.sum()
    pb = pb / pb.sum()
    return float(1.0 - np.minimum(pa, pb).sum())


def cnr(image, mask_a, mask_b) -> float:
    """Contrast-to-noise ratio ``|mean_a - mean_b| / sqrt(var_a + var_b)`` of two regions."""
    va, vb = _regions(image, mask_a, mask_b)
    denom = np.sqrt(va.var() + vb.var())
    return float(abs(va.mean() - vb.mean()) / denom) if denom > 0 else float("inf")


def fwhm(profile, spacing: float = 1.0) -> float:
    """Full width at half maximum of a 1-D profile (linear amplitude, peak > 0), in units of ``spacing``.

    The half-maximum crossings on both sides of the peak are linearly interpolated; a profile that does not fall
    below half its maximum on a side returns ``inf``.
    """
    p = np.asarray(profile, np.float64).reshape(-1)
    if p.size < 3:
        raise ValueError(f"`profile` needs at least 3 samples, got {p.size}")
    k = int(np.argmax(p))
    peak = p[k]
    if not peak > 0:
        raise ValueError("`profile` must have a positive maximum")
    half = peak / 2.0
    left = k
    while left > 0 and p[left - 1] > half:
        left -= 1
    right = k
    while right < p.size - 1 and p[right + 1] > half:
        right += 1
    if left == 0 or right == p.size - 1:
        return float("inf")
    # crossing between left-1 (below) and left (above), and between right (above) and right+1 (below)
    xl = (left - 1) + (half - p[left - 1]) / (p[left] - p[left - 1])
    xr = right + (p[right] - half) / (p[right] - p[right + 1])
    return float((xr - xl) * spacing)


def point_target_resolution(envelope, spacing: Tuple[float, float] = (1.0, 1.0), center: Optional[Tuple[int, int]] = None,
                            half_window: int = 10) -> Dict[str, float]:
    """Axial (rows) and lateral (columns) FWHM of a point target in an envelope image (linear amplitude, not dB).

    Args:
        envelope: [H, W] linear envelope (or intensity, then the widths are those at half power).
        spacing: (axial, lateral) pixel spacing.
        center: (row, col) of the target; default the maximum within the image.
        half_window: profiles are taken over +-half_window pixels around the target.
    """
    env = np.asarray(envelope, np.float64)
    if env.ndim != 2:
        raise ValueError(f"`envelope` must be 2-D, got shape {env.shape}")
    if center is None:
        center = np.unravel_index(int(np.argmax(env)), env.shape)
    r, c = int(center[0]), int(center[1])
    rs = slice(max(r - half_window, 0), min(r + half_window + 1, env.shape[0]))
    cs = slice(max(c - half_window, 0), min(c + half_window + 1, env.shape[1]))
    return {"axial_fwhm": fwhm(env[rs, c], spacing[0]), "lateral_fwhm": fwhm(env[r, cs], spacing[1])}
