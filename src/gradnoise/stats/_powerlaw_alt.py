"""Alternatives to a power-law tail, fitted by exact MLE on the tail x >= xmin (private).

All fits are vectorised over many tails. A tail is passed as the flat concatenation ``z`` of
``ln(x/xmin)`` (and ``y = x/xmin``) with per-tail offsets; every family is truncated at xmin:

* exponential  p(x) = lam exp(-lam (x - xmin)): closed form (geometric pmf when discrete);
* lognormal    density of z = ln(x/xmin) is a normal truncated to z >= 0. In natural
  parameters (e1, e2) = (m/s^2, -1/(2 s^2)) the log-likelihood is concave; its closure
  ``e2 = 0`` is the power law itself (exponential in z), which is where the MLE sits when the
  tail is heavier than any lognormal (then the two fits coincide and R = 0);
* truncated power law p(x) ∝ x^-alpha exp(-lam x): exponential family in (alpha, lam) with the
  normaliser ``xmin^(1-alpha) E_alpha(lam xmin)`` (generalised exponential integral); concave,
  with the power law at lam = 0 (nested);
* stretched exponential p(x) ∝ x^(beta-1) exp(-lam^beta x^beta): lam^beta is profiled out in
  closed form, beta maximised in one dimension; beta -> 0 is again the power law.

References: Clauset, Shalizi & Newman (2009), SIAM Rev. 51:661, Table 2.1 and Appendix C.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _maximise2(
    x1: np.ndarray,
    x2: np.ndarray,
    value,  # (x1, x2, idx) -> objective
    derivs,  # (x1, x2, idx) -> (f, g1, g2, h11, h12, h22)
    *,
    max_iter: int = 200,
    tol: float = 1e-15,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised damped Newton ascent in two unconstrained coordinates.

    Newton direction where the Hessian is negative definite, else the gradient (scaled by the
    diagonal); backtracking (at most 40 halvings) until the objective increases. An element
    stops when the Newton decrement ``g . d`` is below ``tol (1 + |f|)`` (the objective is
    then within about that of its maximum) or when no step improves it.
    """
    x1 = x1.copy()
    x2 = x2.copy()
    act = np.arange(x1.size)
    for _ in range(max_iter):
        if act.size == 0:
            break
        a1, a2 = x1[act], x2[act]
        f, g1, g2, h11, h12, h22 = derivs(a1, a2, act)
        det = h11 * h22 - h12 * h12
        nd = (h11 < 0) & (det > 0) & np.isfinite(det)
        det = np.where(nd, det, 1.0)
        d1 = np.where(nd, -(h22 * g1 - h12 * g2) / det, g1 / np.maximum(np.abs(h11), 1e-12))
        d2 = np.where(nd, -(h11 * g2 - h12 * g1) / det, g2 / np.maximum(np.abs(h22), 1e-12))
        dec = g1 * d1 + g2 * d2
        converged = np.abs(dec) <= tol * (1.0 + np.abs(f))
        t = np.ones_like(a1)
        accepted = np.zeros(act.size, dtype=bool)
        pending = ~converged
        n1, n2 = a1.copy(), a2.copy()
        for _ in range(40):
            if not pending.any():
                break
            c1 = a1 + t * d1
            c2 = a2 + t * d2
            with np.errstate(all="ignore"):
                val = value(c1, c2, act)
            good = pending & np.isfinite(val) & (val > f)
            n1 = np.where(good, c1, n1)
            n2 = np.where(good, c2, n2)
            accepted |= good
            pending &= ~good
            t = np.where(pending, 0.5 * t, t)
        x1[act], x2[act] = n1, n2
        act = act[accepted]
    return x1, x2


# --------------------------------------------------------------------------------------------
# generalised exponential integral E_p(x) = int_1^inf t^-p exp(-x t) dt
# --------------------------------------------------------------------------------------------
def _log_expint_cf(p: np.ndarray, x: np.ndarray, iters: int = 300) -> np.ndarray:
    """ln E_p(x) for x >= 1 by the continued fraction of Gamma(1-p, x) (modified Lentz)."""
    tiny = 1e-300
    b = x + p
    c = np.full_like(b, 1.0 / tiny)
    d = 1.0 / np.where(b == 0, tiny, b)
    h = d.copy()
    done = np.zeros(b.shape, dtype=bool)
    for i in range(1, iters):
        an = -i * (p - 1.0 + i)
        b = b + 2.0
        d = an * d + b
        d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        delta = c * d
        h = np.where(done, h, h * delta)  # per element: results do not depend on the batch
        done |= np.abs(delta - 1.0) < 1e-16
        if done.all():
            break
    return -x + np.log(h)


