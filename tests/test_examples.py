"""The examples a user would copy run at a tiny size and write a report with every analysis."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradnoise.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ANALYSES = {
    "resnet_adam_digits": {"training", "gradients", "tails", "noise_model", "spectra", "variance"},
    "transformer_lm": {"training", "gradients", "tails", "noise_model", "spectra", "variance"},
    "lightning_module": {"gradients", "tails", "noise_model", "spectra", "variance"},
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ANALYSES))
def test_example_runs_and_writes_a_report(name, tmp_path, capsys):
    if name == "lightning_module":
        pytest.importorskip(
            "lightning", reason="PyTorch Lightning is not installed: make test does"
        )
    _load(name).main(["--tiny", "--out", str(tmp_path / "run")])
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"] == str(tmp_path / "run" / "report.html")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["analyses"]) == ANALYSES[name]
    unavailable = {
        k: v["unavailable"] for k, v in summary["analyses"].items() if "unavailable" in v
    }
    assert not unavailable
    assert summary["checkpoints"] == [0, 6, 12] and printed["||G|| (last checkpoint)"] > 0
    if name == "transformer_lm":  # per-sequence study of a tied, dropout LM; re-rendered
        assert summary["data"]["input_shape"] == [8] and summary["probe"]["dropout"] == "eval"
        assert summary["analyses"]["spectra"]["hessian"]  # through attention's double backward
        (tmp_path / "run" / "report.html").unlink()
        result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
        assert result.exit_code == 0, result.output
