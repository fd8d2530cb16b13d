# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Reconstruction from sparse channel data: DPS with the channel-data operator vs delay-and-sum.

On held-out echo label maps (seed 4242, never used for training), every example is simulated physically
(scatterers -> pymust ``simus`` RF channel data of a P4-2v phased array, 3 diverging waves -> I/Q): the full-data
DAS B-mode is the reference image. Two sparse acquisitions are taken from the same data: a quarter of the receive
elements (every 4th, 16 of 64, all 3 transmits) and a single transmit (the 0-degree diverging wave, all elements),
with channel noise (20 dB SNR). For each: DAS of the sparse data (same gain and grey scale) and DPS with
:class:`ChannelDataOperator` and a prior (``--pipeline``, default the bundled ``bmap-echo-phantom-64``; the docs use
it fine-tuned on Born-simulated B-modes; ``--guidance_scale 0`` drops the label map, ``--method none`` is the prior
alone). ``--point_targets`` instead tabulates the axial / lateral FWHM of point targets. Metrics against the
full-data image: PSNR and SSIM (fan pixels, outside set to 0), gCNR and CNR cavity (label 1) vs myocardium
(label 3); mean and standard deviation over the images. Prints a Markdown table, writes JSON and a figure.

    OMP_NUM_THREADS=1 python benchmarks/benchmark_channel_reconstruction.py --pipeline PRIOR --num_images 6 --out channel_benchmark
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_images", type=int, default=6)
    p.add_argument("--start_index", type=int, default=0, help="first held-out example (tune on others than the reported ones)")
    p.add_argument("--simulator", default="pymust", choices=["pymust", "born"])
    p.add_argument("--num_inference_steps", type=int, default=30)
    p.add_argument("--num_samples", type=int, default=4)
    p.add_argument("--guidance_step_size", type=float, default=16.0)
    p.add_argument("--method", default="dps", choices=["dps", "none"], help="'none': the prior alone (an ablation: what does the data add?)")
    p.add_argument("--snr_db", type=float, default=20.0, help="channel SNR: noise std vs the RMS of the sparse data")
    p.add_argument("--cases", default="quarter_elements,single_transmit")
    p.add_argument("--depth_cm", type=float, default=3.0, help="depth of the fan (the 64 px grid then samples the I/Q image near its Nyquist rate)")
    p.add_argument("--pipeline", default=None, help="prior pipeline folder (default: the bundled demo pipeline)")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance; 0 = the unconditional prior (no label map)")
    p.add_argument("--scatterers_per_mm2", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="channel_benchmark")
    p.add_argument("--figure", default=None, help="write the figure of the first image here (PNG)")
    p.add_argument("--point_targets", action="store_true", help="only measure the axial / lateral FWHM of point targets (DAS, full vs sparse data)")
    return p.parse_args(argv)


def case_acquisition(name: str, num_elements: int):
    from ultrasound_diffusers.acoustics.simulation import sparse_receive_elements

    if name == "quarter_elements":
        return None, sparse_receive_elements(num_elements, 4)
    if name == "single_transmit":
        return [1], None
    if name == "full":
        return None, None
    raise ValueError(f"unknown case {name!r}")


