"""``gradnoise reproduce xie-tails``: the power-law battery of Xie et al. (NeurIPS 2023), paper-sized.

Xie, Tang, Sun, Li, "On the Overlooked Structure of Stochastic Gradients" (arXiv:2212.02083)
claim that dimension-wise gradients usually follow power laws while iteration-wise gradients and
gradient noise usually do not (methods.md §1(e) item 1 gives the CPU-sized check). Their models,
batch sizes and sample sizes were not retrievable (methods.md §1(c)); this preset runs the
``tails`` analysis (:mod:`gradnoise.study.analyses.tails`) on

* ``mnist1d``: an MLP 40-256-256-10 (about 79k parameters), 1,500 SGD steps at B = 64
  (24 epochs), 5,000 tracked coordinates (iteration-wise samples of T = 1,500 steps);
* ``digits``: a LeNet (about 21k parameters), 1,200 steps at B = 32 (27 epochs), 5,000
  tracked coordinates;

with 4 checkpoints, 2 minibatch vectors per checkpoint for the dimension-wise tests, per-
coordinate SGN over K = 500 fixed-parameter minibatches (recomputed at each checkpoint),
49 bootstrap replicates per sample (300 bootstrapped coordinates per checkpoint or window for
the iteration-wise families; (49 + 1) x 0.1 is an integer, so the rule p <= 0.1 has no
Monte-Carlo discreteness bias). ``--quick`` is a tiny version for CI (80 steps, an MLP
64-64 on both datasets, 9 replicates, min_tail 30): it checks the plumbing, not the claim.
"""

from __future__ import annotations

from typing import Any

from ..config import StudyConfig
from ..registry import Preset

DATASETS = ("mnist1d", "digits")

FULL: dict[str, dict[str, Any]] = {
    "mnist1d": {"model": "mlp", "steps": 1500, "batch_size": 64, "lr": 0.1},
    "digits": {"model": "lenet", "steps": 1200, "batch_size": 32, "lr": 0.1},
}
FULL_COMMON: dict[str, Any] = {
    "checkpoints": 4,
    "track_coords": 5000,
    "per_sample_examples": 32,
    "noise_batches": 16,
    "eval_every": 50,
}
FULL_OPTIONS: dict[str, Any] = {
    "n_boot": 49,
    "boot_coords": 300,
    "dim_vectors": 2,
    "matched_samples": 25,
    "sgn_batches": 500,
    "iter_windows": 3,
}

QUICK: dict[str, Any] = {
    "steps": 80,
    "checkpoints": 2,
    "track_coords": 200,
    "per_sample_examples": 8,
    "noise_batches": 4,
    "eval_every": 20,
}
QUICK_OPTIONS: dict[str, Any] = {
    "n_boot": 9,
    "boot_coords": 30,
    "dim_vectors": 1,
    "matched_samples": 5,
    "sgn_batches": 100,
    "iter_windows": 0,
    "min_tail": 30,
    "examples": 2,
}


def _configs(quick: bool, seed: int) -> dict[str, StudyConfig]:
    out = {}
    for dataset in DATASETS:
        size = {**FULL[dataset], **(QUICK if quick else FULL_COMMON)}
        if quick:  # a small MLP on both datasets (LeNet backward passes are slow on CPU)
            size.update(model="mlp", model_options={"widths": [64, 64]})
        out[dataset] = StudyConfig(
            dataset=dataset,
            seed=seed,
            analyses=("training", "tails"),
            options={"tails": dict(QUICK_OPTIONS if quick else FULL_OPTIONS)},
            **size,
        )
    return out


TAILS = Preset(
    "xie-tails",
    "Xie et al. (2023): is the power law plausible for dimension-wise gradients (one gradient "
    "vector, over coordinates), iteration-wise gradients (one coordinate, over training steps) "
    "and gradient noise (one coordinate, over minibatches at fixed parameters)? Columns: share "
    "of samples with CSN bootstrap p > 0.1 (count), then the naive KS rule D < 1.358/sqrt(n_tail). "
    "The paper's claim: dimension-wise high, iteration-wise and SGN low. The size-matched column "
    "tests dimension-wise samples at the iteration-wise sample size.",
    _configs,
)
