"""Masking schedules: boundary values, derivatives, ELBO weights by hand, and the normalisation of the ELBO.

For any schedule, integral_0^1 w(t) (1 - alpha(t)) dt = integral_0^1 -alpha'(t) dt = alpha(0) - alpha(1) = 1:
the ELBO of a position whose conditional NLL is a constant c (so every masking level costs c) is exactly c,
whatever the schedule.
"""

from __future__ import annotations

import math

import pytest
import torch

from unidiff.errors import UnidiffError, UnknownNameError
from unidiff.process.schedules import SCHEDULES, Cosine, LogLinear, Polynomial, TimeGrid, get_schedule, parse_spec

SCHEDS = {
    "linear": LogLinear(),
    "cosine": Cosine(),
    "poly2": Polynomial(2),
    "poly3": Polynomial(3),
}
T = torch.tensor([0.05, 0.2, 0.37, 0.5, 0.81, 0.95], dtype=torch.float64)


@pytest.mark.parametrize("name", SCHEDS)
def test_boundaries(name):
    s = SCHEDS[name]
    ends = s.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends[0].item() == pytest.approx(1.0, abs=1e-15)
    assert ends[1].item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name", SCHEDS)
def test_dalpha_is_derivative(name):
    s, h = SCHEDS[name], 1e-6
    fd = (s.alpha(T + h) - s.alpha(T - h)) / (2 * h)
    d = s.dalpha(T)
    assert d.dtype == torch.float64 and d.shape == T.shape
    torch.testing.assert_close(d, fd, rtol=1e-7, atol=1e-8)


def test_closed_forms():
    t = T
    torch.testing.assert_close(SCHEDS["linear"].alpha(t), 1 - t)
    torch.testing.assert_close(SCHEDS["linear"].dalpha(t), -torch.ones_like(t))
    torch.testing.assert_close(SCHEDS["poly2"].alpha(t), 1 - t * t)
    torch.testing.assert_close(SCHEDS["poly3"].dalpha(t), -3 * t * t)
    torch.testing.assert_close(SCHEDS["cosine"].alpha(t), 1 - torch.cos(math.pi / 2 * (1 - t)))
    # At t = 1/2 the cosine schedule has alpha = 1 - cos(pi/4) = 1 - 1/sqrt(2).
    half = torch.tensor([0.5], dtype=torch.float64)
    assert SCHEDS["cosine"].alpha(half).item() == pytest.approx(1 - 2 ** -0.5, abs=1e-15)
    assert SCHEDS["cosine"].dalpha(half).item() == pytest.approx(-math.pi / 2 * 2 ** -0.5, abs=1e-15)


@pytest.mark.parametrize("name", SCHEDS)
def test_weight_by_hand(name):
    s = SCHEDS[name]
    torch.testing.assert_close(s.weight(T), -s.dalpha(T) / (1 - s.alpha(T)))
    assert (s.weight(T) > 0).all()


def test_weight_closed_forms():
    torch.testing.assert_close(LogLinear().weight(T), 1 / T)
    for p in (2.0, 3.0, 0.5):
        torch.testing.assert_close(Polynomial(p).weight(T), p / T)
    # cosine: w = (pi/2) tan(pi/2 (1 - t))
    torch.testing.assert_close(Cosine().weight(T), math.pi / 2 * torch.tan(math.pi / 2 * (1 - T)))
    # weight vanishes at t = 1 for cosine (alpha' = 0 there), and is 1 for linear.
    one = torch.tensor([1.0], dtype=torch.float64)
    assert Cosine().weight(one).item() == pytest.approx(0.0, abs=1e-15)
    assert LogLinear().weight(one).item() == 1.0


@pytest.mark.parametrize("name", SCHEDS)
def test_alpha_monotone_decreasing(name):
    s = SCHEDS[name]
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a = s.alpha(t)
    assert (a[1:] < a[:-1]).all()
    assert (s.dalpha(t[1:-1]) < 0).all()
    assert ((a >= -1e-15) & (a <= 1 + 1e-15)).all()


