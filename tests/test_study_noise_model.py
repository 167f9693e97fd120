"""The noise-model analysis (Simsekli / Panigrahi / Battash studies) and its presets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gradnoise
from cases import TINY_STUDY
from gradnoise.cli import app
from gradnoise.stats import compare_noise_models, normality_test, sample_stable, tail_index
from gradnoise.stats.multitest import multiple_test
from gradnoise.study import StudyConfig, run_study
from gradnoise.study.analyses import _noise_stats as ns
from gradnoise.study.analyses._noise_torch import stratified_selection
from gradnoise.study.analyses.noise_model import ANALYSIS, TITLE, headline, resolve_options
from gradnoise.study.context import StudyContext
from gradnoise.study.registry import get_analysis, get_preset

TINY = TINY_STUDY
OPTIONS = {
    "sgn_samples": 64,
    "coords": 240,
    "fit_coords": 60,
    "directions": 20,
    "batch_sizes": [16, 64],
    "arm_steps": 5,
}
CONFIG = StudyConfig(**TINY, analyses=("training", "noise_model"), options={"noise_model": OPTIONS})
FIGURES = ("simsekli_ccdf", "simsekli", "panigrahi", "battash_maps", "battash", "arms")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return run_study(CONFIG, tmp_path_factory.mktemp("noise_model") / "run")


@pytest.fixture(scope="module")
def results(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["analyses"]["noise_model"]


@pytest.fixture(scope="module")
def arrays(run_dir):
    with np.load(run_dir / "analyses" / "noise_model.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def ctx(run_dir):
    data = gradnoise.load_dataset(CONFIG.dataset, seed=CONFIG.seed)
    ckpts = {s: run_dir / "checkpoints" / f"step_{s:07d}.pt" for s in (0, 20)}
    return StudyContext(CONFIG, run_dir, data, ckpts, np.empty(0, dtype=np.int64))


@pytest.fixture(scope="module")
def independent_sgn(ctx):
    """SGN at step 20, B = 16, recomputed without the per-example path: minibatch gradients
    by full_grad on each minibatch (same seeded minibatches and coordinates), minus full_grad."""
    x, y = ctx.train_tensors
    selection = stratified_selection(
        ctx.load_model(0), OPTIONS["coords"], ctx.rng("noise_model-coords")
    )
    batches = ns.draw_minibatches(
        ctx.rng("noise_model-batches-20-16"), x.shape[0], 16, OPTIONS["sgn_samples"]
    )
    model = ctx.load_model(20)
    loss = torch.nn.CrossEntropyLoss()
    full = gradnoise.full_grad(model, loss, (x, y), params=selection).double()
    xi = torch.stack(
        [
            gradnoise.full_grad(model, loss, (x[b], y[b]), params=selection).double() - full
            for b in torch.as_tensor(batches)
        ]
    )
    return xi.numpy(), selection


# --------------------------------------------------------------------------- the study run


def test_registered_and_report(run_dir, results):
    assert get_analysis("noise_model") is ANALYSIS
    assert results["studies"] == ["simsekli", "panigrahi", "battash"]
    for stem in FIGURES:
        assert (run_dir / "figures" / f"noise_model_{stem}.png").exists(), stem
    html = (run_dir / "report.html").read_text()
    assert TITLE in html and "pooled" in html
    assert html.count("data:image/png;base64,") == 1 + len(FIGURES)  # training + ours
    line = headline(results)
    assert set(line) >= {"pooled α (Simsekli)", "SαS wins (AIC)", "Gaussian coords B=64"}
    assert all(isinstance(v, (int, float)) for v in line.values())


def test_simsekli_pooled_alpha_from_checkpoint(ctx, results):
    """One data pass in consecutive minibatches with plain autograd gives the reported alphas."""
    model = ctx.load_model(20)
    x, y = ctx.train_tensors
    b = CONFIG.batch_size
    p = x.shape[0] // b
    grads = []
    for k in range(p):
        model.zero_grad()
        torch.nn.functional.cross_entropy(
            model(x[k * b : (k + 1) * b]), y[k * b : (k + 1) * b]
        ).backward()
        grads.append(torch.cat([q.grad.reshape(-1) for q in model.parameters()]))
    g = torch.stack(grads).double()
    noise = (g - g.mean(0)).float().numpy()
    row = results["simsekli"]["checkpoints"][-1]
    assert row["step"] == 20 and row["batches"] == p == 89  # prime: per coordinate uses 88
    assert tail_index(noise, pooled=True).alpha == pytest.approx(row["pooled_alpha"], rel=1e-4)
    nonconstant = ~np.all(noise == noise[:1], axis=0)
    assert row["constant_coordinates"] == int((~nonconstant).sum())
    rows = noise[:88]  # columns constant on the 88 rows used have no tail index: left out
    per_coord = tail_index(rows[:, ~np.all(rows == rows[:1], axis=0)]).alpha
    assert row["per_coord_samples"] == 88
    assert np.median(per_coord) == pytest.approx(row["per_coord_alpha_median"], rel=1e-3)
    # ground truth of the Gaussian control: per coordinate it is Gaussian (alpha 2) ...
    assert 1.7 < row["per_coord_alpha_gaussian_control_median"] < 2.3
    # ... but pooled over coordinates of spread-out scales it looks heavy-tailed
    assert row["scale_spread_q90_over_q10"] > 10
    assert row["pooled_alpha_gaussian_control"] < 1.5


def test_panigrahi_fraction_recomputed(independent_sgn, results):
    xi, _ = independent_sgn
    row = next(r for r in results["panigrahi"]["rows"] if r["step"] == 20 and r["batch_size"] == 16)
    const = np.all(xi == xi[:1], axis=0)
    assert row["coords_constant"] == int(const.sum())
    pv = normality_test(xi[:, ~const], method="shapiro").pvalue
    for method, key in (("bh", "accepted_bh"), ("holm", "accepted_holm")):
        accepted = 1 - multiple_test(pv, method=method).fraction_rejected
        assert abs(accepted - row[key]) <= 1.5 / pv.size, key  # float32 noise: <= 1 flip


def test_battash_fits_recomputed(independent_sgn, results, arrays):
    xi, selection = independent_sgn
    row = next(r for r in results["battash"]["rows"] if r["step"] == 20)
    cols = arrays["battash_columns_20_16"]
    assert row["fitted"] == cols.size and row["selected"] == selection.num_columns
    cmp = compare_noise_models(xi[:, cols], loc=0.0)
    assert abs(cmp.fraction_stable - row["fraction_stable"]) <= 1.5 / cols.size
    assert np.median(np.abs(cmp.stable_alpha - arrays["battash_alpha_20_16"])) < 0.01
    layers = [r for r in results["battash"]["layers"] if r["step"] == 20]
    assert sum(r["fitted"] for r in layers) == row["fitted"]
    assert sum(r["degenerate"] for r in layers) == row["degenerate"]
    numel = {n: selection.numel(i) for i, n in enumerate(selection.names)}
    fitted = [r for r in layers if r["fitted"]]
    weighted = sum(numel[r["param"]] * r["fraction_stable"] for r in fitted) / sum(
        numel[r["param"]] for r in fitted
    )
    assert weighted == pytest.approx(row["fraction_stable_weighted"])


def test_battash_map_and_arms(results, arrays):
    bat = results["battash"]
    mp = bat["map"]
    assert mp["param"] == "5.weight" and mp["shape"] == [10, 256]
    for r in mp["checkpoints"]:
        amap = arrays[f"battash_alpha_map_{r['step']}"]
        assert amap.shape == (10, 256) and int(np.isnan(amap).sum()) == r["degenerate"]
        assert np.nanmin(amap) >= 0.5 and np.nanmax(amap) <= 2.0  # McCulloch's range
    arms = {r["arm"]: r for r in bat["arms"]["rows"]}
    assert list(arms) == ["constant", "lr-decay", "batch-increase"]
    assert arms["lr-decay"]["lr"] == pytest.approx(CONFIG.lr / 4)
    assert arms["batch-increase"]["batch_size"] == 4 * CONFIG.batch_size
    assert arms["lr-decay"]["jump_frequency"] < arms["constant"]["jump_frequency"]
    assert arrays["arm_loss_constant"].shape == (OPTIONS["arm_steps"],)


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked: rendering must not need it")
sys.meta_path.insert(0, Block())
from gradnoise.cli import app
app(["report", sys.argv[1]])
"""


