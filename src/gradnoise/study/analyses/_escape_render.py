"""Report section of the escape analysis (no torch: rendered from summary.json and the npz)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...report import Figure, Section, Table
from ...report.figures import figure, save_figure
from ..context import RunView

ARM_LABEL = {"sgd": "SGD", "levy": "Lévy SDE", "gauss": "Gaussian SDE"}
ARM_COLOR = {"sgd": "C0", "levy": "C3", "gauss": "C2"}


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):  # summary.json stores infinities as "inf"
        return {"inf": "∞", "-inf": "-∞"}.get(v, v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else str(v)
        return f"{v:.{digits}g}"
    return str(v)


def _ci(est: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    if lo is None or hi is None:
        return _f(est, digits)
    return f"{_f(est, digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


def _exit(cell: dict[str, Any]) -> str:
    return (
        f"{_ci(cell['mean_steps'], cell['ci_low'], cell['ci_high'])} "
        f"({cell['exits']}/{cell['paths']})"
    )


def _fraction(counts: list[int]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c / c.sum() if c.sum() else c


def _escape_tables(res: dict[str, Any]) -> list[Table]:
    s = res["settings"]
    fits = Table(
        ["B", "coordinates", "unfitted (zero IQR)", "α median [q10, q90]", "α < 1.9", "σ median"],
        [
            [
                r["batch_size"],
                r["coordinates"],
                r["unfitted"],
                f"{_f(r['alpha_median'])} [{_f(r['alpha_q10'])}, {_f(r['alpha_q90'])}]",
                _f(r["fraction_alpha_below_1_9"]),
                _f(r["scale_median"]),
            ]
            for r in res["fits"]
        ],
        caption=f"Per-coordinate SαS fits ({s['fit_method']}, location 0) of the SGN at the "
        f"checkpoint, K = {s['sgn_samples']} minibatches per batch size. Unfitted coordinates "
        "carry no noise in the SDEs.",
    )
    rule = (
        f"loss > L* + {_f(s['loss_rise'])}, checked every {s['check_every']} steps"
        if s["exit"] == "loss"
        else f"||θ − θ*|| > {_f(s['radius'])} ||θ*|| = {_f(res['exit_threshold'])}"
    )
    grid = Table(
        [
            "lr",
            "B",
            "arm",
            "ε median",
            "basin exit step [CI] (exits/n)",
            "trapped over horizon [CI]",
            "first box exit step [CI] (exits/n)",
            "theory box exit step",
        ],
        [
            [
                _f(r["lr"]),
                r["batch_size"],
                ARM_LABEL[r["arm"]],
                _f(r["eps_median"]),
                _exit(r["basin_exit"]),
                _ci(r["trapping_probability"], *r["trapping_ci"]),
                _exit(r["box_exit"]),
                _f(r["box_exit_theory_steps"]),
            ]
            for r in res["rows"]
        ],
        caption=f"{s['paths']} paths per cell, horizon {s['horizon']} steps from the checkpoint. "
        f"Basin exit: {rule}. Box: |θ_j − θ*_j| ≥ {_f(res['box'])} for some j. Mean exit steps "
        "are censored maximum-likelihood estimates (exposure / exits) with exact Poisson "
        f"{s['level']:.0%} intervals; trapping probabilities with Wilson intervals. Theory: "
        "Lévy and SGD rows, 1/(Λ lr) over the α < 2 coordinates (Imkeller–Pavlyukevich), for "
        "the fitted α; Gaussian rows, the Kramers prediction from the measured axis barriers "
        "(n/a where some noisy coordinate has no barrier of at least "
        f"{_f(res.get('axis_profile', {}).get('kramers_min_ratio'))} D).",
    )
    sl = res["slopes"]
    expo = Table(
        ["", "slope of log exit time vs log ε", "s.e.", "points"],
        [
            [
                name,
                _f(sl[key]["slope"]),
                _f(sl[key]["se"]),
                sl[key]["points"],
            ]
            for key, name in (
                ("levy", "Lévy SDE (simulated)"),
                ("gauss", "Gaussian SDE (simulated)"),
                ("theory", "small-noise theory (Lévy)"),
            )
        ],
        caption="Noise sweep at the first lr and B: scales × "
        f"{s['noise_factors']}. The theory's slope is minus the exit-weighted α (−α for one "
        "coordinate); a Gaussian SDE has no power law (Kramers: exponential in 1/ε²).",
    )
    return [fits, grid, expo]


def _direction(res: dict[str, Any]) -> tuple[Table, dict[str, np.ndarray]]:
    names = res["params"]
    base = res["rows"][:3]
    shares = {"predicted": np.asarray(base[0]["predicted_first_exit_by_param"])}
    for r in base:
        shares[r["arm"]] = _fraction(r["first_exit_by_param"])
    far = {r["arm"]: _fraction(r["farthest_by_param"]) for r in base}
    disp = {r["arm"]: np.asarray(r["displacement_share_by_param"]) for r in base}
    table = Table(
        [
            "parameter",
            "size",
            "predicted first exit",
            *(f"first exit, {ARM_LABEL[r['arm']]}" for r in base),
            *(f"farthest, {ARM_LABEL[r['arm']]}" for r in base),
            *(f"share of ||Δθ||², {ARM_LABEL[r['arm']]}" for r in base),
        ],
        [
            [
                name,
                res["param_sizes"][k],
                _f(float(shares["predicted"][k])),
                *(_f(float(shares[r["arm"]][k])) for r in base),
                *(_f(float(far[r["arm"]][k])) for r in base),
                *(_f(float(disp[r["arm"]][k])) for r in base),
            ]
            for k, name in enumerate(names)
        ],
        caption=f"Exit directions at lr {_f(base[0]['lr'])}, B {base[0]['batch_size']}: the "
        "fraction of paths whose first box exit was in each parameter tensor (predicted: "
        "Σ_j λ_j/Λ over its coordinates), whose farthest-moved coordinate at the basin exit (or "
        "the horizon) lies there, and its mean share of the squared displacement.",
    )
    return table, shares


def _figures(view: RunView, res: dict[str, Any], shares: dict[str, np.ndarray]) -> list[Figure]:
    arrays = view.arrays()
    figs = []
    levy_eps = {
        (r["lr"], r["batch_size"]): r["eps_median"] for r in res["rows"] if r["arm"] == "levy"
    }
    with figure(1, width=5.0, height=3.8) as (fig, ax):
        sweep = res["sweep"]
        base_eps = {r["noise_factor"]: r["eps_median"] for r in sweep if r["arm"] == "levy"}
        for arm in ("levy", "gauss"):
            pts = [r for r in sweep if r["arm"] == arm and r["box_exit"]["exits"]]
            if pts:
                xs = np.array([base_eps[r["noise_factor"]] for r in pts])
                ys = np.array([r["box_exit"]["mean_steps"] for r in pts])
                lo = np.array([r["box_exit"]["ci_low"] for r in pts])
                hi = np.array([r["box_exit"]["ci_high"] for r in pts])
                hi = np.where(np.isfinite(hi), hi, ys)
                ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], fmt="o-", color=ARM_COLOR[arm],
                            label=f"{ARM_LABEL[arm]} (noise sweep)", capsize=2)  # fmt: skip
        th = [r for r in sweep if r["arm"] == "levy" and r["theory_steps"] is not None]
        if th:
            ax.plot([base_eps[r["noise_factor"]] for r in th], [r["theory_steps"] for r in th],
                    "k--", label="Lévy theory 1/(Λ lr)")  # fmt: skip
        kr = [r for r in sweep if r["arm"] == "gauss" and r.get("theory_steps") is not None]
        if kr:
            ax.plot([base_eps[r["noise_factor"]] for r in kr], [r["theory_steps"] for r in kr],
                    ":", color=ARM_COLOR["gauss"], marker="x",
                    label="Kramers theory (Gaussian SDE)")  # fmt: skip
        for arm in ("sgd", "levy", "gauss"):
            pts = [r for r in res["rows"] if r["arm"] == arm and r["box_exit"]["exits"]]
            if pts:
                ax.scatter([levy_eps[(r["lr"], r["batch_size"])] for r in pts],
                           [r["box_exit"]["mean_steps"] for r in pts], marker="s",
                           facecolors="none", edgecolors=ARM_COLOR[arm],
                           label=f"{ARM_LABEL[arm]} (lr × B grid)")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="ε (median over coordinates, fitted α)",
               ylabel="mean first box exit (steps)", title="Exit time vs ε")  # fmt: skip
        ax.legend(fontsize=7)
        path = save_figure(fig, view.figure_path("exit_time"))
    figs.append(
        Figure(
            path,
            "Mean first box exit step (censored MLE, 95% interval) against the median SDE "
            "amplitude ε_j = lr^((α_j−1)/α_j) σ_j: the noise sweep of the two SDEs, the theory "
            "line of the Lévy SDE (Imkeller–Pavlyukevich), the Kramers prediction of the Gaussian "
            "SDE where it applies (dotted; absent where the measured axis barriers are not "
            f"≥ {_f(res.get('axis_profile', {}).get('kramers_min_ratio'))} D for every noisy "
            "coordinate), and the lr × batch-size grid (squares; ε of the Lévy fit).",
        )
    )
    names = res["params"]
    with figure(1, width=max(4.5, 1.0 + 0.9 * len(names)), height=3.4) as (fig, ax):
        keys = ["predicted", "sgd", "levy", "gauss"]
        exits = {r["arm"]: r["box_exit"]["exits"] for r in res["rows"][:3]}
        width = 0.8 / len(keys)
        pos = np.arange(len(names))
        for i, key in enumerate(keys):
            ax.bar(pos + (i - 1.5) * width, shares[key], width,
                   color="0.5" if key == "predicted" else ARM_COLOR[key],
                   label="theory λ_j/Λ" if key == "predicted"
                   else f"{ARM_LABEL[key]} ({exits[key]} first exits)")  # fmt: skip
        ax.set_xticks(pos, names, rotation=30, ha="right", fontsize=7)
        ax.set(ylabel="fraction of first box exits", title="Exit direction by parameter")
        ax.legend(fontsize=7)
        path = save_figure(fig, view.figure_path("exit_direction"))
    figs.append(
        Figure(
            path,
            "Which parameter tensor leaves the box first: the small-noise prediction (sum of "
            "λ_j/Λ over the tensor's coordinates) against SGD and the two SDEs.",
        )
    )
    coords = arrays["trace_coords"]
    if coords.size and "trace_sgd" in arrays:
        groups = arrays["group"]
        with figure(len(coords), width=3.4, height=3.0) as (fig, axes):
            axes = np.atleast_1d(axes)
            for i, (ax, j) in enumerate(zip(axes, coords, strict=True)):
                for arm in ("sgd", "levy", "gauss"):
                    ax.plot(arrays[f"trace_{arm}"][:, i], color=ARM_COLOR[arm], lw=0.9,
                            label=ARM_LABEL[arm])  # fmt: skip
                for sign in (1, -1):
                    ax.axhline(sign * res["box"], color="k", ls=":", lw=0.8)
                b = res["settings"]["batch_sizes"][0]
                a = arrays[f"alpha_{b}"][j]
                ax.set(xlabel="step", ylabel="θ_j − θ*_j",
                       title=f"{names[int(groups[j])]}[{j}], α={a:.2f}")  # fmt: skip
            axes[0].legend(fontsize=7)
            path = save_figure(fig, view.figure_path("trajectories"))
        figs.append(
            Figure(
                path,
                "One path per arm of the coordinates with the largest predicted exit rates "
                "(dotted: the box). A path ends at its basin exit.",
            )
        )
    return figs


def _kramers_text(res: dict[str, Any]) -> str:
    """What the Gaussian SDE's Kramers prediction says, or why there is none."""
    rows = [r for r in res["sweep"] if r["arm"] == "gauss" and "kramers" in r]
    if not rows:
        return ""
    prof = res.get("axis_profile", {})
    k_min = _f(prof.get("kramers_min_ratio"))
    head = (
        "Gaussian SDE, Kramers prediction: the barrier of each noisy coordinate is measured on "
        "the network as the train-loss rise along its axis at the box's edges, L(θ* ± w e_j) − "
        f"L* (median {_f(prof.get('rise_plus_median'))} at +w, "
        f"{_f(prof.get('rise_minus_median'))} at −w, w = {_f(res['box'])}); the quadratic "
        "through these and L* gives the curvature, the 1-D minimum and the side barriers ΔU_j, "
        "and D_j = lr σ_j² (Gaussian SDE: N(0, 2σ_j²) per step). The rate Σ_j Σ_sides |U'| "
        "√(h_j/(2π D_j)) exp(−ΔU_j/D_j) assumes independent coordinates in their own axis "
        f"potentials and small noise; it is used only where every noisy coordinate has ΔU ≥ "
        f"{k_min} D. "
    )
    ok = [r for r in rows if r["theory_steps"] is not None]
    k1 = min(rows, key=lambda r: abs(math.log(r["noise_factor"])))["kramers"]
    if not k1.get("complete", True):
        head += (
            f"The axes of a random subset of {k1['coordinates']} noisy coordinates were measured "
            "(axis_coords): the counts below are over it, and no prediction is made (the rate "
            "is a sum over every coordinate). "
        )
    if not ok:
        return head + (
            f"On this basin there is no meaningful barrier, so no Kramers line is drawn: of "
            f"{k1['coordinates']} noisy coordinates, {k1['no_barrier']} have none (the loss "
            "along the axis is concave, or its 1-D minimum lies outside the box: the coordinate "
            f"drifts out rather than crossing a barrier) and {k1['below_min_ratio']} have ΔU < "
            f"{k_min} D at noise factor {_f(min(rows, key=lambda r: abs(math.log(r['noise_factor'])))['noise_factor'])} "
            f"(median ΔU/D {_f(k1['ratio_median'])}, smallest {_f(k1['ratio_min'])}). Kramers' "
            "exp(ΔU/D) law needs ΔU ≫ D for every way out; here many coordinates can leave the "
            "box by drift or free diffusion, so a Kramers line would be made up."
        )
    pairs = ", ".join(
        f"×{_f(r['noise_factor'])}: {_f(r['theory_steps'])} vs {_exit(r['box_exit'])}" for r in ok
    )
    return head + f"Predicted vs simulated mean first box exit (steps) at noise factor {pairs}."


