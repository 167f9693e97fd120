"""The ``variance`` analysis of the study pipeline and the ``faghri-variance`` preset."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gradnoise
from cases import TINY_STUDY
from gradnoise.cli import app
from gradnoise.study import StudyConfig, run_study
from gradnoise.study.analyses import variance as V
from gradnoise.study.context import StudyContext
from gradnoise.study.presets import faghri

TINY = TINY_STUDY
# every 4 steps: measurements at 0, 4, ..., 16 during training and 20 after it
CONFIG = StudyConfig(**TINY, analyses=("training", "variance"), options={"variance": {"every": 4}})


@pytest.fixture(scope="module")
def var_run(tmp_path_factory):
    return run_study(CONFIG, tmp_path_factory.mktemp("variance") / "run")


def _results(run):
    return json.loads((run / "summary.json").read_text())["analyses"]["variance"]


def _arrays(run):
    with np.load(run / "analyses/variance.npz") as f:
        return {k: f[k] for k in f.files}


def test_section_figures_and_arrays(var_run):
    res, a = _results(var_run), _arrays(var_run)
    for stem in ("over_training", "at_loss", "layers", "estimators"):
        assert (var_run / f"figures/variance_{stem}.png").exists(), stem
    html = (var_run / "report.html").read_text()
    assert "Gradient variance (Faghri et al.)" in html and "GC" in html
    assert html.count("data:image/png;base64,") == 5  # training curves + 4 of ours
    np.testing.assert_array_equal(a["steps"], np.arange(0, 21, 4))
    assert res["measurements"] == 6 and res["options"]["every"] == 4
    assert res["options"]["num_clusters"] == 16 and res["options"]["snapshot_every"] == 16
    assert res["parameters"] == 85002 and res["train_examples"] == 1438
    assert list(a["layer_names"]) == ["1 (Linear)", "3 (Linear)", "5 (Linear)"]
    assert a["layer_sizes"].sum() == res["parameters"]
    assert a["layer_variance"].shape == (6, 3) and a["layer_gsnr"].shape == (6, 3)
    # the overall mean variance is the size-weighted mean of the per-layer means
    np.testing.assert_allclose(
        a["layer_variance"] @ a["layer_sizes"] / a["layer_sizes"].sum(), a["variance"], rtol=1e-10
    )
    assert a["cmp_variance"].shape == (6, 4) and list(a["cmp_names"]) == list(V.ESTIMATORS)
    assert np.all(a["ngv"] > 0) and np.all(a["ngv"] < 1)
    assert np.all(np.diff(a["train_loss"]) < 0.05)  # full-train-set loss roughly decreases


def _context(run):
    data = gradnoise.load_dataset("digits", seed=0)
    ckpt = {s: run / f"checkpoints/step_{s:07d}.pt" for s in (0, 20)}
    return StudyContext(CONFIG, run, data, ckpt, np.empty(0))


@pytest.mark.parametrize("step", [0, 20])
def test_measurements_match_recomputation_from_checkpoints(var_run, step):
    """Variance, NGV, GSNR, ||G|| and loss recomputed with naive formulas from the saved model."""
    ctx = _context(var_run)
    a = _arrays(var_run)
    i = int(np.flatnonzero(a["steps"] == step)[0])
    model = ctx.load_model(step)
    x, y = ctx.train_tensors
    loss_fn = torch.nn.CrossEntropyLoss()
    draws = gradnoise.minibatch_grads(
        model, loss_fn, (x, y), batch_size=16, num_batches=16, seed=ctx.seed_for(f"variance-{step}")
    ).double()
    g = gradnoise.full_grad(model, loss_fn, (x, y)).double()
    t, n, b = draws.shape[0], x.shape[0], 16
    mean = draws.mean(0)
    var_j = ((draws - mean) ** 2).sum(0) / (t - 1)
    np.testing.assert_allclose(a["variance"][i], float(var_j.mean()), rtol=1e-9)
    v0 = ((draws - mean) ** 2).mean(0)
    second = (draws**2).mean(0)
    ngv = torch.where(second > 0, v0 / second, torch.zeros_like(v0)).mean()
    np.testing.assert_allclose(a["ngv"][i], float(ngv), rtol=1e-9)
    sigma2 = ((draws - g) ** 2).mean(0) * b * (n - 1) / (n - b)  # per-example variance
    ok = sigma2 > 0
    np.testing.assert_allclose(
        a["gsnr_mean"][i], float((g[ok] ** 2 / sigma2[ok]).mean()), rtol=1e-6
    )
    np.testing.assert_allclose(a["grad_norm"][i], float(g.norm()), rtol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(a["train_loss"][i], float(loss_fn(model(x), y)), rtol=1e-5)


def test_comparators_behave_as_expected(var_run):
    res, a = _results(var_run), _arrays(var_run)
    est = res["comparators"]["estimators"]
    n, b = 1438, 16
    # SG-2B without replacement: Var_2B / Var_B = (N - 2B) / (2 (N - B)) = 0.494 in expectation
    expected = (n - 2 * b) / (2 * (n - b))
    assert abs(est["sg2b"]["ratio_to_sg_geomean"] / expected - 1) < 0.25
    # SVRG is exact at its snapshot (same minibatch at theta and the snapshot theta)
    snap = a["cmp_snapshot"]
    np.testing.assert_array_equal(a["cmp_steps"][snap], [0, 16])  # snapshot_every = 4 every
    svrg, sg = a["cmp_variance"][:, 2], a["cmp_variance"][:, 0]
    assert np.all(svrg[snap] < 1e-8 * sg[snap]) and np.all(svrg[~snap] > 0)
    # unbiased estimators: ||gbar - G||^2 is about tr(Var) / draws on average
    for e in ("sg", "sg2b", "gc"):
        assert 0.3 < est[e]["bias_z_mean"] < 3.0, (e, est[e]["bias_z_mean"])
    # Faghri et al.: GC below SG-B at the same batch size
    assert est["gc"]["ratio_to_sg_geomean"] < 1.0 and est["gc"]["batch_size"] == b
    np.testing.assert_array_equal(a["cmp_reclustered"], snap)
    assert res["comparators"]["reclusterings"] == 2
    line = V.headline(res)
    assert line["GC / SG-B variance"] == est["gc"]["ratio_to_sg_geomean"]
    assert line["mean NGV"] == res["ngv_mean"]


def test_measuring_does_not_perturb_training_and_is_deterministic(var_run, tmp_path):
    again = run_study(CONFIG, tmp_path / "again")
    assert (again / "summary.json").read_bytes() == (var_run / "summary.json").read_bytes()
    for k, v in _arrays(var_run).items():
        np.testing.assert_array_equal(_arrays(again)[k], v, err_msg=k)
    plain = run_study(StudyConfig(**TINY, analyses=("training",)), tmp_path / "plain")
    with_var, without = gradnoise.open_run(var_run), gradnoise.open_run(plain)
    np.testing.assert_array_equal(with_var.grads, without.grads)
    np.testing.assert_array_equal(with_var.steps, without.steps)
    for key in ("loss", "grad_norm", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_array_equal(with_var.scalars[key], without.scalars[key], err_msg=key)
    for s in (0, 20):
        np.testing.assert_array_equal(with_var.per_sample[s], without.per_sample[s])
        np.testing.assert_array_equal(with_var.noise[s], without.noise[s])
        a = torch.load(var_run / f"checkpoints/step_{s:07d}.pt", weights_only=True)
        b = torch.load(plain / f"checkpoints/step_{s:07d}.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    s1 = json.loads((var_run / "summary.json").read_text())
    s2 = json.loads((plain / "summary.json").read_text())
    assert s1["analyses"]["training"] == s2["analyses"]["training"] and s1["final"] == s2["final"]


def test_report_rerenders_without_torch(var_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(var_run, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        from gradnoise.study.runner import render_run
        render_run({str(copy)!r})
        assert "torch" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert (copy / "figures/variance_estimators.png").exists()
    assert "Gradient variance (Faghri et al.)" in (copy / "report.html").read_text()


def test_bad_options_are_clear(tmp_path):
    tiny = dict(TINY, steps=2, checkpoints=1, analyses=("variance",))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'evry' \(did you mean 'every'\?\)"):
        run_study(StudyConfig(**tiny, options={"variance": {"evry": 3}}), tmp_path / "a")
    with pytest.raises(ValueError, match="draws must be an integer >= 2"):
        run_study(StudyConfig(**tiny, options={"variance": {"draws": 1}}), tmp_path / "b")
    with pytest.raises(ValueError, match="num_clusters"):
        run_study(StudyConfig(**tiny, options={"variance": {"num_clusters": 5000}}), tmp_path / "c")


def test_default_options_follow_the_study():
    opts = V.resolve_options({}, StudyConfig())  # 300 steps, B = 32
    assert opts["every"] == 30 and opts["draws"] == 16 and opts["comparator_draws"] == 16
    assert opts["num_clusters"] == 32 and opts["recluster_every"] == opts["snapshot_every"] == 120
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        V.resolve_options({"every": 0}, StudyConfig())


def test_trend_and_equal_loss_helpers():
    steps = np.arange(0, 100, 10)
    up = np.exp(steps / 50.0)
    t = V.trend(steps, up, start=10)
    assert t["points"] == 9 and t["spearman"] == pytest.approx(1.0)
    assert t["growth"] == pytest.approx(np.mean(up[-3:]) / np.mean(up[1:4]))
    assert V.trend(steps, np.ones(10), start=0)["spearman"] is None  # constant: no rank order
    loss = np.array([2.0, 1.0, 0.25])
    values = np.array([1.0, 4.0, 16.0])  # values = 4 / loss: a power law in log-log
    assert V._at_loss(loss, values, 0.5) == pytest.approx(8.0)
    assert V._at_loss(loss, values, 3.0) == 1.0  # already below at the first measurement
    assert V._at_loss(loss, values, 0.1) is None  # never reached


def test_preset_configs():
    full = faghri.configs(False, 3)
    assert list(full) == [
        f"{d}-lr{lr}" for d in ("mnist1d", "digits") for lr in ("0.1", "0.03", "0.01")
    ]
    cfg = full["mnist1d-lr0.03"]
    assert cfg.lr == 0.03 and cfg.seed == 3 and cfg.batch_size == 128 and cfg.model == "lenet"
    assert cfg.analyses == ("training", "variance") and cfg.momentum == 0.0
    assert full["digits-lr0.1"].model == "mlp"
    assert cfg.options["variance"]["draws"] == 50 and cfg.options["variance"]["num_clusters"] == 128
    # identical trajectories' randomness across the sweep: only lr differs
    other = full["mnist1d-lr0.1"]
    assert {k for k, v in cfg.to_dict().items() if other.to_dict()[k] != v} == {"lr"}
    quick = faghri.configs(True, 0)
    assert list(quick) == ["mnist1d-lr0.1", "mnist1d-lr0.01", "digits-lr0.1", "digits-lr0.01"]
    assert all(c.steps <= 30 for c in quick.values())


def test_quick_preset_through_the_cli(tmp_path):
    out = tmp_path / "p"
    result = CliRunner().invoke(
        app, ["reproduce", "faghri-variance", "--quick", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    for key in faghri.configs(True, 0):
        assert f"{key}/report.html" in index
        res = _results(out / key)
        assert res["measurements"] == 4 and math.isfinite(res["ngv_mean"])
        assert (out / key / "figures/variance_estimators.png").exists()
    assert "GC / SG-B variance" in index and "mean NGV" in index


def test_without_comparators(tmp_path):
    cfg = StudyConfig(
        **dict(TINY, steps=6, checkpoints=1),
        analyses=("variance",),
        options={"variance": {"every": 4, "comparators": False, "draws": 4}},
    )
    run = run_study(cfg, tmp_path / "r")
    res, a = _results(run), _arrays(run)
    np.testing.assert_array_equal(a["steps"], [0, 4, 6])  # and once after the last step
    assert "comparators" not in res and "cmp_variance" not in a
    assert not (run / "figures/variance_estimators.png").exists()
    assert (run / "figures/variance_layers.png").exists()
    assert "GC / SG-B variance" not in V.headline(res)
