"""The in-loop probe: training is bit-identical with and without it, its run directory is the
one of ``gradnoise run`` (re-rendered, re-analysed), and a probe used wrongly says so."""

from __future__ import annotations

import json
import random
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

import gradnoise
from gradnoise.cli import app
from gradnoise.errors import (
    ConfigError,
    DataError,
    ProbeError,
    ProbeWarning,
    UnsupportedLayerError,
)
from gradnoise.study import StudyConfig, run_study

# small options: every analysis runs in seconds on 96 examples
SMALL = {
    "tails": {"n_boot": 0, "matched_samples": 2, "sgn_batches": 16, "min_tail": 10},
    "spectra": {
        "examples": 16,
        "bootstrap": 0,
        "batch_sizes": [4],
        "sweep_batches": 8,
        "sweep_pool": 32,
        "hessian_k": 3,
        "hessian_examples": 16,
        "stability_k": 0,
    },
    "noise_model": {
        "sgn_samples": 24,
        "coords": 60,
        "fit_coords": 10,
        "batch_sizes": [8],
        "directions": 10,
        "arm_steps": 3,
    },
    "variance": {"every": 3, "draws": 4, "num_clusters": 4},
}


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=gen)
    return x, (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))


OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
}


def _train(make_opt, steps: int, out=None, finish=True, **probe_kwargs):
    """Train the dropout net on a shuffled DataLoader (both draw from torch's global RNG);
    with ``out``, a probe follows the run. Returns the final parameters and the RNG states."""
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002 - the test checks that the probe gives these back
    random.seed(1)
    model = _net()
    opt = make_opt(model.parameters())
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    probe = None
    if out is not None:
        probe = gradnoise.Probe(
            out, model, loss_fn, (x, y), batch_size=8, optimizer=opt, **probe_kwargs
        )
    step = 0
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if probe is not None:
                probe.step(step, loss=loss.item(), lr=opt.param_groups[0]["lr"])
            opt.step()
            step += 1
            if step == steps:
                break
    if probe is not None and finish:
        probe.finish(final_step=steps)
    elif probe is not None:
        probe.close()
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())  # noqa: NPY002
    return [p.detach().clone() for p in model.parameters()], states


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_is_bit_identical_with_and_without_the_probe(name, tmp_path):
    """SGD+momentum and AdamW, a shuffling DataLoader and dropout (torch's global RNG), with
    checkpoints, per-sample, full-gradient and SGN captures under dropout='sample' (which
    draws masks) and variance measurements with the estimator comparators during training:
    the parameters after 14 steps are equal (torch.equal), and so are the global torch, numpy
    and Python random states (after finish() too, for AdamW)."""
    plain, plain_states = _train(OPTIMIZERS[name], 14)
    finish = name == "adamw"
    probed, probed_states = _train(
        OPTIMIZERS[name],
        14,
        tmp_path / "run",
        finish=finish,
        checkpoints=[0, 6, 14],
        dropout="sample",
        analyses=("variance",),
        options={"variance": SMALL["variance"]},
        per_sample_examples=16,
        noise_batches=8,
        track_coords=50,
    )
    assert all(torch.equal(a, b) for a, b in zip(plain, probed, strict=True))
    assert torch.equal(plain_states[0], probed_states[0])
    assert np.array_equal(plain_states[1], probed_states[1])
    assert plain_states[2] == probed_states[2]
    run = gradnoise.open_run(tmp_path / "run")
    assert run.length == 14 and sorted(run.noise) == ([0, 6, 14] if finish else [0, 6])
    if finish:
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["checkpoints"] == [0, 6, 14] and summary["optimizer"]["class"] == "AdamW"
        assert summary["analyses"]["variance"]["measurements"] == 6  # 0, 3, 6, 9, 12 and 14


