"""Arguments that used to be silently truncated, skipped, rounded or ignored are refused with an
error naming the argument (coords, step, every, dtype on resume)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import gradnoise
from gradnoise.errors import StoreError
from gradnoise.selection import build_selection
from gradnoise.store import MAX_STEP, RunWriter, open_run
from test_store import _record, _set_grads


@pytest.mark.parametrize("coords", [2.5, 2.0, True, "3", np.float64(3)])
def test_coords_must_be_an_integer_not_truncated(coords):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match=re.escape(f"coords must be an integer, got {coords!r} (")):
        gradnoise.select_params(model, coords=coords)
    with pytest.raises(TypeError, match="coords must be an integer"):
        build_selection([("w", (2, 3))], coords=coords)


def test_integer_coords_of_any_integer_type_are_accepted():
    model = torch.nn.Linear(3, 2)
    for coords in (3, np.int64(3), torch.tensor(3)):
        assert gradnoise.select_params(model, coords=coords).num_columns == 3
    with pytest.raises(TypeError, match="seed must be an integer"):
        gradnoise.select_params(model, coords=3, seed=0.5)


def test_a_non_integer_step_is_an_error_and_stores_nothing(tmp_path):
    model = torch.nn.Linear(3, 2)
    _set_grads(model, 1)
    with gradnoise.Recorder(tmp_path / "r.zarr", model) as rec:
        for step in (1.7, 2.0, "3", None):
            with pytest.raises(
                TypeError, match=re.escape(f"step must be an integer, got {step!r}")
            ):
                rec.record(step, model)
        with pytest.raises(TypeError, match="step must be an integer"):
            rec.should_record(1.7)
        with pytest.raises(TypeError, match="step must be an integer"):
            rec.writer.add_snapshot("noise", 0.5, np.zeros((2, 8)))
        assert open_run(rec.path).length == 0
        assert rec.record(np.int64(4), model) and rec.record(torch.tensor(5), model)
    assert open_run(tmp_path / "r.zarr").steps.tolist() == [4, 5]


def test_steps_beyond_float64_precision_are_refused_not_rounded(tmp_path):
    model = torch.nn.Linear(3, 2)
    _set_grads(model, 1)
    with gradnoise.Recorder(tmp_path / "r.zarr", model) as rec:
        with pytest.raises(ValueError, match=r"step 1152921504606846977 cannot be stored exactly"):
            rec.record(2**60 + 1, model)
        with pytest.raises(ValueError, match="cannot be stored exactly"):
            rec.writer.append(MAX_STEP + 1, np.zeros(8))
        assert open_run(rec.path).length == 0
        rec.record(MAX_STEP - 1, model)
        rec.record(MAX_STEP, model)  # the largest step stored exactly
    steps = open_run(tmp_path / "r.zarr").steps.tolist()
    assert steps == [MAX_STEP - 1, MAX_STEP]


@pytest.mark.parametrize(("every", "error"), [(2.5, TypeError), (0, ValueError), (True, TypeError)])
def test_every_must_be_a_positive_integer(tmp_path, every, error):
    with pytest.raises(error, match="every must be"):
        gradnoise.Recorder(tmp_path / "r.zarr", torch.nn.Linear(3, 2), every=every)
    with pytest.raises(TypeError, match="chunk_rows must be an integer"):
        gradnoise.Recorder(tmp_path / "r.zarr", torch.nn.Linear(3, 2), chunk_rows=2.5)


def test_resume_follows_the_stored_every_and_refuses_a_different_one(tmp_path):
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    with gradnoise.Recorder(path, model, every=2) as rec:
        _record(rec, model, range(4))
    with pytest.raises(StoreError, match=r"recorded with every=2; resuming with every=3"):
        gradnoise.Recorder(path, model, every=3)
    with gradnoise.Recorder(path, model) as rec:  # no every: the store's
        assert rec.every == 2
        _record(rec, model, range(4, 8))
    with gradnoise.Recorder(path, model, every=2):  # the same explicit value is fine
        pass
    run = open_run(path)
    assert run.steps.tolist() == [0, 2, 4, 6] and run.metadata["every"] == 2
    with gradnoise.Recorder(tmp_path / "new.zarr", model) as rec:
        assert rec.every == 1 and open_run(rec.path).metadata["every"] == 1


def test_resume_follows_the_stored_dtype_and_refuses_a_different_one(tmp_path):
    model = torch.nn.Linear(3, 2).double()
    path = tmp_path / "f64.zarr"
    with gradnoise.Recorder(path, model, dtype=torch.float64) as rec:
        _set_grads(model, 0.1)
        rec.record(0, model)
    with pytest.raises(StoreError, match=r"stores float64 gradients; resuming with dtype float32"):
        gradnoise.Recorder(path, model, dtype=torch.float32)
    with gradnoise.Recorder(path, model) as rec:  # no dtype: the store's
        assert rec.dtype == torch.float64
        _set_grads(model, 0.1)
        rec.record(1, model)
    grads = open_run(path).grads
    assert grads.dtype == np.float64 and (grads[:, 0] == 0.1).all()  # never cast through float32
    with gradnoise.Recorder(tmp_path / "f32.zarr", model) as rec:  # a new store: float32
        assert rec.dtype == torch.float32
    with pytest.raises(StoreError, match=r"stores float32 gradients; resuming with dtype float64"):
        RunWriter(tmp_path / "f32.zarr", rec.selection, dtype="float64")
