# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Inference backends over the exported graphs: ONNX Runtime, TensorRT, and static-graph PyTorch.

Every runner is a strategy object with the same interface (chosen once at load, never branched on
inside ``infer``)::

    runner.name                                  # "onnxruntime-cpu", "tensorrt", ...
    chunk = runner.infer(batch, noise=None)      # batch: numpy under modeling's keys -> (B, T, A)
    runner.last_timings                          # seconds per stage of the last call
    runner.close()

All runners share the host step (``host.prepare_batch``) and one chain plan (:func:`chain_plan`):
which graph runs after which and where each input comes from (the host or another graph's output).

* :class:`OrtRunner` runs the ``.onnx`` files with ONNX Runtime (CPU, or CUDA with outputs kept on the
  device between stages through I/O binding).
* :class:`TensorRTRunner` runs engines built by ``trt_build.py``: torch CUDA tensors are bound to the
  engines' tensors by name, one graph's output buffer *is* the next graph's input buffer, host inputs
  are copied into static buffers, and the whole chain is replayed as one CUDA graph. TensorRT is
  imported only here, inside the constructor.
* :class:`TorchGraphRunner` runs the same static wrappers (``graphs.py``) in PyTorch: eager on CPU, or on
  CUDA with ``torch.compile`` and the chain captured as a CUDA graph (possible because the wrappers
  never synchronise with the host, unlike the eager model).

Usage:
    runner = OrtRunner("models/demo/export/cam1")                   # CPU
    runner = OrtRunner(export_dir, providers=["CUDAExecutionProvider"])
    runner = TensorRTRunner(export_dir)                             # engines/<sm>-trt<ver>/ inside
    runner = load_runner("onnxruntime", export_dir=..., model=None)
    chunk = runner.infer(processor.preprocess([obs]))
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from twinbrain_ros.export.host import PreparedBatch, prepare_batch
from twinbrain_ros.export.onnx_export import ExportBundle, load_bundle

LOG = logging.getLogger(__name__)

STAGES = ("host", "vision", "left", "right", "expert")


class Runner(Protocol):
    """What ``Policy`` needs from a backend."""

    name: str
    last_timings: dict[str, float]

    def infer(self, batch: Mapping[str, Any], noise: np.ndarray | None = None) -> np.ndarray:
        """Normalised action chunk (B, T, A) float32 for one model batch."""

    def close(self) -> None:
        """Free the backend's resources."""


# --------------------------------------------------------------------------------------------------
# Chain plan
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Where a graph input comes from.

    Attributes:
        kind: ``"host"`` (a ``PreparedBatch`` group), ``"graph"`` (another graph's output),
            ``"noise"`` or ``"step"`` (``tau``/``dt``/``x`` of the step loop).
        group: the host group (``vision``/``left``/``right``/``expert``) or producing graph.
        key: the host key or output name.
    """

    kind: str
    group: str
    key: str


@dataclass(frozen=True)
class Stage:
    """One graph call of the chain.

    Attributes:
        graph: graph name.
        stage: timing bucket (``vision``, ``left``, ``right``, ``expert``).
        inputs: input name -> source.
    """

    graph: str
    stage: str
    inputs: dict[str, Source]


def chain_plan(bundle: ExportBundle, expert: str = "loop") -> list[Stage]:
    """The order of graph calls and the wiring of every input.

    Args:
        bundle: the export.
        expert: ``"loop"`` (one call of the unrolled graph) or ``"step"`` (N calls of the step graph).

    Returns:
        Stages in execution order (for ``"step"``, the expert stage is listed once; runners repeat it).

    Raises:
        ValueError: if a needed graph was not exported or an input has no source.
    """
    if expert not in ("loop", "step"):
        raise ValueError(f"expert must be 'loop' or 'step', got {expert!r}")
    expert_graph = "expert_loop" if expert == "loop" else "expert_step"
    names = ["vision_left"] + ([] if bundle.share_vision else ["vision_right"])
    names += ["left_brain", "right_brain", expert_graph]
    missing = [n for n in names if n not in bundle.graphs]
    if missing:
        raise ValueError(f"export {bundle.directory} lacks graphs {missing}")
    host_group = {
        "vision_left": "vision",
        "vision_right": "vision",
        "left_brain": "left",
        "right_brain": "right",
    }
    stages: list[Stage] = []
    for name in names:
        inputs: dict[str, Source] = {}
        for info in bundle.graphs[name].inputs:
            n = info.name
            if name.startswith("vision"):
                src = Source("host", "vision", n)
            elif n in ("image_embeds", "deepstack_embeds"):
                src = Source("graph", bundle.vision_graph("left" if name == "left_brain" else "right"), n)
            elif n in ("left_keys", "left_values"):
                src = Source("graph", "left_brain", n)
            elif n == "action_queries":
                src = Source("graph", "right_brain", n)
            elif n == "noise":
                src = Source("noise", "", n)
            elif n in ("x", "tau", "dt"):
                src = Source("step", "", n)
            elif name in host_group:
                src = Source("host", host_group[name], n)
            elif n == "state":
                src = Source("host", "expert", n)
            else:
                raise ValueError(f"graph {name!r} input {n!r} has no source")
            inputs[n] = src
        stage = (
            "vision"
            if name.startswith("vision")
            else {"left_brain": "left", "right_brain": "right"}.get(name, "expert")
        )
        stages.append(Stage(name, stage, inputs))
    return stages


def _noise(bundle: ExportBundle, noise: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    shape = (bundle.profile.batch_size, bundle.spec.horizon, bundle.spec.action_dim)
    if noise is None:
        return rng.standard_normal(shape).astype(np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if noise.shape != shape:
        raise ValueError(f"noise shape {noise.shape} != {shape}")
    return noise


def _host_value(prepared: PreparedBatch, src: Source) -> np.ndarray:
    return getattr(prepared, src.group)[src.key]


# --------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------
class OrtRunner:
    """ONNX Runtime backend.

    Args:
        export_dir: an export directory (``export.json`` + graphs).
        providers: ORT execution providers, e.g. ``["CPUExecutionProvider"]`` (default) or
            ``["CUDAExecutionProvider", "CPUExecutionProvider"]``.
        expert: ``"loop"`` (unrolled graph) or ``"step"`` (step graph called N times).
        intra_op_threads: threads per session (default: ORT's choice).
        seed: seed of the noise drawn when ``infer`` gets none.
        upcast_bfloat16: run bfloat16 graphs as float32 (ORT has no bf16 CPU kernels); default: on
            for a bfloat16 export on the CPU provider.
        variant: a graph variant recorded in ``export.json`` (``"ort-int8"``: dynamic INT8 for CPU).

    Raises:
        ValueError: on unavailable providers or a variant the export does not have.
    """

    def __init__(
        self,
        export_dir: str | Path | ExportBundle,
        providers: Sequence[str] | None = None,
        *,
        expert: str = "loop",
        intra_op_threads: int | None = None,
        seed: int = 0,
        upcast_bfloat16: bool | None = None,
        variant: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.bundle = export_dir if isinstance(export_dir, ExportBundle) else load_bundle(export_dir)
        self.providers = list(providers or ["CPUExecutionProvider"])
        available = set(ort.get_available_providers())
        unknown = [p for p in self.providers if p not in available]
        if unknown:
            raise ValueError(
                f"onnxruntime providers {unknown} are not available here (have {sorted(available)})"
            )
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.variant = variant
        if variant and variant not in self.bundle.meta.get("variants", {}):
            raise ValueError(
                f"export {self.bundle.directory} has no {variant!r} graphs "
                f"(have {sorted(self.bundle.meta.get('variants', {}))}); export with --{variant}"
            )
        self.name = f"onnxruntime-{self.device}" + (f"-{variant}" if variant else "")
        try:
            self.plan = chain_plan(self.bundle, expert)
            self._plan_error = ""
        except ValueError as exc:  # a partial export: single graphs still run (run_graph)
            self.plan, self._plan_error = [], str(exc)
        self.expert_mode = expert
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        # The chain has one session (and thread pool) per graph: a pool that keeps spinning after its
        # Run() steals the cores from the next graph's pool (2 threads were slower than 1 without this).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        if upcast_bfloat16 is None:
            upcast_bfloat16 = self.device == "cpu" and self.bundle.dtype == "bfloat16"
        self.upcast_bfloat16 = upcast_bfloat16
        self._opts = opts
        self._ort = ort
        self.sessions = {st.graph: self._session(st.graph) for st in self.plan}
        self._rng = np.random.default_rng(seed)
        self.last_timings: dict[str, float] = {}

    def _session(self, graph: str):
        path = self.bundle.graph_path(graph, self.variant)
        if not self.upcast_bfloat16:
            return self._ort.InferenceSession(str(path), self._opts, providers=self.providers)
        import onnx

        from twinbrain_ros.export.onnx_export import upcast_bfloat16

        model = upcast_bfloat16(onnx.load(str(path)))
        return self._ort.InferenceSession(model.SerializeToString(), self._opts, providers=self.providers)

    def run_graph(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on CPU feeds; returns outputs by name (for parity checks)."""
        if graph not in self.sessions:
            self.sessions[graph] = self._session(graph)
        sess = self.sessions[graph]
        names = [o.name for o in sess.get_outputs()]
        return dict(
            zip(
                names,
                sess.run(names, {k: np.ascontiguousarray(feeds[k]) for k in self._input_names(sess)}),
                strict=True,
            )
        )

    @staticmethod
    def _input_names(sess) -> list[str]:
        return [i.name for i in sess.get_inputs()]

    def infer(self, batch: Mapping[str, Any], noise: np.ndarray | None = None) -> np.ndarray:
        """Normalised action chunk (B, T, A) float32."""
        if self._plan_error:
            raise ValueError(self._plan_error)
        timings = dict.fromkeys(STAGES, 0.0)
        start = time.perf_counter()
        prepared = prepare_batch(self.bundle.spec, self.bundle.profile, batch)
        noise = _noise(self.bundle, noise, self._rng)
        timings["host"] = time.perf_counter() - start
        outputs: dict[str, dict[str, Any]] = {}
        result = None
        for stage in self.plan:
            t0 = time.perf_counter()
            if stage.graph == "expert_step":
                result = self._run_steps(stage, prepared, outputs, noise)
            else:
                feeds = {}
                for name, src in stage.inputs.items():
                    if src.kind == "host":
                        feeds[name] = _host_value(prepared, src)
                    elif src.kind == "graph":
                        feeds[name] = outputs[src.group][src.key]
                    else:
                        feeds[name] = noise
                outputs[stage.graph] = self._run(stage.graph, feeds)
                if stage.stage == "expert":
                    result = outputs[stage.graph]["actions"]
            timings[stage.stage] += time.perf_counter() - t0
        self.last_timings = timings
        return self._to_numpy(result)

    def _run_steps(self, stage: Stage, prepared, outputs, noise) -> Any:
        spec = self.bundle.spec
        x = noise
        fixed = {}
        for name, src in stage.inputs.items():
            if src.kind == "host":
                fixed[name] = _host_value(prepared, src)
            elif src.kind == "graph":
                fixed[name] = outputs[src.group][src.key]
        dt = np.asarray([1.0 / spec.num_steps], dtype=np.float32)
        for tau in spec.euler_taus():
            feeds = {**fixed, "x": x, "tau": np.asarray([float(tau)], dtype=np.float32), "dt": dt}
            x = self._run(stage.graph, feeds)["x_next"]
        return x

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        sess = self.sessions[graph]
        if self.device == "cpu":
            names = [o.name for o in sess.get_outputs()]
            out = sess.run(names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return dict(zip(names, out, strict=True))
        # CUDA: keep tensors on the device between stages (OrtValues), copy host arrays in once.
        binding = sess.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                value = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0)
            binding.bind_ortvalue_input(name, value)
        names = [o.name for o in sess.get_outputs()]
        for name in names:
            binding.bind_output(name, "cuda", 0)
        sess.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs(), strict=True))

    @staticmethod
    def _to_numpy(value: Any) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def close(self) -> None:
        """Drop the sessions."""
        self.sessions.clear()


# --------------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------------
class TensorRTRunner:
    """TensorRT backend: engines bound to torch CUDA tensors by name, the chain replayed as a CUDA graph.

    Args:
        export_dir: the export directory; engines are looked up in ``engines/`` inside it (the
            directory matching this GPU and TensorRT version), unless ``engine_dir`` is given.
        engine_dir: an explicit engine directory (``manifest.json`` + plans).
        device: CUDA device.
        cuda_graph: capture the chain as one CUDA graph (default) or enqueue engine by engine.
        expert: ``"loop"`` or ``"step"``; the matching engine must have been built.
        seed: seed of the noise drawn when ``infer`` gets none.

    Raises:
        ImportError: if TensorRT is not installed.
        EngineMismatchError: if the engines were built for another GPU, TensorRT version or export.
    """

    def __init__(
        self,
        export_dir: str | Path | ExportBundle,
        engine_dir: str | Path | None = None,
        *,
        device: str = "cuda:0",
        cuda_graph: bool = True,
        expert: str = "loop",
        seed: int = 0,
    ) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ImportError(
                "TensorRT is not installed: install the tensorrt wheel matching your CUDA "
                "(e.g. tensorrt-cu12) on the GPU machine, or use the onnxruntime backend"
            ) from exc
        import torch

        from twinbrain_ros.export.manifest import find_engine_dir, load_manifest, runtime_environment

        self.bundle = export_dir if isinstance(export_dir, ExportBundle) else load_bundle(export_dir)
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(
                f"TensorRTRunner needs a CUDA device, got {device!r} "
                f"(cuda available: {torch.cuda.is_available()})"
            )
        torch.cuda.set_device(self.device)
        env = runtime_environment(trt.__version__, self.device)
        engine_dir = Path(engine_dir) if engine_dir else find_engine_dir(self.bundle.directory, env)
        self.manifest = load_manifest(engine_dir)
        self.manifest.check(env, self.bundle)  # raises EngineMismatchError with the reasons
        self.plan = chain_plan(self.bundle, expert)
        self.name = "tensorrt"
        self._torch = torch
        self._trt = trt
        self._rng = np.random.default_rng(seed)
        self.stream = torch.cuda.Stream(device=self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        for stage in self.plan:
            plan_path = engine_dir / self.manifest.engines[stage.graph].file
            engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialise {plan_path} (see the log above)")
            self.engines[stage.graph] = engine
            self.contexts[stage.graph] = engine.create_execution_context()
        self._allocate()
        self.cuda_graph = None
        self._use_graph = cuda_graph
        self.last_timings: dict[str, float] = {}

    # -- buffers -----------------------------------------------------------------------------------
    def _torch_dtype(self, trt_dtype) -> Any:
        trt, torch = self._trt, self._torch
        table = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
            trt.DataType.BOOL: torch.bool,
            trt.DataType.INT8: torch.int8,
            trt.DataType.UINT8: torch.uint8,
        }
        return table[trt_dtype]

    def _allocate(self) -> None:
        """One device buffer per chain edge; bind every engine tensor to its buffer by name."""
        torch, trt = self._torch, self._trt
        self.buffers: dict[tuple[str, str], Any] = {}  # (producer, name) -> tensor
        self.host_inputs: dict[tuple[str, str], Any] = {}  # (group, key) -> device tensor
        self._pinned: dict[tuple[str, str], Any] = {}
        self._step_buffers: dict[str, Any] = {}
        spec = self.bundle.spec
        for stage in self.plan:
            engine, ctx = self.engines[stage.graph], self.contexts[stage.graph]
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                shape = tuple(engine.get_tensor_shape(name))
                dtype = self._torch_dtype(engine.get_tensor_dtype(name))
                if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                    buf = torch.empty(shape, dtype=dtype, device=self.device)
                    self.buffers[(stage.graph, name)] = buf
                else:
                    src = stage.inputs[name]
                    if src.kind == "graph":
                        buf = self.buffers[(src.group, src.key)]
                    elif src.kind in ("host", "noise"):
                        key = (src.group or "noise", src.key)
                        if key not in self.host_inputs:
                            self.host_inputs[key] = torch.empty(shape, dtype=dtype, device=self.device)
                            self._pinned[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
                        buf = self.host_inputs[key]
                    else:  # step loop: x ping-pong, per-step tau, dt
                        buf = self._step_buffer(name, shape, dtype)
                    if tuple(buf.shape) != shape or buf.dtype != dtype:
                        raise RuntimeError(
                            f"engine {stage.graph}: input {name} wants {shape} {dtype}, its source gives "
                            f"{tuple(buf.shape)} {buf.dtype}"
                        )
                ctx.set_tensor_address(name, buf.data_ptr())
        if "expert_step" in self.engines:
            taus = torch.tensor([[float(t)] for t in spec.euler_taus()], dtype=torch.float32)
            self._step_buffers["taus"] = taus.to(self.device)  # (N, 1)
            self._step_buffers["dt"].fill_(1.0 / spec.num_steps)

    def _step_buffer(self, name: str, shape, dtype):
        torch = self._torch
        if name == "x":
            # x ping-pongs between two buffers; the noise is copied into the first before each call.
            xs = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(2)]
            self._step_buffers["x"] = xs
            self.host_inputs[("noise", "noise")] = xs[0]
            self._pinned[("noise", "noise")] = torch.empty(shape, dtype=dtype, pin_memory=True)
            return xs[0]
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        self._step_buffers[name] = buf
        return buf

    # -- execution ---------------------------------------------------------------------------------
    def _enqueue_chain(self) -> None:
        """Enqueue every engine on ``self.stream`` (also what the CUDA graph captures)."""
        handle = self.stream.cuda_stream
        for stage in self.plan:
            ctx = self.contexts[stage.graph]
            if stage.graph != "expert_step":
                if not ctx.execute_async_v3(handle):
                    raise RuntimeError(f"TensorRT enqueue of {stage.graph} failed")
                continue
            # N steps: x ping-pongs between two buffers; tau row k; the result lands in x_next's buffer.
            xs, taus = self._step_buffers["x"], self._step_buffers["taus"]
            out = self.buffers[("expert_step", "x_next")]
            for k in range(taus.shape[0]):
                src = xs[k % 2]
                dst = out if k == taus.shape[0] - 1 else xs[(k + 1) % 2]
                ctx.set_tensor_address("x", src.data_ptr())
                ctx.set_tensor_address("tau", taus[k].data_ptr())
                ctx.set_tensor_address("x_next", dst.data_ptr())
                if not ctx.execute_async_v3(handle):
                    raise RuntimeError("TensorRT enqueue of expert_step failed")

    def _result(self):
        graph = self.plan[-1].graph
        return self.buffers[(graph, "actions" if graph == "expert_loop" else "x_next")]

    def infer(self, batch: Mapping[str, Any], noise: np.ndarray | None = None) -> np.ndarray:
        """Normalised action chunk (B, T, A) float32."""
        torch = self._torch
        t0 = time.perf_counter()
        prepared = prepare_batch(self.bundle.spec, self.bundle.profile, batch)
        noise = _noise(self.bundle, noise, self._rng)
        with torch.cuda.stream(self.stream):
            for (group, key), dev in self.host_inputs.items():
                value = noise if group == "noise" else getattr(prepared, group)[key]
                pinned = self._pinned[(group, key)]
                pinned.copy_(torch.from_numpy(np.ascontiguousarray(value)))
                dev.copy_(pinned, non_blocking=True)
        t1 = time.perf_counter()
        if self._use_graph:
            if self.cuda_graph is None:
                self._enqueue_chain()  # one plain run first: TensorRT flushes deferred setup outside capture
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self._enqueue_chain()
                self.cuda_graph = graph
            with torch.cuda.stream(self.stream):
                self.cuda_graph.replay()
        else:
            self._enqueue_chain()
        with torch.cuda.stream(self.stream):  # the copy is ordered after the engines on their stream
            out = self._result().float().to("cpu", non_blocking=False)
        self.stream.synchronize()
        t2 = time.perf_counter()
        self.last_timings = {"host": t1 - t0, "engines": t2 - t1}
        return out.numpy()

    def close(self) -> None:
        """Release graph, contexts and engines."""
        self.cuda_graph = None
        self.contexts.clear()
        self.engines.clear()


# --------------------------------------------------------------------------------------------------
# Static-graph PyTorch
# --------------------------------------------------------------------------------------------------
class TorchGraphRunner:
    """The export wrappers run in PyTorch; on CUDA optionally compiled and captured as a CUDA graph.

    Args:
        model: a ``TwinBrainModel`` (eval mode, on its device and dtype).
        profile: the deployment profile (fixes the shapes).
        num_steps: Euler steps (default: the expert config's).
        compile: wrap every graph in ``torch.compile`` (CUDA: ``mode="max-autotune-no-cudagraphs"``).
        cuda_graph: on CUDA, capture the whole chain as one CUDA graph (static input buffers).
        seed: seed of the noise drawn when ``infer`` gets none.
    """

    def __init__(
        self,
        model,
        profile,
        *,
        num_steps: int | None = None,
        compile: bool = False,
        cuda_graph: bool = True,
        seed: int = 0,
    ) -> None:
        import torch

        from twinbrain_ros.export.graphs import build_graphs, host_spec_for

        self._torch = torch
        self.model = model.eval()
        self.profile = profile
        self.spec = host_spec_for(model, num_steps)
        self.graphs = build_graphs(model, self.spec, profile)
        self.device = next(model.parameters()).device
        for g in self.graphs.values():
            g.module.to(self.device)  # wrapper-owned buffers (the Euler taus) follow the weights
        self.name = f"torch-graphs-{self.device.type}" + ("-compiled" if compile else "")
        if compile:
            mode = "max-autotune-no-cudagraphs" if self.device.type == "cuda" else None
            for g in self.graphs.values():
                g.module = torch.compile(g.module, mode=mode, dynamic=False)
        self._use_graph = cuda_graph and self.device.type == "cuda"
        self._static: dict[str, Any] | None = None
        self._graph = None
        self._rng = np.random.default_rng(seed)
        self.last_timings: dict[str, float] = {}

    def _chain(self, host: Mapping[str, Mapping[str, Any]]) -> Any:
        g = self.graphs
        vl = g["vision_left"](host["vision"])
        vr = g["vision_right"](host["vision"]) if "vision_right" in g else vl
        lk = g["left_brain"]({**host["left"], **vl})
        rq = g["right_brain"]({**host["right"], **vr, **lk})
        return g["expert_loop"]({**host["expert"], **rq, "noise": host["noise"]["noise"]})["actions"]

    def infer(self, batch: Mapping[str, Any], noise: np.ndarray | None = None) -> np.ndarray:
        """Normalised action chunk (B, T, A) float32."""
        torch = self._torch
        t0 = time.perf_counter()
        prepared = prepare_batch(self.spec, self.profile, batch)
        shape = (self.profile.batch_size, self.spec.horizon, self.spec.action_dim)
        noise = (
            self._rng.standard_normal(shape).astype(np.float32)
            if noise is None
            else np.asarray(noise, np.float32)
        )
        host = {
            "vision": prepared.vision, "left": prepared.left, "right": prepared.right,
            "expert": prepared.expert, "noise": {"noise": noise},
        }  # fmt: skip
        tensors = {
            grp: {
                k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)
                for k, v in d.items()
            }
            for grp, d in host.items()
        }
        t1 = time.perf_counter()
        with torch.no_grad():
            if not self._use_graph:
                out = self._chain(tensors)
            else:
                if self._static is None:
                    self._static = tensors
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(2):  # warm-up (compilation, autotuning) outside capture
                            self._chain(self._static)
                    torch.cuda.current_stream().wait_stream(side)
                    self._graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self._graph):
                        self._out = self._chain(self._static)
                else:
                    for grp, d in tensors.items():
                        for k, v in d.items():
                            self._static[grp][k].copy_(v)
                self._graph.replay()
                out = self._out
            result = out.float().cpu().numpy()
        self.last_timings = {"host": t1 - t0, "model": time.perf_counter() - t1}
        return result

    def close(self) -> None:
        """Drop the CUDA graph and static buffers."""
        self._graph = None
        self._static = None


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------
# The eager PyTorch backend is ``policy.TorchRunner``; these are the ones built here.
BACKENDS = ("torch-graphs", "onnxruntime", "onnxruntime-int8", "onnxruntime-cuda", "tensorrt")


