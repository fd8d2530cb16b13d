#!/usr/bin/env bash
# Reproduces the bundled demonstration pipeline (ultrasound_diffusers/assets/bmap-echo-phantom-64) and the
# evaluation numbers in its model card. About 45 + 8 + 25 + 40 min of training on 2 CPU cores, then ~40 min of
# generation and ~10 min of evaluation.
# Usage: bash training/demo_model.sh [WORK_DIR]
#
# Stages 1a and 1b trained on the phantoms of version 0.1.0 (before their calibration against real scans; run them
# from a checkout of commit 15c20db: `git worktree add ../ud-0.1.0 15c20db`). Stage 1c fine-tuned that model on the
# calibrated phantoms of the next version (run it from commit 3f77932 or earlier: the phantoms' far field changed
# after it, issue 32). Stage 1d fine-tunes it to v-prediction on the phantoms of this version (far field that fades
# on tissue, speckle contrast in the real range); it is what the bundled pipeline is now, and its scheduler config
# selects the `ddim-clipped` sampler (deterministic DDIM with the noise recomputed from the clipped image).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-demo_model_work}"
mkdir -p "$WORK"

# The data, network and B-map flags every training stage shares (2,000 echo phantoms, the tiny-64 SDM with learned
# sigma and CFG dropout, the published B-map settings).
DATA_AND_MODEL=(--dataset_name phantoms:echo --phantoms 2000 --resolution 64 --model_config tiny-64 --learn_sigma
  --drop_rate 0.2 --beta_schedule squaredcos_cap_v2 --bmap_schedule cosine --bmap_min 0.97 --probe_geometry convex)

# 1a. Train on 2,000 built-in echo phantoms (seed 0), 64 x 64, published B-map settings, learned sigma, CFG dropout.
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  training/train_semantic.py \
  "${DATA_AND_MODEL[@]}" \
  --train_batch_size 8 --max_train_steps 2400 --learning_rate 2e-4 --lr_scheduler linear --lr_warmup_steps 100 \
  --adam_weight_decay 1e-3 --use_ema --ema_decay 0.999 --checkpointing_steps 400 --checkpoints_total_limit 2 \
  --logger tensorboard --seed 0 --output_dir "$WORK/pipeline"

# 1b. Fine-tune 800 more steps with offset noise (--noise_offset 0.1): it removes most of the grey haze the
#     stage-1 model leaves outside the fan. Resuming restores the optimizer, LR schedule and EMA state of
#     checkpoint-2400, so the effective learning rate is the restored 2e-4 (constant) and the EMA decay 0.999,
#     whatever --learning_rate / --ema_decay say; the flags below are the ones that made the bundled model.
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_cpu_threads_per_process 2 --num_machines 1 \
  --mixed_precision no --dynamo_backend no training/train_semantic.py \
  "${DATA_AND_MODEL[@]}" \
  --train_batch_size 8 --max_train_steps 3200 --learning_rate 5e-5 --lr_scheduler constant --lr_warmup_steps 0 \
  --adam_weight_decay 1e-3 --use_ema --ema_decay 0.995 --checkpointing_steps 400 --checkpoints_total_limit 2 \
  --validation_steps 0 --logger tensorboard --seed 0 --output_dir "$WORK/pipeline" \
  --resume_from_checkpoint latest --noise_offset 0.1

# 1c. Fine-tune 800 steps on the calibrated phantoms (darker, log-compressed at 60 dB, far-field fall-off), starting
#     from the stage-1b weights (a fresh optimizer and EMA), same flags otherwise but lr 1e-4.
mkdir -p "$WORK/calibrated"
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  training/train_semantic.py \
  "${DATA_AND_MODEL[@]}" \
  --train_batch_size 8 --max_train_steps 800 --learning_rate 1e-4 --lr_scheduler constant --lr_warmup_steps 0 \
  --adam_weight_decay 1e-3 --use_ema --ema_decay 0.995 --checkpointing_steps 400 --checkpoints_total_limit 2 \
  --validation_steps 0 --logger tensorboard --seed 0 --noise_offset 0.1 \
  --pretrained_model_name_or_path "$WORK/pipeline" --output_dir "$WORK/calibrated/pipeline"

# 1d. Fine-tune 800 steps to v-prediction (the network's target becomes v = sqrt(a) eps - sqrt(1 - a) x0, per
#     pixel), on the phantoms of this version, from the stage-1c weights (a fresh optimizer and EMA), no offset
#     noise. Then select the `ddim-clipped` sampler in its scheduler config (docs/fewstep.md: it beats ancestral
#     sampling on this model).
ACCELERATE_USE_CPU=true accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  training/train_semantic.py \
  "${DATA_AND_MODEL[@]}" --prediction_type v_prediction --noise_offset 0.0 \
  --train_batch_size 8 --max_train_steps 800 --learning_rate 1e-4 --lr_scheduler constant --lr_warmup_steps 0 \
  --adam_weight_decay 1e-3 --use_ema --ema_decay 0.995 --checkpointing_steps 400 --checkpoints_total_limit 2 \
  --validation_steps 0 --logger tensorboard --seed 0 \
  --pretrained_model_name_or_path "$WORK/calibrated/pipeline" --output_dir "$WORK/vpred/pipeline"
python - "$WORK/vpred/pipeline/scheduler/scheduler_config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config.update(sampler="ddim", ddim_eta=0.0, use_clipped_model_output=True)
open(sys.argv[1], "w").write(json.dumps(config, indent=2) + "\n")
PY

# 2. Held-out phantoms (seed 4242, never seen in training) and a reference slice of the training set.
python -m ultrasound_diffusers phantoms --num_images 200 --anatomy echo --size 64 --seed 4242 --output_dir "$WORK/heldout"
python -m ultrasound_diffusers phantoms --num_images 500 --anatomy echo --size 64 --seed 0 --output_dir "$WORK/train_ref"

# 3. One generated image per held-out label map (the pipeline's own sampler, ddim-clipped).
python -m ultrasound_diffusers generate --pipeline "$WORK/vpred/pipeline" --labels phantoms:echo:200:4242 \
  --num_inference_steps 50 --guidance_scale 1.5 --batch_size 25 --seed 0 --output_dir "$WORK/generated"

# 4. Evaluation report (FID/KID, memorisation, depth profile, speckle, class contrast, downstream Dice).
python -m ultrasound_diffusers evaluate --real "$WORK/heldout" --generated "$WORK/generated/dataset" \
  --train "$WORK/train_ref" --metrics all --out "$WORK/report"
