"""Spectra: gradient-covariance and Hessian spectra and their power-law fits (Xie et al.).

At the study's checkpoints (fixed parameters) it measures (``../shared/research/methods.md`` §1(b)
item 4, §2(b)):

* **Per-sample gradient covariance spectrum** of a fixed seeded subset of N train examples,
  ``C = (1/N) sum_i (g_i - gbar)(g_i - gbar)^T`` over all P parameters (centred, normalisation
  ``1/N``; rank <= N - 1), from the layer-factored N x N Gram matrix
  (:func:`gradnoise.capture.gram.per_sample_gram`, :func:`gradnoise.spectra.gram_spectrum`);
  never a P x P or an [N, P] matrix.
* Its **rank power-law fit** ``lambda_k ~ k^-s`` over a rank window
  (:func:`gradnoise.spectra.fit_rank_power_law`): slope ``s``, ``r2`` of the log-log line, the
  Clauset KS distance of the window's eigenvalues as a sample, ``beta = 1 + 1/s`` (the density
  exponent, methods.md §8 item 4), the CSN MLE ``s_mle = 1/(beta_mle - 1)`` and, with
  ``bootstrap > 0``, the CSN bootstrap p-value (reject the power law if ``p <= 0.1``).
* **Baselines in the same units**: the model at initialisation (the step-0 checkpoint), the trained
  model with shuffled labels (same inputs and parameters), an i.i.d. Gaussian ``[N, P]`` matrix
  rescaled to the trained spectrum's trace (exact Wishart draw) and the Marchenko–Pastur expected
  ranks of that matrix.
* Effective rank and the Davis–Kahan stability of the top-k subspace between two random halves.
* **Batch-size sweep**: the covariance spectrum of M minibatch gradients ``g_B`` at several batch
  sizes B at the last checkpoint, each minibatch B distinct examples of a pool (the train split,
  or a seeded subset of ``sweep_pool`` examples), from the pool's per-example Gram matrix
  ``K``: the Gram matrix of the minibatch means is exactly ``A K A^T`` (:func:`minibatch_gram`).
  Their covariance is ``C (N - B) / (B (N - 1))`` (N the pool size, without replacement), so the
  figure multiplies it back by ``B (N - 1) / (N - B)`` to compare with the per-sample ``C``.
* **Top-k Hessian eigenvalues** of the mean training loss over a fixed subset of examples by
  thick-restart Lanczos (:func:`gradnoise.hessian_eigs`) on a **float64 copy** of each checkpoint
  (float32 Hessian-vector products cannot reach a 1e-6 relative residual once the loss is tiny),
  with the power-law fit of the positive top-k and of their eigengaps, trained vs initial, and an
  optional Hutch++ trace.

Options (``[options.spectra]``; defaults sized for the ~20 s budget of the default study):

``examples`` (512)            examples of the per-sample covariance (a seeded subset of train).
``centered`` (true)           covariance (true) or uncentred second moment / empirical Fisher.
``fit_window`` (none)         ``[k_min, k_max]`` ranks of the fit; default ``[1, rank // 4]``.
``window_fractions``          ``k_max`` as fractions of the rank for the window-sensitivity table
                              (default ``[1/16, 1/8, 1/4, 1/2]``).
``bootstrap`` (200)           CSN bootstrap replicates for the p-value (0: none).
``baselines`` (true)          shuffled labels, random matrix and Marchenko–Pastur baselines.
``stability_k`` (10)          dimension of the Davis–Kahan subspace check (0: none).
``batch_sizes`` ([8, 32, 128]) batch sizes of the minibatch-gradient sweep ([]: none).
``sweep_batches`` (256)       minibatch gradients per batch size (M).
``sweep_pool`` (2048)         examples the minibatches are drawn from (capped at the train split).
``sweep_window`` (none)       ``[k_min, k_max]`` for the sweep; default ``[1, (M - 1) // 4]``.
``hessian`` (true)            top-k Hessian eigenvalues.
``hessian_k`` (10)            k.
``hessian_examples`` (512)    examples of the loss whose Hessian is taken (0: the whole train split).
``hessian_at`` ("ends")       ``"ends"`` (first and last checkpoint) or ``"all"`` checkpoints.
``hessian_dtype`` ("float64") ``"float64"`` (a float64 copy of the model and data) or ``"float32"``.
``hessian_tol`` (1e-6)        Lanczos relative residual tolerance.
``hessian_window`` (none)     ``[k_min, k_max]`` of the Hessian fit; default all positive top-k.
``hessian_trace`` (0)         Hutch++ Hessian-vector products for ``tr(H)`` (0: none).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ...errors import ConfigError
from ...report import Chart, Figure, Section, Table
from ...report.figures import figure, save_figure, thin_loglog
from ...report.numbers import fmt_num
from ...spectra import (
    effective_rank,
    eigengaps,
    fit_rank_power_law,
    gram_spectrum,
    marchenko_pastur,
    random_matrix_spectrum,
    subspace_stability_from_gram,
)
from ..claims import CONTRADICTS, INCONCLUSIVE, SUPPORTS, Claim
from ..context import RunView, StudyContext
from ..options import boolean, check_keys, choice, int_list, integer, number, sequence
from ..registry import Analysis

NAME = "spectra"
TITLE = "Spectra: gradient covariance and Hessian (Xie et al.)"

DEFAULTS: dict[str, Any] = {
    "examples": 512,
    "centered": True,
    "fit_window": None,
    "window_fractions": [1 / 16, 1 / 8, 1 / 4, 1 / 2],
    "bootstrap": 200,
    "baselines": True,
    "stability_k": 10,
    "batch_sizes": [8, 32, 128],
    "sweep_batches": 256,
    "sweep_pool": 2048,
    "sweep_window": None,
    "hessian": True,
    "hessian_k": 10,
    "hessian_examples": 512,
    "hessian_at": "ends",
    "hessian_dtype": "float64",
    "hessian_tol": 1e-6,
    "hessian_window": None,
    "hessian_trace": 0,
}

#: The asymptotic 5 % one-sample KS critical value is ``KS_C / sqrt(n)`` (lenient with fitted
#: parameters, methods.md §0.1 item 7).
KS_C = 1.358


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


WHERE = f"[options.{NAME}]"


def _window(name: str, value: Any) -> list[int] | None:
    if value is None:
        return None
    ks = int_list(WHERE, name, value, 1)
    if len(ks) != 2 or ks[1] - ks[0] < 2:
        raise ConfigError(
            f"{WHERE} {name} must be [k_min, k_max] with 1 <= k_min and at least 3 ranks, "
            f"got {value!r}"
        )
    return ks


def resolve_options(options: Mapping[str, Any], config: Any = None) -> dict[str, Any]:
    """The analysis options: :data:`DEFAULTS` updated by ``options``, validated."""
    check_keys(WHERE, options, DEFAULTS)
    opts = {**DEFAULTS, **dict(options)}
    minimum = {
        "examples": 8,
        "bootstrap": 0,
        "stability_k": 0,
        "sweep_batches": 8,
        "sweep_pool": 2,
        "hessian_k": 3,
        "hessian_examples": 0,
        "hessian_trace": 0,
    }
    for key, low in minimum.items():
        opts[key] = integer(WHERE, key, opts[key], low)
    for key in ("centered", "baselines", "hessian"):
        opts[key] = boolean(WHERE, key, opts[key])
    for key in ("fit_window", "sweep_window", "hessian_window"):
        opts[key] = _window(key, opts[key])
    opts["batch_sizes"] = sorted(set(int_list(WHERE, "batch_sizes", opts["batch_sizes"], 1)))
    opts["window_fractions"] = sorted(
        {
            number(WHERE, f"window_fractions[{i}]", f, 0, 1, low_open=True)
            for i, f in enumerate(sequence(WHERE, "window_fractions", opts["window_fractions"]))
        }
    )
    choice(WHERE, "hessian_at", opts["hessian_at"], ("ends", "all"))
    choice(WHERE, "hessian_dtype", opts["hessian_dtype"], ("float64", "float32"))
    opts["hessian_tol"] = number(
        WHERE, "hessian_tol", opts["hessian_tol"], 0, 1, low_open=True, high_open=True
    )
    return opts


def check(ctx: StudyContext, model: Any) -> None:
    """Before training: the train split is large enough for the options."""
    opts = ctx.options(NAME)
    n_train = len(ctx.data.train)  # type: ignore[arg-type]
    if n_train < 8:
        raise ConfigError(f"the spectra analysis needs at least 8 train examples, got {n_train}")
    size = min(opts["sweep_pool"], n_train)
    too_big = [b for b in opts["batch_sizes"] if b >= size]
    if too_big:
        raise ConfigError(
            f"{WHERE} batch_sizes {too_big} must be smaller than the sweep pool ({size} "
            "examples: sweep_pool or the train split)"
        )


# --------------------------------------------------------------------------------------------
# Fits (numpy only)
# --------------------------------------------------------------------------------------------


def default_window(rank: int, fraction: float = 0.25) -> list[int]:
    """``[1, max(3, floor(fraction * rank))]`` capped at ``rank``."""
    return [1, min(rank, max(3, int(fraction * rank)))]


def fit_spectrum(
    values: np.ndarray, window: Sequence[int], *, bootstrap: int = 0, rng: Any = None
) -> dict[str, Any]:
    """Rank power-law fit of ``values`` over ``window`` (capped at the last positive value).

    Returns the fields of :class:`gradnoise.spectra.RankPowerLawFit` plus ``ks_critical``
    (``1.358 / sqrt(n_tail)``) and, with ``bootstrap > 0``, the CSN bootstrap ``pvalue`` of the
    window's values (:func:`gradnoise.stats.power_law_test`, same ``min_tail`` as the fit), or
    ``{"error": reason}`` when the window holds fewer than 3 positive values.
    """
    lam = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    positive = int(np.sum(lam > 0))
    k_min, k_max = int(window[0]), min(int(window[1]), positive)
    if k_max - k_min < 2:
        return {
            "error": f"fewer than 3 positive values in ranks {window[0]}..{window[1]} "
            f"({positive} positive of {lam.size})"
        }
    fit = fit_rank_power_law(lam, k_min=k_min, k_max=k_max)
    out: dict[str, Any] = {
        "s": fit.s,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "beta": fit.beta,
        "ks": fit.ks,
        "beta_mle": fit.beta_mle,
        "s_mle": fit.s_mle,
        "xmin": fit.xmin,
        "n_tail": fit.n_tail,
        "ks_critical": KS_C / math.sqrt(fit.n_tail),
        "k_min": fit.k_min,
        "k_max": fit.k_max,
        "n": fit.n,
    }
    if bootstrap > 0:
        from ...stats import power_law_test

        # errstate: the batched x_min scan of the replicates computes log1p((u1 - u0) / u0)
        # also across the boundary between two replicates, where it is -inf when the spectrum
        # spans more than ~16 decades, and then discards that term (stats/_powerlaw_scan.py)
        with np.errstate(divide="ignore"):
            test = power_law_test(
                lam[k_min - 1 : k_max], n_boot=bootstrap, rng=rng, min_tail=min(50, fit.n)
            )
        out["pvalue"] = float(test.pvalue)
        out["n_boot"] = int(bootstrap)
    return out


def _covariance_row(
    label: str,
    kind: str,
    step: int | None,
    key: str,
    spectrum: np.ndarray,
    window: Sequence[int],
    opts: Mapping[str, Any],
    rng: np.random.Generator,
) -> dict[str, Any]:
    positive = spectrum[spectrum > 0]
    row: dict[str, Any] = {
        "label": label,
        "kind": kind,
        "step": step,
        "key": key,
        "rank": int(spectrum.size),
        "trace": float(spectrum.sum()),
        "lambda_1": float(spectrum[0]),
        "effective_rank": float(effective_rank(positive)) if positive.size else None,
        "fit": fit_spectrum(spectrum, window, bootstrap=opts["bootstrap"], rng=rng),
        "window_sensitivity": [],
    }
    for fraction in opts["window_fractions"]:
        w = default_window(spectrum.size, fraction)
        fit = fit_spectrum(spectrum, w)
        row["window_sensitivity"].append(
            {"fraction": fraction, "k_max": fit.get("k_max", w[1]), **_short(fit)}
        )
    return row


def _short(fit: Mapping[str, Any]) -> dict[str, Any]:
    if "error" in fit:
        return {"s": None, "r2": None, "ks": None}
    return {"s": fit["s"], "r2": fit["r2"], "ks": fit["ks"]}


# --------------------------------------------------------------------------------------------
# compute
# --------------------------------------------------------------------------------------------


def compute(ctx: StudyContext) -> dict[str, Any]:
    opts = ctx.options(NAME)
    with threadpool_limits(limits=1, user_api="blas"):  # numpy/scipy must not fight torch
        return _compute(ctx, opts)


def _compute(ctx: StudyContext, opts: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ...capture.gram import per_sample_gram
    from ...curvature import shuffled_labels

    x, y = ctx.train_tensors
    n_train = int(x.shape[0])
    n = min(opts["examples"], n_train)
    example_index = np.sort(ctx.rng("spectra-examples").choice(n_train, size=n, replace=False))
    xs, ys = x[torch.as_tensor(example_index)], y[torch.as_tensor(example_index)]
    loss_fn = ctx.loss_fn
    steps = sorted(ctx.checkpoints)
    last = steps[-1]
    centered = opts["centered"]
    arrays: dict[str, np.ndarray] = {"example_index": example_index}

    def model_at(step: int | None) -> Any:
        return ctx.build_model() if step is None else ctx.load_model(step)

    # settings: every checkpoint, plus the initial model when step 0 is not a checkpoint
    settings: list[int | None] = list(steps)
    if steps[0] != 0:
        settings.insert(0, None)
    num_params = 0
    grams: dict[str, np.ndarray] = {}
    spectra: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    stability: list[dict[str, Any]] = []
    mp_info: dict[str, float] | None = None

    def add_gram(key: str, model: Any, targets: Any) -> np.ndarray:
        gram = per_sample_gram(
            model,
            loss_fn,
            xs.to(ctx.device),
            targets.to(ctx.device),
            dropout=ctx.fixed_dropout,
            **ctx.memory(),
        )
        grams[key] = gram
        spectra[key] = gram_spectrum(gram, centered=centered, num_params=num_params)
        arrays[key] = spectra[key]
        return spectra[key]

    for step in ctx.progress.track(settings, "spectra: covariance at checkpoints"):
        model = model_at(step)
        num_params = sum(int(p.numel()) for p in model.parameters() if p.requires_grad)
        key = "cov_init" if step is None else f"cov_step_{step}"
        spectrum = add_gram(key, model, ys)
        window = opts["fit_window"] or default_window(spectrum.size)
        kind = "init" if step in (None, 0) else ("trained" if step == last else "checkpoint")
        name = _label(kind, step)
        rows.append(
            _covariance_row(
                name, kind, step, key, spectrum, window, opts, ctx.rng(f"spectra-boot-{key}")
            )
        )
        if opts["stability_k"]:
            stability.append(_stability(grams[key], opts, centered, name, ctx))
        if step == last and opts["baselines"]:
            perm_targets = shuffled_labels(ys, rng=ctx.rng("spectra-shuffle"))
            arrays["shuffled_targets"] = perm_targets.cpu().numpy()
            shuffled = add_gram("cov_shuffled", model, perm_targets)
            rows.append(
                _covariance_row(
                    f"shuffled labels (step {last})",
                    "shuffled",
                    last,
                    "cov_shuffled",
                    shuffled,
                    window,
                    opts,
                    ctx.rng("spectra-boot-cov_shuffled"),
                )
            )
            if opts["stability_k"]:
                stability.append(
                    _stability(grams["cov_shuffled"], opts, centered, "shuffled labels", ctx)
                )
            trace = float(spectrum.sum())
            if not trace > 0:
                raise ValueError(f"the gradient covariance at step {last} is zero (zero gradients)")
            rand = random_matrix_spectrum(
                n,
                num_params,
                total_variance=trace,
                centered=centered,
                rng=ctx.rng("spectra-random"),
            )[: spectrum.size]
            arrays["cov_random"] = rand
            rows.append(
                _covariance_row(
                    f"Gaussian {n}x{num_params} (same trace)",
                    "random",
                    None,
                    "cov_random",
                    rand,
                    window,
                    opts,
                    ctx.rng("spectra-boot-cov_random"),
                )
            )
            mp = marchenko_pastur(n, num_params, total_variance=trace, centered=centered)
            arrays["cov_mp"] = mp.rank_quantiles()[: spectrum.size]
            rows.append(
                _covariance_row(
                    "Marchenko–Pastur expected ranks",
                    "mp",
                    None,
                    "cov_mp",
                    arrays["cov_mp"],
                    window,
                    opts,
                    ctx.rng("spectra-boot-cov_mp"),
                )
            )
            mp_info = {"ratio": mp.ratio, "lower": mp.lower, "upper": mp.upper}
        del model
    grams.clear()

    sweep = _batch_sweep(ctx, opts, last, arrays)
    hessian = _hessian(ctx, opts, steps, arrays) if opts["hessian"] else []
    ctx.save_arrays(NAME, **arrays)
    return {
        "examples": n,
        "num_params": num_params,
        "centered": centered,
        "trained_step": last,
        "covariance": rows,
        "stability": stability,
        "marchenko_pastur": mp_info,
        "batch_sweep": sweep,
        "hessian": hessian,
        "options": opts,
    }


def _label(kind: str, step: int | None) -> str:
    if step is None:
        return "init (fresh model)"
    return {"init": f"init (step {step})", "trained": f"trained (step {step})"}.get(
        kind, f"step {step}"
    )


def _stability(
    gram: np.ndarray, opts: Mapping[str, Any], centered: bool, label: str, ctx: StudyContext
) -> dict[str, Any]:
    k = opts["stability_k"]
    try:
        st = subspace_stability_from_gram(
            gram, k=k, centered=centered, rng=ctx.rng(f"spectra-halves-{label}")
        )
    except ValueError as err:  # too few examples or a rank-deficient half: say so
        return {"label": label, "k": k, "error": str(err)}
    return {
        "label": label,
        "k": k,
        "sin_theta": st.sin_theta,
        "sin_theta_rms": st.sin_theta_fro,
        "davis_kahan_bound": st.bound,
        "difference_norm": st.difference_norm,
        "eigengap": st.eigengap,
    }


def minibatch_gram(gram: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Gram matrix of minibatch-mean gradients from the per-example Gram matrix.

    With ``g_m = (1/B) sum_{i in B_m} g_i`` (``index[m]`` = the B examples of minibatch m),
    ``<g_a, g_b> = (1/B^2) sum_{i in B_a, j in B_b} K_ij``, i.e. ``A K A^T`` with
    ``A[m, i] = 1/B`` for ``i`` in ``B_m`` (exact; no gradient is materialised).
    """
    import scipy.sparse

    m, b = index.shape
    avg = scipy.sparse.csr_array(
        (np.full(m * b, 1.0 / b), index.ravel(), np.arange(0, m * b + 1, b)),
        shape=(m, gram.shape[0]),
    )
    left = avg @ gram  # [M, N], cost M B N
    out = np.asarray((avg @ left.T).T)  # A (A K)^T = A K A^T, cost M B M
    return 0.5 * (out + out.T)


