# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Training samples from a LeRobot v3 dataset: current frame + the next H actions as one chunk.

The trainer does not read files itself. It sees a dataset through :class:`FrameSource`, a small
protocol of numpy arrays over all frames (``states``, ``actions``, ``episode_index``, ``task_index``)
plus per-frame image access; ``twinbrain_ros/data/reader.py`` provides it for v3 datasets on disk
(:func:`open_source`), :class:`InMemorySource` for arrays already in memory (tests, conversions).

A sample at frame ``i`` of episode ``e`` holds the camera images and the joint state at ``i``, the
episode's instruction and the action chunk ``actions[i + o_k]`` for ``k = 0 .. H-1``, where the frame
offsets ``o_k = round(k * step_dt * fps)`` follow the embodiment's chunk step (``o_k = k`` when the
dataset runs at the chunk rate). Steps past the end of the episode repeat its last action and are
masked out of the loss (``action_mask`` = 0), so the model is never trained toward frames of the next
episode.

:func:`compute_normalizers` computes the statistics over all frames (``q01_q99``, ``min_max``,
``mean_std`` or ``identity`` per dim); "binary" action dims (a gripper commanded open/closed) are
thresholded to {0, 1} in the targets and left un-normalised (``identity``), as in the reference.
:func:`dataset_fingerprint` identifies the data a run was trained on; a resume on other data is refused.

Usage:
    source = open_source("data/so101_pick")                     # or InMemorySource(...)
    ds = ChunkDataset(source, horizon=16, step_dt=0.05, binary_action_dims=[5])
    normalizers = compute_normalizers(ds, action_mode="q01_q99", state_mode="q01_q99")
    collate = ChunkCollator(processor, normalizers["action"], embodiment.joint_names)
    loader = DataLoader(ds, batch_sampler=ResumableBatchSampler(len(ds), 8), collate_fn=collate)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from twinbrain_ros.core.normalize import MODES, Normalizer, compute_stats
from twinbrain_ros.core.types import Observation
from twinbrain_ros.core.validation import ValidationError

# Keys of one sample (numpy / str; the collator turns a list of them into the model batch).
IMAGES = "images"  # contract camera name -> (H, W, 3) uint8
STATE = "state"  # (J,) float64 raw joint state
INSTRUCTION = "instruction"  # str
ACTIONS = "actions"  # (H, A) float64 raw targets (binary dims already thresholded)
ACTION_MASK = "action_mask"  # (H,) bool, False past the episode end
INDEX = "index"  # int, global frame index

SYNTHETIC_PREFIX = "synthetic:"


# --------------------------------------------------------------------------------------------------
# The dataset protocol
# --------------------------------------------------------------------------------------------------
@runtime_checkable
class FrameSource(Protocol):
    """What the trainer needs from a dataset: numpy arrays over all N frames, and images by frame.

    Frames are in dataset order (LeRobot's global ``index``): each episode is one contiguous block.
    Optional attributes, used when present: ``state_names`` and ``action_names`` (checked against the
    contract's joint order), ``fingerprint()`` (a cheap identity of the files; otherwise the content is
    hashed) and ``root`` (the dataset directory).

    Attributes:
        fps: frame rate of the dataset.
        camera_names: names of the image streams (``front`` for ``observation.images.front``).
        tasks: instruction text per task index.
        episode_index: (N,) int episode of each frame.
        task_index: (N,) int task of each frame.
        states: (N, J) joint state (``observation.state``).
        actions: (N, A) action (``action``).
    """

    fps: float
    camera_names: tuple[str, ...]
    tasks: Sequence[str]
    episode_index: np.ndarray
    task_index: np.ndarray
    states: np.ndarray
    actions: np.ndarray

    def image(self, index: int, camera: str) -> np.ndarray:
        """The (H, W, 3) uint8 RGB image of ``camera`` at global frame ``index``."""
        ...


