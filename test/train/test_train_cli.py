# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of ``twinbrain train`` (train_main): new run on a v3 dataset, resume, refusals."""

from __future__ import annotations

import json

import pytest

from twinbrain_ros.train.cli import build_parser, resolve_config, train_main

COMMON = ["--backend", "torch", "--precision", "fp32", "--no-progress", "--batch-size", "4", "--threads", "1"]


def run(argv) -> int:
    return train_main(build_parser().parse_args([str(a) for a in argv]))


def test_new_run_resume_and_refusals(tiny_init, v3_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    # --resume auto with --init starts a new run when the output directory has no checkpoint yet.
    rc = run(["--init", tiny_init, "--resume", "auto", "--dataset", v3_dataset, "--output-dir", out,
              "--steps", 3, "--save-every", 2, "--warmup-steps", 1, "--binary-gripper",
              "--action-mode", "min_max", *COMMON])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002", "step-00000003"]
    stats = json.loads((ckpts / "step-00000003" / "norm_stats.json").read_text())["stats"]
    assert stats["action"]["modes"] == ["min_max"] * 5 + ["identity"]
    assert stats["state"]["modes"] == ["q01_q99"] * 6
    assert "done: step 3" in capsys.readouterr().out

    # Resume: settings come from the run; only --steps is given.
    assert run(["--output-dir", out, "--resume", "auto", "--steps", 4, *COMMON]) == 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["max_steps"] == 4 and cfg["binary_gripper"] is True and cfg["datasets"] == [str(v3_dataset)]
    state = json.loads((ckpts / "step-00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["micro_step"] == 4
    capsys.readouterr()

    # Other data, or a run-defining change, is refused with a clear message (exit 2).
    assert run(["--output-dir", out, "--resume", "auto", "--dataset", "synthetic:4x24", *COMMON]) == 2
    assert "refusing to resume" in capsys.readouterr().err
    assert run(["--output-dir", out, "--resume", "auto", "--lr-expert", 0.5, *COMMON]) == 2
    assert "lr_expert" in capsys.readouterr().err


def test_argument_errors_exit_2(tmp_path, capsys, tiny_init):
    assert run(["--dataset", "synthetic:2x10", "--output-dir", tmp_path, *COMMON]) == 2
    assert "--init" in capsys.readouterr().err
    assert run(["--output-dir", tmp_path, "--resume", "auto", *COMMON]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert run(["--init", tiny_init, "--dataset", "synthetic:2x10", "--output-dir", tmp_path,
                "--camera", "front=top", *COMMON]) == 2  # fmt: skip
    assert "'top'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="CONTRACT=DATASET"):
        resolve_config(build_parser().parse_args(["--camera", "front", "--output-dir", "x"]))
