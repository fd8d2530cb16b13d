import math

import numpy as np
import pytest

from ultrasound_diffusers.data import phantoms as P
from ultrasound_diffusers.data.labels import NUM_ECHO_CLASSES
from ultrasound_diffusers.geometry import (
    CAMUS_FAN_APEX,
    CAMUS_FAN_HALF_ANGLE_DEG,
    CAMUS_FAN_RADII,
    depth_map,
    fan_mask,
)

RAYLEIGH_MEAN_OVER_STD = math.sqrt(math.pi / (4 - math.pi))  # 1.913
RAYLEIGH_LOG_STD_DB = 5.57

# physics without anything that would disturb the speckle statistics
# no attenuation, TGC, noise or texture; since issue 19 also no reverberation, fan-edge taper or grey map
# (grey_gamma=1 keeps the display linear in dB)
CLEAN = dict(attenuation_db_cm_mhz=0.0, tgc=0.0, noise_db=None, texture=0.0, reverberation_db=None, fan_edge_rolloff=0.0, grey_gamma=1.0, beam_spreading=0.0)


@pytest.mark.parametrize("size", [64, (48, 64), (80, 64)])
def test_echo_label_coding_and_fan(size):
    labels = P.phantom_label_maps(8, "echo", size, seed=0)
    H, W = P.parse_size(size)
    assert labels.shape == (8, H, W) and labels.dtype == np.uint8
    fan = fan_mask(H, W).numpy()
    assert set(np.unique(labels)) <= set(range(NUM_ECHO_CLASSES))
    assert (labels[:, ~fan] == 0).all(), "pixels outside the CAMUS fan must be 0"
    assert (labels[:, fan] != 0).all(), "pixels inside the fan must carry a class"
    if H >= W:  # the whole heart is visible: every map has LV, myocardium and LA
        for lab in labels:
            assert {1, 2, 3, 4} <= set(np.unique(lab))
    # LV cavity lies closer to the apex than the left atrium
    rows = np.arange(H)[None, :, None]
    lv_depth = (rows * (labels == 1)).sum((1, 2)) / np.maximum((labels == 1).sum((1, 2)), 1)
    la_depth = (rows * (labels == 4)).sum((1, 2)) / np.maximum((labels == 4).sum((1, 2)), 1)
    has_la = (labels == 4).any((1, 2))
    assert (lv_depth[has_la] < la_depth[has_la]).all()


def test_dataset_columns_determinism_and_prefix():
    ds = P.generate_phantoms(5, "echo", 32, seed=1)
    assert len(ds) == 5
    assert ds.features["image"].__class__.__name__ == "Image" and ds.features["label"].__class__.__name__ == "Image"
    row = ds[0]
    assert row["image"].mode == "L" and row["label"].mode == "L" and row["image"].size == (32, 32)
    assert row["anatomy"] == "echo" and row["probe_geometry"] == "convex" and row["seed"] == 1 and row["index"] == 0
    assert row["fan_apex_x"] == pytest.approx(CAMUS_FAN_APEX[0]) and row["fan_apex_y"] == pytest.approx(CAMUS_FAN_APEX[1])
    assert row["fan_radius_outer"] == pytest.approx(CAMUS_FAN_RADII[1])
    assert row["fan_half_angle_deg"] == pytest.approx(CAMUS_FAN_HALF_ANGLE_DEG)
    assert row["num_classes"] == NUM_ECHO_CLASSES

    images = np.stack([np.asarray(r["image"]) for r in ds])
    labels = np.stack([np.asarray(r["label"]) for r in ds])
    fan = fan_mask(32, 32).numpy()
    assert (images[:, ~fan] == 0).all() and images[:, fan].mean() > 20
    # the fast label path gives exactly the dataset's labels
    np.testing.assert_array_equal(labels, P.phantom_label_maps(5, "echo", 32, seed=1))
    # deterministic, prefix-stable, seed-dependent
    prefix = P.generate_phantoms(3, "echo", 32, seed=1)
    np.testing.assert_array_equal(images[:3], np.stack([np.asarray(r["image"]) for r in prefix]))
    other = P.generate_phantoms(2, "echo", 32, seed=2)
    assert not np.array_equal(images[:2], np.stack([np.asarray(r["image"]) for r in other]))
    # a later start continues the same sequence
    np.testing.assert_array_equal(P.phantom_label_maps(2, "echo", 32, seed=1, start=3), labels[3:])


