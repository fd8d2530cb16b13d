"""Full-reference image metrics of two images of the same scene (values in [0, ``data_range``]).

* :func:`psnr`: peak signal-to-noise ratio in dB (``inf`` for identical images).
* :func:`ssim`: mean structural similarity (Wang et al. 2004) with a Gaussian window, scikit-image's conventions.

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
    """Mean structural similarity (Wang et al. 2004) of two 2-D images, as the reference implementations compute it.

    The conventions of scikit-image's ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)``: local means, variances and covariance under a Gaussian
    window of std ``sigma`` truncated at 3.5 std (11 x 11 for sigma 1.5, reflected at the borders),
    K1 = 0.01, K2 = 0.03, and the SSIM map averaged over the valid region only, i.e. without the
    ``(window - 1) // 2`` pixels along each border whose window reaches past the image (equal to scikit-image
    to float rounding, tested). Values comparable with published SSIMs; at most 1, 1 for identical images.

    Args:
        reference, estimate: ``[H, W]`` arrays with values in [0, data_range]; H and W at least the window size.
        data_range: the range of the values (1 for images in [0, 1]).
        sigma: the Gaussian window's std in pixels.
    """
    import numpy as np
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"`ssim` needs two 2-D images of the same shape, got {a.shape} and {b.shape}")
    truncate = 3.5
    window = 2 * int(truncate * sigma + 0.5) + 1
    if min(a.shape) < window:
        raise ValueError(f"`ssim` needs images of at least {window} x {window} pixels (the Gaussian window of "
                         f"sigma={sigma}), got {a.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x):
        return gaussian_filter(x, sigma, mode="reflect", truncate=truncate)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    pad = (window - 1) // 2
    return float(value[pad:-pad, pad:-pad].mean())


__all__ = ["psnr", "ssim"]
