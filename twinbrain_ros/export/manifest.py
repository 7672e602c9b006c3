# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Engine manifests: what a directory of TensorRT engines was built for, and refusing a mismatch.

TensorRT plans only run on the GPU architecture and TensorRT version they were built with (unless
built hardware- or version-compatible). Engines therefore live per architecture and version inside an
export directory, each set with a ``manifest.json``::

    <export>/engines/sm_90-trt10.15.1/manifest.json
    <export>/engines/sm_90-trt10.15.1/left_brain.plan ...

The manifest records the TensorRT version, the GPU (name, compute capability), compatibility options,
per engine its precision, quantisation, the sha256 of the ONNX graph it was built from and of the plan,
and the export's ``model_id``. :meth:`EngineManifest.check` compares it with the running machine and the
export and raises :class:`EngineMismatchError` listing every reason, with the command to rebuild.

This module does not import TensorRT; callers pass the version string.

Usage:
    env = runtime_environment(trt.__version__, torch.device("cuda:0"))
    manifest = load_manifest(find_engine_dir(export_dir, env))
    manifest.check(env, bundle)          # raises EngineMismatchError
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
ENGINES_DIR = "engines"
HARDWARE_COMPAT = ("none", "ampere_plus", "same_compute_capability")


class EngineMismatchError(ValueError):
    """Engines that must not run here; ``problems`` lists why."""

    def __init__(self, where: str | Path, problems: list[str], hint: str = "") -> None:
        self.where = str(where)
        self.problems = list(problems)
        lines = "\n  - ".join(self.problems)
        text = f"refusing TensorRT engines in {self.where}:\n  - {lines}"
        if hint:
            text += f"\n{hint}"
        super().__init__(text)


