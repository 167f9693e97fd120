"""The statistics, spectra, variance and report layers import (and run) with torch unavailable."""

from __future__ import annotations

import subprocess
import sys

import pytest

# An import hook that refuses torch. (Setting sys.modules['torch'] = None would also work for our
# code, but makes scipy.stats' own optional-torch probing crash, which is not what we test.)
BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""

TORCH_FREE = [
    "gradnoise",
    "gradnoise.selection",
    "gradnoise.memory",
    "gradnoise.store",
    "gradnoise.cluster",
    "gradnoise.stats",
    "gradnoise.stats.powerlaw",
    "gradnoise.stats.stable",
    "gradnoise.stats.tail",
    "gradnoise.stats.gaussianity",
    "gradnoise.stats.noise_models",
    "gradnoise.stats.multitest",
    "gradnoise.spectra",
    "gradnoise.variance",
    "gradnoise.levy",
    "gradnoise.report",
    "gradnoise.study.registry",
    "gradnoise.study.context",
    "gradnoise.study.optim",
    "gradnoise.integrations",
]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True
    )


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_torch(module):
    proc = _run(f"import {module}\nassert 'torch' not in sys.modules\n")
    assert proc.returncode == 0, proc.stderr


def test_statistics_run_without_torch():
    proc = _run(
        "import numpy as np\n"
        "from gradnoise import stats, spectra, variance\n"
        "x = np.random.default_rng(0).pareto(1.5, size=(300, 3)) + 1\n"
        "assert stats.fit_power_law(x).alpha.shape == (3,)\n"
        "assert stats.fit_stable(x).alpha.shape == (3,)\n"
        "assert stats.normality_test(x).pvalue.shape == (3,)\n"
        "assert spectra.covariance_spectrum(x.T).shape == (2,)\n"
        "assert variance.gradient_variance(x).total > 0\n"
        "from gradnoise import levy\n"
        "r = levy.simulate_sde(lambda t: t, [0.0], alpha=1.5, scale=1, lr=0.1, steps=5, rng=0, n_paths=3)\n"
        "assert r.final.shape == (3, 1)\n"
        "assert 'torch' not in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_the_blocker_really_blocks_torch():
    proc = _run("import gradnoise.capture\n")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_top_level_torch_names_are_lazy():
    code = (
        "import sys, gradnoise\n"
        "assert 'torch' not in sys.modules\n"
        "gradnoise.per_sample_grads\n"
        "assert 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
