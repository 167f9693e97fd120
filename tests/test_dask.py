"""Out-of-core analyses on Dask: ``Run.to_dask()``, the batched statistics on dask arrays (equal
to their in-memory results exactly) on a 2-worker ``distributed.LocalCluster`` on loopback, a
store larger than a worker's memory limit, and ``gradnoise analyze --dask local[2]``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

from gradnoise import stats, variance  # noqa: E402
from gradnoise.cluster import dask_client, parse_dask  # noqa: E402
from gradnoise.errors import ConfigError  # noqa: E402
from gradnoise.selection import ParamSelection  # noqa: E402
from gradnoise.stats.stable import sample_stable  # noqa: E402
from gradnoise.stats.tail_battery import power_law_battery  # noqa: E402
from gradnoise.store import RunWriter, open_run  # noqa: E402

MEMORY_LIMIT = 256 * 2**20  # per worker; a worker process alone takes ~130 MiB of it


@pytest.fixture(scope="module")
def client():
    """One cluster for the module: 2 worker processes on 127.0.0.1, a small memory limit."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            memory_limit=MEMORY_LIMIT,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def assert_same(a, b):
    """Results equal field by field, bit for bit (NaN where NaN)."""
    assert type(a) is type(b)
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def _store(path, rows, cols, seed=0):
    sel = ParamSelection(names=("w",), shapes=((cols,),), indices=(None,))
    rng = np.random.default_rng(seed)
    with RunWriter(path, sel) as writer:
        for step in range(rows):
            writer.append(step, rng.standard_normal(cols, dtype=np.float32), {"loss": 1.0})
        writer.add_snapshot("noise", 3, rng.standard_normal((8, cols)).astype(np.float32))
    return open_run(path)


def test_to_dask_reads_the_store_lazily(tmp_path):
    run = _store(tmp_path / "s.zarr", 40, 300)
    arrays = run.to_dask()
    assert arrays.grads.shape == run.grads.shape and arrays.grads.dtype == np.float32
    # no copy: the dask chunks are the store's Zarr chunks
    assert arrays.grads.chunks[1] == (300,)
    assert arrays.grads.chunks[0][0] == min(40, run._group["grads"].chunks[0])
    assert np.array_equal(arrays.grads.compute(scheduler="sync"), run.grads)
    assert np.array_equal(arrays.table.compute(scheduler="sync")[:, 0], run.steps)
    assert np.array_equal(arrays.noise[3].compute(scheduler="sync"), run.noise[3])


def test_statistics_equal_in_memory_on_the_cluster(client):
    """Every batched statistic, blockwise over 5 column blocks on 2 worker processes, equals
    the in-memory call exactly, randomised ones included (per-column streams)."""
    x = sample_stable(1.6, size=(300, 37), rng=1).astype(np.float32)
    d = da.from_array(x, chunks=(300, 8))
    pos = np.abs(x) + np.float32(1e-3)
    dp = da.from_array(pos, chunks=(100, 8))  # not whole along the samples: rechunked
    calls = [
        (stats.fit_power_law, pos, dp, {}),
        (stats.power_law_test, pos, dp, {"n_boot": 9, "rng": 5}),
        (stats.fit_stable, x, d, {}),
        (stats.fit_stable, x, d, {"method": "cf", "symmetric": False}),
        (stats.fit_stable, x, d, {"method": "mle", "loc": 0.0}),
        (stats.tail_index, x, d, {}),
        (stats.tail_index, x, d, {"method": "hill"}),
        (stats.normality_test, x, d, {"method": "anderson", "correction": "bh"}),
        (stats.compare_noise_models, x, d, {"stable_method": "mcculloch"}),
        (variance.gradient_variance, x, d, {"groups": ["a"] * 20 + ["b"] * 17}),
        (variance.normalized_gradient_variance, x, d, {"batch_size": 4}),
        (variance.gsnr, x, d, {}),
    ]
    for func, mem, lazy, kw in calls:
        try:
            assert_same(func(mem, **kw), func(lazy, **kw))
        except AssertionError as err:
            raise AssertionError(f"{func.__name__}({kw}) differs on the cluster") from err
    # a Generator passed in is consumed as in memory: the next spawn is the same
    g_mem, g_lazy = np.random.default_rng(7), np.random.default_rng(7)
    assert_same(
        stats.power_law_test(pos, n_boot=5, rng=g_mem),
        stats.power_law_test(dp, n_boot=5, rng=g_lazy),
    )
    assert g_mem.spawn(1)[0].random() == g_lazy.spawn(1)[0].random()
    # the tail battery: blockwise fits, then a seeded subset bootstrapped on the cluster
    pos[:250, 3] = 0  # an untestable sample
    kw = {"n_boot": 9, "rng": 2, "max_boot": 12, "nonpositive": "drop", "untestable": "skip"}
    assert_same(
        power_law_battery(pos, **kw), power_law_battery(da.from_array(pos, chunks=(300, 8)), **kw)
    )
    assert_same(
        power_law_battery(pos.T, axis=1, **kw),
        power_law_battery(da.from_array(pos.T, chunks=(8, 300)), axis=1, **kw),
    )