METRICS = (
    ("test_acc", "test accuracy"),
    ("jump_frequency", "jump frequency"),
    ("jump_size", "jump size"),
    ("alpha_median", "α median"),
    ("train_loss", "train loss"),
    ("distance", "||θ − θ*||"),
)


def _decay(view: RunView, dec: dict[str, Any]) -> tuple[list[str], list[Table], list[Figure]]:
    if "skipped_reason" in dec:
        return [f"Learning-rate-decay arms not run: {dec['skipped_reason']}."], [], []
    rows = dec["rows"]
    v = dec["verdict"]
    paragraphs = [
        f"Learning-rate-decay arms (Battash & Lindenbaum): from step "
        f"{dec['from_step']}, {dec['steps']} steps of {dec['optimizer']} per arm, "
        f"{rows[0]['seeds'] if rows else 0} minibatch orders (seeds) each, decay factor "
        f"{dec['decay']} (base lr {_f(dec['base_lr'])}, B {dec['base_batch_size']}). A jump is a "
        "per-step noise value |lr ξ_j| above the 0.99 quantile of the checkpoint's |lr0 ξ_j| "
        "(frequency 0.01 when nothing changed).",
        "Rule: supported when lr-decay's test-accuracy gain over constant, its drop in jump "
        "frequency and batch-increase's gain all have Welch intervals excluding 0 in the "
        "predicted direction (and lr-decay-small-batch, when run, gains less than lr-decay); not "
        "supported when decay's gain interval lies at or below 0, or decay helps while "
        "batch-increase does not (or the small-batch arm gains as much); otherwise inconclusive.",
    ]
    if "decay_gain" in v:
        g, j, b = v["decay_gain"], v["decay_jump_change"], v["batch_gain"]
        paragraphs.append(
            f"Verdict: {v['verdict']} ({v['reason']}). Test-accuracy gain of lr-decay "
            f"{_ci(g['diff'], g['ci_low'], g['ci_high'])}, of batch-increase "
            f"{_ci(b['diff'], b['ci_low'], b['ci_high'])}; change of jump frequency under "
            f"lr-decay {_ci(j['diff'], j['ci_low'], j['ci_high'])} (n = {g['n']} seeds)."
        )
    else:
        paragraphs.append(f"Verdict: {v['verdict']} ({v['reason']}).")
    table = Table(
        ["arm", "lr", "B", *(label for _, label in METRICS), "left basin [CI]"],
        [
            [
                r["arm"],
                _f(r["lr"]),
                r["batch_size"],
                *(_ci(r[m]["mean"], r[m]["ci_low"], r[m]["ci_high"]) for m, _ in METRICS),
                _ci(r["left_basin"]["p"], r["left_basin"]["ci_low"], r["left_basin"]["ci_high"]),
            ]
            for r in rows
        ],
        caption="Means over seeds with Student t intervals (Wilson for the fraction of end "
        "points outside the basin).",
    )
    figs = []
    if rows:
        with figure(3, width=3.3, height=3.0) as (fig, axes):
            for ax, (m, label) in zip(axes, METRICS[:3], strict=True):
                means = [r[m]["mean"] if r[m]["mean"] is not None else np.nan for r in rows]
                lo = [
                    r[m]["ci_low"] if r[m]["ci_low"] is not None else mu
                    for r, mu in zip(rows, means, strict=True)
                ]
                hi = [
                    r[m]["ci_high"] if r[m]["ci_high"] is not None else mu
                    for r, mu in zip(rows, means, strict=True)
                ]
                pos = np.arange(len(rows))
                ax.errorbar(pos, means, yerr=[np.subtract(means, lo), np.subtract(hi, means)],
                            fmt="o", capsize=3)  # fmt: skip
                for i, r in enumerate(rows):
                    ax.scatter(np.full(len(r[m]["values"]), i + 0.15),
                               [np.nan if q is None else q for q in r[m]["values"]], s=8,
                               color="0.5")  # fmt: skip
                ax.set_xticks(pos, [r["arm"].replace("-", "-\n") for r in rows], fontsize=7)
                ax.set(title=label)
            path = save_figure(fig, view.figure_path("decay_arms"))
        figs.append(
            Figure(
                path,
                "Learning-rate-decay arms: mean over seeds with its 95% t interval (grey: each "
                "seed).",
            )
        )
    return paragraphs, [table], figs


