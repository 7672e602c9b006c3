# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Export -> ONNX Runtime parity for every graph (tiny config), the export bundle, and the chain."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from twinbrain_ros.export.graphs import GRAPH_NAMES
from twinbrain_ros.export.inputs import synthetic_batch, synthetic_noise
from twinbrain_ros.export.onnx_export import EXPORT_FILE, graph_sha256, load_bundle
from twinbrain_ros.export.op_support import check_files
from twinbrain_ros.export.runners import OrtRunner
from twinbrain_ros.export.verify import reference_chunk, verify_backend, verify_graphs


def test_every_graph_matches_pytorch_in_onnxruntime(native_model, native_export):
    assert set(native_export.graphs) == set(GRAPH_NAMES)  # brains differ -> two vision graphs
    report = verify_graphs(native_model, native_export, seed=5, atol=1e-4)
    assert report.ok, report.format()
    assert {c.name.split(".")[0] for c in report.comparisons} == set(GRAPH_NAMES)


def test_graphs_are_static_opset18_and_tensorrt_parsable(native_export):
    for name, info in native_export.graphs.items():
        model = onnx.load(str(native_export.graph_path(name)), load_external_data=False)
        assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
            ("", 18)
        ]
        # Fixed shapes: every graph input and output dimension is a number.
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims), (name, value.name)
        # No data-dependent control flow.
        assert not {n.op_type for n in model.graph.node} & {"If", "Loop", "Scan", "NonZero"}, name
        assert info.inputs[0].shape and info.sha256 == graph_sha256(native_export.graph_path(name))
    report = check_files(native_export.graph_path(g) for g in native_export.graphs)
    assert report.ok, report.format()


def test_bundle_roundtrip(native_export):
    bundle = load_bundle(native_export.directory)
    assert bundle.profile == native_export.profile and bundle.spec == native_export.spec
    assert bundle.model_id == native_export.model_id and not bundle.share_vision
    data = json.loads((native_export.directory / EXPORT_FILE).read_text())
    assert data["graphs"]["left_brain"]["outputs"][0]["name"] == "left_keys"
    assert data["opset"] == 18 and data["host"]["num_steps"] == bundle.spec.num_steps


@pytest.mark.parametrize("expert", ["loop", "step"])
def test_onnxruntime_chain_matches_eager_model(native_model, native_export, expert):
    runner = OrtRunner(native_export, expert=expert)
    report = verify_backend(
        native_model, runner, native_export.spec, native_export.profile, seeds=(0, 1), atol=1e-4
    )
    assert report.ok, report.format()
    assert set(runner.last_timings) == {"host", "vision", "left", "right", "expert"}


def test_reference_mode_chain_matches_eager_model(reference_model, reference_export):
    """Index-aligned joint mask, no DeepStack, state only in the expert, buckets longer than the prompts."""
    assert reference_export.spec.index_aligned_mask and reference_export.spec.state_to_expert
    runner = OrtRunner(reference_export)
    report = verify_backend(reference_model, runner, reference_export.spec, reference_export.profile,
                            seeds=(0, 3), atol=1e-4)  # fmt: skip
    assert report.ok, report.format()
    assert "deepstack_embeds" not in {t.name for t in reference_export.graphs["vision_left"].outputs}


def test_runner_draws_noise_and_rejects_misfits(native_model, native_export):
    spec, profile = native_export.spec, native_export.profile
    runner = OrtRunner(native_export, seed=4)
    batch = synthetic_batch(spec, profile, seed=2)
    a, b = runner.infer(batch), runner.infer(batch)
    assert a.shape == (2, spec.horizon, spec.action_dim) and not np.allclose(a, b)  # fresh noise per call
    noise = synthetic_noise(spec, 2, seed=2)
    np.testing.assert_allclose(
        runner.infer(batch, noise=noise), reference_chunk(native_model, batch, noise), atol=1e-4
    )
    with pytest.raises(ValueError, match="noise shape"):
        runner.infer(batch, noise=noise[:1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_typed_brain_graph_for_strongly_typed_builds(xh, dtype, tmp_path):
    """Graphs exported from a half-precision model keep their types (what TensorRT builds strongly typed);
    fp16 runs in ORT CPU, bf16 runs upcast (ORT has no bf16 CPU kernels)."""
    import torch

    from twinbrain_ros.export.onnx_export import export_onnx

    model = xh.make_model()
    model.brains.to(getattr(torch, dtype))
    model.state_encoder.to(getattr(torch, dtype))
    bundle = export_onnx(
        model, xh.make_profile(model, "typed", batch=1, cameras=1), tmp_path, graphs=["left_brain"]
    )
    assert bundle.dtype == dtype and bundle.graphs["left_brain"].outputs[0].dtype == dtype
    assert check_files([bundle.graph_path("left_brain")]).ok
    report = verify_graphs(model, bundle, atol=None, threshold=0.999)
    assert report.ok, report.format()
