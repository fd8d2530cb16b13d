"""``ultrasound-diffusers reconstruct``: reconstruct an image from simulated measurements with a diffusion prior.

Example::

    ultrasound-diffusers reconstruct --pipeline PIPELINE_DIR --image phantoms:echo:1:4242 --operator missing_lines:4 \\
        --method dps --num_samples 4 --output_dir reconstruction_output

simulates the measurements of the image (``phantoms:ANATOMY[:N[:SEED]]``: phantom ``--image_index`` of that set;
by default a held-out echo / thyroid phantom that matches the pipeline; or a PNG / .npy file) with the operator,
reconstructs it with :class:`UltrasoundReconstructionPipeline` and writes ``reconstruction.png`` (ground truth,
measurements, baseline interpolation, reconstruction, uncertainty, data residual per step), ``reconstruction.npz``
and ``metrics.json`` (PSNR / SSIM of baseline and reconstruction). ``--benchmark 2,4,8`` instead tabulates PSNR /
SSIM against the fraction of scan lines kept on the first ``--num_images`` phantoms of ``--image`` (default: the
held-out ones) and writes ``benchmark.md`` and ``benchmark.json``.
"""

from __future__ import annotations

from ..samplers import SAMPLER_HELP, SAMPLERS
from ._common import MAX_SEED, device_type, finite_float, int_range, pipeline_source

# The library code (inputs, the run, the benchmark, the figure) lives in ultrasound_diffusers.reconstruction.
from ..reconstruction import run_benchmark, run_reconstruction


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct an image from simulated measurements (sparse scan lines, low resolution, attenuation, "
        "shadows) with a diffusion prior and write a figure",
    )
    p.add_argument("--pipeline", default=None, type=pipeline_source(), help="pipeline folder or Hub repo id (default: the bundled demo pipeline)")
    p.add_argument("--image", default=None,
                   help="phantoms:ANATOMY[:N[:SEED]] (a phantom set; phantom --image_index of it) or an image file "
                   "(PNG / .npy in [0, 1]); default: the held-out phantoms of the pipeline's anatomy (seed 4242)")
    p.add_argument("--image_index", type=int_range("--image_index", 0, 1000000), default=0, help="which phantom of --image (default 0)")
    p.add_argument("--labels", default=None, help="label map file for a label-conditioned pipeline (phantoms bring their own)")
    p.add_argument("--operator", default="missing_lines:4", help="missing_lines:K, downsample:F or FHxFW, attenuation[:ALPHA], attenuation_tgc[:ALPHA], mask:shadow or mask:FILE, channels[:elements=K][:single][:snr=DB] (channel data), fmc[:tx=K,rx=K,snr=DB] (lung RF full-matrix data; --image phantoms:lung)")
    p.add_argument("--noise_std", type=finite_float("--noise_std", 0.0), default=None, help="measurement noise (model units, image range width 2); default 0 (0.02 for attenuation)")
    p.add_argument("--method", default="dps", choices=["dps", "projection", "none"])
    p.add_argument("--num_samples", type=int_range("--num_samples", 1, 10000), default=4)
    p.add_argument("--num_inference_steps", type=int_range("--num_inference_steps", 1, 10000), default=50)
    p.add_argument("--guidance_step_size", type=finite_float("--guidance_step_size"), default=1.0)
    p.add_argument("--num_resample", type=int_range("--num_resample", 0, 1000), default=0, help="RePaint-style resampling passes per step (helps --method projection)")
    p.add_argument("--guidance_scale", type=finite_float("--guidance_scale"), default=1.0, help="classifier-free guidance of label-conditioned models")
    p.add_argument("--seed", type=int_range("--seed", 0, MAX_SEED), default=0)
    p.add_argument("--device", default="cpu", type=device_type())
    p.add_argument("--scheduler", default="ddpm", choices=SAMPLERS + ("pipeline",),
                   help=f"the prior's sampler, built from its scheduler config (same B-maps): {SAMPLER_HELP}; "
                   "\"pipeline\": the pipeline's own. Default ddpm (ancestral): posterior sampling is derived for "
                   "ancestral steps, whose fresh noise lets later steps correct an overshooting guidance step")
    p.add_argument("--benchmark", default=None, help="comma-separated keep_every values K (fraction 1/K of the scan lines): write a PSNR / SSIM table instead")
    p.add_argument("--num_images", type=int_range("--num_images", 1, 1000000), default=4, help="held-out phantoms in --benchmark")
    p.add_argument("--output_dir", "--out", dest="out", metavar="OUTPUT_DIR", default="reconstruction_output", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --output_dir that another command or you wrote (never the working "
                   "directory, a parent of it or a folder holding an input)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..reconstruction import ReconstructionSettings

    if args.scheduler == "pipeline":
        args.scheduler = None
    settings = ReconstructionSettings.from_args(args)  # checked before any work
    if args.benchmark:
        try:
            ks = [int(v) for v in args.benchmark.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--benchmark must be comma-separated integers, got {args.benchmark!r}") from None
        rows = run_benchmark(args.pipeline, ks, args.num_images, settings, out=args.out, image=args.image,
                             overwrite=args.overwrite)
        with open(os.path.join(args.out, "benchmark.md"), encoding="utf-8") as handle:
            print(handle.read().rstrip())
        return 0 if rows else 1
    if args.operator.split(":", 1)[0].strip().lower() in ("fmc", "multistatic"):
        # lung maps from multistatic RF data (ultrasound_diffusers.lung_reconstruction)
        from ..lung_reconstruction import run_lung_reconstruction

        summary = run_lung_reconstruction(args.pipeline, args.image, args.operator, settings, out=args.out,
                                          image_index=args.image_index, overwrite=args.overwrite)
        print(f"map MAE {summary['reconstruction_mae']:.4f}, PSNR {summary['reconstruction_psnr']:.2f} dB, 90 % interval "
              f"coverage {summary['reconstruction_coverage']:.3f}, {summary['seconds']:.1f} s")
        print(f"figure written to {os.path.abspath(os.path.join(args.out, 'reconstruction.png'))}")
        return 0
    summary = run_reconstruction(args.pipeline, args.image, args.labels, args.operator, settings, out=args.out,
                                 image_index=args.image_index, overwrite=args.overwrite)
    print(
        f"baseline {summary['baseline_psnr']:.2f} dB / SSIM {summary['baseline_ssim']:.3f}, reconstruction "
        f"{summary['reconstruction_psnr']:.2f} dB / SSIM {summary['reconstruction_ssim']:.3f}, residual "
        f"{summary['final_residual_rms']:.4f} (noise {summary['noise_std_max']:.4f})"
    )
    print(f"figure written to {os.path.abspath(os.path.join(args.out, 'reconstruction.png'))}")
    return 0
