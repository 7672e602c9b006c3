# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""`twinbrain record-sim`: seeded scripted-expert episodes recorded over ROS 2, converted to LeRobot v3."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]


def test_record_sim_then_convert_only_successful_episodes(tmp_path, ros_domain, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    from twinbrain_ros.data.convert import ConvertOptions, convert_episodes
    from twinbrain_ros.data.sim_record import record_sim

    out = tmp_path / "episodes"
    res = record_sim(
        str(out),
        2,
        ["touch_red_cube", "touch_blue_cube"],
        seed=7,
        real_time_factor=3.0,
        log_dir=tmp_path / "logs",
    )
    assert [r["task"] for r in res] == ["touch_red_cube", "touch_blue_cube"]
    assert all(r["success"] and r["stopped"] for r in res), res
    files = sorted(out.glob("episode_*.mcap"))
    assert len(files) == 2 and not list(out.glob("*.partial.mcap"))
    ds = tmp_path / "dataset"
    rep = convert_episodes(
        [str(out)],
        str(ds),
        ConvertOptions(embodiment="so101_sim", action_topic="teleop/joint_command", only_success=True),
    )
    info = json.loads((ds / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["total_tasks"] == 2
    assert info["total_frames"] > 20
    assert rep is not None
