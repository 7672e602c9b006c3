# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""controller_node as a real process over DDS: rate, seam continuity, bad chunks, a killed policy,
e-stop and parameter refusal, all measured on the command and status topics.

Run inside the loopback-only namespace:
    tools/isolated.sh .venv/bin/python -m pytest test/ros/test_controller_node.py -q
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest


def _load_shared_helpers():
    # test/ is no package and "conftest" in sys.modules is whichever conftest loaded last (test/model
    # has one too), so load test/conftest.py by path for its wait_for helper.
    spec = importlib.util.spec_from_file_location(
        "twinbrain_test_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wait_for = _load_shared_helpers().wait_for

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]
MODULE = "twinbrain_ros.nodes.controller_node"
STARTUP_S = 30.0  # generous: node start-up on a loaded 2-core machine takes seconds


def _emb():
    from twinbrain_ros.core.embodiment import load_embodiment

    return load_embodiment("so101")


class Probe:
    """The test's own ROS node: publishes joint states/chunks/e-stop, records commands and status."""

    def __init__(self, command_type: str = "joint_state"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from std_srvs.srv import SetBool
        from trajectory_msgs.msg import JointTrajectory
        from twinbrain_ros.msg import ActionChunk, ControllerStatus

        from twinbrain_ros.ros.spinning import SpinThread

        self.rclpy = rclpy
        self.emb = _emb()
        self.names = self.emb.joint_names
        self.mid = 0.5 * (self.emb.limits.lower + self.emb.limits.upper)
        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx)
        self.node = rclpy.create_node("controller_probe", context=self.ctx)
        self.lock = threading.Lock()
        self.cmds: list[tuple[float, float, np.ndarray, np.ndarray]] = []  # (recv, stamp, q, v)
        self.status: list = []
        if command_type == "joint_state":
            self.node.create_subscription(JointState, "joint_command", self._on_js_cmd, 200)
        elif command_type == "joint_trajectory":
            self.node.create_subscription(JointTrajectory, "joint_command", self._on_traj_cmd, 200)
        self.node.create_subscription(ControllerStatus, "controller_node/status", self._on_status, 50)
        self.pub_js = self.node.create_publisher(JointState, "joint_states", 10)
        self.pub_chunk = self.node.create_publisher(ActionChunk, "action_chunk", 10)
        self.pub_estop = self.node.create_publisher(Bool, "estop", 10)
        self.estop_client = self.node.create_client(SetBool, "controller_node/estop")
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.spin = SpinThread(self.executor)

    def _on_js_cmd(self, m) -> None:
        idx = [list(m.name).index(n) for n in self.names]
        stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        with self.lock:
            self.cmds.append(
                (time.monotonic(), stamp, np.asarray(m.position)[idx], np.asarray(m.velocity)[idx])
            )

    def _on_traj_cmd(self, m) -> None:
        idx = [list(m.joint_names).index(n) for n in self.names]
        p = m.points[0]
        with self.lock:
            self.cmds.append(
                (time.monotonic(), float("nan"), np.asarray(p.positions)[idx], np.asarray(p.velocities)[idx])
            )

    def _on_status(self, m) -> None:
        with self.lock:
            self.status.append(m)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def last_status(self):
        with self.lock:
            return self.status[-1] if self.status else None

    def commands(self, since: float = -np.inf):
        with self.lock:
            rows = [c for c in self.cmds if c[0] >= since]
        return (
            np.array([r[0] for r in rows]),
            np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]).reshape(-1, len(self.names)),
            np.array([r[3] for r in rows]).reshape(-1, len(self.names)),
        )

    def publish_state(self, q=None) -> None:
        from twinbrain_ros.ros.conversions import joint_state_to_msg

        self.pub_js.publish(joint_state_to_msg(self.now(), self.names, self.mid if q is None else q))

    def chunk_msg(self, cid, t0, positions, step_dt=0.05, obs=None):
        from twinbrain_ros.core.types import ActionChunk
        from twinbrain_ros.ros.conversions import chunk_to_msg

        c = ActionChunk(self.names, positions, step_dt, t0, t0 if obs is None else obs, cid)
        return chunk_to_msg(c)

    def wait_status(self, pred, timeout: float) -> bool:
        def ok():
            s = self.last_status()
            return s is not None and pred(s)

        return wait_for(ok, timeout=timeout)

    def wait_holding(self, node_proc) -> None:
        """Publish joint states until the controller reports holding (it initialised from them)."""

        def ok():
            assert node_proc.alive(), node_proc.log()[-3000:]
            self.publish_state()
            s = self.last_status()
            return s is not None and s.mode == "holding"

        assert wait_for(ok, timeout=STARTUP_S, period=0.1), node_proc.log()[-3000:]

    def close(self) -> None:
        self.spin.stop()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