def _batch_sweep(
    ctx: StudyContext, opts: Mapping[str, Any], step: int, arrays: dict[str, np.ndarray]
) -> dict[str, Any] | None:
    import torch

    from ...capture.gram import per_sample_gram

    sizes = opts["batch_sizes"]
    if not sizes:
        return None
    x, y = ctx.train_tensors
    n_train = int(x.shape[0])
    size = min(opts["sweep_pool"], n_train)
    if size == n_train:
        pool = np.arange(n_train)
    else:
        pool = np.sort(ctx.rng("spectra-sweep-pool").choice(n_train, size=size, replace=False))
    model = ctx.load_model(step)
    num_params = sum(int(p.numel()) for p in model.parameters() if p.requires_grad)
    take = torch.as_tensor(pool)
    gram = per_sample_gram(
        model,
        ctx.loss_fn,
        x[take].to(ctx.device),
        y[take].to(ctx.device),
        dropout=ctx.fixed_dropout,
        **ctx.memory(),
    )
    del model
    centered = opts["centered"]
    per_sample = gram_spectrum(gram, centered=centered, num_params=num_params)
    arrays["sweep_pool"] = pool
    arrays["sweep_per_sample"] = per_sample
    m = opts["sweep_batches"]
    rows = []
    for b in ctx.progress.track(sizes, "spectra: minibatch-gradient covariance vs batch size"):
        # M independent minibatches of B distinct pool examples (as gradnoise.minibatch_grads)
        keys = ctx.rng(f"spectra-sweep-{b}").random((m, size))
        index = np.sort(np.argpartition(keys, b - 1, axis=1)[:, :b], axis=1)
        spectrum = gram_spectrum(
            minibatch_gram(gram, index), centered=centered, num_params=num_params
        )
        arrays[f"sweep_B{b}"] = spectrum
        arrays[f"sweep_index_B{b}"] = pool[index].astype(np.int32)
        window = opts["sweep_window"] or default_window(spectrum.size)
        rows.append(
            {
                "batch_size": b,
                "batches": m,
                "scale": b * (size - 1) / (size - b),
                "trace": float(spectrum.sum()),
                "lambda_1": float(spectrum[0]),
                "fit": fit_spectrum(
                    spectrum,
                    window,
                    bootstrap=opts["bootstrap"],
                    rng=ctx.rng(f"spectra-boot-sweep-{b}"),
                ),
            }
        )
    return {
        "step": step,
        "pool": size,
        "batches": m,
        "per_sample_trace": float(per_sample.sum()),
        "per_sample_fit": fit_spectrum(per_sample, default_window(min(per_sample.size, m - 1))),
        "rows": rows,
    }


