# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The policy node as a real process over DDS: this test process plays camera(s) + joint states.

Covers: chunks with the contract's joints, stamps and step; autostart and the lifecycle
change_state service; instruction via topic (transient local) and service; every kind of bad input
logged and counted in PolicyStatus while chunks keep flowing; stale/missing streams skipping ticks
with a reason; and latency-aware scheduling (each chunk arrives before the previous one runs out).
Run inside tools/isolated.sh.
"""

from __future__ import annotations

import gc
import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml


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

NODE = "policy_node"
MODULE = "twinbrain_ros.nodes.policy_node"

# A small two-camera contract keeps the test light on a shared 2-core machine; the first test runs
# the real so101 contract with full 640x480 frames.
SMALL = {
    "name": "testbot",
    "version": 1,
    "joints": [
        {"name": n, "lower": -1.5, "upper": 1.5, "max_velocity": 2.0, "max_acceleration": 20.0}
        for n in ("j1", "j2", "j3")
    ],
    "cameras": [
        {"name": "front", "topic": "cam/front/image_raw", "width": 64, "height": 48, "encoding": "rgb8"},
        {"name": "wrist", "topic": "cam/wrist/image_raw", "width": 32, "height": 24, "encoding": "mono8"},
    ],
    "rates": {"control_hz": 200.0, "policy_hz": 10.0, "camera_hz": 30.0, "state_hz": 100.0},
    "action": {"type": "joint_position", "horizon": 16, "step_dt": 0.05},
}


@pytest.fixture
def small_contract(tmp_path):
    p = tmp_path / "testbot.yaml"
    p.write_text(yaml.safe_dump(SMALL))
    return str(p)


class IO:
    """The test's side of the graph: publishes sensors, records chunks/status, calls services."""

    def __init__(self, emb, compressed: bool = False):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory
        from twinbrain_ros.msg import ActionChunk, PolicyStatus

        from twinbrain_ros.ros import qos
        from twinbrain_ros.ros.conversions import compressed_image_to_msg, image_to_msg
        from twinbrain_ros.ros.spinning import SpinThread

        self.emb = emb
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("policy_test_io", context=self.ctx)
        n = self.node
        self.cam_pubs = {}
        self.frames = {}
        for i, c in enumerate(emb.cameras):
            y, x = np.mgrid[0 : c.height, 0 : c.width]
            rgb = np.stack([x % 256, y % 256, np.full_like(x, 40 * i)], axis=-1).astype(np.uint8)
            if compressed:
                self.cam_pubs[c.name] = n.create_publisher(CompressedImage, c.topic + "/compressed", 5)
                self.frames[c.name] = compressed_image_to_msg(rgb, 0.0, "jpeg")
            else:
                self.cam_pubs[c.name] = n.create_publisher(Image, c.topic, 5)
                self.frames[c.name] = image_to_msg(rgb, 0.0, c.encoding)
        self.js_pub = n.create_publisher(JointState, "joint_states", 10)
        self.instr_pub = n.create_publisher(String, "instruction", qos.instruction_qos())
        self.chunks: list = []  # (receive wall time, msg)
        self.trajs: list = []
        self.status: list = []
        n.create_subscription(ActionChunk, "action_chunk", lambda m: self.chunks.append((time.time(), m)),
                              qos.chunk_qos())
        n.create_subscription(JointTrajectory, "joint_trajectory", self.trajs.append, qos.trajectory_qos())
        n.create_subscription(PolicyStatus, f"{NODE}/status", self.status.append, qos.status_qos())
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self._spin = SpinThread(self.executor)
        self.js_stamps: set[int] = set()
        self.paused: set[str] = set()
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    # --- sensors ---------------------------------------------------------------------------------

    def joint_state(self, stamp: float | None = None, names=None, positions=None):
        from twinbrain_ros.ros.conversions import joint_state_to_msg

        names = tuple(reversed(self.emb.joint_names)) if names is None else tuple(names)  # any order
        pos = np.linspace(-0.2, 0.2, len(names)) if positions is None else positions
        return joint_state_to_msg(time.time() if stamp is None else stamp, names, pos)

    def _feed(self):
        from twinbrain_ros.ros.conversions import sec_to_time, time_to_ns

        k = 0
        while not self._stop.is_set():
            if "joint_states" not in self.paused:
                m = self.joint_state()
                self.js_stamps.add(time_to_ns(m.header.stamp))
                self.js_pub.publish(m)
            if k % 3 == 0:  # cameras at ~15 Hz, joint states at ~50 Hz
                for name, pub in self.cam_pubs.items():
                    if name not in self.paused:
                        f = self.frames[name]
                        f.header.stamp = sec_to_time(time.time())
                        pub.publish(f)
            k += 1
            self._stop.wait(0.02)

    def inject_until_counted(self, publish, reason_part: str, timeout: float = 20.0) -> None:
        """Publish a bad message (again every 0.2 s) until status counts it with ``reason_part``."""
        before = self.last_status().rejected_inputs
        last = [0.0]

        def spin():
            if time.monotonic() - last[0] > 0.2:
                last[0] = time.monotonic()
                publish()

        ok = wait_for(
            lambda: self.status[-1].rejected_inputs > before and reason_part in self.status[-1].last_reason,
            timeout, spin=spin,
        )
        assert ok, f"'{reason_part}' not counted; last status: {self.status[-1] if self.status else None}"

    # --- status / services -----------------------------------------------------------------------

    def last_status(self):
        assert wait_for(lambda: bool(self.status), 20.0), "no PolicyStatus received"
        return self.status[-1]

    def wait_status(self, pred, timeout: float = 20.0) -> bool:
        return wait_for(lambda: bool(self.status) and pred(self.status[-1]), timeout)

    def call(self, srv_type, name: str, request, timeout: float = 20.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            fut = client.call_async(request)
            assert wait_for(fut.done, timeout), f"service {name} did not answer"
            return fut.result()
        finally:
            self.node.destroy_client(client)

    def change_state(self, transition_id: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        req = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, f"/{NODE}/change_state", req).success

    def get_state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"/{NODE}/get_state", GetState.Request()).current_state.label

    def set_instruction(self, text: str):
        from twinbrain_ros.srv import SetInstruction

        return self.call(SetInstruction, f"/{NODE}/set_instruction", SetInstruction.Request(instruction=text))

    def close(self):
        self._stop.set()
        self._feeder.join(timeout=5)
        self._spin.stop()
        self.node.destroy_node()
        self.ctx.try_shutdown()


