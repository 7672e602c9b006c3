# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The LeRobot v3.0 writer: layout, schemas, every column and metadata field, stats, timestamps.

The expectations are the ``lerobot`` 0.4.x on-disk format (``LeRobotDataset.create`` + ``add_frame``
+ ``save_episode``): file names, ``info.json`` keys, HF ``datasets`` arrow types and schema metadata,
the pandas index of ``tasks.parquet``, ``stats/<feature>/<stat>`` episode columns and stats shapes.
If ``datasets`` and ``pandas`` are installed, the dataset is also loaded through their API exactly
as ``LeRobotDataset`` does.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.data import lerobot_v3 as lv
from twinbrain_ros.data.reader import DatasetError, LeRobotV3Dataset

JOINTS = ("a", "b", "c")
EPISODES = [("pick the cube", 40), ("place the cube", 25), ("pick the cube", 33)]
FPS = 30


def _frames(rng, n):
    return [
        {
            "observation.state": rng.normal(size=3),
            "action": rng.normal(size=3),
            "observation.images.front": rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr") / "ds"
    rng = np.random.default_rng(0)
    feats = lv.make_features(JOINTS, {"front": (24, 32, 3)})
    w = lv.LeRobotV3Writer(root, fps=FPS, features=feats, robot_type="testbot", row_group_frames=16)
    written = []
    for task, n in EPISODES:
        frames = _frames(rng, n)
        w.start_episode(task, n)
        for f in frames:
            w.add_frame(f)
        w.end_episode()
        written.append(frames)
    info = w.finalize({"source": "test"})
    return root, info, written


def test_layout_and_no_leftovers(dataset):
    root, _, _ = dataset
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "meta/twinbrain.json",
    ]
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]


def test_info_json_fields(dataset):
    root, info, _ = dataset
    on_disk = json.loads((root / "meta/info.json").read_text())
    assert on_disk == json.loads(json.dumps(info))
    assert set(on_disk) == {
        "codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
        "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path",
        "video_path", "features",
    }  # fmt: skip
    assert on_disk["codebase_version"] == "v3.0" and on_disk["robot_type"] == "testbot"
    assert on_disk["total_episodes"] == 3 and on_disk["total_frames"] == 98 and on_disk["total_tasks"] == 2
    assert on_disk["chunks_size"] == 1000 and on_disk["data_files_size_in_mb"] == 100
    assert on_disk["video_files_size_in_mb"] == 500 and on_disk["fps"] == FPS
    assert on_disk["splits"] == {"train": "0:3"} and on_disk["video_path"] is None
    assert on_disk["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    f = on_disk["features"]
    assert list(f) == [
        "observation.state",
        "action",
        "observation.images.front",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
    ]
    assert f["observation.state"] == {"dtype": "float32", "shape": [3], "names": list(JOINTS)}
    assert f["action"] == {"dtype": "float32", "shape": [3], "names": list(JOINTS)}
    assert f["observation.images.front"] == {
        "dtype": "image",
        "shape": [24, 32, 3],
        "names": ["height", "width", "channels"],
    }
    assert f["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        assert f[k] == {"dtype": "int64", "shape": [1], "names": None}


def test_data_parquet_schema_and_hf_metadata(dataset):
    root, _, _ = dataset
    t = pq.read_table(root / "data/chunk-000/file-000.parquet")
    sch = t.schema
    assert sch.field("observation.state").type == pa.list_(pa.float32(), 3)
    assert sch.field("action").type == pa.list_(pa.float32(), 3)
    assert sch.field("observation.images.front").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    assert sch.field("timestamp").type == pa.float32()
    for k in ("frame_index", "episode_index", "index", "task_index"):
        assert sch.field(k).type == pa.int64()
    hf = json.loads(sch.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.state"] == {
        "feature": {"dtype": "float32", "_type": "Value"},
        "length": 3,
        "_type": "List",
    }
    assert hf["observation.images.front"] == {"_type": "Image"}
    assert hf["timestamp"] == {"dtype": "float32", "_type": "Value"}
    assert t.num_rows == 98 and pq.ParquetFile(root / "data/chunk-000/file-000.parquet").num_row_groups > 3


def test_frame_columns_timestamps_and_values(dataset):
    root, _, written = dataset
    t = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pydict()
    assert t["index"] == list(range(98))
    ep = np.array(t["episode_index"])
    fi = np.array(t["frame_index"])
    assert list(np.bincount(ep)) == [n for _, n in EPISODES]
    # timestamps are exactly on the 1/fps grid, restarting at 0 each episode (LeRobot checks this)
    ts = np.array(t["timestamp"], dtype=np.float32)
    assert np.array_equal(ts, (fi / FPS).astype(np.float32))
    for e in range(3):
        assert np.allclose(np.diff(ts[ep == e]), 1 / FPS, atol=1e-6) and ts[ep == e][0] == 0
    assert t["task_index"] == [0] * 40 + [1] * 25 + [0] * 33
    flat = [f for frames in written for f in frames]
    assert np.allclose(
        np.array(t["observation.state"]), np.stack([f["observation.state"] for f in flat]), atol=1e-6
    )
    assert np.allclose(np.array(t["action"]), np.stack([f["action"] for f in flat]), atol=1e-6)
    cell = t["observation.images.front"][41]
    assert cell["path"] is None and cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(lv.decode_png(cell["bytes"]), flat[41]["observation.images.front"])


def test_tasks_parquet_has_pandas_index(dataset):
    root, _, _ = dataset
    t = pq.read_table(root / "meta/tasks.parquet")
    assert t.column_names == ["task_index", "__index_level_0__"]
    assert t.column("task_index").to_pylist() == [0, 1]
    assert t.column("__index_level_0__").to_pylist() == ["pick the cube", "place the cube"]
    meta = json.loads(t.schema.metadata[b"pandas"])
    assert meta["index_columns"] == ["__index_level_0__"]


def test_episodes_parquet_columns(dataset):
    root, _, _ = dataset
    t = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["episode_index"] for r in t] == [0, 1, 2]
    assert [r["tasks"] for r in t] == [["pick the cube"], ["place the cube"], ["pick the cube"]]
    assert [r["length"] for r in t] == [40, 25, 33]
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in t] == [(0, 40), (40, 65), (65, 98)]
    for r in t:
        assert r["data/chunk_index"] == 0 and r["data/file_index"] == 0
        assert r["meta/episodes/chunk_index"] == 0 and r["meta/episodes/file_index"] == 0
        for feat in (
            "observation.state",
            "action",
            "observation.images.front",
            "timestamp",
            "frame_index",
            "episode_index",
            "index",
            "task_index",
        ):
            for s in lv.STAT_KEYS:
                assert f"stats/{feat}/{s}" in r, f"stats/{feat}/{s}"
    r1 = t[1]
    assert r1["stats/frame_index/min"] == [0] and r1["stats/frame_index/max"] == [24]
    assert r1["stats/index/min"] == [40] and r1["stats/observation.state/count"] == [25]
    assert np.array(r1["stats/observation.images.front/mean"]).shape == (3, 1, 1)


