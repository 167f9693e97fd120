"""Regressions from an adversarial review of the capture engine: each model here once got a
silently wrong or silently random number (or a raw error) from some entry point."""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradnoise
from gradnoise.clustering import GradientClusteringSampler
from gradnoise.errors import GradnoiseError, PerSampleFallbackWarning, UnsupportedLayerError
from gradnoise.testing import naive_per_sample_grads

D = torch.float64


def close(actual, expected, rtol=1e-10):
    actual, expected = actual.double(), expected.double()
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(autouse=True)
def _quiet_fallbacks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerSampleFallbackWarning)
        yield


class Centred(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h - h.mean(0, keepdim=True))


def test_an_audit_of_one_example_is_not_reused_for_a_batch():
    torch.manual_seed(0)
    m, loss = Centred().double(), nn.CrossEntropyLoss()
    x, y = torch.randn(6, 4, dtype=D), torch.randint(0, 3, (6,))
    gradnoise.per_sample_grads(m, loss, x[:1], y[:1])  # one example: nothing can couple
    for call in (
        lambda: gradnoise.per_sample_grads(m, loss, x, y),
        lambda: gradnoise.full_grad(m, loss, (x, y)),
    ):
        with pytest.raises(UnsupportedLayerError, match="mixes the examples"):
            call()


class Guard(nn.Module):
    """Rescales the whole batch when any input is large: a coupling the first examples hide."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        if bool((x.abs() > 2.5).any()):
            h = h * 0.5
        return self.out(h)


@pytest.mark.parametrize("entry", ["per_sample_grads", "full_grad", "minibatch_grads"])
def test_a_coupling_beyond_the_probe_is_refused_at_run_time(entry):
    torch.manual_seed(0)
    m, loss = Guard().double(), nn.CrossEntropyLoss()
    x = torch.randn(8, 4, dtype=D).clamp(-2, 2)
    x[6, 1] = 3.0  # only example 6 triggers the batch-wide branch
    y = torch.randint(0, 3, (8,))
    calls = {
        "per_sample_grads": lambda: gradnoise.per_sample_grads(m, loss, x, y, chunk_size=4),
        "full_grad": lambda: gradnoise.full_grad(m, loss, (x, y), batch_size=4),
        "minibatch_grads": lambda: gradnoise.minibatch_grads(
            m, loss, (x[4:], y[4:]), batch_size=4, num_batches=1
        ),
    }
    with pytest.raises(UnsupportedLayerError, match=r"other outputs alone|mixes the examples"):
        calls[entry]()


class TimeFirstSeq(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x.transpose(0, 1))).transpose(0, 1)
        return self.out(h).transpose(1, 2)  # [B, 3, T]


def test_a_probe_whose_targets_are_all_ignored_still_proves_the_rules():
    torch.manual_seed(0)
    m, loss = TimeFirstSeq().double(), nn.CrossEntropyLoss()
    x, y = torch.randn(8, 4, 4, dtype=D), torch.randint(0, 3, (8, 4))
    y[:4] = -100
    with pytest.warns(gradnoise.errors.LossDecompositionWarning):
        audit = gradnoise.audit_model(m, loss, x, y)
    assert audit.path("fc.weight") != "structured"
    close(
        gradnoise.per_sample_grads(m, loss, x, y, chunk_size=4),
        naive_per_sample_grads(m, loss, x, y),
    )


class SortByKey(nn.Module):
    """Bucketing: sort the batch, run a layer, unsort (exact per example, rows reordered)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        order = x[:, 0].argsort()
        return self.out(torch.tanh(self.fc(x[order]))[order.argsort()])


def test_examples_reordered_inside_the_model():
    torch.manual_seed(0)
    m, loss = SortByKey().double(), nn.CrossEntropyLoss()
    x, y = torch.randn(8, 4, dtype=D), torch.randint(0, 3, (8,))
    x[:4, 0] = torch.tensor([-3.0, -2.0, -1.0, 0.0])  # the probe is sorted already
    ref = naive_per_sample_grads(m, loss, x, y)
    close(gradnoise.per_sample_grads(m, loss, x, y, chunk_size=4), ref)


