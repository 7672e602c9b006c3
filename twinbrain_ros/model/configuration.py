# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""TwinBrainConfig: the one typed, frozen configuration of a TwinBrainVLA model.

It holds values and validation only. Every setting has one source of truth; unknown keys and
unimplemented options raise ``ValueError`` at construction or load (the reference implementation
silently ignored several of its keys, see ``shared/design/reference_model.md`` §7 item 7).

The backbone (Qwen3-VL or Qwen2.5-VL) is described by the transformers config as a plain dict
(``text_config``, ``vision_config`` and the vision token ids), so ``config.json`` is self-contained
and the backbone is rebuilt with transformers' own config classes.

Usage:
    cfg = preset("tiny")                                  # random-init test/demo size
    cfg = preset("qwen3-vl-4b", mode="reference")         # real dims, authors' checkpoint layout
    cfg.save("models/my-model")                           # writes config.json
    cfg = TwinBrainConfig.load("models/my-model")
    text = cfg.format_right_text("pick up the cube")      # prompt text before the chat template
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinbrain_ros.model.action_expert import ActionExpertConfig

CONFIG_NAME = "config.json"
CONFIG_TYPE = "twinbrain"
CONFIG_VERSION = 1

BACKBONE_FAMILIES = ("qwen3_vl", "qwen2_5_vl")
MODES = ("native", "reference")
# Only kernels that accept an arbitrary 4-D additive mask: the right brain's joint mask is not causal.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

PROPRI_TOKEN = "<|propri|>"
ACTION_TOKEN = "<|action|>"

# Prompt templates (text before the chat template). Fields: {instruction}, {propri}, {action_queries},
# and optionally {images}: where the camera views go (absent: before the text, as Qwen-VL's chat template
# puts them). Text before the views lets image tokens attend to the instruction in every layer.
# Native mode follows decision (a); reference mode is the authors' posterior template (§1.3).
NATIVE_RIGHT_TEMPLATE = "Instruction: {instruction}\nState: {propri}\nAction Query: {action_queries}"
REFERENCE_RIGHT_TEMPLATE = "Instruction: {instruction}\nAction Query: {action_queries}"
LEFT_TEMPLATE = "{instruction}"
# What {images} becomes in a formatted text: a slot that chat_prompt replaces with the views. It holds
# NUL characters, so no tokenizer vocabulary and no validated instruction contains it.
VIEWS_SLOT = "\x00views\x00"

_VISION_ID_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def hf_config_class(family: str):
    """The transformers config class of a backbone family (imported lazily)."""
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig
    raise ValueError(f"backbone_family must be one of {BACKBONE_FAMILIES}, got {family!r}")


