# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the trainer: schedule, optimiser groups, learning, frozen left brain, checkpoints, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.train.dataset import synthetic_source
from twinbrain_ros.train.trainer import (
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    DatasetMismatchError,
    LeftBrainModifiedError,
    TrainConfig,
    accelerate_available,
    build_optimizer,
    build_trainer,
    find_latest_checkpoint,
    lr_factor,
    optimizer_state_from_safetensors,
    optimizer_state_to_safetensors,
)


def config(tmp_path, init, **kw) -> TrainConfig:
    base = {
        "output_dir": str(tmp_path), "init": str(init), "max_steps": 4, "batch_size": 4, "lr_brain": 1e-4,
        "lr_expert": 1e-3, "warmup_steps": 1, "save_every": 100, "log_every": 100, "progress": False,
        "backend": "torch", "precision": "fp32",
    }  # fmt: skip
    return TrainConfig(**{**base, **kw})


def meta(ckpt, key: str) -> str:
    """A checkpoint metadata entry (plain key, or the older ``twinbrain.`` prefixed one)."""
    return ckpt.metadata.get(key, ckpt.metadata.get(f"twinbrain.{key}"))


def left_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.brains.left.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------------
def test_lr_factor_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup_steps=4, total_steps=12, min_lr_ratio=0.1) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and all(a >= b for a, b in zip(f[4:], f[5:], strict=False))
    assert math.isclose(f[8], 0.1 + 0.9 * 0.5, rel_tol=1e-12)  # half way through the cosine
    assert f[12] == f[13] == pytest.approx(0.1)
    assert lr_factor(0, warmup_steps=0, total_steps=10, min_lr_ratio=0.0) == 1.0


def test_train_config_validates_and_round_trips(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path), datasets=("a",), cameras={"front": "top"})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError) as err:
        TrainConfig(output_dir="x", batch_size=0, precision="fp16", lr_brain=-1.0, action_mode="q99")
    for word in ("batch_size", "precision", "lr_brain", "action_mode"):
        assert word in str(err.value)
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"output_dir": "x", "learning_rate": 1})
    other = TrainConfig(output_dir="y", datasets=("b",), max_steps=5, lr_expert=1.0)
    assert cfg.run_differences(other) == ["cameras: {'front': 'top'} vs None", "lr_expert: 0.0001 vs 1.0"]


def test_optimizer_groups_exclude_the_left_brain(tiny_init, tmp_path):
    from twinbrain_ros.model.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_init).model
    opt, names = build_optimizer(model, config(tmp_path, tiny_init))
    brain, expert = opt.param_groups
    assert (brain["group"], brain["lr"], expert["group"], expert["lr"]) == ("brain", 1e-4, "expert", 1e-3)
    assert brain["betas"] == (0.9, 0.95)
    assert all(n.startswith("brains.right.") for n in names[0])
    assert all(n.startswith(("action_expert.", "state_encoder.")) for n in names[1])
    assert any(n.startswith("state_encoder.") for n in names[1])
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_trainable
    model.brains.left.requires_grad_(True)
    with pytest.raises(LeftBrainModifiedError, match="must be frozen"):
        build_optimizer(model, config(tmp_path, tiny_init))


