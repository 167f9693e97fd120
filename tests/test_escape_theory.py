"""Issue 13 gaps: the Kramers prediction of the Gaussian SDE's box exit from measured axis
barriers, the rate-ratio interval of the sharp-vs-flat comparison, and their torch helpers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as st
from scipy.integrate import cumulative_trapezoid

from gradnoise import levy
from gradnoise.study.analyses import _escape_stats as es
from gradnoise.study.analyses import _escape_torch as et


def exact_mean_exit(g: float, h: float, w: float, d: float, n: int = 400_001) -> float:
    """Exact mean exit time from (-w, w), start 0, of dX = -U'(X) dt + sqrt(2 D) dW with
    U = g x + h x^2/2: T solves D T'' - U' T' = -1, T(+-w) = 0, i.e. with psi = exp(U/D),
    T(x) = (1/D) [C int_{-w}^x psi - int_{-w}^x psi(y) int_{-w}^y 1/psi dz dy], C from T(w) = 0
    (evaluated with shifted exponents and the trapezoid rule on a fine grid)."""
    x = np.linspace(-w, w, n)
    u = g * x + h * x * x / 2
    psi = np.exp((u - u.max()) / d)
    inner = cumulative_trapezoid(np.exp(-(u - u.min()) / d), x, initial=0)
    a = cumulative_trapezoid(psi * inner, x, initial=0)
    b = cumulative_trapezoid(psi, x, initial=0)
    t = (a[-1] / b[-1] * b - a) / d * np.exp((u.max() - u.min()) / d)
    return float(np.interp(0.0, x, t))


def test_axis_quadratic_recovers_slope_and_curvature():
    g, h, w = np.array([0.3, -0.2, 0.0]), np.array([2.0, 0.5, -1.0]), 0.7
    up, um = g * w + h * w * w / 2, -g * w + h * w * w / 2
    g2, h2 = es.axis_quadratic(up, um, w)
    np.testing.assert_allclose(g2, g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(h2, h, rtol=1e-12)


def test_kramers_box_rate_without_tilt_is_levy_quadratic_cut():
    h, w, lr, scale = np.array([0.5, 2.0]), 0.8, 0.05, np.array([0.4, 0.9])
    d = lr * scale**2
    ours = es.kramers_box_rates(0.0, h, w, d)["rate"]
    ref = levy.exit_time_theory(2.0, scale, lr, half_widths=w, curvature=h).rate
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


@pytest.mark.parametrize("g", [0.0, 0.3])
def test_kramers_box_rate_converges_to_the_exact_exit_time_at_order_d(g):
    """Laplace's method has relative error O(D/dU): the error halves as D halves."""
    h, w = 1.0, 1.0
    barrier = (h * w - abs(g)) ** 2 / (2 * h)
    errs = []
    for ratio in (20, 40, 80):
        d = barrier / ratio
        k = es.kramers_box_rates(g, h, w, d)
        assert k["barrier"] == pytest.approx(barrier, rel=1e-12)
        assert k["ratio"] == pytest.approx(ratio, rel=1e-12)
        errs.append(1 / float(k["rate"]) / exact_mean_exit(g, h, w, d) - 1)
    assert abs(errs[0]) < 0.1
    for e1, e2 in itertools.pairwise(errs):
        assert 0.4 < e2 / e1 < 0.6


def test_kramers_box_rates_flag_axes_without_barrier():
    w = 1.0
    k = es.kramers_box_rates(
        np.array([0.1, 0.1, 2.0, 0.0]), np.array([1.0, -1.0, 1.0, 0.0]), w, 0.01
    )
    assert np.isfinite(k["rate"][0]) and k["rate"][0] > 0
    assert np.isnan(k["rate"][1:]).all()  # concave, minimum outside the box, flat
    assert np.isnan(k["ratio"][1:]).all()


def test_gauss_box_theory_regime_and_sum_over_coordinates():
    w, lr = 1.0, 0.1
    g, h = np.array([0.0, 0.2, 0.0]), np.array([1.0, 2.0, 3.0])
    up, um = g * w + h * w * w / 2, -g * w + h * w * w / 2
    scale = np.array([0.5, 0.6, 0.0])  # the third coordinate has no noise: left out
    got = es.gauss_box_theory(up, um, w, scale, lr)
    d = lr * scale[:2] ** 2
    rates = es.kramers_box_rates(g[:2], h[:2], w, d)["rate"]
    assert got["in_regime"] and got["coordinates"] == 2
    assert got["mean_steps"] == pytest.approx(1 / (rates.sum() * lr), rel=1e-12)
    # too much noise: barrier / D below the threshold -> no prediction, counted
    loud = es.gauss_box_theory(up, um, w, 10 * scale, lr)
    assert not loud["in_regime"] and loud["mean_steps"] is None
    assert loud["below_min_ratio"] == 2 and loud["no_barrier"] == 0
    # one concave axis is enough to refuse the prediction
    bad = es.gauss_box_theory(np.array([-0.1, up[1]]), np.array([-0.1, um[1]]), w,
                              scale[:2], lr)  # fmt: skip
    assert bad["no_barrier"] == 1 and bad["mean_steps"] is None
    # an unmeasured noisy coordinate: counts over the measured ones, no prediction
    part = es.gauss_box_theory(up, um, w, scale, lr, measured=np.array([True, False, True]))
    assert part["coordinates"] == 1 and not part["complete"] and part["mean_steps"] is None
    assert es.gauss_box_theory(up, um, w, scale, lr, measured=np.ones(3, bool))["complete"]


