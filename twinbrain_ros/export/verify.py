# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Compare exported graphs and backends with PyTorch on fixed inputs.

Two checks:

* :func:`verify_graphs`: every exported ONNX graph in ONNX Runtime (CPU) against its PyTorch wrapper on
  the same inputs (per output: cosine, max |error|).
* :func:`verify_backend`: a whole backend (ONNX Runtime, TensorRT, static-graph PyTorch) against the
  eager model's ``sample_actions`` on fixed batches and noise; passes when the chunk's cosine similarity
  is at least 0.999 for every batch. Max |error| is reported.

Usage:
    report = verify_backend(model, runner, bundle.spec, bundle.profile, seeds=(0, 1))
    print(report.format()); sys.exit(0 if report.ok else 1)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COSINE_THRESHOLD = 0.999


@dataclass(frozen=True)
class Comparison:
    """Agreement of two arrays.

    Attributes:
        name: what was compared.
        cosine: cosine similarity of the flattened arrays.
        max_abs: max |a - b|.
        mean_abs: mean |a - b|.
        ref_max: max |b| (scale of the reference).
    """

    name: str
    cosine: float
    max_abs: float
    mean_abs: float
    ref_max: float

    def ok(self, threshold: float = COSINE_THRESHOLD, atol: float | None = None) -> bool:
        """Cosine at least ``threshold`` (and, if given, max |error| at most ``atol``)."""
        good = self.cosine >= threshold
        return good and (atol is None or self.max_abs <= atol)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


def compare(name: str, value: Any, reference: Any) -> Comparison:
    """Cosine similarity and absolute errors of ``value`` against ``reference``.

    Raises:
        ValueError: on different shapes.
    """
    a = np.asarray(value, dtype=np.float64).reshape(-1)
    b = np.asarray(reference, dtype=np.float64).reshape(-1)
    if np.asarray(value).shape != np.asarray(reference).shape:
        raise ValueError(
            f"{name}: shape {np.asarray(value).shape} != reference {np.asarray(reference).shape}"
        )
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / denom) if denom > 0 else float(np.allclose(a, b))
    diff = np.abs(a - b)
    return Comparison(name, cosine, float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0,
                      float(np.abs(b).max(initial=0.0)))  # fmt: skip


@dataclass
class VerifyReport:
    """Result of a verification.

    Attributes:
        backend: backend name.
        comparisons: one per compared output (or batch).
        threshold: cosine threshold.
        atol: optional max |error| bound.
        info: extra facts (profile, device, timings).
    """

    backend: str
    comparisons: list[Comparison] = field(default_factory=list)
    threshold: float = COSINE_THRESHOLD
    atol: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every comparison passes."""
        return bool(self.comparisons) and all(c.ok(self.threshold, self.atol) for c in self.comparisons)

    @property
    def worst(self) -> Comparison | None:
        """The comparison with the lowest cosine."""
        return min(self.comparisons, key=lambda c: c.cosine) if self.comparisons else None

    def format(self) -> str:
        """Human table, one line per comparison, then the verdict."""
        lines = [f"verify {self.backend} vs PyTorch (cosine >= {self.threshold}"
                 + (f", max|err| <= {self.atol}" if self.atol is not None else "") + ")"]  # fmt: skip
        for c in self.comparisons:
            mark = "ok  " if c.ok(self.threshold, self.atol) else "FAIL"
            lines.append(
                f"  {mark} {c.name:<34} cos {c.cosine:.6f}  max|err| {c.max_abs:.3e}  "
                f"mean|err| {c.mean_abs:.3e}  (ref max {c.ref_max:.3g})"
            )
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps({
            "backend": self.backend, "ok": self.ok, "threshold": self.threshold, "atol": self.atol,
            "comparisons": [c.to_dict() for c in self.comparisons], **self.info,
        })  # fmt: skip


def torch_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Numpy batch -> torch tensors (same keys)."""
    import torch

    return {k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}


def reference_chunk(
    model, batch: Mapping[str, Any], noise: np.ndarray, num_steps: int | None = None
) -> np.ndarray:
    """The eager model's chunk on ``batch`` with ``noise`` (the PyTorch reference)."""
    import torch

    device = next(model.parameters()).device
    tb = {k: v.to(device) for k, v in torch_batch(batch).items()}
    with torch.no_grad():
        out = model.sample_actions(tb, noise=torch.as_tensor(noise).to(device), num_steps=num_steps)
    return out.float().cpu().numpy()


def verify_graphs(
    model, bundle, *, seed: int = 0, threshold: float = COSINE_THRESHOLD, atol: float | None = 1e-3
) -> VerifyReport:
    """Every exported graph in ONNX Runtime (CPU) vs its PyTorch wrapper, on one synthetic batch.

    Args:
        model: the exported model (same weights).
        bundle: the export.
        seed: synthetic batch seed.
        threshold: cosine threshold.
        atol: max |error| bound per output (None: cosine only).

    Returns:
        One comparison per graph output.
    """
    import torch

    from twinbrain_ros.export.graphs import build_graphs
    from twinbrain_ros.export.inputs import synthetic_batch, synthetic_noise
    from twinbrain_ros.export.onnx_export import example_feeds
    from twinbrain_ros.export.runners import OrtRunner

    defs = build_graphs(model, bundle.spec, bundle.profile, share_vision=bundle.share_vision)
    batch = synthetic_batch(bundle.spec, bundle.profile, seed=seed)
    noise = synthetic_noise(bundle.spec, bundle.profile.batch_size, seed=seed)
    feeds, outs = example_feeds(model, defs, bundle.spec, bundle.profile, batch, noise)
    runner = OrtRunner(bundle)
    report = VerifyReport(
        "onnxruntime-cpu graphs", threshold=threshold, atol=atol, info={"profile": bundle.profile.name}
    )
    dtypes = {"float16": np.float16}  # bf16 graph inputs are float32 once upcast for ORT CPU
    for name, info in bundle.graphs.items():
        feed = {}
        for t in info.inputs:
            value = feeds[name][t.name]
            value = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
            feed[t.name] = value.astype(dtypes.get(t.dtype, value.dtype), copy=False)
        got = runner.run_graph(name, feed)
        for out_name, ref in outs[name].items():
            report.comparisons.append(compare(f"{name}.{out_name}", got[out_name], ref.float().numpy()))
    return report


def verify_backend(
    model,
    runner,
    spec,
    profile,
    *,
    seeds: Sequence[int] = (0, 1),
    threshold: float = COSINE_THRESHOLD,
    atol: float | None = None,
) -> VerifyReport:
    """A backend's chunk vs the eager PyTorch model on fixed synthetic batches and noise.

    Args:
        model: the eager reference model.
        runner: the backend (``infer(batch, noise)``).
        spec: host constants of the export (``num_steps`` is used for the reference too).
        profile: the profile the batches must fit.
        seeds: one batch per seed.
        threshold: cosine threshold on the chunk.
        atol: optional max |error| bound.

    Returns:
        One comparison per seed.
    """
    from twinbrain_ros.export.inputs import synthetic_batch, synthetic_noise

    report = VerifyReport(runner.name, threshold=threshold, atol=atol, info={"profile": profile.name})
    for seed in seeds:
        batch = synthetic_batch(spec, profile, seed=seed)
        noise = synthetic_noise(spec, profile.batch_size, seed=seed)
        ref = reference_chunk(model, batch, noise, num_steps=spec.num_steps)
        got = runner.infer(batch, noise=noise)
        report.comparisons.append(compare(f"chunk seed={seed}", got, ref))
    return report
