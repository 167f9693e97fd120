"""The integrations against the real packages: PyTorch Lightning, Hugging Face Transformers and
TensorBoard (installed by ``make test``; the ``lightning``, ``transformers`` and ``tensorboard``
extras)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

import gradnoise
from gradnoise.cli import app
from gradnoise.study import StudyConfig, run_study

L = pytest.importorskip(
    "lightning", reason="PyTorch Lightning is not installed: make test installs it"
)
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: make test installs it"
)
pytest.importorskip("tensorboard", reason="tensorboard is not installed: make test installs it")

SMALL = dict(per_sample_examples=8, noise_batches=8, track_coords=60)
VARIANCE = {"variance": {"every": 2, "draws": 4, "comparators": False}}


def _rerenders(run_dir) -> None:
    (run_dir / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").exists()


class _Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 3))
        self.loss_fn = nn.CrossEntropyLoss()
        self.losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.5)


class _Grads(L.Callback):
    """What the optimizer is about to apply, at each optimizer step."""

    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append(torch.cat([p.grad.reshape(-1) for p in pl_module.parameters()]).clone())


def test_lightning_callback_with_gradient_accumulation(tmp_path):
    """Accumulating 2 micro-batches of 8: one row per optimizer step, equal to the gradient the
    optimizer applies, the loss of the window, and SGN measured for minibatches of 16."""
    from gradnoise.integrations.lightning import GradNoiseCallback

    torch.manual_seed(0)
    x = torch.randn(96, 10)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    callback = GradNoiseCallback(
        tmp_path / "run",
        analyses=("gradients", "variance"),
        checkpoints=[0, 4, 8],
        dropout="eval",
        options=VARIANCE,
        **SMALL,
    )
    grads = _Grads()
    module = _Module()
    trainer = L.Trainer(
        max_steps=8,
        callbacks=[callback, grads],
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    assert callback.report == tmp_path / "run" / "report.html"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["batch_size"] == 16 and summary["checkpoints"] == [0, 4, 8]
    assert summary["optimizer"]["class"] == "SGD"
    run = gradnoise.open_run(tmp_path / "run")
    assert run.steps.tolist() == list(range(8))
    sel = run.selection
    names = [n for n, _ in module.named_parameters()]
    offsets = np.cumsum([0] + [p.numel() for p in module.parameters()])
    columns = np.concatenate(
        [offsets[names.index(n)] + sel.flat_indices(k) for k, n in enumerate(sel.names)]
    )
    applied = torch.stack(grads.grads).numpy()[:, columns]
    np.testing.assert_allclose(run.grads, applied, rtol=1e-6, atol=1e-8)
    window = np.array(module.losses).reshape(8, 2).mean(1)
    np.testing.assert_allclose(run.scalars["loss"], window, rtol=1e-6)
    _rerenders(tmp_path / "run")


def test_lightning_callback_under_ddp_writes_on_rank_0_only(tmp_path):
    """Two CPU processes (gloo): rank 0 runs the probe and writes the run, rank 1 none; the
    minibatch of the study is the global one (8 per rank x 2)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("lightning_ddp_script.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"rank 0: probe True, report {tmp_path / 'run' / 'report.html'}" in proc.stdout
    assert "rank 1: probe False, report None" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["batch_size"] == 16 and summary["checkpoints"] == [0, 6]
    assert gradnoise.open_run(tmp_path / "run").steps.tolist() == list(range(6))


def test_transformers_callback_on_a_tiny_gpt2(tmp_path):
    """A GPT-2 built from a config (tied embeddings, dropout; no download) trains 6 steps with
    Trainer; the probe measures per sequence with the causal-LM loss."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from gradnoise.integrations.transformers import GradNoiseCallback

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    ids = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    callback = GradNoiseCallback(
        tmp_path / "run",
        checkpoints=[0, 6],
        analyses=("gradients", "variance"),
        options=VARIANCE,
        **SMALL,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        max_grad_norm=0,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    train = [{"input_ids": r, "labels": r} for r in ids]
    Trainer(model=model, args=args, train_dataset=train, callbacks=[callback]).train()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["checkpoints"] == [0, 6] and summary["data"]["input_shape"] == [16]
    assert summary["optimizer"]["class"] == "AdamW" and summary["probe"]["dropout"] == "eval"
    rows = summary["analyses"]["gradients"]["checkpoints"]
    assert all(r["full_grad_norm"] > 0 for r in rows)
    assert gradnoise.open_run(tmp_path / "run").steps.tolist() == list(range(6))
    _rerenders(tmp_path / "run")


def _scalars(log_dir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_probe_writes_headline_scalars_to_tensorboard(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(64, 10)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = gradnoise.Probe(
        tmp_path / "run",
        model,
        nn.CrossEntropyLoss(),
        (x, y),
        batch_size=8,
        analyses=("variance",),
        checkpoints=[0, 4],
        options=VARIANCE,
        tensorboard=True,
        **SMALL,
    )
    for step in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[:8]), y[:8])
        loss.backward()
        probe.step(step, loss=loss.item())
        opt.step()
    probe.finish()
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    assert len(scalars["gradnoise/grad_norm"]) == 5 and len(scalars["gradnoise/loss"]) == 5
    assert len(scalars["gradnoise/sgn_norm"]) == 2 and len(scalars["gradnoise/sgn_tail_index"]) == 2
    assert len(scalars["gradnoise/ngv"]) == 3 and all(v > 0 for v in scalars["gradnoise/gsnr"])


def test_gradnoise_run_tensorboard_option(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "run",
            "-q",
            "--steps",
            "4",
            "--analyses",
            "training",
            "--out",
            str(tmp_path / "run"),
            "--tensorboard",
            str(tmp_path / "tb"),
        ],
    )
    assert result.exit_code == 0, result.output
    scalars = _scalars(tmp_path / "tb")
    assert len(scalars["gradnoise/grad_norm"]) == 4 and len(scalars["gradnoise/test_acc"]) == 1
    assert len(scalars["gradnoise/sgn_norm"]) == 3  # checkpoints 0, 2 and 4


def test_run_study_tensorboard_matches_the_summary(tmp_path):
    cfg = StudyConfig(
        steps=3,
        batch_size=16,
        per_sample_examples=8,
        noise_batches=4,
        checkpoints=2,
        analyses=("training",),
    )
    run = run_study(cfg, tmp_path / "run", tensorboard=tmp_path / "tb")
    loss = gradnoise.open_run(run).scalars["loss"]
    np.testing.assert_allclose(_scalars(tmp_path / "tb")["gradnoise/loss"], loss, rtol=1e-6)
