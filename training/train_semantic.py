#!/usr/bin/env python
# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Train a semantic (label-map conditioned) or unconditional ultrasound diffusion model with B-map attenuation.

The network is :class:`~ultrasound_diffusers.models.unet_semantic_2d.SemanticUNet2DModel` (the Semantic Diffusion
Model UNet, or with ``--unconditional`` the improved-diffusion UNet), the forward process the physics-inspired
:class:`~ultrasound_diffusers.schedulers.scheduling_bmap_attenuation.BMapAttenuationScheduler` and the objective the
hybrid loss of :mod:`ultrasound_diffusers.losses` (MSE + ``--vb_weight`` * variational bound, with a learned
variance). Runs with ``accelerate launch training/train_semantic.py ...`` (one or several processes) or plain
``python training/train_semantic.py ...``; see ``training/README.md``.

Without any data flag the script trains on echocardiography phantoms generated in memory
(``--dataset_name phantoms:echo``), so it runs offline.

The script keeps the shape of the diffusers training examples (``parse_args``, ``main`` with an Accelerate loop);
the data come from :mod:`ultrasound_diffusers.data.paired` (sources, checks, preprocessing) and the reusable
training helpers (reproducible batch inputs, mask ablation, checkpoints, sample grids) from
:mod:`ultrasound_diffusers.training_utils`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ultrasound_diffusers.data.paired import PairedTransform, check_paired_dataset, collate_pairs, load_paired_splits
from ultrasound_diffusers.data.sources import is_phantoms_spec
# the training entry point's label reader (tests/test_image_processor.py checks that all entry points agree)
from ultrasound_diffusers.data.paired import read_label_cell as label_array  # noqa: F401
from ultrasound_diffusers.geometry import CAMUS_FAN_APEX, CAMUS_FAN_HALF_ANGLE_DEG, CAMUS_FAN_RADII, PROBE_GEOMETRIES, FanGeometry
from ultrasound_diffusers.hub_utils import license_metadata
from ultrasound_diffusers.image_processor import parse_size
from ultrasound_diffusers.schedulers.bmaps import BMAP_SCHEDULES
from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import SCHEDULER_PRESETS
from ultrasound_diffusers.training_utils import (
    CHECKPOINT_PATTERN,
    EpochShuffleSampler,
    checkpoint_is_complete,
    derive_seed,
    draw_training_inputs,
    list_checkpoints,
    make_grid,
)
from ultrasound_diffusers.training_utils import save_checkpoint as save_training_checkpoint

#: The published scheduler settings the flags default to (one source: the scheduler presets).
PUBLISHED = SCHEDULER_PRESETS["camus-sdm"]

logger = logging.getLogger("train_semantic")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "piecewise_constant",
)


