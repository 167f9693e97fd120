"""max_memory on the batch gradients, the Hessian and clustering: a forward holds at most
``max_memory // (2 * measured activation bytes)`` examples, and the numbers do not change."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradnoise
from gradnoise.capture import _budget, batches
from gradnoise.capture._budget import activation_bytes
from gradnoise.curvature import HessianOperator
from gradnoise.errors import ConfigError
from gradnoise.memory import ACTIVATION_COPIES, batch_for, bytes_per_example
from zoo import CASES

EXACT = [c for c in CASES if c.expect == "exact" and c.dropout in ("error", "eval")]


def _budget_for(model, loss, x, y, examples: int, dropout="error") -> int:
    """A budget that allows ``examples`` examples per forward on this model."""
    measured = activation_bytes(
        model, loss, (x, y), x.shape[0], list(model.parameters()), None, dropout, x.device
    )
    return ACTIVATION_COPIES * measured * examples


def _forward_sizes(monkeypatch) -> list[int]:
    """The examples of every batch-gradient forward from now on."""
    seen: list[int] = []
    real = batches._summed_grad

    def spy(model, loss_fn, x, *args):
        seen.append(int(x.shape[0]))
        return real(model, loss_fn, x, *args)

    monkeypatch.setattr(batches, "_summed_grad", spy)
    return seen


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = float(b.abs().max()) or 1.0
    assert float((a - b).abs().max()) <= 1e-12 * scale


def test_batch_for_divides_the_budget_and_refuses_below_one_example():
    assert batch_for(1000, 2000 * 7 + 5) == 7
    assert batch_for(1000, None) is None
    with pytest.raises(ConfigError, match=r'raise max_memory to at least "2KiB"'):
        batch_for(1000, 1999)
    # a working set per example and bytes held whatever the batch come off the budget
    assert batch_for(1000, 10_000 + 7 * 2500, extra=500, fixed=10_000) == 7
    assert batch_for(1000, 10_000 + 7 * 2500 - 1, extra=500, fixed=10_000) == 6
    with pytest.raises(ConfigError, match=r'held whatever the batch.*at least "13KiB"'):
        batch_for(1000, 12_499, extra=500, fixed=10_000)


def test_measured_activation_bytes_are_the_saved_tensors_per_example():
    # Linear saves its input (10), Tanh its output (20), the second Linear the same storage,
    # cross-entropy its log-softmax (5) and the target (int64), the per-example loss reduction
    # its input (1): 36 doubles + 8 bytes. The weights saved by mm do not grow with the batch.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 5)).double()
    x, y = torch.randn(8, 10, dtype=torch.float64), torch.randint(0, 5, (8,))
    measured = activation_bytes(
        net, nn.CrossEntropyLoss(), (x, y), 8, list(net.parameters()), None, "error", x.device
    )
    assert measured == 36 * 8 + 8
    # the double-backward graph of Hessian-vector products keeps more
    more = activation_bytes(
        net,
        nn.CrossEntropyLoss(),
        (x, y),
        8,
        list(net.parameters()),
        None,
        "error",
        x.device,
        create_graph=True,
    )
    assert more > measured


@pytest.mark.parametrize("create_graph", [False, True])
def test_measuring_leaves_no_graph_alive(create_graph):
    # Tanh and log-softmax save their own outputs: a pack hook that kept them would hold each
    # measured forward's whole graph in a cycle gc cannot collect (0.5-1 GiB on a 24M GPT)
    import gc
    import weakref

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 5)).double()
    outputs: list[weakref.ref] = []
    net[1].register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))
    x, y = torch.randn(8, 10, dtype=torch.float64), torch.randint(0, 5, (8,))
    measured = activation_bytes(
        net,
        nn.CrossEntropyLoss(),
        (x, y),
        8,
        list(net.parameters()),
        None,
        "error",
        x.device,
        create_graph=create_graph,
    )
    gc.collect()
    assert measured > 0 and len(outputs) == 2  # forwards of 1 and 4 examples
    assert all(ref() is None for ref in outputs)


class _Counting(nn.Module):
    """Counts its forwards in a buffer and drops units at random (train mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls += 1
        return self.fc(self.drop(x))


def test_measuring_changes_neither_buffers_nor_the_random_stream():
    torch.manual_seed(0)
    net = _Counting().double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    measured = activation_bytes(
        net, nn.CrossEntropyLoss(), (x, y), 8, list(net.parameters()), None, "sample", x.device
    )
    assert measured > 0
    assert torch.equal(torch.rand(3), expected)  # the forwards' dropout draws were forked off
    assert int(net.calls) == 0


@pytest.mark.parametrize("case", EXACT, ids=repr)
def test_sub_batches_give_the_same_gradients_on_the_zoo(case, monkeypatch):
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    warnings.filterwarnings("ignore", message="Using padding='same'")  # torch's own note
    if case.warns is not None:  # the zoo's expected warnings (tested in test_zoo)
        warnings.simplefilter("ignore", case.warns)
    model, loss, x, y = case.build()
    budget = _budget_for(model, loss, x, y, 2, case.dropout)
    kw = {"dropout": case.dropout}
    full = gradnoise.full_grad(model, loss, (x, y), batch_size=x.shape[0], **kw)
    mb = gradnoise.minibatch_grads(
        model, loss, (x, y), batch_size=case.batch + 2, num_batches=3, seed=1, **kw
    )
    seen = _forward_sizes(monkeypatch)
    # measured under the case's dropout choice, which may save less than the model as it is
    sub = batches._Setup(
        model, loss, (x, y), None, case.dropout, None, None, "test", budget
    ).sub_batch
    assert sub is not None and 2 <= sub < min(x.shape[0], case.batch + 2)
    full_b = gradnoise.full_grad(
        model, loss, (x, y), batch_size=x.shape[0], max_memory=budget, **kw
    )
    assert max(seen) <= sub and sum(seen) == x.shape[0]
    seen.clear()
    mb_b = gradnoise.minibatch_grads(
        model,
        loss,
        (x, y),
        batch_size=case.batch + 2,
        num_batches=3,
        seed=1,
        max_memory=budget,
        **kw,
    )
    assert max(seen) <= sub and sum(seen) == 3 * (case.batch + 2)
    _close(full_b, full)
    _close(mb_b, mb)
    noise = gradnoise.gradient_noise(
        model,
        loss,
        (x, y),
        batch_size=case.batch + 2,
        num_batches=3,
        seed=1,
        max_memory=budget,
        **kw,
    )
    _close(noise, mb - full)
    rows = torch.stack(
        [
            g
            for _, g in gradnoise.iter_minibatch_grads(
                model,
                loss,
                (x, y),
                batch_size=case.batch + 2,
                num_batches=3,
                seed=1,
                max_memory=budget,
                **kw,
            )
        ]
    )
    _close(rows, mb)


def _conv_data():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    ).double()
    x = torch.randn(12, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    return net, nn.CrossEntropyLoss(), x, y


def test_hessian_products_follow_the_budget_and_keep_their_values():
    net, loss, x, y = _conv_data()
    free = HessianOperator(net, loss, (x, y), batch_size=12)
    v = np.random.default_rng(0).standard_normal(free.dim)
    measured = activation_bytes(
        net, loss, (x, y), 12, list(net.parameters()), None, "error", x.device, create_graph=True
    )
    tight = HessianOperator(
        net, loss, (x, y), batch_size=12, max_memory=ACTIVATION_COPIES * measured * 5
    )
    assert tight.batch_size == 5 and not tight.cache_graphs  # 12 examples' graphs do not fit
    roomy = HessianOperator(
        net, loss, (x, y), batch_size=12, max_memory=ACTIVATION_COPIES * measured * 12
    )
    assert roomy.batch_size == 12 and roomy.cache_graphs
    hv = free.matvec(v)
    assert np.max(np.abs(tight.matvec(v) - hv)) <= 1e-12 * np.max(np.abs(hv))
    eigs = gradnoise.hessian_eigs(net, loss, (x, y), k=3, rng=0)
    eigs_b = gradnoise.hessian_eigs(
        net, loss, (x, y), k=3, rng=0, max_memory=ACTIVATION_COPIES * measured * 5
    )
    np.testing.assert_allclose(eigs_b.eigenvalues, eigs.eigenvalues, rtol=1e-8)


def _clustering_budget(net, loss, x, y, examples: int) -> int:
    """A budget that lets Gradient Clustering take ``examples`` examples per chunk: its fixed
    accumulators plus, per example, the activations of its forwards, its features and
    temporaries."""
    plan = gradnoise.GradientClustering(net, loss, 3, rng=0)
    plan._prepare((x, y))
    features, temps = plan._example_bytes(plan.audit)
    fixed = sum(a.numel() * a.element_size() for b in plan.blocks for a in b.new_acc())
    forwards = 1 if plan.fallback_selection is None else 2  # GroupNorm: a per-sample fallback
    return fixed + forwards * _budget_for(net, loss, x, y, examples) + examples * (features + temps)


def _sequence_data():
    torch.manual_seed(0)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc, self.out = nn.Embedding(11, 6), nn.Linear(6, 8), nn.Linear(8, 11)

        def forward(self, t):
            return self.out(torch.tanh(self.fc(self.emb(t)))).transpose(1, 2)

    x = torch.randint(0, 11, (10, 5))
    return Tokens(), nn.CrossEntropyLoss(), x, torch.randint(0, 11, (10, 5))


@pytest.mark.parametrize("data", [_conv_data, _sequence_data], ids=["conv", "sequence"])
def test_clustering_feature_bytes_are_those_a_chunk_holds(data):
    # the estimate behind the clustering's chunk size, against the features of a real chunk
    net, loss, x, y = data()
    gc = gradnoise.GradientClustering(net, loss, 3, rng=0)
    gc._prepare((x, y))
    c, item = 4, next(net.parameters()).element_size()
    feats = gc._features(x[:c], y[:c])
    held = {}
    for f in feats:
        for t in f if isinstance(f, tuple) else (f,):
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    estimate = sum(
        b.example_bytes(gc.audit._calls.get(id(getattr(b, "module", None)), []), item)[0]
        for b in gc.blocks
    )
    assert sum(held.values()) == c * estimate
    assert {gc.layout[n] for n in gc.layout} >= {"rank1"}


def test_clustering_chunks_and_the_comparator_follow_the_budget():
    net, loss, x, y = _conv_data()
    budget = _clustering_budget(net, loss, x, y, 3)
    gc = gradnoise.GradientClustering(net, loss, 3, rng=0, max_memory=budget)
    free = gradnoise.GradientClustering(net, loss, 3, rng=0)
    result, result_free = gc.fit((x, y)), free.fit((x, y))
    assert gc.chunk_size == 3 and free.chunk_size == 256
    np.testing.assert_array_equal(result.assignment, result_free.assignment)
    kw = {"batch_size": 6, "num_draws": 4, "estimators": ("sg", "gc"), "clustering": result}
    cmp = gradnoise.compare_estimators(net, loss, (x, y), rng=1, **kw)
    cmp_b = gradnoise.compare_estimators(net, loss, (x, y), rng=1, max_memory=budget, **kw)
    for name in ("sg", "gc"):
        a, b = cmp.estimators[name].variance, cmp_b.estimators[name].variance
        assert abs(a - b) <= 1e-10 * abs(a)


def test_a_budget_below_one_example_names_the_smallest_that_works():
    net, loss, x, y = _conv_data()
    with pytest.raises(ConfigError, match=r"below one example's activations.*raise max_memory"):
        gradnoise.full_grad(net, loss, (x, y), max_memory=64)
    with pytest.raises(ConfigError, match="below one example's activations"):
        HessianOperator(net, loss, (x, y), max_memory=64)


def test_the_budget_module_knows_no_statistics():
    # capture sizing stays in the capture layer (a layering check on the new module)
    assert "stats" not in _budget.__dict__


def test_the_probe_records_full_gradients_and_noise_within_the_budget(tmp_path, monkeypatch):
    net, loss, x, y = _conv_data()  # activations large next to the parameters
    net = net.float()
    x = torch.cat([x, x, x, x]).float()
    y = torch.cat([y, y, y, y])
    seen = _forward_sizes(monkeypatch)
    # three examples a forward; at least one per-example gradient with its activations (the
    # per-sample capture's chunk of one), which still allows no more than three a forward
    one = bytes_per_example(list(net.parameters())) + _budget_for(net, loss, x, y, 1)
    budget = max(_budget_for(net, loss, x, y, 3), one)
    assert budget < _budget_for(net, loss, x, y, 4)
    probe = gradnoise.Probe(
        tmp_path / "run",
        net,
        loss,
        (x, y),
        batch_size=8,
        checkpoints=[0],
        analyses=("gradients",),
        per_sample_examples=16,
        noise_batches=4,
        max_memory=budget,
    )
    out = loss(net(x[:8]), y[:8])
    out.backward()
    probe.step(0, loss=out.item())
    probe.finish()
    assert seen and max(seen) <= 3  # batches of 8 and full-gradient batches of 256, split
    assert sum(seen) >= 48 + 4 * 8  # the full gradient and the noise minibatches at least


def test_clustering_holds_one_chunk_of_features_at_a_time():
    # a chunk's features are sized by the budget: the previous chunk's must be gone before the
    # next chunk's are computed (they were alive until the name was rebound: twice the budget)
    import weakref

    net, loss, x, y = _conv_data()
    gc = gradnoise.GradientClustering(net, loss, 3, rng=0, chunk_size=4)
    real = gc._features
    previous: list[weakref.ref] = []
    alive_at_call: list[int] = []

    def spy(xc, yc):
        alive_at_call.append(sum(ref() is not None for ref in previous))
        out = real(xc, yc)
        previous[:] = [weakref.ref(t) for f in out for t in (f if isinstance(f, tuple) else (f,))]
        return out

    gc._features = spy
    gc.fit((x, y), iters=2)
    assert len(alive_at_call) >= 6 and max(alive_at_call) == 0
