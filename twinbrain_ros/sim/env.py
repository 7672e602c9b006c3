# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""ROS-free MuJoCo simulation of the SO-101 tabletop scene.

:class:`SimEnv` owns the compiled scene (:mod:`twinbrain_ros.sim.scene`), one ``MjData`` and lazily
created offscreen renderers. It knows nothing about ROS: ``sim_node`` wraps it for the ROS graph,
and tests and benchmarks drive it directly.

- :meth:`SimEnv.reset` places the objects and the arm from a seed, so a seed reproduces an episode
  (the same seed and the same command sequence give bit-identical states on one machine).
- Joint targets go to the model's position actuators (``data.ctrl``), clipped to their ranges.
- :attr:`SimEnv.sim_time` never goes backwards, not even across resets (``/clock`` must be monotonic
  for every ROS node): a reset advances it by one physics step, so the new episode's first state has
  a stamp of its own. :attr:`SimEnv.episode_time` restarts at 0 with each episode.
- Rendering uses EGL when ``MUJOCO_GL=egl`` (set it before importing mujoco); shadows and reflections
  are off, which makes a frame several times cheaper on a software renderer.

Usage:
    with SimEnv("so101_tasks") as env:
        info = env.reset(seed=3, task="touch_red_cube")
        env.set_joint_targets(env.joint_positions())
        env.step(0.05)
        frame = env.render("front", 224, 224)        # (224, 224, 3) uint8
        env.task_status().success

    python -m twinbrain_ros.sim.env --width 224 --height 224     # speed with and without rendering
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import mujoco
import numpy as np

from twinbrain_ros.core.embodiment import Embodiment
from twinbrain_ros.core.validation import ValidationError
from twinbrain_ros.sim.scene import ROBOT_JOINTS, Scene, build_scene
from twinbrain_ros.sim.tasks import TaskSpec, TaskStatus, TaskSuite, evaluate_task, load_task_suite

MAX_SPAWN_TRIES = 1000


@dataclass(frozen=True)
class EpisodeInfo:
    """What :meth:`SimEnv.reset` started."""

    episode: int
    seed: int
    task: str
    instruction: str
    start_time: float


@dataclass(frozen=True)
class ObjectPose:
    """World pose of an object's centre: position (3,) and quaternion (w, x, y, z)."""

    pos: np.ndarray
    quat: np.ndarray

    @property
    def yaw(self) -> float:
        """Rotation about world z (of the object's x axis), rad."""
        w, x, y, z = self.quat
        return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


