"""Bad inputs a tired user would pass, as a table: each gets one clear error naming the input.

Every row is a real call. The library rows expect gradnoise's own error type (a ConfigError,
DataError or StoreError, which are also ValueError/OSError) and words of the message; the CLI rows
expect a non-zero exit, exactly one line of output and no traceback. Before these guards the calls
raised raw KeyError/TypeError/BadZipFile/AssertionError tracebacks, advised ``allow_pickle=True``,
or worked silently wrong (options ignored, labels {0, 1, 1000} giving 1001 outputs, an empty
report).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset
from typer.testing import CliRunner

from cases import TINY_STUDY
from gradnoise.cli import app
from gradnoise.datasets import load_dataset
from gradnoise.errors import ConfigError, DataError, GradnoiseError
from gradnoise.models import build_model
from gradnoise.study import StudyConfig, run_study
from gradnoise.study.registry import check_study

# --------------------------------------------------------------------------------------------
# inputs


def _npz(tmp: Path, name: str = "d.npz", **arrays: Any) -> Path:
    path = tmp / name
    np.savez(path, **arrays)
    return path


def _bytes(tmp: Path, data: bytes, name: str = "d.npz") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _truncated(tmp: Path) -> Path:
    good = _npz(tmp, "good.npz", X=np.ones((30, 4)), y=np.arange(30) % 3).read_bytes()
    return _bytes(tmp, good[: len(good) // 2])


def _toml(tmp: Path, text: str) -> Path:
    path = tmp / "study.toml"
    path.write_text(text)
    return path


RNG = np.random.default_rng(0)
X30 = RNG.normal(size=(30, 4))
Y30 = np.arange(30) % 3


class Items(Dataset):
    """A user Dataset returning the given items."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _pairs(x: Callable[[int], Any], y: Callable[[int], Any], n: int = 10) -> Items:
    return Items([(x(i), y(i)) for i in range(n)])


SMALL = dict(TINY_STUDY, steps=3, analyses=("training",))


def _config(**changes: Any) -> StudyConfig:
    return StudyConfig(**{**SMALL, **changes})


def _unavailable_cuda() -> str:
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


# --------------------------------------------------------------------------------------------
# the table: (id, call(tmp), error type, words that the message must hold)

Row = tuple[str, Callable[[Path], Any], type[BaseException], tuple[str, ...]]

CONFIG_ROWS: list[Row] = [
    ("steps-0", lambda t: _config(steps=0), ConfigError, ("steps", ">= 1")),
    ("steps-negative", lambda t: _config(steps=-5), ConfigError, ("steps", ">= 1")),
    ("steps-huge", lambda t: _config(steps=10**12), ConfigError, ("steps", "1,000,000,000")),
    ("steps-float", lambda t: _config(steps=2.5), ConfigError, ("steps", "integer", "float")),
    ("steps-string", lambda t: _config(steps="300"), ConfigError, ("steps", "integer", "str")),
    ("steps-bool", lambda t: _config(steps=True), ConfigError, ("steps", "integer", "bool")),
    ("batch-size-0", lambda t: _config(batch_size=0), ConfigError, ("batch_size", ">= 1")),
    ("lr-0", lambda t: _config(lr=0.0), ConfigError, ("lr", "> 0")),
    ("lr-negative", lambda t: _config(lr=-0.1), ConfigError, ("lr", "> 0")),
    ("lr-nan", lambda t: _config(lr=float("nan")), ConfigError, ("lr", "finite")),
    ("lr-inf", lambda t: _config(lr=float("inf")), ConfigError, ("lr", "finite")),
    ("lr-string", lambda t: _config(lr="0.1"), ConfigError, ("lr", "number", "str")),
    ("momentum-1", lambda t: _config(momentum=1.0), ConfigError, ("momentum", "[0.0, 1.0)")),
    ("momentum-negative", lambda t: _config(momentum=-0.5), ConfigError, ("momentum",)),
    ("weight-decay-negative", lambda t: _config(weight_decay=-1.0), ConfigError, ("weight_decay",)),
    ("seed-negative", lambda t: _config(seed=-1), ConfigError, ("seed", ">= 0")),
    ("seed-huge", lambda t: _config(seed=2**70), ConfigError, ("seed", "4,294,967,295")),
    ("track-coords-negative", lambda t: _config(track_coords=-1), ConfigError, ("track_coords",)),
    ("checkpoints-0", lambda t: _config(checkpoints=0), ConfigError, ("checkpoints", ">= 1")),
    ("checkpoints-beyond-steps", lambda t: _config(checkpoints=10), ConfigError, ("steps + 1",)),
    ("noise-batches-0", lambda t: _config(noise_batches=0), ConfigError, ("noise_batches",)),
    ("eval-every-0", lambda t: _config(eval_every=0), ConfigError, ("eval_every",)),
    ("record-every-0", lambda t: _config(record_every=0), ConfigError, ("record_every",)),
    ("threads-negative", lambda t: _config(threads=-1), ConfigError, ("threads", ">= 0")),
    ("threads-huge", lambda t: _config(threads=10**6), ConfigError, ("threads", "1,024")),
    ("analyses-empty", lambda t: _config(analyses=()), ConfigError, ("analyses", "empty")),
    ("analyses-empty-name", lambda t: _config(analyses=("",)), ConfigError, ("empty name",)),
    ("analyses-string", lambda t: _config(analyses="training"), ConfigError, ("must be a list",)),
    (
        "analyses-twice",
        lambda t: _config(analyses=("training", "training")),
        ConfigError,
        ("more than once",),
    ),
    (
        "loss-unknown",
        lambda t: _config(loss="hinge"),
        ConfigError,
        ("loss", "cross_entropy", "mse"),
    ),
    ("dataset-empty", lambda t: _config(dataset=""), ConfigError, ("dataset", "non-empty")),
    ("model-not-string", lambda t: _config(model=3), ConfigError, ("model", "string")),
    ("model-options-list", lambda t: _config(model_options=[1]), ConfigError, ("model_options",)),
]

