# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""MCAP teleoperation episodes -> a LeRobot v3 dataset, resampled on the fps grid.

Each episode is aligned with :class:`~twinbrain_ros.core.frame_sync.FrameSync`, the policy node's
live synchroniser: for every grid time ``t_k = t0 + k / fps`` the samples of every stream stamped at
or before ``t_k`` (plus an optional future tolerance for clock offsets) are added and
``select(t_k)`` picks the newest per stream and flags streams older than their maximum age, exactly
what a live policy tick at ``t_k`` would see. The grid is phase-locked to the first camera: it starts
a little (the camera's estimated stamp jitter) after a camera frame, like a live tick that runs when a
frame has arrived, and spans the interval in which every stream has data (the rest is trimmed and
reported). Streams: ``observation.state``
(joint states, in contract joint order), ``action`` (the teleop command: a leader arm's
JointState, a JointTrajectory's first point, a Float64MultiArray or an ActionChunk's first step) and
one ``observation.images.<camera>`` per contract camera.

Sync statistics per stream (reported and stored in ``meta/twinbrain.json``):

* skew: ``|t_k - stamp|`` of the selected sample (p50, p95, max, ms);
* repeated: grid frames that reuse the previous frame's sample (no new sample arrived);
* skipped: samples no grid frame used (two arrived within one frame period);
* stale: grid frames whose sample is older than the stream's maximum age;
* dropped frames (per episode): grid frames in which a camera repeated its frame or any stream was
  stale. An episode with more than ``max_stale_fraction`` stale frames is rejected.

Bad input never leaves a complete-looking dataset: the contract of every episode is checked
against the reference (``--embodiment`` or the first episode), every required topic must be present
with the expected type, and the dataset is written into a hidden temporary directory that is renamed
into place only after everything succeeded (see :class:`~twinbrain_ros.data.lerobot_v3.LeRobotV3Writer`).

Usage:
    report = convert_episodes(["data/episodes"], "datasets/pick_cube", ConvertOptions(fps=30))
    print(report.format_text())
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from twinbrain_ros.core.embodiment import Embodiment, load_embodiment
from twinbrain_ros.core.frame_sync import FrameSync
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.data import mcap_episode as me
from twinbrain_ros.data.lerobot_v3 import LeRobotV3Writer, make_features

ACTION_TYPES = (
    "sensor_msgs/msg/JointState",
    "trajectory_msgs/msg/JointTrajectory",
    "std_msgs/msg/Float64MultiArray",
    "twinbrain_ros/msg/ActionChunk",
)
STATE_TYPE = "sensor_msgs/msg/JointState"
IMAGE_TYPE = "sensor_msgs/msg/Image"


class ConvertError(ValidationError):
    """The conversion failed; ``problems`` names each bad file and what is wrong with it."""


@dataclass
class ConvertOptions:
    """Options of :func:`convert_episodes`.

    Attributes:
        fps: dataset frame rate (integer); default: the contract's camera rate.
        embodiment: contract name or YAML path every episode must be compatible with; default: the
            contract embedded in the first episode.
        include_partial: also convert partial (read up to the damage) and recovered episodes.
        only_success: convert only episodes marked successful.
        skip_bad: skip (and report) bad episodes instead of failing the whole conversion.
        scene_group: episodes come in consecutive groups of this many, one scene under each
            instruction (``twinbrain record-sim --each-task``; 0 = no groups). A group is kept or
            dropped whole: with ``only_success`` one failed episode drops its partners too (so that
            ``twinbrain train --scene-group`` still finds every scene's pair), and with ``skip_bad``
            an unreadable one does. The files, in name order, must split into such groups.
        tolerance_s: FrameSync future tolerance (clock offsets between publishers), s.
        phase_s: delay of the grid after the first camera's frames; default estimated from the
            camera's stamp jitter (3 sigma + 0.5 ms, at most half a frame).
        max_age_s: maximum sample age for every stream; default per stream max(3 periods, 2 frames).
        max_stale_fraction: reject an episode with more stale frames than this fraction.
        time_source: ``header`` (message header stamps; receive time for header-less types) or
            ``log`` (receive time for every stream).
        state_topic / action_topic: override the topics recorded in the episode's roles.
        task_field: ``instruction`` or ``task``: which episode field becomes the LeRobot task.
        robot_type: ``info.json`` robot_type; default the contract name.
        png_compress_level: PNG zlib level of stored images.
        overwrite: replace an existing output dataset.
    """

    fps: int | None = None
    embodiment: str | None = None
    include_partial: bool = False
    only_success: bool = False
    skip_bad: bool = False
    scene_group: int = 0
    tolerance_s: float = 0.0
    phase_s: float | None = None
    max_age_s: float | None = None
    max_stale_fraction: float = 0.1
    time_source: str = "header"
    state_topic: str | None = None
    action_topic: str | None = None
    task_field: str = "instruction"
    robot_type: str | None = None
    png_compress_level: int = 1
    overwrite: bool = False


@dataclass
class StreamSync:
    """Sync statistics of one stream over one episode."""

    skew_s: np.ndarray
    repeated: int = 0
    skipped: int = 0
    stale: int = 0
    samples: int = 0
    out_of_order: int = 0
    rejected: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (skews in ms)."""
        a = np.abs(self.skew_s) * 1e3
        return {
            "samples": self.samples,
            "p50_skew_ms": round(float(np.percentile(a, 50)), 3) if a.size else None,
            "p95_skew_ms": round(float(np.percentile(a, 95)), 3) if a.size else None,
            "max_skew_ms": round(float(a.max()), 3) if a.size else None,
            "repeated": self.repeated,
            "skipped": self.skipped,
            "stale": self.stale,
            "out_of_order": self.out_of_order,
            "rejected": self.rejected,
        }


@dataclass
class ConvertReport:
    """What :func:`convert_episodes` did."""

    output: str
    fps: int
    episodes: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    total_frames: int = 0
    seconds: float = 0.0
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        """Dataset frames written per second of conversion time."""
        return self.total_frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able report."""
        return {
            "output": self.output,
            "fps": self.fps,
            "episodes": self.episodes,
            "skipped": self.skipped,
            "total_frames": self.total_frames,
            "seconds": round(self.seconds, 3),
            "frames_per_s": round(self.frames_per_s, 1),
            "dropped_frames": sum(e["dropped_frames"] for e in self.episodes),
            "streams": self.streams,
        }

    def format_text(self) -> str:
        """A human-readable summary table."""
        lines = [
            f"converted {len(self.episodes)} episode(s), {self.total_frames} frames at {self.fps} fps "
            f"-> {self.output} ({self.seconds:.1f} s, {self.frames_per_s:.0f} frames/s)",
            f"{'stream':40s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} "
            f"{'repeat':>7s} {'skip':>6s} {'stale':>6s}",
        ]
        for name, s in self.streams.items():
            lines.append(
                f"{name:40s} {s['p50_skew_ms']:8.2f} {s['p95_skew_ms']:8.2f} {s['max_skew_ms']:8.2f} "
                f"{s['repeated']:7d} {s['skipped']:6d} {s['stale']:6d}"
            )
        dropped = sum(e["dropped_frames"] for e in self.episodes)
        lines.append(f"dropped frames (a camera repeated or a stream was stale): {dropped}")
        for e in self.episodes:
            if e.get("gaps"):
                lines.append(f"  recorder gaps in {Path(e['source']).name}: {e['gaps']}")
        for s in self.skipped:
            lines.append(f"skipped {s['source']}: {s['reason']}")
        return "\n".join(lines)


# --- inputs -----------------------------------------------------------------------------------------


def collect_episode_files(
    inputs: Sequence[str | os.PathLike], include_partial: bool
) -> tuple[list[Path], list[dict]]:
    """Expand directories into their episode files.

    Returns:
        (files to convert in index order, skipped entries with reasons).

    Raises:
        ConvertError: for an input that does not exist or a directory without episode files.
    """
    files: list[Path] = []
    skipped: list[dict] = []
    problems = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            found = me.scan_episodes(p)
            if not found:
                problems.append(f"'{p}' contains no episode_XXXXXX*.mcap file")
            for _, status, f in found:
                if status == "complete" or include_partial:
                    files.append(f)
                else:
                    skipped.append(
                        {
                            "source": str(f),
                            "reason": f"{status} episode (the recorder did not finish it); recover it with "
                            "'twinbrain record --recover DIR' and convert with --include-partial",
                        }
                    )
        elif p.is_file():
            parsed = me.parse_episode_name(p)
            if parsed and parsed[1] != "complete" and not include_partial:
                problems.append(f"'{p}' is a {parsed[1]} episode; pass --include-partial to convert it")
            else:
                files.append(p)
        else:
            problems.append(f"input '{p}' does not exist")
    if problems:
        raise ConvertError(problems)
    return files, skipped


# --- per-episode extraction -------------------------------------------------------------------------


def _stamp_s(msg: Any, log_ns: int, time_source: str) -> float:
    if time_source == "header":
        header = getattr(msg, "header", None)
        if header is not None:
            st = header.stamp
            ns = int(st.sec) * 1_000_000_000 + int(st.nanosec)
            if ns > 0:
                return ns * 1e-9
    return log_ns * 1e-9


def _reorder(names: Sequence[str], values: Sequence[float], joints: Sequence[str]) -> np.ndarray:
    idx = {n: i for i, n in enumerate(names)}
    missing = [j for j in joints if j not in idx]
    if missing:
        raise ValidationError([f"missing joints {missing} (got {list(names)})"])
    if len(values) < len(names):
        raise ValidationError([f"{len(names)} names but {len(values)} values"])
    out = np.asarray([values[idx[j]] for j in joints], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValidationError(["non-finite values"])
    return out


def action_from_msg(msg: Any, type_name: str, joints: Sequence[str], log_ns: int, time_source: str):
    """(stamp, (J,) joint targets in contract order) from a teleop command message.

    Raises:
        ValidationError: naming why the message is unusable.
    """
    if type_name == "sensor_msgs/msg/JointState":
        return _stamp_s(msg, log_ns, time_source), _reorder(list(msg.name), list(msg.position), joints)
    if type_name == "trajectory_msgs/msg/JointTrajectory":
        if not msg.points:
            raise ValidationError(["trajectory has no points"])
        return _stamp_s(msg, log_ns, time_source), _reorder(
            list(msg.joint_names), list(msg.points[0].positions), joints
        )
    if type_name == "std_msgs/msg/Float64MultiArray":
        data = np.asarray(msg.data, dtype=np.float64)
        if data.shape != (len(joints),) or not np.all(np.isfinite(data)):
            raise ValidationError([f"array of {data.size} values for {len(joints)} joints (or non-finite)"])
        return log_ns * 1e-9, data
    if type_name == "twinbrain_ros/msg/ActionChunk":
        names = list(msg.joint_names)
        pos = list(msg.positions)[: len(names)]
        st = msg.t0
        t = (int(st.sec) + int(st.nanosec) * 1e-9) if time_source == "header" else log_ns * 1e-9
        return (t if t > 0 else log_ns * 1e-9), _reorder(names, pos, joints)
    raise ValidationError([f"unsupported action type '{type_name}' (supported: {list(ACTION_TYPES)})"])


@dataclass
class _Stream:
    name: str
    topic: str
    kind: str  # state | action | image
    rate_hz: float
    stamps: list[float] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    rejected: int = 0
    first_error: str = ""


@dataclass
class _Episode:
    info: me.EpisodeInfo
    streams: dict[str, _Stream]
    camera_of_topic: dict[str, str]


def _plan_streams(info: me.EpisodeInfo, emb: Embodiment, opts: ConvertOptions) -> dict[str, _Stream]:
    roles = info.roles()
    try:
        rates = {k: float(v) for k, v in (json.loads(info.start_meta.get("nominal_rates_hz", "{}"))).items()}
    except (ValueError, TypeError):
        rates = {}
    problems = []
    state_topic = opts.state_topic or roles.get("state")
    action_topic = opts.action_topic or roles.get("action")
    cams = roles.get("cameras") or {c.name: c.topic for c in emb.cameras}
    if not state_topic:
        problems.append("no joint-state topic: the episode has no roles.state and --state-topic is not given")
    if not action_topic:
        problems.append("no action topic: the episode has no roles.action and --action-topic is not given")
    streams: dict[str, _Stream] = {}
    expected = []
    if state_topic:
        expected.append(
            ("observation.state", state_topic, "state", rates.get(state_topic, emb.rates.state_hz))
        )
    if action_topic:
        expected.append(("action", action_topic, "action", rates.get(action_topic, 30.0)))
    for cam in emb.cameras:
        topic = cams.get(cam.name)
        if topic is None:
            problems.append(f"camera '{cam.name}' of the contract has no topic in the episode's roles")
            continue
        expected.append(
            (f"observation.images.{cam.name}", topic, "image", rates.get(topic, emb.rates.camera_hz))
        )
    for name, topic, kind, rate in expected:
        present = _match_topic(topic, info.topics)
        if present is None:
            problems.append(f"missing topic '{topic}' ({name}); topics in the file: {sorted(info.topics)}")
            continue
        ttype = info.topics[present]
        want = {"state": (STATE_TYPE,), "action": ACTION_TYPES, "image": (IMAGE_TYPE,)}[kind]
        if ttype not in want:
            problems.append(f"topic '{present}' ({name}) has type '{ttype}', expected one of {list(want)}")
            continue
        if info.message_counts.get(present, 1) == 0:
            problems.append(f"topic '{present}' ({name}) has no messages")
            continue
        streams[name] = _Stream(name, present, kind, float(rate))
    if problems:
        raise ValidationError(problems)
    return streams


def _match_topic(topic: str, topics: Mapping[str, str]) -> str | None:
    """``topic`` as recorded (with or without a leading slash)."""
    for cand in (topic, "/" + topic.lstrip("/"), topic.lstrip("/")):
        if cand in topics:
            return cand
    return None


def _load_episode(path: Path, ref: Embodiment, opts: ConvertOptions) -> _Episode:
    """Pass 1: metadata, contract check, state/action values and image stamps (images checked, not kept)."""
    from twinbrain_ros.ros.conversions import check_image_msg, joint_state_from_msg

    info = me.read_episode_info(path)
    emb = info.embodiment()
    ref.check_compatible(emb, "dataset", f"episode {path.name}")
    streams = _plan_streams(info, ref, opts)
    by_topic = {s.topic: s for s in streams.values()}
    cam_specs = {
        s.topic: ref.camera(s.name[len("observation.images.") :])
        for s in streams.values()
        if s.kind == "image"
    }
    action_type = info.topics[streams["action"].topic]
    allow_partial = info.status != "complete"
    for topic, log_ns, msg in me.iter_messages(path, topics=list(by_topic), allow_partial=allow_partial):
        s = by_topic[topic]
        try:
            if s.kind == "state":
                _, q, _ = joint_state_from_msg(msg, ref.joint_names)
                s.stamps.append(_stamp_s(msg, log_ns, opts.time_source))
                s.values.append(q)
            elif s.kind == "action":
                t, a = action_from_msg(msg, action_type, ref.joint_names, log_ns, opts.time_source)
                s.stamps.append(t)
                s.values.append(a)
            else:
                problems = check_image_msg(msg, cam_specs[topic])
                if problems:
                    raise ValidationError(problems)
                s.stamps.append(_stamp_s(msg, log_ns, opts.time_source))
                s.values.append(len(s.values))  # ordinal of this image among the topic's messages
        except ValidationError as e:
            s.rejected += 1
            s.first_error = s.first_error or str(e)
            if s.kind == "image":
                s.values.append(None)  # keep ordinals aligned with the message order
                s.stamps.append(math.nan)
    problems = []
    for s in streams.values():
        good = sum(1 for v in s.values if v is not None)
        if good == 0:
            problems.append(
                f"topic '{s.topic}' ({s.name}) has no usable message"
                + (f" ({s.rejected} rejected, first: {s.first_error})" if s.rejected else "")
            )
        elif s.kind == "image" and s.rejected:
            problems.append(
                f"camera topic '{s.topic}': {s.rejected} image(s) rejected, first: {s.first_error}"
            )
    if problems:
        raise ValidationError(problems)
    cams = {s.topic: s.name for s in streams.values() if s.kind == "image"}
    return _Episode(info, streams, cams)


# --- alignment --------------------------------------------------------------------------------------


def estimate_phase(stamps: np.ndarray, fps: int) -> float:
    """Grid delay after the anchor camera's frames: covers their stamp jitter (3 sigma + 0.5 ms).

    The jitter is estimated robustly from the frame intervals (MAD); the delay is clipped to
    [0.5 ms, half a frame period].
    """
    st = np.sort(np.asarray(stamps, dtype=np.float64)[np.isfinite(stamps)])
    if st.size < 3:
        return 0.0005
    d = np.diff(st)
    jitter = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    return float(np.clip(3.0 * jitter + 0.0005, 0.0005, 0.5 / fps))


def resample(
    stamps: Mapping[str, np.ndarray],
    fps: int,
    tolerance_s: float,
    max_age_s: Mapping[str, float],
    anchor: str | None = None,
    phase_s: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, StreamSync]]:
    """Align streams on the ``1/fps`` grid with :class:`FrameSync` (the policy node's as-of logic).

    The grid is phase-locked to the ``anchor`` stream (the first camera): it starts ``phase_s``
    after the first anchor sample at which every stream has data, so each grid time falls just after
    a camera frame, as a live policy tick does. At each grid time every stream's newest sample
    stamped at or before it (plus ``tolerance_s``) is selected, as live. The grid ends with the
    earliest-ending stream.

    Args:
        stamps: stream -> sample stamps in seconds (any order; NaN = unusable sample).
        fps: grid rate.
        tolerance_s: FrameSync's future tolerance (clock offsets between publishers).
        max_age_s: stream -> maximum age before a selected sample counts as stale.
        anchor: stream the grid is phase-locked to (default: none, the grid starts when all
            streams have data).
        phase_s: delay of the grid after the anchor's frames; default :func:`estimate_phase`.

    Returns:
        (grid times (N,), stream -> (N,) index of the selected sample into ``stamps[stream]``,
        stream -> sync statistics).

    Raises:
        ValidationError: if the streams do not overlap in time.
    """
    order: dict[str, np.ndarray] = {}
    sorted_st: dict[str, np.ndarray] = {}
    stats: dict[str, StreamSync] = {}
    for name, st in stamps.items():
        st = np.asarray(st, dtype=np.float64)
        valid = np.flatnonzero(np.isfinite(st))
        o = valid[np.argsort(st[valid], kind="stable")]
        order[name] = o
        sorted_st[name] = st[o]
        fin = st[valid]
        stats[name] = StreamSync(
            skew_s=np.zeros(0),
            samples=int(valid.size),
            out_of_order=int(np.sum(np.diff(fin) < 0)) if fin.size else 0,
        )
    firsts = {n: s[0] for n, s in sorted_st.items() if s.size}
    lasts = {n: s[-1] for n, s in sorted_st.items() if s.size}
    if len(firsts) != len(stamps):
        raise ValidationError([f"streams without samples: {sorted(set(stamps) - set(firsts))}"])
    start = max(firsts.values()) - tolerance_s
    phase = 0.0
    t0 = start
    if anchor is not None:
        phase = estimate_phase(sorted_st[anchor], fps) if phase_s is None else float(phase_s)
        cands = sorted_st[anchor][sorted_st[anchor] + phase >= start]
        t0 = float(cands[0]) + phase if cands.size else start
    t_end = min(lasts.values()) + phase
    if t_end < t0 or min(lasts.values()) < start:
        late = max(firsts, key=firsts.get)
        early = min(lasts, key=lasts.get)
        raise ValidationError(
            [
                f"streams do not overlap in time: '{late}' starts at {firsts[late]:.3f} s but '{early}' "
                f"ends at {lasts[early]:.3f} s (different clocks? try time_source='log')"
            ]
        )
    n = int(math.floor((t_end - t0) * fps + 1e-6)) + 1
    grid = t0 + np.arange(n, dtype=np.float64) / fps
    sync = FrameSync(
        {name: float(max_age_s[name]) for name in stamps}, history=4, future_tolerance_s=tolerance_s
    )
    ptr = dict.fromkeys(stamps, 0)
    sel = {name: np.empty(n, dtype=np.int64) for name in stamps}
    ages = {name: np.empty(n, dtype=np.float64) for name in stamps}
    for k, t in enumerate(grid):
        limit = t + tolerance_s
        for name, st in sorted_st.items():
            p = ptr[name]
            while p < st.size and st[p] <= limit:
                sync.add(name, p, float(st[p]))
                p += 1
            ptr[name] = p
        res = sync.select(float(t))
        for name in stamps:
            if name not in res.samples:  # cannot happen after t0; keep the first sample if it does
                sel[name][k] = 0
                ages[name][k] = t - sorted_st[name][0]
                stats[name].stale += 1
                continue
            sel[name][k] = int(res.value(name))
            ages[name][k] = float(res.ages[name])
        for name in res.stale:
            stats[name].stale += 1
    out_idx = {}
    for name in stamps:
        s = sel[name]
        stats[name].skew_s = ages[name]
        stats[name].repeated = int(np.sum(s[1:] == s[:-1]))
        used = np.unique(s)
        first, last = int(s[0]), int(s[-1])
        stats[name].skipped = int((last - first + 1) - used.size)
        out_idx[name] = order[name][s]
    return grid, out_idx, stats


# --- conversion -------------------------------------------------------------------------------------


def _default_max_age(rate_hz: float, fps: int) -> float:
    return max(3.0 / max(rate_hz, 1e-6), 2.0 / fps)


def convert_episodes(
    inputs: Sequence[str | os.PathLike], output: str | os.PathLike, options: ConvertOptions | None = None
) -> ConvertReport:
    """Convert MCAP episodes (files or directories) into a LeRobot v3 dataset at ``output``.

    Raises:
        ConvertError: naming every bad input (and nothing is left at ``output``).
    """
    opts = options or ConvertOptions()
    t_start = time.perf_counter()
    if opts.time_source not in ("header", "log"):
        raise ConvertError([f"time_source must be 'header' or 'log', got {opts.time_source!r}"])
    if opts.task_field not in ("instruction", "task"):
        raise ConvertError([f"task_field must be 'instruction' or 'task', got {opts.task_field!r}"])
    out = Path(output)
    if out.exists() and not opts.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError([f"output '{out}' already exists and is not empty (pass overwrite to replace it)"])
    files, skipped = collect_episode_files(inputs, opts.include_partial)
    ref = _reference_embodiment(files, opts)
    fps = int(opts.fps) if opts.fps else int(round(ref.rates.camera_hz)) if ref.cameras else 30
    if fps <= 0:
        raise ConvertError([f"fps must be a positive integer, got {fps}"])
    tol = float(opts.tolerance_s)
    if not (0.0 <= tol < 1.0 / fps):
        raise ConvertError([f"tolerance_s must be in [0, 1/fps), got {tol}"])
    report = ConvertReport(output=str(out), fps=fps, skipped=skipped)
    files = _whole_scene_groups(files, opts, report)
    cams = {c.name: (c.height, c.width, 3) for c in ref.cameras}
    features = make_features(ref.joint_names, cams)
    writer: LeRobotV3Writer | None = None
    all_skews: dict[str, list[np.ndarray]] = {}
    totals: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    try:
        writer = LeRobotV3Writer(
            out,
            fps,
            features,
            robot_type=opts.robot_type or ref.name,
            png_compress_level=opts.png_compress_level,
            overwrite=opts.overwrite,
        )
        for path in files:
            try:
                ep = _load_episode(path, ref, opts)
                if opts.only_success and ep.info.success is not True:
                    report.skipped.append({"source": str(path), "reason": "not marked successful"})
                    continue
                row = _convert_one(ep, path, writer, fps, tol, opts)
            except (ValidationError, me.EpisodeError) as e:
                msg = f"{path}: {e}"
                if opts.skip_bad:
                    report.skipped.append({"source": str(path), "reason": str(e)})
                    continue
                problems.append(msg)
                continue
            report.episodes.append(row)
            report.total_frames += row["frames"]
            for name, sync in row.pop("_sync").items():
                all_skews.setdefault(name, []).append(sync.skew_s)
                t = totals.setdefault(name, {"repeated": 0, "skipped": 0, "stale": 0, "samples": 0})
                for k in t:
                    t[k] += getattr(sync, k)
        if problems:
            raise ConvertError(problems)
        if not report.episodes:
            reasons = (
                "; ".join(f"{Path(s['source']).name}: {s['reason']}" for s in report.skipped) or "no input"
            )
            raise ConvertError([f"no episode to convert ({reasons})"])
        for name, parts in all_skews.items():
            a = np.abs(np.concatenate(parts)) * 1e3
            report.streams[name] = {
                "p50_skew_ms": round(float(np.percentile(a, 50)), 3),
                "p95_skew_ms": round(float(np.percentile(a, 95)), 3),
                "max_skew_ms": round(float(a.max()), 3),
                **totals[name],
            }
        report.seconds = time.perf_counter() - t_start
        writer.finalize(
            {
                "source": "twinbrain_ros convert",
                "embodiment": ref.to_dict(),
                "fps": fps,
                "tolerance_s": tol,
                "time_source": opts.time_source,
                "report": report.to_dict(),
            }
        )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    report.seconds = time.perf_counter() - t_start
    return report


def _whole_scene_groups(files: list[Path], opts: ConvertOptions, report: ConvertReport) -> list[Path]:
    """The files of the scene groups (``opts.scene_group``) in which no episode will be dropped.

    A group loses all its episodes (each reported in ``report.skipped``) when one of them is not
    marked successful (with ``only_success``) or cannot be read (with ``skip_bad``; without it the
    conversion fails on that file as usual). Episodes that fail later, during conversion proper
    (stale streams), are not foreseen here: ``twinbrain train --scene-group`` then names the groups
    whose tasks no longer line up.

    Raises:
        ConvertError: if ``scene_group`` is negative or the files do not split into groups of it.
    """
    g = int(opts.scene_group)
    if g < 0:
        raise ConvertError([f"scene_group must be >= 0, got {g}"])
    if g <= 1:
        return files
    if len(files) % g:
        raise ConvertError([f"{len(files)} episode files do not split into scene groups of {g}"])
    kept: list[Path] = []
    for i in range(0, len(files), g):
        group, why = files[i : i + g], None
        for f in group:
            try:
                info = me.read_episode_info(f)
            except me.EpisodeError as e:
                if not opts.skip_bad:
                    break  # the conversion proper fails on it, naming the file
                why = f"{f.name} is unreadable: {e}"
                break
            if opts.only_success and info.success is not True:
                why = f"{f.name} is not marked successful"
                break
        if why is None:
            kept.extend(group)
            continue
        report.skipped += [{"source": str(f), "reason": f"scene group {i // g}: {why}"} for f in group]
    return kept


def _reference_embodiment(files: Sequence[Path], opts: ConvertOptions) -> Embodiment:
    if opts.embodiment:
        try:
            return load_embodiment(opts.embodiment)
        except (FileNotFoundError, ValidationError) as e:
            raise ConvertError([f"embodiment '{opts.embodiment}': {e}"]) from e
    problems = []
    for f in files:
        try:
            return me.read_episode_info(f).embodiment()
        except me.EpisodeError as e:
            problems.append(str(e))
            if not opts.skip_bad:
                break
    raise ConvertError(problems or ["no episode file to convert"])


def _convert_one(
    ep: _Episode, path: Path, writer: LeRobotV3Writer, fps: int, tol: float, opts: ConvertOptions
) -> dict[str, Any]:
    streams = ep.streams
    max_age = {
        n: (opts.max_age_s if opts.max_age_s is not None else _default_max_age(s.rate_hz, fps))
        for n, s in streams.items()
    }
    cam_names = [nm for nm, s in streams.items() if s.kind == "image"]
    stamps = {n: np.asarray(s.stamps, dtype=np.float64) for n, s in streams.items()}
    grid, idx, sync = resample(
        stamps, fps, tol, max_age, anchor=cam_names[0] if cam_names else None, phase_s=opts.phase_s
    )
    n = grid.size
    for name, st in sync.items():
        st.rejected = streams[name].rejected
        if st.stale > opts.max_stale_fraction * n:
            raise ValidationError(
                [
                    f"stream '{name}' (topic '{streams[name].topic}') is stale in {st.stale} of {n} frames "
                    f"(more than {opts.max_stale_fraction:.0%}): it stopped or lagged by more than "
                    f"{max_age[name]:.3f} s; recorder gaps: {ep.info.gaps.get(streams[name].topic, [])}"
                ]
            )
    dropped = np.zeros(n, dtype=bool)
    for name in streams:
        s = idx[name]
        if name in cam_names:
            dropped[1:] |= s[1:] == s[:-1]
    stale_any = np.zeros(n, dtype=bool)
    for name in streams:
        ages = sync[name].skew_s
        stale_any |= ages > max_age[name]
    dropped |= stale_any
    task = ep.info.instruction if opts.task_field == "instruction" else ep.info.task
    task = task.strip() or ep.info.task.strip()
    if not task:
        raise ValidationError(["the episode has no instruction/task: the dataset needs a task string"])
    writer.start_episode(task, n)
    state = np.stack(streams["observation.state"].values)[idx["observation.state"]]
    action = np.stack(streams["action"].values)[idx["action"]]
    if not cam_names:
        for k in range(n):
            writer.add_frame({"observation.state": state[k], "action": action[k]})
    else:
        _write_frames_with_images(ep, path, writer, idx, state, action, cam_names, n)
    row = writer.end_episode()
    t0 = float(grid[0])
    finite = [st[np.isfinite(st)] for st in stamps.values()]
    recorded = max(float(f.max()) for f in finite) - min(float(f.min()) for f in finite)
    return {
        "source": str(path),
        "episode_index": row["episode_index"],
        "recorded_index": ep.info.index,
        "status": ep.info.status,
        "task": task,
        "success": ep.info.success,
        "frames": n,
        "duration_s": round(n / fps, 3),
        "recorded_s": round(recorded, 3),
        "trimmed_s": round(max(0.0, recorded - n / fps), 3),
        "t0": t0,
        "dropped_frames": int(dropped.sum()),
        "gaps": ep.info.gaps,
        "sync": {name: s.summary() for name, s in sync.items()},
        "_sync": sync,
    }


def _write_frames_with_images(
    ep: _Episode,
    path: Path,
    writer: LeRobotV3Writer,
    idx: Mapping[str, np.ndarray],
    state: np.ndarray,
    action: np.ndarray,
    cam_names: Sequence[str],
    n: int,
) -> None:
    """Pass 2: stream the images once, keeping only those some pending frame still needs."""
    from twinbrain_ros.ros.conversions import image_from_msg

    need: dict[str, dict[int, int]] = {}
    for c in cam_names:
        counts: dict[int, int] = {}
        for o in idx[c].tolist():
            counts[o] = counts.get(o, 0) + 1
        need[c] = counts
    cache: dict[str, dict[int, np.ndarray]] = {c: {} for c in cam_names}
    ordinal = dict.fromkeys(cam_names, 0)
    topics = {ep.streams[c].topic: c for c in cam_names}
    k = 0
    allow_partial = ep.info.status != "complete"

    def emit_ready() -> None:
        nonlocal k
        while k < n and all(int(idx[c][k]) in cache[c] for c in cam_names):
            frame: dict[str, Any] = {"observation.state": state[k], "action": action[k]}
            for c in cam_names:
                o = int(idx[c][k])
                frame[c] = cache[c][o]
                need[c][o] -= 1
                if need[c][o] == 0:
                    del cache[c][o]
            writer.add_frame(frame)
            k += 1

    for topic, _log_ns, msg in me.iter_messages(path, topics=list(topics), allow_partial=allow_partial):
        c = topics[topic]
        o = ordinal[c]
        ordinal[c] = o + 1
        if need[c].get(o):
            cache[c][o] = np.array(image_from_msg(msg), copy=True)
            emit_ready()
    if k != n:
        raise ValidationError([f"episode images changed between passes ({k} of {n} frames found)"])
