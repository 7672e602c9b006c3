# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
r"""Fixed, tokenizer-free model batches with the real token layout, for verification and benchmarks.

A batch looks like what the processor produces for a profile: per sample one chat turn ``<im_start>
user\n`` + per view ``<vision_start> <image_pad> x n <vision_end>`` + instruction + (right brain:
state placeholder and K action queries) + ``<im_end>\\n<im_start>assistant\\n``, left-padded to the
longest sample, random patches of the profile's resolution and a random state. Text ids are random
ordinary ids below the special ones (no tokenizer is needed); special ids come from the ``HostSpec``.

Usage:
    batch = synthetic_batch(spec, profile, seed=0)              # dict of numpy arrays
    noise = synthetic_noise(spec, profile.batch_size, seed=0)   # (B, T, A) float32
"""

from __future__ import annotations

import numpy as np

from twinbrain_ros.export import host as H
from twinbrain_ros.export.host import HostSpec, Profile

CHAT_PREFIX = 3  # "<|im_start|>user\n"
CHAT_SUFFIX = 5  # "<|im_end|>\n<|im_start|>assistant\n"


def prompt_lengths(spec: HostSpec, profile: Profile, instruction_tokens: int) -> tuple[int, int]:
    """Left and right prompt lengths (right: up to its last ``<|action|>``) for an instruction length.

    Used to size a profile's text buckets from an instruction budget.
    """
    views = profile.num_cameras * (profile.tokens_per_image(spec) + 2)
    left = CHAT_PREFIX + views + instruction_tokens + CHAT_SUFFIX
    state = 3 if spec.state_in_right_brain else 0  # "State:" + <|propri|> + newline
    # "Instruction:" (2) + instruction + "\nAction Query:" (3) + K queries with K-1 separators.
    right = CHAT_PREFIX + views + 2 + instruction_tokens + state + 3 + 2 * spec.num_action_queries - 1
    return left, right


def synthetic_batch(
    spec: HostSpec,
    profile: Profile,
    *,
    seed: int = 0,
    instruction_tokens: tuple[int, ...] | None = None,
    views_after_text: bool = False,
) -> dict[str, np.ndarray]:
    """A batch that fits ``profile``.

    Args:
        spec: host constants (token ids, state size).
        profile: the deployment profile.
        seed: random seed (images, text ids, state).
        instruction_tokens: per-sample instruction lengths; default: sample 0 fills the bucket, the
            others are 3 tokens shorter each (so padding is exercised for B > 1).
        views_after_text: lay the views out after the text (a template with ``{images}``: on the
            right just before the action queries) instead of first.

    Returns:
        Numpy arrays under modeling's batch keys.

    Raises:
        ValueError: if the requested instructions do not fit the profile's buckets.
    """
    rng = np.random.default_rng(seed)
    b = profile.batch_size
    left0, right0 = prompt_lengths(spec, profile, 0)
    budget = min(profile.left_len - left0, profile.right_len - right0)
    if instruction_tokens is None:
        instruction_tokens = tuple(max(budget - 3 * i, 1) for i in range(b))
    if len(instruction_tokens) != b or max(instruction_tokens) > budget or min(instruction_tokens) < 1:
        raise ValueError(
            f"instruction lengths {instruction_tokens} must be {b} values in [1, {budget}] for profile "
            f"{profile.name!r} (left_len {profile.left_len}, right_len {profile.right_len})"
        )
    special = {spec.image_token_id, spec.action_token_id, spec.propri_token_id, spec.vision_start_token_id,
               spec.vision_end_token_id}  # fmt: skip
    top = min(spec.vocab_size, min(special))

    def text(n: int) -> list[int]:
        return [int(i) for i in rng.integers(0, top, n)]

    image = [spec.vision_start_token_id, *([spec.image_token_id] * profile.tokens_per_image(spec)),
             spec.vision_end_token_id]  # fmt: skip
    views = image * profile.num_cameras

    def turn(head: list[int], body: list[int], tail: list[int] = ()) -> list[int]:
        # One chat turn: the views before the body, or after it (a template with {images}).
        user = body + views if views_after_text else views + body
        return head + user + list(tail) + text(CHAT_SUFFIX)

    lefts, rights = [], []
    for n in instruction_tokens:
        instruction = text(n)
        state = text(2) + [spec.propri_token_id] if spec.state_in_right_brain else []
        queries: list[int] = []
        for k in range(spec.num_action_queries):
            queries += ([] if k == 0 else text(1)) + [spec.action_token_id]
        lefts.append(turn(text(CHAT_PREFIX), instruction))
        rights.append(turn(text(CHAT_PREFIX), text(2) + instruction + state + text(3), queries))

    def pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        length = max(len(r) for r in rows)
        ids = np.zeros((len(rows), length), dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, length - len(r) :] = r
            mask[i, length - len(r) :] = 1
        return ids, mask

    left_ids, left_mask = pad(lefts)
    right_ids, right_mask = pad(rights)
    n_img = profile.num_images()
    s = profile.patches_per_image(spec)
    state_dim = max(spec.max_state_dim - 2, 1)  # a shorter state than S_max: padding is exercised
    return {
        H.LEFT_INPUT_IDS: left_ids,
        H.LEFT_ATTENTION_MASK: left_mask,
        H.RIGHT_INPUT_IDS: right_ids,
        H.RIGHT_ATTENTION_MASK: right_mask,
        H.PIXEL_VALUES: rng.uniform(-1.0, 1.0, (n_img * s, spec.patch_dim)).astype(np.float32),
        H.IMAGE_GRID_THW: np.tile(np.asarray(profile.grid(spec), dtype=np.int64), (n_img, 1)),
        H.STATE: rng.standard_normal((b, state_dim)).astype(np.float32),
    }


def synthetic_noise(spec: HostSpec, batch_size: int, *, seed: int = 0) -> np.ndarray:
    """Starting noise (B, T, A) float32 for the flow sampler."""
    rng = np.random.default_rng(seed + 7919)
    return rng.standard_normal((batch_size, spec.horizon, spec.action_dim)).astype(np.float32)
