# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
r"""``twinbrain train``: train a TwinBrain checkpoint on LeRobot v3 datasets.

Only argparse is imported at import time; torch, transformers and accelerate load when the command
runs. Every option defaults to None here so that a resume inherits the saved run settings and only
the options given on the command line override them (run-defining ones must then match).

Usage:
    twinbrain train --init models/demo-tiny --dataset data/so101_pick --output-dir runs/pick --steps 2000
    twinbrain train --output-dir runs/pick --resume auto              # continue the newest checkpoint
    accelerate launch --config_file config/train/accelerate_multi_gpu.yaml \\
        -m twinbrain_ros.train.cli --init models/tb-4b --dataset data/pick --output-dir runs/4b
    python -m twinbrain_ros.train.cli --help                          # same options, no ROS needed

Exit codes: 0 done, 2 invalid input (dataset, checkpoint, settings; every problem printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Mirrors trainer.PRECISIONS / BACKENDS / NORM_MODES (literal, so building the parser imports no torch).
PRECISION_CHOICES = ("auto", "bf16", "fp32")
BACKEND_CHOICES = ("auto", "accelerate", "torch")
MODE_CHOICES = ("q01_q99", "min_max", "mean_std", "identity")

# argparse dest -> TrainConfig field, for options that map one to one.
_FIELDS = {
    "init": "init", "output_dir": "output_dir", "steps": "max_steps", "batch_size": "batch_size",
    "grad_accum": "grad_accum", "lr_brain": "lr_brain", "lr_expert": "lr_expert",
    "min_lr_ratio": "min_lr_ratio", "warmup_steps": "warmup_steps", "weight_decay": "weight_decay",
    "grad_clip": "grad_clip", "precision": "precision", "backend": "backend", "seed": "seed",
    "save_every": "save_every", "keep_last": "keep_last", "log_every": "log_every",
    "num_workers": "num_workers", "progress": "progress", "action_mode": "action_mode",
    "state_mode": "state_mode", "binary_gripper": "binary_gripper", "binary_threshold": "binary_threshold",
    "norm_stats": "norm_stats", "image_size": "image_size",
    "find_unused_parameters": "find_unused_parameters", "state_dropout": "state_dropout",
    "start_repeats": "start_repeats", "start_seconds": "start_seconds", "ema_decay": "ema_decay",
    "scene_group": "scene_group",
}  # fmt: skip


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain train``."""
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", action="append", default=None, metavar="PATH",
                   help="LeRobot v3 dataset directory (repeat to concatenate several); "
                        "'synthetic:EPISODESxFRAMES' for a smoke run")  # fmt: skip
    g.add_argument("--init", default=None, help="checkpoint to start from (twinbrain init / make-tiny)")
    g.add_argument("--output-dir", "--out", dest="output_dir", default=None,
                   help="run directory: checkpoints/step-N, metrics.jsonl, train_config.json")  # fmt: skip
    g.add_argument("--resume", default=None, metavar="DIR|auto",
                   help="continue a run: a checkpoints/step-N directory, or 'auto' for the newest in "
                        "--output-dir (with --init: start a new run when there is none yet)")  # fmt: skip
    g.add_argument("--camera", action="append", default=None, metavar="CONTRACT=DATASET",
                   help="map a contract camera to a dataset camera name (repeat per camera)")  # fmt: skip
    g.add_argument("--image-size", type=int, default=None,
                   help="square view size in pixels (overrides the checkpoint's processing; smaller is "
                        "faster on CPU)")  # fmt: skip

    g = p.add_argument_group("normalisation")
    g.add_argument("--action-mode", choices=MODE_CHOICES, default=None, help="default q01_q99")
    g.add_argument("--state-mode", choices=MODE_CHOICES, default=None, help="default q01_q99")
    g.add_argument("--binary-gripper", action="store_true", default=None,
                   help="threshold gripper actions to {0, 1} and leave them un-normalised")  # fmt: skip
    g.add_argument("--binary-threshold", type=float, default=None, help="default 0.5")
    g.add_argument("--norm-stats", default=None, help="norm_stats.json to use instead of computing them")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None, help="optimiser steps in total (default 1000)")
    g.add_argument("--batch-size", type=int, default=None, help="samples per process (default 8)")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    g.add_argument("--lr-brain", type=float, default=None, help="right-brain peak lr (default 1e-5)")
    g.add_argument("--lr-expert", type=float, default=None,
                   help="action expert + state encoder peak lr (default 1e-4)")  # fmt: skip
    g.add_argument("--min-lr-ratio", type=float, default=None, help="cosine floor / peak (default 0.1)")
    g.add_argument("--warmup-steps", type=int, default=None, help="default 100")
    g.add_argument("--weight-decay", type=float, default=None, help="default 1e-8")
    g.add_argument("--grad-clip", type=float, default=None, help="max grad norm, 0 = off (default 1.0)")
    g.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="auto: bf16 on a GPU that has it, else fp32")  # fmt: skip
    g.add_argument("--seed", type=int, default=None, help="default 0")
    g.add_argument("--state-dropout", type=float, default=None,
                   help="share of samples trained with the state blanked, so the policy must use the "
                        "camera (default 0)")  # fmt: skip
    g.add_argument("--start-repeats", type=int, default=None,
                   help="sample the first --start-seconds of every episode this many times as often: "
                        "there the state says nothing about the target, so the policy must learn it from "
                        "the images and the instruction (default 1 = uniform)")  # fmt: skip
    g.add_argument("--start-seconds", type=float, default=None,
                   help="length of the oversampled episode start, s (default 0.5)")  # fmt: skip
    g.add_argument("--scene-group", type=int, default=None,
                   help="consecutive groups of this many episodes show one scene under different "
                        "instructions (record-sim --each-task); every batch then holds each drawn "
                        "frame with that moment of its scene's other episodes (default 1 = off)")  # fmt: skip
    g.add_argument("--ema-decay", type=float, default=None,
                   help="save an exponential moving average of the trainable weights with this decay as "
                        "the checkpoint's model, e.g. 0.999 (default 0 = off; the live weights are kept "
                        "beside it for resuming)")  # fmt: skip

    g = p.add_argument_group("runtime")
    g.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="auto: accelerate when installed, else plain torch")  # fmt: skip
    g.add_argument("--save-every", type=int, default=None, help="default 500")
    g.add_argument("--keep-last", type=int, default=None, help="checkpoints kept, 0 = all (default 3)")
    g.add_argument("--log-every", type=int, default=None, help="default 10")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default 0)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (one log line per --log-every steps instead)")  # fmt: skip
    g.add_argument("--find-unused-parameters", action="store_true", default=None,
                   help="DDP find_unused_parameters")  # fmt: skip


