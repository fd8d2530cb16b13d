"""``ultrasound-diffusers phantoms``: generate a physics phantom dataset.

Example::

    ultrasound-diffusers phantoms --num_images 1000 --anatomy echo --size 128 --seed 0 --output_dir data/echo128
    ultrasound-diffusers phantoms --num_images 16 --size 64x96 --output_dir out --png_dir out_png --preview grid.png
"""

from __future__ import annotations

import argparse

from ._common import MAX_SEED, add_dataset_output_arguments, finite_float, int_range, size_type


def _tgc(text: str):
    number = finite_float("--tgc")
    values = [number(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("--tgc needs a fraction or comma-separated gains in dB")
    return values[0] if len(values) == 1 and "," not in text else tuple(values)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantoms",
        help="generate a physics-based phantom dataset (images + label maps) as a datasets.Dataset",
        description="Generate N physics-based ultrasound phantoms (image + label map) and save them with "
        "datasets' save_to_disk (atomically), optionally as PNG files and/or on the Hub.",
    )
    p.add_argument("--num_images", type=int_range("--num_images", 1, 1000000), required=True, help="number of training examples N")
    p.add_argument("--anatomy", default="echo", choices=["echo", "thyroid", "homogeneous", "lung"],
                   help="echo / thyroid / homogeneous: B-mode images with label maps; lung: the lung seed's 8x256 "
                   "maps of normalised slowness (docs/lung.md), no label maps (the data.phantoms.ANATOMIES registry)")
    p.add_argument("--size", type=size_type("--size"), default=None, help="N or HxW (default 64; lung: 8x256 only)")
    p.add_argument("--seed", type=int_range("--seed", 0, MAX_SEED), default=0)
    p.add_argument("--output_dir", default=None, help="where to save_to_disk the dataset")
    p.add_argument("--num_validation_images", type=int_range("--num_validation_images", 0, 1000000), default=0, help="if > 0 save a DatasetDict with a validation split (examples N..N+K-1)")
    p.add_argument("--probe", default=None, choices=["convex", "linear"], help="probe geometry (default: per anatomy)")
    p.add_argument("--depth_cm", type=finite_float("--depth_cm", 0.0, exclusive=True), default=None)
    p.add_argument("--center_frequency_mhz", type=finite_float("--center_frequency_mhz", 0.0, exclusive=True), default=None)
    p.add_argument("--attenuation_db_cm_mhz", type=finite_float("--attenuation_db_cm_mhz", 0.0), default=None, help="one attenuation for all tissues (default: tissue-dependent)")
    p.add_argument("--tgc", type=_tgc, default=None, help="TGC: fraction of the nominal loss compensated, or comma-separated gains in dB")
    p.add_argument("--dynamic_range_db", type=finite_float("--dynamic_range_db", 0.0, exclusive=True), default=None)
    p.add_argument("--gain_db", type=finite_float("--gain_db"), default=None)
    p.add_argument("--noise_db", type=finite_float("--noise_db"), default=None)
    p.add_argument("--batch_size", type=int_range("--batch_size", 1, 4096), default=32, help="examples simulated together")
    p.add_argument("--png_dir", default=None, help="also write images/ and labels/ PNG files here")
    p.add_argument("--preview", default=None, help="write a PNG grid of the first images and coloured label maps")
    add_dataset_output_arguments(p)
    p.add_argument("--simulator", default=None, choices=["pymust", "born"],
                   help="simulate channel data physically (echo only): 'pymust' (needs pip install pymust) or 'born' "
                   "(our linear model); writes dataset/, channels/*.npz, images/, labels/ into --output_dir")
    p.add_argument("--channel_depth_cm", type=float, default=3.0, help="with --simulator: depth of the fan")
    p.add_argument("--scatterers_per_mm2", type=float, default=8.0, help="with --simulator: scatterer density")
    p.add_argument("--transmit_angles", default="-15,0,15", help="with --simulator: diverging-wave angles (degrees)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from ..data.converters import save_dataset
    from ..data.phantoms import NUM_CLASSES, generate_phantoms, resolve_probe
    from ..utils.io import atomic_write_bytes, check_output_dir, replace_directory

    if args.num_images < 1:
        raise ValueError(f"--num_images must be at least 1, got {args.num_images}")
    if args.num_validation_images < 0:
        raise ValueError("--num_validation_images must be non-negative")
    if args.output_dir is None and not args.push_to_hub and args.png_dir is None:
        raise ValueError("give --output_dir, --png_dir or --push_to_hub")
    if args.anatomy == "lung":
        return _run_lung(args)
    if args.size is None:
        args.size = 64
    if args.output_dir is not None:
        kind = "phantoms" if args.simulator is None else "phantoms-channels"
        check_output_dir(args.output_dir, kind, overwrite=args.overwrite, argument="--output_dir")
    if args.preview is not None:
        from ..utils.io import check_output_file

        check_output_file(args.preview, overwrite=args.overwrite, argument="--preview", suffixes=(".png",))
    if args.simulator is not None:
        return _run_channel_simulation(args)
    if args.png_dir is not None:
        check_output_dir(args.png_dir, "phantoms-png", overwrite=args.overwrite, argument="--png_dir")
        if args.output_dir is not None and Path(args.png_dir).resolve() == Path(args.output_dir).resolve():
            raise ValueError("--png_dir and --output_dir must be different folders")
    probe = None
    overrides = {k: getattr(args, k) for k in ("depth_cm", "center_frequency_mhz") if getattr(args, k) is not None}
    if args.probe is not None or overrides:
        base = resolve_probe(args.anatomy, args.probe)
        probe = {**base.to_dict(), **overrides}
    physics = {
        k: getattr(args, k)
        for k in ("attenuation_db_cm_mhz", "tgc", "dynamic_range_db", "gain_db", "noise_db")
        if getattr(args, k) is not None
    }
    common = dict(anatomy=args.anatomy, size=args.size, seed=args.seed, probe=probe, batch_size=args.batch_size, progress=True, **physics)
    train = generate_phantoms(args.num_images, **common)
    dataset = train
    if args.num_validation_images:
        import datasets

        val = generate_phantoms(args.num_validation_images, start=args.num_images, **common)
        dataset = datasets.DatasetDict({"train": train, "validation": val})

    if args.output_dir is not None or args.push_to_hub:
        save_dataset(dataset, args.output_dir, args.push_to_hub, args.hub_dataset_id, args.private, kind="phantoms")
        if args.output_dir is not None:
            print(f"saved {len(train)} {args.anatomy} phantoms to {args.output_dir}")
    if args.png_dir is not None:

        def build(tmp):
            (tmp / "images").mkdir()
            (tmp / "labels").mkdir()
            for i, row in enumerate(train):
                row["image"].save(tmp / "images" / f"{i:06d}.png")
                row["label"].save(tmp / "labels" / f"{i:06d}.png")

        replace_directory(build, args.png_dir, kind="phantoms-png")
        print(f"wrote {len(train)} PNG pairs to {args.png_dir}")
    if args.preview is not None:
        import io

        from PIL import Image

        from ..data.labels import label_grid

        n = min(len(train), 16)
        rows = train.select(range(n))
        grid = label_grid(
            [np.asarray(r["image"]) for r in rows], [np.asarray(r["label"]) for r in rows],
            num_classes=NUM_CLASSES[args.anatomy], ncols=8, coding="thyroid" if args.anatomy == "thyroid" else None,
        )
        buf = io.BytesIO()
        Image.fromarray(grid).save(buf, format="PNG")
        atomic_write_bytes(args.preview, buf.getvalue())
        print(f"wrote preview {args.preview}")
    return 0


def _run_channel_simulation(args) -> int:
    """``--simulator``: physical channel-data phantoms (see acoustics.simulation.write_channel_phantoms)."""
    from ..acoustics.simulation import ChannelAcquisition, write_channel_phantoms

    if args.output_dir is None:
        raise ValueError("--simulator writes channel data: give --output_dir")
    try:
        angles = tuple(float(a) for a in args.transmit_angles.split(",") if a.strip())
    except ValueError:
        raise ValueError(f"--transmit_angles must be comma-separated degrees, got {args.transmit_angles!r}") from None
    acquisition = ChannelAcquisition(depth=args.channel_depth_cm / 100.0, angles_deg=angles,
                                     scatterers_per_mm2=args.scatterers_per_mm2)
    summary = write_channel_phantoms(args.num_images, args.output_dir, anatomy=args.anatomy, size=args.size,
                                     seed=args.seed, simulator=args.simulator, acquisition=acquisition, progress=True)
    print(f"wrote {summary['num_images']} channel-data phantoms ({args.simulator}, {summary['seconds_per_image']} s each) to {args.output_dir}")
    return 0


def _run_lung(args) -> int:
    """``--anatomy lung``: the lung seed's pooled maps (data.lung_media.lung_dataset), no label maps."""
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from ..data.converters import save_dataset
    from ..data.phantoms import generate_phantoms
    from ..utils.io import atomic_write_bytes, check_output_dir, replace_directory

    given = [f"--{k}" for k in ("probe", "depth_cm", "center_frequency_mhz", "attenuation_db_cm_mhz", "tgc",
                                "dynamic_range_db", "gain_db", "noise_db", "simulator") if getattr(args, k) is not None]
    if given:
        raise ValueError(f"--anatomy lung makes property maps with the physics of data/lung_media.py; {', '.join(given)} "
                         "apply to the B-mode anatomies only")
    if args.output_dir is not None:
        check_output_dir(args.output_dir, "phantoms", overwrite=args.overwrite, argument="--output_dir")
    if args.png_dir is not None:
        check_output_dir(args.png_dir, "phantoms-png", overwrite=args.overwrite, argument="--png_dir")
        if args.output_dir is not None and Path(args.png_dir).resolve() == Path(args.output_dir).resolve():
            raise ValueError("--png_dir and --output_dir must be different folders")
    train = generate_phantoms(args.num_images, anatomy="lung", size=args.size, seed=args.seed, progress=True)
    dataset = train
    if args.num_validation_images:
        import datasets

        val = generate_phantoms(args.num_validation_images, anatomy="lung", size=args.size, seed=args.seed,
                                start=args.num_images)
        dataset = datasets.DatasetDict({"train": train, "validation": val})
    if args.output_dir is not None or args.push_to_hub:
        save_dataset(dataset, args.output_dir, args.push_to_hub, args.hub_dataset_id, args.private, kind="phantoms")
        if args.output_dir is not None:
            print(f"saved {len(train)} lung maps to {args.output_dir}")
    if args.png_dir is not None:

        def build(tmp):
            (tmp / "images").mkdir()
            for i, row in enumerate(train):
                row["image"].save(tmp / "images" / f"{i:06d}.png")

        replace_directory(build, args.png_dir, kind="phantoms-png")
        print(f"wrote {len(train)} PNG maps to {args.png_dir}")
    if args.preview is not None:
        maps = np.asarray(train.select(range(min(len(train), 16)))["values"], dtype=np.float32)
        pad = np.ones((maps.shape[0], 2, maps.shape[2]), np.float32)
        grid = np.concatenate([np.concatenate([m, p]) for m, p in zip(maps, pad)])
        buf = io.BytesIO()
        Image.fromarray(np.clip(np.rint(grid * 255), 0, 255).astype(np.uint8)).save(buf, format="PNG")
        atomic_write_bytes(args.preview, buf.getvalue())
        print(f"wrote preview {args.preview}")
    return 0