TOML_ROWS: list[Row] = [
    (
        "toml-missing",
        lambda t: StudyConfig.from_toml(t / "nope.toml"),
        ConfigError,
        ("nope.toml", "does not exist"),
    ),
    (
        "toml-syntax",
        lambda t: StudyConfig.from_toml(_toml(t, "steps = = 3")),
        ConfigError,
        ("study.toml", "not valid TOML"),
    ),
    (
        "toml-directory",
        lambda t: StudyConfig.from_toml(t),
        ConfigError,
        ("cannot read study config",),
    ),
    (
        "toml-binary",
        lambda t: StudyConfig.from_toml(_bytes(t, b"\xff\xfe\x00garbage", "study.toml")),
        ConfigError,
        ("study.toml",),
    ),
    (
        "toml-misspelt-key",
        lambda t: StudyConfig.from_toml(_toml(t, "[study]\nstpes = 3\n")),
        ConfigError,
        ("'stpes'", "did you mean 'steps'"),
    ),
    (
        "toml-wrong-type-named",
        lambda t: StudyConfig.from_toml(_toml(t, "[study]\nsteps = '5'\n")),
        ConfigError,
        ("study.toml", "steps must be an integer", "'5' (str)"),
    ),
    (
        "toml-lr-string",
        lambda t: StudyConfig.from_toml(_toml(t, "lr = 'fast'\n")),
        ConfigError,
        ("lr must be a finite number", "'fast'"),
    ),
    (
        "toml-key-outside-study",
        lambda t: StudyConfig.from_toml(_toml(t, "steps = 5\n[study]\nmodel = 'mlp'\n")),
        ConfigError,
        ("['steps']", "outside the [study] table"),
    ),
    (
        "toml-options-twice",
        lambda t: StudyConfig.from_toml(
            _toml(t, "[study.options.tails]\nn_boot = 9\n[options.tails]\nn_boot = 19\n")
        ),
        ConfigError,
        ("both as [options.*] and as [study.options.*]",),
    ),
    (
        "toml-study-not-table",
        lambda t: StudyConfig.from_toml(_toml(t, "study = 3\n")),
        ConfigError,
        ("[study] must be a table",),
    ),
    (
        "toml-options-not-table",
        lambda t: StudyConfig.from_toml(_toml(t, "[options]\ntails = 3\n")),
        ConfigError,
        ("[options.tails] must be a table",),
    ),
    (
        "toml-analyses-string",
        lambda t: StudyConfig.from_toml(_toml(t, "analyses = 'training'\n")),
        ConfigError,
        ("analyses must be a list",),
    ),
]


def _options(name: str, **values: Any) -> StudyConfig:
    return _config(options={name: values})


