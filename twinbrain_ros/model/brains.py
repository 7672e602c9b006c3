# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The dual-brain core of TwinBrainVLA: a frozen left VLM, a trainable right VLM, and AsyMoT.

Both brains are transformers' own ``Qwen3VLModel`` (or ``Qwen2_5_VLModel``) without ``lm_head``: their
vision towers, embeddings, decoder-layer weights, rotary embeddings, attention kernels and MRoPE
position code are reused as they are. Only the layer loop is ours, because the right brain's
attention reads keys and values from two sources:

* The **left brain** (frozen generalist) runs first, once, under ``torch.no_grad()``, as a plain causal
  forward. Per layer it exports its keys and values after ``k_norm`` and RoPE, exactly what a KV cache
  of the stock model holds. Its last needed layer only projects K/V (no attention, o_proj or MLP) and
  its final norm never runs: nothing downstream reads them.
* The **right brain** (trainable specialist) has its own weights (initialised from the left's). In
  every layer its queries attend over ``[left K/V (no grad) ; right K/V]`` at the KV-head level (GQA),
  with one additive mask (``joint_mask``):

  - left block, native mode: every non-pad left key (prefix attention);
  - left block, reference mode: left key ``j`` only if ``j <= i`` in padded indices (the authors'
    index-aligned mask), pads excluded (their pad leak is a defect we do not copy);
  - right block: causal, pads excluded.

  Only K/V cross between brains, only left to right. Each brain keeps its norms, projections, MLPs.
* DeepStack (Qwen3-VL) is injected in both brains in native mode, like the stock model; in reference
  mode it is off and the vision towers are built without the DeepStack mergers.
* The right sequence is cut after its last ``<|action|>`` (later tokens cannot influence the queries
  under a causal mask) and only the K action-query rows get the final norm.

Usage:
    brains = TwinBrains(config)                          # config: TwinBrainConfig
    left = brains.run_left(left_ids, left_mask, pixel_values, image_grid_thw)
    queries = brains.run_right(right_ids, right_mask, pixel_values, image_grid_thw, left,
                               state_token=token)        # (B, K, H)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from twinbrain_ros.model.configuration import TwinBrainConfig


# --------------------------------------------------------------------------------------------------
# Masks (boolean: True = may attend); converted to additive form only at the kernel.
# --------------------------------------------------------------------------------------------------
def causal_self_mask(valid: torch.Tensor) -> torch.Tensor:
    """Causal self-attention mask over one brain's own tokens, pad keys excluded.

    Every query also sees itself, so a pad query never has an empty row: its (unused) output stays
    finite instead of NaN, which would otherwise reach valid rows through ``0 * NaN`` in ``softmax @ V``.

    Args:
        valid: (B, L) bool, True at real tokens.

    Returns:
        (B, 1, L, L) bool mask.
    """
    length = valid.shape[1]
    idx = torch.arange(length, device=valid.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L): key j <= query i
    allowed = causal[None] & valid[:, None, :]  # (B, L, L)
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=valid.device)[None]
    return allowed[:, None]  # (B, 1, L, L)


def joint_mask(left_valid: torch.Tensor, right_valid: torch.Tensor, *, index_aligned: bool) -> torch.Tensor:
    """The right brain's mask over ``[left keys ; right keys]``.

    Args:
        left_valid: (B, L_f) bool, True at real left tokens.
        right_valid: (B, L_t) bool, True at real right tokens.
        index_aligned: reference mode: right query ``i`` sees left key ``j`` only if ``j <= i`` (indices
            in the padded sequences, as the authors' mask does). Native mode (False): all valid left keys.

    Returns:
        (B, 1, L_t, L_f + L_t) bool mask. Left pad keys are never visible.
    """
    left_len, right_len = left_valid.shape[1], right_valid.shape[1]
    left_block = left_valid[:, None, :].expand(-1, right_len, -1)  # (B, L_t, L_f)
    if index_aligned:
        i = torch.arange(right_len, device=left_valid.device)[:, None]
        j = torch.arange(left_len, device=left_valid.device)[None, :]
        left_block = left_block & (j <= i)[None]
    right_block = causal_self_mask(right_valid)[:, 0]  # (B, L_t, L_t)
    return torch.cat([left_block, right_block], dim=-1)[:, None]  # (B, 1, L_t, L_f + L_t)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> additive float mask (0 where allowed, dtype min elsewhere), valid for eager and SDPA."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


