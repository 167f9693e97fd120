"""Alpha-stable / tail-index benchmark: gradnoise vs scipy, side by side, one command.

    .venv/bin/python benchmarks/stable.py             # full run (~15 min, mostly scipy's MLE)
    .venv/bin/python benchmarks/stable.py --quick     # 20,000 coordinates, 1 scipy fit

Part 1, throughput on SGN-shaped data: 100,000 coordinates x 1,000 samples (float32, SαS(1.7)
columns, scales spread log-normally), per method the wall time for all coordinates and its
ratio to a per-column reference measured in the same run on a subset and scaled linearly:
scipy's (private) ``levy_stable._fitstart`` for McCulloch, a numpy loop for the tail indices,
scipy's normality tests one column at a time.

The MLE is timed on all coordinates at once (the batched search of ``_stable_mle``), and in the
same run, on subsets scaled linearly: the per-column path (``fit_stable(x[:, j], method="mle")``
column by column), the previous implementation (a Newton optimisation at every visited node,
loaded from git ``--previous``, default 69db65f) and scipy's ``levy_stable.fit(x, fbeta=0,
floc=0)`` per column (Part 2's fits at n = 1,000). The load average is printed before and after.

Part 2, maximum likelihood against ``scipy.stats.levy_stable.fit(x, fbeta=0, floc=0)`` (the
fastest scipy variant measured in perf-baselines.md §3) run in subprocesses with timeouts:
(a) time per fit at n = 1,000; (b) paired accuracy: the same SαS samples (n = 200) fitted by both,
alpha RMSE of each against the truth and their ratio. Ours is ``fit_stable(x, method="mle",
loc=0.0)``, the same model (beta = 0, loc = 0 fixed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from scipy import stats

from gradnoise.stats import fit_stable, normality_test, sample_stable, tail_index
from gradnoise.stats._stable_density import get_table

SCIPY_FIT = """
import json, sys, time, warnings
import numpy as np
from scipy.stats import levy_stable
warnings.simplefilter("ignore")
x = np.load(sys.argv[1])
t = time.perf_counter()
if sys.argv[2] == "skewed":  # alpha, beta, loc, scale free, S0
    levy_stable.parameterization = "S0"
    a, b, loc, scale = levy_stable.fit(x)
else:
    a, b, loc, scale = levy_stable.fit(x, fbeta=0, floc=0)
print(json.dumps({"alpha": float(a), "beta": float(b), "loc": float(loc), "scale": float(scale),
                  "seconds": time.perf_counter() - t}))