@pytest.mark.parametrize("true_ratio", [1.0, 3.0])
def test_rate_ratio_interval_covers_at_the_stated_level(true_ratio):
    """Exact conditional intervals are conservative: coverage >= level, up to the Monte-Carlo
    error of the coverage estimate (3 standard errors)."""
    rng = np.random.default_rng(0)
    level, reps = 0.95, 2000
    ea, eb, rate_b = 300.0, 500.0, 0.02
    hits = 0
    for _ in range(reps):
        ka, kb = rng.poisson(true_ratio * rate_b * ea), rng.poisson(rate_b * eb)
        r = es.rate_ratio(int(ka), ea, int(kb), eb, level)
        if r["ci_low"] is not None and r["ci_low"] <= true_ratio <= r["ci_high"]:
            hits += 1
    se = math.sqrt(level * (1 - level) / reps)
    assert hits / reps >= level - 3 * se


def test_rate_ratio_estimate_and_verdicts():
    r = es.rate_ratio(30, 100.0, 10, 100.0)
    assert r["ratio"] == pytest.approx(3.0)
    assert r["ci_low"] > 1 and es.sharpness_verdict(r) == "faster"
    # the interval is the Clopper-Pearson interval of 30/40 mapped to the ratio
    lo = st.beta.ppf(0.025, 30, 11)
    assert r["ci_low"] == pytest.approx(lo / (1 - lo), rel=1e-10)
    assert es.sharpness_verdict(es.rate_ratio(10, 100.0, 30, 100.0)) == "slower"
    assert es.sharpness_verdict(es.rate_ratio(10, 100.0, 12, 100.0)) == "no difference detected"
    none = es.rate_ratio(0, 100.0, 0, 100.0)
    assert none["ratio"] is None and es.sharpness_verdict(none) == "no exits"
    one_sided = es.rate_ratio(0, 100.0, 5, 100.0)
    assert one_sided["ci_low"] == 0.0 and one_sided["ci_high"] < math.inf


@pytest.fixture(scope="module")
def small_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x = torch.randn(200, 5)
    y = torch.randint(0, 3, (200,))
    return model, torch.nn.functional.cross_entropy, x, y


def test_axis_losses_are_the_losses_along_each_axis(small_problem):
    model, loss_fn, x, y = small_problem
    net = et.FlatNet(model, loss_fn)
    cols = np.array([0, 7, 20, net.theta.numel() - 1])
    up, um = et.axis_losses(net, cols, 0.3, (x, y), chunk=3)
    base = float(net.loss(net.theta.unsqueeze(0), x, y)[0])
    for k, j in enumerate(cols):
        for sign, got in ((1, up[k]), (-1, um[k])):
            th = net.theta.clone()
            th[j] += sign * 0.3
            want = float(net.loss(th.unsqueeze(0), x, y)[0]) - base
            assert got == pytest.approx(want, abs=1e-6)


def test_train_to_loss_stops_at_the_first_step_at_or_below_the_target(small_problem):
    import copy

    model, loss_fn, x, y = small_problem
    with torch.no_grad():
        start = float(loss_fn(model(x), y))
    target = start - 0.05
    m1 = copy.deepcopy(model)
    steps, loss = et.train_to_loss(m1, loss_fn, x, y, lr=0.5, batch_size=20, target=target,
                                   max_steps=1000, rng=np.random.default_rng(1))  # fmt: skip
    assert 0 < steps < 1000 and loss <= target
    with torch.no_grad():
        assert loss == pytest.approx(float(loss_fn(m1(x), y)), abs=1e-7)
    m2 = copy.deepcopy(model)
    steps2, loss2 = et.train_to_loss(m2, loss_fn, x, y, lr=0.5, batch_size=20, target=target,
                                     max_steps=steps - 1, rng=np.random.default_rng(1))  # fmt: skip
    assert steps2 == steps - 1 and loss2 > target
