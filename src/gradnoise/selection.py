"""Which gradient coordinates are captured, and how columns map back to parameters.

A :class:`ParamSelection` is torch-free: it is stored with every gradient array (see
:mod:`gradnoise.store`) so that a column of a recorded ``[T, C]`` array can always be traced back
to ``(parameter name, index)``. Build one from a model with :func:`gradnoise.select_params`.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def as_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, refusing what would otherwise be truncated or misread.

    Python and numpy integers (and 0-d integer tensors) pass; floats such as ``2.5`` or ``2.0``,
    bools and strings raise :class:`TypeError`; values outside ``[minimum, maximum]`` raise
    :class:`ValueError`. Both messages name the argument.
    """
    try:
        if isinstance(value, bool):  # True is an int to Python, never a count or a step here
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__}); it is not "
            "rounded or truncated for you"
        ) from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {number}")
    return number


@dataclass(frozen=True, eq=False)
class ParamSelection:
    """Selected coordinates of a model's parameters, in ``named_parameters()`` order.

    Attributes:
        names: selected parameter names, in ``named_parameters()`` order.
        shapes: the full shape of each selected parameter.
        indices: per parameter, the sorted flat (row-major) indices that are selected, or ``None``
            when every coordinate of that parameter is selected.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    indices: tuple[np.ndarray | None, ...]
    _offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.shapes) == len(self.indices)):
            raise ValueError("names, shapes and indices must have the same length")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate parameter names in selection: {self.names}")
        widths = []
        for name, shape, idx in zip(self.names, self.shapes, self.indices, strict=True):
            numel = int(np.prod(shape, dtype=np.int64))
            if idx is None:
                widths.append(numel)
                continue
            if idx.ndim != 1 or idx.size == 0:
                raise ValueError(f"indices of {name!r} must be a non-empty 1-D array")
            if idx.min() < 0 or idx.max() >= numel or np.any(np.diff(idx) <= 0):
                raise ValueError(
                    f"indices of {name!r} must be sorted, unique and within [0, {numel})"
                )
            widths.append(int(idx.size))
        offsets = np.concatenate([[0], np.cumsum(widths, dtype=np.int64)])
        object.__setattr__(self, "_offsets", offsets)

    @property
    def num_columns(self) -> int:
        """Number of selected coordinates C (the width of captured gradient arrays)."""
        return int(self._offsets[-1])

    @property
    def offsets(self) -> np.ndarray:
        """Column offsets, length ``len(names) + 1``: parameter k owns ``offsets[k]:offsets[k+1]``."""
        return self._offsets.copy()

    def numel(self, k: int) -> int:
        """Number of coordinates of the full k-th parameter."""
        return int(np.prod(self.shapes[k], dtype=np.int64))

    def columns_of(self, name: str) -> slice:
        """The columns that hold parameter ``name``."""
        k = self.names.index(name)
        return slice(int(self._offsets[k]), int(self._offsets[k + 1]))

    def flat_indices(self, k: int) -> np.ndarray:
        """Flat indices within parameter k of its selected columns."""
        idx = self.indices[k]
        return np.arange(self.numel(k)) if idx is None else idx

    def locate(self, columns: int | Iterable[int]) -> list[tuple[str, tuple[int, ...]]]:
        """Map columns back to ``(parameter name, multi-index)``.

        Example:
            >>> sel = ParamSelection(("w", "b"), ((2, 3), (2,)), (None, np.array([1])))
            >>> sel.locate([0, 5, 6])
            [('w', (0, 0)), ('w', (1, 2)), ('b', (1,))]
        """
        cols = np.atleast_1d(np.asarray(columns, dtype=np.int64))
        if cols.size and (cols.min() < 0 or cols.max() >= self.num_columns):
            raise IndexError(f"column out of range [0, {self.num_columns})")
        owner = np.searchsorted(self._offsets, cols, side="right") - 1
        result = []
        for col, k in zip(cols.tolist(), owner.tolist(), strict=True):
            local = col - int(self._offsets[k])
            idx = self.indices[k]
            flat = local if idx is None else int(idx[local])
            multi = tuple(int(i) for i in np.unravel_index(flat, self.shapes[k]))
            result.append((self.names[k], multi))
        return result

    def column_labels(self) -> list[str]:
        """Human-readable label per column, e.g. ``'fc1.weight[3, 7]'``."""
        return [f"{n}[{', '.join(map(str, i))}]" for n, i in self.locate(range(self.num_columns))]

    def layer_of_columns(self) -> np.ndarray:
        """Index into :attr:`names` of the parameter that owns each column, shape ``[C]``."""
        return np.repeat(np.arange(len(self.names)), np.diff(self._offsets))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation (inverse of :meth:`from_dict`)."""
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "indices": [None if i is None else i.tolist() for i in self.indices],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParamSelection:
        """Rebuild a selection written by :meth:`to_dict`."""
        return cls(
            names=tuple(d["names"]),
            shapes=tuple(tuple(int(x) for x in s) for s in d["shapes"]),
            indices=tuple(
                None if i is None else np.asarray(i, dtype=np.int64) for i in d["indices"]
            ),
        )

    def __repr__(self) -> str:
        parts = []
        for k, name in enumerate(self.names):
            width = int(self._offsets[k + 1] - self._offsets[k])
            parts.append(f"{name}{list(self.shapes[k])}:{width}")
        shown = ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "")
        return f"ParamSelection(C={self.num_columns}, {shown})"


