# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Scripted expert node: a stand-in teleoperator for the simulated SO-101.

It reads the simulator's ground truth (``joint_states``, ``sim/object_poses`` and the latched
``sim/episode`` description that ``sim_node`` publishes) and publishes joint position commands on the
teleop command topic, computed by :class:`twinbrain_ros.sim.expert.ScriptedExpert` (inverse
kinematics on a private MuJoCo model of the same scene). Each episode's variation is seeded by the
episode's seed (plus ``seed_offset``), so a recorded demonstration can be reproduced.

Commands are computed at ``rate_hz`` in *sim time*, driven by the joint-state stamps, so the expert
runs in step with the simulator whatever the real-time factor. On every new episode it checks the
simulator's embodiment contract against its own (:meth:`Embodiment.check_compatible`) and its task
suite against the simulator's objects; a mismatch stops the node with an error naming both sides.

Usage:
    python -m twinbrain_ros.nodes.expert_node --ros-args -p use_sim_time:=true -p rate_hz:=30.0
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from twinbrain_ros.core.embodiment import load_embodiment, parse_embodiment
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.ros.conversions import joint_state_from_msg, sec_to_time, time_to_sec
from twinbrain_ros.ros.params import declare_and_read, param
from twinbrain_ros.ros.qos import instruction_qos, joint_state_qos
from twinbrain_ros.sim.env import ObjectPose
from twinbrain_ros.sim.expert import ExpertConfig, ScriptedExpert
from twinbrain_ros.sim.scene import ROBOT_JOINTS, build_scene
from twinbrain_ros.sim.tasks import load_task_suite

COMMAND_INTERFACES = ("joint_trajectory", "float64_multi_array", "joint_state")


@dataclass(frozen=True)
class ExpertParams:
    """Parameters of the scripted expert node."""

    embodiment: str = param("so101_sim", "Embodiment contract name (config/embodiments) or YAML path.")
    tasks: str = param("so101_tasks", "Task suite name or YAML path; must match the simulator's.")
    rate_hz: float = param(30.0, "Command rate in sim time.", low=1.0, high=500.0)
    seed_offset: int = param(
        0, "Added to each episode's seed to vary the expert independently.", low=0, high=2**31 - 1
    )
    miss_prob: float = param(
        0.0,
        "Probability that a lift episode's first grasp is aimed off the object on purpose (recovery demos).",
        low=0.0,
        high=1.0,
    )
    command_interface: str = param(
        "joint_trajectory", "Type of the command topic.", choices=COMMAND_INTERFACES
    )
    command_topic: str = param("teleop/joint_command", "Teleop command topic the expert publishes on.")
    joint_states_topic: str = param("joint_states", "Joint states of the simulated robot.")
    object_poses_topic: str = param("sim/object_poses", "Ground-truth object poses from sim_node.")
    episode_topic: str = param("sim/episode", "Latched episode description from sim_node.")