def test_the_check_can_fail(tmp_path, monkeypatch):
    """The comparison above detects a probe that consumed randomness: a step that draws one
    number from torch's generator changes the parameters."""
    plain, _ = _train(OPTIMIZERS["adamw"], 6)
    original = gradnoise.Probe.step
    calls: list[int] = []

    def leaky(self, step, **kwargs):
        torch.rand(1)
        calls.append(step)
        return original(self, step, **kwargs)

    monkeypatch.setattr(gradnoise.Probe, "step", leaky)
    leaked, _ = _train(
        OPTIMIZERS["adamw"],
        6,
        tmp_path / "run",
        finish=False,
        analyses=("gradients",),
        track_coords=20,
        dropout="eval",
    )
    assert calls == list(range(6))
    assert not all(torch.equal(a, b) for a, b in zip(plain, leaked, strict=True))


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """A probe through a short run of every analysis, with test data and a learning rate
    schedule."""
    torch.manual_seed(0)
    model = _net()
    x, y = _data()
    xt, yt = _data(40, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()
    out = tmp_path_factory.mktemp("probe") / "run"
    probe = gradnoise.Probe(
        out,
        model,
        loss_fn,
        DataLoader(TensorDataset(x, y), batch_size=8),
        test_data=(xt, yt),
        analyses=("training", "gradients", "tails", "noise_model", "spectra", "variance"),
        checkpoints=[0, 6, 12],
        options=SMALL,
        dropout="eval",
        optimizer=opt,
        per_sample_examples=16,
        noise_batches=16,
        track_coords=80,
        eval_every=3,
        scalars=("train_acc",),
    )
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        idx = torch.randperm(96, generator=gen)[:8]
        opt.zero_grad()
        out_b = model(x[idx])
        loss = loss_fn(out_b, y[idx])
        loss.backward()
        acc = float((out_b.argmax(1) == y[idx]).float().mean())
        probe.step(step, loss=loss, lr=sched.get_last_lr()[0], train_acc=acc)
        opt.step()
        sched.step()
    report = probe.finish(final_step=12)
    return out, report, model, loss_fn, (x, y), (xt, yt)


def test_probe_writes_the_run_directory_of_gradnoise_run(probe_run):
    out, report, *_ = probe_run
    assert report == out / "report.html" and report.exists()
    for name in [
        "grads.zarr",
        "manifest.json",
        "checkpoints/step_0000012.pt",
        "checkpoints/initial.pt",
    ]:
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["analyses"]) == {
        "training",
        "gradients",
        "tails",
        "noise_model",
        "spectra",
        "variance",
    }
    assert not any("unavailable" in v for v in summary["analyses"].values())
    assert summary["checkpoints"] == [0, 6, 12] and summary["probe"]["dropout"] == "eval"
    assert summary["optimizer"]["kind"] == "adaptive"
    arms = summary["analyses"]["noise_model"]["battash"]["arms"]
    assert arms["base_lr"] == pytest.approx(0.01 * 0.5)  # the schedule's lr at step 6
    assert {r["arm"] for r in arms["rows"]} == {"constant", "lr-decay", "batch-increase"}
    run = gradnoise.open_run(out)
    assert run.length == 12 and sorted(run.full) == [0, 6, 12] and run.full[6].shape == (1, 80)
    assert np.isfinite(run.scalars["test_loss"][::3]).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["optimizer"]["class"] == "Adam" and manifest["timings"]["probe_step_s"] > 0
    html = report.read_text()
    assert "preconditioned" in html  # the noise model says what step noise means under Adam


def test_probe_run_reanalyzes_and_rerenders(probe_run, tmp_path):
    """New tails options on the stored run: its report is rendered again from stored data."""
    out, _, model, loss_fn, train, test = probe_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    before = json.loads((copy / "summary.json").read_text())
    gradnoise.analyze(
        copy,
        ["tails"],
        {"tails": {**SMALL["tails"], "n_boot": 4}},
        model=model,
        loss_fn=loss_fn,
        data=train,
        test_data=test,
    )
    after = json.loads((copy / "summary.json").read_text())
    assert after["analyses"]["tails"]["settings"]["n_boot"] == 4
    assert (copy / "report.html").exists() and (copy / "figures/spectra_covariance.png").exists()
    assert after["analyses"]["spectra"] == before["analyses"]["spectra"]
    with pytest.raises(ConfigError, match="pass its train_data"):
        gradnoise.analyze(copy, ["tails"], model=model, loss_fn=loss_fn)
    with pytest.raises(ConfigError, match="measured along training"):
        gradnoise.analyze(copy, ["variance"], model=model, loss_fn=loss_fn, data=train)
    with pytest.raises(DataError, match="pass the same data"):
        gradnoise.analyze(copy, ["tails"], model=model, loss_fn=loss_fn, data=_data(50))


