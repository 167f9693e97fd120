"""Batched statistics on a gradient store: in memory vs out of core on a Dask cluster.

Run: ``.venv/bin/python benchmarks/dask_stats.py`` (``--quick`` for a smaller store); needs the
``dask`` extra.

A store of T recorded steps x C coordinates (float32, written once with ``RunWriter``) is tested
column by column with each statistic three ways, in one run:

* ``memory``: ``open_run(path).grads`` read into memory, then the statistic on the numpy array
  (this process, its BLAS pinned to one thread);
* ``dask 1w`` / ``dask 2w``: ``open_run(path).to_dask().grads`` handed to the statistic with a
  ``distributed.LocalCluster`` of 1 or 2 worker processes (one thread each, 127.0.0.1) as the
  scheduler: dask's rechunk makes blocks of whole columns, each block is tested on a worker.

Columns per second = C / wall time of the whole call, reading the store included (the cluster's
start is not: it is printed apart). Ratios are against ``memory`` of the same run. Every dask
result is checked equal to the in-memory one. The machine's load average is printed: on a shared
machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _same(a, b) -> bool:
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, float) and np.isnan(a):
        return bool(np.isnan(b))
    return a == b


def _write(path: Path, rows: int, cols: int) -> None:
    from gradnoise.selection import ParamSelection
    from gradnoise.store import RunWriter

    rng = np.random.default_rng(0)
    sel = ParamSelection(names=("w",), shapes=((cols,),), indices=(None,))
    with RunWriter(path, sel) as writer:
        for step in range(rows):
            writer.append(step, rng.standard_t(2.5, size=cols).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller store")
    ap.add_argument("--chunk-size", default="16MiB", help="dask array.chunk-size (column blocks)")
    args = ap.parse_args()

    import dask
    import distributed
    from threadpoolctl import threadpool_limits

    from gradnoise import stats
    from gradnoise.store import open_run

    rows, cols = (200, 20_000) if args.quick else (500, 100_000)
    statistics = [
        ("tail_index", lambda x: stats.tail_index(x)),
        ("normality_test jb", lambda x: stats.normality_test(x, method="jarque_bera")),
        ("fit_stable mcculloch", lambda x: stats.fit_stable(x)),
        ("fit_power_law", lambda x: stats.fit_power_law(abs(x), nonpositive="drop")),
    ]
    if args.quick:
        statistics = statistics[:2] + statistics[3:]
    tmp = Path(tempfile.mkdtemp(prefix="gradnoise-dask-bench-"))
    try:
        path = tmp / "store.zarr"
        t0 = time.perf_counter()
        _write(path, rows, cols)
        print(
            f"store: T={rows} x C={cols} float32 ({rows * cols * 4 / 2**20:.0f} MiB), "
            f"written in {time.perf_counter() - t0:.1f} s; cpus={os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.1f} at start"
        )
        run = open_run(path)
        results: dict[str, dict[str, float]] = {name: {} for name, _ in statistics}
        reference = {}
        with threadpool_limits(1):
            for name, fn in statistics:
                t0 = time.perf_counter()
                reference[name] = fn(open_run(path).grads)
                results[name]["memory"] = cols / (time.perf_counter() - t0)
        for workers in (1, 2):
            t0 = time.perf_counter()
            with (
                dask.config.set({"array.chunk-size": args.chunk_size}),
                distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                client.run(lambda: __import__("gradnoise.stats.powerlaw"))  # warm the imports
                print(f"cluster of {workers} worker(s) started in {time.perf_counter() - t0:.1f} s")
                for name, fn in statistics:
                    t0 = time.perf_counter()
                    res = fn(run.to_dask().grads)
                    results[name][f"dask {workers}w"] = cols / (time.perf_counter() - t0)
                    if not _same(res, reference[name]):
                        raise AssertionError(f"{name}: the dask result differs from memory")
        print(f"load average {os.getloadavg()[0]:.1f} at the end; every dask result == memory\n")
        paths = ["memory", "dask 1w", "dask 2w"]
        head = f"{'statistic':<22}" + "".join(f"{p + ' col/s':>16}" for p in paths)
        head += f"{'1w/mem':>9}{'2w/mem':>9}{'2w/1w':>8}"
        print(head)
        print("-" * len(head))
        for name, r in results.items():
            line = f"{name:<22}" + "".join(f"{r[p]:>16,.0f}" for p in paths)
            line += f"{r['dask 1w'] / r['memory']:>9.2f}{r['dask 2w'] / r['memory']:>9.2f}"
            line += f"{r['dask 2w'] / r['dask 1w']:>8.2f}"
            print(line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