def _findings(res: dict[str, Any]) -> str:
    base = {r["arm"]: r for r in res["rows"][:3]}
    parts = []
    for arm in ("sgd", "levy", "gauss"):
        r = base[arm]
        parts.append(
            f"{ARM_LABEL[arm]}: trapped {_ci(r['trapping_probability'], *r['trapping_ci'])}, "
            f"basin exit {_exit(r['basin_exit'])} steps, "
            f"first box exit {_exit(r['box_exit'])} steps"
            + (f" (theory {_f(r['box_exit_theory_steps'])})" if arm == "levy" else "")
        )
    sgd_trap = base["sgd"]["trapping_probability"]
    match = [
        f"{'inside' if lo <= sgd_trap <= hi else 'outside'} the {ARM_LABEL[arm]}'s interval"
        for arm in ("levy", "gauss")
        for lo, hi in [base[arm]["trapping_ci"]]
    ]
    parts.append(f"SGD's trapped fraction lies {match[0]} and {match[1]}")
    sl = res["slopes"]
    names = res["params"]
    pred = np.asarray(base["levy"]["predicted_first_exit_by_param"])
    top_pred = names[int(np.argmax(pred))] if pred.sum() else "n/a"
    top_obs = {
        arm: names[int(np.argmax(base[arm]["first_exit_by_param"]))]
        if sum(base[arm]["first_exit_by_param"])
        else "none"
        for arm in base
    }
    return (
        f"At lr {_f(base['sgd']['lr'])} and B {base['sgd']['batch_size']}: "
        + "; ".join(parts)
        + ". Exit time vs ε: simulated "
        f"Lévy slope {_f(sl['levy']['slope'])} ± {_f(sl['levy']['se'])}, theory "
        f"{_f(sl['theory']['slope'])}; Gaussian {_f(sl['gauss']['slope'])} ± "
        f"{_f(sl['gauss']['se'])}. Most likely first exit by theory: {top_pred}; observed: "
        + ", ".join(f"{ARM_LABEL[a]} {t}" for a, t in top_obs.items())
        + "."
    )


