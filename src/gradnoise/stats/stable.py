"""Alpha-stable laws: sampling (Chambers–Mallows–Stuck) and fits (McCulloch, CF regression, MLE).

Parameterisations (Nolan 2020, Definitions 1.7-1.8), never scipy's global
``levy_stable.parameterization`` switch. For alpha != 1 the characteristic functions are

    S1: log phi(u) = -sigma^a |u|^a (1 - i beta sign(u) tan(pi a/2)) + i delta_1 u
    S0: log phi(u) = -sigma^a |u|^a (1 + i beta sign(u) tan(pi a/2) (|sigma u|^(1-a) - 1))
                     + i delta_0 u,      delta_0 = delta_1 + beta sigma tan(pi a/2),

and for alpha = 1, ``tan(pi a/2)`` is replaced by ``-(2/pi) log|u|`` (S1) or
``-(2/pi) log|sigma u|`` (S0), with delta_0 = delta_1 + (2/pi) beta sigma log(sigma). With beta = 0
(the symmetric SαS law of the SGN papers, ``phi(u) = exp(i delta u - sigma^a |u|^a)``) the two
coincide. ``alpha = 2`` is the Gaussian N(delta, 2 sigma^2): the stable "scale" of a Gaussian is
its standard deviation divided by sqrt(2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InsufficientDataError
from ._common import RNGLike, StatResult, as_generator, check_min_size
from ._dask import is_dask_array, map_columns
from ._stable_common import as_columns, column_chunks, rescale_columns, restore
from ._stable_density import get_table
from ._stable_mcculloch import QUANTILES, mcculloch_from_quantiles, sample_quantiles
from ._stable_mle import fit_sas_mle
from ._stable_skew import fit_stable_mle_skewed

Parameterization = Literal["S0", "S1"]

__all__ = ["StableFit", "fit_stable", "sample_stable", "sas_cdf", "sas_logpdf"]


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in ("S0", "S1"):
        raise ValueError(f"parameterization must be 'S0' or 'S1', got {parameterization!r}")


def _check_params(alpha: np.ndarray, beta: np.ndarray, scale: np.ndarray) -> None:
    if not np.all((alpha > 0) & (alpha <= 2)):
        raise ValueError(f"alpha must lie in (0, 2], got {alpha}")
    if not np.all((beta >= -1) & (beta <= 1)):
        raise ValueError(f"beta must lie in [-1, 1], got {beta}")
    if not np.all(scale > 0):
        raise ValueError(f"scale must be > 0, got {scale}")


def sample_stable(
    alpha: float | np.ndarray,
    beta: float | np.ndarray = 0.0,
    scale: float | np.ndarray = 1.0,
    loc: float | np.ndarray = 0.0,
    *,
    size: int | tuple[int, ...],
    rng: RNGLike,
    parameterization: Parameterization = "S1",
) -> np.ndarray:
    """Draw alpha-stable variates by Chambers, Mallows & Stuck (1976) (Weron 1996 form).

    With V ~ U(-pi/2, pi/2) and W ~ Exp(1) independent, the standard S1 variate is, for
    alpha != 1, with B = arctan(beta tan(pi alpha/2)) / alpha and
    S = (1 + beta^2 tan^2(pi alpha/2))^(1/(2 alpha)),

        X = S sin(alpha (V + B)) / cos(V)^(1/alpha) * (cos(V - alpha (V + B)) / W)^((1-alpha)/alpha)

    and for alpha = 1, X = (2/pi) [(pi/2 + beta V) tan V - beta log((pi/2) W cos V / (pi/2 + beta V))].
    It is then scaled and shifted per ``parameterization`` (see the module docstring):
    S1: ``scale X + loc`` (+ (2/pi) beta scale log(scale) when alpha = 1); S0:
    ``scale (X - beta tan(pi alpha/2)) + loc`` (alpha != 1), ``scale X + loc`` (alpha = 1).
    Parameters broadcast against ``size``. ``alpha = 2`` gives N(loc, 2 scale^2).

    Example:
        >>> sample_stable(1.5, size=3, rng=0).shape
        (3,)
    """
    _check_parameterization(parameterization)
    gen = as_generator(rng)
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    sc = np.asarray(scale, dtype=np.float64)
    mu = np.asarray(loc, dtype=np.float64)
    _check_params(a, b, sc)
    shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
    a, b, sc, mu = (np.broadcast_to(p, shape) for p in (a, b, sc, mu))
    v = gen.uniform(-np.pi / 2, np.pi / 2, size=shape)
    w = gen.standard_exponential(size=shape)
    one = a == 1.0
    with np.errstate(all="ignore"):
        tan_pa = np.tan(np.pi * a / 2.0)
        bb = np.arctan(b * tan_pa) / a
        ss = (1.0 + (b * tan_pa) ** 2) ** (1.0 / (2.0 * a))
        x_not1 = (
            ss
            * np.sin(a * (v + bb))
            / np.cos(v) ** (1.0 / a)
            * (np.cos(v - a * (v + bb)) / w) ** ((1.0 - a) / a)
        )
        half_pi_bv = np.pi / 2 + b * v
        x_one = (2.0 / np.pi) * (
            half_pi_bv * np.tan(v) - b * np.log((np.pi / 2) * w * np.cos(v) / half_pi_bv)
        )
        x = np.where(one, x_one, x_not1)
        if parameterization == "S1":
            out = sc * x + mu + np.where(one, (2.0 / np.pi) * b * sc * np.log(sc), 0.0)
        else:
            out = sc * (x - np.where(one, 0.0, b * tan_pa)) + mu
    return out


@dataclass(frozen=True, repr=False)
class StableFit(StatResult):
    """Fitted alpha-stable parameters, one value per column (floats for 1-D input).

    Attributes:
        alpha: stability index in (0, 2] (table range of the fits: about [0.5, 2]).
        scale: sigma (for alpha = 2 the standard deviation is sqrt(2) sigma).
        beta: skewness (0 when ``symmetric``).
        loc: location delta in ``parameterization`` (the median/centre when symmetric).
        method: ``"mcculloch"``, ``"cf"`` or ``"mle"``.
        parameterization: ``"S0"`` or ``"S1"`` (identical when beta = 0).
        symmetric: whether beta was fixed at 0.
        loc_fixed: whether ``loc`` was given rather than estimated.
        n: samples per column.
        loglik: maximised log-likelihood (``"mle"`` only, else None).
    """

    alpha: Any
    scale: Any
    beta: Any
    loc: Any
    method: str
    parameterization: str
    symmetric: bool
    loc_fixed: bool
    n: int
    loglik: Any = None


_MIN_N = {"mcculloch": 5, "cf": 10, "mle": 10}


def _sorted_block(block: np.ndarray) -> np.ndarray:
    """(m, n) ascending-sorted copy of an (n, m) column block (float32 kept float32). Always a
    copy: ``ascontiguousarray`` of the transpose of an F-ordered block is the block itself,
    which was then sorted in place (the caller's array, or a dask chunk that a later task
    reads again)."""
    t = np.array(block.T, order="C", copy=True)
    t.sort(axis=1)
    return t


def _to_parameterization(
    alpha: np.ndarray, beta: np.ndarray, scale: np.ndarray, loc0: np.ndarray, target: str
) -> np.ndarray:
    """Convert an S0 location to ``target``."""
    if target == "S0":
        return loc0
    with np.errstate(all="ignore"):
        shift = np.where(
            alpha == 1.0,
            (2.0 / np.pi) * beta * scale * np.log(scale),
            beta * scale * np.tan(np.pi * alpha / 2.0),
        )
    return loc0 - np.where(beta == 0, 0.0, shift)


def _cf_fit(
    block: np.ndarray, alpha0: np.ndarray, scale0: np.ndarray, loc0: np.ndarray, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Empirical characteristic-function regression (Koutrouvelis 1980, with the fixed grid
    u = 0.1, ..., 1.0 of Kogon & Williams 1998), after standardising by McCulloch's estimates.

    With y = (x - delta_0) / sigma_0 and phi_n(u) = mean exp(i u y):
        log(-log |phi_n(u)|^2) = log(2 gamma^alpha) + alpha log u      (OLS over u -> alpha, gamma)
        arg phi_n(u) = delta u + beta tan(pi alpha/2) (gamma^alpha u^alpha - gamma u)   (S0; OLS)
    Returns (alpha, beta, scale, S0 location) in the data's units."""
    u = np.linspace(0.1, 1.0, 10)
    # exp(i k 0.1 y) by repeated multiplication in complex64, averaged by numpy's pairwise sum
    # along each column's own contiguous row (errors ~1e-7, far below the sampling error ~n^-1/2
    # of the empirical CF). Each column's result depends on that column alone, whatever block of
    # columns it is computed in (a BLAS matrix-vector product's does not: its rounding follows
    # the column's position in the block).
    n = block.shape[0]
    t = np.ascontiguousarray(block.T)  # (m, n)
    if t.dtype == np.float32:  # already float32 data: standardise in float32
        y = (t - loc0.astype(np.float32)[:, None]) / scale0.astype(np.float32)[:, None]
    else:
        y = ((t - loc0[:, None]) / scale0[:, None]).astype(np.float32)
    del t
    y *= np.float32(0.1)
    e1 = np.empty(y.shape, dtype=np.complex64)
    np.cos(y, out=e1.real)
    np.sin(y, out=e1.imag)
    del y
    ek = e1.copy()
    phi = np.empty((u.size, block.shape[1]), dtype=np.complex128)
    for j in range(u.size):
        if j:
            ek *= e1
        phi[j] = ek.sum(axis=1) / n
    re, im = phi.real, phi.imag
    mod2 = np.clip(re * re + im * im, 1e-300, 1.0 - 1e-15)
    yy = np.log(-np.log(mod2))
    xx = np.log(u)[:, None]
    xc = xx - xx.mean()
    slope = (xc * (yy - yy.mean(axis=0))).sum(axis=0) / (xc * xc).sum()
    intercept = yy.mean(axis=0) - slope * xx.mean()
    alpha = np.clip(slope, 0.1, 2.0)
    gamma = np.exp((intercept - np.log(2.0)) / alpha)
    phase = np.arctan2(im, re)
    uu = u[:, None]
    if symmetric:
        beta = np.zeros_like(alpha)
        delta = (uu * phase).sum(axis=0) / (uu * uu).sum()
    else:
        gu = gamma * uu
        near1 = np.abs(alpha - 1.0) < 1e-3
        with np.errstate(all="ignore"):
            reg = np.where(
                near1,
                -(2.0 / np.pi) * gu * np.log(gu),
                np.tan(np.pi * alpha / 2.0) * (gu**alpha - gu),
            )
        # OLS of phase on [u, reg] without intercept, per column
        a11 = (uu * uu).sum(axis=0)
        a12 = (uu * reg).sum(axis=0)
        a22 = (reg * reg).sum(axis=0)
        b1 = (uu * phase).sum(axis=0)
        b2 = (reg * phase).sum(axis=0)
        det = a11 * a22 - a12 * a12
        with np.errstate(all="ignore"):
            delta = np.where(det > 0, (a22 * b1 - a12 * b2) / det, b1 / a11)
            beta = np.where(det > 0, (a11 * b2 - a12 * b1) / det, 0.0)
        beta = np.clip(beta, -1.0, 1.0)
    return alpha, beta, gamma * scale0, loc0 + scale0 * delta


