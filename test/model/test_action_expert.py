# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the flow-matching DiT action expert: fast path vs. reference, determinism, I/O, config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from twinbrain_ros.model.action_expert import (
    ActionExpert,
    ActionExpertConfig,
    convert_reference_state_dict,
    reference_key_map,
)

K = 3  # action queries


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _expert(seed: int = 0, **overrides) -> ActionExpert:
    torch.manual_seed(seed)
    config = ActionExpertConfig.tiny(**overrides)
    model = ActionExpert(config).eval()
    # Default init leaves adaLN modulations small; perturb every parameter so a wrong wire
    # (e.g. scale/shift swapped) shows up as a large difference against the reference.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=_gen(seed + 1)))
    return model


def _inputs(model: ActionExpert, batch: int, seed: int = 0):
    c = model.config
    g = _gen(seed)
    cond = torch.randn(batch, K, c.cond_dim, generator=g)
    state = torch.randn(batch, c.state_dim, generator=g) if c.use_state_token else None
    x = torch.randn(batch, c.horizon, c.action_dim, generator=g)
    return cond, state, x


STATE = {"state_dim": 5, "use_state_token": True}


@pytest.mark.parametrize("overrides", [{}, STATE, {"num_layers": 3, "num_future_tokens": 0}])
@pytest.mark.parametrize("t", [0.0, 0.25, 0.7, "per-sample"])
def test_fast_velocity_matches_reference(overrides, t):
    model = _expert(**overrides)
    cond, state, x = _inputs(model, batch=2)
    if t == "per-sample":
        t = torch.tensor([0.05, 0.93])
    ctx = model.prepare_condition(cond, state)
    fast = model.velocity(ctx, x, t)
    ref = model.velocity_reference(cond, x, t, state)
    assert fast.shape == (2, model.config.horizon, model.config.action_dim)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_context_is_reused_across_steps():
    model = _expert(**STATE)
    cond, state, x = _inputs(model, batch=2)
    ctx = model.prepare_condition(cond, state)
    for t in (0.0, 0.25, 0.5, 0.75):
        torch.testing.assert_close(model.velocity(ctx, x, t), model.velocity_reference(cond, x, t, state),
                                   rtol=0, atol=1e-5)  # fmt: skip


def test_timestep_matters_and_state_matters():
    model = _expert(**STATE)
    cond, state, x = _inputs(model, batch=1)
    ctx = model.prepare_condition(cond, state)
    assert not torch.allclose(model.velocity(ctx, x, 0.0), model.velocity(ctx, x, 0.5))
    ctx2 = model.prepare_condition(cond, state + 1.0)
    assert not torch.allclose(model.velocity(ctx, x, 0.5), model.velocity(ctx2, x, 0.5))


def test_sample_deterministic_and_matches_manual_euler():
    model = _expert(**STATE)
    cond, state, noise = _inputs(model, batch=2)
    a = model.sample(cond, state, noise=noise)
    b = model.sample(cond, state, noise=noise.clone())
    assert torch.equal(a, b)
    # Same chunk from the slow reference with an explicit 4-step Euler loop.
    x = noise.clone()
    for k in range(4):
        x = x + 0.25 * model.velocity_reference(cond, x, k / 4, state)
    torch.testing.assert_close(a, x, rtol=0, atol=1e-5)
    g1 = model.sample(cond, state, generator=_gen(5))
    g2 = model.sample(cond, state, generator=_gen(5))
    assert torch.equal(g1, g2)
    assert not torch.equal(g1, model.sample(cond, state, generator=_gen(6)))


def test_batch_of_two_equals_two_single_calls():
    model = _expert(**STATE)
    cond, state, noise = _inputs(model, batch=2)
    both = model.sample(cond, state, noise=noise, num_steps=3)
    for i in range(2):
        one = model.sample(cond[i : i + 1], state[i : i + 1], noise=noise[i : i + 1], num_steps=3)
        torch.testing.assert_close(both[i : i + 1], one, rtol=0, atol=1e-6)


def test_safetensors_round_trip_reproduces_outputs(tmp_path):
    model = _expert(seed=0, **STATE)
    cond, state, noise = _inputs(model, batch=2)
    expected = model.sample(cond, state, noise=noise)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))

    config = ActionExpertConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert config == model.config
    torch.manual_seed(123)  # different init, so the test fails if loading is a no-op
    other = ActionExpert(config).eval()
    assert not torch.equal(other.sample(cond, state, noise=noise), expected)
    other.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert torch.equal(other.sample(cond, state, noise=noise), expected)


