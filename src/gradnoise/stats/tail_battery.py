"""The Xie et al. power-law battery: many samples of one family, every CSN decision side by side.

Xie, Tang, Sun, Li, "On the Overlooked Structure of Stochastic Gradients" (NeurIPS 2023,
arXiv:2212.02083) test whether absolute gradient values follow a power law, over many samples of
one *family* (e.g. the coordinates of one gradient vector per layer, or one coordinate along
training per tracked parameter), and report the fraction of samples where the power law is not
rejected. For each sample :func:`power_law_battery` runs the Clauset–Shalizi–Newman procedure
(CSN 2009, see :mod:`gradnoise.stats.powerlaw`):

* the fit (alpha, xmin by KS minimisation, n_tail);
* the bootstrap goodness-of-fit test: *plausible* iff ``p > level`` (CSN: 0.1);
* the naive rule *plausible* iff ``ks < 1.358 / sqrt(n_tail)`` (the asymptotic 5% one-sample KS
  critical value, which ignores that alpha and xmin were fitted: lenient, methods.md §0.1 item 7);
* likelihood ratios against the alternatives (default lognormal and exponential) on the same
  tail, Vuong's two-sided p-values corrected by Benjamini–Hochberg across the samples of the
  family; the verdict is the sign of ``R`` where the adjusted p is ``<= fdr``, else inconclusive.

and summarises the family: plausible fractions under both rules, the alpha distribution and the
likelihood-ratio verdict fractions. "Not rejected" does not prove a power law (CSN §4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from ..errors import InsufficientDataError
from ._common import RNGLike, StatResult, as_float_array, as_generator, check_finite
from ._dask import is_dask_array, map_columns
from .multitest import adjust_pvalues
from .powerlaw import compare_tails, fit_power_law, power_law_test

__all__ = [
    "KS_CRITICAL_5PCT",
    "LikelihoodRatioVerdicts",
    "PowerLawBattery",
    "power_law_battery",
]

KS_CRITICAL_5PCT = 1.358
"""Asymptotic 5% critical value of ``sqrt(n) D`` for the one-sample KS test (known parameters)."""

_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclasses.dataclass(frozen=True, repr=False)
class LikelihoodRatioVerdicts(StatResult):
    """Power law vs one alternative over the tested samples of a family (CSN §5).

    Attributes:
        alternative: the alternative's name.
        loglik_ratio: ``R = sum ln p_pl - ln p_alt`` on each tail (> 0 favours the power law);
            NaN for untested samples.
        normalized_ratio: Vuong's ``R / (sqrt(n_tail) sd)``.
        pvalue: Vuong's two-sided p-value ``erfc(|R| / sqrt(2 n_tail sd^2))``.
        pvalue_adjusted: Benjamini–Hochberg adjusted p-values across the tested samples.
        verdict: ``+1`` power law favoured, ``-1`` alternative favoured (``sign(R)`` where
            ``pvalue_adjusted <= fdr``), ``0`` inconclusive or untested.
        fraction_power_law, fraction_alternative, fraction_inconclusive: shares of the tested
            samples with each verdict (NaN when none was tested).
    """

    alternative: str
    loglik_ratio: np.ndarray
    normalized_ratio: np.ndarray
    pvalue: np.ndarray
    pvalue_adjusted: np.ndarray
    verdict: np.ndarray
    fraction_power_law: float
    fraction_alternative: float
    fraction_inconclusive: float


@dataclasses.dataclass(frozen=True, repr=False)
class PowerLawBattery(StatResult):
    """Per-sample CSN results for one family of samples, and the family's summary.

    Per-sample arrays have length ``n_samples`` (NaN / False / 0 where a sample was not tested).

    Attributes:
        n_samples: samples given.
        tested: whether the sample could be fitted: at least ``min_tail`` positive values and at
            least 3 distinct ones (only with ``untestable="skip"`` can this be False).
        n_tested: ``tested.sum()``.
        n: values used per sample (after dropping values ``<= 0``).
        n_dropped: values ``<= 0`` dropped per sample (``nonpositive="drop"``; else 0).
        alpha, xmin, n_tail, ks, sigma: the CSN fit (see :class:`~gradnoise.stats.PowerLawFit`).
        ks_critical: ``1.358 / sqrt(n_tail)``.
        naive_plausible: ``ks < ks_critical`` (naive rule).
        bootstrapped: whether the bootstrap test ran on the sample (all tested samples, or a
            random subset of ``max_boot`` of them).
        pvalue: CSN bootstrap p-value (NaN where not bootstrapped).
        plausible: ``pvalue > level`` (False where not bootstrapped).
        n_bootstrapped: ``bootstrapped.sum()``.
        fraction_plausible: share of bootstrapped samples with ``p > level`` (NaN if none).
        fraction_naive: share of tested samples passing the naive rule (NaN if none).
        alpha_quantiles: ``{"q10", "q25", "median", "q75", "q90"}`` of alpha over tested samples.
        comparisons: ``{alternative: LikelihoodRatioVerdicts}``.
        level, fdr, n_boot, min_tail, nonpositive: the settings used.
    """

    n_samples: int
    tested: np.ndarray
    n_tested: int
    n: np.ndarray
    n_dropped: np.ndarray
    alpha: np.ndarray
    xmin: np.ndarray
    n_tail: np.ndarray
    ks: np.ndarray
    sigma: np.ndarray
    ks_critical: np.ndarray
    naive_plausible: np.ndarray
    bootstrapped: np.ndarray
    pvalue: np.ndarray
    plausible: np.ndarray
    n_bootstrapped: int
    fraction_plausible: float
    fraction_naive: float
    alpha_quantiles: dict[str, float]
    comparisons: dict[str, LikelihoodRatioVerdicts]
    level: float
    fdr: float
    n_boot: int
    min_tail: int
    nonpositive: str

    def group_fractions(self, labels: Any) -> dict[Any, dict[str, Any]]:
        """Plausible fractions per group of samples (e.g. per layer or per checkpoint).

        Args:
            labels: one hashable label per sample.

        Returns:
            ``{label: {"tested", "bootstrapped", "plausible", "naive", "fraction_plausible",
            "fraction_naive"}}`` in order of first appearance (counts are ints, fractions NaN
            for empty groups).
        """
        labels = list(labels)
        if len(labels) != self.n_samples:
            raise ValueError(f"need {self.n_samples} labels (one per sample), got {len(labels)}")
        out: dict[Any, dict[str, Any]] = {}
        for label in dict.fromkeys(labels):
            m = np.array([lab == label for lab in labels])
            out[label] = _counts(
                self.tested[m], self.bootstrapped[m], self.plausible[m], self.naive_plausible[m]
            )
        return out

    def summary(self) -> dict[str, Any]:
        """The family's headline numbers as a small JSON-safe dict (no per-sample arrays)."""
        tested = self.tested
        with np.errstate(invalid="ignore", divide="ignore"):
            frac_tail = self.n_tail[tested] / self.n[tested]
        return {
            **_counts(tested, self.bootstrapped, self.plausible, self.naive_plausible),
            "samples": self.n_samples,
            "untestable": self.n_samples - self.n_tested,
            "dropped_nonpositive": int(self.n_dropped.sum()),
            "values": int(self.n.sum()),
            "alpha": dict(self.alpha_quantiles),
            "tail_fraction_median": float(np.median(frac_tail)) if frac_tail.size else None,
            "n_tail_median": float(np.median(self.n_tail[tested])) if tested.any() else None,
            "likelihood_ratio": {
                k: {
                    "power_law": v.fraction_power_law,
                    "alternative": v.fraction_alternative,
                    "inconclusive": v.fraction_inconclusive,
                }
                for k, v in self.comparisons.items()
            },
            "level": self.level,
            "fdr": self.fdr,
            "n_boot": self.n_boot,
        }