def fit_stable(
    x: Any,
    *,
    method: Literal["mcculloch", "cf", "mle"] = "mcculloch",
    symmetric: bool = True,
    axis: int = 0,
    parameterization: Parameterization = "S1",
    loc: float | None = None,
) -> StableFit:
    """Fit an alpha-stable law to each column of ``x`` (samples along ``axis``).

    Methods:
        ``"mcculloch"``: McCulloch (1986) quantile estimator (five sample quantiles, tables;
            see ``_stable_mcculloch``). Fastest; consistent; alpha in about [0.59, 2].
        ``"cf"``: empirical characteristic-function regression (Koutrouvelis 1980; grid of
            Kogon & Williams 1998), started from McCulloch.
        ``"mle"``: maximum likelihood. Symmetric (default): on a tabulated SαS log-density
            (alpha nodes 0.50..2.00 step 0.01, Zolotarev's integral), batched over columns
            (``_stable_mle``: 100,000 columns of 1,000 in about 8 s here). ``symmetric=False``:
            alpha, beta, scale and the S0 location by L-BFGS-B on the exact density
            (Zolotarev's integral per value, ``_stable_skew``), one column at a time (about a
            second per column of 1,000 values): for modest numbers of columns. Estimates of
            alpha lie in [0.5, 2].

    ``symmetric=True`` fixes beta = 0 (SαS, the model of Battash et al.). ``loc=None`` estimates
    the location; with ``symmetric=True`` a number fixes it (e.g. ``loc=0.0`` for
    stochastic-gradient noise, which is centred by construction). Returns a :class:`StableFit`
    (floats for 1-D input). A 2-D dask array is fitted blockwise over column blocks on the active
    Dask scheduler (the same result).

    Example:
        >>> z = sample_stable(1.5, size=5000, rng=1)
        >>> round(fit_stable(z).alpha, 1)
        1.5
    """
    if is_dask_array(x):
        return map_columns(
            fit_stable,
            x,
            axis,
            {
                "method": method,
                "symmetric": symmetric,
                "parameterization": parameterization,
                "loc": loc,
            },
        )
    _check_parameterization(parameterization)
    if method not in _MIN_N:
        raise ValueError(f"method must be 'mcculloch', 'cf' or 'mle', got {method!r}")
    if loc is not None:
        if not symmetric:
            raise ValueError(
                "loc can be fixed for symmetric fits only (with beta free, S0 and S1 locations "
                "differ); pass loc=None"
            )
        if not np.isfinite(loc):
            raise ValueError(f"loc must be finite or None, got {loc}")
    cols, out_shape = as_columns(x, axis)
    n, m = cols.shape
    check_min_size(n, _MIN_N[method], f"fit_stable(method={method!r})")
    # extreme magnitudes (|x| ~ 1e300 or 1e-300) are fitted on x * 2**-e and mapped back exactly
    # (scale and location are equivariant; the log-likelihood shifts by -n e ln 2)
    cols, exps = rescale_columns(cols)
    res = {k: np.empty(m) for k in ("alpha", "beta", "scale", "loc0", "loglik")}
    for sl in column_chunks(cols):
        block = cols[:, sl]
        rows = _sorted_block(block)
        q = sample_quantiles(rows, QUANTILES)
        iqr_zero = q[3] - q[1] <= 0
        if iqr_zero.any():
            bad = np.flatnonzero(iqr_zero)[:5] + (sl.start or 0)
            raise InsufficientDataError(
                f"{int(iqr_zero.sum())} column(s) of x (e.g. {bad.tolist()}) have a zero "
                "interquartile range (constant or mostly tied values); a stable law cannot be "
                "fitted there"
            )
        alpha, beta, scale, zeta = mcculloch_from_quantiles(q, symmetric)
        if loc is not None:
            zeta = np.ldexp(np.full_like(zeta, float(loc)), -exps[sl])
        if method != "mcculloch":
            if method == "cf":
                alpha, beta, scale, cf_loc = _cf_fit(block, alpha, scale, zeta, symmetric)
                zeta = cf_loc if loc is None else zeta
            elif symmetric:
                alpha, scale, zeta, ll = fit_sas_mle(rows, alpha, scale, zeta, loc is None)
                res["loglik"][sl] = ll
            else:
                alpha, beta, scale, zeta, ll = fit_stable_mle_skewed(
                    block, alpha, beta, scale, zeta
                )
                res["loglik"][sl] = ll
        res["alpha"][sl], res["beta"][sl], res["scale"][sl], res["loc0"][sl] = (
            alpha,
            beta,
            scale,
            zeta,
        )
    if exps.any():
        res["scale"] = np.ldexp(res["scale"], exps)
        res["loc0"] = np.ldexp(res["loc0"], exps)
        res["loglik"] -= n * math.log(2.0) * exps
    if loc is not None:
        loc_out = np.full(m, float(loc))
    else:
        loc_out = _to_parameterization(
            res["alpha"], res["beta"], res["scale"], res["loc0"], parameterization
        )
    return StableFit(
        alpha=restore(res["alpha"], out_shape),
        scale=restore(res["scale"], out_shape),
        beta=restore(res["beta"], out_shape),
        loc=restore(loc_out, out_shape),
        method=method,
        parameterization=parameterization,
        symmetric=symmetric,
        loc_fixed=loc is not None,
        n=n,
        loglik=restore(res["loglik"], out_shape) if method == "mle" else None,
    )