def _sharp_flat(res: dict[str, Any]) -> tuple[list[str], list[Table]]:
    sf = res.get("sharp_flat")
    if not sf:
        return [], []
    m = sf["minima"]
    sh, fl = m[sf["sharper"]], m[1 - sf["sharper"]]
    cmp_ = sf["comparison"]
    intro = (
        "Sharp vs flat minimum at equal training loss: is escape faster from a sharper "
        "minimum? (Kramers' Gaussian picture says yes, through the barrier; the Lévy small-noise "
        "theory of Imkeller–Pavlyukevich says the exit time depends on the basin's width, not "
        f"its depth or curvature.) From the checkpoint at step {sf['start_step']}, plain SGD at "
        f"lr {_f(sf.get('train_lr', sf['lr']))} with B = {m[0]['train_batch_size']} and with B = "
        f"{m[1]['train_batch_size']} until the train loss is at most L* = "
        f"{_f(sf['target_loss'], 4)}: {m[0]['train_steps']} and {m[1]['train_steps']} steps, "
        f"losses {_f(m[0]['train_loss'], 4)} and {_f(m[1]['train_loss'], 4)} (gap "
        f"{_f(sf['loss_gap'], 2)}). Sharpness (top Hessian eigenvalue, tr H ± s.e.): B = "
        f"{m[0]['train_batch_size']}: {_f(m[0]['lambda_max'])}, {_f(m[0]['trace'])} ± "
        f"{_f(m[0]['trace_se'], 2)}; B = {m[1]['train_batch_size']}: {_f(m[1]['lambda_max'])}, "
        f"{_f(m[1]['trace'])} ± {_f(m[1]['trace_se'], 2)}. The sharper one (larger top "
        f"eigenvalue) is the B = {sh['train_batch_size']} minimum"
        + ("; tr H agrees." if sf["trace_agrees"] else "; tr H says the opposite.")
        + f" Escape from each at lr {_f(sf['lr'])}, B = {sf['batch_size']}: {sf['paths']} "
        f"paths × {sf['horizon']} steps per arm, the same box and basin rule"
        + (
            f"; lr × λ_max = {_f(m[0]['lr_lambda_max'])} and {_f(m[1]['lr_lambda_max'])} (above "
            "2, gradient descent is linearly unstable at that minimum)."
            if "lr_lambda_max" in m[0]
            else "."
        )
    )

    def arm_sentence(arm: str) -> str:
        c = cmp_[arm]
        es_, ef = sh["arms"][arm], fl["arms"][arm]
        trap = (
            f"trapped {_ci(es_['trapping_probability'], *es_['trapping_ci'])} (sharper) vs "
            f"{_ci(ef['trapping_probability'], *ef['trapping_ci'])} (flatter)"
        )
        bx = c.get("box_ratio")
        box = (
            f"; first box exit rate ratio {_ci(bx['ratio'], bx['ci_low'], bx['ci_high'])} "
            f"({bx['verdict']})"
            if bx and bx["ratio"] is not None
            else ""
        )
        if c["verdict"] == "no exits":
            return f"{ARM_LABEL[arm]}: no path left either basin within the horizon ({trap}{box})"
        words = {
            "faster": "escapes the sharper minimum faster",
            "slower": "escapes the sharper minimum more slowly",
            "no difference detected": "shows no detectable difference",
        }[c["verdict"]]
        return (
            f"{ARM_LABEL[arm]} {words}: basin-exit rate ratio (sharper/flatter) "
            f"{_ci(c['ratio'], c['ci_low'], c['ci_high'])} from {c['events'][0]} and "
            f"{c['events'][1]} exits; {trap}{box}"
        )

    sgd = cmp_["sgd"]["verdict"]
    lead = {
        "faster": "Verdict: SGD escapes the sharper minimum faster.",
        "slower": "Verdict: SGD escapes the sharper minimum more slowly.",
        "no difference detected": "Verdict: inconclusive — no difference in SGD's escape rate "
        "detected at this number of paths.",
        "no exits": "Verdict: inconclusive — SGD did not leave either basin within the horizon.",
    }[sgd]
    if not sf["matched"]:
        lead = (
            "Verdict: not decided — the two minima did not both reach the target loss within "
            f"{sf['max_steps']} steps, so training progress confounds the comparison. "
            "Measured: "
        )
    if abs(sh["lambda_max"] - fl["lambda_max"]) <= 0.05 * max(fl["lambda_max"], 1e-12):
        lead += " The two minima are about equally sharp (top eigenvalues within 5%)."
    elif not sf["trace_agrees"]:
        lead += (
            " Sharpness is ambiguous: the top eigenvalue and tr H rank the two minima "
            "differently, so this compares two about equally sharp minima."
        )
    text = (
        lead
        + " "
        + "; ".join(arm_sentence(a) for a in ("sgd", "levy", "gauss"))
        + (f". Rate-ratio intervals: exact conditional binomial, {res['settings']['level']:.0%}.")
    )
    table = Table(
        [
            "B (training)",
            "steps",
            "L",
            "λ_max",
            "tr H ± s.e.",
            "arm",
            "basin exit step [CI] (exits/n)",
            "trapped [CI]",
            "first box exit step [CI] (exits/n)",
        ],
        [
            [
                mm["train_batch_size"],
                mm["train_steps"],
                _f(mm["train_loss"], 4),
                _f(mm["lambda_max"]),
                f"{_f(mm['trace'])} ± {_f(mm['trace_se'], 2)}",
                ARM_LABEL[arm],
                _exit(mm["arms"][arm]["basin_exit"]),
                _ci(mm["arms"][arm]["trapping_probability"], *mm["arms"][arm]["trapping_ci"]),
                _exit(mm["arms"][arm]["box_exit"]),
            ]
            for mm in m
            for arm in ("sgd", "levy", "gauss")
        ],
        caption="Sharp vs flat minimum at equal train loss: escape of each arm at the same lr, "
        "B, box and basin rule (the basin threshold is relative to each minimum's own loss).",
    )
    return [intro, text], [table]


