# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Latency-aware inference scheduling: run the next inference just early enough.

The policy node runs inference sequentially in one worker. Each chunk covers a finite time span; the
next chunk must reach the controller before the executing one runs out, or the controller has to
decelerate to a hold. Starting inference as late as that allows uses the freshest observation and
the least compute; starting it too late starves the controller. The start time therefore comes from
the *measured* latency distribution (:class:`LatencyStats`), never from an assumed one.

The rule (all times in seconds on the node clock)::

    T_end     = time of the last step of the chunk being executed (the newest published chunk)
    L95       = measured 95th-percentile inference latency over the recent window
    m         = margin: transport + controller splice + scheduler wake-up jitter
    deadline  = T_end - L95 - m           # latest start whose chunk still arrives before T_end
    s_next    = clamp(deadline, s_prev + 1/max_rate, s_prev + 1/min_rate)
    s_next    = max(s_next, now)          # the worker cannot start in the past

``s_prev`` is the start time of the previous inference. The upper clamp (``min_rate``) bounds how
long the policy goes without looking at the world even when chunks are long; the lower clamp
(``max_rate``) bounds the compute spent. Without an executing chunk (start-up, or the last one has
run out, e.g. after skipped ticks) or before any latency has been measured (warm-up samples are
dropped), the worker runs as soon as the maximum rate allows: that is the conservative choice, and
it measures the latency that the rule then uses. When the rate limit or a late wake-up puts
``s_next`` after ``deadline`` the decision is flagged ``late`` (the chunk eats into the margin); the
node warns when it will arrive after ``T_end`` (the controller then decelerates to a hold).

Latency is measured on a monotonic wall clock; the schedule is on the node clock. Under simulated
time the two agree only at a real-time factor of 1.

Usage:
    stats = LatencyStats(window=50, warmup=2)
    sched = InferenceScheduler(stats, min_rate_hz=1.0, max_rate_hz=20.0, margin_s=0.1)
    d = sched.next_start(now=t, last_start=s_prev, chunk_end=chunk.t_end)
    sleep_until(d.t_next); ...; stats.add(latency_s)
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

# The policy node's scheduling defaults (its parameters), shared with the in-process evaluation so
# that both re-plan on the same schedule.
DEFAULT_MIN_RATE_HZ = 4.0
DEFAULT_MAX_RATE_HZ = 20.0
DEFAULT_MARGIN_S = 0.1
DEFAULT_WINDOW = 50
DEFAULT_WARMUP = 2


