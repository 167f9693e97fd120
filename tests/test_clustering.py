"""Gradient Clustering: rank-1 distance algebra, assignment, sampler and estimator comparison."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

import gradnoise
from gradnoise.clustering import (
    ClusteringResult,
    EstimatorComparator,
    GradientClustering,
    GradientClusteringSampler,
    compare_estimators,
)
from gradnoise.datasets import as_tensors
from gradnoise.errors import InsufficientDataError, UnsupportedLayerError
from gradnoise.stats import multiple_test
from gradnoise.variance import gradient_variance, stratified_minibatch_variance

SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 40)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is as fast and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LOSS = torch.nn.CrossEntropyLoss()


def _model(name, dataset, seed=0, **kw):
    options = {"mlp": {"widths": (16, 12)}, "resnet": {"channels": 8, "blocks": 1}}
    options["transformer"] = {"dim": 16, "depth": 1}
    kw = {**options.get(name, {}), **kw}
    return gradnoise.build_model(name, SHAPES[dataset], 10, seed=seed, dtype=torch.float64, **kw)


def _data(dataset, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPES[dataset], generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 10, (n,), generator=gen)


def _brute(gc, x, y):
    """Distances from materialised per-example gradients and dense centres."""
    g = gradnoise.per_sample_grads(gc.model, gc.loss_fn, x, y, params=gc.selection)
    c = gc.centers()
    dist = ((g[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    scale = (g * g).sum(1)[:, None] + (c * c).sum(1)[None, :]
    return dist, scale


def _check_distances(gc, x, y):
    got = gc.distances(x, y)
    ref, scale = _brute(gc, x, y)
    # relative to the size of the terms that cancel in |g|^2 - 2<C, g> + |C|^2
    assert float(((got - ref).abs() / scale).max()) < 1e-6
    big = ref > 1e-3 * scale
    assert big.float().mean() > 0.5
    torch.testing.assert_close(got[big], ref[big], rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_rank1_distances_equal_brute_force(name, dataset):
    net = _model(name, dataset)
    x, y = _data(dataset, 40)
    gc = GradientClustering(net, LOSS, 6, rng=0, chunk_size=16)
    gc.fit((x, y), iters=2)  # centres from the Faghri update, not just seeds
    assert {gc.layout[n] for n in gc.layout if n.endswith("weight")} == {"rank1"}
    xt, yt = _data(dataset, 12, seed=1)
    _check_distances(gc, xt, yt)


@pytest.mark.parametrize("mode", ["pairs", "outer"])
def test_both_einsum_orders_of_conv_layers_agree(mode):
    net = _model("lenet", "digits")
    x, y = _data("digits", 30)
    gc = GradientClustering(net, LOSS, 4, rng=1)
    gc.fit((x, y))
    for block in gc.blocks:
        if hasattr(block, "dot_mode"):
            block.dot_mode = block.norm_mode = mode
    _check_distances(gc, x[:10], y[:10])


@pytest.mark.parametrize(
    "name,dataset,kwargs",
    [
        ("transformer", "mnist1d", {}),  # Linear on sequences (rank-1 over positions) + LayerNorm
        ("resnet", "digits", {}),  # GroupNorm through per_sample_grads, conv without bias
        ("lenet", "mnist1d", {"centers": "full"}),  # exact k-means in gradient space
        ("mlp", "digits", {"params": "coords"}),  # a coordinate subset falls back to full centres
    ],
)
def test_fallback_layers_match_brute_force(name, dataset, kwargs):
    net = _model(name, dataset)
    x, y = _data(dataset, 30)
    if kwargs.get("params") == "coords":
        kwargs = {"params": gradnoise.select_params(net, coords=200, seed=0)}
    gc = GradientClustering(net, LOSS, 5, rng=0, chunk_size=8, **kwargs)
    gc.fit((x, y), iters=2)
    assert "full" in gc.layout.values()
    _check_distances(gc, x[:10], y[:10])


def test_shared_layer_called_twice_sums_over_calls():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(5, 5)
            self.out = torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))

    net = Twice().double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    gc = GradientClustering(net, LOSS, 3, rng=0)
    gc.fit((x, y))
    assert gc.layout["fc.weight"] == "rank1"
    _check_distances(gc, x, y)


def test_assignment_is_the_weighted_greedy_argmin():
    net = _model("mlp", "digits")
    x, y = _data("digits", 50)
    gc = GradientClustering(net, LOSS, 5, rng=3, chunk_size=7)
    gc.fit((x, y))
    state = copy.deepcopy(gc.rng.bit_generator.state)
    ref, _ = _brute(gc, x, y)  # centres before the next pass
    res = gc.fit((x, y))
    order = np.random.Generator(np.random.PCG64())
    order.bit_generator.state = state
    perm = order.permutation(50)
    counts = np.zeros(5)
    for i in perm:  # examples in the pass's order, price (n_c + 1) * distance
        c = int(np.argmin(ref[i].numpy() * (counts + 1)))
        assert res.assignment[i] == c
        counts[c] += 1
    np.testing.assert_array_equal(res.sizes, counts)
    # unweighted: plain nearest centre
    plain = GradientClustering(net, LOSS, 5, rng=3, weighted=False)
    plain.fit((x, y))
    ref, _ = _brute(plain, x, y)
    np.testing.assert_array_equal(plain.fit((x, y)).assignment, ref.argmin(1).numpy())


def test_centre_update_follows_the_official_rank1_rule():
    """ci_c = members' mean input, co_c = members' mean output gradient; full: exact mean."""
    net = _model("mlp", "digits")
    x, y = _data("digits", 40)
    gc = GradientClustering(net, LOSS, 4, rng=0)
    res = gc.fit((x, y))
    first = next(b for b in gc.blocks if b.name == "1.weight")
    flat = x.reshape(40, -1)
    for c in range(4):
        members = res.assignment == c
        if members.any():
            torch.testing.assert_close(first.ci[c], flat[members].mean(0))
    full = GradientClustering(net, LOSS, 4, rng=0, centers="full")
    res = full.fit((x, y))
    g = gradnoise.per_sample_grads(net, LOSS, x, y)
    for c in range(4):
        members = res.assignment == c
        if members.any():
            torch.testing.assert_close(full.centers()[c], g[members].mean(0))
    dist = ((g - full.centers()[res.assignment]) ** 2).sum(1).numpy()
    # the pass's distortion used the centres *before* this update: it can only be larger
    np.testing.assert_array_less(
        np.bincount(res.assignment, weights=dist, minlength=4), res.distortion + 1e-12
    )


def test_empty_cluster_is_reseeded_from_worst_fitted_example():
    net = _model("mlp", "digits")
    x, y = _data("digits", 30)
    gc = GradientClustering(net, LOSS, 4, rng=0)
    gc.fit((x, y))
    block = gc.blocks[0]
    block.ci[2] = 1e6  # a centre nobody will choose
    res = gc.fit((x, y))
    assert res.sizes[2] == 0 and res.reseeded == 1 and res.num_clusters == 3
    g = gradnoise.per_sample_grads(net, LOSS, x, y)
    # re-seeded centre = the gradient of one example (rank-1 is exact for a Linear layer)
    seeded = gc.centers()[2]
    assert float(((g - seeded) ** 2).sum(1).min()) < 1e-20 * float((g * g).sum(1).max())


def test_fit_is_deterministic_given_rng():
    net = _model("lenet", "mnist1d")
    x, y = _data("mnist1d", 40)
    a = GradientClustering(net, LOSS, 5, rng=7).fit((x, y), iters=2)
    b = GradientClustering(net, LOSS, 5, rng=7).fit((x, y), iters=2)
    c = GradientClustering(net, LOSS, 5, rng=8).fit((x, y), iters=2)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert not np.array_equal(a.assignment, c.assignment)


# --------------------------------------------------------------------------------------------
# the sampler on the real datasets


@pytest.fixture(scope="module")
def trained():
    """Small float64 MLPs after 150 SGD steps on each dataset, with all per-example gradients."""
    out = {}
    for name in ("digits", "mnist1d"):
        d = gradnoise.load_dataset(name)
        x, y = as_tensors(d.train)
        x = x.double()
        net = gradnoise.build_model(
            "mlp", d.input_shape, d.num_classes, widths=(32,), dtype=torch.float64
        )
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        rng = np.random.default_rng(0)
        for _ in range(150):
            idx = rng.choice(len(x), 32, replace=False)
            opt.zero_grad()
            LOSS(net(x[idx]), y[idx]).backward()
            opt.step()
        g = gradnoise.per_sample_grads(net, LOSS, x, y, chunk_size=512).numpy()
        out[name] = (net, x, y, g)
    return out


def test_stratified_batches_and_weights(trained):
    net, x, y, _ = trained["digits"]
    sampler = GradientClusteringSampler(net, LOSS, (x, y), batch_size=20, num_clusters=8, rng=0)
    idx, w = sampler.sample()
    res = sampler.result
    assert isinstance(res, ClusteringResult)
    m, n = res.num_clusters, len(x)
    assert len(idx) == 20
    labels = res.assignment[idx]
    counts = np.bincount(labels, minlength=8)[res.sizes > 0]
    assert sorted(set(counts.tolist())) <= [2, 3] and counts.sum() == 20  # B // M or one more
    for c in np.unique(labels):  # without replacement inside a stratum
        assert len(set(idx[labels == c].tolist())) == int((labels == c).sum())
    np.testing.assert_allclose(w, m * res.sizes[labels] / n)
    np.testing.assert_allclose(sampler.weights[idx], w)
    per_stratum = np.unique(sampler.weights[res.sizes[res.assignment] > 0])
    strata_weights = m * res.sizes[res.sizes > 0] / n
    assert strata_weights.mean() == pytest.approx(1.0)  # (1/M) sum_k M N_k / N
    assert set(np.round(per_stratum, 12)) <= set(np.round(strata_weights, 12))


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_gc_estimate_is_unbiased(trained, dataset):
    """Mean of K GC estimates vs the full gradient: per-coordinate z-tests, Holm-corrected."""
    net, x, y, g = trained[dataset]
    sampler = GradientClusteringSampler(net, LOSS, (x, y), batch_size=16, rng=1)
    k = 4000
    full = g.mean(0)
    ests, plain = np.empty((k, g.shape[1])), np.empty((k, g.shape[1]))
    for t in range(k):
        idx, w = sampler.sample()
        ests[t] = (w[:, None] * g[idx]).mean(0)
        plain[t] = g[idx].mean(0)  # negative control: stratified without the weights
    live = g.std(0) > 0
    for draws, should_reject in ((ests, False), (plain, True)):
        se = draws[:, live].std(0, ddof=1) / math.sqrt(k)
        z = (draws[:, live].mean(0) - full[live]) / se
        p = 2 * sps.norm.sf(np.abs(z))
        decision = multiple_test(p, method="holm", level=0.01)
        assert bool(decision.reject.any()) is should_reject, float(np.abs(z).max())


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_gc_variance_below_sg_at_same_batch_size(trained, dataset):
    """Exact variances from all per-example gradients (B = C = 32, one example per cluster)."""
    net, x, y, g = trained[dataset]
    gc = GradientClustering(net, LOSS, 32, rng=0)
    res = gc.fit((x, y), iters=2)
    assert res.num_clusters == 32
    gcv = stratified_minibatch_variance(g, res.assignment, batch_size=32)
    sg = gradient_variance(g, batch_size=32, replace=False)
    ratio = gcv.total / sg.total
    print(f"{dataset}: GC/SG-B total variance ratio at B=32: {ratio:.3f}")
    assert ratio < 1.0
    assert gcv.total <= res.variance_bound * (1 + 1e-9)  # rank-1 centres: an upper bound


def test_sampler_variance_matches_exact_formula(trained):
    """Empirical variance of the sampler's estimates agrees with the exact stratified formula."""
    net, x, y, g = trained["digits"]
    sampler = GradientClusteringSampler(net, LOSS, (x, y), batch_size=16, rng=2)
    k = 3000
    full = g.mean(0)
    sq = np.empty(k)
    for t in range(k):
        idx, w = sampler.sample()
        diff = (w[:, None] * g[idx]).mean(0) - full
        sq[t] = diff @ diff
    exact = stratified_minibatch_variance(g, sampler.result.assignment, batch_size=16).total
    z = (sq.mean() - exact) / (sq.std(ddof=1) / math.sqrt(k))
    assert abs(z) < 4.0, (sq.mean(), exact)


