# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Tests of the checkpoint tooling: init from a Hugging Face directory, the reference converter, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.normalize import Normalizer
from twinbrain_ros.model import cli
from twinbrain_ros.model.checkpoint import load_checkpoint
from twinbrain_ros.model.configuration import preset
from twinbrain_ros.model.convert import (
    EXPERT_PRESETS,
    REF_ALIAS,
    REF_LEFT,
    REF_RIGHT,
    ConversionError,
    build_model,
    convert_reference,
    hf_to_brain_key,
    init_from_hf,
    make_tiny_checkpoint,
    placeholder_normalizers,
    reference_statistics,
    sincos_2d,
    smooth_vision_positions,
    tiny_config,
    tiny_qwen2_5_backbone,
    to_reference_state_dict,
)
from twinbrain_ros.model.processing import build_small_tokenizer, special_token_ids
from twinbrain_ros.policy import Policy, fake_observation

EMB = load_embodiment("so101")
EMBED = "model.language_model.embed_tokens.weight"


def base_ids(tok) -> dict[str, int]:
    return special_token_ids(tok, right=False)


def save_hf(directory, hf_config, family: str, tok, min_pixels: int | None = None):
    """A tiny Hugging Face model directory as save_pretrained writes it (+ tokenizer, preprocessor)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cls = Qwen3VLForConditionalGeneration if family == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    cls(hf_config).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    if min_pixels is not None:
        patch = hf_config.vision_config.patch_size
        Qwen2VLImageProcessorPil(
            patch_size=patch, min_pixels=min_pixels, max_pixels=16777216
        ).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def base_tok():
    return build_small_tokenizer(add_right_tokens=False)


@pytest.fixture(scope="module")
def qwen3_hf(tmp_path_factory, base_tok):
    hf = preset("tiny", token_ids=base_ids(base_tok)).hf_config()
    return save_hf(tmp_path_factory.mktemp("hf") / "qwen3", hf, "qwen3_vl", base_tok, min_pixels=50176)


def assert_brains_from_backbone(ckpt, hf_weights, n_real):
    sd = ckpt.model.state_dict()
    ids = [ckpt.config.propri_token_id, ckpt.config.action_token_id]
    checked = 0
    for hf_key, value in hf_weights.items():
        key = hf_to_brain_key(
            hf_key
        )  # e.g. the Qwen2.5-VL layout model.layers.* -> model.language_model.layers.*
        if key is None:
            continue
        assert torch.equal(sd[f"brains.left.{key}"], value), key
        if key != EMBED:
            assert torch.equal(sd[f"brains.right.{key}"], value), key
        checked += 1
    assert checked == len([k for k in sd if k.startswith("brains.left.")])
    # The right brain's new rows are the mean of the real tokens' rows (not of the padding rows).
    right, left = sd[f"brains.right.{EMBED}"], sd[f"brains.left.{EMBED}"]
    mean = left[:n_real].mean(dim=0)
    for tid in ids:
        torch.testing.assert_close(right[tid], mean)
    others = torch.ones(left.shape[0], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(right[: left.shape[0]][others], left[others])


# --------------------------------------------------------------------------------------------------
# init_from_hf
# --------------------------------------------------------------------------------------------------
def test_init_from_hf_qwen3(tmp_path, qwen3_hf, base_tok):
    out = init_from_hf(qwen3_hf, tmp_path / "tb", embodiment="so101", expert="tiny", num_action_queries=4)
    ckpt = load_checkpoint(out)
    cfg = ckpt.config
    assert cfg.mode == "native" and cfg.backbone_family == "qwen3_vl" and cfg.deepstack
    assert cfg.hidden_size == 128 and cfg.action_expert.action_dim == 6 and cfg.action_expert.horizon == 16
    assert (cfg.propri_token_id, cfg.action_token_id) == (len(base_tok), len(base_tok) + 1)
    assert ckpt.processor_config.min_pixels == 50176  # read from preprocessor_config.json
    assert ckpt.metadata["norm_stats"] == "placeholder (joint limits)"
    assert_brains_from_backbone(ckpt, load_file(str(qwen3_hf / "model.safetensors")), len(base_tok))
    chunk = Policy.load(out).infer(fake_observation(EMB), seed=0)
    assert chunk.positions.shape == (16, 6)


def test_init_from_hf_qwen2_5_legacy_sharded_layout(tmp_path, base_tok):
    from twinbrain_ros.model.configuration import hf_config_class

    hf = hf_config_class("qwen2_5_vl")(**tiny_qwen2_5_backbone(base_ids(base_tok)))
    src = save_hf(tmp_path / "q25", hf, "qwen2_5_vl", base_tok)
    weights = load_file(str(src / "model.safetensors"))
    # transformers writes Qwen2.5-VL in its original layout (model.layers.*, visual.*); make sure of
    # it, and split the weights over two shards with an index, as large checkpoints come.
    legacy = {}
    for key, value in weights.items():
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        legacy[key] = value
    assert "model.embed_tokens.weight" in legacy and any(k.startswith("visual.") for k in legacy)
    weights = legacy
    keys = sorted(legacy)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for fname, names in shards.items():
        save_file({k: legacy[k] for k in names}, str(src / fname))
    index = {"weight_map": {k: f for f, names in shards.items() for k in names}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "model.safetensors").unlink()

    out = init_from_hf(
        src, tmp_path / "tb25", embodiment=EMB, mode="reference", expert="tiny", max_state_dim=8
    )
    ckpt = load_checkpoint(out)
    assert ckpt.config.backbone_family == "qwen2_5_vl" and ckpt.config.mode == "reference"
    assert ckpt.processor_config.system_prompt == "You are a helpful assistant."
    assert_brains_from_backbone(ckpt, weights, len(base_tok))
    chunk = Policy.load(out).infer(fake_observation(EMB), seed=0)
    assert chunk.positions.shape == (16, 6)


def test_init_from_hf_reports_bad_sources(tmp_path, qwen3_hf, base_tok):
    with pytest.raises(ConversionError, match="has no config.json"):
        init_from_hf(tmp_path, tmp_path / "x", embodiment=EMB)
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = json.loads((qwen3_hf / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**raw, "model_type": "llava"}))
    with pytest.raises(ConversionError, match="model_type='llava'"):
        init_from_hf(bad, tmp_path / "x", embodiment=EMB)
    (bad / "config.json").write_text(json.dumps({**raw, "image_token_id": 5, "vision_end_token_id": 6}))
    base_tok.save_pretrained(str(bad))
    with pytest.raises(ConversionError) as info:
        init_from_hf(bad, tmp_path / "x", embodiment=EMB)
    assert len(info.value.problems) == 2 and "config.json image_token_id=5 but the tokenizer has" in str(
        info.value
    )


# --------------------------------------------------------------------------------------------------
# convert_reference
# --------------------------------------------------------------------------------------------------
def reference_run(tmp_path, model, tok, run_cfg, extra=None):
    """A run directory in the authors' layout: config.yaml, dataset_statistics.json, checkpoints/."""
    ref = to_reference_state_dict(model)
    # The authors' ViTs also carry the (unused) DeepStack mergers.
    for prefix in (REF_LEFT, REF_RIGHT, REF_ALIAS):
        ref[prefix + "model.visual.deepstack_merger_list.0.norm.weight"] = torch.ones(256)
    ref.update(extra or {})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_file(ref, str(run / "checkpoints" / "steps_2000_pytorch_model.safetensors"))
    save_file({"x": torch.zeros(1)}, str(run / "checkpoints" / "steps_500_pytorch_model.safetensors"))
    (run / "checkpoints" / "steps_1000_pytorch_model.pt").write_bytes(b"never opened")
    (run / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    stats = placeholder_normalizers(EMB)
    action = Normalizer(stats["action"].stats, ("min_max",) * 5 + ("identity",))
    (run / "dataset_statistics.json").write_text(
        json.dumps(reference_statistics({"action": action, "state": stats["state"]}, "so101_pick"))
    )
    tok.save_pretrained(str(tmp_path / "tok"))
    return run


RUN_CFG = {
    "framework": {
        "action_model": {"action_horizon": 16, "num_inference_timesteps": 4},
        "doublevla": {"action_query_token_num": 4},
    },
    "datasets": {"vla_data": {"image_size": 224}},
}


def test_convert_reference_round_trip(tmp_path):
    tok = build_small_tokenizer()
    model = build_model(tiny_config(tok, EMB, mode="reference"))
    run = reference_run(tmp_path, model, tok, RUN_CFG)
    out = convert_reference(
        run, tmp_path / "conv", embodiment="so101", base="tiny", tokenizer=tmp_path / "tok", num_heads=2,
        action_mode="min_max",
    )  # fmt: skip
    ckpt = load_checkpoint(out)
    cfg = ckpt.config
    assert cfg.mode == "reference" and not cfg.deepstack and cfg.state_to_expert
    assert json.loads((out / "config.json").read_text())["mode"] == "reference"
    # state_encoder_hidden is unused in reference mode (no state token in the right brain).
    assert dataclasses.replace(cfg, state_encoder_hidden=model.config.state_encoder_hidden) == model.config
    want, got = model.state_dict(), ckpt.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert ckpt.normalizers["action"].modes == ("min_max",) * 5 + ("identity",)
    assert "convert_reference(steps_2000_pytorch_model.safetensors)" in ckpt.metadata["source"]
    policy = Policy.load(out)
    obs = fake_observation(EMB)
    batch = policy.processor.preprocess([obs])
    noise = torch.randn(1, 16, 6, generator=torch.Generator().manual_seed(0))
    fast = policy.runner.infer(batch, noise.numpy())
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    torch.testing.assert_close(
        torch.from_numpy(fast), model.sample_actions(tensors, noise=noise), rtol=0, atol=0
    )


def test_convert_reference_collects_every_problem(tmp_path):
    tok = build_small_tokenizer()
    model = build_model(tiny_config(tok, EMB, mode="reference"))
    cfg = json.loads(json.dumps(RUN_CFG))
    cfg["datasets"]["vla_data"]["CoT_prompt"] = "Your task is {instruction}."
    sd = model.state_dict()
    extra = {
        REF_ALIAS + "model.language_model.norm.weight": sd["brains.right.model.language_model.norm.weight"]
        + 1,
        "optimizer.step": torch.zeros(1),
    }
    run = reference_run(tmp_path, model, tok, cfg, extra)
    (run / "dataset_statistics.json").unlink()
    with pytest.raises(ConversionError) as info:
        convert_reference(
            run, tmp_path / "c", embodiment=EMB, base="tiny", tokenizer=tmp_path / "tok", num_heads=2
        )
    text = str(info.value)
    assert len(info.value.problems) == 4
    for part in (
        "CoT_prompt",
        "unexpected reference keys",
        "optimizer.step",
        "differs from",
        "no statistics",
    ):
        assert part in text
    assert not (tmp_path / "c").exists()


def test_convert_reference_refuses_pickles(tmp_path):
    pt = tmp_path / "steps_1_pytorch_model.pt"
    pt.write_bytes(b"never opened")
    with pytest.raises(ConversionError, match="pickle checkpoints are never loaded"):
        convert_reference(pt, tmp_path / "c", embodiment=EMB)
    with pytest.raises(ConversionError, match=r"found \['steps_1_pytorch_model.pt'\]"):
        convert_reference(tmp_path, tmp_path / "c", embodiment=EMB)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_cli_make_tiny_and_failures(tmp_path, capsys):
    args = parse(cli.add_make_tiny_args, ["--out", str(tmp_path / "demo"), "--mode", "reference"])
    assert cli.make_tiny_main(args) == 0
    assert load_checkpoint(tmp_path / "demo", load_weights=False).config.mode == "reference"
    assert cli.make_tiny_main(args) == 2  # exists, no --overwrite
    args = parse(
        cli.add_init_args, ["--base", str(tmp_path), "--out", str(tmp_path / "x"), "--embodiment", "so101"]
    )
    assert cli.init_main(args) == 2
    args = parse(
        cli.add_convert_reference_args, [str(tmp_path / "m.pt"), "--out", "x", "--embodiment", "so101"]
    )
    assert cli.convert_reference_main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "has no config.json" in err and "does not exist" in err
    assert cli.EXPERT_CHOICES == EXPERT_PRESETS
    sub = argparse.ArgumentParser().add_subparsers()
    cli.register(sub)
    assert {"init", "convert-reference", "make-tiny"} <= set(sub.choices)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_make_tiny_deeper_brains_build_and_run(tmp_path, family):
    args = parse(
        cli.add_make_tiny_args,
        ["--out", str(tmp_path / "deep"), "--family", family, "--embodiment", "so101_sim",
         "--brain-layers", "3", "--vision-depth", "4"],
    )  # fmt: skip
    assert cli.make_tiny_main(args) == 0
    ck = load_checkpoint(tmp_path / "deep")
    text, vision = ck.config.backbone["text_config"], ck.config.backbone["vision_config"]
    assert text["num_hidden_layers"] == 3 and vision["depth"] == 4
    if family == "qwen3_vl":
        assert vision["deepstack_visual_indexes"] == [0, 3]  # taps spread over the deeper tower
    else:
        assert vision["fullatt_block_indexes"] == [3]
    assert "brain_layers=3" in json.dumps(ck.metadata)
    chunk = Policy.load(tmp_path / "deep").infer(fake_observation(load_embodiment("so101_sim")), seed=0)
    assert chunk.positions.shape == (16, 6) and np.isfinite(chunk.positions).all()
    with pytest.raises(ValueError, match="brain_layers must be >= 1"):
        make_tiny_checkpoint(tmp_path / "bad", brain_layers=0)


def test_make_tiny_right_prompt_template_moves_the_views_and_keeps_the_weights(tmp_path, capsys):
    tpl = "Instruction: {instruction}\nState: {propri}\n{images}Action Query: {action_queries}"
    base, opt = ["--embodiment", "so101_sim", "--seed", "3"], "--right-prompt-template"
    make = lambda name, *extra: cli.make_tiny_main(  # noqa: E731
        parse(cli.add_make_tiny_args, ["--out", str(tmp_path / name), *base, *extra])
    )
    assert make("d") == 0 and make("t", opt, tpl) == 0
    plain, moved = load_checkpoint(tmp_path / "d"), load_checkpoint(tmp_path / "t")
    assert moved.config.right_prompt_template == tpl and plain.config.right_prompt_template != tpl
    a, b = plain.model.state_dict(), moved.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    obs = fake_observation(load_embodiment("so101_sim"))
    chunk = Policy.load(tmp_path / "t").infer(obs, seed=0).positions
    assert not np.allclose(chunk, Policy.load(tmp_path / "d").infer(obs, seed=0).positions)  # another prompt
    assert make("b", opt, tpl.replace("Action", "{images}Action")) == 2
    assert "at most once" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_smooth_vision_positions_give_both_brains_one_smooth_table(tmp_path):
    table = sincos_2d(16, 64)
    assert table.shape == (256, 64)
    grid = table.reshape(16, 16, 64)
    near = torch.cosine_similarity(grid[:, :-1], grid[:, 1:], dim=-1).mean()  # one column apart
    far = torch.cosine_similarity(grid[:, :4], grid[:, -4:], dim=-1).mean()  # twelve columns apart (same row)
    assert near > 0.95 and far < near - 0.2
    # the code separates every position (no two rows of the table alike)
    d = torch.cdist(table, table) + torch.eye(256) * 1e9
    assert d.min() > 0.1
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(4, 6)
    path = make_tiny_checkpoint(tmp_path / "s", embodiment="so101_sim", smooth_positions=True)
    ck = load_checkpoint(path)
    left = ck.model.brains.left.model.visual.pos_embed.weight
    right = ck.model.brains.right.model.visual.pos_embed.weight
    assert torch.equal(left, right) and torch.allclose(left, table)
    assert "smooth_positions=True" in json.dumps(ck.metadata)
    plain = make_tiny_checkpoint(tmp_path / "p", embodiment="so101_sim", family="qwen2_5_vl")
    assert smooth_vision_positions(load_checkpoint(plain).model) is False  # rotary-only vision tower
