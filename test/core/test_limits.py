# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of per-cycle joint limit enforcement."""

from __future__ import annotations

import numpy as np
import pytest

from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.limits import (
    ACCELERATION,
    DELTA,
    POSITION,
    VELOCITY,
    JointLimitSet,
    braking_velocity,
    enforce_limits,
)
from twinbrain_ros.core.validation import ValidationError

DT = 0.005


def _limits(delta=None):
    return JointLimitSet(
        lower=np.array([-1.0, -2.0]),
        upper=np.array([1.0, 2.0]),
        max_velocity=np.array([2.0, 3.0]),
        max_acceleration=np.array([20.0, 30.0]),
        max_step_delta=None if delta is None else np.array([delta, delta]),
    )


def _run(targets, lim, q0, prev_targets=None, dt=DT, v0=None):
    q = np.array(q0, float)
    v = np.zeros(len(q0)) if v0 is None else np.array(v0, float)
    out = []
    for k, tgt in enumerate(targets):
        pt = None if prev_targets is None else prev_targets[k]
        r = enforce_limits(tgt, q, v, dt, lim, prev_target=pt, prev_dt=dt)
        q, v = r.position, r.velocity
        out.append(r)
    return out


def _check_all_limits(results, lim, q0, dt=DT, tol=1e-9):
    q = np.array([r.position for r in results])
    v = np.array([r.velocity for r in results])
    assert np.all(q >= lim.lower - tol) and np.all(q <= lim.upper + tol)
    assert np.all(np.abs(v) <= lim.max_velocity + tol)
    dv = np.diff(np.vstack([np.zeros(len(q0)), v]), axis=0)
    assert np.all(np.abs(dv) <= lim.max_acceleration * dt + tol)
    if lim.max_step_delta is not None:
        dq = np.diff(np.vstack([q0, q]), axis=0)
        assert np.all(np.abs(dq) <= lim.max_step_delta + tol)


def test_feasible_reference_passes_unchanged():
    lim = _limits()
    t = DT * np.arange(400)
    ref = np.stack([0.5 * np.sin(2 * t), 0.8 * np.cos(1.5 * t) - 0.8], axis=1)
    v0 = (ref[1] - ref[0]) / DT
    for prev in (None, ref[1:-1]):
        res = _run(ref[2:], lim, ref[1], prev, v0=v0)
        for r, q in zip(res, ref[2:], strict=True):
            np.testing.assert_allclose(r.position, q, atol=1e-12)
        assert not any(r.clamped for r in res)


def test_step_target_converges_without_overshoot_within_all_limits():
    lim = _limits()
    goal = np.array([0.9, -1.5])
    res = _run([goal] * 600, lim, [-0.9, 1.5], [goal] * 600)
    _check_all_limits(res, lim, np.array([-0.9, 1.5]))
    q = np.array([r.position for r in res])
    assert np.all(q[:, 0] <= 0.9 + 1e-9) and np.all(q[:, 1] >= -1.5 - 1e-9)  # no overshoot
    np.testing.assert_allclose(q[-1], [0.9, -1.5], atol=1e-9)
    assert {VELOCITY, ACCELERATION} <= set().union(*(r.active for r in res))


def test_braking_before_position_limit_keeps_acceleration_bounded():
    lim = _limits()
    # Drive joint 0 at full speed into its upper limit: it must brake in time, not be clipped.
    q0 = np.array([0.0, 0.0])
    targets = [np.array([5.0, 0.0])] * 300
    res = _run(targets, lim, q0)
    _check_all_limits(res, lim, q0)
    q = np.array([r.position for r in res])
    assert q[:, 0].max() <= 1.0 + 1e-12
    assert q[-1, 0] == pytest.approx(1.0, abs=1e-3)
    assert any(POSITION in r.active for r in res)