@dataclass
class InMemorySource:
    """A :class:`FrameSource` over arrays in memory (tests, small datasets, conversions).

    Attributes:
        fps: frame rate.
        states: (N, J) joint states.
        actions: (N, A) actions.
        episode_index: (N,) episode of each frame (contiguous blocks).
        images: camera name -> (N, H, W, 3) uint8 frames.
        tasks: instruction per task index.
        task_index: (N,) task of each frame (all 0 when None).
        state_names: optional joint names of the state columns.
        action_names: optional joint names of the action columns.
    """

    fps: float
    states: np.ndarray
    actions: np.ndarray
    episode_index: np.ndarray
    images: Mapping[str, np.ndarray]
    tasks: Sequence[str] = ("",)
    task_index: np.ndarray | None = None
    state_names: tuple[str, ...] | None = None
    action_names: tuple[str, ...] | None = None
    camera_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        """Validate shapes; raises ValueError naming the inconsistent arrays."""
        self.states = np.asarray(self.states)
        self.actions = np.asarray(self.actions)
        self.episode_index = np.asarray(self.episode_index, dtype=np.int64)
        n = self.states.shape[0] if self.states.ndim == 2 else -1
        if self.task_index is None:
            self.task_index = np.zeros(max(n, 0), dtype=np.int64)
        self.task_index = np.asarray(self.task_index, dtype=np.int64)
        self.tasks = tuple(self.tasks)
        self.camera_names = tuple(self.images)
        problems = []
        if self.states.ndim != 2 or self.actions.ndim != 2:
            problems.append(f"states {self.states.shape} and actions {self.actions.shape} must be 2-D")
        for name in ("actions", "episode_index", "task_index"):
            if getattr(self, name).shape[0] != n:
                problems.append(f"{name} has {getattr(self, name).shape[0]} frames, states has {n}")
        for cam, frames in self.images.items():
            shape = np.shape(frames)
            if len(shape) != 4 or shape[0] != n or shape[3] != 3:
                problems.append(f"images[{cam!r}] must be (N={n}, H, W, 3), got {shape}")
        if self.task_index.size and (self.task_index.min() < 0 or self.task_index.max() >= len(self.tasks)):
            problems.append(f"task_index must be in [0, {len(self.tasks)})")
        if not self.images:
            problems.append("at least one camera is needed")
        if self.fps <= 0 or not math.isfinite(self.fps):
            problems.append(f"fps must be > 0, got {self.fps}")
        if problems:
            raise ValueError("; ".join(problems))

    def image(self, index: int, camera: str) -> np.ndarray:
        """The frame of ``camera`` at ``index``."""
        return np.asarray(self.images[camera][index], dtype=np.uint8)


class ConcatSource:
    """Several :class:`FrameSource` objects (same fps, dims and cameras) as one.

    Episode indices are renumbered so that episodes of different sources stay distinct; task texts are
    merged (same text -> same index).

    Args:
        sources: the datasets, in order.

    Raises:
        ValueError: on differing fps, state/action dims or cameras.
    """

    def __init__(self, sources: Sequence[FrameSource]) -> None:
        if not sources:
            raise ValueError("ConcatSource needs at least one source")
        first = sources[0]
        problems = []
        for i, s in enumerate(sources[1:], start=1):
            if not math.isclose(s.fps, first.fps, rel_tol=1e-6):
                problems.append(f"source {i} runs at {s.fps} fps, source 0 at {first.fps}")
            if s.states.shape[1] != first.states.shape[1] or s.actions.shape[1] != first.actions.shape[1]:
                problems.append(
                    f"source {i} has state/action dims {s.states.shape[1]}/{s.actions.shape[1]}, "
                    f"source 0 {first.states.shape[1]}/{first.actions.shape[1]}"
                )
            missing = sorted(set(first.camera_names) - set(s.camera_names))
            if missing:
                problems.append(f"source {i} lacks cameras {missing}")
        if problems:
            raise ValueError("; ".join(problems))
        self.sources = list(sources)
        self.fps = float(first.fps)
        self.camera_names = tuple(first.camera_names)
        self.state_names = getattr(first, "state_names", None)
        self.action_names = getattr(first, "action_names", None)
        tasks: dict[str, int] = {}
        task_index, episode_index = [], []
        offset = 0
        for s in self.sources:
            remap = np.array([tasks.setdefault(t, len(tasks)) for t in s.tasks], dtype=np.int64)
            task_index.append(remap[np.asarray(s.task_index, dtype=np.int64)])
            ep = np.asarray(s.episode_index, dtype=np.int64)
            _, ep_dense = np.unique(ep, return_inverse=True)  # renumber 0..E-1 in sorted order
            episode_index.append(ep_dense + offset)
            offset += int(ep_dense.max()) + 1 if ep.size else 0
        self.tasks = tuple(tasks)
        self.task_index = np.concatenate(task_index)
        self.episode_index = np.concatenate(episode_index)
        self.states = np.concatenate([np.asarray(s.states, dtype=np.float64) for s in self.sources])
        self.actions = np.concatenate([np.asarray(s.actions, dtype=np.float64) for s in self.sources])
        self._bounds = np.cumsum([0] + [len(s.states) for s in self.sources])

    def image(self, index: int, camera: str) -> np.ndarray:
        """The frame of ``camera`` at global ``index`` (dispatched to the owning source)."""
        k = int(np.searchsorted(self._bounds, index, side="right")) - 1
        return self.sources[k].image(int(index - self._bounds[k]), camera)

    def fingerprint(self) -> str:
        """Hash of the member fingerprints, in order."""
        digest = hashlib.sha256()
        for s in self.sources:
            digest.update(dataset_fingerprint(s).encode())
        return "sha256:" + digest.hexdigest()


