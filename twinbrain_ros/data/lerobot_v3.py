# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Write LeRobot v3.0 datasets with pyarrow alone (no lerobot, torch or pandas needed).

The layout, file names, column names and types, ``info.json`` keys and stats shapes follow the
``lerobot`` 0.4.x writer (``LeRobotDataset.create/add_frame/save_episode/finalize``) so that
``LeRobotDataset(repo_id, root=...)`` loads the result unchanged::

    meta/info.json                              codebase_version "v3.0", fps, features, totals, paths
    meta/stats.json                             per feature: min, max, mean, std, count, q01..q99
    meta/tasks.parquet                          pandas frame: index = task string, column task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode (indices, tasks, stats/...)
    data/chunk-000/file-000.parquet             one row per frame, many episodes per file
    meta/twinbrain.json                         our provenance (ignored by lerobot)

Frame columns are the features in ``info.json`` order: vectors as ``fixed_size_list<float>[N]``
(HF ``Sequence(length=N)``), images as the HF ``Image`` struct ``{bytes: PNG, path: null}``, then
``timestamp`` (float32, exactly ``frame_index / fps``), ``frame_index``, ``episode_index``, ``index``
and ``task_index`` (int64). The parquet schema carries the ``huggingface`` features metadata and
``tasks.parquet`` the ``pandas`` metadata that restores its index, exactly as those libraries write it.

The writer never leaves a complete-looking dataset behind on failure: it writes into a hidden
sibling directory and renames it to ``root`` only in :meth:`LeRobotV3Writer.finalize`, after
``info.json`` (written last) and an fsync; :meth:`LeRobotV3Writer.abort` deletes the temporary tree.

Usage:
    features = make_features(("j1", "j2"), {"front": (480, 640, 3)})
    w = LeRobotV3Writer("out/ds", fps=30, features=features, robot_type="so101")
    w.start_episode("pick the cube", length=len(frames))
    for f in frames:
        w.add_frame({"observation.state": q, "action": a, "observation.images.front": rgb})
    w.end_episode()
    info = w.finalize()
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twinbrain_ros.core.validation import ValidationError

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
TWINBRAIN_META_PATH = "meta/twinbrain.json"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = DATA_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"

DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": (1,), "names": None},
    "frame_index": {"dtype": "int64", "shape": (1,), "names": None},
    "episode_index": {"dtype": "int64", "shape": (1,), "names": None},
    "index": {"dtype": "int64", "shape": (1,), "names": None},
    "task_index": {"dtype": "int64", "shape": (1,), "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
IMAGE_NAMES = ["height", "width", "channels"]

_ARROW_TYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "int16": pa.int16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "bool": pa.bool_(),
}
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# --- features ---------------------------------------------------------------------------------------