OPTION_ROWS: list[Row] = [
    (
        "options-readme-layout-negative-n_boot",
        lambda t: check_study(
            StudyConfig.from_toml(
                _toml(
                    t,
                    '[study]\nsteps=5\nanalyses=["training","tails"]\n[options.tails]\nn_boot=-1\n',
                )
            )
        ),
        ConfigError,
        ("[options.tails] n_boot", ">= 0", "-1"),
    ),
    (
        "options-unknown-analysis",
        lambda t: check_study(_options("tials", n_boot=9)),
        ConfigError,
        ("tials", "not an analysis", "misspelt"),
    ),
    (
        "options-misspelt-key",
        lambda t: check_study(_options("tails", nboot=9)),
        ConfigError,
        ("[options.tails]", "'nboot'", "did you mean 'n_boot'"),
    ),
    (
        "options-string-value",
        lambda t: check_study(_options("tails", n_boot="many")),
        ConfigError,
        ("[options.tails] n_boot", "'many' (str)"),
    ),
    (
        "options-level-out-of-range",
        lambda t: check_study(_options("tails", level=1.5)),
        ConfigError,
        ("[options.tails] level", "(0, 1)"),
    ),
    (
        "options-for-analysis-not-run",
        lambda t: check_study(_options("spectra", hessian_dtype="float16")),
        ConfigError,
        ("[options.spectra] hessian_dtype", "'float16'"),
    ),
    (
        "options-spectra-window",
        lambda t: check_study(_options("spectra", fit_window=[5, 6])),
        ConfigError,
        ("fit_window", "at least 3 ranks"),
    ),
    (
        "options-spectra-bool",
        lambda t: check_study(_options("spectra", hessian="yes")),
        ConfigError,
        ("[options.spectra] hessian", "true or false"),
    ),
    (
        "options-noise-model-mode",
        lambda t: check_study(_options("noise_model", mode="huge")),
        ConfigError,
        ("[options.noise_model] mode", "'huge'"),
    ),
    (
        "options-noise-model-studies",
        lambda t: check_study(_options("noise_model", studies="battash")),
        ConfigError,
        ("[options.noise_model] studies must be a list",),
    ),
    (
        "options-noise-model-arm-from",
        lambda t: check_study(_options("noise_model", arm_from=7)),
        ConfigError,
        ("arm_from", "checkpoint step"),
    ),
    (
        "options-variance-draws",
        lambda t: check_study(_options("variance", draws=1)),
        ConfigError,
        ("[options.variance] draws", ">= 2"),
    ),
    (
        "options-variance-comparators-string",
        lambda t: check_study(_options("variance", comparators="no")),
        ConfigError,
        ("[options.variance] comparators", "true or false"),
    ),
    (
        "options-for-analysis-without-options",
        lambda t: check_study(_options("training", smooth=3)),
        ConfigError,
        ("'training' analysis takes no options",),
    ),
    (
        "analysis-unknown",
        lambda t: check_study(_config(analyses=("training", "nope"))),
        ConfigError,
        ("unknown analysis 'nope'",),
    ),
]

