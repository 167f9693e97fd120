"""Study configuration: one frozen dataclass, loadable from TOML, overridable from the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

DEFAULT_ANALYSES = ("training", "gradients", "tails", "noise_model", "spectra", "variance")


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study's numbers (the run directory is not part of it).

    Attributes:
        dataset: ``digits``, ``mnist1d`` or a path to an ``.npz`` file with ``X`` and ``y``.
        model: ``mlp``, ``lenet``, ``resnet`` or ``transformer``; ``model_options`` are passed on
            (e.g. ``{"widths": [256, 256]}``).
        steps, batch_size, lr, momentum, weight_decay: plain minibatch SGD on the train split.
        seed: one seed for data split, initialisation, minibatch order and every analysis.
        loss: ``cross_entropy`` (classification).
        record_every: record the minibatch gradient every k steps.
        track_coords: number of coordinates followed along training (seeded random subset; 0 or
            a number >= P means all).
        checkpoints: number of evenly spaced checkpoints (first is step 0, last is ``steps``) at
            which per-sample gradients and SGN are captured and the model is saved.
        per_sample_examples: train examples (fixed seeded subset) whose per-sample gradients
            are captured at each checkpoint.
        noise_batches: minibatches (of ``batch_size``) of SGN drawn at each checkpoint.
        eval_every: steps between test-set evaluations.
        analyses: analyses of the pipeline to run, in order (see :mod:`gradnoise.study.registry`).
        options: per-analysis options, ``{analysis: {key: value}}`` (TOML ``[options.<name>]``).
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
    checkpoints: int = 3
    per_sample_examples: int = 256
    noise_batches: int = 64
    eval_every: int = 10
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "record_every",
            "checkpoints",
            "eval_every",
            "per_sample_examples",
            "noise_batches",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoints > self.steps + 1:
            raise ValueError(f"checkpoints ({self.checkpoints}) cannot exceed steps + 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.track_coords < 0:
            raise ValueError(f"track_coords must be >= 0, got {self.track_coords}")
        if self.loss != "cross_entropy":
            raise ValueError(f"loss must be 'cross_entropy', got {self.loss!r}")
        object.__setattr__(self, "analyses", tuple(self.analyses))

    def checkpoint_steps(self) -> list[int]:
        """Evenly spaced steps from 0 to ``steps`` (inclusive), ``checkpoints`` of them."""
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
        return d

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_toml(cls, path: str | Path) -> StudyConfig:
        """Read a ``study.toml``: top-level keys (or a ``[study]`` table) are fields."""
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        raw = dict(raw.get("study", raw))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(
                f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**raw)
