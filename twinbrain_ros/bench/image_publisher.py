# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Publisher half of the image-latency benchmark: rgb8 frames at a fixed rate, stamped at send time.

Usage (inside tools/isolated.sh): python -m twinbrain_ros.bench.image_publisher --count 300
"""

from __future__ import annotations

import argparse
import struct
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message

from twinbrain_ros.ros.conversions import sec_to_time


def main() -> None:
    """Publish ``--count`` frames at ``--rate`` Hz, after waiting for a subscriber."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", default="bench/image")
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    a = ap.parse_args()
    rclpy.init()
    from sensor_msgs.msg import Image

    node = rclpy.create_node("bench_image_publisher")
    pub = node.create_publisher(Image, a.topic, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    msg = Image(height=a.height, width=a.width, encoding="rgb8", step=a.width * 3)
    frame = np.random.default_rng(0).integers(0, 255, (a.height, a.width, 3), dtype=np.uint8)
    msg.data = frame.tobytes()
    # Stand in for a C++ camera driver, whose message conversion costs next to nothing: serialise the
    # frame once and patch the stamp and sequence number into the CDR bytes for every send, so the
    # measured latency is transport + the subscriber's own deserialisation, not Python-side packing.
    msg.header.frame_id = f"{0:08d}"
    template = bytearray(serialize_message(msg))
    seq_at = template.index(b"00000000")
    end = time.monotonic() + 20.0
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)  # let discovery settle on both sides
    period = 1.0 / a.rate
    t_next = time.monotonic()
    for i in range(a.count):
        t_next += period
        stamp = sec_to_time(time.time())
        # CDR: 4-byte encapsulation header, then header.stamp.sec (int32) and .nanosec (uint32), LE.
        struct.pack_into("<iI", template, 4, stamp.sec, stamp.nanosec)
        template[seq_at : seq_at + 8] = b"%08d" % i
        pub.publish(bytes(template))
        time.sleep(max(0.0, t_next - time.monotonic()))
    time.sleep(0.5)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
