"""Per-example gradients ``g_i = grad of loss_i`` as an ``[N, C]`` matrix.

Three paths compute the same numbers, chosen per parameter by the audit of
:mod:`gradnoise.capture.audit` (which also refuses randomness and coupled examples):

* ``"structured"``: one forward and one backward per chunk; forward hooks record each layer's
  input and a zero probe added to its output gives the per-example output gradients; the
  closed-form rules of :mod:`gradnoise.capture.layers` write per-example gradients straight into
  the output buffer. Every chunk is checked: the layer's input and output hold the chunk's
  examples along dim 0, and on a span of each parameter's columns the per-example rows add up to
  the ordinary batch gradient of the same backward. A parameter that fails steps aside to the
  general path for the rest of the call (with a :class:`~gradnoise.errors.PerSampleFallbackWarning`).
* ``"func"``: ``torch.func.vmap(torch.func.grad(...))`` over examples.
* ``"loop"``: one forward and one backward per example, for models ``vmap`` cannot trace
  (recurrent layers, data-dependent control flow).

All three are checked against a naive loop of one backward per example
(:func:`gradnoise.testing.naive_per_sample_grads`) on a zoo of models (``tests/zoo.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import (
    GradnoiseError,
    NonFiniteGradientError,
    PerSampleFallbackWarning,
    UnsupportedLayerError,
)
from ..memory import chunk_for
from ..selection import ParamSelection
from ._budget import activation_bytes
from ._common import (
    DropoutChoice,
    ParamsArg,
    check_batchnorm,
    exact_float32,
    in_float32,
    model_device,
    resolve_selection,
)
from ._dist import ProcessGroupArg, shard_of, unwrap
from ._passes import (
    Column,
    FuncRows,
    all_finite,
    columns_of,
    loop_rows,
    structured_pass,
)
from ._verify import examples_along_dim0, verify_chunk
from .audit import PROBE_SIZE, ModelAudit, Path, audit, demote, owner_modules, rule_for
from .layers import LAYER_RULES

Backend = Literal["auto", "structured", "func", "loop"]


@in_float32
def per_sample_grads(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: ParamsArg = None,
    chunk_size: int | None = None,
    max_memory: int | str | None = None,
    out: Tensor | None = None,
    backend: Backend = "auto",
    dropout: DropoutChoice = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
) -> Tensor:
    """Gradient of each example's own loss, flattened: ``G[i] = grad_theta loss_fn(f(x_i), y_i)``.

    The loss of example i is ``loss_fn`` applied to a batch holding only example i, so the result
    is *unscaled* whatever ``loss_fn``'s reduction (``mean`` and ``sum`` agree on one example);
    the minibatch gradient of a mean loss is ``G.mean(0)``. Columns follow ``named_parameters()``
    order over the selected parameters/coordinates (``params``; see :func:`select_params`).
    ``loss_fn`` receives whatever the model returns (a tensor, tuple, dict or dataclass).

    Args:
        model: the network. Anything that couples the examples of a batch (train-mode BatchNorm,
            batch statistics, ``scale_grad_by_freq``, reductions over dim 0) is refused.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, e.g. ``nn.CrossEntropyLoss()``.
        inputs: ``[N, ...]`` examples; targets: ``[N, ...]`` targets.
        params: None (all trainable parameters), glob(s) of names, or a :class:`ParamSelection`.
        chunk_size: examples per forward/backward; bounds the working memory beyond ``out``.
        max_memory: instead of ``chunk_size``, a budget for the chunk's per-example gradient
            working set and activations (``"4GiB"``, or bytes): ``chunk = max_memory // (3 * P
            * itemsize + 2 * activation bytes)`` over the selected parameter tensors, the
            activation bytes per example measured (see :mod:`gradnoise.memory`); a budget below
            one example is refused. To avoid holding ``[N, C]`` use
            :func:`iter_per_sample_grads`.
        out: optional preallocated ``[N, C]`` tensor to fill (reusing it avoids page faults on big
            outputs). Its dtype must match the parameters'.
        backend: ``"auto"`` (per parameter, as the audit decides), or force ``"structured"``
            (an error if any selected parameter cannot take it), ``"func"`` or ``"loop"``.
        dropout: random operations in the forward (dropout modules, functional or attention
            dropout, ...) need an explicit choice: ``"error"`` (default), ``"eval"`` (the modules
            that draw random numbers run in eval mode) or ``"sample"`` (an independent mask per
            example).
        device: where to compute; must be where the model lives (inputs are moved there).
        process_group: share the rows among the ranks of a ``torch.distributed`` group
            (``"world"``: the default group): every rank passes the same inputs, computes a
            contiguous block of rows, and gets all N rows. None: this process alone. A
            ``DistributedDataParallel`` model is unwrapped (its hooks stay out).

    Returns:
        ``[N, C]`` tensor on the model's device, in the parameters' dtype.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> G = per_sample_grads(model, torch.nn.MSELoss(), torch.randn(5, 3), torch.randn(5, 2))
        >>> tuple(G.shape)
        (5, 8)
    """
    shard = shard_of(process_group)
    plan = _plan(
        model, loss_fn, inputs, targets, params, chunk_size, max_memory, backend, dropout, device
    )
    n, dev, engine, result = plan.n, plan.device, plan.engine, plan.audit
    out = _prepare_out(out, (n, plan.selection.num_columns), plan.dtype, dev)
    rows = shard.block(n)
    if shard.shared:
        shard.check_same_data(n, inputs[: min(n, PROBE_SIZE)].to(dev), "per_sample_grads")
        out[: rows.start].zero_()
        out[rows.stop :].zero_()
    with result.randomness(dropout) as random:
        for start in range(rows.start, rows.stop, plan.chunk):
            stop = min(start + plan.chunk, rows.stop)
            x = inputs[start:stop].to(dev, non_blocking=True)
            y = targets[start:stop].to(dev, non_blocking=True)
            engine.fill(x, y, out[start:stop], random)
    return shard.sum_(out)


def iter_per_sample_grads(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: ParamsArg = None,
    chunk_size: int | None = None,
    max_memory: int | str | None = None,
    backend: Backend = "auto",
    dropout: DropoutChoice = "error",
    device: torch.device | str | None = None,
) -> Iterator[tuple[slice, Tensor]]:
    """Per-example gradients streamed a chunk at a time: yields ``(rows, G[rows])`` for
    consecutive chunks, never holding ``[N, C]``.

    The numbers are those of :func:`per_sample_grads` with the same arguments (one audit for the
    whole stream; the same per-chunk checks). Reduce each chunk as it comes (norms, sums,
    sketches): the yielded tensor is a buffer that the next chunk overwrites (``.clone()`` a
    chunk to keep it). ``chunk_size`` or ``max_memory`` (see :mod:`gradnoise.memory`)
    bound the memory to a chunk's working set; with neither, the whole batch is one chunk.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.randn(5, 2)
        >>> [tuple(g.shape) for _, g in iter_per_sample_grads(model, torch.nn.MSELoss(), x, y,
        ...                                                   chunk_size=2)]
        [(2, 8), (2, 8), (1, 8)]
    """
    with exact_float32():
        plan = _plan(
            model,
            loss_fn,
            inputs,
            targets,
            params,
            chunk_size,
            max_memory,
            backend,
            dropout,
            device,
        )
    buffer = torch.empty(
        (min(plan.chunk, plan.n), plan.selection.num_columns), dtype=plan.dtype, device=plan.device
    )
    for start in range(0, plan.n, plan.chunk):
        stop = min(start + plan.chunk, plan.n)
        x = inputs[start:stop].to(plan.device, non_blocking=True)
        y = targets[start:stop].to(plan.device, non_blocking=True)
        dest = buffer[: stop - start]
        with exact_float32(), plan.audit.randomness(dropout) as random:  # per chunk: the model
            plan.engine.fill(x, y, dest, random)  # is the caller's between chunks
        yield slice(start, stop), dest


@dataclass
class _Plan:
    n: int
    chunk: int
    device: torch.device
    dtype: torch.dtype
    selection: ParamSelection
    audit: ModelAudit
    engine: _Engine


def _plan(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    params: ParamsArg,
    chunk_size: int | None,
    max_memory: int | str | None,
    backend: Backend,
    dropout: DropoutChoice,
    device: torch.device | str | None = None,
) -> _Plan:
    """Validated arguments, the model's audit and the engine that fills chunks."""
    model = unwrap(model)
    selection, tensors = resolve_selection(model, params)
    dev = model_device(model, device)
    check_batchnorm(model)
    n = _check_batch(inputs, targets)
    if chunk_size is not None:
        chunk = int(chunk_size)
        if chunk < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    else:
        chunk = chunk_for(tensors, max_memory) or n
    if backend not in ("auto", "structured", "func", "loop"):
        raise ValueError(f"backend must be 'auto', 'structured', 'func' or 'loop', got {backend!r}")
    probe = min(n, PROBE_SIZE)
    result = audit(
        model,
        loss_fn,
        inputs[:probe].to(dev),
        targets[:probe].to(dev),
        selection,
        tensors,
        dropout,
        "per_sample",
    )
    if chunk_size is None and max_memory is not None:
        # a chunk's forward saves activations for its backward (measured): they share the budget
        act = activation_bytes(model, loss_fn, (inputs, targets), n, tensors, result, dropout, dev)
        chunk = chunk_for(tensors, max_memory, activation_bytes=act) or n
    routes = _forced_routes(result, backend)
    engine = _Engine(model, loss_fn, columns_of(selection, tensors), routes, result)
    engine.forced = backend != "auto"
    return _Plan(n, min(chunk, n), dev, tensors[0].dtype, selection, result, engine)


