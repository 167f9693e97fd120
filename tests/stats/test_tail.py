"""tail_index: the Mohammadi estimator against Simsekli et al.'s own code (torch, transcribed),
the pooled-coordinate convention, preconditions, accuracy, the pooling artefact, and Hill."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradnoise.errors import InsufficientDataError
from gradnoise.stats import sample_stable, tail_index
from gradnoise.stats.tail import simsekli_block_size


# --- transcribed from umutsimsekli/sgd_tail_index (utils.py alpha_estimator; main.py eval) ----
def simsekli_alpha_estimator(m, X):
    # X is N by d matrix
    N = len(X)
    n = int(N / m)  # must be an integer
    Y = torch.sum(X.view(n, m, -1), 1)
    eps = np.spacing(1)
    Y_log_norm = torch.log(Y.norm(dim=1) + eps).mean()
    X_log_norm = torch.log(X.norm(dim=1) + eps).mean()
    diff = (Y_log_norm - X_log_norm) / math.log(m)
    return 1 / diff


def simsekli_pooled_alpha(grads: torch.Tensor) -> float:
    """main.py eval(): noise = minibatch grads - their mean, pooled with view(-1, 1)."""
    mean_grad = grads.sum(0) / len(grads)
    noise_norm_flat = (grads - mean_grad).view(-1, 1)
    N = len(noise_norm_flat)
    for i in range(1, 1 + int(math.sqrt(N))):
        if N % i == 0:
            m = i
    return float(simsekli_alpha_estimator(m, noise_norm_flat))


# -------------------------------------------------------------------------------------------------


def test_pooled_matches_simsekli_code_exactly():
    rng = np.random.default_rng(0)
    grads = rng.standard_t(3, size=(60, 37)) * rng.lognormal(size=37)
    noise = grads - grads.mean(axis=0)
    ours = tail_index(noise, pooled=True)
    ref = simsekli_pooled_alpha(torch.as_tensor(grads, dtype=torch.float64))
    assert ours.alpha == pytest.approx(ref, rel=1e-12)
    assert ours.block_size == simsekli_block_size(60 * 37) == 37  # 2220 = 37 * 60
    assert ours.n_blocks == 60 and ours.n == 2220 and ours.pooled


def test_pooling_is_row_major_over_coordinates():
    """Blocks sum adjacent coordinates of one sample: permuting samples (rows) changes nothing
    within the blocks when m = d, while permuting coordinates does change the pooled value."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 40)) * np.linspace(0.1, 10, 40)
    base = tail_index(x, pooled=True, block_size=40).alpha
    assert tail_index(x[rng.permutation(50)], pooled=True, block_size=40).alpha == pytest.approx(
        base, rel=1e-12
    )
    flat = x.reshape(-1)
    assert tail_index(flat[:, None], pooled=True, block_size=40).alpha == pytest.approx(base)
    # axis=1 pools the same samples in the same order
    assert tail_index(x.T, axis=1, pooled=True, block_size=40).alpha == pytest.approx(base)


def test_per_coordinate_matches_the_formula_column_by_column():
    rng = np.random.default_rng(2)
    x = sample_stable(1.6, size=(600, 4), rng=rng)
    res = tail_index(x, block_size=20)
    for j in range(4):
        ref = simsekli_alpha_estimator(20, torch.as_tensor(x[:, j : j + 1]))
        assert res.alpha[j] == pytest.approx(float(ref), rel=1e-12)
    assert res.block_size == 20 and res.n_blocks == 30 and not res.pooled


@pytest.mark.parametrize("alpha", [1.1, 1.3, 1.5, 1.7, 1.9, 2.0])
def test_mohammadi_accuracy(alpha):
    """K = 50,000 per coordinate (m = 200, 250 blocks): per-column sd is about 0.02-0.05, so
    the mean of 40 columns must sit within ~0.02 of alpha (4 standard errors)."""
    x = sample_stable(alpha, size=(50_000, 40), rng=int(alpha * 10))
    est = tail_index(x).alpha
    assert abs(est.mean() - alpha) < 0.025, est.mean()
    assert est.std() < 0.07


def test_raw_values_are_not_clipped():
    """Gaussian data sit around 2 and above it in about half the columns."""
    rng = np.random.default_rng(3)
    est = tail_index(rng.standard_normal((400, 2000))).alpha
    assert (est > 2).mean() > 0.3
    assert est.max() > 2.5


def test_pooling_artefact_gaussian_coordinates_look_heavy_tailed():
    """methods.md §8: Gaussian coordinates with log-normally spread scales, pooled, give
    alpha < 2; the per-coordinate estimates stay around 2."""
    rng = np.random.default_rng(4)
    scales = rng.lognormal(0.0, 1.5, size=500)
    x = rng.standard_normal((200, 500)) * scales
    pooled = tail_index(x, pooled=True).alpha
    per = tail_index(x).alpha
    assert pooled < 1.6
    assert abs(np.median(per) - 2.0) < 0.1


def test_block_preconditions():
    x = np.random.default_rng(0).standard_normal((101, 3))  # 101 is prime
    with pytest.raises(InsufficientDataError, match="prime"):
        tail_index(x)
    with pytest.raises(InsufficientDataError, match="prime"):
        tail_index(x[:, :1], pooled=True)  # N = 101
    with pytest.raises(ValueError, match="does not divide"):
        tail_index(x[:100], block_size=7)
    with pytest.raises(ValueError, match=">= 2"):
        tail_index(x[:100], block_size=1)
    with pytest.raises(ValueError, match="at least 2"):
        tail_index(x[:100], block_size=100)
    with pytest.raises(TypeError, match="int"):
        tail_index(x[:100], block_size=2.0)
    with pytest.raises(InsufficientDataError, match="constant"):
        tail_index(np.zeros((100, 2)))
    with pytest.raises(ValueError, match="Hill"):
        tail_index(x[:100], k=10)
    # and a divisible K works with the default rule: 100 -> m = 10
    assert tail_index(x[:100]).block_size == 10


def test_simsekli_block_size_rule():
    assert [simsekli_block_size(n) for n in (1, 2, 12, 97, 100, 2220)] == [1, 1, 3, 1, 10, 37]


def test_hill_against_naive_formula_and_pareto():
    rng = np.random.default_rng(5)
    x = rng.standard_t(3, size=(500, 3))
    res = tail_index(x, method="hill", k=50)
    for j in range(3):
        a = np.sort(np.abs(x[:, j]))[::-1]
        ref = 50 / np.sum(np.log(a[:50] / a[50]))
        assert res.alpha[j] == pytest.approx(ref, rel=1e-12)
    assert res.k == 50 and res.stderr[0] == pytest.approx(res.alpha[0] / math.sqrt(50))
    # Pareto(a): P(X > x) = x^-a exactly; Hill is the MLE
    p = rng.pareto(1.7, size=(50_000, 3)) + 1.0
    est = tail_index(p, method="hill", k=0.2).alpha
    assert np.all(np.abs(est - 1.7) < 0.05)
    assert tail_index(p[:, 0], method="hill").k == round(math.sqrt(50_000))


def test_hill_errors():
    x = np.random.default_rng(0).standard_normal(100)
    with pytest.raises(ValueError, match=r"\[2, 99\]"):
        tail_index(x, method="hill", k=100)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        tail_index(x, method="hill", k=1.5)
    with pytest.raises(ValueError, match="block_size"):
        tail_index(x, method="hill", block_size=10)
    with pytest.raises(ValueError, match="method"):
        tail_index(x, method="pickands")
    with pytest.raises(ValueError, match="NaN"):
        tail_index(np.r_[x, np.inf], method="hill")