# --------------------------------------------------------------------------------------------------
# One brain
# --------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One brain's layer-0 input and per-token constants.

    Attributes:
        hidden: (B, L, H) token embeddings with image features scattered in.
        cos: (B, L, head_dim) MRoPE cosine (interleaved layout for Qwen3-VL).
        sin: (B, L, head_dim) MRoPE sine.
        valid: (B, L) bool, True at real tokens.
        visual_mask: (B, L) bool, True at image tokens.
        deepstack: per-layer (N_img_tokens, H) features added after decoder layers 0.. (may be empty).
    """

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    valid: torch.Tensor
    visual_mask: torch.Tensor
    deepstack: list[torch.Tensor]


@dataclass
class LeftKV:
    """What the right brain needs from the left brain, per used layer.

    Attributes:
        keys: per layer (B, n_kv, L_f, head_dim), after k_norm and RoPE.
        values: per layer (B, n_kv, L_f, head_dim).
        valid: (B, L_f) bool, True at real left tokens.
        hidden: (B, L_f, H) final-normed last hidden state, only when requested (full forward).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    hidden: torch.Tensor | None = None


class LinearPatchEmbed(nn.Module):
    """The vision tower's patch embedding as one matrix product.

    Qwen-VL embeds each flattened (C, T_p, P, P) patch with a ``Conv3d`` whose kernel equals its stride
    and the patch, so the convolution is exactly ``x @ W.reshape(E, -1).T + b`` on the rows the
    processor already flattened. The CPU convolution kernel costs ~2.7x the matmul (256 patches of
    the ``small150m`` tower: 3.3 vs 1.2 ms on 2 cores, 6.1 vs 2.2 ms on 1). The wrapped ``proj`` is
    the stock ``Conv3d``, so parameter names and checkpoints are unchanged; ``use_conv`` switches
    back to the stock convolution (the slow reference uses it, see ``stock_vision_kernels``).

    Args:
        stock: transformers' patch-embedding module (``proj``: Conv3d, ``embed_dim``).
    """

    def __init__(self, stock: nn.Module) -> None:
        super().__init__()
        self.proj = stock.proj
        self.embed_dim = int(self.proj.out_channels)
        self.kernel = tuple(int(k) for k in self.proj.kernel_size)
        self.in_channels = int(self.proj.in_channels)
        self.use_conv = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        if self.use_conv:
            patches = hidden_states.view(-1, self.in_channels, *self.kernel).to(weight.dtype)
            return self.proj(patches).view(-1, self.embed_dim)
        flat = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
        return nn.functional.linear(flat, weight.reshape(self.embed_dim, -1), self.proj.bias)


class BatchedVisionAttention(nn.Module):
    """Qwen3-VL's vision self-attention with equal-size images as one batched attention call.

    Each image attends only to its own patches. Transformers runs that (without flash-attention) as
    one SDPA call per image and layer, ~0.4 ms each on CPU for a 224-pixel view, so a batch of 16
    views spends more time in call overhead than in arithmetic. When every image has the same patch
    count (the usual case: one resolution per camera), the (1, heads, N*S, hd) sequence is exactly
    (N, heads, S, hd) and one call computes the same block-diagonal attention (training: ~3x less
    time in vision attention, forward and backward). Mixed sizes, flash-attention and ``use_stock``
    fall back to the stock loop. ``qkv`` and ``proj`` are the stock layers, so parameter names and
    checkpoints are unchanged.

    Args:
        stock: transformers' ``Qwen3VLVisionAttention``.
    """

    def __init__(self, stock: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = stock.qkv, stock.proj
        for name in ("dim", "num_heads", "head_dim", "num_key_value_groups", "scaling", "config",
                     "attention_dropout", "is_causal"):  # fmt: skip
            setattr(self, name, getattr(stock, name))
        self._stock_forward = type(stock).forward
        self.use_stock = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        max_seqlen: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        flash = "flash" in str(getattr(self.config, "_attn_implementation", "") or "")
        if self.use_stock or flash or not lengths or len(set(lengths)) != 1:
            return self._stock_forward(
                self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs
            )
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

        n, s = len(lengths), lengths[0]
        qkv = self.qkv(hidden_states).reshape(n * s, 3, self.num_heads, -1).permute(1, 0, 2, 3)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)  # (N*S, heads, hd) each
        q, k, v = (t.reshape(n, s, self.num_heads, -1).transpose(1, 2) for t in (q, k, qkv[2]))
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attention_dropout if self.training else 0.0, scale=self.scaling
        )  # (N, heads, S, hd)
        return self.proj(out.transpose(1, 2).reshape(n * s, -1))


