import math

import numpy as np
import pytest

from ultrasound_diffusers.data import phantoms as P
from ultrasound_diffusers.evaluation import realism as R


def _gaussian_speckle(shape, sigma, rng):
    """Intensity-like speckle: |complex white noise smoothed by a Gaussian of ``sigma`` px|."""
    import scipy.ndimage

    z = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    f = scipy.ndimage.gaussian_filter(z.real, sigma) + 1j * scipy.ndimage.gaussian_filter(z.imag, sigma)
    return np.abs(f)


def test_grey_level_stats_of_a_rayleigh_image():
    rng = np.random.default_rng(0)
    img = rng.rayleigh(0.1, size=(200, 200))
    s = R.grey_level_stats(img)
    assert s["grey_mean"] == pytest.approx(0.1 * math.sqrt(math.pi / 2), rel=0.02)
    assert s["grey_median"] == pytest.approx(0.1 * math.sqrt(2 * math.log(2)), rel=0.02)
    assert s["grey_skew"] == pytest.approx(0.631, abs=0.06)  # skew of the Rayleigh distribution
    assert s["frac_above_0p8"] == 0.0
    # a mask restricts the statistics to the scan area
    mask = np.zeros_like(img, bool)
    mask[:, :100] = True
    bright = img.copy()
    bright[:, 100:] = 1.0
    assert R.grey_level_stats(bright, mask)["grey_mean"] == pytest.approx(s["grey_mean"], rel=0.03)
    assert R.grey_level_stats(bright)["frac_above_0p8"] > 0.45


def test_homogeneous_windows_and_std():
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(0.2, 0.05, size=(100, 100)), 0, 1)
    wins = R.homogeneous_windows(img, window=10)
    assert len(wins) > 100  # everything is homogeneous
    assert R.homogeneous_std(img, window=10) == pytest.approx(0.05, rel=0.1)
    # a bright vertical band through window centres makes those windows inhomogeneous
    striped = img.copy()
    striped[:, 44:47] = 0.9
    assert all(not (c < 44 < c + s) for r, c, s in R.homogeneous_windows(striped, window=10))
    # dark (fluid) windows and windows touching the mask edge are excluded
    assert R.homogeneous_windows(img * 0.1, window=10) == []
    mask = np.zeros_like(img, bool)
    mask[20:60, 20:60] = True
    for r, c, s in R.homogeneous_windows(img, mask, window=10):
        assert r >= 22 and c >= 22 and r + s <= 58 and c + s <= 58


def test_autocorrelation_fwhm_of_known_speckle():
    rng = np.random.default_rng(2)
    # white noise: the autocorrelation drops to 0 at lag 1, so the interpolated FWHM is 1 pixel
    a, l = R.autocorrelation_fwhm(rng.random((64, 64)))
    assert a == pytest.approx(1.0, abs=0.1) and l == pytest.approx(1.0, abs=0.1)
    # Gaussian-filtered complex field: the intensity autocovariance is exp(-x^2 / (2 sigma^2)) for field
    # smoothing sigma, so the envelope's FWHM is close to 2.355 sigma; it grows with sigma and a filter
    # elongated along rows gives a larger axial width
    w2 = [R.autocorrelation_fwhm(_gaussian_speckle((96, 96), s, rng)) for s in (1.0, 2.0)]
    assert w2[1][0] > 1.6 * w2[0][0] and w2[1][1] > 1.6 * w2[0][1]
    assert w2[1][0] == pytest.approx(2.355 * 2.0, rel=0.25)
    import scipy.ndimage

    z = rng.standard_normal((96, 96)) + 1j * rng.standard_normal((96, 96))
    el = np.abs(scipy.ndimage.gaussian_filter(z.real, (3.0, 1.0)) + 1j * scipy.ndimage.gaussian_filter(z.imag, (3.0, 1.0)))
    ax, lat = R.autocorrelation_fwhm(el)
    assert ax > 2 * lat
    # a linear trend is removed, not counted as grain
    ramp = np.linspace(0, 1, 64)[:, None] * np.ones((1, 64))
    a_ramp, _ = R.autocorrelation_fwhm(0.3 * ramp + 0.05 * rng.random((64, 64)))
    assert a_ramp < 1.5
    with pytest.raises(ValueError, match="window"):
        R.autocorrelation_fwhm(np.zeros((2, 2)))


