"""Which partitions a DAG run processes: the bridge from Airflow's data intervals to snapshots.

A time-scheduled run processes the snapshots dated inside its data interval, so a backfill over a
date range reruns exactly those snapshots. A manual run without a logical date names a snapshot
in its params, or takes the newest one.
"""

from __future__ import annotations

from datetime import datetime

from phiflow.recipe import CommonCrawlSource, WikipediaSource


def snapshot_partitions(
    src: CommonCrawlSource, start: datetime | None, end: datetime | None, requested: str | None = None
) -> list[dict[str, str]]:
    if requested:
        return [{"snapshot": src.snapshot(requested).id}]
    if start is None or end is None:
        return [{"snapshot": src.snapshots[-1].id}]
    return [{"snapshot": s.id} for s in src.snapshots_in(start, end)]


def dump_partitions(
    src: WikipediaSource, start: datetime | None, end: datetime | None, requested: str | None = None
) -> list[dict[str, str]]:
    """Wikipedia twin of `snapshot_partitions`: one partition per dump (`{"dump": "enwiki-20240601"}`)."""
    if requested:
        return [{"dump": src.dump_by_id(requested).id}]
    if start is None or end is None:
        newest = src.dumps[-1].date
        return [{"dump": d.id} for d in src.dumps if d.date == newest]
    return [{"dump": d.id} for d in src.dumps_in(start, end)]


def source_partitions(
    src: CommonCrawlSource | WikipediaSource, start: datetime | None, end: datetime | None, requested: str | None = None
) -> list[dict[str, str]]:
    """The partitions of any source kind that a run over [start, end) owns."""
    if isinstance(src, WikipediaSource):
        return dump_partitions(src, start, end, requested)
    return snapshot_partitions(src, start, end, requested)
