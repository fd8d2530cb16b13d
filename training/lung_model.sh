#!/usr/bin/env bash
# The bundled lung model (issue 29): the seed's unconditional 8 x 256 lung-map diffusion model, scaled to one CPU core.
#
# 1. Data: 4,500 simulated lung maps (seed 0; 1,500 per category) for training and 1,000 held-out maps (seed 1),
#    written with datasets' save_to_disk by ultrasound_diffusers.data.lung_media.lung_dataset.
# 2. Training: train_semantic.py --unconditional on the float `values` column (the exact maps, not the 8-bit PNG),
#    the small 1.19M-parameter config training/configs/lung-8x256-small.json, improved-diffusion's linear schedule
#    at T = 1000 (beta 0.1/T .. 20/T = 1e-4 .. 0.02; the seed used T = 4000-7000), learned sigma with the hybrid
#    loss, no B-map attenuation (--bmap_min 1.0: the maps are tissue properties, not B-mode images), EMA weights.
#    Checkpoints every 250 steps, so it can be stopped at any time and resumed with --resume_from_checkpoint latest.
#
# Measured on this machine (2 CPU cores shared with ~8 other jobs, one thread): 1,400 steps in 3,168 s of training
# (0.6-6 s per step as the load changed), 3,408 s with the data; mean loss 0.370 over the first 100 steps, 0.0125 over
# the last 100. The shipped model is this run's EMA weights (ultrasound_diffusers/assets/lung-phantom-8x256).
set -euo pipefail
RUNS=${RUNS:-/work/runs/lung}
STEPS=${STEPS:-1400}
mkdir -p "$RUNS"

if [ ! -d "$RUNS/train" ]; then
  OMP_NUM_THREADS=1 python - "$RUNS" <<'PY'
import sys
from ultrasound_diffusers.data.lung_media import lung_dataset
runs = sys.argv[1]
lung_dataset(4500, seed=0).save_to_disk(f"{runs}/train")
lung_dataset(1000, seed=1).save_to_disk(f"{runs}/heldout")
PY
fi

OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_cpu_threads_per_process 1 \
  training/train_semantic.py \
  --dataset_name "$RUNS/train" --image_column values --unconditional \
  --model_config lung-8x256-small --resolution 8,256 \
  --num_train_timesteps 1000 --beta_schedule linear --beta_start 0.0001 --beta_end 0.02 \
  --bmap_min 1.0 --probe_geometry linear \
  --train_batch_size 16 --max_train_steps "$STEPS" --learning_rate 2e-4 --lr_scheduler constant --lr_warmup_steps 0 \
  --use_ema --ema_decay 0.998 --seed 0 \
  --checkpointing_steps 250 --checkpoints_total_limit 2 --validation_steps 0 --logger none \
  --license apache-2.0 \
  --output_dir "$RUNS/pipeline" ${RESUME:+--resume_from_checkpoint latest}
