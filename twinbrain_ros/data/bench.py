# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Recorder and converter throughput, and synthetic episodes for tests and benchmarks.

:func:`bench_recorder` measures what the recorder node writes with cameras publishing at a fixed
rate (``mode="ros"``: a real recorder process fed over DDS, its CPU use read from ``/proc``; run it
inside ``tools/isolated.sh``) or how fast the episode writer alone can go (``mode="writer"``, no
DDS). :func:`bench_converter` converts synthetic episodes and reports frames/s and sync stats.
Both return plain dicts (the ``twinbrain bench`` CLI prints them and emits JSON).

:func:`synth_episode` writes an episode exactly as the recorder would (same metadata, topics and
rclpy-serialised messages), with options for jitter, a topic that stops, and a different contract.

Usage:
    bench_converter(episodes=2, seconds=5, cameras=2)       # -> {"frames_per_s": ..., ...}
    bench_recorder(duration_s=5, cameras=2, mode="writer")  # no DDS needed
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from twinbrain_ros.core.embodiment import Embodiment, load_embodiment, parse_embodiment
from twinbrain_ros.data import mcap_episode as me

_NS = 1_000_000_000
STATE_TOPIC = "/joint_states"
ACTION_TOPIC = "/leader/joint_states"


def synth_embodiment(
    cameras: int = 1, width: int = 64, height: int = 48, base: str = "so101", camera_hz: float = 30.0
) -> Embodiment:
    """The ``base`` contract with ``cameras`` cameras of ``width`` x ``height`` (cam0, cam1, ...)."""
    d = load_embodiment(base).to_dict()
    d["cameras"] = [
        {
            "name": f"cam{i}",
            "topic": f"camera/cam{i}/image_raw",
            "width": width,
            "height": height,
            "encoding": "rgb8",
        }
        for i in range(cameras)
    ]
    d["rates"]["camera_hz"] = float(camera_hz)
    return parse_embodiment(d, source="<synthetic>")


def write_embodiment(emb: Embodiment, path: str | os.PathLike) -> Path:
    """Save a contract as YAML (for nodes started with ``embodiment:=<path>``)."""
    p = Path(path)
    p.write_text(emb.to_yaml(), encoding="utf-8")
    return p


def _image_msg(cam_index: int, k: int, width: int, height: int, base: np.ndarray, stamp_ns: int):
    from sensor_msgs.msg import Image

    img = base.copy()
    x = (k * 3 + cam_index * 7) % width
    img[:, x : x + 2, :] = 255
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, _NS)
    msg.header.frame_id = f"cam{cam_index}"
    msg.height, msg.width, msg.encoding, msg.step = height, width, "rgb8", width * 3
    msg.data = img.tobytes()
    return msg


def _joint_msg(names, q, stamp_ns: int):
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, _NS)
    msg.name = list(names)
    msg.position = [float(v) for v in q]
    return msg


