# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain`` subcommands for checkpoints: ``init``, ``convert-reference``, ``make-tiny``.

This module imports only argparse at import time; torch and transformers are imported when a command
runs, so building the top-level parser stays cheap. ``register(subparsers)`` adds all three commands;
each ``*_main(args)`` returns an exit code (0 ok, 2 when the source or checkpoint is invalid, with
every problem printed).

Usage:
    twinbrain make-tiny --out models/demo-tiny --embodiment so101
    twinbrain init --base /data/Qwen3-VL-4B-Instruct --out models/tb-4b --embodiment so101
    twinbrain convert-reference runs/physbrain --out models/physbrain --embodiment so101
"""

from __future__ import annotations

import argparse
import sys

# Mirrors convert.EXPERT_PRESETS (kept literal so that building the parser does not import torch).
EXPERT_CHOICES = ("dit_b", "dit_l", "small", "tiny")
MODE_CHOICES = ("native", "reference")
FAMILY_CHOICES = ("qwen3_vl", "qwen2_5_vl")


def add_init_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain init``."""
    p.add_argument("--base", required=True, help="local Hugging Face Qwen3-VL / Qwen2.5-VL model directory")
    p.add_argument("--out", required=True, help="checkpoint directory to write, e.g. models/NAME")
    p.add_argument("--embodiment", required=True, help="embodiment contract name or YAML path")
    p.add_argument("--mode", choices=MODE_CHOICES, default="native")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --base)")
    p.add_argument(
        "--norm-stats", default=None, help="norm_stats.json (default: placeholder from joint limits)"
    )
    p.add_argument("--expert", choices=EXPERT_CHOICES, default="dit_b", help="action-expert size")
    p.add_argument("--num-action-queries", type=int, default=8)
    p.add_argument("--max-state-dim", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224, help="views are resized to this square size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def add_convert_reference_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain convert-reference``."""
    p.add_argument("src", help="authors' run directory or a .safetensors state dict in their layout")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--embodiment", required=True, help="embodiment contract name or YAML path")
    p.add_argument("--base", default="qwen3-vl-4b", help="preset name or HF model directory of the backbone")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: Qwen3 tokenizer)")
    p.add_argument("--norm-stats", default=None, help="dataset_statistics.json (default: in the run dir)")
    p.add_argument("--dataset-key", default=None, help="dataset tag inside dataset_statistics.json")
    p.add_argument("--action-mode", choices=("q01_q99", "min_max"), default="q01_q99")
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--num-heads", type=int, default=None, help="DiT heads (default from the DiT type)")
    p.add_argument("--num-action-queries", type=int, default=None)
    p.add_argument("--select-layer", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")


def add_make_tiny_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain make-tiny``."""
    p.add_argument("--out", required=True, help="checkpoint directory to write, e.g. models/demo-tiny")
    p.add_argument("--embodiment", default="so101", help="embodiment contract name or YAML path")
    p.add_argument("--mode", choices=MODE_CHOICES, default="native")
    p.add_argument("--family", choices=FAMILY_CHOICES, default="qwen3_vl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--expert-width", type=int, default=None,
                   help="action expert width (default 32; the sim demo uses 128)")  # fmt: skip
    p.add_argument("--expert-layers", type=int, default=None, help="action expert blocks (default 2)")
    p.add_argument("--expert-state-token", action="store_true",
                   help="also give the action expert the state as its own leading token (the right "
                        "brain sees it either way)")  # fmt: skip
    p.add_argument("--brain-layers", type=int, default=None,
                   help="language-model layers per brain (default 2)")  # fmt: skip
    p.add_argument("--vision-depth", type=int, default=None, help="vision-tower blocks per brain (default 2)")
    p.add_argument("--diffusion-repeats", type=int, default=None,
                   help="noise/time draws per example in the training loss (default 1)")  # fmt: skip
    p.add_argument("--smooth-positions", action="store_true",
                   help="start the vision position table as a smooth 2-D sine/cosine code instead of "
                        "random (Qwen3-VL; helps brains trained from scratch localise things)")  # fmt: skip
    p.add_argument("--right-prompt-template", default=None, metavar="TEMPLATE",
                   help="the right brain's prompt, fields {instruction} {propri} {action_queries} and "
                        "optionally {images} (where the views go; default: before the text)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true")


def _report(path, what: str) -> int:
    print(f"[{what}] wrote {path}")
    return 0


def _fail(exc: Exception, what: str) -> int:
    print(f"[{what}] failed: {exc}", file=sys.stderr)
    return 2


def init_main(a: argparse.Namespace) -> int:
    """``twinbrain init``: a new checkpoint from a Hugging Face backbone directory."""
    from twinbrain_ros.core.validation import ValidationError
    from twinbrain_ros.model.convert import init_from_hf

    try:
        path = init_from_hf(
            a.base, a.out, embodiment=a.embodiment, mode=a.mode, tokenizer=a.tokenizer,
            norm_stats=a.norm_stats, expert=a.expert, num_action_queries=a.num_action_queries,
            max_state_dim=a.max_state_dim, image_size=a.image_size, seed=a.seed, overwrite=a.overwrite,
        )  # fmt: skip
    except (ValidationError, FileExistsError, FileNotFoundError) as exc:
        return _fail(exc, "init")
    return _report(path, "init")


def convert_reference_main(a: argparse.Namespace) -> int:
    """``twinbrain convert-reference``: the authors' layout -> a reference-compatible checkpoint."""
    from twinbrain_ros.core.validation import ValidationError
    from twinbrain_ros.model.convert import convert_reference

    try:
        path = convert_reference(
            a.src, a.out, embodiment=a.embodiment, base=a.base, tokenizer=a.tokenizer,
            norm_stats=a.norm_stats, dataset_key=a.dataset_key, action_mode=a.action_mode,
            horizon=a.horizon, num_heads=a.num_heads, num_action_queries=a.num_action_queries,
            select_layer=a.select_layer, image_size=a.image_size, overwrite=a.overwrite,
        )  # fmt: skip
    except (ValidationError, FileExistsError, FileNotFoundError) as exc:
        return _fail(exc, "convert-reference")
    return _report(path, "convert-reference")


def make_tiny_main(a: argparse.Namespace) -> int:
    """``twinbrain make-tiny``: a random-init tiny checkpoint for tests and the demo."""
    from twinbrain_ros.core.validation import ValidationError
    from twinbrain_ros.model.convert import make_tiny_checkpoint

    try:
        path = make_tiny_checkpoint(
            a.out, embodiment=a.embodiment, mode=a.mode, family=a.family, seed=a.seed, overwrite=a.overwrite,
            expert_width=a.expert_width, expert_layers=a.expert_layers,
            expert_state_token=a.expert_state_token, brain_layers=a.brain_layers, vision_depth=a.vision_depth,
            diffusion_repeats=a.diffusion_repeats, smooth_positions=a.smooth_positions,
            right_prompt_template=a.right_prompt_template,
        )  # fmt: skip
    except (ValidationError, ValueError, FileExistsError, FileNotFoundError) as exc:
        return _fail(exc, "make-tiny")
    return _report(path, "make-tiny")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``init``, ``convert-reference`` and ``make-tiny`` to the ``twinbrain`` subparsers."""
    p = sub.add_parser("init", help="new TwinBrain checkpoint from a local Hugging Face Qwen-VL directory")
    add_init_args(p)
    p.set_defaults(func=init_main)
    p = sub.add_parser(
        "convert-reference", help="convert a checkpoint in the authors' layout (reference mode)"
    )
    add_convert_reference_args(p)
    p.set_defaults(func=convert_reference_main)
    p = sub.add_parser("make-tiny", help="random-init tiny checkpoint for tests and the demo")
    add_make_tiny_args(p)
    p.set_defaults(func=make_tiny_main)
