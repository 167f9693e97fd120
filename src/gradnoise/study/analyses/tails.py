"""Power-law tails of gradients: the dimension-wise / iteration-wise / SGN battery of Xie et al.

Xie, Tang, Sun, Li, "On the Overlooked Structure of Stochastic Gradients" (NeurIPS 2023,
arXiv:2212.02083) report that *dimension-wise* gradients (the P coordinates of one gradient
vector, per layer or whole model) usually have power-law tails, while *iteration-wise* gradients
(one coordinate along training) and stochastic gradient noise usually do not. Sample families
(methods.md §1(a), §1(b); absolute values, since a power law lives on x > 0):

* ``dim_minibatch``, ``dim_full``, ``dim_sgn``: at each checkpoint, ``|g_B|`` (one or more
  minibatch gradients), ``|G|`` (full-batch gradient) and ``|g_B - G|`` over all P coordinates
  (scope ``model``) and over the coordinates of each parameter tensor (scope ``layer``);
* ``iter_grad``: per tracked coordinate, ``|g_t|`` over the recorded training steps (the
  gradient store), and the same in contiguous windows of steps (``iter_grad_windows``);
* ``iter_sgn``: per tracked coordinate and checkpoint, ``|g_B - G|`` over K minibatches at the
  fixed parameters of the checkpoint (methods.md §0 regime 1).

Each family goes through :func:`gradnoise.stats.tail_battery.power_law_battery`: CSN fit,
bootstrap test (plausible iff p > 0.1), the naive KS rule ``D < 1.358/sqrt(n_tail)``, likelihood
ratios vs lognormal and exponential with Benjamini–Hochberg control across the family's samples.

A size-matched control: ``dim_minibatch_matched`` draws random subsets of T non-zero
coordinates of each dimension-wise minibatch gradient (T = the recorded steps, the size of an
iteration-wise sample). The CSN test detects smaller departures from a power law in larger
samples, and dimension-wise samples are ~100x larger than iteration-wise ones: comparing at equal
size separates the sampling axis from the sample size.

Zero policy: exact zeros are dropped and counted (``nonpositive="drop"``): they occur
structurally (input pixels that are 0 in every example, dead ReLU units) and say nothing about
the tail. SGN values of minibatches whose gradient at the coordinate is exactly 0 are dropped
too: there ``xi = -G`` exactly, an atom that a continuous power-law fit would absorb into a
steep "tail". A sample with fewer than ``min_tail`` remaining values (or < 3 distinct) is
counted as untestable and left out of the fractions.

Options (``[options.tails]``): ``n_boot`` (bootstrap replicates, default 9: small, for the
default study's time budget; with ``(n_boot + 1) level`` an integer the rule ``p <= level``
has no Monte-Carlo discreteness bias: with 20 replicates it would reject 3/21 = 14% of exact
nulls; the preset uses more), ``boot_coords`` (iteration-wise families bootstrap a
seeded random subset of this many samples per checkpoint or window, default 200; fits, the
naive rule and likelihood ratios use all), ``dim_vectors`` (minibatch vectors per checkpoint,
default 1), ``matched_samples`` (size-matched subsets per minibatch vector, default 50; 0
disables), ``sgn_batches`` (K for ``iter_sgn``, default 256: the store's SGN snapshots are used
when they hold at least K minibatches, else K are recomputed from the checkpoint),
``iter_windows`` (default: one window per checkpoint interval when each holds at least
``2 min_tail`` steps; 0 disables), ``min_tail`` (50), ``level`` (0.1), ``fdr`` (0.1),
``examples`` (coordinates per iteration-wise CCDF panel, 3), ``full_batch_size`` (512).

Memory: the battery's fit of one sample holds about ``BATTERY_BYTES_PER_VALUE`` (240) bytes
per value (measured: 229 MB for 10^6 values), so a dimension-wise sample of a 10^7-parameter
model needs gigabytes. Under the study's ``max_memory`` a dimension-wise sample holds at most
``max_memory // (2 * 240)`` values: a longer one is replaced by a seeded uniform random subset
of its coordinates (without replacement), and the family's row and table say how many samples
were subsampled and to what size. Without a budget every coordinate is tested. Between the
checkpoints' captures and the batteries only G and the minibatch gradients are kept, in the
model's dtype; a family's float64 vectors exist only while its battery runs.

On a Dask cluster (``gradnoise analyze RUN_DIR --dask ...``) the ``iter_grad`` battery reads the
gradient store out of core (:meth:`gradnoise.store.Run.to_dask`) and runs blockwise over its
columns on the cluster, with the same results; the windows (ragged samples) and the families
measured at checkpoints stay in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import GradnoiseError
from ...report import Chart, Figure, Section, Table
from ...report.figures import ccdf, figure, save_figure, thin, thin_loglog
from ...report.numbers import fmt_num
from ..claims import Claim, fraction_rule, fraction_verdict
from ..context import RunView, StudyContext
from ..options import check_keys, integer, number
from ..registry import Analysis

NAME = "tails"
#: bytes per value the power-law battery holds while fitting one sample (see the docstring)
BATTERY_BYTES_PER_VALUE = 240

DEFAULTS: dict[str, Any] = {
    "n_boot": 9,
    "boot_coords": 200,
    "dim_vectors": 1,
    "sgn_batches": 256,
    "iter_windows": None,
    "min_tail": 50,
    "level": 0.1,
    "fdr": 0.1,
    "matched_samples": 50,
    "examples": 3,
    "full_batch_size": 512,
}

# family key -> (short label, what one sample is)
FAMILIES: dict[str, tuple[str, str]] = {
    "dim_minibatch": ("dimension-wise |g_B|", "one minibatch gradient, over coordinates"),
    "dim_full": ("dimension-wise |G|", "the full-batch gradient, over coordinates"),
    "dim_sgn": ("dimension-wise |g_B - G|", "one SGN vector, over coordinates"),
    "dim_minibatch_matched": (
        "dimension-wise |g_B|, size-matched",
        "T random non-zero coordinates of one minibatch gradient",
    ),
    "iter_grad": ("iteration-wise |g_t|", "one coordinate, over training steps"),
    "iter_grad_windows": ("iteration-wise |g_t|, windows", "one coordinate, over a window"),
    "iter_sgn": ("per-coordinate SGN |g_B - G|", "one coordinate, over K minibatches at fixed θ"),
}
DIM_FAMILIES = ("dim_minibatch", "dim_full", "dim_sgn")
SCOPES = {"model": "whole model", "layer": "per parameter tensor"}
ALTERNATIVES = ("lognormal", "exponential")
ZERO_POLICY = (
    "exact zeros of |g_B|, |G| and |g_t| are dropped and counted; so are SGN values of "
    "minibatches whose gradient at that coordinate is exactly 0 (there xi = -G, an atom); a "
    "sample with fewer than min_tail remaining values (or < 3 distinct) is untestable and "
    "left out of the fractions"
)

# (row key, headline label): the comparison the paper's claim is about
HEADLINE = (
    ("dim_minibatch/layer", "dim-wise |g_B| (per layer)"),
    ("dim_full/layer", "dim-wise |G| (per layer)"),
    ("dim_sgn/layer", "dim-wise SGN (per layer)"),
    ("dim_minibatch_matched", "dim-wise |g_B| (size-matched)"),
    ("iter_grad", "iter-wise |g_t|"),
    ("iter_sgn", "per-coord SGN"),
)


def resolve_options(raw: Mapping[str, Any], config: Any = None) -> dict[str, Any]:
    """The ``[options.tails]`` settings: :data:`DEFAULTS` updated by ``raw``, checked."""
    where = f"[options.{NAME}]"
    check_keys(where, raw, DEFAULTS)
    s = {**DEFAULTS, **raw}
    for key in ("n_boot", "boot_coords", "examples", "matched_samples"):
        s[key] = integer(where, key, s[key], 0)
    for key in ("dim_vectors", "sgn_batches", "min_tail", "full_batch_size"):
        s[key] = integer(where, key, s[key], 1)
    for key in ("level", "fdr"):
        s[key] = number(where, key, s[key], 0, 1, low_open=True, high_open=True)
    if s["iter_windows"] is not None:
        s["iter_windows"] = integer(where, "iter_windows", s["iter_windows"], 0)
    return s


def _param_layout(model: Any) -> tuple[list[str], np.ndarray]:
    names, sizes = [], []
    for name, p in model.named_parameters():
        names.append(name)
        sizes.append(p.numel())
    return names, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _selection_columns(selection: Any, names: list[str], offsets: np.ndarray) -> np.ndarray:
    """Flat index into the full parameter vector of every tracked column."""
    parts = []
    for k, name in enumerate(selection.names):
        parts.append(offsets[names.index(name)] + selection.flat_indices(k))
    return np.concatenate(parts)


def _windows(length: int, settings: dict[str, Any], checkpoints: int) -> int:
    w = settings["iter_windows"]
    if w is None:
        w = checkpoints - 1
        if w < 2 or length // w < 2 * settings["min_tail"]:
            return 0
    return int(min(w, length))


def _dim_vector(family: str, full: np.ndarray, mb: np.ndarray, v: int) -> np.ndarray:
    """The float64 dimension-wise vector ``v`` of ``family`` at one checkpoint: ``|G|``,
    ``|g_B|`` or ``|g_B - G|`` (0 where the minibatch gives no gradient: xi = -G, dropped)."""
    if family == "dim_full":
        return np.abs(full.astype(np.float64))
    g_b = mb[v].astype(np.float64)
    if family == "dim_minibatch":
        return np.abs(g_b)
    sgn = np.abs(g_b - full.astype(np.float64))
    sgn[g_b == 0] = 0.0
    return sgn


def _row(key: str, family: str, scope: str | None) -> dict[str, Any]:
    label, axis = FAMILIES[family]
    if scope is not None:
        label = f"{label} ({SCOPES[scope]})"
    return {"key": key, "family": family, "scope": scope, "label": label, "axis": axis}


def _group(res: Any, labels: list[Any], name: str) -> list[dict[str, Any]]:
    return [{name: k, **v} for k, v in res.group_fractions(labels).items()]


def _curve(values: np.ndarray, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    x, p = ccdf(values)
    return thin(x, p, max_points)


def _example(res: Any, j: int, label: str) -> dict[str, Any]:
    return {
        "label": label,
        "alpha": float(res.alpha[j]),
        "xmin": float(res.xmin[j]),
        "n_tail": int(res.n_tail[j]),
        "n": int(res.n[j]),
        "ks": float(res.ks[j]),
        "ks_critical": float(res.ks_critical[j]),
        "pvalue": float(res.pvalue[j]) if res.bootstrapped[j] else None,
    }


def _pick_examples(res: Any, count: int, rng: np.random.Generator) -> list[int]:
    """Tested samples at the 10/50/90% quantiles of the bootstrap p (random if no bootstrap)."""
    if count == 0 or not res.tested.any():
        return []
    pool = np.flatnonzero(res.bootstrapped if res.bootstrapped.any() else res.tested)
    if res.bootstrapped.any():
        order = pool[np.argsort(res.pvalue[pool], kind="stable")]
        qs = np.linspace(0.1, 0.9, count) if count > 1 else np.array([0.5])
        picks = order[np.round(qs * (order.size - 1)).astype(int)]
        return list(dict.fromkeys(int(j) for j in picks))
    return sorted(int(j) for j in rng.choice(pool, size=min(count, pool.size), replace=False))


def _legend_or_note(ax: Any) -> None:
    """A legend, or a note that no sample was testable (a short run: fewer values than
    ``min_tail``)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no testable sample", ha="center", va="center", transform=ax.transAxes)


