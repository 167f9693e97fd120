"""What analyses see: :class:`StudyContext` while computing, :class:`RunView` while rendering.

This module does not import torch at import time: rendering (``gradnoise report``) never needs it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .._npz import read_npz
from ..errors import ConfigError, StoreError
from ..store import Run, open_run
from .config import StudyConfig
from .optim import OptimizerSpec

if TYPE_CHECKING:
    from ..datasets import DataSplits

T = TypeVar("T")

SUMMARY = "summary.json"
STORE = "grads.zarr"
SUMMARY_KEYS = {"config": dict, "data": dict, "model": dict, "final": dict, "analyses": dict}
RERUN = "run the study again to write it"


def read_json(path: Path, required: Mapping[str, type]) -> dict[str, Any]:
    """A stored JSON object with the ``required`` keys of the given types, or a StoreError that
    names the file and what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as err:
        raise StoreError(
            f"{path.parent} has no {path.name}: not a finished gradnoise run (or preset)"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise StoreError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from err
    except json.JSONDecodeError as err:
        raise StoreError(f"{path} is not valid JSON ({err}): damaged; {RERUN}") from err
    if not isinstance(data, dict):
        raise StoreError(f"{path} holds a {type(data).__name__}, not an object: damaged; {RERUN}")
    for key, kind in required.items():
        if not isinstance(data.get(key), kind):
            got = "is missing" if key not in data else f"is a {type(data[key]).__name__}"
            raise StoreError(
                f"{path}: {key!r} {got} (a {kind.__name__} is expected): damaged or from "
                f"another gradnoise version; {RERUN}"
            )
    return data


def builtin_loss(name: str) -> Any:
    """The built-in loss ``name`` of :class:`StudyConfig` (``cross_entropy`` or ``mse``)."""
    import torch

    if name == "cross_entropy":
        return torch.nn.CrossEntropyLoss()
    if name == "mse":
        return torch.nn.MSELoss()
    raise StoreError(
        f"loss {name!r} is an object that was given to the run (run_study(loss_fn=...) or a "
        "Probe): pass the same loss_fn again"
    )


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the study seed and a stream name (stable across runs)."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(name.encode())])
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class Progress:
    """Progress reporting for long work: a no-op unless a rich progress display is attached."""

    def __init__(self, display: Any = None) -> None:
        self.display = display

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate over ``items`` while showing progress (when a display is attached)."""
        if self.display is None:
            yield from items
            return
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = self.display.add_task(description, total=total)
        for item in items:
            yield item
            self.display.advance(task)
        self.display.update(task, visible=False)


@dataclass
class StudyContext:
    """Live access for an analysis's ``compute``: config, data, checkpoints, store, seeded RNGs.

    One context serves ``gradnoise run`` (a built-in model, loss and optimizer), a
    :class:`gradnoise.Probe` inside a user's training loop and :func:`gradnoise.analyze`: the
    model, loss, optimizer and dropout choice are those of the run, so analyses never assume a
    built-in model, cross-entropy or SGD.

    Attributes:
        config: the study configuration.
        run_dir: the run directory (write only through :meth:`save_arrays`).
        data: train/test splits (``data.test`` may be None; ``data.num_classes`` None for data
            that is not a classification dataset).
        checkpoints: ``{step: path of the saved state_dict}``.
        probe_index: indices (into the train split) of the examples whose per-sample gradients
            were captured at each checkpoint.
        progress: use ``ctx.progress.track(iterable, "what")`` around long loops.
        scratch: per-analysis measurements taken during training (``during_training`` hooks).
        model_factory: a function returning the model at its initial state (None: the built-in
            model of ``config``); checkpoints are loaded into it.
        loss: the training loss object (None: the built-in loss named by ``config.loss``).
        optimizer: the optimizer that trained the model (None: the built-in one of ``config``).
        dropout: the capture choice for random operations in the forward (``"error"``,
            ``"eval"`` or ``"sample"``; see :func:`gradnoise.per_sample_grads`).
        dask: whether a Dask client is the default scheduler (``gradnoise analyze --dask``):
            analyses then hand the gradient store to the statistics as dask arrays
            (:meth:`gradnoise.store.Run.to_dask`) instead of reading it into memory.
    """

    config: StudyConfig
    run_dir: Path
    data: DataSplits
    checkpoints: dict[int, Path]
    probe_index: np.ndarray
    progress: Progress = field(default_factory=Progress)
    scratch: dict[str, Any] = field(default_factory=dict)
    model_factory: Callable[[], Any] | None = None
    loss: Any = None
    optimizer: OptimizerSpec | None = None
    dropout: str = "error"
    dask: bool = False

    @property
    def device(self) -> Any:
        import torch

        return torch.device(self.config.device)

    @property
    def loss_fn(self) -> Any:
        """The training loss: the run's loss object, or the built-in ``config.loss``
        (``nn.CrossEntropyLoss()`` or ``nn.MSELoss()``, mean reduction)."""
        if self.loss is not None:
            return self.loss
        return builtin_loss(self.config.loss)

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        """The optimizer's class and hyper-parameters (an unknown one when not given)."""
        if self.optimizer is not None:
            return self.optimizer
        if self.config.optimizer == "custom":
            return OptimizerSpec(None)
        return OptimizerSpec.from_config(self.config)

    @property
    def fixed_dropout(self) -> str:
        """The dropout choice for computations that need one fixed forward (Gram matrices,
        Hessians, clustering): ``"sample"`` becomes ``"eval"`` there."""
        return "eval" if self.dropout == "sample" else self.dropout

    def build_model(self) -> Any:
        """A fresh model at the run's initial state (the built-in model's seeded
        initialisation, or the user's model as it was when the run started)."""
        if self.model_factory is not None:
            return self.model_factory().to(self.device)
        from ..models import build_model

        if self.data.num_classes is None:
            raise ConfigError(
                f"the built-in model {self.config.model!r} needs a classification dataset; "
                "train your own model (run_study(model=...)) on regression targets"
            )
        return build_model(
            self.config.model,
            self.data.input_shape,
            self.data.num_classes,
            seed=self.config.seed,
            **dict(self.config.model_options),
        ).to(self.device)

    def load_model(self, step: int) -> Any:
        """The model as saved at checkpoint ``step`` (``torch.load(weights_only=True)``)."""
        import torch

        if step not in self.checkpoints:
            raise KeyError(f"no checkpoint at step {step}; checkpoints: {sorted(self.checkpoints)}")
        model = self.build_model()
        state = torch.load(self.checkpoints[step], map_location=self.device, weights_only=True)
        model.load_state_dict(state)
        return model

    def lr_at(self, step: int) -> float | None:
        """The learning rate in effect at ``step``: the ``lr`` recorded at the last recorded
        step up to ``step`` (a schedule's value), else the optimizer's, else None."""
        run = self.run
        if run.length:
            lrs, steps = run.scalars["lr"], run.steps
            known = np.flatnonzero(np.isfinite(lrs) & (steps <= step))
            if known.size:
                return float(lrs[known[-1]])
        return self.optimizer_spec.lr

    @cached_property
    def train_tensors(self) -> tuple[Any, Any]:
        """The whole train split as ``(X, y)`` tensors."""
        from ..datasets import as_tensors

        return as_tensors(self.data.train)

    @cached_property
    def test_tensors(self) -> tuple[Any, Any] | None:
        """The whole test split as ``(X, y)`` tensors (None: the run has no test data)."""
        from ..datasets import as_tensors

        return None if self.data.test is None else as_tensors(self.data.test)

    @property
    def run(self) -> Run:
        """The gradient store recorded along training (re-opened to see the latest commit)."""
        return open_run(self.run_dir / STORE)

    def rng(self, name: str) -> np.random.Generator:
        """A generator seeded from the study seed and ``name`` (independent streams per use)."""
        return np.random.default_rng(derive_seed(self.config.seed, name))

    def per_sample_memory(self, default: int | None) -> dict[str, Any]:
        """Chunking of per-sample captures: ``max_memory=`` when the study has a budget (the
        capture sizes its chunks from the gradient working set and the activations it
        measures, :mod:`gradnoise.memory`), else ``chunk_size=default``."""
        budget = self.config.max_memory
        return {"chunk_size": default} if budget is None else {"max_memory": budget}

    def memory(self) -> dict[str, Any]:
        """``max_memory=`` for captures (Gram matrices, batch gradients, Hessian products,
        clustering) when the study has a budget (else their defaults)."""
        budget = self.config.max_memory
        return {} if budget is None else {"max_memory": budget}

    def seed_for(self, name: str) -> int:
        """An integer seed derived from the study seed and ``name``."""
        return derive_seed(self.config.seed, name) % (2**31)

    def options(self, analysis: str) -> dict[str, Any]:
        """The options of ``analysis`` (``[options.<analysis>]``), checked and completed with
        defaults by the analysis's ``options`` function (see :mod:`gradnoise.study.registry`)."""
        from .registry import resolve_options

        return resolve_options(analysis, self.config)

    def save_arrays(self, analysis: str, **arrays: Any) -> Path:
        """Save arrays for ``analysis`` to ``analyses/<analysis>.npz`` (read back by RunView)."""
        path = self.run_dir / "analyses" / f"{analysis}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
        return path


@dataclass
class RunView:
    """Read-only view of a finished run for one analysis's ``render`` (no torch, no model)."""

    run_dir: Path
    summary: Mapping[str, Any]
    name: str

    @classmethod
    def load(cls, run_dir: str | Path, name: str) -> RunView:
        run_dir = Path(run_dir)
        return cls(run_dir, read_json(run_dir / SUMMARY, SUMMARY_KEYS), name)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.summary["config"])

    @property
    def results(self) -> dict[str, Any]:
        """This analysis's entry of ``summary.json``."""
        return dict(self.summary["analyses"][self.name])

    @property
    def optimizer(self) -> OptimizerSpec:
        """The optimizer that trained the run (``summary.json["optimizer"]``; runs written
        before it was recorded trained with the built-in SGD of their config)."""
        if "optimizer" in self.summary:
            return OptimizerSpec.from_dict(self.summary["optimizer"])
        cfg = self.summary["config"]
        return OptimizerSpec(
            "SGD",
            "torch.optim",
            {k: cfg[k] for k in ("lr", "momentum", "weight_decay") if k in cfg},
        )

    @cached_property
    def run(self) -> Run:
        """The gradient store."""
        return open_run(self.run_dir / STORE)

    def arrays(self, analysis: str | None = None) -> dict[str, np.ndarray]:
        """Arrays saved with ``ctx.save_arrays`` (this analysis's unless another is named)."""
        path = self.run_dir / "analyses" / f"{analysis or self.name}.npz"
        return read_npz(path, fix=RERUN, error=StoreError, if_missing=RERUN)

    def figure_path(self, stem: str) -> Path:
        """Where to save a figure of this analysis (``figures/<analysis>_<stem>.png``)."""
        return self.run_dir / "figures" / f"{self.name}_{stem}.png"
