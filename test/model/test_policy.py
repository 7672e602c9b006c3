# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of Policy: end-to-end inference on tiny checkpoints, determinism, timing, boundary validation."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from twinbrain_ros.core.embodiment import load_embodiment, parse_embodiment
from twinbrain_ros.core.types import Observation
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.model.checkpoint import load_checkpoint
from twinbrain_ros.model.convert import make_tiny_checkpoint
from twinbrain_ros.policies.base import PolicyBackend, check_policy_contract, load_policy
from twinbrain_ros.policy import RUNNERS, TIMING_KEYS, Policy, TorchRunner, fake_observation

EMB = load_embodiment("so101")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    return {
        "native": make_tiny_checkpoint(root / "native", embodiment=EMB, seed=0),
        "reference": make_tiny_checkpoint(root / "reference", embodiment=EMB, mode="reference", seed=1),
        "qwen2_5": make_tiny_checkpoint(root / "qwen2_5", embodiment=EMB, family="qwen2_5_vl", seed=2),
    }


@pytest.fixture(scope="module")
def policy(tiny_dirs):
    return Policy.load(tiny_dirs["native"])


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["native", "reference", "qwen2_5"])
def test_infer_end_to_end(tiny_dirs, variant):
    policy = Policy.load(tiny_dirs[variant])
    assert isinstance(policy, PolicyBackend) and check_policy_contract(policy, EMB) == []
    obs = fake_observation(EMB, stamp=12.5)
    chunk = policy.infer(obs, seed=0)
    assert chunk.positions.shape == (16, 6) and chunk.positions.dtype == np.float64
    assert chunk.joint_names == EMB.joint_names and chunk.step_dt == EMB.action.step_dt == policy.step_dt
    assert chunk.t0 == chunk.obs_stamp == 12.5 and chunk.model_id == variant == policy.model_id
    assert np.isfinite(chunk.positions).all()
    # Placeholder statistics are min_max over the joint limits, and min_max outputs are clipped to them.
    assert (chunk.positions >= EMB.limits.lower - 1e-9).all() and (
        chunk.positions <= EMB.limits.upper + 1e-9
    ).all()
    assert set(chunk.timing_ms) == set(TIMING_KEYS) and all(v >= 0 for v in chunk.timing_ms.values())
    parts = sum(chunk.timing_ms[k] for k in ("preprocess", "left", "right", "expert", "postprocess"))
    assert parts <= chunk.timing_ms["total"] + 1e-6 and chunk.inference_ms == chunk.timing_ms["total"]
    assert policy.infer(obs, seed=0).chunk_id == chunk.chunk_id + 1


def test_chunk_lead_from_checkpoint_and_override(tiny_dirs, tmp_path):
    import shutil

    from twinbrain_ros.model.processing import ProcessorConfig

    obs = fake_observation(EMB, stamp=12.5)
    base = Policy.load(tiny_dirs["native"]).infer(obs, seed=0)
    lead_dir = tmp_path / "lead"
    shutil.copytree(tiny_dirs["native"], lead_dir)
    cfg = ProcessorConfig.load(lead_dir)
    dataclasses.replace(cfg, chunk_lead_s=0.1).save(lead_dir)
    policy = Policy.load(lead_dir)
    assert policy.chunk_lead_s == 0.1
    chunk = policy.infer(obs, seed=0)
    # Only the timing moves: same targets, step 0 due 0.1 s before the observation, same obs stamp.
    np.testing.assert_array_equal(chunk.positions, base.positions)
    assert chunk.obs_stamp == 12.5 and chunk.t0 == pytest.approx(12.4)
    assert Policy.load(lead_dir, chunk_lead_s=0.0).infer(obs, seed=0).t0 == 12.5
    assert Policy.load(tiny_dirs["native"], chunk_lead_s=0.05).infer(obs, seed=0).t0 == pytest.approx(12.45)
    span = (policy.horizon - 1) * policy.step_dt
    with pytest.raises(ValueError, match="chunk_lead_s must be in \\[0, "):
        Policy.load(lead_dir, chunk_lead_s=span)
    with pytest.raises(ValueError, match="chunk_lead_s"):
        Policy.load(lead_dir, chunk_lead_s=-0.1)


