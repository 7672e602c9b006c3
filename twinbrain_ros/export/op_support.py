# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Check an ONNX graph against TensorRT's ONNX-parser support table before building an engine.

The table is data (``trt_onnx_support.yaml``, transcribed from ONNX-TensorRT's ``operators.md`` with its
TensorRT version noted). The checker reports, per node, everything TensorRT's parser would refuse:

* operators marked unsupported or missing from the table, and nodes of other domains (plugins);
* an opset outside the supported range;
* tensor element types TensorRT does not take (DOUBLE, UINT16, strings ...; UINT8 off the I/O);
* operator/type combinations outside the "Supported Types" column;
* the checkable restrictions: inputs that must be build-time constants, attribute values, unused
  extra outputs, zero points, input ranks.

Types come from ONNX shape inference on the graph (weights are not loaded).

Usage:
    report = check_onnx("left_brain.onnx")
    if not report.ok:
        raise ValueError(report.format())
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("trt_onnx_support.yaml")

# ONNX TensorProto element type -> the table's type names.
_ELEM_TYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
    9: "BOOL", 10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
    16: "BF16", 17: "FP8", 18: "FP8E4M3FNUZ", 19: "FP8E5M2", 20: "FP8E5M2FNUZ", 21: "UINT4", 22: "INT4",
    23: "FP4",
}  # fmt: skip


@dataclass(frozen=True)
class Issue:
    """One reason TensorRT would refuse (or mistreat) the graph.

    Attributes:
        graph: graph name (file stem).
        node: node name ("" for graph-level issues).
        op: operator type ("" for graph-level issues).
        message: what is wrong.
    """

    graph: str
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        """One line."""
        where = f"{self.op} node {self.node!r}" if self.op else "graph"
        return f"{self.graph}: {where}: {self.message}"


@dataclass
class Report:
    """Result of checking one or more graphs.

    Attributes:
        issues: everything found.
        tensorrt_version: the TensorRT version the table describes.
        checked: graph names checked.
        op_counts: operator -> count over all checked graphs.
    """

    issues: list[Issue] = field(default_factory=list)
    tensorrt_version: str = ""
    checked: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No issues."""
        return not self.issues

    def extend(self, other: Report) -> None:
        """Merge another report into this one."""
        self.issues.extend(other.issues)
        self.checked.extend(other.checked)
        for op, n in other.op_counts.items():
            self.op_counts[op] = self.op_counts.get(op, 0) + n
        self.tensorrt_version = self.tensorrt_version or other.tensorrt_version

    def format(self) -> str:
        """Human summary: one line per issue."""
        head = f"TensorRT {self.tensorrt_version} ONNX-parser check of {', '.join(self.checked)}: "
        if self.ok:
            return head + f"OK ({sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types)"
        return head + f"{len(self.issues)} issue(s)\n  - " + "\n  - ".join(str(i) for i in self.issues)


@functools.lru_cache(maxsize=4)
def load_table(path: str | Path = TABLE_PATH) -> dict[str, Any]:
    """The support table (cached).

    Raises:
        ValueError: if the file lacks its source notes or operator list.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "operators" not in data or "source" not in data:
        raise ValueError(f"{path}: not a TensorRT support table (needs 'source' and 'operators')")
    if not data["source"].get("tensorrt_version"):
        raise ValueError(f"{path}: source.tensorrt_version is required")
    return data


def _attr_value(attr) -> Any:
    import onnx

    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _constant_names(graph) -> set[str]:
    """Tensors whose values are known at build time (initializers, constants, folds of them)."""
    static_shape: set[str] = set()
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            static_shape.add(vi.name)
    const = {init.name for init in graph.initializer}
    random_ops = {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Bernoulli",
        "Multinomial",
    }
    for node in graph.node:  # nodes are topologically sorted in a valid model
        if node.op_type == "Constant":
            const.update(node.output)
        elif node.op_type in ("Shape", "Size") and node.input and node.input[0] in static_shape:
            const.update(node.output)
        elif node.op_type not in random_ops and node.input and all((not i) or i in const for i in node.input):
            const.update(o for o in node.output if o)
    return const


def _constant_value(graph, name: str):
    import onnx

    for init in graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init) if not init.external_data else None
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return onnx.numpy_helper.to_array(attr.t)
    return None


