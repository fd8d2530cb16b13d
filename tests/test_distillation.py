"""Tests of training/train_consistency_distillation.py: its maths, a tiny run, and an exact resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_consistency_distillation.py"


@pytest.fixture(scope="module")
def cd():
    spec = importlib.util.spec_from_file_location("train_consistency_distillation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_and_teacher_step(cd):
    assert cd.ddim_grid(1000, 50).tolist()[:3] == [19, 39, 59] and int(cd.ddim_grid(1000, 50)[-1]) == 999
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        cd.ddim_grid(10, 20)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1, torch.randn(2, 1, 4, 4, generator=g)
    a_t, a_s = torch.full((2, 1, 4, 4), 0.3).double(), torch.linspace(0.5, 0.9, 16).view(1, 1, 4, 4).double()
    x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    v = a_t.sqrt() * eps - (1 - a_t).sqrt() * x0
    # with the exact prediction, the DDIM step lands on the same trajectory at every pixel's own level a_s(p)
    expected = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    torch.testing.assert_close(cd.teacher_ddim_step(v, x_t, a_t, a_s, "v_prediction"), expected)
    torch.testing.assert_close(cd.teacher_ddim_step(eps, x_t, a_t, a_s, "epsilon"), expected)


def test_loss_and_target_update(cd):
    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0)
    assert float(cd.distillation_loss(a, b, "l2")) == pytest.approx(9.0)
    assert float(cd.distillation_loss(a, b, "huber", 0.001)) == pytest.approx(3.0 - 0.001, abs=1e-5)
    target, online = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = target.weight.detach().clone()
    cd.update_target(target, online, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * online.weight.detach())


def test_bad_flags_name_the_flag(cd, saved, tmp_path):
    base = ["--teacher", str(saved), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--ema_decay"):
        cd.parse_args(base + ["--ema_decay", "1.5"])
    with pytest.raises(ValueError, match="--teacher"):
        cd.parse_args(["--teacher", str(tmp_path), "--output_dir", str(tmp_path / "out")])


def _run(cd, saved, out, steps, *extra):
    argv = ["--teacher", str(saved), "--output_dir", str(out), "--phantoms", "4", "--resolution", "16",
            "--train_batch_size", "2", "--max_train_steps", str(steps), "--checkpointing_steps", "1",
            "--checkpoints_total_limit", "3", "--num_ddim_timesteps", "10", "--learning_rate", "1e-3", *extra]
    assert cd.main(argv) == 0


def test_runs_saves_a_few_step_pipeline_and_resumes_exactly(cd, saved, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    from safetensors.torch import load_file

    from ultrasound_diffusers.pipelines import DiffusionPipeline
    from ultrasound_diffusers.schedulers import BMapConsistencyScheduler

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(cd, saved, straight, 3)
    _run(cd, saved, resumed, 2)
    assert (resumed / "checkpoint-2" / "unet_target").is_dir() and (resumed / "checkpoint-1").is_dir()
    _run(cd, saved, resumed, 3, "--resume_from_checkpoint", "latest")

    def weights(folder):
        return load_file(str(next((folder / "unet").glob("*.safetensors"))))

    a, b = weights(straight), weights(resumed)
    teacher = weights(saved)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)  # the resumed run is the straight run
    assert any(not torch.equal(a[k], teacher[k]) for k in a)  # and it trained

    pipe = DiffusionPipeline.from_pretrained(straight)
    assert isinstance(pipe.scheduler, BMapConsistencyScheduler)
    assert pipe.scheduler.config.original_inference_steps == 10
    assert "is distilled in" in (straight / "README.md").read_text()
    pipe.set_progress_bar_config(disable=True)
    from _pipeline_fixtures import echo_label_map

    images = pipe(echo_label_map(), num_inference_steps=2, guidance_scale=1.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(np.asarray(images)).all()


def test_heun_teacher_step_is_exact_on_the_true_path_and_second_order(cd):
    """The Heun teacher step (--teacher_solver heun): with an exact x0 prediction it stays on the trajectory (as the
    DDIM step does); on a probability-flow ODE whose x0 prediction drifts with the level, its error against a fine
    reference falls with the step size faster than the DDIM step's (second order against first)."""
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(1, 1, 4, 4, generator=g) * 2 - 1, torch.randn(1, 1, 4, 4, generator=g)
    a_t = torch.full((1, 1, 4, 4), 0.2).double()
    a_s = torch.linspace(0.4, 0.8, 16).view(1, 1, 4, 4).double()
    x_t = (a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps).float()
    levels = {0: a_t, 1: a_s}

    def exact(x, step):  # the epsilon a perfect model predicts: every pixel on the same (x0, eps) path
        a = levels[int(step[0])]
        return ((x.double() - a.sqrt() * x0) / (1 - a).sqrt()).float()

    t, s = torch.tensor([0]), torch.tensor([1])
    out = cd.teacher_heun_step(exact, x_t, t, s, a_t, a_s, "epsilon", clip=None)
    torch.testing.assert_close(out.double(), a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps, atol=1e-5, rtol=1e-5)

    # a model whose clean-image prediction moves with the level: x0_hat(a) = x0 * (1 + c * a); the ODE in DDIM
    # form dx/d(sigma) ... solved finely by many small DDIM steps is the reference
    c = 0.8

    def drifting(level):
        def predict(x, step):
            a = level(step)
            x0_hat = x0 * (1 + c * a)
            return ((x.double() - a.sqrt() * x0_hat) / (1 - a).sqrt()).float()
        return predict

    def solve(a0, a1, n, heun):
        x = (a0.sqrt() * x0 + (1 - a0).sqrt() * eps).float()
        grid = [a0 + (a1 - a0) * k / n for k in range(n + 1)]
        for k in range(n):
            lv = {0: grid[k], 1: grid[k + 1]}
            predict = drifting(lambda step: lv[int(step[0])])
            if heun:
                x = cd.teacher_heun_step(predict, x, t, s, grid[k], grid[k + 1], "epsilon", clip=None)
            else:
                x = cd.teacher_ddim_step(predict(x, t).double(), x.double(), grid[k], grid[k + 1], "epsilon", None).float()
        return x.double()

    a0, a1 = torch.full((1, 1, 4, 4), 0.2).double(), torch.full((1, 1, 4, 4), 0.9).double()
    reference = solve(a0, a1, 2000, heun=True)
    err = {(h, n): float((solve(a0, a1, n, heun=h) - reference).abs().max()) for h in (False, True) for n in (2, 4)}
    assert err[(True, 2)] < err[(False, 2)] and err[(True, 4)] < err[(False, 4)]
    assert err[(False, 2)] / err[(False, 4)] < 2.6 < err[(True, 2)] / err[(True, 4)]  # ~2x vs ~4x: orders 1 and 2


def test_the_ddim_teacher_step_recomputes_the_noise_unless_asked_not_to(cd, saved, tmp_path, monkeypatch):
    """--teacher_solver ddim: the consistent step (noise from the clipped clean image, the ddim-clipped sampler);
    ddim-model-noise: diffusers' step, for the runs documented before the fix."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("clipped_noise", False))
        return cd.ddim_step(*args, **kwargs)

    monkeypatch.setattr(cd, "teacher_ddim_step", recording)
    _run(cd, saved, tmp_path / "a", 1)
    _run(cd, saved, tmp_path / "b", 1, "--teacher_solver", "ddim-model-noise")
    assert seen == [True, False]