def synth_episode(
    directory: str | os.PathLike,
    emb: Embodiment,
    index: int | None = None,
    *,
    seconds: float = 2.0,
    state_hz: float = 100.0,
    action_hz: float = 30.0,
    instruction: str = "pick up the cube",
    task: str = "",
    success: bool | None = True,
    stop_after: Mapping[str, float] | None = None,
    silence: Mapping[str, tuple[float, float]] | None = None,
    jitter_s: float = 0.002,
    seed: int = 0,
    contract_yaml: str | None = None,
    start_ns: int = 1_700_000_000 * _NS,
    finish: bool = True,
) -> Path:
    """Write a synthetic episode the way the recorder does and return its path.

    Args:
        directory: output directory (created).
        emb: the contract (cameras and joints) the data follows.
        index: episode index; default the next free one.
        seconds: duration.
        state_hz: joint-state rate (cameras run at the contract's camera_hz).
        action_hz: leader-arm (action) rate.
        instruction: the episode instruction.
        task: the optional task id.
        success: the success flag.
        stop_after: topic -> seconds after which that topic publishes nothing more.
        silence: topic -> (from_s, to_s) interval in which that topic publishes nothing.
        jitter_s: uniform jitter of every stamp (+-).
        seed: random seed of the jitter.
        start_ns: episode start time.
        contract_yaml: embed this contract instead of ``emb``'s (to fake a mismatch).
        finish: False leaves the file ``.partial`` without end record (as after a kill -9).
    """
    from rclpy.serialization import serialize_message

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    idx = me.next_episode_index(d) if index is None else index
    rng = np.random.default_rng(seed)
    cams = {f"/{c.topic.lstrip('/')}": c for c in emb.cameras}
    rates = {STATE_TOPIC: state_hz, ACTION_TOPIC: action_hz, **dict.fromkeys(cams, emb.rates.camera_hz)}
    roles = {
        "state": STATE_TOPIC,
        "action": ACTION_TOPIC,
        "action_type": "sensor_msgs/msg/JointState",
        "cameras": {c.name: t for t, c in cams.items()},
        "extra": [],
    }
    w = me.EpisodeWriter(
        d,
        idx,
        contract_yaml if contract_yaml is not None else emb.to_yaml(),
        instruction,
        task,
        info={"embodiment": emb.name, "roles": roles, "nominal_rates_hz": rates, "clock": "synthetic"},
        start_ns=start_ns,
    )
    ch = {
        STATE_TOPIC: w.add_topic(STATE_TOPIC, "sensor_msgs/msg/JointState"),
        ACTION_TOPIC: w.add_topic(ACTION_TOPIC, "sensor_msgs/msg/JointState"),
    }
    for t in cams:
        ch[t] = w.add_topic(t, "sensor_msgs/msg/Image")
    lo, hi = emb.limits.lower, emb.limits.upper
    events: list[tuple[int, str, int]] = []
    for topic, hz in rates.items():
        n = int(seconds * hz)
        for k in range(n):
            t = start_ns + int((k / hz + rng.uniform(-jitter_s, jitter_s) + jitter_s) * _NS)
            rel = (t - start_ns) / _NS
            if stop_after and topic in stop_after and rel > stop_after[topic]:
                break
            if silence and topic in silence and silence[topic][0] <= rel < silence[topic][1]:
                continue
            events.append((t, topic, k))
    events.sort()
    bases = {
        t: np.tile(np.linspace(0, 200, c.width, dtype=np.uint8)[None, :, None], (c.height, 1, 3))
        for t, c in cams.items()
    }
    tracker = me.GapTracker(rates, start_ns)
    for t, topic, k in events:
        phase = (t - start_ns) / _NS
        if topic in cams:
            c = cams[topic]
            msg = _image_msg(list(cams).index(topic), k, c.width, c.height, bases[topic], t)
        else:
            q = lo + (hi - lo) * (0.5 + 0.3 * np.sin(phase + np.arange(len(lo)) * 0.5))
            if topic == ACTION_TOPIC:
                q = q + 0.01
            msg = _joint_msg(emb.joint_names, q, t)
        log = t + 1_000_000  # 1 ms transport latency
        w.write(ch[topic], serialize_message(msg), log)
        tracker.observe(topic, log)
    stop = start_ns + int(seconds * _NS)
    if not finish:
        w.flush()
        return w.abandon()
    return w.finish(success=success, gaps=tracker.finish(stop), stop_ns=stop)


# --- converter --------------------------------------------------------------------------------------


