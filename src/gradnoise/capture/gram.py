"""Gram matrix of per-example gradients, ``K[a, b] = <g_a, g_b>``, without forming ``[N, P]``.

For a Linear layer ``y = W x + c`` the per-example weight gradient is ``G_b = sum_s g_bs x_bs^T``
(``g = dL_b/dy``; s runs over sequence positions, or over output pixels of a convolution whose
input is unfolded), so inner products factor (the "ghost" trick of Goodfellow 2015 and Li et al.
2022, applied to cross terms):

    <G_a, G_b> = sum_{s,t} (g_as . g_bt)(x_as . x_bt),   without positions: (g_a . g_b)(x_a . x_b).

This costs ``S^2 (f_in + f_out)`` per pair of examples instead of ``f_in f_out``; a layer uses
it when that is cheaper (``factor="auto"``). Every other selected parameter has its per-example
gradient materialised for one block of examples at a time (layer rules of
:mod:`gradnoise.capture.layers`; ``torch.func`` for layers without a rule, shared parameters or
modules a rule does not support). Layer inputs and output gradients come from one forward and one
backward per block (:func:`gradnoise.capture.layer_io`).

Blocks: when the per-example features of all N examples fit in ``max_memory`` bytes they are kept
and the Gram matrix is assembled block pair by block pair; otherwise the features of block j are
recomputed for each pair (i, j), so memory stays bounded whatever N.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NonFiniteGradientError, PerSampleFallbackWarning
from ..memory import ACTIVATION_COPIES, GRADIENT_COPIES, bytes_per_example, parse_memory
from ..selection import ParamSelection
from ._budget import activation_bytes
from ._common import (
    ParamsArg,
    check_batchnorm,
    in_float32,
    model_device,
    resolve_selection,
)
from ._dist import ProcessGroupArg, Shard, shard_of, unwrap
from ._passes import Column, FuncRows, columns_of, loop_rows, structured_pass
from ._verify import verify_chunk
from .audit import PROBE_SIZE, ModelAudit, Path, audit, demote, owner_modules
from .layers import LAYER_RULES, _conv_geometry
from .per_sample import _check_batch

Factor = Literal["auto", "always", "never"]

#: Row-chunk of the [a*S, b*S] products of sequence layers (bytes of one float64 temporary).
_PAIR_BYTES = 1 << 26


class _StepAside(Exception):
    """A layer rule failed a per-block check; the Gram matrix is restarted without it."""

    def __init__(self, names: list[str], reason: str) -> None:
        super().__init__(reason)
        self.names, self.reason = names, reason


@dataclass
class _Module:
    """How one module's selected parameters enter the Gram matrix."""

    module: nn.Module
    factor_weight: bool = False
    # (pname, column in the materialised buffer)
    materialised: list[tuple[str, Column]] = field(default_factory=list)


@dataclass
class _Features:
    """Per-example quantities of one block: factored (x, g) pairs and materialised gradients."""

    count: int  # examples in the block
    # per factored module: list of (X, G) in the model's dtype, widened to float64 (exactly)
    # where a pair of blocks is multiplied, so a held block costs its own dtype's bytes
    factored: list[list[tuple[Tensor, Tensor]]]
    rows: Tensor | None  # [c, W] materialised per-example gradients (model dtype)


