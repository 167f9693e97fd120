"""Discrete alternatives to a discrete power-law tail, normalised over the integers k >= q (private).

Clauset, Shalizi & Newman (2009), Table 2.1: a discrete distribution on the integers ``k >= q``
(``q = xmin``) has the pmf ``f(k) / sum_{j >= q} f(j)`` with the continuous family's basic form
``f``; here, in ``y = ln(k/q)`` (so that ``f(q) = 1``):

* lognormal             ``f = exp(e1 y + e2 y^2) / k``  (e2 < 0; e2 -> 0 is the zeta power law
  with exponent 1 - e1): natural parameters of the continuous fit, an exponential family;
* truncated power law   ``f = exp(-alpha y - mu (k/q - 1))``, ``mu = lambda q`` (mu = 0: the
  power law, nested);
* stretched exponential ``f = exp((beta - 1) y - kappa (e^(beta y) - 1))``, ``kappa = (lambda
  q)^beta`` (beta -> 0 with beta kappa fixed: the power law).

The normalising sums and the moments the MLE needs are computed without approximating the model:
the first terms are added directly (chunks of ``_CHUNK``) until Gregory's endpoint formula

    sum_{k >= N} g(k) = int_N^inf g(x) dx + g(N)/2 + sum_{m=1}^{10} G_m Delta^m g(N)

(G_m Gregory's coefficients, Delta the forward difference on the integers) has converged to
double precision (its last four corrections below 1e-16 of the sum so far), and the integral
is evaluated by the trapezoidal rule after ``x = N exp(e^s)``, which makes the integrand decay
double exponentially at both ends (560 nodes, s in [-45, 11]). Checked against direct summation
to 1e7 terms plus bounds, and mpmath, in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._powerlaw_alt import _maximise2, fit_lognormal_tail, fit_se_tail, fit_tpl_tail
from ._powerlaw_zeta import hurwitz_moments, log_hurwitz

_CHUNK = 64  # terms added directly per step (doubling after 8 steps, up to _MAX_CHUNK)
_MAX_CHUNK = 1 << 16
_MAX_STEPS = 16_000
# Gregory coefficients G_1..G_10 (1/log(1+x) = 1/x + 1/2 + sum_m G_m x^m)
_GREGORY = np.array(
    [
        -1 / 12,
        1 / 24,
        -19 / 720,
        3 / 160,
        -863 / 60480,
        275 / 24192,
        -33953 / 3628800,
        8183 / 1036800,
        -3250433 / 479001600,
        4671 / 788480,
    ]
)
_S_LO, _S_HI, _S_STEP = -45.0, 11.0, 0.1  # tail integral: x = N exp(e^s), s in [-45, 11]
_REFINE = 8  # halvings of the step at most

# log f(y, idx) -> log terms; stats(y, idx) -> (n_stats, len(idx), ...) statistics (>= 0)
LogF = Callable[[np.ndarray, np.ndarray], np.ndarray]
Stats = Callable[[np.ndarray, np.ndarray], np.ndarray]


def discrete_sums(
    log_f: LogF, stats: Stats | None, q: np.ndarray, n_stats: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(log Z, E[S])`` per tail: ``Z = sum_{k >= q} exp(log_f(ln(k/q)))`` and the means of the
    statistics ``S_j`` (all >= 0) under ``exp(log_f) / Z``. ``log_f(0) = 0`` is assumed (the
    first term is 1). The direct sum stops where the terms vary slowly on the integers (the
    Gregory series has converged there); for the three families, whose log-terms vary on a
    scale that grows with k, they then vary slowly beyond too."""
    q = np.asarray(q, dtype=np.float64)
    nb = q.size
    rows = 1 + n_stats
    acc = np.zeros((rows, nb))  # sums so far, in units of exp(shift)
    shift = np.zeros(nb)
    nxt = q.copy()  # first integer not yet added
    act = np.arange(nb)
    size = _CHUNK
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        for it in range(_MAX_STEPS):
            if act.size == 0:
                break
            if it >= 8:  # far from the start: longer and longer chunks
                size = min(2 * size, _MAX_CHUNK)
            j = np.arange(size + _GREGORY.size + 1, dtype=np.float64)
            k = nxt[act, None] + j[None, :]
            y = np.log1p((k - q[act, None]) / q[act, None])
            lf = log_f(y, act)
            top = lf.max(axis=1)
            grow = top > shift[act] + 50.0  # keep the terms in range: rescale the sums
            if grow.any():
                gi = act[grow]
                acc[:, gi] *= np.exp(shift[gi] - top[grow])
                shift[gi] = top[grow]
            e = np.exp(lf - shift[act, None])
            vals = e[None] if stats is None else np.concatenate([e[None], stats(y, act) * e[None]])
            acc[:, act] += vals[:, :, :size].sum(axis=2)
            nxt[act] += size
            ahead = vals[:, :, size:]  # g(N), ..., g(N + 10)
            diffs = [ahead]
            for _m in range(_GREGORY.size):
                diffs.append(np.diff(diffs[-1], axis=2))
            corr = np.stack([_GREGORY[m - 1] * diffs[m][:, :, 0] for m in range(1, 11)])
            late = np.abs(corr[-4:]).max(axis=0)
            ok = np.all(late <= 1e-16 * np.maximum(acc[:, act], 1e-300), axis=0)
            ok &= np.all(np.isfinite(ahead), axis=(0, 2))
            if ok.any():
                done = act[ok]
                acc[:, done] += 0.5 * ahead[:, ok, 0] + corr.sum(axis=0)[:, ok]
                _add_integral(acc, shift, log_f, stats, q, nxt, done, rows)
                act = act[~ok]
        if act.size:  # pragma: no cover - beyond 1e9 terms: the integral is all that is left
            _add_integral(acc, shift, log_f, stats, q, nxt, act, rows)
        log_z = np.log(acc[0]) + shift
        means = acc[1:] / acc[0]
    return log_z, means


