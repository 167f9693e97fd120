"""sample_stable (Chambers–Mallows–Stuck) against scipy.stats.levy_stable, in S0 and S1."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from scipy import stats

from gradnoise.stats import sample_stable


@contextlib.contextmanager
def scipy_parameterization(parameterization: str):
    """Temporarily flip scipy's *global* levy_stable switch (what our API avoids)."""
    old = stats.levy_stable.parameterization
    stats.levy_stable.parameterization = parameterization
    try:
        yield
    finally:
        stats.levy_stable.parameterization = old


def _ks_pvalue(x, parameterization, *args, **kwargs):
    with scipy_parameterization(parameterization):
        return stats.kstest(x, stats.levy_stable(*args, **kwargs).cdf).pvalue


@pytest.mark.parametrize(
    ("alpha", "beta", "parameterization"),
    [
        (1.5, 0.0, "S1"),
        (1.1, 0.0, "S1"),
        (1.9, 0.0, "S0"),
        (0.8, 0.0, "S1"),
        (1.0, 0.0, "S0"),
        (1.5, 0.7, "S1"),
        (1.5, 0.7, "S0"),
        (0.7, -0.5, "S1"),
        (0.7, -0.5, "S0"),
        (1.0, 0.5, "S1"),
        (1.0, 0.5, "S0"),
    ],
)
def test_sampler_matches_scipy_cdf(alpha, beta, parameterization):
    scale, loc = 1.7, 0.4
    x = sample_stable(alpha, beta, scale, loc, size=2000, rng=11, parameterization=parameterization)
    p = _ks_pvalue(x, parameterization, alpha, beta, loc=loc, scale=scale)
    assert p > 0.001, (alpha, beta, parameterization, p)


def test_parameterisations_differ_only_by_the_documented_shift():
    a, b, sc = 1.5, 0.6, 2.0
    x1 = sample_stable(a, b, sc, 0.0, size=1000, rng=3, parameterization="S1")
    x0 = sample_stable(a, b, sc, 0.0, size=1000, rng=3, parameterization="S0")
    np.testing.assert_allclose(x0 - x1, -b * sc * np.tan(np.pi * a / 2), rtol=1e-10)


def test_a_wrong_parameterisation_is_detected():
    """The KS check has power: skewed S0 draws are not S1 with the same parameters."""
    x = sample_stable(1.5, 0.8, 1.0, 0.0, size=3000, rng=5, parameterization="S0")
    assert _ks_pvalue(x, "S1", 1.5, 0.8) < 1e-6
    assert _ks_pvalue(x, "S0", 1.5, 0.8) > 0.001


def test_alpha_two_is_gaussian_with_variance_two_scale_squared():
    x = sample_stable(2.0, size=200_000, rng=0, scale=1.5, loc=1.0)
    assert abs(x.mean() - 1.0) < 0.02
    assert abs(x.std() - np.sqrt(2) * 1.5) < 0.02
    assert stats.kstest(x[:5000], stats.norm(1.0, np.sqrt(2) * 1.5).cdf).pvalue > 0.001


def test_same_seed_same_numbers_and_broadcasting():
    a = sample_stable([1.2, 1.8], size=(4, 2), rng=7)
    b = sample_stable([1.2, 1.8], size=(4, 2), rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 2)
    assert not np.array_equal(a, sample_stable([1.2, 1.8], size=(4, 2), rng=8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 2.1}, "alpha"),
        ({"alpha": 1.5, "beta": 1.5}, "beta"),
        ({"alpha": 1.5, "scale": 0.0}, "scale"),
        ({"alpha": 1.5, "parameterization": "S2"}, "parameterization"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_stable(size=3, rng=0, **kwargs)


def test_legacy_randomstate_rejected():
    with pytest.raises(TypeError, match="Generator"):
        sample_stable(1.5, size=3, rng=np.random.RandomState(0))