def _upper_gamma_small_s(s: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gamma(s, x) for |s| <= 1/2 and 0 < x < 1, stable through s = 0.

    ``Gamma(s, x) = Gamma(s) - gamma(s, x) = [Gamma(1+s) - x^s]/s - x^s sum_{k>=1}
    (-x)^k / (k! (s+k))``, with the bracket as a difference of ``expm1`` terms.
    """
    lx = np.log(x)
    s_safe = np.where(s == 0, 1.0, s)
    head = np.where(
        s == 0,
        -np.euler_gamma - lx,
        (special.expm1(special.gammaln(1.0 + s)) - special.expm1(s * lx)) / s_safe,
    )
    term = np.ones_like(x)
    series = np.zeros_like(x)
    for k in range(1, 40):
        term = term * (-x) / k
        series = series + term / (s + k)
    return head - np.exp(s * lx) * series


def log_expint(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``ln E_p(x)`` for real ``p`` and ``x >= 0`` (``x = 0`` needs ``p > 1``: ``E_p(0) = 1/(p-1)``).

    ``x >= 1``: continued fraction. ``x < 1``: ``E_p(x) = x^(p-1) Gamma(1-p, x)`` with scipy's
    regularised incomplete gamma when ``1-p > 1/2``, a series stable through the poles for
    ``|1-p| <= 1/2``, and the forward recurrence ``E_{p+1} = (e^-x - x E_p)/p`` (stable for x < 1,
    p >= 1/2) above.
    """
    p, x = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(x, dtype=np.float64))
    shape = p.shape
    p = p.ravel()
    x = x.ravel()
    out = np.empty(p.size)
    zero = x == 0
    pz = p[zero]
    out[zero] = np.where(pz > 1, -np.log(np.where(pz > 1, pz - 1.0, 1.0)), np.inf)
    big = x >= 1
    if big.any():
        out[big] = _log_expint_cf(p[big], x[big])
    small = ~big & ~zero
    if small.any():
        ps, xs = p[small], x[small]
        res = np.empty(ps.size)
        s = 1.0 - ps
        direct = s > 0.5
        if direct.any():
            sd, xd = s[direct], xs[direct]
            res[direct] = (
                (ps[direct] - 1.0) * np.log(xd)
                + np.log(special.gammaincc(sd, xd))
                + special.gammaln(sd)
            )
        rec = ~direct
        if rec.any():
            pr, xr = ps[rec], xs[rec]
            steps = np.floor(pr - 0.5)  # base order p0 = pr - steps in [0.5, 1.5)
            p0 = pr - steps
            e = np.exp((p0 - 1.0) * np.log(xr)) * _upper_gamma_small_s(1.0 - p0, xr)
            order = p0.copy()
            ex = np.exp(-xr)
            for k in range(int(steps.max())):
                act = steps > k
                e = np.where(act, (ex - xr * e) / order, e)
                order = np.where(act, order + 1.0, order)
            res[rec] = np.log(e)
        out[small] = res
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------
# normal truncated to z >= 0, natural parameters (e1, e2), e2 <= 0
# --------------------------------------------------------------------------------------------
def _log_erfcx(w: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):
        neg = w < -20.0
        wn = np.where(neg, w, 0.0)
        safe = np.log(np.where(neg, 1.0, special.erfcx(np.where(neg, 0.0, w))))
        alt = wn * wn + np.log(2.0 - special.erfcx(-wn) * np.exp(-wn * wn))
    return np.where(neg, alt, safe)


