# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""MCAP episodes -> LeRobot v3: alignment on the fps grid, sync report, and every kind of bad input.

Bad input (a corrupt MCAP, missing topics, a mismatched contract, a topic that stopped) must give a
message naming the file and the problem, and leave no dataset (nor a hidden temporary one) behind.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from twinbrain_ros.core.frame_sync import FrameSync
from twinbrain_ros.data import mcap_episode as me
from twinbrain_ros.data.bench import synth_embodiment, synth_episode
from twinbrain_ros.data.cli import add_convert_arguments, convert_main
from twinbrain_ros.data.convert import ConvertError, ConvertOptions, convert_episodes, resample
from twinbrain_ros.data.reader import LeRobotV3Dataset

FPS = 30


@pytest.fixture(scope="module")
def emb():
    return synth_embodiment(cameras=2, width=32, height=24)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory, emb):
    d = tmp_path_factory.mktemp("eps")
    synth_episode(d, emb, 0, seconds=1.5, seed=0, instruction="pick up the cube", success=True)
    synth_episode(d, emb, 1, seconds=1.0, seed=1, instruction="put it in the box", success=False)
    return d


def _nothing_left(out):
    assert not out.exists(), f"{out} exists after a failed conversion"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "temporary dir left"


def test_converts_and_aligns_on_the_grid(tmp_path, episodes, emb):
    out = tmp_path / "ds"
    rep = convert_episodes([episodes], out, ConvertOptions(fps=FPS))
    ds = LeRobotV3Dataset(out)
    assert ds.num_episodes == 2 and ds.fps == FPS and ds.tasks == ["pick up the cube", "put it in the box"]
    cols = ds.columns()
    for e, (a, b) in enumerate(ds.episode_bounds):
        ts = cols["timestamp"][a:b]
        assert ts[0] == 0 and np.allclose(np.diff(ts), 1 / FPS, atol=1e-6)
        assert b - a >= int(FPS * [1.5, 1.0][e]) - 2
    assert ds.info["features"]["observation.images.cam1"]["shape"] == [24, 32, 3]
    assert ds.info["robot_type"] == emb.name
    # the state is the synthetic sine of the joint-state stream: as-of values stay within one sample
    q = cols["observation.state"]
    lo, hi = emb.limits.lower, emb.limits.upper
    assert np.all(q >= lo - 1e-6) and np.all(q <= hi + 1e-6)
    assert np.allclose(cols["action"] - q, 0.01, atol=0.02)
    # images: the bar moves 3 px per camera frame, so consecutive dataset frames show distinct frames
    imgs = ds.images("observation.images.cam0", range(0, 10))
    bars = [int(np.argmax(im[0, :, 0] == 255)) for im in imgs]
    assert len(set(bars)) == 10
    d = rep.to_dict()
    assert d["total_frames"] == ds.num_frames and d["frames_per_s"] > 0
    for name in ("observation.state", "action", "observation.images.cam0", "observation.images.cam1"):
        s = d["streams"][name]
        assert 0 <= s["p95_skew_ms"] < 20 and s["stale"] == 0
    assert d["streams"]["observation.images.cam0"]["repeated"] == 0 and d["dropped_frames"] == 0
    assert [e["success"] for e in d["episodes"]] == [True, False]
    assert ds.extra["report"]["fps"] == FPS and ds.extra["embodiment"]["name"] == emb.name
    assert "p95" in rep.format_text().split("\n")[1]


def test_resample_is_frame_sync_as_of():
    rng = np.random.default_rng(3)
    a = np.sort(rng.uniform(0, 2, 70))
    b = np.arange(0, 2, 0.01) + 0.003
    grid, idx, sync = resample(
        {"cam": a, "state": b}, 30, 0.0, {"cam": 1.0, "state": 1.0}, anchor="cam", phase_s=0.004
    )
    assert np.allclose(np.diff(grid), 1 / 30)
    assert np.isclose(grid[0], a[a + 0.004 >= max(a[0], b[0])][0] + 0.004)
    for name, st in (("cam", a), ("state", b)):
        ref = np.searchsorted(st, grid, side="right") - 1  # newest sample at or before each grid time
        assert np.array_equal(idx[name], ref)
        assert np.allclose(sync[name].skew_s, grid - st[ref])
    live = FrameSync({"cam": 1.0}, history=100)
    for s in a:
        live.add("cam", s, s)
    assert live.select(grid[-1]).value("cam") == a[idx["cam"][-1]]


