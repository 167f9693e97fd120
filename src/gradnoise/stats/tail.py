"""Tail-index estimators: Mohammadi et al. (2015) block-sum estimator and Hill (1975).

Both return the raw estimate, never clipped: the Mohammadi estimator assumes i.i.d. SαS samples and
can exceed 2 (light tails, e.g. Gaussian data near 2) or be negative on finite samples; Hill
estimates the exponent a of P(|X| > x) ~ x^-a, which is alpha for stable laws with alpha < 2 and
has no fixed upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import DataError, InsufficientDataError
from ._common import StatResult, check_min_size
from ._dask import is_dask_array, map_columns
from ._stable_common import as_columns, column_chunks, rescale_columns, restore

__all__ = ["TailIndexResult", "simsekli_block_size", "tail_index"]

EPS = float(np.spacing(1))  # added inside the logs, as in Simsekli et al.'s code


@dataclass(frozen=True, repr=False)
class TailIndexResult(StatResult):
    """Tail-index estimates (raw: may exceed 2 or be negative; never clipped).

    Attributes:
        alpha: the estimate, per column (a float for 1-D input or ``pooled=True``).
        method: ``"mohammadi"`` or ``"hill"``.
        n: samples per estimate (K for Mohammadi; N = K*d when pooled).
        pooled: whether all coordinates were pooled row-major into one sample (Simsekli et al.).
        block_size: Mohammadi's block length m (K2); None for Hill.
        n_blocks: Mohammadi's number of blocks n = K/m (K1); None for Hill.
        k: Hill's number of upper order statistics; None for Mohammadi.
        stderr: Hill's asymptotic standard error alpha/sqrt(k); None for Mohammadi.
    """

    alpha: Any
    method: str
    n: int
    pooled: bool
    block_size: int | None = None
    n_blocks: int | None = None
    k: int | None = None
    stderr: Any = None


def simsekli_block_size(n: int) -> int:
    """Largest divisor m of ``n`` with m <= sqrt(n): the block size of Simsekli et al. (2019).

    Returns 1 when ``n`` is prime (the estimator is then undefined: ln m = 0)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    best = 1
    for i in range(1, math.isqrt(n) + 1):
        if n % i == 0:
            best = i
    return best


def _check_block(n: int, block_size: int | None, what: str) -> int:
    if block_size is None:
        m = simsekli_block_size(n)
        if m < 2:
            raise InsufficientDataError(
                f"{what}: K = {n} samples has no divisor m with 2 <= m <= sqrt(K) "
                f"({'K is prime' if n > 1 else 'K = 1'}), so the Mohammadi estimator is undefined "
                "(ln m = 0). Pass block_size=m with K divisible by m, or use K - 1 samples "
                "(x[:-1]) explicitly"
            )
        return m
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size must be an int, got {block_size!r}")
    m = int(block_size)
    if m < 2:
        raise ValueError(f"block_size must be >= 2 (ln m = 0 at m = 1), got {m}")
    if n % m:
        raise ValueError(
            f"{what}: block_size={m} does not divide K = {n} samples (K = K1 * K2 is required; "
            f"K mod m = {n % m}); trim the sample explicitly or pick a divisor of K"
        )
    if n // m < 2:
        raise ValueError(
            f"{what}: block_size={m} leaves {n // m} block(s) of K = {n}; need at least 2"
        )
    return m