class LatencyStats:
    """Rolling inference latency statistics over the last ``window`` measured calls.

    The first ``warmup`` calls are dropped from the statistics: they include one-off costs (lazy
    initialisation, allocator and cache warm-up, kernel compilation) that would inflate the p95 for
    a whole window and make the schedule needlessly early.

    Thread-safe: the inference thread adds while a status timer reads percentiles.

    Args:
        window: number of recent samples the percentiles are computed over (>= 1).
        warmup: number of initial samples ignored (>= 0).

    Raises:
        ValueError: on a window < 1 or a negative warm-up count.
    """

    def __init__(self, window: int = 50, warmup: int = 2) -> None:
        if window < 1 or warmup < 0:
            raise ValueError(f"window must be >= 1 and warmup >= 0, got window={window}, warmup={warmup}")
        self.window = int(window)
        self.warmup = int(warmup)
        self._samples: deque[float] = deque(maxlen=self.window)
        self._seen = 0
        self.last: float | None = None
        self._lock = threading.Lock()

    def add(self, seconds: float) -> bool:
        """Record one latency in seconds; returns whether it entered the statistics.

        Non-finite or negative values are ignored (and not counted toward the warm-up).
        """
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            return False
        with self._lock:
            self.last = seconds
            self._seen += 1
            if self._seen <= self.warmup:
                return False
            self._samples.append(seconds)
            return True

    def reset(self) -> None:
        """Forget every sample, including the warm-up count."""
        with self._lock:
            self._samples.clear()
            self._seen = 0
            self.last = None

    @property
    def count(self) -> int:
        """Samples currently in the window."""
        return len(self._samples)

    @property
    def seen(self) -> int:
        """Calls recorded since the last reset, warm-up included."""
        return self._seen

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100, linear interpolation) of the window, or None if empty."""
        with self._lock:
            if not self._samples:
                return None
            values = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        return float(np.percentile(values, q))

    @property
    def p50(self) -> float | None:
        """Median latency in seconds, or None before any measured sample."""
        return self.percentile(50.0)

    @property
    def p95(self) -> float | None:
        """95th-percentile latency in seconds, or None before any measured sample."""
        return self.percentile(95.0)


@dataclass(frozen=True)
class ScheduleDecision:
    """When to start the next inference, and why.

    Attributes:
        t_next: absolute start time (node clock, seconds), never before ``now``.
        deadline: latest start whose chunk arrives (at p95 latency + margin) before the executing
            chunk ends; ``inf`` when there is no chunk or no latency estimate yet.
        reason: which rule set ``t_next``: ``no_chunk``, ``warming_up``, ``deadline``,
            ``max_rate`` (rate cap delayed it), ``min_rate`` (re-plan floor advanced it) or ``now``
            (already due).
        late: ``t_next`` is after ``deadline``: the chunk is expected to arrive later than the margin
            before the executing chunk's end (or after it).
        expected_arrival: ``t_next + p95 latency`` (``t_next`` when unknown).
    """

    t_next: float
    deadline: float
    reason: str
    late: bool = False
    expected_arrival: float = 0.0


class InferenceScheduler:
    """Decides when the next inference starts (see the module docstring for the rule).

    Args:
        stats: the latency statistics to read the p95 from (the caller adds samples).
        min_rate_hz: re-plan at least this often; 0 disables the floor.
        max_rate_hz: never start inferences more often than this (> 0).
        margin_s: time reserved after the expected arrival before the executing chunk ends (>= 0).

    Raises:
        ValueError: on rates or margin out of range (max_rate_hz <= 0, min_rate_hz < 0,
            min_rate_hz > max_rate_hz, negative or non-finite margin).
    """

    def __init__(
        self, stats: LatencyStats, *, min_rate_hz: float, max_rate_hz: float, margin_s: float
    ) -> None:
        problems = []
        if not (math.isfinite(max_rate_hz) and max_rate_hz > 0):
            problems.append(f"max_rate_hz must be > 0, got {max_rate_hz}")
        if not (math.isfinite(min_rate_hz) and min_rate_hz >= 0):
            problems.append(f"min_rate_hz must be >= 0, got {min_rate_hz}")
        elif min_rate_hz > max_rate_hz:
            problems.append(f"min_rate_hz {min_rate_hz} must be <= max_rate_hz {max_rate_hz}")
        if not (math.isfinite(margin_s) and margin_s >= 0):
            problems.append(f"margin_s must be >= 0 and finite, got {margin_s}")
        if problems:
            raise ValueError("; ".join(problems))
        self.stats = stats
        self.min_period = 1.0 / min_rate_hz if min_rate_hz > 0 else math.inf
        self.min_interval = 1.0 / max_rate_hz
        self.margin_s = float(margin_s)

    def next_start(
        self, *, now: float, last_start: float | None, chunk_end: float | None
    ) -> ScheduleDecision:
        """When to start the next inference.

        Args:
            now: current time.
            last_start: start time of the previous inference (None before the first).
            chunk_end: time of the last step of the executing chunk (None when there is none).

        Returns:
            The decision; ``t_next >= now`` always.
        """
        earliest = now if last_start is None else last_start + self.min_interval
        latest = math.inf if last_start is None else last_start + self.min_period
        l95 = self.stats.p95
        if chunk_end is None or l95 is None:
            reason = "no_chunk" if chunk_end is None else "warming_up"
            t = max(earliest, now)
            return ScheduleDecision(t_next=t, deadline=math.inf, reason=reason, late=False,
                                    expected_arrival=t + (l95 or 0.0))
        deadline = chunk_end - l95 - self.margin_s
        t, reason = deadline, "deadline"
        if t < earliest:
            t, reason = earliest, "max_rate"
        if t > latest:
            t, reason = latest, "min_rate"
        if t < now:
            t, reason = now, "now" if reason == "deadline" else reason
        return ScheduleDecision(t_next=t, deadline=deadline, reason=reason, late=t > deadline + 1e-9,
                                expected_arrival=t + l95)
