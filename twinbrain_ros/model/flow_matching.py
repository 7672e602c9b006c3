# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Stateless flow-matching helpers: training times, interpolation, loss and the Euler sampler.

Convention (GR00T / rectified flow): ``t = 0`` is pure noise and ``t = 1`` is data,
``x_t = (1 - t) * noise + t * actions`` and the target velocity is ``actions - noise``. Sampling
integrates ``dx/dt = v(x, t)`` from ``t = 0`` to ``t = 1`` with ``N`` forward-Euler steps evaluated
at ``t = k / N``.

Every random draw takes an optional ``torch.Generator`` so training and sampling are reproducible
from a seed (``torch.distributions.Beta`` cannot take one, hence the small Gamma sampler below).

Usage:
    gen = torch.Generator().manual_seed(0)
    t = sample_beta_times(batch, gen)                        # (B,), noisy end over-sampled
    x_t = interpolate(noise, actions, t)
    loss = flow_matching_loss(model(x_t, t), noise, actions)
    chunk = euler_integrate(lambda x, t: model(x, t), noise, num_steps=4)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Marsaglia-Tsang accepts > 95 % of candidates for shape >= 1, so 64 rounds leave a failure
# probability far below 1e-80 per element; the bound only keeps the loop provably finite.
_MAX_REJECTION_ROUNDS = 64


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _sample_gamma(
    shape: float, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Draws ``n`` Gamma(shape, 1) samples in float64 with the Marsaglia-Tsang method.

    Args:
        shape: Gamma shape parameter, > 0.
        n: number of samples.
        generator: random generator (or None for the global one); it must live on ``device``.
        device: device to sample on.

    Returns:
        (n,) float64 tensor of positive samples.
    """
    # For shape < 1 the method needs shape + 1; Gamma(a) = Gamma(a + 1) * U^(1/a) restores it.
    boosted = shape < 1.0
    a = shape + 1.0 if boosted else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    for _ in range(_MAX_REJECTION_ROUNDS):
        m = pending.numel()
        if m == 0:
            break
        x = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        # v <= 0 is a rejection; clamp keeps log() finite there (the v > 0 test rejects it anyway).
        log_v = torch.log(v.clamp_min(torch.finfo(torch.float64).tiny))
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * log_v)
        out[pending[accept]] = (d * v)[accept]
        pending = pending[~accept]
    if pending.numel() != 0:
        raise RuntimeError(f"Gamma({shape}) rejection sampler did not converge for {pending.numel()} samples")
    if boosted:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        out = out * u ** (1.0 / shape)
    return out


def sample_beta_times(
    batch: int,
    generator: torch.Generator | None = None,
    alpha: float = 1.5,
    beta: float = 1.0,
    s: float = 0.999,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draws flow-matching training times ``t = (s - min(u, s)) / s`` with ``u ~ Beta(alpha, beta)``.

    With the default Beta(1.5, 1) the density of ``u`` rises toward 1, so small ``t`` (the noisy end)
    is over-sampled. Clamping ``u`` to ``s`` keeps ``t`` in ``[0, 1)``.

    Args:
        batch: number of times to draw, >= 1.
        generator: random generator for reproducibility; sampling happens on its device.
        alpha: Beta concentration alpha, > 0.
        beta: Beta concentration beta, > 0.
        s: cut-off in (0, 1]; ``t`` never reaches 1 when ``s < 1``.
        device: device of the returned tensor (default: the generator's device, else CPU).
        dtype: dtype of the returned tensor.

    Returns:
        (batch,) tensor of times in ``[0, 1]``.

    Raises:
        ValueError: on a non-positive batch, alpha or beta, or ``s`` outside (0, 1].
    """
    _check_positive_int("batch", batch)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    if not (0.0 < s <= 1.0):
        raise ValueError(f"s must be in (0, 1], got {s}")
    sample_device = generator.device if generator is not None else torch.device("cpu")
    x = _sample_gamma(alpha, batch, generator, sample_device)
    y = _sample_gamma(beta, batch, generator, sample_device)
    u = x / (x + y)  # (B,) ~ Beta(alpha, beta)
    t = (s - u.clamp(max=s)) / s
    return t.to(device=device if device is not None else sample_device, dtype=dtype)


def _time_column(t: torch.Tensor | float, ref: torch.Tensor) -> torch.Tensor:
    """Turns a scalar or per-sample time into a tensor broadcastable against ``ref`` (B, ...)."""
    t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != ref.shape[0]:
        raise ValueError(f"t must be a scalar or have shape ({ref.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (ref.ndim - 1)))  # (B,) -> (B, 1, ..., 1)


def interpolate(noise: torch.Tensor, actions: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Point on the straight noise-to-data path: ``(1 - t) * noise + t * actions``.

    Args:
        noise: (B, ...) noise sample (``t = 0``).
        actions: (B, ...) data sample (``t = 1``), same shape as ``noise``.
        t: scalar or (B,) times in [0, 1].

    Returns:
        (B, ...) interpolated sample.

    Raises:
        ValueError: if shapes disagree.
    """
    if noise.shape != actions.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != actions shape {tuple(actions.shape)}")
    tc = _time_column(t, actions)
    return (1.0 - tc) * noise + tc * actions


def target_velocity(noise: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Velocity of the straight path, constant in ``t``: ``actions - noise``.

    Args:
        noise: (B, ...) noise sample.
        actions: (B, ...) data sample, same shape.

    Returns:
        (B, ...) target velocity.

    Raises:
        ValueError: if shapes disagree.
    """
    if noise.shape != actions.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != actions shape {tuple(actions.shape)}")
    return actions - noise


def flow_matching_loss(
    pred_velocity: torch.Tensor,
    noise: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the predicted and the target velocity.

    Without a mask this is the mean over every element (the reference loss). With a mask only the
    selected elements count, so padded action dimensions or steps do not train the model toward
    arbitrary targets (the reference does not mask them). An all-zero mask gives a loss of 0.

    Args:
        pred_velocity: (B, ...) predicted velocity.
        noise: (B, ...) noise used to build the input.
        actions: (B, ...) clean data.
        mask: optional bool or float weights with the same rank as ``actions``, each dim equal to the
            data's or 1 (e.g. (B, H, A), (B, 1, A), (1, 1, A)). Same rank is required so that a
            (B, A) mask can never silently broadcast against (H, A).

    Returns:
        Scalar loss.

    Raises:
        ValueError: on a shape mismatch of ``pred_velocity`` or ``mask``.
    """
    target = target_velocity(noise, actions)
    if pred_velocity.shape != target.shape:
        raise ValueError(
            f"pred_velocity shape {tuple(pred_velocity.shape)} != actions shape {tuple(target.shape)}"
        )
    err = (pred_velocity - target).pow(2)
    if mask is None:
        return err.mean()
    if mask.ndim != err.ndim or any(m not in (1, e) for m, e in zip(mask.shape, err.shape, strict=True)):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must have rank {err.ndim} and each dim equal to "
            f"actions shape {tuple(err.shape)} or 1"
        )
    w = mask.to(dtype=err.dtype).expand_as(err)
    # tiny (not 1) as the floor keeps fractional weights exact and makes an empty mask give 0.
    return (err * w).sum() / w.sum().clamp_min(torch.finfo(err.dtype).tiny)


def euler_integrate(
    denoise_fn: Callable[[torch.Tensor, float], torch.Tensor],
    noise: torch.Tensor,
    num_steps: int,
) -> torch.Tensor:
    """Integrates ``dx/dt = denoise_fn(x, t)`` from ``t = 0`` to ``1`` with forward Euler.

    Step ``k`` (``k = 0 .. N-1``) evaluates the velocity at ``t = k / N`` (a Python float, so
    callers can bucket it exactly as the reference does) and updates ``x += v / N``. Deterministic:
    no randomness is drawn here.

    Args:
        denoise_fn: velocity field ``(x, t) -> v`` with ``v`` shaped like ``x``.
        noise: starting point at ``t = 0``.
        num_steps: number of Euler steps ``N``, >= 1.

    Returns:
        The state at ``t = 1``, same shape and dtype as ``noise``.

    Raises:
        ValueError: on a bad ``num_steps`` or a velocity of the wrong shape.
    """
    _check_positive_int("num_steps", num_steps)
    dt = 1.0 / num_steps
    x = noise
    for k in range(num_steps):
        v = denoise_fn(x, k / num_steps)
        if v.shape != x.shape:
            raise ValueError(f"denoise_fn returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        x = x + dt * v.to(x.dtype)
    return x
