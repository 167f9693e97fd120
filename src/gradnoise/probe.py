"""The in-loop probe: the whole study inside any training run.

::

    probe = gradnoise.Probe("runs/mine", model, loss_fn, train_data, checkpoints=[0, 500, 1000],
                            batch_size=64, optimizer=opt)
    for step, (x, y) in enumerate(loader):
        opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward()
        probe.step(step, loss=loss.item(), lr=sched.get_last_lr()[0])  # after backward
        opt.step()
    report_path = probe.finish()

A :class:`Probe` records the minibatch gradient of the selected coordinates at every recorded
step (as :class:`gradnoise.Recorder` does), saves the model's state at each checkpoint and captures
per-sample gradients, SGN and the full gradient there on its own seeded data stream, runs the
analyses' during-training measurements (gradient variance) and, at :meth:`Probe.finish`, runs the
analyses on copies of the model loaded with each checkpoint and writes the run directory of
``gradnoise run`` (``summary.json``, ``manifest.json``, ``report.html``, ``grads.zarr``,
``checkpoints/``), which ``gradnoise report`` re-renders and ``gradnoise analyze`` re-analyses.

The user's training is the same with and without the probe: it never writes ``.grad``, the
parameters, buffers or the optimizer, and torch's (CPU and CUDA), numpy's and Python's global
random states are given back as they were after each call. The built-in trainer of
``gradnoise run`` is a training loop around this same probe.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import math
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__
from .errors import ConfigError, DataError, MissingDataError, ProbeError, ProbeWarning
from .memory import release_memory
from .study.config import StudyConfig
from .study.context import STORE, SUMMARY, Progress, StudyContext, derive_seed
from .study.optim import OptimizerSpec

#: the analyses of a probe by default: every analysis except "training", whose curves need a
#: loss and accuracy that a user's loop may not report (add it: analyses=(..., "training"))
PROBE_ANALYSES = ("gradients", "tails", "noise_model", "spectra", "variance")
INITIAL = "initial.pt"
#: analysis options for a smoke run of a few hundred examples (seconds, not statistics: few
#: bootstrap replicates, samples and fits); ``options=QUICK_OPTIONS`` in the examples' --tiny
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "tails": {"n_boot": 0, "sgn_batches": 16, "matched_samples": 5, "min_tail": 20},
    "spectra": {
        "examples": 32,
        "bootstrap": 0,
        "batch_sizes": [8],
        "sweep_batches": 16,
        "sweep_pool": 64,
        "hessian_k": 3,
        "hessian_examples": 32,
    },
    "noise_model": {
        "sgn_samples": 32,
        "coords": 100,
        "fit_coords": 20,
        "batch_sizes": [16],
        "directions": 10,
        "arm_steps": 3,
        "pass_batch_size": 8,
    },
    "variance": {"every": 4, "draws": 4, "comparator_draws": 4, "num_clusters": 8},
}
DROPOUT = ("error", "eval", "sample")
#: analyses that need at least one checkpoint's capture
NEEDS_CHECKPOINTS = ("gradients", "tails", "noise_model", "spectra")
#: the default checkpoint steps (as in the issue's signature): name your own run's
CHECKPOINTS = (0, 500, 1000)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the model's state at checkpoint ``step`` is saved."""
    return run_dir / "checkpoints" / f"step_{step:07d}.pt"


def describe(obj: Any) -> str:
    """A stable one-line name of a loss, model or data object (no memory addresses): a leaf
    module's repr (``CrossEntropyLoss()``), a function's qualified name, else the class name."""
    if isinstance(obj, nn.Module):
        return repr(obj) if not list(obj.children()) else type(obj).__name__
    if isinstance(obj, tuple):
        return "tensors"
    name = getattr(obj, "__qualname__", None)
    if name is not None and callable(obj):
        return f"{getattr(obj, '__module__', '') or ''}.{name}".lstrip(".")
    return type(obj).__name__


def copy_model(model: nn.Module, state: Mapping[str, Any] | None = None) -> nn.Module:
    """A deep copy of ``model`` (no gradients attached), loaded with ``state`` if given."""
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.grad = None
    if state is not None:
        twin.load_state_dict(state)
    return twin


