# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Fixtures for training tests: a tiny random-init checkpoint with small views, a synthetic dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tiny model is too small to gain from more, and on a loaded 2-core
    machine a second spinning thread makes a step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IMAGE = 64  # view size of the test checkpoint: 4 image tokens per view keeps a step well under a second


@pytest.fixture(scope="session")
def embodiment():
    from twinbrain_ros.core.embodiment import load_embodiment

    return load_embodiment("so101")


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory, embodiment):
    """A tiny native-mode checkpoint (so101 contract, horizon 16) whose views are 64 x 64."""
    from twinbrain_ros.model.checkpoint import save_checkpoint
    from twinbrain_ros.model.convert import build_model, placeholder_normalizers, tiny_config
    from twinbrain_ros.model.processing import ProcessorConfig, build_small_tokenizer

    tok = build_small_tokenizer()
    config = tiny_config(tok, embodiment)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config)
    out = tmp_path_factory.mktemp("init") / "tiny"
    pc = ProcessorConfig.for_family(
        "qwen3_vl", image_height=IMAGE, image_width=IMAGE, min_pixels=IMAGE * IMAGE
    )
    return save_checkpoint(
        out, model, tokenizer=tok, normalizers=placeholder_normalizers(embodiment), embodiment=embodiment,
        processor_config=pc,
    )  # fmt: skip


@pytest.fixture(scope="session")
def source(embodiment):
    """4 episodes x 24 frames of the synthetic reaching task, named like the so101 joints."""
    from twinbrain_ros.train.dataset import synthetic_source

    return synthetic_source(num_episodes=4, episode_length=24, joint_names=embodiment.joint_names)


def write_v3(root, src, joint_names, row_group_frames: int = 8):
    """Write an in-memory source as a LeRobot v3 dataset with the project's writer."""
    from twinbrain_ros.data import lerobot_v3 as lv

    cams = {c: tuple(src.images[c].shape[1:]) for c in src.camera_names}
    w = lv.LeRobotV3Writer(root, fps=int(src.fps), features=lv.make_features(joint_names, cams),
                           robot_type="so101", row_group_frames=row_group_frames)  # fmt: skip
    for ep in np.unique(src.episode_index):
        frames = np.flatnonzero(src.episode_index == ep)
        w.start_episode(src.tasks[int(src.task_index[frames[0]])], len(frames))
        for i in frames:
            row = {
                "observation.state": src.states[i].astype(np.float32),
                "action": src.actions[i].astype(np.float32),
            }
            row.update({f"observation.images.{c}": src.images[c][i] for c in src.camera_names})
            w.add_frame(row)
        w.end_episode()
    w.finalize({"source": "test"})
    return root


@pytest.fixture(scope="session")
def v3_writer():
    """``write_v3`` (test modules cannot import a conftest by name reliably)."""
    pytest.importorskip("pyarrow")
    return write_v3


@pytest.fixture(scope="session")
def v3_dataset(tmp_path_factory, source, embodiment):
    """The synthetic source written as a LeRobot v3 dataset (PNG images in parquet)."""
    pytest.importorskip("pyarrow")
    return write_v3(tmp_path_factory.mktemp("v3") / "ds", source, embodiment.joint_names)
