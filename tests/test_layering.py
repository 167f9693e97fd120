"""The statistics, spectra and report layers must import with torch unavailable."""

import subprocess
import sys

import pytest

TORCH_FREE = ["gradnoise", "gradnoise.stats", "gradnoise.selection", "gradnoise.store"]
LATER = ["gradnoise.spectra", "gradnoise.report", "gradnoise.variance"]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("module", TORCH_FREE + [m for m in LATER if _importable(m)])
def test_imports_without_torch(module):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        f"import {module}\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_top_level_torch_names_are_lazy():
    code = (
        "import sys, gradnoise\n"
        "assert 'torch' not in sys.modules\n"
        "gradnoise.per_sample_grads\n"
        "assert 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
