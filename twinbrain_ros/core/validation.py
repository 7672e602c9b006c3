# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Boundary-validation helpers: errors that name the field, and range checks.

Usage:
    err = check_range("rate_hz", 5000.0, 1.0, 2000.0)   # -> "parameter 'rate_hz' = 5000.0 ..."
"""

from __future__ import annotations

from typing import Any, Sequence


class ParameterError(ValueError):
    """A node parameter has the wrong type or lies outside its allowed range."""


class ValidationError(ValueError):
    """An input failed boundary validation; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def check_range(
    name: str, value: Any, low: float | None, high: float | None, choices: Sequence[str] | None = None
) -> str | None:
    """Return a message naming ``name`` and the allowed range if ``value`` is outside it, else None."""
    if choices is not None:
        if value not in choices:
            return f"parameter '{name}' = {value!r} is not one of {list(choices)}"
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, str) or isinstance(v, bool):
            continue
        if low is not None and v < low or high is not None and v > high:
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            return f"parameter '{name}' = {value!r} is outside the allowed range [{lo}, {hi}]"
    return None
