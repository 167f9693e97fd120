"""Exact Clauset xmin scan for many samples at once (private; see ``powerlaw.py`` for the API).

Layout: B samples, each sorted, concatenated in one flat array with offsets ``off`` (ragged
samples are fine). For each sample the distinct values ``u_0 < u_1 < ...`` are the candidate
xmins. For a candidate ``xmin`` with tail size ``n_t`` and exponent ``b = alpha - 1``::

    G(k) = A(k) - B(k),   A(k) = #{x >= u_k} / n_t,   B(k) = P_model(X >= u_k)

over the distinct tail values ``u_k`` (``B = (u_k/xmin)**-b`` continuous,
``zeta(alpha, u_k)/zeta(alpha, xmin)`` discrete). ``D = max_k |G(k)|`` is the KS distance in the
convention of Clauset's ``plfit`` and of the ``powerlaw`` package: the model CDF is compared
with the fraction of the tail strictly below each distinct value.

The scan is exact (same minimiser, same ``D``, as evaluating every candidate) and fast because
of two facts:

* ``A`` and ``B`` are both non-increasing in ``k``, so on an index interval ``[p, q]``
  ``max |G| <= max(A(p+1) - B(q), B(p) - A(q-1))``. ``_resolve`` computes ``D`` exactly by a
  branch-and-bound over K-ary splits of the tail that discards every interval whose bound is
  not above the largest ``|G|`` found so far, and abandons a candidate as soon as its ``|G|``
  exceeds the best (smallest) exact ``D`` of its sample: it cannot be the minimiser.
* The maximiser of ``|G|`` barely moves between neighbouring candidates (``G`` changes by
  O(1/n_t) per candidate for a fixed ``k``). ``_progressive`` visits candidates coarse to fine
  (first and last of each sample, then midpoints, halving the spacing): each new candidate is
  first evaluated at the maximisers of ``+G`` and ``-G`` of its two visited neighbours, which
  gives a lower bound of its ``D`` that is usually tight; only candidates whose bound does not
  exceed the best exact ``D`` so far are resolved (and may be abandoned early).

Every candidate thus ends with either its exact ``D`` or a proven lower bound above the final
minimum, so the argmin (ties: smallest xmin) is the full scan's. Alpha for all candidates
comes from suffix sums in O(n). Cost in practice: O(n log n) for the sort plus a few
evaluations per candidate; the worst case (every candidate nearly tied) degrades gracefully to
the full O(n m) scan. All operations are vectorised over candidates *and* samples, and a
sample's result does not depend on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._powerlaw_zeta import discrete_alpha_mle, log_hurwitz


@dataclass
class Unique:
    """Distinct values of each sample of a flat sorted batch."""

    u: np.ndarray  # distinct values
    lnu: np.ndarray
    ge: np.ndarray  # number of sample points >= u (float)
    seg: np.ndarray  # sample id of each distinct value
    uoff: np.ndarray  # offsets of each sample's distinct values (nseg + 1)
    tail_log: np.ndarray  # sum over x >= u_k of ln(x / u_k)
    n: np.ndarray  # sample sizes (nseg,)

    @property
    def nseg(self) -> int:
        return int(self.n.size)


def unique_batch(xs: np.ndarray, off: np.ndarray) -> Unique:
    """Distinct values, counts and tail log-sums of each sorted sample ``xs[off[s]:off[s+1]]``."""
    nseg = off.size - 1
    n = np.diff(off)
    new = np.ones(xs.size, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    new[off[:-1][n > 0]] = True
    uidx = np.flatnonzero(new)
    u = xs[uidx]
    seg = np.searchsorted(off, uidx, side="right") - 1
    uoff = np.searchsorted(uidx, off)
    ge = (off[seg + 1] - uidx).astype(np.float64)
    # sum_{x >= u_j} ln(x/u_j) = sum_{k > j} ge_k * ln(u_k / u_{k-1}): positive terms only,
    # summed per sample (row of a padded array) so that a sample's result does not depend on
    # the rest of the batch.
    steps = np.zeros(u.size)
    if u.size > 1:
        # Only consecutive values of the same sample form a step (a sample's first value has
        # none; across a boundary the ratio can be <= -1, where log1p is undefined).
        idx = np.flatnonzero(seg[1:] == seg[:-1]) + 1
        steps[idx] = np.log1p((u[idx] - u[idx - 1]) / u[idx - 1]) * ge[idx]
    width = int(np.diff(uoff).max()) if nseg else 0
    local = np.arange(u.size) - uoff[seg]
    pad = np.zeros((nseg, width + 1), dtype=np.longdouble)
    pad[seg, local] = steps
    suffix = np.cumsum(pad[:, ::-1], axis=1)[:, ::-1]  # suffix[s, k] = sum_{i >= k} steps
    tail_log = suffix[seg, local + 1].astype(np.float64)
    return Unique(u=u, lnu=np.log(u), ge=ge, seg=seg, uoff=uoff, tail_log=tail_log, n=n)


@dataclass
class Candidates:
    """Candidate (xmin, exponent) pairs, sorted by sample then by xmin."""

    seg: np.ndarray
    j: np.ndarray  # flat index of the first distinct value >= xmin
    last: np.ndarray  # flat index of the last distinct value of the sample
    xmin: np.ndarray
    lnx: np.ndarray
    n: np.ndarray  # tail size (float)
    alpha: np.ndarray
    fisher: np.ndarray  # Fisher information per observation for alpha
    lzx: np.ndarray | None  # discrete: ln zeta(alpha, xmin)
    coff: np.ndarray  # candidate offsets per sample (nseg + 1)

    def take(self, keep: np.ndarray, nseg: int) -> Candidates:
        seg = self.seg[keep]
        return Candidates(
            seg=seg,
            j=self.j[keep],
            last=self.last[keep],
            xmin=self.xmin[keep],
            lnx=self.lnx[keep],
            n=self.n[keep],
            alpha=self.alpha[keep],
            fisher=self.fisher[keep],
            lzx=None if self.lzx is None else self.lzx[keep],
            coff=np.searchsorted(seg, np.arange(nseg + 1)),
        )


def make_candidates(
    uq: Unique,
    *,
    discrete: bool,
    min_tail: int,
    xmin_lo: np.ndarray | None = None,
    xmin_hi: np.ndarray | None = None,
    alpha_lo: float | None = None,
    alpha_hi: float | None = None,
    fixed_xmin: np.ndarray | None = None,
) -> Candidates:
    """Candidates of the scan, or one candidate per sample when ``fixed_xmin`` is given.

    Scan: every distinct value except the two largest of its sample (as the ``powerlaw``
    package), leaving at least ``min_tail`` points, inside ``[xmin_lo, xmin_hi]``, and (after
    fitting) with ``alpha_lo < alpha < alpha_hi`` when those are given.
    """
    nseg = uq.nseg
    last_of_seg = uq.uoff[1:] - 1
    if fixed_xmin is not None:
        xmin = np.asarray(fixed_xmin, dtype=np.float64)
        seg = np.arange(nseg)
        below = (uq.u < xmin[uq.seg]).astype(np.int64)
        j = uq.uoff[:-1] + np.add.reduceat(below, uq.uoff[:-1])
        has_tail = j <= last_of_seg
        jj = np.minimum(j, last_of_seg)
        n_t = np.where(has_tail, uq.ge[jj], 0.0)
        # sum ln(x/xmin) = tail_log(u_j) + n_t ln(u_j / xmin)
        tl = np.where(has_tail, uq.tail_log[jj] + n_t * np.log1p((uq.u[jj] - xmin) / xmin), 0.0)
        j = jj
    else:
        k = np.arange(uq.u.size)
        keep = (k <= last_of_seg[uq.seg] - 2) & (uq.ge >= min_tail)
        if xmin_lo is not None:
            keep &= uq.u >= np.asarray(xmin_lo, dtype=np.float64)[uq.seg]
        if xmin_hi is not None:
            keep &= uq.u <= np.asarray(xmin_hi, dtype=np.float64)[uq.seg]
        j = np.flatnonzero(keep)
        seg = uq.seg[j]
        xmin = uq.u[j]
        n_t = uq.ge[j]
        tl = uq.tail_log[j]
        has_tail = np.ones(j.size, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ybar = tl / n_t
    valid = has_tail & (ybar > 0)
    alpha = np.full(j.size, np.nan)
    fisher = np.full(j.size, np.nan)
    lzx = None
    if discrete:
        if valid.any():
            a, var = discrete_alpha_mle(ybar[valid], xmin[valid])
            alpha[valid] = a
            fisher[valid] = var
        lzx = np.full(j.size, np.nan)
        if valid.any():
            lzx[valid] = log_hurwitz(alpha[valid], xmin[valid])
    else:
        alpha[valid] = 1.0 + 1.0 / ybar[valid]
        fisher[valid] = 1.0 / (alpha[valid] - 1.0) ** 2
    if fixed_xmin is None:
        ok = valid.copy()
        if alpha_lo is not None:
            ok &= alpha > alpha_lo
        if alpha_hi is not None:
            ok &= alpha < alpha_hi
    else:
        ok = np.ones(j.size, dtype=bool)  # invalid fixed fits are reported by the caller
    cand = Candidates(
        seg=seg,
        j=j,
        last=last_of_seg[seg],
        xmin=xmin,
        lnx=np.log(xmin),
        n=n_t,
        alpha=alpha,
        fisher=fisher,
        lzx=lzx,
        coff=np.searchsorted(seg, np.arange(nseg + 1)),
    )
    return cand.take(ok, nseg) if not ok.all() else cand


class _Model:
    """Evaluates ``A(k)`` and ``B(k)`` for (candidate, distinct value) pairs."""

    def __init__(self, uq: Unique, cand: Candidates, discrete: bool):
        self.uq = uq
        self.cand = cand
        self.discrete = discrete
        self.b = cand.alpha - 1.0
        self.nseg = uq.nseg

    def a(self, c: np.ndarray, k: np.ndarray) -> np.ndarray:
        return self.uq.ge[k] / self.cand.n[c]

    def bfun(self, c: np.ndarray, k: np.ndarray) -> np.ndarray:
        if self.discrete:
            assert self.cand.lzx is not None
            return np.exp(log_hurwitz(self.cand.alpha[c], self.uq.u[k]) - self.cand.lzx[c])
        return np.exp(-self.b[c] * (self.uq.lnu[k] - self.cand.lnx[c]))


def _seg_starts(keys: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a sorted integer array."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    flag = np.empty(keys.size, dtype=bool)
    flag[0] = True
    np.not_equal(keys[1:], keys[:-1], out=flag[1:])
    return np.flatnonzero(flag)


#: candidates per block of the lower-bound probes (memory ~ 300 bytes per row of a block)
PROBE_ROWS = 1 << 16


def _progressive(model: _Model, grid: int = 16, coarse: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Exact D of every candidate that can be the minimiser; a lower bound above the best for
    every other one. Returns ``(value, exact)``.

    Candidates are visited coarse to fine: level 0 (every ``S``-th candidate of a sample and
    its last one) is resolved exactly; each finer level first evaluates a candidate at the
    maximisers of ``+G`` and ``-G`` of its two already-visited neighbours (4 points: a lower
    bound of its D that is usually tight), and resolves exactly only the candidates whose
    bound does not exceed the best exact D of their sample so far (``_resolve`` abandons them
    as soon as they provably exceed it, and reports where their largest ``|G|`` was found,
    which in turn feeds finer levels).
    """
    cand = model.cand
    m = cand.j.size
    nseg = model.nseg
    val = np.zeros(m)
    exact = np.zeros(m, dtype=bool)
    dbest = np.full(nseg, np.inf)
    gp = np.zeros(m)
    gm = np.zeros(m)
    kp = cand.j.copy()
    km = cand.j.copy()
    if m == 0:
        return val, exact

    def settle(cs: np.ndarray) -> None:
        lb = np.maximum(gp[cs], gm[cs])
        need = lb <= dbest[cand.seg[cs]]
        val[cs] = lb
        cs = cs[need]
        if cs.size == 0:
            return
        d, ok, arg, garg = _resolve(model, cs, lb[need], dbest)
        val[cs] = d
        exact[cs[ok]] = True
        np.minimum.at(dbest, cand.seg[cs[ok]], d[ok])
        up = (garg > gp[cs]) & (garg > 0)
        kp[cs[up]] = arg[up]
        gp[cs[up]] = garg[up]
        dn = (-garg > gm[cs]) & (garg < 0)
        km[cs[dn]] = arg[dn]
        gm[cs[dn]] = -garg[dn]

    def probe(cs_all: np.ndarray, pos_all: np.ndarray) -> None:
        # rows are independent: blocks of PROBE_ROWS bound the [rows, points] temporaries
        for r0 in range(0, cs_all.size, PROBE_ROWS):
            cs, pos = cs_all[r0 : r0 + PROBE_ROWS], pos_all[r0 : r0 + PROBE_ROWS]
            pos = np.clip(pos, cand.j[cs][:, None], cand.last[cs][:, None])
            cc = np.broadcast_to(cs[:, None], pos.shape)
            g = model.a(cc, pos) - model.bfun(cc, pos)
            ip = np.argmax(g, axis=1)
            im = np.argmin(g, axis=1)
            rows = np.arange(cs.size)
            gp[cs] = np.maximum(g[rows, ip], 0.0)
            gm[cs] = np.maximum(-g[rows, im], 0.0)
            kp[cs] = pos[rows, ip]
            km[cs] = pos[rows, im]

    mseg = np.diff(cand.coff)
    local = np.arange(m) - cand.coff[cand.seg]
    mine = mseg[cand.seg]
    levels = max(0, int(np.ceil(np.log2(max(1.0, mseg.max() / coarse)))))
    stride = 1 << levels
    c0 = np.flatnonzero((local % stride == 0) | (local == mine - 1))
    span = (cand.last[c0] - cand.j[c0])[:, None]
    probe(c0, cand.j[c0][:, None] + (span * np.arange(grid)[None, :]) // (grid - 1))
    settle(c0)
    for lev in range(1, levels + 1):
        s = stride >> lev
        cn = np.flatnonzero((local % (2 * s) == s) & (local != mine - 1))
        if cn.size == 0:
            continue
        left = cn - s
        right = np.where(local[cn] + s < mine[cn], cn + s, cand.coff[cand.seg[cn] + 1] - 1)
        probe(cn, np.stack([kp[left], km[left], kp[right], km[right]], axis=1))
        settle(cn)
    return val, exact


def _resolve(
    model: _Model,
    cs: np.ndarray,
    lb0: np.ndarray,
    threshold: np.ndarray,
    branching: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact D of candidates ``cs`` (sorted) by branch-and-bound over K-ary splits of the tail,
    abandoning any whose D provably exceeds its sample's ``threshold`` or the upper bound of
    another candidate of the same sample.

    ``lb0`` are known lower bounds. Returns ``(D, exact, argmax, G(argmax))``: ``D`` is exact
    where ``exact`` (else a lower bound above the threshold), ``argmax`` the distinct-value
    index of the largest ``|G|`` found and ``G`` there (signed).
    """
    nc = cs.size
    cand = model.cand
    segc = cand.seg[cs]
    lb = lb0.copy()
    arg = cand.j[cs].copy()
    garg = np.zeros(nc)
    p = cand.j[cs].copy()
    q = cand.last[cs].copy()
    bp = model.bfun(cs, p)
    bq = model.bfun(cs, q)
    for k, g in ((p, model.a(cs, p) - bp), (q, model.a(cs, q) - bq)):
        better = np.abs(g) > lb
        lb = np.where(better, np.abs(g), lb)
        arg = np.where(better, k, arg)
        garg = np.where(better, g, garg)
    alive = np.ones(nc, dtype=bool)
    seg_ids, seg_first = np.unique(segc, return_index=True)
    seg_pos = np.searchsorted(seg_ids, segc)
    thr_seg = threshold[seg_ids]
    keep = q - p >= 2
    node = np.flatnonzero(keep)
    p, q, bp, bq = p[keep], q[keep], bp[keep], bq[keep]
    frac = np.arange(1, branching)[None, :]
    while node.size:
        cabs = cs[node]
        # max |G| on the open interval (p, q) <= max(A(p+1) - B(q), B(p) - A(q-1))
        ub = np.maximum(model.a(cabs, p + 1) - bq, bp - model.a(cabs, q - 1))
        starts = _seg_starts(node)
        who = node[starts]
        ubc = lb.copy()
        ubc[who] = np.maximum(ubc[who], np.maximum.reduceat(ub, starts))
        tseg = np.minimum(thr_seg, np.minimum.reduceat(np.where(alive, ubc, np.inf), seg_first))
        alive &= lb <= tseg[seg_pos]
        keep = (ub > lb[node]) & alive[node]
        if not keep.all():
            node, p, q, bp, bq = node[keep], p[keep], q[keep], bp[keep], bq[keep]
            if node.size == 0:
                break
            cabs = cs[node]
        w = (q - p)[:, None]
        split = np.where(w >= branching, p[:, None] + (w * frac) // branching, p[:, None] + frac)
        valid = split < q[:, None]
        split = np.where(valid, split, q[:, None])
        cc = np.broadcast_to(cabs[:, None], split.shape)
        bs = model.bfun(cc, split)
        gs = model.a(cc, split) - bs
        ga = np.where(valid, np.abs(gs), -1.0)
        col = np.argmax(ga, axis=1)
        rows = np.arange(node.size)
        gbest = ga[rows, col]
        starts = _seg_starts(node)
        who = node[starts]
        gmax = np.maximum.reduceat(gbest, starts)
        is_max = gbest == np.repeat(gmax, np.diff(np.append(starts, gbest.size)))
        imax = np.maximum.reduceat(np.where(is_max, rows, -1), starts)
        upd = gmax > lb[who]
        who, imax = who[upd], imax[upd]
        lb[who] = gmax[upd]
        arg[who] = split[imax, col[imax]]
        garg[who] = gs[imax, col[imax]]
        # children: the intervals between consecutive evaluated points that have an interior
        ends = np.concatenate([p[:, None], split, q[:, None]], axis=1)
        bends = np.concatenate([bp[:, None], bs, bq[:, None]], axis=1)
        cp = ends[:, :-1].ravel()
        cq = ends[:, 1:].ravel()
        keep = cq - cp >= 2
        node = np.repeat(node, branching)[keep]
        p, q = cp[keep], cq[keep]
        bp, bq = bends[:, :-1].ravel()[keep], bends[:, 1:].ravel()[keep]
    return lb, alive, arg, garg


@dataclass
class ScanResult:
    best: np.ndarray  # candidate index of the chosen xmin per sample (-1 if none)
    ks: np.ndarray  # KS distance of the chosen candidate (per sample)
    n_resolved: int


def scan(model: _Model) -> ScanResult:
    """Argmin over candidates of the KS distance, per sample (ties -> smallest xmin)."""
    cand = model.cand
    nseg = model.nseg
    best = np.full(nseg, -1, dtype=np.int64)
    ks = np.full(nseg, np.nan)
    val, exact = _progressive(model)
    ex = np.flatnonzero(exact)
    if ex.size == 0:
        return ScanResult(best, ks, 0)
    dmin = np.full(nseg, np.inf)
    np.minimum.at(dmin, cand.seg[ex], val[ex])
    sel = ex[val[ex] == dmin[cand.seg[ex]]]
    segs, firsts = np.unique(cand.seg[sel], return_index=True)
    best[segs] = sel[firsts]
    ks[segs] = val[sel[firsts]]
    return ScanResult(best, ks, int(ex.size))
