# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of chunk acceptance, pending/activation, past-step dropping, splicing and expiry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twinbrain_ros.core.chunk_buffer import BufferConfig, ChunkBuffer, Splice, blend_window
from twinbrain_ros.core.types import ActionChunk

NAMES = ("j0", "j1", "j2")
AMAX = np.array([30.0, 30.0, 20.0])
T0 = 500.0


def _cfg(**kw):
    return BufferConfig(joint_names=NAMES, max_acceleration=AMAX, **kw)


def _chunk(cid, t0, h=16, dt=0.05, fn=None, obs=None, **kw):
    fn = fn or (lambda t: np.array([0.1 * np.sin(t), 0.2 + 0.05 * t, -0.3 + 0.1 * np.cos(2 * t)]))
    pos = np.array([fn(t0 + k * dt) for k in range(h)])
    return ActionChunk(NAMES, pos, dt, t0, t0 if obs is None else obs, cid, **kw)


def test_valid_chunk_is_pending_then_activated_with_past_steps_dropped():
    buf = ChunkBuffer(_cfg())
    c = _chunk(1, T0)
    assert buf.offer(c, T0 + 0.01).accepted
    assert buf.pending is c and buf.active is None and buf.due(T0 + 0.01)
    act = buf.activate(T0 + 0.12)  # between steps 2 and 3: steps 0, 1 are dropped, 2 is kept
    assert act.first_step == 2 and buf.counters.dropped_steps == 2
    assert buf.pending is None and buf.active is act
    assert buf.remaining(T0 + 0.25) == pytest.approx(0.5)


def test_future_chunk_waits_until_due():
    buf = ChunkBuffer(_cfg(max_future_s=1.0))
    assert buf.offer(_chunk(1, T0 + 0.5), T0).accepted
    assert not buf.due(T0 + 0.49) and buf.due(T0 + 0.5)


