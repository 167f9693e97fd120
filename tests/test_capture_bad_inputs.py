"""Bad inputs to the capture entry points: each a clear error naming the problem (table-driven)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradnoise
from gradnoise.errors import GradnoiseError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))


X = torch.randn(6, 3)
Y = torch.tensor([0, 1, 2, 3, 0, 1])
CE = nn.CrossEntropyLoss()


def _nan_x():
    x = X.clone()
    x[2, 1] = math.nan
    return x


def _psg(**kw):
    args = {"model": _mlp(), "loss_fn": CE, "inputs": X, "targets": Y} | kw
    return lambda: gradnoise.per_sample_grads(
        args.pop("model"), args.pop("loss_fn"), args.pop("inputs"), args.pop("targets"), **args
    )


def _full(data=(X, Y), **kw):
    return lambda: gradnoise.full_grad(_mlp(), kw.pop("loss_fn", CE), data, **kw)


def _mini(**kw):
    return lambda: gradnoise.minibatch_grads(_mlp(), CE, (X, Y), **kw)


def _frozen() -> nn.Module:
    model = _mlp()
    model[0].weight.requires_grad_(False)
    return model


class _DictData(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"x": X[i]}, Y[i]


class _Squeeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(x).squeeze()


class _NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(x) * torch.tensor(math.nan)


ROWS = [
    # (id, call, error type, words)
    (
        "target above classes",
        _psg(targets=torch.tensor([0, 1, 9, 3, 0, 1])),
        ValueError,
        "target 9 is not a class index of the model's 4 outputs",
    ),
    ("target -1", _psg(targets=torch.tensor([0, -1, 2, 3, 0, 1])), ValueError, "target -1"),
    ("float class targets", _psg(targets=Y.float()), ValueError, "targets.long()"),
    ("targets of another length", _psg(targets=Y[:4]), ValueError, "same leading"),
    ("NaN input", _psg(inputs=_nan_x()), ValueError, "NaN or Inf"),
    ("no examples", _psg(inputs=X[:0], targets=Y[:0]), ValueError, "no examples"),
    ("scalar inputs", _psg(inputs=torch.tensor(1.0)), ValueError, "leading"),
    ("not tensors", _psg(inputs=X.numpy()), TypeError, "must be tensors"),
    (
        "loss returns a float",
        _psg(loss_fn=lambda o, t: float(o.sum().detach())),
        TypeError,
        "must return a tensor",
    ),
    (
        "loss with reduction none",
        _psg(loss_fn=nn.CrossEntropyLoss(reduction="none"), inputs=X, targets=Y),
        None,
        None,
    ),
    ("chunk size 0", _psg(chunk_size=0), ValueError, "chunk_size"),
    ("int32 class targets", _psg(targets=Y.int()), GradnoiseError, "targets.long"),
    (
        "a frozen parameter selected",
        lambda: gradnoise.per_sample_grads(
            _frozen(), CE, X, Y, params=gradnoise.select_params(_mlp())
        ),
        ValueError,
        "frozen",
    ),
    ("dict inputs from a Dataset", _full(data=_DictData()), GradnoiseError, "pairs of tensors"),
    (
        "one-hot targets",
        _psg(targets=torch.nn.functional.one_hot(Y, 4)),
        GradnoiseError,
        "one-hot labels",
    ),
    (
        "float64 inputs to a float32 model",
        _psg(inputs=X.double()),
        GradnoiseError,
        "inputs are torch.float64 but the model's parameters torch.float32",
    ),
    (
        "inputs of the wrong width",
        _psg(inputs=torch.randn(6, 7)),
        GradnoiseError,
        r"forward fails on examples of shape \(7,\)",
    ),
    (
        "full_grad with wrong-width inputs",
        _full(data=(torch.randn(6, 7), Y)),
        GradnoiseError,
        "forward fails",
    ),
    ("unknown backend", _psg(backend="jax"), ValueError, "backend"),
    ("unknown dropout", _psg(dropout="off"), ValueError, "dropout"),
    ("out of the wrong shape", _psg(out=torch.empty(6, 3)), ValueError, "out must be"),
    (
        "out of the wrong dtype",
        _psg(out=torch.empty(6, 44, dtype=torch.float64)),
        ValueError,
        "out must be",
    ),
    ("unknown parameter glob", _psg(params="head.*"), ValueError, "no parameter matches"),
    ("params of a wrong type", _psg(params=3), TypeError, "params must be"),
    ("device without the model", _psg(device="meta"), ValueError, "model.to"),
    (
        "NaN parameters",
        _psg(model=_NaNModel(), targets=torch.tensor([0, 1, 2, 3, 0, 1])),
        FloatingPointError,
        "NaN",
    ),
    (
        "squeezed output",
        _psg(model=_Squeeze(), loss_fn=nn.MSELoss(), targets=torch.randn(6)),
        GradnoiseError,
        "0-d tensor: outputs need a leading example dimension",
    ),
    ("full_grad on no data", _full(data=(X[:0], Y[:0])), ValueError, "need at least 1"),
    ("full_grad on a list", _full(data=[X, Y]), TypeError, "an \\(X, y\\) tuple"),
    ("full_grad batch size 0", _full(batch_size=0), ValueError, "batch_size"),
    ("full_grad mismatched pair", _full(data=(X, Y[:3])), ValueError, "different numbers"),
    (
        "minibatch larger than data",
        _mini(batch_size=7, num_batches=2),
        ValueError,
        "need at least 7",
    ),
    ("zero minibatches", _mini(batch_size=2, num_batches=0), ValueError, "num_batches"),
]


@pytest.mark.parametrize(("call", "kind", "words"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(call, kind, words):
    if kind is None:  # accepted: computes without error (the definition covers it)
        call()
        return
    with pytest.raises(kind, match=words) as info:
        call()
    assert "Traceback" not in str(info.value)
    if kind is not TypeError:
        assert isinstance(info.value, (GradnoiseError, ValueError))
