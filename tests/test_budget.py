"""max_memory: a budget that sets capture chunk sizes (gradnoise.memory), and the streamed
captures (iter_per_sample_grads, iter_minibatch_grads) that never hold [N, P]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradnoise
from gradnoise.capture._budget import activation_bytes
from gradnoise.errors import ConfigError
from gradnoise.memory import (
    ACTIVATION_COPIES,
    GRADIENT_COPIES,
    bytes_per_example,
    chunk_for,
    parse_memory,
)
from gradnoise.study import StudyConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.LayerNorm(10), nn.Linear(10, 3))


def _data(n: int = 21):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 * 2**30),
        ("512 MiB", 512 * 2**20),
        ("2.5GB", 2_500_000_000),
        ("1k", 1024),
        ("1000000", 10**6),
        (12345, 12345),
        (None, None),
    ],
)
def test_parse_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["4 gigs", "", "-1GiB", "GiB", 0, -5, 1.5, True, [4]])
def test_bad_sizes_are_refused_naming_the_setting(bad):
    with pytest.raises(ConfigError, match="max_memory must be a size such as"):
        parse_memory(bad)


def test_study_config_takes_a_budget(tmp_path):
    assert StudyConfig(max_memory="4GiB").max_memory == 4 * 2**30
    assert StudyConfig().max_memory is None
    toml = tmp_path / "study.toml"
    toml.write_text('[study]\nmax_memory = "256MiB"\n')
    config = StudyConfig.from_toml(toml)
    assert config.max_memory == 256 * 2**20
    assert StudyConfig(**config.to_dict()) == config
    toml.write_text('[study]\nmax_memory = "lots"\n')
    with pytest.raises(ConfigError, match="max_memory must be a size"):
        StudyConfig.from_toml(toml)


def test_chunk_sizes_follow_the_budget():
    net = _net()
    x, y = _data()
    params = [p for p in net.parameters()]
    per_example = bytes_per_example(params)
    assert per_example == GRADIENT_COPIES * sum(p.numel() for p in params) * 4
    # a chunk's forward saves activations for its backward (measured): they share the budget
    act = activation_bytes(
        net, nn.CrossEntropyLoss(), (x, y), len(x), params, None, "error", torch.device("cpu")
    )
    assert act > 0
    with_act = per_example + ACTIVATION_COPIES * act
    for k in (1, 4, 5, 100):
        whole = gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y, chunk_size=k)
        budget = k * with_act + with_act // 2  # k examples fit, k + 1 do not
        assert chunk_for(params, budget, activation_bytes=act) == k
        assert chunk_for(params, budget) == budget // per_example  # the gradients alone
        if k == 100:
            assert budget // per_example > k
        chunks = [
            (span, g.clone())
            for span, g in gradnoise.iter_per_sample_grads(
                net, nn.CrossEntropyLoss(), x, y, max_memory=budget
            )
        ]
        assert [g.shape[0] for _, g in chunks[:-1]] == [k] * (len(chunks) - 1)
        assert sum(g.shape[0] for _, g in chunks) == x.shape[0]
        torch.testing.assert_close(torch.cat([g for _, g in chunks]), whole, rtol=0, atol=0)
        budgeted = gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y, max_memory=budget)
        torch.testing.assert_close(budgeted, whole, rtol=0, atol=0)


def test_a_budget_below_one_example_is_refused_with_the_fix(tmp_path):
    net = _net()
    x, y = _data()
    need = bytes_per_example(list(net.parameters()))
    with pytest.raises(ConfigError, match=r"below one example's gradient working set") as err:
        gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y, max_memory=need - 1)
    assert "raise max_memory to at least" in str(err.value)
    assert "params=/select=" in str(err.value)
    # the gradients fit, the activations the forward saves do not: refused, and they are named
    with pytest.raises(ConfigError, match=r"activations saved for backward") as err:
        gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y, max_memory=need)
    assert "raise max_memory to at least" in str(err.value)
    with pytest.raises(ConfigError, match=r"activations saved for backward"):
        gradnoise.Probe(
            tmp_path / "run", net, nn.CrossEntropyLoss(), (x, y), batch_size=4, max_memory=need
        )
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match=r"raise max_memory to at least"):
        gradnoise.Probe(
            tmp_path / "run", net, nn.CrossEntropyLoss(), (x, y), batch_size=4, max_memory="1KiB"
        )
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_probe_captures_in_budgeted_chunks(tmp_path, monkeypatch):

    import gradnoise.capture.per_sample as per_sample

    seen = []
    real = per_sample._plan

    def spy(*args, **kwargs):
        plan = real(*args, **kwargs)
        seen.append(plan.chunk)
        return plan

    monkeypatch.setattr(per_sample, "_plan", spy)
    net = _net()
    x, y = _data(40)
    per_example = bytes_per_example(list(net.parameters()))
    act = activation_bytes(
        net,
        nn.CrossEntropyLoss(),
        (x, y),
        40,
        list(net.parameters()),
        None,
        "error",
        torch.device("cpu"),
    )
    # the gradients of three examples fit the budget; with their activations, two do
    expected = chunk_for(list(net.parameters()), 3 * per_example, activation_bytes=act)
    assert expected == 2
    probe = gradnoise.Probe(
        tmp_path / "run",
        net,
        nn.CrossEntropyLoss(),
        (x, y),
        batch_size=8,
        checkpoints=[0],
        analyses=("gradients",),
        per_sample_examples=16,
        noise_batches=4,
        max_memory=3 * per_example,
    )
    loss = nn.CrossEntropyLoss()(net(x[:8]), y[:8])
    loss.backward()
    probe.step(0, loss=loss.item())
    probe.finish()
    # the checkpoint's per-sample capture, then the gradients analysis's (streamed)
    assert seen == [expected, expected]
    assert probe.config.max_memory == 3 * per_example


def test_streamed_minibatch_gradients_equal_the_batch_function():
    net = _net()
    x, y = _data()
    loss = nn.CrossEntropyLoss()
    whole = gradnoise.minibatch_grads(net, loss, (x, y), batch_size=4, num_batches=6, seed=3)
    rows = [
        g.clone()
        for _, g in gradnoise.iter_minibatch_grads(
            net, loss, (x, y), batch_size=4, num_batches=6, seed=3
        )
    ]
    torch.testing.assert_close(torch.stack(rows), whole, rtol=0, atol=0)


def test_gram_first_block_follows_the_budget():
    net = _net().double()  # float64: block sizes change only the order of float sums
    x, y = _data()
    x = x.double()
    loss = nn.CrossEntropyLoss()
    full = gradnoise.per_sample_gram(net, loss, x, y)
    per_example = bytes_per_example(list(net.parameters()))
    small = gradnoise.per_sample_gram(net, loss, x, y, max_memory=2 * 2 * per_example)
    assert abs(small - full).max() <= 1e-12 * abs(full).max()
    text = gradnoise.per_sample_gram(net, loss, x, y, max_memory="1MiB")
    assert abs(text - full).max() <= 1e-12 * abs(full).max()


@pytest.mark.parametrize("activations", [0, 10**9])
def test_gram_counts_a_blocks_computation_in_its_budget(monkeypatch, activations):
    # the features of all N fit max_memory; whether the computation of a block fits beside
    # them depends on the activations its forward saves: none -> the features stay in memory
    # (each block computed once); a lot -> pairs of one-example blocks, recomputed
    import gradnoise.capture.gram as gram

    net = _net().double()
    x, y = _data()
    x = x.double()
    loss = nn.CrossEntropyLoss()
    full = gradnoise.per_sample_gram(net, loss, x, y)
    monkeypatch.setattr(gram, "activation_bytes", lambda *a, **k: activations)
    calls = []
    real = gram._GramPlan.features

    def counted(self, xb, yb):
        calls.append(int(xb.shape[0]))
        return real(self, xb, yb)

    monkeypatch.setattr(gram._GramPlan, "features", counted)
    got = gradnoise.per_sample_gram(net, loss, x, y, max_memory="64MiB")
    assert abs(got - full).max() <= 1e-12 * abs(full).max()
    n = x.shape[0]
    if activations == 0:
        assert sum(calls) == n  # every example's features computed once
    else:
        assert calls[1:] == [1] * (len(calls) - 1) and sum(calls[1:]) > n  # recomputed


def test_gram_memory_plan_arithmetic():
    from gradnoise.capture.gram import _MemoryPlan
    from gradnoise.memory import ACTIVATION_COPIES

    plan = _MemoryPlan(budget=1000, checks=100, activations=10)
    # computing a block of 4: checks + 4 * (features + 2 activations)
    assert plan.computing(50, 4) == 100 + 4 * (50 + ACTIVATION_COPIES * 10)
    # 10 examples of 50 bytes (500) + computing a block of 4 (380) = 880 <= 1000
    assert plan.in_memory(50, 10, 4)
    assert not plan.in_memory(50, 13, 4)  # 650 + 380 > 1000
    # bounded: (1000 - 100) // (3 * 50 + 2 * 10) = 900 // 170 = 5
    assert plan.bounded_block(50) == 5
    assert _MemoryPlan(budget=10, checks=100, activations=10).bounded_block(50) == 1


def test_gram_holds_factored_features_in_the_models_dtype(monkeypatch):
    # held features cost the model's dtype; they are widened to float64 (exactly) only where
    # a pair of blocks is multiplied, so the Gram matrix is the float64 one either way
    import gradnoise.capture.gram as gram

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    x, y = _data()
    loss = nn.CrossEntropyLoss()
    dtypes = set()
    real = gram._gram_block

    def spy(fa, fb):
        dtypes.update(t.dtype for pairs in fa.factored for pair in pairs for t in pair)
        return real(fa, fb)

    monkeypatch.setattr(gram, "_gram_block", spy)
    got = gradnoise.per_sample_gram(net, loss, x, y, factor="always")
    assert dtypes == {torch.float32}
    g = gradnoise.per_sample_grads(net, loss, x, y).double()  # rows rounded to float32
    want = (g @ g.T).numpy()
    assert abs(got - want).max() <= 1e-5 * abs(want).max()
