# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Named QoS profiles for every topic of the node graph, and why each is what it is.

=================  ===========  ===============  =====  =============================================
topic              reliability  durability       depth  why
=================  ===========  ===============  =====  =============================================
camera images      best effort  volatile         1      only the newest frame matters; a best-effort
                                                        reader also matches best-effort publishers
                                                        (``SensorDataQoS`` camera drivers), which a
                                                        reliable reader would not. With the shared-
                                                        memory Fast DDS profile (config/fastdds_shm.xml)
                                                        local frames are not lost; over fragmented UDP
                                                        reliable would add retransmission delay to a
                                                        frame that is already stale.
joint_states       reliable     volatile         5      small and frequent; matches the default QoS of
                                                        joint_state_broadcaster and robot drivers; a
                                                        short queue absorbs a callback hiccup without
                                                        ever handing the policy old state.
instruction        reliable     transient local  1      a late-joining (or restarted) policy node gets
                                                        the current instruction.
action_chunk       reliable     volatile         2      every chunk matters to the controller; an old
                                                        chunk is useless to a late joiner, hence volatile.
joint_trajectory   reliable     volatile         2      as action_chunk; matches joint_trajectory_
                                                        controller's default subscription.
~/status           reliable     volatile         10     health telemetry for tools and tests.
=================  ===========  ===============  =====  =============================================

Reader/writer compatibility: a reliable reader does not match a best-effort writer, and a
transient-local reader does not match a volatile writer. Consumers of ``action_chunk`` should use
:func:`chunk_qos` (or anything reliable/volatile); publishers of ``instruction`` should use
:func:`instruction_qos` so the latch works.

Usage:
    node.create_subscription(Image, topic, cb, camera_qos())
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def _profile(reliability: ReliabilityPolicy, depth: int,
             durability: DurabilityPolicy = DurabilityPolicy.VOLATILE) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=durability)


def camera_qos() -> QoSProfile:
    """Camera images: best effort, keep last 1, volatile."""
    return _profile(ReliabilityPolicy.BEST_EFFORT, 1)


def joint_state_qos() -> QoSProfile:
    """Joint states: reliable, keep last 5, volatile."""
    return _profile(ReliabilityPolicy.RELIABLE, 5)


def instruction_qos() -> QoSProfile:
    """Task instruction: reliable, keep last 1, transient local (latched)."""
    return _profile(ReliabilityPolicy.RELIABLE, 1, DurabilityPolicy.TRANSIENT_LOCAL)


def chunk_qos() -> QoSProfile:
    """Action chunks: reliable, keep last 2, volatile."""
    return _profile(ReliabilityPolicy.RELIABLE, 2)


def trajectory_qos() -> QoSProfile:
    """JointTrajectory output: reliable, keep last 2, volatile."""
    return _profile(ReliabilityPolicy.RELIABLE, 2)


def status_qos() -> QoSProfile:
    """Status topics: reliable, keep last 10, volatile."""
    return _profile(ReliabilityPolicy.RELIABLE, 10)
