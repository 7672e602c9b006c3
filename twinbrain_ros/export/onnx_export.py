# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Export a TwinBrainModel to fixed-shape ONNX graphs for one deployment profile.

One export directory per profile::

    <out>/export.json          what was exported: format, profile, host constants, versions, and per
                               graph its file, sha256 and I/O names/shapes/dtypes
    <out>/vision_left.onnx     (+ vision_right.onnx when the towers differ)
    <out>/left_brain.onnx  right_brain.onnx  expert_step.onnx  expert_loop.onnx
    <out>/engines/<sm_XX>-trt<version>/...   TensorRT engines built later (trt_build.py)

Graphs are exported with ``torch.onnx.export(..., dynamo=True, opset_version=18)`` (the legacy
exporter bakes traced lengths into reshapes, environment.md §13) and checked with ``onnx.checker``.
Weights go into the ``.onnx`` file up to 1 GiB per graph and into a ``<graph>.onnx.data`` file beyond.
The export's dtype is the model's: load the checkpoint in float16/bfloat16 for typed graphs (TensorRT
builds strongly typed networks from them); the expert may stay in float32.

Usage:
    bundle = export_onnx(model, profile, "models/demo/export/cam1-224")
    bundle = load_bundle("models/demo/export/cam1-224")          # later, e.g. in a runner
    bundle.graph_path("left_brain")
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinbrain_ros.export.host import HostSpec, Profile, prepare_batch

LOG = logging.getLogger(__name__)

EXPORT_FILE = "export.json"
EXPORT_FORMAT = 1
OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 30  # larger graphs keep their weights in <graph>.onnx.data

_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 16: "bfloat16", 17: "float8e4m3fn",
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    """Name, static shape and dtype (numpy-style name) of a graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorInfo:
        """Inverse of ``to_dict``."""
        return cls(str(data["name"]), tuple(int(v) for v in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class GraphInfo:
    """One exported graph.

    Attributes:
        name: graph name.
        file: file name inside the export directory.
        sha256: hash of the ``.onnx`` file (and its external data, if any).
        inputs: inputs in order.
        outputs: outputs in order.
        external_data: weights live in ``<file>.data``.
    """

    name: str
    file: str
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    external_data: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "external_data": self.external_data,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphInfo:
        """Inverse of ``to_dict``."""
        return cls(
            name=str(data["name"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            external_data=bool(data.get("external_data", False)),
        )


@dataclass
class ExportBundle:
    """An export directory as loaded from ``export.json``.

    Attributes:
        directory: the export directory.
        profile: the deployment profile.
        spec: host constants.
        graphs: graph name -> info.
        share_vision: one vision graph serves both brains.
        dtype: the brains' dtype at export.
        model_id: identifies the exported weights (config hash + graph hashes).
        meta: everything else recorded (versions, time, opset, export settings).
    """

    directory: Path
    profile: Profile
    spec: HostSpec
    graphs: dict[str, GraphInfo]
    share_vision: bool
    dtype: str
    model_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    def graph_path(self, name: str, variant: str | None = None) -> Path:
        """Path of a graph's ``.onnx`` file (of a variant such as ``ort-int8`` when it has one)."""
        files = self.meta.get("variants", {}).get(variant or "", {})
        if name in files:
            return self.directory / files[name]["file"]
        return self.directory / self.graphs[name].file

    def save(self) -> Path:
        """Rewrite ``export.json`` (after adding a variant)."""
        path = self.directory / EXPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def vision_graph(self, side: str) -> str:
        """The vision graph that serves ``side`` (``"left"`` or ``"right"``)."""
        return "vision_left" if side == "left" or self.share_vision else "vision_right"

    def to_dict(self) -> dict[str, Any]:
        """The ``export.json`` content."""
        return {
            "format": EXPORT_FORMAT,
            "model_id": self.model_id,
            "profile": self.profile.to_dict(),
            "host": self.spec.to_dict(),
            "share_vision": self.share_vision,
            "dtype": self.dtype,
            "graphs": {k: g.to_dict() for k, g in self.graphs.items()},
            **self.meta,
        }


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def graph_sha256(path: Path) -> str:
    """Hash of a graph file and its external data file (if present)."""
    data = Path(str(path) + ".data")
    if not data.exists():
        return sha256_file(path)
    return hashlib.sha256((sha256_file(path) + sha256_file(data)).encode()).hexdigest()


