"""Report section of the noise-model analysis (no torch: rendered from summary.json and the npz)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...report import Chart, Figure, Section, Table
from ...report.figures import figure, save_figure, thin_loglog
from ...report.numbers import fmt_num
from ..context import RunView

ALPHA_RANGE = (0.0, 4.0)  # displayed range of raw (unclipped) per-coordinate Mohammadi estimates


def _coordinates(row: dict[str, Any]) -> str:
    """ "all M parameters", or the budget's random subset of them."""
    m, total = row["coordinates"], row.get("model_parameters")
    if total is None or m >= total:
        return f"all {fmt_num(m)} parameters"
    return (
        f"a seeded uniform random subset of {fmt_num(m)} of the {fmt_num(total)} parameters "
        "(the study's max_memory bounds the pass's [minibatches x coordinates] noise)"
    )


def _f(v: Any, digits: int = 3) -> Any:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return round(v, digits) if math.isfinite(v) else str(v)
    return v


def _gauss_ccdf(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.special import erfc

    return erfc(x / (sigma * math.sqrt(2.0)))


# --------------------------------------------------------------------------- Simsekli


def _verdict(row: dict[str, Any]) -> str:
    sd, iqr = row["pooled_alpha_gaussian_control"], row["pooled_alpha_gaussian_control_iqr"]
    if sd < 1.9 and iqr < 1.9:
        return (
            "both Gaussian controls look heavy-tailed once pooled: pooling coordinates of "
            "heterogeneous scales manufactures heavy tails."
        )
    if sd < 1.9:
        return (
            "only the sd-matched control looks heavy-tailed once pooled; with robust scales it "
            "does not, so part of the sd spread comes from heavy-tailed coordinates."
        )
    return "here the scale mixture alone does not make the pooled sample heavy-tailed."


def _simsekli(view: RunView, res: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple:
    sim = res["simsekli"]
    rows = sim["checkpoints"]
    last = rows[-1]
    s = last["step"]
    paragraphs = [
        f"Simsekli et al. (2019): one pass over the train split in {last['batches']} disjoint "
        f"minibatches of {sim['batch_size']} at fixed parameters; noise = minibatch gradient "
        f"minus the mean of the pass's minibatch gradients, {_coordinates(last)}. The Mohammadi estimator pooled over all coordinates (row-major: blocks of "
        "adjacent coordinates, the original recipe) is compared with the same estimator per "
        "coordinate and on Gaussian coordinates with the observed per-coordinate scales.",
        f"At step {s} the pooled recipe gives α = {last['pooled_alpha']:.2f}, the median "
        f"per-coordinate estimate on the same samples is {last['per_coord_alpha_median']:.2f} "
        f"(K = {last['per_coord_samples']} samples per coordinate). Purely Gaussian coordinates "
        f"with the observed scales (q90/q10 spread {last['scale_spread_q90_over_q10']:.0f}x) "
        f"pooled the same way give α = {last['pooled_alpha_gaussian_control']:.2f} "
        f"({last['pooled_alpha_gaussian_control_iqr']:.2f} with robust IQR-based scales), and "
        f"standardising each coordinate before pooling gives "
        f"{last['pooled_alpha_standardised']:.2f}: " + _verdict(last),
    ]
    header = [
        "step",
        "P batches",
        "zero values",
        "pooled α (recipe)",
        "pooled α, non-constant",
        "pooled α, Gaussian control (sd)",
        "(IQR scales)",
        "pooled α, standardised",
        "per-coord α median [q10, q90]",
        "per-coord α, Gaussian control",
        "scale q90/q10",
    ]
    resampled = "resampled_per_coord_alpha_median" in last
    if resampled:
        header.append("per-coord α, resampled K [q10, q90]")
    body = []
    for r in rows:
        line = [
            r["step"],
            r["batches"],
            _f(r["zero_fraction"]),
            _f(r["pooled_alpha"]),
            _f(r["pooled_alpha_nonconstant"]),
            _f(r["pooled_alpha_gaussian_control"]),
            _f(r["pooled_alpha_gaussian_control_iqr"]),
            _f(r["pooled_alpha_standardised"]),
            f"{r['per_coord_alpha_median']:.2f} [{r['per_coord_alpha_q10']:.2f}, "
            f"{r['per_coord_alpha_q90']:.2f}]",
            _f(r["per_coord_alpha_gaussian_control_median"]),
            _f(r["scale_spread_q90_over_q10"], 1),
        ]
        if resampled:
            line.append(
                f"{r['resampled_per_coord_alpha_median']:.2f} "
                f"[{r['resampled_per_coord_alpha_q10']:.2f}, "
                f"{r['resampled_per_coord_alpha_q90']:.2f}] (K={r['resampled_samples']})"
            )
        body.append(line)
    table = Table(
        header,
        body,
        caption="Mohammadi tail index (raw, never clipped; 2 = Gaussian). Zero values: fraction "
        "of exact zeros in the pooled sample (constant coordinates, e.g. dead units, enter the "
        "original recipe as log(eps)). Gaussian controls: coordinate j ~ N(0, s_j^2), s_j its "
        "sample sd, or IQR_j / 1.349 (the sd where the IQR is 0), centred over the pass.",
    )
    grid = arrays[f"simsekli_ccdf_grid_{s}"]
    rms = float(arrays[f"simsekli_pooled_rms_{s}"])
    ref = _gauss_ccdf(grid, rms)
    ok = ref > 1e-7
    ccdf_title = f"Pooled values, step {s}"
    figures = []
    with figure(1, width=6.0, height=4.0) as (fig, ax_ccdf):
        ax_ccdf.loglog(grid, arrays[f"simsekli_ccdf_noise_{s}"], color="C0", label="SGN, pooled")
        ax_ccdf.loglog(
            grid,
            arrays[f"simsekli_ccdf_control_{s}"],
            color="C1",
            label="Gaussian coords, same scales",
        )
        ax_ccdf.loglog(grid[ok], ref[ok], "k--", lw=0.9, label="one Gaussian, same RMS")
        ax_ccdf.set(
            xlabel="|value| (non-constant coordinates)",
            ylabel="P(|X| >= x)",
            title=ccdf_title,
            ylim=(max(1e-7, 0.5 / (last["batches"] * last["coordinates"])), 1.5),
        )
        ax_ccdf.legend(fontsize=7)
        chart = Chart(
            ccdf_title,
            "|value| (non-constant coordinates)",
            "P(|X| ≥ x)",
            [
                ("SGN, pooled", *thin_loglog(grid, arrays[f"simsekli_ccdf_noise_{s}"], 150)),
                (
                    "Gaussian coords, same scales",
                    *thin_loglog(grid, arrays[f"simsekli_ccdf_control_{s}"], 150),
                ),
                ("one Gaussian, same RMS", *thin_loglog(grid[ok], ref[ok], 150)),
            ],
            log_y=True,
            log_x=True,
            caption="CCDF of the pooled |SGN| values against Gaussian coordinates with the "
            "same per-coordinate scales, pooled the same way, and a single Gaussian of the "
            "same RMS.",
        )
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("simsekli_ccdf")),
                "CCDF of pooled |SGN| (log-log) against Gaussian coordinates with the same "
                "per-coordinate scales and a single Gaussian with the same RMS (dashed).",
                intro="Simsekli et al. (2019) pool the noise of all coordinates into one sample "
                "and find its tail heavy (α-stable with α < 2). This plot shows why pooling "
                "needs a control: the complementary CDF P(|X| ≥ x) of the pooled |SGN| on "
                "log–log axes, against Gaussian values drawn with each "
                "coordinate's own scale and pooled the same way, and a single Gaussian of the "
                "same RMS. A single Gaussian's CCDF plunges (it bends ever more steeply down); "
                "a heavy tail decays slowly, as a straight line. If the Gaussian-coordinates "
                "control is as heavy as the SGN, the heavy pooled tail comes from mixing "
                "scales, not from heavy-tailed noise.",
                charts=[chart],
            )
        )
    with figure(2, width=4.3, height=4.0) as (fig, (ax_hist, ax_step)):
        bins = np.linspace(*ALPHA_RANGE, 61)
        for key, color, label in (
            ("alpha_coord", "C0", "SGN"),
            ("alpha_control", "C1", "Gaussian control"),
            ("alpha_resampled", "C2", "SGN, resampled K"),
        ):
            if f"simsekli_{key}_{s}" in arrays:
                a = arrays[f"simsekli_{key}_{s}"]
                ax_hist.hist(
                    np.clip(a, *ALPHA_RANGE),
                    bins=bins,
                    histtype="step",
                    color=color,
                    density=True,
                    label=f"per coord, {label}",
                )
        for value, color, label in (
            (last["pooled_alpha"], "C0", "pooled SGN"),
            (last["pooled_alpha_gaussian_control"], "C1", "pooled control"),
        ):
            ax_hist.axvline(value, color=color, ls="--", lw=1.2, label=f"{label} = {value:.2f}")
        ax_hist.axvline(2.0, color="k", lw=0.6)
        ax_hist.set(
            xlabel="α (Mohammadi; clipped to [0, 4] for display)",
            ylabel="density",
            title=f"Per-coordinate α, step {s}",
        )
        ax_hist.legend(fontsize=7)
        st = [r["step"] for r in rows]
        series = [
            ("per_coord_alpha_median", "o-", "C0", "per coord, median (one pass)"),
            ("resampled_per_coord_alpha_median", "o--", "C2", "per coord, median (K resampled)"),
            ("pooled_alpha", "s-", "C3", "pooled (recipe)"),
            ("pooled_alpha_gaussian_control", "^-", "C1", "pooled Gaussian control (sd)"),
            ("pooled_alpha_gaussian_control_iqr", "^:", "C1", "pooled Gaussian control (IQR)"),
            ("pooled_alpha_standardised", "v-", "C4", "pooled, standardised"),
        ]
        for key, style, color, label in series:
            if key in last:
                ax_step.plot(st, [r[key] for r in rows], style, color=color, label=label)
        ax_step.axhline(2.0, color="k", lw=0.6)
        ax_step.set(
            xlabel="training step",
            ylabel="tail index α (Mohammadi)",
            title="α along training",
            ylim=(0, 2.6),
        )
        ax_step.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        fig_path = save_figure(fig, view.figure_path("simsekli"))
    figures.append(
        Figure(
            fig_path,
            "Left: per-coordinate α on the same samples (noisy for few batches), with the pooled "
            "estimates (dashed). Right: α along training (medians of per-coordinate estimates; "
            "their spread is in the table).",
            intro="The tail index itself, estimated with the Mohammadi estimator Simsekli et "
            "al. (2019) use (2 for Gaussian noise, smaller for heavier tails; clipped to [0, 4] "
            "for display, the black line marks 2). Left: the estimates per coordinate, for the "
            "SGN and for the Gaussian control whose true value is 2, with the pooled "
            "estimates as dashed lines; right: the estimates along training. Heavy-tailed "
            "noise shows as per-coordinate SGN values clearly left of the control's; when the "
            "two histograms coincide while the pooled value is far below 2, the low pooled α is "
            "an artefact of pooling.",
        )
    )
    return paragraphs, [table], figures


