"""Maximum-likelihood fit of the symmetric alpha-stable law, vectorised over columns.

The log-likelihood of SαS(alpha, sigma, delta) is

    L(alpha, s, delta) = sum_i l_alpha(log|x_i - delta| - s) - n s,   s = log sigma,

with ``l_alpha(t) = log f_alpha(e^t)`` the standard SαS log-density, tabulated at alpha nodes
0.50, 0.51, ..., 2.00 (``_stable_density``). We maximise the *profile* likelihood
``L_p(alpha) = max_{s, delta} L``:

1. at a node, (s, delta) by Newton's method with analytic derivatives of the cubic-spline table
   and a backtracking line search, warm-started from the neighbouring node (McCulloch at first);
2. over nodes, by hill-climbing from McCulloch's alpha in steps of 0.05, then 0.01;
3. between nodes, by the vertex of the parabola through the best node and its two neighbours
   (s and delta interpolated linearly to that alpha). A maximum at alpha = 2 (or 0.5) is
   reported on the boundary.

Columns advance together; each numpy pass covers every active column of a chunk.
"""

from __future__ import annotations

import numpy as np

from ._stable_density import ALPHA_MIN, ALPHA_STEP, SasTable, get_table

_NEWTON_ITERS = 30
_COARSE = 5  # nodes (0.05 in alpha)


def _loglik(
    table: SasTable,
    x: np.ndarray,
    k: np.ndarray,
    s: np.ndarray,
    d: np.ndarray,
) -> np.ndarray:
    z = (x - d) * np.exp(-s)
    v = table.logpdf_nodes(k[None, :], z)[0]
    return v.sum(axis=0) - x.shape[0] * s


