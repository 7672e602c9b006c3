# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The training loop: right brain + state encoder + action expert, left brain frozen and verified.

Reading order: ``TrainConfig`` -> learning-rate schedule -> optimiser groups -> runtimes (accelerate or
plain torch) -> safetensors/JSON state helpers -> ``Trainer`` -> ``build_trainer``.

One optimiser step = ``grad_accum`` micro-batches of ``batch_size`` samples on each process. AdamW
has two parameter groups: ``brain`` (the right brain, ``lr_brain``) and ``expert`` (the action expert
and the freshly initialised state encoder, ``lr_expert``); both follow a linear warm-up and a cosine
decay to ``min_lr_ratio`` times their peak. Gradients are clipped to ``grad_clip``. bf16 autocast is
used where the hardware has it (``precision="auto"``: a CUDA GPU with bf16), float32 otherwise.

Multi-GPU / multi-node: with Hugging Face ``accelerate`` installed, the same loop runs under
``accelerate launch`` (DDP, or DeepSpeed ZeRO-2 for the 4B model; see ``config/train/``). Without it,
a plain single-device torch loop runs.

Left brain: its sha256 fingerprint (over its tensors, in the dtypes of the initial checkpoint) is taken
before the first step and recomputed at every save; a difference aborts the run
(:class:`LeftBrainModifiedError`). Saved checkpoints keep the left brain in its original dtypes, so
their ``twinbrain.left_fingerprint`` equals the initial checkpoint's.

Checkpoints (``<output_dir>/checkpoints/step-NNNNNNNN/``) are complete model directories
(``model/checkpoint.py``: loadable by ``Policy.load``) plus the training state, never pickled:

    trainer_state.json        step, schedule, config, dataset + left fingerprints, optimiser scalars
    optimizer.safetensors     AdamW moments and step counts, keyed ``state.<param>.<name>``
    rng_rank<R>.safetensors   torch CPU/CUDA RNG and the loss-noise generator of process R

``trainer_state.json`` is written last; ``checkpoints/latest`` names the newest complete one. Resuming
continues the same run: same data order, optimiser moments, schedule and RNG, so N straight steps
equal k steps + resume + N - k steps.

Usage:
    trainer = build_trainer(TrainConfig(output_dir="runs/x", init="models/demo-tiny"), source)
    summary = trainer.train()
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinbrain_ros.train.dataset import (
    ChunkCollator,
    ChunkDataset,
    FrameSource,
    ResumableBatchSampler,
    check_source,
    compute_normalizers,
    dataset_fingerprint,
    episode_start_repeats,
    gripper_dims,
    scene_partners,
)

TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_rank{rank}.safetensors"
ONLINE_FILE = "online_weights.safetensors"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
METRICS_FILE = "metrics.jsonl"
TRAIN_CONFIG_FILE = "train_config.json"
STATE_FORMAT = "twinbrain_train_state"
STATE_VERSION = 1
LEFT_PREFIX = "brains.left."
EXPERT_PREFIXES = ("action_expert.", "state_encoder.")

PRECISIONS = ("auto", "bf16", "fp32")
BACKENDS = ("auto", "accelerate", "torch")
NORM_MODES = ("q01_q99", "min_max", "mean_std", "identity")
# Settings a resume may change; every other TrainConfig field defines the run and must match.
RESUME_OVERRIDABLE = frozenset(
    {"output_dir", "datasets", "max_steps", "save_every", "keep_last", "log_every", "num_workers",
     "progress", "init", "norm_stats"}
)  # fmt: skip

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class LeftBrainModifiedError(RuntimeError):
    """The frozen left brain's weights changed during training (its fingerprint differs)."""