def _double_backward_attention() -> Any:
    """Scaled-dot-product attention on the math kernel while Hessian-vector products run: the
    fused CPU and GPU kernels (flash, memory-efficient) have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _hessian(
    ctx: StudyContext, opts: Mapping[str, Any], steps: list[int], arrays: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    from contextlib import nullcontext

    import torch

    from ...curvature import hessian_eigs, hessian_trace
    from .._torch import eval_mode

    x, y = ctx.train_tensors
    n_train = int(x.shape[0])
    count = opts["hessian_examples"] or n_train
    if count >= n_train:
        index = np.arange(n_train)
    else:
        index = np.sort(ctx.rng("spectra-hessian-examples").choice(n_train, count, replace=False))
    arrays["hessian_index"] = index
    dtype = torch.float64 if opts["hessian_dtype"] == "float64" else torch.float32

    def cast(t: Any) -> Any:  # floating inputs/targets follow the model; token ids stay integers
        return t.to(ctx.device, dtype) if t.is_floating_point() else t.to(ctx.device)

    xh, yh = cast(x[torch.as_tensor(index)]), cast(y[torch.as_tensor(index)])
    at: list[int | None] = list(steps) if opts["hessian_at"] == "all" else [steps[0], steps[-1]]
    at = list(dict.fromkeys(at))
    if steps[0] != 0:
        at.insert(0, None)
    out = []
    for step in ctx.progress.track(at, "spectra: Hessian top-k (Lanczos)"):
        model = (ctx.build_model() if step is None else ctx.load_model(step)).to(dtype)
        with torch.no_grad(), eval_mode(model) if ctx.dropout != "error" else nullcontext():
            loss = float(ctx.loss_fn(model(xh), yh))
        k = min(opts["hessian_k"], sum(int(p.numel()) for p in model.parameters()))
        with warnings.catch_warnings(), _double_backward_attention():
            # a non-converged eigenpair is recorded below (converged / residuals), not raised
            warnings.filterwarnings("ignore", message="lanczos_eigs:", category=RuntimeWarning)
            eigs = hessian_eigs(
                model,
                ctx.loss_fn,
                (xh, yh),
                k=k,
                rng=ctx.seed_for(f"spectra-lanczos-{step}"),
                tol=opts["hessian_tol"],
                blas_threads=1,
                dropout=ctx.fixed_dropout,
                **ctx.memory(),
            )
        key = "init" if step is None else f"step_{step}"
        arrays[f"hessian_{key}"] = eigs.eigenvalues
        arrays[f"hessian_residuals_{key}"] = eigs.residuals
        lam = eigs.eigenvalues
        window = opts["hessian_window"] or [1, int(lam.size)]
        gaps = np.sort(eigengaps(lam))[::-1]
        scale = float(np.max(np.abs(lam)))
        kind = "init" if step in (None, 0) else ("trained" if step == steps[-1] else "checkpoint")
        row: dict[str, Any] = {
            "label": _label(kind, step),
            "step": step,
            "kind": kind,
            "key": key,
            "dtype": opts["hessian_dtype"],
            "examples": int(index.size),
            "loss": loss,
            "k": int(lam.size),
            "lambda_1": float(lam[0]),
            "lambda_k": float(lam[-1]),
            "positive": int(np.sum(lam > 0)),
            "max_relative_residual": float(np.max(eigs.residuals) / scale) if scale > 0 else None,
            "converged": int(np.sum(eigs.converged)),
            "matvecs": int(eigs.num_matvecs),
            "fit": fit_spectrum(
                lam, window, bootstrap=opts["bootstrap"], rng=ctx.rng(f"spectra-boot-h-{key}")
            ),
            "gap_fit": fit_spectrum(gaps, [1, int(gaps.size)]),
        }
        if opts["hessian_trace"]:
            with _double_backward_attention():
                tr = hessian_trace(
                    model,
                    ctx.loss_fn,
                    (xh, yh),
                    num_matvecs=opts["hessian_trace"],
                    rng=ctx.seed_for(f"spectra-trace-{step}"),
                    blas_threads=1,
                    dropout=ctx.fixed_dropout,
                    **ctx.memory(),
                )
            row["trace"] = float(tr.estimate)
            row["trace_stderr"] = float(tr.stderr)
        out.append(row)
        del model
    return out


# --------------------------------------------------------------------------------------------
# headline and render (no torch)
# --------------------------------------------------------------------------------------------


def _row(rows: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    found = [r for r in rows if r["kind"] == kind]
    return found[-1] if found else None


def _fitted(row: Mapping[str, Any] | None, field: str = "s", fit: str = "fit") -> Any:
    if row is None or fit not in row or "error" in row[fit]:
        return None
    return row[fit][field]


def headline(results: Mapping[str, Any]) -> dict[str, Any]:
    """Fitted rank slopes ``s`` (and KS) for the preset comparison table."""
    cov = results["covariance"]
    out: dict[str, Any] = {
        "cov s (trained)": _fitted(_row(cov, "trained")),
        "cov KS (trained)": _fitted(_row(cov, "trained"), "ks"),
        "cov s (init)": _fitted(_row(cov, "init")),
        "cov s (shuffled)": _fitted(_row(cov, "shuffled")),
        "cov s (random)": _fitted(_row(cov, "random")),
    }
    if results["batch_sweep"]:
        out["minibatch cov s by B"] = ", ".join(
            f"B={r['batch_size']}: {_fmt(_fitted(r))}" for r in results["batch_sweep"]["rows"]
        )
    hess = results["hessian"]
    if hess:
        out["Hessian s (trained)"] = _fitted(_row(hess, "trained"))
        out["Hessian KS (trained)"] = _fitted(_row(hess, "trained"), "ks")
        out["Hessian s (init)"] = _fitted(_row(hess, "init"))
        out["Hessian k"] = hess[-1]["k"]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _num(value: Any) -> float:
    """A JSON number back to float (``"inf"`` strings and None included)."""
    if value is None:
        return float("nan")
    return float(value)


def _fit_cells(fit: Mapping[str, Any]) -> list[str]:
    if "error" in fit:
        return [fit["error"]] + ["n/a"] * 6
    window = f"{fit['k_min']}..{fit['k_max']}"
    p = _fmt(fit.get("pvalue"), 2) if "pvalue" in fit else "-"
    ks = f"{_fmt(fit['ks'])} ({'<' if fit['ks'] < fit['ks_critical'] else '>='} {_fmt(fit['ks_critical'], 2)})"
    return [window, _fmt(fit["s"]), _fmt(fit["r2"]), ks, _fmt(fit["beta"]), _fmt(fit["s_mle"]), p]


FIT_HEADER = [
    "window",
    "s",
    "r2",
    "KS (vs 1.358/sqrt(n_tail))",
    "beta = 1+1/s",
    "s (CSN MLE)",
    "p (CSN)",
]


def _line(ax: Any, fit: Mapping[str, Any], color: str, scale: float = 1.0, **kw: Any) -> None:
    if "error" in fit:
        return
    k = np.geomspace(fit["k_min"], fit["k_max"], 50)
    ax.plot(k, scale * np.exp(fit["intercept"]) * k ** (-_num(fit["s"])), color=color, **kw)


def _ranked(ax: Any, values: np.ndarray, scale: float = 1.0, **kw: Any) -> None:
    v = np.asarray(values, dtype=np.float64) * scale
    k = np.arange(1, v.size + 1)
    keep = v > 0
    ax.loglog(k[keep], v[keep], **kw)


def _floor(ax: Any, dynamic_range: float = 1e10) -> None:
    """Cut the y-axis ``dynamic_range`` below its top: round-off eigenvalues near the rank limit
    (1e-20 and below) would otherwise flatten the interesting part of a log rank plot."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(max(bottom, top / dynamic_range), top)


