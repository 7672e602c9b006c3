# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Episode MCAP files: round trip, ros2 profile details, gap reports, crash safety and I/O errors.

No DDS: messages are serialised with rclpy.serialization (no rclpy.init) exactly as the recorder
receives them.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from twinbrain_ros.data import mcap_episode as me
from twinbrain_ros.data.bench import ACTION_TOPIC, STATE_TOPIC, synth_embodiment, synth_episode

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emb():
    return synth_embodiment(cameras=1, width=32, height=24)


def test_round_trip_metadata_contract_and_messages(tmp_path, emb):
    path = synth_episode(
        tmp_path, emb, seconds=1.0, instruction="stack the cubes", task="stack", success=True
    )
    assert path.name == "episode_000000.mcap"
    info = me.read_episode_info(path)
    assert info.status == "complete" and info.index == 0
    assert info.instruction == "stack the cubes" and info.task == "stack" and info.success is True
    assert info.embodiment().to_dict() == emb.to_dict()
    assert info.topics[STATE_TOPIC] == "sensor_msgs/msg/JointState"
    assert info.topics["/camera/cam0/image_raw"] == "sensor_msgs/msg/Image"
    assert info.topics[me.INSTRUCTION_TOPIC] == "std_msgs/msg/String"
    assert info.message_counts[STATE_TOPIC] == 100 and info.message_counts["/camera/cam0/image_raw"] == 30
    assert info.roles()["state"] == STATE_TOPIC and info.roles()["action"] == ACTION_TOPIC
    assert info.gaps == {} and info.end_reason == "stop"
    last = 0
    seen = {}
    for topic, t, msg in me.iter_messages(path):
        assert t >= last
        last = t
        seen.setdefault(topic, msg)
    assert seen[me.INSTRUCTION_TOPIC].data == "stack the cubes"
    js = seen[STATE_TOPIC]
    assert list(js.name) == list(emb.joint_names) and len(js.position) == emb.num_joints
    img = seen["/camera/cam0/image_raw"]
    assert (img.width, img.height, img.encoding) == (32, 24, "rgb8") and len(img.data) == 32 * 24 * 3


def test_ros2_profile_schemas_and_qos_metadata(tmp_path, emb):
    from mcap.reader import make_reader

    path = synth_episode(tmp_path, emb, seconds=0.2)
    with open(path, "rb") as f:
        r = make_reader(f)
        assert r.get_header().profile == "ros2"
        s = r.get_summary()
        for ch in s.channels.values():
            assert ch.message_encoding == "cdr" and "offered_qos_profiles" in ch.metadata
            sch = s.schemas[ch.schema_id]
            assert sch.encoding == "ros2msg" and sch.name.count("/") == 2
        names = {
            s.schemas[c.schema_id].name: s.schemas[c.schema_id].data.decode() for c in s.channels.values()
        }
    img_def = names["sensor_msgs/msg/Image"]
    assert "MSG: std_msgs/Header" in img_def and "MSG: builtin_interfaces/Time" in img_def
    assert "=" * 80 in img_def


def test_qos_profiles_yaml_uses_rosbag2_names():
    from rclpy.qos import qos_profile_sensor_data

    y = yaml.safe_load(me.qos_profiles_yaml([qos_profile_sensor_data]))
    assert y[0]["reliability"] == "best_effort" and y[0]["history"] == "keep_last" and y[0]["depth"] == 5
    assert y[0]["durability"] == "volatile" and set(y[0]["deadline"]) == {"sec", "nsec"}
    assert me.qos_profiles_yaml([]) == ""


