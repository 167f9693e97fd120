"""The study pipeline: train a model while recording gradients, then run registered analyses.

See :mod:`gradnoise.study.registry` for how an analysis registers itself and its report section.
"""

from .config import StudyConfig
from .context import RunView, StudyContext
from .registry import Analysis, Preset, available_analyses, get_analysis, register_analysis

__all__ = [
    "Analysis",
    "Preset",
    "RunView",
    "StudyConfig",
    "StudyContext",
    "available_analyses",
    "get_analysis",
    "headlines",
    "register_analysis",
    "render_run",
    "run_study",
]


def __getattr__(name: str):  # the runner imports torch; load it on first use only
    if name in ("run_study", "render_run", "headlines"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