class DatasetMismatchError(ValueError):
    """A resume was asked on a dataset other than the one the run was trained on."""


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``train_config.json`` and in each checkpoint).

    Attributes:
        output_dir: run directory (checkpoints, metrics).
        datasets: dataset paths (recorded; the dataset fingerprint is what a resume checks).
        init: checkpoint directory the run starts from (``twinbrain init`` / ``make-tiny``).
        max_steps: optimiser steps in total.
        batch_size: samples per process per micro-batch.
        grad_accum: micro-batches per optimiser step.
        lr_brain: peak learning rate of the right brain.
        lr_expert: peak learning rate of the action expert and the state encoder.
        min_lr_ratio: the cosine decays to this fraction of each peak.
        warmup_steps: linear warm-up steps (from lr/warmup_steps up to the peak).
        weight_decay: AdamW weight decay.
        adam_betas: AdamW betas.
        adam_eps: AdamW epsilon.
        grad_clip: max global gradient norm (0 disables clipping; the norm is still logged).
        precision: ``auto`` (bf16 on a CUDA GPU that has it, else fp32), ``bf16`` or ``fp32``.
        backend: ``auto`` (accelerate when installed), ``accelerate`` or ``torch``.
        seed: seed of the data order, the loss noise and dropout.
        save_every: save a checkpoint every this many steps (and always at the end).
        keep_last: keep this many newest checkpoints (0 keeps all).
        log_every: log (progress bar, metrics.jsonl) every this many steps.
        num_workers: DataLoader worker processes (0: load in the training process).
        progress: show a tqdm progress bar (main process only).
        action_mode: action normalisation mode (``q01_q99``, ``min_max``, ``mean_std``, ``identity``).
        state_mode: state normalisation mode.
        binary_gripper: threshold gripper action dims (joint names containing "gripper") to {0, 1}
            and leave them un-normalised, as in the reference's binary gripper mode.
        binary_threshold: gripper actions above it become 1.
        norm_stats: a ``norm_stats.json`` to use instead of statistics computed from the dataset.
        cameras: contract camera -> dataset camera name (default: the same names).
        image_size: override the checkpoint's view size (square, pixels; also lowers ``min_pixels``
            so small views are not upscaled). None keeps the checkpoint's processing.
        find_unused_parameters: DDP's ``find_unused_parameters`` (needed only if some trainable
            parameter gets no gradient).
        state_dropout: share of samples whose normalised state is blanked (see ``Trainer._drop_state``).
        start_repeats: sample the first ``start_seconds`` of every episode this many times as often.
        start_seconds: length of the oversampled episode start.
        scene_group: consecutive groups of this many episodes are one scene under as many
            instructions (``record-sim --each-task``); each batch then pairs every drawn frame with
            the same moment of its scene's other episodes (1: no pairing).
        ema_decay: keep an exponential moving average of the trainable weights with this decay
            (0 disables). With it, a checkpoint's ``model.safetensors`` holds the averaged weights
            (what a policy loads) and ``online_weights.safetensors`` the optimiser's own (what a
            resume continues from). The effective decay warms up as ``min(ema_decay,
            (1 + n) / (10 + n))`` after ``n`` updates, so early averages do not remember the init.
    """

    output_dir: str
    datasets: tuple[str, ...] = ()
    init: str | None = None
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr_brain: float = 1e-5
    lr_expert: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 1e-8
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    precision: str = "auto"
    backend: str = "auto"
    seed: int = 0
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    num_workers: int = 0
    progress: bool = True
    action_mode: str = "q01_q99"
    state_mode: str = "q01_q99"
    binary_gripper: bool = False
    binary_threshold: float = 0.5
    norm_stats: str | None = None
    cameras: dict[str, str] | None = None
    image_size: int | None = None
    find_unused_parameters: bool = False
    state_dropout: float = 0.0
    start_repeats: int = 1
    start_seconds: float = 0.5
    scene_group: int = 1
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        """Validate; raises ValueError listing every bad value."""
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        object.__setattr__(self, "datasets", tuple(str(d) for d in self.datasets))
        if self.cameras is not None:
            object.__setattr__(self, "cameras", {str(k): str(v) for k, v in dict(self.cameras).items()})
        problems = []
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an int >= 1, got {value!r}")
        for name in ("warmup_steps", "keep_last", "num_workers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name} must be an int >= 0, got {value!r}")
        for name in ("lr_brain", "lr_expert"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        for name, lo, hi in (("min_lr_ratio", 0.0, 1.0), ("binary_threshold", -math.inf, math.inf)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not lo <= value <= hi or math.isnan(value):
                problems.append(f"{name} must be in [{lo}, {hi}], got {value!r}")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas) or len(self.adam_betas) != 2:
            problems.append(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        for name in ("weight_decay", "adam_eps", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("action_mode", "state_mode"):
            if getattr(self, name) not in NORM_MODES:
                problems.append(f"{name} must be one of {NORM_MODES}, got {getattr(self, name)!r}")
        if not isinstance(self.state_dropout, int | float) or not 0.0 <= self.state_dropout < 1.0:
            problems.append(f"state_dropout must be in [0, 1), got {self.state_dropout!r}")
        repeats = self.start_repeats
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            problems.append(f"start_repeats must be an int >= 1, got {self.start_repeats!r}")
        group = self.scene_group
        if isinstance(group, bool) or not isinstance(group, int) or not 1 <= group <= self.batch_size:
            problems.append(f"scene_group must be an int in [1, batch_size], got {self.scene_group!r}")
        if not isinstance(self.start_seconds, int | float) or not 0.0 < self.start_seconds < math.inf:
            problems.append(f"start_seconds must be a finite number > 0, got {self.start_seconds!r}")
        if not isinstance(self.ema_decay, int | float) or not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 28):
            problems.append(f"image_size must be an int >= 28 or None, got {self.image_size!r}")
        if not self.output_dir:
            problems.append("output_dir is required")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        out["datasets"] = list(self.datasets)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}")
        return cls(**dict(data))

    def run_differences(self, other: TrainConfig) -> list[str]:
        """Fields (outside ``RESUME_OVERRIDABLE``) whose values differ, as ``name: self vs other``."""
        a, b = self.to_dict(), other.to_dict()
        keys = [k for k in sorted(a) if k not in RESUME_OVERRIDABLE and a[k] != b[k]]
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in keys]


# --------------------------------------------------------------------------------------------------
# Exponential moving average of the trainable weights
# --------------------------------------------------------------------------------------------------
class WeightAverage:
    """An exponential moving average of named parameters, kept in fp32 beside the optimiser.

    ``update()`` after every optimiser step does ``avg += (1 - d) * (param - avg)`` with
    ``d = min(decay, (1 + n) / (10 + n))`` for the ``n``-th update (0-based). The warm-up keeps the
    average of a short run close to its weights instead of to the initialisation.
    """

    def __init__(self, named_params: Sequence[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        self.decay = float(decay)
        self.params = dict(named_params)
        self.average = {k: p.detach().float().clone() for k, p in self.params.items()}
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next ``update()`` uses."""
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the parameters' current values."""
        d = self.current_decay()
        for key, param in self.params.items():
            self.average[key].lerp_(param.detach().float(), 1.0 - d)
        self.updates += 1

    def averaged_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` with the averaged parameters in place of the live ones (same dtypes)."""
        out = dict(state)
        for key, avg in self.average.items():
            out[key] = avg.to(dtype=state[key].dtype, device=state[key].device)
        return out


# --------------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------------
def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then a cosine
    from 1 down to ``min_lr_ratio`` at ``total_steps``, constant after.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets each group's lr to ``peak * lr_factor(step)``; its state is the step count (JSON).

    Args:
        optimizer: the torch optimiser (its groups' ``lr`` at construction are the peaks).
        warmup_steps: linear warm-up steps.
        total_steps: steps until the cosine reaches its floor.
        min_lr_ratio: the floor as a fraction of the peak.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
    ) -> None:
        self.optimizer = optimizer
        self.peaks = [float(g["lr"]) for g in optimizer.param_groups]
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.step_count = 0
        self._apply()

    def factor(self) -> float:
        """The current multiplier."""
        return lr_factor(
            self.step_count, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
            min_lr_ratio=self.min_lr_ratio,
        )  # fmt: skip

    def _apply(self) -> None:
        f = self.factor()
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * f

    def step(self) -> None:
        """Advance one optimiser step."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {
            "step_count": self.step_count, "peaks": self.peaks, "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps, "min_lr_ratio": self.min_lr_ratio,
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the step count (the peaks and shape come from the current config)."""
        self.step_count = int(state["step_count"])
        self._apply()


# --------------------------------------------------------------------------------------------------
# Optimiser groups
# --------------------------------------------------------------------------------------------------
def parameter_groups(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Trainable parameters by group: ``brain`` (right brain, anything else) and ``expert``.

    Raises:
        LeftBrainModifiedError: if any left-brain parameter requires a gradient.
    """
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {"brain": [], "expert": []}
    for name, param in model.named_parameters():
        if name.startswith(LEFT_PREFIX):
            if param.requires_grad:
                raise LeftBrainModifiedError(f"left-brain parameter {name} requires grad; it must be frozen")
            continue
        if param.requires_grad:
            groups["expert" if name.startswith(EXPERT_PREFIXES) else "brain"].append((name, param))
    return groups


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.AdamW, list[list[str]]]:
    """AdamW over the trainable parameters with the brain and expert learning rates.

    Returns:
        The optimiser and the parameter names of each group (in optimiser order).
    """
    groups = parameter_groups(model)
    specs, names = [], []
    for key, lr in (("brain", config.lr_brain), ("expert", config.lr_expert)):
        if groups[key]:
            specs.append({"params": [p for _, p in groups[key]], "lr": lr, "group": key})
            names.append([n for n, _ in groups[key]])
    if not specs:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(
        specs, lr=config.lr_brain, betas=config.adam_betas, eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    return opt, names


# --------------------------------------------------------------------------------------------------
# Runtimes: accelerate (multi-GPU / multi-node, DeepSpeed) or plain torch
# --------------------------------------------------------------------------------------------------
def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CUDA device with bf16 support, ``fp32`` otherwise."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def accelerate_available() -> bool:
    """Whether Hugging Face ``accelerate`` can be imported."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


class TorchRuntime:
    """Single-process, single-device loop with the accelerate-like interface the trainer uses.

    Args:
        precision: ``auto``, ``bf16`` or ``fp32``.
        grad_accum: micro-batches per optimiser step.
    """

    name = "torch"
    is_deepspeed = False

    def __init__(self, precision: str, grad_accum: int) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = resolve_precision(precision, self.device)
        self.grad_accum = grad_accum
        self.num_processes, self.process_index, self.is_main = 1, 0, True
        self.sync_gradients = True
        self._micro = 0

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int):
        """Nothing to wrap."""
        return model, optimizer

    @contextlib.contextmanager
    def accumulate(self, model: torch.nn.Module) -> Iterator[None]:
        """Mark whether this micro-batch ends an optimiser step."""
        self._micro += 1
        self.sync_gradients = self._micro % self.grad_accum == 0
        yield

    def autocast(self):
        """bf16 autocast when configured."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the loss averaged over the accumulated micro-batches."""
        (loss / self.grad_accum).backward()

    def clip_grad_norm_(self, params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Clip in place; returns the total norm before clipping."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The bare model."""
        return model

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The bare model's state dict."""
        return model.state_dict()

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Identity (one process)."""
        return tensor

    def wait(self) -> None:
        """No other process to wait for."""


class AccelerateRuntime(TorchRuntime):
    """The loop under Hugging Face ``accelerate`` (``accelerate launch``: DDP, multi-node, DeepSpeed).

    Args:
        precision: ``auto``, ``bf16`` or ``fp32``; under ``accelerate launch`` with ``auto`` the
            launcher's ``mixed_precision`` decides.
        grad_accum: micro-batches per optimiser step.
        grad_clip: the max gradient norm (written into the DeepSpeed config, which clips itself).
        find_unused_parameters: DDP setting.
    """

    name = "accelerate"

    def __init__(self, precision: str, grad_accum: int, grad_clip: float = 1.0,
                 find_unused_parameters: bool = False) -> None:  # fmt: skip
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        mixed: str | None
        if precision == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION"):
            mixed = None  # the launcher's choice
        else:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            mixed = "bf16" if resolve_precision(precision, device) == "bf16" else "no"
        self.accelerator = Accelerator(
            mixed_precision=mixed,
            gradient_accumulation_steps=grad_accum,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        )
        acc = self.accelerator
        self.device = acc.device
        self.precision = "bf16" if acc.mixed_precision == "bf16" else "fp32"
        self.grad_accum = grad_accum
        self.grad_clip = grad_clip
        self.num_processes, self.process_index = acc.num_processes, acc.process_index
        self.is_main = acc.is_main_process
        self.is_deepspeed = acc.distributed_type.value == "DEEPSPEED"

    @property
    def sync_gradients(self) -> bool:  # type: ignore[override]
        """Whether the current micro-batch ends an optimiser step."""
        return self.accelerator.sync_gradients

    @sync_gradients.setter
    def sync_gradients(self, value: bool) -> None:
        pass  # owned by accelerate

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int):
        """Wrap for DDP / DeepSpeed (the data loader is sharded by the trainer, not by accelerate)."""
        if self.is_deepspeed:
            plugin = self.accelerator.state.deepspeed_plugin
            ds = plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = batch_size
            ds["gradient_accumulation_steps"] = self.grad_accum
            ds["train_batch_size"] = batch_size * self.grad_accum * self.num_processes
            ds["gradient_clipping"] = self.grad_clip
        return self.accelerator.prepare(model, optimizer)

    def accumulate(self, model: torch.nn.Module):  # type: ignore[override]
        """Accelerate's gradient accumulation (no DDP all-reduce until the last micro-batch)."""
        return self.accelerator.accumulate(model)

    def autocast(self):
        """Accelerate's autocast (prepare() already wraps the forward; nesting is harmless)."""
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """Accelerate's backward (scales by the accumulation steps; DeepSpeed's engine step)."""
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor | None:
        """Clip (DeepSpeed clips internally and reports its norm)."""
        return self.accelerator.clip_grad_norm_(params, max_norm)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The bare model."""
        return self.accelerator.unwrap_model(model)

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict (gathered under DeepSpeed); call on every process."""
        return self.accelerator.get_state_dict(model)

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over processes."""
        return self.accelerator.reduce(tensor, reduction="mean")

    def wait(self) -> None:
        """Barrier."""
        self.accelerator.wait_for_everyone()


def make_runtime(config: TrainConfig) -> TorchRuntime:
    """The runtime for ``config.backend`` (``auto``: accelerate when installed)."""
    use_acc = config.backend == "accelerate" or (config.backend == "auto" and accelerate_available())
    if use_acc:
        if not accelerate_available():
            raise ImportError("backend='accelerate' needs Hugging Face accelerate: pip install accelerate")
        return AccelerateRuntime(
            config.precision, config.grad_accum, config.grad_clip, config.find_unused_parameters
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("a multi-process launch needs backend='accelerate' (pip install accelerate)")
    return TorchRuntime(config.precision, config.grad_accum)


# --------------------------------------------------------------------------------------------------
# Pickle-free state helpers
# --------------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def optimizer_state_to_safetensors(
    state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a torch optimiser ``state_dict`` into tensors (safetensors) and scalars (JSON).

    Returns:
        ``(tensors, meta)``: tensors keyed ``state.<param id>.<name>`` (CPU, contiguous) and a JSON-ready
        dict with the param groups and the per-parameter non-tensor values.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = _jsonable(value)
    return tensors, {"param_groups": _jsonable(state["param_groups"]), "scalars": scalars}


def optimizer_state_from_safetensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of :func:`optimizer_state_to_safetensors` (a dict for ``optimizer.load_state_dict``)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def safetensors_dtypes(path: str | Path, prefix: str = "") -> dict[str, torch.dtype]:
    """Dtype of every tensor (under ``prefix``) in a safetensors file, read from its header only."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key.startswith(prefix):
                code = f.get_slice(key).get_dtype()
                if code not in _ST_DTYPES:
                    raise ValueError(f"{path}: tensor {key} has unsupported dtype {code}")
                out[key] = _ST_DTYPES[code]
    return out


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (``checkpoints/latest``, else the highest step)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        path = root / pointer.read_text(encoding="utf-8").strip()
        if (path / TRAINER_STATE_FILE).is_file():
            return path
    done = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE_FILE).is_file())
    return done[-1] if done else None


def read_trainer_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint.

    Raises:
        FileNotFoundError: if the checkpoint has no training state (a model-only checkpoint).
        ValueError: on a wrong format or version.
    """
    path = Path(checkpoint_dir) / TRAINER_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint_dir} has no {TRAINER_STATE_FILE}: it is not a resumable training checkpoint "
            "(start a new run from it with --init instead)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
        raise ValueError(
            f"{path}: not a {STATE_FORMAT} v{STATE_VERSION} file (format={data.get('format')!r}, "
            f"version={data.get('version')!r})"
        )
    return data


# --------------------------------------------------------------------------------------------------
# Checkpoint parts and the left-brain fingerprint
# --------------------------------------------------------------------------------------------------
@dataclass
class CheckpointParts:
    """What a saved model directory needs besides the weights.

    Attributes:
        tokenizer: the right brain's tokenizer.
        normalizers: ``"action"`` and ``"state"`` normalisers (the run's statistics).
        embodiment: the embodiment contract.
        processor_config: the image/prompt processing settings.
        name: checkpoint name recorded in the metadata (default: the step directory name).
    """

    tokenizer: Any
    normalizers: dict[str, Any]
    embodiment: Any
    processor_config: Any
    name: str | None = None


class _Snapshot:
    """Duck-typed model for ``save_checkpoint``: a config and a prepared state dict."""

    def __init__(self, config: Any, state: dict[str, torch.Tensor]) -> None:
        self.config = config
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def left_state_fingerprint(
    state: Mapping[str, torch.Tensor], dtypes: Mapping[str, torch.dtype] | None
) -> str:
    """Fingerprint of the left brain's tensors, each cast to its reference dtype first.

    Args:
        state: a full model state dict.
        dtypes: reference dtype per left key (the initial checkpoint's); None hashes as they are.

    Returns:
        ``"sha256:<hex>"`` as ``model.checkpoint.left_fingerprint`` computes it.
    """
    from twinbrain_ros.model.checkpoint import left_fingerprint

    left = {k: v for k, v in state.items() if k.startswith(LEFT_PREFIX)}
    if dtypes:
        left = {k: (v.to(dtypes[k]) if k in dtypes else v) for k, v in left.items()}
    return left_fingerprint(left, prefix=LEFT_PREFIX)


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainSummary:
    """What a finished ``Trainer.train`` call reports.

    Attributes:
        step: optimiser steps done in total.
        losses: mean loss of every step run in this call.
        steps_per_s: optimiser steps per second in this call (data loading included).
        checkpoint: the last checkpoint written.
        left_fingerprint: the (unchanged) left-brain fingerprint.
    """

    step: int
    losses: list[float] = field(default_factory=list)
    steps_per_s: float = 0.0
    checkpoint: Path | None = None
    left_fingerprint: str = ""


class Trainer:
    """Flow-matching training of a ``TwinBrainModel`` with the left brain frozen.

    Args:
        model: the model (float32 master weights; moved to the runtime's device).
        dataset: the chunk dataset.
        collate_fn: samples -> model batch (a :class:`ChunkCollator`).
        config: the run configuration.
        parts: tokenizer, normalisers, embodiment and processing settings for the saved checkpoints.
        dataset_fingerprint: identity of the training data (recorded; a resume must match).
        left_dtypes: reference dtype per left-brain key (the initial checkpoint's file dtypes): the
            fingerprint is computed and the left brain saved in these dtypes. None: as in the model.
        expected_left_fingerprint: the initial checkpoint's recorded fingerprint; the model's left brain
            must hash to it before training starts.
        runtime: a runtime (default: :func:`make_runtime`).

    Raises:
        LeftBrainModifiedError: if the left brain does not match ``expected_left_fingerprint``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: ChunkDataset,
        collate_fn: Any,
        config: TrainConfig,
        parts: CheckpointParts,
        *,
        dataset_fingerprint: str,
        left_dtypes: Mapping[str, torch.dtype] | None = None,
        expected_left_fingerprint: str | None = None,
        runtime: TorchRuntime | None = None,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.parts = parts
        self.dataset_fingerprint = dataset_fingerprint
        self.left_dtypes = dict(left_dtypes) if left_dtypes else None
        self.runtime = runtime or make_runtime(config)
        rt = self.runtime
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / CHECKPOINTS_DIR

        self.left_initial = left_state_fingerprint(model.state_dict(), self.left_dtypes)
        if expected_left_fingerprint and expected_left_fingerprint != self.left_initial:
            raise LeftBrainModifiedError(
                f"the model's left brain hashes to {self.left_initial} but its checkpoint recorded "
                f"{expected_left_fingerprint}"
            )
        torch.manual_seed(config.seed * 1000 + rt.process_index)  # dropout
        if rt.device.type == "cuda":
            torch.cuda.manual_seed(config.seed * 1000 + rt.process_index)
        model.to(rt.device)
        model.train()
        self.optimizer, self.group_names = build_optimizer(model, config)
        self.schedule = WarmupCosineSchedule(
            self.optimizer, warmup_steps=config.warmup_steps, total_steps=config.max_steps,
            min_lr_ratio=config.min_lr_ratio,
        )  # fmt: skip
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.model, self.prepared_optimizer = rt.prepare(model, self.optimizer, config.batch_size)
        self.ema: WeightAverage | None = None
        if config.ema_decay > 0.0:
            named = [(k, p) for k, p in rt.unwrap(self.model).named_parameters() if p.requires_grad]
            self.ema = WeightAverage(named, config.ema_decay)
        self.loss_generator = torch.Generator(device=rt.device)
        self.loss_generator.manual_seed(config.seed * 1_000_003 + 17 * rt.process_index + 1)
        self.step = 0
        self.micro_step = 0
        self.optimizer_state_restored = True
        self._metrics_file = None

    # -- data --------------------------------------------------------------------------------------
    def _sampler(self) -> ResumableBatchSampler:
        """This process's batch order from the current micro-step (start oversampling, scene pairs)."""
        rt, cfg, src = self.runtime, self.config, self.dataset.source
        repeats = partners = None
        if cfg.start_repeats > 1:
            repeats = episode_start_repeats(src.episode_index, src.fps, cfg.start_seconds, cfg.start_repeats)
        if cfg.scene_group > 1:
            partners = scene_partners(src.episode_index, src.task_index, cfg.scene_group)
        return ResumableBatchSampler(
            len(self.dataset), cfg.batch_size, seed=cfg.seed, rank=rt.process_index,
            world_size=rt.num_processes, start=self.micro_step, repeats=repeats, partners=partners,
        )  # fmt: skip

    def _loader(self) -> Iterator[dict[str, torch.Tensor]]:
        rt, cfg = self.runtime, self.config
        sampler = self._sampler()
        # Own generator: the DataLoader must not draw from the global RNG (dropout) when it starts.
        gen = torch.Generator().manual_seed(cfg.seed)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=self.collate_fn, num_workers=cfg.num_workers,
            pin_memory=rt.device.type == "cuda", generator=gen,
            persistent_workers=cfg.num_workers > 0,
        )  # fmt: skip
        return iter(loader)

    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.runtime.device
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    # -- training ----------------------------------------------------------------------------------
    def _drop_state(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """State dropout: blank the normalised state of a random ``state_dropout`` share of samples.

        Proprioception lets a policy copy the motion it is already in and ignore the camera (the
        "copycat" failure): mid-reach, the arm's pose predicts the next actions, so nothing pushes the
        model to find the object in the image, and from the home pose it does not know where to go.
        Blanked samples (state 0 = the middle of the normalisation range) can only be solved from the
        image and the instruction. Seeded by (seed, micro-step), so a resumed run blanks the same samples.
        """
        p = float(self.config.state_dropout)
        from twinbrain_ros.model import modeling as M

        if p <= 0.0 or M.STATE not in batch:
            return batch
        state = batch[M.STATE]
        gen = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + int(self.micro_step))
        drop = (torch.rand(state.shape[0], generator=gen) < p).to(state.device)
        batch[M.STATE] = torch.where(drop[:, None], torch.zeros_like(state), state)
        return batch

    def train(self, until: int | None = None) -> TrainSummary:
        """Run until ``config.max_steps`` (or ``until``); saves every ``save_every`` steps and at the end.

        Args:
            until: stop after this step (e.g. to hand over to a resume); the schedule still spans
                ``config.max_steps``.

        Returns:
            The summary of this call.

        Raises:
            FloatingPointError: on a non-finite loss.
            LeftBrainModifiedError: if the left brain changed (checked at every save).
        """
        cfg, rt = self.config, self.runtime
        if rt.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.output_dir / TRAIN_CONFIG_FILE, cfg.to_dict())
        summary = TrainSummary(step=self.step, left_fingerprint=self.left_initial)
        stop = cfg.max_steps if until is None else min(cfg.max_steps, until)
        if self.step >= stop:
            return summary
        data = self._loader()
        bar = self._progress_bar()
        t_start = time.perf_counter()
        t_log, steps_since_log = t_start, 0
        start_step = self.step
        last_ckpt = None
        try:
            while self.step < stop:
                loss_sum = torch.zeros((), device=rt.device)
                grad_norm = None
                for _ in range(cfg.grad_accum):
                    batch = self._drop_state(self._to_device(next(data)))
                    self.micro_step += 1
                    with rt.accumulate(self.model):
                        with rt.autocast():
                            loss = self.model(batch, generator=self.loss_generator)
                        rt.backward(loss)
                        loss_sum += loss.detach().float()
                        if rt.sync_gradients:
                            grad_norm = rt.clip_grad_norm_(self.trainable, cfg.grad_clip or math.inf)
                            self.prepared_optimizer.step()
                            self.prepared_optimizer.zero_grad(set_to_none=True)
                            if self.ema is not None:
                                self.ema.update()
                self.schedule.step()
                self.step += 1
                steps_since_log += 1
                step_loss = float(rt.reduce_mean(loss_sum / cfg.grad_accum).item())
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"non-finite loss {step_loss} at step {self.step}")
                summary.losses.append(step_loss)
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == stop:
                    now = time.perf_counter()
                    rate = steps_since_log / max(now - t_log, 1e-9)
                    self._log(step_loss, grad_norm, rate, now - t_start, bar)
                    t_log, steps_since_log = now, 0
                if self.step % cfg.save_every == 0 or self.step == stop:
                    last_ckpt = self.save()
        finally:
            if bar is not None:
                bar.close()
            if self._metrics_file is not None:
                self._metrics_file.close()
                self._metrics_file = None
        elapsed = time.perf_counter() - t_start
        summary.step = self.step
        summary.steps_per_s = (self.step - start_step) / max(elapsed, 1e-9)
        summary.checkpoint = last_ckpt
        return summary

    def _progress_bar(self):
        if not (self.config.progress and self.runtime.is_main):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(
            total=self.config.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
            mininterval=1.0, file=sys.stderr,
        )  # fmt: skip

    def _log(self, loss: float, grad_norm: Any, rate: float, elapsed: float, bar: Any) -> None:
        if not self.runtime.is_main:
            return
        lrs = {f"lr_{g.get('group', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        norm = None if grad_norm is None else float(grad_norm)
        samples = self.config.batch_size * self.config.grad_accum * self.runtime.num_processes
        record = {
            "step": self.step, "loss": loss, "grad_norm": norm, "steps_per_s": rate,
            "samples_per_s": rate * samples, "elapsed_s": elapsed, **lrs,
        }  # fmt: skip
        if self._metrics_file is None:
            self._metrics_file = open(self.output_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lrs.get('lr_brain', 0.0):.2e}", refresh=False)
        else:
            print(
                f"[train] step {self.step}/{self.config.max_steps} loss {loss:.4f} "
                f"grad_norm {norm if norm is None else round(norm, 4)} {rate:.2f} steps/s",
                file=sys.stderr,
            )

    # -- checkpoints -------------------------------------------------------------------------------
    def check_left_brain(self, state: Mapping[str, torch.Tensor] | None = None) -> str:
        """Recompute the left-brain fingerprint and compare it with the initial one.

        Returns:
            The fingerprint.

        Raises:
            LeftBrainModifiedError: if it differs.
        """
        if state is None:
            state = self.runtime.unwrap(self.model).state_dict()
        now = left_state_fingerprint(state, self.left_dtypes)
        if now != self.left_initial:
            raise LeftBrainModifiedError(
                f"the frozen left brain changed during training (step {self.step}): fingerprint "
                f"{now} != initial {self.left_initial}; refusing to save"
            )
        return now

    def save(self) -> Path:
        """Write a complete checkpoint for the current step (all processes must call it).

        Returns:
            The checkpoint directory.

        Raises:
            LeftBrainModifiedError: if the left brain changed (nothing is written).
        """
        from safetensors.torch import save_file

        from twinbrain_ros.model.checkpoint import save_checkpoint

        rt, cfg = self.runtime, self.config
        rt.wait()
        state = rt.state_dict(self.model)
        left_now = self.check_left_brain(state)  # every process checks, so all fail together
        name = f"step-{self.step:08d}"
        final = self.checkpoint_root / name
        staging = self.checkpoint_root / f".{name}.partial"
        if rt.is_main:
            self.checkpoint_root.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
            online = None
            if self.ema is not None:  # the checkpoint's model is the average; the live weights go beside it
                online = {k: state[k].detach().to("cpu").contiguous() for k in self.ema.average}
                state = self.ema.averaged_state(state)
            cpu_state = {}
            for key, value in state.items():
                value = value.detach().to("cpu")
                if self.left_dtypes and key in self.left_dtypes:
                    value = value.to(self.left_dtypes[key])  # the left brain keeps its original dtypes
                cpu_state[key] = value
            model_cfg = rt.unwrap(self.model).config
            meta = {
                "step": str(self.step),
                "dataset_fingerprint": self.dataset_fingerprint,
                "left_fingerprint_initial": self.left_initial,
                "left_frozen": "verified",
                "source": f"twinbrain train (init={cfg.init})",
            }
            save_checkpoint(
                staging, _Snapshot(model_cfg, cpu_state), tokenizer=self.parts.tokenizer,
                normalizers=self.parts.normalizers, embodiment=self.parts.embodiment,
                processor_config=self.parts.processor_config, name=self.parts.name or name,
                metadata=meta, overwrite=True,
            )  # fmt: skip
            if online is not None:
                save_file(online, str(staging / ONLINE_FILE), metadata={"format": "pt"})
            opt_saved = not rt.is_deepspeed
            opt_meta: dict[str, Any] = {}
            if opt_saved:
                tensors, opt_meta = optimizer_state_to_safetensors(self.optimizer.state_dict())
                save_file(tensors, str(staging / OPTIMIZER_FILE), metadata={"format": "pt"})
            else:
                print(
                    "[train] WARNING: DeepSpeed shards the optimiser state; it is not saved (a resume "
                    "restarts the AdamW moments)",
                    file=sys.stderr,
                )
        rt.wait()
        save_file(self._rng_state(), str(staging / RNG_FILE.format(rank=rt.process_index)))
        rt.wait()
        if rt.is_main:
            trainer_state = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "step": self.step,
                "micro_step": self.micro_step,
                "samples_seen": self.micro_step * cfg.batch_size * rt.num_processes,
                "dataset_fingerprint": self.dataset_fingerprint,
                "left_fingerprint_initial": self.left_initial,
                "left_fingerprint": left_now,
                "left_brain_identical": left_now == self.left_initial,
                "train_config": cfg.to_dict(),
                "world_size": rt.num_processes,
                "backend": rt.name,
                "precision": rt.precision,
                "deepspeed": rt.is_deepspeed,
                "schedule": self.schedule.state_dict(),
                "optimizer": {
                    "saved": opt_saved,
                    "file": OPTIMIZER_FILE if opt_saved else None,
                    "group_names": self.group_names,
                    **opt_meta,
                },
                "rng_files": [RNG_FILE.format(rank=r) for r in range(rt.num_processes)],
                "ema": None if self.ema is None else {
                    "decay": self.ema.decay, "updates": self.ema.updates, "online_file": ONLINE_FILE,
                    "model_file_holds": "the averaged weights",
                },
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "versions": _versions(),
            }
            _write_json(staging / TRAINER_STATE_FILE, trainer_state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            _write_text_atomic(self.checkpoint_root / LATEST_FILE, name + "\n")
            self._prune()
        rt.wait()
        return final

    def _prune(self) -> None:
        keep = self.config.keep_last
        if keep <= 0:
            return
        done = sorted(p for p in self.checkpoint_root.glob("step-*") if (p / TRAINER_STATE_FILE).is_file())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch_cpu": torch.get_rng_state(), "loss_generator": self.loss_generator.get_state()}
        if self.runtime.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.runtime.device)
        return {k: v.contiguous() for k, v in state.items()}

    def resume(self, checkpoint_dir: str | Path) -> None:
        """Continue the run saved in ``checkpoint_dir``: step, optimiser, schedule, RNG, data position.

        The model weights must already be the checkpoint's (``build_trainer`` loads them).

        Raises:
            DatasetMismatchError: if the checkpoint was trained on other data.
            ValueError: if a run-defining setting differs, or the state is unreadable.
            LeftBrainModifiedError: if the left brain differs from the run's initial one.
        """
        from safetensors.torch import load_file

        path = Path(checkpoint_dir)
        state = read_trainer_state(path)
        if state["dataset_fingerprint"] != self.dataset_fingerprint:
            raise DatasetMismatchError(
                f"refusing to resume {path}: it was trained on dataset {state['dataset_fingerprint']} but "
                f"the dataset given now is {self.dataset_fingerprint}. Resume with the same dataset, or "
                f"start a new run from this checkpoint with --init {path} (fresh optimiser and schedule)."
            )
        saved_cfg = TrainConfig.from_dict(state["train_config"])
        diffs = saved_cfg.run_differences(self.config)
        if diffs:
            raise ValueError(
                f"refusing to resume {path}: run settings differ (saved vs now): "
                + "; ".join(diffs)
                + f". Resume with the saved settings or start a new run with --init {path}."
            )
        if state["left_fingerprint_initial"] != self.left_initial:
            raise LeftBrainModifiedError(
                f"{path}: the run's initial left brain was {state['left_fingerprint_initial']} but the "
                f"loaded model's left brain is {self.left_initial}"
            )
        if state.get("world_size") != self.runtime.num_processes:
            print(
                f"[train] WARNING: resuming a {state.get('world_size')}-process run on "
                f"{self.runtime.num_processes} processes: the data order and RNG streams differ from an "
                "uninterrupted run",
                file=sys.stderr,
            )
        opt = state["optimizer"]
        if opt.get("saved") and (path / OPTIMIZER_FILE).is_file() and not self.runtime.is_deepspeed:
            if opt.get("group_names") != self.group_names:
                raise ValueError(f"{path}: the optimiser's parameter groups differ from the model's")
            tensors = load_file(str(path / OPTIMIZER_FILE))
            self.optimizer.load_state_dict(optimizer_state_from_safetensors(tensors, opt))
            self.optimizer_state_restored = True
        else:
            self.optimizer_state_restored = False
            print(f"[train] WARNING: {path} has no optimiser state; AdamW moments restart", file=sys.stderr)
        if self.ema is not None:
            self._resume_average(path, state)
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        self.micro_step = int(state["micro_step"])
        rng_path = path / RNG_FILE.format(rank=self.runtime.process_index)
        if rng_path.is_file():
            rng = load_file(str(rng_path))
            torch.set_rng_state(rng["torch_cpu"])
            self.loss_generator.set_state(rng["loss_generator"])
            if "cuda" in rng and self.runtime.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.runtime.device)
        else:
            print(f"[train] WARNING: no {rng_path.name}; RNG streams restart from the seed", file=sys.stderr)

    def _resume_average(self, path: Path, state: Mapping[str, Any]) -> None:
        """Restore the live weights beside the checkpoint's average.

        ``build_trainer`` loaded the checkpoint's ``model.safetensors`` (the average) into the model
        before the ``WeightAverage`` was made, so the average already holds it; only the live weights
        and the update count come from the files.
        """
        from safetensors.torch import load_file

        info = state.get("ema")
        online_path = path / ONLINE_FILE
        if not info or not online_path.is_file():
            raise ValueError(
                f"{path}: the run keeps a weight average but the checkpoint has no {ONLINE_FILE}"
            )
        online = load_file(str(online_path))
        missing = sorted(set(self.ema.params) - set(online))
        if missing:
            raise ValueError(f"{online_path} lacks trainable parameters: {missing[:5]}")
        with torch.no_grad():
            for key, param in self.ema.params.items():
                param.copy_(online[key].to(dtype=param.dtype, device=param.device))
        self.ema.updates = int(info["updates"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for mod in ("transformers", "accelerate", "deepspeed"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            continue
    return out


# --------------------------------------------------------------------------------------------------
# Setup from checkpoint + dataset
# --------------------------------------------------------------------------------------------------
def _processor_config(base: Any, image_size: int | None) -> Any:
    if image_size is None:
        return base
    pixels = image_size * image_size
    return dataclasses.replace(
        base, image_height=image_size, image_width=image_size, min_pixels=min(base.min_pixels, pixels),
        max_pixels=max(base.max_pixels, pixels),
    )  # fmt: skip


def _contract_of_data(source: FrameSource, init_emb: Any) -> Any:
    """The contract a new run's checkpoint is for: the one the data was recorded with, if it says.

    A dataset converted by ``twinbrain convert`` records its contract (``meta/twinbrain.json``). When
    it names the same joints in the same order as the initial checkpoint's, the trained checkpoint
    carries the data's contract (cameras, rates, chunk timing), so that a policy node on that robot
    or simulator accepts it; otherwise the initial checkpoint's contract stays and
    :func:`check_source` reports the mismatch.
    """
    from twinbrain_ros.core.embodiment import parse_embodiment
    from twinbrain_ros.core.validation import ValidationError

    data = getattr(source, "embodiment", None)
    if not isinstance(data, dict):
        return init_emb
    try:
        emb = parse_embodiment(data, source=f"{getattr(source, 'root', 'dataset')} (meta/twinbrain.json)")
    except ValidationError:
        return init_emb
    if tuple(emb.joint_names) != tuple(init_emb.joint_names):
        return init_emb
    return emb


def build_trainer(
    config: TrainConfig,
    source: FrameSource,
    *,
    resume: str | Path | None = None,
    runtime: TorchRuntime | None = None,
) -> Trainer:
    """A trainer for ``source`` starting from ``config.init``, or continuing the run in ``resume``.

    New run: the model, tokenizer, contract and processing come from the ``init`` checkpoint; the
    statistics are computed from the dataset (or read from ``config.norm_stats``). Resume: everything
    comes from the resume checkpoint, whose statistics are kept.

    Args:
        config: the run configuration.
        source: the dataset.
        resume: a training checkpoint directory to continue.
        runtime: a runtime (default: :func:`make_runtime`).

    Returns:
        The trainer (``resume`` already applied).

    Raises:
        ValidationError: listing every mismatch between the dataset and the model's contract.
        CheckpointError: if the checkpoint is invalid.
        DatasetMismatchError: if ``resume`` was trained on other data.
    """
    from twinbrain_ros.core.normalize import load_normalizers
    from twinbrain_ros.core.validation import ValidationError
    from twinbrain_ros.model.checkpoint import META_FINGERPRINT, MODEL_FILE, load_checkpoint
    from twinbrain_ros.model.processing import build_processor

    start = resume if resume is not None else config.init
    if start is None:
        raise ValueError("a new run needs config.init (a checkpoint directory from twinbrain init/make-tiny)")
    ckpt = load_checkpoint(start, device="cpu", dtype=torch.float32)
    emb, model_cfg = ckpt.embodiment, ckpt.config
    if resume is None:
        emb = _contract_of_data(source, emb)
    cameras = dict(config.cameras) if config.cameras else {c: c for c in emb.camera_names}
    extra = sorted(set(cameras) - set(emb.camera_names))
    lacking = sorted(set(emb.camera_names) - set(cameras))
    problems = []
    if extra or lacking:
        problems.append(
            f"camera map {cameras} must cover exactly the contract cameras {list(emb.camera_names)}"
        )
    problems += check_source(
        source, joint_names=emb.joint_names, action_dim=model_cfg.action_expert.action_dim, cameras=cameras
    )
    if config.scene_group > 1 and not problems:
        try:
            scene_partners(source.episode_index, source.task_index, config.scene_group)
        except ValueError as err:
            problems.append(
                f"--scene-group {config.scene_group}: {err} (a converter that dropped single episodes, e.g. "
                f"--only-success after a failed one, breaks the pairs: convert with --scene-group "
                f"{config.scene_group} to keep or drop each scene whole)"
            )
    if problems:
        raise ValidationError(problems)
    binary = gripper_dims(emb.joint_names) if config.binary_gripper else []
    dataset = ChunkDataset(
        source, model_cfg.action_expert.horizon, step_dt=emb.action.step_dt,
        cameras={c: cameras[c] for c in emb.camera_names}, binary_action_dims=binary,
        binary_threshold=config.binary_threshold,
    )  # fmt: skip
    if resume is not None:
        normalizers = ckpt.normalizers
        processor_config = ckpt.processor_config
    else:
        if config.norm_stats:
            normalizers = load_normalizers(config.norm_stats, default_modes={
                "action": config.action_mode, "state": config.state_mode})  # fmt: skip
        else:
            normalizers = compute_normalizers(
                dataset, action_mode=config.action_mode, state_mode=config.state_mode
            )
        processor_config = _processor_config(ckpt.processor_config, config.image_size)
    processor = build_processor(model_cfg, ckpt.tokenizer, normalizers, emb.camera_names, processor_config)
    collate = ChunkCollator(processor, normalizers["action"], emb.joint_names)
    parts = CheckpointParts(
        tokenizer=ckpt.tokenizer, normalizers=dict(normalizers), embodiment=emb,
        processor_config=processor_config,
    )  # fmt: skip
    trainer = Trainer(
        ckpt.model, dataset, collate, config, parts, dataset_fingerprint=dataset_fingerprint(source),
        left_dtypes=safetensors_dtypes(Path(start) / MODEL_FILE, prefix=LEFT_PREFIX),
        expected_left_fingerprint=ckpt.metadata.get(META_FINGERPRINT), runtime=runtime,
    )  # fmt: skip
    if resume is not None:
        trainer.resume(resume)
    return trainer
