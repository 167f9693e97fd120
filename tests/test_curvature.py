"""gradnoise.curvature: covariance spectra from a model (layer-factored Gram) and Hessian spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import gradnoise
from gradnoise import build_model, per_sample_grads, select_params
from gradnoise.curvature import (
    HessianOperator,
    per_sample_gram,
    reinitialized,
    shuffled_labels,
    spectrum_baselines,
)
from gradnoise.errors import (
    InsufficientDataError,
    NonFiniteGradientError,
    UnsupportedLayerError,
)
from gradnoise.spectra import covariance_spectrum as array_spectrum
from gradnoise.spectra.krylov import _probes
from gradnoise.testing import naive_per_sample_grads

CE = nn.CrossEntropyLoss()
SHAPES = [(1, 8, 8), (1, 40)]


def _data(shape, n, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen, dtype=dtype), torch.randint(
        0, 10, (n,), generator=gen
    )


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------- Gram matrix -------------


@pytest.mark.parametrize("shape", SHAPES, ids=["digits", "mnist1d"])
@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet", "transformer"])
def test_layer_factored_gram_equals_materialised_gram_on_builtin_models(name, shape):
    model = build_model(name, shape, 10, dtype=torch.float64)
    x, y = _data(shape, 11)
    G = per_sample_grads(model, CE, x, y).numpy()
    want = G @ G.T
    assert _rel(per_sample_gram(model, CE, x, y, block_size=4), want) < 1e-12


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_gram_bounded_memory_recomputes_pairs_of_blocks(name):
    model = build_model(name, (1, 40), 10, dtype=torch.float64)
    x, y = _data((1, 40), 7, seed=5)
    G = per_sample_grads(model, CE, x, y).numpy()
    got = per_sample_gram(model, CE, x, y, block_size=4, max_memory=1)  # one example per block
    assert _rel(got, G @ G.T) < 1e-12


@pytest.mark.parametrize("factor", ["always", "never"])
@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet"])
def test_gram_factoring_modes_agree(name, factor):
    model = build_model(name, (1, 8, 8), 10, dtype=torch.float64)
    x, y = _data((1, 8, 8), 7, seed=1)
    G = per_sample_grads(model, CE, x, y).numpy()
    assert _rel(per_sample_gram(model, CE, x, y, block_size=3, factor=factor), G @ G.T) < 1e-12


def test_gram_factored_sequence_linear_and_grouped_convs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 6, 3, padding=1, groups=2)
            self.conv2 = nn.Conv2d(6, 4, 2, stride=2, bias=False)
            self.lin = nn.Linear(5, 3)
            self.head = nn.Linear(19, 10)

        def forward(self, x):
            h = torch.tanh(self.conv(x))  # [b, 6, 10]
            h = torch.tanh(self.conv2(h.reshape(-1, 6, 2, 5)))  # [b, 4, 1, 2]
            s = self.lin(torch.cat([h.reshape(-1, 8), x[:, 0, :2]], 1).reshape(-1, 2, 5))
            s2 = self.lin(x[:, 1, :5])  # the same Linear called twice
            return self.head(torch.cat([s.reshape(-1, 6), s2, x[:, 2, :27]], 1))

    model = Net().double()
    x = torch.randn(9, 4, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (9,))
    G = naive_per_sample_grads(model, CE, x, y).numpy()
    for factor in ("always", "auto", "never"):
        got = per_sample_gram(model, CE, x, y, block_size=4, factor=factor)
        assert _rel(got, G @ G.T) < 1e-12, factor


def test_gram_fallbacks_custom_shared_unused_and_coordinate_subsets():
    class Scale(nn.Module):  # no per-example rule: torch.func fallback
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 16))

        def forward(self, x):
            return x * self.gain

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.scale = Scale()
            self.norm = nn.LayerNorm(16)
            self.b = nn.Linear(16, 16)
            self.unused = nn.Linear(3, 3)
            self.out = nn.Linear(16, 10)

        def forward(self, x):
            h = self.norm(self.scale(torch.relu(self.a(x))))
            h = torch.tanh(self.b(h))
            return self.out(torch.tanh(self.b(h)))  # b is applied twice (shared)

    model = Net().double()
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 10, (10,))
    for params in (None, "b.*", select_params(model, coords=300, seed=3), ["a.weight", "unused.*"]):
        G = naive_per_sample_grads(model, CE, x, y, params=params).numpy()
        got = per_sample_gram(model, CE, x, y, params=params, block_size=3)
        assert _rel(got, G @ G.T) < 1e-12 if np.abs(G).max() > 0 else np.all(got == 0)


def test_gram_refuses_ill_defined_per_example_gradients():
    x, y = _data((4,), 6)
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 10)).double()
    with pytest.raises(UnsupportedLayerError, match="BatchNorm"):
        per_sample_gram(bn, CE, x, y)
    drop = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 10)).double()
    with pytest.raises(UnsupportedLayerError, match="dropout"):
        per_sample_gram(drop, CE, x, y)
    assert per_sample_gram(drop, CE, x, y, dropout="eval").shape == (6, 6)
    with pytest.raises(ValueError, match="dropout"):
        per_sample_gram(drop, CE, x, y, dropout="sample")  # type: ignore[arg-type]
    lin = nn.Linear(4, 10).double()
    with pytest.raises(ValueError, match="NaN"):
        per_sample_gram(lin, CE, torch.full((3, 4), float("nan"), dtype=torch.float64), y[:3])

    class Sqrt(nn.Module):  # finite loss, infinite gradient of sqrt at 0
        def forward(self, h):
            return torch.sqrt(h * h)

    net = nn.Sequential(nn.Linear(4, 4), Sqrt(), nn.Linear(4, 10)).double()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.zero_()
    with pytest.raises(NonFiniteGradientError, match="example"):
        per_sample_gram(net, CE, x, y)


# ---------------------------------------------------------------- covariance spectrum -----


def test_model_covariance_spectrum_equals_dense_eigvalsh():
    model = build_model("mlp", (1, 8, 8), 10, widths=(3,), dtype=torch.float64)  # P = 235
    x, y = _data((1, 8, 8), 40, seed=2)
    G = per_sample_grads(model, CE, x, y).numpy()
    for centered in (True, False):
        g = G - G.mean(0) if centered else G
        want = np.linalg.eigvalsh(g.T @ g / 40)[::-1][: 40 - int(centered)]
        got = gradnoise.covariance_spectrum(model, CE, x, y, centered=centered, block_size=16)
        assert got.shape == want.shape
        top = want > 1e-10 * want[0]
        np.testing.assert_allclose(got[top], want[top], rtol=1e-8)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * want[0])


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_model_covariance_spectrum_equals_array_path(name):
    model = build_model(name, (1, 40), 10, dtype=torch.float64)
    x, y = _data((1, 40), 24, seed=3)
    want = array_spectrum(per_sample_grads(model, CE, x, y))
    got = gradnoise.covariance_spectrum(model, CE, x, y, block_size=10)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12 * want[0])
    sel = select_params(model, "*weight")
    want = array_spectrum(per_sample_grads(model, CE, x, y, params=sel), centered=False)
    got = gradnoise.covariance_spectrum(model, CE, x, y, params=sel, centered=False)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12 * want[0])
    with pytest.raises(InsufficientDataError):
        gradnoise.covariance_spectrum(model, CE, x[:1], y[:1])


def test_model_subspace_stability_equals_array_path():
    from gradnoise.curvature import subspace_stability
    from gradnoise.spectra import subspace_stability as array_stability

    model = build_model("lenet", (1, 40), 10, dtype=torch.float64)
    x, y = _data((1, 40), 20, seed=6)
    got = subspace_stability(model, CE, x, y, k=2, rng=3, block_size=8)
    want = array_stability(per_sample_grads(model, CE, x, y), k=2, rng=3)
    assert got.sin_theta == pytest.approx(want.sin_theta, rel=1e-8, abs=1e-12)
    assert got.difference_norm == pytest.approx(want.difference_norm, rel=1e-8)
    np.testing.assert_allclose(got.eigenvalues_1, want.eigenvalues_1, rtol=1e-8)


def test_baselines_init_shuffled_and_random_matrix():
    model = build_model("mlp", (1, 8, 8), 10, widths=(8,), dtype=torch.float64, seed=1)
    init = build_model("mlp", (1, 8, 8), 10, widths=(8,), dtype=torch.float64, seed=2)
    x, y = _data((1, 8, 8), 30, seed=4)
    res = spectrum_baselines(model, CE, x, y, init_model=init, rng=0)
    np.testing.assert_allclose(res.trained, gradnoise.covariance_spectrum(model, CE, x, y))
    np.testing.assert_allclose(res.initial, gradnoise.covariance_spectrum(init, CE, x, y))
    y_perm = shuffled_labels(y, rng=np.random.default_rng(0))
    np.testing.assert_allclose(res.shuffled, gradnoise.covariance_spectrum(model, CE, x, y_perm))
    assert res.random_matrix.sum() == pytest.approx(res.trained.sum())
    assert res.random_matrix.shape == res.trained.shape == (29,)
    assert res.marchenko_pastur.num_eigenvalues == 29 and res.num_params == 610
    assert sorted(y_perm.tolist()) == sorted(y.tolist()) and not torch.equal(y_perm, y)
    assert "trained" in res.to_dict()


def test_reinitialized_is_seeded_and_refuses_unknown_parameters():
    model = build_model("lenet", (1, 8, 8), 10)
    a, b = reinitialized(model, seed=3), reinitialized(model, seed=3)
    for (n, p), q, orig in zip(
        a.named_parameters(), b.parameters(), model.parameters(), strict=True
    ):
        assert torch.equal(p, q), n
        assert not torch.equal(p, orig), n
    odd = nn.Module()
    odd.w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="reset_parameters"):
        reinitialized(odd)


# ---------------------------------------------------------------- Hessian -----------------


def _tiny(seed=0, widths=(6,)):
    model = build_model("mlp", (1, 8, 8), 10, widths=widths, dtype=torch.float64, seed=seed)
    x, y = _data((1, 8, 8), 50, seed=seed)
    return model, x, y


def test_hessian_operator_matches_torch_func_dense_hessian():
    model, x, y = _tiny()
    op = HessianOperator(model, CE, (x, y), batch_size=16)
    dense = op.dense()  # torch.func.hessian
    cols = np.stack([op.matvec(e) for e in np.eye(op.dim)[:40]], axis=1)  # double backward
    np.testing.assert_allclose(cols, dense[:, :40], rtol=1e-10, atol=1e-13)

    # the loss is the mean of per-example losses over the whole dataset
    def mean_loss(flat):
        params = dict(
            zip(
                [n for n, _ in model.named_parameters()],
                torch.split(flat, [p.numel() for p in model.parameters()]),
                strict=True,
            )
        )
        params = {
            n: t.reshape(p.shape)
            for (n, t), p in zip(params.items(), model.parameters(), strict=True)
        }
        out = torch.func.functional_call(model, params, (x,))
        return CE(out, y)  # mean reduction over the batch = mean of per-example losses

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    np.testing.assert_allclose(
        dense, torch.func.hessian(mean_loss)(theta).numpy(), rtol=1e-10, atol=1e-13
    )


def test_hessian_eigs_lanczos_equals_dense_top_k():
    model, x, y = _tiny(widths=(10,))  # P = 760
    dense = gradnoise.hessian_eigs(model, CE, (x, y), k=8, method="dense")
    lan = gradnoise.hessian_eigs(model, CE, (x, y), k=8, rng=0, batch_size=20, return_vectors=True)
    np.testing.assert_allclose(lan.eigenvalues, dense.eigenvalues, rtol=1e-6)
    assert np.all(np.diff(lan.eigenvalues) <= 0) and lan.converged.all()
    assert lan.num_params == dense.num_params == 760 and lan.num_examples == 50
    op = HessianOperator(model, CE, (x, y))
    hv = np.stack([op.matvec(v) for v in lan.eigenvectors.T], axis=1)
    explicit = np.linalg.norm(hv - lan.eigenvectors * lan.eigenvalues, axis=0)
    assert np.all(explicit <= 1e-6 * abs(lan.eigenvalues[0]))
    assert np.all(lan.residuals <= 1e-6 * abs(lan.eigenvalues[0]))
    assert np.all(dense.residuals < 1e-12)
    same = gradnoise.hessian_eigs(model, CE, (x, y), k=8, rng=0, batch_size=20)
    np.testing.assert_array_equal(same.eigenvalues, lan.eigenvalues)


def test_hessian_eigs_data_forms_hvp_modes_and_params():
    model, x, y = _tiny(seed=1, widths=(4,))
    ref = gradnoise.hessian_eigs(model, CE, (x, y), k=4, method="dense")
    got = gradnoise.hessian_eigs(model, CE, TensorDataset(x, y), k=4, rng=1, batch_size=7)
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-6)
    base = HessianOperator(model, CE, (x, y))
    others = [
        HessianOperator(model, CE, TensorDataset(x, y), batch_size=7, cache_graphs=False),
        HessianOperator(model, CE, (x, y), batch_size=20, hvp="func"),
    ]
    for v in np.random.default_rng(0).standard_normal((2, base.dim)):
        for op in others:
            np.testing.assert_allclose(op.matvec(v), base.matvec(v), rtol=1e-10, atol=1e-14)
    sel = select_params(model, "1.*")  # the first Linear layer only: a principal submatrix
    sub = gradnoise.hessian_eigs(model, CE, (x, y), k=3, method="dense", params=sel)
    op = HessianOperator(model, CE, (x, y))
    cols = sel.columns_of("1.weight").start, sel.columns_of("1.bias").stop
    full = op.dense()[: cols[1], : cols[1]]
    np.testing.assert_allclose(sub.eigenvalues, np.linalg.eigvalsh(full)[::-1][:3], rtol=1e-10)
    coords = select_params(model, coords=50, seed=0)
    lan = gradnoise.hessian_eigs(model, CE, (x, y), k=3, rng=0, params=coords, tol=1e-10)
    den = gradnoise.hessian_eigs(model, CE, (x, y), k=3, method="dense", params=coords)
    np.testing.assert_allclose(lan.eigenvalues, den.eigenvalues, rtol=1e-6)
    with pytest.raises(ValueError, match="method"):
        gradnoise.hessian_eigs(model, CE, (x, y), method="power")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_params"):
        HessianOperator(build_model("mlp", (1, 8, 8), 10), CE, (x.float(), y)).dense()


def test_hessian_trace_converges_to_dense_trace():
    model, x, y = _tiny(seed=2, widths=(3,))  # P = 235
    true = float(np.trace(HessianOperator(model, CE, (x, y)).dense()))
    last = select_params(model, "3.*")  # 40 coordinates: a sketch of 41 vectors spans them
    sub = HessianOperator(model, CE, (x, y), params=last).dense()
    exact = gradnoise.hessian_trace(model, CE, (x, y), params=last, num_matvecs=123, rng=0)
    assert exact.estimate == pytest.approx(np.trace(sub), rel=1e-9)
    for method in ("hutch++", "hutchinson"):
        est = gradnoise.hessian_trace(model, CE, (x, y), method=method, num_matvecs=60, rng=1)
        assert abs(est.estimate - true) < 4 * est.stderr, method
        assert est.method == method and est.num_matvecs == 60
    small = gradnoise.hessian_trace(model, CE, (x, y), method="hutchinson", num_matvecs=10, rng=1)
    big = gradnoise.hessian_trace(model, CE, (x, y), method="hutchinson", num_matvecs=100, rng=1)
    assert big.stderr < small.stderr


def test_hessian_density_matches_dense_spectrum_in_moments():
    model, x, y = _tiny(seed=3, widths=(3,))
    op = HessianOperator(model, CE, (x, y))
    hess = op.dense()
    w = np.linalg.eigvalsh(hess)
    dens = gradnoise.hessian_density(model, CE, (x, y), num_steps=20, num_probes=12, rng=4)
    assert dens.nodes.shape == (12, 20) and dens.dim == 235
    probes = _probes(np.random.default_rng(4), 235, 12, "rademacher")
    for p in (1, 2, 3):
        # per probe the quadrature is exact for degree <= 39: z^T H^p z / dim
        direct = np.einsum("ij,jk,ik->i", probes, np.linalg.matrix_power(hess, p), probes) / 235
        np.testing.assert_allclose(dens._per_probe(p), direct, rtol=1e-8, atol=1e-14)
        assert abs(dens.moment(p) - np.mean(w**p)) < 4 * dens.moment_stderr(p)
    assert dens.nodes.max() == pytest.approx(w.max(), rel=1e-6)  # extreme Ritz values converge


def test_hessian_eigs_refuses_bad_input():
    model, x, y = _tiny()
    with pytest.raises(ValueError, match="k must be"):
        gradnoise.hessian_eigs(model, CE, (x, y), k=0)
    with pytest.raises(ValueError, match="different numbers"):
        gradnoise.hessian_eigs(model, CE, (x, y[:3]))
    with pytest.raises(ValueError, match="hvp"):
        gradnoise.hessian_eigs(model, CE, (x, y), hvp="jax")  # type: ignore[arg-type]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError):
        gradnoise.hessian_eigs(model, CE, (bad, y), k=2)


def test_hessian_power_law_fits_the_positive_top_k_and_its_eigengaps():
    from gradnoise.curvature import HessianEigs
    from gradnoise.spectra import fit_rank_power_law

    model, x, y = _tiny(widths=(10,))
    res = gradnoise.hessian_eigs(model, CE, (x, y), k=12, method="dense")
    assert res.power_law().to_dict() == fit_rank_power_law(res.eigenvalues).to_dict()
    gaps = np.sort(-np.diff(res.eigenvalues))[::-1]
    assert res.gap_power_law(k_max=8).s == fit_rank_power_law(gaps, k_max=8).s
    mixed = HessianEigs(
        eigenvalues=np.array([4.0, 2.0, 1.0, 0.5, -0.1, -2.0]),
        residuals=np.zeros(6),
        converged=np.ones(6, dtype=bool),
        num_matvecs=0,
        method="dense",
        num_examples=1,
        num_params=6,
    )
    fit = mixed.power_law()  # negative eigenvalues are excluded: fit on ranks 1..4
    assert (fit.k_max, fit.n) == (4, 4)
    assert fit.s == fit_rank_power_law([4.0, 2.0, 1.0, 0.5]).s


def test_hessian_through_fused_attention():
    """F.scaled_dot_product_attention's fused CPU kernel has no double backward: the Hessian
    functions run attention on the math kernel (it failed with 'derivative ... not implemented')."""
    import torch.nn.functional as F

    class Attend(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(11, 8)
            self.qkv = torch.nn.Linear(8, 24)
            self.out = torch.nn.Linear(8, 11)

        def forward(self, t):
            q, k, v = self.qkv(self.emb(t)).split(8, dim=2)
            a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], is_causal=True)
            return self.out(a[:, 0]).transpose(1, 2)

    torch.manual_seed(0)
    model = Attend()
    tokens = torch.randint(0, 11, (4, 6))
    loss = torch.nn.CrossEntropyLoss()
    data = (tokens[:, :-1], tokens[:, 1:])
    eigs = gradnoise.hessian_eigs(model, loss, data, k=2, rng=0, tol=1e-3).eigenvalues
    assert np.isfinite(eigs).all() and eigs[0] >= eigs[1]
    assert np.isfinite(gradnoise.hessian_trace(model, loss, data, num_matvecs=6, rng=0).estimate)
