# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
r"""``twinbrain eval-sim``: closed-loop evaluation of a policy on the simulated SO-101.

Two ways to run the same episodes (task x seed), reported the same way:

* ``ros`` (default): the real graph. The ``sim_mujoco`` profile starts ``sim_node`` (MuJoCo, sim
  time on ``/clock``), ``policy_node`` (the checkpoint, through ``Policy.load``) and
  ``controller_node`` as separate processes; this driver resets each episode over the sim's
  ``~/reset_episode`` service (which also publishes the task's instruction to the policy), resets
  the controller (``~/reset``: chunks computed before the reset are refused), polls
  ``~/get_task_status`` until the task succeeds (plus a settle time) or its time limit passes, and
  listens to the chunks, the commands, the joint states and the camera over DDS.
* ``inprocess``: one process, no ROS: the same MuJoCo environment, the same ``Policy`` and the same
  ``ChunkController`` stepped in sim time, with each chunk delivered after its measured inference
  time. Deterministic for a seed and useful while iterating on a model; not what the README reports.

Metrics: success rate per task and overall; time to success; ``language_swap_accuracy``: over the
seeds run with both instructions of a pair (touch the red cube / touch the blue cube, same scene),
the fraction on which the policy touches the named cube under *both* instructions (a colour prior
scores at most 50 %); inference latency p50/p95/p99 (the policy's own per-stage timing); the
controller's control rate; seam jumps: at each new chunk's start, how far (max over joints, rad) it
disagrees with the chunk it replaces, which the controller's splice absorbs.

Outputs (``--out``): ``eval.json`` (every episode and the summary), ``joints.png`` (commanded vs
executed joints of the first episode), ``camera_strip.png`` and ``camera.gif`` (the first episode's
camera).

Usage:
    twinbrain eval-sim --model models/so101-sim-touch --tasks touch_red_cube,touch_blue_cube \\
        --episodes 25 --seed 1000 --out eval/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Pairs of tasks that differ only in the object the instruction names (language grounding check).
SWAP_PAIRS = (("touch_red_cube", "touch_blue_cube"), ("lift_red_cube", "lift_blue_cube"))
FIRST_HELD_OUT_SEED = 1000  # record-sim / demo-train use seeds below this


@dataclass
class EpisodeResult:
    """Outcome of one evaluated episode."""

    task: str
    seed: int
    instruction: str
    success: bool
    time_to_success_s: float | None
    final_distance_m: float
    episode_s: float
    chunks: int = 0
    # In-process mode only (the sim node's status service reports the named object alone): the object
    # the tool point came closest to during the episode, and how close. A touch episode that fails
    # with ``nearest_object`` != the named object went for the wrong object (grounding), not a miss.
    target_object: str | None = None
    nearest_object: str | None = None
    nearest_distance_m: float | None = None


@dataclass
class Telemetry:
    """What the graph reported while the episodes ran."""

    infer_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    seam_jumps: list[float] = field(default_factory=list)
    control_hz: float = float("nan")
    command_velocity_fraction: float = float("nan")  # max over cycles and joints of |v| / max_velocity
    # First episode only: commanded and executed joints, camera frames.
    cmd_t: list[float] = field(default_factory=list)
    cmd_q: list[list[float]] = field(default_factory=list)
    js_t: list[float] = field(default_factory=list)
    js_q: list[list[float]] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)


def _pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def language_swap(results: list[EpisodeResult], pairs=SWAP_PAIRS) -> tuple[float | None, int]:
    """(accuracy, number of seed pairs): the policy touched the named object under both instructions.

    Only seeds evaluated with both tasks of a pair count; None when there is no such seed.
    """
    by_key = {(r.task, r.seed): r for r in results}
    passed = total = 0
    for a, b in pairs:
        for seed in sorted({r.seed for r in results if r.task == a}):
            ra, rb = by_key.get((a, seed)), by_key.get((b, seed))
            if ra is None or rb is None:
                continue
            total += 1
            passed += int(ra.success and rb.success)
    return (passed / total if total else None), total


def seam_jump(prev, new) -> float:
    """Largest joint disagreement, rad, between chunk ``prev`` and chunk ``new`` at ``new``'s start."""
    t = new.t0
    tp = prev.t0 + np.arange(len(prev.positions)) * prev.step_dt
    if t > tp[-1]:
        q_prev = prev.positions[-1]
    else:
        q_prev = np.array([np.interp(t, tp, prev.positions[:, j]) for j in range(prev.positions.shape[1])])
    return float(np.max(np.abs(np.asarray(new.positions[0]) - q_prev)))


