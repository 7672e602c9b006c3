# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Teleoperation data: MCAP episodes (recording), LeRobot v3 datasets (training) and the converter.

Nothing here imports torch or rclpy at module level, so the recorder starts and the converter runs on a
machine without either.

Modules:
    mcap_episode: one rosbag2-compatible MCAP file per episode, written atomically, read back and
        recovered after a crash.
    lerobot_v3: a writer of the LeRobot v3.0 on-disk dataset format (pyarrow only).
    convert: MCAP episodes -> LeRobot v3 dataset, resampled on the fps grid with sync statistics.
    reader: read a LeRobot v3 dataset back as numpy arrays (the trainer's input).
    bench: recorder and converter throughput.
    cli: ``twinbrain record`` and ``twinbrain convert``.
"""