def _add_integral(
    acc: np.ndarray,
    shift: np.ndarray,
    log_f: LogF,
    stats: Stats | None,
    q: np.ndarray,
    lower: np.ndarray,
    idx: np.ndarray,
    rows: int,
) -> None:
    """Add ``int_N^inf exp(log_f) (1, S) dx`` (N = ``lower``) to the sums ``acc`` of the tails
    ``idx`` (units ``exp(shift)``; both updated in place: the integral may dwarf the terms added
    so far). ``x = N exp(t)``, ``t = e^s``, trapezoid in s from step 0.1, halved until two
    successive steps agree to 1e-14 (a sharp exponential cut-off needs a finer step)."""
    y_n = np.log1p((lower[idx] - q[idx]) / q[idx])
    lq = np.log(q[idx])
    h = _S_STEP
    grid = np.arange(_S_LO, _S_HI + 1e-9, h)
    logw = _log_integrand(log_f, y_n, lq, idx, grid)
    c = np.max(np.where(np.isfinite(logw), logw, -np.inf), axis=1)
    c = np.where(np.isfinite(c), c, 0.0)
    est = h * _weighted(stats, y_n, idx, grid, logw - c[:, None], rows)
    act = np.arange(idx.size)
    for _ in range(_REFINE):
        mids = grid[:-1] + 0.5 * h
        h *= 0.5
        grid = np.sort(np.concatenate([grid, mids]))
        a = act
        lw = _log_integrand(log_f, y_n[a], lq[a], idx[a], mids) - c[a, None]
        new = 0.5 * est[:, a] + h * _weighted(stats, y_n[a], idx[a], mids, lw, rows)
        good = np.all(np.abs(new - est[:, a]) <= 1e-14 * np.abs(new), axis=0)
        est[:, a] = new
        act = a[~good]
        if act.size == 0:
            break
    top = np.maximum(shift[idx], c)
    acc[:, idx] = acc[:, idx] * np.exp(shift[idx] - top) + est * np.exp(c - top)
    shift[idx] = top


def _log_integrand(
    log_f: LogF, y_n: np.ndarray, lq: np.ndarray, idx: np.ndarray, nodes: np.ndarray
) -> np.ndarray:
    """``log(f(x) x t)`` at the s ``nodes`` (x = q e^y, y = y_N + t, t = e^s; dx = x t ds)."""
    y = y_n[:, None] + np.exp(nodes)[None, :]
    return log_f(y, idx) + lq[:, None] + y + nodes[None, :]


def _weighted(
    stats: Stats | None,
    y_n: np.ndarray,
    idx: np.ndarray,
    nodes: np.ndarray,
    logw: np.ndarray,
    rows: int,
) -> np.ndarray:
    """Sums over the nodes of ``exp(logw) (1, S)``."""
    w = np.exp(logw)
    w = np.where(np.isfinite(w), w, 0.0)
    if stats is None:
        return w.sum(axis=1)[None]
    y = y_n[:, None] + np.exp(nodes)[None, :]
    sw = np.where(w > 0, stats(y, idx) * w[None], 0.0)  # far nodes: w = 0, a statistic inf
    return np.concatenate([w[None], sw]).sum(axis=2)[:rows]


