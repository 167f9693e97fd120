"""Torch side of the escape analysis: many paths of SGD or of a per-coordinate SDE on the
network's own loss, from a trained checkpoint (Battash & Lindenbaum; methods.md §3).

Imported only inside ``compute`` (rendering never needs torch). Paths are batched with
``torch.func.vmap`` over flat parameter vectors; the model runs in eval mode (no dropout), so a
path's loss is a deterministic function of its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, vmap

from ...stats import sample_stable

ARMS = ("sgd", "levy", "gauss")


class FlatNet:
    """A model's loss as a function of flat parameter vectors ``[m, P]`` (``named_parameters()``
    order, each tensor row-major: the column order of a full :class:`ParamSelection`)."""

    def __init__(self, model: Any, loss_fn: Any) -> None:
        self.model = model.eval()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.buffers = dict(model.named_buffers())
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.loss_fn = loss_fn

        def loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            params, start = {}, 0
            for name, shape, k in zip(self.names, self.shapes, self.numels, strict=True):
                params[name] = theta[start : start + k].reshape(shape)
                start += k
            out = functional_call(self.model, (params, self.buffers), (x,))
            return self.loss_fn(out, y)

        self._loss = loss
        self._shared_grad = vmap(grad_and_value(loss), in_dims=(0, None, None))
        self._own_grad = vmap(grad_and_value(loss), in_dims=(0, 0, 0))
        self._shared_loss = vmap(loss, in_dims=(0, None, None))

    @property
    def layer_of_columns(self) -> np.ndarray:
        """Index into :attr:`names` of the tensor owning each coordinate, ``[P]``."""
        return np.repeat(np.arange(len(self.names)), self.numels)

    def loss(self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss on ``(x, y)`` at each row of ``thetas``, ``[m]``."""
        with torch.no_grad():
            return self._shared_loss(thetas, x, y)

    def grad(self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of the loss on the shared data ``(x, y)`` at each row, ``[m, P]``."""
        return self._shared_grad(thetas, x, y)[0]

    def minibatch_grad(
        self, thetas: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        """Gradient of row i's loss on its own minibatch ``(xb[i], yb[i])``, ``[m, P]``."""
        return self._own_grad(thetas, xb, yb)[0]


@dataclass
class Paths:
    """First exits and displacements of :func:`simulate` (numpy, one row per path).

    basin_step: first checked step k with the path outside the basin (-1: trapped until
    ``steps``). box_step / box_coord: first step at which some coordinate was ``>= box`` away
    from the start, and that coordinate (the largest such when several; -1: never).
    end_step: the step at which the path stopped (basin exit, box exit with ``stop_at_box``, or
    ``steps``). layer_sq: ``[paths, L]`` squared displacement per parameter tensor at
    ``end_step``; far_coord: the coordinate with the largest |displacement| there.
    trace: ``[steps + 1, len(trace_coords)]`` displacement of path 0 (NaN after it stopped).
    """

    basin_step: np.ndarray
    box_step: np.ndarray
    box_coord: np.ndarray
    end_step: np.ndarray
    layer_sq: np.ndarray
    far_coord: np.ndarray
    trace: np.ndarray
    steps: int


def simulate(
    net: FlatNet,
    arm: str,
    *,
    lr: float,
    steps: int,
    paths: int,
    data: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    alpha: np.ndarray,
    scale: np.ndarray,
    seed: int,
    exit_rule: str,
    threshold: float,
    loss_star: float,
    box: float,
    check_every: int,
    trace_coords: np.ndarray,
    stop_at_box: bool = False,
) -> Paths:
    """``paths`` independent paths from the checkpoint ``net.theta``, ``steps`` steps of ``lr``.

    * ``sgd``: theta <- theta - lr g_B(theta), each path with its own minibatches of
      ``batch_size`` from the train split ``data`` (epochs without replacement, as the study
      trains; orders seeded from ``seed``).
    * ``levy`` / ``gauss``: the Euler step of the per-coordinate SDE of Battash & Lindenbaum,
      theta_j <- theta_j - lr (d_j L(theta) + scale_j S_j), L the loss on the whole train split
      ``data`` and S_j ~ SαS(alpha_j, 1) independent (``gauss``: alpha = 2 everywhere, the
      Gaussian N(0, 2 scale_j^2) of the same scale); see :mod:`gradnoise.levy`.

    Basin exit (``exit_rule``): ``"loss"``, the loss on ``data`` above ``loss_star + threshold``,
    checked every ``check_every`` steps and at the last; ``"distance"``, the Euclidean distance
    from the start above ``threshold``, checked every step. A path stops at its basin exit.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    x, y = data
    n = int(x.shape[0])
    dev, dtype = net.theta.device, net.theta.dtype
    p = net.theta.numel()
    rng = np.random.default_rng(seed)
    theta0 = net.theta.unsqueeze(0)
    theta = theta0.repeat(paths, 1)
    live = np.arange(paths)
    groups = torch.as_tensor(net.layer_of_columns, device=dev)
    n_layers = len(net.names)
    basin = np.full(paths, -1, dtype=np.int64)
    box_step = np.full(paths, -1, dtype=np.int64)
    box_coord = np.full(paths, -1, dtype=np.int64)
    end = np.full(paths, steps, dtype=np.int64)
    layer_sq = np.zeros((paths, n_layers))
    far = np.full(paths, -1, dtype=np.int64)
    trace = np.full((steps + 1, len(trace_coords)), np.nan)
    tc = torch.as_tensor(trace_coords, dtype=torch.long, device=dev)
    trace[0] = 0.0
    if arm == "sgd":
        orders = [np.empty(0, dtype=np.int64) for _ in range(paths)]
        pos = np.zeros(paths, dtype=np.int64)
    else:
        a = np.full(p, 2.0) if arm == "gauss" else np.asarray(alpha, dtype=np.float64)
        sc = torch.as_tensor(np.asarray(scale, dtype=np.float64), dtype=dtype, device=dev)

    def finish(rows: np.ndarray, k: int, disp: torch.Tensor) -> None:
        ids = live[rows]
        end[ids] = k
        d = disp[rows].double()
        sq = torch.zeros(len(rows), n_layers, dtype=torch.float64, device=dev)
        sq.index_add_(1, groups, d * d)
        layer_sq[ids] = sq.cpu().numpy()
        far[ids] = d.abs().argmax(1).cpu().numpy()

    for k in range(1, steps + 1):
        if live.size == 0:
            break
        if arm == "sgd":
            idx = np.empty((live.size, batch_size), dtype=np.int64)
            for r, i in enumerate(live):
                if pos[i] + batch_size > orders[i].size:
                    orders[i], pos[i] = rng.permutation(n), 0
                idx[r] = orders[i][pos[i] : pos[i] + batch_size]
                pos[i] += batch_size
            it = torch.as_tensor(idx, device=dev)
            g = net.minibatch_grad(theta, x[it], y[it])
        else:
            g = net.grad(theta, x, y)
            s = sample_stable(a, scale=1.0, size=(live.size, p), rng=rng)
            g = g + sc * torch.as_tensor(s, dtype=dtype, device=dev)
        theta = theta - lr * g
        disp = theta - theta0
        if live[0] == 0:
            trace[k] = disp[0, tc].double().cpu().numpy()
        # first coordinate to leave the box |theta_j - theta*_j| < box
        far_abs, far_j = disp.abs().max(1)
        hit = (far_abs >= box).cpu().numpy()
        fresh = hit & (box_step[live] < 0)
        if fresh.any():
            box_step[live[fresh]] = k
            box_coord[live[fresh]] = far_j.cpu().numpy()[fresh]
        if exit_rule == "distance":
            out = (disp.double().norm(dim=1) > threshold).cpu().numpy()
        elif k % check_every == 0 or k == steps:
            out = (net.loss(theta, x, y).double() > loss_star + threshold).cpu().numpy()
        else:
            out = np.zeros(live.size, dtype=bool)
        out |= ~torch.isfinite(theta).all(1).cpu().numpy()  # a diverged path has left
        basin[live[out]] = k
        stop = out | (fresh if stop_at_box else False)
        if k == steps:
            stop = np.ones(live.size, dtype=bool)
        if stop.any():
            finish(np.flatnonzero(stop), k, disp)
            keep = ~stop
            theta, live = theta[torch.as_tensor(keep, device=dev)], live[keep]
    return Paths(basin, box_step, box_coord, end, layer_sq, far, trace, steps)


def axis_losses(
    net: FlatNet,
    cols: np.ndarray,
    width: float,
    data: tuple[torch.Tensor, torch.Tensor],
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """``(L(theta* + w e_j) - L*, L(theta* - w e_j) - L*)`` for each coordinate j of ``cols``
    (the loss on ``data``, float64 differences of the model's float losses), in chunks of
    ``chunk`` perturbed parameter vectors."""
    x, y = data
    theta0 = net.theta.unsqueeze(0)
    base = float(net.loss(theta0, x, y)[0])
    out = []
    for sign in (1.0, -1.0):
        vals = np.empty(len(cols))
        for lo in range(0, len(cols), chunk):
            c = torch.as_tensor(cols[lo : lo + chunk], device=net.theta.device)
            rows = theta0.repeat(len(c), 1)
            rows[torch.arange(len(c)), c] += sign * width
            vals[lo : lo + len(c)] = net.loss(rows, x, y).double().cpu().numpy()
        out.append(vals - base)
    return out[0], out[1]


def train_to_loss(
    model: Any,
    loss_fn: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    target: float,
    max_steps: int,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """Plain SGD (step ``lr``, minibatches of ``batch_size`` drawn as the study does: epochs
    without replacement) until the loss on the whole ``(x, y)`` is at most ``target``, checked
    after every step, or ``max_steps`` steps. Eval mode (no dropout). Returns (steps taken, loss
    on ``(x, y)`` at the end). Changes ``model`` in place."""
    n = x.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    perm, pos = np.empty(0, dtype=np.int64), 0
    model.eval()

    def full_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    loss = full_loss()
    step = 0
    while loss > target and step < max_steps:
        if pos + batch_size > perm.size:
            perm, pos = rng.permutation(n), 0
        idx = torch.as_tensor(perm[pos : pos + batch_size], device=x.device)
        pos += batch_size
        grads = torch.autograd.grad(loss_fn(model(x[idx]), y[idx]), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g
        step += 1
        loss = full_loss()
    return step, loss
