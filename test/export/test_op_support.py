# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The TensorRT op-support checker: it passes clean graphs and catches planted problems."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from twinbrain_ros.export.op_support import check_model, load_table


def _model(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _clean():
    return _model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        [_vi("x")],
        [_vi("y", shape=(2, 4))],
        [numpy_helper.from_array(np.ones((3, 4), np.float32), "w")],
    )


def test_table_names_its_source_and_version():
    table = load_table()
    assert table["source"]["tensorrt_version"] == "10.15"
    assert "onnx-tensorrt" in table["source"]["url"]
    assert table["opset"] == {"min": 9, "max": 24}
    assert table["operators"]["Unique"]["supported"] is False
    assert "BF16" in table["operators"]["MatMul"]["types"]


def test_clean_graph_passes():
    report = check_model(_clean(), "clean")
    assert report.ok, report.format()
    assert report.op_counts == {"Relu": 1, "MatMul": 1}


def test_planted_unsupported_op_is_caught():
    model = _clean()
    model.graph.node.append(helper.make_node("Unique", ["y"], ["u"]))
    model.graph.output.append(helper.make_tensor_value_info("u", TensorProto.FLOAT, None))
    report = check_model(model, "planted")
    assert not report.ok
    assert any(i.op == "Unique" and "not supported" in i.message for i in report.issues), report.format()


def test_planted_custom_domain_and_unknown_ops_are_caught():
    model = _clean()
    model.graph.node.append(helper.make_node("FusedGemm", ["y"], ["z"], domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    report = check_model(model, "planted")
    assert any("com.microsoft" in i.message for i in report.issues), report.format()


def test_planted_float64_and_type_combinations_are_caught():
    model = _model(
        [
            helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
            helper.make_node("Relu", ["d"], ["y"]),
        ],
        [_vi("x")],
        [_vi("y", TensorProto.DOUBLE)],
    )
    report = check_model(model, "f64")
    text = report.format()
    assert "element type DOUBLE" in text and "DOUBLE input not supported" in text
    # MatMul on INT32 is outside its "Supported Types".
    model = _model(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        [_vi("a", TensorProto.INT32), _vi("b", TensorProto.INT32, (3, 2))],
        [_vi("c", TensorProto.INT32, (2, 2))],
    )
    assert "INT32 input not supported" in check_model(model, "i32").format()


def test_planted_attribute_and_constant_restrictions_are_caught():
    resize = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")
    scales = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "s")
    report = check_model(_model([resize], [_vi("x")], [_vi("y", shape=(2, 6))], [scales]), "resize")
    assert any("mode='cubic'" in i.message for i in report.issues), report.format()
    # Unsqueeze axes computed from a graph input: not a build-time constant.
    unsq = helper.make_node("Unsqueeze", ["x", "axes"], ["y"])
    model = _model([unsq], [_vi("x"), _vi("axes", TensorProto.INT64, (1,))], [_vi("y", shape=(1, 2, 3))])
    assert any("build-time constant" in i.message for i in check_model(model, "unsq").issues)
    # A non-zero quantisation zero point.
    q = helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"])
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "sc"),
        numpy_helper.from_array(np.array(3, np.int8), "zp"),
    ]
    model = _model([q], [_vi("x")], [_vi("q", TensorProto.INT8)], inits)
    assert any("zero point" in i.message for i in check_model(model, "q").issues)


def test_opset_outside_range_is_caught():
    model = _clean()
    model.opset_import[0].version = 25
    assert any("opset 25" in i.message for i in check_model(model, "new").issues)


def test_layer_norm_extra_outputs_used_is_caught():
    ln = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], axis=-1)
    model = _model(
        [ln],
        [_vi("x")],
        [_vi("y"), _vi("mean", shape=(2, 1))],
        [numpy_helper.from_array(np.ones(3, np.float32), "g")],
    )
    assert any("first 1" in i.message for i in check_model(model, "ln").issues)


@pytest.mark.parametrize("op", ["NonZero", "Where", "GatherND"])
def test_supported_ops_in_table(op):
    assert load_table()["operators"][op].get("supported", True)


def test_check_files_on_disk(tmp_path):
    from twinbrain_ros.export.op_support import check_files

    onnx.save(_clean(), tmp_path / "a.onnx")
    bad = _clean()
    bad.graph.node.append(helper.make_node("Unique", ["y"], ["u"]))
    onnx.save(bad, tmp_path / "b.onnx")
    report = check_files([tmp_path / "a.onnx", tmp_path / "b.onnx"])
    assert report.checked == ["a", "b"] and len(report.issues) == 1 and report.issues[0].graph == "b"
