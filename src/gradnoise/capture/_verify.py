"""Per-chunk checks of the layer rules: every chunk proves them again, or they step aside.

The audit proves a layer rule on a probe batch; a chunk can still differ (a forward that changed,
data-dependent control flow, a coupling that the probe's examples do not trigger). Each chunk that
used the rules is checked, cheaply, on what its one forward and backward produced:

1. **calls**: every structured layer is called as in the audit (count and shapes) with the
   chunk's examples along dim 0;
2. **totals**: for every structured parameter, the per-example gradients summed over the chunk
   (computed from the layer's inputs and output gradients over the full width) equal the ordinary
   batch gradient of the same backward -- a use of the parameter outside its layer (a tied
   weight, even for a few inputs) breaks this;
3. **examples alone**: two examples of the chunk (drawn anew for every chunk) are run by
   themselves, one forward and one backward each: their outputs must equal their rows of the
   batch's outputs (else the examples are coupled for these inputs: refused), and their gradients
   the rule's rows (a permutation of the examples, a time-first layer whose time axis has the
   chunk's length, a coupling in the backward break this).

A parameter that fails 1–3 steps aside to the per-example loop; a failed output comparison
raises :class:`~gradnoise.errors.UnsupportedLayerError`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UnsupportedLayerError
from ._passes import Column, Pass, call_shapes, example_alone, flat_selected, structured_pass
from .audit import FLOOR, ModelAudit, owner_modules, relative_gap
from .layers import LAYER_RULES, conv_weight_grad


def check_tolerance(dtype: torch.dtype) -> float:
    """Agreement required between a chunk's rows and one example computed alone."""
    return max(1e-4, 16 * torch.finfo(dtype).eps)


def examples_along_dim0(calls: Sequence[tuple[Any, Tensor]], c: int) -> bool:
    """Every call's input and output gradient have the chunk's ``c`` examples along dim 0."""
    return all(
        isinstance(inp, Tensor) and inp.dim() > 0 and inp.shape[0] == c and g.shape[0] == c
        for inp, g in calls
    )


def call_scale(module: nn.Module, calls: Sequence[tuple[Tensor, Tensor]]) -> float:
    """``F = sum_i ||d_i|| A_i`` over a layer's calls: a bound on ``sum_i ||g_i||`` for every
    layer rule, with ``d_i`` the output gradient and ``A_i = max(||x_i|| sqrt(K), sqrt(n_i))``
    (``K`` the kernel size, ``n_i`` the input's size; integer inputs count ``sqrt(n_i)``).

    Rounding errors of a per-example gradient scale with the terms it sums, not with its value
    (a key projection's bias has gradient 0 by symmetry, computed as a sum of O(1) terms)."""
    kernel = math.prod(int(k) for k in getattr(module, "kernel_size", ()))
    total = 0.0
    for inp, g in calls:
        c = max(1, g.shape[0])
        d = torch.linalg.vector_norm(g.reshape(c, -1).to(torch.float64), dim=1)
        n = inp.numel() / c
        if inp.is_floating_point():
            a = torch.linalg.vector_norm(inp.reshape(c, -1).to(torch.float64), dim=1)
            a = torch.clamp(a * kernel**0.5, min=n**0.5)
        else:
            a = torch.full_like(d, n**0.5)
        total += float((d * a).sum())
    return total


def rule_rows(
    module: nn.Module,
    pname: str,
    calls: Sequence[tuple[Tensor, Tensor]],
    index: Tensor | None,
    width: int,
    rows: slice,
) -> Tensor:
    """The layer rule's per-example gradients of examples ``rows``, ``[len, width]``."""
    rule = LAYER_RULES[type(module)]
    first = calls[0][1] if calls else None
    count = len(range(*rows.indices(first.shape[0]))) if first is not None else 1
    out = torch.zeros(count, width, dtype=first.dtype if first is not None else torch.float64)
    if first is not None:
        out = out.to(first.device)
    for r, (inp, g) in enumerate(calls):
        rule.compute(module, pname, inp[rows], g[rows], index, out, r > 0)
    return out


