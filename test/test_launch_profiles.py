# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""policy.launch.py and `twinbrain bringup` must describe the same graph from the same profile.

`launch`/`launch_ros` are not installable on our machines, so unless they are importable this test
installs minimal stand-ins that record what the launch file asks for (the real API's names and
call shapes), evaluates generate_launch_description(), and compares the recorded nodes with
twinbrain_ros.bringup.plan() for every shipped profile.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

from twinbrain_ros.bringup import (
    EXECUTABLES,
    SIMULATORS,
    command,
    load_profile,
    plan,
    profile_dirs,
    profile_for,
)

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (ROOT / "config" / "profiles").glob("*.yaml"))


def _install_fake_launch(monkeypatch):
    class LaunchDescription(list):
        pass

    class DeclareLaunchArgument:
        def __init__(self, name, default_value="", description=""):
            self.name, self.default_value, self.description = name, default_value, description

    class OpaqueFunction:
        def __init__(self, function):
            self.function = function

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    class Node:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    mods = {
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
    }
    mods["launch"].LaunchDescription = LaunchDescription
    mods["launch.actions"].DeclareLaunchArgument = DeclareLaunchArgument
    mods["launch.actions"].OpaqueFunction = OpaqueFunction
    mods["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    mods["launch_ros.actions"].Node = Node
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)


def _evaluate_launch(monkeypatch, args: dict[str, str]) -> list[dict]:
    if importlib.util.find_spec("launch_ros") is None:
        _install_fake_launch(monkeypatch)
    spec = importlib.util.spec_from_file_location("policy_launch", ROOT / "launch" / "policy.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    entities = list(getattr(ld, "entities", ld))
    declared = {e.name: e.default_value for e in entities if hasattr(e, "default_value")}
    opaque = [e for e in entities if hasattr(e, "function")][0]
    launch_configurations = {k: (v if isinstance(v, str) else "") for k, v in declared.items()}
    launch_configurations.update(args)
    ctx = types.SimpleNamespace(launch_configurations=launch_configurations)
    return [n.kwargs for n in opaque.function(ctx)]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    "args",
    [{}, {"namespace": "arm1", "use_sim_time": "true", "model": "models/x"}]
    + [{"embodiment": "so101_sim_wrist"}]
    + [{"sim": sim, "use_sim_time": "true"} for sim in SIMULATORS],
)
def test_launch_file_and_bringup_start_the_same_graph(monkeypatch, profile, args):
    launched = _evaluate_launch(monkeypatch, {"profile": profile, **args})
    planned = plan(
        load_profile(profile_for(profile, args.get("sim", ""))),
        model=args.get("model", ""),
        namespace=args.get("namespace", ""),
        use_sim_time=args.get("use_sim_time") == "true",
        embodiment=args.get("embodiment", ""),
    )
    if "embodiment" in args:  # one switch moves every node to the contract
        assert all(n["parameters"][1]["embodiment"] == args["embodiment"] for n in launched)
    assert [n["executable"] for n in launched] == [p.executable for p in planned]
    assert [n["name"] for n in launched] == [p.name for p in planned]
    for n, p in zip(launched, planned, strict=True):
        assert n["package"] == "twinbrain_ros"
        assert n["namespace"] == p.namespace
        assert n["parameters"] == [p.params_file, p.overrides]
        # bringup passes the same file and overrides on the command line
        cmd = command(p)
        assert cmd[cmd.index("--params-file") + 1] == p.params_file
        for k, v in p.overrides.items():
            assert f"{k}:={str(v).lower() if isinstance(v, bool) else v}" in cmd


def test_profiles_exist_and_name_known_nodes():
    assert {"demo", "robot"} <= set(PROFILES)
    for name in PROFILES:
        prof = load_profile(name)
        assert set(prof.nodes) <= set(EXECUTABLES)


def test_every_node_in_profiles_is_installed_by_cmake():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    # The node executables are installed by one foreach over their names (shebang rewritten).
    loop = re.search(r"foreach\(node ([^)]*)\)\s*twinbrain_install_script\(\$\{node\} lib/", cmake)
    assert loop, "CMakeLists.txt no longer installs the nodes with foreach(node ...)"
    installed = set(loop.group(1).split())
    for name in PROFILES:
        for node in load_profile(name).nodes:
            assert node in installed, f"{node} is not installed under lib/twinbrain_ros"
            assert (ROOT / "scripts" / node).exists()


def test_bad_profile_is_refused_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("not_a_node:\n  ros__parameters: {}\n")
    with pytest.raises(ValueError, match="not_a_node"):
        load_profile(str(bad))
    with pytest.raises(FileNotFoundError):
        load_profile("no_such_profile")
    assert profile_dirs()[0] == ROOT / "config" / "profiles"


def test_sim_argument_selects_the_simulator_profile():
    assert {f"sim_{s}" for s in SIMULATORS} <= set(PROFILES)
    assert profile_for("robot", "") == "robot"
    assert profile_for("robot", "gazebo") == "sim_gazebo"
    with pytest.raises(ValueError, match="webots"):
        profile_for("robot", "webots")
