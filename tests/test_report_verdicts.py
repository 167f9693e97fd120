"""Verdicts on synthetic inputs whose answer is known: each rule gives supports, contradicts and
inconclusive where it should. Where the analysis's own statistics are numpy functions (noise
model, spectra fits, variance trend) they run on synthetic noise; the tails families are given
as the fractions the battery would report."""

from __future__ import annotations

import numpy as np
import pytest

from gradnoise.stats import sample_stable
from gradnoise.study.analyses import noise_model, spectra, tails, variance
from gradnoise.study.analyses._noise_stats import battash_stats, panigrahi_stats, simsekli_stats
from gradnoise.study.claims import (
    CONTRADICTS,
    INCONCLUSIVE,
    SUPPORTS,
    Claim,
    fraction_verdict,
    run_claims,
    wilson,
)


def _gaussian(rng, k, c):
    scales = np.exp(rng.normal(0, 1, c))  # heterogeneous per-coordinate scales, as in networks
    return rng.standard_normal((k, c)) * scales


def _stable(rng, k, c, alpha=1.3):
    scales = np.exp(rng.normal(0, 1, c))
    return sample_stable(alpha, size=(k, c), rng=rng) * scales


# ------------------------------------------------------------------------------ the rule itself


def test_wilson_interval_and_fraction_rule():
    low, high = wilson(50, 100)
    assert low < 0.5 < high
    assert wilson(0, 0) == (0.0, 1.0)
    assert fraction_verdict(9, 10, majority_supports=True) == SUPPORTS
    assert fraction_verdict(1, 10, majority_supports=True) == CONTRADICTS
    assert fraction_verdict(6, 10, majority_supports=True) == INCONCLUSIVE
    assert fraction_verdict(1, 10, majority_supports=False) == SUPPORTS
    assert fraction_verdict(4, 4, majority_supports=True) == INCONCLUSIVE  # too few samples
    with pytest.raises(ValueError, match="verdict must be one of"):
        Claim("p", "c", "maybe", "e", "r")


# ------------------------------------------------------------------------------ noise model


def _simsekli(noise, rng):
    row, _ = simsekli_stats(noise, rng=rng)
    return {"simsekli": {"checkpoints": [{**row, "step": 100}]}}


def test_gaussian_sgn_contradicts_heavy_tails_and_stable_sgn_supports_them():
    rng = np.random.default_rng(0)
    gauss = noise_model.claims(_simsekli(_gaussian(rng, 400, 300), rng))
    stable = noise_model.claims(_simsekli(_stable(rng, 400, 300), rng))
    assert [c.paper for c in gauss] == ["Simsekli et al. 2019"]
    assert gauss[0].verdict == CONTRADICTS, gauss[0].evidence
    assert stable[0].verdict == SUPPORTS, stable[0].evidence
    assert "α" in gauss[0].evidence and gauss[0].test_rule


def test_simsekli_rule_in_between_is_inconclusive():
    row = {
        "step": 5,
        "per_coord_alpha_median": 1.8,
        "per_coord_alpha_gaussian_control_median": 2.0,
        "per_coord_samples": 50,
        "pooled_alpha": 0.7,
        "pooled_alpha_gaussian_control": 0.8,
    }
    [claim] = noise_model.claims({"simsekli": {"checkpoints": [row]}})
    assert claim.verdict == INCONCLUSIVE


def _panigrahi(xi, batch_size, rng):
    row = panigrahi_stats(xi, test="shapiro", directions=40, level=0.05, rng=rng)
    return {"panigrahi": {"rows": [{**row, "step": 0, "batch_size": batch_size}]}}


def test_panigrahi_gaussian_large_batch_supports_heavy_contradicts_small_batch_inconclusive():
    rng = np.random.default_rng(1)
    [gauss] = noise_model.claims(_panigrahi(_gaussian(rng, 300, 60), 256, rng))
    [heavy] = noise_model.claims(_panigrahi(_stable(rng, 300, 60, alpha=1.1), 512, rng))
    [small] = noise_model.claims(_panigrahi(_gaussian(rng, 300, 60), 32, rng))
    assert gauss.verdict == SUPPORTS, gauss.evidence
    assert heavy.verdict == CONTRADICTS, heavy.evidence
    assert small.verdict == INCONCLUSIVE and "no batch size >= 256" in small.evidence


def _battash(xi, rng):
    c = xi.shape[1]
    summary, _, _ = battash_stats(
        xi, groups=np.zeros(c, dtype=np.int64), names=["w"], numels=[c], fit_coords=c, rng=rng
    )
    row = {**summary, "step": 10, "batch_size": 32}
    return {"battash": {"rows": [row], "map": {"batch_size": 32}}}


