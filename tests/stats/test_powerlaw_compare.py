"""compare_tails: likelihood ratios against `powerlaw` and a generic optimiser as oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import optimize, special, stats

import powerlaw
from gradnoise.stats import compare_tails, fit_power_law
from gradnoise.stats._powerlaw_alt import log_expint

ALTS = ["lognormal", "exponential", "truncated_power_law", "stretched_exponential"]


def _powerlaw_compare(x, xmin, alt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, xmin=xmin, parameter_ranges={"alpha": [1, 100]}, verbose=0)
        r, p = fit.distribution_compare("power_law", alt)
        ll_alt = float(np.sum(getattr(fit, alt).loglikelihoods(fit.data)))
        return r, p, ll_alt


@pytest.mark.parametrize("alt", ALTS)
def test_matches_powerlaw_distribution_compare(alt):
    """Data whose alternative fits are interior (powerlaw restricts alpha to (1, 100))."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(0.0, 2.0, 2000)
    xmin = float(np.quantile(x, 0.3))
    r_ref, p_ref, ll_ref = _powerlaw_compare(x, xmin, alt)
    res = compare_tails(x, alt, xmin=xmin)
    assert res.loglik_ratio == pytest.approx(r_ref, rel=1e-6)
    # our MLE is never worse than powerlaw's Nelder–Mead (tol 1e-4)
    assert res.loglik_alternative >= ll_ref - 1e-9 * abs(ll_ref)
    if alt == "truncated_power_law":  # powerlaw's 1 - cdf underflows to 0 here
        assert res.nested and p_ref == 0.0 and 0.0 < res.pvalue < 1e-40
    else:
        assert res.pvalue == pytest.approx(p_ref, rel=1e-2)  # p is steep in powerlaw's tol


def _nll(alt: str, x: np.ndarray, xmin: float):
    """Negative log-likelihood of the truncated alternative, written directly from its pdf."""
    lx = np.log(x)

    def lognormal(t):
        mu, sig = t[0], np.exp(t[1])
        return -np.sum(
            -lx
            - np.log(sig)
            - 0.5 * np.log(2 * np.pi)
            - (lx - mu) ** 2 / (2 * sig**2)
            - special.log_ndtr((mu - np.log(xmin)) / sig)
        )

    def tpl(t):
        a, lam = t[0], np.exp(t[1])
        return -np.sum(-a * lx - lam * x - ((1 - a) * np.log(xmin) + log_expint(a, lam * xmin)))

    def stretched(t):
        b, lam = np.exp(t[0]), np.exp(t[1])
        return -np.sum(np.log(b) + b * np.log(lam) + (b - 1) * lx - lam**b * (x**b - xmin**b))

    return {"lognormal": lognormal, "truncated_power_law": tpl, "stretched_exponential": stretched}[
        alt
    ]


@pytest.mark.parametrize("alt", ["lognormal", "truncated_power_law", "stretched_exponential"])
@pytest.mark.parametrize("kind", ["absgauss", "weibull", "exponential"])
def test_mle_matches_a_generic_optimiser(alt, kind):
    rng = np.random.default_rng(4)
    x = {
        "absgauss": lambda: np.abs(rng.standard_normal(1500)),
        "weibull": lambda: rng.weibull(0.6, 1500),
        "exponential": lambda: rng.exponential(2.0, 1500),
    }[kind]()
    xmin = float(np.quantile(x, 0.2))
    res = compare_tails(x, alt, xmin=xmin)
    tail = x[x >= xmin]
    nll = _nll(alt, tail, xmin)
    p = res.params
    start = {
        "lognormal": lambda: [p["mu"], np.log(p["sigma"])],
        "truncated_power_law": lambda: [p["alpha"], np.log(p["lambda"])],
        "stretched_exponential": lambda: [np.log(p["beta"]), np.log(p["lambda"])],
    }[alt]()
    ours = nll(np.array(start))
    assert ours == pytest.approx(-res.loglik_alternative, rel=1e-10)
    # a generic optimiser from a perturbed start finds nothing better
    opt = optimize.minimize(
        nll,
        np.array(start) * 1.05 + 0.01,
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000},
    )
    assert ours <= opt.fun + 1e-8 * abs(opt.fun)


