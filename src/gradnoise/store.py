"""The gradient store: a chunked Zarr v3 group holding gradients recorded along training.

Layout of a store directory::

    zarr.json                 group metadata; attribute "gradnoise" holds the run metadata
    commit/zarr.json          attribute "commit": {"length": T, "snapshots": [...]}
    grads     [T, C] float    minibatch gradient of the selected coordinates at each recorded step
    table     [T, 2+S] f64    per row: step (strictly increasing), nonfinite flag (1 where the
                              gradient held NaN/Inf, only with on_nonfinite="flag"), then loss, lr
                              and user scalars (NaN where not given)
    snapshots/<kind>/step_<step>  [n, C]  per-sample gradients or SGN captured at one step

A run merged from many writers (:func:`consolidate_runs`) is a group holding only its metadata
(attribute "gradnoise" with "merged": {"axis": "columns", "parts": [...]}); the parts are stores
of this layout, e.g. ``parts/rank0``, each written by its own writer with its own lock, read side
by side.

    writer.lock               present while a writer holds the store (see "One writer" below)

Crash safety: Zarr (>= 3.1.3, checked before writing) writes every chunk and metadata document
atomically (a ``<name>.<uuid>.partial`` temporary file, then rename), rows are written before the
commit record that counts them, and readers only trust the commit record. A process killed at any
point leaves a store that opens and holds every row committed before the kill; rows written but
not committed are ignored and overwritten on resume. A write that fails (disk full, read-only file
system) raises :class:`StoreError` naming the store and the problem, and leaves every committed row
readable.

One writer: a writer holds an exclusive ``flock`` on ``writer.lock``, which names its pid, host and
start time; a second writer (another process, or a second writer object in the same process) gets
:class:`StoreLockedError` naming the owner. Readers (:func:`open_run`) never look at the lock. The
lock file is removed on ``close()``, when the writer is garbage-collected and at interpreter exit;
the kernel drops the ``flock`` when a writer dies (even by SIGKILL), so the next writer on the same
host takes the left-over file over with a :class:`StaleLockWarning`. A lock written on another host
is never guessed stale: the error says which file to delete once that writer is known to be gone.
On file systems without ``flock`` (e.g. Lustre mounted without ``-o flock``) the lock falls back to
the owner's pid and host only. Opening a writer also removes what killed writers left behind:
``.partial`` files inside the store (the lock guarantees their writer is gone) and the
``.<name>.creating-<pid>@<host>`` build directories of dead creators next to it.

This module is torch-free: the torch side is :class:`gradnoise.Recorder`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import gc
import json
import os
import platform
import re
import shutil
import socket
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import StaleLockWarning, StoreError, StoreLockedError
from .selection import ParamSelection, as_int

FORMAT = "gradnoise-run"
FORMAT_VERSION = 1
BASE_SCALARS = ("loss", "lr")
LOCK_NAME = "writer.lock"
# Zarr 3.1.3 made LocalStore writes atomic (temporary file + rename); before it a kill during a
# chunk write could leave a truncated chunk. Keep in step with the zarr floor in pyproject.toml.
ZARR_FLOOR = (3, 1, 3)
# The table stores steps as float64, which holds every integer exactly only up to 2**53.
MAX_STEP = 2**53
# zarr's temporary files (<name>.<uuid4 hex>.partial) and the build directories of new stores
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")
_CREATING = re.compile(r"\.creating-(\d+)(?:@(.+))?$")


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


_PROBLEMS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (the store is read-only for this user)",
    errno.EPERM: "permission denied (the store is read-only for this user)",
}


def _problem(err: OSError) -> str:
    """A short description of why a file operation failed, without internal file names."""
    return _PROBLEMS.get(err.errno or 0, err.strerror or type(err).__name__)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, killed but not reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[:1] not in (["Z"], ["X"])
    except OSError:  # no /proc (macOS...): os.kill's answer stands
        return True


def _host() -> str:
    return socket.gethostname()


def _describe(owner: Mapping[str, Any] | None) -> str:
    if owner is None:
        return "another writer (whose pid and host are not written yet)"
    return f"pid {owner['pid']} on host {owner['host']} (since {owner['started']})"


class _WriterLock:
    """An exclusive writer lock on a store directory: ``flock`` on ``writer.lock`` + owner JSON."""

    def __init__(self, file: Path, fd: int, flocked: bool) -> None:
        self.file, self.fd, self.flocked = file, fd, flocked
        self.pid = os.getpid()  # a forked child (a DataLoader worker...) shares it, never owns it

    @classmethod
    def acquire(cls, directory: Path, store: Path) -> _WriterLock:
        """Lock ``directory`` (``store`` is the path named in messages) or raise/warn as documented
        in the module docstring."""
        file = directory / LOCK_NAME
        for _ in range(50):  # a retry only when a releasing writer unlinked the file under us
            try:
                fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise StoreError(
                    f"cannot open the gradient store {store} for writing: {_problem(err)}; "
                    "gradnoise.open_run can still read it"
                ) from err
            try:
                lock = cls._take(file, fd, store)
            except BaseException:
                os.close(fd)
                raise
            if lock is not None:
                return lock
            os.close(fd)
        raise StoreLockedError(f"{store}: {file} keeps being replaced by other writers; retry")

    @classmethod
    def _take(cls, file: Path, fd: int, store: Path) -> _WriterLock | None:
        import fcntl

        def flock() -> bool | None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError:  # ENOSYS, ENOLCK, EOPNOTSUPP...: this file system has no flock
                return None

        state = flock()
        if state is False and cls._mine(cls._read(fd)):
            gc.collect()  # a writer of this process that is garbage, not yet collected, lets go
            state = flock()
        if state is False:
            raise StoreLockedError(cls._held_message(store, file, fd))
        flocked = bool(state)
        if flocked and not cls._still_at(fd, file):
            return None  # the previous owner unlinked it on release: lock the new file
        owner = cls._read(fd)
        here = owner is not None and owner["host"] == _host()
        if owner is not None and not here:
            raise StoreLockedError(
                f"{store} holds a writer lock of {_describe(owner)}; from host {_host()} gradnoise "
                "cannot tell whether that process still runs. If no gradnoise process writes this "
                f"store any more, delete {file} and retry"
            )
        if owner is not None and here and not flocked and _pid_alive(owner["pid"]):
            raise StoreLockedError(cls._busy_message(store, owner))
        if owner is not None:
            warnings.warn(
                f"{store}: took over the writer lock left by {_describe(owner)}, which is no "
                "longer running (killed or crashed); the rows it committed are kept",
                StaleLockWarning,
                stacklevel=5,
            )
        mine = {
            "pid": os.getpid(),
            "host": _host(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        data = json.dumps(mine).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as err:
            raise StoreError(
                f"cannot open the gradient store {store} for writing: {_problem(err)}"
            ) from err
        return cls(file, fd, flocked)

    @staticmethod
    def _mine(owner: Mapping[str, Any] | None) -> bool:
        return owner is not None and (owner["pid"], owner["host"]) == (os.getpid(), _host())

    @staticmethod
    def _still_at(fd: int, file: Path) -> bool:
        try:
            now = os.stat(file)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)

    @staticmethod
    def _read(fd: int) -> dict[str, Any] | None:
        """The owner recorded in the lock file, or None (empty: not written yet, or garbled)."""
        try:
            owner = json.loads(os.pread(fd, 4096, 0).decode())
        except ValueError:  # also UnicodeDecodeError
            return None
        valid = (
            isinstance(owner, dict)
            and type(owner.get("pid")) is int
            and isinstance(owner.get("host"), str)
            and "started" in owner
        )
        return owner if valid else None

    @classmethod
    def _held_message(cls, store: Path, file: Path, fd: int) -> str:
        owner = cls._read(fd)
        for _ in range(20):  # the owner may be between taking the lock and writing its name
            if owner is not None and (owner["host"] != _host() or _pid_alive(owner["pid"])):
                break
            time.sleep(0.05)
            owner = cls._read(fd)
        return cls._busy_message(store, owner)

    @classmethod
    def _busy_message(cls, store: Path, owner: Mapping[str, Any] | None) -> str:
        if cls._mine(owner):
            return (
                f"{store} is already open for writing in this process (pid {os.getpid()}); "
                "close() that Recorder/RunWriter (or use it in a `with` block) before opening "
                "another writer on the same store"
            )
        return (
            f"{store} is being written by {_describe(owner)}; a second writer would corrupt it, "
            "so this one is refused. Wait for that process to finish or stop it, or record into "
            "another path (gradnoise.open_run reads the store meanwhile; a writer that was "
            "killed releases the lock by itself)"
        )

    def moved_to(self, directory: Path) -> None:
        self.file = directory / LOCK_NAME

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock; idempotent. In a forked
        child only its copy of the descriptor is closed: the parent keeps the lock."""
        if self.fd < 0:
            return
        try:
            if os.getpid() == self.pid and self._still_ours():
                self.file.unlink()
        except OSError:  # e.g. now read-only: the next writer takes the stale file over
            pass
        finally:
            os.close(self.fd)
            self.fd = -1

    def _still_ours(self) -> bool:
        """Whether ``file`` is still the file this lock holds (not one a later writer made)."""
        if self.flocked:
            return self._still_at(self.fd, self.file)
        return self._read(self.fd) == self._read_path(self.file)

    @staticmethod
    def _read_path(file: Path) -> Any:
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError):
            return None


