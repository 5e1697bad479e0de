"""Which partitions a DAG run processes: the bridge from Airflow's data intervals to a source's
dated partitions (snapshots, dumps, collections).

A time-scheduled run processes the partitions dated inside its data interval, so a backfill over a
date range reruns exactly those. A manual run without a logical date names a partition in its
params, or takes the newest ones.
"""

from __future__ import annotations

from datetime import datetime

from phiflow.recipe import Source


def source_partitions(
    src: Source, start: datetime | None, end: datetime | None, requested: str | None = None
) -> list[dict[str, str]]:
    """The partitions of any source kind that a run over [start, end) owns, e.g.
    `[{"snapshot": "CC-MAIN-2024-10"}]`, `[{"dump": "enwiki-20240601"}]`."""
    key, dated = src.partition_key, src.dated()
    if requested:
        ids = [i for i, _ in dated]
        if requested not in ids:
            raise KeyError(f"unknown {key} {requested!r}; known: {ids}")
        return [{key: requested}]
    if start is None or end is None:
        newest = max(d for _, d in dated)
        return [{key: i} for i, d in dated if d == newest]
    return [{key: i} for i, d in dated if start.date() <= d < end.date()]
