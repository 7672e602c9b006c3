# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Slow, obviously-correct AsyMoT forward, for tests of the fast path in ``brains.py``.

Everything that the fast path optimises is written out plainly here:

* both brains run every layer over their full sequences (no K/V-only last layer, no truncation of the
  right sequence, final norm on every token);
* the two streams advance together, layer by layer, as in the authors' loop;
* RMSNorm, linear layers, q/k-norm, RoPE, GQA head sharing, softmax attention and the SwiGLU MLP are
  explicit tensor formulas over the modules' parameters;
* the attention masks are filled entry by entry in Python loops from the rules of the model spec, and
  attention to a masked key is excluded outright (never a large negative number);
* image features, DeepStack features and the state token are placed token by token.

Reused from transformers (trusted, and tested against the stock model separately): the vision tower
call, ``get_rope_index`` and the rotary cos/sin tables.

Usage:
    out = reference_forward(brains, left_ids, left_mask, right_ids, right_mask, pixel_values, grid,
                            state_token=token)
    out.action_states  # (B, K, H), compare with TwinBrains.run_right
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from twinbrain_ros.model.brains import TwinBrains, stock_vision_kernels


@dataclass
class ReferenceOutput:
    """Outputs of the slow forward.

    Attributes:
        left_hidden: (B, L_f) + (H,) final-normed last-layer left states.
        right_hidden: (B, L_t, H) final-normed right states of the selected layer.
        action_states: (B, K, H) right states at the ``<|action|>`` positions.
        left_mask: (B, L_f, L_f) bool, the left self-attention rule.
        joint_mask: (B, L_t, L_f + L_t) bool, the right brain's rule over [left ; right] keys.
    """

    left_hidden: torch.Tensor
    right_hidden: torch.Tensor
    action_states: torch.Tensor
    left_mask: torch.Tensor
    joint_mask: torch.Tensor


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """X / sqrt(mean(x^2) + eps) * weight, in float32."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    x32 = x.float()
    return norm.weight * (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """X W^T + b."""
    out = x @ layer.weight.T
    return out + layer.bias if layer.bias is not None else out


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE: x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] on the last dim."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def vision(brain_model: nn.Module, pixel_values: torch.Tensor, grid: torch.Tensor):
    """The stock vision tower: (N_img_tokens, H) features and the DeepStack list.

    The patch embedding runs as the stock ``Conv3d`` (the fast path uses the equal matrix product).
    """
    with stock_vision_kernels(brain_model.visual):
        out = brain_model.visual(pixel_values, grid_thw=grid)
    if hasattr(out, "pooler_output"):
        return out.pooler_output, list(getattr(out, "deepstack_features", None) or [])
    if isinstance(out, tuple):
        return out[0], list(out[1] or [])
    return out, []


def left_rule(valid: torch.Tensor) -> torch.Tensor:
    """Left self-attention: query i sees key j iff j <= i and j is not padding."""
    batch, length = valid.shape
    is_real = valid.tolist()
    rows = [[[is_real[b][j] and j <= i for j in range(length)] for i in range(length)] for b in range(batch)]
    return torch.tensor(rows, dtype=torch.bool, device=valid.device).reshape(batch, length, length)


def joint_rule(left_valid: torch.Tensor, right_valid: torch.Tensor, index_aligned: bool) -> torch.Tensor:
    """Right query i over [left key j ; right key j'] (model spec §2.3 and decisions).

    Left key j: visible iff not padding, and (reference mode only) j <= i in padded indices.
    Right key j': visible iff not padding and j' <= i.
    """
    batch, left_len = left_valid.shape
    right_len = right_valid.shape[1]
    left_real, right_real = left_valid.tolist(), right_valid.tolist()
    rows = []
    for b in range(batch):
        for i in range(right_len):
            to_left = [left_real[b][j] and (j <= i or not index_aligned) for j in range(left_len)]
            to_right = [right_real[b][j] and j <= i for j in range(right_len)]
            rows.append(to_left + to_right)
    out = torch.tensor(rows, dtype=torch.bool, device=right_valid.device)
    return out.reshape(batch, right_len, left_len + right_len)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention over the allowed keys only; a row with no allowed key outputs zeros.

    Args:
        q: (B, n_heads, L_q, hd) queries.
        k: (B, n_kv, L_k, hd) keys.
        v: (B, n_kv, L_k, hd) values.
        allowed: (B, L_q, L_k) bool, True where the query may read the key.

    Returns:
        (B, L_q, n_heads * hd).
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # query head h reads kv head h // group: (B, n_heads, L_k, hd)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (B, n_heads, L_q, L_k)
    scores = scores.float().masked_fill(~allowed.to(scores.device)[:, None], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0).to(q.dtype)  # empty rows -> 0
    out = weights @ v  # (B, n_heads, L_q, hd)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)  # (B, L_q, n_heads * hd)


def project(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k, v of one decoder layer from its input (before input_layernorm)."""
    attn = layer.self_attn
    h = rms_norm(x, layer.input_layernorm)
    batch, length, _ = h.shape
    hd = attn.head_dim
    q = linear(h, attn.q_proj).reshape(batch, length, -1, hd)  # (B, L, n_heads, hd)
    k = linear(h, attn.k_proj).reshape(batch, length, -1, hd)  # (B, L, n_kv, hd)
    v = linear(h, attn.v_proj).reshape(batch, length, -1, hd)  # (B, L, n_kv, hd)
    if hasattr(attn, "q_norm"):
        q, k = rms_norm(q, attn.q_norm), rms_norm(k, attn.k_norm)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, hd)
    c, s = cos[:, None], sin[:, None]  # (B, 1, L, hd)
    return rotate(q, c, s), rotate(k, c, s), v


