"""Every zoo model through every entry point: exact against the naive loop, or a clear error."""

from __future__ import annotations

import contextlib
import os
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradnoise
from gradnoise.clustering import GradientClusteringSampler
from gradnoise.errors import GradnoiseError, PerSampleFallbackWarning
from gradnoise.spectra import covariance_spectrum as spectrum_of
from gradnoise.testing import naive_per_sample_grads
from zoo import BY_NAME, CASES, Case, TiedLM

RTOL = 1e-10
#: The zoo runs on the CPU in CI; GRADNOISE_TEST_DEVICE=cuda runs it on a GPU (same oracle).
DEVICE = torch.device(os.environ.get("GRADNOISE_TEST_DEVICE", "cpu"))
ENTRY_POINTS = [
    "per_sample_grads",
    "full_grad",
    "minibatch_grads",
    "gradient_noise",
    "covariance_spectrum",
    "clustering",
]


def on_device(built):
    model, loss_fn, x, y = built
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(DEVICE)
    return model.to(DEVICE), loss_fn, x.to(DEVICE), y.to(DEVICE)


def assert_close(actual, expected, rtol=RTOL):
    actual = torch.as_tensor(actual).to("cpu", torch.float64)
    expected = torch.as_tensor(expected).to("cpu", torch.float64)
    scale = max(float(expected.abs().max()), 1e-300)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def oracle(case: Case, model, loss_fn, x, y):
    flags = [m.training for m in model.modules()]
    if case.oracle_eval:
        model.eval()
    try:
        return naive_per_sample_grads(model, loss_fn, x, y)
    finally:
        for m, flag in zip(model.modules(), flags, strict=True):
            m.training = flag


def minibatch_rows(n, batch, num, seed):
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=batch, replace=False) for _ in range(num)]


def run_entry(entry: str, case: Case, model, loss_fn, x, y):
    """The entry point's result and what the oracle says it must be (a function of G)."""
    kw = {"dropout": case.dropout}
    b = case.batch
    if entry == "per_sample_grads":
        got = gradnoise.per_sample_grads(model, loss_fn, x, y, chunk_size=b, **kw)
        return got, lambda g: g
    if entry == "full_grad":
        got = gradnoise.full_grad(model, loss_fn, (x, y), batch_size=b, **kw)
        return got, lambda g: g.mean(0)
    if entry in ("minibatch_grads", "gradient_noise"):
        fn = getattr(gradnoise, entry)
        got = fn(model, loss_fn, (x, y), batch_size=b, num_batches=3, seed=4, **kw)
        batches = minibatch_rows(x.shape[0], b, 3, 4)

        def expected(g):
            rows = torch.stack([g[torch.as_tensor(i, device=g.device)].mean(0) for i in batches])
            return rows - g.mean(0) if entry == "gradient_noise" else rows

        return got, expected
    if entry == "covariance_spectrum":
        got = gradnoise.covariance_spectrum(model, loss_fn, x, y, block_size=b, **kw)
        return got, lambda g: spectrum_of(g.cpu().numpy())
    sampler = GradientClusteringSampler(
        model, loss_fn, (x, y), batch_size=2, num_clusters=2, rng=0, chunk_size=b, **kw
    )
    sampler.recluster()
    got = sampler.clustering.distances(x, y)
    centres = sampler.clustering.centers().to(torch.float64)
    return got, lambda g: ((g[:, None, :] - centres[None]) ** 2).sum(-1)


