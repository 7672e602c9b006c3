# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Quantised graph variants: INT8 / FP8 Q/DQ for TensorRT, dynamic INT8 for ONNX Runtime on CPU.

TensorRT quantises INT8 and FP8 through explicit Q/DQ nodes in a strongly typed network (weight-only
quantisation exists only for INT4/FP4). For the frozen left brain this pass rewrites every
``MatMul(x, W)`` whose ``W`` is an initializer into::

    x -> QuantizeLinear(s_x) -> DequantizeLinear(s_x) -> MatMul
    W_q (int8 / float8e4m3fn, per output channel s_W) -> DequantizeLinear(s_W, axis=1) ----^

``s_W = amax(|W|, per column) / qmax``; ``s_x = amax(|x|) / qmax`` from calibration runs of the graph in
ONNX Runtime on sample inputs (qmax 127 for INT8, 448 for FP8 E4M3). Zero points are zero, as TensorRT
requires. Scales take the activation's dtype; the opset is raised to 19 (Q/DQ of float8 and bfloat16).
The result runs in ONNX Runtime on CPU, so its accuracy is measured before any engine is built.

**ONNX Runtime CPU variant** (:func:`add_ort_int8_variant`): ORT's dynamic quantisation (weights
INT8 per output channel, activations quantised on the fly, ``MatMulInteger``) of every graph, stored as
``<graph>.ort-int8.onnx`` and listed in ``export.json`` under ``variants``. CPU-only (TensorRT's parser
does not take ``MatMulInteger``); accepted only when ``verify`` passes (cosine >= 0.999 on the chunk).

Usage:
    path = quantize_graph_for_bundle(bundle, "left_brain", "fp8")     # writes left_brain.fp8.onnx
    add_ort_int8_variant(bundle)                                       # <graph>.ort-int8.onnx
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

QMAX = {"int8": 127.0, "fp8": 448.0}
Q_OPSET = 19


def linear_nodes(model) -> list:
    """``MatMul`` nodes whose second input is a 2-D initializer (the linear layers)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        n for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]  # fmt: skip


def calibrate(model_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Max |x| of every linear layer's activation input over the calibration feeds.

    Args:
        model_path: the float graph.
        feeds: input dicts (by graph input name).

    Returns:
        Activation tensor name -> amax.
    """
    import onnx
    import onnxruntime as ort

    from twinbrain_ros.export.onnx_export import upcast_bfloat16

    model = upcast_bfloat16(onnx.load(str(model_path)))  # no bf16 CPU kernels; ranges are the same
    targets = sorted({n.input[0] for n in linear_nodes(model)})
    existing = {o.name for o in model.graph.output}
    for name in targets:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(targets, 0.0)
    for feed in feeds:
        values = sess.run(targets, dict(feed))
        for name, value in zip(targets, values, strict=True):
            amax[name] = max(amax[name], float(np.abs(value.astype(np.float32)).max()))
    return amax


def _quantize_weight(w: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric quantisation of a (in, out) weight.

    Returns:
        ``(w_q, scale)``: quantised weight (int8 or float8_e4m3fn, same shape) and (out,) float32 scales.
    """
    w = w.astype(np.float32)
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / QMAX[mode], 1.0).astype(np.float32)  # (out,)
    scaled = w / scale
    if mode == "int8":
        return np.clip(np.rint(scaled), -127, 127).astype(np.int8), scale
    import ml_dtypes

    return np.clip(scaled, -448.0, 448.0).astype(ml_dtypes.float8_e4m3fn), scale


def quantize_model(model, amax: Mapping[str, float], mode: str):
    """Insert Q/DQ pairs for every linear layer (in place) and return the model.

    Args:
        model: an ``onnx.ModelProto`` with weights loaded.
        amax: activation amax by tensor name (from :func:`calibrate`).
        mode: ``"int8"`` or ``"fp8"``.

    Raises:
        ValueError: on an unknown mode or a linear input without calibration data.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if mode not in QMAX:
        raise ValueError(f"mode must be one of {sorted(QMAX)}, got {mode!r}")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.value_info) + list(graph.input)}
    q_type = TensorProto.INT8 if mode == "int8" else TensorProto.FLOAT8E4M3FN
    new_nodes = []
    done_acts: dict[str, str] = {}
    to_np = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}
    linear_outputs = {n.output[0] for n in linear_nodes(model)}
    for node in list(graph.node):
        if node.output[0] not in linear_outputs:
            new_nodes.append(node)
            continue
        x, w_name = node.input[0], node.input[1]
        if x not in amax:
            raise ValueError(f"no calibration data for {x!r} (input of {node.name})")
        w_init = inits[w_name]
        w = numpy_helper.to_array(w_init)
        float_type = w_init.data_type
        np_type = to_np.get(float_type)
        w_q, w_scale = _quantize_weight(w, mode)
        base = node.name or w_name
        wq_name, ws_name = f"{base}_wq", f"{base}_wscale"
        if mode == "int8":
            graph.initializer.append(numpy_helper.from_array(w_q, wq_name))
        else:
            graph.initializer.append(
                helper.make_tensor(wq_name, q_type, list(w_q.shape), w_q.view(np.uint8).tobytes(), raw=True)
            )
        graph.initializer.append(_scale_tensor(ws_name, w_scale, float_type, np_type))
        w_dq = f"{base}_wdq"
        new_nodes.append(
            helper.make_node("DequantizeLinear", [wq_name, ws_name], [w_dq], name=f"{base}_dq_w", axis=1)
        )
        if x not in done_acts:
            xs_name, xz_name = f"{base}_xscale", f"{base}_xzero"
            x_scale = np.asarray(max(amax[x], 1e-8) / QMAX[mode], dtype=np.float32)
            graph.initializer.append(
                _scale_tensor(xs_name, x_scale, elem.get(x, float_type), to_np.get(elem.get(x, float_type)))
            )
            graph.initializer.append(helper.make_tensor(xz_name, q_type, [], [0]))
            xq, xdq = f"{base}_xq", f"{base}_xdq"
            new_nodes.append(
                helper.make_node("QuantizeLinear", [x, xs_name, xz_name], [xq], name=f"{base}_q_x")
            )
            new_nodes.append(
                helper.make_node("DequantizeLinear", [xq, xs_name, xz_name], [xdq], name=f"{base}_dq_x")
            )
            done_acts[x] = xdq
        new_nodes.append(helper.make_node("MatMul", [done_acts[x], w_dq], list(node.output), name=node.name))
        graph.initializer.remove(w_init)
    del graph.node[:]
    graph.node.extend(new_nodes)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < Q_OPSET:
            imp.version = Q_OPSET
    onnx.checker.check_model(model)
    return model