def _counts(
    tested: np.ndarray, boot: np.ndarray, plausible: np.ndarray, naive: np.ndarray
) -> dict[str, Any]:
    nt, nb = int(tested.sum()), int(boot.sum())
    k_pl, k_nv = int(plausible[boot].sum()), int(naive[tested].sum())
    return {
        "tested": nt,
        "bootstrapped": nb,
        "plausible": k_pl,
        "naive": k_nv,
        "fraction_plausible": k_pl / nb if nb else float("nan"),
        "fraction_naive": k_nv / nt if nt else float("nan"),
    }


def _as_columns(samples: list[Any] | tuple[Any, ...]) -> list[np.ndarray]:
    """Ragged samples as checked 1-D float arrays."""
    if not samples:
        raise ValueError("no samples given")
    cols = [as_float_array(s, f"samples[{i}]") for i, s in enumerate(samples)]
    for i, c in enumerate(cols):
        if c.ndim != 1:
            raise ValueError(f"samples[{i}] must be 1-D, got shape {c.shape}")
        check_finite(c, f"samples[{i}]")
    return cols


def _as_matrix(samples: Any, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values [L, S], lengths [S])`` of a 2-D array of samples along ``axis``."""
    arr = as_float_array(samples, "samples")
    if arr.ndim != 2:
        raise ValueError(
            f"samples must be a 2-D array (values along axis={axis}, one column per sample) or "
            f"a list of 1-D arrays; got shape {arr.shape}"
        )
    mat = np.moveaxis(arr, axis, 0)
    if mat.shape[1] == 0:
        raise ValueError("no samples given")
    return mat, np.full(mat.shape[1], mat.shape[0], dtype=np.int64)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Number of distinct positive values per column."""
    srt = np.sort(values, axis=0)
    new = srt > 0
    new[1:] &= srt[1:] != srt[:-1]
    return new.sum(axis=0)


