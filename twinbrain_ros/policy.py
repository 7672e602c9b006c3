# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The policy: the one runtime entry point from a numpy observation to a time-indexed action chunk.

``Policy.infer(Observation) -> ActionChunk`` validates the observation once (one ``ValidationError``
listing every problem), runs the processing pipeline (``model/processing.py``), the backend runner and
the un-normalisation, and attaches per-stage timing (``timing_ms``: preprocess, left, right, expert,
postprocess, total). Joint names, step period and horizon come from the checkpoint's embodiment
contract; ``obs_stamp = observation.stamp`` and ``t0 = obs_stamp - chunk_lead_s`` (the checkpoint's
``processor.json`` value unless overridden at load).

The backend is a strategy object chosen at load time (``RUNNERS``: the eager ``TorchRunner`` here; the
ONNX Runtime / TensorRT / static-graph runners of ``twinbrain_ros.export.runners`` are resolved by name,
lazily): ``infer`` has no backend branches. Every runner has the same protocol (``infer(batch, noise)``,
``last_timings``, ``close``). Noise is drawn here, in numpy, and handed to the runner, so a seed gives
the same chunk on every backend and device.

torch is imported lazily (inside the runner), so importing this module costs nothing on a machine that
runs only the controller; nodes reach the model only through ``Policy.load`` / ``infer``.

Usage:
    policy = Policy.load("models/demo-tiny", device="cpu")
    chunk = policy.infer(observation)                 # ActionChunk, positions (H, J) float64
    chunk = policy.infer(observation, seed=3)         # deterministic
    chunk.timing_ms                                   # {"preprocess": .., "left": .., ...}
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from twinbrain_ros.core.embodiment import Embodiment
from twinbrain_ros.core.types import ActionChunk, Observation
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.policies.base import PolicyBackend

TIMING_KEYS = ("preprocess", "left", "right", "expert", "postprocess", "total")


