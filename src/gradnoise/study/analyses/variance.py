"""Gradient variance along training (Faghri, Duvenaud, Fleet & Ba 2020, arXiv 2007.04532).

Measured *during* training by the ``during_training`` hook, every ``every`` steps at the current
parameters ``theta_s`` (after the step's backward, before the optimizer step; once more after the
last step), over **all** P parameters:

* ``T`` minibatch gradients ``g_B`` of the training batch size B (distinct examples, uniform
  without replacement) drawn from their **own** seeded stream (``ctx.seed_for("variance-<s>")``),
  never from the training order; the hook only calls :func:`gradnoise.minibatch_grads` /
  :func:`gradnoise.full_grad` (``autograd.grad``), so the model, its ``.grad`` fields and the
  training data order are untouched and the training trajectory is the same with or without it;
* variance ``(1/P) sum_j Var_j`` of the minibatch estimator (Faghri's ``var_e``: carries the
  ``1/B`` scale; ``Var_j`` with the draws' mean, divisor ``T - 1``);
* normalized gradient variance ``NGV = (1/P) sum_j Var_j / ((1/T) sum_t g_tj^2)`` (per coordinate
  then averaged, divisor T, the draws' own mean: :func:`gradnoise.variance.normalized_gradient_variance`);
* GSNR of Liu et al. (2020), ``r_j = G_j^2 / sigma_j^2`` with the exact full gradient ``G`` and
  the *per-example* variance ``sigma_j^2 = Var_B,j B (N - 1) / (N - B)`` (exact conversion from
  minibatches drawn without replacement from N examples; ``Var_B`` around ``G``, divisor T);
* ``||G||``, the full-training-set loss, and everything per layer (module).

The comparators of Faghri et al. (methods.md §5(a)) run on the same training trajectory (the
run's optimizer; Faghri et al. used plain SGD) with
:class:`gradnoise.EstimatorComparator` at every ``comparator_every``-th measurement: SG-B, SG-2B,
SVRG (snapshot refreshed every ``snapshot_every`` steps) and Gradient Clustering (C clusters,
re-clustered every ``recluster_every`` steps, ``cluster_iters`` passes): variance, NGV and bias
``mean_j |gbar_j - G_j|`` of each. Snapshots and re-clusterings happen at the first measurement of
each period, so choose periods that are multiples of ``every`` (the defaults are).

Options (``[options.variance]``): ``every`` (steps; default ``steps // 10``), ``draws`` (T, 16),
``comparators`` (True), ``comparator_draws`` (T), ``comparator_every`` (1: every measurement),
``num_clusters`` (B), ``recluster_every`` / ``snapshot_every`` (``4 every``), ``cluster_iters``
(1), ``transient`` (0.1: fraction of the steps left out of the trend), ``loss_level`` (0.5: the
training loss at which runs are compared at equal loss, methods.md §8 item 13).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigError, MissingDataError
from ...report import Chart, Figure, Section, Table
from ...report.figures import figure, save_figure
from ...report.numbers import fmt_num
from ..claims import CONTRADICTS, INCONCLUSIVE, SUPPORTS, Claim
from ..context import RunView, StudyContext
from ..options import boolean, check_keys, integer, number
from ..registry import Analysis

NAME = "variance"
ESTIMATORS = ("sg", "sg2b", "svrg", "gc")
LABELS = {"sg": "SG-B", "sg2b": "SG-2B", "svrg": "SVRG", "gc": "GC"}
COLORS = {"sg": "C0", "sg2b": "C1", "svrg": "C2", "gc": "C3"}
OPTIONS = (
    "every",
    "draws",
    "comparators",
    "comparator_draws",
    "comparator_every",
    "num_clusters",
    "recluster_every",
    "snapshot_every",
    "cluster_iters",
    "transient",
    "loss_level",
)
SERIES = (
    "train_loss",
    "grad_norm",
    "grad_sq_mean",
    "minibatch_sq_norm",
    "variance",
    "variance_total",
    "ngv",
    "gsnr_mean",
    "gsnr_median",
    "gsnr_aggregate",
)
LAYER_SERIES = ("variance", "ngv", "gsnr", "grad_norm")
CMP_SERIES = ("variance", "ngv", "bias", "bias_z")


# ----------------------------------------------------------------------------------------------
# options


WHERE = f"[options.{NAME}]"


def resolve_options(raw: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """The analysis's options with defaults filled in and checked (unknown keys are errors)."""
    check_keys(WHERE, raw, OPTIONS)

    def count(key: str, default: int, minimum: int = 1) -> int:
        return integer(WHERE, key, raw.get(key, default), minimum)

    every = count("every", max(1, config.steps // 10))
    draws = count("draws", 16, 2)
    return {
        "every": every,
        "draws": draws,
        "comparators": boolean(WHERE, "comparators", raw.get("comparators", True)),
        "comparator_draws": count("comparator_draws", draws, 2),
        "comparator_every": count("comparator_every", 1),
        "num_clusters": count("num_clusters", config.batch_size),
        "recluster_every": count("recluster_every", 4 * every),
        "snapshot_every": count("snapshot_every", 4 * every),
        "cluster_iters": count("cluster_iters", 1),
        "transient": number(WHERE, "transient", raw.get("transient", 0.1), 0, 1, high_open=True),
        "loss_level": number(WHERE, "loss_level", raw.get("loss_level", 0.5), 0, low_open=True),
    }


def check(ctx: StudyContext, model: Any) -> None:
    """Before training: the comparators' cluster count and SG-2B fit in the train split."""
    opts = ctx.options(NAME)
    n = len(ctx.data.train)  # type: ignore[arg-type]
    if not opts["comparators"]:
        return
    if opts["num_clusters"] > n:
        raise ConfigError(
            f"{WHERE} num_clusters ({opts['num_clusters']}) exceeds the {n} training examples"
        )
    if 2 * ctx.config.batch_size > n:
        raise ConfigError(
            f"the SG-2B comparator needs 2 x batch_size = {2 * ctx.config.batch_size} "
            f"distinct examples; the train split has {n} (set {WHERE} comparators = false)"
        )


# ----------------------------------------------------------------------------------------------
# measuring during training


@dataclass
class _State:
    """What the hook keeps in ``ctx.scratch["variance"]`` between calls."""

    opts: dict[str, Any]
    selection: Any
    groups: dict[str, slice | np.ndarray]
    n: int
    comparator: Any = None
    series: dict[str, list[float]] = field(default_factory=dict)
    layers: dict[str, list[np.ndarray]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    cmp_steps: list[int] = field(default_factory=list)
    cmp: dict[str, list[np.ndarray]] = field(default_factory=dict)
    cmp_reclustered: list[bool] = field(default_factory=list)
    cmp_snapshot: list[bool] = field(default_factory=list)
    cmp_clusters: list[int] = field(default_factory=list)


def _layer_groups(model: Any, selection: Any) -> dict[str, slice | np.ndarray]:
    """Columns of each module (weight and bias together), in ``named_parameters()`` order: a
    slice where they are contiguous (as usual; an index array costs 8 bytes a column)."""
    modules = dict(model.named_modules())
    out: dict[str, list[tuple[int, int]]] = {}
    offsets = selection.offsets
    for j, name in enumerate(selection.names):
        prefix = name.rsplit(".", 1)[0] if "." in name else ""
        kind = type(modules.get(prefix, model)).__name__
        label = f"{prefix} ({kind})" if prefix else kind
        out.setdefault(label, []).append((int(offsets[j]), int(offsets[j + 1])))
    groups: dict[str, slice | np.ndarray] = {}
    for label, spans in out.items():
        if all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1)):
            groups[label] = slice(spans[0][0], spans[-1][1])
        else:
            groups[label] = np.concatenate([np.arange(a, b) for a, b in spans])
    return groups


def _summary(result: Any) -> Any:
    """``result`` without its per-coordinate array."""
    import dataclasses

    return dataclasses.replace(result, per_coordinate=np.empty(0))


def _sq_norm(row: np.ndarray) -> float:
    return float(np.sum(row * row))


def _size(cols: slice | np.ndarray) -> int:
    return cols.stop - cols.start if isinstance(cols, slice) else int(cols.size)


def _start(ctx: StudyContext, model: Any) -> _State:
    from ...capture import select_params

    opts = ctx.options(NAME)
    x, _ = ctx.train_tensors
    n = int(x.shape[0])
    selection = select_params(model)
    state = _State(opts, selection, _layer_groups(model, selection), n)
    if opts["comparators"]:
        from ...clustering import EstimatorComparator

        state.comparator = EstimatorComparator(
            model,
            ctx.loss_fn,
            ctx.train_tensors,
            batch_size=ctx.config.batch_size,
            num_draws=opts["comparator_draws"],
            num_clusters=opts["num_clusters"],
            snapshot_every=opts["snapshot_every"],
            recluster_every=opts["recluster_every"],
            cluster_iters=opts["cluster_iters"],
            estimators=ESTIMATORS,
            rng=ctx.rng("variance-comparators"),
            **ctx.memory(),
        )
    return state


def _train_loss(ctx: StudyContext, model: Any) -> float:
    from .._torch import eval_mode, evaluate

    x, y = ctx.train_tensors
    with eval_mode(model):
        return evaluate(model, ctx.loss_fn, x, y, device=ctx.device, batch_size=1024)[0]


def measure(ctx: StudyContext, model: Any, state: _State, step: int) -> dict[str, Any]:
    """One measurement at the model's current parameters (no ``.grad`` or model change)."""
    from ...capture import full_grad, minibatch_grads
    from ...variance import gradient_variance, gsnr, normalized_gradient_variance

    b, n, t = ctx.config.batch_size, state.n, state.opts["draws"]
    data = ctx.train_tensors
    sel, groups = state.selection, state.groups
    full = full_grad(
        model, ctx.loss_fn, data, batch_size=512, params=sel, dropout=ctx.dropout, **ctx.memory()
    )
    g = full.detach().cpu().double().numpy()
    del full  # g is its exact float64 copy
    draws = (
        minibatch_grads(
            model,
            ctx.loss_fn,
            data,
            batch_size=b,
            num_batches=t,
            seed=ctx.seed_for(f"variance-{step}"),
            params=sel,
            dropout=ctx.dropout,
            **ctx.memory(),
        )
        .detach()
        .cpu()
        .numpy()
    )  # in the model's dtype: the statistics widen to float64 block by block
    # only summaries are kept: each result's per-coordinate values (P floats) go at once
    var = _summary(gradient_variance(draws, groups=groups))
    ngv = _summary(normalized_gradient_variance(draws, groups=groups))
    # per-example GSNR (Liu et al.): Var_B = sigma^2 (N - B) / (B (N - 1)) without replacement
    to_example = (n - b) / (b * (n - 1)) if n > 1 else math.nan
    snr = _summary(gsnr(draws, mean=g, ddof=0, groups=groups))
    names = list(groups)
    layer_norm = np.array([float(np.linalg.norm(g[groups[k]])) for k in names])
    return {
        "step": step,
        "train_loss": _train_loss(ctx, model),
        "grad_norm": float(np.linalg.norm(g)),
        "grad_sq_mean": float(g @ g) / g.size,
        "minibatch_sq_norm": float(np.mean([_sq_norm(d.astype(np.float64)) for d in draws])),
        "variance": var.mean,
        "variance_total": var.total,
        "ngv": ngv.value,
        "gsnr_mean": snr.mean * to_example,
        "gsnr_median": snr.median * to_example,
        "gsnr_aggregate": snr.aggregate * to_example,
        "layers": {
            "variance": np.array([var.layer_means[k] for k in names]),
            "ngv": np.array([ngv.layers[k] for k in names]),
            "gsnr": np.array([snr.layers[k] * to_example for k in names]),
            "grad_norm": layer_norm,
        },
    }


def _fixed_forward(ctx: StudyContext, model: Any) -> Any:
    """The comparators need one fixed forward (clustering distances, SVRG corrections): with a
    dropout choice, the model's random modules run in eval mode while they measure."""
    import contextlib

    if ctx.dropout == "error":
        return contextlib.nullcontext()
    from ...capture import audit_model

    x, y = ctx.train_tensors
    audit = audit_model(
        model, ctx.loss_fn, x[:4].to(ctx.device), y[:4].to(ctx.device), dropout="eval"
    )
    return audit.randomness("eval")


def during_training(ctx: StudyContext, step: int, model: Any) -> None:
    """Measure every ``every`` steps and after the last step; keep results in ``ctx.scratch``."""
    state: _State | None = ctx.scratch.get(NAME)
    if state is None:
        state = _start(ctx, model)
        ctx.scratch[NAME] = state
    if step % state.opts["every"] and step != ctx.config.steps:
        return
    row = measure(ctx, model, state, step)
    state.steps.append(step)
    for key in SERIES:
        state.series.setdefault(key, []).append(row[key])
    for key in LAYER_SERIES:
        state.layers.setdefault(key, []).append(row["layers"][key])
    comp = state.comparator
    if comp is not None and (len(state.steps) - 1) % state.opts["comparator_every"] == 0:
        before, snap = comp.result, comp.snapshot
        with _fixed_forward(ctx, model):
            res = comp.measure(step)
        state.cmp_steps.append(step)
        state.cmp_reclustered.append(comp.result is not before)
        state.cmp_snapshot.append(comp.snapshot is not snap)
        state.cmp_clusters.append(int(comp.result.num_clusters))
        for key in CMP_SERIES:
            state.cmp.setdefault(key, []).append(
                np.array([getattr(res.estimators[e], key) for e in ESTIMATORS])
            )


# ----------------------------------------------------------------------------------------------
# summary


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    if x.size < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _at_loss(loss: np.ndarray, values: np.ndarray, level: float) -> float | None:
    """``values`` where the training loss first reaches ``level`` (log-log interpolation)."""
    hit = np.flatnonzero(loss <= level)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0 or not (values[i] > 0 and values[i - 1] > 0):
        return float(values[i])
    l0, l1 = math.log(loss[i - 1]), math.log(loss[i])
    v0, v1 = math.log(values[i - 1]), math.log(values[i])
    w = (math.log(level) - l0) / (l1 - l0) if l1 != l0 else 1.0
    return float(math.exp(v0 + w * (v1 - v0)))


def _geomean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x) & (x > 0)]
    return float(np.exp(np.mean(np.log(x)))) if x.size else None