def test_rerender_without_torch_and_determinism(run_dir, tmp_path):
    shutil.rmtree(run_dir / "figures")
    (run_dir / "report.html").unlink()
    res = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, str(run_dir)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert all((run_dir / "figures" / f"noise_model_{s}.png").exists() for s in FIGURES)
    assert TITLE in (run_dir / "report.html").read_text()
    again = run_study(CONFIG, tmp_path / "again")
    assert (again / "summary.json").read_bytes() == (run_dir / "summary.json").read_bytes()


# --------------------------------------------------------------------------- ground truth


def test_simsekli_stats_pooling_artefact_on_synthetic_data():
    rng = np.random.default_rng(1)
    scales = np.exp(rng.normal(0.0, 1.5, 4000))  # Gaussian coordinates, log-normal scales
    g = rng.standard_normal((50, 4000)) * scales
    g -= g.mean(0)
    out, arr = ns.simsekli_stats(g, rng=np.random.default_rng(2))
    assert out["pooled_alpha"] < 1.4  # pooling manufactures heavy tails
    assert 1.85 < out["per_coord_alpha_median"] < 2.15  # each coordinate is Gaussian
    assert 1.85 < out["pooled_alpha_standardised"] < 2.15
    assert abs(out["pooled_alpha_gaussian_control"] - out["pooled_alpha"]) < 0.1
    assert abs(out["pooled_alpha_gaussian_control_iqr"] - out["pooled_alpha"]) < 0.1
    assert np.all(np.diff(arr["ccdf_noise"]) <= 0) and arr["ccdf_noise"][0] <= 1
    x = sample_stable(1.5, size=(100, 2000), rng=3)  # equal-scale SαS(1.5)
    x -= x.mean(0)
    out, _ = ns.simsekli_stats(x, rng=np.random.default_rng(4))
    assert out["pooled_alpha"] == pytest.approx(1.5, abs=0.1)
    assert out["per_coord_alpha_median"] == pytest.approx(1.5, abs=0.15)
    assert out["pooled_alpha_gaussian_control_iqr"] == pytest.approx(2.0, abs=0.1)
    assert out["per_coord_alpha_gaussian_control_median"] == pytest.approx(2.0, abs=0.1)


