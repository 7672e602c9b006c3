# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""One teleoperation episode = one rosbag2-compatible MCAP file, written so a crash loses nothing finished.

File life cycle (``<dir>/episode_XXXXXX...``):

* ``episode_000007.partial.mcap`` while recording. Created exclusively (never overwrites), flushed
  every ``flush`` call, so a ``kill -9`` leaves at most the last flush period unsaved and the
  file's name says it is partial.
* ``episode_000007.mcap`` after :meth:`EpisodeWriter.finish`: summary and footer written, file
  fsynced, then atomically renamed and the directory fsynced. A finished episode is never opened
  for writing again.
* ``episode_000007.recovered.mcap`` made by :func:`recover_partial` from a partial file: every
  intact record is copied and the end metadata says ``status: partial``.

Format: MCAP ``ros2`` profile, ``ros2msg`` schemas with their dependencies (what ``ros2 bag record
-s mcap`` writes; ``ros2 bag info/play`` and Foxglove read it), ``cdr`` messages holding the bytes
rclpy received (subscriptions with ``raw=True``) and each channel's ``offered_qos_profiles``.
Episode information lives in the file itself:

* attachment ``embodiment.yaml``: the embodiment contract the recorder ran with;
* metadata ``twinbrain.episode`` (at start): instruction, task, index, topic roles and nominal rates;
* metadata ``twinbrain.episode_end`` (at finish): status, success flag, counts and the gap report;
* topic ``/twinbrain/instruction`` (std_msgs/String): the instruction, for viewers.

Read back with mcap-ros2-support's decoder (rosbags' strict CDR parser rejects some rclpy bytes).

Usage:
    w = EpisodeWriter(out_dir, index=next_episode_index(out_dir), contract_yaml=emb.to_yaml(),
                      instruction="pick up the cube")
    ch = w.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    w.write(ch, raw_bytes, log_time_ns)
    final_path = w.finish(success=True, gaps=tracker.finish(stop_ns))

    info = read_episode_info(final_path)
    for topic, log_ns, msg in iter_messages(final_path): ...
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from twinbrain_ros.core.validation import ValidationError

FORMAT_VERSION = "twinbrain_episode/1"
META_START = "twinbrain.episode"
META_END = "twinbrain.episode_end"
CONTRACT_ATTACHMENT = "embodiment.yaml"
INSTRUCTION_TOPIC = "/twinbrain/instruction"
PREFIX = "episode_"
SUFFIX_COMPLETE = ".mcap"
SUFFIX_PARTIAL = ".partial.mcap"
SUFFIX_RECOVERED = ".recovered.mcap"
_NAME_RE = re.compile(r"^episode_(\d{6,})(\.partial|\.recovered)?\.mcap$")
_NS = 1_000_000_000
PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring",
}  # fmt: skip


class EpisodeError(ValueError):
    """Base class of episode file errors; the message names the file and the problem."""


class EpisodeWriteError(EpisodeError):
    """An episode file could not be created or written (permissions, disk full, ...)."""


class EpisodeReadError(EpisodeError):
    """An episode file is unreadable, corrupt, or lacks what the reader needs."""


# --- names ------------------------------------------------------------------------------------------


def episode_path(directory: str | os.PathLike, index: int, status: str = "complete") -> Path:
    """``<directory>/episode_XXXXXX{.partial,.recovered,}.mcap`` for ``status``."""
    suffix = {"complete": SUFFIX_COMPLETE, "partial": SUFFIX_PARTIAL, "recovered": SUFFIX_RECOVERED}[status]
    return Path(directory) / f"{PREFIX}{index:06d}{suffix}"


def parse_episode_name(path: str | os.PathLike) -> tuple[int, str] | None:
    """(index, status) of an episode file name, or None if it is not one."""
    m = _NAME_RE.match(Path(path).name)
    if not m:
        return None
    status = {None: "complete", ".partial": "partial", ".recovered": "recovered"}[m.group(2)]
    return int(m.group(1)), status


