"""Built-in offline datasets (``digits``, ``mnist1d``), ``.npz`` files, and user Datasets.

Nothing is downloaded: ``digits`` is scikit-learn's shipped 8x8 digits, ``mnist1d`` is generated
locally with the mnist1d package's ``make_dataset`` (never its downloading loader).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from ._npz import read_npz
from .errors import DataError

DATASETS = ("digits", "mnist1d")


@dataclass(frozen=True)
class DataSplits:
    """A dataset split into train and test parts (the built-in ones are classification data).

    Attributes:
        name: dataset name or file path.
        train, test: map-style datasets of ``(input, target)`` pairs (``test`` may be None for
            a user's data without a test split).
        input_shape: shape of one input (without the batch dimension).
        num_classes: number of classes (None: not a classification dataset, e.g. regression
            targets or token sequences).
    """

    name: str
    train: Dataset
    test: Dataset | None
    input_shape: tuple[int, ...]
    num_classes: int | None

    def __repr__(self) -> str:
        test = None if self.test is None else len(self.test)  # type: ignore[arg-type]
        return (
            f"DataSplits({self.name!r}, train={len(self.train)}, test={test}, "  # type: ignore[arg-type]
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


NPZ_FIX = "write it with np.savez(path, X=inputs, y=integer_labels)"
RELABEL = "relabel with y = np.unique(y, return_inverse=True)[1]"


def _class_labels(name: str, y: np.ndarray) -> np.ndarray:
    """``y`` as int64 class labels 0..K-1 (K >= 2, each class present), or a DataError naming
    what is wrong with it and the fix. The one label rule of ``.npz`` files and user Datasets."""
    if y.ndim == 2 and y.shape[1] > 1:
        hint = ""
        if np.issubdtype(y.dtype, np.number) and np.isin(y, (0, 1)).all():
            hint = " (one-hot?); pass class indices, y.argmax(1)"
        raise DataError(f"{name}: y must be a 1-D array of class labels, got shape {y.shape}{hint}")
    if y.ndim != 1:
        raise DataError(f"{name}: y must be a 1-D array of class labels, got shape {y.shape}")
    integral = y.dtype == bool or np.issubdtype(y.dtype, np.integer)
    if not integral and np.issubdtype(y.dtype, np.floating):
        integral = bool(np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0))
    if not integral:
        raise DataError(f"{name}: y must hold integer class labels, got dtype {y.dtype}; {RELABEL}")
    if y.size and y.min() < 0:
        raise DataError(f"{name}: class labels must be >= 0, got {y.min():g}; {RELABEL}")
    present = np.unique(y)
    if present.size < 2:
        only = f" (all {present[0]:g})" if present.size else ""
        raise DataError(
            f"{name}: y holds a single class{only}; a classification study needs at least 2"
        )
    if present[-1] != present.size - 1:  # the labels are not exactly 0..K-1
        first = np.arange(min(present.size + 5, int(present[-1])))
        missing = np.setdiff1d(first, present.astype(np.float64))[:5].tolist()
        raise DataError(
            f"{name}: class labels must be 0..K-1 with every class present; {present.size} "
            f"distinct labels go up to {present[-1]:g}, and {missing} are missing "
            f"(a model would get {present[-1] + 1:g} outputs); {RELABEL}"
        )
    return y.astype(np.int64)


def _inputs(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as finite float32 ``[N, ...]`` inputs, or a DataError naming what is wrong."""
    if not (x.dtype == bool or np.issubdtype(x.dtype, np.integer)) and not np.issubdtype(
        x.dtype, np.floating
    ):
        raise DataError(f"{name}: X must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(
            f"{name}: X must be [N, ...] with at least 2 dims (examples first), got shape "
            f"{x.shape}; a 1-D X of N scalars is X[:, None]"
        )
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{name}: X has no features (shape {x.shape})")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(
            f"{name}: X holds NaN or Inf (or values beyond float32's range) in {int(bad.sum())} "
            f"row(s), the first at row {int(np.argmax(bad))}; remove or rescale them"
        )
    return x


TARGETS = ("classes", "values", "auto")


def _values(name: str, y: np.ndarray) -> np.ndarray:
    """Regression targets: finite real numbers, as float32."""
    if not (y.dtype == bool or np.issubdtype(y.dtype, np.number)) or np.iscomplexobj(y):
        raise DataError(f"{name}: regression targets must be real numbers, got dtype {y.dtype}")
    y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise DataError(f"{name}: the targets hold NaN or Inf; remove or fix those examples")
    return y


def _is_classes(y: np.ndarray, targets: str) -> bool:
    """Whether ``y`` are class labels under the ``targets`` choice (``auto``: integral 1-D)."""
    if targets != "auto":
        return targets == "classes"
    if y.ndim != 1:
        return False
    if y.dtype == bool or np.issubdtype(y.dtype, np.integer):
        return True
    return False


