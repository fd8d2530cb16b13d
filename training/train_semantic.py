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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("train_semantic")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
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
    parts = [p for p in re.split(r"[,x]", str(value).strip().lower()) if p]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--resolution must be an int or H,W (e.g. 64 or 8,256), got {value!r}")
    return sizes[0], sizes[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a semantic / unconditional ultrasound diffusion model with B-map attenuation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", type=str, default=None,
                   help="A Hub dataset id, a local dataset script/folder, a folder written by `save_to_disk`, or "
                        "`phantoms:<anatomy>` (e.g. phantoms:echo) for phantoms generated in memory. Without "
                        "--dataset_name and --train_data_dir: phantoms:echo.")
    g.add_argument("--dataset_config_name", type=str, default=None, help="Config name of the dataset.")
    g.add_argument("--train_data_dir", type=str, default=None,
                   help="An imagefolder: images plus a metadata.jsonl/csv whose `image_file_name` and "
                        "`label_file_name` columns pair each image with its label map.")
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
    g.add_argument("--noise_offset", type=float, default=0.0,
                   help="Std of a per-image constant added to the training noise (offset noise; 0 = off, "
                        "0.05-0.1 typical). Helps the model change an image's mean brightness.")

    g = p.add_argument_group("scheduler")
    g.add_argument("--num_train_timesteps", type=int, default=1000)
    g.add_argument("--beta_schedule", type=str, default="squaredcos_cap_v2",
                   choices=("linear", "scaled_linear", "squaredcos_cap_v2", "linear_small", "sigmoid"),
                   help="Noise schedule (squaredcos_cap_v2 = the published cosine schedule).")
    g.add_argument("--beta_start", type=float, default=0.0001)
    g.add_argument("--beta_end", type=float, default=0.02)
    g.add_argument("--bmap_schedule", type=str, default="cosine", choices=("linear", "cosine", "normal_cosine", "sqrt"))
    g.add_argument("--bmap_min", type=float, default=0.97, help="B-map floor eps in (0, 1]; 1.0 = plain DDPM.")
    g.add_argument("--bmap_buffer", action="store_true", help="No attenuation in the first 5%% of the steps.")
    g.add_argument("--preserve_length", action="store_true", help="The published 'preserve length' B-maps.")
    g.add_argument("--probe_geometry", type=str, default="convex", choices=("convex", "linear"))
    g.add_argument("--fan_apex", type=float, nargs=2, default=(0.5, 0.0), metavar=("X", "Y"),
                   help="Fan apex in units of the image width.")
    g.add_argument("--fan_radii", type=float, nargs=2, default=(0.0, 250.0 / 256.0), metavar=("INNER", "OUTER"),
                   help="Fan radii in units of the image width.")
    g.add_argument("--fan_half_angle_deg", type=float, default=32.1003690834937)

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
    return p


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
    check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir)
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
               "logs", "pipeline_semantic_ultrasound.py", "pipeline_ultrasound.py", ".ultrasound-diffusers.json",
               "validation_grid.png"}


