"""fit_power_law: exact scan against a full scan, the `powerlaw` package, and input policy."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest
from scipy import optimize, special

import powerlaw
from gradnoise.errors import InsufficientDataError
from gradnoise.stats import fit_power_law


# ----------------------------------------------------------------------------------------------
# an independent, slow reference: evaluate every candidate (the definition of the CSN scan)
# ----------------------------------------------------------------------------------------------
def _discrete_mle(tail: np.ndarray, xmin: float) -> float:
    """Exact discrete MLE: bounded search, then Newton on the score with mpmath derivatives."""
    mean_log = float(np.mean(np.log(tail)))

    def nll(a: float) -> float:
        return a * mean_log + np.log(special.zeta(a, xmin))

    a = float(
        optimize.minimize_scalar(
            nll, bounds=(1.0 + 1e-9, 60.0), method="bounded", options={"xatol": 1e-10}
        ).x
    )
    mpmath.mp.dps = 30
    for _ in range(3):  # score: -mean ln x - zeta'/zeta; its derivative: -(zeta''/zeta - (.)^2)
        z0, z1, z2 = (mpmath.zeta(a, xmin, k) for k in range(3))
        score = -mean_log - z1 / z0
        info = z2 / z0 - (z1 / z0) ** 2
        a = float(a + score / info)
    return a


def full_scan(x: np.ndarray, *, discrete: bool = False, min_tail: int = 1, lo=-np.inf, hi=np.inf):
    """(xmin, alpha, D, all D) by brute force, in the `powerlaw` package's conventions."""
    x = np.sort(x)
    u = np.unique(x)
    best = (np.inf, None, None)
    ds = []
    for xm in u[:-2]:
        tail = x[x >= xm]
        if tail.size < min_tail or not lo <= xm <= hi:
            continue
        if discrete:
            a = _discrete_mle(tail, xm)
            vals = np.unique(tail)
            cdf = 1.0 - special.zeta(a, vals) / special.zeta(a, xm)
        else:
            a = 1.0 + tail.size / np.sum(np.log(tail / xm))
            vals = np.unique(tail)
            cdf = 1.0 - (vals / xm) ** (1.0 - a)
        emp = np.searchsorted(tail, vals, side="left") / tail.size
        d = np.max(np.abs(cdf - emp))
        ds.append(d)
        if d < best[0]:
            best = (d, xm, a)
    return best[1], best[2], best[0], np.array(ds)


def _samples(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.pareto(1.5, 400) + 1.0,
        np.abs(rng.standard_normal(300)),
        rng.lognormal(0.0, 1.0, 250),
        rng.exponential(1.0, 200),
        np.round(rng.pareto(1.2, 300) * 10.0) + 1.0,  # many ties
        np.abs(rng.standard_cauchy(150)),
    ]


@pytest.mark.parametrize("min_tail", [1, 50])
def test_scan_equals_full_scan_continuous(min_tail):
    rng = np.random.default_rng(11)
    for x in _samples(rng):
        xm, a, d, _ = full_scan(x, min_tail=min_tail)
        fit = fit_power_law(x, min_tail=min_tail)
        assert fit.xmin == xm
        assert fit.alpha == pytest.approx(a, rel=1e-12)
        assert fit.ks == pytest.approx(d, abs=1e-13)
        assert fit.n_tail == int(np.sum(x >= xm))
        assert fit.sigma == pytest.approx((a - 1.0) / np.sqrt(fit.n_tail), rel=1e-12)


def test_scan_equals_full_scan_large():
    """A sample large enough that the scan prunes almost every candidate."""
    rng = np.random.default_rng(5)
    for x in (rng.pareto(1.5, 3000) + 1.0, np.abs(rng.standard_normal(3000))):
        xm, a, d, _ = full_scan(x, min_tail=50)
        fit = fit_power_law(x)
        assert (fit.xmin, fit.ks) == (xm, pytest.approx(d, abs=1e-13))
        assert fit.alpha == pytest.approx(a, rel=1e-12)


def test_scan_equals_full_scan_discrete():
    rng = np.random.default_rng(2)
    for x in (np.floor(rng.pareto(1.3, 400)) + 1.0, np.floor(rng.pareto(2.0, 300) * 3.0) + 2.0):
        xm, a, d, _ = full_scan(x, discrete=True, min_tail=20)
        fit = fit_power_law(x, discrete=True, min_tail=20)
        assert fit.xmin == xm
        assert fit.alpha == pytest.approx(a, rel=1e-12)
        assert fit.ks == pytest.approx(d, abs=1e-12)