def test_optimizer_state_round_trips_without_pickle():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.95))
    p.grad = torch.ones_like(p)
    opt.step()
    tensors, meta = optimizer_state_to_safetensors(opt.state_dict())
    assert set(tensors) == {"state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"}
    json.dumps(meta)
    restored = optimizer_state_from_safetensors(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["betas"] == (0.9, 0.95)
    for k, v in opt.state[p].items():
        assert torch.equal(v, opt2.state[opt2.param_groups[0]["params"][0]][k])


# --------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------
def test_loss_decreases_on_a_tiny_synthetic_task(tiny_init, source, tmp_path):
    trainer = build_trainer(
        config(tmp_path, tiny_init, max_steps=40, batch_size=8, warmup_steps=3, lr_expert=2e-3), source
    )
    fixed = trainer._to_device(trainer.collate_fn([trainer.dataset[i] for i in range(0, 96, 6)]))

    def eval_loss() -> float:
        with torch.no_grad():
            gens = [torch.Generator().manual_seed(s) for s in range(4)]
            return float(np.mean([trainer.model(fixed, generator=g).item() for g in gens]))

    before = eval_loss()
    summary = trainer.train()
    after = eval_loss()
    assert summary.step == 40 and len(summary.losses) == 40
    assert after < 0.75 * before, (before, after)
    assert np.mean(summary.losses[-5:]) < np.mean(summary.losses[:5])


# --------------------------------------------------------------------------------------------------
# Frozen left brain, checkpoint contents
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tiny_init, source, tmp_path_factory):
    """Three steps with a save at every step (keep_last=2); returns the trainer and initial left weights."""
    out = tmp_path_factory.mktemp("run")
    trainer = build_trainer(config(out, tiny_init, max_steps=3, save_every=1, keep_last=2), source)
    left0 = left_tensors(trainer.model)
    summary = trainer.train()
    return trainer, left0, summary


def test_left_brain_bit_identical_and_recorded(run, tiny_init):
    from twinbrain_ros.model.checkpoint import META_FINGERPRINT, load_checkpoint

    trainer, left0, summary = run
    after = trainer.model.brains.left.state_dict()
    assert all(torch.equal(left0[k], after[k]) for k in left0)
    # The right brain did train.
    right = trainer.model.brains.right.state_dict()
    assert any(
        not torch.equal(left0[k], right[k]) for k in left0 if k in right and right[k].shape == left0[k].shape
    )
    init_fp = load_checkpoint(tiny_init, load_weights=False).metadata[META_FINGERPRINT]
    ckpt = load_checkpoint(summary.checkpoint)  # a complete, valid model directory (Policy-loadable)
    assert ckpt.metadata[META_FINGERPRINT] == init_fp == summary.left_fingerprint
    assert meta(ckpt, "left_fingerprint_initial") == init_fp
    assert meta(ckpt, "left_frozen") == "verified"
    state = json.loads((summary.checkpoint / TRAINER_STATE_FILE).read_text())
    assert state["left_brain_identical"] is True
    assert state["left_fingerprint"] == state["left_fingerprint_initial"] == init_fp
    assert state["dataset_fingerprint"] == meta(ckpt, "dataset_fingerprint")
    assert ckpt.normalizers["action"].stats.count == len(trainer.dataset)


