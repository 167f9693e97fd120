"""Record gradients along training into a crash-safe Zarr store (see :mod:`gradnoise.store`)."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .capture import full_grad, gradient_noise, per_sample_grads
from .capture._common import DataArg, ParamsArg, resolve_selection
from .errors import NonFiniteGradientError, StoreError
from .selection import as_int
from .store import RunWriter, check_step


class Recorder:
    """Append the minibatch gradient of selected coordinates at every ``every``-th step.

    Use inside any training loop, after ``loss.backward()``::

        rec = gradnoise.Recorder("run.zarr", model, select=gradnoise.select_params(model, coords=5000))
        for step, (x, y) in enumerate(loader):
            opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward()
            rec.record(step, model, loss=loss.item(), lr=opt.param_groups[0]["lr"])
            opt.step()

    A Recorder is the store's only writer until :meth:`close` (or the end of a ``with`` block):
    another writer on the same path, in this process or another, is refused with
    :class:`gradnoise.errors.StoreLockedError` naming the owner's pid and host.

    Args:
        path: store directory; an existing store is resumed (appended to).
        model: the network (its parameter names and shapes define the columns).
        select: None (all trainable parameters), glob(s), or a :class:`ParamSelection`.
        every: record steps with ``step % every == 0`` (an integer >= 1). ``None``: 1 for a new
            store, the stored value on resume (a different explicit value on resume is refused).
        config: JSON-safe run configuration stored with the run.
        seed: the run's seed, stored with the run.
        on_nonfinite: ``"raise"`` (default) raises :class:`NonFiniteGradientError` naming the
            parameter and step and writes nothing for that step; ``"flag"`` records the row and sets
            its ``nonfinite`` flag.
        scalars: names of extra per-step scalars (``loss`` and ``lr`` are always there).
        dtype: dtype of stored gradients. ``None``: float32 for a new store, the stored dtype on
            resume (a different explicit dtype on resume is refused).
        process_group: under ``torch.distributed`` (e.g. DDP), a group (or ``"world"``) whose
            ranks all construct the Recorder with the same arguments: rank 0 of the group is the
            store's only writer; the other ranks write nothing (:meth:`record` returns whether
            the step is recorded, as on rank 0) and share the work of the captures
            (:meth:`record_per_sample`, :meth:`record_full`, :meth:`record_noise` are collective
            calls: every rank calls them with the same data). A failure to open the store on
            rank 0 (e.g. :class:`StoreLockedError`) is raised on every rank. None: this process
            alone (two processes recording into one path are refused by the store's lock).
    """

    def __init__(
        self,
        path: str | Path,
        model: nn.Module,
        *,
        select: ParamsArg = None,
        every: int | None = None,
        config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        on_nonfinite: Literal["raise", "flag"] = "raise",
        scalars: tuple[str, ...] = (),
        dtype: torch.dtype | None = None,
        chunk_rows: int | None = None,
        process_group: Any = None,
    ) -> None:
        from .capture._dist import shard_of, unwrap

        if every is not None:
            every = as_int("every", every, minimum=1)
        if on_nonfinite not in ("raise", "flag"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'flag', got {on_nonfinite!r}")
        model = unwrap(model)
        self.shard = shard_of(process_group)
        self.process_group = process_group if self.shard.shared else None
        #: whether this process writes the store (rank 0 of the group, or a process alone)
        self.writes = self.shard.rank == 0
        self.selection, tensors = resolve_selection(model, select)
        self.on_nonfinite = on_nonfinite
        self._index = [
            None if i is None else torch.as_tensor(i, device=t.device)
            for i, t in zip(self.selection.indices, tensors, strict=True)
        ]
        metadata = {
            "config": dict(config or {}),
            "seed": seed,
            "every": 1 if every is None else every,
            "model": type(model).__name__,
            "torch_version": torch.__version__,
            "platform": platform.platform(),
        }
        self.writer: RunWriter | None = None
        failure: Exception | None = None
        if self.writes:
            try:
                self.writer = RunWriter(
                    path,
                    self.selection,
                    metadata=metadata,
                    scalars=scalars,
                    dtype=None if dtype is None else str(dtype).removeprefix("torch."),
                    chunk_rows=chunk_rows,
                )
                stored = self.writer.metadata.get("every")
                if every is not None and stored is not None and every != stored:
                    self.writer.close()
                    raise StoreError(
                        f"{self.writer.path} was recorded with every={stored}; resuming with "
                        f"every={every} would mix two cadences under one stored value. Pass "
                        f"every={stored} (or no every, to follow the store), or record into a "
                        "new path"
                    )
                state = (every if every is not None else (stored or 1), self.writer.dtype.name)
            except Exception as err:  # every rank learns of it below, then raises
                failure, state = err, (1, "float32")
        else:
            state = (1, "float32")
        if self.shard.shared:  # rank 0's outcome, cadence and dtype, on every rank
            problem, state = self.shard.gather_objects(
                (None if failure is None else str(failure), state)
            )[0]
            if failure is None and problem is not None:
                raise StoreError(f"rank 0 could not open the store {path}: {problem}")
        if failure is not None:
            raise failure
        self.path = self.writer.path if self.writer is not None else Path(path)
        self.every: int = state[0]
        self.dtype: torch.dtype = getattr(torch, state[1])

    def should_record(self, step: int) -> bool:
        """Whether ``record`` at this step writes anything (``step``: an integer within ±2**53)."""
        return check_step(step) % self.every == 0

    def record(
        self,
        step: int,
        model: nn.Module,
        *,
        loss: float | Tensor | None = None,
        lr: float | None = None,
        per_sample: tuple[Any, Tensor, Tensor] | None = None,
        noise: Mapping[str, Any] | None = None,
        **scalars: float,
    ) -> bool:
        """Record the current ``.grad`` of the selected coordinates at ``step``.

        Args:
            per_sample: optional ``(loss_fn, inputs, targets)``: also store the per-sample
                gradients of this batch (see :meth:`record_per_sample`).
            noise: optional keyword arguments of :meth:`record_noise` (``loss_fn``, ``data``,
                ``batch_size``, ``num_batches``...): also store SGN at this step.
            **scalars: extra scalars declared at construction.

        Returns:
            True if the step was recorded (``step % every == 0``).

        Raises:
            TypeError: ``step`` is not an integer (``1.7`` is refused, not skipped).
            StoreError: the store cannot be written (disk full, read-only...): the message names
                the store and the problem; every row committed before stays readable.
        """
        if not self.should_record(step):
            return False
        if self.writer is None:  # a rank other than 0: rank 0 records the (all-reduced) gradient
            if per_sample is not None:
                self.record_per_sample(step, model, *per_sample)
            if noise is not None:
                self.record_noise(step, model, **noise)
            return True
        row = self._current_grad(step, model)
        finite = bool(np.isfinite(row).all())
        if not finite and self.on_nonfinite == "raise":
            self._raise_nonfinite(row, step)
        values = {"loss": float(loss) if loss is not None else None, "lr": lr, **scalars}
        self.writer.append(step, row, values, nonfinite=not finite)
        if per_sample is not None:
            self.record_per_sample(step, model, *per_sample)
        if noise is not None:
            self.record_noise(step, model, **noise)
        return True

    def _current_grad(self, step: int, model: nn.Module) -> np.ndarray:
        _, tensors = resolve_selection(model, self.selection)
        parts = []
        for name, p, index in zip(self.selection.names, tensors, self._index, strict=True):
            if p.grad is None:
                raise ValueError(
                    f"parameter {name!r} has no gradient at step {step}: call record() after "
                    "loss.backward() and before optimizer.zero_grad()"
                )
            flat = p.grad.detach().reshape(-1)
            parts.append(flat if index is None else flat.index_select(0, index))
        return torch.cat(parts).to(self.dtype).cpu().numpy()

    def _raise_nonfinite(self, values: np.ndarray, step: int) -> None:
        bad = ~np.isfinite(values.reshape(-1, self.selection.num_columns)).all(0)
        owners = np.unique(self.selection.layer_of_columns()[bad])
        names = ", ".join(repr(self.selection.names[k]) for k in owners)
        raise NonFiniteGradientError(
            f"non-finite (NaN/Inf) gradient at step {step} in parameter(s) {names}; nothing was "
            f"recorded for this step and the {self.writer.length} earlier rows are safe in "
            f"{self.path}. Pass on_nonfinite='flag' to record such steps with a flag."
        )

    def _snapshot(self, kind: str, step: int, values: Tensor, attrs: Mapping[str, Any]) -> str:
        if self.writer is None:  # a rank other than 0 computed its share; rank 0 writes
            return kind
        array = values.detach().to(self.dtype).cpu().numpy()
        if not np.isfinite(array).all() and self.on_nonfinite == "raise":
            self._raise_nonfinite(array, step)
        return self.writer.add_snapshot(kind, step, array, attrs)

    def record_per_sample(
        self,
        step: int,
        model: nn.Module,
        loss_fn: Any,
        inputs: Tensor,
        targets: Tensor,
        **kwargs: Any,
    ) -> str:
        """Store the ``[B, C]`` per-sample gradients of a batch at ``step`` (snapshot ``per_sample``).

        ``kwargs`` go to :func:`gradnoise.per_sample_grads` (``chunk_size``, ``dropout``...).
        """
        values = per_sample_grads(
            model, loss_fn, inputs, targets, params=self.selection, **self._shared(kwargs)
        )
        return self._snapshot("per_sample", step, values, {"n": int(inputs.shape[0])})

    def record_noise(
        self,
        step: int,
        model: nn.Module,
        loss_fn: Any,
        data: DataArg,
        *,
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        **kwargs: Any,
    ) -> str:
        """Store SGN ``g_B - G`` of ``num_batches`` minibatches at fixed parameters (snapshot ``noise``)."""
        values = gradient_noise(
            model,
            loss_fn,
            data,
            batch_size=batch_size,
            num_batches=num_batches,
            seed=seed,
            params=self.selection,
            **self._shared(kwargs),
        )
        return self._snapshot(
            "noise",
            step,
            values,
            {"batch_size": batch_size, "num_batches": num_batches, "seed": seed},
        )

    def record_full(
        self,
        step: int,
        model: nn.Module,
        loss_fn: Any,
        data: DataArg,
        *,
        batch_size: int = 256,
        **kwargs: Any,
    ) -> str:
        """Store the full gradient ``G`` over ``data`` at ``step`` (snapshot ``full``, ``[1, C]``).

        ``kwargs`` go to :func:`gradnoise.full_grad` (``dropout``...).
        """
        values = full_grad(
            model,
            loss_fn,
            data,
            batch_size=batch_size,
            params=self.selection,
            **self._shared(kwargs),
        )
        return self._snapshot("full", step, values[None, :], {"batch_size": batch_size})

    def _shared(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Capture keyword arguments, with the recorder's process group unless given."""
        if self.process_group is not None:
            kwargs.setdefault("process_group", self.process_group)
        return kwargs

    def update_metadata(self, **entries: Any) -> None:
        """Store extra JSON-safe metadata with the run (rank 0 only under a process group)."""
        if self.writer is not None:
            self.writer.update_metadata(**entries)

    def close(self) -> None:
        """Release the store's writer lock (nothing is buffered: every record is committed)."""
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
