"""Bad inputs to the statistics layer: each a clear error naming the input and the fix, or an
exact computation (extreme magnitudes are rescaled by powers of two, which is exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradnoise.errors import InsufficientDataError, InvalidDataError
from gradnoise.stats import (
    adjust_pvalues,
    compare_noise_models,
    compare_tails,
    fit_power_law,
    fit_stable,
    multiple_test,
    normality_test,
    power_law_test,
    projection_normality_test,
    sas_cdf,
    sas_logpdf,
    tail_index,
)

RNG = np.random.default_rng(20260101)
X = RNG.standard_t(3, size=(400, 3))  # heavy-ish columns, no zeros


# --------------------------------------------------------------------------------------------
# empty input: "cannot reshape array of size 0" before
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fn",
    [
        fit_stable,
        lambda x: fit_stable(x, method="mle"),
        tail_index,
        lambda x: tail_index(x, method="hill"),
        normality_test,
        compare_noise_models,
        lambda x: projection_normality_test(x, n_directions=2, rng=0),
    ],
)
@pytest.mark.parametrize("shape", [(0,), (0, 3)])
def test_empty_input_names_the_input(fn, shape):
    with pytest.raises(InsufficientDataError, match=r"x is empty along axis 0 \(shape \(0"):
        fn(np.empty(shape))


def test_zero_columns_give_empty_results():
    """An empty batch (n samples, no columns) is not an error: the results are empty."""
    x = np.empty((100, 0))
    assert fit_stable(x).alpha.shape == (0,)
    assert tail_index(x).alpha.shape == (0,)
    assert normality_test(x, method="anderson").pvalue.shape == (0,)
    with pytest.raises(InsufficientDataError, match="no coordinates"):
        projection_normality_test(x, n_directions=2, rng=0)


@pytest.mark.parametrize("fn", [fit_power_law, compare_tails, power_law_test])
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)])
def test_power_law_empty_input(fn, shape):
    with pytest.raises(InsufficientDataError, match="x is empty"):
        fn(np.empty(shape), axis=0)


def test_multiple_testing_bad_shapes():
    with pytest.raises(ValueError, match="got a scalar"):
        adjust_pvalues(np.float64(0.3))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        adjust_pvalues(np.array([0.1, 0.2]), axis=2)
    with pytest.raises(InsufficientDataError, match="no tests"):
        multiple_test(np.array([]))
    assert adjust_pvalues(np.array([])).shape == (0,)


# --------------------------------------------------------------------------------------------
# all-equal data
# --------------------------------------------------------------------------------------------
def test_tail_index_of_constant_data_is_an_error():
    """Mohammadi's estimate of any non-zero constant was 1.0, Hill's was ~-5e15."""
    x = X.copy()
    x[:, 1] = 3.0
    with pytest.raises(InsufficientDataError, match=r"constant .*columns \[1\]"):
        tail_index(x)
    with pytest.raises(InsufficientDataError, match=r"k\+1 = 21 largest \|x\| are all equal"):
        tail_index(x, method="hill")
    # ties short of the k+1 largest are fine, and Hill is now exactly the naive formula
    y = X[:, 0].copy()
    y[np.argsort(np.abs(y))[-5:]] = 50.0
    a = np.sort(np.abs(y))[::-1]
    assert tail_index(y, method="hill", k=20).alpha == pytest.approx(
        20 / np.log(a[:20] / a[20]).sum(), rel=1e-13
    )


def test_mohammadi_eps_swamping_and_zeros():
    """eps is absolute: on data of size 1e-300 the default eps made the estimate ~ -2e13."""
    with pytest.raises(InvalidDataError, match="as large as the typical"):
        tail_index(X * 1e-300)
    exact = tail_index(X, eps=0.0).alpha
    np.testing.assert_allclose(tail_index(np.ldexp(X, -997), eps=0.0).alpha, exact, rtol=1e-12)
    z = X.copy()
    z[7, 2] = 0.0
    with pytest.raises(InvalidDataError, match=r"eps=0 but 1 column\(s\) .*\[2\]"):
        tail_index(z, eps=0.0)


# --------------------------------------------------------------------------------------------
# huge / tiny magnitudes: exact by power-of-two rescaling
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1020, -1000])
def test_tail_index_is_scale_free_at_extreme_magnitudes(shift):
    """Block sums of values near 1e308 overflowed to inf (alpha = 0)."""
    x = np.abs(X)  # positive, up to 1.2e308: block sums of 20 overflow
    big = np.ldexp(x, shift)
    for kw in ({"eps": 0.0}, {"method": "hill"}):
        np.testing.assert_allclose(tail_index(big, **kw).alpha, tail_index(x, **kw).alpha, 1e-12)
    if shift > 0:  # eps scales with the data: the default estimate is unchanged as well
        np.testing.assert_allclose(tail_index(big).alpha, tail_index(x).alpha, rtol=1e-12)


@pytest.mark.parametrize("method", ["mcculloch", "cf", "mle"])
@pytest.mark.parametrize("shift", [1000, -1000])
def test_fit_stable_is_equivariant_at_extreme_magnitudes(method, shift):
    """The MLE overflowed (RuntimeWarning: sigma**2) on values of size 1e300."""
    ref = fit_stable(X, method=method)
    big = fit_stable(np.ldexp(X, shift), method=method)
    np.testing.assert_allclose(big.alpha, ref.alpha, rtol=1e-9)
    np.testing.assert_allclose(np.ldexp(big.scale, -shift), ref.scale, rtol=1e-9)
    np.testing.assert_allclose(np.ldexp(big.loc, -shift), ref.loc, rtol=1e-8, atol=1e-12)
    if method == "mle":
        np.testing.assert_allclose(big.loglik, ref.loglik - X.shape[0] * shift * math.log(2), 1e-9)
        fixed = fit_stable(np.ldexp(X, shift), method="mle", loc=0.0)
        np.testing.assert_allclose(fixed.alpha, fit_stable(X, method="mle", loc=0.0).alpha, 1e-9)


@pytest.mark.parametrize(
    "method", ["shapiro", "dagostino", "anderson", "jarque_bera", "lilliefors"]
)
def test_normality_tests_at_extreme_magnitudes(method):
    """All but Shapiro overflowed (RuntimeWarning in the moments) on values of size 1e300."""
    ref = normality_test(X, method=method)
    for shift in (1000, -1000):
        res = normality_test(np.ldexp(X, shift), method=method)
        np.testing.assert_allclose(res.statistic, ref.statistic, rtol=1e-9)
        np.testing.assert_allclose(res.pvalue, ref.pvalue, rtol=1e-7)


def test_compare_noise_models_at_extreme_magnitudes():
    ref = compare_noise_models(X)
    res = compare_noise_models(np.ldexp(X, 1000))
    np.testing.assert_allclose(res.stable_alpha, ref.stable_alpha, rtol=1e-9)
    np.testing.assert_allclose(np.ldexp(res.gaussian_std, -1000), ref.gaussian_std, rtol=1e-12)
    shift = X.shape[0] * 1000 * math.log(2)
    np.testing.assert_allclose(res.loglik_gaussian, ref.loglik_gaussian - shift, rtol=1e-12)
    np.testing.assert_allclose(res.loglik_stable, ref.loglik_stable - shift, rtol=1e-9)
    np.testing.assert_array_equal(res.winner, ref.winner)


def test_sas_density_of_non_finite_points():
    """NaN and +-inf raised a RuntimeWarning (invalid cast) inside the table lookup."""
    x = np.array([np.nan, np.inf, -np.inf, 0.5])
    lp = sas_logpdf(x, 1.5)
    assert np.isnan(lp[0]) and lp[1] == -np.inf and lp[2] == -np.inf
    assert lp[3] == pytest.approx(float(sas_logpdf(0.5, 1.5)))
    cdf = sas_cdf(x, 1.5)
    assert np.isnan(cdf[0]) and cdf[1] == 1.0 and cdf[2] == 0.0


# --------------------------------------------------------------------------------------------
# power laws
# --------------------------------------------------------------------------------------------
PL = np.sort(RNG.pareto(1.5, 600) + 1.0)


@pytest.mark.parametrize("alt", ["exponential", "lognormal", "truncated_power_law"])
@pytest.mark.parametrize("shift", [1016, -1000, -1060])
def test_compare_tails_at_extreme_magnitudes(alt, shift):
    """Near 1e308 the exponential's tail sum overflowed; on subnormal data (2**-1060: values
    already rounded, so the reference is the same numbers scaled up exactly) the exponential's
    and the truncated power law's rates overflowed."""
    x = np.ldexp(PL, shift)
    base = np.ldexp(x, -shift)  # == PL unless x is subnormal
    ref = compare_tails(base, alt, min_tail=20)
    res = compare_tails(x, alt, min_tail=20)
    assert res.loglik_ratio == pytest.approx(ref.loglik_ratio, rel=1e-9, abs=1e-9)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-12)
    assert res.xmin == np.ldexp(ref.xmin, shift)
    n_shift = ref.n_tail * shift * math.log(2)
    assert res.loglik_power_law == pytest.approx(ref.loglik_power_law - n_shift, rel=1e-12)
    if alt == "lognormal":
        assert res.params["mu"] == pytest.approx(ref.params["mu"] + shift * math.log(2), 1e-9)
    elif shift > -1024:
        assert res.params["lambda"] == pytest.approx(np.ldexp(ref.params["lambda"], -shift), 1e-9)
    else:  # a rate of ~1e319 per unit of x is beyond float64
        assert res.params["lambda"] == np.inf


def test_power_law_bootstrap_near_the_largest_float():
    """Synthetic draws above xmin overflowed to inf for data near 1.8e308."""
    x = np.ldexp(PL, 1016)
    ref = power_law_test(PL, n_boot=20, rng=3, min_tail=20)
    res = power_law_test(x, n_boot=20, rng=3, min_tail=20)
    np.testing.assert_allclose(res.boot_ks, ref.boot_ks, rtol=1e-9, atol=1e-12)
    assert res.pvalue == ref.pvalue


def test_discrete_power_law_beyond_exact_integers():
    with pytest.raises(InvalidDataError, match=r"below 2\*\*53"):
        fit_power_law(np.round(PL) * 1e20, discrete=True, min_tail=20)
