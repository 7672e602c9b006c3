# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""TwinBrainModel: dual-brain VLM encoder + flow-matching action expert, as one ``nn.Module``.

Reading order: batch keys -> ``Conditioning`` -> ``TwinBrainModel`` (encode, forward, sample_actions).

The model does no I/O, tokenisation or normalisation: a processor builds the batch (two token
sequences over the same images, one shared ``pixel_values``, the normalised zero-padded state) and
un-normalises the returned chunk. Per batch the frozen left brain runs once and exports its per-layer
K/V; the right brain attends over them (AsyMoT, see ``brains.py``); its K action-query states condition
the action expert (``action_expert.py``).

Usage:
    model = TwinBrainModel(config)
    loss = model(batch)                                        # training; batch[ACTIONS] required
    loss.backward()                                            # grads reach right brain + expert only
    chunk = model.sample_actions(batch, generator=gen)         # (B, T, A) normalised actions
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from twinbrain_ros.model.action_expert import ActionExpert
from twinbrain_ros.model.brains import TwinBrains
from twinbrain_ros.model.configuration import TwinBrainConfig
from twinbrain_ros.model.state_encoder import StateEncoder

# Batch keys. Token tensors are (B, L) with left padding; one image list is shared by both brains.
LEFT_INPUT_IDS = "left.input_ids"
LEFT_ATTENTION_MASK = "left.attention_mask"
LEFT_MM_TOKEN_TYPE_IDS = "left.mm_token_type_ids"  # optional (B, L_f); 1 at image tokens
LEFT_POSITION_IDS = "left.position_ids"  # optional (3, B, L_f) MRoPE positions, e.g. computed on the host
RIGHT_INPUT_IDS = "right.input_ids"
RIGHT_ATTENTION_MASK = "right.attention_mask"
RIGHT_MM_TOKEN_TYPE_IDS = "right.mm_token_type_ids"  # optional (B, L_t)
RIGHT_POSITION_IDS = "right.position_ids"  # optional (3, B, L_t)
PIXEL_VALUES = "pixel_values"  # (N_patches, C * T_p * P * P), images in batch order
IMAGE_GRID_THW = "image_grid_thw"  # (N_images, 3)
STATE = "observation.state"  # (B, S<=max_state_dim) normalised state
STATE_MASK = "observation.state_mask"  # optional (B, S) validity, 1 = real dim
ACTIONS = "action"  # (B, T, A) normalised target chunk (training)
ACTION_MASK = "action_mask"  # optional (B|1, T|1, A|1) elements that count in the loss

_REQUIRED = (LEFT_INPUT_IDS, LEFT_ATTENTION_MASK, RIGHT_INPUT_IDS, RIGHT_ATTENTION_MASK)


@dataclass
class Conditioning:
    """What the action expert is conditioned on.

    Attributes:
        queries: (B, K, H) final-normed action-query states of the right brain (selected layer).
        state: (B, max_state_dim) masked, zero-padded state for the expert's own state token, or None
            when ``action_expert.use_state_token`` is off.
    """

    queries: torch.Tensor
    state: torch.Tensor | None = None


