"""Per-example gradients against the naive one-backward-per-example loop (float64, rtol 1e-10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradnoise
from cases import LOSSES, MODEL_CASES, make_case
from gradnoise.capture import choose_backend
from gradnoise.errors import NonFiniteGradientError, UnsupportedLayerError
from gradnoise.testing import naive_per_sample_grads


def assert_close(actual, expected, rtol=1e-10):
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize(("model", "dataset"), MODEL_CASES)
@pytest.mark.parametrize("backend", ["structured", "func"])
def test_matches_naive_loop(model, dataset, loss, backend):
    net, loss_fn, x, y = make_case(model, dataset, loss)
    expected = naive_per_sample_grads(net, loss_fn, x, y)
    actual = gradnoise.per_sample_grads(net, loss_fn, x, y, backend=backend, chunk_size=4)
    assert actual.shape == (x.shape[0], sum(p.numel() for p in net.parameters()))
    assert_close(actual, expected)


@pytest.mark.parametrize(("model", "dataset"), MODEL_CASES)
def test_builtin_models_use_structured_backend(model, dataset):
    net, *_ = make_case(model, dataset)
    assert choose_backend(net, gradnoise.select_params(net)) == "structured"


@pytest.mark.parametrize("backend", ["structured", "func"])
def test_coordinate_subset_and_globs(backend):
    net, loss_fn, x, y = make_case("transformer", "digits")
    full = naive_per_sample_grads(net, loss_fn, x, y)
    sel = gradnoise.select_params(net, coords=300, seed=3)
    sub = gradnoise.per_sample_grads(net, loss_fn, x, y, params=sel, backend=backend)
    # map every selected column back to (name, index) and read the full gradient there
    names = [n for n, _ in net.named_parameters()]
    offsets = np.cumsum([0] + [p.numel() for p in net.parameters()])
    shapes = {n: p.shape for n, p in net.named_parameters()}
    cols = [
        offsets[names.index(n)] + np.ravel_multi_index(i, shapes[n])
        for n, i in sel.locate(range(300))
    ]
    assert_close(sub, full[:, cols])
    only = gradnoise.per_sample_grads(net, loss_fn, x, y, params="blocks.0.attn.*", backend=backend)
    expected_cols = [
        c
        for n, p in net.named_parameters()
        if n.startswith("blocks.0.attn.")
        for c in range(offsets[names.index(n)], offsets[names.index(n)] + p.numel())
    ]
    assert_close(only, full[:, expected_cols])


def test_chunking_and_out_buffer_give_same_result():
    net, loss_fn, x, y = make_case("lenet", "digits", n=11)
    ref = gradnoise.per_sample_grads(net, loss_fn, x, y)
    out = torch.full_like(ref, float("nan"))
    res = gradnoise.per_sample_grads(net, loss_fn, x, y, chunk_size=3, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert_close(res, ref)
    with pytest.raises(ValueError, match="out must be"):
        gradnoise.per_sample_grads(net, loss_fn, x, y, out=torch.empty(3, 3, dtype=torch.float64))


class _Shared(nn.Module):
    """Weight tying and a layer used twice: the structured backend must not be chosen for tying."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.c = nn.Linear(5, 3)

    def forward(self, x):
        return self.c(torch.tanh(self.a(torch.tanh(self.a(x)))) + self.b(x))


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(5, dtype=torch.float64))
        self.fc = nn.Linear(5, 3)
        self.unused = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(torch.sin(x * self.scale))


@pytest.mark.parametrize("factory", [_Shared, _Custom])
def test_shared_custom_and_unused_parameters(factory):
    torch.manual_seed(0)
    net = factory().double()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    ref = naive_per_sample_grads(net, loss_fn, x, y)
    assert_close(gradnoise.per_sample_grads(net, loss_fn, x, y), ref)
    if factory is _Custom:  # the Linear layers alone are structured; unused layer gives zeros
        sub = gradnoise.per_sample_grads(
            net, loss_fn, x, y, params=["fc.*", "unused.*"], backend="structured"
        )
        assert_close(sub[:, :18], ref[:, 5:23])
        assert torch.count_nonzero(sub[:, 18:]) == 0
    else:
        assert choose_backend(net, gradnoise.select_params(net)) == "func"
        with pytest.raises(ValueError, match="backend='func'"):
            gradnoise.per_sample_grads(net, loss_fn, x, y, backend="structured")


