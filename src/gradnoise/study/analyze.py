"""Re-run analyses of a finished run with new options, from its stored checkpoints and gradient
store, without retraining (``gradnoise analyze RUN_DIR`` and :func:`analyze`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cluster import dask_client
from ..errors import ConfigError, DataError
from .config import StudyConfig
from .context import SUMMARY, SUMMARY_KEYS, StudyContext, read_json
from .optim import OptimizerSpec
from .registry import check_study, get_analysis


def analyze(
    run_dir: str | Path,
    analyses: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    model: Any = None,
    loss_fn: Any = None,
    data: Any = None,
    test_data: Any = None,
    progress: Any = None,
    dask: Any = None,
) -> Path:
    """Re-run ``analyses`` of the run in ``run_dir`` with ``options`` and re-render its report;
    returns the report's path.

    The analyses load the run's checkpoints into copies of its model and read its gradient
    store; nothing is retrained. Results of the analyses not named are kept; an analysis the run
    did not have is added. ``summary.json`` records the new options.

    Args:
        analyses: the analyses to run (default: every analysis of the run that can run again).
            Analyses measured during training (``variance``) cannot be recomputed and are
            refused.
        options: per-analysis options, ``{analysis: {option: value}}``, replacing the run's
            options of those analyses (``[options.<name>]`` tables of a TOML file on the CLI).
        model: for a run of a user's model (a :class:`gradnoise.Probe` or ``run_study(model=)``):
            that model (any state: copies are loaded with the run's checkpoints), or for
            ``run_study(model=factory)`` the factory.
        loss_fn: the run's loss object when it was not a built-in one.
        data: the probe's ``train_data`` (the same examples) for a probe run; built-in runs
            reload their dataset.
        test_data: the probe's ``test_data`` (optional).
        dask: run the analyses' statistics on the gradient store out of core on a Dask cluster:
            ``"local[N]"`` (N worker processes on 127.0.0.1), a scheduler address
            (``"tcp://host:port"``, whose workers see ``run_dir`` at the same path) or a
            ``distributed.Client`` (see :mod:`gradnoise.cluster`). The summary is the same as
            without: the statistics equal their in-memory results exactly.
    """
    import torch

    from ..capture._common import exact_float32
    from ..datasets import DATASETS, load_dataset
    from ..models import MODELS
    from ..probe import INITIAL, checkpoint_path, copy_model, run_analysis, user_splits
    from ._torch import preserved_rng
    from .context import Progress
    from .runner import _user_model, pinned_threads, render_run, verdicts, write_json

    started = time.perf_counter()
    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY, SUMMARY_KEYS)
    config = StudyConfig.from_mapping(summary["config"])
    info = summary.get("probe") or {}
    names = (
        list(dict.fromkeys(analyses))
        if analyses is not None
        else [  # every analysis of the run, also those a failure left unfinished
            n
            for n in dict.fromkeys([*summary["analyses"], *config.analyses])
            if get_analysis(n).during_training is None
        ]
    )
    if not names:
        raise ConfigError("no analysis to run: name at least one (gradnoise info lists them)")
    measured = [n for n in names if get_analysis(n).during_training is not None]
    if measured:
        raise ConfigError(
            f"{', '.join(measured)} measured along training: the stored run cannot give those "
            "measurements again without retraining; leave it out"
        )
    merged = {**config.options, **{k: dict(v) for k, v in (options or {}).items()}}
    config = config.replace(
        options=merged, analyses=tuple(dict.fromkeys([*config.analyses, *names]))
    )
    check_study(config)

    user_model = bool(info.get("user_model"))
    if user_model and model is None:
        raise ConfigError(
            f"{run_dir} is a run of a user's model ({config.model}): pass it, "
            "gradnoise.analyze(run_dir, model=..., loss_fn=..., data=...)"
        )
    if config.loss == "custom" and loss_fn is None:
        raise ConfigError(f"{run_dir} was trained with a loss object: pass loss_fn=...")
    factory = None
    if user_model:
        initial = run_dir / "checkpoints" / INITIAL
        if initial.exists():  # a probe: copies of the model loaded with its initial state

            def factory() -> Any:
                state = torch.load(initial, map_location="cpu", weights_only=True)
                return copy_model(model, state)

        else:  # run_study(model=...): the seeded factory (or a copy of the module)
            factory = _user_model(model, config.seed)[1]

    name = summary["data"]["name"]
    if info.get("source") == "probe":
        if data is None:
            raise ConfigError(
                f"{run_dir} is a probe's run: pass its train_data again (data=...; test_data= "
                "optional)"
            )
        splits = user_splits(data, test_data, summary["data"].get("num_classes"))
    else:
        targets = {"cross_entropy": "classes", "mse": "values"}.get(config.loss, "auto")
        source = data if data is not None else config.dataset
        if data is None and name not in DATASETS and not str(name).endswith(".npz"):
            raise ConfigError(f"{run_dir} was trained on a user Dataset ({name}): pass data=...")
        splits = load_dataset(source, seed=config.seed, targets=targets)
    n_train = len(splits.train)  # type: ignore[arg-type]
    if n_train != summary["data"]["train"] or list(splits.input_shape) != list(
        summary["data"]["input_shape"]
    ):
        raise DataError(
            f"the data has {n_train} train examples of shape {tuple(splits.input_shape)}; the run "
            f"was measured on {summary['data']['train']} of shape "
            f"{tuple(summary['data']['input_shape'])}: pass the same data"
        )
    if not user_model and config.model not in MODELS:
        raise ConfigError(f"{run_dir}: unknown built-in model {config.model!r}")
    checkpoints = {int(s): checkpoint_path(run_dir, int(s)) for s in summary["checkpoints"]}
    lost = [s for s, p in checkpoints.items() if not p.exists()]
    if lost:
        raise DataError(f"{run_dir} lacks the checkpoint files of steps {lost}")
    ctx = StudyContext(
        config=config,
        run_dir=run_dir,
        data=splits,
        checkpoints=checkpoints,
        probe_index=np.empty(0, dtype=np.int64),
        progress=Progress(progress),
        model_factory=factory,
        loss=loss_fn,
        optimizer=OptimizerSpec.from_dict(summary.get("optimizer"))
        if config.optimizer == "custom"
        else None,
        dropout=info.get("dropout", "error"),
        dask=dask is not None,
    )
    ctx.probe_index = np.sort(
        ctx.rng("probe").choice(
            n_train, size=min(config.per_sample_examples, n_train), replace=False
        )
    )
    missed = info.get("missed_checkpoints", [])
    cluster = contextlib.nullcontext() if dask is None else dask_client(dask)
    with cluster, pinned_threads(config.threads), preserved_rng(), exact_float32():
        for analysis_name in names:
            summary["analyses"][analysis_name] = run_analysis(
                get_analysis(analysis_name), ctx, missed
            )
    summary["config"] = config.to_dict()
    summary["verdicts"] = verdicts(summary)
    write_json(run_dir / SUMMARY, summary)
    report = render_run(run_dir)
    manifest_path = run_dir / "manifest.json"
    manifest = read_json(manifest_path, {}) if manifest_path.exists() else {}
    manifest.setdefault("reanalyses", []).append(
        {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "analyses": names,
            "options": {k: merged[k] for k in names if k in merged},
            "seconds": time.perf_counter() - started,
            **({} if dask is None else {"dask": str(dask)}),
        }
    )
    write_json(manifest_path, manifest)
    return report