# --------------------------------------------------------------------------- Panigrahi


def _panigrahi(view: RunView, res: dict[str, Any]) -> tuple:
    pan = res["panigrahi"]
    rows = pan["rows"]
    settings = res["settings"]
    steps = sorted({r["step"] for r in rows})
    sizes = sorted({r["batch_size"] for r in rows})
    paragraphs = [
        f"Panigrahi et al. (2019): K = {settings['sgn_samples']} SGN vectors at each "
        f"checkpoint and batch size (exact per-example gradients of the whole train split on "
        f"{res['selected_coordinates']} coordinates, stratified over parameter tensors), "
        f"{settings['test']} test per coordinate and on {settings['directions']} random "
        "directions u^T xi; a coordinate or direction is accepted as Gaussian when not "
        f"rejected after Benjamini–Hochberg (FDR {settings['level']}) or Holm (FWER) control."
    ]
    for s in (steps[0], steps[-1]) if len(steps) > 1 else steps:
        sel = [r for r in rows if r["step"] == s]
        paragraphs.append(
            f"Step {s}: coordinates accepted (BH) "
            + ", ".join(f"{r['accepted_bh']:.2f} at B={r['batch_size']}" for r in sel)
            + "; directions accepted (BH) "
            + ", ".join(f"{r['directions_accepted_bh']:.2f} at B={r['batch_size']}" for r in sel)
            + "."
        )
    table = Table(
        [
            "step",
            "B",
            "coords tested",
            "constant",
            "coords Gaussian (BH)",
            "(Holm)",
            "(no correction)",
            "directions Gaussian (BH)",
            "(Holm)",
            "pooled α, same samples",
        ],
        [
            [
                r["step"],
                r["batch_size"],
                r["coords_tested"],
                r["coords_constant"],
                _f(r["accepted_bh"]),
                _f(r["accepted_holm"]),
                _f(r["accepted_unadjusted"]),
                _f(r["directions_accepted_bh"]),
                _f(r["directions_accepted_holm"]),
                _f(r["pooled_alpha"]),
            ]
            for r in rows
        ],
        caption="Fraction accepted as Gaussian = 1 - fraction rejected. The last column pools "
        "the same SGN samples (row-major) as Simsekli et al. do.",
    )
    with figure(2, width=4.4, height=3.3) as (fig, (ax_c, ax_d)):
        for j, s in enumerate(steps):
            sel = sorted((r for r in rows if r["step"] == s), key=lambda r: r["batch_size"])
            bs = [r["batch_size"] for r in sel]
            ax_c.plot(bs, [r["accepted_bh"] for r in sel], "o-", color=f"C{j}", label=f"step {s}")
            ax_c.plot(bs, [r["accepted_holm"] for r in sel], ":", color=f"C{j}")
            ax_d.plot(
                bs,
                [r["directions_accepted_bh"] for r in sel],
                "o-",
                color=f"C{j}",
                label=f"step {s}",
            )
            ax_d.plot(bs, [r["directions_accepted_holm"] for r in sel], ":", color=f"C{j}")
        for ax, what in ((ax_c, "Coordinates"), (ax_d, "Random directions")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(b) for b in sizes])
            ax.set(
                xlabel="batch size B",
                ylabel="fraction accepted as Gaussian",
                ylim=(-0.02, 1.02),
                title=f"{what} (solid: BH, dotted: Holm)",
            )
            ax.legend(fontsize=7)
        path = save_figure(fig, view.figure_path("panigrahi"))
    fig_obj = Figure(
        path,
        "Fraction of SGN coordinates (left) and random one-dimensional projections (right) "
        "accepted as Gaussian vs batch size, one line per checkpoint.",
        intro="Panigrahi et al. (2019) test the noise for normality and find it Gaussian for "
        "batch sizes of 256 and more. Here: the share of noise coordinates (left) and of random "
        "one-dimensional projections u^T xi (right) that a normality test does not reject, "
        "against the batch size on a log axis, one line per checkpoint; solid lines after "
        "Benjamini–Hochberg control of the false discovery rate, dotted ones after Holm's "
        "stricter family-wise control. A share near 1 means Gaussian noise; lines that rise "
        "with B are the central limit theorem at work. Projections mix many coordinates, so "
        "they tend to look more Gaussian than single coordinates.",
    )
    return paragraphs, [table], [fig_obj]


