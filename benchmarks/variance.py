"""Gradient Clustering: cost of a re-clustering pass and of a GC step vs a plain SGD step, and the
variance ratios GC / SG-B and SG-2B / SG-B measured on the same models.

Run: ``.venv/bin/python benchmarks/variance.py`` (``--quick`` for a smaller run).

Costs (float32, CPU, batch B = C clusters, wall-clock medians):

* ``sgd step``: fetch a uniform minibatch, forward, backward, ``optimizer.step()``.
* ``gc step``: the same with a stratified batch from :class:`gradnoise.GradientClusteringSampler`
  and the weighted loss ``mean(w * loss_i)``.
* ``pass rank1``: one re-clustering pass over the training set (``iters=1``) with the rank-1
  distance formulas (no per-example gradients).
* ``pass full``: the same pass with full centres (``centers="full"``: per-example gradients via
  :func:`gradnoise.per_sample_grads`), i.e. what the rank-1 trick avoids.

Variance (exact, from every per-example gradient, accumulated in float64 chunk by chunk): the
trace of the covariance of the GC estimator (one example per cluster) and of SG with B and 2B
examples drawn without replacement, at initialisation and after plain-SGD training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import gradnoise
from gradnoise.clustering import GradientClustering, GradientClusteringSampler
from gradnoise.datasets import as_tensors
from gradnoise.variance import gradient_variance, stratified_minibatch_variance

LOSS = torch.nn.CrossEntropyLoss()
PER_EXAMPLE = torch.nn.CrossEntropyLoss(reduction="none")


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _build(dataset: str, model: str, seed: int = 0):
    d = gradnoise.load_dataset(dataset)
    x, y = as_tensors(d.train)
    kw = {"widths": (128,)} if model == "mlp" else {}
    net = gradnoise.build_model(model, d.input_shape, d.num_classes, seed=seed, **kw)
    return net, x, y


def _train(net, x, y, steps: int, batch: int, lr: float, seed: int = 0) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.as_tensor(rng.choice(len(x), batch, replace=False))
        opt.zero_grad()
        LOSS(net(x[idx]), y[idx]).backward()
        opt.step()


def costs(dataset: str, model: str, batch: int, repeats: int) -> dict[str, float]:
    """Median wall-clock (ms) of one epoch of SGD steps, of GC steps, and of clustering passes."""
    net, x, y = _build(dataset, model)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: every step sees the same parameters
    rng = np.random.default_rng(0)
    n = len(x)
    steps = n // batch

    def sgd_epoch() -> None:
        for _ in range(steps):
            idx = torch.as_tensor(rng.choice(n, batch, replace=False))
            opt.zero_grad()
            LOSS(net(x[idx]), y[idx]).backward()
            opt.step()

    sampler = GradientClusteringSampler(net, LOSS, (x, y), batch_size=batch, rng=0)
    sampler.recluster()

    def gc_epoch() -> None:
        for _ in range(steps):
            idx, w = sampler.sample()
            it = torch.as_tensor(idx)
            opt.zero_grad()
            wt = torch.as_tensor(w, dtype=torch.float32)
            (wt * PER_EXAMPLE(net(x[it]), y[it])).mean().backward()
            opt.step()

    rank1 = GradientClustering(net, LOSS, batch, rng=0)
    rank1.fit((x, y))
    full = GradientClustering(net, LOSS, batch, rng=0, centers="full")
    full.fit((x, y))
    return {
        "sgd_epoch": _median_ms(sgd_epoch, repeats),
        "gc_epoch": _median_ms(gc_epoch, repeats),
        "rank1": _median_ms(lambda: rank1.fit((x, y)), repeats),
        "full": _median_ms(lambda: full.fit((x, y)), max(1, repeats // 2)),
        "steps": steps,
        "n": n,
        "params": sum(p.numel() for p in net.parameters()),
    }


def _streamed_variances(net, x, y, assignment: np.ndarray, batch: int) -> tuple[float, ...]:
    """Exact traces of Var(SG-B), Var(SG-2B), Var(GC with B = C) from chunked per-example grads.

    Per cluster k: sums S_k and sums of squares Q_k of the per-example gradients (float64).
    """
    k = int(assignment.max()) + 1
    p = sum(q.numel() for q in net.parameters())
    s = np.zeros((k, p))
    q = np.zeros((k, p))
    for start in range(0, len(x), 256):
        g = gradnoise.per_sample_grads(net, LOSS, x[start : start + 256], y[start : start + 256])
        g64 = g.double().numpy()
        a = assignment[start : start + 256]
        np.add.at(s, a, g64)
        np.add.at(q, a, g64 * g64)
    n = len(x)
    sizes = np.bincount(assignment, minlength=k).astype(float)
    total = s.sum(0)
    pop_var = (q.sum(0) - total**2 / n) / n  # 1/N population variance per coordinate
    sg = [float(pop_var.sum() * (n - b) / (b * (n - 1))) for b in (batch, 2 * batch)]
    nz = sizes > 0
    m = int(nz.sum())
    if batch % m:  # the exact formula needs B / M examples from every cluster
        return sg[0], sg[1], float("nan")
    qb = batch // m
    nk = sizes[nz]
    within = (q[nz] - s[nz] ** 2 / nk[:, None]) / nk[:, None]  # sigma_k^2 (1/N_k)
    fpc = np.where(
        nk >= qb, np.where(nk > 1, (nk - qb) / (qb * np.maximum(nk - 1, 1)), 0.0), 1 / qb
    )
    gc = float((((nk / n) ** 2 * fpc) @ within).sum())
    return sg[0], sg[1], gc


def _check_streaming() -> None:
    """The streamed formula equals the library's tested functions on a small case."""
    net, x, y = _build("digits", "mlp")
    x, y = x[:300], y[:300]
    res = GradientClustering(net, LOSS, 10, rng=0).fit((x, y))
    g = gradnoise.per_sample_grads(net, LOSS, x, y).double().numpy()
    sg, sg2, gc = _streamed_variances(net, x, y, res.assignment, 10)
    ref = (
        gradient_variance(g, batch_size=10, replace=False).total,
        gradient_variance(g, batch_size=20, replace=False).total,
        stratified_minibatch_variance(g, res.assignment, batch_size=res.num_clusters).total,
    )
    assert res.num_clusters == 10
    np.testing.assert_allclose((sg, sg2, gc), ref, rtol=1e-6)