def check_output_dir(output_dir: str, overwrite: bool = False) -> None:
    """Refuse, before any work, an --output_dir that is a file or a non-empty folder that is not a training run."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir {output_dir} exists and is not a folder")
    if not path.is_dir() or overwrite:
        return
    foreign = sorted(
        e.name for e in path.iterdir()
        if e.name not in RUN_ENTRIES and not CHECKPOINT_PATTERN.match(e.name) and not e.name.startswith(".checkpoint-")
        and not e.name.startswith(".")
    )
    if foreign:
        raise ValueError(
            f"--output_dir {output_dir} holds files that are not from a training run ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose a new folder, or pass --overwrite_output_dir"
        )


# ---------------------------------------------------------------------------------------------------- data
def load_datasets(args: argparse.Namespace, show_progress: bool = False):
    """The raw training split and, when the source has one, a validation split (``datasets.Dataset`` or None).

    Sources: ``--train_data_dir`` (imagefolder), ``--dataset_name phantoms:<anatomy>`` (generated in memory; the
    validation phantoms are disjoint from the training ones), a ``save_to_disk`` folder (a Dataset, or a
    DatasetDict with a ``train`` and optionally a ``validation`` split) or a Hub / local dataset script.
    """
    import datasets

    from ultrasound_diffusers.data.sources import is_saved_dataset, load_hub_dataset

    name = args.dataset_name
    want_validation = bool(args.validation_steps) and not args.unconditional
    validation = None
    if args.train_data_dir is not None:
        if not Path(args.train_data_dir).is_dir():
            raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a directory")
        ds = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir)
    elif name is None or name.startswith("phantoms"):
        anatomy = name.split(":", 1)[1] if name and ":" in name else "echo"
        from ultrasound_diffusers.data.phantoms import generate_phantoms

        size = tuple(args.resolution)
        ds = generate_phantoms(args.phantoms, anatomy=anatomy, size=size, seed=args.seed, progress=show_progress)
        if want_validation:
            validation = generate_phantoms(args.num_validation_images, anatomy=anatomy, size=size, seed=args.seed,
                                           start=args.phantoms)
    elif is_saved_dataset(name):
        ds = datasets.load_from_disk(name)
    else:
        ds = load_hub_dataset(name, args.dataset_config_name, cache_dir=args.cache_dir, argument="--dataset_name")
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(f"the dataset {name or args.train_data_dir!r} has no 'train' split (splits: {sorted(ds)})")
        validation = ds["validation"] if want_validation and "validation" in ds else None
        ds = ds["train"]
    if args.max_train_samples is not None:
        ds = ds.select(range(min(len(ds), args.max_train_samples)))
    if len(ds) == 0:
        raise ValueError("the training dataset is empty")
    if validation is not None and len(validation) == 0:
        validation = None
    return ds, validation


def _source_name(value: Any, index: int) -> str:
    """'row i' plus the file name when the (undecoded) value carries one."""
    path = None
    if isinstance(value, dict):
        path = value.get("path")
    elif isinstance(value, str):
        path = value
    elif hasattr(value, "filename") and getattr(value, "filename", None):
        path = value.filename
    return f"row {index} ({path})" if path else f"row {index}"


def _open_any(value: Any, base_dir: Optional[str] = None):
    """A PIL image or a numpy array from an Image feature value, an array, bytes or a path."""
    import io

    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        return _open_any(value.get("path"), base_dir)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
            path = Path(base_dir) / path
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        return Image.open(path)
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if value is None:
        raise ValueError("missing value")
    return np.asarray(value)


def _spatial_size(obj) -> Tuple[int, int]:
    """(H, W) of a PIL image or an array [H, W] / [H, W, C]."""
    if hasattr(obj, "size") and not isinstance(obj, np.ndarray):
        w, h = obj.size
        return h, w
    arr = np.asarray(obj)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        return arr.shape[1], arr.shape[2]
    return arr.shape[0], arr.shape[1]


def label_array(obj) -> np.ndarray:
    """Integer label map [H, W] from a PIL image / array (the package's one acceptance rule,
    :func:`ultrasound_diffusers.image_processor.to_label_array`)."""
    from ultrasound_diffusers.image_processor import to_label_array

    return to_label_array(obj, "a label map")


def check_dataset(
    ds,
    image_column: str,
    label_column: Optional[str],
    num_classes: Optional[int],
    base_dir: Optional[str] = None,
    show_progress: bool = True,
) -> int:
    """Check every example before training: the columns exist, images decode, label maps are single-channel
    integer maps of the image's size with ids in [0, num_classes). Errors name the row and file.

    Args:
        ds: the training ``datasets.Dataset``.
        image_column: image column; label_column: label column or None (unconditional training).
        num_classes: expected number of classes, or None to infer it as ``max label + 1``.
        base_dir: folder that relative file names in the columns refer to.

    Returns:
        The number of classes (``num_classes`` or the inferred value; 0 without a label column).

    Raises:
        ValueError: naming the column / row / file at fault.
    """
    import datasets
    from tqdm.auto import tqdm

    columns = list(ds.column_names)
    wanted = [("--image_column", image_column)] + ([("--label_column", label_column)] if label_column else [])
    for flag, col in wanted:
        if col not in columns:
            raise ValueError(f"{flag} {col!r} is not a column of the dataset; its columns are {columns}")
    if label_column is not None and label_column == image_column:
        raise ValueError("--image_column and --label_column must differ")
    view = ds.select_columns([c for _, c in wanted])
    for col in view.column_names:
        if isinstance(view.features[col], datasets.Image):
            view = view.cast_column(col, datasets.Image(decode=False))
    max_label = -1
    for index, row in enumerate(tqdm(view, desc="checking data", disable=not show_progress, leave=False)):
        raw_image = row[image_column]
        where = _source_name(raw_image, index)
        try:
            image = _open_any(raw_image, base_dir)
            image_size = _spatial_size(image)
        except Exception as err:  # noqa: BLE001 - report any decoding failure with its row
            raise ValueError(f"--image_column {image_column!r}: cannot read the image of {where}: {err}") from err
        if label_column is None:
            continue
        raw_label = row[label_column]
        where = _source_name(raw_label, index)
        try:
            labels = label_array(_open_any(raw_label, base_dir))
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"--label_column {label_column!r}: cannot read the label map of {where}: {err}") from err
        if tuple(labels.shape) != tuple(image_size):
            raise ValueError(
                f"the label map of {where} has size {tuple(labels.shape)} (H, W) but its image has size "
                f"{tuple(image_size)}; image and label map must have the same size"
            )
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            raise ValueError(
                f"the label map of {where} holds class ids in [{lo}, {hi}], outside [0, {num_classes}) "
                f"(--num_classes {num_classes})"
            )
        max_label = max(max_label, hi)
    if label_column is None:
        return 0
    return int(num_classes) if num_classes is not None else max_label + 1


def _image_to_array(obj, in_channels: int) -> np.ndarray:
    """Float32 [C, H, W] in [0, 1] from a PIL image or an array (uint8 / uint16 scaled, floats taken as [0, 1])."""
    from PIL import Image

    if isinstance(obj, Image.Image):
        if obj.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            arr = np.asarray(obj).astype(np.float32) / 65535.0
        elif obj.mode == "I":
            arr = np.asarray(obj).astype(np.float32)
            arr = arr / (255.0 if arr.max() <= 255 else 65535.0)
        elif obj.mode == "F":
            arr = np.asarray(obj).astype(np.float32)
        else:
            arr = np.asarray(obj.convert("RGB" if in_channels == 3 else "L")).astype(np.float32) / 255.0
    else:
        arr = np.asarray(obj)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        else:
            arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3):
        arr = arr[..., :3].transpose(2, 0, 1) if arr.shape[-1] == 4 else arr.transpose(2, 0, 1)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W] with 1 or 3 channels, got {arr.shape}")
    if arr.shape[0] == 3 and in_channels == 1:
        arr = (0.299 * arr[0] + 0.587 * arr[1] + 0.114 * arr[2])[None]
    elif arr.shape[0] == 1 and in_channels == 3:
        arr = np.repeat(arr, 3, axis=0)
    return np.clip(arr, 0.0, 1.0)


def preprocess_image(obj, size: Tuple[int, int], in_channels: int) -> torch.Tensor:
    """Image -> float32 [C, H, W] in [-1, 1] at ``size`` (bicubic, antialiased when shrinking)."""
    x = torch.from_numpy(np.ascontiguousarray(_image_to_array(obj, in_channels)))
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x[None], size=tuple(size), mode="bicubic", align_corners=False, antialias=True)[0]
    return x.clamp(0.0, 1.0) * 2.0 - 1.0


def preprocess_labels(obj, size: Tuple[int, int]) -> torch.Tensor:
    """Label map -> int64 [H, W] at ``size`` (nearest)."""
    y = torch.from_numpy(label_array(obj))
    if tuple(y.shape) != tuple(size):
        y = F.interpolate(y[None, None].float(), size=tuple(size), mode="nearest-exact")[0, 0].round().long()
    return y


def make_transform(image_column: str, label_column: Optional[str], size, in_channels: int, base_dir=None):
    """``datasets`` transform producing ``pixel_values`` [C, H, W] in [-1, 1] and ``labels`` [H, W] int64."""

    def transform(batch: Dict[str, List[Any]]) -> Dict[str, List[torch.Tensor]]:
        out = {"pixel_values": [preprocess_image(_open_any(v, base_dir), size, in_channels) for v in batch[image_column]]}
        if label_column is not None:
            out["labels"] = [preprocess_labels(_open_any(v, base_dir), size) for v in batch[label_column]]
        return out

    return transform


def collate_fn(examples: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float()}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([e["labels"] for e in examples]).long()
    return batch


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Random order that depends only on (seed, epoch): every process draws the same permutation, and a resumed
    run sees exactly the batches an uninterrupted one would. The epoch is set with :meth:`use_epoch` (not
    ``set_epoch``, so that accelerate's own epoch counter, which restarts at 0 after a resume, leaves it alone)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(_derive_seed(self.seed, "shuffle", self.epoch))
        yield from torch.randperm(self.num_samples, generator=g).tolist()

    def __len__(self) -> int:
        return self.num_samples


def _derive_seed(*keys: Any) -> int:
    """A 63-bit seed from a tuple of ints / strings (an independent stream per key tuple)."""
    ints = [abs(k) if isinstance(k, int) else int.from_bytes(str(k).encode()[:8], "little") for k in keys]
    return int(np.random.SeedSequence(ints).generate_state(1, dtype=np.uint64)[0]) >> 1


def draw_training_inputs(
    clean: torch.Tensor,
    labels: Optional[torch.Tensor],
    num_classes: int,
    num_train_timesteps: int,
    drop_rate: float,
    random_flip: bool,
    generator: torch.Generator,
    noise_offset: float = 0.0,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The random inputs of one training batch, all drawn from ``generator`` (CPU) in a fixed order.

    Args:
        clean: [B, C, H, W] images in [-1, 1]; labels: int64 [B, H, W] or None (unconditional).
        num_classes: K (ignored without labels); drop_rate: probability of an all-zero ("no label") map.
        random_flip: flip image and label map together left-right with probability 1/2.
        noise_offset: std of a per-sample, per-channel constant added to the noise ("offset noise", diffusers'
            ``--noise_offset``), drawn last so that 0 leaves every other draw unchanged.

    Returns:
        ``(clean, segmap, timesteps, noise)``: the (flipped) images, the float one-hot map [B, K, H, W] with
        dropped samples zeroed (None without labels), int64 timesteps [B] uniform in [0, T), noise [B, C, H, W].
    """
    bsz = clean.shape[0]
    device = clean.device
    flip = torch.rand(bsz, generator=generator) < 0.5
    timesteps = torch.randint(0, num_train_timesteps, (bsz,), generator=generator).to(device)
    noise = torch.randn(clean.shape, generator=generator).to(device=device, dtype=clean.dtype)
    keep = (torch.rand(bsz, generator=generator) >= drop_rate).to(device)
    if random_flip:
        clean = torch.where(flip.view(-1, 1, 1, 1).to(device), clean.flip(-1), clean)
        if labels is not None:
            labels = torch.where(flip.view(-1, 1, 1).to(labels.device), labels.flip(-1), labels)
    segmap = None
    if labels is not None:
        segmap = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(clean.dtype)
        segmap = segmap * keep.view(-1, 1, 1, 1).to(clean.dtype)
    if noise_offset:
        offset = torch.randn(bsz, clean.shape[1], 1, 1, generator=generator).to(device=device, dtype=clean.dtype)
        noise = noise + noise_offset * offset
    return clean, segmap, timesteps, noise


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

    return BMapAttenuationScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        variance_type="learned_range" if learn_sigma else "fixed_small",
        prediction_type=args.prediction_type,
        clip_sample=True,
        timestep_spacing="linspace",
        bmap_schedule=args.bmap_schedule,
        bmap_min=args.bmap_min,
        bmap_buffer=args.bmap_buffer,
        preserve_length=args.preserve_length,
        probe_geometry=args.probe_geometry,
        fan_apex=tuple(args.fan_apex),
        fan_radii=tuple(args.fan_radii),
        fan_half_angle_deg=args.fan_half_angle_deg,
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