# --------------------------------------------------------------------------- Battash


def _imshow(
    ax: Any,
    fig: Any,
    values: np.ndarray,
    title: str,
    label: str,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    data = values if values.ndim == 2 else values.reshape(1, -1)
    im = ax.imshow(
        np.ma.masked_invalid(data),
        aspect="auto",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    ax.set(title=title, xlabel="input index", ylabel="output index")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label=label)


def _battash(view: RunView, res: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple:
    bat = res["battash"]
    rows = bat["rows"]
    train_b = bat["map"]["batch_size"]
    steps = sorted({r["step"] for r in rows})
    at_b = [r for r in rows if r["batch_size"] == train_b] or rows
    last = at_b[-1]
    paragraphs = [
        "Battash, Wolf & Lindenbaum (2024): per coordinate, a Gaussian N(mu, s^2) and an SαS "
        "law (MLE, location 0) are fitted to the SGN samples; SαS wins where its AIC is lower "
        "(it has one more parameter, alpha; the KS distance is shown for reference). "
        "Coordinates whose SGN has a zero interquartile range (mostly one value with rare "
        "jumps, e.g. rarely active units) cannot be fitted and are counted as degenerate.",
        f"At step {last['step']} (B = {last['batch_size']}) SαS wins on "
        f"{100 * last['fraction_stable']:.0f}% of {last['fitted']} fitted coordinates "
        f"({100 * last['fraction_stable_weighted']:.0f}% weighting tensors by size), median "
        f"α = {last['alpha_median']:.2f} [q10 {last['alpha_q10']:.2f}, q90 "
        f"{last['alpha_q90']:.2f}]; {last['degenerate']} of {last['selected']} selected "
        "coordinates are degenerate.",
    ]
    tables = [
        Table(
            [
                "step",
                "B",
                "fitted",
                "degenerate",
                "SαS wins (AIC)",
                "SαS wins (KS)",
                "SαS wins, size-weighted",
                "median α [q10, q90]",
                "α < 1.9",
                "median SαS scale",
            ],
            [
                [
                    r["step"],
                    r["batch_size"],
                    r["fitted"],
                    r["degenerate"],
                    _f(r["fraction_stable"]),
                    _f(r["fraction_stable_ks"]),
                    _f(r["fraction_stable_weighted"]),
                    f"{r['alpha_median']:.2f} [{r['alpha_q10']:.2f}, {r['alpha_q90']:.2f}]",
                    _f(r["fraction_alpha_below_1_9"]),
                    f"{r['scale_median']:.3g}",
                ]
                for r in rows
            ],
            caption="Per-coordinate Gaussian vs SαS fits of SGN at fixed parameters.",
        )
    ]
    layer_rows = [
        r
        for r in bat["layers"]
        if r["step"] == last["step"] and r["batch_size"] == last["batch_size"]
    ]
    tables.append(
        Table(
            [
                "parameter",
                "selected",
                "degenerate",
                "fitted",
                "SαS wins (AIC)",
                "SαS wins (KS)",
                "median α",
                "α q10",
                "α q90",
                "median scale",
            ],
            [
                [
                    r["param"],
                    r["selected"],
                    r["degenerate"],
                    r["fitted"],
                    _f(r["fraction_stable"]),
                    _f(r["fraction_stable_ks"]),
                    _f(r["alpha_median"]),
                    _f(r["alpha_q10"]),
                    _f(r["alpha_q90"]),
                    "n/a" if r["scale_median"] is None else f"{r['scale_median']:.3g}",
                ]
                for r in layer_rows
            ],
            caption=f"By parameter tensor at step {last['step']}, B = {last['batch_size']}.",
        )
    )
    figures = []
    mp = bat["map"]
    first_s, last_s = mp["checkpoints"][0]["step"], mp["checkpoints"][-1]["step"]
    with figure(3, width=4.4, height=3.2) as (fig, (ax0, ax1, ax2)):
        _imshow(
            ax0,
            fig,
            arrays[f"battash_alpha_map_{first_s}"],
            f"α, step {first_s}",
            "α",
            "viridis",
            0.5,
            2.0,
        )
        _imshow(
            ax1,
            fig,
            arrays[f"battash_alpha_map_{last_s}"],
            f"α, step {last_s}",
            "α",
            "viridis",
            0.5,
            2.0,
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            log_scale = np.log10(arrays[f"battash_scale_map_{last_s}"])
        shown = log_scale[np.isfinite(log_scale)]
        lo, hi = np.quantile(shown, [0.02, 0.98]) if shown.size else (None, None)
        _imshow(
            ax2,
            fig,
            log_scale,
            f"SαS scale, step {last_s}",
            "log10 scale (2-98% range)",
            "magma",
            lo,
            hi,
        )
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("battash_maps")),
                f"Per-parameter SαS α and scale of every coordinate of {mp['param']} "
                f"{tuple(mp['shape'])} ({mp['method']} fits, B = {mp['batch_size']}); white: "
                "degenerate coordinates (zero IQR).",
                intro="Battash, Wolf & Lindenbaum (2024) fit a symmetric α-stable (SαS) law to "
                "the noise of every coordinate and map the result onto the weight matrix. Each "
                f"cell is one weight of {mp['param']} (rows: output units, columns: inputs): its "
                "fitted α at the first and the last checkpoint (colour scale 0.5 to 2; 2 is "
                "Gaussian, lower is heavier-tailed) and its SαS scale at the last (log10). Rows "
                "or columns of one colour show that the tail is a property of a unit or an "
                "input feature rather than of single weights; white cells could not be fitted.",
            )
        )
    sizes = sorted({r["batch_size"] for r in rows})
    with figure(3, width=4.3, height=3.3) as (fig, (ax_h, ax_l, ax_b)):
        bins = np.linspace(0.5, 2.0, 31)
        for j, s in enumerate(steps):
            key = f"battash_alpha_{s}_{last['batch_size']}"
            if key in arrays:
                ax_h.hist(
                    arrays[key],
                    bins=bins,
                    histtype="step",
                    color=f"C{j}",
                    density=True,
                    label=f"step {s}",
                )
        ax_h.set(
            xlabel="SαS α (MLE)", ylabel="density", title=f"Fitted α, B = {last['batch_size']}"
        )
        ax_h.legend(fontsize=7)
        params = list(dict.fromkeys(r["param"] for r in bat["layers"]))
        for j, name in enumerate(params):
            sel = [
                r
                for r in bat["layers"]
                if r["param"] == name
                and r["batch_size"] == last["batch_size"]
                and r["fraction_stable"] is not None
            ]
            if sel:
                ax_l.plot(
                    [r["step"] for r in sel],
                    [r["fraction_stable"] for r in sel],
                    "o-",
                    color=f"C{j % 10}",
                    label=name,
                )
        ax_l.set(
            xlabel="training step",
            ylabel="fraction SαS wins (AIC)",
            ylim=(-0.02, 1.02),
            title="SαS vs Gaussian by parameter",
        )
        ax_l.legend(fontsize=6)
        if len(sizes) > 1:
            for j, s in enumerate(steps):
                sel = sorted((r for r in rows if r["step"] == s), key=lambda r: r["batch_size"])
                ax_b.plot(
                    [r["batch_size"] for r in sel],
                    [r["fraction_stable"] for r in sel],
                    "o-",
                    color=f"C{j}",
                    label=f"step {s}",
                )
            ax_b.set_xscale("log", base=2)
            ax_b.set_xticks(sizes, [str(b) for b in sizes])
            ax_b.set(xlabel="batch size B", title="SαS vs Gaussian by batch size")
            ax_b.legend(fontsize=7)
            right = "Right: the same over all coordinates vs batch size."
        else:  # one batch size: a batch-size axis would hold one point
            sel = sorted(rows, key=lambda r: r["step"])
            ax_b.plot(
                [r["step"] for r in sel], [r["fraction_stable"] for r in sel], "o-", color="C0"
            )
            ax_b.set(xlabel="training step", title=f"All coordinates, B = {sizes[0]}")
            right = (
                "Right: the same over all coordinates along training (one batch size was "
                "measured; the battash_batch_sizes option sweeps B)."
            )
        ax_b.set(ylabel="fraction SαS wins (AIC)", ylim=(-0.02, 1.02))
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("battash")),
                "Left: distribution of fitted SαS α per checkpoint. Middle: fraction of "
                "coordinates where SαS beats the Gaussian (AIC), by parameter tensor along "
                f"training. {right}",
                intro="The claim of Battash et al. (2024) that an α-stable law describes the "
                "noise better than a Gaussian, decided coordinate by coordinate: left, the "
                "distribution of the fitted α (near 2: Gaussian-like; well below 2: heavy "
                "tails) at each checkpoint; middle, the share of coordinates where the SαS fit "
                "wins by AIC (it must beat the Gaussian by more than the cost of its extra "
                "parameter), per parameter tensor along training; right, that share over all "
                "coordinates. Above one half, SαS describes most coordinates better; the "
                "verdict applies a Wilson interval to this share.",
            )
        )
    notes: list[str] = []
    if "arms" in bat:
        p, t, f = _arms(view, bat["arms"], arrays)
        paragraphs += p
        tables += t
        figures += f
    return paragraphs, tables, figures, notes


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or y.size < width:
        return y
    return np.convolve(y, np.ones(width) / width, mode="valid")


