"""Training curves: minibatch loss and accuracy along training, test loss/accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...report import Figure, Section, Table
from ...report.figures import figure, save_figure
from ..context import RunView, StudyContext
from ..registry import Analysis


def compute(ctx: StudyContext) -> dict[str, Any]:
    run = ctx.run
    s = run.scalars
    tail = max(1, min(20, run.length // 10))
    evaluated = np.isfinite(s["test_acc"])
    return {
        "recorded_steps": run.length,
        "train_loss_first": float(s["loss"][0]),
        "train_loss_last": float(np.mean(s["loss"][-tail:])),
        "train_acc_last": float(np.mean(s["train_acc"][-tail:])),
        "test_acc_best": float(np.max(s["test_acc"][evaluated])) if evaluated.any() else None,
    }


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or y.size < width:
        return y
    kernel = np.ones(width) / width
    return np.convolve(y, kernel, mode="valid")


def render(view: RunView) -> Section:
    run, res = view.run, view.results
    s, steps = run.scalars, run.steps
    width = max(1, run.length // 30)
    evaluated = np.isfinite(s["test_acc"])
    with figure(2) as (fig, (ax_loss, ax_acc)):
        ax_loss.plot(steps, s["loss"], color="0.75", lw=0.6, label="minibatch")
        ax_loss.plot(
            steps[width - 1 :],
            _smooth(s["loss"], width),
            color="C0",
            label=f"minibatch (mean of {width})",
        )
        ax_loss.plot(
            steps[evaluated], s["test_loss"][evaluated], "o-", ms=2, color="C3", label="test"
        )
        ax_loss.set(xlabel="step", ylabel="cross-entropy loss", yscale="log", title="Loss")
        ax_loss.legend()
        ax_acc.plot(
            steps[width - 1 :], _smooth(s["train_acc"], width), color="C0", label="minibatch"
        )
        ax_acc.plot(
            steps[evaluated], s["test_acc"][evaluated], "o-", ms=2, color="C3", label="test"
        )
        ax_acc.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
        ax_acc.legend()
        path = save_figure(fig, view.figure_path("curves"))
    final = view.summary["final"]
    table = Table(
        ["quantity", "value"],
        [
            ["recorded steps", res["recorded_steps"]],
            ["minibatch loss, first step", res["train_loss_first"]],
            ["minibatch loss, last steps (mean)", res["train_loss_last"]],
            ["minibatch accuracy, last steps (mean)", res["train_acc_last"]],
            ["final test loss", final["test_loss"]],
            ["final test accuracy", final["test_acc"]],
        ],
    )
    return Section(
        "training",
        "Training",
        tables=[table],
        figures=[
            Figure(
                path,
                "Loss (log scale) and accuracy along training; grey: every "
                "minibatch, blue: running mean, red: test set.",
            )
        ],
    )


ANALYSIS = Analysis(
    "training", "Training", compute, render, description="loss and accuracy curves along training"
)
