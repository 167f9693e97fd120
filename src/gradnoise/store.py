"""The gradient store: a chunked Zarr v3 group holding gradients recorded along training.

Layout of a store directory::

    zarr.json                 group metadata; attribute "gradnoise" holds the run metadata
    commit/zarr.json          attribute "commit": {"length": T, "snapshots": [...]}
    grads     [T, C] float    minibatch gradient of the selected coordinates at each recorded step
    table     [T, 2+S] f64    per row: step (strictly increasing), nonfinite flag (1 where the
                              gradient held NaN/Inf, only with on_nonfinite="flag"), then loss, lr
                              and user scalars (NaN where not given)
    snapshots/<kind>/step_<step>  [n, C]  per-sample gradients or SGN captured at one step

Crash safety: Zarr (>= 3.1.3, checked before writing) writes every chunk and metadata document atomically (temporary file, then
rename), rows are written before the commit record that counts them, and readers only trust the
commit record. A process killed at any point leaves a store that opens and holds every row
committed before the kill; rows written but not committed are ignored and overwritten on resume.

This module is torch-free: the torch side is :class:`gradnoise.Recorder`.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import StoreError
from .selection import ParamSelection

FORMAT = "gradnoise-run"
FORMAT_VERSION = 1
BASE_SCALARS = ("loss", "lr")
# Zarr 3.1.3 made LocalStore writes atomic (temporary file + rename); before it a kill during a
# chunk write could leave a truncated chunk. Keep in step with the zarr floor in pyproject.toml.
ZARR_FLOOR = (3, 1, 3)


def _zarr() -> Any:
    import zarr

    return zarr


def _zarr_for_writing() -> Any:
    """zarr, after checking that it writes atomically (see :data:`ZARR_FLOOR`)."""
    zarr = _zarr()
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", zarr.__version__)
    version = tuple(int(x or 0) for x in found.groups()) if found else (0, 0, 0)
    if version < ZARR_FLOOR:
        floor = ".".join(map(str, ZARR_FLOOR))
        raise StoreError(
            f"writing a gradient store needs zarr>={floor} (its atomic writes are what keep a "
            f"killed run's store readable), but zarr {zarr.__version__} is installed; upgrade "
            f"with: pip install 'zarr>={floor},<4'"
        )
    return zarr


def _chunk_shape(num_columns: int, chunk_rows: int | None) -> tuple[int, int]:
    cols = min(num_columns, 1 << 20)
    if chunk_rows is None:  # about 256 KiB per chunk, at most 64 rows
        chunk_rows = max(1, min(64, (1 << 16) // max(cols, 1)))
    return int(chunk_rows), int(cols)


class RunWriter:
    """Append-only writer of a gradient store (creates it, or resumes an existing one).

    Args:
        path: store directory.
        selection: which coordinates the columns hold.
        metadata: JSON-safe run metadata (config, seed, versions...), stored once at creation.
        scalars: names of extra per-step scalars, beyond ``loss`` and ``lr``.
        dtype: numpy dtype of stored gradients.
        chunk_rows: rows per chunk (default: about 256 KiB chunks).
    """

    def __init__(
        self,
        path: str | Path,
        selection: ParamSelection,
        *,
        metadata: Mapping[str, Any] | None = None,
        scalars: Sequence[str] = (),
        dtype: str = "float32",
        chunk_rows: int | None = None,
    ) -> None:
        zarr = _zarr_for_writing()
        self.path = Path(path)
        self.scalar_names = tuple(BASE_SCALARS) + tuple(s for s in scalars if s not in BASE_SCALARS)
        self.selection = selection
        if (self.path / "zarr.json").exists():
            self._resume()
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise StoreError(f"{self.path} exists and is not a gradnoise store; choose a new path")
        try:
            np_dtype = np.dtype(dtype)
        except TypeError as err:
            raise ValueError(
                f"the store cannot hold gradients of dtype {dtype!r}; use float16, float32 or "
                "float64"
            ) from err
        if np_dtype.kind != "f":
            raise ValueError(f"gradients are stored as floats, got dtype {np_dtype}")
        # Built in a sibling directory and renamed into place: a failure or a kill during
        # creation never leaves a half-made store at ``path`` (which could not be resumed).
        building = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        try:
            self._create(zarr, building, np_dtype, chunk_rows, metadata)
            os.replace(building, self.path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        self._resume()  # an empty committed store: one way to set up the writer's state

    def _create(
        self,
        zarr: Any,
        where: Path,
        dtype: np.dtype,
        chunk_rows: int | None,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        selection = self.selection
        group = zarr.open_group(str(where), mode="w")
        rows, cols = _chunk_shape(selection.num_columns, chunk_rows)
        group.create_array(
            "grads",
            shape=(0, selection.num_columns),
            chunks=(rows, cols),
            dtype=dtype,
            fill_value=np.nan,
        )
        width = 2 + len(self.scalar_names)
        group.create_array(
            "table", shape=(0, width), chunks=(256, width), dtype="float64", fill_value=np.nan
        )
        group.attrs["gradnoise"] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "selection": selection.to_dict(),
            "scalars": list(self.scalar_names),
            "versions": {
                "gradnoise": __version__,
                "numpy": np.__version__,
                "zarr": zarr.__version__,
                "python": platform.python_version(),
            },
            **dict(metadata or {}),
        }
        group.create_group("commit").attrs["commit"] = {"length": 0, "snapshots": []}

    def _resume(self) -> None:
        run = open_run(self.path)
        self.group = _zarr().open_group(str(self.path), mode="r+")
        if run.selection.to_dict() != self.selection.to_dict():
            raise StoreError(
                f"{self.path} records a different parameter selection ({run.selection!r}); "
                f"cannot resume with {self.selection!r}"
            )
        stored = tuple(run.metadata["scalars"])
        extra = set(self.scalar_names) - set(stored)
        if extra:
            raise StoreError(f"{self.path} records scalars {stored}; cannot add {sorted(extra)}")
        self.scalar_names = stored
        self._commit_group = self.group["commit"]
        self.length = run.length
        self.last_step: int | None = int(run.steps[-1]) if run.length else None
        self.snapshots: list[dict[str, Any]] = run.snapshot_index()

    def _commit(self) -> None:
        self._commit_group.attrs["commit"] = {"length": self.length, "snapshots": self.snapshots}

    def update_metadata(self, **entries: Any) -> None:
        """Add or replace top-level metadata entries (e.g. a final summary)."""
        reserved = {"format", "format_version", "selection", "scalars"}
        if reserved & set(entries):
            raise ValueError(f"metadata keys {sorted(reserved & set(entries))} are reserved")
        self.group.attrs["gradnoise"] = {**dict(self.group.attrs["gradnoise"]), **entries}

    @cached_property
    def _grads(self) -> Any:
        return self.group["grads"]

    @cached_property
    def _table(self) -> Any:
        return self.group["table"]

    def append(
        self,
        step: int,
        grad: np.ndarray,
        scalars: Mapping[str, float | None] | None = None,
        nonfinite: bool = False,
    ) -> None:
        """Append one row (the gradient at ``step``) and commit it."""
        step = int(step)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(
                f"steps must increase: step {step} after step {self.last_step} in {self.path}"
            )
        grad = np.asarray(grad)
        nonfinite = bool(nonfinite) or not bool(np.isfinite(grad).all())
        if grad.shape != (self.selection.num_columns,):
            raise ValueError(
                f"gradient row must have shape ({self.selection.num_columns},), got {grad.shape}"
            )
        given = dict(scalars or {})
        unknown = set(given) - set(self.scalar_names)
        if unknown:
            raise ValueError(
                f"unknown scalar(s) {sorted(unknown)}; this store records {self.scalar_names}"
            )
        values = [
            np.nan if given.get(s) is None else float(given[s])  # type: ignore[arg-type]
            for s in self.scalar_names
        ]
        t = self.length
        if self._table.shape[0] <= t:
            capacity = max(2 * t, t + self._grads.chunks[0], 8)
            self._grads.resize((capacity, self._grads.shape[1]))
            self._table.resize((capacity, self._table.shape[1]))
        self._grads[t] = grad
        self._table[t] = np.array([step, float(nonfinite), *values])
        self.length = t + 1
        self.last_step = step
        self._commit()

    def add_snapshot(
        self, kind: str, step: int, values: np.ndarray, attrs: Mapping[str, Any] | None = None
    ) -> str:
        """Store an ``[n, C]`` array captured at ``step`` (e.g. ``kind="per_sample"``) and commit it."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.selection.num_columns:
            raise ValueError(
                f"snapshot must be [n, {self.selection.num_columns}], got {values.shape}"
            )
        if not kind.isidentifier():
            raise ValueError(f"snapshot kind must be an identifier, got {kind!r}")
        name = f"snapshots/{kind}/step_{int(step):09d}"
        if any(s["name"] == name for s in self.snapshots):
            raise ValueError(f"{self.path} already holds a {kind} snapshot at step {step}")
        rows, cols = _chunk_shape(values.shape[1], None)
        arr = self.group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(max(1, min(values.shape[0], rows * 4)), cols),
            overwrite=True,
        )
        arr[...] = values
        self.snapshots.append(
            {
                "kind": kind,
                "step": int(step),
                "name": name,
                "shape": list(values.shape),
                **dict(attrs or {}),
            }
        )
        self._commit()
        return name


