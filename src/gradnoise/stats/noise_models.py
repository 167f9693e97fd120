"""Gaussian versus symmetric alpha-stable noise models, per column (Battash et al. 2024, §3).

For each column: the Gaussian N(mu, s^2) fitted by maximum likelihood (sample mean, s with
ddof = 0) and the SαS(alpha, sigma, delta) fitted by :func:`gradnoise.stats.fit_stable`
(``method="mle"`` by default); their log-likelihoods, Kolmogorov–Smirnov distances to the
empirical CDF, AICs, and the winner.

SαS nests the Gaussian (alpha = 2 is N(delta, 2 sigma^2)), so its maximised log-likelihood is
never below the Gaussian's: the raw likelihood always "prefers" SαS. The default criterion is
therefore AIC = 2 k - 2 log L with k = 3 (alpha, sigma, delta) against k = 2 (mu, s) (one fewer
each when the location is fixed); ``criterion="ks"`` picks the smaller KS distance instead.
Ties go to the Gaussian. The likelihood-ratio test of alpha = 2 is non-standard (alpha = 2 is a
boundary where the Fisher information for alpha is infinite), so no p-value is attached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import ndtr

from ._common import StatResult, check_min_size
from ._dask import is_dask_array, map_columns
from ._stable_common import as_columns, column_chunks, rescale_columns, restore
from ._stable_density import get_table
from .stable import fit_stable

__all__ = ["NoiseModelComparison", "compare_noise_models"]


@dataclass(frozen=True, repr=False)
class NoiseModelComparison(StatResult):
    """Per-column comparison of the Gaussian and SαS fits (floats for 1-D input).

    Attributes:
        gaussian_mean, gaussian_std: the Gaussian MLE (std with ddof = 0).
        stable_alpha, stable_scale, stable_loc: the SαS fit.
        loglik_gaussian, loglik_stable: log-likelihoods at the fitted parameters.
        ks_gaussian, ks_stable: sup |F_n - F| against each fitted CDF.
        aic_gaussian, aic_stable: 2 k - 2 log L.
        winner: ``"stable"`` or ``"gaussian"`` per column, by ``criterion``.
        fraction_stable: fraction of columns won by SαS.
        criterion: ``"aic"``, ``"ks"`` or ``"loglik"``.
        stable_method: the SαS fitting method.
        n: samples per column.
    """

    gaussian_mean: Any
    gaussian_std: Any
    stable_alpha: Any
    stable_scale: Any
    stable_loc: Any
    loglik_gaussian: Any
    loglik_stable: Any
    ks_gaussian: Any
    ks_stable: Any
    aic_gaussian: Any
    aic_stable: Any
    winner: Any
    fraction_stable: float
    criterion: str
    stable_method: str
    n: int


def _ks(sorted_cdf: np.ndarray) -> np.ndarray:
    """sup |F_n - F| from the model CDF at each row's sorted sample, rows = columns."""
    n = sorted_cdf.shape[1]
    i = np.arange(1, n + 1)[None, :]
    return np.maximum((i / n - sorted_cdf).max(axis=1), (sorted_cdf - (i - 1) / n).max(axis=1))


