"""The audit's coupling check in float32: rounding through a deep network is not coupling.

A GroupNorm ResNet-18 in float32 showed relative gaps of 8e-3 between its batch gradient and
the sum of its per-example gradients (4e-15 in float64), above the float32 tolerance: the audit
refused a model with nothing coupled. A float32 failure is now re-checked on a float64 copy,
and only a coupling that survives it is refused.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradnoise
from gradnoise.capture import audit
from gradnoise.errors import UnsupportedLayerError


def _rounding_only(monkeypatch) -> list[bool]:
    """Make every float32 comparison fail (tolerance 0: rounding alone exceeds it) and record
    which proofs were built on a float64 copy."""
    real_tol, real_init = audit.probe_tolerance, audit._Proof.__init__
    widened: list[bool] = []

    def tol(dtype):
        return 0.0 if dtype == torch.float32 else real_tol(dtype)

    def init(self, *args, widen=False, **kwargs):
        widened.append(widen)
        real_init(self, *args, widen=widen, **kwargs)

    monkeypatch.setattr(audit, "probe_tolerance", tol)
    monkeypatch.setattr(audit._Proof, "__init__", init)
    return widened


def _deep(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(6):
        layers += [nn.GroupNorm(2, 8), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1)]
    layers += [nn.Flatten(), nn.Linear(8 * 8 * 8, 5)]
    return nn.Sequential(*layers)


def test_a_float32_rounding_gap_is_rechecked_in_float64_and_not_refused(monkeypatch):
    net = _deep()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 8, 8, generator=gen), torch.randint(0, 5, (6,), generator=gen)
    widened = _rounding_only(monkeypatch)
    rows = gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y)
    assert widened[:2] == [False, True]  # the float32 check failed, the float64 one decided
    # the rows are the float64 per-example loop's, to float32 precision
    ref = []
    wide = _deep().double()
    for i in range(6):
        wide.zero_grad()
        nn.CrossEntropyLoss()(wide(x[i : i + 1].double()), y[i : i + 1]).backward()
        ref.append(torch.cat([p.grad.reshape(-1) for p in wide.parameters()]))
    expected = torch.stack(ref)
    gap = float((rows.double() - expected).abs().max() / expected.abs().max())
    assert gap < 100 * torch.finfo(torch.float32).eps * math.sqrt(rows.shape[1])


class _BatchScaledGrad(torch.autograd.Function):
    """Identity forward; the backward divides by the whole batch's gradient norm (a coupling
    that only the backward shows)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g / (1.0 + g.norm())


class _CoupledBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(_BatchScaledGrad.apply(torch.tanh(self.fc1(x))))


def test_a_real_coupling_in_float32_is_still_refused(monkeypatch):
    torch.manual_seed(0)
    net = _CoupledBackward()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    widened = _rounding_only(monkeypatch)
    with pytest.raises(UnsupportedLayerError, match="not the sum of the per-example gradients"):
        gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y)
    assert widened[:2] == [False, True]  # refused by the float64 copy too


def test_without_a_failure_no_float64_copy_is_made(monkeypatch):
    net = _deep(3)
    real_init = audit._Proof.__init__
    widened: list[bool] = []

    def init(self, *args, widen=False, **kwargs):
        widened.append(widen)
        real_init(self, *args, widen=widen, **kwargs)

    monkeypatch.setattr(audit._Proof, "__init__", init)
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(5, 3, 8, 8, generator=gen), torch.randint(0, 5, (5,), generator=gen)
    gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y)
    assert widened == [False]
