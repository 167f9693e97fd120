"""Matrix-free spectral algorithms on an abstract symmetric ``matvec`` (numpy, float64).

The torch side only supplies a callable ``matvec(v) -> A v`` for 1-D float64 arrays of length
``dim`` (e.g. a Hessian-vector product over a dataset); everything else lives here:

* :func:`lanczos_eigs`: extreme eigenpairs by Lanczos with full reorthogonalisation and Ritz
  residual estimates ``||A y - theta y|| = beta_m |e_m^T s|`` (Golub & Van Loan, §10.1).
* :func:`hutchinson_trace` and :func:`hutchpp_trace`: stochastic trace estimates with standard
  errors (Hutchinson 1989; Meyer, Musco, Musco & Woodruff 2021, "Hutch++").
* :func:`slq_density`: stochastic Lanczos quadrature of the spectral density (Golub & Meurant
  1994; Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019).

Every random function takes ``rng`` (None, int or Generator); the same seed gives the same numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg

from ..stats._common import RNGLike, StatResult, as_generator, check_min_size

MatVec = Callable[[np.ndarray], Any]
Which = Literal["LA", "SA", "LM"]


def _apply(matvec: MatVec, v: np.ndarray) -> np.ndarray:
    out = np.asarray(matvec(v), dtype=np.float64).reshape(-1)
    if out.shape != v.shape:
        raise ValueError(f"matvec returned {out.size} values for a vector of length {v.size}")
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("matvec returned NaN/Inf")
    return out


def _rotate_rows(
    basis: np.ndarray, rotation: np.ndarray, size: int, block_bytes: int = 1 << 26
) -> None:
    """``basis[:m] = rotation @ basis[:size]`` in place, a block of columns at a time: the
    product at once is an ``[m, dim]`` temporary (for 10^7 parameters, gigabytes on top of the
    basis), a block is at most ~64 MiB. Each block's columns are read before they are written."""
    m = rotation.shape[0]
    step = max(1, block_bytes // (8 * max(1, size)))  # columns per block of size x step float64
    for c in range(0, basis.shape[1], step):
        basis[:m, c : c + step] = rotation @ basis[:size, c : c + step]


def _check_dim(dim: int) -> int:
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim}")
    return int(dim)