def test_resample_rejects_streams_that_do_not_overlap():
    with pytest.raises(Exception, match="do not overlap"):
        resample({"x": np.array([0.0, 0.1]), "y": np.array([5.0, 5.1])}, 30, 0.0, {"x": 1, "y": 1})


def test_corrupt_mcap(tmp_path, episodes):
    d = tmp_path / "eps"
    d.mkdir()
    for p in episodes.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    bad = d / "episode_000002.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + b"garbage" * 100)
    out = tmp_path / "ds"
    with pytest.raises(ConvertError, match="episode_000002.mcap.*(corrupt|not a readable)") as ei:
        convert_episodes([d], out, ConvertOptions(fps=FPS))
    assert len(ei.value.problems) == 1
    _nothing_left(out)
    rep = convert_episodes([d], out, ConvertOptions(fps=FPS, skip_bad=True))
    assert len(rep.episodes) == 2 and "episode_000002.mcap" in rep.skipped[0]["source"]


def test_truncated_mcap_is_named(tmp_path, emb):
    d = tmp_path / "eps"
    p = synth_episode(d, emb, 0, seconds=0.5)
    p.write_bytes(p.read_bytes()[:-200])  # lost its summary and footer
    out = tmp_path / "ds"
    with pytest.raises(ConvertError, match="episode_000000.mcap"):
        convert_episodes([d], out)
    _nothing_left(out)


def test_missing_topics(tmp_path, emb):
    d = tmp_path / "eps"
    no_cams = synth_embodiment(cameras=0)
    synth_episode(d, no_cams, 0, seconds=0.5, contract_yaml=emb.to_yaml())  # contract names 2 cameras
    out = tmp_path / "ds"
    with pytest.raises(
        ConvertError, match=r"missing topic '/?camera/cam0/image_raw' \(observation.images.cam0\)"
    ):
        convert_episodes([d], out)
    _nothing_left(out)
    with pytest.raises(ConvertError, match="missing topic '/nope'"):
        convert_episodes([d], out, ConvertOptions(state_topic="/nope", embodiment=None))
    _nothing_left(out)


def test_mismatched_contract(tmp_path, episodes, emb):
    d = tmp_path / "eps"
    d.mkdir()
    for p in episodes.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    other = synth_embodiment(cameras=2, width=64, height=48)  # same joints, other resolution
    synth_episode(d, other, 2, seconds=0.5)
    out = tmp_path / "ds"
    with pytest.raises(ConvertError) as ei:
        convert_episodes([d], out)
    msg = str(ei.value)
    assert "episode_000002.mcap" in msg and "resolution differs" in msg and "32x24" in msg and "64x48" in msg
    _nothing_left(out)
    # an explicit reference contract that matches none of them
    contract = tmp_path / "so101_like.yaml"
    contract.write_text(synth_embodiment(cameras=1).to_yaml())
    with pytest.raises(ConvertError, match="cameras differ"):
        convert_episodes([episodes], out, ConvertOptions(embodiment=str(contract)))
    _nothing_left(out)


def test_stalled_topic_rejects_the_episode_with_its_gap(tmp_path, emb):
    d = tmp_path / "eps"
    synth_episode(d, emb, 0, seconds=2.0, silence={"/camera/cam1/image_raw": (0.5, 1.2)})
    out = tmp_path / "ds"
    with pytest.raises(ConvertError, match=r"observation.images.cam1.*stale in \d+ of \d+ frames.*mid"):
        convert_episodes([d], out)
    _nothing_left(out)
    rep = convert_episodes([d], out, ConvertOptions(max_stale_fraction=0.5))
    e = rep.episodes[0]
    assert e["sync"]["observation.images.cam1"]["stale"] > 10 and e["dropped_frames"] > 10
    assert e["gaps"]["/camera/cam1/image_raw"][0]["kind"] == "mid"


