"""Tests of Gaussianity, batched over columns, and of multivariate noise via random projections.

Every test takes the composite null "Gaussian with unknown mean and variance". Any omnibus test
rejects tiny deviations when n is large (methods.md §8, item 12): report n with the result and
correct for multiplicity across coordinates or directions (``correction=``, which uses
:func:`gradnoise.stats.multitest.multiple_test`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps
from scipy.special import log_ndtr, ndtr

from ..errors import InsufficientDataError
from ._common import RNGLike, StatResult, as_generator, check_min_size
from ._dask import is_dask_array, map_columns
from ._stable_common import as_columns, column_chunks, rescale_columns, restore
from .multitest import MultipleTestResult, multiple_test

__all__ = [
    "NormalityTestResult",
    "ProjectionNormalityResult",
    "anderson_darling_pvalue",
    "lilliefors_pvalue",
    "normality_test",
    "projection_normality_test",
]

Method = Literal["shapiro", "dagostino", "anderson", "jarque_bera", "lilliefors"]
Correction = Literal["bh", "holm", "bonferroni"]

# Smallest n per method: Shapiro–Wilk needs 3; D'Agostino's kurtosis test needs 20 (scipy
# warns below); the Anderson–Darling p-value approximation is stated for n >= 8; Lilliefors'
# (Dallal–Wilkinson) needs 5; Jarque–Bera's chi2(2) p-value is asymptotic: 20 as a floor (it is
# conservative for small n, see the calibration table in the benchmark).
MIN_N = {"shapiro": 3, "dagostino": 20, "anderson": 8, "jarque_bera": 20, "lilliefors": 5}


@dataclass(frozen=True, repr=False)
class NormalityTestResult(StatResult):
    """Per-column normality tests.

    Attributes:
        statistic: the test statistic per column (W, K^2, A^2, JB or D).
        pvalue: the (unadjusted) p-value per column.
        method: the test.
        n: samples per column.
        multitest: the correction across columns (``correction=``), else None.
    """

    statistic: Any
    pvalue: Any
    method: str
    n: int
    multitest: MultipleTestResult | None = None


@dataclass(frozen=True, repr=False)
class ProjectionNormalityResult(StatResult):
    """Normality of multivariate samples tested on random one-dimensional projections.

    Attributes:
        statistic, pvalue: per direction (shape ``(n_directions,)``).
        multitest: the correction across directions.
        fraction_rejected: fraction of directions rejected after correction.
        reject_gaussian: whether any direction is rejected (a test of multivariate normality
            at ``level``: family-wise for Holm/Bonferroni; Simes' test for BH).
        method, n (samples), dim (coordinates), n_directions.
    """

    statistic: np.ndarray
    pvalue: np.ndarray
    multitest: MultipleTestResult
    fraction_rejected: float
    reject_gaussian: bool
    method: str
    n: int
    dim: int
    n_directions: int


def anderson_darling_pvalue(a2: np.ndarray, n: int) -> np.ndarray:
    """p-value of the Anderson–Darling normality statistic with estimated mean and variance.

    D'Agostino & Stephens (1986), *Goodness-of-Fit Techniques*, Table 4.9: with
    A* = A^2 (1 + 0.75/n + 2.25/n^2),
        p = 1 - exp(-13.436 + 101.14 A* - 223.73 A*^2)   A* < 0.2
        p = 1 - exp(-8.318 + 42.796 A* - 59.938 A*^2)    0.2 <= A* < 0.34
        p = exp(0.9177 - 4.279 A* - 1.38 A*^2)           0.34 <= A* < 0.6
        p = exp(1.2937 - 5.709 A* + 0.0186 A*^2)         0.6 <= A* < 10, and 3.7e-24 beyond
    (as R's ``nortest::ad.test``)."""
    a_star = np.asarray(a2, dtype=np.float64) * (1.0 + 0.75 / n + 2.25 / n**2)
    a = np.minimum(a_star, 10.0)  # every branch is evaluated: keep exp() finite
    p = np.select(
        [a < 0.2, a < 0.34, a < 0.6, a < 10.0],
        [
            1.0 - np.exp(-13.436 + 101.14 * a - 223.73 * a * a),
            1.0 - np.exp(-8.318 + 42.796 * a - 59.938 * a * a),
            np.exp(0.9177 - 4.279 * a - 1.38 * a * a),
            np.exp(1.2937 - 5.709 * a + 0.0186 * a * a),
        ],
        3.7e-24,
    )
    p = np.where(a_star >= 10.0, 3.7e-24, p)
    return np.clip(p, 0.0, 1.0)


def lilliefors_pvalue(d: np.ndarray, n: int) -> np.ndarray:
    """p-value of the Lilliefors (Kolmogorov–Smirnov with estimated mean/variance) statistic.

    Dallal & Wilkinson (1986), Am. Stat. 40(4):294-296, for p <= 0.1: with Kd = D, nd = n for
    n <= 100, else Kd = D (n/100)^0.49, nd = 100,
        p = exp(-7.01256 Kd^2 (nd + 2.78019) + 2.99587 Kd sqrt(nd + 2.78019) - 0.122119
                + 0.974598/sqrt(nd) + 1.67997/nd);
    above 0.1, Stephens' (1974) modified statistic KK = (sqrt(n) - 0.01 + 0.85/sqrt(n)) D and
    his polynomials (as R's ``nortest::lillie.test``)."""
    d = np.asarray(d, dtype=np.float64)
    if n <= 100:
        kd, nd = d, float(n)
    else:
        kd, nd = d * (n / 100.0) ** 0.49, 100.0
    p = np.exp(
        -7.01256 * kd**2 * (nd + 2.78019)
        + 2.99587 * kd * np.sqrt(nd + 2.78019)
        - 0.122119
        + 0.974598 / np.sqrt(nd)
        + 1.67997 / nd
    )
    kk = (np.sqrt(n) - 0.01 + 0.85 / np.sqrt(n)) * d
    stephens = np.select(
        [kk <= 0.302, kk <= 0.5, kk <= 0.9, kk <= 1.31],
        [
            np.ones_like(kk),
            2.76773 - 19.828315 * kk + 80.709644 * kk**2 - 138.55152 * kk**3 + 81.218052 * kk**4,
            -4.901232 + 40.662806 * kk - 97.490286 * kk**2 + 94.029866 * kk**3 - 32.355711 * kk**4,
            6.198765 - 19.558097 * kk + 23.186922 * kk**2 - 12.234627 * kk**3 + 2.423045 * kk**4,
        ],
        0.0,
    )
    return np.clip(np.where(p > 0.1, stephens, p), 0.0, 1.0)


def _sorted_standardised(block: np.ndarray) -> np.ndarray:
    """(m, n) rows: each column sorted and standardised by its mean and sd (ddof = 1)."""
    t = np.array(block.T, dtype=np.float64, order="C")
    t.sort(axis=1)
    mu = t.mean(axis=1, keepdims=True)
    sd = t.std(axis=1, ddof=1, keepdims=True)
    return (t - mu) / sd


def _anderson(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A^2 = -n - (1/n) sum_i (2i - 1) [ln Phi(y_(i)) + ln(1 - Phi(y_(n+1-i)))] per column."""
    n, m = cols.shape
    stat = np.empty(m)
    w = (2.0 * np.arange(1, n + 1) - 1.0)[None, :]
    for sl in column_chunks(cols):
        y = _sorted_standardised(cols[:, sl])
        terms = log_ndtr(y) + log_ndtr(-y[:, ::-1])
        stat[sl] = -n - (w * terms).sum(axis=1) / n
    return stat, anderson_darling_pvalue(stat, n)


def _lilliefors(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D = max_i max(i/n - Phi(y_(i)), Phi(y_(i)) - (i-1)/n) per column."""
    n, m = cols.shape
    stat = np.empty(m)
    i = np.arange(1, n + 1)[None, :]
    for sl in column_chunks(cols):
        p = ndtr(_sorted_standardised(cols[:, sl]))
        stat[sl] = np.maximum((i / n - p).max(axis=1), (p - (i - 1) / n).max(axis=1))
    return stat, lilliefors_pvalue(stat, n)


def _test_columns(cols: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    if method == "anderson":
        return _anderson(cols)
    if method == "lilliefors":
        return _lilliefors(cols)
    stat = np.empty(cols.shape[1])
    pval = np.empty(cols.shape[1])
    fn = {"shapiro": sps.shapiro, "dagostino": sps.normaltest, "jarque_bera": sps.jarque_bera}[
        method
    ]
    for sl in column_chunks(cols):
        r = fn(cols[:, sl].astype(np.float64, copy=False), axis=0)
        stat[sl], pval[sl] = r.statistic, r.pvalue
    return stat, pval


def _check_variance(cols: np.ndarray) -> None:
    const = np.zeros(cols.shape[1], dtype=bool)
    for sl in column_chunks(cols):
        block = cols[:, sl]
        const[sl] = np.all(block == block[:1], axis=0)
    if const.any():
        raise InsufficientDataError(
            f"{int(const.sum())} column(s) are constant (e.g. {np.flatnonzero(const)[:5].tolist()})"
            "; a normality test is undefined there. Drop them explicitly"
        )


def normality_test(
    x: Any,
    *,
    method: Method = "shapiro",
    axis: int = 0,
    correction: Correction | None = None,
    level: float = 0.05,
) -> NormalityTestResult:
    """Test each column of ``x`` (samples along ``axis``) for Gaussianity.

    Methods (null: Gaussian with estimated mean and variance):
        ``"shapiro"``: Shapiro–Wilk W (``scipy.stats.shapiro``; Royston's p-value, n <= 5000
            advised: scipy warns above).
        ``"dagostino"``: D'Agostino–Pearson K^2 = Z_skew^2 + Z_kurt^2 ~ chi2(2)
            (``scipy.stats.normaltest``), n >= 20.
        ``"anderson"``: Anderson–Darling A^2 with the D'Agostino–Stephens p-value
            (:func:`anderson_darling_pvalue`).
        ``"jarque_bera"``: JB = n/6 (S^2 + (K - 3)^2 / 4) ~ chi2(2) (asymptotic; conservative
            below a few hundred samples).
        ``"lilliefors"``: KS distance to the fitted normal with the Dallal–Wilkinson p-value
            (:func:`lilliefors_pvalue`).

    ``correction="bh" | "holm" | "bonferroni"`` adds the decisions across columns at ``level``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> r = normality_test(rng.standard_normal((500, 4)), method="anderson", correction="holm")
        >>> r.pvalue.shape, int(r.multitest.reject.sum())
        ((4,), 0)
    """
    if is_dask_array(x):
        res = map_columns(normality_test, x, axis, {"method": method})
        if correction is None:
            return res
        adjusted = multiple_test(res.pvalue, method=correction, level=level)
        return dataclasses.replace(res, multitest=adjusted)
    if method not in MIN_N:
        raise ValueError(f"method must be one of {sorted(MIN_N)}, got {method!r}")
    cols, out_shape = as_columns(x, axis)
    n = cols.shape[0]
    check_min_size(n, MIN_N[method], f"normality_test(method={method!r})")
    _check_variance(cols)
    cols, _ = rescale_columns(cols)  # |x| ~ 1e300: exact power-of-two rescaling (invariant)
    stat, pval = _test_columns(cols, method)
    mt = None
    if correction is not None:
        mt = multiple_test(pval, method=correction, level=level)
    return NormalityTestResult(
        statistic=restore(stat, out_shape),
        pvalue=restore(pval, out_shape),
        method=method,
        n=n,
        multitest=mt,
    )


def projection_normality_test(
    x: Any,
    *,
    n_directions: int = 100,
    rng: RNGLike,
    method: Method = "shapiro",
    axis: int = 0,
    correction: Correction = "bh",
    level: float = 0.05,
) -> ProjectionNormalityResult:
    """Test multivariate samples for Gaussianity on random one-dimensional projections.

    A multivariate Gaussian has Gaussian projections u^T xi for every direction u, so rejecting
    normality of a projection rejects multivariate normality (Panigrahi et al. 2019, as
    reconstructed in methods.md §4a). ``x`` holds n samples along ``axis`` (the other axes are
    flattened to d coordinates); directions are uniform on the unit sphere of R^d, drawn
    from ``rng`` in blocks of coordinates so that d may be large. The per-direction p-values of
    ``method`` are corrected across directions (``correction`` at ``level``).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> r = projection_normality_test(rng.standard_normal((300, 50)), n_directions=20, rng=1)
        >>> r.n_directions, r.reject_gaussian
        (20, False)
    """
    if method not in MIN_N:
        raise ValueError(f"method must be one of {sorted(MIN_N)}, got {method!r}")
    if isinstance(n_directions, bool) or not isinstance(n_directions, (int, np.integer)):
        raise TypeError(f"n_directions must be an int, got {n_directions!r}")
    if n_directions < 1:
        raise ValueError(f"n_directions must be >= 1, got {n_directions}")
    cols, _ = as_columns(x, axis)
    n, dim = cols.shape
    check_min_size(n, MIN_N[method], f"projection_normality_test(method={method!r})")
    if dim == 0:
        raise InsufficientDataError("x has no coordinates to project (it has zero columns)")
    cols, _ = rescale_columns(cols, common=True)  # one power of two for all: projections mix
    gen = as_generator(rng)
    proj = np.zeros((n, n_directions))
    norm2 = np.zeros(n_directions)
    for sl in column_chunks(cols):
        u = gen.standard_normal((sl.stop - sl.start, n_directions))
        proj += cols[:, sl].astype(np.float64, copy=False) @ u
        norm2 += (u * u).sum(axis=0)
    proj /= np.sqrt(norm2)
    res = normality_test(proj, method=method, correction=correction, level=level)
    assert res.multitest is not None
    frac = res.multitest.fraction_rejected
    return ProjectionNormalityResult(
        statistic=np.asarray(res.statistic).reshape(n_directions),
        pvalue=np.asarray(res.pvalue).reshape(n_directions),
        multitest=res.multitest,
        fraction_rejected=float(frac),
        reject_gaussian=bool(np.any(res.multitest.reject)),
        method=method,
        n=n,
        dim=dim,
        n_directions=int(n_directions),
    )
