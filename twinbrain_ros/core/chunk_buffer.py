# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Accept, validate and splice action chunks into the running motion.

A policy publishes a new chunk every ~100 ms while the previous one is still executing. The buffer
decides whether a chunk may be used (:meth:`ChunkBuffer.offer`), keeps it pending until its first
step is due, and then splices it into the motion (:meth:`ChunkBuffer.activate`) so that neither the
position nor the velocity jumps.

Acceptance (every problem is reported, a rejected chunk never touches the active or pending one):
    * structure: joint names equal to the contract's (in order; the ROS boundary reorders), positions
      (H, J) with H >= 1, optional velocities of the same shape, all finite; step_dt finite and > 0;
      finite stamps.
    * ordering: chunk_id strictly greater, and obs_stamp and t0 not older, than the last accepted
      chunk's. After the policy timeout this history is forgotten, so a restarted producer whose ids
      start again from 0 is accepted.
    * freshness: the observation is at most ``max_age_s`` old; t0 is at most ``max_future_s`` ahead;
      the chunk covers the present (its last step is not in the past).

Splicing at time ``ts`` from a state ``(q, v)`` (the last command, or the previous reference):
    The new chunk's reference ``r(t)`` gets a correction ``c(t - ts)`` that is a quintic in time with
    ``c(0) = q - r(ts)``, ``c'(0) = v - r'(ts)``, ``c''(0) = 0`` and ``c = c' = c'' = 0`` at the end of the
    window. Position and velocity are therefore continuous at ``ts`` and the chunk is followed
    exactly after the window. The window is the shortest one whose peak correction acceleration and
    velocity, per joint, stay within ``splice_limit_fraction`` of the joint's limits (clipped to
    ``[splice_min_s, splice_max_s]``), leaving the rest of the budget to the chunk's own motion.
    Steps that lie before ``ts`` are dropped (never commanded); the step just before ``ts`` is kept as
    the start of the segment that covers ``ts``. If ``ts`` falls a little before ``t0`` (the chunk
    became due between two control cycles) the reference is extrapolated back from the first step
    with its edge velocity.

Usage:
    buf = ChunkBuffer(BufferConfig(joint_names=emb.joint_names, max_acceleration=emb.limits.max_acceleration))
    verdict = buf.offer(chunk, now)            # Verdict(accepted, reason)
    if buf.due(now): buf.activate(t_last, q_cmd, v_cmd)
    ref = buf.reference(now)                   # Sample or None
    reason = buf.expire(now)                   # timeout / exhaustion drops the active chunk
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from twinbrain_ros.core.interpolation import CUBIC, KNOT_TOL, METHODS, ChunkInterpolator, Sample
from twinbrain_ros.core.types import ActionChunk

# Peak |d2/ds2| of the quintic blend shapes below (s in [0, 1]): position shape P, velocity shape V.
_PEAK_P = 10.0 / math.sqrt(3.0)
_S_V = (192.0 - math.sqrt(192.0**2 - 4.0 * 180.0 * 36.0)) / 360.0
_PEAK_V = abs(-36.0 * _S_V + 96.0 * _S_V**2 - 60.0 * _S_V**3)
_PEAK_DP = 1.875  # peak |dP/ds|, at s = 1/2


@dataclass(frozen=True)
class BufferConfig:
    """How chunks are accepted and spliced.

    Attributes:
        joint_names: the contract's joint order; chunks must use it.
        max_acceleration: (J,) acceleration limits, for sizing splice windows.
        max_velocity: (J,) velocity limits, for sizing splice windows (None: not considered).
        method: interpolation, ``linear`` or ``cubic``.
        max_future_s: largest allowed ``t0 - now`` at arrival.
        max_age_s: largest allowed ``now - obs_stamp`` at arrival.
        timeout_s: the policy counts as gone when no chunk was accepted for this long; the active
            chunk is then dropped even if it still covers the present.
        splice_min_s: shortest splice window.
        splice_max_s: longest splice window.
        splice_limit_fraction: share of each joint's velocity and acceleration limits a splice may use.
    """

    joint_names: tuple[str, ...]
    max_acceleration: np.ndarray
    method: str = CUBIC
    max_future_s: float = 1.0
    max_age_s: float = 1.0
    timeout_s: float = 0.5
    splice_min_s: float = 0.02
    splice_max_s: float = 0.5
    splice_limit_fraction: float = 0.5
    max_velocity: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Reject a configuration the buffer cannot work with."""
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {list(METHODS)}, got {self.method!r}")
        for name in ("max_acceleration", "max_velocity"):
            arr = getattr(self, name)
            if arr is None and name == "max_velocity":
                continue
            if np.shape(arr) != (len(self.joint_names),) or not np.all(np.asarray(arr) > 0):
                problems.append(f"{name} must be (J,) and > 0")
        for name in ("max_future_s", "max_age_s", "timeout_s", "splice_min_s", "splice_max_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be finite and >= 0, got {v}")
        if self.splice_max_s < self.splice_min_s:
            problems.append("splice_max_s must be >= splice_min_s")
        if not 0 < self.splice_limit_fraction <= 1:
            problems.append(f"splice_limit_fraction must be in (0, 1], got {self.splice_limit_fraction}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Verdict:
    """The answer to :meth:`ChunkBuffer.offer`.

    Attributes:
        accepted: whether the chunk was queued.
        problems: every reason it was rejected (empty when accepted).
    """

    accepted: bool
    problems: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The problems joined into one line ("" when accepted)."""
        return "; ".join(self.problems)


