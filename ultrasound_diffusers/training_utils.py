"""Helpers for training diffusion models on (image, label map) pairs, used by ``training/train_semantic.py``.

Like ``diffusers.training_utils``, this module holds the reusable pieces of the training script:

* Reproducible randomness: :func:`derive_seed` turns ``(seed, epoch, batch, process)`` into an independent seed,
  :class:`EpochShuffleSampler` shuffles by ``(seed, epoch)`` only, and :func:`draw_training_inputs` draws all
  random inputs of one batch (flips, timesteps, noise, label dropping, offset noise, class dropping) from one
  generator in a fixed order, so that a resumed run trains on exactly the batches of an uninterrupted one.
* Mask-ablated training: :func:`drop_classes` removes whole classes from label maps at random (the
  "mask ablation" of segmentation-guided diffusion, Konz et al., MICCAI 2024).
* Checkpoints: :func:`save_checkpoint` writes one atomically (every training script calls it),
  :func:`checkpoint_is_complete` and :func:`list_checkpoints` find the ``checkpoint-N`` folders that
  ``Accelerator.save_state`` finished writing.
* :func:`make_grid`: the ``label map | sample`` grid of the validation images.
* The distillation scripts' shared flags and checks: :func:`add_paired_data_arguments`,
  :func:`check_distillation_arguments`, :data:`PAIRED_DATA_FLAGS`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch

from .image_processor import LabelMapProcessor

__all__ = [
    "CHECKPOINT_PATTERN",
    "EpochShuffleSampler",
    "checkpoint_is_complete",
    "derive_seed",
    "draw_training_inputs",
    "drop_classes",
    "list_checkpoints",
    "make_grid",
    "save_checkpoint",
    "PAIRED_DATA_FLAGS",
    "add_paired_data_arguments",
    "check_distillation_arguments",
]

#: Name of a finished checkpoint folder; the group is the optimisation step.
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------------- randomness
def derive_seed(*keys: Any) -> int:
    """A 63-bit seed from a tuple of ints / strings: an independent random stream per key tuple.

    ``derive_seed(seed, epoch, batch, process)`` gives every batch of every process its own stream that does not
    depend on what ran before, which is what makes resumed runs exact. Integers enter by absolute value, strings by
    their first 8 UTF-8 bytes (read as a little-endian integer); the keys are mixed with
    ``numpy.random.SeedSequence``. The values are part of the checkpoint format: changing this function changes
    the batches a resumed run draws.

    Returns:
        An int in ``[0, 2**63)``, usable with ``torch.Generator().manual_seed``.
    """
    ints = [abs(k) if isinstance(k, int) else int.from_bytes(str(k).encode()[:8], "little") for k in keys]
    return int(np.random.SeedSequence(ints).generate_state(1, dtype=np.uint64)[0]) >> 1


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random order of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Every process draws the same permutation (accelerate then gives each process its share), and a resumed run
    sees exactly the batches an uninterrupted one would. The epoch is set with :meth:`use_epoch`, not
    ``set_epoch``, so that accelerate's own epoch counter (which restarts at 0 after a resume) leaves it alone.

    Args:
        num_samples: length N of the dataset.
        seed: the run's seed.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", self.epoch))
        yield from torch.randperm(self.num_samples, generator=g).tolist()

    def __len__(self) -> int:
        return self.num_samples


def drop_classes(
    label_map: Union[torch.Tensor, np.ndarray],
    rate: float,
    generator: Optional[torch.Generator] = None,
    num_classes: Optional[int] = None,
    background: int = 0,
) -> Union[torch.Tensor, np.ndarray]:
    """Mask ablation: drop each non-background class of each label map independently with probability ``rate``.

    The pixels of a dropped class are relabelled as ``background`` (class 0 by default), as in the mask-ablated
    training of segmentation-guided diffusion: a map with a structure left out looks exactly like the maps a user
    draws without that structure, so a model trained this way accepts such maps at sampling time with no special
    value, and the number of classes of the network stays the same.

    Args:
        label_map: integer class indices ``[H, W]`` (one map) or ``[B, H, W]`` (a batch; every map draws its own
            classes), a torch tensor or a numpy array.
        rate: the probability P in [0, 1] that a class present in a map is dropped. 0 returns the maps unchanged
            (and draws nothing from ``generator``); 1 leaves only ``background``.
        generator: the CPU ``torch.Generator`` to draw from (for reproducible training inputs); None uses torch's
            global generator.
        num_classes: K; the draws are ``[B, K]`` uniform numbers, so with a fixed K the same generator state
            drops the same classes whatever the batch holds. Default: the largest label of the batch + 1.
        background: the class that is never dropped and receives the pixels of dropped classes.

    Returns:
        The maps with dropped classes relabelled, same type, shape, dtype and device as ``label_map``.

    Raises:
        ValueError: for a rate outside [0, 1], a map that is not [H, W] / [B, H, W], negative labels, labels
            >= ``num_classes`` or a ``background`` outside [0, K).
    """
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        raise ValueError(f"`rate` (the class drop rate) must be a probability in [0, 1], got {rate!r}")
    is_numpy = isinstance(label_map, np.ndarray)
    labels = torch.from_numpy(label_map) if is_numpy else label_map
    if labels.ndim not in (2, 3):
        raise ValueError(f"`label_map` must have shape [H, W] or [B, H, W], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"`label_map` must hold integer class indices, got dtype {labels.dtype}")
    if rate == 0.0 or labels.numel() == 0:
        return label_map
    batch = labels if labels.ndim == 3 else labels[None]
    if int(batch.min()) < 0:
        raise ValueError("`label_map` holds negative class indices")
    max_label = int(batch.max())
    k = max(max_label, int(background)) + 1 if num_classes is None else int(num_classes)
    if max_label >= k:
        raise ValueError(f"`label_map` holds class {max_label} but `num_classes` is {k}")
    if not 0 <= int(background) < k:
        raise ValueError(f"`background` must be a class in [0, {k}), got {background}")
    drop = torch.rand(batch.shape[0], k, generator=generator) < rate  # [B, K]
    drop[:, int(background)] = False
    drop = drop.to(batch.device)
    dropped = torch.gather(drop, 1, batch.reshape(batch.shape[0], -1).long()).view(batch.shape)
    out = torch.where(dropped, torch.as_tensor(background, dtype=batch.dtype, device=batch.device), batch)
    out = out if labels.ndim == 3 else out[0]
    return out.numpy() if is_numpy else out


def draw_training_inputs(
    clean: torch.Tensor,
    labels: Optional[torch.Tensor],
    num_classes: int,
    num_train_timesteps: int,
    drop_rate: float,
    random_flip: bool,
    generator: torch.Generator,
    noise_offset: float = 0.0,
    class_drop_rate: float = 0.0,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The random inputs of one training batch, all drawn from ``generator`` (CPU) in a fixed order.

    The order is: flips ``[B]``, timesteps ``[B]``, noise ``[B, C, H, W]``, label-map dropping ``[B]``, then
    offset noise ``[B, C]`` (only when ``noise_offset`` > 0) and class dropping ``[B, K]`` (only when
    ``class_drop_rate`` > 0). The optional draws come last, so turning them off leaves every other draw (and the
    runs and checkpoints made before they existed) unchanged.

    Args:
        clean: ``[B, C, H, W]`` images in [-1, 1].
        labels: int64 ``[B, H, W]`` label maps in [0, num_classes), or None (unconditional).
        num_classes: K (ignored without labels).
        num_train_timesteps: T; timesteps are uniform in [0, T).
        drop_rate: probability of replacing a sample's whole one-hot map by zeros (the "no label" input of
            classifier-free guidance).
        random_flip: flip image and label map together left-right with probability 1/2.
        generator: the batch's CPU generator (see :func:`derive_seed`).
        noise_offset: std of a per-sample, per-channel constant added to the noise ("offset noise", diffusers'
            ``--noise_offset``).
        class_drop_rate: mask ablation, see :func:`drop_classes`: each class present in a map other than class 0
            is relabelled as class 0 with this probability (after the flip, before the one-hot encoding).

    Returns:
        ``(clean, segmap, timesteps, noise)``: the (flipped) images ``[B, C, H, W]``, the float one-hot map
        ``[B, K, H, W]`` with dropped samples zeroed (None without labels), int64 timesteps ``[B]`` and the noise
        ``[B, C, H, W]``, on the device of ``clean``.
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
    if noise_offset:
        offset = torch.randn(bsz, clean.shape[1], 1, 1, generator=generator).to(device=device, dtype=clean.dtype)
        noise = noise + noise_offset * offset
    segmap = None
    if labels is not None:
        if class_drop_rate:
            labels = drop_classes(labels, class_drop_rate, generator, num_classes=num_classes)
        segmap = LabelMapProcessor(num_classes).one_hot(labels, clean.dtype)
        segmap = segmap * keep.view(-1, 1, 1, 1).to(clean.dtype)
    return clean, segmap, timesteps, noise


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_is_complete(path: Union[str, Path]) -> bool:
    """Whether a ``checkpoint-N`` folder holds what ``Accelerator.save_state`` writes for the training script.

    Complete means: the optimizer state (``optimizer.bin`` or ``optimizer.safetensors``) and the weights, either
    ``unet/`` (``config.json`` plus a ``.safetensors`` file, from the script's save hook) or accelerate's own
    ``model*.safetensors`` / ``pytorch_model*.bin``. An empty or half-written folder is not complete.
    """
    path = Path(path)
    if not (path / "optimizer.bin").is_file() and not (path / "optimizer.safetensors").is_file():
        return False
    unet = path / "unet"
    if (unet / "config.json").is_file() and any(unet.glob("*.safetensors")):
        return True
    return any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def list_checkpoints(output_dir: Union[str, Path]) -> List[Tuple[int, Path]]:
    """``(step, path)`` of every complete ``checkpoint-N`` folder in ``output_dir``, oldest first.

    Empty or partial folders (see :func:`checkpoint_is_complete`) and temporary ``.checkpoint-N.tmp`` folders are
    skipped; a missing ``output_dir`` gives an empty list.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name)) and checkpoint_is_complete(p)
    ]
    return sorted(found)


