# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Shared output for benchmarks: an aligned table for people, one JSON object as the last line."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import numpy as np


def percentiles(values, qs=(50, 99)) -> dict[str, float]:
    """{'p50': .., 'p99': ..} of ``values`` (NaN when empty)."""
    arr = np.asarray(list(values), dtype=np.float64)
    return {f"p{q}": (float(np.percentile(arr, q)) if arr.size else float("nan")) for q in qs}


def machine() -> dict[str, Any]:
    """A short description of the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """Print (metric, value, target) rows under a title."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(title)
    print(f"  {'metric'.ljust(w0)}  {'value'.rjust(w1)}  target")
    for m, v, t in rows:
        print(f"  {m.ljust(w0)}  {v.rjust(w1)}  {t}")


def print_json(obj: dict[str, Any]) -> None:
    """The machine-readable result: one JSON object on the last line."""
    print(json.dumps(obj, sort_keys=True))
