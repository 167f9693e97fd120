"""A zoo of models gradnoise did not write: every one must get exact per-example gradients from
every entry point, or a clear error of gradnoise's own type naming the layer.

Each case builds a float64 model, a loss, inputs and targets. ``expect`` is ``"exact"`` (the
results must equal the naive one-backward-per-example oracle) or ``(error type, regex)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradnoise.errors import LossDecompositionWarning, UnsupportedLayerError

N = 6  # examples per case
D = torch.float64


@dataclasses.dataclass
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, Any, torch.Tensor, torch.Tensor]]
    expect: Any = "exact"
    dropout: str = "error"
    # the oracle runs the model in eval mode (cases whose randomness dropout="eval" switches off)
    oracle_eval: bool = False
    warns: type[Warning] | None = None
    # which batch size the minibatch entry points use (and the chunk size)
    batch: int = 3

    def __repr__(self) -> str:
        return self.name


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cls(n: int = N, c: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=_gen(seed))


def _x(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(N, *shape, generator=_gen(seed), dtype=D)


def _make(model: nn.Module, loss: Any, x: torch.Tensor, y: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    model = model.double()
    for p in model.parameters():  # non-zero everywhere (zero init hides missing terms)
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, dtype=p.dtype, generator=_gen(seed + p.numel())) * 0.5)
    return model, loss, x, y


# -- model parts ------------------------------------------------------------------------------


class TiedLM(nn.Module):
    """Token LM with tied output projection ``h @ emb.weight.T``."""

    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.mix(self.emb(tokens))))
        return (h @ self.emb.weight.T).transpose(1, 2)  # [B, V, T]


class FunctionalReuse(nn.Module):
    """``F.linear(h, self.fc.weight)`` next to ``self.fc(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return self.out(torch.tanh(F.linear(h, self.fc.weight)))


class AppliedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class TimeFirst(nn.Module):
    """``fc(x.transpose(0, 1))``: the Linear sees [T, B, F]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x.transpose(0, 1))).transpose(0, 1)  # back to [B, T, 5]
        return self.out(h.mean(1))


class Folded(nn.Module):
    """``fc(x.reshape(B*T, F))``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f = x.shape
        h = torch.tanh(self.fc(x.reshape(b * t, f))).reshape(b, t, -1)
        return self.out(h.mean(1))


class FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.dropout(torch.tanh(self.fc(x)), 0.3, self.training))


class HardDropout(nn.Module):
    """Dropout that ignores ``self.training``: only dropout='sample' can measure it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(x, 0.3, training=True))


class Attention(nn.Module):
    def __init__(self, dropout: float = 0.0, layer: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.layer = (
            nn.TransformerEncoderLayer(8, 2, 16, dropout=dropout, batch_first=True)
            if layer
            else nn.MultiheadAttention(8, 2, dropout=dropout, batch_first=True)
        )
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = (
            self.layer(h)
            if isinstance(self.layer, nn.TransformerEncoderLayer)
            else self.layer(h, h, h, need_weights=False)[0]
        )
        return self.out(h.mean(1))


class BatchCentred(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(0, keepdim=True))


class KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(input=torch.tanh(self.norm(input=self.fc(input=x))))


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    aux: torch.Tensor


class Structured(nn.Module):
    """Returns a tuple, dict or dataclass; the loss picks the logits."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(5, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> Any:
        h = torch.tanh(self.fc(x))
        logits = self.out(h)
        if self.kind == "tuple":
            return logits, h
        if self.kind == "dict":
            return {"logits": logits, "hidden": h}
        return Output(logits, h)


def _pick(output: Any) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    if isinstance(output, dict):
        return output["logits"]
    return output.logits


class PickLoss(nn.Module):
    def forward(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(_pick(output), target)


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(3, 5, batch_first=True)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


class Branchy(nn.Module):
    """Data-dependent control flow (vmap cannot trace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 3)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.a(r[None]) if float(r.sum()) > 0 else self.b(r[None]) for r in x]
        return torch.cat(rows)


class PositionalParam(nn.Module):
    """A bare Parameter next to covered layers, plus PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 6)
        self.pos = nn.Parameter(torch.zeros(4, 6))
        self.act = nn.PReLU(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act((self.fc(x) + self.pos).mean(1)))


