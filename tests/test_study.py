"""The default study, its determinism, the report, and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import gradnoise
from cases import TINY_STUDY
from gradnoise.cli import app
from gradnoise.report import Section
from gradnoise.study import Analysis, StudyConfig, register_analysis, run_study
from gradnoise.study.registry import available_analyses, get_analysis

TINY = dict(
    **TINY_STUDY,
    analyses=("training", "gradients"),
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_study(StudyConfig(**TINY), tmp_path_factory.mktemp("study") / "run")


def test_run_directory_contents(tiny_run):
    for name in [
        "summary.json",
        "manifest.json",
        "report.html",
        "grads.zarr",
        "figures/training_curves.png",
        "figures/gradients_norms.png",
        "figures/gradients_per_sample_norms.png",
        "figures/gradients_values.png",
        "checkpoints/step_0000000.pt",
        "checkpoints/step_0000020.pt",
        "analyses/gradients.npz",
    ]:
        assert (tiny_run / name).exists(), name
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["checkpoints"] == [0, 20]
    assert set(summary["analyses"]) == {"training", "gradients"}
    rows = summary["analyses"]["gradients"]["checkpoints"]
    assert all(r["full_grad_norm"] > 0 and r["sgn_norm_mean"] > 0 for r in rows)
    run = gradnoise.open_run(tiny_run)
    assert run.length == 20 and run.grads.shape == (20, 500)
    assert sorted(run.per_sample) == [0, 20] and run.per_sample[0].shape == (32, 500)
    assert sorted(run.noise) == [0, 20] and run.noise[20].shape == (8, 500)
    html = (tiny_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Gradient norms and distributions" in html


def test_same_seed_gives_identical_summary(tiny_run, tmp_path):
    again = run_study(StudyConfig(**TINY), tmp_path / "again")
    assert (again / "summary.json").read_bytes() == (tiny_run / "summary.json").read_bytes()
    other = run_study(StudyConfig(**{**TINY, "seed": 1}), tmp_path / "other")
    assert (other / "summary.json").read_bytes() != (tiny_run / "summary.json").read_bytes()


def test_checkpoint_reproduces_recorded_per_sample_gradients(tiny_run):
    """The saved step-20 model and probe examples give back the stored per-sample snapshot."""
    import torch

    from gradnoise.datasets import as_tensors
    from gradnoise.study.context import StudyContext

    cfg = StudyConfig(**TINY)
    data = gradnoise.load_dataset("digits", seed=0)
    ctx = StudyContext(
        cfg, tiny_run, data, {20: tiny_run / "checkpoints/step_0000020.pt"}, np.empty(0)
    )
    model = ctx.load_model(20)
    x, y = as_tensors(data.train)
    probe = torch.as_tensor(np.sort(ctx.rng("probe").choice(len(x), 32, replace=False)))
    run = gradnoise.open_run(tiny_run)
    again = gradnoise.per_sample_grads(
        model, torch.nn.CrossEntropyLoss(), x[probe], y[probe], params=run.selection
    )
    np.testing.assert_allclose(run.per_sample[20], again.numpy(), rtol=1e-5, atol=1e-7)


def test_report_rerenders_without_training(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "report.html").exists() and (copy / "figures/gradients_values.png").exists()
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished gradnoise run" in result.output


def test_cli_run_with_toml_config_and_npz_data(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(
        tmp_path / "mine.npz", X=digits.data[:300].reshape(-1, 8, 8) / 16, y=digits.target[:300]
    )
    (tmp_path / "study.toml").write_text(
        "[study]\nmodel = 'lenet'\nsteps = 6\nbatch_size = 8\ntrack_coords = 100\n"
        "per_sample_examples = 8\nnoise_batches = 4\ncheckpoints = 2\nanalyses = ['training']\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--config",
            str(tmp_path / "study.toml"),
            "--data",
            str(tmp_path / "mine.npz"),
            "--seed",
            "3",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["config"]["model"] == "lenet" and summary["config"]["seed"] == 3
    assert summary["data"]["train"] == 240 and summary["data"]["input_shape"] == [8, 8]


def test_thread_count_is_pinned_recorded_and_restored(tiny_run, tmp_path):
    """Float sums split across threads add in another order, so the study pins torch and BLAS
    to ``config.threads`` (1 by default): a process on another thread count gets the same bytes,
    the manifest records the counts, and the process's own setting comes back."""
    import torch

    before = torch.get_num_threads()  # tiny_run ran at this process default
    other = 1 if before > 1 else 2
    torch.set_num_threads(other)
    try:
        again = run_study(StudyConfig(**TINY), tmp_path / "again")
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
    assert (again / "summary.json").read_bytes() == (tiny_run / "summary.json").read_bytes()
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["threads_setting"] == 1 and manifest["threads"]["torch"] == 1
    libraries = manifest["threads"]["libraries"]
    assert {lib["api"] for lib in libraries} >= {"openmp"} and len(libraries) >= 2
    assert all(lib["threads"] == 1 for lib in libraries), libraries


