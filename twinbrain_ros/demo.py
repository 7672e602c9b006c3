# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain demo`` / ``make demo``: run the node graph headless and summarise it in one line.

Today the graph is the ``demo`` profile: the kinematic stand-in robot (joint states + camera), the
policy node running the deterministic **scripted wiring policy** (``scripted_sine``, not a learned
model), and the 200 Hz controller. The trained TwinBrain policy on the MuJoCo SO-101 replaces the
first two when the simulation and training work lands. Writes ``<out>/joints.png`` (commanded vs
executed joints) and the node logs.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np


def main(a) -> int:
    """Run the demo profile for ``a.duration`` seconds; print the summary line; 0 if healthy."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from twinbrain_ros.bringup import load_profile, plan, run_background, stop_all
    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.msg import ActionChunk, ControllerStatus, PolicyStatus
    from twinbrain_ros.ros.conversions import time_to_sec

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
    threading.Thread(target=ex.spin, daemon=True).start()
    t_wall0 = time.time()
    try:
        end = time.monotonic() + a.duration
        while time.monotonic() < end:
            if any(p.poll() is not None for p in procs):
                print("[demo] a node exited early; see logs in " + str(out / "logs"), file=sys.stderr)
                break
            time.sleep(0.1)
    finally:
        ex.shutdown()
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
        f"demo: policy=scripted_sine(wiring) chunks={len(chunks)} p50_infer_ms={p50:.2f} "
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
