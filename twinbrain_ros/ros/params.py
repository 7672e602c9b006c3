# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Declare ROS parameters from a frozen dataclass: one source of truth for type, default, range, doc.

Each field of a node's parameter dataclass carries its description and allowed range in
``dataclasses.field(metadata=...)`` (use :func:`param`). :func:`declare_and_read` declares every field
on a node with a ``ParameterDescriptor`` (type, description, range, read_only), reads the values
(from ``--params-file``, ``-p`` or the default), validates them, and returns a populated instance.
An out-of-range value raises :class:`ParameterError` naming the parameter and the allowed range.

Usage:
    @dataclass(frozen=True)
    class MyParams:
        rate_hz: float = param(200.0, "Control loop rate.", low=1.0, high=2000.0)

    params = declare_and_read(node, MyParams)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, TypeVar

from twinbrain_ros.core.validation import ParameterError, check_range

T = TypeVar("T")

_META = "twinbrain_param"


def param(
    default: Any,
    description: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[str] | None = None,
    read_only: bool = True,
) -> Any:
    """A dataclass field carrying a ROS parameter's description and allowed range.

    Args:
        default: default value (its Python type fixes the ROS parameter type; tuples become arrays).
        description: one sentence shown by ``ros2 param describe``.
        low: inclusive lower bound for numbers (and for every element of numeric arrays).
        high: inclusive upper bound.
        choices: allowed values for strings.
        read_only: whether the value is fixed after start-up.
    """
    meta = {
        _META: {
            "description": description,
            "low": low,
            "high": high,
            "choices": tuple(choices) if choices else None,
            "read_only": read_only,
        }
    }
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def spec(cls: type) -> list[tuple[str, Any, dict]]:
    """(name, default, metadata) for every parameter field of ``cls``."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, default, meta))
    return out


def validate(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` from ``values``, checking each against its declared range and type.

    Raises:
        ParameterError: naming every offending parameter with its value and allowed range.
    """
    errors = []
    clean: dict[str, Any] = {}
    for name, default, meta in spec(cls):
        value = values.get(name, default)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = isinstance(value, (list, tuple))
            value = tuple(value) if ok else value
        else:
            ok = True
        if not ok:
            errors.append(f"parameter '{name}' must be of type {type(default).__name__}, got {value!r}")
            continue
        err = check_range(name, value, meta["low"], meta["high"], meta["choices"])
        if err:
            errors.append(err)
        clean[name] = value
    if errors:
        raise ParameterError("; ".join(errors))
    return cls(**clean)


def declare_and_read(node: Any, cls: type[T], prefix: str = "") -> T:
    """Declare every field of ``cls`` as a ROS parameter on ``node`` and return the validated values.

    Args:
        node: an ``rclpy.node.Node`` (or lifecycle node).
        cls: a frozen dataclass whose fields were made with :func:`param`.
        prefix: optional dotted prefix for the parameter names.

    Raises:
        ParameterError: if any value is of the wrong type or out of range.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    values = {}
    for name, default, meta in spec(cls):
        full = prefix + name
        desc = ParameterDescriptor(name=full, description=meta["description"], read_only=meta["read_only"])
        rng = ""
        if meta["low"] is not None or meta["high"] is not None:
            rng = f" Range [{meta['low']}, {meta['high']}]."
        if meta["choices"]:
            rng = f" One of {list(meta['choices'])}."
        desc.additional_constraints = rng.strip()
        # Ranges on the descriptor let `ros2 param set` refuse bad values too; they are only
        # expressible for scalars with both bounds.
        if isinstance(default, float) and meta["low"] is not None and meta["high"] is not None:
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(meta["low"]), to_value=float(meta["high"]), step=0.0)
            ]
        elif (
            isinstance(default, int)
            and not isinstance(default, bool)
            and meta["low"] is not None
            and meta["high"] is not None
        ):
            desc.integer_range = [
                IntegerRange(from_value=int(meta["low"]), to_value=int(meta["high"]), step=0)
            ]
        if isinstance(default, tuple):
            desc.type = _array_type(default, ParameterType)
            # An empty default array has no element type; declare by type so overrides are accepted.
            if not default:
                from rclpy.parameter import Parameter

                # rclpy takes a Parameter.Type here; a bare ParameterType int would become the value.
                node.declare_parameter(full, Parameter.Type(desc.type), desc, ignore_override=False)
                values[name] = tuple(node.get_parameter_or(full).value or ())  # unset -> empty
                continue
            node.declare_parameter(full, list(default), desc)
        else:
            # Range checks are ours (validate): the descriptor's range would make rclpy raise its own
            # generic error before we can name the allowed range, so declare without enforcing here.
            desc.floating_point_range = []
            desc.integer_range = []
            node.declare_parameter(full, default, desc)
        values[name] = node.get_parameter(full).value
    return validate(cls, values)


def _array_type(default: tuple, ParameterType: Any) -> int:
    sample = default[0] if default else ""
    if isinstance(sample, bool):
        return ParameterType.PARAMETER_BOOL_ARRAY
    if isinstance(sample, int):
        return ParameterType.PARAMETER_INTEGER_ARRAY
    if isinstance(sample, float):
        return ParameterType.PARAMETER_DOUBLE_ARRAY
    return ParameterType.PARAMETER_STRING_ARRAY


def to_yaml_dict(cls: type) -> dict[str, Any]:
    """Defaults of ``cls`` as a plain dict (for generating documented YAML and tests)."""
    return {name: (list(d) if isinstance(d, tuple) else d) for name, d, _ in spec(cls)}
