# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""FrameSync: latest sample per stream, as-of selection, freshness gating, reasons."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from twinbrain_ros.core.frame_sync import FrameSync
from twinbrain_ros.core.validation import ValidationError


def make():
    return FrameSync({"front": 0.2, "wrist": 0.2, "joint_states": 0.05}, history=3)


def test_ok_when_every_stream_fresh():
    s = make()
    s.add("front", "f1", 10.0)
    s.add("wrist", "w1", 10.02)
    s.add("joint_states", np.zeros(2), 10.09)
    r = s.select(now=10.1)
    assert r.ok and r.reason == ""
    assert r.value("front") == "f1" and r.stamp("wrist") == 10.02
    assert r.ages["front"] == pytest.approx(0.1)
    assert r.ages["joint_states"] == pytest.approx(0.01)


def test_missing_streams_named():
    s = make()
    s.add("front", "f", 1.0)
    r = s.select(now=1.0)
    assert not r.ok
    assert r.missing == ("wrist", "joint_states")
    assert r.reason == "missing: wrist, joint_states"
    assert r.ages["wrist"] is None


def test_stale_stream_named_with_age_and_limit():
    s = make()
    s.add("front", "f", 1.0)
    s.add("wrist", "w", 1.25)
    s.add("joint_states", 0, 1.28)
    r = s.select(now=1.3)
    assert not r.ok and r.stale == ("front",)
    assert r.reason == "stale: front 0.300 s old (max 0.200 s)"
    # stale and missing together, both named
    s2 = make()
    s2.add("front", "f", 0.0)
    r2 = s2.select(now=1.0)
    assert r2.reason.startswith("stale: front 1.000 s old") and "missing: wrist, joint_states" in r2.reason


def test_latest_wins_and_as_of_selects_older_sample():
    s = FrameSync({"a": 10.0}, history=3)
    for t in (1.0, 2.0, 3.0):
        s.add("a", t * 10, t)
    assert s.select(now=3.5).value("a") == 30.0
    r = s.select(now=3.5, as_of=2.5)
    assert r.value("a") == 20.0 and r.ages["a"] == pytest.approx(1.5)
    # history is bounded: as-of before the oldest kept sample -> missing, with a hint
    s.add("a", 40.0, 4.0)
    r = s.select(now=4.0, as_of=1.5)
    assert not r.ok and r.missing == ("a",) and "after as-of" in r.reason


def test_future_samples_excluded_unless_within_tolerance():
    s = FrameSync({"a": 1.0})
    s.add("a", "x", 5.01)
    assert not s.select(now=5.0).ok
    tol = FrameSync({"a": 1.0}, future_tolerance_s=0.02)
    tol.add("a", "x", 5.01)
    r = tol.select(now=5.0)
    assert r.ok and r.ages["a"] == pytest.approx(-0.01)


def test_backwards_and_non_finite_stamps_rejected():
    s = make()
    s.add("front", "a", 2.0)
    s.add("front", "same-stamp", 2.0)  # equal stamps are fine
    with pytest.raises(ValidationError, match="time went backwards"):
        s.add("front", "b", 1.9)
    with pytest.raises(ValidationError, match="not finite"):
        s.add("front", "c", math.nan)
    assert s.latest("front").value == "same-stamp"
    with pytest.raises(KeyError, match="unknown stream 'rear'"):
        s.add("rear", "x", 1.0)


def test_ages_report_newest_and_clear():
    s = make()
    s.add("front", 1, 1.0)
    ages = s.ages(1.5)
    assert list(ages) == ["front", "wrist", "joint_states"]
    assert ages["front"] == pytest.approx(0.5) and ages["wrist"] is None
    s.clear()
    assert s.ages(2.0)["front"] is None


def test_infinite_max_age_disables_gate():
    s = FrameSync({"a": math.inf})
    s.add("a", 1, 0.0)
    assert s.select(now=1e6).ok


@pytest.mark.parametrize("bad", [{}, {"a": 0.0}, {"a": -1.0}, {"a": math.nan}])
def test_bad_construction(bad):
    with pytest.raises(ValueError):
        FrameSync(bad)


def test_concurrent_add_and_select():
    s = FrameSync({"a": 1.0, "b": 1.0}, history=2)
    stop = threading.Event()
    errors = []

    def writer(name):
        t = 0.0
        while not stop.is_set():
            t += 1e-4
            s.add(name, t, t)

    threads = [threading.Thread(target=writer, args=(n,)) for n in "ab"]
    for th in threads:
        th.start()
    try:
        for _ in range(2000):
            r = s.select(now=1e9, as_of=1e9)
            if r.samples and any(r.value(n) != r.stamp(n) for n in r.samples):
                errors.append(r)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not errors
