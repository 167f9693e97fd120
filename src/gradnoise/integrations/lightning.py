"""PyTorch Lightning: the whole study inside ``Trainer.fit`` (a thin adapter over
:class:`gradnoise.Probe`).

::

    from gradnoise.integrations.lightning import GradNoiseCallback
    callback = GradNoiseCallback("runs/lit", loss_fn=nn.CrossEntropyLoss(), checkpoints=[0, 100])
    trainer = L.Trainer(max_steps=100, callbacks=[callback])
    trainer.fit(module, train_loader)
    callback.report  # runs/lit/report.html

The probe follows the LightningModule itself (its ``forward`` gives the outputs that
``loss_fn(outputs, targets)`` compares), measures on ``train_data`` (default: the trainer's train
dataloader's dataset) and records once per optimizer step, in ``on_before_optimizer_step``: by
then every micro-batch of a gradient-accumulation window has been back-propagated (the gradient
is the optimizer's, for a minibatch of ``batch_size x accumulate_grad_batches x world_size``)
and mixed precision's loss scaling has been undone; ``on_after_backward`` would see the partial
sum of one micro-batch and, under fp16, scaled gradients. ``on_before_backward`` adds up the
window's loss. Under DDP only global rank 0 runs the probe and writes the run (the recorded
gradient is the all-reduced one; the loss column is rank 0's own); the other ranks train as
usual and wait in the next all-reduce while rank 0 captures a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..probe import CHECKPOINTS, PROBE_ANALYSES, Probe, finish_training

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the package's older name
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError(
            "gradnoise.integrations.lightning needs PyTorch Lightning: "
            "pip install 'gradnoise[lightning]'"
        ) from err


class GradNoiseCallback(Callback):
    """Run a :class:`gradnoise.Probe` through ``Trainer.fit`` and write its report at the end.

    Args:
        out: the run directory.
        analyses, checkpoints: as in :class:`gradnoise.Probe` (checkpoints are optimizer steps,
            ``trainer.global_step``).
        loss_fn: the loss of a batch, ``loss_fn(module(x), y)``; default: the module's
            ``loss_fn`` attribute.
        train_data: the examples the study measures on (Dataset, ``(X, y)`` or DataLoader);
            default: the trainer's train dataloader.
        **probe_options: any other keyword of :class:`gradnoise.Probe` (``test_data``,
            ``dropout``, ``options``, ``seed``, ``batch_size``, ``tensorboard``...).

    Attributes:
        probe: the probe (None on ranks other than 0 and before training).
        report: the path of ``report.html`` after training (None before).
    """

    def __init__(
        self,
        out: str | Path,
        *,
        analyses: Sequence[str] = PROBE_ANALYSES,
        checkpoints: Sequence[int] | int = CHECKPOINTS,
        loss_fn: Any = None,
        train_data: Any = None,
        **probe_options: Any,
    ) -> None:
        self.out, self.analyses, self.checkpoints = Path(out), analyses, checkpoints
        self.loss_fn, self.train_data, self.probe_options = loss_fn, train_data, probe_options
        self.probe: Probe | None = None
        self.report: Path | None = None
        self._loss = 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        loss_fn = self.loss_fn if self.loss_fn is not None else getattr(pl_module, "loss_fn", None)
        if loss_fn is None:
            raise ConfigError(
                "GradNoiseCallback needs the loss of a batch, loss_fn(module(x), y): pass "
                "loss_fn=... or give the LightningModule a loss_fn attribute"
            )
        loader = trainer.train_dataloader
        data = self.train_data if self.train_data is not None else loader
        options = dict(self.probe_options)
        batch_size = options.pop("batch_size", None) or getattr(loader, "batch_size", None)
        if batch_size is None:
            raise ConfigError("GradNoiseCallback: pass batch_size= (the dataloader's batch size)")
        optimizers = trainer.optimizers
        self.probe = Probe(
            self.out,
            pl_module,
            loss_fn,
            data,
            batch_size=batch_size * trainer.accumulate_grad_batches * trainer.world_size,
            analyses=self.analyses,
            checkpoints=self.checkpoints,
            optimizer=optimizers[0] if optimizers else None,
            **options,
        )
        self._loss = 0.0

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.probe is not None:  # Lightning divides each micro-batch's loss by the window
            self._loss += float(loss.detach())

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.probe is None:
            return
        self.probe.step(trainer.global_step, loss=self._loss, lr=optimizer.param_groups[0]["lr"])
        self._loss = 0.0

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is not None and not self.probe.finished:
            self.report = finish_training(self.probe, trainer.global_step)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.probe is not None and not self.probe.finished:
            self.probe.close()  # every step recorded so far stays readable
