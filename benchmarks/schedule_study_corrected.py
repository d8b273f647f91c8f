"""Re-read the schedule study in docs/comparing.md (linear / cosine / sigmoid, 3 training seeds each)
with the multiple-comparison corrections `ddpmlab compare` now applies.

The study's per-seed FIDs were not kept, only the table of means with their 95% t intervals over
3 seeds. From those, each schedule pair's Welch test on raw FID is rebuilt exactly (sd = half-width
* sqrt(3) / t_0.975,2). The log-scale and seed-paired tests need the per-seed values: rerunning the
study gives them.

The printed table holds 12 of the study's 18 ways of sampling: 36 of its 54 comparisons. The other
18 p-values are unknown, so each comparison's adjusted p-value is given as a range: the unknown
ones all 0 (the most any printed claim can gain) to all 1 (the least). A claim that fails the
correction at the favourable end fails it whatever the missing rows held.

    python benchmarks/schedule_study_corrected.py [docs/comparing.md]
"""

from __future__ import annotations

import re
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from ddpmlab.evaluation import multiplicity

SEEDS, FAMILY = 3, 54
SCHEDULES = ("linear", "cosine", "sigmoid")
CELL = re.compile(r"\*{0,2}([\d.]+) \[([\d.]+), ([\d.]+)\]\*{0,2}")


def study_rows(doc: Path) -> list[tuple[str, int, dict[str, tuple[float, float]]]]:
    """(way of sampling, NFE, schedule -> (mean, seed-to-seed sd)) per row of the study's table."""
    text = doc.read_text()
    table = text[text.index("| sampler, grid | NFE | linear | cosine | sigmoid |") :].split("\n\n")[0].splitlines()[2:]
    t = stats.t.ppf(0.975, SEEDS - 1)
    rows = []
    for line in table:
        way, nfe, *cells = [c.strip() for c in line.strip("|").split("|")]
        values = {}
        for schedule, cell in zip(SCHEDULES, cells):
            mean, low, high = map(float, CELL.fullmatch(cell).groups())
            values[schedule] = (mean, (high - low) / 2 * np.sqrt(SEEDS) / t)
        rows.append((way, int(nfe), values))
    return rows


def welch_p(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(stats.ttest_ind_from_stats(a[0], a[1], SEEDS, b[0], b[1], SEEDS, equal_var=False).pvalue)


def main(doc: Path) -> None:
    comparisons = []
    for way, nfe, values in study_rows(doc):
        for a, b in combinations(SCHEDULES, 2):
            comparisons.append((f"{a} -> {b}", way, nfe, values[b][0] - values[a][0], welch_p(values[a], values[b])))
    p = np.array([c[-1] for c in comparisons])
    missing = FAMILY - len(p)
    print(f"{len(p)} comparisons printed of the study's {FAMILY}; the other {missing} bound each adjusted p-value\n")
    ranges = {}
    for method in ("bh", "holm"):
        best = multiplicity.adjusted(np.r_[p, np.zeros(missing)], method)[: len(p)]
        worst = multiplicity.adjusted(np.r_[p, np.ones(missing)], method)[: len(p)]
        ranges[method] = (best, worst)
    alpha = multiplicity.ALPHA
    print(f"{'change':<20} {'way':<20} {'NFE':>4} {'B - A':>7} {'p':>7} {'BH q':>15} {'Holm q':>15}  verdict (BH)")
    counts = {"raw": 0, "bh_always": 0, "bh_never": 0, "holm_always": 0}
    for i, (change, way, nfe, diff, pi) in enumerate(comparisons):
        bh_lo, bh_hi = ranges["bh"][0][i], ranges["bh"][1][i]
        ho_lo, ho_hi = ranges["holm"][0][i], ranges["holm"][1][i]
        verdict = "real" if bh_hi <= alpha else "not real" if bh_lo > alpha else "depends on the unprinted rows"
        counts["raw"] += pi <= alpha
        counts["bh_always"] += bh_hi <= alpha
        counts["bh_never"] += (pi <= alpha) and bh_lo > alpha
        counts["holm_always"] += ho_hi <= alpha
        print(f"{change:<20} {way:<20} {nfe:>4} {diff:>+7.2f} {pi:>7.4f} {bh_lo:>6.4f}-{bh_hi:<8.4f} {ho_lo:>6.4f}-{ho_hi:<8.4f}  {verdict}")
    print(f"\nreal at 5% uncorrected: {counts['raw']} of {len(p)}; real under BH whatever the unprinted rows: {counts['bh_always']}; "
          f"real uncorrected but never under BH: {counts['bh_never']}; real under Holm whatever the unprinted rows: {counts['holm_always']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "docs" / "comparing.md"))
