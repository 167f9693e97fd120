"""Full gradient, minibatch gradients and SGN against per-example oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import gradnoise
from cases import make_case
from gradnoise.errors import InsufficientDataError, UnsupportedLayerError
from gradnoise.testing import naive_per_sample_grads


class ListDataset(Dataset):
    """A plain map-style Dataset (not a TensorDataset) to exercise the generic data path."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.fixture
def case():
    return make_case("lenet", "mnist1d", "ce-mean", n=23)


def test_full_grad_is_mean_of_per_example_grads(case):
    net, loss_fn, x, y = case
    ref = naive_per_sample_grads(net, loss_fn, x, y).mean(0)
    for data in [(x, y), ListDataset(x, y)]:
        got = gradnoise.full_grad(net, loss_fn, data, batch_size=5)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_minibatch_grads_follow_the_documented_sampling(case):
    net, loss_fn, x, y = case
    per_example = naive_per_sample_grads(net, loss_fn, x, y)
    got = gradnoise.minibatch_grads(net, loss_fn, (x, y), batch_size=4, num_batches=6, seed=11)
    rng = np.random.default_rng(11)
    for k in range(6):
        idx = rng.choice(23, size=4, replace=False)
        torch.testing.assert_close(got[k], per_example[idx].mean(0), rtol=1e-10, atol=1e-12)
    again = gradnoise.minibatch_grads(
        net, loss_fn, ListDataset(x, y), batch_size=4, num_batches=6, seed=11
    )
    torch.testing.assert_close(again, got, rtol=1e-12, atol=1e-14)
    other = gradnoise.minibatch_grads(net, loss_fn, (x, y), batch_size=4, num_batches=6, seed=12)
    assert not torch.allclose(other, got)


def test_gradient_noise_is_minibatch_minus_full(case):
    net, loss_fn, x, y = case
    sel = gradnoise.select_params(net, coords=50, seed=0)
    noise = gradnoise.gradient_noise(
        net, loss_fn, (x, y), batch_size=4, num_batches=5, seed=3, params=sel
    )
    mb = gradnoise.minibatch_grads(
        net, loss_fn, (x, y), batch_size=4, num_batches=5, seed=3, params=sel
    )
    full = gradnoise.full_grad(net, loss_fn, (x, y), params=sel)
    torch.testing.assert_close(noise, mb - full, rtol=1e-12, atol=1e-14)
    # a batch holding every example has no noise
    whole = gradnoise.gradient_noise(net, loss_fn, (x, y), batch_size=23, num_batches=2, params=sel)
    assert whole.abs().max() < 1e-12


def test_errors(case):
    net, loss_fn, x, y = case
    with pytest.raises(InsufficientDataError, match="at least 24"):
        gradnoise.minibatch_grads(net, loss_fn, (x, y), batch_size=24, num_batches=1)
    with pytest.raises(TypeError, match=r"\(X, y\) pair"):
        gradnoise.full_grad(net, loss_fn, (x, y, y))
    with pytest.raises(ValueError, match="different numbers"):
        gradnoise.full_grad(net, loss_fn, (x, y[:-1]))
    bn = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(40, 3), torch.nn.BatchNorm1d(3)
    ).double()
    with pytest.raises(UnsupportedLayerError):
        gradnoise.full_grad(bn, loss_fn, (x, y))