def render(view: RunView) -> Section:
    res, arrays = view.results, view.arrays()
    rows = res["covariance"]
    figures: list[Figure] = []
    tables: list[Table] = []
    notes: list[str] = []
    trained, init = _row(rows, "trained"), _row(rows, "init")
    n, p = res["examples"], res["num_params"]
    what = "covariance" if res["centered"] else "second moment (uncentred)"

    # -- figure 1: covariance rank plots --------------------------------------------------
    with figure(2, width=4.8, height=4.6) as (fig, (ax_base, ax_steps)):
        styles: dict[str, dict[str, Any]] = {
            "trained": dict(color="C0", lw=1.6),
            "init": dict(color="C1", lw=1.2),
            "shuffled": dict(color="C2", lw=1.2),
            "random": dict(color="0.45", lw=1.2),
            "mp": dict(color="k", lw=1.0, ls=":"),
        }
        for row in rows:
            if row["kind"] in styles:
                _ranked(ax_base, arrays[row["key"]], label=row["label"], **styles[row["kind"]])
        for row in (trained, init):
            if row is not None:
                fit = row["fit"]
                _line(
                    ax_base,
                    fit,
                    "C3" if row is trained else "C5",
                    ls="--",
                    lw=1.3,
                    label=f"fit {row['kind']}: s = {_fmt(_fitted(row))}",
                )
        if trained is not None and "error" not in trained["fit"]:
            ax_base.axvspan(
                trained["fit"]["k_min"], trained["fit"]["k_max"], color="C0", alpha=0.06, lw=0
            )
        ax_base.set(
            xlabel="rank k",
            ylabel="eigenvalue lambda_k",
            title=f"Gradient {what} spectrum vs baselines",
        )
        _floor(ax_base)
        ax_base.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        checkpoints = [r for r in rows if r["kind"] in ("init", "checkpoint", "trained")]
        cmap = _colors(len(checkpoints))
        for color, row in zip(cmap, checkpoints, strict=True):
            spec = arrays[row["key"]]
            _ranked(ax_steps, spec, 1.0 / spec.sum(), color=color, lw=1.2, label=row["label"])
            _line(ax_steps, row["fit"], color, 1.0 / spec.sum(), ls="--", lw=0.9)
        ax_steps.set(
            xlabel="rank k",
            ylabel="lambda_k / trace",
            title="Along training (normalised; dashed: fits)",
        )
        _floor(ax_steps)
        ax_steps.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
        fitted = {"trained", "init"}
        cov_charts = [
            _rank_chart(
                f"Gradient {what} spectrum vs baselines",
                "eigenvalue lambda_k",
                [
                    (
                        row["label"],
                        arrays[row["key"]],
                        1.0,
                        row["fit"] if row["kind"] in fitted else None,
                    )
                    for row in rows
                    if row["kind"] in styles and row["key"] in arrays
                ],
                "The trained model's spectrum against its baselines; dashed: the rank power-law "
                "fits of the trained and initial models over their rank window "
                + (
                    f"(ranks {trained['fit']['k_min']}..{trained['fit']['k_max']} after training)."
                    if trained is not None and "error" not in trained["fit"]
                    else "."
                ),
            ),
            _rank_chart(
                "Along training (normalised by the trace)",
                "lambda_k / trace",
                [
                    (row["label"], arrays[row["key"]], 1.0 / arrays[row["key"]].sum(), row["fit"])
                    for row in checkpoints
                ],
                "Every checkpoint's spectrum divided by its trace, so that the shapes compare; "
                "dashed: fits.",
            ),
        ]
        figures.append(
            Figure(
                save_figure(fig, view.figure_path("covariance")),
                f"Rank-ordered eigenvalues of the per-sample gradient {what} of {n} train "
                f"examples over all {p} parameters (log-log; a power law lambda_k ~ k^-s is a "
                "straight line). Left: the trained model against its baselines (the model at "
                "initialisation, shuffled labels, a Gaussian matrix of the same shape and trace, "
                "and the Marchenko–Pastur expected ranks); dashed: least-squares fits over the "
                "shaded rank window. Right: every checkpoint, divided by its trace.",
                intro="Xie et al. (2023)'s claim that, after training, the covariance of "
                "stochastic gradients has a power-law spectrum: its eigenvalues sorted from "
                "the largest (rank k = 1) on log–log axes, where a power law lambda_k ~ k^-s is "
                "a straight line of slope -s. The baselines say what a straight line is worth: "
                "a Gaussian random matrix of the same shape and trace (its eigenvalues follow the "
                "Marchenko–Pastur law: a nearly flat rank plot), the same model at "
                "initialisation and with shuffled labels. The claim needs the trained curve "
                "straight over the fitted window (CSN bootstrap p in the table) and much steeper "
                "than the random matrix's; the second plot shows how the shape changes along "
                "training, each spectrum divided by its trace.",
                charts=cov_charts,
            )
        )

    table_rows = []
    for row in rows:
        table_rows.append(
            [
                row["label"],
                _fmt(row["lambda_1"]),
                _fmt(row["trace"]),
                _fmt(row["effective_rank"]),
                *_fit_cells(row["fit"]),
            ]
        )
    tables.append(
        Table(
            ["setting", "lambda_1", "trace", "effective rank", *FIT_HEADER],
            table_rows,
            caption=f"Rank power-law fits lambda_k ~ k^-s of the gradient {what} spectrum "
            f"(N = {n} examples, P = {p}, rank <= {n - 1 if res['centered'] else n}). KS: the "
            "Clauset KS distance of the window's eigenvalues as a sample, with the naive 5 % "
            "critical value (lenient with fitted parameters); p (CSN): bootstrap p-value, the "
            "power law is rejected when p <= 0.1. beta = 1 + 1/s is the implied density exponent.",
        )
    )
    if rows and rows[0]["window_sensitivity"]:
        fracs = [w["k_max"] for w in rows[0]["window_sensitivity"]]
        tables.append(
            Table(
                ["setting", *[f"s (r2), ranks 1..{k}" for k in fracs]],
                [
                    [r["label"]]
                    + [f"{_fmt(w['s'])} ({_fmt(w['r2'], 2)})" for w in r["window_sensitivity"]]
                    for r in rows
                ],
                caption="Sensitivity of the fitted slope to the rank window (top ranks only; the "
                "spectrum bends down towards the rank limit).",
            )
        )
    if res["stability"]:
        tables.append(
            Table(
                [
                    "setting",
                    "k",
                    "sin theta (max)",
                    "sin theta (rms)",
                    "Davis–Kahan bound",
                    "eigengap",
                ],
                [
                    [s["label"], s["k"], "error: " + s["error"], "", "", ""]
                    if "error" in s
                    else [
                        s["label"],
                        s["k"],
                        _fmt(s["sin_theta"]),
                        _fmt(s["sin_theta_rms"]),
                        _fmt(s["davis_kahan_bound"])
                        + (" (vacuous)" if s["davis_kahan_bound"] >= 1 else ""),
                        _fmt(s["eigengap"]),
                    ]
                    for s in res["stability"]
                ],
                caption="Stability of the top-k covariance eigenspace between two random halves "
                "of the examples: sines of the principal angles (0 = the same subspace) and the "
                "Davis–Kahan bound min(1, 2 ||C_1 - C_2|| / (lambda_k - lambda_k+1)) (Yu et al. "
                "2015); a bound of 1 is vacuous: the eigengap is smaller than twice the halves' "
                "difference, so only the measured angles speak.",
            )
        )

    # -- figure 2: batch-size sweep -------------------------------------------------------
    sweep = res["batch_sweep"]
    if sweep:
        srows, m, pool = sweep["rows"], sweep["batches"], sweep["pool"]
        with figure(2, width=4.6, height=3.6) as (fig, (ax_rank, ax_s)):
            per_sample = arrays["sweep_per_sample"]
            _ranked(
                ax_rank,
                per_sample[: m - 1],
                color="k",
                lw=1.0,
                ls=":",
                label=f"per-sample C ({pool} examples)",
            )
            for color, r in zip(_colors(len(srows)), srows, strict=True):
                spec = arrays[f"sweep_B{r['batch_size']}"]
                _ranked(
                    ax_rank, spec, r["scale"], color=color, lw=1.2, label=f"B = {r['batch_size']}"
                )
                _line(ax_rank, r["fit"], color, r["scale"], ls="--", lw=0.9)
            ax_rank.set(
                xlabel="rank k",
                ylabel="lambda_k x B(N-1)/(N-B)",
                title=f"Minibatch-gradient covariance (M = {m}, step {sweep['step']})",
            )
            _floor(ax_rank)
            ax_rank.legend(fontsize=7)
            bs = [r["batch_size"] for r in srows]
            ax_s.plot(
                bs, [_num(_fitted(r)) for r in srows], "o-", color="C0", label="s (least squares)"
            )
            ax_s.plot(
                bs,
                [_num(_fitted(r, "s_mle")) for r in srows],
                "s--",
                color="C1",
                label="s (CSN MLE)",
            )
            ref = sweep["per_sample_fit"]
            if "error" not in ref:
                ax_s.axhline(
                    _num(ref["s"]),
                    color="k",
                    ls=":",
                    lw=1,
                    label=f"per-sample C, ranks {ref['k_min']}..{ref['k_max']}",
                )
            ax_s.set(
                xscale="log",
                xlabel="batch size B",
                ylabel="fitted rank slope s",
                title="Slope vs batch size",
            )
            shown = [_num(_fitted(r, f)) for r in srows for f in ("s", "s_mle")]
            top = max([v for v in shown if np.isfinite(v)], default=0.0)
            if top > 0:
                ax_s.set_ylim(0, 1.25 * top)  # from 0: differences are read against s itself
            ax_s.legend(fontsize=7, loc="lower right")
            slope_series = [
                ("s (least squares)", bs, [_num(_fitted(r)) for r in srows]),
                ("s (CSN MLE)", bs, [_num(_fitted(r, "s_mle")) for r in srows]),
            ]
            if "error" not in ref:
                slope_series.append(
                    (
                        f"per-sample C, ranks {ref['k_min']}..{ref['k_max']}",
                        [min(bs), max(bs)],
                        [_num(ref["s"])] * 2,
                    )
                )
            sweep_charts = [
                _rank_chart(
                    f"Minibatch-gradient covariance (M = {m}, step {sweep['step']})",
                    "lambda_k x B(N-1)/(N-B)",
                    [(f"per-sample C ({pool} examples)", per_sample[: m - 1], 1.0, None)]
                    + [
                        (
                            f"B = {r['batch_size']}",
                            arrays[f"sweep_B{r['batch_size']}"],
                            r["scale"],
                            r["fit"],
                        )
                        for r in srows
                    ],
                    "Spectra of the minibatch-gradient covariance, rescaled to per-sample units, "
                    "against the per-sample covariance of the same examples; dashed: fits.",
                ),
                Chart(
                    "Slope vs batch size",
                    "batch size B",
                    "fitted rank slope s",
                    slope_series,
                    log_x=True,
                    caption="The fitted rank slope s at each batch size (least squares and the "
                    "CSN maximum-likelihood estimate), and the per-sample covariance's s over "
                    "the same ranks.",
                ),
            ]
            figures.append(
                Figure(
                    save_figure(fig, view.figure_path("batch_sweep")),
                    f"Left: covariance spectra of M = {m} minibatch gradients at step "
                    f"{sweep['step']} (minibatches of B distinct examples out of N = {pool}), "
                    "rescaled by B(N-1)/(N-B) to per-sample units, against the per-sample "
                    "covariance of the same N examples (dotted); dashed: fits. Right: the fitted "
                    "slope s against B. At fixed parameters the minibatch covariance is exactly "
                    "proportional to the per-sample one, so differences between batch sizes are "
                    "estimation noise from M draws.",
                    intro="A check on the covariance fits of Xie et al. (2023): does the batch "
                    "size change the shape of the noise spectrum? The "
                    f"covariance of M = {m} minibatch gradients at step {sweep['step']} for each "
                    "batch size B, rescaled by B(N-1)/(N-B) so that, in expectation, it equals "
                    "the per-sample covariance (dotted in the static figure). On log–log rank "
                    "axes a power law is a straight line and a common factor only shifts a "
                    "curve, so curves that lie on top of each other have the same shape, and the "
                    "fitted slopes s in the second plot should then agree across B. At fixed "
                    "parameters the minibatch covariance is exactly proportional to the "
                    "per-sample one, so any trend in s with B here is estimation noise from M "
                    "draws, the yardstick for the slopes reported elsewhere.",
                    charts=sweep_charts,
                )
            )
        tables.append(
            Table(
                ["batch size", "M", "lambda_1 x scale", "trace x scale", *FIT_HEADER],
                [
                    [
                        r["batch_size"],
                        r["batches"],
                        _fmt(r["lambda_1"] * r["scale"]),
                        _fmt(r["trace"] * r["scale"]),
                        *_fit_cells(r["fit"]),
                    ]
                    for r in srows
                ]
                + [
                    [
                        f"per-sample ({pool} examples)",
                        "-",
                        _fmt(float(arrays["sweep_per_sample"][0])),
                        _fmt(sweep["per_sample_trace"]),
                        *_fit_cells(ref),
                    ]
                ],
                caption="Rank power-law fits of the minibatch-gradient covariance spectra (the "
                "last row: the per-sample covariance of the pool over the same rank window).",
            )
        )

    # -- figure 3: Hessian ---------------------------------------------------------------
    hess = res["hessian"]
    if hess:
        with figure(2, width=4.6, height=3.6) as (fig, (ax_h, ax_g)):
            cmap = _colors(len(hess))
            for color, r in zip(cmap, hess, strict=True):
                lam = arrays[f"hessian_{r['key']}"]
                _ranked(ax_h, lam, marker="o", ms=3, color=color, lw=1.0, label=f"{r['label']}")
                _line(ax_h, r["fit"], color, ls="--", lw=0.9, label=f"fit: s = {_fmt(_fitted(r))}")
                gaps = np.sort(-np.diff(lam))[::-1]
                _ranked(ax_g, gaps, marker="o", ms=3, color=color, lw=1.0, label=f"{r['label']}")
                _line(
                    ax_g,
                    r["gap_fit"],
                    color,
                    ls="--",
                    lw=0.9,
                    label=f"fit: s = {_fmt(_fitted(r, fit='gap_fit'))}",
                )
            ax_h.set(
                xlabel="rank k",
                ylabel="Hessian eigenvalue lambda_k",
                title=f"Top-{hess[-1]['k']} Hessian eigenvalues",
            )
            ax_h.legend(fontsize=7)
            ax_g.set(
                xlabel="rank", ylabel="eigengap (sorted)", title="Eigengaps lambda_k - lambda_k+1"
            )
            ax_g.legend(fontsize=7)
            hess_charts = [
                _rank_chart(
                    f"Top-{hess[-1]['k']} Hessian eigenvalues",
                    "Hessian eigenvalue lambda_k",
                    [(r["label"], arrays[f"hessian_{r['key']}"], 1.0, r["fit"]) for r in hess],
                    "Positive eigenvalues only; dashed: rank power-law fits.",
                ),
                _rank_chart(
                    "Eigengaps lambda_k - lambda_k+1",
                    "eigengap (sorted)",
                    [
                        (
                            r["label"],
                            np.sort(-np.diff(arrays[f"hessian_{r['key']}"]))[::-1],
                            1.0,
                            r["gap_fit"],
                        )
                        for r in hess
                    ],
                    "The gaps between consecutive eigenvalues, sorted in decreasing order; "
                    "dashed: fits.",
                    x_label="rank",
                ),
            ]
            figures.append(
                Figure(
                    save_figure(fig, view.figure_path("hessian")),
                    f"Top Hessian eigenvalues of the mean training loss over {hess[0]['examples']} "
                    "examples (Lanczos, "
                    f"{hess[0]['dtype']}), at initialisation and after training (log-log; positive "
                    "values only), and their eigengaps sorted in decreasing order; dashed: rank "
                    "power-law fits.",
                    intro="Xie et al. (2022) report power-law Hessian spectra: the top "
                    "eigenvalues of a well-trained network's Hessian fall on a straight line "
                    "lambda_k ~ k^-s with s near 1 on log–log axes, and those at initialisation "
                    "do not. The first plot shows the top eigenvalues at initialisation and "
                    "after training with "
                    "their fit (dashed), the second the gaps between consecutive eigenvalues "
                    "(if lambda_k ~ k^-s, the gaps fall as k^-(s+1): a second straight line). "
                    "Read the verdict from the table: the CSN bootstrap p-value (p > "
                    f"{fmt_num(P_PLAUSIBLE)}: the power law is plausible, p < {fmt_num(P_REJECT)}"
                    ": rejected, in between: borderline) and whether s lies between "
                    f"{fmt_num(HESSIAN_S[0])} and {fmt_num(HESSIAN_S[1])}. Only the top "
                    f"{hess[-1]['k']} eigenvalues are computed, so a straight line over so few "
                    "ranks is weak evidence.",
                    charts=hess_charts,
                )
            )
        hrows = []
        with_trace = any("trace" in r for r in hess)
        for r in hess:
            trace = f"{_fmt(r['trace'])} ± {_fmt(r['trace_stderr'], 2)}" if "trace" in r else "-"
            hrows.append(
                [
                    r["label"],
                    _fmt(r["loss"]),
                    _fmt(r["lambda_1"]),
                    _fmt(r["lambda_k"]),
                    f"{r['positive']}/{r['k']}",
                    *([trace] if with_trace else []),
                    *_fit_cells(r["fit"]),
                    _fmt(_fitted(r, fit="gap_fit")),
                    _fmt(_fitted(r, "ks", fit="gap_fit")),
                    _fmt(r["max_relative_residual"], 2),
                    f"{r['converged']}/{r['k']}",
                    r["matvecs"],
                ]
            )
        tables.append(
            Table(
                [
                    "checkpoint",
                    "loss",
                    "lambda_1",
                    "lambda_k",
                    "positive",
                    *(["tr(H)"] if with_trace else []),
                    *FIT_HEADER,
                    "gap s",
                    "gap KS",
                    "max residual / |lambda_1|",
                    "converged",
                    "HVPs",
                ],
                hrows,
                caption="Top-k Hessian eigenvalues (thick-restart Lanczos on Hessian-vector "
                f"products, {hess[0]['dtype']} copy of the checkpoint) and rank power-law fits of "
                "the positive eigenvalues and of the eigengaps. Xie et al. report s near 1 for "
                "well-trained networks and no power law at initialisation."
                + (
                    ""
                    if with_trace
                    else " tr(H) was not estimated (option hessian_trace = 0; give it a number "
                    "of Hutch++ Hessian-vector products to add a tr(H) column)."
                ),
            )
        )
        if hess[0]["dtype"] == "float64":
            notes.append(
                "The Hessian is computed on a float64 copy of each checkpoint (and float64 "
                "inputs): float32 Hessian-vector products carry round-off that keeps the Lanczos "
                "residuals above a 1e-6 relative tolerance once the training loss is tiny."
            )
        bad = [r["label"] for r in hess if r["converged"] < r["k"]]
        if bad:
            notes.append(
                "Lanczos did not reach the residual tolerance for some eigenpairs at "
                f"{', '.join(bad)}: see the residual column."
            )

    formula = (
        "C = (1/N) sum (g_i - gbar)(g_i - gbar)^T"
        if res["centered"]
        else "M = (1/N) sum g_i g_i^T (the empirical Fisher)"
    )
    classes = view.summary.get("data", {}).get("num_classes")
    paragraphs = [
        "Xie et al. (NeurIPS 2023) report that the covariance spectrum of stochastic gradients "
        "follows a power law lambda_k ~ k^-s after training, unlike a random matrix (Marchenko–"
        "Pastur bulk); Xie et al. (2022; ICML 2025) report power-law Hessian spectra with s near 1 "
        "for well-trained networks and none at initialisation. Here: the gradient "
        f"{what} {formula} of the per-sample gradients of a fixed seeded subset of N = {n} train "
        f"examples over all P = {p} parameters, from the N x N Gram matrix in float64 (never a "
        "P x P matrix).",
        "s is the least-squares rank slope on log-log axes over the rank window; beta = 1 + 1/s "
        "is the exponent of the eigenvalue density p(lambda) ~ lambda^-beta; do not compare an s "
        "with another paper's beta. KS is the Clauset KS distance of the window's eigenvalues "
        "as a sample; not rejected is not proof of a power law.",
    ]
    if classes:
        paragraphs.append(
            f"With {classes} classes, the top {classes - 1} or so eigenvalues often stand apart "
            "(class structure of the gradients: a kink near rank "
            f"{classes}); the fitted windows start at rank 1 unless fit_window says otherwise, "
            "and the window-sensitivity table shows how much s depends on the window."
        )
    if trained is not None and init is not None:
        paragraphs.append(
            f"Observed: covariance s = {_fmt(_fitted(trained))} (r2 {_fmt(_fitted(trained, 'r2'), 3)}, "
            f"KS {_fmt(_fitted(trained, 'ks'))}) after training vs {_fmt(_fitted(init))} at "
            f"initialisation"
            + (
                f" and {_fmt(_fitted(_row(rows, 'random')))} for the Gaussian matrix."
                if _row(rows, "random") is not None
                else "."
            )
            + (
                f" Hessian s = {_fmt(_fitted(_row(hess, 'trained')))} after training vs "
                f"{_fmt(_fitted(_row(hess, 'init')))} at initialisation (top {hess[-1]['k']})."
                if hess
                else ""
            )
        )
    return Section(
        NAME,
        TITLE,
        paragraphs=paragraphs,
        tables=tables,
        figures=figures,
        notes=notes,
    )