def _remove_leftovers(path: Path) -> None:
    """Remove what killed writers left: ``.partial`` files inside the store ``path`` (call only
    with its writer lock held: no other writer is running) and build directories of dead creators
    next to it (on this host; their pid is in the name)."""
    for root, _, files in os.walk(path):
        for name in files:
            if _PARTIAL.search(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))
    for sibling in path.parent.glob(f".{path.name}.creating-*"):
        found = _CREATING.search(sibling.name)
        if found is None or found.group(2) not in (None, _host()):
            continue
        pid = int(found.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(sibling, ignore_errors=True)


def _chunk_shape(num_columns: int, chunk_rows: int | None) -> tuple[int, int]:
    cols = min(num_columns, 1 << 20)
    if chunk_rows is None:  # about 256 KiB per chunk, at most 64 rows
        chunk_rows = max(1, min(64, (1 << 16) // max(cols, 1)))
    return int(chunk_rows), int(cols)


class RunWriter:
    """Append-only writer of a gradient store (creates it, or resumes an existing one).

    It holds the store's writer lock until :meth:`close` (or the end of a ``with`` block, garbage
    collection, or process exit): a second writer on the same store is refused with
    :class:`StoreLockedError`.

    Args:
        path: store directory.
        selection: which coordinates the columns hold.
        metadata: JSON-safe run metadata (config, seed, versions...), stored once at creation.
        scalars: names of extra per-step scalars, beyond ``loss`` and ``lr``.
        dtype: numpy dtype of stored gradients; ``None``: float32 for a new store, the stored
            dtype on resume (a different explicit dtype on resume is refused). Rows are cast to it.
        chunk_rows: rows per chunk (default: about 256 KiB chunks).
    """

    def __init__(
        self,
        path: str | Path,
        selection: ParamSelection,
        *,
        metadata: Mapping[str, Any] | None = None,
        scalars: Sequence[str] = (),
        dtype: str | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        zarr = _zarr_for_writing()
        self.path = Path(path)
        self.scalar_names = tuple(BASE_SCALARS) + tuple(s for s in scalars if s not in BASE_SCALARS)
        self.selection = selection
        np_dtype = None if dtype is None else self._float_dtype(dtype)
        if chunk_rows is not None:
            chunk_rows = as_int("chunk_rows", chunk_rows, minimum=1)
        lock = None
        if not (self.path / "zarr.json").exists():
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError(
                    f"{self.path} exists and is not a gradnoise store; choose a new path"
                )
            _remove_leftovers(self.path)
            lock = self._create(zarr, np_dtype or np.dtype("float32"), chunk_rows, metadata)
        if lock is None:  # an existing store (or another process created it meanwhile)
            if _merged_meta(self.path) is not None:
                raise StoreError(
                    f"{self.path} is a merged run (consolidate_runs), read-only: each writer "
                    "writes its own part store, then consolidate_runs merges them again"
                )
            lock = _WriterLock.acquire(self.path, self.path)
            _remove_leftovers(self.path)
        self._lock = lock
        self._release = weakref.finalize(self, lock.release)
        try:
            self._resume(np_dtype)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _float_dtype(dtype: str) -> np.dtype:
        try:
            np_dtype = np.dtype(dtype)
        except TypeError as err:
            raise ValueError(
                f"the store cannot hold gradients of dtype {dtype!r}; use float16, float32 or "
                "float64"
            ) from err
        if np_dtype.kind != "f":
            raise ValueError(f"gradients are stored as floats, got dtype {np_dtype}")
        return np_dtype

    def _create(
        self,
        zarr: Any,
        dtype: np.dtype,
        chunk_rows: int | None,
        metadata: Mapping[str, Any] | None,
    ) -> _WriterLock | None:
        """Build the store in a sibling directory, lock it and rename it into place: a failure or
        a kill during creation never leaves a half-made store at ``path`` (which could not be
        resumed). Returns None when another process created the store first."""
        building = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}@{_host()}")
        shutil.rmtree(building, ignore_errors=True)
        lock = None
        try:
            self._build(zarr, building, dtype, chunk_rows, metadata)
            lock = _WriterLock.acquire(building, self.path)
            try:
                os.replace(building, self.path)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                lock.release()
                shutil.rmtree(building, ignore_errors=True)
                if not (self.path / "zarr.json").exists():
                    raise StoreError(
                        f"{self.path} exists and is not a gradnoise store; choose a new path"
                    ) from None
                return None
        except BaseException as err:
            if lock is not None:
                lock.release()
            shutil.rmtree(building, ignore_errors=True)
            if isinstance(err, OSError) and not isinstance(err, StoreError):
                raise StoreError(
                    f"cannot create the gradient store {self.path}: {_problem(err)}"
                ) from err
            raise
        lock.moved_to(self.path)
        return lock

    def _build(
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

    def _resume(self, dtype: np.dtype | None) -> None:
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
        self.dtype = np.dtype(self.group["grads"].dtype)
        if dtype is not None and dtype != self.dtype:
            raise StoreError(
                f"{self.path} stores {self.dtype} gradients; resuming with dtype {dtype} would "
                f"silently cast them. Pass dtype {self.dtype} (or no dtype, to follow the store), "
                "or record into a new path"
            )
        self.scalar_names = stored
        self.metadata = run.metadata
        self._commit_group = self.group["commit"]
        self.length = run.length
        self.last_step: int | None = int(run.steps[-1]) if run.length else None
        self.snapshots: list[dict[str, Any]] = run.snapshot_index()

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write into one StoreError naming the store and the problem."""
        if self.closed:
            raise StoreError(f"the writer of {self.path} is closed; open a new one to write")
        try:
            yield
        except StoreError:
            raise
        except OSError as err:
            kept = (
                f"the {self.length} rows committed before (up to step {self.last_step}) are "
                "intact and readable, and a new writer on this path resumes after them"
                if self.length
                else "nothing had been committed to it yet"
            )
            raise StoreError(
                f"cannot {what} in the gradient store {self.path}: {_problem(err)}; {kept}"
            ) from err

    def _commit(self, length: int, snapshots: list[dict[str, Any]]) -> None:
        self._commit_group.attrs["commit"] = {"length": length, "snapshots": snapshots}

    def update_metadata(self, **entries: Any) -> None:
        """Add or replace top-level metadata entries (e.g. a final summary)."""
        reserved = {"format", "format_version", "selection", "scalars"}
        if reserved & set(entries):
            raise ValueError(f"metadata keys {sorted(reserved & set(entries))} are reserved")
        with self._writing("update the metadata"):
            self.group.attrs["gradnoise"] = {**dict(self.group.attrs["gradnoise"]), **entries}
        self.metadata = dict(self.group.attrs["gradnoise"])

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
        """Append one row (the gradient at ``step``) and commit it.

        ``step`` is an integer within ``±2**53`` (the table stores it exactly as float64), larger
        than the previous step.
        """
        step = check_step(step)
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
        with self._writing(f"record step {step}"):
            if self._table.shape[0] <= t:
                capacity = max(2 * t, t + self._grads.chunks[0], 8)
                self._grads.resize((capacity, self._grads.shape[1]))
                self._table.resize((capacity, self._table.shape[1]))
            self._grads[t] = grad
            self._table[t] = np.array([step, float(nonfinite), *values])
            self._commit(t + 1, self.snapshots)
        self.length, self.last_step = t + 1, step

    def add_snapshot(
        self, kind: str, step: int, values: np.ndarray, attrs: Mapping[str, Any] | None = None
    ) -> str:
        """Store an ``[n, C]`` array captured at ``step`` (e.g. ``kind="per_sample"``) and commit it."""
        step = check_step(step)
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.selection.num_columns:
            raise ValueError(
                f"snapshot must be [n, {self.selection.num_columns}], got {values.shape}"
            )
        if not kind.isidentifier():
            raise ValueError(f"snapshot kind must be an identifier, got {kind!r}")
        name = f"snapshots/{kind}/step_{step:09d}"
        if any(s["name"] == name for s in self.snapshots):
            raise ValueError(f"{self.path} already holds a {kind} snapshot at step {step}")
        rows, cols = _chunk_shape(values.shape[1], None)
        entry = {"kind": kind, "step": step, "name": name, "shape": list(values.shape)}
        snapshots = [*self.snapshots, {**entry, **dict(attrs or {})}]
        with self._writing(f"store the {kind} snapshot of step {step}"):
            arr = self.group.create_array(
                name,
                shape=values.shape,
                dtype=values.dtype,
                chunks=(max(1, min(values.shape[0], rows * 4)), cols),
                overwrite=True,
            )
            arr[...] = values
            self._commit(self.length, snapshots)
        self.snapshots = snapshots
        return name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has released the writer lock."""
        return not self._release.alive

    def close(self) -> None:
        """Release the writer lock (every row is already committed; nothing is buffered)."""
        self._release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_step(step: Any) -> int:
    """``step`` as an int, refused when it is not an integer or cannot be stored exactly."""
    step = as_int("step", step)
    if abs(step) > MAX_STEP:
        raise ValueError(
            f"step {step} cannot be stored exactly: steps are kept as float64, exact only "
            f"within ±2**53 = ±{MAX_STEP}"
        )
    return step


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

    @property
    def full(self) -> dict[int, np.ndarray]:
        """Full-gradient snapshots ``{step: [1, C]}`` (the exact mean gradient G at fixed
        parameters)."""
        return self.snapshots("full")

    def to_dask(self) -> DaskRun:
        """The store's arrays as dask arrays over its Zarr chunks (no copy, nothing read yet).

        Needs ``dask[array]`` (``pip install 'gradnoise[dask]'``). The arrays are opened by path
        (``dask.array.from_zarr``), so the workers of a ``distributed`` cluster read the chunks
        themselves; they must see the store at the same path. The batched statistics
        (:mod:`gradnoise.stats`) accept them and run blockwise over column blocks.
        """
        try:
            import dask.array as da
        except ImportError as err:
            raise ImportError(
                "Run.to_dask() needs dask: pip install 'gradnoise[dask]' (dask[array])"
            ) from err

        if isinstance(self._group, _MergedGroup):
            return self._group.to_dask(self)

        def array(name: str, rows: int | None = None) -> Any:
            arr = da.from_zarr(str(self.path), component=name)
            return arr if rows is None else arr[:rows]

        snapshots: dict[str, dict[int, Any]] = {}
        for snap in self.snapshot_index():
            snapshots.setdefault(snap["kind"], {})[int(snap["step"])] = array(snap["name"])
        return DaskRun(
            grads=array("grads", self.length),
            table=array("table", self.length),
            snapshots=snapshots,
        )

    def __repr__(self) -> str:
        kinds = sorted({s["kind"] for s in self.snapshot_index()})
        return (
            f"Run({str(self.path)!r}, steps={self.length}, "
            f"columns={self.selection.num_columns}, snapshots={kinds})"
        )


@dataclass(frozen=True)
class DaskRun:
    """A store's arrays as dask arrays (see :meth:`Run.to_dask`); nothing is read until computed.

    Attributes:
        grads: ``[T, C]`` recorded minibatch gradients (committed rows only).
        table: ``[T, 2+S]`` step, non-finite flag and scalars per row.
        snapshots: ``{kind: {step: [n, C] array}}`` (``per_sample``, ``noise``, ``full``...).
    """

    grads: Any
    table: Any
    snapshots: dict[str, dict[int, Any]] = field(default_factory=dict)

    @property
    def per_sample(self) -> dict[int, Any]:
        return self.snapshots.get("per_sample", {})

    @property
    def noise(self) -> dict[int, Any]:
        return self.snapshots.get("noise", {})


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
    if MERGED in meta:
        return _open_merged(path, meta)
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


# ----------------------------------------------------------------------------------------------
# runs merged from many writers

MERGED = "merged"


def _merged_meta(path: Path) -> dict[str, Any] | None:
    """The ``merged`` entry of the run metadata in ``path/zarr.json``, or None."""
    try:
        doc = json.loads((path / "zarr.json").read_text())
        merged = doc["attributes"]["gradnoise"].get(MERGED)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return merged if isinstance(merged, dict) else None


def _merge_selections(selections: Sequence[ParamSelection]) -> ParamSelection:
    """The selection of the parts' columns side by side (part after part): a parameter split
    between neighbouring parts is joined when its indices keep increasing."""
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    indices: list[np.ndarray | None] = []
    for part, sel in enumerate(selections):
        for name, shape, idx in zip(sel.names, sel.shapes, sel.indices, strict=True):
            if name in names:
                k = names.index(name)
                prev = indices[k]
                if k != len(names) - 1 or prev is None or idx is None or tuple(shape) != shapes[k]:
                    raise StoreError(
                        f"part {part} selects coordinates of {name!r} that another part holds, "
                        "or not right after them: the parts' columns, side by side, must select "
                        "each coordinate once and each parameter in one run of columns"
                    )
                if idx[0] <= prev[-1]:
                    raise StoreError(
                        f"part {part} repeats or reorders coordinates of {name!r}: the parts "
                        "must hold disjoint coordinates, in increasing order"
                    )
                indices[k] = np.concatenate([prev, idx])
            else:
                names.append(name)
                shapes.append(tuple(shape))
                indices.append(idx)
    return ParamSelection(tuple(names), tuple(shapes), tuple(indices))


def consolidate_runs(
    path: str | Path,
    parts: Sequence[str | Path] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Run:
    """Merge the stores of several writers (one per rank or process) into one run, by metadata.

    Each writer records its own shard of the coordinates into its own store (a
    :class:`RunWriter` or ``gradnoise.Recorder`` with its own selection and its own lock, e.g.
    ``path/parts/rank3``), over the same steps. This writes only ``path/zarr.json``: a run whose
    columns are the parts' columns side by side (in the order of ``parts``), read by
    :func:`open_run` (numpy, or :meth:`Run.to_dask` without a copy) like any store. Nothing is
    copied; call it again after the parts grew (or at any time: a reader sees the rows committed
    in every part, so a merged run of writers still running is consistent too).

    Args:
        path: the merged run's directory (it may hold the parts, in ``path/parts/``).
        parts: the part stores; default: every store in ``path/parts``, by name (numbers in
            names compared as numbers: rank2 before rank10).
        metadata: extra run metadata (the first part's metadata is kept otherwise).

    Raises:
        StoreError: a part is missing or not a store, the parts record different steps, scalars
            or dtypes, or their selections overlap.
    """
    root = Path(path)
    if parts is None:
        found = [p for p in (root / "parts").glob("*") if (p / "zarr.json").exists()]
        parts = sorted(found, key=_natural)
    part_paths = [Path(p) for p in parts]
    if not part_paths:
        raise StoreError(f"no part store to merge into {root} (looked in {root / 'parts'})")
    if (root / "zarr.json").exists() and _merged_meta(root) is None:
        raise StoreError(f"{root} is a store of its own, not a merged run; merge elsewhere")
    runs = [open_run(p) for p in part_paths]
    for p, run in zip(part_paths, runs, strict=True):
        if MERGED in run.metadata:
            raise StoreError(f"{p} is a merged run itself; merge its parts instead")
    first = runs[0]
    for p, run in zip(part_paths[1:], runs[1:], strict=True):
        if run.metadata["scalars"] != first.metadata["scalars"]:
            raise StoreError(
                f"{p} records scalars {run.metadata['scalars']}, not those of the first part"
            )
        if run._group["grads"].dtype != first._group["grads"].dtype:
            raise StoreError(
                f"{p} stores {run._group['grads'].dtype}, not {first._group['grads'].dtype}"
            )
    selection = _merge_selections([r.selection for r in runs])
    refs = [
        os.path.relpath(p.resolve(), root.resolve())
        if p.resolve().is_relative_to(root.resolve())
        else str(p.resolve())
        for p in part_paths
    ]
    meta = {
        **{k: v for k, v in first.metadata.items() if k not in ("selection", MERGED)},
        **dict(metadata or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "selection": selection.to_dict(),
        MERGED: {"axis": "columns", "parts": refs},
    }
    root.mkdir(parents=True, exist_ok=True)
    group = _zarr_for_writing().open_group(str(root), mode="a")
    group.attrs["gradnoise"] = meta
    return open_run(root)


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


class _MergedTable:
    """The first part's table, with a row flagged non-finite where any part flagged it."""

    def __init__(self, tables: Sequence[Any]) -> None:
        self.tables = list(tables)
        self.dtype = self.tables[0].dtype
        self.shape = (min(int(t.shape[0]) for t in self.tables), int(self.tables[0].shape[1]))

    def __getitem__(self, rows: Any) -> np.ndarray:
        table = np.array(self.tables[0][rows])
        for other in self.tables[1:]:
            table[:, 1] = np.maximum(table[:, 1], np.asarray(other[rows])[:, 1])
        return table


class _MergedArray:
    """Arrays of the parts side by side (axis 1), read part by part on indexing (rows only)."""

    def __init__(self, arrays: Sequence[Any]) -> None:
        self.arrays = list(arrays)
        self.dtype = self.arrays[0].dtype
        self.shape = (
            min(int(a.shape[0]) for a in self.arrays),
            sum(int(a.shape[1]) for a in self.arrays),
        )

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.concatenate([np.asarray(a[rows]) for a in self.arrays], axis=1)

    @property
    def oindex(self) -> Any:
        merged = self

        class _O:
            def __getitem__(self, key: tuple[Any, Any]) -> np.ndarray:
                rows, cols = key
                return merged[rows][:, cols]

        return _O()


class _MergedGroup:
    """What :class:`Run` reads of a merged run: ``table`` of the first part (the parts' steps are
    checked equal; its scalars are the first part's, a row is non-finite if it is in any part),
    every other array side by side."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = list(runs)

    def __getitem__(self, name: str) -> Any:
        if name == "table":
            return _MergedTable([r._group["table"] for r in self.runs])
        return _MergedArray([r._group[name] for r in self.runs])

    def to_dask(self, run: Run) -> DaskRun:
        import dask.array as da

        parts = [r.to_dask() for r in self.runs]
        snapshots: dict[str, dict[int, Any]] = {}
        for snap in run.snapshot_index():
            kind, step = snap["kind"], int(snap["step"])
            snapshots.setdefault(kind, {})[step] = da.concatenate(
                [p.snapshots[kind][step] for p in parts], axis=1
            )
        return DaskRun(
            grads=da.concatenate([p.grads[: run.length] for p in parts], axis=1),
            table=da.from_array(run._table),  # small: steps, flags (any part's), scalars
            snapshots=snapshots,
        )


def _open_merged(path: Path, meta: dict[str, Any]) -> Run:
    """A merged run: its parts opened, checked against each other, side by side."""
    refs = meta[MERGED].get("parts", [])
    if meta[MERGED].get("axis") != "columns" or not refs:
        raise StoreError(f"{path}: unknown merge {meta[MERGED]!r}")
    runs = []
    for ref in refs:
        part = Path(ref) if os.path.isabs(ref) else path / ref
        try:
            runs.append(open_run(part))
        except StoreError as err:
            raise StoreError(
                f"{path} is a merged run whose part {ref} cannot be read: {err}"
            ) from err
    length = min(r.length for r in runs)
    steps = runs[0].steps[:length]
    for ref, r in zip(refs[1:], runs[1:], strict=True):
        if not np.array_equal(r.steps[:length], steps):
            raise StoreError(
                f"{path}: part {ref} records other steps than part {refs[0]}; merged parts must "
                "record the same steps (each its own coordinates)"
            )
    selection = ParamSelection.from_dict(meta["selection"])
    width = sum(r.selection.num_columns for r in runs)
    if selection.num_columns != width:
        raise StoreError(
            f"{path}: the merged selection has {selection.num_columns} columns, the parts {width}; consolidate again"
        )
    snapshots = []
    for snap in runs[0].snapshot_index():
        found = [
            next((s for s in r.snapshot_index() if s["name"] == snap["name"]), None) for r in runs
        ]
        if all(s is not None and s["shape"][0] == snap["shape"][0] for s in found):
            snapshots.append({**snap, "shape": [snap["shape"][0], width]})
    commit = {"length": length, "snapshots": snapshots}
    return Run(
        path=path,
        metadata=meta,
        selection=selection,
        length=length,
        commit=commit,
        _group=_MergedGroup(runs),
    )