def test_discrete_sigma_is_the_fisher_information():
    """CSN eq. 3.6: sigma = 1/sqrt(n [zeta''/zeta - (zeta'/zeta)^2]) (numerical derivatives)."""
    rng = np.random.default_rng(3)
    x = np.floor(rng.pareto(1.5, 2000)) + 1.0
    fit = fit_power_law(x, discrete=True, xmin=2.0)
    a, h = fit.alpha, 1e-4
    lz = [np.log(special.zeta(a + k * h, 2.0)) for k in (-1, 0, 1)]
    var = (lz[0] - 2 * lz[1] + lz[2]) / h**2
    assert fit.sigma == pytest.approx(1.0 / np.sqrt(fit.n_tail * var), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# the `powerlaw` package as an oracle (alpha unrestricted, exact discrete fit)
# ----------------------------------------------------------------------------------------------
def _powerlaw_fit(x, **kw):
    """xmin, alpha, D, n_tail of ``powerlaw.Fit`` (its warnings silenced; they are not ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, verbose=0, **kw)
        pl = fit.power_law
        return SimpleNamespace(xmin=fit.xmin, alpha=pl.alpha, D=pl.D, n_tail=fit.n_tail)


def _reference(x, discrete=False):
    return _powerlaw_fit(
        x, discrete=discrete, parameter_ranges={"alpha": [1, 100]}, estimate_discrete=False
    )


@pytest.mark.parametrize(
    "name", ["blackouts", "flares", "quakes", "surnames", "terrorism", "words"]
)
def test_matches_powerlaw_on_clauset_datasets(name):
    data = powerlaw.load_test_dataset(name)
    ref = _reference(data)
    fit = fit_power_law(data, min_tail=1)
    assert fit.xmin == ref.xmin
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-6)
    assert fit.ks == pytest.approx(ref.D, abs=1e-12)
    assert fit.n_tail == ref.n_tail


@pytest.mark.parametrize("name", ["blackouts", "terrorism", "words"])
def test_matches_powerlaw_discrete_on_clauset_datasets(name):
    """Same xmin; powerlaw's alpha comes from Nelder–Mead (tol 1e-4), ours is the exact MLE."""
    data = powerlaw.load_test_dataset(name)
    ref = _reference(data, discrete=True)
    fit = fit_power_law(data, discrete=True, min_tail=1)
    assert fit.xmin == ref.xmin
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-4)
    tail = data[data >= fit.xmin]
    assert fit.alpha == pytest.approx(_discrete_mle(tail, fit.xmin), rel=1e-12)


@pytest.mark.parametrize("kind", ["pareto", "lognormal", "absgauss"])
def test_matches_powerlaw_on_synthetic(kind):
    rng = np.random.default_rng(2024)
    n = 1000
    x = {
        "pareto": lambda: rng.pareto(1.5, n) + 1.0,
        "lognormal": lambda: rng.lognormal(0.0, 1.5, n),
        "absgauss": lambda: np.abs(rng.standard_normal(n)),
    }[kind]()
    ref = _reference(x)
    fit = fit_power_law(x, min_tail=1)
    assert fit.xmin == ref.xmin
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-6)
    assert fit.ks == pytest.approx(ref.D, abs=1e-12)


def test_matches_powerlaw_discrete_synthetic():
    rng = np.random.default_rng(7)
    x = np.floor(rng.pareto(1.4, 1500)) + 1.0
    ref = _reference(x, discrete=True)
    fit = fit_power_law(x, discrete=True, min_tail=1)
    assert fit.xmin == ref.xmin
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-4)


def test_alpha_range_reproduces_powerlaw_default():
    """powerlaw's default keeps only candidates with alpha in (0, 3); here that is opt-in."""
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal(800))
    ref = _powerlaw_fit(x)  # default parameter ranges
    fit = fit_power_law(x, min_tail=1, alpha_range=(0, 3))
    assert fit.xmin == ref.xmin
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-6)
    free = fit_power_law(x, min_tail=1)
    assert free.alpha > 3  # the unrestricted CSN scan prefers a steep far tail here


def test_fixed_xmin_matches_powerlaw():
    rng = np.random.default_rng(4)
    x = rng.lognormal(0.0, 1.0, 700)
    xmin = 1.2345  # not a data value
    ref = _powerlaw_fit(x, xmin=xmin, parameter_ranges={"alpha": [1, 100]})
    fit = fit_power_law(x, xmin=xmin)
    tail = x[x >= xmin]
    assert fit.n_tail == tail.size
    assert fit.alpha == pytest.approx(1.0 + tail.size / np.sum(np.log(tail / xmin)), rel=1e-12)
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-6)
    assert fit.ks == pytest.approx(ref.D, abs=1e-12)


