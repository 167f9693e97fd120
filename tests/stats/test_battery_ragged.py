"""Ragged samples (a model's layers: 10 to 10^6 values) are fitted in groups of similar length;
the results are those of one padded matrix, and memory follows the group, not the longest
sample times the number of samples."""

from __future__ import annotations

import numpy as np
import pytest

from gradnoise.errors import InsufficientDataError
from gradnoise.stats.tail_battery import power_law_battery


def _ragged(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [60, 3000, 75, 800, 120, 2500, 90, 400]
    out = []
    for k, n in enumerate(sizes):
        x = rng.pareto(1.2 + 0.2 * k, n) + 1 if k % 2 else rng.lognormal(0, 1, n)
        x[rng.random(n) < 0.05] = 0.0  # exact zeros, dropped and counted
        out.append(x)
    return out


FIELDS = ("n", "n_dropped", "tested", "alpha", "xmin", "n_tail", "ks", "pvalue", "plausible")


@pytest.mark.parametrize("chunk", [1, 2_000, 5_000])
def test_grouped_ragged_samples_equal_one_padded_group(chunk):
    kw = {"n_boot": 19, "rng": 3, "min_tail": 20, "nonpositive": "drop", "untestable": "skip"}
    one = power_law_battery(_ragged(), max_values_per_chunk=10**9, **kw)
    grouped = power_law_battery(_ragged(), max_values_per_chunk=chunk, **kw)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(grouped, name), getattr(one, name), err_msg=name)
    for alt, cmp in one.comparisons.items():
        np.testing.assert_array_equal(grouped.comparisons[alt].verdict, cmp.verdict)
        np.testing.assert_array_equal(grouped.comparisons[alt].loglik_ratio, cmp.loglik_ratio)
    assert one.n_bootstrapped == 8 and one.n_tested == 8


def test_equal_lengths_as_a_list_equal_the_matrix():
    rng = np.random.default_rng(1)
    mat = np.column_stack([rng.pareto(1.5, 500) + 1, rng.exponential(size=500)])
    kw = {"n_boot": 9, "rng": 2, "min_tail": 20}
    a = power_law_battery(mat, max_values_per_chunk=300, **kw)
    b = power_law_battery([mat[:, 0], mat[:, 1]], max_values_per_chunk=300, **kw)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_ragged_errors_still_name_the_samples():
    samples = _ragged()
    with pytest.raises(ValueError, match=r"value\(s\) <= 0 in 8 sample\(s\)"):
        power_law_battery(samples, n_boot=0, min_tail=20, max_values_per_chunk=100)
    with pytest.raises(InsufficientDataError, match=r"1 sample\(s\) \(first: \[0\]\)"):
        power_law_battery(
            [np.arange(1.0, 6.0), *samples[1:]], n_boot=0, nonpositive="drop", min_tail=20,
            max_values_per_chunk=100,
        )  # fmt: skip
    with pytest.raises(ValueError, match="NaN"):
        power_law_battery([np.array([1.0, np.nan, 2.0]), samples[1]], n_boot=0)
