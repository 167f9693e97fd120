"""Shared helpers of the alpha-stable, tail and Gaussianity modules: columns, chunks, checks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import DataError, InsufficientDataError
from ._common import as_float_array, pow2_exponents

# Process columns in blocks of about this many values (keeps float64 temporaries ~100 MB).
CHUNK_VALUES = 4_000_000


def as_columns(x: Any, axis: int, name: str = "x") -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` with ``axis`` moved first and the rest flattened: an (n, m) array, plus the shape of
    the per-column results. float32 input stays float32 (no full float64 copy). NaN/Inf raise
    :class:`DataError`; no samples (n = 0) raises :class:`InsufficientDataError`. Zero
    columns (m = 0, e.g. shape (n, 0)) are allowed: the statistics then return empty arrays."""
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        arr = as_float_array(arr, name)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension")
    try:
        arr = np.moveaxis(arr, axis, 0)
    except np.exceptions.AxisError as exc:
        raise ValueError(f"axis {axis} is out of range for {name} with shape {arr.shape}") from exc
    out_shape = arr.shape[1:]
    if arr.shape[0] == 0:
        raise InsufficientDataError(
            f"{name} is empty along axis {axis} (shape {np.shape(x)}): no samples to use; pass "
            f"the samples along axis={axis} (or name the axis that holds them)"
        )
    cols = arr.reshape(arr.shape[0], math.prod(out_shape))
    check_finite_chunked(cols, name)
    return cols, out_shape


def check_finite_chunked(cols: np.ndarray, name: str) -> None:
    """Raise :class:`DataError` naming how many values are NaN/Inf, in column blocks."""
    bad = 0
    for sl in column_chunks(cols):
        bad += int(cols[:, sl].size - np.count_nonzero(np.isfinite(cols[:, sl])))
    if bad:
        raise DataError(
            f"{name} contains {bad} NaN/Inf value(s); remove or impute them explicitly first"
        )


def column_maxabs(cols: np.ndarray) -> np.ndarray:
    """max |x| per column of an (n, m) array with n >= 1 (float64), in column blocks."""
    out = np.zeros(cols.shape[1])
    for sl in column_chunks(cols):
        out[sl] = np.maximum(cols[:, sl].max(axis=0), -cols[:, sl].min(axis=0))
    return out


def rescale_columns(cols: np.ndarray, *, common: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(cols * 2**-e, e)``: columns of extreme magnitude (see
    :func:`~gradnoise.stats._common.pow2_exponents`) rescaled exactly by a power of two, each by
    its own ``e`` (or all by one, ``common=True``, for statistics that mix columns). Returns
    ``cols`` itself and zeros when no column needs it (the usual case: no copy)."""
    mx = column_maxabs(cols)
    if common and mx.size:
        mx = np.full(mx.shape, mx.max())
    e = pow2_exponents(mx, cols.dtype)
    if not e.any():
        return cols, e
    return np.ldexp(cols, -e.astype(np.int32)[None, :]).astype(cols.dtype, copy=False), e


def column_chunks(cols: np.ndarray, values: int = CHUNK_VALUES) -> Iterator[slice]:
    """Slices over the columns of an (n, m) array, each holding about ``values`` values."""
    n, m = cols.shape
    step = max(1, values // max(n, 1))
    for c0 in range(0, m, step):
        yield slice(c0, min(c0 + step, m))


def restore(values: np.ndarray, out_shape: tuple[int, ...]) -> Any:
    """Per-column results back in the shape of the non-sample axes (a float for 1-D input)."""
    values = np.asarray(values).reshape(out_shape)
    if values.ndim == 0:
        return values.item()
    return values
