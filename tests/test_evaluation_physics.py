"""Ultrasound physics metrics (ultrasound_diffusers.evaluation.physics) on synthetic images with known answers."""

import math

import numpy as np
import pytest

from ultrasound_diffusers.evaluation import physics as P
from ultrasound_diffusers.geometry import depth_map


def _fan(size=64):
    depth, inside = depth_map(size, size, "convex")
    return depth.numpy(), inside.numpy()


def test_reference_constants():
    assert P.RAYLEIGH_SNR == pytest.approx(1.913, abs=1e-3)
    assert P.LOG_RAYLEIGH_STD_DB == pytest.approx(5.57, abs=0.01)


def test_depth_profile_recovers_ramp_convex_and_linear():
    depth, inside = _fan()
    images = np.where(inside, 0.9 - 0.5 * depth, 0.0)[None].repeat(3, 0)
    prof = P.depth_intensity_profile(images, P.FanGeometry(), num_bins=16)
    valid = np.isfinite(prof["mean"])
    assert valid.sum() >= 14
    # each bin averages depths within its width (1/16): the mean follows 0.9 - 0.5 * centre to within half a bin
    np.testing.assert_allclose(prof["mean"][valid], 0.9 - 0.5 * prof["bin_centers"][valid], atol=0.5 / 32 + 1e-6)
    assert P.profile_slope(prof) == pytest.approx(-0.5, abs=0.03)
    assert np.allclose(prof["std"][valid], 0.0)
    rows = np.linspace(0, 1, 32)[:, None].repeat(32, 1)
    lin = P.depth_intensity_profile((0.2 + 0.6 * rows)[None], P.FanGeometry("linear"), num_bins=8)
    assert P.profile_slope(lin) == pytest.approx(0.6, abs=0.02)


def test_profile_distance_detects_attenuation_change():
    rng = np.random.default_rng(0)
    depth, inside = _fan()
    speckle = lambda n: rng.rayleigh(1.0, (n, 64, 64)) / math.sqrt(math.pi / 2)  # noqa: E731
    real = np.clip(0.5 * speckle(8) * inside, 0, 1)
    same = np.clip(0.5 * speckle(8) * inside, 0, 1)
    attenuated = np.clip(0.5 * speckle(8) * inside * (1 - 0.7 * depth), 0, 1)
    p_real, p_same, p_att = (P.depth_intensity_profile(x) for x in (real, same, attenuated))
    d_same, d_att = P.profile_distance(p_real, p_same), P.profile_distance(p_real, p_att)
    assert d_att["l1"] > 5 * d_same["l1"]
    assert d_att["mean_difference"] < 0
    assert P.profile_slope(p_att) < P.profile_slope(p_real) - 0.2
    # the shape distance ignores a global offset (an over-bright image with the same fall-off) but not a fall-off
    brighter = P.depth_intensity_profile(np.clip(real + 0.15 * inside, 0, 1))
    d_bright = P.profile_distance(p_real, brighter)
    assert d_bright["l1"] > 0.1 and d_bright["shape_l1"] < 0.2 * d_bright["l1"]
    assert d_att["shape_l1"] > 3 * d_same["shape_l1"] and d_att["shape_l1"] > d_bright["shape_l1"]


def test_speckle_rayleigh_and_log_compressed():
    rng = np.random.default_rng(1)
    envelope = rng.rayleigh(1.0, (4, 64, 64))
    stats = P.speckle_statistics(envelope / envelope.max(), window=16, min_mean=0.0)
    assert stats["num_windows"] > 40
    assert stats["snr_median"] == pytest.approx(P.RAYLEIGH_SNR, abs=0.12)
    # log compression over 60 dB; the envelope is recovered before the ratio, and the dB spread is ~5.57
    dr = 60.0
    display = np.clip(1 + 20 * np.log10(envelope / envelope.max()) / dr, 0, 1)
    log_stats = P.speckle_statistics(display, window=16, min_mean=0.0, dynamic_range_db=dr)
    assert log_stats["snr_median"] == pytest.approx(P.RAYLEIGH_SNR, abs=0.12)
    assert log_stats["db_std_median"] == pytest.approx(P.LOG_RAYLEIGH_STD_DB, abs=0.5)
    # without speckle (smooth image + weak noise) the ratio is far from 1.91
    smooth = 0.5 + 0.01 * rng.normal(size=(2, 64, 64))
    assert P.speckle_statistics(smooth, window=16)["snr_median"] > 20


