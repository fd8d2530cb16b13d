"""GPU benchmark of the published configuration (issue 31): SDM ``sdm-128`` (145 M parameters) at 128 px.

Prints, in one run of at most ``--budget_s`` seconds (default 420, i.e. under 8 minutes with start-up):

* training images/s and peak memory at batch 4, 16 and 32 in fp32 / bf16 / fp16 (autocast with float32 weights,
  fp16 with loss scaling, as ``train_semantic.py --mixed_precision`` does through accelerate), eager and under
  ``torch.compile``, plus the time of the B-map schedule and hybrid loss alone (the part that is not the network);
* the speed levers, each against its baseline: TF32 for fp32, channels_last, regional compilation
  (``compile_repeated_blocks``) against compiling the whole UNet, the schedulers' per-pixel maths in float64
  against float32;
* sampling images/s at batch 64 with guidance 1.5 for 50 ancestral steps and for SDE-DPM-Solver++ at 20 steps
  (the fewest-call sampler of ``benchmarks/benchmark_solvers.py`` that keeps quality), in fp32 / bf16 / fp16;
* a correctness line: the bundled demo pipeline (trained weights) sampled in bf16 and fp16 against fp32 with the
  same seed: mean / max absolute difference of the images in [0, 1] and the count of non-finite values.

Configurations that no longer fit the time budget are printed as skipped. The weights of the benchmark network are
random (no trained ``sdm-128`` ships); throughput does not depend on them.

    python benchmarks/gpu_benchmark.py                 # on a CUDA GPU: writes benchmarks/results/gpu_<name>_<date>.txt
    python benchmarks/gpu_benchmark.py --cpu-smoke     # tiny sizes on the CPU (< 60 s), for CI; writes nothing

Without CUDA the CPU smoke mode runs automatically. Results are written to ``benchmarks/results/`` only when the
benchmark ran on a GPU (``--no_write`` to print only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ultrasound_diffusers import BMapAttenuationScheduler  # noqa: E402
from ultrasound_diffusers.losses import hybrid_loss  # noqa: E402
from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Settings:
    """What one run measures (the GPU run, or the CPU smoke run)."""

    preset: str
    overrides: dict
    size: int
    train_batches: List[int]
    train_precisions: List[str]
    train_steps: int
    warmup_steps: int
    compile_backend: Optional[str]
    sample_batch: int
    ancestral_steps: int
    solver_steps: int
    check_batch: int
    check_steps: int
    lever_batch: int


GPU = Settings(
    preset="sdm-128", overrides={}, size=128, train_batches=[4, 16, 32], train_precisions=["fp32", "bf16", "fp16"],
    train_steps=10, warmup_steps=3, compile_backend="inductor", sample_batch=64, ancestral_steps=50, solver_steps=20,
    check_batch=16, check_steps=50, lever_batch=16,
)
# The CPU smoke run: the same code paths at toy sizes (fp16 autocast training is a GPU feature: accelerate refuses
# it on a CPU, and so does this benchmark; dynamo traces with the "eager" backend, since inductor's CPU compile of
# even a tiny UNet takes minutes on two cores).
SMOKE = Settings(
    preset="tiny-64", overrides=dict(model_channels=16, num_head_channels=16, spade_hidden_channels=16, norm_num_groups=8), size=32,
    train_batches=[2], train_precisions=["fp32", "bf16"], train_steps=2, warmup_steps=1, compile_backend="eager",
    sample_batch=2, ancestral_steps=3, solver_steps=2, check_batch=2, check_steps=3, lever_batch=2,
)


@dataclass
class Report:
    """Printed lines, also kept for the results file."""

    lines: List[str] = field(default_factory=list)
    records: List[dict] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


class Budget:
    """Seconds left of the run's time budget."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), float(seconds)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


# ---------------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def fmt_mem(value: Optional[float]) -> str:
    return f"{value:.1f} GiB" if value is not None else "n/a"


