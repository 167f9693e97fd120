"""Spectra of gradient covariances and Hessians, and their power-law fits (numpy/scipy, no torch).

* Gradient-covariance spectra through the N x N Gram matrix (:func:`covariance_spectrum`), with
  random-matrix baselines in the same units (:func:`random_matrix_spectrum`,
  :func:`marchenko_pastur`).
* Rank-ordered power-law fits ``lambda_k ~ k^-s`` with the density exponent ``beta = 1 + 1/s``
  and the Clauset KS distance (:func:`fit_rank_power_law`; Xie et al. 2022, 2023).
* Eigengaps, effective rank and Davis–Kahan stability of the top-k subspace.
* Matrix-free Lanczos, Hutchinson/Hutch++ and stochastic Lanczos quadrature on an abstract
  ``matvec``; :mod:`gradnoise.curvature` supplies Hessian-vector products from a model.

Everything accepts numpy arrays (torch tensors via ``np.asarray``) and never imports torch.
"""

from __future__ import annotations

from .covariance import (
    MarchenkoPastur,
    center_gram,
    covariance_spectrum,
    gram_matrix,
    gram_spectrum,
    marchenko_pastur,
    random_matrix_spectrum,
)
from .krylov import (
    LanczosEigs,
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigs,
    slq_density,
)
from .rank_fit import RankPowerLawFit, fit_rank_power_law
from .structure import (
    SubspaceStability,
    effective_rank,
    eigengaps,
    subspace_stability,
    subspace_stability_from_gram,
)

__all__ = [
    "LanczosEigs",
    "MarchenkoPastur",
    "RankPowerLawFit",
    "SpectralDensity",
    "SubspaceStability",
    "TraceEstimate",
    "center_gram",
    "covariance_spectrum",
    "effective_rank",
    "eigengaps",
    "fit_rank_power_law",
    "gram_matrix",
    "gram_spectrum",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_eigs",
    "marchenko_pastur",
    "random_matrix_spectrum",
    "slq_density",
    "subspace_stability",
    "subspace_stability_from_gram",
]