"""


def scipy_mle(x: np.ndarray, timeout: float, skewed: bool = False) -> dict | None:
    """scipy's MLE in a fresh subprocess (``fbeta=0, floc=0``, or every parameter free in S0
    with ``skewed``); None on timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, x)
        try:
            out = subprocess.run(
                [sys.executable, "-c", SCIPY_FIT, str(path), "skewed" if skewed else "sas"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
        except subprocess.TimeoutExpired:
            return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_sgn(n: int, d: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    scales = rng.lognormal(-3.0, 1.0, size=d)
    step = 10_000
    for c in range(0, d, step):
        sl = slice(c, min(c + step, d))
        x[:, sl] = sample_stable(alpha, 0.0, scales[sl], size=(n, sl.stop - sl.start), rng=rng)
    return x


def ref_loop(fn, x: np.ndarray) -> None:
    for j in range(x.shape[1]):
        fn(x[:, j])


def mohammadi_numpy(col: np.ndarray, m: int = 25) -> float:
    col = col.astype(np.float64)
    y = col.reshape(-1, m).sum(axis=1)
    eps = np.spacing(1)
    return 1.0 / ((np.log(np.abs(y) + eps).mean() - np.log(np.abs(col) + eps).mean()) / np.log(m))


def hill_numpy(col: np.ndarray, k: int = 32) -> float:
    a = np.sort(np.abs(col.astype(np.float64)))[::-1]
    return k / np.log(a[:k] / a[k]).sum()


def part1(d: int, n: int, sub: int) -> tuple[list[tuple], np.ndarray]:
    t = time.perf_counter()
    x = make_sgn(n, d, 1.7, seed=0)
    print(
        f"data: {n} samples x {d} coordinates float32 (generated in {time.perf_counter() - t:.1f} s)"
    )
    xs = x[:, :sub]
    rows = []

    def row(name, ours_fn, ref_name, ref_fn, note=""):
        ours = timed(ours_fn)
        ref = timed(ref_fn) * (d / sub) if ref_fn is not None else float("nan")
        rows.append((name, ours, ref_name, ref, ref / ours if ref_fn is not None else None, note))
        print(f"  {name:<32} {ours:8.2f} s   {ref_name:<34} {ref:9.1f} s")

    row(
        "fit_stable mcculloch",
        lambda: fit_stable(x, method="mcculloch"),
        f"scipy _fitstart loop (x{d // sub})",
        lambda: ref_loop(stats.levy_stable._fitstart, xs),
    )
    row(
        "tail_index mohammadi (m=25)",
        lambda: tail_index(x, block_size=25),
        f"numpy per-column loop (x{d // sub})",
        lambda: ref_loop(mohammadi_numpy, xs),
    )
    row(
        "tail_index hill (k=32)",
        lambda: tail_index(x, method="hill", k=32),
        f"numpy per-column loop (x{d // sub})",
        lambda: ref_loop(hill_numpy, xs),
    )
    row("fit_stable cf", lambda: fit_stable(x, method="cf"), "-", None)
    for method, fn in [
        ("anderson", lambda c: stats.anderson(c, method="interpolate")),
        ("shapiro", stats.shapiro),
        ("dagostino", stats.normaltest),
    ]:
        row(
            f"normality_test {method}",
            lambda method=method: normality_test(x, method=method),
            f"scipy per-column loop (x{d // sub})",
            lambda fn=fn: ref_loop(fn, xs),
        )
    return rows, x


def previous_mle(rev: str):
    """``fit_sas_mle`` of the implementation at git revision ``rev`` (None if unavailable)."""
    root = Path(__file__).resolve().parent.parent
    try:
        src = subprocess.run(
            ["git", "show", f"{rev}:src/gradnoise/stats/_stable_mle.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    src = src.replace("from ._stable_density import", "from gradnoise.stats._stable_density import")
    mod = types.ModuleType(f"previous_stable_mle_{rev}")
    exec(compile(src, f"{rev}:_stable_mle.py", "exec"), mod.__dict__)
    return mod.fit_sas_mle


def mle_paths(x: np.ndarray, pc_cols: int, prev_cols: int, rev: str) -> dict:
    """The batched MLE on all columns, and the per-column and previous paths on subsets."""
    d = x.shape[1]
    out = {"load_before": os.getloadavg()[0]}
    times = []
    for _ in range(2):
        t = time.perf_counter()
        fit = fit_stable(x, method="mle")
        times.append(time.perf_counter() - t)
    out["batched"] = min(times)
    out["batched_runs"] = times
    out["median_alpha"] = float(np.median(fit.alpha))
    xs = x[:, :pc_cols]
    t = time.perf_counter()
    for j in range(pc_cols):
        fit_stable(xs[:, j], method="mle")
    out["per_column"] = (time.perf_counter() - t) * d / pc_cols
    prev = previous_mle(rev)
    if prev is not None:
        xp = x[:, :prev_cols]
        t = time.perf_counter()
        mcc = fit_stable(xp, method="mcculloch")  # its starting values, as fit_stable did
        alpha, _, _, _ = prev(xp.astype(np.float64), mcc.alpha, mcc.scale, mcc.loc, True)
        out["previous"] = (time.perf_counter() - t) * d / prev_cols
        new = fit_stable(xp, method="mle").alpha
        out["previous_max_diff"] = float(np.max(np.abs(new - alpha)))
    out["load_after"] = os.getloadavg()[0]
    print(
        f"  fit_stable mle (all {d:,} columns at once)  {out['batched']:8.2f} s  (runs "
        + ", ".join(f"{v:.2f}" for v in times)
        + f"); per-column path (x{d // pc_cols}) {out['per_column']:.1f} s"
        + (f"; previous (x{d // prev_cols}) {out['previous']:.1f} s" if "previous" in out else "")
    )
    return out


def part2(n_time: int, n_time_fits: int, n_acc: int, acc_alphas, acc_reps: int, timeout: float):
    print("\nscipy levy_stable.fit(x, fbeta=0, floc=0) in subprocesses ...")
    rng = np.random.default_rng(1)
    # (a) speed at n = n_time
    sc_times, our_times, first = [], [], None
    for i in range(n_time_fits):
        x = sample_stable(1.7, size=n_time, rng=rng)
        if first is None:
            get_table.cache_clear()
            t = time.perf_counter()
            fit_stable(x, method="mle", loc=0.0)
            first = time.perf_counter() - t
        our_times.append(timed(lambda x=x: fit_stable(x, method="mle", loc=0.0), repeats=5))
        res = scipy_mle(x, timeout)
        sc_times.append(res["seconds"] if res else float("inf"))
        print(
            f"  n={n_time} fit {i}: scipy {sc_times[-1]:.1f} s, ours {our_times[-1] * 1e3:.1f} ms"
        )
    # (b) paired accuracy at n = n_acc
    pairs = []
    for a in acc_alphas:
        for r in range(acc_reps):
            x = sample_stable(a, size=n_acc, rng=rng)
            ours = fit_stable(x, method="mle", loc=0.0)
            res = scipy_mle(x, timeout)
            pairs.append((a, ours.alpha, res["alpha"] if res else float("nan")))
            print(
                f"  alpha={a} rep {r}: scipy {pairs[-1][2]:.4f} "
                f"({res['seconds'] if res else float('nan'):.1f} s), ours {ours.alpha:.4f}"
            )
    return sc_times, our_times, first, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=300.0, help="per scipy fit (s)")
    ap.add_argument("--previous", default="69db65f", help="git revision of the previous MLE")
    args = ap.parse_args()
    d = 20_000 if args.quick else 100_000
    print(f"numpy {np.__version__}, scipy {__import__('scipy').__version__}")
    t = time.perf_counter()
    get_table()
    print(f"SαS table built in {time.perf_counter() - t:.2f} s (once per process)\n")
    print("Part 1: throughput, all coordinates")
    rows, x = part1(d=d, n=1000, sub=200 if args.quick else 500)
    mle = mle_paths(x, pc_cols=200, prev_cols=500 if args.quick else 2000, rev=args.previous)
    del x
    if args.quick:
        sc_times, our_times, first, pairs = part2(1000, 1, 200, (1.5,), 1, args.timeout)
    else:
        sc_times, our_times, first, pairs = part2(
            1000, 3, 200, (1.1, 1.3, 1.5, 1.7, 1.9), 3, args.timeout
        )

    print(f"\n## Throughput: {d:,} coordinates x 1,000 samples (float32), 2 shared CPU cores\n")
    print("| method | gradnoise (s) | reference | reference (s) | speed-up |")
    print("|---|---|---|---|---|")
    for name, ours, ref_name, ref, ratio, note in rows:
        r = f"{ratio:,.0f}x" if ratio else "-"
        rs = f"{ref:,.1f}" if np.isfinite(ref) else "-"
        print(
            f"| {name} | {ours:.2f}{' (' + note + ')' if note else ''} | {ref_name} | {rs} | {r} |"
        )

    sc = [s for s in sc_times if np.isfinite(s)]
    ours_med = statistics.median(our_times)
    sc_med = statistics.median(sc) if sc else float("inf")
    b = mle["batched"]
    print(
        f"\n## MLE, {d:,} coordinates x 1,000 samples (float32, alpha, scale and location "
        f"fitted), load average {mle['load_before']:.2f} before, {mle['load_after']:.2f} after\n"
    )
    print("| path | time (s) | how | ratio to batched |")
    print("|---|---|---|---|")
    print(
        f"| batched (fit_stable on all columns) | {b:.2f} | best of "
        + ", ".join(f"{v:.2f}" for v in mle["batched_runs"])
        + f" (median alpha {mle['median_alpha']:.4f}) | 1 |"
    )
    print(
        f"| per-column path (fit_stable column by column) | {mle['per_column']:,.1f} | "
        f"200 columns, x{d // 200} | {mle['per_column'] / b:,.0f}x |"
    )
    if "previous" in mle:
        print(
            f"| previous implementation ({args.previous}) | {mle['previous']:,.1f} | "
            f"{500 if args.quick else 2000} columns, x{d // (500 if args.quick else 2000)}; "
            f"max alpha difference {mle['previous_max_diff']:.1e} | {mle['previous'] / b:,.0f}x |"
        )
    else:
        print(f"| previous implementation ({args.previous}) | - | not in git here | - |")
    print(
        f"| scipy levy_stable.fit(fbeta=0, floc=0) per column | {sc_med * d:,.0f} | "
        f"median of {len(sc)} fit(s) at n = 1,000 (Part 2), x{d:,}; location fixed, so less "
        f"work than ours | {sc_med * d / b:,.0f}x |"
    )
    print("\n## MLE speed, one column of n = 1,000 (SαS(1.7)), beta = 0 and loc = 0 fixed\n")
    print("| | time per fit | ratio |")
    print("|---|---|---|")
    timeouts = len(sc_times) - len(sc)
    print(
        f"| scipy levy_stable.fit | {sc_med:.1f} s (median of {len(sc)}"
        f"{f', {timeouts} timed out' if timeouts else ''}) | 1 |"
    )
    print(
        f"| gradnoise fit_stable mle | {ours_med * 1e3:.1f} ms | {sc_med / ours_med:,.0f}x faster |"
    )
    print(
        f"| gradnoise, first call (builds the table) | {first:.2f} s | {sc_med / first:,.0f}x faster |"
    )

    arr = np.array(pairs, dtype=float)
    ok = np.isfinite(arr[:, 2])
    truth, ours_a, sc_a = arr[ok, 0], arr[ok, 1], arr[ok, 2]
    print(f"\n## MLE accuracy, paired: the same {ok.sum()} samples of n = 200 fitted by both\n")
    print("| alpha | fits | RMSE scipy | RMSE gradnoise | ratio | max abs(ours - scipy) |")
    print("|---|---|---|---|---|---|")
    for a in np.unique(truth):
        s = truth == a
        r_sc = np.sqrt(np.mean((sc_a[s] - a) ** 2))
        r_us = np.sqrt(np.mean((ours_a[s] - a) ** 2))
        print(
            f"| {a} | {s.sum()} | {r_sc:.4f} | {r_us:.4f} | {r_us / r_sc:.2f} | "
            f"{np.max(np.abs(ours_a[s] - sc_a[s])):.4f} |"
        )
    r_sc = np.sqrt(np.mean((sc_a - truth) ** 2))
    r_us = np.sqrt(np.mean((ours_a - truth) ** 2))
    print(
        f"| all | {ok.sum()} | {r_sc:.4f} | {r_us:.4f} | {r_us / r_sc:.2f} | "
        f"{np.max(np.abs(ours_a - sc_a)):.4f} |"
    )


if __name__ == "__main__":
    main()
