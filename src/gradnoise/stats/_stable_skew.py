"""Skewed alpha-stable laws: exact density (Zolotarev's integral) and maximum likelihood (private).

The standard S0 law (scale 1, location 0; Nolan 2020, Definition 1.7) has, for alpha != 1,
``zeta = -beta tan(pi alpha / 2)`` and ``theta0 = arctan(beta tan(pi alpha / 2)) / alpha``, and
for ``x > zeta`` (Nolan 1997, Theorem 1)

    f(x) = alpha / (pi |alpha - 1| (x - zeta)) int_{-theta0}^{pi/2} g exp(-g) d theta,
    g = (x - zeta)^(alpha/(alpha-1)) V(theta; alpha, beta),

``f(x; alpha, beta) = f(-x; alpha, -beta)`` for ``x < zeta`` and
``f(zeta) = Gamma(1 + 1/alpha) cos(theta0) / (pi (1 + zeta^2)^(1/(2 alpha)))``. The integral is
computed as the symmetric table's rows are (``_stable_density.quadrature_logpdf``), to ~1e-8 in
log f against Fourier inversion of the characteristic function (mpmath) in the core and the
heavy tails; deep in the light tail of a nearly totally skewed law (|beta| ~ 1, densities below
~1e-10) to ~1e-4. In S0 the density is smooth in alpha through alpha = 1, where the formula
degenerates (zeta -> infinity): within ``_NEAR_ONE`` of 1 it is interpolated linearly between
``1 -+ _NEAR_ONE`` (~3e-6 in log f).

The MLE maximises ``sum log f((x - delta_0) / sigma) - n log sigma`` over (alpha, beta, log
sigma, delta_0) with L-BFGS-B (alpha in [0.5, 2], beta in [-1, 1]), one column at a time from
McCulloch's skewed estimates: exact but slow (about a second per column of 1,000 values), for
modest numbers of columns; the symmetric fit is the batched one.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy.special import gammaln

from ._stable_density import quadrature_logpdf

_NEAR_ONE = 2e-3
_PENALTY = 1e100
ALPHA_BOUNDS = (0.5, 2.0)


def s0_logpdf(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """log-density of the standard S0 stable law at ``x`` (alpha in (0, 2], beta in [-1, 1])."""
    x = np.asarray(x, dtype=np.float64)
    if alpha == 2.0:
        return -0.25 * x * x - math.log(2.0 * math.sqrt(math.pi))
    if abs(alpha - 1.0) < _NEAR_ONE:
        if beta == 0.0:
            return -math.log(math.pi) - np.log1p(x * x)
        lo = _s0_logpdf(x, 1.0 - _NEAR_ONE, beta)
        hi = _s0_logpdf(x, 1.0 + _NEAR_ONE, beta)
        w = (alpha - 1.0 + _NEAR_ONE) / (2.0 * _NEAR_ONE)
        return np.logaddexp(np.log1p(-w) + lo, np.log(w) + hi) if 0 < w < 1 else lo
    return _s0_logpdf(x, alpha, beta)


def _s0_logpdf(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    tan = math.tan(math.pi * alpha / 2.0)
    zeta = -beta * tan
    theta0 = math.atan(beta * tan) / alpha
    z = x - zeta
    out = np.empty(x.shape)
    for side, th0 in ((z > 0, theta0), (z < 0, -theta0)):
        if not side.any():
            continue
        if 1.0 + 2.0 * th0 / math.pi <= 1e-12:  # alpha < 1, |beta| = 1: outside the support
            out[side] = -np.inf
        else:
            out[side] = quadrature_logpdf(alpha, np.log(np.abs(z[side])), th0)
    up, down = z > 0, z < 0
    at = ~(up | down)
    if at.any():
        out[at] = (
            gammaln(1.0 + 1.0 / alpha)
            + math.log(math.cos(theta0))
            - math.log(math.pi)
            - math.log1p(zeta * zeta) / (2.0 * alpha)
        )
    return out


def fit_stable_mle_skewed(
    cols: np.ndarray,
    alpha0: np.ndarray,
    beta0: np.ndarray,
    scale0: np.ndarray,
    loc0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(alpha, beta, scale, S0 location, loglik)`` per column of ``cols`` (n, m)."""
    m = cols.shape[1]
    out = np.empty((5, m))
    for j in range(m):  # one optimisation per column (see the module docstring)
        x = cols[:, j].astype(np.float64)

        def nll(p: np.ndarray, x: np.ndarray = x) -> float:
            a, b, ls, d = p
            val = -float(s0_logpdf((x - d) * math.exp(-ls), a, b).sum() - x.size * ls)
            # a value outside the support (alpha < 1, |beta| = 1) or a density below 1e-308:
            # a large finite penalty keeps the finite-difference gradients defined
            return val if math.isfinite(val) else _PENALTY

        start = np.array(
            [
                np.clip(alpha0[j], 0.55, 1.98),
                np.clip(beta0[j], -0.98, 0.98),
                math.log(scale0[j]),
                loc0[j],
            ]
        )
        res = optimize.minimize(
            nll,
            start,
            method="L-BFGS-B",
            bounds=[ALPHA_BOUNDS, (-1.0, 1.0), (None, None), (None, None)],
            # forward differences of step 1e-5: the quadrature's ~1e-9 noise per value swamps
            # the default 1e-8 step (it stopped short at a bound, 4e-4 nats below scipy)
            options={"ftol": 1e-13, "gtol": 1e-7, "maxiter": 500, "eps": 1e-5},
        )
        a, b, ls, d = res.x
        out[:, j] = (a, b, math.exp(ls), d, -res.fun)
    return out[0], out[1], out[2], out[3], out[4]
