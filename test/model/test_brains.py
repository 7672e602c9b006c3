# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the dual-brain core: stock parity of the left brain, AsyMoT masks, fast path vs reference."""

from __future__ import annotations

import pytest
import torch

from twinbrain_ros.model import modeling as M
from twinbrain_ros.model.brains import (
    BatchedVisionAttention,
    LinearPatchEmbed,
    TwinBrains,
    causal_self_mask,
    joint_mask,
    stock_vision_kernels,
)
from twinbrain_ros.model.reference_impl import reference_forward

ATOL = 1e-5  # fp32 fast path vs explicit reference
SAME = 1e-6  # "unchanged" under a perturbation (in practice bit-identical)
DIFF = 1e-4  # "changed" under a perturbation


def build(cfg, seed: int = 0) -> TwinBrains:
    """Random brains; the right brain is nudged off the left so a weight mix-up cannot hide."""
    torch.manual_seed(seed)
    brains = TwinBrains(cfg)
    with torch.no_grad():
        for p in brains.right.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return brains.eval()


def state_token(cfg, batch_size: int, seed: int = 1) -> torch.Tensor | None:
    if not cfg.state_in_right_brain:
        return None
    return torch.randn(batch_size, 1, cfg.hidden_size, generator=torch.Generator().manual_seed(seed))


def fast(brains, batch, token):
    """Fast path: (left K/V-only run, left full run, queries, right hidden)."""
    left_args, right_args = brains_args(batch)
    left = brains.run_left(*left_args)
    left_full = brains.run_left(*left_args, output_hidden=True)
    queries, hidden = brains.run_right(*right_args, left, state_token=token, output_hidden=True)
    return left, left_full, queries, hidden


def brains_args(batch):
    left = (
        batch[M.LEFT_INPUT_IDS],
        batch[M.LEFT_ATTENTION_MASK],
        batch[M.PIXEL_VALUES],
        batch[M.IMAGE_GRID_THW],
    )
    right = (
        batch[M.RIGHT_INPUT_IDS],
        batch[M.RIGHT_ATTENTION_MASK],
        batch[M.PIXEL_VALUES],
        batch[M.IMAGE_GRID_THW],
    )
    return left, right


