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

# Every built-in analysis at a tiny size (the report's text and browser tests).
FULL_TINY_STUDY = dict(
    **TINY_STUDY,
    model_options={"widths": [24]},
    analyses=("training", "gradients", "tails", "noise_model", "spectra", "variance"),
    options={
        "tails": {"min_tail": 10, "n_boot": 9, "boot_coords": 40, "sgn_batches": 48},
        "spectra": {
            "examples": 64,
            "bootstrap": 20,
            "stability_k": 3,
            "batch_sizes": [4, 16],
            "sweep_batches": 40,
            "sweep_pool": 200,
            "hessian_k": 6,
            "hessian_examples": 160,
            "hessian_trace": 10,
        },
        "noise_model": {
            "sgn_samples": 64,
            "coords": 240,
            "fit_coords": 60,
            "directions": 20,
            "batch_sizes": [16, 64],
            "arm_steps": 5,
        },
        "variance": {"every": 4, "draws": 4},
    },
)
