"""Preset ``gradnoise reproduce battash-escape``: escape from trained minima and the
learning-rate-decay question (Battash & Lindenbaum, AISTATS 2024; see
:mod:`gradnoise.study.analyses.escape`).

An MLP (widths 32, 32) trained by SGD (lr 0.1) on mnist1d and digits; from the last checkpoint
the ``escape`` analysis runs SGD, the fitted Lévy SDE and a Gaussian SDE on the network's loss
over an lr x batch-size grid, a noise sweep for the exit-time exponent (with the Lévy and, where
the measured barriers allow, the Kramers prediction), the lr-decay arms, and the sharp-vs-flat
comparison: from the first checkpoint, minima trained with B = 32 and B = 512 at the same lr down
to the same train loss (that of the last checkpoint), their top Hessian eigenvalue and trace, and
escape of SGD / Lévy SDE / Gaussian SDE from each at the same lr and B (``sharp_batch``; earlier
versions compared separately trained B = 32 and B = 512 runs, whose minima differed in training
progress). ``--quick`` runs both datasets at a small size (6 paths, 50-step horizons; 12 paths
per minimum in the sharp-vs-flat comparison).
"""

from __future__ import annotations

from typing import Any

from ..config import StudyConfig
from ..registry import Preset

DATASETS = ("mnist1d", "digits")
MODEL = {"model": "mlp", "model_options": {"widths": [32, 32]}, "lr": 0.1}
FULL_STEPS = {"mnist1d": 1500, "digits": 600}
QUICK_STEPS = {"mnist1d": 300, "digits": 200}
QUICK = {
    "checkpoints": 2,
    "track_coords": 200,
    "per_sample_examples": 16,
    "noise_batches": 4,
    "eval_every": 50,
}
FULL = {
    "checkpoints": 3,
    "track_coords": 1000,
    "per_sample_examples": 64,
    "noise_batches": 16,
    "eval_every": 50,
}
QUICK_OPTIONS: dict[str, Any] = {
    "paths": 6,
    "horizon": 50,
    "sgn_samples": 128,
    "lr_factors": [1.0, 2.0],
    "batch_sizes": [32, 128],
    "noise_factors": [0.5, 1.0, 2.0, 4.0],
    "arm_seeds": 3,
    "arm_steps": 40,
    "sharp_batch": 512,
    "sharp_paths": 12,
}
FULL_OPTIONS: dict[str, Any] = {
    "paths": 16,
    "horizon": 200,
    "sgn_samples": 512,
    "lr_factors": [1.0, 2.0],
    "batch_sizes": [32, 128],
    "noise_factors": [0.25, 0.5, 1.0, 2.0, 4.0],
    "arm_seeds": 5,
    "arm_steps": 200,
    "arms": ["constant", "lr-decay", "batch-increase", "lr-decay-small-batch"],
    "sharp_batch": 512,
    "sharp_paths": 32,
}


def _configs(quick: bool, seed: int) -> dict[str, StudyConfig]:
    out = {}
    for dataset in DATASETS:
        out[dataset] = StudyConfig(
            dataset=dataset,
            seed=seed,
            steps=(QUICK_STEPS if quick else FULL_STEPS)[dataset],
            batch_size=32,
            analyses=("training", "escape"),
            options={"escape": dict(QUICK_OPTIONS if quick else FULL_OPTIONS)},
            **MODEL,
            **(QUICK if quick else FULL),
        )
    return out


ESCAPE = Preset(
    "battash-escape",
    "Battash & Lindenbaum (2024): from a trained minimum, SGD vs the fitted per-parameter Lévy "
    "SDE vs a Gaussian SDE on the network's loss — exit times against the small-noise theory, "
    "exit directions by parameter, trapping over a horizon vs lr and batch size — and lr-decay "
    "vs batch-increase vs constant arms with a stated verdict on 'decay helps through reduced "
    "noise' — and a sharp-vs-flat comparison: minima trained with B = 32 and B = 512 to the same "
    "train loss, their Hessian sharpness, and escape from each at equal lr and B.",
    _configs,
)
