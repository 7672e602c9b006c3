# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The policy node: synchronised observations in, time-stamped action chunks out (lifecycle node).

Lifecycle:
    configure   load the embodiment's policy (``policy`` parameter, via :func:`load_policy`), create
                the subscriptions, publishers and the ``~/set_instruction`` service. A policy that
                fails to load makes the transition fail with the reason logged and shown in
                ``~/status.last_reason``; the node stays unconfigured and keeps running.
    activate    reset the counters and the policy, start the inference worker thread.
    deactivate  stop the worker (chunk publishers are lifecycle publishers: silent when inactive).
    cleanup / shutdown   free the policy and every entity created in configure.

With ``autostart: true`` the node configures and activates itself once it spins (there is no
``ros2 lifecycle`` CLI on every machine); the standard lifecycle services
(``~/change_state``, ``~/get_state``, ...) are always available.

Topics (names relative, so a namespace applies):
    in   every camera the policy reads (contract topic, or ``camera_topics``): sensor_msgs/Image, or
         sensor_msgs/CompressedImage on ``<topic>/compressed`` with ``compressed_images: true``
    in   ``joint_states`` (sensor_msgs/JointState; joints matched by name, any order)
    in   ``instruction`` (std_msgs/String, transient local), and service ``~/set_instruction``
    out  ``action_chunk`` (twinbrain_ros/ActionChunk), optionally ``joint_trajectory``
         (trajectory_msgs/JointTrajectory, for joint_trajectory_controller)
    out  ``~/status`` (twinbrain_ros/PolicyStatus) at ``status_rate_hz`` in every lifecycle state;
         latency fields are 0 until measured, a stream age is -1 until the stream is received.

Inference runs in its own thread, so subscriptions never wait for the model. The worker keeps the
newest samples per stream (:class:`~twinbrain_ros.core.frame_sync.FrameSync`), skips a tick with a
reason when a stream is missing or older than its maximum age, and starts each inference at the time
:class:`~twinbrain_ros.core.scheduling.InferenceScheduler` computes from the measured p95 latency,
so the new chunk arrives before the executing one runs out. Invalid input messages (wrong encoding,
size or truncated image, NaN joint state, unknown/missing joints, time going backwards, empty or
over-long instruction) are rejected at the boundary: one clear log line (throttled per reason),
counted in ``~/status``; the node keeps running on the last good state. Stamps of all streams must
be on the node's clock (ROS time; sim time under ``use_sim_time``).

This module never imports torch: a model is reached only through ``load_policy``.

Usage:
    python -m twinbrain_ros.nodes.policy_node --ros-args -p autostart:=true -p policy:=scripted_sine
    python -m twinbrain_ros.nodes.policy_node --ros-args --params-file config/policy.yaml