def set_tf32(enabled: bool) -> None:
    """TF32 for matmuls and cuDNN convolutions (Ampere and later; no effect elsewhere)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def make_unet(settings: Settings, device: torch.device) -> SemanticUNet2DModel:
    unet = SemanticUNet2DModel.from_preset(settings.preset, sample_size=settings.size, **settings.overrides)
    # guided-diffusion starts some layers at zero; random values everywhere make every layer do work
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    return unet.to(device)


def training_batch(unet, scheduler, batch: int, size: int, device: torch.device, seed: int = 0):
    """Random images in [-1, 1], one-hot label maps, timesteps and noise, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    channels, classes = unet.config.in_channels, unet.config.num_classes
    x0 = (torch.rand(batch, channels, size, size, generator=g) * 2 - 1).to(device)
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    segmap = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float().to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=g).to(device)
    noise = torch.randn(batch, channels, size, size, generator=g).to(device)
    return x0, segmap, t, noise


def train_step(model, scheduler, optimizer, scaler, batch, amp_dtype, device) -> torch.Tensor:
    """One optimisation step as train_semantic.py takes it: add_noise, the UNet under autocast, the hybrid loss in
    float32, backward (scaled for fp16), AdamW."""
    x0, segmap, t, noise = batch
    noisy = scheduler.add_noise(x0, noise, t)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        output = model(noisy, t, segmap.to(amp_dtype) if amp_dtype else segmap).sample
    loss = hybrid_loss(scheduler, output.float(), x0, noise, noisy, t).loss
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return loss.detach()


def time_training(model, unet, scheduler, settings, batch_size, precision, device, memory_format=None) -> dict:
    """images/s over ``settings.train_steps`` steps after ``settings.warmup_steps`` (compilation included in the
    warm-up, reported separately), peak memory, and whether every loss was finite."""
    amp_dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    batch = training_batch(unet, scheduler, batch_size, settings.size, device)
    if memory_format is not None:
        batch = (batch[0].to(memory_format=memory_format), batch[1].to(memory_format=memory_format), *batch[2:])
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    losses = [train_step(model, scheduler, optimizer, scaler, batch, amp_dtype, device) for _ in range(settings.warmup_steps)]
    sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(settings.train_steps):
        losses.append(train_step(model, scheduler, optimizer, scaler, batch, amp_dtype, device))
    sync(device)
    elapsed = time.perf_counter() - start
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    del optimizer
    return dict(images_per_s=batch_size * settings.train_steps / elapsed, step_ms=1e3 * elapsed / settings.train_steps,
                warmup_s=warmup, peak_gib=peak_gib(device), finite=finite)