def test_committed_demo_checkpoint_loads_and_is_reproducible(tmp_path):
    demo = Path(__file__).resolve().parents[2] / "models" / "demo-tiny"
    if not (demo / "model.safetensors").is_file():
        pytest.skip("models/demo-tiny not generated (twinbrain make-tiny --out models/demo-tiny)")
    chunk = Policy.load(demo).infer(fake_observation(EMB), seed=0)
    assert chunk.positions.shape == (16, 6) and chunk.model_id == "demo-tiny"
    # The committed config is what make-tiny writes today (regenerate it when the model code changes).
    # Weights are compared by loading only: random init may differ across torch versions.
    fresh = make_tiny_checkpoint(tmp_path / "demo-tiny", embodiment="so101")
    assert (fresh / "config.json").read_text() == (demo / "config.json").read_text()


def test_runner_matches_model_sample_actions_exactly(tiny_dirs):
    ckpt = load_checkpoint(tiny_dirs["native"])
    policy = Policy.load(tiny_dirs["native"])
    batch = policy.processor.preprocess([fake_observation(EMB)])
    noise = torch.randn(1, 16, 6, generator=torch.Generator().manual_seed(0))
    actions = policy.runner.infer(batch, noise.numpy())
    timing = policy.runner.last_timings
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    torch.testing.assert_close(
        torch.from_numpy(actions), ckpt.model.sample_actions(tensors, noise=noise), rtol=0, atol=0
    )
    assert set(timing) == {"left", "right", "expert"}


def test_determinism_seed_noise_and_reset(tiny_dirs, policy):
    obs = fake_observation(EMB)
    a, b = policy.infer(obs, seed=7), policy.infer(obs, seed=7)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, policy.infer(obs, seed=8).positions)
    noise = np.random.default_rng(7).standard_normal((1, 16, 6), dtype=np.float32)
    np.testing.assert_array_equal(policy.infer(obs, noise=noise[0]).positions, a.positions)
    # Without a seed: a reproducible stream from the load-time seed, restarted by reset().
    fresh = Policy.load(tiny_dirs["native"], seed=3)
    first, second = fresh.infer(obs), fresh.infer(obs)
    assert not np.array_equal(first.positions, second.positions)
    fresh.reset()
    np.testing.assert_array_equal(fresh.infer(obs).positions, first.positions)
    np.testing.assert_array_equal(
        Policy.load(tiny_dirs["native"], seed=3).infer(obs).positions, first.positions
    )
    with pytest.raises(ValueError, match="noise must be finite with shape"):
        policy.infer(obs, noise=np.zeros((16, 5)))


def test_bf16_on_cpu_runs_close_to_fp32(tiny_dirs, policy):
    obs = fake_observation(EMB)
    bf16 = Policy.load(tiny_dirs["native"], dtype="bfloat16")
    a, b = bf16.infer(obs, seed=0).positions, policy.infer(obs, seed=0).positions
    assert np.isfinite(a).all() and np.abs(a - b).max() < 0.5


def test_load_policy_registry_and_backends(tiny_dirs):
    policy = load_policy("twinbrain", embodiment="so101", model_dir=str(tiny_dirs["native"]))
    assert isinstance(policy, Policy) and policy.horizon == 16
    assert "torch" in RUNNERS and isinstance(policy.runner, TorchRunner)
    with pytest.raises(ValueError, match="unknown backend 'jax'; available: \\[.*'torch'"):
        Policy.load(tiny_dirs["native"], backend="jax")
    assert policy.warmup(1)[0] > 0


