# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The scripted wiring policy and the policy registry (no ROS, no torch)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.types import Observation
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.policies import PolicyBackend, PolicyLoadError, available_policies, load_policy
from twinbrain_ros.policies.scripted import ScriptedSinePolicy

EMB = load_embodiment("so101")


def obs(stamp, state=None, images=None):
    return Observation(
        images={"front": np.zeros((480, 640, 3), np.uint8)} if images is None else images,
        state=np.zeros(EMB.num_joints) if state is None else state,
        joint_names=EMB.joint_names,
        instruction="",
        stamp=stamp,
    )


def test_chunk_shape_and_timing():
    p = ScriptedSinePolicy(EMB)
    c = p.infer(obs(1234.5))
    assert isinstance(p, PolicyBackend) and p.model_id == "scripted_sine"
    assert c.joint_names == EMB.joint_names
    assert c.positions.shape == (EMB.action.horizon, EMB.num_joints)
    assert c.velocities.shape == c.positions.shape
    assert c.t0 == c.obs_stamp == 1234.5 and c.step_dt == EMB.action.step_dt
    assert p.infer(obs(1234.6)).chunk_id == c.chunk_id + 1
    p.reset()
    assert p.infer(obs(1.0)).chunk_id == 1


def test_function_of_absolute_time_so_chunks_agree_on_overlap():
    p = ScriptedSinePolicy(EMB)
    a = p.infer(obs(1.7e9 + 0.0))
    b = p.infer(obs(1.7e9 + 0.15))  # 3 steps later: b[k] is at a's time k+3
    # Epoch seconds as float64 resolve ~0.24 us, so step times agree to that (1e-6 rad is far below
    # any servo's resolution).
    np.testing.assert_allclose(b.positions[:-3], a.positions[3:], rtol=0, atol=1e-6)
    small = p.infer(obs(100.0)), p.infer(obs(100.25))
    np.testing.assert_allclose(small[1].positions[:-5], small[0].positions[5:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.positions[5], p.positions_at(a.t0 + 5 * a.step_dt), atol=1e-12)
    # and the state does not change the output
    c = p.infer(obs(1.7e9, state=np.ones(EMB.num_joints)))
    np.testing.assert_array_equal(c.positions, a.positions)


def test_deterministic_per_seed():
    a = ScriptedSinePolicy(EMB, seed=3).infer(obs(10.0)).positions
    b = ScriptedSinePolicy(EMB, seed=3).infer(obs(10.0)).positions
    c = ScriptedSinePolicy(EMB, seed=4).infer(obs(10.0)).positions
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("freq", [0.05, 0.2, 2.0])
def test_within_position_velocity_and_acceleration_limits(freq):
    p = ScriptedSinePolicy(EMB, frequency_hz=freq, amplitude=1.0, limit_fraction=1.0)
    t = np.linspace(0, 2.0 / freq, 4001)
    q = p.positions_at(t)
    lim = EMB.limits
    assert np.all(q >= lim.lower - 1e-12) and np.all(q <= lim.upper + 1e-12)
    assert np.all(np.abs(p.velocities_at(t)) <= lim.max_velocity + 1e-9)
    dt = t[1] - t[0]
    acc = np.diff(q, 2, axis=0) / dt**2
    assert np.all(np.abs(acc) <= lim.max_acceleration * 1.001)
    # velocities are the derivative of positions
    np.testing.assert_allclose(np.gradient(q, dt, axis=0)[1:-1], p.velocities_at(t)[1:-1], atol=1e-3)


def test_simulated_latency_sleep_and_busy():
    for busy in (False, True):
        p = ScriptedSinePolicy(EMB, simulated_latency_s=0.05, latency_busy=busy)
        t = time.perf_counter()
        p.infer(obs(0.0))
        assert 0.05 <= time.perf_counter() - t < 0.5


def test_bad_observation_rejected():
    p = ScriptedSinePolicy(EMB)
    with pytest.raises(ValidationError) as e:
        p.infer(obs(float("nan"), state=np.full(EMB.num_joints, np.nan), images={}))
    msg = str(e.value)
    assert "NaN" in msg and "not finite" in msg and "missing camera images ['front']" in msg
    with pytest.raises(ValidationError, match="shape"):
        p.infer(obs(0.0, state=np.zeros(3)))


def test_bad_arguments_listed():
    with pytest.raises(ValueError) as e:
        ScriptedSinePolicy(EMB, frequency_hz=0, amplitude=2.0, camera_names=("rear",))
    assert "frequency_hz" in str(e.value) and "amplitude" in str(e.value) and "rear" in str(e.value)


def test_registry():
    assert {"scripted_sine", "twinbrain"} <= set(available_policies())
    p = load_policy("scripted_sine", embodiment="so101", seed=1, options={"frequency_hz": 0.5})
    assert p.frequency_hz == 0.5
    with pytest.raises(PolicyLoadError, match="unknown policy 'nope'"):
        load_policy("nope", embodiment=EMB)
    with pytest.raises(PolicyLoadError, match="needs model_dir"):
        load_policy("twinbrain", embodiment=EMB)
    with pytest.raises(PolicyLoadError, match="unexpected keyword"):
        load_policy("scripted_sine", embodiment=EMB, options={"bogus": 1})


def test_twinbrain_failure_is_a_clear_error(tmp_path):
    with pytest.raises(PolicyLoadError, match="'twinbrain'.*is not a directory"):
        load_policy("twinbrain", embodiment=EMB, model_dir=str(tmp_path / "missing"))
    # An existing but empty directory reaches the (lazy) model import/loader; whatever fails there
    # comes back as one PolicyLoadError naming the policy.
    with pytest.raises(PolicyLoadError, match="twinbrain"):
        load_policy("twinbrain", embodiment=EMB, model_dir=str(tmp_path))


def test_duck_typed_policy_wrapped_and_checked(monkeypatch):
    from twinbrain_ros.policies import base

    class Duck:
        model_id = "duck"
        joint_names = EMB.joint_names
        camera_names = ("front",)
        horizon = 4
        step_dt = 0.1

        def infer(self, o):
            return None

    class BadDuck(Duck):
        joint_names = tuple(reversed(EMB.joint_names))
        camera_names = ("rear",)

    monkeypatch.setitem(base._REGISTRY, "duck", lambda *a: Duck())
    monkeypatch.setitem(base._REGISTRY, "badduck", lambda *a: BadDuck())
    p = load_policy("duck", embodiment=EMB)
    assert isinstance(p, PolicyBackend) and p.model_id == "duck" and p.horizon == 4
    with pytest.raises(PolicyLoadError) as e:
        load_policy("badduck", embodiment=EMB)
    assert "joint order differs" in str(e.value) and "['rear']" in str(e.value)


def test_importing_node_and_policies_does_not_import_torch():
    code = (
        "import sys; import twinbrain_ros.policies, twinbrain_ros.nodes.policy_node; "
        "from twinbrain_ros.policies import load_policy; load_policy('scripted_sine', embodiment='so101'); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
