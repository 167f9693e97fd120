"""Examples per forward under ``max_memory``: the activations autograd saves, measured.

See :mod:`gradnoise.memory` for the budget's formula; this module measures its
``activation_bytes`` on the model and data at hand.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..memory import batch_for, parse_memory
from ._common import DataArg, fetch, per_example_losses
from .audit import ModelAudit


def _saved_bytes(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    tensors: list[Tensor],
    create_graph: bool,
) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward of ``x`` (and,
    with ``create_graph``, in the first backward whose graph Hessian-vector products keep)."""
    seen: dict[Any, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # sparse or wrapper tensors
            seen[("tensor", id(t))] = t.numel() * t.element_size()
        # detached: an output saved by its own node would otherwise hold that node, and with it
        # the whole graph, in a cycle through C++ that gc cannot collect (autograd restores the
        # grad_fn on unpacking, so a create_graph backward is unchanged)
        return t.detach()

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total = per_example_losses(loss_fn, model(x), y).sum()
        if create_graph:
            torch.autograd.grad(total, tensors, create_graph=True, allow_unused=True)
    return sum(seen.values())


def activation_bytes(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    n: int,
    tensors: list[Tensor],
    audit: ModelAudit | None,
    dropout: Any,
    device: torch.device,
    *,
    create_graph: bool = False,
) -> int:
    """Bytes saved for backward per example: the growth of :func:`_saved_bytes` from a forward
    of one example to one of ``min(n, 4)`` (what does not grow with the batch, such as saved
    weights, cancels). The forwards run under the computation's dropout choice (``audit``; None:
    the model as it is), on a forked RNG and with the model's buffers restored, so measuring
    changes nothing the capture computes. Measured once per cached audit (same model structure,
    input shapes, dtype and dropout choice)."""
    memo = None if audit is None else audit._activation_bytes
    if memo is not None and create_graph in memo:
        return memo[create_graph]
    small, large = 1, min(n, 4)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [device] if device.type == "cuda" else []
    policy = contextlib.nullcontext() if audit is None else audit.randomness(dropout)
    with torch.random.fork_rng(devices=devices), policy:
        x, y = fetch(data, np.arange(large), device)
        # copies, not views: a view's storage is the whole batch's
        one = _saved_bytes(
            model, loss_fn, x[:small].clone(), y[:small].clone(), tensors, create_graph
        )
        if large == small:
            per_example = one
        else:
            many = _saved_bytes(model, loss_fn, x, y, tensors, create_graph)
            per_example = -(-(many - one) // (large - small))
            if per_example <= 0:  # nothing grows with the batch: charge the whole forward
                per_example = many // large
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
    measured = max(int(per_example), 1)
    if memo is not None:
        memo[create_graph] = measured
    return measured


def sub_batch(
    max_memory: object,
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    n: int,
    tensors: list[Tensor],
    audit: ModelAudit | None,
    dropout: Any,
    device: torch.device,
    *,
    create_graph: bool = False,
    extra: int = 0,
    fixed: int = 0,
    forwards: int = 1,
) -> int | None:
    """Examples per forward under ``max_memory`` (:func:`gradnoise.memory.batch_for` of the
    measured :func:`activation_bytes` times ``forwards`` whose graphs are alive together, with
    ``extra`` bytes per example and ``fixed`` bytes held besides); None without a budget."""
    if parse_memory(max_memory) is None:  # a malformed budget is refused before measuring
        return None
    measured = activation_bytes(
        model, loss_fn, data, n, tensors, audit, dropout, device, create_graph=create_graph
    )
    return batch_for(forwards * measured, max_memory, extra=extra, fixed=fixed)
