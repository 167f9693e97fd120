"""Numpy-only statistics of the escape analysis (Battash & Lindenbaum; methods.md §3).

Confidence intervals (all two-sided at ``level``): binomial proportions by Wilson's score
interval; mean exit steps under right-censoring by the exact Poisson (gamma) interval of the
exit rate (events over exposure, the maximum-likelihood estimate of a constant per-step exit
probability, as :meth:`gradnoise.levy.SDEResult.mean_exit_steps`); differences of arm means over
seeds by Welch's t interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as st

from ... import levy


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of a binomial proportion, Wilson score interval."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    z = float(st.norm.ppf(0.5 + level / 2))
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else max(0.0, mid - half)
    hi = 1.0 if successes == n else min(1.0, mid + half)
    return p, lo, hi


def censored_mean(
    exit_step: np.ndarray, exposure_step: np.ndarray, level: float = 0.95
) -> dict[str, Any]:
    """Mean exit step under right-censoring with an exact Poisson interval.

    ``exit_step``: first exit per path (-1: none); ``exposure_step``: steps the path was
    followed (its exit step, or where it was censored). The estimate is total exposure over
    events (the MLE under a constant per-step hazard; the sample mean when every path exited);
    its interval inverts the gamma interval of the rate events/exposure. No event: the estimate
    is infinite and the interval's lower end is exposure / chi2 quantile."""
    events = int(np.count_nonzero(exit_step >= 0))
    exposure = float(np.sum(np.where(exit_step >= 0, exit_step, exposure_step)))
    a = 1 - level
    rate_hi = st.chi2.ppf(1 - a / 2, 2 * events + 2) / (2 * exposure) if exposure else math.inf
    rate_lo = st.chi2.ppf(a / 2, 2 * events) / (2 * exposure) if events and exposure else 0.0
    return {
        "paths": int(exit_step.size),
        "exits": events,
        "exposure_steps": exposure,
        "mean_steps": exposure / events if events else math.inf,
        "ci_low": 1.0 / rate_hi if rate_hi > 0 else math.inf,
        "ci_high": 1.0 / rate_lo if rate_lo > 0 else math.inf,
    }