def time_schedule_and_loss(unet, scheduler, settings, batch_size, device, repeat: int = 3) -> float:
    """ms per step of the non-network part of a training step: add_noise and the hybrid loss (VB term included),
    on a fixed network output."""
    x0, segmap, t, noise = training_batch(unet, scheduler, batch_size, settings.size, device, seed=1)
    output = torch.randn(batch_size, unet.config.out_channels * (2 if unet.config.learn_sigma else 1),
                         settings.size, settings.size, device=device)
    times = []
    for i in range(repeat + 1):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,),
                          generator=torch.Generator().manual_seed(100 + i)).to(device)
        sync(device)
        start = time.perf_counter()
        noisy = scheduler.add_noise(x0, noise, t)
        hybrid_loss(scheduler, output, x0, noise, noisy, t).loss.item()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times[1:])[len(times[1:]) // 2]


def compile_model(unet, backend: str, regional: bool):
    if regional:
        unet.compile_repeated_blocks(backend=backend)
        return unet
    return torch.compile(unet, backend=backend)


def _raise_recompile_limit() -> None:
    # batch sizes x precisions are more graphs than dynamo's default limit of 8
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


# ---------------------------------------------------------------------------------------------------- sampling
def make_pipeline(unet, scheduler):
    from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline

    pipe = SemanticUltrasoundPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, maps, steps: int, sampler: str, seed: int = 0) -> torch.Tensor:
    from ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    pipe.scheduler = scheduler_for_sampler(sampler, pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    return pipe(maps, num_inference_steps=steps, guidance_scale=1.5, generator=generator, output_type="pt").images


def time_sampling(pipe, maps, steps: int, sampler: str, device) -> Tuple[float, bool]:
    sample(pipe, maps[:2], 2, sampler)  # warm-up (kernels, caches)
    sync(device)
    start = time.perf_counter()
    try:
        images = sample(pipe, maps, steps, sampler)
        finite = bool(torch.isfinite(images.float()).all())
    except ValueError as error:  # the pipeline refuses non-finite results
        if "NaN" not in str(error) and "infinite" not in str(error):
            raise
        finite = False
    sync(device)
    return len(maps) / (time.perf_counter() - start), finite


def time_scheduler_precision(settings: Settings, device, batch: int) -> Dict[str, float]:
    """ms per ``step`` of the B-map scheduler (ancestral, learned range) at ``batch`` x 128 px in float64 and
    float32 per-pixel maths (the package uses :func:`working_dtype`; float32 is measured by patching it)."""
    import ultrasound_diffusers.schedulers.scheduling_bmap_attenuation as module

    scheduler = BMapAttenuationScheduler.from_preset("camus-sdm")
    scheduler.set_timesteps(50)
    x = torch.randn(batch, 1, settings.size, settings.size, device=device, dtype=torch.bfloat16)
    out = torch.randn(batch, 2, settings.size, settings.size, device=device, dtype=torch.bfloat16)
    results = {}
    original = module._work_dtype
    try:
        for name, dtype in (("float64", None), ("float32", torch.float32)):
            if dtype is not None:
                module._work_dtype = lambda tensor, _d=dtype: _d
            steps = scheduler.timesteps[5:15]
            scheduler.step(out, steps[0], x)
            sync(device)
            start = time.perf_counter()
            for t in steps[1:]:
                scheduler.step(out, t, x)
            sync(device)
            results[name] = 1e3 * (time.perf_counter() - start) / (len(steps) - 1)
    finally:
        module._work_dtype = original
    return results


def correctness(device, settings: Settings, report: Report) -> None:
    """bf16 / fp16 against fp32 samples of the bundled demo pipeline (trained weights), same seed."""
    from ultrasound_diffusers import DiffusionPipeline
    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH, default_label_maps

    maps = default_label_maps(settings.check_batch, size=64)
    images = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        pipe = DiffusionPipeline.from_pretrained(str(DEMO_PIPELINE_PATH), torch_dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        try:
            images[name] = pipe(maps, num_inference_steps=settings.check_steps, generator=torch.Generator().manual_seed(0),
                                output_type="pt").images.float().cpu()
        except ValueError as error:
            images[name] = None
            report.say(f"correctness {name}: {error}")
    reference = images["fp32"]
    for name in ("bf16", "fp16"):
        if images[name] is None or reference is None:
            continue
        diff = (images[name] - reference).abs()
        nonfinite = int((~torch.isfinite(images[name])).sum())
        report.say(f"correctness {name} vs fp32 (demo pipeline, {settings.check_batch} images, {settings.check_steps} "
                   f"ancestral steps, seed 0): mean |diff| {float(diff.mean()):.2e}, max {float(diff.max()):.2e}, "
                   f"non-finite {nonfinite}")
        report.records.append(dict(kind="correctness", precision=name, mean_abs_diff=float(diff.mean()),
                                   max_abs_diff=float(diff.max()), nonfinite=nonfinite))


# ---------------------------------------------------------------------------------------------------- main
def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _train_row(report: Report, batch: int, precision: str, compile_mode: str, result: dict) -> None:
    report.say(f"{batch:>5} {precision:>9} {compile_mode:>9} {result['images_per_s']:>9.1f} {result['step_ms']:>8.1f} "
               f"{result['warmup_s']:>9.1f} {fmt_mem(result['peak_gib']):>9} {str(result['finite']):>6}")
    report.records.append(dict(kind="train", batch=batch, precision=precision, compile=compile_mode, **result))


def _find(report: Report, **keys) -> Optional[dict]:
    return next((r for r in report.records if all(r.get(k) == v for k, v in keys.items())), None)


def run(settings: Settings, device: torch.device, budget: Budget, report: Report, skip_compile: bool) -> None:
    """The sections in order of need, so that a tight budget drops the optional ones: eager training, the
    schedule's share, the cheap levers, sampling, correctness, then compiled training and regional compilation."""
    cuda = device.type == "cuda"
    scheduler = BMapAttenuationScheduler.from_preset("camus-sdm")
    unet = make_unet(settings, device)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    report.say(f"network: {settings.preset} ({params:.1f} M parameters) at {settings.size} px; "
               f"scheduler camus-sdm (T = 1000, learned-range variance, convex B-maps)")
    set_tf32(False)

    # ---- training, eager
    report.say("")
    report.say("training (AdamW, hybrid loss; fp16 with loss scaling; TF32 off unless stated)")
    report.say(f"{'batch':>5} {'precision':>9} {'compile':>9} {'images/s':>9} {'step ms':>8} {'warm-up s':>9} "
               f"{'peak mem':>9} {'finite':>6}")
    unet.train()
    for precision in settings.train_precisions:
        for batch in settings.train_batches:
            _train_row(report, batch, precision, "none", time_training(unet, unet, scheduler, settings, batch, precision, device))
    for batch in settings.train_batches:
        ms = time_schedule_and_loss(unet, scheduler, settings, batch, device)
        report.say(f"schedule + hybrid loss alone (add_noise, VB term; no network) at batch {batch}: {ms:.1f} ms")
        report.records.append(dict(kind="schedule_loss", batch=batch, ms=ms))

    # ---- cheap levers, each against its baseline
    report.say("")
    b = settings.lever_batch
    report.say(f"levers (training at batch {b} unless stated)")
    if cuda:
        set_tf32(True)
        tf32 = time_training(unet, unet, scheduler, settings, b, "fp32", device)
        set_tf32(False)
        base = _find(report, kind="train", batch=b, precision="fp32", compile="none")
        report.say(f"  TF32 (fp32 weights): {tf32['images_per_s']:.1f} images/s vs {base['images_per_s']:.1f} strict fp32")
        report.records.append(dict(kind="lever", lever="tf32", **tf32))
    base = _find(report, kind="train", batch=b, precision="bf16", compile="none")
    unet.to(memory_format=torch.channels_last)
    cl = time_training(unet, unet, scheduler, settings, b, "bf16", device, memory_format=torch.channels_last)
    unet.to(memory_format=torch.contiguous_format)
    report.say(f"  channels_last (bf16): {cl['images_per_s']:.1f} images/s vs {base['images_per_s']:.1f} contiguous")
    report.records.append(dict(kind="lever", lever="channels_last", **cl))
    precision_ms = time_scheduler_precision(settings, device, settings.sample_batch)
    report.say(f"  scheduler step at batch {settings.sample_batch} (per-pixel maths): float64 {precision_ms['float64']:.2f} ms, "
               f"float32 {precision_ms['float32']:.2f} ms")
    report.records.append(dict(kind="lever", lever="scheduler_precision", **precision_ms))

    # ---- sampling
    report.say("")
    report.say(f"sampling (batch {settings.sample_batch}, guidance 1.5: the network sees {2 * settings.sample_batch})")
    report.say(f"{'precision':>9} {'sampler':>22} {'images/s':>9} {'peak mem':>9} {'finite':>6}")
    unet.eval()
    pipe = make_pipeline(unet, scheduler)
    from ultrasound_diffusers.demo import default_label_maps

    maps = default_label_maps(settings.sample_batch, size=settings.size)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        pipe.unet.to(dtype=dtype)
        for sampler, steps in (("sde-dpm++", settings.solver_steps), ("ddpm", settings.ancestral_steps)):
            name = ("ancestral" if sampler == "ddpm" else "SDE-DPM-Solver++") + f" {steps}"
            if budget.left() < (60 if cuda else 5):
                report.say(f"{precision:>9} {name:>22}  skipped (time budget)")
                continue
            reset_peak(device)
            rate, finite = time_sampling(pipe, maps, steps, sampler, device)
            report.say(f"{precision:>9} {name:>22} {rate:>9.2f} {fmt_mem(peak_gib(device)):>9} {str(finite):>6}")
            report.records.append(dict(kind="sample", precision=precision, sampler=sampler, steps=steps,
                                       images_per_s=rate, finite=finite, peak_gib=peak_gib(device)))
    pipe.unet.to(dtype=torch.float32)
    unet.train()
    del pipe

    report.say("")
    correctness(device, settings, report)

    # ---- compiled training (each new precision / batch size compiles again: the warm-up column)
    if not settings.compile_backend or skip_compile:
        return
    report.say("")
    report.say(f"training under torch.compile (backend {settings.compile_backend})")
    _raise_recompile_limit()
    compiled = compile_model(unet, settings.compile_backend, regional=False)
    batches = sorted(settings.train_batches, key=lambda x: (x != b, -x))  # the lever batch first, then larger ones
    order = ["bf16", "fp16", "fp32"] if cuda else ["bf16"]  # CPU smoke: one traced configuration
    for precision in [p for p in order if p in settings.train_precisions]:
        for batch in batches:
            if budget.left() < (120 if cuda else 10):
                report.say(f"{batch:>5} {precision:>9} {'full':>9}  skipped (time budget)")
                continue
            _train_row(report, batch, precision, "full", time_training(compiled, unet, scheduler, settings, batch, precision, device))
    if cuda and budget.left() > 120:
        torch._dynamo.reset()
        regional_unet = make_unet(settings, device).train()
        compile_model(regional_unet, settings.compile_backend, regional=True)
        regional = time_training(regional_unet, regional_unet, scheduler, settings, b, "bf16", device)
        _train_row(report, b, "bf16", "regional", regional)
        del regional_unet
    else:
        report.say(f"{b:>5} {'bf16':>9} {'regional':>9}  skipped ({'time budget' if cuda else 'GPU only'})")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="time budget in seconds (default 420 on a GPU, 45 in smoke mode)")
    parser.add_argument("--skip_compile", action="store_true", help="no torch.compile measurements")
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"),
                        help="where a GPU run writes its table (default: benchmarks/results)")
    parser.add_argument("--no_write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import logging

    from diffusers.utils import logging as diffusers_logging

    # diffusers warns on every `unet.to(dtype)` (a list of fp32 modules, empty here), and dynamo logs each graph
    # break of the model's input checks (data-dependent `if`s before the network body) at every recompile
    diffusers_logging.set_verbosity_error()
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    settings = SMOKE if smoke else GPU
    budget = Budget(args.budget_s if args.budget_s is not None else (45 if smoke else 420))
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget_s must be positive, got {args.budget_s}")
    report = Report()
    report.say(f"gpu_benchmark ({'CPU smoke mode' if smoke else 'GPU'}): {describe_device(device)}; torch "
               f"{torch.__version__}, CUDA {torch.version.cuda}; {datetime.datetime.now().isoformat(timespec='seconds')}")
    torch.manual_seed(0)
    run(settings, device, budget, report, skip_compile=args.skip_compile)
    report.say("")
    report.say(f"total {time.perf_counter() - budget.start:.0f} s")

    if not smoke and not args.no_write:
        from ultrasound_diffusers.utils.io import atomic_write_text

        name = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-").lower()
        stem = f"gpu_{name}_{datetime.date.today().isoformat()}"
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/gpu_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
        atomic_write_text(folder / f"{stem}.txt", f"$ {command.strip()}\n" + "\n".join(report.lines) + "\n")
        atomic_write_text(folder / f"{stem}.json", json.dumps(report.records, indent=1, default=str) + "\n")
        print(f"wrote {folder / stem}.txt and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
