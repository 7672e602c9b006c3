# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain eval-grounding``: does a policy act on the camera and the instruction, or copy the state?

A chunked policy trained by imitation can drive its loss down without ever using its camera or its
instruction: once a demonstration is under way, the joint state already points at the target (the arm
has started to turn towards it), so extrapolating the state predicts the rest of the motion well. Such a
policy scores a low training loss and fails in closed loop, because at the start of an episode, at the
home pose, the state says nothing about where to go. This check measures exactly that, offline, on a
recorded dataset (LeRobot v3; held-out episodes if you have them):

* at the first frame of every episode and again ``--later-s`` seconds in, it predicts a chunk (the
  flow starts from zero noise: deterministic) and compares the chunk's last step with the recorded one,
  as displacement from the current state: R^2 pooled over joints (1 = perfect, 0 = no better than the
  mean displacement) and the mean absolute error in radians;
* at the first frame, it also predicts with every other instruction of the dataset and reports how far
  the chunk moves (``instruction_effect_rad``, mean over episodes of the largest joint difference).

A grounded policy has a high start R^2 and, where the instruction picks the target, an instruction
effect of the order of the recorded spread. A policy
that copies the state shows start R^2 near 0 beside a high later R^2, and an instruction effect near 0;
the verdict line says so.

Usage:
    twinbrain eval-grounding --model models/so101-sim-touch --dataset out/demo-train/dataset --json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PhaseScore:
    """Prediction quality at one point of the episodes.

    Attributes:
        r2: R^2 of the predicted displacement (chunk's last step minus state), pooled over joints.
        mae_rad: mean absolute error of the chunk's last step, rad.
        spread_rad: standard deviation of the recorded displacement, rad (how much there is to predict).
        n: number of episodes scored.
    """

    r2: float
    mae_rad: float
    spread_rad: float
    n: int