def test_gap_tracker_start_mid_end_and_missing():
    s = 10 * me._NS
    g = me.GapTracker({"/a": 100.0, "/b": 10.0, "/c": 30.0}, s, factor=5.0, min_gap_s=0.1)
    assert g.thresholds_s() == {"/a": 0.1, "/b": 0.5, "/c": pytest.approx(5 / 30)}
    for k in range(10):
        g.observe("/a", s + int(k * 0.01 * me._NS))
    assert g.observe("/a", s + int(0.5 * me._NS)) == pytest.approx(0.41)  # mid gap
    g.observe("/b", s + int(0.7 * me._NS))  # start gap (0.7 > 0.5)
    assert "/c" in g.silent(s + int(0.6 * me._NS))
    rep = g.finish(s + 2 * me._NS)
    assert [x["kind"] for x in rep["/a"]] == ["mid", "end"]
    assert rep["/a"][0]["start_s"] == pytest.approx(0.09) and rep["/a"][0]["end_s"] == pytest.approx(0.5)
    assert [x["kind"] for x in rep["/b"]] == ["start", "end"]
    assert rep["/c"] == [{"start_s": 0.0, "end_s": 2.0, "duration_s": 2.0, "kind": "no_messages"}]
    assert g.counts == {"/a": 11, "/b": 1, "/c": 0}


def test_names_scan_and_next_index(tmp_path, emb):
    assert me.next_episode_index(tmp_path) == 0
    synth_episode(tmp_path, emb, 0, seconds=0.1)
    synth_episode(tmp_path, emb, 3, seconds=0.1, finish=False)
    assert [(i, s) for i, s, _ in me.scan_episodes(tmp_path)] == [(0, "complete"), (3, "partial")]
    assert me.next_episode_index(tmp_path) == 4
    assert me.parse_episode_name("episode_000012.recovered.mcap") == (12, "recovered")
    assert me.parse_episode_name("notes.mcap") is None
    # a stale partial keeps its index: creating it again is refused, never overwritten
    with pytest.raises(me.EpisodeWriteError, match="episode_000003.partial.mcap"):
        me.EpisodeWriter(tmp_path, 3, emb.to_yaml(), "x")


_KILL_SCRIPT = r"""
import sys, time
from rclpy.serialization import serialize_message
from twinbrain_ros.data import mcap_episode as me
from twinbrain_ros.data.bench import synth_embodiment, synth_episode, _joint_msg
emb = synth_embodiment(1, 32, 24)
d = sys.argv[1]
synth_episode(d, emb, 0, seconds=0.5)                      # a finished episode
w = me.EpisodeWriter(d, 1, emb.to_yaml(), "in progress", info={"nominal_rates_hz": {"/joint_states": 100.0}})
c = w.add_topic("/joint_states", "sensor_msgs/msg/JointState")
k = 0
while True:
    t = time.time_ns()
    w.write(c, serialize_message(_joint_msg(emb.joint_names, [0.0] * 6, t)), t)
    k += 1
    if k % 20 == 0:
        w.flush()
    if k == 200:
        print("READY", flush=True)
    time.sleep(0.001)
"""


def test_kill_9_mid_episode_keeps_finished_and_marks_partial(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        line = proc.stdout.readline()
        assert b"READY" in line
        time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"episode_000000.mcap", "episode_000001.partial.mcap"}
    done = me.read_episode_info(tmp_path / "episode_000000.mcap")
    assert done.status == "complete" and sum(1 for _ in me.iter_messages(done.path)) > 50
    part = me.read_episode_info(tmp_path / "episode_000001.partial.mcap")
    assert part.status == "partial" and part.instruction == "in progress" and part.contract_yaml
    assert part.message_counts["/joint_states"] >= 200
    renamed = tmp_path / "copy.mcap"  # a partial file under a finished-looking name is still refused
    renamed.write_bytes((tmp_path / "episode_000001.partial.mcap").read_bytes())
    with pytest.raises(me.EpisodeReadError, match="corrupt or truncated"):
        me.read_episode_info(renamed)
    renamed.unlink()
    out = me.recover_partial(tmp_path / "episode_000001.partial.mcap")
    assert out.name == "episode_000001.recovered.mcap"
    assert not (tmp_path / "episode_000001.partial.mcap").exists()
    rec = me.read_episode_info(out)
    assert rec.status == "recovered" and rec.end_reason == "recovered" and rec.success is None
    assert rec.message_counts["/joint_states"] == part.message_counts["/joint_states"]
    assert "killed" in rec.end_meta["recovery_note"]
    assert (
        sum(1 for t, _, _ in me.iter_messages(out) if t == "/joint_states")
        == part.message_counts["/joint_states"]
    )


