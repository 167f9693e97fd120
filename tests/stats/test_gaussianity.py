"""normality_test and projection_normality_test: statistics against scipy, p-values against
scipy / Monte Carlo, calibration under a Gaussian null (binomial band), power, multiplicity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gradnoise.errors import InsufficientDataError
from gradnoise.stats import adjust_pvalues, normality_test, sample_stable
from gradnoise.stats.gaussianity import (
    anderson_darling_pvalue,
    lilliefors_pvalue,
    projection_normality_test,
)

METHODS = ["shapiro", "dagostino", "anderson", "jarque_bera", "lilliefors"]


@pytest.fixture(scope="module")
def mixed():
    rng = np.random.default_rng(0)
    return np.column_stack(
        [rng.standard_normal(300), rng.standard_t(4, 300), rng.exponential(size=300)]
    )


def test_scipy_backed_tests_equal_scipy_column_by_column(mixed):
    for method, fn in [
        ("shapiro", stats.shapiro),
        ("dagostino", stats.normaltest),
        ("jarque_bera", stats.jarque_bera),
    ]:
        res = normality_test(mixed, method=method)
        for j in range(3):
            ref = fn(mixed[:, j])
            assert res.statistic[j] == pytest.approx(ref.statistic, rel=1e-10)
            assert res.pvalue[j] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)


def test_anderson_statistic_and_pvalue_against_scipy(mixed):
    res = normality_test(mixed, method="anderson")
    for j in range(3):
        ref = stats.anderson(mixed[:, j], dist="norm", method="interpolate")
        assert res.statistic[j] == pytest.approx(ref.statistic, rel=1e-9)
    # scipy interpolates its critical-value table (p clipped to [0.01, 0.15]): compare inside it
    x = np.random.default_rng(8).standard_t(6, size=(150, 60))
    res = normality_test(x, method="anderson")
    compared = 0
    for j in range(60):
        ref = stats.anderson(x[:, j], dist="norm", method="interpolate")
        if 0.012 < ref.pvalue < 0.14:
            assert res.pvalue[j] == pytest.approx(ref.pvalue, abs=0.01)
            compared += 1
    assert compared >= 5


def test_lilliefors_statistic_is_the_ks_distance_to_the_fitted_normal(mixed):
    res = normality_test(mixed, method="lilliefors")
    for j in range(3):
        col = mixed[:, j]
        ref = stats.kstest(col, stats.norm(col.mean(), col.std(ddof=1)).cdf).statistic
        assert res.statistic[j] == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("method", ["anderson", "lilliefors"])
def test_approximate_pvalues_against_monte_carlo(method):
    """scipy.stats.goodness_of_fit simulates the null with estimated loc/scale: the same
    composite null as ours. Mildly non-normal samples give p-values across (0, 1)."""
    rng = np.random.default_rng(7)
    stat = {"anderson": "ad", "lilliefors": "ks"}[method]
    for n, df in [(40, 5), (150, 8), (400, 12)]:
        x = rng.standard_t(df, size=n)
        ours = normality_test(x, method=method).pvalue
        mc = stats.goodness_of_fit(stats.norm, x, statistic=stat, n_mc_samples=4000, rng=rng).pvalue
        assert abs(ours - mc) < 0.03 + 0.1 * mc, (n, ours, mc)


def test_pvalue_formulas_are_monotone_and_bounded():
    a2 = np.r_[np.linspace(0, 20, 400), 1e3, 1e6]  # huge A^2: no overflow warning
    p = anderson_darling_pvalue(a2, 100)
    assert np.all(np.diff(p) <= 1e-12) and p.min() >= 0 and p.max() <= 1
    assert p[-1] == 3.7e-24
    d = np.r_[np.linspace(0, 0.5, 400), 1.0]
    for n in (10, 100, 1000):
        p = lilliefors_pvalue(d, n)
        assert np.all(np.diff(p) <= 1e-9) and p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [50, 500])
def test_calibration_under_the_gaussian_null(method, n):
    """Rejection rate at 5% over 2,000 Gaussian columns within the binomial 99.9% band."""
    reps = 2000
    x = np.random.default_rng(100 + n).normal(3.0, 2.0, size=(n, reps))
    rate = np.mean(normality_test(x, method=method).pvalue < 0.05)
    lo, hi = stats.binom.interval(0.999, reps, 0.05)
    if method == "jarque_bera" and n == 50:
        # JB's chi2(2) p-value is conservative at small n (documented): only bounded above
        assert rate <= hi / reps, rate
        assert rate < 0.045, rate
    else:
        assert lo / reps <= rate <= hi / reps, (method, n, rate)


@pytest.mark.parametrize("method", METHODS)
def test_power_against_heavy_tails(method):
    n, reps = 1000, 200
    sas = sample_stable(1.8, size=(n, reps), rng=1)
    t5 = np.random.default_rng(2).standard_t(5, size=(n, reps))
    p_sas = np.mean(normality_test(sas, method=method).pvalue < 0.05)
    p_t = np.mean(normality_test(t5, method=method).pvalue < 0.05)
    assert p_sas > 0.6, (method, p_sas)
    assert p_t > 0.6, (method, p_t)


def test_correction_across_columns_uses_multitest():
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.standard_normal((400, 20)), rng.standard_t(2, (400, 5))])
    res = normality_test(x, method="shapiro", correction="holm", level=0.05)
    np.testing.assert_allclose(
        res.multitest.pvalues_adjusted, adjust_pvalues(res.pvalue, method="holm")
    )
    assert res.multitest.reject[20:].all() and not res.multitest.reject[:20].any()
    assert normality_test(x, method="shapiro").multitest is None


def test_shapes_axes_and_errors():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 2, 3))
    res = normality_test(x, method="anderson")
    assert res.statistic.shape == (2, 3) and res.n == 100
    np.testing.assert_allclose(
        normality_test(np.moveaxis(x, 0, -1), method="anderson", axis=-1).pvalue, res.pvalue
    )
    assert isinstance(normality_test(x[:, 0, 0]).pvalue, float)
    with pytest.raises(InsufficientDataError, match="at least 20"):
        normality_test(x[:10], method="dagostino")
    with pytest.raises(InsufficientDataError, match="constant"):
        normality_test(np.ones((50, 2)), method="lilliefors")
    with pytest.raises(ValueError, match="NaN"):
        normality_test(np.r_[rng.standard_normal(30), np.nan])
    with pytest.raises(ValueError, match="method"):
        normality_test(x, method="ks")
    # grossly non-normal columns: tiny p-values, no floating-point warnings (warnings = errors)
    wild = np.column_stack([rng.exponential(size=5000) ** 4, rng.standard_cauchy(5000)])
    for method in ("anderson", "lilliefors", "dagostino", "jarque_bera", "shapiro"):
        assert np.all(normality_test(wild, method=method).pvalue < 1e-6)


def test_projection_test_calibration_and_power():
    """Correlated Gaussian vectors: the global (BH/Simes over directions) rejection rate stays
    near the level; multivariate t vectors (Gaussian coordinates marginally heavy) are found."""
    rng = np.random.default_rng(5)
    d, n, reps = 30, 200, 300
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    rejections = 0
    for r in range(reps):
        xi = rng.standard_normal((n, d)) @ a.T
        res = projection_normality_test(
            xi, n_directions=10, rng=r, method="anderson", correction="bh"
        )
        rejections += res.reject_gaussian
    _, hi = stats.binom.interval(0.999, reps, 0.05)
    assert 0 < rejections <= hi, rejections  # Simes/BH over dependent directions: valid
    # multivariate t with 4 dof: every projection is t_4
    w = rng.chisquare(4, size=(n, 1)) / 4
    xt = rng.standard_normal((n, d)) @ a.T / np.sqrt(w)
    res = projection_normality_test(xt, n_directions=25, rng=0, method="shapiro")
    assert res.reject_gaussian and res.fraction_rejected > 0.5
    assert res.statistic.shape == (25,) and res.dim == d and res.n == n


def test_projection_test_is_reproducible_and_checks_arguments():
    x = np.random.default_rng(6).standard_normal((100, 8))
    a = projection_normality_test(x, n_directions=5, rng=3)
    b = projection_normality_test(x, n_directions=5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.pvalue, b.pvalue)
    c = projection_normality_test(x, n_directions=5, rng=4)
    assert not np.array_equal(a.pvalue, c.pvalue)
    # a single direction along one coordinate reproduces the coordinate's test
    one = projection_normality_test(x[:, :1], n_directions=1, rng=0, method="shapiro")
    assert one.pvalue[0] == pytest.approx(stats.shapiro(x[:, 0]).pvalue)
    with pytest.raises(ValueError, match="n_directions"):
        projection_normality_test(x, n_directions=0, rng=0)
    with pytest.raises(TypeError, match="n_directions"):
        projection_normality_test(x, n_directions=2.5, rng=0)