def _figure_prose(res: dict[str, Any], has_decay: bool) -> list[str]:
    """What each figure shows and why it matters, before the figures."""
    out = [
        "Figure “Exit time vs ε”: the mean first box exit of the Lévy and Gaussian SDEs as the "
        "noise scale is swept, on log–log axes. Battash & Lindenbaum's point is that a Lévy-"
        "driven SDE escapes by single jumps, so its exit time is a power law in the noise "
        "amplitude, E[τ] ∝ ε^−α (the dashed line is Imkeller & Pavlyukevich's small-noise rate "
        "Λ = Σ_j (c_α/α) ε_j^α (a_j^−α + b_j^−α), not fitted), whereas a Gaussian SDE must climb "
        "a barrier and its exit time grows like exp(ΔU/D) (Kramers), a curve on these axes. "
        "Whether SGD's own exit times (squares of the lr × B grid, blue, drawn only where SGD "
        "left the box) follow the Lévy or the Gaussian pattern is the test of which noise model "
        "describes escape.",
        "Figure “Exit direction by parameter”: which parameter tensor leaves the box first. The "
        "Lévy theory predicts exits along the coordinates with the heaviest tails and largest "
        "scales (λ_j/Λ); Battash & Lindenbaum argue this makes escape directions "
        "parameter-specific, which a Gaussian model with the same scales does not predict.",
        "Figure “Trajectories”: single paths of the coordinates with the largest predicted exit "
        "rates, to show jumps (Lévy) against diffusion (Gaussian) and SGD's own moves.",
    ]
    if has_decay:
        out.append(
            "Figure “Learning-rate-decay arms”: test accuracy, jump frequency and jump size "
            "after decaying the lr, increasing the batch or neither; Battash & Lindenbaum "
            "attribute the benefit of lr decay to the reduced noise, so a larger batch (noise "
            "reduced, step kept) should help like decay."
        )
    return out


