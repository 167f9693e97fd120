"""The ``tails`` analysis (Xie et al. power-law battery) in the study pipeline, and its preset."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import gradnoise
from cases import TINY_STUDY
from gradnoise.cli import app
from gradnoise.stats import fit_power_law
from gradnoise.study import StudyConfig, run_study
from gradnoise.study.analyses import tails
from gradnoise.study.context import RunView, StudyContext, derive_seed
from gradnoise.study.registry import get_analysis, get_preset
from gradnoise.study.runner import pinned_threads

OPTIONS = {"min_tail": 10, "n_boot": 9, "boot_coords": 40, "sgn_batches": 48, "matched_samples": 4}
TINY = dict(
    **TINY_STUDY,
    model_options={"widths": [128, 64]},
    analyses=("training", "tails"),
    options={"tails": OPTIONS},
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_study(StudyConfig(**TINY), tmp_path_factory.mktemp("tails") / "run")


def _ctx(run_dir, **options):
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = StudyConfig(**{**TINY, "options": {"tails": {**OPTIONS, **options}}})
    data = gradnoise.load_dataset("digits", seed=0)
    ckpts = {s: run_dir / f"checkpoints/step_{s:07d}.pt" for s in summary["checkpoints"]}
    return StudyContext(cfg, run_dir, data, ckpts, np.empty(0))


def _rows(results):
    return {r["key"]: r for r in results["families"]}


def _fit(values, min_tail=10):
    v = np.abs(np.asarray(values, dtype=np.float64))
    return fit_power_law(v[v > 0], min_tail=min_tail)


def test_section_figures_and_summary(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    res = summary["analyses"]["tails"]
    rows = _rows(res)
    assert set(rows) == {
        "dim_minibatch/model",
        "dim_minibatch/layer",
        "dim_full/model",
        "dim_full/layer",
        "dim_sgn/model",
        "dim_sgn/layer",
        "dim_minibatch_matched",
        "iter_grad",
        "iter_sgn",
    }  # no windows: 20 steps are too few
    assert (
        res["settings"]["sgn_from_store"] is False
        and "recomputed: 48" in res["settings"]["sgn_source"]
    )
    assert rows["dim_full/model"]["samples"] == 2 and rows["dim_full/layer"]["samples"] == 12
    assert rows["iter_grad"]["samples"] == 500 and rows["iter_sgn"]["samples"] == 1000
    assert rows["dim_minibatch_matched"]["samples"] == 8
    assert rows["iter_grad"]["bootstrapped"] == min(40, rows["iter_grad"]["tested"])
    for r in rows.values():
        assert r["tested"] + r["untestable"] == r["samples"]
        lr = r["likelihood_ratio"]["exponential"]
        assert abs(lr["power_law"] + lr["alternative"] + lr["inconclusive"] - 1) < 1e-12
    for stem in ("ccdf_dimension", "ccdf_iteration", "alpha", "fractions"):
        assert (tiny_run / f"figures/tails_{stem}.png").exists(), stem
    html = (tiny_run / "report.html").read_text()
    assert "Power-law tails (Xie et al.)" in html and html.count("data:image/png;base64,") == 5
    assert "KS &lt; 1.358/√n_tail" in html and "recomputed: 48 minibatches" in html
    line = tails.headline(res)
    assert list(line) == [f"PL plausible: {label}" for _, label in tails.HEADLINE]
    r = rows["iter_grad"]
    assert line["PL plausible: iter-wise |g_t|"].startswith(
        f"{r['plausible'] / r['bootstrapped']:.2f} ({r['plausible']}/{r['bootstrapped']}); "
        f"KS rule {r['naive'] / r['tested']:.2f}"
    )


def test_dimension_wise_full_gradient_matches_the_library(tiny_run):
    """|G| from the saved checkpoints, fitted directly: same xmin/alpha/KS as the stored
    per-sample numbers, and the dropped zeros are the exact zeros of G."""
    ctx = _ctx(tiny_run)
    arrays = RunView.load(tiny_run, "tails").arrays()
    res = RunView.load(tiny_run, "tails").results
    x, y = ctx.train_tensors
    zeros = 0
    for j, step in enumerate(sorted(ctx.checkpoints)):
        with pinned_threads(ctx.config.threads):  # float sums depend on the thread count
            g = gradnoise.full_grad(ctx.load_model(step), ctx.loss_fn, (x, y), batch_size=512)
        g = g.numpy()
        zeros += int((g == 0).sum())
        fit = _fit(g)
        assert arrays["dim_full/model/step"][j] == step
        assert arrays["dim_full/model/xmin"][j] == fit.xmin
        np.testing.assert_allclose(arrays["dim_full/model/alpha"][j], fit.alpha, rtol=1e-12)
        np.testing.assert_allclose(arrays["dim_full/model/ks"][j], fit.ks, rtol=1e-12)
        w = g[: 64 * 128]  # the first parameter tensor, 1.weight
        k = np.flatnonzero(
            (arrays["dim_full/layer/step"] == step) & (arrays["dim_full/layer/layer"] == 0)
        )[0]
        np.testing.assert_allclose(arrays["dim_full/layer/alpha"][k], _fit(w).alpha, rtol=1e-12)
    assert zeros > 0  # digits has pixels that are 0 in every image
    assert _rows(res)["dim_full/model"]["dropped_nonpositive"] == zeros


def test_iteration_wise_numbers_match_the_library(tiny_run):
    """Recompute the iteration-wise naive-rule fraction and a few alphas from the store."""
    run = gradnoise.open_run(tiny_run)
    res = RunView.load(tiny_run, "tails").results
    arrays = RunView.load(tiny_run, "tails").arrays()
    g = np.abs(run.grads.astype(np.float64))
    nonzero = (g > 0).sum(axis=0)
    distinct = np.array([np.unique(c[c > 0]).size for c in g.T])
    testable = (nonzero >= 10) & (distinct >= 3)
    row = _rows(res)["iter_grad"]
    assert row["tested"] == int(testable.sum()) and row["untestable"] == int((~testable).sum())
    assert row["dropped_nonpositive"] == int((g == 0).sum())
    naive = 0
    for j in np.flatnonzero(testable):
        fit = _fit(g[:, j])
        naive += fit.ks < 1.358 / np.sqrt(fit.n_tail)
        if j % 50 == 0:
            np.testing.assert_allclose(arrays["iter_grad/alpha"][j], fit.alpha, rtol=1e-12)
    assert row["naive"] == naive
    assert row["fraction_naive"] == naive / testable.sum()


def test_per_coordinate_sgn_recomputed_and_atoms_dropped(tiny_run):
    """iter_sgn at the last checkpoint: g_B over the tracked coordinates from the documented
    seed, minus G; values where g_B == 0 exactly are dropped (xi = -G there)."""
    ctx = _ctx(tiny_run)
    run = gradnoise.open_run(tiny_run)
    arrays = RunView.load(tiny_run, "tails").arrays()
    step = max(ctx.checkpoints)
    model = ctx.load_model(step)
    x, y = ctx.train_tensors
    g_b = gradnoise.minibatch_grads(
        model,
        ctx.loss_fn,
        (x, y),
        batch_size=16,
        num_batches=48,
        seed=ctx.seed_for(f"tails-sgn-{step}"),
        params=run.selection,
    )
    full = gradnoise.full_grad(model, ctx.loss_fn, (x, y), batch_size=512, params=run.selection)
    xi = (g_b - full).numpy()
    atoms = (g_b == 0).numpy()
    assert atoms.any()
    c = run.selection.num_columns
    checked = 0
    for j in range(0, c, 25):
        v = np.where(atoms[:, j], 0.0, xi[:, j])
        if (v != 0).sum() < 10 or np.unique(np.abs(v[v != 0])).size < 3:
            assert not arrays["iter_sgn/tested"][c + j]
            continue
        fit = _fit(v)
        assert arrays["iter_sgn/n"][c + j] == (v != 0).sum()
        np.testing.assert_allclose(arrays["iter_sgn/alpha"][c + j], fit.alpha, rtol=1e-6)
        checked += 1
    assert checked >= 5


def test_store_snapshots_are_used_when_large_enough(tiny_run, tmp_path):
    """With sgn_batches <= the stored K the analysis tests the store's SGN snapshots and drops
    the minibatches whose gradient is exactly 0 at a coordinate."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    ctx = _ctx(copy, sgn_batches=8, min_tail=5, matched_samples=0, n_boot=0)
    res = tails.compute(ctx)
    assert res["settings"]["sgn_from_store"] is True
    assert "gradient store" in res["settings"]["sgn_source"]
    run = gradnoise.open_run(copy)
    x, y = ctx.train_tensors
    dropped = 0
    for step in sorted(ctx.checkpoints):  # the recorder's minibatches (runner.py, checkpoint())
        g_b = gradnoise.minibatch_grads(
            ctx.load_model(step),
            ctx.loss_fn,
            (x, y),
            batch_size=16,
            num_batches=8,
            seed=derive_seed(0, f"noise-{step}") % 2**31,
            params=run.selection,
        )
        dropped += int((g_b == 0).sum())
    assert _rows(res)["iter_sgn"]["dropped_nonpositive"] == dropped > 0
    assert _rows(res)["iter_sgn"]["bootstrapped"] == 0