def _seq(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


def _conv_net(conv: nn.Module, x: torch.Tensor) -> nn.Module:
    """``conv``, tanh, flatten, a Linear head sized for input ``x``."""
    conv = conv.double()
    with torch.no_grad():
        width = conv(x).flatten(1).shape[1]
    return _seq(conv, nn.Tanh(), nn.Flatten(), nn.Linear(width, 3)).double()


def _norm(layer: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    return _seq(
        nn.Conv2d(2, 4, 3, padding=1),
        layer,
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * shape[0] * shape[1], 3),
    )


def _spectral(old: bool, train: bool) -> nn.Module:
    fc = nn.Linear(5, 6)
    fc = nn.utils.spectral_norm(fc) if old else nn.utils.parametrizations.spectral_norm(fc)
    model = _seq(fc, nn.Tanh(), nn.Linear(6, 3)).double()
    model.train(train)
    with torch.no_grad():
        model(torch.randn(2, 5, dtype=D))  # power iteration converges a little
    return model


def _weight_norm() -> nn.Module:
    return _seq(nn.utils.parametrizations.weight_norm(nn.Linear(5, 6)), nn.Tanh(), nn.Linear(6, 3))


def _ce(**kw: Any) -> nn.Module:
    return nn.CrossEntropyLoss(**kw)


def _sequence_targets(ignore: int = -100) -> torch.Tensor:
    y = torch.randint(0, 11, (N, 4), generator=_gen(5))
    y[1] = ignore  # example 1: every target ignored
    y[2, 0] = ignore
    return y


def _tokens() -> torch.Tensor:
    return torch.randint(0, 11, (N, 4), generator=_gen(4))


def cases() -> list[Case]:
    random = (UnsupportedLayerError, r"draws random numbers")
    zoo = [
        Case(
            "tied-embedding-lm",
            lambda: _make(TiedLM(), _ce(reduction="sum"), _tokens(), _sequence_targets()),
        ),
        Case("functional-reuse", lambda: _make(FunctionalReuse(), _ce(), _x(4), _cls())),
        Case("applied-twice", lambda: _make(AppliedTwice(), _ce(), _x(4), _cls())),
        Case("time-first", lambda: _make(TimeFirst(), _ce(), _x(5, 4), _cls())),
        Case("time-first-T-equals-chunk", lambda: _make(TimeFirst(), _ce(), _x(3, 4), _cls())),
        Case("time-first-T-equals-probe", lambda: _make(TimeFirst(), _ce(), _x(4, 4), _cls())),
        Case("folded-batch", lambda: _make(Folded(), _ce(), _x(3, 4), _cls())),
        Case("spectral-norm-old-eval", lambda: (_spectral(True, False), _ce(), _x(5), _cls())),
        Case("spectral-norm-param-eval", lambda: (_spectral(False, False), _ce(), _x(5), _cls())),
        Case(
            "spectral-norm-old-train",
            lambda: (_spectral(True, True), _ce(), _x(5), _cls()),
            expect=(UnsupportedLayerError, r"writes to buffer.*weight_u"),
        ),
        Case(
            "spectral-norm-param-train",
            lambda: (_spectral(False, True), _ce(), _x(5), _cls()),
            expect=(UnsupportedLayerError, r"writes to buffer"),
        ),
        Case("weight-norm-param", lambda: _make(_weight_norm(), _ce(), _x(5), _cls())),
        Case(
            "functional-dropout",
            lambda: _make(FunctionalDropout(), _ce(), _x(5), _cls()),
            expect=random,
        ),
        Case(
            "functional-dropout-eval",
            lambda: _make(FunctionalDropout(), _ce(), _x(5), _cls()),
            dropout="eval",
            oracle_eval=True,
        ),
        Case(
            "hard-dropout-eval",
            lambda: _make(HardDropout(), _ce(), _x(5), _cls()),
            dropout="eval",
            expect=(UnsupportedLayerError, r"cannot switch off.*'0'|cannot switch off"),
        ),
        Case(
            "mha-dropout",
            lambda: _make(Attention(0.2), _ce(), _x(4, 3), _cls()),
            expect=(UnsupportedLayerError, r"MultiheadAttention"),
        ),
        Case(
            "mha-dropout-eval",
            lambda: _make(Attention(0.2), _ce(), _x(4, 3), _cls()),
            dropout="eval",
            oracle_eval=True,
        ),
        Case("mha", lambda: _make(Attention(0.0), _ce(), _x(4, 3), _cls())),
        Case(
            "encoder-layer-dropout",
            lambda: _make(Attention(0.1, True), _ce(), _x(4, 3), _cls()),
            expect=random,
        ),
        Case(
            "encoder-layer-eval",
            lambda: _make(Attention(0.1, True), _ce(), _x(4, 3), _cls()),
            dropout="eval",
            oracle_eval=True,
        ),
        Case(
            "batchnorm-no-running-stats-eval",
            lambda: _make(
                _seq(
                    nn.Linear(5, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 3)
                ).eval(),
                _ce(),
                _x(5),
                _cls(),
            ),
            expect=(
                UnsupportedLayerError,
                r"'1' \(BatchNorm1d\) mixes the examples.*batch statistics",
            ),
        ),
        Case(
            "batchnorm-train",
            lambda: _make(
                _seq(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)), _ce(), _x(5), _cls()
            ),
            expect=(UnsupportedLayerError, r"'1' \(BatchNorm1d\) is in training mode"),
        ),
        Case(
            "batchnorm-eval",
            lambda: _make(
                _seq(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).eval(),
                _ce(),
                _x(5),
                _cls(),
            ),
        ),
        Case(
            "scale-grad-by-freq",
            lambda: _make(
                _seq(nn.Embedding(11, 4, scale_grad_by_freq=True), nn.Flatten(), nn.Linear(16, 3)),
                _ce(),
                _tokens(),
                _cls(),
            ),
            expect=(UnsupportedLayerError, r"scale_grad_by_freq"),
        ),
        Case(
            "batch-centred",
            lambda: _make(BatchCentred(), _ce(), _x(5), _cls()),
            expect=(UnsupportedLayerError, r"the model's own forward.*mixes the examples"),
        ),
        Case(
            "ignore-index-sum",
            lambda: _make(TiedLM(), _ce(reduction="sum"), _tokens(), _sequence_targets()),
        ),
        Case(
            "ignore-index-mean",
            lambda: _make(TiedLM(), _ce(), _tokens(), _sequence_targets()),
            warns=LossDecompositionWarning,
        ),
        Case(
            "label-smoothing",
            lambda: _make(FunctionalReuse(), _ce(label_smoothing=0.1), _x(4), _cls()),
        ),
        Case(
            "class-weights-sum",
            lambda: _make(
                AppliedTwice(),
                _ce(weight=torch.tensor([0.5, 2.0, 1.0], dtype=D), reduction="sum"),
                _x(4),
                _cls(),
            ),
        ),
        Case(
            "class-weights-mean",
            lambda: _make(
                AppliedTwice(), _ce(weight=torch.tensor([0.5, 2.0, 1.0], dtype=D)), _x(4), _cls()
            ),
            warns=LossDecompositionWarning,
        ),
        Case("keyword-call", lambda: _make(KeywordCall(), _ce(), _x(5), _cls())),
        Case("tuple-output", lambda: _make(Structured("tuple"), PickLoss(), _x(5), _cls())),
        Case("dict-output", lambda: _make(Structured("dict"), PickLoss(), _x(5), _cls())),
        Case("dataclass-output", lambda: _make(Structured("dataclass"), PickLoss(), _x(5), _cls())),
        Case(
            "sparse-embedding",
            lambda: _make(
                _seq(nn.Embedding(11, 4, sparse=True), nn.Flatten(), nn.Linear(16, 3)),
                _ce(),
                _tokens(),
                _cls(),
            ),
        ),
        Case(
            "embedding-max-norm",
            lambda: _make(
                _seq(nn.Embedding(11, 4, max_norm=1.0), nn.Flatten(), nn.Linear(16, 3)),
                _ce(),
                _tokens(),
                _cls(),
            ),
        ),
        Case(
            "embedding-padding-idx",
            lambda: _make(
                _seq(nn.Embedding(11, 4, padding_idx=0), nn.Flatten(), nn.Linear(16, 3)),
                _ce(),
                _tokens(),
                _cls(),
            ),
        ),
        Case("rnn", lambda: _make(Recurrent(nn.RNN), _ce(), _x(4, 3), _cls())),
        Case("gru", lambda: _make(Recurrent(nn.GRU), _ce(), _x(4, 3), _cls())),
        Case("lstm", lambda: _make(Recurrent(nn.LSTM), _ce(), _x(4, 3), _cls())),
        Case("data-dependent-branch", lambda: _make(Branchy(), _ce(), _x(5), _cls())),
        Case("bare-parameter-prelu", lambda: _make(PositionalParam(), _ce(), _x(4, 3), _cls())),
        Case(
            "rmsnorm",
            lambda: _make(
                _seq(nn.Linear(5, 6), nn.RMSNorm(6), nn.Linear(6, 3)), _ce(), _x(5), _cls()
            ),
        ),
        Case(
            "instancenorm-affine",
            lambda: _make(
                _norm(nn.InstanceNorm2d(4, affine=True), (5, 5)), _ce(), _x(2, 5, 5), _cls()
            ),
        ),
        Case(
            "instancenorm-running-eval",
            lambda: _make(
                _norm(nn.InstanceNorm2d(4, affine=True, track_running_stats=True), (5, 5)).eval(),
                _ce(),
                _x(2, 5, 5),
                _cls(),
            ),
        ),
        Case(
            "groupnorm-layernorm-4d",
            lambda: _make(
                _seq(
                    nn.Conv2d(2, 4, 3),
                    nn.GroupNorm(2, 4),
                    nn.LayerNorm([4, 3, 3]),
                    nn.Tanh(),
                    nn.Flatten(),
                    nn.Linear(36, 3),
                ),
                _ce(),
                _x(2, 5, 5),
                _cls(),
            ),
        ),
        Case(
            "mse-regression",
            lambda: _make(
                _seq(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)),
                nn.MSELoss(),
                _x(5),
                _x(2, seed=9),
            ),
        ),
        Case(
            "huber-regression",
            lambda: _make(
                _seq(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)),
                nn.HuberLoss(),
                _x(5),
                _x(2, seed=9),
            ),
        ),
    ]
    for mode in ("zeros", "reflect", "replicate", "circular"):
        zoo.append(
            Case(
                f"conv2d-padding-{mode}",
                lambda mode=mode: _make(
                    _conv_net(nn.Conv2d(2, 4, 3, padding=1, padding_mode=mode), _x(2, 6, 6)),
                    _ce(),
                    _x(2, 6, 6),
                    _cls(),
                ),
            )
        )
        zoo.append(
            Case(
                f"conv1d-padding-{mode}",
                lambda mode=mode: _make(
                    _conv_net(
                        nn.Conv1d(2, 4, 3, padding=2, dilation=2, padding_mode=mode), _x(2, 9)
                    ),
                    _ce(),
                    _x(2, 9),
                    _cls(),
                ),
            )
        )
    zoo += [
        Case(
            "conv2d-stride-dilation-groups",
            lambda: _make(
                _conv_net(
                    nn.Conv2d(4, 6, 3, stride=2, dilation=2, groups=2, padding=1), _x(4, 9, 9)
                ),
                _ce(),
                _x(4, 9, 9),
                _cls(),
            ),
        ),
        Case(
            "conv2d-same-even-kernel",
            lambda: _make(
                _conv_net(nn.Conv2d(2, 3, 4, padding="same"), _x(2, 6, 6)),
                _ce(),
                _x(2, 6, 6),
                _cls(),
            ),
        ),
        Case(
            "conv3d",
            lambda: _make(
                _conv_net(nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1), _x(2, 4, 4, 3)),
                _ce(),
                _x(2, 4, 4, 3),
                _cls(),
            ),
        ),
        Case(
            "conv-transpose1d",
            lambda: _make(
                _conv_net(
                    nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1), _x(2, 5)
                ),
                _ce(),
                _x(2, 5),
                _cls(),
            ),
        ),
        Case(
            "conv-transpose2d-groups",
            lambda: _make(
                _conv_net(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, dilation=2), _x(4, 4, 4)),
                _ce(),
                _x(4, 4, 4),
                _cls(),
            ),
        ),
    ]
    return zoo


CASES = cases()
BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES)
