"""Hugging Face Transformers: the whole study inside ``Trainer.train`` (a thin adapter over
:class:`gradnoise.Probe`).

::

    from gradnoise.integrations.transformers import GradNoiseCallback
    callback = GradNoiseCallback("runs/hf", checkpoints=[0, 200], dropout="eval")
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
    trainer.train()
    callback.report  # runs/hf/report.html

The probe follows the model with ``model(input_ids)`` as its forward and, by default, the causal
language-model loss :func:`causal_lm_loss` (next-token cross-entropy on ``labels``, per sequence:
an example is a sequence); pass ``loss_fn=`` for another head. ``train_data`` defaults to the
trainer's train dataset, whose items are dicts with ``input_ids`` and ``labels`` (or
``input_ids`` alone: labels are the inputs). A step is recorded in ``on_pre_optimizer_step``,
after the whole gradient-accumulation window (the minibatch is ``per_device_train_batch_size x
gradient_accumulation_steps x world_size``) and *after the Trainer's gradient clipping*: with
``max_grad_norm > 0`` (the Trainer's default 1.0) the recorded minibatch gradients are the
clipped ones (a :class:`~gradnoise.errors.ProbeWarning` says so); the captures at checkpoints
(per-sample gradients, SGN, full gradient) are computed by gradnoise and never clipped. The
Trainer does not hand the step's loss to callbacks, so the store's ``loss`` column stays empty
(the Trainer logs it). Only the main process runs the probe.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ProbeWarning
from ..probe import CHECKPOINTS, PROBE_ANALYSES, Probe, finish_training

try:
    from transformers import TrainerCallback
except ImportError as err:
    raise ImportError(
        "gradnoise.integrations.transformers needs Hugging Face Transformers: "
        "pip install 'gradnoise[transformers]'"
    ) from err


def causal_lm_loss(outputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a causal language model's ``outputs.logits`` ``[B, T, V]``
    against ``labels`` ``[B, T]`` shifted by one (``-100`` ignored), the mean over tokens."""
    logits = outputs.logits if hasattr(outputs, "logits") else outputs
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100
    )


def token_pairs(dataset: Any, input_key: str = "input_ids", target_key: str = "labels") -> Any:
    """``(inputs, targets)`` tensors from a dataset of dicts (targets default to the inputs)."""
    try:
        items = [dataset[i] for i in range(len(dataset))]
        inputs = torch.stack([torch.as_tensor(item[input_key]) for item in items])
        targets = torch.stack(
            [torch.as_tensor(item.get(target_key, item[input_key])) for item in items]
        )
    except (KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(
            f"GradNoiseCallback cannot read the train dataset as {input_key!r}/{target_key!r} "
            f"items of one length ({type(err).__name__}: {err}); pass train_data=(X, y)"
        ) from err
    return inputs, targets


class GradNoiseCallback(TrainerCallback):
    """Run a :class:`gradnoise.Probe` through ``Trainer.train`` and write its report at the end.

    Args:
        out: the run directory.
        analyses, checkpoints: as in :class:`gradnoise.Probe` (checkpoints are optimizer steps,
            ``state.global_step``).
        loss_fn: ``loss_fn(model(inputs), targets)``; default :func:`causal_lm_loss`.
        train_data: the examples the study measures on; default: the trainer's train dataset
            (see :func:`token_pairs`).
        dropout: the capture choice for the model's dropout (``"eval"`` by default: transformer
            blocks have dropout modules).
        **probe_options: any other keyword of :class:`gradnoise.Probe`.

    Attributes:
        probe: the probe (None before training and off the main process).
        report: the path of ``report.html`` after training.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        analyses: Sequence[str] = PROBE_ANALYSES,
        checkpoints: Sequence[int] | int = CHECKPOINTS,
        loss_fn: Any = None,
        train_data: Any = None,
        dropout: str = "eval",
        **probe_options: Any,
    ) -> None:
        self.out, self.analyses, self.checkpoints = Path(out), analyses, checkpoints
        self.loss_fn = loss_fn if loss_fn is not None else causal_lm_loss
        self.train_data, self.dropout, self.probe_options = train_data, dropout, probe_options
        self.probe: Probe | None = None
        self.report: Path | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        data = self.train_data
        if data is None:
            loader = kwargs.get("train_dataloader")
            data = token_pairs(loader.dataset if loader is not None else None)
        if args.max_grad_norm and args.max_grad_norm > 0:
            warnings.warn(
                ProbeWarning(
                    f"max_grad_norm={args.max_grad_norm}: the minibatch gradients gradnoise "
                    "records are the clipped ones (set max_grad_norm=0 to record raw "
                    "gradients); checkpoint captures are not clipped"
                ),
                stacklevel=2,
            )
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.probe = Probe(
            self.out,
            model,
            self.loss_fn,
            data,
            batch_size=self.probe_options.pop("batch_size", None) or batch * args.world_size,
            analyses=self.analyses,
            checkpoints=self.checkpoints,
            optimizer=optimizer,
            dropout=self.dropout,
            **self.probe_options,
        )

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.probe is None:
            return
        optimizer = kwargs.get("optimizer")
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self.probe.step(state.global_step, lr=lr)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.probe is not None and not self.probe.finished:
            self.report = finish_training(self.probe, state.global_step)
