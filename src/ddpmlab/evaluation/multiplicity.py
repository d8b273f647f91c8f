"""Many verdicts in one table: adjusted p-values that keep the table's false discoveries in check.

A table of m comparisons each tested at 5% expects 0.05 m false "real" verdicts when nothing
differs. Every table of verdicts in ddpmlab (the run-vs-best groups and the floor verdicts of one
evaluation, the config table and the one-param differences of `ddpmlab compare`) is one *family*:
its p-values are adjusted together and a verdict is "detected" when the adjusted value is at most
:data:`ALPHA`.

- ``bh`` (the default): Benjamini & Hochberg (1995). The step-up adjustment
  q_(i) = min_{j >= i} m p_(j) / j over the sorted p-values. Rejecting q <= alpha keeps the
  expected share of false discoveries among the detected at most alpha (independent or
  positively dependent tests, which paired differences against one shared best are).
- ``holm``: Holm (1979). The step-down adjustment q_(i) = max_{j <= i} (m - j + 1) p_(j). Keeps the
  chance of *any* false discovery at most alpha, under any dependence; fewer detections.
- ``none``: p-values as they are, for one comparison made on purpose.
"""

from __future__ import annotations

import numpy as np

from ddpmlab.evaluation.correction_names import CORRECTIONS

ALPHA = 0.05
METHODS = {
    "bh": "Benjamini-Hochberg (false discovery rate)",
    "holm": "Holm (family-wise error rate)",
    "none": "no correction",
}
DEFAULT = CORRECTIONS[0]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown multiple-comparison correction {method!r}: use one of {', '.join(METHODS)}")
    return method


def adjusted(p_values, method: str = DEFAULT) -> np.ndarray:
    """Adjusted p-values (m,) in the order given; NaN entries (no test possible) stay NaN and do not count in m."""
    check_method(method)
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = len(tested)
    if m == 0 or method == "none":
        out[tested] = p[tested]
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    ranked = p[order]
    rank = np.arange(1, m + 1)
    if method == "bh":
        values = np.minimum.accumulate((m * ranked / rank)[::-1])[::-1]
    else:  # holm
        values = np.maximum.accumulate((m - rank + 1) * ranked)
    out[order] = np.minimum(values, 1.0)
    return out


def describe(method: str, family: int, alpha: float = ALPHA) -> str:
    """"Benjamini-Hochberg (false discovery rate) at 5% across 12 comparisons"."""
    if method == "none":
        return f"no correction for the {family} comparisons (each at {alpha:.0%})"
    return f"{METHODS[method]} at {alpha:.0%} across {family} comparison{'s' if family != 1 else ''}"
