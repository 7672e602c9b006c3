# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The chunk-executing controller as a ROS-free state machine: ``step(now) -> command``.

All times are float seconds passed in by the caller (the node's ROS clock, sim time included); there
is no clock inside, so every behaviour is testable by stepping a fake time.

Modes:
    ``waiting``       no state yet: :meth:`ChunkController.initialize` has not been called (the node
                      calls it with the first measured joint state). ``step`` returns None.
    ``holding``       standing still at the hold position (never zeros: the hold is where the last
                      motion stopped, or the measured state clipped into the limits).
    ``ramping``       a chunk arrived while holding or decelerating: the command blends from the
                      hold/stop trajectory ``h`` into the chunk reference ``r`` as ``h + a (r - h)``,
                      with ``a`` rising 0 -> 1 along a quintic smoothstep (zero slope and curvature at
                      both ends, so position and velocity stay continuous) over ``ramp_in_s``, or
                      longer if the chunk starts so far away that the blend would need more than the
                      splice share of the velocity or acceleration limits.
    ``tracking``      following the active chunk; new chunks are spliced in (see chunk_buffer).
    ``decelerating``  no valid chunk covers the present (policy timeout, chunk exhausted, clock
                      reset): each joint brakes from the last commanded velocity at
                      ``deceleration_scale * max_acceleration`` to a stop and then holds there.
    ``estop``         e-stop engaged: the same braking at ``estop_deceleration_scale``, pending and
                      active chunks dropped, new chunks rejected until released; after release the
                      controller is ``decelerating``/``holding`` and ramps into the next chunk.

Every cycle's reference goes through :func:`~twinbrain_ros.core.limits.enforce_limits`, so the
command stays within position, velocity, acceleration and per-step limits whatever the chunks say.

Usage:
    ctl = ChunkController(ControllerConfig.from_embodiment(emb))
    ctl.initialize(measured_q, now)
    ctl.offer(chunk, now)               # Verdict
    cmd = ctl.step(now)                 # Command(stamp, position, velocity, mode, limits_active)
    ctl.engage_estop("operator"); ctl.release_estop()
    ctl.snapshot(now)                   # counters and last reason for a status message
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twinbrain_ros.core.chunk_buffer import BufferConfig, ChunkBuffer, Verdict, blend_window
from twinbrain_ros.core.interpolation import CUBIC
from twinbrain_ros.core.limits import JointLimitSet, enforce_limits
from twinbrain_ros.core.types import ActionChunk

WAITING = "waiting"
HOLDING = "holding"
RAMPING = "ramping"
TRACKING = "tracking"
DECELERATING = "decelerating"
ESTOP = "estop"
MODES = (WAITING, HOLDING, RAMPING, TRACKING, DECELERATING, ESTOP)


@dataclass(frozen=True)
class ControllerConfig:
    """Everything the controller needs besides time and chunks.

    Attributes:
        joint_names: contract joint order.
        limits: joint limits enforced on every command.
        method: chunk interpolation, ``linear`` or ``cubic``.
        ramp_in_s: blend time from hold into the first chunk; 0 splices directly.
        deceleration_scale: braking acceleration as a share of ``limits.max_acceleration``.
        estop_deceleration_scale: the same while the e-stop is engaged.
        max_future_s: see :class:`~twinbrain_ros.core.chunk_buffer.BufferConfig`.
        max_age_s: see BufferConfig.
        timeout_s: see BufferConfig.
        splice_min_s: see BufferConfig.
        splice_max_s: see BufferConfig.
        splice_limit_fraction: see BufferConfig.
    """

    joint_names: tuple[str, ...]
    limits: JointLimitSet
    method: str = CUBIC
    ramp_in_s: float = 0.5
    deceleration_scale: float = 0.5
    estop_deceleration_scale: float = 1.0
    max_future_s: float = 1.0
    max_age_s: float = 1.0
    timeout_s: float = 0.5
    splice_min_s: float = 0.02
    splice_max_s: float = 0.5
    splice_limit_fraction: float = 0.5

    def __post_init__(self) -> None:
        """Check what BufferConfig does not."""
        problems = []
        if self.limits.num_joints != len(self.joint_names):
            problems.append(f"{self.limits.num_joints} joint limits for {len(self.joint_names)} joints")
        if not (math.isfinite(self.ramp_in_s) and self.ramp_in_s >= 0):
            problems.append(f"ramp_in_s must be >= 0, got {self.ramp_in_s}")
        for name in ("deceleration_scale", "estop_deceleration_scale"):
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_embodiment(cls, emb, limits: JointLimitSet | None = None, **kwargs) -> ControllerConfig:
        """A config for an :class:`~twinbrain_ros.core.embodiment.Embodiment` (its limits unless given)."""
        return cls(
            joint_names=tuple(emb.joint_names),
            limits=limits if limits is not None else JointLimitSet.from_embodiment(emb.limits),
            **kwargs,
        )

    def buffer_config(self) -> BufferConfig:
        """The chunk buffer's share of this config."""
        return BufferConfig(
            joint_names=self.joint_names,
            max_acceleration=self.limits.max_acceleration,
            max_velocity=self.limits.max_velocity,
            method=self.method,
            max_future_s=self.max_future_s,
            max_age_s=self.max_age_s,
            timeout_s=self.timeout_s,
            splice_min_s=self.splice_min_s,
            splice_max_s=self.splice_max_s,
            splice_limit_fraction=self.splice_limit_fraction,
        )


@dataclass(frozen=True)
class Command:
    """One cycle's output.

    Attributes:
        stamp: the time it was computed for.
        position: (J,) joint position command.
        velocity: (J,) velocity of the command (the reference's when no limit acted).
        mode: the controller mode after this cycle.
        limits_active: limits that changed the command this cycle.
    """

    stamp: float
    position: np.ndarray
    velocity: np.ndarray
    mode: str
    limits_active: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ControllerSnapshot:
    """State and counters for a status message."""

    mode: str
    active_chunk_id: int
    remaining_s: float
    chunks_accepted: int
    chunks_rejected: int
    chunks_superseded: int
    chunks_activated: int
    dropped_steps: int
    timeouts: int
    exhausted: int
    cycles: int
    clamped_cycles: int
    last_reason: str
    estop_engaged: bool
    last_limits: frozenset[str]


class StopProfile:
    """Per-joint braking at constant deceleration from ``(q0, v0)`` at ``t0``, then standing still."""

    def __init__(self, q0: np.ndarray, v0: np.ndarray, t0: float, decel: np.ndarray):
        """Start braking at ``t0``; ``decel`` (J,) > 0."""
        self.q0 = np.asarray(q0, dtype=np.float64).copy()
        self.v0 = np.asarray(v0, dtype=np.float64).copy()
        self.t0 = float(t0)
        self.decel = np.asarray(decel, dtype=np.float64)
        self.t_stop = np.abs(self.v0) / self.decel
        self.sign = np.sign(self.v0)
        self.t_end = self.t0 + float(np.max(self.t_stop)) if len(self.t_stop) else self.t0

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) at ``t`` (the start state before ``t0``)."""
        tau = np.minimum(max(t - self.t0, 0.0), self.t_stop)
        v = np.where(tau >= self.t_stop, 0.0, self.v0 - self.sign * self.decel * tau)  # exact 0 at rest
        q = self.q0 + self.v0 * tau - 0.5 * self.sign * self.decel * tau * tau
        return q, v

    def stopped(self, t: float) -> bool:
        """Whether every joint has come to rest by ``t``."""
        return t >= self.t_end

    @property
    def final_position(self) -> np.ndarray:
        """Where the braking ends."""
        return self.q0 + 0.5 * self.v0 * self.t_stop


def smoothstep5(x: float) -> tuple[float, float]:
    """Quintic smoothstep ``10x^3 - 15x^4 + 6x^5`` on [0, 1] and its derivative d/dx."""
    x = min(max(x, 0.0), 1.0)
    return x**3 * (10.0 + x * (-15.0 + 6.0 * x)), 30.0 * x * x * (1.0 - x) ** 2


class ChunkController:
    """Executes action chunks at the control rate (see the module docstring).

    Not thread-safe: the owner serialises calls.
    """

    def __init__(self, config: ControllerConfig):
        """Create a controller in ``waiting`` mode."""
        self.cfg = config
        self.buffer = ChunkBuffer(config.buffer_config())
        self._amax = config.limits.max_acceleration
        self.mode = WAITING
        self.estop_engaged = False
        self.last_reason = ""
        self.cycles = 0
        self.clamped_cycles = 0
        self._q: np.ndarray | None = None  # last command
        self._v_secant: np.ndarray | None = None  # (q - q_prev) / dt, what the limiter compares with
        self._v: np.ndarray | None = None  # velocity of the last command (the reference's when unclamped)
        self._velocity_catching_up = False  # the published velocity still trails self._v (after clamping)
        self._t: float = 0.0  # time of the last command
        self._dt_prev: float | None = None
        self._stop: StopProfile | None = None
        self._ramp_start = 0.0
        self._ramp_s = config.ramp_in_s
        self._last: Command | None = None
        self._not_before = -math.inf  # chunks computed from observations older than this are refused
        self.resets = 0

    # --- inputs -----------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        """Whether the controller has a state to start from."""
        return self._q is not None

    def initialize(self, position: np.ndarray, now: float) -> bool:
        """Start from a measured position (first call only; later calls are ignored).

        The hold target is the position clipped into the limits, so a joint measured slightly past a
        limit is brought back gently by the limiter instead of jumping.

        Returns:
            True if this call initialised the controller.

        Raises:
            ValueError: if ``position`` has the wrong shape or is not finite.
        """
        if self.initialized:
            return False
        q = np.asarray(position, dtype=np.float64)
        if q.shape != (len(self.cfg.joint_names),) or not np.all(np.isfinite(q)):
            raise ValueError(f"initial position must be {len(self.cfg.joint_names)} finite values, got {q}")
        lim = self.cfg.limits
        self._q = q.copy()
        self._v = np.zeros_like(q)
        self._v_secant = np.zeros_like(q)
        self._velocity_catching_up = False
        self._t = float(now)
        self._stop = StopProfile(np.clip(q, lim.lower, lim.upper), np.zeros_like(q), now, self._amax)
        self.mode = ESTOP if self.estop_engaged else HOLDING
        self._last = Command(float(now), q.copy(), np.zeros_like(q), self.mode)
        return True

    def reset(self, now: float) -> None:
        """Forget the robot's state and every chunk: a new episode starts (the robot was moved).

        The controller goes back to ``waiting``; the owner re-initialises it from the first joint state
        measured at or after ``now``. Chunks computed from observations before ``now`` are refused from
        then on (they describe the world before the reset). The e-stop state is kept.
        """
        self.buffer.clear()
        self.buffer.forget_history()
        self._q = self._v = self._v_secant = None
        self._stop = None
        self._last = None
        self._dt_prev = None
        self._not_before = float(now)
        self.mode = WAITING
        self.resets += 1
        self.last_reason = f"reset at {now:.3f} s: waiting for a joint state"

    @property
    def reset_time(self) -> float:
        """Time of the last :meth:`reset` (-inf if none)."""
        return self._not_before

    def offer(self, chunk: ActionChunk, now: float) -> Verdict:
        """Offer a chunk received at ``now``; rejected while waiting or e-stopped (see ChunkBuffer.offer)."""
        if self.estop_engaged:
            problems = ("e-stop engaged",)
        elif not self.initialized:
            problems = ("no joint state yet (controller waiting)",)
        elif chunk.obs_stamp < self._not_before:
            problems = (
                f"computed from an observation {self._not_before - chunk.obs_stamp:.3f} s before the last "
                "reset",
            )
        else:
            verdict = self.buffer.offer(chunk, now)
            if not verdict.accepted:
                self.last_reason = self.buffer.last_reason
            return verdict
        self.last_reason = self.buffer.reject(chunk.chunk_id, problems)
        return Verdict(False, problems)

    def reject_external(self, chunk_id: int, problems: list[str] | tuple[str, ...]) -> str:
        """Count a chunk the owner rejected before conversion (e.g. a malformed message)."""
        self.last_reason = self.buffer.reject(chunk_id, problems)
        return self.last_reason

    def engage_estop(self, source: str = "") -> None:
        """Engage the e-stop now: drop chunks and brake to a hold (idempotent)."""
        if self.estop_engaged:
            return
        self.estop_engaged = True
        self.buffer.clear()
        self.last_reason = "e-stop engaged" + (f" ({source})" if source else "")
        if self.initialized:
            self._begin_stop(self.cfg.estop_deceleration_scale)
            self.mode = ESTOP

    def release_estop(self, source: str = "") -> None:
        """Release the e-stop; the controller keeps braking/holding until a new chunk arrives."""
        if not self.estop_engaged:
            return
        self.estop_engaged = False
        self.last_reason = "e-stop released" + (f" ({source})" if source else "")
        if self.initialized:
            self.mode = HOLDING if self._stop is not None and self._stop.stopped(self._t) else DECELERATING

    # --- the cycle --------------------------------------------------------------------------------

    def step(self, now: float) -> Command | None:
        """Compute the command for time ``now`` (None while waiting).

        A time that does not advance returns the previous command unchanged; a time that goes
        backwards (a simulation reset) drops every chunk and brakes from the current state.
        """
        if not self.initialized:
            return None
        dt = now - self._t
        if dt <= 0:
            if dt < 0:
                self.buffer.clear()
                self.buffer.forget_history()
                self._t = float(now)
                self._dt_prev = None
                self._begin_stop(
                    self.cfg.estop_deceleration_scale if self.estop_engaged else self.cfg.deceleration_scale
                )
                self.mode = ESTOP if self.estop_engaged else DECELERATING
                self.last_reason = f"clock jumped backwards by {-dt:.3f} s: chunks dropped, braking"
            return self._last

        if not self.estop_engaged:
            if self.buffer.due(now):
                self._activate()
            reason = self.buffer.expire(now)
            if reason is not None and self.mode in (TRACKING, RAMPING):
                self._begin_stop(self.cfg.deceleration_scale)
                self.mode = DECELERATING
                self.last_reason = "decelerating: " + reason

        if self.mode == TRACKING and self.buffer.active is None:
            # Defensive: tracking without a chunk cannot happen through the public API; brake.
            self._begin_stop(self.cfg.deceleration_scale)
            self.mode = DECELERATING
        if self.mode == RAMPING and now - self._ramp_start >= self._ramp_s:
            self.mode = TRACKING  # the blend is exactly the chunk from here (smoothstep reached 1)
        target, target_v = self._reference(now)
        # The same reference at the previous command's time tells the limiter how far behind it is.
        prev_target, _ = self._reference(self._t)
        out = enforce_limits(
            target,
            self._q,
            self._v_secant,
            dt,
            self.cfg.limits,
            prev_target=prev_target,
            prev_dt=self._dt_prev,
        )
        self._q = out.position
        self._v_secant = out.velocity
        v = out.velocity if out.clamped else np.asarray(target_v, dtype=np.float64)
        # The command's velocity (a feed-forward for trajectory controllers) obeys the limit too: a
        # reference slightly faster than allowed between two unclamped positions must not leak out.
        vmax = self.cfg.limits.max_velocity
        self._v = np.clip(v, -vmax, vmax)
        self._t = float(now)
        self._dt_prev = dt
        self.cycles += 1
        if out.clamped:
            self.clamped_cycles += 1

        if self.mode == DECELERATING and self._stop.stopped(now) and self._is_still(dt):
            # Hold where the command actually stopped (a limit may have bent the braking).
            self._stop = StopProfile(self._q, np.zeros_like(self._q), now, self._amax)
            self.mode = HOLDING
        self._last = Command(float(now), self._q.copy(), self._published_velocity(out.clamped, dt), self.mode,
                             out.active)  # fmt: skip
        return self._last

    def _published_velocity(self, clamped: bool, dt: float) -> np.ndarray:
        """The command's velocity field, continuous where the limiter acted.

        A clamped cycle's velocity is the limiter's secant, an unclamped one the reference's
        derivative; switching between the two can jump by more than ``max_acceleration * dt`` (seen
        over DDS: 1.39x at a seam that needed the limiter). On a clamped cycle, and after it until
        the published value has caught up with the internal one, it changes by at most that much
        per cycle. Cycles without the limiter publish the internal velocity unchanged.
        """
        v = self._v
        if clamped or self._velocity_catching_up:
            prev = self._last.velocity
            vmax = self.cfg.limits.max_velocity
            v = np.clip(np.clip(v, prev - self._amax * dt, prev + self._amax * dt), -vmax, vmax)
            self._velocity_catching_up = not np.array_equal(v, self._v)
        return v.copy()

    def _is_still(self, dt: float) -> bool:
        # Slower than one cycle of braking: the next cycle could stop it without exceeding the limit.
        return bool(np.all(np.abs(self._v_secant) <= self._amax * dt + 1e-9))

    def _begin_stop(self, scale: float) -> None:
        self._stop = StopProfile(self._q, self._v, self._t, self._amax * scale)

    def _activate(self) -> None:
        """Splice the due pending chunk in at the last command's time (whose state is exact)."""
        ts = self._t
        if self.mode == TRACKING:
            self.buffer.activate(ts, self._q, self._v)
        elif self.mode == RAMPING and self.buffer.active is not None:
            # Match the previous chunk reference, not the blended command: the blend stays continuous.
            prev = self.buffer.reference(ts)
            self.buffer.activate(ts, prev.position, prev.velocity)
        elif self.cfg.ramp_in_s > 0:
            # From holding/decelerating: the ramp is the transition (it starts at the stop trajectory).
            # It lasts ramp_in_s, or longer when the chunk starts far away, so that the blend's own
            # velocity and acceleration stay within the splice budget.
            active = self.buffer.activate(ts)
            hq, hv = self._stop.at(ts)
            r = active.sample(ts)
            window = blend_window(
                r.position - hq, r.velocity - hv, self.buffer.accel_budget, self.buffer.velocity_budget
            )
            self._ramp_s = max(self.cfg.ramp_in_s, window)
            self._ramp_start = ts
            self.mode = RAMPING
        else:
            self.buffer.activate(ts, self._q, self._v)
            self.mode = TRACKING

    def _reference(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) the current mode asks for at ``t`` (no side effects)."""
        if self.mode == RAMPING:
            a, da = smoothstep5((t - self._ramp_start) / self._ramp_s)
            da /= self._ramp_s
            hq, hv = self._stop.at(t)
            r = self.buffer.reference(t)
            diff = r.position - hq
            return hq + a * diff, hv + a * (r.velocity - hv) + da * diff
        if self.mode == TRACKING:
            r = self.buffer.reference(t)
            return r.position, r.velocity
        return self._stop.at(t)

    # --- status -----------------------------------------------------------------------------------

    @property
    def last_command(self) -> Command | None:
        """The most recent command (None while waiting)."""
        return self._last

    def snapshot(self, now: float) -> ControllerSnapshot:
        """Mode, active chunk and counters at ``now``."""
        c = self.buffer.counters
        active = self.buffer.active
        return ControllerSnapshot(
            mode=self.mode,
            active_chunk_id=int(active.chunk_id) if active is not None else 0,
            remaining_s=self.buffer.remaining(now),
            chunks_accepted=c.accepted,
            chunks_rejected=c.rejected,
            chunks_superseded=c.superseded,
            chunks_activated=c.activated,
            dropped_steps=c.dropped_steps,
            timeouts=c.timeouts,
            exhausted=c.exhausted,
            cycles=self.cycles,
            clamped_cycles=self.clamped_cycles,
            last_reason=self.last_reason,
            estop_engaged=self.estop_engaged,
            last_limits=self._last.limits_active if self._last is not None else frozenset(),
        )
