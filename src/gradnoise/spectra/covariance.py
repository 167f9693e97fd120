"""Spectra of gradient covariances through the N x N Gram matrix (never a P x P matrix).

Notation (``../shared/research/methods.md`` §0): rows ``g_i`` of ``G`` ([N, P]) are per-example (or
minibatch) gradients, ``gbar = (1/N) sum_i g_i``. The **centred covariance** is

    C = (1/N) sum_i (g_i - gbar)(g_i - gbar)^T                      (normalisation 1/N)

and the **uncentred second moment** (the empirical Fisher) is ``M = (1/N) sum_i g_i g_i^T``. Their
non-zero eigenvalues are those of the N x N Gram matrices ``(1/N) Gc Gc^T`` and ``(1/N) G G^T``
(``Gc = G - 1 gbar^T``), computed here in float64. The rank is at most ``min(N - 1, P)`` (centred)
or ``min(N, P)`` (uncentred), so exactly that many eigenvalues are returned. Multiply by
``N / (N - 1)`` for the unbiased covariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from ..errors import DataError
from ..stats._common import (
    RNGLike,
    StatResult,
    as_float_array,
    as_generator,
    check_finite,
    check_min_size,
    pow2_exponents,
)

#: Columns of ``G`` converted to float64 at a time when forming the Gram matrix.
_COLUMN_CHUNK = 1 << 15


def gram_matrix(G: Any, *, centered: bool = False) -> np.ndarray:
    """``Gc Gc^T`` (or ``G G^T``) in float64 for a ``[N, P]`` array, streamed over column chunks.

    Columns are converted to float64 (and centred by their float64 mean) one chunk at a time, so
    the extra memory is ``N x 32768`` float64 whatever P. No ``1/N`` factor is applied. Entries
    of extreme magnitude (~1e300 or ~1e-300) are handled by an exact power-of-two rescaling; a
    Gram matrix whose entries exceed float64 raises :class:`~gradnoise.errors.DataError`.
    """
    gram, e = _scaled_gram(G, centered)
    return _unscale(gram, e, "the Gram matrix G G^T")


def _scaled_gram(G: Any, centered: bool) -> tuple[np.ndarray, int]:
    """``(gram of G * 2**-e, e)``: ``e = 0`` for ordinary magnitudes (one pass, results
    unchanged); for entries beyond ``2**+-200`` a second pass on the exactly rescaled chunks."""
    arr = np.asarray(G)
    if arr.ndim != 2:
        raise ValueError(f"G must be a 2-D [N, P] array of gradients, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"G must be numeric, got dtype {arr.dtype}")
    n, p = arr.shape
    check_min_size(n, 2 if centered else 1, "a gradient covariance spectrum")
    if p == 0:
        raise ValueError("G has no columns (P = 0)")
    gram, maxabs = _accumulate(arr, centered, 0)
    e = int(pow2_exponents(np.array(maxabs)))
    if e:
        gram, _ = _accumulate(arr, centered, e)
    return gram, e


def _accumulate(arr: np.ndarray, centered: bool, e: int) -> tuple[np.ndarray, float]:
    """Gram matrix of ``arr * 2**-e`` over column chunks, and max |arr| (NaN/Inf raise)."""
    n, p = arr.shape
    gram = np.zeros((n, n), dtype=np.float64)
    maxabs = 0.0
    for start in range(0, p, _COLUMN_CHUNK):
        block = arr[:, start : start + _COLUMN_CHUNK].astype(np.float64)
        check_finite(block, "G")
        maxabs = max(maxabs, float(np.abs(block).max()))
        if e:
            block = np.ldexp(block, -e)
        if centered:
            block -= block.mean(axis=0)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            gram += block @ block.T
    return gram, maxabs


def _unscale(values: np.ndarray, e: int, what: str) -> np.ndarray:
    """``values * 4**e`` (undo the rescaling of G by 2**-e), refusing float64 overflow."""
    if e == 0:
        return values
    with np.errstate(over="ignore", under="ignore"):
        out = np.ldexp(values, 2 * e)
    if not np.all(np.isfinite(out)):
        raise DataError(
            f"{what} overflows float64: G holds entries of size ~1e{round(e * math.log10(2))} "
            "and these are sums of their squares; divide G by a constant c first (eigenvalues "
            "scale by 1/c^2)"
        )
    return out


def center_gram(gram: np.ndarray) -> np.ndarray:
    """Double centring ``H K H`` (``H = I - 11^T/N``): the Gram matrix of the centred rows."""
    row = gram.mean(axis=1)
    out = gram - row[:, None] - row[None, :] + row.mean()
    return 0.5 * (out + out.T)


def gram_spectrum(gram: Any, *, centered: bool = True, num_params: int | None = None) -> np.ndarray:
    """Covariance eigenvalues (descending) from the *uncentred* Gram matrix ``K = G G^T``.

    Same result as :func:`covariance_spectrum` on ``G``, for callers that build ``K`` without
    ``G`` (e.g. :func:`gradnoise.covariance_spectrum` from a model, layer by layer). ``num_params``
    (P), when known, caps the number of returned eigenvalues at the rank bound ``min(N-1, P)``.
    """
    k = as_float_array(gram, "gram")
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"gram must be a square [N, N] matrix, got shape {k.shape}")
    check_finite(k, "gram")
    n = k.shape[0]
    check_min_size(n, 2 if centered else 1, "a gradient covariance spectrum")
    if not np.allclose(k, k.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(k).max()))):
        raise ValueError("gram is not symmetric")
    k = center_gram(k) if centered else 0.5 * (k + k.T)
    return _spectrum(k, n, centered, num_params)


def covariance_spectrum(G: Any, *, centered: bool = True) -> np.ndarray:
    """Eigenvalues (descending) of the gradient covariance of the rows of ``G``, via the Gram trick.

    ``centered=True``: ``C = (1/N) sum_i (g_i - gbar)(g_i - gbar)^T`` (normalisation ``1/N``);
    ``centered=False``: the second moment ``(1/N) sum_i g_i g_i^T`` (empirical Fisher). Both use the
    non-zero eigenvalues of the ``N x N`` matrix ``(1/N) Gc Gc^T`` (methods.md §0), computed in
    float64; round-off negatives (a PSD matrix) are set to 0.

    Args:
        G: ``[N, P]`` per-example or minibatch gradients (numpy array or torch tensor).
        centered: subtract the mean gradient (covariance) or not (second moment).

    Returns:
        ``min(N - 1, P)`` (centred) or ``min(N, P)`` (uncentred) eigenvalues, descending, float64.

    Example:
        >>> G = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
        >>> covariance_spectrum(G).round(6).tolist()
        [2.0, 0.5]
    """
    gram, e = _scaled_gram(G, centered)
    eigs = _spectrum(0.5 * (gram + gram.T), gram.shape[0], centered, np.asarray(G).shape[1])
    return _unscale(eigs, e, "the covariance spectrum")


def _spectrum(gram: np.ndarray, n: int, centered: bool, num_params: int | None) -> np.ndarray:
    rank = n - 1 if centered else n
    if num_params is not None:
        rank = min(rank, int(num_params))
    eigs = scipy.linalg.eigh(gram / n, eigvals_only=True)[::-1]
    return np.maximum(eigs[:rank], 0.0)


# --------------------------------------------------------------------------------------------
# Random-matrix (Marchenko–Pastur) baselines in the same units
# --------------------------------------------------------------------------------------------


def _shape(n: int, p: int, centered: bool) -> tuple[int, int, int]:
    """(dof n' = N - centred, m = number of non-zero eigenvalues, d = the other dimension)."""
    if int(n) != n or int(p) != p:
        raise TypeError("n and p must be integers")
    dof = int(n) - int(centered)
    if dof < 1 or p < 1:
        raise ValueError(f"need n >= {1 + int(centered)} and p >= 1, got n={n}, p={p}")
    return dof, min(dof, int(p)), max(dof, int(p))


def random_matrix_spectrum(
    n: int,
    p: int,
    *,
    total_variance: float | None = None,
    centered: bool = True,
    rng: RNGLike = None,
) -> np.ndarray:
    """Covariance spectrum (as :func:`covariance_spectrum`) of a seeded i.i.d. Gaussian ``[n, p]``.

    The baseline "a random matrix of the same shape": the non-zero eigenvalues of
    ``(1/n) Zc^T Zc`` for ``Z`` with i.i.d. N(0, 1) entries. They are drawn exactly, without
    forming ``Z``: they are the eigenvalues of a Wishart matrix ``W_m(d, I)/n`` (m = min(n', p),
    d = max(n', p), n' = n - 1 when centred, since centring removes one degree of freedom),
    sampled by the Bartlett decomposition ``W = A A^T`` with ``A_ii^2 ~ chi2(d - i + 1)`` and
    ``A_ij ~ N(0, 1)`` below the diagonal (Bartlett 1933). Cost O(m^3) whatever p.

    Args:
        total_variance: if given, the spectrum is rescaled so that it sums exactly to this value
            (match ``covariance_spectrum(G).sum()`` = trace of the covariance); otherwise entries
            have unit variance.

    Returns:
        ``m`` eigenvalues, descending.
    """
    gen = as_generator(rng)
    _, m, d = _shape(n, p, centered)
    a = np.tril(gen.standard_normal((m, m)), k=-1)
    a[np.diag_indices(m)] = np.sqrt(gen.chisquare(d - np.arange(m)))
    # eigenvalues of A A^T are the squared singular values of A
    eigs = scipy.linalg.svdvals(a) ** 2 / n
    eigs = np.sort(eigs)[::-1]
    if total_variance is not None:
        if not np.isfinite(total_variance) or total_variance <= 0:
            raise ValueError(f"total_variance must be finite and > 0, got {total_variance}")
        eigs *= total_variance / eigs.sum()
    return eigs


@dataclass(frozen=True, repr=False)
class MarchenkoPastur(StatResult):
    """Marchenko–Pastur law of the non-zero covariance eigenvalues of an i.i.d. ``[n, p]`` matrix.

    The ``m = min(n', p)`` non-zero eigenvalues (``n' = n - 1`` if centred) are distributed as
    ``scale * MP_y`` with ``y = m / max(n', p) <= 1`` and ``scale = total_variance / m`` (their
    mean), where ``MP_y`` has density ``sqrt((b - x)(x - a)) / (2 pi y x)`` on
    ``[a, b] = [(1 - sqrt y)^2, (1 + sqrt y)^2]`` (Marchenko & Pastur 1967).

    Attributes:
        n, p, centered: the matrix shape and centring.
        num_eigenvalues: ``m``.
        ratio: ``y``.
        scale: mean non-zero eigenvalue ``total_variance / m``.
        lower, upper: support edges ``scale * a`` and ``scale * b``.
    """

    n: int
    p: int
    centered: bool
    num_eigenvalues: int
    ratio: float
    scale: float
    lower: float
    upper: float

    def pdf(self, x: Any) -> np.ndarray:
        """Density of one non-zero eigenvalue at ``x``."""
        x = np.asarray(x, dtype=np.float64)
        a, b, y = self.lower / self.scale, self.upper / self.scale, self.ratio
        u = x / self.scale
        with np.errstate(invalid="ignore", divide="ignore"):
            dens = np.sqrt(np.clip((b - u) * (u - a), 0.0, None)) / (2 * np.pi * y * u)
        return np.where((u > a) & (u < b), dens / self.scale, 0.0)

    def _grid(self, size: int = 20001) -> tuple[np.ndarray, np.ndarray]:
        """(x, cdf) on a grid uniform in theta, x = a + (b - a)(1 - cos theta)/2 (smooth edges)."""
        a, b, y = self.lower / self.scale, self.upper / self.scale, self.ratio
        theta = np.linspace(0.0, np.pi, size)
        u = a + (b - a) * (1 - np.cos(theta)) / 2
        # density * du/dtheta = ((b - a)/2)^2 sin^2(theta) / (2 pi y u): bounded and smooth
        integrand = ((b - a) / 2) ** 2 * np.sin(theta) ** 2 / (2 * np.pi * y * u)
        cdf = np.concatenate(
            [[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(theta))]
        )
        return u * self.scale, cdf / cdf[-1]

    def cdf(self, x: Any) -> np.ndarray:
        """Distribution function of one non-zero eigenvalue."""
        grid, cdf = self._grid()
        return np.interp(np.asarray(x, dtype=np.float64), grid, cdf, left=0.0, right=1.0)

    def rank_quantiles(self) -> np.ndarray:
        """Expected rank-ordered eigenvalues: ``F^{-1}(1 - (k - 1/2)/m)`` for ``k = 1..m``."""
        grid, cdf = self._grid()
        m = self.num_eigenvalues
        probs = 1 - (np.arange(1, m + 1) - 0.5) / m
        return np.interp(probs, cdf, grid)


def marchenko_pastur(
    n: int, p: int, *, total_variance: float = 1.0, centered: bool = True
) -> MarchenkoPastur:
    """The Marchenko–Pastur law matching a covariance spectrum of an ``[n, p]`` gradient matrix.

    Pass ``total_variance=covariance_spectrum(G).sum()`` to compare in the same units: the law of
    an i.i.d. Gaussian matrix of the same shape and the same total variance (trace).

    Example:
        >>> mp = marchenko_pastur(100, 400, total_variance=100.0)
        >>> round(mp.lower, 4), round(mp.upper, 4), mp.num_eigenvalues
        (0.2551, 2.2651, 99)
    """
    if not np.isfinite(total_variance) or total_variance <= 0:
        raise ValueError(f"total_variance must be finite and > 0, got {total_variance}")
    _, m, d = _shape(n, p, centered)
    y = m / d
    scale = float(total_variance) / m
    return MarchenkoPastur(
        n=int(n),
        p=int(p),
        centered=bool(centered),
        num_eigenvalues=m,
        ratio=float(y),
        scale=scale,
        lower=float(scale * (1 - np.sqrt(y)) ** 2),
        upper=float(scale * (1 + np.sqrt(y)) ** 2),
    )