def test_speckle_skips_edges_outside_regions_and_dark_windows():
    rng = np.random.default_rng(2)
    env = rng.rayleigh(1.0, (1, 64, 64)) / 4.0
    env[:, :, :28] *= 0.1  # dark left part (a cavity) and a strong edge at column 28
    stats = P.speckle_statistics(np.clip(env, 0, 1), window=8, min_mean=0.05)
    # only the bright windows right of the edge count: columns 32..63 -> 8 rows x 4 columns
    assert 0 < stats["num_windows"] <= 32
    assert stats["snr_median"] == pytest.approx(P.RAYLEIGH_SNR, abs=0.3)
    unfiltered = P.speckle_statistics(np.clip(env, 0, 1), window=8, min_mean=0.0, max_quadrant_ratio=1e6)
    assert unfiltered["num_windows"] == 64
    regions = np.zeros((64, 64), int)
    regions[:16, 32:] = 1
    assert P.speckle_statistics(np.clip(env, 0, 1), regions=regions, window=8)["num_windows"] <= 8
    with pytest.raises(ValueError, match="window"):
        P.speckle_statistics(env, window=5)


def _two_class(cavity, myo, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.full((4, 32, 32), 2)
    labels[:, 8:24, 8:24] = 3
    labels[:, 12:20, 12:20] = 1
    means = np.array([0.0, cavity, 0.4, myo, 0.0])
    images = np.clip(means[labels] * rng.rayleigh(1.0, labels.shape) / math.sqrt(math.pi / 2), 0, 1)
    return images, labels


def test_class_statistics_and_contrast_sign():
    images, labels = _two_class(cavity=0.05, myo=0.7)
    stats = P.class_intensity_statistics(images, labels)
    assert set(stats) == {"lv_cavity", "tissue", "myocardium"}
    assert stats["myocardium"]["mean"] > stats["lv_cavity"]["mean"]
    assert sum(s["pixel_fraction"] for s in stats.values()) == pytest.approx(1.0)
    contrast = P.class_contrasts(stats)
    assert contrast["myocardium_vs_lv_cavity"]["difference"] > 0.4
    assert contrast["myocardium_vs_lv_cavity"]["ratio_db"] > 10 and contrast["myocardium_vs_lv_cavity"]["cnr"] > 0
    assert "myocardium_vs_left_atrium" not in contrast  # class 4 absent
    flipped = P.class_contrasts(P.class_intensity_statistics(*_two_class(cavity=0.7, myo=0.05)))
    assert flipped["myocardium_vs_lv_cavity"]["difference"] < -0.4
    assert flipped["myocardium_vs_lv_cavity"]["cnr"] < 0


def test_outside_fan_signal():
    depth, inside = _fan(32)
    clean = np.where(inside, 0.5, 0.0)[None]
    leaky = clean + np.where(inside, 0.0, 0.2)[None]
    res_clean, res_leaky = P.outside_fan_signal(clean, inside), P.outside_fan_signal(leaky, inside)
    assert res_clean["mean_outside"] == 0 and res_clean["energy_fraction_outside"] == 0
    assert res_leaky["mean_outside"] == pytest.approx(0.2)
    expected = 0.2 * (~inside).sum() / (0.2 * (~inside).sum() + 0.5 * inside.sum())
    assert res_leaky["energy_fraction_outside"] == pytest.approx(expected)


def test_geometry_validation():
    with pytest.raises(ValueError, match="probe_geometry"):
        P.FanGeometry("phased")
    depth, inside = P.FanGeometry("linear").depth_and_mask(8, 4)
    assert inside.all() and depth[-1, 0] == 1.0
