"""Property: random architectures built from the zoo's parts get exact per-example gradients."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradnoise
from gradnoise.errors import PerSampleFallbackWarning
from gradnoise.testing import naive_per_sample_grads

D, T, N = 4, 3, 5
PARTS = [
    "linear",
    "linear-keyword",
    "reuse",
    "functional-reuse",
    "layernorm",
    "rmsnorm",
    "conv-zeros",
    "conv-reflect",
    "conv-circular",
    "time-first",
    "prelu",
    "tanh",
    "offset-parameter",
    "attention",
    "dropout",
    "gru",
]


class Block(nn.Module):
    """One part acting on ``[B, T, D]``; ``shared`` is the first Linear of the network."""

    def __init__(self, kind: str, shared: nn.Linear) -> None:
        super().__init__()
        self.kind = kind
        self.shared = [shared]  # a list: not registered twice as a submodule
        if kind in ("linear", "linear-keyword", "reuse", "time-first"):
            self.layer = nn.Linear(D, D)
        elif kind == "layernorm":
            self.layer = nn.LayerNorm(D)
        elif kind == "rmsnorm":
            self.layer = nn.RMSNorm(D)
        elif kind.startswith("conv"):
            self.layer = nn.Conv1d(D, D, 3, padding=1, padding_mode=kind.split("-")[1])
        elif kind == "prelu":
            self.layer = nn.PReLU(D)
        elif kind == "offset-parameter":
            self.offset = nn.Parameter(torch.randn(T, D) * 0.3)
        elif kind == "attention":
            self.layer = nn.MultiheadAttention(D, 1, batch_first=True)
        elif kind == "dropout":
            self.layer = nn.Dropout(0.3)
        elif kind == "gru":
            self.layer = nn.GRU(D, D, batch_first=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "linear" or k in ("layernorm", "rmsnorm", "dropout"):
            return torch.tanh(self.layer(h)) if k == "linear" else self.layer(h)
        if k == "linear-keyword":
            return torch.tanh(self.layer(input=h))
        if k == "reuse":
            return torch.tanh(self.layer(torch.tanh(self.layer(h))))
        if k == "functional-reuse":
            return torch.tanh(F.linear(h, self.shared[0].weight))
        if k.startswith("conv"):
            return torch.tanh(self.layer(h.transpose(1, 2))).transpose(1, 2)
        if k == "time-first":
            return torch.tanh(self.layer(h.transpose(0, 1))).transpose(0, 1)
        if k == "prelu":
            return self.layer(h.transpose(1, 2)).transpose(1, 2)
        if k == "tanh":
            return torch.tanh(h)
        if k == "offset-parameter":
            return h + self.offset
        if k == "attention":
            return h + self.layer(h, h, h, need_weights=False)[0]
        return self.layer(h)[0]  # gru


class Net(nn.Module):
    def __init__(self, parts: list[str]) -> None:
        super().__init__()
        self.first = nn.Linear(D, D)
        self.blocks = nn.ModuleList(Block(p, self.first) for p in parts)
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.first(x))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    chunk=st.integers(1, N),
)
def test_random_architectures_are_exact(parts, seed, chunk):
    torch.manual_seed(seed)
    net = Net(parts).double()
    x = torch.randn(N, T, D, dtype=torch.float64)
    y = torch.randint(0, 3, (N,))
    loss_fn = nn.CrossEntropyLoss()
    dropout = "eval" if "dropout" in parts else "error"
    net.eval()
    expected = naive_per_sample_grads(net, loss_fn, x, y)
    net.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerSampleFallbackWarning)
        got = gradnoise.per_sample_grads(net, loss_fn, x, y, chunk_size=chunk, dropout=dropout)
        full = gradnoise.full_grad(net, loss_fn, (x, y), batch_size=chunk, dropout=dropout)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * scale)
    torch.testing.assert_close(full, expected.mean(0), rtol=1e-10, atol=1e-10 * scale)
