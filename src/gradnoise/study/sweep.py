"""Sweeps: one study per point of a grid of settings, then one comparison report.

Every seed paper's figures are sweeps over the learning rate or the batch size (Xie et al.;
Panigrahi et al.; Faghri et al.), so ``gradnoise sweep --param lr=0.1,0.03 --param
batch_size=32,256`` runs the grid (every combination, in the order given) with
:func:`gradnoise.study.run_study` and overlays the runs with
:func:`gradnoise.study.compare.compare_runs`.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import _DEFAULTS, StudyConfig

# settings a sweep may vary: the scalar ones (lists and tables are set in --config)
_SWEEPABLE = sorted(k for k, v in _DEFAULTS.items() if isinstance(v, (int, float, str)))


def _convert(name: str, text: str) -> Any:
    default = _DEFAULTS[name]
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return text
    try:
        return int(text) if isinstance(default, int) else float(text)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ConfigError(f"--param {name}: {text!r} is not {kind}") from None


def parse_params(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.03", "batch_size=32,256"]`` -> ``{"lr": [0.1, 0.03], "batch_size": [32, 256]}``
    (values converted to the setting's type; each is checked again by :class:`StudyConfig`)."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--param {spec!r}: write NAME=V1,V2 (e.g. lr=0.1,0.03)")
        if name not in _DEFAULTS:
            raise ConfigError(f"--param {name}: no such setting; settings: {', '.join(_SWEEPABLE)}")
        if name not in _SWEEPABLE:
            raise ConfigError(
                f"--param {name}: only single-valued settings can be swept "
                f"({', '.join(_SWEEPABLE)}); set {name} in --config"
            )
        if name in grid:
            raise ConfigError(f"--param {name} is given twice; list all its values in one --param")
        texts = [v.strip() for v in values.split(",")]
        if not all(texts):
            raise ConfigError(f"--param {spec!r}: an empty value; separate values by single commas")
        converted = [_convert(name, t) for t in texts]
        if len(set(map(repr, converted))) != len(converted):
            raise ConfigError(f"--param {name}: a value is listed twice")
        grid[name] = converted
    if not grid:
        raise ConfigError("a sweep needs at least one --param NAME=V1,V2")
    return grid


def sweep_configs(
    base: StudyConfig, grid: Mapping[str, Sequence[Any]]
) -> list[tuple[str, StudyConfig]]:
    """Every combination of ``grid`` applied to ``base``, as ``(run name, config)``; all configs
    are built (and so checked) before anything runs."""
    names = list(grid)
    out = []
    for values in itertools.product(*(grid[n] for n in names)):
        label = "_".join(f"{n}={v}" for n, v in zip(names, values, strict=True))
        try:
            config = base.replace(**dict(zip(names, values, strict=True)))
        except ConfigError as err:
            raise ConfigError(f"sweep point {label}: {err}") from err
        out.append((re.sub(r"[^A-Za-z0-9._=-]+", "-", label), config))
    if len(out) < 2:
        raise ConfigError("a sweep needs at least two runs; give two or more values")
    return out


def run_sweep(
    base: StudyConfig,
    grid: Mapping[str, Sequence[Any]],
    out: str | Path | None = None,
    *,
    progress: Any = None,
) -> Path:
    """Run one study per grid point into ``out/<name>/`` and write the comparison to
    ``out/compare/report.html``; returns that path. ``out`` must not exist or be empty."""
    from .compare import compare_runs
    from .runner import run_study

    points = sweep_configs(base, grid)
    root = (
        Path(out)
        if out is not None
        else Path("runs") / f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-sweep"
    )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"sweep directory {root} exists and is not empty; choose a new --out")
    task = None if progress is None else progress.add_task("sweep", total=len(points))
    run_dirs = []
    for name, config in points:
        run_dirs.append(run_study(config, root / name, progress=progress))
        if task is not None:
            progress.advance(task)
    return compare_runs(run_dirs, root / "compare")
