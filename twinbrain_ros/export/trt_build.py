# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Build TensorRT engines from an export directory with the TensorRT Python API.

Per graph: check it against the parser support table (``op_support``), parse it with
``trt.OnnxParser``, build a serialized plan, and record everything in the engine manifest
(``manifest.py``) under ``<export>/engines/<sm_XX>-trt<version>/``.

Precision:

* **Strongly typed** (default, ``precision="auto"``): the graph's own types decide, as TensorRT 11
  always does and TensorRT 10 does with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``. Export the
  graphs in the target dtype (``twinbrain export --dtype bfloat16``): the brains run in bf16 with the
  float32 islands the model keeps (RMSNorm statistics, softmax), the expert stays float32.
* ``precision="fp16"|"bf16"`` on a float32 export: a weakly typed build with ``BuilderFlag.FP16`` /
  ``BF16`` (TensorRT 10 only; deprecated there and gone in 11, where this raises).
* ``quantize_left="int8"|"fp8"``: the frozen left brain gets Q/DQ pairs on every weight (per output
  channel) and on every linear input (per tensor, calibrated on sample inputs), see ``quantize.py``;
  TensorRT then builds it with explicit quantization. FP8 needs sm_89 or newer.

TensorRT is imported inside the functions, so this module loads without it.

Usage:
    manifest = build_engines("models/demo/export/cam1", quantize_left="fp8")
    print(manifest.directory)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twinbrain_ros.export.manifest import (
    ENGINES_DIR,
    EngineEntry,
    EngineManifest,
    manifest_for,
    runtime_environment,
)
from twinbrain_ros.export.onnx_export import ExportBundle, graph_sha256, load_bundle, sha256_file
from twinbrain_ros.export.op_support import check_files

LOG = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
QUANTIZATIONS = (None, "int8", "fp8")


