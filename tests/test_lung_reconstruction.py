"""Lung maps from RF data: paired dataset, DAS rule, DPS reconstruction with intervals, metrics, the CLI."""

import numpy as np
import pytest
import torch

from ultrasound_diffusers.lung_reconstruction import (
    DasMapRule,
    lung_rf_dataset,
    lung_rf_operator,
    map_metrics,
    parse_fmc_spec,
    prediction_interval,
    reconstruct_lung,
    simulate_rf,
)


@pytest.fixture(scope="module")
def sparse_op():
    return lung_rf_operator(4, 4)


@pytest.fixture(scope="module")
def maps():
    from ultrasound_diffusers.data.lung_media import lung_maps

    return lung_maps(6, seed=11)


def test_parse_fmc_spec():
    assert parse_fmc_spec("tx=8,rx=32,snr=5") == {"tx": 8, "rx": None, "snr": 5.0}
    assert parse_fmc_spec("") == {"tx": None, "rx": None, "snr": 20.0}
    for bad in ("tx=40", "snr=nan", "foo=1", "tx=2.5"):
        with pytest.raises(ValueError):
            parse_fmc_spec(bad)


def test_dataset_columns_and_round_trip(tmp_path, sparse_op, maps):
    import datasets

    ds = lung_rf_dataset(3, seed=5, maps=maps[0], categories=maps[1], operator=sparse_op, snr_db=15.0)
    assert ds.features["channels"].shape == (sparse_op.fmc.num_samples, 32, 32)
    ds.save_to_disk(str(tmp_path / "rf"))
    back = datasets.load_from_disk(str(tmp_path / "rf")).with_format("numpy")
    assert np.allclose(np.asarray(back["values"]), maps[0][:3])
    y = np.asarray(back["channels"])
    assert list(sparse_op.fmc.transmitters) == [4, 12, 20, 28]
    assert y.dtype == np.float32 and np.abs(y[:, :, 0, 0]).max() == 0 and np.abs(y[:, :, 4, 12]).max() > 0
    assert list(back["category"]) == list(maps[1][:3])
    # the same map and seed give the same data whatever the batch
    again, _ = simulate_rf(maps[0][:1], sparse_op, 15.0, seed=5)
    assert np.allclose(again[0], y[0])


def test_prediction_interval_covers_draws_from_the_same_distribution():
    rng = np.random.default_rng(0)
    draws = 0.5 + 0.05 * rng.standard_normal((9, 100, 100))  # per pixel: a "truth" and 8 posterior samples
    lower, upper = prediction_interval(draws[1:])
    inside = ((draws[0] >= lower) & (draws[0] <= upper)).mean()
    assert 0.88 < inside < 0.92
    # the empirical 5 % / 95 % quantiles of 8 samples would cover far less
    q_low, q_high = np.quantile(draws[1:], [0.05, 0.95], axis=0)
    assert ((draws[0] >= q_low) & (draws[0] <= q_high)).mean() < 0.8
    with pytest.raises(ValueError):
        prediction_interval(draws[:1])


def test_das_rule_and_metrics(sparse_op, maps):
    y, _ = simulate_rf(maps[0], sparse_op, 30.0)
    env = sparse_op.das_envelope(torch.from_numpy(y))
    assert env.shape == (6, 8, 256) and float(env.min()) >= 0
    rule = DasMapRule().fit(env, maps[0])
    pred = rule.predict(env)
    constant = np.broadcast_to(maps[0].mean(0), maps[0].shape)
    assert map_metrics(pred, maps[0])["mae"] < map_metrics(constant, maps[0])["mae"]
    perfect = map_metrics(maps[0], maps[0], maps[1], maps[0] - 0.01, maps[0] + 0.01)
    assert perfect["mae"] == 0 and perfect["coverage"] == 1 and perfect["category_accuracy"] == 1.0


def test_reconstruct_returns_mean_and_interval(sparse_op, maps):
    from _pipeline_fixtures import tiny_unconditional_pipeline
    from ultrasound_diffusers.pipelines.pipeline_ultrasound_reconstruction import UltrasoundReconstructionPipeline

    base = tiny_unconditional_pipeline(sample_size=(8, 256))
    pipe = UltrasoundReconstructionPipeline(unet=base.unet, scheduler=base.scheduler)
    pipe.set_progress_bar_config(disable=True)
    x = torch.from_numpy(maps[0][:1] * 2 - 1)[:, None]
    y = sparse_op.measure(x, generator=torch.Generator().manual_seed(0), snr_db=20.0)
    out = reconstruct_lung(pipe, y[0], sparse_op, num_samples=3, num_inference_steps=3)
    assert out["mean"].shape == out["lower"].shape == out["upper"].shape == (8, 256)
    assert out["samples"].shape == (3, 8, 256)
    assert np.all(out["lower"] <= out["mean"] + 1e-12) and np.all(out["mean"] <= out["upper"] + 1e-12)
    assert np.all((out["mean"] >= 0) & (out["mean"] <= 1))


