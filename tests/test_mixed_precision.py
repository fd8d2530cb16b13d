"""Mixed precision end to end on CPU (issue 31): bf16 training through accelerate, bf16 / fp16 sampling, the
schedulers' dtypes.

What would fail if a component silently ran in the wrong dtype:
* training: the UNet's convolutions must run in bfloat16 under ``--mixed_precision bf16`` (a global forward hook
  records their output dtypes), the loss must be float32 and finite, the saved weights float32 and different from
  a float32 run's (same seed); fp16 on a CPU, where accelerate would train in float32 without saying so, is refused.
* sampling: the network's parameters and the latents of every step are in the pipeline's dtype, the outputs finite;
  a bf16 / fp16 sample agrees with the float32 sample of the same seed within a stated tolerance, and is not
  bit-identical to it (which would mean the dtype was ignored).
* schedulers: ``step`` / ``add_noise`` return the sample's dtype, and their maths is not done in that dtype.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ultrasound_diffusers import BMapAttenuationScheduler, BMapDPMSolverMultistepScheduler
from ultrasound_diffusers.schedulers.diffusion_math import working_dtype

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_semantic.py"

# Measured with this module's settings (bundled demo pipeline, 2 label maps, 10 ancestral steps, seed 0, torch
# 2.13 CPU): mean |bf16 - fp32| = 6.8e-4 (max 6.6e-3), mean |fp16 - fp32| = 7.9e-5 (max 4.4e-4), on images in
# [0, 1]. The bounds leave a 5x margin.
SAMPLE_TOLERANCE = {torch.bfloat16: 3.5e-3, torch.float16: 4e-4}


# ---------------------------------------------------------------------------------------------------- schedulers
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kind", ["ancestral", "ddim", "dpm++", "sde-dpm++"])
def test_scheduler_returns_the_sample_dtype(kind, dtype):
    base = BMapAttenuationScheduler(num_train_timesteps=100, variance_type="learned_range", bmap_min=0.9)
    if kind in ("ancestral", "ddim"):
        scheduler = BMapAttenuationScheduler.from_config(base.config, sampler="ddpm" if kind == "ancestral" else "ddim")
    else:
        algorithm = "dpmsolver++" if kind == "dpm++" else "sde-dpmsolver++"
        scheduler = BMapDPMSolverMultistepScheduler.from_config(base.config, algorithm_type=algorithm)
    scheduler.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(2, 1, 12, 16, generator=g)
    out32 = torch.randn(2, 2, 12, 16, generator=g) * 0.5  # prediction and variance channels
    x, out = x32.to(dtype), out32.to(dtype)
    reference = BMapAttenuationScheduler.from_config(scheduler.config) if kind in ("ancestral", "ddim") else \
        BMapDPMSolverMultistepScheduler.from_config(scheduler.config)
    reference.set_timesteps(4)
    for t in scheduler.timesteps[:3]:
        noise = torch.randn(x.shape, generator=g).to(dtype)
        step = scheduler.step(out, t, x, variance_noise=noise)
        ref = reference.step(out.to(torch.float64), t, x.to(torch.float64), variance_noise=noise.to(torch.float64))
        assert step.prev_sample.dtype == dtype and step.prev_sample.shape == x.shape
        assert torch.isfinite(step.prev_sample.float()).all()
        # The update is computed in float64 from the rounded inputs: only the final cast to `dtype` differs.
        # (Doing the maths in bfloat16 would miss by far more than one rounding.)
        expected = ref.prev_sample.to(dtype)
        ulp = torch.finfo(dtype).eps * ref.prev_sample.abs().clamp(min=1.0)
        assert ((step.prev_sample.double() - expected.double()).abs() <= ulp).all()
        x = step.prev_sample
    noisy = scheduler.add_noise(x32.to(dtype), out32[:, :1].to(dtype), torch.tensor([10, 90]))
    assert noisy.dtype == dtype


def test_working_dtype_by_device():
    assert working_dtype(None) == torch.float64
    assert working_dtype("cpu") == torch.float64
    assert working_dtype(torch.device("cuda", 0)) == torch.float64
    assert working_dtype("mps") == torch.float32  # MPS has no float64 kernels
    assert working_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float64


def test_hybrid_loss_is_float32_under_autocast():
    from ultrasound_diffusers.losses import hybrid_loss

    scheduler = BMapAttenuationScheduler(num_train_timesteps=50, variance_type="learned_range")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, torch.randn(2, 1, 8, 8, generator=g)
    t = torch.tensor([0, 30])
    x_t = scheduler.add_noise(x0, noise, t)
    output = torch.randn(2, 2, 8, 8, generator=g, requires_grad=True)
    plain = hybrid_loss(scheduler, output, x0, noise, x_t, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = hybrid_loss(scheduler, output.to(torch.bfloat16), x0, noise, x_t, t)
    for terms in (plain, mixed):
        assert terms.loss.dtype == terms.mse.dtype == terms.vb.dtype == torch.float32
        assert torch.isfinite(terms.loss)
    mixed.loss.backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()
    # the only difference is the bf16 rounding of the network output
    rounded = hybrid_loss(scheduler, output.detach().to(torch.bfloat16).float(), x0, noise, x_t, t)
    torch.testing.assert_close(mixed.loss, rounded.loss, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def demo_samples():
    """fp32, bf16 and fp16 samples of the bundled demo pipeline (trained weights: a meaningful comparison), with the
    dtypes seen by the network and the latents of every step."""
    from ultrasound_diffusers import DiffusionPipeline
    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH, default_label_maps

    maps = default_label_maps(2, size=64)
    results = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        pipe = DiffusionPipeline.from_pretrained(str(DEMO_PIPELINE_PATH), torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        seen = []

        def record(pipeline, step, timestep, tensors):
            seen.append((tensors["latents"].dtype, bool(torch.isfinite(tensors["latents"].float()).all())))
            return tensors

        images = pipe(maps, num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="pt",
                      callback_on_step_end=record).images
        results[dtype] = dict(images=images, latents=seen, params={p.dtype for p in pipe.unet.parameters()})
    return results


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_sampling_agrees_with_float32(demo_samples, dtype):
    ref, got = demo_samples[torch.float32], demo_samples[dtype]
    assert got["params"] == {dtype}
    assert len(got["latents"]) == 10 and all(d == dtype and finite for d, finite in got["latents"])
    assert ref["latents"][0][0] == torch.float32
    images = got["images"].float()
    assert torch.isfinite(images).all() and images.shape == ref["images"].shape
    diff = (images - ref["images"].float()).abs()
    assert 0 < float(diff.mean()) < SAMPLE_TOLERANCE[dtype], float(diff.mean())


def test_pipe_to_dtype_and_dpm_solver_in_bf16(pipe):
    from ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    original = pipe.scheduler
    try:
        pipe.to(dtype=torch.bfloat16)
        assert pipe.unet.dtype == torch.bfloat16
        pipe.scheduler = scheduler_for_sampler("sde-dpm++", original.config)
        seen = []
        out = pipe(np.zeros((16, 16), np.uint8), num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                   output_type="np", callback_on_step_end=lambda p, i, t, k: seen.append(k["latents"].dtype) or k)
        assert seen == [torch.bfloat16] * 4
        assert out.images.dtype == np.float32 and np.isfinite(out.images).all()
    finally:
        pipe.to(dtype=torch.float32)
        pipe.scheduler = original


def test_generate_command_dtype(saved, tmp_path):
    from datasets import load_from_disk

    from ultrasound_diffusers.cli import main as cli

    images = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        code = cli(["generate", "--pipeline", str(saved), "--labels", "phantoms:echo:1", "--output_dir", str(out),
                    "--num_inference_steps", "3", "--dtype", dtype, "--no_progress"])
        assert code == 0
        ds = load_from_disk(str(out / "dataset"))
        images[dtype] = np.asarray(ds[0]["image"], dtype=np.float64)
    diff = np.abs(images["bfloat16"] - images["float32"])
    assert np.isfinite(images["bfloat16"]).all()
    assert diff.max() > 0  # the dtype was applied
    assert diff.mean() < 0.05 * 255


# ---------------------------------------------------------------------------------------------------- training
_TRAIN_DRIVER = """
import json, sys, importlib.util
import numpy as np, torch, datasets
from PIL import Image
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
import ultrasound_diffusers.losses as losses

