"""Discrete alternatives of compare_tails (lognormal, truncated power law, stretched exponential
normalised over the integers >= xmin): sums against brute force, fits against `powerlaw` on
Clauset's data sets and against the exact likelihood."""

from __future__ import annotations

import warnings

import discrete_oracle as oracle
import numpy as np
import pytest

import powerlaw
from gradnoise.stats import compare_tails, fit_power_law
from gradnoise.stats._powerlaw_discrete import (
    _ln_stats,
    _tpl_stats,
    discrete_sums,
    lognormal_logf,
    se_logf,
    tpl_logf,
)

FAMILIES = {
    "lognormal": (lognormal_logf, oracle.lognormal),
    "truncated_power_law": (tpl_logf, oracle.truncated_power_law),
    "stretched_exponential": (se_logf, oracle.stretched_exponential),
}


@pytest.mark.parametrize(
    ("family", "p1", "p2", "q"),
    [
        ("lognormal", -1.0, -0.05, 1.0),  # heavy: decays like a power law for a long way
        ("lognormal", 0.5, -0.01, 7.0),  # increasing first, mass far beyond q
        ("lognormal", 10.0, -1.0, 2.0),  # a narrow peak beyond q
        ("truncated_power_law", 1.01, 1e-4, 2.0),  # near the power-law boundary, late cut-off
        ("truncated_power_law", -5.0, 0.5, 3.0),  # increasing first (gamma-like)
        ("truncated_power_law", 3.0, 1e-6, 100.0),
        ("stretched_exponential", 0.05, 20.0, 10.0),  # near the power-law boundary
        ("stretched_exponential", 2.0, 0.01, 1.0),  # compressed: a peak beyond q
    ],
)
def test_normalising_sums_match_brute_force(family, p1, p2, q):
    """log Z and the means of the statistics against the direct sum of the first 2e5 terms
    plus an mpmath tail (with Euler–Maclaurin endpoint terms)."""
    ours, ref = FAMILIES[family]
    a, b = np.array([p1]), np.array([p2])
    if family == "stretched_exponential":
        log_z, _ = discrete_sums(ours(a, b), None, np.array([q]), 0)
    else:
        stats = _ln_stats if family == "lognormal" else _tpl_stats
        log_z, means = discrete_sums(
            ours(a, b), stats, np.array([q]), 4 if stats is _ln_stats else 5
        )
        e_y = oracle.mean(ref(p1, p2), lambda y, m: y, q, terms=200_000)
        assert means[0, 0] == pytest.approx(e_y, rel=1e-11)
    assert log_z[0] == pytest.approx(oracle.log_normaliser(ref(p1, p2), q, 200_000), rel=1e-12)


