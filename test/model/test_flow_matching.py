# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Behaviour-pinning tests of the stateless flow-matching helpers."""

from __future__ import annotations

import pytest
import torch

from twinbrain_ros.model.flow_matching import (
    euler_integrate,
    flow_matching_loss,
    interpolate,
    sample_beta_times,
    target_velocity,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- Euler ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 4, 7])
def test_constant_velocity_integrates_exactly(num_steps):
    noise = torch.randn(2, 5, 3, generator=_gen(), dtype=torch.float64)
    c = torch.randn(1, 5, 3, generator=_gen(1), dtype=torch.float64)
    out = euler_integrate(lambda x, t: c.expand_as(x), noise, num_steps)
    torch.testing.assert_close(out, noise + c, rtol=0, atol=1e-12)


def test_linear_field_matches_euler_closed_form():
    # dx/dt = a x: N Euler steps give exactly (1 + a/N)^N x0 (and tend to exp(a) x0).
    a, n = -1.7, 6
    x0 = torch.randn(3, 4, generator=_gen(), dtype=torch.float64)
    out = euler_integrate(lambda x, t: a * x, x0, n)
    torch.testing.assert_close(out, (1 + a / n) ** n * x0, rtol=1e-12, atol=1e-12)


def test_time_dependent_field_is_evaluated_at_k_over_n():
    # dx/dt = 2t: Euler at t = k/N sums to (N - 1) / N; evaluating at (k+1)/N would give (N + 1) / N.
    n = 5
    seen: list[float] = []

    def field(x, t):
        seen.append(t)
        return torch.full_like(x, 2 * t)

    out = euler_integrate(field, torch.zeros(2, dtype=torch.float64), n)
    assert seen == [k / n for k in range(n)]
    torch.testing.assert_close(out, torch.full((2,), (n - 1) / n, dtype=torch.float64))


def test_euler_rejects_bad_steps_and_shapes():
    with pytest.raises(ValueError, match="num_steps"):
        euler_integrate(lambda x, t: x, torch.zeros(2), 0)
    with pytest.raises(ValueError, match="num_steps"):
        euler_integrate(lambda x, t: x, torch.zeros(2), True)
    with pytest.raises(ValueError, match="shape"):
        euler_integrate(lambda x, t: torch.zeros(3), torch.zeros(2), 2)


# -- path and loss --------------------------------------------------------------------------------


def test_interpolate_endpoints_and_target():
    noise = torch.randn(3, 4, 2, generator=_gen())
    actions = torch.randn(3, 4, 2, generator=_gen(1))
    torch.testing.assert_close(interpolate(noise, actions, 0.0), noise)
    torch.testing.assert_close(interpolate(noise, actions, 1.0), actions)
    t = torch.tensor([0.0, 0.5, 1.0])
    mid = interpolate(noise, actions, t)
    torch.testing.assert_close(mid[1], 0.5 * (noise[1] + actions[1]))
    torch.testing.assert_close(mid[2], actions[2])
    # d/dt of the path equals the target velocity.
    torch.testing.assert_close(
        interpolate(noise, actions, 0.75) - interpolate(noise, actions, 0.25),
        0.5 * target_velocity(noise, actions),
    )
    with pytest.raises(ValueError, match="t must be"):
        interpolate(noise, actions, torch.zeros(2))


def test_loss_zero_at_true_velocity_and_positive_elsewhere():
    noise = torch.randn(2, 4, 3, generator=_gen())
    actions = torch.randn(2, 4, 3, generator=_gen(1))
    assert flow_matching_loss(actions - noise, noise, actions).item() == 0.0
    wrong = actions - noise + 0.5
    torch.testing.assert_close(flow_matching_loss(wrong, noise, actions), torch.tensor(0.25))


def test_loss_mask_ignores_padded_dims():
    noise = torch.zeros(2, 4, 3)
    actions = torch.ones(2, 4, 3)
    pred = actions - noise
    pred[..., 2] += 10.0  # error only in the padded last dim
    mask = torch.tensor([True, True, False]).reshape(1, 1, 3)
    assert flow_matching_loss(pred, noise, actions, mask).item() == 0.0
    assert flow_matching_loss(pred, noise, actions).item() > 0.0
    assert flow_matching_loss(pred, noise, actions, torch.zeros(1, 1, 3)).item() == 0.0
    with pytest.raises(ValueError, match="mask shape"):
        flow_matching_loss(pred, noise, actions, torch.ones(2, 3))  # would broadcast against (H, A)
    with pytest.raises(ValueError, match="pred_velocity shape"):
        flow_matching_loss(pred[:, :2], noise, actions)


# -- Beta times -----------------------------------------------------------------------------------


def test_beta_times_range_mean_and_noisy_end_oversampled():
    s = 0.999
    t = sample_beta_times(200_000, _gen(), alpha=1.5, beta=1.0, s=s)
    assert t.shape == (200_000,) and t.dtype == torch.float32
    assert t.min().item() >= 0.0 and t.max().item() < 1.0
    # E[u] = 1.5 / 2.5 = 0.6 for u ~ Beta(1.5, 1); the clamp at s changes it by < 1e-6.
    expected = (s - 0.6) / s
    assert abs(t.double().mean().item() - expected) < 3e-3
    # The density of t is 1.5 (1 - t)^0.5 (s = 1): P(t < 0.5) = 1 - 0.5^1.5 ~ 0.646.
    assert abs((t < 0.5).double().mean().item() - (1 - 0.5**1.5)) < 5e-3


def test_beta_times_cutoff_s():
    # s = 0.5: t = 2 * max(0.5 - u, 0). P(t = 0) = P(u >= 0.5) = 1 - 0.5^1.5 and, integrating the
    # density 1.5 u^0.5, E[t] = 3 * (0.5 * 0.5^1.5 / 1.5 - 0.5^2.5 / 2.5) ~ 0.1414.
    t = sample_beta_times(200_000, _gen(2), alpha=1.5, beta=1.0, s=0.5, dtype=torch.float64)
    assert t.min().item() == 0.0 and t.max().item() <= 1.0
    assert abs((t == 0).double().mean().item() - (1 - 0.5**1.5)) < 5e-3
    expected = 3 * (0.5 * 0.5**1.5 / 1.5 - 0.5**2.5 / 2.5)
    assert abs(t.mean().item() - expected) < 2e-3


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 5.0), (0.5, 0.5), (1.0, 1.0)])
def test_beta_sampler_moments(alpha, beta):
    # s = 1 makes t = 1 - u exactly, so the Beta moments are visible directly.
    u = 1.0 - sample_beta_times(100_000, _gen(3), alpha=alpha, beta=beta, s=1.0, dtype=torch.float64)
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert abs(u.mean().item() - mean) < 5e-3
    assert abs(u.var().item() - var) < 5e-3
    assert u.min().item() >= 0.0 and u.max().item() <= 1.0


def test_beta_times_deterministic_given_generator():
    a = sample_beta_times(64, _gen(7))
    b = sample_beta_times(64, _gen(7))
    c = sample_beta_times(64, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"batch": 0}, "batch"), ({"alpha": 0.0}, "alpha"), ({"beta": -1.0}, "beta"), ({"s": 1.5}, "s")],
)
def test_beta_times_validation(kwargs, field):
    args = {"batch": 4, "generator": _gen(), **kwargs}
    with pytest.raises(ValueError, match=field):
        sample_beta_times(**args)
