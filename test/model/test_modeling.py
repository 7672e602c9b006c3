# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of TwinBrainConfig, the state encoder and TwinBrainModel (training step, sampling, loading)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from twinbrain_ros.model import modeling as M
from twinbrain_ros.model.action_expert import ActionExpertConfig
from twinbrain_ros.model.configuration import VIEWS_SLOT, TwinBrainConfig, preset
from twinbrain_ros.model.modeling import TwinBrainModel
from twinbrain_ros.model.state_encoder import StateEncoder


def left_hash(model: TwinBrainModel) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.brains.left.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["native", "reference"])
def test_config_roundtrip(tmp_path, mode):
    cfg = preset("tiny", mode=mode)
    assert TwinBrainConfig.from_dict(cfg.to_dict()) == cfg
    path = cfg.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["mode"] == mode and data["deepstack"] is (mode == "native")
    assert TwinBrainConfig.load(tmp_path) == cfg
    assert cfg.right_prompt_template.count("{propri}") == (mode == "native")


def test_config_resolves_mode_defaults_and_formats_prompts():
    native, ref = preset("tiny"), preset("tiny", mode="reference")
    assert native.deepstack and not ref.deepstack
    assert native.state_in_right_brain and not ref.state_in_right_brain
    assert (
        ref.format_right_text("go")
        == "Instruction: go\nAction Query: <|action|> <|action|> <|action|> <|action|>"
    )
    assert native.format_right_text("go").splitlines() == [
        "Instruction: go",
        "State: <|propri|>",
        "Action Query: <|action|> <|action|> <|action|> <|action|>",
    ]
    assert native.format_left_text("go") == "go"
    # {images} leaves a slot where chat_prompt puts the views.
    first = dataclasses.replace(native, right_prompt_template="{instruction} {propri}{images} {action_queries}")  # noqa: E501
    assert first.format_right_text("go") == f"go <|propri|>{VIEWS_SLOT} " + " ".join(["<|action|>"] * 4)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mode": "hybrid"}, "mode must be one of"),
        ({"backbone_family": "llava"}, "backbone_family"),
        ({"deepstack": True, "mode": "reference"}, "deepstack=True contradicts mode='reference'"),
        ({"deepstack": False}, "deepstack=False contradicts mode='native'"),
        ({"attn_implementation": "flash_attention_2"}, "attn_implementation"),
        ({"num_action_queries": 0}, "num_action_queries"),
        ({"propri_token_id": 1022}, "must differ"),
        ({"action_token_id": 1019}, "clash"),
        ({"action_token_id": 5000}, "action_token_id=5000"),
        ({"select_layer": 2}, "select_layer=2"),
        ({"right_prompt_template": "Instruction: {instruction}\nAction Query: {action_queries}"}, "{propri}"),
        ({"left_prompt_template": "{images}{instruction}{images}"}, "may contain {images} at most once"),
        (
            {
                "mode": "reference",
                "deepstack": False,
                "right_prompt_template": "{images}Instruction: {instruction}\nAction Query: {action_queries}",
            },
            "reference mode puts the views first",
        ),
        ({"action_expert": ActionExpertConfig.tiny(cond_dim=64)}, "cond_dim=64"),
        (
            {"action_expert": ActionExpertConfig.tiny(cond_dim=128, use_state_token=True, state_dim=3)},
            "state_dim=3 must equal max_state_dim=16",
        ),
    ],
)
def test_config_validation_names_offending_values(change, match):
    cfg = preset("tiny")
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("|", r"\|").replace("{", r"\{")):
        dataclasses.replace(cfg, **change)


def test_config_backbone_validation_and_unknown_keys():
    cfg = preset("tiny")
    bad = json.loads(json.dumps(cfg.backbone))
    bad["text_config"]["rope_parameters"]["mrope_section"] = [6, 6, 6]
    with pytest.raises(ValueError, match=r"mrope_section=\[6, 6, 6\] must sum to head_dim/2=16"):
        dataclasses.replace(cfg, backbone=bad)
    with pytest.raises(ValueError, match="unknown TwinBrainConfig keys: \\['rotation_mot'\\]"):
        TwinBrainConfig.from_dict({**cfg.to_dict(), "rotation_mot": True})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_config_is_frozen_and_owns_its_backbone():
    backbone = json.loads(json.dumps(preset("tiny").backbone))
    cfg = dataclasses.replace(preset("tiny"), backbone=backbone)
    backbone["text_config"]["hidden_size"] = 4
    assert cfg.hidden_size == 128
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mode = "reference"


