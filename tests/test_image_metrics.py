"""SSIM as the reference implementation computes it: scikit-image's ``structural_similarity`` with Gaussian
weights (sigma 1.5, 11 x 11), population covariance, ``data_range=1``, averaged over the valid region."""

import numpy as np
import pytest

from ultrasound_diffusers.evaluation.image_metrics import ssim


def _phantom_pairs(size=64, n=4):
    from ultrasound_diffusers.data.phantoms import generate_phantoms

    images = [np.asarray(x, np.float64) / 255.0 for x in generate_phantoms(n, anatomy="echo", size=size, seed=0)["image"]]
    return list(zip(images[:-1], images[1:]))


def test_ssim_equals_scikit_image_on_phantoms_and_noise():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    rng = np.random.default_rng(0)
    noisy = rng.random((48, 40))
    pairs = _phantom_pairs() + [(noisy, np.clip(noisy + 0.2 * rng.standard_normal(noisy.shape), 0, 1)),
                                (noisy[:11, :11], noisy[1:12, 2:13])]  # the smallest size: one valid pixel
    for a, b in pairs:
        reference = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=1.0)
        assert ssim(a, b) == pytest.approx(reference, abs=1e-4)
    # a data range other than 1 goes into both constants as the reference does
    a, b = pairs[0]
    reference = structural_similarity(255 * a, 255 * b, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=255.0)
    assert ssim(255 * a, 255 * b, data_range=255.0) == pytest.approx(reference, abs=1e-4)


def test_ssim_leaves_out_the_border_where_the_window_is_reflected():
    # images that differ only in their first two rows: the reflected border (5 px for the 11 x 11 window) is not
    # averaged, so SSIM sees only the faint reach of the blur into row 5 and 6 (the whole-image mean gave 0.958)
    rng = np.random.default_rng(1)
    a = rng.random((40, 40))
    b = a.copy()
    b[:2] = rng.random((2, 40))
    assert ssim(a, b) > 0.999


def test_ssim_refuses_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(np.zeros((10, 32)), np.zeros((10, 32)))
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((16, 16)), np.zeros((16, 17)))
