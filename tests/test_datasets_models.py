"""Built-in datasets and models: offline, seeded, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import gradnoise
from gradnoise.datasets import as_tensors


def test_digits_and_mnist1d_are_offline_and_seeded():
    d = gradnoise.load_dataset("digits", seed=0)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    x, _ = as_tensors(d.train)
    assert (
        x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and len(x) + len(d.test) == 1797
    )
    again = gradnoise.load_dataset("digits", seed=0)
    assert torch.equal(as_tensors(again.train)[0], x)
    state = np.random.get_state()  # noqa: NPY002 - checking that mnist1d leaves it alone
    m = gradnoise.load_dataset("mnist1d", seed=0, num_samples=1000)
    assert np.array_equal(np.random.get_state()[1], state[1])  # noqa: NPY002
    assert m.input_shape == (1, 40) and len(m.train) == 800 and len(m.test) == 200
    m2 = gradnoise.load_dataset("mnist1d", seed=1, num_samples=1000)
    assert not torch.equal(as_tensors(m.train)[0], as_tensors(m2.train)[0])


def test_npz_and_user_dataset(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(50, 3, 4)), y=rng.integers(0, 4, 50))
    d = gradnoise.load_dataset(tmp_path / "d.npz")
    assert d.input_shape == (3, 4) and len(d.train) == 40 and len(d.test) == 10
    np.savez(tmp_path / "bad.npz", X=rng.normal(size=(5, 2)))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['y'\]"):
        gradnoise.load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "nan.npz", X=np.full((5, 2), np.nan), y=np.arange(5) % 2)
    with pytest.raises(ValueError, match="NaN"):
        gradnoise.load_dataset(tmp_path / "nan.npz")

    class Squares(Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i % 3

    w = gradnoise.load_dataset(Squares())
    assert w.num_classes == 3 and w.input_shape == (2,) and len(w.train) == 16
    x, y = as_tensors(w.train)
    assert x.shape == (16, 2) and y.dtype == torch.int64


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros((5, 2)), np.array(list("abcab")), "integer class labels"),
        (np.zeros((5, 2)), np.array([0, 1, 2.5, 1, 0]), "integer class labels"),
        (np.zeros((5, 2)), np.array([0, -1, 2, 1, 0]), ">= 0"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "at least 2 examples"),
    ],
)
def test_bad_npz_labels_and_sizes_are_named(tmp_path, X, y, message):
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(ValueError, match=message):
        gradnoise.load_dataset(tmp_path / "d.npz")


class _Numpy64(Dataset):
    """The most common hand-written Dataset: float64 numpy inputs, Python int labels."""

    def __init__(self, labels):
        self.x = np.random.default_rng(0).normal(size=(len(labels), 1, 8, 8))
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def test_user_dataset_of_float64_numpy_items_runs_a_study(tmp_path):
    from gradnoise.study import StudyConfig, run_study

    config = StudyConfig(
        steps=3, checkpoints=2, per_sample_examples=8, noise_batches=2, batch_size=8,
        track_coords=50, analyses=("training", "gradients"),
    )  # fmt: skip
    run = run_study(config, tmp_path / "r", dataset=_Numpy64([i % 4 for i in range(60)]))
    assert (run / "report.html").exists()
    x, y = as_tensors(gradnoise.load_dataset(_Numpy64([0, 1] * 5)).train)
    assert x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.mark.parametrize(("labels", "message"), [([0, -1] * 5, ">= 0"), ([0, 1.5] * 5, "integer")])
def test_user_dataset_labels_are_checked(labels, message):
    with pytest.raises(ValueError, match=message):
        gradnoise.load_dataset(_Numpy64(labels))


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet", "transformer"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
def test_models_are_seeded_and_leave_global_rng_alone(name, shape):
    before = torch.random.get_rng_state()
    a = gradnoise.build_model(name, shape, 10, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = gradnoise.build_model(name, shape, 10, seed=5)
    c = gradnoise.build_model(name, shape, 10, seed=6)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a(torch.randn(3, *shape)).shape == (3, 10)


def test_unknown_model():
    with pytest.raises(ValueError, match="built-in models"):
        gradnoise.build_model("vgg", (1, 8, 8), 10)