def test_stopped_topic_trims_and_reports(tmp_path, emb):
    d = tmp_path / "eps"
    synth_episode(d, emb, 0, seconds=2.0, stop_after={"/joint_states": 1.0})
    rep = convert_episodes([d], tmp_path / "ds")
    e = rep.episodes[0]
    assert e["frames"] <= 31 and e["trimmed_s"] > 0.9 and e["gaps"]["/joint_states"][0]["kind"] == "end"


def test_partial_episodes_skipped_unless_asked(tmp_path, emb):
    d = tmp_path / "eps"
    synth_episode(d, emb, 0, seconds=0.5)
    synth_episode(d, emb, 1, seconds=0.5, finish=False)
    rep = convert_episodes([d], tmp_path / "ds1")
    assert len(rep.episodes) == 1 and "partial" in rep.skipped[0]["reason"]
    me.recover_partial(d / "episode_000001.partial.mcap")
    rep = convert_episodes([d], tmp_path / "ds2", ConvertOptions(include_partial=True))
    assert [e["status"] for e in rep.episodes] == ["complete", "recovered"]
    with pytest.raises(ConvertError, match="include-partial"):
        convert_episodes([d / "episode_000001.recovered.mcap"], tmp_path / "ds3")


def test_only_success_and_existing_output(tmp_path, episodes):
    rep = convert_episodes([episodes], tmp_path / "ds", ConvertOptions(only_success=True))
    assert len(rep.episodes) == 1 and rep.skipped[0]["reason"] == "not marked successful"
    with pytest.raises(ConvertError, match="already exists"):
        convert_episodes([episodes], tmp_path / "ds")
    rep = convert_episodes([episodes], tmp_path / "ds", ConvertOptions(overwrite=True))
    assert len(rep.episodes) == 2 and LeRobotV3Dataset(tmp_path / "ds").num_episodes == 2
    with pytest.raises(ConvertError, match="does not exist"):
        convert_episodes([tmp_path / "nowhere"], tmp_path / "ds4")
    with pytest.raises(ConvertError, match="no episode_"):
        convert_episodes([tmp_path / "ds"], tmp_path / "ds5")


def test_scene_groups_are_kept_or_dropped_whole(tmp_path, emb):
    """record-sim --each-task pairs: a failed episode takes its scene partner out with it."""
    d = tmp_path / "eps"
    ok = [True, True, True, False, True, True]  # scene 1's second instruction failed
    for i, success in enumerate(ok):
        synth_episode(d, emb, i, seconds=0.4, seed=i, instruction=("red", "blue")[i % 2], success=success)
    rep = convert_episodes([d], tmp_path / "ds", ConvertOptions(only_success=True, scene_group=2))
    assert [e["source"].rsplit("_", 1)[-1] for e in rep.episodes] == ["000000.mcap", "000001.mcap",
                                                                        "000004.mcap", "000005.mcap"]
    dropped = {s["source"].rsplit("_", 1)[-1]: s["reason"] for s in rep.skipped}
    assert dropped == {"000002.mcap": "scene group 1: episode_000003.mcap is not marked successful",
                       "000003.mcap": "scene group 1: episode_000003.mcap is not marked successful"}
    # without groups only the failed one goes, and the pairs after it shift by one
    rep = convert_episodes([d], tmp_path / "ds2", ConvertOptions(only_success=True))
    assert len(rep.episodes) == 5
    with pytest.raises(ConvertError, match="6 episode files do not split into scene groups of 4"):
        convert_episodes([d], tmp_path / "ds3", ConvertOptions(scene_group=4))
    _nothing_left(tmp_path / "ds3")


def test_cli_convert_reports_problems(tmp_path, episodes, capsys):
    ap = argparse.ArgumentParser()
    add_convert_arguments(ap)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "episode_000000.mcap").write_bytes(b"nope")
    assert convert_main(ap.parse_args([str(bad), "--out", str(tmp_path / "ds")])) == 2
    err = capsys.readouterr().err
    assert "no dataset written" in err and "episode_000000.mcap" in err
    _nothing_left(tmp_path / "ds")
    assert (
        convert_main(ap.parse_args([str(episodes), "--out", str(tmp_path / "ds"), "--fps", "15", "--json"]))
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["fps"] == 15
