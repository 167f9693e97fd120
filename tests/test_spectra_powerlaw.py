"""fit_rank_power_law: the rank-slope fit, the beta = 1 + 1/s conversion, and the Clauset KS part."""

from __future__ import annotations

import numpy as np
import pytest

from gradnoise.errors import InsufficientDataError
from gradnoise.spectra import eigengaps, fit_rank_power_law
from gradnoise.stats import fit_power_law


def test_exact_rank_power_law_is_recovered():
    k = np.arange(1, 301)
    fit = fit_rank_power_law(100.0 * k**-1.5)
    assert fit.s == pytest.approx(1.5, rel=1e-12)
    assert fit.intercept == pytest.approx(np.log(100.0), rel=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.beta == pytest.approx(1 + 1 / 1.5, rel=1e-12)
    assert (fit.k_min, fit.k_max, fit.n) == (1, 300, 300)
    np.testing.assert_allclose(fit.predict([1, 10]), [100.0, 100.0 * 10**-1.5], rtol=1e-10)
    # order of the input does not matter: values are rank-ordered first
    shuffled = np.random.default_rng(0).permutation(100.0 * k**-1.5)
    assert fit_rank_power_law(shuffled).s == pytest.approx(1.5, rel=1e-12)


def test_rank_window_selects_the_part_that_is_fitted():
    k = np.arange(1, 201, dtype=float)
    lam = np.where(k <= 50, k**-0.5, 50**-0.5 * (k / 50) ** -2.0)  # two slopes, continuous
    head = fit_rank_power_law(lam, k_min=1, k_max=50)
    tail = fit_rank_power_law(lam, k_min=50, k_max=200)
    assert head.s == pytest.approx(0.5, rel=1e-10) and head.r2 == pytest.approx(1.0)
    assert tail.s == pytest.approx(2.0, rel=1e-10)
    assert fit_rank_power_law(lam).r2 < 0.99


def test_least_squares_matches_numpy_polyfit_on_noisy_spectra():
    rng = np.random.default_rng(1)
    k = np.arange(1, 401, dtype=float)
    lam = np.sort(5.0 * k**-1.1 * np.exp(0.2 * rng.standard_normal(k.size)))[::-1]
    fit = fit_rank_power_law(lam, k_min=3, k_max=300)
    slope, intercept = np.polyfit(np.log(k[2:300]), np.log(lam[2:300]), 1)
    assert fit.s == pytest.approx(-slope, rel=1e-10)
    assert fit.intercept == pytest.approx(intercept, rel=1e-10)
    resid = np.log(lam[2:300]) - (intercept + slope * np.log(k[2:300]))
    r2 = 1 - np.sum(resid**2) / np.sum((np.log(lam[2:300]) - np.log(lam[2:300]).mean()) ** 2)
    assert fit.r2 == pytest.approx(r2, rel=1e-10)


def test_clauset_part_reuses_fit_power_law():
    rng = np.random.default_rng(2)
    lam = np.sort(rng.pareto(1.5, 400) + 1.0)[::-1]
    fit = fit_rank_power_law(lam, k_min=2, k_max=350)
    ref = fit_power_law(lam[1:350], min_tail=50)
    assert fit.ks == ref.ks and fit.beta_mle == ref.alpha and fit.xmin == ref.xmin
    assert fit.n_tail == ref.n_tail
    assert fit.s_mle == pytest.approx(1 / (ref.alpha - 1))


def test_density_and_rank_views_agree_on_pareto_samples():
    """Ranked Pareto(beta) samples follow lambda_k ~ k^(-1/(beta-1)) in the tail."""
    beta = 2.5
    rng = np.random.default_rng(3)
    x = (1.0 - rng.random(20_000)) ** (-1.0 / (beta - 1.0))  # density ~ x^-beta on x >= 1
    fit = fit_rank_power_law(x, k_min=10, k_max=2000)
    assert fit.s == pytest.approx(1 / (beta - 1), abs=0.05)
    assert fit.beta == pytest.approx(beta, abs=0.15)
    assert fit.beta_mle == pytest.approx(beta, abs=0.15)
    assert fit.ks < 0.05


def test_small_windows_such_as_top_k_hessian_eigenvalues():
    lam = 3.0 * np.arange(1, 21, dtype=float) ** -1.0
    fit = fit_rank_power_law(lam)
    assert fit.s == pytest.approx(1.0) and fit.n == 20 and fit.n_tail <= 20
    gaps = np.sort(eigengaps(lam))[::-1]
    assert fit_rank_power_law(gaps).s > 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="non-positive"):
        fit_rank_power_law([3.0, 2.0, 1.0, 0.0])
    fit_rank_power_law([3.0, 2.0, 1.0, 0.0], k_max=3)  # the positive part is fine
    with pytest.raises(ValueError, match="k_min"):
        fit_rank_power_law([3.0, 2.0, 1.0], k_min=3, k_max=3)
    with pytest.raises(ValueError, match="NaN"):
        fit_rank_power_law([3.0, np.nan, 1.0])
    with pytest.raises(InsufficientDataError):
        fit_rank_power_law([3.0, 2.0, 1.0], k_min=2, k_max=3)
    assert "beta" in fit_rank_power_law([4.0, 2.0, 1.0]).to_dict()
