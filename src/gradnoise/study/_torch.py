"""Torch helpers shared by the trainer, the probe and the analyses: evaluation, accuracy, and
leaving the caller's random number generators and module modes as they were."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def accuracy(outputs: Any, targets: Tensor) -> float | None:
    """Fraction of ``argmax`` over dim 1 equal to integer ``targets`` (per example or per token:
    ``[B, C]`` vs ``[B]``, ``[B, V, T]`` vs ``[B, T]``); None for outputs that are not class
    scores of those targets (regression, tuples...)."""
    if not isinstance(outputs, Tensor) or outputs.dim() < 2 or targets.is_floating_point():
        return None
    predicted = outputs.argmax(1)
    if predicted.shape != targets.shape:
        return None
    return float((predicted == targets).float().mean())


def evaluate(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    *,
    device: Any = None,
    batch_size: int | None = None,
) -> tuple[float, float | None]:
    """Loss and accuracy (None where it does not apply) of ``model`` on ``(x, y)`` without
    gradients. ``batch_size``: examples per forward (None: one forward over all); the loss of
    several batches is their size-weighted mean of ``loss_fn``."""
    n = int(x.shape[0])
    if batch_size is None or batch_size >= n:
        with torch.no_grad():
            outputs = model(x.to(device) if device is not None else x)
            targets = y.to(device) if device is not None else y
            return float(loss_fn(outputs, targets)), accuracy(outputs, targets)
    total, hits, counted = 0.0, 0.0, True
    with torch.no_grad():
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            if device is not None:
                xb, yb = xb.to(device), yb.to(device)
            outputs = model(xb)
            total += float(loss_fn(outputs, yb)) * int(xb.shape[0])
            acc = accuracy(outputs, yb)
            counted = counted and acc is not None
            hits += (acc or 0.0) * int(xb.shape[0])
    return total / n, (hits / n if counted else None)


def _cuda_devices() -> list[int]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return list(range(torch.cuda.device_count()))


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block and give the caller back torch's (CPU and initialised CUDA devices'),
    numpy's and Python's global random states exactly as they were."""
    np_state = np.random.get_state()  # noqa: NPY002 - saved to be restored, not used
    py_state = random.getstate()
    with torch.random.fork_rng(devices=_cuda_devices()):
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for a block, every module's own training flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
