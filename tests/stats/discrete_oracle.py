"""Brute-force oracles for discrete tail distributions on the integers k >= q (tests/benchmarks).

Independent of ``gradnoise.stats._powerlaw_discrete``: the normaliser is the direct sum of the
first ``terms`` terms (``math.fsum``) plus the rest as mpmath's quadrature of the continuous
function with the Euler–Maclaurin endpoint terms ``f(K)/2 - f'(K)/12 + f'''(K)/720``. Families
are ``log f`` as functions of ``y = ln(k/q)`` and a module ``m`` (numpy or mpmath).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mpmath as mp
import numpy as np
from scipy import special

LogF = Callable[[object, object], object]


def lognormal(e1: float, e2: float) -> LogF:
    """``f(k) = exp(e1 y + e2 y^2) / k`` (up to the constant q)."""
    return lambda y, m: (e1 - 1.0) * y + e2 * y * y


def truncated_power_law(alpha: float, mu: float) -> LogF:
    """``f(k) = (k/q)^-alpha exp(-mu (k/q - 1))``."""
    return lambda y, m: -alpha * y - mu * m.expm1(y)


def stretched_exponential(beta: float, kappa: float) -> LogF:
    """``f(k) = (k/q)^(beta - 1) exp(-kappa ((k/q)^beta - 1))``."""
    return lambda y, m: (beta - 1.0) * y - kappa * m.expm1(beta * y)


def _sum(log_f: LogF, q: float, stat, terms: int) -> tuple[float, mp.mpf]:
    """``(c, S)`` with ``sum_{k >= q} s(y) exp(log_f(y)) = S e^c`` (s = ``stat`` or 1)."""
    k = np.arange(q, q + terms, dtype=np.float64)
    y = np.log(k / q)
    lf = np.asarray(log_f(y, np), dtype=np.float64)
    c = float(lf.max())
    w = np.exp(lf - c)
    if stat is not None:
        w = w * np.asarray(stat(y, np), dtype=np.float64)
    mp.mp.dps = 30
    big = mp.mpf(q + terms)

    def g(x):
        val = mp.e ** (log_f(mp.log(x / q), mp) - c)
        return val if stat is None else val * stat(mp.log(x / q), mp)

    tail = (
        mp.quad(g, [big, 10 * big, 100 * big, mp.inf])
        + g(big) / 2
        - mp.diff(g, big, 1) / 12
        + mp.diff(g, big, 3) / 720
    )
    return c, math.fsum(w) + tail


def log_normaliser(log_f: LogF, q: float, terms: int = 1_000_000) -> float:
    """``ln sum_{k >= q} exp(log_f(ln(k/q)))`` by brute force (see the module docstring)."""
    c, total = _sum(log_f, q, None, terms)
    return c + float(mp.log(total))


def mean(log_f: LogF, stat, q: float, terms: int = 1_000_000) -> float:
    """``E[s(y)]`` under the family (``s >= 0``), brute force as :func:`log_normaliser`."""
    return float(_sum(log_f, q, stat, terms)[1] / _sum(log_f, q, None, terms)[1])


def log_pmf(log_f: LogF, q: float, x: np.ndarray, terms: int = 1_000_000) -> np.ndarray:
    """Exact log-pmf of the family at the integers ``x >= q``."""
    return np.asarray(log_f(np.log(x / q), np), dtype=np.float64) - log_normaliser(log_f, q, terms)


def round_lognormal_log_pmf(mu: float, sigma: float, q: float, x: np.ndarray) -> np.ndarray:
    """The ``powerlaw`` package's discrete lognormal (``discrete_normalization='round'``):
    ``P(k) = [F(k + 1/2) - F(k - 1/2)] / [1 - F(q - 1/2)]``, F the lognormal CDF."""

    def log_sf(v):
        return special.log_ndtr(-(np.log(v) - mu) / sigma)

    lo, hi = log_sf(x - 0.5), log_sf(x + 0.5)
    return lo + np.log1p(-np.exp(hi - lo)) - log_sf(np.array([q - 0.5]))[0]


def round_stretched_exponential_log_pmf(
    beta: float, lam: float, q: float, x: np.ndarray
) -> np.ndarray:
    """The ``powerlaw`` package's discrete stretched exponential ('round'): survival
    ``exp(-(lambda x)^beta)`` differenced over ``[k - 1/2, k + 1/2]``, over ``[q - 1/2, inf)``."""

    def log_sf(v):
        return -((lam * v) ** beta)

    lo, hi = log_sf(x - 0.5), log_sf(x + 0.5)
    return lo + np.log1p(-np.exp(hi - lo)) - log_sf(q - 0.5)