NPZ_ROWS: list[Row] = [
    (
        "npz-missing-file",
        lambda t: load_dataset(t / "missing.npz"),
        DataError,
        ("missing.npz", "does not exist"),
    ),
    (
        "npz-random-bytes",
        lambda t: load_dataset(_bytes(t, np.random.default_rng(1).bytes(1000))),
        DataError,
        ("not an .npz archive", "np.savez"),
    ),
    (
        "npz-zip-header-then-garbage",
        lambda t: load_dataset(_bytes(t, b"PK\x03\x04" + b"\x00" * 200)),
        DataError,
        ("damaged or truncated",),
    ),
    ("npz-truncated", lambda t: load_dataset(_truncated(t)), DataError, ("damaged or truncated",)),
    ("npz-empty-file", lambda t: load_dataset(_bytes(t, b"")), DataError, ("empty (0 bytes)",)),
    (
        "npz-is-npy",
        lambda t: (np.save(t / "a.npy", X30), load_dataset(_bytes(t, (t / "a.npy").read_bytes()))),
        DataError,
        ("single .npy array",),
    ),
    (
        "npz-is-directory",
        lambda t: (os.mkdir(t / "dir.npz"), load_dataset(t / "dir.npz")),
        DataError,
        ("is a directory",),
    ),
    (
        "npz-object-array",
        lambda t: load_dataset(_npz(t, X=np.array([[1, "a"]] * 30, dtype=object), y=Y30)),
        DataError,
        ("Python objects", "never loads"),
    ),
    (
        "npz-missing-y",
        lambda t: load_dataset(_npz(t, X=X30)),
        DataError,
        ("missing array(s) ['y']",),
    ),
    (
        "npz-labels-0-1-1000",
        lambda t: load_dataset(_npz(t, X=X30, y=np.array([0, 1, 1000] * 10))),
        DataError,
        ("0..K-1", "up to 1000", "np.unique"),
    ),
    (
        "npz-single-class",
        lambda t: load_dataset(_npz(t, X=X30, y=np.zeros(30, dtype=int))),
        DataError,
        ("single class",),
    ),
    (
        "npz-label-minus-one",
        lambda t: load_dataset(_npz(t, X=X30, y=np.where(Y30 == 2, -1, Y30))),
        DataError,
        (">= 0", "-1"),
    ),
    (
        "npz-float-labels",
        lambda t: load_dataset(_npz(t, X=X30, y=Y30 + 0.5)),
        DataError,
        ("integer class labels", "float64"),
    ),
    (
        "npz-huge-float-labels",
        lambda t: load_dataset(_npz(t, X=X30, y=np.array([0, 1e20] * 15))),
        DataError,
        ("0..K-1",),
    ),
    (
        "npz-string-labels",
        lambda t: load_dataset(_npz(t, X=X30, y=np.array(list("abc") * 10))),
        DataError,
        ("integer class labels",),
    ),
    (
        "npz-one-hot-labels",
        lambda t: load_dataset(_npz(t, X=X30, y=np.eye(3)[Y30])),
        DataError,
        ("one-hot", "argmax"),
    ),
    (
        "npz-mismatched-lengths",
        lambda t: load_dataset(_npz(t, X=X30, y=Y30[:20])),
        DataError,
        ("X has 30 rows but y has 20",),
    ),
    (
        "npz-empty-dataset",
        lambda t: load_dataset(_npz(t, X=np.zeros((0, 4)), y=np.zeros(0, dtype=int))),
        DataError,
        ("at least 2 examples",),
    ),
    (
        "npz-nan-inputs",
        lambda t: load_dataset(_npz(t, X=np.where(X30 > 1, np.nan, X30), y=Y30)),
        DataError,
        ("NaN or Inf", "row"),
    ),
    (
        "npz-float32-overflow",
        lambda t: load_dataset(_npz(t, X=np.full((30, 4), 1e300), y=Y30)),
        DataError,
        ("float32's range",),
    ),
    (
        "npz-complex-inputs",
        lambda t: load_dataset(_npz(t, X=X30 + 1j, y=Y30)),
        DataError,
        ("real numbers", "complex"),
    ),
    (
        "npz-string-inputs",
        lambda t: load_dataset(_npz(t, X=np.array([["1", "a"]] * 30), y=Y30)),
        DataError,
        ("real numbers",),
    ),
    (
        "npz-1d-inputs",
        lambda t: load_dataset(_npz(t, X=X30[:, 0], y=Y30)),
        DataError,
        ("at least 2 dims", "X[:, None]"),
    ),
    (
        "npz-no-features",
        lambda t: load_dataset(_npz(t, X=np.ones((30, 0)), y=Y30)),
        DataError,
        ("no features",),
    ),
]