def test_store_larger_than_a_worker_streams(client, tmp_path):
    """A store bigger than a worker's whole memory limit is tested on the cluster (the
    whole-column blocks are made by dask's rechunk, streamed between the workers); the result
    equals the in-memory one and no worker was restarted for memory."""
    run = _store(tmp_path / "big.zarr", 100, 700_000)
    grads = run.to_dask().grads
    assert grads.nbytes > MEMORY_LIMIT
    workers = set(client.scheduler_info()["workers"])
    with dask.config.set({"array.chunk-size": "8MiB"}):
        lazy = stats.tail_index(grads)
    assert set(client.scheduler_info()["workers"]) == workers
    assert_same(stats.tail_index(run.grads), lazy)


def test_bad_input_and_specs_are_named(client):
    x = da.from_array(np.random.default_rng(0).standard_normal((40, 3, 2)))
    with pytest.raises(ValueError, match="must be 2-D"):
        stats.tail_index(x)
    with pytest.raises(ValueError, match="pooled=True"):
        stats.tail_index(x[:, :, 0], pooled=True)
    const = np.random.default_rng(1).standard_normal((40, 12))
    const[:, 9] = 1.0
    with pytest.raises(
        ValueError, match=r"constant.*block of columns 8:12 of the dask array: add 8"
    ):
        stats.normality_test(da.from_array(const, chunks=(40, 4)))
    assert parse_dask("local[3]") == ("local", 3)
    assert parse_dask("127.0.0.1:8786") == ("address", "tcp://127.0.0.1:8786")
    for bad in ("local[0]", "local", "local[2", "not an address/"):
        with pytest.raises(ConfigError):
            parse_dask(bad)
    with dask_client(client) as c:
        assert c is client


