"""Shared plumbing of the capture layer: parameter selection, model checks, data, losses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from ..errors import InsufficientDataError, NonFiniteGradientError, UnsupportedLayerError
from ..selection import ParamSelection, build_selection

ParamsArg = ParamSelection | str | Sequence[str] | None
DataArg = Dataset | tuple[Tensor, Tensor]
DropoutChoice = Literal["error", "eval", "sample"]

_BATCHNORM = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
_DROPOUT = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


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
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return build_selection(named, include=include, exclude=exclude, coords=coords, seed=seed)


def resolve_selection(model: nn.Module, params: ParamsArg) -> tuple[ParamSelection, list[Tensor]]:
    """Turn the ``params=`` argument into a validated selection and the matching tensors."""
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
    """Refuse train-mode BatchNorm: it couples examples, so per-example gradients are undefined."""
    for name, module in model.named_modules():
        if isinstance(module, _BATCHNORM) and module.training:
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) is in training mode: its batch statistics "
                "couple the examples of a batch, so per-example gradients are not defined and "
                "capturing would also update its running statistics. Fixes: call model.eval() "
                "(uses running statistics), or replace BatchNorm by GroupNorm/LayerNorm."
            )


@contextlib.contextmanager
def dropout_policy(model: nn.Module, dropout: DropoutChoice) -> Iterator[bool]:
    """Apply the explicit dropout choice; yields True when train-mode dropout stays random.

    ``"error"`` refuses active dropout, ``"eval"`` switches dropout layers off for the call (and
    restores them), ``"sample"`` keeps it on with an independent mask per example.
    """
    active = [(n, m) for n, m in model.named_modules() if isinstance(m, _DROPOUT) and m.training]
    if dropout not in ("error", "eval", "sample"):
        raise ValueError(f"dropout must be 'error', 'eval' or 'sample', got {dropout!r}")
    if active and dropout == "error":
        names = ", ".join(repr(n) for n, _ in active)
        raise UnsupportedLayerError(
            f"dropout layer(s) {names} are in training mode, which makes gradients random. Choose "
            "explicitly: dropout='eval' (switch dropout off while capturing), dropout='sample' "
            "(one random mask per example), or call model.eval()."
        )
    if dropout == "eval":
        for _, m in active:
            m.eval()
    try:
        yield bool(active) and dropout == "sample"
    finally:
        if dropout == "eval":
            for _, m in active:
                m.train()


def scalar_loss(value: Tensor) -> Tensor:
    """Check that a loss value holds one number and return it as a 0-d tensor."""
    if value.numel() != 1:
        raise ValueError(
            "loss_fn applied to a batch of one example must return a single value, got shape "
            f"{tuple(value.shape)}; use reduction='mean', 'sum' or 'none'"
        )
    return value.reshape(())


def example_loss(loss_fn: Any, output: Tensor, target: Tensor) -> Tensor:
    """The loss of one example: ``loss_fn`` applied to a batch of one (inputs without batch dim)."""
    return scalar_loss(loss_fn(output.unsqueeze(0), target.unsqueeze(0)))


def per_example_losses(loss_fn: Any, outputs: Tensor, targets: Tensor) -> Tensor:
    """Vector ``[B]`` of per-example losses, each ``loss_fn`` on a batch of one example.

    This is the definition of "an example's own loss" everywhere in gradnoise: it does not depend
    on ``loss_fn``'s reduction over the batch (``mean`` and ``sum`` agree on a batch of one).
    """
    fast = _known_per_example_losses(loss_fn, outputs, targets)
    if fast is not None:
        return fast
    try:
        losses = torch.func.vmap(lambda o, t: example_loss(loss_fn, o, t))(outputs, targets)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        if isinstance(err, ValueError) and "single value" in str(err):
            raise
        losses = torch.stack(
            [example_loss(loss_fn, o, t) for o, t in zip(outputs, targets, strict=False)]
        )
    return losses


def _known_per_example_losses(loss_fn: Any, outputs: Tensor, targets: Tensor) -> Tensor | None:
    """Closed forms of the batch-of-one losses of common loss modules (None: use the generic path).

    Equal by construction to ``loss_fn`` on each example alone; tested against the generic path.
    """
    kind = type(loss_fn)
    if (
        kind is nn.CrossEntropyLoss
        and loss_fn.weight is None
        and loss_fn.reduction in ("mean", "sum")
        and targets.dtype == torch.long
        and outputs.dim() == 2  # [B, C]; [B, C, T...] means over tokens: the generic path
        and targets.dim() == 1
    ):
        ignored = targets == loss_fn.ignore_index
        if loss_fn.reduction == "mean" and bool(ignored.any()):
            return None  # a batch of one ignored example has an undefined (0/0) mean
        return F.cross_entropy(
            outputs,
            targets,
            reduction="none",
            ignore_index=loss_fn.ignore_index,
            label_smoothing=loss_fn.label_smoothing,
        ).reshape(-1)
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