# ---------------------------------------------------------------------------------------------------- arguments
def parse_resolution(value: str) -> Tuple[int, int]:
    """``"64"`` -> (64, 64); ``"8,256"`` or ``"8x256"`` -> (8, 256) as (height, width)."""
    try:
        size = parse_size(value, "--resolution")
    except ValueError:
        message = f"--resolution must be an int or H,W (e.g. 64 or 8,256), got {value!r}"
        raise argparse.ArgumentTypeError(message) from None
    return (size, size) if isinstance(size, int) else size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a semantic / unconditional ultrasound diffusion model with B-map attenuation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", type=str, default=None,
                   help="A Hub dataset id, a folder written by `save_to_disk`, a folder of images/ + labels/, or "
                        "`phantoms:ANATOMY[:N[:SEED]]` (e.g. phantoms:echo, phantoms:thyroid:100) for phantoms "
                        "generated in memory. Without --dataset_name and --train_data_dir: phantoms:echo.")
    g.add_argument("--dataset_config_name", type=str, default=None, help="Config name of the dataset.")
    g.add_argument("--train_data_dir", type=str, default=None,
                   help="A folder of images/ + labels/ paired by file name (as `generate --export png` and "
                        "`phantoms --png_dir` write), or an imagefolder: images plus a metadata.jsonl/csv whose "
                        "`image_file_name` and `label_file_name` columns pair each image with its label map.")
    g.add_argument("--cache_dir", type=str, default=None, help="Where downloaded datasets are cached.")
    g.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
    g.add_argument("--label_column", type=str, default="label", help="Column holding the integer label maps.")
    g.add_argument("--phantoms", type=int, default=256, help="Number of phantoms for --dataset_name phantoms:*.")
    g.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N examples.")
    g.add_argument("--num_classes", type=int, default=None,
                   help="Number of label classes; every label must lie in [0, num_classes). Default: max label + 1.")
    g.add_argument("--resolution", type=parse_resolution, default=(64, 64),
                   help="Training size: an int or H,W (images bicubic, labels nearest).")
    g.add_argument("--in_channels", type=int, default=1, choices=(1, 3), help="1 = grayscale, 3 = RGB.")
    g.add_argument("--random_flip", action="store_true", help="Flip image and label map left-right at random.")
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="Data loading worker processes.")

    g = p.add_argument_group("model")
    g.add_argument("--model_config", type=str, default="tiny-64",
                   help="A SemanticUNet2DModel preset (tiny-64, sdm-128, sdm-256, lung-8x256), a file name in "
                        "training/configs (without .json) or a path to a JSON config.")
    g.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                   help="Start from the UNet of a saved pipeline folder / Hub repo (its `unet` subfolder) instead "
                        "of a random initialisation.")
    g.add_argument("--learn_sigma", action=argparse.BooleanOptionalAction, default=None,
                   help="Learn the per-pixel variance (learned_range, hybrid loss). Default: the model config's.")
    g.add_argument("--unconditional", action="store_true",
                   help="Train the num_classes=0 network on images alone (no label column needed).")
    g.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory.")

    g = p.add_argument_group("objective")
    g.add_argument("--prediction_type", type=str, default="epsilon", choices=("epsilon", "sample", "v_prediction"))
    g.add_argument("--vb_weight", type=float, default=0.001,
                   help="lambda of L_simple + lambda L_vlb (the VB term is T * L_t; 0.001 = improved-diffusion).")
    g.add_argument("--drop_rate", type=float, default=0.2,
                   help="Probability of replacing a sample's label map by zeros (classifier-free guidance).")
    g.add_argument("--class_drop_rate", type=float, default=0.0,
                   help="Mask-ablated training: each class other than 0 present in a training label map is dropped "
                        "independently with this probability, its pixels relabelled as class 0 (as in "
                        "segmentation-guided diffusion), so the model learns maps with structures left out and "
                        "accepts them at sampling with no special value or extra class. 0 = off.")
    g.add_argument("--noise_offset", type=float, default=0.0,
                   help="Std of a per-image constant added to the training noise (offset noise; 0 = off, "
                        "0.05-0.1 typical). Helps the model change an image's mean brightness.")

    g = p.add_argument_group("scheduler (defaults: the published settings, BMapAttenuationScheduler.from_preset('camus-sdm'))")
    g.add_argument("--num_train_timesteps", type=int, default=PUBLISHED["num_train_timesteps"])
    g.add_argument("--beta_schedule", type=str, default=PUBLISHED["beta_schedule"],
                   choices=("linear", "scaled_linear", "squaredcos_cap_v2", "linear_small", "sigmoid"),
                   help="Noise schedule (squaredcos_cap_v2 = the published cosine schedule).")
    g.add_argument("--beta_start", type=float, default=0.0001)
    g.add_argument("--beta_end", type=float, default=0.02)
    g.add_argument("--bmap_schedule", type=str, default=PUBLISHED["bmap_schedule"], choices=BMAP_SCHEDULES)
    g.add_argument("--bmap_min", type=float, default=PUBLISHED["bmap_min"], help="B-map floor eps in (0, 1]; 1.0 = plain DDPM.")
    g.add_argument("--bmap_buffer", action="store_true", help="No attenuation in the first 5%% of the steps.")
    g.add_argument("--preserve_length", action="store_true", help="The published 'preserve length' B-maps.")
    g.add_argument("--probe_geometry", type=str, default=PUBLISHED["probe_geometry"], choices=PROBE_GEOMETRIES)
    g.add_argument("--fan_apex", type=float, nargs=2, default=CAMUS_FAN_APEX, metavar=("X", "Y"),
                   help="Fan apex in units of the image width (default: the CAMUS fan).")
    g.add_argument("--fan_radii", type=float, nargs=2, default=CAMUS_FAN_RADII, metavar=("INNER", "OUTER"),
                   help="Fan radii in units of the image width (default: the CAMUS fan).")
    g.add_argument("--fan_half_angle_deg", type=float, default=CAMUS_FAN_HALF_ANGLE_DEG)

    g = p.add_argument_group("optimisation")
    g.add_argument("--output_dir", type=str, default="semantic-ultrasound-model")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="Write into a non-empty --output_dir that is not a training run (its files of the same "
                   "names are replaced).")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train_batch_size", type=int, default=4, help="Batch size per process.")
    g.add_argument("--num_epochs", type=int, default=100)
    g.add_argument("--max_train_steps", type=int, default=None, help="Optimisation steps; overrides --num_epochs.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=1e-4)
    g.add_argument("--lr_scheduler", type=str, default="linear", choices=LR_SCHEDULERS,
                   help="diffusers.optimization schedule; linear = the published decay to 0.")
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping (0 = off).")
    g.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights (saved as the final model).")
    g.add_argument("--ema_decay", type=float, default=0.9999)
    g.add_argument("--mixed_precision", type=str, default=None, choices=("no", "fp16", "bf16"),
                   help="Default: the accelerate config's.")
    g.add_argument("--allow_tf32", action="store_true",
                   help="TF32 matmuls and convolutions on Ampere and later GPUs (float32 runs; no effect on CPU).")

    g = p.add_argument_group("checkpoints, logging, validation")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help='A checkpoint folder or "latest" (newest checkpoint-N in --output_dir).')
    g.add_argument("--logger", type=str, default="tensorboard", choices=("tensorboard", "wandb", "none"))
    g.add_argument("--logging_dir", type=str, default="logs", help="Relative to --output_dir.")
    g.add_argument("--validation_steps", type=int, default=500, help="Sample a grid every N steps (0 = never).")
    g.add_argument("--num_validation_images", type=int, default=4)
    g.add_argument("--validation_inference_steps", type=int, default=50)
    g.add_argument("--guidance_scale", type=float, default=1.5, help="Classifier-free guidance of the samples.")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", type=str, default=None)
    g.add_argument("--hub_token", type=str, default=None)
    g.add_argument("--hub_private_repo", action="store_true")
    g.add_argument("--license", type=str, default=None,
                   help="Hub license id of the trained model for its card (e.g. apache-2.0, cc-by-nc-sa-4.0, other); "
                   "default: other / unknown, since the terms of the training data decide it")
    g.add_argument("--license_name", type=str, default=None, help="with --license other: a lowercase license id")
    g.add_argument("--license_link", type=str, default=None, help="with --license other: a URL or repository file")
    return p


