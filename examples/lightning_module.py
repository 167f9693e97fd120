"""A LightningModule trained by ``lightning.Trainer``, with the gradnoise study attached as a
callback (``pip install 'gradnoise[lightning]'``).

    python examples/lightning_module.py               # 400 steps, report in runs/lightning
    python examples/lightning_module.py --tiny        # a few steps (what CI runs)

The callback follows the module itself: ``loss_fn(module(x), y)`` must be the loss of a batch,
so the module exposes ``loss_fn`` and a ``forward``. Gradient accumulation is on (2 micro-batches
per optimizer step): the probe records once per optimizer step, for minibatches of 2 x 32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradnoise
from gradnoise.integrations.lightning import GradNoiseCallback
from gradnoise.probe import QUICK_OPTIONS
from gradnoise.study import headlines


class DigitsClassifier(L.LightningModule):
    def __init__(self, width: int = 128, lr: float = 0.05) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, width),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, 10),
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=150, gamma=0.3)
        return [opt], [{"scheduler": sched, "interval": "step"}]


def train(
    steps: int,
    out: Path | None,
    tiny: bool = False,
    seed: int = 0,
    analyses: tuple[str, ...] = ("gradients", "tails", "noise_model", "spectra", "variance"),
) -> dict:
    L.seed_everything(seed, verbose=False)
    data = gradnoise.load_dataset("digits", seed=seed)
    x, y = gradnoise.datasets.as_tensors(data.train)
    callback = GradNoiseCallback(
        out or "unused",
        analyses=analyses,
        checkpoints=[0, steps // 2, steps],
        train_data=(x[:128], y[:128]) if tiny else (x, y),
        test_data=gradnoise.datasets.as_tensors(data.test),
        dropout="eval",
        options=QUICK_OPTIONS if tiny else {},
        per_sample_examples=32 if tiny else 256,
        noise_batches=16 if tiny else 64,
    )
    trainer = L.Trainer(
        max_steps=steps,
        accumulate_grad_batches=2,
        callbacks=[callback] if out is not None else [],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    trainer.fit(DigitsClassifier(32 if tiny else 128), loader)
    if out is None:
        return {}
    return {"report": str(callback.report), **headlines(out)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/lightning"))
    parser.add_argument("--tiny", action="store_true", help="a few steps, small analyses (CI)")
    args = parser.parse_args(argv)
    steps = min(args.steps, 12) if args.tiny else args.steps
    print(json.dumps(train(steps, args.out, tiny=args.tiny), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