def phase_score(pred_last: np.ndarray, true_last: np.ndarray, state: np.ndarray) -> PhaseScore:
    """Score (N, J) predicted vs recorded last chunk steps taken from (N, J) states."""
    pred_d, true_d = pred_last - state, true_last - state
    sse = float(((pred_d - true_d) ** 2).sum())
    sst = float(((true_d - true_d.mean(axis=0)) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else float("nan")
    return PhaseScore(r2, float(np.abs(pred_last - true_last).mean()), float(true_d.std()), len(pred_last))


def verdict(start: PhaseScore, later: PhaseScore, effect: float | None) -> str:
    """One sentence on what the policy acts on (``effect`` None: the data has one instruction)."""
    if start.r2 >= 0.5 and (effect is None or effect >= 0.1 * start.spread_rad):
        return "grounded: the first chunk follows the camera and the instruction"
    if start.r2 >= 0.5:
        return (f"ignores the instruction: the first chunk fits (start R^2 {start.r2:.2f}) but another "
                f"instruction moves it by only {effect:.3f} rad")  # fmt: skip
    if later.r2 >= 0.5 and start.r2 < 0.5:
        return ("copies the state: accurate once a motion is under way (later R^2 "
                f"{later.r2:.2f}) but not from the home pose (start R^2 {start.r2:.2f})"
                + (f"; the instruction moves the first chunk by {effect:.3f} rad" if effect is not None
                   else ""))  # fmt: skip
    return f"not fitted: start R^2 {start.r2:.2f}, later R^2 {later.r2:.2f}"


def evaluate_grounding(
    model: str, dataset: str, *, episodes: int = 100, later_s: float = 0.5, num_threads: int = 0
) -> dict[str, Any]:
    """Run the check (see the module docstring); returns the report dict."""
    from twinbrain_ros.core.types import Observation
    from twinbrain_ros.policy import Policy
    from twinbrain_ros.train.dataset import ChunkDataset, episode_starts, load_sources

    policy = Policy.load(model, num_threads=num_threads)
    emb = policy.embodiment
    source = load_sources([dataset])
    horizon, step_dt = emb.action.horizon, emb.action.step_dt
    ds = ChunkDataset(source, horizon, step_dt=step_dt, cameras=list(emb.camera_names))
    starts = episode_starts(source.episode_index)[: max(1, int(episodes))]
    later_off = int(round(later_s * float(source.fps)))
    zero = np.zeros((horizon, len(emb.joint_names)), np.float32)
    sizes = {c.name: (c.height, c.width) for c in emb.cameras}

    def as_camera(name: str, img: np.ndarray) -> np.ndarray:
        """The frame at the contract's camera size (datasets may store another resolution)."""
        if img.shape[:2] == sizes[name]:
            return img
        from PIL import Image

        h, w = sizes[name]
        return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))

    def observe(i: int) -> tuple[Observation, np.ndarray]:
        """Frame ``i`` as the policy's observation, and its recorded last chunk step."""
        s = ds[i]
        images = {c: as_camera(c, im) for c, im in s["images"].items()}
        obs = Observation(images=images, state=s["state"], joint_names=tuple(emb.joint_names),
                          instruction=s["instruction"], stamp=0.0)  # fmt: skip
        return obs, s["actions"][-1]

    def predict(obs: Observation) -> np.ndarray:
        return policy.infer(obs, noise=zero).positions[-1]

    def score(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> PhaseScore:
        if not rows:
            return PhaseScore(float("nan"), float("nan"), float("nan"), 0)
        return phase_score(*(np.asarray(col, dtype=np.float64) for col in zip(*rows, strict=True)))

    start_rows, later_rows, effects = [], [], []
    for i in map(int, starts):
        obs, true = observe(i)
        pred = predict(obs)
        start_rows.append((pred, true, obs.state))
        others = [t for t in ds.tasks if t != obs.instruction]
        if others:
            swapped = (predict(replace(obs, instruction=t)) for t in others)
            effects.append(max(float(np.abs(p - pred).max()) for p in swapped))
        j = i + later_off
        if j < int(ds.episode_end[i]):
            obs, true = observe(j)
            later_rows.append((predict(obs), true, obs.state))
    start, later = score(start_rows), score(later_rows)
    effect = float(np.mean(effects)) if effects else None
    return {
        "model": str(model), "dataset": str(dataset), "episodes": int(len(starts)), "later_s": float(later_s),
        "start": asdict(start), "later": asdict(later), "instruction_effect_rad": effect,
        "verdict": verdict(start, later, effect),
    }  # fmt: skip


def add_eval_grounding_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain eval-grounding``."""
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--dataset", required=True, help="LeRobot v3 dataset (held-out episodes if you have them)")
    p.add_argument("--episodes", type=int, default=100, help="episodes scored (from the first)")
    p.add_argument("--later-s", type=float, default=0.5, help="the later point, s after each episode start")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on the last line")


def eval_grounding_main(a: argparse.Namespace) -> int:
    """Entry point of ``twinbrain eval-grounding``; 2 on bad arguments."""
    if a.episodes < 1 or a.later_s <= 0:
        print("[eval-grounding] need --episodes >= 1 and --later-s > 0", file=sys.stderr)
        return 2
    r = evaluate_grounding(a.model, a.dataset, episodes=a.episodes, later_s=a.later_s, num_threads=a.threads)
    print(f"{'point':<16}{'R^2':>8}{'MAE rad':>10}{'spread rad':>12}{'n':>6}")
    for name, key in (("episode start", "start"), (f"+{a.later_s:g} s", "later")):
        s = r[key]
        print(f"{name:<16}{s['r2']:>8.2f}{s['mae_rad']:>10.3f}{s['spread_rad']:>12.3f}{s['n']:>6}")
    effect = r["instruction_effect_rad"]
    print("instruction effect at the start: " + (f"{effect:.3f} rad" if effect is not None else
                                                 "n/a (one instruction in the data)"))  # fmt: skip
    print(f"eval-grounding: {r['verdict']}")
    if a.json:
        print(json.dumps(r))
    return 0
