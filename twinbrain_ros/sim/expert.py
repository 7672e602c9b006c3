# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Scripted expert for the simulated SO-101: ground truth in, joint position targets out.

It stands in for a teleoperator when recording demonstrations. Given the time, the measured joint
positions and the objects' poses (the simulator's ground truth) it returns the next joint targets,
following a small phase machine per task kind:

- ``touch``: reach a hover pose above the object (joint-space, minimum-jerk), descend vertically with
  the jaws open until they straddle the object, hold.
- ``lift``: the same approach, close the jaws, lift, hold; if the object is not in the hand after the
  lift it opens, backs off and tries again (a few times).

Recovery demonstrations: with ``ExpertConfig.miss_prob`` > 0 the first grasp attempt of an episode is,
with that probability, aimed deliberately off the object's centre (``miss_offset`` metres, in a random
horizontal direction), so the recording shows a closed empty hand after the lift and the re-grasp that
follows. A policy trained only on clean first-try grasps never sees that state and does not recover
from its own misses (the DART argument, Laskey et al. 2017, applied to the grasp). The miss draws use
their own random stream: with ``miss_prob`` = 0 every episode is exactly what it was without it.

Poses become joint targets through :class:`ArmIK`: damped least squares on MuJoCo Jacobians, on a
private ``MjData`` of the same scene (never the simulator's), position first and the gripper's
orientation (pointing down, jaws across a pair of the cube's faces) in the position task's null
space, with joints at their limits taken out of the solve. Each episode draws its variation from its
seed: speed, hover height and offset, grasp height, jaw opening, pauses, lift height and the choice
among equivalent grasp axes, so demonstrations differ while staying successful.

:func:`run_episode` is the ROS-free rollout loop used to measure the success rate:

    python -m twinbrain_ros.sim.expert --episodes 50 --tasks touch_red_cube lift_red_cube

Usage:
    expert = ScriptedExpert(env.scene)
    expert.reset(env.task, seed=7)
    q_target = expert.act(env.episode_time, env.joint_positions(), env.object_poses())
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Mapping

import mujoco
import numpy as np

from twinbrain_ros.sim.scene import Scene
from twinbrain_ros.sim.tasks import TaskSpec

N_ARM = 5  # joints moved by IK; index 5 is the gripper
GRIPPER = 5


def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 - 15.0 * s + 6.0 * s * s)


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2.0 * np.pi) - np.pi)


def _damped_pinv(j: np.ndarray, lam: float) -> np.ndarray:
    return j.T @ np.linalg.inv(j @ j.T + (lam * lam) * np.eye(j.shape[0]))


