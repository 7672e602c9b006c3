# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Flow-matching DiT action expert (GR00T-N1.5 style) conditioned on the right brain's action queries.

The expert turns the right brain's K action-query hidden states ``cond`` (B, K, cond_dim), and
optionally a proprioceptive state, into a normalised action chunk (B, H, A) by integrating a learned
velocity field from noise (t = 0) to data (t = 1) with a few Euler steps.

Token sequence fed to the DiT, per sample::

    [ state token (optional) ; F learned future tokens ; H action tokens ]

Blocks alternate: even blocks cross-attend to ``cond``, odd blocks self-attend over the sequence.
Every block is pre-norm with adaptive LayerNorm (scale and shift from the timestep embedding); the
output head is an adaptive LayerNorm, a projection and a small MLP decoder applied to the action
tokens.

Differences from the reference head, on purpose:
  * Everything constant across Euler steps is computed once per call (:meth:`ActionExpert.prepare_condition`):
    the cross-attention K/V of every cross block, the state token and the future tokens. The timestep
    embeddings and every block's adaLN modulation for the N fixed Euler times are computed in one
    batched call before the loop.
  * Noise and training times come from an optional ``torch.Generator`` (deterministic); noise is
    drawn in float32 and the Euler state is integrated in float32 even for a low-precision model.
  * Training times are clamped as specified (``t >= 0``); padded action dims can be masked out of the
    loss; the horizon is defined once (``horizon``); noise repetition is a config field that is
    actually used (``repeated_diffusion_steps``); a state passed to a model without a state token, or
    missing for one that has it, raises instead of being silently ignored.
  * The learned position table holds ``horizon`` rows, not 1024 (only those are ever read).

Reference checkpoint mapping: :func:`convert_reference_state_dict` maps ``action_model.*`` keys of the
reference layout to this module's names; the table is :func:`reference_key_map`.

Usage:
    config = ActionExpertConfig.dit_b(action_dim=7, horizon=16)
    expert = ActionExpert(config)
    loss = expert.loss(cond, actions, generator=gen)               # training
    chunk = expert.sample(cond, generator=gen)                     # (B, H, A), 4 Euler steps
    ctx = expert.prepare_condition(cond)                           # or step by step:
    v = expert.velocity(ctx, x_t, 0.25)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twinbrain_ros.model.flow_matching import (
    euler_integrate,
    flow_matching_loss,
    interpolate,
    sample_beta_times,
)