"""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from twinbrain_ros.core import scheduling as sched_defaults
from twinbrain_ros.core.embodiment import CameraSpec, load_embodiment
from twinbrain_ros.core.frame_sync import FrameSync
from twinbrain_ros.core.scheduling import InferenceScheduler, LatencyStats
from twinbrain_ros.core.types import Observation
from twinbrain_ros.core.validation import ParameterError, ValidationError
from twinbrain_ros.policies import PolicyBackend, available_policies, load_policy
from twinbrain_ros.ros import qos
from twinbrain_ros.ros.conversions import (
    check_chunk_msg,
    chunk_msg_to_trajectory,
    chunk_to_msg,
    compressed_image_from_msg,
    image_from_msg,
    instruction_check,
    joint_state_from_msg,
    sec_to_time,
    time_to_sec,
)
from twinbrain_ros.ros.params import declare_and_read, param

STATE_STREAM = "joint_states"


@dataclass(frozen=True)
class PolicyNodeParams:
    """Parameters of the policy node (see config/policy.yaml for a commented file)."""

    embodiment: str = param("so101", "Embodiment contract name (config/embodiments) or YAML path.")
    policy: str = param("scripted_sine", "Policy to load.", choices=available_policies())
    model_dir: str = param("", "Checkpoint directory (model policies).")
    device: str = param("cpu", "Compute device of model policies, e.g. cpu or cuda:0.")
    backend: str = param("torch", "Inference runtime of model policies, e.g. torch or onnx.")
    seed: int = param(0, "Seed of any randomness in the policy.", low=0, high=2**31 - 1)
    num_threads: int = param(
        0, "CPU threads of model policies (0 = the runtime's default, one per core).", low=0, high=256
    )
    chunk_lead_s: float = param(
        -1.0,
        "Model policies: step k of a chunk is due at observation stamp + k*step_dt - chunk_lead_s, s; "
        "negative = the checkpoint's processor.json value.",
        low=-1.0,
        high=2.0,
    )
    autostart: bool = param(False, "Configure and activate on start-up (no lifecycle manager needed).")
    camera_topics: tuple[str, ...] = param(
        (), "Image topics, one per contract camera in contract order; empty = the contract's topics."
    )
    compressed_images: bool = param(
        False, "Subscribe to sensor_msgs/CompressedImage (jpeg/png) on '<camera topic>/compressed'."
    )
    joint_states_topic: str = param("joint_states", "sensor_msgs/JointState input.")
    instruction_topic: str = param("instruction", "std_msgs/String instruction input (transient local).")
    action_chunk_topic: str = param("action_chunk", "twinbrain_ros/ActionChunk output.")
    publish_joint_trajectory: bool = param(False, "Also publish each chunk as a JointTrajectory.")
    joint_trajectory_topic: str = param("joint_trajectory", "trajectory_msgs/JointTrajectory output.")
    max_image_age_s: float = param(
        0.5, "Skip a tick when a camera's newest image is older than this, s.", low=0.001, high=60.0
    )
    max_state_age_s: float = param(
        0.25, "Skip a tick when the newest joint state is older than this, s.", low=0.001, high=60.0
    )
    reject_unknown_joints: bool = param(
        True, "Reject joint states naming joints outside the contract (false: ignore extra joints)."
    )
    status_rate_hz: float = param(5.0, "~/status publish rate.", low=0.1, high=100.0)
    min_inference_rate_hz: float = param(
        sched_defaults.DEFAULT_MIN_RATE_HZ,
        "Re-plan at least this often even when chunks are long; 0 = no floor. Keep 1/rate below the "
        "controller's chunk_timeout_s (0.5 s by default), or it treats the pause as a lost policy.",
        low=0.0,
        high=1000.0,
    )
    max_inference_rate_hz: float = param(
        sched_defaults.DEFAULT_MAX_RATE_HZ, "Never infer more often than this.", low=0.01, high=1000.0
    )
    latency_margin_s: float = param(
        sched_defaults.DEFAULT_MARGIN_S,
        "Time the new chunk must arrive before the executing one ends (transport, splice), s.",
        low=0.0,
        high=10.0,
    )
    latency_window: int = param(
        sched_defaults.DEFAULT_WINDOW, "Inferences the latency percentiles cover.", low=1, high=100000
    )
    latency_warmup: int = param(
        sched_defaults.DEFAULT_WARMUP,
        "First inferences left out of the latency statistics.",
        low=0,
        high=1000,
    )
    instruction_max_length: int = param(
        512, "Longest accepted instruction, characters.", low=1, high=100000
    )
    default_instruction: str = param("", "Instruction used until one arrives; empty = none.")
    require_instruction: bool = param(
        False, "Skip ticks while no instruction is set (set true for language-conditioned models)."
    )
    log_throttle_s: float = param(
        2.0, "Repeats of one rejection or skip reason are logged at most this often, s.", low=0.0, high=3600.0
    )
    scripted_frequency_hz: float = param(
        0.2, "scripted_sine: sine frequency, Hz.", low=0.001, high=10.0
    )
    scripted_amplitude: float = param(
        0.3, "scripted_sine: amplitude as a fraction of each joint's half range.", low=0.001, high=1.0
    )
    simulated_latency_s: float = param(
        0.0, "scripted_sine: extra time per inference, s (exercises scheduling).", low=0.0, high=10.0
    )
    simulated_latency_busy: bool = param(
        False, "scripted_sine: spend the simulated latency burning CPU instead of sleeping."
    )


class _Throttle:
    """At most one log line per key per period (rclpy's own throttle is per call site, not per reason)."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                return False
            if len(self._last) > 1000:  # bound memory if reasons carry unbounded variety
                self._last.clear()
            self._last[key] = now
            return True


def _reason_key(prefix: str, reason: str) -> str:
    # Numbers (stamps, ages, counts) vary between repeats of one reason; they must not defeat throttling.
    return prefix + "|" + re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", reason)


class PolicyNode(LifecycleNode):
    """Lifecycle node running a :class:`~twinbrain_ros.policies.PolicyBackend` on live observations.

    Raises:
        ParameterError: on invalid parameters (at construction).
        ValidationError: if the embodiment contract is invalid.
        FileNotFoundError: if the embodiment contract does not exist.
    """

    def __init__(self, node_name: str = "policy_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.p = declare_and_read(self, PolicyNodeParams)
        self._check_params()
        self.emb = load_embodiment(self.p.embodiment)
        if self.p.camera_topics and len(self.p.camera_topics) != len(self.emb.cameras):
            raise ParameterError(
                f"parameter 'camera_topics' has {len(self.p.camera_topics)} topics for the "
                f"{len(self.emb.cameras)} cameras of '{self.emb.name}' {list(self.emb.camera_names)}"
            )
        self._lock = threading.Lock()
        self._throttle = _Throttle(self.p.log_throttle_s)
        self._instruction = self.p.default_instruction.strip()
        self._chunk_id = 0  # increases over the node's life (not reset on re-activation)
        self._reset_counters()
        self._last_reason = ""
        # Created in configure, freed in cleanup:
        self._policy: PolicyBackend | None = None
        self._sync: FrameSync | None = None
        self._cameras: tuple[CameraSpec, ...] = ()
        self._stats = LatencyStats(window=self.p.latency_window, warmup=self.p.latency_warmup)
        self._sched = InferenceScheduler(
            self._stats,
            min_rate_hz=self.p.min_inference_rate_hz,
            max_rate_hz=self.p.max_inference_rate_hz,
            margin_s=self.p.latency_margin_s,
        )
        self._last_js_stamp: float | None = None
        self._subs: list = []
        self._chunk_pub = None
        self._traj_pub = None
        self._srv = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

        from twinbrain_ros.msg import PolicyStatus

        # Status exists in every lifecycle state (it reports the state), so it is a plain publisher.
        self._status_pub = self.create_publisher(PolicyStatus, "~/status", qos.status_qos())
        self._status_timer = self.create_timer(
            1.0 / self.p.status_rate_hz, self._publish_status, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._autostart_timer = None
        if self.p.autostart:
            self._autostart_timer = self.create_timer(
                0.0, self._autostart, callback_group=MutuallyExclusiveCallbackGroup()
            )
        self.get_logger().info(
            f"policy node for '{self.emb.name}': policy '{self.p.policy}'"
            + (f" from '{self.p.model_dir}'" if self.p.model_dir else "")
            + (" (autostart)" if self.p.autostart else " (waiting for configure)")
        )

    def _check_params(self) -> None:
        p = self.p
        problems = []
        if p.min_inference_rate_hz > p.max_inference_rate_hz:
            problems.append(
                f"parameter 'min_inference_rate_hz' = {p.min_inference_rate_hz} must be <= "
                f"'max_inference_rate_hz' = {p.max_inference_rate_hz}"
            )
        if p.default_instruction.strip():
            try:
                instruction_check(p.default_instruction, p.instruction_max_length)
            except ValidationError as e:
                problems.append(f"parameter 'default_instruction': {e}")
        if problems:
            raise ParameterError("; ".join(problems))

    # --- helpers ------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reset_counters(self) -> None:
        self._chunks_published = 0
        self._skipped_ticks = 0
        self._rejected_inputs = 0

    @property
    def lifecycle_state(self) -> str:
        """Label of the current lifecycle state (``unconfigured``, ``inactive``, ``active``, ...)."""
        # rclpy exposes the state only through the get_state service; read the state machine directly.
        return str(self._state_machine.current_state[1])

    def _reject(self, stream: str, problems: list[str]) -> None:
        """Count and log (throttled per reason) one input message rejected at the boundary."""
        reason = f"rejected {stream}: " + "; ".join(problems)
        with self._lock:
            self._rejected_inputs += 1
            self._last_reason = reason
            n = self._rejected_inputs
        if self._throttle.ready(_reason_key("reject:" + stream, reason)):
            self.get_logger().warning(f"{reason} (rejected inputs: {n}; keeping the last good state)")

    def _skip(self, reason: str, error: bool = False) -> None:
        """Count and log (throttled per reason) one inference tick that could not run."""
        reason = "skipped tick: " + reason
        with self._lock:
            self._skipped_ticks += 1
            self._last_reason = reason
            n = self._skipped_ticks
        if self._throttle.ready(_reason_key("skip", reason)):
            log = self.get_logger().error if error else self.get_logger().warning
            log(f"{reason} (skipped ticks: {n})")

    # --- lifecycle ----------------------------------------------------------------------------------

    def _autostart(self) -> None:
        if self._autostart_timer is not None:
            self._autostart_timer.cancel()
            self.destroy_timer(self._autostart_timer)
            self._autostart_timer = None
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed; staying unconfigured (reason above)")
            return
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: activate failed; staying inactive")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the policy and create subscriptions, publishers and the instruction service."""
        p = self.p
        options = {}
        if p.policy == "scripted_sine":
            options = {
                "frequency_hz": p.scripted_frequency_hz,
                "amplitude": p.scripted_amplitude,
                "simulated_latency_s": p.simulated_latency_s,
                "latency_busy": p.simulated_latency_busy,
            }
        else:
            if p.num_threads:
                options["num_threads"] = p.num_threads
            if p.chunk_lead_s >= 0.0:
                options["chunk_lead_s"] = p.chunk_lead_s
        t0 = time.monotonic()
        try:
            policy = load_policy(
                p.policy, embodiment=self.emb, model_dir=p.model_dir, device=p.device, backend=p.backend,
                seed=p.seed, options=options,
            )
        except Exception as e:  # noqa: BLE001 - any load failure must fail the transition, with its reason
            reason = f"configure failed: {e}"
            with self._lock:
                self._last_reason = reason
            self.get_logger().error(reason)
            return TransitionCallbackReturn.FAILURE
        try:
            self._create_entities(policy)
        except Exception as e:  # noqa: BLE001 - e.g. a bad topic name; undo and report
            self._destroy_entities()
            reason = f"configure failed while creating topics: {type(e).__name__}: {e}"
            with self._lock:
                self._last_reason = reason
            self.get_logger().error(reason)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"configured: policy '{policy.model_id}' (horizon {policy.horizon}, step {policy.step_dt} s, "
            f"cameras {list(policy.camera_names)}) loaded in {time.monotonic() - t0:.2f} s"
        )
        return super().on_configure(state)

    def _create_entities(self, policy: PolicyBackend) -> None:
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import String

        from twinbrain_ros.msg import ActionChunk
        from twinbrain_ros.srv import SetInstruction

        p = self.p
        self._policy = policy
        topics = dict(zip(self.emb.camera_names, p.camera_topics or [c.topic for c in self.emb.cameras],
                          strict=True))
        # Subscribe to the cameras the policy reads, in contract order.
        self._cameras = tuple(c for c in self.emb.cameras if c.name in policy.camera_names)
        ages = {c.name: p.max_image_age_s for c in self._cameras}
        ages[STATE_STREAM] = p.max_state_age_s
        self._sync = FrameSync(ages, history=4)
        self._last_js_stamp = None
        for cam in self._cameras:
            topic = topics[cam.name]
            msg_type = CompressedImage if p.compressed_images else Image
            if p.compressed_images:
                topic = topic.rstrip("/") + "/compressed"
            # One mutually exclusive group per subscription: different streams run in parallel, but
            # messages of one stream are handled in order (or "time went backwards" would misfire).
            self._subs.append(
                self.create_subscription(
                    msg_type, topic, lambda m, cam=cam: self._on_image(cam, m), qos.camera_qos(),
                    callback_group=MutuallyExclusiveCallbackGroup(),
                )
            )
        self._subs.append(
            self.create_subscription(
                JointState, p.joint_states_topic, self._on_joint_state, qos.joint_state_qos(),
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        )
        self._subs.append(
            self.create_subscription(
                String, p.instruction_topic, self._on_instruction, qos.instruction_qos(),
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        )
        self._srv = self.create_service(
            SetInstruction, "~/set_instruction", self._on_set_instruction,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._chunk_pub = self.create_lifecycle_publisher(ActionChunk, p.action_chunk_topic, qos.chunk_qos())
        if p.publish_joint_trajectory:
            from trajectory_msgs.msg import JointTrajectory

            self._traj_pub = self.create_lifecycle_publisher(
                JointTrajectory, p.joint_trajectory_topic, qos.trajectory_qos()
            )

    def _destroy_entities(self) -> None:
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        if self._srv is not None:
            self.destroy_service(self._srv)
            self._srv = None
        for pub in (self._chunk_pub, self._traj_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._chunk_pub = self._traj_pub = None
        self._policy = None
        self._sync = None
        self._cameras = ()

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Reset counters and the policy, then start the inference worker."""
        with self._lock:
            self._reset_counters()
        self._stats.reset()
        try:
            self._policy.reset()
        except Exception as e:  # noqa: BLE001 - a policy that cannot reset must not go active
            self.get_logger().error(f"activate failed: policy reset raised {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        ret = super().on_activate(state)  # enables the lifecycle publishers
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name="policy_inference", daemon=True)
        self._worker.start()
        self.get_logger().info("activated: inference running")
        return ret

    def _stop_worker(self) -> None:
        self._stop.set()
        w, self._worker = self._worker, None
        if w is not None and w is not threading.current_thread():
            w.join(timeout=30.0)
            if w.is_alive():
                self.get_logger().warning("inference worker did not stop within 30 s (a long inference?)")

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the inference worker; chunk publishers fall silent."""
        self._stop_worker()
        self.get_logger().info("deactivated: inference stopped")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the policy and every entity created in configure."""
        self._destroy_entities()
        self.get_logger().info("cleaned up")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop inference and free everything."""
        self._stop_worker()
        self._destroy_entities()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Recover to unconfigured: stop inference and free everything."""
        self.get_logger().error(f"error during a transition from '{state.label}'; cleaning up")
        self._stop_worker()
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the worker before the node's entities go away."""
        if hasattr(self, "_stop"):  # absent when __init__ failed part-way (context cleanup calls us)
            self._stop_worker()
        super().destroy_node()

    # --- inputs -------------------------------------------------------------------------------------

    def _on_image(self, cam: CameraSpec, msg) -> None:
        sync = self._sync
        if sync is None:
            return
        stream = f"camera '{cam.name}'"
        try:
            if self.p.compressed_images:
                img = compressed_image_from_msg(msg, cam)
            else:
                img = image_from_msg(msg, cam)
            stamp = time_to_sec(msg.header.stamp)
            if stamp == 0.0:
                raise ValidationError(["header.stamp is zero (unset by the publisher)"])
            sync.add(cam.name, img, stamp)
        except ValidationError as e:
            self._reject(stream, e.problems)

    def _on_joint_state(self, msg) -> None:
        sync = self._sync
        if sync is None:
            return
        names = self.emb.joint_names
        problems = []
        if self.p.reject_unknown_joints:
            unknown = [n for n in msg.name if n not in names]
            if unknown:
                problems.append(f"unknown joints {unknown} (contract: {list(names)})")
        try:
            stamp, pos, _ = joint_state_from_msg(msg, names, last_stamp=self._last_js_stamp)
        except ValidationError as e:
            problems = e.problems + problems
        else:
            if stamp == 0.0:
                problems.append("header.stamp is zero (unset by the publisher)")
        if not problems:
            try:
                sync.add(STATE_STREAM, pos, stamp)
            except ValidationError as e:
                problems = e.problems
        if problems:
            self._reject(STATE_STREAM, problems)
            return
        self._last_js_stamp = stamp

    def _set_instruction(self, text: str, source: str) -> tuple[bool, str]:
        try:
            clean = instruction_check(text, self.p.instruction_max_length)
        except ValidationError as e:
            self._reject(f"instruction ({source})", e.problems)
            return False, "; ".join(e.problems)
        with self._lock:
            changed = clean != self._instruction
            self._instruction = clean
        if changed:
            shown = clean if len(clean) <= 80 else clean[:77] + "..."
            self.get_logger().info(f"instruction set ({source}): '{shown}'")
        return True, "instruction set"

    def _on_instruction(self, msg) -> None:
        self._set_instruction(msg.data, "topic")

    def _on_set_instruction(self, request, response):
        response.success, response.message = self._set_instruction(request.instruction, "service")
        return response

    # --- inference ----------------------------------------------------------------------------------

    def _sleep_until(self, t: float) -> bool:
        """Wait until node-clock time ``t``; False if asked to stop meanwhile."""
        while True:
            remaining = t - self._now()
            if remaining <= 0:
                return not self._stop.is_set()
            # Short waits re-read the clock, which keeps this right under sim time and clock jumps.
            if self._stop.wait(min(remaining, 0.05)):
                return False

    def _worker_loop(self) -> None:
        last_start: float | None = None
        chunk_end: float | None = None
        skipping = False  # while ticks are skipped, the skip reason (not lateness) is the news
        policy, sync = self._policy, self._sync
        if policy is None or sync is None:
            return
        while not self._stop.is_set():
            now = self._now()
            # A chunk that has already ended is no longer executing: plan as if there were none.
            executing_end = chunk_end if chunk_end is not None and chunk_end > now else None
            decision = self._sched.next_start(now=now, last_start=last_start, chunk_end=executing_end)
            if not self._sleep_until(decision.t_next):
                break
            now = self._now()
            last_start = now
            # Starting inside the margin is what the margin is for; warn only when, at p95 latency, the
            # new chunk will arrive after the executing one has run out (the controller then holds).
            overrun = now + (self._stats.p95 or 0.0) - executing_end if executing_end is not None else 0.0
            if decision.late and overrun > 0 and not skipping and self._throttle.ready("late"):
                self.get_logger().warning(
                    f"the next chunk is expected {overrun:.3f} s after the executing one runs out "
                    f"(start limited by: {decision.reason}; p95 latency "
                    f"{1e3 * (self._stats.p95 or 0):.1f} ms, margin {self.p.latency_margin_s} s)"
                )
            try:
                published_end = self._tick(policy, sync, now)
            except Exception as e:  # noqa: BLE001 - the worker must outlive any single tick
                if self._stop.is_set() or not self.context.ok():
                    break  # shutting down (e.g. SIGINT invalidated the context mid-publish)
                self._skip(f"internal error: {type(e).__name__}: {e}", error=True)
                skipping = True
                continue
            skipping = published_end is None
            if published_end is not None:
                chunk_end = published_end

    def _tick(self, policy: PolicyBackend, sync: FrameSync, now: float) -> float | None:
        """One inference tick; returns the end time of the published chunk, or None if skipped."""
        res = sync.select(now)
        if not res.ok:
            self._skip(res.reason)
            return None
        with self._lock:
            instruction = self._instruction
        if self.p.require_instruction and not instruction:
            self._skip(
                f"no instruction yet (publish on '{self.p.instruction_topic}' or call ~/set_instruction)"
            )
            return None
        cams = [c.name for c in self._cameras]
        obs = Observation(
            images={c: res.value(c) for c in cams},
            state=res.value(STATE_STREAM),
            joint_names=self.emb.joint_names,
            instruction=instruction,
            stamp=res.stamp(STATE_STREAM),
            image_stamps={c: res.stamp(c) for c in cams},
        )
        t0 = time.perf_counter()
        try:
            chunk = policy.infer(obs)
        except ValidationError as e:
            self._skip("policy rejected the observation: " + "; ".join(e.problems))
            return None
        except Exception as e:  # noqa: BLE001 - a failing inference must not kill the node
            self._skip(f"inference failed: {type(e).__name__}: {e}", error=True)
            return None
        latency = time.perf_counter() - t0
        self._stats.add(latency)
        if self._stop.is_set():
            return None  # deactivating: drop the chunk rather than publish on a closing publisher
        with self._lock:
            self._chunk_id += 1
            chunk_id = self._chunk_id
        chunk = dataclasses.replace(
            chunk, chunk_id=chunk_id, inference_ms=1e3 * latency, model_id=chunk.model_id or policy.model_id
        )
        try:
            msg = chunk_to_msg(chunk)
            problems = check_chunk_msg(msg, expected_joints=self.emb.joint_names)
        except Exception as e:  # noqa: BLE001 - e.g. a chunk of the wrong type or shape
            problems = [f"{type(e).__name__}: {e}"]
        if problems:
            self._skip("policy returned an invalid chunk: " + "; ".join(problems), error=True)
            return None
        self._chunk_pub.publish(msg)
        if self._traj_pub is not None:
            self._traj_pub.publish(chunk_msg_to_trajectory(msg))
        with self._lock:
            self._chunks_published += 1
        return chunk.t_end

    # --- status -------------------------------------------------------------------------------------

    def _publish_status(self) -> None:
        from twinbrain_ros.msg import PolicyStatus

        now = self._now()
        msg = PolicyStatus()
        msg.header.stamp = sec_to_time(now)
        msg.lifecycle_state = self.lifecycle_state
        policy, sync = self._policy, self._sync
        msg.model_id = policy.model_id if policy is not None else ""
        msg.last_latency_ms = _ms(self._stats.last)
        msg.latency_p50_ms = _ms(self._stats.p50)
        msg.latency_p95_ms = _ms(self._stats.p95)
        if sync is not None:
            ages = sync.ages(now)
            msg.stream_names = list(ages)
            # -1 = never received; a stamp slightly ahead of this clock reads as age 0.
            msg.stream_age_ms = np.asarray(
                [-1.0 if a is None else max(0.0, 1e3 * a) for a in ages.values()], dtype=np.float32
            )
        with self._lock:
            msg.chunks_published = self._chunks_published
            msg.skipped_ticks = self._skipped_ticks
            msg.rejected_inputs = self._rejected_inputs
            msg.last_reason = self._last_reason
            msg.active_instruction = self._instruction
        self._status_pub.publish(msg)


def _ms(seconds: float | None) -> float:
    """Seconds -> milliseconds; 0 stands for "not measured yet"."""
    return 0.0 if seconds is None else 1e3 * seconds


def main(args=None) -> None:
    """Run the policy node until interrupted (exit code 1 on invalid parameters or contract)."""
    rclpy.init(args=args)
    node = None
    # One thread for the callbacks: they only store samples, answer services and publish status;
    # inference runs in the node's own worker thread. rclpy's MultiThreadedExecutor re-polls its
    # wait set while a pool thread has not yet taken the ready message: measured here at 80-100 % of
    # a core with the scripted policy, which delayed joint_states by up to 0.28 s (stale ticks, and
    # chunk gaps beyond the controller's 0.5 s timeout). With this executor: ~15 % CPU, ages ~10 ms.
    # Lifecycle transitions (configure loads the model) run in this thread too, so the node answers
    # nothing else until a transition returns, as lifecycle nodes usually do.
    executor = SingleThreadedExecutor()
    failed = False
    try:
        node = PolicyNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ParameterError, ValidationError, FileNotFoundError) as e:
        from rclpy.logging import get_logger

        get_logger("policy_node").fatal(f"cannot start: {e}")
        failed = True
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
