"""``ultrasound-diffusers demo``: generate labelled ultrasound images with the bundled pipeline and plot them."""

from __future__ import annotations

import argparse

from ..samplers import SAMPLER_HELP, SAMPLERS
from ._common import MAX_SEED, device_type, int_range, pipeline_source


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="generate images from label maps with the bundled demo pipeline and write a picture"
    )
    p.add_argument("--pipeline", default=None, type=pipeline_source(), help="pipeline folder or Hub repo id (default: the bundled demo pipeline)")
    p.add_argument("--labels", nargs="*", default=None, help="label map files (PNG with class values, or .npy); default: built-in examples")
    p.add_argument("--num_images", type=int_range("--num_images", 1, 1000000), default=4, help="number of built-in example label maps")
    p.add_argument("--num_inference_steps", type=int_range("--num_inference_steps", 1, 10000), default=None,
                   help="default: 4 for the bundled few-step model, 50 otherwise")
    p.add_argument("--guidance_scale", type=float, default=None,
                   help="default: 1 for the bundled few-step model (its guidance is distilled in), 1.5 otherwise")
    p.add_argument("--fewstep", action=argparse.BooleanOptionalAction, default=None,
                   help="the bundled few-step model (4 network calls; the default without --pipeline), or with "
                   "--no-fewstep the bundled 50-step model it was distilled from (50 guided calls)")
    p.add_argument(
        "--scheduler", default=None, choices=SAMPLERS,
        help=f"sampler built from the pipeline's scheduler config: {SAMPLER_HELP}; default: the pipeline's own",
    )
    p.add_argument("--seed", type=int_range("--seed", 0, MAX_SEED), default=0)
    p.add_argument("--output_dir", default="demo_output",
                   help="folder for demo.png and the generated images (replaced whole on a rerun of the demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --output_dir that another command or you wrote (never the working "
                   "directory, a parent of it or a folder holding an input)")
    p.add_argument("--device", default="cpu", type=device_type())
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..demo import run_demo

    path = run_demo(
        pipeline=args.pipeline, labels=args.labels, num_images=args.num_images,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, seed=args.seed,
        output_dir=args.output_dir, device=args.device, scheduler=args.scheduler, overwrite=args.overwrite,
        fewstep=args.fewstep,
    )
    print(f"demo picture written to {os.path.abspath(path)}")
    return 0
