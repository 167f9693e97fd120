"""Full-batch gradient, minibatch gradients and stochastic gradient noise at fixed parameters.

Notation (``../shared/research/methods.md`` §0): per-example loss ``l_i`` (``loss_fn`` on a batch
of one), full gradient ``G = (1/N) sum_i grad l_i``, minibatch gradient
``g_B = (1/B) sum_{i in B} grad l_i`` and SGN ``xi_B = g_B - G`` at the *same* parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..memory import release_memory
from ..selection import ParamSelection
from ._budget import sub_batch
from ._common import (
    DataArg,
    DropoutChoice,
    ParamsArg,
    check_batchnorm,
    check_finite,
    dataset_size,
    exact_float32,
    fetch,
    in_float32,
    model_device,
    per_example_losses,
    require_examples,
    resolve_selection,
    tensor_leaves,
)
from ._dist import ProcessGroupArg, shard_of, unwrap
from ._verify import compare_outputs, examples_to_check
from .audit import PROBE_SIZE, ModelAudit, audit_data


def _summed_grad(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    tensors: list[Tensor],
    indices: list[Tensor | None],
    check: int | None,
) -> Tensor:
    """``sum_i grad l_i`` over the batch, flattened over the selected coordinates. Unless
    ``check`` is None, two of the batch's examples are also run alone: their outputs must be
    their rows of the batch's outputs (a coupling the audit's first examples did not show)."""
    with torch.enable_grad():
        outputs = model(x)
        losses = per_example_losses(loss_fn, outputs, y)
        grads = torch.autograd.grad(losses.sum(), tensors, allow_unused=True)
    if check is not None:
        whole = [t.detach() for t in tensor_leaves(outputs)]
        with torch.no_grad():
            for k in examples_to_check(check, int(x.shape[0])):
                alone = tensor_leaves(model(x[k : k + 1]))
                compare_outputs(model, whole, alone, k, int(x.shape[0]))
    parts = []
    for g, p, index in zip(grads, tensors, indices, strict=True):
        if g is not None and g.is_sparse:  # Embedding(sparse=True)
            g = g.to_dense()
        flat = (torch.zeros_like(p) if g is None else g).reshape(-1)
        parts.append(flat if index is None else flat.index_select(0, index))
    return torch.cat(parts)


class _Setup:
    """Validated common arguments of the functions below, the model's audit on ``data``
    (randomness follows ``dropout``; layers that couple examples are refused) and, under
    ``max_memory``, the examples one forward may hold (``sub_batch``; None: no limit)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        data: DataArg,
        params: ParamsArg,
        dropout: DropoutChoice,
        device: Any,
        process_group: ProcessGroupArg,
        what: str,
        max_memory: int | str | None = None,
    ) -> None:
        self.model = model = unwrap(model)
        self.selection: ParamSelection
        self.selection, self.tensors = resolve_selection(model, params)
        self.device = model_device(model, device)
        check_batchnorm(model)
        self.n = dataset_size(data)
        require_examples(self.n, 1, "a gradient")
        self.shard = shard_of(process_group)
        if self.shard.shared:
            probe, _ = fetch(data, np.arange(min(self.n, PROBE_SIZE)), self.device)
            self.shard.check_same_data(self.n, probe, what)
        self.audit: ModelAudit = audit_data(
            model, loss_fn, data, self.selection, self.tensors, dropout, self.device
        )
        self.indices = [
            None if i is None else torch.as_tensor(i, dtype=torch.long, device=self.device)
            for i in self.selection.indices
        ]
        self.sub_batch = sub_batch(
            max_memory, model, loss_fn, data, self.n, self.tensors, self.audit, dropout, self.device
        )


