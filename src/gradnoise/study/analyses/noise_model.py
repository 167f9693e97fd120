"""Noise model: Gaussian or alpha-stable? Three studies of SGN at fixed parameters.

* **Simsekli** (Simsekli, Sagun & Gurbuzbalaban, ICML 2019; methods.md §4b): one pass over the
  train split in disjoint minibatches of ``pass_batch_size``, noise = minibatch gradient minus
  the mean of the pass's minibatch gradients (all parameters); the Mohammadi tail index pooled
  over all coordinates row-major (the original recipe) vs per coordinate, and the same
  estimator on Gaussian coordinates with the observed per-coordinate scales (methods.md §8).
* **Panigrahi** (Panigrahi et al. 2019; methods.md §4a): fraction of coordinates and of random
  directions accepted as Gaussian (normality ``test``, BH and Holm at ``level``) vs batch size
  and training stage.
* **Battash** (Battash, Wolf & Lindenbaum, AISTATS 2024; methods.md §3): per-coordinate SαS fits
  (alpha, scale), where SαS beats the Gaussian (AIC) by layer and over training, a full alpha /
  scale map of one weight matrix, and learning-rate-decay arms trained from a checkpoint.

SGN for Panigrahi and Battash is drawn from the exact per-example gradients of the whole train
split on a stratified coordinate subset: xi_k = (1/B) sum_{i in B_k} (g_i - G), each minibatch
without replacement, minibatches independent (regime 1 of methods.md §0).

Options (``[options.noise_model]``): ``mode`` = ``"default"`` (cheap, for ``gradnoise run``) or
``"full"`` (paper-sized, for the presets) sets the defaults of the size options below; any of
them may be given explicitly:
``studies`` (subset of simsekli, panigrahi, battash), ``sgn_samples`` K, ``coords`` (selected
coordinates), ``batch_sizes`` (Panigrahi sweep), ``directions``, ``test`` (a
:func:`gradnoise.stats.normality_test` method), ``level``, ``fit_coords`` (coordinates fitted by
SαS MLE), ``battash_batch_sizes``, ``map_param``, ``map_method``, ``pass_batch_size``,
``resampled`` (Simsekli per-coordinate alpha also on K resampled minibatches), ``arms``,
``arm_from``, ``arm_steps``, ``decay``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from ...report import Section
from ...report.numbers import fmt_num
from ..claims import (
    CONTRADICTS,
    INCONCLUSIVE,
    SUPPORTS,
    Claim,
    fraction_rule,
    fraction_verdict,
)
from ..context import RunView, StudyContext
from ..options import boolean, check_keys, choice, int_list, integer, number, sequence
from ..registry import Analysis

NAME = "noise_model"
TITLE = "Noise model: Gaussian or alpha-stable?"
STUDIES = ("simsekli", "panigrahi", "battash")
ARMS = ("constant", "lr-decay", "batch-increase", "lr-decay-small-batch")
TESTS = ("shapiro", "dagostino", "anderson", "jarque_bera", "lilliefors")

MODES: dict[str, dict[str, Any]] = {
    "default": {
        "sgn_samples": 256,
        "coords": 1200,
        "batch_sizes": [32, 128, 512],
        "directions": 100,
        "fit_coords": 300,
        "battash_batch_sizes": None,  # the study's batch size
        "map_method": "mcculloch",
        "resampled": False,
        "arms": ["constant", "lr-decay", "batch-increase"],
    },
    "full": {
        "sgn_samples": 1000,
        "coords": 3000,
        "batch_sizes": [32, 64, 128, 256, 512, 1024],
        "directions": 200,
        "fit_coords": 1200,
        "battash_batch_sizes": [32, 128, 512],
        "map_method": "mle",
        "resampled": True,
        "arms": list(ARMS),
    },
}
COMMON: dict[str, Any] = {
    "studies": list(STUDIES),
    "test": "shapiro",
    "level": 0.05,
    "pass_batch_size": None,  # the study's batch size (Simsekli: eval batch = training batch)
    "map_param": None,  # the last 2-D weight matrix
    "arms": None,
    "arm_from": None,  # the middle checkpoint
    "arm_steps": None,  # steps // 4
    "decay": 4,
}


WHERE = f"[options.{NAME}]"


def resolve_options(raw: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Options with the defaults of their ``mode`` filled in, validated (clear errors)."""
    raw = dict(raw)
    mode = choice(WHERE, "mode", raw.pop("mode", "default"), tuple(MODES))
    opts = {**COMMON, **MODES[mode]}
    check_keys(WHERE, raw, [*opts, "mode"])
    opts.update(raw)
    opts["mode"] = mode
    studies = sequence(WHERE, "studies", opts["studies"])
    studies = [choice(WHERE, f"studies[{i}]", v, STUDIES) for i, v in enumerate(studies)]
    opts["studies"] = [s for s in STUDIES if s in studies]
    if not opts["studies"]:
        raise ConfigError(f"{WHERE} studies must name at least one of {', '.join(STUDIES)}")
    choice(WHERE, "test", opts["test"], TESTS)
    for key in ("sgn_samples", "coords", "directions", "fit_coords", "decay"):
        opts[key] = integer(WHERE, key, opts[key], 1)
    # normality tests need >= 20 samples; Shapiro-Wilk's p-value is unreliable above 5000
    opts["sgn_samples"] = integer(WHERE, "sgn_samples", opts["sgn_samples"], 20, 5000)
    opts["level"] = number(WHERE, "level", opts["level"], 0, 1, low_open=True, high_open=True)
    for key in ("pass_batch_size", "arm_steps", "arm_from"):
        if opts[key] is not None:
            opts[key] = integer(WHERE, key, opts[key], 0 if key == "arm_from" else 1)
    opts["pass_batch_size"] = opts["pass_batch_size"] or config.batch_size
    battash = opts["battash_batch_sizes"]
    battash = int_list(WHERE, "battash_batch_sizes", battash, 1) if battash is not None else []
    opts["battash_batch_sizes"] = battash or [config.batch_size]
    opts["batch_sizes"] = sorted(set(int_list(WHERE, "batch_sizes", opts["batch_sizes"], 1)))
    arms = sequence(WHERE, "arms", opts["arms"]) if opts["arms"] is not None else []
    opts["arms"] = [choice(WHERE, f"arms[{i}]", a, ARMS) for i, a in enumerate(arms)]
    opts["map_method"] = choice(WHERE, "map_method", opts["map_method"], ("mcculloch", "cf", "mle"))
    opts["resampled"] = boolean(WHERE, "resampled", opts["resampled"])
    if opts["map_param"] is not None and not isinstance(opts["map_param"], str):
        raise ConfigError(f"{WHERE} map_param must be a parameter name, got {opts['map_param']!r}")
    steps = config.checkpoint_steps()
    if opts["arm_from"] is None:
        opts["arm_from"] = steps[(len(steps) - 1) // 2] if len(steps) > 1 else steps[0]
    if opts["arm_from"] not in steps:
        raise ConfigError(
            f"{WHERE} arm_from must be a checkpoint step ({steps}), got {opts['arm_from']}"
        )
    opts["arm_steps"] = opts["arm_steps"] or max(1, config.steps // 4)
    return opts


def _arm_settings(arm: str, lr: float, batch: int, decay: int) -> tuple[float, int]:
    return {
        "constant": (lr, batch),
        "lr-decay": (lr / decay, batch),
        "batch-increase": (lr, batch * decay),
        "lr-decay-small-batch": (lr / decay, max(1, batch // decay)),
    }[arm]


def _map_param(opts: Mapping[str, Any], model: Any) -> str | None:
    """The weight matrix of Battash's alpha/scale map (None when Battash is not run)."""
    if "battash" not in opts["studies"]:
        return None
    params = dict(model.named_parameters())
    if opts["map_param"] is None:
        two_d = [name for name, p in params.items() if p.ndim == 2]
        if not two_d:
            raise ConfigError(
                "the model has no 2-D parameter for Battash's alpha map; set "
                f"{WHERE} studies without 'battash'"
            )
        return two_d[-1]
    if opts["map_param"] not in params:
        raise ConfigError(
            f"{WHERE} map_param {opts['map_param']!r} is not a parameter of the model; "
            f"parameters: {', '.join(params)}"
        )
    return str(opts["map_param"])


def check(ctx: StudyContext, model: Any) -> None:
    """Before training: the map parameter exists in the model."""
    _map_param(ctx.options(NAME), model)


#: bytes per entry of the [P, M] data-pass noise while Simsekli's statistics run (the float32
#: noise, one float64 control and the estimator's float64 temporaries)
SIMSEKLI_BYTES_PER_ENTRY = 40
#: without ``max_memory``, the parameter map is fitted in column blocks of about this many bytes
#: (the maps do not depend on the block width; see ``_noise_stats.map_from_per_sample``)
MAP_BYTES = 512 * 2**20


def _map_bytes(max_memory: int | None, held: Any) -> int:
    """The map's column blocks: what ``max_memory`` leaves beside the per-example gradients and
    mean the map reads (``held``), at least a quarter of it (the map does not depend on the
    block width); ``MAP_BYTES`` without a budget."""
    if max_memory is None:
        return MAP_BYTES
    return max(max_memory - sum(int(a.nbytes) for a in held), max_memory // 4)


def _simsekli_coords(ctx: StudyContext, model: Any, batches: int) -> Any:
    """Under the study's ``max_memory`` the data-pass noise ``[P, M]`` (P minibatches of one
    pass) keeps at most ``max_memory // (2 * 40 * P)`` coordinates, a seeded uniform subset of
    all of them (the pooled estimator then pools a random subset of the coordinates); None (all)
    otherwise or when they fit."""
    budget = ctx.config.max_memory
    total = sum(int(p.numel()) for p in model.parameters() if p.requires_grad)
    if budget is None or batches < 1:
        return None
    keep = budget // (2 * SIMSEKLI_BYTES_PER_ENTRY * batches)
    if keep >= total:
        return None
    from ...capture import select_params

    return select_params(model, coords=max(int(keep), 1), seed=ctx.seed_for(f"{NAME}-simsekli"))


def compute(ctx: StudyContext) -> dict[str, Any]:
    import numpy as np

    from . import _noise_stats as ns
    from . import _noise_torch as nt

    cfg = ctx.config
    opts = ctx.options(NAME)
    studies = opts["studies"]
    loss_fn = ctx.loss_fn
    x, y = (t.to(ctx.device) for t in ctx.train_tensors)
    n = int(x.shape[0])
    k = opts["sgn_samples"]
    steps = sorted(ctx.checkpoints)
    model0 = ctx.load_model(steps[0])
    selection = nt.stratified_selection(model0, opts["coords"], ctx.rng(f"{NAME}-coords"))
    names = list(selection.names)
    numels = [selection.numel(i) for i in range(len(names))]
    groups = selection.layer_of_columns()
    arrays: dict[str, Any] = {}
    out: dict[str, Any] = {
        "studies": studies,
        "settings": {
            key: opts[key]
            for key in (
                "mode",
                "sgn_samples",
                "test",
                "level",
                "pass_batch_size",
                "batch_sizes",
                "battash_batch_sizes",
                "directions",
                "fit_coords",
                "map_method",
            )
        },
        "train_examples": n,
        "selected_coordinates": selection.num_columns,
        "selected_params": names,
    }

    def batches(step: int | str, b: int) -> np.ndarray:
        return ns.draw_minibatches(ctx.rng(f"{NAME}-batches-{step}-{b}"), n, b, k)

    # the map of one weight matrix (Battash): the last 2-D parameter by default
    map_name = _map_param(opts, model0)
    if map_name is not None:
        map_shape = tuple(dict(model0.named_parameters())[map_name].shape)
        map_sel = type(selection)((map_name,), (map_shape,), (None,))

    skipped = sorted({b for b in [*opts["batch_sizes"], *opts["battash_batch_sizes"]] if b >= n})
    sim_rows, pan_rows, bat_rows, bat_layers, map_rows = [], [], [], [], []
    branch: dict[str, Any] = {}
    for step in ctx.progress.track(steps, "noise model at checkpoints"):
        model = ctx.load_model(step)
        need_gamma = bool({"panigrahi", "battash"} & set(studies)) or opts["resampled"]
        gamma = (
            nt.per_sample_and_mean(
                model, loss_fn, x, y, selection, ctx.dropout, **ctx.per_sample_memory(256)
            )
            if need_gamma
            else None
        )
        xi_cache: dict[int, np.ndarray] = {}

        def xi_at(b: int, gamma: Any = gamma, step: int = step, cache: Any = xi_cache) -> Any:
            if b not in cache:
                cache[b] = ns.sgn_from_per_sample(gamma[0], gamma[1], batches(step, b))
            return cache[b]

        if "simsekli" in studies:
            noise = nt.data_pass_noise(
                model,
                loss_fn,
                x,
                y,
                opts["pass_batch_size"],
                ctx.dropout,
                params=_simsekli_coords(ctx, model, n // opts["pass_batch_size"]),
                **ctx.memory(),
            )
            resampled = xi_at(opts["pass_batch_size"]) if opts["resampled"] else None
            row, arr = ns.simsekli_stats(
                noise, rng=ctx.rng(f"{NAME}-simsekli-control-{step}"), resampled=resampled
            )
            del noise
            row["model_parameters"] = sum(int(p.numel()) for p in model.parameters())
            sim_rows.append({"step": step, **row})
            arrays.update({f"simsekli_{key}_{step}": v for key, v in arr.items()})
        if "panigrahi" in studies:
            for b in opts["batch_sizes"]:
                if b >= n:  # B = N: every minibatch is the whole split, no noise
                    continue
                row = ns.panigrahi_stats(
                    xi_at(b),
                    test=opts["test"],
                    directions=opts["directions"],
                    level=opts["level"],
                    rng=ctx.rng(f"{NAME}-directions-{step}-{b}"),
                )
                pan_rows.append({"step": step, "batch_size": b, **row})
        if "battash" in studies:
            for b in opts["battash_batch_sizes"]:
                if b >= n:
                    continue
                summ, layers, arr = ns.battash_stats(
                    xi_at(b),
                    groups=groups,
                    names=names,
                    numels=numels,
                    fit_coords=opts["fit_coords"],
                    rng=ctx.rng(f"{NAME}-fit-{step}-{b}"),
                )
                bat_rows.append({"step": step, "batch_size": b, **summ})
                bat_layers += [{"step": step, "batch_size": b, **r} for r in layers]
                arrays.update({f"battash_{key}_{step}_{b}": v for key, v in arr.items()})
            gamma_map = nt.per_sample_and_mean(
                model, loss_fn, x, y, map_sel, ctx.dropout, **ctx.per_sample_memory(256)
            )
            a_map, s_map, n_deg = ns.map_from_per_sample(
                gamma_map[0],
                gamma_map[1],
                batches(f"map-{step}", cfg.batch_size),
                map_shape,
                method=opts["map_method"],
                max_bytes=_map_bytes(cfg.max_memory, gamma_map),
            )
            del gamma_map
            arrays[f"battash_alpha_map_{step}"] = a_map.astype(np.float32)
            arrays[f"battash_scale_map_{step}"] = s_map.astype(np.float32)
            finite = np.isfinite(a_map)
            map_rows.append(
                {
                    "step": step,
                    "degenerate": n_deg,
                    "alpha_median": float(np.median(a_map[finite])) if finite.any() else None,
                    "fraction_alpha_below_1_9": float(np.mean(a_map[finite] < 1.9))
                    if finite.any()
                    else None,
                }
            )
            if step == opts["arm_from"] and opts["arms"]:
                branch = {"step": step, "xi": xi_at(cfg.batch_size)}
        del gamma, xi_cache
    out["skipped_batch_sizes"] = skipped
    if "simsekli" in studies:
        out["simsekli"] = {"batch_size": opts["pass_batch_size"], "checkpoints": sim_rows}
    if "panigrahi" in studies:
        out["panigrahi"] = {"rows": pan_rows}
    if "battash" in studies:
        out["battash"] = {
            "rows": bat_rows,
            "layers": bat_layers,
            "map": {
                "param": map_name,
                "shape": list(map_shape),
                "method": opts["map_method"],
                "batch_size": cfg.batch_size,
                "checkpoints": map_rows,
            },
        }
        if branch:
            out["battash"]["arms"] = _arms(ctx, opts, selection, branch, arrays, (x, y))
    ctx.save_arrays(NAME, **arrays)
    return out


def _arms(
    ctx: StudyContext,
    opts: dict[str, Any],
    selection: Any,
    branch: dict[str, Any],
    arrays: dict[str, Any],
    train: tuple[Any, Any],
) -> dict[str, Any]:
    """Learning-rate-decay arms (Battash et al.; methods.md §3(b)4): from checkpoint
    ``arm_from``, train ``arm_steps`` steps with (constant) lr, B; (lr-decay) lr/gamma, B;
    (batch-increase) lr, gamma B; (lr-decay-small-batch) lr/gamma, B/gamma; then measure the
    SGN each arm's optimizer sees (its own batch size) at its end point. Each arm trains with a
    fresh optimizer of the run's class and hyper-parameters (its state, e.g. Adam's moments,
    starts empty: checkpoints hold the model only), from the lr in effect at the branch point."""
    import numpy as np

    from .._torch import evaluate
    from . import _noise_stats as ns
    from . import _noise_torch as nt

    cfg = ctx.config
    spec = ctx.optimizer_spec
    x, y = train
    n = int(x.shape[0])
    test = ctx.test_tensors
    xt, yt = (t.to(ctx.device) for t in test) if test is not None else (None, None)
    groups = selection.layer_of_columns()
    names = list(selection.names)
    numels = [selection.numel(i) for i in range(len(names))]
    base_lr = ctx.lr_at(branch["step"])
    out: dict[str, Any] = {
        "from_step": branch["step"],
        "steps": opts["arm_steps"],
        "decay": opts["decay"],
        "base_lr": base_lr,
        "base_batch_size": cfg.batch_size,
        "rows": [],
        "skipped": [],
    }
    reason = None
    if base_lr is None:
        reason = "the learning rate is unknown (record lr= at each step, or give the optimizer)"
    elif spec.name is None or not (spec.module or "").startswith("torch.optim"):
        reason = f"the optimizer {spec.name or '(not given)'} cannot be rebuilt for the arms"
    if reason is not None:
        out["skipped"], out["skipped_reason"] = list(opts["arms"]), reason
        return out
    base_step_noise = base_lr * branch["xi"]
    rows, skipped = out["rows"], out["skipped"]
    for arm in ctx.progress.track(opts["arms"], "learning-rate-decay arms"):
        lr, b = _arm_settings(arm, base_lr, cfg.batch_size, opts["decay"])
        if b >= n:
            skipped.append(arm)
            continue
        model = ctx.load_model(branch["step"])
        losses = nt.train_arm(
            model,
            ctx.loss_fn,
            x,
            y,
            optimizer=spec.build(model.parameters(), lr=lr),
            batch_size=b,
            steps=opts["arm_steps"],
            rng=ctx.rng(f"{NAME}-arm-order-{arm}"),
        )
        arrays[f"arm_loss_{arm}"] = losses.astype(np.float32)
        gamma = nt.per_sample_and_mean(
            model, ctx.loss_fn, x, y, selection, ctx.dropout, **ctx.per_sample_memory(256)
        )
        xi = ns.sgn_from_per_sample(
            gamma[0],
            gamma[1],
            ns.draw_minibatches(ctx.rng(f"{NAME}-arm-batches-{arm}"), n, b, opts["sgn_samples"]),
        )
        del gamma
        summ, _, arr = ns.battash_stats(
            xi,
            groups=groups,
            names=names,
            numels=numels,
            fit_coords=opts["fit_coords"],
            rng=ctx.rng(f"{NAME}-arm-fit-{arm}"),
        )
        alpha, scale = arr["alpha"].astype(np.float64), arr["scale"].astype(np.float64)
        train_loss, train_acc = evaluate(model, ctx.loss_fn, x, y)
        test_acc = evaluate(model, ctx.loss_fn, xt, yt)[1] if xt is not None else None
        tail = max(1, losses.size // 4)
        rows.append(
            {
                "arm": arm,
                "lr": lr,
                "batch_size": b,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_acc": test_acc,
                "minibatch_loss_last_quarter": float(losses[-tail:].mean()),
                "alpha_median": summ["alpha_median"],
                "fraction_stable": summ["fraction_stable"],
                "sgn_scale_median": summ["scale_median"],
                "step_noise_scale_median": float(np.median(lr * scale)),
                "levy_amplitude_median": float(np.median(lr ** ((alpha - 1) / alpha) * scale)),
                **ns.jump_stats(base_step_noise, lr * xi),
            }
        )
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """A few numbers at the last checkpoint for a preset's comparison table."""
    line: dict[str, Any] = {}
    if "simsekli" in results and results["simsekli"]["checkpoints"]:
        last = results["simsekli"]["checkpoints"][-1]
        line["pooled α (Simsekli)"] = last["pooled_alpha"]
        line["pooled α, Gaussian control"] = last["pooled_alpha_gaussian_control"]
        line["pooled α, Gaussian control (IQR)"] = last["pooled_alpha_gaussian_control_iqr"]
        line["median per-coord α"] = last["per_coord_alpha_median"]
        if "resampled_per_coord_alpha_median" in last:
            line["median per-coord α, K resampled"] = last["resampled_per_coord_alpha_median"]
    if "panigrahi" in results and results["panigrahi"]["rows"]:
        rows = results["panigrahi"]["rows"]
        final = [r for r in rows if r["step"] == rows[-1]["step"]]
        for r in (final[0], final[-1]) if len(final) > 1 else final[:1]:
            line[f"Gaussian coords B={r['batch_size']}"] = r["accepted_bh"]
            line[f"Gaussian dirs B={r['batch_size']}"] = r["directions_accepted_bh"]
    if "battash" in results and results["battash"]["rows"]:
        rows = results["battash"]["rows"]
        final = [r for r in rows if r["step"] == rows[-1]["step"]]
        train_b = results["battash"]["map"]["batch_size"]
        last = next((r for r in final if r["batch_size"] == train_b), final[0])
        line["SαS wins (AIC)"] = last["fraction_stable"]
        line["median SαS α"] = last["alpha_median"]
        for r in results["battash"].get("arms", {}).get("rows", []):
            if r["arm"] in ("lr-decay", "batch-increase"):
                line[f"jump freq {r['arm']}"] = r["jump_frequency"]
    return {
        k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
        for k, v in line.items()
    }


def render(view: RunView) -> Section:
    from ._noise_render import render_section

    return render_section(view, TITLE)


#: Simsekli: per-coordinate median α this far below the Gaussian control's supports heavy tails,
#: within ALPHA_SAME of it contradicts them
ALPHA_HEAVY, ALPHA_SAME = 0.3, 0.1
#: Panigrahi: the batch size from which SGN is claimed Gaussian, and the acceptance thresholds
PANIGRAHI_BATCH, GAUSSIAN_ACCEPT, GAUSSIAN_REJECT = 256, 0.8, 0.5


def claims(results: dict[str, Any]) -> list[Claim]:
    """Simsekli's heavy tails, Panigrahi's Gaussianity at B >= 256 and Battash's SαS-over-
    Gaussian claim, each at the last checkpoint (rules: the ``test_rule`` texts below)."""
    out = []
    sim = results.get("simsekli", {}).get("checkpoints") or []
    if sim:
        last = sim[-1]
        a, c = last["per_coord_alpha_median"], last["per_coord_alpha_gaussian_control_median"]
        if a is None or c is None or not (math.isfinite(a) and math.isfinite(c)):
            verdict = INCONCLUSIVE
        elif a <= c - ALPHA_HEAVY:
            verdict = SUPPORTS
        elif a >= c - ALPHA_SAME:
            verdict = CONTRADICTS
        else:
            verdict = INCONCLUSIVE
        out.append(
            Claim(
                "Simsekli et al. 2019",
                "Stochastic gradient noise is heavy-tailed (α-stable with tail index α < 2).",
                verdict,
                f"step {fmt_num(last['step'])}: median per-coordinate α {fmt_num(a, digits=3)} "
                f"vs {fmt_num(c, digits=3)} for Gaussian coordinates of the same scales "
                f"(K = {fmt_num(last['per_coord_samples'])} samples each); the pooled recipe "
                f"gives {fmt_num(last['pooled_alpha'], digits=3)}, Gaussian coordinates pooled the same "
                f"way {fmt_num(last['pooled_alpha_gaussian_control'], digits=3)} (pooling alone "
                "lowers α)",
                f"median per-coordinate α at least {ALPHA_HEAVY} below the Gaussian control's: "
                f"supports; within {ALPHA_SAME} of it (or above): contradicts; in between: "
                "inconclusive",
            )
        )
    pan = results.get("panigrahi", {}).get("rows") or []
    if pan:
        big = [r for r in pan if r["batch_size"] >= PANIGRAHI_BATCH]
        rule = (
            f"at every checkpoint with B >= {PANIGRAHI_BATCH}, the share of random directions "
            f"u^T xi accepted as Gaussian (Shapiro-Wilk, BH) >= {GAUSSIAN_ACCEPT}: supports; "
            f"<= {GAUSSIAN_REJECT} at any: contradicts; otherwise, or no B >= "
            f"{PANIGRAHI_BATCH} measured: inconclusive"
        )
        if not big:
            verdict = INCONCLUSIVE
            evidence = (
                f"no batch size >= {PANIGRAHI_BATCH} was measured (batch sizes "
                f"{', '.join(fmt_num(b) for b in sorted({r['batch_size'] for r in pan}))})"
            )
        else:
            accepted = [r["directions_accepted_bh"] for r in big]
            if min(accepted) >= GAUSSIAN_ACCEPT:
                verdict = SUPPORTS
            elif min(accepted) <= GAUSSIAN_REJECT:
                verdict = CONTRADICTS
            else:
                verdict = INCONCLUSIVE
            evidence = "; ".join(
                f"step {fmt_num(r['step'])}, B = {fmt_num(r['batch_size'])}: directions "
                f"{fmt_num(r['directions_accepted_bh'], '%', digits=3)}, coordinates "
                f"{fmt_num(r['accepted_bh'], '%', digits=3)} accepted"
                for r in big
            )
        out.append(
            Claim(
                "Panigrahi et al. 2019",
                f"For batch sizes of {PANIGRAHI_BATCH} and above, stochastic gradient noise is "
                "Gaussian.",
                verdict,
                evidence,
                rule,
            )
        )
    bat = results.get("battash", {})
    if bat.get("rows"):
        rows = bat["rows"]
        final = [r for r in rows if r["step"] == rows[-1]["step"]]
        train_b = bat.get("map", {}).get("batch_size")
        row = next((r for r in final if r["batch_size"] == train_b), final[0])
        n = int(row["fitted"])
        k = round(row["fraction_stable"] * n) if row["fraction_stable"] is not None else 0
        out.append(
            Claim(
                "Battash et al. 2024",
                "A symmetric α-stable law fits stochastic gradient noise better than a Gaussian.",
                fraction_verdict(k, n, majority_supports=True),
                f"step {fmt_num(row['step'])}, B = {fmt_num(row['batch_size'])}: SαS wins (AIC) "
                f"on {fmt_num(k)} of {fmt_num(n)} fitted coordinates "
                f"({fmt_num(row['fraction_stable'], '%', digits=3)}); median α "
                f"{fmt_num(row['alpha_median'], digits=3)}",
                fraction_rule(True),
            )
        )
    return out


ANALYSIS = Analysis(
    NAME,
    TITLE,
    compute,
    render,
    description="pooled vs per-coordinate tail index (Simsekli), Gaussianity vs batch size "
    "(Panigrahi), per-parameter SαS fits and lr-decay arms (Battash)",
    headline=headline,
    options=resolve_options,
    check=check,
    claims=claims,
)