root, script = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(1)
images, labels = [], []
for _ in range(8):
    lab = np.zeros((16, 16), np.uint8); lab[2:9, 3:10] = 1; lab[11:, :] = 2
    images.append(Image.fromarray((rng.random((16, 16)) * 60 + lab * 70).astype(np.uint8)))
    labels.append(Image.fromarray(lab))
features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(root + "/ds")
json.dump(dict(model_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[2],
               num_head_channels=16, norm_num_groups=8, spade_hidden_channels=16), open(root + "/tiny.json", "w"))

spec = importlib.util.spec_from_file_location("train_semantic", script)
ts = importlib.util.module_from_spec(spec); spec.loader.exec_module(ts)

record = {"conv": set(), "loss": []}
def hook(module, inputs, output):
    if isinstance(module, torch.nn.Conv2d):
        record["conv"].add(str(output.dtype))
torch.nn.modules.module.register_module_forward_hook(hook)
original = losses.hybrid_loss
def spy(*args, **kwargs):
    terms = original(*args, **kwargs)
    record["loss"].append([str(terms.loss.dtype), float(terms.loss)])
    return terms
losses.hybrid_loss = spy

report = {}
for mode in ("no", "bf16", "fp16"):
    record["conv"].clear(); record["loss"].clear()
    out = f"{root}/out_{mode}"
    args = ["--dataset_name", root + "/ds", "--model_config", root + "/tiny.json", "--resolution", "16",
            "--num_train_timesteps", "50", "--train_batch_size", "4", "--max_train_steps", "3", "--seed", "7",
            "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--checkpointing_steps", "0",
            "--validation_steps", "0", "--logger", "none", "--output_dir", out, "--mixed_precision", mode]
    try:
        ts.train(args)
        weights = load_file(out + "/unet/diffusion_pytorch_model.safetensors")
        torch.save(weights, f"{root}/weights_{mode}.pt")
        report[mode] = {"conv": sorted(record["conv"]), "loss": list(record["loss"]),
                        "weights": sorted({str(v.dtype) for v in weights.values()})}
    except ValueError as error:
        report[mode] = {"error": str(error)}
    AcceleratorState._reset_state(True)
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
def test_bf16_training_runs_in_bf16_and_saves_float32(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_TRAIN_DRIVER), str(tmp_path), str(SCRIPT)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads([x for x in result.stdout.splitlines() if x.startswith("REPORT")][-1][len("REPORT"):])

    plain, bf16, fp16 = report["no"], report["bf16"], report["fp16"]
    assert plain["conv"] == ["torch.float32"]
    assert bf16["conv"] == ["torch.bfloat16"]  # the UNet really ran under bf16 autocast
    for run in (plain, bf16):
        assert len(run["loss"]) == 3
        assert all(dtype == "torch.float32" and np.isfinite(value) for dtype, value in run["loss"])
        assert run["weights"] == ["torch.float32"]
    # same seed, same data: the runs differ only by the bf16 rounding, a little
    w32, w16 = torch.load(tmp_path / "weights_no.pt", weights_only=True), torch.load(tmp_path / "weights_bf16.pt", weights_only=True)
    diffs = [float((w32[k] - w16[k]).abs().max()) for k in w32]
    assert max(diffs) > 0, "bf16 training gave bit-identical weights: autocast did not run"
    assert max(diffs) < 1e-2, max(diffs)
    assert abs(plain["loss"][0][1] - bf16["loss"][0][1]) < 0.05 * abs(plain["loss"][0][1])
    # fp16 on a CPU: accelerate has no fp16 autocast there and would train in float32; the script refuses
    assert "--mixed_precision fp16" in fp16["error"] and "bf16" in fp16["error"]
    assert not (tmp_path / "out_fp16").exists()
