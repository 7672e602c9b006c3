# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""`twinbrain eval-grounding`: scores at the episode start vs later, instruction effect, verdict."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from twinbrain_ros.train.grounding import (
    PhaseScore,
    add_eval_grounding_arguments,
    eval_grounding_main,
    phase_score,
    verdict,
)


def test_phase_score_perfect_mean_and_wrong():
    rng = np.random.default_rng(0)
    state = rng.normal(size=(50, 6))
    true = state + rng.normal(scale=0.3, size=(50, 6))
    perfect = phase_score(true, true, state)
    assert perfect.r2 == pytest.approx(1.0) and perfect.mae_rad == 0.0 and perfect.n == 50
    mean_only = phase_score(state + (true - state).mean(axis=0), true, state)
    assert mean_only.r2 == pytest.approx(0.0, abs=1e-9)  # the mean displacement explains nothing
    assert phase_score(state, true, state).r2 < mean_only.r2  # standing still is worse than the mean
    assert phase_score(true[::-1], true, state).r2 < 0


def test_verdict_names_the_state_copier():
    good, bad = PhaseScore(0.9, 0.05, 0.5, 10), PhaseScore(0.02, 0.3, 0.9, 10)
    assert verdict(good, good, 0.3).startswith("grounded")
    assert verdict(good, good, None).startswith("grounded")  # one instruction: nothing to swap
    assert verdict(good, good, 0.001).startswith("ignores the instruction")
    text = verdict(bad, good, 0.004)
    assert text.startswith("copies the state") and "start R^2 0.02" in text and "0.004 rad" in text
    assert verdict(bad, bad, 0.0).startswith("not fitted")


def test_cli_runs_on_a_dataset(tiny_init, v3_dataset, capsys):
    p = argparse.ArgumentParser()
    add_eval_grounding_arguments(p)
    args = p.parse_args(["--model", str(tiny_init), "--dataset", str(v3_dataset), "--episodes", "3",
                         "--later-s", "0.3", "--json"])  # fmt: skip
    assert eval_grounding_main(args) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["episodes"] == 3 and report["start"]["n"] == 3 and report["later"]["n"] == 3
    assert np.isfinite(report["start"]["mae_rad"]) and np.isfinite(report["later"]["r2"])
    assert "eval-grounding: " in out and "episode start" in out
    args.episodes = 0
    assert eval_grounding_main(args) == 2
