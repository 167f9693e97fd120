"""Alpha-stable / tail-index benchmark: gradnoise vs scipy, side by side, one command.

    .venv/bin/python benchmarks/stable.py             # full run (~10-15 min, mostly scipy's MLE)
    .venv/bin/python benchmarks/stable.py --quick     # 20,000 coordinates, 2 scipy fits

Part 1, throughput on SGN-shaped data: 100,000 coordinates x 1,000 samples (float32, SαS(1.7)
columns, scales spread log-normally), per method the wall time for all coordinates and its
ratio to a per-column reference measured in the same run on a subset and scaled linearly:
scipy's (private) ``levy_stable._fitstart`` for McCulloch, a numpy loop for the tail indices,
scipy's normality tests one column at a time. The MLE is timed on a subset (its per-column cost is
flat) and extrapolated; the extrapolation is marked.

Part 2, maximum likelihood against ``scipy.stats.levy_stable.fit(x, fbeta=0, floc=0)`` (the
fastest scipy variant measured in perf-baselines.md §3) run in subprocesses with timeouts:
(a) time per fit at n = 1,000; (b) paired accuracy: the same SαS samples (n = 200) fitted by both,
alpha RMSE of each against the truth and their ratio. Ours is ``fit_stable(x, method="mle",
loc=0.0)``, the same model (beta = 0, loc = 0 fixed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
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
a, b, loc, scale = levy_stable.fit(x, fbeta=0, floc=0)
print(json.dumps({"alpha": float(a), "scale": float(scale), "seconds": time.perf_counter() - t}))
"""


def scipy_mle(x: np.ndarray, timeout: float) -> dict | None:
    """scipy's MLE in a fresh subprocess; None on timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, x)
        try:
            out = subprocess.run(
                [sys.executable, "-c", SCIPY_FIT, str(path)],
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


def part1(d: int, n: int, sub: int, mle_cols: int) -> list[tuple]:
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
    # MLE: measured on mle_cols columns, extrapolated
    xm = x[:, :mle_cols]
    per = timed(lambda: fit_stable(xm, method="mle")) / mle_cols
    rows.append(
        ("fit_stable mle", per * d, "-", float("nan"), None, f"extrapolated from {mle_cols} cols")
    )
    print(f"  {'fit_stable mle':<32} {per * d:8.2f} s   (extrapolated from {mle_cols} columns)")
    return rows


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
    args = ap.parse_args()
    d = 20_000 if args.quick else 100_000
    print(f"numpy {np.__version__}, scipy {__import__('scipy').__version__}")
    t = time.perf_counter()
    get_table()
    print(f"SαS table built in {time.perf_counter() - t:.2f} s (once per process)\n")
    print("Part 1: throughput, all coordinates")
    rows = part1(d=d, n=1000, sub=200 if args.quick else 500, mle_cols=500)
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
    print("\n## MLE speed, one column of n = 1,000 (SαS(1.7)), beta = 0 and loc = 0 fixed\n")
    print("| | time per fit | ratio |")
    print("|---|---|---|")
    sc_med = statistics.median(sc) if sc else float("inf")
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
