"""The probe's overhead per training step, per example model: ms/step with vs without it.

Each example of ``examples/`` trains ``STEPS`` steps at its full size twice: without a probe
(wall time of the training loop) and with one (checkpoints at 0, STEPS/2 and STEPS, the
variance analysis measuring every STEPS/10 steps as in a default study). The probe's own time
per step is ``manifest.json``'s ``probe_step_s / steps_seen``: recording the minibatch gradient
of 5,000 coordinates, the gradient norm, the test evaluation every ``eval_every`` steps, the
checkpoint captures (per-sample gradients, full gradient, SGN) and the variance measurements,
amortised over the run. ``finish()`` (the analyses and the report, once after training) is
timed separately. Only the variance analysis has a during-training part, so the per-step
overhead is the same with every analysis on.

    python benchmarks/probe_overhead.py [--steps 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODELS = {
    "resnet_adam_digits": "ResNet-style CNN, Adam, digits (batch 32)",
    "transformer_lm": "decoder-only LM, AdamW, 32-token sequences (batch 32)",
    "lightning_module": "MLP LightningModule, SGD+momentum, 2-step accumulation (batch 64)",
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, what in MODELS.items():
        example = _load(name)
        t = time.perf_counter()
        example.train(args.steps, None)
        plain = (time.perf_counter() - t) / args.steps
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            example.train(args.steps, Path(tmp) / "run", analyses=("variance",))
            total = time.perf_counter() - t
            manifest = json.loads((Path(tmp) / "run" / "manifest.json").read_text())
        timings = manifest["timings"]
        probe = timings["probe_step_s"] / manifest["steps_seen"]
        rows.append(
            (
                what,
                1e3 * plain,
                1e3 * (plain + probe),
                1 + probe / plain,
                timings["total_s"] - timings["train_and_capture_s"],
                total,
            )
        )
    print(f"{args.steps} steps, {args.threads} thread(s), torch {torch.__version__}")
    print("| model | ms/step without | ms/step with probe | ratio | finish() s |")
    print("|---|---|---|---|---|")
    for what, without, with_probe, ratio, finish, _ in rows:
        print(f"| {what} | {without:.1f} | {with_probe:.1f} | {ratio:.2f} | {finish:.1f} |")


if __name__ == "__main__":
    main()
