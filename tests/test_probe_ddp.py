"""Probe under DDP: examples/ddp_probe.py run by torchrun on 2 gloo ranks (127.0.0.1) writes one
run whose numbers equal the same script's single-process run on the same global minibatches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gradnoise
from gradnoise.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_probe.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _numbers(tree, prefix=""):
    """Every number in a JSON tree, by path."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{prefix}/{k}")
    elif isinstance(tree, list):
        for k, v in enumerate(tree):
            yield from _numbers(v, f"{prefix}/{k}")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)


def _gap(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.slow
def test_torchrun_example_writes_one_run_equal_to_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(EXAMPLE.parents[1] / "src")}
    common = ["--tiny", "--dtype", "float64"]
    ddp, alone = tmp_path / "ddp", tmp_path / "alone"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    proc = subprocess.run(
        [*launch, str(EXAMPLE), *common, "--out", str(ddp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [p["rank"] for p in printed] == [0] and printed[0]["world"] == 2  # rank 0 writes
    sys.path.insert(0, str(EXAMPLE.parent))
    try:  # the same script in this process: no process group, the same global minibatches
        import ddp_probe

        ddp_probe.main([*common, "--out", str(alone)])
    finally:
        sys.path.remove(str(EXAMPLE.parent))

    a, b = gradnoise.open_run(ddp / "grads.zarr"), gradnoise.open_run(alone / "grads.zarr")
    assert a.steps.tolist() == b.steps.tolist() == list(range(8))
    # the recorded gradient is DDP's all-reduced one: the global minibatch's (float64 sums in
    # another order, then stored as float32)
    assert _gap(a.grads, b.grads) <= 1e-6
    assert _gap(a.scalars["loss"], b.scalars["loss"]) <= 1e-12
    assert _gap(a.scalars["grad_norm"], b.scalars["grad_norm"]) <= 1e-12
    for kind in ("per_sample", "full", "noise"):  # captures shared between the two ranks
        got, want = getattr(a, kind), getattr(b, kind)
        assert sorted(got) == sorted(want) == [0, 4, 8]
        for step in want:
            assert got[step].shape == want[step].shape
            assert _gap(got[step], want[step]) <= 1e-6, (kind, step)
    for step in (0, 4, 8):  # the trained parameters (float64) agree to rounding
        got = torch.load(ddp / "checkpoints" / f"step_{step:07d}.pt", weights_only=True)
        want = torch.load(alone / "checkpoints" / f"step_{step:07d}.pt", weights_only=True)
        assert max(_gap(got[k], want[k]) for k in want) <= 1e-12
    got = dict(_numbers(json.loads((ddp / "summary.json").read_text())["analyses"]))
    want = dict(_numbers(json.loads((alone / "summary.json").read_text())["analyses"]))
    assert got.keys() == want.keys() and len(want) > 10
    far = {k: (got[k], v) for k, v in want.items() if abs(got[k] - v) > 1e-9 * max(abs(v), 1e-6)}
    assert not far
    assert (ddp / "report.html").exists() and not (ddp / "writer.lock").exists()


def test_a_second_rank_without_process_group_is_refused(monkeypatch, tmp_path):
    """Rank 1 of an initialised group making its own probe would write rank 0's run."""
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="process_group='world' on every rank"):
        gradnoise.Probe(tmp_path / "run", net, torch.nn.CrossEntropyLoss(), (x, y), batch_size=4)
    assert not (tmp_path / "run").exists()
