"""Shared plumbing of the capture layer: parameter selection, model checks, data, losses."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from ..errors import (
    DataError,
    InsufficientDataError,
    NonFiniteGradientError,
    UnsupportedLayerError,
)
from ..selection import ParamSelection, build_selection
from ._dist import unwrap

ParamsArg = ParamSelection | str | Sequence[str] | None
DataArg = Dataset | tuple[Tensor, Tensor]
DropoutChoice = Literal["error", "eval", "sample"]

_BATCHNORM = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Full float32 precision while gradnoise computes: TF32 off for CUDA matmuls and cuDNN
    convolutions (cuDNN's default is on). TF32 rounds products to ~1e-3 relative error, which
    would make exact checks (rows vs batch gradient, each example alone vs the batch) misfire;
    the user's settings are restored afterwards."""
    cuda = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = cuda
        torch.backends.cudnn.allow_tf32 = cudnn


Fn = TypeVar("Fn", bound=Callable[..., Any])


def in_float32(fn: Fn) -> Fn:
    """Run ``fn`` under :func:`exact_float32`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with exact_float32():
            return fn(*args, **kwargs)

    return cast(Fn, wrapper)


def select_params(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    *,
    exclude: str | Sequence[str] | None = None,
    coords: int | None = None,
    seed: int = 0,
) -> ParamSelection:
    """Select trainable parameters of ``model`` by name globs and/or a random coordinate subset.

    ``coords`` keeps that many coordinates drawn uniformly without replacement (seeded by ``seed``)
    from the included parameters, e.g. to follow 5,000 of 10M coordinates along training. It must
    be an integer: ``coords=2.5`` raises :class:`TypeError` rather than keeping 2. Map a column back
    with ``selection.locate(col)``.

    Example:
        >>> import torch
        >>> sel = select_params(torch.nn.Linear(3, 2), "weight")
        >>> sel.num_columns, sel.locate(4)
        (6, [('weight', (1, 1))])
    """
    named = [(n, tuple(p.shape)) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    return build_selection(named, include=include, exclude=exclude, coords=coords, seed=seed)


def resolve_selection(model: nn.Module, params: ParamsArg) -> tuple[ParamSelection, list[Tensor]]:
    """Turn the ``params=`` argument into a validated selection and the matching tensors."""
    model = unwrap(model)
    if (
        params is None
        or isinstance(params, str)
        or (isinstance(params, Sequence) and not isinstance(params, ParamSelection))
    ):
        selection = select_params(model, params)  # type: ignore[arg-type]
    elif isinstance(params, ParamSelection):
        selection = params
    else:
        raise TypeError(
            "params must be None, a glob string, a list of globs or a ParamSelection "
            f"(see gradnoise.select_params), got {type(params).__name__}"
        )
    named = dict(model.named_parameters())
    tensors = []
    for name, shape in zip(selection.names, selection.shapes, strict=True):
        if name not in named:
            raise ValueError(f"selected parameter {name!r} is not a parameter of the model")
        if tuple(named[name].shape) != tuple(shape):
            raise ValueError(
                f"selected parameter {name!r} has shape {tuple(named[name].shape)} in the model "
                f"but {tuple(shape)} in the selection"
            )
        if not named[name].requires_grad:
            raise ValueError(
                f"selected parameter {name!r} is frozen (requires_grad=False): it has no gradient; "
                "leave it out of the selection"
            )
        tensors.append(named[name])
    return selection, tensors


def model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device computation runs on: ``device`` if given (must hold the model), else the model's."""
    first = next(model.parameters(), None)
    here = first.device if first is not None else torch.device("cpu")
    if device is None:
        return here
    device = torch.device(device)
    if device.type != here.type or (device.index is not None and device != here):
        raise ValueError(
            f"device={device} but the model's parameters live on {here}; "
            f"call model.to({str(device)!r}) first"
        )
    return here