class TwinBrainModel(nn.Module):
    """TwinBrainVLA: frozen left brain, trainable right brain (AsyMoT), state encoder, action expert.

    Args:
        config: the model configuration (the only constructor argument).
    """

    def __init__(self, config: TwinBrainConfig) -> None:
        super().__init__()
        self.config = config
        self.brains = TwinBrains(config)
        self.state_encoder = (
            StateEncoder(config.max_state_dim, config.state_encoder_hidden, config.hidden_size)
            if config.state_in_right_brain
            else None
        )
        self.action_expert = ActionExpert(config.action_expert)

    # -- parameters --------------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters an optimiser should see: right brain, state encoder, action expert."""
        return (p for p in self.parameters() if p.requires_grad)

    def load_backbone_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load pretrained Qwen-VL weights into the left brain and initialise the right brain from them."""
        self.brains.load_backbone_state_dict(dict(state_dict))

    # -- batch -------------------------------------------------------------------------------------
    def _check_batch(self, batch: Mapping[str, torch.Tensor], *, training: bool) -> None:
        cfg = self.config
        required = list(_REQUIRED)
        if cfg.state_in_right_brain or cfg.state_to_expert:
            required.append(STATE)
        if training:
            required.append(ACTIONS)
        missing = [k for k in required if k not in batch]
        problems = [f"missing batch keys {missing}"] if missing else []
        if (PIXEL_VALUES in batch) != (IMAGE_GRID_THW in batch):
            problems.append(f"{PIXEL_VALUES!r} and {IMAGE_GRID_THW!r} must be given together")
        for side in ("left", "right"):
            ids, mask = batch.get(f"{side}.input_ids"), batch.get(f"{side}.attention_mask")
            if ids is not None and mask is not None and ids.shape != mask.shape:
                problems.append(
                    f"{side}.input_ids {tuple(ids.shape)} != {side}.attention_mask {tuple(mask.shape)}"
                )
        sizes = {
            k: batch[k].shape[0] for k in (LEFT_INPUT_IDS, RIGHT_INPUT_IDS, STATE, ACTIONS) if k in batch
        }
        if len(set(sizes.values())) > 1:
            problems.append(f"batch sizes differ: {sizes}")
        if problems:
            raise ValueError("; ".join(problems))

    def _expert_state(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.config.state_to_expert:
            return None
        state = batch[STATE]
        if state.ndim == 3 and state.shape[1] == 1:
            state = state[:, 0]  # (B, 1, S) -> (B, S)
        mask = batch.get(STATE_MASK)
        if mask is not None:
            state = state * mask.reshape(state.shape).to(state.dtype)
        pad = self.config.max_state_dim - state.shape[-1]
        if pad < 0:
            raise ValueError(f"state has {state.shape[-1]} dims > max_state_dim={self.config.max_state_dim}")
        return F.pad(state, (0, pad)).to(self.action_expert.dtype)  # (B, S) -> (B, S_max)

    # -- forward -----------------------------------------------------------------------------------
    def encode(self, batch: Mapping[str, torch.Tensor]) -> Conditioning:
        """Run both brains and return the expert's conditioning.

        Args:
            batch: tensors under the module-level keys.

        Returns:
            The action-query states (and the state for the expert when configured).

        Raises:
            ValueError: on missing keys or inconsistent shapes.
        """
        self._check_batch(batch, training=False)
        pixel_values, grid = batch.get(PIXEL_VALUES), batch.get(IMAGE_GRID_THW)
        left = self.brains.run_left(
            batch[LEFT_INPUT_IDS], batch[LEFT_ATTENTION_MASK], pixel_values, grid,
            mm_token_type_ids=batch.get(LEFT_MM_TOKEN_TYPE_IDS), position_ids=batch.get(LEFT_POSITION_IDS),
        )  # fmt: skip
        state_token = None
        if self.state_encoder is not None:
            state_token = self.state_encoder(batch[STATE], batch.get(STATE_MASK))  # (B, 1, H)
        queries = self.brains.run_right(
            batch[RIGHT_INPUT_IDS], batch[RIGHT_ATTENTION_MASK], pixel_values, grid, left,
            state_token=state_token, mm_token_type_ids=batch.get(RIGHT_MM_TOKEN_TYPE_IDS),
            position_ids=batch.get(RIGHT_POSITION_IDS),
        )  # fmt: skip  # (B, K, H)
        return Conditioning(queries=queries.to(self.action_expert.dtype), state=self._expert_state(batch))

    def forward(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training loss: flow matching on ``batch[ACTIONS]`` conditioned on ``encode(batch)``.

        Args:
            batch: tensors under the module-level keys, including ``ACTIONS``.
            generator: generator for the expert's noise and times.

        Returns:
            Scalar loss. Gradients reach only the right brain, the state encoder and the expert.
        """
        self._check_batch(batch, training=True)
        cond = self.encode(batch)
        return self.action_expert.loss(
            cond.queries, batch[ACTIONS], state=cond.state, generator=generator,
            action_mask=batch.get(ACTION_MASK),
        )  # fmt: skip

    @torch.no_grad()
    def sample_actions(
        self,
        batch: Mapping[str, torch.Tensor],
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Sample a normalised action chunk.

        Args:
            batch: tensors under the module-level keys (no ``ACTIONS`` needed).
            noise: optional (B, T, A) starting noise (determinism, parity tests).
            generator: generator for the noise when ``noise`` is None.
            num_steps: Euler steps (default ``action_expert.num_inference_steps``).

        Returns:
            (B, T, A) normalised actions.
        """
        cond = self.encode(batch)
        return self.action_expert.sample(
            cond.queries, state=cond.state, noise=noise, generator=generator, num_steps=num_steps
        )