def test_gradnoise_works_without_dask():
    code = (
        "import importlib.abc, sys\n"
        "class _NoDask(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('dask', 'distributed'):\n"
        "            raise ImportError('dask is blocked in this test')\n"
        "sys.meta_path.insert(0, _NoDask())\n"
        "import numpy as np, gradnoise\n"
        "from gradnoise import stats, variance\n"
        "x = np.random.default_rng(0).pareto(1.5, size=(300, 3)) + 1\n"
        "assert stats.power_law_test(x, n_boot=3, rng=0).pvalue.shape == (3,)\n"
        "assert variance.gsnr(x).per_coordinate.shape == (3,)\n"
        "assert 'dask' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_analyze_on_a_local_cluster_gives_the_same_summary(tmp_path):
    """``gradnoise analyze RUN --dask local[2]`` (its own cluster of 2 worker processes on
    127.0.0.1) writes the same summary.json bytes as the run itself."""
    from typer.testing import CliRunner

    from cases import TINY_STUDY
    from gradnoise.cli import app
    from gradnoise.study import StudyConfig, run_study

    cfg = StudyConfig(
        **{**TINY_STUDY, "track_coords": 200},
        model_options={"widths": [16]},
        analyses=("tails",),
        options={
            "tails": {
                "min_tail": 10,
                "n_boot": 4,
                "boot_coords": 40,
                "sgn_batches": 8,
                "matched_samples": 0,
            }
        },
    )
    run = run_study(cfg, tmp_path / "run")
    before = (run / "summary.json").read_bytes()
    result = CliRunner().invoke(app, ["analyze", str(run), "-q", "--dask", "local[2]"])
    assert result.exit_code == 0, result.output
    assert (run / "summary.json").read_bytes() == before
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["reanalyses"][-1]["dask"] == "local[2]"


def _write_part(path, names, shapes, indices, steps, seed):
    """One writer's shard: its own coordinates over the given steps (run on a worker too)."""
    sel = ParamSelection(tuple(names), tuple(shapes), tuple(indices))
    rng = np.random.default_rng(seed)
    with RunWriter(path, sel) as writer:
        for step in steps:
            writer.append(step, rng.standard_normal(sel.num_columns).astype(np.float32))
        writer.add_snapshot("noise", steps[-1], rng.standard_normal((6, sel.num_columns)))
    return str(path)


def test_writers_on_the_cluster_consolidate_into_one_run(client, tmp_path):
    """Two worker processes each write their own part store (their own coordinates, the same
    steps); consolidate_runs merges them by metadata only into one run, read like any store."""
    from gradnoise.store import consolidate_runs

    root = tmp_path / "run"
    w = np.arange(12)
    shards = [  # rank 0: b and the first half of w; rank 1: the rest of w
        (["b", "w"], [(3,), (3, 4)], [None, w[:5]]),
        (["w"], [(3, 4)], [w[5:]]),
    ]
    futures = [
        client.submit(_write_part, root / "parts" / f"rank{r}", *shard, range(0, 50, 5), r)
        for r, shard in enumerate(shards)
    ]
    client.gather(futures)
    files_before = sorted(p for p in root.rglob("*") if p.is_file())
    merged = consolidate_runs(root)
    # metadata only: one new file, the root group's zarr.json
    assert sorted(p for p in root.rglob("*") if p.is_file()) == sorted(
        [*files_before, root / "zarr.json"]
    )
    parts = [open_run(root / "parts" / f"rank{r}") for r in range(2)]
    assert merged.length == 10 and merged.steps.tolist() == list(range(0, 50, 5))
    assert np.array_equal(merged.grads, np.hstack([p.grads for p in parts]))
    assert merged.selection.names == ("b", "w") and merged.selection.num_columns == 15
    assert merged.selection.locate([3, 8, 14]) == [("w", (0, 0)), ("w", (1, 1)), ("w", (2, 3))]
    assert np.array_equal(merged.noise[45], np.hstack([p.noise[45] for p in parts]))
    lazy = merged.to_dask()
    assert np.array_equal(lazy.grads.compute(), merged.grads)
    assert np.array_equal(lazy.noise[45].compute(), merged.noise[45])
    assert_same(stats.tail_index(merged.grads), stats.tail_index(lazy.grads))
    assert np.array_equal(open_run(root).read_grads(np.array([0, 14])), merged.grads[:, [0, 14]])
    # a part ahead of the others: the merged run holds the rows every part committed
    with RunWriter(root / "parts" / "rank1", parts[1].selection) as writer:
        writer.append(50, np.ones(parts[1].selection.num_columns), nonfinite=False)
    assert open_run(root).length == 10
    # the merged run is read-only; overlapping or misaligned parts are refused
    from gradnoise.errors import StoreError

    with pytest.raises(StoreError, match="merged run"):
        RunWriter(root, merged.selection)
    _write_part(tmp_path / "x" / "a", ["w"], [(3, 4)], [w[:6]], range(3), 0)
    _write_part(tmp_path / "x" / "b", ["w"], [(3, 4)], [w[4:]], range(3), 1)
    with pytest.raises(StoreError, match="repeats or reorders"):
        consolidate_runs(tmp_path / "m", [tmp_path / "x" / "a", tmp_path / "x" / "b"])
    _write_part(tmp_path / "y" / "parts" / "a", ["w"], [(3, 4)], [w[:6]], range(3), 0)
    _write_part(tmp_path / "y" / "parts" / "b", ["w"], [(3, 4)], [w[6:]], range(1, 4), 1)
    with pytest.raises(StoreError, match="other steps"):
        consolidate_runs(tmp_path / "y")
