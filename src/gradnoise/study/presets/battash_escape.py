"""Preset ``gradnoise reproduce battash-escape``: escape from trained minima and the
learning-rate-decay question (Battash & Lindenbaum, AISTATS 2024; see
:mod:`gradnoise.study.analyses.escape`).

An MLP (widths 32, 32) trained by SGD (lr 0.1) on mnist1d and digits; from the last checkpoint
the ``escape`` analysis runs SGD, the fitted Lévy SDE and a Gaussian SDE on the network's loss
over an lr x batch-size grid, a noise sweep for the exit-time exponent, and the lr-decay arms.
The full version adds, per dataset, a minimum found with a large batch (B = 512: sharper by the
usual account) next to the small-batch one (B = 32), with the same escape grid, so that the two
minima are compared at equal lr and B. ``--quick`` runs the two small-batch configurations at a
small size (6 paths, 50-step horizons; about 50 s of CPU on one thread).
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
}


def _configs(quick: bool, seed: int) -> dict[str, StudyConfig]:
    out = {}
    for dataset in DATASETS:
        minima = {"": 32} if quick else {"-B32": 32, "-B512": 512}
        for suffix, batch in minima.items():
            steps = (QUICK_STEPS if quick else FULL_STEPS)[dataset]
            if batch > 32:  # 4x the small-batch run's epochs: a large batch fits more slowly
                steps = max(100, steps * 32 // batch * 4)
            out[dataset + suffix] = StudyConfig(
                dataset=dataset,
                seed=seed,
                steps=steps,
                batch_size=batch,
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
    "noise'. The full version compares minima found with B = 32 and B = 512 at equal lr and B; "
    "they differ in training progress too (compare L(θ*)).",
    _configs,
)