def make_grid(images: np.ndarray, labels: Optional[np.ndarray], num_classes: int = 0) -> np.ndarray:
    """uint8 RGB grid [rows, cols, 3]: one row per sample, ``coloured label map | generated image`` (only the
    image when unconditional). ``images``: float [N, H, W, C] in [0, 1]; ``labels``: int [N, H, W] or None."""
    from ultrasound_diffusers.data.labels import colorize_labels

    imgs = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    colours = None if labels is None else colorize_labels(np.asarray(labels), num_classes or None)
    pad = 2
    rows = []
    for i in range(len(imgs)):
        parts = [imgs[i]] if colours is None else [colours[i], imgs[i]]
        sep = np.full((imgs.shape[1], pad, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([p for part in parts for p in (part, sep)][:-1], axis=1))
    hsep = np.full((pad, rows[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([r for row in rows for r in (row, hsep)][:-1], axis=0)


# ---------------------------------------------------------------------------------------------------- saving
def checkpoint_is_complete(path: Path) -> bool:
    """Whether a ``checkpoint-N`` folder holds what :meth:`Accelerator.save_state` writes here: the optimizer
    state and the weights (``unet/`` from the save hook, or accelerate's own model file)."""
    path = Path(path)
    if not (path / "optimizer.bin").is_file() and not (path / "optimizer.safetensors").is_file():
        return False
    unet = path / "unet"
    if (unet / "config.json").is_file() and any(unet.glob("*.safetensors")):
        return True
    return any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def list_checkpoints(output_dir: str) -> List[Tuple[int, Path]]:
    """(step, path) of every complete ``checkpoint-N`` folder, oldest first (empty or partial ones are skipped)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir()
        if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name)) and checkpoint_is_complete(p)
    ]
    return sorted(found)


def training_summary(args: argparse.Namespace, num_examples: int, global_step: int, num_processes: int) -> Tuple[str, str]:
    """(training data, training details) paragraphs for the model card."""
    dataset = args.train_data_dir or args.dataset_name or "phantoms:echo"
    data = f"`{dataset}`: {num_examples} images at {args.resolution[0]}x{args.resolution[1]} px"
    if args.train_data_dir is None and (args.dataset_name is None or args.dataset_name.startswith("phantoms")):
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

    The card's metadata carries the license (``other`` with ``license_name`` / ``license_link`` when it cannot be
    told; ``--license`` if the parser has one), the Hub dataset id of ``--dataset_name`` (none for phantoms and
    local data), ``base_model`` when ``--pretrained_model_name_or_path`` is a Hub id, and the
    ``diffusers-training`` tag (:func:`ultrasound_diffusers.pipelines.hub.training_card_fields`).

    Returns:
        the keyword arguments that upload this card and the files it links to with ``pipeline.push_to_hub``:
        ``{"model_card": text, "extra_files": {name: path}}``.
    """
    from ultrasound_diffusers.pipelines.hub import save_model_card, training_card_fields
    from ultrasound_diffusers.utils.io import atomic_write_bytes, atomic_write_text

    out = Path(args.output_dir)
    grid_name = "validation_grid.png"  # the copy of the last validation grid that the card shows, beside it
    pipeline.save_pretrained(args.output_dir)
    data, details = training_summary(args, num_examples, global_step, num_processes)
    repo_id = args.hub_model_id or out.resolve().name
    fields = training_card_fields(
        dataset_name=args.dataset_name, train_data_dir=args.train_data_dir,
        pretrained_model=args.pretrained_model_name_or_path, license=getattr(args, "license", None),
        license_name=getattr(args, "license_name", None), license_link=getattr(args, "license_link", None),
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
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "hub_token"}
    atomic_write_text(out / "training_args.json", json.dumps(config, indent=2, default=str) + "\n")
    extra_files["training_args.json"] = out / "training_args.json"
    return {"model_card": card.read_text(encoding="utf-8"), "extra_files": extra_files}


# ---------------------------------------------------------------------------------------------------- main
def prepare_training_data(args: argparse.Namespace, show_progress: bool = True):
    """Load the data and check every training example (and the validation label maps used for the sample grids,
    see :func:`check_dataset`) before anything trains.

    Returns:
        ``(dataset, validation, num_classes, base_dir)``: the training split, the first
        ``--num_validation_images`` validation examples (None without a validation split), the number of classes
        (0 with ``--unconditional``) and the folder relative file names refer to.
    """
    label_column = None if args.unconditional else args.label_column
    base_dir = args.train_data_dir or (args.dataset_name if args.dataset_name and Path(args.dataset_name).is_dir() else None)
    dataset, validation = load_datasets(args, show_progress)
    num_classes = check_dataset(dataset, args.image_column, label_column, args.num_classes, base_dir,
                                show_progress=show_progress)
    if label_column is not None and num_classes < 1:
        raise ValueError("the label maps hold no class; pass --num_classes or --unconditional")
    if validation is not None:
        validation = validation.select(range(min(len(validation), args.num_validation_images)))
        try:
            check_dataset(validation, args.image_column, label_column, num_classes, base_dir, show_progress=False)
        except ValueError as err:
            raise ValueError(f"validation split: {err}") from err
    return dataset, validation, num_classes, base_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the training; expected failures (bad flags, bad data, a bad --output_dir) end in one line on stderr,
    ``train_semantic.py: error: ...``, and exit code 2, as argparse does; unexpected ones keep their traceback."""
    try:
        return train(argv)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"train_semantic.py: error: {err}", file=sys.stderr)
        return 2


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
                accelerator.mixed_precision)
    set_seed(args.seed)  # the same initial weights in every process

    size = tuple(args.resolution)
    train_dataset = dataset.with_transform(make_transform(args.image_column, label_column, size, args.in_channels, base_dir))
    sampler = EpochShuffleSampler(len(train_dataset), args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.train_batch_size, sampler=sampler, collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers, drop_last=False,
    )
    validation_labels = None
    if conditional and args.validation_steps:
        source = train_dataset
        if validation is not None:
            source = validation.with_transform(
                make_transform(args.image_column, label_column, size, args.in_channels, base_dir))
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
        # written under a temporary name and renamed when complete; older checkpoints beyond
        # --checkpoints_total_limit are removed only after that, so a kill at any moment leaves a usable one
        tmp = os.path.join(args.output_dir, f".checkpoint-{step}.tmp")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final = os.path.join(args.output_dir, f"checkpoint-{step}")
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            logger.info("saved %s", final)
            if args.checkpoints_total_limit is not None:
                existing = list_checkpoints(args.output_dir)
                for _, old in existing[: max(0, len(existing) - args.checkpoints_total_limit)]:
                    shutil.rmtree(old, ignore_errors=True)
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
            seed = _derive_seed(args.seed, epoch, batch_index, accelerator.process_index)
            torch.manual_seed(seed)  # dropout, if any
            gen = torch.Generator().manual_seed(seed)
            clean, segmap, timesteps, noise = draw_training_inputs(
                batch["pixel_values"], batch.get("labels"), num_classes if conditional else 0, T, args.drop_rate,
                args.random_flip, gen, noise_offset=args.noise_offset,
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
