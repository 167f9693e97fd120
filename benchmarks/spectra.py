"""Spectra benchmark: gradient-covariance spectrum and Hessian top-k eigenvalues vs peers.

Run: ``.venv/bin/python benchmarks/spectra.py`` (``--quick`` for a smoke run).

(a) Covariance spectrum of N = 512 per-example gradients of the 784-1024-1024-10 MLP
    (P = 1,863,690; random inputs): ``gradnoise.covariance_spectrum`` (layer-factored Gram, never
    forms [N, P]) vs materialising the per-example gradients with the best peers (torch.func
    ``vmap(grad)``; BackPACK ``BatchGrad`` if installed) and taking the Gram matrix. Each path runs
    in a fresh subprocess; peak memory is the growth of the resident set (VmHWM, reset through
    ``/proc/self/clear_refs`` after setup) during the first call. Target: >= 10x faster and peak
    memory <= 10 % of N * P * 4 bytes.
(b) Top-5 Hessian eigenvalues of the digits MLP 64-256-256-10 (P = 85,002), trained 200 full-batch
    Adam steps (lr 1e-2) on all 1,797 digits, loss = mean cross-entropy over them
    (perf-baselines §4): ``gradnoise.hessian_eigs`` vs PyHessian ``eigenvalues(top_n=5)`` (and
    scipy ``eigsh`` on the same HVPs). The reference is thick-restart Lanczos at tol 1e-12 in float64,
    cross-checked against ARPACK at tol 0. Target: >= 2x faster at relative error <= 1e-6.

Timings are medians over ``--repeats`` runs after one warm-up, in one process per table, on
whatever machine runs this (the table prints the load average: on a shared machine expect noise).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np

N_COV, N_BIG, WIDTHS, IN_DIM = 512, 4096, (1024, 1024), 784


def _status() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# (a) covariance spectrum
# --------------------------------------------------------------------------------------------


def _cov_setup(n: int = N_COV):
    import torch

    from gradnoise import build_model

    model = build_model("mlp", (IN_DIM,), 10, widths=WIDTHS, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, IN_DIM, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return model, torch.nn.CrossEntropyLoss(), x, y


def _cov_path(name: str, model, loss, x, y) -> np.ndarray:
    import torch

    from gradnoise import covariance_spectrum
    from gradnoise.spectra import gram_spectrum

    num_params = sum(p.numel() for p in model.parameters())
    if name == "gradnoise":
        return covariance_spectrum(model, loss, x, y)
    if name == "func":
        # the best materialising peer: plain torch.func vmap(grad) for all N at once, then the
        # Gram matrix parameter by parameter (float32 BLAS GEMMs, no [N, P] concatenation)
        from torch.func import functional_call, grad, vmap

        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss_one(p, xi, yi):
            return loss(functional_call(model, p, (xi[None],)), yi[None])

        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
        gram = torch.zeros(x.shape[0], x.shape[0])
        for key in list(grads):
            g = grads.pop(key).flatten(1)
            gram += g @ g.T
            del g
        return gram_spectrum(gram.double().numpy(), centered=True, num_params=num_params)
    if name == "backpack":
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad

        ext = extend(model)
        lf = extend(torch.nn.CrossEntropyLoss(reduction="sum"))  # per-example grads unscaled
        ext.zero_grad()
        with backpack(BatchGrad()):
            lf(ext(x), y).backward()
        gram = torch.zeros(x.shape[0], x.shape[0])
        for p in ext.parameters():  # Gram per parameter: no [N, P] concatenation
            gb = p.grad_batch.flatten(1)
            gram += gb @ gb.T
            del p.grad_batch
        return gram_spectrum(gram.double().numpy(), centered=True, num_params=num_params)
    raise ValueError(name)


def _cov_child(name: str, repeats: int, threads: int | None, n: int) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    model, loss, x, y = _cov_setup(n)
    rss0 = _status()["VmRSS"]
    exact_peak = _reset_peak()
    t0 = time.perf_counter()
    eigs = _cov_path(name, model, loss, x, y)
    first = time.perf_counter() - t0
    peak = _status()["VmHWM"] - rss0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _cov_path(name, model, loss, x, y)
        times.append(time.perf_counter() - t0)
    return {
        "name": name,
        "first_s": first,
        "median_s": statistics.median(times) if times else first,
        "min_s": min(times) if times else first,
        "peak_bytes": peak,
        "exact_peak": exact_peak,
        "top": eigs[:10].tolist(),
        "trace": float(eigs.sum()),
    }


def _run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_covariance(repeats: int, threads: int | None) -> None:
    import importlib.util

    num_params = (
        IN_DIM * WIDTHS[0] + WIDTHS[0] + WIDTHS[0] * WIDTHS[1] + WIDTHS[1] + WIDTHS[1] * 10 + 10
    )
    full = N_COV * num_params * 4
    paths = ["gradnoise", "func"]
    if importlib.util.find_spec("backpack") is not None:
        paths.append("backpack")
    else:
        print(
            "(BackPACK not installed: pip install --no-deps backpack-for-pytorch einops unfoldNd)"
        )
    results = {
        p: _run_child(["cov", p, str(repeats), str(threads or 0), str(N_COV)]) for p in paths
    }
    big = _run_child(["cov", "gradnoise", "0", str(threads or 0), str(N_BIG)])
    print(
        f"\n(a) covariance spectrum, MLP 784-1024-1024-10, N={N_COV}, P={num_params:,}; "
        f"N*P*4 = {full / 2**20:,.0f} MiB; load avg {os.getloadavg()[0]:.1f}"
    )
    header = (
        "| path | first call (s) | median (s) | vs gradnoise | peak RSS growth (MiB) "
        "| % of N*P*4 | top-eig rel. diff |"
    )
    print(header)
    print("|" + "---|" * 7)
    ours = results["gradnoise"]
    for name in paths:
        r = results[name]
        if "error" in r:
            print(f"| {name} | error: {r['error']} | | | | | |")
            continue
        ratio = r["median_s"] / ours["median_s"] if "median_s" in ours else float("nan")
        diff = np.max(np.abs(np.array(r["top"][:5]) - ours["top"][:5]) / np.array(ours["top"][:5]))
        print(
            f"| {name} | {r['first_s']:.3f} | {r['median_s']:.3f} | {ratio:.1f}x | "
            f"{r['peak_bytes'] / 2**20:,.0f} | {100 * r['peak_bytes'] / full:.1f} % | {diff:.1e} |"
        )
    if "error" in big:
        print(f"gradnoise at N={N_BIG}: error {big['error']}")
    else:
        print(
            f"| gradnoise, N={N_BIG} (scaling; no peer run) | {big['first_s']:.3f} | | | "
            f"{big['peak_bytes'] / 2**20:,.0f} | "
            f"{100 * big['peak_bytes'] / (N_BIG * num_params * 4):.1f} % of its N*P*4 | |"
        )
    if not ours.get("exact_peak", False):
        print("(VmHWM could not be reset: peak includes the setup peak)")
    print(f"top-5 eigenvalues (gradnoise): {np.array(ours['top'][:5]).round(6).tolist()}")


# --------------------------------------------------------------------------------------------
# (b) Hessian top-5
# --------------------------------------------------------------------------------------------


def _digits_mlp():
    import torch
    from sklearn.datasets import load_digits

    from gradnoise import build_model

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    model = build_model("mlp", (1, 8, 8), 10, widths=(256, 256), seed=0)
    loss = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return model, loss, x, y


def _timed(fn, repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up (also the returned value)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _pyhessian(model, loss, x, y, tol: float, max_iter: int):
    import torch
    from pyhessian import hessian

    old = torch.get_default_dtype()
    # shim: PyHessian draws its vectors with torch.randn/zeros in the default dtype
    torch.set_default_dtype(next(model.parameters()).dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = hessian(model, loss, data=(x, y), cuda=False)
            vals, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=5)
        for p in model.parameters():
            p.grad = None
    finally:
        torch.set_default_dtype(old)
    return np.array(vals)


def bench_hessian(repeats: int, threads: int | None) -> None:
    import copy

    import scipy.sparse.linalg
    import torch
    from threadpoolctl import threadpool_limits

    import gradnoise
    from gradnoise.curvature import HessianOperator
    from gradnoise.spectra import lanczos_eigs

    if threads:
        torch.set_num_threads(threads)
    model32, loss, x32, y = _digits_mlp()
    model = copy.deepcopy(model32).double()
    x = x32.double()
    data = (x, y)
    op = HessianOperator(model, loss, data)
    with threadpool_limits(1, "blas"):
        ref = lanczos_eigs(op.matvec, op.dim, k=5, tol=1e-12, ncv=60, rng=12345).eigenvalues
        lin = scipy.sparse.linalg.LinearOperator((op.dim, op.dim), matvec=op.matvec)
        arpack = scipy.sparse.linalg.eigsh(lin, k=5, which="LA", tol=0, return_eigenvectors=False)
    arpack = np.sort(arpack)[::-1]
    op.release()
    v = np.random.default_rng(1).standard_normal(op.dim)
    hv64 = op.matvec(v)
    hv32 = HessianOperator(model32, loss, (x32, y)).matvec(v)
    hvp_gap = float(np.linalg.norm(hv32 - hv64) / np.linalg.norm(hv64))
    op.release()
    check = float(np.max(np.abs(arpack - ref) / ref))

    def rel(vals):
        return float(np.max(np.abs(np.asarray(vals) - ref) / ref))

    rows = []

    def ours(dtype_model, dat, **kw):
        counter = {}

        def run():
            res = gradnoise.hessian_eigs(dtype_model, loss, dat, k=5, rng=0, **kw)
            counter["n"] = res.num_matvecs
            return res.eigenvalues

        t, vals = _timed(run, repeats)
        return t, vals, counter["n"]

    t, v, n = ours(model, data)
    rows.append(("gradnoise.hessian_eigs (float64, tol 1e-6)", t, rel(v), n))
    t_ours = t
    t, v, n = ours(model, data, blas_threads=None)
    rows.append(("  same, BLAS threads not limited", t, rel(v), n))
    t, v, n = ours(model, data, tol=1e-4)
    rows.append(("  same, tol 1e-4", t, rel(v), n))
    t, v, n = ours(model32, (x32, y))
    rows.append(("  same on the float32 model (error vs float64 reference)", t, rel(v), n))
    fast_ops = {"n": 0}

    def eigsh_run(tol):
        o = HessianOperator(model, loss, data)
        lin = scipy.sparse.linalg.LinearOperator((o.dim, o.dim), matvec=o.matvec)
        with threadpool_limits(1, "blas"):
            vals = scipy.sparse.linalg.eigsh(
                lin,
                k=5,
                which="LA",
                tol=tol,
                return_eigenvectors=False,
                v0=np.random.default_rng(0).standard_normal(o.dim),
            )
        fast_ops["n"] = o.num_matvecs
        return np.sort(vals)[::-1]

    t, v = _timed(lambda: eigsh_run(1e-6), repeats)
    rows.append(("scipy eigsh (ARPACK) on gradnoise HVPs, tol 1e-6", t, rel(v), fast_ops["n"]))
    t, v, n = ours(model, data, hvp="func")
    rows.append(("gradnoise.hessian_eigs, hvp='func' (jvp of grad)", t, rel(v), n))
    try:
        for tol, it in ((1e-3, 100), (1e-6, 1000)):
            t, v = _timed(lambda tol=tol, it=it: _pyhessian(model, loss, x, y, tol, it), repeats)
            rows.append(
                (f"PyHessian eigenvalues(top_n=5, tol={tol:g}, maxIter={it})", t, rel(v), None)
            )
        t, v = _timed(lambda: _pyhessian(model32, loss, x32, y, 1e-3, 100), repeats)
        rows.append(("PyHessian on the float32 model, tol 1e-3", t, rel(v), None))
    except ImportError:
        print("(PyHessian not installed: pip install --no-deps pyhessian)")
    print(
        f"\n(b) Hessian top-5, digits MLP 64-256-256-10 (P = {op.dim:,}), N = {op.num_examples}, "
        f"trained 200 Adam steps; load avg {os.getloadavg()[0]:.1f}; torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"reference (Lanczos tol 1e-12, float64): {np.round(ref, 8).tolist()}")
    print(f"ARPACK tol 0 vs reference: max rel. diff {check:.1e}")
    print(
        f"float32 vs float64 HVP of the same weights, same vector: rel. diff {hvp_gap:.1e} "
        "(the floor of any float32 method)"
    )
    print("| method | median (s) | vs gradnoise | max rel. error (top-5) | HVPs |")
    print("|---|---|---|---|---|")
    for name, t, err, n in rows:
        print(f"| {name} | {t:.3f} | {t / t_ours:.2f}x | {err:.1e} | {'' if n is None else n} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--only", choices=["cov", "hessian"], default=None)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _, name, repeats, threads, n = args.child
        print(json.dumps(_cov_child(name, int(repeats), int(threads) or None, int(n))))
        return
    repeats = 1 if args.quick else args.repeats
    if args.only in (None, "cov"):
        bench_covariance(repeats, args.threads or None)
    if args.only in (None, "hessian"):
        bench_hessian(repeats, args.threads or None)


if __name__ == "__main__":
    main()
