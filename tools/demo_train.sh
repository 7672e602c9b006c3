#!/usr/bin/env bash
# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
#
# make demo-train: build the bundled demo checkpoint models/so101-sim-touch from nothing.
#   1. record DEMO_TRAIN_EPISODES scripted-expert episodes over ROS 2 (sim_node + expert_node +
#      recorder_node) inside the loopback-only netns, each seed once per task (touch red / touch blue
#      on the same scene: the instruction, not a colour prior, picks the target);
#   2. convert them to a LeRobot v3 dataset (successful episodes only);
#   3. write a random-init tiny TwinBrain for the sim contract (seed 0; action expert 128 wide,
#      4 blocks, 4 flow samples per frame, smooth 2-D vision position table);
#   4. train in two stages (left brain frozen and checked): DEMO_TRAIN_STEPS steps from the random
#      init, then DEMO_TRAIN_STEPS2 steps from those weights with a fresh warm-up + cosine schedule
#      (seed 1); episode starts are oversampled 8x (the home pose is where the camera and the
#      instruction must choose the cube);
#   5. copy the inference files of stage 2's checkpoint DEMO_TRAIN_PICK to models/so101-sim-touch.
# Every step is seeded; the recording goes over DDS in real time, so frame timing (and from there
# the weights) can differ in the last bits between machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${DEMO_TRAIN_DIR:-out/demo-train}
EPISODES=${DEMO_TRAIN_EPISODES:-1600}
STEPS=${DEMO_TRAIN_STEPS:-4000}
STEPS2=${DEMO_TRAIN_STEPS2:-6000}
PICK=${DEMO_TRAIN_PICK:-$STEPS2}
DEST=${DEMO_TRAIN_DEST:-models/so101-sim-touch}
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONPATH=$PWD
mkdir -p "$OUT"
if [[ ! -f "$OUT/episodes.done" ]]; then
  rm -rf "$OUT/episodes"
  tools/isolated.sh $PY -m twinbrain_ros.cli record-sim --out "$OUT/episodes" --episodes "$EPISODES" \
    --tasks touch_red_cube,touch_blue_cube --each-task --seed 0 --real-time-factor 2
  touch "$OUT/episodes.done"
fi
if [[ ! -f "$OUT/dataset.done" ]]; then
  $PY -m twinbrain_ros.cli convert "$OUT/episodes" --out "$OUT/dataset" --only-success --skip-bad --overwrite
  touch "$OUT/dataset.done"
fi
$PY -m twinbrain_ros.cli make-tiny --out "$OUT/init" --embodiment so101_sim --expert-width 128 \
  --expert-layers 4 --diffusion-repeats 4 --smooth-positions --seed 0 --overwrite
COMMON=(--dataset "$OUT/dataset" --batch-size 16 --lr-brain 1e-3 --lr-expert 1e-3 --warmup-steps 100
  --image-size 128 --start-repeats 8 --threads 2 --save-every 1000 --resume auto)
ckpt() { printf '%s/checkpoints/step-%08d' "$1" "$2"; }
$PY -m twinbrain_ros.cli train --init "$OUT/init" --output-dir "$OUT/run1" --steps "$STEPS" --seed 0 \
  --keep-last 1 "${COMMON[@]}"
$PY -m twinbrain_ros.cli train --init "$(ckpt "$OUT/run1" "$STEPS")" --output-dir "$OUT/run2" \
  --steps "$STEPS2" --seed 1 --keep-last 0 "${COMMON[@]}"
CKPT=$(ckpt "$OUT/run2" "$PICK")
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
for f in config.json model.safetensors norm_stats.json processor.json embodiment.yaml trainer_state.json tokenizer; do
  cp -r "$CKPT/$f" "$DEST.tmp/"
done
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
du -sh "$DEST"
echo "demo-train: wrote $DEST from $CKPT"
