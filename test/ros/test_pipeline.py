# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The whole product loop, short: record over ROS -> convert -> train -> load -> closed loop over ROS.

2 scripted-expert episodes recorded by the recorder node in MuJoCo, converted to LeRobot v3,
20 training steps from the committed tiny checkpoint, resumed for 5 more, loaded through
``Policy.load`` and run for one episode in the real graph (sim_node + policy_node + controller_node
as processes over DDS) by ``twinbrain eval-sim``. Each artifact is checked on the way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _train_args(**kw) -> argparse.Namespace:
    from twinbrain_ros.train.cli import build_parser

    argv = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        else:
            argv += [flag, str(v)]
    return build_parser().parse_args(argv)


def test_record_convert_train_resume_load_and_close_the_loop(tmp_path, ros_domain, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    from twinbrain_ros.data.convert import ConvertOptions, convert_episodes
    from twinbrain_ros.data.sim_record import record_sim

    # 1. Record: the recorder node writes one MCAP per episode, marked successful by the sim.
    eps = tmp_path / "episodes"
    rec = record_sim(str(eps), 2, ["touch_red_cube", "touch_blue_cube"], seed=3, real_time_factor=2.0,
                     log_dir=tmp_path / "rec_logs")  # fmt: skip
    assert all(r["success"] and r["stopped"] for r in rec), rec
    assert len(sorted(eps.glob("episode_*.mcap"))) == 2

    # 2. Convert: a LeRobot v3 dataset that records its contract.
    ds = tmp_path / "dataset"
    convert_episodes([str(eps)], str(ds), ConvertOptions(embodiment="so101_sim", only_success=True))
    info = json.loads((ds / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["total_frames"] > 20
    assert json.loads((ds / "meta" / "twinbrain.json").read_text())["embodiment"]["name"] == "so101_sim"

    # 3. Train 20 steps from the committed tiny checkpoint.
    from twinbrain_ros.model.checkpoint import load_checkpoint
    from twinbrain_ros.train.cli import train_main
    from twinbrain_ros.train.trainer import read_trainer_state

    run = tmp_path / "run"
    common = {"batch_size": 4, "lr_brain": 1e-4, "lr_expert": 1e-3, "warmup_steps": 2, "image_size": 128,
              "save_every": 10, "no_progress": True, "log_every": 10}  # fmt: skip
    args = _train_args(init=REPO / "models" / "demo-tiny", dataset=ds, output_dir=run, steps=20, **common)
    assert train_main(args) == 0
    ck20 = run / "checkpoints" / "step-00000020"
    files = ("model.safetensors", "config.json", "norm_stats.json", "embodiment.yaml",
             "optimizer.safetensors")
    for name in files:
        assert (ck20 / name).is_file(), name
    st20 = read_trainer_state(ck20)
    assert st20["step"] == 20
    ckpt = load_checkpoint(ck20)
    # The trained checkpoint is for the contract the data was recorded with (the sim's camera).
    assert ckpt.embodiment.name == "so101_sim"
    init = load_checkpoint(REPO / "models" / "demo-tiny")
    left_init = {k: v for k, v in init.model.state_dict().items() if k.startswith("brains.left.")}
    left_now = ckpt.model.state_dict()
    assert left_init and all(bool((left_now[k] == v).all()) for k, v in left_init.items())

    # 4. Resume: the same run continues from step 20 with its optimiser state.
    args = _train_args(output_dir=run, resume="auto", steps=25, save_every=5, no_progress=True)
    assert train_main(args) == 0
    st25 = read_trainer_state(run / "checkpoints" / "step-00000025")
    assert st25["step"] == 25
    assert st25["train_config"]["max_steps"] == 25
    assert st25["dataset_fingerprint"] == st20["dataset_fingerprint"]

    # 5. Load through the one entry point and infer.
    from twinbrain_ros.policy import Policy, fake_observation

    policy = Policy.load(run / "checkpoints" / "step-00000025")
    chunk = policy.infer(fake_observation(policy.embodiment), seed=0)
    assert chunk.positions.shape == (16, 6) and np.isfinite(chunk.positions).all()
    policy.close()

    # 6. One closed-loop episode over ROS: sim + policy node (this checkpoint) + controller.
    from twinbrain_ros.evaluation import add_eval_sim_arguments, eval_sim_main

    p = argparse.ArgumentParser()
    add_eval_sim_arguments(p)
    out = tmp_path / "eval"
    a = p.parse_args(["--model", str(run / "checkpoints" / "step-00000025"), "--tasks", "touch_red_cube",
                      "--episodes", "1", "--out", str(out), "--threads", "1", "--no-progress"])  # fmt: skip
    assert eval_sim_main(a) == 0
    report = json.loads((out / "eval.json").read_text())
    (ep,) = report["episodes"]
    assert ep["task"] == "touch_red_cube" and ep["seed"] == 1000
    assert ep["chunks"] >= 3, ep  # the policy node drove the episode with fresh chunks
    s = report["summary"]
    assert s["infer_ms"]["n"] >= 3 and s["infer_ms"]["p50"] > 0
    assert s["control_hz"] > 150
    assert s["command_max_velocity_fraction"] <= 1.0 + 1e-6  # the controller kept every command in limits
    assert (out / "joints.png").stat().st_size > 10_000
    assert (out / "camera_strip.png").is_file() and (out / "camera.gif").is_file()


def test_eval_sim_over_ros_runs_a_wrist_camera_checkpoint(tmp_path, ros_domain, monkeypatch):
    """eval-sim puts every node on the checkpoint's contract: a two-camera policy gets both views."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    from twinbrain_ros.evaluation import add_eval_sim_arguments, eval_sim_main
    from twinbrain_ros.model.convert import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "tiny", embodiment="so101_sim_wrist", seed=0)
    p = argparse.ArgumentParser()
    add_eval_sim_arguments(p)
    out = tmp_path / "eval"
    a = p.parse_args(["--model", str(model), "--tasks", "touch_blue_cube", "--episodes", "1",
                      "--out", str(out), "--threads", "1", "--no-progress"])  # fmt: skip
    assert eval_sim_main(a) == 0
    (ep,) = json.loads((out / "eval.json").read_text())["episodes"]
    # The policy node syncs every contract camera before it infers: chunks mean the wrist view arrived.
    assert ep["chunks"] >= 3, ep
