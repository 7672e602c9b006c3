# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the checkpoint directory: exact round trip, one error naming every problem, no pickle."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from twinbrain_ros.core.embodiment import load_embodiment, parse_embodiment
from twinbrain_ros.model import checkpoint as C
from twinbrain_ros.model.checkpoint import (
    CheckpointError,
    left_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from twinbrain_ros.model.convert import build_model, placeholder_normalizers, tiny_config
from twinbrain_ros.model.processing import build_small_tokenizer, special_token_ids

EMB = load_embodiment("so101")


@pytest.fixture(scope="module")
def parts():
    tok = build_small_tokenizer()
    config = tiny_config(tok, EMB)
    torch.manual_seed(0)
    model = build_model(config)
    return model, tok, placeholder_normalizers(EMB)


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    model, tok, norms = parts
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny", model, tokenizer=tok, normalizers=norms, embodiment=EMB
    )


@pytest.fixture
def copy(saved, tmp_path):
    """A private copy of the saved checkpoint to damage."""
    return Path(shutil.copytree(saved, tmp_path / "tiny"))


def problems_of(path, **kw) -> list[str]:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kw)
    assert str(path) in str(info.value)
    return info.value.problems


def batch_for(tok, config):
    from twinbrain_ros.model.processing import build_processor
    from twinbrain_ros.policy import fake_observation

    proc = build_processor(config, tok, placeholder_normalizers(EMB), EMB.camera_names)
    return {k: torch.from_numpy(v) for k, v in proc.preprocess([fake_observation(EMB)]).items()}


# --------------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------------
def test_save_load_reproduces_weights_and_outputs_exactly(parts, saved):
    model, tok, norms = parts
    names = ["config.json", "embodiment.yaml", "model.safetensors", "norm_stats.json", "processor.json"]
    assert sorted(p.name for p in saved.iterdir()) == [*names, "tokenizer"]
    ckpt = load_checkpoint(saved)
    assert ckpt.config == model.config and ckpt.name == "tiny"
    assert ckpt.embodiment.to_dict() == EMB.to_dict()
    assert special_token_ids(ckpt.tokenizer) == special_token_ids(tok)
    assert {k: v.to_dict() for k, v in ckpt.normalizers.items()} == {k: v.to_dict() for k, v in norms.items()}
    ref, got = model.state_dict(), ckpt.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert ckpt.metadata[C.META_FINGERPRINT] == left_fingerprint(ref)
    assert ckpt.metadata[C.META_MODE] == "native"
    batch = batch_for(tok, model.config)
    noise = torch.randn(1, 16, 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        ckpt.model.sample_actions(batch, noise=noise),
        model.eval().sample_actions(batch, noise=noise),
        rtol=0,
        atol=0,
    )


def test_dtype_casts_brains_keeps_expert_and_rotary_tables_fp32(saved):
    ckpt = load_checkpoint(saved, dtype="bf16")
    model = ckpt.model
    assert model.brains.left.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.state_encoder.fc1.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.action_expert.parameters())
    assert model.brains.right.language_model.rotary_emb.inv_freq.dtype == torch.float32


def test_load_without_weights_validates_only(saved):
    ckpt = load_checkpoint(saved, load_weights=False)
    assert ckpt.model is None and ckpt.config.mode == "native"


def test_fingerprint_is_stable_and_sensitive(parts):
    sd = {k: v.clone() for k, v in parts[0].state_dict().items()}
    fp = left_fingerprint(sd)
    assert fp.startswith("sha256:") and fp == left_fingerprint(sd)
    key = "brains.right.model.language_model.norm.weight"
    sd[key] += 1  # the right brain is not part of the fingerprint
    assert left_fingerprint(sd) == fp
    sd["brains.left.model.language_model.norm.weight"].view(torch.int32)[0] ^= 1  # one flipped bit
    assert left_fingerprint(sd) != fp


