"""One writer per store: a second writer is refused, a dead writer's lock is taken over, and what
killed writers leave behind is cleaned up; readers never wait."""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

import gradnoise
from gradnoise.errors import StaleLockWarning, StoreError, StoreLockedError
from gradnoise.store import LOCK_NAME, RunWriter, open_run
from test_store import _record, _run_and_kill, _set_grads

ROWS = 30

# Waits for a start signal (both writers start together), then records ROWS rows (or is refused)
# and reports as one JSON line; a writer that got the store keeps it until told to close, so the
# other one always finds it held (whether it came first or not).
CONTENDER = textwrap.dedent(
    """
    import json, os, sys, time, torch, gradnoise
    from gradnoise.errors import StoreLockedError
    path, go, release = sys.argv[1:4]
    first, rows = int(sys.argv[4]), int(sys.argv[5])
    model = torch.nn.Linear(3, 2)
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        rec = gradnoise.Recorder(path, model, chunk_rows=4)
    except StoreLockedError as err:
        print(json.dumps({"pid": os.getpid(), "refused": str(err)}), flush=True)
        sys.exit(0)
    for step in range(first, first + rows):
        for p in model.parameters():
            p.grad = torch.full_like(p, float(step))
        rec.record(step, model, loss=float(os.getpid()))
    print(json.dumps({"pid": os.getpid(), "recorded": rows}), flush=True)
    while not os.path.exists(release):
        time.sleep(0.005)
    rec.close()
    """
)


def _contend(tmp_path, path, first):
    go, release = tmp_path / "go", tmp_path / "release"
    go.unlink(missing_ok=True)
    release.unlink(missing_ok=True)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONTENDER,
                str(path),
                str(go),
                str(release),
                str(first),
                str(ROWS),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    reports = [json.loads(p.stdout.readline()) for p in procs]
    release.touch()
    for p in procs:
        assert p.wait(timeout=60) == 0
        p.stdout.close()
    return reports


@pytest.mark.parametrize("existing", [False, True], ids=["new-store", "existing-store"])
def test_two_processes_one_store_exactly_one_writes_the_other_is_refused(tmp_path, existing):
    path = tmp_path / "r.zarr"
    first = 0
    if existing:
        model = torch.nn.Linear(3, 2)
        with gradnoise.Recorder(path, model) as rec:
            _record(rec, model, range(5))
        first = 5
    reports = _contend(tmp_path, path, first)
    winners = [r for r in reports if "recorded" in r]
    losers = [r for r in reports if "refused" in r]
    assert len(winners) == 1 and len(losers) == 1, reports
    winner = winners[0]["pid"]
    # the refusal names the owner and the way out
    assert f"pid {winner} on host {socket.gethostname()}" in losers[0]["refused"]
    assert "second writer would corrupt it" in losers[0]["refused"]
    run = open_run(path)
    assert run.steps.tolist() == list(range(first + ROWS))  # nothing lost, nothing interleaved
    assert set(run.scalars["loss"][first:].tolist()) == {float(winner)}
    np.testing.assert_array_equal(run.grads[:, 0], run.steps.astype(np.float32))
    assert not (path / LOCK_NAME).exists()  # the winner's close() removed its lock file


def test_readers_never_wait_for_a_writer(tmp_path):
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    rec = gradnoise.Recorder(path, model)
    _set_grads(model, 1)
    rec.record(0, model)
    t0 = time.perf_counter()
    run = open_run(path)
    assert run.length == 1 and run.grads.shape == (1, 8)
    assert time.perf_counter() - t0 < 5
    rec.close()


def test_second_writer_in_the_same_process_is_refused_until_the_first_is_closed(tmp_path):
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    rec = gradnoise.Recorder(path, model)
    with pytest.raises(StoreLockedError, match=r"already open for writing in this process"):
        gradnoise.Recorder(path, model)
    with pytest.raises(StoreLockedError, match="close"):
        RunWriter(path, rec.selection)
    rec.close()
    assert rec.writer.closed and not (path / LOCK_NAME).exists()
    with pytest.raises(StoreError, match="is closed"):
        _set_grads(model, 1)
        rec.record(0, model)
    with gradnoise.Recorder(path, model) as rec2:  # the `with` block releases it too
        _set_grads(model, 1)
        rec2.record(0, model)
    # a writer that is garbage (here: in a reference cycle, not yet collected) does not hold it
    gc.disable()
    try:
        cycle = {"rec": gradnoise.Recorder(path, model)}
        cycle["self"] = cycle
        del cycle
        gradnoise.Recorder(path, model).close()
    finally:
        gc.enable()
    assert open_run(path).length == 1


