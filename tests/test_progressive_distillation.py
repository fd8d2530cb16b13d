"""Tests of training/train_progressive_distillation.py and of ultrasound_diffusers.distillation's target: the
per-pixel maths, the nested grids, bad flags, a two-round run whose students sample, and exact resumes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ultrasound_diffusers.distillation import ddim_step, pin_background, progressive_target

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_progressive_distillation.py"


@pytest.fixture(scope="module")
def pd():
    spec = importlib.util.spec_from_file_location("train_progressive_distillation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def v_teacher(saved, tmp_path_factory):
    """The tiny saved pipeline with a v-prediction scheduler (random weights: what matters is the plumbing)."""
    folder = tmp_path_factory.mktemp("pd") / "tiny-v"
    shutil.copytree(saved, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["prediction_type"] = "v_prediction"
    path.write_text(json.dumps(config))
    return folder


def _levels(shape, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(shape, generator=g)).double()


def test_progressive_target_lands_the_one_step_on_the_two_steps_at_every_pixel():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 1, 4, 4, generator=g).double() * 2 - 1, torch.randn(2, 1, 4, 4, generator=g).double()
    a_t = _levels((2, 1, 4, 4), 0.05, 0.3, 1)  # a different level at every pixel, as under B-maps
    a_s = _levels((2, 1, 4, 4), 0.5, 0.9, 2)
    x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    # on the true path (x_s from the exact x0, eps), the target is that x0
    torch.testing.assert_close(progressive_target(x_t, a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps, a_t, a_s), x0)
    # for any x_s (a teacher's two steps land anywhere), the student's DDIM step with the target lands on it
    x_s = torch.randn(2, 1, 4, 4, generator=g).double()
    target = progressive_target(x_t, x_s, a_t, a_s)
    torch.testing.assert_close(ddim_step(target, x_t, a_t, a_s, "sample", clip=None), x_s)
    # the end of the chain (a_s = 1): the target is the teacher's last output itself
    torch.testing.assert_close(progressive_target(x_t, x_s, a_t, torch.ones_like(a_s)), x_s)
    # a scalar-level formula applied with one level per image would miss: the per-pixel levels matter
    wrong = progressive_target(x_t, x_s, a_t.mean().expand_as(a_t), a_s)
    assert (ddim_step(wrong, x_t, a_t, a_s, "sample", clip=None) - x_s).abs().max() > 1e-2


def test_clipped_noise_keeps_the_target_inside_the_clipped_predictions():
    """Two teacher steps that clip an out-of-range clean image: with the model's own noise beside the clipped image
    the implied target can leave [-1, 1] by far (what hazed the first progressive run); with the noise recomputed
    from the clipped image it is a convex combination of the two clipped predictions."""
    g = torch.Generator().manual_seed(4)
    shape = (1, 1, 8, 8)
    a_t, a_m, a_s = _levels(shape, 0.30, 0.35, 5), _levels(shape, 0.40, 0.45, 6), _levels(shape, 0.50, 0.55, 7)
    x_t = torch.randn(shape, generator=g).double()
    x0_first, x0_second = 1.8 * torch.randn(shape, generator=g).double(), 1.8 * torch.randn(shape, generator=g).double()
    from ultrasound_diffusers.schedulers.diffusion_math import model_output_from_original

    def two_steps(clipped_noise):
        v1 = model_output_from_original(x0_first, x_t, a_t, "v_prediction")
        x_m = ddim_step(v1, x_t, a_t, a_m, "v_prediction", clip=1.0, clipped_noise=clipped_noise)
        v2 = model_output_from_original(x0_second, x_m, a_m, "v_prediction")
        return progressive_target(x_t, ddim_step(v2, x_m, a_m, a_s, "v_prediction", clip=1.0, clipped_noise=clipped_noise), a_t, a_s)

    inside = two_steps(True)
    low = torch.minimum(x0_first.clamp(-1, 1), x0_second.clamp(-1, 1))
    high = torch.maximum(x0_first.clamp(-1, 1), x0_second.clamp(-1, 1))
    assert bool(((inside >= low - 1e-9) & (inside <= high + 1e-9)).all())
    assert float(two_steps(False).abs().max()) > 2.0


def test_pinned_background_removes_the_clipping_bias_and_touches_nothing_else():
    """Teacher estimates scattered around black outside the fan, clipped to [-1, 1]: their mean sits above -1 (the
    students' grey veil). Pinning sets exactly the background label's pixels to -1 and leaves the others; a label
    that is not black in the training images is refused, naming the flag."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    clean = torch.where(labels[:, None] == 0, -1.0, torch.rand(2, 1, 8, 8, generator=g) * 2 - 1).double()
    scattered = (clean + 0.05 * torch.randn(clean.shape, generator=g).double()).clamp(-1, 1)
    outside = (labels == 0)[:, None]
    assert float(scattered[outside].mean()) > -0.99  # the bias: clipping keeps the scatter above black only
    pinned = pin_background(scattered, labels, clean, background_label=0)
    assert bool((pinned[outside] == -1).all())
    torch.testing.assert_close(pinned[~outside], scattered[~outside])
    with pytest.raises(ValueError, match="--background_label 1"):
        pin_background(scattered, labels, clean, background_label=1)
    torch.testing.assert_close(pin_background(scattered, labels, clean, background_label=7), scattered)  # absent


def test_background_label_flag_pins_the_targets_of_a_run(pd, saved, v_teacher, tmp_path, monkeypatch):
    base = ["--teacher", str(saved), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--background_label"):
        pd.parse_args(base + ["--teacher_steps", "8", "--student_steps", "4", "--background_label", "-1"])
    assert pd.parse_args(base + ["--teacher_steps", "8", "--student_steps", "4"]).background_label is None
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    from safetensors.torch import load_file

    def trained(name, *extra):
        _run(pd, v_teacher, tmp_path / name, "--student_steps", "4", "--checkpointing_steps", "0", *extra)
        return load_file(str(next((tmp_path / name / "unet").glob("*.safetensors"))))

    plain, pinned = trained("plain"), trained("pinned", "--background_label", "0")
    assert any(not torch.equal(plain[k], pinned[k]) for k in plain)  # the loop trains on the pinned targets
    assert json.loads((tmp_path / "pinned" / "training_args.json").read_text())["background_label"] == 0
    wrong = ["--teacher", str(v_teacher), "--output_dir", str(tmp_path / "wrong"), "--phantoms", "4", "--resolution",
             "16", "--teacher_steps", "8", "--student_steps", "4", "--background_label", "2"]
    with pytest.raises(ValueError, match="--background_label 2"):  # the tissue label is not black: refused
        pd.train(wrong)


def test_rounds_steps_and_grids(pd):
    assert pd.round_sizes(64, 4) == [32, 16, 8, 4]
    assert pd.round_sizes(8, 4) == [4]
    for bad in ((48, 4), (4, 4), (12, 5)):
        with pytest.raises(ValueError, match="--teacher_steps"):
            pd.round_sizes(*bad)
    assert pd.parse_steps_per_round("300", 3) == [300, 300, 300]
    assert pd.parse_steps_per_round("1,2,3", 3) == [1, 2, 3]
    for bad in ("1,2", "0", "x"):
        with pytest.raises(ValueError, match="--steps_per_round"):
            pd.parse_steps_per_round(bad, 3)
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler

    scheduler = BMapAttenuationScheduler.from_config(pd.ddim_scheduler_config(BMapAttenuationScheduler().config))
    for n in (4, 8, 16, 32):
        coarse, mid = pd.nested_grids(scheduler, n)
        assert coarse[0] == 999 and coarse[-1] == -1 and len(coarse) == n + 1 and len(mid) == n
        assert bool((coarse[:-1] > mid).all() and (mid > coarse[1:]).all())
    assert pd.nested_grids(scheduler, 4)[0].tolist() == [999, 749, 499, 249, -1]


def test_bad_flags_and_an_epsilon_teacher_are_refused(pd, saved, tmp_path):
    base = ["--teacher", str(saved), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--steps_per_round"):
        pd.parse_args(base + ["--teacher_steps", "16", "--student_steps", "4", "--steps_per_round", "5,5,5"])
    with pytest.raises(ValueError, match="--teacher"):
        pd.parse_args(["--teacher", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--output_dir"):
        pd.parse_args(["--teacher", str(saved), "--output_dir", str(tmp_path / "mine")])
    with pytest.raises(ValueError, match="v_prediction"):  # the tiny pipeline predicts epsilon
        pd.train(base + ["--phantoms", "2", "--resolution", "16", "--teacher_steps", "8", "--student_steps", "4"])


def _run(pd, teacher, out, *extra):
    argv = ["--teacher", str(teacher), "--output_dir", str(out), "--phantoms", "4", "--resolution", "16",
            "--train_batch_size", "2", "--teacher_steps", "8", "--student_steps", "2", "--steps_per_round", "2",
            "--checkpointing_steps", "1", "--checkpoints_total_limit", "10", "--learning_rate", "1e-3", *extra]
    assert pd.main(argv) == 0


def test_two_rounds_save_samplers_and_resume_exactly(pd, v_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    from safetensors.torch import load_file

    from _pipeline_fixtures import echo_label_map
    from ultrasound_diffusers.pipelines import DiffusionPipeline

    straight = tmp_path / "straight"
    _run(pd, v_teacher, straight)
    for name in ("round-4", "round-2", "unet", "scheduler", "model_index.json", "training_args.json", "checkpoint-1",
                 "checkpoint-3", "checkpoint-4"):
        assert (straight / name).exists(), name

    def weights(folder):
        return load_file(str(next((folder / "unet").glob("*.safetensors"))))

    final, first, teacher = weights(straight), weights(straight / "round-4"), weights(v_teacher)
    assert any(not torch.equal(first[k], teacher[k]) for k in first)  # round 1 trained
    assert any(not torch.equal(final[k], first[k]) for k in final)  # and round 2 trained on
    for key in final:
        torch.testing.assert_close(final[key], weights(straight / "round-2")[key])

    # resumed mid round 1 (from checkpoint-1 alone) and mid round 2 (checkpoint-3 and the finished round's pipeline)
    for name, keep in (("from1", ["checkpoint-1"]), ("from3", ["checkpoint-3", "round-4"])):
        resumed = tmp_path / name
        resumed.mkdir()
        for entry in keep:
            shutil.copytree(straight / entry, resumed / entry)
        _run(pd, v_teacher, resumed, "--resume_from_checkpoint", "latest")
        again = weights(resumed)
        for key in final:
            torch.testing.assert_close(again[key], final[key], msg=f"{name}: {key}")

    pipe = DiffusionPipeline.from_pretrained(straight)
    assert pipe.scheduler.config.sampler == "ddim" and pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.scheduler.config.clip_sample is False  # the student learned unclipped, in-range predictions
    assert "num_inference_steps=2" in (straight / "README.md").read_text()
    pipe.set_progress_bar_config(disable=True)
    images = pipe(echo_label_map(), num_inference_steps=2, guidance_scale=1.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(np.asarray(images)).all()