def mlp_block(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """X + down(silu(gate(n)) * up(n)), n = post_attention_layernorm(x)."""
    mlp = layer.mlp
    if mlp.config.hidden_act != "silu":
        raise NotImplementedError(f"reference MLP is written for silu, got {mlp.config.hidden_act!r}")
    n = rms_norm(x, layer.post_attention_layernorm)
    return x + linear(F.silu(linear(n, mlp.gate_proj)) * linear(n, mlp.up_proj), mlp.down_proj)


def embed(brain, ids, mask, pixel_values, grid, deepstack_on):
    """Token embeddings with image features placed one by one; positions -> cos/sin."""
    model = brain.model
    hidden = model.language_model.embed_tokens.weight[ids].clone()  # (B, L, H)
    image_id = model.config.image_token_id
    visual = ids == image_id
    deepstack = []
    if pixel_values is not None:
        feats, deepstack = vision(model, pixel_values, grid)
        n = 0
        for b in range(ids.shape[0]):
            for i in range(ids.shape[1]):
                if ids[b, i] == image_id:
                    hidden[b, i] = feats[n]
                    n += 1
    positions, _ = model.get_rope_index(
        ids,
        mm_token_type_ids=visual.int(),
        image_grid_thw=grid if pixel_values is not None else None,
        attention_mask=mask,
    )
    cos, sin = model.language_model.rotary_emb(hidden, positions)
    return hidden, cos, sin, visual, (deepstack if deepstack_on else [])


def add_deepstack(hidden, visual, deepstack, layer_idx):
    """Add DeepStack features of layer ``layer_idx`` token by token at image positions."""
    if layer_idx >= len(deepstack):
        return hidden
    hidden = hidden.clone()
    n = 0
    for b in range(hidden.shape[0]):
        for i in range(hidden.shape[1]):
            if visual[b, i]:
                hidden[b, i] = hidden[b, i] + deepstack[layer_idx][n]
                n += 1
    return hidden


@torch.no_grad()
def reference_forward(
    brains: TwinBrains,
    left_ids: torch.Tensor,
    left_mask: torch.Tensor,
    right_ids: torch.Tensor,
    right_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    state_token: torch.Tensor | None = None,
) -> ReferenceOutput:
    """The AsyMoT joint forward, slowly and explicitly.

    Args:
        brains: the model's brains (weights are read from them).
        left_ids: (B, L_f) left token ids.
        left_mask: (B, L_f) 1 at real tokens.
        right_ids: (B, L_t) right token ids.
        right_mask: (B, L_t) 1 at real tokens.
        pixel_values: shared image patches or None.
        image_grid_thw: (N_images, 3) or None.
        state_token: (B, 1, H) replacing ``<|propri|>`` (native mode).

    Returns:
        Left and right states and the masks used.
    """
    cfg = brains.config
    left, right = brains.left, brains.right
    hl, cos_l, sin_l, vis_l, ds_l = embed(
        left, left_ids, left_mask, pixel_values, image_grid_thw, cfg.deepstack
    )
    hr, cos_r, sin_r, vis_r, ds_r = embed(
        right, right_ids, right_mask, pixel_values, image_grid_thw, cfg.deepstack
    )
    if cfg.state_in_right_brain:
        for b in range(right_ids.shape[0]):
            for i in range(right_ids.shape[1]):
                if right_ids[b, i] == cfg.propri_token_id:
                    hr[b, i] = state_token[b, 0]

    rule_l = left_rule(left_mask.bool())
    rule_j = joint_rule(left_mask.bool(), right_mask.bool(), cfg.index_aligned_mask)
    selected = None
    for idx in range(cfg.num_layers):
        layer_l, layer_r = left.layers[idx], right.layers[idx]
        ql, kl, vl = project(layer_l, hl, cos_l, sin_l)
        qr, kr, vr = project(layer_r, hr, cos_r, sin_r)
        out_l = attention(ql, kl, vl, rule_l)
        out_r = attention(qr, torch.cat([kl, kr], dim=2), torch.cat([vl, vr], dim=2), rule_j)
        hl = mlp_block(layer_l, hl + linear(out_l, layer_l.self_attn.o_proj))
        hr = mlp_block(layer_r, hr + linear(out_r, layer_r.self_attn.o_proj))
        hl = add_deepstack(hl, vis_l, ds_l, idx)
        hr = add_deepstack(hr, vis_r, ds_r, idx)
        if idx == cfg.num_used_layers - 1:
            selected = hr
    left_hidden = rms_norm(hl, left.language_model.norm)
    right_hidden = rms_norm(selected, right.language_model.norm)
    rows = []
    for b in range(right_ids.shape[0]):
        rows.append(
            torch.stack(
                [
                    right_hidden[b, i]
                    for i in range(right_ids.shape[1])
                    if right_ids[b, i] == cfg.action_token_id
                ]
            )
        )
    return ReferenceOutput(
        left_hidden=left_hidden,
        right_hidden=right_hidden,
        action_states=torch.stack(rows),
        left_mask=rule_l,
        joint_mask=rule_j,
    )
