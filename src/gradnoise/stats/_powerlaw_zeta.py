"""Discrete power law on the integers k >= q: Hurwitz zeta, exact MLE, sampler (private).

The pmf is ``P(X = k) = k**-a / zeta(a, q)`` (Clauset, Shalizi & Newman 2009, eq. 2.4), with the
Hurwitz zeta ``zeta(a, q) = sum_{k >= 0} (q + k)**-a``. Everything is computed on the scaled sum
``q**a zeta(a, q) = sum_k ((q + k)/q)**-a`` so that nothing underflows for large ``a`` or ``q``.
"""

from __future__ import annotations

import numpy as np

# B_{2j} / (2j)!  for j = 1..8 (Euler–Maclaurin correction coefficients).
_BERNOULLI = np.array(
    [1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6, -3617 / 510], dtype=np.float64
)
_FACT = np.array(
    [2.0, 24.0, 720.0, 40320.0, 3628800.0, 479001600.0, 87178291200.0, 2.0922789888e13]
)
_EM_COEF = _BERNOULLI / _FACT


def hurwitz_moments(
    a: np.ndarray, q: np.ndarray, *, moments: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ln zeta(a, q), E[ln(X/q)], E[ln(X/q)**2])`` for the discrete power law on k >= q.

    Euler–Maclaurin: ``zeta(a, q) = sum_{k<N} (q+k)**-a + w**(1-a)/(a-1) + w**-a/2
    + sum_{j=1}^{8} B_2j/(2j)! (a)_{2j-1} w**(-a-2j+1)`` with ``w = q + N >= max(15, 2a)``; the
    remainder is below 1e-16 relative for ``1 < a <= 1000``. The a-derivatives of each term give
    the log-moments (``E[ln X] = -d/da ln zeta``) used by the MLE and its standard error.
    Requires ``a > 1`` and ``q > 0``; ``moments`` in {0, 1, 2} limits the work.
    """
    a, q = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(q, dtype=np.float64))
    shape = a.shape
    a = a.ravel()
    q = q.ravel()
    target = np.maximum(15.0, 2.0 * a)
    nterms = np.maximum(np.ceil(target - q), 0.0)
    nmax = int(nterms.max()) if nterms.size else 0
    s0 = np.zeros_like(a)
    s1 = np.zeros_like(a)
    s2 = np.zeros_like(a)
    for k in range(nmax):
        active = nterms > k
        if not active.all():
            idx = np.flatnonzero(active)
            ell = np.log1p(k / q[idx])
            t = np.exp(-a[idx] * ell)
            s0[idx] += t
            if moments >= 1:
                t = t * ell
                s1[idx] -= t
                if moments >= 2:
                    s2[idx] += t * ell
        else:
            ell = np.log1p(k / q)
            t = np.exp(-a * ell)
            s0 += t
            if moments >= 1:
                t = t * ell
                s1 -= t
                if moments >= 2:
                    s2 += t * ell
    w = q + nterms
    ellw = np.log1p(nterms / q)
    ew = np.exp(-a * ellw)
    am1 = a - 1.0
    # integral term  h = w/(a-1) * ew
    h = w / am1 * ew
    g1 = -1.0 / am1 - ellw
    s0 += h
    if moments >= 1:
        s1 += h * g1
        if moments >= 2:
            s2 += h * (g1 * g1 + 1.0 / (am1 * am1))
    # half term  h = ew / 2
    h = 0.5 * ew
    s0 += h
    if moments >= 1:
        s1 -= h * ellw
        if moments >= 2:
            s2 += h * ellw * ellw
    # Bernoulli corrections
    poly = np.ones_like(a)  # (a)_{2j-1}
    sig1 = np.zeros_like(a)
    sig2 = np.zeros_like(a)
    wpow = np.ones_like(a)  # w**(1-2j)
    inv_w2 = 1.0 / (w * w)
    nxt = 0  # next factor index i in prod_{i=0}^{2j-2} (a + i)
    for j, coef in enumerate(_EM_COEF, start=1):
        while nxt <= 2 * j - 2:
            ai = a + nxt
            poly = poly * ai
            sig1 = sig1 + 1.0 / ai
            sig2 = sig2 + 1.0 / (ai * ai)
            nxt += 1
        wpow = wpow / w if j == 1 else wpow * inv_w2
        h = coef * poly * wpow * ew
        s0 += h
        if moments >= 1:
            d1 = sig1 - ellw
            s1 += h * d1
            if moments >= 2:
                s2 += h * (d1 * d1 - sig2)
    logz = np.log(s0) - a * np.log(q)
    m1 = -s1 / s0
    m2 = s2 / s0
    return logz.reshape(shape), m1.reshape(shape), m2.reshape(shape)


def log_hurwitz(a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``ln zeta(a, q)`` without underflow (see :func:`hurwitz_moments`)."""
    return hurwitz_moments(a, q, moments=0)[0]


