# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Per-dimension normalisation statistics and an invertible normaliser (numpy only).

Statistics (mean, std, min, max, q01, q99, count per dimension) are computed over the training data,
saved as ``norm_stats.json`` next to the weights, and loaded with the model, so a deployed policy
always normalises with the statistics it was trained with. Each dimension has its own mode:

============  =========================================================  ==============================
mode          normalise                                                  zero range (hi - lo <= eps)
============  =========================================================  ==============================
``min_max``   ``2 (x - min) / (max - min) - 1`` (not clipped)            -> 0; inverse gives ``min``
``q01_q99``   ``2 (x - q01) / (q99 - q01) - 1``, clipped to [-1, 1]      passed through
``mean_std``  ``(x - mean) / std``                                       passed through
``identity``  ``x`` (e.g. a binary gripper)                              -
============  =========================================================  ==============================

:meth:`Normalizer.unnormalize` is the exact inverse (up to float rounding) on the image of
:meth:`Normalizer.normalize`. It clips ``min_max`` and ``q01_q99`` dims to [-1, 1] first, as the
reference clients do, so a model output never leaves the range seen in training. Thresholding a
gripper to {0, 1} is a post-processing choice and is not done here.

Usage:
    stats = compute_stats(actions)                          # (N, A) array
    norm = Normalizer(stats, ["q01_q99"] * 6 + ["identity"])
    y = norm.normalize(actions); x = norm.unnormalize(y)
    save_norm_stats("models/x/norm_stats.json", {"action": norm, "state": state_stats})
    normalizers = load_normalizers("models/x/norm_stats.json")
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("min_max", "q01_q99", "mean_std", "identity")
STAT_FIELDS = ("mean", "std", "min", "max", "q01", "q99")
FORMAT_NAME = "twinbrain_norm_stats"
FORMAT_VERSION = 1


