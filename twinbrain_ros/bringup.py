# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Profiles -> node graph: the one description both ``policy.launch.py`` and ``twinbrain bringup`` use.

A profile is an ordinary ROS 2 parameters file in ``config/profiles/``. Its top-level keys are the
node names to start; each name is also the executable (``lib/twinbrain_ros/<name>``, or the module
``twinbrain_ros.nodes.<name>``); the values are the nodes' ``ros__parameters``. :func:`plan` turns a
profile plus launch arguments into a list of :class:`NodeLaunch`; the launch file maps each to a
``launch_ros.actions.Node`` and :func:`run` starts each as a process with ``--params-file``, so
both paths start exactly the same nodes with exactly the same parameters.

Usage:
    twinbrain bringup demo --namespace arm1
    nodes = plan(load_profile("robot"), model="models/demo-tiny", use_sim_time=True)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Executables this package installs, by node name.
EXECUTABLES = (
    "policy_node",
    "controller_node",
    "kinematic_robot_node",
    "sim_node",
    "recorder_node",
    "expert_node",
)


@dataclass(frozen=True)
class Profile:
    """A loaded profile: its path and the node -> parameters mapping."""

    name: str
    path: Path
    nodes: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class NodeLaunch:
    """One node to start: executable, name, namespace, parameters file and overrides."""

    executable: str
    name: str
    namespace: str
    params_file: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def ros_args(self) -> list[str]:
        """The ``--ros-args`` tail for starting this node as a process."""
        args = ["--ros-args", "-r", f"__node:={self.name}", "--params-file", self.params_file]
        if self.namespace:
            args += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        for k, v in self.overrides.items():
            args += ["-p", f"{k}:={_param_literal(v)}"]
        return args


def _param_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


SIMULATORS = ("mujoco", "gazebo", "isaac")


def profile_for(profile: str, sim: str = "") -> str:
    """The profile to start: ``sim_<sim>`` when a simulator is named, else ``profile``.

    Raises:
        ValueError: naming the allowed simulators if ``sim`` is not one of them.
    """
    if not sim:
        return profile
    if sim not in SIMULATORS:
        raise ValueError(f"sim '{sim}' is not one of {list(SIMULATORS)}")
    return f"sim_{sim}"


def profile_dirs() -> list[Path]:
    """Where profile names are looked up: the source tree, then the installed share directory."""
    dirs = [Path(__file__).resolve().parents[1] / "config" / "profiles"]
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("twinbrain_ros")) / "config" / "profiles")
    except Exception:  # noqa: BLE001 - not installed through ament
        pass
    return dirs


def load_profile(name_or_path: str) -> Profile:
    """Load a profile by name (``demo``) or path, validating that every key names a known node.

    Raises:
        FileNotFoundError: if no such profile exists.
        ValueError: naming the offending key if the file is not a valid profile.
    """
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.exists()):
        found = [d / f"{name_or_path}.yaml" for d in profile_dirs() if (d / f"{name_or_path}.yaml").exists()]
        if not found:
            raise FileNotFoundError(
                f"profile '{name_or_path}' not found in {[str(d) for d in profile_dirs()]}"
            )
        p = found[0]
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{p}: a profile must map node names to {{ros__parameters: ...}}")
    nodes = {}
    for key, val in data.items():
        if key not in EXECUTABLES:
            raise ValueError(f"{p}: '{key}' is not a twinbrain_ros node (known: {list(EXECUTABLES)})")
        if not isinstance(val, dict) or not isinstance(val.get("ros__parameters", {}), dict):
            raise ValueError(f"{p}: '{key}' must hold a 'ros__parameters' mapping")
        nodes[key] = dict(val.get("ros__parameters") or {})
    return Profile(name=p.stem, path=p.resolve(), nodes=nodes)


def plan(
    profile: Profile,
    *,
    model: str = "",
    namespace: str = "",
    use_sim_time: bool = False,
    embodiment: str = "",
) -> list[NodeLaunch]:
    """The nodes a profile starts, with the launch arguments applied as parameter overrides.

    ``embodiment`` (a contract name or YAML path) replaces the profile's contract in every node, so
    that one switch moves the whole graph to another robot or camera set (e.g. ``so101_sim_wrist``).
    """
    out = []
    for name in profile.nodes:
        overrides: dict[str, Any] = {"use_sim_time": bool(use_sim_time)}
        if embodiment:
            overrides["embodiment"] = str(embodiment)
        if model and name == "policy_node":
            overrides["model_dir"] = model
        out.append(
            NodeLaunch(
                executable=name,
                name=name,
                namespace=namespace,
                params_file=str(profile.path),
                overrides=overrides,
            )
        )
    return out


def command(node: NodeLaunch, python: str = sys.executable) -> list[str]:
    """Process command line for one node (module form, so it also runs from a source checkout)."""
    return [python, "-m", f"twinbrain_ros.nodes.{node.executable}", *node.ros_args()]


def run_background(
    nodes: list[NodeLaunch], log_dir: Path | None = None, env: dict[str, str] | None = None
) -> list[subprocess.Popen]:
    """Start every node as a process and return at once (stop them with :func:`stop_all`)."""
    procs = []
    full_env = dict(os.environ, **(env or {}))
    for n in nodes:
        out = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"{n.name}.log", "w")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(command(n), env=full_env, stdout=out, stderr=subprocess.STDOUT if out else None)
        )
    return procs


def run(
    nodes: list[NodeLaunch],
    duration: float | None = None,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start every node as a process; stop all on Ctrl-C, after ``duration`` s, or when one exits.

    Returns:
        0 if all nodes ran until stopped, else the first non-zero exit code.
    """
    procs = list(zip(nodes, run_background(nodes, log_dir, env), strict=True))
    rc = 0
    start = time.monotonic()
    try:
        while True:
            for n, p in procs:
                if p.poll() is not None:
                    print(f"[bringup] {n.name} exited with code {p.returncode}", file=sys.stderr)
                    rc = p.returncode or 1
                    raise StopIteration
            if duration is not None and time.monotonic() - start > duration:
                break
            time.sleep(0.1)
    except (KeyboardInterrupt, StopIteration):
        pass
    finally:
        stop_all([p for _, p in procs])
    return rc


def stop_all(procs: list[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGINT every live process, then SIGKILL what has not exited after ``timeout`` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
