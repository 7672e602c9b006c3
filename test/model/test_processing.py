# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the processing pipeline: resize, shared pixel values, prompts, tokens, state, actions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twinbrain_ros.core.embodiment import load_embodiment, parse_embodiment
from twinbrain_ros.core.normalize import Normalizer
from twinbrain_ros.core.types import Observation
from twinbrain_ros.model import modeling as M
from twinbrain_ros.model.configuration import VIEWS_SLOT, preset
from twinbrain_ros.model.convert import placeholder_normalizers, tiny_config
from twinbrain_ros.model.processing import (
    PROCESSOR_NAME,
    RESIZED,
    VIEW_TOKENS,
    VIEWS,
    PatchifyViews,
    ProcessorConfig,
    build_processor,
    build_small_tokenizer,
    chat_prompt,
    load_qwen3_tokenizer,
    load_tokenizer,
    make_image_processor,
    patchify_uniform,
    special_token_ids,
)


@pytest.fixture(scope="module")
def small_tok():
    return build_small_tokenizer()


@pytest.fixture(scope="module")
def qwen_tok():
    try:
        return load_qwen3_tokenizer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def two_camera_embodiment():
    data = load_embodiment("so101").to_dict()
    data["cameras"] = [
        {"name": "front", "topic": "cam/front", "width": 640, "height": 480},
        {"name": "wrist", "topic": "cam/wrist", "width": 320, "height": 240},
    ]
    return parse_embodiment(data)


def observation(emb, instruction="pick up the red cube", colors=None, seed=0):
    rng = np.random.default_rng(seed)
    images = {}
    for i, cam in enumerate(emb.cameras):
        if colors is None:
            images[cam.name] = rng.integers(0, 256, (cam.height, cam.width, 3), dtype=np.uint8)
        else:
            images[cam.name] = np.full((cam.height, cam.width, 3), colors[i], dtype=np.uint8)
    mid = (emb.limits.lower + emb.limits.upper) / 2
    return Observation(
        images=images, state=mid, joint_names=emb.joint_names, instruction=instruction, stamp=1.0
    )


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
def test_processor_config_roundtrip_defaults_and_validation(tmp_path):
    cfg = ProcessorConfig.for_family("qwen3_vl", image_height=192)
    assert cfg.min_pixels == 65536 and cfg.image_mean == (0.5, 0.5, 0.5) and cfg.system_prompt is None
    cfg.save(tmp_path)
    assert (tmp_path / PROCESSOR_NAME).is_file()
    assert ProcessorConfig.load(tmp_path) == cfg
    q25 = ProcessorConfig.for_family("qwen2_5_vl")
    assert q25.system_prompt == "You are a helpful assistant." and q25.image_mean[0] == pytest.approx(
        0.48145466
    )
    with pytest.raises(ValueError, match="unknown ProcessorConfig keys: \\['size'\\]"):
        ProcessorConfig.from_dict({"size": 3})
    with pytest.raises(ValueError, match="min_pixels=9 must be <= max_pixels=4"):
        ProcessorConfig(min_pixels=9, max_pixels=4)
    with pytest.raises(ValueError, match="resample"):
        ProcessorConfig(resample="area")


def test_chunk_lead_defaults_to_zero_roundtrips_and_is_validated(tmp_path):
    assert ProcessorConfig().chunk_lead_s == 0.0
    # A processor.json written before the field existed loads with lead 0 (step 0 at the observation).
    old = ProcessorConfig().to_dict()
    del old["chunk_lead_s"]
    assert ProcessorConfig.from_dict(old).chunk_lead_s == 0.0
    cfg = ProcessorConfig(chunk_lead_s=0.1)
    cfg.save(tmp_path)
    assert ProcessorConfig.load(tmp_path).chunk_lead_s == 0.1
    assert isinstance(ProcessorConfig(chunk_lead_s=1).chunk_lead_s, float)
    for bad in (-0.05, 2.5, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="chunk_lead_s must be a number in \\[0, 2.0\\] s"):
            ProcessorConfig(chunk_lead_s=bad)