DATASET_ROWS: list[Row] = [
    (
        "dataset-unknown-name",
        lambda t: load_dataset("mnist"),
        DataError,
        ("unknown dataset 'mnist'",),
    ),
    ("dataset-csv", lambda t: load_dataset("data.csv"), DataError, ("unknown dataset",)),
    ("dataset-int", lambda t: load_dataset(3), DataError, ("dataset must be", "got int")),
    ("dataset-none", lambda t: load_dataset(None), DataError, ("got NoneType",)),
    ("dataset-seed-negative", lambda t: load_dataset("digits", seed=-1), DataError, ("seed",)),
    (
        "dataset-test-fraction-0",
        lambda t: load_dataset("digits", test_fraction=0),
        DataError,
        ("test_fraction",),
    ),
    (
        "dataset-test-fraction-string",
        lambda t: load_dataset("digits", test_fraction="0.2"),
        DataError,
        ("test_fraction",),
    ),
    (
        "dataset-unknown-argument",
        lambda t: load_dataset("digits", num_samples=100),
        DataError,
        ("unexpected argument(s) ['num_samples']",),
    ),
    (
        "dataset-mnist1d-too-few",
        lambda t: load_dataset("mnist1d", num_samples=5),
        DataError,
        ("num_samples", ">= 10"),
    ),
    (
        "user-dataset-empty",
        lambda t: load_dataset(Items([])),
        DataError,
        ("Items", "at least 2 examples"),
    ),
    (
        "user-dataset-one-hot",
        lambda t: load_dataset(_pairs(lambda i: torch.ones(3), lambda i: torch.eye(3)[i % 3])),
        DataError,
        ("Items[0]", "one-hot", "argmax"),
    ),
    (
        "user-dataset-triples",
        lambda t: load_dataset(Items([(torch.ones(3), 0, 1)] * 10)),
        DataError,
        ("(input, label) pairs", "tuple of 3"),
    ),
    (
        "user-dataset-dicts",
        lambda t: load_dataset(Items([{"x": 1}] * 10)),
        DataError,
        ("(input, label) pairs", "dict"),
    ),
    (
        "user-dataset-nan-input",
        lambda t: load_dataset(_pairs(lambda i: torch.full((3,), float("nan")), lambda i: i % 2)),
        DataError,
        ("Items[0]", "NaN or Inf"),
    ),
    (
        "user-dataset-ragged-inputs",
        lambda t: load_dataset(_pairs(lambda i: torch.ones(3 + i % 2), lambda i: i % 2)),
        DataError,
        ("Items[1]", "differs from item 0's"),
    ),
    (
        "user-dataset-string-input",
        lambda t: load_dataset(_pairs(lambda i: "abc", lambda i: i % 2)),
        DataError,
        ("Items[0]", "not numeric"),
    ),
    (
        "user-dataset-complex-input",
        lambda t: load_dataset(
            _pairs(lambda i: torch.ones(3, dtype=torch.complex64), lambda i: i % 2)
        ),
        DataError,
        ("real numbers",),
    ),
    (
        "user-dataset-labels-0-1-5",
        lambda t: load_dataset(_pairs(lambda i: torch.ones(3), lambda i: (0, 1, 5)[i % 3])),
        DataError,
        ("0..K-1", "[2, 3, 4]"),
    ),
    (
        "user-dataset-single-class",
        lambda t: load_dataset(_pairs(lambda i: torch.ones(3), lambda i: 0)),
        DataError,
        ("single class",),
    ),
    (
        "user-dataset-not-sized",
        lambda t: load_dataset(type("NoLen", (Dataset,), {"__getitem__": lambda s, i: 0})()),
        DataError,
        ("__len__",),
    ),
]

MODEL_ROWS: list[Row] = [
    ("model-unknown", lambda t: build_model("vgg", (4,), 3), ConfigError, ("unknown model 'vgg'",)),
    (
        "model-option-unknown",
        lambda t: build_model("mlp", (4,), 3, widthz=(8,)),
        ConfigError,
        ("'widthz'", "did you mean 'widths'"),
    ),
    (
        "model-activation-unknown",
        lambda t: build_model("mlp", (4,), 3, activation="sigmoid"),
        ConfigError,
        ("activation", "'sigmoid'", "'relu'"),
    ),
    (
        "model-widths-int",
        lambda t: build_model("mlp", (4,), 3, widths=8),
        ConfigError,
        ("widths must be a list",),
    ),
    (
        "model-widths-zero",
        lambda t: build_model("mlp", (4,), 3, widths=(8, 0)),
        ConfigError,
        ("widths[1]", ">= 1"),
    ),
    ("model-classes-0", lambda t: build_model("mlp", (4,), 0), ConfigError, ("num_classes",)),
    ("model-shape-empty", lambda t: build_model("mlp", (), 3), ConfigError, ("input_shape",)),
    (
        "model-shape-negative",
        lambda t: build_model("mlp", (-1,), 3),
        ConfigError,
        ("input_shape[0]", ">= 1"),
    ),
    (
        "model-lenet-flat-input",
        lambda t: build_model("lenet", (40,), 3),
        ConfigError,
        ("lenet needs [C, L] or [C, H, W]",),
    ),
    (
        "model-lenet-tiny-input",
        lambda t: build_model("lenet", (1, 2, 2), 3),
        ConfigError,
        ("too small",),
    ),
    (
        "model-resnet-groups",
        lambda t: build_model("resnet", (1, 8, 8), 3, channels=6, groups=4),
        ConfigError,
        ("channels (6) must be a multiple of groups (4)",),
    ),
    (
        "model-transformer-heads",
        lambda t: build_model("transformer", (1, 8), 3, dim=30, heads=4),
        ConfigError,
        ("dim (30) must be a multiple of heads (4)",),
    ),
    (
        "model-transformer-vocab-0",
        lambda t: build_model("transformer", (1, 8), 3, vocab=0),
        ConfigError,
        ("vocab", ">= 1"),
    ),
    ("model-seed-negative", lambda t: build_model("mlp", (4,), 3, seed=-1), ConfigError, ("seed",)),
    (
        "model-dtype-int",
        lambda t: build_model("mlp", (4,), 3, dtype=torch.int64),
        ConfigError,
        ("floating torch dtype",),
    ),
]


