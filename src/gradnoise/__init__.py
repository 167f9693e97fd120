"""gradnoise: measure, test and draw the structure of stochastic gradient noise.

Layers (dependencies point one way): ``gradnoise.stats`` (numpy/scipy, no torch) ->
``gradnoise.capture`` (torch, no statistics) -> ``gradnoise.study`` and the CLI (compose them) ->
``gradnoise.report`` (plots and HTML from stored runs, no torch).

Importing ``gradnoise`` does not import torch; the torch-side names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_LAZY = {
    "per_sample_grads": "gradnoise.capture",
    "full_grad": "gradnoise.capture",
    "minibatch_grads": "gradnoise.capture",
    "gradient_noise": "gradnoise.capture",
    "iter_per_sample_grads": "gradnoise.capture",
    "iter_minibatch_grads": "gradnoise.capture",
    "parse_memory": "gradnoise.memory",
    "select_params": "gradnoise.capture",
    "audit_model": "gradnoise.capture",
    "Recorder": "gradnoise.recorder",
    # the whole study inside any training loop (issue: bring your own model)
    "Probe": "gradnoise.probe",
    "analyze": "gradnoise.study.analyze",
    "open_run": "gradnoise.store",
    # one run from many writers (issue: scale)
    "consolidate_runs": "gradnoise.store",
    "ParamSelection": "gradnoise.selection",
    "load_dataset": "gradnoise.datasets",
    "build_model": "gradnoise.models",
    # spectra and curvature from a model (issue: spectra)
    "covariance_spectrum": "gradnoise.curvature",
    "hessian_eigs": "gradnoise.curvature",
    "hessian_trace": "gradnoise.curvature",
    "hessian_density": "gradnoise.curvature",
    "per_sample_gram": "gradnoise.curvature",
    "spectrum_baselines": "gradnoise.curvature",
    # stratified minibatch sampling (issue: gradient variance)
    "GradientClusteringSampler": "gradnoise.clustering",
    "GradientClustering": "gradnoise.clustering",
    "compare_estimators": "gradnoise.clustering",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradnoise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