def test_cli_reconstruct_lung(tmp_path, capsys):
    import json

    from _pipeline_fixtures import tiny_unconditional_pipeline
    from ultrasound_diffusers.cli import main

    tiny_unconditional_pipeline(sample_size=(8, 256)).save_pretrained(str(tmp_path / "lung_pipe"))
    out = tmp_path / "out"
    assert main(["reconstruct", "--pipeline", str(tmp_path / "lung_pipe"), "--operator", "fmc:tx=4,rx=4,snr=20",
                 "--image", "phantoms:lung:2:7", "--image_index", "1", "--num_samples", "2",
                 "--num_inference_steps", "2", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert "lung map 1 (seed 7" in summary["image"] and 0 <= summary["reconstruction_coverage"] <= 1
    assert (out / "reconstruction.png").is_file()
    with np.load(out / "reconstruction.npz") as data:
        assert data["mean"].shape == (8, 256) and data["samples"].shape == (2, 8, 256)
    capsys.readouterr()
    assert main(["reconstruct", "--pipeline", str(tmp_path / "lung_pipe"), "--operator", "fmc", "--image",
                 "phantoms:echo:1", "--output_dir", str(tmp_path / "o2")]) != 0
    assert "phantoms:lung" in capsys.readouterr().err


def test_run_lung_reconstruction_takes_reconstruction_settings(tmp_path):
    """The lung path reads its run from ``ReconstructionSettings`` (or its fields as keywords) like the B-mode
    path; ``method="pipeline-dps"`` stays reachable; bad input is refused naming the argument, before any work."""
    import json

    from _pipeline_fixtures import tiny_unconditional_pipeline
    from ultrasound_diffusers.lung_reconstruction import run_lung_reconstruction
    from ultrasound_diffusers.reconstruction import ReconstructionSettings

    pipe = tiny_unconditional_pipeline(sample_size=(8, 256))
    settings = ReconstructionSettings(num_samples=2, num_inference_steps=2, seed=3, noise_std=0.5)
    a = run_lung_reconstruction(pipe, "phantoms:lung:2:7", "fmc:tx=4,rx=4", settings, out=tmp_path / "a",
                                image_index=1)
    assert (a["num_samples"], a["num_inference_steps"], a["seed"], a["method"]) == (2, 2, 3, "dps")
    assert a["noise_std"] == 0.5 and a["snr_db"] is None and "lung map 1 (seed 7" in a["image"]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["reconstruction_mae"] == a["reconstruction_mae"]
    # the same run from keywords; the arrays are identical
    b = run_lung_reconstruction(pipe, "phantoms:lung:2:7", "fmc:tx=4,rx=4", out=tmp_path / "b", image_index=1,
                                num_samples=2, num_inference_steps=2, seed=3, noise_std=0.5)
    with np.load(tmp_path / "a" / "reconstruction.npz") as da, np.load(tmp_path / "b" / "reconstruction.npz") as db:
        np.testing.assert_array_equal(da["samples"], db["samples"])
    # the lung-only method (the pipeline's own DPS on the whitened data)
    c = run_lung_reconstruction(pipe, "phantoms:lung:2:7", "fmc:tx=4,rx=4", settings, out=tmp_path / "c",
                                method="pipeline-dps", num_samples=1, num_inference_steps=1)
    assert c["method"] == "pipeline-dps" and c["num_samples"] == 1
    for kwargs, error, match in [
        (dict(method="ddim"), ValueError, r"`method` \(--method\) must be one of .*pipeline-dps"),
        (dict(settings=0.5), TypeError, "`settings` must be a ReconstructionSettings"),
        (dict(num_samples=0), ValueError, "`num_samples`"),
        (dict(image_index=-1), ValueError, "`image_index`"),
        (dict(sampler="dps"), TypeError, "unknown reconstruction option"),
    ]:
        with pytest.raises(error, match=match):
            run_lung_reconstruction(pipe, "phantoms:lung:2:7", "fmc:tx=4,rx=4", out=tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()