def _camera_map(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        contract, sep, dataset = item.partition("=")
        if not sep or not contract or not dataset:
            raise ValueError(f"--camera expects CONTRACT=DATASET, got {item!r}")
        out[contract] = dataset
    return out


def resolve_config(a: argparse.Namespace):
    """The run's ``TrainConfig`` and the checkpoint to resume (or None) from parsed arguments.

    A resume starts from the saved settings; explicitly given options override them.

    Raises:
        FileNotFoundError: if ``--resume auto`` finds no checkpoint.
        ValueError: on missing or invalid options.
    """
    from twinbrain_ros.train.trainer import TrainConfig, find_latest_checkpoint, read_trainer_state

    resume = None
    base: dict = {}
    if a.resume:
        if a.resume == "auto":
            if not a.output_dir:
                raise ValueError("--resume auto needs --output-dir")
            resume = find_latest_checkpoint(a.output_dir)
            if resume is None and not a.init:
                raise FileNotFoundError(f"--resume auto: no complete checkpoint under {a.output_dir}")
        else:
            resume = Path(a.resume)
        if resume is not None:
            base = dict(read_trainer_state(resume)["train_config"])
            base["output_dir"] = str(resume.parent.parent)  # where the run is now, even if it was moved
    given = {field: getattr(a, dest) for dest, field in _FIELDS.items() if getattr(a, dest) is not None}
    cameras = _camera_map(a.camera)
    if cameras is not None:
        given["cameras"] = cameras
    if a.dataset:
        given["datasets"] = list(a.dataset)
    merged = {**base, **given}
    if not merged.get("output_dir"):
        raise ValueError("--output-dir is required")
    if not merged.get("datasets"):
        raise ValueError("--dataset is required")
    if resume is None and not merged.get("init"):
        raise ValueError("--init (a checkpoint directory) is required for a new run")
    return TrainConfig.from_dict(merged), resume


def train_main(a: argparse.Namespace) -> int:
    """Run ``twinbrain train``; returns the exit code."""
    from twinbrain_ros.core.validation import ValidationError
    from twinbrain_ros.train.trainer import LeftBrainModifiedError

    try:
        config, resume = resolve_config(a)
    except (ValueError, FileNotFoundError) as exc:
        print(f"[train] {exc}", file=sys.stderr)
        return 2
    import torch

    from twinbrain_ros.train.dataset import load_sources
    from twinbrain_ros.train.trainer import build_trainer

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        source = load_sources(config.datasets)
        trainer = build_trainer(config, source, resume=resume)
    except (ValidationError, ValueError, FileNotFoundError, ImportError, LeftBrainModifiedError) as exc:
        print(f"[train] cannot start: {exc}", file=sys.stderr)
        return 2
    rt = trainer.runtime
    if rt.is_main:
        where = f"resuming {resume} at step {trainer.step}" if resume else f"from {config.init}"
        print(
            f"[train] {where}: {len(trainer.dataset)} frames, {rt.num_processes} process(es) on "
            f"{rt.device} ({rt.name}, {rt.precision}), {config.max_steps} steps",
            file=sys.stderr,
        )
    summary = trainer.train()
    if rt.is_main:
        last = summary.losses[-1] if summary.losses else float("nan")
        print(
            f"[train] done: step {summary.step}, last loss {last:.4f}, {summary.steps_per_s:.2f} steps/s, "
            f"left brain unchanged ({summary.left_fingerprint[:19]}...), checkpoint {summary.checkpoint}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m twinbrain_ros.train.cli``, ``accelerate launch -m ...``)."""
    p = argparse.ArgumentParser(prog="twinbrain train", description=__doc__.split("\n")[0])
    add_train_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m twinbrain_ros.train.cli``."""
    sys.exit(train_main(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
