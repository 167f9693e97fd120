"""``gradnoise compare RUN_DIR... --out DIR``: one report that overlays several runs.

Runs are labelled by what differs between their configurations (``lr 0.1`` vs ``lr 0.01``);
the report puts their verdicts and headline numbers side by side and overlays their curves
(minibatch loss, test accuracy, gradient norm along training, variance and NGV, the share of
power-law-plausible samples along training, the trained covariance spectrum) as interactive
plots. It reads stored runs only (no torch).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, GradnoiseError
from ..report import Chart, Section, Table, render_report
from ..report.numbers import fmt_num
from .context import SUMMARY, SUMMARY_KEYS, RunView, read_json

#: config keys that never label a run (they do not change what is measured, or say which
#: analyses ran rather than how)
_QUIET = {"threads", "device", "analyses"}


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list) else fmt_num(v)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_labels(configs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """A label per run from the settings that every run has and whose values differ (nested
    tables flattened: ``lr 0.1``, ``options.variance.every 4``); the run directory's name is
    added where that does not tell the runs apart."""
    flat = [_flat({k: v for k, v in c.items() if k not in _QUIET}) for c in configs]
    shared = set.intersection(*(set(f) for f in flat))
    keys = sorted(k for k in shared if len({json.dumps(f[k], sort_keys=True) for f in flat}) > 1)
    labels = [", ".join(f"{k} {_value(f[k])}" for k in keys) for f in flat]
    if not keys or len(set(labels)) < len(labels):
        labels = [
            name + (f" ({lab})" if lab else "") for name, lab in zip(names, labels, strict=True)
        ]
    if len(set(labels)) < len(labels):
        labels = [f"run {i + 1}: {lab}" for i, lab in enumerate(labels)]
    return labels


def _series(view: RunView, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    scalars = view.run.scalars
    if name not in scalars:
        return None
    return view.run.steps, np.asarray(scalars[name], dtype=np.float64)


def _variance(run_dir: Path, summary: dict[str, Any], key: str) -> Any:
    results = summary["analyses"].get("variance")
    if not isinstance(results, dict) or "unavailable" in results:
        return None
    arrays = RunView(run_dir, summary, "variance").arrays()
    return arrays["steps"], arrays[key]


def _tail_fractions(summary: dict[str, Any], family: str) -> Any:
    results = summary["analyses"].get("tails")
    if not isinstance(results, dict) or "unavailable" in results:
        return None
    row = next((r for r in results.get("families", []) if r.get("key") == family), None)
    by_step = [b for b in (row or {}).get("by_step", []) if b.get("bootstrapped")]
    if not by_step:
        return None
    return [b["step"] for b in by_step], [b["fraction_plausible"] for b in by_step]


def _trained_spectrum(run_dir: Path, summary: dict[str, Any]) -> Any:
    results = summary["analyses"].get("spectra")
    if not isinstance(results, dict) or "unavailable" in results:
        return None
    row = next((r for r in results.get("covariance", []) if r.get("kind") == "trained"), None)
    arrays = RunView(run_dir, summary, "spectra").arrays()
    if row is None or row["key"] not in arrays:
        return None
    lam = np.sort(np.asarray(arrays[row["key"]], dtype=np.float64))[::-1]
    lam = lam[lam > (lam[0] * 1e-10 if lam.size and lam[0] > 0 else 0)]
    return np.arange(1, lam.size + 1), lam


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write ``out/report.html`` comparing the runs in ``run_dirs``; returns its path."""
    from .runner import _headlines, display_name, verdicts

    if len(run_dirs) < 2:
        raise ConfigError("compare needs at least two run directories")
    dirs = [Path(d) for d in run_dirs]
    out = (
        Path(out)
        if out is not None
        else Path("runs") / f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-compare"
    )
    summaries = [read_json(d / SUMMARY, SUMMARY_KEYS) for d in dirs]
    labels = run_labels([s["config"] for s in summaries], [d.name for d in dirs])
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for d, s, label in zip(dirs, summaries, labels, strict=True):
        link = os.path.relpath(d / "report.html", out)
        rows.append(
            [
                label,
                display_name(s["data"]["name"]),
                s["config"].get("model"),
                s["config"].get("steps"),
                s["final"].get("test_loss"),
                s["final"].get("test_acc"),
                link,
            ]
        )
    runs = Section(
        "runs",
        "Runs",
        paragraphs=[
            "Each run is labelled by the settings that differ between the runs compared; the "
            "last column is the path of its own report, relative to this one."
        ],
        tables=[
            Table(
                [
                    "run",
                    "data",
                    "model",
                    "steps",
                    "final test loss",
                    "final test accuracy",
                    "report",
                ],
                rows,
            )
        ],
        links=[(f"report of {label}", row[-1]) for label, row in zip(labels, rows, strict=True)],
    )

    claims: dict[tuple[str, str, str], dict[str, str]] = {}
    for s, label in zip(summaries, labels, strict=True):
        for row in s.get("verdicts") or verdicts(s):
            key = (row["analysis"], row["paper"], row["claim"])
            claims.setdefault(key, {})[label] = row["verdict"]
    verdict_section = Section(
        "verdicts",
        "Verdicts side by side",
        paragraphs=[
            "Each paper's claim as each run's numbers decide it (the rules are in each run's "
            "report)."
            if claims
            else "No run measured a claim."
        ],
        tables=[
            Table(
                ["paper", "claim", *labels],
                [
                    [p, c, *(v.get(lab, "not measured") for lab in labels)]
                    for (_, p, c), v in claims.items()
                ],
            )
        ]
        if claims
        else [],
    )

    lines = []
    for d, s in zip(dirs, summaries, strict=True):
        try:
            lines.append(_headlines(d, s))
        except GradnoiseError:
            lines.append({})
    metrics = list(dict.fromkeys(k for line in lines for k in line))
    headline_section = Section(
        "headlines",
        "Headline numbers",
        tables=[
            Table(
                ["quantity", *labels], [[m, *(line.get(m, "") for line in lines)] for m in metrics]
            )
        ]
        if metrics
        else [],
    )

    views = [RunView(d, s, "training") for d, s in zip(dirs, summaries, strict=True)]
    charts = []
    for title, scalar, ylabel, log in (
        ("Minibatch loss", "loss", "loss", True),
        ("Test accuracy", "test_acc", "accuracy", False),
        ("Minibatch gradient norm ||g_B||", "grad_norm", "gradient norm", True),
    ):
        series = []
        for view, label in zip(views, labels, strict=True):
            try:
                found = _series(view, scalar)
            except GradnoiseError:
                found = None
            if found is not None and np.isfinite(found[1]).any():
                series.append((label, *found))
        if series:
            charts.append(Chart(title, "step", ylabel, series, log_y=log))
    for title, key in (("Minibatch gradient variance", "variance"), ("NGV", "ngv")):
        series = []
        for d, s, label in zip(dirs, summaries, labels, strict=True):
            found = _variance(d, s, key)
            if found is not None:
                series.append((label, *found))
        if series:
            charts.append(Chart(title, "step", key, series, log_y=True))
    for title, family in (
        ("Power law plausible: dimension-wise |g_B| (per tensor)", "dim_minibatch/layer"),
        ("Power law plausible: per-coordinate SGN", "iter_sgn"),
    ):
        series = []
        for s, label in zip(summaries, labels, strict=True):
            found = _tail_fractions(s, family)
            if found is not None:
                series.append((label, *found))
        if series:
            charts.append(Chart(title, "step", "share of samples (bootstrap p > 0.1)", series))
    series = []
    for d, s, label in zip(dirs, summaries, labels, strict=True):
        found = _trained_spectrum(d, s)
        if found is not None:
            series.append((label, *found))
    if series:
        charts.append(
            Chart(
                "Gradient covariance spectrum after training, rank-ordered",
                "rank k",
                "eigenvalue lambda_k",
                series,
                log_y=True,
                log_x=True,
            )
        )
    curves = Section(
        "curves",
        "Curves, overlaid",
        paragraphs=[
            "The runs' curves on common axes: drag to zoom, hover for values, click a legend "
            "entry to hide a run."
        ],
        charts=charts,
    )
    return render_report(
        out / "report.html",
        title="gradnoise compare: " + " vs ".join(labels),
        config={f"run {i + 1}": label for i, label in enumerate(labels)},
        sections=[runs, verdict_section, headline_section, curves],
    )
