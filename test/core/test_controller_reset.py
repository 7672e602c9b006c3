# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""ChunkController.reset: a new episode drops chunks, waits for a new state, refuses older chunks."""

import numpy as np

from twinbrain_ros.core.controller import ChunkController, ControllerConfig
from twinbrain_ros.core.embodiment import load_embodiment
from twinbrain_ros.core.types import ActionChunk


def _ctl():
    emb = load_embodiment("so101_sim")
    return emb, ChunkController(ControllerConfig.from_embodiment(emb))


def _chunk(emb, q, t0, obs, cid):
    pos = np.tile(np.asarray(q, float), (16, 1))
    return ActionChunk(emb.joint_names, pos, 0.05, t0=t0, obs_stamp=obs, chunk_id=cid)


def test_reset_waits_for_state_and_refuses_older_chunks():
    emb, ctl = _ctl()
    q0 = np.zeros(6)
    ctl.initialize(q0, 1.0)
    assert ctl.offer(_chunk(emb, q0 + 0.1, 1.0, 0.95, 1), 1.0).accepted
    for k in range(20):
        ctl.step(1.0 + 0.005 * (k + 1))
    assert ctl.mode != "waiting"
    ctl.reset(2.0)
    assert ctl.mode == "waiting" and not ctl.initialized
    assert ctl.step(2.005) is None  # nothing is commanded until a new state arrives
    assert ctl.buffer.active is None and ctl.buffer.pending is None
    home = np.full(6, 0.3)
    assert ctl.initialize(home, 2.01)
    cmd = ctl.step(2.015)
    np.testing.assert_allclose(cmd.position, home)  # holds the new measured state, no jump back
    stale = ctl.offer(_chunk(emb, home, 2.0, 1.99, 2), 2.02)  # computed before the reset
    assert not stale.accepted and "before the last reset" in ctl.last_reason
    # A lower chunk id than before the reset is fine: ordering history was forgotten.
    assert ctl.offer(_chunk(emb, home + 0.05, 2.03, 2.02, 1), 2.03).accepted


def test_command_velocity_never_exceeds_the_limit_even_with_an_irregular_period():
    """The command's velocity field (a feed-forward for JTC) stays within the limit, like its positions."""
    emb = load_embodiment("so101_sim")
    vmax = np.asarray(emb.limits.max_velocity)
    for method in ("linear", "cubic"):
        ctl = ChunkController(ControllerConfig.from_embodiment(emb, method=method))
        ctl.initialize(np.zeros(6), 0.0)
        t, worst, q = 0.0, 0.0, np.zeros(6)
        rng = np.random.default_rng(1)
        for cid in range(1, 60):  # near-limit chunks, 20 ms old on arrival, re-planned every 0.1 s
            pos = q + np.arange(16)[:, None] * 0.05 * rng.choice([-1, 1], 6) * 2.95
            pos = pos + rng.normal(0, 0.05, (16, 6))
            chunk = ActionChunk(emb.joint_names, pos, 0.05, t0=t - 0.02, obs_stamp=t - 0.02, chunk_id=cid)
            ctl.offer(chunk, t)
            for k in range(20):
                t += 0.004 if k % 2 else 0.006  # an irregular loop (a late cycle, then an early one)
                cmd = ctl.step(t)
                q = cmd.position
                worst = max(worst, float(np.max(np.abs(cmd.velocity) / vmax)))
        assert 0.9 < worst <= 1.0 + 1e-9, (method, worst)
