# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Export-friendly ``nn.Module`` wrappers around the model's pieces: fixed shapes, no host syncs.

Each wrapper composes the model's own modules and weights (no copies) and replaces every
data-dependent step of the eager model with a static one whose inputs the host computes
(``host.py``):

==========================  ==========================================================================
eager model                 graph
==========================  ==========================================================================
``get_rope_index`` + rotary  ``cos``/``sin`` tables are inputs
vision ``grid_thw`` loops    rotary tables and position-embedding taps are inputs; images of one
                             profile share one grid, so per-image attention is a batch dimension
``masked_scatter``           ``image_index`` gather from ``[image_embeds ; 0]`` + ``where``
DeepStack ``index_put``      gather-add of ``[deepstack ; 0]`` (adding an exact zero elsewhere)
4-D additive masks           boolean masks are inputs; ``where`` to the dtype's minimum
``hidden[is_action]``        ``gather`` with host ``action_index``
count checks, ``.any()``     done on the host before the call
Euler loop                   unrolled (fixed N, taus are constants) or one step with ``tau``/``dt``
==========================  ==========================================================================

Graphs (input names in order; shapes for a profile with B samples, V views, S patches per view, N_t
image tokens in total, L_f / L_t text buckets, n_l used layers, n_kv KV heads, hd head_dim):

* ``VisionGraph``: pixel_values (B*V*S, C*T*P*P), rot_cos/rot_sin (S, hd_v), pos_index/pos_weight
  (S, 4) -> image_embeds (N_t, H) [, deepstack_embeds (n_ds, N_t, H)].
* ``LeftBrainGraph``: input_ids (B, L_f), image_index (B, L_f), attn_mask (B, 1, L_f, L_f) bool,
  cos/sin (B, L_f, hd), image_embeds [, deepstack_embeds] -> left_keys/left_values
  (n_l, B, n_kv, L_f, hd).
* ``RightBrainGraph``: input_ids (B, L_t), image_index, joint_mask (B, 1, L_t, L_f + L_t) bool, cos,
  sin, action_index (B, K), image_embeds [, deepstack_embeds], left_keys, left_values [, state,
  state_mask (B, S_max)] -> action_queries (B, K, H).
* ``ExpertStepGraph``: action_queries [, state], x (B, T, A), tau (1,), dt (1,) -> x_next.
* ``ExpertLoopGraph``: action_queries [, state], noise (B, T, A) -> actions (B, T, A).

Usage:
    graphs = build_graphs(model, spec, profile)            # name -> GraphDef (module + I/O names)
    inputs = example_inputs(graphs, prepared, ...)         # see onnx_export.py
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from twinbrain_ros.export.host import HostSpec, Profile

VISION_LEFT = "vision_left"
VISION_RIGHT = "vision_right"
LEFT_BRAIN = "left_brain"
RIGHT_BRAIN = "right_brain"
EXPERT_STEP = "expert_step"
EXPERT_LOOP = "expert_loop"
GRAPH_NAMES = (VISION_LEFT, VISION_RIGHT, LEFT_BRAIN, RIGHT_BRAIN, EXPERT_STEP, EXPERT_LOOP)


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Softmax attention with GQA and an optional boolean mask; softmax in float32 (as HF eager).

    Args:
        q: (B, nh, L_q, hd).
        k: (B, n_kv, L_k, hd).
        v: (B, n_kv, L_k, hd).
        mask: (B, 1, L_q, L_k) bool (True = may attend) or None.
        scaling: score scale.

    Returns:
        (B, L_q, nh * hd).
    """
    batch, heads, length, head_dim = q.shape
    rep = heads // k.shape[1]
    if rep > 1:
        # (B, n_kv, L, hd) -> (B, n_kv, rep, L, hd) -> (B, nh, L, hd); same grouping as HF repeat_kv
        k = k[:, :, None].expand(-1, -1, rep, -1, -1).reshape(batch, heads, k.shape[2], head_dim)
        v = v[:, :, None].expand(-1, -1, rep, -1, -1).reshape(batch, heads, v.shape[2], head_dim)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scaling  # (B, nh, L_q, L_k)
    if mask is not None:
        scores = torch.where(mask, scores, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    out = torch.matmul(probs, v)  # (B, nh, L_q, hd)
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _scatter_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[rows ; 0][index]``: (N, H) rows gathered at (B, L) indices, N selecting the zero row."""
    padded = torch.cat([rows, rows.new_zeros(1, rows.shape[-1])], dim=0)  # (N + 1, H)
    return padded[index]  # (B, L, H)