# --------------------------------------------------------------------------------------------------
# Tokenizers and prompts
# --------------------------------------------------------------------------------------------------
def test_qwen3_tokenizer_right_tokens_and_prompt_layout(qwen_tok):
    # Spec §10.1 / §11.4: the right tokens take ids len(tokenizer) at the time of adding, in order.
    ids = special_token_ids(qwen_tok)
    assert (ids["propri_token_id"], ids["action_token_id"]) == (151669, 151670)
    assert (ids["image_token_id"], ids["vision_start_token_id"], ids["vision_end_token_id"]) == (
        151655,
        151652,
        151653,
    )
    assert len(qwen_tok) == 151671
    # Our text-only chat layout equals the tokenizer's own (text-only) chat template.
    rendered = qwen_tok.apply_chat_template(
        [{"role": "user", "content": "pick up the cube"}], tokenize=False, add_generation_prompt=True
    )
    assert chat_prompt("pick up the cube", []) == rendered
    cfg = preset("qwen3-vl-4b", mode="reference")
    text = chat_prompt(cfg.format_right_text("pick up the cube"), [64])
    tokens = qwen_tok.convert_ids_to_tokens(qwen_tok(text, add_special_tokens=False).input_ids)
    first = tokens.index("<|action|>")
    # K = 8 queries separated by single spaces: an action block of 2K - 1 = 15 tokens.
    assert tokens[first : first + 15] == ["<|action|>", "Ġ"] * 7 + ["<|action|>"]
    assert tokens.count("<|image_pad|>") == 64 and "<|propri|>" not in tokens


def test_small_tokenizer_specials_roundtrip_and_save(tmp_path, small_tok):
    ids = special_token_ids(small_tok)
    assert (ids["propri_token_id"], ids["action_token_id"]) == (len(small_tok) - 2, len(small_tok) - 1)
    assert len(small_tok) <= 1024 and small_tok.pad_token == "<|endoftext|>"
    text = "Öffne die Schublade 🙂, then pick up the cube"
    assert small_tok.decode(small_tok(text).input_ids) == text  # byte-level: everything encodes
    small_tok.save_pretrained(str(tmp_path / "tok"))
    again = load_tokenizer(tmp_path / "tok")
    assert special_token_ids(again) == ids and len(again) == len(small_tok)
    assert again(text).input_ids == small_tok(text).input_ids


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
def test_pipeline_views_tokens_and_left_padding(small_tok):
    emb = two_camera_embodiment()
    cfg = tiny_config(small_tok, emb)
    proc = build_processor(cfg, small_tok, placeholder_normalizers(emb), emb.camera_names)
    assert [type(s).__name__ for s in proc.input_steps] == [
        "CollectInputs", "ResizeViews", "PatchifyViews", "FormatPrompts", "TokenizePrompts", "NormalizeState",
    ]  # fmt: skip
    obs = [
        observation(emb, "go", colors=(0, 255)),
        observation(emb, "open the top drawer slowly, then close it again", colors=(255, 0)),
    ]
    batch = proc.preprocess(obs)
    # 640x480 and 320x240 views are resized to 224^2, which the processor upscales to 256^2: 16x16
    # patches of 3*2*16*16 values, 64 LLM tokens per view; one shared pixel tensor for both brains.
    assert batch[M.IMAGE_GRID_THW].tolist() == [[1, 16, 16]] * 4
    assert batch[M.PIXEL_VALUES].shape == (4 * 256, 1536) and batch[M.PIXEL_VALUES].dtype == np.float32
    # Views follow the contract's camera order: sample 0 is (black front, white wrist).
    per_view = batch[M.PIXEL_VALUES].reshape(4, 256, 1536).mean(axis=(1, 2))
    np.testing.assert_allclose(per_view, [-1, 1, 1, -1], atol=1e-5)  # (x/255 - 0.5) / 0.5
    image_id = cfg.backbone["image_token_id"]
    for side in ("left", "right"):
        ids, mask = batch[f"{side}.input_ids"], batch[f"{side}.attention_mask"]
        assert ids.dtype == np.int64 and ids.shape == mask.shape and ids.shape[0] == 2
        assert (ids == image_id).sum(axis=1).tolist() == [128, 128]
        np.testing.assert_array_equal(batch[f"{side}.mm_token_type_ids"], ids == image_id)
        # Left padding: the short sample's padding is at the start, both end on the generation prompt.
        assert mask[0, 0] == 0 and mask[1].all() and mask[0, -1] == 1
        assert (ids[:, -1] == ids[0, -1]).all()
    right = batch[M.RIGHT_INPUT_IDS]
    assert ((right == cfg.action_token_id).sum(axis=1) == cfg.num_action_queries).all()
    assert ((right == cfg.propri_token_id).sum(axis=1) == 1).all()
    assert not (batch[M.LEFT_INPUT_IDS] == cfg.action_token_id).any()