def make_features(
    joint_names: Sequence[str],
    cameras: Mapping[str, tuple[int, int, int]],
    *,
    action_names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The user features of a teleoperation dataset (the default features are added by the writer).

    Args:
        joint_names: names of the ``observation.state`` entries (contract joint order).
        cameras: camera name -> (height, width, channels); each becomes ``observation.images.<name>``.
        action_names: names of the ``action`` entries; defaults to ``joint_names``.
    """
    feats: dict[str, dict[str, Any]] = {
        "observation.state": {"dtype": "float32", "shape": (len(joint_names),), "names": list(joint_names)},
        "action": {
            "dtype": "float32",
            "shape": (len(action_names or joint_names),),
            "names": list(action_names or joint_names),
        },
    }
    for name, (h, w, c) in cameras.items():
        feats[f"observation.images.{name}"] = {
            "dtype": "image",
            "shape": (h, w, c),
            "names": list(IMAGE_NAMES),
        }
    return feats


def validate_features(features: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ValidationError naming every feature this writer cannot store as LeRobot v3."""
    problems = []
    for name, ft in features.items():
        if "/" in name:
            problems.append(f"feature name '{name}' contains '/' (not allowed by LeRobot)")
        dtype, shape = ft.get("dtype"), tuple(ft.get("shape") or ())
        if dtype == "image":
            if len(shape) != 3 or shape[2] != 3:
                problems.append(f"image feature '{name}' must have shape (height, width, 3), got {shape}")
        elif dtype == "video":
            problems.append(f"feature '{name}': video features are not supported by this writer; use 'image'")
        elif dtype in NUMERIC_DTYPES:
            if len(shape) != 1 or shape[0] < 1:
                problems.append(f"feature '{name}' must have a 1-D shape like (N,), got {shape}")
        else:
            problems.append(f"feature '{name}' has unsupported dtype {dtype!r}")
    if problems:
        raise ValidationError(problems)


def all_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """User features followed by the default frame features, as stored in ``info.json``."""
    out = {k: dict(v) for k, v in features.items() if k not in DEFAULT_FEATURES}
    out.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
    return out


def hf_feature_json(ft: Mapping[str, Any]) -> dict[str, Any]:
    """The HF ``datasets`` feature description (``Features.to_dict()``) of one LeRobot feature."""
    if ft["dtype"] == "image":
        return {"_type": "Image"}
    shape = tuple(ft["shape"])
    if shape == (1,):
        return {"dtype": ft["dtype"], "_type": "Value"}
    return {"feature": {"dtype": ft["dtype"], "_type": "Value"}, "length": int(shape[0]), "_type": "List"}


def arrow_type(ft: Mapping[str, Any]) -> pa.DataType:
    """The arrow type HF ``datasets`` uses for one LeRobot feature."""
    if ft["dtype"] == "image":
        return _IMAGE_TYPE
    shape = tuple(ft["shape"])
    base = _ARROW_TYPES[ft["dtype"]]
    return base if shape == (1,) else pa.list_(base, int(shape[0]))


def data_schema(features: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """Arrow schema of the frame parquet files, with the ``huggingface`` features metadata."""
    feats = all_features(features)
    hf = {"info": {"features": {k: hf_feature_json(v) for k, v in feats.items()}}}
    return pa.schema(
        [pa.field(k, arrow_type(v)) for k, v in feats.items()],
        metadata={"huggingface": json.dumps(hf)},
    )


# --- stats ------------------------------------------------------------------------------------------


def estimate_num_samples(n: int, min_num: int = 100, max_num: int = 10_000, power: float = 0.75) -> int:
    """How many images of an n-frame episode enter the image stats (LeRobot's heuristic)."""
    if n < min_num:
        min_num = n
    return max(min_num, min(int(n**power), max_num))


def sample_indices(n: int) -> list[int]:
    """Evenly spaced frame indices whose images enter the stats."""
    if n <= 0:
        return []
    return np.round(np.linspace(0, n - 1, estimate_num_samples(n))).astype(int).tolist()


def downsample_chw(img: np.ndarray, target: int = 150, threshold: int = 300) -> np.ndarray:
    """Stride-downsample a (C, H, W) image whose long side is >= ``threshold`` to about ``target``."""
    _, h, w = img.shape
    if max(h, w) < threshold:
        return img
    f = int(w / target) if w > h else int(h / target)
    return img[:, ::f, ::f]


def feature_stats(data: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """Stats of one feature over one episode, shaped like LeRobot's ``compute_episode_stats``.

    Args:
        data: (N,) scalars, (N, D) vectors, or for ``image`` (S, C, H, W) uint8 sampled images.
        image: per-channel stats scaled to [0, 1] with shape (C, 1, 1).

    Returns:
        min, max, mean, std, q01..q99 (shape (1,), (D,) or (C, 1, 1)) and count (shape (1,)).
    """
    if image and data.dtype == np.uint8 and data.size:
        return _uint8_image_stats(data)
    if image:
        s, c = data.shape[0], data.shape[1]
        flat = data.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
        count = s
    else:
        flat = data.reshape(data.shape[0], -1)
        count = data.shape[0]
    if flat.shape[0] == 0:
        raise ValidationError(["cannot compute stats of an empty feature"])
    stats = {
        "min": np.min(flat, axis=0),
        "max": np.max(flat, axis=0),
        "mean": np.mean(flat, axis=0, dtype=np.float64),
        "std": np.std(flat, axis=0, dtype=np.float64),
    }
    if flat.shape[0] < 2:
        for k in QUANTILE_KEYS:
            stats[k] = stats["mean"].copy()
    else:
        qs = np.quantile(flat.astype(np.float64), QUANTILES, axis=0)
        for k, q in zip(QUANTILE_KEYS, qs, strict=True):
            stats[k] = q
    if image:
        stats = {k: (v.astype(np.float64) / 255.0).reshape(-1, 1, 1) for k, v in stats.items()}
    stats["count"] = np.array([count], dtype=np.int64)
    return stats


def _uint8_image_stats(data: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`feature_stats` of (S, C, H, W) uint8 images from per-channel histograms (exact, fast)."""
    s, c = data.shape[0], data.shape[1]
    values = np.arange(256, dtype=np.float64)
    out: dict[str, list[float]] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILE_KEYS)}
    for ch in range(c):
        hist = np.bincount(data[:, ch].reshape(-1), minlength=256).astype(np.float64)
        n = hist.sum()
        nz = np.flatnonzero(hist)
        mean = float(hist @ values / n)
        out["min"].append(float(nz[0]))
        out["max"].append(float(nz[-1]))
        out["mean"].append(mean)
        out["std"].append(float(np.sqrt(max(hist @ (values - mean) ** 2 / n, 0.0))))
        cum = np.cumsum(hist)
        for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
            if n < 2:
                out[key].append(mean)
                continue
            pos = q * (n - 1)  # numpy's default (linear) quantile on the sorted values
            lo, hi = int(np.floor(pos)), int(np.ceil(pos))
            v_lo = float(np.searchsorted(cum, lo, side="right"))
            v_hi = float(np.searchsorted(cum, hi, side="right"))
            out[key].append(v_lo + (v_hi - v_lo) * (pos - lo))
    stats = {k: (np.asarray(v, dtype=np.float64) / 255.0).reshape(-1, 1, 1) for k, v in out.items()}
    stats["count"] = np.array([s], dtype=np.int64)
    return stats


def aggregate_stats(
    per_episode: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
) -> dict[str, dict[str, np.ndarray]]:
    """Combine per-episode stats like LeRobot's ``aggregate_stats``.

    min/max are exact, mean/std combine by the parallel (count-weighted) algorithm and quantiles are
    count-weighted means of the episode quantiles (LeRobot's approximation).
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    keys = sorted({k for s in per_episode for k in s})
    for key in keys:
        items = [s[key] for s in per_episode if key in s]
        means = np.stack([np.asarray(s["mean"], np.float64) for s in items])
        var = np.stack([np.asarray(s["std"], np.float64) ** 2 for s in items])
        counts = np.stack([np.asarray(s["count"], np.float64) for s in items])
        total = counts.sum(axis=0)
        w = counts
        while w.ndim < means.ndim:
            w = w[..., None]
        mean = (means * w).sum(axis=0) / total
        variance = ((var + (means - mean) ** 2) * w).sum(axis=0) / total
        agg = {
            "min": np.min(np.stack([s["min"] for s in items]), axis=0),
            "max": np.max(np.stack([s["max"] for s in items]), axis=0),
            "mean": mean,
            "std": np.sqrt(variance),
            "count": total.astype(np.int64),
        }
        for q in QUANTILE_KEYS:
            if all(q in s for s in items):
                agg[q] = (np.stack([np.asarray(s[q], np.float64) for s in items]) * w).sum(axis=0) / total
        out[key] = agg
    return out


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Nested lists (``numpy.tolist``) as in ``meta/stats.json``."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


# --- images -----------------------------------------------------------------------------------------


def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes (LeRobot's image writer also uses compress_level 1)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> (H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


# --- tasks ------------------------------------------------------------------------------------------


def tasks_table(tasks: Sequence[str]) -> pa.Table:
    """``meta/tasks.parquet`` exactly as ``pandas.DataFrame({"task_index": ...}, index=tasks)`` writes it.

    The index is stored as the column ``__index_level_0__`` and the ``pandas`` schema metadata names
    it as the index, so ``pd.read_parquet`` returns a frame indexed by task string.
    """
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema(
        [pa.field("task_index", pa.int64()), pa.field("__index_level_0__", pa.string())],
        metadata={"pandas": json.dumps(pandas_meta)},
    )
    return pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "__index_level_0__": pa.array(list(tasks), pa.string()),
        },
        schema=schema,
    )


# --- writer -----------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


class LeRobotV3Writer:
    """Streams episodes into a LeRobot v3.0 dataset directory.

    Frames are buffered and written as parquet row groups of ``row_group_frames`` rows, so memory
    stays bounded however long an episode is. An episode never spans two data files; a new file
    starts when the current one has reached ``data_files_size_in_mb``.

    Args:
        root: the dataset directory to create; must not exist (or be empty), unless ``overwrite``.
        fps: frames per second (an integer, as LeRobot requires).
        features: user features (see :func:`make_features`); the defaults are appended.
        robot_type: stored in ``info.json``.
        chunks_size: files per chunk directory.
        data_files_size_in_mb: size at which a new data file is started.
        png_compress_level: zlib level of the PNG images (0-9).
        row_group_frames: frames per parquet row group.
        overwrite: replace an existing ``root`` on :meth:`finalize`.
        encode_threads: threads encoding PNG images in parallel (PIL releases the GIL); default
            ``min(4, cpu count)``, 1 = encode inline.

    Raises:
        ValidationError: on bad features or fps, or an existing non-empty ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: int,
        features: Mapping[str, Mapping[str, Any]],
        robot_type: str | None = None,
        *,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
        data_files_size_in_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB,
        png_compress_level: int = 1,
        row_group_frames: int = 64,
        overwrite: bool = False,
        encode_threads: int | None = None,
    ) -> None:
        problems = []
        if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
            problems.append(f"fps must be a positive integer, got {fps!r}")
        if chunks_size < 1 or data_files_size_in_mb <= 0 or row_group_frames < 1:
            problems.append("chunks_size, data_files_size_in_mb and row_group_frames must be positive")
        if problems:
            raise ValidationError(problems)
        validate_features(features)
        self.root = Path(root)
        if self.root.exists() and not overwrite and (not self.root.is_dir() or any(self.root.iterdir())):
            raise ValidationError(
                [f"output '{self.root}' already exists and is not empty (choose a new path)"]
            )
        self.fps = int(fps)
        self.features = all_features(features)
        self.user_features = [k for k in self.features if k not in DEFAULT_FEATURES]
        self.image_keys = [k for k, v in self.features.items() if v["dtype"] == "image"]
        self.robot_type = robot_type
        self.chunks_size = int(chunks_size)
        self.data_files_size_in_mb = int(data_files_size_in_mb)
        self.png_compress_level = int(png_compress_level)
        self.row_group_frames = int(row_group_frames)
        self.overwrite = overwrite
        n_threads = min(4, os.cpu_count() or 1) if encode_threads is None else max(1, int(encode_threads))
        self._pool = (
            ThreadPoolExecutor(n_threads, thread_name_prefix="png")
            if n_threads > 1 and self.image_keys
            else None
        )
        self.schema = data_schema(features)
        self.tmp = self.root.parent / f".{self.root.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.total_frames = 0
        self._chunk, self._file = 0, 0
        self._pq: pq.ParquetWriter | None = None
        self._pq_path: Path | None = None
        self._ep: dict[str, Any] | None = None
        self._closed = False

    # -- episodes --

    def task_index(self, task: str) -> int:
        """The index of ``task``, adding it if new."""
        if task not in self.tasks:
            self.tasks[task] = len(self.tasks)
        return self.tasks[task]

    def start_episode(self, task: str, length: int) -> int:
        """Begin the next episode of ``length`` frames performing ``task``; returns its index."""
        if self._closed:
            raise RuntimeError("writer is finalized or aborted")
        if self._ep is not None:
            raise RuntimeError("start_episode called while an episode is open (call end_episode first)")
        if not isinstance(task, str) or not task.strip():
            raise ValidationError(["the episode task (instruction) must be a non-empty string"])
        if length < 1:
            raise ValidationError([f"an episode needs at least one frame, got length {length}"])
        self._maybe_rotate_data_file()
        index = len(self.episodes)
        new_task = task not in self.tasks
        self._ep = {
            "new_task": new_task,
            "index": index,
            "task": task,
            "task_index": self.task_index(task),
            "length": int(length),
            "n": 0,
            "rows": {k: [] for k in self.features},
            "vectors": {k: [] for k in self.features if self.features[k]["dtype"] != "image"},
            "samples": set(sample_indices(length)),
            "images": {k: [] for k in self.image_keys},
            "flushed": False,
            "from_index": self.total_frames,
        }
        return index

    def add_frame(self, frame: Mapping[str, Any]) -> None:
        """Append one frame: a value for every user feature.

        Vectors are array-likes of the feature's length; images are (H, W, 3) uint8 arrays or
        already-encoded PNG bytes.
        """
        ep = self._ep
        if ep is None:
            raise RuntimeError("add_frame called outside an episode (call start_episode first)")
        k = ep["n"]
        if k >= ep["length"]:
            raise ValidationError([f"episode {ep['index']} declared {ep['length']} frames; got more"])
        missing = [f for f in self.user_features if f not in frame]
        extra = [f for f in frame if f not in self.features or f in DEFAULT_FEATURES]
        if missing or extra:
            raise ValidationError([f"frame features mismatch: missing {missing}, unexpected {extra}"])
        rows = ep["rows"]
        for name in self.user_features:
            ft, value = self.features[name], frame[name]
            if ft["dtype"] == "image":
                rows[name].append(self._image_cell(name, value, k in ep["samples"]))
            else:
                arr = np.asarray(value, dtype=ft["dtype"]).reshape(-1)
                if arr.shape != tuple(ft["shape"]):
                    raise ValidationError(
                        [f"feature '{name}' has shape {arr.shape}, expected {tuple(ft['shape'])}"]
                    )
                rows[name].append(arr)
                ep["vectors"][name].append(arr)
        ts = np.float32(k / self.fps)
        defaults = {
            "timestamp": ts,
            "frame_index": k,
            "episode_index": ep["index"],
            "index": ep["from_index"] + k,
            "task_index": ep["task_index"],
        }
        for name, v in defaults.items():
            rows[name].append(v)
            ep["vectors"][name].append(v)
        ep["n"] = k + 1
        if len(rows["index"]) >= self.row_group_frames:
            self._flush_rows()

    def _image_cell(self, name: str, value: Any, sample: bool) -> bytes | Future:
        if isinstance(value, (bytes, bytearray)):
            if sample:
                self._ep["images"][name].append(downsample_chw(decode_png(bytes(value)).transpose(2, 0, 1)))
            return bytes(value)
        img = np.asarray(value)
        shape = tuple(self.features[name]["shape"])
        if img.dtype != np.uint8 or img.shape != shape:
            raise ValidationError([f"image '{name}' must be uint8 {shape}, got {img.dtype} {img.shape}"])
        if sample:
            self._ep["images"][name].append(downsample_chw(np.ascontiguousarray(img.transpose(2, 0, 1))))
        if self._pool is not None:
            return self._pool.submit(encode_png, np.array(img, copy=True), self.png_compress_level)
        return encode_png(img, self.png_compress_level)

    def _flush_rows(self) -> None:
        ep = self._ep
        rows = ep["rows"]
        n = len(rows["index"])
        if n == 0:
            return
        arrays = []
        for name, ft in self.features.items():
            col = rows[name]
            if ft["dtype"] == "image":
                col = [c.result() if isinstance(c, Future) else c for c in col]
                arrays.append(
                    pa.StructArray.from_arrays(
                        [pa.array(col, pa.binary()), pa.nulls(n, pa.string())], fields=list(_IMAGE_TYPE)
                    )
                )
            elif tuple(ft["shape"]) == (1,):
                arrays.append(
                    pa.array(np.asarray(col, dtype=ft["dtype"]).reshape(-1), _ARROW_TYPES[ft["dtype"]])
                )
            else:
                flat = pa.array(np.concatenate(col).astype(ft["dtype"]), _ARROW_TYPES[ft["dtype"]])
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, int(ft["shape"][0])))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self._pq is None:
            self._pq_path = self.tmp / DATA_PATH.format(chunk_index=self._chunk, file_index=self._file)
            self._pq_path.parent.mkdir(parents=True, exist_ok=True)
            self._pq = pq.ParquetWriter(
                self._pq_path,
                self.schema,
                compression="snappy",
                use_dictionary=[k for k, v in self.features.items() if v["dtype"] != "image"],
            )
        self._pq.write_table(table)
        ep["flushed"] = True
        for col in rows.values():
            col.clear()

    def _maybe_rotate_data_file(self) -> None:
        if self._pq is None or self._pq_path is None:
            return
        if self._pq_path.stat().st_size < self.data_files_size_in_mb * 1024 * 1024:
            return
        self._pq.close()
        self._pq = None
        if self._file == self.chunks_size - 1:
            self._chunk, self._file = self._chunk + 1, 0
        else:
            self._file += 1

    def abort_episode(self) -> None:
        """Drop the open episode; only possible before any of its frames reached the disk."""
        if self._ep is None:
            return
        if self._ep["flushed"]:
            raise RuntimeError("cannot abort an episode whose frames are already written; abort the dataset")
        if self._ep["new_task"]:  # it was the last task added, so the other indices stay valid
            del self.tasks[self._ep["task"]]
        self._ep = None

    def end_episode(self) -> dict[str, Any]:
        """Write the open episode's remaining frames and record its metadata row and stats.

        Returns:
            The episode's row of ``meta/episodes`` (without its stats columns).

        Raises:
            ValidationError: if fewer frames were added than declared in :meth:`start_episode`.
        """
        ep = self._ep
        if ep is None:
            raise RuntimeError("end_episode called outside an episode")
        if ep["n"] != ep["length"]:
            raise ValidationError([f"episode {ep['index']} declared {ep['length']} frames but got {ep['n']}"])
        self._flush_rows()
        stats: dict[str, dict[str, np.ndarray]] = {}
        for name, vals in ep["vectors"].items():
            arr = np.stack([np.atleast_1d(np.asarray(v)) for v in vals])
            if tuple(self.features[name]["shape"]) == (1,):
                arr = arr.reshape(-1)
            stats[name] = feature_stats(arr)
        for name in self.image_keys:
            imgs = ep["images"][name]
            if imgs:
                stats[name] = feature_stats(np.stack(imgs), image=True)
        row = {
            "episode_index": ep["index"],
            "tasks": [ep["task"]],
            "length": ep["length"],
            "data/chunk_index": self._chunk,
            "data/file_index": self._file,
            "dataset_from_index": ep["from_index"],
            "dataset_to_index": ep["from_index"] + ep["length"],
        }
        self.episodes.append(row)
        self.episode_stats.append(stats)
        self.total_frames += ep["length"]
        self._ep = None
        return dict(row)

    # -- finish --

    def info(self) -> dict[str, Any]:
        """The ``meta/info.json`` content for the episodes written so far."""
        feats = {}
        for k, v in self.features.items():
            d = {"dtype": v["dtype"], "shape": list(v["shape"]), "names": v.get("names")}
            feats[k] = d
        n = len(self.episodes)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": feats,
        }

    def finalize(self, extra_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the metadata files, fsync everything and move the dataset into place.

        Args:
            extra_meta: JSON-able provenance stored in ``meta/twinbrain.json``.

        Returns:
            The ``info.json`` content.

        Raises:
            ValidationError: if no episode was written or an episode is still open.
        """
        if self._ep is not None:
            raise ValidationError(["finalize called with an episode still open"])
        if not self.episodes:
            raise ValidationError(["no episode was written: refusing to create an empty dataset"])
        if self._pq is not None:
            self._pq.close()
            self._pq = None
        self._shutdown_pool()
        t = self.tmp
        (t / "meta").mkdir(parents=True, exist_ok=True)
        pq.write_table(tasks_table(sorted(self.tasks, key=self.tasks.get)), t / TASKS_PATH)
        self._write_episodes()
        stats = aggregate_stats(self.episode_stats)
        _write_json(t / STATS_PATH, stats_to_json(stats))
        if extra_meta is not None:
            _write_json(t / TWINBRAIN_META_PATH, dict(extra_meta))
        info = self.info()
        _write_json(t / INFO_PATH, info)  # last: a dataset without info.json is not a dataset
        _fsync_tree(t)
        if self.root.exists():
            if not self.overwrite and (not self.root.is_dir() or any(self.root.iterdir())):
                raise ValidationError([f"output '{self.root}' appeared while converting; not replacing it"])
            old = self.root.parent / f".{self.root.name}.old-{os.getpid()}"
            os.replace(self.root, old)
            os.replace(t, self.root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(t, self.root)
        _fsync_dir(self.root.parent)
        self._closed = True
        return info

    def _write_episodes(self) -> None:
        cols: dict[str, list] = {}
        for row, stats in zip(self.episodes, self.episode_stats, strict=True):
            full = dict(row)
            for feat, st in stats.items():
                for s, v in st.items():
                    full[f"stats/{feat}/{s}"] = np.asarray(v).tolist()
            full["meta/episodes/chunk_index"] = 0
            full["meta/episodes/file_index"] = 0
            for k, v in full.items():
                cols.setdefault(k, []).append(v)
        lengths = {len(v) for v in cols.values()}
        if (
            len(lengths) != 1
        ):  # an image feature without samples in some episode: cannot happen with PNG input
            raise ValidationError(["episode stats columns are inconsistent across episodes"])
        path = self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pydict(cols), path, compression="snappy", use_dictionary=True)

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Delete everything written so far; ``root`` is left untouched."""
        self._shutdown_pool()
        if self._pq is not None:
            try:
                self._pq.close()
            except Exception:  # noqa: BLE001 - the file is being deleted anyway
                pass
            self._pq = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._ep = None
        self._closed = True

    def __enter__(self) -> LeRobotV3Writer:
        """Context manager: :meth:`abort` on an exception unless finalized."""
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Abort if the block raised or never finalized."""
        if not self._closed:
            self.abort()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4, ensure_ascii=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
