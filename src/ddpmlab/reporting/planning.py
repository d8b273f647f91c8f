"""How many training seeds a comparison of two configs needs: the power of the t tests in
:mod:`ddpmlab.reporting.replicates`, computed from the noncentral t distribution.

Two configs with k seeds each, scores compared on the log scale (a ratio B / A = exp(delta)), a
seed-to-seed standard deviation sigma of one config's log score:

- Welch's test with equal k and equal spreads is Student's two-sample test: df = 2k - 2,
  noncentrality delta / (sigma sqrt(2 / k));
- the paired test over k shared seeds, with correlation r between the configs' log scores on one
  seed: per-seed differences have sd sigma sqrt(2 (1 - r)), df = k - 1, noncentrality
  delta sqrt(k) / (sigma sqrt(2 (1 - r))).

Power = P(|T| > t_{1 - alpha/2, df}) under the noncentral t (two-sided, as the tests are). The
per-comparison alpha is used: a table corrected for m comparisons needs more (its adjusted p-values
are larger), so these counts are the least a study needs.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

POWER = 0.80
MAX_SEEDS = 1000


def power(k: int, effect: float, sd: float, paired: bool = False, correlation: float = 0.0, alpha: float = 0.05) -> float:
    """Power of the two-sided t test at k seeds per config; effect and sd on the log scale."""
    if k < 2 or sd <= 0:
        return float("nan")
    if paired:
        df, ncp = k - 1, abs(effect) * np.sqrt(k) / (sd * np.sqrt(2 * (1 - correlation)))
    else:
        df, ncp = 2 * k - 2, abs(effect) / (sd * np.sqrt(2 / k))
    critical = stats.t.ppf(1 - alpha / 2, df)
    value = stats.nct.sf(critical, df, ncp) + stats.nct.cdf(-critical, df, ncp)
    if not np.isfinite(value):  # scipy's nct gives NaN at large noncentrality, where T is close to normal around ncp
        value = stats.norm.sf(critical - ncp) + stats.norm.cdf(-critical - ncp)
    return float(value)


def seeds_needed(effect: float, sd: float, paired: bool = False, correlation: float = 0.0, target: float = POWER,
                 alpha: float = 0.05) -> int | None:  # fmt: skip
    """The fewest seeds per config (>= 2) whose power reaches ``target``; None past MAX_SEEDS (or no effect)."""
    if not (np.isfinite(effect) and np.isfinite(sd)) or effect == 0 or sd <= 0:
        return None
    for k in range(2, MAX_SEEDS + 1):
        if power(k, effect, sd, paired, correlation, alpha) >= target:
            return k
    return None
