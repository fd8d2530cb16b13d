#!/usr/bin/env python
# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Progressive distillation of a B-map (per-pixel schedule) label-map diffusion model into a few-step DDIM sampler.

Salimans & Ho (2022, "Progressive distillation for fast sampling of diffusion models") halve the number of
deterministic sampling steps in rounds: in each round a student (initialised from its teacher) learns to take in
one DDIM step what its teacher takes in two; the student becomes the next round's teacher. Here every quantity is
per pixel (the B-map levels ``a_t(p)``; ``ultrasound_diffusers.distillation.progressive_target``), and the first
round distils the teacher's classifier-free guidance in (Meng et al. 2023): students take the label map only, one
network call per step.

1. the teacher's sampler is the per-pixel DDIM (eta 0) of its ``BMapAttenuationScheduler`` with ``"trailing"``
   spacing (the chain starts at t = T - 1 and ends at the clean image), on ``--teacher_steps`` steps; the grids of
   N and 2N steps are nested, so a student step t -> t'' covers the teacher steps t -> t' -> t'';
2. per training example: x_0 and its label map, a student step j (uniform), ``x_t = sqrt(a_t) x_0 +
   sqrt(1 - a_t) eps`` at every pixel's level, two teacher DDIM steps (the guided original teacher in round 1,
   the previous student after), and the clean image x~ that makes the student's one step land on the teacher's
   x_t'' (per pixel);
3. the loss is the squared error of the student's v-prediction against the v that x~ implies at x_t, which is the
   clean-image error weighted by 1 + SNR per pixel (the "SNR + 1" weighting of the paper).

