"""Clauset–Shalizi–Newman power-law tails: fit, bootstrap goodness of fit, likelihood ratios.

Reference: A. Clauset, C. R. Shalizi, M. E. J. Newman, "Power-law distributions in empirical
data", SIAM Review 51(4):661–703 (2009), arXiv:0706.1062 ("CSN" below).

Model (x >= xmin): continuous ``p(x) = (alpha-1)/xmin (x/xmin)**-alpha``; discrete
``P(X = k) = k**-alpha / zeta(alpha, xmin)`` on the integers (Hurwitz zeta).

* :func:`fit_power_law` — MLE of alpha above each candidate xmin (continuous: CSN eq. 3.1,
  ``alpha = 1 + n / sum ln(x/xmin)``; discrete: the exact zeta MLE, eq. 3.5, solved to 1e-13),
  xmin chosen by minimising the KS distance over every distinct data value (CSN §3.3).
* :func:`power_law_test` — CSN's semi-parametric bootstrap p-value (§4.1), re-fitting xmin in
  every replicate; reject the power law when ``p <= 0.1``.
* :func:`compare_tails` — log-likelihood ratio against an alternative fitted on the same tail
  (CSN §5, Appendix C): Vuong's normalised test, or the chi-square test when nested; discrete
  data against the alternatives normalised over the integers (CSN Table 2.1).

Every function takes one sample (1-D) or a batch (N-D array, samples along ``axis``) and returns
one frozen result whose fields are scalars or arrays of the batch shape; batched equals looped.

Input policy: NaN/Inf raise. Values <= 0 raise unless ``nonpositive="drop"`` (then they are
removed per sample and counted in ``n_dropped``). Discrete data must be integers >= 1.

The xmin scan is exact and fast (see ``_powerlaw_scan``): alpha for all candidates from suffix
sums in O(n); the KS distance is computed exactly only for candidates that can still be the
minimiser, by a branch-and-bound over the tail using the monotonicity of the empirical and
model survival functions, after near-tight lower bounds from neighbouring candidates rule out
the rest. It returns the same xmin as evaluating every candidate (checked against a full scan
and against the ``powerlaw`` package in the tests).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
from scipy import special, stats

from ..errors import DataError, InsufficientDataError
from ._common import (
    RNGLike,
    StatResult,
    as_float_array,
    as_generator,
    check_finite,
    column_generators,
    pow2_exponents,
)
from ._dask import is_dask_array, map_columns
from ._powerlaw_alt import (
    fit_lognormal_tail,
    fit_se_tail,
    fit_tpl_tail,
    log_expint,
    tn_log_partition,
)
from ._powerlaw_discrete import discrete_alternative
from ._powerlaw_scan import Candidates, Unique, _Model, make_candidates, scan, unique_batch
from ._powerlaw_zeta import log_hurwitz, sample_discrete

__all__ = [
    "PowerLawFit",
    "PowerLawTest",
    "TailComparison",
    "compare_tails",
    "fit_power_law",
    "power_law_test",
]

_DISCRETE_MAX = 2.0**53

Alternative = Literal["lognormal", "exponential", "truncated_power_law", "stretched_exponential"]
_ALTERNATIVES = ("lognormal", "exponential", "truncated_power_law", "stretched_exponential")


@dataclasses.dataclass(frozen=True, repr=False)
class PowerLawFit(StatResult):
    """A power-law fit of the tail ``x >= xmin`` (fields are arrays for a batch).

    Attributes:
        alpha: pdf exponent, ``p(x) ~ x**-alpha``.
        xmin: lower bound of the power-law tail.
        n_tail: number of points ``>= xmin``.
        n: number of points used (after ``nonpositive="drop"``).
        ks: KS distance between the tail and the fit (CSN / ``powerlaw`` convention: model CDF
            against the fraction of the tail strictly below each distinct value).
        sigma: standard error of alpha: ``(alpha-1)/sqrt(n_tail)`` (continuous, CSN eq. 3.2),
            ``1/sqrt(n_tail Var[ln X])`` (discrete, eq. 3.6).
        n_dropped: values ``<= 0`` removed under ``nonpositive="drop"`` (else 0).
        discrete: whether the discrete (zeta) model was fitted.
    """

    alpha: Any
    xmin: Any
    n_tail: Any
    n: Any
    ks: Any
    sigma: Any
    n_dropped: Any
    discrete: bool


@dataclasses.dataclass(frozen=True, repr=False)
class PowerLawTest(PowerLawFit):
    """:class:`PowerLawFit` plus CSN's bootstrap goodness-of-fit p-value.

    Attributes:
        pvalue: fraction of bootstrap KS distances ``>= ks`` (reject the power law if <= 0.1).
        n_boot: number of bootstrap replicates.
        boot_ks: bootstrap KS distances, shape ``batch_shape + (n_boot,)`` (not in ``to_dict``).
    """

    pvalue: Any
    n_boot: int
    boot_ks: np.ndarray = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, repr=False)
class TailComparison(StatResult):
    """Likelihood-ratio comparison of the power law with an alternative on the same tail.

    Attributes:
        alternative: the alternative distribution's name.
        loglik_ratio: ``R = sum ln p_powerlaw(x) - ln p_alt(x)`` over the tail (> 0 favours the
            power law).
        normalized_ratio: ``R / (sqrt(n_tail) sd)``, sd the standard deviation of the pointwise
            log-likelihood differences (Vuong's statistic).
        pvalue: non-nested: Vuong's two-sided ``erfc(|R| / sqrt(2 n_tail sd^2))``, the
            probability of a ratio this far from 0 if both fit equally well; nested (truncated
            power law): chi-square(1) survival of ``2|R|`` (or its half, see ``nested_pvalue``).
            A small p means the sign of ``R`` is significant.
        nested: whether the power law is a special case of the alternative.
        boundary: the alternative's MLE is its power-law limit (lognormal with sigma -> inf,
            stretched exponential with beta -> 0, truncated power law with lambda = 0): both fits
            coincide, ``R = 0`` and ``pvalue = 1``.
        params: the alternative's MLE (``mu``, ``sigma``; ``lambda``; ``alpha``, ``lambda``;
            ``beta``, ``lambda``), in x units (a rate ``lambda`` beyond float64, for data of
            magnitude below ~1e-300, is reported as ``inf``).
        xmin, alpha, n_tail: the power-law fit that defines the tail.
        loglik_power_law, loglik_alternative: the two log-likelihoods summed over the tail.
    """

    alternative: str
    loglik_ratio: Any
    normalized_ratio: Any
    pvalue: Any
    nested: bool
    boundary: Any
    params: dict[str, Any]
    xmin: Any
    alpha: Any
    n_tail: Any
    loglik_power_law: Any
    loglik_alternative: Any


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Batch:
    xs: np.ndarray  # flat, each sample sorted (and scaled by 2**-exps, see _prepare)
    off: np.ndarray  # (B + 1,)
    shape: tuple[int, ...]  # batch shape (() for one sample)
    n_dropped: np.ndarray  # (B,)
    exps: np.ndarray  # (B,) power-of-two exponents of the rescaling (0: values as given)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """Per-sample values in x units -> the rescaled units of ``xs``."""
        return np.ldexp(values, -self.exps) if self.exps.any() else values

    def unscaled(self, values: np.ndarray) -> np.ndarray:
        """Per-sample values in the rescaled units -> x units."""
        return np.ldexp(values, self.exps) if self.exps.any() else values

    @property
    def size(self) -> int:
        return int(self.off.size - 1)


def _describe(bad: np.ndarray, shape: tuple[int, ...]) -> str:
    if not shape:
        return "the sample"
    idx = [np.unravel_index(int(i), shape) for i in np.flatnonzero(bad)[:5]]
    more = "" if bad.sum() <= 5 else f" and {int(bad.sum()) - 5} more"
    names = ", ".join(str(tuple(int(v) for v in i)) for i in idx)
    return f"{int(bad.sum())} sample(s) (batch index {names}{more})"


def _prepare(x: Any, axis: int | None, nonpositive: str, discrete: bool, name: str = "x") -> _Batch:
    arr = as_float_array(x, name)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array of samples, got a scalar")
    if axis is None:
        arr = arr.ravel()
    if arr.ndim == 1:
        if axis not in (None, 0, -1):
            raise ValueError(f"axis {axis} is out of bounds for a 1-D sample")
        shape: tuple[int, ...] = ()
        mat = arr[None, :]
    else:
        assert axis is not None
        arr = np.moveaxis(arr, axis, -1)
        shape = arr.shape[:-1]
        mat = arr.reshape(math.prod(shape), arr.shape[-1])
    if mat.size == 0:
        raise InsufficientDataError(
            f"{name} is empty (shape {np.shape(x)}): "
            + ("no values along the sample axis" if mat.shape[0] else "a batch of no samples")
            + "; pass at least min_tail values per sample (along axis)"
        )
    check_finite(mat, name)
    if nonpositive not in ("raise", "drop"):
        raise ValueError(f"nonpositive must be 'raise' or 'drop', got {nonpositive!r}")
    bad = mat <= 0
    nbad = bad.sum(axis=1)
    if nbad.any() and nonpositive == "raise":
        raise ValueError(
            f"{name} contains {int(nbad.sum())} value(s) <= 0 in {_describe(nbad > 0, shape)}; "
            "a power law lives on x > 0 (take |x|, or pass nonpositive='drop' to exclude them "
            "explicitly)"
        )
    if discrete:
        frac = (mat != np.floor(mat)) & ~bad
        if frac.any():
            raise ValueError(
                f"discrete=True needs integer values, but {name} has {int(frac.sum())} "
                "non-integer value(s); round explicitly or use discrete=False"
            )
        if mat.max() >= _DISCRETE_MAX:
            raise DataError(
                f"discrete=True needs integers below 2**53 = {_DISCRETE_MAX:.4g} (float64 holds "
                f"every integer only up to there), but {name} reaches {mat.max():.4g}; fit such "
                "magnitudes with discrete=False (a continuous power law)"
            )
    if nbad.any():
        srt = np.sort(np.where(bad, np.inf, mat), axis=1)
        keep = np.arange(mat.shape[1])[None, :] < (mat.shape[1] - nbad)[:, None]
        xs = srt[keep]
        counts = mat.shape[1] - nbad
    else:
        xs = np.sort(mat, axis=1).ravel()
        counts = np.full(mat.shape[0], mat.shape[1])
    off = np.zeros(mat.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    exps = np.zeros(mat.shape[0], dtype=np.int64)
    if not discrete and xs.size:
        # values of extreme magnitude (~1e300, ~1e-300) are rescaled per sample by an exact
        # power of two (alpha, KS and likelihood ratios are scale-free; xmin and the
        # alternatives' parameters are mapped back), keeping the sample's smallest value normal
        has = counts > 0
        first, last = off[:-1][has], off[1:][has] - 1
        e = pow2_exponents(xs[last])
        _, e_lo = np.frexp(xs[first])
        exps[has] = np.where(e > 0, np.minimum(e, e_lo + 1000), e)
        if exps.any():
            xs = np.ldexp(xs, -np.repeat(exps, counts))
    return _Batch(xs=xs, off=off, shape=shape, n_dropped=nbad.astype(np.int64), exps=exps)


def _per_sample(value: Any, batch: _Batch, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    try:
        arr = np.broadcast_to(arr, batch.shape)
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcast to the batch shape {batch.shape}, "
            f"got shape {arr.shape}"
        ) from None
    return np.ascontiguousarray(arr).reshape(batch.size)


def _out(values: np.ndarray, shape: tuple[int, ...], kind: type = float) -> Any:
    if not shape:
        return kind(values[0])
    return values.reshape(shape)


# --------------------------------------------------------------------------------------------
# fitting core (flat batches)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _FitArrays:
    alpha: np.ndarray
    xmin: np.ndarray
    n_tail: np.ndarray
    ks: np.ndarray
    sigma: np.ndarray
    ok: np.ndarray  # a fit was found


@dataclasses.dataclass
class _Options:
    discrete: bool
    min_tail: int
    xmin: np.ndarray | None
    xmin_lo: np.ndarray | None
    xmin_hi: np.ndarray | None
    alpha_lo: float | None
    alpha_hi: float | None


def _fit_flat(xs: np.ndarray, off: np.ndarray, opt: _Options) -> _FitArrays:
    uq: Unique = unique_batch(xs, off)
    cand: Candidates = make_candidates(
        uq,
        discrete=opt.discrete,
        min_tail=opt.min_tail,
        xmin_lo=opt.xmin_lo,
        xmin_hi=opt.xmin_hi,
        alpha_lo=opt.alpha_lo,
        alpha_hi=opt.alpha_hi,
        fixed_xmin=opt.xmin,
    )
    nseg = uq.nseg
    if opt.xmin is not None:
        ok = np.isfinite(cand.alpha) & (cand.n >= 2)
        best = np.where(ok, np.arange(nseg), -1)
        model = _Model(uq, cand.take(ok, nseg), opt.discrete)
        res = scan(model)
        ks = np.full(nseg, np.nan)
        ks[ok] = res.ks[ok]
    else:
        model = _Model(uq, cand, opt.discrete)
        res = scan(model)
        best = res.best
        ks = res.ks
        ok = best >= 0
    alpha = np.full(nseg, np.nan)
    xmin = np.full(nseg, np.nan)
    n_tail = np.zeros(nseg, dtype=np.int64)
    sigma = np.full(nseg, np.nan)
    b = best[ok]
    alpha[ok] = cand.alpha[b]
    xmin[ok] = cand.xmin[b]
    n_tail[ok] = cand.n[b].astype(np.int64)
    sigma[ok] = 1.0 / np.sqrt(cand.n[b] * cand.fisher[b])
    return _FitArrays(alpha=alpha, xmin=xmin, n_tail=n_tail, ks=ks, sigma=sigma, ok=ok)


def _options(
    batch: _Batch,
    *,
    xmin: Any,
    xmin_range: tuple[float | None, float | None] | None,
    discrete: bool,
    min_tail: int,
    alpha_range: tuple[float | None, float | None] | None,
) -> _Options:
    if int(min_tail) != min_tail or min_tail < 1:
        raise ValueError(f"min_tail must be a positive integer, got {min_tail!r}")
    min_tail = int(min_tail)
    fixed = None
    lo = hi = None
    if xmin is not None:
        if xmin_range is not None:
            raise ValueError("give either xmin (fixed) or xmin_range (scan), not both")
        fixed = _per_sample(xmin, batch, "xmin")
        if not np.all(np.isfinite(fixed)) or np.any(fixed <= 0):
            raise ValueError("xmin must be finite and > 0")
        if discrete and np.any(fixed != np.floor(fixed)):
            raise ValueError("discrete=True needs an integer xmin")
        fixed = batch.scaled(fixed)
    elif xmin_range is not None:
        if len(xmin_range) != 2:
            raise ValueError("xmin_range must be a (low, high) pair; use None for no bound")
        lo = None if xmin_range[0] is None else _per_sample(xmin_range[0], batch, "xmin_range")
        hi = None if xmin_range[1] is None else _per_sample(xmin_range[1], batch, "xmin_range")
        lo = None if lo is None else batch.scaled(lo)
        hi = None if hi is None else batch.scaled(hi)
    a_lo = a_hi = None
    if alpha_range is not None:
        if len(alpha_range) != 2:
            raise ValueError("alpha_range must be a (low, high) pair; use None for no bound")
        a_lo = None if alpha_range[0] is None else float(alpha_range[0])
        a_hi = None if alpha_range[1] is None else float(alpha_range[1])
    n = np.diff(batch.off)
    if fixed is None:
        small = n < max(min_tail, 3)
        if small.any():
            raise InsufficientDataError(
                f"the xmin scan needs at least max(min_tail, 3) = {max(min_tail, 3)} points per "
                f"sample (min_tail={min_tail}); {_describe(small, batch.shape)} "
                f"{'has' if not batch.shape else 'have'} fewer (smallest: {int(n.min())})"
            )
    return _Options(discrete, min_tail, fixed, lo, hi, a_lo, a_hi)


def _checked_fit(batch: _Batch, opt: _Options) -> _FitArrays:
    fit = _fit_flat(batch.xs, batch.off, opt)
    if not fit.ok.all():
        bad = ~fit.ok
        if opt.xmin is not None:
            why = (
                "the tail x >= xmin needs at least 2 points, not all equal to xmin "
                "(alpha is undefined otherwise)"
            )
        else:
            why = (
                "no candidate xmin qualifies: a candidate is a distinct value, not one of the "
                "two largest, leaving >= min_tail points"
                + (
                    " inside xmin_range"
                    if opt.xmin_lo is not None or opt.xmin_hi is not None
                    else ""
                )
                + (
                    " with alpha inside alpha_range"
                    if opt.alpha_lo is not None or opt.alpha_hi is not None
                    else ""
                )
            )
        raise InsufficientDataError(f"no power-law fit for {_describe(bad, batch.shape)}: {why}")
    return fit


def fit_power_law(
    x: Any,
    *,
    xmin: Any = None,
    xmin_range: tuple[Any, Any] | None = None,
    discrete: bool = False,
    min_tail: int = 50,
    alpha_range: tuple[float | None, float | None] | None = None,
    nonpositive: Literal["raise", "drop"] = "raise",
    axis: int | None = 0,
) -> PowerLawFit:
    """Fit a power law to the tail of ``x`` (CSN 2009, §3).

    Args:
        x: one sample (1-D) or a batch with samples along ``axis`` (``axis=None`` flattens).
        xmin: fixed lower bound (scalar or one per sample); ``None`` scans every distinct value
            and keeps the one with the smallest KS distance (ties: the smallest xmin).
        xmin_range: ``(low, high)``: scan only candidates in ``[low, high]`` (either may be None).
        discrete: fit the discrete (Hurwitz zeta) power law to integer data by its exact MLE.
        min_tail: scanned candidates must leave at least this many points in the tail. The
            candidates are the distinct values except the two largest of each sample (as the
            ``powerlaw`` package); ``min_tail=1`` reproduces its scan exactly.
        alpha_range: ``(low, high)``: keep only candidates whose fitted alpha lies strictly
            inside. CSN impose no restriction (the default); ``(0, 3)`` reproduces the default
            of the ``powerlaw`` package, which silently discards other candidates.
        nonpositive: ``"raise"`` (default) or ``"drop"`` values ``<= 0`` (counted in
            ``n_dropped``).
        axis: the sample axis of a batch.

    A 2-D dask array (e.g. ``open_run(path).to_dask().grads``) is fitted blockwise over blocks
    of whole columns on the active Dask scheduler; the result equals the in-memory one.

    Returns:
        :class:`PowerLawFit`.

    Algorithm (exact, not a subsample of candidates): alpha of every candidate from suffix sums
    of ``ln(u_k/u_{k-1})`` (O(n) after sorting; the discrete MLE by safeguarded Newton on the
    score with Euler–Maclaurin Hurwitz-zeta log-moments). The KS distance is computed exactly
    only where needed: candidates are visited coarse to fine, each first evaluated where its
    neighbours' KS deviation peaked (a lower bound), and resolved by a branch-and-bound over
    its tail (the empirical and model survival functions are both monotone, which bounds
    ``|G|`` on an interval from its ends) only if that bound does not already exceed the best
    KS distance found. n = 1e6 takes about a second. Details in ``_powerlaw_scan``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> fit = fit_power_law(rng.pareto(1.5, 5000) + 1.0)  # true alpha = 2.5
        >>> round(fit.alpha, 1)
        2.5
    """
    if is_dask_array(x):
        return map_columns(
            fit_power_law,
            x,
            axis,  # type: ignore[arg-type]  # checked there
            {
                "xmin": xmin,
                "xmin_range": xmin_range,
                "discrete": discrete,
                "min_tail": min_tail,
                "alpha_range": alpha_range,
                "nonpositive": nonpositive,
            },
            per_column=("xmin", "xmin_range"),
        )
    batch = _prepare(x, axis, nonpositive, discrete)
    opt = _options(
        batch,
        xmin=xmin,
        xmin_range=xmin_range,
        discrete=discrete,
        min_tail=min_tail,
        alpha_range=alpha_range,
    )
    fit = _checked_fit(batch, opt)
    return _make_fit(fit, batch, discrete)


def _make_fit(fit: _FitArrays, batch: _Batch, discrete: bool, **extra: Any) -> Any:
    shape = batch.shape
    kw = {
        "alpha": _out(fit.alpha, shape),
        "xmin": _out(batch.unscaled(fit.xmin), shape),
        "n_tail": _out(fit.n_tail, shape, int),
        "n": _out(np.diff(batch.off), shape, int),
        "ks": _out(fit.ks, shape),
        "sigma": _out(fit.sigma, shape),
        "n_dropped": _out(batch.n_dropped, shape, int),
        "discrete": bool(discrete),
    }
    if extra:
        return PowerLawTest(**kw, **extra)
    return PowerLawFit(**kw)


# --------------------------------------------------------------------------------------------
# bootstrap goodness of fit
# --------------------------------------------------------------------------------------------
_BLOCK = 64  # replicates drawn per generator call: the random stream depends on it only


def power_law_test(
    x: Any,
    *,
    n_boot: int = 1000,
    rng: RNGLike = None,
    xmin: Any = None,
    xmin_range: tuple[Any, Any] | None = None,
    discrete: bool = False,
    min_tail: int = 50,
    alpha_range: tuple[float | None, float | None] | None = None,
    nonpositive: Literal["raise", "drop"] = "raise",
    axis: int | None = 0,
    max_values_per_chunk: int = 4_000_000,
) -> PowerLawTest:
    """CSN's semi-parametric bootstrap test of the power-law hypothesis (CSN 2009, §4.1).

    Each replicate has ``n`` points: with probability ``n_tail/n`` a draw from the fitted power
    law above xmin (continuous: ``xmin (1-U)**(-1/(alpha-1))``; discrete: exact inverse CDF),
    otherwise a uniform resample of the observed values below xmin. The replicate is fitted by
    the same procedure as the data (xmin re-scanned, with the same options; a fixed ``xmin``
    stays fixed) and its KS distance recorded; ``p = #{ks_rep >= ks} / n_boot``. CSN reject the
    power law when ``p <= 0.1``; ``n_boot ~ 1/(4 eps^2)`` gives p to within ``eps``
    (2,500 for 0.01).

    Randomness: one sample uses ``rng`` directly; sample ``b`` of a batch uses the ``b``-th of
    ``as_generator(rng).spawn(B)``, so a batch equals a loop over samples called with those
    children. Other arguments as in :func:`fit_power_law`; ``max_values_per_chunk`` bounds the
    memory used by the replicates (it does not change the result). A 2-D dask array runs
    blockwise over column blocks with the same per-column streams: the same result.
    """
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    n_boot = int(n_boot)
    if is_dask_array(x):
        return map_columns(
            power_law_test,
            x,
            axis,  # type: ignore[arg-type]  # checked there
            {
                "n_boot": n_boot,
                "rng": rng,
                "xmin": xmin,
                "xmin_range": xmin_range,
                "discrete": discrete,
                "min_tail": min_tail,
                "alpha_range": alpha_range,
                "nonpositive": nonpositive,
                "max_values_per_chunk": max_values_per_chunk,
            },
            per_column=("xmin", "xmin_range"),
            seeded=True,
        )
    batch = _prepare(x, axis, nonpositive, discrete)
    opt = _options(
        batch,
        xmin=xmin,
        xmin_range=xmin_range,
        discrete=discrete,
        min_tail=min_tail,
        alpha_range=alpha_range,
    )
    fit = _checked_fit(batch, opt)
    gens = [as_generator(rng)] if not batch.shape else column_generators(rng, batch.size)
    boot = _bootstrap(batch, fit, opt, gens, n_boot, max_values_per_chunk)
    pvalue = np.mean(boot >= fit.ks[:, None], axis=1)
    shape = batch.shape
    return _make_fit(
        fit,
        batch,
        discrete,
        pvalue=_out(pvalue, shape),
        n_boot=n_boot,
        boot_ks=boot.reshape((*shape, n_boot)) if shape else boot[0],
    )


def _bootstrap(
    batch: _Batch,
    fit: _FitArrays,
    opt: _Options,
    gens: list[np.random.Generator],
    n_boot: int,
    budget: int,
) -> np.ndarray:
    nseg = batch.size
    n = np.diff(batch.off)
    out = np.empty((nseg, n_boot))
    blocks = [(s, r0) for s in range(nseg) for r0 in range(0, n_boot, _BLOCK)]
    chunk: list[tuple[int, int]] = []
    used = 0
    for item in blocks:
        size = n[item[0]] * min(_BLOCK, n_boot - item[1])
        if chunk and used + size > budget:
            _run_chunk(chunk, batch, fit, opt, gens, n_boot, out)
            chunk, used = [], 0
        chunk.append(item)
        used += size
    if chunk:
        _run_chunk(chunk, batch, fit, opt, gens, n_boot, out)
    return out


def _run_chunk(
    chunk: list[tuple[int, int]],
    batch: _Batch,
    fit: _FitArrays,
    opt: _Options,
    gens: list[np.random.Generator],
    n_boot: int,
    out: np.ndarray,
) -> None:
    rows: list[np.ndarray] = []
    owners: list[tuple[int, int, int]] = []
    for s, r0 in chunk:
        reps = min(_BLOCK, n_boot - r0)
        rows.append(_draw_block(s, reps, batch, fit, opt.discrete, gens[s]))
        owners.append((s, r0, reps))
    sizes = np.concatenate([np.full(r.shape[0], r.shape[1]) for r in rows])
    xs = np.concatenate([r.ravel() for r in rows])
    off = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=off[1:])
    seg_owner = np.concatenate([np.full(reps, s) for s, _, reps in owners])
    sub = dataclasses.replace(
        opt,
        xmin=None if opt.xmin is None else opt.xmin[seg_owner],
        xmin_lo=None if opt.xmin_lo is None else opt.xmin_lo[seg_owner],
        xmin_hi=None if opt.xmin_hi is None else opt.xmin_hi[seg_owner],
    )
    res = _fit_flat(xs, off, sub)
    if not res.ok.all():
        raise InsufficientDataError(
            "a bootstrap replicate admits no power-law fit under the given options (e.g. "
            "alpha_range excludes every candidate); use the unrestricted CSN scan"
        )
    pos = 0
    for s, r0, reps in owners:
        out[s, r0 : r0 + reps] = res.ks[pos : pos + reps]
        pos += reps


def _draw_block(
    s: int, reps: int, batch: _Batch, fit: _FitArrays, discrete: bool, gen: np.random.Generator
) -> np.ndarray:
    """``reps`` sorted synthetic samples (rows) for sample ``s`` (CSN §4.1)."""
    lo, hi = batch.off[s], batch.off[s + 1]
    n = int(hi - lo)
    n_tail = int(fit.n_tail[s])
    body = batch.xs[lo : hi - n_tail]  # values < xmin (the sample is sorted)
    counts = gen.binomial(n, n_tail / n, size=reps)
    u = gen.random((reps, n))
    tail = np.arange(n)[None, :] < counts[:, None]
    vals = np.empty((reps, n))
    ut = 1.0 - u[tail]  # in (0, 1]
    a, xm = fit.alpha[s], fit.xmin[s]
    if discrete:
        vals[tail] = sample_discrete(a, xm, ut)
    else:  # draws beyond float64 (alpha near 1) are kept at its largest value
        with np.errstate(over="ignore"):
            vals[tail] = np.minimum(xm * ut ** (-1.0 / (a - 1.0)), np.finfo(np.float64).max)
    if body.size:
        idx = np.minimum((u[~tail] * body.size).astype(np.int64), body.size - 1)
        vals[~tail] = body[idx]
    else:
        vals[~tail] = xm  # unreachable: counts == n when n_tail == n
    vals.sort(axis=1)
    return vals


# --------------------------------------------------------------------------------------------
# likelihood-ratio comparisons
# --------------------------------------------------------------------------------------------
def compare_tails(
    x: Any,
    alternative: Alternative = "lognormal",
    *,
    xmin: Any = None,
    xmin_range: tuple[Any, Any] | None = None,
    discrete: bool = False,
    min_tail: int = 50,
    alpha_range: tuple[float | None, float | None] | None = None,
    nested_pvalue: Literal["chi2", "half_chi2"] = "chi2",
    nonpositive: Literal["raise", "drop"] = "raise",
    axis: int | None = 0,
) -> TailComparison:
    """Compare the power-law tail with ``alternative`` by their log-likelihood ratio (CSN §5).

    The power law is fitted as in :func:`fit_power_law` (or at the given ``xmin``: pass
    ``fit.xmin`` to reuse a fit); the alternative is fitted by maximum likelihood on the same
    tail ``x >= xmin`` with its density truncated (renormalised) at xmin:

    * ``exponential``: ``lam exp(-lam (x - xmin))`` (geometric when discrete);
    * ``lognormal``: ``exp(-(ln x - mu)^2/(2 sigma^2)) / (x sigma sqrt(2 pi) Q)``, ``Q`` the normal
      survival at ``(ln xmin - mu)/sigma``;
    * ``truncated_power_law``: ``x^-alpha e^(-lam x) lam^(1-alpha) / Gamma(1-alpha, lam xmin)``;
    * ``stretched_exponential``: ``beta lam^beta x^(beta-1) exp(-lam^beta (x^beta - xmin^beta))``.

    ``R = sum_i [ln p_pl(x_i) - ln p_alt(x_i)]``. Non-nested alternatives: Vuong's test,
    ``p = erfc(|R| / sqrt(2 n sd^2))`` (CSN eq. 5.4). The power law is nested in the truncated
    power law (lam = 0), so there ``p = P(chi2_1 >= 2|R|)`` (CSN Appendix C, as the ``powerlaw``
    package); ``nested_pvalue="half_chi2"`` halves it, the asymptotic law when the null sits on
    the boundary lam = 0 (Self & Liang 1987).

    Discrete data (``discrete=True``): the exact zeta power law against each alternative's
    discrete version, its basic form normalised over the integers ``k >= xmin`` (CSN Table 2.1):
    the geometric distribution (``exponential``), ``exp(-(ln k - mu)^2 / (2 sigma^2)) / k``,
    ``k^-alpha e^(-lam k)`` and ``k^(beta-1) exp(-(lam k)^beta)``, each fitted by exact maximum
    likelihood (normalising sums to double precision, see ``_powerlaw_discrete``). The
    ``powerlaw`` package normalises its discrete truncated power law the same way but rounds a
    continuous lognormal and stretched exponential instead (``F(k + 1/2) - F(k - 1/2)``): a
    different model, whose ratios differ slightly (benchmarks/powerlaw.py).

    Returns:
        :class:`TailComparison` (positive ``loglik_ratio``: the power law fits better).
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    if nested_pvalue not in ("chi2", "half_chi2"):
        raise ValueError(f"nested_pvalue must be 'chi2' or 'half_chi2', got {nested_pvalue!r}")
    batch = _prepare(x, axis, nonpositive, discrete)
    opt = _options(
        batch,
        xmin=xmin,
        xmin_range=xmin_range,
        discrete=discrete,
        min_tail=min_tail,
        alpha_range=alpha_range,
    )
    fit = _checked_fit(batch, opt)
    nseg = batch.size
    # flat tails
    n_tail = fit.n_tail
    starts = np.zeros(nseg, dtype=np.int64)
    np.cumsum(n_tail[:-1], out=starts[1:])
    seg = np.repeat(np.arange(nseg), n_tail)
    pos = np.arange(seg.size) - starts[seg] + (batch.off[1:] - n_tail)[seg]
    xt = batch.xs[pos]
    xm = fit.xmin[seg]
    nt = n_tail.astype(np.float64)
    y = xt / xm
    z = np.log1p((xt - xm) / xm)
    zsum = np.add.reduceat(z, starts)
    zbar = zsum / nt
    alpha = fit.alpha
    # power-law pointwise log-likelihood
    if discrete:
        ll_pl = -alpha[seg] * np.log(xt) - log_hurwitz(alpha, fit.xmin)[seg]
    else:
        ll_pl = np.log(alpha - 1.0)[seg] - np.log(xm) - alpha[seg] * z
    boundary = np.zeros(nseg, dtype=bool)
    params: dict[str, np.ndarray]
    if alternative == "exponential":
        excess = np.add.reduceat(xt - xm, starts) / nt
        if discrete:
            lam = np.log1p(1.0 / excess)
            ll_alt = np.log(-np.expm1(-lam))[seg] - lam[seg] * (xt - xm)
        else:
            lam = 1.0 / excess
            ll_alt = np.log(lam)[seg] - lam[seg] * (xt - xm)
        params = {"lambda": lam}
    elif discrete:  # lognormal, truncated power law, stretched exponential on the integers
        ll_alt, params, boundary = discrete_alternative(
            alternative, z, seg, starts, nt, fit.xmin, alpha
        )
    elif alternative == "lognormal":
        z2bar = np.add.reduceat(z * z, starts) / nt
        e1, e2, boundary = fit_lognormal_tail(zbar, z2bar)
        a_part = tn_log_partition(e1, e2)
        ll_alt = e1[seg] * z + e2[seg] * z * z - a_part[seg] - np.log(xt)
        with np.errstate(divide="ignore"):
            sig = np.where(boundary, np.inf, np.sqrt(-0.5 / np.where(boundary, -1.0, e2)))
        mu = np.where(boundary, -np.inf, e1 * sig * sig + np.log(fit.xmin))
        params = {"mu": mu, "sigma": sig}
    elif alternative == "truncated_power_law":
        ybar = np.add.reduceat(y, starts) / nt
        a_t, mu_t, boundary = fit_tpl_tail(zbar, ybar)
        ll_alt = -a_t[seg] * z - mu_t[seg] * y - log_expint(a_t, mu_t)[seg] - np.log(xm)
        params = {"alpha": a_t, "lambda": mu_t / fit.xmin}
    else:  # stretched_exponential
        beta, log_k, boundary = fit_se_tail(z, starts, nt)
        bs = beta[seg]
        ll_alt = (
            np.log(beta)[seg]
            + log_k[seg]
            + (bs - 1.0) * z
            - np.exp(log_k[seg]) * special.expm1(bs * z)
            - np.log(xm)
        )
        with np.errstate(over="ignore"):
            lam = np.exp(log_k / beta) / fit.xmin
        params = {"beta": np.where(boundary, 0.0, beta), "lambda": np.where(boundary, np.nan, lam)}
    nested = alternative == "truncated_power_law"
    ll_alt = np.where(boundary[seg], ll_pl, ll_alt)
    diff = ll_pl - ll_alt
    r = np.add.reduceat(diff, starts)
    dbar = r / nt
    var = np.add.reduceat((diff - dbar[seg]) ** 2, starts) / nt
    sd = np.sqrt(var)
    same = boundary | (sd == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(same, 0.0, r / (np.sqrt(nt) * np.where(sd > 0, sd, 1.0)))
    r = np.where(boundary, 0.0, r)
    if nested:
        lr = 2.0 * np.abs(r)
        pval = stats.chi2.sf(lr, 1)
        if nested_pvalue == "half_chi2":
            pval = np.where(lr > 0, 0.5 * pval, 1.0)
    else:
        pval = special.erfc(np.abs(norm) / np.sqrt(2.0))
    pval = np.where(same, 1.0, pval)
    ll_pl_sum = np.add.reduceat(ll_pl, starts)
    if batch.exps.any():  # back from the rescaled units (x 2**-e) to x units
        shift = batch.exps * math.log(2.0)
        ll_pl_sum = ll_pl_sum - nt * shift  # a density in x is 2**-e times that in x 2**-e
        if "lambda" in params:  # 1/x units; beyond float64 (x below ~1e-300) it is inf
            with np.errstate(over="ignore"):
                params["lambda"] = batch.scaled(params["lambda"])
        if "mu" in params:
            params["mu"] = params["mu"] + shift  # ln x units
    shape = batch.shape
    return TailComparison(
        alternative=alternative,
        loglik_ratio=_out(r, shape),
        normalized_ratio=_out(norm, shape),
        pvalue=_out(pval, shape),
        nested=nested,
        boundary=_out(boundary, shape, bool),
        params={k: _out(np.asarray(v, dtype=np.float64), shape) for k, v in params.items()},
        xmin=_out(batch.unscaled(fit.xmin), shape),
        alpha=_out(fit.alpha, shape),
        n_tail=_out(fit.n_tail, shape, int),
        loglik_power_law=_out(ll_pl_sum, shape),
        loglik_alternative=_out(ll_pl_sum - r, shape),
    )