def variance_ratios(dataset: str, model: str, batch: int, steps: int, lr: float) -> list[dict]:
    net, x, y = _build(dataset, model)
    rows = []
    done = 0
    for target in (0, steps):
        _train(net, x, y, target - done, 32, lr, seed=target)
        done = target
        res = GradientClustering(net, LOSS, batch, rng=0).fit((x, y), iters=2)
        m = res.num_clusters
        sg, sg2, gc = _streamed_variances(net, x, y, res.assignment, batch)
        rows.append(
            {
                "step": target,
                "clusters": m,
                "gc/sg": gc / sg,
                "sg2b/sg": sg2 / sg,
                "bound/sg": res.variance_bound / sg,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and training steps")
    parser.add_argument("--batch", type=int, default=64, help="B = number of clusters C")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    steps = 300 if args.quick else 1000
    cases = [(d, m) for d in ("digits", "mnist1d") for m in ("mlp", "lenet")]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B = C = {args.batch}")
    _check_streaming()
    print(
        f"\nCost (median of {repeats} repeats, float32, CPU, {torch.get_num_threads()} thread(s))"
    )
    header = (
        f"{'dataset':8} {'model':6} {'N':>5} {'params':>7} {'sgd ms':>7} {'gc ms':>7} "
        f"{'gc/sgd':>7} {'pass ms':>8} {'pass/sgd':>9} {'pass/epoch':>10} {'full ms':>8} "
        f"{'full/rank1':>10}"
    )
    print(header)
    print("-" * len(header))
    for dataset, model in cases:
        c = costs(dataset, model, args.batch, repeats)
        sgd, gc = c["sgd_epoch"] / c["steps"], c["gc_epoch"] / c["steps"]
        print(
            f"{dataset:8} {model:6} {c['n']:>5} {c['params']:>7} {sgd:>7.2f} {gc:>7.2f} "
            f"{gc / sgd:>7.2f} {c['rank1']:>8.1f} {c['rank1'] / sgd:>9.1f} "
            f"{c['rank1'] / c['sgd_epoch']:>10.2f} {c['full']:>8.1f} {c['full'] / c['rank1']:>10.2f}"
        )
    print(
        "\nsgd ms / gc ms: one step (an epoch of N // B steps timed as a block, divided); gc/sgd: "
        "their ratio; pass ms: one re-clustering pass over the N training examples (rank-1 "
        "centres); pass/sgd: in SGD steps; pass/epoch: in epochs of SGD steps; full/rank1: a pass "
        "with full centres (per-example gradients) relative to the rank-1 pass."
    )
    print(f"\nExact variance ratios (trace), B = C = {args.batch}, lr 0.1, batch 32 training")
    header = f"{'dataset':8} {'model':6} {'step':>5} {'M':>4} {'GC/SG-B':>8} {'SG-2B/SG-B':>10} {'bound/SG-B':>10}"
    print(header)
    print("-" * len(header))
    for dataset, model in cases:
        for r in variance_ratios(dataset, model, args.batch, steps, lr=0.1):
            print(
                f"{dataset:8} {model:6} {r['step']:>5} {r['clusters']:>4} {r['gc/sg']:>8.3f} "
                f"{r['sg2b/sg']:>10.3f} {r['bound/sg']:>10.3f}"
            )
    print(
        "\nGC/SG-B < 1: stratified sampling on the clustering beats uniform sampling at the same B "
        "(nan if B is not a multiple of the M non-empty clusters); bound: the clustering's own "
        "upper bound sum_c N_c D_c / N^2 on GC's variance with one example per cluster."
    )


if __name__ == "__main__":
    main()