# --------------------------------------------------------------------------------------------------
# Vision tower
# --------------------------------------------------------------------------------------------------
class VisionGraph(nn.Module):
    """A brain's Qwen3-VL vision tower for a fixed number of same-size views.

    Args:
        brain: the ``Brain`` whose tower is wrapped (weights shared, not copied).
        num_images: views per call (B * V).
        patches_per_image: S = h * w patches per view.
        deepstack: emit the DeepStack features (native mode).
    """

    def __init__(self, brain: nn.Module, num_images: int, patches_per_image: int, deepstack: bool) -> None:
        super().__init__()
        self.visual = brain.model.visual
        self.num_images = num_images
        self.patches = patches_per_image
        self.deepstack = deepstack and len(getattr(self.visual, "deepstack_visual_indexes", []) or []) > 0

    def forward(
        self,
        pixel_values: torch.Tensor,
        rot_cos: torch.Tensor,
        rot_sin: torch.Tensor,
        pos_index: torch.Tensor,
        pos_weight: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode the views; see the module docstring for shapes."""
        visual = self.visual
        n, s = self.num_images, self.patches
        dtype = visual.patch_embed.proj.weight.dtype
        x = visual.patch_embed(pixel_values)  # brains.LinearPatchEmbed: one MatMul, no Conv3d
        pos = (visual.pos_embed(pos_index) * pos_weight[..., None].to(dtype)).sum(1)  # (S, 4, C) -> (S, C)
        x = x.reshape(n, s, -1) + pos  # (N*S, C) -> (N, S, C)
        cos, sin = rot_cos.float(), rot_sin.float()  # (S, hd_v); rotary in float32, as HF
        features = []
        ds_layers = list(getattr(visual, "deepstack_visual_indexes", []) or [])
        for layer, block in enumerate(visual.blocks):
            attn = block.attn
            h = block.norm1(x)
            qkv = attn.qkv(h).reshape(n, s, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, N, nh, S, hd)
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = (q.float() * cos + _rotate_half(q.float()) * sin).to(q.dtype)
            k = (k.float() * cos + _rotate_half(k.float()) * sin).to(k.dtype)
            x = x + attn.proj(_attention(q, k, v, None, attn.scaling))  # per-view attention
            x = x + block.mlp(block.norm2(x))
            if self.deepstack and layer in ds_layers:
                merger = visual.deepstack_merger_list[ds_layers.index(layer)]
                features.append(merger(x.reshape(n * s, -1)))  # (N_t, H)
        embeds = visual.merger(x.reshape(n * s, -1))  # (N*S, C) -> (N_t, H)
        if self.deepstack:
            return embeds, torch.stack(features)  # (n_ds, N_t, H)
        return embeds


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


# --------------------------------------------------------------------------------------------------
# Brains
# --------------------------------------------------------------------------------------------------
class _BrainLayers(nn.Module):
    """Shared pieces of the two brain graphs."""

    def __init__(self, brain: nn.Module, num_layers: int, deepstack_layers: int) -> None:
        super().__init__()
        self.brain = brain
        self.num_layers = num_layers
        self.deepstack_layers = deepstack_layers

    def embed(
        self, input_ids: torch.Tensor, image_index: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.brain.language_model.embed_tokens(input_ids)  # (B, L, H)
        visual = (image_index < image_embeds.shape[0])[..., None]  # (B, L, 1)
        return torch.where(visual, _scatter_rows(image_embeds.to(hidden.dtype), image_index), hidden)

    def layer(
        self,
        idx: int,
        hidden: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
        image_index: torch.Tensor,
        deepstack: torch.Tensor | None,
    ) -> torch.Tensor:
        attn = self.brain.layers[idx].self_attn
        out = attn.o_proj(_attention(q, k, v, mask, attn.scaling))  # (B, L, H)
        hidden = self.brain.finish_layer(idx, hidden, out)
        if deepstack is not None and idx < self.deepstack_layers:
            hidden = hidden + _scatter_rows(deepstack[idx].to(hidden.dtype), image_index)
        return hidden


class LeftBrainGraph(_BrainLayers):
    """The frozen left brain: a causal forward that returns its per-layer K/V (stacked).

    Args:
        brains: the ``TwinBrains``.
        num_layers: layers whose K/V the right brain needs (the last one only projects K/V).
        deepstack: inject DeepStack features (native mode).
    """

    def __init__(self, brains: nn.Module, num_layers: int, deepstack: bool, deepstack_layers: int) -> None:
        super().__init__(brains.left, num_layers, deepstack_layers if deepstack else 0)
        self.deepstack = deepstack

    def forward(
        self,
        input_ids: torch.Tensor,
        image_index: torch.Tensor,
        attn_mask: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        image_embeds: torch.Tensor,
        deepstack_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the left brain; see the module docstring for shapes."""
        brain = self.brain
        hidden = self.embed(input_ids, image_index, image_embeds)
        cos, sin = cos.to(hidden.dtype), sin.to(hidden.dtype)
        keys, values = [], []
        for idx in range(self.num_layers):
            x = brain.layers[idx].input_layernorm(hidden)
            if idx == self.num_layers - 1:
                _, k, v = brain.qkv(idx, x, cos, sin, need_q=False)
                keys.append(k)
                values.append(v)
                break
            q, k, v = brain.qkv(idx, x, cos, sin)
            keys.append(k)
            values.append(v)
            hidden = self.layer(idx, hidden, q, k, v, attn_mask, image_index, deepstack_embeds)
        return torch.stack(keys), torch.stack(values)  # (n_l, B, n_kv, L_f, hd) each


class RightBrainGraph(_BrainLayers):
    """The right brain's joint forward over ``[left K/V ; right K/V]``; returns the action-query states.

    Args:
        model: the ``TwinBrainModel`` (brains, state encoder, expert dtype).
        num_layers: layers up to ``select_layer``.
        deepstack: inject DeepStack features (native mode).
    """

    def __init__(self, model: nn.Module, num_layers: int, deepstack: bool, deepstack_layers: int) -> None:
        super().__init__(model.brains.right, num_layers, deepstack_layers if deepstack else 0)
        self.state_encoder = model.state_encoder
        self.propri_token_id = int(model.config.propri_token_id)
        self.out_dtype = model.action_expert.dtype
        self.deepstack = deepstack

    def forward(
        self,
        input_ids: torch.Tensor,
        image_index: torch.Tensor,
        joint_mask: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        action_index: torch.Tensor,
        image_embeds: torch.Tensor,
        left_keys: torch.Tensor,
        left_values: torch.Tensor,
        deepstack_embeds: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the right brain; see the module docstring for shapes."""
        brain = self.brain
        hidden = self.embed(input_ids, image_index, image_embeds)
        if self.state_encoder is not None:
            token = self.state_encoder(state, state_mask).to(hidden.dtype)  # (B, 1, H)
            hidden = torch.where((input_ids == self.propri_token_id)[..., None], token, hidden)
        cos, sin = cos.to(hidden.dtype), sin.to(hidden.dtype)
        for idx in range(self.num_layers):
            x = brain.layers[idx].input_layernorm(hidden)
            q, k, v = brain.qkv(idx, x, cos, sin)
            k = torch.cat([left_keys[idx].to(k.dtype), k], dim=2)  # (B, n_kv, L_f + L_t, hd)
            v = torch.cat([left_values[idx].to(v.dtype), v], dim=2)
            hidden = self.layer(idx, hidden, q, k, v, joint_mask, image_index, deepstack_embeds)
        index = action_index[..., None].expand(-1, -1, hidden.shape[-1])  # (B, K, H)
        queries = torch.gather(hidden, 1, index)  # (B, L_t, H) -> (B, K, H)
        return brain.language_model.norm(queries).to(self.out_dtype)


# --------------------------------------------------------------------------------------------------
# Action expert
# --------------------------------------------------------------------------------------------------
class ExpertStepGraph(nn.Module):
    """One Euler step of the action expert: ``x + dt * velocity(x, tau)``.

    Args:
        expert: the ``ActionExpert``.
        with_state: the expert reads the state (``use_state_token``).
    """

    def __init__(self, expert: nn.Module, with_state: bool) -> None:
        super().__init__()
        self.expert = expert
        self.with_state = with_state

    def forward(
        self,
        action_queries: torch.Tensor,
        state: torch.Tensor | None,
        x: torch.Tensor,
        tau: torch.Tensor,
        dt: torch.Tensor,
    ) -> torch.Tensor:
        """(B, K, H) queries, (B, S_max) state or None, (B, T, A) x, (1,) bucket, (1,) step -> x_next."""
        expert = self.expert
        ctx = expert.prepare_condition(action_queries, state)
        tc = expert.time_conditioning(tau)  # M = 1
        v = expert._velocity(ctx, x, tc)  # (B, T, A)
        return x + dt * v.to(x.dtype)


class ExpertLoopGraph(nn.Module):
    """The whole N-step Euler loop, unrolled; the noise is an input.

    Args:
        expert: the ``ActionExpert``.
        with_state: the expert reads the state.
        taus: the N timestep buckets of ``t = k / N`` (``HostSpec.euler_taus``).
    """

    def __init__(self, expert: nn.Module, with_state: bool, taus: list[int]) -> None:
        super().__init__()
        self.expert = expert
        self.with_state = with_state
        self.register_buffer("taus", torch.tensor(taus, dtype=torch.float32), persistent=False)

    def forward(
        self, action_queries: torch.Tensor, state: torch.Tensor | None, noise: torch.Tensor
    ) -> torch.Tensor:
        """(B, K, H) queries, (B, S_max) state or None, (B, T, A) noise -> (B, T, A) actions."""
        expert = self.expert
        n = self.taus.shape[0]
        ctx = expert.prepare_condition(action_queries, state)
        tc_all = expert.time_conditioning(self.taus)  # (N, D) per tensor; folded to constants
        x = noise
        for k in range(n):
            v = expert._velocity(ctx, x, tc_all.select(k))
            x = x + (1.0 / n) * v.to(x.dtype)
        return x


# --------------------------------------------------------------------------------------------------
# All graphs of a model
# --------------------------------------------------------------------------------------------------
@dataclass
class GraphDef:
    """One graph to export: the module and its I/O names (inputs in forward order).

    Attributes:
        name: graph name (file stem).
        module: the wrapper module.
        inputs: input names.
        outputs: output names.
    """

    name: str
    module: nn.Module
    inputs: list[str]
    outputs: list[str]

    def __post_init__(self) -> None:
        """Record the forward signature now (a later ``torch.compile`` wrapper hides it)."""
        self.signature = list(inspect.signature(self.module.forward).parameters)

    def args(self, feeds: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        """Positional arguments of ``module.forward`` from named feeds (None for absent optional inputs).

        Raises:
            ValueError: if a declared input is missing from ``feeds``.
        """
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ValueError(f"graph {self.name!r} misses inputs {missing}")
        return tuple(feeds[n] if n in self.inputs else None for n in self.signature)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the wrapper in PyTorch; returns outputs by name."""
        out = self.module(*self.args(feeds))
        out = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.outputs, out, strict=True))


