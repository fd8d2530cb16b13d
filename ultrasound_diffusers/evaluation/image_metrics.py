"""Full-reference image metrics of two images of the same scene (values in [0, ``data_range``]).

* :func:`psnr`: peak signal-to-noise ratio in dB (``inf`` for identical images).
* :func:`ssim`: mean structural similarity (Wang et al. 2004) with a Gaussian window.

Used by ``ultrasound-diffusers reconstruct`` (reconstruction vs the true image) and by the paired comparison of
``ultrasound-diffusers evaluate --paired`` (each generated image vs the real image of the same label map).
"""

from __future__ import annotations


def psnr(reference, estimate, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio (dB) of two images in [0, data_range]."""
    import numpy as np

    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(estimate, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(reference, estimate, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004, Gaussian window of std ``sigma``) of two 2-D images."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"`ssim` needs two 2-D images of the same shape, got {a.shape} and {b.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x):
        return gaussian_filter(x, sigma, mode="reflect", truncate=3.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(value.mean())


__all__ = ["psnr", "ssim"]