def describe_mixed_precision(accelerator) -> str:
    """What ``--mixed_precision`` does on this accelerator, for the log: the UNet's forward runs under autocast
    (accelerate wraps it) with float32 master weights, so the saved weights are float32; fp16 adds loss scaling
    (accelerate's GradScaler); the loss, VB term included, is computed in float32 (``hybrid_loss``).

    Raises:
        ValueError: naming ``--mixed_precision`` when accelerate would silently train in float32 instead (fp16 on
            a CPU, where accelerate has no fp16 autocast).
    """
    mode = accelerator.mixed_precision
    if mode not in ("fp16", "bf16"):
        return f"{mode} (float32)"
    if not accelerator.native_amp:
        raise ValueError(
            f"--mixed_precision {mode} is not available on {accelerator.device.type}: accelerate would train in "
            "float32 without saying so (it has no fp16 autocast on CPU); use --mixed_precision bf16 on a CPU, "
            "fp16 or bf16 on a GPU, or no"
        )
    dtype = "float16" if mode == "fp16" else "bfloat16"
    scaling = ", dynamic loss scaling" if accelerator.scaler is not None else ""
    return f"{mode} (autocast to {dtype} on {accelerator.device.type}, float32 weights and loss{scaling})"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    env_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_rank != -1:
        args.local_rank = env_rank
    checks = [
        ("--train_batch_size", args.train_batch_size >= 1, "a positive integer"),
        ("--num_epochs", args.num_epochs >= 1, "a positive integer"),
        ("--max_train_steps", args.max_train_steps is None or args.max_train_steps >= 1, "a positive integer"),
        ("--gradient_accumulation_steps", args.gradient_accumulation_steps >= 1, "a positive integer"),
        ("--phantoms", args.phantoms >= 1, "a positive integer"),
        ("--drop_rate", 0.0 <= args.drop_rate <= 1.0, "a probability in [0, 1]"),
        ("--class_drop_rate", 0.0 <= args.class_drop_rate <= 1.0, "a probability in [0, 1]"),
        ("--noise_offset", args.noise_offset >= 0.0, "a non-negative number"),
        ("--vb_weight", args.vb_weight >= 0.0, "a non-negative number"),
        ("--bmap_min", 0.0 < args.bmap_min <= 1.0, "a number in (0, 1]"),
        ("--num_classes", args.num_classes is None or args.num_classes >= 1, "a positive integer"),
        ("--checkpointing_steps", args.checkpointing_steps >= 0, "a non-negative integer"),
        ("--validation_steps", args.validation_steps >= 0, "a non-negative integer"),
        ("--checkpoints_total_limit", args.checkpoints_total_limit is None or args.checkpoints_total_limit >= 1,
         "a positive integer"),
        ("--learning_rate", math.isfinite(args.learning_rate) and args.learning_rate > 0, "a positive number"),
        ("--lr_warmup_steps", args.lr_warmup_steps >= 0, "a non-negative integer"),
        ("--adam_beta1", 0.0 <= args.adam_beta1 < 1.0, "a number in [0, 1)"),
        ("--adam_beta2", 0.0 <= args.adam_beta2 < 1.0, "a number in [0, 1)"),
        ("--adam_weight_decay", math.isfinite(args.adam_weight_decay) and args.adam_weight_decay >= 0,
         "a non-negative number"),
        ("--adam_epsilon", math.isfinite(args.adam_epsilon) and args.adam_epsilon > 0, "a positive number"),
        ("--max_grad_norm", math.isfinite(args.max_grad_norm) and args.max_grad_norm >= 0, "a non-negative number"),
        ("--ema_decay", 0.0 <= args.ema_decay <= 1.0, "a number in [0, 1]"),
        ("--guidance_scale", math.isfinite(args.guidance_scale) and args.guidance_scale >= 0, "a non-negative number"),
        ("--num_validation_images", args.num_validation_images >= 1, "a positive integer"),
        ("--validation_inference_steps", args.validation_inference_steps >= 1, "a positive integer"),
    ]
    for flag, ok, expected in checks:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {getattr(args, flag[2:])!r}")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("pass only one of --dataset_name and --train_data_dir")
    if (args.license_name or args.license_link) and args.license not in (None, "other"):
        raise ValueError(f"--license_name and --license_link go with --license other, not --license {args.license}")
    try:  # the card's rule (a Hub id, or other with a lowercase name), checked before any training
        license_metadata(args.license, args.license_name, args.license_link)
    except ValueError as error:
        raise ValueError(f"--license: {error}") from None
    check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir,
                     inputs=[args.train_data_dir, args.dataset_name, args.pretrained_model_name_or_path])
    if args.resume_from_checkpoint not in (None, "latest"):
        path = Path(args.resume_from_checkpoint)
        if not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name):
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a checkpoint-N folder")
        if not checkpoint_is_complete(path):
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is incomplete (no optimizer "
                             "state or weights); pick another checkpoint")
    return args


