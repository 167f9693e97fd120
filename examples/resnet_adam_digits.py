"""A ResNet-style CNN trained with Adam on 8x8 digits, with the whole gradnoise study inside the
training loop.

    python examples/resnet_adam_digits.py                 # 600 steps, report in runs/resnet-adam
    python examples/resnet_adam_digits.py --tiny          # a few steps (what CI runs)

Copy the loop: the only gradnoise lines are ``Probe(...)``, ``probe.step(...)`` after
``loss.backward()`` and ``probe.finish()``. The network uses GroupNorm: BatchNorm in training mode
mixes the examples of a batch, so per-example gradients would not be defined (gradnoise refuses
it and says so).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradnoise
from gradnoise.probe import QUICK_OPTIONS
from gradnoise.study import headlines


class Block(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(4, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(4, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def build_model(channels: int = 16, blocks: int = 2) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        *[Block(channels) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 10),
    )


def make_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 8x8 digits (shipped with it, no download), split 80/20."""
    data = gradnoise.load_dataset("digits", seed=0)
    return gradnoise.datasets.as_tensors(data.train), gradnoise.datasets.as_tensors(data.test)


def train(
    steps: int,
    out: Path | None,
    tiny: bool = False,
    seed: int = 0,
    analyses: tuple[str, ...] = (
        "training",
        "gradients",
        "tails",
        "noise_model",
        "spectra",
        "variance",
    ),
) -> dict:
    """Train ``steps`` Adam steps; with ``out``, a probe follows the run. Returns headlines."""
    torch.manual_seed(seed)
    (x, y), test = make_data()
    model = build_model(8 if tiny else 16, 1 if tiny else 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    probe = None
    if out is not None:
        probe = gradnoise.Probe(
            out,
            model,
            loss_fn,
            (x[:128], y[:128]) if tiny else (x, y),  # the examples the study measures on
            test_data=test,
            batch_size=32,
            optimizer=opt,
            checkpoints=[0, steps // 2, steps],
            analyses=analyses,
            options=QUICK_OPTIONS if tiny else {},
            scalars=("train_acc",),
            per_sample_examples=32 if tiny else 256,
            noise_batches=16 if tiny else 64,
        )
    step = 0
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            if probe is not None:
                acc = float((logits.argmax(1) == yb).float().mean())
                probe.step(step, loss=loss.item(), lr=opt.param_groups[0]["lr"], train_acc=acc)
            opt.step()
            step += 1
            if step == steps:
                break
    if probe is None:
        return {}
    report = probe.finish(final_step=steps)
    return {"report": str(report), **headlines(report.parent)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("runs/resnet-adam"))
    parser.add_argument("--tiny", action="store_true", help="a few steps, small analyses (CI)")
    args = parser.parse_args(argv)
    steps = min(args.steps, 12) if args.tiny else args.steps
    print(json.dumps(train(steps, args.out, tiny=args.tiny), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