def test_images_field_places_the_views_after_the_text(small_tok):
    emb = load_embodiment("so101")
    cfg = dataclasses.replace(
        tiny_config(small_tok, emb),
        right_prompt_template=(
            "Instruction: {instruction}\nState: {propri}\n{images}Action Query: {action_queries}"
        ),
    )
    proc = build_processor(cfg, small_tok, placeholder_normalizers(emb), emb.camera_names)
    batch = proc.preprocess([observation(emb, "touch the red cube")])
    image_id = cfg.backbone["image_token_id"]
    right, left = batch[M.RIGHT_INPUT_IDS][0], batch[M.LEFT_INPUT_IDS][0]
    images = np.flatnonzero(right == image_id)
    assert images.size == 64 and (np.diff(images) == 1).all()
    # Instruction and state come before the views, the action queries after them.
    assert np.flatnonzero(right == cfg.propri_token_id)[0] < images[0]
    assert np.flatnonzero(right == cfg.action_token_id)[0] > images[-1]
    # The left template has no {images}: its views stay first (right after "<|im_start|>user\n").
    left_images = np.flatnonzero(left == image_id)
    assert left_images.size == 64 and left_images[0] < images[0]
    # The slot is reserved: an instruction cannot smuggle it in.
    with pytest.raises(ValueError, match="reserved"):
        proc.preprocess([observation(emb, "go" + VIEWS_SLOT)])


