"""Training curves: minibatch loss and accuracy along training, test loss/accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import MissingDataError
from ...report import Chart, Figure, Section, Table
from ...report.figures import figure, save_figure
from ..context import RunView, StudyContext
from ..registry import Analysis


def _series(scalars: dict[str, np.ndarray], name: str, length: int) -> np.ndarray:
    """A recorded scalar, all NaN when the run did not record it (a probe without test data
    or without the user's accuracy)."""
    return scalars.get(name, np.full(length, np.nan))


def _mean_of_finite(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.mean(finite)) if finite.size else None


def compute(ctx: StudyContext) -> dict[str, Any]:
    run = ctx.run
    if run.length == 0:
        raise MissingDataError("no training step was recorded")
    s = run.scalars
    tail = max(1, min(20, run.length // 10))
    test_acc = _series(s, "test_acc", run.length)
    evaluated = np.isfinite(test_acc)
    return {
        "recorded_steps": run.length,
        "train_loss_first": _mean_of_finite(s["loss"][:1]),
        "train_loss_last": _mean_of_finite(s["loss"][-tail:]),
        "train_acc_last": _mean_of_finite(_series(s, "train_acc", run.length)[-tail:]),
        "test_acc_best": float(np.max(test_acc[evaluated])) if evaluated.any() else None,
    }


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or y.size < width:
        return y
    kernel = np.ones(width) / width
    return np.convolve(y, kernel, mode="valid")


def _na(value: Any) -> Any:
    return "n/a" if value is None else value


def render(view: RunView) -> Section:
    run, res = view.run, view.results
    s, steps = dict(run.scalars), run.steps
    for name in ("train_acc", "test_acc", "test_loss"):
        s[name] = _series(s, name, run.length)
    width = max(1, run.length // 30)
    evaluated = np.isfinite(s["test_acc"]) | np.isfinite(s["test_loss"])
    loss_name = {"cross_entropy": "cross-entropy loss", "mse": "mean squared error"}.get(
        view.config.get("loss", ""), "loss"
    )
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
        ax_loss.set(xlabel="step", ylabel=loss_name, yscale="log", title="Loss")
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
            ["minibatch loss, first step", _na(res["train_loss_first"])],
            ["minibatch loss, last steps (mean)", _na(res["train_loss_last"])],
            ["minibatch accuracy, last steps (mean)", _na(res["train_acc_last"])],
            ["final test loss", _na(final["test_loss"])],
            ["final test accuracy", _na(final["test_acc"])],
        ],
    )
    notes = []
    if not np.isfinite(s["train_acc"]).any():
        notes.append("No minibatch accuracy was recorded (a probe records it when given).")
    if not evaluated.any():
        notes.append("No test data: test loss and accuracy were not measured.")
    loss_series = [
        ("minibatch", steps, s["loss"]),
        (f"minibatch (mean of {width})", steps[width - 1 :], _smooth(s["loss"], width)),
    ]
    acc_series = [("minibatch", steps[width - 1 :], _smooth(s["train_acc"], width))]
    if evaluated.any():
        loss_series.append(("test", steps[evaluated], s["test_loss"][evaluated]))
        acc_series.append(("test", steps[evaluated], s["test_acc"][evaluated]))
    charts = [
        Chart(
            "Loss",
            "step",
            loss_name,
            loss_series,
            log_y=True,
            caption=f"Each minibatch's loss, its running mean over {width} steps and the test "
            "loss (log scale; the switch above makes it linear).",
        ),
        Chart(
            "Accuracy",
            "step",
            "accuracy",
            acc_series,
            caption=f"Minibatch accuracy (running mean over {width} steps) and test accuracy.",
        ),
    ]
    return Section(
        "training",
        "Training",
        paragraphs=[
            "The loss and accuracy along training: the context for every other section (a "
            "network that has not left its initial plateau has the gradient statistics of "
            "initialisation, not of training)."
        ],
        tables=[table],
        notes=notes,
        figures=[
            Figure(
                path,
                "Loss (log scale) and accuracy along training; grey: every "
                "minibatch, blue: running mean, red: test set.",
                intro="Whether and how far the network trained: the minibatch loss at every "
                "step (noisy, with its running mean) and the test loss and accuracy at each "
                "evaluation. The loss is on a log scale, where a steady decrease is a straight "
                "descent; a test loss well above the running training loss is a generalisation "
                "gap. The noise statistics below are measured at checkpoints along this "
                "curve, so read them against where on it each checkpoint lies.",
                charts=charts,
            )
        ],
    )


ANALYSIS = Analysis(
    "training", "Training", compute, render, description="loss and accuracy curves along training"
)
