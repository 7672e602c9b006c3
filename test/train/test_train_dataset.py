# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the training dataset: chunks and masks, statistics modes, fingerprint, sampler, collation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from twinbrain_ros.model import modeling as M
from twinbrain_ros.train.dataset import (
    ACTION_MASK,
    ACTIONS,
    INSTRUCTION,
    STATE,
    ChunkCollator,
    ChunkDataset,
    ConcatSource,
    InMemorySource,
    ResumableBatchSampler,
    check_source,
    chunk_offsets,
    compute_normalizers,
    dataset_fingerprint,
    episode_start_repeats,
    gripper_dims,
    open_source,
    scene_partners,
    synthetic_source,
)


def small_source(lengths=(5, 3), fps=10.0, dims=2) -> InMemorySource:
    n = sum(lengths)
    actions = np.arange(n * dims, dtype=np.float64).reshape(n, dims)
    return InMemorySource(
        fps=fps, states=actions - 0.5, actions=actions,
        episode_index=np.repeat(np.arange(len(lengths)), lengths),
        images={"front": np.zeros((n, 4, 6, 3), np.uint8)}, tasks=("a", "b"),
        task_index=np.repeat(np.arange(len(lengths)) % 2, lengths),
    )  # fmt: skip


def test_chunk_is_masked_and_padded_at_the_episode_end():
    ds = ChunkDataset(small_source(), horizon=4)
    assert len(ds) == 8
    s = ds[0]
    assert s[ACTION_MASK].tolist() == [True] * 4
    np.testing.assert_array_equal(s[ACTIONS], np.arange(8.0).reshape(4, 2))
    last = ds[3]  # frames 3, 4 in episode 0; 5, 6 would be episode 1
    assert last[ACTION_MASK].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(last[ACTIONS][2:], np.repeat(last[ACTIONS][1:2], 2, axis=0))
    first_of_next = ds[5]
    assert first_of_next[INSTRUCTION] == "b" and first_of_next[ACTION_MASK].tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(first_of_next[STATE], [9.5, 10.5])
    with pytest.raises(IndexError):
        ds[8]


def test_chunk_steps_follow_the_contract_step_dt():
    np.testing.assert_array_equal(chunk_offsets(4, fps=40.0, step_dt=0.05), [0, 2, 4, 6])
    np.testing.assert_array_equal(chunk_offsets(3, fps=20.0, step_dt=0.05), [0, 1, 2])
    np.testing.assert_array_equal(chunk_offsets(3, fps=30.0, step_dt=0.05), [0, 2, 3])  # rounded
    with pytest.raises(ValueError, match="lower than the chunk rate"):
        chunk_offsets(4, fps=10.0, step_dt=0.05)
    ds = ChunkDataset(small_source(lengths=(8,), fps=40.0), horizon=4, step_dt=0.05)
    assert ds[0][ACTION_MASK].tolist() == [True] * 4
    assert ds[2][ACTION_MASK].tolist() == [True, True, True, False]  # frames 2, 4, 6 | 8 is past the end
    np.testing.assert_array_equal(ds[0][ACTIONS][:, 0], [0, 4, 8, 12])


def test_non_contiguous_episodes_are_rejected():
    src = small_source(lengths=(2, 2, 2))
    src.episode_index = np.array([0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="not contiguous"):
        ChunkDataset(src, horizon=2)


def test_normalizers_use_the_requested_modes_and_binary_gripper(embodiment):
    src = synthetic_source(num_episodes=3, episode_length=10, joint_names=embodiment.joint_names)
    grip = gripper_dims(embodiment.joint_names)
    assert grip == [5]
    ds = ChunkDataset(src, horizon=4, binary_action_dims=grip, binary_threshold=0.0)
    assert set(np.unique(ds.actions[:, 5])) <= {0.0, 1.0}
    np.testing.assert_array_equal(ds.actions[:, 5], (src.actions[:, 5] > 0.0).astype(float))
    norms = compute_normalizers(ds, action_mode="q01_q99", state_mode="min_max")
    assert norms["action"].modes == ("q01_q99",) * 5 + ("identity",)
    assert norms["state"].modes == ("min_max",) * 6
    a, s = norms["action"].stats, norms["state"].stats
    assert a.count == s.count == len(ds)
    np.testing.assert_allclose(a.q01, np.quantile(ds.actions, 0.01, axis=0))
    np.testing.assert_allclose(a.q99, np.quantile(ds.actions, 0.99, axis=0))
    np.testing.assert_array_equal(s.min, src.states.min(axis=0))
    # min_max maps the extremes to exactly -1 / 1; q01_q99 clips; identity passes through.
    lo, hi = norms["state"].normalize(np.stack([s.min, s.max]))
    np.testing.assert_allclose(lo, -1.0)
    np.testing.assert_allclose(hi, 1.0)
    y = norms["action"].normalize(ds.actions)
    assert np.abs(y[:, :5]).max() <= 1.0
    np.testing.assert_array_equal(y[:, 5], ds.actions[:, 5])
    mm = compute_normalizers(ds, action_mode="min_max", state_mode="q01_q99")["action"]
    assert mm.modes[:5] == ("min_max",) * 5 and mm.modes[5] == "identity"
    with pytest.raises(ValueError, match="not one of"):
        compute_normalizers(ds, action_mode="binary")


def test_fingerprint_is_stable_and_content_sensitive():
    src = small_source()
    fp = dataset_fingerprint(src)
    assert fp.startswith("sha256:") and fp == dataset_fingerprint(small_source())
    changed = small_source()
    changed.actions[3, 1] += 1e-6
    assert dataset_fingerprint(changed) != fp
    relabelled = dataclasses.replace(small_source(), tasks=("a", "c"))
    assert dataset_fingerprint(relabelled) != fp
    both = ConcatSource([small_source(), small_source(lengths=(4,))])
    assert len(both.states) == 12 and both.tasks == ("a", "b")
    assert both.episode_index.tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert dataset_fingerprint(both) != fp
    ds = ChunkDataset(both, horizon=2)
    assert ds[7][ACTION_MASK].tolist() == [True, False]  # end of episode 1, not into source 2


def test_synthetic_spec_and_missing_directory(tmp_path):
    src = open_source("synthetic:3x7")
    assert len(src.states) == 21
    with pytest.raises(ValueError, match="synthetic"):
        open_source("synthetic:three")
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "nope")