def compare_noise_models(
    x: Any,
    axis: int = 0,
    *,
    stable_method: Literal["mle", "mcculloch", "cf"] = "mle",
    criterion: Literal["aic", "ks", "loglik"] = "aic",
    loc: float | None = None,
) -> NoiseModelComparison:
    """Compare N(mu, s^2) and SαS(alpha, sigma, delta) fits on each column of ``x``.

    ``loc=None`` estimates both locations; a number fixes both (e.g. 0 for centred SGN).
    See the module docstring for the criteria.

    Example:
        >>> from gradnoise.stats.stable import sample_stable
        >>> x = sample_stable(1.5, size=(2000, 3), rng=0)
        >>> compare_noise_models(x).winner.tolist()
        ['stable', 'stable', 'stable']
    """
    if is_dask_array(x):
        res = map_columns(
            compare_noise_models,
            x,
            axis,
            {"stable_method": stable_method, "criterion": criterion, "loc": loc},
            mixed=("fraction_stable",),
        )
        fraction = float(np.asarray(res.winner == "stable").mean())
        return dataclasses.replace(res, fraction_stable=fraction)
    if criterion not in ("aic", "ks", "loglik"):
        raise ValueError(f"criterion must be 'aic', 'ks' or 'loglik', got {criterion!r}")
    cols, out_shape = as_columns(x, axis)
    n, m = cols.shape
    check_min_size(n, 10, "compare_noise_models")
    fit = fit_stable(cols, method=stable_method, symmetric=True, axis=0, loc=loc)
    alpha = np.atleast_1d(np.asarray(fit.alpha, dtype=np.float64))
    scale = np.atleast_1d(np.asarray(fit.scale, dtype=np.float64))
    sloc = np.atleast_1d(np.asarray(fit.loc, dtype=np.float64))
    table = get_table()
    out = {k: np.empty(m) for k in ("mu", "sd", "ll_g", "ll_s", "ks_g", "ks_s")}
    # |x| ~ 1e300: moments on x * 2**-e (exact), mapped back by 2**e
    cols, exps = rescale_columns(cols)
    for sl in column_chunks(cols):
        e = exps[sl]
        block = np.array(cols[:, sl].T, dtype=np.float64, order="C")  # (mc, n)
        block.sort(axis=1)
        mu = block.mean(axis=1) if loc is None else np.ldexp(np.full(block.shape[0], loc), -e)
        sd = np.sqrt(((block - mu[:, None]) ** 2).mean(axis=1))
        zg = (block - mu[:, None]) / sd[:, None]
        out["mu"][sl], out["sd"][sl] = np.ldexp(mu, e), np.ldexp(sd, e)
        out["ll_g"][sl] = -0.5 * (zg * zg).sum(axis=1) - n * (
            np.log(out["sd"][sl]) + 0.5 * np.log(2 * np.pi)
        )
        out["ks_g"][sl] = _ks(ndtr(zg))
        a = alpha[sl][:, None]
        zs = (block - np.ldexp(sloc[sl], -e)[:, None]) / np.ldexp(scale[sl], -e)[:, None]
        out["ll_s"][sl] = table.logpdf(zs, a).sum(axis=1) - n * np.log(scale[sl])
        out["ks_s"][sl] = _ks(table.cdf(zs, a))
    k_g, k_s = (2, 3) if loc is None else (1, 2)
    aic_g = 2 * k_g - 2 * out["ll_g"]
    aic_s = 2 * k_s - 2 * out["ll_s"]
    if criterion == "aic":
        stable_wins = aic_s < aic_g
    elif criterion == "ks":
        stable_wins = out["ks_s"] < out["ks_g"]
    else:
        stable_wins = out["ll_s"] > out["ll_g"]
    winner = np.where(stable_wins, "stable", "gaussian")
    return NoiseModelComparison(
        gaussian_mean=restore(out["mu"], out_shape),
        gaussian_std=restore(out["sd"], out_shape),
        stable_alpha=restore(alpha, out_shape),
        stable_scale=restore(scale, out_shape),
        stable_loc=restore(sloc, out_shape),
        loglik_gaussian=restore(out["ll_g"], out_shape),
        loglik_stable=restore(out["ll_s"], out_shape),
        ks_gaussian=restore(out["ks_g"], out_shape),
        ks_stable=restore(out["ks_s"], out_shape),
        aic_gaussian=restore(aic_g, out_shape),
        aic_stable=restore(aic_s, out_shape),
        winner=restore(winner, out_shape),
        fraction_stable=float(stable_wins.mean()),
        criterion=criterion,
        stable_method=stable_method,
        n=n,
    )
