"""Tabulated density and survival function of the standard symmetric alpha-stable law.

The standard SαS law has characteristic function ``exp(-|u|^alpha)`` (scale 1, location 0; S0 and
S1 coincide when beta = 0). For ``z > 0`` and ``alpha != 1`` Zolotarev's integral (Nolan 1997,
Theorem 1, with theta_0 = 0) gives

    f(z) = alpha / (pi |alpha - 1| z) * int_0^{pi/2} g(theta) exp(-g(theta)) d theta,
    g(theta) = z^{alpha/(alpha-1)} V(theta),
    V(theta) = (cos theta / sin(alpha theta))^{alpha/(alpha-1)} cos((alpha-1) theta) / cos theta.

We substitute ``s = log tan theta`` (d theta = ds / (2 cosh s)). In ``s`` the integrand is a
Gumbel-shaped bump ``exp(w - e^w)`` in ``w = log g`` whose slope ``|dw/ds|`` lies between
``min(|r|, |r - 1|)`` and ``max(|r|, |r - 1|)`` with ``r = alpha/(alpha-1)``, so a uniform trapezoid
rule with step ``0.5 / max(|r|, |r-1|)`` (spectrally accurate for this analytic, decaying integrand)
and a log-sum-exp keeps full relative precision from ``z = e^-8`` to far in the tails. Beyond
``z = 0.1 sinh(11) ~ 3000`` the asymptotic (alpha > 1) or convergent (alpha < 1) series

    f(z) = (1/pi) sum_j (-1)^{j+1} Gamma(j alpha + 1)/j! sin(j pi alpha/2) z^{-j alpha - 1}
    S(z) = (1/pi) sum_j (-1)^{j+1} Gamma(j alpha)/j!     sin(j pi alpha/2) z^{-j alpha}

is used (Nolan 2020, Theorem 3.5; eight terms). alpha = 1 is the Cauchy law and alpha = 2 is
N(0, 2), both in closed form. The table holds ``log f`` on ``alpha`` in {0.50, 0.51, ..., 2.00}
and ``u = asinh(10 z)`` in [0, 11] (step 0.02) as cubic splines in ``u`` (clamped: even in z),
plus the survival function ``log S`` obtained by integrating the density (Simpson) from the
series tail inwards.
It is built on first use (about a second) and cached for the process. Against
``scipy.stats.levy_stable.logpdf`` the table agrees to ~1e-7 (tests/stats/test_stable_density.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.integrate import cumulative_simpson
from scipy.interpolate import CubicSpline
from scipy.special import gammaln, log_ndtr

ALPHA_MIN = 0.5
ALPHA_MAX = 2.0
ALPHA_STEP = 0.01
# table variable u = asinh(z / Z_SCALE): linear near 0 (so d/dz of the spline stays well
# conditioned at the mode), logarithmic in the tails (u ~ log(2 z / Z_SCALE)); uniform grid on
# [0, U_MAX], z up to Z_SCALE sinh(U_MAX) ~ 3000. Z_SCALE = 0.1 resolves the sharp mode of
# alpha ~ 0.5 (f(z) ~ f(0) (1 - 60 z^2 + ...)).
Z_SCALE = 0.1
U_STEP = 0.02
U_MAX = 11.0
N_SERIES = 8
_F_LINEAR_FROM = 1.9 - 1e-9
_LOG_2SQRTPI = float(np.log(2.0 * np.sqrt(np.pi)))


def alpha_grid() -> np.ndarray:
    """The alpha nodes of the table: 0.50, 0.51, ..., 2.00."""
    n = round((ALPHA_MAX - ALPHA_MIN) / ALPHA_STEP) + 1
    return np.round(ALPHA_MIN + ALPHA_STEP * np.arange(n), 10)


def _log_v(s: np.ndarray, a: float, theta0: float = 0.0) -> np.ndarray:
    """log V(theta) of Zolotarev's integral, with relative precision at both ends.

    theta runs over (-theta0, pi/2) as ``theta = -theta0 + c psi``, ``c = 1 + 2 theta0 / pi``,
    ``psi = arctan(e^s)`` (so ``pi/2 - theta = c (pi/2 - psi)`` and ``theta0 + theta = c psi``);
    ``V = cos(a theta0)^(1/(a-1)) (cos theta / sin(a (theta0 + theta)))^(a/(a-1))
    cos(theta0 + (a-1)(theta0 + theta)) / cos theta`` (Nolan 1997, Theorem 1)."""
    c = 1.0 + 2.0 * theta0 / np.pi
    th = np.arctan(np.exp(s))
    ph = np.arctan(np.exp(-s))  # pi/2 - psi, accurate near pi/2
    if theta0 == 0.0:
        logcos = -0.5 * np.logaddexp(0.0, 2.0 * s)
    else:
        logcos = np.log(np.sin(c * ph))
    arg = a * c * th
    sin_at = np.where(
        arg <= np.pi / 2, np.sin(arg), np.sin(np.pi * (1.0 - a * c / 2.0) + a * c * ph)
    )
    if a > 1:  # cos(theta0 + (a-1)(theta0 + theta)) = sin(K + (a-1) c (pi/2 - psi))
        k0 = (2.0 - a) * np.pi / 2.0 - a * theta0
        k0 = 0.0 if abs(k0) < 1e-12 else k0  # |beta| = 1: V vanishes at pi/2 (rounding)
        cos_a1 = np.maximum(np.sin(k0 + (a - 1.0) * c * ph), 0.0)
    else:
        cos_a1 = np.cos(theta0 + (a - 1.0) * c * th)
    r = a / (a - 1.0)
    const = 0.0 if theta0 == 0.0 else np.log(np.cos(a * theta0)) / (a - 1.0)
    return const + r * (logcos - np.log(sin_at)) + np.log(cos_a1) - logcos


def quadrature_logpdf(a: float, t: np.ndarray, theta0: float = 0.0) -> np.ndarray:
    """``log f(e^t)`` of the standard SαS law by Zolotarev's integral (``alpha != 1``, < 2);
    with ``theta0 != 0`` (skewed laws, see ``_stable_skew``) the density at ``zeta + e^t``.

    f = alpha / (pi |alpha - 1| z) * int g exp(-g) d theta, g = z^(alpha/(alpha-1)) V(theta),
    z = x - zeta."""
    if a == 1.0 or not 0.0 < a < 2.0:
        raise ValueError("quadrature_logpdf needs alpha in (0, 2) and alpha != 1")
    t = np.asarray(t, dtype=np.float64)
    r = a / (a - 1.0)
    kmin = min(abs(r), abs(r - 1.0))
    kmax = max(abs(r), abs(r - 1.0))
    h = 0.5 / kmax
    # bump centres: w = r t + log V(s) = 0 with |d log V/ds| in [kmin, kmax], so |s*| is at
    # most about |r t| / kmin; pad by the bump's width (w in [-45, 45]) and a margin.
    bound = min(abs(r) * float(np.abs(t).max()) / kmin + 45.0 / kmin + 5.0, 60.0)
    s = np.arange(-bound, bound + h, h)
    with np.errstate(divide="ignore", invalid="ignore"):  # |beta| = 1: V = 0 at an end
        lv = _log_v(s, a, theta0)
        if theta0 != 0.0:  # the slope bounds hold at the ends; use the observed ones inside
            slope = np.abs(np.diff(lv)) / h
            slope = slope[np.isfinite(slope)]
            if slope.max() > kmax:
                kmax = float(slope.max())
                h = 0.5 / kmax
                s = np.arange(-bound, bound + h, h)
                lv = _log_v(s, a, theta0)
                slope = np.abs(np.diff(lv)) / h
                slope = slope[np.isfinite(slope)]
            kmin = max(min(kmin, float(slope.min())), 1e-6)
    if a < 1.0:  # make w = r t + lv decreasing in s, as for alpha > 1
        s, lv = s[::-1], lv[::-1]
    log_half_sech = -np.logaddexp(s, -s) + np.log(1.0 + 2.0 * theta0 / np.pi)  # d theta / ds
    # per t, integrate over the nodes where w runs from +4.5 down to -45 (the rest is < 1e-19
    # of the peak): a fixed-width window starting where w first drops below 4.5.
    width = min(int(np.ceil(49.5 / (kmin * h))) + 2, s.size)
    neg_lv = -lv  # increasing in node index
    start = np.searchsorted(neg_lv, r * t - 4.5) - 1
    start = np.clip(start, 0, s.size - width)
    idx = start[:, None] + np.arange(width)[None, :]
    w = r * t[:, None] + lv[idx]
    with np.errstate(over="ignore", invalid="ignore"):
        integrand = w - np.exp(w) + log_half_sech[idx]
    integrand = np.where(np.isnan(integrand), -np.inf, integrand)  # -inf - inf at a zero of V
    peak = integrand.max(axis=1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)  # all -inf: a density below 1e-308
    with np.errstate(divide="ignore"):
        log_int = np.log(np.exp(integrand - peak).sum(axis=1)) + peak[:, 0] + np.log(h)
    return np.log(a / (np.pi * abs(a - 1.0))) - t + log_int


def _series_coefficients(alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tail-series coefficients for the density (a_j) and survival function (b_j), j = 1..J."""
    j = np.arange(1, N_SERIES + 1)[None, :]
    a = alphas[:, None]
    sign = np.where(j % 2 == 1, 1.0, -1.0)
    sin = np.sin(j * np.pi * a / 2.0)
    pdf = sign * np.exp(gammaln(j * a + 1.0) - gammaln(j + 1.0)) * sin / np.pi
    sf = sign * np.exp(gammaln(j * a) - gammaln(j + 1.0)) * sin / np.pi
    return pdf, sf


