# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The chunk-executing controller node: action chunks in, a smooth joint command out at ``rate_hz``.

A thin rclpy wrapper around :class:`twinbrain_ros.core.controller.ChunkController` (all the motion
logic and its tests live there):

* subscribes ``action_chunk`` (``twinbrain_ros/msg/ActionChunk``; malformed chunks are rejected at the
  boundary with every reason, the rest goes to the controller, which checks ordering and freshness),
  ``joint_states`` (``sensor_msgs/JointState``; the first valid one initialises the hold position)
  and ``estop`` (``std_msgs/Bool``: true engages, false releases); service ``~/estop``
  (``std_srvs/SetBool``, same meaning); service ``~/reset`` (``std_srvs/Trigger``: a new episode, the
  robot was moved: chunks are dropped, the controller waits for a joint state measured after the
  reset and holds it, and chunks computed from older observations are refused);
* publishes the command on ``command_topic`` through one of three adapters, and
  ``~/status`` (``twinbrain_ros/msg/ControllerStatus``) at ``status_rate_hz``.

Output adapters (``command_interface``):
    ``joint_trajectory``     ``trajectory_msgs/JointTrajectory`` with ONE point per cycle, for
                             joint_trajectory_controller in streaming use: ``header.stamp`` is zero
                             ("start on receipt"), the point holds the command's positions and
                             velocities and ``time_from_start`` is one control period (or
                             ``trajectory_time_from_start_s``). Each message replaces the previous
                             goal, so JTC interpolates from its current setpoint to our command over
                             that time: this adds that much latency and nothing else.
    ``float64_multi_array``  ``std_msgs/Float64MultiArray`` of positions in the contract's joint order,
                             for forward_command_controller (configure its joints in that order).
    ``joint_state``          ``sensor_msgs/JointState`` with names, positions, velocities and the node
                             clock's stamp: the Isaac Sim articulation-controller convention.

Timing: the control loop runs in a dedicated thread that sleeps until each deadline on
``time.monotonic`` (never drifts; after an overrun of more than a period it restarts the schedule
instead of bursting), and records ``|actual period - nominal period|``, reported as p50/p99 in
``~/status``. The thread asks for SCHED_FIFO (``thread_priority``, like ros2_control's controller
manager); where that is not permitted it logs a warning and runs with normal scheduling. It sleeps
for all but a few hundred microseconds of each period, so it cannot starve the machine.

Chunk times are compared with the node clock (``use_sim_time`` supported; nothing runs until the
clock is non-zero). With ``dry_run`` the command goes to ``~/dry_run_command`` instead of
``command_topic``, so a policy can be watched without moving the robot.

Usage:
    python -m twinbrain_ros.nodes.controller_node --ros-args --params-file config/controller.yaml
    ros2 service call /controller_node/estop std_srvs/srv/SetBool "{data: true}"
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data

from twinbrain_ros.core.controller import ChunkController, Command, ControllerConfig
from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.interpolation import METHODS
from twinbrain_ros.core.limits import JointLimitSet
from twinbrain_ros.core.validation import ParameterError, ValidationError
from twinbrain_ros.ros import qos
from twinbrain_ros.ros.conversions import chunk_from_msg, joint_state_from_msg, ns_to_duration, sec_to_time
from twinbrain_ros.ros.params import declare_and_read, param

COMMAND_INTERFACES = ("joint_trajectory", "float64_multi_array", "joint_state")


