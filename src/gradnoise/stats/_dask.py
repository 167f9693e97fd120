"""Batched statistics on dask arrays: one generic dispatch, blockwise over column blocks.

A statistic of one column depends on that column alone (and on the column's own random stream,
see :class:`~gradnoise.stats._common.ColumnSeeds`), so a batch of columns can be cut into blocks
of whole columns, each block handed to the in-memory function on a worker, and the per-column
fields of the results concatenated: the result equals the in-memory one exactly. Fields that mix
columns (a multiple-testing correction, a fraction over columns) are recomputed by the caller on
the concatenated per-column fields, with the same numpy code as in memory.

dask is optional: nothing here imports it until a dask array is passed (and a dask array cannot
exist without it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from ._common import StatResult, column_seeds

__all__ = ["is_dask_array", "map_columns"]


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a dask array (checked without importing dask)."""
    return type(x).__module__.startswith("dask.array") and hasattr(x, "map_blocks")


def map_columns(
    func: Callable[..., Any],
    x: Any,
    axis: int,
    options: Mapping[str, Any],
    *,
    per_column: Collection[str] = (),
    seeded: bool = False,
    mixed: Collection[str] = (),
    name: str = "x",
) -> Any:
    """``func(x, axis=axis, **options)`` for a 2-D dask array ``x``, computed blockwise.

    ``x`` is rechunked so that every column is whole along ``axis``, in column blocks of about
    dask's ``array.chunk-size`` (an array already whole along ``axis`` in blocks within that size
    keeps its blocks), and
    ``func`` runs on each block (``map_blocks``) on whatever scheduler is active (a
    ``distributed.Client`` when one is). Per-column fields of the block results (arrays whose
    first axis runs over the block's columns, also inside nested results and dicts) are
    concatenated; settings must agree between blocks.

    Args:
        per_column: options that may hold one value per column (sliced for each block when they
            are arrays of one value per column; scalars pass unchanged).
        seeded: ``options["rng"]`` is split per column (:func:`column_seeds`, the recipe of
            ``as_generator(rng).spawn(C)``) and each block gets its columns' streams.
        mixed: fields that mix columns (left as the first block's value: the caller recomputes
            them from the concatenated per-column fields).
    """
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.utils import parse_bytes

    if x.ndim != 2:
        raise ValueError(
            f"a dask array must be 2-D (samples along axis, one column per statistic), got "
            f"{name} of shape {x.shape}"
        )
    if axis is None or axis not in (0, 1, -1, -2):
        raise ValueError(f"axis {axis} is out of range for a 2-D {name}")
    cols = da.moveaxis(x, axis, 0) if axis in (1, -1) else x
    if not np.issubdtype(cols.dtype, np.number) and cols.dtype != np.bool_:
        raise TypeError(f"{name} must be numeric, got dtype {cols.dtype}")
    limit = parse_bytes(dask.config.get("array.chunk-size"))
    widest = cols.shape[0] * max(cols.chunks[1], default=0) * cols.dtype.itemsize
    if cols.numblocks[0] > 1 or widest > limit:  # e.g. a store's rows: one chunk, every column
        cols = cols.rechunk({0: -1, 1: "auto"})
    fname = f"{func.__module__}.{func.__qualname__}"
    widths = _no_single_columns(cols.chunks[1])
    if widths != cols.chunks[1]:
        cols = cols.rechunk({1: widths})
    m = cols.shape[1]
    opts = dict(options)
    seeds = column_seeds(opts.pop("rng", None), m) if seeded else None
    sliced = {k: opts.pop(k) for k in per_column if k in opts}

    def column_slice(value: Any, c0: int, c1: int) -> Any:
        if isinstance(value, tuple):  # (low, high) pairs, each a scalar or per column
            return tuple(column_slice(v, c0, c1) for v in value)
        arr = np.asarray(value) if value is not None else None
        if arr is None or arr.ndim == 0:
            return value
        if arr.shape[-1] != m:
            raise ValueError(
                f"a per-column option must be a scalar or hold one value per column ({m}), got "
                f"shape {arr.shape}"
            )
        return arr[..., c0:c1]

    def block_stat(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        c0, c1 = block_info[0]["array-location"][1]
        kw = {k: column_slice(v, c0, c1) for k, v in sliced.items()}
        if seeds is not None:
            kw["rng"] = seeds.block(c0, c1)
        out = np.empty((1, 1), dtype=object)
        try:
            out[0, 0] = func(np.asarray(block), axis=0, **opts, **kw)
        except (ValueError, TypeError, ArithmeticError) as err:
            # the message counts columns within the block: say where the block starts
            if len(err.args) != 1 or not isinstance(err.args[0], str):
                raise
            where = (
                f" [in the block of columns {c0}:{c1} of the dask array: add {c0} to column "
                "numbers above]"
            )
            raise type(err)(err.args[0] + where) from err
        return out

    parts = cols.map_blocks(
        block_stat,
        chunks=((1,), (1,) * len(widths)),
        dtype=object,
        meta=np.empty((0, 0), dtype=object),
        # unique per call: a key shared by two calls would hand one call the other's results
        name=f"gradnoise-{fname}-{tokenize(cols.name, fname, opts, sliced, seeds)}",
    ).compute()[0]
    return merge_columns(list(parts), list(widths), mixed=mixed)


def _no_single_columns(widths: tuple[int, ...]) -> tuple[int, ...]:
    """Column block widths with blocks of one column merged into a neighbour: numpy reduces an
    ``(n, 1)`` block along its contiguous axis (pairwise summation) but a column of a wider block
    row by row, so a lone column could round differently from the same column in memory."""
    out: list[int] = []
    for w in widths:
        if out and (w == 1 or out[-1] == 1):
            out[-1] += w
        else:
            out.append(w)
    return tuple(out)


def merge_columns(parts: list[Any], widths: list[int], *, mixed: Collection[str] = ()) -> Any:
    """Concatenate the per-column fields of block results (see :func:`map_columns`)."""
    first = parts[0]
    if isinstance(first, StatResult):
        fields = {}
        for f in dataclasses.fields(first):
            values = [getattr(p, f.name) for p in parts]
            if f.name in mixed:
                fields[f.name] = values[0]
            else:
                fields[f.name] = _merge(values, widths, f"{type(first).__name__}.{f.name}")
        return type(first)(**fields)
    return _merge(parts, widths, "result")


def _merge(values: list[Any], widths: list[int], what: str) -> Any:
    first = values[0]
    if isinstance(first, StatResult):
        return merge_columns(values, widths)
    if isinstance(first, dict):
        return {k: _merge([v[k] for v in values], widths, f"{what}[{k!r}]") for k in first}
    if isinstance(first, np.ndarray) and first.ndim >= 1:
        if all(v.shape[:1] == (w,) for v, w in zip(values, widths, strict=True)):
            return np.concatenate(values, axis=0)
    if len(values) > 1 and any(not _same(first, v) for v in values[1:]):
        raise AssertionError(f"{what} differs between column blocks: not a per-column field")
    return first


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        numeric = a.dtype.kind in "fc" and b.dtype.kind in "fc"
        return bool(np.array_equal(a, b, equal_nan=numeric))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)
