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

import math
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
from ._common import DropoutChoice, dataset_size, fetch, in_float32, per_example_losses
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
    """

    routes: tuple[ParamRoute, ...]
    random: tuple[str, ...]
    switched: tuple[str, ...]
    probe_size: int
    notes: tuple[str, ...] = ()
    func_ok: bool = True
    _switch: tuple[nn.Module, ...] = field(default=(), repr=False, compare=False)
    # per structured layer (by id): its calls' (input shape[1:], output shape[1:]) on the probe
    _calls: dict[int, list[Any]] = field(default_factory=dict, repr=False, compare=False)

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
        self.shared_random = False

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
            first = next((t for t in tree_leaves(out) if isinstance(t, Tensor)), None)
            if first is None or first.dim() == 0 or first.shape[0] != self.batch:
                self.shared_random = True  # one draw for the whole batch, not one per example
        return out


@dataclass
class _Trace:
    uses: dict[str, list[nn.Module | None]]
    random: list[tuple[nn.Module | None, str]]
    shared_random: bool


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
    return _Trace(watch.uses, watch.random, watch.shared_random)


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
    for name, (obj, copy) in saved.items():
        now = current.get(name)
        if now is obj and torch.equal(now, copy):
            continue
        written.append(name)
        prefix, _, attr = name.rpartition(".")
        owner = model.get_submodule(prefix)
        with torch.no_grad():
            if now is obj:
                obj.copy_(copy)
            else:
                owner._buffers[attr] = obj
                obj.copy_(copy)
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
    (``nn.CrossEntropyLoss()`` built anew at every call hits the cache), anything else by id."""
    if not isinstance(loss_fn, nn.Module):
        return (type(loss_fn), id(loss_fn))
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
    with torch.random.fork_rng(devices=devices):
        result = _run(model, loss_fn, x, y, selection, tensors, dropout, level)
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
    random = tuple(f"{_where(model, m)}: {op}" for m, op in _dedupe(trace.random))
    switch: tuple[nn.Module, ...] = ()
    notes: list[str] = []
    if trace.random:
        if dropout == "error":
            raise UnsupportedLayerError(
                f"the forward draws random numbers in {'; '.join(random)}, so gradients would "
                "be random. Choose explicitly: dropout='eval' (run those modules in eval mode "
                "while measuring), dropout='sample' (an independent mask per example), or call "
                "model.eval()."
            )
        switch = tuple(dict.fromkeys(m for m, _ in trace.random if m is not None))
        with _switched_off(switch):
            left = _trace(model, loss_fn, x, y).random
        if left:
            where = "; ".join(f"{_where(model, m)}: {op}" for m, op in _dedupe(left))
            if dropout == "eval":
                raise UnsupportedLayerError(
                    f"dropout='eval' cannot switch off the random numbers drawn in {where}: they "
                    "do not follow module.training (e.g. F.dropout(x, p, training=True), or "
                    "torch.randn in a forward or in the loss). Make them follow self.training, or "
                    "use dropout='sample'."
                )
            routes = tuple(
                ParamRoute(
                    n,
                    "loop",
                    f"random operations that module.training does not switch off ({where})",
                )
                for n in (selection.names if level == "per_sample" else ())
            )
            notes.append("coupling between examples not checked: randomness cannot be switched off")
            return ModelAudit(routes, random, (), k, tuple(notes), False, switch)
    switched = tuple(_where(model, m) for m in switch)
    columns = columns_of(selection, tensors)
    with _switched_off(switch):
        loop = torch.zeros(k, selection.num_columns, dtype=tensors[0].dtype, device=x.device)
        try:
            single = loop_rows(model, loss_fn, x, y, columns, loop)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise UnsupportedLayerError(
                f"computing one example's loss alone (a batch of one) failed: {_short(err)}. "
                "Per-example gradients need the model and loss_fn to accept a batch of one example"
            ) from err
        candidates = _candidates(model, selection) if level == "per_sample" else {}
        modules = list(dict.fromkeys(m for m, _ in candidates.values()))
        try:
            batched = structured_pass(model, loss_fn, x, y, modules, tensors)
            rule_error = ""
        except (TypeError, RuntimeError) as err:
            batched = structured_pass(model, loss_fn, x, y, (), tensors)
            rule_error = f"recording its layer failed ({_short(err)})"
        _check_coupling(model, loss_fn, x, y, selection, columns, batched, loop, single)
        note = _decomposition_note(model, loss_fn, x, y)
        if note:
            notes.append(note)
        if level == "batch":
            return ModelAudit((), random, switched, k, tuple(notes), True, switch)
        structured = {}
        for col in columns:
            if col.name in candidates:
                module, pname = candidates[col.name]
                structured[col.name] = rule_error or _prove_rule(
                    model, trace, batched, module, pname, col, loop, k
                )
        if dropout == "sample" and trace.shared_random:
            shared = "random draws shared by the whole batch need one draw per example"
            structured = {n: why or shared for n, why in structured.items()}
        general = [c for c in columns if structured.get(c.name, "no layer rule") != ""]
        func_reason = _prove_func(model, loss_fn, x, y, general, loop) if general else ""
        ruled = [c for c in columns if structured.get(c.name) == ""]
        width = sum(c.cols.stop - c.cols.start for c in ruled)
        if general and not func_reason and width < SPLIT_FRACTION * selection.num_columns:
            # a torch.func pass is needed anyway and the rules would cover few coordinates: one
            # pass for everything is cheaper than a structured pass plus a torch.func pass
            if not _prove_func(model, loss_fn, x, y, ruled, loop):
                few = "few coordinates on layer rules: one torch.func pass is cheaper than two"
                structured = {n: why or few for n, why in structured.items()}
    routes = []
    fallen = []
    for col in columns:
        why = structured.get(col.name)
        if why == "":
            routes.append(ParamRoute(col.name, "structured"))
            continue
        reason = why if why is not None else _no_rule_reason(model, col.name)
        if func_reason:
            routes.append(ParamRoute(col.name, "loop", f"{reason}; {func_reason}"))
            fallen.append(col.name)
        else:
            routes.append(ParamRoute(col.name, "func", reason))
    if fallen:
        warnings.warn(
            f"gradnoise: per-example gradients of {_names(fallen)} use the per-example loop "
            f"(one backward per example), because {func_reason}",
            PerSampleFallbackWarning,
            stacklevel=4,
        )
    calls = {id(m): call_shapes(batched.calls, m) for m in modules}
    return ModelAudit(
        tuple(routes), random, switched, k, tuple(notes), not func_reason, switch, calls
    )


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


