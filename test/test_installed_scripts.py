# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The programs colcon installs run with the interpreter they were built for, without an activated env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PREFIX = Path(sys.prefix)
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NODES = sorted(p.name for p in SCRIPTS.iterdir() if p.name != "twinbrain")  # the CLI goes to bin/


def _installed(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not installed (the package was not built into this environment)")
    return path


def _assert_names_this_interpreter(script: Path) -> None:
    first = script.read_text().splitlines()[0]
    assert first.startswith("#!") and Path(first[2:]).resolve() == Path(sys.executable).resolve(), first


def _bare_env() -> dict[str, str]:
    """No activated environment: system PATH only, no PYTHONPATH, no VIRTUAL_ENV."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_twinbrain_cli_runs_without_activating_the_environment(tmp_path):
    cli = _installed(PREFIX / "bin" / "twinbrain")
    _assert_names_this_interpreter(cli)
    # make-tiny --help imports torch through the CLI: it fails under any interpreter but this one.
    out = subprocess.run([str(cli), "make-tiny", "--help"], cwd=tmp_path, env=_bare_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--smooth-positions" in out.stdout


@pytest.mark.parametrize("node", NODES)
def test_node_executables_name_this_interpreter(node):
    script = _installed(PREFIX / "lib" / "twinbrain_ros" / node)
    _assert_names_this_interpreter(script)
    assert os.access(script, os.X_OK)
