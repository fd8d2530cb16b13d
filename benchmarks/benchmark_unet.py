"""Speed and memory of SemanticUNet2DModel presets on this machine.

For each preset, image size and gradient-checkpointing setting it prints: parameters, median forward time
(no grad), the same inside ``label_feature_cache`` after its first call (a sampling step: the SPADE label features
reused), forward+backward time, a full training step (forward, backward, AdamW) and the peak resident
memory of forward and of forward+backward above the memory held by the model and inputs. Every
configuration runs in its own subprocess so that the peak-memory numbers do not leak between rows.

    python benchmarks/benchmark_unet.py                                  # tiny-64 and sdm-128 at 64 and 128 px
    python benchmarks/benchmark_unet.py --presets tiny-64 --sizes 64 --batch_size 4 --repeats 5

Peak memory is read from ``getrusage`` (Linux/macOS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_mb()


def _peak_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def worker(spec: dict) -> dict:
    import torch

    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = SemanticUNet2DModel.from_preset(spec["preset"], sample_size=spec["size"])
    cfg = model.config
    b, size = spec["batch_size"], spec["size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.randn(b, cfg.in_channels, h, w)
    t = torch.randint(0, 1000, (b,))
    seg = torch.randint(0, cfg.num_classes, (b, h, w)) if cfg.num_classes else None
    target = torch.randn(b, cfg.out_channels * (2 if cfg.learn_sigma else 1), h, w)
    if spec["checkpointing"]:
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward():
        with torch.no_grad():
            model(x, t, seg)

    def forward_backward():
        loss = torch.nn.functional.mse_loss(model(x, t, seg).sample, target)
        loss.backward()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        optimizer.step()

    model.eval()
    base = _rss_mb()
    forward()
    peak_forward = _peak_mb() - base
    model.train()
    forward_backward()
    model.zero_grad(set_to_none=True)
    peak_train = _peak_mb() - base

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    model.eval()
    t_forward = timed(forward)
    with model.label_feature_cache():  # timed()'s warm-up call fills it; the timed calls are sampling steps
        t_cached = timed(forward)
    model.train()
    t_fb = timed(forward_backward)
    t_step = timed(train_step)
    return dict(
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        forward_s=t_forward,
        forward_cached_s=t_cached,
        forward_backward_s=t_fb,
        train_step_s=t_step,
        peak_forward_mb=peak_forward,
        peak_forward_backward_mb=peak_train,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny-64", "sdm-128"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--checkpointing", choices=["both", "on", "off"], default="both")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker:
        print(json.dumps(worker(json.loads(args._worker))))
        return 0

    modes = {"both": [False, True], "on": [True], "off": [False]}[args.checkpointing]
    header = (
        f"{'preset':<10} {'size':>5} {'ckpt':>5} {'params':>8} {'fwd s':>8} {'cached':>8} {'fwd+bwd s':>10} {'step s':>8} "
        f"{'fwd MB':>8} {'fwd+bwd MB':>11}"
    )
    print(f"batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats} runs after one warm-up")
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        for size in args.sizes:
            for ckpt in modes:
                spec = dict(preset=preset, size=size, checkpointing=ckpt, batch_size=args.batch_size,
                            repeats=args.repeats, threads=args.threads)
                proc = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)],
                    capture_output=True, text=True,
                )
                if proc.returncode != 0:
                    print(f"{preset:<10} {size:>5} {str(ckpt):>5} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(
                    f"{preset:<10} {size:>5} {('on' if ckpt else 'off'):>5} {r['params_m']:>7.1f}M "
                    f"{r['forward_s']:>8.3f} {r['forward_cached_s']:>8.3f} {r['forward_backward_s']:>10.3f} {r['train_step_s']:>8.3f} "
                    f"{r['peak_forward_mb']:>8.0f} {r['peak_forward_backward_mb']:>11.0f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