def _powerlaw_compare(data, xmin, alt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(
            data,
            xmin=xmin,
            discrete=True,
            estimate_discrete=False,
            parameter_ranges={"alpha": [1, 100]},
            verbose=0,
        )
        r, p = fit.distribution_compare("power_law", alt)
        dist = getattr(fit, alt)
        return r, p, dist, float(np.sum(np.log(dist.pdf(fit.data))))


@pytest.mark.parametrize("name", ["terrorism"])  # blackouts and words: benchmarks/powerlaw.py
def test_truncated_power_law_matches_powerlaw(name):
    """`powerlaw` normalises its discrete truncated power law exactly (Lerch's Phi): same R and p
    (CSN Table 6.1, terrorism: R = -0.077, p = 0.70). A KKT slip had put both on the boundary."""
    data = powerlaw.load_test_dataset(name)
    fit = fit_power_law(data, discrete=True, min_tail=1)
    res = compare_tails(data, "truncated_power_law", discrete=True, xmin=fit.xmin)
    r_ref, p_ref, _, ll_ref = _powerlaw_compare(data, fit.xmin, "truncated_power_law")
    assert not res.boundary and res.nested
    assert res.loglik_ratio == pytest.approx(r_ref, rel=1e-4)
    assert res.pvalue == pytest.approx(p_ref, rel=1e-3)
    assert res.loglik_alternative >= ll_ref - 1e-8 * abs(ll_ref)  # Nelder–Mead vs exact MLE


@pytest.mark.parametrize(
    ("name", "alt"),
    [
        ("terrorism", "lognormal"),
        ("terrorism", "stretched_exponential"),
        ("blackouts", "stretched_exponential"),
    ],
)
def test_lognormal_and_stretched_exponential_against_powerlaw_and_brute_force(name, alt):
    """`powerlaw`'s discrete lognormal and stretched exponential are rounded continuous laws
    (P(k) = F(k + 1/2) - F(k - 1/2), renormalised from xmin - 1/2), not CSN's normalisation over
    the integers: its log-likelihood is the rounded law's (oracle), and differs from the exact
    one at its own parameters. Ours is the exact one (brute force at our parameters), and it is
    the larger at the maximum."""
    data = powerlaw.load_test_dataset(name)
    fit = fit_power_law(data, discrete=True, min_tail=1)
    q = float(fit.xmin)
    tail = data[data >= q].astype(np.float64)
    res = compare_tails(data, alt, discrete=True, xmin=q)
    _, _, dist, ll_pk = _powerlaw_compare(data, q, alt)
    if alt == "lognormal":
        s2 = dist.sigma**2
        theirs = oracle.lognormal((dist.mu - np.log(q)) / s2, -0.5 / s2)
        rounded = oracle.round_lognormal_log_pmf(dist.mu, dist.sigma, q, tail).sum()
        sig, mu = res.params["sigma"], res.params["mu"]
        mine = oracle.lognormal((mu - np.log(q)) / sig**2, -0.5 / sig**2)
    else:
        theirs = oracle.stretched_exponential(dist.beta, (dist.Lambda * q) ** dist.beta)
        rounded = oracle.round_stretched_exponential_log_pmf(dist.beta, dist.Lambda, q, tail).sum()
        b, lam = res.params["beta"], res.params["lambda"]
        mine = oracle.stretched_exponential(b, (lam * q) ** b)
    assert not res.boundary
    assert ll_pk == pytest.approx(rounded, abs=1e-3)
    exact_theirs = oracle.log_pmf(theirs, q, tail, 200_000).sum()
    exact_mine = oracle.log_pmf(mine, q, tail, 200_000).sum()
    assert res.loglik_alternative == pytest.approx(exact_mine, abs=1e-8)
    assert exact_mine >= exact_theirs


@pytest.mark.parametrize("alt", ["lognormal", "truncated_power_law", "stretched_exponential"])
def test_discrete_mle_is_a_local_maximum_of_the_exact_likelihood(alt):
    """Every small move of the fitted parameters lowers the brute-force log-likelihood."""
    rng = np.random.default_rng(21)
    x = np.floor(rng.lognormal(2.0, 1.0, 1200)) + 1.0
    q = 5.0
    tail = x[x >= q]
    res = compare_tails(x, alt, discrete=True, xmin=q)
    assert not res.boundary
    p = res.params
    if alt == "lognormal":
        base = [(p["mu"] - np.log(q)) / p["sigma"] ** 2, -0.5 / p["sigma"] ** 2]
    elif alt == "truncated_power_law":
        base = [p["alpha"], p["lambda"] * q]
    else:
        base = [p["beta"], (p["lambda"] * q) ** p["beta"]]
    family = FAMILIES[alt][1]

    def loglik(a, b):
        return oracle.log_pmf(family(a, b), q, tail, 100_000).sum()

    best = loglik(*base)
    assert res.loglik_alternative == pytest.approx(best, abs=1e-7)
    for da, db in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        moved = loglik(base[0] * (1 + 1e-3 * da), base[1] * (1 + 1e-3 * db))
        assert moved < best


def test_power_law_tails_put_the_alternatives_on_their_boundary():
    """Words (CSN's discrete example): the lognormal and the stretched exponential cannot beat
    the power law (their maxima are its limit: R = 0, p = 1); the truncated power law is CSN's
    R = -0.9, p = 0.18 (Table 6.1)."""
    data = powerlaw.load_test_dataset("words")
    fit = fit_power_law(data, discrete=True, min_tail=1)
    ln = compare_tails(data, "lognormal", discrete=True, xmin=fit.xmin)
    assert ln.boundary and ln.loglik_ratio == 0.0 and ln.pvalue == 1.0
    q = float(fit.xmin)
    tail = data[data >= q].astype(np.float64)
    # no lognormal close to the boundary (sigma large, mode far below xmin) beats the power law
    for e2 in (-1e-3, -1e-2):
        e1 = 1.0 - fit.alpha + 0.5 * e2  # near the power law's e1 = 1 - alpha
        assert (
            oracle.log_pmf(oracle.lognormal(e1, e2), q, tail, 100_000).sum() < ln.loglik_power_law
        )
    tpl = compare_tails(data, "truncated_power_law", discrete=True, xmin=fit.xmin)
    assert tpl.loglik_ratio == pytest.approx(-0.906, abs=0.01)


@pytest.mark.parametrize("alt", ["lognormal", "truncated_power_law", "stretched_exponential"])
def test_discrete_batch_equals_loop(alt):
    rng = np.random.default_rng(22)
    x = np.floor(rng.pareto(1.2, size=(600, 3)) * 3) + 1.0
    res = compare_tails(x, alt, discrete=True, min_tail=30)
    for j in range(3):
        one = compare_tails(x[:, j], alt, discrete=True, min_tail=30)
        assert res.loglik_ratio[j] == pytest.approx(one.loglik_ratio, rel=1e-9, abs=1e-9)
        assert res.pvalue[j] == pytest.approx(one.pvalue, rel=1e-9, abs=1e-12)