def compute(ctx: StudyContext) -> dict[str, Any]:
    import torch

    from ...capture import full_grad, minibatch_grads
    from ...stats.tail_battery import power_law_battery

    s = ctx.options(NAME)
    cfg = ctx.config
    run = ctx.run
    sel = run.selection
    x, y = ctx.train_tensors
    steps = sorted(ctx.checkpoints)
    common = {
        "n_boot": s["n_boot"],
        "level": s["level"],
        "fdr": s["fdr"],
        "min_tail": s["min_tail"],
        "nonpositive": "drop",
        "untestable": "skip",
        "alternatives": ALTERNATIVES,
    }
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    examples: dict[str, list[dict[str, Any]]] = {}

    def record(key: str, res: Any, **extra: np.ndarray) -> None:
        arrays[f"{key}/alpha"] = res.alpha
        arrays[f"{key}/xmin"] = res.xmin
        arrays[f"{key}/n_tail"] = res.n_tail
        arrays[f"{key}/n"] = res.n
        arrays[f"{key}/ks"] = res.ks
        arrays[f"{key}/pvalue"] = res.pvalue
        arrays[f"{key}/naive"] = res.naive_plausible
        arrays[f"{key}/tested"] = res.tested
        for alt, v in res.comparisons.items():
            arrays[f"{key}/lr_{alt}"] = v.verdict
        for name, value in extra.items():
            arrays[f"{key}/{name}"] = value

    # ---------------------------------------------------------------- gradients at checkpoints
    keys = [f"{f}/{sc}" for f in DIM_FAMILIES for sc in SCOPES]
    dim_meta: dict[str, list[tuple[int, int, int]]] = {k: [] for k in keys}  # (step, vector, layer)
    # per checkpoint G and the minibatch gradients as captured (the model's dtype); a family's
    # float64 |.| vectors are built only while its battery runs
    raw: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    stored = run.noise
    sgn_stored = all(step in stored and stored[step].shape[0] >= s["sgn_batches"] for step in steps)
    finite = ~run.nonfinite  # rows whose gradient held NaN/Inf are left out (and counted)
    t_len = int(finite.sum())
    if t_len == 0:
        raise GradnoiseError("tails: every recorded gradient holds NaN/Inf; nothing to test")
    noise_per_step: list[np.ndarray] = []
    matched: list[np.ndarray] = []
    matched_steps: list[int] = []
    matched_rng = ctx.rng("tails-matched")
    layer_names: list[str] = []
    for step in ctx.progress.track(steps, "tails: gradients at checkpoints"):
        model = ctx.load_model(step)
        layer_names, offsets = _param_layout(model)
        full_t = full_grad(
            model,
            ctx.loss_fn,
            (x, y),
            batch_size=s["full_batch_size"],
            dropout=ctx.dropout,
            **ctx.memory(),
        )
        mb_t = minibatch_grads(
            model,
            ctx.loss_fn,
            (x, y),
            batch_size=cfg.batch_size,
            num_batches=s["dim_vectors"],
            seed=ctx.seed_for(f"tails-dim-{step}"),
            dropout=ctx.dropout,
            **ctx.memory(),
        )
        raw[step] = (full_t.cpu().numpy(), mb_t.cpu().numpy())
        for v in range(raw[step][1].shape[0]):  # size-matched subsets (see the docstring)
            a = _dim_vector("dim_minibatch", *raw[step], v)
            nonzero = a[a > 0]
            if s["matched_samples"] and nonzero.size >= t_len:
                for _ in range(s["matched_samples"]):
                    matched.append(matched_rng.choice(nonzero, size=t_len, replace=False))
                    matched_steps.append(step)
            del a, nonzero
        for fam in DIM_FAMILIES:
            for v in range(1 if fam == "dim_full" else raw[step][1].shape[0]):
                dim_meta[f"{fam}/model"].append((step, v, -1))
                for k in range(len(layer_names)):
                    dim_meta[f"{fam}/layer"].append((step, v, k))
        cols = torch.as_tensor(_selection_columns(sel, layer_names, offsets))
        if sgn_stored:
            # G exactly as the recorder computed it (gradient_noise: full_grad in batches of
            # 256 over the selection), to recover g_B = xi + G and its exact zeros
            g_sel = full_grad(
                model,
                ctx.loss_fn,
                (x, y),
                batch_size=256,
                params=sel,
                dropout=ctx.dropout,
                **ctx.memory(),
            )
            noise = stored[step][: s["sgn_batches"]].astype(np.float32)
            g_b = noise + g_sel.cpu().numpy()[None, :]
        else:
            g_sel = full_t.index_select(0, cols.to(full_t.device))
            g_b_t = minibatch_grads(
                model,
                ctx.loss_fn,
                (x, y),
                batch_size=cfg.batch_size,
                num_batches=s["sgn_batches"],
                seed=ctx.seed_for(f"tails-sgn-{step}"),
                params=sel,
                dropout=ctx.dropout,
                **ctx.memory(),
            )
            noise = (g_b_t - g_sel).cpu().numpy()
            g_b = g_b_t.cpu().numpy()
        a_noise = np.abs(noise.astype(np.float64))
        a_noise[g_b == 0] = 0.0  # minibatch gradient exactly 0: xi = -G, an atom; dropped
        noise_per_step.append(a_noise)
        del model, full_t, mb_t

    # a budget bounds the values per dimension-wise sample (see the module docstring)
    cap = None if cfg.max_memory is None else cfg.max_memory // (2 * BATTERY_BYTES_PER_VALUE)
    subsampled: dict[str, int] = {}
    sub_rng = ctx.rng("tails-dim-subsample")

    # ---------------------------------------------------------------- dimension-wise batteries
    for key in ctx.progress.track(keys, "tails: dimension-wise tests"):
        fam, scope = key.split("/")
        samples: list[np.ndarray] = []
        for step, v, k in dim_meta[key]:
            if k <= 0:  # one vector per (step, v): the model, or its first layer
                vector = _dim_vector(fam, *raw[step], v)
            a = vector if k < 0 else vector[offsets[k] : offsets[k + 1]]
            if cap is not None and a.size > cap:
                a = sub_rng.choice(a, size=cap, replace=False)
                subsampled[key] = subsampled.get(key, 0) + 1
            samples.append(a)
        del vector
        res = power_law_battery(samples, rng=ctx.rng(f"tails-{key}"), **common)
        meta = np.array(dim_meta[key], dtype=np.int64).reshape(-1, 3)
        record(key, res, step=meta[:, 0], vector=meta[:, 1], layer=meta[:, 2])
        row = {**_row(key, fam, scope), **res.summary()}
        row["values_per_sample"] = int((res.n + res.n_dropped).max()) if scope == "model" else None
        if key in subsampled:
            row["subsampled"] = {"samples": subsampled[key], "max_values": int(cap or 0)}
        row["by_step"] = _group(res, meta[:, 0].tolist(), "step")
        if scope == "layer":
            row["by_layer"] = _group(res, [layer_names[k] for k in meta[:, 2]], "layer")
        # CCDF examples: whole model at every checkpoint; per tensor at the last checkpoint
        ex_key = fam if scope == "model" else f"{fam}_layers"
        if scope == "model" or fam == "dim_minibatch":
            examples[ex_key] = []
            for j in range(res.n_samples):
                step, v, k = (int(m) for m in meta[j])
                if v != 0 or not res.tested[j] or (scope == "layer" and step != steps[-1]):
                    continue
                cx, cp = _curve(samples[j])
                tag = f"{ex_key}_{len(examples[ex_key])}"
                arrays[f"example/{tag}/x"], arrays[f"example/{tag}/p"] = cx, cp
                label = f"step {step}" if scope == "model" else layer_names[k]
                examples[ex_key].append({**_example(res, j, label), "tag": tag})
        rows.append(row)
        del samples
    del raw

    # ---------------------------------------------------------------- iteration-wise batteries
    rec_steps = run.steps[finite]
    n_cols = sel.num_columns
    t_rows = int(finite.sum())
    grads: np.ndarray | None = None
    if ctx.dask:  # out of core: the store's chunks, read and tested blockwise on the cluster
        iter_grad: Any = abs(run.to_dask().grads[np.flatnonzero(finite)].astype(np.float64))
    else:
        grads = iter_grad = np.abs(run.grads[finite].astype(np.float64))  # [T, C]
    layer_of = sel.layer_of_columns()
    col_layer = [sel.names[k] for k in layer_of]
    ex_rng = ctx.rng("tails-examples")
    iter_sets: list[tuple[str, Any, list[Any], int]] = [("iter_grad", iter_grad, [], 1)]
    n_win = _windows(t_rows, s, len(steps))
    window_bounds: list[list[int]] = []
    if n_win:
        if grads is None:  # windows are ragged samples, tested in memory
            grads = np.abs(run.grads[finite].astype(np.float64))
        blocks = np.array_split(np.arange(t_rows), n_win)
        window_bounds = [[int(rec_steps[b[0]]), int(rec_steps[b[-1]])] for b in blocks]
        win = [grads[b, j] for b in blocks for j in range(n_cols)]
        labels = [(lo + hi) // 2 for lo, hi in window_bounds for _ in range(n_cols)]
        iter_sets.append(("iter_grad_windows", win, labels, n_win))
    if matched:
        iter_sets.append(("dim_minibatch_matched", matched, matched_steps, len(steps)))
    iter_sets.append(
        (
            "iter_sgn",
            np.concatenate(noise_per_step, axis=1),
            [st for st in steps for _ in range(n_cols)],
            len(steps),
        )
    )
    for key, mat, step_labels, reps in ctx.progress.track(iter_sets, "tails: iteration-wise"):
        max_boot = s["boot_coords"] * reps if s["boot_coords"] else None
        res = power_law_battery(mat, rng=ctx.rng(f"tails-{key}"), max_boot=max_boot, **common)
        record(key, res)
        row = {
            **_row(key, key, None),
            **res.summary(),
            "values_per_sample": int((res.n + res.n_dropped).max()),
        }
        if step_labels:
            row["by_step"] = _group(res, step_labels, "step")
        if key != "dim_minibatch_matched":
            row["by_layer"] = _group(res, col_layer * reps, "layer")
        if key in ("iter_grad", "iter_sgn"):
            examples[key] = []
            for j in _pick_examples(res, s["examples"], ex_rng):
                cx, cp = _curve(np.asarray(mat[:, j]))
                tag = f"{key}_{len(examples[key])}"
                arrays[f"example/{tag}/x"], arrays[f"example/{tag}/p"] = cx, cp
                name, index = sel.locate(j % n_cols)[0]
                where = f"{name}[{', '.join(map(str, index))}]"
                if key == "iter_sgn":
                    where += f", step {steps[j // n_cols]}"
                examples[key].append({**_example(res, j, where), "tag": tag})
        rows.append(row)

    ctx.save_arrays(NAME, **arrays)
    k_sgn = s["sgn_batches"]
    if sgn_stored:
        sgn_source = f"gradient store: {k_sgn} of the SGN snapshots per checkpoint"
    else:
        have = {st: int(v.shape[0]) for st, v in stored.items()}
        sgn_source = (
            f"recomputed: {k_sgn} minibatches of {cfg.batch_size} per checkpoint (the store "
            f"holds {min(have.values()) if have else 0} per checkpoint)"
        )
    return {
        "settings": {
            **{k: s[k] for k in DEFAULTS if k != "iter_windows"},
            "iter_windows": n_win,
            "window_steps": window_bounds,
            "zero_policy": ZERO_POLICY,
            "sgn_source": sgn_source,
            "sgn_from_store": sgn_stored,
            "tracked_coordinates": n_cols,
            "recorded_steps": t_rows,
            "nonfinite_steps_excluded": int((~finite).sum()),
            "first_step": int(rec_steps[0]),
            "last_step": int(rec_steps[-1]),
            "checkpoints": steps,
            "layers": layer_names,
            "alternatives": list(ALTERNATIVES),
        },
        "families": rows,
        "examples": examples,
    }


# ---------------------------------------------------------------------------------- rendering
def _frac(count: int, total: int) -> str:
    return f"{count / total:.2f} ({count}/{total})" if total else "n/a"


def _num(value: Any) -> float:
    """A summary number for plotting (JSON null -> NaN)."""
    return float("nan") if value is None else float(value)


def _lr_cell(row: dict[str, Any], alt: str) -> str:
    v = row["likelihood_ratio"].get(alt)
    if v is None or not row["tested"]:
        return "n/a"
    return f"{v['power_law']:.2f} / {v['alternative']:.2f} / {v['inconclusive']:.2f}"


def _alpha_cell(row: dict[str, Any]) -> str:
    a = row["alpha"]
    if not row["tested"] or a["median"] is None:
        return "n/a"
    return f"{a['median']:.2f} [{a['q25']:.2f}, {a['q75']:.2f}]"


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Plausible fractions per family: bootstrap rule (p > level), then the naive KS rule."""
    rows = {r["key"]: r for r in results["families"]}
    out: dict[str, Any] = {}
    for key, label in HEADLINE:
        r = rows.get(key)
        if r is None:
            continue
        boot = _frac(r["plausible"], r["bootstrapped"])
        naive = _frac(r["naive"], r["tested"])
        out[f"PL plausible: {label}"] = f"{boot}; KS rule {naive}"
    return out


def _fit_line(ex: dict[str, Any], xmax: float) -> tuple[np.ndarray, np.ndarray]:
    """The fitted tail ``P(X >= x) = (n_tail/n) (x/xmin)^(1-alpha)`` for ``x >= xmin``."""
    xs = np.geomspace(ex["xmin"], max(xmax, ex["xmin"] * 1.0001), 50)
    return xs, ex["n_tail"] / ex["n"] * (xs / ex["xmin"]) ** (1.0 - ex["alpha"])


def _plot_examples(ax: Any, arrays: dict[str, np.ndarray], exs: list[dict[str, Any]]) -> None:
    lows = []
    for i, ex in enumerate(exs):
        color = f"C{i % 10}"
        x, p = arrays[f"example/{ex['tag']}/x"], arrays[f"example/{ex['tag']}/p"]
        pv = "" if ex["pvalue"] is None else f", p={ex['pvalue']:.2f}"
        ax.loglog(x, p, ".", ms=2.5, color=color, label=f"{ex['label']}: α={ex['alpha']:.2f}{pv}")
        fx, fp = _fit_line(ex, float(x[-1]))
        ax.loglog(fx, fp, "--", lw=1.3, color=color)
        ax.plot([ex["xmin"]], [ex["n_tail"] / ex["n"]], "o", mfc="none", color=color, ms=6)
        lows.append(ex["xmin"] / 100)
    if lows:  # far below xmin the CCDF is flat at 1 and says nothing about the tail
        ax.set_xlim(left=min(lows))
        ax.legend(fontsize=7, loc="lower left")


def _ccdf_chart(
    title: str, x_label: str, arrays: dict[str, np.ndarray], exs: list[dict[str, Any]]
) -> Chart:
    """The CCDF examples of one panel of the CCDF figures as an interactive log-log chart: the
    empirical CCDF of each example (markers, thinned evenly along the curve, from xmin / 100 like
    the figure) and its fitted power law above xmin (dashed, in the same colour)."""
    series: list[tuple[str, Any, Any]] = []
    points, dashed = [], []
    low = min((ex["xmin"] for ex in exs), default=0.0) / 100
    for ex in exs:
        x, p = arrays[f"example/{ex['tag']}/x"], arrays[f"example/{ex['tag']}/p"]
        keep = x >= low
        x, p = thin_loglog(x[keep], p[keep], 100)
        pv = "" if ex["pvalue"] is None else f", p = {ex['pvalue']:.2f}"
        label = f"{ex['label']}: α = {ex['alpha']:.2f}{pv}"
        fx, fp = _fit_line(ex, float(x[-1]) if x.size else ex["xmin"])
        series += [(label, x, p), (f"fit, {ex['label']}", fx, fp)]
        points.append(label)
        dashed.append(f"fit, {ex['label']}")
    return Chart(
        title,
        x_label,
        "P(X ≥ x)",
        series,
        log_y=True,
        log_x=True,
        points=points,
        dashed=dashed,
    )


def _fractions_plot(
    ax_l: Any, ax_s: Any, rows: dict[str, Any], layers: list[str], steps: list[int]
) -> None:
    names = [
        ("dim_minibatch/layer", "dim-wise |g_B|"),
        ("dim_full/layer", "dim-wise |G|"),
        ("dim_sgn/layer", "dim-wise SGN"),
        ("iter_grad", "iter-wise |g_t| (whole run)"),
        ("iter_sgn", "per-coord SGN"),
        ("dim_minibatch_matched", "dim-wise |g_B|, size-matched"),
        ("iter_grad_windows", "iter-wise |g_t|, windows"),
    ]
    series = [(k, lab, f"C{i}") for i, (k, lab) in enumerate(names) if k in rows]
    per_layer = [t for t in series if rows[t[0]].get("by_layer") and t[0] != "iter_grad_windows"]
    width = 0.8 / max(len(per_layer), 1)
    for i, (key, label, color) in enumerate(per_layer):
        by = {g["layer"]: g for g in rows[key]["by_layer"]}
        pos = np.arange(len(layers)) + (i - (len(per_layer) - 1) / 2) * width
        boot = [_num(by[n]["fraction_plausible"]) if n in by else np.nan for n in layers]
        naive = [_num(by[n]["fraction_naive"]) if n in by else np.nan for n in layers]
        ax_l.bar(pos, boot, width, color=color, label=label)
        ax_l.plot(pos, naive, "_", ms=max(3.0, 40 * width), mew=2, color="k")
    ax_l.set_xticks(np.arange(len(layers)), layers, rotation=30, ha="right", fontsize=7)
    ax_l.set(
        ylabel="fraction plausible",
        ylim=(0, 1.05),
        title="Power law plausible per parameter tensor",
    )
    for key, label, color in series:
        by = rows[key].get("by_step")
        if key == "iter_grad" and by is None and steps:  # one sample over the whole run
            r = rows[key]
            ax_s.plot(steps, [_num(r["fraction_plausible"])] * 2, "-", color=color, label=label)
            ax_s.plot(steps, [_num(r["fraction_naive"])] * 2, ":", color=color)
            continue
        if not by:
            continue
        xs = [g["step"] for g in by]
        ax_s.plot(xs, [_num(g["fraction_plausible"]) for g in by], "o-", color=color, label=label)
        ax_s.plot(xs, [_num(g["fraction_naive"]) for g in by], "x:", color=color)
    ax_s.set(
        xlabel="training step (checkpoint, or window centre)",
        ylabel="fraction plausible",
        ylim=(-0.02, 1.05),
        title="Power law plausible along training",
    )
    ax_s.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def render(view: RunView) -> Section:
    res = view.results
    arrays = view.arrays()
    st = res["settings"]
    rows = {r["key"]: r for r in res["families"]}
    exs = res["examples"]
    figures: list[Figure] = []

    level = st["level"]
    how = (
        "On these log–log axes a power law P(X ≥ x) ∝ x^(1-α) is a straight line of slope 1 - α; "
        "a tail that bends down towards the x axis is lighter than a power law (exponential or "
        f"lognormal-like). p in the legend is the CSN bootstrap p-value: p > {level} means the "
        f"straight line is plausible for that sample, p ≤ {level} that it is rejected."
    )
    with figure(2, 2, width=4.6, height=3.4) as (fig, axes):
        titles = {
            "dim_minibatch": "minibatch gradient |g_B|",
            "dim_full": "full gradient |G|",
            "dim_sgn": "SGN |g_B - G|",
        }
        for ax, fam in zip(axes[:3], DIM_FAMILIES, strict=True):
            _plot_examples(ax, arrays, exs.get(fam, []))
            ax.set(xlabel="|value| of a coordinate", ylabel="P(X ≥ x)", title=titles[fam])
        layers_title = f"|g_B| per parameter tensor, step {st['checkpoints'][-1]}"
        _plot_examples(axes[3], arrays, exs.get("dim_minibatch_layers", []))
        axes[3].set(xlabel="|g_B| of a coordinate", ylabel="P(X ≥ x)", title=layers_title)
        charts = [
            _ccdf_chart(
                f"Dimension-wise {titles[fam]}, whole model",
                "|value| of a coordinate",
                arrays,
                exs.get(fam, []),
            )
            for fam in DIM_FAMILIES
        ] + [
            _ccdf_chart(
                layers_title, "|g_B| of a coordinate", arrays, exs.get("dim_minibatch_layers", [])
            )
        ]
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("ccdf_dimension")),
                "Dimension-wise samples (one gradient vector, all coordinates of the model or of "
                "one parameter tensor): empirical CCDF of the absolute values (dots; exact zeros "
                "dropped) and the fitted power law above xmin (dashed; circle: xmin). p: CSN "
                f"bootstrap p-value (power law plausible if p > {level}). A power law is a "
                "straight line on these axes; the fit covers only the tail above xmin.",
                intro="The samples Xie et al. (2023) find power-law tailed: dimension-wise ones, "
                "the absolute values of all coordinates of one gradient vector. Each curve is "
                "the empirical complementary CDF P(X ≥ x) of one sample (markers; exact zeros "
                "dropped) with its Clauset–Shalizi–Newman power-law fit above xmin (dashed): the "
                "whole model's minibatch gradient, full-batch gradient and noise g_B - G at each "
                "checkpoint, then the minibatch gradient of each parameter tensor at the last "
                f"checkpoint. {how} Only the tail above xmin is fitted; a straight tail here and "
                "a bent one for the iteration-wise samples below is the paper's contrast.",
                charts=charts,
            )
        )

    with figure(2, width=4.6, height=3.4) as (fig, axes):
        it_titles = ("Iteration-wise |g_t| of one coordinate", "Per-coordinate SGN at fixed θ")
        for ax, fam, title in zip(axes, ("iter_grad", "iter_sgn"), it_titles, strict=True):
            _plot_examples(ax, arrays, exs.get(fam, []))
            ax.set(xlabel="|value|", ylabel="P(X ≥ x)", title=title)
        charts = [
            _ccdf_chart(title, "|value|", arrays, exs.get(fam, []))
            for fam, title in zip(("iter_grad", "iter_sgn"), it_titles, strict=True)
        ]
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("ccdf_iteration")),
                "Iteration-wise samples: the bootstrapped coordinates at the 10%, 50% and 90% "
                "quantiles of the bootstrap p-value, with their fitted power laws (dashed).",
                intro="The samples Xie et al. (2023) find not power-law tailed: one coordinate "
                "followed along training (|g_t| over the recorded steps) and one coordinate's "
                "noise over K minibatches at the fixed parameters of a checkpoint. Shown are "
                "the bootstrapped coordinates at the 10%, 50% and 90% quantiles of their CSN "
                f"p-value, so the curves span the family from least to most power-law-like. "
                f"{how} These samples hold hundreds of values, not tens of thousands, so the "
                "test has less power here (the size-matched family in the table controls for "
                "that).",
                charts=charts,
            )
        )

    with figure(2, width=4.6, height=3.4) as (fig, (ax_dim, ax_it)):
        dim_alpha = {fam: _finite(arrays[f"{fam}/layer/alpha"]) for fam in DIM_FAMILIES}
        bins = _bins(list(dim_alpha.values()), 20)
        for i, (fam, a) in enumerate(dim_alpha.items()):
            if a.size:
                ax_dim.hist(
                    a, bins=bins, histtype="step", lw=1.5, color=f"C{i}", label=FAMILIES[fam][0]
                )
        ax_dim.set(
            xlabel="fitted α (pdf exponent)",
            ylabel="samples",
            title="Dimension-wise (parameter tensor × checkpoint)",
        )
        _legend_or_note(ax_dim)
        it_alpha = {
            fam: _finite(arrays[f"{fam}/alpha"])
            for fam in ("iter_grad", "iter_sgn", "dim_minibatch_matched")
            if f"{fam}/alpha" in arrays
        }
        pooled = np.concatenate([np.zeros(0), *it_alpha.values()])
        hi = float(np.quantile(pooled, 0.99)) if pooled.size else 1.0
        bins = _bins([np.minimum(a, hi) for a in it_alpha.values()], 40)
        colors = {"iter_grad": "C3", "iter_sgn": "C4", "dim_minibatch_matched": "C5"}
        for fam, a in it_alpha.items():
            if a.size:
                ax_it.hist(
                    np.minimum(a, hi),
                    bins=bins,
                    histtype="step",
                    lw=1.5,
                    density=True,
                    color=colors[fam],
                    label=f"{FAMILIES[fam][0]} ({a.size})",
                )
        ax_it.set(
            xlabel="fitted α (clipped at the 99% quantile)",
            ylabel="density",
            title="Per coordinate (and size-matched dim-wise)",
        )
        _legend_or_note(ax_it)
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("alpha")),
                "Fitted tail exponents α (p(x) ∝ x^-α above xmin) over the tested samples of "
                "each family.",
                intro="How heavy the fitted tails are: the distribution of the maximum-"
                "likelihood exponent α of the density p(x) ∝ x^-α above xmin, over every tested "
                "sample of each family (left: dimension-wise samples per parameter tensor and "
                "checkpoint; right: per-coordinate samples and the size-matched dimension-wise "
                "control, as densities). Smaller α is a heavier tail (α ≤ 3: infinite variance "
                "of the tail law). An α is fitted whether or not the power law is plausible, so "
                "read it together with the p-values; Xie et al. (2023) compare these exponents "
                "across the sampling axes.",
            )
        )

    with figure(2, width=5.0, height=3.4) as (fig, (ax_l, ax_s)):
        _fractions_plot(ax_l, ax_s, rows, st["layers"], [st["first_step"], st["last_step"]])
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("fractions")),
                f"Share of samples where the power law is plausible: bootstrap p > {st['level']} "
                "(bars, solid lines) and the naive KS rule (black ticks, dotted lines). Left: "
                "per parameter tensor (dimension-wise samples pooled over checkpoints; "
                "iteration-wise samples by the tensor of the coordinate). Right: along training "
                "(dimension-wise and SGN per checkpoint, iteration-wise per window of steps). "
                "Colours as in the legend on the right.",
                intro="The verdict of Xie et al. (2023)'s claims in one picture: the share of "
                f"samples where a power law is plausible (CSN bootstrap p > {level}), per "
                "parameter tensor (bars, left) and along training (lines, right), with the "
                "lenient naive KS rule beside it (black ticks, dotted lines). A family near 1 "
                "is power-law tailed almost everywhere, near 0 almost nowhere; the paper expects "
                "dimension-wise bars high and iteration-wise and per-coordinate SGN ones low. "
                "The gap between the bootstrap and the naive rule shows how much fitting α and "
                "xmin on the same data flatters the KS distance.",
            )
        )

    table = Table(
        [
            "family",
            "one sample is",
            "tested (untestable)",
            "values per sample",
            "zeros dropped",
            f"PL plausible: bootstrap p > {st['level']}",
            "PL plausible: KS < 1.358/√n_tail",
            "α median [q25, q75]",
            "median tail share",
            "LR vs lognormal: PL / LN / incon.",
            "LR vs exponential: PL / exp / incon.",
        ],
        [
            [
                r["label"],
                r["axis"],
                f"{r['tested']} ({r['untestable']})",
                _values_cell(r),
                r["dropped_nonpositive"],
                _frac(r["plausible"], r["bootstrapped"]),
                _frac(r["naive"], r["tested"]),
                _alpha_cell(r),
                "n/a" if r["tail_fraction_median"] is None else f"{r['tail_fraction_median']:.3f}",
                _lr_cell(r, "lognormal"),
                _lr_cell(r, "exponential"),
            ]
            for r in res["families"]
        ],
        caption="Dimension-wise vs iteration-wise vs SGN power-law plausibility (Xie et al. "
        "2023). Bootstrap fractions are over the bootstrapped samples (counts in brackets), the "
        "naive KS rule over all tested samples. Likelihood-ratio columns: share of tested "
        "samples where the power law / the alternative is favoured at Benjamini–Hochberg FDR "
        f"{st['fdr']} across the family's samples, or neither (inconclusive).",
    )
    paragraphs = [
        "Xie et al. (2023) report that dimension-wise gradients (the coordinates of one "
        "gradient vector) usually have power-law tails while iteration-wise gradients (one "
        "coordinate along training) and gradient noise usually do not. Every sample below is "
        "tested on absolute values with the Clauset–Shalizi–Newman procedure: maximum-"
        f"likelihood α above the KS-optimal xmin (tail of at least {st['min_tail']} values), the "
        f"semi-parametric bootstrap with {st['n_boot']} replicates per sample, xmin re-fitted in "
        f"each (power law plausible iff p > {st['level']}; for an exact bootstrap this rule "
        f"rejects a true power law with probability {_mc_size(st['n_boot'], st['level']):.3f}), "
        "the naive rule KS distance < 1.358/√n_tail side by side (lenient: it ignores that α "
        "and xmin were fitted), and likelihood ratios against lognormal and exponential "
        "tails. Plausible does not mean proven, and a CSN test on a larger sample detects "
        "smaller departures: dimension-wise samples hold tens of thousands of values, "
        "iteration-wise ones hundreds. The size-matched family (random subsets of the "
        "dimension-wise minibatch gradient, as large as an iteration-wise sample) separates "
        "that effect from the sampling axis.",
        f"Data: {st['tracked_coordinates']} tracked coordinates over {st['recorded_steps']} "
        f"recorded steps; checkpoints {st['checkpoints']}; {st['dim_vectors']} minibatch "
        f"vector(s) per checkpoint for the dimension-wise tests. Per-coordinate SGN: "
        f"{st['sgn_source']}. Iteration-wise families bootstrap a seeded random subset of "
        f"{st['boot_coords'] or 'all'} samples per checkpoint or window (fits, the KS rule and "
        f"likelihood ratios use all). Zeros: {st['zero_policy']}."
        + (
            f" {st['nonfinite_steps_excluded']} recorded steps with NaN/Inf gradients are left "
            "out of the iteration-wise samples."
            if st.get("nonfinite_steps_excluded")
            else ""
        ),
    ]
    return Section(NAME, ANALYSIS.title, paragraphs=paragraphs, tables=[table], figures=figures)


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


def _bins(samples: list[np.ndarray], count: int) -> Any:
    pooled = np.concatenate([np.zeros(0), *samples])
    if pooled.size == 0 or pooled.min() == pooled.max():
        return count
    return np.linspace(pooled.min(), pooled.max(), count + 1)


def _mc_size(n_boot: int, level: float) -> float:
    """P(p <= level) for an exact Monte-Carlo test: (floor(level n_boot) + 1) / (n_boot + 1)."""
    return (np.floor(level * n_boot + 1e-9) + 1) / (n_boot + 1) if n_boot else float("nan")


def _values_cell(row: dict[str, Any]) -> str:
    n = row.get("values_per_sample")
    cell = "size of the tensor" if n is None else str(n)
    sub = row.get("subsampled")
    if sub:
        cell += (
            f" ({sub['samples']} sample(s) longer than {fmt_num(sub['max_values'])} values: a "
            "seeded random subset of coordinates, set by max_memory)"
        )
    return cell


# (paper's claim, family keys in order of preference, a power law in most samples supports it)
CLAIMS = (
    (
        "Dimension-wise gradients (the coordinates of one minibatch gradient) usually have "
        "power-law tails.",
        ("dim_minibatch/layer", "dim_minibatch/model"),
        True,
    ),
    (
        "Iteration-wise gradients (one coordinate along training) usually do not have "
        "power-law tails.",
        ("iter_grad",),
        False,
    ),
    (
        "Minibatch gradient noise (one coordinate over minibatches at fixed parameters) usually "
        "does not have power-law tails.",
        ("iter_sgn",),
        False,
    ),
)


def claims(results: dict[str, Any]) -> list[Claim]:
    """Xie et al. (2023)'s three tail claims, each decided by the share of bootstrapped samples
    of its family where a power law is plausible (CSN bootstrap p > level)."""
    rows = {r["key"]: r for r in results["families"]}
    matched = rows.get("dim_minibatch_matched")
    out = []
    for text, keys, majority in CLAIMS:
        row = next((rows[k] for k in keys if k in rows), None)
        if row is None:
            continue
        k, n = int(row["plausible"]), int(row["bootstrapped"])
        evidence = (
            f"{row['label']}: power law plausible (bootstrap p > {fmt_num(row['level'])}) in "
            f"{fmt_num(k)} of {fmt_num(n)} samples ({fmt_num(k / n if n else None, '%', digits=3)}"
            f"), "
            + (
                f"{fmt_num(row['values_per_sample'])} values per sample"
                if row.get("values_per_sample")
                else "one sample per parameter tensor"
            )
        )
        if not majority and matched is not None and matched["bootstrapped"]:
            evidence += (
                f"; dimension-wise samples of the same size: {fmt_num(matched['plausible'])} of "
                f"{fmt_num(matched['bootstrapped'])} (small samples rarely reject a power law)"
            )
        out.append(
            Claim(
                "Xie et al. 2023",
                text,
                fraction_verdict(k, n, majority_supports=majority),
                evidence,
                fraction_rule(majority),
            )
        )
    return out


ANALYSIS = Analysis(
    NAME,
    "Power-law tails (Xie et al.)",
    compute,
    render,
    description="CSN power-law battery: dimension-wise vs iteration-wise gradients vs SGN",
    headline=headline,
    options=resolve_options,
    claims=claims,
)
