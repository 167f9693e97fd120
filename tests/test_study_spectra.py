"""The spectra analysis (Xie et al.) in the study pipeline, and its presets.

Every number of the summary that can be recomputed independently is: covariance spectra from
materialised per-sample gradients, minibatch spectra from explicit minibatch backward passes, the
top-k Hessian from a dense float64 Hessian (torch.autograd.functional.hessian), the fits from the
saved eigenvalues.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gradnoise
from cases import TINY_STUDY
from gradnoise.cli import app
from gradnoise.spectra import covariance_spectrum, fit_rank_power_law
from gradnoise.stats import power_law_test
from gradnoise.study import StudyConfig, run_study
from gradnoise.study.analyses.spectra import (
    DEFAULTS,
    TITLE,
    default_window,
    fit_spectrum,
    headline,
    minibatch_gram,
    resolve_options,
)
from gradnoise.study.context import StudyContext
from gradnoise.study.registry import get_analysis, get_preset

TINY = dict(
    **TINY_STUDY,
    model_options={"widths": [24]},  # P = 1,810: a dense Hessian is the oracle
)
OPTIONS = {
    "examples": 64,
    "bootstrap": 40,
    "stability_k": 3,
    "batch_sizes": [4, 16],
    "sweep_batches": 40,
    "sweep_pool": 200,
    "hessian_k": 6,
    "hessian_examples": 160,
    "hessian_trace": 10,
}


def _config() -> StudyConfig:
    return StudyConfig(**TINY, analyses=("training", "spectra"), options={"spectra": OPTIONS})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run = run_study(_config(), tmp_path_factory.mktemp("spectra") / "run")
    summary = json.loads((run / "summary.json").read_text())
    with np.load(run / "analyses" / "spectra.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return run, summary, summary["analyses"]["spectra"], arrays


@pytest.fixture(scope="module")
def ctx(tiny):
    run, summary, _, _ = tiny
    data = gradnoise.load_dataset("digits", seed=0)
    checkpoints = {s: run / f"checkpoints/step_{s:07d}.pt" for s in summary["checkpoints"]}
    return StudyContext(_config(), run, data, checkpoints, np.empty(0))


def _flat_grad(model, loss):
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return torch.cat([g.reshape(-1) for g in grads])


def test_outputs_and_report(tiny):
    run, _summary, res, arrays = tiny
    assert get_analysis("spectra").title == TITLE
    for name in ("covariance", "batch_sweep", "hessian"):
        assert (run / "figures" / f"spectra_{name}.png").stat().st_size > 10_000
    html = (run / "report.html").read_text()
    assert TITLE in html and html.count("spectra_") == 0  # figures are embedded, not linked
    assert html.count("data:image/png;base64,") == 1 + 3  # training + spectra figures
    assert res["examples"] == 64 and res["num_params"] == 64 * 24 + 24 + 24 * 10 + 10
    kinds = [r["kind"] for r in res["covariance"]]
    assert kinds == ["init", "trained", "shuffled", "random", "mp"]
    for row in res["covariance"]:
        assert row["rank"] == 63 and arrays[row["key"]].shape == (63,)
        assert [row["fit"]["k_min"], row["fit"]["k_max"]] == default_window(63) == [1, 15]
        assert 0 <= row["fit"]["pvalue"] <= 1 and row["fit"]["n_boot"] == 40
    assert [h["step"] for h in res["hessian"]] == [0, 20]
    assert all(h["dtype"] == "float64" and h["k"] == 6 for h in res["hessian"])
    assert res["options"] == {
        **DEFAULTS,
        **OPTIONS,
        "window_fractions": [1 / 16, 1 / 8, 1 / 4, 1 / 2],
    }


def test_covariance_spectra_match_materialised_per_sample_gradients(tiny, ctx):
    _, _, _res, arrays = tiny
    x, y = ctx.train_tensors
    idx = torch.as_tensor(arrays["example_index"])
    assert idx.numel() == 64 and np.unique(arrays["example_index"]).size == 64
    for step in (0, 20):
        model = ctx.load_model(step).double()
        G = gradnoise.per_sample_grads(model, ctx.loss_fn, x[idx].double(), y[idx])
        oracle = covariance_spectrum(G.numpy())  # the [N, P] matrix, float64
        saved = arrays[f"cov_step_{step}"]
        np.testing.assert_allclose(saved, oracle, rtol=0, atol=1e-5 * oracle[0])
    # shuffled labels: a permutation of the same labels, same model, same inputs
    shuffled = arrays["shuffled_targets"]
    assert sorted(shuffled) == sorted(y[idx].tolist()) and not np.array_equal(shuffled, y[idx])
    model = ctx.load_model(20).double()
    G = gradnoise.per_sample_grads(model, ctx.loss_fn, x[idx].double(), torch.as_tensor(shuffled))
    oracle = covariance_spectrum(G.numpy())
    np.testing.assert_allclose(arrays["cov_shuffled"], oracle, rtol=0, atol=1e-5 * oracle[0])


def test_summary_fits_are_the_fits_of_the_saved_spectra(tiny):
    _, _, res, arrays = tiny
    for row in res["covariance"]:
        fit, lam = row["fit"], arrays[row["key"]]
        ref = fit_rank_power_law(lam, k_min=fit["k_min"], k_max=fit["k_max"])
        assert (fit["s"], fit["r2"], fit["ks"], fit["s_mle"]) == (ref.s, ref.r2, ref.ks, ref.s_mle)
        assert fit["beta"] == pytest.approx(1 + 1 / fit["s"], rel=1e-12)
        assert fit["ks_critical"] == pytest.approx(1.358 / np.sqrt(ref.n_tail))
        # the bootstrap tests the same Clauset fit (same min_tail) as the rank fit reports
        test = power_law_test(lam[: fit["k_max"]], n_boot=5, rng=0, min_tail=min(50, fit["n"]))
        assert test.ks == pytest.approx(fit["ks"], rel=1e-12)
        sens = {w["k_max"]: w["s"] for w in row["window_sensitivity"]}
        assert sens[31] == pytest.approx(fit_rank_power_law(lam, k_max=31).s, rel=1e-12)
    h = res["hessian"][-1]
    lam = arrays["hessian_step_20"]
    assert h["fit"]["s"] == fit_rank_power_law(lam[lam > 0]).s
    gaps = np.sort(-np.diff(lam))[::-1]
    assert h["gap_fit"]["s"] == fit_rank_power_law(gaps[gaps > 0]).s


def test_random_matrix_baseline_has_the_trained_trace_and_marchenko_pastur_support(tiny):
    _, _, res, arrays = tiny
    trace = res["covariance"][1]["trace"]
    assert arrays["cov_step_20"].sum() == pytest.approx(trace, rel=1e-12)
    assert arrays["cov_random"].sum() == pytest.approx(trace, rel=1e-10)
    mp = res["marchenko_pastur"]
    assert mp["ratio"] == pytest.approx(63 / 1810)
    quantiles = arrays["cov_mp"]
    assert np.all((quantiles >= mp["lower"]) & (quantiles <= mp["upper"]))
    rand = arrays["cov_random"]  # one Wishart draw: inside the MP edges up to edge fluctuations
    assert mp["lower"] * 0.8 < rand.min() and rand.max() < mp["upper"] * 1.2
    # an i.i.d. matrix with P >> N has a nearly flat spectrum: no steep power law
    random_row = next(r for r in res["covariance"] if r["kind"] == "random")
    assert random_row["fit"]["s"] < 0.3


def test_minibatch_sweep_matches_explicit_minibatch_gradients(tiny, ctx):
    _, _, res, arrays = tiny
    sweep = res["batch_sweep"]
    assert [r["batch_size"] for r in sweep["rows"]] == [4, 16] and sweep["pool"] == 200
    x, y = ctx.train_tensors
    model = ctx.load_model(20).double()
    pool = arrays["sweep_pool"]
    for r in sweep["rows"]:
        b = r["batch_size"]
        index = arrays[f"sweep_index_B{b}"]
        assert index.shape == (40, b) and np.all(np.isin(index, pool))
        assert all(np.unique(row).size == b for row in index)  # without replacement
        assert r["scale"] == pytest.approx(b * 199 / (200 - b))
        G = torch.stack(
            [
                _flat_grad(model, ctx.loss_fn(model(x[torch.as_tensor(i)].double()), y[i]))
                for i in index
            ]
        )
        oracle = covariance_spectrum(G.numpy())
        np.testing.assert_allclose(arrays[f"sweep_B{b}"], oracle, rtol=0, atol=1e-5 * oracle[0])


def test_minibatch_gram_is_the_gram_of_minibatch_means():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((30, 7))
    index = np.stack([rng.choice(30, 5, replace=False) for _ in range(11)])
    means = g[index].mean(axis=1)
    np.testing.assert_allclose(minibatch_gram(g @ g.T, index), means @ means.T, rtol=1e-12)


def test_hessian_matches_dense_float64_hessian(tiny, ctx):
    _, _, res, arrays = tiny
    x, y = ctx.train_tensors
    idx = torch.as_tensor(arrays["hessian_index"])
    assert idx.numel() == 160
    xs, ys = x[idx].double(), y[idx]
    for h in res["hessian"]:
        model = ctx.load_model(h["step"]).double()
        names = [n for n, _ in model.named_parameters()]
        shapes = [p.shape for p in model.parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

        def loss(theta, names=names, shapes=shapes, model=model):
            parts = torch.split(theta, [int(np.prod(s)) for s in shapes])
            params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
            return ctx.loss_fn(torch.func.functional_call(model, params, (xs,)), ys)

        hess = torch.autograd.functional.hessian(loss, flat, vectorize=True).numpy()
        eigs = np.linalg.eigvalsh(0.5 * (hess + hess.T))[::-1]
        saved = arrays[f"hessian_{h['key']}"]
        np.testing.assert_allclose(saved, eigs[:6], rtol=0, atol=1e-6 * eigs[0])
        assert h["converged"] == 6 and h["max_relative_residual"] <= 1e-6
        assert h["loss"] == pytest.approx(float(loss(flat)), rel=1e-12)
        # Hutch++ is unbiased: within a few standard errors of the exact trace
        assert abs(h["trace"] - np.trace(hess)) <= 5 * h["trace_stderr"] + 1e-9 * abs(
            np.trace(hess)
        )


def test_same_seed_gives_identical_summary(tiny, tmp_path):
    again = run_study(_config(), tmp_path / "again")
    assert (again / "summary.json").read_bytes() == (tiny[0] / "summary.json").read_bytes()


def test_report_rerenders_without_torch(tiny, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny[0], run)
    for png in (run / "figures").glob("spectra_*.png"):
        png.unlink()
    (run / "report.html").unlink()
    code = (  # `gradnoise report RUN` with any torch import failing
        "import sys; sys.modules['torch'] = None\n"
        "from gradnoise.cli import app\n"
        f"app(['report', {str(run)!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((run / "figures").glob("spectra_*.png"))) == 3
    assert TITLE in (run / "report.html").read_text()


def test_headline_reports_the_fitted_slopes(tiny):
    _, _, res, _ = tiny
    line = headline(res)
    rows = {r["kind"]: r for r in res["covariance"]}
    assert line["cov s (trained)"] == round(rows["trained"]["fit"]["s"], 4)
    assert line["cov s (random)"] == round(rows["random"]["fit"]["s"], 4)
    assert line["Hessian s (init)"] == round(res["hessian"][0]["fit"]["s"], 4)
    assert line["minibatch cov s by B"].startswith("B=4: ")
    json.dumps(line)


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"\[options.spectra\]: unknown setting\(s\) 'exemples'"):
        resolve_options({"exemples": 10})
    with pytest.raises(ValueError, match="fit_window"):
        resolve_options({"fit_window": [5, 6]})
    with pytest.raises(ValueError, match="hessian_dtype"):
        resolve_options({"hessian_dtype": "float16"})
    with pytest.raises(ValueError, match="batch_sizes"):
        resolve_options({"batch_sizes": [0]})
    assert resolve_options({"batch_sizes": [32, 8, 32]})["batch_sizes"] == [8, 32]
    # a window without 3 positive values is reported, not fitted on zeros
    assert "error" in fit_spectrum(np.array([3.0, 1.0, 0.0, 0.0]), [1, 4])


def test_bootstrap_of_a_spectrum_spanning_many_decades():
    """Covariance spectra fall by > 16 decades before the rank limit; the CSN bootstrap must
    still give a p-value (no spurious round-off warning from its batched x_min scan)."""
    lam = 10.0 ** -np.linspace(0, 20, 60)
    fit = fit_spectrum(lam, [1, 60], bootstrap=50, rng=0)
    assert fit["ks"] == fit_rank_power_law(lam).ks and 0 <= fit["pvalue"] <= 1
    with np.errstate(divide="ignore"):  # the same test, run directly
        test = power_law_test(lam, n_boot=50, rng=0, min_tail=50)
    assert np.isfinite(test.boot_ks).all() and test.pvalue == fit["pvalue"]


def test_presets_are_registered_and_sized():
    for name in ("xie-covariance", "xie-hessian"):
        preset = get_preset(name)
        for quick in (True, False):
            configs = preset.configs(quick, 0)
            assert {c.dataset for c in configs.values()} == {"mnist1d", "digits"}
            for cfg in configs.values():
                assert "spectra" in cfg.analyses
                resolve_options(cfg.options["spectra"])
    full = get_preset("xie-hessian").configs(False, 0)
    assert sorted(full) == ["digits", "digits-B512", "mnist1d", "mnist1d-B512"]
    assert full["digits-B512"].batch_size == 512 and full["digits"].batch_size == 32
    assert full["digits"].options["spectra"]["hessian_k"] == 50


def test_quick_preset_runs_from_the_cli(tmp_path):
    out = tmp_path / "p"
    result = CliRunner().invoke(
        app, ["reproduce", "xie-covariance", "--quick", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert index["runs"] == ["mnist1d", "digits"] and index["quick"]
    html = (out / "index.html").read_text()
    assert "cov s (trained)" in html and "cov s (random)" in html
    for key in index["runs"]:
        assert (out / key / "figures" / "spectra_covariance.png").exists()