def import_tensorrt():
    """Import TensorRT or raise ImportError with what to do."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            "TensorRT is not installed here. Engines are built on the deployment GPU: install the "
            "tensorrt wheel for its CUDA (tensorrt-cu12 / tensorrt-cu13), then run "
            "`twinbrain export --engine --export-dir DIR` there. The ONNX graphs are checked against "
            "TensorRT's parser table without it (`twinbrain export --check DIR`)."
        ) from exc
    return trt


def _major(version: str) -> int:
    return int(str(version).split(".")[0])


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    precision: str = "auto",
    workspace_gib: float = 8.0,
    opt_level: int = 3,
    hardware_compatibility: str = "none",
    version_compatible: bool = False,
    timing_cache: str | Path | None = None,
    trt=None,
) -> float:
    """Build one engine from an ONNX file.

    Args:
        onnx_path: the graph (external weights next to it are read by the parser).
        plan_path: where the serialized engine goes.
        precision: ``auto`` (strongly typed) or ``fp32``/``fp16``/``bf16`` (weakly typed flags).
        workspace_gib: builder workspace limit.
        opt_level: builder optimisation level (0-5).
        hardware_compatibility: ``none`` or ``ampere_plus``.
        version_compatible: build a version-compatible plan (runs on later TensorRT of the same major).
        timing_cache: file to load/store the builder timing cache (speeds up rebuilds).
        trt: the tensorrt module (imported if None).

    Returns:
        Build time in seconds.

    Raises:
        ValueError: on a precision this TensorRT cannot honour.
        RuntimeError: when parsing or building fails (the parser's errors are included).
    """
    trt = trt or import_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = precision == "auto"
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    if precision in ("fp16", "bf16"):
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None or _major(trt.__version__) >= 11:
            raise ValueError(
                f"TensorRT {trt.__version__} builds strongly typed networks only: export the graphs in "
                f"{precision} (twinbrain export --dtype {'float16' if precision == 'fp16' else 'bfloat16'}) "
                "and build with precision 'auto'"
            )
        config.set_flag(flag)
    if hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif hardware_compatibility != "none":
        raise ValueError(
            f"hardware_compatibility must be 'none' or 'ampere_plus', got {hardware_compatibility!r}"
        )
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    Path(plan_path).write_bytes(bytes(serialized))
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(cache.serialize()))
    return time.perf_counter() - start


def build_engines(
    export_dir: str | Path | ExportBundle,
    *,
    graphs: Sequence[str] | None = None,
    precision: str = "auto",
    quantize_left: str | None = None,
    calibration_batches: int = 4,
    workspace_gib: float = 8.0,
    opt_level: int = 3,
    hardware_compatibility: str = "none",
    version_compatible: bool = False,
    device: str = "cuda:0",
) -> EngineManifest:
    """Build every engine of an export for this GPU and TensorRT version; write the manifest.

    Args:
        export_dir: export directory or bundle.
        graphs: graph names (default: all exported graphs).
        precision: see :func:`build_engine`.
        quantize_left: ``None``, ``"int8"`` or ``"fp8"`` for the left brain.
        calibration_batches: synthetic batches used to calibrate activation scales.
        workspace_gib: builder workspace limit.
        opt_level: builder optimisation level.
        hardware_compatibility: ``none`` or ``ampere_plus``.
        version_compatible: version-compatible plans.
        device: the CUDA device whose architecture the engines target.

    Returns:
        The written manifest.

    Raises:
        ValueError: if a graph fails the TensorRT op-support check or an option is invalid.
        ImportError: without TensorRT.
    """
    bundle = export_dir if isinstance(export_dir, ExportBundle) else load_bundle(export_dir)
    if quantize_left not in QUANTIZATIONS:
        raise ValueError(f"quantize_left must be one of {QUANTIZATIONS}, got {quantize_left!r}")
    names = list(graphs or bundle.graphs)
    unknown = [n for n in names if n not in bundle.graphs]
    if unknown:
        raise ValueError(f"graphs {unknown} were not exported (have {list(bundle.graphs)})")
    sources: dict[str, Path] = {n: bundle.graph_path(n) for n in names}
    if quantize_left and "left_brain" in sources:
        from twinbrain_ros.export.quantize import quantize_graph_for_bundle

        sources["left_brain"] = quantize_graph_for_bundle(
            bundle, "left_brain", quantize_left, calibration_batches
        )
    report = check_files(sources.values())
    if not report.ok:
        raise ValueError(report.format())
    trt = import_tensorrt()
    env = runtime_environment(trt.__version__, device)
    out = bundle.directory / ENGINES_DIR / env.engine_dir_name
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "timing.cache"
    entries: dict[str, EngineEntry] = {}
    for name in names:
        plan = out / f"{name}.plan"
        quant = quantize_left if name == "left_brain" else None
        seconds = build_engine(
            sources[name], plan, precision=precision, workspace_gib=workspace_gib, opt_level=opt_level,
            hardware_compatibility=hardware_compatibility, version_compatible=version_compatible,
            timing_cache=cache, trt=trt,
        )  # fmt: skip
        LOG.info("built %s in %.1f s", plan, seconds)
        entries[name] = EngineEntry(
            file=plan.name,
            onnx_sha256=bundle.graphs[name].sha256,
            plan_sha256=sha256_file(plan),
            precision="strongly_typed" if precision == "auto" else precision,
            quantization=quant,
            onnx_file=sources[name].name,
            build_seconds=round(seconds, 1),
        )
    options: dict[str, Any] = {
        "hardware_compatibility": hardware_compatibility,
        "version_compatible": version_compatible,
        "builder": {"workspace_gib": workspace_gib, "opt_level": opt_level, "export_dtype": bundle.dtype},
        "quantized_sources": {n: graph_sha256(p) for n, p in sources.items() if p != bundle.graph_path(n)},
    }
    manifest = manifest_for(out, env, bundle, entries, **options)
    manifest.save()
    return manifest
