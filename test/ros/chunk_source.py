# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""A stand-in policy for the controller tests: publishes a moving ActionChunk stream until killed.

Run as its own process (the test kills it with SIGKILL mid-chunk):
    python test/ros/chunk_source.py --rate 10 --amplitude 0.3
Every chunk samples ``mid + amplitude * sin(omega * t)`` (t in node-clock seconds) on the so101 joints,
16 steps of 50 ms starting now, ids increasing from 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import rclpy
from twinbrain_ros.msg import ActionChunk as ActionChunkMsg

from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.types import ActionChunk
from twinbrain_ros.ros.conversions import chunk_to_msg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--amplitude", type=float, default=0.3)
    ap.add_argument("--omega", type=float, default=2.0)
    ap.add_argument("--topic", default="action_chunk")
    a, ros_args = ap.parse_known_args()
    rclpy.init(args=ros_args)
    node = rclpy.create_node("chunk_source")
    pub = node.create_publisher(ActionChunkMsg, a.topic, 10)
    emb = load_embodiment("so101")
    mid = 0.5 * (emb.limits.lower + emb.limits.upper)
    k = 0
    try:
        while rclpy.ok():
            now = node.get_clock().now().nanoseconds * 1e-9
            times = now + 0.05 * np.arange(16)
            pos = mid + a.amplitude * np.sin(a.omega * times)[:, None] * np.ones(len(mid))
            k += 1
            pub.publish(chunk_to_msg(ActionChunk(emb.joint_names, pos, 0.05, now, now, k)))
            print(f"chunk {k} t0={now:.3f}", flush=True)
            time.sleep(1.0 / a.rate)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