def test_stats_json(dataset):
    root, _, written = dataset
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == {
        "observation.state",
        "action",
        "observation.images.front",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
    }
    state = np.stack([f["observation.state"] for frames in written for f in frames]).astype(np.float32)
    s = stats["observation.state"]
    assert set(s) == set(lv.STAT_KEYS)
    assert s["count"] == [98]
    assert np.allclose(s["mean"], state.mean(0), atol=1e-5) and np.allclose(s["std"], state.std(0), atol=1e-5)
    assert np.allclose(s["min"], state.min(0)) and np.allclose(s["max"], state.max(0))
    assert np.array(s["q01"]).shape == (3,) and np.all(np.array(s["q01"]) <= np.array(s["q99"]))
    img = stats["observation.images.front"]
    assert np.array(img["mean"]).shape == (3, 1, 1) and img["count"] == [98]  # every frame of short episodes
    assert 0.0 <= np.min(img["min"]) and np.max(img["max"]) <= 1.0
    assert np.allclose(np.array(img["mean"]).ravel(), 127.0 / 255, atol=0.02)
    assert stats["index"]["min"] == [0] and stats["index"]["max"] == [97]
    assert np.array(stats["timestamp"]["mean"]).shape == (1,)


def test_reader_round_trip(dataset):
    root, _, written = dataset
    ds = LeRobotV3Dataset(root)
    assert ds.num_frames == 98 and ds.num_episodes == 3 and ds.fps == FPS
    assert ds.tasks == ["pick the cube", "place the cube"]
    assert ds.episode_bounds.tolist() == [[0, 40], [40, 65], [65, 98]]
    cols = ds.columns()
    assert cols["observation.state"].shape == (98, 3) and cols["observation.state"].dtype == np.float32
    assert cols["timestamp"].dtype == np.float32
    ep = ds.episode(2, images=True)
    assert ep["task"] == "pick the cube" and ep["observation.images.front"].shape == (33, 24, 32, 3)
    assert np.array_equal(ep["observation.images.front"][5], written[2][5]["observation.images.front"])
    assert ds.task_of(50) == "place the cube"
    assert ds.stats["action"]["mean"].shape == (3,)
    assert ds.extra == {"source": "test"}