@pytest.mark.parametrize(("alpha", "verdict"), [(2.0, CONTRADICTS), (1.2, SUPPORTS)])
def test_battash_stable_fits_win_only_on_stable_noise(alpha, verdict):
    rng = np.random.default_rng(2)
    xi = _gaussian(rng, 300, 24) if alpha == 2.0 else _stable(rng, 300, 24, alpha)
    [claim] = noise_model.claims(_battash(xi, rng))
    assert claim.paper == "Battash et al. 2024"
    assert claim.verdict == verdict, claim.evidence


# ------------------------------------------------------------------------------ tails


def _family(key, plausible, bootstrapped, values=200):
    return {
        "key": key,
        "label": key,
        "plausible": plausible,
        "bootstrapped": bootstrapped,
        "level": 0.1,
        "values_per_sample": values,
    }


def test_tails_claims_both_directions_and_inconclusive():
    heavy_dims = {
        "families": [
            _family("dim_minibatch/layer", 9, 10),
            _family("iter_grad", 1, 40),
            _family("iter_sgn", 35, 40),
        ]
    }
    dim, it, sgn = tails.claims(heavy_dims)
    assert (dim.verdict, it.verdict, sgn.verdict) == (SUPPORTS, SUPPORTS, CONTRADICTS)
    assert dim.paper == "Xie et al. 2023"
    few = tails.claims({"families": [_family("dim_minibatch/model", 2, 2)]})
    assert [c.verdict for c in few] == [INCONCLUSIVE]
    split = tails.claims({"families": [_family("iter_grad", 20, 40)]})
    assert [c.verdict for c in split] == [INCONCLUSIVE]


# ------------------------------------------------------------------------------ spectra


def _cov(values, s_random):
    fit = spectra.fit_spectrum(values, [1, 40], bootstrap=40, rng=0)
    return {
        "covariance": [
            {"kind": "trained", "label": "trained", "fit": fit},
            {"kind": "random", "label": "random", "fit": {"s": s_random}},
        ],
        "hessian": [],
    }


def test_power_law_spectrum_supports_and_random_matrix_contradicts():
    ranks = np.arange(1, 61, dtype=np.float64)
    [power] = spectra.claims(_cov(ranks**-1.2, 0.08))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 2000))
    mp = np.linalg.eigvalsh(x @ x.T / 2000)[::-1]  # a Marchenko–Pastur bulk: flat ranks
    [flat] = spectra.claims(_cov(mp, 0.08))
    assert power.verdict == SUPPORTS, power.evidence
    assert flat.verdict == CONTRADICTS, flat.evidence
    [short] = spectra.claims(
        {
            "covariance": [
                {"kind": "trained", "label": "t", "fit": {"s": 1.0, "pvalue": 0.5, "n": 6}}
            ]
        }
    )
    assert short.verdict == INCONCLUSIVE


def _hessian_claim(fit):
    rows = [{"kind": "trained", "label": "t", "fit": fit}]
    return spectra.claims({"covariance": [], "hessian": rows})[0]


def test_hessian_rule():
    def claim(s, p, n):
        return _hessian_claim({"s": s, "pvalue": p, "n": n}).verdict

    assert claim(1.0, 0.5, 40) == SUPPORTS
    assert claim(0.1, 0.5, 40) == CONTRADICTS
    assert claim(1.0, 0.01, 40) == CONTRADICTS
    assert claim(1.0, 0.5, 6) == INCONCLUSIVE
    # the borderline band 0.05 <= p <= 0.1: a p-value on the fence decides nothing ...
    assert claim(1.0, 0.095, 40) == INCONCLUSIVE
    assert claim(1.0, 0.05, 40) == INCONCLUSIVE
    assert claim(1.0, 0.1, 40) == INCONCLUSIVE
    assert claim(1.0, 0.101, 40) == SUPPORTS
    assert claim(1.0, 0.049, 40) == CONTRADICTS
    # ... unless s alone already contradicts "s near 1"
    assert claim(3.0, 0.095, 40) == CONTRADICTS
    assert claim(0.4, 0.095, 40) == CONTRADICTS
    rule = _hessian_claim({"s": 1.0, "pvalue": 0.095, "n": 40}).test_rule
    assert "0.05 <= p <= 0.1" in rule and "inconclusive" in rule and "p > 0.1" in rule


@pytest.mark.parametrize(
    ("name", "verdict"),
    [("power law", SUPPORTS), ("exponential", CONTRADICTS), ("Gaussian matrix", CONTRADICTS)],
)
def test_hessian_rule_on_synthetic_spectra(name, verdict):
    """Rank fits (with the CSN bootstrap) of known spectra: a power law k^-1 supports; an
    exponential decay (its least-squares s, 1.75, lies inside 0.5..2, so only the bootstrap can
    reject it) and the top eigenvalues of a Gaussian (Wigner) matrix contradict."""
    k = np.arange(1, 61, dtype=np.float64)
    if name == "power law":
        values = k**-1.0
    elif name == "exponential":
        values = np.exp(-0.1 * k)
    else:
        a = np.random.default_rng(5).standard_normal((300, 300))
        values = np.linalg.eigvalsh((a + a.T) / np.sqrt(600))[::-1][:60]
    fit = spectra.fit_spectrum(values, [1, 60], bootstrap=100, rng=0)
    claim = _hessian_claim(fit)
    assert claim.verdict == verdict, claim.evidence
    if name == "exponential":
        assert 0.5 <= fit["s"] <= 2.0 and fit["pvalue"] < 0.05
    # the same fit with its p-value moved into the borderline band is inconclusive when its s
    # is near 1, and still contradicts when it is not
    borderline = _hessian_claim({**fit, "pvalue": 0.095}).verdict
    assert borderline == (INCONCLUSIVE if 0.5 <= fit["s"] <= 2.0 else CONTRADICTS)


