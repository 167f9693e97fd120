"""Per-example gradients ``g_i = grad of loss_i`` as an ``[N, C]`` matrix.

Two backends compute the same numbers:

* ``"structured"``: one forward and one backward per chunk; forward hooks record each layer's
  input and a zero probe added to its output gives the per-example output gradients; the
  closed-form rules of :mod:`gradnoise.capture.layers` write per-example gradients straight into
  the output buffer. Used when every selected parameter belongs to a layer with a rule.
* ``"func"``: ``torch.func.vmap(torch.func.grad(...))`` over examples; works for any model that
  ``torch.func`` can trace.

``backend="auto"`` picks ``"structured"`` when possible. Both are checked against a naive loop of
one backward per example (:func:`gradnoise.testing.naive_per_sample_grads`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..errors import NonFiniteGradientError
from ..selection import ParamSelection
from ._common import (
    DropoutChoice,
    ParamsArg,
    check_batchnorm,
    check_finite,
    dropout_policy,
    model_device,
    per_example_losses,
    resolve_selection,
    scalar_loss,
)
from .layers import LAYER_RULES

Backend = Literal["auto", "structured", "func"]


def per_sample_grads(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: ParamsArg = None,
    chunk_size: int | None = None,
    out: Tensor | None = None,
    backend: Backend = "auto",
    dropout: DropoutChoice = "error",
    device: torch.device | str | None = None,
) -> Tensor:
    """Gradient of each example's own loss, flattened: ``G[i] = grad_theta loss_fn(f(x_i), y_i)``.

    The loss of example i is ``loss_fn`` applied to a batch holding only example i, so the result
    is *unscaled* whatever ``loss_fn``'s reduction (``mean`` and ``sum`` agree on one example);
    the minibatch gradient of a mean loss is ``G.mean(0)``. Columns follow ``named_parameters()``
    order over the selected parameters/coordinates (``params``; see :func:`select_params`).

    Args:
        model: the network; train-mode BatchNorm is refused (it couples examples).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, e.g. ``nn.CrossEntropyLoss()``.
        inputs: ``[N, ...]`` examples; targets: ``[N, ...]`` targets.
        params: None (all trainable parameters), glob(s) of names, or a :class:`ParamSelection`.
        chunk_size: examples per forward/backward; bounds the working memory beyond ``out``.
        out: optional preallocated ``[N, C]`` tensor to fill (reusing it avoids page faults on big
            outputs). Its dtype must match the parameters'.
        backend: ``"auto"``, ``"structured"`` or ``"func"`` (see the module docstring).
        dropout: active dropout needs an explicit choice: ``"error"`` (default), ``"eval"`` or
            ``"sample"`` (an independent mask per example).
        device: where to compute; must be where the model lives (inputs are moved there).

    Returns:
        ``[N, C]`` tensor on the model's device, in the parameters' dtype.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> G = per_sample_grads(model, torch.nn.MSELoss(), torch.randn(5, 3), torch.randn(5, 2))
        >>> tuple(G.shape)
        (5, 8)
    """
    selection, tensors = resolve_selection(model, params)
    dev = model_device(model, device)
    check_batchnorm(model)
    n = _check_batch(inputs, targets)
    chunk = n if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = tensors[0].dtype
    out = _prepare_out(out, (n, selection.num_columns), dtype, dev)
    chosen = choose_backend(model, selection) if backend == "auto" else backend
    if backend == "structured" and choose_backend(model, selection) != "structured":
        raise ValueError(
            "backend='structured' needs every selected parameter to belong to a layer type with a "
            "per-example rule (Linear, Conv1d/2d, GroupNorm, LayerNorm, Embedding), used by that "
            "layer alone; use backend='func'"
        )
    if chosen not in ("structured", "func"):
        raise ValueError(f"backend must be 'auto', 'structured' or 'func', got {backend!r}")
    with dropout_policy(model, dropout) as random_dropout:
        filler = (
            _StructuredBackend(model, loss_fn, selection, dev)
            if chosen == "structured"
            else _FuncBackend(model, loss_fn, selection, tensors, random_dropout)
        )
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            x = inputs[start:stop].to(dev, non_blocking=True)
            y = targets[start:stop].to(dev, non_blocking=True)
            filler.fill(x, y, out[start:stop])
    return out


def _check_batch(inputs: Tensor, targets: Tensor) -> int:
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("inputs and targets must be tensors")
    if inputs.dim() == 0 or targets.dim() == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets need the same leading (example) dimension, got shapes "
            f"{tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    if inputs.shape[0] == 0:
        raise ValueError("inputs hold no examples")
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or Inf")
    return int(inputs.shape[0])


def _prepare_out(
    out: Tensor | None, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        raise ValueError(
            f"out must be a {list(shape)} {dtype} tensor on {device}, got {list(out.shape)} "
            f"{out.dtype} on {out.device}"
        )
    if out.stride(-1) != 1:
        raise ValueError("out must have contiguous rows (stride 1 along the last dimension)")
    return out


def _owner_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name -> (module owning it directly, attribute name)."""
    owners = {}
    for mod_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p is not None:
                owners[f"{mod_name}.{pname}" if mod_name else pname] = (module, pname)
    return owners


def choose_backend(model: nn.Module, selection: ParamSelection) -> Literal["structured", "func"]:
    """``"structured"`` when each selected parameter has a layer rule and is not shared."""
    owners = _owner_modules(model)
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    for name in selection.names:
        module, _ = owners[name]
        rule = LAYER_RULES.get(type(module))
        if rule is None or not rule.supports(module):
            return "func"
        if any(seen[id(p)] > 1 for p in module.parameters(recurse=False)):
            return "func"
    return "structured"


