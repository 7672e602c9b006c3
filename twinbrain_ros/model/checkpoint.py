# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Save and load a TwinBrain checkpoint directory; safetensors only, validated as a whole.

Layout (``models/<name>/``)::

    config.json          TwinBrainConfig (mode native | reference, backbone, sizes)
    model.safetensors    all weights; its metadata key "twinbrain" holds a sorted JSON object with
                         the format version, name, mode, backbone family, source and the left-brain
                         fingerprint (sha256 over the left brain's tensors)
    norm_stats.json      "action" (and "state" when the model reads a state) statistics + modes
    embodiment.yaml      the embodiment contract the model was trained for
    tokenizer/           the right brain's tokenizer (with <|propri|> and <|action|>)
    processor.json       image/prompt processing settings (optional; backbone defaults if absent)

Weights are read with ``safetensors`` only: nothing is ever unpickled, and a directory that holds only
``pytorch_model.bin`` / ``*.pt`` is refused with a message. :func:`load_checkpoint` checks everything
(files, config, contract, statistics, tokenizer ids, tensor names, shapes and dtypes, the fingerprint,
and the consistency between them) and raises one :class:`CheckpointError` listing every problem.
:func:`save_checkpoint` runs the same consistency checks before writing and writes atomically.

Usage:
    save_checkpoint("models/demo", model, tokenizer=tok, normalizers=norms, embodiment=emb)
    ckpt = load_checkpoint("models/demo", device="cpu")      # ckpt.model, ckpt.tokenizer, ...
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from twinbrain_ros.core.embodiment import Embodiment, parse_embodiment
from twinbrain_ros.core.normalize import Normalizer, load_normalizers, save_norm_stats
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.model.configuration import CONFIG_NAME, TwinBrainConfig
from twinbrain_ros.model.modeling import TwinBrainModel
from twinbrain_ros.model.processing import (
    PROCESSOR_NAME,
    RIGHT_BRAIN_TOKENS,
    ProcessorConfig,
    load_tokenizer,
    special_token_ids,
)

MODEL_FILE = "model.safetensors"
NORM_STATS_FILE = "norm_stats.json"
EMBODIMENT_FILE = "embodiment.yaml"
TOKENIZER_DIR = "tokenizer"
REQUIRED_FILES = (CONFIG_NAME, MODEL_FILE, NORM_STATS_FILE, EMBODIMENT_FILE, TOKENIZER_DIR)
LEFT_PREFIX = "brains.left."
FORMAT_VERSION = "1"
# Our metadata is one sorted JSON object under one safetensors metadata key: safetensors writes its
# metadata map in arbitrary order, so several keys would make identical checkpoints differ in bytes.
META_KEY = "twinbrain"
META_FORMAT = "format_version"
META_NAME = "name"
META_MODE = "mode"
META_FAMILY = "backbone_family"
META_FINGERPRINT = "left_fingerprint"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_LIST_LIMIT = 12  # names listed per problem; the count is always given

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


class CheckpointError(ValidationError):
    """A checkpoint directory is unusable; ``problems`` lists every reason found."""

    def __init__(self, directory: str | Path, problems: list[str]):
        self.directory = str(directory)
        super().__init__(problems)
        self.args = (f"invalid checkpoint {self.directory}:\n  - " + "\n  - ".join(self.problems),)

    def __str__(self) -> str:
        """All problems, one per line."""
        return self.args[0]


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: the directory.
        config: the model config.
        embodiment: the embodiment contract the model was trained for.
        normalizers: ``"action"`` (and ``"state"``) normalisers.
        tokenizer: the right brain's tokenizer.
        processor_config: image/prompt processing settings.
        metadata: the checkpoint metadata (format version, name, mode, fingerprint, source, ...).
        model: the model (on the requested device and dtype), or None when weights were not loaded.
    """

    path: Path
    config: TwinBrainConfig
    embodiment: Embodiment
    normalizers: dict[str, Normalizer]
    tokenizer: Any
    processor_config: ProcessorConfig
    metadata: dict[str, str] = field(default_factory=dict)
    model: TwinBrainModel | None = None

    @property
    def name(self) -> str:
        """The checkpoint's name (recorded at save time; the directory name otherwise)."""
        return self.metadata.get(META_NAME) or self.path.name


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """A torch dtype from a name; None means float32 on CPU and bfloat16 on a GPU."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")


@torch.no_grad()
def cast_model(model: TwinBrainModel, dtype: torch.dtype) -> TwinBrainModel:
    """Cast the brains and the state encoder's parameters to ``dtype``; keep the action expert in fp32.

    Only parameters are cast: float buffers (the rotary ``inv_freq`` tables) stay float32, as
    transformers keeps them, because position angles lose precision in bf16. The expert stays float32
    because the reference runs the head under fp32 autocast and the Euler state accumulates.
    """
    for name, module in model.named_modules():
        if name.startswith("action_expert"):
            continue
        for pname, param in module.named_parameters(recurse=False):
            if param.dtype != dtype and param.is_floating_point():
                setattr(module, pname, torch.nn.Parameter(param.to(dtype), requires_grad=param.requires_grad))
    return model


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def left_fingerprint(state_dict: Mapping[str, torch.Tensor], prefix: str = LEFT_PREFIX) -> str:
    """Sha256 over the left brain's tensors (name, dtype, shape and bytes, in name order).

    Args:
        state_dict: a full TwinBrainModel state dict (keys under ``prefix`` are hashed).
        prefix: the left brain's key prefix.

    Returns:
        ``"sha256:<hex>"``. Equal fingerprints mean bit-identical left weights.

    Raises:
        ValueError: if no key has the prefix.
    """
    names = sorted(k for k in state_dict if k.startswith(prefix))
    if not names:
        raise ValueError(f"no tensors under {prefix!r} to fingerprint")
    digest = hashlib.sha256()
    for name in names:
        tensor = state_dict[name]
        digest.update(f"{name[len(prefix) :]}|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return "sha256:" + digest.hexdigest()


def _short(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    more = f", ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    return f"{len(names)}: [{shown}{more}]"


def consistency_problems(
    config: TwinBrainConfig,
    embodiment: Embodiment,
    normalizers: Mapping[str, Normalizer],
    tokenizer: Any,
) -> list[str]:
    """Every inconsistency between the config, the contract, the statistics and the tokenizer.

    Returns:
        Problem messages (empty when consistent), each naming both sides.
    """
    problems = []
    expert = config.action_expert
    joints = embodiment.num_joints
    if expert.action_dim != joints:
        problems.append(
            f"config action_expert.action_dim={expert.action_dim} but embodiment '{embodiment.name}' has "
            f"{joints} joints"
        )
    if expert.horizon != embodiment.action.horizon:
        problems.append(
            f"config action_expert.horizon={expert.horizon} but embodiment '{embodiment.name}' "
            f"action.horizon={embodiment.action.horizon}"
        )
    if not embodiment.cameras:
        problems.append(f"embodiment '{embodiment.name}' has no cameras; the model needs at least one view")
    action = normalizers.get("action")
    if action is None:
        problems.append(f"{NORM_STATS_FILE} has no 'action' entry (has {sorted(normalizers)})")
    elif action.dim != expert.action_dim:
        problems.append(
            f"{NORM_STATS_FILE} 'action' has {action.dim} dims but action_dim={expert.action_dim}"
        )
    if config.state_in_right_brain or config.state_to_expert:
        state = normalizers.get("state")
        if state is None:
            problems.append(f"the model reads a state but {NORM_STATS_FILE} has no 'state' entry")
        elif state.dim != joints:
            problems.append(
                f"{NORM_STATS_FILE} 'state' has {state.dim} dims but embodiment '{embodiment.name}' has "
                f"{joints} joints"
            )
        if joints > config.max_state_dim:
            problems.append(f"embodiment has {joints} joints > config max_state_dim={config.max_state_dim}")
    if tokenizer is not None:
        problems.extend(_tokenizer_problems(config, tokenizer))
    return problems


def _tokenizer_problems(config: TwinBrainConfig, tokenizer: Any) -> list[str]:
    problems = []
    if tokenizer.pad_token is None:
        problems.append("tokenizer has no pad token")
    try:
        ids = special_token_ids(tokenizer)
    except ValueError as exc:
        return [*problems, str(exc)]
    expected = {
        **{
            k: config.backbone.get(k)
            for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id")
        },
        "propri_token_id": config.propri_token_id,
        "action_token_id": config.action_token_id,
    }
    for key, want in expected.items():
        if want is not None and ids[key] != want:
            problems.append(f"tokenizer {key}={ids[key]} but config.json has {want}")
    vocab = tokenizer.get_vocab()
    left_vocab = int(config.backbone["text_config"]["vocab_size"])
    right_vocab = config.right_vocab_size or left_vocab
    base_ids = [i for t, i in vocab.items() if t not in RIGHT_BRAIN_TOKENS]
    if base_ids and max(base_ids) >= left_vocab:
        problems.append(f"tokenizer ids reach {max(base_ids)} >= the left brain's vocab_size={left_vocab}")
    if max(vocab.values()) >= right_vocab:
        problems.append(
            f"tokenizer ids reach {max(vocab.values())} >= the right brain's vocab size={right_vocab}"
        )
    return problems


def _expected_shapes(config: TwinBrainConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
    with torch.device("meta"):
        model = TwinBrainModel(config)
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------------
def save_checkpoint(
    directory: str | Path,
    model: TwinBrainModel,
    *,
    tokenizer: Any,
    normalizers: Mapping[str, Normalizer],
    embodiment: Embodiment,
    processor_config: ProcessorConfig | None = None,
    name: str | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint directory (atomically: a reader never sees a half-written one).

    Args:
        directory: target, e.g. ``models/my-model``.
        model: the model; its weights are saved in their current dtype.
        tokenizer: the right brain's tokenizer.
        normalizers: ``"action"`` and, when the model reads a state, ``"state"``.
        embodiment: the contract the model is trained for.
        processor_config: processing settings (the backbone family's defaults when None).
        name: the checkpoint's name (default: the directory name).
        metadata: extra string metadata (e.g. ``source``), stored with the standard entries.
        overwrite: replace an existing directory.

    Returns:
        The directory.

    Raises:
        CheckpointError: if the parts are inconsistent (nothing is written).
        FileExistsError: if the directory exists and ``overwrite`` is False.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    config = model.config
    problems = consistency_problems(config, embodiment, normalizers, tokenizer)
    if problems:
        raise CheckpointError(out, problems)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    processor_config = processor_config or ProcessorConfig.for_family(config.backbone_family)

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        META_FORMAT: FORMAT_VERSION,
        META_NAME: name or out.name,
        META_MODE: config.mode,
        META_FAMILY: config.backbone_family,
        META_FINGERPRINT: left_fingerprint(state),
    }
    for key, value in (metadata or {}).items():
        meta.setdefault(str(key), str(value))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # Tied or aliased tensors would share storage, which safetensors refuses: give each its own copy.
        seen: set[int] = set()
        for key, tensor in state.items():
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen and tensor.numel():
                state[key] = tensor.clone()
            seen.add(ptr)
        save_file(state, str(tmp / MODEL_FILE), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        config.save(tmp)
        save_norm_stats(tmp / NORM_STATS_FILE, dict(normalizers))
        (tmp / EMBODIMENT_FILE).write_text(embodiment.to_yaml(), encoding="utf-8")
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        processor_config.save(tmp)
        # Temporary-file writers (mkstemp/mkdtemp) create owner-only modes; a checkpoint is read by
        # other users too (e.g. the policy node's service account).
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------
def _check_files(root: Path, problems: list[str]) -> None:
    for fname in REQUIRED_FILES:
        path = root / fname
        if fname == TOKENIZER_DIR:
            if not path.is_dir():
                problems.append(f"missing {TOKENIZER_DIR}/ directory")
            elif not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
                problems.append(f"{TOKENIZER_DIR}/ has neither tokenizer.json nor tokenizer_config.json")
        elif not path.is_file():
            msg = f"missing {fname}"
            if fname == MODEL_FILE:
                pickles = sorted(p.name for p in root.iterdir() if p.suffix in _PICKLE_SUFFIXES)
                if pickles:
                    msg += (
                        f" (found {pickles}: pickle-based weights are never loaded; convert them to "
                        "safetensors in a trusted environment, e.g. safetensors.torch.save_file)"
                    )
            problems.append(msg)


def _read_weights(
    path: Path,
    config: TwinBrainConfig | None,
    problems: list[str],
    *,
    read_tensors: bool,
    verify_fingerprint: bool,
) -> tuple[dict[str, str], dict[str, torch.Tensor] | None]:
    """Validate the safetensors file; returns its metadata and (when asked and valid) its CPU tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            keys = list(f.keys())
            shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in keys}
    except Exception as exc:  # noqa: BLE001 - any parse error means an unreadable file
        problems.append(f"{MODEL_FILE} is not a readable safetensors file: {exc}")
        return {}, None
    try:
        metadata = json.loads(raw.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        problems.append(f"{MODEL_FILE} metadata '{META_KEY}' is not a JSON object")
        metadata = {}
    if metadata.get(META_FORMAT) != FORMAT_VERSION:
        problems.append(
            f"{MODEL_FILE} metadata {META_FORMAT}={metadata.get(META_FORMAT)!r}, expected {FORMAT_VERSION!r} "
            "(not written by twinbrain_ros' save_checkpoint?)"
        )
    if config is None:
        return metadata, None
    if metadata.get(META_MODE) not in (None, config.mode):
        problems.append(
            f"{MODEL_FILE} metadata mode={metadata[META_MODE]!r} but config.json mode={config.mode!r}"
        )
    n_before = len(problems)
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing:
        problems.append(f"{MODEL_FILE} is missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"{MODEL_FILE} has unexpected keys {_short(unexpected)}")
    wrong = [
        f"{k} {shapes[k][0]} != {tuple(expected[k][0])}"
        for k in sorted(set(shapes) & set(expected))
        if shapes[k][0] != tuple(expected[k][0])
    ]
    if wrong:
        problems.append(f"{MODEL_FILE} has tensors of the wrong shape {_short(wrong)}")
    not_float = sorted(k for k, (_, dt) in shapes.items() if k in expected and not dt.startswith(("F", "BF")))
    if not_float:
        problems.append(f"{MODEL_FILE} has non-float tensors {_short(not_float)}")
    recorded = metadata.get(META_FINGERPRINT)
    if not recorded:
        problems.append(f"{MODEL_FILE} metadata has no {META_FINGERPRINT}")
    if len(problems) > n_before or not (read_tensors or verify_fingerprint):
        return metadata, None
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # noqa: BLE001 - truncated or corrupted data section
        problems.append(f"{MODEL_FILE}: tensor data cannot be read: {exc}")
        return metadata, None
    if verify_fingerprint:
        actual = left_fingerprint(tensors)
        if actual != recorded:
            problems.append(
                f"left-brain fingerprint mismatch: metadata {recorded[:23]}... but the weights hash to "
                f"{actual[:23]}... (left weights were modified after saving)"
            )
    return metadata, tensors


def load_checkpoint(
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    load_weights: bool = True,
    verify_fingerprint: bool = True,
) -> Checkpoint:
    """Load and validate a checkpoint directory.

    Args:
        directory: the checkpoint directory.
        device: where the model goes.
        dtype: the brains' dtype (None: float32 on CPU, bfloat16 on GPU); the expert stays float32.
        load_weights: build the model and load the weights (False: validate names/shapes only and
            return ``model=None``, e.g. for another runtime).
        verify_fingerprint: recompute the left-brain fingerprint and compare it with the metadata.

    Returns:
        The checkpoint.

    Raises:
        CheckpointError: listing every problem found.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(root, [f"{root} is not a directory"])
    problems: list[str] = []
    _check_files(root, problems)

    config = embodiment = tokenizer = None
    normalizers: dict[str, Normalizer] = {}
    processor_config = None
    if (root / CONFIG_NAME).is_file():
        try:
            config = TwinBrainConfig.load(root)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            problems.append(f"{CONFIG_NAME}: {exc}")
    if (root / EMBODIMENT_FILE).is_file():
        try:
            embodiment = parse_embodiment(
                yaml.safe_load((root / EMBODIMENT_FILE).read_text(encoding="utf-8")),
                source=str(root / EMBODIMENT_FILE),
            )
        except ValidationError as exc:
            problems.extend(exc.problems)
        except yaml.YAMLError as exc:
            problems.append(f"{EMBODIMENT_FILE} is not valid YAML: {exc}")
    if (root / NORM_STATS_FILE).is_file():
        try:
            normalizers = load_normalizers(root / NORM_STATS_FILE)
        except ValueError as exc:
            problems.append(f"{NORM_STATS_FILE}: {exc}")
    if (root / TOKENIZER_DIR).is_dir():
        try:
            # The saved tokenizer already holds the right brain's tokens; do not add them silently.
            tokenizer = load_tokenizer(root / TOKENIZER_DIR, add_right_tokens=False)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a broken directory
            problems.append(f"{TOKENIZER_DIR}/ cannot be loaded: {exc}")
    if (root / PROCESSOR_NAME).is_file():
        try:
            processor_config = ProcessorConfig.load(root)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            problems.append(f"{PROCESSOR_NAME}: {exc}")
    if config is not None and embodiment is not None:
        problems.extend(consistency_problems(config, embodiment, normalizers, tokenizer))
    elif config is not None and tokenizer is not None:
        problems.extend(_tokenizer_problems(config, tokenizer))

    metadata: dict[str, str] = {}
    tensors = None
    if (root / MODEL_FILE).is_file():
        metadata, tensors = _read_weights(
            root / MODEL_FILE,
            config,
            problems,
            read_tensors=load_weights,
            verify_fingerprint=verify_fingerprint,
        )
    if problems:
        raise CheckpointError(root, problems)

    model = None
    if load_weights:
        target = resolve_dtype(dtype, device)
        with torch.device(device):
            model = TwinBrainModel(config)
        model.load_state_dict(tensors, strict=True)
        del tensors
        cast_model(model, target)
        model.eval()
    return Checkpoint(
        path=root,
        config=config,
        embodiment=embodiment,
        normalizers=normalizers,
        tokenizer=tokenizer,
        processor_config=processor_config or ProcessorConfig.for_family(config.backbone_family),
        metadata=metadata,
        model=model,
    )