def bench_converter(
    episodes: int = 2,
    seconds: float = 5.0,
    cameras: int = 2,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    workdir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Convert synthetic episodes and report the converter's speed.

    Returns:
        dict with frames, images, seconds, frames_per_s, images_per_s, input/output MB, p95 skew per
        stream (ms) and dropped frames.
    """
    from twinbrain_ros.data.convert import ConvertOptions, convert_episodes

    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tb_bench_conv_"))
    try:
        emb = synth_embodiment(cameras, width, height, camera_hz=fps)
        eps = tmp / "episodes"
        for i in range(episodes):
            synth_episode(eps, emb, i, seconds=seconds, seed=i)
        mb_in = sum(f.stat().st_size for f in eps.iterdir()) / 1e6
        rep = convert_episodes([eps], tmp / "dataset", ConvertOptions(fps=fps))
        mb_out = sum(f.stat().st_size for f in (tmp / "dataset").rglob("*") if f.is_file()) / 1e6
        d = rep.to_dict()
        return {
            "episodes": episodes,
            "cameras": cameras,
            "resolution": f"{width}x{height}",
            "fps": fps,
            "frames": rep.total_frames,
            "images": rep.total_frames * cameras,
            "seconds": round(rep.seconds, 3),
            "frames_per_s": round(rep.frames_per_s, 1),
            "images_per_s": round(rep.frames_per_s * cameras, 1),
            "input_mb": round(mb_in, 1),
            "output_mb": round(mb_out, 1),
            "p95_skew_ms": {k: v["p95_skew_ms"] for k, v in d["streams"].items()},
            "dropped_frames": d["dropped_frames"],
        }
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


# --- recorder ---------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_recorder(
    duration_s: float = 5.0,
    cameras: int = 2,
    width: int = 640,
    height: int = 480,
    rate_hz: float = 30.0,
    mode: str = "ros",
    workdir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Recorder throughput with ``cameras`` cameras publishing ``width`` x ``height`` rgb8 at ``rate_hz``.

    Args:
        duration_s: seconds of recording.
        cameras: number of cameras.
        width: image width.
        height: image height.
        rate_hz: camera publish rate.
        workdir: keep the files here (default: a temporary directory, deleted).
        mode: ``ros``: a recorder process subscribed over DDS, fed by a publisher in this process
            (must run inside ``tools/isolated.sh``); ``writer``: the episode writer alone, as fast
            as it goes (no DDS).

    Returns:
        dict with frames published/written, frames_per_s written, MB/s, CPU % of the recorder
        (100 = one core) and the episode's gap count.
    """
    if mode == "writer":
        return _bench_writer(duration_s, cameras, width, height, workdir)
    if mode != "ros":
        raise ValueError(f"mode must be 'ros' or 'writer', got {mode!r}")
    if os.environ.get("TWINBRAIN_ISOLATED") != "1":
        raise RuntimeError(
            "bench_recorder(mode='ros') starts DDS participants: run it inside tools/isolated.sh"
        )
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tb_bench_rec_"))
    try:
        return _bench_ros(tmp, duration_s, cameras, width, height, rate_hz)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _bench_writer(duration_s, cameras, width, height, workdir) -> dict[str, Any]:
    from rclpy.serialization import serialize_message

    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tb_bench_wr_"))
    try:
        emb = synth_embodiment(cameras, width, height)
        base = np.zeros((height, width, 3), np.uint8)
        data = serialize_message(_image_msg(0, 0, width, height, base, 0))
        w = me.EpisodeWriter(tmp, 0, emb.to_yaml(), "bench")
        chans = [w.add_topic(f"/cam{i}", "sensor_msgs/msg/Image") for i in range(cameras)]
        n = 0
        c0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < duration_s:
            for c in chans:
                w.write(c, data, time.time_ns())
                n += 1
            if n % 60 == 0:
                w.flush()
        path = w.finish()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {
            "mode": "writer",
            "frames_written": n,
            "frames_per_s": round(n / wall, 1),
            "mb_per_s": round(n * len(data) / wall / 1e6, 1),
            "cpu_percent": round(100 * cpu / wall, 1),
            "file_mb": round(path.stat().st_size / 1e6, 1),
        }
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _bench_ros(tmp: Path, duration_s, cameras, width, height, rate_hz) -> dict[str, Any]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger

    from twinbrain_ros.srv import StartEpisode

    emb = synth_embodiment(cameras, width, height, camera_hz=rate_hz)
    contract = write_embodiment(emb, tmp / "bench_embodiment.yaml")
    params = {
        "recorder_node": {
            "ros__parameters": {
                "embodiment": str(contract),
                "output_dir": str(tmp / "episodes"),
                "min_free_mb": 0.0,
                "action_topic": "leader/joint_states",
                "queue_depth": 10,
            }
        }
    }
    pfile = tmp / "recorder.yaml"
    pfile.write_text(yaml.safe_dump(params))
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp / "recorder.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twinbrain_ros.nodes.recorder_node",
            "--ros-args",
            "--params-file",
            str(pfile),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(root),
    )
    rclpy.init()
    node = rclpy.create_node("bench_recorder_publisher")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        pubs = [node.create_publisher(Image, c.topic, 5) for c in emb.cameras]
        js = node.create_publisher(JointState, "joint_states", 10)
        leader = node.create_publisher(JointState, "leader/joint_states", 10)
        start_cli = node.create_client(StartEpisode, "/recorder_node/start")
        stop_cli = node.create_client(Trigger, "/recorder_node/stop")
        t_end = time.monotonic() + 30.0
        while not (start_cli.service_is_ready() and stop_cli.service_is_ready()):
            ex.spin_once(timeout_sec=0.1)
            if time.monotonic() > t_end or proc.poll() is not None:
                raise RuntimeError(f"recorder did not come up: {(tmp / 'recorder.log').read_text()[-2000:]}")
        while js.get_subscription_count() == 0 or any(p.get_subscription_count() == 0 for p in pubs):
            ex.spin_once(timeout_sec=0.05)
        msgs = [
            _image_msg(i, 0, width, height, np.zeros((height, width, 3), np.uint8), 0) for i in range(cameras)
        ]
        fut = start_cli.call_async(StartEpisode.Request(instruction="bench"))
        ex.spin_until_future_complete(fut, timeout_sec=10.0)
        if not fut.result() or not fut.result().success:
            raise RuntimeError(f"start failed: {fut.result()}")
        published = 0
        c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        k = 0
        while time.monotonic() - t0 < duration_s:
            target = t0 + k / rate_hz
            while time.monotonic() < target:
                ex.spin_once(timeout_sec=max(0.0, min(0.002, target - time.monotonic())))
            now = node.get_clock().now().to_msg()
            for m, p in zip(msgs, pubs, strict=True):
                m.header.stamp = now
                p.publish(m)
                published += 1
            q = _joint_msg(emb.joint_names, np.zeros(emb.num_joints), 0)
            q.header.stamp = now
            js.publish(q)
            leader.publish(q)
            k += 1
        wall = time.monotonic() - t0
        cpu = _cpu_seconds(proc.pid) - c0
        fut = stop_cli.call_async(Trigger.Request())
        ex.spin_until_future_complete(fut, timeout_sec=20.0)
        res = fut.result()
        if res is None or not res.success:
            raise RuntimeError(f"stop failed: {res}")
        files = [p for _, s, p in me.scan_episodes(tmp / "episodes") if s == "complete"]
        info = me.read_episode_info(files[-1])
        cam_topics = [f"/{c.topic}" for c in emb.cameras]
        written = sum(info.message_counts.get(t, 0) for t in cam_topics)
        return {
            "mode": "ros",
            "cameras": cameras,
            "resolution": f"{width}x{height}",
            "rate_hz": rate_hz,
            "duration_s": round(wall, 2),
            "frames_published": published,
            "frames_written": written,
            "frames_per_s": round(written / wall, 1),
            "mb_per_s": round(written * width * height * 3 / wall / 1e6, 1),
            "cpu_percent": round(100 * cpu / wall, 1),
            "gaps": info.gap_count(),
            "file_mb": round(files[-1].stat().st_size / 1e6, 1),
        }
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown()
        proc.send_signal(2)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
