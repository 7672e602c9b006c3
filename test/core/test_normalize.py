# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the numpy normalisation statistics and the invertible normaliser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twinbrain_ros.core.normalize import (
    Normalizer,
    NormStats,
    compute_stats,
    load_norm_stats,
    load_normalizers,
    save_norm_stats,
)


def _data(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, 4)) * np.array([1.0, 5.0, 0.1, 1.0]) + np.array([0.0, 3.0, -1.0, 0.0])
    data[:, 3] = rng.integers(0, 2, size=n)  # binary gripper
    return data


def test_compute_stats_values():
    data = _data()
    s = compute_stats(data)
    assert s.count == 2000 and s.dim == 4
    np.testing.assert_allclose(s.mean, data.mean(axis=0))
    np.testing.assert_allclose(s.std, data.std(axis=0))
    np.testing.assert_array_equal(s.min, data.min(axis=0))
    np.testing.assert_array_equal(s.max, data.max(axis=0))
    np.testing.assert_allclose(s.q01, np.quantile(data, 0.01, axis=0))
    np.testing.assert_allclose(s.q99, np.quantile(data, 0.99, axis=0))
    # (..., D) input is flattened over the leading axes.
    assert compute_stats(data.reshape(100, 20, 4)) == s
    with pytest.raises(ValueError):
        s.mean[0] = 1.0  # read-only


@pytest.mark.parametrize("mode", ["min_max", "q01_q99", "mean_std"])
def test_round_trip_per_mode(mode):
    data = _data()
    s = compute_stats(data)
    norm = Normalizer(s, [mode, mode, mode, "identity"])
    if mode == "q01_q99":
        data = np.clip(data, s.q01, s.q99)  # clipping is lossy outside [q01, q99] by design
    y = norm.normalize(data)
    np.testing.assert_array_equal(y[:, 3], data[:, 3])  # identity dim untouched
    if mode == "min_max":
        np.testing.assert_allclose(y[:, :3].min(axis=0), -1.0)
        np.testing.assert_allclose(y[:, :3].max(axis=0), 1.0)
    if mode == "mean_std":
        np.testing.assert_allclose(y[:, :3].mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(y[:, :3].std(axis=0), 1.0)
    np.testing.assert_allclose(norm.unnormalize(y), data, rtol=1e-12, atol=1e-12)


def test_q01_q99_clips_to_unit_range():
    s = compute_stats(_data())
    norm = Normalizer(s, "q01_q99")
    far = np.array([[1e6, -1e6, 1e6, 1e6], [-1e6, 1e6, -1e6, -1e6]])
    y = norm.normalize(far)
    assert np.all(np.abs(y) <= 1.0) and np.all(np.abs(y) == 1.0)
    np.testing.assert_allclose(norm.normalize(s.q01[None]), -1.0)
    np.testing.assert_allclose(norm.normalize(s.q99[None]), 1.0)
    # Unnormalising an out-of-range model output stays within [q01, q99].
    x = norm.unnormalize(np.full((1, 4), 3.0))
    np.testing.assert_allclose(x[0], s.q99)


def test_min_max_is_not_clipped_on_input():
    s = compute_stats(_data())
    norm = Normalizer(s, "min_max")
    y = norm.normalize(s.max[None] + (s.max - s.min)[None])
    np.testing.assert_allclose(y, 3.0)


@pytest.mark.parametrize("mode", ["min_max", "q01_q99", "mean_std"])
def test_zero_range_dim_gives_no_nan(mode):
    data = _data()
    data[:, 1] = 2.5  # constant dim
    s = compute_stats(data)
    norm = Normalizer(s, mode)
    with np.errstate(all="raise"):  # any division by zero would raise here
        y = norm.normalize(data)
        x = norm.unnormalize(y)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(x))
    expected_y = 0.0 if mode == "min_max" else 2.5  # reference: 0 for min_max, pass-through otherwise
    np.testing.assert_array_equal(y[:, 1], expected_y)
    np.testing.assert_allclose(x[:, 1], 2.5)


def test_dtype_is_preserved():
    s = compute_stats(_data())
    norm = Normalizer(s, "mean_std")
    assert norm.normalize(_data().astype(np.float32)).dtype == np.float32
    assert norm.unnormalize(np.zeros((2, 4), dtype=np.int64)).dtype == np.float64


def test_save_load_round_trip(tmp_path):
    s = compute_stats(_data())
    state = compute_stats(_data(seed=1)[:, :3])
    path = tmp_path / "norm_stats.json"
    norm = Normalizer(s, ["q01_q99", "q01_q99", "min_max", "identity"])
    save_norm_stats(path, {"action": norm, "state": state})
    loaded = load_norm_stats(path)
    assert loaded["action"] == s and loaded["state"] == state
    normalizers = load_normalizers(path, default_modes={"state": "mean_std"})
    assert normalizers["action"].modes == norm.modes
    assert normalizers["state"].modes == ("mean_std",) * 3
    data = _data()
    np.testing.assert_array_equal(normalizers["action"].normalize(data), norm.normalize(data))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mean": [0.0, 0.0]}, "std has 3 dims but mean has 2"),
        ({"std": [1.0, float("nan"), 1.0]}, "std has non-finite"),
        ({"std": [1.0, -1.0, 1.0]}, "std is negative"),
        ({"min": [2.0, 0.0, 0.0]}, "min > max"),
        ({"q01": [0.0, 0.0, 5.0]}, "q01 > q99"),
        ({"q99": [[1.0]]}, "q99 must be a non-empty 1-D"),
        ({"count": -1}, "count"),
    ],
)
def test_stats_validation_names_field(kwargs, field):
    good = {"mean": [0.0] * 3, "std": [1.0] * 3, "min": [-1.0] * 3, "max": [1.0] * 3,
            "q01": [-1.0] * 3, "q99": [1.0] * 3, "count": 3}  # fmt: skip
    with pytest.raises(ValueError, match=field):
        NormStats(**{**good, **kwargs})


def test_normalizer_and_input_validation(tmp_path):
    s = compute_stats(_data())
    with pytest.raises(ValueError, match="modes has 3 entries but stats has 4 dims"):
        Normalizer(s, ["min_max"] * 3)
    with pytest.raises(ValueError, match=r"modes\[1\] = 'q99'"):
        Normalizer(s, ["min_max", "q99", "min_max", "identity"])
    norm = Normalizer(s, "q01_q99")
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\)"):
        norm.normalize(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"y has non-finite values in dims \[2\]"):
        norm.unnormalize(np.array([[0.0, 0.0, np.inf, 0.0]]))
    with pytest.raises(ValueError, match="array has non-finite"):
        compute_stats(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="array must have shape"):
        compute_stats(np.zeros(5))
    bad = tmp_path / "bad.json"
    good = json.loads(json.dumps({"format": "twinbrain_norm_stats", "version": 1,
                                  "stats": {"action": s.to_dict()}}))  # fmt: skip
    del good["stats"]["action"]["q99"]
    bad.write_text(json.dumps(good))
    with pytest.raises(ValueError, match=r"\[action\] is missing fields \['q99'\]"):
        load_norm_stats(bad)
    bad.write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match="format"):
        load_norm_stats(bad)
