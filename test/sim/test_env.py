# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The ROS-free MuJoCo SO-101 environment: task suites, seeded resets, tracking, success, rendering."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import yaml

from twinbrain_ros.core.embodiment import load_embodiment, parse_embodiment
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.sim.scene import ROBOT_JOINTS, cluster_mesh, robot_assets_dir
from twinbrain_ros.sim.tasks import load_task_suite, parse_task_suite

pytestmark = pytest.mark.sim


def _state(env):
    return env.data.qpos.copy(), env.data.qvel.copy()


# --- task suites ----------------------------------------------------------------------------------------


def test_suite_has_required_tasks():
    suite = load_task_suite("so101_tasks")
    assert {"touch_red_cube", "touch_blue_cube", "lift_red_cube"} <= set(suite.task_names)
    assert suite.task("lift_red_cube").kind == "lift"
    colours = {tuple(o.rgba) for o in suite.objects}
    assert len(suite.objects) >= 2 and len(colours) == len(suite.objects)
    with pytest.raises(KeyError, match="touch_red_cube"):
        suite.task("nope")


def test_suite_validation_names_every_problem():
    data = yaml.safe_load(open(load_task_suite().source))
    bad = copy.deepcopy(data)
    bad["tasks"]["touch_red_cube"]["object"] = "purple_cube"
    bad["tasks"]["lift_red_cube"]["kind"] = "juggle"
    bad["objects"][0]["size"] = -1
    bad["spawn"]["x"] = [0.3, 0.1]
    with pytest.raises(ValidationError) as e:
        parse_task_suite(bad, "bad.yaml")
    msg = str(e.value)
    for part in (
        "tasks.touch_red_cube.object 'purple_cube'",
        "tasks.lift_red_cube.kind",
        "objects[0].size",
        "spawn.x",
    ):
        assert part in msg
    assert len(e.value.problems) >= 4


def test_suite_validation_names_bad_cameras():
    data = yaml.safe_load(open(load_task_suite().source))
    bad = copy.deepcopy(data)
    bad["scene"]["cameras"]["wrist"]["mount"] = "elbow"
    bad["scene"]["cameras"]["front"]["up"] = [-0.29, 0.10, -0.34]  # along the view direction
    with pytest.raises(ValidationError) as e:
        parse_task_suite(bad, "bad.yaml")
    msg = str(e.value)
    assert "scene.cameras.wrist.mount must be one of ['world', 'tcp'], got 'elbow'" in msg
    assert "scene.cameras.front: up" in msg and "parallel to the view direction" in msg


# --- scene --------------------------------------------------------------------------------------------------


def test_scene_uses_installed_robot_and_contract_fits(env):
    assert str(robot_assets_dir()) in env.scene.xml  # included from the package, not copied
    assert env.model.nu == 6 and tuple(env.joint_names) == ROBOT_JOINTS
    env.check_embodiment(load_embodiment("so101_sim"))
    env.check_embodiment(load_embodiment("so101"))
    d = load_embodiment("so101_sim").to_dict()
    d["cameras"][0]["name"] = "top"
    d["joints"][0], d["joints"][1] = d["joints"][1], d["joints"][0]
    with pytest.raises(ValidationError) as e:
        env.check_embodiment(parse_embodiment(d))
    assert "joint order differs" in str(e.value) and "cameras ['top']" in str(e.value)


