"""The three ways of computing per-example gradients, as building blocks.

* :func:`structured_pass`: one forward and one backward of a batch; forward hooks record the input
  of chosen layers and add a zero probe to their output, whose gradient is each example's output
  gradient (the layer rules of :mod:`gradnoise.capture.layers` turn these into per-example
  parameter gradients). The same backward also returns the ordinary batch gradient of chosen
  parameters, against which the rules' rows are checked.
* :class:`FuncRows`: ``torch.func.vmap(torch.func.grad(...))`` over examples.
* :func:`loop_rows`: one forward and one backward per example (the definition).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..errors import NonFiniteGradientError
from ..selection import ParamSelection
from ._common import example_loss, per_example_losses, tensor_leaves


@dataclass(frozen=True, eq=False)
class Column:
    """Where one selected parameter's per-example gradient goes in the output.

    Attributes:
        name: parameter name; tensor: the parameter; cols: its columns in the output;
        index: LongTensor of selected flat coordinates, or None for all.
    """

    name: str
    tensor: Tensor
    cols: slice
    index: Tensor | None


def columns_of(selection: ParamSelection, tensors: Sequence[Tensor]) -> list[Column]:
    """One :class:`Column` per selected parameter (its tensor, output columns and indices)."""
    offsets = selection.offsets
    columns = []
    for k, (name, t) in enumerate(zip(selection.names, tensors, strict=True)):
        idx = selection.indices[k]
        index = None if idx is None else torch.as_tensor(idx, dtype=torch.long, device=t.device)
        columns.append(Column(name, t, slice(int(offsets[k]), int(offsets[k + 1])), index))
    return columns


def flat_selected(value: Tensor, index: Tensor | None, rows: int | None = None) -> Tensor:
    """``value`` flattened (per row when ``rows`` is given) and restricted to ``index``."""
    flat = value.reshape(-1) if rows is None else value.reshape(rows, -1)
    if index is None:
        return flat
    return flat.index_select(flat.dim() - 1, index)


@functools.cache
def _first_arg(kind: type) -> str | None:
    """Name of the first argument of ``kind.forward`` after ``self`` (for keyword calls)."""
    try:
        names = list(inspect.signature(kind.forward).parameters)
    except (TypeError, ValueError):
        return None
    return names[1] if len(names) > 1 else None


def layer_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The first input of a module call, whether passed by position or by keyword."""
    if args:
        return args[0]
    name = _first_arg(type(module))
    return kwargs.get(name) if name is not None else None


class _Probes:
    """Forward hooks recording each call's input and a zero probe added to its output."""

    def __init__(self) -> None:
        self.records: list[tuple[nn.Module, Any, Tensor]] = []

    def hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}, not a tensor"
            )
        inp = layer_input(module, args, kwargs)
        probe = torch.zeros_like(output, requires_grad=True)
        self.records.append((module, inp.detach() if isinstance(inp, Tensor) else inp, probe))
        return output + probe


