"""Built-in offline datasets (``digits``, ``mnist1d``), ``.npz`` files, and user Datasets.

Nothing is downloaded: ``digits`` is scikit-learn's shipped 8x8 digits, ``mnist1d`` is generated
locally with the mnist1d package's ``make_dataset`` (never its downloading loader).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

DATASETS = ("digits", "mnist1d")


@dataclass(frozen=True)
class DataSplits:
    """A classification dataset split into train and test parts.

    Attributes:
        name: dataset name or file path.
        train, test: map-style datasets of ``(input, target)`` pairs.
        input_shape: shape of one input (without the batch dimension).
        num_classes: number of classes.
    """

    name: str
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int

    def __repr__(self) -> str:
        return (
            f"DataSplits({self.name!r}, train={len(self.train)}, test={len(self.test)}, "  # type: ignore[arg-type]
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def _class_labels(name: str, y: np.ndarray) -> np.ndarray:
    """``y`` as int64 class labels 0..K-1, or a ValueError saying what is wrong with it."""
    if y.ndim != 1:
        raise ValueError(f"{name}: y must be a 1-D array of class labels, got shape {y.shape}")
    integral = y.dtype == bool or np.issubdtype(y.dtype, np.integer)
    if not integral and np.issubdtype(y.dtype, np.floating):
        integral = bool(np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0))
    if not integral:
        raise ValueError(f"{name}: y must hold integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"{name}: class labels must be >= 0, got {int(y.min())}")
    return y


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float) -> DataSplits:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 examples, got {x.shape[0]}")
    y = _class_labels(name, y)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: X contains NaN or Inf")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = max(1, round(test_fraction * x.shape[0]))
    test, train = order[:n_test], order[n_test:]
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    return DataSplits(
        name=name,
        train=TensorDataset(xt[train], yt[train]),
        test=TensorDataset(xt[test], yt[test]),
        input_shape=tuple(x.shape[1:]),
        num_classes=int(y.max()) + 1,
    )


def _digits(seed: int, test_fraction: float) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _split("digits", x, bunch.target.astype(np.int64), seed, test_fraction)


def _mnist1d(seed: int, test_fraction: float, num_samples: int = 5000) -> DataSplits:
    from mnist1d.data import get_dataset_args, make_dataset

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


def _npz(path: Path, seed: int, test_fraction: float) -> DataSplits:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"X", "y"} - set(f.files)
            if missing:
                raise ValueError(f"{path}: missing array(s) {sorted(missing)}; found {f.files}")
            x, y = f["X"], f["y"]
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read dataset file {path}: {err}") from err
    if x.ndim < 2:
        raise ValueError(f"{path}: X must be [N, ...] with at least 2 dims, got shape {x.shape}")
    return _split(str(path), x.astype(np.float32), y.reshape(-1), seed, test_fraction)


def load_dataset(
    name: str | Path | Dataset, *, seed: int = 0, test_fraction: float = 0.2, **kwargs: Any
) -> DataSplits:
    """Load a dataset by name (``digits``, ``mnist1d``), from an ``.npz`` file with ``X`` and ``y``,
    or wrap a user ``Dataset`` (of ``(input, integer target)`` pairs).

    ``seed`` fixes the train/test split (and, for ``mnist1d``, the generator).

    Example:
        >>> d = load_dataset("digits")
        >>> d.input_shape, d.num_classes, len(d.train) + len(d.test)
        ((1, 8, 8), 10, 1797)
    """
    if isinstance(name, Dataset):
        return _wrap(name, seed, test_fraction)
    if str(name) == "digits":
        return _digits(seed, test_fraction)
    if str(name) == "mnist1d":
        return _mnist1d(seed, test_fraction, **kwargs)
    path = Path(name)
    if path.suffix == ".npz":
        if not path.exists():
            raise FileNotFoundError(f"dataset file {path} does not exist")
        return _npz(path, seed, test_fraction)
    raise ValueError(f"unknown dataset {name!r}; use one of {DATASETS} or a path to an .npz file")


def _wrap(dataset: Dataset, seed: int, test_fraction: float) -> DataSplits:
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise ValueError("the dataset needs at least 2 examples")
    first = dataset[0]
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise TypeError("the dataset's items must be (input, target) pairs")
    name = type(dataset).__name__
    labels = _class_labels(name, np.array([np.asarray(dataset[i][1]).item() for i in range(n)]))
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(test_fraction * n))
    items = _StudyItems(dataset)
    subset = torch.utils.data.Subset
    return DataSplits(
        name=name,
        train=subset(items, order[n_test:].tolist()),
        test=subset(items, order[:n_test].tolist()),
        input_shape=tuple(items[0][0].shape),
        num_classes=int(labels.max()) + 1,
    )


class _StudyItems(Dataset):
    """A user's ``(input, label)`` dataset as the built-in models take it: floating inputs as
    float32 tensors (integer inputs, e.g. token ids, kept), labels as int64 tensors."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        x = torch.as_tensor(x)
        if x.is_floating_point():
            x = x.to(torch.float32)
        return x, torch.as_tensor(int(np.asarray(y).item()), dtype=torch.long)


def as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a dataset as ``(X, y)`` tensors (cheap for TensorDatasets and their Subsets)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, torch.utils.data.Subset) and isinstance(dataset.dataset, TensorDataset):
        idx = torch.as_tensor(dataset.indices, dtype=torch.long)
        return dataset.dataset.tensors[0][idx], dataset.dataset.tensors[1][idx]
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return (
        torch.stack([torch.as_tensor(a) for a, _ in items]),
        torch.as_tensor([int(b) for _, b in items]),
    )
