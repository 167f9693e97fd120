"""The escape analysis (Battash & Lindenbaum: SGD vs Lévy vs Gaussian SDE from a checkpoint, and
the learning-rate-decay verdict) and its preset ``battash-escape``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import gradnoise
from gradnoise import levy
from gradnoise.errors import ConfigError
from gradnoise.study import StudyConfig, run_study
from gradnoise.study.analyses import _escape_stats as es
from gradnoise.study.analyses import _escape_torch as et
from gradnoise.study.analyses.escape import headline, resolve_options
from gradnoise.study.registry import check_study, get_preset
from gradnoise.study.runner import render_run

OPTIONS = {
    "paths": 3,
    "horizon": 12,
    "sgn_samples": 24,
    "lr_factors": [1.0, 3.0],
    "batch_sizes": [16],
    "noise_factors": [1.0, 4.0],
    "check_every": 2,
    "arm_seeds": 2,
    "arm_steps": 4,
    "trace_coords": 2,
    "sharp_batch": 64,
}
CONFIG = StudyConfig(
    dataset="digits",
    model_options={"widths": [8]},
    steps=20,
    batch_size=16,
    track_coords=50,
    per_sample_examples=8,
    noise_batches=4,
    checkpoints=2,
    eval_every=10,
    analyses=("training", "escape"),
    options={"escape": OPTIONS},
)
FIGURES = ("exit_time", "exit_direction", "trajectories", "decay_arms")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return run_study(CONFIG, tmp_path_factory.mktemp("escape") / "run")


@pytest.fixture(scope="module")
def res(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["analyses"]["escape"]


def test_end_to_end_report(run_dir, res):
    html = (run_dir / "report.html").read_text()
    assert "Escape from a minimum" in html and "Verdict:" in html
    for stem in FIGURES:
        assert (run_dir / "figures" / f"escape_{stem}.png").stat().st_size > 1000
    assert res["from_step"] == 20 and res["settings"]["exit"] == "loss"
    assert len(res["rows"]) == 2 * 1 * 3  # lr factors x batch sizes x arms
    assert [r["arm"] for r in res["rows"][:3]] == ["sgd", "levy", "gauss"]
    line = headline(res)
    assert "slope Lévy" in line and line["decay verdict"] in (
        "supported",
        "not supported",
        "inconclusive",
    )
    # re-rendering from stored data gives the same section
    render_run(run_dir)
    assert "Escape from a minimum" in (run_dir / "report.html").read_text()


def _inside(est, lo, hi):
    return lo - 1e-12 <= est <= hi + 1e-12


def test_invariants(res):
    n, horizon = res["settings"]["paths"], res["settings"]["horizon"]
    n_params = len(res["params"])
    for r in res["rows"]:
        basin, box = r["basin_exit"], r["box_exit"]
        assert 0 <= basin["exits"] <= n and 0 <= box["exits"] <= n
        assert basin["paths"] == box["paths"] == n
        assert basin["exposure_steps"] <= n * horizon
        trapped = round(r["trapping_probability"] * n)
        assert trapped == n - basin["exits"]
        assert _inside(r["trapping_probability"], *r["trapping_ci"])
        for cell in (basin, box):
            if cell["exits"]:
                assert 1 <= cell["mean_steps"] and _inside(
                    cell["mean_steps"], cell["ci_low"], cell["ci_high"]
                )
            else:
                assert math.isinf(float(cell["mean_steps"]))  # stored as "inf"
        assert sum(r["first_exit_by_param"]) == box["exits"]
        assert sum(r["farthest_by_param"]) == n
        assert len(r["predicted_first_exit_by_param"]) == n_params
        pred = sum(r["predicted_first_exit_by_param"])
        assert pred == pytest.approx(1.0) or pred == 0.0
        assert sum(r["displacement_share_by_param"]) == pytest.approx(1.0, abs=1e-9)
    for r in res["decay"]["rows"]:
        for key in ("test_acc", "jump_frequency", "alpha_median", "distance"):
            c = r[key]
            assert c["n"] == 2 and _inside(c["mean"], c["ci_low"], c["ci_high"])
        assert _inside(r["left_basin"]["p"], r["left_basin"]["ci_low"], r["left_basin"]["ci_high"])
    fit = res["fits"][0]
    assert fit["coordinates"] == sum(res["param_sizes"])
    assert 0 <= fit["unfitted"] < fit["coordinates"]


def test_gaussian_theory_is_given_only_in_its_regime(res):
    prof = res["axis_profile"]
    assert 0 <= prof["concave_or_tilted"] <= prof["coordinates"] <= sum(res["param_sizes"])
    gauss = [r for r in res["sweep"] if r["arm"] == "gauss"]
    assert len(gauss) == len(res["settings"]["noise_factors"])
    for r in gauss:
        k = r["kramers"]
        assert k["coordinates"] == prof["coordinates"]
        assert k["no_barrier"] == prof["concave_or_tilted"]
        assert k["complete"] and not prof["subset"]
        assert k["in_regime"] == (k["no_barrier"] == 0 and k["below_min_ratio"] == 0)
        assert (r["theory_steps"] is not None) == k["in_regime"]
    # more noise never brings a coordinate into the regime (barrier / D falls as D grows)
    lows = [r["kramers"]["below_min_ratio"] for r in gauss]
    assert lows == sorted(lows)


def test_sharp_flat_minima_equally_trained_and_compared(run_dir, res):
    sf = res["sharp_flat"]
    assert sf["start_step"] == 0 and sf["target_loss"] == pytest.approx(res["loss_at_minimum"])
    assert [m["train_batch_size"] for m in sf["minima"]] == [16, 64]
    for m in sf["minima"]:
        if m["reached_target"]:
            assert m["train_loss"] <= sf["target_loss"] + 1e-6
        assert m["lambda_max"] > 0 and m["trace_se"] >= 0
        for arm in ("sgd", "levy", "gauss"):
            cell = m["arms"][arm]
            assert cell["basin_exit"]["paths"] == sf["paths"] == 3
            trapped = round(cell["trapping_probability"] * sf["paths"])
            assert trapped == sf["paths"] - cell["basin_exit"]["exits"]
    # minima trained at the checkpoint's lr; escape at the largest lr factor by default
    assert sf["train_lr"] == pytest.approx(res["lr_at_checkpoint"])
    assert sf["lr"] == pytest.approx(res["lr_at_checkpoint"] * max(OPTIONS["lr_factors"]))
    sharp = sf["minima"][sf["sharper"]]
    assert sharp["lambda_max"] == max(m["lambda_max"] for m in sf["minima"])
    for arm in ("sgd", "levy", "gauss"):
        c = sf["comparison"][arm]
        assert c["verdict"] == es.sharpness_verdict(c)
        assert c["events"][0] == sharp["arms"][arm]["basin_exit"]["exits"]
    html = (run_dir / "report.html").read_text()
    assert "Sharp vs flat minimum at equal training loss" in html
    assert "Kramers prediction" in html


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    data = gradnoise.load_dataset("digits", seed=0)
    x, y = gradnoise.datasets.as_tensors(data.train)
    x, y = x[:64], y[:64]
    model = gradnoise.build_model("mlp", data.input_shape, data.num_classes, seed=0, widths=(4,))
    net = et.FlatNet(model, torch.nn.CrossEntropyLoss())
    return net, (x, y)


def _sim(net, data, arm, alpha, **kw):
    p = net.theta.numel()
    args = dict(
        lr=0.1, steps=8, paths=3, data=data, batch_size=8, alpha=alpha,
        scale=np.full(p, 0.05), seed=7, exit_rule="distance", threshold=10.0,
        loss_star=0.0, box=0.02, check_every=1, trace_coords=np.array([0, 1]),
    )  # fmt: skip
    args.update(kw)
    return et.simulate(net, arm, **args)


def test_gaussian_arm_is_the_levy_arm_at_alpha_2(tiny_net):
    net, data = tiny_net
    p = net.theta.numel()
    gauss = _sim(net, data, "gauss", np.full(p, 1.3))  # alpha is ignored by the Gaussian arm
    levy2 = _sim(net, data, "levy", np.full(p, 2.0))
    for field in ("basin_step", "box_step", "box_coord", "end_step", "far_coord"):
        np.testing.assert_array_equal(getattr(gauss, field), getattr(levy2, field))
    np.testing.assert_array_equal(gauss.trace, levy2.trace)
    heavy = _sim(net, data, "levy", np.full(p, 1.3))
    assert not np.array_equal(heavy.trace, levy2.trace)


def test_simulate_exit_rules(tiny_net):
    net, data = tiny_net
    p = net.theta.numel()
    a = np.full(p, 1.5)
    # a radius every step exceeds: every path leaves at step 1, in every arm
    for arm in et.ARMS:
        out = _sim(net, data, arm, a, threshold=1e-9)
        assert (out.basin_step == 1).all() and (out.end_step == 1).all()
    # an unreachable loss threshold: all trapped, followed to the horizon
    out = _sim(net, data, "sgd", a, exit_rule="loss", threshold=1e9, check_every=3)
    assert (out.basin_step == -1).all() and (out.end_step == 8).all()
    # no noise: the SDE is gradient descent on the full loss, identical over paths
    quiet = _sim(net, data, "levy", a, scale=np.zeros(p), box=1e9)
    assert (quiet.box_step == -1).all()
    np.testing.assert_allclose(quiet.layer_sq, quiet.layer_sq[:1].repeat(3, 0), rtol=1e-6)
    with pytest.raises(ValueError, match="arm"):
        _sim(net, data, "adam", a)


def test_interval_helpers():
    assert es.wilson(0, 10)[1] == 0.0 and es.wilson(10, 10)[2] == 1.0
    p, lo, hi = es.wilson(3, 10)
    assert (
        lo < p < hi
        and lo == pytest.approx(0.1078, abs=1e-3)
        and hi == pytest.approx(0.6032, abs=1e-3)
    )
    steps = np.array([3, 5, 10])
    cm = es.censored_mean(steps, steps)
    assert cm["mean_steps"] == pytest.approx(6.0) and _inside(6.0, cm["ci_low"], cm["ci_high"])
    censored = es.censored_mean(np.array([3, -1]), np.array([3, 50]))
    assert censored["mean_steps"] == pytest.approx(53.0) and censored["exits"] == 1
    none = es.censored_mean(np.array([-1, -1]), np.array([40, 40]))
    assert math.isinf(none["mean_steps"]) and none["ci_low"] > 0
    t = es.t_mean([1.0, 2.0, 3.0])
    assert t["mean"] == 2.0 and t["ci_low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5)
    assert es.t_mean([1.0])["ci_low"] is None
    fit = es.loglog_slope([1, 2, 4, 8], [8.0, 8 * 2**-1.5, 8 * 4**-1.5, 8 * 8**-1.5], [5, 5, 5, 5])
    assert fit["slope"] == pytest.approx(-1.5) and fit["se"] == pytest.approx(0, abs=1e-9)


def test_box_calibration_hits_the_target():
    rng = np.random.default_rng(0)
    alpha, scale = rng.uniform(1.2, 1.9, 50), rng.uniform(0.01, 0.1, 50)
    alpha[:5], scale[5:8] = 2.0, 0.0  # left out of the theory
    w = es.calibrate_box(alpha, scale, 0.1, 40.0)
    heavy = (alpha < 2) & (scale > 0)
    th = levy.exit_time_theory(alpha[heavy], scale[heavy], 0.1, half_widths=w)
    assert th.mean_exit_steps == pytest.approx(40.0, rel=1e-6)
    groups = np.repeat(np.arange(5), 10)
    pred, steps = es.layer_exit_prediction(alpha, scale, 0.1, w, groups, 5)
    assert pred.sum() == pytest.approx(1.0) and steps == pytest.approx(40.0, rel=1e-6)
    assert es.calibrate_box(np.full(3, 2.0), np.array([0.1, 0.2, 0.3]), 0.5, 10.0) == pytest.approx(
        10 * 0.5 * 0.3
    )


def _arms(decay_acc, batch_acc, decay_jump, small_acc=None):
    const = {"test_acc": [0.80, 0.81, 0.79, 0.80], "jump_frequency": [0.010, 0.011, 0.009, 0.010]}
    out = {
        "constant": const,
        "lr-decay": {"test_acc": decay_acc, "jump_frequency": decay_jump},
        "batch-increase": {"test_acc": batch_acc, "jump_frequency": [0.004] * 4},
    }
    if small_acc is not None:
        out["lr-decay-small-batch"] = {"test_acc": small_acc, "jump_frequency": [0.01] * 4}
    return out


GAIN = [0.86, 0.87, 0.85, 0.86]
SAME = [0.80, 0.815, 0.785, 0.80]
LOW_JUMPS = [0.002, 0.003, 0.002, 0.0025]
SAME_JUMPS = [0.010, 0.0105, 0.0095, 0.010]


@pytest.mark.parametrize(
    ("arms", "verdict"),
    [
        (_arms(GAIN, GAIN, LOW_JUMPS), "supported"),
        (_arms(GAIN, GAIN, LOW_JUMPS, small_acc=SAME), "supported"),
        (_arms(SAME, GAIN, LOW_JUMPS), "inconclusive"),
        (_arms([0.70, 0.71, 0.69, 0.70], GAIN, LOW_JUMPS), "not supported"),
        (_arms(GAIN, [0.75, 0.74, 0.76, 0.75], LOW_JUMPS), "not supported"),
        (_arms(GAIN, GAIN, LOW_JUMPS, small_acc=[0.88, 0.87, 0.89, 0.88]), "not supported"),
        (_arms(GAIN, GAIN, SAME_JUMPS), "inconclusive"),
    ],
)
def test_decay_verdict_rule(arms, verdict):
    out = es.decay_verdict(arms)
    assert out["verdict"] == verdict, out["reason"]
    assert _inside(
        out["decay_gain"]["diff"], out["decay_gain"]["ci_low"], out["decay_gain"]["ci_high"]
    )


def test_decay_verdict_needs_arms_and_seeds():
    with pytest.raises(ValueError, match="batch-increase"):
        es.decay_verdict({"constant": {}, "lr-decay": {}})
    one = {
        a: {"test_acc": [0.9], "jump_frequency": [0.1]}
        for a in ("constant", "lr-decay", "batch-increase")
    }
    assert es.decay_verdict(one)["verdict"] == "inconclusive"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pathz": 3}, "did you mean 'paths'"),
        ({"exit": "energy"}, "exit"),
        ({"from_step": 7}, "from_step must be a checkpoint step"),
        ({"arms": ["lr-decay"]}, "arms must include constant"),
        ({"arms": ["warmup"]}, "arms\\[0\\]"),
        ({"box": "big"}, "box must be"),
        ({"box": -1.0}, "box"),
        ({"paths": 1}, "paths"),
        ({"lr_factors": []}, "lr_factors must list"),
        ({"noise_factors": [1.0, 0.0]}, "noise_factors\\[1\\]"),
        ({"sgn_samples": 5}, "sgn_samples"),
        ({"level": 1.0}, "level"),
        ({"box_target": 1.5}, "box_target"),
        ({"gauss_scale": "var"}, "gauss_scale"),
        ({"sharp_batch": 16}, "sharp_batch must differ"),
        ({"sharp_batch": 64, "from_step": 0}, "after the first checkpoint"),
        ({"sharp_paths": 1}, "sharp_paths"),
        ({"sharp_lr_factor": 0.0}, "sharp_lr_factor"),
        ({"axis_coords": 0}, "axis_coords"),
    ],
)
def test_bad_options_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        resolve_options(options, CONFIG)


def test_batch_size_not_below_train_split_refused_before_training(tmp_path):
    bad = CONFIG.replace(options={"escape": {**OPTIONS, "batch_sizes": [16, 5000]}})
    with pytest.raises(ConfigError, match="not below the"):
        run_study(bad, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_not_in_default_study_and_preset_configs_valid():
    assert "escape" not in StudyConfig().analyses
    for quick in (True, False):
        configs = get_preset("battash-escape").configs(quick, 0)
        assert {c.dataset for c in configs.values()} == {"digits", "mnist1d"}
        for config in configs.values():
            assert "escape" in config.analyses
            check_study(config)
    for quick in (True, False):
        configs = get_preset("battash-escape").configs(quick, 0)
        assert len(configs) == 2 and {c.batch_size for c in configs.values()} == {32}
        # sharp vs flat: both minima trained inside the analysis to the same loss
        assert {c.options["escape"]["sharp_batch"] for c in configs.values()} == {512}


@pytest.mark.slow
def test_preset_quick_runs_at_a_minimal_size(tmp_path, monkeypatch):
    """``gradnoise reproduce battash-escape --quick`` end to end, shrunk further (the real quick
    size takes about 50 s of CPU): both datasets, the index page's comparison table."""
    from typer.testing import CliRunner

    from gradnoise.cli import app
    from gradnoise.study.presets import battash_escape as preset

    monkeypatch.setattr(preset, "QUICK_STEPS", {"mnist1d": 8, "digits": 8})
    tiny = {"paths": 2, "horizon": 6, "sgn_samples": 20, "arm_steps": 2, "trace_coords": 1}
    monkeypatch.setattr(preset, "QUICK_OPTIONS", {**OPTIONS, **tiny, "lr_factors": [1.0]})
    monkeypatch.setattr(preset, "QUICK", {**preset.QUICK, "track_coords": 20})
    monkeypatch.setattr(
        preset, "MODEL", {"model": "mlp", "model_options": {"widths": [4]}, "lr": 0.1}
    )
    out = tmp_path / "preset"
    result = CliRunner().invoke(
        app, ["reproduce", "battash-escape", "--quick", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    assert "decay verdict" in index and "slope Lévy" in index
    for key in ("digits", "mnist1d"):
        assert "Verdict:" in (out / key / "report.html").read_text()


def test_kramers_line_rendered_when_in_regime(run_dir, tmp_path):
    """The report draws and quotes the Kramers prediction only where the summary has one."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = copy / "summary.json"
    summary = json.loads(path.read_text())
    esc = summary["analyses"]["escape"]
    for r in esc["sweep"]:
        if r["arm"] == "gauss":
            r["theory_steps"] = 123.0
            r["kramers"].update(in_regime=True, no_barrier=0, below_min_ratio=0, mean_steps=123.0)
    path.write_text(json.dumps(summary))
    render_run(copy)
    html = (copy / "report.html").read_text()
    assert "Predicted vs simulated mean first box exit" in html and "×1: 123 vs" in html
    assert "no meaningful barrier" not in html
    assert "no meaningful barrier" in (run_dir / "report.html").read_text()