def _check_sas_args(alpha: Any, scale: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(alpha, dtype=np.float64)
    sc = np.asarray(scale, dtype=np.float64)
    if not np.all((a >= 0.5) & (a <= 2.0)):
        raise ValueError(f"the tabulated SαS law covers alpha in [0.5, 2], got {alpha}")
    if not np.all(sc > 0):
        raise ValueError(f"scale must be > 0, got {scale}")
    return a, sc


def _standardised(x: Any, loc: Any, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z, zf)``: ``z = (x - loc) / scale`` (NaN or +-inf where ``x`` is), and ``zf`` the same
    with non-finite entries set to 0, for the table (callers fill in the limits)."""
    with np.errstate(invalid="ignore"):
        z = (np.asarray(x, dtype=np.float64) - np.asarray(loc, dtype=np.float64)) / scale
    return z, np.where(np.isfinite(z), z, 0.0)


def sas_logpdf(x: Any, alpha: Any, scale: Any = 1.0, loc: Any = 0.0) -> np.ndarray:
    """log-density of SαS(alpha, scale, loc) (beta = 0), from the cached table (broadcast).

    ``log f(x) = l_alpha(|x - loc| / scale) - log(scale)``; relative accuracy ~1e-7 at the alpha
    nodes 0.50, 0.51, ..., 2.00 and ~1e-4 (up to ~1e-2 at rare far-tail points for alpha near 2)
    between them. ``x = +-inf`` gives ``-inf`` and NaN gives NaN (as scipy's ``logpdf``)."""
    a, sc = _check_sas_args(alpha, scale)
    z, zf = _standardised(x, loc, sc)
    out = get_table().logpdf(zf, a) - np.log(sc)
    return np.where(np.isfinite(z), out, np.where(np.isnan(z), np.nan, -np.inf))


def sas_cdf(x: Any, alpha: Any, scale: Any = 1.0, loc: Any = 0.0) -> np.ndarray:
    """Distribution function of SαS(alpha, scale, loc), from the cached table (abs. error ~1e-6).
    ``x = -inf`` gives 0, ``+inf`` 1 and NaN NaN."""
    a, sc = _check_sas_args(alpha, scale)
    z, zf = _standardised(x, loc, sc)
    out = get_table().cdf(zf, a)
    return np.where(np.isfinite(z), out, np.where(np.isnan(z), np.nan, (z > 0) * 1.0))