def blend_window(
    offset: np.ndarray,
    velocity_offset: np.ndarray,
    accel_budget: np.ndarray,
    velocity_budget: np.ndarray | None = None,
) -> float:
    """Shortest time over which a quintic blend removes ``offset``/``velocity_offset`` within budget.

    Per joint the blend's peak acceleration is at most ``PEAK_P |e| / T**2 + PEAK_V |de| / T``
    (PEAK_P = 10/sqrt(3) ~ 5.77, PEAK_V ~ 3.94 for the shapes used by :class:`Splice`; the
    controller's ramp-in smoothstep needs no more); setting that equal to the budget gives a
    quadratic in T. The blend's own velocity peaks at ``1.875 |e| / T`` (plus the initial ``|de|``,
    which is already there), so a velocity budget asks for ``T >= 1.875 |e| / budget``.

    Returns:
        The largest T over the joints (0 for no offset).
    """
    e, de = np.abs(np.asarray(offset, float)), np.abs(np.asarray(velocity_offset, float))
    a = np.asarray(accel_budget, float)
    t_need = (_PEAK_V * de + np.sqrt((_PEAK_V * de) ** 2 + 4.0 * a * _PEAK_P * e)) / (2.0 * a)
    if velocity_budget is not None:
        t_need = np.maximum(t_need, _PEAK_DP * e / np.asarray(velocity_budget, float))
    return float(np.max(t_need)) if t_need.size else 0.0