def test_speckle_grain_is_relative_to_depth():
    rng = np.random.default_rng(3)
    img = _gaussian_speckle((120, 120), 1.5, rng)
    img = 0.2 * img / img.mean()
    ax, lat = R.speckle_grain(img, window=24)
    fw, _ = R.autocorrelation_fwhm(img[:60, :60])
    assert ax == pytest.approx(fw / 120, rel=0.25)
    # the same texture in a scan area half as deep doubles the relative grain
    mask = np.zeros_like(img, bool)
    mask[:60] = True
    ax_half, _ = R.speckle_grain(img, mask, window=24)
    assert ax_half == pytest.approx(2 * ax, rel=0.25)


def test_depth_profile_and_far_field_falloff():
    ramp = np.linspace(1.0, 0.2, 100)[:, None] * np.ones((1, 50))
    p = R.depth_profile(ramp, num_bins=10)
    assert p.shape == (10,) and np.all(np.diff(p) < 0)
    assert R.far_field_falloff(ramp) == pytest.approx(np.mean(ramp[90:, 0]) / np.mean(ramp[:5, 0]), rel=0.02)
    assert R.far_field_falloff(ramp[::-1]) > 0.97  # the deepest tissue is the brightest
    # the profile starts at the first masked row
    mask = np.zeros_like(ramp, bool)
    mask[50:] = True
    assert R.depth_profile(ramp, mask, num_bins=5)[0] == pytest.approx(ramp[50:60, 0].mean(), rel=0.01)


def test_report_compare_and_errors():
    rng = np.random.default_rng(4)
    imgs = np.stack([_gaussian_speckle((64, 64), 1.0, rng) for _ in range(3)])
    imgs = 0.15 * imgs / imgs.mean()
    rep = R.realism_report(imgs)
    assert set(R.METRICS) <= set(rep) and len(rep["depth_profile"]) == 20
    cmp = R.compare_to_reference(rep, {"grey_mean": (0.0, 1.0), "grey_skew": (5.0, 6.0), "missing": (0, 1)})
    assert cmp["grey_mean"]["inside"] and not cmp["grey_skew"]["inside"] and not cmp["missing"]["inside"]
    assert R.compare_to_reference({"x": 1.05}, {"x": (0.0, 1.0)}, tolerance=0.1)["x"]["inside"]
    with pytest.raises(ValueError, match="images"):
        R.realism_report(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="masks"):
        R.realism_report(imgs, np.ones((5, 5), bool))


def test_reference_table():
    for res in (None, 64, 128):
        ranges = R.REAL_SCAN_RANGES[res]
        assert set(ranges) == set(R.METRICS)
        for lo, hi in ranges.values():
            assert 0.0 <= lo <= hi
    assert set(R.REAL_SCAN_STATS) == set(R.REAL_SCANS)
    # real scans are dark with a bright tail and fade in the far field
    r = R.REAL_SCAN_RANGES[128]
    assert r["grey_mean"][1] < 0.3 and r["grey_skew"][0] > 0.3 and r["far_field_falloff"][1] < 0.8
    assert R.reference_ranges(resolution=64, margin=0.0)["grey_mean"] == (
        min(s[64]["grey_mean"] for s in R.REAL_SCAN_STATS.values()),
        max(s[64]["grey_mean"] for s in R.REAL_SCAN_STATS.values()),
    )