def row_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., L, H) -> (..., L) max abs difference per token."""
    return (a - b).abs().amax(dim=-1)


@pytest.fixture(scope="module")
def setups(tokenizer, helpers):
    """Lazily built (config, brains, batch) per (family, mode), shared by the tests of this module."""
    cache = {}

    def get(family: str = "qwen3_vl", mode: str = "native", **fields):
        key = (family, mode, tuple(sorted(fields.items())))
        if key not in cache:
            make = helpers.tiny_config if family == "qwen3_vl" else helpers.tiny_qwen2_5_config
            cfg = make(tokenizer, mode, **fields)
            cache[key] = (cfg, build(cfg), helpers.make_batch(tokenizer, cfg))
        return cache[key]

    return get


# --------------------------------------------------------------------------------------------------
# The left brain is the stock model
# --------------------------------------------------------------------------------------------------
def _stock(cfg, state_dict, strict=True):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel, Qwen3VLConfig, Qwen3VLModel

    if cfg.backbone_family == "qwen3_vl":
        model = Qwen3VLModel(Qwen3VLConfig(**cfg.backbone, attn_implementation=cfg.attn_implementation))
    else:
        model = Qwen2_5_VLModel(Qwen2_5_VLConfig(**cfg.backbone, attn_implementation=cfg.attn_implementation))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state_dict.items()}, strict=strict)
    return model.eval()


def _stock_forward(model, batch, use_cache=False):
    ids = batch[M.LEFT_INPUT_IDS]
    with torch.no_grad():
        return model(
            input_ids=ids,
            attention_mask=batch[M.LEFT_ATTENTION_MASK],
            pixel_values=batch[M.PIXEL_VALUES],
            image_grid_thw=batch[M.IMAGE_GRID_THW],
            mm_token_type_ids=(ids == model.config.image_token_id).int(),
            use_cache=use_cache,
        )


def _cache_kv(cache, layer: int):
    if hasattr(cache, "layers"):  # transformers >= 5 cache layout
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_brain_equals_stock_qwen3_vl_with_deepstack(tokenizer, helpers, attn):
    cfg = helpers.tiny_config(tokenizer, "native", attn_implementation=attn)
    assert cfg.deepstack
    brains = build(cfg)
    batch = helpers.make_batch(tokenizer, cfg)
    stock = _stock(cfg, brains.left.model.state_dict())
    out = _stock_forward(stock, batch, use_cache=True)
    left_args, _ = brains_args(batch)
    with stock_vision_kernels(brains):  # the stock patch kernel: the rest must then be bit-identical
        mine = brains.run_left(*left_args, output_hidden=True)
        fast_left = brains.run_left(*left_args)
    valid = batch[M.LEFT_ATTENTION_MASK].bool()
    # Same kernels, same weights, fp32 CPU: bit-identical, not merely close.
    assert torch.equal(mine.hidden[valid], out.last_hidden_state[valid])
    # The default patch embedding (one matmul instead of the Conv3d) differs only in rounding.
    matmul = brains.run_left(*left_args, output_hidden=True)
    torch.testing.assert_close(matmul.hidden[valid], out.last_hidden_state[valid], atol=ATOL, rtol=ATOL)
    # The exported K/V are exactly what the stock model's KV cache holds (post k_norm + RoPE).
    for layer in range(cfg.num_layers):
        k_ref, v_ref = _cache_kv(out.past_key_values, layer)  # (B, n_kv, L, hd) each
        assert torch.equal(mine.keys[layer].transpose(1, 2)[valid], k_ref.transpose(1, 2)[valid])
        assert torch.equal(mine.values[layer].transpose(1, 2)[valid], v_ref.transpose(1, 2)[valid])
    # The K/V-only fast path (no attention/MLP in the last layer) exports the same K/V.
    for layer in range(cfg.num_layers):
        assert torch.equal(fast_left.keys[layer], mine.keys[layer])
        assert torch.equal(fast_left.values[layer], mine.values[layer])


def test_left_brain_reference_mode_equals_stock_with_deepstack_dropped(tokenizer, helpers):
    cfg = helpers.tiny_config(tokenizer, "reference")
    assert not cfg.deepstack
    brains = build(cfg)
    batch = helpers.make_batch(tokenizer, cfg)
    # A stock model *with* DeepStack mergers (as in the pretrained checkpoint); ours has none.
    stock = _stock(cfg, brains.left.model.state_dict(), strict=False)
    left_args, _ = brains_args(batch)
    with stock_vision_kernels(brains):
        mine = brains.run_left(*left_args, output_hidden=True)
    valid = batch[M.LEFT_ATTENTION_MASK].bool()
    with_deepstack = _stock_forward(stock, batch).last_hidden_state

    # Equivalent way of disabling DeepStack in the stock forward: the vision tower reports no features.
    def drop_deepstack(module, args, output):
        output.deepstack_features = []
        return output

    handle = stock.visual.register_forward_hook(drop_deepstack)
    try:
        without = _stock_forward(stock, batch).last_hidden_state
    finally:
        handle.remove()
    assert torch.equal(mine.hidden[valid], without[valid])
    assert (mine.hidden[valid] - with_deepstack[valid]).abs().max() > DIFF  # DeepStack really is off


def test_qwen2_5_vl_variant_builds_and_runs(setups):
    cfg, brains, batch = setups("qwen2_5_vl", "native")
    assert cfg.backbone_family == "qwen2_5_vl" and not cfg.deepstack
    assert type(brains.left.model).__name__ == "Qwen2_5_VLModel"
    stock = _stock(cfg, brains.left.model.state_dict())
    out = _stock_forward(stock, batch)
    left_args, right_args = brains_args(batch)
    with stock_vision_kernels(brains):
        mine = brains.run_left(*left_args, output_hidden=True)
    valid = batch[M.LEFT_ATTENTION_MASK].bool()
    assert torch.equal(mine.hidden[valid], out.last_hidden_state[valid])
    queries = brains.run_right(*right_args, brains.run_left(*left_args), state_token=state_token(cfg, 2))
    assert queries.shape == (2, cfg.num_action_queries, cfg.hidden_size)
    assert torch.isfinite(queries).all()


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_linear_patch_embedding_equals_the_stock_conv3d(setups, family):
    cfg, brains, batch = setups(family, "native")
    embed = brains.right.model.visual.patch_embed
    assert isinstance(embed, LinearPatchEmbed)
    assert (embed.proj.bias is not None) == (family == "qwen3_vl")  # Qwen2.5-VL's has no bias
    assert "visual.patch_embed.proj.weight" in brains.right.model.state_dict()  # checkpoint keys unchanged
    pixels = batch[M.PIXEL_VALUES]
    stock = embed.proj(pixels.view(-1, embed.in_channels, *embed.kernel)).view(-1, embed.embed_dim)
    torch.testing.assert_close(embed(pixels), stock, atol=ATOL, rtol=ATOL)
    with stock_vision_kernels(brains):
        assert torch.equal(embed(pixels), stock)
    assert not embed.use_conv  # restored on exit
    # The matrix really is the kernel: a changed weight entry changes exactly one output column.
    before = embed(pixels)
    with torch.no_grad():
        embed.proj.weight[3, 0, 0, 0, 0] += 1.0
        try:
            changed = row_change(embed(pixels).T, before.T)
        finally:
            embed.proj.weight[3, 0, 0, 0, 0] -= 1.0
    assert changed[3] > DIFF and torch.all(torch.cat([changed[:3], changed[4:]]) < SAME)


def test_batched_vision_attention_equals_the_per_image_loop(setups, helpers):
    cfg, brains, _ = setups("qwen3_vl", "native")
    visual = brains.right.model.visual
    assert all(isinstance(block.attn, BatchedVisionAttention) for block in visual.blocks)
    assert "visual.blocks.0.attn.qkv.weight" in brains.right.model.state_dict()  # checkpoint keys unchanged
    proc = helpers.image_processor(cfg)
    # Three equal views (one batched call), then views of two sizes (the stock loop).
    mixed = helpers.random_images(4, 2) + helpers.random_images(5, 1, 160)
    for images in (helpers.random_images(3, 3), mixed):
        pix = proc(images=images, return_tensors="pt")
        attn, seen = visual.blocks[0].attn, {}

        def grab(module, args, kwargs, seen=seen):
            seen.update(args=args, kwargs=kwargs)

        hook = attn.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                visual(pix["pixel_values"], grid_thw=pix["image_grid_thw"])  # the tower's own inputs
        finally:
            hook.remove()
        x, kwargs = seen["args"][0], seen["kwargs"]
        first = int(pix["image_grid_thw"][0].prod())  # patches of image 0
        uniform = len(set(pix["image_grid_thw"].prod(-1).tolist())) == 1
        stock_forward = attn._stock_forward
        if uniform:
            attn._stock_forward = None  # the batched call must not need the stock loop
        try:
            fast = attn(x, **kwargs)
        finally:
            attn._stock_forward = stock_forward
        with stock_vision_kernels(visual):
            assert attn.use_stock
            stock = attn(x, **kwargs)
        assert not attn.use_stock
        torch.testing.assert_close(fast, stock, atol=ATOL, rtol=ATOL)
        # Attention stays within each image: changing image 0's patches leaves the other rows alone.
        x2 = x.clone()
        x2[:first] += 1.0
        changed = row_change(attn(x2, **kwargs), fast)
        assert changed[:first].min() > DIFF and changed[first:].max() < SAME


# --------------------------------------------------------------------------------------------------
# Fast path == slow reference
# --------------------------------------------------------------------------------------------------
TEXT_FIRST = "Instruction: {instruction}\nState: {propri}\n{images}Action Query: {action_queries}"


@pytest.mark.parametrize(
    ("family", "mode", "fields"),
    [
        ("qwen3_vl", "native", {}),
        ("qwen3_vl", "reference", {}),
        ("qwen2_5_vl", "native", {}),
        ("qwen2_5_vl", "reference", {}),
        # Views after the text (image tokens attend to the instruction): MRoPE and masks still agree.
        ("qwen3_vl", "native", {"right_prompt_template": TEXT_FIRST, "left_prompt_template": "{instruction}{images}"}),  # noqa: E501
    ],
)
def test_fast_path_matches_slow_reference(setups, family, mode, fields):
    cfg, brains, batch = setups(family, mode, **fields)
    token = state_token(cfg, 2)
    _, left_full, queries, hidden = fast(brains, batch, token)
    left_args, right_args = brains_args(batch)
    ref = reference_forward(brains, *left_args[:2], *right_args[:2], *left_args[2:], state_token=token)

    left_valid = batch[M.LEFT_ATTENTION_MASK].bool()
    torch.testing.assert_close(
        left_full.hidden[left_valid], ref.left_hidden[left_valid], atol=ATOL, rtol=ATOL
    )
    keep = hidden.shape[1]
    right_valid = batch[M.RIGHT_ATTENTION_MASK].bool()[:, :keep]
    torch.testing.assert_close(
        hidden[right_valid], ref.right_hidden[:, :keep][right_valid], atol=ATOL, rtol=ATOL
    )
    torch.testing.assert_close(queries, ref.action_states, atol=ATOL, rtol=ATOL)
    # Only the 5 chat-template tokens after the last <|action|> are skipped.
    assert batch[M.RIGHT_INPUT_IDS].shape[1] - keep == 5


def test_fast_path_with_intermediate_layer(setups):
    cfg, brains, batch = setups("qwen3_vl", "native", select_layer=0)
    assert cfg.num_used_layers == 1
    token = state_token(cfg, 2)
    left, _, queries, _ = fast(brains, batch, token)
    assert len(left.keys) == 1  # layers past the selected one are never run
    left_args, right_args = brains_args(batch)
    ref = reference_forward(brains, *left_args[:2], *right_args[:2], *left_args[2:], state_token=token)
    torch.testing.assert_close(queries, ref.action_states, atol=ATOL, rtol=ATOL)


# --------------------------------------------------------------------------------------------------
# Mask semantics
# --------------------------------------------------------------------------------------------------
def test_joint_mask_by_hand():
    left_valid = torch.tensor([[False, True, True]])
    right_valid = torch.tensor([[False, True, True, True]])
    o, x = True, False
    native = torch.tensor(
        [[x, o, o, o, x, x, x], [x, o, o, x, o, x, x], [x, o, o, x, o, o, x], [x, o, o, x, o, o, o]]
    )
    # Reference: index-aligned, left key j visible to right query i only when j <= i; pads never.
    reference = torch.tensor(
        [[x, x, x, o, x, x, x], [x, o, x, x, o, x, x], [x, o, o, x, o, o, x], [x, o, o, x, o, o, o]]
    )
    assert torch.equal(joint_mask(left_valid, right_valid, index_aligned=False)[0, 0], native)
    assert torch.equal(joint_mask(left_valid, right_valid, index_aligned=True)[0, 0], reference)
    # Row 0 is a pad query: it only sees itself (keeps its output finite; it is never read).
    self_mask = causal_self_mask(left_valid)[0, 0]
    assert torch.equal(self_mask, torch.tensor([[o, x, x], [x, o, x], [x, o, o]]))


@pytest.mark.parametrize("mode", ["native", "reference"])
def test_left_token_visibility_by_perturbation(setups, mode):
    cfg, brains, batch = setups("qwen3_vl", mode)
    token = state_token(cfg, 2)
    _, left0, _, right0 = fast(brains, batch, token)
    # Change one instruction token of sample 1 (the longer, unpadded one) in the LEFT sequence only.
    ids = batch[M.LEFT_INPUT_IDS]
    j = int(ids.shape[1]) - 8
    perturbed = dict(batch)
    perturbed[M.LEFT_INPUT_IDS] = ids.clone()
    perturbed[M.LEFT_INPUT_IDS][1, j] = (int(ids[1, j]) + 17) % 100000
    _, left1, _, right1 = fast(brains, perturbed, token)

    left_change = row_change(left0.hidden, left1.hidden)  # (B, L_f)
    assert left_change[0].max() <= SAME  # other sample untouched
    assert left_change[1, :j].max() <= SAME and left_change[1, j:].min() > DIFF  # left is causal

    change = row_change(right0, right1)  # (B, L_keep)
    valid = batch[M.RIGHT_ATTENTION_MASK].bool()[:, : change.shape[1]]
    assert change[0].max() <= SAME
    seen = change[1] > DIFF
    if mode == "native":
        # Prefix attention: every right token sees every valid left key.
        assert seen[valid[1]].all()
    else:
        # Index-aligned: right query i sees left key j iff j <= i.
        idx = torch.arange(change.shape[1])
        assert torch.equal(seen[valid[1]], (idx >= j)[valid[1]])
        assert change[1, :j].max() <= SAME


@pytest.mark.parametrize("mode", ["native", "reference"])
def test_pad_keys_never_leak(setups, mode):
    cfg, brains, batch = setups("qwen3_vl", mode)
    token = state_token(cfg, 2)
    left_pad = ~batch[M.LEFT_ATTENTION_MASK].bool()
    right_pad = ~batch[M.RIGHT_ATTENTION_MASK].bool()
    assert left_pad[0].sum() > 0 and right_pad[0].sum() > 0  # sample 0 is left-padded
    _, left0, q0, right0 = fast(brains, batch, token)
    perturbed = dict(batch)
    perturbed[M.LEFT_INPUT_IDS] = batch[M.LEFT_INPUT_IDS].masked_fill(left_pad, 9999)
    perturbed[M.RIGHT_INPUT_IDS] = batch[M.RIGHT_INPUT_IDS].masked_fill(right_pad, 4242)
    _, left1, q1, right1 = fast(brains, perturbed, token)
    assert (q0 - q1).abs().max() <= SAME
    keep = right0.shape[1]
    right_valid = ~right_pad[:, :keep]
    assert row_change(right0, right1)[right_valid].max() <= SAME
    assert row_change(left0.hidden, left1.hidden)[~left_pad].max() <= SAME
    # The pad positions themselves did change, so the perturbation was real.
    assert row_change(left0.hidden, left1.hidden)[left_pad].min() > DIFF


def test_right_stream_is_causal_and_never_feeds_left(setups):
    cfg, brains, batch = setups("qwen3_vl", "native")
    token = state_token(cfg, 2)
    left0, _, _, right0 = fast(brains, batch, token)
    ids = batch[M.RIGHT_INPUT_IDS]
    j = int((ids[1] == cfg.propri_token_id).nonzero()) - 3  # an instruction token of sample 1
    perturbed = dict(batch)
    perturbed[M.RIGHT_INPUT_IDS] = ids.clone()
    perturbed[M.RIGHT_INPUT_IDS][1, j] = (int(ids[1, j]) + 17) % 100000
    left1, _, _, right1 = fast(brains, perturbed, token)
    change = row_change(right0, right1)
    assert change[1, :j].max() <= SAME and change[1, j:].min() > DIFF and change[0].max() <= SAME
    for k0, k1 in zip(left0.keys, left1.keys, strict=True):
        assert torch.equal(k0, k1)


def test_right_only_inputs_change_no_left_activation_but_images_change_both(setups, helpers, tokenizer):
    cfg, brains, batch = setups("qwen3_vl", "native")
    token = state_token(cfg, 2)
    left0, full0, q0, _ = fast(brains, batch, token)

    # A different state token: right queries move, the left brain does not.
    left1, full1, q1, _ = fast(brains, batch, state_token(cfg, 2, seed=7))
    assert torch.equal(full0.hidden, full1.hidden)
    assert all(
        torch.equal(a, b) for a, b in zip(left0.keys + left0.values, left1.keys + left1.values, strict=True)
    )
    assert (q0 - q1).abs().max() > DIFF

    # Different action-query / template tokens in the right prompt only: left untouched.
    other = dict(batch)
    other[M.RIGHT_INPUT_IDS] = batch[M.RIGHT_INPUT_IDS].clone()
    is_query = other[M.RIGHT_INPUT_IDS] == cfg.action_token_id
    spaces = torch.roll(is_query, -1, dims=1) & ~is_query  # the space token before each query
    other[M.RIGHT_INPUT_IDS][spaces] = tokenizer.convert_tokens_to_ids(",")
    left2, full2, q2, _ = fast(brains, other, token)
    assert torch.equal(full0.hidden, full2.hidden)
    assert (q0 - q2).abs().max() > DIFF

    # A different image for sample 0 changes both brains (for that sample only).
    images = helpers.random_images(0, 2)
    images[0] = helpers.random_images(123, 1)[0]
    new = helpers.make_batch(tokenizer, cfg, images=images)
    _, full3, q3, _ = fast(brains, new, token)
    assert row_change(full0.hidden[0], full3.hidden[0]).max() > DIFF
    assert (q0[0] - q3[0]).abs().max() > DIFF
    assert row_change(full0.hidden[1], full3.hidden[1]).max() <= SAME
    assert (q0[1] - q3[1]).abs().max() <= SAME


def test_bad_right_prompts_raise(setups):
    cfg, brains, batch = setups("qwen3_vl", "native")
    left_args, right_args = brains_args(batch)
    left = brains.run_left(*left_args)
    with pytest.raises(ValueError, match="state token"):
        brains.run_right(*right_args, left)
    ids = right_args[0].clone()
    ids[ids == cfg.action_token_id] = ids[0, -1]
    with pytest.raises(ValueError, match="<\\|action\\|>"):
        brains.run_right(ids, *right_args[1:], left, state_token=state_token(cfg, 2))
    ids = left_args[0].clone()
    ids[0, (ids[0] == brains.left.image_token_id).nonzero()[0, 0]] = ids[0, -1]
    with pytest.raises(ValueError, match="image tokens"):
        brains.run_left(ids, *left_args[1:])