@contextlib.contextmanager
def expected_warnings(case: Case):
    """Fallback notices are allowed; the case's own warning must appear; anything else fails."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    # torch's own notice about its 'same' padding of even kernels is not ours to judge
    seen = [w for w in seen if not str(w.message).startswith("Using padding='same'")]
    kinds = {type(w.message) for w in seen}
    allowed = {PerSampleFallbackWarning} | ({case.warns} if case.warns else set())
    unexpected = [str(w.message) for w in seen if type(w.message) not in allowed]
    assert not unexpected, unexpected
    if case.warns is not None:
        assert case.warns in kinds, f"expected a {case.warns.__name__}"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_zoo(case: Case, entry: str):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same'")
        model, loss_fn, x, y = on_device(case.build())
    if case.expect != "exact":
        kind, words = case.expect
        with pytest.raises(kind, match=words) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore", PerSampleFallbackWarning)
            run_entry(entry, case, model, loss_fn, x, y)
        assert isinstance(info.value, GradnoiseError)
        return
    with expected_warnings(case):
        g = oracle(case, model, loss_fn, x, y)
        got, expected = run_entry(entry, case, model, loss_fn, x, y)
    want = expected(g)
    if entry == "covariance_spectrum":  # eigenvalues: relative to the largest
        assert_close(got, want, rtol=1e-8)
    else:
        assert_close(got, want)


def test_zoo_is_broad():
    """The zoo covers what the issue lists (a guard against cases silently dropped)."""
    names = " ".join(BY_NAME)
    for word in [
        "tied",
        "reuse",
        "time-first",
        "folded",
        "spectral",
        "weight-norm",
        "functional-dropout",
        "mha-dropout",
        "encoder-layer",
        "batchnorm",
        "scale-grad",
        "batch-centred",
        "keyword",
        "tuple",
        "dict",
        "dataclass",
        "sparse",
        "ignore-index",
        "label-smoothing",
        "class-weights",
        "rnn",
        "gru",
        "lstm",
        "padding-reflect",
        "padding-circular",
        "padding-replicate",
        "conv3d",
        "conv-transpose",
        "rmsnorm",
        "instancenorm",
        "prelu",
        "stride-dilation-groups",
        "data-dependent",
    ]:
        assert re.search(word, names), word


def test_routes_of_tricky_parameters():
    """The audit sends exactly the parameters it cannot prove to the general path."""
    _, loss_fn, x, y = BY_NAME["tied-embedding-lm"].build()
    model = TiedLM(11, 16).double()  # the rules cover most coordinates: two routes
    audit = gradnoise.audit_model(model, loss_fn, x, y)
    assert audit.path("emb.weight") == "func" and "outside 'emb'" in str(audit)
    assert audit.path("mix.weight") == "structured"
    model, loss_fn, x, y = BY_NAME["time-first-T-equals-probe"].build()
    audit = gradnoise.audit_model(model, loss_fn, x, y)
    assert audit.path("fc.weight") == "func" and "rule differs" in str(audit)
    # out.weight could take its rule, but covers less than half the coordinates: one func pass
    assert audit.path("out.weight") == "func" and "cheaper" in str(audit)
    model, loss_fn, x, y = BY_NAME["gru"].build()
    with pytest.warns(PerSampleFallbackWarning, match="per-example loop"):
        audit = gradnoise.audit_model(model, loss_fn, x, y)
    assert set(audit.names("loop")) == {n for n, _ in model.rnn.named_parameters(prefix="rnn")}
    assert audit.path("out.weight") == "structured"
    model, loss_fn, x, y = BY_NAME["spectral-norm-old-eval"].build()
    audit = gradnoise.audit_model(model, loss_fn, x, y)
    assert audit.path("0.weight_orig") == "func"
    assert "Linear has no rule for its parameter 'weight_orig'" in str(audit)


def test_dropout_sample_draws_one_mask_per_example():
    """dropout='sample': duplicated examples get different rows; eval-mode rows are not drawn."""
    model, loss_fn, x, y = BY_NAME["mha-dropout-eval"].build()
    x2, y2 = torch.cat([x[:1]] * 6), torch.cat([y[:1]] * 6)
    torch.manual_seed(0)
    rows = gradnoise.per_sample_grads(model, loss_fn, x2, y2, dropout="sample")
    assert len({tuple(r.tolist()) for r in rows}) == 6
    assert model.layer.training  # nothing switched permanently
    fixed = gradnoise.per_sample_grads(model, loss_fn, x2, y2, dropout="eval")
    assert_close(fixed, fixed[:1].expand_as(fixed))


def test_random_ops_named_in_error():
    model, loss_fn, x, y = BY_NAME["encoder-layer-dropout"].build()
    with pytest.raises(GradnoiseError) as info:
        gradnoise.per_sample_grads(model, loss_fn, x, y)
    text = str(info.value)
    assert "'layer.self_attn' (MultiheadAttention)" in text and "'layer.dropout1'" in text
    assert "dropout='eval'" in text


def test_audit_restores_buffers_and_rng():
    model, loss_fn, x, y = BY_NAME["spectral-norm-old-train"].build()
    before = {n: b.clone() for n, b in model.named_buffers()}
    state = torch.get_rng_state()
    with pytest.raises(GradnoiseError):
        gradnoise.full_grad(model, loss_fn, (x, y))
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    assert torch.equal(torch.get_rng_state(), state)


class _Toggle(nn.Module):
    """Changes what its forward does after the audit has been cached (a flag the audit's cache
    key cannot see): only the per-chunk checks can notice."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, 3)
        self.mode = "plain"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "time-first":  # [B, T, F] seen as [T, B, F] by fc
            h = torch.tanh(self.fc(x.transpose(0, 1))).transpose(0, 1).mean(1)
            return self.out(h)
        h = torch.tanh(self.fc(x.mean(1)))
        if self.mode == "tied":
            h = h + torch.tanh(F.linear(h, self.fc.weight))
        return self.out(h)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["tied", "time-first"])
