# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""`twinbrain record-sim`: seeded scripted-expert episodes recorded over ROS 2, converted to LeRobot v3."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]


def test_episode_plan_cycles_tasks_or_pairs_them_on_one_scene():
    from twinbrain_ros.data.sim_record import episode_plan

    tasks = ["a", "b"]
    assert episode_plan(5, tasks, 10) == [(10, "a"), (11, "b"), (12, "a"), (13, "b"), (14, "a")]
    paired = [(10, "a"), (10, "b"), (11, "a"), (11, "b"), (12, "a")]
    assert episode_plan(5, tasks, 10, each_task=True) == paired


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
        each_task=True,
    )
    assert [r["task"] for r in res] == ["touch_red_cube", "touch_blue_cube"]
    assert [r["seed"] for r in res] == [7, 7]  # one scene, both instructions
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


def test_record_sim_expert_rate(tmp_path, ros_domain, monkeypatch):
    """--expert-rate-hz reaches the expert: 50 Hz commands on 100 Hz joint-state ticks come every 20 ms."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    import numpy as np

    from twinbrain_ros.data.mcap_episode import iter_messages
    from twinbrain_ros.data.sim_record import record_sim

    out = tmp_path / "episodes"
    res = record_sim(str(out), 2, ["touch_blue_cube"], seed=3, real_time_factor=3.0,
                     log_dir=tmp_path / "logs", expert_rate_hz=50.0)  # fmt: skip
    assert all(r["success"] for r in res), res
    # Both episodes, the first included: record-sim starts an episode only once the recorder hears
    # every recorded topic, so discovery right after start-up cannot cut its first commands.
    for path in sorted(out.glob("episode_*.mcap")):
        stamps = [
            msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            for _topic, _t, msg in iter_messages(path, ["/teleop/joint_command"])
        ]
        dt = np.diff(stamps)
        assert len(stamps) > 20 and abs(float(np.median(dt)) - 0.02) < 2e-3, (path.name, np.round(dt[:20], 4))


def test_record_sim_recovery_demo(tmp_path, ros_domain, monkeypatch):
    """--expert-miss-prob reaches the expert node: the recorded commands close the jaws twice (a missed
    grasp, then the re-grasp) and the episode still ends with the cube lifted."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    import numpy as np

    from twinbrain_ros.data.mcap_episode import iter_messages
    from twinbrain_ros.data.sim_record import record_sim

    out = tmp_path / "episodes"
    res = record_sim(str(out), 1, ["lift_red_cube"], seed=101, real_time_factor=3.0, max_episode_s=14.0,
                     log_dir=tmp_path / "logs", expert_miss_prob=1.0)  # fmt: skip
    assert res[0]["success"], res
    (path,) = sorted(out.glob("episode_*.mcap"))
    msgs = iter_messages(path, ["/teleop/joint_command"])
    grip = np.array([m.points[0].positions[5] for _topic, _t, m in msgs])
    closed = grip < 0.0  # open is 0.6-0.85 rad, closed -0.17
    closes = int(np.sum(closed[1:] & ~closed[:-1]))
    assert closes == 2, np.round(grip[::10], 2)
    log = (tmp_path / "logs" / "expert_node.log").read_text()
    assert "aimed off the object on purpose" in log and "attempt 2" in log
    with pytest.raises(ValueError, match="expert_miss_prob"):
        record_sim(str(tmp_path / "x"), 1, ["lift_red_cube"], expert_miss_prob=2.0)


def test_record_sim_wrist_contract_records_both_cameras(tmp_path, ros_domain, monkeypatch):
    """--embodiment so101_sim_wrist reaches every node: the sim renders the wrist view, the recorder too."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    from twinbrain_ros.data.convert import ConvertOptions, convert_episodes
    from twinbrain_ros.data.mcap_episode import iter_messages
    from twinbrain_ros.data.sim_record import record_sim

    out = tmp_path / "episodes"
    res = record_sim(str(out), 1, ["touch_red_cube"], seed=11, real_time_factor=3.0,
                     log_dir=tmp_path / "logs", embodiment="so101_sim_wrist")  # fmt: skip
    assert res[0]["success"], res
    (path,) = sorted(out.glob("episode_*.mcap"))
    counts = {"/camera/front/image_raw": 0, "/camera/wrist/image_raw": 0}
    for topic, _t, msg in iter_messages(path, list(counts)):
        counts[topic] += 1
        assert (msg.width, msg.height) == (224, 224)
    assert min(counts.values()) > 10, counts
    ds = tmp_path / "dataset"
    convert_episodes([str(out)], str(ds), ConvertOptions(embodiment="so101_sim_wrist",
                                                         action_topic="teleop/joint_command"))  # fmt: skip
    info = json.loads((ds / "meta" / "info.json").read_text())
    assert info["robot_type"] == "so101_sim_wrist"
    assert {"observation.images.front", "observation.images.wrist"} <= set(info["features"])
    with pytest.raises(Exception, match="nope"):
        record_sim(str(tmp_path / "x"), 1, ["touch_red_cube"], embodiment="nope")
