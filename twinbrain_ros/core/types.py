# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Core value types shared by policies, controllers, recorders and the model.

Times are float seconds on the clock the node runs on (ROS time, which is sim time under
``use_sim_time``). Arrays are numpy; joint order is always explicit through ``joint_names``.

Usage:
    chunk = ActionChunk(joint_names=("a", "b"), positions=np.zeros((16, 2)), step_dt=0.05,
                        t0=obs.stamp, obs_stamp=obs.stamp)
    chunk.times()  # absolute time of each step
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Observation:
    """One synchronised observation, in the embodiment contract's joint and camera order.

    Attributes:
        images: camera name -> (H, W, 3) uint8 RGB image.
        state: (J,) float64 joint positions, ordered like ``joint_names``.
        joint_names: names of the state entries.
        instruction: natural-language task instruction.
        stamp: observation time in seconds (the joint-state stamp).
        image_stamps: camera name -> capture time in seconds.
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    joint_names: tuple[str, ...]
    instruction: str
    stamp: float
    image_stamps: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ActionChunk:
    """A time-indexed chunk of joint position targets.

    Step ``k`` is to be reached at ``t0 + k * step_dt``.

    Attributes:
        joint_names: column names of ``positions``.
        positions: (H, J) float64 joint position targets.
        step_dt: seconds between steps, > 0.
        t0: time of step 0 in seconds.
        obs_stamp: time of the observation the chunk was computed from.
        chunk_id: producer-assigned id, increasing.
        velocities: optional (H, J) joint velocities.
        frozen_steps: leading steps treated as committed by the producer (real-time chunking).
        inference_ms: time spent computing the chunk.
        model_id: identifier of the producer.
        timing_ms: optional per-stage timing (stage name -> ms).
    """

    joint_names: tuple[str, ...]
    positions: np.ndarray
    step_dt: float
    t0: float
    obs_stamp: float
    chunk_id: int = 0
    velocities: np.ndarray | None = None
    frozen_steps: int = 0
    inference_ms: float = 0.0
    model_id: str = ""
    timing_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        """Number of steps H."""
        return int(self.positions.shape[0])

    @property
    def t_end(self) -> float:
        """Time of the last step."""
        return self.t0 + (self.horizon - 1) * self.step_dt

    def times(self) -> np.ndarray:
        """(H,) absolute time of each step."""
        return self.t0 + self.step_dt * np.arange(self.horizon, dtype=np.float64)
