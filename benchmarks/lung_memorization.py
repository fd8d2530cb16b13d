"""The lung seed's figure and its FID, redone: memorisation per category and FID / KID on 8 x 256 maps.

1. Memorisation: the minimum L2 distance of each generated 8 x 256 map to the 4,500 training maps, per category
   (generated maps are put in a category by ``lung_media.classify_lung_maps``), beside the same distance for
   held-out real maps (maps the model never saw: the reference for "no memorisation").
2. FID / KID between a reference set (training maps) and: held-out real maps (should be near the floor),
   generated maps, and two deliberately wrong sets made from the held-out maps (laterally blurred: no B-lines or
   sharp consolidation edges; columns shuffled: same values per row, no lateral structure), with three feature
   extractors: the FID Inception on the whole map squeezed to 299 x 299 (the seed's way), a random conv net at
   the native 8 x 256 resolution (64-d), and 19 domain features of the map (row means and standard deviations,
   the category rule's statistics). Also what a naive ``scipy.linalg.sqrtm`` FID gives on the same features.

Run (after training/lung_model.sh; the generated maps are cached in --work_dir):

    OMP_NUM_THREADS=1 python benchmarks/lung_memorization.py --num_generated 1000 --inception_n 128
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ultrasound_diffusers.data.lung_media import (
    LUNG_CATEGORIES,
    classify_lung_maps,
    lung_maps,
    pooled_category_statistics,
)
from ultrasound_diffusers.evaluation.fid import (
    RandomFeatureExtractor,
    extract_features,
    fid_kid_from_features,
    load_inception,
)
from ultrasound_diffusers.evaluation.memorization import memorization_statistics

REPO = Path(__file__).resolve().parents[1]


def load_maps(path: str):
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"]
    ds = ds.with_format("numpy", columns=["values", "category"])
    return np.asarray(ds["values"], np.float32), np.asarray(ds["category"], np.int64)


def generate(pipeline_dir: str, num: int, steps: int, batch: int, seed: int, first: int = 0,
             sampler: str = "ancestral") -> np.ndarray:
    """Maps ``first .. num - 1`` of the generated set: batch ``b`` starts at ``first + b * batch`` and draws its noise
    from ``seed + start``, so shards give the same maps as one run."""
    from ultrasound_diffusers import BMapDPMSolverMultistepScheduler, UltrasoundPipeline

    pipe = UltrasoundPipeline.from_pretrained(pipeline_dir)
    if sampler == "dpm":  # DPM-Solver++ (measured: much rougher lateral texture than ancestral at 20 steps)
        pipe.scheduler = BMapDPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = []
    t0 = time.time()
    for start in range(first, num, batch):
        g = torch.Generator().manual_seed(seed + start)
        images = pipe(batch_size=min(batch, num - start), num_inference_steps=steps, generator=g, output_type="np").images
        out.append(images[..., 0].astype(np.float32))
        print(f"  generated {start + len(images)}/{num} ({time.time() - t0:.0f} s)", flush=True)
    return np.concatenate(out)


def domain_features(maps: np.ndarray) -> np.ndarray:
    """19 descriptors per pooled map: 8 row means, 8 row standard deviations, the category rule's 3 statistics."""
    st = pooled_category_statistics(maps)
    return np.concatenate([maps.mean(2), maps.std(2), np.stack([st["lung_aeration"], st["poorly_aerated_fraction"],
                                                                 st["non_aerated_run_mm"] / 38.4], 1)], 1).astype(np.float64)


def naive_sqrtm_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID the way many scripts compute it: scipy.linalg.sqrtm of sigma1 @ sigma2, real part, no safeguards."""
    import scipy.linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def wrong_sets(maps: np.ndarray, seed: int):
    """Two sets that must score badly: lateral Gaussian blur (sigma 16 pooled px = 2.4 mm: B-lines and
    consolidation edges smeared), shuffled columns (same values per row, no lateral structure)."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(seed)
    blurred = gaussian_filter1d(maps, 16.0, axis=2, mode="nearest").astype(np.float32)
    shuffled = np.stack([m[:, rng.permutation(m.shape[1])] for m in maps]).astype(np.float32)
    return blurred, shuffled


