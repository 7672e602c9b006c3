# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""ROS-free, torch-free core: numpy only.

Chunk buffering, interpolation, splicing, limits, normalisation, frame sync and the embodiment
contract live here so they can be unit-tested (and reused by the trainer and the sim) without ROS.
"""
