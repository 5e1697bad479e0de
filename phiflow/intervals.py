"""Which partitions a DAG run processes: the bridge from Airflow's data intervals to a source's
dated partitions (snapshots, dumps, collections).

A time-scheduled run processes the partitions dated inside its data interval, so a backfill over a
date range reruns exactly those. A manual run without a logical date names a partition in its
params, or takes the newest ones.
"""

from __future__ import annotations

from datetime import datetime

from phiflow.manifest import Manifest
from phiflow.recipe import Source
from phiflow.storage import Lake


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


def snapshot_order(src: Source, partition: dict[str, str]) -> int | None:
    """Position of a partition's snapshot (dump, collection) in the source's date order (None: not one
    of its own). The recipe sorts every source's partitions by date."""
    ids = [i for i, _ in src.dated()]
    part = partition.get(src.partition_key)
    return ids.index(part) if part in ids else None


def partitions_before(
    lake: Lake, dataset: str, src: Source, partition: dict[str, str], inclusive: bool
) -> list[Manifest]:
    """Committed partitions of `dataset` dated before (or at) `partition`'s snapshot.

    Partitions that are not snapshots of `src` (another source's, e.g. a wiki dump) all count.
    Choosing by date, not by what happens to be committed, keeps a backfill of an old snapshot
    from seeing newer ones.
    """
    here = snapshot_order(src, partition)
    out = []
    for m in lake.partitions(dataset):
        pos = snapshot_order(src, m.partition)
        if pos is None or here is None or pos < here or (inclusive and pos == here):
            out.append(m)
    return out
