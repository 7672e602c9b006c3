# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``scripted_sine``: a deterministic wiring-test policy. It is not a model and learns nothing.

Each joint follows a sine of ABSOLUTE time around the middle of its limits::

    q_j(t) = c_j + A_j * sin(2*pi*f*t + phi_j)

with ``c_j`` the centre of joint ``j``'s limits and ``A_j`` the largest amplitude that keeps the
motion inside the limits and under a fraction of the contract's velocity and acceleration limits.
Because the target is a function of time only (not of the observation), two chunks computed from
different observations agree wherever they overlap, so chunk seams, the controller's splicing and
the node's timing can be tested exactly. The observation is still validated and its stamp is the
chunk's ``t0``. A simulated latency (sleep, or a CPU-burning busy wait) exercises the scheduler.

Usage:
    policy = ScriptedSinePolicy(load_embodiment("so101"), frequency_hz=0.2, simulated_latency_s=0.05)
    chunk = policy.infer(obs)      # chunk.positions[k] == policy.positions_at(obs.stamp + k*dt)
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from twinbrain_ros.core.embodiment import Embodiment
from twinbrain_ros.core.types import ActionChunk, Observation
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.policies.base import PolicyBackend


class ScriptedSinePolicy(PolicyBackend):
    """Joint targets that are sines of absolute time, within the contract's limits.

    Args:
        embodiment: the contract (joint names and limits, cameras, default horizon and step).
        frequency_hz: sine frequency (> 0).
        amplitude: fraction (0-1] of each joint's half range used as amplitude, before the
            velocity and acceleration caps.
        limit_fraction: fraction (0-1] of the velocity and acceleration limits the motion may use.
        seed: selects the per-joint phases (deterministic).
        simulated_latency_s: extra time each :meth:`infer` takes (>= 0), to exercise scheduling.
        latency_busy: spend the simulated latency busy-waiting (burning one CPU core, like a model
            on the CPU) instead of sleeping.
        horizon: steps per chunk (default: the contract's ``action.horizon``).
        step_dt: seconds between steps (default: the contract's ``action.step_dt``).
        camera_names: cameras to require in observations (default: all contract cameras).

    Raises:
        ValueError: naming every out-of-range argument.
    """

    MODEL_ID = "scripted_sine"

    def __init__(
        self,
        embodiment: Embodiment,
        *,
        frequency_hz: float = 0.2,
        amplitude: float = 0.3,
        limit_fraction: float = 0.5,
        seed: int = 0,
        simulated_latency_s: float = 0.0,
        latency_busy: bool = False,
        horizon: int | None = None,
        step_dt: float | None = None,
        camera_names: Sequence[str] | None = None,
    ) -> None:
        horizon = embodiment.action.horizon if horizon is None else horizon
        step_dt = embodiment.action.step_dt if step_dt is None else step_dt
        cams = tuple(embodiment.camera_names if camera_names is None else camera_names)
        problems = []
        if not (math.isfinite(frequency_hz) and frequency_hz > 0):
            problems.append(f"frequency_hz must be > 0, got {frequency_hz}")
        if not (0 < amplitude <= 1):
            problems.append(f"amplitude must be in (0, 1], got {amplitude}")
        if not (0 < limit_fraction <= 1):
            problems.append(f"limit_fraction must be in (0, 1], got {limit_fraction}")
        if not (math.isfinite(simulated_latency_s) and simulated_latency_s >= 0):
            problems.append(f"simulated_latency_s must be >= 0, got {simulated_latency_s}")
        if not (isinstance(horizon, int) and horizon >= 1):
            problems.append(f"horizon must be a positive integer, got {horizon!r}")
        if not (math.isfinite(step_dt) and step_dt > 0):
            problems.append(f"step_dt must be > 0, got {step_dt}")
        unknown = [c for c in cams if c not in embodiment.camera_names]
        if unknown:
            problems.append(f"cameras {unknown} are not in the contract ({list(embodiment.camera_names)})")
        if problems:
            raise ValueError("ScriptedSinePolicy: " + "; ".join(problems))
        self._emb = embodiment
        self._horizon = int(horizon)
        self._step_dt = float(step_dt)
        self._cams = cams
        self.frequency_hz = float(frequency_hz)
        self.simulated_latency_s = float(simulated_latency_s)
        self.latency_busy = bool(latency_busy)
        lim = embodiment.limits
        w = 2.0 * math.pi * self.frequency_hz
        self.centre = 0.5 * (lim.lower + lim.upper)
        # Largest amplitude within the position range, and with peak velocity A*w and peak
        # acceleration A*w^2 under the allowed fraction of the limits.
        self.amplitude = np.minimum.reduce(
            [
                amplitude * 0.5 * (lim.upper - lim.lower),
                limit_fraction * lim.max_velocity / w,
                limit_fraction * lim.max_acceleration / (w * w),
            ]
        )
        self.phase = np.random.default_rng(seed).uniform(0.0, 2.0 * math.pi, embodiment.num_joints)
        self._omega = w
        self._next_id = 1

    @property
    def model_id(self) -> str:
        """``scripted_sine``."""
        return self.MODEL_ID

    @property
    def joint_names(self) -> tuple[str, ...]:
        """The contract's joint order."""
        return self._emb.joint_names

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Cameras required in every observation."""
        return self._cams

    @property
    def horizon(self) -> int:
        """Steps per chunk."""
        return self._horizon

    @property
    def step_dt(self) -> float:
        """Seconds between steps."""
        return self._step_dt

    def positions_at(self, t: np.ndarray | float) -> np.ndarray:
        """Joint targets at absolute time(s) ``t``: shape (J,) for a scalar, (N, J) for N times."""
        t = np.asarray(t, dtype=np.float64)
        return self.centre + self.amplitude * np.sin(self._omega * t[..., None] + self.phase)

    def velocities_at(self, t: np.ndarray | float) -> np.ndarray:
        """Time derivative of :meth:`positions_at`."""
        t = np.asarray(t, dtype=np.float64)
        return self.amplitude * self._omega * np.cos(self._omega * t[..., None] + self.phase)

    def check_observation(self, obs: Observation) -> list[str]:
        """Every reason ``obs`` is unusable for this policy; empty if fine."""
        problems = []
        if tuple(obs.joint_names) != self.joint_names:
            problems.append(f"joint_names {list(obs.joint_names)} differ from {list(self.joint_names)}")
        state = np.asarray(obs.state)
        if state.shape != (len(self.joint_names),):
            problems.append(f"state has shape {state.shape}, expected ({len(self.joint_names)},)")
        elif not np.all(np.isfinite(state)):
            problems.append("state contains NaN or inf")
        if not math.isfinite(obs.stamp):
            problems.append(f"stamp {obs.stamp} is not finite")
        missing = [c for c in self._cams if c not in obs.images]
        if missing:
            problems.append(f"missing camera images {missing}")
        return problems

    def infer(self, obs: Observation) -> ActionChunk:
        """The chunk for ``obs``: step k at ``obs.stamp + k * step_dt`` on the sine of time.

        Raises:
            ValidationError: if the observation does not fit the contract.
        """
        problems = self.check_observation(obs)
        if problems:
            raise ValidationError(problems)
        t_start = time.perf_counter()
        t = obs.stamp + self._step_dt * np.arange(self._horizon, dtype=np.float64)
        chunk = ActionChunk(
            joint_names=self.joint_names,
            positions=self.positions_at(t),
            velocities=self.velocities_at(t),
            step_dt=self._step_dt,
            t0=float(obs.stamp),
            obs_stamp=float(obs.stamp),
            chunk_id=self._next_id,
            model_id=self.MODEL_ID,
        )
        self._next_id += 1
        self._simulate_latency(t_start)
        return chunk

    def _simulate_latency(self, t_start: float) -> None:
        end = t_start + self.simulated_latency_s
        if self.latency_busy:
            x = 0.0
            # Burn CPU like a model on the CPU would; other threads still get the GIL every switch
            # interval (5 ms), so this also shows how the node's callbacks fare under a busy worker.
            while time.perf_counter() < end:
                x += math.sqrt(x + 1.0)
        else:
            remaining = end - time.perf_counter()
            if remaining > 0:
                time.sleep(remaining)

    def reset(self) -> None:
        """Restart chunk ids at 1 (the motion itself depends on time only)."""
        self._next_id = 1