def load_bundle(directory: str | Path) -> ExportBundle:
    """Read an export directory's ``export.json``.

    Raises:
        ValueError: if the file is missing, of another format, or names missing graph files.
    """
    root = Path(directory)
    path = root / EXPORT_FILE
    if not path.is_file():
        raise ValueError(f"{root} is not an export directory: {EXPORT_FILE} is missing")
    data = json.loads(path.read_text())
    if data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: export format {data.get('format')!r}, this code reads {EXPORT_FORMAT}")
    known = {"format", "model_id", "profile", "host", "share_vision", "dtype", "graphs"}
    bundle = ExportBundle(
        directory=root,
        profile=Profile.from_dict(data["profile"]),
        spec=HostSpec.from_dict(data["host"]),
        graphs={k: GraphInfo.from_dict(g) for k, g in data["graphs"].items()},
        share_vision=bool(data["share_vision"]),
        dtype=str(data["dtype"]),
        model_id=str(data["model_id"]),
        meta={k: v for k, v in data.items() if k not in known},
    )
    missing = [g.file for g in bundle.graphs.values() if not (root / g.file).is_file()]
    if missing:
        raise ValueError(f"{root}: graph files missing: {missing}")
    return bundle


def upcast_bfloat16(model):
    """Rewrite a bfloat16 graph to float32 in place (weights rounded to bf16 stay bf16-exact).

    ONNX Runtime has no CPU kernels for bfloat16; the upcast graph has the same structure and
    bf16-rounded weights, computed in float32. Used to run bf16 exports on CPU (calibration,
    structural checks); the numerics of bf16 arithmetic are verified on the engine instead.

    Returns:
        The model (modified in place).
    """
    from onnx import TensorProto, numpy_helper

    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def fix_tensor(t) -> None:
        if t.data_type == bf16:
            arr = numpy_helper.to_array(t).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    def fix_graph(graph) -> None:
        for init in graph.initializer:
            fix_tensor(init)
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            if vi.type.tensor_type.elem_type == bf16:
                vi.type.tensor_type.elem_type = f32
        for node in graph.node:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == bf16:
                    attr.i = f32
                if attr.HasField("t"):
                    fix_tensor(attr.t)
                if attr.HasField("g"):
                    fix_graph(attr.g)

    fix_graph(model.graph)
    return model


def _tensor_infos(values) -> tuple[TensorInfo, ...]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = tuple(int(d.dim_value) for d in tt.shape.dim)
        out.append(TensorInfo(v.name, shape, _ONNX_DTYPES.get(tt.elem_type, f"onnx:{tt.elem_type}")))
    return tuple(out)


def example_feeds(
    model, graphs, spec: HostSpec, profile: Profile, batch: Mapping[str, Any], noise: np.ndarray
):
    """Run the wrappers in PyTorch on one batch and collect every graph's input feeds.

    Returns:
        ``(feeds, outputs)``: graph name -> {input name: tensor}, and graph name -> {output: tensor}.
    """
    import torch

    prepared = prepare_batch(spec, profile, batch)

    def tensors(d: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}

    feeds: dict[str, dict[str, torch.Tensor]] = {}
    outs: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        vision = tensors(prepared.vision)
        feeds["vision_left"] = vision
        outs["vision_left"] = graphs["vision_left"](vision)
        vright = outs["vision_left"]
        if "vision_right" in graphs:
            feeds["vision_right"] = vision
            outs["vision_right"] = vright = graphs["vision_right"](vision)
        feeds["left_brain"] = {**tensors(prepared.left), **outs["vision_left"]}
        outs["left_brain"] = graphs["left_brain"](feeds["left_brain"])
        feeds["right_brain"] = {**tensors(prepared.right), **vright, **outs["left_brain"]}
        outs["right_brain"] = graphs["right_brain"](feeds["right_brain"])
        expert = {**tensors(prepared.expert), **outs["right_brain"]}
        feeds["expert_loop"] = {**expert, "noise": torch.from_numpy(noise)}
        outs["expert_loop"] = graphs["expert_loop"](feeds["expert_loop"])
        tau = float(spec.euler_taus()[0])
        feeds["expert_step"] = {
            **expert,
            "x": torch.from_numpy(noise),
            "tau": torch.tensor([tau], dtype=torch.float32),
            "dt": torch.tensor([1.0 / spec.num_steps], dtype=torch.float32),
        }
        outs["expert_step"] = graphs["expert_step"](feeds["expert_step"])
    return feeds, outs


