# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Task suites as data: the scene, its objects, how episodes are randomised, and the tasks.

A task suite is one YAML file (``config/tasks/<name>.yaml``). It describes the tabletop scene
(physics step, table, cameras, robot home pose), the task objects (cubes with a colour, size and
mass), how an episode is randomised (object spawn region, yaw, minimum spacing, home-pose noise) and
the tasks. A task names a success *predicate kind* (``touch`` or ``lift``), the object it is about,
its instruction and thresholds; adding a task is adding YAML, not code.

Predicates (all distances in metres, in the world frame, the table top at z = 0):

- ``touch``: the gripper's tool point (between the fingertips) is within ``threshold`` of the
  object's centre.
- ``lift``: the object's bottom is at least ``lift_height`` above the table *and* the tool point is
  within ``threshold`` of the object's centre (the object is held, not thrown).

Usage:
    suite = load_task_suite("so101_tasks")          # a name under config/tasks, or a YAML path
    task = suite.task("touch_red_cube")
    status = evaluate_task(task, suite, tcp_pos, object_positions)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from twinbrain_ros.core.validation import ValidationError

TASK_KINDS = ("touch", "lift")
CAMERA_MOUNTS = ("world", "tcp")


@dataclass(frozen=True)
class CameraDef:
    """A scene camera: position, the point it looks at and its vertical field of view.

    ``mount`` is the frame ``pos``, ``lookat`` and ``up`` are given in: ``world`` (a fixed camera) or
    ``tcp``, the tool-point frame on the gripper (x out along the jaws, z from the fixed jaw towards
    the moving jaw), for a wrist camera that moves with the hand. ``up`` is the direction that shows
    as up in the image (world z for fixed cameras).
    """

    name: str
    pos: tuple[float, float, float]
    lookat: tuple[float, float, float]
    fovy: float
    mount: str = "world"
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)


@dataclass(frozen=True)
class SceneSpec:
    """Physics and static scene settings."""

    timestep: float
    arm_gravity_compensation: bool
    table_size: tuple[float, float]
    table_center: tuple[float, float]
    table_height: float
    table_rgba: tuple[float, float, float, float]
    cameras: tuple[CameraDef, ...]
    home: tuple[float, ...]
    home_noise: float
    render_mesh_cell: float = 0.0
    render_samples: int = 4


@dataclass(frozen=True)
class ObjectSpec:
    """A free cube on the table."""

    name: str
    size: float
    rgba: tuple[float, float, float, float]
    mass: float
    friction: float

    @property
    def half(self) -> float:
        """Half the edge length."""
        return 0.5 * self.size


@dataclass(frozen=True)
class SpawnSpec:
    """Where objects appear at reset (uniform in the box, rejection-sampled for spacing)."""

    x: tuple[float, float]
    y: tuple[float, float]
    yaw: tuple[float, float]
    min_separation: float


@dataclass(frozen=True)
class TaskSpec:
    """One task: a predicate kind about one object, with its instruction and thresholds."""

    name: str
    kind: str
    object: str
    instruction: str
    threshold: float
    lift_height: float
    time_limit_s: float


@dataclass(frozen=True)
class TaskStatus:
    """Where an episode stands with respect to its task.

    Attributes:
        success: the success condition holds now.
        distance: tool point to the task object's centre, metres.
        height: the object's bottom above the table, metres.
        message: a short human-readable summary.
    """

    success: bool
    distance: float
    height: float
    message: str


@dataclass(frozen=True)
class TaskSuite:
    """A validated task suite (see the module docstring)."""

    name: str
    scene: SceneSpec
    objects: tuple[ObjectSpec, ...]
    spawn: SpawnSpec
    tasks: tuple[TaskSpec, ...]
    source: str = ""

    @property
    def task_names(self) -> tuple[str, ...]:
        """Task names in file order."""
        return tuple(t.name for t in self.tasks)

    @property
    def object_names(self) -> tuple[str, ...]:
        """Object names in file order (the order of every object pose array)."""
        return tuple(o.name for o in self.objects)

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``; raises KeyError naming the known tasks."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"task '{name}' is not in suite '{self.name}' (tasks: {list(self.task_names)})")

    def object(self, name: str) -> ObjectSpec:
        """The object called ``name``; raises KeyError naming the known objects."""
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"object '{name}' is not in suite '{self.name}' (objects: {list(self.object_names)})")


# --- parsing -----------------------------------------------------------------------------------------