def test_batching_does_not_change_examples():
    one = [b[0] for b in P.iter_phantom_batches(4, "echo", 32, seed=5, batch_size=1)]
    four = [b[0] for b in P.iter_phantom_batches(4, "echo", 32, seed=5, batch_size=4)]
    np.testing.assert_allclose(np.concatenate(one), np.concatenate(four), atol=1e-6)
    img, lab, meta = P.make_phantom("echo", 32, seed=5, index=2)
    np.testing.assert_allclose(img, np.concatenate(one)[2], atol=1e-6)


def test_echo_image_looks_like_an_echocardiogram():
    imgs, labs = [], []
    for images, labels, _ in P.iter_phantom_batches(6, "echo", 64, seed=3):
        imgs.append(images)
        labs.append(labels)
    imgs, labs = np.concatenate(imgs), np.concatenate(labs)
    assert imgs.dtype == np.float32 and imgs.min() >= 0 and imgs.max() <= 1
    blood = imgs[labs == 1].mean()
    myo = imgs[labs == 3].mean()
    la = imgs[labs == 4].mean()
    # calibrated display (issue 19): tissue is dark grey, blood darker still but not black
    assert myo - blood > 0.15 and myo > 5 * blood, "the LV cavity must be much darker than the myocardium"
    assert myo - la > 0.12
    assert blood > 0.002, "blood scatters weakly: the cavity is not pure black"
    assert imgs[labs == 3].std() > 0.05, "speckle: tissue is not flat"


def test_thyroid_phantom_linear_probe():
    ds = P.generate_phantoms(4, "thyroid", (48, 64), seed=0)
    labels = np.stack([np.asarray(r["label"]) for r in ds])
    images = np.stack([np.asarray(r["image"]) for r in ds]).astype(np.float32) / 255
    assert ds[0]["probe_geometry"] == "linear" and ds[0]["fan_apex_x"] is None and ds[0]["num_classes"] == 4
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    for lab in labels:
        assert {1, 2} <= set(np.unique(lab))
    assert (labels == 3).any()
    # the thyroid parenchyma is brighter than the vessel lumen, and no fan blanks the image
    assert images[labels == 1].mean() - images[labels == 2].mean() > 0.2
    assert (images > 0).mean() > 0.75
    assert (images[:, 1:6, :6].mean((1, 2)) > 0.1).all() and (images[:, 1:6, -6:].mean((1, 2)) > 0.1).all()  # top corners


def test_rectangular_convex_and_linear_echo():
    img, lab, meta = P.make_phantom("echo", (40, 72), seed=0, index=1)
    fan = fan_mask(40, 72).numpy()
    assert img.shape == lab.shape == (40, 72)
    assert (img[~fan] == 0).all() and (lab[~fan] == 0).all()
    img, lab, meta = P.make_phantom("echo", 48, seed=0, probe="linear")
    assert meta["probe_geometry"] == "linear" and (lab > 0).all()