class ExpertNode(Node):
    """Feeds ground truth to the scripted expert and publishes its joint targets."""

    def __init__(self) -> None:
        super().__init__("expert_node")
        self.p = declare_and_read(self, ExpertParams)
        self.emb = load_embodiment(self.p.embodiment)
        if tuple(self.emb.joint_names) != ROBOT_JOINTS:
            raise ValidationError(
                [
                    f"joint order differs: embodiment '{self.emb.name}' "
                    f"{list(self.emb.joint_names)} vs the expert's SO-101 {list(ROBOT_JOINTS)}"
                ]
            )
        self.suite = load_task_suite(self.p.tasks)
        self.expert = ScriptedExpert(build_scene(self.suite), ExpertConfig(miss_prob=self.p.miss_prob))
        self.episode: dict | None = None
        self.objects: dict[str, ObjectPose] | None = None
        self.failure: ValidationError | None = None
        self._last_cmd_t = -np.inf
        self._last_phase = ""
        self.commands = 0

        from geometry_msgs.msg import PoseArray
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String

        self.create_subscription(String, self.p.episode_topic, self._on_episode, instruction_qos())
        self.create_subscription(PoseArray, self.p.object_poses_topic, self._on_poses, 10)
        self.create_subscription(
            JointState, self.p.joint_states_topic, self._on_joint_states, joint_state_qos()
        )
        self.pub = self._make_publisher()
        self.get_logger().info(
            f"scripted expert: contract '{self.emb.name}', suite '{self.suite.name}', {self.p.rate_hz:g} Hz "
            f"(sim time), commands on '{self.p.command_topic}' as {self.p.command_interface}; waiting for "
            f"'{self.p.episode_topic}'"
        )

    def _make_publisher(self):
        if self.p.command_interface == "joint_trajectory":
            from trajectory_msgs.msg import JointTrajectory as T
        elif self.p.command_interface == "float64_multi_array":
            from std_msgs.msg import Float64MultiArray as T
        else:
            from sensor_msgs.msg import JointState as T
        return self.create_publisher(T, self.p.command_topic, 10)

    # --- inputs ---------------------------------------------------------------------------------------

    def _fail(self, problems: list[str]) -> None:
        self.failure = ValidationError(problems)
        self.get_logger().fatal(f"stopping: {self.failure}")
        raise self.failure

    def _on_episode(self, msg) -> None:
        try:
            data = json.loads(msg.data)
            sim_emb = parse_embodiment(data["embodiment"], source="sim_node")
            objects, task_name = list(data["objects"]), str(data["task"])
            seed, start = int(data["seed"]), float(data["start_time"])
        except (ValueError, KeyError, TypeError) as e:
            self._fail([f"malformed episode message on '{self.p.episode_topic}': {e}"])
        try:
            self.emb.check_compatible(sim_emb, "expert_node", "sim_node")
        except ValidationError as e:
            self._fail(e.problems)
        problems = []
        if objects != list(self.suite.object_names):
            problems.append(
                f"objects differ: expert_node suite '{self.suite.name}' {list(self.suite.object_names)} "
                f"vs sim_node suite '{data.get('suite')}' {objects}"
            )
        if task_name not in self.suite.task_names:
            problems.append(
                f"task '{task_name}' of sim_node is not in expert_node's suite '{self.suite.name}' "
                f"(tasks: {list(self.suite.task_names)})"
            )
        if problems:
            self._fail(problems)
        self.episode = dict(data, start_time=start)
        self.objects = None  # poses from before the reset are stale
        self.expert.reset(self.suite.task(task_name), (seed + self.p.seed_offset) % 2**32)
        self._last_cmd_t = -np.inf
        self.get_logger().info(
            f"episode {data['episode']}: '{data['instruction']}' (task {task_name}, seed {seed})"
        )

    def _on_poses(self, msg) -> None:
        if self.episode is None or time_to_sec(msg.header.stamp) < self.episode["start_time"] - 1e-9:
            return
        names = self.suite.object_names
        if len(msg.poses) != len(names):
            self.get_logger().warning(
                f"object poses: {len(msg.poses)} poses for objects {list(names)}", throttle_duration_sec=5.0
            )
            return
        self.objects = {
            n: ObjectPose(
                np.array([p.position.x, p.position.y, p.position.z]),
                np.array([p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z]),
            )
            for n, p in zip(names, msg.poses, strict=True)
        }

    def _on_joint_states(self, msg) -> None:
        if self.episode is None or self.objects is None:
            return
        try:
            t, q, _ = joint_state_from_msg(msg, self.emb.joint_names)
        except ValidationError as e:
            self.get_logger().warning(f"joint_states rejected: {e}", throttle_duration_sec=5.0)
            return
        t_ep = t - self.episode["start_time"]
        if t_ep < -1e-9 or t - self._last_cmd_t < 1.0 / self.p.rate_hz - 1e-6:
            return
        self._last_cmd_t = t
        t_ep = max(t_ep, 0.0)
        target = self.expert.act(t_ep, q, self.objects)
        self._publish(t, target)
        if self.expert.phase != self._last_phase:
            self._last_phase = self.expert.phase
            miss = " (aimed off the object on purpose)" if self.expert.miss_xy.any() else ""
            self.get_logger().info(
                f"t={t_ep:.2f} s: phase {self.expert.phase} (attempt {self.expert.attempt}){miss}"
            )

    # --- output ---------------------------------------------------------------------------------------

    def _publish(self, t: float, target: np.ndarray) -> None:
        names = list(self.emb.joint_names)
        values = [float(x) for x in target]
        if self.p.command_interface == "joint_trajectory":
            from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

            msg = JointTrajectory()
            msg.header.stamp = sec_to_time(t)
            msg.joint_names = names
            msg.points = [JointTrajectoryPoint(positions=values)]
        elif self.p.command_interface == "float64_multi_array":
            from std_msgs.msg import Float64MultiArray

            msg = Float64MultiArray(data=values)
        else:
            from sensor_msgs.msg import JointState

            msg = JointState(name=names, position=values)
            msg.header.stamp = sec_to_time(t)
        self.pub.publish(msg)
        self.commands += 1


def main(args=None) -> None:
    """Run the node until interrupted; exit code 2 on a contract or task-suite mismatch."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = ExpertNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValidationError, FileNotFoundError) as e:
        if node is None or node.failure is None:
            rclpy.logging.get_logger("expert_node").fatal(f"cannot start: {e}")
        code = 2
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
