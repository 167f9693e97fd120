"""Writing needs a zarr with atomic writes: the declared floor is the checked one."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch
import zarr

import gradnoise
from gradnoise.errors import StoreError
from gradnoise.store import ZARR_FLOOR, RunWriter, open_run

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_declared_zarr_floor_is_the_checked_one_and_is_installed():
    declared = re.search(r'"zarr>=([0-9.]+)', PYPROJECT.read_text())
    assert declared is not None, "pyproject.toml declares no zarr floor"
    assert tuple(int(x) for x in declared.group(1).split(".")) == ZARR_FLOOR
    installed = tuple(int(x) for x in re.findall(r"\d+", zarr.__version__)[:3])
    assert installed >= ZARR_FLOOR


def test_writing_with_a_zarr_older_than_the_floor_is_refused(tmp_path, monkeypatch):
    sel = gradnoise.select_params(torch.nn.Linear(3, 2))
    RunWriter(tmp_path / "old.zarr", sel)
    monkeypatch.setattr(zarr, "__version__", "3.1.2")
    with pytest.raises(StoreError, match=r"needs zarr>=3\.1\.3 .* zarr 3\.1\.2 is installed"):
        RunWriter(tmp_path / "new.zarr", sel)
    with pytest.raises(StoreError, match=r"needs zarr>=3\.1\.3"):
        RunWriter(tmp_path / "old.zarr", sel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.zarr"]
    assert open_run(tmp_path / "old.zarr").length == 0  # reading needs no atomic writes
