"""Torch side of the noise-model studies: SGN samples at fixed parameters, short training arms.

Imported only inside ``compute`` (rendering never needs torch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...capture import full_grad, per_sample_grads
from ...selection import ParamSelection


def stratified_selection(model: Any, coords: int, rng: np.random.Generator) -> ParamSelection:
    """Up to ceil(coords / #tensors) seeded random coordinates of every trainable tensor (all of a
    smaller tensor), so that every layer, biases included, is represented."""
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    per = max(1, math.ceil(coords / len(named)))
    indices: list[np.ndarray | None] = []
    for _, shape in named:
        numel = math.prod(shape)
        indices.append(None if numel <= per else np.sort(rng.choice(numel, per, replace=False)))
    return ParamSelection(tuple(n for n, _ in named), tuple(s for _, s in named), tuple(indices))


def data_pass_noise(
    model: Any,
    loss_fn: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    dropout: Any = "error",
    max_memory: Any = None,
    params: Any = None,
) -> np.ndarray:
    """Simsekli et al.'s SGN sample (methods.md §4b(b)): one pass over the data in P = N // B
    consecutive disjoint minibatches (data order as stored; the last N - P B examples are not
    used), minibatch gradients g_k of all parameters (or of the coordinates ``params``), noise
    g_k - (1/P) sum_k g_k. ``[P, M]``."""
    p = x.shape[0] // batch_size
    if p < 2:
        raise ValueError(
            f"a data pass of {x.shape[0]} examples holds fewer than 2 minibatches of {batch_size}"
        )
    grads = torch.stack(
        [
            full_grad(
                model,
                loss_fn,
                (
                    x[k * batch_size : (k + 1) * batch_size],
                    y[k * batch_size : (k + 1) * batch_size],
                ),
                batch_size=batch_size,
                dropout=dropout,
                max_memory=max_memory,
                params=params,
            )
            for k in range(p)
        ]
    ).double()
    return (grads - grads.mean(0)).float().cpu().numpy()


def per_sample_and_mean(
    model: Any,
    loss_fn: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    selection: ParamSelection,
    dropout: Any = "error",
    chunk_size: int | None = 256,
    max_memory: int | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example gradients of the whole train split on ``selection`` (``[N, C]``, the
    parameters' dtype) and their mean, the full gradient G (``[C]``, float64; summed in float64
    a block of columns at a time, never a float64 copy of all of them). ``max_memory`` (instead
    of ``chunk_size``) sizes the chunks as :func:`gradnoise.per_sample_grads` does."""
    chunking = {"chunk_size": chunk_size} if max_memory is None else {"max_memory": max_memory}
    g = (
        per_sample_grads(model, loss_fn, x, y, params=selection, dropout=dropout, **chunking)
        .cpu()
        .numpy()
    )
    width = max(1, (64 * 2**20) // (8 * max(g.shape[0], 1)))
    mean = np.empty(g.shape[1])
    for c0 in range(0, g.shape[1], width):
        mean[c0 : c0 + width] = g[:, c0 : c0 + width].astype(np.float64).mean(0)
    return g, mean


def train_arm(
    model: Any,
    loss_fn: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: Any,
    batch_size: int,
    steps: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Minibatch training of ``model`` by ``optimizer`` (built over its parameters) as in the
    study (epochs without replacement, order from ``rng``); returns the minibatch losses.
    Changes ``model`` in place."""
    opt = optimizer
    n = x.shape[0]
    perm, pos = np.empty(0, dtype=np.int64), 0
    losses = np.empty(steps)
    model.train()
    for t in range(steps):
        if pos + batch_size > perm.size:
            perm, pos = rng.permutation(n), 0
        idx = torch.as_tensor(perm[pos : pos + batch_size])
        pos += batch_size
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses[t] = float(loss.detach())
    return losses