def test_joint_measured_outside_is_brought_back_never_pushed_out():
    lim = _limits()
    q0 = np.array([1.05, -2.1])
    res = _run([q0] * 200, lim, q0)  # holding a target outside: clipped, approached gently
    q = np.array([r.position for r in res])
    assert np.all(q[:, 0] <= 1.05) and np.all(q[:, 1] >= -2.1)
    np.testing.assert_allclose(q[-1], [1.0, -2.0], atol=1e-6)
    dv = np.diff(np.array([r.velocity for r in res]), axis=0)
    assert np.all(np.abs(dv) <= lim.max_acceleration * DT + 1e-9)


def test_delta_clamp_limits_a_long_cycle():
    lim = _limits(delta=0.01)
    r = enforce_limits(np.array([0.5, 0.5]), np.zeros(2), np.array([1.9, 2.9]), 0.1, lim)
    assert DELTA in r.active
    assert np.all(np.abs(r.position) <= 0.01 + 1e-12)
    assert r.clamped_joints.all()


def test_random_targets_never_violate_limits():
    rng = np.random.default_rng(7)
    lim = _limits(delta=0.012)
    q0 = np.array([0.2, -0.4])
    targets = rng.uniform(-3, 3, (2000, 2))
    res = _run(targets, lim, q0)
    _check_all_limits(res, lim, q0)
    res = _run(targets, lim, q0, rng.uniform(-3, 3, (2000, 2)))
    _check_all_limits(res, lim, q0)


def test_jitter_does_not_read_as_acceleration():
    lim = _limits()
    amp, w = np.array([0.18, 0.27]), 10.0  # peak acceleration 18 and 27: inside the limits 20 and 30
    rng = np.random.default_rng(3)
    dts = DT * rng.uniform(0.2, 1.8, 300)

    def run(use_prev_dt):
        t, dt_prev = 0.0, DT
        q = np.zeros(2)
        v = (q - amp * np.sin(-w * dt_prev)) / dt_prev
        clamped = 0
        for dt in dts:
            t += dt
            r = enforce_limits(amp * np.sin(w * t), q, v, dt, lim, prev_dt=dt_prev if use_prev_dt else None)
            q, v, dt_prev = r.position, r.velocity, dt
            clamped += r.clamped
        return clamped, q, t

    clamped, q, t = run(True)
    # A feasible reference under +-80% loop jitter is followed exactly.
    assert clamped == 0
    np.testing.assert_allclose(q, amp * np.sin(w * t), atol=1e-12)
    assert run(False)[0] > 0  # measured over one cycle only, the same jitter would trip the limit


def test_limit_set_validation_and_embodiment():
    with pytest.raises(ValidationError, match="max_velocity"):
        JointLimitSet(np.zeros(2) - 1, np.ones(2), np.array([1.0, 0.0]), np.ones(2))
    with pytest.raises(ValidationError, match="lower must be < upper"):
        JointLimitSet(np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(ValidationError, match="shape"):
        JointLimitSet(np.zeros(2), np.ones(3), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="dt"):
        enforce_limits(np.zeros(2), np.zeros(2), np.zeros(2), 0.0, _limits())
    emb = load_embodiment("so101")
    lim = JointLimitSet.from_embodiment(
        emb.limits, velocity_scale=0.5, acceleration_scale=0.25, max_step_delta=0.02
    )
    np.testing.assert_allclose(lim.max_velocity, emb.limits.max_velocity * 0.5)
    np.testing.assert_allclose(lim.max_acceleration, emb.limits.max_acceleration * 0.25)
    assert lim.max_step_delta is not None and lim.num_joints == 6
    assert JointLimitSet.from_embodiment(emb.limits).max_step_delta is None


def test_braking_velocity_stops_exactly_at_the_limit():
    a, dt, room = np.array([30.0]), 0.005, np.array([0.2])
    v = braking_velocity(room, a, dt)
    assert v * dt + v**2 / (2 * a) == pytest.approx(room)
    assert braking_velocity(np.array([-1.0]), a, dt)[0] == 0.0