# --------------------------------------------------------------------------------------------
# the three families: statistics and maximum likelihood
# --------------------------------------------------------------------------------------------
def lognormal_logf(e1: np.ndarray, e2: np.ndarray) -> LogF:
    """``log f = e1 y + e2 y^2 - y`` (the ``1/k`` base measure as ``q e^y``, up to 1/q)."""
    return lambda y, i: (e1[i, None] - 1.0) * y + e2[i, None] * y * y


def _ln_stats(y: np.ndarray, i: np.ndarray) -> np.ndarray:
    y2 = y * y
    return np.stack([y, y2, y2 * y, y2 * y2])


def fit_lognormal_discrete(
    ybar: np.ndarray, y2bar: np.ndarray, q: np.ndarray, e1: np.ndarray, e2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MLE ``(e1, e2 < 0)`` of the discrete lognormal from the tail means of y and y^2, started
    at ``(e1, e2)``: damped Newton in ``(e1, log(-e2))`` (concave in the natural parameters)."""

    def value(f1: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> np.ndarray:
        f2 = -np.exp(nu)
        lz, _ = discrete_sums(lognormal_logf(f1, f2), None, q[idx], 0)
        return f1 * ybar[idx] + f2 * y2bar[idx] - lz

    def derivs(f1: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        f2 = -np.exp(nu)
        lz, (m1, m2, m3, m4) = discrete_sums(lognormal_logf(f1, f2), _ln_stats, q[idx], 4)
        g2 = y2bar[idx] - m2
        return (
            f1 * ybar[idx] + f2 * y2bar[idx] - lz,
            ybar[idx] - m1,
            g2 * f2,
            -(m2 - m1 * m1),
            -(m3 - m1 * m2) * f2,
            -(m4 - m2 * m2) * f2 * f2 + g2 * f2,
        )

    r1, r2 = _maximise2(e1, np.log(-e2), value, derivs)
    return r1, -np.exp(r2)


def tpl_logf(alpha: np.ndarray, mu: np.ndarray) -> LogF:
    """``log f = -alpha y - mu (e^y - 1)``."""
    return lambda y, i: -alpha[i, None] * y - mu[i, None] * np.expm1(y)


def _tpl_stats(y: np.ndarray, i: np.ndarray) -> np.ndarray:
    v = np.expm1(y)
    return np.stack([y, v, y * y, y * v, v * v])


def fit_tpl_discrete(
    ybar: np.ndarray, vbar: np.ndarray, q: np.ndarray, alpha: np.ndarray, mu: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MLE ``(alpha, mu > 0)`` of the discrete truncated power law from the tail means of
    ``y = ln(k/q)`` and ``v = k/q - 1``: damped Newton in ``(alpha, log mu)`` (concave)."""

    def value(al: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> np.ndarray:
        m = np.exp(nu)
        lz, _ = discrete_sums(tpl_logf(al, m), None, q[idx], 0)
        return -al * ybar[idx] - m * vbar[idx] - lz

    def derivs(al: np.ndarray, nu: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        m = np.exp(nu)
        lz, (ey, ev, eyy, eyv, evv) = discrete_sums(tpl_logf(al, m), _tpl_stats, q[idx], 5)
        g2 = ev - vbar[idx]
        return (
            -al * ybar[idx] - m * vbar[idx] - lz,
            ey - ybar[idx],
            g2 * m,
            -(eyy - ey * ey),
            -(eyv - ey * ev) * m,
            -(evv - ev * ev) * m * m + g2 * m,
        )

    r1, r2 = _maximise2(alpha, np.log(mu), value, derivs)
    return r1, np.exp(r2)


def se_logf(beta: np.ndarray, kappa: np.ndarray) -> LogF:
    """``log f = (beta - 1) y - kappa (e^(beta y) - 1)``."""
    return lambda y, i: (beta[i, None] - 1.0) * y - kappa[i, None] * np.expm1(beta[i, None] * y)


def fit_se_discrete(
    y: np.ndarray,
    starts: np.ndarray,
    q: np.ndarray,
    beta: np.ndarray,
    kappa: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """MLE ``(beta, kappa)`` of the discrete stretched exponential on flat tails ``y`` (segments
    at ``starts``): damped Newton in ``(log beta, log kappa)`` from ``(beta, kappa)``."""
    nseg = starts.size
    seg = np.repeat(np.arange(nseg), np.diff(np.append(starts, y.size)))
    n = np.diff(np.append(starts, y.size)).astype(np.float64)
    ybar = np.add.reduceat(y, starts) / n

    def data_terms(b: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """Tail means of e^(beta y) - 1, y e^(beta y), y^2 e^(beta y) (per segment idx)."""
        sel = np.isin(seg, idx)
        pos = np.searchsorted(idx, seg[sel])
        bb = b[pos]
        ys = y[sel]
        w = np.exp(bb * ys)
        out = []
        for v in (np.expm1(bb * ys), ys * w, ys * ys * w):
            out.append(np.bincount(pos, weights=v, minlength=idx.size) / n[idx])
        return tuple(out)

    def stats(b: np.ndarray) -> Stats:
        def fn(yy: np.ndarray, i: np.ndarray) -> np.ndarray:
            w = np.exp(b[i, None] * yy)
            wm1 = np.expm1(b[i, None] * yy)
            y2 = yy * yy
            return np.stack([yy, w * yy, wm1, y2, w * y2, w * w * y2, w * w * yy, wm1 * wm1])

        return fn

    def value(lb: np.ndarray, lk: np.ndarray, idx: np.ndarray) -> np.ndarray:
        b, kap = np.exp(lb), np.exp(lk)
        wm1, _, _ = data_terms(b, idx)
        lz, _ = discrete_sums(se_logf(b, kap), None, q[idx], 0)
        return (b - 1.0) * ybar[idx] - kap * wm1 - lz

    def derivs(lb: np.ndarray, lk: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        b, kap = np.exp(lb), np.exp(lk)
        wm1, wy, wy2 = data_terms(b, idx)
        lz, e = discrete_sums(se_logf(b, kap), stats(b), q[idx], 8)
        ey, ewy, ewm1, ey2, ewy2, ew2y2, ew2y, ewm1sq = e
        f = (b - 1.0) * ybar[idx] - kap * wm1 - lz
        # d log f / d beta = y - kappa w y, / d kappa = -(w - 1); second: -kappa w y^2, -w y, 0
        ea = ey - kap * ewy
        eb = -ewm1
        g_b = (ybar[idx] - kap * wy) - ea
        g_k = -wm1 - eb
        var_a = ey2 - 2 * kap * ewy2 + kap * kap * ew2y2 - ea * ea
        cov_ab = -(ewy - ey) + kap * (ew2y - ewy) - ea * eb
        var_b = ewm1sq - eb * eb
        h_bb = -kap * wy2 + kap * ewy2 - var_a
        h_bk = -wy + ewy - cov_ab
        h_kk = -var_b
        # chain rule to (log beta, log kappa)
        return (
            f,
            b * g_b,
            kap * g_k,
            b * b * h_bb + b * g_b,
            b * kap * h_bk,
            kap * kap * h_kk + kap * g_k,
        )

    r1, r2 = _maximise2(np.log(beta), np.log(kappa), value, derivs)
    return np.exp(r1), np.exp(r2)


# --------------------------------------------------------------------------------------------
# the alternatives on flat tails (as compare_tails lays them out)
# --------------------------------------------------------------------------------------------
def discrete_alternative(
    alternative: str,
    z: np.ndarray,
    seg: np.ndarray,
    starts: np.ndarray,
    nt: np.ndarray,
    q: np.ndarray,
    alpha: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``(pointwise log-pmf, parameters, at_boundary)`` of the discrete ``alternative`` fitted by
    maximum likelihood on flat tails ``z = ln(x/q)`` (``x`` integers >= ``q``; ``seg`` the tail of
    each value, ``starts`` the tails' offsets, ``nt`` their sizes); ``alpha`` is the discrete
    power law's MLE on each tail, the family's boundary. The log-pmf is comparable with the zeta
    power law's ``-alpha ln x - ln zeta(alpha, q)``; on boundary tails it is NaN (the caller
    uses the power law's). Each fit starts from the continuous fit of the family on its tail."""
    zbar = np.add.reduceat(z, starts) / nt
    nseg = nt.size
    if alternative == "lognormal":
        z2bar = np.add.reduceat(z * z, starts) / nt
        # KKT at the power law (e2 = 0, e1 = 1 - alpha): d/de2 = n (mean y^2 - E_pl[y^2]) >= 0
        boundary = z2bar >= hurwitz_moments(alpha, q)[2]
        c1, c2, _ = fit_lognormal_tail(zbar, z2bar)  # the continuous fit: the start
        c2 = np.where(c2 < 0, c2, -0.5 / np.maximum(z2bar - zbar * zbar, 1e-12))
        e1, e2 = _fit_inner(boundary, fit_lognormal_discrete, zbar, z2bar, q, c1, c2)
        log_f = lognormal_logf(e1, e2)
        with np.errstate(invalid="ignore"):
            sig = np.where(boundary, np.inf, np.sqrt(-0.5 / e2))
        params = {"mu": np.where(boundary, -np.inf, e1 * sig * sig + np.log(q)), "sigma": sig}
    elif alternative == "truncated_power_law":
        vbar = np.add.reduceat(np.expm1(z), starts) / nt
        # KKT at the power law (mu = 0): d/dmu = n (E_pl[k/q] - mean k/q) <= 0; E_pl[k/q] =
        # zeta(alpha - 1, q) / (q zeta(alpha, q)), infinite for alpha <= 2
        with np.errstate(over="ignore"):
            a1 = np.where(alpha > 2, alpha - 1.0, 2.0)  # (2.0: unused placeholder)
            e_pl = np.where(
                alpha > 2, np.exp(log_hurwitz(a1, q) - log_hurwitz(alpha, q)) / q, np.inf
            )
        boundary = e_pl <= vbar + 1.0
        a0, m0, cb = fit_tpl_tail(zbar, vbar + 1.0)
        m0 = np.where(cb | ~(m0 > 0), 1.0 / np.maximum(vbar, 1e-12), m0)
        a_t, mu_t = _fit_inner(boundary, fit_tpl_discrete, zbar, vbar, q, a0, m0)
        log_f = tpl_logf(a_t, mu_t)
        params = {
            "alpha": np.where(boundary, alpha, a_t),
            "lambda": np.where(boundary, 0.0, mu_t / q),
        }
    else:  # stretched exponential: the power law is its limit beta -> 0
        b0, lk0, cb = fit_se_tail(z, starts, nt)
        b0 = np.where(cb, 0.05, b0)
        k0 = np.where(cb, np.maximum(alpha - 1.0, 1e-3) / 0.05, np.exp(lk0))
        beta, kappa = fit_se_discrete(z, starts, q, b0, k0)
        log_f = se_logf(beta, kappa)
        boundary = np.zeros(nseg, dtype=bool)
        with np.errstate(over="ignore"):
            lam = kappa ** (1.0 / beta) / q
        params = {"beta": beta, "lambda": lam}
    every = np.flatnonzero(~boundary)
    log_z = np.full(nseg, np.nan)
    if every.size:
        log_z[every] = discrete_sums(_subset(log_f, every), None, q[every], 0)[0]
    with np.errstate(invalid="ignore", over="ignore"):
        ll = log_f(z[:, None], seg)[:, 0] - log_z[seg]
    if alternative == "stretched_exponential":  # boundary when no beta beats the power law
        ll_pl = -alpha[seg] * z - (log_hurwitz(alpha, q) + alpha * np.log(q))[seg]
        boundary = ~(np.add.reduceat(ll, starts) > np.add.reduceat(ll_pl, starts))
        params = {
            "beta": np.where(boundary, 0.0, params["beta"]),
            "lambda": np.where(boundary, np.nan, params["lambda"]),
        }
    return ll, params, boundary


def _subset(log_f: LogF, which: np.ndarray) -> LogF:
    """``log_f`` restricted to the tails ``which`` (renumbered 0, 1, ...)."""
    return lambda y, i: log_f(y, which[i])


def _fit_inner(
    boundary: np.ndarray,
    fit: Callable[..., tuple[np.ndarray, np.ndarray]],
    m1: np.ndarray,
    m2: np.ndarray,
    q: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``fit(m1, m2, q, s1, s2)`` on the tails off the boundary; NaN on the boundary."""
    p1, p2 = np.full(q.size, np.nan), np.full(q.size, np.nan)
    inner = np.flatnonzero(~boundary)
    if inner.size:
        p1[inner], p2[inner] = fit(m1[inner], m2[inner], q[inner], s1[inner], s2[inner])
    return p1, p2
