"""``ultrasound-diffusers bmaps``: plot the B-map attenuation front of a scheduler configuration."""

from __future__ import annotations


from ..geometry import add_geometry_arguments, geometry_from_args
from ._common import int_range, size_type

GEOMETRY_FLAGS = ("probe_geometry", "fan_apex", "fan_radii", "fan_half_angle_deg")

def register(subparsers) -> None:
    p = subparsers.add_parser("bmaps", help="plot B-maps (depth attenuation) of a scheduler at a few steps")
    p.add_argument("--scheduler", default=None,
                   help="folder (or pipeline folder) with a scheduler_config.json; default: the published settings, "
                   "BMapAttenuationScheduler.from_preset('camus-sdm')")
    add_geometry_arguments(p, default_probe=None)
    p.add_argument("--bmap_schedule", choices=["linear", "cosine", "normal_cosine", "sqrt"], default=None)
    p.add_argument("--bmap_min", type=float, default=None)
    p.add_argument("--preserve_length", action="store_true")
    p.add_argument("--size", type=size_type("--size"), default=128, help="image size: N or HxW")
    p.add_argument("--num", type=int_range("--num", 1, 100000), default=6, help="number of steps to show")
    p.add_argument("--what", choices=["signal", "bmap", "snr_ratio"], default="signal")
    p.add_argument("--out", default="bmaps.png", help="output PNG (an existing file replaced only if this package "
                   "wrote it, or with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..schedulers import BMapAttenuationScheduler
    from ..visualization import plot_bmaps

    from ..utils.io import check_output_file

    check_output_file(args.out, inputs=[args.scheduler], overwrite=args.overwrite, argument="--out", suffixes=(".png",))
    if args.scheduler and not os.path.exists(args.scheduler):
        raise FileNotFoundError(f"--scheduler {args.scheduler}: no such scheduler folder (give a folder holding "
                                "scheduler_config.json, or a pipeline folder with scheduler/)")
    overrides = {k: getattr(args, k) for k in ("bmap_schedule", "bmap_min") if getattr(args, k) is not None}
    if args.preserve_length:
        overrides["preserve_length"] = True
    if args.scheduler:
        sub = "scheduler" if os.path.isdir(os.path.join(args.scheduler, "scheduler")) else None
        scheduler = BMapAttenuationScheduler.from_pretrained(args.scheduler, subfolder=sub)
    else:
        scheduler = BMapAttenuationScheduler.from_preset("camus-sdm")
    if any(getattr(args, k) is not None for k in GEOMETRY_FLAGS):  # flags left out keep the scheduler's probe
        overrides.update(geometry_from_args(args, base=scheduler.geometry).to_config())
    if overrides:
        scheduler = BMapAttenuationScheduler.from_config({**scheduler.config, **overrides})
    size = args.size if isinstance(args.size, tuple) else (args.size, args.size)
    plot_bmaps(scheduler, size, num=args.num, what=args.what, save_path=args.out)
    print(f"B-map figure written to {os.path.abspath(args.out)}")
    return 0