def _study(tmp: Path, dataset: Any = None, **changes: Any) -> Path:
    return run_study(_config(**changes), tmp / "run", dataset=dataset)


def _file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


STUDY_ROWS: list[Row] = [
    (
        "study-batch-size-beyond-train-split",
        lambda t: _study(t, batch_size=100_000),
        ConfigError,
        ("fewer than batch_size 100000",),
    ),
    (
        "study-device-without-cuda",
        lambda t: _study(t, device=_unavailable_cuda()),
        ConfigError,
        ("cuda", "use --device cpu" if not torch.cuda.is_available() else "CUDA device(s)"),
    ),
    (
        "study-device-bogus",
        lambda t: _study(t, device="gpu"),
        ConfigError,
        ("'gpu' is not a torch device",),
    ),
    (
        "study-out-is-a-file",
        lambda t: run_study(_config(), _file(t)),
        ConfigError,
        ("is a file", "--out"),
    ),
    (
        "study-out-not-writable",
        lambda t: run_study(_config(), _file(t) / "run"),
        ConfigError,
        ("cannot write the run directory",),
    ),
    (
        "study-model-option-unknown",
        lambda t: _study(t, model_options={"widthz": [8]}),
        ConfigError,
        ("did you mean 'widths'",),
    ),
    (
        "study-wrong-input-shape-for-model",
        lambda t: _study(
            t, dataset=_pairs(lambda i: torch.ones(40), lambda i: i % 2, 40), model="lenet"
        ),
        ConfigError,
        ("lenet needs [C, L] or [C, H, W]",),
    ),
    (
        "study-tokens-beyond-vocab",
        lambda t: _study(
            t,
            dataset=_pairs(lambda i: torch.full((6,), 9), lambda i: i % 2, 40),
            model="transformer",
            model_options={"vocab": 5},
        ),
        ConfigError,
        ("does not accept the inputs", "index"),
    ),
    (
        "study-variance-clusters-beyond-data",
        lambda t: _study(t, analyses=("variance",), options={"variance": {"num_clusters": 5000}}),
        ConfigError,
        ("num_clusters (5000)",),
    ),
    (
        "study-noise-model-map-param",
        lambda t: _study(t, analyses=("noise_model",), options={"noise_model": {"map_param": "x"}}),
        ConfigError,
        ("map_param 'x' is not a parameter",),
    ),
    (
        "study-spectra-sweep-beyond-pool",
        lambda t: _study(
            t, analyses=("spectra",), options={"spectra": {"sweep_pool": 16, "batch_sizes": [32]}}
        ),
        ConfigError,
        ("batch_sizes [32]", "sweep pool (16"),
    ),
]

TABLE = CONFIG_ROWS + TOML_ROWS + OPTION_ROWS + NPZ_ROWS + DATASET_ROWS + MODEL_ROWS + STUDY_ROWS


@pytest.mark.parametrize(
    ("call", "error", "words"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE]
)
def test_library_bad_input(tmp_path, call, error, words):
    with pytest.raises(error) as info:
        call(tmp_path)
    assert isinstance(info.value, GradnoiseError)
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    assert "allow_pickle" not in message
    run = tmp_path / "run"  # a study refused its input before training: nothing was written
    assert not run.exists() or not any(run.iterdir())


# --------------------------------------------------------------------------------------------
# the command line: non-zero exit, one line, no traceback

SMALL_TOML = (
    "[study]\nsteps = 3\nbatch_size = 8\ntrack_coords = 50\nper_sample_examples = 8\n"
    "noise_batches = 2\ncheckpoints = 2\nanalyses = ['training']\n"
)


def _cli_run(tmp: Path, *args: str, toml: str = SMALL_TOML) -> list[str]:
    return ["run", "-q", "--config", str(_toml(tmp, toml)), "--out", str(tmp / "run"), *args]


def _data(tmp: Path, **arrays: Any) -> str:
    return str(_npz(tmp, "data.npz", **arrays))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return run_study(
        StudyConfig(**{**TINY_STUDY, "analyses": ("training", "gradients")}),
        tmp_path_factory.mktemp("finished") / "run",
    )