#: What a training run writes into --output_dir (anything else there is the user's).
RUN_ENTRIES = {"model_index.json", "unet", "unet_ema", "scheduler", "README.md", "training_args.json", "samples",
               "logs", "pipeline_semantic_ultrasound.py", "pipeline_ultrasound.py", "validation_grid.png"}

#: ``kind`` of the output-folder marker of a training run.
KIND = "train"


def is_run_entry(name: str) -> bool:
    """Whether a name in --output_dir is something a training run writes (a resumable writer's own entries)."""
    return name in RUN_ENTRIES or bool(CHECKPOINT_PATTERN.match(name)) or name.startswith(".")


def check_output_dir(output_dir: str, overwrite: bool = False, inputs: Sequence[Optional[str]] = ()) -> None:
    """The package's output rule for a training run, before any work: --output_dir may be new, empty, or a run
    folder (only the entries a run writes, :func:`is_run_entry`), to be resumed or continued; anything else needs
    --overwrite_output_dir, and the working directory, a parent of it or a folder holding an input never."""
    from ultrasound_diffusers.utils.io import check_output_dir as check

    try:
        check(output_dir, KIND, inputs=inputs, overwrite=overwrite, own_entries=is_run_entry)
    except ValueError as err:
        raise ValueError(str(err).replace("pass --overwrite ", "pass --overwrite_output_dir ")) from None


# ---------------------------------------------------------------------------------------------------- data
#: How the package's data helpers name their arguments in errors: as this script's flags.
DATA_FLAGS = {"dataset_name": "--dataset_name", "data_dir": "--train_data_dir", "image_column": "--image_column",
              "label_column": "--label_column", "num_classes": "--num_classes"}


# ---------------------------------------------------------------------------------------------------- model
def load_model_config(spec: str) -> Dict[str, Any]:
    """Model config dict from a preset name, a training/configs/<name>.json file or a JSON path."""
    from ultrasound_diffusers.models.unet_semantic_2d import SEMANTIC_UNET_PRESETS, SemanticUNet2DModel

    path = Path(spec)
    if not path.is_file() and (CONFIG_DIR / f"{spec}.json").is_file():
        path = CONFIG_DIR / f"{spec}.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--model_config {spec!r}: {path} is not valid JSON ({err})") from err
        if not isinstance(config, dict):
            raise ValueError(f"--model_config {spec!r}: {path} must hold a JSON object")
        if "preset" in config:
            preset = config.pop("preset")
            config = {**SemanticUNet2DModel.preset_config(preset), **config}
        config = {k: v for k, v in config.items() if not k.startswith("_") and k != "description"}
        unknown = set(config) - set(SemanticUNet2DModel._init_parameter_names())
        if unknown:
            raise ValueError(f"--model_config {spec!r}: unknown SemanticUNet2DModel keys {sorted(unknown)}")
        return config
    if spec in SEMANTIC_UNET_PRESETS:
        return SemanticUNet2DModel.preset_config(spec)
    files = sorted(p.stem for p in CONFIG_DIR.glob("*.json")) if CONFIG_DIR.is_dir() else []
    raise ValueError(
        f"--model_config {spec!r} is neither a JSON file nor a preset; presets: {sorted(SEMANTIC_UNET_PRESETS)}, "
        f"files in training/configs: {files}"
    )


def build_model(args: argparse.Namespace, num_classes: int):
    """A SemanticUNet2DModel for the data: sample size, channels and classes come from the data flags."""
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel

    height, width = args.resolution
    overrides = dict(
        sample_size=height if height == width else [height, width],
        in_channels=args.in_channels,
        out_channels=args.in_channels,
        num_classes=0 if args.unconditional else num_classes,
    )
    if args.learn_sigma is not None:
        overrides["learn_sigma"] = bool(args.learn_sigma)
    if args.pretrained_model_name_or_path:
        model = SemanticUNet2DModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet")
        for key in ("in_channels", "num_classes", "learn_sigma"):
            if key in overrides and model.config[key] != overrides[key]:
                raise ValueError(
                    f"--pretrained_model_name_or_path: the UNet has {key}={model.config[key]} but the training "
                    f"set-up needs {overrides[key]}"
                )
        model.register_to_config(sample_size=overrides["sample_size"])
        return model
    config = load_model_config(args.model_config)
    config.update(overrides)
    return SemanticUNet2DModel(**config)


