# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Shared fixtures: ROS isolation guard and a helper to start real node processes.

ROS tests (marker ``ros``) only run inside the loopback-only network namespace that
``tools/isolated.sh`` creates (``make test`` does this); elsewhere they are skipped, so DDS can
never reach a real interface.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_domain_counter = [0]


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TWINBRAIN_ISOLATED") == "1":
        return
    skip = pytest.mark.skip(reason="ROS test: run inside tools/isolated.sh (make test does)")
    for item in items:
        if "ros" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ros_domain(monkeypatch):
    """A ROS_DOMAIN_ID of this test's own (1-101), set for this process and its children."""
    base = int(os.environ.get("ROS_DOMAIN_ID", "1"))
    _domain_counter[0] += 1
    dom = (base + _domain_counter[0] * 7) % 100 + 1
    monkeypatch.setenv("ROS_DOMAIN_ID", str(dom))
    return dom


class NodeProcess:
    """A node running in its own process; stopped (SIGINT, then SIGKILL) at teardown."""

    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def stop(self) -> int | None:
        self.kill(signal.SIGINT)
        return self.proc.returncode


@pytest.fixture
def start_node(tmp_path, ros_domain):
    """start_node(module, name, params: dict | None, args=()) -> NodeProcess.

    Runs ``python -m <module> --ros-args -r __node:=<name> --params-file <yaml>`` with the test's
    domain id; stdout+stderr go to a log file shown on failure.
    """
    procs: list[NodeProcess] = []

    def _start(module: str, name: str, params: dict | None = None, args=(), env=None) -> NodeProcess:
        cmd = [sys.executable, "-m", module, *args, "--ros-args", "-r", f"__node:={name}"]
        if params:
            pfile = tmp_path / f"{name}_params.yaml"
            pfile.write_text(yaml.safe_dump({name: {"ros__parameters": params}}))
            cmd += ["--params-file", str(pfile)]
        log_path = tmp_path / f"{name}.log"
        full_env = dict(
            os.environ,
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        proc = subprocess.Popen(
            cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT)
        )
        np_ = NodeProcess(proc, log_path)
        procs.append(np_)
        return np_

    yield _start
    for p in procs:
        p.stop()
    for p in procs:
        if p.proc.returncode not in (0, None, -2, 130):
            print(f"--- log of pid {p.proc.pid} (rc {p.proc.returncode}) ---\n{p.log()[-4000:]}")


def wait_for(predicate, timeout: float = 10.0, period: float = 0.02, spin=None) -> bool:
    """Poll ``predicate`` (spinning ``spin()`` if given) until true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if spin is not None:
            spin()
        if predicate():
            return True
        time.sleep(period)
    return False