def trend(steps: np.ndarray, values: np.ndarray, start: float) -> dict[str, Any]:
    """Growth ``mean(last third) / mean(first third)`` and Spearman rho of the measurements
    at steps ``>= start`` (after the initial transient)."""
    keep = steps >= start
    s, v = steps[keep], values[keep]
    third = s.size // 3
    growth = None
    if third >= 1 and np.mean(v[:third]) > 0:
        growth = float(np.mean(v[-third:]) / np.mean(v[:third]))
    return {"growth": growth, "spearman": _spearman(s.astype(float), v), "points": int(s.size)}


def compute(ctx: StudyContext) -> dict[str, Any]:
    state: _State | None = ctx.scratch.get(NAME)
    if state is None or not state.steps:
        raise MissingDataError("no measurement was taken during training (no step was probed)")
    opts, names = state.opts, list(state.groups)
    steps = np.asarray(state.steps, dtype=np.int64)
    series = {k: np.asarray(v, dtype=np.float64) for k, v in state.series.items()}
    layers = {k: np.stack(v) for k, v in state.layers.items()}
    arrays: dict[str, Any] = {
        "steps": steps,
        **series,
        "layer_names": np.asarray(names),
        "layer_sizes": np.asarray([_size(state.groups[k]) for k in names], dtype=np.int64),
        **{f"layer_{k}": v for k, v in layers.items()},
    }
    start = opts["transient"] * ctx.config.steps
    level = opts["loss_level"]
    out: dict[str, Any] = {
        "options": opts,
        "batch_size": ctx.config.batch_size,
        "train_examples": state.n,
        "parameters": state.selection.num_columns,
        "measurements": int(steps.size),
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "variance_first": float(series["variance"][0]),
        "variance_last": float(series["variance"][-1]),
        "variance_max": float(series["variance"].max()),
        "variance_trend": trend(steps, series["variance"], start),
        "ngv_mean": float(series["ngv"].mean()),
        "ngv_first": float(series["ngv"][0]),
        "ngv_last": float(series["ngv"][-1]),
        "ngv_trend": trend(steps, series["ngv"], start),
        "gsnr_mean_last": float(series["gsnr_mean"][-1]),
        "gsnr_aggregate_last": float(series["gsnr_aggregate"][-1]),
        "grad_norm_first": float(series["grad_norm"][0]),
        "grad_norm_last": float(series["grad_norm"][-1]),
        "train_loss_last": float(series["train_loss"][-1]),
        "at_loss_level": {
            "level": level,
            "variance": _at_loss(series["train_loss"], series["variance"], level),
            "ngv": _at_loss(series["train_loss"], series["ngv"], level),
        },
        "layers": {
            k: {
                "parameters": _size(state.groups[k]),
                "variance_last": float(layers["variance"][-1, j]),
                "ngv_mean": float(np.nanmean(layers["ngv"][:, j])),
                "gsnr_last": float(layers["gsnr"][-1, j]),
            }
            for j, k in enumerate(names)
        },
    }
    if state.cmp_steps:
        cmp = {k: np.stack(v) for k, v in state.cmp.items()}  # [Mc, E]
        arrays.update(
            cmp_steps=np.asarray(state.cmp_steps, dtype=np.int64),
            cmp_names=np.asarray(ESTIMATORS),
            cmp_reclustered=np.asarray(state.cmp_reclustered),
            cmp_snapshot=np.asarray(state.cmp_snapshot),
            cmp_clusters=np.asarray(state.cmp_clusters, dtype=np.int64),
            **{f"cmp_{k}": v for k, v in cmp.items()},
        )
        ref = cmp["variance"][:, 0]
        estimators = {}
        for e_idx, e in enumerate(ESTIMATORS):
            v = cmp["variance"][:, e_idx]
            ratio = np.divide(v, ref, out=np.full_like(v, np.nan), where=ref > 0)
            estimators[e] = {
                "batch_size": 2 * ctx.config.batch_size if e == "sg2b" else ctx.config.batch_size,
                "variance_mean": float(v.mean()),
                "ratio_to_sg_geomean": _geomean(ratio),
                "ratio_to_sg_max": float(np.nanmax(ratio)) if np.isfinite(ratio).any() else None,
                "below_sg_fraction": float(np.mean(v < ref)),
                "ngv_mean": float(cmp["ngv"][:, e_idx].mean()),
                "bias_mean": float(cmp["bias"][:, e_idx].mean()),
                "bias_z_mean": float(cmp["bias_z"][:, e_idx].mean()),
            }
        out["comparators"] = {
            "measurements": len(state.cmp_steps),
            "draws": opts["comparator_draws"],
            "num_clusters": opts["num_clusters"],
            "nonempty_clusters_min": int(min(state.cmp_clusters)),
            "reclusterings": int(sum(state.cmp_reclustered)),
            "estimators": estimators,
        }
    ctx.save_arrays(NAME, **arrays)
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Numbers for a preset's comparison table."""
    line: dict[str, Any] = {
        "mean NGV": results["ngv_mean"],
        "final grad. variance": results["variance_last"],
        "variance growth (late/early)": results["variance_trend"]["growth"],
        "equal-loss level": results["at_loss_level"]["level"],
        "variance @ equal loss": results["at_loss_level"]["variance"],
    }
    comp = results.get("comparators")
    if comp:
        for e, label in (("gc", "GC"), ("sg2b", "SG-2B"), ("svrg", "SVRG")):
            line[f"{label} / SG-B variance"] = comp["estimators"][e]["ratio_to_sg_geomean"]
    return {k: ("n/a" if v is None else v) for k, v in line.items()}


