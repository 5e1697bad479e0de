"""Which partitions a DAG run processes: the bridge from Airflow's data intervals to snapshots.

A time-scheduled run processes the snapshots dated inside its data interval, so a backfill over a
date range reruns exactly those snapshots. A manual run without a logical date names a snapshot
in its params, or takes the newest one.
"""

from __future__ import annotations

from datetime import datetime

from phiflow.recipe import CommonCrawlSource


def snapshot_partitions(
    src: CommonCrawlSource, start: datetime | None, end: datetime | None, requested: str | None = None
) -> list[dict[str, str]]:
    if requested:
        return [{"snapshot": src.snapshot(requested).id}]
    if start is None or end is None:
        return [{"snapshot": src.snapshots[-1].id}]
    return [{"snapshot": s.id} for s in src.snapshots_in(start, end)]
