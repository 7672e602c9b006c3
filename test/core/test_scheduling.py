# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Latency statistics and the inference start-time rule (see core/scheduling.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinbrain_ros.core.scheduling import InferenceScheduler, LatencyStats


def test_warmup_dropped_and_window_rolls():
    st = LatencyStats(window=4, warmup=2)
    assert st.p50 is None and st.p95 is None
    assert st.add(5.0) is False and st.add(4.0) is False  # warm-up: slow first calls ignored
    assert st.p95 is None and st.last == 4.0 and st.seen == 2
    for v in (0.1, 0.2, 0.3, 0.4):
        assert st.add(v)
    assert st.count == 4
    assert st.p50 == pytest.approx(0.25)
    assert st.p95 == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 95))
    st.add(1.0)  # oldest (0.1) falls out of the window
    assert st.count == 4 and st.p50 == pytest.approx(0.35)
    assert not st.add(math.nan) and not st.add(-1.0) and st.last == 1.0
    st.reset()
    assert st.count == 0 and st.last is None and not st.add(0.1)  # warm-up applies again


def sched(latencies=(0.2,) * 10, min_rate=1.0, max_rate=20.0, margin=0.1):
    st = LatencyStats(window=50, warmup=0)
    for v in latencies:
        st.add(v)
    return InferenceScheduler(st, min_rate_hz=min_rate, max_rate_hz=max_rate, margin_s=margin)


def test_deadline_from_measured_p95_and_margin():
    s = sched(latencies=[0.1] * 19 + [0.5])  # p95 sits in the tail, not at the median
    p95 = s.stats.p95
    assert p95 > 0.1
    d = s.next_start(now=100.0, last_start=100.0, chunk_end=101.0)
    assert d.reason == "deadline" and not d.late
    assert d.t_next == pytest.approx(101.0 - p95 - 0.1)
    assert d.expected_arrival == pytest.approx(d.t_next + p95)
    assert d.expected_arrival + s.margin_s == pytest.approx(101.0)


def test_no_chunk_or_no_latency_runs_as_soon_as_allowed():
    s = sched(max_rate=10.0)
    d = s.next_start(now=5.0, last_start=None, chunk_end=None)
    assert d.t_next == 5.0 and d.reason == "no_chunk" and d.deadline == math.inf
    d = s.next_start(now=5.01, last_start=5.0, chunk_end=None)
    assert d.t_next == pytest.approx(5.1)  # max rate still applies
    empty = sched(latencies=())
    d = empty.next_start(now=5.0, last_start=4.0, chunk_end=6.0)
    assert d.reason == "warming_up" and d.t_next == 5.0


def test_max_rate_delays_and_flags_late():
    s = sched(latencies=[0.3] * 5, max_rate=2.0)  # at most one start per 0.5 s
    d = s.next_start(now=10.0, last_start=10.0, chunk_end=10.6)
    # deadline = 10.6 - 0.3 - 0.1 = 10.2 < 10.5 earliest allowed
    assert d.reason == "max_rate" and d.t_next == pytest.approx(10.5)
    assert d.late and d.deadline == pytest.approx(10.2)


def test_min_rate_advances_for_long_chunks():
    s = sched(latencies=[0.05] * 5, min_rate=4.0)
    d = s.next_start(now=0.0, last_start=0.0, chunk_end=10.0)
    assert d.reason == "min_rate" and d.t_next == pytest.approx(0.25) and not d.late
    no_floor = sched(latencies=[0.05] * 5, min_rate=0.0)
    assert no_floor.next_start(now=0.0, last_start=0.0, chunk_end=10.0).t_next == pytest.approx(9.85)


def test_never_in_the_past():
    s = sched()
    d = s.next_start(now=20.0, last_start=19.5, chunk_end=20.1)  # deadline 19.8 already passed
    assert d.t_next == 20.0 and d.reason == "now" and d.late


def test_simulated_loop_chunks_arrive_before_previous_ends():
    """Replay the worker loop with jittered latency: every chunk lands before the previous one ends."""
    rng = np.random.default_rng(0)
    st = LatencyStats(window=30, warmup=2)
    s = InferenceScheduler(st, min_rate_hz=1.0, max_rate_hz=50.0, margin_s=0.05)
    horizon_s = 0.75
    now, last_start, chunk_end = 0.0, None, None
    misses = 0
    for i in range(300):
        d = s.next_start(now=now, last_start=last_start, chunk_end=chunk_end)
        start = d.t_next
        lat = float(np.clip(rng.normal(0.2, 0.01), 0.15, 0.25)) + (0.5 if i == 0 else 0.0)
        st.add(lat)
        arrival = start + lat
        if chunk_end is not None and i > 5 and arrival > chunk_end:
            misses += 1
        last_start, chunk_end, now = start, start + horizon_s, arrival
    assert misses == 0


@pytest.mark.parametrize(
    ("lo", "hi", "margin"), [(5.0, 1.0, 0.1), (0.0, 0.0, 0.0), (1.0, 2.0, -1.0), (-1.0, 2.0, 0.0)]
)
def test_bad_config(lo, hi, margin):
    with pytest.raises(ValueError):
        InferenceScheduler(LatencyStats(), min_rate_hz=lo, max_rate_hz=hi, margin_s=margin)
    with pytest.raises(ValueError):
        LatencyStats(window=0)
