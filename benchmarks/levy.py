"""Lévy-driven SDE benchmark: ``gradnoise.levy.simulate_sde`` vs plain loops, one command.

    .venv/bin/python benchmarks/levy.py             # 10,000 paths x 1,000 coordinates x 1,000 steps
    .venv/bin/python benchmarks/levy.py --quick     # 1,000 paths x 1,000 coordinates x 100 steps

Workload: the Euler scheme ``theta <- theta - lr h * theta + lr sigma * S`` of a quadratic
potential (curvatures h_j log-spaced in [0.5, 2], lr = 0.1), S_j ~ SαS(alpha_j) with alpha_j
spread over [1.2, 1.9] and sigma_j log-spaced in [0.1, 1], all paths from 0, nothing recorded
(``record_every=0``; the 10,000 x 1,000 float32 state is 40 MB). Ours runs the whole workload,
with no stop rule and with a box stop wide enough (half-widths 10^4) that few paths leave early
(the table prints the fraction: an exited path stops costing), with ``workers=1`` and
``workers=os.cpu_count()``.

References, the same arithmetic in float64, each timed on a small subset in the same run and
extrapolated linearly (their cost per path-step is flat), which the table marks:

* per-path loop: for each path, for each step, ``gradnoise.stats.sample_stable(alpha, size=d)``
  (the project's general Chambers–Mallows–Stuck sampler) -- timed on a few paths;
* scipy per path: the same loop with ``scipy.stats.levy_stable.rvs(alpha, 0, size=d)``;
* scipy vectorised: one ``levy_stable.rvs(alpha, 0, size=(n_paths, d))`` per step, timed on a few
  steps;
* raw bits: only drawing one 64-bit random word per variate (``SFC64.random_raw``, numpy's
  fastest bit generator), the floor below any exact sampler that uses numpy's generators (ours
  needs one word per float32 variate: 32 bits for the angle, 23 for the exponential, 1 for the
  sign; fewer bits would clip the tail);
* float32 uniforms: ``Generator(SFC64).random(dtype=float32, out=...)``, one per variate (24
  bits: not enough for an exact tail, shown for scale);
* one transcendental pass: ``np.sin`` in place on a float32 block of the simulation's size (the
  sampler makes six such passes: three sines, two logs, one exp);
* sampler only: ``simulate_sde``'s own sampler (``_SasStream.draw``) on one block, no SDE step.

The *floor* printed last is raw bits + one transcendental pass per variate, on one core and
divided by the number of cores (perfect scaling): no exact Chambers–Mallows–Stuck sampler can
beat it with numpy's generators, since it needs at least the bits and one transcendental per
variate (it needs several).

The machine's load average is printed before and after: on a shared machine the ratios measured
in one run are the numbers to quote, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
from scipy import stats

from gradnoise.levy import _BLOCK_ELEMS, Box, _SasStream, simulate_sde
from gradnoise.stats import sample_stable


def workload(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    alpha = np.linspace(1.2, 1.9, d)
    sigma = np.geomspace(0.1, 1.0, d)
    h = np.geomspace(0.5, 2.0, d)
    return alpha, sigma, h, 0.1


def ours(n: int, d: int, steps: int, stop: Box | None, workers: int) -> tuple[float, float]:
    """(seconds, fraction of paths that exited)."""
    alpha, sigma, h, lr = workload(d)
    h32 = h.astype(np.float32)
    t = time.perf_counter()
    res = simulate_sde(
        lambda x: x * h32,
        np.zeros(d),
        alpha=alpha,
        scale=sigma,
        lr=lr,
        steps=steps,
        rng=0,
        n_paths=n,
        stop=stop,
        record_every=0,
        workers=workers,
    )
    elapsed = time.perf_counter() - t
    assert np.isfinite(res.final).all()
    return elapsed, float(res.exited.mean())


def per_path_loop(sampler: Callable, paths: int, d: int, steps: int) -> float:
    """Seconds for ``paths`` paths of ``steps`` steps, one path at a time."""
    alpha, sigma, h, lr = workload(d)
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    for _ in range(paths):
        theta = np.zeros(d)
        for _ in range(steps):
            theta = theta - lr * h * theta + lr * sigma * sampler(alpha, d, rng)
    return time.perf_counter() - t


def scipy_vectorised(n: int, d: int, steps: int) -> float:
    """Seconds for ``steps`` steps of all ``n`` paths, one scipy draw of (n, d) per step."""
    alpha, sigma, h, lr = workload(d)
    rng = np.random.default_rng(2)
    theta = np.zeros((n, d))
    t = time.perf_counter()
    for _ in range(steps):
        s = stats.levy_stable.rvs(alpha, 0.0, size=(n, d), random_state=rng)
        theta = theta - lr * h * theta + lr * sigma * s
    return time.perf_counter() - t


def raw_bits(n_words: int) -> float:
    bg = np.random.SFC64(3)
    chunk = 1 << 20
    t = time.perf_counter()
    for _ in range(n_words // chunk):
        bg.random_raw(chunk)
    return time.perf_counter() - t


def uniforms32(n: int) -> float:
    gen = np.random.Generator(np.random.SFC64(4))
    buf = np.empty(_BLOCK_ELEMS, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(n // buf.size):
        gen.random(dtype=np.float32, out=buf)
    return time.perf_counter() - t


def one_transcendental(n: int) -> float:
    """``np.sin`` in place on a float32 block of ``_BLOCK_ELEMS`` (cache-resident, as in the
    simulation), ``n`` elements in all."""
    buf = np.random.default_rng(5).random(_BLOCK_ELEMS, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(n // buf.size):
        np.sin(buf, out=buf)
    return time.perf_counter() - t


def sampler_only(n: int, d: int) -> float:
    """``n`` variates from simulate_sde's sampler, in blocks of the simulation's shape."""
    alpha, sigma, _, lr = workload(d)
    rows = max(1, _BLOCK_ELEMS // d)
    stream = _SasStream(alpha, lr * sigma, rows, np.dtype(np.float32), np.random.SeedSequence(6))
    out = stream.out
    t = time.perf_counter()
    for _ in range(n // out.size):
        stream.draw(out)
    return time.perf_counter() - t


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, d, steps = (1_000, 1_000, 100) if args.quick else (10_000, 1_000, 1_000)
    variates = n * d * steps
    cpus = os.cpu_count() or 1
    print(
        f"numpy {np.__version__}, scipy {__import__('scipy').__version__}, "
        f"{platform.processor() or platform.machine()}, {cpus} CPUs"
    )
    print(f"workload: {n:,} paths x {d:,} coordinates x {steps:,} steps = {variates:.3g} variates")
    print(f"load average (1/5/15 min) at start: {load()}\n")

    rows: list[tuple[str, float, str]] = []

    def add(name: str, seconds: float, note: str = "") -> None:
        rows.append((name, seconds, note))
        print(f"  {name:<44} {seconds:10.1f} s  {note}", flush=True)

    add("simulate_sde, no stop, workers=1", ours(n, d, steps, None, 1)[0])
    if cpus > 1:
        add(f"simulate_sde, no stop, workers={cpus}", ours(n, d, steps, None, cpus)[0])
    seconds, exited = ours(n, d, steps, Box(1e4), 1)
    add("simulate_sde, Box(1e4) stop, workers=1", seconds, f"({exited:.2%} of paths exited)")
    base = rows[0][1]

    def sample_ours_ref(alpha, size, rng):
        return sample_stable(alpha, size=size, rng=rng)

    def sample_scipy(alpha, size, rng):
        return stats.levy_stable.rvs(alpha, 0.0, size=size, random_state=rng)

    sub_paths, sub_steps = 2, 100
    per = per_path_loop(sample_ours_ref, sub_paths, d, sub_steps) / (sub_paths * sub_steps)
    add(
        "per-path loop, stats.sample_stable",
        per * n * steps,
        f"(extrapolated from {sub_paths} paths x {sub_steps} steps)",
    )
    per = per_path_loop(sample_scipy, sub_paths, d, sub_steps) / (sub_paths * sub_steps)
    add(
        "per-path loop, scipy levy_stable.rvs",
        per * n * steps,
        f"(extrapolated from {sub_paths} paths x {sub_steps} steps)",
    )
    vec_steps = 2
    per = scipy_vectorised(n, d, vec_steps) / vec_steps
    add(
        "vectorised over paths, scipy levy_stable.rvs",
        per * steps,
        f"(extrapolated from {vec_steps} steps)",
    )
    words = 1 << 26
    sub = f"(extrapolated from {words:.3g} values)"
    bits = raw_bits(words) / words * variates
    add("raw bits only (SFC64.random_raw, 1 word/variate)", bits, sub)
    add("float32 uniforms only (SFC64, 1/variate, 24 bits)", uniforms32(words) / words * variates,
        sub)  # fmt: skip
    sin = one_transcendental(words) / words * variates
    add("one np.sin pass, float32 in place", sin, sub)
    add("sampler only (_SasStream.draw, 6 transcendentals)", sampler_only(words, d) / words
        * variates, sub)  # fmt: skip
    floor = bits + sin
    add("floor: raw bits + one transcendental, 1 core", floor, "(sum of the two rows above)")
    if cpus > 1:
        add(f"floor / {cpus} cores (perfect scaling)", floor / cpus)
    print(f"\nload average at the end: {load()}\n")

    print(f"## {n:,} paths x {d:,} coordinates x {steps:,} steps, float32 state\n")
    print("| method | time (s) | ns / variate | ratio to simulate_sde (workers=1) |")
    print("|---|---|---|---|")
    for name, seconds, note in rows:
        print(
            f"| {name}{' ' + note if note else ''} | {seconds:,.1f} | "
            f"{seconds / variates * 1e9:.2f} | {seconds / base:,.2f} |"
        )


if __name__ == "__main__":
    main()
