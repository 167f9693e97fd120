"""Gradient Clustering (GC): stratified minibatches from a weighted clustering of per-example gradients.

Faghri, Duvenaud, Fleet & Ba, "A Study of Gradient Variance in Deep Learning" (arXiv 2007.04532;
official code ``gluster/``, ``estim/gluster.py``, ``data.py`` of fartashf/gvar_code), as specified
in ``../shared/research/methods.md`` §5(b):

* The training set is split into C clusters of per-example gradients ``g_i``. A minibatch takes
  examples from every cluster in turn (stratified sampling) and weights example i of cluster k by
  ``w_k = M N_k / N`` (M non-empty clusters, N_k members, N examples); the weighted mean
  ``(1/B) sum_b w_b g_b`` is an unbiased estimate of the full gradient. With one draw per cluster
  its variance is ``(1/N^2) sum_k N_k sum_{i in k} ||g_i - mu_k||^2``, hence the *weighted*
  clustering objective: example i goes to ``argmin_c (n_c + 1) ||g_i - C_c||^2``, where ``n_c``
  counts the examples already assigned to c in the current pass (examples visited in a random
  order), so a cluster gets more expensive as it fills.
* Centres are per-layer rank-1 for Linear and Conv layers, ``C_c = co_c ci_c^T``, so that
  ``||g_i - C_c||^2`` is computed from the layer's input activations ``a_i`` and output gradients
  ``d_i`` (:func:`gradnoise.capture.layer_io`) without materialising ``g_i``::

      ||g_i||^2      = sum_{s,t} (a_is . a_it)(d_is . d_it)     (= |a_i|^2 |d_i|^2 for T = 1)
      <C_c, g_i>     = sum_t (ci_c . a_it)(co_c . d_it)
      ||C_c||^2      = |ci_c|^2 |co_c|^2

  (t runs over sequence positions or unfolded conv patches), choosing the cheaper einsum order as
  the official code does (when ``T (din + dout) > din dout``, e.g. a small conv over many
  positions, the cheaper order forms that layer's ``[chunk, dout, din]`` gradients transiently). Centre update (official batch variant): ``ci_c`` = members' mean of
  ``(1/T) sum_t a_it``, ``co_c`` = members' mean of ``sum_t d_it`` -- a rank-1 *approximation*,
  not the mean of the members' gradients (methods.md §8 item 15).
* Biases of those layers get full centres (their per-example gradient ``sum_t d_it`` is cheap);
  the official code leaves biases out -- exclude them with ``params``. Any other parameter
  (GroupNorm, LayerNorm, Embedding, custom layers, coordinate subsets, shared weights) gets full
  centres through chunked :func:`gradnoise.per_sample_grads`; ``centers="full"`` does this for
  every parameter, i.e. exact weighted k-means in gradient space.

Deviations from the official code, all documented: Forgy initialisation (centres = C random
examples' gradients) instead of tiny random centres; one data pass per iteration (assignment and
centre accumulation together) instead of two; the weight is ``n_c + 1`` updated after every
example (the official code uses ``max(n_c, 1)`` updated after every minibatch of its pass);
clusters smaller than ``min_size`` after a pass are re-seeded from the worst-fitted examples
instead of receiving half of the cluster with the largest distortion.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler, TensorDataset

from .capture import full_grad, iter_minibatch_grads, minibatch_grads, per_sample_grads
from .capture._budget import sub_batch
from .capture._common import (
    DataArg,
    ParamsArg,
    check_batchnorm,
    dataset_size,
    fetch,
    in_float32,
    model_device,
    per_example_losses,
    require_examples,
    resolve_selection,
)
from .capture._dist import unwrap
from .capture._passes import columns_of, structured_pass
from .capture._verify import verify_chunk
from .capture.audit import ModelAudit, audit_data, demote, owner_modules
from .capture.layers import _conv_geometry
from .capture.per_sample import LayerIO
from .errors import NonFiniteGradientError, UnsupportedLayerError
from .memory import chunk_for, release_memory
from .selection import ParamSelection
from .stats._common import RNGLike, StatResult, as_generator
from .variance import gradient_variance, normalized_gradient_variance

__all__ = [
    "ClusteringResult",
    "EstimatorComparator",
    "EstimatorComparison",
    "EstimatorStats",
    "GradientClustering",
    "GradientClusteringSampler",
    "compare_estimators",
]

Centers = Literal["rank1", "full"]
ClusterDropout = Literal["error", "eval"]


# ----------------------------------------------------------------------------------------------
# per-layer blocks: features of a chunk, distance terms, centre updates


class _Block:
    """A group of gradient columns with its own centres (rank-1 or full)."""

    name: str
    # global columns of the selection, in this block's dense order (a range: 8 bytes a column
    # less for a layer's contiguous columns)
    cols: np.ndarray | range

    def features(self, records: dict[nn.Module, list[LayerIO]], full: Tensor | None, c: int) -> Any:
        raise NotImplementedError

    def terms(self, f: Any) -> tuple[Tensor, Tensor]:
        """``(dot [c, C], sq_norm [c])``: ``<C_k, g_i>`` and ``||g_i||^2``."""
        raise NotImplementedError

    def center_sq(self) -> Tensor:
        raise NotImplementedError

    def new_acc(self) -> list[Tensor]:
        raise NotImplementedError

    def accumulate(self, acc: list[Tensor], f: Any, assign: Tensor) -> None:
        raise NotImplementedError

    def finalize(self, acc: list[Tensor], counts: Tensor) -> None:
        raise NotImplementedError

    def seed(self, f: Any, rows: Tensor, clusters: Tensor) -> None:
        raise NotImplementedError

    def dense(self) -> Tensor:
        raise NotImplementedError

    def example_bytes(self, calls: list[Any], source_item: int) -> tuple[int, int]:
        """``(features, temporaries)``: bytes per example of this block's features of a chunk
        and of the largest temporaries of its :meth:`terms` (``calls``: the layer's calls as
        the audit saw them, ``(input shape[1:], output shape[1:])``; ``source_item``: the
        model's bytes per value)."""
        raise NotImplementedError


def _numel(shape: Any) -> int:
    return math.prod(shape) if shape is not None else 0


class _RankOne(_Block):
    """Weight of a Linear or Conv layer: centres ``co_c ci_c^T`` (``[dout, din]``)."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        cols: np.ndarray,
        k: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.name, self.module, self.cols = name, module, cols
        weight = module.weight
        assert isinstance(weight, Tensor)
        self.dout = int(weight.shape[0])
        self.din = int(weight[0].numel())
        self.conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
        self.ci = torch.zeros(k, self.din, dtype=dtype, device=device)
        self.co = torch.zeros(k, self.dout, dtype=dtype, device=device)
        self.dtype = dtype
        # None: pick the cheaper einsum order per chunk; "pairs"/"outer": forced (tests)
        self.dot_mode: str | None = None
        self.norm_mode: str | None = None

    def _one(self, io: LayerIO, c: int) -> tuple[Tensor, Tensor]:
        x, g = io.inputs.to(self.dtype), io.grad_output.to(self.dtype)
        if not self.conv:
            a = x.reshape(c, -1, self.din).transpose(1, 2)
            d = g.reshape(c, -1, self.dout).transpose(1, 2)
            return a, d
        geometry = _conv_geometry(self.module)
        assert geometry is not None
        kernel, dilation, padding, stride = geometry
        x4 = x.unsqueeze(2) if isinstance(self.module, nn.Conv1d) else x
        a = F.unfold(x4, kernel, dilation=dilation, padding=padding, stride=stride)
        return a, g.reshape(c, self.dout, -1)

    def features(
        self, records: dict[nn.Module, list[LayerIO]], full: Tensor | None, c: int
    ) -> tuple[Tensor, Tensor]:
        calls = records.get(self.module, [])
        if not calls:  # layer unused in this forward: zero gradient
            z = torch.zeros(c, self.din, 1, dtype=self.dtype, device=self.ci.device)
            return z, torch.zeros(c, self.dout, 1, dtype=self.dtype, device=self.ci.device)
        parts = [self._one(io, c) for io in calls]
        if len(parts) == 1:
            return parts[0]
        # a layer called several times: its gradient sums over calls, like extra positions
        return torch.cat([a for a, _ in parts], 2), torch.cat([d for _, d in parts], 2)

    def terms(self, f: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a, d = f
        t = a.shape[2]
        if t == 1:
            a1, d1 = a[:, :, 0], d[:, :, 0]
            dot = (a1 @ self.ci.T) * (d1 @ self.co.T)
            return dot, (a1 * a1).sum(1) * (d1 * d1).sum(1)
        outer = None
        dot_mode, norm_mode = self._modes(t)
        if dot_mode == "pairs":
            ca = torch.einsum("kd,bdt->bkt", self.ci, a)
            cd = torch.einsum("ko,bot->bkt", self.co, d)
            dot = (ca * cd).sum(2)
        else:
            outer = torch.bmm(d, a.transpose(1, 2))  # per-example gradient [c, dout, din]
            dot = ((outer @ self.ci.T) * self.co.T.unsqueeze(0)).sum(1)
        if norm_mode == "pairs":
            aa = torch.bmm(a.transpose(1, 2), a)
            dd = torch.bmm(d.transpose(1, 2), d)
            sq = (aa * dd).sum((1, 2))
        else:
            if outer is None:
                outer = torch.bmm(d, a.transpose(1, 2))
            sq = (outer * outer).sum((1, 2))
        return dot, sq

    def _modes(self, t: int) -> tuple[str, str]:
        """The cheaper einsum orders for ``t`` positions per example: (dot, norm)."""
        k, din, dout = self.ci.shape[0], self.din, self.dout
        dot = self.dot_mode or (
            "pairs" if k * t * (din + dout) <= t * din * dout + k * din * dout else "outer"
        )
        norm = self.norm_mode or ("pairs" if t * (din + dout) <= din * dout else "outer")
        return dot, norm

    def example_bytes(self, calls: list[Any], source_item: int) -> tuple[int, int]:
        t = 0
        for in_shape, out_shape in calls:  # positions: conv output pixels, linear rows
            t += (
                _numel(out_shape) // max(self.dout, 1)
                if self.conv
                else _numel(in_shape) // max(self.din, 1)
            )
        t = max(t, 1)
        k, din, dout = self.ci.shape[0], self.din, self.dout
        item = self.ci.element_size()
        if t == 1:
            return item * (din + dout), item * 2 * k
        dot, norm = self._modes(t)
        outer = dout * din  # one example's gradient, formed by the "outer" orders
        # the locals of terms() all live until it returns: the dot's and the norm's add up
        temps = 3 * k * t if dot == "pairs" else outer + 2 * dout * k
        if norm == "pairs":
            temps += 3 * t * t
        else:
            temps += outer if dot == "outer" else 2 * outer
        return item * t * (din + dout), item * temps

    def center_sq(self) -> Tensor:
        return (self.ci * self.ci).sum(1) * (self.co * self.co).sum(1)

    def _factors(self, f: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a, d = f
        return a.sum(2) / a.shape[2], d.sum(2)

    def new_acc(self) -> list[Tensor]:
        return [torch.zeros_like(self.ci), torch.zeros_like(self.co)]

    def accumulate(self, acc: list[Tensor], f: tuple[Tensor, Tensor], assign: Tensor) -> None:
        ai, do = self._factors(f)
        acc[0].index_add_(0, assign, ai)
        acc[1].index_add_(0, assign, do)

    def finalize(self, acc: list[Tensor], counts: Tensor) -> None:
        keep = counts > 0
        n = counts[keep].to(self.dtype).unsqueeze(1)
        self.ci[keep] = acc[0][keep] / n
        self.co[keep] = acc[1][keep] / n

    def seed(self, f: tuple[Tensor, Tensor], rows: Tensor, clusters: Tensor) -> None:
        ai, do = self._factors(f)
        self.ci[clusters] = ai[rows]
        self.co[clusters] = do[rows]

    def dense(self) -> Tensor:
        return (self.co.unsqueeze(2) * self.ci.unsqueeze(1)).reshape(self.ci.shape[0], -1)


class _Full(_Block):
    """Full centres over a few columns: a layer's bias, or the per-sample-gradient fallback."""

    def __init__(
        self,
        name: str,
        cols: np.ndarray,
        k: int,
        dtype: torch.dtype,
        device: torch.device,
        *,
        bias_of: nn.Module | None = None,
        full_slice: slice | None = None,
    ) -> None:
        self.name, self.cols, self.dtype = name, cols, dtype
        self.bias_of, self.full_slice = bias_of, full_slice
        self.centers = torch.zeros(k, len(cols), dtype=dtype, device=device)

    def features(
        self, records: dict[nn.Module, list[LayerIO]], full: Tensor | None, c: int
    ) -> Tensor:
        if self.bias_of is None:
            assert full is not None and self.full_slice is not None
            return full[:, self.full_slice].to(self.dtype)
        out = torch.zeros(c, self.centers.shape[1], dtype=self.dtype, device=self.centers.device)
        conv = isinstance(self.bias_of, (nn.Conv1d, nn.Conv2d))
        for io in records.get(self.bias_of, []):
            g = io.grad_output.to(self.dtype)
            out += (
                g.reshape(c, g.shape[1], -1).sum(2)
                if conv
                else g.reshape(c, -1, g.shape[-1]).sum(1)
            )
        return out

    def terms(self, f: Tensor) -> tuple[Tensor, Tensor]:
        return f @ self.centers.T, (f * f).sum(1)

    def center_sq(self) -> Tensor:
        return (self.centers * self.centers).sum(1)

    def new_acc(self) -> list[Tensor]:
        return [torch.zeros_like(self.centers)]

    def accumulate(self, acc: list[Tensor], f: Tensor, assign: Tensor) -> None:
        acc[0].index_add_(0, assign, f)

    def finalize(self, acc: list[Tensor], counts: Tensor) -> None:
        keep = counts > 0
        self.centers[keep] = acc[0][keep] / counts[keep].to(self.dtype).unsqueeze(1)

    def seed(self, f: Tensor, rows: Tensor, clusters: Tensor) -> None:
        self.centers[clusters] = f[rows]

    def dense(self) -> Tensor:
        return self.centers

    def example_bytes(self, calls: list[Any], source_item: int) -> tuple[int, int]:
        # temporaries: the distance's product, and for the per-sample fallback the per-sample
        # gradient the features are converted from when the model's dtype is not the clustering's
        item = self.centers.element_size()
        cols = self.centers.shape[1]
        source = source_item * cols if self.bias_of is None and source_item != item else 0
        return item * cols, item * cols + source


# ----------------------------------------------------------------------------------------------
# clustering


@dataclass(frozen=True, repr=False)
class ClusteringResult(StatResult):
    """Outcome of :meth:`GradientClustering.fit`.

    Attributes:
        assignment: ``[N]`` cluster of each example, from the last pass.
        sizes: ``[C]`` members per cluster (zeros for empty clusters).
        distortion: ``[C]`` ``sum_{i in c} ||g_i - C_c||^2`` with the centres of the last pass.
        variance_bound: ``sum_c N_c distortion_c / N^2``, an upper bound on the total variance
            (trace) of the one-example-per-cluster stratified estimator (``B = M``).
        num_clusters: non-empty clusters M.
        iterations: passes over the data in this fit.
        reseeded: clusters re-seeded because they had fewer than ``min_size`` members.
        layout: per parameter, ``"rank1"`` or ``"full"`` centres.
    """

    assignment: np.ndarray
    sizes: np.ndarray
    distortion: np.ndarray
    variance_bound: float
    num_clusters: int
    iterations: int
    reseeded: int
    layout: dict[str, str] = field(default_factory=dict)


class GradientClustering:
    """Weighted clustering of per-example gradients with per-layer rank-1 centres (Faghri 2020).

    Args:
        model: the network (no train-mode BatchNorm).
        loss_fn: ``loss_fn(outputs, targets)``; example i's gradient is that of its own loss.
        num_clusters: C.
        params: which parameters are clustered (None: all trainable; see
            :func:`gradnoise.select_params`), e.g. ``select_params(m, exclude="*.bias")`` for the
            official code's weights-only clustering.
        centers: ``"rank1"`` (Linear/Conv weights rank-1, the rest full) or ``"full"`` (every
            parameter full: exact weighted k-means in gradient space, costs per-example
            gradients).
        weighted: assign by ``(n_c + 1) ||g_i - C_c||^2`` with running counts ``n_c`` (True,
            the official ``mul_Nk``) or by plain distance (False: Lloyd's k-means).
        min_size: clusters with fewer members after a pass are re-seeded.
        chunk_size: examples per forward/backward during a pass.
        dtype: dtype of the distance arithmetic (float64 avoids cancellation in
            ``|g|^2 - 2 <C, g> + |C|^2``).
        dropout: ``"error"`` refuses active dropout; ``"eval"`` switches it off while clustering.
        rng: seed or Generator of the initial centres and of the order of every pass.
        max_memory: a budget (``"4GiB"``, or bytes; see :mod:`gradnoise.memory`) that lowers
            ``chunk_size`` to what one forward's activations (and, with ``"full"`` centres,
            the chunk's per-example gradients) allow.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        num_clusters: int,
        *,
        params: ParamsArg = None,
        centers: Centers = "rank1",
        weighted: bool = True,
        min_size: int = 1,
        chunk_size: int = 256,
        dtype: torch.dtype = torch.float64,
        dropout: ClusterDropout = "error",
        rng: RNGLike = None,
        device: torch.device | str | None = None,
        max_memory: int | str | None = None,
    ) -> None:
        if int(num_clusters) != num_clusters or num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {num_clusters}")
        if centers not in ("rank1", "full"):
            raise ValueError(f"centers must be 'rank1' or 'full', got {centers!r}")
        if dropout not in ("error", "eval"):
            raise ValueError(
                f"dropout must be 'error' or 'eval' for clustering (one mask per pass would make "
                f"distances random), got {dropout!r}"
            )
        if chunk_size < 1 or min_size < 0:
            raise ValueError("chunk_size must be >= 1 and min_size >= 0")
        self.model, self.loss_fn = unwrap(model), loss_fn
        model = self.model
        self.num_clusters = int(num_clusters)
        self.weighted, self.min_size = bool(weighted), int(min_size)
        self.chunk_size, self.dtype, self.dropout = int(chunk_size), dtype, dropout
        self.max_memory = max_memory
        self.rng = as_generator(rng)
        check_batchnorm(model)
        self.device = model_device(model, device)
        self.selection, self.tensors = resolve_selection(model, params)
        self.centers_mode: Centers = centers
        self.audit: ModelAudit | None = None
        self.blocks: list[_Block] = []
        self.layout: dict[str, str] = {}
        self.sizes: np.ndarray | None = None
        self.initialized = False

    # -- layout ------------------------------------------------------------------------------

    def _prepare(self, data: DataArg) -> ModelAudit:
        """Audit the model on the first examples of ``data``; plan the blocks on first use.

        A Linear/Conv weight gets rank-1 centres only when the audit proved its layer rule exact
        (used by its layer alone, examples along dim 0); anything else gets full centres.
        """
        self.audit = audit_data(
            self.model,
            self.loss_fn,
            data,
            self.selection,
            self.tensors,
            self.dropout,
            self.device,
            "per_sample",
        )
        if not self.blocks:
            self._plan(self.centers_mode, self.audit)
        if self.max_memory is not None:
            n = dataset_size(data)
            features, temps = self._example_bytes(self.audit)
            limits = [
                sub_batch(
                    self.max_memory,
                    self.model,
                    self.loss_fn,
                    data,
                    n,
                    self.tensors,
                    self.audit,
                    self.dropout,
                    self.device,
                    extra=features + temps,
                    # the per-sample fallback's forward runs while the structured pass's
                    # records are alive
                    forwards=1 if self.fallback_selection is None else 2,
                    fixed=sum(
                        a.numel() * a.element_size() for b in self.blocks for a in b.new_acc()
                    ),
                ),
                chunk_for(self.tensors, self.max_memory) if self.centers_mode == "full" else None,
            ]
            self.chunk_size = min([self.chunk_size] + [c for c in limits if c is not None])
        return self.audit

    def _example_bytes(self, audit: ModelAudit) -> tuple[int, int]:
        """Per example of a chunk: the features of all blocks (held together), the largest
        block's distance temporaries, and the layer inputs and output gradients the hooks
        record (in the model's dtype); see :meth:`_Block.example_bytes`."""
        features = temps = records = 0
        item = self.tensors[0].element_size() if self.tensors else 4
        for b in self.blocks:
            module = getattr(b, "module", None)
            calls = audit._calls.get(id(module), []) if module is not None else []
            f, t = b.example_bytes(calls, item)
            features, temps = features + f, max(temps, t)
            records += sum(item * (_numel(i) + _numel(o)) for i, o in calls)
        return features + records, temps

    def _plan(self, centers: Centers, result: ModelAudit) -> None:
        sel, k = self.selection, self.num_clusters
        owners = owner_modules(self.model)
        offsets = sel.offsets
        self.blocks = []
        self.layout = {}
        fallback: list[int] = []
        hooked: dict[int, nn.Module] = {}
        for j, name in enumerate(sel.names):
            module, pname = owners[name]
            cols = range(int(offsets[j]), int(offsets[j + 1]))
            exact = result.path(name) == "structured"
            simple = centers == "rank1" and sel.indices[j] is None and exact
            linear = type(module) is nn.Linear
            conv = (
                type(module) in (nn.Conv1d, nn.Conv2d)
                and getattr(module, "groups", 1) == 1
                and _conv_geometry(module) is not None
            )
            if simple and (linear or conv) and pname in ("weight", "bias"):
                if pname == "weight":
                    block: _Block = _RankOne(name, module, cols, k, self.dtype, self.device)
                    self.layout[name] = "rank1"
                else:
                    block = _Full(name, cols, k, self.dtype, self.device, bias_of=module)
                    self.layout[name] = "full"
                self.blocks.append(block)
                hooked[id(module)] = module
            else:
                fallback.append(j)
                self.layout[name] = "full"
        self.hooked = list(hooked.values())
        hooked_ids = {id(m) for m in self.hooked}
        self.checked = [
            col
            for col in columns_of(self.selection, self.tensors)
            if id(owners[col.name][0]) in hooked_ids and result.path(col.name) == "structured"
        ]
        self.chunks = 0
        self.fallback_selection: ParamSelection | None = None
        if fallback:
            self.fallback_selection = ParamSelection(
                tuple(sel.names[j] for j in fallback),
                tuple(sel.shapes[j] for j in fallback),
                tuple(sel.indices[j] for j in fallback),
            )
            cols = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in fallback])
            self.blocks.append(
                _Full(
                    "per-sample",
                    cols,
                    k,
                    self.dtype,
                    self.device,
                    full_slice=slice(0, len(cols)),
                )
            )

    # -- features and distances --------------------------------------------------------------

    def _features(self, x: Tensor, y: Tensor) -> list[Any]:
        c = int(x.shape[0])
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError("inputs contain NaN or Inf; remove or impute them before clustering")
        records: dict[nn.Module, list[LayerIO]] = {}
        if self.hooked:
            found = structured_pass(
                self.model, self.loss_fn, x, y, self.hooked, [c.tensor for c in self.checked]
            )
            self.chunks += 1
            assert self.audit is not None
            failed, reason = verify_chunk(
                self.model,
                self.loss_fn,
                x,
                y,
                found,
                self.checked,
                owner_modules(self.model),
                self.audit,
                self.chunks,
            )
            if failed:
                names = [col.name for col in failed]
                demote(self.model, self.audit, names, "loop", reason)
                raise UnsupportedLayerError(
                    f"the layer rules of {', '.join(map(repr, names[:4]))} stopped being exact "
                    f"while clustering ({reason}); the model's forward changed since this "
                    "GradientClustering was planned: create a new one (it will give these "
                    "parameters full centres)"
                )
            for module, inp, g in found.calls:
                if not bool(torch.isfinite(g).all()) or (
                    inp.is_floating_point() and not bool(torch.isfinite(inp).all())
                ):
                    raise NonFiniteGradientError(
                        f"non-finite (NaN/Inf) layer input or output gradient in "
                        f"{type(module).__name__} while clustering"
                    )
                records.setdefault(module, []).append(LayerIO(module, inp, g))
        full = None
        if self.fallback_selection is not None:
            full = per_sample_grads(self.model, self.loss_fn, x, y, params=self.fallback_selection)
        return [b.features(records, full, c) for b in self.blocks]

    def _distances(self, feats: list[Any]) -> Tensor:
        dot = sq = cc = None
        for b, f in zip(self.blocks, feats, strict=True):
            d, s = b.terms(f)
            q = b.center_sq()
            dot = d if dot is None else dot + d
            sq = s if sq is None else sq + s
            cc = q if cc is None else cc + q
        assert dot is not None and sq is not None and cc is not None
        return sq.unsqueeze(1) - 2.0 * dot + cc.unsqueeze(0)

    @in_float32
    def distances(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """``[n, C]`` squared distances ``||g_i - C_c||^2`` (summed over layers) for a batch.

        ``g_i`` is never formed for rank-1 layers; compare with :meth:`centers` and
        :func:`gradnoise.per_sample_grads` to check the algebra.
        """
        x, y = inputs.to(self.device), targets.to(self.device)
        with self._prepare((x, y)).randomness(self.dropout):
            return self._distances(self._features(x, y))

    def centers(self) -> Tensor:
        """``[C, P]`` dense centres in the selection's column order (can be large)."""
        out = torch.zeros(
            self.num_clusters, self.selection.num_columns, dtype=self.dtype, device=self.device
        )
        for b in self.blocks:
            out[:, torch.as_tensor(b.cols, device=self.device)] = b.dense()
        return out

    # -- fitting -----------------------------------------------------------------------------

    def _seed(self, data: DataArg, rows: np.ndarray, clusters: np.ndarray) -> None:
        x, y = fetch(data, rows, self.device)
        feats = self._features(x, y)
        r = torch.arange(len(rows), device=self.device)
        cl = torch.as_tensor(clusters, dtype=torch.long, device=self.device)
        for b, f in zip(self.blocks, feats, strict=True):
            b.seed(f, r, cl)

    @in_float32
    def fit(self, data: DataArg, *, iters: int = 1) -> ClusteringResult:
        """Run ``iters`` passes (assign every example, then update the centres) over ``data``.

        The first call initialises the centres from C distinct random examples; later calls
        warm-start from the current centres (re-clustering after the parameters moved).
        """
        n = dataset_size(data)
        require_examples(n, self.num_clusters, f"clustering into {self.num_clusters} clusters")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        k = self.num_clusters
        reseeded = 0
        with self._prepare(data).randomness(self.dropout):
            if not self.initialized:
                rows = np.sort(self.rng.choice(n, size=k, replace=False))
                self._seed(data, rows, np.arange(k))
                self.initialized = True
            for _ in range(iters):
                assignment, best, counts = self._pass(data, n)
                small = np.flatnonzero(counts < self.min_size)
                if small.size:
                    # re-seed from the worst-fitted examples of clusters that keep members
                    worst = np.argsort(-best, kind="stable")
                    donors = worst[counts[assignment[worst]] > 1][: small.size]
                    self._seed(data, np.sort(donors), small[: donors.size])
                    reseeded += int(donors.size)
                self.sizes = counts
        distortion = np.bincount(assignment, weights=np.maximum(best, 0.0), minlength=k)
        return ClusteringResult(
            assignment=assignment,
            sizes=counts,
            distortion=distortion,
            variance_bound=float(counts @ distortion) / n**2,
            num_clusters=int((counts > 0).sum()),
            iterations=int(iters),
            reseeded=reseeded,
            layout=dict(self.layout),
        )

    def _pass(self, data: DataArg, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass in a fresh random order: assign every example, accumulate the new centres."""
        k = self.num_clusters
        accs = [b.new_acc() for b in self.blocks]
        assignment = np.empty(n, dtype=np.int64)
        best = np.empty(n, dtype=np.float64)
        running = np.zeros(k, dtype=np.float64)
        order = self.rng.permutation(n)
        for start in range(0, n, self.chunk_size):
            rows = order[start : start + self.chunk_size]
            x, y = fetch(data, rows, self.device)
            feats = self._features(x, y)
            dist = self._distances(feats).clamp_(min=0.0)
            d = dist.cpu().numpy()
            a = _greedy(d, running) if self.weighted else d.argmin(1)
            a_t = torch.as_tensor(a, device=self.device)
            for b, acc, f in zip(self.blocks, accs, feats, strict=True):
                b.accumulate(acc, f, a_t)
            assignment[rows] = a
            best[rows] = d[np.arange(len(rows)), a]
            del feats, f, dist  # else alive while the next chunk's are computed: twice the budget
        counts = np.bincount(assignment, minlength=k)
        counts_t = torch.as_tensor(counts, device=self.device)
        for b, acc in zip(self.blocks, accs, strict=True):
            b.finalize(acc, counts_t)
        return assignment, best, counts


def _greedy(dist: np.ndarray, running: np.ndarray) -> np.ndarray:
    """Sequential weighted assignment ``argmin_c (n_c + 1) d_ic``; ``running`` (n_c) is updated.

    ``n_c`` counts the examples already assigned to c in this pass, so each cluster's price rises
    as it fills (the official code multiplies by the running count, clamped at 1).
    """
    out = np.empty(dist.shape[0], dtype=np.int64)
    for r in range(dist.shape[0]):
        j = int(np.argmin(dist[r] * (running + 1.0)))
        out[r] = j
        running[j] += 1.0
    return out


# ----------------------------------------------------------------------------------------------
# stratified sampling


class _Strata:
    """Members of the non-empty clusters, and the stratified draw of one minibatch."""

    def __init__(self, assignment: np.ndarray) -> None:
        labels = np.asarray(assignment, dtype=np.int64)
        self.n = int(labels.shape[0])
        order = np.argsort(labels, kind="stable")
        uniq, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
        self.labels, self.order = uniq, order
        self.starts, self.sizes = starts.astype(np.int64), sizes.astype(np.int64)
        self.m = int(uniq.shape[0])
        code = np.empty(self.n, dtype=np.int64)
        code[order] = np.repeat(np.arange(self.m), sizes)
        # loss weight of every example: M N_k / N
        self.weights = self.m * self.sizes[code] / self.n

    def draw(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` indices: ``B // M`` per stratum, the ``B % M`` extra ones in random
        strata, uniformly without replacement inside a stratum (with replacement when it has
        fewer members than draws). Each draw is uniform within its stratum and every stratum gets
        ``B / M`` draws on average, so ``mean(w * g)`` is unbiased."""
        q, r = divmod(int(batch_size), self.m)
        counts = np.full(self.m, q, dtype=np.int64)
        if r:
            counts[rng.choice(self.m, size=r, replace=False)] += 1
        strata = np.repeat(np.arange(self.m), counts)
        size = self.sizes[strata]
        pos = rng.integers(0, size)
        distinct = counts[strata] <= size
        if counts.max() <= 1:  # one draw per stratum: nothing can repeat
            return self.order[self.starts[strata] + pos], self.m * size / self.n
        for _ in range(1000):  # redraw repeats within a stratum (rejection; few rounds)
            key = strata * (int(self.sizes.max()) + 1) + pos
            order = np.argsort(key, kind="stable")
            dup = np.zeros(key.shape[0], dtype=bool)
            dup[order[1:]] = key[order[1:]] == key[order[:-1]]
            dup &= distinct
            if not dup.any():
                break
            pos[dup] = rng.integers(0, size[dup])
        else:  # pragma: no cover - needs ~N_k draws from a stratum of N_k
            raise RuntimeError("could not draw distinct examples within a stratum")
        idx = self.order[self.starts[strata] + pos]
        return idx, self.m * size / self.n


class _WeightedDataset(Dataset):
    """Items ``(x, y, w)`` for keys ``(index, weight)`` yielded by the sampler."""

    def __init__(self, base: Dataset, dtype: torch.dtype) -> None:
        self.base, self.dtype = base, dtype

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> tuple[Any, Any, Tensor]:
        if not isinstance(key, tuple) or len(key) != 2:
            raise TypeError(
                "GradientClusteringSampler.dataset is indexed by the sampler's (index, weight) "
                "keys; use DataLoader(sampler.dataset, batch_sampler=sampler)"
            )
        i, w = key
        x, y = self.base[int(i)]
        return x, y, torch.tensor(w, dtype=self.dtype)


def _as_dataset(data: DataArg) -> Dataset:
    if isinstance(data, tuple):
        dataset_size(data)
        return TensorDataset(data[0], data[1])
    return data


class GradientClusteringSampler(Sampler[list[tuple[int, float]]]):
    """Stratified minibatches from Gradient Clustering, with unbiasing weights (Faghri 2020).

    A batch sampler: every item is a minibatch of keys ``(index, weight)``; index the wrapped
    dataset :attr:`dataset` with it to get ``(x, y, w)``, so each example's loss weight
    ``w = M N_k / N`` travels with the batch (correct under prefetching and workers). Training on
    ``mean(w * loss_i)`` gives an unbiased estimate of the full gradient. The model is
    re-clustered (``iters`` passes over ``data`` at the current parameters) before the first
    batch and then every ``recluster_every`` batches.

    Example (a complete training loop)::

        import torch, gradnoise
        d = gradnoise.load_dataset("digits")
        model = gradnoise.build_model("mlp", d.input_shape, d.num_classes, widths=(64,))
        per_example = torch.nn.CrossEntropyLoss(reduction="none")
        sampler = gradnoise.GradientClusteringSampler(
            model, torch.nn.CrossEntropyLoss(), d.train, batch_size=64, recluster_every=200, rng=0)
        loader = torch.utils.data.DataLoader(sampler.dataset, batch_sampler=sampler)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for epoch in range(5):
            for x, y, w in loader:
                opt.zero_grad(); (w * per_example(model(x), y)).mean().backward(); opt.step()

    Args:
        model, loss_fn: the network and ``loss_fn(outputs, targets)`` used for clustering.
        data: the training set (map-style Dataset of ``(x, y)`` or an ``(X, y)`` pair).
        batch_size: B.
        num_clusters: C (default B: one example per cluster, the paper's setting).
        recluster_every: batches between re-clusterings (None: cluster once, lazily).
        iters: passes per re-clustering (the official ``gb_citers``).
        num_batches: batches per epoch (default ``ceil(N / B)``).
        params, centers, weighted, min_size, chunk_size, dropout: see
            :class:`GradientClustering`.
        rng: seed or Generator; drives the initial centres and every batch.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        data: DataArg,
        *,
        batch_size: int,
        num_clusters: int | None = None,
        recluster_every: int | None = None,
        iters: int = 1,
        num_batches: int | None = None,
        params: ParamsArg = None,
        centers: Centers = "rank1",
        weighted: bool = True,
        min_size: int = 1,
        chunk_size: int = 256,
        dropout: ClusterDropout = "error",
        rng: RNGLike = None,
        device: torch.device | str | None = None,
    ) -> None:
        n = dataset_size(data)
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if recluster_every is not None and recluster_every < 1:
            raise ValueError(f"recluster_every must be >= 1 or None, got {recluster_every}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.data, self.n = data, n
        self.batch_size = int(batch_size)
        self.recluster_every, self.iters = recluster_every, int(iters)
        self.num_batches = math.ceil(n / self.batch_size) if num_batches is None else num_batches
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.rng = as_generator(rng)
        self.clustering = GradientClustering(
            model,
            loss_fn,
            self.batch_size if num_clusters is None else num_clusters,
            params=params,
            centers=centers,
            weighted=weighted,
            min_size=min_size,
            chunk_size=chunk_size,
            dropout=dropout,
            rng=self.rng,
            device=device,
        )
        dtype = next(iter(model.parameters())).dtype
        self.dataset: Dataset = _WeightedDataset(_as_dataset(data), dtype)
        self.result: ClusteringResult | None = None
        self.batches_drawn = 0
        self.num_reclusters = 0
        self._strata: _Strata | None = None
        self._last_cluster_batch = 0

    def recluster(self) -> ClusteringResult:
        """Re-cluster now at the model's current parameters; returns the clustering."""
        self.result = self.clustering.fit(self.data, iters=self.iters)
        self._strata = _Strata(self.result.assignment)
        self.num_reclusters += 1
        self._last_cluster_batch = self.batches_drawn
        return self.result

    def _due(self) -> bool:
        if self._strata is None:
            return True
        every = self.recluster_every
        return every is not None and self.batches_drawn - self._last_cluster_batch >= every

    @property
    def weights(self) -> np.ndarray:
        """``[N]`` current loss weight ``M N_k / N`` of every example (clusters first if needed)."""
        if self._strata is None:
            self.recluster()
        assert self._strata is not None
        return self._strata.weights.copy()

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One minibatch ``(indices [B], weights [B])``, re-clustering first when due."""
        if self._due():
            self.recluster()
        assert self._strata is not None
        self.batches_drawn += 1
        return self._strata.draw(self.batch_size, self.rng)

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        for _ in range(self.num_batches):
            idx, w = self.sample()
            yield list(zip(idx.tolist(), w.tolist(), strict=True))

    def __len__(self) -> int:
        return self.num_batches


# ----------------------------------------------------------------------------------------------
# comparators: SG-B, SG-2B, SVRG, GC at the same parameters


@dataclass(frozen=True, repr=False)
class EstimatorStats(StatResult):
    """Variance, NGV and bias of one gradient estimator from K draws at fixed parameters.

    Attributes:
        name: ``"sg"`` (batch B), ``"sg2b"`` (batch 2B), ``"svrg"`` or ``"gc"``.
        batch_size: examples per estimate.
        variance: average per-coordinate variance of one estimate (Faghri's ``var_e``; ddof 1).
        total_variance: its trace ``sum_j Var_j``.
        ngv: normalized gradient variance (Faghri), ``mean_j v_j / (v_j + gbar_j^2)`` with the
            draws' own mean ``gbar`` (divisor K). The exact G is not used here: a coordinate that
            is zero in all K draws but not in G (a unit active for few examples) would make the
            ratio infinite.
        bias: ``mean_j |gbar_j - G_j|`` (gbar: mean of the K draws; the official code compares
            with the SGD mean instead of the exact G).
        bias_sq_norm: ``||gbar - G||^2``.
        bias_z: ``||gbar - G||^2 / (total_variance / K)``: about 1 for an unbiased estimator.
        num_draws: K.
        layers: per-parameter total variance.
    """

    name: str
    batch_size: int
    variance: float
    total_variance: float
    ngv: float
    bias: float
    bias_sq_norm: float
    bias_z: float
    num_draws: int
    layers: dict[str, float]


@dataclass(frozen=True, repr=False)
class EstimatorComparison(StatResult):
    """:func:`compare_estimators` output: one :class:`EstimatorStats` per estimator."""

    estimators: dict[str, EstimatorStats]
    full_grad_sq_norm: float
    batch_size: int
    num_draws: int

    def variance_ratio(self, name: str, reference: str = "sg") -> float:
        """``total_variance[name] / total_variance[reference]``."""
        ref = self.estimators[reference].total_variance
        return self.estimators[name].total_variance / ref if ref > 0 else math.nan


def _flat_grad(
    grads: Sequence[Tensor | None], tensors: list[Tensor], sel: ParamSelection
) -> Tensor:
    parts = []
    for g, p, idx in zip(grads, tensors, sel.indices, strict=True):
        flat = (torch.zeros_like(p) if g is None else g).reshape(-1)
        parts.append(flat if idx is None else flat[torch.as_tensor(idx, device=flat.device)])
    return torch.cat(parts)


def _weighted_grads(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    batches: list[tuple[np.ndarray, np.ndarray]],
    params: ParamsArg,
    max_memory: int | str | None = None,
) -> Tensor:
    """``[K, P]``: ``(1/B) sum_b w_b grad l_{i_b}`` for each ``(indices, weights)`` batch, a
    batch summed over sub-batches when ``max_memory`` limits one forward's examples."""
    sel, tensors = resolve_selection(model, params)
    dev = model_device(model, None)
    n = dataset_size(data)
    limit = sub_batch(max_memory, model, loss_fn, data, n, tensors, None, None, dev)
    out: Tensor | None = None
    for k, (idx, w) in enumerate(batches):
        step = len(idx) if limit is None else limit
        row: Tensor | None = None
        for start in range(0, len(idx), step):
            x, y = fetch(data, idx[start : start + step], dev)
            weights = torch.as_tensor(w[start : start + step], dtype=tensors[0].dtype, device=dev)
            with torch.enable_grad():
                losses = per_example_losses(loss_fn, model(x), y)
                grads = torch.autograd.grad(
                    (losses * weights).sum() / len(idx), tensors, allow_unused=True
                )
            part = _flat_grad(grads, tensors, sel)
            row = part if row is None else row.add_(part)
        assert row is not None
        if out is None:  # rows filled in place: never a list of rows beside their stack
            out = row.new_empty((len(batches), row.shape[0]))
        out[k] = row
    if out is None:
        raise ValueError("no minibatch to compute: batches is empty")
    if max_memory is not None:  # the forwards' freed heap pages go back (see release_memory)
        release_memory(collect=False)
    return out


def _stats(
    name: str,
    draws: Tensor,
    full: Tensor,
    batch_size: int,
    sel: ParamSelection,
    max_memory: int | str | None,
) -> EstimatorStats:
    if max_memory is not None:  # the capture's freed heap pages, before P-sized statistics
        release_memory()
    x = draws.detach().cpu().numpy()  # in its own dtype: the statistics widen block by block
    var = gradient_variance(x, groups=sel)
    variance, total, layers = var.mean, var.total, var.layers
    del var  # its P per-coordinate floats go before the next statistic's are made
    ngv = normalized_gradient_variance(x).value
    k = x.shape[0]
    diff = x.mean(0, dtype=np.float64) - full.double().numpy()
    sq = float(diff @ diff)
    return EstimatorStats(
        name=name,
        batch_size=batch_size,
        variance=variance,
        total_variance=total,
        ngv=ngv,
        bias=float(np.abs(diff).mean()),
        bias_sq_norm=sq,
        bias_z=sq / (total / k) if total > 0 else (0.0 if sq == 0 else math.inf),
        num_draws=k,
        layers=layers,
    )


def _seeds(rng: np.random.Generator, n: int) -> list[int]:
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]


def compare_estimators(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    batch_size: int,
    num_draws: int = 50,
    estimators: Sequence[str] = ("sg", "sg2b", "svrg", "gc"),
    svrg_snapshot: nn.Module | None = None,
    clustering: GradientClusteringSampler | ClusteringResult | np.ndarray | None = None,
    params: ParamsArg = None,
    full_batch_size: int = 256,
    rng: RNGLike = None,
    device: torch.device | str | None = None,
    max_memory: int | str | None = None,
) -> EstimatorComparison:
    """Draw K estimates of the gradient from each estimator at the model's current parameters.

    Estimators (Faghri et al. 2020, §4; methods.md §5): ``"sg"`` minibatch mean of B examples
    (uniform, without replacement), ``"sg2b"`` the same with 2B, ``"svrg"``
    ``mu - g_B(theta_snap) + g_B(theta)`` with the snapshot model ``svrg_snapshot`` and its full
    gradient ``mu`` (same minibatch at both parameters), ``"gc"`` the stratified weighted minibatch
    of B examples from ``clustering`` (a :class:`GradientClusteringSampler`, a
    :class:`ClusteringResult` or an ``[N]`` assignment). Variance, NGV and bias are computed against
    the exact full gradient :func:`gradnoise.full_grad`. Draws use their own generator, so
    measuring does not disturb a training data stream.
    """
    model_device(model, device)  # the model must live on ``device``
    gen = as_generator(rng)
    sel, _ = resolve_selection(model, params)
    known = {"sg", "sg2b", "svrg", "gc"}
    if not set(estimators) <= known:
        raise ValueError(
            f"unknown estimator(s) {sorted(set(estimators) - known)}; use {sorted(known)}"
        )
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2, got {num_draws}")
    budget = {"max_memory": max_memory}
    # kept in the model's dtype (exactly widened where used): a float64 copy is 8 bytes a column
    full = full_grad(model, loss_fn, data, batch_size=full_batch_size, params=sel, **budget)
    full = full.detach().cpu()
    wide = full.double().numpy()
    full_sq_norm = float(wide @ wide)
    del wide
    out: dict[str, EstimatorStats] = {}
    for name in estimators:
        if name in ("sg", "sg2b"):
            b = batch_size if name == "sg" else 2 * batch_size
            draws = minibatch_grads(
                model, loss_fn, data, batch_size=b, num_batches=num_draws,
                seed=_seeds(gen, 1)[0], params=sel, **budget,
            )  # fmt: skip
            out[name] = _stats(name, draws, full, b, sel, max_memory)
            del draws  # else alive while the next estimator's draws are computed
        elif name == "svrg":
            if svrg_snapshot is None:
                raise ValueError("the 'svrg' estimator needs svrg_snapshot (a copy of the model)")
            seed = _seeds(gen, 1)[0]
            mu = full_grad(
                svrg_snapshot, loss_fn, data, batch_size=full_batch_size, params=sel, **budget
            )
            # mu - g_B(theta_snap) + g_B(theta), the same minibatch at both parameters, a row at
            # a time: [K, P] once (the rows of minibatch_grads with this seed, at both models)
            rows = zip(
                iter_minibatch_grads(
                    model, loss_fn, data, batch_size=batch_size, num_batches=num_draws,
                    seed=seed, params=sel, **budget,
                ),
                iter_minibatch_grads(
                    svrg_snapshot, loss_fn, data, batch_size=batch_size, num_batches=num_draws,
                    seed=seed, params=sel, **budget,
                ),
                strict=True,
            )  # fmt: skip
            draws = torch.empty(num_draws, mu.shape[0], dtype=mu.dtype, device=mu.device)
            for (k, now), (_, then) in rows:
                draws[k] = now.sub_(then).add_(mu)
            del mu, now, then
            out[name] = _stats(name, draws, full, batch_size, sel, max_memory)
            del draws
        else:
            strata = _strata_of(clustering, dataset_size(data))
            batches = [strata.draw(batch_size, gen) for _ in range(num_draws)]
            draws = _weighted_grads(model, loss_fn, data, batches, sel, max_memory)
            out[name] = _stats(name, draws, full, batch_size, sel, max_memory)
            del draws
    return EstimatorComparison(
        estimators=out,
        full_grad_sq_norm=full_sq_norm,
        batch_size=int(batch_size),
        num_draws=int(num_draws),
    )


def _strata_of(clustering: Any, n: int) -> _Strata:
    if clustering is None:
        raise ValueError("the 'gc' estimator needs clustering (a sampler, result or assignment)")
    if isinstance(clustering, GradientClusteringSampler):
        if clustering._strata is None:
            clustering.recluster()
        strata = clustering._strata
        assert strata is not None
    else:
        assignment = (
            clustering.assignment if isinstance(clustering, ClusteringResult) else clustering
        )
        strata = _Strata(np.asarray(assignment))
    if strata.n != n:
        raise ValueError(f"the clustering covers {strata.n} examples but the data has {n}")
    return strata


class EstimatorComparator:
    """Compare SG-B, SG-2B, SVRG and GC along one (plain SGD) training trajectory.

    As in the official experiments, training uses its own optimizer and data stream; at
    measurement steps :meth:`measure` refreshes the SVRG snapshot every ``snapshot_every`` steps
    and re-clusters every ``recluster_every`` steps (official ``g_bsnap_iter``), then calls
    :func:`compare_estimators` at the current parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        data: DataArg,
        *,
        batch_size: int,
        num_draws: int = 50,
        num_clusters: int | None = None,
        snapshot_every: int = 1000,
        recluster_every: int = 1000,
        cluster_iters: int = 1,
        estimators: Sequence[str] = ("sg", "sg2b", "svrg", "gc"),
        params: ParamsArg = None,
        centers: Centers = "rank1",
        rng: RNGLike = None,
        device: torch.device | str | None = None,
        max_memory: int | str | None = None,
    ) -> None:
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.device, self.max_memory = device, max_memory
        self.batch_size, self.num_draws = int(batch_size), int(num_draws)
        self.snapshot_every, self.recluster_every = int(snapshot_every), int(recluster_every)
        self.cluster_iters, self.estimators, self.params = int(cluster_iters), estimators, params
        self.rng = as_generator(rng)
        self.clustering = GradientClustering(
            model,
            loss_fn,
            self.batch_size if num_clusters is None else num_clusters,
            params=params,
            centers=centers,
            rng=self.rng,
            device=device,
            max_memory=max_memory,
        )
        self.snapshot: nn.Module | None = None
        self.result: ClusteringResult | None = None
        self._snap_epoch = self._cluster_epoch = -1

    def measure(self, step: int) -> EstimatorComparison:
        """Refresh the snapshot/clustering if a new period started, then compare at ``step``."""
        if "svrg" in self.estimators and step // self.snapshot_every != self._snap_epoch:
            self.snapshot = copy.deepcopy(self.model)
            self._snap_epoch = step // self.snapshot_every
        if "gc" in self.estimators and step // self.recluster_every != self._cluster_epoch:
            self.result = self.clustering.fit(self.data, iters=self.cluster_iters)
            self._cluster_epoch = step // self.recluster_every
        return compare_estimators(
            self.model,
            self.loss_fn,
            self.data,
            batch_size=self.batch_size,
            num_draws=self.num_draws,
            estimators=self.estimators,
            svrg_snapshot=self.snapshot,
            clustering=self.result,
            params=self.params,
            rng=self.rng,
            device=self.device,
            max_memory=self.max_memory,
        )