@pytest.fixture
def probe_factory(ros_domain):
    probes = []

    def make(command_type="joint_state"):
        p = Probe(command_type)
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.close()


BASE = {"status_rate_hz": 10.0}


def _continuity(stamps, q, v, amax, vmax):
    """Worst ratios measured on the commands, each <= 1 when the motion is continuous and feasible.

    Returns:
        (acceleration of the commanded positions / limit, step / velocity limit, change of the
        published velocity field / what the acceleration limit allows).
    """
    dt = np.diff(stamps)
    span = 0.5 * (dt[1:] + dt[:-1])
    secant = np.diff(q, axis=0) / dt[:, None]
    acc_ratio = np.abs(np.diff(secant, axis=0)) / (amax * span[:, None])
    step_ratio = np.abs(secant) / vmax
    vfield_ratio = np.abs(np.diff(v, axis=0))[1:] / (amax * span[:, None])
    return float(acc_ratio.max()), float(step_ratio.max()), float(vfield_ratio.max())


def test_rate_and_continuity_across_chunk_seams(start_node, probe_factory):
    proc = start_node(
        MODULE, "controller_node", {**BASE, "command_interface": "joint_state", "ramp_in_s": 0.3}
    )
    probe = probe_factory("joint_state")
    probe.wait_holding(proc)
    rng = np.random.default_rng(0)
    amp, w = 0.25, 2.5
    t_stream0 = time.monotonic()
    n_chunks = 30
    for k in range(n_chunks):
        now = probe.now()
        t0 = now - 0.03  # a policy's observation is older than "now": the first step lies in the past
        times = t0 + 0.05 * np.arange(16)
        # Each chunk carries its own prediction error (offset), as a real policy's would.
        pos = probe.mid + amp * np.sin(w * times)[:, None] + rng.normal(0, 0.01, len(probe.mid))
        probe.pub_chunk.publish(probe.chunk_msg(k + 1, t0, pos, obs=t0))
        probe.publish_state()
        time.sleep(0.1)
    t_stream1 = time.monotonic()
    assert probe.wait_status(lambda s: s.mode == "holding", timeout=5.0), proc.log()[-3000:]
    status = probe.last_status()
    recv, stamps, q, v = probe.commands(since=t_stream0)
    inside = recv <= t_stream1
    # Rate: from the controller's own stamps (node clock) and from what arrived here.
    rate = (inside.sum() - 1) / (stamps[inside][-1] - stamps[inside][0])
    rate_rx = (inside.sum() - 1) / (recv[inside][-1] - recv[inside][0])
    acc_ratio, step_ratio, vfield_ratio = _continuity(
        stamps, q, v, probe.emb.limits.max_acceleration, probe.emb.limits.max_velocity
    )
    gaps_ms = np.diff(stamps[inside]) * 1e3
    print(
        f"\n[controller] rate {rate:.1f} Hz (rx {rate_rx:.1f}), stamp-gap error p50/p99 "
        f"{np.percentile(np.abs(gaps_ms - 5), 50):.3f}/{np.percentile(np.abs(gaps_ms - 5), 99):.3f} ms, "
        f"status period error p50/p99 {status.period_error_p50_ms:.3f}/{status.period_error_p99_ms:.3f} ms, "
        f"accepted {status.chunks_accepted}, clamped cycles {status.clamped_cycles}, "
        f"max accel/limit {acc_ratio:.3f} (velocity field {vfield_ratio:.3f}), "
        f"max speed/limit {step_ratio:.3f}"
    )
    assert 180.0 <= rate <= 210.0 and 170.0 <= rate_rx <= 220.0
    assert status.chunks_accepted == n_chunks and status.chunks_rejected == 0
    # Continuity measured on the command topic: no velocity change beyond the acceleration limit, no
    # step beyond the velocity limit, across every seam (30 splices) and the ramp/brake transitions.
    assert acc_ratio <= 1.01 and step_ratio <= 1.01 and vfield_ratio <= 1.2
    # The splices themselves were feasible: the limiter (almost) never had to bend the command.
    assert status.clamped_cycles <= 0.01 * len(stamps)
    # The streamed motion really moved, and the hold afterwards is not zeros.
    assert np.ptp(q[:, 0]) > 0.3
    assert np.all(np.abs(q[-1] - probe.mid) < 0.5)


