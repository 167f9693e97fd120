"""Run a study: train with recording, capture at checkpoints, run analyses, write the report."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, GradnoiseError, StoreError
from ..report import Section, render_report
from ..report.numbers import fmt_num
from .config import StudyConfig
from .context import (
    SUMMARY,
    SUMMARY_KEYS,
    RunView,
    StudyContext,
    read_json,
)
from .registry import check_study, get_analysis


def default_run_dir(config: StudyConfig, root: str | Path = "runs") -> Path:
    """``runs/<timestamp>-<dataset>-<model>-s<seed>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dataset = Path(config.dataset).stem if config.dataset.endswith(".npz") else config.dataset
    return Path(root) / f"{stamp}-{dataset}-{config.model}-s{config.seed}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: Path, data: Any) -> None:
    """Deterministic JSON (sorted keys, NaN as null) written atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(_jsonable(data), indent=1, sort_keys=True, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)


def run_study(
    config: StudyConfig,
    out: str | Path | None = None,
    *,
    progress: Any = None,
    dataset: Any = None,
    model: Any = None,
    loss_fn: Any = None,
    optimizer: Any = None,
    tensorboard: Any = None,
) -> Path:
    """Train, record and analyse as described by ``config``; returns the run directory.

    Args:
        config: the study configuration.
        out: run directory (must not exist or be empty); default ``runs/<id>``.
        progress: a ``rich.progress.Progress`` to show progress on (None: silent).
        dataset: optional user ``torch.utils.data.Dataset`` of ``(input, target)`` pairs used
            instead of ``config.dataset``.
        model: optional user model: a function returning a fresh ``nn.Module`` (called with
            torch's generator seeded by ``config.seed``, so the initialisation is reproducible)
            or a module (copied); instead of the built-in ``config.model``.
        loss_fn: optional loss object instead of the built-in ``config.loss`` (the config
            records ``loss = "custom"``).
        optimizer: optional ``"sgd" | "adam" | "adamw"`` (overrides ``config.optimizer``), or a
            function ``params -> torch.optim.Optimizer`` (recorded as ``"custom"`` with its
            class and hyper-parameters).
        tensorboard: a directory (or a ``SummaryWriter``) for headline scalars along training.

    Everything that can be checked is checked before the first training step: the analyses and
    their options, the device, the run directory (new and writable), the data, the model and
    one forward pass of it. Torch and BLAS run on ``config.threads`` threads (restored after).

    The training loop is plain minibatch training (epochs without replacement, order from the
    seed) around a :class:`gradnoise.Probe`, which records, captures at checkpoints, runs the
    analyses and writes ``grads.zarr`` (store), ``checkpoints/``, ``analyses/*.npz``,
    ``summary.json`` (identical for identical configs), ``manifest.json`` (timings, versions,
    thread counts, optimizer), ``figures/*.png`` and ``report.html``.
    """
    if isinstance(optimizer, str):
        config = config.replace(optimizer=optimizer)
    elif optimizer is not None:
        if not callable(optimizer):
            raise ConfigError(
                "optimizer must be 'sgd', 'adam', 'adamw' or a function params -> optimizer, "
                f"got {type(optimizer).__name__}"
            )
        config = config.replace(optimizer="custom", optimizer_options={})
    if loss_fn is not None:
        config = config.replace(loss="custom")
    elif config.loss == "custom":
        raise ConfigError("loss = 'custom' needs run_study(..., loss_fn=...)")
    if config.optimizer == "custom" and not callable(optimizer):
        raise ConfigError("optimizer = 'custom' needs run_study(..., optimizer=<function>)")
    analyses = check_study(config)
    run_dir = Path(out) if out is not None else default_run_dir(config)
    check_run_dir(run_dir)
    check_device(config.device)
    with pinned_threads(config.threads):
        return _run_study(
            config, run_dir, analyses, progress, dataset, model, loss_fn, optimizer, tensorboard
        )


def check_run_dir(run_dir: Path) -> None:
    """``run_dir`` can become a new run directory (absent, or an empty directory)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"the run directory {run_dir} is a file; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} exists and is not empty; choose another --out")


def create_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and prove it writable (before training, not after it)."""
    probe = run_dir / ".gradnoise-write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write the run directory {run_dir} ({err.strerror or err}); choose another "
            "--out"
        ) from err


def check_device(device: str) -> None:
    """``device`` names a torch device that exists on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"device {device!r} is not a torch device; use cpu, cuda, cuda:<index> or mps"
        ) from err
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "built without CUDA" if torch.version.cuda is None else "finds no GPU"
            raise ConfigError(
                f"device {device!r}: CUDA is not available (torch {torch.__version__} {why}); "
                "use --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise ConfigError(f"device {device!r} is not available here; use cpu, cuda or mps")


# modules that load a BLAS or OpenMP library of their own (numpy's and torch's are loaded)
_THREADED_LIBRARIES = ("scipy.linalg", "sklearn.datasets")


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Torch and the BLAS/OpenMP libraries on ``threads`` threads (0: leave them), restored."""
    if threads == 0:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    for module in _THREADED_LIBRARIES:  # a library loaded after the limit is not limited
        importlib.import_module(module)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def thread_counts() -> dict[str, Any]:
    """The thread counts in effect: torch's and each BLAS/OpenMP library's (for the manifest)."""
    import torch
    from threadpoolctl import threadpool_info

    return {
        "torch": torch.get_num_threads(),
        "libraries": sorted(
            (
                {
                    "library": Path(str(info.get("filepath"))).name,
                    "api": str(info.get("internal_api")),
                    "threads": int(info.get("num_threads", 0)),
                }
                for info in threadpool_info()
            ),
            key=lambda d: (d["api"], d["library"]),
        ),
    }


def _check_classifier(ctx: StudyContext, model: Any) -> None:
    """The built-in models: they take the data's inputs and give one output per class."""
    from ..probe import check_forward
    from .context import builtin_loss

    x, y = ctx.train_tensors
    what = f"model {ctx.config.model!r} on {ctx.data.name!r}"
    out = check_forward(model, builtin_loss("cross_entropy"), x, y, ctx.device, what, ConfigError)
    if tuple(out.shape) != (min(2, len(x)), ctx.data.num_classes):
        raise ConfigError(
            f"model {ctx.config.model!r} gives outputs of shape {tuple(out.shape)} for 2 "
            f"examples; a classifier of {ctx.data.num_classes} classes must give "
            f"(2, {ctx.data.num_classes})"
        )


def _user_model(factory: Any, seed: int) -> tuple[Any, Any]:
    """The user's model (built with torch's generator seeded by ``seed``) and the factory that
    rebuilds it at that initial state for the analyses."""
    import copy

    import torch

    if isinstance(factory, torch.nn.Module):
        template = copy.deepcopy(factory)

        def factory() -> Any:
            return copy.deepcopy(template)

    elif not callable(factory):
        raise ConfigError(
            f"model must be a function returning an nn.Module, or a module; got "
            f"{type(factory).__name__}"
        )

    def build() -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = factory()
        if not isinstance(built, torch.nn.Module):
            raise ConfigError(f"the model factory returned a {type(built).__name__}, not a module")
        return built

    return build(), build


def _run_study(
    config: StudyConfig,
    run_dir: Path,
    analyses: list[Any],
    progress: Any,
    dataset: Any,
    user_model: Any,
    user_loss: Any,
    user_optimizer: Any,
    tensorboard: Any,
) -> Path:
    import torch

    from ..datasets import load_dataset
    from ..probe import Probe, check_forward
    from ._torch import accuracy
    from .context import builtin_loss
    from .optim import OptimizerSpec

    targets = {"cross_entropy": "classes", "mse": "values"}.get(config.loss, "auto")
    data = load_dataset(
        dataset if dataset is not None else config.dataset, seed=config.seed, targets=targets
    )
    if user_model is None:
        ctx0 = StudyContext(config, run_dir, data, {}, np.empty(0, dtype=np.int64))
        model, factory = ctx0.build_model(), None
    else:
        model, factory = _user_model(user_model, config.seed)
        model = model.to(torch.device(config.device))
        config = config.replace(model=type(model).__name__)
    loss_fn = user_loss if user_loss is not None else builtin_loss(config.loss)
    if callable(user_optimizer) and not isinstance(user_optimizer, str):
        optimizer = user_optimizer(model.parameters())
        spec = OptimizerSpec.from_optimizer(optimizer)
    else:
        spec = OptimizerSpec.from_config(config)
        optimizer = spec.build(model.parameters())

    def checks(ctx: StudyContext, net: Any) -> None:
        if user_model is None and config.loss == "cross_entropy":
            _check_classifier(ctx, net)
        else:
            x, y = ctx.train_tensors
            check_forward(net, loss_fn, x, y, ctx.device, f"model {config.model!r}")

    probe = Probe._for_study(
        config,
        run_dir,
        model,
        data,
        loss=user_loss,
        optimizer=spec if config.optimizer == "custom" else None,
        model_factory=factory,
        progress=progress,
        tensorboard=tensorboard,
        checks=checks,
    )
    ctx = probe.ctx
    x_train, y_train = ctx.train_tensors
    n_train = int(x_train.shape[0])
    order_rng = ctx.rng("minibatch-order")
    perm: np.ndarray = np.empty(0, dtype=np.int64)
    position = 0
    model.train()
    try:
        for step in ctx.progress.track(range(config.steps), "training", total=config.steps):
            if position + config.batch_size > perm.size:  # a new epoch, without replacement
                perm, position = order_rng.permutation(n_train), 0
            idx = torch.as_tensor(perm[position : position + config.batch_size])
            position += config.batch_size
            x, y = x_train[idx].to(ctx.device), y_train[idx].to(ctx.device)
            optimizer.zero_grad(set_to_none=True)
            outputs = model(x)
            loss = loss_fn(outputs, y)
            loss.backward()
            acc = accuracy(outputs, y)
            probe.step(
                step,
                loss=float(loss.detach()),
                lr=optimizer.param_groups[0]["lr"],
                **({"train_acc": acc} if acc is not None else {}),
            )
            optimizer.step()
    except BaseException:
        probe.close()
        raise
    probe.finish(final_step=config.steps)
    return run_dir


@contextlib.contextmanager
def _stored(run_dir: Path, what: str) -> Iterator[None]:
    """Turn a missing key or an ill-typed value met while rendering stored results into a
    StoreError that names the run, what was being rendered, and the fix."""
    try:
        yield
    except GradnoiseError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as err:
        raise StoreError(
            f"{run_dir}: cannot render {what} from the stored results ({type(err).__name__}: "
            f"{err}); the run's files are damaged or from another gradnoise version: run the "
            "study again"
        ) from err


def display_name(value: Any) -> str:
    """A dataset (or file) name as the report shows it: a path becomes its file name, so a
    shared report never carries the directories of the machine that ran it."""
    text = str(value)
    if "/" in text or "\\" in text:
        return Path(text.replace("\\", "/")).name or text
    return text


def report_order(summary: dict[str, Any]) -> list[str]:
    """The analyses of a stored run in pipeline order (see :func:`registry.pipeline_order`);
    analyses not built in keep the order of ``config["analyses"]``."""
    from .registry import pipeline_order

    stored = list(summary["analyses"])
    configured = [n for n in summary.get("config", {}).get("analyses", []) if n in stored]
    return pipeline_order([*configured, *stored])


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """``summary.json["verdicts"]``: every analysis's claims with their verdicts, in pipeline
    order (:func:`gradnoise.study.claims.run_claims`)."""
    from .claims import run_claims

    return run_claims(summary["analyses"], report_order(summary))


def render_run(run_dir: str | Path) -> Path:
    """(Re-)render ``report.html`` and the figures of a finished run from stored data only.

    The report opens with the verdict table (each analysis's claims, see
    :mod:`gradnoise.study.claims`), then one section per analysis in pipeline order. An
    analysis whose results are missing, marked unavailable or failed, or whose section cannot be
    rendered, gets a section saying so and the others render as usual; a section that could not
    be rendered (damaged results, an unknown analysis) is then raised as the error, after the
    report is written.
    """
    from .claims import run_claims

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StoreError(f"{run_dir} is not a directory: give a run directory of 'gradnoise run'")
    if (run_dir / INDEX).exists():  # a preset directory: re-render every run, then the index
        for key in read_json(run_dir / INDEX, INDEX_KEYS)["runs"]:
            render_run(run_dir / str(key))
        return render_index(run_dir)
    summary = read_json(run_dir / SUMMARY, SUMMARY_KEYS)
    order = report_order(summary)
    pending = [n for n in summary.get("config", {}).get("analyses", []) if n not in order]
    sections: list[Section] = []
    errors: list[GradnoiseError] = []
    for name in [*order, *pending]:
        results = summary["analyses"].get(name)
        try:
            analysis = get_analysis(name)
            title = analysis.title
        except ConfigError as err:
            analysis, title = None, name
            errors.append(err)
        if results is None:
            sections.append(
                Section(name, title, paragraphs=["Not computed: the study stopped before it."])
            )
            continue
        if isinstance(results, dict) and "unavailable" in results:
            sections.append(
                Section(
                    name,
                    title,
                    paragraphs=[f"Not available for this run: {results['unavailable']}."],
                )
            )
            continue
        if analysis is None:
            sections.append(
                Section(name, title, paragraphs=["No analysis of this name is registered."])
            )
            continue
        try:
            with _stored(run_dir, f"the {name!r} analysis"):
                sections.append(analysis.render(RunView(run_dir, summary, name)))
        except GradnoiseError as err:
            errors.append(err)
            sections.append(
                Section(name, title, paragraphs=[f"This section could not be rendered: {err}"])
            )
    with _stored(run_dir, "the verdicts"):
        rows = run_claims(summary["analyses"], order)
    titles = {s.key: s.title for s in sections}
    for row in rows:
        row["section"] = titles.get(row["analysis"], row["analysis"])
    with _stored(run_dir, "the report's header"):
        config = summary["config"]
        title = f"gradnoise study: {config['model']} on {display_name(summary['data']['name'])}"
        acc = summary["final"]["test_acc"]
        meta = {
            "parameters": fmt_num(summary["model"]["parameters"]),
            "seed": config["seed"],
            "final test accuracy": fmt_num(acc, digits=3),
        }
        shown = dict(config)
        if isinstance(shown.get("dataset"), str):
            shown["dataset"] = display_name(shown["dataset"])
        if config.get("optimizer") == "custom":  # the optimizer object's own settings instead
            for key in ("lr", "momentum", "weight_decay", "optimizer_options"):
                shown.pop(key, None)
            spec = summary.get("optimizer") or {}
            shown["optimizer"] = spec.get("class") or "not given"
            shown["optimizer hyper-parameters"] = spec.get("hyperparameters", {})
        if "probe" in summary:
            missed = summary["probe"].get("missed_checkpoints")
            if missed:
                meta["checkpoints never reached"] = ", ".join(map(str, missed))
        flat_config = {
            k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in shown.items()
        }
    downloads = [("summary.json (every number)", SUMMARY)]
    if (run_dir / "manifest.json").exists():
        downloads.append(("manifest.json (versions, timings)", "manifest.json"))
    arrays = sorted((run_dir / "analyses").glob("*.npz")) if (run_dir / "analyses").is_dir() else []
    downloads += [(f"arrays: {p.name}", f"analyses/{p.name}") for p in arrays]
    report = render_report(
        run_dir / "report.html",
        title=title,
        config=flat_config,
        sections=sections,
        meta=meta,
        verdicts=rows,
        downloads=downloads,
    )
    if errors:  # the report holds every other section; the command still says what is wrong
        first = errors[0]
        raise type(first)(f"{first} (report.html was written with the other sections)") from first
    return report


INDEX = "index.json"
INDEX_KEYS = {"preset": str, "description": str, "quick": bool, "seed": int, "runs": list}


def run_preset(
    name: str,
    out: str | Path | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: Any = None,
) -> Path:
    """Run the studies of preset ``name`` into ``out/<key>/`` and write ``out/index.html``."""
    from .registry import get_preset

    preset = get_preset(name)
    configs = preset.configs(quick, seed)
    out = (
        Path(out)
        if out is not None
        else Path("runs")
        / (f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}" + ("-quick" if quick else ""))
    )
    check_run_dir(out)
    for config in configs.values():  # every run's settings are checked before the first runs
        check_study(config)
        check_device(config.device)
    for key in configs:
        run_study(configs[key], out / key, progress=progress)
    write_json(
        out / INDEX,
        {
            "preset": name,
            "description": preset.description,
            "quick": quick,
            "seed": seed,
            "runs": list(configs),
        },
    )
    render_index(out)
    return out


def headlines(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's headline numbers: the final test loss and accuracy and each analysis's
    headline (the columns of a preset's comparison table), read from ``summary.json``."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY, SUMMARY_KEYS)
    final = summary["final"]
    return {
        "final test loss": final.get("test_loss"),
        "final test accuracy": final.get("test_acc"),
        **_headlines(run_dir, summary),
    }


def _headlines(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    line: dict[str, Any] = {}
    with _stored(run_dir, "the headline numbers"):
        for name, results in summary["analyses"].items():
            headline = get_analysis(name).headline
            if headline is not None and "unavailable" not in results:
                line.update(headline(results))
    return line


def render_index(out: str | Path) -> Path:
    """``index.html`` of a preset directory: a comparison table and links to each run's report."""
    out = Path(out)
    index = read_json(out / INDEX, INDEX_KEYS)
    rows, header = [], ["run", "dataset", "model", "steps", "test accuracy"]
    headlines: list[dict[str, Any]] = []
    for key in index["runs"]:
        summary = read_json(out / str(key) / SUMMARY, SUMMARY_KEYS)
        line = _headlines(out / str(key), summary)
        with _stored(out / str(key), "the comparison table's row"):
            cfg = summary["config"]
            rows.append(
                [
                    key,
                    display_name(summary["data"]["name"]),
                    cfg["model"],
                    cfg["steps"],
                    summary["final"]["test_acc"],
                ]
            )
        headlines.append(line)
    extra = list(dict.fromkeys(k for line in headlines for k in line))
    table_rows = [
        [*row, *(line.get(k, "") for k in extra)] for row, line in zip(rows, headlines, strict=True)
    ]
    from ..report import Section, Table

    links = [(f"report of run '{key}'", f"{key}/report.html") for key in index["runs"]]
    if len(index["runs"]) >= 2:  # the runs overlaid, labelled by what differs between them
        from .compare import compare_runs

        compare_runs([out / str(key) for key in index["runs"]], out / "compare")
        links.insert(0, ("all runs overlaid, verdicts side by side", "compare/report.html"))
    section = Section(
        "comparison",
        "Comparison",
        paragraphs=[index["description"]],
        tables=[Table([*header, *extra], table_rows)],
        links=links,
    )
    title = f"gradnoise reproduce {index['preset']}" + (" (quick)" if index["quick"] else "")
    return render_report(
        out / "index.html",
        title=title,
        config={"preset": index["preset"], "quick": index["quick"], "seed": index["seed"]},
        sections=[section],
    )
