"""Study configuration: one frozen dataclass, loadable from TOML, overridable from the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import ConfigError
from ..memory import parse_memory
from .optim import BUILTIN, check_optimizer_options
from .options import INT64_MAX, check_keys, choice, int_list, integer, number, sequence, table

DEFAULT_ANALYSES = ("training", "gradients", "tails", "noise_model", "spectra", "variance")
#: ``loss`` values: the built-in losses, and ``custom`` for a loss_fn object (Python API only)
LOSSES = ("cross_entropy", "mse", "custom")
#: ``optimizer`` values: the built-in trainer's, and ``custom`` for an optimizer object
OPTIMIZERS = (*BUILTIN, "custom")
MAX_STEPS = 10**9  # a larger number is a typo: 1e9 SGD steps take days even on a tiny model
MAX_THREADS = 1024


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study's numbers (the run directory is not part of it).

    Attributes:
        dataset: ``digits``, ``mnist1d`` or a path to an ``.npz`` file with ``X`` and ``y``.
        model: ``mlp``, ``lenet``, ``resnet`` or ``transformer``; ``model_options`` are passed on
            (e.g. ``{"widths": [256, 256]}``).
        steps, batch_size, lr, momentum, weight_decay: minibatch training on the train split
            (``momentum`` is SGD's).
        seed: one seed for data split, initialisation, minibatch order and every analysis.
        loss: ``cross_entropy`` (classification) or ``mse`` (regression: float targets of the
            model's output shape). ``custom``: a ``loss_fn`` object given to ``run_study`` or
            :class:`gradnoise.Probe` (see the run's ``manifest.json``).
        optimizer: ``sgd``, ``adam`` or ``adamw`` (``torch.optim``'s classes), with
            ``optimizer_options`` for the rest of their settings (SGD: ``nesterov``,
            ``dampening``; Adam/AdamW: ``betas``, ``eps``, ``amsgrad``). ``custom``: an optimizer
            given to ``run_study`` or :class:`gradnoise.Probe` (its class and hyper-parameters
            are in ``summary.json["optimizer"]``).
        record_every: record the minibatch gradient every k steps.
        track_coords: number of coordinates followed along training (seeded random subset; 0 or
            a number >= P means all).
        checkpoints: number of evenly spaced checkpoints (first is step 0, last is ``steps``) at
            which per-sample gradients and SGN are captured and the model is saved, or the list
            of checkpoint steps (each in ``0..steps``).
        per_sample_examples: train examples (fixed seeded subset) whose per-sample gradients
            are captured at each checkpoint.
        noise_batches: minibatches (of ``batch_size``) of SGN drawn at each checkpoint.
        eval_every: steps between test-set evaluations.
        analyses: analyses of the pipeline to run, in order (see :mod:`gradnoise.study.registry`).
        options: per-analysis options, ``{analysis: {key: value}}`` (TOML ``[options.<name>]``);
            checked (names and values) before training, also for analyses not in ``analyses``.
        device: torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked before training.
        threads: CPU threads of torch and of the BLAS libraries during the study (restored
            afterwards). Results are byte-identical only at the same thread count: reductions
            split across threads add in a different order. ``0`` leaves the process's setting.
        max_memory: a budget for the per-example gradient working set of captures, as bytes or
            a size string (``"4GiB"``, ``"512MiB"``; stored as bytes): per-sample gradients are
            computed ``max_memory // (3 * P * itemsize + 2 * activation bytes)`` examples at a
            time (activations measured) and Gram-matrix
            blocks are sized to it (:mod:`gradnoise.memory` states the formula). None (default):
            the built-in chunk sizes. A budget below one example's working set is refused
            before training.

    Every value is checked when the config is made: wrong types and out-of-range values raise
    a :class:`~gradnoise.errors.ConfigError` naming the field.
    """

    dataset: str = "digits"
    model: str = "mlp"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 300
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    loss: str = "cross_entropy"
    record_every: int = 1
    track_coords: int = 5000
    checkpoints: int | tuple[int, ...] = 3
    per_sample_examples: int = 256
    noise_batches: int = 64
    eval_every: int = 10
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1
    optimizer: str = "sgd"
    optimizer_options: Mapping[str, Any] = field(default_factory=dict)
    max_memory: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_field(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        if isinstance(self.checkpoints, tuple):
            late = [s for s in self.checkpoints if s > self.steps]
            if late:
                raise ConfigError(
                    f"checkpoints {late} lie after the last step ({self.steps}); each must be in "
                    f"0..{self.steps}"
                )
        elif self.checkpoints > self.steps + 1:
            raise ConfigError(
                f"checkpoints ({self.checkpoints}) cannot exceed steps + 1 ({self.steps + 1})"
            )
        if self.optimizer in BUILTIN:
            options = check_optimizer_options(self.optimizer, self.optimizer_options, self.momentum)
            object.__setattr__(self, "optimizer_options", options)
        elif self.optimizer_options:
            raise ConfigError(
                f"optimizer_options are for the built-in optimizers ({', '.join(BUILTIN)}); "
                f"a {self.optimizer} optimizer brings its own settings"
            )

    def checkpoint_steps(self) -> list[int]:
        """The checkpoint steps: the given list, or ``checkpoints`` evenly spaced steps from 0 to
        ``steps`` (inclusive)."""
        if isinstance(self.checkpoints, tuple):
            return list(self.checkpoints)
        if self.checkpoints == 1:
            return [self.steps]
        return sorted(
            {round(i * self.steps / (self.checkpoints - 1)) for i in range(self.checkpoints)}
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the inverse of ``StudyConfig(**d)``)."""
        d = dataclasses.asdict(self)
        d["analyses"] = list(self.analyses)
        d["model_options"] = dict(self.model_options)
        d["options"] = {k: dict(v) for k, v in self.options.items()}
        d["optimizer_options"] = dict(self.optimizer_options)
        if isinstance(self.checkpoints, tuple):
            d["checkpoints"] = list(self.checkpoints)
        return d

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_toml(cls, path: str | Path) -> StudyConfig:
        """Read a ``study.toml``.

        Two layouts: settings at the top level, or in a ``[study]`` table; analysis options in
        ``[options.<analysis>]`` tables (either layout) or ``[study.options.<analysis>]``.
        Errors name the file and the setting.
        """
        raw = _read_toml(path, "study config")
        try:
            return cls.from_mapping(raw)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> StudyConfig:
        """A config from a parsed ``study.toml`` (either layout, see :meth:`from_toml`)."""
        raw = dict(raw)
        if "study" in raw:
            fields = table("", "[study]", raw.pop("study"))
            stray = sorted(set(raw) - {"options"})
            if stray:
                raise ConfigError(
                    f"setting(s) {stray} sit outside the [study] table and would be ignored; "
                    "move them under [study]"
                )
            if "options" in raw:
                if "options" in fields:
                    raise ConfigError(
                        "options are given both as [options.*] and as [study.options.*] "
                        "tables; keep one of them"
                    )
                fields["options"] = raw["options"]
        else:
            fields = raw
        check_keys("", fields, (f.name for f in dataclasses.fields(cls)))
        return cls(**fields)


def _read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's contents; errors name the file (``what``: e.g. ``"study config"``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{what} {path} does not exist; check the --config path") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML ({err}); see the README's example") from err
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"cannot read {what} {path}: {reason}") from err


def read_options(path: str | Path) -> dict[str, dict[str, Any]]:
    """The ``[options.<analysis>]`` tables of a TOML file (``gradnoise analyze --config``); any
    other setting is refused (re-analysing cannot change how the run was trained)."""
    raw = _read_toml(path, "options file")
    stray = sorted(set(raw) - {"options"})
    if stray:
        raise ConfigError(
            f"{path}: only [options.<analysis>] tables apply to a stored run; {stray} would "
            "change how it was trained"
        )
    try:
        options = _check_field("options", raw.get("options", {}))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return options


def _check_field(name: str, value: Any) -> Any:
    """One field's value, type-checked against its default's type, range-checked, normalised."""
    default = _DEFAULTS[name]
    if name == "max_memory":
        return parse_memory(value)
    if isinstance(default, str):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        if name == "loss":
            choice("", name, value, LOSSES)
        if name == "optimizer":
            choice("", name, value, OPTIMIZERS)
        return value
    if name == "checkpoints" and not isinstance(value, int):
        steps = sorted(set(int_list("", name, value, 0)))
        if not steps:
            raise ConfigError("checkpoints is an empty list: name at least one step")
        return tuple(steps)
    if isinstance(default, int):
        low, high = _INT_RANGES[name]
        return integer("", name, value, low, high)
    if isinstance(default, float):
        return number("", name, value, *_FLOAT_RANGES[name][:2], **_FLOAT_RANGES[name][2])
    if isinstance(default, tuple):  # analyses
        names = sequence("", name, value)
        if not names:
            raise ConfigError(
                f"{name} is empty: name at least one analysis (e.g. training,tails; "
                "'gradnoise info' lists them)"
            )
        if not all(isinstance(a, str) for a in names):
            raise ConfigError(f"{name} must be a list of analysis names, got {value!r}")
        if not all(a.strip() for a in names):
            raise ConfigError(
                f"{name} holds an empty name ({value!r}); separate names by single commas"
            )
        names = [a.strip() for a in names]
        twice = sorted({a for a in names if names.count(a) > 1})
        if twice:
            raise ConfigError(f"{name} lists {twice} more than once; name each analysis once")
        return tuple(names)
    if name == "options":
        return {k: table("", f"[options.{k}]", v) for k, v in table("", name, value).items()}
    return table("", name, value)  # model_options, optimizer_options


# (minimum, maximum) of the integer fields
_INT_RANGES: dict[str, tuple[int, int]] = {
    "steps": (1, MAX_STEPS),
    "batch_size": (1, INT64_MAX),
    "seed": (0, 2**32 - 1),
    "record_every": (1, INT64_MAX),
    "track_coords": (0, INT64_MAX),
    "checkpoints": (1, INT64_MAX),
    "per_sample_examples": (1, INT64_MAX),
    "noise_batches": (1, INT64_MAX),
    "eval_every": (1, INT64_MAX),
    "threads": (0, MAX_THREADS),
}
# (low, high, keyword arguments of options.number) of the float fields
_FLOAT_RANGES: dict[str, tuple[float | None, float | None, dict[str, bool]]] = {
    "lr": (0.0, None, {"low_open": True}),
    "momentum": (0.0, 1.0, {"high_open": True}),
    "weight_decay": (0.0, None, {}),
}
_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
    for f in dataclasses.fields(StudyConfig)
}