def render_section(view: RunView, title: str) -> Section:
    """The report section of the escape analysis."""
    res = view.results
    s = res["settings"]
    fit0 = res["fits"][0]
    paragraphs = [
        "Battash & Lindenbaum model SGD as a Lévy-driven SDE with per-parameter SαS noise "
        "(α_j, σ_j) and predict escape from a minimum by single large jumps, mostly along "
        "heavy-tailed parameters. Here, from the checkpoint at step "
        f"{res['from_step']} (train loss L* = {_f(res['loss_at_minimum'])}, treated as the "
        "minimum; it is a trained point, not a certified minimum), three arms start many paths: "
        "real SGD with the study's minibatches, the fitted Lévy SDE and a Gaussian SDE with the "
        + (
            "SGN's per-coordinate sample variance (scale sd_j/√2)"
            if s.get("gauss_scale") == "sd"
            else "same per-coordinate scale σ_j"
        )
        + ", both driven by the full train loss.",
        f"Fits at B = {fit0['batch_size']}: median α {_f(fit0['alpha_median'])}, fraction "
        f"α < 1.9 {_f(fit0['fraction_alpha_below_1_9'])}, {fit0['unfitted']} of "
        f"{fit0['coordinates']} coordinates unfitted; {res['heavy_coordinates']} coordinates "
        "with α < 2 enter the theory. Box half-width "
        f"{_f(res['box'])} ("
        + (
            f"chosen so that the theory predicts a first exit at {s['box_target']} × the horizon"
            if res["box_auto"]
            else "given"
        )
        + f"). SGN is bounded: no minibatch's |ξ_j| exceeds max_i |g_ij − G_j| (at most "
        f"{_f(res['sgn_bound_max'])}), so a single SGD step can cross the box along "
        f"{res['box_reachable_in_one_sgd_step']} of {fit0['coordinates']} coordinates, while "
        "the SαS law has unbounded support.",
        "Found: " + _findings(res),
    ]
    kramers = _kramers_text(res)
    if kramers:
        paragraphs.append(kramers)
    sf_paragraphs, sf_tables = _sharp_flat(res)
    paragraphs += sf_paragraphs
    paragraphs += _figure_prose(res, "decay" in res and "skipped_reason" not in res["decay"])
    tables = _escape_tables(res)
    direction, shares = _direction(res)
    tables.append(direction)
    tables += sf_tables
    figures = _figures(view, res, shares)
    notes = [
        "The SDE arms use independent noise per coordinate and step (the model's assumption); "
        "SGD's noise is correlated across coordinates and changes with θ. Unfitted (zero-IQR) "
        "coordinates get no SDE noise although SGD moves them.",
        "The small-noise theory ignores the drift inside the box and holds for exit "
        "probabilities per step well below 1; the box is a diagnostic width, not the basin.",
        "SGD here is plain SGD (no momentum, no weight decay) at the given lr, whatever the run's "
        "optimizer; the decay arms use the run's optimizer.",
    ]
    if "decay" in res:
        p, t, f = _decay(view, res["decay"])
        paragraphs += p
        tables += t
        figures += f
    return Section(
        "escape", title, paragraphs=paragraphs, tables=tables, figures=figures, notes=notes
    )
