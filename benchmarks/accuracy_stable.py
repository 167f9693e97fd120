"""Accuracy and calibration tables for the alpha-stable, tail-index and normality statistics.

    .venv/bin/python benchmarks/accuracy_stable.py            # full tables (~5-10 min)
    .venv/bin/python benchmarks/accuracy_stable.py --quick    # fewer replicates, no scipy fits

1. alpha estimates on synthetic SαS(alpha, scale 1, loc 0), alpha in {1.1, 1.3, 1.5, 1.7, 1.9,
   2.0}: bias and RMSE per method vs n, over R replicate columns (fit_stable: mcculloch, cf,
   mle, all with the location estimated; tail_index: mohammadi with Simsekli's block size, hill
   with k = round(sqrt(n))), plus the relative RMSE of the scale.
1b. skewed fits (``symmetric=False``) on S0(alpha, beta) data: bias and RMSE of alpha and beta
   for mcculloch, cf and mle (``--only-beta`` runs 1b and 2b alone).
2. scipy's MLE (``levy_stable.fit(x, fbeta=0, floc=0)``, subprocesses with a timeout) on a small
   subset, paired with ours (``loc=0.0``) on the same samples; 2b: scipy's full skewed MLE
   (every parameter free, S0) paired with ours at n = 100, log-likelihoods under the exact
   density.
3. Normality tests: rejection rate at 5% under N(3, 2^2) (R replicates per n; binomial 99% band),
   and power against SαS(1.8), SαS(1.9), Student t(5) and t(10).
4. The pooling artefact (methods.md §8): Mohammadi alpha of Gaussian coordinates whose scales are
   log-normal(0, s), pooled row-major vs per coordinate.
5. compare_noise_models: fraction of columns won by SαS (AIC) per data-generating law.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from gradnoise.stats import (
    compare_noise_models,
    fit_stable,
    normality_test,
    sample_stable,
    tail_index,
)
from gradnoise.stats._stable_skew import s0_logpdf

sys.path.insert(0, str(Path(__file__).parent))
from stable import scipy_mle

ALPHAS = (1.1, 1.3, 1.5, 1.7, 1.9, 2.0)
FIT_METHODS = ("mcculloch", "cf", "mle")


def table_alpha(ns, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    print(f"\n## 1. alpha estimates on SαS(alpha, 1, 0): bias / RMSE over {reps} columns\n")
    methods = [*FIT_METHODS, "mohammadi", "hill"]
    print(
        "| n | alpha | "
        + " | ".join(f"{m} bias / RMSE" for m in methods)
        + " | scale rel. RMSE (mcc / cf / mle) |"
    )
    print("|---|---|" + "---|" * (len(methods) + 1))
    timings = dict.fromkeys(methods, 0.0)
    for n in ns:
        for a in ALPHAS:
            x = sample_stable(a, size=(n, reps), rng=rng)
            cells, scale_cells = [], []
            for m in methods:
                t = time.perf_counter()
                if m in FIT_METHODS:
                    fit = fit_stable(x, method=m)
                    est = fit.alpha
                    scale_cells.append(f"{np.sqrt(np.mean((fit.scale - 1.0) ** 2)):.3f}")
                elif m == "mohammadi":
                    est = tail_index(x).alpha
                else:
                    est = tail_index(x, method="hill").alpha
                timings[m] += time.perf_counter() - t
                bias = np.mean(est) - a
                rmse = np.sqrt(np.mean((est - a) ** 2))
                cells.append(f"{bias:+.3f} / {rmse:.3f}")
            print(f"| {n} | {a} | " + " | ".join(cells) + " | " + " / ".join(scale_cells) + " |")
    print(
        "\nwall time per method over the whole table (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )


def table_scipy(alphas, reps: int, n: int, timeout: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    print(f"\n## 2. scipy's MLE on a subset: n = {n}, {reps} samples per alpha, paired with ours\n")
    print(
        "| alpha | rep | scipy alpha | gradnoise mle alpha | |diff| | gradnoise mcculloch | scipy time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    diffs, err_sc, err_us = [], [], []
    for a in alphas:
        for r in range(reps):
            x = sample_stable(a, size=n, rng=rng)
            ours = fit_stable(x, method="mle", loc=0.0).alpha
            mcc = fit_stable(x, method="mcculloch").alpha
            res = scipy_mle(x, timeout)
            if res is None:
                print(
                    f"| {a} | {r} | timeout (>{timeout:.0f} s) | {ours:.4f} | - | {mcc:.4f} | - |"
                )
                continue
            diffs.append(abs(ours - res["alpha"]))
            err_sc.append(res["alpha"] - a)
            err_us.append(ours - a)
            print(
                f"| {a} | {r} | {res['alpha']:.4f} | {ours:.4f} | {diffs[-1]:.4f} | {mcc:.4f} | "
                f"{res['seconds']:.1f} |"
            )
    if diffs:
        print(
            f"\nRMSE against the truth over {len(diffs)} paired fits: scipy "
            f"{np.sqrt(np.mean(np.square(err_sc))):.4f}, gradnoise {np.sqrt(np.mean(np.square(err_us))):.4f}; "
            f"max |gradnoise - scipy| = {max(diffs):.4f}"
        )


SKEWED = ((1.2, -0.5), (1.5, 0.5), (1.8, 0.9), (0.8, 0.3))


def table_beta(ns, reps: int, seed: int) -> None:
    """Skewed fits on S0 data with known (alpha, beta): bias / RMSE of alpha and beta."""
    rng = np.random.default_rng(seed)
    print(f"\n## 1b. Skewed fits on S0(alpha, beta, 1, 0): bias / RMSE over {reps} columns\n")
    methods = ("mcculloch", "cf", "mle")
    print(
        "| n | alpha | beta | "
        + " | ".join(f"{m} alpha bias / RMSE | {m} beta bias / RMSE" for m in methods)
        + " |"
    )
    print("|---|---|---|" + "---|" * (2 * len(methods)))
    timings = dict.fromkeys(methods, 0.0)
    for n in ns:
        for a, b in SKEWED:
            x = sample_stable(a, b, size=(n, reps), rng=rng, parameterization="S0")
            cells = []
            for m in methods:
                t = time.perf_counter()
                fit = fit_stable(x, method=m, symmetric=False, parameterization="S0")
                timings[m] += time.perf_counter() - t
                for est, true in ((fit.alpha, a), (fit.beta, b)):
                    cells.append(
                        f"{np.mean(est) - true:+.3f} / {np.sqrt(np.mean((est - true) ** 2)):.3f}"
                    )
            print(f"| {n} | {a} | {b} | " + " | ".join(cells) + " |")
    print(
        "\nwall time per method over the whole table (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )


def table_beta_scipy(configs, reps: int, n: int, timeout: float, seed: int) -> None:
    """Paired with scipy's full MLE (alpha, beta, loc, scale free, S0) on small samples."""
    rng = np.random.default_rng(seed)
    print(
        f"\n## 2b. Skewed MLE vs scipy's levy_stable.fit (all free, S0): n = {n}, {reps} "
        "samples per (alpha, beta), paired\n"
    )
    print(
        "| alpha | beta | rep | scipy alpha, beta | gradnoise alpha, beta | "
        "loglik gradnoise - scipy (exact density) | scipy time (s) | gradnoise time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for a, b in configs:
        for r in range(reps):
            x = sample_stable(a, b, size=n, rng=rng, parameterization="S0")
            t = time.perf_counter()
            ours = fit_stable(x, method="mle", symmetric=False, parameterization="S0")
            t_ours = time.perf_counter() - t
            res = scipy_mle(x, timeout, skewed=True)
            if res is None:
                print(f"| {a} | {b} | {r} | timeout (>{timeout:.0f} s) | - | - | - | - |")
                continue
            z = (x - res["loc"]) / res["scale"]
            ll_sc = s0_logpdf(z, res["alpha"], res["beta"]).sum() - n * np.log(res["scale"])
            print(
                f"| {a} | {b} | {r} | {res['alpha']:.4f}, {res['beta']:.4f} | "
                f"{ours.alpha:.4f}, {ours.beta:.4f} | {ours.loglik - ll_sc:+.2e} | "
                f"{res['seconds']:.1f} | {t_ours:.2f} |"
            )


NORMALITY = ("shapiro", "dagostino", "anderson", "jarque_bera", "lilliefors")


def table_calibration(ns, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    print(
        f"\n## 3a. Normality tests: rejection rate at 5% under N(3, 4), {reps} replicates per n\n"
    )
    lo, hi = stats.binom.interval(0.99, reps, 0.05)
    print(f"binomial 99% band: [{lo / reps:.4f}, {hi / reps:.4f}]\n")
    print("| n | " + " | ".join(NORMALITY) + " |")
    print("|---|" + "---|" * len(NORMALITY))
    for n in ns:
        r = reps if n <= 1000 else max(reps // 4, 1000)
        x = rng.normal(3.0, 2.0, size=(n, r))
        cells = []
        for m in NORMALITY:
            rate = np.mean(normality_test(x, method=m).pvalue < 0.05)
            lo_n, hi_n = stats.binom.interval(0.99, r, 0.05)
            flag = "" if lo_n / r <= rate <= hi_n / r else " *"
            cells.append(f"{rate:.4f}{flag}")
        print(f"| {n}{'' if r == reps else f' (R={r})'} | " + " | ".join(cells) + " |")
    print("\n(* outside the binomial 99% band for that row's R)")


def table_power(ns, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    laws = {
        "SαS(1.8)": lambda n: sample_stable(1.8, size=(n, reps), rng=rng),
        "SαS(1.9)": lambda n: sample_stable(1.9, size=(n, reps), rng=rng),
        "t(5)": lambda n: rng.standard_t(5, size=(n, reps)),
        "t(10)": lambda n: rng.standard_t(10, size=(n, reps)),
    }
    print(f"\n## 3b. Power at 5% ({reps} replicates)\n")
    print("| law | n | " + " | ".join(NORMALITY) + " |")
    print("|---|---|" + "---|" * len(NORMALITY))
    for name, draw in laws.items():
        for n in ns:
            x = draw(n)
            cells = [f"{np.mean(normality_test(x, method=m).pvalue < 0.05):.3f}" for m in NORMALITY]
            print(f"| {name} | {n} | " + " | ".join(cells) + " |")


def table_pooling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, d = 100, 2000
    print(f"\n## 4. Pooling artefact: K = {k} Gaussian noise vectors of d = {d} coordinates\n")
    print(
        "| log-normal scale spread s | pooled alpha (Simsekli) | per-coordinate alpha: median [5%, 95%] |"
    )
    print("|---|---|---|")
    for s in (0.0, 0.5, 1.0, 1.5, 2.0):
        x = rng.standard_normal((k, d)) * rng.lognormal(0.0, s, size=d)
        pooled = tail_index(x, pooled=True).alpha
        per = tail_index(x).alpha
        q = np.percentile(per, [5, 50, 95])
        print(f"| {s} | {pooled:.3f} | {q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}] |")


def table_noise_models(ns, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    laws = {
        "N(0, 1)": lambda n: rng.standard_normal((n, reps)),
        "SαS(1.95)": lambda n: sample_stable(1.95, size=(n, reps), rng=rng),
        "SαS(1.9)": lambda n: sample_stable(1.9, size=(n, reps), rng=rng),
        "SαS(1.7)": lambda n: sample_stable(1.7, size=(n, reps), rng=rng),
        "t(5)": lambda n: rng.standard_t(5, size=(n, reps)),
    }
    print(f"\n## 5. compare_noise_models: fraction of {reps} columns won by SαS\n")
    print("| law | n | AIC (mle) | KS (mle) | median alpha (mle) |")
    print("|---|---|---|---|---|")
    for name, draw in laws.items():
        for n in ns:
            x = draw(n)
            aic = compare_noise_models(x)
            ks = compare_noise_models(x, criterion="ks")
            print(
                f"| {name} | {n} | {aic.fraction_stable:.3f} | {ks.fraction_stable:.3f} | "
                f"{np.median(aic.stable_alpha):.3f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scipy-reps", type=int, default=3, help="scipy MLE fits per alpha (0: skip)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--only-beta", action="store_true", help="only the skewed (beta) tables")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.only_beta:
        table_beta((500, 1000), reps=10 if args.quick else 20, seed=6)
        if args.scipy_reps:
            table_beta_scipy(((1.5, 0.5), (1.2, -0.5)), args.scipy_reps, 100, args.timeout, 7)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
        return
    if args.quick:
        table_alpha((200, 1000), reps=50, seed=0)
        table_calibration((50, 500), reps=2000, seed=1)
        table_power((200, 1000), reps=200, seed=2)
        table_pooling(seed=3)
        table_noise_models((1000,), reps=50, seed=4)
    else:
        table_alpha((200, 1000, 5000), reps=200, seed=0)
        table_beta((500, 1000), reps=20, seed=6)
        if args.scipy_reps:
            table_scipy((1.3, 1.7), args.scipy_reps, 200, args.timeout, seed=5)
            table_beta_scipy(((1.5, 0.5), (1.2, -0.5)), args.scipy_reps, 100, args.timeout, 7)
        table_calibration((20, 50, 200, 1000, 5000), reps=10_000, seed=1)
        table_power((50, 200, 1000, 5000), reps=1000, seed=2)
        table_pooling(seed=3)
        table_noise_models((200, 1000, 5000), reps=200, seed=4)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