class RareTied(nn.Module):
    """Row 99 of the embedding also scores class 0, only for examples holding token 99."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(100, 8), nn.Linear(8, 3)

    def forward(self, t):
        h = torch.tanh(self.emb(t)).mean(1)
        o = self.out(h)
        has = (t == 99).any(1, keepdim=True)
        if bool(has.any()):
            o = o + has * (h @ self.emb.weight[99:].T) * torch.tensor([1.0, 0.0, 0.0], dtype=D)
        return o


def test_a_rare_use_outside_the_layer_anywhere_in_the_weight():
    torch.manual_seed(0)
    m, loss = RareTied().double(), nn.CrossEntropyLoss()
    t, y = torch.randint(0, 99, (8, 3)), torch.randint(0, 3, (8,))
    t[5, 1] = 99
    ref = naive_per_sample_grads(m, loss, t, y)
    close(gradnoise.per_sample_grads(m, loss, t, y, chunk_size=4), ref)
    close(
        torch.as_tensor(gradnoise.covariance_spectrum(m, loss, t, y, block_size=4)),
        torch.as_tensor(gradnoise.spectra.covariance_spectrum(ref.numpy())),
        rtol=1e-8,
    )


class LayerDrop(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.out, self.p = nn.Linear(4, 3), p

    def forward(self, x):
        for layer in self.layers:
            if self.training and random.uniform(0, 1) < self.p:
                continue
            x = torch.tanh(layer(x))
        return self.out(x)


def test_python_randomness_is_refused_or_switched_off():
    torch.manual_seed(0)
    m, loss = LayerDrop().double(), nn.CrossEntropyLoss()
    x, y = torch.randn(8, 4, dtype=D), torch.randint(0, 3, (8,))
    state = random.getstate()
    refused = 0
    for seed in range(8):
        random.seed(seed)
        try:
            gradnoise.per_sample_grads(m, loss, x, y, chunk_size=2)
        except GradnoiseError:
            refused += 1
    assert refused == 8  # never a random result under dropout="error"
    random.setstate(state)
    evaluated = gradnoise.per_sample_grads(m, loss, x, y, dropout="eval")
    assert random.getstate() == state  # the audit does not move Python's random stream
    m.eval()
    close(evaluated, naive_per_sample_grads(m, loss, x, y))


class MaskNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.drop, self.act, self.b = (
            nn.Linear(4, 2),
            nn.Dropout(0.5),
            nn.PReLU(2),
            nn.Linear(2, 3),
        )
        self.mask = None

    def forward(self, x):
        h = self.a(x)
        h = self.drop(h) if self.mask is None else h * self.mask
        return self.b(self.act(h))


def test_sample_draws_one_mask_per_example_for_every_parameter():
    torch.manual_seed(0)
    m, loss = MaskNet().double(), nn.CrossEntropyLoss()
    with torch.no_grad():
        m.act.weight.fill_(0.3)
    x1, y1 = torch.randn(1, 4, dtype=D), torch.tensor([1])
    candidates = []
    for bits in itertools.product([0.0, 2.0], repeat=2):
        m.mask = torch.tensor(bits, dtype=D)
        candidates.append(naive_per_sample_grads(m, loss, x1, y1)[0])
    m.mask = None
    rows = gradnoise.per_sample_grads(m, loss, x1.repeat(16, 1), y1.repeat(16), dropout="sample")
    gap = (rows[:, None] - torch.stack(candidates)[None]).abs().amax(-1)
    assert bool((gap < 1e-12).any(1).all())  # every row is the gradient under one whole mask


class SharedNoise(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a, self.b = nn.Linear(4, width), nn.Linear(width, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.training:
            h = h * (2 * torch.rand(h.shape[-1], dtype=h.dtype))
        return self.b(h)


@pytest.mark.parametrize("width", [4, 5])
def test_sample_gives_independent_draws_even_when_a_draw_has_the_probe_s_length(width):
    torch.manual_seed(0)
    m, loss = SharedNoise(width).double(), nn.CrossEntropyLoss()
    x, y = torch.randn(1, 4, dtype=D).repeat(8, 1), torch.tensor([1]).repeat(8)
    rows = gradnoise.per_sample_grads(m, loss, x, y, dropout="sample")
    assert len({tuple(r.tolist()) for r in rows}) == 8


class TimeFirstMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x.transpose(0, 1))).transpose(0, 1).mean(1))


@pytest.mark.parametrize("seed", [2, 5])
def test_bfloat16_models_are_proven_in_float64(seed):
    torch.manual_seed(seed)
    m, loss = TimeFirstMean().bfloat16(), nn.CrossEntropyLoss()
    x, y = torch.randn(8, 4, 4).bfloat16(), torch.randint(0, 3, (8,))
    audit = gradnoise.audit_model(m, loss, x, y)
    assert audit.path("fc.weight") != "structured"
    got = gradnoise.per_sample_grads(m, loss, x, y, chunk_size=4).double()
    loop = naive_per_sample_grads(m, loss, x, y).double()  # what bfloat16 itself can do
    assert float((got - loop).abs().max() / loop.abs().max()) < 0.02


def test_a_new_loss_function_reusing_a_freed_id_is_audited_again():
    torch.manual_seed(0)
    m = nn.Linear(4, 3).double()
    x, y = torch.randn(6, 4, dtype=D), torch.randint(0, 3, (6,))

    def make(noise):
        if noise == 0:
            return lambda o, t: F.cross_entropy(o, t)
        return lambda o, t: F.cross_entropy(o + noise * torch.randn_like(o), t)

    gradnoise.per_sample_grads(m, make(0.0), x, y)  # freed at once: its id can be reused
    with pytest.raises(UnsupportedLayerError, match="random"):
        gradnoise.per_sample_grads(m, make(0.5), x, y)


class RareReuse(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 3)
        self.drop = nn.Dropout(dropout)
        self.tied = False

    def forward(self, x):
        h = self.drop(torch.tanh(self.fc(x)))
        flag = (x[:, :1] > 2).to(x.dtype)
        if self.tied or bool(flag.any()):  # data-dependent: torch.func cannot trace this
            h = h + flag * torch.tanh(F.linear(h, self.fc.weight))
        return self.out(h)


def test_a_step_aside_uses_the_loop_where_torch_func_cannot_trace():
    torch.manual_seed(0)
    m, loss = RareReuse().double(), nn.CrossEntropyLoss()
    x = torch.randn(8, 4, dtype=D).clamp(-1.9, 1.9)
    x[6, 0] = 2.5
    y = torch.randint(0, 3, (8,))
    ref = naive_per_sample_grads(m, loss, x, y)
    close(gradnoise.per_sample_grads(m, loss, x, y, chunk_size=4), ref)


def test_a_step_aside_under_dropout_sample_does_not_raise():
    torch.manual_seed(0)
    m, loss = RareReuse(dropout=0.3).double(), nn.CrossEntropyLoss()
    x, y = torch.randn(6, 4, dtype=D), torch.randint(0, 3, (6,))
    gradnoise.per_sample_grads(m, loss, x, y, dropout="sample")
    m.tied = True
    rows = gradnoise.per_sample_grads(m, loss, x, y, dropout="sample")
    assert torch.isfinite(rows).all()


class Toggle(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 3)
        self.tied = False

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        if self.tied:
            h = h + torch.tanh(F.linear(h, self.fc.weight))
        return self.out(h)


def test_gradient_clustering_checks_every_chunk():
    torch.manual_seed(0)
    m, loss = Toggle().double(), nn.CrossEntropyLoss()
    x, y = torch.randn(12, 4, dtype=D).clamp(-1.9, 1.9), torch.randint(0, 3, (12,))
    sampler = GradientClusteringSampler(m, loss, (x, y), batch_size=2, num_clusters=2, rng=0)
    sampler.recluster()
    m.tied = True
    with pytest.raises(UnsupportedLayerError, match="create a new one"):
        sampler.clustering.distances(x, y)
    fresh = GradientClusteringSampler(m, loss, (x, y), batch_size=2, num_clusters=2, rng=0)
    fresh.recluster()
    centres = fresh.clustering.centers().double()
    g = naive_per_sample_grads(m, loss, x, y)
    close(fresh.clustering.distances(x, y), ((g[:, None] - centres[None]) ** 2).sum(-1))


def test_gradient_clustering_unwraps_data_parallel():
    torch.manual_seed(0)
    m = nn.DataParallel(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).double())
    x, y = torch.randn(6, 4, dtype=D), torch.randint(0, 3, (6,))
    sampler = GradientClusteringSampler(
        m, nn.CrossEntropyLoss(), (x, y), batch_size=2, num_clusters=2, rng=0
    )
    assert sampler.recluster().num_clusters == 2
