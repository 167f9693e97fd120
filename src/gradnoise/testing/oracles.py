"""Brute-force oracles: one forward and one backward per example."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..capture._common import ParamsArg, resolve_selection


def naive_per_sample_grads(
    model: nn.Module, loss_fn: Any, inputs: Tensor, targets: Tensor, *, params: ParamsArg = None
) -> Tensor:
    """``[N, C]`` per-example gradients by a Python loop: ``loss_fn(model(x[i:i+1]), y[i:i+1])``.

    Slow by design; it is the definition :func:`gradnoise.per_sample_grads` is tested against.
    """
    selection, tensors = resolve_selection(model, params)
    rows = []
    for i in range(inputs.shape[0]):
        with torch.enable_grad():
            loss = loss_fn(model(inputs[i : i + 1]), targets[i : i + 1]).reshape(())
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        parts = []
        for g, p, idx in zip(grads, tensors, selection.indices, strict=True):
            if g is not None and g.is_sparse:  # Embedding(sparse=True)
                g = g.to_dense()
            flat = (torch.zeros_like(p) if g is None else g).reshape(-1)
            parts.append(flat if idx is None else flat[torch.as_tensor(idx)])
        rows.append(torch.cat(parts))
    return torch.stack(rows)
