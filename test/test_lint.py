# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Ruff (configured in pyproject.toml) passes on the package, tests, launch files and tools."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff not installed")
    r = subprocess.run(
        [ruff, "check", "twinbrain_ros", "test", "launch"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_core_imports_neither_ros_nor_torch():
    code = (
        "import sys, importlib, pkgutil, twinbrain_ros.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('twinbrain_ros.core.' + m.name)\n"
        "bad = [m for m in ('rclpy', 'torch') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