def test_checkpoint_holds_no_pickle_and_keeps_the_newest(run):
    trainer, _, summary = run
    root = summary.checkpoint.parent
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert (root / "latest").read_text().strip() == "step-00000003"
    assert find_latest_checkpoint(root.parent) == summary.checkpoint
    files = {p.name for p in summary.checkpoint.iterdir()}
    assert {"model.safetensors", OPTIMIZER_FILE, "rng_rank0.safetensors", TRAINER_STATE_FILE} <= files
    assert not [f for f in files if f.endswith((".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"))]
    with safe_open(str(summary.checkpoint / OPTIMIZER_FILE), framework="pt") as f:
        keys = list(f.keys())
    n_params = sum(len(g["params"]) for g in trainer.optimizer.param_groups)
    assert len(keys) == 3 * n_params
    state = json.loads((summary.checkpoint / TRAINER_STATE_FILE).read_text())
    assert state["step"] == 3 and state["schedule"]["step_count"] == 3
    lines = (root.parent / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 3


def test_a_modified_left_brain_is_refused(run):
    trainer, _, _ = run
    param = next(trainer.model.brains.left.parameters())
    original = param.detach().clone()
    with torch.no_grad():
        param.view(-1)[0] += 1.0
    try:
        with pytest.raises(LeftBrainModifiedError, match="changed during training"):
            trainer.save()
    finally:
        with torch.no_grad():
            param.copy_(original)
    assert trainer.check_left_brain() == trainer.left_initial


def test_resume_on_other_data_or_settings_is_refused(run, tiny_init, source):
    trainer, _, summary = run
    cfg = trainer.config
    other = synthetic_source(num_episodes=4, episode_length=24, seed=1,
                             joint_names=trainer.parts.embodiment.joint_names)  # fmt: skip
    with pytest.raises(DatasetMismatchError) as err:
        build_trainer(cfg, other, resume=summary.checkpoint)
    msg = str(err.value)
    assert "refusing to resume" in msg and trainer.dataset_fingerprint in msg and "--init" in msg
    changed = TrainConfig.from_dict({**cfg.to_dict(), "lr_expert": 0.5, "max_steps": 9})
    with pytest.raises(ValueError, match="lr_expert: 0.001 vs 0.5"):
        build_trainer(changed, source, resume=summary.checkpoint)


# --------------------------------------------------------------------------------------------------
# Resume == uninterrupted
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "accelerate"])
def test_resume_equals_an_uninterrupted_run(backend, tiny_init, source, tmp_path):
    if backend == "accelerate" and not accelerate_available():
        pytest.skip("accelerate not installed")
    n, k = 4, 2
    straight = build_trainer(config(tmp_path / "a", tiny_init, max_steps=n, backend=backend), source)
    s_all = straight.train()
    first = build_trainer(config(tmp_path / "b", tiny_init, max_steps=n, backend=backend), source)
    s_first = first.train(until=k)
    assert s_first.step == k and s_first.checkpoint.name == f"step-{k:08d}"
    resumed = build_trainer(config(tmp_path / "b", tiny_init, max_steps=n, backend=backend), source,
                            resume=s_first.checkpoint)  # fmt: skip
    assert resumed.step == k and resumed.optimizer_state_restored
    s_rest = resumed.train()
    assert s_first.losses + s_rest.losses == s_all.losses
    a, b = s_all.checkpoint, s_rest.checkpoint
    for name in ("model.safetensors", OPTIMIZER_FILE, "rng_rank0.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[key], tb[key]) for key in ta), name
    sa = json.loads((a / TRAINER_STATE_FILE).read_text())
    sb = json.loads((b / TRAINER_STATE_FILE).read_text())
    for key in ("step", "micro_step", "schedule", "dataset_fingerprint", "left_fingerprint"):
        assert sa[key] == sb[key], key
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]


def test_state_dropout_blanks_a_seeded_share_of_states(tiny_init, source, tmp_path):
    from twinbrain_ros.model import modeling as M

    with pytest.raises(ValueError, match="state_dropout"):
        config(tmp_path, tiny_init, state_dropout=1.0)
    trainer = build_trainer(config(tmp_path, tiny_init, state_dropout=0.5, seed=3), source)
    state = torch.ones(400, 16)
    trainer.micro_step = 7
    out = trainer._drop_state({M.STATE: state.clone()})[M.STATE]
    blank = (out == 0).all(dim=1)
    assert 150 < int(blank.sum()) < 250  # about half
    assert torch.equal(out[~blank], state[~blank])  # the rest untouched
    again = trainer._drop_state({M.STATE: state.clone()})[M.STATE]
    assert torch.equal(again, out)  # same (seed, micro-step) -> same samples, so a resume repeats them
    trainer.micro_step = 8
    assert not torch.equal(trainer._drop_state({M.STATE: state.clone()})[M.STATE], out)
    plain = build_trainer(config(tmp_path / "p", tiny_init), source)
    assert torch.equal(plain._drop_state({M.STATE: state.clone()})[M.STATE], state)


