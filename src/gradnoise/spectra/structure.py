"""Shape summaries of a spectrum: eigengaps, effective rank, top-k subspace stability.

Xie et al. (NeurIPS 2023, arXiv 2212.02083) tie a power-law covariance spectrum to large top
eigengaps and, through the Davis–Kahan sin-theta theorem, to a stable low-dimensional top subspace
(methods.md §1(b) item 5): ``||sin Theta(U_k, U'_k)||_2 <= 2 ||C - C'||_op / (lambda_k - lambda_{k+1})``
(the Yu, Wang & Samworth 2015 form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg

from ..stats._common import (
    RNGLike,
    StatResult,
    as_float_array,
    as_generator,
    check_finite,
    check_min_size,
)
from .covariance import gram_matrix


def _descending(eigs: Any, name: str = "eigs") -> np.ndarray:
    lam = as_float_array(eigs, name)
    if lam.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {lam.shape}")
    check_finite(lam, name)
    return np.sort(lam)[::-1]


def eigengaps(eigs: Any) -> np.ndarray:
    """Gaps ``lambda_k - lambda_{k+1}`` (k = 1..n-1) of the spectrum sorted in descending order.

    Example:
        >>> eigengaps([1.0, 4.0, 2.0]).tolist()
        [2.0, 1.0]
    """
    lam = _descending(eigs)
    check_min_size(lam.size, 2, "eigengaps")
    return -np.diff(lam)


def effective_rank(eigs: Any, *, kind: Literal["entropy", "participation"] = "entropy") -> float:
    """Effective rank of a PSD spectrum.

    ``"entropy"``: ``exp(-sum p_k log p_k)`` with ``p_k = lambda_k / sum lambda`` (Roy & Vetterli
    2007); ``"participation"``: ``(sum lambda)^2 / sum lambda^2``. Both equal r for r equal
    non-zero eigenvalues. Negative eigenvalues are an error (not a PSD spectrum).

    Example:
        >>> round(effective_rank([1.0, 1.0, 0.0]), 6), effective_rank([3.0, 1.0], kind="participation")
        (2.0, 1.6)
    """
    lam = _descending(eigs)
    check_min_size(lam.size, 1, "effective_rank")
    if lam[-1] < 0:
        raise ValueError(
            f"effective_rank needs a PSD spectrum, got a negative eigenvalue ({lam[-1]:.3g})"
        )
    total = lam.sum()
    if total <= 0:
        raise ValueError("effective_rank of an all-zero spectrum is undefined")
    if kind == "entropy":
        prob = lam[lam > 0] / total
        return float(np.exp(-np.sum(prob * np.log(prob))))
    if kind == "participation":
        return float(total**2 / np.sum(lam**2))
    raise ValueError(f"kind must be 'entropy' or 'participation', got {kind!r}")


@dataclass(frozen=True, repr=False)
class SubspaceStability(StatResult):
    """Stability of the top-k covariance eigenspace between two disjoint halves of the examples.

    Attributes:
        k: subspace dimension.
        sin_theta: ``||sin Theta||_2``, the sine of the largest principal angle between the
            top-k eigenspaces of the two halves (0 = identical, 1 = some direction orthogonal).
        sin_theta_fro: ``||sin Theta||_F / sqrt(k)`` (root-mean-square sine over the k angles).
        bound: Davis–Kahan bound ``min(1, 2 ||C_1 - C_2||_op / (lambda_k - lambda_{k+1}))`` with
            the eigengap of half 1 (Yu, Wang & Samworth 2015); ``sin_theta <= bound`` always.
        difference_norm: ``||C_1 - C_2||_op``.
        eigengap: ``lambda_k - lambda_{k+1}`` of half 1.
        eigenvalues_1, eigenvalues_2: top ``k + 1`` covariance eigenvalues of each half.
        n_1, n_2: examples per half.
    """

    k: int
    sin_theta: float
    sin_theta_fro: float
    bound: float
    difference_norm: float
    eigengap: float
    eigenvalues_1: np.ndarray
    eigenvalues_2: np.ndarray
    n_1: int
    n_2: int


def subspace_stability(
    G: Any, *, k: int, centered: bool = True, rng: RNGLike = None
) -> SubspaceStability:
    """Davis–Kahan check of the top-k gradient-covariance subspace on two random halves of ``G``.

    The rows of ``G`` ([N, P]) are split uniformly at random into two halves; each half gives a
    covariance ``C_h = (1/n_h) sum (g_i - gbar_h)(g_i - gbar_h)^T`` (second moment if not
    ``centered``). Everything is computed from the N x N Gram matrix: eigenvectors
    ``U_h = Gc_h^T W_h Lambda_h^{-1/2}``, cosines ``U_1^T U_2``, and ``||C_1 - C_2||_op`` as the
    largest absolute eigenvalue of ``K^{1/2} D K^{1/2}`` with ``K`` the Gram matrix of the stacked
    centred halves and ``D = diag(1/n_1, ..., -1/n_2, ...)``.
    """
    return subspace_stability_from_gram(gram_matrix(G), k=k, centered=centered, rng=rng)


def subspace_stability_from_gram(
    gram: Any, *, k: int, centered: bool = True, rng: RNGLike = None
) -> SubspaceStability:
    """:func:`subspace_stability` from the uncentred Gram matrix ``G G^T`` (float64, [N, N])."""
    gram = as_float_array(gram, "gram")
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square [N, N] matrix, got shape {gram.shape}")
    check_finite(gram, "gram")
    n = gram.shape[0]
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    half_min = k + 1 + int(centered)
    check_min_size(n, 2 * half_min, f"subspace_stability with k={k}")
    perm = as_generator(rng).permutation(n)
    halves = [np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])]
    order = np.concatenate(halves)
    kk = gram[np.ix_(order, order)]
    n1, n2 = halves[0].size, halves[1].size
    if centered:  # centre each half by its own mean: K -> H K H with H = blockdiag(H_1, H_2)
        h = np.zeros((n1 + n2, n1 + n2))
        h[:n1, :n1] = np.eye(n1) - 1.0 / n1
        h[n1:, n1:] = np.eye(n2) - 1.0 / n2
        kk = h @ kk @ h
        kk = 0.5 * (kk + kk.T)
    k11, k22, k12 = kk[:n1, :n1], kk[n1:, n1:], kk[:n1, n1:]
    vals, vecs = [], []
    for block, nh in ((k11, n1), (k22, n2)):
        w, v = scipy.linalg.eigh(block)
        w, v = w[::-1], v[:, ::-1]
        if w[k - 1] <= 0:
            raise ValueError(
                f"a half has fewer than k={k} non-zero covariance eigenvalues; lower k"
            )
        vals.append(np.maximum(w, 0.0) / nh)
        vecs.append(v[:, :k] / np.sqrt(w[:k]))
    # cosines of principal angles: singular values of U_1^T U_2 = W_1^T Gc_1 Gc_2^T W_2
    cosines = np.clip(scipy.linalg.svdvals(vecs[0].T @ k12 @ vecs[1]), 0.0, 1.0)
    sines = np.sqrt(np.clip(1.0 - cosines**2, 0.0, None))
    # ||C_1 - C_2||_op = max |eig(K^{1/2} D K^{1/2})|
    w, v = scipy.linalg.eigh(kk)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    d = np.concatenate([np.full(n1, 1.0 / n1), np.full(n2, -1.0 / n2)])
    diff = float(np.max(np.abs(scipy.linalg.eigvalsh(root * d[None, :] @ root))))
    gap = float(vals[0][k - 1] - vals[0][k])
    bound = 1.0 if gap <= 0 else min(1.0, 2.0 * diff / gap)
    return SubspaceStability(
        k=k,
        sin_theta=float(sines.max()),
        sin_theta_fro=float(np.sqrt(np.mean(sines**2))),
        bound=bound,
        difference_norm=diff,
        eigengap=gap,
        eigenvalues_1=vals[0][: k + 1].copy(),
        eigenvalues_2=vals[1][: k + 1].copy(),
        n_1=int(n1),
        n_2=int(n2),
    )


__all__ = [
    "SubspaceStability",
    "effective_rank",
    "eigengaps",
    "subspace_stability",
    "subspace_stability_from_gram",
]