def rule_total(
    module: nn.Module,
    pname: str,
    calls: Sequence[tuple[Tensor, Tensor]],
    index: Tensor | None,
    width: int,
) -> Tensor:
    """``sum_i`` of the per-example gradients over the chunk, ``[width]``: for Linear, Conv and
    Embedding weights from one computation over the whole chunk (the examples merged into one
    sequence, or the ordinary batched convolution weight gradient), for the others (biases,
    norms: elementwise rules) from their rows."""
    rule = LAYER_RULES[type(module)]
    weight = pname == "weight"
    if weight and isinstance(module, (nn.Linear, nn.Embedding)):
        out = None
        for r, (inp, g) in enumerate(calls):
            merged_in = (
                inp.reshape(1, -1)
                if isinstance(module, nn.Embedding)
                else inp.reshape(1, -1, inp.shape[-1])
            )
            merged_g = g.reshape(1, -1, g.shape[-1])
            if out is None:
                out = torch.zeros(1, width, dtype=g.dtype, device=g.device)
            rule.compute(module, pname, merged_in, merged_g, index, out, r > 0)
        return out[0] if out is not None else torch.zeros(width)
    if weight and hasattr(module, "kernel_size"):
        total = sum(conv_weight_grad(module, inp, g, per_example=False) for inp, g in calls)
        if not isinstance(total, Tensor):
            return torch.zeros(width)
        return flat_selected(total, index)
    return rule_rows(module, pname, calls, index, width, slice(None)).sum(0)


def totals_match(
    total: Tensor,
    batch_grad: Tensor | None,
    index: Tensor | None,
    terms: int,
    module: nn.Module,
    calls: Sequence[tuple[Tensor, Tensor]],
) -> bool:
    """``||total - b|| <= tol (||total|| + ||b|| + F)`` with ``tol = 4 max(terms, 16) eps``, a
    bound on the rounding of two orders of summation, and ``F`` from :func:`call_scale`
    (computed only when the first two terms do not suffice)."""
    if batch_grad is None:
        expected = torch.zeros_like(total)
    else:
        dense = batch_grad.to_dense() if batch_grad.is_sparse else batch_grad
        expected = flat_selected(dense, index).to(total.dtype)
    norm = torch.linalg.vector_norm
    tol = 4 * max(terms, 16) * torch.finfo(total.dtype).eps
    gap = float(norm(total - expected))
    slack = float(norm(total)) + float(norm(expected))
    return gap <= tol * slack or gap <= tol * (slack + call_scale(module, calls))


def verify_chunk(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    found: Pass,
    columns: Sequence[Column],
    owners: dict[str, tuple[nn.Module, str]],
    result: ModelAudit,
    seed: int,
) -> tuple[list[Column], str]:
    """Checks 1–3 of the module docstring for the structured ``columns`` of one chunk; returns
    the columns that failed and why (raises on coupled examples)."""
    c = int(x.shape[0])
    calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}
    for col in columns:
        calls.setdefault(owners[col.name][0], [])
    for module, inp, g in found.calls:
        if module in calls:
            calls[module].append((inp, g))
    failed: list[Column] = []
    reason = ""
    ok_modules = set()
    for module, seen in calls.items():
        if examples_along_dim0(seen, c) and result.same_calls(
            module, call_shapes(found.calls, module)
        ):
            ok_modules.add(module)
        else:
            reason = (
                "the layer is not called as in the audited forward (its calls' shapes changed), "
                "or its input does not hold the chunk's examples along dim 0"
            )
    grads = dict(zip((col.name for col in columns), found.grads, strict=True))
    for col in columns:
        module, pname = owners[col.name]
        if module not in ok_modules:
            failed.append(col)
            continue
        seen = calls[module]
        width = col.cols.stop - col.cols.start
        terms = c * max(1, sum(_positions(module, g) for _, g in seen))
        total = rule_total(module, pname, seen, col.index, width)
        if not totals_match(total, grads[col.name], col.index, terms, module, seen):
            failed.append(col)
            reason = (
                "the per-example gradients do not add up to the batch gradient (e.g. a parameter "
                "also used outside its layer for some inputs)"
            )
    wide = _Float64Check(model, loss_fn, x, y)
    for k in examples_to_check(seed, c):
        alive = [col for col in columns if col not in failed]
        if not alive:
            break
        width = max(col.cols.stop for col in alive)
        alone = torch.zeros(width, dtype=alive[0].tensor.dtype, device=x.device)
        outputs, _ = example_alone(model, loss_fn, x[k : k + 1], y[k : k + 1], alive, alone)
        compare_outputs(model, found.outputs, outputs, k, c)
        floor = FLOOR * float(alone.abs().max())
        for col in alive:
            module, pname = owners[col.name]
            row = rule_rows(
                module, pname, calls[module], col.index, alone[col.cols].numel(), slice(k, k + 1)
            )
            gap = relative_gap(row[0], alone[col.cols], floor)
            if not gap <= check_tolerance(row.dtype) and not wide.agrees(col, k):
                failed.append(col)
                reason = (
                    f"example {k} of the chunk computed alone has another gradient than the "
                    f"layer rule's row (relative gap {gap:.1e}): the layer's dim 0 is not the "
                    "example axis for these inputs (e.g. examples reordered inside the model)"
                )
    return failed, reason