def vision_towers_equal(model: nn.Module) -> bool:
    """Whether the two brains' vision towers hold identical weights (one vision graph serves both)."""
    left = model.brains.left.model.visual.state_dict()
    right = model.brains.right.model.visual.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def build_graphs(
    model: nn.Module, spec: HostSpec, profile: Profile, share_vision: bool | None = None
) -> dict[str, GraphDef]:
    """The export wrappers of a ``TwinBrainModel`` for one profile.

    Args:
        model: the model (eval mode; its dtype is the graphs' dtype).
        spec: host constants.
        profile: the deployment profile.
        share_vision: one vision graph for both brains; default: when their weights are equal.

    Returns:
        Graph name -> definition; ``vision_right`` is absent when the towers are shared.

    Raises:
        ValueError: for a backbone family the export does not cover.
    """
    cfg = model.config
    if cfg.backbone_family != "qwen3_vl":
        raise ValueError(
            f"export covers qwen3_vl backbones; {cfg.backbone_family!r} needs its own vision graph "
            "(windowed attention) and rotary tables"
        )
    profile.check(spec)
    deepstack = bool(cfg.deepstack)
    n_ds = len(cfg.backbone["vision_config"].get("deepstack_visual_indexes", []) or []) if deepstack else 0
    if share_vision is None:
        share_vision = vision_towers_equal(model)
    vision_out = ["image_embeds", "deepstack_embeds"] if n_ds else ["image_embeds"]
    vision_in = ["pixel_values", "rot_cos", "rot_sin", "pos_index", "pos_weight"]
    n_img, s = profile.num_images(), profile.patches_per_image(spec)
    graphs = {
        VISION_LEFT: GraphDef(
            VISION_LEFT, VisionGraph(model.brains.left, n_img, s, n_ds > 0), vision_in, vision_out
        ),
    }
    if not share_vision:
        graphs[VISION_RIGHT] = GraphDef(
            VISION_RIGHT, VisionGraph(model.brains.right, n_img, s, n_ds > 0), vision_in, vision_out
        )
    ds_in = ["deepstack_embeds"] if n_ds else []
    graphs[LEFT_BRAIN] = GraphDef(
        LEFT_BRAIN,
        LeftBrainGraph(model.brains, cfg.num_used_layers, n_ds > 0, n_ds),
        ["input_ids", "image_index", "attn_mask", "cos", "sin", "image_embeds", *ds_in],
        ["left_keys", "left_values"],
    )
    state_in = ["state", "state_mask"] if cfg.state_in_right_brain else []
    graphs[RIGHT_BRAIN] = GraphDef(
        RIGHT_BRAIN,
        RightBrainGraph(model, cfg.num_used_layers, n_ds > 0, n_ds),
        ["input_ids", "image_index", "joint_mask", "cos", "sin", "action_index", "image_embeds",
         "left_keys", "left_values", *ds_in, *state_in],
        ["action_queries"],
    )  # fmt: skip
    expert_state = ["state"] if cfg.state_to_expert else []
    graphs[EXPERT_STEP] = GraphDef(
        EXPERT_STEP,
        ExpertStepGraph(model.action_expert, cfg.state_to_expert),
        ["action_queries", *expert_state, "x", "tau", "dt"],
        ["x_next"],
    )
    graphs[EXPERT_LOOP] = GraphDef(
        EXPERT_LOOP,
        ExpertLoopGraph(model.action_expert, cfg.state_to_expert, spec.euler_taus()),
        ["action_queries", *expert_state, "noise"],
        ["actions"],
    )
    for graph in graphs.values():
        graph.module.eval()
    return graphs