def check_forward(
    model: nn.Module,
    loss_fn: Any,
    x: Tensor,
    y: Tensor,
    device: Any,
    what: str,
    error: type[Exception] = DataError,
) -> Any:
    """One forward pass and loss on two examples (gradients off, eval mode, random states kept):
    the model consumes the data's inputs and the loss of a batch is one number. Returns the
    outputs; a failure raises ``error`` naming ``what``, the inputs' shape and dtype."""
    from .study._torch import eval_mode, preserved_rng

    xb, yb = x[:2].to(device), y[:2].to(device)
    with torch.no_grad(), preserved_rng(), eval_mode(model):
        try:
            out = model(xb)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise error(
                f"{what} does not accept the inputs (shape {tuple(x.shape[1:])} per example, "
                f"dtype {x.dtype}): {reason}"
            ) from err
        try:
            loss = loss_fn(out, yb)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise error(
                f"the loss cannot compare the outputs of {what} with the targets (shape "
                f"{tuple(y.shape[1:])} per example, dtype {y.dtype}): {reason}"
            ) from err
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ConfigError(
            f"the loss is not a scalar: loss_fn on a batch of 2 examples returned {got}; use a "
            "loss with reduction='mean' or 'sum'"
        )
    return out


def finish_training(probe: Probe, steps_done: int) -> Path | None:
    """Finish ``probe`` after a framework's training ended at ``steps_done`` optimizer steps,
    capturing that final state when it is a checkpoint; None when already finished."""
    if probe.finished:
        return None
    last = probe.last_step
    return probe.finish(final_step=steps_done if last is None or steps_done > last else None)


def user_splits(train_data: Any, test_data: Any, num_classes: int | None) -> Any:
    """A probe's data as the study's :class:`~gradnoise.datasets.DataSplits` (tensors in
    memory; ``num_classes`` None for targets that are not class labels)."""
    from .datasets import DataSplits, as_tensors

    train_data, _ = _unwrap_data(train_data, None)
    test_data, _ = _unwrap_data(test_data, None)
    tensors = torch.utils.data.TensorDataset
    x, y = as_tensors(train_data)
    return DataSplits(
        describe(train_data),
        tensors(x, y),
        tensors(*as_tensors(test_data)) if test_data is not None else None,
        tuple(x.shape[1:]),
        num_classes,
    )


def _as_steps(checkpoints: Any) -> tuple[int, ...]:
    if isinstance(checkpoints, (int, np.integer)) and not isinstance(checkpoints, bool):
        checkpoints = [checkpoints]
    if not isinstance(checkpoints, Iterable) or isinstance(checkpoints, (str, bytes)):
        raise ConfigError(
            f"checkpoints must be a list of training steps, got {type(checkpoints).__name__}"
        )
    steps = list(checkpoints)
    bad = [s for s in steps if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0]
    if bad or not steps:
        raise ConfigError(
            f"checkpoints must be a non-empty list of steps >= 0, got {list(checkpoints)!r}"
        )
    return tuple(sorted({int(s) for s in steps}))


def _unwrap_data(train_data: Any, batch_size: int | None) -> tuple[Any, int | None]:
    """A DataLoader gives its dataset and batch size; a Dataset or ``(X, y)`` is kept."""
    loader = torch.utils.data.DataLoader
    if isinstance(train_data, loader):
        return train_data.dataset, batch_size or train_data.batch_size
    return train_data, batch_size


