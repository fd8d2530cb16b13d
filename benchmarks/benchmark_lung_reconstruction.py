"""Lung maps from multistatic RF data: DAS rule vs supervised FNO vs diffusion posterior sampling (issue 29).

For every acquisition (full 32 x 32 matrix or a sparse subset) and SNR, the same held-out maps (lung media,
seed 1, the lung prior's held-out set) are simulated (``lung_reconstruction.simulate_rf``, noise seed fixed) and
reconstructed by

* **DAS rule**: DAS envelope -> map by per-row least squares on envelope features (``DasMapRule``), fitted on
  ``--num_rule_train`` training maps (seed 0) *of the same acquisition and SNR* (so the rule is never out of range);
* **supervised FNO**: ``baselines.supervised`` trained once on full-array data at SNR 10-30 dB (``--supervised``);
* **diffusion (DPS)**: the unconditional lung prior (``--pipeline``) guided by the whitened RF data, K samples ->
  mean and 90 % interval.

Prints one markdown table (map MAE / PSNR, aeration error in the lung rows 15-21 mm, category accuracy by the
media's rule, 90 % interval coverage and width, seconds per map) and writes it with the per-case numbers to
``--output_dir``; ``--figure`` draws a few cases. ``--quick`` runs a reduced version in a few minutes.

    OMP_NUM_THREADS=1 python benchmarks/benchmark_lung_reconstruction.py --pipeline /work/runs/lung/pipeline \\
        --supervised /work/runs/lung_rf/supervised --output_dir /work/runs/lung_rf/benchmark
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: (label, transmitters, receivers, SNR dB); the supervised FNO was trained on full data at 10-30 dB.
ACQUISITIONS = [
    ("full 32x32, 20 dB", None, None, 20.0),
    ("full 32x32, 0 dB", None, None, 0.0),
    ("8 tx x 32 rx, 20 dB", 8, None, 20.0),
    ("8 tx x 8 rx, 20 dB", 8, 8, 20.0),
    ("8 tx x 8 rx, 0 dB", 8, 8, 0.0),
]
QUICK_ACQUISITIONS = [ACQUISITIONS[0], ACQUISITIONS[3]]


def load_prior(path):
    """An UltrasoundReconstructionPipeline from a pipeline folder, or from a training checkpoint folder
    (``checkpoint-*``: its EMA / unet weights with the run's scheduler)."""
    from ultrasound_diffusers.pipelines.pipeline_ultrasound_reconstruction import UltrasoundReconstructionPipeline

    path = Path(path)
    if (path / "model_index.json").is_file():
        pipe = UltrasoundReconstructionPipeline.from_pretrained(str(path))
    else:
        from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel
        from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

        sub = next((path / name for name in ("unet_ema", "ema_unet", "unet") if (path / name).is_dir()), None)
        if sub is None:
            raise FileNotFoundError(f"{path} is neither a pipeline folder nor a checkpoint with a unet")
        unet = SemanticUNet2DModel.from_pretrained(str(sub))
        sched_dir = path.parent / "scheduler"
        scheduler = (BMapAttenuationScheduler.from_pretrained(str(sched_dir)) if sched_dir.is_dir() else
                     BMapAttenuationScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                              beta_end=0.02, bmap_min=1.0, probe_geometry="linear",
                                              variance_type="learned_range"))
        pipe = UltrasoundReconstructionPipeline(unet=unet.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latest_prior(path):
    """``path`` if it is a pipeline folder, else its newest ``checkpoint-*`` subfolder."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    checkpoints = sorted(path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise FileNotFoundError(f"no pipeline or checkpoint in {path}")
    return checkpoints[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="/work/runs/lung/pipeline", help="lung prior (pipeline or run folder)")
    parser.add_argument("--supervised", default="/work/runs/lung_rf/supervised", help="trained FNO folder")
    parser.add_argument("--num_test", type=int, default=64)
    parser.add_argument("--num_rule_train", type=int, default=128)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--num_inference_steps", type=int, default=15)
    parser.add_argument("--methods", default="das,fno,dps", help="comma-separated subset of das, fno, dps")
    parser.add_argument("--guidance_step_size", type=float, default=1.0)
    parser.add_argument("--cache", default="/work/runs/lung_rf/cache", help="normal-matrix cache folder")
    parser.add_argument("--output_dir", default="/work/runs/lung_rf/benchmark")
    parser.add_argument("--figure", default=None, help="PNG path of the case figure (e.g. docs/images/lung_rf_cases.png)")
    parser.add_argument("--quick", action="store_true", help="8 maps, 2 acquisitions, 4 samples, 20 steps")
    parser.add_argument("--acquisitions", default=None, help="comma-separated row indices of ACQUISITIONS")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from ultrasound_diffusers.baselines.supervised import load_lung_fno, predict_lung_fno
    from ultrasound_diffusers.data.lung_media import LUNG_CATEGORIES, lung_maps
    from ultrasound_diffusers.lung_reconstruction import (
        DasMapRule, compressed_operator, lung_rf_operator, map_metrics, reconstruct_lung, simulate_rf,
    )
    from ultrasound_diffusers.utils.io import atomic_write_text

    if args.quick:
        args.num_test, args.num_rule_train, args.num_samples, args.num_inference_steps = 8, 32, 4, 10
    acquisitions = QUICK_ACQUISITIONS if args.quick else ACQUISITIONS
    if args.acquisitions:
        acquisitions = [ACQUISITIONS[int(i)] for i in args.acquisitions.split(",")]
    prior_path = latest_prior(args.pipeline)
    pipe = load_prior(prior_path)
    methods = set(args.methods.split(","))
    fno = None
    if "fno" not in methods:
        pass
    elif Path(args.supervised, "training.json").is_file():
        fno = load_lung_fno(args.supervised)
    else:
        print(f"(no supervised model in {args.supervised}: that row is skipped)", file=sys.stderr)

    test_maps, test_cats = lung_maps(args.num_test, seed=1)
    rule_maps, _ = lung_maps(args.num_rule_train, seed=0)
    rows, cases, figure_cases = [], {}, []
    for a, (label, tx, rx, snr) in enumerate(acquisitions):
        op = lung_rf_operator(tx, rx)
        comp = compressed_operator(op, args.cache)
        y, stds = simulate_rf(test_maps, op, snr, seed=1000 + a)
        results = {}
        env = None
        if "das" in methods or "dps" in methods:
            t0 = time.perf_counter()
            env = op.das_envelope(torch.from_numpy(y))
            das_seconds = (time.perf_counter() - t0) / len(y)
        if "das" in methods:
            y_rule, _ = simulate_rf(rule_maps, op, snr, seed=2000 + a)
            rule = DasMapRule().fit(op.das_envelope(torch.from_numpy(y_rule)), rule_maps)
            t0 = time.perf_counter()
            das_pred = rule.predict(env)
            results["DAS rule"] = (das_pred, None, None, das_seconds + (time.perf_counter() - t0) / len(y))
        if fno is not None:
            t0 = time.perf_counter()
            pred = predict_lung_fno(*fno, op, torch.from_numpy(y))
            results["supervised FNO"] = (pred, None, None, (time.perf_counter() - t0) / len(y))
        means, lowers, uppers, seconds = [], [], [], []
        for i in range(len(y) if "dps" in methods else 0):
            op.noise_std = float(stds[i])
            out = reconstruct_lung(pipe, torch.from_numpy(y[i]), op, comp, args.num_samples, args.num_inference_steps,
                                   args.guidance_step_size, seed=i)
            means.append(out["mean"]), lowers.append(out["lower"]), uppers.append(out["upper"]), seconds.append(out["seconds"])
            if a == 0 and i < 4 or (a == len(acquisitions) - 1 and i < 2):
                figure_cases.append({**out, "truth": test_maps[i].astype(np.float64), "channels": y[i],
                                     "das": env[i].double().numpy(),
                                     "label": f"{LUNG_CATEGORIES[test_cats[i]]}\n{label}"})
            print(f"[{label}] map {i + 1}/{len(y)}: {out['seconds']:.1f} s", file=sys.stderr, flush=True)
        if means:
            results["diffusion (DPS)"] = (np.stack(means), np.stack(lowers), np.stack(uppers), float(np.mean(seconds)))
        for method, (pred, lower, upper, sec) in results.items():
            metrics = map_metrics(pred, test_maps, test_cats, lower, upper)
            rows.append({"acquisition": label, "method": method, **metrics, "seconds_per_map": sec})
            cases[f"{label} | {method}"] = np.asarray(pred).tolist() if args.quick else None
    header = ("| acquisition | method | MAE | PSNR (dB) | aeration error | category acc. | 90 % coverage | interval width "
              "| s / map |\n|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for r in rows:
        cov = f"{100 * r['coverage']:.1f} %" if "coverage" in r else "-"
        width = f"{r['interval_width']:.3f}" if "interval_width" in r else "-"
        lines.append(f"| {r['acquisition']} | {r['method']} | {r['mae']:.4f} | {r['psnr']:.2f} | {r['aeration_error']:.3f} "
                     f"| {100 * r['category_accuracy']:.0f} % | {cov} | {width} | {r['seconds_per_map']:.3f} |")
    table = "\n".join(lines)
    info = {"prior": str(prior_path), "supervised": args.supervised if fno else None,
            "supervised_training": {k: v for k, v in fno[1].items() if k != "loss_curve"} if fno else None,
            "num_test": args.num_test, "num_rule_train": args.num_rule_train, "num_samples": args.num_samples,
            "num_inference_steps": args.num_inference_steps, "guidance_step_size": args.guidance_step_size,
            "quick": args.quick, "threads": torch.get_num_threads(), "rows": rows}
    info["methods"] = sorted(methods)
    out = Path(args.output_dir)
    atomic_write_text(out / "benchmark.md", table + "\n")
    atomic_write_text(out / "benchmark.json", json.dumps(info, indent=1) + "\n")
    print(f"prior: {prior_path}; {args.num_test} held-out maps; DPS {args.num_samples} samples x "
          f"{args.num_inference_steps} steps, step size {args.guidance_step_size}")
    print(table)
    if args.figure and figure_cases:
        from ultrasound_diffusers.lung_reconstruction import make_lung_rf_figure
        from ultrasound_diffusers.visualization import save_figure

        fig = make_lung_rf_figure(figure_cases, "Lung maps from RF data: diffusion posterior mean and 90 % interval "
                                  f"({args.num_samples} samples)")
        save_figure(fig, args.figure)
        print(f"figure written to {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
