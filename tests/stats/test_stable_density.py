"""The tabulated SαS density/CDF against scipy, closed forms and the tail series."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import gammaln

from gradnoise.stats._stable_density import alpha_grid, get_table, quadrature_logpdf
from gradnoise.stats.stable import sas_cdf, sas_logpdf


def _node(alpha: float) -> int:
    return int(np.flatnonzero(np.isclose(alpha_grid(), alpha))[0])


@pytest.mark.parametrize("alpha", [0.5, 0.8, 1.05, 1.3, 1.5, 1.7, 1.9, 1.99])
def test_nodes_match_scipy_logpdf(alpha):
    table = get_table()
    z = np.concatenate([np.linspace(0.05, 12, 40), [20.0, 60.0, 300.0]])
    mine = table.logpdf_nodes(np.full(z.shape, _node(alpha)), z)[0]
    ref = stats.levy_stable.logpdf(z, alpha, 0.0)
    np.testing.assert_allclose(mine, ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("alpha", [0.6, 1.2, 1.6, 1.95])
def test_far_tail_matches_series_and_core_matches_f0(alpha):
    """scipy is unreliable far out (and rounds to f(0) near 0): use the math instead."""
    table = get_table()
    k = _node(alpha)
    z = np.array([1e4, 1e6])
    j = np.arange(1, 4)[:, None]
    terms = (
        (-1.0) ** (j + 1)
        * np.exp(gammaln(j * alpha + 1) - gammaln(j + 1))
        * np.sin(j * np.pi * alpha / 2)
        / np.pi
        * z ** (-j * alpha - 1)
    )
    mine = table.logpdf_nodes(np.full(2, k), z)[0]
    np.testing.assert_allclose(mine, np.log(terms.sum(axis=0)), atol=1e-6)
    lead = gammaln(alpha + 1) + np.log(np.sin(np.pi * alpha / 2) / np.pi)
    assert np.all(np.abs(mine - (lead - (alpha + 1) * np.log(z))) < 0.01)
    f0 = gammaln(1 + 1 / alpha) - np.log(np.pi)
    assert abs(table.logpdf_nodes(np.array([k]), np.array([1e-5]))[0][0] - f0) < 1e-6
    # survival: leading term Gamma(alpha) sin(pi alpha/2)/pi z^-alpha, and S(0+) = 1/2
    sf_terms = (
        (-1.0) ** (j + 1)
        * np.exp(gammaln(j * alpha) - gammaln(j + 1))
        * np.sin(j * np.pi * alpha / 2)
        / np.pi
        * z ** (-j * alpha)
    )
    np.testing.assert_allclose(
        table.logsf_nodes(np.full(2, k), z), np.log(sf_terms.sum(axis=0)), atol=1e-6
    )
    assert abs(np.exp(table.logsf_nodes(np.array([k]), np.array([1e-9]))[0]) - 0.5) < 1e-8


def test_closed_forms_cauchy_and_gaussian():
    table = get_table()
    z = np.array([0.0, 0.3, 1.0, 4.0, 50.0, 1e4])
    np.testing.assert_allclose(
        table.logpdf_nodes(np.full(6, _node(1.0)), z)[0], stats.cauchy.logpdf(z), atol=1e-8
    )
    np.testing.assert_allclose(
        table.logpdf_nodes(np.full(6, _node(2.0)), z)[0],
        stats.norm.logpdf(z, scale=np.sqrt(2)),
        rtol=1e-12,
    )
    # the quadrature itself reproduces the Gaussian just below alpha = 2 and the Cauchy near 1
    t = np.linspace(-3, 1.5, 10)
    q = quadrature_logpdf(1.9999, t)
    np.testing.assert_allclose(q, stats.norm.logpdf(np.exp(t), scale=np.sqrt(2)), atol=1e-3)
    q = quadrature_logpdf(1.0001, t)
    np.testing.assert_allclose(q, stats.cauchy.logpdf(np.exp(t)), atol=1e-3)


def test_density_integrates_to_one_and_cdf_is_consistent():
    for alpha in (0.7, 1.3, 1.8):
        z = np.linspace(-40, 40, 400_001)
        f = np.exp(sas_logpdf(z, alpha))
        mass = f.sum() * (z[1] - z[0])
        tail = 2 * np.exp(get_table().logsf(np.array([40.0]), alpha))[0]
        assert abs(mass + tail - 1) < 1e-5, alpha


@pytest.mark.parametrize("alpha", [1.234, 1.555, 1.85, 1.905, 1.987, 1.999])
def test_between_nodes_against_scipy(alpha):
    """Linear interpolation between alpha nodes: ~1e-4 in the core, a few 1e-3 where the
    Gaussian core meets the power-law tail just below alpha = 2."""
    z = np.linspace(0.0, 6.0, 61)
    err = np.abs(sas_logpdf(z, alpha) - stats.levy_stable.logpdf(z, alpha, 0.0))
    assert err[z <= 3].max() < 1e-3
    assert err.max() < 5e-3
    zz = np.linspace(-8, 8, 33)
    np.testing.assert_allclose(sas_cdf(zz, alpha), stats.levy_stable.cdf(zz, alpha, 0.0), atol=1e-5)


def test_scale_and_location():
    x = np.array([-3.0, 0.5, 2.0, 10.0])
    np.testing.assert_allclose(
        sas_logpdf(x, 1.5, scale=2.0, loc=1.0),
        stats.levy_stable.logpdf(x, 1.5, 0.0, loc=1.0, scale=2.0),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="alpha"):
        sas_logpdf(x, 0.3)
    with pytest.raises(ValueError, match="scale"):
        sas_cdf(x, 1.5, scale=-1.0)