def batch_vision_attention(model: nn.Module) -> None:
    """Replace every Qwen3-VL vision attention under ``model`` by :class:`BatchedVisionAttention`."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionAttention

    for block in getattr(getattr(model, "visual", None), "blocks", []):
        if isinstance(block.attn, Qwen3VLVisionAttention):
            block.attn = BatchedVisionAttention(block.attn)


@contextmanager
def stock_vision_kernels(module: nn.Module):
    """Within the block, the vision towers under ``module`` run transformers' own kernels.

    Every ``LinearPatchEmbed`` runs its ``Conv3d`` and every ``BatchedVisionAttention`` its per-image
    loop (the slow reference does, and the tests that demand bit-identity with the stock model).
    """
    swaps = [(m, "use_conv") for m in module.modules() if isinstance(m, LinearPatchEmbed)]
    swaps += [(m, "use_stock") for m in module.modules() if isinstance(m, BatchedVisionAttention)]
    before = [getattr(m, flag) for m, flag in swaps]
    for m, flag in swaps:
        setattr(m, flag, True)
    try:
        yield
    finally:
        for (m, flag), value in zip(swaps, before, strict=True):
            setattr(m, flag, value)


def _build_hf_model(config: TwinBrainConfig, *, right: bool) -> nn.Module:
    hf_config = config.hf_config(right=right)
    if config.backbone_family == "qwen3_vl":
        from transformers import Qwen3VLModel

        model = Qwen3VLModel(hf_config)
    else:
        from transformers import Qwen2_5_VLModel

        model = Qwen2_5_VLModel(hf_config)
    model.visual.patch_embed = LinearPatchEmbed(model.visual.patch_embed)
    if config.backbone_family == "qwen3_vl":
        batch_vision_attention(model)
    return model


def _rope_function(family: str):
    # Each family's own rotary application (Qwen3-VL: interleaved MRoPE layout already in cos/sin).
    if family == "qwen3_vl":
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb
    else:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb
    return apply_rotary_pos_emb


def _attention_function(family: str, implementation: str):
    # transformers' own kernels; both accept a 4-D additive mask, which the joint mask needs.
    if implementation == "eager":
        if family == "qwen3_vl":
            from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward
        else:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward
        return eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"]


class Brain(nn.Module):
    """One Qwen-VL tower (vision + language model, no lm_head) and the per-layer steps of AsyMoT.

    Args:
        config: the TwinBrain config.
        right: build the right brain (its embedding may have ``right_vocab_size`` rows).
    """

    def __init__(self, config: TwinBrainConfig, *, right: bool) -> None:
        super().__init__()
        self.family = config.backbone_family
        self.model = _build_hf_model(config, right=right)
        self.image_token_id = int(self.model.config.image_token_id)
        self._rope = _rope_function(self.family)
        self._attend = _attention_function(self.family, config.attn_implementation)

    @property
    def language_model(self) -> nn.Module:
        """The transformers text model (embed_tokens, layers, norm, rotary_emb)."""
        return self.model.language_model

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers."""
        return self.model.language_model.layers

    # -- inputs ------------------------------------------------------------------------------------
    def image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run this brain's vision tower.

        Args:
            pixel_values: (N_patches, C * T_p * P * P) patches of all images, in batch order.
            image_grid_thw: (N_images, 3) patch grid per image.

        Returns:
            ``(embeds, deepstack)``: (N_img_tokens, H) merged features and the per-layer DeepStack
            features (each (N_img_tokens, H); empty when DeepStack is off).
        """
        visual = self.model.visual
        out = visual(pixel_values.to(visual.dtype), grid_thw=image_grid_thw)
        if hasattr(out, "pooler_output"):
            return out.pooler_output, list(getattr(out, "deepstack_features", None) or [])
        # Older transformers returned tuples: (embeds, deepstack) for Qwen3-VL, a tensor for Qwen2.5-VL.
        if isinstance(out, tuple):
            return out[0], list(out[1] or [])
        return out, []

    def position_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MRoPE position ids from this brain's own token layout (transformers' ``get_rope_index``).

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L) 1 at real tokens.
            image_grid_thw: (N_images, 3) or None.
            mm_token_type_ids: (B, L) 1 at image tokens; derived from ``input_ids`` when None.

        Returns:
            (3, B, L) long positions (temporal, height, width).
        """
        if mm_token_type_ids is None:
            mm_token_type_ids = (input_ids == self.image_token_id).int()
        positions, _ = self.model.get_rope_index(
            input_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            attention_mask=attention_mask,
        )
        return positions

    def prepare(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        *,
        mm_token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_deepstack: bool = True,
    ) -> Prepared:
        """Embed tokens, scatter image features, compute MRoPE cos/sin.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L) 1 at real tokens, 0 at pads.
            pixel_values: patches of all images (see ``image_features``) or None (text only).
            image_grid_thw: (N_images, 3) or None.
            mm_token_type_ids: optional (B, L) modality ids (1 = image).
            position_ids: optional precomputed (3, B, L) MRoPE positions (e.g. from the host at export).
            use_deepstack: keep the DeepStack features.

        Returns:
            The prepared layer-0 state.

        Raises:
            ValueError: if the number of image tokens does not match the image features.
        """
        hidden = self.language_model.embed_tokens(input_ids)  # (B, L, H)
        visual_mask = input_ids == self.image_token_id  # (B, L)
        deepstack: list[torch.Tensor] = []
        if pixel_values is not None:
            embeds, deepstack = self.image_features(pixel_values, image_grid_thw)
            n_tokens = int(visual_mask.sum())
            if n_tokens != embeds.shape[0]:
                raise ValueError(
                    f"{n_tokens} image tokens in input_ids but {embeds.shape[0]} image features "
                    f"(image_grid_thw={image_grid_thw.tolist()})"
                )
            hidden = hidden.masked_scatter(visual_mask[..., None], embeds.to(hidden.dtype))
        elif bool(visual_mask.any()):
            raise ValueError("input_ids contain image tokens but no pixel_values were given")
        if position_ids is None:
            grid = image_grid_thw if pixel_values is not None else None
            position_ids = self.position_ids(input_ids, attention_mask, grid, mm_token_type_ids)
        cos, sin = self.language_model.rotary_emb(hidden, position_ids)  # (B, L, head_dim) each
        return Prepared(
            hidden=hidden,
            cos=cos,
            sin=sin,
            valid=attention_mask.bool(),
            visual_mask=visual_mask,
            deepstack=[d.to(hidden.dtype) for d in deepstack] if use_deepstack else [],
        )

    # -- per-layer steps ---------------------------------------------------------------------------
    def qkv(
        self, layer_idx: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, need_q: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Project a normed input to queries, keys and values (q/k-norm where present, then RoPE).

        Args:
            layer_idx: decoder layer index.
            x: (B, L, H) output of the layer's input RMSNorm.
            cos: (B, L, head_dim) rotary cosine.
            sin: (B, L, head_dim) rotary sine.
            need_q: compute the queries (False for a K/V-only step).

        Returns:
            ``(q, k, v)``: (B, n_heads, L, hd) or None, (B, n_kv, L, hd), (B, n_kv, L, hd).
        """
        attn = self.layers[layer_idx].self_attn
        batch, length, _ = x.shape
        k = attn.k_proj(x).view(batch, length, -1, attn.head_dim)  # (B, L, n_kv, hd)
        v = attn.v_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, n_kv, L, hd)
        k_norm = getattr(attn, "k_norm", None)  # Qwen3: per-head RMSNorm; Qwen2.5: none
        if k_norm is not None:
            k = k_norm(k)
        k = k.transpose(1, 2)  # (B, n_kv, L, hd)
        if not need_q:
            # The rotary helper rotates a (q, k) pair; rotating k twice costs one small elementwise op.
            _, k = self._rope(k, k, cos, sin)
            return None, k, v
        q = attn.q_proj(x).view(batch, length, -1, attn.head_dim)  # (B, L, n_heads, hd)
        if k_norm is not None:
            q = attn.q_norm(q)
        q = q.transpose(1, 2)  # (B, n_heads, L, hd)
        q, k = self._rope(q, k, cos, sin)
        return q, k, v

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attention with this brain's kernel and output projection.

        Args:
            layer_idx: decoder layer index (whose GQA grouping, scaling and o_proj are used).
            q: (B, n_heads, L_q, hd) queries.
            k: (B, n_kv, L_k, hd) keys.
            v: (B, n_kv, L_k, hd) values.
            mask: (B, 1, L_q, L_k) additive mask.

        Returns:
            (B, L_q, H) attention output after o_proj.
        """
        attn = self.layers[layer_idx].self_attn
        out, _ = self._attend(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)  # (B, L_q, n_heads, hd)
        out = out.reshape(out.shape[0], out.shape[1], -1)  # (B, L_q, n_heads * hd)
        return attn.o_proj(out)

    def finish_layer(self, layer_idx: int, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual add of the attention output, then the layer's MLP block."""
        layer = self.layers[layer_idx]
        hidden = hidden + attn_out
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    @staticmethod
    def add_deepstack(prepared: Prepared, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """Add layer ``layer_idx``'s DeepStack features at the image positions (as stock Qwen3-VL)."""
        if layer_idx >= len(prepared.deepstack):
            return hidden
        mask = prepared.visual_mask
        return hidden.index_put((mask,), hidden[mask] + prepared.deepstack[layer_idx])


# --------------------------------------------------------------------------------------------------
# The two brains
# --------------------------------------------------------------------------------------------------
class TwinBrains(nn.Module):
    """Frozen left brain + trainable right brain, joined by AsyMoT (left K/V -> right attention).

    Args:
        config: the TwinBrain config. The right brain starts as a copy of the left brain's weights.
    """

    def __init__(self, config: TwinBrainConfig) -> None:
        super().__init__()
        self.config = config
        self.left = Brain(config, right=False)
        self.right = Brain(config, right=True)
        self.left.requires_grad_(False)
        self.left.eval()
        self.init_right_from_left()

    def train(self, mode: bool = True) -> TwinBrains:
        """Set train/eval mode; the frozen left brain always stays in eval mode."""
        super().train(mode)
        self.left.eval()
        return self

    # -- weights -----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_right_from_left(self) -> None:
        """Copy the left brain's weights into the right brain and initialise the new token rows.

        Rows beyond the left vocabulary (``right_vocab_size``) and the rows of ``<|propri|>`` and
        ``<|action|>`` (the ids the tokenizer actually assigned; the authors initialised unused rows
        instead, §7 item 5) get the mean of the left embedding rows.
        """
        left_sd = self.left.state_dict()
        right_sd = self.right.state_dict()
        key = "model.language_model.embed_tokens.weight"
        for name, value in left_sd.items():
            if name != key:
                right_sd[name].copy_(value)
        left_emb, right_emb = left_sd[key], right_sd[key]
        vocab = left_emb.shape[0]
        right_emb[:vocab].copy_(left_emb)
        special = [self.config.propri_token_id, self.config.action_token_id]
        keep = torch.ones(vocab, 1, dtype=left_emb.dtype, device=left_emb.device)  # (V, 1)
        keep[[s for s in special if s < vocab]] = 0
        # Weighted sum instead of boolean indexing, so this also runs on the meta device.
        mean = (left_emb * keep).sum(dim=0) / keep.sum()  # (H,)
        right_emb[vocab:] = mean
        right_emb[special] = mean

    @torch.no_grad()
    def load_backbone_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load pretrained backbone weights into the left brain, then initialise the right brain.

        Accepts a transformers ``Qwen*VLForConditionalGeneration`` or ``Qwen*VLModel`` state dict.
        ``lm_head`` is ignored (no logits are computed); DeepStack merger weights are ignored when
        DeepStack is off (reference mode builds no mergers).

        Args:
            state_dict: tensors keyed like transformers' checkpoints.

        Raises:
            ValueError: on missing or unexpected keys.
        """
        mapped = {}
        for name, value in state_dict.items():
            if name.startswith("lm_head."):
                continue
            name = name if name.startswith("model.") else f"model.{name}"
            if not self.config.deepstack and ".deepstack_merger_list." in name:
                continue
            mapped[name] = value
        missing, unexpected = self.left.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"backbone state dict mismatch: missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        self.init_right_from_left()

    # -- forward -----------------------------------------------------------------------------------
    @torch.no_grad()
    def run_left(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        *,
        mm_token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        num_layers: int | None = None,
        output_hidden: bool = False,
    ) -> LeftKV:
        """The frozen left brain: an ordinary causal forward that exports per-layer K/V.

        Runs under ``no_grad``: no graph is built through the left brain.

        Args:
            input_ids: (B, L_f) left token ids.
            attention_mask: (B, L_f) 1 at real tokens.
            pixel_values: shared image patches, or None.
            image_grid_thw: (N_images, 3) or None.
            mm_token_type_ids: optional (B, L_f) modality ids.
            position_ids: optional precomputed (3, B, L_f) positions.
            num_layers: layers whose K/V are needed (default: ``config.num_used_layers``).
            output_hidden: run every layer fully and return the final-normed hidden state (equal to
                the stock model's ``last_hidden_state``); otherwise the last needed layer only
                projects K/V.

        Returns:
            The per-layer left K/V (and hidden state when asked).
        """
        num_layers = self.config.num_used_layers if num_layers is None else num_layers
        if output_hidden:
            num_layers = self.config.num_layers
        brain = self.left
        prep = brain.prepare(
            input_ids,
            attention_mask,
            pixel_values,
            image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            position_ids=position_ids,
            use_deepstack=self.config.deepstack,
        )
        mask = additive_mask(causal_self_mask(prep.valid), prep.hidden.dtype)  # (B, 1, L_f, L_f)
        hidden = prep.hidden
        keys, values = [], []
        for idx in range(num_layers):
            x = brain.layers[idx].input_layernorm(hidden)
            last = idx == num_layers - 1
            if last and not output_hidden:
                _, k, v = brain.qkv(idx, x, prep.cos, prep.sin, need_q=False)
                keys.append(k)
                values.append(v)
                break
            q, k, v = brain.qkv(idx, x, prep.cos, prep.sin)
            keys.append(k)
            values.append(v)
            hidden = brain.finish_layer(idx, hidden, brain.attend(idx, q, k, v, mask))
            hidden = brain.add_deepstack(prep, idx, hidden)
        final = brain.language_model.norm(hidden) if output_hidden else None
        return LeftKV(keys=keys, values=values, valid=prep.valid, hidden=final)

    def run_right(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        left: LeftKV,
        *,
        state_token: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The right brain's joint forward; returns the final-normed action-query states.

        Args:
            input_ids: (B, L_t) right token ids with K ``<|action|>`` (and, native mode, one
                ``<|propri|>``) per sample.
            attention_mask: (B, L_t) 1 at real tokens.
            pixel_values: shared image patches, or None.
            image_grid_thw: (N_images, 3) or None.
            left: output of ``run_left`` for the same batch.
            state_token: (B, 1, H) projected state replacing the ``<|propri|>`` embedding (native mode).
            mm_token_type_ids: optional (B, L_t) modality ids.
            position_ids: optional precomputed (3, B, L_t) positions.
            output_hidden: also return the final-normed states of every computed position.

        Returns:
            (B, K, H) action-query hidden states of the selected layer, final-normed; with
            ``output_hidden`` also (B, L_keep, H) states of positions ``[0, L_keep)``, where ``L_keep``
            ends at the last ``<|action|>`` (later tokens are never computed).

        Raises:
            ValueError: on a wrong number of ``<|action|>``/``<|propri|>`` tokens, a missing state in
                native mode, or left K/V for too few layers.
        """
        cfg = self.config
        brain = self.right
        num_layers = cfg.num_used_layers
        if len(left.keys) < num_layers:
            raise ValueError(f"left K/V cover {len(left.keys)} layers, the right brain needs {num_layers}")
        batch = input_ids.shape[0]
        is_action = input_ids == cfg.action_token_id  # (B, L_t)
        counts = is_action.sum(dim=1)
        if bool((counts != cfg.num_action_queries).any()):
            raise ValueError(
                f"each sample needs {cfg.num_action_queries} <|action|> tokens, got {counts.tolist()}"
            )

        prep = brain.prepare(
            input_ids,
            attention_mask,
            pixel_values,
            image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            position_ids=position_ids,
            use_deepstack=cfg.deepstack,
        )
        hidden = prep.hidden
        is_propri = input_ids == cfg.propri_token_id  # (B, L_t)
        if cfg.state_in_right_brain:
            if state_token is None:
                raise ValueError("native mode needs a state token for the <|propri|> placeholder")
            n_propri = is_propri.sum(dim=1)
            if bool((n_propri != 1).any()):
                raise ValueError(f"each sample needs exactly one <|propri|> token, got {n_propri.tolist()}")
            hidden = torch.where(is_propri[..., None], state_token.to(hidden.dtype), hidden)  # (B, L_t, H)
        elif bool(is_propri.any()):
            raise ValueError("reference mode never puts <|propri|> into the right prompt")

        # Tokens after the last action query (and last image token) cannot influence the queries.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        needed = torch.where(is_action | prep.visual_mask, positions, -1)
        keep = int(needed.max()) + 1
        prep = replace(
            prep,
            hidden=hidden[:, :keep],  # (B, L_t, H) -> (B, L_keep, H)
            cos=prep.cos[:, :keep],
            sin=prep.sin[:, :keep],
            valid=prep.valid[:, :keep],
            visual_mask=prep.visual_mask[:, :keep],
        )
        hidden = prep.hidden
        is_action = is_action[:, :keep]

        mask = additive_mask(
            joint_mask(left.valid, prep.valid, index_aligned=cfg.index_aligned_mask), hidden.dtype
        )  # (B, 1, L_keep, L_f + L_keep)
        for idx in range(num_layers):
            x = brain.layers[idx].input_layernorm(hidden)
            q, k, v = brain.qkv(idx, x, prep.cos, prep.sin)
            # Stop-gradient on the left stream: it was computed under no_grad; detach documents it.
            k_joint = torch.cat([left.keys[idx].detach(), k], dim=2)  # (B, n_kv, L_f + L_keep, hd)
            v_joint = torch.cat([left.values[idx].detach(), v], dim=2)  # (B, n_kv, L_f + L_keep, hd)
            hidden = brain.finish_layer(idx, hidden, brain.attend(idx, q, k_joint, v_joint, mask))
            hidden = brain.add_deepstack(prep, idx, hidden)

        queries = hidden[is_action].view(batch, cfg.num_action_queries, -1)  # (B*K, H) -> (B, K, H)
        queries = brain.language_model.norm(queries)
        if output_hidden:
            return queries, brain.language_model.norm(hidden)
        return queries