def test_fully_developed_speckle_statistics():
    # envelope before log compression: Rayleigh, mean / std = 1.91
    rng = np.random.default_rng(0)
    env = P.simulate_envelope(np.ones((200, 200)), np.full((200, 200), 10.0), rng, sigma_axial=1.0, sigma_lateral=1.5)
    e = env[10:-10, 10:-10]
    assert e.mean() / e.std() == pytest.approx(RAYLEIGH_MEAN_OVER_STD, rel=0.04)
    assert np.std(20 * np.log10(e)) == pytest.approx(RAYLEIGH_LOG_STD_DB, abs=0.3)
    assert np.mean(e**2) == pytest.approx(1.0, rel=0.1)  # the PSF keeps the echogenicity

    # the same through the whole phantom pipeline (sector geometry, beam/depth grid)
    samples = []
    for seed in range(3):
        env = P.phantom_envelope("homogeneous", 96, seed=seed, **CLEAN)
        samples.append(env[env.shape[0] // 4 :, 4:-4].ravel())  # skip the apex (few independent speckles)
    e = np.concatenate(samples)
    assert e.mean() / e.std() == pytest.approx(RAYLEIGH_MEAN_OVER_STD, rel=0.05)

    # after log compression on a linear probe (no interpolation): std of 20 log10(envelope) = 5.57 dB
    # (render_scale=1: no area averaging, which would lower the std; a resolved PSF, as before issue 19)
    img, lab, meta = P.make_phantom("homogeneous", 64, seed=0, probe="linear", dynamic_range_db=60.0, gain_db=-15.0, reference_db=6.0, render_scale=1, min_psf_px=(0.7, 1.0), **CLEAN)
    patch = img[4:-4, 4:-4]
    assert 0.0 < patch.min() and patch.max() < 1.0  # nothing clipped
    assert patch.std() * 60.0 == pytest.approx(RAYLEIGH_LOG_STD_DB, abs=0.45)


def _depth_slope_db_per_cm(tgc, size=64, seeds=(0, 1), beam_spreading=0.0):
    dr = 120.0
    d, inside = (t.numpy() for t in depth_map(size, size, "convex"))
    depth_cm = d * P.DEFAULT_PROBES["homogeneous"].depth_cm
    sel = inside & (d > 0.15) & (d < 0.95)
    xs, ys = [], []
    for seed in seeds:
        img, _, _ = P.make_phantom(
            "homogeneous", size, seed=seed, tgc=tgc, noise_db=None, texture=0.0, dynamic_range_db=dr, gain_db=-20.0,
            grey_gamma=1.0, reverberation_db=None, beam_spreading=beam_spreading,
        )
        xs.append(depth_cm[sel])
        ys.append(img[sel] * dr)
    return np.polyfit(np.concatenate(xs), np.concatenate(ys), 1)[0]


def test_depth_attenuation_in_mean_depth_profile():
    probe = P.DEFAULT_PROBES["homogeneous"]
    expected = -2.0 * 0.5 * probe.center_frequency_mhz  # round trip, dB per cm of depth
    assert _depth_slope_db_per_cm(tgc=0.0) == pytest.approx(expected, rel=0.1)
    assert abs(_depth_slope_db_per_cm(tgc=1.0)) < 0.25  # full TGC flattens the profile
    assert _depth_slope_db_per_cm(tgc=0.5) == pytest.approx(expected / 2, rel=0.15)
    # the beam-spreading loss (the calibrated default, 2) darkens the far field further, which the TGC leaves
    assert _depth_slope_db_per_cm(tgc=1.0, beam_spreading=2.0) < -0.35  # flat (|slope| < 0.25) without it


def test_physics_helpers():
    probe = P.DEFAULT_PROBES["echo"]
    z = np.array([1.0, probe.focus_cm, 14.0])
    w = P.lateral_psf_sigma_cm(z, probe)
    assert w[1] < w[0] and w[1] < w[2], "the beam is narrowest at the focus"
    assert P.axial_psf_sigma_cm(dataclass_replace(probe, fractional_bandwidth=0.3)) > P.axial_psf_sigma_cm(probe)
    gain = P.tgc_gain_db(np.array([0.0, 5.0, 10.0]), (0.0, 20.0), 10.0, 2.5)
    np.testing.assert_allclose(gain, [0.0, 10.0, 20.0])
    np.testing.assert_allclose(P.log_compress(np.array([1.0, 0.1, 1e-6]), 40.0, 0.0, 0.0), [1.0, 0.5, 0.0], atol=1e-6)


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="anatomy"):
        P.generate_phantoms(1, "liver")
    with pytest.raises(ValueError, match="unknown physical parameters"):
        P.make_phantom("echo", 32, dynamic_range=50)
    with pytest.raises(ValueError, match="size"):
        P.make_phantom("echo", 4)
    with pytest.raises(ValueError, match="tgc"):
        P.make_phantom("echo", 32, tgc=1.5)
    with pytest.raises(ValueError, match="probe"):
        P.make_phantom("echo", 32, probe="phased-array")


def test_cli_phantoms(tmp_path):
    import datasets

    from ultrasound_diffusers.cli import main

    out, png, preview = tmp_path / "ds", tmp_path / "png", tmp_path / "grid.png"
    code = main(
        ["phantoms", "--num_images", "3", "--size", "32x40", "--seed", "4", "--output_dir", str(out),
         "--png_dir", str(png), "--preview", str(preview), "--num_validation_images", "2"]
    )
    assert code == 0
    dd = datasets.load_from_disk(str(out))
    assert len(dd["train"]) == 3 and len(dd["validation"]) == 2
    assert dd["validation"][0]["index"] == 3 and dd["train"][0]["image"].size == (40, 32)
    np.testing.assert_array_equal(np.asarray(dd["train"][1]["label"]), P.phantom_label_maps(2, "echo", (32, 40), seed=4)[1])
    assert len(list((png / "images").glob("*.png"))) == 3 and len(list((png / "labels").glob("*.png"))) == 3
    assert preview.stat().st_size > 0