def _optimise_node(
    table: SasTable,
    x: np.ndarray,
    k: np.ndarray,
    s: np.ndarray,
    d: np.ndarray,
    fit_loc: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximise L over (s, delta) at alpha node ``k`` (one per column). Returns (L, s, d)."""
    n = x.shape[0]
    s = s.copy()
    d = d.copy()
    active = np.ones(x.shape[1], dtype=bool)
    loglik = np.empty(x.shape[1])
    for _ in range(_NEWTON_ITERS):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xa, ka, sa, da = x[:, idx], k[idx], s[idx], d[idx]
        sigma = np.exp(sa)
        z = (xa - da) / sigma
        v, a1, a2 = table.logpdf_nodes(ka[None, :], z, derivatives=True)
        assert a1 is not None and a2 is not None
        # h(|z|) = log f; a1 = h', a2 = h'' in |z|. With |z| = |x - d| e^-s:
        #   dL/ds = -sum |z| a1 - n,            d2L/ds2 = sum (|z| a1 + z^2 a2)
        #   dL/dd = -sum sign(z) a1 / sigma,    d2L/dd2 = sum a2 / sigma^2
        #   d2L/ds dd = sum sign(z) (a1 + |z| a2) / sigma
        az = np.abs(z)
        za1 = az * a1
        cur = v.sum(axis=0) - n * sa
        loglik[idx] = cur
        g_s = -za1.sum(axis=0) - n
        h_ss = (za1 + az * az * a2).sum(axis=0)
        if fit_loc:
            sg = np.sign(z)
            g_d = -(sg * a1).sum(axis=0) / sigma
            h_dd = a2.sum(axis=0) / sigma**2
            h_sd = (sg * (a1 + az * a2)).sum(axis=0) / sigma
            det = h_ss * h_dd - h_sd * h_sd
            newton = (h_ss < 0) & (det > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                step_s = np.where(newton, (-h_dd * g_s + h_sd * g_d) / det, 0.0)
                step_d = np.where(newton, (h_sd * g_s - h_ss * g_d) / det, 0.0)
            # not concave here: gradient ascent scaled by the diagonal (or a fixed small step)
            fb_s = np.where(h_ss < 0, -g_s / np.where(h_ss < 0, h_ss, 1.0), np.sign(g_s) * 0.1)
            fb_d = np.where(
                h_dd < 0, -g_d / np.where(h_dd < 0, h_dd, 1.0), np.sign(g_d) * 0.1 * sigma
            )
            step_s = np.where(newton, step_s, fb_s)
            step_d = np.where(newton, step_d, fb_d)
        else:
            newton = h_ss < 0
            step_s = np.where(newton, -g_s / np.where(newton, h_ss, 1.0), np.sign(g_s) * 0.1)
            step_d = np.zeros_like(step_s)
        step_s = np.clip(step_s, -0.5, 0.5)
        step_d = np.clip(step_d, -0.5 * sigma, 0.5 * sigma)
        # backtracking line search; small Newton steps at a concave point (the quadratic
        # convergence regime) are taken without a trial evaluation
        accepted = newton & (np.abs(step_s) < 1e-3) & (np.abs(step_d) < 1e-3 * sigma)
        for _half in range(8):
            todo = np.flatnonzero(~accepted)
            if todo.size == 0:
                break
            trial = _loglik(
                table, xa[:, todo], ka[todo], sa[todo] + step_s[todo], da[todo] + step_d[todo]
            )
            ok = trial >= cur[todo] - 1e-9 * np.abs(cur[todo])
            acc = todo[ok]
            accepted[acc] = True
            loglik[idx[acc]] = trial[ok]
            rej = todo[~ok]
            step_s[rej] *= 0.5
            step_d[rej] *= 0.5
        step_s = np.where(accepted, step_s, 0.0)
        step_d = np.where(accepted, step_d, 0.0)
        s[idx] = sa + step_s
        d[idx] = da + step_d
        # converged when the step's first-order gain is below 1e-7 nats (parameter error
        # ~ (1e-7 / n)^(1/2) in units of sigma) or the step is negligible
        gain = np.abs(g_s * step_s + (g_d * step_d if fit_loc else 0.0))
        done = (gain < 1e-7) | ((np.abs(step_s) < 1e-9) & (np.abs(step_d) < 1e-9 * sigma))
        active[idx[done | ~accepted]] = False
    return loglik, s, d


def fit_sas_mle(
    x: np.ndarray,
    alpha0: np.ndarray,
    scale0: np.ndarray,
    loc0: np.ndarray,
    fit_loc: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MLE of (alpha, scale, loc) per column of ``x`` (n, m), from McCulloch starting values.

    Returns (alpha, scale, loc, loglik)."""
    table = get_table()
    n_nodes = table.n_alpha
    m = x.shape[1]
    cols = np.arange(m)
    prof = np.full((n_nodes, m), -np.inf)
    s_at = np.zeros((n_nodes, m))
    d_at = np.zeros((n_nodes, m))
    done_at = np.zeros((n_nodes, m), dtype=bool)

    def evaluate(which: np.ndarray, nodes: np.ndarray, s0: np.ndarray, d0: np.ndarray) -> None:
        need = which[~done_at[nodes[which], which]]
        if need.size == 0:
            return
        kk = nodes[need]
        ll, ss, dd = _optimise_node(table, x[:, need], kk, s0[need], d0[need], fit_loc)
        prof[kk, need] = ll
        s_at[kk, need] = ss
        d_at[kk, need] = dd
        done_at[kk, need] = True

    best = np.clip(np.rint((alpha0 - ALPHA_MIN) / ALPHA_STEP).astype(np.intp), 0, n_nodes - 1)
    evaluate(cols, best, np.log(scale0), loc0.astype(np.float64))

    def climb(which: np.ndarray, direction: int, step: int) -> np.ndarray:
        """Move ``best`` by ``direction * step`` while the profile improves; returns the
        columns that moved at least once."""
        moved = np.zeros(m, dtype=bool)
        while which.size:
            cand = np.clip(best + direction * step, 0, n_nodes - 1)
            which = which[cand[which] != best[which]]
            if which.size == 0:
                break
            evaluate(which, cand, s_at[best, cols], d_at[best, cols])
            better = prof[cand[which], which] > prof[best[which], which]
            which = which[better]
            best[which] = cand[which]
            moved[which] = True
        return moved

    for step in (_COARSE, 1):
        moved_up = climb(cols, +1, step)
        climb(cols[~moved_up], -1, step)

    lo = np.clip(best - 1, 0, n_nodes - 1)
    hi = np.clip(best + 1, 0, n_nodes - 1)
    evaluate(cols, lo, s_at[best, cols], d_at[best, cols])
    evaluate(cols, hi, s_at[best, cols], d_at[best, cols])
    # a neighbour may beat the best node (non-unimodal profile): climb once more
    for _ in range(n_nodes):
        l0 = prof[best, cols]
        up = prof[hi, cols] > l0
        down = (prof[lo, cols] > l0) & ~up
        if not (up.any() or down.any()):
            break
        best = np.where(up, hi, np.where(down, lo, best))
        lo = np.clip(best - 1, 0, n_nodes - 1)
        hi = np.clip(best + 1, 0, n_nodes - 1)
        evaluate(cols, lo, s_at[best, cols], d_at[best, cols])
        evaluate(cols, hi, s_at[best, cols], d_at[best, cols])

    l0 = prof[best, cols]
    lm = prof[lo, cols]
    lp = prof[hi, cols]
    interior = (best > 0) & (best < n_nodes - 1)
    curv = lm - 2.0 * l0 + lp
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(interior & (curv < 0), 0.5 * (lm - lp) / curv, 0.0)
    offset = np.clip(offset, -0.5, 0.5)
    alpha = table.alphas[best] + offset * ALPHA_STEP
    loglik = l0 + 0.5 * offset * (lp - lm) + 0.5 * offset**2 * curv
    nb = np.where(offset >= 0, hi, lo)
    frac = np.abs(offset)
    s_hat = (1 - frac) * s_at[best, cols] + frac * s_at[nb, cols]
    d_hat = (1 - frac) * d_at[best, cols] + frac * d_at[nb, cols]
    return alpha, np.exp(s_hat), d_hat, loglik