def _split(
    name: str, x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float, targets: str
) -> DataSplits:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: X has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise DataError(f"{name}: needs at least 2 examples, got {x.shape[0]}")
    classes = _is_classes(y, targets)
    y = _class_labels(name, y) if classes else _values(name, y)
    x = _inputs(name, x)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = max(1, round(test_fraction * x.shape[0]))
    test, train = order[:n_test], order[n_test:]
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long if classes else torch.float32)
    return DataSplits(
        name=name,
        train=TensorDataset(xt[train], yt[train]),
        test=TensorDataset(xt[test], yt[test]),
        input_shape=tuple(x.shape[1:]),
        num_classes=int(y.max()) + 1 if classes else None,
    )


def _digits(seed: int, test_fraction: float) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _split("digits", x, bunch.target.astype(np.int64), seed, test_fraction, "classes")


def _mnist1d(seed: int, test_fraction: float, num_samples: int = 5000) -> DataSplits:
    from mnist1d.data import get_dataset_args, make_dataset

    if not isinstance(num_samples, numbers.Integral) or isinstance(num_samples, bool):
        raise DataError(f"mnist1d: num_samples must be an integer >= 10, got {num_samples!r}")
    if num_samples < 10:  # make_dataset draws num_samples // 10 examples of each class
        raise DataError(f"mnist1d: num_samples must be an integer >= 10, got {num_samples}")

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    args.train_split = 1.0 - test_fraction
    state = np.random.get_state()  # noqa: NPY002 - make_dataset seeds numpy's global RNG; leave it as we found it
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    # make_dataset already shuffled with its seed; keep its own train/test split
    n_train = data["x"].shape[0]
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    return DataSplits(
        "mnist1d",
        TensorDataset(xt[:n_train], yt[:n_train]),
        TensorDataset(xt[n_train:], yt[n_train:]),
        (1, x.shape[2]),
        10,
    )


def _npz(path: Path, seed: int, test_fraction: float, targets: str) -> DataSplits:
    arrays = read_npz(path, ("X", "y"), fix=NPZ_FIX, error=DataError)
    x, y = arrays["X"], arrays["y"]
    if y.ndim == 2 and y.shape[1] == 1 and targets != "values":  # a column of labels
        y = y[:, 0]
    return _split(str(path), x, y, seed, test_fraction, targets)


def load_dataset(
    name: str | Path | Dataset,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    targets: str = "classes",
    **kwargs: Any,
) -> DataSplits:
    """Load a dataset by name (``digits``, ``mnist1d``), from an ``.npz`` file with ``X`` and ``y``,
    or wrap a user ``Dataset`` (of ``(input, target)`` pairs).

    ``seed`` fixes the train/test split (and, for ``mnist1d``, the generator). ``targets`` says
    what ``y`` holds in an ``.npz`` file or a user Dataset: ``"classes"`` (class labels
    ``0..K-1``, the label rule), ``"values"`` (regression targets: real numbers of any shape
    per example, as float32) or ``"auto"`` (integer 1-D labels are classes, anything else
    values). The built-in datasets are classification data.

    Example:
        >>> d = load_dataset("digits")
        >>> d.input_shape, d.num_classes, len(d.train) + len(d.test)
        ((1, 8, 8), 10, 1797)
    """
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    fraction_ok = isinstance(test_fraction, numbers.Real) and not isinstance(test_fraction, bool)
    if not fraction_ok or not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if targets not in TARGETS:
        raise DataError(f"targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    accepted = {"num_samples"} if str(name) == "mnist1d" else set()
    if set(kwargs) - accepted:
        raise DataError(
            f"unexpected argument(s) {sorted(set(kwargs) - accepted)} for dataset {name!r}"
        )
    if isinstance(name, Dataset):
        return _wrap(name, seed, test_fraction, targets)
    if not isinstance(name, (str, Path)):
        raise DataError(
            f"dataset must be {' or '.join(map(repr, DATASETS))}, a path to an .npz file or a "
            f"torch Dataset, got {type(name).__name__}"
        )
    if str(name) == "digits":
        return _digits(seed, test_fraction)
    if str(name) == "mnist1d":
        return _mnist1d(seed, test_fraction, **kwargs)
    path = Path(name)
    if path.suffix == ".npz":
        return _npz(path, seed, test_fraction, targets)
    raise DataError(
        f"unknown dataset {str(name)!r}; use one of {', '.join(DATASETS)} or a path to an .npz "
        "file with arrays X and y"
    )


def _as_input(where: str, x: Any) -> torch.Tensor:
    """A Dataset item's input as a tensor (floating inputs as float32, integer ones kept)."""
    try:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise DataError(
            f"{where}: the input is not numeric (got {type(x).__name__}); return an array or "
            "tensor of numbers"
        ) from err
    if t.is_complex():
        raise DataError(f"{where}: the input must hold real numbers, got dtype {t.dtype}")
    return t.to(torch.float32) if t.is_floating_point() else t


def _label(where: str, y: Any) -> Any:
    """A Dataset item's label as a scalar (numbers; checked as class labels by the caller)."""
    a = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if a.size != 1:
        hint = " (one-hot?); return the class index, e.g. int(y.argmax())" if a.ndim == 1 else ""
        raise DataError(f"{where}: the label must be one class index, got shape {a.shape}{hint}")
    return a.reshape(()).item()


def _wrap(dataset: Dataset, seed: int, test_fraction: float, targets: str) -> DataSplits:
    name = type(dataset).__name__
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as err:
        raise DataError(f"{name}: a map-style Dataset with __len__ is needed ({err})") from err
    if n < 2:
        raise DataError(f"{name}: the dataset needs at least 2 examples, got {n}")
    labels, shape = [], None
    for i in range(n):
        item, where = dataset[i], f"{name}[{i}]"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            size = f" of {len(item)}" if isinstance(item, (tuple, list)) else ""
            raise DataError(
                f"{where}: items must be (input, label) pairs, got a {type(item).__name__}{size}"
            )
        x = _as_input(where, item[0])
        if shape is None:
            shape = tuple(x.shape)
        elif tuple(x.shape) != shape:
            raise DataError(
                f"{where}: input shape {tuple(x.shape)} differs from item 0's {shape}; every "
                "input must have the same shape"
            )
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"{where}: the input holds NaN or Inf; remove or fix the example")
        y_i = item[1]
        labels.append(
            _label(where, y_i)
            if targets == "classes"
            else np.asarray(y_i.detach().cpu() if isinstance(y_i, torch.Tensor) else y_i)
        )
    if not shape or math.prod(shape) == 0:
        raise DataError(f"{name}: the inputs have no features (shape {shape})")
    try:
        raw = np.stack(labels) if targets != "classes" else np.array(labels)
    except ValueError as err:
        raise DataError(f"{name}: the targets differ in shape between items ({err})") from err
    classes = _is_classes(raw, targets)
    y = _class_labels(name, raw) if classes else _values(name, raw)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(test_fraction * n))
    items = _StudyItems(dataset, classes)
    subset = torch.utils.data.Subset
    return DataSplits(
        name=name,
        train=subset(items, order[n_test:].tolist()),
        test=subset(items, order[:n_test].tolist()),
        input_shape=shape,
        num_classes=int(y.max()) + 1 if classes else None,
    )


