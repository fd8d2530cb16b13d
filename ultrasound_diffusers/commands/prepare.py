"""``ultrasound-diffusers prepare {camus,thyroid,lung,dicom}``: convert a downloaded dataset.

Examples::

    ultrasound-diffusers prepare camus --input CAMUS_public --output_dir data/camus256 --size 256 --fan_labels --augment_copies 5
    ultrasound-diffusers prepare thyroid --input US_volunteer_dataset --output_dir data/thyroid --skip_empty --size 256
    ultrasound-diffusers prepare lung --input maps/ --output_dir data/lung_8_256
    ultrasound-diffusers prepare dicom --input dicoms/ --output_dir data/dicom --size 256 --max_frames 10

The dataset is written with save_to_disk into a temporary folder and moved into place at the end, so an
interrupted or failed conversion leaves no half-written dataset.
"""

from __future__ import annotations

import argparse
import math

from ._common import MAX_SEED, add_dataset_output_arguments, int_range, size_type


def _fractions(text: str):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split_fractions must be TRAIN,VAL,TEST, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--split_fractions must be TRAIN,VAL,TEST, got {text!r}")
    if not all(math.isfinite(v) and v >= 0 for v in values) or not sum(values) > 0:
        raise argparse.ArgumentTypeError(
            f"--split_fractions must be three finite numbers >= 0 with a positive sum, got {text!r}")
    return values


def _common(p, default_fractions=None) -> None:
    p.add_argument("--input", required=True, help="downloaded data (folder, or file for lung / dicom)")
    p.add_argument("--output_dir", default=None, help="where to save_to_disk the DatasetDict")
    p.add_argument("--strict", action="store_true", help="fail on corrupt or unexpected files instead of skipping them")
    p.add_argument("--seed", type=int_range("--seed", 0, MAX_SEED), default=0)
    if default_fractions is not None:
        p.add_argument("--split_fractions", type=_fractions, default=default_fractions, help="TRAIN,VAL,TEST fractions")
    add_dataset_output_arguments(p)
    p.set_defaults(func=run)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="convert CAMUS, thyroid, lung or DICOM data into a datasets.DatasetDict",
        description="Convert a downloaded ultrasound dataset into a datasets.DatasetDict (train/validation/test).",
    )
    sources = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    c = sources.add_parser("camus", help="CAMUS (NIfTI release or the older .mhd release)")
    _common(c)
    c.add_argument("--views", nargs="+", default=["2CH", "4CH"], choices=["2CH", "4CH"])
    c.add_argument("--phases", nargs="+", default=["ED", "ES"], choices=["ED", "ES"])
    c.add_argument("--half_sequences", action="store_true", help="add every frame of the half sequences")
    c.add_argument("--size", type=size_type("--size"), default=None, help="resize to N or HxW (e.g. 256)")
    c.add_argument("--fan_labels", action="store_true", help="re-code labels with the fan (5 classes, echo-from-noise)")
    c.add_argument("--augment_copies", type=int_range("--augment_copies", 0, 1000), default=0, help="augmented label copies per training example (needs --fan_labels)")
    c.add_argument("--validation_patients", type=int_range("--validation_patients", 0, 100000), default=50, help="without split files: patients 1..N are validation")

    t = sources.add_parser("thyroid", help="SegThy-style NIfTI image + label volumes, sliced to 2-D")
    _common(t, (0.8, 0.1, 0.1))
    t.add_argument("--image_dir", default=None, help="folder of image volumes (default: found under --input)")
    t.add_argument("--label_dir", default=None, help="folder of label volumes (default: found under --input)")
    t.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="array axis to slice along")
    t.add_argument("--no_transpose", action="store_true", help="do not transpose slices (nibabel arrays are transposed)")
    t.add_argument("--skip_empty", action="store_true", help="skip slices without labels")
    t.add_argument("--size", type=size_type("--size"), default=None)

    lg = sources.add_parser("lung", help="simulated lung maps (.pt / .npy / .npz): first 32 rows, 4x4 average")
    _common(lg, (1.0, 0.0, 0.0))
    lg.add_argument("--rows", type=int_range("--rows", 1, 100000), default=32)
    lg.add_argument("--pool", type=int_range("--pool", 1, 1024), default=4)
    lg.add_argument("--value_range", type=float, nargs=2, default=[0.0, 1.0], metavar=("LOW", "HIGH"))

    d = sources.add_parser("dicom", help="a folder of ultrasound DICOM files (frames, scan area masked)")
    _common(d, (1.0, 0.0, 0.0))
    d.add_argument("--size", type=size_type("--size"), default=None)
    d.add_argument("--no_crop", action="store_true", help="keep the full frame instead of cropping to the scan area")
    d.add_argument("--max_frames", type=int_range("--max_frames", 1, 1000000), default=None, help="at most this many frames per file")
    d.add_argument("--frame_step", type=int_range("--frame_step", 1, 100000), default=1)
    d.add_argument("--any_modality", action="store_true", help="also convert files whose Modality is not US")
    d.add_argument(
        "--keep_frames_without_scan_area", action="store_true",
        help="keep frames where no scan area is found (whole and unmasked: burned-in text stays) or that do not fill it; "
        "default: drop them. Never for files marked BurnedInAnnotation=YES",
    )
    d.add_argument(
        "--accept_burned_in_annotation", action="store_true",
        help="convert files marked BurnedInAnnotation=YES, masked to their scan area; default: drop them",
    )
    d.add_argument(
        "--keep_uncertain_frames", action="store_true",
        help="keep frames with glyph-like marks inside the scan area but no row of text (a caliper cross, a digit), or too "
        "flat to tell (posterised or upsampled), unmasked; default: drop them",
    )
    d.add_argument(
        "--mask_text_inside_scan_area", action="store_true",
        help="keep frames with burned-in text found inside the scan area, with boxes around the marks zeroed; default: drop them",
    )
    d.add_argument(
        "--learned_text_detector", action="store_true",
        help="also look for text inside the scan area with the bundled learned detector (finds thin mid-grey text on "
        "synthetic speckle; trained on synthetic frames only, it also drops clean frames of real files: check the report)",
    )


