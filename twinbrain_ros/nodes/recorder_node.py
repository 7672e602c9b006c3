# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Teleoperation recorder: one rosbag2-compatible MCAP file per episode, safe against crashes.

Subscribes (with ``raw=True``: the bytes DDS delivered are written, nothing is deserialised) to the
topics the embodiment contract names: every camera, the joint states, the teleop command (a leader
arm's joint states or an expert's commands) and any ``extra_topics``. Between ``~/start`` and
``~/stop`` the messages go into ``<output_dir>/episode_XXXXXX.partial.mcap``; ``~/stop`` finishes
the file (fsync) and renames it to ``episode_XXXXXX.mcap``, so a finished episode is never touched
again and a ``kill -9`` leaves earlier episodes intact and the current one clearly named
``.partial`` (recovered into ``.recovered.mcap`` at the next start, see ``recover_on_start``).

Each file embeds the embodiment contract, the instruction, the operator's success flag and a gap
report: a topic silent for longer than ``gap_factor`` nominal periods (at least ``min_gap_s``) is
flagged with the interval, live in the log and in the episode's end metadata.

Services:
    ~/start (twinbrain_ros/srv/StartEpisode): instruction, task -> success, message, episode_index, path.
    ~/stop (std_srvs/Trigger): finish and publish the episode; the message says where and any gaps.
    ~/discard (std_srvs/Trigger): drop the episode being recorded.
    ~/mark_success (std_srvs/SetBool): set the current episode's success flag (true/false).
Topic:
    ~/status (std_msgs/String, JSON): state, episode, elapsed time, counts, silent topics, errors, and
        ``waiting_for``: the recorded topics not heard from since start-up (start once it is empty).

Usage:
    python -m twinbrain_ros.nodes.recorder_node --ros-args --params-file config/recorder.yaml
    ros2 service call /recorder_node/start twinbrain_ros/srv/StartEpisode "{instruction: 'pick the cube'}"
    ros2 service call /recorder_node/stop std_srvs/srv/Trigger
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.validation import ParameterError, ValidationError
from twinbrain_ros.data import mcap_episode as me
from twinbrain_ros.ros.params import declare_and_read, param

ACTION_TYPES = (
    "sensor_msgs/msg/JointState",
    "trajectory_msgs/msg/JointTrajectory",
    "std_msgs/msg/Float64MultiArray",
    "twinbrain_ros/msg/ActionChunk",
)
RELIABILITY = ("best_effort", "reliable")
_NS = 1_000_000_000


@dataclass(frozen=True)
class RecorderParams:
    """Parameters of the recorder node."""

    embodiment: str = param("so101", "Embodiment contract name (config/embodiments) or YAML path.")
    output_dir: str = param("episodes", "Directory the episode files go to (created if missing).")
    joint_states_topic: str = param("joint_states", "Robot joint states, recorded as observation.state.")
    action_topic: str = param(
        "leader/joint_states", "Teleop command topic recorded as the action (leader arm or expert)."
    )
    action_type: str = param(
        "sensor_msgs/msg/JointState", "Message type of action_topic.", choices=ACTION_TYPES
    )
    action_rate_hz: float = param(
        30.0, "Nominal rate of action_topic (for gap detection).", low=0.1, high=5000.0
    )
    extra_topics: tuple[str, ...] = param(
        (), "Further topics to record, each 'topic:pkg/msg/Type' (e.g. 'tf:tf2_msgs/msg/TFMessage')."
    )
    camera_reliability: str = param(
        "best_effort",
        "QoS reliability of the camera subscriptions (best_effort also matches best-effort drivers).",
        choices=RELIABILITY,
    )
    state_reliability: str = param(
        "reliable", "QoS reliability of the joint-state and action subscriptions.", choices=RELIABILITY
    )
    queue_depth: int = param(10, "Subscription queue depth (keep-last).", low=1, high=1000)
    compression: str = param("none", "MCAP chunk compression.", choices=("none", "lz4", "zstd"))
    chunk_size_kb: int = param(1024, "MCAP chunk size in KiB.", low=16, high=65536)
    flush_period_s: float = param(
        0.5, "How often the open chunk is written out: the most a kill -9 can lose.", low=0.05, high=10.0
    )
    gap_factor: float = param(
        5.0, "A topic silent for this many nominal periods is flagged as a gap.", low=1.0, high=1000.0
    )
    min_gap_s: float = param(0.1, "Shortest silence ever flagged as a gap, s.", low=0.001, high=60.0)
    min_free_mb: float = param(
        200.0,
        "Refuse to start, or stop and save the episode, below this much free disk space (MB).",
        low=0.0,
        high=1e9,
        read_only=False,
    )
    max_episode_s: float = param(
        0.0, "Stop an episode automatically after this long; 0 = never.", low=0.0, high=86400.0
    )
    recover_on_start: bool = param(
        True, "At start-up, rebuild .partial.mcap files left by a killed recorder into .recovered.mcap."
    )
    status_period_s: float = param(0.5, "Period of ~/status messages, s.", low=0.05, high=60.0)


