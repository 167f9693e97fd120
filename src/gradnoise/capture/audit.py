"""Which per-example gradient path is exact for each parameter, decided by watching the forward.

Before computing anything for a model, gradnoise audits a small probe batch (the first few
examples of the call):

1. **Trace.** One forward runs under a ``TorchDispatchMode`` with a stack of the modules being
   called. It records, per parameter, every operation that reads it and the module running at
   that moment; every operation that draws random numbers (dropout modules, functional dropout,
   attention dropout, ``torch.randn``...); and every buffer or parameter the forward writes.
2. **Randomness** follows the caller's ``dropout`` choice: ``"error"`` refuses, naming the module
   and operation; ``"eval"`` runs the modules that draw random numbers in eval mode (their own
   ``training`` flag only, as ``model.eval()`` would set it) and re-traces to check that nothing
   random is left; ``"sample"`` keeps it (one mask per example).
3. **Coupling.** With randomness off the probe is computed twice: one forward and backward per
   example (the definition), and batched. Per-example losses that differ, or a batch gradient that
   is not the sum of the per-example gradients, mean that something couples the examples (batch
   statistics, ``scale_grad_by_freq``, a reduction over the batch): refused, naming the first
   module whose output differs.
4. **Routes.** A parameter takes its layer's closed-form rule (``"structured"``) only when every
   operation that read it ran inside its own module's calls, the module saw the examples along
   dim 0, and the rule's rows equal the loop's on the probe. Every other parameter takes
   ``torch.func`` (``"func"``) when ``vmap(grad)`` traces the model and reproduces the loop, else
   the loop itself (``"loop"``, with a one-time :class:`~gradnoise.errors.PerSampleFallbackWarning`).

Audits are cached per model, loss, input signature and selection; the per-chunk consistency
checks of :func:`gradnoise.per_sample_grads` guard what a probe cannot see.
"""

from __future__ import annotations

import copy
import math
import random
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import (
    DataError,
    LossDecompositionWarning,
    NonFiniteInputError,
    PerSampleFallbackWarning,
    UnsupportedLayerError,
)
from ..selection import ParamSelection
from ._common import (
    DropoutChoice,
    dataset_size,
    fetch,
    in_float32,
    per_example_losses,
    tensor_leaves,
)
from ._passes import (
    Column,
    FuncRows,
    call_shapes,
    columns_of,
    flat_selected,
    loop_rows,
    structured_pass,
)
from .layers import LAYER_RULES

Path = Literal["structured", "func", "loop"]
Level = Literal["batch", "per_sample"]

#: Examples in the probe batch.
PROBE_SIZE = 4

#: When some parameters need torch.func, the layer rules are used for the others only if they
#: cover at least this fraction of the selected coordinates (both routes are exact; speed only).
SPLIT_FRACTION = 0.5


@dataclass(frozen=True)
class ParamRoute:
    """How one selected parameter's per-example gradient is computed, and why."""

    name: str
    path: Path
    reason: str = ""