def test_a_forked_child_closing_its_copy_does_not_release_the_parents_lock(tmp_path):
    """A DataLoader worker (forked with the Recorder in memory) must not unlock the store."""
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    rec = gradnoise.Recorder(path, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a threaded process
        child = os.fork()
    if child == 0:  # pragma: no cover - the child
        rec.close()
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    assert (path / LOCK_NAME).exists()
    with pytest.raises(StoreLockedError, match="already open for writing in this process"):
        gradnoise.Recorder(path, model)
    rec.close()
    assert not (path / LOCK_NAME).exists()


def test_a_sigkilled_writer_leaves_a_stale_lock_that_the_next_writer_takes_over(tmp_path):
    path = tmp_path / "crash.zarr"
    last, pid = _run_and_kill(path, 10)
    owner = json.loads((path / LOCK_NAME).read_text())
    assert owner["pid"] == pid and owner["host"] == socket.gethostname()
    model = gradnoise.build_model("mlp", (1, 8, 8), 10, widths=(64,), seed=0)
    with pytest.warns(StaleLockWarning, match=rf"left by pid {pid} on host .*no longer running"):
        rec = gradnoise.Recorder(path, model)
    assert json.loads((path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert rec.writer.length >= last + 1
    resumed = rec.writer.last_step + 1
    _record(rec, model, [resumed])
    rec.close()
    run = open_run(path)
    assert run.steps.tolist() == list(range(resumed + 1))
    assert not (path / LOCK_NAME).exists()


GARBLED = ["", "{not json", "[1, 2]", '{"pid": "x", "host": "%s", "started": 0}']


@pytest.mark.parametrize("content", GARBLED)
def test_an_empty_or_garbled_lock_file_is_taken_over_if_free_refused_if_held(tmp_path, content):
    """E.g. a writer killed between creating the lock file and writing its name into it."""
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    gradnoise.Recorder(path, model).close()
    lock = path / LOCK_NAME
    lock.write_text(content.replace("%s", socket.gethostname()))
    holder = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # someone holds it, name unreadable
        with pytest.raises(StoreLockedError, match=r"another writer \(whose pid and host are not"):
            gradnoise.Recorder(path, model)
    finally:
        os.close(holder)
    with gradnoise.Recorder(path, model) as rec:  # nobody holds it: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        _record(rec, model, [0])
    assert open_run(path).length == 1 and not lock.exists()


def test_a_lock_from_another_host_is_never_guessed_stale(tmp_path):
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    gradnoise.Recorder(path, model).close()
    lock = path / LOCK_NAME
    foreign = {"pid": 4242, "host": "node17.cluster.example", "started": "2030-01-01T00:00:00"}
    lock.write_text(json.dumps(foreign))
    with pytest.raises(StoreLockedError) as info:
        gradnoise.Recorder(path, model)
    message = str(info.value)
    assert "pid 4242 on host node17.cluster.example" in message
    assert f"delete {lock}" in message
    assert json.loads(lock.read_text()) == foreign  # left as it was
    lock.unlink()  # what the message tells the user to do once that writer is known to be gone
    gradnoise.Recorder(path, model).close()


def test_without_flock_the_owner_pid_decides(tmp_path, monkeypatch):
    """File systems without flock (Lustre without -o flock...): a live owner on this host refuses,
    a dead one is taken over."""

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    gradnoise.Recorder(path, model).close()
    assert not (path / LOCK_NAME).exists()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid, outcome in [(alive.pid, "refused"), (dead.pid, "taken")]:
            owner = {"pid": pid, "host": socket.gethostname(), "started": "2030-01-01T00:00:00"}
            (path / LOCK_NAME).write_text(json.dumps(owner))
            if outcome == "refused":
                with pytest.raises(StoreLockedError, match=rf"being written by pid {pid} on host"):
                    gradnoise.Recorder(path, model)
            else:
                with pytest.warns(StaleLockWarning, match=rf"pid {pid}"):
                    gradnoise.Recorder(path, model).close()
    finally:
        alive.kill()
        alive.wait()
    assert not (path / LOCK_NAME).exists()


PARTIAL = "0123456789abcdef0123456789abcdef.partial"


def test_leftover_partial_files_are_removed_by_the_next_writer_not_by_readers(tmp_path):
    path = tmp_path / "r.zarr"
    model = torch.nn.Linear(3, 2)
    with gradnoise.Recorder(path, model, chunk_rows=2) as rec:
        _record(rec, model, range(4))
    # what a writer killed inside zarr's atomic write leaves (zarr's <name>.<uuid hex>.partial)
    planted = [path / f"zarr.{PARTIAL}", path / "grads" / "c" / "1" / f"0.{PARTIAL}"]
    for f in planted:
        f.write_bytes(b"half a chunk")
    unrelated = path / "notes.partial"  # not zarr's naming: not ours to delete
    unrelated.write_text("x")
    assert open_run(path).length == 4
    assert all(f.exists() for f in planted)  # readers do not touch them
    with gradnoise.Recorder(path, model) as rec:
        assert not any(f.exists() for f in planted)
        assert unrelated.exists()
        _record(rec, model, [4])
    assert open_run(path).steps.tolist() == [0, 1, 2, 3, 4]


# Creates a store but hangs just before renaming its build directory into place (where a kill
# leaves a `.creating-` directory behind).
STUCK_CREATOR = textwrap.dedent(
    """
    import os, sys, time, torch, gradnoise
    real_replace = os.replace
    def stuck(src, dst):
        if ".creating-" in os.path.basename(str(src)):
            print("stuck", flush=True)
            time.sleep(120)
        return real_replace(src, dst)
    os.replace = stuck
    gradnoise.Recorder(sys.argv[1], torch.nn.Linear(3, 2))
    """
)


def test_creation_directories_of_killed_creators_are_removed_live_ones_kept(tmp_path):
    path = tmp_path / "r.zarr"
    host = socket.gethostname()
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_CREATOR, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "stuck"
        building = tmp_path / f".r.zarr.creating-{proc.pid}@{host}"
        assert (building / "zarr.json").exists()
        # a live creator's directory is kept; this process creates the store beside it
        model = torch.nn.Linear(3, 2)
        gradnoise.Recorder(path, model).close()
        assert building.exists()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old_format = tmp_path / f".r.zarr.creating-{dead.pid}"  # written by gradnoise before the lock
    other_host = tmp_path / f".r.zarr.creating-{dead.pid}@node17.cluster.example"
    for d in (old_format, other_host):
        d.mkdir()
        (d / "zarr.json").write_text("{}")
    with gradnoise.Recorder(path, model) as rec:
        _record(rec, model, [0])
    assert not building.exists() and not old_format.exists()
    assert other_host.exists()  # another host's pid cannot be checked from here: kept
    assert open_run(path).length == 1