def _qos(reliability: str, depth: int) -> QoSProfile:
    rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel)


def _import_type(type_name: str):
    """``pkg/msg/Type`` -> the rclpy message class."""
    import importlib

    parts = type_name.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise ValidationError([f"'{type_name}' is not a message type like 'pkg/msg/Type'"])
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError) as e:
        raise ValidationError([f"message type '{type_name}' is not installed: {e}"]) from e


@dataclass
class _Topic:
    topic: str  # as configured (possibly relative)
    type_name: str
    role: str  # camera:<name> | state | action | extra
    rate_hz: float
    reliability: str
    resolved: str = ""
    channel: int = -1


class RecorderNode(Node):
    """Records teleoperation episodes to MCAP; see the module docstring."""

    def __init__(self) -> None:
        super().__init__("recorder_node")
        self.p = declare_and_read(self, RecorderParams)
        self.emb = load_embodiment(self.p.embodiment)
        self.min_free_mb = self.p.min_free_mb
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.out_dir = me.check_output_dir(self.p.output_dir)
        self._lock = threading.RLock()
        self.writer: me.EpisodeWriter | None = None
        self.tracker: me.GapTracker | None = None
        self.last_error = ""
        self.last_episode = ""
        self._warned_silent: set[str] = set()
        self._topics = self._plan_topics()
        self._heard: set[str] = set()  # topics that delivered a message since start-up (recording or not)
        from std_msgs.msg import String

        self._status_pub = self.create_publisher(String, "~/status", 10)
        for t in self._topics:
            msg_type = _import_type(t.type_name)
            sub = self.create_subscription(
                msg_type,
                t.topic,
                lambda data, tt=t: self._on_message(tt, data),
                _qos(t.reliability, self.p.queue_depth),
                raw=True,
            )
            t.resolved = sub.topic_name
        self._recover_partials()
        from std_srvs.srv import SetBool, Trigger

        from twinbrain_ros.srv import StartEpisode

        self.create_service(StartEpisode, "~/start", self._srv_start)
        self.create_service(Trigger, "~/stop", self._srv_stop)
        self.create_service(Trigger, "~/discard", self._srv_discard)
        self.create_service(SetBool, "~/mark_success", self._srv_mark_success)
        self.create_timer(self.p.flush_period_s, self._on_flush_timer)
        self.create_timer(self.p.status_period_s, self._publish_status)
        self.get_logger().info(
            f"recorder for '{self.emb.name}' writing to '{self.out_dir}': "
            + ", ".join(f"{t.role}={t.resolved} [{t.type_name}]" for t in self._topics)
        )

    # -- set-up --

    def _plan_topics(self) -> list[_Topic]:
        p, emb = self.p, self.emb
        topics = [
            _Topic(
                c.topic,
                "sensor_msgs/msg/Image",
                f"camera:{c.name}",
                emb.rates.camera_hz,
                p.camera_reliability,
            )
            for c in emb.cameras
        ]
        topics.append(
            _Topic(
                p.joint_states_topic,
                "sensor_msgs/msg/JointState",
                "state",
                emb.rates.state_hz,
                p.state_reliability,
            )
        )
        topics.append(_Topic(p.action_topic, p.action_type, "action", p.action_rate_hz, p.state_reliability))
        problems = []
        for entry in p.extra_topics:
            topic, sep, type_name = entry.rpartition(":")
            if not sep or not topic or not type_name:
                problems.append(f"parameter 'extra_topics' entry {entry!r} must be 'topic:pkg/msg/Type'")
                continue
            topics.append(_Topic(topic, type_name, "extra", 0.0, p.state_reliability))
        seen: dict[str, str] = {}
        for t in topics:
            if t.topic in seen:
                problems.append(f"topic '{t.topic}' is configured twice ({seen[t.topic]} and {t.role})")
            seen[t.topic] = t.role
        if problems:
            raise ParameterError("; ".join(problems))
        for t in topics:  # fail at start-up, not at the first episode, if a schema is missing
            _import_type(t.type_name)
            me.message_definition(t.type_name)
        return topics

    def _recover_partials(self) -> None:
        partials = [p for _, status, p in me.scan_episodes(self.out_dir) if status == "partial"]
        for path in partials:
            if not self.p.recover_on_start:
                self.get_logger().warn(f"partial episode '{path}' left by an earlier run (not recovered)")
                continue
            try:
                out = me.recover_partial(path)
                self.get_logger().warn(
                    f"recovered partial episode '{path.name}' -> '{out.name}' (marked partial)"
                )
            except me.EpisodeError as e:
                self.get_logger().error(f"could not recover '{path}': {e}")

    def _on_set_parameters(self, params):
        from rcl_interfaces.msg import SetParametersResult

        for prm in params:
            if prm.name == "min_free_mb":
                v = prm.value
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1e9:
                    return SetParametersResult(successful=False, reason="min_free_mb must be in [0, 1e9]")
                self.min_free_mb = float(v)
        return SetParametersResult(successful=True)

    def recorded_topics(self) -> list[str]:
        """Fully-qualified names of the recorded topics."""
        return [t.resolved for t in self._topics]

    # -- recording --

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_message(self, t: _Topic, data: bytes) -> None:
        with self._lock:
            self._heard.add(t.resolved)
            w = self.writer
            if w is None:
                return
            now = self._now_ns()
            try:
                w.write(t.channel, data, now)
            except me.EpisodeError as e:
                self._fail(e)
                return
            gap = self.tracker.observe(t.resolved, now)
            if gap is not None and t.resolved in self._warned_silent:
                self._warned_silent.discard(t.resolved)
                self.get_logger().warn(
                    f"'{t.resolved}' resumed after a {gap:.2f} s gap (flagged in the episode)"
                )

    def start_episode(self, instruction: str, task: str = "") -> tuple[bool, str, int, str]:
        """Open the next episode file. Returns (success, message, episode index, path)."""
        with self._lock:
            if self.writer is not None:
                return (
                    False,
                    f"already recording episode {self.writer.index} (stop or discard it first)",
                    self.writer.index,
                    str(self.writer.path),
                )
            if not instruction.strip():
                return False, "the instruction must not be empty (it becomes the dataset task)", -1, ""
            try:
                me.check_output_dir(self.out_dir, self.min_free_mb)
                index = me.next_episode_index(self.out_dir)
                start = self._now_ns()
                rates = {t.resolved: t.rate_hz for t in self._topics if t.rate_hz > 0}
                tracker = me.GapTracker(rates, start, self.p.gap_factor, self.p.min_gap_s)
                roles = {
                    "state": self._resolved("state"),
                    "action": self._resolved("action"),
                    "action_type": self.p.action_type,
                    "cameras": {
                        t.role.split(":", 1)[1]: t.resolved
                        for t in self._topics
                        if t.role.startswith("camera:")
                    },
                    "extra": [t.resolved for t in self._topics if t.role == "extra"],
                }
                w = me.EpisodeWriter(
                    self.out_dir,
                    index,
                    self.emb.to_yaml(),
                    instruction,
                    task,
                    info={
                        "embodiment": self.emb.name,
                        "roles": roles,
                        "nominal_rates_hz": rates,
                        "gap_thresholds_s": tracker.thresholds_s(),
                        "recorder_node": self.get_fully_qualified_name(),
                        "clock": "ros",
                    },
                    compression=self.p.compression,
                    chunk_size=self.p.chunk_size_kb * 1024,
                    start_ns=start,
                )
                try:
                    for t in self._topics:
                        t.channel = w.add_topic(t.resolved, t.type_name, self._qos_yaml(t.resolved))
                    w.flush()
                except (me.EpisodeError, ValidationError):
                    w.discard()
                    raise
            except (me.EpisodeError, ValidationError, OSError) as e:
                self.last_error = str(e)
                self.get_logger().error(f"cannot start an episode: {e}")
                return False, str(e), -1, ""
            self.writer, self.tracker = w, tracker
            self._warned_silent.clear()
            self.last_error = ""
            self.get_logger().info(f"recording episode {index} -> '{w.path}' ({instruction!r})")
            self._publish_status()
            return True, f"recording episode {index} to '{w.path}'", index, str(w.path)

    def _resolved(self, role: str) -> str:
        return next(t.resolved for t in self._topics if t.role == role)

    def _qos_yaml(self, topic: str) -> str:
        try:
            infos = self.get_publishers_info_by_topic(topic)
        except Exception:  # noqa: BLE001 - graph query failures only cost the QoS metadata
            return ""
        return me.qos_profiles_yaml([i.qos_profile for i in infos])

    def stop_episode(self, end_reason: str = "stop") -> tuple[bool, str]:
        """Finish the current episode. Returns (success, message naming the file and any gaps)."""
        with self._lock:
            w = self.writer
            if w is None:
                return False, "not recording" + (
                    f" (last error: {self.last_error})" if self.last_error else ""
                )
            stop = self._now_ns()
            gaps = self.tracker.finish(stop)
            self.writer = None
            try:
                path = w.finish(gaps=gaps, end_reason=end_reason, stop_ns=stop)
            except me.EpisodeError as e:
                w.abandon()
                self.last_error = str(e)
                self.get_logger().error(f"episode {w.index} could not be finished: {e}")
                return False, f"episode {w.index} could not be finished ({e}); its data stays in '{w.path}'"
            self.last_episode = str(path)
            n = sum(v for k, v in w.counts.items() if k != me.INSTRUCTION_TOPIC)
            msg = f"saved episode {w.index} to '{path}' ({n} messages, {(stop - w.start_ns) / _NS:.1f} s"
            msg += f", success={w.success})"
            if gaps:
                desc = "; ".join(
                    f"{topic}: " + ", ".join(f"{g['kind']} {g['start_s']:.2f}-{g['end_s']:.2f} s" for g in gl)
                    for topic, gl in gaps.items()
                )
                msg += f"; GAPS flagged: {desc}"
                self.get_logger().warn(msg)
            else:
                self.get_logger().info(msg)
            self._publish_status()
            return True, msg

    def discard_episode(self) -> tuple[bool, str]:
        """Drop the current episode and delete its file."""
        with self._lock:
            w = self.writer
            if w is None:
                return False, "not recording: nothing to discard"
            self.writer = None
            try:
                w.discard()
            except me.EpisodeError as e:
                return False, str(e)
            self.get_logger().info(f"discarded episode {w.index}")
            self._publish_status()
            return True, f"discarded episode {w.index}"

    def mark_success(self, success: bool) -> tuple[bool, str]:
        """Set the current episode's success flag."""
        with self._lock:
            if self.writer is None:
                return False, "not recording: mark success before ~/stop"
            self.writer.success = bool(success)
            return True, f"episode {self.writer.index} marked success={bool(success)}"

    def _fail(self, e: Exception) -> None:
        """A write failed: keep what reached the disk as .partial and go idle."""
        w = self.writer
        self.writer = None
        path = w.abandon() if w is not None else ""
        self.last_error = f"{e}"
        self.get_logger().error(
            f"recording stopped: {e}. What was written stays in '{path}' (partial); "
            "earlier episodes are intact."
        )
        self._publish_status()

    def _on_flush_timer(self) -> None:
        with self._lock:
            w = self.writer
            if w is None:
                return
            try:
                w.flush()
            except me.EpisodeError as e:
                self._fail(e)
                return
            now = self._now_ns()
            for topic, silent_s in self.tracker.silent(now).items():
                if topic not in self._warned_silent:
                    self._warned_silent.add(topic)
                    self.get_logger().warn(
                        f"no message on '{topic}' for {silent_s:.2f} s (gap will be flagged)"
                    )
            try:
                free = me.free_space_mb(self.out_dir)
            except OSError:
                free = float("inf")
            if free < self.min_free_mb:
                self.last_error = (
                    f"disk nearly full: {free:.0f} MB free in '{self.out_dir}' "
                    f"(< min_free_mb {self.min_free_mb:.0f})"
                )
                self.get_logger().error(self.last_error + "; stopping and saving the episode")
                self.stop_episode(end_reason="disk_full")
                return
            if self.p.max_episode_s > 0 and (now - w.start_ns) / _NS >= self.p.max_episode_s:
                self.get_logger().info(f"episode reached max_episode_s = {self.p.max_episode_s} s")
                self.stop_episode(end_reason="max_episode_s")

    def status(self) -> dict[str, Any]:
        """The recorder's state as a JSON-able dict (also published on ~/status)."""
        with self._lock:
            w = self.writer
            st: dict[str, Any] = {
                "state": "recording" if w is not None else "idle",
                "output_dir": str(self.out_dir),
                "last_episode": self.last_episode,
                "last_error": self.last_error,
                # recorded topics not heard from since start-up: an episode started now would miss
                # their first messages (discovery still under way, or nothing publishes them)
                "waiting_for": sorted(t.resolved for t in self._topics if t.resolved not in self._heard),
            }
            if w is not None:
                now = self._now_ns()
                st.update(
                    episode_index=w.index,
                    path=str(w.path),
                    elapsed_s=round((now - w.start_ns) / _NS, 3),
                    counts=dict(w.counts),
                    bytes=w.bytes,
                    success=w.success,
                    silent={k: round(v, 3) for k, v in self.tracker.silent(now).items()},
                )
            return st

    def _publish_status(self) -> None:
        from std_msgs.msg import String

        try:
            self._status_pub.publish(String(data=json.dumps(self.status())))
        except Exception:  # noqa: BLE001 - after shutdown (SIGINT) the context is gone; status is optional
            pass

    # -- services --

    def _srv_start(self, req, res):
        res.success, res.message, res.episode_index, res.path = self.start_episode(req.instruction, req.task)
        return res

    def _srv_stop(self, req, res):
        res.success, res.message = self.stop_episode()
        return res

    def _srv_discard(self, req, res):
        res.success, res.message = self.discard_episode()
        return res

    def _srv_mark_success(self, req, res):
        res.success, res.message = self.mark_success(req.data)
        return res

    def shutdown(self) -> None:
        """Save the episode being recorded (end_reason ``shutdown``) before the node goes away."""
        with self._lock:
            if self.writer is not None:
                self.stop_episode(end_reason="shutdown")


def main(args=None) -> None:
    """Run the recorder until interrupted; an interrupted episode is saved (end_reason 'shutdown')."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = RecorderNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ParameterError, ValidationError, me.EpisodeError, FileNotFoundError) as e:
        print(f"[recorder_node] error: {e}", file=sys.stderr, flush=True)
        code = 2
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
