"""Lévy-driven SDEs, escape times and exit directions (Battash & Lindenbaum; Imkeller–Pavlyukevich).

numpy/scipy only (no torch): a ``grad_fn`` is any callable on numpy arrays.

Conventions (``tests/test_levy.py`` checks each against simulation, except where said)
-----------------------------------------------------------------------------------------

**Noise law.** SαS(alpha, sigma) has characteristic function ``phi(u) = exp(-sigma^a |u|^a)``
(beta = 0, where Nolan's S0 and S1 parameterisations coincide; it is
``scipy.stats.levy_stable(alpha, 0, scale=sigma)`` and ``gradnoise.stats.sample_stable(alpha,
scale=sigma)``). ``alpha = 2`` is the Gaussian N(0, 2 sigma^2).

**Lévy measure.** For alpha < 2, SαS(alpha, 1) is the law at time 1 of the Lévy process with Lévy
measure ``nu(dy) = c_alpha |y|^(-1-alpha) dy``, ::

    c_alpha = Gamma(alpha + 1) sin(pi alpha / 2) / pi          (levy_measure_constant)

Derivation: ``int (1 - cos(u y)) c |y|^(-1-a) dy = 2 c |u|^a int_0^inf (1 - cos s) s^(-1-a) ds
= 2 c |u|^a (-Gamma(-a) cos(pi a/2))`` must equal ``|u|^a``; Euler's reflection formula
``-Gamma(-a) = pi / (Gamma(1+a) sin(pi a))`` and ``sin(pi a) = 2 sin(pi a/2) cos(pi a/2)`` give
c_alpha. (``Gamma(alpha) sin(pi alpha/2) / pi = c_alpha / alpha`` is the *one-sided tail*
constant, not the Lévy-measure constant: ``P(X > x) ~ (c_alpha/alpha) x^-alpha`` and
``P(|X| > x) ~ (2 c_alpha/alpha) sigma^alpha x^-alpha``.) With scale sigma the measure is
``c_alpha sigma^alpha |y|^(-1-alpha) dy``; c_2 = 0 (no jumps).

**SDE and its Euler scheme.** Per coordinate j (independent 1-D Lévy processes L_j with
``L_j(1) ~ SαS(alpha_j, 1)``)::

    d theta_j = -d_j U(theta) dt + eps_j dL_j(t),       eps_j = lr^((alpha_j - 1)/alpha_j) sigma_j

A step of length ``lr`` of L_j is SαS(alpha_j, lr^(1/alpha_j)), so the Euler step is::

    theta_j <- theta_j - lr d_j U(theta) + lr^(1/alpha_j) eps_j S_j = theta_j - lr (d_j U + sigma_j S_j)

with S_j ~ SαS(alpha_j, 1) i.i.d.: this is SGD with step ``lr`` whose gradient noise is
SαS(alpha_j, sigma_j) -- ``scale`` = sigma_j is the scale of the *gradient noise* (what
``gradnoise.stats.fit_stable`` estimates from SGN samples), not the SDE amplitude eps_j
(:func:`sde_amplitude` converts). Time is ``t = step * lr``.

**Escape from a basin (alpha < 2; Imkeller & Pavlyukevich 2006).** A well at 0 inside the basin
``(-b_j, a_j)`` of coordinate j. As eps -> 0 the process sits near the minimum and leaves the
basin with the first jump that is larger than the distance to the boundary; jumps of eps L_j
larger than ``a`` (or below ``-b``) arrive at rate ``nu_eps(...) = (c_alpha/alpha) eps^alpha
(a^-alpha + b^-alpha)``::

    lambda_j = (c_alpha_j / alpha_j) eps_j^alpha_j (a_j^-alpha_j + b_j^-alpha_j)   (per unit time)
    Lambda = sum_j lambda_j,  E[tau] ~ 1/Lambda,  P(exit along j) ~ lambda_j / Lambda,
    P(tau > t) ~ exp(-Lambda t)

independent of the depth of the well (polynomial in 1/eps). Per Euler step this is the exit
probability ``p = Lambda lr = sum_j (c_alpha_j/alpha_j) (lr sigma_j)^alpha_j (a_j^-alpha_j +
b_j^-alpha_j)``, i.e. ``P(|lr sigma S| > width)`` from the stable tail, so the mean exit *step*
is ``1/(Lambda lr)``.

Regime: leading order in eps. It holds when (i) the stationary spread of the well,
``eps (alpha h)^(-1/alpha)`` for curvature h, is small against the widths (corrections of relative
order (spread/width)^alpha -- for the discrete well ``(spread/width)^alpha = p / ((2 c/alpha)
(1 - (1 - lr h)^alpha))``; simulated at lr h = 0.5 the mean exit time is low by about 1x, 3x and
5x that for alpha = 1.2, 1.5, 1.8, so alpha near 2 needs much smaller noise), (ii) the mean exit
time is long against the relaxation time 1/h, (iii) the per-step jump scale ``lr sigma`` is far
below the widths (the stable tail is then in its power-law range), and (iv) a saddle on the way
out repels quickly: near a flat saddle a jump that lands just inside lingers and a second jump
can finish the exit, a correction of lower order in eps (alpha = 1.5, lr h = 0.5: -8% at
p = 5e-4 and -4% at 1.25e-4 for a saddle 3x flatter than the well, -1% and -0.4% for one 3x
steeper). It needs no
lr h << 1: the discrete scheme escapes by one large jump as well, as long as the well is stable
(lr h < 2).

**alpha = 2 (Kramers).** Here the noise is Brownian, ``eps_j dL_j = sqrt(2 D_j) dW_j`` with
``D_j = eps_j^2 = lr sigma_j^2`` (SαS(2, sigma) has variance 2 sigma^2), and escape needs the
barrier: for a boundary that is a saddle (U' = 0) of height ``Delta U_j`` above the minimum, with
curvatures h_j at the minimum and h_s at the saddle, the mean first time to *reach* the saddle is
``pi / sqrt(h_j h_s) exp(Delta U_j / D_j)`` (half the Eyring–Kramers transition time), i.e. the
side's rate is ``sqrt(h_j h_s)/pi exp(-Delta U/D)``; for a quadratic well ``U = h x^2/2`` cut at the
boundary w (non-critical point, U'(w) = h w) it is ``h w sqrt(h/(2 pi D)) exp(-h w^2/(2 D))``.
Exponential in Delta U / D, with relative corrections O(D / Delta U) (regime Delta U >> D) and,
for the Euler scheme, O(lr h) in the exponent and O(sqrt(lr h)) in the prefactor (lr h << 1; the
discrete chain sees the crossing late: at lr h = 0.02 the simulated mean time to the saddle is
9-14% above Kramers for Delta U / D in [2, 4]). The tests check the saddle law's exponential
dependence on the barrier. The quadratic-cut formula is tested for its arithmetic only: there the
drift pushes back at the boundary and discrete monitoring misses more excursions (lr h = 0.02,
Delta U / D = 3-5: simulated mean exit times 26-33% above the exact continuous-time ones, which
are themselves 10-13% above the formula).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gamma as gamma_fn

from .stats._common import RNGLike, StatResult, as_generator

__all__ = [
    "Box",
    "ExitTheory",
    "SDEResult",
    "exit_probabilities",
    "exit_time_theory",
    "levy_measure_constant",
    "sde_amplitude",
    "simulate_sde",
]

GradFn = Callable[[np.ndarray], Any]
StopFn = Callable[[np.ndarray], Any]

# Paths are simulated in blocks of rows (paths) of about this many coordinates, all steps of one
# block before the next: the block's state and work arrays stay in the CPU's L2 cache. The block
# layout (and so the random stream of each path) depends on d only, never on ``workers``.
_BLOCK_ELEMS = 1 << 15
# Refuse to allocate a recorded-path array larger than this (thin with ``record_every``).
MAX_RECORD_BYTES = 4 << 30


def levy_measure_constant(alpha: Any) -> np.ndarray | float:
    """c_alpha of the Lévy measure ``c_alpha |y|^(-1-alpha) dy`` of SαS(alpha, 1).

    ``c_alpha = Gamma(alpha + 1) sin(pi alpha/2) / pi`` (derived in the module docstring); the
    tails of SαS(alpha, sigma) are ``P(|X| > x) ~ (2 c_alpha / alpha) sigma^alpha x^-alpha``.
    ``alpha = 2`` gives 0 (Gaussian: no jumps); alpha = 1 gives 1/pi (Cauchy).

    Example:
        >>> round(float(levy_measure_constant(1.0)), 6)
        0.31831
    """
    a = _check_alpha(alpha)
    c = np.where(a == 2.0, 0.0, gamma_fn(a + 1.0) * np.sin(np.pi * a / 2.0) / np.pi)
    return float(c) if c.ndim == 0 else c


def sde_amplitude(alpha: Any, scale: Any, lr: float) -> np.ndarray | float:
    """The SDE noise amplitude ``eps = lr^((alpha-1)/alpha) * scale`` of SGD with step ``lr`` and
    SαS(alpha, scale) gradient noise (``lr^(1/alpha) eps = lr * scale``: see the module docstring).

    Example:
        >>> sde_amplitude(2.0, 1.0, 0.01)
        0.1
    """
    a = _check_alpha(alpha)
    sc = np.asarray(scale, dtype=np.float64)
    _check_positive(sc, "scale")
    _check_positive(np.asarray(lr, dtype=np.float64), "lr")
    eps = lr ** ((a - 1.0) / a) * sc
    return float(eps) if eps.ndim == 0 else eps


def _check_alpha(alpha: Any) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)
    if not np.all((a > 0) & (a <= 2)):
        raise ValueError(f"alpha must lie in (0, 2], got {alpha}")
    return a


def _check_positive(x: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError(f"{name} must be finite and > 0, got {x}")


# --------------------------------------------------------------------------------------------
# Sampling: symmetric Chambers–Mallows–Stuck, in blocks, from raw bits
# --------------------------------------------------------------------------------------------


class _SasStream:
    """Scaled SαS(alpha_j, 1) * step_scale_j variates, one row of d coordinates per path.

    ``gradnoise.stats.sample_stable`` (general beta, float64, ~130 ns per variate) is far too slow
    for 10^10 draws, so this is the same Chambers–Mallows–Stuck formula specialised to beta = 0
    and rewritten so that float32 keeps full relative accuracy in the tails. With
    ``t = pi/2 - |V|`` (t in (0, pi/2], fine-grained near 0 where the tail lives), W ~ Exp(1) and
    ``c0 = (2 - alpha) pi/2``, the symmetric CMS variate
    ``sin(alpha V) / cos(V)^(1/alpha) * (cos((1-alpha) V) / W)^((1-alpha)/alpha)`` is ::

        |X| = |sin(c0 + alpha t)| * sin(t)^(-1/alpha) * (sin(c0 + (alpha-1) t) / W)^((1-alpha)/alpha)

    (every sine is evaluated at an argument whose float rounding is relative to its value, so
    alpha near 2, where sin(alpha V) -> 0 as V -> pi/2, stays accurate), with a random sign. It is
    evaluated as ``|sin(c0 + alpha t)| / sin t * exp(k log(sin(c0 + (alpha-1) t) / (sin t W)) +
    log step_scale)`` with ``k = (1-alpha)/alpha`` (``-1/alpha = -1 - k``): six transcendental
    calls per variate (three sines, two logs, one exp), every factor a ratio or product that keeps
    float32's relative accuracy (``benchmarks/levy.py`` times it against the floor). Bits: float32 uses one 64-bit word per variate -- 32 bits for t (smallest t =
    pi 2^-34: the law is exact except on an event of probability 2^-32 per draw, whose value is
    clipped at about the 1 - 2^-32 quantile), 1 bit for the sign, 23 for W (W <= 16.6: an event of
    probability 6e-8 per draw has W clipped, which moves |X| by a factor W^((alpha-1)/alpha) and
    for alpha < 1 clips W >= 6e-8 instead); float64 uses two words (53 bits for t, 52 for W).
    """

    def __init__(
        self,
        alpha: np.ndarray,
        step_scale: np.ndarray,
        rows: int,
        dtype: np.dtype,
        seed: np.random.SeedSequence,
    ) -> None:
        d = alpha.shape[0]
        self.dtype = dtype
        self.bitgen = np.random.SFC64(seed)
        f = dtype.type
        self.alpha = alpha.astype(dtype)
        self.neg_alpha_m1 = (1.0 - alpha).astype(dtype)
        self.c0 = ((2.0 - alpha) * np.pi / 2.0).astype(dtype)
        self.k = ((1.0 - alpha) / alpha).astype(dtype)
        self.log_scale = np.log(step_scale).astype(dtype)
        self.out = np.empty((rows, d), dtype=dtype)
        self.w1 = np.empty((rows, d), dtype=dtype)
        self.w2 = np.empty((rows, d), dtype=dtype)
        # (unsigned type, t shift, W shift, sign shift, bits of t, bits of W)
        u, t_shift, w_shift, sign_shift, t_bits, w_bits = (
            (np.uint32, 0, 9, 31, 32, 23)
            if dtype == np.float32
            else (np.uint64, 11, 12, 63, 53, 52)
        )
        self.ibuf = np.empty((rows, d), dtype=u)
        self.t_shift, self.w_shift, self.sign_shift = u(t_shift), u(w_shift), u(sign_shift)
        # t = (k + 1/2) 2^-t_bits pi/2 and u2 = (k + 1/2) 2^-w_bits, both exact in ``dtype``
        self.t_mul, self.t_add = f(np.pi / 2 * 2.0**-t_bits), f(np.pi / 2 * 2.0 ** -(t_bits + 1))
        self.w_mul, self.w_add = f(2.0**-w_bits), f(2.0 ** -(w_bits + 1))

    def draw(self, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (m, d) with new variates; returns ``out``."""
        m, d = out.shape
        t, w = self.w1[:m], self.w2[:m]
        ibuf = self.ibuf[:m]
        if self.dtype == np.float32:
            # two independent 32-bit halves, each contiguous: t from the first, sign + W from
            # the second (bit 0: sign, bits 9-31: W)
            raw = self.bitgen.random_raw(m * d).view(np.uint32)
            t_bits, w_bits = raw[: m * d].reshape(m, d), raw[m * d :].reshape(m, d)
            # the cast to float is fused into the multiplication (one pass, same rounding)
            np.multiply(t_bits, self.t_mul, out=t, dtype=self.dtype)
            np.right_shift(w_bits, self.w_shift, out=ibuf)
        else:
            raw = self.bitgen.random_raw(2 * m * d)
            t_bits, w_bits = raw[: m * d].reshape(m, d), raw[m * d :].reshape(m, d)
            np.right_shift(t_bits, self.t_shift, out=ibuf)
            np.multiply(ibuf, self.t_mul, out=t, dtype=self.dtype)
            np.right_shift(w_bits, self.w_shift, out=ibuf)
        t += self.t_add
        # w <- sin(c0 + alpha t) / sin t (> 0 but for rounding next to pi; the random sign is
        # XORed in at the end, so a rounded negative keeps a random sign); out <- sin t
        np.multiply(t, self.alpha, out=w)
        w += self.c0
        np.sin(w, out=w)
        np.sin(t, out=out)
        w /= out
        # t <- -sin(c0 + (alpha - 1) t) / sin t (the sign cancels against log u2 < 0 below)
        t *= self.neg_alpha_m1
        t -= self.c0
        np.sin(t, out=t)
        t /= out
        # out <- log u2 = -W; t <- sin(c0 + (alpha - 1) t) / (sin t W) > 0
        np.multiply(ibuf, self.w_mul, out=out, dtype=self.dtype)
        out += self.w_add
        np.log(out, out=out)
        t /= out
        # out <- w (t ...)^k * step scale = sin(c0 + alpha t) sin(t)^(-1/alpha)
        #        (sin(c0 + (alpha - 1) t) / W)^((1 - alpha)/alpha) * step scale
        np.log(t, out=t)
        t *= self.k
        t += self.log_scale
        np.exp(t, out=t)
        np.multiply(w, t, out=out)
        np.left_shift(w_bits, self.sign_shift, out=ibuf)
        bits = out.view(ibuf.dtype)
        bits ^= ibuf
        return out


