"""gradnoise.spectra (torch-free): covariance spectra, random-matrix baselines, structure, Krylov."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats

from gradnoise.errors import DataError, InsufficientDataError
from gradnoise.spectra import covariance as covariance_module
from gradnoise.spectra import (
    covariance_spectrum,
    effective_rank,
    eigengaps,
    gram_matrix,
    gram_spectrum,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigs,
    marchenko_pastur,
    random_matrix_spectrum,
    slq_density,
    subspace_stability,
)
from gradnoise.spectra.krylov import _probes


def _explicit_covariance(G: np.ndarray, centered: bool) -> np.ndarray:
    """Descending eigenvalues of the explicit P x P matrix (the oracle)."""
    g = G.astype(np.float64)
    if centered:
        g = g - g.mean(0)
    return np.linalg.eigvalsh(g.T @ g / g.shape[0])[::-1]


def _heavy(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    """Rows with a decaying covariance spectrum and a non-zero mean."""
    scales = np.arange(1, p + 1) ** -0.8
    return 3.0 + rng.standard_normal((n, p)) * scales + rng.standard_normal((n, 1))


# ---------------------------------------------------------------- covariance spectrum ------


@pytest.mark.parametrize("n,p", [(30, 50), (60, 20), (25, 25)])
@pytest.mark.parametrize("centered", [True, False])
def test_covariance_spectrum_equals_explicit_eigvalsh(n, p, centered):
    G = _heavy(np.random.default_rng(n * p), n, p)
    got = covariance_spectrum(G, centered=centered)
    rank = min(n - 1 if centered else n, p)
    want = _explicit_covariance(G, centered)[:rank]
    assert got.shape == (rank,)
    assert np.all(np.diff(got) <= 0)
    # the rank-deficient tail is round-off: compare relative to the largest eigenvalue
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12 * want[0])
    top = want > 1e-6 * want[0]
    np.testing.assert_allclose(got[top], want[top], rtol=1e-8)


def test_covariance_spectrum_centering_is_accurate_with_a_large_mean():
    rng = np.random.default_rng(1)
    G = 1e4 + rng.standard_normal((40, 30)) * np.linspace(1, 0.1, 30)
    want = _explicit_covariance(G, True)[:30]
    np.testing.assert_allclose(covariance_spectrum(G), want, rtol=1e-8)


def test_covariance_spectrum_chunked_columns_and_dtypes(monkeypatch):
    rng = np.random.default_rng(2)
    G = _heavy(rng, 20, 70).astype(np.float32)
    whole = covariance_spectrum(G)
    monkeypatch.setattr(covariance_module, "_COLUMN_CHUNK", 16)
    np.testing.assert_allclose(covariance_spectrum(G), whole, rtol=1e-12)
    np.testing.assert_allclose(whole, _explicit_covariance(G, True)[:19], rtol=1e-8)


def test_covariance_spectrum_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    G = _heavy(np.random.default_rng(3), 12, 9)
    np.testing.assert_array_equal(covariance_spectrum(torch.as_tensor(G)), covariance_spectrum(G))


def test_gram_spectrum_matches_covariance_spectrum():
    G = _heavy(np.random.default_rng(4), 25, 40)
    for centered in (True, False):
        np.testing.assert_allclose(
            gram_spectrum(G @ G.T, centered=centered, num_params=40),
            covariance_spectrum(G, centered=centered),
            rtol=1e-9,
            atol=1e-12,
        )
    np.testing.assert_allclose(gram_matrix(G, centered=False), G @ G.T, rtol=1e-12)


def test_covariance_spectrum_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        covariance_spectrum(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(InsufficientDataError):
        covariance_spectrum(np.ones((1, 5)))
    with pytest.raises(ValueError, match="2-D"):
        covariance_spectrum(np.ones(5))
    with pytest.raises(ValueError, match="symmetric"):
        gram_spectrum(np.array([[1.0, 2.0], [0.0, 1.0]]))


def test_covariance_spectrum_at_extreme_magnitudes():
    """Entries of size 2**509 overflowed G G^T (inf -> LinAlgError/NaN); now an exact
    power-of-two rescaling gives the exact spectrum, and a spectrum beyond float64 is refused."""
    G = np.random.default_rng(3).standard_normal((4, 64))
    ref = covariance_spectrum(G)
    got = covariance_spectrum(np.ldexp(G, 509))
    np.testing.assert_allclose(np.ldexp(got, -1018), ref, rtol=1e-12)
    np.testing.assert_allclose(
        np.ldexp(gram_matrix(np.ldexp(G, 505)), -1010), gram_matrix(G), rtol=1e-12
    )
    with pytest.raises(DataError, match=r"overflows float64.*divide G by a constant"):
        covariance_spectrum(G * 1e300)


# ---------------------------------------------------------------- random-matrix baselines --


@pytest.mark.parametrize("n,p,centered", [(40, 25, True), (20, 60, True), (30, 30, False)])
def test_random_matrix_spectrum_has_the_law_of_a_gaussian_matrix(n, p, centered):
    """Bartlett sampling vs explicit Gaussian matrices: top and bottom eigenvalue distributions."""
    reps = 300
    bart = np.array([random_matrix_spectrum(n, p, centered=centered, rng=s) for s in range(reps)])
    gen = np.random.default_rng(10_000)
    direct = np.array(
        [covariance_spectrum(gen.standard_normal((n, p)), centered=centered) for _ in range(reps)]
    )
    assert bart.shape == direct.shape
    for col in (0, -1):
        assert scipy.stats.ks_2samp(bart[:, col], direct[:, col]).pvalue > 1e-3
    # exact expectation of the trace: E tr = (n - centred) p / n
    expected = (n - int(centered)) * p / n
    assert abs(bart.sum(1).mean() - expected) < 4 * bart.sum(1).std() / np.sqrt(reps)


def test_random_matrix_spectrum_total_variance_and_seed():
    a = random_matrix_spectrum(50, 10_000_000, total_variance=3.5, rng=7)
    assert a.shape == (49,) and np.isclose(a.sum(), 3.5) and np.all(np.diff(a) <= 0)
    np.testing.assert_array_equal(
        a, random_matrix_spectrum(50, 10_000_000, total_variance=3.5, rng=7)
    )
    assert not np.array_equal(a, random_matrix_spectrum(50, 10_000_000, total_variance=3.5, rng=8))
    with pytest.raises(ValueError, match="total_variance"):
        random_matrix_spectrum(5, 5, total_variance=-1.0)


def test_marchenko_pastur_law():
    mp = marchenko_pastur(401, 800, total_variance=7.0)
    assert mp.num_eigenvalues == 400 and mp.ratio == pytest.approx(0.5)
    mass = scipy.integrate.quad(mp.pdf, mp.lower, mp.upper, limit=200)[0]
    mean = scipy.integrate.quad(lambda x: x * mp.pdf(x), mp.lower, mp.upper, limit=200)[0]
    assert mass == pytest.approx(1.0, abs=1e-6)
    assert mean == pytest.approx(7.0 / 400, rel=1e-6)
    assert mp.cdf(mp.upper) == pytest.approx(1.0) and mp.cdf(mp.lower) == 0.0
    # expected rank-ordered eigenvalues vs a large random spectrum of the same shape and trace
    sample = random_matrix_spectrum(401, 800, total_variance=7.0, rng=0)
    quant = mp.rank_quantiles()
    assert np.max(np.abs(sample - quant)) < 0.08 * mp.upper
    assert scipy.stats.kstest(sample, mp.cdf).pvalue > 1e-3


# ---------------------------------------------------------------- structure ---------------


def test_eigengaps_and_effective_rank():
    np.testing.assert_allclose(eigengaps([1.0, 5.0, 2.0, 2.0]), [3.0, 0.0, 1.0])
    assert effective_rank([2.0, 2.0, 2.0, 0.0]) == pytest.approx(3.0)
    assert effective_rank([2.0, 2.0, 2.0, 0.0], kind="participation") == pytest.approx(3.0)
    lam = np.array([4.0, 2.0, 1.0, 0.5])
    p = lam / lam.sum()
    assert effective_rank(lam) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    with pytest.raises(ValueError, match="PSD"):
        effective_rank([1.0, -1.0])
    with pytest.raises(ValueError, match="kind"):
        effective_rank([1.0], kind="nope")  # type: ignore[arg-type]
    with pytest.raises(InsufficientDataError):
        eigengaps([1.0])


def test_subspace_stability_matches_explicit_parameter_space_computation():
    rng = np.random.default_rng(5)
    n, p, k = 60, 12, 3
    G = _heavy(rng, n, p)
    res = subspace_stability(G, k=k, rng=11)
    perm = np.random.default_rng(11).permutation(n)
    halves = [np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])]
    covs, tops = [], []
    for h in halves:
        g = G[h] - G[h].mean(0)
        c = g.T @ g / h.size
        w, v = np.linalg.eigh(c)
        covs.append(c)
        tops.append((w[::-1], v[:, ::-1][:, :k]))
    angles = scipy.linalg.subspace_angles(tops[0][1], tops[1][1])
    assert res.sin_theta == pytest.approx(np.sin(angles).max(), rel=1e-7)
    assert res.difference_norm == pytest.approx(np.linalg.norm(covs[0] - covs[1], 2), rel=1e-8)
    assert res.eigengap == pytest.approx(tops[0][0][k - 1] - tops[0][0][k], rel=1e-8)
    np.testing.assert_allclose(res.eigenvalues_1, tops[0][0][: k + 1], rtol=1e-8)
    assert res.sin_theta <= res.bound


def test_subspace_stability_is_small_for_a_planted_spike():
    rng = np.random.default_rng(6)
    n, p, k = 400, 50, 2
    basis = np.linalg.qr(rng.standard_normal((p, k)))[0]
    G = rng.standard_normal((n, k)) * [10.0, 6.0] @ basis.T + 0.1 * rng.standard_normal((n, p))
    res = subspace_stability(G, k=k, rng=0)
    assert res.sin_theta < 0.05 and res.sin_theta <= res.bound
    with pytest.raises(InsufficientDataError):
        subspace_stability(G[:6], k=3)


# ---------------------------------------------------------------- Krylov ------------------


def _symmetric(rng: np.random.Generator, eigs: np.ndarray) -> np.ndarray:
    q = np.linalg.qr(rng.standard_normal((eigs.size, eigs.size)))[0]
    return (q * eigs) @ q.T


@pytest.mark.parametrize("ncv", [None, 14])
@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_lanczos_eigs_matches_eigvalsh(which, ncv):
    rng = np.random.default_rng(0)
    eigs = np.concatenate([10.0 / np.arange(1, 150) ** 1.1, -np.linspace(0.1, 3.0, 50)])
    a = _symmetric(rng, eigs)
    res = lanczos_eigs(
        lambda v: a @ v, 199, k=6, which=which, tol=1e-10, ncv=ncv, rng=1, return_vectors=True
    )
    if ncv is not None:
        assert res.num_restarts > 0  # a small basis forces thick restarts
    w = np.linalg.eigvalsh(a)
    want = {"LA": w[::-1], "SA": w, "LM": w[np.argsort(-np.abs(w))]}[which][:6]
    np.testing.assert_allclose(res.eigenvalues, want, rtol=1e-10)
    explicit = np.linalg.norm(a @ res.eigenvectors - res.eigenvectors * res.eigenvalues, axis=0)
    np.testing.assert_allclose(res.residuals, explicit, rtol=1e-2, atol=1e-12 * abs(w).max())
    assert res.converged.all() and res.num_matvecs < 199


def test_lanczos_eigs_low_rank_restarts_and_small_dims():
    rng = np.random.default_rng(1)
    u = rng.standard_normal((80, 3))
    a = u @ u.T  # rank 3: the Krylov space breaks down after about 4 steps
    res = lanczos_eigs(lambda v: a @ v, 80, k=5, rng=0)
    want = np.linalg.eigvalsh(a)[::-1][:5]
    np.testing.assert_allclose(res.eigenvalues, want, rtol=1e-9, atol=1e-9 * want[0])
    small = np.diag([3.0, 1.0, 2.0])
    np.testing.assert_allclose(
        lanczos_eigs(lambda v: small @ v, 3, k=3, rng=0).eigenvalues, [3.0, 2.0, 1.0]
    )


def test_lanczos_eigs_is_seeded_and_warns_when_not_converged():
    rng = np.random.default_rng(2)
    a = _symmetric(rng, np.linspace(1.0, 1.001, 300))  # clustered: slow convergence
    one = lanczos_eigs(lambda v: a @ v, 300, k=2, rng=5, max_steps=200)
    two = lanczos_eigs(lambda v: a @ v, 300, k=2, rng=5, max_steps=200)
    np.testing.assert_array_equal(one.eigenvalues, two.eigenvalues)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        res = lanczos_eigs(lambda v: a @ v, 300, k=4, rng=5, max_steps=5, tol=1e-14)
    assert not res.converged.all()
    with pytest.raises(ValueError, match="k must be"):
        lanczos_eigs(lambda v: v, 3, k=4)
    with pytest.raises(FloatingPointError):
        lanczos_eigs(lambda v: v * np.nan, 3, k=1)


def test_trace_estimators_are_unbiased_and_calibrated():
    rng = np.random.default_rng(3)
    dim = 120
    a = _symmetric(rng, 5.0 * np.arange(1, dim + 1) ** -1.5)
    true = np.trace(a)
    for method, fn in (("hutchinson", hutchinson_trace), ("hutch++", hutchpp_trace)):
        ests = [fn(lambda v: a @ v, dim, num_matvecs=30, rng=s) for s in range(300)]
        values = np.array([e.estimate for e in ests])
        errs = np.array([e.stderr for e in ests])
        assert abs(values.mean() - true) < 4 * values.std() / np.sqrt(values.size), method
        # the standard error estimates the spread of the estimates
        assert 0.6 < np.median(errs) / values.std() < 1.5, method
        cover = np.mean(np.abs(values - true) <= 1.96 * errs)
        assert 0.85 < cover <= 1.0, method
        assert all(e.method == method and e.num_matvecs == 30 for e in ests[:3])
    rmse = {
        name: np.sqrt(
            np.mean(
                [
                    (fn(lambda v: a @ v, dim, num_matvecs=30, rng=s).estimate - true) ** 2
                    for s in range(100)
                ]
            )
        )
        for name, fn in (("h", hutchinson_trace), ("pp", hutchpp_trace))
    }
    assert rmse["pp"] < 0.5 * rmse["h"]  # decaying spectrum: Hutch++ is much better


def test_hutchpp_is_exact_when_the_sketch_spans_the_space():
    rng = np.random.default_rng(4)
    a = _symmetric(rng, rng.standard_normal(10))
    res = hutchpp_trace(lambda v: a @ v, 10, num_matvecs=36, rng=0)
    assert res.estimate == pytest.approx(np.trace(a), rel=1e-10, abs=1e-10)


def test_slq_moments_are_exact_on_a_diagonal_and_unbiased_in_general():
    diag = np.linspace(-1.0, 3.0, 60) ** 3
    dens = slq_density(lambda v: diag * v, 60, num_steps=12, num_probes=2, rng=0)
    for p in range(1, 24):  # Gauss quadrature with 12 nodes is exact up to degree 23
        assert dens.moment(p) == pytest.approx(np.mean(diag**p), rel=1e-8, abs=1e-10)
    grid = np.linspace(-40, 40, 8001)
    assert np.trapezoid(dens.density(grid, sigma=0.5), grid) == pytest.approx(1.0, abs=1e-6)
    # general matrix: per probe, sum_i w_i theta_i^p == z^T A^p z / |z|^2; mean -> tr(A^p)/dim
    rng = np.random.default_rng(5)
    w = np.concatenate([np.linspace(-0.5, 0.5, 90), [4.0, 2.5, 2.0, 1.5, 1.2]])
    a = _symmetric(rng, w)
    dens = slq_density(lambda v: a @ v, 95, num_steps=15, num_probes=30, rng=9)
    probes = _probes(np.random.default_rng(9), 95, 30, "rademacher")
    for p in (1, 2, 3, 4):
        ap = np.linalg.matrix_power(a, p)
        direct = np.einsum("ij,jk,ik->i", probes, ap, probes) / 95
        np.testing.assert_allclose(dens._per_probe(p), direct, rtol=1e-9, atol=1e-12)
        err = abs(dens.moment(p) - np.mean(w**p))
        assert err < 4 * dens.moment_stderr(p) + 1e-12
    trace, se = dens.trace()
    assert abs(trace - w.sum()) < 4 * se


def test_thick_restart_rotates_the_basis_in_place_block_by_block():
    """The restart's [m, dim] product is formed a block of columns at a time (a 10^7-coordinate
    Hessian held gigabytes of it on top of the basis); the result is the whole product's."""
    from gradnoise.spectra.krylov import _rotate_rows

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((9, 1001))
    rotation = rng.standard_normal((5, 8))
    want = rotation @ basis[:8]
    _rotate_rows(basis, rotation, 8, block_bytes=8 * 8 * 37)  # 37 columns per block
    np.testing.assert_allclose(basis[:5], want, rtol=1e-12, atol=1e-12)