def test_covariance_rule_has_the_same_borderline_band():
    def claim(s, p, s_random=0.1, n=40):
        rows = [
            {"kind": "trained", "label": "t", "fit": {"s": s, "pvalue": p, "n": n}},
            {"kind": "random", "label": "r", "fit": {"s": s_random}},
        ]
        return spectra.claims({"covariance": rows, "hessian": []})[0]

    assert claim(1.0, 0.5).verdict == SUPPORTS
    assert claim(1.0, 0.095).verdict == INCONCLUSIVE
    assert claim(1.0, 0.04).verdict == CONTRADICTS
    assert claim(0.15, 0.095).verdict == CONTRADICTS  # like the random matrix either way
    assert "0.05 <= p <= 0.1" in claim(1.0, 0.095).test_rule


# ------------------------------------------------------------------------------ variance


def _variance(values, gc_ratio=None, below=None):
    steps = np.arange(len(values), dtype=np.float64) * 10
    res = {
        "variance_trend": variance.trend(steps, np.asarray(values, dtype=np.float64), 0.0),
        "options": {"transient": 0.1},
    }
    if gc_ratio is not None:
        res["comparators"] = {
            "measurements": 12,
            "estimators": {"gc": {"ratio_to_sg_geomean": gc_ratio, "below_sg_fraction": below}},
        }
    return variance.claims(res)


def test_variance_growth_rule_both_directions_and_inconclusive():
    assert _variance(np.linspace(1, 3, 12))[0].verdict == SUPPORTS
    assert _variance(np.linspace(3, 1, 12))[0].verdict == CONTRADICTS
    rng = np.random.default_rng(4)
    assert _variance(1 + 0.01 * rng.standard_normal(12) + [0, 1] * 6)[0].verdict == INCONCLUSIVE
    assert _variance([1, 2, 3])[0].verdict == INCONCLUSIVE  # too few measurements
    _, gc = _variance(np.linspace(1, 3, 12), gc_ratio=0.3, below=1.0)
    assert gc.verdict == SUPPORTS
    assert _variance(np.linspace(1, 3, 12), gc_ratio=1.4, below=0.0)[1].verdict == CONTRADICTS
    assert _variance(np.linspace(1, 3, 12), gc_ratio=0.9, below=0.5)[1].verdict == INCONCLUSIVE


def test_run_claims_skips_unavailable_and_keeps_pipeline_order():
    analyses = {
        "variance": {
            "variance_trend": {"growth": 2.0, "spearman": 0.9, "points": 9},
            "options": {"transient": 0.1},
        },
        "tails": {"unavailable": "no checkpoint was reached"},
        "training": {"recorded_steps": 3},
    }
    rows = run_claims(analyses, ["training", "tails", "variance"])
    assert [r["analysis"] for r in rows] == ["variance"]
    assert rows[0]["verdict"] == SUPPORTS
    assert set(rows[0]) == {"analysis", "paper", "claim", "verdict", "evidence", "test_rule"}


# ------------------------------------------------------------------------------ escape


def _decay(decay_gain, batch_gain, jump_change):
    from gradnoise.study.analyses import _escape_stats as es

    base = np.array([0.50, 0.51, 0.49, 0.50])
    jumps = np.array([0.10, 0.11, 0.09, 0.10])
    arms = {
        "constant": {"test_acc": base, "jump_frequency": jumps},
        "lr-decay": {"test_acc": base + decay_gain, "jump_frequency": jumps + jump_change},
        "batch-increase": {"test_acc": base + batch_gain, "jump_frequency": jumps},
    }
    return {"decay": {"verdict": es.decay_verdict(arms)}}


def test_escape_decay_claim_follows_the_decay_verdict():
    from gradnoise.study.analyses import escape

    [helps] = escape.claims(_decay(0.1, 0.1, -0.05))
    [hurts] = escape.claims(_decay(-0.1, 0.1, -0.05))
    [noisy] = escape.claims(_decay(0.004, 0.1, -0.05))
    assert helps.paper == "Battash et al. 2024"
    assert (helps.verdict, hurts.verdict, noisy.verdict) == (SUPPORTS, CONTRADICTS, INCONCLUSIVE)
    assert escape.claims({"decay": {}}) == []