class _GramPlan:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        selection: ParamSelection,
        tensors: list[Tensor],
        result: ModelAudit,
        device: torch.device,
        factor: Factor,
    ) -> None:
        self.model, self.loss_fn, self.device, self.factor = model, loss_fn, device, factor
        self.result = result
        self.owners = owners = owner_modules(model)
        self.modules: dict[nn.Module, _Module] = {}
        self.entries: list[tuple[_Module, str, Column]] = []
        self.general: list[Column] = []
        for col in columns_of(selection, tensors):
            path = result.path(col.name)
            if path != "structured":
                self.general.append(col)
                continue
            module, pname = owners[col.name]
            plan = self.modules.setdefault(module, _Module(module))
            can_factor = (
                pname == "weight"
                and col.index is None
                and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
                and (isinstance(module, nn.Linear) or _conv_geometry(module) is not None)
                and factor != "never"
            )
            if can_factor:
                plan.factor_weight = True  # provisional; "auto" may revert on the first block
            self.entries.append((plan, pname, col))
        self.width = 0  # columns of the materialised buffer, fixed by _layout()
        self.laid_out = False
        self.blocks = 0

    def _layout(self) -> None:
        """Assign buffer columns to every parameter that is not factored."""
        col = 0
        for plan, pname, entry in self.entries:
            if pname == "weight" and plan.factor_weight:
                continue
            width = entry.cols.stop - entry.cols.start
            plan.materialised.append(
                (pname, Column(entry.name, entry.tensor, slice(col, col + width), entry.index))
            )
            col += width
        moved = []
        for entry in self.general:
            width = entry.cols.stop - entry.cols.start
            moved.append(Column(entry.name, entry.tensor, slice(col, col + width), entry.index))
            col += width
        self.general = moved
        self.width = col
        self.laid_out = True

    # ---- per-block features --------------------------------------------------------------

    def features(self, x: Tensor, y: Tensor) -> _Features:
        c = x.shape[0]
        self.blocks += 1
        records: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in self.modules}
        if self.modules:  # non-finite values surface on the Gram diagonal (checked at the end)
            checked = [col for _, _, col in self.entries]
            found = structured_pass(
                self.model, self.loss_fn, x, y, list(self.modules), [col.tensor for col in checked]
            )
            failed, reason = verify_chunk(
                self.model,
                self.loss_fn,
                x,
                y,
                found,
                checked,
                self.owners,
                self.result,
                self.blocks,
            )
            if failed:
                raise _StepAside([col.name for col in failed], reason)
            for module, inp, g in found.calls:
                records[module].append((inp, g))
        if not self.laid_out:
            self._decide(records, c)
            self._layout()
        dtype = next(iter(self.model.parameters())).dtype
        rows = torch.zeros(c, self.width, dtype=dtype, device=self.device) if self.width else None
        factored: list[list[tuple[Tensor, Tensor]]] = []
        for module, plan in self.modules.items():
            recs = records[module]
            if plan.factor_weight:
                factored.append(self._factor_pairs(module, recs, c))
            rule = LAYER_RULES[type(module)]
            for pname, col in plan.materialised:
                assert rows is not None
                for r, (inp, g) in enumerate(recs):
                    rule.compute(module, pname, inp, g, col.index, rows[:, col.cols], r > 0)
        func = [col for col in self.general if self.result.path(col.name) == "func"]
        loop = [col for col in self.general if self.result.path(col.name) != "func"]
        if func:
            assert rows is not None
            FuncRows(self.model, self.loss_fn, func, False).fill(x, y, rows)
        if loop:
            assert rows is not None
            loop_rows(self.model, self.loss_fn, x, y, loop, rows)
        return _Features(c, factored, rows)

    def _sequences(self, module: nn.Module, recs: list[tuple[Tensor, Tensor]], c: int) -> list:
        """Per group: (X [c, S, f_in], G [c, S, f_out]) with all calls joined along S."""
        groups = getattr(module, "groups", 1)
        xs: list[list[Tensor]] = [[] for _ in range(groups)]
        gs: list[list[Tensor]] = [[] for _ in range(groups)]
        for inp, g in recs:
            if isinstance(module, nn.Linear):
                xs[0].append(inp.reshape(c, -1, inp.shape[-1]))
                gs[0].append(g.reshape(c, -1, g.shape[-1]))
                continue
            geometry = _conv_geometry(module)
            assert geometry is not None
            kernel, dilation, padding, stride = geometry
            x4 = inp.unsqueeze(2) if isinstance(module, nn.Conv1d) else inp
            cols = F.unfold(x4, kernel, dilation=dilation, padding=padding, stride=stride)
            cols = cols.reshape(c, groups, -1, cols.shape[-1])
            gg = g.reshape(c, groups, g.shape[1] // groups, -1)
            for k in range(groups):
                xs[k].append(cols[:, k].transpose(1, 2))
                gs[k].append(gg[:, k].transpose(1, 2))
        return [(torch.cat(xs[k], 1), torch.cat(gs[k], 1)) for k in range(groups) if xs[k]]

    def _decide(self, records: dict[nn.Module, list[tuple[Tensor, Tensor]]], c: int) -> None:
        """``factor="auto"``: factor a weight when ``S^2 (f_in + f_out) < f_in f_out``."""
        for module, plan in self.modules.items():
            if not plan.factor_weight or self.factor == "always":
                continue
            seqs = self._sequences(module, records[module], c) if records[module] else []
            if not seqs:
                plan.factor_weight = False
                continue
            x, g = seqs[0]
            s, f_in, f_out = x.shape[1], x.shape[2], g.shape[2]
            plan.factor_weight = s * s * (f_in + f_out) < f_in * f_out

    def _factor_pairs(
        self, module: nn.Module, recs: list[tuple[Tensor, Tensor]], c: int
    ) -> list[tuple[Tensor, Tensor]]:
        if not recs:  # layer unused in this forward: zero gradient
            return []
        return self._sequences(module, recs, c)

    def nbytes_per_example(self, feats: _Features) -> int:
        total = 0 if feats.rows is None else feats.rows[0].numel() * feats.rows.element_size()
        for pairs in feats.factored:
            total += sum(
                x[0].numel() * x.element_size() + g[0].numel() * g.element_size() for x, g in pairs
            )
        return total


def _gram_block(fa: _Features, fb: _Features) -> Tensor:
    """``K[a, b]`` for the examples of two blocks, float64."""
    out = torch.zeros(fa.count, fb.count, dtype=torch.float64)
    for pairs_a, pairs_b in zip(fa.factored, fb.factored, strict=True):
        if not pairs_a or not pairs_b:
            continue
        for (xa, ga), (xb, gb) in zip(pairs_a, pairs_b, strict=True):
            out += _factored(xa, ga, xb, gb).cpu()
    if fa.rows is not None and fb.rows is not None:
        width = fa.rows.shape[1]
        step = 1 << 15
        for start in range(0, width, step):
            a = fa.rows[:, start : start + step].to(torch.float64)
            b = fb.rows[:, start : start + step].to(torch.float64)
            out += (a @ b.T).cpu()
    return out


def _factored(xa: Tensor, ga: Tensor, xb: Tensor, gb: Tensor) -> Tensor:
    """``sum_{s,t} (g_as . g_bt)(x_as . x_bt)`` for all pairs (a, b), in float64 (the factors
    are widened here, exactly)."""
    f64 = torch.float64
    ca, s, _ = xa.shape
    cb, t, _ = xb.shape
    if s == 1 and t == 1:
        return (ga[:, 0].to(f64) @ gb[:, 0].to(f64).T) * (xa[:, 0].to(f64) @ xb[:, 0].to(f64).T)
    xb2, gb2 = xb.reshape(cb * t, -1).to(f64), gb.reshape(cb * t, -1).to(f64)
    rows = max(1, _PAIR_BYTES // max(1, 8 * s * cb * t))
    parts = []
    for start in range(0, ca, rows):
        xa2 = xa[start : start + rows].reshape(-1, xa.shape[2]).to(f64)
        ga2 = ga[start : start + rows].reshape(-1, ga.shape[2]).to(f64)
        prod = (ga2 @ gb2.T) * (xa2 @ xb2.T)
        parts.append(prod.reshape(-1, s, cb, t).sum(dim=(1, 3)))
    return torch.cat(parts)


@in_float32
def per_sample_gram(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: ParamsArg = None,
    block_size: int = 256,
    max_memory: int | str = 1 << 28,
    factor: Factor = "auto",
    dropout: Literal["error", "eval"] = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
) -> np.ndarray:
    """Uncentred Gram matrix ``K = G G^T`` (float64, ``[N, N]``) of per-example gradients.

    ``G`` is what :func:`gradnoise.per_sample_grads` would return for the same arguments (the loss
    of example i is ``loss_fn`` on a batch of one), but it is never formed: Linear/Conv weights use
    the factored inner products of the module docstring, other parameters are materialised one
    block of examples at a time.

    Args:
        params: None (all trainable parameters), glob(s), or a :class:`ParamSelection`; coordinate
            subsets are materialised (not factored).
        block_size: examples per forward/backward.
        max_memory: bytes (or a size such as ``"4GiB"``) for the per-example features of all
            N examples plus the computation of one block: its checks' gradients (three of P,
            ``bytes_per_example(params)`` of :mod:`gradnoise.memory`) and, per example, its
            features again as temporaries and ``ACTIVATION_COPIES`` times the activations its
            forward saves (measured). Beyond it the Gram matrix is built from pairs of blocks
            of ``(max_memory - 3 P itemsize) // (3 * features + 2 * activations)`` examples
            (two held, one being computed), recomputing one side (more compute, bounded
            memory). The first block (which measures the features' size) holds at most
            ``max_memory // (2 * 3 * P * itemsize)`` examples, so a large model never
            materialises ``block_size`` full gradients at once.
        factor: ``"auto"`` (factor Linear/Conv weights when cheaper), ``"always"`` or ``"never"``.
        dropout: ``"error"`` or ``"eval"`` (random masks would differ between recomputed blocks).
        process_group: share the block pairs among the ranks of a ``torch.distributed`` group
            (``"world"``: the default group); every rank passes the same inputs and gets K.

    Returns:
        ``[N, N]`` float64 numpy array.
    """
    model = unwrap(model)
    shard = shard_of(process_group)
    selection, tensors = resolve_selection(model, params)
    dev = model_device(model, device)
    check_batchnorm(model)
    n = _check_batch(inputs, targets)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    budget = parse_memory(max_memory) or 1
    block_size = min(block_size, max(1, budget // (2 * max(1, bytes_per_example(tensors)))))
    if factor not in ("auto", "always", "never"):
        raise ValueError(f"factor must be 'auto', 'always' or 'never', got {factor!r}")
    if dropout not in ("error", "eval"):
        raise ValueError(
            f"dropout must be 'error' or 'eval' for a Gram matrix, got {dropout!r} (random masks "
            "would change between the blocks that are recomputed)"
        )
    probe = min(n, PROBE_SIZE)
    x0, y0 = inputs[:probe].to(dev), targets[:probe].to(dev)
    result = audit(model, loss_fn, x0, y0, selection, tensors, dropout, "per_sample")
    shard.check_same_data(n, x0, "per_sample_gram")
    act = activation_bytes(model, loss_fn, (inputs, targets), n, tensors, result, dropout, dev)
    plan_memory = _MemoryPlan(budget, bytes_per_example(tensors), act)
    with result.randomness(dropout):
        while True:
            plan = _GramPlan(model, loss_fn, selection, tensors, result, dev, factor)
            try:
                return _assemble(plan, inputs, targets, n, block_size, plan_memory, dev, shard)
            except _StepAside as err:
                path: Path = "loop"  # always exact, whatever the model
                result = demote(model, result, err.names, path, err.reason)
                warnings.warn(
                    f"gradnoise: the layer rule of {', '.join(map(repr, err.names))} stepped "
                    f"aside in the Gram matrix: {err.reason}; restarted with the exact {path} path",
                    PerSampleFallbackWarning,
                    stacklevel=2,
                )


def _assemble(
    plan: _GramPlan,
    inputs: Tensor,
    targets: Tensor,
    n: int,
    block_size: int,
    memory: _MemoryPlan,
    dev: torch.device,
    shard: Shard,
) -> np.ndarray:
    """The Gram matrix from blocks of examples; with a process group, every rank computes the
    block pairs (and, in memory, the blocks' features) it owns and the parts are summed."""
    gram = np.zeros((n, n), dtype=np.float64)

    def block(start: int, stop: int) -> _Features:
        x = inputs[start:stop].to(dev, non_blocking=True)
        y = targets[start:stop].to(dev, non_blocking=True)
        return plan.features(x, y)

    first = block(0, min(block_size, n))  # every rank: it fixes the layout and the memory plan
    per_example = max(1, plan.nbytes_per_example(first))
    if memory.in_memory(per_example, n, block_size):
        starts = list(range(0, n, block_size))
        mine: dict[int, _Features] = {}
        failure = None
        try:
            for b, start in enumerate(starts):
                if b == 0 or shard.mine(b):
                    mine[b] = first if b == 0 else block(start, min(start + block_size, n))
        except _StepAside as err:
            failure = err
        feats: dict[int, _Features] = {}
        for part, err in shard.gather_objects(
            ({b: _moved(f, "cpu") if shard.shared else f for b, f in mine.items()}, failure)
        ):
            _raise_any(err)
            feats.update(part)
        for p, (i, j) in enumerate(_pairs(len(starts))):
            if shard.mine(p):
                _fill(gram, starts[i], starts[j], _gram_block(feats[i], feats[j]))
    else:  # bounded memory: two blocks of features at a time, recomputing the inner block
        size = min(block_size, memory.bounded_block(per_example))
        starts = list(range(0, n, size))
        failure = None
        cached: tuple[int, _Features] | None = None
        try:
            for p, (i, j) in enumerate(_pairs(len(starts))):
                if not shard.mine(p):
                    continue
                if cached is None or cached[0] != i:
                    cached = fi = None  # the previous outer block goes before the next is made
                    cached = (i, block(starts[i], min(starts[i] + size, n)))
                fi = cached[1]
                fj = fi if j == i else block(starts[j], min(starts[j] + size, n))
                _fill(gram, starts[i], starts[j], _gram_block(fi, fj))
                del fj  # else alive while the next inner block is computed: a fourth block
        except _StepAside as err:
            failure = err
        for err in shard.gather_objects(failure):
            _raise_any(err)
    shard.sum_(torch.from_numpy(gram))
    return _checked(gram)


@dataclass(frozen=True)
class _MemoryPlan:
    """What ``max_memory`` must hold while the Gram matrix is built (bytes).

    Computing a block holds its checks' gradients (``checks``: the batch gradient and two
    examples run alone, three gradients of P) and per example the layer inputs, output
    gradients and rule temporaries (one more copy of its features) and the activations its
    forward saves (``activations``, measured, ``ACTIVATION_COPIES`` of them during backward)."""

    budget: int
    checks: int
    activations: int

    def computing(self, per_example: int, size: int) -> int:
        return self.checks + size * (per_example + ACTIVATION_COPIES * self.activations)

    def in_memory(self, per_example: int, n: int, block_size: int) -> bool:
        """Features of all ``n`` examples held besides the computation of one block."""
        return n * per_example + self.computing(per_example, block_size) <= self.budget

    def bounded_block(self, per_example: int) -> int:
        """Examples per block when two blocks are held besides the computation of a third
        (``GRADIENT_COPIES`` blocks of features in all); at least 1."""
        per_block = GRADIENT_COPIES * per_example + ACTIVATION_COPIES * self.activations
        return max(1, (self.budget - self.checks) // per_block)


def _pairs(blocks: int) -> list[tuple[int, int]]:
    """Block pairs ``(i, j)`` with ``j <= i``, row by row."""
    return [(i, j) for i in range(blocks) for j in range(i + 1)]


def _raise_any(err: _StepAside | None) -> None:
    if err is not None:  # every rank raises, so no rank waits in a collective
        raise _StepAside(err.names, err.reason)


def _moved(f: _Features, device: str | torch.device) -> _Features:
    return _Features(
        f.count,
        [[(x.to(device), g.to(device)) for x, g in pairs] for pairs in f.factored],
        None if f.rows is None else f.rows.to(device),
    )


def _checked(gram: np.ndarray) -> np.ndarray:
    """A per-example gradient holding NaN/Inf makes its diagonal entry ``|g_i|^2`` non-finite."""
    bad = ~np.isfinite(np.diag(gram))
    if bad.any():
        raise NonFiniteGradientError(
            f"non-finite (NaN/Inf) per-example gradient for {int(bad.sum())} example(s) (first: "
            f"example {int(np.flatnonzero(bad)[0])})"
        )
    return gram


def _fill(gram: np.ndarray, si: int, sj: int, block: Tensor) -> None:
    values = block.numpy()
    a, b = values.shape
    gram[si : si + a, sj : sj + b] = values
    if si != sj:
        gram[sj : sj + b, si : si + a] = values.T
