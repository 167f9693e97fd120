"""Per-sample gradient benchmark: gradnoise vs naive loop, torch.func, BackPACK, Opacus.

Run (after ``make peers``, which installs BackPACK/Opacus without their torchvision dependency)::

    .venv/bin/python benchmarks/per_sample.py            # full table (a few minutes)
    .venv/bin/python benchmarks/per_sample.py --quick    # B = 32 only, fewer repeats

Each cell is the median wall time of ``--repeats`` calls after 2 warm-ups, in ms per batch, and
its ratio to one ordinary minibatch forward+backward of the same model and batch ("backward").
Every method includes the forward pass. ``gradnoise`` fills a reused ``out=`` buffer (the
documented way to call it in a loop); ``gradnoise (fresh)`` allocates its [B, P] output each call.
torch.func, BackPACK and Opacus leave per-layer tensors (no flattening into one [B, P] matrix),
which favours them. Loss: cross-entropy, mean reduction. Agreement with torch.func is checked on
the first cell of each model (max relative difference, all peers rescaled to unscaled gradients).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import gradnoise


class _Attention(nn.Module):
    """Token embedding by a Linear, a learned positional Parameter, nn.MultiheadAttention, PReLU:
    the attention block, the Parameter and PReLU have no layer rule (general path)."""

    def __init__(self, dim: int = 64, length: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(16, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.1)
        self.mha = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.act = nn.PReLU()
        self.out = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.pos
        h = h + self.mha(h, h, h, need_weights=False)[0]
        return self.out(self.act(h).mean(1))


def _conv_head(features: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    with torch.no_grad():
        width = features(torch.zeros(1, *shape)).flatten(1).shape[1]
    return nn.Sequential(features, nn.Flatten(), nn.Linear(width, 10))


def models() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    return {
        "mlp_digits": (
            lambda: nn.Sequential(
                nn.Flatten(),
                nn.Linear(64, 256),
                nn.ReLU(),
                nn.Linear(256, 256),
                nn.ReLU(),
                nn.Linear(256, 10),
            ),
            (64,),
        ),
        "lenet": (lambda: gradnoise.build_model("lenet", (1, 28, 28), 10), (1, 28, 28)),
        "mlp_wide": (
            lambda: nn.Sequential(
                nn.Flatten(),
                nn.Linear(784, 1024),
                nn.ReLU(),
                nn.Linear(1024, 1024),
                nn.ReLU(),
                nn.Linear(1024, 10),
            ),
            (784,),
        ),
        # layers that took the general path before the rules of issue 9
        "cnn_reflect_instnorm": (
            lambda: _conv_head(
                nn.Sequential(
                    nn.Conv2d(1, 16, 3, padding=1, padding_mode="reflect"),
                    nn.InstanceNorm2d(16, affine=True),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1, padding_mode="circular"),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                ),
                (1, 28, 28),
            ),
            (1, 28, 28),
        ),
        "conv3d_transposed": (
            lambda: _conv_head(
                nn.Sequential(
                    nn.Conv3d(1, 8, 3, padding=1),
                    nn.ReLU(),
                    nn.Flatten(1, 2),
                    nn.ConvTranspose2d(8 * 8, 16, 3, stride=2),
                    nn.ReLU(),
                ),
                (1, 8, 12, 12),
            ),
            (1, 8, 12, 12),
        ),
        "rmsnorm_mlp": (
            lambda: nn.Sequential(
                nn.Flatten(),
                nn.Linear(64, 512),
                nn.RMSNorm(512),
                nn.ReLU(),
                nn.Linear(512, 512),
                nn.RMSNorm(512),
                nn.ReLU(),
                nn.Linear(512, 10),
            ),
            (64,),
        ),
        "attention_prelu_param": (lambda: _Attention(), (16, 16)),
    }


def flat_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def method_backward(model, x, y):
    loss_fn = nn.CrossEntropyLoss()

    def run():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    return run


def method_gradnoise(model, x, y, reuse=True):
    loss_fn = nn.CrossEntropyLoss()
    out = torch.empty(x.shape[0], flat_params(model)) if reuse else None

    def run():
        return gradnoise.per_sample_grads(model, loss_fn, x, y, out=out)

    return run


def method_gradnoise_func(model, x, y):
    """gradnoise forced onto its general path (vmap(grad) into a reused [B, P] buffer)."""
    loss_fn = nn.CrossEntropyLoss()
    out = torch.empty(x.shape[0], flat_params(model))

    def run():
        return gradnoise.per_sample_grads(model, loss_fn, x, y, out=out, backend="func")

    return run


def method_func_flat(model, x, y):
    """Plain torch.func, then the [B, P] matrix gradnoise returns (one torch.cat)."""
    run_func = method_func(model, x, y)
    names = [n for n, _ in model.named_parameters()]

    def run():
        grads = run_func()
        return torch.cat([grads[n].reshape(x.shape[0], -1) for n in names], dim=1)

    return run


def method_naive(model, x, y):
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    out = torch.empty(x.shape[0], flat_params(model))

    def run():
        for i in range(x.shape[0]):
            grads = torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]), params)
            torch.cat([g.reshape(-1) for g in grads], out=out[i])
        return out

    return run


def method_func(model, x, y):
    loss_fn = nn.CrossEntropyLoss()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    fn = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def run():
        return fn(params, x, y)

    return run


def method_backpack(model, x, y):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    model = extend(model)
    loss_fn = extend(nn.CrossEntropyLoss())

    def run():
        model.zero_grad(set_to_none=True)
        with backpack(BatchGrad()):
            loss_fn(model(x), y).backward()
        missing = [n for n, p in model.named_parameters() if not hasattr(p, "grad_batch")]
        if missing:
            raise NotImplementedError(f"BackPACK computed no grad_batch for {missing[0]}")
        return {n: p.grad_batch * x.shape[0] for n, p in model.named_parameters()}

    return run


def method_opacus(model, x, y):
    from opacus import GradSampleModule

    gsm = GradSampleModule(model)
    loss_fn = nn.CrossEntropyLoss()

    def run():
        gsm.zero_grad(set_to_none=True)
        loss_fn(gsm(x), y).backward()
        return {n: p.grad_sample for n, p in model.named_parameters()}

    return run


def as_matrix(result, model) -> torch.Tensor:
    if isinstance(result, torch.Tensor):
        return result
    names = [n for n, _ in model.named_parameters()]
    return torch.cat([result[n].reshape(result[n].shape[0], -1) for n in names], dim=1)


def available(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def time_call(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 32 only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128, 512])
    parser.add_argument(
        "--skip-naive-above", type=int, default=512, help="skip the naive loop for larger batches"
    )
    parser.add_argument("--models", nargs="*", help="only these models (default: all)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    sizes = [32] if args.quick else args.batch_sizes
    repeats = 3 if args.quick else args.repeats
    methods: dict[str, Callable] = {
        "backward": method_backward,
        "gradnoise": method_gradnoise,
        "gradnoise (fresh)": lambda m, x, y: method_gradnoise(m, x, y, reuse=False),
        "gradnoise (func)": method_gradnoise_func,
        "naive": method_naive,
        "func": method_func,
        "func + flatten": method_func_flat,
    }
    if available("backpack"):
        methods["backpack"] = method_backpack
    if available("opacus"):
        methods["opacus"] = method_opacus
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; peers: "
        f"{', '.join(m for m in methods if not m.startswith(('backward', 'gradnoise')))}"
    )
    header = ["model (P)", "B", *methods]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    agreement = []
    general = []
    selected = models()
    if args.models:
        selected = {k: v for k, v in selected.items() if k in args.models}
    for name, (factory, shape) in selected.items():
        for b in sizes:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(b, *shape, generator=gen)
            y = torch.randint(0, 10, (b,), generator=gen)
            torch.manual_seed(0)
            cells, base = [], None
            reference = None
            timings: dict[str, float] = {}
            for method, make in methods.items():
                if method == "naive" and b > args.skip_naive_above:
                    cells.append("skipped")
                    continue
                torch.manual_seed(0)
                model = factory()
                try:
                    fn = make(model, x, y)
                    fn()
                except Exception as err:  # a peer that cannot handle this model
                    if method.startswith("gradnoise") or method == "backward":
                        raise
                    cells.append(f"fails ({type(err).__name__})")
                    continue
                if b == sizes[0] and method != "backward":
                    value = as_matrix(fn(), model).detach()
                    if reference is None:
                        reference = value
                    else:
                        err = ((value - reference).abs().max() / reference.abs().max()).item()
                        agreement.append(
                            f"{name} B={b}: {method} vs gradnoise max rel diff {err:.1e}"
                        )
                ms = time_call(fn, repeats)
                timings[method] = ms
                base = ms if method == "backward" else base
                cells.append(
                    f"{ms:.2f}" if method == "backward" else f"{ms:.2f} ({ms / base:.1f}x)"
                )
            print(
                f"| {name} ({flat_params(factory())}) | {b} | " + " | ".join(cells) + " |",
                flush=True,
            )
            general.append(
                f"| {name} | {b} | {timings['gradnoise (func)'] / timings['func']:.3f} | "
                f"{timings['gradnoise (func)'] / timings['func + flatten']:.3f} | "
                f"{timings['gradnoise'] / timings['func']:.3f} |"
            )
    print()
    print("General path: gradnoise (func) / func, / (func + flatten); and gradnoise (auto) / func")
    print("| model | B | (func) / func | (func) / func+flatten | auto / func |")
    print("|---|---|---|---|---|")
    for line in general:
        print(line)
    print()
    for line in agreement:
        print(line)


if __name__ == "__main__":
    main()
