#!/usr/bin/env bash
# Issue 30: the v-prediction fine-tune of the demo model (the deterministic path) and its progressively distilled
# few-step student (ultrasound_diffusers/assets/bmap-echo-phantom-64-fewstep), then the solver benchmark. Numbers
# and the reasoning: docs/fewstep.md.
# Usage: bash training/fewstep_model.sh [WORK_DIR]      (one torch thread per job: OMP_NUM_THREADS=1)
#
# On 2 CPU cores shared with other jobs (the conditions of docs/fewstep.md) stage 1 ran at 3-11 s/step and
# stage 2 at about 3-4 s/step (2,500 steps in all, about 2.5 h; rounds 3 and 4 took 1,000 steps each: docs/fewstep.md "Longer rounds"); on two idle cores both are faster.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-fewstep_work}"
mkdir -p "$WORK"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" ACCELERATE_USE_CPU=true

# 1. Fine-tune the bundled demo model (epsilon prediction, offset noise 0.1) to v-prediction without offset noise:
#    same data, network and B-map flags as training/demo_model.sh; only the training target changes (the output
#    head is the same). 200 steps at a constant lr 1e-4, EMA 0.995 (what the measurements in docs/fewstep.md used).
python training/train_semantic.py --dataset_name phantoms:echo --phantoms 2000 --resolution 64 --model_config tiny-64 \
  --learn_sigma --drop_rate 0.2 --beta_schedule squaredcos_cap_v2 --bmap_schedule cosine --bmap_min 0.97 \
  --probe_geometry convex --prediction_type v_prediction --noise_offset 0.0 \
  --train_batch_size 8 --max_train_steps 200 --learning_rate 1e-4 --lr_scheduler constant --lr_warmup_steps 0 \
  --adam_weight_decay 1e-3 --use_ema --ema_decay 0.995 --checkpointing_steps 200 --checkpoints_total_limit 2 \
  --validation_steps 0 --logger none --seed 1 \
  --pretrained_model_name_or_path ultrasound_diffusers/assets/bmap-echo-phantom-64 --output_dir "$WORK/vpred"

# 2. Progressive distillation of the guided (w = 1.5) v-prediction teacher: its trailing per-pixel DDIM chain of 64
#    steps halved in four rounds (32, 16, 8, 4; each round's student in $WORK/fewstep/round-N), the guidance
#    distilled in during the first round. The consistency distillation of docs/fewstep.md (section 2) stays
#    available: training/train_consistency_distillation.py --teacher_solver heun.
python training/train_progressive_distillation.py --teacher "$WORK/vpred" --guidance_scale 1.5 --teacher_steps 64 \
  --student_steps 4 --steps_per_round 250,250,1000,1000 --dataset_name phantoms:echo --phantoms 2000 --resolution 64 \
  --train_batch_size 8 --learning_rate 1e-4 --checkpointing_steps 50 --checkpoints_total_limit 2 --seed 0 \
  --output_dir "$WORK/fewstep" --resume_from_checkpoint latest

# 3. The benchmark: 48 held-out phantom label maps, the same maps and starting noise for every sampler. (The numbers
#    of docs/fewstep.md come from models trained before issue 32 recalibrated the phantoms' far field, compared with
#    those phantoms: --phantom_physics beam_spreading=0,gain_db=0. Run as here, every stage uses today's phantoms.)
python benchmarks/benchmark_solvers.py --num_images 48 --pipeline ultrasound_diffusers/assets/bmap-echo-phantom-64 \
  --only ancestral-50,ddim-50,ddim-clipped-50,dpm++2M-20 --cache_dir "$WORK/solver_cache"
python benchmarks/benchmark_solvers.py --num_images 48 --pipeline "$WORK/vpred" --fewstep_pipeline "$WORK/fewstep" \
  --cache_dir "$WORK/solver_cache"
