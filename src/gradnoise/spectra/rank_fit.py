"""Rank-ordered power-law fit of a spectrum: ``lambda_k ~ lambda_1 k^-s`` (Xie et al.).

Two views of the same hypothesis (methods.md §0.1, "Rank-ordered spectra vs densities"): if the
ranked eigenvalues obey ``lambda_k = c k^-s`` then their density is a power law
``p(lambda) ~ lambda^-beta`` with ``beta = 1 + 1/s`` (``s = 1/(beta - 1)``). The rank view is a
least-squares line on log-log axes; the density view is the Clauset–Shalizi–Newman fit of the
eigenvalues as a sample (:func:`gradnoise.stats.fit_power_law`), whose KS distance the papers use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stats._common import StatResult, as_float_array, check_finite, check_min_size


@dataclass(frozen=True, repr=False)
class RankPowerLawFit(StatResult):
    """Fit of ``log lambda_k = intercept - s log k`` over ranks ``k_min..k_max``.

    Attributes:
        s: rank slope (``lambda_k ~ k^-s``), least squares on log-log axes.
        intercept: ``log lambda`` at ``k = 1`` of the fitted line (natural log).
        r2: coefficient of determination of the log-log line.
        beta: density exponent implied by the slope, ``beta = 1 + 1/s`` (inf if ``s = 0``).
        ks: Kolmogorov–Smirnov distance of the Clauset fit of the window's values as a sample.
        beta_mle: the Clauset maximum-likelihood density exponent of that fit.
        s_mle: the rank slope it implies, ``1 / (beta_mle - 1)``.
        xmin: the Clauset lower cut-off chosen by KS minimisation.
        n_tail: number of window values ``>= xmin`` used by the Clauset fit.
        k_min, k_max: the fitted rank window (1-based, inclusive).
        n: number of values in the window.
    """

    s: float
    intercept: float
    r2: float
    beta: float
    ks: float
    beta_mle: float
    s_mle: float
    xmin: float
    n_tail: int
    k_min: int
    k_max: int
    n: int

    def predict(self, k: Any) -> np.ndarray:
        """Fitted ``lambda_k = exp(intercept) k^-s`` at ranks ``k``."""
        return np.exp(self.intercept) * np.asarray(k, dtype=np.float64) ** (-self.s)


def fit_rank_power_law(
    eigs: Any, *, k_min: int = 1, k_max: int | None = None, min_tail: int | None = None
) -> RankPowerLawFit:
    """Fit ``lambda_k ~ k^-s`` to the rank-ordered spectrum over ranks ``k_min..k_max``.

    The values are sorted in descending order (rank 1 = largest). Two fits on the window:

    1. least squares of ``log lambda_k`` on ``log k`` -> slope ``-s``, ``intercept``, ``r2``, and
       ``beta = 1 + 1/s`` (Xie et al. 2022, arXiv 2201.13011; 2023, arXiv 2212.02083);
    2. the Clauset–Shalizi–Newman (2009) continuous power-law fit of the window's values as a
       sample (x_min by KS minimisation, MLE exponent) -> ``ks`` (its KS distance), ``beta_mle``,
       ``s_mle = 1/(beta_mle - 1)``, ``xmin``, ``n_tail``; by
       :func:`gradnoise.stats.fit_power_law` with at least ``min_tail`` values in the tail
       (default ``min(50, n)``: small windows, e.g. a top-20 Hessian spectrum, are fitted whole).

    Every value in the window must be > 0 (Hessian spectra: fit the positive top-k only; covariance
    spectra: stop before the round-off zeros past the rank).

    Args:
        eigs: eigenvalues (or eigengaps), any order.
        k_min, k_max: 1-based inclusive rank window (default: all values).
        min_tail: smallest Clauset tail size allowed in the x_min scan.

    Example:
        >>> fit = fit_rank_power_law(100.0 * np.arange(1, 201) ** -1.5)
        >>> round(fit.s, 6), round(fit.beta, 6), round(fit.r2, 6)
        (1.5, 1.666667, 1.0)
    """
    lam = as_float_array(eigs, "eigs")
    if lam.ndim != 1:
        raise ValueError(f"eigs must be 1-D, got shape {lam.shape}")
    check_finite(lam, "eigs")
    lam = np.sort(lam)[::-1]
    k_min = int(k_min)
    k_max = lam.size if k_max is None else int(k_max)
    if not 1 <= k_min < k_max <= lam.size:
        raise ValueError(
            f"need 1 <= k_min < k_max <= {lam.size} (number of values), got k_min={k_min}, "
            f"k_max={k_max}"
        )
    window = lam[k_min - 1 : k_max]
    check_min_size(window.size, 3, "fit_rank_power_law (values in the rank window)")
    if window[-1] <= 0:
        last = int(np.sum(lam > 0))
        raise ValueError(
            f"the rank window holds {int(np.sum(window <= 0))} non-positive value(s) (a power law "
            f"lives on lambda > 0); the last positive value is at rank {last}: pass "
            f"k_max <= {last}"
        )
    ranks = np.arange(k_min, k_max + 1, dtype=np.float64)
    x, y = np.log(ranks), np.log(window)
    xc = x - x.mean()
    slope = float(xc @ (y - y.mean()) / (xc @ xc))
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0 else 1.0
    s = -slope
    tail = min(50, window.size) if min_tail is None else int(min_tail)
    if not 1 <= tail <= window.size:
        raise ValueError(f"min_tail must be in [1, {window.size}], got {min_tail}")
    clauset = _clauset(window, tail)
    beta_mle = float(clauset["alpha"])
    return RankPowerLawFit(
        s=s,
        intercept=intercept,
        r2=r2,
        beta=1.0 + 1.0 / s if s > 0 else float("inf"),
        ks=float(clauset["ks"]),
        beta_mle=beta_mle,
        s_mle=1.0 / (beta_mle - 1.0) if beta_mle > 1 else float("inf"),
        xmin=float(clauset["xmin"]),
        n_tail=int(clauset["n_tail"]),
        k_min=k_min,
        k_max=k_max,
        n=int(window.size),
    )


def _clauset(values: np.ndarray, min_tail: int) -> dict[str, float]:
    """The Clauset fit of ``values`` by the project's fitter (never a second implementation)."""
    from ..stats import fit_power_law

    fit = fit_power_law(values, min_tail=min_tail)
    return {"alpha": fit.alpha, "ks": fit.ks, "xmin": fit.xmin, "n_tail": fit.n_tail}
