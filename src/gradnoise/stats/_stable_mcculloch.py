"""McCulloch (1986) quantile estimator of the alpha-stable parameters, vectorised over columns.

J. H. McCulloch, "Simple consistent estimators of stable distribution parameters",
Communications in Statistics - Simulation and Computation 15(4), 1109-1136 (1986).
With the sample quantiles q_p (McCulloch's convention: the i-th order statistic of n is the
(2i - 1)/(2n) quantile, numpy's ``method="hazen"``):

    nu_alpha = (q_.95 - q_.05) / (q_.75 - q_.25)         -> alpha = psi_1(nu_alpha, nu_beta)
    nu_beta  = (q_.95 + q_.05 - 2 q_.5) / (q_.95 - q_.05) -> beta  = psi_2(nu_alpha, nu_beta)
    scale    = (q_.75 - q_.25) / phi_3(alpha, beta)
    zeta     = q_.5 + scale * phi_5(alpha, beta)           (the S0 location)

psi_1, psi_2, phi_3, phi_5 are McCulloch's Tables III, IV, V and VII, interpolated bilinearly (as
scipy does in its private ``levy_stable._fitstart``, used in our tests only as an oracle).
nu_alpha < 2.439 (lighter than the Gaussian's 2.439) gives alpha = 2; nu_alpha above the table's
last entry (25) is clamped there, so alpha estimates stop at about 0.59.
"""

from __future__ import annotations

import numpy as np

# fmt: off
NU_ALPHA = np.array([2.439, 2.5, 2.6, 2.7, 2.8, 3.0, 3.2, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 25.0])
NU_BETA = np.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
# Table III, alpha = psi_1(nu_alpha, nu_beta): rows nu_alpha, columns nu_beta
PSI1 = np.array([
    [2.000, 2.000, 2.000, 2.000, 2.000, 2.000, 2.000],
    [1.916, 1.924, 1.924, 1.924, 1.924, 1.924, 1.924],
    [1.808, 1.813, 1.829, 1.829, 1.829, 1.829, 1.829],
    [1.729, 1.730, 1.737, 1.745, 1.745, 1.745, 1.745],
    [1.664, 1.663, 1.663, 1.668, 1.676, 1.676, 1.676],
    [1.563, 1.560, 1.553, 1.548, 1.547, 1.547, 1.547],
    [1.484, 1.480, 1.471, 1.460, 1.448, 1.438, 1.438],
    [1.391, 1.386, 1.378, 1.364, 1.337, 1.318, 1.318],
    [1.279, 1.273, 1.266, 1.250, 1.210, 1.184, 1.150],
    [1.128, 1.121, 1.114, 1.101, 1.067, 1.027, 0.973],
    [1.029, 1.021, 1.014, 1.004, 0.974, 0.935, 0.874],
    [0.896, 0.892, 0.884, 0.883, 0.855, 0.823, 0.769],
    [0.818, 0.812, 0.806, 0.801, 0.780, 0.756, 0.691],
    [0.698, 0.695, 0.692, 0.689, 0.676, 0.656, 0.597],
    [0.593, 0.590, 0.588, 0.586, 0.579, 0.563, 0.513]])
# Table IV, beta = psi_2(nu_alpha, nu_beta) (entries > 1 mark infeasible pairs; clipped to 1)
PSI2 = np.array([
    [0, 2.160, 1.000, 1.000, 1.000, 1.000, 1.000],
    [0, 1.592, 3.390, 1.000, 1.000, 1.000, 1.000],
    [0, 0.759, 1.800, 1.000, 1.000, 1.000, 1.000],
    [0, 0.482, 1.048, 1.694, 1.000, 1.000, 1.000],
    [0, 0.360, 0.760, 1.232, 2.229, 1.000, 1.000],
    [0, 0.253, 0.518, 0.823, 1.575, 1.000, 1.000],
    [0, 0.203, 0.410, 0.632, 1.244, 1.906, 1.000],
    [0, 0.165, 0.332, 0.499, 0.943, 1.560, 1.000],
    [0, 0.136, 0.271, 0.404, 0.689, 1.230, 2.195],
    [0, 0.109, 0.216, 0.323, 0.539, 0.827, 1.917],
    [0, 0.096, 0.190, 0.284, 0.472, 0.693, 1.759],
    [0, 0.082, 0.163, 0.243, 0.412, 0.601, 1.596],
    [0, 0.074, 0.147, 0.220, 0.377, 0.546, 1.482],
    [0, 0.064, 0.128, 0.191, 0.330, 0.478, 1.362],
    [0, 0.056, 0.112, 0.167, 0.285, 0.428, 1.274]])