def test_panigrahi_and_battash_stats_on_synthetic_data():
    rng = np.random.default_rng(5)
    gauss = rng.standard_normal((400, 120)) * np.exp(rng.normal(0, 1, 120))
    heavy = sample_stable(1.3, size=(400, 120), rng=6)
    kw = dict(test="shapiro", directions=30, level=0.05)
    g = ns.panigrahi_stats(gauss, rng=np.random.default_rng(7), **kw)
    h = ns.panigrahi_stats(heavy, rng=np.random.default_rng(7), **kw)
    assert g["accepted_bh"] >= 0.95 and g["directions_accepted_bh"] >= 0.9
    assert h["accepted_bh"] <= 0.1 and h["directions_accepted_bh"] <= 0.2
    groups = np.repeat([0, 1], 60)
    common = dict(groups=groups, names=["a", "b"], numels=[1000, 10], fit_coords=200)
    sg, layers, _ = ns.battash_stats(gauss, rng=np.random.default_rng(8), **common)
    sh, _, _ = ns.battash_stats(heavy, rng=np.random.default_rng(8), **common)
    assert sg["fraction_stable"] <= 0.2 and sh["fraction_stable"] >= 0.9
    assert sh["alpha_median"] == pytest.approx(1.3, abs=0.1)
    assert [r["fitted"] for r in layers] == [60, 60] and sg["degenerate"] == 0
    tied = gauss.copy()
    tied[:300, 0] = 0.0  # mostly one value: zero IQR, counted as degenerate, not fitted
    st, _, arr_t = ns.battash_stats(tied, rng=np.random.default_rng(8), **common)
    assert st["degenerate"] == 1 and 0 not in arr_t["columns"]