@pytest.mark.parametrize("size", [64, 128])
def test_echo_phantoms_inside_real_ranges(size):
    imgs, labs = [], []
    for im, lab, _ in P.iter_phantom_batches(12 if size == 64 else 6, "echo", size, seed=0):
        imgs.append(im)
        labs.append(lab)
    imgs, labs = np.concatenate(imgs), np.concatenate(labs)
    rep = R.realism_report(imgs, labs > 0)
    cmp = R.compare_to_reference(rep, R.REAL_SCAN_RANGES[size])
    # known gaps at 64 px (reported on issue 19): window std and axial grain are slightly above the real range,
    # which at 64 px rests on few windows; they are held to 25 % above its top instead
    loose = {"homogeneous_std", "grain_axial_rel_depth"} if size == 64 else set()
    for key, c in cmp.items():
        if key in loose:
            assert c["value"] < 1.25 * c["high"], (key, c)
        else:
            assert c["inside"], (key, c)
    # the old generator's failures stay fixed: tissue is not mid-grey, the far field fades, and tissue fades over
    # the deepest 10 % (issue 32: it brightened there, a far-field ratio of 1.20, before the beam-spreading loss)
    assert rep["grey_mean"] < 0.25 and rep["far_field_falloff"] < 0.75 and rep["grey_skew"] > 0.4
    assert rep["far_field_ratio"] < 0.98


def test_labels_do_not_depend_on_the_rendering():
    a = P.phantom_label_maps(3, "echo", 48, seed=7)
    for scale in (1, 2):
        labs = np.concatenate([lab for _, lab, _ in P.iter_phantom_batches(3, "echo", 48, seed=7, render_scale=scale)])
        np.testing.assert_array_equal(a, labs)