BAD_CHUNKS = [
    ("wrong joint names", "joint_names mismatch"),
    ("NaN", "NaN or inf"),
    ("inf", "NaN or inf"),
    ("dt zero", "step_dt must be > 0"),
    ("dt negative", "step_dt must be > 0"),
    ("wrong array length", "positions has"),
    ("stamp far in the future", "in the future"),
    ("stamp far in the past", "stale"),
]


def _bad_chunk(probe, kind, cid):
    now = probe.now()
    pos = np.tile(probe.mid, (16, 1))
    msg = probe.chunk_msg(cid, now, pos)
    if kind == "wrong joint names":
        msg.joint_names = [n if n != "elbow_flex" else "elbow" for n in probe.names]
    elif kind == "NaN":
        pos[3, 2] = np.nan
        msg = probe.chunk_msg(cid, now, pos)
    elif kind == "inf":
        pos[5, 0] = np.inf
        msg = probe.chunk_msg(cid, now, pos)
    elif kind == "dt zero":
        msg.step_dt = 0.0
    elif kind == "dt negative":
        msg.step_dt = -0.05
    elif kind == "wrong array length":
        msg.positions = np.asarray(msg.positions)[:-1]
    elif kind == "stamp far in the future":
        msg = probe.chunk_msg(cid, now + 30.0, pos, obs=now + 30.0)
    elif kind == "stamp far in the past":
        msg = probe.chunk_msg(cid, now - 30.0, pos, obs=now - 30.0)
    return msg


def test_bad_chunks_are_rejected_with_reasons_and_estop(start_node, probe_factory):
    params = {**BASE, "chunk_timeout_s": 60.0, "ramp_in_s": 0.2, "max_chunk_age_s": 5.0}
    proc = start_node(MODULE, "controller_node", params)
    probe = probe_factory("joint_trajectory")
    probe.wait_holding(proc)
    # One long, slow good chunk (10 s): the controller tracks it while the bad ones arrive.
    now = probe.now()
    times = now + 0.05 * np.arange(200)
    good = probe.mid + 0.2 * np.sin(0.8 * (times - now))[:, None]
    t_good = time.monotonic()
    probe.pub_chunk.publish(probe.chunk_msg(1, now, good))
    assert probe.wait_status(lambda s: s.mode == "tracking" and s.active_chunk_id == 1, timeout=5.0)
    for i, (kind, needle) in enumerate(BAD_CHUNKS):
        probe.pub_chunk.publish(_bad_chunk(probe, kind, 10 + i))
        ok = probe.wait_status(lambda s, i=i, needle=needle: s.chunks_rejected == i + 1, timeout=5.0)
        s = probe.last_status()
        assert ok, f"{kind}: not rejected ({s})"
        assert needle in s.last_reason, f"{kind}: reason {s.last_reason!r}"
        assert f"rejected chunk {10 + i}" in s.last_reason
        assert s.mode == "tracking" and s.active_chunk_id == 1 and s.chunks_accepted == 1
    print(f"\n[controller] last rejection reason: {probe.last_status().last_reason}")
    # E-stop over the service: brake to a hold, chunks refused, then release over the topic.
    from std_msgs.msg import Bool
    from std_srvs.srv import SetBool

    cli = probe.estop_client
    assert cli.wait_for_service(timeout_sec=10.0)
    fut = cli.call_async(SetBool.Request(data=True))
    assert wait_for(fut.done, timeout=5.0) and fut.result().success, proc.log()[-3000:]
    assert probe.wait_status(lambda s: s.mode == "estop" and s.active_chunk_id == 0, timeout=3.0)
    n_rej = probe.last_status().chunks_rejected
    now = probe.now()
    probe.pub_chunk.publish(probe.chunk_msg(100, now, np.tile(probe.mid, (16, 1))))
    assert probe.wait_status(lambda s: s.chunks_rejected == n_rej + 1, timeout=5.0)
    assert "e-stop engaged" in probe.last_status().last_reason
    probe.pub_estop.publish(Bool(data=False))
    assert probe.wait_status(lambda s: s.mode == "holding", timeout=5.0)
    now = probe.now()
    probe.pub_chunk.publish(probe.chunk_msg(101, now, np.tile(probe.mid, (40, 1))))
    assert probe.wait_status(
        lambda s: s.mode in ("ramping", "tracking") and s.active_chunk_id == 101, timeout=5.0
    )
    # The command stayed continuous the whole time: no step larger than the velocity limit allows in
    # the time between two messages (a zero command or a jump to a bad chunk would be ~1 rad).
    recv, _, q, _ = probe.commands(since=t_good)
    dt_rx = np.maximum(np.diff(recv), 0.005)
    assert len(q) > 200
    step = np.abs(np.diff(q, axis=0)) / (probe.emb.limits.max_velocity * dt_rx[:, None])
    assert step.max() <= 1.05
    assert np.all(np.abs(q - probe.mid) <= 0.25)  # never left the good chunk's range, never zeros