class _Reader:
    """Collects every problem while reading typed fields out of nested mappings."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def mapping(self, d: Any, key: str, where: str) -> dict:
        v = d.get(key) if isinstance(d, dict) else None
        if not isinstance(v, dict):
            self.problems.append(f"{where}.{key} must be a mapping")
            return {}
        return v

    def num(
        self,
        d: dict,
        key: str,
        where: str,
        default: float | None = None,
        *,
        low: float | None = None,
        high: float | None = None,
        positive: bool = False,
    ) -> float:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.problems.append(f"{where}.{key} must be a finite number, got {v!r}")
            return float("nan")
        if positive and v <= 0:
            self.problems.append(f"{where}.{key} must be > 0, got {v!r}")
        if low is not None and v < low or high is not None and v > high:
            self.problems.append(f"{where}.{key} = {v!r} is outside [{low}, {high}]")
        return float(v)

    def vec(self, d: dict, key: str, where: str, n: int, default: Any = None) -> tuple[float, ...]:
        v = d.get(key, default)
        if (
            not isinstance(v, (list, tuple))
            or len(v) != n
            or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
            )
        ):
            self.problems.append(f"{where}.{key} must be a list of {n} finite numbers, got {v!r}")
            return tuple([float("nan")] * n)
        return tuple(float(x) for x in v)

    def range(self, d: dict, key: str, where: str) -> tuple[float, float]:
        lo, hi = self.vec(d, key, where, 2)
        if lo == lo and hi == hi and lo > hi:
            self.problems.append(f"{where}.{key}: lower {lo} must be <= upper {hi}")
        return lo, hi

    def text(self, d: dict, key: str, where: str) -> str:
        v = d.get(key)
        if not isinstance(v, str) or not v:
            self.problems.append(f"{where}.{key} must be a non-empty string, got {v!r}")
            return "?"
        return v


def parse_task_suite(data: Any, source: str = "<dict>") -> TaskSuite:
    """Validate task-suite data (parsed YAML) and build a :class:`TaskSuite`.

    Raises:
        ValidationError: listing every problem, each naming the field.
    """
    if not isinstance(data, dict):
        raise ValidationError([f"{source}: a task suite must be a mapping, got {type(data).__name__}"])
    r = _Reader()
    name = r.text(data, "name", "suite")
    s = r.mapping(data, "scene", "suite")
    table = r.mapping(s, "table", "scene")
    cams = []
    raw_cams = s.get("cameras")
    if not isinstance(raw_cams, dict) or not raw_cams:
        r.problems.append(
            "scene.cameras must be a non-empty mapping name -> {pos, lookat, fovy[, mount, up]}"
        )
        raw_cams = {}
    for cname, c in raw_cams.items():
        where = f"scene.cameras.{cname}"
        if not isinstance(c, dict):
            r.problems.append(f"{where} must be a mapping")
            continue
        mount = c.get("mount", "world")
        if mount not in CAMERA_MOUNTS:
            r.problems.append(f"{where}.mount must be one of {list(CAMERA_MOUNTS)}, got {mount!r}")
            mount = "world"
        cam = CameraDef(
            str(cname),
            r.vec(c, "pos", where, 3),
            r.vec(c, "lookat", where, 3),
            r.num(c, "fovy", where, 45.0, low=1.0, high=170.0),
            mount=mount,
            up=r.vec(c, "up", where, 3, [0.0, 0.0, 1.0]),
        )
        fwd = np.subtract(cam.lookat, cam.pos)
        if np.all(np.isfinite(fwd)) and np.all(np.isfinite(cam.up)):
            if np.linalg.norm(fwd) < 1e-9:
                r.problems.append(f"{where}: lookat equals pos, the view direction is undefined")
            elif np.linalg.norm(np.cross(fwd / np.linalg.norm(fwd), cam.up)) < 1e-6:
                r.problems.append(
                    f"{where}: up {list(cam.up)} is parallel to the view direction (roll undefined)"
                )
        cams.append(cam)
    home = s.get("home")
    if (
        not isinstance(home, list)
        or not home
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in home)
    ):
        r.problems.append(f"scene.home must be a list of joint positions, got {home!r}")
        home = []
    gc = s.get("arm_gravity_compensation", True)
    if not isinstance(gc, bool):
        r.problems.append(f"scene.arm_gravity_compensation must be true or false, got {gc!r}")
        gc = True
    scene = SceneSpec(
        timestep=r.num(s, "timestep", "scene", 0.002, low=1e-4, high=0.02),
        arm_gravity_compensation=gc,
        table_size=r.vec(table, "size", "scene.table", 2),
        table_center=r.vec(table, "center", "scene.table", 2, [0.0, 0.0]),
        table_height=r.num(table, "height", "scene.table", 0.75, positive=True),
        table_rgba=r.vec(table, "rgba", "scene.table", 4, [0.6, 0.5, 0.4, 1.0]),
        cameras=tuple(cams),
        home=tuple(float(x) for x in home),
        home_noise=r.num(s, "home_noise", "scene", 0.0, low=0.0, high=0.5),
        render_mesh_cell=r.num(s, "render_mesh_cell", "scene", 0.0, low=0.0, high=0.02),
        render_samples=int(r.num(s, "render_samples", "scene", 4, low=0, high=16)),
    )

    objects = []
    raw_objs = data.get("objects")
    if not isinstance(raw_objs, list) or not raw_objs:
        r.problems.append("objects must be a non-empty list")
        raw_objs = []
    for i, o in enumerate(raw_objs):
        where = f"objects[{i}]"
        if not isinstance(o, dict):
            r.problems.append(f"{where} must be a mapping")
            continue
        on = r.text(o, "name", where)
        if on in [x.name for x in objects]:
            r.problems.append(f"{where}.name '{on}' is duplicated")
        objects.append(
            ObjectSpec(
                name=on,
                size=r.num(o, "size", where, low=0.005, high=0.2),
                rgba=r.vec(o, "rgba", where, 4),
                mass=r.num(o, "mass", where, 0.03, positive=True),
                friction=r.num(o, "friction", where, 1.0, positive=True),
            )
        )

    sp = r.mapping(data, "spawn", "suite")
    spawn = SpawnSpec(
        x=r.range(sp, "x", "spawn"),
        y=r.range(sp, "y", "spawn"),
        yaw=r.range(sp, "yaw", "spawn"),
        min_separation=r.num(sp, "min_separation", "spawn", 0.0, low=0.0, high=1.0),
    )

    tasks = []
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        r.problems.append("tasks must be a non-empty mapping name -> task")
        raw_tasks = {}
    obj_names = [o.name for o in objects]
    for tname, t in raw_tasks.items():
        where = f"tasks.{tname}"
        if not isinstance(t, dict):
            r.problems.append(f"{where} must be a mapping")
            continue
        kind = t.get("kind")
        if kind not in TASK_KINDS:
            r.problems.append(f"{where}.kind must be one of {list(TASK_KINDS)}, got {kind!r}")
        obj = r.text(t, "object", where)
        if obj != "?" and obj not in obj_names:
            r.problems.append(f"{where}.object '{obj}' is not a scene object (objects: {obj_names})")
        tasks.append(
            TaskSpec(
                name=str(tname),
                kind=str(kind),
                object=obj,
                instruction=r.text(t, "instruction", where),
                threshold=r.num(t, "threshold", where, 0.03, positive=True),
                lift_height=r.num(t, "lift_height", where, 0.05, low=0.0, high=1.0),
                time_limit_s=r.num(t, "time_limit_s", where, 15.0, positive=True),
            )
        )
    if r.problems:
        raise ValidationError([f"{source}: {p}" for p in r.problems])
    return TaskSuite(
        name=name, scene=scene, objects=tuple(objects), spawn=spawn, tasks=tuple(tasks), source=source
    )


def task_search_dirs() -> list[Path]:
    """Where suite names are looked up: $TWINBRAIN_TASKS_PATH, the source tree, the share dir."""
    dirs = [Path(p) for p in os.environ.get("TWINBRAIN_TASKS_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "config" / "tasks")
    try:  # an installed ROS package keeps config/ under share/
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("twinbrain_ros")) / "config" / "tasks")
    except Exception:  # noqa: BLE001 - ament index missing or package not installed
        pass
    return dirs


def load_task_suite(name_or_path: str = "so101_tasks") -> TaskSuite:
    """Load and validate a task suite by name (``so101_tasks``) or YAML path.

    Raises:
        FileNotFoundError: naming the directories searched.
        ValidationError: listing every problem in the file.
    """
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.exists()):
        found = [
            d / f"{name_or_path}.yaml" for d in task_search_dirs() if (d / f"{name_or_path}.yaml").exists()
        ]
        if not found:
            raise FileNotFoundError(
                f"task suite '{name_or_path}' not found as a file or in "
                f"{[str(d) for d in task_search_dirs()]}"
            )
        p = found[0]
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValidationError([f"{p}: not valid YAML: {e}"]) from e
    return parse_task_suite(data, source=str(p))


# --- success predicates ------------------------------------------------------------------------------


def evaluate_task(
    task: TaskSpec, suite: TaskSuite, tcp_pos: np.ndarray, object_positions: Mapping[str, np.ndarray]
) -> TaskStatus:
    """Evaluate ``task``'s success predicate on ground truth.

    Args:
        task: the task.
        suite: the suite it belongs to (for the object's size).
        tcp_pos: (3,) world position of the gripper's tool point.
        object_positions: object name -> (3,) world position of its centre.

    Returns:
        The task status.
    """
    obj = suite.object(task.object)
    p = np.asarray(object_positions[task.object], dtype=np.float64)
    dist = float(np.linalg.norm(np.asarray(tcp_pos, dtype=np.float64) - p))
    height = float(p[2] - obj.half)
    near = dist <= task.threshold
    if task.kind == "touch":
        ok = near
        msg = f"{task.object}: tool point {dist * 100:.1f} cm away (threshold {task.threshold * 100:.1f} cm)"
    elif task.kind == "lift":
        lifted = height >= task.lift_height
        ok = near and lifted
        msg = (
            f"{task.object}: lifted {height * 100:.1f} cm (need {task.lift_height * 100:.1f}), "
            f"tool point {dist * 100:.1f} cm away (threshold {task.threshold * 100:.1f} cm)"
        )
    else:  # parse_task_suite rejects unknown kinds; this guards hand-built specs
        raise ValueError(f"unknown task kind {task.kind!r} (known: {list(TASK_KINDS)})")
    return TaskStatus(
        success=bool(ok), distance=dist, height=height, message=("success: " if ok else "not yet: ") + msg
    )