def test_sampler_in_a_training_loop_reclusters_on_schedule(trained):
    net, x, y, _ = trained["mnist1d"]
    net = copy.deepcopy(net)
    sampler = GradientClusteringSampler(
        net, LOSS, (x, y), batch_size=32, recluster_every=4, num_batches=10, rng=0
    )
    assert len(sampler) == 10
    loader = torch.utils.data.DataLoader(sampler.dataset, batch_sampler=sampler)
    per_example = torch.nn.CrossEntropyLoss(reduction="none")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with torch.no_grad():
        before = float(LOSS(net(x), y))
    for xb, yb, wb in loader:
        assert xb.shape == (32, 1, 40) and wb.dtype == torch.float64
        opt.zero_grad()
        (wb * per_example(net(xb), yb)).mean().backward()
        opt.step()
    assert sampler.num_reclusters == 3  # before batches 1, 5 and 9
    assert sampler.batches_drawn == 10
    with torch.no_grad():
        assert float(LOSS(net(x), y)) < before
    with pytest.raises(TypeError, match="batch_sampler"):
        sampler.dataset[0]


def test_sampler_is_reproducible(trained):
    net, x, y, _ = trained["digits"]
    a = GradientClusteringSampler(net, LOSS, (x, y), batch_size=8, num_batches=3, rng=5)
    b = GradientClusteringSampler(net, LOSS, (x, y), batch_size=8, num_batches=3, rng=5)
    assert list(a) == list(b)