def test_layer_called_twice_accumulates():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = net

        def forward(self, x):
            return self.body(self.body(x))

    model = Twice()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    assert_close(
        gradnoise.per_sample_grads(model, loss_fn, x, y, backend="structured"),
        naive_per_sample_grads(model, loss_fn, x, y),
    )


@pytest.mark.parametrize(
    "layer",
    [
        lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2),
        lambda: nn.Conv2d(2, 4, (2, 3), dilation=2, padding=1),
        lambda: nn.Conv1d(2, 4, 3, padding="same"),
        lambda: nn.Conv1d(2, 4, 4, padding="same"),  # even kernel: falls back to func
        lambda: nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"),  # falls back
        lambda: nn.GroupNorm(2, 2),
        lambda: nn.LayerNorm([2, 6]),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_layer_configurations(layer):
    torch.manual_seed(0)
    first = layer().double()
    is_1d = isinstance(first, nn.Conv1d)
    shape = (2, 6) if is_1d or isinstance(first, nn.LayerNorm) else (2, 6, 6)
    net = nn.Sequential(first, nn.Flatten(), nn.LazyLinear(3)).double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    net(x)  # materialise the lazy layer
    y = torch.randint(0, 3, (4,))
    loss_fn = nn.CrossEntropyLoss()
    assert_close(
        gradnoise.per_sample_grads(net, loss_fn, x, y), naive_per_sample_grads(net, loss_fn, x, y)
    )


def test_embedding_padding_idx_and_repeated_tokens():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(7, 3, padding_idx=0), nn.Flatten(), nn.Linear(12, 2)).double()
    x = torch.tensor([[0, 1, 1, 2], [3, 3, 3, 0], [6, 5, 4, 1]])
    y = torch.tensor([0, 1, 1])
    loss_fn = nn.CrossEntropyLoss()
    got = gradnoise.per_sample_grads(net, loss_fn, x, y, backend="structured")
    assert_close(got, naive_per_sample_grads(net, loss_fn, x, y))
    assert torch.count_nonzero(got[:, :3]) == 0  # the padding row never gets a gradient


def test_batchnorm_train_mode_is_refused_with_fixes():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    with pytest.raises(UnsupportedLayerError, match=r"'1'.*BatchNorm1d.*model.eval\(\).*GroupNorm"):
        gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y)
    net.eval()  # running statistics: well defined, handled by the generic backend
    assert_close(
        gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y),
        naive_per_sample_grads(net, nn.CrossEntropyLoss(), x, y),
    )


def test_dropout_needs_an_explicit_choice():
    net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(UnsupportedLayerError, match="dropout='eval'"):
        gradnoise.per_sample_grads(net, loss_fn, x, y)
    evaluated = gradnoise.per_sample_grads(net, loss_fn, x, y, dropout="eval")
    assert net[1].training  # restored
    net.eval()
    assert_close(evaluated, naive_per_sample_grads(net, loss_fn, x, y))
    net.train()
    sampled = gradnoise.per_sample_grads(net, loss_fn, x, y, dropout="sample")
    assert torch.isfinite(sampled).all() and not torch.allclose(sampled, evaluated)