def build_scheduler(args: argparse.Namespace, learn_sigma: bool):
    from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

    geometry = FanGeometry(args.probe_geometry, tuple(args.fan_apex), tuple(args.fan_radii), args.fan_half_angle_deg)
    return BMapAttenuationScheduler.from_preset(
        "camus-sdm",
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        variance_type="learned_range" if learn_sigma else "fixed_small",
        prediction_type=args.prediction_type,
        bmap_schedule=args.bmap_schedule,
        bmap_min=args.bmap_min,
        bmap_buffer=args.bmap_buffer,
        preserve_length=args.preserve_length,
        **geometry.to_config(),
    )


def _pipeline_class(conditional: bool):
    """SemanticUltrasoundPipeline for label-map models, UltrasoundPipeline for unconditional ones."""
    from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline, UltrasoundPipeline

    return SemanticUltrasoundPipeline if conditional else UltrasoundPipeline


# ---------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_images(
    unet,
    scheduler_config,
    labels: Optional[torch.Tensor],
    num_images: int,
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator,
) -> np.ndarray:
    """Images [N, H, W, C] float in [0, 1] drawn with the package's pipeline (a fresh scheduler, so the
    training scheduler's state is untouched). ``labels``: int64 [N, H, W] (None for an unconditional model)."""
    from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

    scheduler = BMapAttenuationScheduler.from_config(scheduler_config)
    conditional = labels is not None
    pipe = _pipeline_class(conditional)(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=num_inference_steps, generator=generator, output_type="np")
    if conditional:
        out = pipe(segmap=labels, guidance_scale=guidance_scale, **kwargs)
    else:
        out = pipe(batch_size=num_images, **kwargs)
    images = np.asarray(out.images, dtype=np.float32)
    return images if images.ndim == 4 else images[..., None]


# ---------------------------------------------------------------------------------------------------- saving
def training_summary(args: argparse.Namespace, num_examples: int, global_step: int, num_processes: int) -> Tuple[str, str]:
    """(training data, training details) paragraphs for the model card."""
    dataset = args.train_data_dir or args.dataset_name or "phantoms:echo"
    data = f"`{dataset}`: {num_examples} images at {args.resolution[0]}x{args.resolution[1]} px"
    if args.train_data_dir is None and (args.dataset_name is None or is_phantoms_spec(args.dataset_name)):
        data += (" (physics phantoms generated in memory by ultrasound-diffusers, `generate_phantoms(seed="
                 f"{args.seed})`; no patient data)")
    data += "."
    start = (f"fine-tuned from `{args.pretrained_model_name_or_path}`" if args.pretrained_model_name_or_path
             else "trained from a random initialisation")
    details = (
        f"Trained with `training/train_semantic.py` of ultrasound-diffusers ({start}) for {global_step} steps "
        f"(batch {args.train_batch_size} per process x {num_processes} processes x {args.gradient_accumulation_steps} "
        f"accumulation), AdamW lr {args.learning_rate} ({args.lr_scheduler} schedule, {args.lr_warmup_steps} warm-up "
        f"steps), weight decay {args.adam_weight_decay}, "
        f"{'EMA decay ' + str(args.ema_decay) if args.use_ema else 'no EMA'}; {args.prediction_type} prediction with "
        f"the hybrid loss (vb_weight {args.vb_weight}); "
        + ("unconditional." if args.unconditional else f"label maps dropped with probability {args.drop_rate} "
           "(classifier-free guidance).")
        + " The full argument list is in `training_args.json`."
    )
    return data, details