def _forced_routes(result: ModelAudit, backend: Backend) -> dict[str, str]:
    routes = {r.name: r.path for r in result.routes}
    if backend == "auto":
        return routes
    if backend == "loop":
        return dict.fromkeys(routes, "loop")
    if backend == "func":
        if result.func_error:
            raise UnsupportedLayerError(
                f"backend='func' cannot compute this model's per-example gradients: "
                f"{result.func_error}. Use backend='auto' or backend='loop'."
            )
        return dict.fromkeys(routes, "func")
    refused = [r for r in result.routes if r.path != "structured"]
    if refused:
        lines = "; ".join(f"{r.name!r}: {r.reason}" for r in refused[:5])
        raise ValueError(
            f"backend='structured' needs a layer rule that is exact for every selected parameter, "
            f"but {len(refused)} parameter(s) cannot take it ({lines}); use backend='auto' (or backend='func')"
        )
    return routes


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


def choose_backend(model: nn.Module, selection: ParamSelection) -> Literal["structured", "func"]:
    """``"structured"`` when each selected parameter has a layer rule for its module's type and
    no module shares parameters -- a static, type-level estimate. The route actually taken is
    decided per parameter from the forward itself: see :func:`gradnoise.capture.audit_model`."""
    owners = owner_modules(model)
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    for name in selection.names:
        module, pname = owners[name]
        if rule_for(module, pname) is None:
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