def open_source(path: str | Path) -> FrameSource:
    """Open a LeRobot v3 dataset directory as a :class:`FrameSource`.

    ``synthetic:<episodes>x<frames>`` (e.g. ``synthetic:8x40``) gives :func:`synthetic_source`, a small
    learnable task for smoke runs of the trainer.

    Args:
        path: dataset root (with ``meta/info.json``) or a ``synthetic:`` spec.

    Returns:
        The dataset.

    Raises:
        FileNotFoundError: if the directory does not exist.
        ImportError: if ``twinbrain_ros.data.reader`` is not available.
    """
    text = str(path)
    if text.startswith(SYNTHETIC_PREFIX):
        spec = text[len(SYNTHETIC_PREFIX) :] or "8x40"
        try:
            episodes, frames = (int(v) for v in spec.lower().split("x"))
        except ValueError:
            raise ValueError(
                f"synthetic dataset spec must be 'synthetic:<episodes>x<frames>', got {text!r}"
            ) from None
        return synthetic_source(num_episodes=episodes, episode_length=frames)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset {root} does not exist")
    return LeRobotV3Source(root)


IMAGE_PREFIX = "observation.images."


def _feature_names(names: Any) -> tuple[str, ...] | None:
    """LeRobot feature ``names``: a list of str, or a dict holding one such list (e.g. ``motors``)."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


class LeRobotV3Source:
    """A LeRobot v3.0 dataset directory as a :class:`FrameSource` (``twinbrain_ros.data.reader``).

    Numeric columns are read once; images (PNG in parquet, ``dtype: image``) are decoded per frame
    from parquet row groups kept in a byte-bounded LRU cache, so random access costs one row-group
    read per miss (our writer uses 64-frame row groups; a read is ~8 ms, so the default bound holds
    a few GB of PNG bytes: our 1,600-episode demo dataset is 1.2 GB and, once read, stays). Decoded
    frames are kept too, up to ``decoded_cache_bytes``, so from the second epoch on a small dataset
    costs no PNG decoding (~1 ms per 224x224 frame on one core here). Video features are listed in
    ``video_camera_names`` but cannot be decoded here.

    Args:
        root: the dataset directory.
        state_key: the state feature.
        action_key: the action feature.
        cache_bytes: bound of the row-group cache (per process).
        decoded_cache_bytes: bound of the decoded-frame cache (per process; 0 = off).

    Raises:
        DatasetError: if the directory is not a readable v3.0 dataset or lacks a feature.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        state_key: str = "observation.state",
        action_key: str = "action",
        cache_bytes: int = 3 << 30,
        decoded_cache_bytes: int = 4 << 30,
    ) -> None:
        from twinbrain_ros.data.reader import DatasetError, LeRobotV3Dataset

        ds = LeRobotV3Dataset(root)
        missing = [k for k in (state_key, action_key) if k not in ds.features]
        if missing:
            raise DatasetError([f"{root}: no feature {missing} (features: {sorted(ds.features)})"])
        self.root = Path(root)
        self.fps = float(ds.fps)
        strip = lambda k: k[len(IMAGE_PREFIX) :] if k.startswith(IMAGE_PREFIX) else k  # noqa: E731
        self._image_keys = {strip(k): k for k in ds.image_keys}
        self.camera_names = tuple(self._image_keys)
        self.video_camera_names = tuple(strip(k) for k in ds.video_keys)
        cols = ds.columns([state_key, action_key, "episode_index", "task_index", "index"])
        self.states = np.asarray(cols[state_key], dtype=np.float64).reshape(len(cols["index"]), -1)
        self.actions = np.asarray(cols[action_key], dtype=np.float64).reshape(len(cols["index"]), -1)
        self.episode_index = np.asarray(cols["episode_index"], dtype=np.int64)
        self.task_index = np.asarray(cols["task_index"], dtype=np.int64)
        self.tasks = tuple(ds.tasks)
        self.state_names = _feature_names(ds.features[state_key].get("names"))
        self.action_names = _feature_names(ds.features[action_key].get("names"))
        self.embodiment = ds.extra.get("embodiment") if isinstance(ds.extra, dict) else None
        self._info_text = (self.root / "meta" / "info.json").read_text(encoding="utf-8")
        self._cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple[int, int, str], Any] = OrderedDict()
        self._cached = 0
        self._decoded_bytes_max = int(decoded_cache_bytes)
        self._decoded: dict[tuple[int, str], np.ndarray] = {}
        self._decoded_bytes = 0
        # Where each global frame lives: (file, row group, row within the group).
        self._files = sorted((self.root / "data").glob("**/*.parquet"))
        self._where = np.full((len(self.states), 3), -1, dtype=np.int64)
        import pyarrow.parquet as pq

        for fid, path in enumerate(self._files):
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                idx = pf.read_row_group(rg, columns=["index"]).column("index").to_numpy()
                self._where[idx] = np.stack(
                    [np.full(idx.size, fid), np.full(idx.size, rg), np.arange(idx.size)], axis=1
                )
        if len(self.states) and (self._where[:, 0] < 0).any():
            raise DatasetError([f"{root}: some frames are in no data file"])

    def _row_group(self, fid: int, rg: int, key: str):
        import pyarrow.parquet as pq

        cache_key = (fid, rg, key)
        col = self._cache.get(cache_key)
        if col is not None:
            self._cache.move_to_end(cache_key)
            return col
        table = pq.ParquetFile(self._files[fid]).read_row_group(rg, columns=[key])
        col = table.column(key).combine_chunks().field("bytes")
        self._cache[cache_key] = col
        self._cached += col.nbytes
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return col

    def image(self, index: int, camera: str) -> np.ndarray:
        """Decode the frame of ``camera`` at global ``index`` -> (H, W, 3) uint8."""
        from twinbrain_ros.data.lerobot_v3 import decode_png

        if camera not in self._image_keys:
            raise KeyError(f"camera {camera!r} is not an image feature (cameras: {list(self.camera_names)})")
        hit = self._decoded.get((int(index), camera))
        if hit is not None:
            return hit.copy()
        fid, rg, row = (int(v) for v in self._where[index])
        img = decode_png(self._row_group(fid, rg, self._image_keys[camera])[row].as_py())
        if self._decoded_bytes + img.nbytes <= self._decoded_bytes_max:
            self._decoded[(int(index), camera)] = img
            self._decoded_bytes += img.nbytes
            return img.copy()
        return img

    def fingerprint(self) -> str:
        """Hash of ``info.json``, the numeric columns, tasks and the data files' names and sizes."""
        digest = hashlib.sha256()
        digest.update(self._info_text.encode())
        digest.update(json.dumps(list(self.tasks)).encode())
        for arr in (self.episode_index, self.task_index, self.states, self.actions):
            digest.update(np.ascontiguousarray(arr).tobytes())
        for path in self._files:
            digest.update(f"{path.relative_to(self.root)}|{path.stat().st_size}".encode())
        return "sha256:" + digest.hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (DataLoader workers) without the cache."""
        state = dict(self.__dict__)
        state["_cache"], state["_cached"] = OrderedDict(), 0
        state["_decoded"], state["_decoded_bytes"] = {}, 0
        return state


# --------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------
def dataset_fingerprint(source: FrameSource) -> str:
    """A stable identity of a dataset's content: ``"sha256:<hex>"``.

    Uses the source's own ``fingerprint()`` when it has one (e.g. a hash of the dataset files);
    otherwise hashes the fps, camera names, tasks, the episode/task indices, states and actions (as
    float64) and the first and last frame of every camera.

    Args:
        source: the dataset.

    Returns:
        The fingerprint; equal fingerprints mean the same training data.
    """
    own = getattr(source, "fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.sha256()
    n = int(np.asarray(source.states).shape[0])
    header = {
        "fps": float(source.fps),
        "cameras": list(source.camera_names),
        "tasks": list(source.tasks),
        "frames": n,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for arr, dtype in (
        (source.episode_index, np.int64),
        (source.task_index, np.int64),
        (source.states, np.float64),
        (source.actions, np.float64),
    ):
        a = np.ascontiguousarray(arr, dtype=dtype)
        digest.update(f"{a.shape}".encode())
        digest.update(a.tobytes())
    for cam in source.camera_names:
        for i in sorted({0, n - 1}) if n else ():
            img = np.ascontiguousarray(source.image(i, cam), dtype=np.uint8)
            digest.update(f"{cam}|{i}|{img.shape}".encode())
            digest.update(img.tobytes())
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Chunk dataset
# --------------------------------------------------------------------------------------------------
def chunk_offsets(horizon: int, fps: float, step_dt: float | None) -> np.ndarray:
    """Frame offsets of the H chunk steps: ``round(k * step_dt * fps)`` (``k`` when step_dt is None).

    Raises:
        ValueError: if the dataset is slower than the chunk (two steps would read the same frame).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    k = np.arange(horizon)
    if step_dt is None:
        return k.astype(np.int64)
    ratio = step_dt * fps
    if ratio < 1.0 - 1e-6:
        raise ValueError(
            f"dataset fps={fps} is lower than the chunk rate 1/step_dt={1.0 / step_dt:g} Hz: chunk steps "
            "would repeat frames; resample the dataset or use a contract with a longer step_dt"
        )
    return np.rint(k * ratio).astype(np.int64)