class ArmIK:
    """Inverse kinematics of the tool point on a private copy of the scene's kinematics."""

    def __init__(self, scene: Scene, damping: float = 0.01, max_step: float = 0.25) -> None:
        """Set up the private MjData.

        Args:
            scene: the compiled scene (only its model is used, never the simulator's data).
            damping: DLS damping factor.
            max_step: largest joint change per iteration, rad.
        """
        self.model = scene.model
        self.data = mujoco.MjData(self.model)
        self.qadr = scene.arm_qpos_adr
        self.dof = scene.arm_dof_adr[:N_ARM]
        self.site = scene.tcp_site
        self.lo = scene.ctrl_range[:, 0]
        self.hi = scene.ctrl_range[:, 1]
        self.damping = damping
        self.max_step = max_step
        self._jp = np.zeros((3, self.model.nv))
        self._jr = np.zeros((3, self.model.nv))

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool point position (3,) and orientation (3, 3) for joint positions ``q`` (6,)."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(
        self, q_init: np.ndarray, pos: np.ndarray, rot: np.ndarray | None, iters: int = 60, tol: float = 2e-4
    ) -> tuple[np.ndarray, float]:
        """Joint positions that put the tool point at ``pos`` with orientation close to ``rot``.

        Args:
            q_init: (6,) start (warm start from the previous solution to stay on one branch).
            pos: (3,) target tool-point position, world frame.
            rot: (3, 3) target tool orientation (columns: approach, -, jaw axis), or None for
                position only. Orientation is secondary: it never costs position accuracy.
            iters: iteration limit.
            tol: position tolerance, m.

        Returns:
            (q, position error in m). The gripper entry is copied from ``q_init``.
        """
        q = np.array(q_init, dtype=np.float64)
        lo, hi = self.lo[:N_ARM], self.hi[:N_ARM]
        err = np.inf
        for _ in range(iters):
            p, r = self.fk(q)
            ep = pos - p
            err = float(np.linalg.norm(ep))
            er = np.zeros(3) if rot is None else 0.5 * sum(np.cross(r[:, k], rot[:, k]) for k in range(3))
            if err < tol and np.linalg.norm(er) < 2e-3:
                break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
            jp, jr = self._jp[:, self.dof], self._jr[:, self.dof]
            free = np.ones(N_ARM, dtype=bool)
            for _ in range(3):  # drop joints that sit at a limit and would be pushed past it
                dq = self._step(jp * free, jr * free, ep, er if rot is not None else None)
                qa = q[:N_ARM]
                blocked = free & (((qa <= lo + 1e-6) & (dq < 0)) | ((qa >= hi - 1e-6) & (dq > 0)))
                if not blocked.any():
                    break
                free &= ~blocked
            n = np.linalg.norm(dq)
            if n > self.max_step:
                dq *= self.max_step / n
            q[:N_ARM] = np.clip(q[:N_ARM] + dq, lo, hi)
        return q, err

    def _step(self, jp: np.ndarray, jr: np.ndarray, ep: np.ndarray, er: np.ndarray | None) -> np.ndarray:
        jp_pinv = _damped_pinv(jp, self.damping)
        dq = jp_pinv @ ep
        if er is not None:
            null = np.eye(N_ARM) - jp_pinv @ jp
            jrn = jr @ null
            dq = dq + null @ (_damped_pinv(jrn, 0.05) @ (er - jr @ dq))
        return dq


def top_down_rotation(jaw_yaw: float) -> np.ndarray:
    """Tool orientation pointing straight down with the jaws closing along world yaw ``jaw_yaw``."""
    approach = np.array([0.0, 0.0, -1.0])
    jaw = np.array([np.cos(jaw_yaw), np.sin(jaw_yaw), 0.0])
    return np.stack([approach, np.cross(jaw, approach), jaw], axis=1)


@dataclass(frozen=True)
class ExpertConfig:
    """Ranges the per-episode variation is drawn from (uniform), and fixed gains.

    Heights are of the tool point above the object's centre unless noted; speeds in m/s.
    """

    speed: tuple[float, float] = (0.10, 0.16)
    hover: tuple[float, float] = (0.045, 0.07)
    hover_offset: float = 0.015
    touch_height: tuple[float, float] = (0.0, 0.008)
    grasp_height: tuple[float, float] = (0.002, 0.008)
    jaw_clearance: tuple[float, float] = (0.005, 0.009)
    jaw_open: tuple[float, float] = (0.6, 0.85)
    jaw_closed: float = -0.17
    close_time: tuple[float, float] = (0.5, 0.8)
    pause: tuple[float, float] = (0.0, 0.25)
    lift: tuple[float, float] = (0.075, 0.10)
    min_reach_time: float = 0.8
    settle_tol: float = 0.02
    settle_timeout: float = 1.0
    max_attempts: int = 3
    miss_prob: float = 0.0
    miss_offset: tuple[float, float] = (0.02, 0.03)

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.miss_prob <= 1.0:
            problems.append(f"miss_prob: {self.miss_prob} is not in [0, 1]")
        if not 0.0 <= self.miss_offset[0] <= self.miss_offset[1]:
            problems.append(f"miss_offset: {self.miss_offset} is not an interval 0 <= low <= high (m)")
        if self.max_attempts < 1:
            problems.append(f"max_attempts: {self.max_attempts} < 1")
        if problems:
            raise ValueError("ExpertConfig: " + "; ".join(problems))


