"""The study pipeline's registry of analyses (and of ``gradnoise reproduce`` presets).

How an analysis plugs in
------------------------
An analysis is an :class:`Analysis`: a name, a report title and two functions.

* ``compute(ctx: StudyContext) -> dict`` runs once after training, with live access to the data,
  the saved checkpoints (``ctx.load_model(step)``), the gradient store (``ctx.run``) and a
  seeded ``ctx.rng(name)``. It returns JSON-safe headline numbers (stored under
  ``summary.json["analyses"][name]``) and may save bulky arrays with ``ctx.save_arrays``.
* ``render(view: RunView) -> Section`` builds the report section from stored data only (the
  summary, saved arrays and the store); it must not import torch, so that
  ``gradnoise report RUN_DIR`` re-renders any run without retraining.
* optionally ``claims(results) -> [Claim, ...]``: the papers' claims this analysis measures,
  each with a verdict (supports / contradicts / inconclusive) decided from ``results`` by a
  stated rule (:mod:`gradnoise.study.claims`); the report opens with a table of them and
  ``summary.json["verdicts"]`` holds the same.
* optionally ``headline(results) -> {label: value}``: a few numbers for the comparison table of a
  preset's index page.
* optionally ``options(raw, config) -> dict``: the analysis's options (``[options.<name>]``)
  checked and completed with defaults; it raises :class:`~gradnoise.errors.ConfigError` naming
  the option (the checks of :mod:`gradnoise.study.options` do). An analysis without it takes no
  options. A study calls it for every options table before training starts (through
  :func:`resolve_options`), and ``ctx.options(name)`` returns its result to ``compute``.
* optionally ``check(ctx, model)``: checks that need the data or the model (e.g. an option
  that must not exceed the train split), called once before training with the step-0 model.
* optionally ``during_training(ctx, step, model)``: called at every training step (after the
  minibatch backward, before the optimizer step) and once more after the last step with
  ``step == config.steps``; it decides itself when to measure (e.g. every k steps) and keeps its
  measurements in ``ctx.scratch[name]`` for ``compute``. It must not change the model, its
  ``.grad`` fields or the training data order (use ``ctx.rng(...)`` streams, ``autograd.grad``).

Register it in :data:`BUILTIN_ANALYSES` (``"name": "module:attribute"``, imported on first use,
so nothing is registered as a side effect of importing) or at run time with
:func:`register_analysis`. A study runs the analyses named in ``StudyConfig.analyses``; options
come from ``StudyConfig.options[name]`` (TOML ``[options.<name>]``), checked by
:func:`check_study` before training starts.

Presets for ``gradnoise reproduce NAME`` are registered the same way in :data:`BUILTIN_PRESETS`.
A :class:`Preset` maps ``(quick, seed)`` to named study configurations (e.g. one per dataset);
``gradnoise reproduce`` runs each into ``<out>/<key>/`` and writes ``<out>/index.html`` with a
comparison table built from each analysis's optional ``headline(results) -> {label: value}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..report import Section
    from .claims import Claim
    from .config import StudyConfig
    from .context import RunView, StudyContext


@dataclass(frozen=True)
class Analysis:
    """One step of the study pipeline and its report section (see the module docstring)."""

    name: str
    title: str
    compute: Callable[[StudyContext], dict[str, Any]]
    render: Callable[[RunView], Section]
    description: str = ""
    headline: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    during_training: Callable[[StudyContext, int, Any], None] | None = None
    options: Callable[[Mapping[str, Any], StudyConfig], dict[str, Any]] | None = None
    check: Callable[[StudyContext, Any], None] | None = None
    claims: Callable[[dict[str, Any]], list[Claim]] | None = None


@dataclass(frozen=True)
class Preset:
    """A paper-sized study runnable as ``gradnoise reproduce NAME``."""

    name: str
    description: str
    configs: Callable[[bool, int], dict[str, StudyConfig]]


BUILTIN_ANALYSES: dict[str, str] = {
    "training": "gradnoise.study.analyses.training:ANALYSIS",
    "gradients": "gradnoise.study.analyses.gradients:ANALYSIS",
    "tails": "gradnoise.study.analyses.tails:ANALYSIS",
    "noise_model": "gradnoise.study.analyses.noise_model:ANALYSIS",
    "spectra": "gradnoise.study.analyses.spectra:ANALYSIS",
    "variance": "gradnoise.study.analyses.variance:ANALYSIS",
    "escape": "gradnoise.study.analyses.escape:ANALYSIS",
}

BUILTIN_PRESETS: dict[str, str] = {
    "xie-tails": "gradnoise.study.presets.xie:TAILS",
    "xie-covariance": "gradnoise.study.presets.xie_spectra:COVARIANCE",
    "xie-hessian": "gradnoise.study.presets.xie_spectra:HESSIAN",
    "simsekli-tail-index": "gradnoise.study.presets.noise_models:SIMSEKLI",
    "panigrahi-batch-size": "gradnoise.study.presets.noise_models:PANIGRAHI",
    "battash-sas": "gradnoise.study.presets.noise_models:BATTASH",
    "faghri-variance": "gradnoise.study.presets.faghri:VARIANCE",
    "battash-escape": "gradnoise.study.presets.battash_escape:ESCAPE",
}

_ANALYSES: dict[str, Analysis] = {}
_PRESETS: dict[str, Preset] = {}


def _load(spec: str) -> Any:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def register_analysis(analysis: Analysis, *, overwrite: bool = False) -> None:
    """Make ``analysis`` available to studies under ``analysis.name``."""
    if not overwrite and (analysis.name in _ANALYSES or analysis.name in BUILTIN_ANALYSES):
        raise ValueError(f"an analysis named {analysis.name!r} exists; pass overwrite=True")
    _ANALYSES[analysis.name] = analysis


def get_analysis(name: str) -> Analysis:
    """The analysis registered under ``name``."""
    if name not in _ANALYSES:
        if name not in BUILTIN_ANALYSES:
            raise ConfigError(
                f"unknown analysis {name!r}; available: {', '.join(available_analyses())}"
            )
        _ANALYSES[name] = _load(BUILTIN_ANALYSES[name])
    return _ANALYSES[name]


def pipeline_order(names: Iterable[str]) -> list[str]:
    """``names`` in the order of the study pipeline (the report's and ``summary.json``'s
    reading order): the built-in analyses in :data:`BUILTIN_ANALYSES` order (training,
    gradients, tails, noise model, spectra, variance), then any others in the order given."""
    builtin = list(BUILTIN_ANALYSES)
    names = list(dict.fromkeys(names))
    first = sorted((n for n in names if n in builtin), key=builtin.index)
    return first + [n for n in names if n not in builtin]


def available_analyses() -> list[str]:
    """Names of all registered analyses."""
    return sorted(set(BUILTIN_ANALYSES) | set(_ANALYSES))


def resolve_options(name: str, config: StudyConfig) -> dict[str, Any]:
    """The options of analysis ``name`` in ``config``, checked and completed with defaults."""
    analysis = get_analysis(name)
    raw = config.options.get(name, {})
    if analysis.options is None:
        if raw:
            raise ConfigError(
                f"[options.{name}]: the {name!r} analysis takes no options, got {sorted(raw)}"
            )
        return {}
    return analysis.options(raw, config)


def check_study(config: StudyConfig) -> list[Analysis]:
    """The analyses of ``config``, after checking their names and every analysis's options.

    The options of each analysis run are resolved (defaults may depend on the config); options
    given for an analysis that the study does not run are checked too (and then unused); options for a name that is no analysis are refused (a misspelt table).
    """
    analyses = [get_analysis(name) for name in config.analyses]
    stray = sorted(set(config.options) - set(available_analyses()))
    if stray:
        raise ConfigError(
            f"options given for {stray}, which is not an analysis (available: "
            f"{', '.join(available_analyses())}); a misspelt [options.<analysis>] table?"
        )
    for name in dict.fromkeys([*config.analyses, *config.options]):
        resolve_options(name, config)
    return analyses


def register_preset(preset: Preset, *, overwrite: bool = False) -> None:
    """Make ``preset`` runnable as ``gradnoise reproduce <name>``."""
    if not overwrite and (preset.name in _PRESETS or preset.name in BUILTIN_PRESETS):
        raise ValueError(f"a preset named {preset.name!r} exists; pass overwrite=True")
    _PRESETS[preset.name] = preset


def get_preset(name: str) -> Preset:
    """The preset registered under ``name``."""
    if name not in _PRESETS:
        if name not in BUILTIN_PRESETS:
            raise ConfigError(
                f"unknown preset {name!r}; available: {', '.join(available_presets()) or '(none)'}"
            )
        _PRESETS[name] = _load(BUILTIN_PRESETS[name])
    return _PRESETS[name]


def available_presets() -> list[str]:
    """Names of all registered presets."""
    return sorted(set(BUILTIN_PRESETS) | set(_PRESETS))