def save_final_pipeline(pipeline, args: argparse.Namespace, num_examples: int, global_step: int,
                        num_processes: int) -> Dict[str, Any]:
    """Save the pipeline into ``--output_dir`` (unet/, scheduler/, model_index.json; written atomically by the
    pipeline, checkpoints and logs kept) with its model card, ``training_args.json`` and a copy of the last
    validation grid (``samples/step-N.png``) as ``validation_grid.png``, which the card shows.

    The card's metadata carries the license (``--license``, ``--license_name``, ``--license_link``; ``other`` /
    ``unknown`` when not given), the Hub dataset id of ``--dataset_name`` (none for phantoms and
    local data), ``base_model`` when ``--pretrained_model_name_or_path`` is a Hub id, and the
    ``diffusers-training`` tag (:func:`ultrasound_diffusers.hub_utils.training_card_fields`).

    Returns:
        the keyword arguments that upload this card and the files it links to with ``pipeline.push_to_hub``:
        ``{"model_card": text, "extra_files": {name: path}}``.
    """
    from ultrasound_diffusers.hub_utils import save_model_card, training_card_fields
    from ultrasound_diffusers.utils.io import atomic_write_bytes, atomic_write_text

    out = Path(args.output_dir)
    grid_name = "validation_grid.png"  # the copy of the last validation grid that the card shows, beside it
    pipeline.save_pretrained(args.output_dir)
    data, details = training_summary(args, num_examples, global_step, num_processes)
    repo_id = args.hub_model_id or out.resolve().name
    fields = training_card_fields(
        dataset_name=args.dataset_name, train_data_dir=args.train_data_dir,
        pretrained_model=args.pretrained_model_name_or_path, license=args.license,
        license_name=args.license_name, license_link=args.license_link,
    )
    grids = sorted((int(p.stem.split("-")[1]), p) for p in (out / "samples").glob("step-*.png")
                   if p.stem.split("-")[1].isdigit() and int(p.stem.split("-")[1]) <= global_step)
    extra_files = {}
    if grids:
        step, grid = grids[-1]
        atomic_write_bytes(out / grid_name, grid.read_bytes())
        extra_files[grid_name] = out / grid_name
        rows = ("one row per validation label map: the map (coloured) and the image generated from it"
                if not args.unconditional else "unconditional samples")
        fields["sample_image"] = grid_name
        fields["sample_caption"] = (
            f"Validation samples at step {step} of {global_step} ({rows}; {args.validation_inference_steps} steps, "
            f"guidance {args.guidance_scale}, seed {args.seed}{', EMA weights' if args.use_ema else ''})"
        )
    else:
        (out / grid_name).unlink(missing_ok=True)  # a grid of an earlier run would not be this model's
    card = save_model_card(pipeline, args.output_dir, repo_id, training_data=data, training_details=details,
                           num_inference_steps=args.validation_inference_steps, guidance_scale=args.guidance_scale,
                           **fields)
    config = stage_arguments(vars(args), out / "training_args.json")
    atomic_write_text(out / "training_args.json", json.dumps(config, indent=2, default=str) + "\n")
    extra_files["training_args.json"] = out / "training_args.json"
    return {"model_card": card.read_text(encoding="utf-8"), "extra_files": extra_files}


def stage_arguments(arguments: Dict[str, Any], saved: Path) -> Dict[str, Any]:
    """The ``training_args.json`` of this run: its arguments (tuples as lists, no Hub token) and, when it resumed
    from a checkpoint into a folder whose ``saved`` file records an earlier stage with other arguments (a
    fine-tune resumed from the first stage), those stages under ``"earlier_stages"`` (oldest first), so no stage's
    arguments are lost. The top-level keys are always this run's."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in arguments.items() if k != "hub_token"}
    if not arguments.get("resume_from_checkpoint") or not saved.is_file():
        return config
    try:
        previous = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return config
    if not isinstance(previous, dict):
        return config
    earlier = previous.pop("earlier_stages", [])
    earlier = earlier if isinstance(earlier, list) else []
    if json.loads(json.dumps(previous, default=str)) != json.loads(json.dumps(config, default=str)):
        earlier = earlier + [previous]  # a resumed run with the same arguments is the same stage
    if earlier:
        config["earlier_stages"] = earlier
    return config


# ---------------------------------------------------------------------------------------------------- main
def prepare_training_data(args: argparse.Namespace, show_progress: bool = True):
    """Load the data (:func:`~ultrasound_diffusers.data.paired.load_paired_splits`) and check every training
    example and the validation label maps used for the sample grids
    (:func:`~ultrasound_diffusers.data.paired.check_paired_dataset`) before anything trains.

    Returns:
        ``(dataset, validation, num_classes, base_dir)``: the training split, the first
        ``--num_validation_images`` validation examples (None without a validation split), the number of classes
        (0 with ``--unconditional``) and the folder relative file names refer to.
    """
    label_column = None if args.unconditional else args.label_column
    want_validation = bool(args.validation_steps) and not args.unconditional
    dataset, validation, base_dir, _, _ = load_paired_splits(
        args.dataset_name, args.train_data_dir, config_name=args.dataset_config_name, cache_dir=args.cache_dir,
        size=tuple(args.resolution), num_phantoms=args.phantoms, seed=args.seed,
        num_validation=args.num_validation_images if want_validation else 0,
        max_train_samples=args.max_train_samples, progress=show_progress, arguments=DATA_FLAGS,
    )
    num_classes = check_paired_dataset(dataset, args.image_column, label_column, args.num_classes, base_dir,
                                       show_progress=show_progress, arguments=DATA_FLAGS)
    if label_column is not None and num_classes < 1:
        raise ValueError("the label maps hold no class; pass --num_classes or --unconditional")
    if validation is not None:
        try:
            check_paired_dataset(validation, args.image_column, label_column, num_classes, base_dir,
                                 arguments=DATA_FLAGS)
        except ValueError as err:
            raise ValueError(f"validation split: {err}") from err
    return dataset, validation, num_classes, base_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the training; expected failures (bad flags, bad data, a bad --output_dir) end in one line on stderr,
    ``train_semantic.py: error: ...``, and exit code 2, as argparse does; unexpected ones keep their traceback."""
    from ultrasound_diffusers.cli import run_reporting_errors

    return run_reporting_errors("train_semantic.py", train, argv)


