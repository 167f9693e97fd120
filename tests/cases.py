"""Test cases as data: built-in models on both datasets' input shapes, and losses."""

from __future__ import annotations

import pytest
import torch

import gradnoise

SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 40)}
MODELS = ["mlp", "lenet", "resnet", "transformer"]
MODEL_CASES = [pytest.param(m, ds, id=f"{m}-{ds}") for m in MODELS for ds in SHAPES]

LOSSES = {
    "ce-mean": lambda: torch.nn.CrossEntropyLoss(),
    "ce-sum": lambda: torch.nn.CrossEntropyLoss(reduction="sum"),
    "mse-mean": lambda: torch.nn.MSELoss(),
    "mse-sum": lambda: torch.nn.MSELoss(reduction="sum"),
}


def make_case(model: str, dataset: str, loss: str = "ce-mean", n: int = 6, seed: int = 0):
    """A float64 model with small widths, inputs and targets suited to ``loss``."""
    shape = SHAPES[dataset]
    options = {
        "mlp": {"widths": (16, 12)},
        "resnet": {"channels": 8, "blocks": 1},
        "transformer": {"dim": 16, "depth": 1},
    }.get(model, {})
    net = gradnoise.build_model(model, shape, 10, seed=seed, dtype=torch.float64, **options)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    if loss.startswith("ce"):
        y = torch.randint(0, 10, (n,), generator=gen)
    else:
        y = torch.randn(n, 10, generator=gen, dtype=torch.float64)
    return net, LOSSES[loss](), x, y


# A study small enough for a test: every checkpointed artefact exists, nothing takes long.
TINY_STUDY = dict(
    steps=20,
    batch_size=16,
    track_coords=500,
    per_sample_examples=32,
    noise_batches=8,
    checkpoints=2,
    eval_every=5,
)
