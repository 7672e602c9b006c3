# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The Gazebo and Isaac Sim profiles connect to exactly the topics and types those simulators use.

Neither simulator runs here, so this test plays the simulator's side with publishers and a
subscriber that use exactly the names and types the bridges use (for Gazebo, read from the
ros_gz_bridge mapping we ship; for Isaac Sim, its ROS 2 bridge defaults: JointState on
joint_states / joint_command, Image on rgb), starts the profile's real nodes, and checks that joint
commands come back on the simulator's command topic with the simulator's message type.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from twinbrain_ros.bringup import load_profile, plan, profile_for, run_background, stop_all
from twinbrain_ros.core.embodiment import load_embodiment

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ros


def _gazebo_topics() -> dict[str, str]:
    bridge = yaml.safe_load((ROOT / "config" / "gazebo" / "ros_gz_bridge.yaml").read_text())
    return {e["ros_type_name"]: e["ros_topic_name"] for e in bridge if e["direction"] == "GZ_TO_ROS"}


@pytest.mark.parametrize("sim", ["gazebo", "isaac"])
def test_profile_talks_to_the_simulator_topics(tmp_path, ros_domain, sim):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray
    from twinbrain_ros.msg import ActionChunk

    from twinbrain_ros.ros.conversions import image_to_msg, joint_state_to_msg
    from twinbrain_ros.ros.spinning import SpinThread

    if sim == "gazebo":
        topics = _gazebo_topics()
        state_topic, image_topic = topics["sensor_msgs/msg/JointState"], topics["sensor_msgs/msg/Image"]
        cmd_topic, cmd_type = "forward_position_controller/commands", Float64MultiArray
    else:
        state_topic, image_topic, cmd_topic, cmd_type = "joint_states", "rgb", "joint_command", JointState

    profile = load_profile(profile_for("robot", sim))
    emb = load_embodiment(profile.nodes["policy_node"]["embodiment"])
    cam = emb.cameras[0]
    procs = run_background(plan(profile), log_dir=tmp_path / "logs")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node(f"fake_{sim}", context=ctx)
    pub_js = node.create_publisher(JointState, state_topic, 10)
    pub_img = node.create_publisher(Image, image_topic, 5)
    cmds, chunks = [], []
    node.create_subscription(cmd_type, cmd_topic, cmds.append, 50)
    # Chunks only flow when the policy node receives the simulator's camera and joint states.
    node.create_subscription(ActionChunk, "action_chunk", chunks.append, 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    spin = SpinThread(ex)
    q = 0.5 * (emb.limits.lower + emb.limits.upper)
    frame = np.full((cam.height, cam.width, 3), 90, np.uint8)
    try:
        end = time.monotonic() + 45.0
        k = 0
        while time.monotonic() < end and (len(cmds) < 50 or len(chunks) < 3):
            now = time.time()
            pub_js.publish(joint_state_to_msg(now, emb.joint_names, q))
            if k % 3 == 0:
                pub_img.publish(image_to_msg(frame, now, "rgb8"))
            k += 1
            time.sleep(0.01)
    finally:
        spin.stop()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        stop_all(procs)
    logs = "\n".join(p.read_text()[-1500:] for p in (tmp_path / "logs").glob("*.log"))
    assert len(chunks) >= 3, f"the policy produced no chunks from the simulator's topics; logs:\n{logs}"
    assert len(cmds) >= 50, f"no commands on {cmd_topic}; logs:\n{logs}"
    last = cmds[-1]
    if sim == "gazebo":
        assert len(last.data) == emb.num_joints  # forward_command_controller: contract joint order
        values = np.asarray(last.data)
    else:
        assert list(last.name) == list(emb.joint_names)
        values = np.asarray(last.position)
    assert np.all(np.isfinite(values))
    assert np.all(values >= emb.limits.lower - 1e-9) and np.all(values <= emb.limits.upper + 1e-9)
