"""False-alarm control across everything one evaluation tests: Benjamini-Hochberg over the p-values.

    tests = threshold_tests(stats, drift) + change_tests(series, ...)     # one Hypothesis per group tested
    findings = controlled(tests, rate=0.05)                               # the ones that may page

With thousands of segments and roll-ups in several windows, testing each at 95% pages on noise every
evaluation. Each detector states one one-sided null hypothesis per (group, window) it tests, with a p-value:

- threshold: alpha >= the group's threshold, tested with alpha's linearized standard error over samples
  (t with n - 1 degrees of freedom);
- change: the recent alpha >= the baseline alpha minus `change_delta`, tested with both standard errors.

Benjamini-Hochberg at rate q over all of them (one family per evaluation) keeps the expected share of
false findings among those raised at or below q. The tests are positively dependent (a segment and its
roll-ups share samples, windows nest), the case BH is proven for (Benjamini & Yekutieli 2001, PRDS). A
finding is raised only when the detector's own rule fires (e.g. alpha and the upper end of its interval
below the threshold) and its hypothesis is rejected; its evidence carries the p-value, the adjusted
p-value (q), the number of tests and the rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np
from scipy.special import stdtr

from monitor.evaluation.finding import Finding


@dataclass(frozen=True)
class Hypothesis:
    """One group tested by one detector: its p-value, and the finding when the detector's own rule fires.
    A test without a p-value (too few samples to estimate a spread) is not part of the family."""

    detector: str
    segment: str
    window: str
    p_value: float | None
    finding: Finding | None


def adjusted_p_values(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values: min over j >= i (in ascending order) of m p_(j) / j, capped
    at 1. Rejecting those at or below q is the BH step-up procedure at rate q."""
    count = len(p_values)
    if count == 0:
        return []
    values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    scaled = values[order] * count / np.arange(1, count + 1)
    adjusted_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(count)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return [float(value) for value in adjusted]


def controlled(hypotheses: Sequence[Hypothesis], rate: float) -> list[Finding]:
    """The findings whose hypothesis BH rejects at `rate` among all tested ones, in the order given;
    findings without a p-value pass as they are."""
    tested = [(h, h.p_value) for h in hypotheses if h.p_value is not None]
    q_values = adjusted_p_values([p_value for _, p_value in tested])
    adjusted = {id(h): q_value for (h, _), q_value in zip(tested, q_values, strict=True)}
    findings = []
    for hypothesis in hypotheses:
        if hypothesis.finding is None:
            continue
        if hypothesis.p_value is None:
            findings.append(hypothesis.finding)
            continue
        q_value = adjusted[id(hypothesis)]
        if q_value <= rate:
            evidence = {
                **hypothesis.finding.evidence,
                "p_value": hypothesis.p_value,
                "q_value": q_value,
                "tests": len(tested),
                "false_discovery_rate": rate,
            }
            findings.append(replace(hypothesis.finding, evidence=evidence))
    return findings


def below_p_value(estimate: float, limit: float, standard_error: float | None, samples: int) -> float | None:
    """One-sided p-value of H0: the true value >= `limit`, seeing `estimate` (t with samples - 1 df)."""
    if standard_error is None or samples < 2:
        return None
    if standard_error <= 0.0:
        return 0.0 if estimate < limit else 1.0
    return float(stdtr(samples - 1, (estimate - limit) / standard_error))


def drop_p_value(baseline: float, baseline_se: float, recent: float, recent_se: float, delta: float) -> float:
    """One-sided p-value of H0: recent >= baseline - delta, both estimates with their standard errors."""
    spread = math.hypot(baseline_se, recent_se)
    gap = recent - (baseline - delta)
    if spread <= 0.0:
        return 0.0 if gap < 0 else 1.0
    return NormalDist().cdf(gap / spread)
