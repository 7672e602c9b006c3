# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""eval-sim's metrics and its in-process closed loop (policy + chunk controller + MuJoCo, sim time)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinbrain_ros.evaluation import EpisodeResult, Telemetry, format_table, language_swap, summarize


def _result(task, seed, success, nearest=None):
    target = task.split("_", 1)[1]
    return EpisodeResult(task, seed, f"{task} instruction", success, 1.0 if success else None, 0.05, 5.0,
                         3, target if nearest else None, nearest, 0.01 if nearest else None)  # fmt: skip


def test_language_swap_counts_seeds_where_both_instructions_succeed():
    rs = [
        _result("touch_red_cube", 1, True), _result("touch_blue_cube", 1, True),
        _result("touch_red_cube", 2, True), _result("touch_blue_cube", 2, False),
        _result("touch_red_cube", 3, False),  # no blue partner: not a pair
    ]  # fmt: skip
    assert language_swap(rs) == (0.5, 2)
    assert language_swap(rs[4:]) == (None, 0)


def test_wrong_object_rate_counts_episodes_that_went_for_another_object():
    rs = [
        _result("touch_red_cube", 1, False, nearest="blue_cube"),
        _result("touch_blue_cube", 1, True, nearest="blue_cube"),
        _result("touch_red_cube", 2, False, nearest="red_cube"),  # a miss, not a wrong object
        _result("touch_blue_cube", 2, False, nearest="green_cube"),
    ]
    s = summarize(rs, Telemetry(), "inprocess")
    assert s["wrong_object_rate"] == pytest.approx(0.5)
    assert "other than the named one: 50.0%" in format_table(rs, s)
    # The ROS mode does not track it: no number rather than a made-up one.
    ros = summarize([_result("touch_red_cube", 1, True)], Telemetry(), "ros")
    assert ros["wrong_object_rate"] is None
    assert "other than the named one" not in format_table([_result("touch_red_cube", 1, True)], ros)


def test_inprocess_episode_reports_the_object_the_tool_point_reached(tmp_path):
    from twinbrain_ros.evaluation import run_in_process
    from twinbrain_ros.model.convert import make_tiny_checkpoint
    from twinbrain_ros.sim.tasks import load_task_suite

    model = make_tiny_checkpoint(tmp_path / "tiny", embodiment="so101_sim", seed=0)
    results, tel = run_in_process(str(model), [("touch_red_cube", 7)], num_threads=1, progress=False)
    (r,) = results
    assert r.target_object == "red_cube"
    assert r.nearest_object in load_task_suite("so101_tasks").object_names
    # the closest approach over the episode is no farther than where the episode ended
    assert 0.0 <= r.nearest_distance_m <= 1.0
    if r.nearest_object == "red_cube":
        assert r.nearest_distance_m <= r.final_distance_m + 1e-9
    assert not math.isnan(tel.control_hz) and tel.infer_ms and np.isfinite(tel.infer_ms).all()
    # Chunks follow the policy node's schedule: its 4 Hz re-planning floor binds (a chunk spans 0.75 s),
    # not the contract's nominal policy_hz of 10. The first few inferences, before a latency has been
    # measured, run at the 20 Hz maximum: up to ~3 extra chunks. (Even a random tiny model sometimes
    # touches the cube, which ends the episode early: compare with its own length.)
    def expected(rate_hz, r):
        return rate_hz * r.episode_s - 1 <= r.chunks <= rate_hz * r.episode_s + 4

    assert expected(4.0, r) and not expected(10.0, r), (r.chunks, r.episode_s)
    (fast,), _ = run_in_process(str(model), [("touch_red_cube", 7)], num_threads=1, progress=False,
                                min_inference_rate_hz=10.0)  # fmt: skip
    assert expected(10.0, fast), (fast.chunks, fast.episode_s)