def test_data_files_rotate_by_size(tmp_path):
    rng = np.random.default_rng(1)
    feats = lv.make_features(JOINTS, {"front": (64, 96, 3)})
    w = lv.LeRobotV3Writer(tmp_path / "ds", fps=10, features=feats, data_files_size_in_mb=1)
    for _ in range(3):
        w.start_episode("t", 30)
        for f in _frames(rng, 30):
            f["observation.images.front"] = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
            w.add_frame(f)
        w.end_episode()
    w.finalize()
    files = sorted(p.name for p in (tmp_path / "ds/data/chunk-000").iterdir())
    assert len(files) >= 2
    ds = LeRobotV3Dataset(tmp_path / "ds")
    assert [e["data/file_index"] for e in ds.episodes][0] == 0 and ds.episodes[-1]["data/file_index"] >= 1
    assert ds.columns()["index"].tolist() == list(range(90))
    assert ds.images("observation.images.front", [89]).shape == (1, 64, 96, 3)


def test_failures_leave_nothing(tmp_path):
    feats = lv.make_features(JOINTS, {})
    w = lv.LeRobotV3Writer(tmp_path / "ds", fps=30, features=feats)
    w.start_episode("t", 2)
    w.add_frame({"observation.state": [0, 0, 0], "action": [0, 0, 0]})
    with pytest.raises(ValidationError, match="declared 2 frames"):
        w.end_episode()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with lv.LeRobotV3Writer(tmp_path / "ds", fps=30, features=feats) as w2:
        with pytest.raises(ValidationError, match="no episode"):
            w2.finalize()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValidationError, match="contains '/'"):
        lv.LeRobotV3Writer(tmp_path / "x", fps=30, features={"a/b": {"dtype": "float32", "shape": (1,)}})
    with pytest.raises(ValidationError, match="positive integer"):
        lv.LeRobotV3Writer(tmp_path / "x", fps=29.97, features=feats)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ValidationError, match="not empty"):
        lv.LeRobotV3Writer(tmp_path / "full", fps=30, features=feats)
    with pytest.raises(DatasetError, match="info.json is missing"):
        LeRobotV3Dataset(tmp_path / "full")


def test_frame_validation(tmp_path):
    feats = lv.make_features(JOINTS, {"front": (4, 4, 3)})
    with lv.LeRobotV3Writer(tmp_path / "ds", fps=30, features=feats) as w:
        w.start_episode("t", 3)
        with pytest.raises(ValidationError, match="missing"):
            w.add_frame({"observation.state": [0, 0, 0]})
        with pytest.raises(ValidationError, match="shape"):
            w.add_frame(
                {
                    "observation.state": [0, 0],
                    "action": [0, 0, 0],
                    "observation.images.front": np.zeros((4, 4, 3), np.uint8),
                }
            )
        with pytest.raises(ValidationError, match="uint8"):
            w.add_frame(
                {
                    "observation.state": [0, 0, 0],
                    "action": [0, 0, 0],
                    "observation.images.front": np.zeros((4, 5, 3), np.uint8),
                }
            )


def test_loads_through_hf_datasets_like_lerobot(dataset):
    """LeRobotDataset's own loading calls (needs ``datasets`` + ``pandas``, absent from the ROS venv)."""
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    root, info, _ = dataset
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.loc["place the cube"].task_index == 1 and tasks.iloc[0].name == "pick the cube"
    feats = {}
    for k, ft in info["features"].items():
        if ft["dtype"] == "image":
            feats[k] = datasets.Image()
        elif tuple(ft["shape"]) == (1,):
            feats[k] = datasets.Value(ft["dtype"])
        else:
            feats[k] = datasets.Sequence(length=ft["shape"][0], feature=datasets.Value(ft["dtype"]))
    hf = datasets.Dataset.from_parquet(
        [str(p) for p in sorted((root / "data").glob("*/*.parquet"))], features=datasets.Features(feats)
    )
    assert len(hf) == 98 and hf[45]["observation.images.front"].size == (32, 24)
    eps = datasets.Dataset.from_parquet(str(root / "meta/episodes/chunk-000/file-000.parquet"))
    assert eps[1]["dataset_from_index"] == 40


def test_uint8_image_stats_match_the_generic_path():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 3, 20, 30), dtype=np.uint8)
    fast = lv.feature_stats(imgs, image=True)
    ref = lv.feature_stats(imgs.astype(np.int64), image=True)  # np.quantile over every pixel
    assert set(fast) == set(lv.STAT_KEYS)
    for k in fast:
        assert fast[k].shape == ref[k].shape and np.allclose(fast[k], ref[k]), k


def test_single_joint_vector_feature(tmp_path):
    w = lv.LeRobotV3Writer(tmp_path / "ds", fps=10, features=lv.make_features(["gripper"], {}))
    w.start_episode("grip", 3)
    for k in range(3):
        w.add_frame({"observation.state": [k], "action": [k + 1]})
    w.end_episode()
    w.finalize()
    cols = LeRobotV3Dataset(tmp_path / "ds").columns()
    assert cols["observation.state"].tolist() == [0, 1, 2] and cols["action"].tolist() == [1, 2, 3]