# --------------------------------------------------------------------------------------------
# Stopping rule for a box-shaped basin
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """The basin ``(center - lower_widths, center + half_widths)`` per coordinate, as a ``stop``
    rule for :func:`simulate_sde`: ``Box(...)(theta)`` flags, per path and coordinate, whether
    theta_j left its interval (``theta_j >= center_j + a_j`` or ``<= center_j - b_j``).

    ``half_widths`` (a_j) and ``lower_widths`` (b_j, default: ``half_widths``) broadcast against
    the coordinates; ``np.inf`` leaves a side open (e.g. a well whose only exit is a saddle below
    it). These are the widths that :func:`exit_time_theory` takes.
    """

    half_widths: Any
    lower_widths: Any = None
    center: Any = 0.0

    def __post_init__(self) -> None:
        a = np.asarray(self.half_widths, dtype=np.float64)
        b = a if self.lower_widths is None else np.asarray(self.lower_widths, dtype=np.float64)
        if not np.all((a > 0) & (b > 0)):
            raise ValueError("half_widths and lower_widths must be > 0 (np.inf: open side)")
        c = np.asarray(self.center, dtype=np.float64)
        object.__setattr__(self, "_hi", c + a)
        object.__setattr__(self, "_lo", c - b)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        hi: np.ndarray = self._hi  # type: ignore[attr-defined]
        lo: np.ndarray = self._lo  # type: ignore[attr-defined]
        out = theta >= hi.astype(theta.dtype)
        out |= theta <= lo.astype(theta.dtype)
        return out


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SDEResult(StatResult):
    """Paths and first exits of :func:`simulate_sde`.

    Attributes:
        paths: (n_records, n_paths, d) states at ``record_steps`` (NaN after a path's exit step),
            or None with ``record_every=0``.
        record_steps: (n_records,) the steps recorded (0 = theta0, then every ``record_every``).
        final: (n_paths, d) state at the exit step, or at ``steps`` for paths that did not exit.
        exited: (n_paths,) whether ``stop`` fired within ``steps`` steps.
        exit_step: (n_paths,) first step k (0..steps) with ``stop(theta_k)``; -1 if not exited.
        exit_coord: (n_paths,) coordinate that left first (the lowest-index flagged one when
            several left in the same step); -1 if not exited or if ``stop`` flags whole paths.
        simultaneous: (n_paths,) more than one coordinate flagged at the exit step.
        lr: the step size (time = step * lr).
        steps: number of steps simulated.
    """

    paths: np.ndarray | None
    record_steps: np.ndarray
    final: np.ndarray
    exited: np.ndarray
    exit_step: np.ndarray
    exit_coord: np.ndarray
    simultaneous: np.ndarray
    lr: float
    steps: int

    @property
    def exit_time(self) -> np.ndarray:
        """Exit times ``exit_step * lr`` (NaN for paths that did not exit)."""
        return np.where(self.exited, self.exit_step * self.lr, np.nan)

    def mean_exit_steps(self) -> tuple[float, float]:
        """(estimate, standard error) of the mean exit step, with right-censoring at ``steps``.

        The maximum-likelihood estimate under a constant per-step exit probability (the geometric
        law the small-noise theory predicts): steps survived by all paths (exit step included)
        divided by the number of exits, with standard error estimate / sqrt(exits). It equals the
        sample mean of the exit steps when every path exited. ``(inf, nan)`` without exits.
        """
        events = int(self.exited.sum())
        exposure = float(np.where(self.exited, self.exit_step, self.steps).sum())
        if events == 0:
            return float("inf"), float("nan")
        est = exposure / events
        return est, est / np.sqrt(events)

    def exit_counts(self) -> np.ndarray:
        """(d,) number of paths that left along each coordinate (``exit_coord``)."""
        d = self.final.shape[1]
        return np.bincount(self.exit_coord[self.exit_coord >= 0], minlength=d)