class _Float64Check:
    """Check 3 again on a float64 copy of the model, for a low-precision failure: in float32 a
    deep network's rounding can move one example's gradient by percents between a batch and a
    batch of one (measured: 8e-2 relative through a ResNet-18's 20 GroupNorm layers, 4e-15 in
    float64), which is no reason to refuse the layer rule. The copy and its chunk pass are made
    once, on the first failure; a real reordering or coupling fails in float64 too."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        x: Tensor,
        y: Tensor,
    ) -> None:
        self.args = (model, loss_fn, x, y)
        self.state: tuple[nn.Module, dict[str, tuple[nn.Module, str]], Tensor, Pass] | None = None

    def agrees(self, col: Column, k: int) -> bool:
        model, loss_fn, x, y = self.args
        if col.tensor.dtype == torch.float64:
            return False
        if self.state is None:
            wide = copy.deepcopy(model).double()
            wide_owners = owner_modules(wide)
            xd = x.double() if x.is_floating_point() else x
            modules = list({id(m): m for m, _ in wide_owners.values()}.values())
            self.state = (wide, wide_owners, xd, structured_pass(wide, loss_fn, xd, y, modules))
        wide, wide_owners, xd, found = self.state
        module, pname = wide_owners[col.name]
        calls = [(inp, g) for m, inp, g in found.calls if m is module]
        tensor = getattr(module, pname)
        width = col.cols.stop - col.cols.start
        row = rule_rows(module, pname, calls, col.index, width, slice(k, k + 1))
        alone = torch.zeros(width, dtype=torch.float64, device=xd.device)
        wide_col = Column(col.name, tensor, slice(0, width), col.index)
        example_alone(wide, loss_fn, xd[k : k + 1], y[k : k + 1], [wide_col], alone)
        floor = FLOOR * float(alone.abs().max())
        return relative_gap(row[0], alone, floor) <= check_tolerance(torch.float64)


def examples_to_check(seed: int, c: int) -> list[int]:
    """Two distinct examples of a chunk of ``c`` (one if ``c == 1``), drawn anew for every chunk:
    a batch-level branch triggered by one of them shows on the other, and a reordering of the
    examples inside the model rarely leaves both in place."""
    gen = torch.Generator().manual_seed(7919 * seed + c)
    return torch.randperm(c, generator=gen)[: min(2, c)].tolist()


def _positions(module: nn.Module, g: Tensor) -> int:
    """Positions one example's gradient sums over: a convolution's output pixels, a sequence
    layer's tokens (the terms of one entry of a per-example weight gradient)."""
    if g.dim() < 2:
        return 1
    if hasattr(module, "kernel_size") or isinstance(module, (nn.GroupNorm,)):
        return max(1, g[0, 0].numel())
    return max(1, g[0].numel() // max(1, g.shape[-1]))


def compare_outputs(
    model: nn.Module, whole: list[Tensor], alone: list[Tensor], k: int, c: int
) -> None:
    """Example k's outputs alone must be its rows of the batch's outputs."""
    for a, b in zip(whole, alone, strict=False):
        if not a.is_floating_point() or a.dim() == 0 or a.shape[0] != c:
            continue
        if tuple(b.shape) != (1, *a.shape[1:]):
            continue
        gap = relative_gap(a[k : k + 1], b)
        if not gap <= check_tolerance(a.dtype):
            raise UnsupportedLayerError(
                f"example {k} of a chunk gives other outputs alone than together with the "
                f"chunk's other examples (relative gap {gap:.1e}): {type(model).__name__} mixes "
                "the examples of a batch for these inputs (a coupling its audit's first examples "
                "did not show, or randomness outside torch's random operations), so per-example "
                "gradients are not defined"
            )