class ScriptedExpert:
    """Phase machine producing joint targets from ground truth (see the module docstring)."""

    def __init__(self, scene: Scene, config: ExpertConfig | None = None) -> None:
        """Prepare the IK on a private copy of ``scene``'s model."""
        self.scene = scene
        self.cfg = config or ExpertConfig()
        self.ik = ArmIK(scene)
        self.task: TaskSpec | None = None
        self.phase = "idle"
        self.attempt = 0
        self._rng = np.random.default_rng(0)

    # --- episode --------------------------------------------------------------------------------------

    def reset(self, task: TaskSpec, seed: int) -> None:
        """Start a new episode for ``task``; ``seed`` fixes this episode's variation."""
        self.task = task
        self._rng = np.random.default_rng([int(seed), 0x5EED])
        self.attempt = 0
        self.phase = "start"
        self._draw()
        # The deliberate miss has its own stream so that miss_prob = 0 leaves every episode unchanged.
        miss_rng = np.random.default_rng([int(seed), 0x3155])
        u, r = miss_rng.uniform(), miss_rng.uniform(*self.cfg.miss_offset)
        ang = miss_rng.uniform(0.0, 2.0 * np.pi)
        miss = task.kind == "lift" and u < self.cfg.miss_prob
        self._miss_first = r * np.array([np.cos(ang), np.sin(ang)]) if miss else np.zeros(2)
        self.miss_xy = np.zeros(2)

    def _draw(self) -> None:
        c, r = self.cfg, self._rng
        self.speed = r.uniform(*c.speed)
        self.hover_h = r.uniform(*c.hover)
        self.hover_xy = r.uniform(-c.hover_offset, c.hover_offset, size=2)
        self.touch_h = r.uniform(*c.touch_height)
        self.grasp_h = r.uniform(*c.grasp_height)
        self.clearance = r.uniform(*c.jaw_clearance)
        self.jaw_open = r.uniform(*c.jaw_open)
        self.close_t = r.uniform(*c.close_time)
        self.pause = r.uniform(*c.pause)
        self.lift_h = r.uniform(*c.lift)
        self.axis_bias = r.uniform(-0.3, 0.3)

    @property
    def done(self) -> bool:
        """Whether the expert has finished (holding the final pose) or given up."""
        return self.phase in ("hold", "failed")

    # --- policy -----------------------------------------------------------------------------------------

    def act(self, t: float, q: np.ndarray, objects: Mapping[str, object]) -> np.ndarray:
        """Next joint targets (6,) for time ``t`` (s), joint positions ``q`` (6,) and object poses.

        Args:
            t: episode time, s (only differences matter).
            q: measured joint positions in ROBOT_JOINTS order.
            objects: object name -> pose with ``pos`` (3,) and ``yaw`` (as :class:`ObjectPose`).

        Raises:
            RuntimeError: if called before :meth:`reset`.
        """
        if self.task is None:
            raise RuntimeError("ScriptedExpert.act() called before reset()")
        q = np.asarray(q, dtype=np.float64)
        obj = objects[self.task.object]
        obj_pos = np.asarray(obj.pos, dtype=np.float64)
        if self.phase == "start":
            self._begin_attempt(t, q, obj_pos, obj.yaw)
        return getattr(self, f"_phase_{self.phase}")(t, q, obj_pos)

    def _goto(self, phase: str, t: float) -> None:
        self.phase, self.t0 = phase, t

    def _begin_attempt(self, t: float, q: np.ndarray, obj_pos: np.ndarray, obj_yaw: float) -> None:
        self.attempt += 1
        self.miss_xy = self._miss_first if self.attempt == 1 else np.zeros(2)
        self.q_start = q.copy()
        self.rot = top_down_rotation(self._jaw_yaw(q, obj_pos, obj_yaw))
        self.q_cmd = q.copy()
        # Hover solution, warm-started from a pose that already points down (keeps one IK branch).
        seed = q.copy()
        seed[:N_ARM] = [-np.arctan2(obj_pos[1], obj_pos[0]), 0.0, 0.5, 1.2, seed[4]]
        self.q_hover, _ = self.ik.solve(seed, self._hover_pos(obj_pos), self.rot, iters=120)
        self.q_hover[GRIPPER] = self.jaw_open
        dist = np.linalg.norm(self.ik.fk(q)[0] - self._hover_pos(obj_pos))
        self.t_reach = max(
            self.cfg.min_reach_time, dist / self.speed + 0.3 * np.abs(_wrap(self.q_hover[4] - q[4]))
        )
        self._goto("reach", t)

    def _jaw_yaw(self, q: np.ndarray, obj_pos: np.ndarray, obj_yaw: float) -> float:
        """The face normal (mod 90 deg) closest to the wrist's natural radial jaw direction."""
        radial = np.arctan2(obj_pos[1], obj_pos[0])
        cands = obj_yaw + 0.5 * np.pi * np.arange(-4, 5)
        cost = np.abs(cands - radial + self.axis_bias)
        return float(cands[int(np.argmin(cost))])

    def _hover_pos(self, obj_pos: np.ndarray) -> np.ndarray:
        xy = self.hover_xy + self.miss_xy
        return obj_pos + np.array([xy[0], xy[1], self.hover_h])

    def _track(self, pos: np.ndarray) -> np.ndarray:
        self.q_cmd, _ = self.ik.solve(self.q_cmd, pos, self.rot)
        return self.q_cmd

    def _settled(self, q: np.ndarray, target: np.ndarray, t: float, tol: float | None = None) -> bool:
        tol = self.cfg.settle_tol if tol is None else tol
        return bool(np.max(np.abs(q[:N_ARM] - target[:N_ARM])) < tol or t - self.t0 > self.cfg.settle_timeout)

    def _phase_reach(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        # Follow the object if it moved: re-solve the hover pose from the last solution.
        self.q_hover, _ = self.ik.solve(self.q_hover, self._hover_pos(obj_pos), self.rot)
        s = _min_jerk((t - self.t0) / self.t_reach)
        self.q_cmd = self.q_start + s * (self.q_hover - self.q_start)
        if s >= 1.0:
            self.q_cmd = self.q_hover.copy()
            self._goto("settle_hover", t)
        return self.q_cmd

    def _phase_settle_hover(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        if self._settled(q, self.q_cmd, t) and t - self.t0 >= self.pause:
            self.p_from = self.ik.fk(self.q_cmd)[0]
            self._goto("descend", t)
        return self.q_cmd

    def _low_pos(self, obj_pos: np.ndarray) -> np.ndarray:
        # The tool point is the pad midpoint when the jaws hold the cube; the fixed jaw's pad then sits
        # 1 mm inside the cube's face. Shift away from the moving jaw so that the fixed jaw clears the
        # face on the way down; closing pushes the cube against it.
        h = self.touch_h if self.task.kind == "touch" else self.grasp_h
        aim = np.array([self.miss_xy[0], self.miss_xy[1], h])
        return obj_pos + aim - self.clearance * self.rot[:, 2]

    def _phase_descend(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        goal = self._low_pos(obj_pos)
        dur = max(0.6, 1.5 * np.linalg.norm(goal - self.p_from) / self.speed)
        s = _min_jerk((t - self.t0) / dur)
        self._track(self.p_from + s * (goal - self.p_from))
        if s >= 1.0:
            self._goto("settle_low", t)
        return self.q_cmd

    def _phase_settle_low(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        self._track(self._low_pos(obj_pos))
        if self._settled(q, self.q_cmd, t, tol=0.01):
            self._goto("hold" if self.task.kind == "touch" else "close", t)
        return self.q_cmd

    def _phase_close(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        s = min(1.0, (t - self.t0) / self.close_t)
        self.q_cmd[GRIPPER] = self.jaw_open + s * (self.cfg.jaw_closed - self.jaw_open)
        if t - self.t0 >= self.close_t + 0.2:
            self.p_from = self.ik.fk(self.q_cmd)[0]
            self._goto("lift", t)
        return self.q_cmd

    def _phase_lift(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        goal = self.p_from + np.array([0.0, 0.0, self.lift_h])
        dur = max(0.8, 1.5 * self.lift_h / self.speed)
        s = _min_jerk((t - self.t0) / dur)
        self.q_cmd, _ = self.ik.solve(self.q_cmd, self.p_from + s * (goal - self.p_from), self.rot)
        if s >= 1.0:
            self._goto("check", t)
        return self.q_cmd

    def _phase_check(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        if t - self.t0 < 0.4:
            return self.q_cmd
        obj = self.scene.suite.object(self.task.object)
        held = obj_pos[2] - obj.half >= 0.5 * self.lift_h
        if held:
            self._goto("hold", t)
        elif self.attempt >= self.cfg.max_attempts:
            self._goto("failed", t)
        else:
            self.q_cmd[GRIPPER] = self.jaw_open
            self._goto("retry", t)
        return self.q_cmd

    def _phase_retry(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        if t - self.t0 >= 0.5:  # let the jaws open, then start over from where the arm is
            self._draw()
            self.phase = "start"
        return self.q_cmd

    def _phase_hold(self, t: float, q: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
        return self.q_cmd

    _phase_failed = _phase_hold


# --- ROS-free rollout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeResult:
    """Outcome of one expert rollout."""

    task: str
    seed: int
    success: bool
    first_success_time: float | None
    final_distance: float
    steps: int
    attempts: int
    message: str


def run_episode(
    env,
    expert: ScriptedExpert,
    task: str,
    seed: int,
    control_dt: float = 1.0 / 30.0,
    settle_time: float = 1.0,
) -> EpisodeResult:
    """Roll the expert out in ``env`` (a :class:`~twinbrain_ros.sim.env.SimEnv`) for one episode.

    The episode ends at the task's time limit or ``settle_time`` seconds after the expert is done.
    Success means the task's predicate holds at the end.
    """
    info = env.reset(seed, task)
    expert.reset(env.task, seed)
    steps = 0
    done_at = None
    while env.episode_time < env.task.time_limit_s:
        q_target = expert.act(env.episode_time, env.joint_positions(), env.object_poses())
        env.set_joint_targets(q_target)
        env.step(control_dt)
        steps += 1
        if expert.done and done_at is None:
            done_at = env.episode_time
        if done_at is not None and env.episode_time - done_at >= settle_time:
            break
    st = env.task_status()
    return EpisodeResult(
        info.task,
        seed,
        st.success,
        env.first_success_time,
        st.distance,
        steps,
        expert.attempt,
        f"phase {expert.phase}, attempt {expert.attempt}: {st.message}",
    )


def main(argv: list[str] | None = None) -> int:
    """Measure the expert's success rate per task (prints one line per task)."""
    from twinbrain_ros.sim.env import SimEnv

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="so101_tasks")
    ap.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--control-hz", type=float, default=30.0)
    ap.add_argument(
        "--miss-prob", type=float, default=0.0,
        help="probability that a lift episode's first grasp is aimed off-centre on purpose (recovery demos)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="print failed episodes")
    a = ap.parse_args(argv)
    env = SimEnv(a.suite)
    try:
        expert = ScriptedExpert(env.scene, ExpertConfig(miss_prob=a.miss_prob))
        for task in a.tasks or env.suite.task_names:
            t0 = time.perf_counter()
            results = [
                run_episode(env, expert, task, s, 1.0 / a.control_hz)
                for s in range(a.first_seed, a.first_seed + a.episodes)
            ]
            ok = sum(r.success for r in results)
            times = [r.first_success_time for r in results if r.first_success_time is not None]
            retried = sum(r.attempts > 1 for r in results)
            print(
                f"{task}: {ok}/{len(results)} = {100.0 * ok / len(results):.1f}% success, "
                f"{retried} with a re-grasp, "
                f"mean time to success {np.mean(times) if times else float('nan'):.2f} s, "
                f"{time.perf_counter() - t0:.1f} s wall",
                flush=True,
            )
            if a.verbose:
                for r in results:
                    if not r.success:
                        print(f"  seed {r.seed}: {r.message}")
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