def _as_param(x: Any, d: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    try:
        return np.array(np.broadcast_to(arr, (d,)))
    except ValueError:
        raise ValueError(
            f"{name} must broadcast to the {d} coordinates, got shape {arr.shape}"
        ) from None


def _stop_flags(stop: StopFn, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(per-path exit flags, per-coordinate flags or None) of ``stop(theta)``."""
    flags = np.asarray(stop(theta))
    if flags.dtype != np.bool_:
        raise TypeError(f"stop must return booleans, got dtype {flags.dtype}")
    if flags.shape == theta.shape:
        return np.asarray(flags.any(axis=1)), flags
    if flags.shape == theta.shape[:1]:
        return flags, None
    raise ValueError(
        f"stop must return a boolean array of shape {theta.shape} (per coordinate) or "
        f"{theta.shape[:1]} (per path), got {flags.shape}"
    )


@dataclass
class _Run:
    """Shared output arrays and settings of one :func:`simulate_sde` call."""

    grad_fn: GradFn
    stop: StopFn | None
    lr: float
    steps: int
    record_every: int
    paths: np.ndarray | None
    final: np.ndarray
    exit_step: np.ndarray
    exit_coord: np.ndarray
    simultaneous: np.ndarray


def _run_block(run: _Run, theta: np.ndarray, idx: np.ndarray, stream: _SasStream) -> None:
    """All steps of one block of paths (rows ``idx`` of the outputs), exited rows dropped.

    The noise of several steps is drawn at once when the block has few live rows (the stream's
    capacity is its row count at the start), which keeps numpy's per-call overhead small."""
    capacity = theta.shape[0]
    d = theta.shape[1]
    work = np.empty_like(theta)
    lr = theta.dtype.type(run.lr)
    pending = np.empty((0, 0, d), dtype=theta.dtype)  # (steps ahead, live rows, d)
    used = 0

    def check_exits(k: int) -> None:
        nonlocal theta, idx, pending, used
        if run.stop is None:
            return
        out, per_coord = _stop_flags(run.stop, theta)
        if not out.any():
            return
        rows = np.flatnonzero(out)
        gone = idx[rows]
        run.exit_step[gone] = k
        run.final[gone] = theta[rows]
        if per_coord is not None:
            flagged = per_coord[rows]
            run.exit_coord[gone] = flagged.argmax(axis=1)
            run.simultaneous[gone] = flagged.sum(axis=1) > 1
        keep = ~out
        theta, idx = theta[keep], idx[keep]
        pending = pending[used:, keep] if used < pending.shape[0] else pending[:0, :0]
        used = 0

    def record(k: int) -> None:
        if run.paths is not None and k % run.record_every == 0:
            run.paths[k // run.record_every, idx] = theta

    record(0)
    check_exits(0)
    for k in range(1, run.steps + 1):
        m = theta.shape[0]
        if m == 0:
            break
        if used == pending.shape[0]:
            ahead = max(1, min(capacity // m, run.steps + 1 - k))
            pending = stream.draw(stream.out[: ahead * m]).reshape(ahead, m, d)
            used = 0
        g = np.asarray(run.grad_fn(theta))
        if g.shape != theta.shape:
            raise ValueError(f"grad_fn returned shape {g.shape} for theta of shape {theta.shape}")
        np.multiply(g, lr, out=work[:m], casting="unsafe")
        theta -= work[:m]
        theta += pending[used]
        used += 1
        record(k)
        check_exits(k)
    run.final[idx] = theta


def simulate_sde(
    grad_fn: GradFn,
    theta0: Any,
    *,
    alpha: Any,
    scale: Any,
    lr: float,
    steps: int,
    rng: RNGLike,
    stop: StopFn | None = None,
    record_every: int = 1,
    n_paths: int | None = None,
    dtype: Any = np.float32,
    workers: int = 1,
) -> SDEResult:
    """Simulate ``theta <- theta - lr grad_fn(theta) + lr * scale_j * S_j`` on many paths.

    The Euler scheme (step ``lr``) of ``d theta_j = -d_j U dt + eps_j dL_j``, ``eps_j =
    lr^((alpha_j-1)/alpha_j) scale_j``, i.e. SGD whose gradient noise is SαS(alpha_j, scale_j)
    independently per coordinate and step (``lr^(1/alpha_j) eps_j S_j = lr scale_j S_j``; see the
    module docstring). ``alpha = 2`` is Gaussian noise N(0, 2 scale^2).

    Args:
        grad_fn: gradient of the potential, called on an (m, d) array of paths (a block of rows;
            it must act row by row) and returning an (m, d) array.
        theta0: (d,) start shared by ``n_paths`` paths, or (n_paths, d) starts.
        alpha, scale: per-coordinate tail index in (0, 2] and noise scale > 0 (broadcast to d).
        lr: step size (> 0). steps: number of steps.
        rng: seed or Generator; the same seed gives the same numbers for any ``workers``.
        stop: ``stop(theta)`` on an (m, d) block returns booleans, (m, d) per coordinate (the
            path exits when any is True; the coordinate is reported) or (m,) per path. It is
            checked at step 0 and after every step; an exited path is no longer simulated. See
            :class:`Box`.
        record_every: keep the states every this many steps (0: keep none, only ``final``).
        n_paths: number of paths when ``theta0`` is one point.
        dtype: float32 (default; fast) or float64, for the state and the noise.
        workers: threads over blocks of paths (``grad_fn`` and ``stop`` must then be
            thread-safe); the numbers do not depend on it.

    Returns:
        :class:`SDEResult`. Paths are simulated in blocks of about 2^15 coordinates (all steps of
        a block, then the next), each block with its own stream spawned from ``rng``.

    Example:
        >>> res = simulate_sde(lambda x: x, [0.0], alpha=1.5, scale=0.05, lr=0.5, steps=20_000,
        ...                    rng=0, n_paths=1000, stop=Box(1.0), record_every=0)
        >>> bool(res.exited.all()), round(res.mean_exit_steps()[0])
        (True, 610)
        >>> round(exit_time_theory(1.5, 0.05, 0.5, half_widths=1.0).mean_exit_steps)  # +- 19
        634
    """
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    x0 = np.asarray(theta0, dtype=np.float64)
    if n_paths is not None:
        if x0.ndim != 1:
            raise ValueError("with n_paths, theta0 must be one point of shape (d,)")
        if n_paths < 1:
            raise ValueError(f"n_paths must be >= 1, got {n_paths}")
        x0 = np.broadcast_to(x0, (int(n_paths), x0.shape[0]))
    elif x0.ndim != 2:
        raise ValueError("theta0 must have shape (n_paths, d), or (d,) with n_paths=...")
    n, d = x0.shape
    if d == 0:
        raise ValueError("theta0 has no coordinates")
    if not np.all(np.isfinite(x0)):
        raise ValueError("theta0 must be finite")
    a = _as_param(_check_alpha(alpha), d, "alpha")
    sc = _as_param(scale, d, "scale")
    _check_positive(sc, "scale")
    _check_positive(np.asarray(lr, dtype=np.float64), "lr")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    if int(record_every) != record_every or record_every < 0:
        raise ValueError(f"record_every must be a non-negative integer, got {record_every}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    steps, record_every = int(steps), int(record_every)

    paths = None
    record_steps = np.arange(0, steps + 1, record_every) if record_every else np.zeros(0, int)
    if record_every:
        nbytes = record_steps.size * n * d * dt.itemsize
        if nbytes > MAX_RECORD_BYTES:
            raise ValueError(
                f"recording {record_steps.size} states of {n} x {d} would take "
                f"{nbytes / 2**30:.1f} GiB; thin with a larger record_every, or 0 to keep none"
            )
        paths = np.full((record_steps.size, n, d), np.nan, dtype=dt)
    run = _Run(
        grad_fn=grad_fn,
        stop=stop,
        lr=float(lr),
        steps=steps,
        record_every=record_every,
        paths=paths,
        final=np.empty((n, d), dtype=dt),
        exit_step=np.full(n, -1, dtype=np.int64),
        exit_coord=np.full(n, -1, dtype=np.int64),
        simultaneous=np.zeros(n, dtype=bool),
    )
    rows = max(1, _BLOCK_ELEMS // d)
    starts = range(0, n, rows)
    seeds = np.random.SeedSequence(as_generator(rng).integers(0, 2**63, size=4)).spawn(len(starts))
    step_scale = float(lr) * sc

    def job(b: int) -> None:
        lo = starts[b]
        hi = min(lo + rows, n)
        stream = _SasStream(a, step_scale, hi - lo, dt, seeds[b])
        theta = np.array(x0[lo:hi], dtype=dt)
        _run_block(run, theta, np.arange(lo, hi), stream)

    if workers == 1 or len(starts) == 1:
        for b in range(len(starts)):
            job(b)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts), os.cpu_count() or 1)) as ex:
            list(ex.map(job, range(len(starts))))
    bad = ~np.isfinite(run.final).all(axis=1)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} path(s) ended non-finite: the explicit Euler scheme diverged "
            "(a potential whose curvature exceeds 2/lr somewhere a jump can land?)",
            RuntimeWarning,
            stacklevel=2,
        )
    exited = run.exit_step >= 0
    return SDEResult(
        paths=paths,
        record_steps=record_steps,
        final=run.final,
        exited=exited,
        exit_step=run.exit_step,
        exit_coord=run.exit_coord,
        simultaneous=run.simultaneous,
        lr=float(lr),
        steps=steps,
    )


# --------------------------------------------------------------------------------------------
# Small-noise theory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ExitTheory(StatResult):
    """Small-noise exit predictions of :func:`exit_time_theory` (per coordinate, then total).

    Attributes:
        alpha: (d,) tail indices.
        epsilon: (d,) SDE amplitudes ``lr^((alpha-1)/alpha) scale``.
        rate: (d,) exit rate lambda_j per unit time through coordinate j.
        total_rate: Lambda = sum of ``rate``.
        mean_exit_time: 1/Lambda (time units).
        mean_exit_steps: 1/(Lambda lr), the mean exit step of the Euler scheme.
        exit_probability: (d,) lambda_j / Lambda, the probability of leaving along coordinate j.
        lr: the step size.
    """

    alpha: np.ndarray
    epsilon: np.ndarray
    rate: np.ndarray
    total_rate: float
    mean_exit_time: float
    mean_exit_steps: float
    exit_probability: np.ndarray
    lr: float

    def trapping_probability(self, t: Any) -> np.ndarray | float:
        """P(tau > t) ~ exp(-Lambda t) (t in time units; t = steps * lr)."""
        p = np.exp(-self.total_rate * np.asarray(t, dtype=np.float64))
        return float(p) if p.ndim == 0 else p


def exit_time_theory(
    alpha: Any,
    scale: Any,
    lr: float,
    *,
    half_widths: Any,
    lower_widths: Any = None,
    curvature: Any = None,
    barrier: Any = None,
    saddle_curvature: Any = None,
) -> ExitTheory:
    """Small-noise exit rates, mean exit time and exit directions (see the module docstring).

    Per coordinate j, a well at its minimum inside the basin ``(-b_j, a_j)`` (distances from the
    minimum: ``a_j = half_widths``, ``b_j = lower_widths``, default symmetric; ``np.inf`` for no
    exit on that side), noise SαS(alpha_j, scale_j) on the gradient with step ``lr``, so
    ``eps_j = lr^((alpha_j-1)/alpha_j) scale_j``:

    * alpha_j < 2 (Imkeller–Pavlyukevich): ``lambda_j = (c_alpha/alpha) eps_j^alpha (a_j^-alpha +
      b_j^-alpha)`` with ``c_alpha = Gamma(alpha+1) sin(pi alpha/2)/pi`` (the Lévy-measure constant
      of SαS(alpha, 1); :func:`levy_measure_constant`). Leading order as eps -> 0: valid when the
      per-step jump scale ``lr scale`` and the stationary spread ``eps (alpha h)^(-1/alpha)`` are
      small against the widths and E[tau] >> 1/h; it does not depend on the potential's depth.
    * alpha_j = 2 (Kramers, ``D_j = eps_j^2 = lr scale_j^2``): needs ``curvature`` h_j at the
      minimum. With ``barrier`` (Delta U_j, the height of saddles at the basin's finite ends,
      curvature ``saddle_curvature``) each finite side has rate ``sqrt(h_j h_s)/pi exp(-Delta U/D)``
      (mean time to reach the saddle); without it the well is ``h x^2/2`` up to a non-critical
      boundary w: ``h w sqrt(h/(2 pi D)) exp(-h w^2/(2D))``. Valid for Delta U >> D (relative
      corrections O(D/Delta U)) and lr h << 1.

    Then ``Lambda = sum_j lambda_j``, ``E[tau] ~ 1/Lambda``, ``P(exit along j) ~ lambda_j /
    Lambda``, ``P(tau > t) ~ exp(-Lambda t)``; in Euler steps the mean exit step is
    ``1/(Lambda lr)``.

    Example:
        >>> th = exit_time_theory([1.2, 1.8], 1.0, 0.01, half_widths=1.0)
        >>> bool(th.exit_probability[0] > th.exit_probability[1])
        True
    """
    a = _check_alpha(alpha)
    given = [a, scale, half_widths, lower_widths, curvature, barrier, saddle_curvature]
    shape = np.broadcast_shapes(*(np.shape(x) for x in given if x is not None))
    if len(shape) > 1:
        raise ValueError(f"parameters must be scalars or 1-D over the coordinates, got {shape}")
    d = shape[0] if shape else 1
    a = _as_param(a, d, "alpha")
    sc = _as_param(scale, d, "scale")
    _check_positive(sc, "scale")
    _check_positive(np.asarray(lr, dtype=np.float64), "lr")
    upper = _as_param(half_widths, d, "half_widths")
    lower = upper if lower_widths is None else _as_param(lower_widths, d, "lower_widths")
    if not np.all((upper > 0) & (lower > 0)):
        raise ValueError("half_widths and lower_widths must be > 0 (np.inf: no exit that side)")
    if not np.all(np.isfinite(upper) | np.isfinite(lower)):
        raise ValueError("each coordinate needs at least one finite width")
    eps = lr ** ((a - 1.0) / a) * sc
    rate = np.zeros(d)
    heavy = a < 2.0
    if heavy.any():
        ah = a[heavy]
        tail = levy_measure_constant(ah) / ah
        rate[heavy] = tail * eps[heavy] ** ah * (upper[heavy] ** -ah + lower[heavy] ** -ah)
    gauss = ~heavy
    if gauss.any():
        if curvature is None:
            raise ValueError("alpha = 2 coordinates need curvature= (U'' at the minimum)")
        if (barrier is None) != (saddle_curvature is None):
            raise ValueError("barrier= and saddle_curvature= (|U''| at the saddle) go together")
        h = _as_param(curvature, d, "curvature")
        _check_positive(h, "curvature")
        saddle = None
        if barrier is not None:
            du = _as_param(barrier, d, "barrier")
            hs = _as_param(saddle_curvature, d, "saddle_curvature")
            _check_positive(du, "barrier")
            _check_positive(hs, "saddle_curvature")
            saddle = (du[gauss], hs[gauss])
        rate[gauss] = _kramers_rates(eps[gauss] ** 2, h[gauss], upper[gauss], lower[gauss], saddle)
    total = float(rate.sum())
    if total == 0.0:  # Kramers' exp(-dU/D) underflowed: no exit on any reasonable time scale
        return ExitTheory(a, eps, rate, 0.0, np.inf, np.inf, np.full(d, np.nan), float(lr))
    return ExitTheory(
        alpha=a,
        epsilon=eps,
        rate=rate,
        total_rate=total,
        mean_exit_time=1.0 / total,
        mean_exit_steps=1.0 / (total * lr),
        exit_probability=rate / total,
        lr=float(lr),
    )


def _kramers_rates(
    diff: np.ndarray,
    h: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
    saddle: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """Kramers exit rates per unit time, summed over the finite sides of each basin: with a
    saddle (barrier, curvature) ``sqrt(h h_s)/pi exp(-dU/D)`` per side, else the quadratic well
    cut at a non-critical boundary w, ``h w sqrt(h/(2 pi D)) exp(-h w^2/(2D))``."""
    total = np.zeros(h.shape)
    for w in (upper, lower):
        fin = np.isfinite(w)
        if saddle is not None:
            du, hs = saddle
            side = np.sqrt(h * hs) / np.pi * np.exp(-du / diff)
        else:
            wf = np.where(fin, w, 0.0)
            side = h * wf * np.sqrt(h / (2 * np.pi * diff)) * np.exp(-h * wf**2 / (2 * diff))
        total += np.where(fin, side, 0.0)
    return total


def exit_probabilities(alpha: Any, scale: Any, lr: float, **basin: Any) -> np.ndarray:
    """P(the first exit is along coordinate j) ~ lambda_j / Lambda: ``exit_time_theory(alpha,
    scale, lr, **basin).exit_probability``, with the same keywords (``half_widths``, ...).

    Example:
        >>> exit_probabilities([1.5, 1.5], 1.0, 0.1, half_widths=[1.0, 2.0]).round(3)
        array([0.739, 0.261])
    """
    return exit_time_theory(alpha, scale, lr, **basin).exit_probability