def test_exported_backends_resolve_lazily(tiny_dirs):
    runners = pytest.importorskip("twinbrain_ros.export.runners")
    assert "onnxruntime" in runners.BACKENDS
    # The backend is found; without an export under <model_dir>/export the loader names the fix.
    with pytest.raises(ValueError, match="holds 0 exports"):
        Policy.load(tiny_dirs["native"], backend="onnxruntime")


# --------------------------------------------------------------------------------------------------
# Boundary validation
# --------------------------------------------------------------------------------------------------
def test_bad_observation_one_error_listing_every_problem(tiny_dirs, tmp_path):
    data = EMB.to_dict()
    data["cameras"].append({"name": "wrist", "topic": "cam/wrist", "width": 320, "height": 240})
    two = parse_embodiment(data)
    path = make_tiny_checkpoint(tmp_path / "two", embodiment=two)
    policy = Policy.load(path)
    obs = Observation(
        images={"wrist": np.zeros((240, 320, 4), dtype=np.float32)},  # front missing; wrist RGBA float
        state=np.array([0.0, np.nan, 0.0, 0.0, 0.0]),  # 5 values, one NaN
        joint_names=tuple(reversed(two.joint_names)),
        instruction="   ",
        stamp=float("inf"),
    )
    with pytest.raises(ValidationError) as info:
        policy.infer(obs)
    problems = info.value.problems
    expected = [
        "missing camera 'front' (expected cameras ['front', 'wrist'])",
        "image 'wrist' has shape (240, 320, 4), expected (240, 320, 3) (H, W, RGB)",
        "image 'wrist' has dtype float32, expected uint8",
        "state has shape (5,), expected (6,)",
        "state has non-finite values at indices [1]",
        "joint_names ['gripper', 'wrist_roll'",
        "instruction must be a non-empty string",
        "stamp must be a finite number",
    ]
    assert len(problems) == len(expected)
    for want, got in zip(expected, problems, strict=True):
        assert got.startswith(want), (want, got)
    with pytest.raises(ValidationError, match="expected an Observation, got dict"):
        policy.check_observation({"images": {}})
    good = fake_observation(two)
    policy.check_observation(good)
    with pytest.raises(ValidationError, match=r"reserved special tokens \['<\|image_pad\|>'\]"):
        policy.check_observation(dataclasses.replace(good, instruction="look <|image_pad|>"))


def test_policy_module_does_not_import_torch():
    # Nodes import the policy module (through load_policy) on machines that may lack torch.
    code = "import sys, twinbrain_ros.policy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------------------------------
# Benchmark smoke test (the full CPU run is `twinbrain bench model`)
# --------------------------------------------------------------------------------------------------
def test_model_bench_smoke(capsys, monkeypatch):
    from twinbrain_ros.bench import model_bench

    monkeypatch.setattr(model_bench, "MIN_ITERS", 2)
    assert model_bench.main(argparse.Namespace(json=True, device="cpu", preset="tiny", duration=0.1)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])["results"]["tiny"]
    assert {"preprocess", "left", "right", "expert", "total"} <= set(result["fast_ms"])
    assert {"preprocess", "brains", "expert", "total", "lm_head"} <= set(result["reference_ms"])
    assert result["speedup_p50"] > 0 and result["max_abs_diff_normalised"] < 1e-3


def test_model_bench_bf16_runs_both_paths_in_bf16(capsys, monkeypatch):
    from twinbrain_ros.bench import model_bench

    monkeypatch.setattr(model_bench, "MIN_ITERS", 2)
    a = argparse.Namespace(json=True, device="cpu", preset="tiny", duration=0.1, dtype="bf16")
    assert model_bench.main(a) == 0
    out = capsys.readouterr().out
    assert "(cpu, bfloat16," in out
    result = json.loads(out.strip().splitlines()[-1])["results"]["tiny"]
    assert result["dtype"] == "bfloat16" and "reference_ms" in result
    # bf16 rounding (8 mantissa bits) through two brains and 4 Euler steps: close, not equal
    assert 0 < result["max_abs_diff_normalised"] < 0.1