@dataclass(frozen=True)
class RuntimeEnvironment:
    """The machine an engine would run on.

    Attributes:
        tensorrt_version: e.g. ``"10.15.1"``.
        compute_capability: (major, minor) of the GPU.
        gpu_name: device name.
    """

    tensorrt_version: str
    compute_capability: tuple[int, int]
    gpu_name: str = ""

    @property
    def sm(self) -> str:
        """``sm_XY``."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def engine_dir_name(self) -> str:
        """``sm_XY-trt<version>``: the engine directory name for this machine."""
        return f"{self.sm}-trt{self.tensorrt_version}"


def runtime_environment(tensorrt_version: str, device: Any = None) -> RuntimeEnvironment:
    """The current machine (torch must see a CUDA device)."""
    import torch

    dev = torch.device(device if device is not None else "cuda")
    major, minor = torch.cuda.get_device_capability(dev)
    return RuntimeEnvironment(
        str(tensorrt_version), (int(major), int(minor)), torch.cuda.get_device_name(dev)
    )


@dataclass(frozen=True)
class EngineEntry:
    """One engine file.

    Attributes:
        file: plan file name.
        onnx_sha256: hash of the ONNX graph it was built from (``export.json``'s).
        plan_sha256: hash of the plan.
        precision: compute precision (``fp32``, ``fp16``, ``bf16``; ``strongly_typed`` when the graph's
            types decide).
        quantization: ``None``, ``"int8"`` or ``"fp8"`` (weights and activations, Q/DQ in the graph).
        onnx_file: the graph file actually built (a quantised copy, e.g. ``left_brain.int8.onnx``).
        build_seconds: how long the build took.
    """

    file: str
    onnx_sha256: str
    plan_sha256: str
    precision: str
    quantization: str | None = None
    onnx_file: str = ""
    build_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class EngineManifest:
    """The ``manifest.json`` of one engine directory.

    Attributes:
        directory: the engine directory.
        tensorrt_version: TensorRT version the plans were built with.
        compute_capability: GPU compute capability at build.
        gpu_name: GPU name at build.
        model_id: the export's ``model_id``.
        profile: the export profile's name.
        engines: graph name -> entry.
        hardware_compatibility: ``none`` (same SM only) or ``ampere_plus`` (any sm_80+).
        version_compatible: built with TensorRT's version-compatible flag.
        meta: other recorded settings (workspace, optimisation level, time).
    """

    directory: Path
    tensorrt_version: str
    compute_capability: tuple[int, int]
    gpu_name: str
    model_id: str
    profile: str
    engines: dict[str, EngineEntry]
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sm(self) -> str:
        """``sm_XY`` of the build GPU."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def to_dict(self) -> dict[str, Any]:
        """The ``manifest.json`` content."""
        return {
            "format": MANIFEST_FORMAT,
            "tensorrt_version": self.tensorrt_version,
            "gpu": {
                "name": self.gpu_name,
                "sm": self.sm,
                "compute_capability": list(self.compute_capability),
            },
            "hardware_compatibility": self.hardware_compatibility,
            "version_compatible": self.version_compatible,
            "model_id": self.model_id,
            "profile": self.profile,
            "engines": {k: e.to_dict() for k, e in self.engines.items()},
            **self.meta,
        }

    def save(self) -> Path:
        """Write ``manifest.json`` into the directory."""
        path = self.directory / MANIFEST_FILE
        self.meta.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def problems(self, env: RuntimeEnvironment, bundle=None, verify_plans: bool = True) -> list[str]:
        """Every reason these engines must not run on ``env`` for ``bundle`` (empty: fine).

        Args:
            env: the running machine.
            bundle: the export the engines should belong to (``ExportBundle``), or None.
            verify_plans: re-hash the plan files (detects truncated or swapped files).
        """
        out: list[str] = []
        built, here = _version_tuple(self.tensorrt_version), _version_tuple(env.tensorrt_version)
        if self.version_compatible:
            if built[:1] != here[:1] or here < built:
                out.append(
                    f"built version-compatible with TensorRT {self.tensorrt_version}; runs on the same major "
                    f"version at or above it, this machine has TensorRT {env.tensorrt_version}"
                )
        elif self.tensorrt_version != env.tensorrt_version:
            out.append(
                f"built with TensorRT {self.tensorrt_version}, "
                f"this machine has TensorRT {env.tensorrt_version} "
                "(plans are tied to the exact TensorRT version)"
            )
        cc_built, cc_here = tuple(self.compute_capability), tuple(env.compute_capability)
        if self.hardware_compatibility == "ampere_plus":
            if cc_here < (8, 0):
                out.append(
                    f"built Ampere-plus compatible, this GPU is {env.sm} ({env.gpu_name}), older than sm_80"
                )
        elif cc_built != cc_here:
            out.append(
                f"built for {self.sm} ({self.gpu_name or 'unknown GPU'}), this GPU is {env.sm} "
                f"({env.gpu_name or 'unknown'}); plans are tied to the GPU architecture"
            )
        if bundle is not None:
            if self.model_id != bundle.model_id:
                out.append(
                    f"built from export model_id {self.model_id}, the export here is {bundle.model_id}"
                )
            if self.profile != bundle.profile.name:
                out.append(
                    f"built for profile {self.profile!r}, the export is profile {bundle.profile.name!r}"
                )
            for name, entry in self.engines.items():
                graph = bundle.graphs.get(name)
                if graph is None:
                    out.append(f"engine {name} has no graph in the export")
                elif graph.sha256 != entry.onnx_sha256:
                    out.append(f"engine {name} was built from another {graph.file} (graph hash differs)")
        for name, entry in self.engines.items():
            plan = self.directory / entry.file
            if not plan.is_file():
                out.append(f"engine {name}: {entry.file} is missing")
            elif verify_plans:
                from twinbrain_ros.export.onnx_export import sha256_file

                if sha256_file(plan) != entry.plan_sha256:
                    out.append(f"engine {name}: {entry.file} does not match its recorded hash")
        return out

    def check(self, env: RuntimeEnvironment, bundle=None, verify_plans: bool = True) -> None:
        """Raise :class:`EngineMismatchError` when :meth:`problems` finds any."""
        problems = self.problems(env, bundle, verify_plans)
        if problems:
            export = bundle.directory if bundle is not None else self.directory.parent.parent
            raise EngineMismatchError(
                self.directory,
                problems,
                hint=f"rebuild them on this machine: twinbrain export --engine --export-dir {export}",
            )


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def load_manifest(directory: str | Path) -> EngineManifest:
    """Read an engine directory's manifest.

    Raises:
        EngineMismatchError: if the manifest is missing or unreadable.
    """
    root = Path(directory)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise EngineMismatchError(
            root, [f"{MANIFEST_FILE} is missing: these plans cannot be matched to a GPU"]
        )
    try:
        data = json.loads(path.read_text())
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r}, this code reads {MANIFEST_FORMAT}")
        known = {"format", "tensorrt_version", "gpu", "hardware_compatibility", "version_compatible",
                 "model_id", "profile", "engines"}  # fmt: skip
        return EngineManifest(
            directory=root,
            tensorrt_version=str(data["tensorrt_version"]),
            compute_capability=tuple(int(v) for v in data["gpu"]["compute_capability"]),
            gpu_name=str(data["gpu"].get("name", "")),
            model_id=str(data["model_id"]),
            profile=str(data["profile"]),
            engines={k: EngineEntry(**v) for k, v in data["engines"].items()},
            hardware_compatibility=str(data.get("hardware_compatibility", "none")),
            version_compatible=bool(data.get("version_compatible", False)),
            meta={k: v for k, v in data.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise EngineMismatchError(root, [f"unreadable {MANIFEST_FILE}: {exc}"]) from None


def find_engine_dir(export_dir: str | Path, env: RuntimeEnvironment) -> Path:
    """The engine directory of ``export_dir`` for this machine.

    Prefers ``engines/<sm>-trt<version>``; otherwise any directory whose manifest accepts ``env``
    (a hardware- or version-compatible build).

    Raises:
        EngineMismatchError: naming the engine sets that exist and why none fits.
    """
    root = Path(export_dir) / ENGINES_DIR
    exact = root / env.engine_dir_name
    if (exact / MANIFEST_FILE).is_file():
        return exact
    reasons = []
    for cand in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        try:
            manifest = load_manifest(cand)
        except EngineMismatchError as exc:
            reasons.append(f"{cand.name}: {exc.problems[0]}")
            continue
        problems = manifest.problems(env, verify_plans=False)
        if not problems:
            return cand
        reasons.append(f"{cand.name}: " + "; ".join(problems))
    if not reasons:
        reasons.append(f"no engines in {root}")
    raise EngineMismatchError(
        root,
        [f"no engines for {env.engine_dir_name} ({env.gpu_name or 'this GPU'})", *reasons],
        hint=f"build them on this machine: twinbrain export --engine --export-dir {Path(export_dir)}",
    )


def manifest_for(
    directory: Path, env: RuntimeEnvironment, bundle, engines: Mapping[str, EngineEntry], **options: Any
) -> EngineManifest:
    """A manifest for freshly built engines (``options``: compatibility flags and settings)."""
    return EngineManifest(
        directory=Path(directory),
        tensorrt_version=env.tensorrt_version,
        compute_capability=env.compute_capability,
        gpu_name=env.gpu_name,
        model_id=bundle.model_id,
        profile=bundle.profile.name,
        engines=dict(engines),
        hardware_compatibility=str(options.pop("hardware_compatibility", "none")),
        version_compatible=bool(options.pop("version_compatible", False)),
        meta=dict(options),
    )
