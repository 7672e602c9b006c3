# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Fixtures for export tests: tiny random models (right brain perturbed so the brains differ) and one
ONNX export per session, with a profile small enough for CI (B=2, 2 cameras, 64x64 views)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from twinbrain_ros.export.graphs import host_spec_for  # noqa: E402
from twinbrain_ros.export.host import Profile  # noqa: E402
from twinbrain_ros.export.inputs import prompt_lengths  # noqa: E402
from twinbrain_ros.model import TwinBrainModel, preset  # noqa: E402
from twinbrain_ros.model.action_expert import ActionExpertConfig  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def make_model(mode: str = "native", seed: int = 0) -> TwinBrainModel:
    """A tiny model; reference mode gets an expert state token (the state reaches only the expert)."""
    torch.manual_seed(seed)
    fields = {}
    if mode == "reference":
        fields["action_expert"] = ActionExpertConfig.tiny(
            cond_dim=128, action_dim=6, horizon=8, use_state_token=True, state_dim=16
        )
    model = TwinBrainModel(preset("tiny", mode=mode, **fields)).eval()
    with torch.no_grad():  # a trained right brain differs from the left: catch any mix-up
        for p in model.brains.right.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def make_profile(
    model, name: str = "ci", batch: int = 2, cameras: int = 2, size: int = 64, extra: int = 3
) -> Profile:
    spec = host_spec_for(model)
    left, right = prompt_lengths(spec, Profile("d", batch, cameras, size, size, 1, 1), 10)
    return Profile(name, batch, cameras, size, size, left + extra, right + extra + 1)


@pytest.fixture(scope="session")
def native_model():
    return make_model("native")


@pytest.fixture(scope="session")
def native_export(native_model, tmp_path_factory):
    from twinbrain_ros.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("export-native")
    return export_onnx(native_model, make_profile(native_model), out)


@pytest.fixture(scope="session")
def reference_model():
    return make_model("reference", seed=1)


@pytest.fixture(scope="session")
def reference_export(reference_model, tmp_path_factory):
    from twinbrain_ros.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("export-reference")
    graphs = ["vision_left", "vision_right", "left_brain", "right_brain", "expert_loop"]
    return export_onnx(
        reference_model, make_profile(reference_model, "ref", batch=2, cameras=1), out, graphs=graphs
    )


class ExportHelpers:
    """Namespace handed to tests (test modules cannot import a conftest by name reliably)."""

    make_model = staticmethod(make_model)
    make_profile = staticmethod(make_profile)


@pytest.fixture(scope="session")
def xh() -> type[ExportHelpers]:
    """Model and profile builders."""
    return ExportHelpers
