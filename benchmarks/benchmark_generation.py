"""Benchmark of ``generate_dataset``: images per second, and the cost of chunked, resumable writing.

Run: ``python benchmarks/benchmark_generation.py [--pipeline PATH] [--steps 10] [--guidance_scale 1.5]
[--num_labels 16]``
(prints a table; nothing is asserted). Without ``--pipeline`` it uses the bundled demo pipeline when the
package ships one, otherwise a small random SemanticUNet2DModel (64 px, 32 base channels) with a B-map scheduler.
For each batch size it times the bare pipeline on the same label maps and the whole ``generate_dataset`` run
(label checks, seeds, PNG encoding, chunk saves, merge), so the difference is the bookkeeping overhead.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def small_pipeline(size: int = 64):
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel
    from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline
    from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

    torch.manual_seed(0)
    unet = SemanticUNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, learn_sigma=True, model_channels=32, channel_mult=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(4,), num_heads=1, num_head_channels=32, num_classes=5,
        spade_hidden_channels=32, norm_num_groups=8,
    ).eval()
    scheduler = BMapAttenuationScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                         variance_type="learned_range")
    return SemanticUltrasoundPipeline(unet=unet, scheduler=scheduler), "random 64 px SemanticUNet2DModel (32 ch)"


def load_pipeline(path):
    from ultrasound_diffusers.pipelines import DiffusionPipeline

    if path:
        return DiffusionPipeline.from_pretrained(path), path
    try:
        from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH

        if (Path(DEMO_PIPELINE_PATH) / "model_index.json").is_file():
            return DiffusionPipeline.from_pretrained(str(DEMO_PIPELINE_PATH)), "bundled demo pipeline"
    except ImportError:
        pass
    return small_pipeline()


def main() -> None:
    from ultrasound_diffusers.data.phantoms import phantom_label_maps
    from ultrasound_diffusers.generation import derive_seeds, generate_dataset
    from ultrasound_diffusers.pipelines.pipeline_utils import resolve_sample_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num_labels", type=int, default=16)
    parser.add_argument("--batch_sizes", default="1,4,8")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (1 = off)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe, name = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    size = resolve_sample_size(pipe.unet.config.sample_size)
    labels = phantom_label_maps(args.num_labels, "echo", size=size, seed=0)
    params = sum(p.numel() for p in pipe.unet.parameters())
    print(f"model: {name}, {params / 1e6:.2f}M parameters, {size[0]}x{size[1]} px, {args.steps} steps, "
          f"guidance {args.guidance_scale:g}, {args.num_labels} images, {torch.get_num_threads()} torch threads")
    print(f"{'batch':>5} | {'pipeline img/s':>14} | {'generate_dataset img/s':>22} | {'overhead':>8}")
    pipe(labels[:2], num_inference_steps=2)  # warm-up (first-call allocations)
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            start = time.perf_counter()
            for b0 in range(0, len(labels), batch_size):
                idx = range(b0, min(b0 + batch_size, len(labels)))
                gens = [torch.Generator().manual_seed(derive_seeds(0, i, 0)[0]) for i in idx]
                pipe(labels[b0: b0 + len(idx)], num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                     generator=gens)
            bare = len(labels) / (time.perf_counter() - start)
            start = time.perf_counter()
            generate_dataset(pipe, labels, work / f"b{batch_size}", num_inference_steps=args.steps,
                             guidance_scale=args.guidance_scale, batch_size=batch_size, chunk_size=max(batch_size, 8),
                             progress=False)
            full = len(labels) / (time.perf_counter() - start)
            print(f"{batch_size:>5} | {bare:>14.2f} | {full:>22.2f} | {100 * (bare / full - 1):>7.1f}%")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
