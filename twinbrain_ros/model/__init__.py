# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""TwinBrainVLA model: configuration, dual-brain core, state encoder, action expert, top-level model.

Needs torch and transformers (the ``model`` extra); nothing here imports ROS. transformers is imported
lazily, when a brain is built.

Usage:
    from twinbrain_ros.model import TwinBrainModel, preset
    model = TwinBrainModel(preset("tiny"))
"""

from twinbrain_ros.model.configuration import TwinBrainConfig, preset

__all__ = ["TwinBrainConfig", "TwinBrainModel", "preset"]


def __getattr__(name: str):
    # Lazy: importing the package for its config must not pay for the model module.
    if name == "TwinBrainModel":
        from twinbrain_ros.model.modeling import TwinBrainModel

        return TwinBrainModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
