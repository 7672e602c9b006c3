# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Thin ROS 2 nodes: parameters -> wiring -> convert -> delegate to core/ and policies."""
