"""Command line: ``gradnoise run | report | compare | sweep | analyze | reproduce | info``.
No mathematics here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .errors import GradnoiseError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure, test and draw the structure of stochastic gradient noise.",
)
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the full traceback of an error")
    ] = False,
) -> None:
    """Measure, test and draw the structure of stochastic gradient noise."""
    _state["debug"] = debug


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """An error becomes one line on stderr and exit status 2 (1 for an unexpected one); with
    ``--debug`` it propagates with its traceback."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt as err:
        if _state["debug"]:
            raise
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from err
    except Exception as err:
        if _state["debug"]:
            raise
        message = " ".join(str(err).split()) or "(no message)"
        if isinstance(err, GradnoiseError):
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from err
        typer.echo(
            f"error ({type(err).__name__}): {message} (gradnoise --debug ... shows the traceback)",
            err=True,
        )
        raise typer.Exit(1) from err


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", help="study.toml with settings")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="digits | mnist1d | path to .npz with X, y")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="alias of --dataset for an .npz file")] = None,
    model: Annotated[str | None, typer.Option(help="mlp | lenet | resnet | transformer")] = None,
    steps: Annotated[int | None, typer.Option(help="SGD steps")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="minibatch size")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd | adam | adamw")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of everything")] = None,
    analyses: Annotated[str | None, typer.Option(help="comma-separated analyses to run")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda")] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads (default 1: results are byte-identical only at one thread count; "
            "0 leaves torch's default)"
        ),
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            help="budget for per-example gradient chunks, e.g. 4GiB (sets capture chunk sizes)",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<id>)")] = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option(help="write headline scalars along training to this TensorBoard directory"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train a model while recording gradients, analyse them and write runs/<id>/report.html."""
    from .errors import ConfigError
    from .study import StudyConfig, run_study

    with _errors():
        cfg = StudyConfig.from_toml(config) if config else StudyConfig()
        if dataset is not None and data is not None:
            raise ConfigError("give either --dataset or --data, not both")
        cfg = cfg.replace(
            dataset=str(data) if data is not None else dataset,
            model=model,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            seed=seed,
            device=device,
            threads=threads,
            max_memory=max_memory,
            analyses=None if analyses is None else tuple(analyses.split(",")),
        )
        with _progress(quiet) as progress:
            run_dir = run_study(cfg, out, progress=progress, tensorboard=tensorboard)
    console.print(f"[green]done[/green]: {escape(str(run_dir / 'report.html'))}", soft_wrap=True)
    typer.echo(str(run_dir))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by 'gradnoise run'")],
) -> None:
    """Re-render report.html and the figures of a stored run, without retraining."""
    from .study.runner import render_run

    with _errors():
        path = render_run(run_dir)
    typer.echo(str(path))


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="two or more run directories")],
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory (default runs/<id>-compare)")
    ] = None,
) -> None:
    """One report overlaying several runs: curves, headline numbers and verdicts side by side,
    each run labelled by what differs in its config."""
    from .study.compare import compare_runs

    with _errors():
        path = compare_runs(run_dirs, out)
    typer.echo(str(path))


@app.command()
def sweep(
    param: Annotated[
        list[str],
        typer.Option("--param", help="NAME=V1,V2,... (repeat for a grid), e.g. lr=0.1,0.03"),
    ],
    config: Annotated[
        Path | None, typer.Option("--config", help="study.toml with the other settings")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="sweep directory (default runs/<id>-sweep)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run the study at every point of a grid of settings (every combination of the --param
    values) and write one report comparing the runs (OUT/compare/report.html)."""
    from .study import StudyConfig
    from .study.sweep import parse_params, run_sweep

    with _errors():
        base = StudyConfig.from_toml(config) if config else StudyConfig()
        grid = parse_params(param)
        with _progress(quiet) as progress:
            path = run_sweep(base, grid, out, progress=progress)
    console.print(f"[green]done[/green]: {escape(str(path))}", soft_wrap=True)
    typer.echo(str(path))


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="a run directory of 'gradnoise run'")],
    analyses: Annotated[
        str | None,
        typer.Option(help="comma-separated analyses to run again (default: all that can)"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="a TOML file of [options.<analysis>] tables"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="run the statistics on the gradient store out of core on a Dask cluster: "
            "local[N] (N worker processes on 127.0.0.1) or a scheduler address tcp://host:port "
            "(needs gradnoise[dask])",
        ),
    ] = None,
) -> None:
    """Re-run analyses of a stored run with new options (no retraining); re-render its report."""
    from .study.analyze import analyze as run_analyze
    from .study.config import read_options

    with _errors():
        options = read_options(config) if config is not None else None
        names = None if analyses is None else [a.strip() for a in analyses.split(",")]
        with _progress(quiet) as progress:
            path = run_analyze(run_dir, names, options, progress=progress, dask=dask)
    typer.echo(str(path))


@app.command()
def reproduce(
    name: Annotated[str | None, typer.Argument(help="preset name; omit to list presets")] = None,
    out: Annotated[
        Path | None, typer.Option(help="run directory (default runs/<preset>-<id>)")
    ] = None,
    quick: Annotated[bool, typer.Option(help="a smaller, faster version of the preset")] = False,
    seed: Annotated[int, typer.Option(help="seed of everything")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run a paper-sized study (e.g. xie-tails); without a name, list the presets."""
    from .study.registry import available_presets, get_preset
    from .study.runner import run_preset

    if name is None:
        names = available_presets()
        if not names:
            typer.echo("no presets are registered")
        for preset_name in names:
            typer.echo(f"{preset_name:28s} {get_preset(preset_name).description}")
        return
    with _errors():
        with _progress(quiet) as progress:
            run_dir = run_preset(name, out, quick=quick, seed=seed, progress=progress)
    typer.echo(str(run_dir / "index.html"))


@app.command()
def info() -> None:
    """Versions, built-in datasets, models, analyses and presets."""
    import platform

    import numpy as np
    import torch

    from ._version import __version__
    from .datasets import DATASETS
    from .models import MODELS
    from .study.registry import available_analyses, available_presets

    typer.echo(
        f"gradnoise {__version__}  torch {torch.__version__}  numpy {np.__version__}  "
        f"python {platform.python_version()}"
    )
    typer.echo(f"datasets : {', '.join(DATASETS)} (or an .npz file with X, y)")
    typer.echo(f"models   : {', '.join(MODELS)}")
    typer.echo(f"analyses : {', '.join(available_analyses())}")
    typer.echo(f"presets  : {', '.join(available_presets()) or '(none yet)'}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
