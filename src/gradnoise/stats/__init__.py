"""Statistics on numpy arrays (no torch): tails, noise models, Gaussianity, multiple testing.

Everything here accepts numpy arrays (torch tensors via ``np.asarray``) and never imports torch.
Submodules load on first use of one of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._common import StatResult, as_generator
from .multitest import MultipleTestResult, adjust_pvalues, multiple_test

_LAZY = {
    # Clauset–Shalizi–Newman power laws (powerlaw.py)
    "fit_power_law": "powerlaw",
    "power_law_test": "powerlaw",
    "compare_tails": "powerlaw",
    "PowerLawFit": "powerlaw",
    "PowerLawTest": "powerlaw",
    "TailComparison": "powerlaw",
    # alpha-stable laws, tail indices, Gaussianity, noise-model comparison
    "sample_stable": "stable",
    "fit_stable": "stable",
    "tail_index": "tail",
    "normality_test": "gaussianity",
    "projection_normality_test": "gaussianity",
    "sas_logpdf": "stable",
    "sas_cdf": "stable",
    "compare_noise_models": "noise_models",
}

__all__ = [
    "MultipleTestResult",
    "StatResult",
    "adjust_pvalues",
    "as_generator",
    "multiple_test",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
