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

Each row has wall time and the CPU time of this process (all its threads): on a shared machine
wall time includes waiting for a core, so CPU time is the steadier number. The machine's load
average is printed before and after; the ratios measured in one run are the numbers to quote.
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

Times = tuple[float, float]  # (wall seconds, CPU seconds of this process, all threads)


def _start() -> Times:
    return time.perf_counter(), time.process_time()


def _since(t0: Times) -> Times:
    return time.perf_counter() - t0[0], time.process_time() - t0[1]


def _times(t: Times, factor: float) -> Times:
    return t[0] * factor, t[1] * factor


def workload(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    alpha = np.linspace(1.2, 1.9, d)
    sigma = np.geomspace(0.1, 1.0, d)
    h = np.geomspace(0.5, 2.0, d)
    return alpha, sigma, h, 0.1


def ours(n: int, d: int, steps: int, stop: Box | None, workers: int) -> tuple[Times, float]:
    """((wall, CPU) seconds, fraction of paths that exited)."""
    alpha, sigma, h, lr = workload(d)
    h32 = h.astype(np.float32)
    t = _start()
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
    elapsed = _since(t)
    assert np.isfinite(res.final).all()
    return elapsed, float(res.exited.mean())


def per_path_loop(sampler: Callable, paths: int, d: int, steps: int) -> Times:
    """Seconds for ``paths`` paths of ``steps`` steps, one path at a time."""
    alpha, sigma, h, lr = workload(d)
    rng = np.random.default_rng(1)
    t = _start()
    for _ in range(paths):
        theta = np.zeros(d)
        for _ in range(steps):
            theta = theta - lr * h * theta + lr * sigma * sampler(alpha, d, rng)
    return _since(t)


def scipy_vectorised(n: int, d: int, steps: int) -> Times:
    """Seconds for ``steps`` steps of all ``n`` paths, one scipy draw of (n, d) per step."""
    alpha, sigma, h, lr = workload(d)
    rng = np.random.default_rng(2)
    theta = np.zeros((n, d))
    t = _start()
    for _ in range(steps):
        s = stats.levy_stable.rvs(alpha, 0.0, size=(n, d), random_state=rng)
        theta = theta - lr * h * theta + lr * sigma * s
    return _since(t)


def raw_bits(n_words: int) -> Times:
    bg = np.random.SFC64(3)
    chunk = 1 << 20
    t = _start()
    for _ in range(n_words // chunk):
        bg.random_raw(chunk)
    return _since(t)


def uniforms32(n: int) -> Times:
    gen = np.random.Generator(np.random.SFC64(4))
    buf = np.empty(_BLOCK_ELEMS, dtype=np.float32)
    t = _start()
    for _ in range(n // buf.size):
        gen.random(dtype=np.float32, out=buf)
    return _since(t)


def one_transcendental(n: int) -> Times:
    """``np.sin`` in place on a float32 block of ``_BLOCK_ELEMS`` (cache-resident, as in the
    simulation), ``n`` elements in all."""
    buf = np.random.default_rng(5).random(_BLOCK_ELEMS, dtype=np.float32)
    t = _start()
    for _ in range(n // buf.size):
        np.sin(buf, out=buf)
    return _since(t)


def sampler_only(n: int, d: int) -> Times:
    """``n`` variates from simulate_sde's sampler, in blocks of the simulation's shape."""
    alpha, sigma, _, lr = workload(d)
    rows = max(1, _BLOCK_ELEMS // d)
    stream = _SasStream(alpha, lr * sigma, rows, np.dtype(np.float32), np.random.SeedSequence(6))
    out = stream.out
    t = _start()
    for _ in range(n // out.size):
        stream.draw(out)
    return _since(t)


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

    rows: list[tuple[str, Times, str]] = []

    def add(name: str, t: Times, note: str = "") -> None:
        rows.append((name, t, note))
        print(f"  {name:<52} {t[0]:9.1f} s wall {t[1]:9.1f} s CPU  {note}", flush=True)

    add("simulate_sde, no stop, workers=1", ours(n, d, steps, None, 1)[0])
    if cpus > 1:
        add(f"simulate_sde, no stop, workers={cpus}", ours(n, d, steps, None, cpus)[0])
    t, exited = ours(n, d, steps, Box(1e4), 1)
    add("simulate_sde, Box(1e4) stop, workers=1", t, f"({exited:.2%} of paths exited)")
    base = rows[0][1]

    def sample_ours_ref(alpha, size, rng):
        return sample_stable(alpha, size=size, rng=rng)

    def sample_scipy(alpha, size, rng):
        return stats.levy_stable.rvs(alpha, 0.0, size=size, random_state=rng)

    sub_paths, sub_steps = 2, 100
    loop_note = f"(extrapolated from {sub_paths} paths x {sub_steps} steps)"
    factor = n * steps / (sub_paths * sub_steps)
    t = per_path_loop(sample_ours_ref, sub_paths, d, sub_steps)
    add("per-path loop, stats.sample_stable", _times(t, factor), loop_note)
    t = per_path_loop(sample_scipy, sub_paths, d, sub_steps)
    add("per-path loop, scipy levy_stable.rvs", _times(t, factor), loop_note)
    vec_steps = 2
    t = scipy_vectorised(n, d, vec_steps)
    add("vectorised over paths, scipy levy_stable.rvs", _times(t, steps / vec_steps),
        f"(extrapolated from {vec_steps} steps)")  # fmt: skip
    words = 1 << 26
    sub = f"(extrapolated from {words:.3g} values)"
    factor = variates / words
    bits = _times(raw_bits(words), factor)
    add("raw bits only (SFC64.random_raw, 1 word/variate)", bits, sub)
    add("float32 uniforms only (SFC64, 1/variate, 24 bits)", _times(uniforms32(words), factor),
        sub)  # fmt: skip
    sin = _times(one_transcendental(words), factor)
    add("one np.sin pass, float32 in place", sin, sub)
    add("sampler only (_SasStream.draw, 6 transcendentals)",
        _times(sampler_only(words, d), factor), sub)  # fmt: skip
    floor = (bits[0] + sin[0], bits[1] + sin[1])
    add("floor: raw bits + one transcendental, 1 core", floor, "(sum of the two rows above)")
    if cpus > 1:
        add(f"floor / {cpus} cores (perfect scaling)", _times(floor, 1 / cpus))
    print(f"\nload average at the end: {load()}\n")

    print(f"## {n:,} paths x {d:,} coordinates x {steps:,} steps, float32 state\n")
    print(
        "CPU time counts this process's threads only, so on a shared machine it is the steadier "
        "number (wall time includes waiting for a core); for workers > 1 it sums the threads.\n"
    )
    print(
        "| method | wall (s) | CPU (s) | CPU ns / variate | CPU ratio to simulate_sde (workers=1) |"
    )
    print("|---|---|---|---|---|")
    for name, (wall, cpu), note in rows:
        print(
            f"| {name}{' ' + note if note else ''} | {wall:,.1f} | {cpu:,.1f} | "
            f"{cpu / variates * 1e9:.2f} | {cpu / base[1]:,.2f} |"
        )


if __name__ == "__main__":
    main()
