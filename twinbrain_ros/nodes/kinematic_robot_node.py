# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""A kinematic stand-in robot: publishes joint states and synthetic camera images, follows commands.

It is not a simulator: joints track the last commanded position with a first-order lag under the
contract's velocity limits, and each camera shows a synthetic picture (a gradient with one bar per
joint whose height follows that joint), so the image changes with the robot's motion. It speaks the
same topics as a real arm driver, which makes it the robot of the wiring demo, the ROS tests and
``twinbrain bench ros`` on machines without MuJoCo. The MuJoCo SO-101 simulation replaces it
wherever physics and rendering matter.

Usage:
    python -m twinbrain_ros.nodes.kinematic_robot_node --ros-args -p embodiment:=so101
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.ros.conversions import image_to_msg, joint_state_to_msg
from twinbrain_ros.ros.joint_commands import COMMAND_INTERFACES, subscribe_joint_commands
from twinbrain_ros.ros.params import declare_and_read, param


@dataclass(frozen=True)
class KinematicRobotParams:
    """Parameters of the kinematic stand-in robot."""

    embodiment: str = param("so101", "Embodiment contract name (config/embodiments) or YAML path.")
    state_rate_hz: float = param(100.0, "joint_states publish rate.", low=1.0, high=1000.0)
    camera_rate_hz: float = param(
        30.0, "Camera publish rate (every camera in the contract).", low=0.0, high=120.0
    )
    command_interface: str = param(
        "joint_trajectory", "Type of the command topic.", choices=COMMAND_INTERFACES
    )
    command_topic: str = param("joint_command", "Topic the controller's joint commands arrive on.")
    joint_states_topic: str = param("joint_states", "Where joint states are published.")
    tracking_time_constant: float = param(
        0.02, "First-order lag of the joints towards the command, s.", low=0.0, high=5.0
    )
    initial_positions: tuple[float, ...] = param((), "Initial joint positions; empty = middle of the limits.")


class KinematicRobotNode(Node):
    """Publishes joint_states + images and integrates commanded joint positions."""

    def __init__(self) -> None:
        super().__init__("kinematic_robot_node")
        self.p = declare_and_read(self, KinematicRobotParams)
        self.emb = load_embodiment(self.p.embodiment)
        lim = self.emb.limits
        if self.p.initial_positions:
            if len(self.p.initial_positions) != self.emb.num_joints:
                raise ValidationError(
                    [
                        f"initial_positions has {len(self.p.initial_positions)} values for "
                        f"{self.emb.num_joints} joints"
                    ]
                )
            self.q = np.asarray(self.p.initial_positions, dtype=np.float64)
        else:
            self.q = 0.5 * (lim.lower + lim.upper)
        self.target = self.q.copy()
        self.qd = np.zeros_like(self.q)
        self.rejected = 0
        self._lock = threading.Lock()
        self._last_t = self.get_clock().now().nanoseconds * 1e-9

        from sensor_msgs.msg import Image, JointState

        self.pub_js = self.create_publisher(JointState, self.p.joint_states_topic, 10)
        self.pub_cams = {c.name: (c, self.create_publisher(Image, c.topic, 5)) for c in self.emb.cameras}
        self._make_command_sub()
        self.create_timer(1.0 / self.p.state_rate_hz, self._on_state_timer)
        if self.p.camera_rate_hz > 0 and self.pub_cams:
            self.create_timer(1.0 / self.p.camera_rate_hz, self._on_camera_timer)
        self.get_logger().info(
            f"kinematic stand-in robot for '{self.emb.name}' ({self.emb.num_joints} joints, "
            f"cameras {list(self.emb.camera_names)}), commands on "
            f"'{self.p.command_topic}' as {self.p.command_interface}"
        )

    def _make_command_sub(self) -> None:
        subscribe_joint_commands(
            self,
            self.p.command_interface,
            self.p.command_topic,
            self.emb.joint_names,
            on_command=self._set_target,
            on_reject=self._reject_command,
        )

    def _reject_command(self, reason: str) -> None:
        self.rejected += 1
        self.get_logger().warning(f"command rejected: {reason}", throttle_duration_sec=1.0)

    def _set_target(self, q: np.ndarray) -> None:
        q = np.clip(q, self.emb.limits.lower, self.emb.limits.upper)
        with self._lock:
            self.target = q

    def _on_state_timer(self) -> None:
        now = self.get_clock().now()
        t = now.nanoseconds * 1e-9
        dt = max(0.0, min(t - self._last_t, 0.1))
        self._last_t = t
        with self._lock:
            target = self.target
        tau = self.p.tracking_time_constant
        alpha = 1.0 if tau <= 0 else 1.0 - np.exp(-dt / tau)
        step = np.clip(
            alpha * (target - self.q), -self.emb.limits.max_velocity * dt, self.emb.limits.max_velocity * dt
        )
        self.qd = step / dt if dt > 0 else np.zeros_like(self.q)
        self.q = self.q + step
        self.pub_js.publish(joint_state_to_msg(t, self.emb.joint_names, self.q, self.qd))

    def _on_camera_timer(self) -> None:
        t = self.get_clock().now().nanoseconds * 1e-9
        for cam, pub in self.pub_cams.values():
            frame = render_bars(self.q, self.emb.limits.lower, self.emb.limits.upper, cam.width, cam.height)
            msg = image_to_msg(frame, t, "rgb8")
            msg.header.frame_id = cam.name
            pub.publish(msg)


def render_bars(q: np.ndarray, lower: np.ndarray, upper: np.ndarray, width: int, height: int) -> np.ndarray:
    """A synthetic (H, W, 3) uint8 frame: a fixed gradient plus one bar per joint, height ~ position."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = np.linspace(30, 90, width, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(40, 100, height, dtype=np.uint8)[:, None]
    img[..., 2] = 60
    n = len(q)
    frac = np.clip((q - lower) / np.maximum(upper - lower, 1e-9), 0.0, 1.0)
    bar_w = max(1, width // (2 * n + 1))
    for j in range(n):
        x0 = (2 * j + 1) * bar_w
        top = int(round((1.0 - frac[j]) * (height - 1)))
        img[top:, x0 : x0 + bar_w] = (230, 200, 40)
    return img


def main(args=None) -> None:
    """Run the node until interrupted."""
    rclpy.init(args=args)
    node = None
    try:
        node = KinematicRobotNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