def test_exponential_closed_form_and_vuong_pvalue():
    rng = np.random.default_rng(5)
    x = rng.lognormal(0.0, 1.0, 1000)
    res = compare_tails(x, "exponential")
    fit = fit_power_law(x)
    t = x[x >= fit.xmin]
    lam = 1.0 / np.mean(t - fit.xmin)
    assert res.params["lambda"] == pytest.approx(lam, rel=1e-12)
    d = (np.log(fit.alpha - 1) - np.log(fit.xmin) - fit.alpha * np.log(t / fit.xmin)) - (
        np.log(lam) - lam * (t - fit.xmin)
    )
    assert res.loglik_ratio == pytest.approx(d.sum(), rel=1e-10)
    z = d.sum() / (np.sqrt(t.size) * d.std())
    assert res.normalized_ratio == pytest.approx(z, rel=1e-10)
    assert res.pvalue == pytest.approx(special.erfc(abs(z) / np.sqrt(2)), rel=1e-10)
    assert not res.nested


def test_nested_pvalues():
    rng = np.random.default_rng(6)
    x = rng.lognormal(0.0, 1.5, 1500)
    res = compare_tails(x, "truncated_power_law")
    assert res.nested and res.loglik_ratio < 0  # the TPL contains the power law
    assert res.pvalue == stats.chi2.sf(2 * abs(res.loglik_ratio), 1)
    half = compare_tails(x, "truncated_power_law", nested_pvalue="half_chi2")
    assert half.pvalue == pytest.approx(0.5 * res.pvalue, rel=1e-12)


def test_power_law_data_puts_alternatives_on_their_boundary():
    """For an exact power law the lognormal / stretched exponential / TPL suprema are (nearly
    always) the power law itself: reported as a boundary fit with R = 0, p = 1."""
    rng = np.random.default_rng(7)
    x = rng.pareto(1.5, 3000) + 1.0
    fit = fit_power_law(x)
    for alt in ["lognormal", "stretched_exponential"]:
        res = compare_tails(x, alt)
        t = x[x >= fit.xmin]
        z = np.log(t / fit.xmin)
        if np.mean(z * z) >= 2 * np.mean(z) ** 2:  # the KKT condition of the boundary
            assert res.boundary and res.loglik_ratio == 0.0 and res.pvalue == 1.0
            # and no interior lognormal beats the power law on this tail
            nll = _nll("lognormal", t, fit.xmin)
            ll_pl = res.loglik_power_law
            for mu, ls in [(0.0, 0.0), (-5.0, 1.0), (-50.0, 2.0), (-500.0, 3.0)]:
                assert -nll(np.array([mu, ls])) <= ll_pl + 1e-9
    tpl = compare_tails(x, "truncated_power_law")
    assert tpl.loglik_ratio <= 0.0


@pytest.mark.parametrize("alt", ALTS)
def test_batch_equals_loop(alt):
    rng = np.random.default_rng(8)
    x = np.abs(rng.standard_t(4, size=(500, 3)))
    res = compare_tails(x, alt)
    for j in range(3):
        one = compare_tails(x[:, j], alt)
        assert res.loglik_ratio[j] == one.loglik_ratio
        assert res.pvalue[j] == one.pvalue
        for k, v in one.params.items():
            assert res.params[k][j] == v or (np.isnan(v) and np.isnan(res.params[k][j]))


def test_reusing_a_fitted_xmin():
    rng = np.random.default_rng(9)
    x = rng.lognormal(0.0, 1.0, (800, 2))
    fit = fit_power_law(x)
    a = compare_tails(x, "lognormal")
    b = compare_tails(x, "lognormal", xmin=fit.xmin)
    np.testing.assert_array_equal(a.loglik_ratio, b.loglik_ratio)


def test_discrete_geometric_alternative():
    rng = np.random.default_rng(10)
    x = rng.geometric(0.05, 2000).astype(float)
    res = compare_tails(x, "exponential", discrete=True, min_tail=20)
    fit = fit_power_law(x, discrete=True, min_tail=20)
    t = x[x >= fit.xmin]

    def nll(lam):
        return -np.sum(np.log1p(-np.exp(-lam)) - lam * (t - fit.xmin))

    lam = optimize.minimize_scalar(
        nll, bounds=(1e-6, 10), method="bounded", options={"xatol": 1e-12}
    ).x
    assert res.params["lambda"] == pytest.approx(lam, rel=1e-7)
    ll_pl = np.sum(-fit.alpha * np.log(t) - np.log(special.zeta(fit.alpha, fit.xmin)))
    assert res.loglik_ratio == pytest.approx(ll_pl + nll(res.params["lambda"]), rel=1e-10)
    assert res.loglik_ratio < 0  # geometric data: the exponential wins


def test_errors():
    x = np.arange(1.0, 301.0)
    with pytest.raises(ValueError, match="alternative"):
        compare_tails(x, "gamma")
    with pytest.raises(ValueError, match="nested_pvalue"):
        compare_tails(x, "truncated_power_law", nested_pvalue="exact")
