# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""twinbrain_ros: TwinBrainVLA policies on ROS 2.

The generated message modules (``twinbrain_ros.msg`` / ``twinbrain_ros.srv``) are installed by the
ament build into the install prefix; ``extend_path`` lets a source checkout on ``PYTHONPATH`` still
resolve them from there.
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
