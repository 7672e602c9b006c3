# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The policy interface the policy node talks to, and the registry that loads a policy by name.

A :class:`PolicyBackend` turns one synchronised :class:`~twinbrain_ros.core.types.Observation` into
one time-stamped :class:`~twinbrain_ros.core.types.ActionChunk`. The node never imports a model
library: :func:`load_policy` imports heavy dependencies (torch, transformers) lazily inside the
factory of the policy that needs them, so a node running the scripted wiring policy stays light.

Registered policies:
    ``scripted_sine``: :class:`~twinbrain_ros.policies.scripted.ScriptedSinePolicy`, a deterministic
        function of time for wiring tests and demos (not a model).
    ``twinbrain``: the TwinBrainVLA checkpoint in ``model_dir`` (``twinbrain_ros.policy.Policy``).

Every loaded policy is checked against the embodiment contract (joint order, cameras, a positive
horizon and step) before it is returned.

Usage:
    policy = load_policy("scripted_sine", embodiment=load_embodiment("so101"))
    chunk = policy.infer(obs)
"""

from __future__ import annotations

import abc
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from twinbrain_ros.core.embodiment import Embodiment, load_embodiment
from twinbrain_ros.core.types import ActionChunk, Observation
from twinbrain_ros.core.validation import ValidationError


class PolicyLoadError(RuntimeError):
    """A policy could not be loaded; the message says which policy and why."""


class PolicyBackend(abc.ABC):
    """A policy: observation in, action chunk out.

    Implementations must be safe to call from one worker thread at a time (the node never calls
    :meth:`infer` concurrently) and must not keep references to the observation's arrays.
    """

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Identifier of the model or scripted policy (goes into every chunk)."""

    @property
    @abc.abstractmethod
    def joint_names(self) -> tuple[str, ...]:
        """Column order of the chunks this policy produces (and of the state it reads)."""

    @property
    @abc.abstractmethod
    def camera_names(self) -> tuple[str, ...]:
        """Cameras the policy reads, in its view order."""

    @property
    @abc.abstractmethod
    def horizon(self) -> int:
        """Steps per chunk."""

    @property
    @abc.abstractmethod
    def step_dt(self) -> float:
        """Seconds between chunk steps."""

    @abc.abstractmethod
    def infer(self, obs: Observation) -> ActionChunk:
        """Compute one chunk from ``obs``; step 0 is at ``obs.stamp`` unless documented otherwise."""

    def reset(self) -> None:  # noqa: B027 - optional hook, a no-op for stateless policies
        """Forget any episode state (called when the node is (re)activated)."""


class _DuckPolicy(PolicyBackend):
    """Adapts an object with the interface's attributes (but not its base class) to PolicyBackend."""

    _REQUIRED = ("model_id", "joint_names", "camera_names", "horizon", "step_dt", "infer")

    def __init__(self, impl: Any) -> None:
        missing = [a for a in self._REQUIRED if not hasattr(impl, a)]
        if missing:
            raise PolicyLoadError(
                f"{type(impl).__name__} does not provide the policy interface: missing {missing}"
            )
        self._impl = impl

    @property
    def model_id(self) -> str:
        return str(self._impl.model_id)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(self._impl.joint_names)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self._impl.camera_names)

    @property
    def horizon(self) -> int:
        return int(self._impl.horizon)

    @property
    def step_dt(self) -> float:
        return float(self._impl.step_dt)

    def infer(self, obs: Observation) -> ActionChunk:
        return self._impl.infer(obs)

    def reset(self) -> None:
        if hasattr(self._impl, "reset"):
            self._impl.reset()


# name -> factory(embodiment, model_dir, device, backend, seed, options) -> policy
PolicyFactory = Callable[[Embodiment, str, str, str, int, Mapping[str, Any]], Any]
_REGISTRY: dict[str, PolicyFactory] = {}