def build_selection(
    named_shapes: Sequence[tuple[str, tuple[int, ...]]],
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    coords: int | None = None,
    seed: int = 0,
) -> ParamSelection:
    """Select parameters by name globs, then optionally a seeded random subset of coordinates.

    Args:
        named_shapes: ``(name, shape)`` pairs in ``named_parameters()`` order.
        include: glob(s) matched against names (``fnmatch``); ``None`` selects all.
        exclude: glob(s) removed after ``include``.
        coords: if given, keep this many coordinates (an integer; ``2.5`` is refused, not
            truncated) drawn uniformly without replacement from the included parameters
            (``numpy.random.default_rng(seed)``).
        seed: seed of the coordinate draw (an integer >= 0).
    """
    inc = [include] if isinstance(include, str) else include
    exc = [exclude] if isinstance(exclude, str) else (exclude or [])
    chosen = [
        (n, tuple(int(x) for x in s))
        for n, s in named_shapes
        if (inc is None or any(fnmatch.fnmatchcase(n, g) for g in inc))
        and not any(fnmatch.fnmatchcase(n, g) for g in exc)
    ]
    if not chosen:
        available = ", ".join(n for n, _ in named_shapes) or "(none)"
        raise ValueError(
            f"no parameter matches include={include!r} exclude={exclude!r}; available: {available}"
        )
    names = tuple(n for n, _ in chosen)
    shapes = tuple(s for _, s in chosen)
    if coords is None:
        return ParamSelection(names, shapes, tuple(None for _ in names))
    sizes = np.array([int(np.prod(s, dtype=np.int64)) for s in shapes], dtype=np.int64)
    total = int(sizes.sum())
    coords = as_int("coords", coords)
    seed = as_int("seed", seed, minimum=0)
    if not 0 < coords <= total:
        raise ValueError(
            f"coords must be in [1, {total}] (the selected parameters' size), got {coords}"
        )
    flat = np.sort(np.random.default_rng(seed).choice(total, size=coords, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    keep_names, keep_shapes, keep_idx = [], [], []
    for k in range(len(names)):
        lo, hi = np.searchsorted(flat, [starts[k], starts[k + 1]])
        if hi > lo:
            keep_names.append(names[k])
            keep_shapes.append(shapes[k])
            local = flat[lo:hi] - starts[k]
            keep_idx.append(None if local.size == sizes[k] else local)
    return ParamSelection(tuple(keep_names), tuple(keep_shapes), tuple(keep_idx))