def summarize(results: list[EpisodeResult], tel: Telemetry, mode: str) -> dict[str, Any]:
    """The report's summary block."""
    per_task: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(r.task for r in results):
        rs = [r for r in results if r.task == task]
        times = [r.time_to_success_s for r in rs if r.success and r.time_to_success_s is not None]
        per_task[task] = {
            "episodes": len(rs),
            "success_rate": sum(r.success for r in rs) / len(rs),
            "time_to_success_s_p50": _pct(times, 50) if times else None,
        }
    swap, pairs = language_swap(results)
    touch = [r for r in results if r.task.startswith("touch")]
    tracked = [r for r in results if r.nearest_object is not None and r.target_object is not None]
    return {
        "mode": mode,
        "episodes": len(results),
        "success_rate": (sum(r.success for r in results) / len(results)) if results else float("nan"),
        "touch_success_rate": (sum(r.success for r in touch) / len(touch)) if touch else None,
        "language_swap_accuracy": swap,
        "language_swap_pairs": pairs,
        # share of episodes whose tool point came closest to an object other than the named one
        "wrong_object_rate": (sum(r.nearest_object != r.target_object for r in tracked) / len(tracked))
        if tracked else None,
        "per_task": per_task,
        "infer_ms": {"p50": _pct(tel.infer_ms, 50), "p95": _pct(tel.infer_ms, 95),
                     "p99": _pct(tel.infer_ms, 99), "n": len(tel.infer_ms)},  # fmt: skip
        "stage_ms_p50": {k: _pct(v, 50) for k, v in tel.stage_ms.items()},
        "control_hz": tel.control_hz,
        "seam_jump_rad": {"p50": _pct(tel.seam_jumps, 50), "p95": _pct(tel.seam_jumps, 95),
                          "max": max(tel.seam_jumps) if tel.seam_jumps else float("nan"),
                          "n": len(tel.seam_jumps)},  # fmt: skip
        "command_max_velocity_fraction": tel.command_velocity_fraction,
    }


def summary_line(summary: dict[str, Any], prefix: str = "eval-sim") -> str:
    """``<prefix>: episodes=N success_rate=X language_swap_accuracy=Y p50_infer_ms=Z control_hz=W``."""
    swap = summary["language_swap_accuracy"]
    return (
        f"{prefix}: episodes={summary['episodes']} success_rate={summary['success_rate']:.2f} "
        f"language_swap_accuracy={'n/a' if swap is None else f'{swap:.2f}'} "
        f"p50_infer_ms={summary['infer_ms']['p50']:.1f} control_hz={summary['control_hz']:.1f}"
    )


def format_table(results: list[EpisodeResult], summary: dict[str, Any]) -> str:
    """A human table: one row per task, then latency and controller numbers."""
    lines = [f"{'task':<18} {'episodes':>8} {'success':>8} {'t_success p50 s':>16}"]
    for task, s in summary["per_task"].items():
        t = s["time_to_success_s_p50"]
        t_txt = "-" if t is None else f"{t:.2f}"
        lines.append(f"{task:<18} {s['episodes']:>8} {s['success_rate'] * 100:>7.1f}% {t_txt:>16}")
    swap = summary["language_swap_accuracy"]
    if swap is not None:
        lines.append(f"language swap: {swap * 100:.1f}% of {summary['language_swap_pairs']} seed pairs")
    wrong = summary.get("wrong_object_rate")
    if wrong is not None:
        lines.append(f"went closest to an object other than the named one: {wrong * 100:.1f}% of episodes")
    inf = summary["infer_ms"]
    lines.append(
        f"inference ms: p50 {inf['p50']:.1f}  p95 {inf['p95']:.1f}  p99 {inf['p99']:.1f}  (n={inf['n']})"
    )
    if summary["stage_ms_p50"]:
        stages = "  ".join(f"{k} {v:.1f}" for k, v in summary["stage_ms_p50"].items())
        lines.append("stages p50 ms: " + stages)
    sj = summary["seam_jump_rad"]
    lines.append(
        f"controller: {summary['control_hz']:.1f} Hz; seam jump p50 {sj['p50']:.3f} p95 {sj['p95']:.3f} "
        f"max {sj['max']:.3f} rad (n={sj['n']}); fastest command "
        f"{summary['command_max_velocity_fraction'] * 100:.0f}% of the velocity limit"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------------
def plot_joints(path: Path, names, tel: Telemetry, title: str) -> Path | None:
    """Commanded vs executed joints of one episode (PNG)."""
    if not tel.cmd_t or not tel.js_t:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct, cq = np.asarray(tel.cmd_t), np.asarray(tel.cmd_q)
    jt, jq = np.asarray(tel.js_t), np.asarray(tel.js_q)
    t0 = min(ct[0], jt[0])
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.6 * len(names)), sharex=True)
    for j, name in enumerate(names):
        ax = axes[j]
        ax.plot(jt - t0, jq[:, j], color="tab:blue", lw=1.6, label="executed (joint_states)")
        ax.plot(ct - t0, cq[:, j], color="tab:orange", lw=1.0, ls="--", label="commanded (controller)")
        ax.set_ylabel(f"{name}\nrad", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7)
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xlabel("sim time since reset, s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _side_by_side(frames: list[np.ndarray]) -> np.ndarray:
    """The views of one instant in a row (each padded to the tallest), for the strip and the GIF."""
    if len(frames) == 1:
        return frames[0]
    h = max(f.shape[0] for f in frames)
    return np.concatenate([np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0))) for f in frames], axis=1)


