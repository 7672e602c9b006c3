# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Receiving joint position commands in the three forms the controller can emit.

- ``joint_trajectory``: trajectory_msgs/JointTrajectory, the first point's positions, by name;
- ``float64_multi_array``: std_msgs/Float64MultiArray, contract joint order;
- ``joint_state``: sensor_msgs/JointState, positions by name (Isaac Sim's articulation convention).

Robots and simulators (the kinematic stand-in, the MuJoCo sim) subscribe through
:func:`subscribe_joint_commands` and get validated positions in contract order.

Usage:
    subscribe_joint_commands(node, "joint_trajectory", "joint_command", emb.joint_names,
                             on_command=lambda q: ..., on_reject=lambda reason: ...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from twinbrain_ros.core.validation import ValidationError

COMMAND_INTERFACES = ("joint_trajectory", "float64_multi_array", "joint_state")


def positions_by_name(names: Sequence[str], positions, joint_names: Sequence[str]) -> np.ndarray:
    """Positions reordered to ``joint_names``; raises ValidationError listing every problem."""
    pos = np.asarray(positions, dtype=np.float64)
    problems = []
    if len(names) != len(pos):
        problems.append(f"{len(names)} names but {len(pos)} positions")
    elif not np.all(np.isfinite(pos)):
        problems.append("non-finite positions")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        problems.append(f"missing joints {missing}")
    if problems:
        raise ValidationError(problems)
    return pos[[index[n] for n in joint_names]]


def subscribe_joint_commands(
    node,
    interface: str,
    topic: str,
    joint_names: Sequence[str],
    on_command: Callable[[np.ndarray], None],
    on_reject: Callable[[str], None],
    depth: int = 10,
):
    """Subscribe ``node`` to joint commands of type ``interface`` on ``topic``.

    ``on_command`` gets positions in ``joint_names`` order; ``on_reject`` the reason a message was
    refused.
    """
    names = list(joint_names)

    def deliver(msg_names, positions) -> None:
        try:
            on_command(positions_by_name(msg_names, positions, names))
        except ValidationError as e:
            on_reject(str(e))

    if interface == "joint_trajectory":
        from trajectory_msgs.msg import JointTrajectory

        def on_traj(m) -> None:
            if m.points:
                deliver(list(m.joint_names), m.points[0].positions)

        return node.create_subscription(JointTrajectory, topic, on_traj, depth)
    if interface == "float64_multi_array":
        from std_msgs.msg import Float64MultiArray

        return node.create_subscription(Float64MultiArray, topic, lambda m: deliver(names, m.data), depth)
    if interface == "joint_state":
        from sensor_msgs.msg import JointState

        return node.create_subscription(JointState, topic, lambda m: deliver(list(m.name), m.position), depth)
    raise ValueError(f"command interface '{interface}' is not one of {list(COMMAND_INTERFACES)}")
