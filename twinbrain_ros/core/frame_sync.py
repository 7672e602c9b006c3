# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Latest-sample-per-stream observation synchronisation with per-stream freshness gating.

A policy tick needs one sample of every stream (each camera, the joint state). :class:`FrameSync`
keeps a short history of samples per stream, each with its header stamp, and for a tick selects, per
stream, the newest sample stamped at or before an "as-of" time (normally now). A tick is usable only
when every stream has such a sample and none is older than that stream's maximum age; otherwise
:meth:`FrameSync.select` says which streams are missing or stale and by how much, so the node can
skip the tick with a reason instead of feeding the policy an old picture of the world.

Times are float seconds on one clock (the node's ROS clock) and are passed in: this module never
reads a clock, so it is deterministic to test and works unchanged under simulated time.

Usage:
    sync = FrameSync({"front": 0.2, "joint_states": 0.1})
    sync.add("front", image, stamp=msg_stamp)
    sync.add("joint_states", q, stamp=js_stamp)
    res = sync.select(now)
    if res.ok:
        image, q = res.value("front"), res.value("joint_states")
    else:
        log(res.reason)        # e.g. "stale: front 0.412 s old (max 0.200 s); missing: joint_states"
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from twinbrain_ros.core.validation import ValidationError


@dataclass(frozen=True)
class Sample:
    """One sample of a stream.

    Attributes:
        value: the payload (an image array, a joint position vector, ...).
        stamp: the sample's header stamp, seconds.
    """

    value: Any
    stamp: float


@dataclass(frozen=True)
class SyncResult:
    """The outcome of one :meth:`FrameSync.select`.

    Attributes:
        ok: every stream has a fresh sample at or before ``as_of``.
        samples: stream name -> selected sample (only streams that have one).
        ages: stream name -> ``now - stamp`` of the selected sample, or None when there is none.
        missing: streams with no sample at or before ``as_of``.
        stale: streams whose selected sample is older than their maximum age.
        reason: a one-line human-readable reason when not ``ok``; empty otherwise.
        now: the time the selection was made at.
        as_of: the time samples had to be stamped at or before.
    """

    ok: bool
    samples: Mapping[str, Sample]
    ages: Mapping[str, float | None]
    missing: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    reason: str = ""
    now: float = 0.0
    as_of: float = 0.0

    def value(self, name: str) -> Any:
        """The payload of the sample selected for ``name`` (KeyError if none)."""
        return self.samples[name].value

    def stamp(self, name: str) -> float:
        """The stamp of the sample selected for ``name`` (KeyError if none)."""
        return self.samples[name].stamp


@dataclass
class _Stream:
    max_age: float
    history: deque = field(default_factory=deque)


class FrameSync:
    """Keeps the latest samples per stream and selects a fresh, consistent set for a policy tick.

    Thread-safe: subscription callbacks may :meth:`add` from several threads while an inference
    thread calls :meth:`select`.

    Args:
        max_age_s: stream name -> largest allowed ``now - stamp`` in seconds (``inf`` disables the
            check for that stream). Its keys define the streams and their reporting order.
        history: samples kept per stream for as-of selection (>= 1).
        future_tolerance_s: a sample stamped up to this much after ``as_of`` still counts as "at or
            before" it; absorbs small clock offsets between publishing processes.

    Raises:
        ValueError: on an empty stream set, a negative/NaN maximum age or a history < 1.
    """

    def __init__(
        self, max_age_s: Mapping[str, float], history: int = 4, future_tolerance_s: float = 0.0
    ) -> None:
        problems = []
        if not max_age_s:
            problems.append("FrameSync needs at least one stream")
        for name, age in max_age_s.items():
            if not (isinstance(age, (int, float)) and age > 0 and not math.isnan(age)):
                problems.append(f"max age of stream '{name}' must be > 0, got {age!r}")
        if history < 1:
            problems.append(f"history must be >= 1, got {history}")
        if not (future_tolerance_s >= 0 and math.isfinite(future_tolerance_s)):
            problems.append(f"future_tolerance_s must be >= 0 and finite, got {future_tolerance_s!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self._streams = {
            name: _Stream(float(age), deque(maxlen=int(history))) for name, age in max_age_s.items()
        }
        self._future_tol = float(future_tolerance_s)
        self._lock = threading.Lock()

    @property
    def stream_names(self) -> tuple[str, ...]:
        """Stream names in the order they were given."""
        return tuple(self._streams)

    def max_age(self, name: str) -> float:
        """Maximum allowed age of stream ``name`` in seconds."""
        return self._stream(name).max_age

    def _stream(self, name: str) -> _Stream:
        try:
            return self._streams[name]
        except KeyError:
            raise KeyError(f"unknown stream '{name}' (streams: {list(self._streams)})") from None

    def add(self, name: str, value: Any, stamp: float) -> None:
        """Record a sample of stream ``name``.

        Samples must arrive in stamp order per stream (an equal stamp is accepted as the newest); an
        older stamp is rejected because accepting it would let a delayed message silently replace
        newer data.

        Raises:
            KeyError: if ``name`` is not a stream of this synchroniser.
            ValidationError: if ``stamp`` is not finite or older than the newest sample's stamp.
        """
        st = self._stream(name)
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValidationError([f"{name}: stamp {stamp} is not finite"])
        with self._lock:
            if st.history and stamp < st.history[-1].stamp:
                newest = st.history[-1].stamp
                raise ValidationError(
                    [f"{name}: stamp {stamp:.6f} is older than the previous one {newest:.6f} "
                     "(time went backwards)"]
                )
            st.history.append(Sample(value, stamp))

    def latest(self, name: str) -> Sample | None:
        """The newest sample of ``name``, or None."""
        st = self._stream(name)
        with self._lock:
            return st.history[-1] if st.history else None

    def ages(self, now: float) -> dict[str, float | None]:
        """Stream name -> age of its newest sample (``now - stamp``), or None if never received."""
        with self._lock:
            return {n: (now - s.history[-1].stamp) if s.history else None for n, s in self._streams.items()}

    def clear(self) -> None:
        """Forget every sample (e.g. on deactivation, so a re-activation never uses old data)."""
        with self._lock:
            for st in self._streams.values():
                st.history.clear()

    def select(self, now: float, as_of: float | None = None) -> SyncResult:
        """Select, per stream, the newest sample stamped at or before ``as_of`` and gate on freshness.

        Args:
            now: the current time; ages are ``now - stamp``.
            as_of: the time samples must be stamped at or before (plus the future tolerance);
                defaults to ``now``. Replaying a log at a past instant passes that instant.

        Returns:
            A :class:`SyncResult`; ``ok`` is False with a ``reason`` naming every missing stream
            and every stale one (with its age and limit).
        """
        as_of = now if as_of is None else float(as_of)
        limit = as_of + self._future_tol
        samples: dict[str, Sample] = {}
        ages: dict[str, float | None] = {}
        missing: list[str] = []
        stale: list[str] = []
        notes: list[str] = []
        with self._lock:
            for name, st in self._streams.items():
                chosen = None
                for s in reversed(st.history):
                    if s.stamp <= limit:
                        chosen = s
                        break
                if chosen is None:
                    missing.append(name)
                    ages[name] = None
                    if st.history:  # only samples from after as_of: say so, it points at a clock issue
                        ahead = st.history[-1].stamp - as_of
                        notes.append(f"{name} newest sample is {ahead:.3f} s after as-of")
                    continue
                samples[name] = chosen
                age = now - chosen.stamp
                ages[name] = age
                if age > st.max_age:
                    stale.append(name)
        parts = []
        if stale:
            parts.append(
                "stale: "
                + ", ".join(
                    f"{n} {ages[n]:.3f} s old (max {self._streams[n].max_age:.3f} s)" for n in stale
                )
            )
        if missing:
            parts.append("missing: " + ", ".join(missing) + (f" ({'; '.join(notes)})" if notes else ""))
        ok = not parts
        return SyncResult(
            ok=ok,
            samples=samples,
            ages=ages,
            missing=tuple(missing),
            stale=tuple(stale),
            reason="; ".join(parts),
            now=float(now),
            as_of=as_of,
        )