def register_policy(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    """Decorator registering a factory under ``name`` (a later registration replaces an earlier)."""

    def deco(fn: PolicyFactory) -> PolicyFactory:
        _REGISTRY[name] = fn
        return fn

    return deco


def available_policies() -> tuple[str, ...]:
    """Names :func:`load_policy` accepts."""
    return tuple(sorted(_REGISTRY))


@register_policy("scripted_sine")
def _make_scripted(emb: Embodiment, model_dir: str, device: str, backend: str, seed: int,
                   options: Mapping[str, Any]) -> PolicyBackend:
    from twinbrain_ros.policies.scripted import ScriptedSinePolicy

    return ScriptedSinePolicy(emb, seed=seed, **dict(options))


@register_policy("twinbrain")
def _make_twinbrain(emb: Embodiment, model_dir: str, device: str, backend: str, seed: int,
                    options: Mapping[str, Any]) -> Any:
    if not model_dir:
        raise PolicyLoadError("policy 'twinbrain' needs model_dir (a checkpoint directory)")
    if not Path(model_dir).is_dir():  # say so before paying for the torch import
        raise PolicyLoadError(f"policy 'twinbrain': model_dir '{model_dir}' is not a directory")
    # Imported here, never at module level: this pulls in torch/transformers, which the node and the
    # scripted policy must not depend on.
    try:
        from twinbrain_ros.policy import Policy
    except ImportError as e:
        raise PolicyLoadError(
            f"policy 'twinbrain' is unavailable: importing twinbrain_ros.policy failed ({e}); "
            "install the model extras (pip install 'twinbrain-ros[model]')"
        ) from e
    return Policy.load(model_dir, device=device, backend=backend, seed=seed, **dict(options))


def check_policy_contract(policy: PolicyBackend, emb: Embodiment) -> list[str]:
    """Every reason ``policy`` cannot drive embodiment ``emb``; empty if compatible."""
    problems = []
    if tuple(policy.joint_names) != tuple(emb.joint_names):
        problems.append(
            f"joint order differs: policy {list(policy.joint_names)} vs contract {list(emb.joint_names)}"
        )
    unknown = [c for c in policy.camera_names if c not in emb.camera_names]
    if unknown:
        problems.append(f"policy reads cameras {unknown} that the contract lacks (contract: "
                        f"{list(emb.camera_names)})")
    if len(set(policy.camera_names)) != len(tuple(policy.camera_names)):
        problems.append(f"policy camera names repeat: {list(policy.camera_names)}")
    if not (isinstance(policy.horizon, int) and policy.horizon >= 1):
        problems.append(f"policy horizon must be a positive integer, got {policy.horizon!r}")
    if not (math.isfinite(policy.step_dt) and policy.step_dt > 0):
        problems.append(f"policy step_dt must be > 0, got {policy.step_dt!r}")
    return problems


def load_policy(
    name: str,
    *,
    embodiment: Embodiment | str,
    model_dir: str = "",
    device: str = "cpu",
    backend: str = "torch",
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> PolicyBackend:
    """Load the policy registered as ``name`` and check it against the embodiment contract.

    Args:
        name: a name from :func:`available_policies`.
        embodiment: the contract (or its name/path) the policy will drive.
        model_dir: checkpoint directory (model policies only).
        device: compute device, e.g. ``cpu`` or ``cuda:0`` (model policies only).
        backend: inference runtime, e.g. ``torch`` or ``onnx`` (model policies only).
        seed: seed of any randomness in the policy.
        options: extra keyword arguments for the policy's constructor (e.g. the scripted policy's
            ``frequency_hz`` or ``simulated_latency_s``).

    Raises:
        PolicyLoadError: naming the policy and the reason (unknown name, missing dependency,
            unreadable checkpoint, contract mismatch, ...).
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise PolicyLoadError(f"unknown policy '{name}' (available: {list(available_policies())})")
    try:
        emb = embodiment if isinstance(embodiment, Embodiment) else load_embodiment(embodiment)
        policy = factory(emb, model_dir, device, backend, int(seed), dict(options or {}))
    except PolicyLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear, named error
        raise PolicyLoadError(f"loading policy '{name}' failed: {type(e).__name__}: {e}") from e
    if not isinstance(policy, PolicyBackend):
        policy = _DuckPolicy(policy)
    problems = check_policy_contract(policy, emb)
    # A model policy carries the contract it was trained with: camera resolutions and the action
    # space must match too, or every observation would be rejected (or silently resized).
    trained = getattr(policy, "embodiment", None)
    if isinstance(trained, Embodiment) and trained is not emb:
        try:
            emb.check_compatible(trained, "node", f"policy '{name}'")
        except ValidationError as e:
            problems += [p for p in e.problems if p not in problems]
    if problems:
        raise PolicyLoadError(
            f"policy '{name}' ({policy.model_id}) does not match embodiment '{emb.name}': "
            + "; ".join(problems)
        )
    return policy
