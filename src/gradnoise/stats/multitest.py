"""Multiple-testing corrections across coordinates, directions or layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InsufficientDataError
from ._common import StatResult, as_float_array


def adjust_pvalues(
    pvalues: np.ndarray, *, method: Literal["bh", "holm", "bonferroni"] = "bh", axis: int = -1
) -> np.ndarray:
    """Adjusted p-values along ``axis`` (reject where adjusted p <= level).

    ``"bh"``: Benjamini–Hochberg (1995) step-up, controls the false discovery rate under
    independence or positive dependence; ``"holm"``: Holm (1979) step-down, controls the
    family-wise error rate; ``"bonferroni"``: ``min(1, m p)``. NaN p-values are not allowed.

    Example:
        >>> adjust_pvalues(np.array([0.01, 0.04, 0.03, 0.2]), method="bh").round(3).tolist()
        [0.04, 0.053, 0.053, 0.2]
    """
    p = as_float_array(pvalues, "pvalues")
    if p.ndim == 0:
        raise ValueError(
            "pvalues must be an array of p-values (one family along axis), got a scalar"
        )
    try:
        p = np.moveaxis(p, axis, -1)
    except np.exceptions.AxisError as exc:
        raise ValueError(f"axis {axis} is out of range for pvalues of shape {p.shape}") from exc
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p-values must lie in [0, 1] and not be NaN")
    m = p.shape[-1]
    if m == 0:
        return np.moveaxis(p.copy(), -1, axis)
    order = np.argsort(p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=-1)
    ranks = np.arange(1, m + 1)
    if method == "bh":
        adj = sorted_p * m / ranks
        adj = np.minimum.accumulate(adj[..., ::-1], axis=-1)[..., ::-1]
    elif method == "holm":
        adj = np.maximum.accumulate(sorted_p * (m - ranks + 1), axis=-1)
    elif method == "bonferroni":
        adj = sorted_p * m
    else:
        raise ValueError(f"method must be 'bh', 'holm' or 'bonferroni', got {method!r}")
    adj = np.minimum(adj, 1.0)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return np.moveaxis(out, -1, axis)


@dataclass(frozen=True, repr=False)
class MultipleTestResult(StatResult):
    """Decisions of a family of tests after correction.

    Attributes:
        pvalues_adjusted: adjusted p-values (same shape as the input).
        reject: ``pvalues_adjusted <= level``.
        fraction_rejected: mean of ``reject`` along the family axis.
        method: the correction.
        level: the FDR (``bh``) or FWER (``holm``, ``bonferroni``) level.
    """

    pvalues_adjusted: np.ndarray
    reject: np.ndarray
    fraction_rejected: float | np.ndarray
    method: str
    level: float


def multiple_test(
    pvalues: np.ndarray,
    *,
    method: Literal["bh", "holm", "bonferroni"] = "bh",
    level: float = 0.05,
    axis: int = -1,
) -> MultipleTestResult:
    """Correct a family of p-values and decide at ``level`` (see :func:`adjust_pvalues`)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    adj = adjust_pvalues(pvalues, method=method, axis=axis)
    if adj.shape[axis] == 0:
        raise InsufficientDataError(
            f"pvalues holds no tests along axis {axis} (shape {adj.shape}); the family to "
            "correct is empty"
        )
    reject = adj <= level
    frac = reject.mean(axis=axis)
    return MultipleTestResult(
        adj, reject, float(frac) if np.ndim(frac) == 0 else frac, method, level
    )
