"""Maximum-likelihood fit of the symmetric alpha-stable law, vectorised over columns.

The log-likelihood of SαS(alpha, sigma, delta) is

    L(alpha, s, delta) = sum_i h_alpha((x_i - delta) e^-s) - n s,   s = log sigma,

with ``h_alpha = log f_alpha`` the standard SαS log-density, tabulated at alpha nodes 0.50, 0.51,
..., 2.00 (``_stable_density``). The estimate is defined through the *profile* likelihood at
the nodes, ``P_k = max_{s, delta} L(alpha_k, s, delta)``:

* the node k* with the largest profile (a local maximum, searched from McCulloch's start);
* alpha at the vertex of the parabola through ``P_{k*-1}, P_{k*}, P_{k*+1}`` (offset at most half
  a node; a maximum at alpha = 0.5 or 2 is reported on the boundary), the log-likelihood its
  value there, and (s, delta) interpolated linearly between the node optima.

How it is computed. A *pass* evaluates, for every column of a block at once, the value, gradient
and Hessian in (s, delta) of three nodes at the column's current point (s, delta): one location
of the points in the table serves the three nodes (``SasTable.points``/``logpdf_at``).

1. Each node's profile comes from the quadratic model of its pass, ``P_k = L + g.d / 2`` with
   the Newton step ``d = -H^-1 g``; its error is of third order in the step. A pass whose point
   is within ``_DEC_TOL`` of the best node's optimum (Newton decrement ``g.d`` below 1e-5 nats
   per observation: 0.01 at n = 1,000) gives the estimate: the neighbours' optima lie a step
   ``0.01 d(s, delta)/d alpha`` away, and their model errors are ~1e-5 nats at n = 1,000 against
   ~0.03 nats between neighbouring profiles (both scale with n).
2. Otherwise the point moves to the best node's model optimum and the centre to the best node
   (to the vertex of the parabola through the three profiles when it lies beyond them: within
   two spacings on the coarse first pass over nodes 5 apart, five nodes after); when the point
   is already close but the best node is an end of the three, only the next node beyond it is
   evaluated (the window slides). A move that lowered the likelihood at its node is undone
   halfway (backtracking). At most ``_MAX_PASSES``.
3. Columns of ``_SUB_MIN_N`` values or more are first searched on a weighted summary of the
   sorted column: the ``_SUB_TAIL`` smallest and largest values, and each block of
   ``_SUB_BLOCK`` order statistics in between as two points at its mean +- its standard
   deviation (~10% of the values, the blocks' first two moments kept). That lands on the full
   data's node (or next to it) with the point close to its optimum, so about one full-data pass
   finishes (1.03 passes plus 0.27 pass-equivalents on summaries, SGN-shaped data at n = 1,000).

Work arrays are reused from block to block (``Scratch``): fresh temporaries of a few hundred
kB are page-faulted in on every call, a third of the time. Each column's result is the same
whatever the block or the batch it is fitted in. Against the previous implementation (a full
Newton optimisation at every visited node, same estimator) alpha agrees to 3e-5 and the
log-likelihood to 1e-4 nats on the accuracy table's data (benchmarks/accuracy_stable.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ._stable_density import ALPHA_MIN, ALPHA_STEP, SasTable, Scratch, get_table

_DEC_TOL = 1e-5  # nats per observation: largest Newton decrement of an accepted pass
_MAX_PASSES = 60
_COARSE = 5  # nodes (0.05 in alpha) between the three nodes of the first pass
_MAX_STEP_S = 0.5  # largest change of log sigma per pass (and of delta, in units of sigma)
_BLOCK_VALUES = 32768
_SUB_MIN_N = 400  # smaller columns are fitted on the full data directly
_SUB_TAIL = 0.02  # fraction of values kept individually at each end
_SUB_BLOCK = 32  # consecutive order statistics summarised by two points in between


@dataclass
class _Pass:
    """Per evaluated node (axis 0: the three nodes) and column: profile value from the quadratic
    model, the optimum (s, delta) of that model, the Newton decrement, and whether the model
    can be trusted (negative definite Hessian, step within the caps); also L at the pass point."""

    loglik: np.ndarray
    prof: np.ndarray
    s_opt: np.ndarray
    d_opt: np.ndarray
    dec: np.ndarray
    ok: np.ndarray


_LOCAL = threading.local()


def _scratch() -> Scratch:
    """This thread's work arrays (kept between passes and fits: no page faults per pass)."""
    sc = getattr(_LOCAL, "scratch", None)
    if sc is None:
        sc = _LOCAL.scratch = Scratch()
    return sc


