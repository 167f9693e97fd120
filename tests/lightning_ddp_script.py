"""Run by tests/test_integrations.py in a subprocess: Lightning DDP on 2 CPU processes (gloo)
with the gradnoise callback; each rank prints what it holds. Usage: python SCRIPT OUT_DIR."""

from __future__ import annotations

import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradnoise.integrations.lightning import GradNoiseCallback


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(96, 10)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    callback = GradNoiseCallback(
        sys.argv[1],
        analyses=("gradients",),
        checkpoints=[0, 6],
        per_sample_examples=8,
        noise_batches=4,
        track_coords=40,
    )
    trainer = L.Trainer(
        max_steps=6,
        callbacks=[callback],
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=8))
    print(
        f"rank {trainer.global_rank}: probe {callback.probe is not None}, report {callback.report}"
    )