def tn_log_partition(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """``A = ln int_0^inf exp(e1 z + e2 z^2) dz`` (``e2 <= 0``; ``e2 = 0`` needs ``e1 < 0``)."""
    c = -e2
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.sqrt(np.where(c > 0, c, 1.0))
        w = -e1 / (2.0 * sc)
        inner = math.log(math.sqrt(math.pi) / 2.0) - np.log(sc) + _log_erfcx(w)
        bound = -np.log(np.where(e1 < 0, -e1, np.nan))
    return np.where(c > 0, inner, bound)


def tn_moments(e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, ...]:
    """``E[z^j]``, j = 1..4, of the density ∝ exp(e1 z + e2 z^2) on z >= 0.

    With ``s^2 = -1/(2 e2)``, ``m = e1 s^2``, ``a = m/s``: for ``a >= -2`` the recursion
    ``E z = m + s phi(a)/Phi(a)``, ``E z^j = m E z^(j-1) + (j-1) s^2 E z^(j-2)``; for ``a < -2``
    (towards the exponential limit, where that recursion cancels) the exact continued-fraction
    form ``E z^j = j! (-1/e1)^j / prod_{k<=j} d_k``, ``d_k = 1 + (k+1) eps / d_{k+1}``,
    ``eps = 1/a^2`` (from Laplace's continued fraction of Mills' ratio), continuous at ``e2 = 0``.
    """
    c = -e2
    pos = c > 0
    cs = np.where(pos, c, 1.0)
    s2 = 1.0 / (2.0 * cs)
    s = np.sqrt(s2)
    m = e1 * s2
    a = np.where(pos, m / s, -np.inf)
    use_cf = a < -2.0
    # continued fraction branch (also e2 = 0)
    eps = np.where(use_cf & pos, 2.0 * cs / np.where(use_cf, e1 * e1, 1.0), 0.0)
    d = np.ones_like(e1)
    dk = {}
    for k in range(100, 0, -1):
        d = 1.0 + (k + 1) * eps / d
        if k <= 4:
            dk[k] = d
    scale = np.where(use_cf, -1.0 / np.where(use_cf, e1, -1.0), 0.0)
    cf1 = scale / dk[1]
    cf2 = 2.0 * scale**2 / (dk[1] * dk[2])
    cf3 = 6.0 * scale**3 / (dk[1] * dk[2] * dk[3])
    cf4 = 24.0 * scale**4 / (dk[1] * dk[2] * dk[3] * dk[4])
    # direct branch (its values are discarded where the continued fraction is used)
    ad = np.where(use_cf, 0.0, a)
    lam = _SQRT_2_OVER_PI / special.erfcx(-ad / math.sqrt(2.0))
    with np.errstate(over="ignore", invalid="ignore"):
        d1 = m + s * lam
        d2 = s2 + m * d1
        d3 = m * d2 + 2.0 * s2 * d1
        d4 = m * d3 + 3.0 * s2 * d2
    return (
        np.where(use_cf, cf1, d1),
        np.where(use_cf, cf2, d2),
        np.where(use_cf, cf3, d3),
        np.where(use_cf, cf4, d4),
    )


def fit_lognormal_tail(zbar: np.ndarray, z2bar: np.ndarray) -> tuple[np.ndarray, ...]:
    """MLE of the truncated normal on ``z >= 0`` from ``mean z`` and ``mean z^2`` per tail.

    Returns ``(e1, e2, at_boundary)``. KKT: at the best boundary point ``(-1/zbar, 0)`` the
    e2-derivative is ``n (z2bar - 2 zbar^2)``; when it is >= 0 the boundary (the power law) is
    the maximiser. Otherwise the (unique, by concavity) interior maximiser is found by damped
    Newton in ``(e1, ln(-e2))``.
    """
    zbar = np.asarray(zbar, dtype=np.float64)
    z2bar = np.asarray(z2bar, dtype=np.float64)
    boundary = z2bar >= 2.0 * zbar * zbar
    var = np.maximum(z2bar - zbar * zbar, 1e-300)
    e1 = np.where(boundary, -1.0 / zbar, zbar / var)
    e2 = np.where(boundary, 0.0, -0.5 / var)
    inner = np.flatnonzero(~boundary)
    if inner.size:
        zb, z2b = zbar[inner], z2bar[inner]

        def value(f1: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> np.ndarray:
            f2 = -np.exp(nu)
            return f1 * zb[idx] + f2 * z2b[idx] - tn_log_partition(f1, f2)

        def derivs(f1: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
            f2 = -np.exp(nu)
            m1, m2, m3, m4 = tn_moments(f1, f2)
            g1 = zb[idx] - m1
            g2 = z2b[idx] - m2
            f = f1 * zb[idx] + f2 * z2b[idx] - tn_log_partition(f1, f2)
            return (
                f,
                g1,
                g2 * f2,
                -(m2 - m1 * m1),
                -(m3 - m1 * m2) * f2,
                -(m4 - m2 * m2) * f2 * f2 + g2 * f2,
            )

        r1, r2 = _maximise2(e1[inner], np.log(-e2[inner]), value, derivs)
        e1[inner] = r1
        e2[inner] = -np.exp(r2)
    return e1, e2, boundary


# --------------------------------------------------------------------------------------------
# truncated power law in y = x/xmin: density y^-alpha exp(-mu y) / E_alpha(mu), mu = lam xmin
# --------------------------------------------------------------------------------------------
def _tpl_terms(alpha: np.ndarray, mu: np.ndarray, h: float = 1e-5) -> tuple[np.ndarray, ...]:
    """ln E_alpha(mu), E[ln y], E[y], Var ln y, Var y, Cov(ln y, y) under the TPL."""
    le = log_expint(alpha, mu)
    lp = log_expint(alpha + h, mu)
    lm = log_expint(alpha - h, mu)
    e_ln = -(lp - lm) / (2 * h)
    var_ln = (lp - 2 * le + lm) / (h * h)
    le1 = log_expint(alpha - 1.0, mu)
    le2 = log_expint(alpha - 2.0, mu)
    e_y = np.exp(le1 - le)
    e_y2 = np.exp(le2 - le)
    e_yln = e_y * (-(log_expint(alpha - 1.0 + h, mu) - log_expint(alpha - 1.0 - h, mu)) / (2 * h))
    return le, e_ln, e_y, np.maximum(var_ln, 1e-300), e_y2 - e_y * e_y, e_yln - e_y * e_ln


def fit_tpl_tail(zbar: np.ndarray, ybar: np.ndarray) -> tuple[np.ndarray, ...]:
    """MLE ``(alpha, mu, at_boundary)`` of the truncated power law from mean ln y and mean y.

    KKT at the power law (mu = 0, alpha = 1 + 1/zbar): the mu-derivative is
    ``n (E[y] - ybar)`` with ``E[y] = (alpha-1)/(alpha-2)`` (infinite for alpha <= 2); when it is
    <= 0 the power law is the maximiser. Otherwise the interior maximiser (unique: the
    likelihood is concave) is found by damped Newton in ``(alpha, ln mu)``, with the
    alpha-derivatives of ``ln E_alpha`` by central differences.
    """
    zbar = np.asarray(zbar, dtype=np.float64)
    ybar = np.asarray(ybar, dtype=np.float64)
    a_pl = 1.0 + 1.0 / zbar
    with np.errstate(divide="ignore", invalid="ignore"):
        ey_pl = np.where(a_pl > 2, (a_pl - 1.0) / (a_pl - 2.0), np.inf)
    boundary = ey_pl <= ybar
    alpha = a_pl.copy()
    mu = np.zeros_like(a_pl)
    inner = np.flatnonzero(~boundary)
    if inner.size:
        zb, yb = zbar[inner], ybar[inner]

        def value(al: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> np.ndarray:
            m = np.exp(nu)
            return -al * zb[idx] - m * yb[idx] - log_expint(al, m)

        def derivs(al: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
            m = np.exp(nu)
            le, e_ln, e_y, v_ln, v_y, cov = _tpl_terms(al, m)
            g1 = e_ln - zb[idx]
            g2 = e_y - yb[idx]
            f = -al * zb[idx] - m * yb[idx] - le
            return f, g1, g2 * m, -v_ln, -cov * m, -v_y * m * m + g2 * m

        start_mu = 1.0 / np.maximum(yb - 1.0, 1e-12)
        r1, r2 = _maximise2(alpha[inner], np.log(start_mu), value, derivs)
        alpha[inner] = r1
        mu[inner] = np.exp(r2)
    return alpha, mu, boundary


# --------------------------------------------------------------------------------------------
# stretched exponential in y: density beta k y^(beta-1) exp(-k (y^beta - 1)), k = (lam xmin)^beta
# --------------------------------------------------------------------------------------------
def _se_sums(
    beta: np.ndarray, z: np.ndarray, seg: np.ndarray, starts: np.ndarray, zmax: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Scaled ``T = sum (e^{beta z} - 1)``, ``T'``, ``T''`` (times e^{-beta zmax}), per tail."""
    b = beta[seg]
    bz = b * zmax[seg]
    e = np.exp(b * (z - zmax[seg]))
    small = bz < 1.0
    t = np.where(small, special.expm1(b * z) * np.exp(-bz), e - np.exp(-bz))
    ze = z * e
    return (
        np.add.reduceat(t, starts),
        np.add.reduceat(ze, starts),
        np.add.reduceat(z * ze, starts),
    )


def _se_profile(
    beta: np.ndarray, n: np.ndarray, zsum: np.ndarray, t_scaled: np.ndarray, zmax: np.ndarray
) -> np.ndarray:
    """Profile log-likelihood per observation (y units) at beta, k = n/T."""
    log_t = np.log(t_scaled) + beta * zmax
    return np.log(beta) + np.log(n) - log_t - 1.0 + (beta - 1.0) * zsum / n


def fit_se_tail(
    z: np.ndarray, starts: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MLE ``(beta, log k, at_boundary)`` of the stretched exponential on flat tails ``z``.

    ``k = (lam xmin)^beta`` is profiled out (``k = n / sum(y^beta - 1)``). The profile in beta is
    evaluated on a log grid, then refined by safeguarded Newton around the best grid point. As
    beta -> 0 the family tends to the power law, whose log-likelihood is the value there; the
    boundary is reported when no beta beats it.
    """
    nseg = starts.size
    seg = np.repeat(np.arange(nseg), np.diff(np.append(starts, z.size)))
    zsum = np.add.reduceat(z, starts)
    zmax = np.maximum.reduceat(z, starts)
    zbar = zsum / n
    # value at the power-law limit (per observation): ln(b) - 1 - zbar... with b = 1/zbar
    pl_val = np.log(1.0 / zbar) - 1.0 - zbar
    grid = np.exp(np.linspace(np.log(1e-3), np.log(60.0), 41))
    scale = 1.0 / np.maximum(zbar, 1e-300)  # beta z ~ 1 at the mean
    best_val = np.full(nseg, -np.inf)
    best_b = np.full(nseg, np.nan)
    best_i = np.zeros(nseg, dtype=np.int64)
    for i, g in enumerate(grid):
        beta = g * scale
        t, _, _ = _se_sums(beta, z, seg, starts, zmax)
        with np.errstate(divide="ignore", invalid="ignore"):
            val = _se_profile(beta, n, zsum, t, zmax)
        upd = val > best_val
        best_val = np.where(upd, val, best_val)
        best_b = np.where(upd, beta, best_b)
        best_i = np.where(upd, i, best_i)
    lo = grid[np.maximum(best_i - 1, 0)] * scale
    hi = grid[np.minimum(best_i + 1, grid.size - 1)] * scale
    beta = best_b.copy()
    for _ in range(100):
        t, t1, t2 = _se_sums(beta, z, seg, starts, zmax)
        r1 = t1 / t
        d1 = 1.0 / beta - r1 + zbar
        d2 = -1.0 / beta**2 - (t2 / t - r1 * r1)
        lo = np.where(d1 > 0, beta, lo)
        hi = np.where(d1 < 0, beta, hi)
        step = np.where(d2 < 0, -d1 / np.where(d2 < 0, d2, -1.0), np.nan)
        new = beta + step
        bad = ~np.isfinite(new) | (new <= lo) | (new >= hi)
        new = np.where(bad, 0.5 * (lo + hi), new)
        conv = np.abs(new - beta) <= 1e-13 * beta
        beta = new
        if conv.all():
            break
    t, _, _ = _se_sums(beta, z, seg, starts, zmax)
    val = _se_profile(beta, n, zsum, t, zmax)
    keep_grid = best_val > val
    beta = np.where(keep_grid, best_b, beta)
    val = np.where(keep_grid, best_val, val)
    t, _, _ = _se_sums(beta, z, seg, starts, zmax)
    log_k = np.log(n) - (np.log(t) + beta * zmax)
    boundary = ~(val > pl_val)
    return beta, log_k, boundary
