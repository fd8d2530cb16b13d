#!/usr/bin/env python
# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Consistency distillation of a B-map (per-pixel schedule) label-map diffusion model into a few-step sampler.

The teacher is a saved :class:`~ultrasound_diffusers.pipelines.SemanticUltrasoundPipeline` (its UNet and its
:class:`~ultrasound_diffusers.schedulers.BMapAttenuationScheduler`). The student starts from the teacher's weights
and learns the consistency function of :class:`~ultrasound_diffusers.schedulers.BMapConsistencyScheduler`
(``docs/fewstep.md`` has the maths), in the shape of diffusers' ``examples/consistency_distillation`` (latent
consistency distillation), but in pixel space and with per-pixel signal levels:

1. a training image x_0 and its label map; a step ``t`` of the teacher's DDIM grid (``--num_ddim_timesteps``,
   t in {k-1, 2k-1, ..., T-1}, k = T / N) and ``s = max(t - k, 0)``;
2. ``x_t = sqrt(a_t(p)) x_0 + sqrt(1 - a_t(p)) eps`` with the B-map level of every pixel;
3. one step of the guided teacher's per-pixel DDIM (eta 0) from t to s, with classifier-free guidance
   ``--guidance_scale`` w (labelled and null passes batched): ``x_s = sqrt(a_s(p)) x0_w + sqrt(1 - a_s(p)) eps_w``.
   The guidance is distilled in: the student takes the label map only, one network call per sampling step;
4. the loss ``d(f_student(x_t, t), f_target(x_s, s))`` (pseudo-Huber, ``--huber_c``, or L2), where the target
   network is an EMA of the student (``--ema_decay``, no gradient) and ``f(x, 0) = x`` at every pixel.

The saved pipeline (``--output_dir``) holds the target (EMA) network and a ``BMapConsistencyScheduler`` built from
the teacher's scheduler config; ``pipe(label_map, num_inference_steps=4, guidance_scale=1.0)`` samples it.
Checkpoints (``--checkpointing_steps``) keep student, target, optimizer and LR state; ``--resume_from_checkpoint
latest`` continues a run exactly (the random draws of each batch depend only on seed, epoch and batch).

Run: ``python training/train_consistency_distillation.py --teacher PIPELINE --output_dir OUT [...]``
(or ``accelerate launch``); ``training/fewstep_model.sh`` makes the bundled few-step model.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ultrasound_diffusers.distillation import ddim_step, distillation_loss, ema_update, guided_output, heun_step
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

logger = logging.getLogger("train_consistency_distillation")

