# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The scripted expert: IK accuracy, seeded variation, and success on every task (a few seeds).

The success *rate* (>= 95 % per task) is measured with ``python -m twinbrain_ros.sim.expert
--episodes 100``; here a few seeds per task keep the run short.
"""

from __future__ import annotations

import numpy as np
import pytest

from twinbrain_ros.sim.expert import ArmIK, ExpertConfig, ScriptedExpert, run_episode, top_down_rotation

pytestmark = pytest.mark.sim


def test_ik_reaches_top_down_pose(env):
    ik = ArmIK(env.scene)
    env.reset(0)
    q0 = env.joint_positions()
    seed = np.array([0.0, 0.0, 0.5, 1.2, 0.0, q0[5]])
    for target, yaw in (([0.2, 0.05, 0.03], 0.2), ([0.25, -0.1, 0.02], -0.4)):
        rot = top_down_rotation(yaw)
        q, err = ik.solve(seed, np.array(target), rot, iters=150)
        pos, r = ik.fk(q)
        assert err < 1e-3 and np.linalg.norm(pos - target) < 1e-3
        assert r[:, 0] @ [0, 0, -1] > 0.99  # pointing down
        assert abs(r[:, 2] @ rot[:, 2]) > 0.99  # jaws across the requested direction
        assert np.all(q >= env.scene.ctrl_range[:, 0]) and np.all(q <= env.scene.ctrl_range[:, 1])
        assert q[5] == seed[5]  # the gripper is not IK's business
    # The simulator's state is untouched: the IK has a private MjData.
    np.testing.assert_array_equal(env.joint_positions(), q0)


def test_act_before_reset_raises(env):
    with pytest.raises(RuntimeError, match="reset"):
        ScriptedExpert(env.scene).act(0.0, env.joint_positions(), env.object_poses())


def _commands(env, expert, task, seed, steps=40):
    env.reset(seed, task)
    expert.reset(env.task, seed)
    out = []
    for _ in range(steps):
        q = expert.act(env.episode_time, env.joint_positions(), env.object_poses())
        out.append(q.copy())
        env.set_joint_targets(q)
        env.step(1 / 30)
    return np.array(out)


def test_expert_is_seeded(env):
    expert = ScriptedExpert(env.scene)
    a = _commands(env, expert, "lift_red_cube", 3)
    b = _commands(env, expert, "lift_red_cube", 3)
    np.testing.assert_array_equal(a, b)
    # Same scene, different expert variation: the demonstrations differ.
    env.reset(3, "lift_red_cube")
    expert.reset(env.task, 4)
    c = []
    for _ in range(40):
        q = expert.act(env.episode_time, env.joint_positions(), env.object_poses())
        c.append(q.copy())
        env.set_joint_targets(q)
        env.step(1 / 30)
    assert np.abs(np.array(c) - a).max() > 0.05


@pytest.mark.parametrize("task", ["touch_red_cube", "touch_blue_cube", "lift_red_cube", "lift_blue_cube"])
def test_expert_succeeds(env, task):
    expert = ScriptedExpert(env.scene)
    for seed in (100,) if task.startswith("touch") else (100, 101):
        r = run_episode(env, expert, task, seed, control_dt=1 / 30, settle_time=0.5)
        assert r.success, f"{task} seed {seed}: {r.message}"
        assert r.first_success_time is not None and r.first_success_time < env.task.time_limit_s


def test_expert_success_at_other_rates(env):
    expert = ScriptedExpert(env.scene)
    for hz in (10.0, 50.0):
        r = run_episode(env, expert, "lift_blue_cube", 7, control_dt=1 / hz, settle_time=0.5)
        assert r.success, f"{hz} Hz: {r.message}"


def test_deliberate_miss_then_regrasp(env):
    """miss_prob = 1: the first close is 2-3 cm off the cube and empty, the second attempt lifts it."""
    expert = ScriptedExpert(env.scene, ExpertConfig(miss_prob=1.0))
    env.reset(101, "lift_red_cube")
    expert.reset(env.task, 101)
    closes: dict[int, np.ndarray] = {}
    while env.episode_time < env.task.time_limit_s and not expert.done:
        q = expert.act(env.episode_time, env.joint_positions(), env.object_poses())
        if expert.phase == "close" and expert.attempt not in closes:
            tcp = expert.ik.fk(env.joint_positions())[0]
            closes[expert.attempt] = tcp[:2] - env.object_poses()["red_cube"].pos[:2]
        env.set_joint_targets(q)
        env.step(1 / 30)
    assert expert.phase == "hold" and expert.attempt == 2, (expert.phase, expert.attempt)
    assert env.task_status().success
    # The first grasp was aimed off the cube (the aim is 2-3 cm off; the fixed jaw's clearance shifts it
    # by <= 9 mm), the re-grasp on it.
    assert np.linalg.norm(closes[1]) > 0.011, closes
    assert np.linalg.norm(closes[2]) < 0.011, closes


def test_miss_prob_zero_and_touch_are_unchanged(env):
    plain = ScriptedExpert(env.scene)
    a = _commands(env, plain, "lift_blue_cube", 5, steps=60)
    b = _commands(env, ScriptedExpert(env.scene, ExpertConfig(miss_prob=0.0)), "lift_blue_cube", 5, steps=60)
    np.testing.assert_array_equal(a, b)
    c = _commands(env, plain, "touch_red_cube", 5, steps=60)
    d = _commands(env, ScriptedExpert(env.scene, ExpertConfig(miss_prob=1.0)), "touch_red_cube", 5, steps=60)
    np.testing.assert_array_equal(c, d)  # a miss only makes sense where there is a grasp to recover
    e = _commands(env, ScriptedExpert(env.scene, ExpertConfig(miss_prob=1.0)), "lift_blue_cube", 5, steps=60)
    assert np.abs(e - a).max() > 0.02


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"miss_prob": 1.5}, "miss_prob"),
        ({"miss_offset": (0.03, 0.02)}, "miss_offset"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_expert_config_is_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ExpertConfig(**kwargs)