@dataclass(frozen=True)
class LayerIO:
    """One call of a layer in a forward pass: its input and the per-example output gradient.

    Attributes:
        module: the layer.
        inputs: the layer's (first) input, detached, ``[c, ...]``.
        grad_output: ``d loss_b / d output_b`` for each example b, ``[c, ...]`` (zeros if the
            output did not reach the loss).
    """

    module: nn.Module
    inputs: Tensor
    grad_output: Tensor


class _Capture:
    """Forward hooks recording each call's input and a zero probe added to its output."""

    def __init__(self) -> None:
        self.records: list[tuple[nn.Module, Tensor, Tensor]] = []

    def hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        probe = torch.zeros_like(output, requires_grad=True)
        self.records.append((module, args[0].detach(), probe))
        return output + probe


@contextmanager
def _hooked(modules: list[nn.Module], capture: _Capture) -> Iterator[None]:
    handles = [m.register_forward_hook(capture.hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def layer_io(
    model: nn.Module, loss_fn: Any, inputs: Tensor, targets: Tensor, modules: list[nn.Module]
) -> list[LayerIO]:
    """Inputs and per-example output gradients of ``modules`` for one batch (one forward+backward).

    The per-example losses are those of :func:`per_sample_grads` (``loss_fn`` on a batch of one),
    so for a Linear layer ``grad_output[b] x[b]^T`` is example b's weight gradient. Used by the
    structured per-example backend and by layer-factored Gram matrices and clustering distances.
    Parameter ``.grad`` fields are not touched.
    """
    capture = _Capture()
    with torch.enable_grad(), _hooked(modules, capture):
        outputs = model(inputs)
    losses = per_example_losses(loss_fn, outputs, targets)
    _check_losses(losses, model)
    probes = [probe for _, _, probe in capture.records]
    grads = torch.autograd.grad(losses.sum(), probes, allow_unused=True)
    return [
        LayerIO(module, inp, torch.zeros_like(probe) if g is None else g)
        for (module, inp, probe), g in zip(capture.records, grads, strict=True)
    ]


class _StructuredBackend:
    def __init__(
        self, model: nn.Module, loss_fn: Any, selection: ParamSelection, device: torch.device
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        owners = _owner_modules(model)
        offsets = selection.offsets
        # module -> list of (param attribute, column slice, index tensor or None, param name)
        self.plan: dict[nn.Module, list[tuple[str, slice, Tensor | None, str]]] = {}
        for k, name in enumerate(selection.names):
            module, pname = owners[name]
            idx = selection.indices[k]
            index = None if idx is None else torch.as_tensor(idx, dtype=torch.long, device=device)
            cols = slice(int(offsets[k]), int(offsets[k + 1]))
            self.plan.setdefault(module, []).append((pname, cols, index, name))

    def fill(self, x: Tensor, y: Tensor, dest: Tensor) -> None:
        written: set[tuple[int, str]] = set()
        for io in layer_io(self.model, self.loss_fn, x, y, list(self.plan)):
            module, inp, g = io.module, io.inputs, io.grad_output
            rule = LAYER_RULES[type(module)]
            if not _all_finite(g) or not _all_finite(inp):
                names = ", ".join(repr(e[3]) for e in self.plan[module])
                raise NonFiniteGradientError(
                    f"non-finite (NaN/Inf) per-example gradient in parameter(s) {names}"
                )
            for pname, cols, index, _ in self.plan[module]:
                key = (id(module), pname)
                rule.compute(module, pname, inp, g, index, dest[:, cols], key in written)
                written.add(key)
        for module, entries in self.plan.items():
            for pname, cols, _, _ in entries:
                if (id(module), pname) not in written:  # layer not used in this forward
                    dest[:, cols].zero_()


def _all_finite(t: Tensor) -> bool:
    """One reduction pass: a NaN/Inf anywhere makes the sum non-finite (integers are finite)."""
    return not t.is_floating_point() or bool(torch.isfinite(t.sum()))


def _check_losses(losses: Tensor, model: nn.Module) -> None:
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        params = [n for n, p in model.named_parameters() if not _all_finite(p.detach())]
        cause = (
            f"; parameter(s) {', '.join(map(repr, params))} hold NaN/Inf"
            if params
            else " (the parameters are finite: check the inputs and targets)"
        )
        raise NonFiniteGradientError(
            f"the loss of {int(bad.sum())} example(s) is NaN/Inf (first: example {first} of the "
            f"chunk); per-example gradients would be non-finite{cause}"
        )


class _FuncBackend:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        selection: ParamSelection,
        tensors: list[Tensor],
        random_dropout: bool,
    ) -> None:
        self.selection = selection
        chosen = dict(zip(selection.names, tensors, strict=True))
        self.primals = {n: p.detach() for n, p in chosen.items()}
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
        frozen.update(dict(model.named_buffers()))
        self.indices = [
            None if i is None else torch.as_tensor(i, dtype=torch.long, device=tensors[0].device)
            for i in selection.indices
        ]

        def loss_one(primals: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            output = functional_call(model, (primals, frozen), (x.unsqueeze(0),))
            return scalar_loss(loss_fn(output, y.unsqueeze(0)))

        randomness = "different" if random_dropout else "error"
        self.grad_fn = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness=randomness)

    def fill(self, x: Tensor, y: Tensor, dest: Tensor) -> None:
        grads = self.grad_fn(self.primals, x, y)
        offsets = self.selection.offsets
        for k, name in enumerate(self.selection.names):
            value = grads[name].reshape(x.shape[0], -1)
            if self.indices[k] is not None:
                value = value.index_select(1, self.indices[k])
            dest[:, int(offsets[k]) : int(offsets[k + 1])].copy_(value)
        check_finite(dest, self.selection, where="per-example")