# --------------------------------------------------------------------------------------------
# comparators


def test_compare_estimators_on_one_trajectory(trained):
    net, x, y, g = trained["digits"]
    snapshot = copy.deepcopy(net)
    sampler = GradientClusteringSampler(net, LOSS, (x, y), batch_size=16, rng=0)
    out = compare_estimators(
        net, LOSS, (x, y), batch_size=16, num_draws=60, svrg_snapshot=snapshot,
        clustering=sampler, rng=0,
    )  # fmt: skip
    est = out.estimators
    assert set(est) == {"sg", "sg2b", "svrg", "gc"}
    # SVRG with the snapshot at the current parameters is the full gradient exactly
    assert est["svrg"].total_variance < 1e-20 and est["svrg"].bias_sq_norm < 1e-20
    exact_sg = gradient_variance(g, batch_size=16, replace=False).total
    exact_2b = gradient_variance(g, batch_size=32, replace=False).total
    exact_gc = stratified_minibatch_variance(g, sampler.result.assignment, batch_size=16).total
    # 60 draws: the variance estimates are within a factor ~1.6 of the exact values
    for name, exact in (("sg", exact_sg), ("sg2b", exact_2b), ("gc", exact_gc)):
        assert 0.6 < est[name].total_variance / exact < 1.6, name
        assert est[name].bias_z < 15.0, name  # about 1 for an unbiased estimator
        assert 0.0 < est[name].ngv < 1.0
    assert out.variance_ratio("gc") < 1.0
    assert est["sg"].variance == pytest.approx(est["sg"].total_variance / g.shape[1])
    assert set(est["sg"].layers) == set(gradnoise.select_params(net).names)
    # after a step away from the snapshot SVRG has variance, still unbiased
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    moved = compare_estimators(
        net, LOSS, (x, y), batch_size=16, num_draws=30, estimators=["svrg"],
        svrg_snapshot=snapshot, rng=1,
    )  # fmt: skip
    assert moved.estimators["svrg"].total_variance > 0
    with torch.no_grad():
        for p, q in zip(net.parameters(), snapshot.parameters(), strict=True):
            p.copy_(q)