def _arms(view: RunView, arms: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple:
    rows = arms["rows"]
    if arms.get("skipped_reason"):
        return [f"Learning-rate-decay arms not run: {arms['skipped_reason']}."], [], []
    paragraphs = [
        f"Learning-rate-decay arms: from the checkpoint at step {arms['from_step']} each arm "
        f"trains {arms['steps']} more steps (lr {arms['base_lr']}, B {arms['base_batch_size']}, "
        f"decay factor {arms['decay']}): constant; lr-decay (lr / {arms['decay']}); "
        f"batch-increase (B x {arms['decay']}, same lr); lr-decay-small-batch (lr and B both "
        f"/ {arms['decay']}, same lr/B). At each arm's end the SGN its optimizer sees (its own "
        "B) is measured; a jump is a per-step noise |lr xi_j| above the 99th percentile of "
        "the branch point's |lr xi_j| (frequency 0.01 if nothing changed). Battash et al. "
        "argue that the benefit of lr decay comes from the reduced noise, so batch-increase "
        "should behave like lr-decay."
    ]
    if arms["skipped"]:
        paragraphs.append(
            f"Arms skipped (batch not smaller than the train split): {arms['skipped']}."
        )
    table = Table(
        [
            "arm",
            "lr",
            "B",
            "train loss",
            "test acc",
            "median α",
            "SαS wins",
            "median step-noise scale lr·σ",
            "median Lévy amplitude lr^((α-1)/α)·σ",
            "jump frequency",
            "median jump size",
        ],
        [
            [
                r["arm"],
                _f(r["lr"], 4),
                r["batch_size"],
                _f(r["train_loss"], 4),
                _f(r["test_acc"]),
                _f(r["alpha_median"]),
                _f(r["fraction_stable"]),
                f"{r['step_noise_scale_median']:.3g}",
                f"{r['levy_amplitude_median']:.3g}",
                _f(r["jump_frequency"], 4),
                _f(r["jump_size"]),
            ]
            for r in rows
        ],
        caption="Noise model at the end of each arm; train loss and accuracy on the whole "
        "train split.",
    )
    with figure(3, width=4.2, height=3.2) as (fig, (ax_loss, ax_jump, ax_scale)):
        for j, r in enumerate(rows):
            losses = arrays[f"arm_loss_{r['arm']}"]
            width = max(1, losses.size // 20)
            sm = _smooth(losses, width)
            ax_loss.plot(np.arange(sm.size) + width, sm, color=f"C{j}", label=r["arm"])
        ax_loss.set(
            xlabel="steps after the branch point",
            ylabel="minibatch loss (running mean)",
            title=f"Arms from step {arms['from_step']}",
        )
        ax_loss.legend(fontsize=7)
        labels = [r["arm"].replace("-", "-\n") for r in rows]
        colors = [f"C{j}" for j in range(len(rows))]
        ax_jump.bar(labels, [r["jump_frequency"] for r in rows], color=colors)
        ax_jump.axhline(0.01, color="k", ls="--", lw=0.8, label="branch point (0.01)")
        ax_jump.set(ylabel="jump frequency", title="Jumps of lr·xi above branch q99")
        ax_jump.legend(fontsize=7)
        ax_scale.bar(labels, [r["step_noise_scale_median"] for r in rows], color=colors)
        ax_scale.set(ylabel="median lr·σ (SαS scale of step noise)", title="Step-noise scale")
        for ax in (ax_jump, ax_scale):
            ax.tick_params(axis="x", labelsize=7)
        path = save_figure(fig, view.figure_path("arms"))
    return (
        paragraphs,
        [table],
        [
            Figure(
                path,
                "Left: minibatch loss along each arm. Middle: frequency of large per-step noise "
                "values relative to the branch point. Right: median SαS scale of the per-step "
                "noise lr·xi.",
                intro="Battash et al. (2024) argue that learning-rate decay helps because it "
                "reduces the noise of each step, lr·xi, not because of the smaller step itself. "
                "The arms test that from one checkpoint: left, the training loss of each arm "
                "(constant, lr-decay, batch-increase, lr-decay-small-batch); middle, how often "
                "a step's noise exceeds the 99th percentile of the branch point's (the dashed "
                "line at 0.01 is no change); right, the typical size of the step noise. If the "
                "argument holds, batch-increase lowers the noise as lr-decay does, and the two "
                "losses follow each other.",
            )
        ],
    )


def render_section(view: RunView, title: str) -> Section:
    """The report section of the noise-model analysis."""
    res = view.results
    arrays = view.arrays()
    paragraphs: list[str] = []
    tables: list[Table] = []
    figures: list[Figure] = []
    notes = [
        "All SGN here is sampled at fixed parameters (checkpoints): minibatch gradient minus the "
        "full gradient at the same parameters, xi = g_B - G.",
        f"Step noise and the optimizer: {view.optimizer.step_noise}",
    ]
    if "simsekli" in res:
        notes.append(
            "The Mohammadi estimator assumes i.i.d. SαS samples and is reported raw (it can "
            "exceed 2 or be negative on short or light-tailed samples); per-coordinate values "
            "from one data pass rest on few samples and are noisy (compare the Gaussian "
            "control's per-coordinate median, whose truth is 2)."
        )
    if "panigrahi" in res:
        notes.append(
            "Normality tests reject tiny deviations at large K; acceptance fractions depend on K "
            f"(= {res['settings']['sgn_samples']}) and the correction. With B close to the "
            "train split size the minibatches overlap heavily (finite-population sampling)."
        )
    if res.get("skipped_batch_sizes"):
        notes.append(
            f"Batch sizes not smaller than the train split ({res['train_examples']}) were skipped: "
            f"{res['skipped_batch_sizes']}."
        )
    if "simsekli" in res:
        p, t, f = _simsekli(view, res, arrays)
        paragraphs += p
        tables += t
        figures += f
    if "panigrahi" in res and res["panigrahi"]["rows"]:
        p, t, f = _panigrahi(view, res)
        paragraphs += p
        tables += t
        figures += f
    if "battash" in res and res["battash"]["rows"]:
        p, t, f, n = _battash(view, res, arrays)
        paragraphs += p
        tables += t
        figures += f
        notes += n
    return Section(
        "noise_model", title, paragraphs=paragraphs, tables=tables, figures=figures, notes=notes
    )