def test_threads_option_from_the_cli(tmp_path):
    args = ["--steps", "3", "--analyses", "training", "--threads", "2"]
    result = CliRunner().invoke(app, ["run", "-q", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "r/manifest.json").read_text())
    assert manifest["threads_setting"] == 2 and manifest["threads"]["torch"] == 2
    assert json.loads((tmp_path / "r/summary.json").read_text())["config"]["threads"] == 2


def test_out_directory_must_be_new(tiny_run):
    with pytest.raises(gradnoise.errors.GradnoiseError, match="not empty"):
        run_study(StudyConfig(**TINY), tiny_run)


def test_registering_an_analysis(tmp_path):
    def compute(ctx):
        return {"n_checkpoints": len(ctx.checkpoints)}

    def render(view):
        from gradnoise.report import Section

        return Section(
            "custom", "Custom", paragraphs=[f"{view.results['n_checkpoints']} checkpoints"]
        )

    register_analysis(Analysis("custom", "Custom", compute, render))
    assert "custom" in available_analyses() and get_analysis("custom").title == "Custom"
    with pytest.raises(ValueError, match="exists"):
        register_analysis(Analysis("custom", "Custom", compute, render))
    with pytest.raises(ValueError, match="exists"):
        register_analysis(Analysis("training", "x", compute, render))
    run = run_study(StudyConfig(**{**TINY, "analyses": ("custom",)}), tmp_path / "r")
    assert "2 checkpoints" in (run / "report.html").read_text()


def test_preset_runs_each_config_and_writes_an_index(tmp_path):
    from gradnoise.study.registry import Preset, register_preset

    def headline(results):
        return {"recorded steps": results["recorded_steps"]}

    register_analysis(
        Analysis(
            "steps_only",
            "Steps",
            lambda ctx: {"recorded_steps": ctx.run.length},
            lambda view: Section("s", "Steps"),
            headline=headline,
        )
    )
    configs = {
        "a": StudyConfig(**{**TINY, "analyses": ("steps_only",)}),
        "b": StudyConfig(**{**TINY, "steps": 10, "analyses": ("steps_only",)}),
    }
    register_preset(Preset("tiny-preset", "two tiny runs", lambda quick, seed: configs))
    result = CliRunner().invoke(
        app, ["reproduce", "tiny-preset", "--out", str(tmp_path / "p"), "-q"]
    )
    assert result.exit_code == 0, result.output
    index = (tmp_path / "p/index.html").read_text()
    assert "a/report.html" in index and "b/report.html" in index and "recorded steps" in index
    assert (tmp_path / "p/a/report.html").exists() and (tmp_path / "p/b/summary.json").exists()
    assert 'href="compare/report.html"' in index  # the runs overlaid (gradnoise compare)
    assert "gradnoise compare: " in (tmp_path / "p/compare/report.html").read_text()
    (tmp_path / "p/index.html").unlink()
    assert CliRunner().invoke(app, ["report", str(tmp_path / "p")]).exit_code == 0
    assert (tmp_path / "p/index.html").exists()
    result = CliRunner().invoke(app, ["reproduce", "no-such-preset"])
    assert result.exit_code == 2 and "unknown preset" in result.output


def test_during_training_hooks_measure_without_perturbing_training(tiny_run, tmp_path):
    import torch

    def measure(ctx, step, model):
        if step % 5 == 0:  # a measurement that runs forward/backward passes of its own
            x, y = ctx.train_tensors
            g = gradnoise.full_grad(model, ctx.loss_fn, (x[:64], y[:64]))
            ctx.scratch.setdefault("hooked", []).append([step, float(torch.linalg.vector_norm(g))])

    register_analysis(
        Analysis(
            "hooked",
            "Hooked",
            lambda ctx: {"seen": ctx.scratch["hooked"]},
            lambda view: Section("hooked", "Hooked"),
            during_training=measure,
        )
    )
    run = run_study(
        StudyConfig(**{**TINY, "analyses": ("training", "gradients", "hooked")}), tmp_path / "h"
    )
    summary = json.loads((run / "summary.json").read_text())
    assert [s for s, _ in summary["analyses"]["hooked"]["seen"]] == [0, 5, 10, 15, 20]
    base = json.loads((tiny_run / "summary.json").read_text())
    assert summary["analyses"]["training"] == base["analyses"]["training"]
    np.testing.assert_array_equal(gradnoise.open_run(run).grads, gradnoise.open_run(tiny_run).grads)


def test_options_for_an_unknown_analysis_are_refused_before_training(tmp_path):
    config = StudyConfig(**{**TINY, "options": {"tials": {"n_boot": 99}}})
    with pytest.raises(
        ValueError, match=r"options given for \[.tials.\], which is not an analysis.*misspelt"
    ):
        run_study(config, tmp_path / "r")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