class ChunkDataset(torch.utils.data.Dataset):
    """Samples (images, state, instruction, H-step action chunk, mask) at every frame of a dataset.

    Args:
        source: the dataset.
        horizon: H, steps per chunk (the model's ``action_expert.horizon``).
        step_dt: seconds between chunk steps (the embodiment's ``action.step_dt``); None reads
            consecutive frames.
        cameras: contract camera name -> dataset camera name (default: the same names).
        binary_action_dims: action dims thresholded to {0, 1} (e.g. a gripper commanded open/closed).
        binary_threshold: values above it become 1.

    Raises:
        ValueError: on non-contiguous episodes, missing cameras or bad dims.
    """

    def __init__(
        self,
        source: FrameSource,
        horizon: int,
        *,
        step_dt: float | None = None,
        cameras: Mapping[str, str] | Sequence[str] | None = None,
        binary_action_dims: Sequence[int] = (),
        binary_threshold: float = 0.5,
    ) -> None:
        self.source = source
        self.horizon = int(horizon)
        self.offsets = chunk_offsets(self.horizon, float(source.fps), step_dt)  # (H,)
        if cameras is None:
            cameras = list(source.camera_names)
        if not isinstance(cameras, Mapping):
            cameras = {c: c for c in cameras}
        self.cameras = dict(cameras)
        missing = sorted(v for v in self.cameras.values() if v not in source.camera_names)
        if missing:
            raise ValueError(f"dataset has no cameras {missing} (it has {list(source.camera_names)})")
        self.states = np.asarray(source.states, dtype=np.float64)  # (N, J)
        actions = np.array(source.actions, dtype=np.float64)  # (N, A), own copy
        n, a_dim = actions.shape
        if n == 0:
            raise ValueError("the dataset has no frames")
        bad = [d for d in binary_action_dims if not 0 <= d < a_dim]
        if bad:
            raise ValueError(f"binary_action_dims {bad} out of range for {a_dim} action dims")
        self.binary_action_dims = tuple(int(d) for d in binary_action_dims)
        if self.binary_action_dims:
            dims = list(self.binary_action_dims)
            actions[:, dims] = (actions[:, dims] > binary_threshold).astype(np.float64)
        self.actions = actions
        self.task_index = np.asarray(source.task_index, dtype=np.int64)
        self.tasks = tuple(source.tasks)
        self.episode_end = _episode_ends(np.asarray(source.episode_index))  # (N,) exclusive end

    def __len__(self) -> int:
        """Number of frames (every frame starts one sample)."""
        return int(self.actions.shape[0])

    def chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (H, A) action chunk from frame ``index`` and its (H,) validity mask."""
        frames = index + self.offsets  # (H,)
        end = int(self.episode_end[index])
        valid = frames < end
        return self.actions[np.minimum(frames, end - 1)], valid

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample (see the module docstring); raises IndexError out of range."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range [0, {len(self)})")
        actions, mask = self.chunk(index)
        return {
            IMAGES: {c: self.source.image(index, src) for c, src in self.cameras.items()},
            STATE: self.states[index].copy(),
            INSTRUCTION: self.tasks[int(self.task_index[index])],
            ACTIONS: actions,
            ACTION_MASK: mask,
            INDEX: index,
        }


def episode_starts(episode_index: np.ndarray) -> np.ndarray:
    """Index of the first frame of every block of equal ``episode_index`` values, in order."""
    ep = np.asarray(episode_index).reshape(-1)
    if ep.size == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([[0], np.flatnonzero(np.diff(ep) != 0) + 1]).astype(np.int64)


def _episode_ends(episode_index: np.ndarray) -> np.ndarray:
    """Per frame, the exclusive end index of its episode; episodes must be contiguous blocks."""
    ep = episode_index.astype(np.int64).reshape(-1)
    if ep.size == 0:
        return ep
    starts = episode_starts(ep)
    if len(np.unique(ep[starts])) != len(starts):
        raise ValueError("episode frames are not contiguous: every episode must be one block of frames")
    ends = np.concatenate([starts[1:], [ep.size]])
    return np.repeat(ends, ends - starts)


def check_source(
    source: FrameSource,
    *,
    joint_names: Sequence[str],
    action_dim: int,
    cameras: Mapping[str, str],
) -> list[str]:
    """Every mismatch between a dataset and the model's contract (empty when compatible).

    Args:
        source: the dataset.
        joint_names: the contract's joint order (state columns).
        action_dim: the model's action dims.
        cameras: contract camera -> dataset camera.

    Returns:
        Problem messages naming both sides.
    """
    problems = []
    j = len(joint_names)
    s_dim = np.asarray(source.states).shape[-1]
    a_dim = np.asarray(source.actions).shape[-1]
    if s_dim != j:
        problems.append(f"dataset state has {s_dim} dims but the contract has {j} joints")
    if a_dim != action_dim:
        problems.append(f"dataset action has {a_dim} dims but the model's action_dim is {action_dim}")
    for attr in ("state_names", "action_names"):
        names = getattr(source, attr, None)
        if names and len(names) == j and tuple(names) != tuple(joint_names):
            problems.append(
                f"dataset {attr} {list(names)} differ from the contract joint order {list(joint_names)}"
            )
    missing = {c: src for c, src in cameras.items() if src not in source.camera_names}
    if missing:
        videos = [v for v in missing.values() if v in getattr(source, "video_camera_names", ())]
        note = f" ({videos} are stored as video, which the reader cannot decode)" if videos else ""
        problems.append(
            f"contract cameras {missing} (contract -> dataset) not in the dataset image cameras "
            f"{list(source.camera_names)}{note}"
        )
    for name in ("states", "actions"):
        arr = np.asarray(getattr(source, name), dtype=np.float64)
        bad = np.flatnonzero(~np.all(np.isfinite(arr), axis=0)) if arr.size else []
        if len(bad):
            problems.append(f"dataset {name} has non-finite values in dims {list(map(int, bad))}")
    return problems


# --------------------------------------------------------------------------------------------------
# Normalisation statistics
# --------------------------------------------------------------------------------------------------
def _modes(mode: str | Sequence[str], dim: int, identity_dims: Sequence[int], name: str) -> tuple[str, ...]:
    modes = [mode] * dim if isinstance(mode, str) else list(mode)
    if len(modes) != dim:
        raise ValueError(f"{name} modes has {len(modes)} entries for {dim} dims")
    for i, m in enumerate(modes):
        if m not in MODES:
            raise ValueError(f"{name} mode {m!r} (dim {i}) is not one of {MODES}")
    for d in identity_dims:
        modes[d] = "identity"
    return tuple(modes)


def compute_normalizers(
    dataset: ChunkDataset,
    *,
    action_mode: str | Sequence[str] = "q01_q99",
    state_mode: str | Sequence[str] = "q01_q99",
) -> dict[str, Normalizer]:
    """Statistics over every frame, as ``"action"`` and ``"state"`` normalisers.

    Args:
        dataset: the chunk dataset (its binary action dims are already thresholded).
        action_mode: one mode for all action dims or one per dim (``q01_q99``, ``min_max``,
            ``mean_std``, ``identity``). Binary dims always get ``identity``.
        state_mode: the same for the state.

    Returns:
        ``{"action": Normalizer, "state": Normalizer}`` (stats count = frames).
    """
    a_stats = compute_stats(dataset.actions)
    s_stats = compute_stats(dataset.states)
    return {
        "action": Normalizer(a_stats, _modes(action_mode, a_stats.dim, dataset.binary_action_dims, "action")),
        "state": Normalizer(s_stats, _modes(state_mode, s_stats.dim, (), "state")),
    }


def gripper_dims(joint_names: Sequence[str], word: str = "gripper") -> list[int]:
    """Indices of the joints whose name contains ``word`` (case-insensitive)."""
    return [i for i, n in enumerate(joint_names) if word in n.lower()]


# --------------------------------------------------------------------------------------------------
# Collation: samples -> model batch
# --------------------------------------------------------------------------------------------------
class ChunkCollator:
    """A list of samples -> the model's training batch (torch tensors under ``modeling``'s keys).

    The inputs go through the checkpoint's own processor (the same resize, patches, prompts, tokens
    and state normalisation as at inference); the action chunk is normalised with the action
    statistics and the mask becomes ``action_mask`` (B, H, 1).

    Args:
        processor: ``model.processing.Processor`` of the model being trained.
        action_normalizer: the ``"action"`` normaliser.
        joint_names: the contract's joint order (for the observations).
    """

    def __init__(self, processor: Any, action_normalizer: Normalizer, joint_names: Sequence[str]) -> None:
        self.processor = processor
        self.action_normalizer = action_normalizer
        self.joint_names = tuple(joint_names)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate; raises ValueError (from the processor) on inputs it cannot process."""
        from twinbrain_ros.model import modeling as M

        observations = [
            Observation(
                images=s[IMAGES],
                state=s[STATE],
                joint_names=self.joint_names,
                instruction=s[INSTRUCTION],
                stamp=0.0,
            )  # fmt: skip
            for s in samples
        ]
        inputs = self.processor.preprocess(observations)
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        actions = np.stack([s[ACTIONS] for s in samples])  # (B, H, A)
        mask = np.stack([s[ACTION_MASK] for s in samples])  # (B, H)
        batch[M.ACTIONS] = torch.from_numpy(self.action_normalizer.normalize(actions).astype(np.float32))
        batch[M.ACTION_MASK] = torch.from_numpy(mask.astype(np.float32)[..., None])  # (B, H, 1)
        return batch


