"""Gradient-covariance and Hessian spectra of a model (torch side of :mod:`gradnoise.spectra`).

The loss whose Hessian is taken is the mean over the dataset of the per-example losses as
defined everywhere in gradnoise (``loss_fn`` on a batch of one example,
:func:`gradnoise.capture._common.per_example_losses`):

    L(theta) = (1/N) sum_i l_i(theta),   H = grad^2 L.

Hessian-vector products are computed batch by batch by double backward through a graph built once
per batch and reused for every product (``hvp="autograd"``, the default: one product costs about
one extra backward), or by ``torch.func.jvp`` of ``torch.func.grad`` (``hvp="func"``, recomputes
the forward each time). ``benchmarks/spectra.py`` measures both. The Krylov algorithms themselves
are torch-free (:mod:`gradnoise.spectra.krylov`); while they run, numpy/scipy's BLAS is limited to
``blas_threads`` threads (threadpoolctl) so it does not fight torch's threads for the cores.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.func import functional_call

from .capture._budget import sub_batch
from .capture._common import (
    DataArg,
    ParamsArg,
    check_batchnorm,
    dataset_size,
    exact_float32,
    fetch,
    in_float32,
    model_device,
    per_example_losses,
    require_examples,
    resolve_selection,
)
from .capture._dist import ProcessGroupArg, shard_of, unwrap
from .capture.audit import audit_data
from .capture.gram import Factor, per_sample_gram
from .errors import NonFiniteGradientError
from .selection import ParamSelection
from .spectra import (
    LanczosEigs,
    MarchenkoPastur,
    RankPowerLawFit,
    SpectralDensity,
    TraceEstimate,
    eigengaps,
    fit_rank_power_law,
    gram_spectrum,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigs,
    marchenko_pastur,
    random_matrix_spectrum,
    slq_density,
    subspace_stability_from_gram,
)
from .spectra.structure import SubspaceStability
from .stats._common import RNGLike, StatResult, as_generator

__all__ = [
    "HessianEigs",
    "SpectrumBaselines",
    "covariance_spectrum",
    "hessian_density",
    "hessian_eigs",
    "hessian_operator",
    "hessian_trace",
    "per_sample_gram",
    "reinitialized",
    "shuffled_labels",
    "spectrum_baselines",
    "subspace_stability",
]

HVPMode = Literal["autograd", "func"]


@functools.cache
def _forward_ad_ready() -> None:
    """Import torch's forward-AD decompositions once, silencing torch's own deprecation warning.

    The first ``torch.func.jvp``/``jacfwd`` imports ``torch._decomp.decompositions_for_jvp``, which
    calls ``torch.jit.script`` and so emits a DeprecationWarning from inside torch (2.13).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401


# --------------------------------------------------------------------------------------------
# Gradient-covariance spectrum from a model
# --------------------------------------------------------------------------------------------


def covariance_spectrum(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    centered: bool = True,
    params: ParamsArg = None,
    block_size: int = 256,
    max_memory: int | str = 1 << 28,
    factor: Factor = "auto",
    dropout: Literal["error", "eval"] = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
) -> np.ndarray:
    """Eigenvalues (descending) of the per-example gradient covariance of a model, never forming ``[N, P]``.

    Equal to ``gradnoise.spectra.covariance_spectrum(gradnoise.per_sample_grads(model, loss_fn,
    inputs, targets, params=params), centered=centered)``: ``C = (1/N) sum_i (g_i - gbar)
    (g_i - gbar)^T`` (normalisation ``1/N``; second moment ``(1/N) sum g_i g_i^T`` if not
    ``centered``), from the ``N x N`` Gram matrix in float64. The Gram matrix is built layer by
    layer (:func:`gradnoise.capture.gram.per_sample_gram`): Linear/Conv weight gradients enter
    through factored inner products of layer inputs and output gradients; other parameters are
    materialised one block of examples at a time.

    Returns:
        ``min(N - 1, P)`` (centred) or ``min(N, P)`` eigenvalues, descending, float64.
    """
    selection, _ = resolve_selection(model, params)
    gram = per_sample_gram(
        model,
        loss_fn,
        inputs,
        targets,
        params=selection,
        block_size=block_size,
        max_memory=max_memory,
        factor=factor,
        dropout=dropout,
        device=device,
        process_group=process_group,
    )
    return gram_spectrum(gram, centered=centered, num_params=selection.num_columns)


