# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of chunk sampling: exactness, C1 continuity and the documented edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from twinbrain_ros.core.interpolation import (
    AFTER,
    BEFORE,
    BETWEEN,
    KNOT,
    ChunkInterpolator,
    finite_difference_velocities,
    sample_chunk,
)
from twinbrain_ros.core.types import ActionChunk

T0 = 1_700_000_000.25  # epoch-sized times: sampling must survive float rounding of large t
DT = 0.05


def _chunk(fn, h=16, t0=T0, dt=DT, velocities=None):
    times = t0 + dt * np.arange(h)
    return ActionChunk(("a", "b", "c"), np.array([fn(t - t0) for t in times]), dt, t0, t0, 1, velocities)


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_constant_velocity_chunk_is_sampled_exactly(method):
    v = np.array([0.7, -1.3, 0.0])
    q0 = np.array([0.1, 0.2, -0.3])
    chunk = _chunk(lambda tau: q0 + v * tau)
    interp = ChunkInterpolator.from_chunk(chunk, method)
    rng = np.random.default_rng(1)
    taus = np.concatenate([rng.uniform(0, chunk.t_end - T0, 500), DT * np.arange(16)])
    for tau in taus:
        s = interp.sample(T0 + tau)
        np.testing.assert_allclose(s.position, q0 + v * tau, atol=1e-6)  # 1e-6: epoch-time rounding
        np.testing.assert_allclose(s.velocity, v, atol=1e-5)


def test_cubic_reproduces_quadratics_exactly():
    acc = np.array([2.0, -0.5, 1.0])
    chunk = _chunk(lambda tau: 0.3 + 0.2 * tau + 0.5 * acc * tau**2, t0=10.0)
    interp = ChunkInterpolator.from_chunk(chunk, "cubic")
    for tau in np.linspace(0, chunk.t_end - 10.0, 301):
        s = interp.sample(10.0 + tau)
        np.testing.assert_allclose(s.position, 0.3 + 0.2 * tau + 0.5 * acc * tau**2, atol=1e-12)
        np.testing.assert_allclose(s.velocity, 0.2 + acc * tau, atol=1e-10)


def test_cubic_is_c1_across_knots_and_velocity_is_the_derivative():
    rng = np.random.default_rng(2)
    pos = np.cumsum(rng.normal(0, 0.05, (16, 3)), axis=0)
    interp = ChunkInterpolator(pos, DT, 5.0, "cubic")
    eps = 1e-7
    for k in range(1, 15):
        tk = 5.0 + k * DT
        left, right = interp.sample(tk - eps), interp.sample(tk + eps)
        np.testing.assert_allclose(left.position, right.position, atol=1e-6)
        np.testing.assert_allclose(left.velocity, right.velocity, atol=1e-4)
    for t in np.linspace(5.0 + 1e-3, interp.t_end - 1e-3, 97):
        h = 1e-6
        num = (interp.sample(t + h).position - interp.sample(t - h).position) / (2 * h)
        np.testing.assert_allclose(interp.sample(t).velocity, num, atol=1e-5)


def test_linear_velocity_is_segment_slope_and_jumps_at_knots():
    pos = np.array([[0.0], [1.0], [1.5], [1.5]])
    interp = ChunkInterpolator(pos, 0.5, 0.0, "linear")
    assert interp.sample(0.25).velocity[0] == pytest.approx(2.0)
    s = interp.sample(0.5)  # on knot 1: the slope of the segment starting there
    assert s.phase == KNOT and s.position[0] == 1.0 and s.velocity[0] == pytest.approx(1.0)
    s = interp.sample(1.5)  # last knot: the incoming segment's slope
    assert s.phase == KNOT and s.position[0] == 1.5 and s.velocity[0] == pytest.approx(0.0)
    assert interp.sample(0.75).position[0] == pytest.approx(1.25)


def test_edge_cases_before_knot_after_single_and_empty():
    pos = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 4.0]])
    for method in ("linear", "cubic"):
        interp = ChunkInterpolator(pos, 0.1, 1.0, method)
        s = interp.sample(0.9)
        assert s.phase == BEFORE
        np.testing.assert_array_equal(s.position, pos[0])
        np.testing.assert_array_equal(s.velocity, 0.0)
        s = interp.sample(1.3)
        assert s.phase == AFTER
        np.testing.assert_array_equal(s.position, pos[-1])
        np.testing.assert_array_equal(s.velocity, 0.0)
        for k in range(3):
            s = interp.sample(1.0 + 0.1 * k)  # 1.0 + 0.1*k is not exact in binary: snapped to the knot
            assert s.phase == KNOT
            np.testing.assert_array_equal(s.position, pos[k])
        assert interp.sample(1.05).phase == BETWEEN
        assert interp.t_end == pytest.approx(1.2)
    single = ChunkInterpolator(np.array([[0.5, 0.5]]), 0.1, 2.0, "cubic")
    s = single.sample(2.0)
    assert s.phase == KNOT and np.all(s.position == 0.5) and np.all(s.velocity == 0.0)
    given = ChunkInterpolator(np.array([[0.5, 0.5]]), 0.1, 2.0, "cubic", np.array([[1.0, -1.0]]))
    np.testing.assert_array_equal(given.sample(2.0).velocity, [1.0, -1.0])
    assert single.sample(2.1).phase == AFTER
    with pytest.raises(ValueError, match="empty"):
        ChunkInterpolator(np.zeros((0, 2)), 0.1, 0.0)
    with pytest.raises(ValueError, match="step_dt"):
        ChunkInterpolator(pos, 0.0, 0.0)
    with pytest.raises(ValueError, match="method"):
        ChunkInterpolator(pos, 0.1, 0.0, "spline")
    with pytest.raises(ValueError, match="shape"):
        ChunkInterpolator(pos, 0.1, 0.0, "cubic", np.zeros((2, 2)))


def test_given_velocities_are_used_by_cubic_only():
    pos = np.array([[0.0], [0.0], [0.0]])
    vel = np.array([[0.0], [1.0], [0.0]])
    chunk = ActionChunk(("a",), pos, 0.1, 0.0, 0.0, 1, vel)
    assert sample_chunk(chunk, 0.1, "cubic").velocity[0] == pytest.approx(1.0)
    assert sample_chunk(chunk, 0.05, "cubic").position[0] != 0.0
    assert sample_chunk(chunk, 0.1, "linear").velocity[0] == 0.0


def test_finite_difference_velocities_shapes():
    assert np.all(finite_difference_velocities(np.ones((1, 2)), 0.1) == 0)
    np.testing.assert_allclose(finite_difference_velocities(np.array([[0.0], [1.0]]), 0.5), [[2.0], [2.0]])