def test_killed_policy_process_makes_the_controller_brake_and_hold(start_node, probe_factory, tmp_path):
    timeout_s = 0.3
    params = {**BASE, "command_interface": "joint_state", "chunk_timeout_s": timeout_s, "ramp_in_s": 0.2}
    proc = start_node(MODULE, "controller_node", params)
    probe = probe_factory("joint_state")
    probe.wait_holding(proc)
    log = open(tmp_path / "chunk_source.log", "w")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    src = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "test" / "ros" / "chunk_source.py"),
            "--amplitude",
            "0.3",
            "--omega",
            "2.0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(ROOT),
    )
    try:
        assert probe.wait_status(
            lambda s: s.mode == "tracking" and s.chunks_accepted >= 10, timeout=STARTUP_S
        ), (tmp_path / "chunk_source.log").read_text()[-2000:]
        # Kill it mid-chunk (its last chunk still has most of its 0.8 s ahead).
        src.send_signal(signal.SIGKILL)
        src.wait(timeout=5)
        t_kill = time.monotonic()
        t_kill_stamp = probe.now()
        assert probe.wait_status(lambda s: s.mode == "holding", timeout=5.0), proc.log()[-3000:]
    finally:
        if src.poll() is None:
            src.kill()
            src.wait(timeout=5)
        log.close()
    status = probe.last_status()
    assert "policy timeout" in status.last_reason
    recv, stamps, q, v = probe.commands(since=t_kill - 1.0)
    after = stamps >= t_kill_stamp
    still = np.all(v == 0.0, axis=1)
    # The source moves at up to amplitude * omega = 0.6 rad/s; over any 0.3 s it reaches >= 0.18 rad/s.
    v_max = 0.6
    recent = (stamps >= t_kill_stamp - 0.3) & ~after
    moving_before = np.abs(v[recent]).max()
    first_hold = stamps[after & still][0]
    # Braking starts within the timeout (the last chunk arrived <= 0.1 s before the kill) and a hold at
    # half the acceleration limit follows within v / (0.5 a).
    t_stop = v_max / (0.5 * probe.emb.limits.max_acceleration.min())
    print(
        f"\n[controller] killed policy: hold {first_hold - t_kill_stamp:.3f} s after SIGKILL "
        f"(timeout {timeout_s} s; up to {moving_before:.2f} rad/s in the 0.3 s before)"
    )
    assert moving_before > 0.1  # it was really moving when the policy died
    assert first_hold - t_kill_stamp <= timeout_s + t_stop + 0.15
    assert np.all(still[stamps >= first_hold])  # and stays held
    acc_ratio, step_ratio, vfield_ratio = _continuity(
        stamps, q, v, probe.emb.limits.max_acceleration, probe.emb.limits.max_velocity
    )
    assert acc_ratio <= 1.01 and step_ratio <= 1.01 and vfield_ratio <= 1.2
    # Until the timeout it keeps executing the last chunk (<= 0.6 rad/s), then brakes: it ends near
    # where it was when the policy died, never jumps, never commands zeros.
    reach = v_max * (timeout_s + 0.1) + v_max**2 / probe.emb.limits.max_acceleration.min() + 0.02
    assert np.all(np.abs(q[after] - q[after][0]) < reach)