BAD = {
    "wrong joint names": (lambda c: dataclasses.replace(c, joint_names=("j0", "j1", "x")), "joint_names"),
    "wrong order": (lambda c: dataclasses.replace(c, joint_names=("j1", "j0", "j2")), "joint_names"),
    "NaN": (
        lambda c: dataclasses.replace(c, positions=np.where(np.eye(16, 3) > 0, np.nan, c.positions)),
        "NaN",
    ),
    "inf velocity": (
        lambda c: dataclasses.replace(c, velocities=np.full(c.positions.shape, np.inf)),
        "velocities contain",
    ),
    "dt zero": (lambda c: dataclasses.replace(c, step_dt=0.0), "step_dt"),
    "dt negative": (lambda c: dataclasses.replace(c, step_dt=-0.05), "step_dt"),
    "wrong length": (lambda c: dataclasses.replace(c, positions=c.positions[:, :2]), "shape"),
    "empty": (lambda c: dataclasses.replace(c, positions=np.zeros((0, 3))), "shape"),
    "far future": (lambda c: dataclasses.replace(c, t0=c.t0 + 5.0, obs_stamp=c.obs_stamp + 5.0), "future"),
    "stale obs": (lambda c: dataclasses.replace(c, obs_stamp=c.obs_stamp - 3.0), "stale"),
    "in the past": (lambda c: dataclasses.replace(c, t0=c.t0 - 5.0), "does not cover the present"),
    "old id": (lambda c: dataclasses.replace(c, chunk_id=1), "not newer"),
    "obs backwards": (
        lambda c: dataclasses.replace(c, obs_stamp=c.obs_stamp - 0.2),
        "obs_stamp went backwards",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_chunk_is_rejected_and_changes_nothing(case):
    make_bad, needle = BAD[case]
    buf = ChunkBuffer(_cfg(max_future_s=1.0, max_age_s=1.0))
    assert buf.offer(_chunk(1, T0), T0).accepted
    buf.activate(T0)
    assert buf.offer(_chunk(2, T0 + 0.1), T0 + 0.1).accepted
    active, pending = buf.active, buf.pending
    before = buf.reference(T0 + 0.15)
    verdict = buf.offer(make_bad(_chunk(3, T0 + 0.2)), T0 + 0.2)
    assert not verdict.accepted and needle in verdict.reason
    assert needle in buf.last_reason and "rejected chunk" in buf.last_reason
    assert buf.active is active and buf.pending is pending
    np.testing.assert_array_equal(buf.reference(T0 + 0.15).position, before.position)
    assert buf.counters.rejected == 1 and buf.counters.accepted == 2
    # The history did not move: the next good chunk (id 3) is still accepted.
    assert buf.offer(_chunk(3, T0 + 0.2), T0 + 0.2).accepted


def test_every_problem_is_reported():
    buf = ChunkBuffer(_cfg())
    c = dataclasses.replace(_chunk(1, T0), joint_names=("a", "b", "c"), step_dt=-1.0)
    v = buf.offer(c, T0)
    assert len(v.problems) == 2


def test_restarted_producer_is_accepted_after_the_timeout():
    buf = ChunkBuffer(_cfg(timeout_s=0.5))
    assert buf.offer(_chunk(100, T0), T0).accepted
    assert not buf.offer(_chunk(1, T0 + 0.3), T0 + 0.3).accepted  # ids went backwards, producer alive
    assert buf.offer(_chunk(1, T0 + 0.6), T0 + 0.6).accepted  # timed out: history forgotten


def test_newer_pending_supersedes_older():
    buf = ChunkBuffer(_cfg())
    buf.offer(_chunk(1, T0 + 0.3), T0)
    buf.offer(_chunk(2, T0 + 0.4), T0 + 0.01)
    assert buf.pending.chunk_id == 2 and buf.counters.superseded == 1


def test_splice_matches_position_and_velocity_then_follows_the_chunk():
    rng = np.random.default_rng(4)
    for method in ("linear", "cubic"):
        for trial in range(50):
            buf = ChunkBuffer(_cfg(method=method, splice_min_s=0.02, splice_max_s=0.6))
            amp = rng.normal(0, 0.3, 3)
            c = _chunk(trial + 1, T0, fn=lambda t, a=amp: a * np.sin(3 * t) + 0.1 * t)
            buf.offer(c, T0)
            ts = T0 + rng.uniform(0.0, 0.3)
            q = rng.normal(0, 0.1, 3)
            v = rng.normal(0, 1.0, 3)
            act = buf.activate(ts, q, v)
            s = buf.reference(ts)
            np.testing.assert_allclose(s.position, q, atol=1e-12)
            np.testing.assert_allclose(s.velocity, v, atol=1e-12)
            eps = 1e-6
            s2 = buf.reference(ts + eps)
            np.testing.assert_allclose(s2.position, q + v * eps, atol=1e-9)
            np.testing.assert_allclose(s2.velocity, v, atol=1e-3)
            # After the window the chunk is followed exactly.
            t_after = ts + act.splice.duration + 1e-9
            if t_after < act.t_end:
                plain = act.interp.sample(t_after)
                np.testing.assert_allclose(buf.reference(t_after).position, plain.position, atol=1e-12)
            # The correction's own acceleration stays within budget (numerically, on a fine grid).
            if 0.02 < act.splice.duration < 0.6:  # not clipped to the window bounds
                ts_grid = np.linspace(ts, ts + act.splice.duration, 2001)
                dv = np.diff([act.splice.at(t)[1] for t in ts_grid], axis=0) / np.diff(ts_grid)[:, None]
                assert np.all(np.abs(dv) <= 0.5 * AMAX * 1.001)


def test_splice_window_is_bounded_and_grows_with_the_offset():
    budget = 0.5 * AMAX
    small = Splice.plan(0.0, np.full(3, 0.01), np.zeros(3), budget, 0.02, 0.5)
    big = Splice.plan(0.0, np.full(3, 0.2), np.zeros(3), budget, 0.02, 0.5)
    huge = Splice.plan(0.0, np.full(3, 50.0), np.zeros(3), budget, 0.02, 0.5)
    none = Splice.plan(0.0, np.zeros(3), np.zeros(3), budget, 0.02, 0.5)
    assert none.duration == 0.02 and small.duration < big.duration and huge.duration == 0.5
    assert blend_window(np.zeros(0), np.zeros(0), np.zeros(0)) == 0.0
    dq, dv = big.at(-1.0)
    np.testing.assert_array_equal(dq, 0.2)
    dq, dv = big.at(big.duration)
    np.testing.assert_array_equal(dq, 0.0)


def test_reference_is_extrapolated_back_before_t0():
    buf = ChunkBuffer(_cfg(method="linear"))
    c = _chunk(1, T0, fn=lambda t: np.array([t - T0, 0.0, 1.0]))
    buf.offer(c, T0 - 0.01)
    buf.activate(T0 - 0.004)
    s = buf.reference(T0 - 0.004)
    np.testing.assert_allclose(s.position, [-0.004, 0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(s.velocity, [1.0, 0.0, 0.0], atol=1e-9)


def test_expire_reports_timeout_and_exhaustion():
    buf = ChunkBuffer(_cfg(timeout_s=0.3))
    buf.offer(_chunk(1, T0, h=20), T0)
    buf.activate(T0)
    assert buf.expire(T0 + 0.29) is None
    reason = buf.expire(T0 + 0.31)
    assert "policy timeout" in reason and buf.active is None and buf.counters.timeouts == 1
    buf = ChunkBuffer(_cfg(timeout_s=5.0))
    buf.offer(_chunk(1, T0, h=4), T0)
    buf.activate(T0)
    assert buf.expire(T0 + 0.15) is None  # exactly the last step: still covered
    assert "exhausted" in buf.expire(T0 + 0.151) and buf.counters.exhausted == 1


def test_config_validation():
    with pytest.raises(ValueError, match="method"):
        _cfg(method="quadratic")
    with pytest.raises(ValueError, match="splice_max_s"):
        _cfg(splice_min_s=0.5, splice_max_s=0.1)
    with pytest.raises(ValueError, match="max_acceleration"):
        BufferConfig(joint_names=NAMES, max_acceleration=np.ones(2))