def scan_episodes(directory: str | os.PathLike) -> list[tuple[int, str, Path]]:
    """Every episode file in ``directory`` as (index, status, path), sorted by index then status."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        parsed = parse_episode_name(p)
        if parsed is not None and p.is_file():
            out.append((parsed[0], parsed[1], p))
    return sorted(out, key=lambda t: (t[0], t[1]))


def next_episode_index(directory: str | os.PathLike) -> int:
    """One more than the highest index of any episode file (complete, partial or recovered)."""
    found = scan_episodes(directory)
    return max((i for i, _, _ in found), default=-1) + 1


# --- schemas and QoS --------------------------------------------------------------------------------


def _msg_search_dirs() -> list[Path]:
    import sys

    dirs = [Path(p) / "share" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(sys.prefix) / "share")
    return dirs


def _find_msg_file(pkg: str, name: str) -> Path | None:
    for d in _msg_search_dirs():
        cand = d / pkg / "msg" / f"{name}.msg"
        if cand.is_file():
            return cand
    if pkg == "twinbrain_ros":  # running from the source tree before the package is installed
        cand = Path(__file__).resolve().parents[2] / "msg" / f"{name}.msg"
        if cand.is_file():
            return cand
    return None


def _split_type(type_name: str) -> tuple[str, str]:
    parts = type_name.split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValidationError([f"'{type_name}' is not a message type name like 'pkg/msg/Type'"])


def _field_types(text: str, pkg: str) -> list[str]:
    """Complex field types ('pkg/Type') a .msg text depends on, in order of appearance."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 2 or "=" in tokens[1] or (len(tokens) > 2 and tokens[2].startswith("=")):
            continue  # constants
        base = re.sub(r"\[.*\]$", "", tokens[0])
        base = re.sub(r"<=\d+$", "", base)
        if base in PRIMITIVES:
            continue
        if "/" not in base:
            base = "std_msgs/Header" if base == "Header" else f"{pkg}/{base}"
        out.append(base.replace("/msg/", "/"))
    return out


@functools.cache
def message_definition(type_name: str) -> str:
    """The ``ros2msg`` schema text of a message type, with all its dependencies appended.

    The layout is rosbag2's: the type's own ``.msg`` text, then for each dependency a line of 80
    ``=`` and ``MSG: pkg/Type`` followed by that type's text.

    Raises:
        ValidationError: if a ``.msg`` file of the type or one of its dependencies is not installed.
    """
    pkg, name = _split_type(type_name)
    root = _find_msg_file(pkg, name)
    if root is None:
        raise ValidationError([f"message definition of '{type_name}' not found under {_msg_search_dirs()}"])
    text = root.read_text(encoding="utf-8")
    parts = [text.rstrip("\n")]
    seen: set[str] = {f"{pkg}/{name}"}
    queue = _field_types(text, pkg)
    while queue:
        dep = queue.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        dpkg, dname = dep.split("/")
        f = _find_msg_file(dpkg, dname)
        if f is None:
            raise ValidationError([f"message definition of '{dep}' (needed by '{type_name}') not found"])
        dtext = f.read_text(encoding="utf-8")
        parts.append("=" * 80 + f"\nMSG: {dep}\n" + dtext.rstrip("\n"))
        queue.extend(_field_types(dtext, dpkg))
    return "\n".join(parts) + "\n"