@in_float32
def full_grad(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    batch_size: int = 256,
    params: ParamsArg = None,
    dropout: DropoutChoice = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
    max_memory: int | str | None = None,
) -> Tensor:
    """Exact mean gradient ``G = (1/N) sum_i grad l_i`` over a dataset, streamed in batches.

    Args:
        data: a map-style Dataset of ``(input, target)`` pairs or an ``(X, y)`` pair of tensors.
        batch_size: examples per forward/backward (memory only; the result does not depend on it
            beyond floating-point summation order).
        process_group: share the work among the ranks of a ``torch.distributed`` group (``"world"``
            for the default group): every rank passes the same data, computes a contiguous block
            of it, and gets the whole result. None: this process alone.
        max_memory: a budget for one forward's activations: ``batch_size`` is lowered to the
            sub-batch it allows (see :mod:`gradnoise.memory`). None: no limit.

    Returns:
        ``[C]`` tensor over the selected coordinates.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    setup = _Setup(
        model, loss_fn, data, params, dropout, device, process_group, "full_grad", max_memory
    )
    n = setup.n
    if setup.sub_batch is not None:
        batch_size = min(batch_size, setup.sub_batch)
    block = setup.shard.block(n)
    total = torch.zeros(
        setup.selection.num_columns, dtype=setup.tensors[0].dtype, device=setup.device
    )
    with setup.audit.randomness(dropout) as random:
        for b, start in enumerate(range(block.start, block.stop, batch_size)):
            x, y = fetch(data, np.arange(start, min(start + batch_size, block.stop)), setup.device)
            total.add_(
                _summed_grad(
                    setup.model,
                    loss_fn,
                    x,
                    y,
                    setup.tensors,
                    setup.indices,
                    None if random else b,
                )
            )
    result = setup.shard.sum_(total) / n
    check_finite(result, setup.selection, where="in the full gradient")
    if max_memory is not None:  # the forwards' freed heap pages go back (see release_memory)
        release_memory(collect=False)
    return result


def _minibatch_count(data: DataArg, batch_size: int, num_batches: int) -> int:
    """The dataset size, after checking that ``num_batches`` minibatches of ``batch_size``
    distinct examples can be drawn."""
    if batch_size < 1 or num_batches < 1:
        raise ValueError(
            f"batch_size and num_batches must be >= 1, got {batch_size}, {num_batches}"
        )
    n = dataset_size(data)
    require_examples(n, batch_size, f"minibatches of size {batch_size} without replacement")
    return n


def _minibatch_row(
    setup: _Setup, loss_fn: Any, data: DataArg, index: np.ndarray, k: int | None
) -> Tensor:
    """The mean gradient of the selected coordinates over the examples ``index`` (``k``: the
    batch's verification slot, None when the forward draws randomness), summed over sub-batches
    of ``setup.sub_batch`` examples (the first one verified)."""
    step = len(index) if setup.sub_batch is None else setup.sub_batch
    grad: Tensor | None = None
    for start in range(0, len(index), step):
        x, y = fetch(data, index[start : start + step], setup.device)
        part = _summed_grad(
            setup.model, loss_fn, x, y, setup.tensors, setup.indices, k if start == 0 else None
        )
        grad = part if grad is None else grad.add_(part)
    assert grad is not None
    return grad / len(index)


@in_float32
def minibatch_grads(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    batch_size: int,
    num_batches: int,
    seed: int = 0,
    params: ParamsArg = None,
    dropout: DropoutChoice = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
    max_memory: int | str | None = None,
) -> Tensor:
    """``K`` minibatch gradients ``g_B = (1/B) sum_{i in B} grad l_i`` at fixed parameters.

    Each minibatch holds ``batch_size`` distinct examples drawn uniformly without replacement;
    minibatches are drawn independently of each other (``numpy.random.default_rng(seed)``). With
    ``process_group`` every rank draws the same minibatches and computes every W-th one. With
    ``max_memory`` (a budget for one forward's activations, see :mod:`gradnoise.memory`) a
    minibatch larger than the budget allows is summed over sub-batches.

    Returns:
        ``[num_batches, C]`` tensor.
    """
    n = _minibatch_count(data, batch_size, num_batches)
    setup = _Setup(
        model, loss_fn, data, params, dropout, device, process_group, "minibatch_grads", max_memory
    )
    rng = np.random.default_rng(seed)
    out = torch.zeros(
        num_batches, setup.selection.num_columns, dtype=setup.tensors[0].dtype, device=setup.device
    )
    with setup.audit.randomness(dropout) as random:
        for k in range(num_batches):
            index = rng.choice(n, size=batch_size, replace=False)  # every rank draws every batch
            if not setup.shard.mine(k):
                continue
            out[k] = _minibatch_row(setup, loss_fn, data, index, None if random else k)
    setup.shard.sum_(out)
    check_finite(out, setup.selection, where="in a minibatch gradient")
    if max_memory is not None:
        release_memory(collect=False)
    return out


def iter_minibatch_grads(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    batch_size: int,
    num_batches: int,
    seed: int = 0,
    params: ParamsArg = None,
    dropout: DropoutChoice = "error",
    device: torch.device | str | None = None,
    max_memory: int | str | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """The minibatch gradients of :func:`minibatch_grads` (same arguments, same numbers), one
    ``[C]`` row at a time: yields ``(k, g_k)``, never holding ``[K, C]``. Reduce each row as it
    comes (its norm, its distance to the full gradient)."""
    n = _minibatch_count(data, batch_size, num_batches)
    with exact_float32():
        setup = _Setup(
            model, loss_fn, data, params, dropout, device, None, "minibatch_grads", max_memory
        )
    rng = np.random.default_rng(seed)
    for k in range(num_batches):
        index = rng.choice(n, size=batch_size, replace=False)
        with exact_float32(), setup.audit.randomness(dropout) as random:
            row = _minibatch_row(setup, loss_fn, data, index, None if random else k)
        check_finite(row[None, :], setup.selection, where="in a minibatch gradient")
        yield k, row


@in_float32
def gradient_noise(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    batch_size: int,
    num_batches: int,
    seed: int = 0,
    params: ParamsArg = None,
    dropout: DropoutChoice = "error",
    device: torch.device | str | None = None,
    full_batch_size: int = 256,
    process_group: ProcessGroupArg = None,
    max_memory: int | str | None = None,
) -> Tensor:
    """Stochastic gradient noise ``xi_k = g_{B_k} - G`` at fixed parameters (``[K, C]``).

    The minibatches are those of :func:`minibatch_grads` with the same arguments; ``G`` is
    :func:`full_grad` over the whole of ``data`` (computed in batches of ``full_batch_size``);
    ``max_memory`` bounds both (see :mod:`gradnoise.memory`).
    """
    grads = minibatch_grads(
        model,
        loss_fn,
        data,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        params=params,
        dropout=dropout,
        device=device,
        process_group=process_group,
        max_memory=max_memory,
    )
    full = full_grad(
        model,
        loss_fn,
        data,
        batch_size=full_batch_size,
        params=params,
        dropout=dropout,
        device=device,
        process_group=process_group,
        max_memory=max_memory,
    )
    return grads.sub_(full)
