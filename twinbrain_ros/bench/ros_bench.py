# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain bench ros``: DDS image latency between two processes, and controller timing under load.

1. Images: a publisher process sends 640x480 rgb8 frames at 30 Hz, stamped at send time; this
   process receives them and measures one-way latency (receive time - stamp; same clock) and drops.
   Uses the shared-memory Fast DDS profile that ``tools/isolated.sh`` sets.
2. Controller: starts the ``bench`` profile (kinematic robot + a policy node whose scripted policy
   burns CPU for most of each inference + the 200 Hz controller) and reads the controller's own loop
   period error statistics from ``/controller_node/status`` plus the inter-arrival of its commands.

Run inside the loopback-only namespace (``make bench`` does): never on a real interface.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from twinbrain_ros.bench.report import machine, percentiles, print_json, print_table


def bench_images(duration: float) -> dict:
    """One-way image latency p50/p99 (ms) and drops between two processes."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from twinbrain_ros.ros.conversions import time_to_sec
    from twinbrain_ros.ros.spinning import SpinThread

    count = max(30, int(duration * 30))
    rclpy.init()
    node = rclpy.create_node("bench_image_subscriber")
    lat: list[float] = []
    seen: set[int] = set()

    def on_image(msg: Image) -> None:
        lat.append((time.time() - time_to_sec(msg.header.stamp)) * 1e3)
        # touch the payload as a real subscriber would (zero-copy view)
        np.frombuffer(msg.data, dtype=np.uint8)
        seen.add(int(msg.header.frame_id))

    node.create_subscription(
        Image, "bench/image", on_image, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    )
    # Spin in a thread with one executor (not spin_once in a loop, which rebuilds the wait set each
    # call and adds ~1 ms) while this thread waits for the publisher process.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = SpinThread(executor)
    pub = subprocess.Popen(
        [sys.executable, "-m", "twinbrain_ros.bench.image_publisher", "--count", str(count)]
    )
    try:
        pub.wait(timeout=count / 30.0 + 30.0)
        time.sleep(0.3)
    finally:
        if pub.poll() is None:
            pub.kill()
        spinner.stop()
        node.destroy_node()
        rclpy.shutdown()
    # The first frames can be lost to discovery on a reliable topic only if the publisher starts early;
    # it waits for us, so every missing index is a real drop.
    drops = count - len(seen)
    return {
        "frames": count,
        "received": len(seen),
        "drops": drops,
        **{f"latency_ms_{k}": v for k, v in percentiles(lat).items()},
    }


def bench_controller(duration: float, log_dir: Path) -> dict:
    """Controller loop period error p50/p99 (ms) at 200 Hz while the policy node is busy."""
    import rclpy
    from trajectory_msgs.msg import JointTrajectory

    from twinbrain_ros.bringup import load_profile, plan, run_background, stop_all
    from twinbrain_ros.msg import ControllerStatus

    procs = run_background(plan(load_profile("bench")), log_dir=log_dir)
    rclpy.init()
    node = rclpy.create_node("bench_controller_monitor")
    arrivals: list[float] = []
    status: list[ControllerStatus] = []
    node.create_subscription(
        JointTrajectory, "joint_command", lambda m: arrivals.append(time.monotonic()), 50
    )
    node.create_subscription(ControllerStatus, "controller_node/status", status.append, 10)
    try:
        # Wait until the controller is tracking chunks, then measure.
        end = time.monotonic() + 30.0
        while time.monotonic() < end and not (status and status[-1].mode == "tracking"):
            rclpy.spin_once(node, timeout_sec=0.05)
        arrivals.clear()
        status.clear()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.01)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        stop_all(procs)
    gaps = np.diff(np.asarray(arrivals)) * 1e3 if len(arrivals) > 2 else np.array([])
    last = status[-1] if status else None
    return {
        "commands": len(arrivals),
        "command_rate_hz": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 2 else 0.0,
        "period_error_ms_p50": float(last.period_error_p50_ms) if last else float("nan"),
        "period_error_ms_p99": float(last.period_error_p99_ms) if last else float("nan"),
        "rx_interarrival_error_ms_p50": percentiles(np.abs(gaps - 5.0))["p50"],
        "rx_interarrival_error_ms_p99": percentiles(np.abs(gaps - 5.0))["p99"],
        "controller_mode": last.mode if last else "no status",
    }


def main(a) -> int:
    """Run both parts; print the table and, with --json, the JSON line."""
    img = bench_images(a.duration)
    ctl = bench_controller(a.duration, Path("out/bench_ros"))
    rows = [
        ("image latency p50 (640x480 rgb8, 30 Hz)", f"{img['latency_ms_p50']:.2f} ms", "<= 2 ms"),
        ("image latency p99", f"{img['latency_ms_p99']:.2f} ms", ""),
        ("image drops", f"{img['drops']}/{img['frames']}", "0"),
        ("controller period error p50 (200 Hz, policy busy)", f"{ctl['period_error_ms_p50']:.3f} ms", ""),
        ("controller period error p99", f"{ctl['period_error_ms_p99']:.3f} ms", "<= 2 ms"),
        ("command rate seen by a subscriber", f"{ctl['command_rate_hz']:.1f} Hz", "200 Hz"),
        ("command inter-arrival error p99 (subscriber)", f"{ctl['rx_interarrival_error_ms_p99']:.3f} ms", ""),
    ]
    print_table("twinbrain bench ros", rows)
    ok = img["drops"] == 0 and img["latency_ms_p50"] <= 2.0 and ctl["period_error_ms_p99"] <= 2.0
    if a.json:
        print_json(
            {"bench": "ros", "machine": machine(), "images": img, "controller": ctl, "targets_met": ok}
        )
    return 0
