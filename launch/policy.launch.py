# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Start the twinbrain_ros node graph described by a profile in config/profiles/.

    ros2 launch twinbrain_ros policy.launch.py profile:=robot model:=/path/to/models/NAME \
        namespace:=arm1 use_sim_time:=false embodiment:=so101

The node list and parameters come from the profile through twinbrain_ros.bringup.plan(), the same
function `twinbrain bringup PROFILE` uses, so both always start the same graph.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from twinbrain_ros.bringup import load_profile, plan, profile_for


def _nodes(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    nodes = plan(
        load_profile(profile_for(get("profile"), get("sim"))),
        model=get("model"),
        namespace=get("namespace"),
        use_sim_time=get("use_sim_time").lower() in ("1", "true", "yes"),
        embodiment=get("embodiment"),
    )
    return [
        Node(
            package="twinbrain_ros",
            executable=n.executable,
            name=n.name,
            namespace=n.namespace,
            parameters=[n.params_file, n.overrides],
            output="screen",
            emulate_tty=True,
        )
        for n in nodes
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "profile",
                default_value="robot",
                description="Profile name in config/profiles (or a YAML path).",
            ),
            DeclareLaunchArgument(
                "sim", default_value="", description="mujoco | gazebo | isaac: use the profile sim_<sim>."
            ),
            DeclareLaunchArgument(
                "model", default_value="", description="Checkpoint directory for the policy."
            ),
            DeclareLaunchArgument("namespace", default_value="", description="Namespace for every node."),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock time."),
            DeclareLaunchArgument(
                "embodiment",
                default_value="",
                description="Embodiment contract (name in config/embodiments or a YAML path) for every node; "
                "empty keeps the profile's.",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
