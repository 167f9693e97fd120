"""Presets of the spectra studies (Xie et al.): ``gradnoise reproduce xie-covariance`` and
``gradnoise reproduce xie-hessian`` (see :mod:`gradnoise.study.analyses.spectra`).

Both run the ``spectra`` analysis on an MLP (Xie et al.'s "FCN") trained by plain SGD on
``mnist1d`` and ``digits``. Full mode is paper-sized on a CPU (minutes): covariance spectra of
N ~ 2,000 per-sample gradients with CSN bootstrap p-values and a minibatch batch-size sweep
(``xie-covariance``); top-50 Hessian eigenvalues of the whole-train-set loss in float64, with
its eigengaps, Hutch++ trace, and a large-batch training arm (``xie-hessian``). ``--quick`` runs
tiny versions of the same studies (for CI; one large-batch arm, on digits).
"""

from __future__ import annotations

from typing import Any

from ..config import StudyConfig
from ..registry import Preset

DATASETS = ("mnist1d", "digits")
#: SGD steps at B = 32: 32 epochs of mnist1d (4,000 train examples) and 33 of digits (1,438);
#: both reach ~100 % train accuracy.
FULL_STEPS = {"mnist1d": 4000, "digits": 1500}
#: the store's own captures are kept small: these presets are about the spectra
FULL_STUDY = {
    "track_coords": 1000,
    "per_sample_examples": 64,
    "noise_batches": 16,
    "eval_every": 100,
    "record_every": 5,
}
QUICK_STUDY = {
    "steps": 30,
    "checkpoints": 2,
    "track_coords": 200,
    "per_sample_examples": 16,
    "noise_batches": 4,
    "eval_every": 10,
    "model_options": {"widths": [64]},
}

COVARIANCE_OPTIONS: dict[str, Any] = {
    "examples": 2000,
    "bootstrap": 1000,
    "stability_k": 10,
    "batch_sizes": [8, 32, 128, 512],
    "sweep_batches": 1024,
    "sweep_pool": 4000,
    "hessian": False,
}
COVARIANCE_QUICK: dict[str, Any] = {
    "examples": 64,
    "bootstrap": 50,
    "stability_k": 3,
    "batch_sizes": [4, 16],
    "sweep_batches": 32,
    "sweep_pool": 128,
    "hessian": False,
}
HESSIAN_OPTIONS: dict[str, Any] = {
    "examples": 512,
    "bootstrap": 1000,
    "batch_sizes": [],
    "hessian_k": 50,
    "hessian_examples": 0,  # the whole train split (capped per dataset below)
    "hessian_trace": 60,
}
HESSIAN_EXAMPLES = {"mnist1d": 2000, "digits": 0}
HESSIAN_QUICK: dict[str, Any] = {
    "examples": 48,
    "bootstrap": 50,
    "stability_k": 3,
    "batch_sizes": [],
    "hessian_k": 6,
    "hessian_examples": 128,
    "hessian_trace": 8,
}
#: the large-batch arm of ``xie-hessian`` (same number of SGD steps, same learning rate)
LARGE_BATCH = 512
LARGE_BATCH_QUICK = 64


def _study(
    dataset: str, quick: bool, seed: int, options: dict[str, Any], **extra: Any
) -> StudyConfig:
    size: dict[str, Any] = (
        dict(QUICK_STUDY)
        if quick
        else {**FULL_STUDY, "steps": FULL_STEPS[dataset], "checkpoints": 4}
    )
    size.update(extra)
    return StudyConfig(
        dataset=dataset,
        model="mlp",
        batch_size=size.pop("batch_size", 32),
        lr=0.1,
        seed=seed,
        analyses=("training", "spectra"),
        options={"spectra": options},
        **size,
    )


def _covariance(quick: bool, seed: int) -> dict[str, StudyConfig]:
    opts = COVARIANCE_QUICK if quick else COVARIANCE_OPTIONS
    return {d: _study(d, quick, seed, dict(opts)) for d in DATASETS}


def _hessian(quick: bool, seed: int) -> dict[str, StudyConfig]:
    def study(dataset: str, **extra: Any) -> StudyConfig:
        opts = dict(HESSIAN_QUICK if quick else HESSIAN_OPTIONS)
        if not quick:
            opts["hessian_examples"] = HESSIAN_EXAMPLES[dataset]
            extra["checkpoints"] = 3
        return _study(dataset, quick, seed, opts, **extra)

    large = LARGE_BATCH_QUICK if quick else LARGE_BATCH
    out = {dataset: study(dataset) for dataset in DATASETS}
    for dataset in ("digits",) if quick else DATASETS:  # quick: one large-batch arm
        out[f"{dataset}-B{large}"] = study(dataset, batch_size=large)
    return out


COVARIANCE = Preset(
    "xie-covariance",
    "Xie et al. (NeurIPS 2023): the covariance spectrum of per-sample gradients of a trained MLP "
    "(N = 2,000 examples on mnist1d, the 1,438 train examples of digits) follows a power law "
    "lambda_k ~ k^-s: rank plots with the fitted line, s, r2, KS and the CSN bootstrap p-value "
    "per checkpoint, against the model at initialisation, shuffled labels and a Gaussian matrix "
    "of the same shape and trace (Marchenko–Pastur); minibatch-gradient spectra for B = 8..512.",
    _covariance,
)
HESSIAN = Preset(
    "xie-hessian",
    "Xie et al. (2022; ICML 2025): the top Hessian eigenvalues of a well-trained network follow "
    "a power law with s near 1 and do not at initialisation: top-50 eigenvalues of the training "
    "loss (Lanczos on a float64 copy), their rank fit and eigengap fit, Hutch++ trace, trained "
    "vs init, and a large-batch training arm (B = 512, same steps and learning rate) against "
    "B = 32.",
    _hessian,
)
