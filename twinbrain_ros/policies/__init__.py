# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Policies the policy node can run, behind one interface (:class:`PolicyBackend`).

Importing this package never imports torch: model-backed policies are imported lazily by
:func:`load_policy`.

Usage:
    from twinbrain_ros.policies import load_policy
    policy = load_policy("scripted_sine", embodiment="so101")
"""

from twinbrain_ros.policies.base import (
    PolicyBackend,
    PolicyLoadError,
    available_policies,
    check_policy_contract,
    load_policy,
    register_policy,
)

__all__ = [
    "PolicyBackend",
    "PolicyLoadError",
    "available_policies",
    "check_policy_contract",
    "load_policy",
    "register_policy",
]