@dataclass(frozen=True, eq=False)
class Run:
    """A gradient store opened for reading (see :func:`open_run`); arrays are numpy, read lazily.

    Attributes:
        path: store directory.
        metadata: run metadata (config, seed, versions, selection, scalar names...).
        selection: the :class:`ParamSelection` the columns follow.
        length: number of committed rows T.
    """

    path: Path
    metadata: dict[str, Any]
    selection: ParamSelection
    length: int
    commit: dict[str, Any] = field(repr=False)
    _group: Any = field(repr=False)

    @cached_property
    def grads(self) -> np.ndarray:
        """``[T, C]`` recorded minibatch gradients."""
        return self._checked_rows(self._read("grads", lambda a: a[: self.length]))

    @cached_property
    def _table(self) -> np.ndarray:
        table = self._read("table", lambda a: a[: self.length])
        if np.isnan(table[:, 0]).any():
            raise StoreError(
                f"{self.path} is corrupt: steps of rows "
                f"{np.flatnonzero(np.isnan(table[:, 0]))[:10].tolist()} are missing "
                "(a chunk file of 'table' was deleted or never written)"
            )
        return table

    def _read(self, name: str, take: Any) -> np.ndarray:
        """Read (part of) array ``name``; unreadable chunks raise a StoreError naming the store."""
        try:
            return np.asarray(take(self._group[name]))
        except Exception as err:  # zarr/codecs raise assorted types on corrupt chunk files
            raise StoreError(
                f"{self.path} is corrupt: cannot read {name!r} ({type(err).__name__}: {err})"
            ) from err

    def _checked_rows(self, values: np.ndarray) -> np.ndarray:
        """Rows with NaN that were not recorded as non-finite come from missing chunk files."""
        lost = np.isnan(values).any(axis=1) & ~self.nonfinite
        if lost.any():
            raise StoreError(
                f"{self.path} is corrupt: gradient rows {np.flatnonzero(lost)[:10].tolist()} "
                f"(steps {self.steps[lost][:10].tolist()}) read back as missing values though "
                "they were recorded finite (a chunk file of 'grads' was deleted)"
            )
        return values

    @property
    def steps(self) -> np.ndarray:
        """``[T]`` training steps of the rows."""
        return self._table[:, 0].astype(np.int64)

    @property
    def nonfinite(self) -> np.ndarray:
        """``[T]`` flags of rows whose gradient held NaN/Inf."""
        return self._table[:, 1] != 0

    @property
    def scalars(self) -> dict[str, np.ndarray]:
        """Per-step scalars by name (``loss``, ``lr``, ...), each ``[T]``."""
        return {name: self._table[:, 2 + k] for k, name in enumerate(self.metadata["scalars"])}

    def read_grads(self, columns: slice | np.ndarray | None = None) -> np.ndarray:
        """Read only some columns of :attr:`grads` (all rows)."""
        if columns is None:
            return self.grads
        return self._checked_rows(self._read("grads", lambda a: a.oindex[: self.length, columns]))

    def snapshot_index(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Committed snapshots (``kind``, ``step``, ``name``, ``shape``, extra attrs)."""
        return [dict(s) for s in self.commit["snapshots"] if kind is None or s["kind"] == kind]

    def snapshots(self, kind: str) -> dict[int, np.ndarray]:
        """All committed snapshots of one kind, by step, e.g. ``run.snapshots("noise")``."""
        return {
            s["step"]: self._read(s["name"], lambda a: a[...]) for s in self.snapshot_index(kind)
        }

    @property
    def per_sample(self) -> dict[int, np.ndarray]:
        """Per-sample gradient snapshots ``{step: [n, C]}``."""
        return self.snapshots("per_sample")

    @property
    def noise(self) -> dict[int, np.ndarray]:
        """SGN snapshots ``{step: [K, C]}`` (minibatch minus full gradient at fixed parameters)."""
        return self.snapshots("noise")

    def __repr__(self) -> str:
        kinds = sorted({s["kind"] for s in self.snapshot_index()})
        return (
            f"Run({str(self.path)!r}, steps={self.length}, "
            f"columns={self.selection.num_columns}, snapshots={kinds})"
        )


def open_run(path: str | Path) -> Run:
    """Open a gradient store written by :class:`gradnoise.Recorder` (or :class:`RunWriter`).

    ``path`` may also be a study's run directory (its ``grads.zarr`` is opened).

    Raises:
        StoreError: the path is missing, not a gradnoise store, or corrupt (the message says what).
    """
    zarr = _zarr()
    path = Path(path)
    if (path / "grads.zarr" / "zarr.json").exists():
        path = path / "grads.zarr"
    if not (path / "zarr.json").exists():
        raise StoreError(
            f"{path} is not a gradient store (no zarr.json); was it written by gradnoise?"
        )
    try:
        group = zarr.open_group(str(path), mode="r")
        meta = dict(group.attrs["gradnoise"])
    except Exception as err:  # zarr raises assorted types on unreadable metadata
        raise StoreError(
            f"{path}: cannot read the store metadata ({type(err).__name__}: {err})"
        ) from err
    if meta.get("format") != FORMAT:
        raise StoreError(f"{path} is a Zarr group but not a gradnoise run store")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise StoreError(
            f"{path} was written by a newer gradnoise (format {meta['format_version']})"
        )
    try:
        commit = dict(group["commit"].attrs["commit"])
        length = int(commit["length"])
        selection = ParamSelection.from_dict(meta["selection"])
        grads, table = group["grads"], group["table"]
        problems = []
        if grads.shape[0] < length or table.shape[0] < length:
            problems.append(f"arrays hold fewer rows than the {length} committed")
        if grads.shape[1] != selection.num_columns:
            problems.append(
                f"grads has {grads.shape[1]} columns, the selection {selection.num_columns}"
            )
        if table.shape[1] != 2 + len(meta["scalars"]):
            problems.append(f"table has {table.shape[1]} columns for scalars {meta['scalars']}")
        for snap in commit["snapshots"]:
            if list(group[snap["name"]].shape) != list(snap["shape"]):
                problems.append(f"{snap['name']} does not have its committed shape {snap['shape']}")
    except Exception as err:
        raise StoreError(f"{path} is corrupt ({type(err).__name__}: {err})") from err
    if problems:
        raise StoreError(f"{path} is corrupt: {'; '.join(problems)}")
    return Run(
        path=path, metadata=meta, selection=selection, length=length, commit=commit, _group=group
    )