class Scratch:
    """Work arrays reused block after block. Fresh temporaries of a few hundred kB are
    page-faulted in on every call (malloc returns them to the system in between): in the MLE,
    which evaluates the table on ~1e8 values per pass, that was a third of the time."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, Any], np.ndarray] = {}
        self._views: dict[tuple[str, Any, tuple[int, ...]], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
        view = self._views.get((name, dtype, shape))
        if view is not None:
            return view
        size = math.prod(shape)
        buf = self._store.get((name, dtype))
        if buf is None or buf.size < size:
            buf = self._store[name, dtype] = np.empty(size, dtype)
            self._views = {k: v for k, v in self._views.items() if k[:2] != (name, dtype)}
        if len(self._views) > 4096:  # many distinct block shapes: start the cache afresh
            self._views.clear()
        view = self._views[name, dtype, shape] = buf[:size].reshape(shape)
        return view


def _buf(
    scratch: Scratch | None, name: str, shape: tuple[int, ...], dtype: Any = np.float64
) -> np.ndarray:
    return np.empty(shape, dtype) if scratch is None else scratch.get(name, shape, dtype)


@dataclass(frozen=True)
class Points:
    """Points ``z`` located in the table: ``|z|``, spline interval ``j`` and offset ``v``, the
    chain-rule factors ``du = du/d|z|`` and ``dd = -d2u/d|z|^2`` (with derivatives), and
    the mask of points beyond the table (series tail), or None if there are none."""

    az: np.ndarray
    j: np.ndarray
    v: np.ndarray
    du: np.ndarray | None
    dd: np.ndarray | None
    far: np.ndarray | None


@dataclass(frozen=True)
class SasTable:
    """Cubic-spline tables of log f and log S of the standard SαS law, one row per alpha node."""

    alphas: np.ndarray  # (K,)
    u: np.ndarray  # (U,) grid of u = asinh(z / Z_SCALE)
    pdf_coef: np.ndarray  # (4, K * (U-1)): c0 + c1 v + c2 v^2 + c3 v^3, v = u - u_j
    sf_coef: np.ndarray  # (4, K * (U-1))
    pdf_series: np.ndarray  # (K, J)
    sf_series: np.ndarray  # (K, J)

    @property
    def n_alpha(self) -> int:
        return int(self.alphas.size)

    # -- evaluation at alpha nodes ---------------------------------------------------------
    def cell(self, u: np.ndarray, scratch: Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(j, v)``: the spline interval of each ``u`` (clamped to the grid) and the offset in it."""
        pos = np.minimum(u, U_MAX, out=_buf(scratch, "pos", u.shape))
        pos *= 1.0 / U_STEP
        j = _buf(scratch, "j", u.shape, np.intp)
        np.copyto(j, pos, casting="unsafe")  # truncation = floor (pos >= 0)
        np.minimum(j, self.u.size - 2, out=j)
        v = np.subtract(pos, j, out=_buf(scratch, "v", u.shape))
        v *= U_STEP
        return j, v

    def poly(
        self,
        coef: np.ndarray,
        k: np.ndarray,
        j: np.ndarray,
        v: np.ndarray,
        derivatives: bool,
        scratch: Scratch | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The cubic of node ``k``, interval ``j`` at offset ``v`` (and its u-derivatives)."""
        shape = j.shape
        flat = np.multiply(k, self.u.size - 1, out=_buf(scratch, "flat", shape, np.intp))
        flat += j
        c0, c1, c2, c3 = (
            np.take(coef[i], flat, out=_buf(scratch, f"c{i}", shape), mode="clip") for i in range(4)
        )
        val = np.multiply(v, c3, out=_buf(scratch, "val", shape))
        val += c2
        val *= v
        val += c1
        val *= v
        val += c0
        if not derivatives:
            return val, None, None
        hu1 = np.multiply(v, c3, out=_buf(scratch, "hu1", shape))  # c1 + v (2 c2 + 3 v c3)
        hu1 *= 3.0
        hu1 += c2
        hu1 += c2
        hu1 *= v
        hu1 += c1
        hu2 = np.multiply(v, c3, out=_buf(scratch, "hu2", shape))  # 2 (c2 + 3 v c3)
        hu2 *= 3.0
        hu2 += c2
        hu2 *= 2.0
        return val, hu1, hu2

    def _spline(
        self, coef: np.ndarray, k: np.ndarray, u: np.ndarray, derivatives: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        j, v = self.cell(u)
        return self.poly(coef, np.broadcast_to(k, u.shape), j, v, derivatives)

    def points(
        self, z: np.ndarray, derivatives: bool = False, scratch: Scratch | None = None
    ) -> Points:
        """Where the points ``z`` fall in the table (shared by every node; see ``logpdf_at``).
        With ``scratch`` the arrays live in its buffers (valid until its next use)."""
        shape = z.shape
        az = np.abs(z, out=_buf(scratch, "az", shape))
        w = np.multiply(az, 1.0 / Z_SCALE, out=_buf(scratch, "w", shape))
        u = _buf(scratch, "u", shape)
        du = dd = None
        if derivatives:
            # u = asinh(w) = log(w + r), r = sqrt(1 + w^2) (only u's absolute accuracy matters:
            # it picks the interval and the offset in it); w = z / c: du/dz = 1 / (c r) and
            # d2u/dz2 = -w / (c^2 r^3) = -dd with dd = c w (du/dz)^3
            r = np.multiply(w, w, out=_buf(scratch, "r", shape))
            r += 1.0
            np.sqrt(r, out=r)
            np.add(w, r, out=u)
            np.log(u, out=u)
            du = np.multiply(r, Z_SCALE, out=_buf(scratch, "du", shape))
            np.reciprocal(du, out=du)
            dd = np.multiply(du, du, out=_buf(scratch, "dd", shape))
            dd *= du
            dd *= w
            dd *= Z_SCALE
        else:
            np.arcsinh(w, out=u)
        j, v = self.cell(u, scratch)
        far = np.greater(u, U_MAX, out=_buf(scratch, "far", shape, np.bool_))
        return Points(az=az, j=j, v=v, du=du, dd=dd, far=far if far.any() else None)

    def logpdf_at(
        self, k: np.ndarray, pts: Points, derivatives: bool = False, scratch: Scratch | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``h = log f``, ``dh/d|z|`` and ``d2h/d|z|^2`` at node(s) ``k`` (broadcast with the
        points) for points located by :meth:`points` (``derivatives`` as there). With
        ``scratch`` the results live in its buffers (valid until its next use)."""
        k = np.asarray(k)
        az = pts.az
        val, hu1, hu2 = self.poly(self.pdf_coef, k, pts.j, pts.v, derivatives, scratch)
        a1 = a2 = None
        if derivatives:
            assert hu1 is not None and hu2 is not None and pts.du is not None
            assert pts.dd is not None
            a1 = np.multiply(hu1, pts.du, out=_buf(scratch, "a1", az.shape))
            a2 = np.multiply(hu2, pts.du, out=_buf(scratch, "a2", az.shape))
            a2 *= pts.du
            hu1 *= pts.dd
            a2 -= hu1
        if pts.far is not None:
            far = pts.far
            kb = np.broadcast_to(k, az.shape)[far]
            fv, f1, f2 = self._far_logpdf(kb, np.log(az[far]), derivatives)
            val[far] = fv
            if derivatives:
                assert a1 is not None and a2 is not None and f1 is not None and f2 is not None
                zf = az[far]
                a1[far] = f1 / zf
                a2[far] = (f2 - f1) / (zf * zf)
        if np.any(k == self.n_alpha - 1):
            gauss = np.broadcast_to(k == self.n_alpha - 1, az.shape)
            zg = az[gauss]
            val[gauss] = -0.25 * zg * zg - _LOG_2SQRTPI
            if derivatives:
                assert a1 is not None and a2 is not None
                a1[gauss] = -0.5 * zg
                a2[gauss] = -0.5
        return val, a1, a2

    def logpdf_nodes(
        self, k: np.ndarray, z: np.ndarray, derivatives: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``h(z) = log f(z)`` at node(s) ``k`` (broadcast with ``z``); with ``derivatives``
        also ``dh/d|z|`` and ``d2h/d|z|^2`` (h is even in z)."""
        z = np.asarray(z, dtype=np.float64)
        k = np.asarray(k)
        if k.ndim > z.ndim or (k.ndim and k.shape != z.shape):
            z = np.broadcast_to(z, np.broadcast_shapes(k.shape, z.shape))
        return self.logpdf_at(k, self.points(z, derivatives), derivatives)

    def _far_logpdf(
        self, k: np.ndarray, t: np.ndarray, derivatives: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Series tail: log f and its first two derivatives in t = log z."""
        a = self.alphas[k]
        coef = self.pdf_series[k]  # (m, J)
        a1 = coef[:, 0]
        safe_a1 = np.where(a1 > 0, a1, 1.0)
        jm1 = np.arange(1, N_SERIES)[None, :]
        e = np.exp(-jm1 * a[:, None] * t[:, None])  # z^{-(j-1) alpha}
        ratio = coef[:, 1:] / safe_a1[:, None]
        rr = (ratio * e).sum(axis=1)
        val = np.log(safe_a1) - (a + 1.0) * t + np.log1p(rr)
        if not derivatives:
            return val, None, None
        lam = jm1 * a[:, None]
        r1 = (-lam * ratio * e).sum(axis=1)
        r2 = (lam * lam * ratio * e).sum(axis=1)
        d1 = -(a + 1.0) + r1 / (1.0 + rr)
        d2 = r2 / (1.0 + rr) - (r1 / (1.0 + rr)) ** 2
        return val, d1, d2

    def logsf_nodes(self, k: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``log P(Z > |z|)`` at node(s) ``k`` (broadcast with ``z``)."""
        az = np.abs(z)
        k = np.asarray(k)
        u = np.arcsinh(az * (1.0 / Z_SCALE))
        val = self._spline(self.sf_coef, k, u, False)[0]
        far = u > U_MAX
        if far.any():
            kf = np.broadcast_to(k, az.shape)[far]
            t = np.log(az[far])
            a = self.alphas[kf]
            coef = self.sf_series[kf]
            jj = np.arange(N_SERIES)[None, :]
            e = np.exp(-jj * a[:, None] * t[:, None])
            b1 = np.where(coef[:, 0] > 0, coef[:, 0], 1.0)
            val[far] = np.log(b1) - a * t + np.log1p((coef[:, 1:] / b1[:, None] * e[:, 1:]).sum(1))
        gauss = np.broadcast_to(k == self.n_alpha - 1, az.shape)
        if gauss.any():
            val[gauss] = log_ndtr(-az[gauss] / np.sqrt(2.0))
        return val

    # -- evaluation at arbitrary alpha ---------------------------------------------------
    def _bracket(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.clip(alpha, ALPHA_MIN, ALPHA_MAX) - ALPHA_MIN) / ALPHA_STEP
        k = np.minimum(np.floor(pos + 1e-9).astype(np.intp), self.n_alpha - 2)
        w = np.clip(pos - k, 0.0, 1.0)
        return k, w

    def _interp(
        self, lo: np.ndarray, hi: np.ndarray, k: np.ndarray, w: np.ndarray, tail: np.ndarray
    ) -> np.ndarray:
        """Interpolate log values between nodes ``k`` and ``k + 1`` (weight ``w``).

        Linear in log f for alpha < 1.9. For alpha >= 1.9 the tail weight ~ sin(pi alpha/2) ~
        (2 - alpha) makes log f far from linear in alpha, so the tail-scaled values
        ``f z^(alpha+1)`` (``S z^alpha`` for the survival function; ``tail`` holds
        ``max(log z, 0)``) are interpolated linearly instead. Errors against scipy: ~1e-4 in
        log f in the core, up to ~1e-2 at rare far-tail points."""
        out = (1.0 - w) * lo + w * hi
        near2 = self.alphas[k] >= _F_LINEAR_FROM
        if near2.any():
            kk, wl, tau = k[near2], w[near2], tail[near2]
            a_lo = self.alphas[kk]
            a_hi = self.alphas[kk + 1]
            a = a_lo + wl * (a_hi - a_lo)
            with np.errstate(divide="ignore"):
                out[near2] = (
                    np.logaddexp(
                        np.log1p(-wl) + lo[near2] + a_lo * tau,
                        np.log(wl) + hi[near2] + a_hi * tau,
                    )
                    - a * tau
                )
        return out

    def logpdf(self, z: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """``log f(z; alpha)`` of the standard SαS law for any alpha in [0.5, 2] (broadcast)."""
        z, alpha = np.broadcast_arrays(np.asarray(z, float), np.asarray(alpha, float))
        k, w = self._bracket(alpha)
        lo = self.logpdf_nodes(k, z)[0]
        hi = self.logpdf_nodes(k + 1, z)[0]
        return self._interp(lo, hi, k, w, _tail_log(z))

    def logsf(self, z: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """``log P(Z > |z|)`` for any alpha in [0.5, 2] (broadcast)."""
        z, alpha = np.broadcast_arrays(np.asarray(z, float), np.asarray(alpha, float))
        k, w = self._bracket(alpha)
        lo, hi = self.logsf_nodes(k, z), self.logsf_nodes(k + 1, z)
        return self._interp(lo, hi, k, w, _tail_log(z))

    def cdf(self, z: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """``P(Z <= z)`` of the standard SαS law."""
        z = np.asarray(z, float)
        sf = np.exp(self.logsf(z, alpha))
        return np.where(z > 0, 1.0 - sf, sf)


def _tail_log(z: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(np.abs(z)), 0.0)


def _row_logpdf(a: float, z: np.ndarray) -> np.ndarray:
    """log f at z > 0 (z = 0 handled by the caller)."""
    if a == 1.0:
        return -np.log(np.pi) - np.log1p(z * z)
    if a == 2.0:
        return -0.25 * z * z - _LOG_2SQRTPI
    return quadrature_logpdf(a, np.log(z))


def _u_grid() -> np.ndarray:
    return U_STEP * np.arange(round(U_MAX / U_STEP) + 1)


@functools.lru_cache(maxsize=1)
def get_table() -> SasTable:
    """Build (once per process) the SαS tables; about one second."""
    alphas = alpha_grid()
    u = _u_grid()
    nu = u.size
    z = Z_SCALE * np.sinh(u)
    pdf_series, sf_series = _series_coefficients(alphas)
    log_f0 = gammaln(1.0 + 1.0 / alphas) - np.log(np.pi)
    pdf_coef = np.empty((4, alphas.size, nu - 1))
    sf_coef = np.empty((4, alphas.size, nu - 1))
    zmax = float(z[-1])
    for i, a in enumerate(alphas):
        a = float(a)
        lp = np.empty(nu)
        lp[0] = log_f0[i]
        lp[1:] = _row_logpdf(a, z[1:])
        # h is even in z, hence in u: zero slope at u = 0
        pdf_coef[:, i] = CubicSpline(u, lp, bc_type=((1, 0.0), "not-a-knot")).c[::-1]
        # survival: S(z) = S(zmax) + int_u^U_MAX f(c sinh v) c cosh v dv
        if a == 2.0:
            logsf = log_ndtr(-z / np.sqrt(2.0))
        else:
            if a == 1.0:
                s_max = np.arctan(1.0 / zmax) / np.pi
            else:
                jj = np.arange(N_SERIES)
                s_max = float((sf_series[i] * zmax ** (-(jj + 1) * a)).sum())
            integrand = (np.exp(lp) * Z_SCALE * np.cosh(u))[::-1]
            cum = cumulative_simpson(integrand, dx=U_STEP, initial=0.0)[::-1]
            logsf = np.log(s_max + cum)
        sf_coef[:, i] = CubicSpline(u, logsf).c[::-1]
    return SasTable(
        alphas=alphas,
        u=u,
        pdf_coef=np.ascontiguousarray(pdf_coef.reshape(4, -1)),
        sf_coef=np.ascontiguousarray(sf_coef.reshape(4, -1)),
        pdf_series=pdf_series,
        sf_series=sf_series,
    )
