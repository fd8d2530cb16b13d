"""``ultrasound-diffusers generate``: label maps in, a labelled synthetic ``datasets.Dataset`` out.

Examples::

    # 100 built-in echo phantom label maps, 2 images each, on one process
    ultrasound-diffusers generate --pipeline ./camus-sdm-bmap --labels phantoms:echo:100 \\
        --images_per_label 2 --output_dir synthetic-echo

    # CAMUS training labels (a dataset saved by the CAMUS converter), 5 augmented copies each, 2 processes
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m ultrasound_diffusers generate \\
        --pipeline org/camus-sdm-bmap --labels ./camus --split train --label_column label \\
        --id_column patient,view,phase --images_per_label 5 --augment --output_dir synthetic-camus

    # ... and an nnU-Net v2 raw dataset OUTPUT_DIR/nnunet_raw/Dataset501_EchoSynthetic (imagesTr, labelsTr, dataset.json)
    ultrasound-diffusers generate --pipeline ./camus-sdm-bmap --labels phantoms:echo:100 --output_dir synthetic-echo \\
        --export nnunet --nnunet_name EchoSynthetic --nnunet_labels echo

The result is ``OUTPUT_DIR/dataset`` (``datasets.load_from_disk``) plus a dataset card ``OUTPUT_DIR/README.md``;
``--export png`` (or ``--save_png``) adds PNG folders, ``--export nnunet`` an nnU-Net v2 raw dataset
(:func:`ultrasound_diffusers.data.nnunet.export_nnunet`; ``--nnunet_test REAL`` adds held-out cases as imagesTs /
labelsTs, to train on generated images and test on real ones).
Interrupted runs continue where they stopped when started again with the same arguments.
"""

from __future__ import annotations

from ._common import MAX_SEED, int_range, pipeline_source

import shlex
from typing import List

_DTYPES = ("float32", "float16", "bfloat16")
from ..samplers import SAMPLER_HELP
from ..samplers import SAMPLERS as SAMPLER_CHOICES  # --scheduler choices


def _optional_float(text: str):
    if text.lower() in ("none", "null", ""):
        return None
    return float(text)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate a labelled synthetic dataset from label maps (resumable; runs under accelerate launch)",
        description="Generate images from label maps with a label-conditioned pipeline and save them with the "
        "label maps and metadata as a datasets.Dataset (OUTPUT_DIR/dataset). Work is split between "
        "`accelerate launch` processes; a restarted run skips finished chunks.",
    )
    p.add_argument("--pipeline", required=True, type=pipeline_source(), help="pipeline folder or Hub repo id (a SemanticUltrasoundPipeline)")
    p.add_argument(
        "--labels", required=True,
        help="label source: a dataset folder (save_to_disk) or Hub dataset name (with --label_column), a folder of "
        "label PNGs (pixel value = class), a .npy array [N, H, W], or phantoms:ANATOMY:N[:SEED] (built-in phantoms)",
    )
    p.add_argument("--output_dir", required=True, help="run folder; the dataset goes to OUTPUT_DIR/dataset")
    p.add_argument("--label_column", default="label", help="label-map column of a dataset source (default: label)")
    p.add_argument("--id_column", default=None, help="column(s) naming each label map, comma-separated (default: row index)")
    p.add_argument("--split", default=None, help="split of a dataset source (default: train, else the only split)")
    p.add_argument("--images_per_label", type=int_range("--images_per_label", 1, 100000), default=1)
    p.add_argument("--num_inference_steps", type=int_range("--num_inference_steps", 1, 10000), default=50)
    p.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off; SDM uses 1.5)")
    p.add_argument("--eta", type=_optional_float, default=None, help="DDIM eta (default: the scheduler's own sampler)")
    p.add_argument(
        "--scheduler", default=None, choices=SAMPLER_CHOICES,
        help=f"sampler, built from the pipeline's scheduler config (same B-maps): {SAMPLER_HELP}; default: the "
        "pipeline's own",
    )
    p.add_argument("--batch_size", type=int_range("--batch_size", 1, 4096), default=8)
    p.add_argument("--chunk_size", type=int_range("--chunk_size", 1, 1000000), default=64, help="images per chunk: the unit of resuming and of work sharing")
    p.add_argument("--seed", type=int_range("--seed", 0, MAX_SEED), default=0, help="global seed; each image's seed derives from (seed, label, copy)")
    p.add_argument("--augment", action="store_true", help="augment each copy's label map (echo-from-noise affine + elastic)")
    p.add_argument("--augment_no_fan", action="store_true",
                   help="with --augment: the labels have no fan (background 0 everywhere), e.g. the thyroid coding")
    p.add_argument("--resize_labels", action="store_true", help="resize label maps to the model's size (nearest)")
    p.add_argument("--save_png", action="store_true", help="also write OUTPUT_DIR/png/images and png/labels")
    p.add_argument("--export", nargs="+", choices=("png", "nnunet"), default=None,
                   help="also write: png (= --save_png), nnunet (an nnU-Net v2 raw dataset, see --nnunet_dir)")
    p.add_argument("--nnunet_dir", default=None,
                   help="--export nnunet: the nnUNet_raw folder the DatasetXXX_NAME folder goes into "
                   "(default: OUTPUT_DIR/nnunet_raw)")
    p.add_argument("--nnunet_id", type=int, default=None, help="--export nnunet: dataset id, 1-999 (default 501)")
    p.add_argument("--nnunet_name", default=None, help="--export nnunet: dataset name (default UltrasoundSynthetic)")
    p.add_argument("--nnunet_labels", default=None,
                   help="--export nnunet: class names, a coding (echo, camus, thyroid) or comma-separated names "
                   "(default: the pipeline's label_names, else class_<k>); label 0 is written as background")
    p.add_argument("--nnunet_test", default=None, metavar="SOURCE",
                   help="--export nnunet: held-out images (with label maps) for imagesTs / labelsTs, e.g. real scans: a "
                   "saved dataset, a Hub dataset, an images/ + labels/ folder or phantoms:ANATOMY:N[:SEED]")
    p.add_argument("--nnunet_test_split", default=None, help="--nnunet_test: split of a DatasetDict or Hub dataset (default: train, else the only split)")
    p.add_argument("--nnunet_overwrite", action="store_true",
                   help="--export nnunet: replace a non-empty dataset folder this command did not write")
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="upload the dataset and its card to this Hub dataset repo")
    p.add_argument("--hub_private", action="store_true", help="create the Hub repository as private")
    p.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in user)")
    p.add_argument("--model_id", default=None, help="model name recorded in the metadata (default: --pipeline)")
    p.add_argument("--dtype", default="float32", choices=_DTYPES, help="model dtype (float32 is fastest on CPU)")
    p.add_argument("--overwrite", action="store_true", help="discard a run with other arguments found in OUTPUT_DIR")
    p.add_argument("--keep_chunks", action="store_true", help="keep OUTPUT_DIR/chunks after merging")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _command_line(args) -> str:
    """The command as a shell line for the dataset card (without the token)."""
    parts: List[str] = ["ultrasound-diffusers", "generate"]
    skip = {"func", "command", "hub_token"}
    for key, value in vars(args).items():
        if key in skip or value is None or value is False:
            continue
        if value is True:
            parts.append(f"--{key}")
        elif isinstance(value, list):
            parts += [f"--{key}", *map(str, value)]
        else:
            parts += [f"--{key}", str(value)]
    return shlex.join(parts)


