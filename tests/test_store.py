"""The gradient store and Recorder: round trip, resume, crash safety, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import gradnoise
from gradnoise.errors import NonFiniteGradientError, StoreError
from gradnoise.store import RunWriter, open_run


def _model():
    return gradnoise.build_model("mlp", (1, 8, 8), 10, widths=(16,), seed=0)


def _set_grads(model, value):
    for k, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(value) + k / 10)


def _record(rec, model, steps):
    """Record ``steps`` with the gradients that _set_grads gives each step, and loss = step."""
    for step in steps:
        _set_grads(model, step)
        rec.record(step, model, loss=float(step))


def test_round_trip_with_selection_metadata_and_snapshots(tmp_path):
    model = _model()
    sel = gradnoise.select_params(model, coords=100, seed=1)
    rec = gradnoise.Recorder(
        tmp_path / "r.zarr",
        model,
        select=sel,
        every=2,
        config={"lr": 0.1},
        seed=7,
        scalars=("acc",),
    )
    for step in range(10):
        _set_grads(model, step)
        recorded = rec.record(step, model, loss=10 - step, lr=0.1, acc=step / 10)
        assert recorded == (step % 2 == 0)
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    lf = torch.nn.CrossEntropyLoss()
    rec.record_per_sample(10, model, lf, x, y)
    rec.record_noise(10, model, lf, (x, y), batch_size=2, num_batches=3, seed=0)
    run = open_run(tmp_path / "r.zarr")
    assert run.length == 5 and run.steps.tolist() == [0, 2, 4, 6, 8]
    assert run.scalars["loss"].tolist() == [10, 8, 6, 4, 2]
    assert run.scalars["acc"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert run.metadata["config"] == {"lr": 0.1} and run.metadata["seed"] == 7
    assert run.metadata["versions"]["gradnoise"] == gradnoise.__version__
    assert run.selection.to_dict() == sel.to_dict()
    # column c of row t equals the gradient value we set for the parameter owning c
    owner = [
        model_names.index(name)
        for name, _ in run.selection.locate(range(100))
        for model_names in [[n for n, _ in model.named_parameters()]]
    ]
    expected = np.array([[s + k / 10 for k in owner] for s in [0, 2, 4, 6, 8]], dtype=np.float32)
    np.testing.assert_array_equal(run.grads, expected)
    np.testing.assert_array_equal(run.read_grads(np.array([3, 50])), expected[:, [3, 50]])
    ps = gradnoise.per_sample_grads(model, lf, x, y, params=sel).numpy()
    np.testing.assert_allclose(run.per_sample[10], ps, rtol=1e-6)
    assert run.noise[10].shape == (3, 100)
    assert not run.nonfinite.any()


def test_resume_appends_and_checks_compatibility(tmp_path):
    model = _model()
    path = tmp_path / "r.zarr"
    rec = gradnoise.Recorder(path, model)
    for step in range(3):
        _set_grads(model, step)
        rec.record(step, model, loss=1.0)
    rec.close()
    rec2 = gradnoise.Recorder(path, model)  # re-open: resume
    with pytest.raises(ValueError, match="steps must increase"):
        rec2.record(2, model)
    _set_grads(model, 3)
    rec2.record(3, model)
    rec2.close()
    assert open_run(path).steps.tolist() == [0, 1, 2, 3]
    with pytest.raises(StoreError, match="different parameter selection"):
        gradnoise.Recorder(path, model, select="1.*")
    with pytest.raises(StoreError, match="cannot add"):
        gradnoise.Recorder(path, model, scalars=("new",))


def test_nonfinite_raise_names_parameter_and_step_and_keeps_data(tmp_path):
    model = _model()
    rec = gradnoise.Recorder(tmp_path / "r.zarr", model)
    _set_grads(model, 1)
    rec.record(0, model)
    list(model.parameters())[2].grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"step 1 in parameter\(s\) '3.weight'"):
        rec.record(1, model)
    run = open_run(tmp_path / "r.zarr")
    assert run.length == 1 and np.isfinite(run.grads).all()
    flagged = gradnoise.Recorder(tmp_path / "f.zarr", model, on_nonfinite="flag")
    flagged.record(1, model)
    run = open_run(tmp_path / "f.zarr")
    assert run.nonfinite.tolist() == [True] and np.isnan(run.grads).sum() == 1


def test_missing_grad_is_a_clear_error(tmp_path):
    model = _model()
    rec = gradnoise.Recorder(tmp_path / "r.zarr", model)
    with pytest.raises(ValueError, match=r"no gradient at step 0.*loss.backward"):
        rec.record(0, model)


def test_corrupt_or_foreign_stores(tmp_path):
    with pytest.raises(StoreError, match="not a gradient store"):
        open_run(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("data")
    with pytest.raises(StoreError, match="not a gradnoise store"):
        RunWriter(tmp_path / "x", gradnoise.select_params(_model()))
    model = _model()
    rec = gradnoise.Recorder(tmp_path / "r.zarr", model)
    _set_grads(model, 1)
    rec.record(0, model)
    (tmp_path / "r.zarr" / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreError, match="cannot read the store metadata"):
        open_run(tmp_path / "r.zarr")
    rec = gradnoise.Recorder(tmp_path / "s.zarr", model)
    rec.record(0, model)
    commit = tmp_path / "s.zarr" / "commit" / "zarr.json"
    meta = json.loads(commit.read_text())
    meta["attributes"]["commit"]["length"] = 99
    commit.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="fewer rows than the 99 committed"):
        open_run(tmp_path / "s.zarr")


WRITER = textwrap.dedent(
    """
    import sys, torch, gradnoise
    model = gradnoise.build_model("mlp", (1, 8, 8), 10, widths=(64,), seed=0)
    rec = gradnoise.Recorder(sys.argv[1], model, chunk_rows=4)
    start = 0 if rec.writer.last_step is None else rec.writer.last_step + 1
    for step in range(start, start + 100000):
        for k, p in enumerate(model.parameters()):
            p.grad = torch.full_like(p, float(step) + k)
        rec.record(step, model, loss=float(step))
        print(step, flush=True)
    """
)


def _run_and_kill(path, min_steps):
    """Run WRITER on ``path`` until it reports ``min_steps``, SIGKILL it; (last step, its pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    last = -1
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        last = int(line)
        if last >= min_steps:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert last >= min_steps, "the writer did not get far enough before the deadline"
    return last, proc.pid


def test_sigkill_mid_run_keeps_every_recorded_step_and_resumes(tmp_path):
    path = tmp_path / "crash.zarr"
    last, _ = _run_and_kill(path, 40)
    run = open_run(path)
    # every step reported as recorded before the kill is in the store, with its values intact
    assert run.length >= last + 1
    assert run.steps.tolist() == list(range(run.length))
    sizes = [p.numel() for p in _model_wide().parameters()]
    owner = np.repeat(np.arange(len(sizes)), sizes)
    expected = run.steps[:, None].astype(np.float32) + owner[None, :]
    np.testing.assert_array_equal(run.grads, expected)
    # re-opening appends after the last committed step
    last2, _ = _run_and_kill(path, run.length + 20)
    run2 = open_run(path)
    assert run2.length >= last2 + 1
    assert run2.steps.tolist() == list(range(run2.length))
    np.testing.assert_array_equal(run2.grads[:, 0], run2.steps.astype(np.float32))


def _model_wide():
    return gradnoise.build_model("mlp", (1, 8, 8), 10, widths=(64,), seed=0)


def _small_store(path, rows=6):
    model = torch.nn.Linear(3, 2)
    rec = gradnoise.Recorder(path, model, chunk_rows=2)
    for step in range(rows):
        _set_grads(model, step)
        rec.record(step, model, loss=1.0)
    return model


def test_a_failed_creation_leaves_nothing_behind(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="dtype"):
        gradnoise.Recorder(tmp_path / "r.zarr", model, dtype=torch.bfloat16)
    assert list(tmp_path.iterdir()) == []  # no half-made store that could not be resumed
    rec = gradnoise.Recorder(tmp_path / "r.zarr", model)
    _set_grads(model, 1)
    rec.record(0, model)
    assert open_run(tmp_path / "r.zarr").length == 1


def test_deleted_or_garbled_chunk_files_are_reported_not_read_as_nan(tmp_path):
    _small_store(tmp_path / "gone.zarr")
    chunk = tmp_path / "gone.zarr" / "grads" / "c" / "1" / "0"
    assert chunk.exists()
    chunk.unlink()
    with pytest.raises(StoreError, match=r"rows \[2, 3\].*steps \[2, 3\]"):
        _ = open_run(tmp_path / "gone.zarr").grads
    with pytest.raises(StoreError, match="rows"):
        open_run(tmp_path / "gone.zarr").read_grads(np.array([0, 1]))

    _small_store(tmp_path / "bad.zarr")
    (tmp_path / "bad.zarr" / "grads" / "c" / "0" / "0").write_bytes(b"not a zstd frame")
    with pytest.raises(StoreError, match="corrupt: cannot read 'grads'"):
        _ = open_run(tmp_path / "bad.zarr").grads


def test_rows_with_nan_are_flagged_even_when_written_directly(tmp_path):
    sel = gradnoise.select_params(torch.nn.Linear(3, 2))
    writer = RunWriter(tmp_path / "w.zarr", sel)
    writer.append(0, np.full(sel.num_columns, np.nan))  # caller forgot nonfinite=True
    run = open_run(tmp_path / "w.zarr")
    assert run.nonfinite.tolist() == [True] and np.isnan(run.grads).all()