@dataclass(frozen=True)
class ControllerParams:
    """Parameters of the controller node (see config/controller.yaml for a commented file)."""

    embodiment: str = param("so101", "Embodiment contract name (config/embodiments) or YAML path.")
    rate_hz: float = param(200.0, "Control loop and command publish rate, Hz.", low=1.0, high=2000.0)
    interpolation: str = param("cubic", "How chunks are sampled between steps.", choices=METHODS)
    command_interface: str = param(
        "joint_trajectory", "Message type of the command (output adapter).", choices=COMMAND_INTERFACES
    )
    command_topic: str = param("joint_command", "Topic the joint command is published on.")
    chunk_topic: str = param("action_chunk", "Topic of incoming twinbrain_ros/ActionChunk messages.")
    joint_states_topic: str = param("joint_states", "Measured joint states (initialise the hold position).")
    estop_topic: str = param("estop", "std_msgs/Bool e-stop topic: true engages, false releases.")
    ramp_in_s: float = param(
        0.5, "Blend time from hold into the first chunk, s (0 splices directly).", low=0.0, high=10.0
    )
    chunk_timeout_s: float = param(
        0.5, "No chunk accepted for this long: the policy is gone, brake to a hold, s.", low=0.01, high=60.0
    )
    max_chunk_future_s: float = param(
        1.0, "Reject chunks whose first step lies further ahead than this, s.", low=0.0, high=10.0
    )
    max_chunk_age_s: float = param(
        1.0, "Reject chunks whose observation is older than this on arrival, s.", low=0.0, high=60.0
    )
    deceleration_scale: float = param(
        0.5, "Braking acceleration without a chunk, share of the acceleration limits.", low=0.01, high=1.0
    )
    estop_deceleration_scale: float = param(
        1.0, "Braking acceleration while e-stopped, share of the acceleration limits.", low=0.01, high=1.0
    )
    velocity_scale: float = param(1.0, "Factor on the contract's velocity limits.", low=0.01, high=1.0)
    acceleration_scale: float = param(
        1.0, "Factor on the contract's acceleration limits.", low=0.01, high=1.0
    )
    max_step_delta: float = param(
        0.05, "Largest position change per cycle, rad (0 disables); binds on long cycles.", low=0.0, high=1.0
    )
    splice_min_s: float = param(0.02, "Shortest splice window, s.", low=0.0, high=2.0)
    splice_max_s: float = param(0.5, "Longest splice window, s.", low=0.0, high=5.0)
    splice_limit_fraction: float = param(
        0.5, "Share of the velocity/acceleration limits a splice or ramp may use.", low=0.05, high=1.0
    )
    trajectory_time_from_start_s: float = param(
        0.0, "time_from_start of the JointTrajectory point, s (0 = one control period).", low=0.0, high=1.0
    )
    status_rate_hz: float = param(5.0, "~/status publish rate, Hz.", low=0.1, high=100.0)
    timing_window: int = param(2000, "Control cycles in the period-error statistics.", low=10, high=1_000_000)
    thread_priority: int = param(
        50, "SCHED_FIFO priority of the control thread (0 = normal; needs CAP_SYS_NICE).", low=0, high=99
    )
    dry_run: bool = param(False, "Publish the command on ~/dry_run_command instead of command_topic.")