def run(args) -> int:
    import torch

    from ..generation import process_state, generate_dataset
    from ..pipelines import DiffusionPipeline

    from ..generation import KIND, is_run_entry
    from ..utils.io import check_output_dir

    # The one output rule before any work: a run folder is resumed; a folder of the user's only with --overwrite.
    check_output_dir(args.output_dir, KIND, inputs=[args.pipeline, args.labels], overwrite=args.overwrite,
                     own_entries=is_run_entry)
    state = process_state(None)
    args.export = args.export or []
    if "nnunet" in args.export:  # refuse a bad id, name or folder before generating anything
        import os

        from ..data.nnunet import DEFAULT_DATASET_ID, DEFAULT_DATASET_NAME, check_nnunet_target

        from ..generation import NNUNET_DIR

        nnunet_dir = args.nnunet_dir or os.path.join(args.output_dir, NNUNET_DIR)
        nnunet_id = DEFAULT_DATASET_ID if args.nnunet_id is None else args.nnunet_id
        nnunet_name = args.nnunet_name or DEFAULT_DATASET_NAME
        check_nnunet_target(nnunet_dir, nnunet_id, nnunet_name, overwrite=args.nnunet_overwrite,
                            argument="--nnunet_dir")
        nnunet_test = None
        if args.nnunet_test is not None:  # read (and check) the held-out set before generating anything
            from ..data.nnunet import held_out_cases_dataset

            nnunet_test = held_out_cases_dataset(args.nnunet_test, split=args.nnunet_test_split)
    elif args.nnunet_test is not None:
        raise ValueError("--nnunet_test goes with --export nnunet")
    pipeline = DiffusionPipeline.from_pretrained(args.pipeline, torch_dtype=getattr(torch, args.dtype))
    if args.scheduler is not None:
        from ..schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

        pipeline.scheduler = scheduler_for_sampler(args.scheduler, pipeline.scheduler.config)
    dataset = generate_dataset(
        pipeline,
        args.labels,
        args.output_dir,
        images_per_label=args.images_per_label,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        eta=args.eta,
        batch_size=args.batch_size,
        seed=args.seed,
        augment=args.augment,
        save_png=args.save_png or "png" in args.export,
        push_to_hub=args.push_to_hub,
        accelerator=state,
        label_column=args.label_column,
        id_column=args.id_column,
        split=args.split,
        resize_labels=args.resize_labels,
        augment_tissue_label=None if args.augment_no_fan else 2,
        chunk_size=args.chunk_size,
        model_id=args.model_id or args.pipeline,
        overwrite=args.overwrite,
        keep_chunks=args.keep_chunks,
        hub_private=True if args.hub_private else None,
        hub_token=args.hub_token,
        command=_command_line(args),
        progress=not args.no_progress,
    )
    if state.is_main_process:
        import os

        print(f"{dataset.num_rows} images written to {os.path.abspath(os.path.join(args.output_dir, 'dataset'))}")
        if args.push_to_hub:
            print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
        if "nnunet" in args.export:
            from ..data.nnunet import export_nnunet

            names = args.nnunet_labels or getattr(pipeline.config, "label_names", None) or None
            folder = export_nnunet(dataset, nnunet_dir, nnunet_id, nnunet_name, label_names=names,
                                   overwrite=args.nnunet_overwrite, test_dataset=nnunet_test)
            print(f"nnU-Net raw dataset written to {os.path.abspath(folder)}")
    return 0
