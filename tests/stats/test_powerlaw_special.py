"""Special functions behind the power-law code, against mpmath / scipy at high precision."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from scipy import special

from gradnoise.stats._powerlaw_alt import log_expint, tn_log_partition, tn_moments
from gradnoise.stats._powerlaw_zeta import discrete_alpha_mle, hurwitz_moments


def test_log_hurwitz_zeta_against_scipy():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(1.001, 6.0, 300), rng.uniform(6.0, 100.0, 50)])
    q = np.concatenate([rng.integers(1, 3000, 350).astype(float)])
    lz, _, _ = hurwitz_moments(a, q)
    ref = np.log(special.zeta(a, q))
    ok = ref > -700  # scipy loses precision in the subnormal range and then underflows
    np.testing.assert_allclose(lz[ok], ref[ok], rtol=2e-15, atol=2e-15)
    assert np.isfinite(lz).all()


@pytest.mark.parametrize(
    ("a", "q"), [(1.0001, 1.0), (1.5, 1.0), (2.5, 7.0), (3.0, 500.0), (50.0, 3.0), (99.0, 1.0)]
)
def test_hurwitz_log_moments_against_mpmath(a, q):
    mpmath.mp.dps = 50
    z = [mpmath.zeta(a, q, k) for k in range(3)]
    lq = mpmath.log(q)
    m1 = -z[1] / z[0] - lq  # E[ln(X/q)]
    m2 = z[2] / z[0] + 2 * lq * z[1] / z[0] + lq**2  # E[ln^2(X/q)]
    lz, g1, g2 = hurwitz_moments(np.array([a]), np.array([q]))
    assert lz[0] == pytest.approx(float(mpmath.log(z[0])), rel=1e-14, abs=1e-14)
    assert g1[0] == pytest.approx(float(m1), rel=1e-13)
    assert g2[0] == pytest.approx(float(m2), rel=1e-13)


def test_discrete_mle_solves_the_score_equation():
    q = np.array([1.0, 5.0, 100.0])
    ybar = np.array([0.8, 0.05, 0.002])
    a, var = discrete_alpha_mle(ybar, q)
    mpmath.mp.dps = 40
    for ai, qi, yi in zip(a, q, ybar, strict=True):
        m1 = -mpmath.zeta(ai, qi, 1) / mpmath.zeta(ai, qi) - mpmath.log(qi)
        assert float(m1) == pytest.approx(yi, rel=1e-12)
    assert (var > 0).all()


@pytest.mark.parametrize(
    "p", [-5.0, -0.3, 0.0, 0.5, 0.999, 1.0, 1.0001, 1.5, 2.0, 2.0003, 3.7, 30.0]
)
def test_log_expint_against_mpmath(p):
    mpmath.mp.dps = 60
    x = np.array([1e-8, 1e-3, 0.1, 0.5, 0.99, 1.0, 1.5, 3.0, 10.0, 100.0, 700.0])
    got = log_expint(np.full_like(x, p), x)
    ref = np.array([float(mpmath.log(mpmath.expint(p, xi))) for xi in x])
    np.testing.assert_allclose(got, ref, rtol=5e-12, atol=5e-12)


def test_log_expint_at_zero():
    assert log_expint(np.array([2.5]), np.array([0.0]))[0] == pytest.approx(-np.log(1.5))
    assert log_expint(np.array([0.5]), np.array([0.0]))[0] == np.inf


@pytest.mark.parametrize(
    ("e1", "e2"),
    [
        (-3.0, -0.01),
        (-1.0, -1.0),
        (2.0, -1.0),
        (10.0, -0.5),
        (-50.0, -1e-6),
        (-0.5, -2.0),
        (0.3, -0.05),
        (-4.0, -2.0),
    ],
)
def test_truncated_normal_against_quadrature(e1, e2):
    mpmath.mp.dps = 40
    pts = [0, 0.1, 1, 10, 100, mpmath.inf]

    def moment(k):
        return mpmath.quad(lambda z: z**k * mpmath.exp(e1 * z + e2 * z * z), pts)

    z0 = moment(0)
    got = tn_moments(np.array([e1]), np.array([e2]))
    assert tn_log_partition(np.array([e1]), np.array([e2]))[0] == pytest.approx(
        float(mpmath.log(z0)), rel=1e-13, abs=1e-13
    )
    for k in range(1, 5):
        assert got[k - 1][0] == pytest.approx(float(moment(k) / z0), rel=1e-12)


def test_truncated_normal_boundary_is_the_exponential():
    e1 = np.array([-2.0, -2.0])
    e2 = np.array([0.0, -1e-300])
    m = tn_moments(e1, e2)
    for k in range(1, 5):
        np.testing.assert_allclose(m[k - 1], special.factorial(k) / 2.0**k, rtol=1e-14)
    np.testing.assert_allclose(tn_log_partition(e1, e2), -np.log(2.0), rtol=1e-14)
