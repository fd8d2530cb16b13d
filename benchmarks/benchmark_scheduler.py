"""Benchmark of BMapAttenuationScheduler: schedule memory, construction time, step time vs a small UNet.

Run: ``python benchmarks/benchmark_scheduler.py`` (prints a table; nothing is asserted).
The published B-map code holds six float32 [T, 3, H, W] tensors: ~1.2 GB at 128 px, ~4.7 GB at 256 px.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDPMScheduler, UNet2DModel

from ultrasound_diffusers import BMapAttenuationScheduler
from ultrasound_diffusers.utils.memory import tensor_nbytes


def time_it(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--num_train_timesteps", type=int, default=1000)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    T = args.num_train_timesteps
    print(f"T = {T}, {args.num_inference_steps} inference steps, torch threads = {torch.get_num_threads()}")
    header = f"{'size':>6} {'memory MB':>10} {'published MB':>13} {'build s':>8} {'step ms':>8} {'DDPM step ms':>13} {'UNet fwd ms':>12} {'step/fwd':>9}"
    print(header)
    for size in [int(s) for s in args.sizes.split(",")]:
        shape = (1, 1, size, size)
        start = time.perf_counter()
        sched = BMapAttenuationScheduler(num_train_timesteps=T)
        sched.signal_level(T - 1, shape)  # builds the depth grid and the first cumulative map
        build = time.perf_counter() - start
        sched.set_timesteps(args.num_inference_steps)
        x = torch.randn(shape)
        out = torch.randn(shape)
        # a full sampling pass, then a training-style batch of random steps
        for t in sched.timesteps:
            sched.step(out, t, x)
        sched.add_noise(torch.randn(4, 1, size, size), torch.randn(4, 1, size, size), torch.randint(0, T, (4,)))
        memory = tensor_nbytes(sched) / 2**20
        published = 6 * T * 3 * size * size * 4 / 2**20
        steps = list(sched.timesteps)
        it = iter(range(10**9))
        step_time = time_it(lambda: sched.step(out, steps[next(it) % len(steps)], x), 20)
        ddpm = DDPMScheduler(num_train_timesteps=T)
        ddpm.set_timesteps(args.num_inference_steps)
        ddpm_time = time_it(lambda: ddpm.step(out, ddpm.timesteps[5], x), 20)
        unet = UNet2DModel(
            sample_size=size, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=1,
        ).eval()
        with torch.no_grad():
            fwd = time_it(lambda: unet(x, 10).sample, 3)
        print(
            f"{size:>6} {memory:>10.2f} {published:>13.0f} {build:>8.3f} {step_time * 1e3:>8.2f} "
            f"{ddpm_time * 1e3:>13.2f} {fwd * 1e3:>12.1f} {step_time / fwd:>9.3f}"
        )


if __name__ == "__main__":
    main()
