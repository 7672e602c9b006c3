# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The embodiment contract: one YAML per robot, shared by every node, the recorder and the trainer.

It fixes the joint order (of state vectors and action columns), joint limits, cameras and their
resolutions, rates and the action space. :func:`load_embodiment` validates the whole file and reports
every problem at once; :meth:`Embodiment.check_compatible` compares two contracts (e.g. the one a
checkpoint was trained with and the one a node runs with) and names both sides of each mismatch.

Usage:
    emb = load_embodiment("so101")              # a name under config/embodiments, or a path
    emb.joint_names, emb.limits.upper, emb.camera("front").width
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from twinbrain_ros.core.validation import ValidationError

ACTION_TYPES = ("joint_position",)
IMAGE_ENCODINGS = ("rgb8", "bgr8", "mono8")


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits, arrays in contract joint order."""

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray


@dataclass(frozen=True)
class CameraSpec:
    """One camera stream of the contract."""

    name: str
    topic: str
    width: int
    height: int
    encoding: str = "rgb8"


@dataclass(frozen=True)
class Rates:
    """Nominal rates in Hz."""

    control_hz: float
    policy_hz: float
    camera_hz: float
    state_hz: float


@dataclass(frozen=True)
class ActionSpace:
    """What a chunk holds."""

    type: str
    horizon: int
    step_dt: float


@dataclass(frozen=True)
class Embodiment:
    """A validated embodiment contract."""

    name: str
    version: int
    joint_names: tuple[str, ...]
    limits: JointLimits
    cameras: tuple[CameraSpec, ...]
    rates: Rates
    action: ActionSpace
    source: str = ""

    @property
    def num_joints(self) -> int:
        """Number of joints J."""
        return len(self.joint_names)

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Camera names in contract order."""
        return tuple(c.name for c in self.cameras)

    def camera(self, name: str) -> CameraSpec:
        """The camera called ``name``; raises KeyError naming the known cameras."""
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(
            f"camera '{name}' is not in embodiment '{self.name}' (cameras: {list(self.camera_names)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The contract as plain YAML-able data (the inverse of :func:`parse_embodiment`)."""
        lim = self.limits
        return {
            "name": self.name,
            "version": self.version,
            "joints": [
                {
                    "name": n,
                    "lower": float(lim.lower[i]),
                    "upper": float(lim.upper[i]),
                    "max_velocity": float(lim.max_velocity[i]),
                    "max_acceleration": float(lim.max_acceleration[i]),
                }
                for i, n in enumerate(self.joint_names)
            ],
            "cameras": [asdict(c) for c in self.cameras],
            "rates": asdict(self.rates),
            "action": asdict(self.action),
        }

    def to_yaml(self) -> str:
        """The contract as YAML text (embedded in bags, datasets and checkpoints)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def check_compatible(
        self, other: Embodiment, self_label: str = "node", other_label: str = "other"
    ) -> None:
        """Raise ValidationError listing every difference that would break execution.

        Joint names/order, camera names and resolutions and the action space must match; limits and
        rates may differ (a deployment may be more conservative than training).
        """
        problems = []
        if self.joint_names != other.joint_names:
            problems.append(
                f"joint order differs: {self_label} {list(self.joint_names)} vs "
                f"{other_label} {list(other.joint_names)}"
            )
        a = {c.name: (c.width, c.height) for c in self.cameras}
        b = {c.name: (c.width, c.height) for c in other.cameras}
        if set(a) != set(b):
            problems.append(f"cameras differ: {self_label} {sorted(a)} vs {other_label} {sorted(b)}")
        else:
            for n in a:
                if a[n] != b[n]:
                    problems.append(
                        f"camera '{n}' resolution differs: {self_label} {a[n][0]}x{a[n][1]} vs "
                        f"{other_label} {b[n][0]}x{b[n][1]}"
                    )
        if self.action.type != other.action.type:
            problems.append(
                f"action.type differs: {self_label} {self.action.type} vs {other_label} {other.action.type}"
            )
        if problems:
            raise ValidationError(
                [f"embodiment mismatch ({self.name} vs {other.name}): {p}" for p in problems]
            )


def _num(d: dict, key: str, where: str, problems: list[str], positive: bool = False) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        problems.append(f"{where}.{key} must be a finite number, got {v!r}")
        return float("nan")
    if positive and v <= 0:
        problems.append(f"{where}.{key} must be > 0, got {v!r}")
    return float(v)


def parse_embodiment(data: Any, source: str = "<dict>") -> Embodiment:
    """Validate contract data (parsed YAML) and build an :class:`Embodiment`.

    Raises:
        ValidationError: listing every problem, each naming the field.
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ValidationError([f"{source}: the contract must be a mapping, got {type(data).__name__}"])
    name = data.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name must be a non-empty string")
        name = "?"
    version = data.get("version", 1)
    joints = data.get("joints")
    names: list[str] = []
    cols: dict[str, list[float]] = {k: [] for k in ("lower", "upper", "max_velocity", "max_acceleration")}
    if not isinstance(joints, list) or not joints:
        problems.append("joints must be a non-empty list")
        joints = []
    for i, j in enumerate(joints):
        where = f"joints[{i}]"
        if not isinstance(j, dict):
            problems.append(f"{where} must be a mapping")
            continue
        jn = j.get("name")
        if not isinstance(jn, str) or not jn:
            problems.append(f"{where}.name must be a non-empty string")
            jn = f"?{i}"
        elif jn in names:
            problems.append(f"{where}.name '{jn}' is duplicated")
        names.append(jn)
        lo = _num(j, "lower", where, problems)
        hi = _num(j, "upper", where, problems)
        if lo == lo and hi == hi and lo >= hi:
            problems.append(f"{where} ({jn}): lower {lo} must be < upper {hi}")
        cols["lower"].append(lo)
        cols["upper"].append(hi)
        cols["max_velocity"].append(_num(j, "max_velocity", where, problems, positive=True))
        cols["max_acceleration"].append(_num(j, "max_acceleration", where, problems, positive=True))
    cams = []
    raw_cams = data.get("cameras", [])
    if not isinstance(raw_cams, list):
        problems.append("cameras must be a list")
        raw_cams = []
    seen = set()
    for i, c in enumerate(raw_cams):
        where = f"cameras[{i}]"
        if not isinstance(c, dict):
            problems.append(f"{where} must be a mapping")
            continue
        cn, topic, enc = c.get("name"), c.get("topic"), c.get("encoding", "rgb8")
        w, h = c.get("width"), c.get("height")
        if not isinstance(cn, str) or not cn:
            problems.append(f"{where}.name must be a non-empty string")
        elif cn in seen:
            problems.append(f"{where}.name '{cn}' is duplicated")
        seen.add(cn)
        if not isinstance(topic, str) or not topic:
            problems.append(f"{where}.topic must be a non-empty string")
        for key, v in (("width", w), ("height", h)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"{where}.{key} must be a positive integer, got {v!r}")
        if enc not in IMAGE_ENCODINGS:
            problems.append(f"{where}.encoding must be one of {list(IMAGE_ENCODINGS)}, got {enc!r}")
        cams.append(
            CameraSpec(
                name=str(cn),
                topic=str(topic),
                width=w if isinstance(w, int) else 0,
                height=h if isinstance(h, int) else 0,
                encoding=str(enc),
            )
        )
    r = data.get("rates") if isinstance(data.get("rates"), dict) else {}
    if not r:
        problems.append("rates must be a mapping with control_hz, policy_hz, camera_hz, state_hz")
    rates = Rates(
        *(
            _num(r, k, "rates", problems, positive=True)
            for k in ("control_hz", "policy_hz", "camera_hz", "state_hz")
        )
    )
    a = data.get("action") if isinstance(data.get("action"), dict) else {}
    atype = a.get("type")
    if atype not in ACTION_TYPES:
        problems.append(f"action.type must be one of {list(ACTION_TYPES)}, got {atype!r}")
    horizon = a.get("horizon")
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
        problems.append(f"action.horizon must be a positive integer, got {horizon!r}")
        horizon = 1
    step_dt = _num(a, "step_dt", "action", problems, positive=True)
    if problems:
        raise ValidationError([f"{source}: {p}" for p in problems])
    limits = JointLimits(**{k: np.asarray(v, dtype=np.float64) for k, v in cols.items()})
    return Embodiment(
        name=name,
        version=int(version),
        joint_names=tuple(names),
        limits=limits,
        cameras=tuple(cams),
        rates=rates,
        action=ActionSpace(str(atype), horizon, step_dt),
        source=source,
    )


def embodiment_search_dirs() -> list[Path]:
    """Where contract names are looked up: $TWINBRAIN_EMBODIMENT_PATH, the source tree, the share dir."""
    dirs = [Path(p) for p in os.environ.get("TWINBRAIN_EMBODIMENT_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "config" / "embodiments")
    try:  # an installed ROS package keeps config/ under share/
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("twinbrain_ros")) / "config" / "embodiments")
    except Exception:  # noqa: BLE001 - ament index missing or package not installed
        pass
    return dirs


def resolve_embodiment_path(name_or_path: str) -> Path:
    """A path as given if it exists, else ``<name>.yaml`` in the search dirs."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    for d in embodiment_search_dirs():
        cand = d / f"{name_or_path}.yaml"
        if cand.exists():
            return cand
    raise FileNotFoundError(
        f"embodiment '{name_or_path}' not found as a file or in {[str(d) for d in embodiment_search_dirs()]}"
    )


def load_embodiment(name_or_path: str) -> Embodiment:
    """Load and validate a contract by name (``so101``) or YAML path."""
    path = resolve_embodiment_path(name_or_path)
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValidationError([f"{path}: not valid YAML: {e}"]) from e
    return parse_embodiment(data, source=str(path))
