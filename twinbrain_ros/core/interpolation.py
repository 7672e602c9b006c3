# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Sample an action chunk at an arbitrary time: linear or C1 cubic (Hermite) interpolation.

A chunk holds knots ``positions[k]`` at times ``t0 + k * step_dt``. The controller runs much faster
than the chunk's step rate (200 Hz vs 20 Hz), so it samples the chunk between knots.

Methods:
    ``linear``  piecewise linear: C0; the velocity is the slope of the segment and jumps at knots.
    ``cubic``   cubic Hermite: C1 (position and velocity continuous). Knot velocities are the chunk's
                own ``velocities`` when given, else finite differences of the positions (central in the
                interior, second-order one-sided at both ends), so constant-velocity and quadratic
                chunks are reproduced exactly.

Sampling semantics, case by case (``t`` in seconds on the chunk's clock):
    empty chunk (horizon 0)   :class:`ValueError` when the interpolator is built; nothing to sample.
    before the start (t < t0) hold the first knot: ``positions[0]``, velocity 0, phase ``before``.
    on a knot (t == t0+k*dt)  exactly ``positions[k]``. Velocity: ``cubic`` the knot velocity; ``linear``
                              the slope of the segment that starts at the knot (the incoming segment at
                              the last knot). Phase ``knot``. Times within ``KNOT_TOL`` steps of a knot
                              count as on it, so float rounding of ``t`` cannot pick the wrong segment.
    between knots             the interpolant; phase ``between``.
    after the end (t > t_end) hold the last knot: ``positions[-1]``, velocity 0, phase ``after``.
    horizon 1                 the single knot is both start and end: hold it, velocity 0 (``cubic``
                              with given velocities returns the given one on the knot).

Holding outside the chunk is a well-defined value, not a motion plan: a controller must not drive the
robot with "after" samples (the velocity jumps to 0); it decelerates on its own instead.

Usage:
    interp = ChunkInterpolator.from_chunk(chunk, "cubic")
    s = interp.sample(now)        # Sample(position=(J,), velocity=(J,), phase="between")
    s = sample_chunk(chunk, now, "linear")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twinbrain_ros.core.types import ActionChunk

LINEAR = "linear"
CUBIC = "cubic"
METHODS = (LINEAR, CUBIC)

BEFORE = "before"
KNOT = "knot"
BETWEEN = "between"
AFTER = "after"

# Fraction of a step within which a time snaps onto a knot (1e-7 of 50 ms = 5 ns).
KNOT_TOL = 1e-7


@dataclass(frozen=True)
class Sample:
    """A chunk sampled at one time.

    Attributes:
        position: (J,) joint positions.
        velocity: (J,) joint velocities (d position / d t).
        phase: where the time fell: ``before``, ``knot``, ``between`` or ``after``.
    """

    position: np.ndarray
    velocity: np.ndarray
    phase: str


def finite_difference_velocities(positions: np.ndarray, step_dt: float) -> np.ndarray:
    """Knot velocities estimated from positions.

    Central differences in the interior and second-order one-sided differences at the ends (first
    order when there are only two knots), so the result is exact for positions that are linear or
    quadratic in time.

    Args:
        positions: (H, J) knots.
        step_dt: seconds between knots, > 0.

    Returns:
        (H, J) velocities; zeros for a single knot.
    """
    p = np.asarray(positions, dtype=np.float64)
    h = p.shape[0]
    v = np.zeros_like(p)
    if h < 2:
        return v
    if h == 2:
        v[:] = (p[1] - p[0]) / step_dt
        return v
    v[1:-1] = (p[2:] - p[:-2]) / (2.0 * step_dt)
    v[0] = (-3.0 * p[0] + 4.0 * p[1] - p[2]) / (2.0 * step_dt)
    v[-1] = (3.0 * p[-1] - 4.0 * p[-2] + p[-3]) / (2.0 * step_dt)
    return v


class ChunkInterpolator:
    """Samples one chunk's knots by time (see the module docstring for the semantics).

    Knot velocities for ``cubic`` are computed once at construction, so :meth:`sample` is cheap
    enough for a 200 Hz loop.
    """

    def __init__(
        self,
        positions: np.ndarray,
        step_dt: float,
        t0: float,
        method: str = CUBIC,
        velocities: np.ndarray | None = None,
    ):
        """Build an interpolator.

        Args:
            positions: (H, J) knots, H >= 1.
            step_dt: seconds between knots, finite and > 0.
            t0: time of knot 0.
            method: ``linear`` or ``cubic``.
            velocities: optional (H, J) knot velocities (``cubic`` only; ignored by ``linear``).

        Raises:
            ValueError: on an empty chunk, a bad shape, a bad step or an unknown method.
        """
        p = np.asarray(positions, dtype=np.float64)
        if p.ndim != 2:
            raise ValueError(f"positions must be (H, J), got shape {p.shape}")
        if p.shape[0] == 0:
            raise ValueError("cannot sample an empty chunk (horizon 0)")
        if not (math.isfinite(step_dt) and step_dt > 0):
            raise ValueError(f"step_dt must be finite and > 0, got {step_dt}")
        if method not in METHODS:
            raise ValueError(f"interpolation method must be one of {list(METHODS)}, got {method!r}")
        self.positions = p
        self.step_dt = float(step_dt)
        self.t0 = float(t0)
        self.method = method
        self.horizon = p.shape[0]
        self.t_end = self.t0 + (self.horizon - 1) * self.step_dt
        if method == CUBIC:
            if velocities is not None:
                v = np.asarray(velocities, dtype=np.float64)
                if v.shape != p.shape:
                    raise ValueError(f"velocities shape {v.shape} differs from positions shape {p.shape}")
                self.knot_velocities = v
                self._given_velocities = True
            else:
                self.knot_velocities = finite_difference_velocities(p, self.step_dt)
                self._given_velocities = False
        else:
            self.knot_velocities = None
            self._given_velocities = False
        # Segment slopes for linear sampling; one row per segment (none for a single knot).
        self._slopes = np.diff(p, axis=0) / self.step_dt

    @classmethod
    def from_chunk(cls, chunk: ActionChunk, method: str = CUBIC) -> ChunkInterpolator:
        """An interpolator over ``chunk`` (uses ``chunk.velocities`` for ``cubic`` when present)."""
        return cls(chunk.positions, chunk.step_dt, chunk.t0, method, chunk.velocities)

    def locate(self, t: float) -> tuple[int, float, str]:
        """(segment index k, fraction s in [0, 1), phase) for time ``t``.

        For ``before``/``after`` the index is the first/last knot and the fraction 0.
        """
        u = (t - self.t0) / self.step_dt
        last = self.horizon - 1
        if u < -KNOT_TOL:
            return 0, 0.0, BEFORE
        if u > last + KNOT_TOL:
            return last, 0.0, AFTER
        k = math.floor(u)
        s = u - k
        if s > 1.0 - KNOT_TOL:
            k, s = k + 1, 0.0
        elif s < KNOT_TOL:
            s = 0.0
        k = min(max(k, 0), last)
        if k == last:
            s = 0.0
        return k, s, (KNOT if s == 0.0 else BETWEEN)

    def sample(self, t: float) -> Sample:
        """Position and velocity at time ``t`` (see the module docstring for each case)."""
        k, s, phase = self.locate(t)
        p = self.positions
        if phase in (BEFORE, AFTER):
            return Sample(p[k].copy(), np.zeros(p.shape[1]), phase)
        if self.horizon == 1:
            if self.method == CUBIC and self._given_velocities:
                return Sample(p[0].copy(), self.knot_velocities[0].copy(), phase)
            return Sample(p[0].copy(), np.zeros(p.shape[1]), phase)
        if self.method == LINEAR:
            seg = min(k, self.horizon - 2)  # the last knot takes the incoming segment's slope
            v = self._slopes[seg].copy()
            if phase == KNOT:
                return Sample(p[k].copy(), v, phase)
            return Sample(p[k] + s * (p[k + 1] - p[k]), v, phase)
        vk = self.knot_velocities
        if phase == KNOT:
            return Sample(p[k].copy(), vk[k].copy(), phase)
        h = self.step_dt
        s2, s3 = s * s, s * s * s
        h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2
        d00, d10, d01, d11 = 6 * s2 - 6 * s, 3 * s2 - 4 * s + 1, -6 * s2 + 6 * s, 3 * s2 - 2 * s
        pos = h00 * p[k] + h10 * h * vk[k] + h01 * p[k + 1] + h11 * h * vk[k + 1]
        vel = (d00 * p[k] + d01 * p[k + 1]) / h + d10 * vk[k] + d11 * vk[k + 1]
        return Sample(pos, vel, phase)

    def edge_velocity(self, first: bool) -> np.ndarray:
        """Velocity the interpolant has at its first (or last) knot, for extrapolating beyond it."""
        j = self.positions.shape[1]
        if self.horizon == 1:
            if self.method == CUBIC and self._given_velocities:
                return self.knot_velocities[0].copy()
            return np.zeros(j)
        if self.method == LINEAR:
            return self._slopes[0 if first else -1].copy()
        return self.knot_velocities[0 if first else -1].copy()


def sample_chunk(chunk: ActionChunk, t: float, method: str = CUBIC) -> Sample:
    """Sample ``chunk`` at time ``t`` (builds a throw-away :class:`ChunkInterpolator`)."""
    return ChunkInterpolator.from_chunk(chunk, method).sample(t)