def _mohammadi(cols: np.ndarray, m: int, eps: float) -> np.ndarray:
    """1/alpha = (mean_i log|Y_i| - mean_k log|X_k|) / log m, Y_i = sum of block i (per column).

    Columns of extreme magnitude are rescaled by 2**-e together with ``eps`` (the estimate is
    unchanged: ``log(|x| + eps) = e log 2 + log(|x| 2**-e + eps 2**-e)`` and the ``e log 2``
    cancel), so block sums of values near 1e308 do not overflow."""
    n, d = cols.shape
    nb = n // m
    out = np.empty(d)
    cols, exps = rescale_columns(cols)
    for sl in column_chunks(cols):
        block = cols[:, sl].astype(np.float64, copy=False)
        eps_c = np.ldexp(eps, -exps[sl])
        y = block.reshape(nb, m, -1).sum(axis=1)
        if eps == 0:
            zero = ~np.all(block != 0, axis=0) | ~np.all(y != 0, axis=0)
            if zero.any():
                raise DataError(
                    f"eps=0 but {int(zero.sum())} column(s) of x (e.g. "
                    f"{(np.flatnonzero(zero)[:5] + (sl.start or 0)).tolist()}) hold exact zeros "
                    "(or block sums equal to 0), whose logarithm is -inf; pass eps > 0 (the "
                    "default adds np.spacing(1) inside the logs, as Simsekli et al.)"
                )
        log_x = np.log(np.abs(block) + eps_c).mean(axis=0)
        log_y = np.log(np.abs(y) + eps_c).mean(axis=0)
        if eps > 0:
            with np.errstate(divide="ignore"):  # eps_c underflows to 0 beside |x| ~ 1e308
                swamped = log_x - np.log(eps_c) < math.log(2.0)  # geometric mean |x| < eps
            if swamped.any():
                raise DataError(
                    f"eps = {eps:.3g} is as large as the typical |x| in {int(swamped.sum())} "
                    f"column(s) of x (e.g. {(np.flatnonzero(swamped)[:5] + (sl.start or 0)).tolist()}"
                    "): the estimate would measure eps, not x. Pass eps=0 (exact for any "
                    "magnitude when x has no zeros), a smaller eps, or rescale x"
                )
        inv = (log_y - log_x) / math.log(m)
        with np.errstate(divide="ignore"):
            out[sl] = 1.0 / inv
    return out


def _hill(cols: np.ndarray, k: int) -> np.ndarray:
    """Hill (1975): alpha = k / sum_{i<=k} log(X_(n-i+1) / X_(n-k)) on |x| (per column)."""
    n, d = cols.shape
    out = np.empty(d)
    for sl in column_chunks(cols):
        a = np.abs(np.ascontiguousarray(cols[:, sl].T))  # (m, n)
        part = np.partition(a, n - k - 1, axis=1)
        thresh = part[:, n - k - 1].astype(np.float64)
        if (thresh <= 0).any():
            raise ValueError(
                f"Hill estimator: the (k+1)-th largest |x| is 0 in "
                f"{int((thresh <= 0).sum())} column(s); too many zeros for k={k}"
            )
        top = part[:, n - k :].astype(np.float64)
        denom = (np.log(top) - np.log(thresh)[:, None]).sum(axis=1)
        if (denom <= 0).any():
            bad = np.flatnonzero(denom <= 0)[:5] + (sl.start or 0)
            raise InsufficientDataError(
                f"Hill estimator: the k+1 = {k + 1} largest |x| are all equal in "
                f"{int((denom <= 0).sum())} column(s) (e.g. {bad.tolist()}; constant or heavily "
                "tied values), so the estimate is infinite there; use a larger k or drop those "
                "columns"
            )
        out[sl] = k / denom
    return out