def check_batchnorm(model: nn.Module) -> None:
    """Refuse the layers that couple the examples of a batch by construction: BatchNorm that
    normalises with batch statistics (training mode, or ``track_running_stats=False``, batch
    statistics in eval mode too) and ``Embedding(scale_grad_by_freq=True)`` (gradients scaled by
    token counts over the batch). Couplings of other layers are found by the audit."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.scale_grad_by_freq:
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) has scale_grad_by_freq=True: its "
                "gradient is scaled by token counts over the whole batch, so per-example "
                "gradients do not add up to the minibatch gradient. Set scale_grad_by_freq=False."
            )
        if not isinstance(module, _BATCHNORM):
            continue
        if module.training:
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) is in training mode: its batch statistics "
                "couple the examples of a batch, so per-example gradients are not defined and "
                "capturing would also update its running statistics. Fixes: call model.eval() "
                "(uses running statistics), or replace BatchNorm by GroupNorm/LayerNorm."
            )
        if module.running_mean is None:
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) mixes the examples of a batch: built "
                "with track_running_stats=False, it normalises with batch statistics even in eval "
                "mode, so per-example gradients are not defined. Fixes: track running statistics "
                "(and call model.eval()), or use GroupNorm/LayerNorm."
            )


def scalar_loss(value: Any) -> Tensor:
    """Check that a loss value is a tensor holding one number and return it as a 0-d tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"loss_fn must return a tensor, got {type(value).__name__}; a number (e.g. from "
            "loss.item()) has no gradient: return the loss tensor itself"
        )
    if value.numel() != 1:
        raise ValueError(
            "loss_fn applied to a batch of one example must return a single value, got shape "
            f"{tuple(value.shape)}; use reduction='mean' or 'sum' (with reduction='none' the "
            "loss must still reduce one example's outputs to one value)"
        )
    return value.reshape(())


def select_example(outputs: Any, i: int) -> Any:
    """Example ``i`` of a model's outputs as a batch of one: a tensor, or a tuple/list/dict/
    dataclass/namedtuple of them (what the model returns is what ``loss_fn`` receives)."""
    if isinstance(outputs, Tensor):
        if outputs.dim() == 0:
            raise ValueError(
                "the model returned a 0-d tensor: outputs need a leading example dimension"
            )
        return outputs[i : i + 1]
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        fields = {f.name: getattr(outputs, f.name) for f in dataclasses.fields(outputs)}
        picked = {k: select_example(v, i) if _has_tensor(v) else v for k, v in fields.items()}
        return dataclasses.replace(outputs, **picked)
    if isinstance(outputs, Mapping):
        return type(outputs)(  # type: ignore[call-arg]
            {k: select_example(v, i) if _has_tensor(v) else v for k, v in outputs.items()}
        )
    if isinstance(outputs, (tuple, list)):
        items = [select_example(v, i) if _has_tensor(v) else v for v in outputs]
        if hasattr(outputs, "_fields"):  # namedtuple
            return type(outputs)(*items)
        return type(outputs)(items)
    raise TypeError(
        f"cannot split the model's output of type {type(outputs).__name__} into examples; return "
        "a tensor, or a tuple/list/dict/dataclass of tensors with the examples along dim 0"
    )


def tensor_leaves(value: Any) -> list[Tensor]:
    """The tensors in a model's output: a tensor, or nested tuples/lists/dicts/dataclasses."""
    if isinstance(value, Tensor):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items: Any = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, (tuple, list)):
        items = list(value)
    else:
        return []
    return [t for item in items for t in tensor_leaves(item)]


