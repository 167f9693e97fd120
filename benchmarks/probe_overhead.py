"""The probe's overhead per training step, per example model: ms/step with vs without it.

Each example of ``examples/`` trains ``STEPS`` steps at its full size twice: without a probe
(wall time of the training loop) and with one (checkpoints at 0, STEPS/2 and STEPS; the variance
analysis measuring every STEPS/10 steps, as a default study does). ``manifest.json`` splits the
probe's time inside ``step()`` into its three parts:

* recording, at every step: the minibatch gradient of 5,000 coordinates, the gradient norm and
  the row written to the store (``probe_record_s``);
* a checkpoint capture: the model saved, per-sample gradients, the full gradient and SGN at those
  parameters (``probe_capture_s``, per checkpoint reached inside the loop);
* a variance measurement: full gradient, minibatch draws and the estimator comparators
  (``probe_measure_s``, per measurement inside the loop).

The table gives ms/step without the probe, with it recording (every step), the ratio, the
seconds of one checkpoint capture and of one variance measurement, and the amortised ms/step of
a 10,000-step run with 3 checkpoints and 11 measurements (computed from those parts). Only the
variance analysis measures during training; ``finish()`` (the analyses and the report) runs
once afterwards and is not in these numbers.

    python benchmarks/probe_overhead.py [--steps 40] [--threads 1]
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
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps
    print(f"{steps} steps, {args.threads} thread(s), torch {torch.__version__}")
    print(
        "| model | ms/step without | ms/step with probe (recording) | ratio "
        "| s per checkpoint capture | s per variance measurement "
        "| ms/step amortised, 10,000 steps |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, what in MODELS.items():
        example = _load(name)
        t = time.perf_counter()
        example.train(steps, None)
        plain = 1e3 * (time.perf_counter() - t) / steps
        with tempfile.TemporaryDirectory() as tmp:
            example.train(steps, Path(tmp) / "run", analyses=("variance",))
            manifest = json.loads((Path(tmp) / "run" / "manifest.json").read_text())
            summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
        timings = manifest["timings"]
        record = 1e3 * timings["probe_record_s"] / manifest["steps_seen"]
        captures = sum(1 for s in summary["checkpoints"] if s < steps)  # the last is in finish()
        measured = summary["analyses"]["variance"]["measurements"] - 1  # likewise
        capture = timings["probe_capture_s"] / captures
        measure = timings["probe_measure_s"] / measured
        amortised = plain + record + 1e3 * (3 * capture + 11 * measure) / 10_000
        print(
            f"| {what} | {plain:.1f} | {plain + record:.1f} | {(plain + record) / plain:.2f} "
            f"| {capture:.2f} | {measure:.2f} | {amortised:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