def run(args) -> int:
    from ..data.converters import get_converter, save_dataset
    from ..utils.io import check_output_dir

    if args.output_dir is None and not args.push_to_hub:
        raise ValueError("give --output_dir or --push_to_hub")
    kind = f"prepare-{args.source}"
    if args.output_dir is not None:
        inputs = [args.input] + [getattr(args, k, None) for k in ("image_dir", "label_dir")]
        check_output_dir(args.output_dir, kind, inputs=inputs, overwrite=args.overwrite)
    convert = get_converter(args.source)
    common = dict(strict=args.strict, seed=args.seed, progress=True)
    extra = None
    if args.source == "camus":
        ds = convert(
            args.input, views=args.views, phases=args.phases, half_sequences=args.half_sequences, size=args.size,
            fan_labels=args.fan_labels, augment_copies=args.augment_copies, validation_patients=args.validation_patients, **common,
        )
    elif args.source == "thyroid":
        ds = convert(
            args.input, image_dir=args.image_dir, label_dir=args.label_dir, axis=args.axis, transpose=not args.no_transpose,
            skip_empty=args.skip_empty, size=args.size, fractions=args.split_fractions, **common,
        )
    elif args.source == "lung":
        ds = convert(args.input, rows=args.rows, pool=args.pool, value_range=tuple(args.value_range), fractions=args.split_fractions, **common)
    else:
        from ..data.dicom import deidentification_report

        ds, report = convert(
            args.input, size=args.size, crop=not args.no_crop, max_frames=args.max_frames, frame_step=args.frame_step,
            require_ultrasound=not args.any_modality, fractions=args.split_fractions,
            keep_frames_without_scan_area=args.keep_frames_without_scan_area,
            accept_burned_in_annotation=args.accept_burned_in_annotation, keep_uncertain_frames=args.keep_uncertain_frames,
            mask_text_inside_scan_area=args.mask_text_inside_scan_area,
            learned_text_detector=args.learned_text_detector, return_report=True, **common,
        )
        print(deidentification_report(report))
        import json

        # also inside every split's dataset_info.json (description); this copy is for people
        extra = {"deidentification_report.json": json.dumps(report, indent=2, sort_keys=True) + "\n"}
    save_dataset(ds, args.output_dir, args.push_to_hub, args.hub_dataset_id, args.private, kind=kind, extra_files=extra)
    counts = ", ".join(f"{name}: {len(split)}" for name, split in ds.items())
    print(f"{args.source}: {counts}" + (f" -> {args.output_dir}" if args.output_dir else ""))
    return 0
