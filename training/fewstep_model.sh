#!/usr/bin/env bash
# Issue 30: the progressively distilled few-step student of the bundled demo model
# (ultrasound_diffusers/assets/bmap-echo-phantom-64-fewstep), then the solver benchmark. Numbers and the reasoning:
# docs/fewstep.md.
# Usage: bash training/fewstep_model.sh [WORK_DIR]      (one torch thread per job: OMP_NUM_THREADS=1)
#
# The teacher is the bundled model itself: since issue 32's retraining it is the v-prediction fine-tune that the
# first version of this recipe made (training/demo_model.sh stage 1d), so there is no stage to fine-tune it here.
# On 2 CPU cores shared with other jobs distillation ran at about 3-4 s/step in round 1 (guided teacher) and 2 s/step
# after it (2,500 steps in all: 1.6 h for the bundled student).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-fewstep_work}"
mkdir -p "$WORK"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" ACCELERATE_USE_CPU=true

# 1. Progressive distillation of the guided (w = 1.5) v-prediction teacher: its trailing per-pixel DDIM chain of 64
#    steps halved in four rounds (32, 16, 8, 4; each round's student in $WORK/fewstep/round-N), the guidance
#    distilled in during the first round. --background_label 0: outside the fan, where every phantom is black, the
#    targets are black too (the teacher's clipped estimates there sit above black on average: docs/fewstep.md,
#    "Where the faint grey comes from"). The consistency distillation of docs/fewstep.md (section 2) stays
#    available: training/train_consistency_distillation.py --teacher_solver heun.
python training/train_progressive_distillation.py --teacher ultrasound_diffusers/assets/bmap-echo-phantom-64 \
  --guidance_scale 1.5 --teacher_steps 64 --student_steps 4 --steps_per_round 250,250,1000,1000 --dataset_name phantoms:echo --phantoms 2000 --resolution 64 \
  --train_batch_size 8 --learning_rate 1e-4 --checkpointing_steps 50 --checkpoints_total_limit 2 --seed 0 \
  --background_label 0 --output_dir "$WORK/fewstep" --resume_from_checkpoint latest

# 2. The benchmark: 48 held-out phantom label maps, the same maps and starting noise for every sampler (the teacher's
#    samplers and the student at 1, 2, 4 and 8 calls, each by the round that learned that many steps).
python benchmarks/benchmark_solvers.py --num_images 48 --pipeline ultrasound_diffusers/assets/bmap-echo-phantom-64 \
  --fewstep_pipeline "$WORK/fewstep" --cache_dir "$WORK/solver_cache"
