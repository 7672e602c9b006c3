# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Proprioceptive state encoder: normalised, zero-padded state (+ validity mask) -> one brain token.

In native mode the token replaces the embedding of the ``<|propri|>`` placeholder in the right brain's
prompt (decision (a) of the model spec). The validity mask is an input so the network can tell a
padded zero from a real zero; embodiments with fewer joints than ``max_state_dim`` share one encoder.

Usage:
    enc = StateEncoder(max_state_dim=32, hidden_dim=1024, out_dim=2560)
    token = enc(state, mask)      # (B, S<=32), (B, S) -> (B, 1, 2560)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StateEncoder(nn.Module):
    """Two-layer ReLU MLP over ``[state * mask ; mask]`` producing one hidden-size token.

    Args:
        max_state_dim: S_max; shorter states are zero-padded (mask 0 on the padding).
        hidden_dim: width of the hidden layer.
        out_dim: the brain's hidden size H.
        init_std: std of the output layer's initial weights. Small (the Qwen embedding scale) so a fresh
            state token does not dwarf the pretrained token embeddings around it.
    """

    def __init__(self, max_state_dim: int, hidden_dim: int, out_dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.max_state_dim = max_state_dim
        self.fc1 = nn.Linear(2 * max_state_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        nn.init.normal_(self.fc2.weight, std=init_std)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, state: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a batch of states.

        Args:
            state: (B, S) normalised state, S <= max_state_dim; (B, 1, S) is accepted too.
            mask: (B, S) validity (1 = real dim); all ones when None.

        Returns:
            (B, 1, H) state token.

        Raises:
            ValueError: on a bad shape.
        """
        if state.ndim == 3 and state.shape[1] == 1:
            state = state[:, 0]  # (B, 1, S) -> (B, S)
        if state.ndim != 2 or state.shape[1] > self.max_state_dim:
            raise ValueError(f"state must be (B, S<={self.max_state_dim}), got {tuple(state.shape)}")
        if mask is None:
            mask = torch.ones_like(state)
        elif mask.ndim == 3 and mask.shape[1] == 1:
            mask = mask[:, 0]  # (B, 1, S) -> (B, S)
        if mask.shape != state.shape:
            raise ValueError(f"state mask shape {tuple(mask.shape)} != state shape {tuple(state.shape)}")
        dtype = self.fc1.weight.dtype
        mask = mask.to(dtype)
        pad = self.max_state_dim - state.shape[1]
        state = F.pad(state.to(dtype) * mask, (0, pad))  # (B, S) -> (B, S_max), padding is 0
        mask = F.pad(mask, (0, pad))  # (B, S_max)
        token = self.fc2(F.relu(self.fc1(torch.cat([state, mask], dim=-1))))  # (B, H)
        return token[:, None]  # (B, 1, H)