@contextmanager
def _hooked(modules: Sequence[nn.Module], probes: _Probes) -> Iterator[None]:
    handles = [m.register_forward_hook(probes.hook, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Pass:
    """What one structured pass saw: per layer call ``(module, input, output gradient)``, the
    batch gradient ``d(sum_i l_i)/d theta`` of the requested tensors, and the losses ``l_i``."""

    calls: list[tuple[nn.Module, Any, Tensor]]
    grads: list[Tensor | None]
    losses: Tensor
    outputs: list[Tensor]  # the model's output tensors, detached


def structured_pass(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    modules: Sequence[nn.Module],
    tensors: Sequence[Tensor] = (),
) -> Pass:
    """One forward and one backward recording ``modules``' inputs and output gradients."""
    probes = _Probes()
    with torch.enable_grad(), _hooked(modules, probes):
        outputs = model(x)
        losses = per_example_losses(loss_fn, outputs, y)
    check_losses(losses, model)
    inputs = [p for _, _, p in probes.records] + list(tensors)
    grads = (
        list(torch.autograd.grad(losses.sum(), inputs, allow_unused=True))
        if inputs and losses.requires_grad
        else [None] * len(inputs)
    )
    k = len(probes.records)
    calls = [
        (module, inp, torch.zeros_like(probe) if g is None else g)
        for (module, inp, probe), g in zip(probes.records, grads[:k], strict=True)
    ]
    return Pass(calls, grads[k:], losses.detach(), [t.detach() for t in tensor_leaves(outputs)])


def call_shapes(calls: Sequence[tuple[nn.Module, Any, Tensor]], module: nn.Module) -> list:
    """``module``'s calls as ``(input shape[1:], output shape[1:])`` (what the audit saw must be
    what a later chunk sees, or the forward has changed since)."""
    return [
        (tuple(inp.shape[1:]) if isinstance(inp, Tensor) else None, tuple(g.shape[1:]))
        for m, inp, g in calls
        if m is module
    ]


def all_finite(t: Tensor) -> bool:
    """One reduction pass: a NaN/Inf anywhere makes the sum non-finite (integers are finite)."""
    return not t.is_floating_point() or bool(torch.isfinite(t.sum()))


def check_losses(losses: Tensor, model: nn.Module) -> None:
    """Raise :class:`NonFiniteGradientError` when a per-example loss is NaN/Inf."""
    bad = ~torch.isfinite(losses.detach())
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        params = [n for n, p in model.named_parameters() if not all_finite(p.detach())]
        cause = (
            f"; parameter(s) {', '.join(map(repr, params))} hold NaN/Inf"
            if params
            else " (the parameters are finite: check the inputs and targets)"
        )
        raise NonFiniteGradientError(
            f"the loss of {int(bad.sum())} example(s) is NaN/Inf (first: example {first} of the "
            f"chunk); per-example gradients would be non-finite{cause}"
        )


def loop_rows(
    model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor, columns: Sequence[Column], dest: Tensor
) -> Tensor:
    """Per-example gradients by one forward and one backward per example, written into ``dest``.

    Returns the ``[c]`` per-example losses.
    """
    losses = [
        example_alone(model, loss_fn, x[i : i + 1], y[i : i + 1], columns, dest[i])[1]
        for i in range(x.shape[0])
    ]
    for col in columns:
        if not all_finite(dest[:, col.cols]):
            raise NonFiniteGradientError(
                f"non-finite (NaN/Inf) per-example gradient in parameter {col.name!r}"
            )
    return torch.cat(losses) if losses else x.new_zeros(0)


def example_alone(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    columns: Sequence[Column],
    row: Tensor,
) -> tuple[list[Tensor], Tensor]:
    """One example (a batch of one) by itself: writes its gradient into ``row`` at each column's
    place and returns its output tensors (detached) and its loss ``[1]``."""
    tensors = [c.tensor for c in columns]
    with torch.enable_grad():
        outputs = model(x)
        loss = per_example_losses(loss_fn, outputs, y)
        check_losses(loss, model)
        grads = (
            torch.autograd.grad(loss.sum(), tensors, allow_unused=True)
            if tensors and loss.requires_grad
            else [None] * len(tensors)
        )
    for col, g in zip(columns, grads, strict=True):
        if g is None:
            row[col.cols].zero_()
        else:
            row[col.cols].copy_(flat_selected(_dense(g), col.index))
    return [t.detach() for t in tensor_leaves(outputs)], loss.detach()


def _dense(g: Tensor) -> Tensor:
    return g.to_dense() if g.is_sparse else g


class FuncRows:
    """``vmap(grad)`` of each example's loss over the chosen parameters (others held fixed)."""

    def __init__(
        self, model: nn.Module, loss_fn: Any, columns: Sequence[Column], random: bool
    ) -> None:
        self.columns = list(columns)
        chosen = {c.name for c in self.columns}
        self.primals = {c.name: c.tensor.detach() for c in self.columns}
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
        frozen.update(dict(model.named_buffers()))

        def loss_one(primals: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            output = functional_call(model, (primals, frozen), (x.unsqueeze(0),))
            return example_loss(loss_fn, output, y.unsqueeze(0))

        self.grad_fn = vmap(
            grad(loss_one), in_dims=(None, 0, 0), randomness="different" if random else "error"
        )

    def fill(self, x: Tensor, y: Tensor, dest: Tensor) -> None:
        """Write the rows of ``x``'s examples into ``dest`` ([c, C] over all selected columns)."""
        with warnings.catch_warnings():
            # vmap runs ops without a batching rule one example at a time: slower, still exact
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            grads = self.grad_fn(self.primals, x, y)
        c = x.shape[0]
        for col in self.columns:
            value = flat_selected(grads[col.name], col.index, rows=c)
            if not all_finite(value):
                raise NonFiniteGradientError(
                    f"non-finite (NaN/Inf) per-example gradient in parameter {col.name!r}"
                )
            dest[:, col.cols].copy_(value)


__all__ = [
    "Column",
    "FuncRows",
    "Pass",
    "all_finite",
    "call_shapes",
    "check_losses",
    "columns_of",
    "example_alone",
    "flat_selected",
    "layer_input",
    "loop_rows",
    "structured_pass",
]