def test_structured_rule_steps_aside_when_the_forward_changes(mode, dtype):
    torch.manual_seed(0)
    width = 4 if dtype == torch.float64 else 96
    model = _Toggle(width).to(dtype)
    n, t = 12, 3
    x = torch.randn(n, t, width, dtype=dtype)
    y = torch.randint(0, 3, (n,))
    loss_fn = nn.CrossEntropyLoss()
    gradnoise.per_sample_grads(model, loss_fn, x, y, chunk_size=t)  # audit cached: all structured
    assert gradnoise.audit_model(model, loss_fn, x, y).path("fc.weight") == "structured"
    model.mode = mode
    expected = naive_per_sample_grads(model, loss_fn, x, y)
    with pytest.warns(PerSampleFallbackWarning, match="stepped aside"):
        got = gradnoise.per_sample_grads(model, loss_fn, x, y, chunk_size=t)
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    assert_close(got, expected, rtol=rtol)
    # the demotion is remembered: the next call takes the general path without a notice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = gradnoise.per_sample_grads(model, loss_fn, x, y, chunk_size=t)
    assert_close(again, expected, rtol=rtol)


@pytest.mark.parametrize("factor", ["always", "never"])
@pytest.mark.parametrize("mode", ["tied", "time-first"])
def test_gram_steps_aside_when_the_forward_changes(mode, factor):
    torch.manual_seed(0)
    model = _Toggle(6).double()
    x, y = torch.randn(9, 3, 6, dtype=torch.float64), torch.randint(0, 3, (9,))
    loss_fn = nn.CrossEntropyLoss()
    gradnoise.covariance_spectrum(model, loss_fn, x, y, factor=factor, block_size=3)
    model.mode = mode
    expected = spectrum_of(naive_per_sample_grads(model, loss_fn, x, y).numpy())
    with pytest.warns(PerSampleFallbackWarning, match="stepped aside in the Gram"):
        got = gradnoise.covariance_spectrum(model, loss_fn, x, y, factor=factor, block_size=3)
    assert_close(got, expected, rtol=1e-8)


def test_random_op_detection_reads_each_op_s_own_arguments():
    """An op tagged random draws only with a non-zero dropout (cuDNN's RNN, found on a GPU run:
    `aten._cudnn_rnn` carries `dropout`/`train`; SDPA kernels default `dropout_p` to 0)."""
    from gradnoise.capture.audit import _draws_random

    rnn = torch.ops.aten._cudnn_rnn.default
    assert not _draws_random(rnn, (), {"dropout": 0.0, "train": True})
    assert _draws_random(rnn, (), {"dropout": 0.25, "train": True})
    assert not _draws_random(rnn, (), {"dropout": 0.25, "train": False})
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    q = torch.zeros(1, 1, 2, 2)
    assert not _draws_random(sdpa, (q, q, q), {})
    assert _draws_random(sdpa, (q, q, q, 0.1), {})
    assert _draws_random(torch.ops.aten.bernoulli_.float, (q, 0.5), {})
    assert not _draws_random(torch.ops.aten.native_dropout.default, (q, 0.5, False), {})