def test_bad_inputs_have_clear_errors():
    net, loss_fn, x, y = make_case("mlp", "digits")
    with pytest.raises(ValueError, match="same leading"):
        gradnoise.per_sample_grads(net, loss_fn, x, y[:-1])
    bad = x.clone()
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        gradnoise.per_sample_grads(net, loss_fn, bad, y)
    with pytest.raises(ValueError, match="not a parameter"):
        gradnoise.per_sample_grads(
            net, loss_fn, x, y, params=gradnoise.select_params(nn.Linear(2, 2), "weight")
        )
    with pytest.raises(ValueError, match="no parameter matches"):
        gradnoise.per_sample_grads(net, loss_fn, x, y, params="nothing*")
    with pytest.raises(ValueError, match="single value"):
        gradnoise.per_sample_grads(net, lambda o, t: (o - 1) ** 2, x, y)
    with pytest.raises(ValueError, match=r"model\.to"):
        gradnoise.per_sample_grads(net, loss_fn, x, y, device="meta")


@pytest.mark.parametrize("backend", ["structured", "func"])
def test_non_finite_gradients_name_the_parameter(backend):
    net, loss_fn, x, y = make_case("mlp", "digits")
    with torch.no_grad():
        net[3].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteGradientError, match=r"'3\.weight'"):
        gradnoise.per_sample_grads(net, loss_fn, x, y, backend=backend)


def test_integer_targets_with_mean_loss_are_unscaled():
    """A mean-reduced loss gives the same per-example gradients as a sum-reduced one."""
    net, _, x, y = make_case("mlp", "mnist1d", n=9)
    mean = gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(), x, y)
    total = gradnoise.per_sample_grads(net, nn.CrossEntropyLoss(reduction="sum"), x, y)
    assert_close(mean, total)
    batch_loss = nn.CrossEntropyLoss()(net(x), y)
    batch_grad = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(batch_loss, list(net.parameters()))]
    )
    assert_close(mean.mean(0), batch_grad)


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(),
        nn.CrossEntropyLoss(reduction="sum"),
        nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1),
        nn.CrossEntropyLoss(reduction="sum", ignore_index=2),
        nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2, 5, dtype=torch.float64)),
        nn.MSELoss(),
        nn.MSELoss(reduction="sum"),
    ],
)
def test_per_example_loss_closed_forms_match_the_batch_of_one_definition(loss_fn):
    from gradnoise.capture._common import per_example_losses

    gen = torch.Generator().manual_seed(0)
    out = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        target = torch.tensor([0, 1, 2, 3, 4, 2, 1, 0, 3])
    else:
        target = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    fast = per_example_losses(loss_fn, out, target)
    generic = per_example_losses(lambda o, t: loss_fn(o, t), out, target)  # not a known module
    expected = torch.stack(
        [loss_fn(out[i : i + 1], target[i : i + 1]).reshape(()) for i in range(9)]
    )
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(generic, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_on_sequence_outputs_is_one_loss_per_example(reduction):
    """[B, C, T] logits: an example's loss is CE over its T tokens (mean or sum), not T losses."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5)).double()

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):  # [B, T, 4] -> [B, 5, T]
            return self.net(x).transpose(1, 2)

    model, loss_fn = Seq(), nn.CrossEntropyLoss(reduction=reduction)
    x, y = torch.randn(6, 3, 4, dtype=torch.float64), torch.randint(0, 5, (6, 3))
    expected = naive_per_sample_grads(model, loss_fn, x, y)
    for backend in ("auto", "func"):
        got = gradnoise.per_sample_grads(model, loss_fn, x, y, backend=backend)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradnoise.full_grad(model, loss_fn, (x, y)), expected.mean(0))


@pytest.mark.parametrize("dtype", [torch.long, torch.float64])
def test_transformer_with_a_vocabulary_takes_token_ids(dtype):
    """Token ids as integers or as integral floats (how an .npz X arrives) select embeddings."""
    net = gradnoise.build_model("transformer", (6,), 3, seed=0, dtype=torch.float64, dim=8,
                                depth=1, vocab=5)  # fmt: skip
    x = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(0)).to(dtype)
    y = torch.tensor([0, 1, 2, 1])
    loss_fn = nn.CrossEntropyLoss()
    expected = naive_per_sample_grads(net, loss_fn, x, y)
    got = gradnoise.per_sample_grads(net, loss_fn, x, y)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