# The reference DiT's output LayerNorm uses 1e-6 while its blocks use norm_eps (1e-5).
_OUTPUT_NORM_EPS = 1e-6
# Sinusoid base period, shared by both time encodings.
_MAX_PERIOD = 10000.0


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionExpertConfig:
    """Configuration of the flow-matching DiT action expert.

    Attributes:
        hidden_size: DiT width D (768 for DiT-B).
        num_layers: number of DiT blocks; block i cross-attends if i is even, self-attends if odd.
        num_heads: attention heads; ``head_dim = hidden_size // num_heads``.
        cond_dim: width of the conditioning tokens (the right brain's hidden size, 2560 for 4B).
        action_dim: action dimension A.
        horizon: action chunk length H (the single source of truth for it).
        num_inference_steps: default number of Euler steps N for :meth:`ActionExpert.sample`.
        state_dim: proprioceptive state dimension S (0 when no state is used).
        use_state_token: whether a state token (MLP S -> head_hidden_size -> D) leads the sequence.
        num_future_tokens: number F of learned "future" tokens between state and action tokens.
        timestep_embed_dim: width of the sinusoidal timestep features fed to the timestep MLP.
        num_timestep_buckets: t in [0, 1] is discretised as ``floor(t * buckets)`` before embedding.
        mlp_ratio: feed-forward inner width is ``mlp_ratio * hidden_size``.
        output_dim: width of the DiT output projection (the reference ``output_dim``).
        head_hidden_size: hidden width of the state encoder and action decoder MLPs (the reference
            ``action_model.hidden_size``).
        norm_eps: LayerNorm epsilon inside the blocks.
        dropout: dropout on attention outputs and in the feed-forward (training only).
        beta_alpha: alpha of the Beta distribution of training times.
        beta_beta: beta of the Beta distribution of training times.
        beta_s: cut-off s of the training-time transform ``t = (s - u) / s``.
        repeated_diffusion_steps: noise samples per example in :meth:`ActionExpert.loss` (the
            condition is computed once and tiled; the reference trainer used 4).
    """

    hidden_size: int = 768
    num_layers: int = 16
    num_heads: int = 12
    cond_dim: int = 2560
    action_dim: int = 7
    horizon: int = 16
    num_inference_steps: int = 4
    state_dim: int = 0
    use_state_token: bool = False
    num_future_tokens: int = 32
    timestep_embed_dim: int = 256
    num_timestep_buckets: int = 1000
    mlp_ratio: int = 4
    output_dim: int = 1024
    head_hidden_size: int = 1024
    norm_eps: float = 1e-5
    dropout: float = 0.0
    beta_alpha: float = 1.5
    beta_beta: float = 1.0
    beta_s: float = 0.999
    repeated_diffusion_steps: int = 1

    def __post_init__(self) -> None:
        """Validates every field; raises ValueError naming the offending values."""
        positive = (
            "hidden_size", "num_layers", "num_heads", "cond_dim", "action_dim", "horizon",
            "num_inference_steps", "timestep_embed_dim", "num_timestep_buckets", "mlp_ratio",
            "output_dim", "head_hidden_size", "repeated_diffusion_steps",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("state_dim", "num_future_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not isinstance(self.use_state_token, bool):
            raise ValueError(f"use_state_token must be a bool, got {self.use_state_token!r}")
        for name in ("norm_eps", "dropout", "beta_alpha", "beta_beta", "beta_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.hidden_size % 2 != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be even (sin/cos halves)")
        if self.timestep_embed_dim % 2 != 0 or self.timestep_embed_dim < 4:
            raise ValueError(f"timestep_embed_dim ({self.timestep_embed_dim}) must be even and >= 4")
        if self.use_state_token and self.state_dim == 0:
            raise ValueError(
                f"use_state_token ({self.use_state_token}) needs state_dim > 0, got {self.state_dim}"
            )
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.beta_alpha <= 0 or self.beta_beta <= 0:
            raise ValueError(
                f"beta_alpha ({self.beta_alpha}) and beta_beta ({self.beta_beta}) must both be > 0"
            )
        if not 0.0 < self.beta_s <= 1.0:
            raise ValueError(f"beta_s must be in (0, 1], got {self.beta_s}")

    @property
    def head_dim(self) -> int:
        """Per-head attention width."""
        return self.hidden_size // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the action tokens: the optional state token plus the future tokens."""
        return int(self.use_state_token) + self.num_future_tokens

    @property
    def seq_len(self) -> int:
        """Length of the DiT token sequence (49 for DiT-B with a state token and H = 16)."""
        return self.num_prefix_tokens + self.horizon

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionExpertConfig:
        """Builds a config from a dict; unknown keys raise instead of being ignored.

        Args:
            data: field name -> value; missing fields take their defaults.

        Returns:
            The validated config.

        Raises:
            ValueError: on unknown keys or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ActionExpertConfig keys: {unknown}")
        return cls(**dict(data))

    # Presets. Each accepts field overrides, e.g. ``ActionExpertConfig.dit_b(action_dim=29)``.

    @classmethod
    def dit_b(cls, **overrides: Any) -> ActionExpertConfig:
        """DiT-B for the Qwen3-VL-4B brains: 16 blocks, 768 = 12 x 64, cond 2560 (about 0.16 B params)."""
        base: dict[str, Any] = {
            "hidden_size": 768, "num_layers": 16, "num_heads": 12, "cond_dim": 2560, "num_future_tokens": 32,
            "timestep_embed_dim": 256, "output_dim": 1024, "head_hidden_size": 1024, "dropout": 0.2,
        }  # fmt: skip
        return cls(**{**base, **overrides})

    @classmethod
    def dit_l(cls, **overrides: Any) -> ActionExpertConfig:
        """DiT-L: 16 blocks, 1536 = 32 x 48, cond 2560."""
        base: dict[str, Any] = {
            "hidden_size": 1536, "num_layers": 16, "num_heads": 32, "cond_dim": 2560, "num_future_tokens": 32,
            "timestep_embed_dim": 256, "output_dim": 1024, "head_hidden_size": 1024, "dropout": 0.2,
        }  # fmt: skip
        return cls(**{**base, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> ActionExpertConfig:
        """A small expert for quick experiments (4 blocks, width 256)."""
        base: dict[str, Any] = {
            "hidden_size": 256, "num_layers": 4, "num_heads": 4, "cond_dim": 512, "num_future_tokens": 8,
            "timestep_embed_dim": 64, "output_dim": 256, "head_hidden_size": 256,
        }  # fmt: skip
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> ActionExpertConfig:
        """A tiny expert for unit tests and the committed demo model (2 blocks, width 32)."""
        base: dict[str, Any] = {
            "hidden_size": 32, "num_layers": 2, "num_heads": 2, "cond_dim": 16, "action_dim": 3, "horizon": 4,
            "num_future_tokens": 2, "timestep_embed_dim": 16, "output_dim": 32, "head_hidden_size": 32,
        }  # fmt: skip
        return cls(**{**base, **overrides})


# ------------------------------------------------------------------------------------------------
# Time encodings
# ------------------------------------------------------------------------------------------------


def timestep_sinusoid(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer timesteps for the timestep MLP: ``[cos | sin]``.

    Frequencies are ``exp(-ln(10000) * i / (dim/2 - 1))``, i = 0 .. dim/2 - 1 (the diffusers
    ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=1)`` convention the reference uses).

    Args:
        tau: (M,) timestep buckets.
        dim: even feature width.

    Returns:
        (M, dim) float32 features.
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=tau.device)
    freqs = torch.exp(-math.log(_MAX_PERIOD) * i / (half - 1))  # (half,)
    angles = tau.to(torch.float32)[:, None] * freqs[None, :]  # (M, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (M, dim)


def action_time_sinusoid(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer timesteps for the action encoder: ``[sin | cos]``.

    Frequencies are ``exp(-ln(10000) * i / (dim/2))`` (the GR00T action-encoder convention, which
    differs from :func:`timestep_sinusoid` in order and divisor).

    Args:
        tau: (M,) timestep buckets.
        dim: even feature width.

    Returns:
        (M, dim) float32 features.
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=tau.device)
    freqs = torch.exp(-math.log(_MAX_PERIOD) * i / half)  # (half,)
    angles = tau.to(torch.float32)[:, None] * freqs[None, :]  # (M, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (M, dim)


def _bucket_of_float(t: float, num_buckets: int) -> int:
    """``floor(t * num_buckets)`` in double precision, clamped to the last bucket; t must be in [0, 1]."""
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"t must be in [0, 1], got {t}")
    return min(int(math.floor(t * num_buckets)), num_buckets - 1)


# ------------------------------------------------------------------------------------------------
# Leaf modules
# ------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Two-layer ReLU MLP (state encoder, action decoder)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        """Builds ``fc2(relu(fc1(x)))``."""
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the MLP to the last dim."""
        return self.fc2(F.relu(self.fc1(x)))


class TimestepEmbedding(nn.Module):
    """Timestep MLP: sinusoid(timestep_embed_dim) -> Linear -> SiLU -> Linear -> D."""

    def __init__(self, config: ActionExpertConfig):
        """Builds the two linear layers."""
        super().__init__()
        self.fc1 = nn.Linear(config.timestep_embed_dim, config.hidden_size)
        self.fc2 = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(M, timestep_embed_dim) sinusoid features -> (M, D) embedding."""
        return self.fc2(F.silu(self.fc1(features)))


class ActionEncoder(nn.Module):
    """Embeds noisy actions with the time: ``w3(silu(w2([w1 x ; sinusoid(tau)])))``."""

    def __init__(self, config: ActionExpertConfig):
        """Builds the three linear layers."""
        super().__init__()
        d = config.hidden_size
        self.w1 = nn.Linear(config.action_dim, d)
        self.w2 = nn.Linear(2 * d, d)
        self.w3 = nn.Linear(d, d)

    def forward(self, actions: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        """Encodes actions.

        Args:
            actions: (B, H, A) noisy actions.
            time_features: (M, D) action-time sinusoid, M in {1, B}; the same time for every step.

        Returns:
            (B, H, D) action tokens.
        """
        a = self.w1(actions)  # (B, H, D)
        tf = time_features[:, None, :].expand(a.shape[0], a.shape[1], -1)  # (M, D) -> (B, H, D)
        return self.w3(F.silu(self.w2(torch.cat([a, tf], dim=-1))))  # (B, H, 2D) -> (B, H, D)


class Attention(nn.Module):
    """Multi-head attention with biased projections; K/V come from ``kv_dim``-wide tokens."""

    def __init__(self, config: ActionExpertConfig, kv_dim: int):
        """Builds q/k/v/out projections (k/v read ``kv_dim`` features: cond_dim for cross-attention)."""
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(kv_dim, d)
        self.v_proj = nn.Linear(kv_dim, d)
        self.out_proj = nn.Linear(d, d)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, N, D) -> (B, nh, N, hd)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projects key/value tokens.

        Args:
            source: (B, S, kv_dim) tokens to attend to.

        Returns:
            k, v: each (B, nh, S, hd).
        """
        return self._split_heads(self.k_proj(source)), self._split_heads(self.v_proj(source))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attends queries from ``x`` (B, N, D) to pre-projected ``k``/``v`` (B, nh, S, hd) -> (B, N, D)."""
        b, n, d = x.shape
        q = self._split_heads(self.q_proj(x))  # (B, nh, N, hd)
        # No mask: every token sees every key (the K action queries are always valid, and the DiT
        # sequence is bidirectional).
        o = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))  # (B, nh, N, hd) -> (B, N, D)


class FeedForward(nn.Module):
    """GELU(tanh) feed-forward D -> mlp_ratio*D -> D with dropout after the activation and output."""

    def __init__(self, config: ActionExpertConfig):
        """Builds the two linear layers and dropout."""
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mlp_ratio * config.hidden_size)
        self.fc2 = nn.Linear(config.mlp_ratio * config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x), approximate="tanh"))))


class DiTBlock(nn.Module):
    """Pre-norm DiT block: adaLN -> (cross- or self-) attention -> residual; LN -> FF -> residual."""

    def __init__(self, config: ActionExpertConfig, cross: bool):
        """Builds one block; ``cross`` selects cross-attention to the conditioning tokens."""
        super().__init__()
        self.cross = cross
        self.norm_eps = config.norm_eps
        # adaLN modulation: Linear(SiLU(temb)) -> (scale, shift), applied as LN(x) * (1 + scale) + shift.
        self.modulation = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.attn = Attention(config, kv_dim=config.cond_dim if cross else config.hidden_size)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.mlp = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Runs the block.

        Args:
            x: (B, L, D) token sequence.
            scale: (M, D) adaLN scale, M in {1, B}.
            shift: (M, D) adaLN shift.
            cross_kv: precomputed (k, v), each (B, nh, K, hd), for a cross block; None for self-attention.

        Returns:
            (B, L, D) updated sequence.
        """
        d = x.shape[-1]
        h = F.layer_norm(x, (d,), eps=self.norm_eps) * (1 + scale[:, None, :]) + shift[:, None, :]
        if self.cross:
            if cross_kv is None:
                raise ValueError("a cross-attention block needs precomputed cross_kv")
            k, v = cross_kv
        else:
            k, v = self.attn.project_kv(h)
        x = x + self.attn_dropout(self.attn(h, k, v))
        return x + self.mlp(F.layer_norm(x, (d,), eps=self.norm_eps))


# ------------------------------------------------------------------------------------------------
# Per-call caches
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertContext:
    """Everything constant across Euler steps for one call, computed once by ``prepare_condition``.

    Attributes:
        prefix: (B, P, D) leading tokens: [state token ;] future tokens.
        cross_kv: per block, (k, v) each (B, nh, K, hd) for cross blocks, None for self blocks.
    """

    prefix: torch.Tensor
    cross_kv: tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]

    @property
    def batch_size(self) -> int:
        """Batch size B."""
        return int(self.prefix.shape[0])


@dataclass(frozen=True)
class TimeConditioning:
    """Everything that depends only on the timestep, for M timesteps at once.

    Attributes:
        action_features: (M, D) action-encoder time sinusoid.
        block_modulation: per block, (scale, shift) each (M, D).
        out_shift: (M, D) output adaLN shift.
        out_scale: (M, D) output adaLN scale.
    """

    action_features: torch.Tensor
    block_modulation: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    out_shift: torch.Tensor
    out_scale: torch.Tensor

    def select(self, i: int) -> TimeConditioning:
        """Row ``i`` of every tensor, kept as (1, D) so it broadcasts over the batch."""
        return TimeConditioning(
            action_features=self.action_features[i : i + 1],
            block_modulation=tuple((s[i : i + 1], h[i : i + 1]) for s, h in self.block_modulation),
            out_shift=self.out_shift[i : i + 1],
            out_scale=self.out_scale[i : i + 1],
        )


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


class ActionExpert(nn.Module):
    """Flow-matching DiT action expert.

    Input ``cond``: (B, K, cond_dim) right-brain action-query hidden states. Output: a normalised
    action chunk (B, H, A). ``state`` (when ``use_state_token``) is (B, S) or (B, 1, S).
    """

    def __init__(self, config: ActionExpertConfig):
        """Builds the expert; the config is the only argument."""
        super().__init__()
        if not isinstance(config, ActionExpertConfig):
            raise ValueError(f"config must be an ActionExpertConfig, got {type(config).__name__}")
        self.config = config
        d = config.hidden_size
        self.time_embed = TimestepEmbedding(config)
        self.action_encoder = ActionEncoder(config)
        self.state_encoder = (
            MLP(config.state_dim, config.head_hidden_size, d) if config.use_state_token else None
        )
        self.future_tokens = nn.Parameter(torch.empty(config.num_future_tokens, d))
        self.action_pos_embed = nn.Parameter(torch.empty(config.horizon, d))
        self.blocks = nn.ModuleList([DiTBlock(config, cross=(i % 2 == 0)) for i in range(config.num_layers)])
        self.out_modulation = nn.Linear(d, 2 * d)  # -> (shift, scale); shift first, as in the reference
        self.out_proj = nn.Linear(d, config.output_dim)
        self.action_decoder = MLP(config.output_dim, config.head_hidden_size, config.action_dim)
        nn.init.normal_(self.future_tokens, mean=0.0, std=0.02)
        nn.init.normal_(self.action_pos_embed, mean=0.0, std=0.02)

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return self.out_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        """Parameter device."""
        return self.out_proj.weight.device

    # -- input validation ------------------------------------------------------------------------

    def _check_cond(self, cond: torch.Tensor) -> None:
        c = self.config
        if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or cond.shape[0] < 1 or cond.shape[1] < 1:
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"cond must be a (B>=1, K>=1, {c.cond_dim}) tensor, got {shape}")
        if cond.shape[2] != c.cond_dim:
            raise ValueError(f"cond last dim {cond.shape[2]} != config.cond_dim {c.cond_dim}")
        if not cond.is_floating_point():
            raise ValueError(f"cond must be floating point, got {cond.dtype}")

    def _check_state(self, state: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Validates the state and returns it as (B, S), or None."""
        c = self.config
        if not c.use_state_token:
            if state is not None:
                raise ValueError("state was given but config.use_state_token is False")
            return None
        if state is None:
            raise ValueError(f"config.use_state_token is True: state (B, {c.state_dim}) is required")
        if state.ndim == 3 and state.shape[1] == 1:
            state = state[:, 0]  # (B, 1, S) -> (B, S), the reference's layout
        if state.ndim != 2 or state.shape[0] != batch or state.shape[1] != c.state_dim:
            raise ValueError(f"state shape {tuple(state.shape)} != expected ({batch}, {c.state_dim})")
        if not state.is_floating_point():
            raise ValueError(f"state must be floating point, got {state.dtype}")
        return state

    def _check_chunk(self, name: str, x: torch.Tensor, batch: int) -> None:
        c = self.config
        if x.shape != (batch, c.horizon, c.action_dim):
            raise ValueError(
                f"{name} shape {tuple(x.shape)} != expected ({batch}, {c.horizon}, {c.action_dim})"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")

    # -- time ------------------------------------------------------------------------------------

    def timestep_buckets(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        """Discretises time as the reference does: ``tau = floor(t * num_timestep_buckets)``.

        A Python float is bucketed in double precision (as the reference's Euler loop does); a tensor
        in its own dtype (as the reference's training step does). Buckets are clamped to
        ``[0, buckets - 1]``.

        Args:
            t: Python float, 0-d tensor, or (B,) tensor of times in [0, 1].
            batch: batch size B, to check a per-sample ``t``.

        Returns:
            (M,) int64 buckets on the model's device, M = 1 for a shared time or B per sample.

        Raises:
            ValueError: on a bad shape, or a float ``t`` outside [0, 1].
        """
        n = self.config.num_timestep_buckets
        if isinstance(t, int | float) and not isinstance(t, bool):
            return torch.tensor([_bucket_of_float(t, n)], device=self.device)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"t must be a float or a floating tensor, got {t!r}")
        if t.ndim == 0:
            t = t.reshape(1)  # () -> (1,)
        if t.ndim != 1 or t.shape[0] not in (1, batch):
            raise ValueError(f"t shape {tuple(t.shape)} must be () or ({batch},)")
        return torch.floor(t * n).long().clamp(0, n - 1).to(self.device)

    def time_conditioning(self, tau: torch.Tensor) -> TimeConditioning:
        """Computes the timestep embedding and everything derived from it, for M buckets at once.

        Args:
            tau: (M,) int64 timestep buckets.

        Returns:
            The (M, D) action sinusoid, per-block adaLN (scale, shift) and output (shift, scale).
        """
        d = self.config.hidden_size
        temb = self.time_embed(
            timestep_sinusoid(tau, self.config.timestep_embed_dim).to(self.dtype)
        )  # (M, D)
        act = F.silu(temb)
        mods = []
        for block in self.blocks:
            scale, shift = block.modulation(act).split(d, dim=-1)  # (M, 2D) -> 2 x (M, D)
            mods.append((scale, shift))
        out_shift, out_scale = self.out_modulation(act).split(d, dim=-1)  # (M, 2D) -> 2 x (M, D)
        return TimeConditioning(
            action_features=action_time_sinusoid(tau, d).to(self.dtype),
            block_modulation=tuple(mods),
            out_shift=out_shift,
            out_scale=out_scale,
        )

    # -- fast path -------------------------------------------------------------------------------

    def prepare_condition(self, cond: torch.Tensor, state: torch.Tensor | None = None) -> ExpertContext:
        """Computes everything constant across Euler steps: cross-attention K/V and prefix tokens.

        Args:
            cond: (B, K, cond_dim) action-query hidden states.
            state: (B, S) or (B, 1, S) normalised state; required iff ``use_state_token``.

        Returns:
            The per-call context for :meth:`velocity`.

        Raises:
            ValueError: on bad shapes or a state/config mismatch.
        """
        self._check_cond(cond)
        b = cond.shape[0]
        state = self._check_state(state, b)
        cond = cond.to(self.dtype)
        cross_kv = tuple(blk.attn.project_kv(cond) if blk.cross else None for blk in self.blocks)
        parts = []
        if self.state_encoder is not None and state is not None:
            parts.append(self.state_encoder(state.to(self.dtype))[:, None, :])  # (B, S) -> (B, 1, D)
        parts.append(self.future_tokens[None].expand(b, -1, -1))  # (F, D) -> (B, F, D)
        return ExpertContext(prefix=torch.cat(parts, dim=1), cross_kv=cross_kv)  # (B, P, D)

    def _velocity(self, ctx: ExpertContext, x: torch.Tensor, tc: TimeConditioning) -> torch.Tensor:
        h_len = self.config.horizon
        a = self.action_encoder(x.to(self.dtype), tc.action_features) + self.action_pos_embed  # (B, H, D)
        seq = torch.cat([ctx.prefix, a], dim=1)  # (B, P + H, D)
        for block, (scale, shift), kv in zip(self.blocks, tc.block_modulation, ctx.cross_kv, strict=True):
            seq = block(seq, scale, shift, kv)
        # Only the action tokens are decoded; the output head is per-token, so slicing first is exact.
        seq = seq[:, -h_len:]  # (B, H, D)
        d = seq.shape[-1]
        seq = (
            F.layer_norm(seq, (d,), eps=_OUTPUT_NORM_EPS) * (1 + tc.out_scale[:, None])
            + tc.out_shift[:, None]
        )
        return self.action_decoder(self.out_proj(seq))  # (B, H, output_dim) -> (B, H, A)

    def velocity(
        self, ctx: ExpertContext, noisy_actions: torch.Tensor, t: torch.Tensor | float
    ) -> torch.Tensor:
        """Predicted velocity at ``noisy_actions`` and time ``t``.

        Args:
            ctx: context from :meth:`prepare_condition`.
            noisy_actions: (B, H, A) point on the noise-to-data path.
            t: float, 0-d tensor or (B,) tensor of times in [0, 1].

        Returns:
            (B, H, A) velocity in the model's dtype.
        """
        b = ctx.batch_size
        self._check_chunk("noisy_actions", noisy_actions, b)
        return self._velocity(ctx, noisy_actions, self.time_conditioning(self.timestep_buckets(t, b)))

    def loss(
        self,
        cond: torch.Tensor,
        actions: torch.Tensor,
        state: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching training loss.

        Each example is used ``repeated_diffusion_steps`` times, each copy with its own noise and
        time; the condition tensors are tiled, not recomputed.

        Args:
            cond: (B, K, cond_dim) action-query hidden states (gradients flow back into them).
            actions: (B, H, A) normalised target chunk.
            state: (B, S) or (B, 1, S) normalised state; required iff ``use_state_token``.
            generator: generator for noise and times (sampling happens on its device).
            action_mask: optional (B|1, H|1, A|1) bool/float mask of elements that count in the loss.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: on bad shapes.
        """
        self._check_cond(cond)
        b = cond.shape[0]
        state = self._check_state(state, b)
        self._check_chunk("actions", actions, b)
        r = self.config.repeated_diffusion_steps
        if r > 1:
            cond = cond.repeat(r, 1, 1)  # (B, K, C) -> (R*B, K, C)
            actions = actions.repeat(r, 1, 1)  # (B, H, A) -> (R*B, H, A)
            state = state.repeat(r, 1) if state is not None else None  # (B, S) -> (R*B, S)
            if action_mask is not None and action_mask.ndim == 3 and action_mask.shape[0] == b:
                action_mask = action_mask.repeat(r, 1, 1)  # (B, H|1, A|1) -> (R*B, H|1, A|1)
        actions = actions.float()
        gen_device = generator.device if generator is not None else actions.device
        noise = torch.randn(actions.shape, generator=generator, device=gen_device).to(actions.device)
        t = sample_beta_times(
            actions.shape[0], generator, self.config.beta_alpha, self.config.beta_beta, self.config.beta_s,
            device=actions.device,
        )  # fmt: skip
        x_t = interpolate(noise, actions, t)  # (R*B, H, A)
        ctx = self.prepare_condition(cond, state)
        pred = self.velocity(ctx, x_t, t)
        return flow_matching_loss(pred.float(), noise, actions, action_mask)

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        state: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Samples a normalised action chunk with N-step Euler from t = 0 (noise) to 1.

        Args:
            cond: (B, K, cond_dim) action-query hidden states.
            state: (B, S) or (B, 1, S) normalised state; required iff ``use_state_token``.
            noise: optional (B, H, A) starting noise (for determinism and parity tests).
            generator: generator for the noise when ``noise`` is None.
            num_steps: Euler steps (default ``config.num_inference_steps``).

        Returns:
            (B, H, A) chunk, float32 (float64 if ``noise`` is float64).

        Raises:
            ValueError: on bad shapes or a bad ``num_steps``.
        """
        self._check_cond(cond)
        b = cond.shape[0]
        c = self.config
        n = c.num_inference_steps if num_steps is None else num_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_steps must be a positive int, got {n!r}")
        if noise is None:
            gen_device = generator.device if generator is not None else cond.device
            noise = torch.randn((b, c.horizon, c.action_dim), generator=generator, device=gen_device)
            noise = noise.to(cond.device)
        else:
            self._check_chunk("noise", noise, b)
        # Integrate in at least float32 even for a bf16 model: the chunk accumulates N updates.
        noise = noise.to(device=cond.device, dtype=torch.promote_types(noise.dtype, torch.float32))
        ctx = self.prepare_condition(cond, state)
        # The N Euler times are fixed: embed them (and all adaLN modulations) in one batched call.
        # euler_integrate evaluates at t = k / n, so bucketing those floats here gives the same taus.
        taus = [_bucket_of_float(k / n, c.num_timestep_buckets) for k in range(n)]
        all_tc = self.time_conditioning(torch.tensor(taus, device=self.device))  # (N, D) each
        row_of_tau = {tau: i for i, tau in enumerate(taus)}

        def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
            # Plain Python lookup: no device sync inside the loop.
            return self._velocity(
                ctx, x, all_tc.select(row_of_tau[_bucket_of_float(t, c.num_timestep_buckets)])
            )

        return euler_integrate(denoise, noise, n)

    # -- slow reference --------------------------------------------------------------------------

    def velocity_reference(
        self,
        cond: torch.Tensor,
        noisy_actions: torch.Tensor,
        t: torch.Tensor | float,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Slow, explicit velocity for tests: recomputes everything per call with plain softmax attention.

        Reads the same parameters as the fast path but shares none of its code path beyond
        parameter access and timestep bucketing: LayerNorm, GELU, attention and the sinusoids are
        written out. Dropout is not applied (it matches the fast path in eval mode).

        Args:
            cond: (B, K, cond_dim) action-query hidden states.
            noisy_actions: (B, H, A).
            t: float, 0-d tensor or (B,) tensor of times.
            state: (B, S) or (B, 1, S) when ``use_state_token``.

        Returns:
            (B, H, A) velocity.
        """
        c = self.config
        self._check_cond(cond)
        b = cond.shape[0]
        state = self._check_state(state, b)
        self._check_chunk("noisy_actions", noisy_actions, b)
        d, nh, hd = c.hidden_size, c.num_heads, c.head_dim

        def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            return x @ layer.weight.T + layer.bias

        def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
            mean = x.mean(dim=-1, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
            return (x - mean) / torch.sqrt(var + eps)

        def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

        def sinusoid(tau: torch.Tensor, dim: int, divisor: int, cos_first: bool) -> torch.Tensor:
            freqs = torch.tensor(
                [math.exp(-math.log(10000.0) * i / divisor) for i in range(dim // 2)], device=tau.device
            )  # (dim/2,)
            ang = tau.double()[:, None] * freqs.double()[None, :]  # (M, dim/2)
            parts = [torch.cos(ang), torch.sin(ang)] if cos_first else [torch.sin(ang), torch.cos(ang)]
            return torch.cat(parts, dim=-1).to(self.dtype)  # (M, dim)

        def attention(xq: torch.Tensor, xkv: torch.Tensor, attn: Attention) -> torch.Tensor:
            q = linear(attn.q_proj, xq).reshape(b, -1, nh, hd).permute(0, 2, 1, 3)  # (B, nh, L, hd)
            k = linear(attn.k_proj, xkv).reshape(b, -1, nh, hd).permute(0, 2, 1, 3)  # (B, nh, S, hd)
            v = linear(attn.v_proj, xkv).reshape(b, -1, nh, hd).permute(0, 2, 1, 3)  # (B, nh, S, hd)
            scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, nh, L, S)
            weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
            weights = weights / weights.sum(dim=-1, keepdim=True)
            o = (weights @ v).permute(0, 2, 1, 3).reshape(b, -1, d)  # (B, nh, L, hd) -> (B, L, d)
            return linear(attn.out_proj, o)

        cond = cond.to(self.dtype)
        tau = self.timestep_buckets(t, b)  # (M,)
        tfe = c.timestep_embed_dim
        temb = linear(
            self.time_embed.fc2, F.silu(linear(self.time_embed.fc1, sinusoid(tau, tfe, tfe // 2 - 1, True)))
        )
        silu_temb = temb * torch.sigmoid(temb)  # (M, D)

        enc = self.action_encoder
        a = linear(enc.w1, noisy_actions.to(self.dtype))  # (B, H, D)
        ts = sinusoid(tau, d, d // 2, False)[:, None, :].expand(b, c.horizon, d)  # (M, D) -> (B, H, D)
        a = linear(enc.w3, F.silu(linear(enc.w2, torch.cat([a, ts], dim=-1)))) + self.action_pos_embed
        tokens = []
        if self.state_encoder is not None and state is not None:
            se = self.state_encoder
            tokens.append(
                linear(se.fc2, torch.relu(linear(se.fc1, state.to(self.dtype))))[:, None]
            )  # (B, 1, D)
        tokens.append(self.future_tokens[None].expand(b, -1, -1))  # (B, F, D)
        tokens.append(a)
        x = torch.cat(tokens, dim=1)  # (B, L, D)

        for block in self.blocks:
            mod = linear(block.modulation, silu_temb)  # (M, 2D)
            scale, shift = mod[:, None, :d], mod[:, None, d:]  # (M, 1, D) each
            h = layer_norm(x, c.norm_eps) * (1 + scale) + shift
            x = x + attention(h, cond if block.cross else h, block.attn)
            hmid = gelu_tanh(linear(block.mlp.fc1, layer_norm(x, c.norm_eps)))
            x = x + linear(block.mlp.fc2, hmid)

        mod = linear(self.out_modulation, silu_temb)  # (M, 2D)
        shift, scale = mod[:, None, :d], mod[:, None, d:]  # (M, 1, D) each
        x = layer_norm(x, _OUTPUT_NORM_EPS) * (1 + scale) + shift
        x = linear(self.out_proj, x)  # (B, L, output_dim)
        dec = self.action_decoder
        out = linear(dec.fc2, torch.relu(linear(dec.fc1, x)))  # (B, L, A)
        return out[:, -c.horizon :]  # (B, H, A)


# ------------------------------------------------------------------------------------------------
# Reference checkpoint mapping
# ------------------------------------------------------------------------------------------------


def reference_key_map(config: ActionExpertConfig) -> dict[str, str]:
    """Reference ``action_model.*`` parameter names (prefix stripped) -> this module's names.

    Every entry maps a ``.weight``/``.bias`` pair (or a single table) one to one with the same shape,
    except ``position_embedding.weight`` ((max_seq_len, D) in the reference), of which only the first
    ``horizon`` rows are kept. The reference LayerNorms have no affine parameters, so they map to
    nothing. ``state_encoder.*`` appears only when ``use_state_token``.

    ======================================================  =====================================
    reference (``action_model.`` + ...)                     native
    ======================================================  =====================================
    model.timestep_encoder.timestep_embedder.linear_{1,2}   time_embed.fc{1,2}
    action_encoder.layer{1,2,3}                             action_encoder.w{1,2,3}
    state_encoder.layer{1,2}                                state_encoder.fc{1,2}
    future_tokens.weight                                    future_tokens
    position_embedding.weight[:horizon]                     action_pos_embed
    model.transformer_blocks.{i}.norm1.linear               blocks.{i}.modulation
    model.transformer_blocks.{i}.attn1.to_{q,k,v}           blocks.{i}.attn.{q,k,v}_proj
    model.transformer_blocks.{i}.attn1.to_out.0             blocks.{i}.attn.out_proj
    model.transformer_blocks.{i}.ff.net.0.proj              blocks.{i}.mlp.fc1
    model.transformer_blocks.{i}.ff.net.2                   blocks.{i}.mlp.fc2
    model.proj_out_1                                        out_modulation
    model.proj_out_2                                        out_proj
    action_decoder.layer{1,2}                               action_decoder.fc{1,2}
    ======================================================  =====================================

    Args:
        config: the expert config (layer count and state token decide the key set).

    Returns:
        Reference key -> native key.
    """
    linear_pairs = {
        "model.timestep_encoder.timestep_embedder.linear_1": "time_embed.fc1",
        "model.timestep_encoder.timestep_embedder.linear_2": "time_embed.fc2",
        "action_encoder.layer1": "action_encoder.w1",
        "action_encoder.layer2": "action_encoder.w2",
        "action_encoder.layer3": "action_encoder.w3",
        "model.proj_out_1": "out_modulation",
        "model.proj_out_2": "out_proj",
        "action_decoder.layer1": "action_decoder.fc1",
        "action_decoder.layer2": "action_decoder.fc2",
    }
    if config.use_state_token:
        linear_pairs["state_encoder.layer1"] = "state_encoder.fc1"
        linear_pairs["state_encoder.layer2"] = "state_encoder.fc2"
    for i in range(config.num_layers):
        ref, nat = f"model.transformer_blocks.{i}", f"blocks.{i}"
        linear_pairs[f"{ref}.norm1.linear"] = f"{nat}.modulation"
        for r, n in (("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out.0", "out_proj")):
            linear_pairs[f"{ref}.attn1.{r}"] = f"{nat}.attn.{n}"
        linear_pairs[f"{ref}.ff.net.0.proj"] = f"{nat}.mlp.fc1"
        linear_pairs[f"{ref}.ff.net.2"] = f"{nat}.mlp.fc2"
    mapping = {f"{r}.{p}": f"{n}.{p}" for r, n in linear_pairs.items() for p in ("weight", "bias")}
    mapping["future_tokens.weight"] = "future_tokens"
    mapping["position_embedding.weight"] = "action_pos_embed"
    return mapping


def convert_reference_state_dict(
    reference: Mapping[str, torch.Tensor],
    config: ActionExpertConfig,
    prefix: str = "action_model.",
) -> dict[str, torch.Tensor]:
    """Converts the reference head's state dict to this module's layout.

    Keys outside ``prefix`` are ignored (they belong to the brains). Under ``prefix``, keys of an
    unused state encoder (``use_state_token`` False) are dropped; any other unknown or missing key,
    or a shape mismatch, raises.

    Args:
        reference: the reference checkpoint's state dict (or just its action-model part).
        config: the target config; it must describe the reference head (layers, dims, horizon).
        prefix: prefix of the action-model keys.

    Returns:
        A state dict that ``ActionExpert(config).load_state_dict(..., strict=True)`` accepts.

    Raises:
        ValueError: naming every missing key, unexpected key or shape mismatch.
    """
    mapping = reference_key_map(config)
    expected = _expected_shapes(config)
    sub = {k[len(prefix) :]: v for k, v in reference.items() if k.startswith(prefix)}
    if not config.use_state_token:
        sub = {k: v for k, v in sub.items() if not k.startswith("state_encoder.")}
    problems: list[str] = []
    missing = sorted(set(mapping) - set(sub))
    unexpected = sorted(set(sub) - set(mapping))
    if missing:
        problems.append(f"missing reference keys: {missing}")
    if unexpected:
        problems.append(f"unexpected reference keys: {unexpected}")
    out: dict[str, torch.Tensor] = {}
    for ref_key, nat_key in mapping.items():
        if ref_key not in sub:
            continue
        tensor = sub[ref_key]
        if ref_key == "position_embedding.weight":
            if tensor.ndim != 2 or tensor.shape[0] < config.horizon:
                problems.append(
                    f"{ref_key}: shape {tuple(tensor.shape)} has fewer than horizon={config.horizon} rows"
                )
                continue
            tensor = tensor[: config.horizon]  # (max_seq_len, D) -> (H, D)
        if tuple(tensor.shape) != expected[nat_key]:
            problems.append(f"{ref_key} -> {nat_key}: shape {tuple(tensor.shape)} != {expected[nat_key]}")
            continue
        out[nat_key] = tensor.clone()
    if problems:
        raise ValueError("cannot convert reference action-model weights: " + "; ".join(problems))
    return out


def _expected_shapes(config: ActionExpertConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape for ``config``, without allocating the model."""
    with torch.device("meta"):
        model = ActionExpert(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