def save_camera(out: Path, frames: list[np.ndarray], fps: float) -> tuple[Path | None, Path | None]:
    """A strip of 8 evenly spaced frames (PNG) and the whole episode as an animated GIF."""
    if not frames:
        return None, None
    from PIL import Image

    idx = np.linspace(0, len(frames) - 1, min(8, len(frames))).round().astype(int)
    strip = np.concatenate([frames[i] for i in idx], axis=1)
    strip_path = out / "camera_strip.png"
    Image.fromarray(strip).save(strip_path)
    gif_path = out / "camera.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif_path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return strip_path, gif_path


# --------------------------------------------------------------------------------------------------
# In-process runner (no ROS)
# --------------------------------------------------------------------------------------------------
def run_in_process(
    model_dir: str,
    episodes: list[tuple[str, int]],
    *,
    settle_s: float = 0.3,
    num_threads: int = 0,
    policy_seed: int = 0,
    progress: bool = True,
    noise_seed: int | None = None,
    chunk_lead_s: float | None = None,
    min_inference_rate_hz: float | None = None,
) -> tuple[list[EpisodeResult], Telemetry]:
    """Run ``episodes`` with the policy, the chunk controller and MuJoCo in this process, in sim time.

    Each chunk reaches the controller ``inference time`` after its observation (sim time stands still
    while the model runs, then the chunk is delayed by what it cost), as it would on a robot.
    Inferences are scheduled as the policy node schedules them (:class:`InferenceScheduler` with the
    node's default parameters; ``min_inference_rate_hz`` overrides its re-planning floor), on
    the latency measured here, so the chunks overlap as they do in the ROS graph.
    """
    from twinbrain_ros.core import scheduling as S
    from twinbrain_ros.core.controller import ChunkController, ControllerConfig
    from twinbrain_ros.core.types import Observation
    from twinbrain_ros.policy import Policy
    from twinbrain_ros.sim.env import SimEnv

    policy = Policy.load(model_dir, num_threads=num_threads, seed=policy_seed, chunk_lead_s=chunk_lead_s)
    emb = policy.embodiment
    cams = emb.cameras
    rates = emb.rates
    policy.warmup(2)
    tel = Telemetry()
    results = []
    env = SimEnv(offscreen=(max([640] + [c.width for c in cams]), max([480] + [c.height for c in cams])))
    env.check_embodiment(emb)
    control_dt = 1.0 / rates.control_hz
    frame_dt = 1.0 / rates.camera_hz
    stats = S.LatencyStats(window=S.DEFAULT_WINDOW, warmup=S.DEFAULT_WARMUP)
    sched = S.InferenceScheduler(
        stats, min_rate_hz=S.DEFAULT_MIN_RATE_HZ if min_inference_rate_hz is None else min_inference_rate_hz,
        max_rate_hz=S.DEFAULT_MAX_RATE_HZ, margin_s=S.DEFAULT_MARGIN_S,
    )  # fmt: skip
    tel.control_hz = rates.control_hz
    vmax = np.asarray(emb.limits.max_velocity, dtype=np.float64)
    max_frac = 0.0
    bar = _progress(len(episodes), progress)
    try:
        for ep, (task, seed) in enumerate(episodes):
            info = env.reset(seed, task)
            limit = env.task.time_limit_s
            ctl = ChunkController(ControllerConfig.from_embodiment(emb))
            policy.reset()
            t = 0.0
            ctl.initialize(env.joint_positions(), t)
            next_frame = next_infer = next_control = 0.0
            views: dict[str, np.ndarray] | None = None
            pending: list[tuple[float, Any]] = []
            prev_chunk = None
            n_chunks = 0
            success_at = None
            nearest = dict.fromkeys(env.suite.object_names, np.inf)
            while t < limit:
                if t >= next_frame - 1e-9:
                    views = {c.name: env.render(c.name, c.width, c.height) for c in cams}
                    if ep == 0:
                        tel.frames.append(_side_by_side(list(views.values())))
                    next_frame += frame_dt
                if t >= next_infer - 1e-9 and views is not None:
                    obs = Observation(images=views, state=env.joint_positions(),
                                      joint_names=emb.joint_names, instruction=info.instruction,
                                      stamp=t)  # fmt: skip
                    chunk = policy.infer(obs, seed=noise_seed)
                    latency = chunk.timing_ms["total"] / 1e3
                    stats.add(latency)
                    tel.infer_ms.append(chunk.timing_ms["total"])
                    for k, v in chunk.timing_ms.items():
                        tel.stage_ms.setdefault(k, []).append(v)
                    pending.append((t + latency, chunk))
                    # The node's worker decides on its next start once this inference has returned.
                    done = t + latency
                    executing = chunk.t_end if chunk.t_end > done else None
                    next_infer = sched.next_start(now=done, last_start=t, chunk_end=executing).t_next
                while pending and pending[0][0] <= t + 1e-9:
                    _, chunk = pending.pop(0)
                    if ctl.offer(chunk, t).accepted:
                        if prev_chunk is not None:
                            tel.seam_jumps.append(seam_jump(prev_chunk, chunk))
                        prev_chunk = chunk
                        n_chunks += 1
                if t >= next_control - 1e-9:
                    cmd = ctl.step(t)
                    if cmd is not None:
                        env.set_joint_targets(cmd.position)
                        max_frac = max(max_frac, float(np.max(np.abs(cmd.velocity) / vmax)))
                        if ep == 0:
                            tel.cmd_t.append(t)
                            tel.cmd_q.append(cmd.position.tolist())
                            tel.js_t.append(t)
                            tel.js_q.append(env.joint_positions().tolist())
                    next_control += control_dt
                    tcp = env.tcp_position()
                    for name, pose in env.object_poses().items():
                        nearest[name] = min(nearest[name], float(np.linalg.norm(tcp - pose.pos)))
                env.step()
                t = env.episode_time
                if success_at is None and env.first_success_time is not None:
                    success_at = env.first_success_time
                if success_at is not None and t >= success_at + settle_s:
                    break
            st = env.task_status()
            near = min(nearest, key=nearest.get)
            results.append(EpisodeResult(task, int(seed), info.instruction, success_at is not None,
                                         success_at, st.distance, t, n_chunks, env.task.object,
                                         near, nearest[near]))  # fmt: skip
            bar(f"{task} seed {seed}: {'ok' if success_at is not None else 'FAIL'}")
    finally:
        env.close()
        policy.close()
    tel.command_velocity_fraction = max_frac
    return results, tel