def _damaged(tmp: Path, finished: Path, damage: Callable[[Path], Any]) -> list[str]:
    copy = tmp / "copy"
    shutil.copytree(finished, copy)
    damage(copy)
    return ["report", str(copy)]


def _summary(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        edit(summary)
        (run / "summary.json").write_text(json.dumps(summary))

    return damage


CliRow = tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]

CLI_ROWS: list[CliRow] = [
    ("seed-negative", lambda t, f: _cli_run(t, "--seed", "-1"), ("seed", ">= 0")),
    ("seed-huge", lambda t, f: _cli_run(t, "--seed", str(2**70)), ("seed",)),
    ("device-cuda", lambda t, f: _cli_run(t, "--device", _unavailable_cuda()), ("cuda",)),
    ("device-bogus", lambda t, f: _cli_run(t, "--device", "gpu"), ("not a torch device",)),
    ("out-is-a-file", lambda t, f: [*_cli_run(t), "--out", str(_file(t))], ("is a file",)),
    (
        "out-not-writable",
        lambda t, f: [*_cli_run(t), "--out", str(_file(t) / "run")],
        ("cannot write the run directory",),
    ),
    ("analyses-comma", lambda t, f: _cli_run(t, "--analyses", ","), ("empty name",)),
    ("analyses-empty", lambda t, f: _cli_run(t, "--analyses", ""), ("empty name",)),
    (
        "analyses-twice",
        lambda t, f: _cli_run(t, "--analyses", "training,training"),
        ("more than once",),
    ),
    (
        "analyses-unknown",
        lambda t, f: _cli_run(t, "--analyses", "training,nope"),
        ("unknown analysis 'nope'",),
    ),
    ("steps-0", lambda t, f: _cli_run(t, "--steps", "0"), ("steps must be an integer >= 1",)),
    ("steps-huge", lambda t, f: _cli_run(t, "--steps", str(10**10)), ("1,000,000,000",)),
    ("lr-nan", lambda t, f: _cli_run(t, "--lr", "nan"), ("lr must be a finite number",)),
    ("lr-negative", lambda t, f: _cli_run(t, "--lr", "-1"), ("lr", "> 0")),
    ("batch-size-0", lambda t, f: _cli_run(t, "--batch-size", "0"), ("batch_size",)),
    (
        "batch-size-beyond-data",
        lambda t, f: _cli_run(t, "--batch-size", "100000"),
        ("fewer than batch_size",),
    ),
    ("threads-negative", lambda t, f: _cli_run(t, "--threads", "-1"), ("threads",)),
    ("model-unknown", lambda t, f: _cli_run(t, "--model", "nope"), ("unknown model",)),
    ("dataset-unknown", lambda t, f: _cli_run(t, "--dataset", "nope"), ("unknown dataset",)),
    (
        "data-missing",
        lambda t, f: _cli_run(t, "--data", str(t / "missing.npz")),
        ("missing.npz", "does not exist"),
    ),
    (
        "data-and-dataset",
        lambda t, f: _cli_run(t, "--data", "x.npz", "--dataset", "digits"),
        ("either --dataset or --data",),
    ),
    (
        "data-random-bytes",
        lambda t, f: _cli_run(t, "--data", str(_bytes(t, np.random.default_rng(2).bytes(500)))),
        ("not an .npz archive",),
    ),
    ("data-truncated", lambda t, f: _cli_run(t, "--data", str(_truncated(t))), ("truncated",)),
    (
        "data-labels-0-1-1000",
        lambda t, f: _cli_run(t, "--data", _data(t, X=X30, y=np.array([0, 1, 1000] * 10))),
        ("0..K-1",),
    ),
    (
        "data-single-class",
        lambda t, f: _cli_run(t, "--data", _data(t, X=X30, y=np.ones(30, dtype=int))),
        ("single class",),
    ),
    (
        "data-one-hot",
        lambda t, f: _cli_run(t, "--data", _data(t, X=X30, y=np.eye(3)[Y30])),
        ("one-hot",),
    ),
    (
        "data-nan",
        lambda t, f: _cli_run(t, "--data", _data(t, X=X30 * np.nan, y=Y30)),
        ("NaN or Inf",),
    ),
    (
        "config-missing",
        lambda t, f: ["run", "--config", str(t / "nope.toml")],
        ("nope.toml", "does not exist"),
    ),
    ("config-syntax", lambda t, f: _cli_run(t, toml="steps = = 3\n"), ("not valid TOML",)),
    (
        "config-options-readme-layout",
        lambda t, f: _cli_run(
            t, toml='[study]\nsteps=5\nanalyses=["training","tails"]\n[options.tails]\nn_boot=-1\n'
        ),
        ("[options.tails] n_boot", ">= 0"),
    ),
    (
        "config-wrong-type",
        lambda t, f: _cli_run(t, toml=SMALL_TOML.replace("steps = 3", "steps = '3'")),
        ("study.toml", "steps must be an integer"),
    ),
    (
        "config-model-option-unknown",
        lambda t, f: _cli_run(t, toml=SMALL_TOML + "model_options = {widthz = [8]}\n"),
        ("did you mean 'widths'",),
    ),
    (
        "config-activation-unknown",
        lambda t, f: _cli_run(t, toml=SMALL_TOML + "model_options = {activation = 'sigmoid'}\n"),
        ("'sigmoid'",),
    ),
    (
        "report-summary-not-json",
        lambda t, f: _damaged(t, f, lambda r: (r / "summary.json").write_text("{not json")),
        ("summary.json is not valid JSON",),
    ),
    (
        "report-summary-a-list",
        lambda t, f: _damaged(t, f, lambda r: (r / "summary.json").write_text("[1, 2]")),
        ("holds a list, not an object",),
    ),
    (
        "report-summary-without-analyses",
        lambda t, f: _damaged(t, f, _summary(lambda s: s.pop("analyses"))),
        ("'analyses' is missing",),
    ),
    (
        "report-summary-results-damaged",
        lambda t, f: _damaged(t, f, _summary(lambda s: s["analyses"]["gradients"].clear())),
        ("cannot render the 'gradients' analysis", "run the study again"),
    ),
    (
        "report-summary-unknown-analysis",
        lambda t, f: _damaged(t, f, _summary(lambda s: s["analyses"].update(nope={}))),
        ("unknown analysis 'nope'",),
    ),
    (
        "report-npz-random-bytes",
        lambda t, f: _damaged(
            t, f, lambda r: (r / "analyses/gradients.npz").write_bytes(b"garbage" * 50)
        ),
        ("gradients.npz is not an .npz archive",),
    ),
    (
        "report-npz-truncated",
        lambda t, f: _damaged(
            t,
            f,
            lambda r: (r / "analyses/gradients.npz").write_bytes(
                (r / "analyses/gradients.npz").read_bytes()[:300]
            ),
        ),
        ("gradients.npz is a damaged or truncated .npz archive",),
    ),
    (
        "report-npz-missing",
        lambda t, f: _damaged(t, f, lambda r: (r / "analyses/gradients.npz").unlink()),
        ("gradients.npz does not exist",),
    ),
    ("report-on-a-file", lambda t, f: ["report", str(_file(t))], ("is not a directory",)),
    ("report-on-an-empty-dir", lambda t, f: ["report", str(t)], ("no summary.json",)),
    ("reproduce-unknown-preset", lambda t, f: ["reproduce", "nope"], ("unknown preset 'nope'",)),
    (
        "reproduce-seed-negative",
        lambda t, f: ["reproduce", "xie-tails", "--quick", "--seed", "-1", "--out", str(t / "p")],
        ("seed", ">= 0"),
    ),
]