def _duration_yaml(d: Any) -> dict[str, int]:
    ns = int(getattr(d, "nanoseconds", d) or 0)
    if ns < 0 or ns >= 9223372036854775807:
        return {"sec": 9223372036, "nsec": 854775807}
    return {"sec": ns // _NS, "nsec": ns % _NS}


def _policy_name(v: Any) -> str:
    name = getattr(v, "name", None)
    if name is None:
        return str(v).lower()
    return str(name).lower()


def qos_profiles_yaml(profiles: Iterable[Any]) -> str:
    """rosbag2's ``offered_qos_profiles`` channel metadata (YAML, policy names as strings).

    Args:
        profiles: rclpy ``QoSProfile`` objects (e.g. from ``node.get_publishers_info_by_topic``).
    """
    out = []
    for p in profiles:
        out.append(
            {
                "history": _policy_name(p.history),
                "depth": int(p.depth),
                "reliability": _policy_name(p.reliability),
                "durability": _policy_name(p.durability),
                "deadline": _duration_yaml(p.deadline),
                "lifespan": _duration_yaml(p.lifespan),
                "liveliness": _policy_name(p.liveliness),
                "liveliness_lease_duration": _duration_yaml(p.liveliness_lease_duration),
                "avoid_ros_namespace_conventions": bool(p.avoid_ros_namespace_conventions),
            }
        )
    return yaml.safe_dump(out, sort_keys=False) if out else ""


# --- gaps -------------------------------------------------------------------------------------------


class GapTracker:
    """Finds the intervals in which a topic published nothing for longer than expected.

    A gap is a silence longer than ``max(factor / rate, min_gap_s)``: between two messages, from the
    episode start to the first message, from the last message to the stop, or (``no_messages``) the
    whole episode. Times are nanoseconds on the recorder's clock.

    Args:
        rates_hz: topic -> nominal rate in Hz (the expected message period is its inverse).
        start_ns: the episode start.
        factor: how many nominal periods of silence make a gap.
        min_gap_s: the smallest silence ever reported, seconds.
    """

    def __init__(
        self, rates_hz: Mapping[str, float], start_ns: int, factor: float = 5.0, min_gap_s: float = 0.1
    ) -> None:
        self.start_ns = int(start_ns)
        self.threshold_ns = {
            t: int(max(factor / max(float(r), 1e-9), min_gap_s) * _NS) for t, r in rates_hz.items()
        }
        self.last_ns: dict[str, int | None] = dict.fromkeys(rates_hz)
        self.counts: dict[str, int] = dict.fromkeys(rates_hz, 0)
        self.gaps: dict[str, list[dict[str, Any]]] = {t: [] for t in rates_hz}

    def _gap(self, topic: str, a: int, b: int, kind: str) -> None:
        self.gaps[topic].append(
            {
                "start_s": round((a - self.start_ns) / _NS, 6),
                "end_s": round((b - self.start_ns) / _NS, 6),
                "duration_s": round((b - a) / _NS, 6),
                "kind": kind,
            }
        )

    def observe(self, topic: str, t_ns: int) -> float | None:
        """Count a message of ``topic`` at ``t_ns``; returns the gap's length in s if it ended one."""
        if topic not in self.threshold_ns:
            return None
        last = self.last_ns[topic]
        ref = self.start_ns if last is None else last
        gap = None
        if t_ns - ref > self.threshold_ns[topic]:
            self._gap(topic, ref, t_ns, "start" if last is None else "mid")
            gap = (t_ns - ref) / _NS
        self.last_ns[topic] = t_ns if last is None else max(last, t_ns)
        self.counts[topic] += 1
        return gap

    def silent(self, now_ns: int) -> dict[str, float]:
        """Topics silent for longer than their threshold at ``now_ns`` -> seconds of silence."""
        out = {}
        for t, thr in self.threshold_ns.items():
            ref = self.last_ns[t] if self.last_ns[t] is not None else self.start_ns
            if now_ns - ref > thr:
                out[t] = (now_ns - ref) / _NS
        return out

    def finish(self, stop_ns: int) -> dict[str, list[dict[str, Any]]]:
        """The gap report at the episode stop: topic -> gaps (only topics that had one)."""
        for t, thr in self.threshold_ns.items():
            last = self.last_ns[t]
            if last is None:
                self._gap(t, self.start_ns, stop_ns, "no_messages")
            elif stop_ns - last > thr:
                self._gap(t, last, stop_ns, "end")
        return {t: g for t, g in self.gaps.items() if g}

    def thresholds_s(self) -> dict[str, float]:
        """Topic -> silence threshold in seconds."""
        return {t: v / _NS for t, v in self.threshold_ns.items()}


# --- writer -----------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, what: str, e: OSError) -> EpisodeWriteError:
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a path component is not a directory",
        errno.ENOENT: "the directory does not exist",
    }.get(e.errno or 0, e.strerror or str(e))
    return EpisodeWriteError(f"cannot {what} episode file '{path}': {hint} ({e.__class__.__name__}: {e})")


def check_output_dir(directory: str | os.PathLike, min_free_mb: float = 0.0) -> Path:
    """Create ``directory`` if needed and check it is a writable directory with enough free space.

    Returns:
        The directory as a Path.

    Raises:
        EpisodeWriteError: naming the directory and the problem.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise EpisodeWriteError(f"output directory '{d}' is not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EpisodeWriteError(f"output directory '{d}' cannot be created: {e.strerror or e}") from e
    if not d.is_dir():
        raise EpisodeWriteError(f"output directory '{d}' is not a directory")
    probe = d / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
        probe.unlink()
    except OSError as e:
        raise EpisodeWriteError(f"output directory '{d}' is not writable: {e.strerror or e}") from e
    free_mb = free_space_mb(d)
    if free_mb < min_free_mb:
        raise EpisodeWriteError(
            f"output directory '{d}' has only {free_mb:.0f} MB free "
            f"(below the minimum of {min_free_mb:.0f} MB): the disk is (nearly) full"
        )
    return d


def free_space_mb(directory: str | os.PathLike) -> float:
    """Free space available to this user in ``directory``'s file system, in MB."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize / 1e6