@dataclass(frozen=True)
class ModelAudit:
    """What the audit of a model found (see the module docstring).

    Attributes:
        routes: one :class:`ParamRoute` per selected parameter (empty for a batch-level audit,
            which only checks randomness and coupling).
        random: where the forward draws random numbers, e.g. ``"'enc.attn' (aten.bernoulli_)"``.
        switched: modules run in eval mode under ``dropout="eval"``.
        probe_size: examples in the probe batch.
        notes: anything else worth knowing (e.g. a loss that is not a mean of per-example losses).
        func_error: why ``torch.func`` cannot compute this model's per-example gradients ("" when
            it reproduced the loop on the probe, or was not needed).
    """

    routes: tuple[ParamRoute, ...]
    random: tuple[str, ...]
    switched: tuple[str, ...]
    probe_size: int
    notes: tuple[str, ...] = ()
    func_error: str = ""
    _switch: tuple[nn.Module, ...] = field(default=(), repr=False, compare=False)
    # per structured layer (by id): its calls' (input shape[1:], output shape[1:]) on the probe
    _calls: dict[int, list[Any]] = field(default_factory=dict, repr=False, compare=False)
    # activation bytes per example measured for a memory budget, by create_graph (see
    # capture/_budget.py): they depend only on what the audit's cache key holds
    _activation_bytes: dict[bool, int] = field(default_factory=dict, repr=False, compare=False)

    def same_calls(self, module: nn.Module, shapes: list[Any]) -> bool:
        """Does a chunk call ``module`` as the audited forward did (count and shapes)?"""
        return self._calls.get(id(module)) == shapes

    def path(self, name: str) -> Path:
        """The route of parameter ``name``."""
        for r in self.routes:
            if r.name == name:
                return r.path
        raise KeyError(f"parameter {name!r} is not in the audited selection")

    def names(self, path: Path) -> list[str]:
        """Selected parameters taking ``path``."""
        return [r.name for r in self.routes if r.path == path]

    @contextmanager
    def randomness(self, dropout: DropoutChoice) -> Iterator[bool]:
        """Apply the dropout choice for a computation; yields True when randomness stays on."""
        if dropout != "eval" or not self._switch:
            yield dropout == "sample" and bool(self.random)
            return
        with _switched_off(self._switch):
            yield False

    def __str__(self) -> str:
        lines = [f"ModelAudit (probe of {self.probe_size} examples)"]
        for r in self.routes:
            lines.append(f"  {r.name}: {r.path}" + (f"  ({r.reason})" if r.reason else ""))
        if self.random:
            lines.append(f"  random operations: {', '.join(self.random)}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def owner_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name -> (module owning it directly, attribute name)."""
    owners = {}
    for mod_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p is not None:
                owners[f"{mod_name}.{pname}" if mod_name else pname] = (module, pname)
    return owners


def rule_for(module: nn.Module, pname: str) -> Any:
    """The layer rule that can compute ``module``'s parameter ``pname``, or None."""
    rule = LAYER_RULES.get(type(module))
    if rule is None or pname not in rule.params or not rule.supports(module):
        return None
    return rule


# ----------------------------------------------------------------------------------------------
# tracing


class _Stack:
    """The modules being called, innermost last (hooks on every module of the model)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[nn.Module] = []

    def _push(self, module: nn.Module, *args: Any) -> None:
        self.stack.append(module)

    def _pop(self, module: nn.Module, *args: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    @contextmanager
    def active(self) -> Iterator[None]:
        handles = []
        try:
            for m in self.model.modules():
                handles.append(m.register_forward_pre_hook(self._push, prepend=True))
                handles.append(m.register_forward_hook(self._pop, always_call=True))
            yield
        finally:
            for h in handles:
                h.remove()
            self.stack.clear()

    def top(self) -> nn.Module | None:
        return self.stack[-1] if self.stack else None


def _draws_random(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True when an aten op tagged ``nondeterministic_seeded`` really draws (not p = 0 / eval)."""
    if torch.Tag.nondeterministic_seeded not in func.tags:
        return False
    values: dict[str, Any] = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            values[arg.name] = args[i]
        elif arg.name in kwargs:
            values[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            values[arg.name] = arg.default_value
    if values.get("train") is False or values.get("training") is False:
        return False
    for key in ("p", "dropout_p", "dropout"):  # dropout: the cuDNN/MIOpen RNN ops
        if isinstance(values.get(key), (int, float)) and values[key] == 0:
            return False
    return True


class _Watch(TorchDispatchMode):
    """Records parameter reads and random draws, with the module running at the time."""

    def __init__(self, stack: _Stack, params: dict[int, str], batch: int) -> None:
        super().__init__()
        self.stack, self.params, self.batch = stack, params, batch
        self.uses: dict[str, list[nn.Module | None]] = {}
        self.random: list[tuple[nn.Module | None, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        top = self.stack.top()
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, Tensor):
                name = self.params.get(id(leaf))
                if name is not None:
                    self.uses.setdefault(name, []).append(top)
        out = func(*args, **kwargs)
        if _draws_random(func, args, kwargs):
            self.random.append((top, str(func.overloadpacket)))
        return out


@dataclass
class _Trace:
    uses: dict[str, list[nn.Module | None]]
    random: list[tuple[nn.Module | None, str]]


def _trace(model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor) -> _Trace:
    """One watched forward (and loss); buffers written by it are restored, writes refused."""
    names = {id(p): n for n, p in model.named_parameters()}
    buffers = {n: (b, b.detach().clone()) for n, b in model.named_buffers()}
    versions = {n: p._version for n, p in model.named_parameters()}
    stack = _Stack(model)
    watch = _Watch(stack, names, int(x.shape[0]))
    try:
        with torch.enable_grad(), stack.active(), watch:
            outputs = _forward(model, x)
            per_example_losses(loss_fn, outputs, y)
    finally:
        written = _restore_buffers(model, buffers)
    if written:
        raise UnsupportedLayerError(
            f"the forward writes to buffer(s) {', '.join(map(repr, written))} (e.g. BatchNorm "
            "running statistics, or spectral_norm's power iteration in training mode), so every "
            "call would see a different model. Call model.eval() (or switch the update off) "
            "before measuring; the buffers were restored."
        )
    changed = [n for n, p in model.named_parameters() if p._version != versions[n]]
    owners = owner_modules(model)
    changed = [
        n
        for n in changed
        if not (isinstance(owners[n][0], nn.Embedding) and owners[n][0].max_norm is not None)
    ]  # Embedding(max_norm) renormalises rows in place, idempotently: harmless
    if changed:
        raise UnsupportedLayerError(
            f"the forward modifies parameter(s) {', '.join(map(repr, changed))} in place, so "
            "gradients would refer to parameters that no longer exist; remove the in-place update"
        )
    return _Trace(watch.uses, watch.random)


def _forward(model: nn.Module, x: Tensor) -> Any:
    """``model(x)``, with a sentence naming the inputs when the model cannot run on them."""
    try:
        return model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        params = next(model.parameters(), None)
        hint = "check that the inputs' shape and dtype are what the model expects"
        if params is not None and x.is_floating_point() and x.dtype != params.dtype:
            hint = (
                f"the inputs are {x.dtype} but the model's parameters {params.dtype}: convert "
                f"one of them (e.g. X.to({params.dtype}))"
            )
        raise DataError(
            f"the model's forward fails on examples of shape {tuple(x.shape[1:])} ({x.dtype}): "
            f"{_short(err)}; {hint}"
        ) from err


def _restore_buffers(model: nn.Module, saved: dict[str, tuple[Tensor, Tensor]]) -> list[str]:
    written = []
    current = dict(model.named_buffers())
    for name, (obj, saved_value) in saved.items():
        now = current.get(name)
        if now is obj and torch.equal(now, saved_value):
            continue
        written.append(name)
        prefix, _, attr = name.rpartition(".")
        owner = model.get_submodule(prefix)
        with torch.no_grad():
            if now is obj:
                obj.copy_(saved_value)
            else:
                owner._buffers[attr] = obj
                obj.copy_(saved_value)
    return written


@contextmanager
def _switched_off(modules: Sequence[nn.Module]) -> Iterator[None]:
    before = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        yield
    finally:
        for m, flag in zip(modules, before, strict=True):
            m.training = flag


def _where(model: nn.Module, module: nn.Module | None) -> str:
    if module is None:
        return "the loss function"
    if module is model:
        return f"the model's own forward ({type(model).__name__})"
    for name, m in model.named_modules():
        if m is module:
            return f"{name!r} ({type(m).__name__})"
    return type(module).__name__


# ----------------------------------------------------------------------------------------------
# the audit


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], ModelAudit]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_ENTRIES = 8


def _signature(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    selection: ParamSelection,
    dropout: DropoutChoice,
    level: Level,
) -> tuple[Any, ...]:
    loss_key = _loss_key(loss_fn)
    return (
        level,
        dropout,
        int(x.shape[0]),
        tuple(
            (id(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
            for m in model.modules()
        ),
        tuple((id(p), tuple(p.shape), p.dtype, p.requires_grad) for p in model.parameters()),
        loss_key,
        tuple(x.shape[1:]),
        x.dtype,
        str(x.device),
        tuple(y.shape[1:]),
        y.dtype,
        selection.names,
        selection.shapes,
        tuple(None if i is None else hash(i.tobytes()) for i in selection.indices),
    )


def _loss_key(loss_fn: Any) -> tuple[Any, ...]:
    """What identifies a loss for the cache: a loss *module* by its type, settings and tensors
    (``nn.CrossEntropyLoss()`` built anew at every call hits the cache), any other callable by
    identity (a weak reference: a new lambda that reuses a freed one's id is another loss)."""
    if not isinstance(loss_fn, nn.Module):
        try:
            return (type(loss_fn), weakref.ref(loss_fn))
        except TypeError:  # not weakly referable: never cached (a fresh object each time)
            return (type(loss_fn), object())
    simple = tuple(
        sorted(
            (k, v)
            for k, v in vars(loss_fn).items()
            if isinstance(v, (str, int, float, bool, type(None)))
        )
    )
    tensors = tuple(
        (n, id(t), t._version)
        for n, t in list(loss_fn.named_buffers()) + list(loss_fn.named_parameters())
    )
    return (type(loss_fn), simple, tensors, len(loss_fn._modules))


def audit(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    selection: ParamSelection,
    tensors: Sequence[Tensor],
    dropout: DropoutChoice,
    level: Level,
) -> ModelAudit:
    """Audit ``model`` on the probe batch ``(x, y)`` (cached; see the module docstring)."""
    if dropout not in ("error", "eval", "sample"):
        raise ValueError(f"dropout must be 'error', 'eval' or 'sample', got {dropout!r}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise NonFiniteInputError("inputs contain NaN or Inf; remove or impute them first")
    keys = [_signature(model, loss_fn, x, y, selection, dropout, level)]
    if level == "batch":
        keys.append(_signature(model, loss_fn, x, y, selection, dropout, "per_sample"))
    cached = _CACHE.get(model, {})
    for key in keys:
        if key in cached:
            return cached[key]
    devices = (
        [x.device.index if x.device.index is not None else torch.cuda.current_device()]
        if x.device.type == "cuda"
        else []
    )
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=devices):
            result = _run(model, loss_fn, x, y, selection, tensors, dropout, level)
    finally:  # the probe's forwards must not move the user's random streams
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002
    entry = _CACHE.setdefault(model, {})
    if len(entry) >= _CACHE_ENTRIES:
        entry.pop(next(iter(entry)))
    entry[keys[0]] = result
    return result


def demote(
    model: nn.Module,
    result: ModelAudit,
    names: Sequence[str],
    path: Path,
    reason: str,
) -> ModelAudit:
    """A copy of ``result`` with ``names`` moved to ``path``; replaces it in the cache."""
    routes = tuple(
        ParamRoute(r.name, path, reason) if r.name in names else r for r in result.routes
    )
    new = replace(result, routes=routes)
    for key, value in _CACHE.get(model, {}).items():
        if value is result:
            _CACHE[model][key] = new
    return new


def _run(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    selection: ParamSelection,
    tensors: Sequence[Tensor],
    dropout: DropoutChoice,
    level: Level,
) -> ModelAudit:
    k = int(x.shape[0])
    trace = _trace(model, loss_fn, x, y)
    random_ops = tuple(f"{_where(model, m)}: {op}" for m, op in _dedupe(trace.random))
    switch = _randomness(model, loss_fn, x, y, trace, random_ops, dropout)
    if switch is None:  # dropout="sample" with randomness that module.training does not control
        routes = tuple(
            ParamRoute(n, "loop", "random numbers that module.training does not switch off")
            for n in (selection.names if level == "per_sample" else ())
        )
        note = "coupling between examples not checked: the randomness cannot be switched off"
        return ModelAudit(routes, random_ops, (), k, (note,), "random forward")
    switched = tuple(_where(model, m) for m in switch)
    notes: list[str] = []
    with _switched_off(switch):
        proof = _Proof(model, loss_fn, x, y, selection, tensors)
        try:
            proof.check_coupling()
        except UnsupportedLayerError:
            if proof.model is not model or tensors[0].dtype != torch.float32:
                raise
            # float32 rounding through a deep network can exceed the tolerance (a GroupNorm
            # ResNet-18 reaches 8e-3); coupling is refused only if a float64 copy shows it too
            proof = _Proof(model, loss_fn, x, y, selection, tensors, widen=True)
            proof.check_coupling()
        note = _decomposition_note(model, loss_fn, x, y)
        if note:
            notes.append(note)
        if level == "batch":
            return ModelAudit((), random_ops, switched, k, tuple(notes), "", switch)
        owners = owner_modules(model)
        structured = {
            col.name: proof.rule(trace, owners[col.name][0], owners[col.name][1], col)
            for col in proof.columns
            if rule_for(*owners[col.name]) is not None
        }
        if dropout == "sample" and random_ops:
            sample = "dropout='sample' draws one mask per example: torch.func for every parameter"
            structured = {n: why or sample for n, why in structured.items()}
        general = [c for c in proof.columns if structured.get(c.name, "no layer rule") != ""]
        func_error = proof.func(general) if general else ""
        ruled = [c for c in proof.columns if structured.get(c.name) == ""]
        width = sum(c.cols.stop - c.cols.start for c in ruled)
        if general and not func_error and width < SPLIT_FRACTION * selection.num_columns:
            # a torch.func pass is needed anyway and the rules would cover few coordinates: one
            # pass for everything is cheaper than a structured pass plus a torch.func pass
            if not proof.func(ruled):
                few = "few coordinates on layer rules: one torch.func pass is cheaper than two"
                structured = {n: why or few for n, why in structured.items()}
        calls = proof.calls(owners, [owners[n][0] for n, why in structured.items() if why == ""])
    routes = []
    fallen = []
    for col in proof.columns:
        why = structured.get(col.name)
        if why == "":
            routes.append(ParamRoute(col.name, "structured"))
            continue
        reason = why if why is not None else _no_rule_reason(model, col.name)
        if func_error:
            routes.append(ParamRoute(col.name, "loop", f"{reason}; {func_error}"))
            fallen.append(col.name)
        else:
            routes.append(ParamRoute(col.name, "func", reason))
    if fallen:
        warnings.warn(
            f"gradnoise: per-example gradients of {_names(fallen)} use the per-example loop "
            f"(one backward per example), because {func_error}",
            PerSampleFallbackWarning,
            stacklevel=4,
        )
    return ModelAudit(
        tuple(routes), random_ops, switched, k, tuple(notes), func_error, switch, calls
    )


def _randomness(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    trace: _Trace,
    random_ops: tuple[str, ...],
    dropout: DropoutChoice,
) -> tuple[nn.Module, ...] | None:
    """The modules to run in eval mode so that the forward is deterministic (``()``: it is), or
    None under ``dropout="sample"`` when no such set exists. Raises under "error" (random) and
    under "eval" (randomness that module.training does not control).

    Torch's random operations are seen in the trace; randomness from Python's ``random`` or numpy
    (LayerDrop written with ``random.random()``) only by running the same batch twice."""
    switch: tuple[nn.Module, ...] = ()
    if trace.random:
        if dropout == "error":
            raise UnsupportedLayerError(
                f"the forward draws random numbers in {'; '.join(random_ops)}, so gradients "
                "would be random. Choose explicitly: dropout='eval' (run those modules in eval "
                "mode while measuring), dropout='sample' (an independent mask per example), or "
                "call model.eval()."
            )
        switch = tuple(dict.fromkeys(m for m, _ in trace.random if m is not None))
        with _switched_off(switch):
            left = _trace(model, loss_fn, x, y).random
        if left:
            where = "; ".join(f"{_where(model, m)}: {op}" for m, op in _dedupe(left))
            if dropout == "eval":
                raise UnsupportedLayerError(
                    f"dropout='eval' cannot switch off the random numbers drawn in {where}: "
                    "they do not follow module.training (e.g. F.dropout(x, p, training=True), or "
                    "torch.randn in a forward or in the loss). Make them follow self.training, "
                    "or use dropout='sample'."
                )
            return None
    with _switched_off(switch):
        if _deterministic(model, x):
            return switch
    if dropout == "error":
        raise UnsupportedLayerError(
            f"the forward of {type(model).__name__} gives different outputs for the same inputs "
            "although it draws no random numbers from torch (Python's random or numpy, e.g. a "
            "LayerDrop), so gradients would be random. Choose dropout='eval' (the model in eval "
            "mode while measuring) or dropout='sample' (one draw per example), or call "
            "model.eval()."
        )
    if dropout == "sample":
        return None
    every = tuple(model.modules())
    with _switched_off(every):
        if _deterministic(model, x):
            return every
    raise UnsupportedLayerError(
        f"the forward of {type(model).__name__} gives different outputs for the same inputs even "
        "with every module in eval mode (randomness from Python's random or numpy that "
        "module.training does not control); use dropout='sample'"
    )


def _deterministic(model: nn.Module, x: Tensor, tries: int = 4) -> bool:
    """Do ``tries`` forwards of the same batch give the same outputs? (A LayerDrop that drops
    each of 12 layers with probability 0.1 repeats itself 3 times in a row with probability
    about 7e-4; a miss is then refused as a coupling, never computed.)"""
    with torch.no_grad():
        first = tensor_leaves(_forward(model, x))
        return all(
            _same_outputs(first, tensor_leaves(_forward(model, x))) for _ in range(tries - 1)
        )


def _same_outputs(first: list[Tensor], second: list[Tensor]) -> bool:
    if len(first) != len(second):
        return False
    for a, b in zip(first, second, strict=True):
        if a.shape != b.shape:
            return False
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return False
            continue
        finite = torch.isfinite(a)
        if not torch.equal(finite, torch.isfinite(b)):
            return False
        if not torch.equal(a[~finite].nan_to_num(), b[~finite].nan_to_num()):
            return False  # the same infinities (NaN at the same places)
        if not relative_gap(a[finite], b[finite]) <= probe_tolerance(a.dtype):
            return False
    return True


class _ProjectionLoss(nn.Module):
    """The audit's own loss, ``l_i = <r_i, f(x_i)>`` with fixed random ``r_i``, over the model's
    floating outputs that hold the examples along dim 0. Its gradients are non-zero wherever the
    outputs depend on a parameter, whatever the user's targets (a probe whose targets are all
    ignored has zero loss and would prove nothing)."""

    def __init__(self, keep: list[bool]) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, outputs: Any, r: Tensor) -> Tensor:
        leaves = [t for t, k in zip(tensor_leaves(outputs), self.keep, strict=True) if k]
        n = r.shape[0]
        flat = torch.cat([t.reshape(n, -1).to(r.dtype) for t in leaves], 1)
        return (flat * r).sum()


class _Proof:
    """The probe computed one example at a time and batched, with the audit's projection loss,
    on the model -- or, for a low-precision model or with ``widen``, on a float64 copy of it (the
    routes do not depend on the dtype; the comparisons then do not drown in rounding)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        x: Tensor,
        y: Tensor,
        selection: ParamSelection,
        tensors: Sequence[Tensor],
        widen: bool = False,
    ) -> None:
        self.real = model
        low = widen or tensors[0].dtype not in (torch.float32, torch.float64)
        self.model = copy.deepcopy(model).double() if low else model
        self.x = x.double() if low and x.is_floating_point() else x
        named = dict(self.model.named_parameters())
        self.columns = columns_of(selection, [named[n] for n in selection.names])
        self.names = {id(m): n for n, m in self.model.named_modules()}
        self.k = k = int(x.shape[0])
        with torch.no_grad():
            leaves = tensor_leaves(_forward(self.model, self.x))
        keep = [t.is_floating_point() and t.dim() > 0 and t.shape[0] == k for t in leaves]
        if any(keep):
            width = sum(t[0].numel() for t, on in zip(leaves, keep, strict=True) if on)
            gen = torch.Generator().manual_seed(20261204)
            r = torch.randn(k, width, generator=gen, dtype=torch.float64)
            dtype = next(self.model.parameters()).dtype
            self.loss_fn: Any = _ProjectionLoss(keep)
            self.y = r.to(self.x.device, dtype)
        else:  # no output with the examples along dim 0: the user's loss
            self.loss_fn, self.y = loss_fn, y
        self.loop = torch.zeros(
            k, selection.num_columns, dtype=self.columns[0].tensor.dtype, device=x.device
        )
        try:
            self.single = loop_rows(
                self.model, self.loss_fn, self.x, self.y, self.columns, self.loop
            )
            # the loop's scale, once: per column it cost k x P per parameter (seconds at 10M)
            self.floor = _floor(self.loop)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise UnsupportedLayerError(
                f"computing one example alone (a batch of one) failed: {_short(err)}. "
                "Per-example gradients need the model and loss_fn to accept a batch of one example"
            ) from err

    def check_coupling(self) -> None:
        """Refuse a model whose batched computation is not the sum of one-example computations."""
        candidates = [
            m
            for m in self.model.modules()
            if rule_for(m, "weight") is not None or rule_for(m, "bias") is not None
        ]
        try:
            self.batched = structured_pass(
                self.model,
                self.loss_fn,
                self.x,
                self.y,
                candidates,
                [c.tensor for c in self.columns],
            )
            self.rule_error = ""
        except (TypeError, RuntimeError) as err:
            self.batched = structured_pass(
                self.model, self.loss_fn, self.x, self.y, (), [c.tensor for c in self.columns]
            )
            self.rule_error = f"recording its layer failed ({_short(err)})"
        if self.k < 2:
            return
        loop = self.loop
        tol = probe_tolerance(loop.dtype)
        gap = relative_gap(self.batched.losses.to(self.single.dtype), self.single)
        if not gap <= tol:
            raise UnsupportedLayerError(_forward_coupling(self.model, self.x, gap))
        bad = []
        for col, g in zip(self.columns, self.batched.grads, strict=True):
            total = loop[:, col.cols].sum(0)
            value = (
                torch.zeros_like(total)
                if g is None
                else flat_selected(g.to_dense() if g.is_sparse else g, col.index)
            )
            if not relative_gap(value, total, self.floor) <= tol:
                bad.append(col.name)
        if bad:
            raise UnsupportedLayerError(
                f"the batch gradient of parameter(s) {_names(bad)} is not the sum of the "
                "per-example gradients (the backward couples the examples), so per-example "
                "gradients do not add up to the minibatch gradient; remove the coupling"
            )

    def rule(self, trace: _Trace, real: nn.Module, pname: str, col: Column) -> str:
        """'' when the layer rule is exact for this parameter on the probe, else the reason."""
        where = _where(self.real, real)
        foreign = [m for m in trace.uses.get(col.name, []) if m is not real]
        if foreign:
            return f"also used outside {where}: in {_where(self.real, foreign[0])}"
        if self.rule_error:
            return self.rule_error
        module = self.model.get_submodule(_module_name(self.real, real))
        calls = [(inp, g) for m, inp, g in self.batched.calls if m is module]
        if calls and not trace.uses.get(col.name):
            return f"not read by the forward of {where}"
        k = self.k
        for inp, g in calls:
            if (
                not isinstance(inp, Tensor)
                or inp.dim() == 0
                or inp.shape[0] != k
                or g.shape[0] != k
            ):
                return (
                    f"the input or output of {where} does not hold the examples along dim 0 (e.g. "
                    "a time-first sequence, or a reshape that folds examples together)"
                )
        rule = rule_for(module, pname)
        rows = torch.zeros_like(self.loop[:, col.cols])
        try:
            for r, (inp, g) in enumerate(calls):
                rule.compute(module, pname, inp, g, col.index, rows, r > 0)
        except (RuntimeError, ValueError, IndexError) as err:
            return f"the {type(module).__name__} rule failed ({_short(err)})"
        gap = relative_gap(rows, self.loop[:, col.cols], self.floor)
        if not gap <= probe_tolerance(rows.dtype):
            return (
                f"the {type(module).__name__} rule differs from the one-example-at-a-time "
                f"gradient (relative gap {gap:.1e})"
            )
        return ""

    def func(self, columns: list[Column]) -> str:
        """'' when ``vmap(grad)`` reproduces the loop on the probe for ``columns``, else why not."""
        rows = torch.zeros_like(self.loop)
        try:
            FuncRows(self.model, self.loss_fn, columns, random=False).fill(self.x, self.y, rows)
        except Exception as err:  # any failure to trace means: use the loop (and say why)
            return f"torch.func cannot trace the model ({_short(err)})"
        for col in columns:
            gap = relative_gap(rows[:, col.cols], self.loop[:, col.cols], self.floor)
            if not gap <= probe_tolerance(rows.dtype):
                return f"torch.func differs from the per-example loop on {col.name!r} ({gap:.1e})"
        return ""

    def calls(self, owners: Any, modules: list[nn.Module]) -> dict[int, list[Any]]:
        """Per structured layer of the real model (by id): its calls' shapes on the probe."""
        out = {}
        for real in dict.fromkeys(modules):
            module = self.model.get_submodule(_module_name(self.real, real))
            out[id(real)] = call_shapes(self.batched.calls, module)
        return out


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise KeyError("module not in model")


def _dedupe(items: list[tuple[nn.Module | None, str]]) -> list[tuple[nn.Module | None, str]]:
    seen: dict[tuple[int, str], tuple[nn.Module | None, str]] = {}
    for m, op in items:
        seen.setdefault((id(m), op), (m, op))
    return list(seen.values())


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(map(repr, names[:4]))
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _no_rule_reason(model: nn.Module, name: str) -> str:
    module, pname = owner_modules(model)[name]
    rule = LAYER_RULES.get(type(module))
    if rule is None:
        return f"no layer rule for {type(module).__name__}"
    if pname not in rule.params:
        return f"{type(module).__name__} has no rule for its parameter {pname!r}"
    return f"the {type(module).__name__} rule does not support this configuration"


#: Gradients below this fraction of the model's largest per-example gradient entry count as zero
#: in the probe comparisons (a bias whose gradient vanishes by symmetry is pure rounding noise).
FLOOR = 1e-3


def relative_gap(actual: Tensor, expected: Tensor, floor: float = 0.0) -> float:
    """``max |actual - expected| / max(|actual|, |expected|, floor)`` (0 when all are zero)."""
    if not actual.numel():
        return 0.0
    scale = max(float(actual.abs().max()), float(expected.abs().max()), floor)
    if scale == 0.0 or not math.isfinite(scale):
        return 0.0 if scale == 0.0 else math.inf
    return float((actual - expected).abs().max()) / scale


def probe_tolerance(dtype: torch.dtype) -> float:
    """Agreement required between two exact computations of the same rows on a probe batch."""
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)


def _floor(loop: Tensor) -> float:
    return FLOOR * float(loop.abs().max()) if loop.numel() else 0.0


def _first_tensor(value: Any) -> Tensor | None:
    return next((t for t in tree_leaves(value) if isinstance(t, Tensor)), None)


def _row0_differs(whole: Tensor | None, alone: Tensor | None, k: int) -> bool | None:
    """Does example 0's row differ between the batch and the batch of one? (None: not comparable)"""
    if whole is None or alone is None or not whole.is_floating_point():
        return None
    if whole.dim() == 0 or alone.dim() == 0 or whole.shape[0] != k or alone.shape[0] != 1:
        return None
    if tuple(whole.shape[1:]) != tuple(alone.shape[1:]):
        return None
    return not relative_gap(whole[:1], alone) <= probe_tolerance(whole.dtype)


def _forward_coupling(model: nn.Module, x: Tensor, gap: float) -> str:
    """Name the module whose own computation makes example 0's output depend on the batch: the
    first call (in completion order) whose input row is unchanged but whose output row changes."""
    calls: dict[int, list[tuple[nn.Module, Tensor | None, Tensor | None]]] = {0: [], 1: []}

    def recorder(slot: int) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            calls[slot].append((module, _first_tensor((args, kwargs)), _first_tensor(out)))

        return hook

    for slot, batch in ((0, x), (1, x[:1])):
        handles = [
            m.register_forward_hook(recorder(slot), with_kwargs=True) for m in model.modules()
        ]
        try:
            with torch.no_grad():
                model(batch)
        finally:
            for h in handles:
                h.remove()
    k = int(x.shape[0])
    whole, alone = calls[0], calls[1]
    if len(whole) == len(alone):
        for (module, ia, oa), (_, ib, ob) in zip(whole, alone, strict=True):
            if module is model and oa is not None and ob is not None and oa.dim() != ob.dim():
                return (
                    f"the model's output for one example has shape {tuple(ob.shape)} but "
                    f"{tuple(oa.shape)} for {k} (e.g. a squeeze() that drops the example "
                    "dimension of a batch of one); keep the example dimension"
                )
            if _row0_differs(ia, ib, k) is True or not _row0_differs(oa, ob, k):
                continue
            who = _where(model, module)
            return (
                f"{who if module is model else 'layer ' + who} mixes the examples of a batch: "
                "example 0's output "
                f"changes when other examples are present (relative gap {gap:.1e} in the losses), "
                "so per-example gradients are not defined; make it act on each example alone (no "
                "statistics or reductions over dim 0)"
            )
    return (
        f"the model mixes the examples of a batch: example 0's loss changes when other examples "
        f"are present (relative gap {gap:.1e}), so per-example gradients are not defined; make "
        "every layer act on each example alone"
    )


def _decomposition_note(model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor) -> str:
    """Warn (once per audit) when ``loss_fn`` on a batch is not the mean or sum of its parts."""
    if x.shape[0] < 2:
        return ""
    with torch.no_grad():
        outputs = model(x)
        batch = loss_fn(outputs, y)
        if not isinstance(batch, Tensor) or batch.numel() != 1:
            return ""
        parts = per_example_losses(loss_fn, outputs, y)
    value = batch.reshape(()).to(parts.dtype)
    tol = probe_tolerance(parts.dtype)
    for agg in (parts.mean(), parts.sum()):
        if relative_gap(value.reshape(1), agg.reshape(1)) <= tol:
            return ""
    note = (
        f"loss_fn on a batch of {x.shape[0]} ({float(value):.6g}) is neither the mean "
        f"({float(parts.mean()):.6g}) nor the sum of its per-example losses (e.g. class weights "
        "or ignore_index with reduction='mean'): gradnoise's minibatch gradient is the mean of "
        "the per-example gradients, which differs from the gradient of this batch loss"
    )
    warnings.warn(note, LossDecompositionWarning, stacklevel=5)
    return note


def audit_data(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    selection: ParamSelection,
    tensors: Sequence[Tensor],
    dropout: DropoutChoice,
    device: torch.device,
    level: Level = "batch",
) -> ModelAudit:
    """:func:`audit` on the first examples of a Dataset or ``(X, y)`` pair."""
    k = min(dataset_size(data), PROBE_SIZE)
    x, y = fetch(data, list(range(k)), device)
    return audit(model, loss_fn, x, y, selection, tensors, dropout, level)


@in_float32
def audit_model(
    model: nn.Module,
    loss_fn: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Any = None,
    dropout: DropoutChoice = "error",
    probe_size: int = PROBE_SIZE,
) -> ModelAudit:
    """Audit ``model`` on the first ``probe_size`` examples: how each selected parameter's
    per-example gradient will be computed and why, or the error that every entry point raises.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> a = audit_model(net, torch.nn.MSELoss(), torch.randn(5, 3), torch.randn(5, 2))
        >>> a.names("structured")
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    from ._common import resolve_selection

    selection, tensors = resolve_selection(model, params)
    if probe_size < 1:
        raise ValueError(f"probe_size must be >= 1, got {probe_size}")
    n = min(int(inputs.shape[0]), int(probe_size))
    return audit(model, loss_fn, inputs[:n], targets[:n], selection, tensors, dropout, "per_sample")


__all__ = [
    "ModelAudit",
    "ParamRoute",
    "audit",
    "audit_data",
    "audit_model",
    "owner_modules",
    "probe_tolerance",
    "relative_gap",
    "rule_for",
]
