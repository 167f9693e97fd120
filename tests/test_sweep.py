"""gradnoise sweep: one study per grid point, then one comparison report."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from cases import TINY_STUDY
from gradnoise.cli import app
from gradnoise.errors import ConfigError
from gradnoise.study import StudyConfig
from gradnoise.study.sweep import parse_params, sweep_configs


def test_cli_sweep_runs_the_grid_and_compares(tmp_path):
    toml = tmp_path / "study.toml"
    settings = dict(TINY_STUDY, steps=8, checkpoints=2, analyses=["training"])
    toml.write_text(
        "\n".join(
            f"{k} = {json.dumps(v)}" if not isinstance(v, str) else f'{k} = "{v}"'
            for k, v in settings.items()
        )
    )
    out = tmp_path / "sweep"
    args = ["sweep", "--param", "lr=0.1,0.03", "--param", "batch_size=8,16"]
    result = CliRunner().invoke(app, [*args, "--config", str(toml), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in out.iterdir() if p.name != "compare")
    assert runs == [
        "lr=0.03_batch_size=16",
        "lr=0.03_batch_size=8",
        "lr=0.1_batch_size=16",
        "lr=0.1_batch_size=8",
    ]
    for name in runs:  # each run trained with its own point of the grid, the rest from --config
        config = json.loads((out / name / "summary.json").read_text())["config"]
        lr, batch = re.match(r"lr=([\d.]+)_batch_size=(\d+)", name).groups()
        assert config["lr"] == float(lr) and config["batch_size"] == int(batch)
        assert config["steps"] == 8
    page = (out / "compare" / "report.html").read_text(encoding="utf-8")
    title = re.search(r"<title>(.*)</title>", page).group(1)
    assert "lr 0.1, batch_size 8" in title or "batch_size 8, lr 0.1" in title
    assert len(re.findall(r'href="\.\./[^"]+/report\.html"', page)) == 4


@pytest.mark.parametrize(
    "specs, match",
    [
        ([], "at least one --param"),
        (["lr"], "write NAME=V1,V2"),
        (["learning_rate=0.1,0.2"], "no such setting"),
        (["analyses=training,tails"], "only single-valued settings"),
        (["lr=0.1,,0.2"], "an empty value"),
        (["batch_size=32,big"], "'big' is not an integer"),
        (["lr=0.1,0.1"], "listed twice"),
        (["lr=0.1", "lr=0.2"], "given twice"),
    ],
)
def test_bad_params_are_refused(specs, match):
    with pytest.raises(ConfigError, match=match):
        parse_params(specs)


def test_every_point_is_checked_before_anything_runs():
    with pytest.raises(ConfigError, match=r"sweep point lr=-1\.0"):
        sweep_configs(StudyConfig(), parse_params(["lr=0.1,-1"]))
    with pytest.raises(ConfigError, match="at least two runs"):
        sweep_configs(StudyConfig(), parse_params(["lr=0.1"]))


def test_cli_sweep_refuses_a_used_directory(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "x").write_text("keep")
    result = CliRunner().invoke(
        app, ["sweep", "--param", "lr=0.1,0.2", "--out", str(tmp_path / "old")]
    )
    assert result.exit_code == 2
    assert "exists and is not empty" in result.output
    assert (tmp_path / "old" / "x").read_text() == "keep"
