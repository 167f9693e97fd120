"""fit_stable: McCulloch against scipy's private _fitstart (oracle), accuracy bounds on synthetic
SαS for the three methods, the MLE against scipy's likelihood, skewed fits, parameterisations,
shapes and input errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.stats._levy_stable import _fitstart_S0, _fitstart_S1

from gradnoise.errors import InsufficientDataError
from gradnoise.stats import fit_stable, sample_stable
from gradnoise.stats._stable_mcculloch import mcculloch_from_quantiles
from gradnoise.stats.stable import _to_parameterization

ALPHAS = (1.1, 1.3, 1.5, 1.7, 1.9, 2.0)


@pytest.mark.parametrize(
    ("alpha", "beta"), [(1.5, 0.0), (1.2, 0.4), (1.8, -0.3), (0.9, 0.6), (1.95, 0.0)]
)
def test_mcculloch_tables_match_scipy_fitstart(alpha, beta):
    """Same quantiles in (scipy uses linear percentiles) -> the same estimates out."""
    rng = np.random.default_rng(4)
    for _ in range(5):
        x = sample_stable(alpha, beta, 1.3, 0.2, size=2000, rng=rng)
        q = np.percentile(x, [5, 25, 50, 75, 95])[:, None]
        a, b, sc, zeta = mcculloch_from_quantiles(q, symmetric=False)
        ra, rb, rdelta1, rc = _fitstart_S1(x)
        np.testing.assert_allclose([a[0], b[0], sc[0]], [ra, rb, rc], rtol=1e-9, atol=1e-12)
        # scipy's S0 location is McCulloch's zeta; its S1 location is converted as ours is
        np.testing.assert_allclose(zeta[0], _fitstart_S0(x)[2], rtol=1e-9, atol=1e-12)
        delta1 = _to_parameterization(a, b, sc, zeta, "S1")
        np.testing.assert_allclose(delta1[0], rdelta1, rtol=1e-9, atol=1e-12)


def _grid(n, reps, rng):
    """(n, reps * len(ALPHAS)) SαS(alpha, scale 2, loc 0.5) columns, alpha blocks side by side."""
    cols = [sample_stable(a, 0.0, 2.0, 0.5, size=(n, reps), rng=rng) for a in ALPHAS]
    return np.concatenate(cols, axis=1), np.repeat(ALPHAS, reps)


@pytest.fixture(scope="module")
def synthetic():
    return _grid(1000, 60, np.random.default_rng(2024))


@pytest.fixture(scope="module")
def synthetic_fits(synthetic):
    x, _ = synthetic
    return {m: fit_stable(x, method=m) for m in ("mcculloch", "cf", "mle")}


# Bounds at n = 1000 (asymptotic sd of the alpha MLE is ~0.03-0.05 at n = 1000 for these alphas;
# McCulloch's is about 1.5-2x that). They fail if a method is biased by more than a few
# hundredths or loses its efficiency. At alpha = 2 every estimate is <= 2 (the boundary), so
# the bias there is one-sided, about -0.6 sd of the estimator: McCulloch gets a looser bound.
BOUNDS = {
    "mcculloch": {"bias": 0.04, "bias_at_2": 0.07, "rmse": 0.11},
    "cf": {"bias": 0.03, "bias_at_2": 0.03, "rmse": 0.08},
    "mle": {"bias": 0.02, "bias_at_2": 0.02, "rmse": 0.06},
}


@pytest.mark.parametrize("method", ["mcculloch", "cf", "mle"])
def test_accuracy_on_synthetic_sas(synthetic, synthetic_fits, method):
    _, truth = synthetic
    fit = synthetic_fits[method]
    for a in ALPHAS:
        est = fit.alpha[truth == a]
        bias = est.mean() - a
        rmse = np.sqrt(((est - a) ** 2).mean())
        bound = BOUNDS[method]["bias_at_2" if a == 2.0 else "bias"]
        assert abs(bias) < bound, (method, a, bias)
        assert rmse < BOUNDS[method]["rmse"], (method, a, rmse)
        sc = fit.scale[truth == a]
        assert abs(np.median(sc) / 2.0 - 1) < 0.03, (method, a, np.median(sc))
        assert abs(np.median(fit.loc[truth == a]) - 0.5) < 0.1, (method, a)
    assert np.all((fit.alpha > 0.4) & (fit.alpha <= 2.0))


def test_mle_beats_mcculloch_in_rmse(synthetic, synthetic_fits):
    _, truth = synthetic
    mle = synthetic_fits["mle"].alpha
    mcc = synthetic_fits["mcculloch"].alpha
    rmse = lambda e: np.sqrt(((e - truth) ** 2).mean())  # noqa: E731
    assert rmse(mle) < 0.8 * rmse(mcc)


def test_mle_maximises_scipys_likelihood():
    """scipy's own log-density (slow, numerical integration) is the oracle: our MLE's log-lik
    equals it at the estimate, and every small move in (alpha, scale, loc) lowers it."""
    x = sample_stable(1.6, size=200, rng=9)
    fit = fit_stable(x, method="mle")

    def loglik(a, sc, lo):
        return stats.levy_stable.logpdf(x, a, 0.0, loc=lo, scale=sc).sum()

    best = loglik(fit.alpha, fit.scale, fit.loc)
    assert abs(best - fit.loglik) < 1e-3
    for da, ds, dl in [(0.02, 0, 0), (-0.02, 0, 0), (0, 0.03, 0), (0, -0.03, 0), (0, 0, 0.05)]:
        moved = loglik(fit.alpha + da, fit.scale * (1 + ds), fit.loc + dl * fit.scale)
        assert moved < best, (da, ds, dl)


def test_mle_with_fixed_location_and_gaussian_boundary():
    rng = np.random.default_rng(5)
    g = rng.normal(0.0, 3.0, size=(2000, 20))
    fit = fit_stable(g, method="mle", loc=0.0)
    assert fit.loc_fixed and np.all(fit.loc == 0.0)
    assert np.median(fit.alpha) > 1.97
    # alpha = 2 is N(delta, 2 sigma^2): the scale of N(0, 9) is 3/sqrt(2)
    assert abs(np.median(fit.scale) - 3.0 / np.sqrt(2)) < 0.05


def test_skewed_fits_recover_beta_and_location_in_both_parameterisations():
    a, b, sc, loc = 1.6, 0.5, 1.0, 2.0
    for par in ("S0", "S1"):
        x = sample_stable(a, b, sc, loc, size=(20_000, 4), rng=1, parameterization=par)
        for method in ("mcculloch", "cf"):
            fit = fit_stable(x, method=method, symmetric=False, parameterization=par)
            assert fit.parameterization == par
            assert np.all(np.abs(fit.alpha - a) < 0.06), (par, method, fit.alpha)
            assert np.all(np.abs(fit.beta - b) < 0.15), (par, method, fit.beta)
            assert np.all(np.abs(fit.loc - loc) < 0.1), (par, method, fit.loc)
    # the two locations differ by beta * scale * tan(pi alpha / 2)
    x = sample_stable(a, b, sc, loc, size=20_000, rng=2, parameterization="S1")
    f1 = fit_stable(x, method="cf", symmetric=False, parameterization="S1")
    f0 = fit_stable(x, method="cf", symmetric=False, parameterization="S0")
    expected = f1.beta * f1.scale * np.tan(np.pi * f1.alpha / 2)
    assert f0.loc - f1.loc == pytest.approx(expected, rel=1e-9)


def test_shapes_axes_dtypes():
    x = sample_stable(1.5, size=(500, 3, 4), rng=0)
    fit = fit_stable(x, method="mcculloch")
    assert fit.alpha.shape == (3, 4) and fit.n == 500
    moved = fit_stable(np.moveaxis(x, 0, 2), axis=2, method="mcculloch")
    np.testing.assert_array_equal(moved.alpha, fit.alpha)
    one = fit_stable(x[:, 0, 0], method="mle")
    assert isinstance(one.alpha, float) and isinstance(one.loglik, float)
    f32 = fit_stable(x.astype(np.float32), method="mcculloch")
    np.testing.assert_allclose(f32.alpha, fit.alpha, atol=1e-5)
    d = fit.to_dict()
    assert d["method"] == "mcculloch" and len(d["alpha"]) == 3
    assert "StableFit(" in repr(fit)


def test_fit_is_deterministic_and_columns_are_independent():
    x = sample_stable(1.4, size=(800, 5), rng=3)
    full = fit_stable(x, method="mle")
    single = fit_stable(x[:, 2], method="mle")
    assert full.alpha[2] == pytest.approx(single.alpha, abs=1e-12)
    assert full.scale[2] == pytest.approx(single.scale, rel=1e-12)


def test_input_errors():
    x = sample_stable(1.5, size=(100, 2), rng=0)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_stable(bad)
    with pytest.raises(InsufficientDataError, match="at least"):
        fit_stable(x[:4])
    tied = x.copy()
    tied[:, 0] = 1.0
    with pytest.raises(InsufficientDataError, match="interquartile"):
        fit_stable(tied)
    with pytest.raises(ValueError, match="method"):
        fit_stable(x, method="quantile")
    with pytest.raises(ValueError, match="parameterization"):
        fit_stable(x, parameterization="S2")
    with pytest.raises(ValueError, match="symmetric fits only"):
        fit_stable(x, symmetric=False, loc=0.0)
    with pytest.raises(ValueError, match="axis"):
        fit_stable(x, axis=2)
    with pytest.raises(TypeError, match="numeric"):
        fit_stable(np.array(["a", "b"]))


def test_no_warnings_on_extreme_data():
    """Very heavy and exactly-Gaussian columns fit without floating-point warnings."""
    rng = np.random.default_rng(0)
    x = np.column_stack(
        [sample_stable(0.6, size=400, rng=rng), rng.normal(size=400), rng.standard_cauchy(400)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("mcculloch", "cf", "mle"):
            fit = fit_stable(x, method=method)
            assert np.all(np.isfinite(fit.alpha)) and np.all(fit.scale > 0)


def _node_profile(col, k, fit_loc, start):
    """max over (log sigma, delta) of the tabulated log-likelihood at node k, by Nelder-Mead."""
    from scipy import optimize

    from gradnoise.stats._stable_density import get_table

    table = get_table()

    def nll(p):
        d = p[1] if fit_loc else 0.0
        z = (col - d) * np.exp(-p[0])
        return -(table.logpdf_nodes(np.full(z.shape, k), z)[0].sum() - col.size * p[0])

    res = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 4000}
    )
    return -res.fun


@pytest.mark.parametrize(
    ("alpha", "n", "fit_loc"),
    [(1.3, 1000, True), (1.7, 600, False), (1.5, 150, True), (2.0, 500, True)],
)
def test_mle_is_the_vertex_of_the_node_profiles(alpha, n, fit_loc):
    """The estimator's definition, checked with an independent optimiser: alpha is the vertex of
    the parabola through the profile likelihoods of the best node and its neighbours (each
    maximised over scale and location by Nelder-Mead), and the best node is a local maximum."""
    from gradnoise.stats._stable_density import ALPHA_MIN, ALPHA_STEP

    x = sample_stable(alpha, 0.0, 1.5, 0.3 if fit_loc else 0.0, size=(n, 2), rng=11)
    fit = fit_stable(x, method="mle", loc=None if fit_loc else 0.0)
    for j in range(2):
        col = x[:, j]
        start = [np.log(fit.scale[j]), fit.loc[j]] if fit_loc else [np.log(fit.scale[j])]
        k = round(float((fit.alpha[j] - ALPHA_MIN) / ALPHA_STEP))
        if k == 150:  # the Gaussian boundary: no node beyond, the neighbour is lower
            assert fit.alpha[j] == 2.0
            assert _node_profile(col, 150, fit_loc, start) >= _node_profile(
                col, 149, fit_loc, start
            )
            continue
        lm, l0, lp = (_node_profile(col, kk, fit_loc, start) for kk in (k - 1, k, k + 1))
        assert l0 >= max(lm, lp) - 1e-6
        offset = 0.5 * (lm - lp) / (lm - 2 * l0 + lp)
        assert fit.alpha[j] == pytest.approx(ALPHA_MIN + ALPHA_STEP * (k + offset), abs=2e-4)
        vertex = l0 + 0.5 * offset * (lp - lm) + 0.5 * offset**2 * (lm - 2 * l0 + lp)
        assert fit.loglik[j] == pytest.approx(vertex, abs=1e-4)


def test_mle_work_is_about_one_pass_over_the_data(monkeypatch):
    """The batched search evaluates the table on ~1.3 x the data (one full pass of three nodes
    plus summaries); the previous per-node Newton optimisation located ~35 x the data."""
    from gradnoise.stats._stable_density import SasTable

    located = []
    orig = SasTable.points

    def counting(self, z, derivatives=False, scratch=None):
        located.append(z.size)
        return orig(self, z, derivatives, scratch)

    monkeypatch.setattr(SasTable, "points", counting)
    x = sample_stable(1.6, 0.0, 0.01, 0.0, size=(1000, 400), rng=12).astype(np.float32)
    fit = fit_stable(x, method="mle")
    assert sum(located) <= 1.6 * x.size
    assert abs(np.median(fit.alpha) - 1.6) < 0.01
    # float32 input is used as is: the fit of its exact float64 copy (summaries are rounded
    # differently, the converged estimate is the same)
    np.testing.assert_allclose(
        fit_stable(x.astype(np.float64), method="mle").alpha, fit.alpha, 1e-10
    )


@pytest.mark.parametrize("method", ["mcculloch", "cf", "mle"])
def test_columns_do_not_depend_on_their_neighbours(method):
    """A column's fit depends on that column alone (what blockwise Dask computation relies on),
    and the input is left alone, whatever its memory order (an F-ordered input was sorted in
    place by the McCulloch step)."""
    x = np.asfortranarray(sample_stable(1.5, size=(400, 9), rng=3).astype(np.float32))
    before = x.copy()
    whole = fit_stable(x, method=method, symmetric=method != "mle")
    assert np.array_equal(x, before)
    part = fit_stable(np.ascontiguousarray(x[:, 2:7]), method=method, symmetric=method != "mle")
    for name in ("alpha", "scale", "beta", "loc"):
        assert np.array_equal(getattr(whole, name)[2:7], getattr(part, name))