def test_inprocess_episode_feeds_every_contract_camera(tmp_path):
    """A wrist-camera contract: both views reach the policy and the first episode's frames show both."""
    from twinbrain_ros.evaluation import run_in_process
    from twinbrain_ros.model.convert import make_tiny_checkpoint
    from twinbrain_ros.policy import Policy

    model = make_tiny_checkpoint(tmp_path / "tiny", embodiment="so101_sim_wrist", seed=0)
    assert Policy.load(model).embodiment.camera_names == ("front", "wrist")
    (r,), tel = run_in_process(str(model), [("touch_blue_cube", 3)], num_threads=1, progress=False)
    assert r.chunks > 0 and tel.frames
    frame = tel.frames[0]
    assert frame.shape == (224, 448, 3)  # front | wrist
    front, wrist = frame[:, :224], frame[:, 224:]
    assert front.std() > 5 and wrist.std() > 5 and np.abs(front.astype(int) - wrist).mean() > 10


# --------------------------------------------------------------------------------------------------
# tune-lead
# --------------------------------------------------------------------------------------------------
def test_parse_leads_pick_lead_and_score():
    from twinbrain_ros.evaluation import lead_score, parse_leads, pick_lead

    assert parse_leads("0.1, 0,0.1,0.05") == [0.0, 0.05, 0.1]
    for bad in ("", "0,x", "-0.05", "nan"):
        with pytest.raises(ValueError, match="--leads"):
            parse_leads(bad)
    assert lead_score({"success_rate": 0.9, "language_swap_accuracy": 0.7}) == pytest.approx(0.8)
    assert lead_score({"success_rate": 0.9, "language_swap_accuracy": None}) == 0.9
    rows = [{"chunk_lead_s": 0.0, "score": 0.7}, {"chunk_lead_s": 0.1, "score": 0.8},
            {"chunk_lead_s": 0.05, "score": 0.8}]  # fmt: skip
    assert pick_lead(rows)["chunk_lead_s"] == 0.05  # a tie goes to the smaller lead
    with pytest.raises(ValueError):
        pick_lead([])


def _tune_args(model, **kw):
    import argparse

    from twinbrain_ros.evaluation import add_tune_lead_arguments

    p = argparse.ArgumentParser()
    add_tune_lead_arguments(p)
    argv = ["--model", str(model), "--no-progress"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return p.parse_args(argv)


def test_tune_lead_refuses_the_held_out_test_seeds(tmp_path, capsys):
    from twinbrain_ros.evaluation import tune_lead_main

    assert tune_lead_main(_tune_args(tmp_path, seed=990, episodes=20)) == 2
    assert "reach the held-out test seeds (>= 1000)" in capsys.readouterr().err
    assert tune_lead_main(_tune_args(tmp_path, leads="0,abc")) == 2
    assert "'abc' is not a number" in capsys.readouterr().err


def test_tune_lead_runs_each_lead_and_writes_the_best(tmp_path, capsys):
    import json

    from twinbrain_ros.evaluation import tune_lead_main
    from twinbrain_ros.model.convert import make_tiny_checkpoint
    from twinbrain_ros.model.processing import ProcessorConfig

    model = make_tiny_checkpoint(tmp_path / "tiny", embodiment="so101_sim", seed=0)
    rc = tune_lead_main(_tune_args(model, leads="0.1,0.05", tasks="touch_red_cube", episodes=1,
                                   seed=900, threads=1, write=True, json=True))  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["chunk_lead_s"] for r in out["rows"]] == [0.05, 0.1]
    assert all(r["episodes"] == 1 and r["language_swap_accuracy"] is None for r in out["rows"])
    # The best row (by score, ties to the smaller lead) is what processor.json now holds.
    best = max(out["rows"], key=lambda r: (r["score"], -r["chunk_lead_s"]))
    assert out["best"] == best and out["written"] is True
    assert ProcessorConfig.load(model).chunk_lead_s == best["chunk_lead_s"]
    # A lead past the chunk's span is refused before any episode runs.
    assert tune_lead_main(_tune_args(model, leads="5", episodes=1, seed=900)) == 2
