# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain demo`` / ``make demo``: the trained TwinBrain policy drives the simulated SO-101 over ROS 2.

Default: the bundled checkpoint (``models/so101-sim-touch``, trained by ``make demo-train`` on
episodes the recorder captured from the scripted expert) runs in the real graph: ``sim_node``
(MuJoCo, sim time), ``policy_node`` (``Policy.load`` of the checkpoint) and ``controller_node``,
each its own process over DDS. ``twinbrain eval-sim`` resets held-out seeds (>= 1000; training
used 0..999) with both touch instructions per scene and ends with one line::

    demo: episodes=N success_rate=X language_swap_accuracy=Y p50_infer_ms=Z control_hz=W

followed by where the joint plot and the camera strip / GIF went.

``--wiring``: the earlier graph check without a model: the kinematic stand-in robot and the
deterministic scripted wiring policy (``scripted_sine``) through the same controller.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "models/so101-sim-touch"


def main(a) -> int:
    """``twinbrain demo``: the sim evaluation (default) or the wiring check (``--wiring``)."""
    if getattr(a, "wiring", False):
        return wiring(a)
    return sim_demo(a)


def sim_demo(a) -> int:
    """Evaluate the bundled checkpoint in the ROS graph; print the summary line and the artifacts."""
    import argparse

    from twinbrain_ros.evaluation import add_eval_sim_arguments, evaluate, format_table, summary_line

    model = Path(a.model)
    if not (model / "model.safetensors").is_file():
        print(f"[demo] no checkpoint at {model}: run 'make demo-train' to build it", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser()
    add_eval_sim_arguments(p)
    args = p.parse_args(["--model", str(model), "--tasks", a.tasks, "--episodes", str(a.episodes),
                         "--out", str(a.out), "--threads", str(a.threads)])  # fmt: skip
    print(f"[demo] {model}: {a.episodes} held-out seeds x {a.tasks} over ROS 2 "
          "(sim_node + policy_node + controller_node)", file=sys.stderr)  # fmt: skip
    report, rc = evaluate(args, prefix="demo")
    if rc:
        return rc
    summary = report["summary"]
    print(format_table([], summary))
    print(summary_line(summary, prefix="demo"))
    arts = summary["artifacts"]
    print(f"plot: {arts['joints_png']}")
    print(f"camera: {arts['camera_strip_png']} {arts['camera_gif']}")
    print(f"report: {Path(a.out) / 'eval.json'}")
    return 0


def wiring(a) -> int:
    """Run the demo profile for ``a.duration`` seconds; print the summary line; 0 if healthy."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from twinbrain_ros.bringup import load_profile, plan, run_background, stop_all
    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.msg import ActionChunk, ControllerStatus, PolicyStatus
    from twinbrain_ros.ros.conversions import time_to_sec
    from twinbrain_ros.ros.spinning import SpinThread

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile("demo")
    emb = load_embodiment(profile.nodes["controller_node"].get("embodiment", "so101"))
    names = emb.joint_names
    print(
        f"[demo] profile '{profile.name}': {list(profile.nodes)}; policy = scripted wiring policy "
        "(scripted_sine), not a trained model",
        file=sys.stderr,
    )
    procs = run_background(plan(profile), log_dir=out / "logs")

    rclpy.init()
    node = rclpy.create_node("demo_monitor")
    cmd_t, cmd_q, js_t, js_q, chunks = [], [], [], [], []
    pstat: list[PolicyStatus] = []
    cstat: list[ControllerStatus] = []

    def on_cmd(m: JointTrajectory) -> None:
        if m.points:
            idx = [list(m.joint_names).index(n) for n in names]
            cmd_t.append(time.monotonic())
            cmd_q.append(np.asarray(m.points[0].positions)[idx])

    def on_js(m: JointState) -> None:
        idx = [list(m.name).index(n) for n in names]
        js_t.append(time_to_sec(m.header.stamp))
        js_q.append(np.asarray(m.position)[idx])

    node.create_subscription(JointTrajectory, "joint_command", on_cmd, 50)
    node.create_subscription(JointState, "joint_states", on_js, 50)
    node.create_subscription(ActionChunk, "action_chunk", chunks.append, 10)
    node.create_subscription(PolicyStatus, "policy_node/status", pstat.append, 10)
    node.create_subscription(ControllerStatus, "controller_node/status", cstat.append, 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = SpinThread(ex)
    t_wall0 = time.time()
    try:
        end = time.monotonic() + a.duration
        while time.monotonic() < end:
            if any(p.poll() is not None for p in procs):
                print("[demo] a node exited early; see logs in " + str(out / "logs"), file=sys.stderr)
                break
            time.sleep(0.1)
    finally:
        spin.stop()
        node.destroy_node()
        rclpy.shutdown()
        stop_all(procs)

    ok = bool(chunks) and len(cmd_q) > 10
    control_hz = (len(cmd_t) - 1) / (cmd_t[-1] - cmd_t[0]) if len(cmd_t) > 2 else 0.0
    p50 = float(pstat[-1].latency_p50_ms) if pstat else float("nan")
    cq = np.asarray(cmd_q) if cmd_q else np.zeros((0, len(names)))
    # Largest per-cycle command change relative to what the velocity limit allows in one cycle:
    # <= 1 means no jump at chunk seams (or anywhere).
    if len(cq) > 2 and control_hz > 0:
        step = np.abs(np.diff(cq, axis=0)).max(axis=0)
        jump_ratio = float((step / (emb.limits.max_velocity / control_hz)).max())
    else:
        jump_ratio = float("nan")
    png = out / "joints.png"
    _plot(
        png,
        names,
        np.asarray(cmd_t) - (cmd_t[0] if cmd_t else 0),
        cq,
        np.asarray(js_t) - (js_t[0] if js_t else 0),
        np.asarray(js_q) if js_q else cq[:0],
    )
    print(
        f"demo-wiring: policy=scripted_sine chunks={len(chunks)} p50_infer_ms={p50:.2f} "
        f"control_hz={control_hz:.1f} max_step_vs_vel_limit={jump_ratio:.2f} "
        f"controller_mode={cstat[-1].mode if cstat else 'none'} wall_s={time.time() - t_wall0:.1f}"
    )
    print(f"plot: {png}  logs: {out / 'logs'}")
    return 0 if ok else 1


def _plot(path: Path, names, ct, cq, jt, jq) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.6 * len(names)), sharex=True)
    for j, ax in enumerate(np.atleast_1d(axes)):
        if len(cq):
            ax.plot(ct, cq[:, j], lw=1.0, label="commanded (controller)")
        if len(jq):
            ax.plot(jt, jq[:, j], lw=1.0, ls="--", label="executed (joint_states)")
        ax.set_ylabel(names[j], fontsize=8)
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("time [s]")
    fig.suptitle("twinbrain demo: commanded vs executed joint positions")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