@pytest.mark.parametrize(("args", "words"), [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_cli_bad_input(tmp_path, finished_run, args, words):
    result = CliRunner().invoke(app, args(tmp_path, finished_run))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # handled: no exception escaped
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "allow_pickle" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    for out in (tmp_path / "run", tmp_path / "p"):
        assert not out.exists() or not any(out.iterdir())


def _gradnoise(*args: str) -> subprocess.CompletedProcess:
    code = "from gradnoise.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_cli_traceback_only_with_debug(tmp_path):
    plain = _gradnoise("run", "--seed", "-1", "--out", str(tmp_path / "a"))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr + plain.stdout
    assert plain.stderr.strip().splitlines() == [
        "error: seed must be an integer >= 0 and <= 4,294,967,295, got -1"
    ]
    debug = _gradnoise("--debug", "run", "--seed", "-1", "--out", str(tmp_path / "b"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_an_unexpected_error_is_one_line_too(tmp_path, monkeypatch):
    """A bug (not a bad input) also gives one line, naming its type and --debug."""
    import gradnoise.study.runner as runner

    def broken(run_dir):
        raise KeyError("boom")

    monkeypatch.setattr(runner, "render_run", broken)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert (
        result.output.strip()
        == "error (KeyError): 'boom' (gradnoise --debug ... shows the traceback)"
    )