def test_loss_deterministic_backprops_everywhere_and_masks():
    model = _expert(**STATE, repeated_diffusion_steps=2).train()
    cond, state, actions = _inputs(model, batch=2)
    cond.requires_grad_(True)
    loss = model.loss(cond, actions, state, generator=_gen(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        l1 = model.loss(cond, actions, state, generator=_gen(1))
        l2 = model.loss(cond, actions, state, generator=_gen(1))
        mask = torch.ones(2, 1, model.config.action_dim)
        mask[:, :, -1] = 0
        masked = model.loss(cond, actions, state, generator=_gen(1), action_mask=mask)
    assert torch.equal(l1, l2)
    assert not torch.equal(l1, masked)


def test_input_validation():
    model = _expert(**STATE)
    cond, state, x = _inputs(model, batch=2)
    with pytest.raises(ValueError, match="cond last dim"):
        model.prepare_condition(cond[..., :-1], state)
    with pytest.raises(ValueError, match="state is required|state \\(B"):
        model.prepare_condition(cond, None)
    with pytest.raises(ValueError, match="state shape"):
        model.prepare_condition(cond, state[:1])
    ctx = model.prepare_condition(cond, state[:, None, :])  # (B, 1, S) is accepted
    with pytest.raises(ValueError, match="noisy_actions shape"):
        model.velocity(ctx, x[:, :-1], 0.5)
    with pytest.raises(ValueError, match="t must be in"):
        model.velocity(ctx, x, 1.5)
    with pytest.raises(ValueError, match="noise shape"):
        model.sample(cond, state, noise=x[:1])
    with pytest.raises(ValueError, match="num_steps"):
        model.sample(cond, state, num_steps=0)
    no_state = _expert()
    with pytest.raises(ValueError, match="use_state_token is False"):
        no_state.prepare_condition(torch.randn(1, K, 16), torch.randn(1, 5))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 30, "num_heads": 4}, r"hidden_size \(30\).*num_heads \(4\)"),
        ({"use_state_token": True, "state_dim": 0}, r"use_state_token.*state_dim"),
        ({"horizon": 0}, "horizon"),
        ({"dropout": 1.0}, "dropout"),
        ({"beta_s": 0.0}, "beta_s"),
        ({"num_layers": 2.0}, "num_layers"),
        ({"timestep_embed_dim": 7}, "timestep_embed_dim"),
    ],
)
def test_config_validation_names_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        ActionExpertConfig.tiny(**overrides)


def test_config_dict_round_trip_and_unknown_keys():
    config = ActionExpertConfig.dit_b(state_dim=8, use_state_token=True)
    assert ActionExpertConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.seq_len == 1 + 32 + 16
    with pytest.raises(ValueError, match="unknown ActionExpertConfig keys: \\['bogus'\\]"):
        ActionExpertConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_dit_b_size_matches_spec():
    with torch.device("meta"):
        model = ActionExpert(ActionExpertConfig.dit_b(state_dim=8, use_state_token=True))
    n = sum(p.numel() for p in model.parameters())
    assert 0.15e9 < n < 0.17e9  # spec: DiT-B with cross-dim 2560 is about 0.16 B


def _reference_state_dict(model: ActionExpert, max_seq_len: int = 64) -> dict[str, torch.Tensor]:
    """A reference-layout state dict, keys written out independently from the documented layout."""
    c = model.config
    sd = model.state_dict()
    ref: dict[str, torch.Tensor] = {}

    def pair(ref_name: str, native: str) -> None:
        ref[f"action_model.{ref_name}.weight"] = sd[f"{native}.weight"]
        ref[f"action_model.{ref_name}.bias"] = sd[f"{native}.bias"]

    pair("model.timestep_encoder.timestep_embedder.linear_1", "time_embed.fc1")
    pair("model.timestep_encoder.timestep_embedder.linear_2", "time_embed.fc2")
    for i in (1, 2, 3):
        pair(f"action_encoder.layer{i}", f"action_encoder.w{i}")
    pair("state_encoder.layer1", "state_encoder.fc1")
    pair("state_encoder.layer2", "state_encoder.fc2")
    pair("action_decoder.layer1", "action_decoder.fc1")
    pair("action_decoder.layer2", "action_decoder.fc2")
    pair("model.proj_out_1", "out_modulation")
    pair("model.proj_out_2", "out_proj")
    for i in range(c.num_layers):
        b = f"model.transformer_blocks.{i}"
        pair(f"{b}.norm1.linear", f"blocks.{i}.modulation")
        pair(f"{b}.attn1.to_q", f"blocks.{i}.attn.q_proj")
        pair(f"{b}.attn1.to_k", f"blocks.{i}.attn.k_proj")
        pair(f"{b}.attn1.to_v", f"blocks.{i}.attn.v_proj")
        pair(f"{b}.attn1.to_out.0", f"blocks.{i}.attn.out_proj")
        pair(f"{b}.ff.net.0.proj", f"blocks.{i}.mlp.fc1")
        pair(f"{b}.ff.net.2", f"blocks.{i}.mlp.fc2")
    ref["action_model.future_tokens.weight"] = sd["future_tokens"]
    table = torch.randn(max_seq_len, c.hidden_size)
    table[: c.horizon] = sd["action_pos_embed"]
    ref["action_model.position_embedding.weight"] = table
    ref["qwen_vl_interface.trainable_vlm.x"] = torch.zeros(1)  # other modules' keys are ignored
    return ref


def test_reference_conversion_round_trip():
    model = _expert(**STATE)
    ref = _reference_state_dict(model)
    assert len(reference_key_map(model.config)) == len(ref) - 1
    converted = convert_reference_state_dict(ref, model.config)
    torch.manual_seed(99)
    fresh = ActionExpert(model.config).eval()
    fresh.load_state_dict(converted, strict=True)
    cond, state, noise = _inputs(model, batch=1)
    assert torch.equal(fresh.sample(cond, state, noise=noise), model.sample(cond, state, noise=noise))

    # Without a state token, the (unused) reference state encoder is dropped.
    no_state = ActionExpertConfig.tiny()
    assert "state_encoder.fc1.weight" not in convert_reference_state_dict(ref, no_state)

    broken = dict(ref)
    del broken["action_model.model.proj_out_2.bias"]
    broken["action_model.model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing.*proj_out_2\.bias.*unexpected.*extra\.weight"):
        convert_reference_state_dict(broken, model.config)
    with pytest.raises(ValueError, match="shape"):
        convert_reference_state_dict(ref, ActionExpertConfig.tiny(**STATE, cond_dim=8))