def test_preset_parameter_counts():
    with torch.device("meta"):
        small = TwinBrainModel(preset("small150m"))
        big = TwinBrainModel(preset("qwen3-vl-4b"))
        big_ref = TwinBrainModel(preset("qwen3-vl-4b", mode="reference"))
    assert 130e6 < n_params(small) < 170e6
    # Spec §0: two 4.44 B brains (+2 embedding rows) + a 0.16 B DiT-B = 9.04 B (no lm_head: tied).
    assert 9.0e9 < n_params(big) < 9.1e9
    # Reference mode builds no DeepStack mergers (2 x 82 M).
    assert 0.15e9 < n_params(big) - n_params(big_ref) < 0.18e9
    assert big.brains.right.language_model.embed_tokens.weight.shape[0] == 151938
    assert big.brains.left.language_model.embed_tokens.weight.shape[0] == 151936


# --------------------------------------------------------------------------------------------------
# State encoder
# --------------------------------------------------------------------------------------------------
def test_state_encoder_pads_and_masks():
    torch.manual_seed(0)
    enc = StateEncoder(max_state_dim=6, hidden_dim=16, out_dim=8)
    state = torch.randn(2, 4)
    token = enc(state)
    assert token.shape == (2, 1, 8)
    padded = torch.cat([state, torch.zeros(2, 2)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 2, dtype=torch.float32)
    torch.testing.assert_close(enc(padded, mask), token)  # explicit padding == implicit padding
    noisy = padded.clone()
    noisy[:, 4:] = 100.0  # values under mask 0 are ignored
    torch.testing.assert_close(enc(noisy, mask), token)
    assert (enc(padded) - token).abs().max() > 1e-4  # but the mask itself is an input
    with pytest.raises(ValueError, match="S<=6"):
        enc(torch.zeros(2, 7))


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def native_model(tokenizer, helpers):
    torch.manual_seed(0)
    cfg = helpers.tiny_config(tokenizer, "native")
    return TwinBrainModel(cfg).eval(), helpers.make_batch(tokenizer, cfg)


@pytest.mark.parametrize("mode", ["native", "reference"])
def test_training_steps_leave_left_brain_bit_identical(tokenizer, helpers, mode):
    torch.manual_seed(0)
    cfg = helpers.tiny_config(tokenizer, mode)
    model = TwinBrainModel(cfg).train()
    batch = helpers.make_batch(tokenizer, cfg)
    assert not model.brains.left.training and model.brains.right.training
    before = left_hash(model)
    right_before = model.brains.right.language_model.layers[0].self_attn.q_proj.weight.clone()
    # All parameters, frozen ones included, with weight decay: AdamW must still leave the left alone.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        loss = model(batch, generator=gen)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None for p in model.brains.left.parameters())
        right_grads = [p.grad for p in model.brains.right.parameters() if p.grad is not None]
        assert right_grads and max(float(g.abs().max()) for g in right_grads) > 0
        if mode == "native":
            assert model.state_encoder.fc1.weight.grad.abs().max() > 0  # state reaches the loss
        opt.step()
    assert left_hash(model) == before
    assert not torch.equal(model.brains.right.language_model.layers[0].self_attn.q_proj.weight, right_before)


def test_no_graph_through_left_brain_even_if_unfrozen(native_model):
    model, batch = native_model
    left_params = list(model.brains.left.parameters())
    try:
        for p in left_params:
            p.requires_grad_(True)  # simulate a caller that forgot to freeze: stop-gradient must still hold
        model(batch, generator=torch.Generator().manual_seed(0)).backward()
        assert all(p.grad is None for p in left_params)
    finally:
        for p in left_params:
            p.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def test_sample_actions_shapes_and_determinism(native_model):
    model, batch = native_model
    expert = model.config.action_expert
    noise = torch.randn(2, expert.horizon, expert.action_dim, generator=torch.Generator().manual_seed(3))
    a = model.sample_actions(batch, noise=noise)
    b = model.sample_actions(batch, noise=noise.clone())
    assert a.shape == (2, expert.horizon, expert.action_dim)
    assert torch.equal(a, b)
    c = model.sample_actions(batch, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(c, a)
    assert (model.sample_actions(batch, noise=noise, num_steps=1) - a).abs().max() > 1e-5
    # The chunk depends on the observation (here: the state token in the right brain).
    other = dict(batch, **{M.STATE: batch[M.STATE] + 1.0})
    assert (model.sample_actions(other, noise=noise) - a).abs().max() > 1e-5


def test_encode_returns_queries_and_expert_state(tokenizer, helpers):
    torch.manual_seed(0)
    expert = ActionExpertConfig.tiny(
        cond_dim=128, action_dim=6, horizon=8, use_state_token=True, state_dim=16
    )
    cfg = helpers.tiny_config(tokenizer, "reference", action_expert=expert)
    model = TwinBrainModel(cfg).eval()
    assert model.state_encoder is None and cfg.state_to_expert
    batch = helpers.make_batch(tokenizer, cfg)
    batch[M.STATE_MASK] = torch.ones_like(batch[M.STATE])
    batch[M.STATE_MASK][:, -1] = 0
    cond = model.encode(batch)
    assert cond.queries.shape == (2, cfg.num_action_queries, cfg.hidden_size)
    assert cond.state.shape == (2, 16)
    torch.testing.assert_close(cond.state[:, :13], batch[M.STATE][:, :13])
    assert cond.state[:, 13:].abs().max() == 0  # masked dim and zero padding
    assert torch.isfinite(model(batch))


def test_batch_validation_names_missing_keys(native_model):
    model, batch = native_model
    no_state = {k: v for k, v in batch.items() if k != M.STATE}
    with pytest.raises(ValueError, match="observation.state"):
        model.encode(no_state)
    no_actions = {k: v for k, v in batch.items() if k != M.ACTIONS}
    with pytest.raises(ValueError, match="'action'"):
        model(no_actions)
    short = dict(batch, **{M.RIGHT_ATTENTION_MASK: batch[M.RIGHT_ATTENTION_MASK][:, 1:]})
    with pytest.raises(ValueError, match="right.attention_mask"):
        model.encode(short)


def test_special_token_rows_are_the_ones_the_tokenizer_assigned(tokenizer, helpers):
    torch.manual_seed(0)
    ids = helpers.token_ids(tokenizer)
    assert (ids["propri_token_id"], ids["action_token_id"]) == (len(tokenizer) - 2, len(tokenizer) - 1)
    cfg = helpers.tiny_config(tokenizer, "reference", right_vocab_size=151938)
    model = TwinBrainModel(cfg)
    left = model.brains.left.language_model.embed_tokens.weight
    right = model.brains.right.language_model.embed_tokens.weight
    special = [ids["propri_token_id"], ids["action_token_id"]]
    keep = torch.ones(left.shape[0], dtype=torch.bool)
    keep[special] = False
    mean = left[keep].mean(0)
    for row in [*special, 151936, 151937]:
        torch.testing.assert_close(right[row], mean)
    assert torch.equal(right[:151936][keep], left[keep])


@pytest.mark.parametrize("mode", ["native", "reference"])
def test_load_backbone_state_dict(tokenizer, helpers, mode):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(1)
    cfg = helpers.tiny_config(tokenizer, mode)
    stock = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**cfg.backbone))
    torch.manual_seed(2)
    model = TwinBrainModel(cfg)
    model.load_backbone_state_dict(stock.state_dict())
    stock_sd = stock.state_dict()
    for name, value in model.brains.left.state_dict().items():
        assert torch.equal(value, stock_sd[name]), name
    q = "model.language_model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(model.brains.right.state_dict()[q], stock_sd[q])
    with pytest.raises(ValueError, match="missing"):
        model.load_backbone_state_dict({k: v for k, v in stock_sd.items() if "layers.1." not in k})
