"""``ultrasound-diffusers bmaps``: plot the B-map attenuation front of a scheduler configuration."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("bmaps", help="plot B-maps (depth attenuation) of a scheduler at a few steps")
    p.add_argument("--scheduler", default=None, help="folder (or pipeline folder) with a scheduler_config.json; default: published settings")
    p.add_argument("--probe_geometry", choices=["linear", "convex"], default=None)
    p.add_argument("--bmap_schedule", choices=["linear", "cosine", "normal_cosine", "sqrt"], default=None)
    p.add_argument("--bmap_min", type=float, default=None)
    p.add_argument("--preserve_length", action="store_true")
    p.add_argument("--size", default="128", help="image size: N or H,W")
    p.add_argument("--num", type=int, default=6, help="number of steps to show")
    p.add_argument("--what", choices=["signal", "bmap", "snr_ratio"], default="signal")
    p.add_argument("--out", default="bmaps.png", help="output PNG")
    p.set_defaults(func=run)


def parse_size(text: str):
    try:
        parts = [int(v) for v in str(text).lower().replace("x", ",").split(",") if v.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return parts[0], parts[0]
    if len(parts) == 2 and min(parts) > 0:
        return parts[0], parts[1]
    raise ValueError(f"`--size` must be N or H,W with positive integers, got {text!r}")


def run(args) -> int:
    import os

    from ..schedulers import BMapAttenuationScheduler
    from ..visualization import plot_bmaps

    overrides = {
        k: getattr(args, k)
        for k in ("probe_geometry", "bmap_schedule", "bmap_min")
        if getattr(args, k) is not None
    }
    if args.preserve_length:
        overrides["preserve_length"] = True
    if args.scheduler:
        sub = "scheduler" if os.path.isdir(os.path.join(args.scheduler, "scheduler")) else None
        scheduler = BMapAttenuationScheduler.from_pretrained(args.scheduler, subfolder=sub, **overrides)
    else:
        scheduler = BMapAttenuationScheduler(**overrides)
    plot_bmaps(scheduler, parse_size(args.size), num=args.num, what=args.what, save_path=args.out)
    print(f"B-map figure written to {os.path.abspath(args.out)}")
    return 0