def test_svrg_rows_equal_the_whole_matrix_formula(trained):
    # the SVRG draws are built a row at a time (never [K, P] twice): they must equal
    # mu - g_B(theta_snap) + g_B(theta) from minibatch_grads' whole matrices, bit for bit
    from gradnoise.clustering import _seeds
    from gradnoise.stats._common import as_generator

    net, x, y, _ = trained["digits"]
    snapshot = copy.deepcopy(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    try:
        got = compare_estimators(
            net, LOSS, (x, y), batch_size=16, num_draws=7, estimators=["svrg"],
            svrg_snapshot=snapshot, rng=4, max_memory="64MiB",
        ).estimators["svrg"]  # fmt: skip
        seed = _seeds(as_generator(4), 1)[0]
        now = gradnoise.minibatch_grads(net, LOSS, (x, y), batch_size=16, num_batches=7, seed=seed)
        then = gradnoise.minibatch_grads(
            snapshot, LOSS, (x, y), batch_size=16, num_batches=7, seed=seed
        )
        mu = gradnoise.full_grad(snapshot, LOSS, (x, y))
        draws = (now - then + mu).numpy()
        full = gradnoise.full_grad(net, LOSS, (x, y)).double().numpy()
        expected = gradient_variance(draws)
        assert got.total_variance == expected.total and got.num_draws == 7
        diff = draws.mean(0, dtype=np.float64) - full
        assert got.bias_sq_norm == float(diff @ diff)
    finally:
        with torch.no_grad():
            for p, q in zip(net.parameters(), snapshot.parameters(), strict=True):
                p.copy_(q)


def test_comparator_refreshes_on_schedule(trained):
    net, x, y, _ = trained["digits"]
    net = copy.deepcopy(net)
    comp = EstimatorComparator(
        net, LOSS, (x, y), batch_size=8, num_draws=5, snapshot_every=10, recluster_every=20,
        rng=0,
    )  # fmt: skip
    fits = []
    original = comp.clustering.fit

    def counting_fit(*args, **kwargs):
        fits.append(1)
        return original(*args, **kwargs)

    comp.clustering.fit = counting_fit
    snaps = []
    for step in (0, 5, 10, 15, 20):
        comp.measure(step)
        snaps.append(comp.snapshot)
        with torch.no_grad():
            net[1].weight.add_(0.01)
    assert len(fits) == 2  # steps 0 and 20
    assert snaps[0] is snaps[1] and snaps[1] is not snaps[2] and snaps[3] is snaps[2]


def test_bad_inputs():
    net = _model("mlp", "digits")
    x, y = _data("digits", 10)
    with pytest.raises(InsufficientDataError):
        GradientClustering(net, LOSS, 11).fit((x, y))
    with pytest.raises(ValueError, match="centers"):
        GradientClustering(net, LOSS, 2, centers="svd")
    drop = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(64, 10))
    with pytest.raises(UnsupportedLayerError, match="dropout"):
        GradientClustering(drop.double(), LOSS, 2).fit((x, y))
    GradientClustering(drop.double(), LOSS, 2, dropout="eval").fit((x, y))
    assert drop[1].training  # restored
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten())
    with pytest.raises(UnsupportedLayerError):
        GradientClustering(bn, LOSS, 2)
    with pytest.raises(ValueError, match="svrg_snapshot"):
        compare_estimators(net, LOSS, (x, y), batch_size=2, num_draws=3, estimators=["svrg"])
    with pytest.raises(ValueError, match="clustering"):
        compare_estimators(net, LOSS, (x, y), batch_size=2, num_draws=3, estimators=["gc"])
    with pytest.raises(ValueError, match="unknown"):
        compare_estimators(net, LOSS, (x, y), batch_size=2, estimators=["adam"])
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        GradientClustering(net, LOSS, 2).fit((bad, y))