def host_spec_for(model: nn.Module, num_steps: int | None = None) -> HostSpec:
    """The host constants of a ``TwinBrainModel`` (read from its modules, so they match exactly).

    Args:
        model: the model.
        num_steps: Euler steps of the unrolled expert graph (default: the expert config's).

    Returns:
        The ``HostSpec`` stored in ``export.json``.

    Raises:
        ValueError: for a rotary type whose tables are not a fixed function of the positions.
    """
    cfg = model.config
    lm = model.brains.left.language_model
    rotary = lm.rotary_emb
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in ("default", "linear"):
        raise ValueError(f"rope_type {rope_type!r} is not exportable with host rotary tables")
    visual = model.brains.left.model.visual
    hf = model.brains.left.model.config
    vision = cfg.backbone["vision_config"]
    expert = cfg.action_expert
    steps = expert.num_inference_steps if num_steps is None else int(num_steps)
    if steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {steps}")
    return HostSpec(
        image_token_id=int(model.brains.left.image_token_id),
        action_token_id=int(cfg.action_token_id),
        propri_token_id=int(cfg.propri_token_id),
        num_action_queries=int(cfg.num_action_queries),
        index_aligned_mask=bool(cfg.index_aligned_mask),
        state_in_right_brain=bool(cfg.state_in_right_brain),
        state_to_expert=bool(cfg.state_to_expert),
        max_state_dim=int(cfg.max_state_dim),
        spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
        patch_size=int(vision.get("patch_size", 16)),
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
        in_channels=int(vision.get("in_channels", 3)),
        num_grid_per_side=int(int(vision.get("num_position_embeddings", 2304)) ** 0.5),
        text_inv_freq=tuple(float(v) for v in rotary.inv_freq.float().cpu()),
        text_attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
        mrope_section=tuple(int(v) for v in rotary.mrope_section),
        vision_inv_freq=tuple(float(v) for v in visual.rotary_pos_emb.inv_freq.float().cpu()),
        horizon=int(expert.horizon),
        action_dim=int(expert.action_dim),
        num_steps=steps,
        num_timestep_buckets=int(expert.num_timestep_buckets),
        vision_start_token_id=int(hf.vision_start_token_id),
        vision_end_token_id=int(hf.vision_end_token_id),
        vocab_size=int(cfg.backbone["text_config"]["vocab_size"]),
    )