def _lanczos(matvec: MatVec, q0: np.ndarray, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lanczos with full reorthogonalisation from ``q0``: the tridiagonal ``(alpha, beta)``.

    Stops early on breakdown (``beta ~ 0``: the Krylov space is invariant and Gauss quadrature
    with the nodes found so far is exact).
    """
    dim = q0.size
    basis = np.empty((min(num_steps, dim) + 1, dim))
    basis[0] = q0 / np.linalg.norm(q0)
    alpha: list[float] = []
    beta: list[float] = []
    scale = 0.0
    for j in range(min(num_steps, dim)):
        q = basis[j]
        w = _apply(matvec, q)
        a = float(q @ w)
        alpha.append(a)
        w = _orthogonalise(basis[: j + 1], w)
        b = float(np.linalg.norm(w))
        scale = max(scale, abs(a), b)
        if j + 1 == min(num_steps, dim) or b <= 1e-10 * max(scale, np.finfo(float).tiny):
            break
        beta.append(b)
        basis[j + 1] = w / b
    return np.array(alpha), np.array(beta)


def _orthogonalise(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Remove the span of the rows of ``q`` from ``w``: classical Gram–Schmidt twice."""
    for _ in range(2):
        w = w - q.T @ (q @ w)
    return w


def _ritz(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(alpha, beta)


def _select(theta: np.ndarray, k: int, which: Which) -> np.ndarray:
    if which == "LA":
        order = np.argsort(-theta, kind="stable")
    elif which == "SA":
        order = np.argsort(theta, kind="stable")
    else:
        order = np.argsort(-np.abs(theta), kind="stable")
    return order[:k]


@dataclass(frozen=True, repr=False)
class LanczosEigs(StatResult):
    """Extreme eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: ``[k]`` Ritz values: descending for ``which="LA"``, ascending for ``"SA"``,
            by descending magnitude for ``"LM"``.
        residuals: ``[k]`` residual norms ``||A y_i - theta_i y_i||`` of the unit Ritz vectors
            (Lanczos estimates ``beta |e_m^T s_i|``; exact in exact arithmetic). Each eigenvalue lies
            within its residual of a true eigenvalue, and within ``residual^2 / gap`` when isolated.
        converged: ``[k]`` whether ``residual <= tol * max|theta|``.
        num_matvecs: operator applications used.
        num_restarts: thick restarts performed.
        tol: the requested relative residual tolerance.
        which: ``"LA"`` (largest algebraic), ``"SA"`` (smallest) or ``"LM"`` (largest magnitude).
        eigenvectors: ``[dim, k]`` unit Ritz vectors if requested, else None (not in ``to_dict``).
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    num_matvecs: int
    num_restarts: int
    tol: float
    which: str
    eigenvectors: np.ndarray | None = field(default=None, repr=False)


def lanczos_eigs(
    matvec: MatVec,
    dim: int,
    *,
    k: int = 6,
    which: Which = "LA",
    tol: float = 1e-6,
    ncv: int | None = None,
    max_steps: int | None = None,
    rng: RNGLike = None,
    return_vectors: bool = False,
) -> LanczosEigs:
    """The ``k`` extreme eigenvalues of a symmetric operator: thick-restart Lanczos.

    Lanczos with full reorthogonalisation from a Gaussian start vector drawn from ``rng``. The
    projected matrix ``T = Q^T A Q`` is kept explicitly (its columns are the Gram–Schmidt
    coefficients), so after ``ncv`` basis vectors the basis is compressed to the best
    ``k + (ncv - k) // 2`` Ritz vectors (in place, a block of columns at a time) and the
    iteration continues from the last residual direction (thick restart, Wu & Simon 2000; Stewart's Krylov–Schur form). It stops as soon as
    all k wanted Ritz pairs have residual ``beta |e_m^T s_i| <= tol * max|theta|``, or after
    ``max_steps`` operator applications (with a warning). On breakdown (an invariant subspace) it
    continues from a fresh random vector orthogonal to the basis. Memory: ``(ncv + 1) x dim``
    float64 and a few vectors of ``dim`` (for 10^7 coordinates and the default ``ncv`` of 40,
    3.3 GB: pass a smaller ``ncv`` to bound it).

    Args:
        matvec: ``v -> A v`` on 1-D float64 arrays of length ``dim``; ``A`` must be symmetric.
        k: number of eigenpairs.
        which: ``"LA"`` (largest algebraic, the Hessian top-k), ``"SA"`` or ``"LM"``.
        tol: relative residual tolerance; eigenvalue errors are typically ``~ residual^2 / gap``.
        ncv: basis size before a restart (default ``min(dim, max(2k + 20, 40))``).
        max_steps: at most this many operator applications (default ``max(1000, 20 ncv)``).

    Example:
        >>> a = np.diag(np.arange(1.0, 101.0))
        >>> lanczos_eigs(lambda v: a @ v, 100, k=3, rng=0).eigenvalues.round(8).tolist()
        [100.0, 99.0, 98.0]
    """
    dim = _check_dim(dim)
    k = int(k)
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, dim={dim}], got {k}")
    if which not in ("LA", "SA", "LM"):
        raise ValueError(f"which must be 'LA', 'SA' or 'LM', got {which!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    ncv = min(dim, max(2 * k + 20, 40)) if ncv is None else int(ncv)
    if not (k < ncv <= dim or ncv == dim):
        raise ValueError(f"ncv must satisfy k < ncv <= dim (or ncv = dim), got ncv={ncv}, k={k}")
    steps = max(1000, 20 * ncv) if max_steps is None else int(max_steps)
    if steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {steps}")
    gen = as_generator(rng)
    keep_count = max(k, k + (ncv - k) // 2)
    basis = np.empty((ncv + 1, dim))
    proj = np.zeros((ncv + 1, ncv + 1))
    start = gen.standard_normal(dim)
    basis[0] = start / np.linalg.norm(start)
    size, used, restarts = 1, 0, 0
    while True:
        j = size - 1
        w = _apply(matvec, basis[j])
        used += 1
        q = basis[:size]
        coef = q @ w
        w = w - q.T @ coef
        extra = q @ w
        w = w - q.T @ extra
        coef += extra
        proj[:size, j] = coef
        proj[j, :size] = coef
        b = float(np.linalg.norm(w))
        theta, s = np.linalg.eigh(proj[:size, :size])
        idx = _select(theta, min(k, size), which)
        res = b * np.abs(s[j, idx])
        scale = max(float(np.max(np.abs(theta))), np.finfo(float).tiny)
        if size >= k and np.all(res <= tol * scale):
            break
        if size >= dim or used >= steps:
            break
        if b <= 1e-10 * max(scale, b):  # invariant subspace: continue from a fresh direction
            w = _orthogonalise(q, gen.standard_normal(dim))
            norm = float(np.linalg.norm(w))
            if norm <= 1e-8:
                break
            nxt = w / norm
        else:
            nxt = w / b
        if size == ncv:  # thick restart: keep the best Ritz vectors
            keep = _select(theta, keep_count, which)
            _rotate_rows(basis, s[:, keep].T, size)
            proj[:] = 0.0
            proj[np.arange(keep.size), np.arange(keep.size)] = theta[keep]
            size = keep.size
            restarts += 1
        basis[size] = nxt
        size += 1
    converged = res <= tol * scale
    if idx.size < k:  # the Krylov space was exhausted before reaching k vectors
        raise FloatingPointError(
            f"lanczos_eigs found only {idx.size} of k={k} directions; is matvec symmetric?"
        )
    if not converged.all():
        warnings.warn(
            f"lanczos_eigs: {int((~converged).sum())} of {k} eigenpairs did not reach "
            f"tol={tol:g} in {used} steps (largest relative residual "
            f"{float(res.max() / scale):.2g}); raise max_steps or tol",
            RuntimeWarning,
            stacklevel=2,
        )
    vectors = (s[:, idx].T @ basis[:size]).T if return_vectors else None
    return LanczosEigs(
        eigenvalues=theta[idx].copy(),
        residuals=np.asarray(res, dtype=np.float64).copy(),
        converged=converged,
        num_matvecs=int(used),
        num_restarts=int(restarts),
        tol=float(tol),
        which=which,
        eigenvectors=vectors,
    )


# --------------------------------------------------------------------------------------------
# Trace estimators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class TraceEstimate(StatResult):
    """A stochastic trace estimate.

    Attributes:
        estimate: the trace estimate.
        stderr: its standard error (Hutch++: conditional on the sketch, from the residual probes).
        num_matvecs: operator applications used.
        method: ``"hutchinson"`` or ``"hutch++"``.
        samples: the per-probe values whose mean (plus, for Hutch++, ``exact_part``) is the
            estimate.
        exact_part: Hutch++'s deterministic part ``tr(Q^T A Q)`` (0 for Hutchinson).
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    samples: np.ndarray
    exact_part: float = 0.0


def _probes(gen: np.random.Generator, dim: int, count: int, distribution: str) -> np.ndarray:
    if distribution == "rademacher":
        return gen.choice(np.array([-1.0, 1.0]), size=(count, dim))
    if distribution == "gaussian":
        return gen.standard_normal((count, dim))
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    *,
    num_matvecs: int = 100,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    rng: RNGLike = None,
) -> TraceEstimate:
    """Hutchinson's estimator ``tr(A) ~ (1/m) sum_j z_j^T A z_j`` with i.i.d. probes ``z_j``.

    Unbiased; with Rademacher probes its variance is ``2 (||A||_F^2 - sum_i A_ii^2) / m``
    (Hutchinson 1989). ``stderr`` is the sample standard deviation of the m terms over ``sqrt(m)``.

    Example:
        >>> a = np.diag(np.arange(1.0, 11.0))
        >>> hutchinson_trace(lambda v: a @ v, 10, num_matvecs=4, rng=0).estimate
        55.0
    """
    dim = _check_dim(dim)
    check_min_size(int(num_matvecs), 2, "hutchinson_trace (num_matvecs)")
    gen = as_generator(rng)
    samples = np.array(
        [z @ _apply(matvec, z) for z in _probes(gen, dim, int(num_matvecs), distribution)]
    )
    return TraceEstimate(
        estimate=float(samples.mean()),
        stderr=float(samples.std(ddof=1) / np.sqrt(samples.size)),
        num_matvecs=int(num_matvecs),
        method="hutchinson",
        samples=samples,
    )


def hutchpp_trace(
    matvec: MatVec,
    dim: int,
    *,
    num_matvecs: int = 99,
    rng: RNGLike = None,
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021): exact trace on a sketched top subspace plus Hutchinson on the rest.

    With ``m = num_matvecs``: ``s = m // 3`` Rademacher sketch vectors ``S``, ``Q = orth(A S)``;
    ``tr(A) ~ tr(Q^T A Q) + (1/g) sum_j z_j^T (I - QQ^T) A (I - QQ^T) z_j`` with the remaining
    ``g = m - 2 s`` Rademacher probes. Its error falls as ``1/m`` (not ``1/sqrt m``) for PSD
    matrices with decaying spectra. ``stderr`` is that of the residual Hutchinson part.
    """
    dim = _check_dim(dim)
    m = int(num_matvecs)
    if m < 4:
        raise ValueError(f"hutchpp_trace needs num_matvecs >= 4, got {m}")
    gen = as_generator(rng)
    s = m // 3
    sketch = _probes(gen, dim, s, "rademacher")
    ys = np.stack([_apply(matvec, z) for z in sketch], axis=1)
    q, _ = np.linalg.qr(ys)
    aq = np.stack([_apply(matvec, q[:, i]) for i in range(q.shape[1])], axis=1)
    exact = float(np.trace(q.T @ aq))
    g = m - 2 * s
    probes = _probes(gen, dim, g, "rademacher")
    probes = probes - (probes @ q) @ q.T
    samples = np.array([z @ _apply(matvec, z) for z in probes])
    return TraceEstimate(
        estimate=exact + float(samples.mean()),
        stderr=float(samples.std(ddof=1) / np.sqrt(g)) if g > 1 else float("nan"),
        num_matvecs=m,
        method="hutch++",
        samples=samples,
        exact_part=exact,
    )


# --------------------------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SpectralDensity(StatResult):
    """Gauss-quadrature approximation of the spectral density from stochastic Lanczos.

    For probe ``v`` (unit norm) and its ``m``-step Lanczos tridiagonal ``T = S diag(theta) S^T``,
    ``v^T f(A) v ~ sum_i tau_i^2 f(theta_i)`` with ``tau_i = S_1i``, exact for polynomials of
    degree ``<= 2m - 1``. Averaged over probes, ``sum_i w_i f(theta_i)`` estimates
    ``(1/dim) tr f(A) = integral f dmu`` for the spectral measure ``mu``.

    Attributes:
        nodes: ``[num_probes, m]`` Ritz values per probe.
        weights: ``[num_probes, m]`` Gauss weights ``tau^2`` per probe (each row sums to 1;
            zero-padded where a probe's Krylov space was exhausted early).
        dim: operator dimension.
        num_matvecs: operator applications used.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    num_matvecs: int

    def _per_probe(self, p: float) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            powered = np.where(self.weights > 0, self.nodes**p, 0.0)
        return np.sum(self.weights * powered, axis=1)

    def moment(self, p: float) -> float:
        """Estimate of the normalised moment ``tr(A^p) / dim``."""
        return float(self._per_probe(p).mean())

    def moment_stderr(self, p: float) -> float:
        """Standard error of :meth:`moment` across probes (NaN with one probe)."""
        vals = self._per_probe(p)
        return float(vals.std(ddof=1) / np.sqrt(vals.size)) if vals.size > 1 else float("nan")

    def trace(self) -> tuple[float, float]:
        """``(estimate, stderr)`` of ``tr(A) = dim * moment(1)``."""
        return self.dim * self.moment(1), self.dim * self.moment_stderr(1)

    def density(self, grid: Any, *, sigma: float | None = None) -> np.ndarray:
        """Gaussian-smoothed density on ``grid``: ``mean_probes sum_i w_i N(x; theta_i, sigma^2)``.

        ``sigma`` defaults to 1 % of the node range. Integrates to 1 over the real line.
        """
        x = np.asarray(grid, dtype=np.float64)
        live = self.weights > 0
        if sigma is None:
            span = float(self.nodes[live].max() - self.nodes[live].min())
            sigma = 0.01 * span if span > 0 else 1.0
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        nodes, weights = self.nodes[live], self.weights[live]
        z = (x.reshape(-1, 1) - nodes[None, :]) / sigma
        dens = np.exp(-0.5 * z**2) @ weights / (sigma * np.sqrt(2 * np.pi))
        return (dens / self.nodes.shape[0]).reshape(x.shape)


def slq_density(
    matvec: MatVec,
    dim: int,
    *,
    num_steps: int = 80,
    num_probes: int = 4,
    rng: RNGLike = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: Ritz values and Gauss weights for ``num_probes`` probes.

    Each probe is a normalised Rademacher vector; ``num_steps`` Lanczos steps with full
    reorthogonalisation give ``num_steps`` nodes and weights (Ubaru, Chen & Saad 2017).

    Example:
        >>> a = np.diag(np.arange(1.0, 51.0))
        >>> round(slq_density(lambda v: a @ v, 50, num_steps=10, rng=0).moment(2), 6)
        858.5
    """
    dim = _check_dim(dim)
    steps = int(num_steps)
    if not 1 <= steps:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    steps = min(steps, dim)
    check_min_size(int(num_probes), 1, "slq_density (num_probes)")
    gen = as_generator(rng)
    nodes = np.zeros((int(num_probes), steps))
    weights = np.zeros((int(num_probes), steps))
    total = 0
    for i, z in enumerate(_probes(gen, dim, int(num_probes), "rademacher")):
        alpha, beta = _lanczos(matvec, z, steps)
        total += alpha.size
        theta, s = _ritz(alpha, beta)
        nodes[i, : theta.size] = theta
        weights[i, : theta.size] = s[0] ** 2
    return SpectralDensity(nodes=nodes, weights=weights, dim=dim, num_matvecs=total)