def episode_start_repeats(
    episode_index: np.ndarray, fps: float, seconds: float, repeats: int
) -> np.ndarray:
    """Per-frame repeat counts: ``repeats`` for frames in the first ``seconds`` of their episode, else 1.

    At the start of a demonstration the robot still stands at its home pose, so the joint state says
    nothing about where it will go: only the images and the instruction do. Later frames can be
    predicted from the state alone (the motion so far points at the target), which a policy learns
    first and then copies; oversampling the starts makes the image and the instruction pay off.
    """
    n = np.asarray(episode_index).size
    starts = episode_starts(episode_index)
    first = np.repeat(starts, np.diff(np.r_[starts, n]))  # (N,) first frame of each frame's episode
    t = (np.arange(n) - first) / float(fps)
    out = np.ones(n, np.int64)
    out[t < seconds] = int(repeats)
    return out


def scene_partners(episode_index: np.ndarray, task_index: np.ndarray, group: int) -> np.ndarray:
    """Per frame, the same moment of the other episodes of its scene: an (N, group - 1) index array.

    ``twinbrain record-sim --each-task`` records every scene once per task, back to back, so
    consecutive groups of ``group`` episodes show one scene under ``group`` different instructions.
    Frame ``t`` seconds into an episode is paired with the frame at the same offset of each other
    episode of its group (the last frame where that episode is shorter). At the start of the episodes
    the paired frames show the same images and state under different instructions with different
    targets: in one batch, only the instruction explains the difference.

    Raises:
        ValueError: if the episodes do not split into groups of ``group``, or a group repeats a task.
    """
    ep = np.asarray(episode_index).reshape(-1)
    tasks = np.asarray(task_index).reshape(-1)
    if isinstance(group, bool) or not isinstance(group, int | np.integer) or group < 2:
        raise ValueError(f"scene group must be an int >= 2, got {group!r}")
    starts = episode_starts(ep)
    n_eps = len(starts)
    if n_eps % group:
        raise ValueError(f"{n_eps} episodes do not split into scene groups of {group}")
    lengths = np.diff(np.r_[starts, ep.size])
    clash = [
        int(g) for g in range(n_eps // group) if len(set(tasks[starts[g * group : (g + 1) * group]])) < group
    ]
    if clash:
        raise ValueError(
            f"scene groups {clash[:5]}{'...' if len(clash) > 5 else ''} repeat a task: consecutive groups "
            f"of {group} episodes must be one scene under {group} different instructions"
        )
    which = np.repeat(np.arange(n_eps), lengths)  # (N,) episode number of each frame
    offset = np.arange(ep.size) - starts[which]
    first_of_group = which - which % group
    out = np.empty((ep.size, group - 1), np.int64)
    for k in range(1, group):
        other = first_of_group + (which - first_of_group + k) % group
        out[:, k - 1] = starts[other] + np.minimum(offset, lengths[other] - 1)
    return out


# --------------------------------------------------------------------------------------------------
# Sampling order (resumable, sharded across processes)
# --------------------------------------------------------------------------------------------------
class ResumableBatchSampler:
    """Endless per-process batches of a seeded per-epoch permutation; can start at any batch.

    With ``repeats`` (one non-negative integer per frame), an epoch holds frame ``i`` ``repeats[i]``
    times (``episode_start_repeats`` oversamples the first moments of each episode this way).
    With ``partners`` ((num_samples, G - 1) frame indices, see ``scene_partners``), each batch holds
    ``ceil(batch_size / G)`` frames of the permutation followed by their partners, cut to
    ``batch_size``: the same moment of one scene under every instruction.

    Epoch ``e`` shuffles all frames with ``numpy.random.default_rng([seed, e])``; its global batches
    of ``drawn * world_size`` entries (``drawn`` = ``batch_size``, or ``ceil(batch_size / G)`` with
    partners) are cut in order (the rest of the epoch is dropped) and process ``rank`` takes its slice
    of each. Batch ``m`` is a pure function of (seed, m, rank, world_size), so a
    resumed run sees exactly the batches an uninterrupted one would.

    Args:
        num_samples: dataset length.
        batch_size: samples per process per batch.
        seed: shuffling seed.
        rank: this process's index.
        world_size: number of processes.
        start: index of the first batch to yield (batches already consumed).
        repeats: per-frame repeat counts of an epoch.
        partners: per-frame partner frames to add to each drawn frame.

    Raises:
        ValueError: if one global batch does not fit into the dataset.
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
        start: int = 0, repeats: np.ndarray | None = None, partners: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start < 0:
            raise ValueError(
                f"bad sampler settings: batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                f"start={start}"
            )
        self.population: np.ndarray | None = None
        self.partners: np.ndarray | None = None
        self.drawn = batch_size  # frames taken from the permutation per batch
        if partners is not None:
            partners = np.asarray(partners)
            if partners.ndim != 2 or partners.shape[0] != num_samples or partners.dtype.kind not in "iu":
                raise ValueError(f"partners must be ({num_samples}, G - 1) integers, got {partners.shape}")
            if partners.size and not (0 <= partners.min() and partners.max() < num_samples):
                raise ValueError(f"partners must index frames in [0, {num_samples})")
            self.partners = partners
            self.drawn = -(-batch_size // (partners.shape[1] + 1))
        if repeats is not None:
            repeats = np.asarray(repeats)
            if repeats.shape != (num_samples,) or repeats.dtype.kind not in "iu" or (repeats < 0).any():
                raise ValueError(f"repeats must be {num_samples} non-negative integers, got {repeats.shape}")
            self.population = np.repeat(np.arange(num_samples), repeats)
            num_samples = len(self.population)
        self.global_batch = self.drawn * world_size  # permutation entries per global batch
        if num_samples < self.global_batch:
            raise ValueError(
                f"the dataset has {num_samples} frames, fewer than one global batch "
                f"({self.drawn} drawn x {world_size} processes)"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.batches_per_epoch = num_samples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """The frame order of ``epoch`` (frames with ``repeats`` > 1 appear that many times)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return perm if self.population is None else self.population[perm]

    def __iter__(self) -> Iterator[list[int]]:
        """Yield batches ``start, start + 1, ...`` forever."""
        m = self.start
        epoch, perm = -1, None
        while True:
            e, pos = divmod(m, self.batches_per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            lo = pos * self.global_batch + self.rank * self.drawn
            drawn = perm[lo : lo + self.drawn]
            if self.partners is not None:
                drawn = np.concatenate([drawn, self.partners[drawn].T.reshape(-1)])[: self.batch_size]
            yield drawn.tolist()
            m += 1


# --------------------------------------------------------------------------------------------------
# A small learnable task (tests and smoke runs)
# --------------------------------------------------------------------------------------------------
def synthetic_source(
    *,
    num_episodes: int = 8,
    episode_length: int = 40,
    num_joints: int = 6,
    cameras: Sequence[str] = ("front",),
    image_size: tuple[int, int] = (48, 64),
    fps: float = 20.0,
    seed: int = 0,
    joint_names: Sequence[str] | None = None,
) -> InMemorySource:
    """A tiny reaching task: the arm moves from a random start toward a per-episode goal.

    The goal is shown in the image (each camera's colour encodes the goal of the first three joints)
    and named by the instruction (two tasks); the action at a frame is the next frame's state, so the
    chunk is predictable from the inputs and a model's loss goes down when it learns.

    Args:
        num_episodes: episodes.
        episode_length: frames per episode.
        num_joints: J (state and action dims).
        cameras: camera names.
        image_size: (height, width) of the frames.
        fps: frame rate.
        seed: numpy seed.
        joint_names: names of the J joints, recorded as the state/action names (None: unnamed).

    Returns:
        The in-memory dataset.
    """
    rng = np.random.default_rng(seed)
    n = num_episodes * episode_length
    states = np.zeros((n, num_joints))
    actions = np.zeros((n, num_joints))
    images = {c: np.zeros((n, *image_size, 3), dtype=np.uint8) for c in cameras}
    task_index = np.zeros(n, dtype=np.int64)
    episode_index = np.repeat(np.arange(num_episodes), episode_length)
    steps = np.arange(episode_length + 1)[:, None]
    for e in range(num_episodes):
        goal = rng.uniform(-1.0, 1.0, num_joints)
        start = rng.uniform(-1.0, 1.0, num_joints)
        traj = goal + (start - goal) * np.exp(-steps / (episode_length / 4))  # (T+1, J)
        block = slice(e * episode_length, (e + 1) * episode_length)
        states[block], actions[block] = traj[:-1], traj[1:]
        colour = np.clip((goal[:3] + 1.0) * 127.5, 0, 255).astype(np.uint8)
        for k, c in enumerate(cameras):
            images[c][block] = np.roll(colour, k)
        task_index[block] = e % 2
    names = tuple(joint_names) if joint_names else None
    return InMemorySource(
        fps=fps, states=states, actions=actions, episode_index=episode_index, images=images,
        tasks=("reach the goal shown by the colour", "move the arm to the coloured target"),
        task_index=task_index, state_names=names, action_names=names,
    )  # fmt: skip


def load_sources(paths: Sequence[str | Path]) -> FrameSource:
    """Open one or several datasets (:func:`open_source`) and concatenate them when several."""
    sources = [open_source(p) for p in paths]
    if not sources:
        raise ValidationError(["no dataset given"])
    return sources[0] if len(sources) == 1 else ConcatSource(sources)