def _progress(total: int, enabled: bool):
    """A callable advancing a tqdm bar (or printing a line per episode)."""
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, disable=not enabled, file=sys.stderr, desc="eval-sim", unit="ep")
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None

    def step(msg: str) -> None:
        if bar is not None:
            bar.set_postfix_str(msg)
            bar.update(1)
        elif enabled:
            print(f"[eval-sim] {msg}", file=sys.stderr)

    return step


# --------------------------------------------------------------------------------------------------
# ROS runner: the real graph
# --------------------------------------------------------------------------------------------------
def run_ros(
    model_dir: str,
    episodes: list[tuple[str, int]],
    *,
    settle_s: float = 0.3,
    num_threads: int = 0,
    policy_seed: int = 0,
    real_time_factor: float = 1.0,
    log_dir: Path | None = None,
    progress: bool = True,
    ready_timeout_s: float = 120.0,
    chunk_lead_s: float | None = None,
    min_inference_rate_hz: float | None = None,
) -> tuple[list[EpisodeResult], Telemetry]:
    """Run ``episodes`` through sim_node + policy_node + controller_node (separate processes, DDS)."""
    import threading

    import rclpy
    import yaml
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    from twinbrain_ros.bringup import load_profile, plan, run_background, stop_all
    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.msg import ActionChunk, ControllerStatus, PolicyStatus
    from twinbrain_ros.ros import qos
    from twinbrain_ros.ros.conversions import chunk_from_msg, image_from_msg, time_to_sec
    from twinbrain_ros.ros.spinning import SpinThread
    from twinbrain_ros.srv import GetTaskStatus, ResetEpisode

    _checkpoint_embodiment(model_dir)  # a clear error for a directory that is not a checkpoint
    contract = (Path(model_dir) / "embodiment.yaml").resolve()
    emb = load_embodiment(str(contract))
    base = load_profile("sim_mujoco")
    data = {k: {"ros__parameters": dict(v)} for k, v in base.nodes.items()}
    pol = data["policy_node"]["ros__parameters"]
    pol.update(policy="twinbrain", model_dir=str(Path(model_dir).resolve()), seed=int(policy_seed),
               num_threads=int(num_threads), require_instruction=True, autostart=True)  # fmt: skip
    if chunk_lead_s is not None:
        pol["chunk_lead_s"] = float(chunk_lead_s)
    if min_inference_rate_hz is not None:
        pol["min_inference_rate_hz"] = float(min_inference_rate_hz)
    data["sim_node"]["ros__parameters"]["real_time_factor"] = float(real_time_factor)
    first_task, first_seed = episodes[0]
    data["sim_node"]["ros__parameters"].update(task=first_task, seed=int(first_seed))
    tmp = Path(tempfile.mkdtemp(prefix="twinbrain_eval_sim_"))
    (tmp / "eval_sim.yaml").write_text(yaml.safe_dump(data))
    procs = run_background(
        # every node on the checkpoint's contract (its cameras, e.g. a wrist view)
        plan(load_profile(str(tmp / "eval_sim.yaml")), use_sim_time=True, embodiment=str(contract)),
        log_dir=log_dir or tmp / "logs",
    )
    tel = Telemetry()
    results: list[EpisodeResult] = []
    lock = threading.Lock()
    state: dict[str, Any] = {"record": False, "prev": None, "chunks": 0, "policy": None, "ctl": None,
                             "max_frac": 0.0}  # fmt: skip
    vmax = np.asarray(emb.limits.max_velocity, dtype=np.float64)
    names = emb.joint_names
    cam = emb.cameras[0]

    rclpy.init()
    node = rclpy.create_node("eval_sim_driver")

    def on_chunk(msg) -> None:
        try:
            chunk = chunk_from_msg(msg, names)
        except Exception:  # noqa: BLE001 - a malformed chunk is the controller's business, not ours
            return
        with lock:
            tel.infer_ms.append(float(msg.inference_ms))
            prev = state["prev"]
            if prev is not None and chunk.t0 >= prev.t0:
                tel.seam_jumps.append(seam_jump(prev, chunk))
            state["prev"] = chunk
            state["chunks"] += 1

    def on_cmd(msg) -> None:
        if not msg.points:
            return
        q = np.asarray(msg.points[0].positions, dtype=np.float64)
        v = np.asarray(msg.points[0].velocities, dtype=np.float64)
        with lock:
            if v.shape == vmax.shape:
                state["max_frac"] = max(state["max_frac"], float(np.max(np.abs(v) / vmax)))
            if state["record"]:
                tel.cmd_t.append(time_to_sec(node.get_clock().now().to_msg()))
                tel.cmd_q.append(q.tolist())

    def on_js(msg) -> None:
        with lock:
            if state["record"] and list(msg.name) == list(names):
                tel.js_t.append(time_to_sec(msg.header.stamp))
                tel.js_q.append(list(msg.position))

    def on_image(msg) -> None:
        with lock:
            if state["record"]:
                try:
                    tel.frames.append(image_from_msg(msg))
                except Exception:  # noqa: BLE001
                    pass

    def on_policy(msg) -> None:
        with lock:
            state["policy"] = msg

    def on_ctl(msg) -> None:
        with lock:
            state["ctl"] = msg

    from rclpy.parameter import Parameter

    node.set_parameters([Parameter("use_sim_time", Parameter.Type.BOOL, True)])
    node.create_subscription(ActionChunk, "action_chunk", on_chunk, qos.chunk_qos())
    node.create_subscription(JointTrajectory, "joint_command", on_cmd, qos.trajectory_qos())
    node.create_subscription(JointState, "joint_states", on_js, qos_profile_sensor_data)
    node.create_subscription(Image, cam.topic, on_image, qos_profile_sensor_data)
    node.create_subscription(PolicyStatus, "/policy_node/status", on_policy, qos.status_qos())
    node.create_subscription(ControllerStatus, "/controller_node/status", on_ctl, qos.status_qos())
    reset = node.create_client(ResetEpisode, "/sim_node/reset_episode")
    status = node.create_client(GetTaskStatus, "/sim_node/get_task_status")
    ctl_reset = node.create_client(Trigger, "/controller_node/reset")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = SpinThread(executor)

    def call(client, request, timeout: float = 20.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"service {client.srv_name} not available after {timeout} s")
        fut = client.call_async(request)
        end = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.005)
        if not fut.done() or fut.result() is None:
            raise RuntimeError(f"service {client.srv_name} did not answer in {timeout} s")
        return fut.result()

    bar = _progress(len(episodes), progress)
    try:
        # Ready: the policy is active and has published chunks (the model is loaded and warm).
        end = time.monotonic() + ready_timeout_s
        while time.monotonic() < end:
            with lock:
                ps, n = state["policy"], state["chunks"]
            if ps is not None and ps.lifecycle_state == "active" and n >= 2:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a node exited during start-up; logs in {log_dir or tmp / 'logs'}")
            time.sleep(0.1)
        else:
            raise RuntimeError(
                f"policy not producing chunks after {ready_timeout_s} s (logs: {log_dir or tmp})"
            )
        for ep, (task, seed) in enumerate(episodes):
            r = call(reset, ResetEpisode.Request(seed=int(seed), task=task))
            if not r.success:
                raise RuntimeError(f"reset failed: {r.message}")
            call(ctl_reset, Trigger.Request())
            with lock:
                state["prev"] = None
                state["chunks"] = 0
                state["record"] = ep == 0
            st = None
            wall_limit = time.monotonic() + 60.0 / max(real_time_factor, 0.05) + 30.0
            while time.monotonic() < wall_limit:
                st = call(status, GetTaskStatus.Request())
                if st.first_success_time >= 0 and st.episode_time >= st.first_success_time + settle_s:
                    break
                if st.timed_out:
                    break
                time.sleep(0.05)
            with lock:
                state["record"] = False
                n_chunks = state["chunks"]
            ok = bool(st is not None and st.first_success_time >= 0)
            results.append(EpisodeResult(task, int(seed), r.instruction, ok,
                                         float(st.first_success_time) if ok else None,
                                         float(st.distance), float(st.episode_time), n_chunks))  # fmt: skip
            bar(f"{task} seed {seed}: {'ok' if ok else 'FAIL'}")
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a node exited during the evaluation; logs in {log_dir or tmp / 'logs'}")
        with lock:
            cs = state["ctl"]
            tel.command_velocity_fraction = state["max_frac"]
        period_s = 1.0 / emb.rates.control_hz
        tel.control_hz = emb.rates.control_hz if cs is None else _control_hz(cs, period_s)
    finally:
        spin.stop()
        node.destroy_node()
        rclpy.shutdown()
        stop_all(procs)
    return results, tel