ALPHA = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0])
BETA = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
# Table V, nu_c = phi_3(alpha, beta): rows alpha (ascending), columns beta
PHI3 = np.array([
    [1.908, 1.908, 1.908, 1.908, 1.908],
    [1.914, 1.915, 1.916, 1.918, 1.921],
    [1.921, 1.922, 1.927, 1.936, 1.947],
    [1.927, 1.930, 1.943, 1.961, 1.987],
    [1.933, 1.940, 1.962, 1.997, 2.043],
    [1.939, 1.952, 1.988, 2.045, 2.116],
    [1.946, 1.967, 2.022, 2.106, 2.211],
    [1.955, 1.984, 2.067, 2.188, 2.333],
    [1.965, 2.007, 2.125, 2.294, 2.491],
    [1.980, 2.040, 2.205, 2.435, 2.696],
    [2.000, 2.085, 2.311, 2.624, 2.973],
    [2.040, 2.149, 2.461, 2.886, 3.356],
    [2.098, 2.244, 2.676, 3.265, 3.912],
    [2.189, 2.392, 3.004, 3.844, 4.775],
    [2.337, 2.634, 3.542, 4.808, 6.247],
    [2.588, 3.073, 4.534, 6.636, 9.144]])[::-1]
# Table VII, nu_zeta = phi_5(alpha, beta)
PHI5 = np.array([
    [0, 0.000, 0.000, 0.000, 0.000],
    [0, -0.017, -0.032, -0.049, -0.064],
    [0, -0.030, -0.061, -0.092, -0.123],
    [0, -0.043, -0.088, -0.132, -0.179],
    [0, -0.056, -0.111, -0.170, -0.232],
    [0, -0.066, -0.134, -0.206, -0.283],
    [0, -0.075, -0.154, -0.241, -0.335],
    [0, -0.084, -0.173, -0.276, -0.390],
    [0, -0.090, -0.192, -0.310, -0.447],
    [0, -0.095, -0.208, -0.346, -0.508],
    [0, -0.098, -0.223, -0.380, -0.576],
    [0, -0.099, -0.237, -0.424, -0.652],
    [0, -0.096, -0.250, -0.469, -0.742],
    [0, -0.089, -0.262, -0.520, -0.853],
    [0, -0.078, -0.272, -0.581, -0.997],
    [0, -0.061, -0.279, -0.659, -1.198]])[::-1]
# fmt: on

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def bilinear(xg: np.ndarray, yg: np.ndarray, table: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Bilinear interpolation of ``table[i, j]`` at (x, y) on the grid xg x yg, clamped to it."""
    x = np.clip(x, xg[0], xg[-1])
    y = np.clip(y, yg[0], yg[-1])
    i = np.clip(np.searchsorted(xg, x, side="right") - 1, 0, xg.size - 2)
    j = np.clip(np.searchsorted(yg, y, side="right") - 1, 0, yg.size - 2)
    u = (x - xg[i]) / (xg[i + 1] - xg[i])
    v = (y - yg[j]) / (yg[j + 1] - yg[j])
    return (
        (1 - u) * (1 - v) * table[i, j]
        + u * (1 - v) * table[i + 1, j]
        + (1 - u) * v * table[i, j + 1]
        + u * v * table[i + 1, j + 1]
    )


def sample_quantiles(sorted_cols: np.ndarray, probs=QUANTILES) -> np.ndarray:
    """Hazen quantiles ((i - 1/2)/n convention) of each row of an ascending-sorted (m, n) array."""
    n = sorted_cols.shape[-1]
    out = np.empty((len(probs), sorted_cols.shape[0]))
    for r, p in enumerate(probs):
        pos = min(max(p * n - 0.5, 0.0), n - 1.0)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out[r] = (1.0 - frac) * sorted_cols[:, lo].astype(np.float64) + frac * sorted_cols[
            :, hi
        ].astype(np.float64)
    return out


def mcculloch_from_quantiles(q: np.ndarray, symmetric: bool):
    """(alpha, beta, scale, zeta) from the rows q05, q25, q50, q75, q95 (zeta: S0 location)."""
    q05, q25, q50, q75, q95 = q
    iqr = q75 - q25
    nu_alpha = (q95 - q05) / iqr
    if symmetric:
        nu_beta = np.zeros_like(nu_alpha)
    else:
        nu_beta = (q95 + q05 - 2.0 * q50) / (q95 - q05)
    abs_nb = np.abs(nu_beta)
    alpha = bilinear(NU_ALPHA, NU_BETA, PSI1, nu_alpha, abs_nb)
    beta = np.sign(nu_beta) * np.clip(bilinear(NU_ALPHA, NU_BETA, PSI2, nu_alpha, abs_nb), 0, 1)
    gaussian = nu_alpha < NU_ALPHA[0]
    alpha = np.where(gaussian, 2.0, np.clip(alpha, 0.0, 2.0))
    # as McCulloch/scipy: beta is unidentified at alpha = 2; keep the sign of nu_beta
    beta = np.where(gaussian, np.sign(nu_beta), beta)
    if symmetric:
        beta = np.zeros_like(alpha)
    abs_b = np.abs(beta)
    scale = iqr / bilinear(ALPHA, BETA, PHI3, alpha, abs_b)
    zeta = q50 + scale * np.sign(beta) * bilinear(ALPHA, BETA, PHI5, alpha, abs_b)
    return alpha, beta, scale, zeta