def layer_io(
    model: nn.Module, loss_fn: Any, inputs: Tensor, targets: Tensor, modules: list[nn.Module]
) -> list[LayerIO]:
    """Inputs and per-example output gradients of ``modules`` for one batch (one forward+backward).

    The per-example losses are those of :func:`per_sample_grads` (``loss_fn`` on a batch of one),
    so for a Linear layer ``grad_output[b] x[b]^T`` is example b's weight gradient -- *if* the
    layer's weight is used nowhere else and its input holds the examples along dim 0, which
    :func:`gradnoise.capture.audit_model` establishes. Parameter ``.grad`` fields are not touched.
    """
    found = structured_pass(model, loss_fn, inputs, targets, modules)
    return [LayerIO(m, inp, g) for m, inp, g in found.calls]


class _Engine:
    """Fills chunks of the output along the routes of an audit, checking the structured ones."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        columns: list[Column],
        routes: dict[str, str],
        result: ModelAudit,
    ) -> None:
        self.model, self.loss_fn, self.result = model, loss_fn, result
        self.owners = owner_modules(model)
        self.structured = [c for c in columns if routes[c.name] == "structured"]
        self.func = [c for c in columns if routes[c.name] == "func"]
        self.loop = [c for c in columns if routes[c.name] == "loop"]
        self._func_rows: FuncRows | None = None
        self._func_random: bool | None = None
        self.forced = False
        self.chunks = 0

    def fill(self, x: Tensor, y: Tensor, dest: Tensor, random: bool) -> None:
        self.chunks += 1
        if self.structured:
            self._structured(x, y, dest)
        if self.func:
            if self._func_rows is None or self._func_random != random:
                self._func_rows = FuncRows(self.model, self.loss_fn, self.func, random)
                self._func_random = random
            try:
                self._func_rows.fill(x, y, dest)
            except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
                if isinstance(err, GradnoiseError):
                    raise
                why = f"torch.func cannot trace this chunk ({type(err).__name__}: {err})"
                if self.forced:
                    raise UnsupportedLayerError(
                        f"backend='func': {why}; use backend='auto' or backend='loop'"
                    ) from err
                failed, self.func, self._func_rows = self.func, [], None
                self._step_aside(failed, why)
                loop_rows(self.model, self.loss_fn, x, y, failed, dest)
        if self.loop:
            loop_rows(self.model, self.loss_fn, x, y, self.loop, dest)

    def _structured(self, x: Tensor, y: Tensor, dest: Tensor) -> None:
        plan: dict[nn.Module, list[Column]] = {}
        for col in self.structured:
            plan.setdefault(self.owners[col.name][0], []).append(col)
        found = structured_pass(
            self.model, self.loss_fn, x, y, list(plan), [col.tensor for col in self.structured]
        )
        calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in plan}
        for module, inp, g in found.calls:
            calls[module].append((inp, g))
        c = int(x.shape[0])
        for module, cols in plan.items():
            seen = calls[module]
            if not examples_along_dim0(seen, c):
                continue  # verify_chunk sends these to the loop
            if any(not all_finite(g) or not all_finite(inp) for inp, g in seen):
                raise NonFiniteGradientError(
                    "non-finite (NaN/Inf) per-example gradient in parameter(s) "
                    + ", ".join(repr(col.name) for col in cols)
                )
            rule = LAYER_RULES[type(module)]
            for col in cols:
                pname = self.owners[col.name][1]
                block = dest[:, col.cols]
                if not seen:  # layer unused in this forward: zero gradient
                    block.zero_()
                for r, (inp, g) in enumerate(seen):
                    rule.compute(module, pname, inp, g, col.index, block, r > 0)
        failed, reason = verify_chunk(
            self.model,
            self.loss_fn,
            x,
            y,
            found,
            self.structured,
            self.owners,
            self.result,
            self.chunks,
        )
        if failed:
            self._step_aside(failed, reason)
            loop_rows(self.model, self.loss_fn, x, y, failed, dest)

    def _step_aside(self, failed: list[Column], reason: str) -> None:
        path: Path = "loop"  # always exact, whatever the model (torch.func may not trace it)
        names = [col.name for col in failed]
        self.result = demote(self.model, self.result, names, path, reason)
        self.structured = [c for c in self.structured if c not in failed]
        self.loop.extend(failed)
        warnings.warn(
            f"gradnoise: per-example gradients of {', '.join(map(repr, names[:4]))} stepped "
            f"aside to the per-example loop in chunk {self.chunks}: {reason}",
            PerSampleFallbackWarning,
            stacklevel=4,
        )
