"""The zoo's outcome per entry point, as a table: how each model's parameters are routed and how far
each entry point is from the naive one-backward-per-example oracle (float64), or what it refused.

Run::

    .venv/bin/python benchmarks/zoo_table.py          # ~1 minute

Columns: the audit's routes (parameters on layer rules / torch.func / the per-example loop), then
per entry point the maximum relative difference to the oracle ("exact" cases) or the error class
(refused cases). The same checks run as tests in ``tests/test_zoo.py`` (rtol 1e-10).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import gradnoise
from test_zoo import ENTRY_POINTS, oracle, run_entry
from zoo import CASES


def _gap(got, want) -> float:
    got = torch.as_tensor(got).to("cpu", torch.float64)
    want = torch.as_tensor(want).to("cpu", torch.float64)
    return float((got - want).abs().max() / max(float(want.abs().max()), 1e-300))


def main() -> None:
    warnings.simplefilter("ignore")
    short = {"per_sample_grads": "per-sample", "covariance_spectrum": "cov. spectrum"}
    print(
        "| model | routes (rule/func/loop) | "
        + " | ".join(short.get(e, e) for e in ENTRY_POINTS)
        + " |"
    )
    print("|---|---|" + "---|" * len(ENTRY_POINTS))
    for case in CASES:
        cells = []
        routes = "-"
        for entry in ENTRY_POINTS:
            model, loss_fn, x, y = case.build()
            try:
                if routes == "-":
                    audit = gradnoise.audit_model(model, loss_fn, x, y, dropout=case.dropout)
                    routes = "/".join(
                        str(len(audit.names(p))) for p in ("structured", "func", "loop")
                    )
                g = oracle(case, model, loss_fn, x, y)
                got, expected = run_entry(entry, case, model, loss_fn, x, y)
                cells.append(f"{_gap(got, expected(g)):.0e}")
            except Exception as err:  # the table reports refusals
                cells.append(f"refused ({type(err).__name__})")
        print(f"| {case.name} | {routes} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
