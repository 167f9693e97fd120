"""compare_noise_models: log-likelihoods and KS distances against scipy, winners on synthetic
Gaussian / SαS / Student-t columns, options and errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gradnoise.stats import compare_noise_models, sample_stable


def test_logliks_and_ks_match_scipy():
    rng = np.random.default_rng(0)
    x = np.column_stack([sample_stable(1.5, 0, 2.0, 1.0, size=150, rng=rng), rng.normal(size=150)])
    r = compare_noise_models(x)
    for j in range(2):
        col = x[:, j]
        mu, sd = col.mean(), col.std()
        assert r.gaussian_mean[j] == pytest.approx(mu) and r.gaussian_std[j] == pytest.approx(sd)
        assert r.loglik_gaussian[j] == pytest.approx(stats.norm.logpdf(col, mu, sd).sum())
        assert r.ks_gaussian[j] == pytest.approx(
            stats.kstest(col, stats.norm(mu, sd).cdf).statistic
        )
        law = stats.levy_stable(
            r.stable_alpha[j], 0.0, loc=r.stable_loc[j], scale=r.stable_scale[j]
        )
        assert r.loglik_stable[j] == pytest.approx(law.logpdf(col).sum(), abs=0.02)
        assert r.ks_stable[j] == pytest.approx(stats.kstest(col, law.cdf).statistic, abs=1e-5)
        assert r.aic_stable[j] == pytest.approx(6 - 2 * r.loglik_stable[j])
        assert r.aic_gaussian[j] == pytest.approx(4 - 2 * r.loglik_gaussian[j])


@pytest.fixture(scope="module")
def verdicts():
    rng = np.random.default_rng(1)
    n, m = 1000, 100
    data = {
        "gaussian": rng.normal(0.0, 0.3, size=(n, m)),
        "sas15": sample_stable(1.5, size=(n, m), rng=rng),
        "sas18": sample_stable(1.8, size=(n, m), rng=rng),
        "t4": rng.standard_t(4, size=(n, m)),
    }
    return {k: compare_noise_models(v) for k, v in data.items()}


def test_winners_on_synthetic_data(verdicts):
    # Gaussian columns: SαS nests the Gaussian, AIC charges it one parameter -> mostly Gaussian
    assert verdicts["gaussian"].fraction_stable < 0.1
    assert np.median(verdicts["gaussian"].stable_alpha) > 1.97
    assert verdicts["sas15"].fraction_stable == 1.0
    assert verdicts["sas18"].fraction_stable > 0.95
    assert verdicts["t4"].fraction_stable > 0.95
    assert abs(np.median(verdicts["sas15"].stable_alpha) - 1.5) < 0.03
    # the fitted SαS is closer to the data than the Gaussian on SαS data
    assert np.all(verdicts["sas15"].ks_stable < verdicts["sas15"].ks_gaussian)
    assert set(np.unique(verdicts["gaussian"].winner)) <= {"gaussian", "stable"}


def test_raw_loglik_never_prefers_gaussian_by_much(verdicts):
    """SαS nests N at alpha = 2, so its maximised log-lik is >= the Gaussian's up to the table's
    interpolation error -- the reason the default criterion is AIC."""
    r = verdicts["gaussian"]
    assert np.all(r.loglik_stable - r.loglik_gaussian > -0.05)


def test_criteria_and_fixed_location():
    x = sample_stable(1.7, size=(800, 6), rng=2)
    aic = compare_noise_models(x)
    ks = compare_noise_models(x, criterion="ks", stable_method="mcculloch")
    ll = compare_noise_models(x, criterion="loglik")
    np.testing.assert_array_equal(ks.winner == "stable", ks.ks_stable < ks.ks_gaussian)
    np.testing.assert_array_equal(ll.winner == "stable", ll.loglik_stable > ll.loglik_gaussian)
    assert aic.stable_method == "mle" and ks.stable_method == "mcculloch"
    fixed = compare_noise_models(x, loc=0.0)
    assert np.all(fixed.gaussian_mean == 0.0) and np.all(fixed.stable_loc == 0.0)
    assert fixed.aic_gaussian[0] == pytest.approx(2 - 2 * fixed.loglik_gaussian[0])
    one = compare_noise_models(x[:, 0])
    assert isinstance(one.winner, str) and isinstance(one.stable_alpha, float)
    assert one.to_dict()["n"] == 800


def test_errors():
    x = np.random.default_rng(0).standard_normal((50, 2))
    with pytest.raises(ValueError, match="criterion"):
        compare_noise_models(x, criterion="bic")
    with pytest.raises(ValueError, match="NaN"):
        compare_noise_models(np.r_[x, [[np.nan, 0.0]]])
    with pytest.raises(ValueError, match="at least 10"):
        compare_noise_models(x[:5])