def t_mean(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of ``values`` (NaN left out) with its Student t interval; no interval for fewer
    than 2 values (n stated)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    out: dict[str, Any] = {"mean": float(v.mean()) if v.size else None, "n": int(v.size)}
    out["ci_low"] = out["ci_high"] = None
    if v.size >= 2:
        half = (
            float(st.t.ppf(0.5 + level / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
        )
        out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """mean(a) - mean(b) with Welch's t interval (n stated; a zero variance in both arms gives
    a zero-width interval; one value per arm gives no interval)."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = float(a_.mean() - b_.mean())
    out = {"diff": d, "n": [int(a_.size), int(b_.size)], "ci_low": None, "ci_high": None}
    if a_.size < 2 or b_.size < 2:
        return out
    va, vb = a_.var(ddof=1) / a_.size, b_.var(ddof=1) / b_.size
    se = math.sqrt(va + vb)
    if se == 0:
        out["ci_low"] = out["ci_high"] = d
        return out
    df = (va + vb) ** 2 / (va**2 / (a_.size - 1) + vb**2 / (b_.size - 1))
    half = float(st.t.ppf(0.5 + level / 2, df)) * se
    out["ci_low"], out["ci_high"] = d - half, d + half
    return out


def heavy_theory(alpha: np.ndarray, scale: np.ndarray, lr: float, box: float) -> Any:
    """:func:`gradnoise.levy.exit_time_theory` for the box ``|theta_j - theta*_j| < box`` over
    the coordinates with alpha < 2 and a positive scale (Gaussian coordinates escape at Kramers
    rates, exponentially small at widths where the jumps matter, and are left out), or None."""
    heavy = (alpha < 2.0) & (scale > 0) & np.isfinite(alpha)
    if not heavy.any():
        return None
    return levy.exit_time_theory(alpha[heavy], scale[heavy], lr, half_widths=box), heavy


def calibrate_box(alpha: np.ndarray, scale: np.ndarray, lr: float, target_steps: float) -> float:
    """The half-width w at which the heavy-tailed theory predicts a mean first box exit of
    ``target_steps`` steps (bisection in log w; Lambda decreases in w). Without heavy-tailed
    coordinates: 10 x the largest per-step noise scale ``lr scale_j``."""
    if heavy_theory(alpha, scale, lr, 1.0) is None:
        return 10.0 * lr * float(np.max(scale)) if np.max(scale) > 0 else 1.0
    lo, hi = 1e-12, 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        th = heavy_theory(alpha, scale, lr, mid)[0]  # type: ignore[index]
        if th.mean_exit_steps < target_steps:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return math.sqrt(lo * hi)


def layer_exit_prediction(
    alpha: np.ndarray, scale: np.ndarray, lr: float, box: float, groups: np.ndarray, n: int
) -> tuple[np.ndarray, float]:
    """(P(first box exit in tensor k) = sum over its coordinates of lambda_j / Lambda, predicted
    mean first box exit step); zeros and inf without heavy-tailed coordinates."""
    got = heavy_theory(alpha, scale, lr, box)
    if got is None:
        return np.zeros(n), math.inf
    th, heavy = got
    return np.bincount(groups[heavy], weights=th.exit_probability, minlength=n), float(
        th.mean_exit_steps
    )


def loglog_slope(x: Sequence[float], y: Sequence[float], w: Sequence[float]) -> dict[str, Any]:
    """Weighted least-squares slope of log y on log x (weights ``w``, e.g. the number of exits:
    the inverse variance of log of a censored mean), with its standard error; points with a
    non-finite y or zero weight are left out. None when fewer than 2 points remain."""
    x_, y_, w_ = (np.asarray(v, dtype=np.float64) for v in (x, y, w))
    ok = np.isfinite(y_) & (w_ > 0) & (y_ > 0) & (x_ > 0)
    if ok.sum() < 2:
        return {"slope": None, "se": None, "points": int(ok.sum())}
    lx, ly, ww = np.log(x_[ok]), np.log(y_[ok]), w_[ok]
    xm, ym = np.average(lx, weights=ww), np.average(ly, weights=ww)
    sxx = float(np.sum(ww * (lx - xm) ** 2))
    if sxx == 0:
        return {"slope": None, "se": None, "points": int(ok.sum())}
    slope = float(np.sum(ww * (lx - xm) * (ly - ym)) / sxx)
    se = None
    if ok.sum() > 2:
        resid = ly - ym - slope * (lx - xm)
        se = float(math.sqrt(np.sum(ww * resid**2) / (ok.sum() - 2) / sxx))
    else:
        se = float(math.sqrt(1.0 / sxx))  # the weights' own variance (1 / exits) only
    return {"slope": slope, "se": se, "points": int(ok.sum())}


def decay_verdict(
    arms: Mapping[str, Mapping[str, Sequence[float]]], level: float = 0.95
) -> dict[str, Any]:
    """Do the data support "learning-rate decay helps through reduced noise"?

    ``arms[arm][metric]``: one value per seed, for arms ``constant``, ``lr-decay``,
    ``batch-increase`` (and optionally ``lr-decay-small-batch``) and metrics ``test_acc`` and
    ``jump_frequency``. Differences against ``constant`` with Welch intervals at ``level``:

    * **supported** when decay helps (test-accuracy gain of lr-decay, interval above 0), its
      jump frequency drops (interval below 0), and the noise reduction alone helps as well
      (batch-increase gain, interval above 0); and, when ``lr-decay-small-batch`` (the smaller
      step with the noise kept) is run, its gain is below lr-decay's (interval below 0);
    * **not supported** when decay does not help (lr-decay gain interval at or below 0), or it
      helps while the noise reduction alone does not (batch-increase gain interval at or below
      0), or keeping the noise does not lose the gain (small-batch minus lr-decay interval at or
      above 0);
    * **inconclusive** otherwise (an interval straddles 0, or too few seeds for intervals).
    """
    for need in ("constant", "lr-decay", "batch-increase"):
        if need not in arms:
            raise ValueError(f"the verdict needs the {need!r} arm; got {sorted(arms)}")
    gain = welch(arms["lr-decay"]["test_acc"], arms["constant"]["test_acc"], level)
    jump = welch(arms["lr-decay"]["jump_frequency"], arms["constant"]["jump_frequency"], level)
    batch = welch(arms["batch-increase"]["test_acc"], arms["constant"]["test_acc"], level)
    small = None
    if "lr-decay-small-batch" in arms:
        small = welch(arms["lr-decay-small-batch"]["test_acc"], arms["lr-decay"]["test_acc"], level)
    tests = [gain, jump, batch] + ([small] if small else [])
    out: dict[str, Any] = {
        "level": level,
        "decay_gain": gain,
        "decay_jump_change": jump,
        "batch_gain": batch,
        "small_batch_minus_decay": small,
    }
    if any(t["ci_low"] is None for t in tests):
        out["verdict"] = "inconclusive"
        out["reason"] = "fewer than 2 seeds per arm: no intervals"
        return out

    def above(t: Mapping[str, Any]) -> bool:
        return bool(t["ci_low"] > 0)

    def below(t: Mapping[str, Any]) -> bool:
        return bool(t["ci_high"] < 0)

    if above(gain) and below(jump) and above(batch) and (small is None or below(small)):
        out["verdict"], out["reason"] = (
            "supported",
            "decay raises test accuracy, lowers the jump frequency, and a larger batch at the "
            "same step (noise reduction alone) raises it too"
            + ("; the smaller step with the noise kept gains less" if small else ""),
        )
    elif gain["ci_high"] <= 0:
        out["verdict"], out["reason"] = "not supported", "decay does not raise test accuracy"
    elif above(gain) and batch["ci_high"] <= 0:
        out["verdict"], out["reason"] = (
            "not supported",
            "decay helps but the same noise reduction by a larger batch does not",
        )
    elif above(gain) and small is not None and small["ci_low"] >= 0:
        out["verdict"], out["reason"] = (
            "not supported",
            "the smaller step helps as much with the noise kept (smaller batch)",
        )
    else:
        out["verdict"], out["reason"] = "inconclusive", "an interval includes 0"
    return out


#: the smallest barrier / D at which the Kramers line is drawn (relative corrections O(D/dU))
KRAMERS_MIN_RATIO = 3.0


def axis_quadratic(du_plus: Any, du_minus: Any, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Slope g_j and curvature h_j of the 1-D quadratic ``U_j(x) = g x + h x^2/2`` through the
    measured loss rises ``du_plus = U_j(+w)``, ``du_minus = U_j(-w)`` (``U_j(0) = 0``)."""
    dp, dm = np.asarray(du_plus, np.float64), np.asarray(du_minus, np.float64)
    return (dp - dm) / (2 * width), (dp + dm) / width**2


def kramers_box_rates(
    slope: Any, curvature: Any, width: float, diffusion: Any
) -> dict[str, np.ndarray]:
    """Small-noise (Kramers) exit rates per unit time of ``dX = -U'(X) dt + sqrt(2 D) dW`` with
    ``U(x) = g x + h x^2/2`` from the interval ``(-w, w)``, per coordinate (arrays broadcast).

    With h > 0 the well's minimum is ``m = -g/h``; when it lies inside the interval, each side
    s = +-1 is a non-critical boundary with outward slope ``|U'(s w)| = h w + s g`` and barrier
    ``dU_s = U(s w) - U(m) = (h w + s g)^2 / (2 h)``; the rate through it is
    ``|U'(s w)| sqrt(h / (2 pi D)) exp(-dU_s / D)`` (Laplace's method on the exact mean exit time;
    for g = 0 it is :func:`gradnoise.levy.exit_time_theory`'s quadratic-cut formula), with
    relative corrections O(D / dU). Returns ``rate`` (the two sides summed; NaN where there is no
    barrier: h <= 0 or the minimum outside the interval), ``barrier`` (the lower side's dU, NaN
    likewise) and ``ratio`` = barrier / D.
    """
    g, h, d = np.broadcast_arrays(
        np.asarray(slope, np.float64), np.asarray(curvature, np.float64),
        np.asarray(diffusion, np.float64),
    )  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ok = (h > 0) & (np.abs(g) < h * width) & (d > 0)
        hs = np.where(ok, h, 1.0)
        rate = np.zeros(h.shape)
        barrier = np.full(h.shape, np.inf)
        for s in (1.0, -1.0):
            out_slope = np.where(ok, hs * width + s * g, 1.0)
            du = out_slope**2 / (2 * hs)
            rate += out_slope * np.sqrt(hs / (2 * np.pi * d)) * np.exp(-du / d)
            barrier = np.minimum(barrier, du)
    rate = np.where(ok, rate, np.nan)
    barrier = np.where(ok, barrier, np.nan)
    return {"rate": rate, "barrier": barrier, "ratio": barrier / np.where(d > 0, d, np.nan)}


def gauss_box_theory(
    du_plus: np.ndarray,
    du_minus: np.ndarray,
    width: float,
    scale: np.ndarray,
    lr: float,
    min_ratio: float = KRAMERS_MIN_RATIO,
    measured: np.ndarray | None = None,
) -> dict[str, Any]:
    """Kramers prediction of the Gaussian SDE's mean first box exit (steps), from the measured
    loss profile of each coordinate axis at the box's edges.

    The Gaussian SDE ``theta_j <- theta_j - lr (d_j L + scale_j S_j)``, ``S_j ~ N(0, 2)``, has
    ``D_j = lr scale_j^2``. Model (stated in the report): each coordinate moves in its own 1-D
    potential, the loss along its axis through theta* (the others held at theta*: couplings are
    ignored), approximated by the quadratic through the measured ``L(theta* +- w e_j) - L*``
    (:func:`axis_quadratic`); the box exit rate is ``Lambda = sum_j`` of
    :func:`kramers_box_rates`, the mean first exit ``1 / (Lambda lr)`` steps. Only coordinates
    with ``scale_j > 0`` enter. The prediction is given (``mean_steps``) only in its regime:
    every noisy coordinate has a barrier (convex axis, minimum inside the box) of at least
    ``min_ratio`` x D_j; otherwise ``mean_steps`` is None and the counts say why. ``measured``
    (boolean mask): the coordinates whose axis was measured; if some noisy coordinate was not,
    the counts cover the measured ones and there is no prediction (``complete`` False).
    """
    noisy = np.asarray(scale) > 0
    on = noisy if measured is None else noisy & np.asarray(measured, dtype=bool)
    complete = bool(np.array_equal(on, noisy))
    g, h = axis_quadratic(np.asarray(du_plus)[on], np.asarray(du_minus)[on], width)
    d = lr * np.asarray(scale, np.float64)[on] ** 2
    k = kramers_box_rates(g, h, width, d)
    ratio = k["ratio"]
    no_barrier = int(np.count_nonzero(~np.isfinite(ratio)))
    low = int(np.count_nonzero(np.isfinite(ratio) & (ratio < min_ratio)))
    fin = ratio[np.isfinite(ratio)]
    out: dict[str, Any] = {
        "coordinates": int(on.sum()),
        "no_barrier": no_barrier,
        "below_min_ratio": low,
        "min_ratio": min_ratio,
        "ratio_median": float(np.median(fin)) if fin.size else None,
        "ratio_min": float(fin.min()) if fin.size else None,
        "curvature_median": float(np.median(h)) if h.size else None,
        "complete": complete,
        "in_regime": bool(complete and on.any() and no_barrier == 0 and low == 0),
        "mean_steps": None,
    }
    if out["in_regime"]:
        total = float(np.sum(k["rate"]))
        out["mean_steps"] = 1.0 / (total * lr) if total > 0 else math.inf
    return out


def rate_ratio(
    events_a: int, exposure_a: float, events_b: int, exposure_b: float, level: float = 0.95
) -> dict[str, Any]:
    """Ratio of two Poisson exit rates (events / exposure), a over b, with the exact conditional
    interval: given n = events_a + events_b, events_a ~ Binomial(n, pi) with pi = r E_a / (r E_a +
    E_b) (r the rate ratio), so the Clopper–Pearson interval of pi maps to one for r. No events
    at all: no interval (None)."""
    n = events_a + events_b
    out: dict[str, Any] = {
        "ratio": None,
        "ci_low": None,
        "ci_high": None,
        "events": [events_a, events_b],
    }
    if n == 0 or exposure_a <= 0 or exposure_b <= 0:
        return out
    a = 1 - level
    lo = st.beta.ppf(a / 2, events_a, n - events_a + 1) if events_a > 0 else 0.0
    hi = st.beta.ppf(1 - a / 2, events_a + 1, n - events_a) if events_a < n else 1.0

    def to_ratio(p: float) -> float:
        return math.inf if p >= 1 else p / (1 - p) * exposure_b / exposure_a

    rb = events_b / exposure_b
    out["ratio"] = (events_a / exposure_a) / rb if events_b else math.inf
    out["ci_low"], out["ci_high"] = to_ratio(float(lo)), to_ratio(float(hi))
    return out


def sharpness_verdict(ratio: Mapping[str, Any]) -> str:
    """``"faster"`` / ``"slower"`` (escape from the sharper minimum, rate-ratio interval clear of
    1), ``"no difference detected"`` (interval includes 1), ``"no exits"`` (no interval)."""
    if ratio.get("ci_low") is None:
        return "no exits"
    if ratio["ci_low"] > 1:
        return "faster"
    if ratio["ci_high"] < 1:
        return "slower"
    return "no difference detected"