def test_check_source_names_every_mismatch(embodiment):
    src = synthetic_source(num_episodes=2, episode_length=5, num_joints=6,
                           joint_names=list(reversed(embodiment.joint_names)))  # fmt: skip
    problems = check_source(src, joint_names=embodiment.joint_names, action_dim=7, cameras={"front": "wrist"})
    text = "\n".join(problems)
    assert "action_dim is 7" in text and "joint order" in text and "'wrist'" in text
    ok = synthetic_source(num_episodes=2, episode_length=5, joint_names=embodiment.joint_names)
    assert (
        check_source(ok, joint_names=embodiment.joint_names, action_dim=6, cameras={"front": "front"}) == []
    )


def test_sampler_is_deterministic_resumable_and_sharded():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(ResumableBatchSampler(10, 3, seed=1), 7)  # 3 batches per epoch, then a new permutation
    assert all(len(b) == 3 for b in full)
    assert len(set(sum(full[:3], []))) == 9
    assert full[:3] != full[3:6]
    assert take(ResumableBatchSampler(10, 3, seed=1, start=4), 3) == full[4:7]
    r0 = take(ResumableBatchSampler(10, 2, seed=1, rank=0, world_size=2), 2)
    r1 = take(ResumableBatchSampler(10, 2, seed=1, rank=1, world_size=2), 2)
    assert not set(sum(r0, [])) & set(sum(r1, []))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(3, 2, world_size=2)


def test_episode_starts_are_oversampled_and_the_sampler_stays_resumable():
    episode = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    rep = episode_start_repeats(episode, fps=10.0, seconds=0.2, repeats=3)  # first two frames of each
    assert rep.tolist() == [3, 3, 1, 1, 1, 3, 3, 1, 3, 3, 1, 1]

    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    sampler = ResumableBatchSampler(12, 4, seed=2, repeats=rep)
    assert sampler.batches_per_epoch == rep.sum() // 4  # the epoch holds the repeats
    epoch = sum(take(sampler, sampler.batches_per_epoch), [])
    assert np.bincount(epoch, minlength=12).tolist() == rep.tolist()  # 24 = 6 full batches, none dropped
    assert take(ResumableBatchSampler(12, 4, seed=2, repeats=rep, start=3), 2) == take(sampler, 5)[3:5]
    with pytest.raises(ValueError, match="repeats must be 12 non-negative integers"):
        ResumableBatchSampler(12, 4, repeats=np.ones(11, np.int64))


def test_scene_partners_pair_the_same_moment_of_each_scene():
    # 4 episodes (lengths 3, 2, 2, 4) = 2 scenes of 2 instructions each
    episode = np.repeat([0, 1, 2, 3], [3, 2, 2, 4])
    tasks = np.repeat([0, 1, 1, 0], [3, 2, 2, 4])
    p = scene_partners(episode, tasks, 2)
    assert p.shape == (11, 1)
    # episode 0 (frames 0-2) <-> episode 1 (frames 3-4, the last one held), episode 2 (5-6) <-> 3 (7-10)
    assert p[:, 0].tolist() == [3, 4, 4, 0, 1, 7, 8, 5, 6, 6, 6]
    three = scene_partners(np.repeat([0, 1, 2], 2), np.array([0, 0, 1, 1, 2, 2]), 3)
    assert three.tolist() == [[2, 4], [3, 5], [4, 0], [5, 1], [0, 2], [1, 3]]
    with pytest.raises(ValueError, match="do not split into scene groups of 2"):
        scene_partners(np.repeat([0, 1, 2], 2), np.array([0, 0, 1, 1, 0, 0]), 2)
    with pytest.raises(ValueError, match=r"scene groups \[1\] repeat a task"):
        scene_partners(episode, np.repeat([0, 1, 1, 1], [3, 2, 2, 4]), 2)
    with pytest.raises(ValueError, match="scene group must be an int >= 2"):
        scene_partners(episode, tasks, 1)