def test_report_rerenders_without_torch(tiny_run, tmp_path):
    """``gradnoise report`` re-renders the section from stored data, with torch unimportable."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from typer.testing import CliRunner\n"
        "from gradnoise.cli import app\n"
        f"result = CliRunner().invoke(app, ['report', {str(copy)!r}])\n"
        "assert result.exit_code == 0, result.output\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (copy / "figures/tails_fractions.png").exists()
    assert "Power-law tails" in (copy / "report.html").read_text()


def test_same_seed_gives_identical_summary(tiny_run, tmp_path):
    again = run_study(StudyConfig(**TINY), tmp_path / "again")
    assert (again / "summary.json").read_bytes() == (tiny_run / "summary.json").read_bytes()


def test_bad_options_are_named(tiny_run):
    with pytest.raises(ValueError, match=r"\[options.tails\]: unknown setting\(s\) 'nboot'"):
        tails.compute(_ctx(tiny_run, nboot=3))
    with pytest.raises(ValueError, match="sgn_batches must be an integer >= 1"):
        tails.compute(_ctx(tiny_run, sgn_batches=0))
    with pytest.raises(ValueError, match=r"level must be a finite number in \(0, 1\)"):
        tails.compute(_ctx(tiny_run, level=1.0))


def test_registered_and_quick_preset_runs(tmp_path):
    assert get_analysis("tails") is tails.ANALYSIS and tails.ANALYSIS.headline is not None
    configs = get_preset("xie-tails").configs(False, 0)
    assert set(configs) == {"mnist1d", "digits"}
    assert configs["mnist1d"].options["tails"]["n_boot"] == 49
    out = tmp_path / "p"
    result = CliRunner().invoke(app, ["reproduce", "xie-tails", "--quick", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    assert "PL plausible: dim-wise |g_B| (per layer)" in index
    assert "PL plausible: iter-wise |g_t|" in index and "PL plausible: per-coord SGN" in index
    for key in ("mnist1d", "digits"):
        summary = json.loads((out / key / "summary.json").read_text())
        assert summary["config"]["dataset"] == key
        assert summary["analyses"]["tails"]["settings"]["n_boot"] == 9


def test_a_budget_caps_dimension_wise_samples_and_says_so(tiny_run, tmp_path):
    """Under max_memory a dimension-wise sample holds at most max_memory // 480 values (a seeded
    random subset of the coordinates); the row and the table say so; without one, all."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    ctx = _ctx(copy, min_tail=5, matched_samples=0, n_boot=0)
    cap = 5000
    ctx.config = dataclasses.replace(ctx.config, max_memory=cap * 2 * tails.BATTERY_BYTES_PER_VALUE)
    res = tails.compute(ctx)
    rows = _rows(res)
    p = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10  # every coordinate of the MLP
    assert cap < p
    for fam in ("dim_full", "dim_minibatch", "dim_sgn"):
        assert rows[f"{fam}/model"]["values_per_sample"] == cap
        assert rows[f"{fam}/model"]["subsampled"] == {"samples": 2, "max_values": cap}
        # per tensor: the two weight matrices (8192 values each) at both checkpoints
        assert rows[f"{fam}/layer"]["subsampled"] == {"samples": 4, "max_values": cap}
    assert "seeded random subset of coordinates" in tails._values_cell(rows["dim_full/model"])
    unbudgeted = _rows(json.loads((tiny_run / "summary.json").read_text())["analyses"]["tails"])
    assert unbudgeted["dim_full/model"]["values_per_sample"] == p
    assert "subsampled" not in unbudgeted["dim_full/model"]
