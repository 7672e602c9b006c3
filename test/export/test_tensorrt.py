# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Engine manifests (refusing mismatched engines), the build flow against a stand-in TensorRT module,
and the real TensorRT backend where TensorRT and a GPU exist."""

from __future__ import annotations

import json
import sys
import types

import pytest

from twinbrain_ros.export import manifest as MF
from twinbrain_ros.export import trt_build
from twinbrain_ros.export.manifest import EngineEntry, EngineMismatchError, RuntimeEnvironment
from twinbrain_ros.export.onnx_export import sha256_file

H100 = RuntimeEnvironment("10.15.1", (9, 0), "NVIDIA H100 80GB HBM3")


def _fake_engines(bundle, env=H100, **options):
    out = bundle.directory / MF.ENGINES_DIR / env.engine_dir_name
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, info in bundle.graphs.items():
        plan = out / f"{name}.plan"
        plan.write_bytes(f"plan of {name}".encode())
        entries[name] = EngineEntry(plan.name, info.sha256, sha256_file(plan), "strongly_typed")
    manifest = MF.manifest_for(out, env, bundle, entries, **options)
    manifest.save()
    return manifest


def test_manifest_roundtrip_and_accepts_its_own_machine(native_export):
    manifest = _fake_engines(native_export)
    loaded = MF.load_manifest(manifest.directory)
    assert loaded.to_dict() == manifest.to_dict()
    assert loaded.sm == "sm_90" and loaded.model_id == native_export.model_id
    loaded.check(H100, native_export)
    assert MF.find_engine_dir(native_export.directory, H100) == manifest.directory


def test_mismatched_engine_is_refused_with_a_clear_message(native_export):
    manifest = _fake_engines(native_export)
    ada_newer_trt = RuntimeEnvironment("10.16.0", (8, 9), "NVIDIA L4")
    with pytest.raises(EngineMismatchError) as err:
        manifest.check(ada_newer_trt, native_export)
    text = str(err.value)
    assert "built with TensorRT 10.15.1, this machine has TensorRT 10.16.0" in text
    assert "built for sm_90 (NVIDIA H100 80GB HBM3), this GPU is sm_89 (NVIDIA L4)" in text
    assert "twinbrain export --engine --export-dir" in text
    with pytest.raises(EngineMismatchError, match="no engines for sm_89-trt10.16.0"):
        MF.find_engine_dir(native_export.directory, ada_newer_trt)


def test_engine_from_another_export_or_a_changed_graph_is_refused(native_export, tmp_path):
    manifest = _fake_engines(native_export)
    data = json.loads((manifest.directory / MF.MANIFEST_FILE).read_text())
    data["model_id"] = "0123456789abcdef"
    data["engines"]["left_brain"]["onnx_sha256"] = "0" * 64
    (manifest.directory / MF.MANIFEST_FILE).write_text(json.dumps(data))
    problems = MF.load_manifest(manifest.directory).problems(H100, native_export)
    assert any("export model_id 0123456789abcdef" in p for p in problems)
    assert any("engine left_brain was built from another left_brain.onnx" in p for p in problems)
    # A truncated plan and a missing one.
    (manifest.directory / "right_brain.plan").write_bytes(b"x")
    (manifest.directory / "expert_loop.plan").unlink()
    problems = MF.load_manifest(manifest.directory).problems(H100, native_export)
    assert any("right_brain.plan does not match its recorded hash" in p for p in problems)
    assert any("expert_loop.plan is missing" in p for p in problems)
    with pytest.raises(EngineMismatchError, match="manifest.json is missing"):
        MF.load_manifest(tmp_path)


def test_compatibility_options(native_export):
    manifest = _fake_engines(native_export, hardware_compatibility="ampere_plus", version_compatible=True)
    manifest.check(RuntimeEnvironment("10.16.0", (8, 6), "RTX A6000"), native_export)
    problems = manifest.problems(RuntimeEnvironment("10.14.0", (7, 5), "T4"), native_export)
    assert len(problems) == 2 and "older than sm_80" in problems[1]
    assert any("11.0.0" in p for p in manifest.problems(RuntimeEnvironment("11.0.0", (9, 0)), native_export))


class _FakeTRT(types.ModuleType):
    """Just enough of the documented TensorRT Python API to run build_engines without a GPU."""

    __version__ = "10.15.1"

    def __init__(self):
        super().__init__("tensorrt")
        self.calls = []
        trt = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                self.level = level

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        class MemoryPoolType:
            WORKSPACE = 0

        class BuilderFlag:
            FP16, BF16, VERSION_COMPATIBLE = 0, 1, 2

        class HardwareCompatibilityLevel:
            AMPERE_PLUS = 1

        class Config:
            def set_memory_pool_limit(self, pool, size):
                trt.calls.append(("workspace", size))

            def set_flag(self, flag):
                trt.calls.append(("flag", flag))

            def create_timing_cache(self, blob):
                return types.SimpleNamespace(serialize=lambda: b"cache")

            def set_timing_cache(self, cache, ignore_mismatch):
                trt.calls.append(("cache", ignore_mismatch))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                trt.calls.append(("network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return b"serialized-plan"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path):
                trt.calls.append(("parse", str(path)))
                return True

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag, self.MemoryPoolType = (
            NetworkDefinitionCreationFlag,
            MemoryPoolType,
        )
        self.BuilderFlag, self.HardwareCompatibilityLevel = BuilderFlag, HardwareCompatibilityLevel


def test_build_flow_with_a_stand_in_tensorrt(native_export, monkeypatch):
    fake = _FakeTRT()
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(
        trt_build, "runtime_environment", lambda version, device: RuntimeEnvironment(version, (9, 0), "fake")
    )
    manifest = trt_build.build_engines(
        native_export, graphs=["left_brain", "expert_loop"], quantize_left="int8"
    )
    assert set(manifest.engines) == {"left_brain", "expert_loop"}
    assert manifest.engines["left_brain"].quantization == "int8"
    assert manifest.engines["left_brain"].onnx_file == "left_brain.int8.onnx"
    assert ("network", 1 << 1) in fake.calls  # strongly typed
    assert [c[1].endswith("left_brain.int8.onnx") for c in fake.calls if c[0] == "parse"][0]
    MF.load_manifest(manifest.directory).check(RuntimeEnvironment("10.15.1", (9, 0)), native_export)
    with pytest.raises(ValueError, match="strongly typed networks only"):
        fake.__version__ = "11.0.0"
        trt_build.build_engine(native_export.graph_path("expert_loop"), manifest.directory / "x.plan",
                               precision="bf16", trt=fake)  # fmt: skip


def test_without_tensorrt_the_build_says_what_to_do(native_export, monkeypatch):
    if "tensorrt" not in sys.modules:
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        trt_build.build_engines(native_export, graphs=["expert_step"])


def test_tensorrt_runner_needs_tensorrt(native_export, monkeypatch):
    from twinbrain_ros.export.runners import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        TensorRTRunner(native_export)


@pytest.mark.gpu
def test_tensorrt_backend_matches_pytorch(native_model, native_export):
    pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from twinbrain_ros.export.runners import TensorRTRunner
    from twinbrain_ros.export.verify import verify_backend

    trt_build.build_engines(native_export)
    runner = TensorRTRunner(native_export)
    report = verify_backend(native_model, runner, native_export.spec, native_export.profile)
    assert report.ok, report.format()