class EpisodeWriter:
    """Writes one episode to ``<dir>/episode_XXXXXX.partial.mcap`` and publishes it on :meth:`finish`.

    Not thread-safe: call it from one thread (or under a lock).

    Args:
        directory: the output directory (must exist and be writable).
        index: the episode index (see :func:`next_episode_index`).
        contract_yaml: the embodiment contract (``Embodiment.to_yaml()``), embedded as an attachment.
        instruction: the natural-language instruction.
        task: an optional short task id (empty: the instruction).
        info: extra start metadata (string values or JSON-able values).
        compression: chunk compression, ``none``, ``lz4`` or ``zstd``.
        chunk_size: bytes per MCAP chunk (a chunk is written when full or on :meth:`flush`).
        start_ns: episode start time (default: wall clock).

    Raises:
        EpisodeWriteError: if the file cannot be created.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        index: int,
        contract_yaml: str,
        instruction: str,
        task: str = "",
        info: Mapping[str, Any] | None = None,
        compression: str = "none",
        chunk_size: int = 1 << 20,
        start_ns: int | None = None,
    ) -> None:
        from mcap.writer import CompressionType, Writer

        comp = {"none": CompressionType.NONE, "lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD}
        if compression not in comp:
            raise ValidationError([f"compression must be one of {list(comp)}, got {compression!r}"])
        self.directory = Path(directory)
        self.index = int(index)
        self.path = episode_path(self.directory, self.index, "partial")
        self.final_path = episode_path(self.directory, self.index, "complete")
        self.start_ns = int(start_ns if start_ns is not None else time.time_ns())
        self.instruction = instruction
        self.task = task or instruction
        self.success: bool | None = None
        self.counts: dict[str, int] = {}
        self.bytes = 0
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._topic_of: dict[int, str] = {}
        self._closed = False
        try:
            self._f = open(self.path, "xb")  # never clobber: a stale partial keeps its index
        except OSError as e:
            raise _write_error(self.path, "create", e) from e
        try:
            self._w = Writer(self._f, chunk_size=int(chunk_size), compression=comp[compression])
            self._w.start(profile="ros2", library="twinbrain_ros recorder")
            self._w.add_attachment(
                create_time=self.start_ns,
                log_time=self.start_ns,
                name=CONTRACT_ATTACHMENT,
                media_type="application/yaml",
                data=contract_yaml.encode("utf-8"),
            )
            start = {
                "format": FORMAT_VERSION,
                "episode_index": str(self.index),
                "instruction": instruction,
                "task": self.task,
                "started_ns": str(self.start_ns),
            }
            for k, v in (info or {}).items():
                start[k] = v if isinstance(v, str) else json.dumps(v)
            self._w.add_metadata(META_START, start)
            self.write_instruction(instruction, self.start_ns)
            self.flush()
        except OSError as e:
            self._close_file()
            raise _write_error(self.path, "write", e) from e

    # -- topics and messages --

    def add_topic(self, topic: str, type_name: str, qos_yaml: str = "", msgdef: str | None = None) -> int:
        """Register ``topic`` of ``type_name`` (e.g. ``sensor_msgs/msg/Image``); returns its channel id."""
        if topic in self._channels:
            return self._channels[topic]
        if type_name not in self._schemas:
            text = msgdef if msgdef is not None else message_definition(type_name)
            self._schemas[type_name] = self._w.register_schema(type_name, "ros2msg", text.encode("utf-8"))
        meta = {"offered_qos_profiles": qos_yaml}
        try:
            cid = self._w.register_channel(topic, "cdr", self._schemas[type_name], meta)
        except OSError as e:
            raise _write_error(self.path, "write", e) from e
        self._channels[topic] = cid
        self._topic_of[cid] = topic
        self.counts[topic] = 0
        return cid

    def write(
        self, channel_id: int, data: bytes, log_time_ns: int, publish_time_ns: int | None = None
    ) -> None:
        """Append one CDR-serialised message (as rclpy delivers it with ``raw=True``)."""
        if self._closed:
            raise EpisodeWriteError(f"episode file '{self.path}' is already closed")
        try:
            self._w.add_message(
                channel_id=channel_id,
                log_time=int(log_time_ns),
                data=data,
                publish_time=int(publish_time_ns if publish_time_ns is not None else log_time_ns),
                sequence=self.counts[self._topic_of[channel_id]] & 0xFFFFFFFF,
            )
        except OSError as e:
            raise _write_error(self.path, "write", e) from e
        self.counts[self._topic_of[channel_id]] += 1
        self.bytes += len(data)

    def write_instruction(self, instruction: str, log_time_ns: int) -> None:
        """Write ``instruction`` on :data:`INSTRUCTION_TOPIC` as a std_msgs/String (CDR by hand)."""
        cid = self.add_topic(INSTRUCTION_TOPIC, "std_msgs/msg/String", msgdef="string data\n")
        raw = instruction.encode("utf-8") + b"\x00"
        data = b"\x00\x01\x00\x00" + len(raw).to_bytes(4, "little") + raw
        self.write(cid, data, log_time_ns)

    def flush(self) -> None:
        """Close the open chunk and hand everything written so far to the OS.

        After this, a killed process loses nothing written before the call.
        """
        try:
            self._w.flush()
        except OSError as e:
            raise _write_error(self.path, "write", e) from e

    # -- end --

    def finish(
        self,
        success: bool | None = None,
        gaps: Mapping[str, Any] | None = None,
        end_reason: str = "stop",
        extra: Mapping[str, Any] | None = None,
        stop_ns: int | None = None,
    ) -> Path:
        """Write the end metadata and summary, fsync, and atomically rename to ``episode_XXXXXX.mcap``.

        Returns:
            The final path.

        Raises:
            EpisodeWriteError: on an I/O error; the file then stays ``.partial.mcap``.
        """
        if self._closed:
            raise EpisodeWriteError(f"episode file '{self.path}' is already closed")
        if success is not None:
            self.success = bool(success)
        stop = int(stop_ns if stop_ns is not None else time.time_ns())
        end = {
            "status": "complete",
            "success": {True: "true", False: "false", None: "unknown"}[self.success],
            "stopped_ns": str(stop),
            "duration_s": f"{(stop - self.start_ns) / _NS:.6f}",
            "end_reason": end_reason,
            "message_counts": json.dumps(self.counts),
            "gaps": json.dumps(dict(gaps or {})),
        }
        for k, v in (extra or {}).items():
            end[k] = v if isinstance(v, str) else json.dumps(v)
        try:
            self._w.add_metadata(META_END, end)
            self._w.finish()
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            self._close_file()
            raise _write_error(self.path, "finish", e) from e
        self._close_file()
        if self.final_path.exists():
            raise EpisodeWriteError(f"'{self.final_path}' already exists; the episode stays at '{self.path}'")
        try:
            os.rename(self.path, self.final_path)
        except OSError as e:
            raise _write_error(self.path, "rename", e) from e
        _fsync_dir(self.directory)
        return self.final_path

    def discard(self) -> None:
        """Close and delete the partial file."""
        self._close_file()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _write_error(self.path, "delete", e) from e

    def abandon(self) -> Path:
        """Close the file without finishing it (after a write error): it stays ``.partial.mcap``."""
        self._close_file()
        return self.path

    def _close_file(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._f.close()
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        """Whether the file is closed (finished, discarded or abandoned)."""
        return self._closed


# --- reading ----------------------------------------------------------------------------------------


@dataclass
class EpisodeInfo:
    """What an episode file says about itself.

    Attributes:
        path: the file.
        index: the episode index from the file name (None if the name is not an episode name).
        status: ``complete`` (finished by the recorder), ``partial`` (no end record: the recorder
            stopped without finishing) or ``recovered`` (rebuilt from a partial file).
        instruction: the instruction given at start.
        task: the task id (the instruction if none was given).
        success: the operator's success flag, None if never marked.
        contract_yaml: the embedded embodiment contract ('' if missing).
        started_ns: start time; stopped_ns: stop time (None if unknown).
        topics: topic -> message type.
        message_counts: topic -> number of messages in the file.
        gaps: the gap report (topic -> list of gaps).
        end_reason: why the recording ended (``stop``, ``disk_full``, ``recovered`` ...).
        start_meta: the raw ``twinbrain.episode`` metadata; end_meta: ``twinbrain.episode_end``.
        truncated: the file ended mid-record (partial files after a kill).
    """

    path: Path
    index: int | None
    status: str
    instruction: str = ""
    task: str = ""
    success: bool | None = None
    contract_yaml: str = ""
    started_ns: int = 0
    stopped_ns: int | None = None
    topics: dict[str, str] = field(default_factory=dict)
    message_counts: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    end_reason: str = ""
    start_meta: dict[str, str] = field(default_factory=dict)
    end_meta: dict[str, str] = field(default_factory=dict)
    truncated: bool = False

    def embodiment(self):
        """The embedded contract as an :class:`~twinbrain_ros.core.embodiment.Embodiment`.

        Raises:
            EpisodeReadError: if the file has no contract or it is invalid.
        """
        from twinbrain_ros.core.embodiment import parse_embodiment

        if not self.contract_yaml:
            raise EpisodeReadError(
                f"'{self.path}' has no embedded embodiment contract ({CONTRACT_ATTACHMENT})"
            )
        try:
            return parse_embodiment(
                yaml.safe_load(self.contract_yaml), source=f"{self.path}:{CONTRACT_ATTACHMENT}"
            )
        except (ValidationError, yaml.YAMLError) as e:
            raise EpisodeReadError(f"'{self.path}': embedded embodiment contract is invalid: {e}") from e

    def roles(self) -> dict[str, Any]:
        """The topic roles recorded at start (``state``, ``action``, ``cameras``...), {} if none."""
        try:
            return json.loads(self.start_meta.get("roles", "{}"))
        except json.JSONDecodeError:
            return {}

    def gap_count(self) -> int:
        """Number of gaps over all topics."""
        return sum(len(g) for g in self.gaps.values())


def _stream_records(path: Path) -> tuple[list[Any], bool, str]:
    """All records of ``path`` read sequentially, stopping cleanly at a truncation.

    Returns:
        (records, truncated, error text of the truncation).
    """
    from mcap.stream_reader import StreamReader

    records: list[Any] = []
    with open(path, "rb") as f:
        try:
            for r in StreamReader(f, validate_crcs=True).records:
                records.append(r)
        except Exception as e:  # noqa: BLE001 - any decode error past the last good record = truncation
            return records, True, f"{type(e).__name__}: {e}"
    return records, False, ""


def _info_from_records(path: Path, records: list[Any], truncated: bool) -> EpisodeInfo:
    from mcap.records import Attachment, Channel, Message, Metadata, Schema

    parsed = parse_episode_name(path)
    index, status = parsed if parsed else (None, "complete")
    info = EpisodeInfo(path=path, index=index, status=status, truncated=truncated)
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, int]] = {}
    counts: dict[int, int] = {}
    for r in records:
        if isinstance(r, Schema):
            schemas[r.id] = r.name
        elif isinstance(r, Channel):
            channels[r.id] = (r.topic, r.schema_id)
        elif isinstance(r, Message):
            counts[r.channel_id] = counts.get(r.channel_id, 0) + 1
        elif isinstance(r, Metadata):
            if r.name == META_START:
                info.start_meta = dict(r.metadata)
            elif r.name == META_END:
                info.end_meta = dict(r.metadata)
        elif isinstance(r, Attachment) and r.name == CONTRACT_ATTACHMENT:
            info.contract_yaml = r.data.decode("utf-8", errors="replace")
    info.topics = {t: schemas.get(sid, "?") for t, sid in channels.values()}
    info.message_counts = {channels[c][0]: n for c, n in counts.items() if c in channels}
    _fill_from_meta(info)
    return info


def _fill_from_meta(info: EpisodeInfo) -> None:
    s, e = info.start_meta, info.end_meta
    info.instruction = s.get("instruction", "")
    info.task = s.get("task", "") or info.instruction
    try:
        info.started_ns = int(s.get("started_ns", "0"))
    except ValueError:
        info.started_ns = 0
    if e:
        info.success = {"true": True, "false": False}.get(e.get("success", "unknown"))
        try:
            info.stopped_ns = int(e["stopped_ns"])
        except (KeyError, ValueError):
            info.stopped_ns = None
        try:
            info.gaps = json.loads(e.get("gaps", "{}"))
        except json.JSONDecodeError:
            info.gaps = {}
        info.end_reason = e.get("end_reason", "")
        if e.get("status") == "partial":
            info.status = "recovered"
    elif info.status == "complete":
        info.status = "partial"  # a finished name without an end record is not a finished episode


def read_episode_info(path: str | os.PathLike) -> EpisodeInfo:
    """Read an episode's metadata, contract, topics and counts.

    Complete files are read through their summary (fast); partial or damaged ones sequentially up to
    the first damaged record.

    Raises:
        EpisodeReadError: if the file is missing, not MCAP, or damaged (for a complete file).
    """
    p = Path(path)
    if not p.is_file():
        raise EpisodeReadError(f"episode file '{p}' does not exist")
    parsed = parse_episode_name(p)
    status = parsed[1] if parsed else "complete"
    if status != "partial":
        try:
            return _info_from_summary(p)
        except EpisodeReadError:
            raise
        except Exception as e:  # noqa: BLE001 - mcap raises many types for damaged files
            raise EpisodeReadError(f"'{p}' is not a readable MCAP episode (corrupt or truncated): {e}") from e
    try:
        records, truncated, _ = _stream_records(p)
    except Exception as e:  # noqa: BLE001
        raise EpisodeReadError(f"'{p}' is not an MCAP file: {e}") from e
    if not records:
        raise EpisodeReadError(f"'{p}' holds no readable MCAP record")
    return _info_from_records(p, records, truncated)


def _info_from_summary(p: Path) -> EpisodeInfo:
    from mcap.reader import make_reader

    with open(p, "rb") as f:
        reader = make_reader(f)
        header = reader.get_header()
        summary = reader.get_summary()
        if summary is None:
            raise EpisodeReadError(f"'{p}' has no MCAP summary: the file is truncated or was never finished")
        if header.profile != "ros2":
            raise EpisodeReadError(f"'{p}' has MCAP profile '{header.profile}', expected 'ros2'")
        parsed = parse_episode_name(p)
        index, status = parsed if parsed else (None, "complete")
        info = EpisodeInfo(path=p, index=index, status=status)
        for m in reader.iter_metadata():
            if m.name == META_START:
                info.start_meta = dict(m.metadata)
            elif m.name == META_END:
                info.end_meta = dict(m.metadata)
        for a in reader.iter_attachments():
            if a.name == CONTRACT_ATTACHMENT:
                info.contract_yaml = a.data.decode("utf-8", errors="replace")
        info.topics = {
            c.topic: summary.schemas[c.schema_id].name
            for c in summary.channels.values()
            if c.schema_id in summary.schemas
        }
        if summary.statistics is not None:
            info.message_counts = {
                summary.channels[cid].topic: n
                for cid, n in summary.statistics.channel_message_counts.items()
                if cid in summary.channels
            }
    _fill_from_meta(info)
    return info


def iter_messages(
    path: str | os.PathLike, topics: Iterable[str] | None = None, allow_partial: bool = False
) -> Iterator[tuple[str, int, Any]]:
    """Decoded messages of an episode as (topic, log_time_ns, message), in log-time order.

    Messages are decoded with mcap-ros2-support's dynamic CDR decoder: attribute access mirrors the
    rclpy message (``msg.header.stamp.sec``, ``msg.position``; ``uint8[]`` fields are ``bytes``).

    Args:
        path: the episode file.
        topics: only these topics (all if None).
        allow_partial: read partial/damaged files up to the first damaged record instead of raising.

    Raises:
        EpisodeReadError: for a corrupt file (naming it) or an undecodable message (naming the topic).
    """
    p = Path(path)
    want = set(topics) if topics is not None else None
    parsed = parse_episode_name(p)
    status = parsed[1] if parsed else "complete"
    if status == "partial" or allow_partial:
        yield from _iter_stream(p, want, allow_partial or status == "partial")
        return
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    try:
        f = open(p, "rb")
    except OSError as e:
        raise EpisodeReadError(f"cannot open episode file '{p}': {e.strerror or e}") from e
    with f:
        try:
            reader = make_reader(f, validate_crcs=True, decoder_factories=[DecoderFactory()])
            if reader.get_summary() is None:
                raise EpisodeReadError(
                    f"'{p}' has no MCAP summary: the file is truncated or was never finished"
                )
            it = reader.iter_decoded_messages(topics=list(want) if want is not None else None)
            for _schema, channel, message, decoded in it:
                yield channel.topic, message.log_time, decoded
        except EpisodeReadError:
            raise
        except Exception as e:  # noqa: BLE001 - damaged chunk, bad CRC, undecodable CDR ...
            raise EpisodeReadError(f"'{p}' is corrupt: {type(e).__name__}: {e}") from e


def _iter_stream(p: Path, want: set[str] | None, tolerate: bool) -> Iterator[tuple[str, int, Any]]:
    from mcap.records import Channel, Message, Schema
    from mcap_ros2.decoder import DecoderFactory

    try:
        records, truncated, err = _stream_records(p)
    except OSError as e:
        raise EpisodeReadError(f"cannot open episode file '{p}': {e.strerror or e}") from e
    if truncated and not tolerate:
        raise EpisodeReadError(f"'{p}' is damaged: {err}")
    factory = DecoderFactory()
    schemas: dict[int, Any] = {}
    channels: dict[int, Any] = {}
    decoders: dict[int, Any] = {}
    msgs = []
    for r in records:
        if isinstance(r, Schema):
            schemas[r.id] = r
        elif isinstance(r, Channel):
            channels[r.id] = r
        elif isinstance(r, Message):
            ch = channels.get(r.channel_id)
            if ch is None or (want is not None and ch.topic not in want):
                continue
            msgs.append(r)
    msgs.sort(key=lambda m: m.log_time)
    for m in msgs:
        ch = channels[m.channel_id]
        dec = decoders.get(ch.id)
        if dec is None:
            try:
                dec = factory.decoder_for(ch.message_encoding, schemas.get(ch.schema_id))
            except Exception as e:  # noqa: BLE001
                raise EpisodeReadError(f"'{p}': cannot decode topic '{ch.topic}': {e}") from e
            if dec is None:
                raise EpisodeReadError(f"'{p}': topic '{ch.topic}' has no ros2msg schema")
            decoders[ch.id] = dec
        try:
            yield ch.topic, m.log_time, dec(m.data)
        except Exception as e:  # noqa: BLE001
            raise EpisodeReadError(f"'{p}': undecodable message on '{ch.topic}': {e}") from e


def recover_partial(
    path: str | os.PathLike, rates_hz: Mapping[str, float] | None = None, remove_partial: bool = True
) -> Path:
    """Rebuild a partial episode into a valid ``episode_XXXXXX.recovered.mcap``.

    Every intact record (schemas, channels, messages, the contract, the start metadata) is copied;
    the end metadata says ``status: partial``, ``end_reason: recovered`` and carries message counts
    and a gap report computed from the messages (the recorder's nominal rates, from the start
    metadata, unless ``rates_hz`` is given).

    Args:
        path: an ``episode_XXXXXX.partial.mcap`` file.
        rates_hz: topic -> nominal rate for the gap report.
        remove_partial: delete the partial file after the recovered one is safely on disk.

    Returns:
        The recovered file's path.

    Raises:
        EpisodeReadError: if the file holds nothing recoverable; EpisodeWriteError on I/O errors.
    """
    from mcap.records import Attachment, Channel, Message, Metadata, Schema
    from mcap.writer import CompressionType, Writer

    p = Path(path)
    parsed = parse_episode_name(p)
    if parsed is None or parsed[1] != "partial":
        raise EpisodeReadError(f"'{p}' is not a partial episode file (episode_XXXXXX.partial.mcap)")
    records, truncated, err = _stream_records(p)
    if not records:
        raise EpisodeReadError(f"'{p}' holds no readable MCAP record: nothing to recover ({err})")
    info = _info_from_records(p, records, truncated)
    out = episode_path(p.parent, parsed[0], "recovered")
    tmp = out.with_name(out.name + ".tmp")
    msgs = [r for r in records if isinstance(r, Message)]
    channels = {r.id: r for r in records if isinstance(r, Channel)}
    if rates_hz is None:
        try:
            rates_hz = json.loads(info.start_meta.get("nominal_rates_hz", "{}"))
        except json.JSONDecodeError:
            rates_hz = {}
    last_ns = max((m.log_time for m in msgs), default=info.started_ns)
    tracker = GapTracker(rates_hz or {}, info.started_ns or (msgs[0].log_time if msgs else 0))
    for m in sorted(msgs, key=lambda m: m.log_time):
        ch = channels.get(m.channel_id)
        if ch is not None:
            tracker.observe(ch.topic, m.log_time)
    gaps = tracker.finish(last_ns)
    try:
        with open(tmp, "wb") as f:
            w = Writer(f, compression=CompressionType.NONE)
            w.start(profile="ros2", library="twinbrain_ros recover_partial")
            schema_ids: dict[int, int] = {}
            chan_ids: dict[int, int] = {}
            for r in records:
                if isinstance(r, Schema):
                    schema_ids[r.id] = w.register_schema(r.name, r.encoding, r.data)
                elif isinstance(r, Channel) and r.schema_id in schema_ids:
                    chan_ids[r.id] = w.register_channel(
                        r.topic, r.message_encoding, schema_ids[r.schema_id], dict(r.metadata)
                    )
                elif isinstance(r, Message) and r.channel_id in chan_ids:
                    w.add_message(chan_ids[r.channel_id], r.log_time, r.data, r.publish_time, r.sequence)
                elif isinstance(r, Attachment):
                    w.add_attachment(r.create_time, r.log_time, r.name, r.media_type, r.data)
                elif isinstance(r, Metadata) and r.name != META_END:
                    w.add_metadata(r.name, dict(r.metadata))
            w.add_metadata(
                META_END,
                {
                    "status": "partial",
                    "success": "unknown",
                    "stopped_ns": str(last_ns),
                    "duration_s": f"{(last_ns - info.started_ns) / _NS:.6f}" if info.started_ns else "0",
                    "end_reason": "recovered",
                    "recovery_note": (
                        "the recorder stopped without finishing this episode (killed or crashed); "
                        f"{len(msgs)} messages recovered"
                        + (f"; file was truncated ({err})" if truncated else "")
                    ),
                    "message_counts": json.dumps(info.message_counts),
                    "gaps": json.dumps(gaps),
                },
            )
            w.finish()
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, out)
        _fsync_dir(p.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(out, "write recovered", e) from e
    if remove_partial:
        p.unlink(missing_ok=True)
        _fsync_dir(p.parent)
    return out
