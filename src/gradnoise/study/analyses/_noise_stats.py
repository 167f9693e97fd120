"""Numpy-only computations of the noise-model studies (Simsekli, Panigrahi, Battash).

Every function takes SGN samples as arrays and returns JSON-safe numbers (plus bulky arrays for
``ctx.save_arrays``); the torch side (``_noise_torch``) only produces those samples. All sample
axes are explicit: rows are samples of the noise vector at fixed parameters, columns coordinates
(methods.md §0, regime 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from ...stats._stable_mcculloch import sample_quantiles
from ...stats.gaussianity import normality_test, projection_normality_test
from ...stats.multitest import multiple_test
from ...stats.noise_models import compare_noise_models
from ...stats.stable import fit_stable
from ...stats.tail import simsekli_block_size, tail_index


def _q(values: np.ndarray, p: float) -> float | None:
    return float(np.quantile(values, p)) if values.size else None


def constant_columns(x: np.ndarray) -> np.ndarray:
    """Boolean mask of columns whose values are all equal (zero SGN: e.g. dead units)."""
    return np.all(x == x[:1], axis=0)


IQR_PER_SD = 1.3489795003921634  # interquartile range of N(0, 1)


def _iqr(x: np.ndarray) -> np.ndarray:
    """Interquartile range of each column (Hazen quantiles, as ``fit_stable`` uses)."""
    out = np.empty(x.shape[1])
    step = max(1, 4_000_000 // max(x.shape[0], 1))
    for c0 in range(0, x.shape[1], step):
        srt = np.sort(np.asarray(x[:, c0 : c0 + step], dtype=np.float64).T, axis=1)
        q = sample_quantiles(srt, (0.25, 0.75))
        out[c0 : c0 + step] = q[1] - q[0]
    return out


def zero_iqr_columns(x: np.ndarray) -> np.ndarray:
    """Columns with a zero interquartile range (Hazen quantiles, as ``fit_stable`` checks).

    Such coordinates are constant or mostly tied (the SGN of a rarely active unit is one value
    most of the time, with occasional jumps); no stable law can be fitted to them."""
    return _iqr(x) <= 0


# --------------------------------------------------------------------------- SGN from a matrix


def draw_minibatches(rng: np.random.Generator, n: int, batch_size: int, num: int) -> np.ndarray:
    """``[num, batch_size]`` example indices: each minibatch without replacement, the minibatches
    drawn independently (as :func:`gradnoise.minibatch_grads`)."""
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (the train split), got {batch_size}")
    return np.stack([rng.choice(n, size=batch_size, replace=False) for _ in range(num)])


#: bytes of one block of columns of :func:`sgn_from_per_sample`'s gathered minibatch values
SGN_BLOCK_BYTES = 64 * 2**20
#: bytes per entry of ``[K, C]`` SGN that a parameter map's fit holds (measured with tracemalloc:
#: 24.5 for McCulloch's quantiles, 119 for the maximum-likelihood fit), besides the gather
MAP_FIT_BYTES_PER_ENTRY = 128


def sgn_from_per_sample(
    per_sample: np.ndarray, full: np.ndarray, batches: np.ndarray, *, block_bytes: int | None = None
) -> np.ndarray:
    """SGN ``xi_k = g_{B_k} - G`` with ``g_B = (1/B) sum_{i in B} g_i`` from the per-example
    gradients ``g_i`` (``[N, C]``), the full gradient ``G`` (``[C]``) and minibatch indices
    ``[K, B]`` (exact without BatchNorm/dropout: a minibatch gradient is the mean of its
    per-example gradients). Float64 ``[K, C]``: each minibatch's values are gathered and summed
    in float64, in blocks of columns of about ``block_bytes`` (``SGN_BLOCK_BYTES``), each column
    on its own, so the result does not depend on the block width. A coordinate whose
    per-example gradients in a minibatch are all zero gets exactly ``-G_j`` (the sums are not
    centred first, so rounding never makes a constant column look random)."""
    k, b = batches.shape
    c = per_sample.shape[1]
    g = np.asarray(full, dtype=np.float64)
    out = np.empty((k, c))
    width = max(1, (block_bytes or SGN_BLOCK_BYTES) // (8 * k * b))
    for c0 in range(0, c, width):
        cols = slice(c0, c0 + width)
        gathered = per_sample[:, cols][batches].astype(np.float64)  # [K, B, w]
        out[:, cols] = gathered.sum(axis=1) / b - g[cols]
    return out


def map_from_per_sample(
    per_sample: np.ndarray,
    full: np.ndarray,
    batches: np.ndarray,
    shape: Sequence[int],
    *,
    method: str,
    max_bytes: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`parameter_map` of the SGN of :func:`sgn_from_per_sample`, computed in blocks of
    columns that hold at most about ``max_bytes`` (the gathered minibatch values and the fit's
    ``MAP_FIT_BYTES_PER_ENTRY``): every coordinate's fit sees only its own column, so the maps
    equal those of one block (a 4M-entry output layer's SGN alone is K x 32 MB)."""
    k, b = batches.shape
    c = per_sample.shape[1]
    width = max(1, int(max_bytes) // (k * (8 * b + MAP_FIT_BYTES_PER_ENTRY)))
    alpha, scale = np.empty(c), np.empty(c)
    degenerate = 0
    for c0 in range(0, c, width):
        cols = slice(c0, c0 + width)
        xi = sgn_from_per_sample(per_sample[:, cols], full[cols], batches)
        a, sc, d = parameter_map(xi, (xi.shape[1],), method=method)
        alpha[cols], scale[cols], degenerate = a, sc, degenerate + d
        del xi
    return alpha.reshape(shape), scale.reshape(shape), degenerate


# --------------------------------------------------------------------------- Simsekli


def _per_coordinate_alpha(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Mohammadi alpha per column on the first K' rows, K' = K or K - 1 (so that a block size
    m >= 2 with >= 2 blocks exists; Simsekli's m = largest divisor of K' <= sqrt(K')). Columns
    constant on those K' rows have no tail index and are left out."""
    k = x.shape[0]
    for kk in (k, k - 1):
        m = simsekli_block_size(kk) if kk >= 1 else 1
        if m >= 2 and kk // m >= 2:
            rows = x[:kk]
            rows = rows[:, ~constant_columns(rows)]
            return np.asarray(tail_index(rows).alpha, dtype=np.float64), kk
    raise ValueError(f"{k} noise samples are too few for a per-coordinate Mohammadi estimate")


def log_grid_ccdf(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Empirical ``P(|X| >= g)`` at each grid point (one histogram pass, no full sort)."""
    a = np.abs(np.asarray(values)).ravel()
    counts, _ = np.histogram(a, bins=np.append(grid, np.inf))
    below = np.count_nonzero(a < grid[0])
    return 1.0 - (below + np.concatenate([[0], np.cumsum(counts)[:-1]])) / a.size


def simsekli_stats(
    noise: np.ndarray, *, rng: np.random.Generator, resampled: np.ndarray | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The tail-index study of Simsekli, Sagun & Gurbuzbalaban (2019) on one data pass.

    ``noise``: ``[P, M]``, row k the noise ``g_k - mean_k g_k`` of minibatch k of one pass at
    fixed parameters. Reports the Mohammadi alpha (1) pooled over all coordinates row-major (the
    original recipe), (2) pooled over the non-constant coordinates, (3) pooled after
    standardising each coordinate, (4) per coordinate, and the same estimator on a Gaussian
    control: coordinate j ~ N(0, s_j^2) with s_j the observed per-coordinate standard deviation,
    centred over the pass like the noise and pooled the same way. Heterogeneous s_j make the
    pooled control heavy-tailed although every coordinate is Gaussian (methods.md §8 item 2).
    A second control uses robust scales s_j = IQR_j / 1.349 (equal for equal-scale heavy-tailed
    coordinates, whose sample sds scatter; the sd where the IQR is 0, mostly-tied coordinates).
    ``resampled``: optional ``[K, C]`` SGN on independently resampled minibatches (a cleaner
    per-coordinate sample, reported separately)."""
    p, m = noise.shape
    const = constant_columns(noise)
    keep = ~const
    s = noise.std(axis=0, dtype=np.float64)
    sk = s[keep]
    # the CCDF grid from per-coordinate sums (no [P, M] copy of the kept columns)
    rms = math.sqrt(
        float(np.square(noise, dtype=np.float64).sum(axis=0)[keep].sum()) / (p * keep.sum())
    )
    grid = np.geomspace(rms * 1e-2, float(np.abs(noise).max(axis=0)[keep].max()), 200)
    pooled = tail_index(noise, pooled=True)
    # each [P, M] array is reduced and released before the next one is made (memory: a few
    # copies of the noise, not seven); the draws keep their order (z, then zr)
    z = rng.standard_normal((p, m)) * s
    z -= z.mean(axis=0)
    control = tail_index(z, pooled=True)
    z = z[:, keep]
    alpha_ctrl, _ = _per_coordinate_alpha(z)
    ccdf_control = log_grid_ccdf(z, grid)
    del z
    # the same with robust scales (IQR / 1.349, the sd of a Gaussian): sample sds of
    # heavy-tailed coordinates scatter even when their scales are equal
    robust = _iqr(noise) / IQR_PER_SD
    robust = np.where(robust > 0, robust, s)  # mostly-tied coordinates: their sd
    zr = rng.standard_normal((p, m)) * robust
    zr -= zr.mean(axis=0)
    control_iqr = tail_index(zr, pooled=True)
    del zr, robust
    nz = noise[:, keep]
    pooled_nc = tail_index(nz, pooled=True)
    standardised = tail_index(nz / sk, pooled=True)
    alpha_coord, k_coord = _per_coordinate_alpha(nz)
    ccdf_noise = log_grid_ccdf(nz, grid)
    del nz
    out: dict[str, Any] = {
        "batches": p,
        "coordinates": m,
        "constant_coordinates": int(const.sum()),
        "zero_fraction": float(np.count_nonzero(noise == 0) / noise.size),
        "pooled_alpha": float(pooled.alpha),
        "pooled_block_size": pooled.block_size,
        "pooled_alpha_nonconstant": float(pooled_nc.alpha),
        "pooled_alpha_standardised": float(standardised.alpha),
        "pooled_alpha_gaussian_control": float(control.alpha),
        "pooled_alpha_gaussian_control_iqr": float(control_iqr.alpha),
        "per_coord_samples": k_coord,
        "per_coord_alpha_median": float(np.median(alpha_coord)),
        "per_coord_alpha_q10": float(np.quantile(alpha_coord, 0.1)),
        "per_coord_alpha_q90": float(np.quantile(alpha_coord, 0.9)),
        "per_coord_alpha_gaussian_control_median": float(np.median(alpha_ctrl)),
        "scale_spread_q90_over_q10": float(np.quantile(sk, 0.9) / np.quantile(sk, 0.1)),
        "scale_log10_std": float(np.log10(sk).std()),
    }
    arrays: dict[str, np.ndarray] = {
        "alpha_coord": alpha_coord.astype(np.float32),
        "alpha_control": alpha_ctrl.astype(np.float32),
        "ccdf_grid": grid,
        "ccdf_noise": ccdf_noise,
        "ccdf_control": ccdf_control,
        "pooled_rms": np.array(rms),
    }
    if resampled is not None:
        rc = constant_columns(resampled)
        ra, rk = _per_coordinate_alpha(resampled[:, ~rc])
        out["resampled_samples"] = rk
        out["resampled_per_coord_alpha_median"] = float(np.median(ra))
        out["resampled_per_coord_alpha_q10"] = float(np.quantile(ra, 0.1))
        out["resampled_per_coord_alpha_q90"] = float(np.quantile(ra, 0.9))
        out["resampled_pooled_alpha"] = float(tail_index(resampled, pooled=True).alpha)
        arrays["alpha_resampled"] = ra.astype(np.float32)
    return out, arrays


# --------------------------------------------------------------------------- Panigrahi


def panigrahi_stats(
    xi: np.ndarray,
    *,
    test: str,
    directions: int,
    level: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Gaussianity of SGN (Panigrahi et al. 2019, as reconstructed in methods.md §4a).

    ``xi``: ``[K, C]`` SGN vectors at fixed parameters. Per coordinate (non-constant ones) and on
    ``directions`` random unit projections u^T xi, the normality ``test`` (null: Gaussian with
    estimated mean and variance) gives p-values; the fraction *accepted* as Gaussian is one minus
    the fraction rejected after Benjamini–Hochberg (FDR) or Holm (FWER) control at ``level``,
    and, for reference, without correction. Also the pooled Simsekli alpha on the same samples."""
    const = constant_columns(xi)
    res = normality_test(xi[:, ~const], method=cast(Any, test))
    pv = np.atleast_1d(np.asarray(res.pvalue))
    bh = multiple_test(pv, method="bh", level=level)
    holm = multiple_test(pv, method="holm", level=level)
    proj = projection_normality_test(
        xi, n_directions=directions, rng=rng, method=cast(Any, test), correction="bh", level=level
    )
    proj_holm = multiple_test(proj.pvalue, method="holm", level=level)
    return {
        "coords_tested": int(pv.size),
        "coords_constant": int(const.sum()),
        "accepted_bh": 1.0 - float(bh.fraction_rejected),
        "accepted_holm": 1.0 - float(holm.fraction_rejected),
        "accepted_unadjusted": float(np.mean(pv > level)),
        "directions_accepted_bh": 1.0 - float(proj.fraction_rejected),
        "directions_accepted_holm": 1.0 - float(proj_holm.fraction_rejected),
        "directions_unadjusted": float(np.mean(proj.pvalue > level)),
        "pooled_alpha": float(tail_index(xi, pooled=True).alpha),
    }


# --------------------------------------------------------------------------- Battash


def stratified_subset(
    groups: np.ndarray, eligible: np.ndarray, total: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted column indices: up to ceil(total / #groups) eligible columns per group, seeded."""
    labels = np.unique(groups)
    per = max(1, math.ceil(total / max(labels.size, 1)))
    chosen = []
    for g in labels:
        cols = np.flatnonzero((groups == g) & eligible)
        if cols.size > per:
            cols = np.sort(rng.choice(cols, size=per, replace=False))
        chosen.append(cols)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def battash_stats(
    xi: np.ndarray,
    *,
    groups: np.ndarray,
    names: Sequence[str],
    numels: Sequence[int],
    fit_coords: int,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per-parameter Gaussian vs SαS (Battash, Wolf & Lindenbaum 2024; methods.md §3).

    ``xi``: ``[K, C]`` SGN; ``groups[c]`` the index into ``names`` of column c's parameter
    tensor (``numels`` its size). Up to ``fit_coords`` columns with a non-zero interquartile
    range (stratified over tensors, seeded) are fitted by :func:`compare_noise_models` (SαS MLE,
    location fixed at 0: SGN is centred; winner by AIC, and by KS distance for reference). Columns
    with a zero IQR are *degenerate* (mostly one value with rare jumps) and counted, not fitted.
    The parameter-weighted fraction weighs each tensor's fraction by its size."""
    degenerate = zero_iqr_columns(xi)
    sub = stratified_subset(groups, ~degenerate, fit_coords, rng)
    if sub.size == 0:
        raise ValueError("no coordinate has a non-zero interquartile range: nothing to fit")
    cmp = compare_noise_models(xi[:, sub], loc=0.0, stable_method="mle", criterion="aic")
    alpha = np.atleast_1d(np.asarray(cmp.stable_alpha, dtype=np.float64))
    scale = np.atleast_1d(np.asarray(cmp.stable_scale, dtype=np.float64))
    wins = np.atleast_1d(np.asarray(cmp.winner)) == "stable"
    ks_wins = np.atleast_1d(np.asarray(cmp.ks_stable)) < np.atleast_1d(np.asarray(cmp.ks_gaussian))
    g_sub = groups[sub]
    layers = []
    weighted, weight = 0.0, 0
    for k, name in enumerate(names):
        in_layer = g_sub == k
        selected = int(np.count_nonzero(groups == k))
        if not selected:
            continue
        n_fit = int(in_layer.sum())
        row: dict[str, Any] = {
            "param": name,
            "selected": selected,
            "degenerate": int(np.count_nonzero(degenerate & (groups == k))),
            "fitted": n_fit,
            "fraction_stable": float(wins[in_layer].mean()) if n_fit else None,
            "fraction_stable_ks": float(ks_wins[in_layer].mean()) if n_fit else None,
            "alpha_median": float(np.median(alpha[in_layer])) if n_fit else None,
            "alpha_q10": _q(alpha[in_layer], 0.1),
            "alpha_q90": _q(alpha[in_layer], 0.9),
            "scale_median": float(np.median(scale[in_layer])) if n_fit else None,
        }
        layers.append(row)
        if n_fit:
            weighted += numels[k] * row["fraction_stable"]
            weight += numels[k]
    summary = {
        "selected": int(xi.shape[1]),
        "degenerate": int(degenerate.sum()),
        "fitted": int(sub.size),
        "fraction_stable": float(wins.mean()),
        "fraction_stable_ks": float(ks_wins.mean()),
        "fraction_stable_weighted": weighted / weight,
        "alpha_median": float(np.median(alpha)),
        "alpha_q10": float(np.quantile(alpha, 0.1)),
        "alpha_q90": float(np.quantile(alpha, 0.9)),
        "fraction_alpha_below_1_9": float(np.mean(alpha < 1.9)),
        "scale_median": float(np.median(scale)),
    }
    arrays = {
        "columns": sub.astype(np.int32),
        "alpha": alpha,
        "scale": scale,
        "group": g_sub.astype(np.int16),
        "stable_wins": wins,
        "loglik_gain": (
            np.asarray(cmp.loglik_stable, dtype=np.float64)
            - np.asarray(cmp.loglik_gaussian, dtype=np.float64)
        )
        .reshape(-1)
        .astype(np.float32),
    }
    return summary, layers, arrays


def parameter_map(
    xi: np.ndarray, shape: Sequence[int], *, method: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """SαS alpha and scale of every coordinate of one parameter tensor (``xi``: ``[K, numel]``),
    reshaped to ``shape``; degenerate (zero-IQR) coordinates are NaN and counted."""
    degenerate = zero_iqr_columns(xi)
    alpha = np.full(xi.shape[1], np.nan)
    scale = np.full(xi.shape[1], np.nan)
    if (~degenerate).any():
        fit = fit_stable(xi[:, ~degenerate], method=cast(Any, method), loc=0.0)
        alpha[~degenerate] = np.atleast_1d(fit.alpha)
        scale[~degenerate] = np.atleast_1d(fit.scale)
    return alpha.reshape(shape), scale.reshape(shape), int(degenerate.sum())


def jump_stats(
    base_step_noise: np.ndarray, step_noise: np.ndarray, quantile: float = 0.99
) -> dict[str, Any]:
    """Jumps of the per-step noise ``eta * xi`` relative to the branch point.

    ``tau_j`` is the ``quantile`` of ``|eta_0 xi_0j|`` at the branch point (base lr and batch);
    the jump frequency of an arm is the fraction of its ``|eta xi_kj|`` above ``tau_j`` (about
    1 - quantile when nothing changed), the jump size the median exceedance ``|eta xi| / tau``
    over those jumps. Columns with tau_j = 0 are left out (counted)."""
    tau = np.quantile(np.abs(base_step_noise), quantile, axis=0)
    ok = tau > 0
    ratio = np.abs(step_noise[:, ok]) / tau[ok]
    jumps = ratio > 1.0
    return {
        "jump_frequency": float(jumps.mean()),
        "jump_size": float(np.median(ratio[jumps])) if jumps.any() else None,
        "jump_columns": int(ok.sum()),
    }