def _node_sums(
    table: SasTable,
    rows: np.ndarray,
    wts: np.ndarray | None,
    idx: np.ndarray,
    s: np.ndarray,
    d: np.ndarray,
    nodes: np.ndarray,
    fit_loc: bool,
) -> np.ndarray:
    """Sums over each row of ``rows`` (one column's values per row) of ``h``, ``|z| h'``,
    ``z^2 h''`` and, with ``fit_loc``, ``sign(z) h'``, ``h''``, ``sign(z) |z| h''`` (``h`` the
    log-density at ``nodes[t]``, derivatives in ``|z|``, ``z = (x - d) e^-s``; weighted by
    ``wts``), for the rows ``idx`` (``s``, ``d``, ``nodes`` given for those). Returns shape
    (len(nodes), 6, len(idx))."""
    m, n = idx.size, rows.shape[1]
    out = np.zeros((nodes.shape[0], 6, m))
    scratch = _scratch()
    step = max(1, _BLOCK_VALUES // max(n, 1))
    for b0 in range(0, m, step):
        sl = slice(b0, min(b0 + step, m))
        shape = (sl.stop - sl.start, n)
        z = scratch.get("x", shape)
        ix = idx[sl]
        if ix[-1] - ix[0] == ix.size - 1:  # a run of rows (e.g. all of them): no gather
            np.copyto(z, rows[ix[0] : ix[-1] + 1])  # float32 rows become float64 here
        else:
            np.copyto(z, np.take(rows, ix, axis=0, out=scratch.get("rows", shape, rows.dtype)))
        z -= d[sl, None]
        z *= np.exp(-s[sl])[:, None]
        pts = table.points(z, derivatives=True, scratch=scratch)
        w = None if wts is None else np.take(wts, ix, axis=0, out=scratch.get("wt", shape))
        # weights of the sums: |z| (w), z^2 (w), sign(z) (w), sign(z) |z| = z (w)
        w1 = pts.az if w is None else np.multiply(pts.az, w, out=scratch.get("w1", shape))
        w2 = np.multiply(pts.az, w1, out=scratch.get("w2", shape))
        sg = sgz = z
        if fit_loc:
            sg = np.sign(z, out=scratch.get("sg", shape))
            if w is not None:
                sg *= w
                sgz = np.multiply(z, w, out=scratch.get("sgz", shape))
        for t in range(nodes.shape[0]):
            h, a1, a2 = table.logpdf_at(nodes[t, sl, None], pts, derivatives=True, scratch=scratch)
            assert a1 is not None and a2 is not None
            o = out[t, :, sl]
            o[0] = h.sum(axis=1) if w is None else np.einsum("ij,ij->i", h, w)
            o[1] = np.einsum("ij,ij->i", a1, w1)
            o[2] = np.einsum("ij,ij->i", a2, w2)
            if fit_loc:
                o[3] = np.einsum("ij,ij->i", a1, sg)
                o[4] = a2.sum(axis=1) if w is None else np.einsum("ij,ij->i", a2, w)
                o[5] = np.einsum("ij,ij->i", a2, sgz)
    return out


def _evaluate(
    table: SasTable,
    rows: np.ndarray,
    wts: np.ndarray | None,
    idx: np.ndarray,
    count: np.ndarray,
    s: np.ndarray,
    d: np.ndarray,
    nodes: np.ndarray,
    fit_loc: bool,
) -> _Pass:
    """One pass: the quadratic model in (s, delta) of each of ``nodes`` at (s, d)."""
    sums = _node_sums(table, rows, wts, idx, s, d, nodes, fit_loc)
    s0, s1, s2, s3, s4, s5 = (sums[:, i] for i in range(6))
    sigma = np.exp(s)
    # L = sum h - N s;  dL/ds = -sum |z| h' - N;  d2L/ds2 = sum (|z| h' + z^2 h'');
    # dL/dd = -sum sign(z) h' / sigma;  d2L/dd2 = sum h'' / sigma^2;
    # d2L/ds dd = sum sign(z) (h' + |z| h'') / sigma
    loglik = s0 - count * s
    g_s = -s1 - count
    h_ss = s1 + s2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if fit_loc:
            g_d = -s3 / sigma
            h_dd = s4 / sigma**2
            h_sd = (s3 + s5) / sigma
            det = h_ss * h_dd - h_sd * h_sd
            nd = (h_ss < 0) & (det > 0)
            step_s = np.where(nd, (-h_dd * g_s + h_sd * g_d) / det, 0.0)
            step_d = np.where(nd, (h_sd * g_s - h_ss * g_d) / det, 0.0)
            # not concave here: gradient ascent scaled by the diagonal (or a fixed small step)
            fb_s = np.where(h_ss < 0, -g_s / np.where(h_ss < 0, h_ss, 1.0), np.sign(g_s) * 0.1)
            fb_d = np.where(
                h_dd < 0, -g_d / np.where(h_dd < 0, h_dd, 1.0), np.sign(g_d) * 0.1 * sigma
            )
            step_s = np.where(nd, step_s, fb_s)
            step_d = np.where(nd, step_d, fb_d)
        else:
            g_d = np.zeros_like(g_s)
            nd = h_ss < 0
            step_s = np.where(nd, -g_s / np.where(nd, h_ss, 1.0), np.sign(g_s) * 0.1)
            step_d = np.zeros_like(step_s)
    capped = (np.abs(step_s) > _MAX_STEP_S) | (np.abs(step_d) > _MAX_STEP_S * sigma)
    step_s = np.clip(step_s, -_MAX_STEP_S, _MAX_STEP_S)
    step_d = np.clip(step_d, -_MAX_STEP_S * sigma, _MAX_STEP_S * sigma)
    dec = g_s * step_s + g_d * step_d
    ok = nd & ~capped & np.isfinite(dec)
    return _Pass(
        loglik=loglik,
        prof=loglik + 0.5 * np.where(ok, dec, 0.0),
        s_opt=s + step_s,
        d_opt=d + step_d,
        dec=dec,
        ok=ok,
    )


@dataclass
class _Search:
    """Search state per column: the three nodes of the current pass and their models."""

    nodes: np.ndarray  # (3, m) ascending
    prof: np.ndarray  # (3, m) profiles from the quadratic models
    s_opt: np.ndarray  # (3, m) the models' optima
    d_opt: np.ndarray
    dec: np.ndarray  # (3, m) Newton decrements
    ok: np.ndarray  # (3, m) trustworthy models
    loglik: np.ndarray  # (3, m) L at the pass point


_FIELDS = ("prof", "s_opt", "d_opt", "dec", "ok", "loglik")


def _search(
    table: SasTable,
    rows: np.ndarray,
    wts: np.ndarray | None,
    k: np.ndarray,
    s: np.ndarray,
    d: np.ndarray,
    fit_loc: bool,
    coarse: bool,
) -> _Search:
    """Find the profile maximum over the nodes for every row (see the module docstring).

    Each pass either evaluates three nodes at a new point (s, delta) or, when the point is
    already within ``_DEC_TOL`` of the best node's optimum but that node is an end of the
    three, only the next node beyond it at the same point (the window slides by one)."""
    n_nodes = table.n_alpha
    m = rows.shape[0]
    count = np.full(m, float(rows.shape[1])) if wts is None else wts.sum(axis=1)
    st = _Search(
        nodes=np.zeros((3, m), dtype=np.intp),
        prof=np.zeros((3, m)),
        s_opt=np.zeros((3, m)),
        d_opt=np.zeros((3, m)),
        dec=np.zeros((3, m)),
        ok=np.zeros((3, m), dtype=bool),
        loglik=np.zeros((3, m)),
    )
    k = k.copy()
    s = s.astype(np.float64, copy=True)
    d = d.astype(np.float64, copy=True)
    width = np.full(m, _COARSE if coarse else 1)
    fresh = np.zeros(m, dtype=bool)  # st holds the three models at the current (s, d)
    slide = np.zeros(m, dtype=np.intp)  # -1/+1: add the node beyond the low/high end
    prev_k = np.full(m, -1)  # node whose model optimum the last move went to ...
    prev_l = np.full(m, -np.inf)  # ... its log-likelihood before the move
    prev_s, prev_d = s.copy(), d.copy()
    act = np.arange(m)
    for it in range(_MAX_PASSES + 1):
        if act.size == 0:
            break
        # -- evaluate: three nodes at a new point, or one node to slide the window
        full = act[~fresh[act]]
        if full.size:
            w = width[full]
            c = np.clip(k[full], w, n_nodes - 1 - w)
            nodes = np.stack([c - w, c, c + w])
            res = _evaluate(table, rows, wts, full, count[full], s[full], d[full], nodes, fit_loc)
            st.nodes[:, full] = nodes
            for f in _FIELDS:
                getattr(st, f)[:, full] = getattr(res, f)
            fresh[full] = True
        one = act[slide[act] != 0]
        if one.size:
            up = slide[one] > 0
            new_node = np.where(up, st.nodes[2, one] + 1, st.nodes[0, one] - 1)
            res = _evaluate(
                table,
                rows,
                wts,
                one,
                count[one],
                s[one],
                d[one],
                new_node[None, :],
                fit_loc,
            )
            for f in ("nodes", *_FIELDS):
                arr = getattr(st, f)
                val = new_node if f == "nodes" else getattr(res, f)[0]
                sub = arr[:, one]
                arr[:, one] = np.where(
                    up, np.stack([sub[1], sub[2], val]), np.stack([val, sub[0], sub[1]])
                )
            slide[one] = 0
        if it == _MAX_PASSES:  # not converged: the current models stand
            break
        # -- decide
        cols = act
        nodes = st.nodes[:, cols]
        ok, prof, dec, ll = st.ok[:, cols], st.prof[:, cols], st.dec[:, cols], st.loglik[:, cols]
        i = np.arange(cols.size)
        # safeguard: the last move went to the model optimum of node prev_k; if that lowered
        # the likelihood there, the step overshot: go back halfway and re-evaluate
        slot = np.argmax(nodes == prev_k[cols], axis=0)
        seen = nodes[slot, i] == prev_k[cols]
        l_then = prev_l[cols]
        worse = seen & (ll[slot, i] < l_then - 1e-9 * np.abs(l_then))
        prev_k[cols] = -1
        best = np.argmax(np.where(ok, prof, ll), axis=0)
        fine = width[cols] == 1
        at_edge = ((best == 0) & (nodes[0] == 0)) | ((best == 2) & (nodes[2] == n_nodes - 1))
        close = ok.all(axis=0) & (dec[best, i] < _DEC_TOL * count[cols]) & fine & ~worse
        converged = close & ((best == 1) | at_edge)
        sliding = close & ~converged  # best is an inner end: add the next node, same point
        moving = ~close & ~worse
        if worse.any():
            idx = cols[worse]
            s[idx] = 0.5 * (s[idx] + prev_s[idx])
            d[idx] = 0.5 * (d[idx] + prev_d[idx])
            fresh[idx] = False
        if sliding.any():
            slide[cols[sliding]] = np.where(best[sliding] == 2, 1, -1)
        if moving.any():
            idx = cols[moving]
            bm, im = best[moving], i[moving]
            new_k = nodes[bm, im]
            # a concave parabola through the three profiles points beyond them: jump there
            # (by at most 2 spacings on the coarse first pass, 5 nodes afterwards)
            pm, p0, pp = prof[0, im], prof[1, im], prof[2, im]
            curv = pm - 2.0 * p0 + pp
            with np.errstate(divide="ignore", invalid="ignore"):
                off = np.where(curv < 0, 0.5 * (pm - pp) / curv, 0.0)
            wm = width[idx]
            lim = np.where(wm > 1, 2.0, 5.0)
            off = np.clip(np.nan_to_num(off), -lim, lim)
            vertex = np.rint(nodes[1, im] + off * wm).astype(np.intp)
            new_k = np.where(ok[:, im].all(axis=0), vertex, new_k)
            prev_k[idx] = nodes[bm, im]
            prev_l[idx] = ll[bm, im]
            prev_s[idx], prev_d[idx] = s[idx], d[idx]
            k[idx] = np.clip(new_k, 0, n_nodes - 1)
            s[idx] = st.s_opt[bm, idx]
            d[idx] = st.d_opt[bm, idx]
            width[idx] = 1
            fresh[idx] = False
        act = cols[~converged]
    return st


def _summary(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A weighted summary of sorted rows: the ``_SUB_TAIL`` extremes kept, and each block of
    ``_SUB_BLOCK`` consecutive order statistics in between replaced by two points at its mean
    +- its standard deviation (weight half the block each: the block's first two moments)."""
    m, n = rows.shape
    t = max(1, int(_SUB_TAIL * n))
    nb = (n - 2 * t) // _SUB_BLOCK
    blocks = rows[:, t : t + nb * _SUB_BLOCK].reshape(m, nb, _SUB_BLOCK)
    mean = blocks.mean(axis=2, dtype=np.float64)
    dev = blocks - mean[..., None].astype(rows.dtype)
    sd = np.sqrt(np.einsum("ijk,ijk->ij", dev, dev, dtype=np.float64) / _SUB_BLOCK)
    parts = [rows[:, :t], mean - sd, mean + sd, rows[:, t + nb * _SUB_BLOCK :]]
    vals = np.concatenate([p.astype(np.float64, copy=False) for p in parts], axis=1)
    w = np.ones(vals.shape[1])
    w[t : t + 2 * nb] = 0.5 * _SUB_BLOCK
    return vals, np.broadcast_to(w, vals.shape)


def fit_sas_mle(
    rows: np.ndarray,
    alpha0: np.ndarray,
    scale0: np.ndarray,
    loc0: np.ndarray,
    fit_loc: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MLE of (alpha, scale, loc) per row of ``rows`` (m, n), each row one column's values sorted
    ascending (float32 or float64), from McCulloch's starting values.

    Returns (alpha, scale, loc, loglik)."""
    table = get_table()
    n_nodes = table.n_alpha
    k = np.clip(np.rint((alpha0 - ALPHA_MIN) / ALPHA_STEP).astype(np.intp), 0, n_nodes - 1)
    s = np.log(scale0)
    d = loc0.astype(np.float64)
    coarse = True
    if rows.shape[1] >= _SUB_MIN_N:
        vals, w = _summary(rows)
        sub = _search(table, vals, w, k, s, d, fit_loc, coarse=True)
        mid = _centre(table, sub)
        cols = np.arange(rows.shape[0])
        k, s, d = sub.nodes[mid, cols], sub.s_opt[mid, cols], sub.d_opt[mid, cols]
        coarse = False
    st = _search(table, rows, None, k, s, d, fit_loc, coarse=coarse)
    return _estimate(table, st)


def _centre(table: SasTable, st: _Search) -> np.ndarray:
    """Index (0, 1, 2) of the best node among each column's final three: the middle one, or
    an end one when it is the maximum at alpha = 0.5 or 2."""
    best = np.argmax(np.where(st.ok, st.prof, st.loglik), axis=0)
    edge = ((best == 0) & (st.nodes[0] == 0)) | ((best == 2) & (st.nodes[2] == table.n_alpha - 1))
    return np.where(edge, best, 1)


def _estimate(
    table: SasTable, st: _Search
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """alpha at the vertex of the parabola through the final pass's profiles, (s, delta)
    interpolated between the node optima, the log-likelihood at the vertex."""
    cols = np.arange(st.nodes.shape[1])
    mid = _centre(table, st)
    interior = mid == 1
    lm, l0, lp = st.prof[0], st.prof[mid, cols], st.prof[2]
    curv = lm - 2.0 * l0 + lp
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(interior & (curv < 0), 0.5 * (lm - lp) / curv, 0.0)
    offset = np.clip(offset, -0.5, 0.5)
    alpha = table.alphas[st.nodes[mid, cols]] + offset * ALPHA_STEP
    loglik = np.where(interior, l0 + 0.5 * offset * (lp - lm) + 0.5 * offset**2 * curv, l0)
    nb = np.where(offset >= 0, np.minimum(mid + 1, 2), np.maximum(mid - 1, 0))
    frac = np.abs(offset)
    s_hat = (1 - frac) * st.s_opt[mid, cols] + frac * st.s_opt[nb, cols]
    d_hat = (1 - frac) * st.d_opt[mid, cols] + frac * st.d_opt[nb, cols]
    return alpha, np.exp(s_hat), d_hat, loglik