@pytest.mark.parametrize(
    ("size", "pc"),
    [
        (128, ProcessorConfig(min_pixels=4096)),  # kept as it is: the vectorised path
        (224, ProcessorConfig(min_pixels=4096, image_mean=(0.48, 0.46, 0.41), image_std=(0.27, 0.26, 0.28))),
        (224, ProcessorConfig()),  # min_pixels 65536 upscales 224 to 256: the processor's own resize
    ],
)
def test_vectorised_patchify_equals_the_image_processor(small_tok, size, pc):
    emb = load_embodiment("so101")
    ip = make_image_processor(tiny_config(small_tok, emb), pc)
    rng = np.random.default_rng(size)
    views = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    fast = patchify_uniform(views, ip)
    assert (fast is None) == (pc.min_pixels > size * size)
    data = {RESIZED: views, VIEWS: [views[:2], views[2:]]}
    vec = PatchifyViews(ip, 2)(dict(data))
    ref = PatchifyViews(ip, 2, vectorised=False)(dict(data))
    # The same float32 values, bit for bit, in the same patch order.
    np.testing.assert_array_equal(vec[M.PIXEL_VALUES], ref[M.PIXEL_VALUES])
    np.testing.assert_array_equal(vec[M.IMAGE_GRID_THW], ref[M.IMAGE_GRID_THW])
    assert vec[VIEW_TOKENS] == ref[VIEW_TOKENS]
    # Mixed sizes are the processor's job.
    assert patchify_uniform([views[0], views[1][: size // 2]], ip) is None


def test_explicit_resize_bounds_image_tokens(small_tok):
    emb = load_embodiment("so101")
    cfg = tiny_config(small_tok, emb)
    norms = placeholder_normalizers(emb)
    obs = [observation(emb)]
    default = build_processor(cfg, small_tok, norms, emb.camera_names).preprocess(obs)
    assert (default[M.LEFT_INPUT_IDS] == cfg.backbone["image_token_id"]).sum() == 64  # not ~1200 for 640x480
    big = build_processor(
        cfg, small_tok, norms, emb.camera_names, ProcessorConfig(image_height=448, image_width=448)
    ).preprocess(obs)
    assert big[M.IMAGE_GRID_THW].tolist() == [[1, 28, 28]]
    assert (big[M.LEFT_INPUT_IDS] == cfg.backbone["image_token_id"]).sum() == 196


def test_state_normalised_padded_masked_and_actions_unnormalised(small_tok):
    emb = load_embodiment("so101")
    cfg = tiny_config(small_tok, emb)
    norms = placeholder_normalizers(emb)
    proc = build_processor(cfg, small_tok, norms, emb.camera_names)
    state = emb.limits.lower + 0.25 * (emb.limits.upper - emb.limits.lower)
    obs = Observation(
        images=observation(emb).images, state=state, joint_names=emb.joint_names, instruction="go", stamp=0.0
    )
    batch = proc.preprocess([obs])
    s, m = batch[M.STATE], batch[M.STATE_MASK]
    assert s.shape == m.shape == (1, cfg.max_state_dim) and s.dtype == np.float32
    np.testing.assert_allclose(s[0, :6], -0.5, atol=1e-6)  # min_max: 25 % of the range -> -0.5
    assert (s[0, 6:] == 0).all() and m[0, :6].all() and not m[0, 6:].any()
    chunk = np.tile(norms["action"].normalize(state)[None, None], (1, 16, 1))  # (1, T, A)
    np.testing.assert_allclose(proc.postprocess(chunk)[0], np.tile(state, (16, 1)), atol=1e-12)
    bad = Observation(images=obs.images, state=np.full(6, np.nan), joint_names=emb.joint_names,
                      instruction="go", stamp=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="non-finite"):
        proc.preprocess([bad])


def test_per_dim_modes_identity_gripper_passes_through(small_tok):
    emb = load_embodiment("so101")
    stats = placeholder_normalizers(emb)["action"].stats
    action = Normalizer(stats, ("min_max",) * 5 + ("identity",))
    proc = build_processor(
        tiny_config(small_tok, emb), small_tok, {"action": action, "state": action}, emb.camera_names
    )
    out = proc.postprocess(np.full((1, 2, 6), 0.5))
    assert out[0, 0, 5] == 0.5  # identity
    np.testing.assert_allclose(
        out[0, 0, :5], emb.limits.lower[:5] + 0.75 * (emb.limits.upper - emb.limits.lower)[:5]
    )


def test_build_processor_rejects_inconsistent_parts(small_tok):
    emb = load_embodiment("so101")
    cfg = tiny_config(small_tok, emb)
    norms = placeholder_normalizers(emb)
    with pytest.raises(ValueError, match="'state' normaliser is required"):
        build_processor(cfg, small_tok, {"action": norms["action"]}, emb.camera_names)
    wrong = tiny_config(build_small_tokenizer(corpus=["a b c"]), emb)  # other ids
    with pytest.raises(ValueError, match="tokenizer ids disagree"):
        build_processor(wrong, small_tok, norms, emb.camera_names)
    proc = build_processor(cfg, small_tok, norms, emb.camera_names)
    with pytest.raises(ValueError, match="reserved special tokens \\['<\\|action\\|>'\\]"):
        proc.preprocess([observation(emb, instruction="do <|action|> now")])
