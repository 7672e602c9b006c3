# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""SpinThread: callbacks run in the background, and stop() always wakes and joins the thread
before the executor, node and context are torn down (even under a message flood)."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.ros


def _graph():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Int32

    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx)
    node = rclpy.create_node("spin_probe", context=ctx)
    got: list[int] = []
    node.create_subscription(Int32, "spin_test", lambda m: got.append(m.data), 1000)
    pub = node.create_publisher(Int32, "spin_test", 1000)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    return rclpy, ctx, node, pub, ex, got, Int32


def _flood(pub, msg_type, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        pub.publish(msg_type(data=i))
        i += 1
        time.sleep(0.0005)


def test_spin_thread_runs_callbacks_and_stops_under_load(ros_domain):
    from twinbrain_ros.ros.spinning import SpinThread

    for round_ in range(20):
        rclpy, ctx, node, pub, ex, got, Int32 = _graph()
        spin = SpinThread(ex)
        stop_flood = threading.Event()

        flooder = threading.Thread(target=_flood, args=(pub, Int32, stop_flood), daemon=True)
        flooder.start()
        end = time.monotonic() + 5.0
        while not got and time.monotonic() < end:
            time.sleep(0.005)
        assert got, f"round {round_}: no callback ran in 5 s"
        # stop while messages keep arriving: the thread must wake and finish promptly
        t0 = time.monotonic()
        assert spin.stop(timeout_s=5.0), f"round {round_}: spin thread still alive after 5 s"
        assert time.monotonic() - t0 < 2.0
        assert not spin.alive and spin.error is None
        n = len(got)
        time.sleep(0.05)
        assert len(got) == n, "callbacks ran after stop()"
        stop_flood.set()
        flooder.join(2.0)
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_stop_right_after_start_and_twice(ros_domain):
    from twinbrain_ros.ros.spinning import SpinThread

    rclpy, ctx, node, pub, ex, got, Int32 = _graph()
    spin = SpinThread(ex)
    assert spin.stop(timeout_s=5.0)
    assert spin.stop(timeout_s=1.0)  # idempotent
    node.destroy_node()
    rclpy.shutdown(context=ctx)


def test_callback_error_is_kept_and_the_thread_ends(ros_domain):
    from twinbrain_ros.ros.spinning import SpinThread

    rclpy, ctx, node, pub, ex, got, Int32 = _graph()

    def boom(_msg):
        raise ValueError("callback failed")

    node.create_subscription(Int32, "spin_boom", boom, 10)
    boom_pub = node.create_publisher(Int32, "spin_boom", 10)
    seen: list = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    try:
        spin = SpinThread(ex)
        end = time.monotonic() + 5.0
        while spin.alive and time.monotonic() < end:
            boom_pub.publish(Int32(data=1))
            time.sleep(0.01)
        assert not spin.alive
        assert isinstance(spin.error, ValueError) and "callback failed" in str(spin.error)
        assert seen and seen[0] is spin.error  # printed like any thread's uncaught error
        assert spin.stop(timeout_s=1.0)
    finally:
        threading.excepthook = old_hook
        node.destroy_node()
        rclpy.shutdown(context=ctx)