def _as_vector(name: str, value: Any) -> np.ndarray:
    """A read-only float64 copy of a 1-D, non-empty, finite array; ValueError names ``name``."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not numeric: {exc}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has non-finite values at dims {bad.tolist()}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class NormStats:
    """Per-dimension statistics of one array-valued feature (e.g. action or state).

    Attributes:
        mean: (D,) mean.
        std: (D,) population standard deviation, >= 0.
        min: (D,) minimum.
        max: (D,) maximum, >= min.
        q01: (D,) 1st percentile.
        q99: (D,) 99th percentile, >= q01.
        count: number of samples the statistics were computed from (0 = unknown, e.g. converted).
    """

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int = 0

    def __post_init__(self) -> None:
        """Converts the arrays to read-only float64 and validates them (ValueError names the field)."""
        for name in STAT_FIELDS:
            object.__setattr__(self, name, _as_vector(name, getattr(self, name)))
        dim = self.mean.shape[0]
        for name in STAT_FIELDS:
            n = getattr(self, name).shape[0]
            if n != dim:
                raise ValueError(f"{name} has {n} dims but mean has {dim}")
        if isinstance(self.count, bool) or not isinstance(self.count, int | np.integer) or self.count < 0:
            raise ValueError(f"count must be a non-negative int, got {self.count!r}")
        object.__setattr__(self, "count", int(self.count))
        if np.any(self.std < 0):
            raise ValueError(f"std is negative at dims {np.flatnonzero(self.std < 0).tolist()}")
        if np.any(self.min > self.max):
            raise ValueError(f"min > max at dims {np.flatnonzero(self.min > self.max).tolist()}")
        if np.any(self.q01 > self.q99):
            raise ValueError(f"q01 > q99 at dims {np.flatnonzero(self.q01 > self.q99).tolist()}")

    def __eq__(self, other: object) -> bool:
        """Equal when every array is element-wise equal and the counts match."""
        if not isinstance(other, NormStats):
            return NotImplemented
        return self.count == other.count and all(
            np.array_equal(getattr(self, name), getattr(other, name)) for name in STAT_FIELDS
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    @property
    def dim(self) -> int:
        """Number of dimensions D."""
        return int(self.mean.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (lists of floats and the count)."""
        out: dict[str, Any] = {name: getattr(self, name).tolist() for name in STAT_FIELDS}
        out["count"] = self.count
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "stats") -> NormStats:
        """Builds stats from a dict with the six arrays and an optional ``count``.

        Args:
            data: mapping with keys mean, std, min, max, q01, q99 and optionally count; other keys
                (e.g. ``modes``) are the caller's business and are ignored here.
            where: prefix for error messages (e.g. ``"norm_stats.json[action]"``).

        Returns:
            The validated stats.

        Raises:
            ValueError: naming a missing or invalid field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
        missing = [name for name in STAT_FIELDS if name not in data]
        if missing:
            raise ValueError(f"{where} is missing fields {missing}")
        try:
            return cls(**{name: data[name] for name in STAT_FIELDS}, count=data.get("count", 0))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def compute_stats(array: Any) -> NormStats:
    """Computes per-dimension statistics over all leading axes.

    Args:
        array: (N, D) or (..., D) numeric array with at least one sample; the last axis is the
            feature dimension.

    Returns:
        The statistics; quantiles use linear interpolation (``np.quantile``'s default).

    Raises:
        ValueError: on fewer than 2 axes, no samples, or non-finite values.
    """
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim < 2:
        raise ValueError(f"array must have shape (N, D) or (..., D), got shape {arr.shape}")
    flat = arr.reshape(-1, arr.shape[-1])  # (..., D) -> (N, D)
    if flat.shape[0] == 0 or flat.shape[1] == 0:
        raise ValueError(f"array must hold at least one sample of at least one dim, got shape {arr.shape}")
    if not np.all(np.isfinite(flat)):
        bad = np.flatnonzero(~np.all(np.isfinite(flat), axis=0))
        raise ValueError(f"array has non-finite values in dims {bad.tolist()}")
    q01, q99 = np.quantile(flat, [0.01, 0.99], axis=0)
    return NormStats(
        mean=flat.mean(axis=0),
        std=flat.std(axis=0),
        min=flat.min(axis=0),
        max=flat.max(axis=0),
        q01=q01,
        q99=q99,
        count=int(flat.shape[0]),
    )


@dataclass(frozen=True)
class Normalizer:
    """Invertible per-dimension normaliser.

    Attributes:
        stats: statistics of the feature.
        modes: one mode per dim (a single string applies to all dims); see the module docstring.
        zero_range_eps: a dim whose range (max-min, q99-q01 or std) is <= this is "zero range".
    """

    stats: NormStats
    modes: tuple[str, ...] | str = "q01_q99"
    zero_range_eps: float = 1e-8
    # Derived per-dim arrays: y = (x - center) / scale, then clip and zero-out masks.
    _center: np.ndarray = field(init=False, repr=False, compare=False)
    _scale: np.ndarray = field(init=False, repr=False, compare=False)
    _clip_in: np.ndarray = field(init=False, repr=False, compare=False)
    _clip_out: np.ndarray = field(init=False, repr=False, compare=False)
    _zero: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Resolves modes and precomputes the affine maps (ValueError names the bad field)."""
        if not isinstance(self.stats, NormStats):
            raise ValueError(f"stats must be NormStats, got {type(self.stats).__name__}")
        d = self.stats.dim
        modes = (self.modes,) * d if isinstance(self.modes, str) else tuple(self.modes)
        if len(modes) != d:
            raise ValueError(f"modes has {len(modes)} entries but stats has {d} dims")
        for i, mode in enumerate(modes):
            if mode not in MODES:
                raise ValueError(f"modes[{i}] = {mode!r} is not one of {MODES}")
        eps = self.zero_range_eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"zero_range_eps must be a finite number >= 0, got {eps!r}")
        object.__setattr__(self, "modes", modes)

        s = self.stats
        center, scale = np.zeros(d), np.ones(d)
        clip_in, clip_out, zero = np.zeros(d, bool), np.zeros(d, bool), np.zeros(d, bool)
        for i, mode in enumerate(modes):
            if mode in ("min_max", "q01_q99"):
                lo, hi = (s.min[i], s.max[i]) if mode == "min_max" else (s.q01[i], s.q99[i])
                if hi - lo <= eps:
                    # The reference sets zero-range min_max dims to 0 and passes q01_q99 ones through.
                    if mode == "min_max":
                        zero[i], center[i] = True, lo
                    continue
                center[i], scale[i] = (hi + lo) / 2.0, (hi - lo) / 2.0
                clip_out[i] = True
                clip_in[i] = mode == "q01_q99"
            elif mode == "mean_std" and s.std[i] > eps:
                center[i], scale[i] = s.mean[i], s.std[i]
        for name, arr in (("_center", center), ("_scale", scale), ("_clip_in", clip_in),
                          ("_clip_out", clip_out), ("_zero", zero)):  # fmt: skip
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def dim(self) -> int:
        """Number of dimensions D."""
        return self.stats.dim

    def _check(self, name: str, x: Any) -> tuple[np.ndarray, np.dtype]:
        arr = np.asarray(x)
        if arr.ndim < 1 or arr.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., {self.dim}), got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
        arr = arr.astype(np.float64, copy=False)
        if not np.all(np.isfinite(arr)):
            bad = np.flatnonzero(~np.all(np.isfinite(arr.reshape(-1, self.dim)), axis=0))
            raise ValueError(f"{name} has non-finite values in dims {bad.tolist()}")
        return arr, out_dtype

    def normalize(self, x: Any) -> np.ndarray:
        """Maps raw values to the normalised space.

        Args:
            x: (..., D) raw values.

        Returns:
            (..., D) normalised values, in x's float dtype (float64 for integer input).

        Raises:
            ValueError: on a wrong last dim or non-finite input.
        """
        arr, out_dtype = self._check("x", x)
        y = (arr - self._center) / self._scale
        y = np.where(self._clip_in, np.clip(y, -1.0, 1.0), y)
        y = np.where(self._zero, 0.0, y)
        return y.astype(out_dtype, copy=False)

    def unnormalize(self, y: Any) -> np.ndarray:
        """Maps normalised values back to raw values (the inverse of :meth:`normalize`).

        ``min_max`` and ``q01_q99`` dims are clipped to [-1, 1] first; zero-range ``min_max`` dims
        return their constant.

        Args:
            y: (..., D) normalised values (e.g. a model's action chunk).

        Returns:
            (..., D) raw values, in y's float dtype (float64 for integer input).

        Raises:
            ValueError: on a wrong last dim or non-finite input.
        """
        arr, out_dtype = self._check("y", y)
        arr = np.where(self._clip_out, np.clip(arr, -1.0, 1.0), arr)
        x = arr * self._scale + self._center
        x = np.where(self._zero, self._center, x)
        return x.astype(out_dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """The statistics plus ``modes`` as a JSON-serialisable dict."""
        return {**self.stats.to_dict(), "modes": list(self.modes)}


def save_norm_stats(path: str | os.PathLike[str], entries: Mapping[str, NormStats | Normalizer]) -> None:
    """Writes ``norm_stats.json`` atomically (a reader never sees a half-written file).

    Args:
        path: destination file.
        entries: feature key (e.g. ``"action"``, ``"state"``) -> stats, or a normaliser whose per-dim
            modes are saved too.

    Raises:
        ValueError: on an empty mapping, a non-string key or a value of the wrong type.
    """
    if not entries:
        raise ValueError("entries is empty: nothing to save")
    body: dict[str, Any] = {}
    for key, value in entries.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"entries key must be a non-empty str, got {key!r}")
        if isinstance(value, Normalizer | NormStats):
            body[key] = value.to_dict()
        else:
            raise ValueError(f"entries[{key!r}] must be NormStats or Normalizer, got {type(value).__name__}")
    text = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "stats": body}, indent=1,
                      allow_nan=False)  # fmt: skip
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_entries(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format must be {FORMAT_NAME!r}")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: version {data.get('version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    entries = data.get("stats")
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: stats must be a non-empty mapping")
    return entries


def load_norm_stats(path: str | os.PathLike[str]) -> dict[str, NormStats]:
    """Reads ``norm_stats.json``.

    Args:
        path: file written by :func:`save_norm_stats`.

    Returns:
        Feature key -> statistics (stored modes are ignored; see :func:`load_normalizers`).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, key and field of any invalid content.
    """
    entries = _read_entries(path)
    return {key: NormStats.from_dict(value, where=f"{path}[{key}]") for key, value in entries.items()}


def load_normalizers(
    path: str | os.PathLike[str],
    default_modes: Mapping[str, str | Sequence[str]] | str = "q01_q99",
) -> dict[str, Normalizer]:
    """Reads ``norm_stats.json`` into normalisers, using stored per-dim modes where present.

    Args:
        path: file written by :func:`save_norm_stats`.
        default_modes: modes for entries saved without modes: one mode for all, or per key.

    Returns:
        Feature key -> normaliser.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, key and field of any invalid content.
    """
    out: dict[str, Normalizer] = {}
    for key, value in _read_entries(path).items():
        where = f"{path}[{key}]"
        stats = NormStats.from_dict(value, where=where)
        if "modes" in value:
            modes = value["modes"]
            if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
                raise ValueError(f"{where}: modes must be a list of str")
        elif isinstance(default_modes, str):
            modes = default_modes
        elif key in default_modes:
            modes = default_modes[key]
        else:
            raise ValueError(f"{where}: no stored modes and no default_modes entry for {key!r}")
        try:
            out[key] = Normalizer(stats, modes if isinstance(modes, str) else tuple(modes))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out
