# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Host-side inputs (numpy) against the model's own torch/transformers code, and batch validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinbrain_ros.export import host as H
from twinbrain_ros.export.graphs import build_graphs, host_spec_for
from twinbrain_ros.export.inputs import synthetic_batch, synthetic_noise
from twinbrain_ros.model import brains as B
from twinbrain_ros.model import modeling as M


def _prepared(model, profile):
    spec = host_spec_for(model)
    batch = synthetic_batch(spec, profile, seed=3)
    return spec, batch, H.prepare_batch(spec, profile, batch)


def test_position_ids_and_rotary_match_transformers(native_model, xh):
    profile = xh.make_profile(native_model)
    spec, batch, prepared = _prepared(native_model, profile)
    brain = native_model.brains.left
    ids = torch.from_numpy(prepared.left["input_ids"])
    mask = torch.from_numpy(H.left_pad(batch[M.LEFT_ATTENTION_MASK], profile.left_len))
    grid = torch.from_numpy(batch[M.IMAGE_GRID_THW])
    ref = brain.position_ids(ids, mask, grid)  # transformers' get_rope_index
    ours = H.mrope_position_ids(
        ids.numpy(), mask.numpy(), grid.numpy(), spec.image_token_id, spec.spatial_merge_size
    )
    valid = mask.bool().numpy()
    np.testing.assert_array_equal(ours[:, valid], ref.numpy()[:, valid])
    cos_ref, sin_ref = brain.language_model.rotary_emb(
        torch.zeros(1, dtype=torch.float32), torch.from_numpy(ours)
    )
    cos, sin = H.text_rotary(ours, spec)
    np.testing.assert_allclose(cos, cos_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, sin_ref.numpy(), atol=1e-6)


def test_vision_graph_matches_the_tower(native_model, xh):
    profile = xh.make_profile(native_model)
    spec, batch, prepared = _prepared(native_model, profile)
    graphs = build_graphs(native_model, spec, profile)
    feeds = {k: torch.from_numpy(v) for k, v in prepared.vision.items()}
    with torch.no_grad():
        for side, brain in (
            ("vision_left", native_model.brains.left),
            ("vision_right", native_model.brains.right),
        ):
            out = graphs[side](feeds)
            embeds, deepstack = brain.image_features(
                torch.from_numpy(batch[M.PIXEL_VALUES]), torch.from_numpy(batch[M.IMAGE_GRID_THW])
            )
            torch.testing.assert_close(out["image_embeds"], embeds, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out["deepstack_embeds"], torch.stack(deepstack), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("index_aligned", [False, True])
def test_joint_mask_keeps_original_indices_when_padding_to_a_bucket(index_aligned):
    rng = np.random.default_rng(0)
    left_valid = np.ones((2, 7), bool)
    left_valid[1, :2] = False
    right_valid = np.ones((2, 5), bool)
    right_valid[0, :1] = False
    ref = B.joint_mask(
        torch.from_numpy(left_valid), torch.from_numpy(right_valid), index_aligned=index_aligned
    ).numpy()
    ef, et = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    lv = H.left_pad(left_valid, 7 + ef, value=False)
    rv = H.left_pad(right_valid, 5 + et, value=False)
    ours = H.joint_mask(lv, rv, index_aligned=index_aligned, left_shift=ef, right_shift=et)
    # Rows of real right positions, columns of real left + right positions: identical to the model's.
    cols = np.r_[ef : 7 + ef, 7 + ef + et : 7 + ef + 5 + et]
    np.testing.assert_array_equal(ours[:, :, et:, :][..., cols], ref)
    # Pad keys are never visible to real queries.
    assert not ours[:, :, et:, :ef].any() and not ours[:, :, et:, 7 + ef : 7 + ef + et].any()


def test_self_mask_matches_model():
    valid = np.array([[False, False, True, True, True], [True] * 5])
    np.testing.assert_array_equal(
        H.causal_self_mask(valid), B.causal_self_mask(torch.from_numpy(valid)).numpy()
    )


def test_prepare_batch_reports_every_misfit(native_model, xh):
    profile = xh.make_profile(native_model)
    spec = host_spec_for(native_model)
    batch = synthetic_batch(spec, profile, seed=0)
    bad = dict(batch)
    bad[M.IMAGE_GRID_THW] = batch[M.IMAGE_GRID_THW][:3]
    with pytest.raises(
        ValueError, match=r"3 images in the batch; profile 'ci' takes 2 camera\(s\) x batch 2"
    ):
        H.prepare_batch(spec, profile, bad)
    long_ids = np.concatenate([np.full((2, 40), 5), batch[M.LEFT_INPUT_IDS]], axis=1)
    long_mask = np.concatenate([np.ones((2, 40), np.int64), batch[M.LEFT_ATTENTION_MASK]], axis=1)
    with pytest.raises(ValueError, match=r"left prompt has \d+ tokens > the profile's left_len"):
        H.prepare_batch(
            spec, profile, {**batch, M.LEFT_INPUT_IDS: long_ids, M.LEFT_ATTENTION_MASK: long_mask}
        )
    no_action = batch[M.RIGHT_INPUT_IDS].copy()
    no_action[no_action == spec.action_token_id] = 7
    with pytest.raises(ValueError, match="<\\|action\\|> tokens"):
        H.prepare_batch(spec, profile, {**batch, M.RIGHT_INPUT_IDS: no_action})


def test_synthetic_inputs_fit_the_profile(native_model, xh):
    profile = xh.make_profile(native_model)
    spec = host_spec_for(native_model)
    batch = synthetic_batch(spec, profile, seed=1)
    prepared = H.prepare_batch(spec, profile, batch)
    assert prepared.left["input_ids"].shape == (2, profile.left_len)
    assert prepared.right["input_ids"].shape == (2, profile.right_len)
    assert synthetic_noise(spec, 2).shape == (2, spec.horizon, spec.action_dim)
    with pytest.raises(ValueError, match="instruction lengths"):
        synthetic_batch(spec, profile, instruction_tokens=(500, 1))
