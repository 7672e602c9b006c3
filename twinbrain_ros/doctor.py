# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain doctor``: report what this environment can and cannot run, one line per check."""

from __future__ import annotations

import importlib
import os
import sys


def _check(label: str, fn, required: bool = True) -> bool:
    try:
        detail = fn()
        print(f"  ok       {label}: {detail}")
        return True
    except Exception as e:  # noqa: BLE001 - report any failure as a line
        print(f"  {'FAIL' if required else 'missing':<8} {label}: {type(e).__name__}: {e}")
        return False


def main() -> int:
    """Run the checks; exit code 1 if a required one fails."""
    print(f"twinbrain doctor (python {sys.version.split()[0]} at {sys.executable})")
    required = [
        ("numpy", lambda: importlib.import_module("numpy").__version__),
        ("rclpy", lambda: (importlib.import_module("rclpy"), "importable")[1]),
        ("messages", lambda: (importlib.import_module("twinbrain_ros.msg").ActionChunk, "built")[1]),
        (
            "embodiment so101",
            lambda: ", ".join(
                importlib.import_module("twinbrain_ros.core.embodiment").load_embodiment("so101").joint_names
            ),
        ),
    ]
    optional = [
        ("torch (extra: model)", lambda: importlib.import_module("torch").__version__),
        ("transformers (extra: model)", lambda: importlib.import_module("transformers").__version__),
        ("onnxruntime (extra: export)", lambda: importlib.import_module("onnxruntime").__version__),
        ("tensorrt (GPU machines only)", lambda: importlib.import_module("tensorrt").__version__),
        ("mujoco (extra: sim)", lambda: importlib.import_module("mujoco").__version__),
        ("MUJOCO_GL", lambda: os.environ.get("MUJOCO_GL") or "unset (set MUJOCO_GL=egl for headless)"),
        ("ROS_DOMAIN_ID", lambda: os.environ.get("ROS_DOMAIN_ID", "unset (0)")),
        (
            "FASTDDS_DEFAULT_PROFILES_FILE",
            lambda: (
                os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
                or "unset (camera images > 512 KB fall back to UDP; see config/fastdds_shm.xml)"
            ),
        ),
    ]
    results = [_check(n, f) for n, f in required]  # run every check, not just up to the first failure
    ok = all(results)
    print("optional:")
    for n, f in optional:
        _check(n, f, required=False)
    return 0 if ok else 1
