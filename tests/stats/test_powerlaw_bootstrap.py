"""power_law_test: CSN's semi-parametric bootstrap (definition, randomness, calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from gradnoise.stats import fit_power_law, power_law_test
from gradnoise.stats._powerlaw_zeta import sample_discrete


def _band(n_rep: int, rate: float, tail: float = 5e-4) -> tuple[float, float]:
    """Central binomial interval holding the observed rate with probability 1 - 2 tail."""
    lo = stats.binom.ppf(tail, n_rep, rate) / n_rep
    hi = stats.binom.ppf(1.0 - tail, n_rep, rate) / n_rep
    return float(lo), float(hi)


def test_fields_and_pvalue_definition():
    rng = np.random.default_rng(0)
    x = rng.pareto(1.5, 500) + 1.0
    res = power_law_test(x, n_boot=60, rng=1)
    fit = fit_power_law(x)
    assert (res.alpha, res.xmin, res.ks, res.n_tail) == (fit.alpha, fit.xmin, fit.ks, fit.n_tail)
    assert res.boot_ks.shape == (60,)
    assert res.pvalue == np.mean(res.boot_ks >= res.ks)
    assert res.n_boot == 60
    assert "boot_ks" not in res.to_dict()


def test_same_seed_same_result_and_chunking_does_not_matter():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal(400))
    a = power_law_test(x, n_boot=100, rng=7)
    b = power_law_test(x, n_boot=100, rng=7, max_values_per_chunk=1000)
    np.testing.assert_array_equal(a.boot_ks, b.boot_ks)
    c = power_law_test(x, n_boot=100, rng=8)
    assert not np.array_equal(a.boot_ks, c.boot_ks)


def test_batch_equals_loop_with_spawned_generators():
    rng = np.random.default_rng(2)
    x = rng.lognormal(0.0, 1.0, size=(300, 2, 2))
    res = power_law_test(x, n_boot=30, rng=11)
    assert res.pvalue.shape == (2, 2) and res.boot_ks.shape == (2, 2, 30)
    children = np.random.default_rng(11).spawn(4)
    for k, (i, j) in enumerate(np.ndindex(2, 2)):
        one = power_law_test(x[:, i, j], n_boot=30, rng=children[k])
        np.testing.assert_array_equal(res.boot_ks[i, j], one.boot_ks)
        assert res.pvalue[i, j] == one.pvalue


def test_replicates_follow_the_fitted_model():
    """A replicate's tail is a power law with the fitted alpha above the fitted xmin; its body
    is resampled from the observed values below xmin."""
    from gradnoise.stats.powerlaw import _draw_block, _fit_flat, _options, _prepare

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(0.1, 1.0, 300), rng.pareto(1.5, 700) + 1.0])
    batch = _prepare(x, 0, "raise", False)
    opt = _options(batch, xmin=1.0, xmin_range=None, discrete=False, min_tail=50, alpha_range=None)
    fit = _fit_flat(batch.xs, batch.off, opt)
    reps = _draw_block(0, 64, batch, fit, False, np.random.default_rng(4))
    tails = reps[reps >= 1.0]
    bodies = reps[reps < 1.0]
    assert np.isin(bodies, x[x < 1.0]).all()
    assert abs(tails.size / reps.size - 0.7) < 0.01
    z = np.log(tails)  # exponential with rate alpha - 1
    assert stats.kstest(z, "expon", args=(0, 1 / (fit.alpha[0] - 1))).pvalue > 1e-3


def test_discrete_sampler_is_exact():
    rng = np.random.default_rng(5)
    a, q = 2.3, 3.0
    draws = sample_discrete(a, q, 1.0 - rng.random(200_000))
    ks = np.arange(q, q + 12)
    pmf = ks**-a / special.zeta(a, q)
    observed = np.array([np.sum(draws == k) for k in ks] + [np.sum(draws >= q + 12)])
    expected = np.append(pmf, 1.0 - pmf.sum()) * draws.size
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # far tail: P(X >= 1000) against the exact survival function
    assert np.mean(draws >= 1000) == pytest.approx(
        special.zeta(a, 1000.0) / special.zeta(a, q), rel=0.1
    )


def test_calibration_fixed_xmin_is_exact():
    """With xmin fixed, ln(x/xmin) is exponential and the KS distance with the fitted rate is
    pivotal: the bootstrap p-value is exactly calibrated, P(p <= 0.1) = 5/50 with 49 replicates."""
    rng = np.random.default_rng(20)
    n_rep = 1000
    x = rng.pareto(1.5, size=(100, n_rep)) + 1.0
    res = power_law_test(x, n_boot=49, rng=21, xmin=1.0)
    rate = float(np.mean(res.pvalue <= 0.1))
    lo, hi = _band(n_rep, 0.1)
    assert lo <= rate <= hi, (rate, lo, hi)


def test_calibration_csn_scan_does_not_over_reject():
    """The full CSN procedure (xmin re-scanned in every replicate) on exact power laws: it must
    not reject more than 10% beyond binomial noise. It is conservative here (about 5-7%, see
    benchmarks/calibrate_powerlaw.py): the resampled body of a replicate has ties and is not a
    power law, so replicates fit worse than the data."""
    rng = np.random.default_rng(22)
    n_rep = 200
    x = rng.pareto(1.5, size=(200, n_rep)) + 1.0
    res = power_law_test(x, n_boot=49, rng=23)
    rate = float(np.mean(res.pvalue <= 0.1))
    assert rate <= _band(n_rep, 0.1)[1], rate
    # ...and it is not a test that never rejects: at least 5 of 200 (a 2.5% rate)
    assert rate >= 0.025, rate


def test_rejects_clearly_non_power_law_data():
    """Bounded data have no power-law tail at any xmin. (Against lognormal or |Gaussian| data the
    power is lower, since the scan can retreat to a short far tail: see the calibration script.)"""
    rng = np.random.default_rng(24)
    x = rng.uniform(1.0, 2.0, size=(1000, 10))
    res = power_law_test(x, n_boot=50, rng=25)
    assert np.mean(res.pvalue <= 0.1) >= 0.8, res.pvalue


def test_discrete_bootstrap_runs_and_matches_its_definition():
    rng = np.random.default_rng(26)
    x = sample_discrete(2.2, 1.0, 1.0 - rng.random(800))
    res = power_law_test(x, n_boot=40, rng=27, discrete=True, min_tail=30)
    assert res.discrete and res.pvalue == np.mean(res.boot_ks >= res.ks)
    assert res.xmin == fit_power_law(x, discrete=True, min_tail=30).xmin


def test_bad_arguments():
    x = np.arange(1.0, 301.0)
    with pytest.raises(ValueError, match="n_boot"):
        power_law_test(x, n_boot=0)
    with pytest.raises(TypeError, match="Generator"):
        power_law_test(x, n_boot=5, rng=np.random.RandomState(0))
