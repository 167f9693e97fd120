"""Bad inputs to the statistics layer: each a clear error naming the input and the fix, or an
exact computation (extreme magnitudes are rescaled by powers of two, which is exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradnoise.errors import DataError, InsufficientDataError
from gradnoise.spectra.covariance import covariance_spectrum, gram_matrix, gram_spectrum
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
from gradnoise.variance import (
    gradient_variance,
    gsnr,
    normalized_gradient_variance,
    stratified_minibatch_variance,
)

RNG = np.random.default_rng(20260101)
X = RNG.standard_t(3, size=(400, 3))  # heavy-ish columns, no zeros


# --------------------------------------------------------------------------------------------
# the table: input, call, error type, words of the message (naming the input and the fix)
# --------------------------------------------------------------------------------------------
E0, E03, SCALAR, TEXT = np.empty(0), np.empty((0, 3)), np.float64(3.0), np.array(["a"] * 40)
CONST, CONST2 = np.full(400, 3.0), np.column_stack([X[:, 0], np.full(400, 3.0)])
NAN, INF = np.r_[np.abs(X[:, 0]) + 0.1, np.nan], np.r_[np.abs(X[:, 0]) + 0.1, np.inf]
NAN2 = np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X)
HUGE = np.abs(X) * 1e300
GRAD = np.random.default_rng(5).standard_normal((6, 64))
PL = np.abs(X[:, 0]) + 0.1
EMPTY = r"x is empty along axis 0 \(shape \(0"

BAD_INPUTS = [
    # empty arrays (were "cannot reshape array of size 0")
    ("fit_stable empty", lambda: fit_stable(E0), InsufficientDataError, EMPTY),
    ("fit_stable empty 2-D", lambda: fit_stable(E03), InsufficientDataError, EMPTY),
    ("fit_stable mle empty", lambda: fit_stable(E0, method="mle"), InsufficientDataError, EMPTY),
    ("tail_index empty", lambda: tail_index(E0), InsufficientDataError, EMPTY),
    ("tail_index empty 2-D", lambda: tail_index(E03), InsufficientDataError, EMPTY),
    ("hill empty", lambda: tail_index(E0, method="hill"), InsufficientDataError, EMPTY),
    ("normality empty", lambda: normality_test(E0), InsufficientDataError, EMPTY),
    ("normality empty 2-D", lambda: normality_test(E03), InsufficientDataError, EMPTY),
    ("noise models empty", lambda: compare_noise_models(E0), InsufficientDataError, EMPTY),
    (
        "projections empty",
        lambda: projection_normality_test(E03, n_directions=2, rng=0),
        InsufficientDataError,
        EMPTY,
    ),
    (
        "projections no coordinates",
        lambda: projection_normality_test(np.empty((50, 0)), n_directions=2, rng=0),
        InsufficientDataError,
        "no coordinates",
    ),
    ("fit_power_law empty", lambda: fit_power_law(E0), InsufficientDataError, "x is empty"),
    ("fit_power_law empty 2-D", lambda: fit_power_law(E03), InsufficientDataError, "x is empty"),
    (
        "fit_power_law no samples",
        lambda: fit_power_law(np.empty((3, 0))),
        InsufficientDataError,
        "x is empty",
    ),
    ("compare_tails empty", lambda: compare_tails(E0), InsufficientDataError, "x is empty"),
    ("power_law_test empty", lambda: power_law_test(E0), InsufficientDataError, "x is empty"),
    ("multiple_test empty", lambda: multiple_test(E0), InsufficientDataError, "no tests"),
    (
        "gradient_variance no rows",
        lambda: gradient_variance(GRAD[:0]),
        InsufficientDataError,
        "at least",
    ),
    (
        "NGV no rows",
        lambda: normalized_gradient_variance(GRAD[:0]),
        InsufficientDataError,
        "at least",
    ),
    (
        "stratified no rows",
        lambda: stratified_minibatch_variance(GRAD[:0], [], batch_size=2),
        InsufficientDataError,
        "no rows",
    ),
    # all-equal data (tail_index returned alpha = 1.0; Hill ~ -5e15)
    ("tail_index constant", lambda: tail_index(CONST), InsufficientDataError, "constant"),
    (
        "tail_index constant column",
        lambda: tail_index(CONST2),
        InsufficientDataError,
        r"constant .*\[1\]",
    ),
    ("tail_index zeros", lambda: tail_index(np.zeros(400)), InsufficientDataError, "constant"),
    ("hill constant", lambda: tail_index(CONST, method="hill"), InsufficientDataError, "all equal"),
    ("fit_stable constant", lambda: fit_stable(CONST), InsufficientDataError, "interquartile"),
    (
        "fit_stable mle constant",
        lambda: fit_stable(CONST, method="mle"),
        InsufficientDataError,
        "interquartile",
    ),
    ("normality constant", lambda: normality_test(CONST), InsufficientDataError, "constant"),
    (
        "noise models constant",
        lambda: compare_noise_models(CONST),
        InsufficientDataError,
        "interquartile",
    ),
    (
        "fit_power_law constant",
        lambda: fit_power_law(CONST),
        InsufficientDataError,
        "no candidate xmin",
    ),
    # NaN / Inf
    ("fit_stable NaN", lambda: fit_stable(NAN2), DataError, "1 NaN/Inf"),
    ("fit_stable Inf", lambda: fit_stable(INF), DataError, "1 NaN/Inf"),
    ("tail_index NaN", lambda: tail_index(NAN2), DataError, "1 NaN/Inf"),
    ("hill Inf", lambda: tail_index(INF, method="hill"), DataError, "NaN/Inf"),
    ("normality NaN", lambda: normality_test(NAN2), DataError, "1 NaN/Inf"),
    ("noise models Inf", lambda: compare_noise_models(INF), DataError, "NaN/Inf"),
    (
        "projections NaN",
        lambda: projection_normality_test(NAN2, n_directions=2, rng=0),
        DataError,
        "NaN/Inf",
    ),
    ("fit_power_law NaN", lambda: fit_power_law(NAN), DataError, "1 NaN/Inf"),
    ("fit_power_law Inf", lambda: fit_power_law(INF), DataError, "1 NaN/Inf"),
    ("compare_tails NaN", lambda: compare_tails(NAN), DataError, "NaN/Inf"),
    ("power_law_test Inf", lambda: power_law_test(INF, n_boot=2), DataError, "NaN/Inf"),
    (
        "adjust_pvalues NaN",
        lambda: adjust_pvalues(np.array([0.1, np.nan])),
        ValueError,
        "not be NaN",
    ),
    (
        "gradient_variance NaN",
        lambda: gradient_variance(np.where(GRAD > 2, np.nan, GRAD)),
        DataError,
        "NaN/Inf",
    ),
    ("gsnr Inf", lambda: gsnr(np.where(GRAD > 2, np.inf, GRAD)), DataError, "NaN/Inf"),
    (
        "covariance_spectrum NaN",
        lambda: covariance_spectrum(np.where(GRAD > 2, np.nan, GRAD)),
        DataError,
        "NaN/Inf",
    ),
    (
        "gram_spectrum Inf",
        lambda: gram_spectrum(np.full((3, 3), np.inf)),
        DataError,
        "NaN/Inf",
    ),
    # magnitudes whose result does not fit in float64
    (
        "gradient_variance 1e300",
        lambda: gradient_variance(GRAD * 1e300),
        DataError,
        "overflows float64.*divide samples",
    ),
    (
        "variance batch 1e300",
        lambda: gradient_variance(GRAD * 1e300, batch_size=2),
        DataError,
        "overflows float64",
    ),
    (
        "stratified 1e300",
        lambda: stratified_minibatch_variance(GRAD * 1e300, np.repeat([0, 1], 3), batch_size=2),
        DataError,
        "overflows float64.*divide per_sample",
    ),
    (
        "covariance_spectrum 1e300",
        lambda: covariance_spectrum(GRAD * 1e300),
        DataError,
        "overflows float64.*divide G",
    ),
    ("gram_matrix 1e300", lambda: gram_matrix(GRAD * 1e300), DataError, "overflows float64"),
    (
        "discrete power law 1e300",
        lambda: fit_power_law(np.round(HUGE[:, 0]), discrete=True),
        DataError,
        r"below 2\*\*53",
    ),
    # too few draws, estimator preconditions
    (
        "NGV one draw",
        lambda: normalized_gradient_variance(GRAD[:1]),
        InsufficientDataError,
        "single draw",
    ),
    ("gsnr one draw ddof 0", lambda: gsnr(GRAD[:1], ddof=0), InsufficientDataError, "single draw"),
    (
        "variance one draw ddof 0",
        lambda: gradient_variance(GRAD[:1], ddof=0),
        InsufficientDataError,
        "single draw",
    ),
    (
        "mohammadi eps swamps 1e-300",
        lambda: tail_index(X * 1e-300),
        DataError,
        "as large as the typical",
    ),
    (
        "mohammadi eps=0 with zeros",
        lambda: tail_index(np.r_[X[:399, 0], 0.0], eps=0.0),
        DataError,
        "eps=0 but 1 column",
    ),
    # wrong dimensions, types, axes
    ("fit_stable scalar", lambda: fit_stable(SCALAR), ValueError, "at least one dimension"),
    ("tail_index scalar", lambda: tail_index(SCALAR), ValueError, "at least one dimension"),
    ("normality scalar", lambda: normality_test(SCALAR), ValueError, "at least one dimension"),
    ("fit_power_law scalar", lambda: fit_power_law(SCALAR), ValueError, "got a scalar"),
    ("adjust_pvalues scalar", lambda: adjust_pvalues(np.float64(0.3)), ValueError, "got a scalar"),
    (
        "adjust_pvalues axis",
        lambda: adjust_pvalues(np.array([0.1, 0.2]), axis=2),
        ValueError,
        "axis 2 is out of range",
    ),
    ("fit_stable axis", lambda: fit_stable(X, axis=2), ValueError, "axis 2 is out of range"),
    ("gradient_variance 1-D", lambda: gradient_variance(GRAD[0]), ValueError, "2-D"),
    ("covariance_spectrum 1-D", lambda: covariance_spectrum(GRAD[0]), ValueError, "2-D"),
    ("fit_stable text", lambda: fit_stable(TEXT), TypeError, "numeric"),
    ("fit_power_law text", lambda: fit_power_law(TEXT), TypeError, "numeric"),
    (
        "gradient_variance text",
        lambda: gradient_variance(TEXT.reshape(20, 2)),
        TypeError,
        "numeric",
    ),
    ("sas_logpdf alpha", lambda: sas_logpdf(0.0, 2.5), ValueError, r"alpha in \[0.5, 2\]"),
]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [row[1:] for row in BAD_INPUTS],
    ids=[row[0] for row in BAD_INPUTS],
)
def test_bad_input_table(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_zero_columns_give_empty_results():
    """An empty batch (n samples, no columns) is not an error: the results are empty."""
    x = np.empty((100, 0))
    assert fit_stable(x).alpha.shape == (0,)
    assert tail_index(x).alpha.shape == (0,)
    assert normality_test(x, method="anderson").pvalue.shape == (0,)
    assert adjust_pvalues(np.array([])).shape == (0,)


# --------------------------------------------------------------------------------------------
# all-equal data
# --------------------------------------------------------------------------------------------
def test_hill_ties_short_of_k_are_fine():
    """Ties below the k+1 largest values leave Hill's estimate finite: the naive formula."""
    y = X[:, 0].copy()
    y[np.argsort(np.abs(y))[-5:]] = 50.0
    a = np.sort(np.abs(y))[::-1]
    assert tail_index(y, method="hill", k=20).alpha == pytest.approx(
        20 / np.log(a[:20] / a[20]).sum(), rel=1e-13
    )


def test_mohammadi_eps_zero_is_exact_at_tiny_magnitudes():
    exact = tail_index(X, eps=0.0).alpha
    np.testing.assert_allclose(tail_index(np.ldexp(X, -997), eps=0.0).alpha, exact, rtol=1e-12)


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
    else:  # a rate of ~1e319 per unit of x is beyond float64 (0 stays 0 on the boundary)
        assert res.params["lambda"] == (np.inf if ref.params["lambda"] > 0 else 0.0)


def test_power_law_bootstrap_near_the_largest_float():
    """Synthetic draws above xmin overflowed to inf for data near 1.8e308."""
    x = np.ldexp(PL, 1016)
    ref = power_law_test(PL, n_boot=20, rng=3, min_tail=20)
    res = power_law_test(x, n_boot=20, rng=3, min_tail=20)
    np.testing.assert_allclose(res.boot_ks, ref.boot_ks, rtol=1e-9, atol=1e-12)
    assert res.pvalue == ref.pvalue