def _rank_series(
    values: np.ndarray, scale: float = 1.0, dynamic_range: float = 1e10
) -> tuple[np.ndarray, np.ndarray]:
    """Rank-ordered positive values (times ``scale``) for a log-log chart: cut ``dynamic_range``
    below the largest (round-off eigenvalues near the rank limit, like the figures' floor) and
    thinned evenly along the curve."""
    lam = np.sort(np.asarray(values, dtype=np.float64))[::-1] * scale
    k = np.arange(1, lam.size + 1, dtype=np.float64)
    top = lam[0] if lam.size and lam[0] > 0 else 0.0
    keep = lam > top / dynamic_range if top > 0 else lam > 0
    return thin_loglog(k[keep], lam[keep], 150)


def _fit_series(fit: Mapping[str, Any], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The fitted rank power law over its window (as the figures' dashed lines), or None."""
    if "error" in fit:
        return None
    k = np.geomspace(fit["k_min"], fit["k_max"], 30)
    return k, scale * np.exp(fit["intercept"]) * k ** (-_num(fit["s"]))


def _rank_chart(
    title: str,
    y_label: str,
    curves: Sequence[tuple[str, np.ndarray, float, Mapping[str, Any] | None]],
    caption: str,
    x_label: str = "rank k",
) -> Chart:
    """An interactive log-log rank plot: each ``(label, values, scale, fit)`` curve, followed by
    its fit (dashed, same colour) when ``fit`` is given."""
    series: list[tuple[str, Any, Any]] = []
    dashed = []
    for label, values, scale, fit in curves:
        series.append((label, *_rank_series(values, scale)))
        line = None if fit is None else _fit_series(fit, scale)
        if line is not None:
            series.append((f"fit, {label}: s = {_fmt(_fitted({'fit': fit}))}", *line))
            dashed.append(series[-1][0])
    return Chart(
        title, x_label, y_label, series, log_y=True, log_x=True, dashed=dashed, caption=caption
    )


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.85, max(count, 1))][:count]


