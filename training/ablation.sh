#!/usr/bin/env bash
# The B-map ablation of docs/ablation.md: the bundled demo recipe (training/demo_model.sh) trained twice, once
# with the published B-maps (--bmap_min 0.97) and once as the plain SDM twin (--bmap_min 1.0), every other flag
# identical; then both sampled on the same held-out label maps with the same seeds and sampler, and compared in
# one `evaluate` report with bootstrap intervals.
#
# Usage: [SEED=0] bash training/ablation.sh WORK_DIR [STEP ...]
#   steps: train-bmap train-plain heldout generate evaluate   (default: all, in that order; train-strong and
#   generate-strong add the stronger B-map arm)
#   (generate = generate-bmap then generate-plain; the two can also run at the same time, one thread each)
# Each arm of training seed SEED trains in WORK_DIR/seed<SEED>/<arm>/ with `--output_dir pipeline`, so the arms'
# training_args.json files differ in `bmap_min` only, and samples into WORK_DIR/seed<SEED>/generated-<arm>/. The
# held-out phantoms are shared (WORK_DIR/heldout). `evaluate` compares every arm over every seed folder it finds: a
# set with several seeds is several training runs of one arm (two-level bootstrap: the intervals include the
# spread between training seeds). The two train steps can run at the same time (one CPU thread each):
#   bash training/ablation.sh W train-bmap & bash training/ablation.sh W train-plain; wait
#   bash training/ablation.sh W heldout
#   bash training/ablation.sh W generate-bmap & bash training/ablation.sh W generate-plain; wait
#   bash training/ablation.sh W evaluate
# Wall time measured on 2 CPU cores (docs/ablation.md): training both arms side by side 70-85 min, held-out
# phantoms 30 s, sampling both arms side by side 27 min, evaluate 2 min.
#
# A stronger B-map arm (issue 32): train-strong / generate-strong use --bmap_min ${STRONG_BMAP_MIN:-0.9} (every
# other flag the same); evaluate adds it to the report when WORK_DIR/generated-strong exists.
# Training is resumable: rerun the same step after an interruption (each stage continues from its latest checkpoint,
# written every 400 steps; finished stages are skipped).
# Shorter runs (the same for both arms): STAGE1_STEPS=1200 FINETUNE=0 bash training/ablation.sh W ...
# SEED=1 bash training/ablation.sh W ... trains (and generates) the arms with another training seed.
# trains stage 1 for 1200 steps (the linear decay then reaches 0 at step 1200) and skips the offset-noise stage.
set -euo pipefail
STAGE1_STEPS="${STAGE1_STEPS:-2400}"
SEED="${SEED:-0}"  # training seed of both arms (SEED=1 for a second training run)
FINETUNE="${FINETUNE:-1}"
STRONG_BMAP_MIN="${STRONG_BMAP_MIN:-0.9}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mkdir -p "${1:?usage: bash training/ablation.sh WORK_DIR [STEP ...]}" && cd "$1" && pwd)"
shift
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(train-bmap train-plain heldout generate evaluate)
PY="${PYTHON:-python}"

RUN="$WORK/seed$SEED"

latest_checkpoint() {  # the highest N of pipeline/checkpoint-N in the current folder (0 when none)
  local n=0 d
  for d in pipeline/checkpoint-*; do
    [ -d "$d" ] || continue
    d="${d##*-}"
    [ "$d" -gt "$n" ] && n="$d"
  done
  echo "$n"
}