def load_runner(
    backend: str,
    *,
    export_dir: str | Path | None = None,
    model=None,
    profile=None,
    device: str = "cpu",
    **options: Any,
):
    """Build a runner by backend name (the one place a backend is chosen).

    Args:
        backend: one of ``BACKENDS`` (the eager model is ``policy.TorchRunner``).
        export_dir: export directory (ONNX Runtime, TensorRT).
        model: the model (``torch-graphs``).
        profile: the profile (``torch-graphs``; default: the export's when ``export_dir`` is given).
        device: device for the PyTorch backends.
        **options: passed to the runner's constructor.

    Returns:
        The runner.

    Raises:
        ValueError: on an unknown backend or missing arguments.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch-graphs":
        if model is None:
            raise ValueError("the torch-graphs backend needs the model")
        if profile is None:
            if export_dir is None:
                raise ValueError("the torch-graphs backend needs a profile or an export directory")
            bundle = load_bundle(export_dir)
            profile = bundle.profile
            options.setdefault("num_steps", bundle.spec.num_steps)
        return TorchGraphRunner(model, profile, **options)
    if export_dir is None:
        raise ValueError(f"the {backend} backend needs an export directory (twinbrain export ...)")
    if backend == "onnxruntime":
        threads = (
            options.pop("intra_op_threads", None) or int(os.environ.get("TWINBRAIN_ORT_THREADS", "0")) or None
        )
        return OrtRunner(export_dir, ["CPUExecutionProvider"], intra_op_threads=threads, **options)
    if backend == "onnxruntime-int8":
        threads = (
            options.pop("intra_op_threads", None) or int(os.environ.get("TWINBRAIN_ORT_THREADS", "0")) or None
        )
        return OrtRunner(
            export_dir, ["CPUExecutionProvider"], intra_op_threads=threads, variant="ort-int8", **options
        )
    if backend == "onnxruntime-cuda":
        return OrtRunner(export_dir, ["CUDAExecutionProvider", "CPUExecutionProvider"], **options)
    return TensorRTRunner(export_dir, device=device if device.startswith("cuda") else "cuda:0", **options)