#: a rank fit decides on at least this many eigenvalues
MIN_EIGENVALUES = 10
#: the trained covariance slope must be this many times the Gaussian matrix's
RANDOM_FACTOR = 2.0
#: "s near 1" for the Hessian
HESSIAN_S = (0.5, 2.0)
#: the CSN bootstrap p-value bands of the spectrum claims: a power law is plausible at
#: p > P_PLAUSIBLE (the CSN rule) and rejected below P_REJECT; in between the test is on the fence
#: (with a few hundred replicates p = 0.095 and p = 0.105 are the same evidence), and a claim
#: that needs the power law is inconclusive there unless its other condition already fails
P_REJECT, P_PLAUSIBLE = 0.05, 0.1


def _power_law_verdict(p: float, other: bool) -> str:
    """The verdict of a "power law and ``other``" claim from the CSN bootstrap p-value: supports
    when ``p > P_PLAUSIBLE`` and ``other``; contradicts when ``p < P_REJECT`` or ``other``
    fails (then neither reading of a borderline p supports it); else inconclusive."""
    if not other or p < P_REJECT:
        return CONTRADICTS
    return SUPPORTS if p > P_PLAUSIBLE else INCONCLUSIVE


def _p_rule(other: str) -> str:
    return (
        f"power law plausible (CSN bootstrap p > {fmt_num(P_PLAUSIBLE)}) and {other}: "
        f"supports; p < {fmt_num(P_REJECT)} (power law rejected), or not {other}: contradicts; "
        f"{fmt_num(P_REJECT)} <= p <= {fmt_num(P_PLAUSIBLE)} (borderline) with {other}: "
        "inconclusive"
    )


