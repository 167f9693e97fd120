"""gradnoise.variance against naive loops, exact enumeration and the official Faghri code."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gradnoise.errors import DataError, InsufficientDataError
from gradnoise.selection import ParamSelection
from gradnoise.variance import (
    gradient_variance,
    gsnr,
    normalized_gradient_variance,
    stratified_minibatch_variance,
)


def _naive_var(x, ddof, mean=None):
    k, p = x.shape
    out = np.zeros(p)
    for j in range(p):
        m = sum(x[t, j] for t in range(k)) / k if mean is None else mean[j]
        out[j] = sum((x[t, j] - m) ** 2 for t in range(k)) / (k - ddof)
    return out


def _faghri_get_ege_var(first, second, adam_eps=1e-7):
    """Literal numpy transcription of gvar_code ``estim/gestim.py`` ``get_Ege_var``.

    One "parameter tensor" per column block is irrelevant: every sum runs over all coordinates.
    """
    gviter = first.shape[0]
    ege = first.sum(0) / gviter
    nw = first.shape[1]
    var_e = 0.0
    es = np.zeros(nw)
    en = np.zeros(nw)
    for i in range(gviter):
        ge = second[i]
        v = ((ge - ege) ** 2).sum()
        es += ge**2
        en += (ege - ge) ** 2
        var_e += v / nw
    var_e /= gviter
    snr_e = (np.log(es + 1e-10) - np.log(en + 1e-10)).sum() / nw
    nv_e = (en / (es + adam_eps)).sum() / nw
    return var_e, snr_e, nv_e


@pytest.fixture
def draws():
    rng = np.random.default_rng(1)
    return rng.normal(size=(9, 7)) * rng.uniform(0.1, 3, size=7) + rng.normal(size=7)


@pytest.mark.parametrize("ddof", [0, 1, 2])
def test_variance_matches_naive_loop(draws, ddof):
    res = gradient_variance(draws, ddof=ddof)
    expected = _naive_var(draws, ddof)
    np.testing.assert_allclose(res.per_coordinate, expected, rtol=1e-12)
    assert res.total == pytest.approx(expected.sum(), rel=1e-12)
    assert res.mean == pytest.approx(expected.mean(), rel=1e-12)
    assert res.num_samples == 9
    assert res.mean_sq_norm == pytest.approx(float(draws.mean(0) @ draws.mean(0)))


def test_variance_with_given_mean(draws):
    mean = np.linspace(-1, 1, 7)
    res = gradient_variance(draws, ddof=0, mean=mean)
    np.testing.assert_allclose(res.per_coordinate, _naive_var(draws, 0, mean), rtol=1e-12)


def test_per_layer_groupings_agree(draws):
    sel = ParamSelection(("w", "b"), ((2, 2), (3,)), (None, None))
    by_sel = gradient_variance(draws, groups=sel)
    by_labels = gradient_variance(draws, groups=["w"] * 4 + ["b"] * 3)
    by_map = gradient_variance(draws, groups={"w": slice(0, 4), "b": [4, 5, 6]})
    v = _naive_var(draws, 1)
    for res in (by_sel, by_labels, by_map):
        assert res.layers["w"] == pytest.approx(v[:4].sum(), rel=1e-12)
        assert res.layers["b"] == pytest.approx(v[4:].sum(), rel=1e-12)
        assert res.layer_means["b"] == pytest.approx(v[4:].mean(), rel=1e-12)
    assert sum(by_sel.layers.values()) == pytest.approx(by_sel.total)
    ngv = normalized_gradient_variance(draws, groups=sel)
    assert ngv.layers["w"] == pytest.approx(ngv.per_coordinate[:4].mean())
    snr = gsnr(draws, groups=sel)
    assert snr.layers["b"] == pytest.approx(snr.per_coordinate[4:].mean())


def _all_subset_means(pop, b):
    return np.array([pop[list(c)].mean(0) for c in itertools.combinations(range(len(pop)), b)])


def _all_tuple_means(pop, b):
    return np.array([pop[list(c)].mean(0) for c in itertools.product(range(len(pop)), repeat=b)])


@pytest.mark.parametrize("replace", [False, True])
def test_minibatch_conversion_is_exact_by_enumeration(replace):
    """Rows = the whole population: the formula equals the variance over every possible batch."""
    pop = np.random.default_rng(2).normal(size=(9, 3)) * [1.0, 5.0, 0.2]
    b = 3
    means = _all_tuple_means(pop, b) if replace else _all_subset_means(pop, b)
    exact = means.var(0)  # every batch equally likely: the population variance over batches
    res = gradient_variance(pop, batch_size=b, replace=replace)
    np.testing.assert_allclose(res.per_coordinate, exact, rtol=1e-12)
    assert res.population_size == 9 and res.replace is replace
    assert "B=3" in res.scale
    # the textbook forms with the 1/N population variance
    sigma2 = pop.var(0)
    expected = sigma2 / b if replace else sigma2 * (9 - b) / (b * (9 - 1))
    np.testing.assert_allclose(res.per_coordinate, expected, rtol=1e-12)


@pytest.mark.parametrize("replace", [False, True])
def test_minibatch_conversion_unbiased_from_a_random_subset(replace):
    """Rows = a simple random sample of n from N: the estimate averages to the exact value."""
    pop = np.random.default_rng(3).normal(size=(10, 2)) * [1.0, 4.0]
    b, n = 4, 5
    exact = gradient_variance(pop, batch_size=b, replace=replace).per_coordinate
    estimates = np.array(
        [
            gradient_variance(
                pop[list(c)], batch_size=b, replace=replace, population_size=10
            ).per_coordinate
            for c in itertools.combinations(range(10), n)
        ]
    )
    np.testing.assert_allclose(estimates.mean(0), exact, rtol=1e-12)


def test_infinite_population_and_full_batch():
    x = np.random.default_rng(4).normal(size=(20, 3))
    inf = gradient_variance(x, batch_size=5, population_size=math.inf)
    np.testing.assert_allclose(inf.per_coordinate, x.var(0, ddof=1) / 5, rtol=1e-12)
    full = gradient_variance(x, batch_size=20, replace=False)
    assert full.total == pytest.approx(0.0, abs=1e-15)


def test_ngv_matches_official_code_transcription():
    rng = np.random.default_rng(5)
    t, p = 12, 30
    scale = rng.uniform(0.01, 1, size=p)
    first = rng.normal(0.3, 1, size=(t, p)) * scale
    second = rng.normal(0.3, 1, size=(t, p)) * scale
    second[:, 3] = 0.0  # an all-zero coordinate (dead unit) in the fresh draws
    var_e, _, nv_e = _faghri_get_ege_var(first, second)
    mean = first.mean(0)
    res = normalized_gradient_variance(second, mean=mean, eps=1e-7 / t)
    assert res.value == pytest.approx(nv_e, rel=1e-12)
    var = gradient_variance(second, mean=mean, ddof=0)
    assert var.mean == pytest.approx(var_e, rel=1e-12)
    # without eps the all-zero coordinate is an infinite ratio when the mean is non-zero there
    with pytest.raises(ValueError, match="infinite"):
        normalized_gradient_variance(second, mean=mean)


def test_ngv_sample_mean_form_and_known_value():
    rng = np.random.default_rng(6)
    mu = np.array([0.0, 1.0, 2.0, 0.5])
    sigma = np.array([1.0, 1.0, 1.0, 2.0])
    x = rng.normal(mu, sigma, size=(200_000, 4))
    res = normalized_gradient_variance(x)
    v0 = x.var(0)
    np.testing.assert_allclose(res.per_coordinate, v0 / (v0 + x.mean(0) ** 2), rtol=1e-12)
    # population value sigma^2 / (sigma^2 + mu^2); standard error here is below 0.003
    np.testing.assert_allclose(res.per_coordinate, sigma**2 / (sigma**2 + mu**2), atol=0.01)
    assert 0.0 <= res.per_coordinate.min() and res.per_coordinate.max() <= 1.0


def test_ngv_degenerate_coordinates_count_as_zero():
    x = np.random.default_rng(7).normal(size=(5, 4))
    x[:, 2] = 0.0
    res = normalized_gradient_variance(x)
    assert res.num_degenerate == 1 and res.per_coordinate[2] == 0.0
    assert res.value == pytest.approx(res.per_coordinate.sum() / 4)


def test_ngv_per_example_mode_is_ngv_of_the_minibatch_estimator():
    pop = np.random.default_rng(8).normal(0.2, 1.0, size=(8, 3))
    b = 3
    res = normalized_gradient_variance(pop, batch_size=b, replace=False)
    means = _all_subset_means(pop, b)
    v = means.var(0)
    second = (means**2).mean(0)  # E[g_B^2] over all equally likely batches
    np.testing.assert_allclose(res.per_coordinate, v / second, rtol=1e-12)


def test_gsnr_naive_and_minibatch_scaling():
    x = np.random.default_rng(9).normal(0.5, 2.0, size=(50, 6))
    res = gsnr(x)
    m = x.mean(0)
    np.testing.assert_allclose(res.per_coordinate, m**2 / _naive_var(x, 1), rtol=1e-12)
    assert res.mean == pytest.approx(res.per_coordinate.mean())
    assert res.median == pytest.approx(np.median(res.per_coordinate))
    assert res.aggregate == pytest.approx((m @ m) / _naive_var(x, 1).sum())
    # GSNR of a mean of B with replacement from an infinite population is B times larger
    inf = gsnr(x, batch_size=8, population_size=math.inf)
    np.testing.assert_allclose(inf.per_coordinate, 8 * res.per_coordinate, rtol=1e-12)


def test_gsnr_degenerate_coordinates():
    x = np.ones((4, 3))
    x[:, 0] = [1.0, 2.0, 3.0, 4.0]
    x[:, 2] = 0.0
    res = gsnr(x)
    assert res.num_degenerate == 2
    assert np.isinf(res.per_coordinate[1]) and np.isnan(res.per_coordinate[2])
    assert res.mean == pytest.approx(res.per_coordinate[0])


def test_stratified_variance_exact_by_enumeration():
    """Every stratified batch (q per stratum, without replacement) enumerated with its weight."""
    rng = np.random.default_rng(10)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    pop = rng.normal(size=(12, 3)) + labels[:, None] * [1.0, -2.0, 0.5]
    n, m = 12, 3
    sizes = np.bincount(labels)
    for q in (1, 2):
        per_stratum = [
            list(itertools.combinations(np.flatnonzero(labels == k), q)) for k in range(m)
        ]
        estimates = []
        for choice in itertools.product(*per_stratum):
            idx = np.concatenate([np.array(c) for c in choice])
            w = m * sizes[labels[idx]] / n
            estimates.append((w[:, None] * pop[idx]).mean(0))
        estimates = np.array(estimates)
        np.testing.assert_allclose(estimates.mean(0), pop.mean(0), rtol=1e-12)  # unbiased
        res = stratified_minibatch_variance(pop, labels, batch_size=q * m)
        np.testing.assert_allclose(res.per_coordinate, estimates.var(0), rtol=1e-10)


def test_stratified_beats_plain_sampling_on_clustered_data():
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(4), 25)
    pop = rng.normal(size=(100, 5)) * 0.1 + labels[:, None] * 3.0
    strat = stratified_minibatch_variance(pop, labels, batch_size=4)
    plain = gradient_variance(pop, batch_size=4, replace=False)
    assert strat.total < 0.05 * plain.total


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    x = torch.randn(6, 4, dtype=torch.float32)
    res = gradient_variance(x)
    np.testing.assert_allclose(res.per_coordinate, x.double().var(0).numpy(), rtol=1e-12)


def test_bad_inputs_raise_clear_errors():
    good = np.ones((3, 2))
    bad = good.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        gradient_variance(bad)
    with pytest.raises(ValueError, match="2-D"):
        gradient_variance(np.ones(5))
    with pytest.raises(InsufficientDataError):
        gradient_variance(np.ones((1, 3)))
    with pytest.raises(InsufficientDataError):
        gradient_variance(good, batch_size=5, replace=False)
    with pytest.raises(ValueError, match="ddof only applies"):
        gradient_variance(good, batch_size=2, ddof=0)
    with pytest.raises(ValueError, match="population_size"):
        gradient_variance(good, batch_size=2, population_size=2)
    with pytest.raises(ValueError, match="groups"):
        gradient_variance(good, groups=["a"])
    with pytest.raises(ValueError, match="no group"):
        gradient_variance(good, groups={"a": [0]})
    with pytest.raises(ValueError, match="mean must have"):
        gradient_variance(good, mean=[1.0])
    with pytest.raises(ValueError, match="multiple"):
        stratified_minibatch_variance(good, [0, 1, 1], batch_size=3)
    with pytest.raises(TypeError):
        gradient_variance(np.array([["a", "b"], ["c", "d"]]))


def test_results_are_frozen_and_serialisable(draws):
    res = gradient_variance(draws, groups=["a"] * 3 + ["b"] * 4)
    d = res.to_dict()
    assert d["layers"]["a"] == pytest.approx(res.layers["a"])
    assert "VarianceResult(" in repr(res)
    with pytest.raises(AttributeError):
        res.total = 0.0  # type: ignore[misc]


def test_single_draw_is_an_error_unless_the_mean_is_given(draws):
    """NGV of one draw was 0 (its deviation from its own mean): undefined, not 0."""
    one = draws[:1]
    for fn in (normalized_gradient_variance, gsnr, gradient_variance):
        with pytest.raises(InsufficientDataError, match=r"single draw|at least 2"):
            fn(one)
    with pytest.raises(InsufficientDataError, match="single draw"):
        gradient_variance(one, ddof=0)
    # with an independent mean one draw is a valid (noisy) estimate
    m = draws[1:].mean(0)
    ngv = normalized_gradient_variance(one, mean=m)
    ratio = (one[0] - m) ** 2 / one[0] ** 2
    assert ngv.value == pytest.approx(ratio.mean(), rel=1e-12)


@pytest.mark.parametrize("shift", [1000, -1000])
def test_ratios_are_exact_at_extreme_magnitudes(draws, shift):
    """At 1e300 the squares overflowed (inf/nan with only a numpy warning); NGV and GSNR are
    scale-free and now computed exactly on power-of-two rescaled coordinates."""
    x = np.ldexp(draws, shift)
    for fn in (normalized_gradient_variance, gsnr):
        for kw in ({}, {"batch_size": 3}):
            ref = fn(draws, **kw)
            got = fn(x, **kw)
            np.testing.assert_allclose(got.per_coordinate, ref.per_coordinate, rtol=1e-12)
    g = gsnr(x, groups=["a"] * 3 + ["b"] * 4)
    ref = gsnr(draws, groups=["a"] * 3 + ["b"] * 4)
    assert g.aggregate == pytest.approx(ref.aggregate, rel=1e-12)
    assert g.layer_aggregates["b"] == pytest.approx(ref.layer_aggregates["b"], rel=1e-12)
    # eps is in the units of the squared samples
    ngv = normalized_gradient_variance(
        np.ldexp(draws, shift // 3), eps=np.ldexp(0.5, shift // 3 * 2)
    )
    ref = normalized_gradient_variance(draws, eps=0.5)
    assert ngv.value == pytest.approx(ref.value, rel=1e-12)


def test_gsnr_mixes_coordinates_of_very_different_magnitudes(draws):
    x = draws.copy()
    x[:, 0] = np.ldexp(x[:, 0], 1000)
    x[:, 1] = np.ldexp(x[:, 1], -1000)
    np.testing.assert_allclose(gsnr(x).per_coordinate, gsnr(draws).per_coordinate, rtol=1e-12)
    # the aggregate is dominated by the huge coordinate
    assert gsnr(x).aggregate == pytest.approx(gsnr(draws[:, :1]).aggregate, rel=1e-12)


def test_variance_beyond_float64_is_a_clear_error(draws):
    with pytest.raises(DataError, match=r"overflows float64.*divide samples by a constant"):
        gradient_variance(draws * 1e300)
    # short of overflow the variance is exact (squares of 2**500 overflowed nothing before either)
    res = gradient_variance(np.ldexp(draws, 500))
    np.testing.assert_allclose(np.ldexp(res.per_coordinate, -1000), _naive_var(draws, 1), 1e-12)
    tiny = gradient_variance(draws * 1e-300)  # ~1e-600 rounds to 0: float64's nearest value
    assert tiny.total == 0.0


def test_stratified_variance_bad_inputs():
    """1e300 gave inf with a numpy warning and no rows a ZeroDivisionError."""
    x = np.random.default_rng(2).standard_normal((12, 3))
    labels = np.repeat([0, 1, 2], 4)
    ref = stratified_minibatch_variance(x, labels, batch_size=3).per_coordinate
    big = stratified_minibatch_variance(np.ldexp(x, 500), labels, batch_size=3)
    np.testing.assert_allclose(np.ldexp(big.per_coordinate, -1000), ref, rtol=1e-12)
    with pytest.raises(DataError, match="per_sample holds values up to"):
        stratified_minibatch_variance(x * 1e300, labels, batch_size=3)
    with pytest.raises(InsufficientDataError, match="no rows"):
        stratified_minibatch_variance(x[:0], labels[:0], batch_size=3)


# ----------------------------------------------------------------------------------------------
# in-memory inputs are computed over blocks of columns


def _all_three(x, **kw):
    out = {}
    batch = kw.get("batch_size")
    var = gradient_variance(
        x, groups=kw.get("groups"), **{k: v for k, v in kw.items() if k != "groups"}
    )
    ngv_kw = {k: v for k, v in kw.items() if k not in ("groups", "ddof")}
    ngv = normalized_gradient_variance(x, groups=kw.get("groups"), **ngv_kw)
    snr = gsnr(x, groups=kw.get("groups"), **{k: v for k, v in kw.items() if k != "groups"})
    out["var"] = (var.per_coordinate, var.total, var.mean, var.layers, var.mean_sq_norm)
    out["ngv"] = (ngv.per_coordinate, ngv.value, ngv.layers, ngv.num_degenerate)
    out["gsnr"] = (snr.per_coordinate, snr.mean, snr.median, snr.aggregate, snr.layers)
    del batch
    return out


def _assert_identical(a, b):
    for key in a:
        for u, w in zip(a[key], b[key], strict=True):
            if isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, w)
            else:
                assert u == w or (u != u and w != w), (key, u, w)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"ddof": 0},
        {"batch_size": 3, "replace": False},
        {"batch_size": 2, "population_size": 1e6},
        {"mean": "given", "ddof": 0},
    ],
    ids=["draws", "ddof0", "per-example", "sampled", "mean"],
)
def test_blockwise_columns_give_the_same_bits_as_one_block(monkeypatch, kw):
    rng = np.random.default_rng(3)
    x = rng.standard_t(2.5, size=(7, 1001))
    x[:, 10] = 0.0  # a degenerate column
    plain = x.astype(np.float32)
    x[:, 500:503] *= 1e-290  # columns rescaled by a power of two (float64 only)
    x[:, 900] *= 1e140
    kw = dict(kw)
    if kw.get("mean") == "given":
        kw["mean"] = rng.standard_normal(1001) * 0.1
        kw["mean"][[10, 500, 501, 502]] = 0.0  # all-zero columns need a zero mean (NGV)
    groups = {"a": slice(0, 400), "b": np.arange(400, 1001)}
    import gradnoise.variance as gv

    monkeypatch.setattr(gv, "BLOCK_BYTES", 2**40)  # one block
    whole = _all_three(x, groups=groups, **kw)
    whole32 = _all_three(plain, groups=groups, **kw)
    monkeypatch.setattr(gv, "BLOCK_BYTES", 8 * 7 * 3)  # 3 columns per block
    _assert_identical(_all_three(x, groups=groups, **kw), whole)
    _assert_identical(_all_three(plain, groups=groups, **kw), whole32)


def test_blockwise_nan_count_covers_every_block(monkeypatch):
    import gradnoise.variance as gv

    monkeypatch.setattr(gv, "BLOCK_BYTES", 8 * 4 * 2)
    x = np.ones((4, 50), dtype=np.float32)
    x[1, 3], x[2, 40], x[0, 41] = np.nan, np.inf, -np.inf
    with pytest.raises(DataError, match="3 NaN/Inf"):
        gradient_variance(x)


def test_a_float32_input_is_never_copied_whole_to_float64(monkeypatch):
    import tracemalloc

    import gradnoise.variance as gv

    monkeypatch.setattr(gv, "BLOCK_BYTES", 2**20)
    k, p = 16, 400_000
    x = np.random.default_rng(0).standard_normal((k, p)).astype(np.float32)
    tracemalloc.start()
    try:
        gradient_variance(x)
        normalized_gradient_variance(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the per-coordinate results (m, v, second moment, exponents: 32 bytes a column) and a few
    # blocks; one float64 copy of the input alone is 128 bytes a column
    assert peak < 64 * p, peak / p


@pytest.mark.parametrize("function", [gradient_variance, normalized_gradient_variance, gsnr])
def test_contiguous_groups_sum_like_per_column_codes_bit_for_bit(function):
    # slices that tile the columns are summed span by span, index arrays through per-column
    # codes (np.bincount): the per-layer values must agree to the last bit, in any group order
    rng = np.random.default_rng(5)
    p = 3_000
    x = rng.standard_normal((5, p)) * 10.0 ** rng.integers(-3, 4, size=p)
    x[:, 100:140] = 0.0  # degenerate coordinates (GSNR leaves them out of its layer means)
    bounds = [0, *sorted(rng.choice(np.arange(1, p), size=6, replace=False)), p]
    names = [f"layer{i}" for i in range(len(bounds) - 1)]
    order = rng.permutation(len(names))
    slices = {names[i]: slice(bounds[i], bounds[i + 1]) for i in order}
    arrays = {names[i]: np.arange(bounds[i], bounds[i + 1]) for i in order}
    by_span, by_code = function(x, groups=slices), function(x, groups=arrays)
    assert by_span.layers == by_code.layers
    if function is gsnr:
        assert by_span.layer_aggregates == by_code.layer_aggregates


def test_sequential_sum_is_bincounts_order():
    import gradnoise.variance as gv

    rng = np.random.default_rng(2)
    values = rng.standard_normal(5_000) * 10.0 ** rng.integers(-8, 9, size=5_000)
    codes = np.zeros(values.size, dtype=np.int64)
    expected = float(np.bincount(codes, weights=values)[0])
    assert gv._sequential_sum(values) == expected
    old = gv.SUM_CHUNK
    try:  # chunk boundaries carry the running sum exactly
        gv.SUM_CHUNK = 37
        assert gv._sequential_sum(values) == expected
    finally:
        gv.SUM_CHUNK = old
    assert gv._sequential_sum(values[:0]) == 0.0


@pytest.mark.parametrize(
    ("function", "bound"),
    [(gradient_variance, 26), (normalized_gradient_variance, 40), (gsnr, 48)],
)
def test_per_column_memory_of_each_statistic(monkeypatch, function, bound):
    # bytes per column at the peak, K = 4 float32 draws grouped per layer: the per-coordinate
    # float64 results each function must hold (variance: m, v and 2-byte exponents = 18; NGV
    # adds the second moment and the ratio; GSNR the ratio, its finite part and the signal)
    # plus about 2 of blocks. Before: 41, 58 and 73 (per-column int64 codes for the groups,
    # 8-byte exponents, a second moment nobody asked for, copies the median made)
    import tracemalloc

    import gradnoise.variance as gv

    monkeypatch.setattr(gv, "BLOCK_BYTES", 2**20)
    p = 2_000_000
    x = np.random.default_rng(0).standard_normal((4, p)).astype(np.float32)
    groups = {f"layer{i}": slice(i * p // 10, (i + 1) * p // 10) for i in range(10)}
    tracemalloc.start()
    try:
        function(x, groups=groups)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bound * p, peak / p
