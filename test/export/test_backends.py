# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""All available backends agree on the chunk; the quantised left brain; the CLI entry points."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from twinbrain_ros.export.cli import add_export_args, add_verify_args, export_main, verify_main
from twinbrain_ros.export.inputs import synthetic_batch, synthetic_noise
from twinbrain_ros.export.op_support import check_onnx
from twinbrain_ros.export.quantize import bundle_feeds, quantize_graph_for_bundle
from twinbrain_ros.export.runners import OrtRunner, TorchGraphRunner, load_runner
from twinbrain_ros.export.verify import compare, reference_chunk


def _available_runners(model, bundle):
    runners = {
        "torch-graphs": TorchGraphRunner(model, bundle.profile),
        "onnxruntime (loop)": OrtRunner(bundle),
        "onnxruntime (step)": OrtRunner(bundle, expert="step"),
    }
    if "CUDAExecutionProvider" in ort.get_available_providers():
        runners["onnxruntime-cuda"] = load_runner("onnxruntime-cuda", export_dir=bundle.directory)
    if torch.cuda.is_available():
        try:
            runners["tensorrt"] = load_runner("tensorrt", export_dir=bundle.directory)
        except (ImportError, ValueError):
            pass
    return runners


def test_all_available_backends_agree_on_the_chunk(native_model, native_export):
    spec, profile = native_export.spec, native_export.profile
    batch = synthetic_batch(spec, profile, seed=11)
    noise = synthetic_noise(spec, profile.batch_size, seed=11)
    chunks = {"torch (eager)": reference_chunk(native_model, batch, noise)}
    for name, runner in _available_runners(native_model, native_export).items():
        chunks[name] = runner.infer(batch, noise=noise)
        runner.close()
    ref = chunks["torch (eager)"]
    for name, chunk in chunks.items():
        c = compare(name, chunk, ref)
        assert c.cosine >= 0.999 and c.max_abs < 1e-4, c


def test_exported_graphs_take_views_after_the_text(native_model, native_export):
    """A template with {images}: image tokens sit between text; gathers and positions follow the ids."""
    spec, profile = native_export.spec, native_export.profile
    batch = synthetic_batch(spec, profile, seed=12, views_after_text=True)
    first = batch["right.input_ids"][0].tolist()
    assert first.index(spec.image_token_id) > first.index(spec.propri_token_id)
    noise = synthetic_noise(spec, profile.batch_size, seed=12)
    ref = reference_chunk(native_model, batch, noise)
    for expert in ("loop", "step"):
        runner = OrtRunner(native_export, expert=expert)
        c = compare(f"onnxruntime ({expert})", runner.infer(batch, noise=noise), ref)
        runner.close()
        assert c.cosine >= 0.999 and c.max_abs < 1e-4, c
    # The layout matters: the same ids with the views first give another chunk.
    other = reference_chunk(native_model, synthetic_batch(spec, profile, seed=12), noise)
    assert np.abs(other - ref).max() > 1e-3


@pytest.mark.parametrize(("mode", "min_cos"), [("int8", 0.999), ("fp8", 0.995)])
def test_quantized_left_brain_runs_in_onnxruntime_and_stays_close(native_export, mode, min_cos):
    path = quantize_graph_for_bundle(native_export, "left_brain", mode, batches=2)
    report = check_onnx(path)
    assert report.ok, report.format()
    # 9 linear layers (weights: 9 DQ) read 5 distinct inputs (5 Q/DQ pairs); 2 attention MatMuls stay float.
    assert report.op_counts["QuantizeLinear"] == 5 and report.op_counts["DequantizeLinear"] == 14
    feeds = bundle_feeds(native_export, "left_brain", 1)[0]
    ref = ort.InferenceSession(str(native_export.graph_path("left_brain"))).run(None, feeds)
    got = ort.InferenceSession(str(path)).run(None, feeds)
    for name, a, b in zip(("keys", "values"), got, ref, strict=True):
        c = compare(name, a, b)
        assert c.cosine >= min_cos, c


def _parse(adder, argv):
    ap = argparse.ArgumentParser()
    adder(ap)
    return ap.parse_args(argv)


def test_verify_cli_passes_and_fails_as_it_should(capsys):
    args = _parse(
        add_verify_args,
        [
            "--preset",
            "tiny",
            "--backend",
            "torch-graphs",
            "--cameras",
            "1",
            "--image-size",
            "64x64",
            "--text-bucket",
            "6",
            "--seeds",
            "1",
            "--json",
        ],
    )
    assert verify_main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["comparisons"][0]["cosine"] >= 0.999
    # An impossible threshold fails with a non-zero exit code.
    args.threshold, args.json = 1.5, False
    assert verify_main(args) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_cli_without_tensorrt_exits_non_zero(native_export, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    args = _parse(
        add_verify_args,
        ["--preset", "tiny", "--backend", "tensorrt", "--export-dir", str(native_export.directory)],
    )
    assert verify_main(args) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


def test_export_cli_check_only(native_export, capsys):
    args = _parse(add_export_args, ["--check", str(native_export.directory)])
    assert export_main(args) == 0
    assert "OK" in capsys.readouterr().out


def test_onnxruntime_threads_option(native_export):
    runner = load_runner("onnxruntime", export_dir=native_export.directory, intra_op_threads=1)
    spec, profile = native_export.spec, native_export.profile
    out = runner.infer(synthetic_batch(spec, profile), noise=synthetic_noise(spec, 2))
    assert out.shape == (2, spec.horizon, spec.action_dim) and np.isfinite(out).all()


def test_ort_int8_variant_passes_verify(native_model, native_export):
    from twinbrain_ros.export.onnx_export import load_bundle
    from twinbrain_ros.export.quantize import ORT_INT8, add_ort_int8_variant
    from twinbrain_ros.export.verify import verify_backend

    add_ort_int8_variant(native_export, graphs=["vision_left", "vision_right", "left_brain", "right_brain"])
    bundle = load_bundle(native_export.directory)
    assert bundle.graph_path("left_brain", ORT_INT8).name == "left_brain.ort-int8.onnx"
    assert bundle.graph_path("expert_loop", ORT_INT8).name == "expert_loop.onnx"  # no variant: base graph
    runner = load_runner("onnxruntime-int8", export_dir=bundle.directory)
    assert runner.name == "onnxruntime-cpu-ort-int8"
    report = verify_backend(native_model, runner, bundle.spec, bundle.profile, seeds=(0,))
    assert report.ok, report.format()
    with pytest.raises(ValueError, match="has no 'fp4' graphs"):
        OrtRunner(bundle, variant="fp4")