train_arm() {  # $1 = arm name, $2 = bmap_min. Resumable: an interrupted stage continues from its latest
  # checkpoint (every 400 steps), a finished stage is skipped.
  mkdir -p "$RUN/$1"
  cd "$RUN/$1"
  # training/demo_model.sh's data, network and B-map flags, with this arm's --bmap_min
  local data_and_model=(--dataset_name phantoms:echo --phantoms 2000 --resolution 64 --model_config tiny-64 --learn_sigma
    --drop_rate 0.2 --beta_schedule squaredcos_cap_v2 --bmap_schedule cosine --bmap_min "$2" --probe_geometry convex)
  # Stage 1: identical to training/demo_model.sh step 1a but for --bmap_min (and the resume).
  [ "$(latest_checkpoint)" -ge "$STAGE1_STEPS" ] || ACCELERATE_USE_CPU=true "$PY" -m accelerate.commands.launch \
    --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no "$REPO/training/train_semantic.py" \
    "${data_and_model[@]}" \
    --train_batch_size 8 --max_train_steps "$STAGE1_STEPS" --learning_rate 2e-4 --lr_scheduler linear --lr_warmup_steps 100 \
    --adam_weight_decay 1e-3 --use_ema --ema_decay 0.999 --checkpointing_steps 400 --checkpoints_total_limit 2 \
    --logger tensorboard --seed "$SEED" --output_dir pipeline --resume_from_checkpoint latest
  # Stage 2: identical to training/demo_model.sh step 1b (offset-noise fine-tune) but for --bmap_min. As there, the
  # resumed optimizer and schedule keep the restored lr 2e-4 (constant) and EMA decay 0.999 whatever the flags say.
  [ "$FINETUNE" = 1 ] || { cd "$REPO"; return 0; }
  [ "$(latest_checkpoint)" -lt 3200 ] || { cd "$REPO"; return 0; }
  ACCELERATE_USE_CPU=true "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
    --mixed_precision no --dynamo_backend no "$REPO/training/train_semantic.py" \
    "${data_and_model[@]}" \
    --train_batch_size 8 --max_train_steps 3200 --learning_rate 5e-5 --lr_scheduler constant --lr_warmup_steps 0 \
    --adam_weight_decay 1e-3 --use_ema --ema_decay 0.995 --checkpointing_steps 400 --checkpoints_total_limit 2 \
    --validation_steps 0 --logger tensorboard --seed "$SEED" --output_dir pipeline \
    --resume_from_checkpoint latest --noise_offset 0.1
  cd "$REPO"
}

generate_arm() {  # $1 = arm name: the same 200 held-out label maps, sampler, steps, guidance and seeds for every arm
  "$PY" -m ultrasound_diffusers generate --pipeline "$RUN/$1/pipeline" --labels phantoms:echo:200:4242 \
    --num_inference_steps 50 --guidance_scale 1.5 --batch_size 25 --seed 0 --output_dir "$RUN/generated-$1"
}

for step in "${STEPS[@]}"; do
  case "$step" in
    train-bmap) train_arm bmap 0.97 ;;
    train-plain) train_arm plain 1.0 ;;
    train-strong) train_arm strong "$STRONG_BMAP_MIN" ;;
    heldout)
      # The held-out phantoms of training/demo_model.sh (seed 4242) and a reference slice of the training set.
      "$PY" -m ultrasound_diffusers phantoms --num_images 200 --anatomy echo --size 64 --seed 4242 --output_dir "$WORK/heldout"
      "$PY" -m ultrasound_diffusers phantoms --num_images 500 --anatomy echo --size 64 --seed 0 --output_dir "$WORK/train_ref" ;;
    generate) generate_arm bmap; generate_arm plain ;;
    generate-bmap) generate_arm bmap ;;
    generate-plain) generate_arm plain ;;
    generate-strong) generate_arm strong ;;
    evaluate)
      # every arm over every seed folder that has its samples: a repeated name adds a training run of that arm
      sets=()
      for arm in bmap plain strong; do
        for run in "$WORK"/seed*/; do
          [ ! -d "$run/generated-$arm/dataset" ] || sets+=("$arm=${run%/}/generated-$arm/dataset")
        done
      done
      "$PY" -m ultrasound_diffusers evaluate --real "$WORK/heldout" \
        --generated "${sets[@]}" \
        --train "$WORK/train_ref" --metrics all --paired --output_dir "$WORK/report" ;;
    *) echo "ablation.sh: unknown step '$step' (expected train-bmap, train-plain, train-strong, heldout, generate, generate-bmap, generate-plain, generate-strong, evaluate)" >&2; exit 2 ;;
  esac
done
