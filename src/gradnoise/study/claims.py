"""Verdicts: what a run's numbers say about each paper's claim.

Every analysis may declare ``claims(results) -> list[Claim]`` (see
:class:`gradnoise.study.registry.Analysis`): for each claim of a paper it measures, a verdict
decided from the stored numbers by a stated rule. The report opens with a table of them, and
``summary.json["verdicts"]`` holds the same rows. The rules are listed in the README
("Verdicts") and tested on synthetic results whose answer is known
(``tests/test_report_verdicts.py``).

Verdicts are ``"supports"``, ``"contradicts"`` or ``"inconclusive"``. A verdict is about this
run only (its model, data, batch size and sample sizes); it is not a verdict on the paper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

SUPPORTS, CONTRADICTS, INCONCLUSIVE = "supports", "contradicts", "inconclusive"
VERDICTS = (SUPPORTS, CONTRADICTS, INCONCLUSIVE)

#: the smallest number of samples a fraction rule decides on
MIN_SAMPLES = 5


@dataclass(frozen=True)
class Claim:
    """One paper's claim, the verdict this run's numbers give it, and why.

    Attributes:
        paper: short citation ("Xie et al. 2023").
        claim: the claim in words.
        verdict: ``"supports"``, ``"contradicts"`` or ``"inconclusive"``.
        evidence: the numbers that decided it, in words (formatted with the report's
            formatter).
        test_rule: the rule that maps the numbers to the verdict.
    """

    paper: str
    claim: str
    verdict: str
    evidence: str
    test_rule: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a binomial fraction ``successes / n``."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


FRACTION_RULE = (
    "95% Wilson interval of the fraction (k of n samples) above 1/2: {above}; below 1/2: "
    "{below}; straddling 1/2, or n < {min}: inconclusive"
)


def fraction_verdict(successes: int, n: int, *, majority_supports: bool) -> str:
    """The fraction rule: a majority (Wilson interval above 1/2) or a minority (below 1/2) of
    ``n`` samples decides; ``majority_supports`` says which of the two supports the claim."""
    if n < MIN_SAMPLES:
        return INCONCLUSIVE
    low, high = wilson(successes, n)
    if low > 0.5:
        return SUPPORTS if majority_supports else CONTRADICTS
    if high < 0.5:
        return CONTRADICTS if majority_supports else SUPPORTS
    return INCONCLUSIVE


def fraction_rule(majority_supports: bool) -> str:
    """The text of :func:`fraction_verdict`'s rule."""
    above, below = (SUPPORTS, CONTRADICTS) if majority_supports else (CONTRADICTS, SUPPORTS)
    return FRACTION_RULE.format(above=above, below=below, min=MIN_SAMPLES)


def run_claims(analyses: Mapping[str, Any], order: Iterable[str]) -> list[dict[str, Any]]:
    """The verdict rows of a run: each analysis's claims (in ``order``), as JSON-safe dicts with
    the analysis name under ``"analysis"``. An analysis without results contributes nothing (its
    section says why)."""
    from .registry import get_analysis

    rows: list[dict[str, Any]] = []
    for name in order:
        results = analyses.get(name)
        if not isinstance(results, dict) or "unavailable" in results:
            continue
        try:
            analysis = get_analysis(name)
        except ConfigError:  # an analysis registered in another process: no claims to show
            continue
        if analysis.claims is None:
            continue
        for claim in analysis.claims(results):
            rows.append({"analysis": name, **asdict(claim)})
    return rows