@pytest.mark.parametrize("name, eps", [
    ("linear", 1e-6), ("cosine", 1e-6), ("poly2", 1e-6),
    ("poly3", 1e-6),
    ("poly3", 1e-4),
])
def test_elbo_weight_integrates_to_one(name, eps):
    """integral_{eps}^1 w(t) (1 - alpha(t)) dt = alpha(eps) - alpha(1), which is 1 up to O(eps)."""
    s, n = SCHEDS[name], 200_001
    # Log-spaced near 0 so linear's 1/t weight is resolved; trapezoid rule on the product, which stays bounded.
    t = torch.cat([torch.logspace(math.log10(eps), -2, n // 2, dtype=torch.float64),
                   torch.linspace(1e-2, 1, n // 2, dtype=torch.float64)[1:]])
    f = s.weight(t) * (1 - s.alpha(t))
    integral = torch.trapezoid(f, t).item()
    exact = (s.alpha(torch.tensor(eps, dtype=torch.float64)) - s.alpha(torch.tensor(1.0, dtype=torch.float64))).item()
    assert integral == pytest.approx(exact, abs=1e-8)
    assert integral == pytest.approx(1.0, abs=2 * eps)
    # The ELBO of a constant conditional NLL c is c, for any schedule.
    c = 2.75
    assert torch.trapezoid(f * c, t).item() == pytest.approx(c, abs=10 * eps)


@pytest.mark.parametrize("power, t, dtype", [
    (3.0, 1e-6, torch.float64),  # t**3 = 1e-18 < float64 eps: 1 - alpha rounds to 0
    (3.0, 1e-3, torch.float32),  # the training eps of losses.sample_times, in float32: inf weight, NaN gradients
    (2.0, 1e-4, torch.float32),
])
def test_polynomial_weight_is_accurate_near_zero(power, t, dtype):
    w = Polynomial(power).weight(torch.tensor([t], dtype=dtype))
    assert torch.isfinite(w).all()
    assert w.item() == pytest.approx(power / t, rel=1e-3)


def test_get_schedule():
    assert isinstance(get_schedule("linear"), LogLinear)
    assert isinstance(get_schedule("cosine"), Cosine)
    p = get_schedule("polynomial", power=3)
    assert isinstance(p, Polynomial) and p.power == 3.0
    assert get_schedule("polynomial").power == 2.0
    assert sorted(SCHEDULES) == ["cosine", "grid", "linear", "polynomial"]
    for name, cls in SCHEDULES.items():
        assert cls.name == name


def test_get_schedule_unknown_lists_names():
    with pytest.raises(UnknownNameError) as info:
        get_schedule("geometric")
    assert str(info.value).startswith("unknown schedule 'geometric'; known schedules: cosine, grid, linear, "
                                      "polynomial")
    assert info.value.known == ["cosine", "grid", "linear", "polynomial"]


@pytest.mark.parametrize("spec, name, params", [
    ("cosine", "cosine", {}),
    ("polynomial:power=3", "polynomial", {"power": 3.0}),
    (" polynomial : power = 0.5 ", "polynomial", {"power": 0.5}),
    ("grid:times=1/0.6/0.2/0,base=cosine", "grid", {"times": (1.0, 0.6, 0.2, 0.0), "base": "cosine"}),
])
def test_a_spec_names_a_schedule_and_its_parameters(spec, name, params):
    assert parse_spec(spec) == (name, params)
    schedule = get_schedule(spec)
    assert schedule.name == name and get_schedule(schedule.spec) == schedule  # the spec string rebuilds it
    assert schedule.params() == params


@pytest.mark.parametrize("spec, match", [
    ("polynomial:power", "'power' is not KEY=VALUE; write e.g. polynomial:power=3"),
    ("polynomial:degree=3", r"schedule 'polynomial' does not take \['degree'\]; it takes power"),
    ("cosine:power=2", r"schedule 'cosine' does not take \['power'\]; it takes no parameters"),
    ("polynomial:power=0", "power must be a positive number; got 0.0"),
    ("polynomial:power=inf", "power must be a positive number; got inf"),
    ("grid:times=1/0.5", "times must run from 1 down to 0"),
    ("grid:times=1/0.5/0.7/0", r"times must decrease; times\[2\] = 0.7 follows 0.5"),
    ("grid:times=1/nan/0", r"times\[1\] = nan is not a finite number"),
    ("grid:times=1/0,base=grid", "the base of a time grid is a schedule"),
    ("grid", "schedule 'grid' needs times: write e.g. grid:times=..."),
])
def test_a_bad_spec_is_one_named_error(spec, match):
    with pytest.raises(UnidiffError, match=match):
        get_schedule(spec)


def test_equal_specs_are_equal_schedules():
    assert Polynomial(3) == get_schedule("polynomial:power=3") != Polynomial(2)
    assert LogLinear() != Polynomial(1) and len({Cosine(), Cosine(), LogLinear()}) == 2


def test_an_explicit_grid_is_visited_exactly_by_its_steps():
    from unidiff.process.absorbing import step_budget

    times = (1.0, 0.9, 0.5, 0.2, 0.0)
    grid, cosine = TimeGrid(times, "cosine"), Cosine()
    S = len(times) - 1
    n = torch.tensor([1000])
    for k in range(S):  # after step k, the masked count is the base schedule's at times[k + 1]
        _, left, _ = step_budget(n, torch.tensor([S]), k, grid)
        want = math.floor(1000 * cosine.mask_prob(torch.tensor(times[k + 1], dtype=torch.float64)).item() + 1e-6)
        assert left.item() == want
    t = torch.tensor([1 - 1 / 8, 0.3, 0.6], dtype=torch.float64)  # between knots: linear in the grid's time
    w = torch.tensor([1 - 0.5 * 0.1, 0.5 - 0.8 * 0.3, 0.9 - 0.6 * 0.4], dtype=torch.float64)
    assert torch.allclose(grid.mask_prob(t), cosine.mask_prob(w))
    # Its ELBO weight is the base's at the warped time, times the warp's slope: a finite difference agrees.
    h = 1e-6
    assert torch.allclose(grid.dalpha(t), (grid.alpha(t + h) - grid.alpha(t - h)) / (2 * h), rtol=1e-5)