def tail_index(
    x: Any,
    *,
    method: Literal["mohammadi", "hill"] = "mohammadi",
    axis: int = 0,
    pooled: bool = False,
    block_size: int | None = None,
    k: int | float | None = None,
    eps: float = EPS,
) -> TailIndexResult:
    """Tail index of each column of ``x`` (samples along ``axis``), or of all values pooled.

    ``method="mohammadi"`` (Mohammadi, Mohammadpour & Ogata 2015, Metrika 78, Cor. 2.4; as in
    Simsekli, Sagun & Gurbuzbalaban 2019): split the K samples into K1 = K/m consecutive blocks
    of K2 = m and sum each block, Y_i = sum_{j<=m} X_{(i-1)m+j}; since a sum of m i.i.d. SαS
    variables is m^(1/alpha) X in law,

        1/alpha = (1/ln m) [ (1/K1) sum_i ln(|Y_i| + eps) - (1/K) sum_k ln(|X_k| + eps) ].

    ``block_size=None`` takes Simsekli's m: the largest divisor of K not above sqrt(K). K must be
    divisible by m, with m >= 2 and K1 >= 2; otherwise a clear error is raised (a prime K has
    no usable m). ``eps`` (``np.spacing(1)``) is added inside the logs as in the original code.

    ``pooled=True`` reproduces Simsekli et al.'s convention: every coordinate of every sample is
    flattened row-major (sample by sample, the coordinates of one sample contiguous, as
    ``(grads - mean_grad).view(-1, 1)``) into one sample of N = K*d values, so each block sums m
    *adjacent coordinates*, mostly of the same noise vector. Pooling coordinates with different
    scales makes heavy tails out of Gaussian coordinates (methods.md §8); per-coordinate
    estimates (the default) are a different statistic.

    ``method="hill"``: Hill (1975) on |x| with the k largest values,
    ``alpha = k / sum_{i<=k} ln(|X|_(n-i+1) / |X|_(n-k))``, stderr alpha/sqrt(k). ``k=None``
    takes k = round(sqrt(n)) (a common rule of thumb; the estimate depends on k: for stable laws
    with alpha near 2 the asymptotic tail starts far out and Hill overestimates alpha); a float
    in (0, 1) is a fraction of n.

    Example:
        >>> from gradnoise.stats.stable import sample_stable
        >>> x = sample_stable(1.5, size=(100_000, 3), rng=0)
        >>> tail_index(x).alpha.round(1).tolist()
        [1.5, 1.5, 1.5]
    """
    if is_dask_array(x):
        if pooled:
            raise ValueError(
                "pooled=True mixes the coordinates of every sample into one sample; it has no "
                "column-blockwise form: pass a numpy array (or compute the dask array first)"
            )
        return map_columns(
            tail_index,
            x,
            axis,
            {"method": method, "block_size": block_size, "k": k, "eps": eps},
        )
    if method not in ("mohammadi", "hill"):
        raise ValueError(f"method must be 'mohammadi' or 'hill', got {method!r}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative number, got {eps}")
    cols, out_shape = as_columns(x, axis)
    if pooled:
        cols = cols.reshape(-1, 1)  # row-major: sample by sample, coordinates contiguous
        out_shape = ()
    n, d = cols.shape
    if method == "mohammadi":
        if k is not None:
            raise ValueError("k is a Hill-estimator argument; use block_size for 'mohammadi'")
        check_min_size(n, 4, "tail_index(method='mohammadi')")
        what = "pooled sample" if pooled else "tail_index(method='mohammadi')"
        m = _check_block(n, block_size, what)
        const = np.zeros(d, dtype=bool)
        for sl in column_chunks(cols):
            const[sl] = np.all(cols[:, sl] == cols[:1, sl], axis=0)
        if const.any():
            raise InsufficientDataError(
                f"{int(const.sum())} column(s) of x are constant (all values equal, e.g. columns "
                f"{np.flatnonzero(const)[:5].tolist()}); their tail index is undefined (the "
                "block-sum estimate would be 1 for any non-zero constant). Drop them explicitly"
            )
        alpha = _mohammadi(cols, m, eps)
        return TailIndexResult(
            alpha=restore(alpha, out_shape),
            method=method,
            n=n,
            pooled=pooled,
            block_size=m,
            n_blocks=n // m,
        )
    if block_size is not None:
        raise ValueError("block_size is a Mohammadi-estimator argument; use k for 'hill'")
    check_min_size(n, 10, "tail_index(method='hill')")
    if k is None:
        kk = round(math.sqrt(n))
    elif isinstance(k, float) and not isinstance(k, bool):
        if not 0 < k < 1:
            raise ValueError(f"a float k is a fraction of n and must lie in (0, 1), got {k}")
        kk = round(k * n)
    elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        kk = int(k)
    else:
        raise TypeError(f"k must be an int, a float fraction or None, got {k!r}")
    if not 2 <= kk <= n - 1:
        raise ValueError(f"Hill's k must lie in [2, n - 1] = [2, {n - 1}], got {kk}")
    alpha = _hill(cols, kk)
    return TailIndexResult(
        alpha=restore(alpha, out_shape),
        method=method,
        n=n,
        pooled=pooled,
        k=kk,
        stderr=restore(alpha / math.sqrt(kk), out_shape),
    )
