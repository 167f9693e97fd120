import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    """Tests are deterministic: seed the global generators that torch layers draw from."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - only tests touch the global state
    yield


@pytest.fixture(scope="session")
def full_tiny_report(tmp_path_factory):
    """``report.html`` of one tiny study with every built-in analysis (about 15 s), shared by
    the report's text and browser tests."""
    from cases import FULL_TINY_STUDY
    from gradnoise.study import StudyConfig, run_study

    run = run_study(StudyConfig(**FULL_TINY_STUDY), tmp_path_factory.mktemp("full") / "run")
    return run / "report.html"


@pytest.fixture(scope="session")
def compare_report(full_tiny_report, tmp_path_factory):
    """``gradnoise compare`` of the full tiny run and one with another learning rate (training
    and variance only): the comparison report's directory."""
    from typer.testing import CliRunner

    from cases import TINY_STUDY
    from gradnoise.cli import app
    from gradnoise.study import StudyConfig, run_study

    root = tmp_path_factory.mktemp("compare")
    config = StudyConfig(
        **dict(TINY_STUDY, lr=0.03),
        analyses=("training", "variance"),
        options={"variance": {"every": 4, "draws": 4}},
    )
    other = run_study(config, root / "slow")
    result = CliRunner().invoke(
        app, ["compare", str(full_tiny_report.parent), str(other), "--out", str(root / "cmp")]
    )
    assert result.exit_code == 0, result.output
    return root / "cmp"