# ----------------------------------------------------------------------------------------------
# report (no torch)


def _positive(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return np.where(y > 0, y, np.nan)


def _log(ax: Any, axis: str = "y") -> None:
    """Log scale with readable ticks: plain ``.3g`` labels, linear-spaced ticks when the data
    span less than a decade (where a log locator would label nothing or every minor tick)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, NullLocator

    getattr(ax, f"set_{axis}scale")("log")
    ax.relim()
    ax.autoscale_view()
    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
    if lo > 0 and hi / lo < 10:
        target.set_major_locator(MaxNLocator(nbins=5))
        target.set_minor_locator(NullLocator())
    elif lo > 0 and hi / lo < 1000:  # a few decades: label 2x and 5x minor ticks too

        def minor(v: float, _: Any) -> str:
            mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
            return f"{v:.3g}" if round(mantissa) in (2, 5) else ""

        target.set_minor_formatter(FuncFormatter(minor))
    else:
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(fmt)


def _fmt(v: Any) -> str:
    return fmt_num(v)


def render(view: RunView) -> Section:
    res, a = view.results, view.arrays()
    steps = a["steps"]
    b = res["batch_size"]
    figures = []

    charts = [
        Chart(
            f"Minibatch gradient variance (B = {b})",
            "step",
            "mean over coordinates",
            [("Var of g_B", steps, a["variance"]), ("G_j^2 (signal)", steps, a["grad_sq_mean"])],
            log_y=True,
            caption="Variance of the minibatch gradient and squared full gradient, both "
            "averaged over coordinates.",
        ),
        Chart(
            "NGV and GSNR",
            "step",
            "ratio",
            [
                ("NGV", steps, a["ngv"]),
                ("GSNR mean r_j", steps, a["gsnr_mean"]),
                ("GSNR median r_j", steps, a["gsnr_median"]),
                ("||G||^2 / tr(Sigma)", steps, a["gsnr_aggregate"]),
            ],
            log_y=True,
            caption="NGV of the minibatch gradient; per-example GSNR r_j (mean and median over "
            "coordinates) and the aggregate ||G||^2 / tr(Sigma).",
        ),
    ]
    with figure(3) as (fig, axes):
        ax_var, ax_ngv, ax_snr = axes
        ax_var.plot(steps, _positive(a["variance"]), "o-", ms=3, color="C0", label="Var of g_B")
        ax_var.plot(
            steps, _positive(a["grad_sq_mean"]), "s--", ms=3, color="C3", label="G_j^2 (signal)"
        )
        ax_var.set(
            xlabel="step",
            ylabel="mean over coordinates",
            title=f"Minibatch gradient variance (B = {b})",
        )
        ax_var.legend()
        _log(ax_var)
        ax_ngv.plot(steps, _positive(a["ngv"]), "o-", ms=3, color="C1")
        ax_ngv.set(xlabel="step", ylabel="NGV", title="Normalized gradient variance")
        _log(ax_ngv)
        ax_snr.plot(steps, _positive(a["gsnr_mean"]), "o-", ms=3, color="C2", label="mean r_j")
        ax_snr.plot(steps, _positive(a["gsnr_median"]), "^-", ms=3, color="C4", label="median r_j")
        ax_snr.plot(
            steps,
            _positive(a["gsnr_aggregate"]),
            "s--",
            ms=3,
            color="0.4",
            label="||G||^2 / tr(Sigma)",
        )
        ax_snr.set(xlabel="step", ylabel="GSNR (per example)", title="Gradient SNR")
        ax_snr.legend()
        _log(ax_snr)
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("over_training")),
                f"Along training, over all {res['parameters']} parameters, from "
                f"{res['options']['draws']} minibatches of B = {b} per measurement (a separate "
                "data stream): variance of the minibatch gradient and squared mean gradient "
                "(both averaged over coordinates), NGV and per-example GSNR (log scale).",
                intro="The quantity of Faghri et al. (2020)'s claim that gradient variance "
                "grows during training: at each measurement, the variance of the minibatch "
                "gradient averaged over coordinates, next to the squared full gradient (the "
                "signal it is compared with), the normalised gradient variance NGV (variance "
                "over second moment, per coordinate) and the gradient signal-to-noise ratio "
                "GSNR (Liu et al. 2020). On the log scale a rising variance line is the claim; "
                "the verdict reads its trend after the transient (Spearman ρ and late/early "
                "growth in the text above). A per-example GSNR well below 1 means single "
                "examples' gradients are dominated by their spread, not by the mean gradient.",
                charts=charts,
            )
        )

    with figure(1, width=5.0) as (fig, ax_loss):
        loss = _positive(a["train_loss"])
        sc = ax_loss.scatter(loss, _positive(a["variance"]), c=steps, cmap="viridis", s=14)
        ax_loss.plot(loss, _positive(a["variance"]), color="0.7", lw=0.6, zorder=0)
        ax_loss.set(
            xlabel="training loss (full train set)",
            ylabel="gradient variance",
            title="Variance at equal training loss",
        )
        _log(ax_loss, "x")
        _log(ax_loss)
        ax_loss.invert_xaxis()
        fig.colorbar(sc, ax=ax_loss, label="step")
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("at_loss")),
                "Minibatch gradient variance against the training loss on the full train set "
                "(log-log; x axis reversed: training proceeds to the right; colour: step).",
                intro="Faghri et al. (2020)'s variance against progress rather than time: two "
                "runs, or two phases of one run, are compared at equal training loss (the text above reads the variance "
                "and NGV at a fixed loss level). Each point is one "
                "measurement, coloured by its step, with the loss axis reversed so that "
                "training runs left to right; points that rise to the right mean the variance "
                "grows as the loss falls.",
            )
        )

    names = [str(s) for s in a["layer_names"]]
    with figure(3) as (fig, (ax_v, ax_n, ax_s)):
        for j, name in enumerate(names):
            c = f"C{j % 10}"
            ax_v.plot(steps, _positive(a["layer_variance"][:, j]), "o-", ms=2, color=c, label=name)
            ax_n.plot(steps, _positive(a["layer_ngv"][:, j]), "o-", ms=2, color=c, label=name)
            ax_s.plot(steps, _positive(a["layer_gsnr"][:, j]), "o-", ms=2, color=c, label=name)
        ax_v.set(xlabel="step", ylabel="variance (mean per coordinate)")
        ax_v.set_title("Variance per layer")
        ax_n.set(xlabel="step", ylabel="NGV", title="NGV per layer")
        ax_s.set(xlabel="step", ylabel="mean GSNR (per example)")
        ax_s.set_title("GSNR per layer")
        ax_v.legend(fontsize=7)
        for ax in (ax_v, ax_n, ax_s):
            _log(ax)
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("layers")),
                "Per layer (weights and bias of a module together): variance and NGV of the "
                "minibatch gradient and the per-example GSNR, averaged over the layer's "
                "coordinates (log scale).",
                intro="Where in the network the noise sits: Faghri et al. (2020)'s variance, "
                "with NGV and GSNR, as above but averaged over the coordinates of each layer "
                "instead of the whole model, one line per layer (legend in the left plot). A "
                "layer whose variance grows while the others stay flat drives the model-wide trend, and layers with a low GSNR are "
                "those whose updates are mostly noise.",
            )
        )

    tables = []
    comp = res.get("comparators")
    if comp:
        cs = a["cmp_steps"]
        with figure(2, 2) as (fig, axes):
            ax_var, ax_ratio, ax_ngv, ax_bias = axes
            for e_idx, e in enumerate(ESTIMATORS):
                kw = {"color": COLORS[e], "ms": 3, "label": LABELS[e]}
                ax_var.plot(cs, _positive(a["cmp_variance"][:, e_idx]), "o-", **kw)
                ax_ngv.plot(cs, _positive(a["cmp_ngv"][:, e_idx]), "o-", **kw)
                ax_bias.plot(cs, _positive(a["cmp_bias"][:, e_idx]), "o-", **kw)
                if e != "sg":
                    ref = a["cmp_variance"][:, 0]
                    ratio = np.divide(
                        a["cmp_variance"][:, e_idx],
                        ref,
                        out=np.full(ref.shape, np.nan),
                        where=ref > 0,
                    )
                    ax_ratio.plot(cs, _positive(ratio), "o-", **kw)
            for s in cs[a["cmp_snapshot"]]:
                ax_ratio.axvline(s, color="C2", lw=0.6, ls="--")
            # re-clusterings often share the snapshot steps: markers on the top edge stay visible
            ax_ratio.plot(
                cs[a["cmp_reclustered"]],
                np.ones(int(a["cmp_reclustered"].sum())),
                "v",
                color="C3",
                ms=5,
                transform=ax_ratio.get_xaxis_transform(),
                clip_on=False,
                zorder=5,
                label="re-clustering",
            )
            ax_ratio.axhline(1.0, color="C0", lw=0.8)
            ax_var.set(xlabel="step", ylabel="variance (mean per coordinate)")
            ax_var.set_title("Estimator variance")
            ax_ratio.set(xlabel="step", ylabel="variance / SG-B variance")
            ax_ratio.set_title("Relative to SG-B")
            ax_ngv.set(xlabel="step", ylabel="NGV", title="Normalized variance")
            ax_bias.set(xlabel="step", ylabel="mean |gbar - G|")
            ax_bias.set_title(f"Bias of the mean of {comp['draws']} draws")
            ax_var.legend()
            ax_ratio.legend()
            for ax in axes:
                _log(ax)
            figures.append(
                Figure(
                    save_figure(fig, view.figure_path("estimators")),
                    f"Estimators evaluated along the run's trajectory ("
                    f"{view.optimizer.name or 'optimizer not given'}), {comp['draws']} draws "
                    f"each: SG-B (B = {b}), SG-2B, SVRG (snapshot every "
                    f"{res['options']['snapshot_every']} steps) and Gradient Clustering "
                    f"({comp['num_clusters']} clusters, re-clustered every "
                    f"{res['options']['recluster_every']} steps). The bias of unbiased "
                    "estimators is sampling noise of the mean of the draws (about "
                    "sqrt(Var/draws)). Top right: red triangles on the top edge mark "
                    "re-clusterings, green dashed lines SVRG snapshots; at a snapshot step SVRG "
                    "is exact (zero variance, not drawn on log axes).",
                    intro="Faghri et al. (2020)'s second claim: Gradient Clustering (GC, "
                    "stratified sampling over clusters of per-example gradients) estimates the "
                    "gradient with lower variance than plain minibatch SGD (SG-B) of the same "
                    "batch size. Each estimator is drawn repeatedly at the same parameters "
                    "along the run: its variance (top left), its variance divided by SG-B's "
                    "(top right: below the line at 1 is better than SG-B; SG-2B, twice the "
                    "batch, is the reference at about 1/2), its NGV and the bias of the mean of "
                    "its draws (bottom), all on log axes. The verdict reads the GC ratio.",
                )
            )
        tables.append(
            Table(
                [
                    "estimator",
                    "batch",
                    "mean variance",
                    "variance / SG-B (geo. mean)",
                    "max ratio",
                    "fraction of steps below SG-B",
                    "mean NGV",
                    "mean bias",
                    "mean bias z",
                ],
                [
                    [
                        LABELS[e],
                        s["batch_size"],
                        s["variance_mean"],
                        _fmt(s["ratio_to_sg_geomean"]),
                        _fmt(s["ratio_to_sg_max"]),
                        s["below_sg_fraction"],
                        s["ngv_mean"],
                        s["bias_mean"],
                        s["bias_z_mean"],
                    ]
                    for e, s in comp["estimators"].items()
                ],
                caption=f"Over {comp['measurements']} measurements. bias z = ||gbar - G||^2 / "
                "(tr Var / draws): about 1 for an unbiased estimator. GC is stratified sampling "
                "over clusters of per-example gradients with weights M N_k / N.",
            )
        )

    rows = []
    pick = np.unique(np.linspace(0, steps.size - 1, min(steps.size, 12)).round().astype(int))
    for i in pick:
        rows.append(
            [
                int(steps[i]),
                float(a["train_loss"][i]),
                float(a["grad_norm"][i]),
                float(a["variance"][i]),
                float(a["ngv"][i]),
                _fmt(float(a["gsnr_mean"][i])),
                float(a["minibatch_sq_norm"][i]),
            ]
        )
    tables.insert(
        0,
        Table(
            ["step", "train loss", "||G||", "variance", "NGV", "mean GSNR", "mean ||g_B||^2"],
            rows,
            caption="Variance = (1/P) sum_j Var(g_B,j) of the size-B minibatch gradient; "
            f"{res['measurements']} measurements in all (at most 12 shown).",
        ),
    )
    tables.append(
        Table(
            ["layer", "parameters", "variance (last)", "NGV (mean over training)", "GSNR (last)"],
            [
                [k, v["parameters"], v["variance_last"], v["ngv_mean"], _fmt(v["gsnr_last"])]
                for k, v in res["layers"].items()
            ],
        )
    )
    vt, nt, at = res["variance_trend"], res["ngv_trend"], res["at_loss_level"]
    paragraphs = [
        f"Every {res['options']['every']} steps, {res['options']['draws']} minibatch gradients "
        f"of B = {b} examples are drawn at the current parameters from a data stream of their "
        "own (the training order and the model are untouched). Variance is Faghri et al.'s "
        "average per-coordinate variance of the minibatch estimator (it carries the 1/B scale); "
        "NGV is the per-coordinate ratio Var_j / E[g_j^2], then averaged; GSNR is Liu et al.'s "
        "per-example ratio G_j^2 / sigma_j^2 with the exact full gradient G.",
        f"Variance: {_fmt(res['variance_first'])} at step {_fmt(res['first_step'])}, "
        f"{_fmt(res['variance_last'])} at step {_fmt(res['last_step'])}; after the first "
        f"{fmt_num(res['options']['transient'], '%')} of training, late/early growth "
        f"{_fmt(vt['growth'])} and Spearman rho {_fmt(vt['spearman'])} over {vt['points']} "
        f"measurements (Faghri et al. report that variance grows during training). NGV: mean "
        f"{_fmt(res['ngv_mean'])}, growth {_fmt(nt['growth'])}. "
        + (
            f"At training loss {_fmt(at['level'])}: variance {_fmt(at['variance'])}, NGV "
            f"{_fmt(at['ngv'])}."
            if at["variance"] is not None or at["ngv"] is not None
            else f"The training loss never reached {_fmt(at['level'])}, so no values at equal "
            "loss are available."
        ),
    ]
    notes = [
        "Faghri et al. estimate the mean from T independent draws and the variance from T fresh "
        "ones; here both use the same T draws (variance with divisor T - 1, NGV with divisor T "
        "and the draws' own mean).",
        "Variance, NGV and GSNR are those of the raw minibatch gradient g_B at the measured "
        f"parameters, whatever the optimizer. {view.optimizer.step_noise}",
    ]
    if comp:
        gc = comp["estimators"]["gc"]
        paragraphs.append(
            f"Gradient Clustering vs SG-B at the same batch size: variance ratio "
            f"{_fmt(gc['ratio_to_sg_geomean'])} (geometric mean over "
            f"{comp['measurements']} measurements), below SG-B at "
            f"{fmt_num(gc['below_sg_fraction'], '%')} of them. SG-2B / SG-B: "
            f"{_fmt(comp['estimators']['sg2b']['ratio_to_sg_geomean'])} (about 1/2 expected)."
        )
        notes.append(
            "Clusters use per-layer rank-1 centres (the official code's approximation) and go "
            "stale between re-clusterings; the SVRG snapshot and the clustering are refreshed "
            "at the first measurement of each period."
        )
    return Section(
        NAME,
        ANALYSIS.title,
        paragraphs=paragraphs,
        tables=tables,
        figures=figures,
        notes=notes,
    )


#: the fewest measurements a trend verdict decides on, and the Spearman threshold
MIN_POINTS, RHO = 5, 0.5


def claims(results: dict[str, Any]) -> list[Claim]:
    """Faghri et al.'s two claims: variance grows during training, and Gradient Clustering
    lowers the variance of SG-B at the same batch size (rules: the ``test_rule`` texts)."""
    vt = results["variance_trend"]
    growth, rho, points = vt["growth"], vt["spearman"], vt["points"]
    if points < MIN_POINTS or growth is None or rho is None:
        verdict = INCONCLUSIVE
    elif rho >= RHO and growth > 1:
        verdict = SUPPORTS
    elif rho <= -RHO and growth < 1:
        verdict = CONTRADICTS
    else:
        verdict = INCONCLUSIVE
    out = [
        Claim(
            "Faghri et al. 2020",
            "Gradient variance grows during training.",
            verdict,
            f"after the first {fmt_num(results['options']['transient'], '%')} of training: "
            f"late/early growth {fmt_num(growth)}, Spearman rho {fmt_num(rho, digits=3)} "
            f"over {fmt_num(points)} measurements",
            f"at least {MIN_POINTS} measurements (else inconclusive); Spearman rho >= {RHO} "
            f"and growth > 1: supports; rho <= -{RHO} and growth < 1: contradicts; otherwise: "
            "inconclusive",
        )
    ]
    comp = results.get("comparators")
    if comp:
        gc = comp["estimators"]["gc"]
        ratio, below, n = gc["ratio_to_sg_geomean"], gc["below_sg_fraction"], comp["measurements"]
        if n < MIN_POINTS or ratio is None or below is None:
            verdict = INCONCLUSIVE
        elif ratio < 1 and below >= 0.8:
            verdict = SUPPORTS
        elif ratio > 1 and below <= 0.2:
            verdict = CONTRADICTS
        else:
            verdict = INCONCLUSIVE
        out.append(
            Claim(
                "Faghri et al. 2020",
                "Gradient Clustering (stratified sampling over gradient clusters) has lower "
                "variance than minibatch SGD of the same batch size.",
                verdict,
                f"GC / SG-B variance {fmt_num(ratio, digits=3)} (geometric mean over "
                f"{fmt_num(n)} measurements), below SG-B at {fmt_num(below, '%')} of them",
                f"at least {MIN_POINTS} measurements (else inconclusive); ratio < 1 and below "
                "SG-B at >= 80% of them: supports; ratio > 1 and below at <= 20%: contradicts; "
                "otherwise: inconclusive",
            )
        )
    return out


ANALYSIS = Analysis(
    NAME,
    "Gradient variance (Faghri et al.)",
    compute,
    render,
    description="variance, NGV, GSNR along training; SG-B / SG-2B / SVRG / GC estimators",
    headline=headline,
    during_training=during_training,
    options=resolve_options,
    check=check,
    claims=claims,
)