def subspace_stability(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    k: int,
    centered: bool = True,
    params: ParamsArg = None,
    rng: RNGLike = None,
    **kwargs: Any,
) -> SubspaceStability:
    """Davis–Kahan stability of the top-k gradient-covariance subspace between two random halves.

    :func:`gradnoise.spectra.subspace_stability` on the per-example gradients of the model,
    computed from the layer-factored Gram matrix (extra keyword arguments go to
    :func:`per_sample_gram`).
    """
    gram = per_sample_gram(model, loss_fn, inputs, targets, params=params, **kwargs)
    return subspace_stability_from_gram(gram, k=k, centered=centered, rng=rng)


# --------------------------------------------------------------------------------------------
# Baselines: random matrix, model at initialisation, shuffled labels
# --------------------------------------------------------------------------------------------


def reinitialized(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-drawn by its module's ``reset_parameters``.

    The "model at initialisation" baseline for a model whose initial weights were not kept (when
    they were, e.g. ``gradnoise.build_model(name, ..., seed=s)``, use those instead). Draws happen
    in a forked torch RNG seeded by ``seed``; the global RNG is untouched. Raises if a trainable
    parameter belongs to a module without ``reset_parameters`` (it would keep its trained value).
    """
    fresh = copy.deepcopy(model)
    reset: set[int] = set()
    cuda = sorted({p.device.index or 0 for p in fresh.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # only the generators drawn from, all restored
        torch.default_generator.manual_seed(int(seed))
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(int(seed))
        for module in fresh.modules():
            own = list(module.parameters(recurse=False))
            reset_fn = getattr(module, "reset_parameters", None)
            if own and callable(reset_fn):
                reset_fn()
                reset.update(id(p) for p in own)
    kept = [n for n, p in fresh.named_parameters() if p.requires_grad and id(p) not in reset]
    if kept:
        raise ValueError(
            f"cannot re-initialise parameter(s) {', '.join(map(repr, kept))}: their module has no "
            "reset_parameters(); pass the initial model explicitly"
        )
    return fresh


def shuffled_labels(targets: Tensor, *, rng: RNGLike = None) -> Tensor:
    """``targets`` permuted uniformly at random (same label counts, no relation to the inputs).

    Used for the shuffled-label baselines: gradients of the trained model at permuted labels (see
    :func:`spectrum_baselines`), or a model trained on ``(inputs, shuffled_labels(targets))``.
    """
    perm = as_generator(rng).permutation(int(targets.shape[0]))
    return targets[torch.as_tensor(perm, device=targets.device)]


@dataclass(frozen=True, repr=False)
class SpectrumBaselines(StatResult):
    """A gradient-covariance spectrum and its baselines, all in the same units (eigenvalues of C).

    Attributes:
        trained: spectrum of the given model on ``(inputs, targets)``.
        initial: spectrum of the model at initialisation on the same data (None if not asked).
        shuffled: spectrum of the given model with permuted labels (same inputs, same theta).
        random_matrix: spectrum of an i.i.d. Gaussian ``[N, P]`` matrix rescaled to the same total
            variance as ``trained`` (Marchenko–Pastur bulk, not a power law).
        marchenko_pastur: the matching Marchenko–Pastur law (``rank_quantiles()`` for rank plots).
        num_examples, num_params: N and P.
    """

    trained: np.ndarray
    initial: np.ndarray | None
    shuffled: np.ndarray
    random_matrix: np.ndarray
    marchenko_pastur: MarchenkoPastur
    num_examples: int
    num_params: int


def spectrum_baselines(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    init_model: nn.Module | None = None,
    centered: bool = True,
    params: ParamsArg = None,
    rng: RNGLike = None,
    **kwargs: Any,
) -> SpectrumBaselines:
    """Covariance spectrum of ``model`` with the baselines of Xie et al. (methods.md §1(b) item 4).

    ``init_model``: the same architecture at initialisation (e.g. ``build_model(..., seed=s)`` with
    the training seed, or :func:`reinitialized`). The shuffled-label spectrum uses
    ``shuffled_labels(targets, rng=rng)``; the random matrix uses the same ``rng`` afterwards.
    Extra keyword arguments go to :func:`covariance_spectrum`.
    """
    gen = as_generator(rng)
    selection, _ = resolve_selection(model, params)
    n, p = int(inputs.shape[0]), selection.num_columns
    trained = covariance_spectrum(
        model, loss_fn, inputs, targets, centered=centered, params=selection, **kwargs
    )
    initial = None
    if init_model is not None:
        initial = covariance_spectrum(
            init_model, loss_fn, inputs, targets, centered=centered, params=selection, **kwargs
        )
    shuffled = covariance_spectrum(
        model,
        loss_fn,
        inputs,
        shuffled_labels(targets, rng=gen),
        centered=centered,
        params=selection,
        **kwargs,
    )
    total = float(trained.sum())
    if not total > 0:
        raise ValueError("the trained spectrum is all zero (zero gradients); no baseline to scale")
    return SpectrumBaselines(
        trained=trained,
        initial=initial,
        shuffled=shuffled,
        random_matrix=random_matrix_spectrum(
            n, p, total_variance=total, centered=centered, rng=gen
        )[: trained.size],
        marchenko_pastur=marchenko_pastur(n, p, total_variance=total, centered=centered),
        num_examples=n,
        num_params=p,
    )


# --------------------------------------------------------------------------------------------
# Hessian-vector products over a dataset
# --------------------------------------------------------------------------------------------


class HessianOperator:
    """``v -> H v`` for the mean per-example loss over a dataset, on float64 numpy vectors.

    With ``process_group`` (a ``torch.distributed`` group, or ``"world"``) every rank passes the
    same data, computes the products over a contiguous block of it, and the parts are summed, so
    every rank runs the same Krylov iteration and gets the same eigenvalues.

    With ``max_memory`` (``"4GiB"``, or bytes; see :mod:`gradnoise.memory`) a batch holds at most
    ``max_memory // (2 * bytes per example)`` examples, the bytes being those autograd saves in
    a forward and the first backward (measured), and the batches' graphs are kept between
    products only when all of them fit (``cache_graphs`` is otherwise switched off).

    Attributes:
        dim: number of selected coordinates (the operator is ``H`` restricted to them).
        num_examples: N.
        num_matvecs: products computed so far.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        data: DataArg,
        *,
        params: ParamsArg = None,
        batch_size: int = 2048,
        cache_graphs: bool = True,
        hvp: HVPMode = "autograd",
        dropout: Literal["error", "eval"] = "error",
        device: torch.device | str | None = None,
        process_group: ProcessGroupArg = None,
        max_memory: int | str | None = None,
    ) -> None:
        if hvp not in ("autograd", "func"):
            raise ValueError(f"hvp must be 'autograd' or 'func', got {hvp!r}")
        if dropout not in ("error", "eval"):
            raise ValueError(f"dropout must be 'error' or 'eval' for a Hessian, got {dropout!r}")
        model = unwrap(model)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.selection: ParamSelection
        self.selection, self.tensors = resolve_selection(model, params)
        self.device = model_device(model, device)
        check_batchnorm(model)
        self.num_examples = dataset_size(data)
        require_examples(self.num_examples, 1, "a Hessian")
        self.shard = shard_of(process_group)
        if self.shard.shared:
            probe, _ = fetch(data, np.arange(min(self.num_examples, 4)), self.device)
            self.shard.check_same_data(self.num_examples, probe, "a Hessian")
        with exact_float32():
            self.audit = audit_data(
                model, loss_fn, data, self.selection, self.tensors, dropout, self.device
            )
        self.batch_size, self.cache_graphs, self.hvp, self.dropout = (
            int(batch_size),
            bool(cache_graphs),
            hvp,
            dropout,
        )
        self.dtype = self.tensors[0].dtype
        self.dim = self.selection.num_columns
        self.offsets = self.selection.offsets
        self.indices = [
            None if i is None else torch.as_tensor(i, dtype=torch.long, device=self.device)
            for i in self.selection.indices
        ]
        self.num_matvecs = 0
        self._graphs: list[tuple[Tensor, ...]] | None = None
        limit = sub_batch(
            max_memory,
            model,
            loss_fn,
            data,
            self.num_examples,
            self.tensors,
            self.audit,
            dropout,
            self.device,
            create_graph=True,
        )
        if limit is not None:  # the graphs of all batches are kept only when all of them fit
            self.batch_size = min(self.batch_size, limit)
            block = self.shard.block(self.num_examples)
            self.cache_graphs = self.cache_graphs and limit >= len(block)

    @contextmanager
    def _policy(self) -> Iterator[None]:
        with self.audit.randomness(self.dropout):
            yield

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's contiguous block of the data (all of it alone), in batches."""
        block = self.shard.block(self.num_examples)
        for start in range(block.start, block.stop, self.batch_size):
            index = np.arange(start, min(start + self.batch_size, block.stop))
            yield fetch(self.data, index, self.device)

    def _batch_grads(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            losses = per_example_losses(self.loss_fn, self.model(x), y)
            if not bool(torch.isfinite(losses).all()):
                raise NonFiniteGradientError("the loss is NaN/Inf on some example")
            return torch.autograd.grad(
                losses.sum(), self.tensors, create_graph=True, allow_unused=True
            )

    def _split(self, v: np.ndarray) -> list[Tensor]:
        flat = torch.as_tensor(v, device=self.device).to(self.dtype)
        parts = []
        for k, p in enumerate(self.tensors):
            chunk = flat[int(self.offsets[k]) : int(self.offsets[k + 1])]
            if self.indices[k] is None:
                parts.append(chunk.reshape(p.shape))
            else:
                full = torch.zeros(p.numel(), dtype=self.dtype, device=self.device)
                full[self.indices[k]] = chunk
                parts.append(full.reshape(p.shape))
        return parts

    def _join(self, parts: list[Tensor]) -> np.ndarray:
        out = []
        for k, h in enumerate(parts):
            flat = h.reshape(-1)
            out.append(flat if self.indices[k] is None else flat[self.indices[k]])
        return torch.cat(out).detach().to("cpu", torch.float64).numpy()

    def _hvp_graph(self, grads: tuple[Tensor, ...], vs: list[Tensor], retain: bool) -> list:
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        acc: list[Tensor] = [torch.zeros_like(p) for p in self.tensors]
        if not live:
            return acc
        hv = torch.autograd.grad(
            [grads[i] for i in live],
            self.tensors,
            grad_outputs=[vs[i] for i in live],
            retain_graph=retain,
            allow_unused=True,
        )
        return [a if h is None else h for a, h in zip(acc, hv, strict=True)]

    def _hvp_func(self, x: Tensor, y: Tensor, vs: list[Tensor]) -> list[Tensor]:
        _forward_ad_ready()
        names = self.selection.names
        primals = {n: t.detach() for n, t in zip(names, self.tensors, strict=True)}
        frozen = {n: t.detach() for n, t in self.model.named_parameters() if n not in primals}
        frozen.update(dict(self.model.named_buffers()))

        def total(params: dict[str, Tensor]) -> Tensor:
            out = functional_call(self.model, (params, frozen), (x,))
            return per_example_losses(self.loss_fn, out, y).sum()

        tangents = dict(zip(names, vs, strict=True))
        out = torch.func.jvp(torch.func.grad(total), (primals,), (tangents,))
        hv: dict[str, Tensor] = out[1]
        return [hv[n] for n in names]

    @in_float32
    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``H v`` for a float64 vector over the selected coordinates."""
        vs = self._split(v)
        acc = [torch.zeros_like(p) for p in self.tensors]
        with self._policy():
            if self.hvp == "func":
                for x, y in self._batches():
                    for a, h in zip(acc, self._hvp_func(x, y, vs), strict=True):
                        a.add_(h.detach())
            elif self.cache_graphs:
                if self._graphs is None:
                    self._graphs = [self._batch_grads(x, y) for x, y in self._batches()]
                for grads in self._graphs:
                    for a, h in zip(acc, self._hvp_graph(grads, vs, True), strict=True):
                        a.add_(h.detach())
            else:
                for x, y in self._batches():
                    grads = self._batch_grads(x, y)
                    for a, h in zip(acc, self._hvp_graph(grads, vs, False), strict=True):
                        a.add_(h.detach())
        self.num_matvecs += 1
        for a in acc:
            self.shard.sum_(a)
        return self._join([a / self.num_examples for a in acc])

    __call__ = matvec

    def release(self) -> None:
        """Drop the cached graphs (their memory is freed)."""
        self._graphs = None

    def dense(self, *, max_params: int = 8192) -> np.ndarray:
        """The full ``[dim, dim]`` Hessian by ``torch.func.hessian`` (an oracle for small models)."""
        full = sum(p.numel() for p in self.tensors)
        if full > max_params:
            raise ValueError(
                f"a dense Hessian over {full} parameters needs {full * full * 8 / 2**30:.1f} GiB "
                f"(float64); max_params={max_params}. Use method='lanczos'"
            )
        _forward_ad_ready()
        names = self.selection.names
        shapes = [p.shape for p in self.tensors]
        sizes = [p.numel() for p in self.tensors]
        frozen = {n: t.detach() for n, t in self.model.named_parameters() if n not in names}
        frozen.update(dict(self.model.named_buffers()))
        theta = torch.cat([p.detach().reshape(-1) for p in self.tensors])
        hess = torch.zeros(full, full, dtype=self.dtype, device=self.device)
        with self._policy():
            for x, y in self._batches():

                def total(flat: Tensor, x: Tensor = x, y: Tensor = y) -> Tensor:
                    parts = torch.split(flat, sizes)
                    params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
                    out = functional_call(self.model, (params, frozen), (x,))
                    return per_example_losses(self.loss_fn, out, y).sum()

                hess += torch.func.hessian(total)(theta)
        hess /= self.num_examples
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        pieces = []
        for k, index in enumerate(self.indices):
            local = torch.arange(sizes[k], device=self.device) if index is None else index
            pieces.append(local + int(starts[k]))
        keep = torch.cat(pieces)
        sub = hess[keep][:, keep].to("cpu", torch.float64).numpy()
        if not np.all(np.isfinite(sub)):
            raise NonFiniteGradientError("the dense Hessian holds NaN/Inf")
        return 0.5 * (sub + sub.T)


def hessian_operator(
    model: nn.Module, loss_fn: Any, data: DataArg, **kwargs: Any
) -> HessianOperator:
    """The Hessian of the mean per-example loss over ``data`` as a ``matvec`` (see :class:`HessianOperator`)."""
    return HessianOperator(model, loss_fn, data, **kwargs)


def double_backward_attention(fn: Any) -> Any:
    """Run ``fn`` with scaled-dot-product attention on its math kernel: the fused CPU and GPU
    kernels (flash, memory-efficient) have no double backward, so Hessian-vector products
    through ``F.scaled_dot_product_attention`` would fail with them."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def _blas_limit(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    with threadpool_limits(limits=int(threads), user_api="blas"):
        yield


# --------------------------------------------------------------------------------------------
# Hessian spectra
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class HessianEigs(StatResult):
    """Top-k eigenvalues of the Hessian of the mean per-example loss.

    Attributes:
        eigenvalues: ``[k]`` largest (algebraic) eigenvalues, descending.
        residuals: ``[k]`` residual norms ``||H y - lambda y||`` of the unit eigenvectors
            (Lanczos: Ritz estimates; dense: computed exactly).
        converged: ``[k]`` whether each residual met ``tol * max|lambda|`` (all True for dense).
        num_matvecs: Hessian-vector products used (0 for dense).
        method: ``"lanczos"`` or ``"dense"``.
        num_examples: N (the Hessian is of the mean loss over them).
        num_params: dimension of the (selected) parameter space.
        eigenvectors: ``[num_params, k]`` if requested (not in ``to_dict``).
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    num_matvecs: int
    method: str
    num_examples: int
    num_params: int
    eigenvectors: np.ndarray | None = field(default=None, repr=False)

    def power_law(self, *, k_min: int = 1, k_max: int | None = None) -> RankPowerLawFit:
        """:func:`gradnoise.spectra.fit_rank_power_law` on the positive top eigenvalues.

        ``k_max`` defaults to the number of positive eigenvalues (methods.md §8 item 10).
        """
        positive = int(np.sum(self.eigenvalues > 0))
        return fit_rank_power_law(
            self.eigenvalues[:positive], k_min=k_min, k_max=positive if k_max is None else k_max
        )

    def gap_power_law(self, *, k_min: int = 1, k_max: int | None = None) -> RankPowerLawFit:
        """The same fit on the rank-ordered eigengaps ``lambda_k - lambda_{k+1}`` of the top-k."""
        gaps = np.sort(eigengaps(self.eigenvalues))[::-1]
        positive = int(np.sum(gaps > 0))
        return fit_rank_power_law(
            gaps[:positive], k_min=k_min, k_max=positive if k_max is None else k_max
        )


@double_backward_attention
def hessian_eigs(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    k: int = 20,
    method: Literal["lanczos", "dense"] = "lanczos",
    rng: RNGLike = None,
    tol: float = 1e-6,
    ncv: int | None = None,
    max_steps: int | None = None,
    params: ParamsArg = None,
    batch_size: int = 2048,
    cache_graphs: bool = True,
    hvp: HVPMode = "autograd",
    blas_threads: int | None = 1,
    return_vectors: bool = False,
    dropout: Literal["error", "eval"] = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
    max_memory: int | str | None = None,
) -> HessianEigs:
    """Top-k Hessian eigenvalues of the mean per-example loss over ``data``.

    ``method="lanczos"``: :func:`gradnoise.spectra.lanczos_eigs` (thick-restart Lanczos with full
    reorthogonalisation and a basis of ``ncv`` vectors; stops when every wanted Ritz residual is
    ``<= tol * max|lambda|``) on Hessian-vector products over the whole dataset in batches of
    ``batch_size``; ``"dense"``: ``torch.func.hessian`` and
    ``numpy.linalg.eigh`` in float64 (small models; the oracle).

    Args:
        data: a map-style Dataset of ``(input, target)`` pairs or an ``(X, y)`` pair.
        rng: seed of the Lanczos start vector.
        cache_graphs: keep each batch's double-backward graph between products (fast; memory of
            about one training step per batch); False rebuilds it for every product.
        hvp: ``"autograd"`` (double backward) or ``"func"`` (``jvp`` of ``grad``).
        blas_threads: numpy/scipy BLAS threads while Lanczos runs (None: leave as is).
        return_vectors: also return the eigenvectors.
        process_group: share the Hessian-vector products among ``torch.distributed`` ranks
            (see :class:`HessianOperator`).
        max_memory: a budget for the graphs of the products (see :class:`HessianOperator`).
    """
    op = HessianOperator(
        model,
        loss_fn,
        data,
        params=params,
        batch_size=batch_size,
        cache_graphs=cache_graphs,
        hvp=hvp,
        dropout=dropout,
        device=device,
        process_group=process_group,
        max_memory=max_memory,
    )
    k = int(k)
    if not 1 <= k <= op.dim:
        raise ValueError(f"k must be in [1, {op.dim}] (number of parameters), got {k}")
    if method == "dense":
        hess = op.dense()
        w, v = np.linalg.eigh(hess)
        w, v = w[::-1][:k], v[:, ::-1][:, :k]
        residuals = np.linalg.norm(hess @ v - v * w, axis=0)
        return HessianEigs(
            eigenvalues=w.copy(),
            residuals=residuals,
            converged=np.ones(k, dtype=bool),
            num_matvecs=0,
            method="dense",
            num_examples=op.num_examples,
            num_params=op.dim,
            eigenvectors=v.copy() if return_vectors else None,
        )
    if method != "lanczos":
        raise ValueError(f"method must be 'lanczos' or 'dense', got {method!r}")
    try:
        with _blas_limit(blas_threads):
            res: LanczosEigs = lanczos_eigs(
                op.matvec,
                op.dim,
                k=k,
                which="LA",
                tol=tol,
                ncv=ncv,
                max_steps=max_steps,
                rng=rng,
                return_vectors=return_vectors,
            )
    finally:
        op.release()
    return HessianEigs(
        eigenvalues=res.eigenvalues,
        residuals=res.residuals,
        converged=res.converged,
        num_matvecs=res.num_matvecs,
        method="lanczos",
        num_examples=op.num_examples,
        num_params=op.dim,
        eigenvectors=res.eigenvectors,
    )


@double_backward_attention
def hessian_trace(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    method: Literal["hutch++", "hutchinson"] = "hutch++",
    num_matvecs: int = 99,
    rng: RNGLike = None,
    params: ParamsArg = None,
    batch_size: int = 2048,
    cache_graphs: bool = True,
    hvp: HVPMode = "autograd",
    blas_threads: int | None = 1,
    dropout: Literal["error", "eval"] = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
    max_memory: int | str | None = None,
) -> TraceEstimate:
    """Stochastic estimate of ``tr(H)`` with a standard error (Hutchinson 1989; Hutch++ 2021).

    See :func:`gradnoise.spectra.hutchinson_trace` and :func:`gradnoise.spectra.hutchpp_trace`;
    ``num_matvecs`` Hessian-vector products over the whole dataset.
    """
    op = HessianOperator(
        model,
        loss_fn,
        data,
        params=params,
        batch_size=batch_size,
        cache_graphs=cache_graphs,
        hvp=hvp,
        dropout=dropout,
        device=device,
        process_group=process_group,
        max_memory=max_memory,
    )
    try:
        with _blas_limit(blas_threads):
            if method == "hutch++":
                return hutchpp_trace(op.matvec, op.dim, num_matvecs=num_matvecs, rng=rng)
            if method == "hutchinson":
                return hutchinson_trace(op.matvec, op.dim, num_matvecs=num_matvecs, rng=rng)
            raise ValueError(f"method must be 'hutch++' or 'hutchinson', got {method!r}")
    finally:
        op.release()


@double_backward_attention
def hessian_density(
    model: nn.Module,
    loss_fn: Any,
    data: DataArg,
    *,
    num_steps: int = 80,
    num_probes: int = 4,
    rng: RNGLike = None,
    params: ParamsArg = None,
    batch_size: int = 2048,
    cache_graphs: bool = True,
    hvp: HVPMode = "autograd",
    blas_threads: int | None = 1,
    dropout: Literal["error", "eval"] = "error",
    device: torch.device | str | None = None,
    process_group: ProcessGroupArg = None,
    max_memory: int | str | None = None,
) -> SpectralDensity:
    """Hessian spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019).

    ``num_probes`` Rademacher probes, ``num_steps`` Lanczos steps each; see
    :func:`gradnoise.spectra.slq_density` for the returned nodes, weights and moments.
    """
    op = HessianOperator(
        model,
        loss_fn,
        data,
        params=params,
        batch_size=batch_size,
        cache_graphs=cache_graphs,
        hvp=hvp,
        dropout=dropout,
        device=device,
        process_group=process_group,
        max_memory=max_memory,
    )
    try:
        with _blas_limit(blas_threads):
            return slq_density(
                op.matvec, op.dim, num_steps=num_steps, num_probes=num_probes, rng=rng
            )
    finally:
        op.release()
