"""A small decoder-only transformer language model (tied embeddings, causal attention, dropout)
on a procedurally generated token corpus, with the whole gradnoise study inside the loop.

    python examples/transformer_lm.py                 # 800 steps, report in runs/transformer-lm
    python examples/transformer_lm.py --tiny          # a few steps (what CI runs)

An example is a sequence: per-example gradients are per-sequence gradients, whose loss is the
mean next-token cross-entropy of that sequence (``loss_fn`` on a batch of one). The model
returns logits ``[B, V, T]`` so that ``nn.CrossEntropyLoss`` takes them with targets ``[B, T]``.
Dropout draws random masks, so the probe needs a choice: ``dropout="eval"`` measures the
network with its dropout modules in eval mode (``"sample"`` would draw one mask per sequence).
The output projection reuses the embedding matrix (tied weights); gradnoise computes its
per-sequence gradient exactly through torch.func.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradnoise
from gradnoise.probe import QUICK_OPTIONS
from gradnoise.study import headlines


def make_corpus(
    sequences: int, length: int, vocab: int, seed: int = 0, grammar: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences from a random grammar (fixed by ``grammar``; ``seed`` draws the
    sequences): a sparse first-order Markov chain (each token has 3 likely successors) with a
    copy rule (a marker token is followed by the token 3 places before it). Returns inputs and
    next-token targets, both ``[N, length]`` int64."""
    successors = np.random.default_rng(grammar).integers(1, vocab, size=(vocab, 3))
    rng = np.random.default_rng([grammar, seed])
    marker = 0
    tokens = np.empty((sequences, length + 1), dtype=np.int64)
    tokens[:, 0] = rng.integers(1, vocab, size=sequences)
    for t in range(1, length + 1):
        nxt = successors[tokens[:, t - 1], rng.integers(0, 3, size=sequences)]
        if t >= 4:
            copy = rng.random(sequences) < 0.1
            nxt = np.where(copy, marker, nxt)
            after_marker = tokens[:, t - 1] == marker
            nxt = np.where(after_marker, tokens[:, t - 4], nxt)
        tokens[:, t] = nxt
    data = torch.as_tensor(tokens)
    return data[:, :-1], data[:, 1:]


class TinyLM(nn.Module):
    """Token and position embeddings, pre-norm transformer blocks with a causal mask, and an
    output projection tied to the token embedding."""

    def __init__(self, vocab: int, length: int, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        for table in (self.tok, self.pos):  # logits of unit scale through the tied projection
            nn.init.normal_(table.weight, std=dim**-0.5)
        block = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        h = self.drop(self.tok(ids) + self.pos(torch.arange(t, device=ids.device)))
        h = self.blocks(h, mask=self.causal[:t, :t], is_causal=True)
        logits = self.norm(h) @ self.tok.weight.T  # tied output projection, [B, T, V]
        return logits.transpose(1, 2)  # [B, V, T] for nn.CrossEntropyLoss


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
    """Train ``steps`` AdamW steps with a warm-up/cosine schedule; with ``out``, a probe follows
    the run. Returns headline numbers."""
    torch.manual_seed(seed)
    vocab, length = 32, 8 if tiny else 32
    x, y = make_corpus(640 if tiny else 4096, length, vocab, seed=seed)
    test = make_corpus(128 if tiny else 512, length, vocab, seed=seed + 1)  # same grammar
    dim, layers = (16, 1) if tiny else (64, 2)
    model = TinyLM(vocab, length, dim, heads=2 if tiny else 4, layers=layers, dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps + 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    probe = None
    if out is not None:
        probe = gradnoise.Probe(
            out,
            model,
            loss_fn,
            (x[:64], y[:64]) if tiny else (x[:512], y[:512]),  # the sequences measured on
            test_data=test,
            batch_size=32,
            optimizer=opt,
            dropout="eval",
            checkpoints=[0, steps // 2, steps],
            analyses=analyses,
            options=QUICK_OPTIONS if tiny else {},
            per_sample_examples=32 if tiny else 256,
            noise_batches=16 if tiny else 64,
        )
    step = 0
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if probe is not None:
                probe.step(step, loss=loss.item(), lr=sched.get_last_lr()[0])
            opt.step()
            sched.step()
            step += 1
            if step == steps:
                break
    if probe is None:
        return {}
    report = probe.finish(final_step=steps)
    return {"report": str(report), **headlines(report.parent)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path("runs/transformer-lm"))
    parser.add_argument("--tiny", action="store_true", help="a few steps, small analyses (CI)")
    args = parser.parse_args(argv)
    steps = min(args.steps, 12) if args.tiny else args.steps
    print(json.dumps(train(steps, args.out, tiny=args.tiny), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
