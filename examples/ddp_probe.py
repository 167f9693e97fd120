"""The gradnoise study inside a DistributedDataParallel training loop (CPU, gloo, 127.0.0.1).

    torchrun --nproc_per_node 2 examples/ddp_probe.py            # report in runs/ddp-probe
    torchrun --nproc_per_node 2 examples/ddp_probe.py --tiny     # a few steps (what CI runs)
    python examples/ddp_probe.py --tiny                          # the same run in one process

Every rank trains the DDP-wrapped network on its share of each *global* minibatch and makes the
same ``Probe(..., process_group="world")``: rank 0 alone writes the run directory (the gradient
it records after ``loss.backward()`` is DDP's all-reduced one, i.e. the global minibatch's), the
captures at checkpoints (per-sample gradients, full gradient, SGN) are shared among the ranks,
and ``probe.finish()`` runs the analyses on rank 0 (it returns None on the others). Run without
torchrun, the script trains in one process on the same global minibatches and writes the same
numbers (``tests/test_probe_ddp.py`` compares the two runs).

Every rank holds the same probe data (``train_data``): the captures check it. The loss passed to
``probe.step`` is the global minibatch's (the ranks' losses averaged).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import gradnoise
from gradnoise.probe import QUICK_OPTIONS


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic 4-class problem: Gaussian inputs, labels from two random projections."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=gen)
    w = torch.randn(20, 2, generator=gen)
    z = x @ w
    y = (z[:, 0] > 0).long() * 2 + (z[:, 1] > 0.5).long()
    return x, y


def build_model(width: int) -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    return nn.Sequential(nn.Linear(20, width), nn.Tanh(), nn.Linear(width, width), nn.GELU(),
                         nn.Linear(width, 4))  # fmt: skip


def global_batches(n: int, batch: int, steps: int, seed: int = 1) -> list[np.ndarray]:
    """The global minibatch of each step: epochs of a seeded permutation (the same everywhere)."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * batch:
        order.extend(rng.permutation(n).tolist())
    return [np.asarray(order[k * batch : (k + 1) * batch]) for k in range(steps)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/ddp-probe")
    parser.add_argument("--tiny", action="store_true", help="a few steps, quick analyses")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)

    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("gloo")  # torchrun sets MASTER_ADDR (127.0.0.1), ranks, port
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    n, batch, steps, width = (256, 16, 8, 16) if args.tiny else (4096, 64, 300, 128)
    if batch % world:
        raise SystemExit(f"the global batch {batch} must split evenly over {world} ranks")
    dtype = getattr(torch, args.dtype)
    x, y = make_data(n)
    x = x.to(dtype)
    model = build_model(width).to(dtype)
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    checkpoints = [0, steps // 2, steps]

    probe = gradnoise.Probe(
        args.out,
        net,  # a DDP model is unwrapped (same parameters)
        loss_fn,
        (x, y),  # what the study measures on: the same tensors on every rank
        batch_size=batch,  # the global minibatch
        optimizer=opt,
        checkpoints=checkpoints,
        analyses=("gradients",) if args.tiny else ("gradients", "tails", "variance"),
        options=QUICK_OPTIONS if args.tiny else None,
        per_sample_examples=32 if args.tiny else 256,
        noise_batches=8 if args.tiny else 64,
        track_coords=100 if args.tiny else 5000,
        process_group="world" if distributed else None,
    )
    share = batch // world
    for step, index in enumerate(global_batches(n, batch, steps)):
        mine = torch.as_tensor(index[rank * share : (rank + 1) * share])
        opt.zero_grad()
        loss = loss_fn(net(x[mine]), y[mine])
        loss.backward()  # DDP: every rank now holds the global minibatch's gradient
        global_loss = loss.detach().clone()
        if distributed:
            dist.all_reduce(global_loss)
            global_loss /= world
        probe.step(step, loss=float(global_loss), lr=opt.param_groups[0]["lr"])
        opt.step()
    report = probe.finish(final_step=steps)  # None on ranks other than 0
    result: dict = {"rank": rank, "world": world}
    if report is not None:
        result["report"] = str(report)
        summary = json.loads((Path(args.out) / "summary.json").read_text())
        rows = summary["analyses"]["gradients"]["checkpoints"]
        result["||G|| at checkpoints"] = [r["full_grad_norm"] for r in rows]
        print(json.dumps(result))
    if distributed:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
