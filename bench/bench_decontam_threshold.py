"""Decontamination's overlap threshold, measured: on a set with known answers (bench/paraphrase_set.py:
120 items from the sample's pages, each leaked once lightly paraphrased, one hard negative per item on
its own page, clean pages), how many leaks the hybrid rule catches and how many documents it flags
wrongly, per `overlap_threshold` (13-gram rule and 7-gram share, no allowlist).

    .venv/bin/python bench/bench_decontam_threshold.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paraphrase_set import Case, build

from phiflow.records.ngrams import BenchmarkIndex, Item

THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def score(items: list[str], cases: list[Case], threshold: float) -> tuple[int, int, int]:
    """(leaks caught, hard negatives flagged, clean documents flagged)."""
    index = BenchmarkIndex([Item("set", str(i), t) for i, t in enumerate(items)], 13, 7, threshold)
    caught = hard = clean = 0
    for c in cases:
        flagged = {int(f.item_id) for f in index.match(c.text)}
        if c.leak:
            caught += c.item in flagged
        elif c.item >= 0:
            hard += bool(flagged)
        else:
            clean += bool(flagged)
    return caught, hard, clean


def main() -> None:
    items, cases = build()
    leaks = sum(c.leak for c in cases)
    hard = sum(not c.leak and c.item >= 0 for c in cases)
    clean = sum(c.item < 0 for c in cases)
    print(f"{len(items)} items; {leaks} paraphrased leaks, {hard} hard negatives, {clean} clean pages")
    print(f"{'threshold':>9} {'caught':>8} {'hard neg. flagged':>18} {'clean flagged':>14}")
    for t in THRESHOLDS:
        c, h, k = score(items, cases, t)
        print(f"{t:>9.2f} {c:>4}/{leaks:<3} {h:>14}/{hard:<3} {k:>10}/{clean}")


if __name__ == "__main__":
    main()