def train(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)

    import datasets
    import diffusers

    is_local_main = int(os.environ.get("LOCAL_RANK", "0")) == 0
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    datasets.utils.logging.set_verbosity_warning() if is_local_main else datasets.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_warning() if is_local_main else diffusers.utils.logging.set_verbosity_error()

    # ---------------------------------------------------------------- data (checked before anything starts)
    # Every process loads the data itself (datasets' cache is guarded by file locks), so bad data stops the run
    # before the processes even connect.
    dataset, validation, num_classes, base_dir = prepare_training_data(args, show_progress=is_local_main)
    conditional = not args.unconditional
    label_column = args.label_column if conditional else None
    logger.info("dataset: %d examples, %s", len(dataset), f"{num_classes} classes" if conditional else "unconditional")

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from ultrasound_diffusers.losses import hybrid_loss
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel

    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    project_config = ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=project_config,
    )
    logger.info("processes: %d, device: %s, mixed precision: %s", accelerator.num_processes, accelerator.device,
                describe_mixed_precision(accelerator))
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(args.seed)  # the same initial weights in every process

    size = tuple(args.resolution)
    transform = PairedTransform(args.image_column, label_column, size, args.in_channels, base_dir)
    train_dataset = dataset.with_transform(transform)
    sampler = EpochShuffleSampler(len(train_dataset), args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.train_batch_size, sampler=sampler, collate_fn=collate_pairs,
        num_workers=args.dataloader_num_workers, drop_last=False,
    )
    validation_labels = None
    if conditional and args.validation_steps:
        source = train_dataset
        if validation is not None:
            source = validation.with_transform(transform)
        n_val = min(args.num_validation_images, len(source))
        validation_labels = torch.stack([source[i]["labels"] for i in range(n_val)])

    # ---------------------------------------------------------------- model, scheduler, optimiser
    unet = build_model(args, num_classes)
    learn_sigma = bool(unet.config.learn_sigma)
    noise_scheduler = build_scheduler(args, learn_sigma)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    logger.info("model: %.2fM parameters, learn_sigma=%s", sum(p.numel() for p in unet.parameters()) / 1e6, learn_sigma)

    ema_model = None
    if args.use_ema:
        from diffusers.training_utils import EMAModel

        ema_model = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=SemanticUNet2DModel,
                             model_config=unet.config)

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema_model is not None:
                ema_model.save_pretrained(os.path.join(output_dir, "unet_ema"))
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "unet"))
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        if ema_model is not None:
            with warnings.catch_warnings():  # diffusers' EMAModel.from_pretrained uses a deprecated from_config call
                warnings.simplefilter("ignore", FutureWarning)
                loaded = type(ema_model).from_pretrained(os.path.join(input_dir, "unet_ema"), SemanticUNet2DModel)
            ema_model.load_state_dict(loaded.state_dict())
            ema_model.to(accelerator.device)
            del loaded
        while models:
            model = models.pop()
            loaded = SemanticUNet2DModel.from_pretrained(input_dir, subfolder="unet")
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * max(num_update_steps_per_epoch, 1)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader, lr_scheduler)
    if ema_model is not None:
        ema_model.to(accelerator.device)

    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(max_train_steps / num_update_steps_per_epoch)

    if accelerator.is_main_process:
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()
                   if k != "hub_token"}
        accelerator.init_trackers("train_semantic", config=hparams)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** training *****")
    logger.info("  examples = %d, epochs = %d, batch per process = %d, total batch = %d, optimisation steps = %d",
                len(dataset), num_epochs, args.train_batch_size, total_batch, max_train_steps)

    # ---------------------------------------------------------------- resume
    global_step, first_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest":
            candidates = [p for _, p in reversed(list_checkpoints(args.output_dir))]
        else:
            candidates = [Path(args.resume_from_checkpoint)]
        path = None
        for candidate in candidates:
            try:
                accelerator.load_state(str(candidate))
            except Exception as err:  # a damaged checkpoint: fall back to the one before it ("latest" only)
                if args.resume_from_checkpoint != "latest":
                    raise ValueError(f"--resume_from_checkpoint {candidate} could not be loaded: {err}") from err
                logger.warning("checkpoint %s could not be loaded (%s); trying the previous one", candidate, err)
                continue
            path = candidate
            break
        if path is None:
            if candidates:
                raise ValueError(f"no checkpoint in {args.output_dir} could be loaded; remove them or start anew")
            logger.info("no checkpoint in %s; starting a new run", args.output_dir)
        else:
            logger.info("resumed from %s", path)
            global_step = int(CHECKPOINT_PATTERN.match(path.name).group(1))
            first_epoch = global_step // num_update_steps_per_epoch
            resume_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps

    def save_checkpoint(step: int) -> None:
        save_training_checkpoint(accelerator, args.output_dir, step, args.checkpoints_total_limit, logger)
        accelerator.wait_for_everyone()

    def run_validation(step: int) -> None:
        from ultrasound_diffusers.utils.io import atomic_write

        model = accelerator.unwrap_model(unet)
        if ema_model is not None:
            ema_model.store(model.parameters())
            ema_model.copy_to(model.parameters())
        model.eval()
        try:
            n = args.num_validation_images if validation_labels is None else len(validation_labels)
            images = sample_images(
                model, noise_scheduler.config, validation_labels, n, args.validation_inference_steps,
                args.guidance_scale, torch.Generator().manual_seed(args.seed),
            )
        finally:
            model.train()
            if ema_model is not None:
                ema_model.restore(model.parameters())
        grid = make_grid(images, None if validation_labels is None else validation_labels.numpy(), num_classes)
        from PIL import Image

        with atomic_write(Path(args.output_dir) / "samples" / f"step-{step:07d}.png", "wb") as handle:
            Image.fromarray(grid).save(handle, format="PNG")
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", grid, step, dataformats="HWC")
            elif tracker.name == "wandb":
                import wandb

                caption = "label map | sample" if validation_labels is not None else "samples"
                tracker.log({"validation": wandb.Image(grid, caption=f"step {step}: {caption}")}, step=step)

    # ---------------------------------------------------------------- training loop
    progress_bar = tqdm(range(max_train_steps), initial=global_step, desc="steps",
                        disable=not accelerator.is_local_main_process)
    T = noise_scheduler.config.num_train_timesteps
    start_step, start_time = global_step, time.perf_counter()
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        unet.train()
        sampler.use_epoch(epoch)
        skip = resume_batches if epoch == first_epoch else 0
        loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for batch_index, batch in enumerate(loader, start=skip):
            # All randomness of this batch comes from (seed, epoch, batch, process): exact resumes.
            seed = derive_seed(args.seed, epoch, batch_index, accelerator.process_index)
            torch.manual_seed(seed)  # dropout, if any
            gen = torch.Generator().manual_seed(seed)
            clean, segmap, timesteps, noise = draw_training_inputs(
                batch["pixel_values"], batch.get("labels"), num_classes if conditional else 0, T, args.drop_rate,
                args.random_flip, gen, noise_offset=args.noise_offset, class_drop_rate=args.class_drop_rate,
            )
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)

            with accelerator.accumulate(unet):
                model_output = unet(noisy, timesteps, segmap).sample
                terms = hybrid_loss(noise_scheduler, model_output, clean, noise, noisy, timesteps,
                                    vb_weight=args.vb_weight, prediction_type=args.prediction_type,
                                    learn_sigma=learn_sigma)
                accelerator.backward(terms.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if accelerator.sync_gradients:
                if ema_model is not None:
                    ema_model.step(unet.parameters())
                global_step += 1
                progress_bar.update(1)
                stats = torch.stack([terms.loss.detach(), terms.mse.mean().detach(), terms.vb.mean().detach()])
                stats = accelerator.reduce(stats, reduction="mean")
                logs = {"loss": float(stats[0]), "mse": float(stats[1]), "vb": float(stats[2]),
                        "lr": lr_scheduler.get_last_lr()[0], "epoch": epoch}
                if ema_model is not None:
                    logs["ema_decay"] = ema_model.cur_decay_value
                progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", mse=f"{logs['mse']:.4f}", lr=f"{logs['lr']:.2e}")
                accelerator.log(logs, step=global_step)

                if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                    save_checkpoint(global_step)
                if args.validation_steps and global_step % args.validation_steps == 0:
                    if accelerator.is_main_process:
                        run_validation(global_step)
                    accelerator.wait_for_everyone()
            if global_step >= max_train_steps:
                break
    progress_bar.close()
    elapsed = time.perf_counter() - start_time
    if global_step > start_step:
        per_step = elapsed / (global_step - start_step)
        logger.info("trained %d steps in %.1f s: %.3f s/step, %.1f images/s (validation and checkpoints included)",
                    global_step - start_step, elapsed, per_step, total_batch / per_step)

    # ---------------------------------------------------------------- final pipeline folder
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        if ema_model is not None:
            ema_model.copy_to(model.parameters())
        model.eval()
        pipeline = _pipeline_class(conditional)(unet=model, scheduler=noise_scheduler)
        upload = save_final_pipeline(pipeline, args, len(dataset), global_step, accelerator.num_processes)
        logger.info("saved the pipeline to %s", args.output_dir)
        if args.push_to_hub:
            repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
            url = pipeline.push_to_hub(repo_id, private=args.hub_private_repo or None, token=args.hub_token,
                                       commit_message=f"train_semantic.py: step {global_step}", **upload)
            logger.info("pushed to the Hub: %s", url)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