Rounds: ``--teacher_steps 64 --student_steps 4`` runs 64 -> 32 -> 16 -> 8 -> 4 (four rounds) with
``--steps_per_round`` optimiser steps each (one number, or one per round: ``300,300,400,600``), AdamW with the
learning rate decaying linearly to 0 within each round. Each round's student is saved as a pipeline in
``OUTPUT_DIR/round-<N>/`` (a B-map DDIM sampler at N steps), and the last one in ``OUTPUT_DIR`` itself:
``pipe(label_map, num_inference_steps=4, guidance_scale=1.0)`` samples it (``training_args.json`` and the model card
say so). The teacher must predict v (or the clean image): an epsilon model cannot give x_0 at the first step of
a trailing chain, where a_t is 0; fine-tune it to v first (``training/fewstep_model.sh`` step 1).
Checkpoints (``--checkpointing_steps``) keep the student, optimiser and LR state; ``--resume_from_checkpoint
latest`` continues a run exactly (each batch's random draws depend only on seed, round, epoch and batch).

Run: ``python training/train_progressive_distillation.py --teacher PIPELINE --output_dir OUT [...]`` (or
``accelerate launch``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ultrasound_diffusers.distillation import ddim_step, guided_output, pin_background, progressive_target
from ultrasound_diffusers.image_processor import LabelMapProcessor
from ultrasound_diffusers.training_utils import (
    CHECKPOINT_PATTERN,
    EpochShuffleSampler,
    derive_seed,
    add_paired_data_arguments,
    check_distillation_arguments,
    list_checkpoints,
)
from ultrasound_diffusers.training_utils import PAIRED_DATA_FLAGS
from ultrasound_diffusers.training_utils import save_checkpoint as save_training_checkpoint

logger = logging.getLogger("train_progressive_distillation")

DATA_FLAGS = PAIRED_DATA_FLAGS
ROUND_PREFIX = "round-"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("teacher and rounds")
    g.add_argument("--teacher", type=str, required=True, help="Folder of the teacher pipeline (unet/ and scheduler/).")
    g.add_argument("--guidance_scale", type=float, default=1.5,
                   help="Classifier-free guidance w of the teacher, distilled in during the first round (1 = none).")
    g.add_argument("--teacher_steps", type=int, default=64, help="DDIM steps of the first round's teacher.")
    g.add_argument("--student_steps", type=int, default=4,
                   help="DDIM steps of the final student: --teacher_steps halved once per round down to this.")
    g.add_argument("--steps_per_round", type=str, default="400",
                   help="Optimiser steps of each round: one integer, or a comma-separated list with one per round.")
    g.add_argument("--background_label", type=int, default=None,
                   help="A label whose pixels are black in every training image (0 for the built-in phantoms: "
                   "outside the fan). Its targets are set to black instead of the teacher's estimate, which the "
                   "clipping of its predictions biases upwards (the grey outside the fan of docs/fewstep.md). "
                   "Default: off.")
    g = p.add_argument_group("data")
    add_paired_data_arguments(g)
    g = p.add_argument_group("optimisation")
    g.add_argument("--output_dir", type=str, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train_batch_size", type=int, default=8)
    g.add_argument("--learning_rate", type=float, default=1e-4, help="Peak lr of each round (then linear to 0).")
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", type=str, default=None, choices=("no", "fp16", "bf16"))
    g.add_argument("--checkpointing_steps", type=int, default=100)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint-N folder or "latest".')
    g.add_argument("--logger", type=str, default="none", choices=("tensorboard", "wandb", "none"))
    return p


def round_sizes(teacher_steps: int, student_steps: int) -> List[int]:
    """The students' step counts, one per round: ``teacher_steps / 2, teacher_steps / 4, ..., student_steps``."""
    if student_steps < 1 or teacher_steps <= student_steps:
        raise ValueError(f"--teacher_steps ({teacher_steps}) must exceed --student_steps ({student_steps}) >= 1")
    ratio = teacher_steps // student_steps
    if teacher_steps % student_steps or ratio & (ratio - 1):
        raise ValueError(f"--teacher_steps ({teacher_steps}) must be --student_steps ({student_steps}) times a power of 2")
    sizes, n = [], teacher_steps
    while n > student_steps:
        n //= 2
        sizes.append(n)
    return sizes


def parse_steps_per_round(value: str, rounds: int) -> List[int]:
    """``"400"`` -> [400] * rounds; ``"300,600"`` -> one per round (the list must have ``rounds`` entries)."""
    try:
        steps = [int(v) for v in str(value).split(",")]
    except ValueError:
        steps = []
    if len(steps) == 1:
        steps = steps * rounds
    if len(steps) != rounds or min(steps, default=0) < 1:
        raise ValueError(f"--steps_per_round must be a positive integer or {rounds} comma-separated positive "
                         f"integers (one per round), got {value!r}")
    return steps


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    checks = [
        ("--train_batch_size", args.train_batch_size >= 1, "a positive integer"),
        ("--phantoms", args.phantoms >= 1, "a positive integer"),
        ("--guidance_scale", math.isfinite(args.guidance_scale) and args.guidance_scale >= 0, "a non-negative number"),
        ("--learning_rate", math.isfinite(args.learning_rate) and args.learning_rate > 0, "a positive number"),
        ("--max_grad_norm", math.isfinite(args.max_grad_norm) and args.max_grad_norm >= 0, "a non-negative number"),
        ("--checkpointing_steps", args.checkpointing_steps >= 0, "a non-negative integer"),
        ("--checkpoints_total_limit", args.checkpoints_total_limit >= 1, "a positive integer"),
        ("--background_label", args.background_label is None or args.background_label >= 0, "a label value >= 0"),
    ]
    for flag, ok, expected in checks:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {getattr(args, flag[2:])!r}")
    args.rounds = round_sizes(args.teacher_steps, args.student_steps)
    args.round_steps = parse_steps_per_round(args.steps_per_round, len(args.rounds))
    check_distillation_arguments(args, run_prefixes=(ROUND_PREFIX,))
    return args


# ---------------------------------------------------------------------------------------------------- maths
def ddim_scheduler_config(teacher_config) -> dict:
    """The students' scheduler: the teacher's B-map schedule, sampled by per-pixel DDIM (eta 0), trailing spacing.
    No clipping: the teacher's steps in training clip the clean image and recompute the noise from it, so the
    targets are convex combinations of clipped predictions, inside [-1, 1], and the student learned to predict them;
    clipping its prediction while keeping its noise (the DDIM step's default) would leave that path (measured: the
    32-step student's outside-fan mean 0.019 with clipping, 0.009 without)."""
    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    config.update(sampler="ddim", ddim_eta=0.0, timestep_spacing="trailing", clip_sample=False)
    return config


def nested_grids(scheduler, student_steps: int):
    """(student grid [N + 1], teacher midpoints [N]) as int64: the student's chain ``t_0 > t_1 > ... > t_N = -1``
    (-1: the clean image) and the teacher's extra step between t_j and t_{j+1} (its 2N-step chain is the union)."""
    def chain(n):
        scheduler.set_timesteps(n)
        return torch.cat([scheduler.timesteps.cpu().to(torch.int64), torch.tensor([-1])])

    coarse, fine = chain(student_steps), chain(2 * student_steps)
    if not torch.equal(fine[::2], coarse):
        raise ValueError(f"the {2 * student_steps}-step chain does not contain the {student_steps}-step one "
                         "(trailing spacing needs num_train_timesteps divisible accordingly)")
    return coarse, fine[1::2]


def student_loss(student_output: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, target_x0: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    """Mean squared error of the student's prediction against the one the target clean image implies at x_t (for
    v-prediction: the x_0 error weighted by 1 + SNR at every pixel)."""
    from ultrasound_diffusers.schedulers.diffusion_math import model_output_from_original

    target = model_output_from_original(target_x0, x_t.double(), a_t, prediction_type)
    return (student_output.double() - target).pow(2).mean()


# ---------------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return train(argv)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"train_progressive_distillation.py: error: {err}", file=sys.stderr)
        return 2


def _save_pipeline(unet, scheduler_config: dict, folder: Path, args, global_step: int, steps: int, data: str) -> None:
    """The student of one round as a pipeline (atomically: written next to ``folder``, then renamed)."""
    from ultrasound_diffusers.hub_utils import save_model_card
    from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler

    pipe = SemanticUltrasoundPipeline(unet=unet, scheduler=BMapAttenuationScheduler.from_config(scheduler_config))
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    details = (
        f"Progressively distilled with `training/train_progressive_distillation.py` of ultrasound-diffusers from the "
        f"teacher `{args.teacher}` ({args.teacher_steps}-step per-pixel DDIM, classifier-free guidance "
        f"w = {args.guidance_scale} distilled in) down to {steps} DDIM steps, {global_step} optimiser steps in all "
        f"(batch {args.train_batch_size}, AdamW lr {args.learning_rate} decaying to 0 in each round). Sample with "
        f"num_inference_steps={steps} and guidance_scale=1.0 (one network call per step). The full argument list is "
        "in `training_args.json`."
    )
    save_model_card(pipe, str(tmp), folder.name if folder.name.startswith(ROUND_PREFIX) else folder.resolve().name,
                    training_data=data, training_details=details, num_inference_steps=steps, guidance_scale=1.0,
                    tags=["progressive-distillation", "few-step"])
    if folder.exists() and folder != Path(args.output_dir):
        shutil.rmtree(folder)
    if folder == Path(args.output_dir):  # the final pipeline: replace its entries one by one, keep the rest
        for entry in tmp.iterdir():
            dest = folder / entry.name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(entry, dest)
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, folder)


def train(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from ultrasound_diffusers.data.paired import PairedTransform, check_paired_dataset, collate_pairs, load_paired_splits
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler
    from ultrasound_diffusers.utils.io import atomic_write_text

    original = SemanticUNet2DModel.from_pretrained(args.teacher, subfolder="unet")
    teacher_scheduler = BMapAttenuationScheduler.from_pretrained(args.teacher, subfolder="scheduler")
    prediction_type = teacher_scheduler.config.prediction_type
    if prediction_type not in ("v_prediction", "sample"):
        raise ValueError(f"--teacher {args.teacher!r} predicts {prediction_type!r}; progressive distillation needs "
                         "v_prediction (or sample): fine-tune it to v first (training/fewstep_model.sh step 1)")
    num_classes = int(original.config.num_classes)
    if num_classes < 1:
        raise ValueError(f"--teacher {args.teacher!r} is unconditional; the distillation needs a label-map model")
    config = ddim_scheduler_config(teacher_scheduler.config)
    scheduler = BMapAttenuationScheduler.from_config(config)
    tc = teacher_scheduler.config  # the teacher's steps clip as the teacher samples
    clip = float(tc.clip_sample_range) if tc.clip_sample else None
    channels = int(original.config.in_channels)
    grids = {n: nested_grids(scheduler, n) for n in args.rounds}  # checks the nesting before any training

    label_processor = LabelMapProcessor(num_classes)
    splits = load_paired_splits(
        args.dataset_name, args.train_data_dir, size=tuple(args.resolution), num_phantoms=args.phantoms,
        seed=args.seed, max_train_samples=args.max_train_samples, arguments=DATA_FLAGS,
    )
    dataset, base_dir = splits.train, splits.base_dir
    check_paired_dataset(dataset, args.image_column, args.label_column, num_classes, base_dir, arguments=DATA_FLAGS)
    data = f"`{args.train_data_dir or args.dataset_name}`: {len(dataset)} images at {args.resolution[0]}x{args.resolution[1]} px."

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
    )
    set_seed(args.seed)
    train_dataset = dataset.with_transform(
        PairedTransform(args.image_column, args.label_column, tuple(args.resolution), channels, base_dir))
    if accelerator.is_main_process:
        accelerator.init_trackers("progressive_distillation", config={k: str(v) for k, v in vars(args).items()})

    # Where to start: the latest checkpoint names a global step, which falls into one round.
    global_step, resume_path = 0, None
    if args.resume_from_checkpoint:
        found = list_checkpoints(args.output_dir)
        resume_path = Path(args.resume_from_checkpoint) if args.resume_from_checkpoint != "latest" else (found[-1][1] if found else None)
        if resume_path is None:
            logger.info("no checkpoint in %s; starting a new run", args.output_dir)
        else:
            global_step = int(CHECKPOINT_PATTERN.match(resume_path.name).group(1))
    ends = [sum(args.round_steps[: r + 1]) for r in range(len(args.rounds))]

    def save_checkpoint(step: int) -> None:
        save_training_checkpoint(accelerator, args.output_dir, step, args.checkpoints_total_limit, logger)

    start_time, start_step = time.perf_counter(), global_step
    student = None
    for r, n in enumerate(args.rounds):
        round_dir = Path(args.output_dir) / f"{ROUND_PREFIX}{n}"
        if global_step >= ends[r]:  # a finished round (resumed past it): its saved student is the next teacher
            if not (round_dir / "unet").is_dir():
                raise ValueError(f"resuming at step {global_step} needs the finished round's pipeline {round_dir}")
            continue
        # this round's teacher: the guided original in round 1, the previous round's student after
        if r == 0:
            teacher, w = original, args.guidance_scale
        else:
            teacher = SemanticUNet2DModel.from_pretrained(Path(args.output_dir) / f"{ROUND_PREFIX}{args.rounds[r - 1]}", subfolder="unet")
            w = 1.0
        teacher.requires_grad_(False).eval()
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        coarse, mid = grids[n]
        steps_this_round = args.round_steps[r]
        sampler = EpochShuffleSampler(len(train_dataset), derive_seed(args.seed, r))
        loader = torch.utils.data.DataLoader(train_dataset, batch_size=args.train_batch_size, sampler=sampler,
                                             collate_fn=collate_pairs, drop_last=False)
        optimizer = torch.optim.AdamW(student.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1.0 - i / steps_this_round))
        student, optimizer, loader, lr_scheduler = accelerator.prepare(student, optimizer, loader, lr_scheduler)
        teacher.to(accelerator.device)
        local = global_step - (ends[r - 1] if r else 0)
        if resume_path is not None and local > 0:
            accelerator.load_state(str(resume_path))
            logger.info("resumed round %d (%d steps) at its step %d from %s", r + 1, n, local, resume_path)
        logger.info("round %d/%d: %d -> %d DDIM steps, %d optimiser steps (teacher guidance %.2f, %s prediction)",
                    r + 1, len(args.rounds), 2 * n, n, steps_this_round, w, prediction_type)
        progress = tqdm(total=steps_this_round, initial=local, desc=f"round {r + 1}: {2 * n}->{n} steps",
                        disable=not accelerator.is_local_main_process)
        steps_per_epoch = max(len(loader), 1)
        epoch = local // steps_per_epoch
        while local < steps_this_round:
            sampler.use_epoch(epoch)
            skip = local - epoch * steps_per_epoch
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            for batch_index, batch in enumerate(batches, start=skip):
                gen = torch.Generator().manual_seed(derive_seed(args.seed, r, epoch, batch_index, accelerator.process_index))
                clean = batch["pixel_values"]
                bsz = clean.shape[0]
                segmap = label_processor.one_hot(batch["labels"], clean.dtype)
                j = torch.randint(0, n, (bsz,), generator=gen)
                t, t_mid, t_end = coarse[j], mid[j], coarse[j + 1]
                noise = torch.randn(clean.shape, generator=gen).to(clean.device, clean.dtype)
                levels = [scheduler.signal_level(s.tolist(), clean.shape, device=clean.device, dtype=torch.float64)
                          for s in (t, t_mid, t_end)]
                x_t = (levels[0].sqrt() * clean.double() + (1 - levels[0]).sqrt() * noise.double()).to(clean.dtype)
                # two teacher DDIM steps on one label map (its SPADE features computed once), then the clean image
                # of the student's one step
                with torch.no_grad(), teacher.label_feature_cache():
                    device_t = t.to(clean.device)
                    x_mid = ddim_step(guided_output(teacher, x_t, device_t, segmap, w, channels).double(),
                                      x_t.double(), levels[0], levels[1], prediction_type, clip, clipped_noise=True)
                    out_mid = guided_output(teacher, x_mid.to(clean.dtype), t_mid.clamp(min=0).to(clean.device), segmap, w, channels)
                    x_end = ddim_step(out_mid.double(), x_mid, levels[1], levels[2], prediction_type, clip, clipped_noise=True)
                    target_x0 = progressive_target(x_t.double(), x_end, levels[0], levels[2])
                    if args.background_label is not None:
                        target_x0 = pin_background(target_x0, batch["labels"], clean, args.background_label)
                with accelerator.accumulate(student):
                    out = student(x_t, device_t, segmap=segmap).sample[:, :channels]
                    loss = student_loss(out, x_t, levels[0], target_x0, prediction_type)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                local += 1
                global_step += 1
                accelerator.log({"loss": float(loss.detach()), "round": r + 1}, step=global_step)
                progress.update(1)
                progress.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
                if global_step % 50 == 0:
                    rate = (time.perf_counter() - start_time) / max(global_step - start_step, 1)
                    logger.info("round %d step %d/%d (global %d) loss %.5f (%.2f s/step)", r + 1, local,
                                steps_this_round, global_step, float(loss.detach()), rate)
                if local >= steps_this_round:
                    break
                if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                    save_checkpoint(global_step)
            epoch += 1
        progress.close()
        # the round's student, as a pipeline: the next round's teacher and a sampler of its own
        if accelerator.is_main_process:
            student_unet = accelerator.unwrap_model(student).eval()
            _save_pipeline(student_unet, config, round_dir, args, global_step, n, data)
            logger.info("round %d done: %s", r + 1, round_dir)
        accelerator.wait_for_everyone()
        save_checkpoint(global_step)
        resume_path = None
        accelerator.free_memory()
        del teacher, optimizer, loader, lr_scheduler

    if accelerator.is_main_process:
        final = SemanticUNet2DModel.from_pretrained(Path(args.output_dir) / f"{ROUND_PREFIX}{args.rounds[-1]}", subfolder="unet")
        _save_pipeline(final, config, Path(args.output_dir), args, global_step, args.rounds[-1], data)
        saved = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
        atomic_write_text(Path(args.output_dir) / "training_args.json", json.dumps(saved, indent=2, default=str) + "\n")
        logger.info("saved the %d-step pipeline to %s", args.rounds[-1], args.output_dir)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