@pytest.fixture
def make_io(ros_domain):
    made = []

    def _make(emb, **kw):
        io = IO(emb, **kw)
        made.append(io)
        return io

    # Arrival times are taken in this process. Late in a full run its heap holds every earlier
    # test's objects, and a full garbage collection walking them can pause the subscriber thread
    # for a second; freezing what exists now keeps those pauses out of the real-time assertions.
    gc.collect()
    gc.freeze()
    try:
        yield _make
    finally:
        for io in made:
            io.close()
        gc.unfreeze()


def _chunk_times(m):
    from twinbrain_ros.ros.conversions import time_to_sec

    t0 = time_to_sec(m.t0)
    return t0, t0 + (m.horizon - 1) * m.step_dt


def test_autostart_chunks_stamps_and_instruction(start_node, make_io):
    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.policies.scripted import ScriptedSinePolicy
    from twinbrain_ros.ros.conversions import time_to_ns, time_to_sec

    emb = load_embodiment("so101")
    io = make_io(emb)
    from std_msgs.msg import String

    io.instr_pub.publish(String(data="pick up the red cube"))  # latched: the node joins later
    proc = start_node(MODULE, NODE, {"autostart": True, "publish_joint_trajectory": True})
    assert wait_for(lambda: len(io.chunks) >= 3 and len(io.trajs) >= 1, 30.0), proc.log()[-3000:]

    ref = ScriptedSinePolicy(emb)  # same defaults and seed as the node: positions are reproducible
    ids = [m.chunk_id for _, m in io.chunks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for _, m in io.chunks[:3]:
        assert tuple(m.joint_names) == emb.joint_names
        assert m.horizon == emb.action.horizon and m.step_dt == emb.action.step_dt
        assert len(m.positions) == m.horizon * emb.num_joints
        assert m.t0 == m.header.stamp  # t0 = observation stamp
        assert time_to_ns(m.header.stamp) in io.js_stamps  # the stamp of a joint state we sent
        assert m.model_id == "scripted_sine" and m.inference_ms > 0
        t = time_to_sec(m.t0) + m.step_dt * np.arange(m.horizon)
        np.testing.assert_allclose(np.asarray(m.positions).reshape(m.horizon, -1), ref.positions_at(t),
                                   atol=1e-5)
    tr = io.trajs[0]
    assert tuple(tr.joint_names) == emb.joint_names and len(tr.points) == emb.action.horizon

    assert io.wait_status(lambda s: s.lifecycle_state == "active" and s.chunks_published >= 3)
    s = io.last_status()
    assert s.model_id == "scripted_sine"
    assert list(s.stream_names) == ["front", "joint_states"] and all(a >= 0 for a in s.stream_age_ms)
    assert s.latency_p50_ms > 0 and s.latency_p95_ms >= s.latency_p50_ms
    # the latched instruction reaches the node once discovery matched the late subscription
    assert io.wait_status(lambda s: s.active_instruction == "pick up the red cube")

    # instruction by service, then by topic
    r = io.set_instruction("  place it in the box ")
    assert r.success, r.message
    assert io.wait_status(lambda s: s.active_instruction == "place it in the box")
    io.instr_pub.publish(String(data="stack the blocks"))
    assert io.wait_status(lambda s: s.active_instruction == "stack the blocks")
    r = io.set_instruction("")
    assert not r.success and "empty" in r.message
    assert io.wait_status(lambda s: s.rejected_inputs >= 1 and "instruction is empty" in s.last_reason)
    assert io.last_status().active_instruction == "stack the blocks"  # kept the last good one
    assert proc.alive()


def test_lifecycle_via_change_state_service_with_compressed_images(start_node, make_io, small_contract):
    from lifecycle_msgs.msg import Transition

    from twinbrain_ros.core.embodiment import load_embodiment

    emb = load_embodiment(small_contract)
    io = make_io(emb, compressed=True)
    proc = start_node(MODULE, NODE, {"embodiment": small_contract, "compressed_images": True})
    assert io.wait_status(lambda s: s.lifecycle_state == "unconfigured"), proc.log()[-3000:]
    assert not io.chunks

    assert io.change_state(Transition.TRANSITION_CONFIGURE)
    assert io.get_state() == "inactive"
    assert io.wait_status(lambda s: s.lifecycle_state == "inactive" and s.model_id == "scripted_sine")
    assert not wait_for(lambda: bool(io.chunks), 1.0), "an inactive node published chunks"

    assert io.change_state(Transition.TRANSITION_ACTIVATE)
    assert wait_for(lambda: len(io.chunks) >= 2, 20.0), proc.log()[-3000:]
    assert tuple(io.chunks[-1][1].joint_names) == emb.joint_names
    assert list(io.last_status().stream_names) == ["front", "wrist", "joint_states"]

    # a corrupt compressed frame is rejected and counted; the node keeps going
    from sensor_msgs.msg import CompressedImage

    from twinbrain_ros.ros.conversions import sec_to_time

    def corrupt():
        m = CompressedImage(format="jpeg", data=bytes(io.frames["front"].data)[:40])
        m.header.stamp = sec_to_time(time.time())
        io.cam_pubs["front"].publish(m)

    io.inject_until_counted(corrupt, "camera 'front'")

    assert io.change_state(Transition.TRANSITION_DEACTIVATE)
    assert io.get_state() == "inactive"
    wait_for(lambda: False, 0.3)  # let chunks already on the wire land
    n = len(io.chunks)
    assert not wait_for(lambda: len(io.chunks) > n, 1.0), "chunks kept coming after deactivate"

    assert io.change_state(Transition.TRANSITION_ACTIVATE)  # re-activation works
    assert wait_for(lambda: len(io.chunks) > n, 20.0)
    ids = [m.chunk_id for _, m in io.chunks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ids keep increasing across activations

    assert io.change_state(Transition.TRANSITION_DEACTIVATE)
    assert io.change_state(Transition.TRANSITION_CLEANUP)
    assert io.wait_status(lambda s: s.lifecycle_state == "unconfigured" and s.model_id == "")
    assert proc.alive()


def test_bad_inputs_logged_counted_and_node_recovers(start_node, make_io, small_contract):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.ros.conversions import image_to_msg

    emb = load_embodiment(small_contract)
    io = make_io(emb)
    proc = start_node(MODULE, NODE, {"embodiment": small_contract, "autostart": True,
                                     "max_image_age_s": 5.0, "max_state_age_s": 5.0,
                                     "instruction_max_length": 20})
    assert wait_for(lambda: len(io.chunks) >= 1, 30.0), proc.log()[-3000:]
    assert io.wait_status(lambda s: s.lifecycle_state == "active")

    def image(**kw):
        def pub():
            good = io.frames["front"]
            m = Image(height=good.height, width=good.width, encoding=good.encoding, step=good.step,
                      data=bytes(good.data))
            for k, v in kw.items():
                setattr(m, k, v)
            m.header = image_to_msg(np.zeros((1, 1, 3), np.uint8), time.time()).header
            io.cam_pubs["front"].publish(m)

        return pub

    small = image_to_msg(np.zeros((24, 32, 3), np.uint8), 0.0)
    cases = [
        (image(encoding="bgr8"), "encoding 'bgr8' differs from the contract's 'rgb8'"),
        (image(width=small.width, height=small.height, step=small.step, data=bytes(small.data)),
         "image is 32x24 but the contract expects 64x48"),
        (image(data=bytes(io.frames["front"].data)[:-100]), "data is truncated"),
        (lambda: io.js_pub.publish(io.joint_state(positions=np.array([0.0, np.nan, 0.0]))),
         "non-finite positions"),
        (lambda: io.js_pub.publish(io.joint_state(names=(*emb.joint_names, "bogus_joint"),
                                                  positions=np.zeros(4))), "unknown joints ['bogus_joint']"),
        (lambda: io.js_pub.publish(io.joint_state(names=emb.joint_names[:2], positions=np.zeros(2))),
         "missing joints ['j3']"),
        (lambda: io.js_pub.publish(io.joint_state(stamp=time.time() - 3.0)), "time went backwards"),
        (lambda: io.instr_pub.publish(String(data="   ")), "instruction is empty"),
        (lambda: io.instr_pub.publish(String(data="x" * 21)), "more than the maximum 20"),
    ]
    for publish, reason in cases:
        io.inject_until_counted(publish, reason)
        n = len(io.chunks)
        assert wait_for(lambda n=n: len(io.chunks) > n, 20.0), f"no chunk after '{reason}'"

    r = io.set_instruction("y" * 50)  # over-long through the service as well
    assert not r.success and "more than the maximum 20" in r.message

    log = proc.log()
    for _, reason in cases:
        assert reason in log, f"'{reason}' was not logged"
    # the service answered at once; the periodic status reflects the count a moment later
    assert io.wait_status(lambda s: s.rejected_inputs >= len(cases) + 1 and s.lifecycle_state == "active")
    assert proc.alive()


def test_missing_and_stale_streams_skip_ticks_with_reason(start_node, make_io, small_contract):
    from twinbrain_ros.core.embodiment import load_embodiment

    emb = load_embodiment(small_contract)
    io = make_io(emb)
    io.paused.update({"front", "wrist"})  # no camera at all to begin with
    proc = start_node(MODULE, NODE, {"embodiment": small_contract, "autostart": True,
                                     "max_image_age_s": 0.3, "max_state_age_s": 0.3})
    # (the very first tick may also miss joint_states; wait for one that misses only the cameras)
    assert io.wait_status(lambda s: s.last_reason == "skipped tick: missing: front, wrist", 30.0), (
        proc.log()[-3000:]
    )
    assert not io.chunks
    s = io.last_status()
    ages = dict(zip(s.stream_names, s.stream_age_ms, strict=True))
    assert ages["front"] < 0 and ages["wrist"] < 0 and ages["joint_states"] >= 0

    io.paused.clear()
    assert wait_for(lambda: len(io.chunks) >= 1, 20.0), proc.log()[-3000:]

    io.paused.add("wrist")  # wrist camera stops: its last frame goes stale
    assert io.wait_status(lambda s: "stale: wrist" in s.last_reason)
    skipped = io.last_status().skipped_ticks
    assert io.wait_status(lambda s: s.skipped_ticks > skipped)
    n = len(io.chunks)
    assert not wait_for(lambda: len(io.chunks) > n + 1, 1.0), "chunks published from a stale stream"

    io.paused.clear()
    assert wait_for(lambda: len(io.chunks) > n + 1, 20.0)
    assert "stale: wrist" in proc.log() and "missing: front, wrist" in proc.log()


def test_scheduled_chunk_arrives_before_previous_runs_out(start_node, make_io, small_contract):
    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.ros.conversions import time_to_sec

    emb = load_embodiment(small_contract)
    io = make_io(emb)
    latency, margin = 0.25, 0.15
    proc = start_node(MODULE, NODE, {"embodiment": small_contract, "autostart": True,
                                     "simulated_latency_s": latency, "latency_margin_s": margin,
                                     "max_inference_rate_hz": 20.0, "min_inference_rate_hz": 0.5})
    assert wait_for(lambda: len(io.chunks) >= 9, 40.0), proc.log()[-3000:]
    got = list(io.chunks)
    for (_, prev), (recv, new) in zip(got[3:], got[4:], strict=False):  # after the warm-up calls
        _, prev_end = _chunk_times(prev)
        assert recv < prev_end, (
            f"chunk {new.chunk_id} arrived {recv - prev_end:.3f} s after chunk {prev.chunk_id} ran out"
        )
        assert new.inference_ms >= latency * 1e3
    # Starts follow the deadline (chunk end - p95 - margin), never earlier than the previous call
    # allows (back to back = the latency): for a 0.75 s chunk and p95 = 0.25 s that is ~0.35 s after
    # the previous observation, not ~0.25 s. The node's own p95 grows on a loaded machine (CI saw
    # 0.27 s spacing), so the expected spacing is computed from the p95 it reports.
    starts = np.array([time_to_sec(m.t0) for _, m in got[3:]])
    s = io.last_status()
    assert latency * 1e3 <= s.latency_p95_ms < latency * 1e3 + 150
    t0, t_end = _chunk_times(got[-1][1])
    expected = max(t_end - t0 - s.latency_p95_ms * 1e-3 - margin, latency)
    spacing = float(np.median(np.diff(starts)))
    assert expected - 0.05 < spacing < expected + 0.1, (spacing, expected, np.diff(starts))
    if s.latency_p95_ms < (latency + 0.05) * 1e3:  # an unloaded run: clearly not back to back
        assert spacing > latency + 0.05, np.diff(starts)
    assert proc.alive()


def test_configure_failure_is_reported_and_node_stays_up(start_node, make_io, tmp_path):
    from twinbrain_ros.core.embodiment import load_embodiment

    io = make_io(load_embodiment("so101"))
    missing = str(tmp_path / "no_such_model")
    proc = start_node(MODULE, NODE, {"autostart": True, "policy": "twinbrain", "model_dir": missing})
    assert io.wait_status(
        lambda s: s.lifecycle_state == "unconfigured" and "configure failed" in s.last_reason, 30.0
    ), proc.log()[-3000:]
    assert "is not a directory" in io.last_status().last_reason
    assert "configure failed" in proc.log()
    assert proc.alive() and not io.chunks


def test_invalid_parameters_stop_the_node_with_a_reason(start_node, ros_domain):
    proc = start_node(MODULE, NODE, {"min_inference_rate_hz": 30.0, "max_inference_rate_hz": 10.0})
    assert wait_for(lambda: not proc.alive(), 30.0)
    assert proc.proc.returncode == 1
    assert "min_inference_rate_hz" in proc.log() and "cannot start" in proc.log()


@pytest.mark.slow
def test_twinbrain_checkpoint_end_to_end(start_node, make_io):
    """The real model path: load_policy's lazy import, the checkpoint's contract check, chunks out.

    ~20-30 s on a 2-core CPU machine (torch import, model load, ~1-2 s per tiny-model inference).
    """
    pytest.importorskip("torch")
    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.ros.conversions import time_to_sec

    model = Path(__file__).resolve().parents[2] / "models" / "demo-tiny"
    if not (model / "config.json").exists():
        pytest.skip("models/demo-tiny is not present")
    emb = load_embodiment("so101")
    io = make_io(emb)
    proc = start_node(MODULE, NODE, {"autostart": True, "policy": "twinbrain", "model_dir": str(model),
                                     "default_instruction": "pick up the red cube",
                                     "require_instruction": True, "max_image_age_s": 5.0,
                                     "max_state_age_s": 5.0, "chunk_lead_s": 0.1})
    assert wait_for(lambda: len(io.chunks) >= 2, 120.0), proc.log()[-3000:]
    m = io.chunks[-1][1]
    assert m.model_id == "demo-tiny" and tuple(m.joint_names) == emb.joint_names
    # chunk_lead_s reaches the policy: step 0 is due 0.1 s before the observation (header stamp).
    assert time_to_sec(m.header.stamp) - time_to_sec(m.t0) == pytest.approx(0.1, abs=1e-6)
    assert m.horizon >= 1 and np.all(np.isfinite(np.asarray(m.positions)))
    # status is periodic: wait for one published after the first inference
    assert io.wait_status(lambda s: s.lifecycle_state == "active" and s.model_id == "demo-tiny"
                          and s.last_latency_ms > 0 and s.chunks_published >= 1)
    assert io.last_status().active_instruction == "pick up the red cube"
