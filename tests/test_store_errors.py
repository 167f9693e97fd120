"""A store that cannot be written (disk full, read-only) gives one clear StoreError naming the store
and the problem, never a raw OSError about an internal file, and loses no committed row; writing
needs a zarr with atomic writes."""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import zarr

import gradnoise
from gradnoise.errors import StoreError
from gradnoise.store import _PARTIAL, LOCK_NAME, ZARR_FLOOR, RunWriter, open_run
from test_store import _record

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


class _FailingDisk:
    """Makes zarr's writes (``<name>.<uuid>.partial`` temporary files) fail with ``code``, the way
    a full or read-only disk makes them fail, while ``on``; records the temporary names."""

    def __init__(self, monkeypatch, code):
        self.on, self.code, self.names = False, code, []
        real_open = pathlib.Path.open

        def open_(path, mode="r", *args, **kwargs):
            if path.name.endswith(".partial"):
                self.names.append(path.name)
                if self.on:
                    raise OSError(self.code, os.strerror(self.code), str(path))
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "open", open_)


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_failed_write_is_one_clear_error_and_keeps_every_committed_row(
    tmp_path, monkeypatch, code, problem
):
    disk = _FailingDisk(monkeypatch, code)
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    rec = gradnoise.Recorder(path, model, chunk_rows=2)
    _record(rec, model, range(5))
    disk.on = True
    with pytest.raises(StoreError) as info:
        _record(rec, model, [5])
    message = str(info.value)
    assert message.startswith(f"cannot record step 5 in the gradient store {path}: {problem}")
    assert "5 rows committed before (up to step 4) are intact" in message
    assert ".partial" not in message
    x, y = torch.rand(4, 3), torch.randint(0, 2, (4,))
    with pytest.raises(StoreError, match=rf"cannot store the per_sample snapshot .*: {problem}"):
        rec.record_per_sample(4, model, torch.nn.CrossEntropyLoss(), x, y)
    with pytest.raises(StoreError, match=rf"cannot update the metadata .*: {problem}"):
        rec.update_metadata(note="x")
    run = open_run(path)  # nothing committed is lost
    assert run.steps.tolist() == [0, 1, 2, 3, 4] and run.snapshot_index() == []
    np.testing.assert_array_equal(run.grads[:, 0], np.arange(5, dtype=np.float32))
    disk.on = False  # space freed / remounted: the same writer carries on where it stopped
    _record(rec, model, [5, 6])
    rec.record_per_sample(6, model, torch.nn.CrossEntropyLoss(), x, y)
    rec.close()
    run = open_run(path)
    assert run.steps.tolist() == list(range(7)) and list(run.per_sample) == [6]
    np.testing.assert_array_equal(run.grads[:, 0], np.arange(7, dtype=np.float32))
    # the cleanup rule for killed writers matches the temporary names zarr really uses
    assert disk.names and all(_PARTIAL.search(n) for n in disk.names)


def test_creating_a_store_on_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    disk = _FailingDisk(monkeypatch, errno.ENOSPC)
    disk.on = True
    path = tmp_path / "r.zarr"
    with pytest.raises(StoreError, match=rf"^cannot create the gradient store {path}: the disk"):
        gradnoise.Recorder(path, torch.nn.Linear(3, 2))
    assert list(tmp_path.iterdir()) == []


def test_opening_a_read_only_store_for_writing_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    with gradnoise.Recorder(path, model) as rec:
        _record(rec, model, range(3))
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        if os.access(path, os.W_OK):  # root ignores the mode bits: make the lock file fail so
            real_open = os.open

            def os_open(file, flags, *args, **kwargs):
                if str(file).endswith(LOCK_NAME):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
                return real_open(file, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", os_open)
        with pytest.raises(StoreError) as info:
            gradnoise.Recorder(path, model)
        assert str(info.value) == (
            f"cannot open the gradient store {path} for writing: permission denied (the store "
            "is read-only for this user); gradnoise.open_run can still read it"
        )
        assert open_run(path).steps.tolist() == [0, 1, 2]
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_a_real_full_and_read_only_file_system(tmp_path):
    """The same on a real 256 KiB tmpfs (needs permission to mount; the tests above simulate)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    tool = shutil.which("mount")
    done = (
        subprocess.run(
            [tool, "-t", "tmpfs", "-o", "size=256k", "gradnoise-test", str(mount)],
            capture_output=True,
            text=True,
        )
        if tool
        else None
    )
    if done is None or done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() if done else 'no mount'}")
    try:
        path = mount / "r.zarr"
        model = torch.nn.Linear(100, 10)
        rec = gradnoise.Recorder(path, model, chunk_rows=1)
        (mount / "ballast").write_bytes(b"\0" * 64 * 1024)
        with pytest.raises(
            StoreError, match=f"^cannot record step .* in the gradient store {path}"
        ):
            _record(rec, model, range(1000))
        full_at = rec.writer.length  # rows committed before the disk filled up
        assert full_at > 10
        run = open_run(path)
        assert run.steps.tolist() == list(range(full_at))
        np.testing.assert_array_equal(run.grads[:, 0], np.arange(full_at, dtype=np.float32))
        assert not [p for p in path.rglob("*") if p.name.endswith(".partial")]
        (mount / "ballast").unlink()  # free space: the same writer goes on
        _record(rec, model, range(full_at, full_at + 3))
        rec.close()
        subprocess.run([tool, "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(StoreError, match=r"for writing: the file system is read-only"):
            gradnoise.Recorder(path, model)
        with pytest.raises(StoreError, match=r"^cannot create the gradient store .*read-only$"):
            gradnoise.Recorder(mount / "new.zarr", model)
        assert open_run(path).steps.tolist() == list(range(full_at + 3))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_declared_zarr_floor_is_the_checked_one_and_is_installed():
    declared = re.search(r'"zarr>=([0-9.]+)', PYPROJECT.read_text())
    assert declared is not None, "pyproject.toml declares no zarr floor"
    assert tuple(int(x) for x in declared.group(1).split(".")) == ZARR_FLOOR
    installed = tuple(int(x) for x in re.findall(r"\d+", zarr.__version__)[:3])
    assert installed >= ZARR_FLOOR


def test_writing_with_a_zarr_older_than_the_floor_is_refused(tmp_path, monkeypatch):
    sel = gradnoise.select_params(torch.nn.Linear(3, 2))
    RunWriter(tmp_path / "old.zarr", sel).close()
    monkeypatch.setattr(zarr, "__version__", "3.1.2")
    with pytest.raises(StoreError, match=r"needs zarr>=3\.1\.3 .* zarr 3\.1\.2 is installed"):
        RunWriter(tmp_path / "new.zarr", sel)
    with pytest.raises(StoreError, match=r"needs zarr>=3\.1\.3"):
        RunWriter(tmp_path / "old.zarr", sel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.zarr"]
    assert open_run(tmp_path / "old.zarr").length == 0  # reading needs no atomic writes