def point_target_resolution_table(simulator: str = "pymust", depths_cm=(1.0, 2.0, 2.8)) -> str:
    """Axial / lateral FWHM (mm) of point targets on the axis: DAS of full and sparse data on a 0.02 mm grid."""
    from ultrasound_diffusers.acoustics import ChannelOperator
    from ultrasound_diffusers.acoustics.simulation import ChannelAcquisition, simulate_channels, sparse_receive_elements
    from ultrasound_diffusers.evaluation.ultrasound_metrics import point_target_resolution

    acq = ChannelAcquisition()
    probe = acq.array
    z_t = np.asarray(depths_cm) / 100.0
    x_t = np.zeros_like(z_t)
    n = int(np.ceil(2.2 * acq.depth / probe.speed_of_sound * probe.sampling_frequency)) + 40
    iq = torch.from_numpy(simulate_channels(x_t, z_t, np.ones_like(z_t), acq, n, simulator))
    cases = {"full": (None, None), "quarter_elements": (None, sparse_receive_elements(probe.num_elements, 4)),
             "single_transmit": ([1], None)}
    lines = ["| data | " + " | ".join(f"{d:.1f} cm axial / lateral" for d in depths_cm) + " |",
             "|---|" + "---|" * len(depths_cm)]
    step = 2e-5
    for name, (tx, rx) in cases.items():
        cells = []
        for x0, z0 in zip(x_t, z_t):
            gx, gz = np.meshgrid(x0 + np.arange(-100, 101) * step, z0 + np.arange(-40, 41) * step)
            op = ChannelOperator(probe, acq.delays(), gx.ravel(), gz.ravel(), n, transmits=tx, receive_elements=rx, pulse=None)
            data = iq[op.transmits][:, op.receive_elements][None]
            env = op.das(data)[0].abs().reshape(gx.shape).double().numpy()
            res = point_target_resolution(env, spacing=(step * 1e3, step * 1e3), half_window=100)
            cells.append(f"{res['axial_fwhm']:.2f} / {res['lateral_fwhm']:.2f}")
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.point_targets:
        table = point_target_resolution_table(args.simulator)
        print(table)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "point_targets.md").write_text(table + "\n")
        return {"point_targets": table}
    from ultrasound_diffusers.acoustics import complex_to_real
    from ultrasound_diffusers.acoustics.simulation import (
        ChannelAcquisition,
        channel_data_operator,
        phantom_echogenicity,
        simulate_channel_phantom,
    )
    from ultrasound_diffusers.reconstruction import HELD_OUT_SEED, load_pipeline
    from ultrasound_diffusers.evaluation.ultrasound_metrics import cnr, gcnr, psnr, ssim

    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    size = (64, 64)
    acq = ChannelAcquisition(depth=args.depth_cm / 100.0, scatterers_per_mm2=args.scatterers_per_mm2)
    cases = [c for c in args.cases.split(",") if c]
    rows = {c: {k: [] for k in ("das_sparse", "dps")} for c in cases}
    full_rows = []
    figure_data = None
    start = time.perf_counter()
    for i in range(args.num_images):
        labels, echo_db = phantom_echogenicity("echo", size, seed=HELD_OUT_SEED, index=args.start_index + i)
        t0 = time.perf_counter()
        sim = simulate_channel_phantom(labels, acq, seed=10_000 + i, simulator=args.simulator, echogenicity_db=echo_db)
        sim_seconds = time.perf_counter() - t0
        truth = sim["image"].astype(np.float64)
        inside = labels > 0
        cavity, myo = labels == 1, labels == 3

        def metrics(image):
            image = np.where(inside, image, 0.0)
            return {"psnr": psnr(truth, image), "ssim": ssim(truth, image), "gcnr": gcnr(image, cavity, myo),
                    "cnr": cnr(image, cavity, myo)}

        full_rows.append(metrics(truth))
        iq = torch.from_numpy(sim["iq"])
        for case in cases:
            transmits, elements = case_acquisition(case, acq.array.num_elements)
            op = channel_data_operator(size, acq, iq.shape[-1], sim["reference"], transmits=transmits,
                                       receive_elements=elements)
            data = iq[op.channel_operator.transmits][:, op.channel_operator.receive_elements]
            noise_std = float(data.abs().pow(2).mean().sqrt() / np.sqrt(2.0) * 10 ** (-args.snr_db / 20))
            gen = torch.Generator().manual_seed(args.seed + 100 * i + 1)
            noise = torch.complex(torch.randn(data.shape, generator=gen), torch.randn(data.shape, generator=gen))
            y = complex_to_real((data + noise_std * noise)[None]).float()
            op.noise_std = noise_std
            das = (op.baseline(y)[0, 0].double().numpy() + 1.0) / 2.0
            op.set_phase_from(y)
            t1 = time.perf_counter()
            out = pipe(y, op, segmap=torch.from_numpy(labels.astype(np.int64))[None], method=args.method,
                       num_inference_steps=args.num_inference_steps, guidance_step_size=args.guidance_step_size,
                       num_samples=args.num_samples, guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(args.seed + i),
                       output_type="np")
            rec = out.images[0, ..., 0].astype(np.float64)
            rows[case]["das_sparse"].append(metrics(das))
            rows[case]["dps"].append(metrics(rec))
            print(f"image {i} {case}: DAS {rows[case]['das_sparse'][-1]} | DPS {rows[case]['dps'][-1]} "
                  f"(simulation {sim_seconds:.1f} s, DPS {time.perf_counter() - t1:.1f} s)", flush=True)
            if figure_data is None and i == 0:
                figure_data = {"truth": truth, "labels": labels}
            if i == 0:
                figure_data[case] = {"das": np.where(inside, das, 0), "dps": rec,
                                     "uncertainty": out.uncertainty[0, ..., 0].astype(np.float64)}

    def summary(values):
        keys = values[0].keys()
        return {k: (float(np.mean([v[k] for v in values])), float(np.std([v[k] for v in values]))) for k in keys}

    result = {"num_images": args.num_images, "simulator": args.simulator, "snr_db": args.snr_db, "method": args.method,
              "pipeline": args.pipeline or "bundled bmap-echo-phantom-64", "guidance_scale": args.guidance_scale,
              "num_inference_steps": args.num_inference_steps, "num_samples": args.num_samples,
              "guidance_step_size": args.guidance_step_size, "acquisition": acq.to_dict(),
              "full_das": summary(full_rows),
              "cases": {c: {k: summary(v) for k, v in rows[c].items()} for c in cases},
              "per_image": {c: rows[c] for c in cases}, "seconds": round(time.perf_counter() - start, 1)}
    lines = ["| data | method | PSNR (dB) | SSIM | gCNR cavity/myocardium | CNR |", "|---|---|---|---|---|---|"]

    def fmt(s, k, digits):
        return f"{s[k][0]:.{digits}f} ± {s[k][1]:.{digits}f}"

    f = result["full_das"]
    lines.append(f"| full (64 elements, 3 transmits) | DAS (reference) | - | - | {fmt(f, 'gcnr', 3)} | {fmt(f, 'cnr', 2)} |")
    for c in cases:
        name = "DPS" if args.method == "dps" else "prior only (no data)"
        for method, label in (("das_sparse", "DAS"), ("dps", f"{name}, mean of {args.num_samples}")):
            s = result["cases"][c][method]
            lines.append(f"| {c.replace('_', ' ')} | {label} | {fmt(s, 'psnr', 2)} | {fmt(s, 'ssim', 3)} | "
                         f"{fmt(s, 'gcnr', 3)} | {fmt(s, 'cnr', 2)} |")
    table = "\n".join(lines)
    print(table)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "channel_benchmark.json").write_text(json.dumps(result, indent=1))
    (out_dir / "channel_benchmark.md").write_text(table + "\n")
    if args.figure and figure_data is not None:
        make_figure(figure_data, cases, args.figure)
    return result


def make_figure(data, cases, path):
    from ultrasound_diffusers.visualization import new_figure, save_figure

    fig = new_figure(figsize=(10, 2.7 * len(cases)))
    axes = fig.subplots(len(cases), 4, squeeze=False)
    for row, case in zip(axes, cases):
        d = data[case]
        panels = [(f"DAS, {case.replace('_', ' ')}", d["das"]), ("DPS reconstruction", d["dps"]),
                  ("DAS, full data", data["truth"])]
        for ax, (title, image) in zip(row, panels):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
        im = row[3].imshow(d["uncertainty"], cmap="magma", vmin=0, interpolation="nearest")
        row[3].set_title("uncertainty (std)", fontsize=9)
        fig.colorbar(im, ax=row[3], fraction=0.046, pad=0.04)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
