"""Gradient norms and value distributions: minibatch, per-sample, full gradient and SGN.

At each checkpoint (fixed parameters) it measures, over all P parameters: the per-sample gradient
norms of the probe examples, the full-gradient norm ||G||, and the norms of K minibatch gradients
and of their noise ``xi = g_B - G``. Value distributions use the tracked
coordinates of the gradient store.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...report import Chart, Figure, Section, Table
from ...report.figures import ccdf, figure, save_figure, thin, thin_loglog
from ..context import RunView, StudyContext
from ..registry import Analysis


def compute(ctx: StudyContext) -> dict[str, Any]:
    import torch

    from ...capture import full_grad, iter_minibatch_grads, iter_per_sample_grads

    cfg = ctx.config
    x, y = ctx.train_tensors
    probe = torch.as_tensor(ctx.probe_index)
    rows, arrays = [], {}
    for step in ctx.progress.track(sorted(ctx.checkpoints), "gradient norms at checkpoints"):
        model = ctx.load_model(step)
        # streamed: only norms are kept, so memory holds one chunk of [examples, P], never
        # [per_sample_examples, P] or [noise_batches, P]
        ps_parts = []
        for _, g in iter_per_sample_grads(
            model,
            ctx.loss_fn,
            x[probe].to(ctx.device),
            y[probe].to(ctx.device),
            **ctx.per_sample_memory(64),
            dropout=ctx.dropout,
        ):
            ps_parts.append(torch.linalg.vector_norm(g, dim=1))
        ps_norm = torch.cat(ps_parts).cpu().numpy()
        full = full_grad(
            model, ctx.loss_fn, (x, y), batch_size=512, dropout=ctx.dropout, **ctx.memory()
        )
        mb_parts, sgn_parts = [], []
        for _, g in iter_minibatch_grads(
            model,
            ctx.loss_fn,
            (x, y),
            batch_size=cfg.batch_size,
            num_batches=cfg.noise_batches,
            seed=ctx.seed_for(f"gradients-{step}"),
            dropout=ctx.dropout,
            **ctx.memory(),
        ):
            mb_parts.append(torch.linalg.vector_norm(g))
            sgn_parts.append(torch.linalg.vector_norm(g - full))
        mb_norm = torch.stack(mb_parts).cpu().numpy()
        sgn_norm = torch.stack(sgn_parts).cpu().numpy()
        full_norm = float(torch.linalg.vector_norm(full))
        arrays[f"per_sample_norm_{step}"] = ps_norm
        arrays[f"minibatch_norm_{step}"] = mb_norm
        arrays[f"sgn_norm_{step}"] = sgn_norm
        rows.append(
            {
                "step": step,
                "full_grad_norm": full_norm,
                "minibatch_grad_norm_mean": float(mb_norm.mean()),
                "sgn_norm_mean": float(sgn_norm.mean()),
                "sgn_to_full_ratio": float(sgn_norm.mean() / full_norm) if full_norm > 0 else None,
                "per_sample_norm_median": float(np.median(ps_norm)),
                "per_sample_norm_p99": float(np.quantile(ps_norm, 0.99)),
                "per_sample_norm_max_over_median": float(ps_norm.max() / np.median(ps_norm)),
            }
        )
    ctx.save_arrays("gradients", **arrays)
    return {
        "checkpoints": rows,
        "per_sample_examples": int(probe.numel()),
        "noise_batches": cfg.noise_batches,
        "batch_size": cfg.batch_size,
    }


def render(view: RunView) -> Section:
    res, arrays, run = view.results, view.arrays(), view.run
    steps = [r["step"] for r in res["checkpoints"]]
    colors = {s: f"C{k}" for k, s in enumerate(steps)}
    figures = []

    norm_chart = Chart(
        "Gradient norm along training",
        "step",
        "gradient norm",
        [
            ("minibatch ||g_B||", run.steps, run.scalars["grad_norm"]),
            ("full ||G|| (checkpoints)", steps, [r["full_grad_norm"] for r in res["checkpoints"]]),
            ("mean SGN ||g_B - G||", steps, [r["sgn_norm_mean"] for r in res["checkpoints"]]),
        ],
        log_y=True,
        points=("full ||G|| (checkpoints)", "mean SGN ||g_B - G||"),
        caption="Line: the norm of each training step's minibatch gradient; markers: at each "
        "checkpoint, the full-batch gradient norm and the mean norm of the noise g_B - G.",
    )
    with figure(1, width=6.0) as (fig, ax_norm):
        ax_norm.plot(
            run.steps, run.scalars["grad_norm"], lw=0.7, color="C0", label="minibatch ||g_B||"
        )
        ax_norm.plot(
            steps,
            [r["full_grad_norm"] for r in res["checkpoints"]],
            "s",
            color="C3",
            label="full ||G|| (checkpoints)",
        )
        ax_norm.plot(
            steps,
            [r["sgn_norm_mean"] for r in res["checkpoints"]],
            "^",
            color="C2",
            label="mean SGN ||g_B - G||",
        )
        ax_norm.set(
            xlabel="step",
            ylabel="gradient norm",
            yscale="log",
            title="Gradient norm along training",
        )
        ax_norm.legend()
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("norms")),
                "Gradient norms along training (log scale): every minibatch gradient (line), "
                "the full-batch gradient and the mean SGN norm at each checkpoint (markers).",
                intro="How large the gradient noise is against the gradient itself. Where the "
                "mean SGN norm ||g_B - G|| lies above the full-gradient norm ||G||, a minibatch "
                "step points mostly along noise rather than downhill; as training nears a minimum "
                "||G|| shrinks, so the noise comes to dominate. The minibatch norm along every step "
                "shows how this evolves between checkpoints (log scale: equal ratios are equal "
                "distances).",
                charts=[norm_chart],
            )
        )

    with figure(1, width=6.0) as (fig, ax_hist):
        all_norms = np.concatenate([arrays[f"per_sample_norm_{s}"] for s in steps])
        positive = all_norms[all_norms > 0]
        bins = np.geomspace(positive.min(), positive.max(), 40) if positive.size else 10
        for s in steps:
            ax_hist.hist(
                arrays[f"per_sample_norm_{s}"],
                bins=bins,
                histtype="step",
                color=colors[s],
                label=f"step {s}",
            )
        ax_hist.set(
            xscale="log",
            yscale="log",
            xlabel="per-sample gradient norm ||g_i||",
            ylabel="examples",
            title=f"Per-sample gradient norms ({res['per_sample_examples']} examples)",
        )
        ax_hist.legend()
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("per_sample_norms")),
                "Distribution of per-sample gradient norms at each checkpoint (log-log, "
                "logarithmic bins).",
                intro=f"Whether a few examples carry most of the gradient: the histogram of "
                f"the gradient norms ||g_i|| of {res['per_sample_examples']} single examples at "
                "each checkpoint, on logarithmic bins and log-log axes. A narrow hump means "
                "every example pulls about equally; a long right tail (see max/median in the "
                "table) means a few hard or mislabelled examples dominate the minibatch "
                "gradient, one source of heavy-tailed noise.",
            )
        )

    def ccdf_series(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return thin_loglog(*ccdf(np.abs(values)), 150)

    value_series = [("minibatch, all steps", *ccdf_series(run.grads))]
    for s, values in sorted(run.per_sample.items()):
        value_series.append((f"per-sample, step {s}", *ccdf_series(values)))
    sgn_series = [(f"step {s}", *ccdf_series(v)) for s, v in sorted(run.noise.items())]
    value_charts = [
        Chart(
            "Gradient values",
            "|g| (tracked coordinates)",
            "P(|g| ≥ x)",
            value_series,
            log_y=True,
            log_x=True,
            caption=f"Minibatch gradients of all {run.length} recorded steps, and per-sample "
            "gradients at each checkpoint, over the tracked coordinates.",
        ),
        Chart(
            "SGN values",
            "|g_B - G| (tracked coordinates)",
            "P(|xi| ≥ x)",
            sgn_series,
            log_y=True,
            log_x=True,
            caption="The noise of minibatch gradients at the fixed parameters of each "
            "checkpoint, over the tracked coordinates.",
        ),
    ]
    with figure(2) as (fig, (ax_mb, ax_sgn)):
        x, p = thin(*ccdf(np.abs(run.grads)))
        ax_mb.loglog(x, p, color="0.3", label=f"minibatch, all {run.length} steps")
        for s, values in sorted(run.per_sample.items()):
            x, p = thin(*ccdf(np.abs(values)))
            ax_mb.loglog(x, p, color=colors.get(s, "C9"), ls="--", label=f"per-sample, step {s}")
        ax_mb.set(xlabel="|g| (tracked coordinates)", ylabel="P(|g| >= x)", title="Gradient values")
        ax_mb.legend()
        for s, values in sorted(run.noise.items()):
            x, p = thin(*ccdf(np.abs(values)))
            ax_sgn.loglog(x, p, color=colors.get(s, "C9"), label=f"step {s}")
        ax_sgn.set(
            xlabel="|g_B - G| (tracked coordinates)", ylabel="P(|xi| >= x)", title="SGN values"
        )
        ax_sgn.legend()
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("values")),
                "Complementary CDFs of absolute gradient values on log-log axes; a power-law "
                "tail is a straight line. The tail tests quantify this.",
                intro="A first look at the tails the next sections test: the complementary CDF "
                "P(X ≥ x) of the absolute values of the tracked gradient coordinates, pooled, "
                "for minibatch and per-sample gradients and for the noise g_B - G. On log–log "
                "axes a power-law tail is a straight line and a Gaussian or exponential tail "
                "falls off ever faster (bends down). Pooling coordinates of different scales "
                "alone makes a tail look heavier, so this is a preview, not a test.",
                charts=value_charts,
            )
        )

    table = Table(
        [
            "step",
            "||G||",
            "mean ||g_B||",
            "mean ||g_B - G||",
            "SGN / ||G||",
            "median ||g_i||",
            "p99 ||g_i||",
            "max/median ||g_i||",
        ],
        [
            [
                r["step"],
                r["full_grad_norm"],
                r["minibatch_grad_norm_mean"],
                r["sgn_norm_mean"],
                r["sgn_to_full_ratio"] if r["sgn_to_full_ratio"] is not None else "n/a",
                r["per_sample_norm_median"],
                r["per_sample_norm_p99"],
                r["per_sample_norm_max_over_median"],
            ]
            for r in res["checkpoints"]
        ],
        caption=f"At fixed parameters of each checkpoint, over all parameters; minibatches of "
        f"{res['batch_size']} ({res['noise_batches']} draws).",
    )
    return Section(
        "gradients",
        "Gradient norms and distributions",
        paragraphs=[
            "How large the gradient noise is against the gradient itself: where the SGN norm "
            "exceeds the full-gradient norm, a minibatch step is dominated by noise. The "
            "per-sample norms show whether a few examples carry most of the gradient, and the "
            "value distributions preview the tail tests of the next section."
        ],
        tables=[table],
        figures=figures,
    )


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Norms at the last checkpoint for a comparison table."""
    last = results["checkpoints"][-1]
    return {
        "||G|| (last checkpoint)": last["full_grad_norm"],
        "SGN / ||G|| (last checkpoint)": last["sgn_to_full_ratio"],
        "max/median ||g_i|| (last checkpoint)": last["per_sample_norm_max_over_median"],
    }


ANALYSIS = Analysis(
    "gradients",
    "Gradient norms and distributions",
    compute,
    render,
    description="per-sample, minibatch, full-gradient and SGN norms; value CCDFs",
    headline=headline,
)