def test_top_level_name():
    assert gradnoise.GradientClusteringSampler is GradientClusteringSampler


def test_docstring_training_loop_runs():
    """The usage example in GradientClusteringSampler's docstring is real code."""
    doc = GradientClusteringSampler.__doc__
    block = doc.split("Example (a complete training loop)::")[1].split("\n\n")[1]
    code = "\n".join(line[8:] for line in block.splitlines())
    assert "DataLoader(sampler.dataset, batch_sampler=sampler)" in code
    namespace: dict = {}
    exec(compile(code, "<docstring>", "exec"), namespace)
    sampler, model = namespace["sampler"], namespace["model"]
    assert sampler.num_reclusters == 1 and sampler.batches_drawn == 5 * len(sampler)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_every_clustering_entry_point_accepts_device():
    model, data = _model("mlp", "digits"), _data("digits", 24)
    kw = {"batch_size": 4}
    sampler = GradientClusteringSampler(model, LOSS, data, rng=0, device="cpu", **kw)
    assert sampler.clustering.device == torch.device("cpu")
    assert GradientClustering(model, LOSS, 4, rng=0, device="cpu").device.type == "cpu"
    comparison = compare_estimators(
        model, LOSS, data, num_draws=3, estimators=("sg",), rng=0, device="cpu", **kw
    )
    assert comparison.estimators["sg"].batch_size == 4
    comparator = EstimatorComparator(model, LOSS, data, num_draws=3, estimators=("sg",), **kw)
    assert EstimatorComparator(model, LOSS, data, rng=0, device="cpu", **kw).device == "cpu"
    assert comparator.measure(0).estimators.keys() == {"sg"}
    with pytest.raises(ValueError, match=r"model\.to"):
        GradientClustering(model, LOSS, 4, device="meta")
    with pytest.raises(ValueError, match=r"model\.to"):
        compare_estimators(model, LOSS, data, device="meta", **kw)