def test_sgn_from_per_sample_matches_naive_means():
    rng = np.random.default_rng(9)
    per_sample = rng.standard_normal((50, 7)).astype(np.float32)
    per_sample[np.arange(50) != 3, 2] = 0.0  # a coordinate active on one example only
    full = per_sample.astype(np.float64).mean(0)
    batches = ns.draw_minibatches(rng, 50, 8, 20)
    assert all(np.unique(b).size == 8 for b in batches)
    xi = ns.sgn_from_per_sample(per_sample, full, batches)
    naive = np.stack([per_sample[b].astype(np.float64).mean(0) - full for b in batches])
    np.testing.assert_allclose(xi, naive, rtol=0, atol=1e-15)  # summed in float64
    # blocks of columns: each column on its own, the same bits at any width
    for block_bytes in (1, 8 * 20 * 8 * 3):
        np.testing.assert_array_equal(
            ns.sgn_from_per_sample(per_sample, full, batches, block_bytes=block_bytes), xi
        )
    without = ~(batches == 3).any(axis=1)  # minibatches without example 3: exactly -G_2
    assert without.any() and np.all(xi[without, 2] == -full[2])
    with pytest.raises(ValueError, match="batch_size"):
        ns.draw_minibatches(rng, 50, 51, 2)


def test_jump_stats():
    rng = np.random.default_rng(10)
    base = rng.standard_normal((1000, 30))
    same = ns.jump_stats(base, base)
    assert same["jump_frequency"] == pytest.approx(0.01, abs=0.001)
    assert ns.jump_stats(base, base / 4)["jump_frequency"] < same["jump_frequency"]


def test_options_are_validated():
    cfg = StudyConfig(**TINY)
    full = resolve_options({"mode": "full"}, cfg)
    assert full["sgn_samples"] == 1000 and full["battash_batch_sizes"] == [32, 128, 512]
    assert resolve_options({}, cfg)["battash_batch_sizes"] == [16]
    for bad, match in (
        ({"mode": "huge"}, "mode"),
        ({"studies": ["xie"]}, "studies"),
        ({"sgn_sample": 10}, "unknown"),
        ({"sgn_samples": 10}, "sgn_samples"),
        ({"arms": ["faster"]}, "arms"),
        ({"arm_from": 7}, "arm_from"),
        ({"test": "ks"}, "test"),
    ):
        with pytest.raises(ValueError, match=match):
            resolve_options(bad, cfg)


# --------------------------------------------------------------------------- presets


def test_presets_configs():
    for name, studies in (
        ("simsekli-tail-index", ["simsekli", "panigrahi"]),
        ("panigrahi-batch-size", ["panigrahi"]),
        ("battash-sas", ["battash"]),
    ):
        for quick in (False, True):
            configs = get_preset(name).configs(quick, 0)
            assert list(configs) == ["mnist1d", "digits"]
            for cfg in configs.values():
                opts = cfg.options["noise_model"]
                assert "noise_model" in cfg.analyses and opts["studies"] == studies
                assert opts["mode"] == ("default" if quick else "full")
                resolve_options(opts, cfg)  # valid