def media_figure(path: Path, seed: int = 0) -> None:
    """One map per category (plus an effusion): speed of sound at full resolution (the seed's 24 mm window
    marked), aeration, and the pooled 8 x 256 map the model learns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ultrasound_diffusers.data.lung_media import AXIAL_PITCH_M, LATERAL_PITCH_M, lung_map_values, simulate_lung_media

    media = simulate_lung_media(12, seed=seed)
    picks = [0, 1, next(i for i in range(12) if media.category[i] == 2 and not media.effusion[i]),
             next(i for i in range(12) if media.effusion[i])]
    pooled = lung_map_values(media)[:, :32].reshape(12, 8, 4, 256, 4).mean(axis=(2, 4))
    H, W = media.speed.shape[1:]
    ext = [0, W * LATERAL_PITCH_M * 1e3, H * AXIAL_PITCH_M * 1e3, 0]
    fig, axes = plt.subplots(len(picks), 3, figsize=(15, 2.3 * len(picks)))
    for r, i in enumerate(picks):
        name = LUNG_CATEGORIES[media.category[i]] + (" (effusion)" if media.effusion[i] else "")
        im0 = axes[r, 0].imshow(media.speed[i], extent=ext, aspect="auto", cmap="viridis", vmin=500, vmax=1700)
        axes[r, 0].axhline(24, color="w", ls="--", lw=0.8)
        axes[r, 0].set_title(f"{name}: speed of sound (m/s; ribs > 1700 saturate)", fontsize=9)
        im1 = axes[r, 1].imshow(media.aeration[i], extent=ext, aspect="auto", cmap="Blues", vmin=0, vmax=1)
        axes[r, 1].set_title("aeration (air volume fraction)", fontsize=9)
        im2 = axes[r, 2].imshow(pooled[i], extent=[0, 38.4, 24, 0], aspect="auto", cmap="gray", vmin=0, vmax=1)
        axes[r, 2].set_title("pooled 8 x 256 map (normalised slowness)", fontsize=9)
        for c, im in enumerate((im0, im1, im2)):
            fig.colorbar(im, ax=axes[r, c], fraction=0.03)
            axes[r, c].set_ylabel("depth (mm)", fontsize=8)
        if r == len(picks) - 1:
            for ax in axes[r]:
                ax.set_xlabel("lateral position (mm)", fontsize=8)
    fig.suptitle("Simulated chest media (rows: categories); dashed line: the seed keeps the first 24 mm (32 rows)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def schedule_check() -> None:
    """improved-diffusion's linear schedule scales with T (beta 0.1/T .. 20/T): T = 1000, 4000, 7000 discretise one
    continuous schedule. Prints the largest gap in alpha_bar over t/T and the terminal signal level."""
    def alpha_bar(T):
        betas = np.linspace(0.1 / T, 20.0 / T, T, dtype=np.float64)
        return np.cumprod(1.0 - betas)

    s = np.linspace(0, 1, 1001)
    ref = alpha_bar(1000)
    print("\n## The linear schedule at T = 1000 vs the seed's T")
    for T in (1000, 4000, 7000):
        a = alpha_bar(T)
        on_grid = np.interp(s, (np.arange(T) + 1) / T, a)
        gap = np.abs(on_grid - np.interp(s, (np.arange(1000) + 1) / 1000, ref)).max()
        print(f"T = {T}: alpha_bar_T = {a[-1]:.2e} (signal std {np.sqrt(a[-1]):.4f}), "
              f"max |alpha_bar(t/T) - alpha_bar_1000(t/T)| = {gap:.4f}")


def samples_figure(held, held_cat, gen, gen_cat, train, nearest, path: Path) -> None:
    """Two held-out real and two generated maps per category, each generated map beside its nearest training map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(16, 4.6))
    for k, c in enumerate(LUNG_CATEGORIES):
        real = np.flatnonzero(held_cat == k)[:1]
        fake = np.flatnonzero(gen_cat == k)[:1]
        panels = [(held[i], f"held-out real ({c})") for i in real]
        for i in fake:
            panels += [(gen[i], f"generated (rule: {c})"), (train[nearest[i]], "its nearest training map")]
        panels += [(np.full_like(held[0], np.nan), "(no generated map of this category)")] * (3 - len(panels))
        panels.append((held[np.flatnonzero(held_cat == k)[1]], f"held-out real ({c})"))
        for j, (m, title) in enumerate(panels[:4]):
            axes[k, j].imshow(m, cmap="gray", vmin=0, vmax=1, aspect="auto", extent=[0, 38.4, 24, 0])
            axes[k, j].set_title(title, fontsize=9)
            axes[k, j].set_ylabel("depth (mm)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("lateral position (mm)", fontsize=8)
    fig.suptitle("8 x 256 lung maps (normalised slowness, 0 = aerated lung, 0.77 = airless tissue): real and generated",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def lateral_roughness(maps: np.ndarray) -> float:
    """Mean absolute difference between neighbouring columns of maps ``[N, 8, 256]``."""
    return float(np.abs(np.diff(maps, axis=2)).mean())


def sampler_check(pipeline_dir: str, held: np.ndarray, num: int = 12) -> None:
    """Lateral roughness of ``num`` maps from DPM-Solver++ (20 steps) and the ancestral sampler (50 steps)."""
    from ultrasound_diffusers import BMapDPMSolverMultistepScheduler, UltrasoundPipeline

    pipe = UltrasoundPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    ancestral = pipe.scheduler
    print("\n## Sampler check: lateral roughness (mean |difference of neighbouring columns|)")
    print(f"real held-out maps: {lateral_roughness(held):.4f}")
    for name, scheduler, steps in (("DPM-Solver++", BMapDPMSolverMultistepScheduler.from_config(ancestral.config), 20),
                                   ("ancestral", ancestral, 50)):
        pipe.scheduler = scheduler
        maps = pipe(batch_size=num, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                    output_type="np").images[..., 0]
        print(f"{name}, {steps} steps, {num} maps: {lateral_roughness(maps):.4f}")


def memorisation_figure(stats, gen_cat, held_cat, path: Path, steps: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d_gen, d_held = stats["train_distances"], stats["baseline_distances"]
    bins = np.linspace(0, max(d_gen.max(), d_held.max()) * 1.02, 40)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for k, ax in enumerate(axes):
        g, h = d_gen[gen_cat == k], d_held[held_cat == k]
        ax.hist(h, bins=bins, density=True, alpha=0.55, color="tab:blue", label=f"held-out real (n={h.size}, median {np.median(h):.2f})")
        if g.size:
            ax.hist(g, bins=bins, density=True, alpha=0.55, color="tab:orange", label=f"generated (n={g.size}, median {np.median(g):.2f})")
        ax.set_title(f"{LUNG_CATEGORIES[k]}")
        ax.set_xlabel("minimum L2 distance to the 4,500 training maps")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    fig.suptitle(f"Lung 8 x 256 maps: distance to the nearest training map, generated ({steps}) vs held-out real, "
                 "per category", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", default=str(REPO / "ultrasound_diffusers/assets/lung-phantom-8x256"))
    p.add_argument("--train", default="/work/runs/lung/train")
    p.add_argument("--heldout", default="/work/runs/lung/heldout")
    p.add_argument("--work_dir", default="/work/runs/lung/bench")
    p.add_argument("--num_generated", type=int, default=1000)
    p.add_argument("--num_inference_steps", type=int, default=50)
    p.add_argument("--sampler", choices=("ancestral", "dpm"), default="ancestral",
                   help="the pipeline's ancestral (DDPM, learned variance) sampler or DPM-Solver++")
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--inception_n", type=int, default=128, help="maps per set for the Inception rows (CPU cost; 0 skips them)")
    p.add_argument("--skip_generated", action="store_true", help="only the real and wrong sets (before training)")
    p.add_argument("--shard", default=None, help="K:I: only generate shard I of K (batch-aligned) into --work_dir and stop; "
                   "the next run without --shard joins the shards")
    p.add_argument("--figure", default=str(REPO / "docs/images/lung_memorization.png"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    if args.shard is None:
        t0 = time.time()
        lung_maps(200, seed=123)
        print(f"simulation speed: {(time.time() - t0) / 200 * 1e3:.1f} ms per map (full 64 x 1024 media, pooled), one thread")
        media_figure(Path(args.figure).with_name("lung_media.png"))
        print(f"wrote {Path(args.figure).with_name('lung_media.png')}")
        schedule_check()

    train, train_cat = load_maps(args.train)
    held, held_cat = load_maps(args.heldout)
    print(f"train {train.shape}, held-out {held.shape}; category rule on held-out real maps: "
          f"{(classify_lung_maps(held) == held_cat).mean() * 100:.1f} % agree with the simulator's labels")

    sets = {}
    gen = None
    if not args.skip_generated:
        cache = work / f"generated_{args.num_generated}_{args.sampler}{args.num_inference_steps}.npy"
        batches = list(range(0, args.num_generated, args.batch_size))
        if args.shard is not None:
            k, i = (int(v) for v in args.shard.split(":"))
            mine = batches[i::k]
            parts = [generate(args.pipeline, min(b + args.batch_size, args.num_generated), args.num_inference_steps,
                              args.batch_size, args.seed, first=b, sampler=args.sampler) for b in mine]
            for b, part in zip(mine, parts):
                np.save(work / f"part_{args.sampler}{args.num_inference_steps}_{b:06d}.npy", part)
            return
        if not cache.is_file() and all((work / f"part_{args.sampler}{args.num_inference_steps}_{b:06d}.npy").is_file() for b in batches):
            np.save(cache, np.concatenate([np.load(work / f"part_{args.sampler}{args.num_inference_steps}_{b:06d}.npy") for b in batches]))
        if cache.is_file():
            gen = np.load(cache)
        else:
            t0 = time.time()
            gen = generate(args.pipeline, args.num_generated, args.num_inference_steps, args.batch_size, args.seed,
                           sampler=args.sampler)
            print(f"generation: {time.time() - t0:.0f} s for {len(gen)} maps ({args.num_inference_steps} steps)")
            np.save(cache, gen)
        sampler_check(args.pipeline, held)
        print(f"generated maps ({args.sampler}, {args.num_inference_steps} steps): lateral roughness "
              f"{lateral_roughness(gen):.4f}")
        gen_cat = classify_lung_maps(gen)
        print("generated maps: range [%.3f, %.3f]; categories by the rule: %s" % (
            gen.min(), gen.max(), {c: int((gen_cat == k).sum()) for k, c in enumerate(LUNG_CATEGORIES)}))

        # ---- memorisation
        stats = memorization_statistics(gen, train, held)
        s = stats["summary"]
        print("\n## Memorisation (L2 on 8 x 256 maps in [0, 1])")
        print("| set | category | n | min | 5th pct | median | mean |")
        print("|---|---|---|---|---|---|---|")
        for name, d, cats in (("generated -> train", stats["train_distances"], gen_cat),
                              ("held-out real -> train", stats["baseline_distances"], held_cat)):
            for k, c in enumerate(LUNG_CATEGORIES):
                dk = d[cats == k]
                if dk.size:
                    print(f"| {name} | {c} | {dk.size} | {dk.min():.3f} | {np.percentile(dk, 5):.3f} | "
                          f"{np.median(dk):.3f} | {dk.mean():.3f} |")
        print(f"likely copies (closer than {s['copy_threshold']:.3f} = half the median held-out distance): "
              f"{s['num_likely_copies']} of {s['num_generated']}; generated closer to train than to held-out: "
              f"{s['fraction_closer_to_train'] * 100:.1f} %")
        memorisation_figure(stats, gen_cat, held_cat, Path(args.figure), f"{args.num_inference_steps} {args.sampler} steps")
        print(f"wrote {args.figure}")
        samples = Path(args.figure).with_name("lung_samples.png")
        samples_figure(held, held_cat, gen, gen_cat, train, stats["train_indices"], samples)
        print(f"wrote {samples}")
        sets["generated"] = gen

    # ---- FID / KID
    n = min(len(held), len(train), len(gen) if gen is not None else len(held))
    reference = train[:n]
    blurred, shuffled = wrong_sets(held[:n], args.seed)
    normal_only = train[n:][train_cat[n:] == 0][:n]  # a generator that collapsed onto one category
    sets = {"held-out real": held[:n], **sets, "blurred (wrong)": blurred, "shuffled columns (wrong)": shuffled,
            "normal maps only (wrong: mode collapse)": normal_only}
    rows = []
    extractors = {"random conv, native 8x256 (64-d)": (RandomFeatureExtractor(64, seed=0), n),
                  "domain features (19-d)": (None, n)}
    try:
        if args.inception_n > 0:
            extractors = {"Inception, map squeezed to 299x299 (2048-d)": (load_inception(), args.inception_n), **extractors}
    except (FileNotFoundError, ValueError) as err:
        print(f"Inception skipped: {err}")
    for ename, (extractor, count) in extractors.items():
        def feats(name, maps):
            # real and wrong sets are fixed: their features are cached (the generated set changes with the model)
            key = work / f"features_{ename.split(' ')[0].strip(',')}_{name.split(' ')[0]}_{count}.npy"
            if key.is_file() and name != "generated":
                return np.load(key)
            f = domain_features(maps[:count]) if extractor is None else extract_features(maps[:count], extractor, batch_size=16)
            if name != "generated":
                np.save(key, f)
            return f

        t0 = time.time()
        ref = feats("reference", reference)
        # features of the small extractors are standardised by the reference set (units: its per-feature std);
        # the Inception rows stay in raw Inception units, as FID is usually reported
        mu, sd = (0.0, 1.0) if "Inception" in ename else (ref.mean(0), ref.std(0) + 1e-12)
        ref = (ref - mu) / sd
        for name, maps in sets.items():
            if "Inception" in ename and name.startswith("normal maps only"):
                continue  # CPU time: the Inception rows cover the real, generated, blurred and shuffled sets
            f = (feats(name, maps) - mu) / sd
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = fid_kid_from_features(ref, f, kid_subsets=50, seed=args.seed)
            rows.append((ename, name, count, r["fid"], naive_sqrtm_fid(ref, f), r["kid_mean"], r["kid_std"]))
        print(f"  {ename}: {time.time() - t0:.0f} s")
    # what can make an FID explode: the value range of one set, and the sample size
    rc = RandomFeatureExtractor(64, seed=0)
    ref_rc = extract_features(reference, rc, batch_size=256)
    mu_rc, sd_rc = ref_rc.mean(0), ref_rc.std(0) + 1e-12
    ref_rc = (ref_rc - mu_rc) / sd_rc
    mism = (extract_features(held[:n] * 255.0, rc, batch_size=256) - mu_rc) / sd_rc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fid_kid_from_features(ref_rc, mism, kid_subsets=50, seed=args.seed)
    rows.append(("random conv, native 8x256 (64-d)", "held-out real given as 0-255 (range mismatch)", n, r["fid"],
                 naive_sqrtm_fid(ref_rc, mism), r["kid_mean"], r["kid_std"]))
    held_rc = (extract_features(held, rc, batch_size=256) - mu_rc) / sd_rc
    print("\n## Sample-size bias: FID between two real sets (train vs held-out), random conv 64-d standardised features")
    print("| n per set | FID | KID x 1e3 |")
    print("|---|---|---|")
    for m in sorted({25, 50, 100, 250, n}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fid_kid_from_features(ref_rc[:m], held_rc[:m], kid_subsets=50, seed=args.seed)
        print(f"| {m} | {r['fid']:.4g} | {r['kid_mean'] * 1e3:.3g} +- {r['kid_std'] * 1e3:.2g} |")
    print("\n## FID / KID against the training maps (reference)")
    print("| features | set | n per set | FID | FID, naive scipy sqrtm | KID x 1e3 (mean +- std) |")
    print("|---|---|---|---|---|---|")
    for e, name, count, fid, naive, kid, kstd in rows:
        print(f"| {e} | {name} | {count} | {fid:.4g} | {naive:.4g} | {kid * 1e3:.3g} +- {kstd * 1e3:.2g} |")
    (work / "results.json").write_text(json.dumps([dict(zip(("features", "set", "n", "fid", "fid_naive", "kid", "kid_std"), r))
                                                   for r in rows], indent=1))


if __name__ == "__main__":
    main()