class Probe:
    """Run the study inside any training loop (see the module docstring).

    Call :meth:`step` after ``loss.backward()`` and before ``optimizer.step()`` at every
    training step, and :meth:`finish` after training.

    Args:
        out: the run directory (new, or an empty directory).
        model: the network being trained (any ``nn.Module``; not modified).
        loss_fn: the training loss, ``loss_fn(model(x), y)`` a scalar tensor; an example's own
            loss is ``loss_fn`` on a batch of one (per sequence for a language model).
        train_data: the examples the study measures on: a map-style Dataset of ``(input,
            target)`` pairs, an ``(X, y)`` pair of tensors, or a DataLoader (its dataset and
            batch size). They are held in memory as tensors: pass a subset of a large dataset.
        test_data: optional held-out data; the probe evaluates loss (and accuracy, for class
            targets) on it every ``eval_every`` recorded steps, in eval mode.
        analyses: the analyses run at :meth:`finish` (``gradnoise info`` lists them).
        checkpoints: the training steps at which the model is saved and per-sample gradients,
            SGN and the full gradient are captured (default 0, 500 and 1000: name your run's).
            The last one also sizes the defaults of analysis options that depend on the run's
            length (the variance analysis measures every ``last // 10`` steps). A step never
            reached is reported at :meth:`finish` (warning and report).
        record_every: record the minibatch gradient every k steps.
        select: the coordinates followed along training: None (``track_coords`` seeded random
            coordinates of all trainable parameters), name glob(s), or a
            :class:`gradnoise.ParamSelection`.
        options: per-analysis options, ``{analysis: {option: value}}`` (as in ``study.toml``).
        dropout: how captures treat random operations in the forward (dropout): ``"error"``
            (refuse them), ``"eval"`` (those modules run in eval mode while measuring) or
            ``"sample"`` (an independent mask per example); see
            :func:`gradnoise.per_sample_grads`. Gram matrices, Hessians and clustering need one
            fixed forward and use ``"eval"`` for ``"sample"``.
        optimizer: the user's optimizer (read only): its class and hyper-parameters go to the
            manifest and summary, the noise-model and variance reports say what step noise
            means for it, and the noise model's learning-rate arms train with its class.
        batch_size: the training minibatch size B (SGN is measured for minibatches of B);
            taken from ``train_data`` when it is a DataLoader.
        seed: seed of every stream the probe draws (probe examples, SGN minibatches,
            coordinates, analyses); the user's random streams are never used.
        per_sample_examples, noise_batches, track_coords, eval_every: as in
            :class:`gradnoise.study.StudyConfig`.
        scalars: names of extra per-step numbers passed to :meth:`step` (e.g. ``"train_acc"``).
        tensorboard: write headline scalars along training with
            ``torch.utils.tensorboard.SummaryWriter``: True (into ``<out>/tensorboard``), a
            directory, or a ``SummaryWriter``.
        max_memory: a budget for the per-example gradient working set and activations of
            the captures (``"4GiB"``, or bytes): chunk sizes follow it (``max_memory // (3 * P
            * itemsize + 2 * activation bytes)`` examples, the activations measured,
            :mod:`gradnoise.memory`); a budget below one example is refused here.
            None: the built-in chunk sizes.
        process_group: under ``torch.distributed`` (DDP), a group or ``"world"``: every rank
            constructs the probe with the same arguments and data and calls :meth:`step` and
            :meth:`finish` at the same steps; rank 0 alone writes the run directory (the
            minibatch gradient it records is DDP's all-reduced one, i.e. the global
            minibatch's), the checkpoint captures are shared among the ranks, and the analyses
            run on rank 0 at :meth:`finish` (which returns None on the other ranks). None: this
            process alone; a probe made without a process group on a rank other than 0 of an
            initialised group is refused (two ranks would write the same run).
    """

    def __init__(
        self,
        out: str | Path,
        model: nn.Module,
        loss_fn: Any,
        train_data: Any,
        *,
        test_data: Any = None,
        analyses: Sequence[str] = PROBE_ANALYSES,
        checkpoints: Sequence[int] | int = CHECKPOINTS,
        record_every: int = 1,
        select: Any = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        dropout: str = "error",
        optimizer: Any = None,
        batch_size: int | None = None,
        seed: int = 0,
        per_sample_examples: int = 256,
        noise_batches: int = 64,
        track_coords: int = 5000,
        eval_every: int = 10,
        scalars: Sequence[str] = (),
        tensorboard: Any = False,
        max_memory: int | str | None = None,
        process_group: Any = None,
    ) -> None:
        from .capture._dist import unwrap
        from .datasets import as_tensors

        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model = unwrap(model)  # DistributedDataParallel: its module (the same parameters)
        _check_writer_rank(process_group)
        if not callable(loss_fn):
            raise ConfigError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if dropout not in DROPOUT:
            raise ConfigError(f"dropout must be one of {', '.join(DROPOUT)}, got {dropout!r}")
        train_data, batch_size = _unwrap_data(train_data, batch_size)
        test_data, _ = _unwrap_data(test_data, None)
        if batch_size is None:
            raise ConfigError(
                "batch_size= (the training minibatch size) is needed when train_data is a "
                "Dataset or an (X, y) pair; a DataLoader gives it"
            )
        spec = OptimizerSpec.from_optimizer(optimizer) if optimizer is not None else None
        data = user_splits(train_data, test_data, None)
        x, y = as_tensors(data.train)
        steps = _as_steps(checkpoints)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        outputs = check_forward(model, loss_fn, x, y, device, f"model {type(model).__name__}")
        from .capture import audit_model
        from .study._torch import preserved_rng

        with preserved_rng():  # refuse now what every capture would refuse at a checkpoint
            audit_model(model, loss_fn, x[:4].to(device), y[:4].to(device), dropout=dropout)
        hp = spec.hyperparameters if spec is not None else {}
        momentum = hp.get("momentum") if spec is not None and spec.kind == "plain" else 0.0
        config = StudyConfig(
            dataset=data.name,
            model=type(model).__name__,
            steps=max(1, steps[-1]),
            batch_size=batch_size,
            lr=spec.lr if spec is not None and spec.lr else StudyConfig.lr,
            momentum=momentum if isinstance(momentum, float) and 0 <= momentum < 1 else 0.0,
            weight_decay=float(hp.get("weight_decay") or 0.0),
            seed=seed,
            loss="custom",
            optimizer="custom",
            record_every=record_every,
            track_coords=track_coords,
            checkpoints=steps,
            per_sample_examples=per_sample_examples,
            noise_batches=noise_batches,
            eval_every=eval_every,
            analyses=tuple(analyses),
            options=dict(options or {}),
            device=str(device),
            threads=0,
            max_memory=max_memory,
        )
        from .study._torch import accuracy

        if accuracy(outputs, y[:2].to(device)) is not None:  # class scores: a classifier
            data = dataclasses.replace(data, num_classes=int(outputs.shape[1]))
        self._setup(
            config,
            Path(out),
            model,
            data,
            loss=loss_fn,
            optimizer=spec,
            dropout=dropout,
            select=select,
            scalars=tuple(scalars),
            source="probe",
            progress=None,
            tensorboard=tensorboard,
            process_group=process_group,
        )

    @classmethod
    def _for_study(
        cls,
        config: StudyConfig,
        run_dir: Path,
        model: nn.Module,
        data: Any,
        *,
        loss: Any,
        optimizer: OptimizerSpec | None,
        model_factory: Callable[[], Any] | None,
        progress: Any,
        tensorboard: Any,
        checks: Callable[[StudyContext, nn.Module], None],
    ) -> Probe:
        """The probe of the built-in trainer (``run_study``): its config, data and model."""
        probe = cls.__new__(cls)
        probe._setup(
            config,
            run_dir,
            model,
            data,
            loss=loss,
            optimizer=optimizer,
            dropout="error",
            select=None,
            scalars=("train_acc",),
            source="gradnoise run",
            progress=progress,
            tensorboard=tensorboard,
            model_factory=model_factory,
            save_initial=False,
            checks=checks,
        )
        return probe

    def _check_budget(self, model: nn.Module, max_memory: object) -> None:
        """One example's per-sample gradient working set and activations (measured on the
        model as it is) must fit ``max_memory`` (:func:`gradnoise.memory.chunk_for`)."""
        from .capture._budget import activation_bytes
        from .memory import chunk_for

        tensors = [p for p in model.parameters() if p.requires_grad]
        chunk_for(tensors, max_memory)  # the gradients alone, before any forward
        x, y = self.ctx.train_tensors
        act = activation_bytes(
            model, self.ctx.loss_fn, (x, y), int(x.shape[0]), tensors, None, None, self.ctx.device
        )
        chunk_for(tensors, max_memory, activation_bytes=act)

    def _setup(
        self,
        config: StudyConfig,
        run_dir: Path,
        model: nn.Module,
        data: Any,
        *,
        loss: Any,
        optimizer: OptimizerSpec | None,
        dropout: str,
        select: Any,
        scalars: tuple[str, ...],
        source: str,
        progress: Any,
        tensorboard: Any,
        model_factory: Callable[[], Any] | None = None,
        save_initial: bool = True,
        checks: Callable[[StudyContext, nn.Module], None] | None = None,
        process_group: Any = None,
    ) -> None:
        from .capture import select_params
        from .capture._dist import shard_of
        from .recorder import Recorder
        from .study.registry import check_study
        from .study.runner import check_run_dir, create_run_dir

        self._t0 = time.perf_counter()
        self.analyses = check_study(config)
        shard = shard_of(process_group)
        #: rank 0 of the process group (or a process alone) writes the run; the others share
        #: the captures and write nothing
        self.writes = shard.rank == 0
        self.process_group = process_group if shard.shared else None
        _on_writer(shard, lambda: check_run_dir(run_dir))
        self.model, self.config, self.run_dir, self.source = model, config, run_dir, source
        self.user_model = source == "probe" or model_factory is not None
        self._shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.ctx = StudyContext(
            config=config,
            run_dir=run_dir,
            data=data,
            checkpoints={},
            probe_index=np.empty(0, dtype=np.int64),
            progress=Progress(progress),
            loss=loss,
            optimizer=optimizer,
            dropout=dropout,
        )
        x, _ = self.ctx.train_tensors
        n_train = int(x.shape[0])
        if n_train < config.batch_size:
            raise ConfigError(
                f"the train split has {n_train} examples, fewer than batch_size {config.batch_size}"
            )
        if config.max_memory is not None:  # refused before anything is written
            self._check_budget(model, config.max_memory)
        if checks is not None:
            checks(self.ctx, model)
        for analysis in self.analyses:
            if analysis.check is not None:
                analysis.check(self.ctx, model)
        n_params = sum(p.numel() for p in model.parameters())
        if select is None:
            coords = config.track_coords
            coords = None if coords == 0 or coords >= n_params else coords
            selection = select_params(
                model, coords=coords, seed=derive_seed(config.seed, "coords") % 2**31
            )
        elif isinstance(select, (str, list, tuple)):
            selection = select_params(model, select)
        else:
            selection = select
        _on_writer(shard, lambda: create_run_dir(run_dir))
        self.ctx.probe_index = np.sort(
            self.ctx.rng("probe").choice(
                n_train, size=min(config.per_sample_examples, n_train), replace=False
            )
        )
        self.recorder = Recorder(
            run_dir / STORE,
            model,
            select=selection,
            every=config.record_every,
            config=config.to_dict(),
            seed=config.seed,
            scalars=("grad_norm", *scalars, "test_loss", "test_acc"),
            process_group=self.process_group,
        )
        if self.writes:
            (run_dir / "checkpoints").mkdir()
        if (
            save_initial and self.writes
        ):  # the user's model: copies loaded with the state it started from
            initial = run_dir / "checkpoints" / INITIAL
            torch.save(model.state_dict(), initial)
            model_factory = _factory(model, initial)
        self.ctx.model_factory = model_factory
        self.checkpoint_steps = config.checkpoint_steps()
        self.hooks = [a.during_training for a in self.analyses if a.during_training is not None]
        self.last_step: int | None = None
        self.scalar_names = scalars
        self.finished = False
        # time spent in step(): recording rows, checkpoint captures, during-training measurements
        self.seconds = {"record_s": 0.0, "capture_s": 0.0, "measure_s": 0.0}
        self.steps_seen = 0
        self.tensorboard = _writer(tensorboard, run_dir) if self.writes else None

    # ------------------------------------------------------------------------------------------
    # during training

    def _check_step(self, step: Any, loss: Any, scalars: Mapping[str, Any]) -> tuple[int, Any]:
        if self.finished:
            raise ProbeError(
                "probe.step after probe.finish(): the run is written; start a new probe"
            )
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise ProbeError(f"step must be an integer, got {step!r}")
        step = int(step)
        if self.last_step is not None and step <= self.last_step:
            raise ProbeError(
                f"steps must increase: step {step} after step {self.last_step} (call probe.step "
                "once per optimizer step)"
            )
        unknown = sorted(set(scalars) - set(self.scalar_names))
        if unknown:
            raise ProbeError(
                f"unknown scalar(s) {unknown}: declare them with Probe(scalars=...) "
                f"(declared: {list(self.scalar_names)})"
            )
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ProbeError(
                    f"the loss is not a scalar: got a tensor of shape {tuple(loss.shape)}; pass "
                    "loss=loss.item() of the batch's (mean or sum) loss"
                )
            loss = float(loss.detach())
        elif loss is not None and not isinstance(loss, (int, float, np.number)):
            raise ProbeError(f"loss must be a number, got {type(loss).__name__}")
        shapes = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        if shapes != self._shapes:
            changed = sorted(
                n for n in set(shapes) | set(self._shapes) if shapes.get(n) != self._shapes.get(n)
            )
            raise ProbeError(
                f"the model's parameters changed since the probe started (added, removed or "
                f"reshaped: {', '.join(changed[:5])}); a probe follows one fixed architecture"
            )
        missing = [
            n
            for n, p in zip(self.recorder.selection.names, self._selected(), strict=True)
            if p.grad is None
        ]
        if missing:
            raise ProbeError(
                f"probe.step({step}) found no gradient in {missing[0]!r}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + ": call it after loss.backward() and before optimizer.step() / zero_grad()"
            )
        return step, loss

    def _selected(self) -> list[Tensor]:
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.recorder.selection.names]

    def step(
        self,
        step: int,
        *,
        loss: float | Tensor | None = None,
        lr: float | None = None,
        **scalars: float,
    ) -> None:
        """Record training step ``step``: call after ``loss.backward()`` and before
        ``optimizer.step()``.

        At every ``record_every``-th step it stores the minibatch gradient of the selected
        coordinates with ``loss``, ``lr``, the gradient norm and the declared ``scalars``; at a
        checkpoint step it saves the model and captures per-sample gradients, SGN and the full
        gradient; and it runs the analyses' during-training measurements.

        Raises:
            ProbeError: called before ``backward`` (no gradient), with a non-scalar loss, a step
                that does not increase, or a model whose parameters changed shape. Every step
                recorded before stays readable.
        """
        from .capture._common import exact_float32
        from .study._torch import preserved_rng

        step, loss = self._check_step(step, loss, scalars)
        started = time.perf_counter()
        with preserved_rng(), exact_float32():
            headline: dict[str, float] = {}
            if self.writes and self.recorder.should_record(step):
                values = self._recorded_scalars(step, scalars)
                self.recorder.record(step, self.model, loss=loss, lr=lr, **values)
                headline.update({k: v for k, v in values.items() if v is not None})
            recorded = time.perf_counter()
            if step in self.checkpoint_steps and step not in self.ctx.checkpoints:
                headline.update(self._checkpoint(step))
                release_memory()  # the captures' freed heap pages, before a measurement
            captured = time.perf_counter()
            if self.writes:  # the analyses' measurements belong to the run rank 0 writes
                for hook in self.hooks:
                    hook(self.ctx, step, self.model)
                headline.update(self._measured(step))
            state = self.ctx.scratch.get("variance")
            if state is not None and step in state.steps[-1:]:
                release_memory()  # a measurement leaves freed heap pages resident
        self.last_step = step
        self.steps_seen += 1
        done = time.perf_counter()
        self.seconds["record_s"] += recorded - started
        self.seconds["capture_s"] += captured - recorded
        self.seconds["measure_s"] += done - captured
        if self.tensorboard is not None:
            if loss is not None:
                headline["loss"] = float(loss)
            self._tensorboard(step, headline)

    def _recorded_scalars(self, step: int, given: Mapping[str, float]) -> dict[str, Any]:
        from .study._torch import eval_mode, evaluate

        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        values: dict[str, Any] = {
            "grad_norm": float(torch.sqrt(sum((g**2).sum() for g in grads))),  # type: ignore[arg-type]
            **{k: float(v) for k, v in given.items()},
        }
        test = self.ctx.test_tensors
        if test is not None and step % self.config.eval_every == 0:
            with eval_mode(self.model):
                values["test_loss"], values["test_acc"] = evaluate(
                    self.model, self.ctx.loss_fn, *test, device=self.ctx.device, batch_size=1024
                )
        return values

    def _checkpoint(self, step: int) -> dict[str, float]:
        """Save the model at ``step`` and capture per-sample gradients, the full gradient and SGN
        at these parameters (on the probe's own seeded streams)."""
        ctx, rec, cfg = self.ctx, self.recorder, self.config
        path = checkpoint_path(self.run_dir, step)
        if self.writes:
            torch.save(self.model.state_dict(), path)
        ctx.checkpoints[step] = path
        x, y = ctx.train_tensors
        probe = torch.as_tensor(ctx.probe_index)
        dev = ctx.device
        rec.record_per_sample(
            step,
            self.model,
            ctx.loss_fn,
            x[probe].to(dev),
            y[probe].to(dev),
            dropout=ctx.dropout,
            **ctx.per_sample_memory(None),
        )
        rec.record_full(step, self.model, ctx.loss_fn, (x, y), dropout=ctx.dropout, **ctx.memory())
        rec.record_noise(
            step,
            self.model,
            ctx.loss_fn,
            (x, y),
            batch_size=cfg.batch_size,
            num_batches=cfg.noise_batches,
            seed=derive_seed(cfg.seed, f"noise-{step}") % 2**31,
            dropout=ctx.dropout,
            **ctx.memory(),
        )
        if self.tensorboard is None:
            return {}
        from .stats import tail_index
        from .store import open_run

        noise = open_run(rec.path).noise[step].astype(np.float64)
        values = {"sgn_norm": float(np.linalg.norm(noise, axis=1).mean())}
        try:  # Mohammadi's estimator per coordinate over the K minibatches, median
            alpha = np.asarray(tail_index(noise, axis=0).alpha, dtype=np.float64)
            values["sgn_tail_index"] = float(np.nanmedian(alpha))
        except ValueError:  # K has no usable block length (a prime K)
            pass
        return values

    def _measured(self, step: int) -> dict[str, float]:
        """The variance hook's measurement at ``step``, if it took one (NGV, GSNR)."""
        state = self.ctx.scratch.get("variance")
        if self.tensorboard is None or state is None or not state.steps or state.steps[-1] != step:
            return {}
        series = state.series
        return {"ngv": series["ngv"][-1], "gsnr": series["gsnr_mean"][-1]}

    def _tensorboard(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            if key in ("test_acc", "train_acc") or math.isfinite(value):
                self.tensorboard.add_scalar(f"gradnoise/{key}", value, step)

    # ------------------------------------------------------------------------------------------
    # after training

    def finish(self, *, final_step: int | None = None) -> Path | None:
        """Run the analyses and write ``summary.json``, ``manifest.json`` and ``report.html``;
        returns the report's path (None on ranks other than 0 of a ``process_group``, which
        only share the final checkpoint's capture).

        Args:
            final_step: the step count after the last optimizer step, when the model's final
                state is a checkpoint (e.g. ``checkpoints=[0, 1000]`` and 1000 optimizer steps,
                steps 0..999): the probe captures it and runs the measurements due after the
                last step.
        """
        from .capture._common import exact_float32
        from .study._torch import preserved_rng
        from .study.runner import pinned_threads

        if self.finished:
            raise ProbeError("probe.finish() was already called; the run is written")
        if final_step is not None:
            if not isinstance(final_step, (int, np.integer)) or isinstance(final_step, bool):
                raise ProbeError(f"final_step must be an integer, got {final_step!r}")
            if self.last_step is not None and final_step <= self.last_step:
                raise ProbeError(
                    f"final_step {final_step} must follow the last step recorded ({self.last_step})"
                )
        self.finished = True
        try:
            with preserved_rng(), exact_float32(), pinned_threads(self.config.threads):
                if final_step is not None:
                    final_step = int(final_step)
                    headline: dict[str, float] = {}
                    if final_step in self.checkpoint_steps:
                        headline.update(self._checkpoint(final_step))
                        release_memory()
                    if self.writes:
                        for hook in self.hooks:
                            hook(self.ctx, final_step, self.model)
                        headline.update(self._measured(final_step))
                    release_memory()
                    if self.tensorboard is not None:
                        self._tensorboard(final_step, headline)
                if not self.writes:
                    return None
                return self._write(final_step)
        finally:
            self.close()

    def _write(self, final_step: int | None) -> Path:
        from .study._torch import eval_mode, evaluate
        from .study.runner import render_run, thread_counts, verdicts, write_json

        ctx, config = self.ctx, self.config
        timings = {"train_and_capture_s": time.perf_counter() - self._t0}
        missed = [s for s in self.checkpoint_steps if s not in ctx.checkpoints]
        if missed:
            warnings.warn(
                ProbeWarning(
                    f"checkpoint step(s) {missed} were never reached (last step "
                    f"{final_step if final_step is not None else self.last_step}); the report "
                    "says which analyses lack them"
                ),
                stacklevel=3,
            )
        final_loss = final_acc = None
        if ctx.test_tensors is not None:
            with eval_mode(self.model):
                final_loss, final_acc = evaluate(
                    self.model, ctx.loss_fn, *ctx.test_tensors, device=ctx.device, batch_size=1024
                )
        x, _ = ctx.train_tensors
        test = ctx.test_tensors
        summary: dict[str, Any] = {
            "config": config.to_dict(),
            "model": {
                "name": config.model,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "tracked_coordinates": self.recorder.selection.num_columns,
            },
            "data": {
                "name": ctx.data.name,
                "train": int(x.shape[0]),
                "test": int(test[0].shape[0]) if test is not None else 0,
                "input_shape": list(ctx.data.input_shape),
                "num_classes": ctx.data.num_classes,
            },
            "final": {"test_loss": final_loss, "test_acc": final_acc},
            "checkpoints": sorted(ctx.checkpoints),
            "optimizer": ctx.optimizer_spec.to_dict(),
            "probe": {
                "source": self.source,
                "last_step": final_step if final_step is not None else self.last_step,
                "missed_checkpoints": missed,
                "dropout": ctx.dropout,
                "user_model": self.user_model,
                "loss": describe(ctx.loss_fn),
            },
            "analyses": {},
        }
        from .study.registry import get_analysis

        def commit() -> None:  # summary.json as it stands: what completed survives a failure
            summary["verdicts"] = verdicts(summary)
            write_json(self.run_dir / SUMMARY, summary)

        for analysis in self.analyses:
            t = time.perf_counter()
            try:
                results = run_analysis(get_analysis(analysis.name), ctx, missed)
            except Exception as err:
                reason = " ".join(f"{type(err).__name__}: {err}".split())[:500]
                summary["analyses"][analysis.name] = {
                    "unavailable": f"the analysis failed ({reason})"
                }
                if self.source != "probe":  # gradnoise run: the error stops the command, after
                    commit()  # the report of what completed is written (the failure in its
                    with contextlib.suppress(Exception):  # section); the error is what counts
                        render_run(self.run_dir)
                    raise
                # a user's long run keeps its other analyses and report; the section says why
                warnings.warn(
                    ProbeWarning(f"the {analysis.name!r} analysis failed ({reason})"), stacklevel=3
                )
                results = summary["analyses"][analysis.name]
            summary["analyses"][analysis.name] = results
            timings[f"analysis_{analysis.name}_s"] = time.perf_counter() - t
            commit()  # each analysis's results are committed when it finishes
        if not self.analyses:
            commit()
        self.recorder.update_metadata(summary_file=SUMMARY)
        t = time.perf_counter()
        report = render_run(self.run_dir)
        timings["report_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - self._t0
        timings["probe_step_s"] = sum(self.seconds.values())
        timings.update({f"probe_{k}": v for k, v in self.seconds.items()})
        write_json(
            self.run_dir / "manifest.json",
            {
                "gradnoise": __version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "timings": timings,
                "steps_seen": self.steps_seen,
                "optimizer": ctx.optimizer_spec.to_dict(),
                "loss": describe(ctx.loss_fn),
                "dropout": ctx.dropout,
                "source": self.source,
                "threads_setting": config.threads,
                "threads": thread_counts(),
            },
        )
        return report

    def close(self) -> None:
        """Release the store's writer lock (and TensorBoard's file) without finishing; every
        recorded step stays readable."""
        self.recorder.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.finished:
            self.close()


def _on_writer(shard: Any, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the writing rank (rank 0, or a process alone); under a process group every
    rank learns whether it failed and raises too, so no rank waits for one that gave up."""
    failure: Exception | None = None
    if shard.rank == 0:
        try:
            fn()
        except Exception as err:
            failure = err
    if shard.shared:
        problem = shard.gather_objects(None if failure is None else str(failure))[0]
        if failure is None and problem is not None:
            raise ConfigError(f"rank 0 of the process group could not start the run: {problem}")
    if failure is not None:
        raise failure


def _check_writer_rank(process_group: Any) -> None:
    """Refuse a probe of its own on a rank other than 0 of an initialised process group: every
    rank would write the same run directory."""
    if process_group is not None or not torch.distributed.is_available():
        return
    dist = torch.distributed
    if dist.is_initialized() and dist.get_world_size() > 1 and dist.get_rank() != 0:
        raise ConfigError(
            f"a Probe on rank {dist.get_rank()} of {dist.get_world_size()} without "
            "process_group= would write the same run as rank 0; pass process_group='world' on "
            "every rank (rank 0 writes, the captures are shared), or make the probe on rank 0 "
            "only"
        )


def run_analysis(analysis: Any, ctx: StudyContext, missed: Sequence[int] = ()) -> dict[str, Any]:
    """``analysis.compute(ctx)``, or ``{"unavailable": reason}`` when the run lacks its data
    (no checkpoint reached, no step recorded, no measurement taken)."""
    if analysis.name in NEEDS_CHECKPOINTS and not ctx.checkpoints:
        reason = "no checkpoint was reached"
        if missed:
            reason += f" (checkpoint steps {list(missed)} requested)"
        return {"unavailable": reason}
    release_memory()  # the first analysis too: training's captures leave freed heap pages
    try:
        return analysis.compute(ctx)
    except MissingDataError as err:
        return {"unavailable": str(err)}
    finally:  # what the analysis held goes before the next one allocates its own
        release_memory()


def _factory(model: nn.Module, initial: Path) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        state = torch.load(initial, map_location="cpu", weights_only=True)
        return copy_model(model, state)

    return build


def _writer(tensorboard: Any, run_dir: Path) -> Any:
    if tensorboard is False or tensorboard is None:
        return None
    if hasattr(tensorboard, "add_scalar"):
        return tensorboard
    from .integrations.tensorboard import summary_writer

    return summary_writer(run_dir / "tensorboard" if tensorboard is True else Path(tensorboard))