@dataclass(frozen=True)
class Splice:
    """A quintic correction that fades from ``(offset, velocity_offset)`` at ``t_start`` to zero."""

    t_start: float
    duration: float
    offset: np.ndarray
    velocity_offset: np.ndarray

    @classmethod
    def plan(
        cls,
        t_start: float,
        offset: np.ndarray,
        velocity_offset: np.ndarray,
        accel_budget: np.ndarray,
        min_s: float,
        max_s: float,
        velocity_budget: np.ndarray | None = None,
    ) -> Splice:
        """The shortest window (within [min_s, max_s]) whose correction stays within the budgets."""
        window = blend_window(offset, velocity_offset, accel_budget, velocity_budget)
        duration = min(max(window, min_s), max_s)
        return cls(float(t_start), duration, np.asarray(offset, float), np.asarray(velocity_offset, float))

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position correction, velocity correction) at time ``t``; zero outside the window."""
        tau = t - self.t_start
        if self.duration <= 0 or tau >= self.duration:
            z = np.zeros_like(self.offset)
            return z, z.copy()
        if tau <= 0:
            return self.offset.copy(), self.velocity_offset.copy()
        T = self.duration
        s = tau / T
        s2, s3, s4, s5 = s * s, s**3, s**4, s**5
        p = 1.0 - 10.0 * s3 + 15.0 * s4 - 6.0 * s5
        dp = (-30.0 * s2 + 60.0 * s3 - 30.0 * s4) / T
        w = T * (s - 6.0 * s3 + 8.0 * s4 - 3.0 * s5)
        dw = 1.0 - 18.0 * s2 + 32.0 * s3 - 15.0 * s4
        return self.offset * p + self.velocity_offset * w, self.offset * dp + self.velocity_offset * dw


@dataclass
class ActiveChunk:
    """The chunk being executed: its interpolator, splice correction and bookkeeping.

    Attributes:
        chunk: the chunk as accepted.
        interp: interpolator over all of its steps.
        splice: correction applied from the activation time, or None.
        first_step: index of the first step not dropped (the one just before the activation time).
        activated_at: the splice time.
    """

    chunk: ActionChunk
    interp: ChunkInterpolator
    splice: Splice | None
    first_step: int
    activated_at: float

    @property
    def chunk_id(self) -> int:
        """Producer id of the chunk."""
        return self.chunk.chunk_id

    @property
    def t_end(self) -> float:
        """Time of the last step."""
        return self.interp.t_end

    def sample(self, t: float) -> Sample:
        """Reference (chunk + splice correction) at ``t``; extrapolated back before the first step."""
        if t < self.interp.t0:
            v0 = self.interp.edge_velocity(first=True)
            s = Sample(self.interp.positions[0] + v0 * (t - self.interp.t0), v0, "before")
        else:
            s = self.interp.sample(t)
        if self.splice is None:
            return s
        dq, dv = self.splice.at(t)
        return Sample(s.position + dq, s.velocity + dv, s.phase)


@dataclass
class BufferCounters:
    """What happened to the chunks offered so far."""

    accepted: int = 0
    rejected: int = 0
    superseded: int = 0  # accepted but replaced by a newer chunk before they became due
    activated: int = 0
    dropped_steps: int = 0  # steps of activated chunks already in the past at activation
    timeouts: int = 0
    exhausted: int = 0
    reasons: list[str] = field(default_factory=list)  # the most recent rejection reasons (bounded)


class ChunkBuffer:
    """Validates chunks, keeps the pending and the active one, and splices (see module docstring).

    Not thread-safe: the owner serialises calls (the controller node holds one lock around it).
    """

    _MAX_REASONS = 32

    def __init__(self, config: BufferConfig):
        """Create an empty buffer."""
        self.cfg = config
        frac = config.splice_limit_fraction
        self.accel_budget = np.asarray(config.max_acceleration, dtype=np.float64) * frac
        self.velocity_budget = (
            None if config.max_velocity is None else np.asarray(config.max_velocity, dtype=np.float64) * frac
        )
        self.active: ActiveChunk | None = None
        self.pending: ActionChunk | None = None
        self.counters = BufferCounters()
        self.last_reason = ""
        self._last_id: int | None = None
        self._last_obs: float | None = None
        self._last_t0: float | None = None
        self._last_accept_time: float | None = None

    # --- acceptance -------------------------------------------------------------------------------

    def timed_out(self, now: float) -> bool:
        """Whether no chunk was accepted for longer than the timeout (False before the first one)."""
        return self._last_accept_time is not None and now - self._last_accept_time > self.cfg.timeout_s

    def check(self, chunk: ActionChunk, now: float) -> list[str]:
        """Every reason ``chunk`` may not be used at time ``now``; empty if it may."""
        problems: list[str] = []
        names = tuple(chunk.joint_names)
        if names != tuple(self.cfg.joint_names):
            problems.append(
                f"joint_names {list(names)} differ from the contract's {list(self.cfg.joint_names)}"
            )
        pos = np.asarray(chunk.positions)
        j = len(self.cfg.joint_names)
        if pos.ndim != 2 or pos.shape[0] < 1 or pos.shape[1] != j:
            problems.append(f"positions must be (H >= 1, {j}), got shape {pos.shape}")
        elif not np.all(np.isfinite(pos)):
            problems.append("positions contain NaN or inf")
        if chunk.velocities is not None:
            vel = np.asarray(chunk.velocities)
            if vel.shape != pos.shape:
                problems.append(f"velocities shape {vel.shape} differs from positions shape {pos.shape}")
            elif not np.all(np.isfinite(vel)):
                problems.append("velocities contain NaN or inf")
        dt = chunk.step_dt
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            problems.append(f"step_dt must be finite and > 0, got {dt}")
        for name in ("t0", "obs_stamp"):
            if not math.isfinite(getattr(chunk, name)):
                problems.append(f"{name} must be finite, got {getattr(chunk, name)}")
        if problems:
            return problems
        # Ordering: only against a producer that is still alive (see module docstring).
        if self._last_id is not None and not self.timed_out(now):
            if chunk.chunk_id <= self._last_id:
                problems.append(
                    f"chunk_id {chunk.chunk_id} is not newer than the last accepted {self._last_id}"
                )
            if chunk.obs_stamp < self._last_obs:
                problems.append(
                    f"obs_stamp went backwards by {self._last_obs - chunk.obs_stamp:.3f} s "
                    "(older than the last accepted chunk's)"
                )
            if chunk.t0 < self._last_t0:
                problems.append(f"t0 went backwards by {self._last_t0 - chunk.t0:.3f} s")
        t_end = chunk.t0 + (pos.shape[0] - 1) * dt
        if chunk.t0 - now > self.cfg.max_future_s:
            problems.append(f"t0 is {chunk.t0 - now:.3f} s in the future (limit {self.cfg.max_future_s} s)")
        age = now - chunk.obs_stamp
        if age > self.cfg.max_age_s:
            problems.append(f"stale: observation is {age:.3f} s old (limit {self.cfg.max_age_s} s)")
        if t_end < now:
            problems.append(f"does not cover the present: last step was {now - t_end:.3f} s ago")
        return problems

    def offer(self, chunk: ActionChunk, now: float) -> Verdict:
        """Validate ``chunk`` and, if usable, make it the pending chunk (replacing an older pending one).

        A rejected chunk changes nothing but the rejection counters and ``last_reason``.
        """
        problems = self.check(chunk, now)
        if problems:
            self.reject(chunk.chunk_id, problems)
            return Verdict(False, tuple(problems))
        if self.pending is not None:
            self.counters.superseded += 1
        self.pending = chunk
        self._last_id, self._last_obs, self._last_t0 = chunk.chunk_id, chunk.obs_stamp, chunk.t0
        self._last_accept_time = now
        self.counters.accepted += 1
        return Verdict(True)

    def reject(self, chunk_id: int, problems: list[str] | tuple[str, ...]) -> str:
        """Count a rejection (also used by owners that reject before validation); returns the reason."""
        reason = f"rejected chunk {chunk_id}: " + "; ".join(problems)
        self.counters.rejected += 1
        self.last_reason = reason
        self.counters.reasons.append(reason)
        del self.counters.reasons[: -self._MAX_REASONS]
        return reason

    # --- execution --------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Whether the pending chunk's first step has come."""
        return self.pending is not None and self.pending.t0 <= now

    def activate(
        self,
        t_splice: float,
        match_position: np.ndarray | None = None,
        match_velocity: np.ndarray | None = None,
    ) -> ActiveChunk | None:
        """Make the pending chunk active, spliced at ``t_splice``.

        Args:
            t_splice: the time from which the new chunk drives the motion.
            match_position: (J,) position the reference must have at ``t_splice``; None for no
                correction (the owner blends in some other way, e.g. a ramp).
            match_velocity: (J,) velocity to match at ``t_splice`` (zeros if None while a position is
                given).

        Returns:
            The new active chunk, or None if nothing was pending.
        """
        chunk = self.pending
        if chunk is None:
            return None
        self.pending = None
        interp = ChunkInterpolator.from_chunk(chunk, self.cfg.method)
        u = (t_splice - interp.t0) / interp.step_dt
        first = int(min(max(math.floor(u + KNOT_TOL), 0), interp.horizon - 1))
        active = ActiveChunk(chunk, interp, None, first, float(t_splice))
        if match_position is not None:
            ref = active.sample(t_splice)
            mv = np.zeros_like(ref.velocity) if match_velocity is None else np.asarray(match_velocity, float)
            active.splice = Splice.plan(
                t_splice,
                np.asarray(match_position, float) - ref.position,
                mv - ref.velocity,
                self.accel_budget,
                self.cfg.splice_min_s,
                self.cfg.splice_max_s,
                self.velocity_budget,
            )
        self.active = active
        self.counters.activated += 1
        self.counters.dropped_steps += first
        return active

    def reference(self, t: float) -> Sample | None:
        """The active chunk's reference at ``t`` (None without an active chunk)."""
        return None if self.active is None else self.active.sample(t)

    def expire(self, now: float) -> str | None:
        """Drop the active chunk if the policy timed out or the chunk is exhausted; returns why."""
        if self.active is None:
            return None
        if self.timed_out(now):
            age = now - self._last_accept_time
            self.counters.timeouts += 1
            reason = (
                f"policy timeout: no chunk accepted for {age:.3f} s (limit {self.cfg.timeout_s} s); "
                f"chunk {self.active.chunk_id} abandoned"
            )
            self.active = None
            self.pending = None
            return reason
        if now > self.active.t_end and not self.due(now):
            self.counters.exhausted += 1
            late = now - self.active.t_end
            reason = f"chunk {self.active.chunk_id} exhausted ({late:.3f} s past its last step)"
            self.active = None
            return reason
        return None

    def clear(self) -> None:
        """Drop the active and pending chunks (e-stop, clock reset); counters and history stay."""
        self.active = None
        self.pending = None

    def forget_history(self) -> None:
        """Forget the last accepted id/stamps (after a clock reset the old ones are meaningless)."""
        self._last_id = self._last_obs = self._last_t0 = self._last_accept_time = None

    def remaining(self, now: float) -> float:
        """Seconds of the active chunk left after ``now`` (0 without one)."""
        return 0.0 if self.active is None else max(0.0, self.active.t_end - now)