@dataclass(frozen=True)
class TwinBrainConfig:
    """Configuration of a TwinBrainVLA model (two VLM brains + flow-matching action expert).

    Attributes:
        backbone: the transformers config of one brain as a dict: ``text_config`` and
            ``vision_config`` dicts plus the vision token ids (``image_token_id`` ...). Required.
        backbone_family: ``"qwen3_vl"`` or ``"qwen2_5_vl"``.
        mode: ``"native"`` (state token in the right brain, DeepStack, prefix attention over all
            valid left keys) or ``"reference"`` (the authors' released layout: no DeepStack, state only
            to the action expert, index-aligned joint mask). Never inferred from weights.
        num_action_queries: K, the number of ``<|action|>`` query tokens in the right prompt.
        max_state_dim: the state is zero-padded to this many dims (with a validity mask). The same
            padded vector feeds the right brain's state encoder (native mode) and, when
            ``action_expert.use_state_token`` is set, the expert (whose ``state_dim`` must match).
        state_encoder_hidden: hidden width of the state MLP (native mode).
        propri_token_id: id of ``<|propri|>`` in the right tokenizer (from the tokenizer, never a literal).
        action_token_id: id of ``<|action|>`` in the right tokenizer.
        right_vocab_size: rows of the right brain's embedding table; ``None`` means the left size. The
            authors' checkpoints have 2 extra rows (151938).
        deepstack: DeepStack injection in both brains. ``None`` resolves per mode (native: on where the
            backbone has it; reference: off). An explicit value must agree with the mode.
        select_layer: decoder layer whose (final-normed) right-brain output conditions the expert;
            -1 is the last. Layers past it are not computed.
        attn_implementation: ``"sdpa"`` or ``"eager"`` (the authors' kernel), for both brains.
        left_prompt_template: left-brain text template (raw instruction by default).
        right_prompt_template: right-brain text template; ``None`` resolves per mode. Either template
            may hold ``{images}`` once (native mode): the views go there instead of before the text.
        action_expert: the flow-matching action expert's config. Whether the expert also gets the
            state is its ``use_state_token`` (one source of truth; see ``state_to_expert``).
    """

    backbone: dict[str, Any]
    backbone_family: str = "qwen3_vl"
    mode: str = "native"
    num_action_queries: int = 8
    max_state_dim: int = 32
    state_encoder_hidden: int = 1024
    propri_token_id: int = 151669
    action_token_id: int = 151670
    right_vocab_size: int | None = None
    deepstack: bool | None = None
    select_layer: int = -1
    attn_implementation: str = "sdpa"
    left_prompt_template: str = LEFT_TEMPLATE
    right_prompt_template: str | None = None
    action_expert: ActionExpertConfig = field(default_factory=ActionExpertConfig.dit_b)

    def __post_init__(self) -> None:
        """Resolve mode-dependent defaults and validate; raises ValueError naming the bad values."""
        if self.backbone_family not in BACKBONE_FAMILIES:
            raise ValueError(
                f"backbone_family must be one of {BACKBONE_FAMILIES}, got {self.backbone_family!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )
        if not isinstance(self.action_expert, ActionExpertConfig):
            raise ValueError(
                f"action_expert must be an ActionExpertConfig, got {type(self.action_expert).__name__}"
            )
        # Own a private copy so that callers mutating their dict cannot change a frozen config.
        object.__setattr__(self, "backbone", copy.deepcopy(dict(self.backbone)))
        reference = self.mode == "reference"

        # --- derived, per-mode settings -------------------------------------------------------------
        # Qwen3-VL's vision config defaults to three DeepStack layers when the key is absent.
        has_deepstack = self.backbone_family == "qwen3_vl" and bool(
            self.backbone.get("vision_config", {}).get("deepstack_visual_indexes", True)
        )
        want_deepstack = has_deepstack and not reference
        if self.deepstack is None:
            object.__setattr__(self, "deepstack", want_deepstack)
        elif self.deepstack != want_deepstack:
            raise ValueError(
                f"deepstack={self.deepstack} contradicts mode={self.mode!r} with backbone_family="
                f"{self.backbone_family!r} (deepstack_visual_indexes present: {has_deepstack}); "
                f"expected {want_deepstack}"
            )
        if self.right_prompt_template is None:
            object.__setattr__(
                self,
                "right_prompt_template",
                REFERENCE_RIGHT_TEMPLATE if reference else NATIVE_RIGHT_TEMPLATE,
            )

        # --- scalars -------------------------------------------------------------------------------
        for name in ("num_action_queries", "max_state_dim", "state_encoder_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

        # --- backbone ------------------------------------------------------------------------------
        text = self.backbone.get("text_config")
        vision = self.backbone.get("vision_config")
        if not isinstance(text, dict) or not isinstance(vision, dict):
            raise ValueError(
                "backbone must hold 'text_config' and 'vision_config' dicts, got keys "
                f"{sorted(self.backbone)}"
            )
        hidden = text.get("hidden_size")
        heads = text.get("num_attention_heads")
        kv_heads = text.get("num_key_value_heads", heads)
        layers = text.get("num_hidden_layers")
        vocab = text.get("vocab_size")
        for name, value in (
            ("hidden_size", hidden),
            ("num_attention_heads", heads),
            ("num_hidden_layers", layers),
            ("vocab_size", vocab),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"backbone text_config.{name} must be a positive int, got {value!r}")
        if heads % kv_heads != 0:
            raise ValueError(
                f"num_attention_heads={heads} must be a multiple of num_key_value_heads={kv_heads} (GQA)"
            )
        head_dim = text.get("head_dim") or hidden // heads
        if self.backbone_family == "qwen2_5_vl" and head_dim * heads != hidden:
            raise ValueError(
                f"qwen2_5_vl needs hidden_size={hidden} == num_attention_heads={heads} * head_dim"
            )
        rope = text.get("rope_parameters") or {}
        section = rope.get("mrope_section")
        if section is not None and sum(section) != head_dim // 2:
            raise ValueError(f"mrope_section={section} must sum to head_dim/2={head_dim // 2}")
        if vision.get("out_hidden_size") != hidden:
            raise ValueError(
                f"vision_config.out_hidden_size={vision.get('out_hidden_size')} must equal "
                f"text hidden_size={hidden}"
            )
        right_vocab = self.right_vocab_size if self.right_vocab_size is not None else vocab
        if right_vocab < vocab:
            raise ValueError(f"right_vocab_size={right_vocab} must be >= the left vocab_size={vocab}")
        vision_ids = {
            k: self.backbone.get(k, getattr(hf_config_class(self.backbone_family), k, None))
            for k in _VISION_ID_KEYS
        }
        for name, value in vision_ids.items():
            if not isinstance(value, int) or not 0 <= value < vocab:
                raise ValueError(f"backbone {name}={value!r} must be in [0, vocab_size={vocab})")
        for name in ("propri_token_id", "action_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < right_vocab:
                raise ValueError(f"{name}={value!r} must be in [0, right vocab size={right_vocab})")
        if self.propri_token_id == self.action_token_id:
            raise ValueError(
                f"propri_token_id and action_token_id must differ, both are {self.action_token_id}"
            )
        clash = {k: v for k, v in vision_ids.items() if v in (self.propri_token_id, self.action_token_id)}
        if clash:
            raise ValueError(
                f"propri/action token ids ({self.propri_token_id}, {self.action_token_id}) clash "
                f"with vision token ids {clash}"
            )
        if not -layers <= self.select_layer < layers:
            raise ValueError(f"select_layer={self.select_layer} out of range for num_hidden_layers={layers}")

        # --- prompts -------------------------------------------------------------------------------
        tpl = self.right_prompt_template
        if tpl.count("{action_queries}") != 1 or tpl.count("{instruction}") != 1:
            raise ValueError(
                f"right_prompt_template must contain {{instruction}} and {{action_queries}} once: {tpl!r}"
            )
        if reference and "{propri}" in tpl:
            raise ValueError(
                f"reference mode feeds the state only to the expert; template has {{propri}}: {tpl!r}"
            )
        if not reference and tpl.count("{propri}") != 1:
            raise ValueError(f"native mode needs exactly one {{propri}} in right_prompt_template: {tpl!r}")
        if self.left_prompt_template.count("{instruction}") != 1:
            raise ValueError(
                f"left_prompt_template must contain {{instruction}} once: {self.left_prompt_template!r}"
            )
        for name in ("left_prompt_template", "right_prompt_template"):
            text = getattr(self, name)
            if text.count("{images}") > 1:
                raise ValueError(f"{name} may contain {{images}} at most once: {text!r}")
        if reference and "{images}" in tpl:
            raise ValueError(
                f"reference mode puts the views first, as the authors do; template has {{images}}: {tpl!r}"
            )

        # --- action expert -------------------------------------------------------------------------
        expert = self.action_expert
        if expert.cond_dim != hidden:
            raise ValueError(
                f"action_expert.cond_dim={expert.cond_dim} must equal the brain hidden_size={hidden}"
            )
        if expert.use_state_token and expert.state_dim != self.max_state_dim:
            raise ValueError(
                f"action_expert.state_dim={expert.state_dim} must equal max_state_dim={self.max_state_dim} "
                "(both read the same padded state vector)"
            )

    # ----------------------------------------------------------------------------------------------
    # Derived values
    # ----------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """Hidden size of both brains' language models."""
        return int(self.backbone["text_config"]["hidden_size"])

    @property
    def num_layers(self) -> int:
        """Decoder layers per brain."""
        return int(self.backbone["text_config"]["num_hidden_layers"])

    @property
    def num_used_layers(self) -> int:
        """Decoder layers that actually run: those up to and including ``select_layer``."""
        return self.select_layer % self.num_layers + 1

    @property
    def state_to_expert(self) -> bool:
        """Whether the action expert also receives the state (its own state token)."""
        return self.action_expert.use_state_token

    @property
    def state_in_right_brain(self) -> bool:
        """Native mode puts the state token into the right brain's prompt; reference mode never does."""
        return self.mode == "native"

    @property
    def index_aligned_mask(self) -> bool:
        """Reference mode: right query i sees left key j only if j <= i (padded indices)."""
        return self.mode == "reference"

    def hf_config(self, *, right: bool = False):
        """Build the transformers config of one brain.

        Args:
            right: build the right brain's config (``right_vocab_size`` rows in the embedding).

        Returns:
            A ``Qwen3VLConfig`` or ``Qwen2_5_VLConfig``. DeepStack is removed from the vision tower when
            it is off, so its mergers are neither built nor run.
        """
        cfg = copy.deepcopy(self.backbone)
        if right and self.right_vocab_size is not None:
            cfg["text_config"]["vocab_size"] = self.right_vocab_size
        if self.backbone_family == "qwen3_vl" and not self.deepstack:
            cfg["vision_config"]["deepstack_visual_indexes"] = []
        # The kwarg propagates to the text and vision sub-configs.
        hf = hf_config_class(self.backbone_family)(**cfg, attn_implementation=self.attn_implementation)
        return hf

    def format_left_text(self, instruction: str) -> str:
        """The left brain's text (before the chat template)."""
        fields = {"instruction": instruction}
        if "{images}" in self.left_prompt_template:
            fields["images"] = VIEWS_SLOT
        return self.left_prompt_template.format(**fields)

    def format_right_text(self, instruction: str) -> str:
        """The right brain's text: instruction, state placeholder (native), K action queries."""
        queries = " ".join([ACTION_TOKEN] * self.num_action_queries)
        fields = {"instruction": instruction, "action_queries": queries}
        if "{propri}" in self.right_prompt_template:
            fields["propri"] = PROPRI_TOKEN
        if "{images}" in self.right_prompt_template:
            fields["images"] = VIEWS_SLOT
        return self.right_prompt_template.format(**fields)

    # ----------------------------------------------------------------------------------------------
    # Serialisation
    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (resolved values; the expert config nested)."""
        out: dict[str, Any] = {"type": CONFIG_TYPE, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if f.name == "action_expert" else copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwinBrainConfig:
        """Inverse of ``to_dict``; unknown keys or a wrong type/version raise ValueError."""
        data = dict(data)
        kind, version = data.pop("type", CONFIG_TYPE), data.pop("version", CONFIG_VERSION)
        if kind != CONFIG_TYPE or version != CONFIG_VERSION:
            raise ValueError(
                f"not a {CONFIG_TYPE} v{CONFIG_VERSION} config: type={kind!r}, version={version!r}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TwinBrainConfig keys: {unknown}")
        if "action_expert" in data:
            data["action_expert"] = ActionExpertConfig.from_dict(data["action_expert"])
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` into ``directory`` (created if needed) and return its path."""
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TwinBrainConfig:
        """Read ``config.json`` from ``directory``."""
        return cls.from_dict(json.loads((Path(directory) / CONFIG_NAME).read_text()))


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------
def _qwen3_vl_backbone(
    *,
    vocab,
    hidden,
    inter,
    layers,
    heads,
    kv_heads,
    head_dim,
    theta,
    section,
    v_depth,
    v_hidden,
    v_inter,
    v_heads,
    v_pos,
    deepstack,
) -> dict[str, Any]:
    return {
        "text_config": {
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": theta,
                "mrope_section": section,
                "mrope_interleaved": True,
            },
        },
        "vision_config": {
            "depth": v_depth,
            "hidden_size": v_hidden,
            "intermediate_size": v_inter,
            "num_heads": v_heads,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": v_pos,
            "deepstack_visual_indexes": list(deepstack),
            "hidden_act": "gelu_pytorch_tanh",
        },
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
    }


PRESETS = ("tiny", "small150m", "qwen3-vl-4b")


def preset(
    name: str,
    *,
    mode: str = "native",
    vocab_size: int | None = None,
    token_ids: dict[str, int] | None = None,
    **fields: Any,
) -> TwinBrainConfig:
    """A named configuration.

    Args:
        name: ``"tiny"`` (environment.md test config, 2 layers, hidden 128, vocab 1024),
            ``"small150m"`` (~150 M parameters in total, real Qwen vocabulary) or ``"qwen3-vl-4b"``
            (the real Qwen3-VL-4B-Instruct dimensions, ~9 B in total).
        mode: ``"native"`` or ``"reference"``.
        vocab_size: override the text vocabulary size (e.g. to fit a tokenizer).
        token_ids: override token ids; keys ``image_token_id``, ``video_token_id``,
            ``vision_start_token_id``, ``vision_end_token_id`` (backbone) and ``propri_token_id``,
            ``action_token_id``.
        **fields: any other ``TwinBrainConfig`` field.

    Returns:
        The validated config.
    """
    if name == "tiny":
        backbone = _qwen3_vl_backbone(
            vocab=1024,
            hidden=128,
            inter=256,
            layers=2,
            heads=4,
            kv_heads=2,
            head_dim=32,
            theta=1e4,
            section=[6, 5, 5],
            v_depth=2,
            v_hidden=64,
            v_inter=128,
            v_heads=4,
            v_pos=256,
            deepstack=[0, 1],
        )
        # A small tokenizer's specials sit at the top of a 1024 vocabulary.
        backbone.update(
            image_token_id=1019, video_token_id=1020, vision_start_token_id=1017, vision_end_token_id=1018
        )
        base = {
            "propri_token_id": 1021,
            "action_token_id": 1022,
            "max_state_dim": 16,
            "state_encoder_hidden": 64,
            "num_action_queries": 4,
            "action_expert": ActionExpertConfig.tiny(cond_dim=128, action_dim=6, horizon=8),
        }
    elif name == "small150m":
        backbone = _qwen3_vl_backbone(
            vocab=151936,
            hidden=256,
            inter=1536,
            layers=12,
            heads=4,
            kv_heads=2,
            head_dim=64,
            theta=5e6,
            section=[12, 10, 10],
            v_depth=8,
            v_hidden=256,
            v_inter=1024,
            v_heads=4,
            v_pos=2304,
            deepstack=[1, 3, 5],
        )
        # ~150 M in total, of which the two (real-vocabulary) embedding tables are ~78 M.
        base = {
            "propri_token_id": 151669,
            "action_token_id": 151670,
            "max_state_dim": 32,
            "state_encoder_hidden": 512,
            "num_action_queries": 8,
            "action_expert": ActionExpertConfig.small(cond_dim=256, action_dim=7, horizon=16, num_layers=8),
        }
    elif name == "qwen3-vl-4b":
        backbone = _qwen3_vl_backbone(
            vocab=151936,
            hidden=2560,
            inter=9728,
            layers=36,
            heads=32,
            kv_heads=8,
            head_dim=128,
            theta=5e6,
            section=[24, 20, 20],
            v_depth=24,
            v_hidden=1024,
            v_inter=4096,
            v_heads=16,
            v_pos=2304,
            deepstack=[5, 11, 17],
        )
        # Released checkpoints resize the right embedding to 151938 rows; the used ids are len(tokenizer).
        base = {
            "propri_token_id": 151669,
            "action_token_id": 151670,
            "right_vocab_size": 151938,
            "max_state_dim": 32,
            "state_encoder_hidden": 1024,
            "num_action_queries": 8,
            "action_expert": ActionExpertConfig.dit_b(action_dim=7, horizon=16),
        }
    else:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    if vocab_size is not None:
        backbone["text_config"]["vocab_size"] = vocab_size
    for key, value in (token_ids or {}).items():
        if key in _VISION_ID_KEYS:
            backbone[key] = value
        elif key in ("propri_token_id", "action_token_id"):
            base[key] = value
        else:
            raise ValueError(f"unknown token id key {key!r}")
    base.update(fields)
    return TwinBrainConfig(backbone=backbone, backbone_family="qwen3_vl", mode=mode, **base)