def _control_hz(status, period_s: float) -> float:
    """The control rate the controller achieved: its nominal period plus the median period error."""
    return 1.0 / (period_s + float(status.period_error_p50_ms) * 1e-3)


def _checkpoint_embodiment(model_dir: str) -> dict:
    import yaml

    path = Path(model_dir) / "embodiment.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no embodiment.yaml (not a TwinBrain checkpoint directory)")
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _checkpoint_lead(model_dir: str) -> float:
    """The checkpoint's ``processor.json`` ``chunk_lead_s`` (0 when absent), without importing torch."""
    path = Path(model_dir) / "processor.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return float(data.get("chunk_lead_s", 0.0))


def episode_list(tasks: list[str], episodes: int, seed: int) -> list[tuple[str, int]]:
    """Seeds ``seed .. seed+episodes-1``, each run with every task (so swap pairs share a scene)."""
    return [(task, seed + i) for i in range(episodes) for task in tasks]


def add_eval_sim_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain eval-sim``."""
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--tasks", default="touch_red_cube,touch_blue_cube", help="comma-separated tasks")
    p.add_argument("--episodes", type=int, default=25, help="seeds per task (each seed runs every task)")
    p.add_argument("--seed", type=int, default=FIRST_HELD_OUT_SEED,
                   help=f"first seed (default {FIRST_HELD_OUT_SEED}: training data uses 0..999)")  # fmt: skip
    p.add_argument("--mode", choices=("ros", "inprocess"), default="ros",
                   help="ros: the real graph over DDS (default); inprocess: same parts, no ROS")  # fmt: skip
    p.add_argument("--out", default="eval", help="directory for eval.json, joints.png, camera strip/gif")
    p.add_argument("--threads", type=int, default=0, help="policy CPU threads (0 = one per core)")
    p.add_argument("--chunk-lead-s", type=float, default=None,
                   help="execute chunks this much earlier than their observation, s "
                        "(default: the checkpoint's processor.json chunk_lead_s)")  # fmt: skip
    p.add_argument("--min-inference-rate-hz", type=float, default=None,
                   help="the policy node's re-planning floor (default: the node's, 4 Hz)")  # fmt: skip
    p.add_argument("--real-time-factor", type=float, default=1.0, help="sim seconds per wall second (ros)")
    p.add_argument("--settle-s", type=float, default=0.3, help="sim seconds run on after success")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")


def evaluate(a: argparse.Namespace, prefix: str = "eval-sim") -> tuple[dict[str, Any], int]:
    """Run the evaluation described by parsed arguments; returns (report, exit code)."""
    tasks = [t for t in a.tasks.split(",") if t]
    if a.episodes < 1 or not tasks:
        print(f"[{prefix}] need --episodes >= 1 and at least one task", file=sys.stderr)
        return {}, 2
    eps = episode_list(tasks, a.episodes, a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    if a.mode == "inprocess":
        results, tel = run_in_process(a.model, eps, settle_s=a.settle_s, num_threads=a.threads,
                                      progress=a.progress, chunk_lead_s=a.chunk_lead_s,
                                      min_inference_rate_hz=a.min_inference_rate_hz)  # fmt: skip
    else:
        results, tel = run_ros(a.model, eps, settle_s=a.settle_s, num_threads=a.threads,
                               real_time_factor=a.real_time_factor, log_dir=out / "logs",
                               progress=a.progress, chunk_lead_s=a.chunk_lead_s,
                               min_inference_rate_hz=a.min_inference_rate_hz)  # fmt: skip
    summary = summarize(results, tel, a.mode)
    summary["wall_s"] = time.monotonic() - t_start
    summary["model"] = str(a.model)
    summary["chunk_lead_s"] = a.chunk_lead_s if a.chunk_lead_s is not None else _checkpoint_lead(a.model)
    names = _checkpoint_embodiment(a.model)
    joint_names = [j["name"] for j in names["joints"]]
    first = results[0] if results else None
    title = (f"{first.task} seed {first.seed} ({'success' if first.success else 'failed'}): "
             "commanded vs executed joints") if first else ""  # fmt: skip
    plot = plot_joints(out / "joints.png", joint_names, tel, title)
    fps = float(names.get("rates", {}).get("camera_hz", 20.0))
    strip, gif = save_camera(out, tel.frames, fps)
    summary["artifacts"] = {"joints_png": str(plot) if plot else None,
                            "camera_strip_png": str(strip) if strip else None,
                            "camera_gif": str(gif) if gif else None}  # fmt: skip
    report = {"summary": summary, "episodes": [asdict(r) for r in results]}
    (out / "eval.json").write_text(json.dumps(report, indent=2, default=_json_default))
    return report, 0


# --------------------------------------------------------------------------------------------------
# twinbrain tune-lead: choose a checkpoint's chunk lead on validation scenes
# --------------------------------------------------------------------------------------------------
def lead_score(summary: dict[str, Any]) -> float:
    """What tune-lead maximises: mean of success rate and swap accuracy (success alone without pairs)."""
    swap = summary["language_swap_accuracy"]
    return summary["success_rate"] if swap is None else 0.5 * (summary["success_rate"] + swap)


def pick_lead(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best row by score; ties go to the smaller lead (the less the timing departs from the data)."""
    if not rows:
        raise ValueError("no leads were evaluated")
    return max(rows, key=lambda r: (r["score"], -r["chunk_lead_s"]))