def test_sampler_with_partners_puts_every_drawn_frame_beside_its_partners():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    partners = ((np.arange(12) + 6) % 12)[:, None]  # frame i <-> i + 6
    sampler = ResumableBatchSampler(12, 4, seed=3, partners=partners)
    assert sampler.batches_per_epoch == 6  # 2 drawn frames per batch
    batches = take(sampler, 8)
    for b in batches:
        assert len(b) == 4 and b[2:] == [(i + 6) % 12 for i in b[:2]]
    assert sorted(sum((b[:2] for b in batches[:6]), [])) == list(range(12))  # each frame drawn once
    assert take(ResumableBatchSampler(12, 4, seed=3, partners=partners, start=5), 3) == batches[5:8]
    odd = take(ResumableBatchSampler(12, 5, seed=3, partners=partners), 1)[0]  # 3 drawn + 2 partners
    assert len(odd) == 5 and odd[3:] == [(i + 6) % 12 for i in odd[:2]]
    r0 = take(ResumableBatchSampler(12, 2, seed=1, rank=0, world_size=2, partners=partners), 1)[0]
    r1 = take(ResumableBatchSampler(12, 2, seed=1, rank=1, world_size=2, partners=partners), 1)[0]
    assert r0[0] != r1[0] and r0[1] == (r0[0] + 6) % 12 and r1[1] == (r1[0] + 6) % 12
    with pytest.raises(ValueError, match="partners must be"):
        ResumableBatchSampler(12, 4, partners=np.zeros((11, 1), np.int64))
    with pytest.raises(ValueError, match="partners must index frames"):
        ResumableBatchSampler(12, 4, partners=np.full((12, 1), 12))


def test_collator_builds_the_model_batch(tiny_init, source):
    from twinbrain_ros.model.checkpoint import load_checkpoint
    from twinbrain_ros.model.processing import build_processor

    ckpt = load_checkpoint(tiny_init, load_weights=False)
    ds = ChunkDataset(source, horizon=16, step_dt=ckpt.embodiment.action.step_dt)
    norms = compute_normalizers(ds)
    proc = build_processor(ckpt.config, ckpt.tokenizer, norms, ckpt.embodiment.camera_names,
                           ckpt.processor_config)  # fmt: skip
    batch = ChunkCollator(proc, norms["action"], ckpt.embodiment.joint_names)([ds[0], ds[23]])
    assert batch[M.ACTIONS].shape == (2, 16, 6) and batch[M.ACTIONS].dtype == torch.float32
    assert batch[M.ACTION_MASK].shape == (2, 16, 1)
    assert batch[M.ACTION_MASK][0].all() and batch[M.ACTION_MASK][1, 1:].sum() == 0
    assert batch[M.STATE].shape == (2, ckpt.config.max_state_dim)
    assert batch[M.LEFT_INPUT_IDS].shape[0] == 2 and batch[M.IMAGE_GRID_THW].shape == (2, 3)
    np.testing.assert_allclose(
        batch[M.ACTIONS][0].numpy(), norms["action"].normalize(ds[0][ACTIONS]), atol=1e-6
    )


def test_lerobot_v3_dataset_reads_back_as_a_frame_source(v3_dataset, v3_writer, source, embodiment, tmp_path):
    from twinbrain_ros.train.dataset import LeRobotV3Source

    src = open_source(v3_dataset)
    assert isinstance(src, LeRobotV3Source)
    assert src.camera_names == ("front",) and src.fps == source.fps
    assert src.state_names == tuple(embodiment.joint_names) and src.tasks == source.tasks
    np.testing.assert_allclose(src.states, source.states.astype(np.float32))
    np.testing.assert_allclose(src.actions, source.actions.astype(np.float32))
    np.testing.assert_array_equal(src.episode_index, source.episode_index)
    np.testing.assert_array_equal(src.task_index, source.task_index)
    for i in (0, 37, 95, 5):  # several row groups, revisited
        np.testing.assert_array_equal(src.image(i, "front"), source.images["front"][i])
    fp = dataset_fingerprint(src)
    assert fp == dataset_fingerprint(open_source(v3_dataset))
    changed = dataclasses.replace(source)
    changed.actions = source.actions.copy()
    changed.actions[3, 0] += 0.5
    other = open_source(v3_writer(tmp_path / "other", changed, embodiment.joint_names))
    assert dataset_fingerprint(other) != fp
    ds = ChunkDataset(src, horizon=16, step_dt=0.05)
    assert ds[23][ACTION_MASK].tolist() == [True] + [False] * 15