def test_analyze_with_the_same_options_reproduces_the_summary(tmp_path):
    """``gradnoise analyze`` on a stored ``gradnoise run`` (CLI, no retraining) gives back the
    same bytes; new options from a TOML file change the analysis they name."""
    cfg = StudyConfig(
        steps=8,
        batch_size=16,
        track_coords=100,
        per_sample_examples=16,
        noise_batches=16,
        checkpoints=2,
        analyses=("tails",),
        options={"tails": SMALL["tails"]},
    )
    run = run_study(cfg, tmp_path / "run")
    before = (run / "summary.json").read_bytes()
    result = CliRunner().invoke(app, ["analyze", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert (run / "summary.json").read_bytes() == before
    (tmp_path / "opts.toml").write_text("[options.tails]\nn_boot = 3\nmin_tail = 10\n")
    result = CliRunner().invoke(
        app, ["analyze", str(run), "--analyses", "tails", "--config", str(tmp_path / "opts.toml")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["analyses"]["tails"]["settings"]["n_boot"] == 3
    (tmp_path / "bad.toml").write_text("steps = 5\n")
    result = CliRunner().invoke(app, ["analyze", str(run), "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2 and "would change how it was trained" in result.output


def test_run_study_with_a_user_model_mse_loss_and_adam(tmp_path):
    """The built-in trainer takes a model factory, a regression loss and Adam (from the
    config); the analyses run on it and ``analyze`` needs the model back."""
    gen = np.random.default_rng(0)
    x = gen.normal(size=(120, 6)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", X=x, y=np.stack([x[:, 0] - x[:, 1], x[:, 2] ** 2], 1))

    def factory() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2))

    cfg = StudyConfig(
        dataset=str(tmp_path / "reg.npz"),
        loss="mse",
        optimizer="adam",
        lr=1e-2,
        optimizer_options={"betas": [0.8, 0.99]},
        steps=10,
        batch_size=8,
        per_sample_examples=16,
        noise_batches=16,
        checkpoints=[0, 5, 10],
        analyses=("training", "gradients", "noise_model"),
        options={"noise_model": {**SMALL["noise_model"], "studies": ["battash"]}},
    )
    run = run_study(cfg, tmp_path / "run", model=factory)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["model"] == "Sequential" and summary["data"]["num_classes"] is None
    assert summary["optimizer"]["hyperparameters"]["betas"] == [0.8, 0.99]
    assert summary["analyses"]["training"]["train_acc_last"] is None
    assert summary["analyses"]["noise_model"]["battash"]["arms"]["rows"]
    before = (run / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match="run of a user's model"):
        gradnoise.analyze(run, ["gradients"])
    gradnoise.analyze(run, ["gradients"], model=factory)  # the factory, seeded: same init
    assert (run / "summary.json").read_bytes() == before


def test_run_study_with_an_optimizer_function_and_a_loss_object(tmp_path):
    cfg = StudyConfig(
        steps=4,
        batch_size=16,
        per_sample_examples=8,
        noise_batches=4,
        checkpoints=2,
        analyses=("training",),
    )
    run = run_study(
        cfg,
        tmp_path / "run",
        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
        optimizer=lambda p: torch.optim.RMSprop(p, lr=1e-3),
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["loss"] == "custom" and summary["config"]["optimizer"] == "custom"
    assert summary["optimizer"]["class"] == "RMSprop"
    assert "optimizer hyper-parameters" in (run / "report.html").read_text()


# ---------------------------------------------------------------------------------- bad input


def _probe(tmp_path, model=None, loss_fn=None, data=None, **kwargs):
    return gradnoise.Probe(
        tmp_path / "run",
        model if model is not None else _net(),
        loss_fn if loss_fn is not None else nn.CrossEntropyLoss(),
        data if data is not None else _data(),
        batch_size=8,
        analyses=("gradients",),
        track_coords=30,
        per_sample_examples=8,
        noise_batches=4,
        dropout="eval",
        **kwargs,
    )


def _backward(model, loss_fn=None):
    x, y = _data(8)
    (loss_fn or nn.CrossEntropyLoss())(model(x), y).backward()


def test_step_before_backward_names_the_problem_and_keeps_earlier_steps(tmp_path):
    model = _net()
    probe = _probe(tmp_path, model)
    _backward(model)
    probe.step(0, loss=1.0)
    model.zero_grad()
    with pytest.raises(ProbeError, match=r"after loss.backward\(\)"):
        probe.step(1, loss=1.0)
    probe.close()
    assert gradnoise.open_run(tmp_path / "run").length == 1


@pytest.mark.parametrize(
    "case, match",
    [
        ("non-scalar loss", "the loss is not a scalar"),
        ("steps out of order", "steps must increase"),
        ("reshaped parameter", "parameters changed since the probe started"),
        ("undeclared scalar", "unknown scalar"),
    ],
)
def test_a_probe_used_wrongly_says_so(case, match, tmp_path):
    model = _net()
    probe = _probe(tmp_path, model)
    _backward(model)
    probe.step(3, loss=0.5)
    kwargs: dict = {"loss": 0.5}
    step = 4
    if case == "non-scalar loss":
        kwargs["loss"] = torch.ones(4)
    elif case == "steps out of order":
        step = 3
    elif case == "reshaped parameter":
        model[3] = nn.Linear(16, 5)
        _backward(model)
    else:
        kwargs["accuracy"] = 0.5
    with pytest.raises(ProbeError, match=match):
        probe.step(step, **kwargs)
    probe.close()
    assert gradnoise.open_run(tmp_path / "run").length == 1


def test_a_checkpoint_never_reached_is_reported_at_finish(tmp_path):
    model = _net()
    probe = _probe(tmp_path, model, checkpoints=[0, 50])
    for step in range(3):
        model.zero_grad()
        _backward(model)
        probe.step(step, loss=1.0)
    with pytest.warns(ProbeWarning, match=r"\[50\] were never reached"):
        report = probe.finish()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["probe"]["missed_checkpoints"] == [50]
    assert "checkpoints never reached" in report.read_text()


def test_analyses_without_data_say_so_in_the_report(tmp_path):
    model = _net()
    probe = _probe(tmp_path, model, checkpoints=[10])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)
        report = probe.finish()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["analyses"]["gradients"]["unavailable"].startswith("no checkpoint was reached")
    assert "Not available for this run: no checkpoint was reached" in report.read_text()


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("loss returns a vector", ConfigError, "the loss is not a scalar"),
        ("inputs of the wrong width", DataError, "does not accept the inputs"),
        ("no batch size", ConfigError, "batch_size= "),
        ("unknown dropout choice", ConfigError, "dropout must be one of"),
        ("dropout without a choice", UnsupportedLayerError, "dropout='eval'"),
    ],
)
def test_bad_probe_arguments_are_refused_before_anything_is_written(case, error, match, tmp_path):
    kwargs: dict = {}
    if case == "loss returns a vector":
        kwargs["loss_fn"] = nn.CrossEntropyLoss(reduction="none")
    elif case == "inputs of the wrong width":
        kwargs["data"] = (torch.randn(40, 7), torch.zeros(40, dtype=torch.long))
    with pytest.raises(error, match=match):
        if case == "no batch size":
            gradnoise.Probe(tmp_path / "run", _net(), nn.CrossEntropyLoss(), _data())
        elif case == "dropout without a choice":
            gradnoise.Probe(tmp_path / "run", _net(), nn.CrossEntropyLoss(), _data(), batch_size=8)
        elif case == "unknown dropout choice":
            gradnoise.Probe(
                tmp_path / "run",
                _net(),
                nn.CrossEntropyLoss(),
                _data(),
                batch_size=8,
                dropout="off",
            )
        else:
            _probe(tmp_path, **kwargs)
    assert not (tmp_path / "run").exists()