DATA_FLAGS = PAIRED_DATA_FLAGS
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("teacher and distillation")
    g.add_argument("--teacher", type=str, required=True, help="Folder of the teacher pipeline (unet/ and scheduler/).")
    g.add_argument("--guidance_scale", type=float, default=1.5,
                   help="Classifier-free guidance w of the teacher, distilled into the student (1 = none).")
    g.add_argument("--num_ddim_timesteps", type=int, default=50, help="N of the teacher's DDIM grid (k = T / N).")
    g.add_argument("--teacher_solver", choices=("ddim", "ddim-model-noise", "heun"), default="ddim",
                   help="The teacher's ODE step from t to s on the grid: 'ddim' (first order, one guided teacher call; "
                   "the noise recomputed from the clipped clean image, as the ddim-clipped sampler), "
                   "'ddim-model-noise' (diffusers' DDIM step: the model's own noise beside the clipped image, which "
                   "hazes outside the fan; the runs of docs/fewstep.md before the fix) or 'heun' (second order: the "
                   "DDIM step's clean-image prediction averaged with the teacher's at the predicted x_s, two calls). "
                   "The student learns the path of this step, haze included.")
    g.add_argument("--timestep_scaling", type=float, default=10.0, help="s of the boundary scalings c_skip, c_out.")
    g.add_argument("--loss_type", type=str, default="huber", choices=("huber", "l2"))
    g.add_argument("--huber_c", type=float, default=0.001, help="c of the pseudo-Huber loss sqrt(d^2 + c^2) - c.")
    g.add_argument("--ema_decay", type=float, default=0.95, help="Decay of the target network (EMA of the student).")
    g = p.add_argument_group("data")
    add_paired_data_arguments(g)
    g = p.add_argument_group("optimisation")
    g.add_argument("--output_dir", type=str, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train_batch_size", type=int, default=8)
    g.add_argument("--max_train_steps", type=int, default=1000)
    g.add_argument("--learning_rate", type=float, default=1e-5)
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", type=str, default=None, choices=("no", "fp16", "bf16"))
    g.add_argument("--checkpointing_steps", type=int, default=200)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint-N folder or "latest".')
    g.add_argument("--logger", type=str, default="none", choices=("tensorboard", "wandb", "none"))
    g.add_argument("--validation_inference_steps", type=int, default=4, help="Steps named in the model card.")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    checks = [
        ("--train_batch_size", args.train_batch_size >= 1, "a positive integer"),
        ("--max_train_steps", args.max_train_steps >= 1, "a positive integer"),
        ("--phantoms", args.phantoms >= 1, "a positive integer"),
        ("--num_ddim_timesteps", args.num_ddim_timesteps >= 1, "a positive integer"),
        ("--guidance_scale", math.isfinite(args.guidance_scale) and args.guidance_scale >= 0, "a non-negative number"),
        ("--timestep_scaling", math.isfinite(args.timestep_scaling) and args.timestep_scaling > 0, "a positive number"),
        ("--huber_c", math.isfinite(args.huber_c) and args.huber_c > 0, "a positive number"),
        ("--ema_decay", 0.0 <= args.ema_decay < 1.0, "a number in [0, 1)"),
        ("--learning_rate", math.isfinite(args.learning_rate) and args.learning_rate > 0, "a positive number"),
        ("--lr_warmup_steps", args.lr_warmup_steps >= 0, "a non-negative integer"),
        ("--max_grad_norm", math.isfinite(args.max_grad_norm) and args.max_grad_norm >= 0, "a non-negative number"),
        ("--checkpointing_steps", args.checkpointing_steps >= 0, "a non-negative integer"),
        ("--checkpoints_total_limit", args.checkpoints_total_limit >= 1, "a positive integer"),
        ("--validation_inference_steps", 1 <= args.validation_inference_steps <= args.num_ddim_timesteps,
         "an integer in [1, --num_ddim_timesteps]"),
    ]
    for flag, ok, expected in checks:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {getattr(args, flag[2:])!r}")
    check_distillation_arguments(args, run_prefixes=())
    return args


# ---------------------------------------------------------------------------------------------------- maths
def ddim_grid(num_train_timesteps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The teacher's DDIM grid, ascending: ``k - 1, 2k - 1, ..., N k - 1`` with ``k = T // N`` (int64 [N])."""
    k = num_train_timesteps // num_ddim_timesteps
    if k < 1:
        raise ValueError(f"--num_ddim_timesteps ({num_ddim_timesteps}) must not exceed num_train_timesteps ({num_train_timesteps})")
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.int64) * k - 1


# The per-pixel steps, loss and EMA live in ultrasound_diffusers.distillation (shared with the progressive
# distillation); the names below are the ones this script has always had.
teacher_ddim_step = ddim_step
teacher_heun_step = heun_step
update_target = ema_update


def student_scheduler_config(teacher_config, timestep_scaling: float, num_ddim_timesteps: int) -> dict:
    """The few-step scheduler's config from the teacher's: every key BMapConsistencyScheduler takes."""
    import inspect

    from ultrasound_diffusers.schedulers import BMapConsistencyScheduler

    keys = set(inspect.signature(BMapConsistencyScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(teacher_config).items() if k in keys}
    config.update(timestep_scaling=float(timestep_scaling), original_inference_steps=int(num_ddim_timesteps))
    return config


# ---------------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return train(argv)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"train_consistency_distillation.py: error: {err}", file=sys.stderr)
        return 2


def train(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    from ultrasound_diffusers.data.paired import PairedTransform, check_paired_dataset, collate_pairs, load_paired_splits
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler, BMapConsistencyScheduler

    # ---------------------------------------------------------------- teacher, data
    teacher = SemanticUNet2DModel.from_pretrained(args.teacher, subfolder="unet")
    teacher_scheduler = BMapAttenuationScheduler.from_pretrained(args.teacher, subfolder="scheduler")
    num_classes = int(teacher.config.num_classes)
    if num_classes < 1:
        raise ValueError(f"--teacher {args.teacher!r} is unconditional; the distillation needs a label-map model")
    label_processor = LabelMapProcessor(num_classes)
    splits = load_paired_splits(
        args.dataset_name, args.train_data_dir, size=tuple(args.resolution), num_phantoms=args.phantoms,
        seed=args.seed, max_train_samples=args.max_train_samples, arguments=DATA_FLAGS,
    )
    dataset, base_dir = splits.train, splits.base_dir
    check_paired_dataset(dataset, args.image_column, args.label_column, num_classes, base_dir, arguments=DATA_FLAGS)

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
    )
    set_seed(args.seed)
    transform = PairedTransform(args.image_column, args.label_column, tuple(args.resolution), int(teacher.config.in_channels), base_dir)
    train_dataset = dataset.with_transform(transform)
    sampler = EpochShuffleSampler(len(train_dataset), args.seed)
    loader = torch.utils.data.DataLoader(train_dataset, batch_size=args.train_batch_size, sampler=sampler,
                                         collate_fn=collate_pairs, drop_last=False)

    # ---------------------------------------------------------------- student, target, optimiser
    student = copy.deepcopy(teacher)
    target = copy.deepcopy(teacher)
    teacher.requires_grad_(False).eval()
    target.requires_grad_(False).eval()
    student.train()
    config = student_scheduler_config(teacher_scheduler.config, args.timestep_scaling, args.num_ddim_timesteps)
    # training: no clipping of x0_hat inside the consistency function (it would cut the gradient)
    cm = BMapConsistencyScheduler.from_config({**config, "clip_sample": False})
    prediction_type = teacher_scheduler.config.prediction_type
    channels = int(teacher.config.in_channels)
    T = int(teacher_scheduler.config.num_train_timesteps)
    grid = ddim_grid(T, args.num_ddim_timesteps)
    k = T // args.num_ddim_timesteps
    clip = float(teacher_scheduler.config.clip_sample_range) if teacher_scheduler.config.clip_sample else None

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "unet"))
            target.save_pretrained(os.path.join(output_dir, "unet_target"))
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        loaded = SemanticUNet2DModel.from_pretrained(input_dir, subfolder="unet_target")
        target.load_state_dict(loaded.state_dict())
        while models:
            model = models.pop()
            model.load_state_dict(SemanticUNet2DModel.from_pretrained(input_dir, subfolder="unet").state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps)
    student, optimizer, loader, lr_scheduler = accelerator.prepare(student, optimizer, loader, lr_scheduler)
    teacher.to(accelerator.device)
    target.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers("consistency_distillation", config={k_: str(v) for k_, v in vars(args).items()})

    # ---------------------------------------------------------------- resume
    global_step = 0
    if args.resume_from_checkpoint:
        found = list_checkpoints(args.output_dir)
        path = Path(args.resume_from_checkpoint) if args.resume_from_checkpoint != "latest" else (found[-1][1] if found else None)
        if path is None:
            logger.info("no checkpoint in %s; starting a new run", args.output_dir)
        else:
            accelerator.load_state(str(path))
            global_step = int(CHECKPOINT_PATTERN.match(path.name).group(1))
            logger.info("resumed from %s", path)

    def save_checkpoint(step: int) -> None:
        save_training_checkpoint(accelerator, args.output_dir, step, args.checkpoints_total_limit, logger)

    # ---------------------------------------------------------------- loop
    steps_per_epoch = max(len(loader), 1)
    start_step, start_time = global_step, time.perf_counter()
    logger.info("distilling %s (guidance %.2f, %d-step DDIM grid, %s prediction) for %d steps, batch %d",
                args.teacher, args.guidance_scale, args.num_ddim_timesteps, prediction_type, args.max_train_steps,
                args.train_batch_size)
    epoch = global_step // steps_per_epoch
    while global_step < args.max_train_steps:
        sampler.use_epoch(epoch)
        skip = global_step - epoch * steps_per_epoch
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch_index, batch in enumerate(batches, start=skip):
            gen = torch.Generator().manual_seed(derive_seed(args.seed, epoch, batch_index, accelerator.process_index))
            clean = batch["pixel_values"]
            bsz = clean.shape[0]
            segmap = label_processor.one_hot(batch["labels"], clean.dtype)
            index = torch.randint(0, len(grid), (bsz,), generator=gen)
            t = grid[index]
            s = (t - k).clamp(min=0)
            noise = torch.randn(clean.shape, generator=gen).to(clean.device, clean.dtype)
            x_t = cm.add_noise(clean, noise, t)
            a_t = cm.signal_level(t.tolist(), clean.shape, device=clean.device, dtype=torch.float64)
            a_s = cm.signal_level(s.tolist(), clean.shape, device=clean.device, dtype=torch.float64)
            with torch.no_grad(), teacher.label_feature_cache():  # Heun's two teacher calls share the label features
                def guided(x, steps):  # the guided teacher: labelled and null maps in one batched pass
                    return guided_output(teacher, x, steps, segmap, args.guidance_scale, channels)

                if args.teacher_solver == "heun":
                    x_s = teacher_heun_step(guided, x_t, t, s, a_t, a_s, prediction_type, clip)
                else:
                    x_s = teacher_ddim_step(guided(x_t, t).double(), x_t.double(), a_t, a_s, prediction_type, clip,
                                            clipped_noise=args.teacher_solver == "ddim").to(clean.dtype)
                target_out = target(x_s, s, segmap=segmap).sample[:, :channels]
                f_target = cm.denoise(target_out, s, x_s)
            with accelerator.accumulate(student):
                out = student(x_t, t, segmap=segmap).sample[:, :channels]
                f_student = cm.denoise(out, t, x_t)
                loss = distillation_loss(f_student, f_target, args.loss_type, args.huber_c)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            update_target(target, accelerator.unwrap_model(student), args.ema_decay)
            global_step += 1
            accelerator.log({"loss": float(loss.detach())}, step=global_step)
            if global_step % 10 == 0 or global_step == args.max_train_steps:
                rate = (time.perf_counter() - start_time) / (global_step - start_step)
                logger.info("step %d/%d loss %.5f (%.2f s/step)", global_step, args.max_train_steps, float(loss.detach()), rate)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(global_step)
            if global_step >= args.max_train_steps:
                break
        epoch += 1

    # ---------------------------------------------------------------- the few-step pipeline
    if accelerator.is_main_process:
        from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline
        from ultrasound_diffusers.hub_utils import save_model_card
        from ultrasound_diffusers.utils.io import atomic_write_text

        target.eval()
        scheduler = BMapConsistencyScheduler.from_config(config)
        pipe = SemanticUltrasoundPipeline(unet=target, scheduler=scheduler)
        pipe.save_pretrained(args.output_dir)
        details = (
            f"Consistency-distilled with `training/train_consistency_distillation.py` of ultrasound-diffusers from "
            f"the teacher `{args.teacher}` ({prediction_type} prediction) for {global_step} steps (batch "
            f"{args.train_batch_size}, AdamW lr {args.learning_rate}, target EMA decay {args.ema_decay}, "
            f"{args.loss_type} loss), on the teacher's {args.num_ddim_timesteps}-step per-pixel DDIM grid. The teacher's "
            f"classifier-free guidance w = {args.guidance_scale} is distilled in: sample with guidance_scale=1.0 "
            "(one network call per step). The full argument list is in `training_args.json`."
        )
        data = f"`{args.train_data_dir or args.dataset_name}`: {len(dataset)} images at {args.resolution[0]}x{args.resolution[1]} px."
        save_model_card(pipe, args.output_dir, Path(args.output_dir).resolve().name, training_data=data,
                        training_details=details, num_inference_steps=args.validation_inference_steps,
                        guidance_scale=1.0, tags=["consistency-distillation", "few-step"])
        saved = {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in vars(args).items()}
        atomic_write_text(Path(args.output_dir) / "training_args.json", json.dumps(saved, indent=2, default=str) + "\n")
        logger.info("saved the few-step pipeline to %s", args.output_dir)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
