# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""ROS glue shared by the nodes: parameters, QoS profiles and message conversions."""