def _scale_tensor(name: str, value: np.ndarray, float_type: int, np_type):
    from onnx import TensorProto, helper, numpy_helper

    if float_type == TensorProto.BFLOAT16:
        import ml_dtypes

        arr = np.asarray(value, dtype=np.float32).astype(ml_dtypes.bfloat16)
        return helper.make_tensor(
            name, TensorProto.BFLOAT16, list(arr.shape), arr.view(np.uint16).tobytes(), raw=True
        )
    return numpy_helper.from_array(np.asarray(value, dtype=np_type or np.float32), name)


def bundle_feeds(bundle, graph: str, batches: int) -> list[dict[str, np.ndarray]]:
    """Inputs of ``graph`` for ``batches`` synthetic batches (earlier graphs run in ONNX Runtime)."""
    from twinbrain_ros.export.host import prepare_batch
    from twinbrain_ros.export.inputs import synthetic_batch
    from twinbrain_ros.export.runners import OrtRunner, chain_plan

    runner = OrtRunner(bundle)
    out = []
    for seed in range(batches):
        batch = synthetic_batch(bundle.spec, bundle.profile, seed=100 + seed)
        prepared = prepare_batch(bundle.spec, bundle.profile, batch)
        results: dict[str, dict[str, np.ndarray]] = {}
        for st in chain_plan(bundle):
            feeds = {}
            for name, src in st.inputs.items():
                if src.kind == "host":
                    feeds[name] = getattr(prepared, src.group)[src.key]
                elif src.kind == "graph":
                    feeds[name] = results[src.group][src.key]
            if st.graph == graph:
                out.append(feeds)
                break
            results[st.graph] = runner.run_graph(st.graph, feeds)
    return out


def quantize_graph_for_bundle(bundle, graph: str, mode: str, batches: int = 4) -> Path:
    """Calibrate and quantise one graph of an export; writes ``<graph>.<mode>.onnx`` next to it.

    Returns:
        The quantised graph's path.
    """
    import onnx

    src = bundle.graph_path(graph)
    feeds = bundle_feeds(bundle, graph, batches)
    amax = calibrate(src, feeds)
    model = quantize_model(onnx.load(str(src)), amax, mode)
    dst = src.with_name(f"{graph}.{mode}.onnx")
    large = sum(len(i.raw_data) for i in model.graph.initializer) > (1 << 30)
    onnx.save(model, str(dst), save_as_external_data=large, location=f"{dst.name}.data" if large else None)
    return dst


ORT_INT8 = "ort-int8"


def add_ort_int8_variant(bundle, graphs=None, *, reduce_range: bool = True):
    """Write ONNX Runtime dynamic-INT8 copies of the export's graphs and record them in ``export.json``.

    Args:
        bundle: the export (float32 graphs).
        graphs: graph names (default: all).
        reduce_range: 7-bit weights, which avoids int16 saturation of the U8S8 kernels on CPUs without
            VNNI (ORT's advice for per-channel models on such machines).

    Returns:
        The bundle, with ``meta["variants"]["ort-int8"]`` filled.

    Raises:
        ValueError: for a non-float32 export.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from twinbrain_ros.export.onnx_export import graph_sha256

    if bundle.dtype != "float32":
        raise ValueError(f"the ort-int8 variant is made from a float32 export, this one is {bundle.dtype}")
    files = {}
    for name in graphs or list(bundle.graphs):
        src = bundle.graph_path(name)
        dst = src.with_name(f"{name}.{ORT_INT8}.onnx")
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
        files[name] = {
            "file": dst.name,
            "sha256": graph_sha256(dst),
            "source_sha256": bundle.graphs[name].sha256,
        }
    bundle.meta.setdefault("variants", {})[ORT_INT8] = files
    bundle.save()
    return bundle