def _candidates(model: nn.Module, selection: ParamSelection) -> dict[str, tuple[nn.Module, str]]:
    owners = owner_modules(model)
    out = {}
    for name in selection.names:
        module, pname = owners[name]
        if rule_for(module, pname) is not None:
            out[name] = (module, pname)
    return out


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


def _prove_rule(
    model: nn.Module,
    trace: _Trace,
    batched: Any,
    module: nn.Module,
    pname: str,
    col: Column,
    loop: Tensor,
    k: int,
) -> str:
    """'' when the layer rule is exact for this parameter on the probe, else the reason."""
    where = _where(model, module)
    foreign = [m for m in trace.uses.get(col.name, []) if m is not module]
    if foreign:
        return f"also used outside {where}: in {_where(model, foreign[0])}"
    calls = [(inp, g) for m, inp, g in batched.calls if m is module]
    if calls and not trace.uses.get(col.name):
        return f"not read by the forward of {where}"
    for inp, g in calls:
        if not isinstance(inp, Tensor) or inp.dim() == 0 or inp.shape[0] != k or g.shape[0] != k:
            return (
                f"the input or output of {where} does not hold the examples along dim 0 (e.g. a "
                "time-first sequence, or a reshape that folds examples together)"
            )
    rule = rule_for(module, pname)
    rows = torch.zeros_like(loop[:, col.cols])
    try:
        for r, (inp, g) in enumerate(calls):
            rule.compute(module, pname, inp, g, col.index, rows, r > 0)
    except (RuntimeError, ValueError, IndexError) as err:
        return f"the {type(module).__name__} rule failed ({_short(err)})"
    gap = relative_gap(rows, loop[:, col.cols], _floor(loop))
    if not gap <= probe_tolerance(rows.dtype):
        return (
            f"the {type(module).__name__} rule differs from the one-example-at-a-time gradient "
            f"(relative gap {gap:.1e})"
        )
    return ""


def _prove_func(
    model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor, columns: list[Column], loop: Tensor
) -> str:
    """'' when ``vmap(grad)`` reproduces the loop on the probe, else why not."""
    rows = torch.zeros_like(loop)
    try:
        FuncRows(model, loss_fn, columns, random=False).fill(x, y, rows)
    except Exception as err:  # any failure to trace means: use the loop (and say why)
        return f"torch.func cannot trace the model ({_short(err)})"
    for col in columns:
        gap = relative_gap(rows[:, col.cols], loop[:, col.cols], _floor(loop))
        if not gap <= probe_tolerance(rows.dtype):
            return f"torch.func differs from the per-example loop on {col.name!r} ({gap:.1e})"
    return ""


def _check_coupling(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    selection: ParamSelection,
    columns: list[Column],
    batched: Any,
    loop: Tensor,
    single: Tensor,
) -> None:
    """Refuse a model whose batched computation is not the sum of one-example computations."""
    if x.shape[0] < 2:
        return
    tol = probe_tolerance(loop.dtype)
    gap = relative_gap(batched.losses.to(single.dtype), single)
    if not gap <= tol:
        raise UnsupportedLayerError(_forward_coupling(model, loss_fn, x, y, gap))
    bad = []
    for col, g in zip(columns, batched.grads, strict=True):
        total = loop[:, col.cols].sum(0)
        value = (
            torch.zeros_like(total)
            if g is None
            else flat_selected(g.to_dense() if g.is_sparse else g, col.index)
        )
        if not relative_gap(value, total, _floor(loop)) <= tol:
            bad.append(col.name)
    if bad:
        owners = owner_modules(model)
        hints = [
            f"{owners[n][0].__class__.__name__}(scale_grad_by_freq=True) scales gradients by "
            "token counts over the whole batch"
            for n in bad
            if isinstance(owners[n][0], nn.Embedding) and owners[n][0].scale_grad_by_freq
        ]
        raise UnsupportedLayerError(
            f"the batch gradient of parameter(s) {_names(bad)} is not the sum of the per-example "
            f"gradients ({'; '.join(hints) or 'the backward couples the examples'}), so "
            "per-example gradients do not add up to the minibatch gradient. Remove the coupling "
            "(e.g. scale_grad_by_freq=False)."
        )


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


def _forward_coupling(model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor, gap: float) -> str:
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
            return (
                f"layer {_where(model, module)} mixes the examples of a batch: example 0's output "
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