def check_model(model, name: str = "graph", table: Mapping[str, Any] | None = None) -> Report:
    """Check an in-memory ``onnx.ModelProto``.

    Args:
        model: the model (weights need not be loaded).
        name: graph name for the report.
        table: support table (default: the bundled one).

    Returns:
        The report.
    """
    import onnx

    table = table or load_table()
    report = Report(tensorrt_version=str(table["source"]["tensorrt_version"]), checked=[name])
    issues = report.issues
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # noqa: BLE001 - report, do not crash: the parser would need shapes too
        issues.append(Issue(name, "", "", f"ONNX shape inference failed: {exc}"))
        inferred = model
    graph = inferred.graph

    lo, hi = int(table["opset"]["min"]), int(table["opset"]["max"])
    domains = set(table.get("domains", [""]))
    for imp in inferred.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo <= imp.version <= hi:
            issues.append(Issue(name, "", "", f"opset {imp.version} outside TensorRT's range [{lo}, {hi}]"))
    if inferred.functions:
        issues.append(
            Issue(name, "", "", f"{len(inferred.functions)} local function(s); inline them before building")
        )

    types: dict[str, int] = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type

    tt = table.get("tensor_types", {})
    anywhere, io_only, refused = (
        set(tt.get("anywhere", [])),
        set(tt.get("io_only", [])),
        set(tt.get("refused", [])),
    )
    io_names = {v.name for v in list(graph.input) + list(graph.output)}
    for tensor, elem in sorted(types.items()):
        kind = _ELEM_TYPES.get(elem, f"type#{elem}")
        if kind in refused or (kind not in anywhere and kind not in io_only):
            issues.append(
                Issue(
                    name, "", "", f"tensor {tensor!r} has element type {kind}, which TensorRT does not take"
                )
            )
        elif kind in io_only and tensor not in io_names:
            issues.append(
                Issue(name, "", "", f"tensor {tensor!r} is {kind}, allowed only as a network input/output")
            )

    consumers: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1
    for out in graph.output:
        consumers[out.name] = consumers.get(out.name, 0) + 1
    const = _constant_names(graph)
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output)
        if vi.type.tensor_type.HasField("shape")
    }
    ops = table["operators"]
    for node in graph.node:
        report.op_counts[node.op_type] = report.op_counts.get(node.op_type, 0) + 1
        label = node.name or (node.output[0] if node.output else "?")

        def add(msg: str, node=node, label=label) -> None:
            issues.append(Issue(name, label, node.op_type, msg))

        if node.domain not in domains and not (node.domain == "ai.onnx" and "" in domains):
            add(f"domain {node.domain!r} is not parsed by TensorRT (needs a plugin)")
            continue
        entry = ops.get(node.op_type)
        if entry is None:
            add("operator not in TensorRT's support table")
            continue
        if entry.get("supported", True) is False:
            add("operator not supported by TensorRT's ONNX parser")
            continue
        allowed = entry.get("types")
        if allowed:
            where = entry.get("type_of", 0)
            slots = where if isinstance(where, list) else [where]
            for slot in slots:
                if slot == "output":
                    tensor = node.output[0] if node.output else ""
                elif slot == "input":
                    tensor = node.input[0] if node.input else ""
                else:
                    tensor = node.input[int(slot)] if len(node.input) > int(slot) else ""
                if tensor and tensor in types:
                    kind = _ELEM_TYPES.get(types[tensor], f"type#{types[tensor]}")
                    if kind not in allowed:
                        add(
                            f"{kind} {'output' if slot == 'output' else 'input'} not supported "
                            f"(types {allowed})"
                        )
        rules = entry.get("rules", {}) or {}
        for idx in rules.get("const_inputs", []):
            if len(node.input) > idx and node.input[idx] and node.input[idx] not in const:
                add(f"input {idx} ({node.input[idx]!r}) must be a build-time constant")
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        for key, values in (rules.get("attr_in", {}) or {}).items():
            if key in attrs and attrs[key] not in values:
                add(f"attribute {key}={attrs[key]!r} not supported (allowed: {values})")
        for key in rules.get("attr_absent", []):
            if key in attrs:
                add(f"attribute {key} is not supported")
        for key in rules.get("attr_all_ones", []):
            if key in attrs and any(v != 1 for v in attrs[key]):
                add(f"attribute {key}={attrs[key]} must be all ones")
        if "max_used_outputs" in rules:
            extra = [o for o in node.output[int(rules["max_used_outputs"]) :] if o and consumers.get(o)]
            if extra:
                add(f"outputs {extra} are used, TensorRT supports only the first {rules['max_used_outputs']}")
        if "zero_point_input" in rules:
            idx = int(rules["zero_point_input"])
            if len(node.input) > idx and node.input[idx]:
                value = _constant_value(graph, node.input[idx])
                if value is None or bool((value.astype("float64") != 0).any()):
                    add(f"zero point input {idx} must be a constant zero")
        if "const_false_input" in rules:
            idx = int(rules["const_false_input"])
            if len(node.input) > idx and node.input[idx]:
                value = _constant_value(graph, node.input[idx])
                if value is None or bool(value.any()):
                    add(f"input {idx} must be a constant false")
        for idx, allowed_ranks in (rules.get("input_rank", {}) or {}).items():
            idx = int(idx)
            if (
                len(node.input) > idx
                and node.input[idx] in ranks
                and ranks[node.input[idx]] not in allowed_ranks
            ):
                add(f"input {idx} has rank {ranks[node.input[idx]]}, TensorRT needs {allowed_ranks}")
    return report


def check_onnx(path: str | Path, table: Mapping[str, Any] | None = None) -> Report:
    """Check an ``.onnx`` file (external weights are not loaded)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    return check_model(model, name=path.stem, table=table)


def check_files(paths: Iterable[str | Path], table: Mapping[str, Any] | None = None) -> Report:
    """Check several graphs; one merged report."""
    total = Report()
    for p in paths:
        total.extend(check_onnx(p, table))
    return total