_RATIOS = ("r", "z", "p")


@dataclasses.dataclass(frozen=True, repr=False)
class _ColumnFits(StatResult):
    """Per-sample work of the battery (fits, likelihood ratios), one value per column."""

    n_dropped: np.ndarray
    n_used: np.ndarray
    tested: np.ndarray
    alpha: np.ndarray
    xmin: np.ndarray
    n_tail: np.ndarray
    ks: np.ndarray
    sigma: np.ndarray
    ratios: dict[str, np.ndarray]  # "<alternative>/r|z|p": R, Vuong's z, its p-value


def _columns(
    mat: np.ndarray,
    lengths: np.ndarray,
    *,
    min_tail: int,
    nonpositive: str,
    untestable: str,
    alternatives: Sequence[str],
    max_values_per_chunk: int,
) -> tuple[_ColumnFits, np.ndarray | None]:
    """Fits and likelihood ratios of every testable column of ``mat`` (values along axis 0),
    and the tested columns with dropped values and padding set to 0 (None when the battery is
    going to raise: nothing is fitted then)."""
    n_samples = mat.shape[1]
    inside = np.arange(mat.shape[0])[:, None] < lengths[None, :]
    bad = (mat <= 0) & inside
    n_dropped = bad.sum(axis=0).astype(np.int64)
    n_used = lengths - n_dropped
    nanv = np.full(n_samples, np.nan)
    found = _ColumnFits(
        n_dropped=n_dropped,
        n_used=n_used,
        tested=np.zeros(n_samples, dtype=bool),
        alpha=nanv.copy(),
        xmin=nanv.copy(),
        n_tail=np.zeros(n_samples, dtype=np.int64),
        ks=nanv.copy(),
        sigma=nanv.copy(),
        ratios={f"{alt}/{k}": nanv.copy() for alt in alternatives for k in _RATIOS},
    )
    if nonpositive == "raise" and n_dropped.any():
        return found, None
    sub = mat if (n_dropped.sum() == 0 and (lengths == mat.shape[0]).all()) else None
    if sub is None:  # zeros mark dropped values and padding: power_law_test drops them
        sub = np.where(inside & ~bad, mat, 0.0)
    del bad, inside
    distinct = _distinct(sub)
    tested = (n_used >= min_tail) & (distinct >= 3)
    found.tested[:] = tested
    if not tested.all() and untestable == "raise":
        return found, None
    idx = np.flatnonzero(tested)
    if idx.size < n_samples:
        sub = sub[:, idx]
    if idx.size:
        # fits and likelihood ratios in blocks of columns (memory ~ values per block)
        width = max(1, max_values_per_chunk // max(sub.shape[0], 1))
        for b0 in range(0, idx.size, width):
            block, cols = sub[:, b0 : b0 + width], idx[b0 : b0 + width]
            fit = fit_power_law(block, min_tail=min_tail, nonpositive="drop", axis=0)
            found.alpha[cols], found.xmin[cols] = fit.alpha, fit.xmin
            found.ks[cols], found.sigma[cols] = fit.ks, fit.sigma
            found.n_tail[cols] = fit.n_tail
            for alt in alternatives:
                cmp = compare_tails(
                    block,
                    alt,  # type: ignore[arg-type]  # validated by power_law_battery
                    xmin=fit.xmin,
                    nonpositive="drop",
                    axis=0,
                )
                for k, val in zip(
                    _RATIOS, (cmp.loglik_ratio, cmp.normalized_ratio, cmp.pvalue), strict=True
                ):
                    found.ratios[f"{alt}/{k}"][cols] = val
    return found, sub


def _ragged_columns(
    cols: list[np.ndarray], **options: Any
) -> tuple[_ColumnFits, Callable[[np.ndarray], np.ndarray] | None]:
    """:func:`_columns` of ragged samples, in groups of similar length: a group is padded to its
    longest sample and holds about ``max_values_per_chunk`` values (one sample alone if longer),
    instead of every sample padded to the longest (a model's layers range from 10 to 10^6
    values). Per-sample results are those of one padded matrix. Returns the fits and, unless the
    battery is going to raise, ``values(pick)``: the tested samples ``pick`` (positions among
    the tested ones) as a zero-padded matrix for the bootstrap (zeros are dropped there)."""
    lengths = np.array([c.size for c in cols], dtype=np.int64)
    n_samples = lengths.size
    budget = int(options["max_values_per_chunk"])
    groups: list[list[int]] = [[]]
    for i in np.argsort(lengths, kind="stable").tolist():
        if groups[-1] and int(lengths[i]) * (len(groups[-1]) + 1) > max(budget, int(lengths[i])):
            groups.append([])
        groups[-1].append(i)
    nanv = np.full(n_samples, np.nan)
    found = _ColumnFits(
        n_dropped=np.zeros(n_samples, dtype=np.int64),
        n_used=np.zeros(n_samples, dtype=np.int64),
        tested=np.zeros(n_samples, dtype=bool),
        alpha=nanv.copy(),
        xmin=nanv.copy(),
        n_tail=np.zeros(n_samples, dtype=np.int64),
        ks=nanv.copy(),
        sigma=nanv.copy(),
        ratios={f"{alt}/{k}": nanv.copy() for alt in options["alternatives"] for k in _RATIOS},
    )
    for group in groups:
        at = np.array(group, dtype=np.int64)
        mat = np.zeros((int(lengths[at].max()), at.size))
        for j, i in enumerate(group):
            mat[: lengths[i], j] = cols[i]
        part, _ = _columns(mat, lengths[at], **options)
        del mat
        for name in ("n_dropped", "n_used", "tested", "alpha", "xmin", "n_tail", "ks", "sigma"):
            getattr(found, name)[at] = getattr(part, name)
        for key, val in part.ratios.items():
            found.ratios[key][at] = val
    tested = np.flatnonzero(found.tested)
    if options["nonpositive"] == "raise" and found.n_dropped.any():
        return found, None
    if not found.tested.all() and options["untestable"] == "raise":
        return found, None

    def values(pick: np.ndarray) -> np.ndarray:
        chosen = [cols[i] for i in tested[pick]]
        out = np.zeros((max(c.size for c in chosen), len(chosen)))
        for j, c in enumerate(chosen):
            out[: c.size, j] = np.where(c > 0, c, 0.0)
        return out

    return found, values


def _column_block(block: np.ndarray, axis: int = 0, **options: Any) -> _ColumnFits:
    """:func:`_columns` of one block of whole columns (the Dask kernel)."""
    check_finite(block, "samples")
    lengths = np.full(block.shape[1], block.shape[0], dtype=np.int64)
    return _columns(np.asarray(block, dtype=np.float64), lengths, **options)[0]


def power_law_battery(
    samples: Any,
    *,
    n_boot: int = 100,
    rng: RNGLike = None,
    level: float = 0.1,
    fdr: float = 0.1,
    min_tail: int = 50,
    nonpositive: Literal["raise", "drop"] = "raise",
    untestable: Literal["raise", "skip"] = "raise",
    alternatives: Sequence[str] = ("lognormal", "exponential"),
    max_boot: int | None = None,
    axis: int = 0,
    max_values_per_chunk: int = 4_000_000,
) -> PowerLawBattery:
    """Run the CSN power-law battery on every sample of one family (Xie et al. 2023).

    Args:
        samples: a 2-D array with the values of each sample along ``axis`` (one sample per
            column for ``axis=0``), or a list/tuple of 1-D arrays (one sample each, any
            lengths). Pass absolute values ``|g|``: a power law lives on ``x > 0``. A 2-D dask
            array (e.g. ``abs(open_run(path).to_dask().grads)``) runs out of core: fits,
            likelihood ratios and bootstraps blockwise over column blocks on the active Dask
            scheduler, the family's decisions (subset, BH, summaries) on the client; the result
            equals the in-memory one.
        n_boot: bootstrap replicates per sample (CSN §4.1, xmin re-scanned in each); ``0``
            skips the bootstrap (only the naive rule and likelihood ratios). Prefer
            ``(n_boot + 1) * level`` an integer (9, 19, 49, 99, ...): ``p <= level`` then
            rejects an exact Monte-Carlo null with probability exactly ``level`` (with 20
            replicates, 3/21).
        rng: seed or generator, split by ``spawn(2)`` into a stream for the ``max_boot``
            subset and one for ``power_law_test`` on the bootstrapped samples (which spawns one
            child per sample).
        level: the power law is *plausible* where the bootstrap ``p > level`` (CSN: 0.1).
        fdr: Benjamini–Hochberg level of the likelihood-ratio verdicts across samples.
        min_tail: smallest tail a scanned xmin may leave (CSN scan, as in
            :func:`fit_power_law`).
        nonpositive: ``"raise"`` on values ``<= 0``, or ``"drop"`` them per sample (counted in
            ``n_dropped``; exact zeros arise in gradients, e.g. behind dead ReLUs).
        untestable: a sample with fewer than ``min_tail`` usable values or fewer than 3
            distinct ones can not be fitted: ``"raise"`` an :class:`InsufficientDataError`, or
            ``"skip"`` it (``tested`` False, counted in the summary as untestable).
        alternatives: distributions compared by likelihood ratio (see :func:`compare_tails`).
        max_boot: bootstrap at most this many tested samples, a uniformly random subset drawn
            from ``rng`` (the bootstrap dominates the cost when a family has thousands of
            samples); ``None``: all. Fits, the naive rule and likelihood ratios use all samples.
        axis: the value axis of a 2-D ``samples`` array.
        max_values_per_chunk: memory bound: fits and likelihood ratios run on blocks of
            columns holding about this many values, and so do the bootstrap replicates (does
            not change results).

    Returns:
        :class:`PowerLawBattery`.

    Example (a Pareto and an exponential sample; the naive rule accepts both):
        >>> rng = np.random.default_rng(0)
        >>> x = np.column_stack([rng.pareto(1.5, 2000) + 1, rng.exponential(size=2000)])
        >>> res = power_law_battery(x, n_boot=49, rng=1)
        >>> res.plausible.tolist(), res.naive_plausible.tolist()
        ([True, False], [True, True])
        >>> res.comparisons["exponential"].verdict.tolist()  # +1: power law favoured
        [1, -1]
    """
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    n_boot = int(n_boot)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    if nonpositive not in ("raise", "drop"):
        raise ValueError(f"nonpositive must be 'raise' or 'drop', got {nonpositive!r}")
    if untestable not in ("raise", "skip"):
        raise ValueError(f"untestable must be 'raise' or 'skip', got {untestable!r}")
    if max_boot is not None and (int(max_boot) != max_boot or max_boot < 1):
        raise ValueError(f"max_boot must be a positive integer or None, got {max_boot!r}")
    if int(min_tail) != min_tail or min_tail < 1:
        raise ValueError(f"min_tail must be a positive integer, got {min_tail!r}")
    min_tail = int(min_tail)
    known = ("lognormal", "exponential", "truncated_power_law", "stretched_exponential")
    for alt in alternatives:
        if alt not in known:
            raise ValueError(f"unknown alternative {alt!r}; choose from {known}")

    cols_opts = {
        "min_tail": min_tail,
        "nonpositive": nonpositive,
        "untestable": untestable,
        "alternatives": tuple(alternatives),
        "max_values_per_chunk": max_values_per_chunk,
    }
    dask_values: Any = None
    pick_values: Callable[[np.ndarray], np.ndarray] | None = None
    if is_dask_array(samples):
        # per-column work blockwise on the cluster (map_columns); the family's decisions here,
        # from the concatenated per-column fields, with the same code as in memory
        found = map_columns(_column_block, samples, axis, cols_opts, name="samples")
        dask_values = (samples if axis in (0, -2) else samples.T).astype(np.float64)
    elif isinstance(samples, (list, tuple)):
        found, pick_values = _ragged_columns(_as_columns(samples), **cols_opts)
    else:
        mat, lengths = _as_matrix(samples, axis)
        check_finite(mat, "samples")
        found, sub = _columns(mat, lengths, **cols_opts)  # type: ignore[arg-type]
        pick_values = None if sub is None else (lambda pick: sub[:, pick])
    n_dropped, n_used, tested = found.n_dropped, found.n_used, found.tested
    n_samples = n_dropped.size
    if nonpositive == "raise" and n_dropped.any():
        cols = np.flatnonzero(n_dropped)
        raise ValueError(
            f"samples contain {int(n_dropped.sum())} value(s) <= 0 in {cols.size} sample(s) "
            f"(first: {cols[:5].tolist()}); a power law lives on x > 0: pass |x|, or "
            "nonpositive='drop' to exclude them explicitly (counted in n_dropped)"
        )
    if not tested.all() and untestable == "raise":
        cols = np.flatnonzero(~tested)
        raise InsufficientDataError(
            f"{cols.size} sample(s) (first: {cols[:5].tolist()}) have fewer than "
            f"min_tail={min_tail} usable values or fewer than 3 distinct ones (smallest: "
            f"{int(n_used[cols].min())} values); pass untestable='skip' to count them as "
            "untestable"
        )

    idx = np.flatnonzero(tested)
    alpha, xmin, ks, sigma = found.alpha, found.xmin, found.ks, found.sigma
    n_tail = found.n_tail
    lr = {alt: [found.ratios[f"{alt}/{k}"] for k in _RATIOS] for alt in alternatives}
    nanv = np.full(n_samples, np.nan)
    pvalue = nanv.copy()
    bootstrapped = np.zeros(n_samples, dtype=bool)
    gen = as_generator(rng)
    subset_rng, boot_rng = gen.spawn(2)
    if idx.size and n_boot:
        pick = np.arange(idx.size)
        if max_boot is not None and idx.size > max_boot:
            pick = np.sort(subset_rng.choice(idx.size, size=int(max_boot), replace=False))
        values = pick_values(pick) if pick_values is not None else dask_values[:, idx[pick]]
        test = power_law_test(
            values,
            n_boot=n_boot,
            rng=boot_rng,
            min_tail=min_tail,
            nonpositive="drop",
            axis=0,
            max_values_per_chunk=max_values_per_chunk,
        )
        pvalue[idx[pick]] = test.pvalue
        bootstrapped[idx[pick]] = True
    comparisons = {
        alt: _verdicts(alt, lr[alt][0], lr[alt][1], lr[alt][2], idx, fdr) for alt in alternatives
    }
    with np.errstate(divide="ignore"):
        ks_crit = np.where(tested, KS_CRITICAL_5PCT / np.sqrt(np.maximum(n_tail, 1)), np.nan)
    naive = tested & (ks < ks_crit)
    plausible = bootstrapped & (pvalue > level)
    counts = _counts(tested, bootstrapped, plausible, naive)
    a = alpha[tested]
    quant = (
        dict(
            zip(
                ("q10", "q25", "median", "q75", "q90"),
                np.quantile(a, _QUANTILES).tolist(),
                strict=True,
            )
        )
        if a.size
        else dict.fromkeys(("q10", "q25", "median", "q75", "q90"), float("nan"))
    )
    return PowerLawBattery(
        n_samples=int(n_samples),
        tested=tested,
        n_tested=int(tested.sum()),
        n=n_used.astype(np.int64),
        n_dropped=n_dropped,
        alpha=alpha,
        xmin=xmin,
        n_tail=n_tail,
        ks=ks,
        sigma=sigma,
        ks_critical=ks_crit,
        naive_plausible=naive,
        bootstrapped=bootstrapped,
        pvalue=pvalue,
        plausible=plausible,
        n_bootstrapped=int(bootstrapped.sum()),
        fraction_plausible=counts["fraction_plausible"],
        fraction_naive=counts["fraction_naive"],
        alpha_quantiles=quant,
        comparisons=comparisons,
        level=float(level),
        fdr=float(fdr),
        n_boot=n_boot,
        min_tail=min_tail,
        nonpositive=nonpositive,
    )


def _verdicts(
    alt: str, r: np.ndarray, z: np.ndarray, p: np.ndarray, idx: np.ndarray, fdr: float
) -> LikelihoodRatioVerdicts:
    padj = np.full(r.size, np.nan)
    verdict = np.zeros(r.size, dtype=np.int8)
    if idx.size:
        padj[idx] = adjust_pvalues(p[idx], method="bh")
        sig = padj[idx] <= fdr
        verdict[idx] = np.where(sig, np.sign(r[idx]), 0).astype(np.int8)
    m = idx.size
    v = verdict[idx]
    frac = (lambda k: k / m) if m else (lambda k: float("nan"))
    return LikelihoodRatioVerdicts(
        alternative=alt,
        loglik_ratio=r,
        normalized_ratio=z,
        pvalue=p,
        pvalue_adjusted=padj,
        verdict=verdict,
        fraction_power_law=frac(int((v > 0).sum())),
        fraction_alternative=frac(int((v < 0).sum())),
        fraction_inconclusive=frac(int((v == 0).sum())),
    )
