"""Conventions shared by all statistics: results, random generators, input checks.

Every public statistic returns a frozen dataclass deriving from :class:`StatResult`: named fields
(``statistic``, ``pvalue``, ``alpha``...), a readable repr that summarises array fields, and a
JSON-safe :meth:`StatResult.to_dict`. Random functions take ``rng`` (None, an int seed or a
``numpy.random.Generator``) normalised by :func:`as_generator`; the same seed gives the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import DataError, InsufficientDataError

RNGLike = np.random.Generator | int | None


def as_generator(rng: RNGLike) -> np.random.Generator:
    """``numpy.random.default_rng(rng)``, rejecting the legacy global-state ``RandomState``."""
    if isinstance(rng, np.random.RandomState):
        raise TypeError("pass a numpy.random.Generator or an int seed, not a RandomState")
    return np.random.default_rng(rng)


def _summarise(value: Any) -> str:
    if isinstance(value, np.ndarray) and value.size > 6:
        with np.errstate(all="ignore"):
            finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
        if finite.size and value.dtype.kind in "fiu":
            return (
                f"array(shape={value.shape}, median={np.median(finite):.4g}, "
                f"min={finite.min():.4g}, max={finite.max():.4g})"
            )
        return f"array(shape={value.shape}, dtype={value.dtype})"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return repr(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, StatResult):
        return value.to_dict()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, repr=False)
class StatResult:
    """Base of result dataclasses: readable repr and JSON-safe ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """Fields as JSON-safe Python values (arrays become lists)."""
        return {
            f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.repr
        }

    def __repr__(self) -> str:
        body = ", ".join(
            f"{f.name}={_summarise(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        return f"{type(self).__name__}({body})"


def as_float_array(x: Any, name: str = "x") -> np.ndarray:
    """``x`` as a float64 array; torch tensors and lists are accepted, object arrays are not."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def check_finite(x: np.ndarray, name: str = "x") -> None:
    """Raise :class:`DataError` (a ``ValueError``) naming how many values are NaN/Inf
    (never drop them silently)."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(
            f"{name} contains {int(bad.sum())} NaN/Inf value(s); remove or impute "
            "them explicitly before testing"
        )


def check_min_size(n: int, needed: int, what: str) -> None:
    """Raise :class:`InsufficientDataError` when fewer than ``needed`` samples are available."""
    if n < needed:
        raise InsufficientDataError(f"{what} needs at least {needed} samples, got {n}")


# Magnitudes inside [2**-L, 2**L] are left alone by pow2_exponents; outside, squares or sums of
# a few thousand values could overflow or lose precision to subnormals (float32: 2**+-127).
_POW2_LIMIT = {np.dtype(np.float64): 200, np.dtype(np.float32): 40}


def pow2_exponents(maxabs: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """Exponents ``e`` (int64) that bring ``maxabs`` into ``[1/2, 1)`` by ``x * 2**-e``, where
    ``maxabs`` lies outside ``[2**-L, 2**L]`` (L = 200 for float64, 40 for float32); 0 elsewhere
    and where ``maxabs`` is 0.

    Scaling by a power of two is exact in binary floating point (short of underflow below the
    smallest normal number), so a statistic computed on the rescaled values and scaled back is
    the statistic of the original values; ordinary magnitudes are left untouched, so their
    results do not change by a single bit.
    """
    limit = _POW2_LIMIT.get(np.dtype(dtype), 200)
    mx = np.asarray(maxabs, dtype=np.float64)
    _, e = np.frexp(mx)
    outside = (mx > 2.0**limit) | ((mx < 2.0**-limit) & (mx > 0))
    return np.where(outside, e, 0).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ColumnSeeds:
    """The generators of ``as_generator(rng).spawn(count)``, one per column, as a small picklable
    recipe: column ``j`` gets child ``first + j`` of the seed sequence, whichever block of columns
    it is computed in, so a statistic computed block by block (on a Dask cluster) draws exactly
    the numbers of the whole batch at once. Pass it as ``rng`` where a statistic spawns one
    generator per column."""

    entropy: Any
    spawn_key: tuple[int, ...]
    pool_size: int
    first: int
    count: int
    bit_generator: type

    def block(self, start: int, stop: int) -> ColumnSeeds:
        """The recipe of columns ``start:stop``."""
        if not 0 <= start <= stop <= self.count:
            raise ValueError(f"columns {start}:{stop} outside 0:{self.count}")
        return dataclasses.replace(self, first=self.first + start, count=stop - start)

    def generators(self) -> list[np.random.Generator]:
        """The children, equal to ``as_generator(rng).spawn(count)`` (numpy's own recipe)."""
        return [
            np.random.Generator(
                self.bit_generator(
                    np.random.SeedSequence(
                        self.entropy, spawn_key=(*self.spawn_key, i), pool_size=self.pool_size
                    )
                )
            )
            for i in range(self.first, self.first + self.count)
        ]


def column_seeds(rng: RNGLike | ColumnSeeds, count: int) -> ColumnSeeds:
    """The recipe of ``as_generator(rng).spawn(count)``; a Generator passed in is advanced as
    ``spawn`` would (its next ``spawn`` gives the children after these)."""
    if isinstance(rng, ColumnSeeds):
        if rng.count != count:
            raise ValueError(f"ColumnSeeds for {rng.count} columns given for {count} columns")
        return rng
    gen = as_generator(rng)
    seq = gen.bit_generator.seed_seq
    if not isinstance(seq, np.random.SeedSequence):
        raise TypeError("rng must be seeded by a numpy SeedSequence to spawn per-column streams")
    recipe = ColumnSeeds(
        entropy=seq.entropy,
        spawn_key=tuple(seq.spawn_key),
        pool_size=seq.pool_size,
        first=seq.n_children_spawned,
        count=int(count),
        bit_generator=type(gen.bit_generator),
    )
    if rng is gen:  # the caller's Generator: move its spawn counter on, as gen.spawn(count) does
        seq.spawn(count)
    return recipe


def column_generators(rng: RNGLike | ColumnSeeds, count: int) -> list[np.random.Generator]:
    """``as_generator(rng).spawn(count)``, or the generators of a :class:`ColumnSeeds` block."""
    if isinstance(rng, ColumnSeeds):
        return column_seeds(rng, count).generators()
    return list(as_generator(rng).spawn(count))