class _StudyItems(Dataset):
    """A user's ``(input, target)`` dataset as the built-in models take it: floating inputs as
    float32 tensors (integer inputs, e.g. token ids, kept), class labels as int64 tensors and
    regression targets as float32 tensors."""

    def __init__(self, base: Dataset, classes: bool = True) -> None:
        self.base, self.classes = base, classes

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        where = f"{type(self.base).__name__}[{i}]"
        if not self.classes:
            return _as_input(where, x), torch.as_tensor(np.asarray(y), dtype=torch.float32)
        return _as_input(where, x), torch.as_tensor(int(_label(where, y)), dtype=torch.long)


def as_tensors(dataset: Dataset | tuple[torch.Tensor, torch.Tensor]) -> tuple[Any, Any]:
    """All of a dataset as ``(X, y)`` tensors (cheap for TensorDatasets and their Subsets).

    Any map-style Dataset of ``(input, target)`` pairs works: items are batched with torch's
    ``default_collate`` (class labels become an int64 ``[N]`` tensor, token sequences ``[N, T]``,
    regression targets ``[N, ...]``). An ``(X, y)`` pair of tensors is returned as it is.
    """
    if isinstance(dataset, tuple):
        if len(dataset) != 2 or not all(isinstance(t, torch.Tensor) for t in dataset):
            raise DataError("data given as a tuple must be an (X, y) pair of tensors")
        if dataset[0].shape[0] != dataset[1].shape[0]:
            raise DataError(
                f"X and y have different numbers of examples: {dataset[0].shape[0]} vs "
                f"{dataset[1].shape[0]}"
            )
        return dataset[0], dataset[1]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, torch.utils.data.Subset) and isinstance(dataset.dataset, TensorDataset):
        idx = torch.as_tensor(dataset.indices, dtype=torch.long)
        return dataset.dataset.tensors[0][idx], dataset.dataset.tensors[1][idx]
    name = type(dataset).__name__
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as err:
        raise DataError(f"{name}: a map-style Dataset with __len__ is needed ({err})") from err
    if n == 0:
        raise DataError(f"{name} is empty: the study needs examples")
    try:
        batch = default_collate([dataset[i] for i in range(n)])
    except (TypeError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise DataError(
            f"{name}: its items cannot be stacked into one batch ({reason}); every item must be "
            "an (input, target) pair of tensors (or numbers) of one shape"
        ) from err
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise DataError(f"{name}: items must be (input, target) pairs")
    return batch[0], batch[1]