def test_new_physics_switches():
    img, lab, _ = P.make_phantom("echo", 64, seed=0, index=1)
    blood = img[lab == 1]
    assert 0 < blood.mean() < 0.05, "blood scatters weakly"
    taper = P.fan_edge_taper(101, 0.1)
    assert taper[50] == 1.0 and taper[0] == pytest.approx(10 ** (-12 / 20), rel=1e-4) and np.all(np.diff(taper[:51]) >= 0)
    assert np.all(P.fan_edge_taper(11, 0.0) == 1.0)
    # reverberation brightens the near field of an otherwise dark homogeneous block
    kw = dict(attenuation_db_cm_mhz=0.0, tgc=0.0, noise_db=None, texture=0.0, grey_gamma=1.0, reference_db=30.0)
    on, lab, _ = P.make_phantom("homogeneous", 64, seed=0, reverberation_db=10.0, **kw)
    off, _, _ = P.make_phantom("homogeneous", 64, seed=0, reverberation_db=None, **kw)
    p_on, p_off = R.depth_profile(on, lab > 0), R.depth_profile(off, lab > 0)
    assert p_on[0] > p_off[0] + 0.05, "near-field bands"
    assert abs(p_on[10:].mean() - p_off[10:].mean()) < 0.01  # the far field is untouched (other speckle draw)
    for bad in (dict(render_scale=0), dict(render_scale=1.5), dict(grey_gamma=0.0), dict(fan_edge_rolloff=0.6), dict(boundary_blur_px=-1.0), dict(lateral_smoothing_px=-0.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            P.resolve_physics(**bad)


def test_real_scans_match_the_table():
    pytest.importorskip("pydicom", reason="pydicom is not installed (test extra)")
    data = pytest.importorskip("pydicom.data")
    try:
        path = data.get_testdata_file("US1_UNCR.dcm")
    except Exception:  # noqa: BLE001 - any failure to locate the file means the data package is absent
        path = None
    if path is None:
        pytest.skip("pydicom-data is not installed (test extra): the real US scans are unavailable")
    measured = R.measure_real_scans(resolutions=(128,))
    for name, by_res in measured.items():
        for key in R.METRICS:
            want = R.REAL_SCAN_STATS[name][128][key]
            got = by_res[128][key]
            assert got == pytest.approx(want, rel=0.02, abs=2e-4), (name, key)


def test_rib_shadow_darkens_a_wedge_without_touching_labels():
    imgs, labs = {}, {}
    for p in (0.0, 1.0):
        imgs[p], labs[p], _ = next(P.iter_phantom_batches(4, "echo", 64, seed=2, batch_size=4, rib_shadow_probability=p, noise_db=None))
    np.testing.assert_array_equal(labs[0.0], labs[1.0])
    # with a rib in every example the deep image is darker on average (the shadow), never brighter overall
    deep = (labs[0.0] > 0) & (np.arange(64)[None, :, None] > 20)
    assert imgs[1.0][deep].mean() < 0.97 * imgs[0.0][deep].mean()
    with pytest.raises(ValueError, match="rib_shadow_probability"):
        P.resolve_physics(rib_shadow_probability=1.5)


def test_evaluate_realism_section_against_real_ranges(tmp_path):
    """``evaluate --metrics realism``: each set's realism_report over the fan, checked against REAL_SCAN_RANGES."""
    from ultrasound_diffusers.evaluation.physics import FanGeometry
    from ultrasound_diffusers.evaluation.report import evaluate

    imgs = np.concatenate([im for im, _, _ in P.iter_phantom_batches(4, "echo", 64, seed=3)]).astype(np.float32)
    bright = np.clip(imgs * 4.0, 0.0, 1.0)  # a washed-out set: far too bright for a B-mode scan
    report = evaluate(imgs, bright, tmp_path / "rep", metrics="realism", progress=False)
    section = report["realism"]
    assert section["reference_resolution"] == 64 and set(section["sets"]) == {"real", "generated"}
    inside = FanGeometry().depth_and_mask(64, 64)[1]
    direct = R.realism_report(imgs, inside)
    for key in R.METRICS:
        assert section["sets"]["real"][key] == pytest.approx(direct[key], rel=1e-5, nan_ok=True), key
        assert section["inside_reference"]["real"][key]["low"] == R.REAL_SCAN_RANGES[64][key][0]
    assert section["inside_reference"]["real"]["grey_mean"]["inside"]
    assert section["inside_reference"]["real"]["far_field_falloff"]["inside"]
    for key in ("grey_mean", "frac_above_0p8"):
        assert not section["inside_reference"]["generated"][key]["inside"], key
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Realism" in md and "| grey_mean |" in md and "OUT" in md
    assert "realism: properties inside real-scan range" in md
    # no reference range at 32 px: values only, said so
    small = evaluate(imgs[:, ::2, ::2], imgs[:, ::2, ::2], tmp_path / "rep32", metrics="realism", progress=False)
    assert small["realism"]["reference_resolution"] is None and "no real-scan range" in small["realism"]["note"]


# ------------------------------------------------------------------ metrics that can fail (issue 32)
def _fan(size=128):
    yy, xx = np.mgrid[:size, :size].astype(float)
    r = np.hypot(yy, xx - size / 2)
    angle = np.degrees(np.arctan2(xx - size / 2, yy))
    return (r <= 0.97 * size) & (np.abs(angle) <= 35)


def _scans(gain, blur=0.8, contrast=1.5, n=4, seed=0):
    """Synthetic sector scans: smoothed Rayleigh speckle times a depth gain (with a bright chest-wall band in the
    first 10 % of the depth, as real apical views have)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    mask = _fan()
    depth = np.nan_to_num(R.normalised_depth(mask))
    images = []
    for _ in range(n):
        envelope = gaussian_filter(rng.rayleigh(1.0, mask.shape), blur)
        envelope /= envelope.mean()
        g = np.where(depth < 0.1, 2.2, gain(depth))
        images.append(np.clip(np.where(mask, 0.2 * g * (1 + contrast * (envelope - 1)), 0), 0, 1))
    return np.stack(images), np.broadcast_to(mask, (n,) + mask.shape)


def _fade(d):
    return 1.0 - 0.25 * np.clip((d - 0.5) / 0.5, 0, 1)


def _rise(d):  # 1.8-fold over the last 40 % of the depth, the U-shaped phantom profile of issue 32
    return 0.6 * (1.0 + 0.8 * np.clip((d - 0.6) / 0.4, 0, 1))


def test_normalised_depth_is_radial_in_a_sector_and_by_rows_in_a_rectangle():
    d = R.normalised_depth(_fan())
    assert np.nanmax(d) == pytest.approx(1.0) and np.nanmin(d) == pytest.approx(0.0)
    assert d[60, 64] == pytest.approx(60 / np.nanmax(np.hypot(*np.nonzero(_fan())[::-1] - np.array([[64], [0]]))), rel=0.05)
    rect = np.zeros((10, 6), bool)
    rect[2:8, 1:5] = True
    assert np.allclose(R.normalised_depth(rect)[2:8, 2], np.linspace(0, 1, 6))


def test_far_field_ratio_flags_a_rising_profile_that_far_field_falloff_misses():
    ranges = R.REAL_SCAN_RANGES[128]
    fade = R.realism_report(*_scans(_fade))
    rise = R.realism_report(*_scans(_rise))
    assert R.compare_to_reference(fade, ranges)["far_field_ratio"]["inside"]
    assert not R.compare_to_reference(rise, ranges)["far_field_ratio"]["inside"]
    assert rise["far_field_ratio"] > 1.3 > 0.9 > fade["far_field_ratio"]
    # the old definition (deepest bin over the near-field maximum) scores both inside the real range
    assert R.compare_to_reference(rise, ranges)["far_field_falloff"]["inside"]
    assert R.compare_to_reference(fade, ranges)["far_field_falloff"]["inside"]


def test_far_field_ratio_reads_tissue_only():
    """Dark pools (blood) at mid depth must not make the far field look bright: they are not tissue."""
    images, masks = _scans(_fade)
    depth = np.nan_to_num(R.normalised_depth(masks[0]))
    pooled = images.copy()
    pooled[:, (depth > 0.62) & (depth < 0.78) & (np.abs(np.arange(128) - 64) < 20)[None, :]] = 0.01
    assert R.far_field_ratio(pooled, masks) == pytest.approx(R.far_field_ratio(images, masks), rel=0.08)


@pytest.mark.parametrize("kind", ["despeckled", "too contrasted"])
def test_window_std_flags_despeckled_and_overcontrasted_images(kind):
    ranges = R.REAL_SCAN_RANGES[128]
    assert R.compare_to_reference(R.realism_report(*_scans(_fade)), ranges)["homogeneous_std"]["inside"]
    bad = _scans(_fade, blur=4.0) if kind == "despeckled" else _scans(_fade, contrast=3.5)
    assert not R.compare_to_reference(R.realism_report(*bad), ranges)["homogeneous_std"]["inside"]


def test_beam_spreading_is_what_makes_the_echo_far_field_fade_and_leaves_labels_alone():
    """Issue 32: without the beam-spreading loss (the look before it) the echo phantoms' tissue brightens over the
    deepest 10 % (ratio above 1); with the calibrated default it fades. Labels are byte-identical either way."""
    new = [b for b in P.iter_phantom_batches(8, "echo", 128, seed=0)]
    old = [b for b in P.iter_phantom_batches(8, "echo", 128, seed=0, beam_spreading=0.0, gain_db=0.0)]
    labels_new = np.concatenate([b[1] for b in new])
    labels_old = np.concatenate([b[1] for b in old])
    assert labels_new.tobytes() == labels_old.tobytes()
    ratio_new = R.far_field_ratio(np.concatenate([b[0] for b in new]), labels_new > 0)
    ratio_old = R.far_field_ratio(np.concatenate([b[0] for b in old]), labels_old > 0)
    assert ratio_old > 1.05 and ratio_new < 0.98, (ratio_old, ratio_new)


def test_beam_spreading_loss_is_zero_at_the_focus_and_grows_away_from_it():
    probe = P.resolve_probe("echo")
    z = np.array([0.0, 4.0, probe.focus_cm, 12.0, 15.0])
    loss = P.beam_spreading_loss_db(z, probe, 2.0)
    assert loss[2] == pytest.approx(0.0, abs=1e-9)
    assert loss[0] > loss[1] > 0 and loss[4] > loss[3] > 0
    # one power of the beam width per focused dimension: exponent 1 is half of exponent 2, exponent 0 is off
    assert np.allclose(P.beam_spreading_loss_db(z, probe, 1.0), loss / 2)
    assert not P.beam_spreading_loss_db(z, probe, 0.0).any()
    # energy conservation: a beam twice as wide returns half the speckle power per dimension (3 dB)
    width = P.lateral_psf_sigma_cm(z, probe)
    assert np.allclose(loss, 20.0 * np.log10(width / width[2]))
    with pytest.raises(ValueError, match="beam_spreading"):
        P.PhysicsParameters(beam_spreading=float("nan"))
    with pytest.raises(ValueError, match="gain_db"):
        P.PhysicsParameters(gain_db=float("inf"))