def test_quick_preset_through_cli(tmp_path):
    out = tmp_path / "p"
    res = CliRunner().invoke(app, ["reproduce", "battash-sas", "--quick", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    html = (out / "index.html").read_text()
    assert "SαS wins (AIC)" in html and "jump freq lr-decay" in html
    for key in ("mnist1d", "digits"):
        summary = json.loads((out / key / "summary.json").read_text())
        bat = summary["analyses"]["noise_model"]["battash"]
        assert [r["step"] for r in bat["rows"]] == [0, 40]
        assert (out / key / "figures" / "noise_model_battash_maps.png").exists()


def test_a_budget_keeps_a_random_subset_of_coordinates_for_simsekli(ctx, run_dir, tmp_path):
    """Under max_memory the data pass keeps max_memory // (2 * 40 * P) coordinates, a seeded
    uniform subset: the pooled alpha is the plain-autograd oracle's on those columns, and the
    report says a subset was used."""
    import dataclasses

    from gradnoise.study.analyses import noise_model

    b = CONFIG.batch_size
    x, y = ctx.train_tensors
    p = x.shape[0] // b
    keep = 3000
    budget = keep * 2 * noise_model.SIMSEKLI_BYTES_PER_ENTRY * p
    cfg = dataclasses.replace(
        CONFIG, max_memory=budget, options={"noise_model": {**OPTIONS, "studies": ["simsekli"]}}
    )
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    budget_ctx = StudyContext(cfg, copy, ctx.data, ctx.checkpoints, np.empty(0, dtype=np.int64))
    res = noise_model.compute(budget_ctx)
    row = res["simsekli"]["checkpoints"][-1]
    model = ctx.load_model(20)
    total = sum(q.numel() for q in model.parameters())
    assert row["coordinates"] == keep < total == row["model_parameters"]
    sel = gradnoise.select_params(
        model, coords=keep, seed=budget_ctx.seed_for("noise_model-simsekli")
    )
    starts, at = {}, 0
    for name, q in model.named_parameters():
        starts[name], at = at, at + q.numel()
    cols = np.concatenate(
        [np.asarray(sel.flat_indices(k)) + starts[name] for k, name in enumerate(sel.names)]
    )
    grads = []
    for k in range(p):
        model.zero_grad()
        torch.nn.functional.cross_entropy(
            model(x[k * b : (k + 1) * b]), y[k * b : (k + 1) * b]
        ).backward()
        grads.append(torch.cat([q.grad.reshape(-1) for q in model.parameters()])[cols])
    g = torch.stack(grads).double()
    noise = (g - g.mean(0)).float().numpy()
    assert tail_index(noise, pooled=True).alpha == pytest.approx(row["pooled_alpha"], rel=1e-4)
    from gradnoise.study.analyses._noise_render import _coordinates

    assert "random subset of 3,000 of the" in _coordinates(row)


@pytest.mark.parametrize("method", ["mcculloch", "mle"])
def test_parameter_map_in_column_blocks_equals_one_block(method):
    # a 4M-entry output layer's map is fitted block by block under a budget
    rng = np.random.default_rng(4)
    per_sample = rng.standard_t(2.5, size=(40, 30)).astype(np.float32)
    per_sample[:, 7] = 0.0  # degenerate
    full = per_sample.astype(np.float64).mean(0)
    batches = ns.draw_minibatches(rng, 40, 8, 60)
    xi = ns.sgn_from_per_sample(per_sample, full, batches)
    whole = ns.parameter_map(xi, (5, 6), method=method)
    blocks = ns.map_from_per_sample(
        per_sample, full, batches, (5, 6), method=method, max_bytes=60 * (64 + 128) * 4
    )
    np.testing.assert_array_equal(blocks[0], whole[0])
    np.testing.assert_array_equal(blocks[1], whole[1])
    assert blocks[2] == whole[2] == 1


def test_the_map_blocks_get_what_the_budget_leaves_beside_the_gradients():
    import numpy as np

    from gradnoise.study.analyses.noise_model import MAP_BYTES, _map_bytes

    held = (np.zeros((32, 1000), dtype=np.float32), np.zeros(1000))
    assert _map_bytes(None, held) == MAP_BYTES
    assert _map_bytes(10**6, held) == 10**6 - 32 * 1000 * 4 - 8 * 1000
    assert _map_bytes(10**5, held) == 10**5 // 4  # the gradients alone exceed the budget
