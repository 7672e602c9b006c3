# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""ROS-free MuJoCo simulation of the SO-101 arm: scene, task suites, environment and scripted expert.

Nothing here imports rclpy or torch; ``twinbrain_ros.nodes.sim_node`` and ``expert_node`` wrap it.
Importing a submodule imports ``mujoco``; set ``MUJOCO_GL=egl`` first for headless rendering.

Usage:
    from twinbrain_ros.sim.env import SimEnv
    from twinbrain_ros.sim.expert import ScriptedExpert, run_episode
"""