def test_wrist_camera_rides_on_the_tool_point_frame(env):
    """The suite's ``mount: tcp`` camera sits at its pos in the tcp frame and looks at its lookat there."""
    import mujoco

    env.check_embodiment(load_embodiment("so101_sim_wrist"))
    spec = {c.name: c for c in env.suite.scene.cameras}
    wrist, front = spec["wrist"], spec["front"]
    assert wrist.mount == "tcp" and front.mount == "world"
    cam, fcam = env.scene.camera_ids["wrist"], env.scene.camera_ids["front"]
    env.reset(0)
    before = env.render("wrist", 96, 96)
    for q in (env.joint_positions(), env.joint_positions() + np.array([0.5, 0.4, -0.3, 0.2, 0.6, 0.0])):
        env.set_joint_targets(q)
        env.step(0.6)
        mujoco.mj_forward(env.model, env.data)
        tcp = env.scene.tcp_site
        p_tcp, r_tcp = env.data.site_xpos[tcp], env.data.site_xmat[tcp].reshape(3, 3)
        np.testing.assert_allclose(env.data.cam_xpos[cam], p_tcp + r_tcp @ np.array(wrist.pos), atol=1e-6)
        r_cam = env.data.cam_xmat[cam].reshape(3, 3)  # columns: image right, image up, backwards
        look = p_tcp + r_tcp @ np.array(wrist.lookat) - env.data.cam_xpos[cam]
        np.testing.assert_allclose(-r_cam[:, 2], look / np.linalg.norm(look), atol=1e-6)
        up = r_tcp @ np.array(wrist.up)
        assert r_cam[:, 1] @ up > 0 and abs(r_cam[:, 0] @ up) < 1e-6  # up shows as up, no roll
        np.testing.assert_allclose(env.data.cam_xpos[fcam], front.pos, atol=1e-12)  # fixed camera stays
    after = env.render("wrist", 96, 96)
    assert before.std() > 5 and np.abs(after.astype(int) - before).mean() > 5  # it moved with the hand


def test_cluster_mesh_simplifies():
    g = np.linspace(0, 0.01, 21)
    x, y = np.meshgrid(g, g)
    verts = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    idx = np.arange(x.size).reshape(x.shape)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    v2, f2 = cluster_mesh(verts, faces, 0.002)
    assert 0 < len(f2) < len(faces) / 4 and f2.max() < len(v2)
    assert np.all((f2[:, 0] != f2[:, 1]) & (f2[:, 1] != f2[:, 2]))


# --- episodes --------------------------------------------------------------------------------------


def test_seed_reproduces_initial_state(env):
    env.reset(11, "touch_red_cube")
    q1, v1 = _state(env)
    env.set_joint_targets(env.joint_positions() + 0.2)
    env.step(0.3)
    env.reset(12)
    q2, _ = _state(env)
    env.reset(11)
    q3, v3 = _state(env)
    np.testing.assert_array_equal(q1, q3)
    np.testing.assert_array_equal(v1, v3)
    assert not np.allclose(q1, q2)
    np.testing.assert_allclose(env.joint_targets(), env.joint_positions())


def test_objects_spawn_in_region_and_apart(env):
    sp = env.suite.spawn
    for seed in range(20):
        env.reset(seed)
        pos = np.array([p.pos for p in env.object_poses().values()])
        assert np.all((pos[:, 0] >= sp.x[0]) & (pos[:, 0] <= sp.x[1]))
        assert np.all((pos[:, 1] >= sp.y[0]) & (pos[:, 1] <= sp.y[1]))
        gaps = np.linalg.norm(pos[:, None, :2] - pos[None, :, :2], axis=-1) + np.eye(len(pos))
        assert gaps.min() >= sp.min_separation


def test_same_commands_same_episode(env):
    def run():
        env.reset(5, "lift_red_cube")
        q0 = env.joint_positions()
        for k in range(30):
            env.set_joint_targets(q0 + 0.3 * np.sin(0.2 * k) * np.array([1, 0.5, -0.5, 0.3, 1, 0.5]))
            env.step(0.02)
        return _state(env)

    a, b = run(), run()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_sim_time_is_monotonic_across_resets(env):
    env.reset(0)
    env.step(0.1)
    t = env.sim_time
    info = env.reset(1, "touch_blue_cube")
    assert info.start_time == pytest.approx(t + env.timestep) and env.episode_time == 0.0
    assert info.instruction == "touch the blue cube"
    env.step(0.05)
    assert env.sim_time == pytest.approx(info.start_time + 0.05) and env.episode_time == pytest.approx(0.05)


