"""Gradient variance, normalized gradient variance (NGV) and gradient signal-to-noise ratio (GSNR).

Torch-free (numpy only); torch tensors are accepted through ``np.asarray``.

Two kinds of input, never to be confused (``../shared/research/methods.md`` §0, §5, §8 item 8):

* **draws** (``batch_size=None``): ``samples[k]`` is the k-th of K independent draws of a gradient
  *estimator* at fixed parameters (e.g. K minibatch gradients of batch size B from
  :func:`gradnoise.minibatch_grads`). The variance reported is that of the estimator itself: for
  minibatch gradients it already carries the ``1/B`` scale.
* **per-example gradients** (``batch_size=B``): ``samples[i]`` is example i's own (unscaled)
  gradient (:func:`gradnoise.per_sample_grads`). The variance reported is converted to that of the
  **mean of a minibatch of B examples** drawn uniformly from a population of N examples::

      with replacement:     Var_B = sigma^2 / B              = s^2 (N - 1) / (N B)
      without replacement:  Var_B = sigma^2 (N - B) / (B (N - 1)) = s^2 (N - B) / (N B)

  where ``sigma^2 = (1/N) sum_i (g_i - G)^2`` is the population variance of the N per-example
  gradients and ``s^2`` the ``1/(n-1)`` sample variance of the n given rows. The right-hand forms
  are exact when the rows are the whole population (n = N, the default) and unbiased when they
  are a simple random sample of it (pass ``population_size=N``); ``population_size=inf`` means an
  infinite population (``Var_B = s^2 / B``).

Scaling pitfall: the per-example gradient is the gradient of the example's *own* loss. Tools that
differentiate a *mean*-reduced batch loss get per-example gradients scaled by ``1/B`` and report
variances ``B^2`` too small (and a ``1/N``-scaled "individual gradient" over a dataset of N is
``N^2`` too small); undo that scaling before calling these functions.

Definitions follow Faghri, Duvenaud, Fleet & Ba, "A Study of Gradient Variance in Deep Learning"
(arXiv 2007.04532; official code ``estim/gestim.py`` ``get_Ege_var``) and, for the GSNR, Liu et
al., "Understanding Why Neural Networks Generalize Well Through GSNR of Parameters" (ICLR 2020).

Out of core: ``samples`` may be a 2-D dask array (e.g. ``open_run(path).to_dask().grads``). The
per-coordinate moments are then computed blockwise over blocks of whole columns on the active
Dask scheduler and the sums over coordinates on the client: the results equal the in-memory ones.
In memory the same kernel runs over blocks of columns of about ``BLOCK_BYTES`` in float64, so a
float32 ``[K, P]`` input is never copied whole to float64 (a 24M-parameter model's 4 draws would
need 0.7 GiB per copy); every per-coordinate value is the same whatever the block width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError, InsufficientDataError
from .selection import ParamSelection
from .stats._common import (
    StatResult,
    as_float_array,
    check_finite,
    check_min_size,
    pow2_exponents,
)
from .stats._dask import is_dask_array, map_columns

__all__ = [
    "GSNRResult",
    "NGVResult",
    "VarianceResult",
    "gradient_variance",
    "gsnr",
    "normalized_gradient_variance",
    "stratified_minibatch_variance",
]

GroupsArg = ParamSelection | Sequence[Any] | np.ndarray | Mapping[str, Any] | None

#: float64 bytes of one block of columns of an in-memory ``[K, P]`` input (see module docstring)
BLOCK_BYTES = 32 * 2**20


# ----------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True, repr=False)
class VarianceResult(StatResult):
    """Per-coordinate variance of a gradient estimator, summed and averaged.

    Attributes:
        total: ``sum_j Var_j``, the trace of the estimator's covariance (expected squared distance
            of one estimate from its mean).
        mean: ``total / P``, the average variance per coordinate (Faghri's ``var_e``).
        per_coordinate: ``Var_j``, shape ``[P]``.
        layers: per group (parameter/layer) the sum of ``Var_j`` over its coordinates.
        layer_means: per group the average of ``Var_j`` over its coordinates.
        mean_sq_norm: ``||m||^2`` of the mean used (the sample mean unless one was given).
        num_samples: K draws, or n per-example gradients.
        scale: a sentence saying what the variance is the variance *of*.
        batch_size, population_size, replace: the minibatch conversion (None for draws).
    """

    total: float
    mean: float
    per_coordinate: np.ndarray
    layers: dict[str, float]
    layer_means: dict[str, float]
    mean_sq_norm: float
    num_samples: int
    scale: str
    batch_size: int | None = None
    population_size: float | None = None
    replace: bool | None = None


@dataclass(frozen=True, repr=False)
class NGVResult(StatResult):
    """Normalized gradient variance (Faghri et al. 2020): coordinate-wise ratio, then averaged.

    Attributes:
        value: ``(1/P) sum_j Var_j / E[g_j^2]``, in ``[0, 1]`` when the mean is the sample mean.
        per_coordinate: ``Var_j / E[g_j^2]``, shape ``[P]`` (0 where every draw is exactly 0).
        layers: per group the average of ``per_coordinate`` over its coordinates.
        num_degenerate: coordinates whose draws are all exactly zero (counted as 0, as the
            official code's ``+1e-7`` does).
        num_samples, scale, batch_size: as in :class:`VarianceResult`.
    """

    value: float
    per_coordinate: np.ndarray
    layers: dict[str, float]
    num_degenerate: int
    num_samples: int
    scale: str
    batch_size: int | None = None


@dataclass(frozen=True, repr=False)
class GSNRResult(StatResult):
    """Gradient signal-to-noise ratio ``r_j = m_j^2 / Var_j`` (Liu et al. 2020).

    Attributes:
        mean: average of ``r_j`` over the coordinates with ``Var_j > 0``.
        median: median of ``r_j`` over the same coordinates.
        aggregate: ``||m||^2 / sum_j Var_j`` (one ratio for the whole vector).
        per_coordinate: ``r_j`` (``inf`` where ``Var_j = 0 < m_j^2``, ``nan`` where both are 0).
        layers: per group the average of finite ``r_j`` (``nan`` if none is finite).
        layer_aggregates: per group ``||m_group||^2 / sum_{j in group} Var_j``.
        num_degenerate: coordinates with ``Var_j = 0`` (left out of ``mean``/``median``).
        num_samples, scale, batch_size: as in :class:`VarianceResult`.
    """

    mean: float
    median: float
    aggregate: float
    per_coordinate: np.ndarray
    layers: dict[str, float]
    layer_aggregates: dict[str, float]
    num_degenerate: int
    num_samples: int
    scale: str
    batch_size: int | None = None


# ----------------------------------------------------------------------------------------------
# input handling


def _as_samples(
    samples: Any, name: str = "samples", *, convert: bool = True, checked: bool = False
) -> np.ndarray:
    """``samples`` checked (2-D, numeric, columns, finite unless ``checked`` says the caller
    counted that already); in float64 with ``convert``, else in its own dtype (the blockwise
    path converts one block at a time)."""
    x = as_float_array(samples, name) if convert else np.asarray(samples)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D [K, P] array (rows: draws or examples, columns: gradient "
            f"coordinates), got shape {x.shape}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    if checked:
        pass
    elif convert:
        check_finite(x, name)
    else:  # counted block by block: the whole count, without a whole-array temporary
        width = max(1, BLOCK_BYTES // max(int(x.shape[0]), 1))
        bad = sum(
            int((~np.isfinite(x[:, c0 : c0 + width])).sum()) for c0 in range(0, x.shape[1], width)
        )
        if bad:
            check_finite(x, name)  # raises, naming the count
    return x


def _as_mean(mean: Any, p: int) -> np.ndarray:
    m = as_float_array(mean, "mean").reshape(-1)
    if m.shape[0] != p:
        raise ValueError(f"mean must have {p} entries (one per column), got {m.shape[0]}")
    check_finite(m, "mean")
    return m


#: values summed at a time by :func:`_sequential_sum` (a float64 copy of this many is its memory)
SUM_CHUNK = 2**20


def _sequential_sum(values: np.ndarray) -> float:
    """``((v_0 + v_1) + v_2) + ...`` in float64, the order of ``np.bincount(.., weights=)``,
    over chunks of ``SUM_CHUNK`` values (``cumsum`` is sequential; the carry enters first)."""
    total = 0.0
    for c0 in range(0, values.shape[0], SUM_CHUNK):
        chunk = np.empty(min(SUM_CHUNK, values.shape[0] - c0) + 1)
        chunk[0] = total
        chunk[1:] = values[c0 : c0 + SUM_CHUNK]
        total = float(np.cumsum(chunk)[-1])
    return total


@dataclass(frozen=True)
class _Grouping:
    """Groups of columns: contiguous ``spans`` (a ParamSelection's parameters, a mapping of
    slices that tile the columns: no per-column array), else an integer ``codes`` per column."""

    names: list[str]
    spans: list[slice] | None = None
    codes: np.ndarray | None = None

    def sums(
        self, values: np.ndarray, where: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per group: the sum of ``values`` over its columns (those where ``where`` is True, if
        given; ``values`` then holds only those columns, in column order) and their count."""
        if self.spans is None:
            assert self.codes is not None
            codes = self.codes if where is None else self.codes[where]
            return (
                np.bincount(codes, weights=values, minlength=len(self.names)),
                np.bincount(codes, minlength=len(self.names)),
            )
        counts = np.array(
            [c.stop - c.start if where is None else int(where[c].sum()) for c in self.spans],
            dtype=np.int64,
        )
        first = np.array([c.start for c in self.spans], dtype=np.int64)
        if where is not None:  # where a span's columns start among the kept ones
            order = np.argsort(first, kind="stable")
            first[order] = np.concatenate([[0], np.cumsum(counts[order])[:-1]])
        sums = np.array(
            [_sequential_sum(values[a : a + c]) for a, c in zip(first, counts, strict=True)]
        )
        return sums, counts


def _grouping(groups: GroupsArg, p: int) -> _Grouping | None:
    """The columns of each group, or None for no grouping."""
    if groups is None:
        return None
    if isinstance(groups, ParamSelection):
        if groups.num_columns != p:
            raise ValueError(
                f"the ParamSelection has {groups.num_columns} columns but samples have {p}"
            )
        offsets = groups.offsets
        spans = [slice(int(a), int(b)) for a, b in itertools.pairwise(offsets)]
        return _Grouping(list(groups.names), spans=spans)
    if isinstance(groups, Mapping):
        spans = _tiling_spans(groups, p)
        if spans is not None:
            return _Grouping([str(name) for name in groups], spans=spans)
        codes = np.full(p, -1, dtype=np.int64)
        names = []
        for k, (name, cols) in enumerate(groups.items()):
            idx = cols if isinstance(cols, slice) else np.asarray(cols)
            if isinstance(idx, np.ndarray) and idx.size and (idx.min() < -p or idx.max() >= p):
                raise ValueError(f"group {name!r} has columns outside [0, {p})")
            if np.any(codes[idx] >= 0):
                raise ValueError(f"group {name!r} overlaps another group")
            codes[idx] = k
            names.append(str(name))
        if np.any(codes < 0):
            raise ValueError(
                f"{int((codes < 0).sum())} column(s) belong to no group; every column needs one"
            )
        return _Grouping(names, codes=codes)
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != p:
        raise ValueError(
            f"groups must be a ParamSelection, a mapping name -> columns, or one label per column "
            f"({p}), got shape {labels.shape}"
        )
    uniq, codes = np.unique(labels, return_inverse=True)
    return _Grouping([str(u) for u in uniq], codes=codes.astype(np.int64))


def _tiling_spans(groups: Mapping[str, Any], p: int) -> list[slice] | None:
    """The groups' slices normalised to ``[0, p)``, when every group is a slice of step 1 and
    together they cover each column once; None otherwise (per-column codes then check and
    report what is wrong)."""
    spans = []
    for cols in groups.values():
        if not isinstance(cols, slice):
            return None
        start, stop, step = cols.indices(p)
        if step != 1:
            return None
        spans.append(slice(start, max(start, stop)))
    at = 0
    for cols in sorted((c for c in spans if c.stop > c.start), key=lambda c: c.start):
        if cols.start != at:
            return None
        at = cols.stop
    return spans if at == p else None


def _group_sums(
    values: np.ndarray, grouping: _Grouping | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Per group: (sum, mean) of ``values``; ``{}`` without grouping."""
    if grouping is None:
        return {}, {}
    sums, counts = grouping.sums(values)
    names = grouping.names
    return (
        {n: float(s) for n, s in zip(names, sums, strict=True)},
        {n: float(s / c) if c else math.nan for n, s, c in zip(names, sums, counts, strict=True)},
    )


def _minibatch_factor(
    n: int, batch_size: int, replace: bool, population_size: float | None
) -> tuple[float, float]:
    """``(factor, N)`` such that ``Var_B = factor * s^2`` (s^2 the 1/(n-1) sample variance)."""
    big_n = float(n) if population_size is None else float(population_size)
    if batch_size != int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not big_n >= n:
        raise ValueError(
            f"population_size ({population_size}) cannot be smaller than the number of "
            f"per-example gradients given ({n})"
        )
    if math.isinf(big_n):
        return 1.0 / batch_size, big_n
    if not replace and batch_size > big_n:
        raise InsufficientDataError(
            f"a minibatch of {batch_size} examples without replacement needs at least "
            f"{batch_size} examples, the population has {int(big_n)}"
        )
    if replace:
        return (big_n - 1.0) / (big_n * batch_size), big_n
    return (big_n - batch_size) / (big_n * batch_size), big_n


def _scale_text(batch_size: int | None, replace: bool, big_n: float | None) -> str:
    if batch_size is None:
        return "variance of one draw of the estimator (rows are estimator draws)"
    how = "with replacement" if replace else "without replacement"
    pop = "an infinite population" if big_n is None or math.isinf(big_n) else f"N={int(big_n)}"
    return f"variance of the mean of a minibatch of B={batch_size} examples drawn {how} from {pop}"


@dataclass
class _Moments:
    """Samples, mean and per-coordinate estimator variance, all of coordinate j scaled by
    ``2**-e[j]`` (exact; ``e`` is 0 except for extreme magnitudes, see ``pow2_exponents``)."""

    x: np.ndarray
    m: np.ndarray
    v: np.ndarray
    big_n: float | None
    e: np.ndarray
    maxabs: float  # largest |value| of the samples (and given mean), unscaled
    name: str = "samples"
    second: np.ndarray | None = None  # (1/K) sum_k x_kj^2 (rescaled), when computed blockwise

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def second_moment(self) -> np.ndarray:
        """``(1/K) sum_k x_kj^2`` per coordinate (rescaled units)."""
        return (self.x * self.x).mean(0) if self.second is None else self.second

    def unscaled(self, values: np.ndarray, power: int, what: str) -> np.ndarray:
        """``values * 2**(power e)`` (undo the rescaling), refusing results beyond float64."""
        with np.errstate(over="ignore"):
            out = np.ldexp(values, power * self.e) if self.e.any() else values
        self.check(out, what)
        return out

    def totals(
        self, groups: GroupsArg
    ) -> tuple[np.ndarray, dict[str, float], dict[str, float], float, float]:
        """``(Var_j, per-group sums, per-group means, sum_j Var_j, ||m||^2)`` in the units of
        the samples (overflow refused)."""
        v = self.unscaled(self.v, 2, "the variance of a coordinate")
        m = self.unscaled(self.m, 1, "the mean")
        with np.errstate(over="ignore"):
            sums, means = _group_sums(v, _grouping(groups, v.shape[0]))
            total = float(v.sum())
            mean_sq_norm = float(m @ m)
        self.check([total, *sums.values()], "the summed variance")
        self.check(mean_sq_norm, "the squared norm of the mean")
        return v, sums, means, total, mean_sq_norm

    def check(self, values: Any, what: str) -> None:
        if not np.all(np.isfinite(values)):
            raise DataError(
                f"{what} overflows float64: {self.name} holds values up to {self.maxabs:.3g} and "
                f"a variance is of the order of their square; divide {self.name} by a constant "
                "c first (variances scale by 1/c^2; NGV and GSNR do not change)"
            )


def _rescaled(
    x: np.ndarray, mean: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, float]:
    """Coordinates of magnitude ~1e300 or ~1e-300 scaled by a power of two (exact), so that
    squares and sums neither overflow nor underflow; ratios (NGV, GSNR) are then exact and
    variances are scaled back (or refused, if they overflow float64)."""
    mx = np.maximum(x.max(0), -x.min(0))
    if mean is not None:
        mx = np.maximum(mx, np.abs(mean))
    e = pow2_exponents(mx)
    if e.any():
        x = np.ldexp(x, -e)
        mean = None if mean is None else np.ldexp(mean, -e)
    return x, mean, e, float(mx.max())


def _moments(
    samples: Any,
    *,
    ddof: int,
    mean: Any,
    batch_size: int | None,
    replace: bool,
    population_size: float | None,
    second: bool = False,
) -> _Moments:
    """Samples, the mean used and the per-coordinate variance of the estimator (rescaled);
    ``second``: also the per-coordinate second moment (in memory it is kept only if asked)."""
    if is_dask_array(samples):
        return _dask_moments(
            samples,
            ddof=ddof,
            mean=mean,
            batch_size=batch_size,
            replace=replace,
            population_size=population_size,
        )
    x = _as_samples(samples, convert=False)
    _check_moment_options(
        int(x.shape[0]),
        ddof=ddof,
        mean=mean,
        batch_size=batch_size,
        population_size=population_size,
    )
    given = None if mean is None else _as_mean(mean, x.shape[1])
    options: dict[str, Any] = {
        "ddof": ddof,
        "batch_size": batch_size,
        "replace": replace,
        "population_size": population_size,
    }
    k, p = int(x.shape[0]), int(x.shape[1])
    width = max(1, BLOCK_BYTES // (8 * max(k, 1)))
    m, v = np.empty(p), np.empty(p)
    moment2 = np.empty(p) if second else None
    e = np.zeros(p, dtype=np.int16)  # float64 exponents lie in [-1074, 1024]: 2 bytes a column
    big_n, top = None, 0.0 if given is None else float(np.abs(given).max())
    for c0 in range(0, p, width):
        cols = slice(c0, c0 + width)
        block = _column_moments(
            x[:, cols], mean=None if given is None else given[cols], checked=True, **options
        )
        m[cols], v[cols], e[cols] = block.m, block.v, block.e
        if moment2 is not None:
            moment2[cols] = block.second
        big_n, top = block.big_n, max(top, float(block.maxabs.max()))
    return _Moments(_Shape(k, p), m, v, big_n, e, top, second=moment2)  # type: ignore[arg-type]


def _check_moment_options(
    k: int, *, ddof: int, mean: Any, batch_size: int | None, population_size: float | None
) -> None:
    """Refuse option combinations (and too few rows) before any column is computed."""
    if batch_size is None:
        if population_size is not None:
            raise ValueError("population_size only applies to per-example gradients (batch_size=B)")
        if ddof != int(ddof) or ddof < 0:
            raise ValueError(f"ddof must be a non-negative integer, got {ddof}")
        check_min_size(k, int(ddof) + 1, f"a variance with ddof={ddof}")
        if mean is None and k < 2:
            raise InsufficientDataError(
                "samples has a single draw: its deviation from its own mean is 0 by "
                "construction, so the variance (and NGV, GSNR) is undefined; pass at least 2 "
                "draws, or an independent mean= (e.g. the full-batch gradient)"
            )
        return
    if ddof != 1:
        raise ValueError(
            "ddof only applies to estimator draws; per-example gradients (batch_size=B) always use "
            "the 1/(n-1) sample variance, which makes the minibatch conversion exact (n = N) or "
            "unbiased (simple random sample of N)"
        )
    if mean is not None:
        raise ValueError("mean= only applies to estimator draws (batch_size=None)")
    check_min_size(k, 2, "a per-example gradient variance")


def _block_moments(
    samples: Any,
    *,
    ddof: int,
    mean: Any,
    batch_size: int | None,
    replace: bool,
    population_size: float | None,
    checked: bool = False,
) -> _Moments:
    """:func:`_moments` of one block of columns, all in float64 (the kernel of both paths;
    ``checked``: the in-memory path counted NaN/Inf over all columns already)."""
    x = _as_samples(samples, checked=checked)
    k = x.shape[0]
    _check_moment_options(
        k, ddof=ddof, mean=mean, batch_size=batch_size, population_size=population_size
    )
    if batch_size is None:
        given = None if mean is None else _as_mean(mean, x.shape[1])
        x, given, e, mx = _rescaled(x, given)
        m = x.mean(0) if given is None else given
        v = ((x - m) ** 2).sum(0) / (k - ddof)
        return _Moments(x, m, v, None, e, mx)
    factor, big_n = _minibatch_factor(k, int(batch_size), replace, population_size)
    x, _, e, mx = _rescaled(x, None)
    m = x.mean(0)
    v = x.var(0, ddof=1) * factor
    return _Moments(x, m, v, big_n, e, mx)


def _from_columns(found: _ColumnMoments, mean: np.ndarray | None) -> _Moments:
    """The moments of all columns from their per-column kernel results."""
    maxabs = found.maxabs
    if mean is not None:  # the largest magnitude also covers the given mean, as in one block
        maxabs = np.maximum(maxabs, np.abs(mean))
    return _Moments(
        x=_Shape(found.num_samples, found.m.shape[0]),  # type: ignore[arg-type]
        m=found.m,
        v=found.v,
        big_n=found.big_n,
        e=found.e,
        maxabs=float(maxabs.max()),
        second=found.second,
    )


@dataclass(frozen=True, repr=False)
class _ColumnMoments(StatResult):
    """Per-column moments of one block of columns (the Dask kernel's result)."""

    m: np.ndarray
    v: np.ndarray
    e: np.ndarray
    maxabs: np.ndarray
    second: np.ndarray
    num_samples: int
    big_n: float | None


def _column_moments(block: np.ndarray, axis: int = 0, **options: Any) -> _ColumnMoments:
    mo = _block_moments(block, **options)
    mx = np.maximum(mo.x.max(0), -mo.x.min(0))  # rescaled; the unscaled max is mx * 2**e
    return _ColumnMoments(
        m=mo.m,
        v=mo.v,
        e=mo.e,
        maxabs=np.ldexp(mx, mo.e) if mo.e.any() else mx,
        second=(mo.x * mo.x).mean(0),
        num_samples=mo.num_samples,
        big_n=mo.big_n,
    )


def _dask_moments(samples: Any, *, mean: Any, **options: Any) -> _Moments:
    """:func:`_moments` of a ``[K, P]`` dask array, blockwise over column blocks: every
    per-coordinate quantity is computed from its own column alone, so it equals the in-memory
    one; the totals over coordinates are then summed here, as in memory."""
    if samples.ndim != 2:
        raise ValueError(
            "samples must be a 2-D [K, P] array (rows: draws or examples, columns: gradient "
            f"coordinates), got shape {samples.shape}"
        )
    if mean is not None:
        mean = _as_mean(mean, samples.shape[1])
    found = map_columns(
        _column_moments, samples, 0, {**options, "mean": mean}, per_column=("mean",)
    )
    return _from_columns(found, mean)


class _Shape:
    """Stands for the samples of a dask computation where only their shape is used."""

    def __init__(self, rows: int, cols: int) -> None:
        self.shape = (rows, cols)


# ----------------------------------------------------------------------------------------------
# public functions


def gradient_variance(
    samples: Any,
    *,
    ddof: int = 1,
    mean: Any = None,
    groups: GroupsArg = None,
    batch_size: int | None = None,
    replace: bool = True,
    population_size: float | None = None,
) -> VarianceResult:
    """Per-coordinate variance of a gradient estimator, its trace, its mean, and per layer.

    Draws (``batch_size=None``)::

        Var_j = 1/(K - ddof) * sum_k (g_kj - m_j)^2,     m = (1/K) sum_k g_k  (or ``mean``)

    Faghri et al.'s ``var_e`` is ``.mean`` with ``mean=`` the average of an *independent* set of
    draws and ``ddof=0`` (their code estimates the mean from T draws and the variance from T fresh
    ones). Per-example gradients (``batch_size=B``): the variance of a size-B minibatch mean, see
    the module docstring (``replace``, ``population_size``).

    Args:
        samples: ``[K, P]`` estimator draws, or ``[n, P]`` per-example gradients.
        ddof: divisor ``K - ddof`` for draws (1: unbiased with the sample mean).
        mean: optional known/independent mean ``[P]`` (draws only).
        groups: split the columns per layer: a :class:`~gradnoise.selection.ParamSelection`
            (per parameter), a mapping ``name -> columns`` (slice or indices), or one label per
            column.
        batch_size: B, marks ``samples`` as per-example gradients (see module docstring).
        replace: minibatches drawn with (True) or without (False) replacement.
        population_size: N when the rows are a random sample of N examples (default: the rows
            are the whole population); ``math.inf`` for an infinite population.

    Example:
        >>> import numpy as np
        >>> g = np.array([[1.0, 0.0], [3.0, 2.0]])
        >>> gradient_variance(g).per_coordinate.tolist()
        [2.0, 2.0]
        >>> gradient_variance(g, batch_size=2, replace=False).total  # B = N: no variance left
        0.0
    """
    mo = _moments(
        samples,
        ddof=ddof,
        mean=mean,
        batch_size=batch_size,
        replace=replace,
        population_size=population_size,
    )
    v, sums, means, total, mean_sq_norm = mo.totals(groups)
    return VarianceResult(
        total=total,
        mean=total / v.shape[0],
        per_coordinate=v,
        layers=sums,
        layer_means=means,
        mean_sq_norm=mean_sq_norm,
        num_samples=mo.num_samples,
        scale=_scale_text(batch_size, replace, mo.big_n),
        batch_size=None if batch_size is None else int(batch_size),
        population_size=mo.big_n,
        replace=None if batch_size is None else bool(replace),
    )


def normalized_gradient_variance(
    samples: Any,
    *,
    mean: Any = None,
    eps: float = 0.0,
    groups: GroupsArg = None,
    batch_size: int | None = None,
    replace: bool = True,
    population_size: float | None = None,
) -> NGVResult:
    """Normalized gradient variance (NGV) of Faghri et al. (2020), per coordinate then averaged.

    Draws (``batch_size=None``), as in the official ``get_Ege_var``::

        NGV = (1/P) sum_j  sum_k (g_kj - m_j)^2 / (sum_k g_kj^2 + K eps)

    i.e. the coordinate's variance (divisor K, deviations from ``m``) over its second moment
    ``(1/K) sum_k g_kj^2``, then the **average of the ratios** over coordinates (not a ratio of
    sums). ``m`` is the sample mean of the same draws unless ``mean`` is given; the official code
    uses the mean of T *independent* draws (pass it as ``mean``) and adds ``1e-7`` to the *sum*
    over its T draws (``eps = 1e-7 / T`` here). With the sample mean,
    ``NGV_j = Var_j / (Var_j + m_j^2)`` lies in ``[0, 1]``.

    Per-example gradients (``batch_size=B``): ``NGV_j = Var_B,j / (Var_B,j + G_j^2 + eps)`` with
    ``Var_B`` the minibatch-mean variance of :func:`gradient_variance` and ``G`` the row mean, i.e.
    the NGV of the size-B minibatch estimator.

    Coordinates whose second moment is exactly 0 (all draws 0) count as 0, like the official
    code; their number is reported. A non-zero ``mean`` on such a coordinate is an error (the
    ratio would be infinite) unless ``eps > 0``.
    """
    if not eps >= 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    mo = _moments(
        samples,
        ddof=0 if batch_size is None else 1,
        mean=mean,
        batch_size=batch_size,
        replace=replace,
        population_size=population_size,
        second=batch_size is None,
    )
    x, m, v, big_n = mo.x, mo.m, mo.v, mo.big_n
    denom = mo.second_moment() if batch_size is None else v + m * m  # this call's own array
    # the ratio is scale-free: on rescaled coordinates eps is rescaled with them
    with np.errstate(over="ignore", under="ignore"):
        denom += np.ldexp(eps, -2 * mo.e) if mo.e.any() else eps
    degenerate = denom == 0
    if np.any(degenerate & (v > 0)):
        bad = int((degenerate & (v > 0)).sum())
        raise ValueError(
            f"{bad} coordinate(s) have all draws exactly 0 but a non-zero mean: their normalized "
            "variance is infinite; check the mean or pass eps > 0"
        )
    ratio = np.divide(v, denom, out=np.zeros_like(v), where=~degenerate)
    _, layer_means = _group_sums(ratio, _grouping(groups, x.shape[1]))
    return NGVResult(
        value=float(ratio.mean()),
        per_coordinate=ratio,
        layers=layer_means,
        num_degenerate=int(degenerate.sum()),
        num_samples=int(x.shape[0]),
        scale=_scale_text(batch_size, replace, big_n),
        batch_size=None if batch_size is None else int(batch_size),
    )


def gsnr(
    samples: Any,
    *,
    ddof: int = 1,
    mean: Any = None,
    groups: GroupsArg = None,
    batch_size: int | None = None,
    replace: bool = True,
    population_size: float | None = None,
) -> GSNRResult:
    """Gradient signal-to-noise ratio per coordinate, ``r_j = m_j^2 / Var_j`` (Liu et al. 2020).

    ``m`` and ``Var`` are those of :func:`gradient_variance` with the same arguments. Liu et al.
    define the GSNR on per-example gradients (``Var`` = per-example variance); for the GSNR of a
    size-B minibatch mean pass ``batch_size=B`` (with replacement it is B times the per-example
    GSNR). With estimator draws it is the GSNR of that estimator.

    Coordinates with ``Var_j = 0`` are reported (``num_degenerate``) and left out of ``mean`` and
    ``median`` (their ratio is infinite or undefined); ``aggregate = ||m||^2 / sum_j Var_j``
    uses every coordinate.
    """
    mo = _moments(
        samples,
        ddof=ddof,
        mean=mean,
        batch_size=batch_size,
        replace=replace,
        population_size=population_size,
    )
    x, m, v, big_n = mo.x, mo.m, mo.v, mo.big_n
    positive = v > 0
    r = m * m
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(r, v, out=r)  # scale-free: exact on the rescaled coordinates
    finite = r[positive]
    # aggregates mix coordinates: bring them to one common power of two (the largest)
    top = int(mo.e.max())
    with np.errstate(under="ignore"):
        ms = np.ldexp(m, mo.e - top) if mo.e.any() else m
        v = np.ldexp(v, 2 * (mo.e - top)) if mo.e.any() else v
    signal = ms * ms
    grouping = _grouping(groups, x.shape[1])
    layers: dict[str, float] = {}
    layer_agg: dict[str, float] = {}
    if grouping is not None:
        sums, counts = grouping.sums(finite, where=positive)
        sig, _ = grouping.sums(signal)
        var, _ = grouping.sums(v)
        for k, name in enumerate(grouping.names):
            layers[name] = float(sums[k] / counts[k]) if counts[k] else math.nan
            layer_agg[name] = _ratio(float(sig[k]), float(var[k]))
    aggregate = _ratio(float(signal.sum()), float(v.sum()))
    del signal, ms, v
    mean_r = float(finite.mean()) if finite.size else math.nan
    # finite is this function's own copy: the median may partition it in place
    median = float(np.median(finite, overwrite_input=True)) if finite.size else math.nan
    return GSNRResult(
        mean=mean_r,
        median=median,
        aggregate=aggregate,
        per_coordinate=r,
        layers=layers,
        layer_aggregates=layer_agg,
        num_degenerate=int((~positive).sum()),
        num_samples=int(x.shape[0]),
        scale=_scale_text(batch_size, replace, big_n),
        batch_size=None if batch_size is None else int(batch_size),
    )


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


def stratified_minibatch_variance(
    per_sample: Any,
    assignment: Any,
    *,
    batch_size: int,
    groups: GroupsArg = None,
) -> VarianceResult:
    """Exact variance of the stratified (Gradient Clustering) minibatch estimator.

    The N rows of ``per_sample`` are the whole population, split into M non-empty strata by
    ``assignment`` (``[N]`` labels). A minibatch takes ``q = B / M`` examples from every stratum
    (``B`` must be a multiple of M), uniformly without replacement (with replacement when
    ``q > N_k``), and weights example i of stratum k by ``w_k = M N_k / N``, so that
    ``g_hat = (1/B) sum_b w_{k_b} g_{i_b} = sum_k (N_k/N) mean(stratum k's draws)`` is unbiased.
    Its per-coordinate variance is::

        Var_j = sum_k (N_k/N)^2 sigma_kj^2 (N_k - q) / (q (N_k - 1))   (q <= N_k)
                sum_k (N_k/N)^2 sigma_kj^2 / q                          (q >  N_k)

    with ``sigma_k^2`` the within-stratum population variance (``1/N_k``). Compare with
    :func:`gradient_variance` ``(per_sample, batch_size=B, replace=False)`` for plain SGD.
    (Faghri et al. 2020, §3; the estimator of :class:`gradnoise.GradientClusteringSampler`.)
    """
    x = _as_samples(per_sample, "per_sample")
    n, p = x.shape
    if n == 0:
        raise InsufficientDataError("per_sample has no rows: the strata hold no examples")
    x, _, e, mx = _rescaled(x, None)  # |g| ~ 1e300: exact power-of-two rescaling
    labels = np.asarray(assignment).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"assignment must have one label per row ({n}), got {labels.shape[0]}")
    _, codes = np.unique(labels, return_inverse=True)
    sizes = np.bincount(codes).astype(np.float64)
    num_strata = sizes.shape[0]
    b = int(batch_size)
    if b != batch_size or b < 1 or b % num_strata:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of the number of non-empty "
            f"strata ({num_strata}) for the exact formula"
        )
    q = b // num_strata
    sums = np.zeros((num_strata, p))
    np.add.at(sums, codes, x)
    means = sums / sizes[:, None]
    within = np.zeros((num_strata, p))
    np.add.at(within, codes, (x - means[codes]) ** 2)
    sigma2 = within / sizes[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        fpc = np.where(
            sizes >= q,
            np.where(sizes > 1, (sizes - q) / (q * np.maximum(sizes - 1, 1)), 0.0),
            1.0 / q,
        )
    mo = _Moments(x, x.mean(0), ((sizes / n) ** 2 * fpc) @ sigma2, float(n), e, mx, "per_sample")
    v, layer_sums, layer_means, total, mean_sq_norm = mo.totals(groups)
    return VarianceResult(
        total=total,
        mean=total / p,
        per_coordinate=v,
        layers=layer_sums,
        layer_means=layer_means,
        mean_sq_norm=mean_sq_norm,
        num_samples=n,
        scale=(
            f"variance of the stratified minibatch estimator: B={b} examples, {q} from each of "
            f"{num_strata} strata, weights M N_k / N (N={n})"
        ),
        batch_size=b,
        population_size=float(n),
        replace=False,
    )