def _param_bytes(module) -> int:
    seen, total = set(), 0
    for p in list(module.parameters()) + list(module.buffers()):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence the exporter's prints, warnings and progress logs (restored even on failure)."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_graph(
    graph, feeds: Mapping[str, Any], path: Path, *, opset: int = OPSET, quiet: bool = True
) -> GraphInfo:
    """Export one wrapper with the dynamo exporter and check the file.

    Args:
        graph: a ``GraphDef``.
        feeds: example inputs by name.
        path: destination ``.onnx`` path.
        opset: ONNX opset.
        quiet: silence the exporter's progress output.

    Returns:
        The graph's info (hash, I/O).
    """
    import onnx
    import torch

    external = _param_bytes(graph.module) > EXTERNAL_DATA_BYTES
    for old in (path, Path(str(path) + ".data")):
        if old.exists():
            old.unlink()
    with torch.no_grad(), _quiet(quiet):
        torch.onnx.export(
            graph.module,
            graph.args(feeds),
            str(path),
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            opset_version=opset,
            dynamo=True,
            external_data=external,
            optimize=True,
            verify=False,
        )
    onnx.checker.check_model(str(path), full_check=False)
    proto = onnx.load(str(path), load_external_data=False)
    inputs = _tensor_infos(proto.graph.input)
    outputs = _tensor_infos(proto.graph.output)
    names_in = [t.name for t in inputs]
    if names_in != list(graph.inputs) or [t.name for t in outputs] != list(graph.outputs):
        raise RuntimeError(
            f"{graph.name}: exported I/O {names_in} -> {[t.name for t in outputs]} differ from "
            f"{graph.inputs} -> {graph.outputs}"
        )
    return GraphInfo(
        name=graph.name,
        file=path.name,
        sha256=graph_sha256(path),
        inputs=inputs,
        outputs=outputs,
        external_data=Path(str(path) + ".data").exists(),
    )


def _config_hash(config) -> str:
    text = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def export_onnx(
    model,
    profile: Profile,
    out_dir: str | Path,
    *,
    num_steps: int | None = None,
    graphs: Sequence[str] | None = None,
    batch: Mapping[str, Any] | None = None,
    share_vision: bool | None = None,
    opset: int = OPSET,
    seed: int = 0,
) -> ExportBundle:
    """Export every graph of ``model`` for ``profile`` into ``out_dir`` and write ``export.json``.

    Args:
        model: a ``TwinBrainModel`` in eval mode (its dtype is the graphs' dtype).
        profile: the deployment profile (fixes every shape).
        out_dir: export directory (created).
        num_steps: Euler steps unrolled in ``expert_loop`` (default: the expert config's).
        graphs: export only these graph names (default: all).
        batch: example batch (numpy/torch under modeling's keys); default: a synthetic one.
        share_vision: one vision graph for both brains; default: when the towers' weights are equal.
        opset: ONNX opset (18).
        seed: seed of the synthetic batch and noise.

    Returns:
        The bundle (also written to ``out_dir/export.json``).
    """
    import onnx
    import torch
    import transformers

    from twinbrain_ros.export.graphs import build_graphs, host_spec_for
    from twinbrain_ros.export.inputs import synthetic_batch, synthetic_noise

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = host_spec_for(model, num_steps)
    defs = build_graphs(model, spec, profile, share_vision=share_vision)
    if batch is None:
        batch = synthetic_batch(spec, profile, seed=seed)
    noise = synthetic_noise(spec, profile.batch_size, seed=seed)
    feeds, _ = example_feeds(model, defs, spec, profile, batch, noise)
    wanted = list(defs) if graphs is None else [g for g in defs if g in set(graphs)]
    unknown = sorted(set(graphs or ()) - set(defs))
    if unknown:
        raise ValueError(f"unknown graphs {unknown}; this model has {list(defs)}")
    infos: dict[str, GraphInfo] = {}
    timings: dict[str, float] = {}
    for name in wanted:
        start = time.perf_counter()
        infos[name] = export_graph(defs[name], feeds[name], out / f"{name}.onnx", opset=opset)
        timings[name] = round(time.perf_counter() - start, 2)
        LOG.info("exported %s in %.1f s", name, timings[name])
    brain_dtype = str(next(model.brains.parameters()).dtype).replace("torch.", "")
    ids = _config_hash(model.config) + "".join(infos[k].sha256 for k in sorted(infos))
    bundle = ExportBundle(
        directory=out,
        profile=profile,
        spec=spec,
        graphs=infos,
        share_vision="vision_right" not in defs,
        dtype=brain_dtype,
        model_id=hashlib.sha256(ids.encode()).hexdigest()[:16],
        meta={
            "opset": opset,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "config_sha256": _config_hash(model.config),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnx": onnx.__version__,
            },
            "export_seconds": timings,
        },
    )
    (out / EXPORT_FILE).write_text(json.dumps(bundle.to_dict(), indent=2) + "\n")
    return bundle