class ControllerNode(Node):
    """Wires topics, the e-stop and the control thread to a :class:`ChunkController`."""

    def __init__(self, **kwargs) -> None:
        """Declare and check parameters, load the contract, create interfaces, start the loop.

        Raises:
            ParameterError: a parameter is of the wrong type or out of range (names it and the range).
            ValidationError: the embodiment contract or the derived configuration is invalid.
        """
        super().__init__("controller_node", **kwargs)
        self.p = declare_and_read(self, ControllerParams)
        if self.p.splice_max_s < self.p.splice_min_s:
            raise ParameterError(
                f"parameter 'splice_max_s' = {self.p.splice_max_s} must be >= "
                f"splice_min_s ({self.p.splice_min_s})"
            )
        self.emb = load_embodiment(self.p.embodiment)
        self.joint_names = self.emb.joint_names
        limits = JointLimitSet.from_embodiment(
            self.emb.limits,
            velocity_scale=self.p.velocity_scale,
            acceleration_scale=self.p.acceleration_scale,
            max_step_delta=self.p.max_step_delta,
        )
        self.ctl = ChunkController(
            ControllerConfig(
                joint_names=self.joint_names,
                limits=limits,
                method=self.p.interpolation,
                ramp_in_s=self.p.ramp_in_s,
                deceleration_scale=self.p.deceleration_scale,
                estop_deceleration_scale=self.p.estop_deceleration_scale,
                max_future_s=self.p.max_chunk_future_s,
                max_age_s=self.p.max_chunk_age_s,
                timeout_s=self.p.chunk_timeout_s,
                splice_min_s=self.p.splice_min_s,
                splice_max_s=self.p.splice_max_s,
                splice_limit_fraction=self.p.splice_limit_fraction,
            )
        )
        self.period = 1.0 / self.p.rate_hz
        # One lock serialises the controller between the executor (chunks, e-stop, status) and the
        # control thread; every critical section is a few hundred microseconds at most.
        self._lock = threading.Lock()
        self._timing_lock = threading.Lock()
        self._period_errors: deque[float] = deque(maxlen=self.p.timing_window)
        self._overruns = 0
        self._last_mode = self.ctl.mode

        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from std_srvs.srv import SetBool

        from twinbrain_ros.msg import ActionChunk, ControllerStatus

        self._make_command_publisher()
        self.pub_status = self.create_publisher(ControllerStatus, "~/status", qos.status_qos())
        self.create_subscription(ActionChunk, self.p.chunk_topic, self._on_chunk, qos.chunk_qos())
        # Only the first joint state matters (it sets the hold): a best-effort reader matches both
        # reliable drivers and best-effort simulators.
        self.create_subscription(
            JointState, self.p.joint_states_topic, self._on_joint_states, qos_profile_sensor_data
        )
        self.create_subscription(Bool, self.p.estop_topic, self._on_estop_topic, 10)
        self.create_service(SetBool, "~/estop", self._on_estop_service)
        from std_srvs.srv import Trigger

        self.create_service(Trigger, "~/reset", self._on_reset_service)
        self.create_timer(1.0 / self.p.status_rate_hz, self._publish_status)

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._control_loop, name="controller_loop", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"controller for '{self.emb.name}' ({len(self.joint_names)} joints) at {self.p.rate_hz:g} Hz, "
            f"{self.p.interpolation} interpolation, command as {self.p.command_interface} on "
            f"'{self._command_topic}'{' (dry run)' if self.p.dry_run else ''}; waiting for "
            f"'{self.p.joint_states_topic}'"
        )

    # --- output adapters ----------------------------------------------------------------------------

    def _make_command_publisher(self) -> None:
        self._command_topic = "~/dry_run_command" if self.p.dry_run else self.p.command_topic
        names = list(self.joint_names)
        if self.p.command_interface == "joint_trajectory":
            from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

            tfs = self.p.trajectory_time_from_start_s or self.period
            msg_type = JointTrajectory

            def build(cmd: Command):
                msg = JointTrajectory()
                msg.joint_names = names  # header.stamp stays zero: "start on receipt"
                pt = JointTrajectoryPoint()
                pt.positions = cmd.position.tolist()
                pt.velocities = cmd.velocity.tolist()
                pt.time_from_start = ns_to_duration(round(tfs * 1e9))
                msg.points = [pt]
                return msg

        elif self.p.command_interface == "float64_multi_array":
            from std_msgs.msg import Float64MultiArray

            msg_type = Float64MultiArray

            def build(cmd: Command):
                msg = Float64MultiArray()
                msg.data = cmd.position.tolist()
                return msg

        else:
            from sensor_msgs.msg import JointState

            msg_type = JointState

            def build(cmd: Command):
                msg = JointState()
                msg.header.stamp = sec_to_time(cmd.stamp)
                msg.name = names
                msg.position = cmd.position.tolist()
                msg.velocity = cmd.velocity.tolist()
                return msg

        self._build_command = build
        # Reliable, keep-last 2 for every adapter (JTC's default subscription is reliable; keep-last
        # never blocks the loop on a slow reader).
        self.pub_command = self.create_publisher(msg_type, self._command_topic, qos.trajectory_qos())

    # --- inputs -------------------------------------------------------------------------------------

    def now(self) -> float:
        """Node clock time in seconds (sim time under use_sim_time)."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_chunk(self, msg) -> None:
        now = self.now()
        try:
            chunk = chunk_from_msg(msg, self.joint_names)  # structure only; timing is the controller's
        except ValidationError as e:
            with self._lock:
                reason = self.ctl.reject_external(int(msg.chunk_id), e.problems)
            self.get_logger().warning(reason, throttle_duration_sec=1.0)
            return
        with self._lock:
            verdict = self.ctl.offer(chunk, now)
            reason = self.ctl.last_reason
        if not verdict.accepted:
            self.get_logger().warning(reason, throttle_duration_sec=1.0)

    def _on_joint_states(self, msg) -> None:
        if self.ctl.initialized:
            return  # only the first valid state is used: afterwards the controller holds its own command
        now = self.now()
        if now <= 0.0:
            return  # sim time not received yet
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if stamp > 0.0 and stamp < self.ctl.reset_time:
            return  # measured before the last reset: the robot has been moved since
        try:
            _, q, _ = joint_state_from_msg(msg, self.joint_names)
        except ValidationError as e:
            self.get_logger().warning(f"joint_states rejected: {e}", throttle_duration_sec=2.0)
            return
        with self._lock:
            started = self.ctl.initialize(q, now)
        if started:
            self.get_logger().info(f"initialised from joint_states: holding {np.round(q, 4).tolist()}")

    def _set_estop(self, engage: bool, source: str) -> str:
        with self._lock:
            if engage:
                self.ctl.engage_estop(source)
            else:
                self.ctl.release_estop(source)
            reason, mode = self.ctl.last_reason, self.ctl.mode
        # rclpy binds a severity to each logging call site, so two call sites, not one chosen one.
        if engage:
            self.get_logger().warning(f"{reason}; mode {mode}")
        else:
            self.get_logger().info(f"{reason}; mode {mode}")
        return mode

    def _on_reset_service(self, request, response):
        """~/reset: a new episode (the robot was moved): drop chunks, re-initialise from joint_states."""
        with self._lock:
            self.ctl.reset(self.now())
            reason = self.ctl.last_reason
        self.get_logger().info(reason)
        response.success = True
        response.message = reason
        return response

    def _on_estop_topic(self, msg) -> None:
        self._set_estop(bool(msg.data), "topic")

    def _on_estop_service(self, request, response):
        mode = self._set_estop(bool(request.data), "service")
        response.success = True
        response.message = f"e-stop {'engaged' if request.data else 'released'}; mode {mode}"
        return response

    # --- control loop ---------------------------------------------------------------------------------

    def _set_thread_priority(self) -> None:
        """Best effort: real-time scheduling for this (the control) thread only."""
        prio = self.p.thread_priority
        if prio <= 0:
            return
        try:
            # On Linux, pid 0 means the calling thread: the executor thread keeps normal scheduling.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
            self.get_logger().info(f"control thread runs SCHED_FIFO priority {prio}")
        except (AttributeError, OSError) as e:
            self.get_logger().warning(
                f"thread_priority {prio} refused ({e}); the control loop runs with normal scheduling and "
                "more jitter under CPU load"
            )

    def _control_loop(self) -> None:
        self._set_thread_priority()
        period = self.period
        deadline = time.monotonic() + period
        last_wake = None
        while not self._stop.is_set():
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            wake = time.monotonic()
            if last_wake is not None:
                with self._timing_lock:
                    self._period_errors.append(abs(wake - last_wake - period))
            last_wake = wake
            deadline += period
            if deadline < wake:
                # More than a period late: restart the schedule rather than burst to catch up.
                self._overruns += 1
                deadline = wake + period
            try:
                self._cycle()
            except Exception as e:  # noqa: BLE001 - keep the loop alive; a shutdown ends it below
                if self._stop.is_set() or not rclpy.ok(context=self.context):
                    break
                self.get_logger().error(f"control cycle failed: {e!r}", throttle_duration_sec=1.0)

    def _cycle(self) -> None:
        now = self.now()
        if now <= 0.0:
            return  # sim time not received yet
        with self._lock:
            cmd = self.ctl.step(now)
        if cmd is None:
            return
        self.pub_command.publish(self._build_command(cmd))
        if cmd.mode != self._last_mode:
            self.get_logger().info(f"mode {self._last_mode} -> {cmd.mode} ({self.ctl.last_reason or 'ok'})")
            self._last_mode = cmd.mode

    def period_error_stats(self) -> tuple[float, float, int]:
        """(p50, p99) of |actual - nominal period| in ms over the window, and the number of overruns."""
        with self._timing_lock:
            errs = np.fromiter(self._period_errors, dtype=np.float64, count=len(self._period_errors))
        if errs.size == 0:
            return 0.0, 0.0, self._overruns
        p50, p99 = np.percentile(errs, [50, 99]) * 1e3
        return float(p50), float(p99), self._overruns

    def _publish_status(self) -> None:
        from twinbrain_ros.msg import ControllerStatus

        now = self.now()
        with self._lock:
            snap = self.ctl.snapshot(now)
        p50, p99, _ = self.period_error_stats()
        msg = ControllerStatus()
        msg.header.stamp = sec_to_time(max(now, 0.0))
        msg.mode = snap.mode
        msg.active_chunk_id = int(snap.active_chunk_id)
        msg.remaining_s = float(snap.remaining_s)
        msg.chunks_accepted = snap.chunks_accepted
        msg.chunks_rejected = snap.chunks_rejected
        msg.last_reason = snap.last_reason
        msg.period_error_p50_ms = p50
        msg.period_error_p99_ms = p99
        msg.clamped_cycles = snap.clamped_cycles
        self.pub_status.publish(msg)

    def destroy_node(self) -> None:
        """Stop the control thread, then tear the node down."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        super().destroy_node()


def main(args=None) -> None:
    """Run the node until interrupted; exit with status 2 if its configuration is refused."""
    rclpy.init(args=args)
    node = None
    refused = None
    try:
        node = ControllerNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ParameterError, ValidationError, FileNotFoundError) as e:
        refused = f"controller_node: refusing to start: {e}"
        rclpy.logging.get_logger("controller_node").fatal(refused)
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if refused is not None:
        sys.exit(2)


if __name__ == "__main__":
    main()