def test_xmin_range_restricts_the_scan():
    rng = np.random.default_rng(8)
    x = rng.pareto(1.5, 2000) + 1.0
    lo, hi = 1.5, 3.0
    xm, a, d, _ = full_scan(x, min_tail=50, lo=lo, hi=hi)
    fit = fit_power_law(x, xmin_range=(lo, hi))
    assert lo <= fit.xmin <= hi
    assert (fit.xmin, fit.ks) == (xm, pytest.approx(d, abs=1e-13))
    assert fit.alpha == pytest.approx(a, rel=1e-12)
    assert fit_power_law(x, xmin_range=(lo, None)).xmin == full_scan(x, min_tail=50, lo=lo)[0]


# ----------------------------------------------------------------------------------------------
# batches and input policy
# ----------------------------------------------------------------------------------------------
def test_batch_equals_loop_and_axis():
    rng = np.random.default_rng(9)
    x = np.abs(rng.standard_t(3, size=(400, 3, 4)))
    fit = fit_power_law(x, axis=0)
    assert fit.alpha.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            one = fit_power_law(x[:, i, j])
            assert fit.alpha[i, j] == one.alpha
            assert fit.xmin[i, j] == one.xmin
            assert fit.ks[i, j] == one.ks
            assert fit.n_tail[i, j] == one.n_tail
    moved = fit_power_law(np.moveaxis(x, 0, -1), axis=-1)
    np.testing.assert_array_equal(moved.alpha, fit.alpha)
    flat = fit_power_law(x, axis=None)
    assert flat.alpha == fit_power_law(x.ravel()).alpha


def test_discrete_batch_equals_loop():
    rng = np.random.default_rng(10)
    x = np.floor(rng.pareto(1.5, size=(300, 3))) + 1.0
    fit = fit_power_law(x, discrete=True, min_tail=20)
    for j in range(3):
        one = fit_power_law(x[:, j], discrete=True, min_tail=20)
        assert (fit.alpha[j], fit.xmin[j], fit.ks[j]) == (one.alpha, one.xmin, one.ks)


def test_nonfinite_raises():
    x = np.ones(100)
    x[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_power_law(x)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_nonpositive_raises_or_drops_explicitly(bad):
    rng = np.random.default_rng(0)
    x = rng.pareto(1.5, 300) + 1.0
    y = x.copy()
    y[[5, 17]] = bad
    with pytest.raises(ValueError, match="<= 0"):
        fit_power_law(y)
    dropped = fit_power_law(y, nonpositive="drop")
    clean = fit_power_law(np.delete(y, [5, 17]))
    assert dropped.n_dropped == 2 and dropped.n == 298
    assert (dropped.alpha, dropped.xmin) == (clean.alpha, clean.xmin)


def test_drop_in_a_batch_gives_ragged_samples():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal((200, 3)))
    x[:20, 1] = 0.0
    fit = fit_power_law(x, nonpositive="drop")
    np.testing.assert_array_equal(fit.n, [200, 180, 200])
    np.testing.assert_array_equal(fit.n_dropped, [0, 20, 0])
    assert fit.alpha[1] == fit_power_law(x[20:, 1]).alpha


def test_too_few_points():
    with pytest.raises(InsufficientDataError, match="at least"):
        fit_power_law(np.arange(1.0, 30.0))
    x = np.ones((100, 2))
    x[:, 0] = np.arange(1.0, 101.0)
    with pytest.raises(InsufficientDataError, match=r"batch index \(1,\)"):
        fit_power_law(x)  # column 1 has a single distinct value: no candidate


def test_discrete_needs_integers():
    with pytest.raises(ValueError, match="integer"):
        fit_power_law(np.linspace(1.0, 5.0, 200), discrete=True)


def test_argument_errors():
    x = np.arange(1.0, 201.0)
    with pytest.raises(ValueError, match="not both"):
        fit_power_law(x, xmin=2.0, xmin_range=(1, 3))
    with pytest.raises(ValueError, match="min_tail"):
        fit_power_law(x, min_tail=0)
    with pytest.raises(ValueError, match="nonpositive"):
        fit_power_law(x, nonpositive="ignore")
    with pytest.raises(InsufficientDataError, match="alpha_range"):
        fit_power_law(x, alpha_range=(50, 60))
    with pytest.raises(InsufficientDataError, match="at least 2 points"):
        fit_power_law(x, xmin=200.0)