def discrete_alpha_mle(
    ybar: np.ndarray, q: np.ndarray, *, tol: float = 1e-13, max_iter: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Exact discrete MLE of ``a`` and the Fisher information per observation.

    Solves ``E_a[ln(X/q)] = ybar`` (the score equation of ``-a sum ln x - n ln zeta(a, q)``,
    Clauset et al. 2009 eq. 3.5), where ``ybar`` is the tail mean of ``ln(x/q)``, by Newton's
    method safeguarded with a bracket (the left side is decreasing in ``a`` because its
    derivative is ``-Var_a[ln X]``). Returns ``(a, Var_a[ln X])``; ``ybar > 0`` is required.
    """
    ybar = np.asarray(ybar, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    # Clauset's approximation (eq. 3.7) as the start; always > 1.
    a = 1.0 + 1.0 / (ybar + np.log(q / (q - 0.5)))
    lo = np.ones_like(a)
    hi = np.full_like(a, np.inf)
    var = np.ones_like(a)
    active = np.ones(a.shape, dtype=bool)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        ai = a[idx]
        _, m1, m2 = hurwitz_moments(ai, q[idx])
        v = np.maximum(m2 - m1 * m1, 1e-300)
        var[idx] = v
        f = m1 - ybar[idx]  # decreasing in a; root wanted
        lo[idx] = np.where(f > 0, ai, lo[idx])
        hi[idx] = np.where(f < 0, ai, hi[idx])
        step = f / v
        new = ai + step
        bad = (new <= lo[idx]) | (new >= hi[idx]) | ~np.isfinite(new)
        bisect = np.where(np.isfinite(hi[idx]), 0.5 * (lo[idx] + hi[idx]), 2.0 * ai - 1.0)
        new = np.where(bad, bisect, new)
        a[idx] = new
        done = (np.abs(new - ai) <= tol * new) | (f == 0)
        active[idx[done]] = False
    if active.any():
        raise RuntimeError("discrete power-law MLE did not converge")  # pragma: no cover
    _, m1, m2 = hurwitz_moments(a, q)
    var = m2 - m1 * m1
    return a, var


def sample_discrete(a: np.ndarray, q: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws of the discrete power law: the largest k with ``S(k) >= u``.

    ``S(k) = zeta(a, k)/zeta(a, q) = P(X >= k)``; ``a``, ``q``, ``u`` broadcast, ``u`` in (0, 1].
    Starts from Clauset's approximation ``floor((q - 1/2) u**(-1/(a-1)) + 1/2)`` (Appendix D), checks
    it and its successor exactly, and otherwise brackets (galloping) and bisects on the integers,
    so the draw is exact. Beyond 2**52 integers are not representable in float64 and the
    approximation is returned unchanged.
    """
    a, q, u = np.broadcast_arrays(
        np.asarray(a, dtype=np.float64),
        np.asarray(q, dtype=np.float64),
        np.asarray(u, dtype=np.float64),
    )
    shape = a.shape
    a, q, u = a.ravel(), q.ravel(), u.ravel()
    big = 2.0**52
    with np.errstate(over="ignore"):
        x0 = np.floor((q - 0.5) * u ** (-1.0 / (a - 1.0)) + 0.5)
    x0 = np.clip(x0, q, big)
    out = x0.copy()
    idx = np.flatnonzero(x0 < big)
    if idx.size == 0:
        return out.reshape(shape)
    a, q, logu, x0 = a[idx], q[idx], np.log(u[idx]), x0[idx]
    lzq = log_hurwitz(a, q)

    def ok(k: np.ndarray, sel: np.ndarray) -> np.ndarray:  # S(k) >= u
        return log_hurwitz(a[sel], k) - lzq[sel] >= logu[sel]

    everything = np.arange(idx.size)
    lo = q.copy()
    hi = np.full_like(q, np.inf)
    good = ok(x0, everything)
    lo = np.where(good, x0, lo)
    hi = np.where(good, hi, x0)
    sel = np.flatnonzero(good)
    good1 = ok(x0[sel] + 1.0, sel)
    lo[sel[good1]] = x0[sel[good1]] + 1.0
    hi[sel[~good1]] = x0[sel[~good1]] + 1.0
    # gallop upwards where no upper bound is known yet
    step = np.full_like(q, 2.0)
    sel = np.flatnonzero(~np.isfinite(hi))
    while sel.size:
        k = np.minimum(lo[sel] + step[sel], big)
        g = ok(k, sel) & (k < big)
        lo[sel[g]] = k[g]
        step[sel[g]] *= 2.0
        hi[sel[~g]] = k[~g]
        sel = sel[g]
    # bisection on the integers
    sel = np.flatnonzero(hi - lo > 1.0)
    while sel.size:
        mid = np.floor(0.5 * (lo[sel] + hi[sel]))
        g = ok(mid, sel)
        lo[sel[g]] = mid[g]
        hi[sel[~g]] = mid[~g]
        sel = sel[hi[sel] - lo[sel] > 1.0]
    out[idx] = lo
    return out.reshape(shape)
