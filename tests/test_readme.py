"""The README's Python examples run as written (they are the documented API contract)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


TOML = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_study_toml_is_read_with_its_options(tmp_path):
    """The README's study.toml (a [study] table and an [options.tails] table) is read with its
    options, which are checked before training; a bad value in it is refused before step 1."""
    from typer.testing import CliRunner

    from gradnoise.cli import app
    from gradnoise.study import StudyConfig
    from gradnoise.study.registry import check_study

    assert len(TOML) == 1
    path = tmp_path / "study.toml"
    path.write_text(TOML[0])
    config = StudyConfig.from_toml(path)
    assert config.options == {"tails": {"n_boot": 99}}
    assert config.model == "resnet" and config.steps == 400 and "spectra" in config.analyses
    assert [a.name for a in check_study(config)] == list(config.analyses)

    path.write_text(TOML[0].replace("n_boot = 99", "n_boot = -1"))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "-q", "--config", str(path), "--out", str(out)])
    assert (
        result.exit_code == 2 and "[options.tails] n_boot must be an integer >= 0" in result.output
    )
    assert not out.exists()


def test_options_of_the_readme_layout_reach_the_run(tmp_path):
    """The same layout, shrunk to a quick run: summary.json records the options (it recorded
    ``{}`` when options in the [study] layout were ignored)."""
    from typer.testing import CliRunner

    from gradnoise.cli import app

    path = tmp_path / "study.toml"
    path.write_text(
        "[study]\nsteps = 3\nbatch_size = 8\ntrack_coords = 50\nper_sample_examples = 8\n"
        "noise_batches = 2\ncheckpoints = 2\nanalyses = ['training']\n\n"
        "[options.tails]\nn_boot = 19\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "-q", "--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["options"] == {"tails": {"n_boot": 19}}