def _has_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_has_tensor(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, Mapping):
        return any(_has_tensor(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    return False


def example_loss(loss_fn: Any, output: Any, target: Tensor) -> Tensor:
    """The loss of one example: ``loss_fn`` on a batch of one (``output`` already sliced)."""
    return scalar_loss(loss_fn(output, target))


def per_example_losses(loss_fn: Any, outputs: Any, targets: Tensor) -> Tensor:
    """Vector ``[B]`` of per-example losses, each ``loss_fn`` on a batch of one example.

    This is the definition of "an example's own loss" everywhere in gradnoise: it does not depend
    on ``loss_fn``'s reduction over the batch (``mean`` and ``sum`` agree on a batch of one). An
    example whose targets are all ``ignore_index`` has loss 0 (and gradient 0), where
    ``CrossEntropyLoss`` itself returns 0/0.
    """
    fast = (
        _known_per_example_losses(loss_fn, outputs, targets)
        if isinstance(outputs, Tensor)
        else None
    )
    if fast is not None:
        return fast
    n = int(targets.shape[0])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            losses = torch.func.vmap(
                lambda o, t: example_loss(loss_fn, _unsqueezed(o), t.unsqueeze(0))
            )(outputs, targets)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        if isinstance(err, ValueError) and "single value" in str(err):
            raise
        losses = torch.stack(
            [
                example_loss(loss_fn, select_example(outputs, i), targets[i : i + 1])
                for i in range(n)
            ]
        )
    return losses


def _unsqueezed(output: Any) -> Any:
    return torch.utils._pytree.tree_map(
        lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, output
    )


def _known_per_example_losses(loss_fn: Any, outputs: Tensor, targets: Tensor) -> Tensor | None:
    """Closed forms of the batch-of-one losses of common loss modules (None: use the generic path).

    Equal by construction to ``loss_fn`` on each example alone (tested against the generic path),
    except that an example whose targets are all ignored gets loss 0 instead of 0/0.
    """
    kind = type(loss_fn)
    if kind in (nn.CrossEntropyLoss, nn.NLLLoss):
        _check_class_targets(loss_fn, outputs, targets)
    if (
        kind in (nn.CrossEntropyLoss, nn.NLLLoss)
        and loss_fn.reduction in ("mean", "sum")
        and targets.dtype == torch.long
        and outputs.dim() >= 2
        and targets.dim() == outputs.dim() - 1
        and targets.shape[0] == outputs.shape[0]
        and tuple(targets.shape[1:]) == tuple(outputs.shape[2:])
    ):
        extra = {"label_smoothing": loss_fn.label_smoothing} if kind is nn.CrossEntropyLoss else {}
        loss = F.cross_entropy if kind is nn.CrossEntropyLoss else F.nll_loss
        tokens = loss(
            outputs,
            targets,
            weight=loss_fn.weight,
            reduction="none",
            ignore_index=loss_fn.ignore_index,
            **extra,
        ).reshape(outputs.shape[0], -1)
        total = tokens.sum(1)
        if loss_fn.reduction == "sum":
            return total
        valid = (targets != loss_fn.ignore_index).reshape(outputs.shape[0], -1)
        if loss_fn.weight is None:
            denom = valid.sum(1).to(tokens.dtype)
        else:
            picked = loss_fn.weight[torch.where(valid, targets.reshape(valid.shape), 0)]
            denom = torch.where(valid, picked, 0.0).sum(1).to(tokens.dtype)
        # all-ignored examples: 0 / 1 = 0 with a zero gradient (0 / 0 would poison the backward)
        return total / torch.where(denom > 0, denom, torch.ones_like(denom))
    if kind is nn.MSELoss and outputs.shape == targets.shape and outputs.dim() >= 1:
        sq = (outputs - targets).square().reshape(outputs.shape[0], -1)
        return (
            sq.mean(1)
            if loss_fn.reduction == "mean"
            else sq.sum(1)
            if loss_fn.reduction == "sum"
            else None
        )
    return None


def _check_class_targets(loss_fn: Any, outputs: Tensor, targets: Tensor) -> None:
    """Class-index targets of a CrossEntropy/NLL loss: integers in [0, C) or ``ignore_index``."""
    name = type(loss_fn).__name__
    if (
        not targets.is_floating_point()
        and targets.shape == outputs.shape
        and outputs.dim() >= 2
        and bool(((targets == 0) | (targets == 1)).all())
    ):
        raise DataError(
            f"{name} got integer targets shaped like the outputs {tuple(outputs.shape)}: one-hot "
            "labels? Pass class indices (targets.argmax(1)) or float class probabilities"
        )
    if targets.is_floating_point() and targets.dim() == outputs.dim() - 1:
        raise DataError(
            f"{name} got floating-point targets of shape {tuple(targets.shape)}: class indices "
            "must be integers (targets.long()); class probabilities need the outputs' shape"
        )
    if targets.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        raise DataError(
            f"{name} needs class targets of dtype torch.long, got {targets.dtype}; pass "
            "targets.long()"
        )
    if targets.dtype != torch.long:
        return
    if outputs.dim() < 2 or targets.numel() == 0:
        return
    classes = int(outputs.shape[1])
    valid = targets != loss_fn.ignore_index
    bad = valid & ((targets < 0) | (targets >= classes))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise DataError(
            f"{name}: target {value} is not a class index of the model's {classes} outputs "
            f"(valid: 0..{classes - 1}, or ignore_index={loss_fn.ignore_index}); check the labels "
            "or the model's number of classes"
        )


def check_finite(values: Tensor, selection: ParamSelection, *, where: str) -> None:
    """Raise :class:`NonFiniteGradientError` naming the first parameter with NaN/Inf columns."""
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad_cols = (~finite).reshape(-1, values.shape[-1]).any(0).nonzero().flatten().cpu().numpy()
    owners = selection.layer_of_columns()[bad_cols]
    names = [selection.names[k] for k in np.unique(owners)]
    raise NonFiniteGradientError(
        f"non-finite (NaN/Inf) gradient {where} in parameter(s) {', '.join(map(repr, names))} "
        f"({bad_cols.size} column(s))"
    )


def dataset_size(data: DataArg) -> int:
    """Number of examples of a Dataset or an ``(X, y)`` pair."""
    if isinstance(data, tuple):
        _check_pair(data)
        return int(data[0].shape[0])
    if isinstance(data, list) and data and all(isinstance(t, Tensor) for t in data):
        raise TypeError(
            "data is a list of tensors: pass an (X, y) tuple of tensors, or a Dataset of "
            "(input, target) pairs"
        )
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(
            "data must be a map-style Dataset (with __len__/__getitem__) or an (X, y) pair"
        )
    return len(data)  # type: ignore[arg-type]


def _check_pair(data: tuple[Any, ...]) -> None:
    if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
        raise TypeError("data given as a tuple must be an (X, y) pair of tensors")
    if data[0].shape[0] != data[1].shape[0]:
        raise ValueError(
            f"X and y have different numbers of examples: {data[0].shape[0]} vs {data[1].shape[0]}"
        )


def fetch(
    data: DataArg, index: np.ndarray | Sequence[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """The examples ``index`` of ``data`` as a batch ``(X, y)`` on ``device``."""
    if isinstance(data, tuple):
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        x, y = data[0][idx], data[1][idx]
    else:
        batch = default_collate([data[int(i)] for i in index])
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise TypeError("the dataset's items must be (input, target) pairs")
        x, y = batch
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError(
            f"the dataset's items must be (input, target) pairs of tensors (or numbers/arrays), "
            f"got {type(x).__name__} inputs and {type(y).__name__} targets; wrap the dataset so "
            "that it returns the model's input tensor and its target"
        )
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def iter_batches(
    data: DataArg, batch_size: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """Sequential batches covering the whole of ``data`` once."""
    n = dataset_size(data)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield fetch(data, np.arange(start, min(start + batch_size, n)), device)


def require_examples(n: int, needed: int, what: str) -> None:
    """Raise a clear :class:`InsufficientDataError` when ``n < needed``."""
    if n < needed:
        raise InsufficientDataError(f"{what}: need at least {needed} examples, the data has {n}")