class Runner(Protocol):
    """A backend: runs the model on a preprocessed numpy batch (same protocol as ``export/runners.py``).

    Attributes:
        name: backend name (``torch``, ``onnxruntime-cpu``, ``tensorrt``, ...).
        last_timings: seconds per stage of the last call (``left``, ``right``, ``expert``; exported
            runners may add ``host`` and ``vision``).
    """

    name: str
    last_timings: dict[str, float]

    def infer(self, batch: Mapping[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """The normalised chunk (B, T, A) float32 for one model batch and (B, T, A) starting noise."""
        ...

    def close(self) -> None:
        """Release the backend's resources (GPU memory)."""
        ...


class TorchRunner:
    """The eager PyTorch backend: left brain, right brain (AsyMoT), action expert, each timed.

    Args:
        model: a ``TwinBrainModel`` in eval mode, on ``device``.
        device: where the model lives (``cpu``, ``cuda``, ``cuda:1``).
    """

    name = "torch"

    def __init__(self, model: Any, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.model = model.eval()
        self.device = str(device)
        self._cuda = torch.device(self.device).type == "cuda"
        self.last_timings: dict[str, float] = {}

    def _now(self) -> float:
        # Kernels are asynchronous on a GPU: synchronise so each stage's time is its own.
        if self._cuda:
            self._torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def infer(self, batch: Mapping[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """Run the model.

        Args:
            batch: numpy arrays under ``modeling``'s keys (from the processor).
            noise: (B, T, A) float32 starting noise of the flow (drawn by the expert when None).

        Returns:
            (B, T, A) float32 normalised chunk; ``last_timings`` holds seconds per stage.
        """
        from twinbrain_ros.model import modeling as M

        torch, model = self._torch, self.model
        cfg = model.config
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in batch.items()}
        pixels, grid = t.get(M.PIXEL_VALUES), t.get(M.IMAGE_GRID_THW)
        expert = model.action_expert
        eps = (
            None
            if noise is None
            else torch.from_numpy(np.ascontiguousarray(noise, np.float32)).to(self.device)
        )
        with torch.inference_mode():
            t0 = self._now()
            left = model.brains.run_left(
                t[M.LEFT_INPUT_IDS], t[M.LEFT_ATTENTION_MASK], pixels, grid,
                mm_token_type_ids=t.get(M.LEFT_MM_TOKEN_TYPE_IDS),
            )  # fmt: skip
            t1 = self._now()
            state_token = None
            if model.state_encoder is not None:
                state_token = model.state_encoder(t[M.STATE], t.get(M.STATE_MASK))  # (B, 1, H)
            queries = model.brains.run_right(
                t[M.RIGHT_INPUT_IDS], t[M.RIGHT_ATTENTION_MASK], pixels, grid, left,
                state_token=state_token, mm_token_type_ids=t.get(M.RIGHT_MM_TOKEN_TYPE_IDS),
            )  # fmt: skip  # (B, K, H)
            t2 = self._now()
            # The processor already zero-padded the state to max_state_dim and zeroed the padding.
            expert_state = t[M.STATE].to(expert.dtype) if cfg.state_to_expert else None
            actions = expert.sample(queries.to(expert.dtype), state=expert_state, noise=eps)  # (B, T, A)
            t3 = self._now()
        self.last_timings = {"left": t1 - t0, "right": t2 - t1, "expert": t3 - t2}
        return actions.float().cpu().numpy()

    def close(self) -> None:
        """Drop the model (and free cached GPU memory)."""
        self.model = None
        if self._cuda:
            self._torch.cuda.empty_cache()


def _load_torch(model_dir: str | Path, *, device: str, dtype: Any, export_dir: Any) -> tuple[Any, Runner]:
    from twinbrain_ros.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model_dir, device=device, dtype=dtype)
    return ckpt, TorchRunner(ckpt.model, device)


def _default_export_dir(model_dir: str | Path) -> Path:
    """The only export under ``<model_dir>/export/`` (several: the caller must choose one)."""
    found = sorted(p.parent for p in Path(model_dir, "export").glob("*/export.json"))
    if len(found) != 1:
        raise ValueError(
            f"{model_dir}/export holds {len(found)} exports ({[p.name for p in found]}); pass export_dir"
        )
    return found[0]


def _load_exported(backend: str):
    """A loader for a backend of ``twinbrain_ros.export.runners`` (ONNX Runtime, TensorRT, graphs)."""

    def load(model_dir: str | Path, *, device: str, dtype: Any, export_dir: Any) -> tuple[Any, Runner]:
        from twinbrain_ros.export.runners import load_runner
        from twinbrain_ros.model.checkpoint import load_checkpoint

        # Only the static-graph PyTorch runner needs the weights; the others read the exported graphs.
        needs_model = backend == "torch-graphs"
        ckpt = load_checkpoint(model_dir, device=device, dtype=dtype, load_weights=needs_model)
        runner = load_runner(
            backend, export_dir=export_dir or _default_export_dir(model_dir), model=ckpt.model, device=device
        )
        return ckpt, runner

    return load


def _exported_backends() -> tuple[str, ...]:
    try:
        from twinbrain_ros.export.runners import BACKENDS
    except ImportError:  # the export extra (onnx, onnxruntime) is optional
        return ()
    return tuple(b for b in BACKENDS if b != "torch")


# Backend name -> loader(model_dir, device=, dtype=, export_dir=) -> (checkpoint, runner). The exported
# backends (ONNX Runtime, TensorRT, static graphs) are resolved lazily from twinbrain_ros.export.
RUNNERS: dict[str, Any] = {"torch": _load_torch}


def fake_observation(
    embodiment: Embodiment, *, seed: int = 0, instruction: str = "pick up the red cube", stamp: float = 0.0
) -> Observation:
    """A valid random observation for an embodiment (warm-up, tests, benchmarks).

    Images have the contract's resolution; the state lies inside the joint limits.
    """
    rng = np.random.default_rng(seed)
    images = {
        c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in embodiment.cameras
    }
    lo, hi = embodiment.limits.lower, embodiment.limits.upper
    state = lo + (hi - lo) * rng.uniform(0.2, 0.8, size=lo.shape)
    return Observation(
        images=images,
        state=state,
        joint_names=embodiment.joint_names,
        instruction=instruction,
        stamp=stamp,
        image_stamps={c.name: stamp for c in embodiment.cameras},
    )


class Policy(PolicyBackend):
    """A loaded TwinBrain policy: observation in, time-indexed chunk of joint targets out.

    Implements the node-facing :class:`~twinbrain_ros.policies.base.PolicyBackend` (``model_id``,
    ``joint_names``, ``camera_names``, ``horizon``, ``step_dt``, ``infer``, ``reset``). Build it with
    :meth:`load` (from a checkpoint directory) or :meth:`from_model` (in memory).

    Attributes:
        embodiment: the contract the model was trained for.
        action_dim: columns of the model's chunk (= joints).
        runner: the backend strategy.
        processor: the processing pipeline.
        seed: seed of the default noise stream.
    """

    def __init__(
        self,
        *,
        model_id: str,
        embodiment: Embodiment,
        horizon: int,
        action_dim: int,
        processor: Any,
        runner: Runner,
        seed: int = 0,
        chunk_lead_s: float = 0.0,
    ) -> None:
        self._model_id = str(model_id)
        self.embodiment = embodiment
        self._joint_names = tuple(embodiment.joint_names)
        self._camera_names = tuple(embodiment.camera_names)
        self._horizon = int(horizon)
        self.action_dim = int(action_dim)
        self._step_dt = float(embodiment.action.step_dt)
        lead = chunk_lead_s
        span = (self._horizon - 1) * self._step_dt
        if isinstance(lead, bool) or not isinstance(lead, int | float) or not 0.0 <= lead < span:
            raise ValueError(
                f"chunk_lead_s must be in [0, {span:.3f}) s (less than the chunk's span), got {lead!r}"
            )
        self._chunk_lead_s = float(lead)
        self.processor = processor
        self.runner = runner
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._chunk_id = 0

    # -- the PolicyBackend interface ----------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The checkpoint's name (goes into every chunk)."""
        return self._model_id

    @property
    def joint_names(self) -> tuple[str, ...]:
        """The chunk's columns and the state's order (the checkpoint's contract)."""
        return self._joint_names

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The cameras the model reads, in its view order."""
        return self._camera_names

    @property
    def horizon(self) -> int:
        """Steps per chunk."""
        return self._horizon

    @property
    def step_dt(self) -> float:
        """Seconds between chunk steps (the contract's ``action.step_dt``)."""
        return self._step_dt

    @property
    def chunk_lead_s(self) -> float:
        """Step ``k`` of a chunk is due at ``observation.stamp + k * step_dt - chunk_lead_s``."""
        return self._chunk_lead_s

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str = "cpu",
        backend: str = "torch",
        dtype: Any = None,
        seed: int = 0,
        export_dir: str | Path | None = None,
        num_threads: int = 0,
        chunk_lead_s: float | None = None,
    ) -> Policy:
        """Load a checkpoint directory with the chosen backend.

        Args:
            model_dir: ``models/<name>``.
            device: ``cpu`` or ``cuda[:i]``.
            backend: ``torch`` (eager, ``TorchRunner``) or an exported backend of
                ``twinbrain_ros.export.runners`` (``onnxruntime``, ``tensorrt``, ...).
            dtype: the brains' dtype (None: float32 on CPU, bfloat16 on GPU; names like ``bf16`` work).
            seed: seed of the noise drawn when ``infer`` gets neither a seed nor noise.
            export_dir: the export to run for exported backends (default: the only one under
                ``<model_dir>/export/``).
            num_threads: CPU threads for torch's intra-op pool (0 = torch's default, one per core).
                On a small CPU shared with a simulator and a 200 Hz controller, fewer threads than
                cores avoid oversubscription and cut the latency tail.
            chunk_lead_s: override of the checkpoint's ``processor.json`` ``chunk_lead_s`` (None:
                keep it); see :attr:`chunk_lead_s`.

        Returns:
            The policy.

        Raises:
            ValueError: for an unknown backend or a chunk lead outside [0, chunk span).
            twinbrain_ros.model.checkpoint.CheckpointError: listing every problem of the checkpoint.
        """
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        if num_threads:
            import torch

            torch.set_num_threads(int(num_threads))
        loader = RUNNERS.get(backend)
        if loader is None:
            exported = _exported_backends()
            if backend not in exported:
                raise ValueError(f"unknown backend {backend!r}; available: {sorted({*RUNNERS, *exported})}")
            loader = _load_exported(backend)
        from twinbrain_ros.model.processing import build_processor

        ckpt, runner = loader(model_dir, device=device, dtype=dtype, export_dir=export_dir)
        processor = build_processor(
            ckpt.config, ckpt.tokenizer, ckpt.normalizers, ckpt.embodiment.camera_names, ckpt.processor_config
        )
        expert = ckpt.config.action_expert
        return cls(
            model_id=ckpt.name, embodiment=ckpt.embodiment, horizon=expert.horizon,
            action_dim=expert.action_dim, processor=processor, runner=runner, seed=seed,
            chunk_lead_s=ckpt.processor_config.chunk_lead_s if chunk_lead_s is None else chunk_lead_s,
        )  # fmt: skip

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        tokenizer: Any,
        normalizers: Mapping[str, Any],
        embodiment: Embodiment,
        processor_config: Any = None,
        device: str = "cpu",
        model_id: str = "in-memory",
        seed: int = 0,
    ) -> Policy:
        """A torch policy around an in-memory model (benchmarks, training-time evaluation)."""
        from twinbrain_ros.model.processing import build_processor

        processor = build_processor(
            model.config, tokenizer, normalizers, embodiment.camera_names, processor_config
        )
        expert = model.config.action_expert
        return cls(
            model_id=model_id, embodiment=embodiment, horizon=expert.horizon, action_dim=expert.action_dim,
            processor=processor, runner=TorchRunner(model, device), seed=seed,
            chunk_lead_s=getattr(processor_config, "chunk_lead_s", 0.0),
        )  # fmt: skip

    # -- validation --------------------------------------------------------------------------------
    def check_observation(self, obs: Any) -> None:
        """Validate an observation against the contract; raise ONE error listing every problem.

        Raises:
            ValidationError: naming each missing camera, wrong image shape or dtype, wrong or
                non-finite state, joint-order mismatch, bad instruction or stamp.
        """
        if not isinstance(obs, Observation):
            raise ValidationError([f"expected an Observation, got {type(obs).__name__}"])
        problems: list[str] = []
        images = obs.images if isinstance(obs.images, Mapping) else None
        if images is None:
            problems.append(f"images must be a mapping camera -> array, got {type(obs.images).__name__}")
        for cam in self.embodiment.cameras:
            if images is None:
                break
            if cam.name not in images:
                problems.append(f"missing camera '{cam.name}' (expected cameras {list(self.camera_names)})")
                continue
            img = images[cam.name]
            want = (cam.height, cam.width, 3)
            if not isinstance(img, np.ndarray):
                problems.append(f"image '{cam.name}' must be a numpy array, got {type(img).__name__}")
                continue
            if img.shape != want:
                problems.append(f"image '{cam.name}' has shape {img.shape}, expected {want} (H, W, RGB)")
            if img.dtype != np.uint8:
                problems.append(f"image '{cam.name}' has dtype {img.dtype}, expected uint8")
        problems.extend(self._state_problems(obs))
        if tuple(obs.joint_names) != self.joint_names:
            problems.append(
                f"joint_names {list(obs.joint_names)} differ from the contract's {list(self.joint_names)}"
            )
        if not isinstance(obs.instruction, str) or not obs.instruction.strip():
            problems.append(f"instruction must be a non-empty string, got {obs.instruction!r}")
        else:
            reserved = [t for t in getattr(self.processor, "reserved_tokens", ()) if t in obs.instruction]
            if reserved:
                problems.append(f"instruction contains reserved special tokens {reserved}")
        if (
            not isinstance(obs.stamp, int | float)
            or isinstance(obs.stamp, bool)
            or not math.isfinite(obs.stamp)
        ):
            problems.append(f"stamp must be a finite number of seconds, got {obs.stamp!r}")
        if problems:
            raise ValidationError(problems)

    def _state_problems(self, obs: Observation) -> list[str]:
        try:
            state = np.asarray(obs.state, dtype=np.float64)
        except (TypeError, ValueError):
            return [f"state must be numeric, got {type(obs.state).__name__}"]
        problems = []
        n = len(self.joint_names)
        if state.shape != (n,):
            problems.append(
                f"state has shape {state.shape}, expected ({n},) for joints {list(self.joint_names)}"
            )
        bad = np.flatnonzero(~np.isfinite(state.reshape(-1)))
        if bad.size:
            problems.append(f"state has non-finite values at indices {bad.tolist()}")
        return problems

    # -- inference ---------------------------------------------------------------------------------
    def _noise(self, seed: int | None, noise: Any) -> np.ndarray:
        shape = (1, self.horizon, self.action_dim)
        if noise is not None:
            arr = np.asarray(noise, dtype=np.float32)
            if arr.shape == shape[1:]:
                arr = arr[None]  # (T, A) -> (1, T, A)
            if arr.shape != shape or not np.all(np.isfinite(arr)):
                raise ValueError(f"noise must be finite with shape {shape[1:]} or {shape}, got {arr.shape}")
            return arr
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        return rng.standard_normal(shape, dtype=np.float32)

    def infer(self, observation: Observation, *, seed: int | None = None, noise: Any = None) -> ActionChunk:
        """Compute an action chunk for one observation.

        Args:
            observation: images (contract cameras), state (contract joint order), instruction, stamp.
            seed: seed of the flow's starting noise (same seed, same observation -> same chunk).
            noise: explicit (T, A) or (1, T, A) starting noise (overrides ``seed``).

        Returns:
            The chunk: positions (H, J) float64 joint targets, ``obs_stamp = observation.stamp``,
            ``t0 = obs_stamp - chunk_lead_s``,
            ``timing_ms`` with preprocess, left, right, expert, postprocess and total.

        Raises:
            ValidationError: listing every problem of the observation.
            ValueError: for badly shaped noise.
        """
        start = time.perf_counter()
        self.check_observation(observation)
        eps = self._noise(seed, noise)
        batch = self.processor.preprocess([observation])
        t_pre = time.perf_counter()
        normalised = self.runner.infer(batch, eps)
        t_run = time.perf_counter()
        positions = self.processor.postprocess(normalised)[0]  # (B, T, A) -> (T, A)
        end = time.perf_counter()
        timing = {
            "preprocess": (t_pre - start) * 1e3,
            **{stage: sec * 1e3 for stage, sec in self.runner.last_timings.items()},
            "postprocess": (end - t_run) * 1e3,
            "total": (end - start) * 1e3,
        }
        self._chunk_id += 1
        return ActionChunk(
            joint_names=self.joint_names,
            positions=np.ascontiguousarray(positions, dtype=np.float64),
            step_dt=self.step_dt,
            t0=float(observation.stamp) - self._chunk_lead_s,
            obs_stamp=float(observation.stamp),
            chunk_id=self._chunk_id,
            inference_ms=timing["total"],
            model_id=self.model_id,
            timing_ms=timing,
        )

    def warmup(self, iterations: int = 2) -> list[float]:
        """Run a few inferences on a fake observation (first calls pay lazy initialisation); ms each."""
        obs = fake_observation(self.embodiment)
        return [self.infer(obs, seed=0).timing_ms["total"] for _ in range(iterations)]

    def reset(self) -> None:
        """Start a new episode: the noise stream restarts from the load-time seed."""
        self._rng = np.random.default_rng(self.seed)

    def close(self) -> None:
        """Release the backend (e.g. in a lifecycle node's ``on_cleanup``)."""
        self.runner.close()
