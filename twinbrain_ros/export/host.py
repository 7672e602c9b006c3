# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Host-side inputs of the exported graphs, in numpy: everything data-dependent happens here.

The exported graphs (``graphs.py``) have fixed shapes and no data-dependent control flow. What the
PyTorch model computes from the token layout with Python loops, ``.tolist()`` or boolean indexing is
computed here instead, once per call, and fed to the graphs as plain tensors:

* MRoPE position ids (the numpy twin of transformers' ``get_rope_index`` for Qwen3-VL) and the
  interleaved rotary tables (``cos``/``sin``) of each brain;
* the vision tower's rotary tables and position-embedding interpolation taps (constant per profile);
* attention masks (boolean): the left brain's causal mask and the right brain's joint mask, with the
  reference mode's index-aligned rule kept in the *original* indices when we pad to a bucket;
* gather indices that replace ``masked_scatter`` (image features into the token sequence) and the
  boolean extraction of the ``<|action|>`` rows.

It also re-pads a processor batch (left padding, longest in batch) to the profile's fixed text buckets
and validates it against the profile, reporting every problem in one ``ValueError``.

Nothing here imports torch: the ONNX Runtime backend runs with numpy on the host.

Usage:
    spec = HostSpec.from_dict(export_json["host"])
    prepared = prepare_batch(spec, profile, batch)      # batch: numpy arrays under modeling's keys
    prepared.left["input_ids"], prepared.right["joint_mask"], prepared.vision["rot_cos"], ...
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Batch keys (the values of twinbrain_ros.model.modeling's constants; repeated so this module
# needs neither torch nor the model package).
LEFT_INPUT_IDS = "left.input_ids"
LEFT_ATTENTION_MASK = "left.attention_mask"
RIGHT_INPUT_IDS = "right.input_ids"
RIGHT_ATTENTION_MASK = "right.attention_mask"
PIXEL_VALUES = "pixel_values"
IMAGE_GRID_THW = "image_grid_thw"
STATE = "observation.state"
STATE_MASK = "observation.state_mask"


@dataclass(frozen=True)
class HostSpec:
    """Model constants the host needs to build graph inputs (stored in ``export.json``).

    Attributes:
        image_token_id: ``<|image_pad|>`` id.
        action_token_id: ``<|action|>`` id.
        propri_token_id: ``<|propri|>`` id.
        num_action_queries: K.
        index_aligned_mask: reference mode's joint-mask rule.
        state_in_right_brain: native mode (state encoder inside the right graph).
        state_to_expert: the expert reads the padded state.
        max_state_dim: S_max.
        spatial_merge_size: vision merge size m.
        patch_size: vision patch size (pixels).
        temporal_patch_size: vision temporal patch size.
        in_channels: image channels.
        num_grid_per_side: side of the learned vision position table.
        text_inv_freq: (head_dim / 2,) text rotary inverse frequencies.
        text_attention_scaling: rotary post-scaling (1.0 for the default rope).
        mrope_section: (3,) interleaved MRoPE section sizes.
        vision_inv_freq: (vision head_dim / 4,) vision rotary inverse frequencies.
        horizon: action chunk length T.
        action_dim: action dimension A.
        num_steps: Euler steps N of the unrolled expert graph.
        num_timestep_buckets: the expert's time discretisation.
        vision_start_token_id: ``<|vision_start|>`` id (synthetic batches).
        vision_end_token_id: ``<|vision_end|>`` id (synthetic batches).
        vocab_size: text vocabulary size (synthetic batches draw ordinary ids below the specials).
    """

    image_token_id: int
    action_token_id: int
    propri_token_id: int
    num_action_queries: int
    index_aligned_mask: bool
    state_in_right_brain: bool
    state_to_expert: bool
    max_state_dim: int
    spatial_merge_size: int
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    num_grid_per_side: int
    text_inv_freq: tuple[float, ...]
    text_attention_scaling: float
    mrope_section: tuple[int, int, int]
    vision_inv_freq: tuple[float, ...]
    horizon: int
    action_dim: int
    num_steps: int
    num_timestep_buckets: int
    vision_start_token_id: int
    vision_end_token_id: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        for key in ("text_inv_freq", "vision_inv_freq", "mrope_section"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostSpec:
        """Inverse of ``to_dict``."""
        data = dict(data)
        for key in ("text_inv_freq", "vision_inv_freq", "mrope_section"):
            data[key] = tuple(data[key])
        return cls(**data)

    @property
    def patch_dim(self) -> int:
        """Flattened patch width: C * T_p * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def euler_taus(self) -> list[int]:
        """Timestep buckets of the N fixed Euler times ``k / N`` (double precision, as the model does)."""
        n, buckets = self.num_steps, self.num_timestep_buckets
        return [min(int(np.floor(k / n * buckets)), buckets - 1) for k in range(n)]


@dataclass(frozen=True)
class Profile:
    """A deployment profile: every shape of the exported graphs is fixed by it.

    Attributes:
        name: profile name (directory name of its export).
        batch_size: B.
        num_cameras: views per sample V.
        image_height: pixel height each view has when it reaches the vision tower (after the image
            processor's resize; a multiple of ``patch_size * merge``).
        image_width: pixel width likewise.
        left_len: left-brain text bucket L_f (tokens, padding included).
        right_len: right-brain text bucket L_t, counted up to the last ``<|action|>`` (later tokens
            never influence the action queries and are cut on the host).
    """

    name: str
    batch_size: int
    num_cameras: int
    image_height: int
    image_width: int
    left_len: int
    right_len: int

    def __post_init__(self) -> None:
        """Validate; raises ValueError naming the bad values."""
        for key in ("batch_size", "num_cameras", "image_height", "image_width", "left_len", "right_len"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"profile {key} must be a positive int, got {value!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"profile name must be a non-empty name without '/', got {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Inverse of ``to_dict``; unknown keys raise ValueError."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown profile keys: {unknown}")
        return cls(**dict(data))

    def grid(self, spec: HostSpec) -> tuple[int, int, int]:
        """Patch grid (t, h, w) of one view."""
        return (1, self.image_height // spec.patch_size, self.image_width // spec.patch_size)

    def num_images(self) -> int:
        """Images per call: B * V."""
        return self.batch_size * self.num_cameras

    def patches_per_image(self, spec: HostSpec) -> int:
        """Vision patches per view S."""
        _, h, w = self.grid(spec)
        return h * w

    def tokens_per_image(self, spec: HostSpec) -> int:
        """LLM image tokens per view (after the spatial merge)."""
        return self.patches_per_image(spec) // spec.spatial_merge_size**2

    def check(self, spec: HostSpec) -> None:
        """Raise ValueError if the image size does not fit the vision tower's patch/merge grid."""
        unit = spec.patch_size * spec.spatial_merge_size
        if self.image_height % unit or self.image_width % unit:
            raise ValueError(
                f"profile image size {self.image_height}x{self.image_width} must be a multiple of "
                f"patch_size * spatial_merge_size = {unit}"
            )


# --------------------------------------------------------------------------------------------------
# Position ids and rotary tables
# --------------------------------------------------------------------------------------------------
def mrope_position_ids(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    image_grid_thw: np.ndarray | None,
    image_token_id: int,
    spatial_merge_size: int,
) -> np.ndarray:
    """Qwen3-VL MRoPE position ids (numpy twin of transformers' ``get_rope_index``, images only).

    Per sample, over its real tokens: a text run gets ``arange`` positions on all three axes; an image
    run gets ``(t, h, w)`` grid positions offset by the running position, which then advances by
    ``max(h, w)`` merged cells. Pads get position 0.

    Args:
        input_ids: (B, L) token ids.
        attention_mask: (B, L) 1 at real tokens.
        image_grid_thw: (N_images, 3) patch grids in batch order, or None.
        image_token_id: the image-pad token id.
        spatial_merge_size: vision merge size m.

    Returns:
        (3, B, L) int64 positions.

    Raises:
        ValueError: if the image runs and the grids disagree.
    """
    batch, length = input_ids.shape
    out = np.zeros((3, batch, length), dtype=np.int64)
    grids = iter([] if image_grid_thw is None else [tuple(int(v) for v in g) for g in image_grid_thw])
    for b in range(batch):
        valid = attention_mask[b].astype(bool)
        is_image = input_ids[b][valid] == image_token_id
        pieces: list[np.ndarray] = []
        current = 0
        start = 0
        for image, group in itertools.groupby(is_image.tolist()):
            run = len(list(group))
            if not image:
                pieces.append(np.broadcast_to(np.arange(run, dtype=np.int64) + current, (3, run)))
                current += run
            else:
                # One run may hold several consecutive images (no separator): consume grids until full.
                done = 0
                while done < run:
                    try:
                        t, h, w = next(grids)
                    except StopIteration:
                        raise ValueError("more image-token runs than image_grid_thw rows") from None
                    gh, gw = h // spatial_merge_size, w // spatial_merge_size
                    tt, hh, ww = np.meshgrid(
                        np.zeros(t, dtype=np.int64), np.arange(gh), np.arange(gw), indexing="ij"
                    )
                    pos = np.stack([tt, hh, ww]).reshape(3, -1) + current  # (3, t*gh*gw)
                    pieces.append(pos)
                    done += pos.shape[1]
                    current += max(gh, gw)
                if done != run:
                    raise ValueError(f"sample {b}: an image run of {run} tokens does not match the grids")
            start += run
        if pieces:
            out[:, b, valid] = np.concatenate(pieces, axis=1)
    return out


def text_rotary(position_ids: np.ndarray, spec: HostSpec) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved-MRoPE rotary tables of one brain (transformers' Qwen3-VL text rotary embedding).

    Args:
        position_ids: (3, B, L) positions.
        spec: host constants (inverse frequencies, mrope section, scaling).

    Returns:
        ``(cos, sin)``, each (B, L, head_dim) float32.
    """
    inv_freq = np.asarray(spec.text_inv_freq, dtype=np.float32)  # (hd/2,)
    freqs = position_ids.astype(np.float32)[..., None] * inv_freq  # (3, B, L, hd/2)
    thw = freqs[0].copy()
    for axis, offset in ((1, 1), (2, 2)):  # H and W take every third slot of their section
        idx = slice(offset, spec.mrope_section[axis] * 3, 3)
        thw[..., idx] = freqs[axis][..., idx]
    emb = np.concatenate([thw, thw], axis=-1)  # (B, L, hd)
    scale = np.float32(spec.text_attention_scaling)
    return (np.cos(emb) * scale).astype(np.float32), (np.sin(emb) * scale).astype(np.float32)


def vision_patch_coords(grid_h: int, grid_w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/column of each patch in the tower's block-major order (merge blocks of m x m patches).

    Returns:
        ``(rows, cols)``, each (h * w,) int64.
    """
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    shape = (grid_h // merge, merge, grid_w // merge, merge)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return rows.astype(np.int64), cols.astype(np.int64)


def vision_rotary(grid_h: int, grid_w: int, spec: HostSpec) -> tuple[np.ndarray, np.ndarray]:
    """The vision tower's 2-D rotary tables for one view (identical for every view of a profile).

    Returns:
        ``(cos, sin)``, each (S, vision head_dim) float32, S = h * w patches.
    """
    rows, cols = vision_patch_coords(grid_h, grid_w, spec.spatial_merge_size)
    inv_freq = np.asarray(spec.vision_inv_freq, dtype=np.float32)  # (hd/4,)
    fh = rows.astype(np.float32)[:, None] * inv_freq  # (S, hd/4)
    fw = cols.astype(np.float32)[:, None] * inv_freq
    half = np.concatenate([fh, fw], axis=-1)  # (S, hd/2)
    emb = np.concatenate([half, half], axis=-1)  # (S, hd)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def vision_pos_interpolation(grid_h: int, grid_w: int, spec: HostSpec) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (align_corners) taps that resample the learned position table to one view's grid.

    Returns:
        ``(index, weight)``: (S, 4) int64 rows of the flattened table and (S, 4) float32 weights.
    """
    side = spec.num_grid_per_side
    rows, cols = vision_patch_coords(grid_h, grid_w, spec.spatial_merge_size)

    def axis(index: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
        floor = np.floor(src)
        taps = floor.astype(np.int64)[:, None] + np.arange(2)  # (S, 2)
        weights = np.clip(1.0 - np.abs(src[:, None] - taps.astype(np.float32)), 0.0, None)
        return np.clip(taps, 0, side - 1), weights.astype(np.float32)

    h_taps, h_w = axis(rows, grid_h)
    w_taps, w_w = axis(cols, grid_w)
    index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weight = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
    return index, weight.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _vision_tables(grid: tuple[int, int, int], spec: HostSpec) -> tuple[np.ndarray, ...]:
    # Constant per profile: computed once and shared by every call (callers must not modify them).
    _, gh, gw = grid
    return (*vision_rotary(gh, gw, spec), *vision_pos_interpolation(gh, gw, spec))


# --------------------------------------------------------------------------------------------------
# Masks and gather indices
# --------------------------------------------------------------------------------------------------
def causal_self_mask(valid: np.ndarray) -> np.ndarray:
    """Causal mask over one brain's tokens, pad keys excluded, every query sees itself.

    Args:
        valid: (B, L) bool.

    Returns:
        (B, 1, L, L) bool (True = may attend).
    """
    length = valid.shape[1]
    causal = np.tril(np.ones((length, length), dtype=bool))  # key j <= query i
    allowed = causal[None] & valid[:, None, :]
    allowed |= np.eye(length, dtype=bool)[None]
    return allowed[:, None]


def joint_mask(
    left_valid: np.ndarray,
    right_valid: np.ndarray,
    *,
    index_aligned: bool,
    left_shift: int = 0,
    right_shift: int = 0,
) -> np.ndarray:
    """The right brain's mask over ``[left keys ; right keys]``.

    Args:
        left_valid: (B, L_f) bool.
        right_valid: (B, L_t) bool.
        index_aligned: reference mode: right query ``i`` sees left key ``j`` only if ``j <= i`` in the
            indices of the batch as the processor padded it.
        left_shift: extra left pads the host added to the left sequence (subtracted from ``j``).
        right_shift: extra left pads the host added to the right sequence (subtracted from ``i``).

    Returns:
        (B, 1, L_t, L_f + L_t) bool.
    """
    left_len, right_len = left_valid.shape[1], right_valid.shape[1]
    left_block = np.broadcast_to(left_valid[:, None, :], (left_valid.shape[0], right_len, left_len))
    if index_aligned:
        i = np.arange(right_len)[:, None] - right_shift
        j = np.arange(left_len)[None, :] - left_shift
        left_block = left_block & (j <= i)[None]
    right_block = causal_self_mask(right_valid)[:, 0]
    return np.concatenate([left_block, right_block], axis=-1)[:, None]


def image_index(input_ids: np.ndarray, image_token_id: int, num_tokens: int) -> np.ndarray:
    """Row of ``image_embeds`` that each position takes (``num_tokens`` = the zero row for text).

    Image tokens are filled in row-major order of the (B, L) layout, as ``masked_scatter`` does.

    Returns:
        (B, L) int64.

    Raises:
        ValueError: if the layout holds a different number of image tokens.
    """
    visual = input_ids == image_token_id
    count = int(visual.sum())
    if count != num_tokens:
        raise ValueError(f"{count} image tokens in the sequence but {num_tokens} image features")
    index = np.full(input_ids.shape, num_tokens, dtype=np.int64)
    index[visual] = np.arange(num_tokens, dtype=np.int64)
    return index


def left_pad(array: np.ndarray, length: int, value: int = 0) -> np.ndarray:
    """Left-pad the last axis of a (B, L) array to ``length``."""
    extra = length - array.shape[-1]
    return np.pad(array, ((0, 0), (extra, 0)), constant_values=value) if extra else array


# --------------------------------------------------------------------------------------------------
# Whole batch
# --------------------------------------------------------------------------------------------------
@dataclass
class PreparedBatch:
    """Graph inputs for one call, by graph (names are the graphs' input names).

    Attributes:
        vision: inputs of the vision graphs (``pixel_values`` and the per-profile tables).
        left: inputs of the left-brain graph, except the image features.
        right: inputs of the right-brain graph, except image features and left K/V.
        expert: inputs of the expert graphs, except the action queries and noise.
        left_shift: extra left pads added to the left sequence.
        right_shift: extra left pads added to the right sequence.
    """

    vision: dict[str, np.ndarray] = field(default_factory=dict)
    left: dict[str, np.ndarray] = field(default_factory=dict)
    right: dict[str, np.ndarray] = field(default_factory=dict)
    expert: dict[str, np.ndarray] = field(default_factory=dict)
    left_shift: int = 0
    right_shift: int = 0


def _np(value: Any) -> np.ndarray:
    # Accept torch tensors without importing torch.
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _padded_state(
    batch: Mapping[str, Any], spec: HostSpec, problems: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    state = _np(batch[STATE]).astype(np.float32)
    if state.ndim == 3 and state.shape[1] == 1:
        state = state[:, 0]  # (B, 1, S) -> (B, S)
    mask = batch.get(STATE_MASK)
    mask = np.ones_like(state) if mask is None else _np(mask).reshape(state.shape).astype(np.float32)
    width = state.shape[-1]
    if width > spec.max_state_dim:
        problems.append(f"state has {width} dims > max_state_dim={spec.max_state_dim}")
        return state, mask
    pad = ((0, 0), (0, spec.max_state_dim - width))
    return np.pad(state, pad), np.pad(mask, pad)


def prepare_batch(spec: HostSpec, profile: Profile, batch: Mapping[str, Any]) -> PreparedBatch:
    """Turn a processor batch into the graphs' fixed-shape inputs.

    Args:
        spec: host constants of the export.
        profile: the deployment profile the graphs were exported for.
        batch: arrays (numpy or torch) under modeling's keys, left-padded to the batch's longest.

    Returns:
        The per-graph inputs.

    Raises:
        ValueError: listing every way the batch does not fit the profile.
    """
    problems: list[str] = []
    required = [
        LEFT_INPUT_IDS,
        LEFT_ATTENTION_MASK,
        RIGHT_INPUT_IDS,
        RIGHT_ATTENTION_MASK,
        PIXEL_VALUES,
        IMAGE_GRID_THW,
    ]
    if spec.state_in_right_brain or spec.state_to_expert:
        required.append(STATE)
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"batch misses keys {missing}")
    left_ids = _np(batch[LEFT_INPUT_IDS]).astype(np.int64)
    left_valid = _np(batch[LEFT_ATTENTION_MASK]).astype(bool)
    right_ids = _np(batch[RIGHT_INPUT_IDS]).astype(np.int64)
    right_valid = _np(batch[RIGHT_ATTENTION_MASK]).astype(bool)
    pixels = _np(batch[PIXEL_VALUES]).astype(np.float32)
    grids = _np(batch[IMAGE_GRID_THW]).astype(np.int64).reshape(-1, 3)

    b = profile.batch_size
    for name, arr in (("left.input_ids", left_ids), ("right.input_ids", right_ids)):
        if arr.ndim != 2 or arr.shape[0] != b:
            problems.append(f"{name} has shape {arr.shape}; the profile needs batch size {b}")
    if left_ids.shape != left_valid.shape or right_ids.shape != right_valid.shape:
        problems.append("input_ids and attention_mask shapes differ")
    grid = profile.grid(spec)
    n_img = profile.num_images()
    if grids.shape[0] != n_img:
        problems.append(
            f"{grids.shape[0]} images in the batch; profile {profile.name!r} takes {profile.num_cameras} "
            f"camera(s) x batch {b} = {n_img}"
        )
    elif not (grids == np.asarray(grid)).all():
        problems.append(
            f"image grids {sorted({tuple(g) for g in grids.tolist()})} differ from the profile's {grid} "
            f"({profile.image_height}x{profile.image_width} px)"
        )
    patches = n_img * profile.patches_per_image(spec)
    if pixels.shape != (patches, spec.patch_dim):
        problems.append(f"pixel_values shape {pixels.shape} != profile's ({patches}, {spec.patch_dim})")
    if problems:
        raise ValueError(f"batch does not fit export profile {profile.name!r}: " + "; ".join(problems))

    # Right sequence: cut after the last <|action|> (left padding aligns it across samples).
    is_action = right_ids == spec.action_token_id
    counts = is_action.sum(axis=1)
    if (counts != spec.num_action_queries).any():
        problems.append(
            f"each sample needs {spec.num_action_queries} <|action|> tokens, got {counts.tolist()}"
        )
    n_propri = (right_ids == spec.propri_token_id).sum(axis=1)
    if spec.state_in_right_brain and (n_propri != 1).any():
        problems.append(f"each sample needs exactly one <|propri|> token, got {n_propri.tolist()}")
    if not spec.state_in_right_brain and n_propri.any():
        problems.append("reference mode never puts <|propri|> into the right prompt")
    if problems:
        raise ValueError(f"batch does not fit export profile {profile.name!r}: " + "; ".join(problems))
    positions = np.arange(right_ids.shape[1])
    needed = np.where(is_action | (right_ids == spec.image_token_id), positions, -1)
    keep = int(needed.max()) + 1
    right_ids, right_valid = right_ids[:, :keep], right_valid[:, :keep]

    if left_ids.shape[1] > profile.left_len:
        problems.append(
            f"left prompt has {left_ids.shape[1]} tokens > the profile's left_len={profile.left_len} "
            "(shorter instruction, or export a profile with a longer text bucket)"
        )
    if keep > profile.right_len:
        problems.append(
            f"right prompt has {keep} tokens up to its last <|action|> > the profile's "
            f"right_len={profile.right_len} (shorter instruction, or export a longer text bucket)"
        )
    if problems:
        raise ValueError(f"batch does not fit export profile {profile.name!r}: " + "; ".join(problems))

    left_shift = profile.left_len - left_ids.shape[1]
    right_shift = profile.right_len - keep
    left_ids, right_ids = left_pad(left_ids, profile.left_len), left_pad(right_ids, profile.right_len)
    left_valid = left_pad(left_valid, profile.left_len, value=False)
    right_valid = left_pad(right_valid, profile.right_len, value=False)

    n_tokens = n_img * profile.tokens_per_image(spec)
    out = PreparedBatch(left_shift=left_shift, right_shift=right_shift)
    try:
        left_image_index = image_index(left_ids, spec.image_token_id, n_tokens)
        right_image_index = image_index(right_ids, spec.image_token_id, n_tokens)
        left_pos = mrope_position_ids(
            left_ids, left_valid, grids, spec.image_token_id, spec.spatial_merge_size
        )
        right_pos = mrope_position_ids(
            right_ids, right_valid, grids, spec.image_token_id, spec.spatial_merge_size
        )
    except ValueError as exc:
        raise ValueError(f"batch does not fit export profile {profile.name!r}: {exc}") from None

    rot_cos, rot_sin, pos_index, pos_weight = _vision_tables(grid, spec)
    out.vision = {
        "pixel_values": pixels,
        "rot_cos": rot_cos,
        "rot_sin": rot_sin,
        "pos_index": pos_index,
        "pos_weight": pos_weight,
    }
    cos, sin = text_rotary(left_pos, spec)
    out.left = {
        "input_ids": left_ids,
        "image_index": left_image_index,
        "attn_mask": causal_self_mask(left_valid),
        "cos": cos,
        "sin": sin,
    }
    cos, sin = text_rotary(right_pos, spec)
    action_index = np.stack([np.flatnonzero(row == spec.action_token_id) for row in right_ids]).astype(
        np.int64
    )
    out.right = {
        "input_ids": right_ids,
        "image_index": right_image_index,
        "joint_mask": joint_mask(
            left_valid,
            right_valid,
            index_aligned=spec.index_aligned_mask,
            left_shift=left_shift,
            right_shift=right_shift,
        ),
        "cos": cos,
        "sin": sin,
        "action_index": action_index,
    }
    if spec.state_in_right_brain or spec.state_to_expert:
        state, mask = _padded_state(batch, spec, problems)
        if problems:
            raise ValueError(f"batch does not fit export profile {profile.name!r}: " + "; ".join(problems))
        if spec.state_in_right_brain:
            out.right["state"], out.right["state_mask"] = state, mask
        if spec.state_to_expert:
            out.expert["state"] = state * mask
    return out