def _fit_field(row: Mapping[str, Any] | None, field: str) -> Any:
    """A field of a row's rank fit, None when the row, the fit or the field is missing (a fit
    without bootstrap has no p-value)."""
    if row is None or not isinstance(row.get("fit"), Mapping) or "error" in row["fit"]:
        return None
    return row["fit"].get(field)


def claims(results: Mapping[str, Any]) -> list[Claim]:
    """Xie et al.'s covariance (2023) and Hessian (2022) power-law claims on the trained
    checkpoint's rank fits (rules: the ``test_rule`` texts)."""
    out = []
    cov = results.get("covariance") or []
    trained, rand = _row(cov, "trained"), _row(cov, "random")
    if trained is not None:
        s, p, n = _fit_field(trained, "s"), _fit_field(trained, "pvalue"), _fit_field(trained, "n")
        s_rand = _fit_field(rand, "s")
        if s is None or p is None or n is None or n < MIN_EIGENVALUES:
            verdict = INCONCLUSIVE
        else:
            verdict = _power_law_verdict(p, s_rand is None or s >= RANDOM_FACTOR * s_rand)
        out.append(
            Claim(
                "Xie et al. 2023",
                "After training, the covariance spectrum of stochastic gradients follows a power "
                "law lambda_k ~ k^-s, unlike a random matrix.",
                verdict,
                f"{trained['label']}: s = {fmt_num(s, digits=3)} over {fmt_num(n)} ranks, CSN "
                f"bootstrap p = {fmt_num(p, digits=3)}; a Gaussian matrix of the same shape "
                f"and trace: s = {fmt_num(s_rand, digits=3)}",
                f"at least {MIN_EIGENVALUES} eigenvalues in the fitted window (else "
                "inconclusive); "
                + _p_rule(f"s at least {fmt_num(RANDOM_FACTOR)} times the Gaussian matrix's s"),
            )
        )
    hess = results.get("hessian") or []
    h_trained, h_init = _row(hess, "trained"), _row(hess, "init")
    if h_trained is not None:
        s, p, n = (
            _fit_field(h_trained, "s"),
            _fit_field(h_trained, "pvalue"),
            _fit_field(h_trained, "n"),
        )
        low, high = HESSIAN_S
        if s is None or p is None or n is None or n < MIN_EIGENVALUES:
            verdict = INCONCLUSIVE
        else:
            verdict = _power_law_verdict(p, low <= s <= high)
        out.append(
            Claim(
                "Xie et al. 2022",
                "The Hessian spectrum of a well-trained network follows a power law with s near "
                "1 (and not at initialisation).",
                verdict,
                f"{h_trained['label']}: s = {fmt_num(s, digits=3)} over the top "
                f"{fmt_num(n)} positive eigenvalues, CSN bootstrap p = {fmt_num(p, digits=3)}"
                f"; at initialisation s = {fmt_num(_fit_field(h_init, 's'), digits=3)}",
                f"at least {MIN_EIGENVALUES} positive eigenvalues fitted (else inconclusive); "
                + _p_rule(f"{fmt_num(low)} <= s <= {fmt_num(high)}")
                + " (the initialisation is shown, not tested)",
            )
        )
    return out


ANALYSIS = Analysis(
    NAME,
    TITLE,
    compute,
    render,
    description="per-sample gradient covariance and top-k Hessian spectra, rank power-law fits "
    "vs init, shuffled-label and random-matrix baselines; minibatch batch-size sweep",
    headline=headline,
    options=resolve_options,
    check=check,
    claims=claims,
)