def test_sim_time_drives_chunk_timing(start_node, probe_factory):
    """Under use_sim_time the controller compares chunk stamps with /clock, not with the wall clock."""
    from rosgraph_msgs.msg import Clock

    from twinbrain_ros.ros.conversions import sec_to_time

    params = {**BASE, "command_interface": "joint_state", "use_sim_time": True, "ramp_in_s": 0.1}
    proc = start_node(MODULE, "controller_node", params)
    probe = probe_factory("joint_state")
    pub_clock = probe.node.create_publisher(Clock, "/clock", 10)
    sim0, wall0 = 1000.0, time.monotonic()
    stop = threading.Event()

    def sim_now() -> float:
        return sim0 + (time.monotonic() - wall0)

    def clock_loop() -> None:
        while not stop.is_set():
            pub_clock.publish(Clock(clock=sec_to_time(sim_now())))
            time.sleep(0.002)

    from twinbrain_ros.ros.conversions import joint_state_to_msg

    th = threading.Thread(target=clock_loop, daemon=True)
    th.start()
    try:

        def holding():
            assert proc.alive(), proc.log()[-3000:]
            probe.pub_js.publish(joint_state_to_msg(sim_now(), probe.names, probe.mid))
            s = probe.last_status()
            return s is not None and s.mode == "holding"

        assert wait_for(holding, timeout=STARTUP_S, period=0.1), proc.log()[-3000:]
        t_start = time.monotonic()
        for k in range(10):
            t0 = sim_now()
            pos = probe.mid + 0.1 * np.sin(3.0 * (t0 - sim0 + 0.05 * np.arange(16)))[:, None]
            probe.pub_chunk.publish(probe.chunk_msg(k + 1, t0, pos))
            time.sleep(0.1)
        assert probe.wait_status(lambda s: s.chunks_accepted + s.chunks_rejected >= 10, timeout=5.0)
        s = probe.last_status()
        assert s.chunks_accepted == 10 and s.chunks_rejected == 0, s.last_reason
        assert s.mode in ("ramping", "tracking")
        _, stamps, _, _ = probe.commands(since=t_start)
        assert np.all(np.abs(stamps - sim0) < 60.0)  # command stamps are sim time, not epoch time
    finally:
        stop.set()
        th.join(timeout=2.0)


def test_float64_adapter_and_dry_run(start_node, probe_factory):
    """forward_command_controller output, in contract order, diverted to ~/dry_run_command."""
    from std_msgs.msg import Float64MultiArray

    params = {**BASE, "command_interface": "float64_multi_array", "dry_run": True}
    proc = start_node(MODULE, "controller_node", params)
    probe = probe_factory(None)
    got: list = []
    probe.node.create_subscription(Float64MultiArray, "controller_node/dry_run_command", got.append, 50)
    real: list = []
    probe.node.create_subscription(Float64MultiArray, "joint_command", real.append, 50)
    probe.wait_holding(proc)
    assert wait_for(lambda: len(got) > 20, timeout=5.0)
    np.testing.assert_allclose(np.asarray(got[-1].data), probe.mid, atol=1e-9)
    assert not real


def test_out_of_range_parameter_is_refused_at_start(start_node):
    proc = start_node(MODULE, "controller_node", {"rate_hz": 5000.0, "interpolation": "quadratic"})
    assert wait_for(lambda: not proc.alive(), timeout=STARTUP_S), "node did not exit"
    assert proc.proc.returncode == 2
    log = proc.log()
    assert "parameter 'rate_hz' = 5000.0 is outside the allowed range [1.0, 2000.0]" in log, log[-2000:]
    assert "parameter 'interpolation'" in log and "['linear', 'cubic']" in log
    assert "Traceback" not in log


def test_params_dataclass_matches_the_yaml_file():
    import yaml

    from twinbrain_ros.nodes.controller_node import ControllerParams
    from twinbrain_ros.ros.params import to_yaml_dict

    doc = yaml.safe_load((ROOT / "config" / "controller.yaml").read_text())["controller_node"][
        "ros__parameters"
    ]
    assert doc == to_yaml_dict(ControllerParams)
    # The node must not import torch (directly or through anything it imports).
    out = subprocess.run(
        [sys.executable, "-c", f"import sys, {MODULE}; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=60,
    )
    assert out.stdout.strip() == "False", out.stderr
