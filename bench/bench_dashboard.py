"""Dashboard page time at 1,000 committed partitions (synthetic manifests, local lake).

Target: the page (listing + reading manifests, building the data, rendering HTML) answers in under
one second. Baseline in the same script: only listing and parsing the manifests, i.e. what any
manifest-based view must pay, so the ratio shows what building and rendering add on top.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import ROOT, scratch_dir, timed

sys.path.insert(0, str(ROOT / "tests"))
from dashboard_fixtures import commit_all, pipeline_manifests

from phiflow.dashboard import build_from_lake, render
from phiflow.storage import Lake


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--partitions", type=int, default=1000, help="committed partitions (5 per interval)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with scratch_dir() as d:
        lake = Lake(str(d / "lake"))
        commit_all(lake, pipeline_manifests(args.partitions // 5))
        read, page = [], []
        for _ in range(args.repeat):
            read.append(timed(lambda: [m for ds in lake.datasets() for m in lake.partitions(ds)])[0])
            secs, html = timed(lambda: render(build_from_lake(lake)))
            page.append(secs)
        r, p = statistics.median(read), statistics.median(page)
        print(f"\ndashboard page, {args.partitions} committed partitions ({len(html) / 1e6:.2f} MB of HTML)")
        print(f"  list + parse manifests (baseline)   {r:7.3f} s")
        print(f"  page: data + render                 {p:7.3f} s   x{p / r:5.2f} of baseline")
        print(f"  target: < 1 s                       {p:7.3f} s = {p / 1.0:.2f} of the 1 s budget "
              f"({'met' if p < 1.0 else 'MISSED'})")


if __name__ == "__main__":
    main()