class SimEnv:
    """The simulated SO-101 with task objects (see the module docstring)."""

    joint_names: tuple[str, ...] = ROBOT_JOINTS

    def __init__(
        self, suite: str | TaskSuite = "so101_tasks", offscreen: tuple[int, int] = (640, 480)
    ) -> None:
        """Build the scene.

        Args:
            suite: a task-suite name or path, or a loaded :class:`TaskSuite`.
            offscreen: the largest (width, height) :meth:`render` will be asked for.
        """
        self.suite = suite if isinstance(suite, TaskSuite) else load_task_suite(suite)
        self.scene: Scene = build_scene(self.suite, offscreen)
        self.model = self.scene.model
        self.data = mujoco.MjData(self.model)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._time_offset = 0.0
        self._episode = -1
        self._task: TaskSpec = self.suite.tasks[0]
        self._info: EpisodeInfo | None = None
        self._first_success: float | None = None
        self.reset(0, self._task.name)
        self._episode = -1

    # --- episode ------------------------------------------------------------------------------------

    def reset(self, seed: int, task: str | None = None) -> EpisodeInfo:
        """Start an episode: objects and arm placed from ``seed``, targets = the initial arm pose.

        Args:
            seed: any integer >= 0; the same seed gives the same initial state.
            task: task name; None keeps the current task.

        Raises:
            KeyError: naming the known tasks if ``task`` is unknown.
            ValueError: if ``seed`` is negative.
        """
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        spec = self.suite.task(task) if task is not None else self._task
        # A reset takes one physics step of sim time, so no state before it shares a stamp with the
        # new episode's first state.
        self._time_offset += float(self.data.time) + self.timestep
        rng = np.random.default_rng(int(seed))
        m, d, sc = self.model, self.data, self.scene
        mujoco.mj_resetData(m, d)
        home = np.asarray(self.suite.scene.home, dtype=np.float64)
        noise = self.suite.scene.home_noise
        q0 = np.clip(
            home + rng.uniform(-noise, noise, size=home.shape), sc.ctrl_range[:, 0], sc.ctrl_range[:, 1]
        )
        d.qpos[sc.arm_qpos_adr] = q0
        d.ctrl[sc.actuator_ids] = q0
        for name, (pos, yaw) in self._sample_objects(rng).items():
            adr = sc.object_qpos_adr[name]
            d.qpos[adr : adr + 3] = pos
            d.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        mujoco.mj_forward(m, d)
        self._task = spec
        self._episode += 1
        self._first_success = None
        self._info = EpisodeInfo(self._episode, int(seed), spec.name, spec.instruction, self.sim_time)
        return self._info

    def _sample_objects(self, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, float]]:
        sp = self.suite.spawn
        for _ in range(MAX_SPAWN_TRIES):
            xy = np.stack(
                [
                    rng.uniform(*sp.x, size=len(self.suite.objects)),
                    rng.uniform(*sp.y, size=len(self.suite.objects)),
                ],
                axis=1,
            )
            gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
            if gaps.min() >= sp.min_separation:
                break
        else:
            raise ValidationError(
                [
                    f"{self.suite.source}: could not place {len(xy)} objects "
                    f"{sp.min_separation} m apart in x {sp.x}, y {sp.y}"
                ]
            )
        yaws = rng.uniform(*sp.yaw, size=len(self.suite.objects))
        return {
            o.name: (np.array([xy[i, 0], xy[i, 1], o.half]), float(yaws[i]))
            for i, o in enumerate(self.suite.objects)
        }

    @property
    def episode(self) -> EpisodeInfo | None:
        """The current episode (None before the first explicit reset)."""
        return self._info if self._episode >= 0 else None

    @property
    def task(self) -> TaskSpec:
        """The current task."""
        return self._task

    # --- time and stepping --------------------------------------------------------------------------

    @property
    def timestep(self) -> float:
        """Physics step, s."""
        return float(self.model.opt.timestep)

    @property
    def sim_time(self) -> float:
        """Simulated seconds since construction; monotonic across resets."""
        return self._time_offset + float(self.data.time)

    @property
    def episode_time(self) -> float:
        """Simulated seconds since the last reset."""
        return float(self.data.time)

    def set_joint_targets(self, q) -> None:
        """Set the position actuators' targets (ROBOT_JOINTS order), clipped to their ranges.

        Raises:
            ValueError: if ``q`` has the wrong length or non-finite values.
        """
        q = np.asarray(q, dtype=np.float64).ravel()
        if q.shape != (len(ROBOT_JOINTS),) or not np.all(np.isfinite(q)):
            raise ValueError(f"joint targets must be {len(ROBOT_JOINTS)} finite values, got {q.tolist()}")
        sc = self.scene
        self.data.ctrl[sc.actuator_ids] = np.clip(q, sc.ctrl_range[:, 0], sc.ctrl_range[:, 1])

    def step(self, dt: float | None = None) -> float:
        """Advance the physics by ``dt`` seconds (rounded to whole physics steps, at least one).

        Returns:
            The new :attr:`sim_time`.
        """
        n = 1 if dt is None else max(1, int(round(dt / self.timestep)))
        mujoco.mj_step(self.model, self.data, nstep=n)
        if self._first_success is None and self.task_status().success:
            self._first_success = self.episode_time
        return self.sim_time

    # --- state ----------------------------------------------------------------------------------------

    def joint_positions(self) -> np.ndarray:
        """(6,) joint positions in ROBOT_JOINTS order."""
        return self.data.qpos[self.scene.arm_qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        """(6,) joint velocities."""
        return self.data.qvel[self.scene.arm_dof_adr].copy()

    def joint_targets(self) -> np.ndarray:
        """(6,) current actuator targets."""
        return self.data.ctrl[self.scene.actuator_ids].copy()

    def tcp_position(self) -> np.ndarray:
        """(3,) world position of the gripper's tool point."""
        return self.data.site_xpos[self.scene.tcp_site].copy()

    def object_poses(self) -> dict[str, ObjectPose]:
        """Object name -> world pose, in the suite's object order."""
        out = {}
        for name, adr in self.scene.object_qpos_adr.items():
            q = self.data.qpos[adr : adr + 7]
            out[name] = ObjectPose(q[:3].copy(), q[3:7].copy())
        return out

    def task_status(self) -> TaskStatus:
        """Evaluate the current task's success predicate on the current state."""
        pos = {n: p.pos for n, p in self.object_poses().items()}
        return evaluate_task(self._task, self.suite, self.tcp_position(), pos)

    @property
    def first_success_time(self) -> float | None:
        """Episode time at which the task first succeeded (checked after each :meth:`step`)."""
        return self._first_success

    # --- contract -------------------------------------------------------------------------------------

    def check_embodiment(self, emb: Embodiment) -> None:
        """Check that the contract fits this scene: joint order, limits within the actuators, cameras.

        Raises:
            ValidationError: listing every mismatch, naming the contract and the scene.
        """
        problems = []
        if tuple(emb.joint_names) != ROBOT_JOINTS:
            problems.append(
                f"joint order differs: embodiment '{emb.name}' {list(emb.joint_names)} vs "
                f"sim scene {list(ROBOT_JOINTS)}"
            )
        else:
            lo, hi = self.scene.ctrl_range[:, 0], self.scene.ctrl_range[:, 1]
            for i, n in enumerate(ROBOT_JOINTS):
                if emb.limits.lower[i] < lo[i] - 1e-3 or emb.limits.upper[i] > hi[i] + 1e-3:
                    problems.append(
                        f"joint '{n}' limits differ: embodiment '{emb.name}' "
                        f"[{emb.limits.lower[i]:.5f}, {emb.limits.upper[i]:.5f}] vs sim actuator "
                        f"[{lo[i]:.5f}, {hi[i]:.5f}]"
                    )
        missing = [c for c in emb.camera_names if c not in self.scene.camera_ids]
        if missing:
            problems.append(
                f"cameras {missing} of embodiment '{emb.name}' are not in the sim scene "
                f"(scene cameras: {sorted(self.scene.camera_ids)})"
            )
        off = (self.model.vis.global_.offwidth, self.model.vis.global_.offheight)
        for c in emb.cameras:
            if c.width > off[0] or c.height > off[1]:
                problems.append(
                    f"camera '{c.name}' {c.width}x{c.height} of embodiment '{emb.name}' exceeds "
                    f"the sim's offscreen buffer {off[0]}x{off[1]}"
                )
        if problems:
            raise ValidationError(problems)

    # --- rendering ------------------------------------------------------------------------------------

    def render(self, camera: str, width: int = 224, height: int = 224) -> np.ndarray:
        """Render ``camera`` offscreen to a (height, width, 3) uint8 RGB array.

        Raises:
            KeyError: naming the scene's cameras if ``camera`` is unknown.
            ValueError: if the size exceeds the offscreen buffer given at construction.
        """
        if camera not in self.scene.camera_ids:
            raise KeyError(
                f"camera '{camera}' is not in the scene (cameras: {sorted(self.scene.camera_ids)})"
            )
        key = (int(width), int(height))
        r = self._renderers.get(key)
        if r is None:
            r = mujoco.Renderer(self.model, height=key[1], width=key[0])
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._renderers[key] = r
        r.update_scene(self.data, camera=self.scene.camera_ids[camera])
        return r.render()

    def close(self) -> None:
        """Release the renderers' GL contexts (call it explicitly: EGL complains in ``__del__``)."""
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def benchmark(
    env: SimEnv,
    camera: str,
    width: int,
    height: int,
    seconds: float = 2.0,
    camera_hz: float = 30.0,
    control_hz: float = 100.0,
) -> dict[str, float]:
    """Measure simulation speed: physics steps/s alone and with a frame every 1/camera_hz of sim time.

    Returns:
        ``physics_steps_per_s``, ``render_ms`` (one frame), ``steps_per_s_with_render`` and
        ``real_time_factor_with_render`` (sim seconds per wall second while rendering).
    """
    env.reset(0)
    env.set_joint_targets(env.joint_positions())
    n = int(seconds / env.timestep)
    t = time.perf_counter()
    env.step(n * env.timestep)
    physics = n / (time.perf_counter() - t)
    env.render(camera, width, height)  # create the renderer outside the timing
    frames = max(3, int(seconds * camera_hz))
    t = time.perf_counter()
    for _ in range(frames):
        env.render(camera, width, height)
    render_ms = 1000.0 * (time.perf_counter() - t) / frames
    env.reset(0)
    steps_per_frame = max(1, int(round(1.0 / (control_hz * env.timestep))))
    per_frame = max(1, int(round(control_hz / camera_hz)))
    t = time.perf_counter()
    k = 0
    while env.episode_time < seconds:
        env.step(steps_per_frame * env.timestep)
        k += 1
        if k % per_frame == 0:
            env.render(camera, width, height)
    wall = time.perf_counter() - t
    return {
        "physics_steps_per_s": physics,
        "render_ms": render_ms,
        "steps_per_s_with_render": env.episode_time / env.timestep / wall,
        "real_time_factor_with_render": env.episode_time / wall,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the simulation speed for one camera resolution."""
    ap = argparse.ArgumentParser(description="SO-101 sim speed with and without rendering")
    ap.add_argument("--suite", default="so101_tasks")
    ap.add_argument("--camera", default="front")
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--camera-hz", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=2.0, help="simulated seconds per measurement")
    a = ap.parse_args(argv)
    with SimEnv(a.suite, offscreen=(max(640, a.width), max(480, a.height))) as env:
        r = benchmark(env, a.camera, a.width, a.height, a.seconds, a.camera_hz)
    print(
        f"physics alone: {r['physics_steps_per_s']:.0f} steps/s ({env.timestep * 1000:g} ms steps); "
        f"one {a.width}x{a.height} frame: {r['render_ms']:.1f} ms; with a frame every "
        f"{1000 / a.camera_hz:.1f} ms of sim time: {r['steps_per_s_with_render']:.0f} steps/s = "
        f"{r['real_time_factor_with_render']:.2f}x real time"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
