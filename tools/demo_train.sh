#!/usr/bin/env bash
# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
#
# make demo-train: build the bundled demo checkpoint models/so101-sim-touch from nothing.
#   1. record DEMO_TRAIN_EPISODES scripted-expert episodes over ROS 2 (sim_node + expert_node +
#      recorder_node; seeds 0.., touch red / touch blue alternating), inside the loopback-only netns;
#   2. convert them to a LeRobot v3 dataset (successful episodes only);
#   3. write a random-init tiny TwinBrain for the sim contract (seed 0; action expert 128 wide, 4 blocks);
#   4. train DEMO_TRAIN_STEPS steps (left brain frozen and checked), seed 0;
#   5. copy the inference files of the last checkpoint to models/so101-sim-touch.
# Every step is seeded; the recording goes over DDS in real time, so frame timing (and from there
# the weights) can differ in the last bits between machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${DEMO_TRAIN_DIR:-out/demo-train}
EPISODES=${DEMO_TRAIN_EPISODES:-120}
STEPS=${DEMO_TRAIN_STEPS:-2000}
DEST=${DEMO_TRAIN_DEST:-models/so101-sim-touch}
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONPATH=$PWD
mkdir -p "$OUT"
if [[ ! -f "$OUT/episodes.done" ]]; then
  rm -rf "$OUT/episodes"
  tools/isolated.sh $PY -m twinbrain_ros.cli record-sim --out "$OUT/episodes" --episodes "$EPISODES" \
    --tasks touch_red_cube,touch_blue_cube --seed 0 --real-time-factor 1.5
  touch "$OUT/episodes.done"
fi
$PY -m twinbrain_ros.cli convert "$OUT/episodes" --out "$OUT/dataset" --only-success --skip-bad --overwrite
$PY -m twinbrain_ros.cli make-tiny --out "$OUT/init" --embodiment so101_sim --expert-width 128 \
  --expert-layers 4 --seed 0 --overwrite
$PY -m twinbrain_ros.cli train --init "$OUT/init" --dataset "$OUT/dataset" --output-dir "$OUT/run" \
  --resume auto --steps "$STEPS" --batch-size 16 --lr-brain 5e-4 --lr-expert 1e-3 --warmup-steps 100 \
  --image-size 128 --seed 0 --threads 2 --save-every 1000 --keep-last 2
CKPT="$OUT/run/checkpoints/step-$(printf '%08d' "$STEPS")"
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
for f in config.json model.safetensors norm_stats.json processor.json embodiment.yaml trainer_state.json tokenizer; do
  cp -r "$CKPT/$f" "$DEST.tmp/"
done
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
du -sh "$DEST"
echo "demo-train: wrote $DEST from $CKPT"