def test_position_actuators_track_targets(env):
    env.reset(2)
    target = np.array([0.4, -0.8, 0.9, 0.6, -0.5, 0.8])
    env.set_joint_targets(target)
    env.step(1.5)
    np.testing.assert_allclose(env.joint_positions(), target, atol=0.03)
    env.set_joint_targets(np.full(6, 99.0))  # clipped to the actuators' ranges
    np.testing.assert_allclose(env.joint_targets(), env.scene.ctrl_range[:, 1])
    with pytest.raises(ValueError, match="6 finite values"):
        env.set_joint_targets([0.0, np.nan, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="6 finite values"):
        env.set_joint_targets([0.0] * 5)


def test_reset_rejects_bad_input(env):
    with pytest.raises(KeyError, match="lift_red_cube"):
        env.reset(0, "juggle")
    with pytest.raises(ValueError, match="seed"):
        env.reset(-3)


def _put_object(env, name, pos):
    adr = env.scene.object_qpos_adr[name]
    env.data.qpos[adr : adr + 3] = pos
    env.data.qvel[env.scene.object_dof_adr[name] : env.scene.object_dof_adr[name] + 6] = 0
    import mujoco

    mujoco.mj_forward(env.model, env.data)


def test_success_detection_touch_and_lift(env):
    env.reset(3, "touch_red_cube")
    st = env.task_status()
    assert not st.success and st.distance > 0.03 and "not yet" in st.message
    tcp = env.tcp_position()
    _put_object(env, "red_cube", tcp + [0.0, 0.0, 0.02])
    st = env.task_status()
    assert st.success and st.distance == pytest.approx(0.02, abs=1e-6)
    _put_object(env, "red_cube", tcp + [0.0, 0.0, 0.05])
    assert not env.task_status().success

    env.reset(3, "lift_red_cube")
    half = env.suite.object("red_cube").half
    tcp = env.tcp_position()
    _put_object(env, "red_cube", [tcp[0], tcp[1], half])  # under the tool point but on the table
    st = env.task_status()
    assert not st.success and st.height == pytest.approx(0.0, abs=1e-6)
    assert tcp[2] > half + 0.05  # the home pose holds the tool point high enough
    _put_object(env, "red_cube", tcp + [0.0, 0.0, 0.01])  # in the hand, lifted
    assert env.task_status().success
    _put_object(env, "red_cube", [0.3, 0.15, half + 0.08])  # lifted, but not in the hand
    st = env.task_status()
    assert not st.success and st.height == pytest.approx(0.08)


def test_first_success_time_is_recorded(env):
    env.reset(4, "touch_blue_cube")
    assert env.first_success_time is None
    _put_object(env, "blue_cube", env.tcp_position())
    env.step(0.01)
    assert env.first_success_time == pytest.approx(0.01, abs=0.003)


# --- rendering -------------------------------------------------------------------------------------


def test_render_shape_dtype_and_content(env):
    env.reset(0)
    small = env.render("front", 224, 224)
    assert small.shape == (224, 224, 3) and small.dtype == np.uint8
    assert small.std() > 10  # a scene, not a blank frame
    big = env.render("front", 320, 240)
    assert big.shape == (240, 320, 3)
    again = env.render("front", 224, 224)
    np.testing.assert_array_equal(small, again)  # same state, same picture
    env.set_joint_targets(env.joint_positions() + np.array([0.6, 0.4, 0, 0, 0, 0]))
    env.step(0.5)
    assert np.abs(env.render("front", 224, 224).astype(int) - small).mean() > 0.5
    with pytest.raises(KeyError, match="front"):
        env.render("top")


def test_render_mesh_simplification_keeps_physics(env):
    from twinbrain_ros.sim.env import SimEnv

    suite = env.suite
    full = dataclasses.replace(suite, scene=dataclasses.replace(suite.scene, render_mesh_cell=0.0))
    e2 = SimEnv(full)
    try:
        for e in (env, e2):
            e.reset(9, "lift_red_cube")
            e.set_joint_targets([0.3, -0.5, 0.5, 0.8, 0.2, 0.5])
            e.step(0.3)
        np.testing.assert_allclose(env.data.qpos, e2.data.qpos, atol=1e-9)
        assert e2.model.nmesh < env.model.nmesh
    finally:
        e2.close()
