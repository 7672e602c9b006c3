# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Read a LeRobot v3.0 dataset back as numpy arrays (pyarrow only: no lerobot, torch or pandas).

What the trainer needs: every non-image column over all frames as arrays, episode boundaries, the
task strings, the normalisation stats, and decoded images on demand. Image datasets (``dtype:
image``, PNG in parquet) are supported; video datasets are described but their frames are not
decoded here.

Usage:
    ds = LeRobotV3Dataset("datasets/pick_cube")
    cols = ds.columns()                        # {"observation.state": (N, J) float32, "action": ..., ...}
    for ep in range(ds.num_episodes):
        a, b = ds.episode_bounds[ep]           # frames [a, b) of episode ep
    img = ds.images("observation.images.front", [0, 1, 2])   # (3, H, W, 3) uint8
    task = ds.task_of(frame_index=10)          # the instruction string
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq

from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.data.lerobot_v3 import (
    CODEBASE_VERSION,
    EPISODES_DIR,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    TWINBRAIN_META_PATH,
    decode_png,
)


class DatasetError(ValidationError):
    """The directory is not a readable LeRobot v3.0 dataset; the message names the file and problem."""


class LeRobotV3Dataset:
    """A LeRobot v3.0 dataset on disk.

    Attributes:
        root: the dataset directory.
        info: ``meta/info.json``.
        fps: frames per second.
        features: feature name -> {dtype, shape, names}.
        tasks: task strings in ``task_index`` order.
        episodes: one dict per episode (``episode_index``, ``tasks``, ``length``,
            ``dataset_from_index``, ``dataset_to_index``, ``data/chunk_index``, ``data/file_index``...).
        episode_bounds: (E, 2) int64 array of [from, to) global frame indices.
        stats: feature -> stat name -> numpy array (``meta/stats.json``).
        extra: ``meta/twinbrain.json`` (our provenance and sync report) or {}.

    Raises:
        DatasetError: if a required file is missing or inconsistent.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise DatasetError([f"'{self.root}' is not a LeRobot dataset: {INFO_PATH} is missing"])
        try:
            self.info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError([f"'{info_path}' is not valid JSON: {e}"]) from e
        version = self.info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise DatasetError(
                [f"'{info_path}': codebase_version {version!r}, this reader needs {CODEBASE_VERSION!r}"]
            )
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        self.episode_bounds = np.asarray(
            [[e["dataset_from_index"], e["dataset_to_index"]] for e in self.episodes], dtype=np.int64
        ).reshape(-1, 2)
        self.stats = self._read_stats()
        extra = self.root / TWINBRAIN_META_PATH
        self.extra = json.loads(extra.read_text(encoding="utf-8")) if extra.is_file() else {}
        self._data_files = self._find_data_files()
        total = int(self.info.get("total_frames", -1))
        if self.episode_bounds.size and int(self.episode_bounds[-1, 1]) != total:
            raise DatasetError(
                [
                    f"episodes end at frame {int(self.episode_bounds[-1, 1])} but info.json says "
                    f"total_frames = {total}"
                ]
            )

    # -- metadata --

    def _read_tasks(self) -> list[str]:
        path = self.root / TASKS_PATH
        if not path.is_file():
            raise DatasetError([f"'{path}' is missing"])
        t = pq.read_table(path)
        names = [n for n in t.column_names if n != "task_index"]
        if "task_index" not in t.column_names or len(names) != 1:
            raise DatasetError([f"'{path}' must hold task_index and one task column, has {t.column_names}"])
        idx = t.column("task_index").to_pylist()
        txt = t.column(names[0]).to_pylist()
        out = [""] * len(idx)
        for i, s in zip(idx, txt, strict=True):
            out[int(i)] = s
        return out

    def _read_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.root / EPISODES_DIR).glob("*/*.parquet"))
        if not files:
            raise DatasetError([f"'{self.root / EPISODES_DIR}' holds no parquet file"])
        rows: list[dict[str, Any]] = []
        for f in files:
            t = pq.read_table(f, columns=[c for c in pq.read_schema(f).names if not c.startswith("stats/")])
            rows.extend(t.to_pylist())
        rows.sort(key=lambda r: r["episode_index"])
        return rows

    def _read_stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        if not path.is_file():
            return {}
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in raw.items()}

    def _find_data_files(self) -> list[tuple[Path, int, int]]:
        """(path, first global index, end) of every data file, in index order."""
        template = self.info.get("data_path", "")
        keys = sorted({(int(e["data/chunk_index"]), int(e["data/file_index"])) for e in self.episodes})
        out = []
        for c, f in keys:
            path = self.root / template.format(chunk_index=c, file_index=f)
            if not path.is_file():
                raise DatasetError([f"data file '{path}' named by meta/episodes is missing"])
            eps = [e for e in self.episodes if (e["data/chunk_index"], e["data/file_index"]) == (c, f)]
            out.append(
                (path, min(e["dataset_from_index"] for e in eps), max(e["dataset_to_index"] for e in eps))
            )
        out.sort(key=lambda t: t[1])
        return out

    @property
    def num_frames(self) -> int:
        """Total frames."""
        return int(self.info["total_frames"])

    @property
    def num_episodes(self) -> int:
        """Total episodes."""
        return len(self.episodes)

    @property
    def image_keys(self) -> list[str]:
        """Features stored as images."""
        return [k for k, v in self.features.items() if v["dtype"] == "image"]

    @property
    def video_keys(self) -> list[str]:
        """Features stored as videos (not decoded by this reader)."""
        return [k for k, v in self.features.items() if v["dtype"] == "video"]

    # -- data --

    def columns(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Non-image features over all frames, in global index order.

        Vectors become (N, D) arrays of their dtype, scalars (N,).

        Raises:
            DatasetError: for an unknown or image feature name.
        """
        wanted = (
            list(names)
            if names is not None
            else [k for k, v in self.features.items() if v["dtype"] not in ("image", "video")]
        )
        bad = [n for n in wanted if n not in self.features or self.features[n]["dtype"] in ("image", "video")]
        if bad:
            raise DatasetError([f"not a non-image feature of this dataset: {bad}"])
        parts: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
        for path, _, _ in self._data_files:
            t = pq.read_table(path, columns=wanted)
            for n in wanted:
                col = t.column(n).combine_chunks()
                shape = tuple(self.features[n]["shape"])
                if shape == (1,):
                    parts[n].append(col.to_numpy(zero_copy_only=False))
                else:
                    flat = (
                        col.values.to_numpy(zero_copy_only=False) if hasattr(col, "values") else col.flatten()
                    )
                    parts[n].append(np.asarray(flat).reshape(len(col), *shape))
        out = {n: np.concatenate(p) if p else np.zeros(0) for n, p in parts.items()}
        if (
            "index" in out
            and out["index"].size
            and not np.array_equal(out["index"], np.arange(out["index"].size))
        ):
            order = np.argsort(out["index"], kind="stable")
            out = {n: v[order] for n, v in out.items()}
        return out

    def episode(self, ep: int, images: bool = False) -> dict[str, Any]:
        """All features of one episode (images decoded if ``images``) plus its ``task``."""
        a, b = (int(x) for x in self.episode_bounds[ep])
        cols = self.columns()
        out: dict[str, Any] = {k: v[a:b] for k, v in cols.items()}
        if images:
            for k in self.image_keys:
                out[k] = self.images(k, range(a, b))
        out["task"] = self.episodes[ep]["tasks"][0] if self.episodes[ep]["tasks"] else ""
        return out

    def images(self, key: str, indices: Sequence[int] | range) -> np.ndarray:
        """Decoded images of feature ``key`` at global frame ``indices`` -> (n, H, W, 3) uint8."""
        if key not in self.image_keys:
            raise DatasetError([f"'{key}' is not an image feature (image features: {self.image_keys})"])
        idx = np.asarray(list(indices), dtype=np.int64)
        h, w, c = self.features[key]["shape"]
        out = np.empty((idx.size, h, w, c), dtype=np.uint8)
        for path, lo, hi in self._data_files:
            sel = np.flatnonzero((idx >= lo) & (idx < hi))
            if sel.size == 0:
                continue
            t = pq.read_table(path, columns=["index", key])
            gidx = t.column("index").to_numpy()
            pos = {int(g): i for i, g in enumerate(gidx)}
            structs = t.column(key).combine_chunks()
            data = structs.field("bytes")
            for s in sel:
                out[s] = decode_png(data[pos[int(idx[s])]].as_py())
        return out

    def task_of(self, frame_index: int) -> str:
        """The task string of global frame ``frame_index``."""
        ep = int(np.searchsorted(self.episode_bounds[:, 1], frame_index, side="right"))
        if ep >= self.num_episodes or frame_index < 0:
            raise IndexError(f"frame {frame_index} outside [0, {self.num_frames})")
        return self.episodes[ep]["tasks"][0]