def parse_leads(text: str) -> list[float]:
    """``"0,0.05,0.1"`` -> sorted unique seconds; raises ValueError naming a bad entry."""
    leads = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--leads: {item!r} is not a number of seconds") from None
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"--leads: {item!r} must be a finite lead >= 0 s")
        leads.append(value)
    if not leads:
        raise ValueError("--leads is empty")
    return sorted(set(leads))


def add_tune_lead_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain tune-lead``."""
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--leads", default="0,0.05,0.1,0.15,0.2", help="comma-separated chunk leads to try, s")
    p.add_argument("--tasks", default="touch_red_cube,touch_blue_cube", help="comma-separated tasks")
    p.add_argument("--episodes", type=int, default=40,
                   help="validation seeds per lead (each runs every task)")  # fmt: skip
    p.add_argument("--seed", type=int, default=800,
                   help="first validation seed; seeds must stay below the held-out test seeds "
                        f"(>= {FIRST_HELD_OUT_SEED}) and should be outside the training data "
                        "(make demo-train records 0-799)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="policy CPU threads (0 = one per core)")
    p.add_argument("--settle-s", type=float, default=0.3, help="sim seconds run on after success")
    p.add_argument("--write", action="store_true",
                   help="store the best lead in the checkpoint's processor.json")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")


def tune_lead_main(a: argparse.Namespace) -> int:
    """Entry point of ``twinbrain tune-lead``: in-process eval-sim per lead, a table, the best lead.

    The lead shifts when a chunk is executed (step ``k`` due at ``observation + k * step_dt - lead``);
    it does not change the model. Each lead runs the same validation scenes in process (sim time; a
    chunk reaches the controller after its measured inference time, as on the robot).
    """
    try:
        leads = parse_leads(a.leads)
    except ValueError as e:
        print(f"[tune-lead] {e}", file=sys.stderr)
        return 2
    tasks = [t for t in a.tasks.split(",") if t]
    if a.episodes < 1 or not tasks:
        print("[tune-lead] need --episodes >= 1 and at least one task", file=sys.stderr)
        return 2
    if a.seed < 0 or a.seed + a.episodes > FIRST_HELD_OUT_SEED:
        print(f"[tune-lead] seeds {a.seed}..{a.seed + a.episodes - 1} reach the held-out test seeds "
              f"(>= {FIRST_HELD_OUT_SEED}) that eval-sim and make demo report on: choose the lead on "
              "validation seeds below them", file=sys.stderr)  # fmt: skip
        return 2
    eps = episode_list(tasks, a.episodes, a.seed)
    rows = []
    for lead in leads:
        print(f"[tune-lead] chunk_lead_s={lead:.3f}: {len(eps)} episodes", file=sys.stderr)
        try:
            results, tel = run_in_process(a.model, eps, settle_s=a.settle_s, num_threads=a.threads,
                                          progress=a.progress, chunk_lead_s=lead)  # fmt: skip
        except ValueError as e:  # e.g. a lead beyond the chunk's span
            print(f"[tune-lead] {e}", file=sys.stderr)
            return 2
        s = summarize(results, tel, "inprocess")
        rows.append({"chunk_lead_s": lead, "episodes": s["episodes"], "success_rate": s["success_rate"],
                     "language_swap_accuracy": s["language_swap_accuracy"],
                     "wrong_object_rate": s["wrong_object_rate"],
                     "seam_jump_p95_rad": s["seam_jump_rad"]["p95"],
                     "infer_ms_p50": s["infer_ms"]["p50"], "score": lead_score(s)})  # fmt: skip
    best = pick_lead(rows)
    print(f"{'lead s':>7} {'success':>8} {'swap':>6} {'other obj':>9} {'seam p95':>9} {'score':>6}")
    for r in rows:
        swap = r["language_swap_accuracy"]
        other = r["wrong_object_rate"]
        swap_s = "n/a" if swap is None else f"{swap:.1%}"
        other_s = "n/a" if other is None else f"{other:.1%}"
        print(f"{r['chunk_lead_s']:>7.3f} {r['success_rate']:>8.1%} {swap_s:>6} "
              f"{other_s:>9} {r['seam_jump_p95_rad']:>9.3f} "
              f"{r['score']:>6.3f}{'  <- best' if r is best else ''}")  # fmt: skip
    seeds = f"seeds {a.seed}-{a.seed + a.episodes - 1}"
    print(f"tune-lead: best chunk_lead_s={best['chunk_lead_s']:.3f} on {seeds} x {','.join(tasks)}")
    if a.write:
        import dataclasses

        from twinbrain_ros.model.processing import ProcessorConfig

        cfg = ProcessorConfig.load(a.model)
        dataclasses.replace(cfg, chunk_lead_s=best["chunk_lead_s"]).save(a.model)
        path = Path(a.model) / "processor.json"
        print(f"tune-lead: wrote chunk_lead_s={best['chunk_lead_s']:.3f} to {path}")
    if a.json:
        print(json.dumps({"best": best, "rows": rows, "seeds": [a.seed, a.seed + a.episodes - 1],
                          "tasks": tasks, "written": bool(a.write)}, default=_json_default))  # fmt: skip
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o).__name__)


def eval_sim_main(a: argparse.Namespace) -> int:
    """Entry point of ``twinbrain eval-sim``."""
    report, rc = evaluate(a)
    if rc:
        return rc
    summary = report["summary"]
    print(format_table([], summary))
    print(summary_line(summary))
    arts = summary["artifacts"]
    print(f"plot: {arts['joints_png']}  camera: {arts['camera_strip_png']} {arts['camera_gif']}")
    if a.json:
        print(json.dumps(summary, default=_json_default))
    return 0