# --------------------------------------------------------------------------------------------------
# Problems, all in one error
# --------------------------------------------------------------------------------------------------
def test_missing_files_are_all_named(copy):
    (copy / "norm_stats.json").unlink()
    (copy / "embodiment.yaml").unlink()
    shutil.rmtree(copy / "tokenizer")
    problems = problems_of(copy)
    assert {"missing norm_stats.json", "missing embodiment.yaml", "missing tokenizer/ directory"} <= set(
        problems
    )
    assert problems_of(copy / "nope") == [f"{copy / 'nope'} is not a directory"]


def test_corrupted_weights_file(copy):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(b"\x00\x01garbage" + data[200:])
    (problem,) = problems_of(copy)
    assert problem.startswith("model.safetensors is not a readable safetensors file")


def test_missing_unexpected_and_wrong_shape_tensors_in_one_error(copy):
    path = copy / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    del sd["action_expert.future_tokens"]
    sd["brains.right.extra.weight"] = torch.zeros(2)
    sd["action_expert.out_proj.bias"] = torch.zeros(3)
    save_file(sd, str(path), metadata=meta)
    problems = "\n".join(problems_of(copy))
    assert "missing keys 1: [action_expert.future_tokens]" in problems
    assert "unexpected keys 1: [brains.right.extra.weight]" in problems
    assert "action_expert.out_proj.bias (3,) != (32,)" in problems


def test_modified_left_weights_fail_the_fingerprint(copy):
    path = copy / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    sd["brains.left.model.language_model.norm.weight"][0] += 1e-3
    save_file(sd, str(path), metadata=meta)
    (problem,) = problems_of(copy)
    assert problem.startswith("left-brain fingerprint mismatch")
    assert load_checkpoint(copy, verify_fingerprint=False).model is not None


def test_inconsistent_config_contract_and_stats_name_both_sides(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["action_token_id"] = cfg["action_token_id"] - 5
    (copy / "config.json").write_text(json.dumps(cfg))
    emb = EMB.to_dict()
    emb["joints"].append(dict(emb["joints"][0], name="extra"))
    emb["action"]["horizon"] = 10
    (copy / "embodiment.yaml").write_text(parse_embodiment(emb).to_yaml())
    problems = "\n".join(problems_of(copy))
    assert (
        f"tokenizer action_token_id={cfg['action_token_id'] + 5} but config.json has {cfg['action_token_id']}"
        in problems
    )
    assert "action_dim=6 but embodiment 'so101' has 7 joints" in problems
    assert "horizon=16 but embodiment 'so101' action.horizon=10" in problems
    assert "'state' has 6 dims but embodiment 'so101' has 7 joints" in problems


def test_invalid_config_json_is_reported(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rotation_mot"] = True
    (copy / "config.json").write_text(json.dumps(cfg))
    assert problems_of(copy) == ["config.json: unknown TwinBrainConfig keys: ['rotation_mot']"]


def test_save_refuses_inconsistent_parts_and_existing_dir(parts, tmp_path, saved):
    model, tok, norms = parts
    with pytest.raises(CheckpointError, match="'action' has 3 dims but action_dim=6"):
        bad = dict(norms, action=placeholder_normalizers(parse_embodiment(_three_joints()))["action"])
        save_checkpoint(tmp_path / "bad", model, tokenizer=tok, normalizers=bad, embodiment=EMB)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileExistsError):
        save_checkpoint(saved, model, tokenizer=tok, normalizers=norms, embodiment=EMB)


def _three_joints():
    data = EMB.to_dict()
    data["joints"] = data["joints"][:3]
    return data


# --------------------------------------------------------------------------------------------------
# No pickle, ever
# --------------------------------------------------------------------------------------------------
class _Boom:
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise AssertionError("a pickle was loaded")


def test_pickle_weights_are_refused_and_never_opened(copy, saved, monkeypatch):
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    problems = "\n".join(problems_of(copy))
    assert (
        "missing model.safetensors (found ['pytorch_model.bin']: pickle-based weights are never loaded"
        in problems
    )

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert load_checkpoint(saved).model is not None
    source = Path(C.__file__).read_text()
    assert "torch.load" not in source and "import pickle" not in source