def test_scene_group_batches_hold_each_scene_under_both_instructions(tiny_init, source, tmp_path):
    from twinbrain_ros.model import modeling as M

    with pytest.raises(ValueError, match="scene_group"):
        config(tmp_path, tiny_init, scene_group=0)
    trainer = build_trainer(config(tmp_path, tiny_init, scene_group=2, batch_size=4), source)
    ids = np.asarray(next(iter(trainer._sampler())))  # 2 drawn frames, then their partners
    ep, task = source.episode_index[ids], source.task_index[ids]
    # the synthetic source alternates its two instructions over episodes: scene k = episodes 2k, 2k + 1
    assert (ep[2:] // 2 == ep[:2] // 2).all() and (ep[2:] != ep[:2]).all() and (task[2:] != task[:2]).all()
    assert ((ids[2:] - ids[:2]) % 24 == 0).all()  # the same moment (24 frames per episode)
    assert len(next(trainer._loader())[M.ACTIONS]) == 4
    plain = build_trainer(config(tmp_path / "p", tiny_init, batch_size=4), source)
    assert plain._sampler().partners is None
    odd = synthetic_source(num_episodes=3, episode_length=24, joint_names=source.state_names)
    hint = "convert with --scene-group 2"
    with pytest.raises(ValidationError, match=f"--scene-group 2: 3 episodes do not split(.|\n)*{hint}"):
        build_trainer(config(tmp_path / "o", tiny_init, scene_group=2, batch_size=4), odd)


# --------------------------------------------------------------------------------------------------
# Weight average (EMA)
# --------------------------------------------------------------------------------------------------
def test_weight_average_follows_the_formula_with_its_warm_up():
    from twinbrain_ros.train.trainer import WeightAverage

    param = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([("w", param)], decay=0.9)
    expected = torch.zeros(3, dtype=torch.float64)
    for n, value in enumerate([1.0, 2.0, -4.0, 8.0, 8.0]):
        with torch.no_grad():
            param.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))
        assert avg.current_decay() == pytest.approx(d)
        avg.update()
        expected = d * expected + (1 - d) * value
        assert torch.allclose(avg.average["w"].double(), expected, atol=1e-6)
    assert avg.updates == 5
    out = avg.averaged_state({"w": param.detach(), "other": torch.ones(2)})
    assert torch.equal(out["other"], torch.ones(2)) and torch.allclose(out["w"].double(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(output_dir="x", ema_decay=1.0)


def test_ema_checkpoint_holds_the_average_and_resume_continues_it(tiny_init, source, tmp_path):
    from twinbrain_ros.model.checkpoint import load_checkpoint
    from twinbrain_ros.train.trainer import ONLINE_FILE

    n, k = 4, 2
    straight = build_trainer(config(tmp_path / "a", tiny_init, max_steps=n, ema_decay=0.5), source)
    s_all = straight.train()
    ckpt = s_all.checkpoint
    saved, online = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / ONLINE_FILE))
    live = {k: v.detach() for k, v in straight.model.named_parameters() if v.requires_grad}
    assert online.keys() == live.keys() and all(torch.equal(online[key], live[key]) for key in live)
    assert all(torch.equal(saved[key], straight.ema.average[key]) for key in live)
    assert any(not torch.equal(saved[key], online[key]) for key in live)  # the average lags the weights
    init = load_file(str(tiny_init / "model.safetensors"))
    left = [key for key in saved if key.startswith("brains.left.")]
    assert left and all(torch.equal(saved[key], init[key]) for key in left)  # not averaged, not trained
    state = json.loads((ckpt / TRAINER_STATE_FILE).read_text())
    assert state["ema"]["updates"] == n and state["left_brain_identical"]
    assert load_checkpoint(ckpt).model is not None  # a policy loads the averaged weights as usual

    first = build_trainer(config(tmp_path / "b", tiny_init, max_steps=n, ema_decay=0.5), source)
    s_first = first.train(until=k)
    resumed = build_trainer(config(tmp_path / "b", tiny_init, max_steps=n, ema_decay=0.5), source,
                            resume=s_first.checkpoint)  # fmt: skip
    assert resumed.ema.updates == k
    s_rest = resumed.train()
    assert s_first.losses + s_rest.losses == s_all.losses
    for name in ("model.safetensors", ONLINE_FILE, OPTIMIZER_FILE):
        ta, tb = load_file(str(ckpt / name)), load_file(str(s_rest.checkpoint / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[key], tb[key]) for key in ta), name

    (s_first.checkpoint / ONLINE_FILE).unlink()
    with pytest.raises(ValueError, match=ONLINE_FILE):
        build_trainer(config(tmp_path / "b", tiny_init, max_steps=n, ema_decay=0.5), source,
                      resume=s_first.checkpoint)  # fmt: skip
    with pytest.raises(ValueError, match="ema_decay: 0.5 vs 0.0"):
        build_trainer(config(tmp_path / "b", tiny_init, max_steps=n), source, resume=s_first.checkpoint)