def save_checkpoint(accelerator, output_dir: Union[str, Path], step: int, total_limit: Optional[int] = None,
                    logger: Optional[logging.Logger] = None) -> Path:
    """``accelerator.save_state`` into ``output_dir/checkpoint-<step>``, atomically: written under
    ``.checkpoint-<step>.tmp`` and renamed when complete; older checkpoints beyond ``total_limit`` are removed only
    after that, so a kill at any moment leaves a usable one. Call it on every process (it waits for all of them)."""
    tmp = os.path.join(output_dir, f".checkpoint-{step}.tmp")
    final = Path(output_dir) / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if logger is not None:
            logger.info("saved %s", final)
        if total_limit is not None:
            existing = list_checkpoints(output_dir)
            for _, old in existing[: max(0, len(existing) - int(total_limit))]:
                shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------- grids
def make_grid(
    images: np.ndarray, labels: Optional[np.ndarray] = None, num_classes: int = 0, pad: int = 2
) -> np.ndarray:
    """The validation grid: one row per sample, ``coloured label map | generated image`` (only the image when
    ``labels`` is None), separated by ``pad`` white pixels, no outer border.

    Args:
        images: float ``[N, H, W, C]`` in [0, 1] (C = 1 or 3), e.g. a pipeline's ``output_type="np"`` images.
        labels: int ``[N, H, W]`` label maps, or None (unconditional model).
        num_classes: K for the palette (0: the largest label + 1), see
            :func:`ultrasound_diffusers.data.labels.colorize_labels`.
        pad: separator width in pixels.

    Returns:
        uint8 RGB ``[N * H + (N - 1) * pad, W + pad + W, 3]`` (``[N * H + (N - 1) * pad, W, 3]`` without labels).
    """
    from .data.labels import colorize_labels

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"`images` must be a non-empty float array [N, H, W, 1 or 3], got shape {images.shape}")
    imgs = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    colours = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != imgs.shape[:3]:
            raise ValueError(f"`labels` must have shape {imgs.shape[:3]} (one map per image), got {labels.shape}")
        colours = colorize_labels(labels, num_classes or None)
    rows = []
    for i in range(len(imgs)):
        parts = [imgs[i]] if colours is None else [colours[i], imgs[i]]
        sep = np.full((imgs.shape[1], pad, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([p for part in parts for p in (part, sep)][:-1], axis=1))
    hsep = np.full((pad, rows[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([r for row in rows for r in (row, hsep)][:-1], axis=0)


# ---------------------------------------------------------------------------------------------------- distillation scripts
#: How paired-data errors name the distillation scripts' flags (the ``arguments`` of ultrasound_diffusers.data.paired).
PAIRED_DATA_FLAGS = {"dataset_name": "--dataset_name", "data_dir": "--train_data_dir", "image_column": "--image_column",
                     "label_column": "--label_column", "num_classes": "--num_classes"}
#: What a distillation run writes into its --output_dir (anything else there is the user's).
DISTILLATION_RUN_ENTRIES = {"model_index.json", "unet", "scheduler", "README.md", "training_args.json", "logs",
                            "pipeline_semantic_ultrasound.py", ".ultrasound-diffusers.json"}


def add_paired_data_arguments(group, default_phantoms: int = 256) -> None:
    """The data flags of the distillation scripts (an argparse group): ``--dataset_name``, ``--train_data_dir``,
    ``--phantoms``, ``--resolution``, ``--image_column``, ``--label_column``, ``--max_train_samples``."""
    from .image_processor import parse_size

    group.add_argument("--dataset_name", type=str, default="phantoms:echo",
                       help="phantoms:<anatomy>, a save_to_disk folder, a Hub dataset or a dataset script.")
    group.add_argument("--train_data_dir", type=str, default=None, help="An imagefolder with paired label maps.")
    group.add_argument("--phantoms", type=int, default=default_phantoms, help="Number of phantoms for --dataset_name phantoms:*.")
    group.add_argument("--resolution", type=lambda v: parse_size(v, as_pair=True), default=(64, 64), help="int or H,W")
    group.add_argument("--image_column", type=str, default="image")
    group.add_argument("--label_column", type=str, default="label")
    group.add_argument("--max_train_samples", type=int, default=None)


def check_distillation_arguments(args, run_prefixes: Tuple[str, ...] = ()) -> None:
    """The checks every distillation script makes of its parsed flags: ``--teacher`` is a pipeline folder,
    ``--output_dir`` holds nothing but a distillation run's entries (checkpoints, and names starting with
    ``run_prefixes``), ``--resume_from_checkpoint`` is ``latest`` or a complete checkpoint; ``--train_data_dir``
    replaces ``--dataset_name``. Raises ValueError naming the flag."""
    teacher = Path(args.teacher)
    if not (teacher / "unet").is_dir() or not (teacher / "scheduler").is_dir():
        raise ValueError(f"--teacher {args.teacher!r} must be a pipeline folder with unet/ and scheduler/ subfolders")
    if args.train_data_dir is not None:
        args.dataset_name = None
    out = Path(args.output_dir)
    prefixes = (".checkpoint-",) + tuple(run_prefixes) + tuple(f".{p}" for p in run_prefixes)
    if out.is_dir() and any(p.name not in DISTILLATION_RUN_ENTRIES and not CHECKPOINT_PATTERN.match(p.name)
                            and not p.name.startswith(prefixes) for p in out.iterdir()):
        raise ValueError(f"--output_dir {args.output_dir!r} holds files that are not a distillation run's")
    if args.resume_from_checkpoint not in (None, "latest"):
        path = Path(args.resume_from_checkpoint)
        if not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name) or not checkpoint_is_complete(path):
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a complete checkpoint-N folder")
