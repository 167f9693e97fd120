"""What the study knows of the optimizer that trained the model: its class and hyper-parameters.

The analyses measure gradient noise ``xi = g_B - G`` at fixed parameters. What that noise does
to a training step depends on the optimizer: plain SGD moves by ``-lr g_B``, so its step noise
is ``-lr xi``; an adaptive optimizer (Adam, AdamW, RMSprop, Adagrad, ...) divides each
coordinate by a running scale of past gradients, so its step noise is a *preconditioned*
``-lr D xi`` (``D`` diagonal, changing along training) and momentum averages ``xi`` over steps.
:attr:`OptimizerSpec.step_noise` says which one a run had; the noise-model and variance reports
print it beside every number that is read as step noise.

No torch at import time (``gradnoise report`` renders without it).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

#: torch.optim classes that rescale each coordinate by a statistic of past gradients
ADAPTIVE = frozenset(
    {"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop", "SparseAdam"}
)
#: optimizers that move along the (momentum-averaged) raw gradient
PLAIN = frozenset({"SGD", "ASGD"})
#: ``StudyConfig.optimizer`` names of the built-in trainer and their torch.optim classes
BUILTIN = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
#: ``StudyConfig.optimizer_options`` each built-in optimizer accepts (beyond lr, momentum and
#: weight_decay, which are StudyConfig fields)
BUILTIN_OPTIONS: dict[str, tuple[str, ...]] = {
    "sgd": ("nesterov", "dampening"),
    "adam": ("betas", "eps", "amsgrad"),
    "adamw": ("betas", "eps", "amsgrad"),
}


def _jsonable(value: Any) -> Any:
    """A hyper-parameter as JSON-safe data (tensors and numbers as floats, tuples as lists);
    None for what JSON cannot hold (callables, objects)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:  # a tensor lr
        return float(value.item())
    return None


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer's class and hyper-parameters, as recorded in a run's summary and manifest.

    Attributes:
        name: the class name (``"SGD"``, ``"AdamW"``, ...), or ``None`` when not given.
        module: the module defining the class (``"torch.optim"`` for torch's own).
        hyperparameters: the first parameter group's settings (JSON-safe; ``params`` left out).
        groups: number of parameter groups.
    """

    name: str | None
    module: str | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    groups: int = 1

    @classmethod
    def from_optimizer(cls, optimizer: Any) -> OptimizerSpec:
        """The spec of a live ``torch.optim.Optimizer`` (or of anything with ``param_groups``).

        Wrappers that hold the real optimizer as ``.optimizer`` (accelerate's
        ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) are looked through."""
        while hasattr(getattr(optimizer, "optimizer", None), "param_groups"):
            optimizer = optimizer.optimizer
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not groups or not isinstance(groups[0], Mapping):
            raise ConfigError(
                f"optimizer must be a torch optimizer (with param_groups), got "
                f"{type(optimizer).__name__}"
            )
        hyper = {k: _jsonable(v) for k, v in groups[0].items() if k != "params"}
        return cls(
            type(optimizer).__name__,
            type(optimizer).__module__,
            {k: v for k, v in sorted(hyper.items()) if v is not None},
            len(groups),
        )

    @classmethod
    def from_config(cls, config: Any) -> OptimizerSpec:
        """The built-in trainer's optimizer as described by a :class:`StudyConfig`."""
        name = BUILTIN[config.optimizer]
        hyper: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
        if name == "SGD":
            hyper["momentum"] = config.momentum
        hyper.update({k: _jsonable(v) for k, v in dict(config.optimizer_options).items()})
        return cls(name, "torch.optim", dict(sorted(hyper.items())))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> OptimizerSpec:
        """Inverse of :meth:`to_dict` (a missing entry: an unknown optimizer)."""
        if not data:
            return cls(None)
        return cls(
            data.get("class"),
            data.get("module"),
            dict(data.get("hyperparameters") or {}),
            int(data.get("groups", 1)),
        )

    @property
    def known(self) -> bool:
        return self.name is not None

    @property
    def kind(self) -> str:
        """``"plain"`` (SGD-like), ``"adaptive"`` (per-coordinate preconditioning) or
        ``"unknown"``."""
        if self.name in PLAIN:
            return "plain"
        if self.name in ADAPTIVE:
            return "adaptive"
        return "unknown"

    @property
    def lr(self) -> float | None:
        """The first parameter group's learning rate (None when unknown)."""
        lr = self.hyperparameters.get("lr")
        return float(lr) if isinstance(lr, (int, float)) and math.isfinite(lr) else None

    @property
    def step_noise(self) -> str:
        """What "step noise" means for this optimizer, in one or two sentences."""
        if self.kind == "plain":
            momentum = self.hyperparameters.get("momentum") or 0
            extra = (
                f" With momentum {momentum:g}, the velocity averages xi over about "
                f"{1 / (1 - momentum):.3g} steps."
                if 0 < momentum < 1
                else ""
            )
            return (
                f"{self.name} moves by -lr g_B, so the noise of a step is -lr xi with "
                f"xi = g_B - G the raw gradient noise measured here.{extra}"
            )
        if self.kind == "adaptive":
            return (
                f"{self.name} is adaptive: a step is -lr D m with D a per-coordinate scale from "
                "past squared gradients (and m a momentum average), so the noise of a step is "
                "the preconditioned -lr D xi, not -lr xi. The numbers here are the raw gradient "
                "noise xi = g_B - G at fixed parameters; lr xi below is a reference scale, not "
                "the update's noise."
            )
        if self.name is None:
            return (
                "The optimizer was not given (Probe(optimizer=...)): the numbers here are the raw "
                "gradient noise xi = g_B - G; lr xi is a step's noise only under plain SGD."
            )
        return (
            f"{self.name} is not a torch.optim class gradnoise knows: the numbers here are the "
            "raw gradient noise xi = g_B - G; lr xi is a step's noise only under plain SGD."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.name,
            "module": self.module,
            "hyperparameters": dict(self.hyperparameters),
            "groups": self.groups,
            "kind": self.kind,
            "step_noise": self.step_noise,
        }

    def build(self, params: Any, **overrides: Any) -> Any:
        """A fresh optimizer of this class over ``params`` (its state starts empty), with the
        recorded hyper-parameters updated by ``overrides`` (e.g. ``lr=``).

        Raises:
            ConfigError: the class is not one of torch.optim's (it cannot be rebuilt).
        """
        import torch

        cls = getattr(torch.optim, self.name or "", None)
        if self.module is None or not self.module.startswith("torch.optim") or cls is None:
            raise ConfigError(f"cannot rebuild optimizer {self.name!r} (not a torch.optim class)")
        import inspect

        accepted = set(inspect.signature(cls).parameters) - {"params"}
        settings = {k: v for k, v in self.hyperparameters.items() if k in accepted}
        settings.update(overrides)
        if isinstance(settings.get("betas"), list):
            settings["betas"] = tuple(settings["betas"])
        return cls(params, **settings)


def check_optimizer_options(optimizer: str, options: Mapping[str, Any], momentum: float) -> dict:
    """``StudyConfig.optimizer_options`` checked against the optimizer ``optimizer``."""
    from .options import boolean, check_keys, number, sequence

    where = "optimizer_options"
    check_keys(where, options, BUILTIN_OPTIONS[optimizer])
    if optimizer != "sgd" and momentum != 0:
        raise ConfigError(
            f"momentum is SGD's setting; {optimizer} takes betas = [beta1, beta2] in "
            "optimizer_options instead (set momentum = 0)"
        )
    out = dict(options)
    if "betas" in out:
        betas = sequence(where, "betas", out["betas"])
        if len(betas) != 2:
            raise ConfigError(f"{where} betas must be [beta1, beta2], got {out['betas']!r}")
        out["betas"] = [
            number(where, f"betas[{i}]", b, 0, 1, high_open=True) for i, b in enumerate(betas)
        ]
    if "eps" in out:
        out["eps"] = number(where, "eps", out["eps"], 0, None, low_open=True)
    if "dampening" in out:
        out["dampening"] = number(where, "dampening", out["dampening"], 0, 1)
    for key in ("nesterov", "amsgrad"):
        if key in out:
            out[key] = boolean(where, key, out[key])
    if out.get("nesterov") and (momentum <= 0 or out.get("dampening", 0) != 0):
        raise ConfigError("nesterov needs momentum > 0 and dampening 0")
    return out
