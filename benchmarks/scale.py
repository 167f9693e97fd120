"""Scale benchmark: gradnoise's captures on a ResNet-18-size CNN and a GPT-style transformer.

Run::

    .venv/bin/python benchmarks/scale.py                  # sizes reduced where stated ones take hours
    .venv/bin/python benchmarks/scale.py --quick          # reduced sizes (minutes); says so
    .venv/bin/python benchmarks/scale.py --stated         # every stated size (hours)
    .venv/bin/python benchmarks/scale.py --models cnn --ops per_sample,full_grad

Models (random weights, synthetic inputs of the right shapes, cross-entropy):

* ``cnn``: a CIFAR-style ResNet-18 (BasicBlocks [2, 2, 2, 2], widths 64-512) with GroupNorm
  instead of BatchNorm, 3x32x32 inputs, 10 classes: 11.2M parameters.
* ``gpt``: a decoder-only transformer (vocabulary 8,192, width 512, 5 blocks of 8-head causal
  attention and a 4x MLP, learned positions, untied output head), sequences of 128 tokens, the
  loss of an example is its sequence's mean next-token cross-entropy: 24.3M parameters.

Every operation runs in a fresh subprocess with 1 torch thread: the subprocess builds the model
and data, records its resident memory (``base``), resets the kernel's peak counter
(``/proc/self/clear_refs``), runs the operation, and reports ``VmHWM`` (peak resident memory)
and the wall time. ``peak - base`` is what the operation added. Each line compares it with

* ``budget``: ``max_memory`` (``--max-memory``, default 2GiB): the per-example gradient working
  set and activations the captures are sized to (chunk = max_memory // (3 P itemsize + 2 x
  measured activation bytes), ``gradnoise.memory``; the ``chunk`` column is the one used),
  plus what the output holds (``[N, C]`` or ``[K, C]`` of the C = 10^5 followed coordinates;
  for the batch gradients three gradients of P: autograd's, its flattened copy, the running
  sum; for the Hessian the Lanczos basis and four float64 vectors of P: a product's input,
  output, float32 parts and sum). ``sgn``, ``full_grad`` and ``hessian`` pass the same
  ``max_memory``, which bounds one forward's activations (measured; ``gradnoise.memory``);
* ``N x P``: the bytes of all N per-example (or K minibatch) gradients of all P parameters in
  float32, which a capture that does not stream would hold.

Operations: ``per_sample`` (per-sample gradients of B = 64 examples over all P, streamed by
``iter_per_sample_grads`` in budgeted chunks, norms kept), ``sgn`` (``gradient_noise``: 64
minibatches of 64 on the 10^5 followed coordinates, as the Recorder stores them), ``full_grad``
(``full_grad`` over N examples in batches of 64), ``spectrum`` (``covariance_spectrum`` of N
examples from the factored Gram matrix, ``max_memory`` bounding its blocks), ``hessian``
(``hessian_eigs`` top 10 by Lanczos on N examples, float32, basis of 21 vectors, at most 40
Hessian-vector products, batches and graph caching set by ``max_memory``: its (ncv + 1) x P
float64 basis is not sized by ``max_memory``) and ``study`` (``Probe`` with the
default analyses, quick analysis options, on a 10^5-coordinate selection, 2 training steps and
checkpoints [0, 2]; the spectra analysis without its Hessian, which the ``hessian`` row measures:
the study's own runs in float64 to tol 1e-6 with up to 1,000 products, hours at this size); the
study's budget adds 60 bytes per parameter for what its analyses hold outside ``max_memory``'s
working sets (set before this benchmark's study rows were first run: the tails analysis's
dimension-wise vectors, three float64 vectors of P per checkpoint, and three float32 copies of
P; the tails analysis now keeps G and g_B per checkpoint in float32 and one family's float64
vectors, 32 bytes per parameter; the variance measurement holds K = 4 float32 draws and the
float64 full gradient, 24 bytes, and while its statistics run, with no forward alive and freed
heap pages returned first, their per-coordinate float64 arrays, 44 bytes for the GSNR, the
largest; its comparators keep an SVRG snapshot, 4 bytes, and Gradient Clustering's float64
centres over the columns without a rank-1 form, 8 bytes per cluster and such column), and its
notes give the training phase's peak (checkpoint captures, variance measurements), the final
step's, each analysis's own and the report's. A size below the stated one is marked
``(reduced)`` with the full size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: operation -> (N at the stated size, N run here by default, N with --quick); for "sgn" the
#: number K of minibatches (of SGN_BATCH examples, G over SGN_DATA[model] examples). The
#: defaults are reduced where the stated size takes far longer than ~40 min on one shared core.
SIZES = {
    "cnn": {
        "per_sample": (64, 64, 8),
        "sgn": (64, 16, 4),
        "full_grad": (10_000, 2_000, 64),
        "spectrum": (1024, 128, 8),
        "hessian": (256, 16, 8),
        "study": (256, 64, 32),
    },
    "gpt": {
        "per_sample": (64, 64, 8),
        "sgn": (64, 4, 2),
        "full_grad": (10_000, 256, 16),
        "spectrum": (1024, 32, 8),
        "hessian": (256, 4, 4),
        "study": (256, 32, 32),
    },
}
SGN_BATCH = 64
SGN_DATA = {"cnn": 1024, "gpt": 256}
#: Lanczos: basis size and cap on Hessian-vector products (the basis is (NCV + 1) x P float64)
NCV, MAX_HVP = 21, 40
OPS = ("per_sample", "sgn", "full_grad", "spectrum", "hessian", "study")
COORDS = 100_000
KIB = 1024


# ----------------------------------------------------------------------------------------------
# models


def resnet18_gn(num_classes: int = 10):
    import torch
    from torch import nn

    def norm(c: int) -> nn.Module:
        return nn.GroupNorm(min(32, c // 4), c)

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.n1 = norm(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.n2 = norm(cout)
            self.skip = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.n1(self.c1(x)))
            return torch.relu(self.n2(self.c2(h)) + self.skip(x))

    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), norm(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def gpt(vocab: int = 8192, width: int = 512, depth: int = 5, heads: int = 8, length: int = 128):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            b, t, _ = h.shape
            q, k, v = self.qkv(self.ln1(h)).split(width, dim=2)
            q, k, v = (z.reshape(b, t, heads, -1).transpose(1, 2) for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.proj(a.transpose(1, 2).reshape(b, t, width))
            return h + self.down(F.gelu(self.up(self.ln2(h))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, width)
            self.pos = nn.Parameter(torch.randn(length, width) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.ln = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab, bias=False)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.blocks(self.emb(tokens) + self.pos[: tokens.shape[1]])
            return self.head(self.ln(h)).transpose(1, 2)  # [B, V, T] for cross-entropy

    return GPT()


def build(name: str, n: int, seed: int = 0):
    """The model and ``n`` synthetic examples (inputs, targets)."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if name == "cnn":
        model = resnet18_gn()
        x = torch.randn(n, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
    else:
        model = gpt()
        tokens = torch.randint(0, 8192, (n, 129), generator=gen)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    return model, x, y


# ----------------------------------------------------------------------------------------------
# one operation, in this process


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def run_op(model_name: str, op: str, n: int, max_memory: str) -> dict:
    import warnings

    import torch
    from torch import nn

    import gradnoise
    from gradnoise.memory import parse_memory

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model, x, y = build(model_name, SGN_DATA[model_name] if op == "sgn" else n)
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    budget = parse_memory(max_memory)
    sel = gradnoise.select_params(model, coords=COORDS, seed=0)
    info: dict = {"P": sum(p.numel() for p in params)}
    Path("/proc/self/clear_refs").write_text("5")  # peak := resident now
    base = _status("VmRSS")
    t0 = time.perf_counter()
    if op == "per_sample":
        norms, chunks = [], []
        for _, g in gradnoise.iter_per_sample_grads(model, loss_fn, x, y, max_memory=budget):
            norms.append(torch.linalg.vector_norm(g, dim=1))
            chunks.append(int(g.shape[0]))
        info["chunk"] = max(chunks)  # what the budget allowed: gradients and activations
        info["median_norm"] = float(torch.cat(norms).median())
        info["held"] = 0
    elif op == "sgn":
        xi = gradnoise.gradient_noise(
            model,
            loss_fn,
            (x, y),
            batch_size=SGN_BATCH,
            num_batches=n,
            params=sel,
            full_batch_size=64,
            max_memory=budget,
        )
        # [K, C] out, and the batch gradient of all P as autograd returns it, flattened, summed
        info["held"] = xi.numel() * 4 + 3 * info["P"] * 4
        info["mean_sgn_norm"] = float(torch.linalg.vector_norm(xi, dim=1).mean())
    elif op == "full_grad":
        g = gradnoise.full_grad(model, loss_fn, (x, y), batch_size=64, max_memory=budget)
        info["held"] = 3 * g.numel() * 4  # autograd's gradient, flattened, the running sum
        info["norm"] = float(torch.linalg.vector_norm(g))
    elif op == "spectrum":
        eig = gradnoise.covariance_spectrum(model, loss_fn, x, y, max_memory=budget)
        info["held"] = n * n * 8
        info["top"] = float(eig[0])
    elif op == "hessian":
        res = gradnoise.hessian_eigs(
            model,
            loss_fn,
            (x, y),
            k=10,
            rng=0,
            tol=1e-3,
            ncv=NCV,
            max_steps=MAX_HVP,
            max_memory=budget,
        )
        # the Lanczos basis, and a product's vectors of P: its float64 input and output, the
        # float32 parts it is split into and the accumulated result (max_memory bounds the graphs)
        info["held"] = (NCV + 1) * info["P"] * 8 + 4 * info["P"] * 8
        info["top"] = float(res.eigenvalues[0])
        info["converged"] = int(res.converged.sum())
        info["matvecs"] = int(getattr(res, "num_matvecs", -1))
    elif op == "study":
        import tempfile

        import gradnoise.probe as probe_module
        from gradnoise.probe import QUICK_OPTIONS

        # each analysis's own peak: reset the kernel's counter before it, read it after
        real_run, per_analysis, peaks = probe_module.run_analysis, {}, []

        def measured(analysis, ctx, missed=()):
            peaks.append(_status("VmHWM"))
            Path("/proc/self/clear_refs").write_text("5")
            start = _status("VmRSS")
            try:
                return real_run(analysis, ctx, missed)
            finally:
                peak = _status("VmHWM")
                peaks.append(peak)
                # (resident at its start, peak during it), both above the row's base
                per_analysis[analysis.name] = (
                    round((start - base) * KIB / 2**30, 2),
                    round((peak - base) * KIB / 2**30, 2),
                )

        probe_module.run_analysis = measured

        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with tempfile.TemporaryDirectory() as tmp:
            probe = gradnoise.Probe(
                Path(tmp) / "run",
                model,
                loss_fn,
                (x, y),
                batch_size=16,
                optimizer=opt,
                checkpoints=[0, 2],
                options={  # the Hessian is the "hessian" row (the study's: float64, tol 1e-6)
                    **QUICK_OPTIONS,
                    "spectra": {**QUICK_OPTIONS["spectra"], "examples": 16, "hessian": False},
                },
                per_sample_examples=32,
                noise_batches=16,
                track_coords=COORDS,
                max_memory=budget,
            )
            for step in range(2):
                opt.zero_grad()
                loss = loss_fn(model(x[16 * step : 16 * step + 16]), y[16 * step : 16 * step + 16])
                loss.backward()
                probe.step(step, loss=loss.item())
                opt.step()
            # training: the Probe's checkpoint captures and the variance analysis's measurements
            training_peak = _status("VmHWM")
            info["training_added_gib"] = round((training_peak - base) * KIB / 2**30, 2)
            Path("/proc/self/clear_refs").write_text("5")  # the final step's peak is its own
            probe.finish(final_step=2)
            summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
            timings = json.loads((Path(tmp) / "run" / "manifest.json").read_text())["timings"]
        info["analysis_s"] = {
            k.removeprefix("analysis_").removesuffix("_s"): round(v, 1)
            for k, v in timings.items()
            if k.startswith("analysis_")
        }
        # what the analyses must hold besides max_memory: the tails analysis's dimension-wise
        # vectors (|G|, |g_B|, |g_B - G| in float64 per checkpoint, two checkpoints) and three
        # float32 copies of the parameters (the model, a loaded checkpoint, a gradient)
        info["held"] = (2 * 3 * 8 + 3 * 4) * info["P"]
        info["analysis_added_gib"] = per_analysis
        # the two stretches outside every bracket: the final step's capture and measurements
        # (from the training reading to the first analysis), and writing the report (after the
        # last analysis, which is variance and holds little)
        info["final_step_added_gib"] = round((peaks[0] - base) * KIB / 2**30, 2) if peaks else None
        info["after_analyses_added_gib"] = round((_status("VmHWM") - base) * KIB / 2**30, 2)
        info["peak_override"] = max([training_peak, *peaks, _status("VmHWM")])
        info["unavailable"] = {
            k: str(v["unavailable"])[:160]
            for k, v in summary["analyses"].items()
            if "unavailable" in v
        }
    else:
        raise SystemExit(f"unknown operation {op}")
    info.update(
        wall_s=time.perf_counter() - t0,
        base_kib=base,
        peak_kib=info.pop("peak_override", None) or _status("VmHWM"),
        budget=budget,
        n=n,
    )
    return info


# ----------------------------------------------------------------------------------------------
# the table


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (minutes)")
    parser.add_argument(
        "--stated", action="store_true", help="the stated sizes everywhere (hours on one core)"
    )
    parser.add_argument("--models", default="cnn,gpt")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--max-memory", default="2GiB")
    parser.add_argument(
        "--timeout", type=float, default=2400, help="seconds per operation (default 40 min)"
    )
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "OP", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_op(args.one[0], args.one[1], int(args.one[2]), args.max_memory)))
        return
    load = os.getloadavg()
    print(
        f"scale benchmark: 1 torch thread per operation, max_memory={args.max_memory}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
        + (" (--quick: every size reduced)" if args.quick else "")
    )
    head = (
        f"{'model':5} {'operation':10} {'N':>6} {'P':>11} {'chunk':>5} {'base':>7} {'peak':>7} "
        f"{'added':>7} {'budget':>7} {'N x P':>7} {'wall s':>8}  notes (GiB)"
    )
    print(head)
    print("-" * len(head))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for model in args.models.split(","):
        for op in args.ops.split(","):
            full, here, quick = SIZES[model][op]
            n = quick if args.quick else (full if args.stated else here)
            cmd = [sys.executable, __file__, "--one", model, op, str(n)]
            cmd += ["--max-memory", args.max_memory]
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env=env, timeout=args.timeout
                )
            except subprocess.TimeoutExpired:
                print(f"{model:5} {op:10} {n:>6} not finished in {args.timeout:.0f} s", flush=True)
                continue
            if proc.returncode != 0:
                print(f"{model:5} {op:10} {n:>6} failed: {proc.stderr.strip()[-300:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            added = (r["peak_kib"] - r["base_kib"]) * KIB
            rows = n
            nxp = rows * r["P"] * 4
            budget = r["budget"] + r["held"]
            notes = []
            if n < full:
                notes.append(f"reduced from {'K' if op == 'sgn' else 'N'}={full}")
            if op == "sgn":
                notes.append(
                    f"N=K minibatches of {SGN_BATCH}, G over {SGN_DATA[model]}, C={COORDS:,}"
                )
            if op == "hessian":
                notes.append(
                    f"{r['converged']}/10 converged, {r['matvecs']} HVPs (cap {MAX_HVP}); budget: "
                    f"+ Lanczos basis ({NCV + 1} x P float64) + 4 x P float64 of a product"
                )
            if op == "study":
                notes.append(f"analyses (s): {r['analysis_s']}; Hessian off (see hessian row)")
                notes.append(
                    f"added GiB in training (captures, variance measurements): "
                    f"{r['training_added_gib']}; per analysis (at its start, peak): "
                    f"{r['analysis_added_gib']}; final step (capture, measurements) "
                    f"{r['final_step_added_gib']}; report {r['after_analyses_added_gib']}"
                )
                if r["unavailable"]:
                    notes.append(f"unavailable: {r['unavailable']}")
            notes.append("within budget" if added <= budget else "OVER budget")
            print(
                f"{model:5} {op:10} {n:>6} {r['P']:>11,} {r.get('chunk') or '':>5} "
                f"{_gib(r['base_kib'] * KIB)} {_gib(r['peak_kib'] * KIB)} {_gib(added)} "
                f"{_gib(budget)} {_gib(nxp)} {r['wall_s']:8.1f}  {'; '.join(notes)}",
                flush=True,
            )
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