def test_truncated_partial_is_recovered_up_to_the_damage(tmp_path, emb):
    path = synth_episode(tmp_path, emb, 0, seconds=1.0, finish=False)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])  # cut in the middle of a chunk
    part = me.read_episode_info(path)
    assert part.truncated and part.status == "partial"
    out = me.recover_partial(path)
    rec = me.read_episode_info(out)
    assert rec.status == "recovered" and 0 < sum(rec.message_counts.values()) < 221
    assert "truncated" in rec.end_meta["recovery_note"]


def test_corrupt_files_raise_clear_errors(tmp_path, emb):
    bad = tmp_path / "episode_000000.mcap"
    bad.write_bytes(b"this is not an mcap file at all" * 10)
    with pytest.raises(me.EpisodeReadError, match="episode_000000.mcap"):
        me.read_episode_info(bad)
    good = synth_episode(tmp_path / "g", emb, 0, seconds=0.5)
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # zero a block inside a chunk: CRC mismatch / bad record
    good.write_bytes(bytes(data))
    with pytest.raises(me.EpisodeReadError, match="corrupt"):
        list(me.iter_messages(good))
    with pytest.raises(me.EpisodeReadError, match="does not exist"):
        me.read_episode_info(tmp_path / "nope.mcap")


def test_disk_full_during_write_is_a_clear_error_and_earlier_episodes_survive(tmp_path, emb):
    first = synth_episode(tmp_path, emb, 0, seconds=0.3)
    w = me.EpisodeWriter(tmp_path, 1, emb.to_yaml(), "second")
    ch = w.add_topic(STATE_TOPIC, "sensor_msgs/msg/JointState")
    w.write(ch, b"\x00\x01\x00\x00" + bytes(60), 1)

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self._f, k)

    w._w._Writer__stream = Full(w._f)  # the mcap writer's output stream
    with pytest.raises(me.EpisodeWriteError, match="disk is full") as ei:
        for _ in range(5000):
            w.write(ch, bytes(1000), 2)
        w.flush()
    assert "episode_000001.partial.mcap" in str(ei.value)
    w.abandon()
    assert me.read_episode_info(first).status == "complete"
    assert (tmp_path / "episode_000001.partial.mcap").exists()


def test_unwritable_or_full_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(me.EpisodeWriteError, match="cannot be created"):
        me.check_output_dir(blocker / "sub")
    with pytest.raises(me.EpisodeWriteError, match="not a directory"):
        me.check_output_dir(blocker)
    with pytest.raises(me.EpisodeWriteError, match="full"):
        me.check_output_dir(tmp_path, min_free_mb=1e12)
    assert me.check_output_dir(tmp_path / "new") == tmp_path / "new"


def test_discard_removes_the_partial_file(tmp_path, emb):
    w = me.EpisodeWriter(tmp_path, 0, emb.to_yaml(), "oops")
    assert w.path.exists()
    w.discard()
    assert list(tmp_path.iterdir()) == []


def test_finish_records_success_gaps_and_reason(tmp_path, emb):
    w = me.EpisodeWriter(tmp_path, 0, emb.to_yaml(), "x", start_ns=5 * me._NS)
    gaps = {"/cam": [{"start_s": 0.1, "end_s": 0.9, "duration_s": 0.8, "kind": "mid"}]}
    path = w.finish(success=False, gaps=gaps, end_reason="disk_full", stop_ns=7 * me._NS)
    info = me.read_episode_info(path)
    assert info.success is False and info.gaps == gaps and info.end_reason == "disk_full"
    assert info.started_ns == 5 * me._NS and info.stopped_ns == 7 * me._NS and info.gap_count() == 1
    assert json.loads(info.end_meta["message_counts"]) == {me.INSTRUCTION_TOPIC: 1}
    assert np.isclose(float(info.end_meta["duration_s"]), 2.0)
