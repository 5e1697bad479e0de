"""What `phiflow backfill --stage` reruns: the plan, computed before anything is changed.

A stage backfill over [first, last] names the schedule intervals that start in that range, and through
them the source's partitions dated inside those intervals. Each partition is rerun in the DAG run that
processed it, whichever kind of run that was: a scheduled or backfill run whose data interval holds the
partition's date, or a manual run that named the partition in its conf (`make demo` runs that way). A
partition no run has processed is reported, not processed: running its upstream stages is a whole-DAG
backfill (`--dag`), which the user asks for by name. So a stage backfill never processes a partition
twice and never touches a run of another interval.

Pure: runs come in as the REST API's JSON, the schedule is the recipe's cron expression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from croniter import croniter

from phiflow.intervals import source_partitions
from phiflow.manifest import partition_key
from phiflow.recipe import Source


@dataclass(frozen=True)
class Rerun:
    """Clear the stage in `run_id`, which processed `partitions`."""

    run_id: str
    partitions: list[str]


@dataclass
class StagePlan:
    intervals: list[tuple[datetime, datetime]] = field(default_factory=list)
    reruns: list[Rerun] = field(default_factory=list)
    unprocessed: list[str] = field(default_factory=list)  # partitions named by the range that no run processed
    empty: list[datetime] = field(default_factory=list)  # interval starts that hold no partition

    def lines(self, dag: str, stage: str, dry_run: bool) -> list[str]:
        """The plan as the CLI prints it, before doing it."""
        verb = "would clear" if dry_run else "will clear"
        out = [f"{verb} {dag}.{stage} in run {r.run_id} ({', '.join(r.partitions)})" for r in self.reruns]
        out += [f"no run has processed {p}: nothing to rerun {stage} in; "
                f"`phiflow backfill --dag {dag}` over its interval processes it whole" for p in self.unprocessed]
        out += [f"interval starting {d:%Y-%m-%d} holds no partition of the source: nothing to do" for d in self.empty]
        return out


def intervals(schedule: str, start_date: datetime, first: date, last: date) -> list[tuple[datetime, datetime]]:
    """The schedule's data intervals [start, end) whose start lies in [first, last] (days, inclusive),
    never before the DAG's start_date: what Airflow's backfill over the same range would create."""
    lo = max(datetime(first.year, first.month, first.day, tzinfo=UTC), start_date)
    start = lo if croniter.match(schedule, lo) else croniter(schedule, lo).get_next(datetime)
    out = []
    while start.date() <= last:
        end = croniter(schedule, start).get_next(datetime)
        out.append((start, end))
        start = end
    return out


def run_partitions(src: Source, run: dict[str, Any]) -> list[str]:
    """The partitions a run processed, as the ingest operators choose them (operators/spark_stage.py):
    the one its conf names, else those dated in its data interval."""
    requested = (run.get("conf") or {}).get(src.partition_key)
    if requested:
        return [partition_key(p) for p in source_partitions(src, None, None, str(requested))]
    start, end = run.get("data_interval_start"), run.get("data_interval_end")
    if not (start and end):
        return []
    return [partition_key(p) for p in source_partitions(src, datetime.fromisoformat(start),
                                                        datetime.fromisoformat(end))]


def stage_plan(src: Source, schedule: str, runs: list[dict[str, Any]], first: date, last: date) -> StagePlan:
    """Which run to clear for each partition the range names. Of several runs of one partition, the
    latest (by logical date, then run id) is the one whose output the lake holds now."""
    plan = StagePlan(intervals=intervals(schedule, src.start_date, first, last))
    latest: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: (str(r.get("logical_date") or r.get("run_after") or ""), r["dag_run_id"])):
        for p in run_partitions(src, run):
            latest[p] = run
    by_run: dict[str, list[str]] = {}
    for start, end in plan.intervals:
        named = [partition_key(p) for p in source_partitions(src, start, end)]
        if not named:
            plan.empty.append(start)
        for p in named:
            if p in latest:
                by_run.setdefault(latest[p]["dag_run_id"], []).append(p)
            else:
                plan.unprocessed.append(p)
    plan.reruns = [Rerun(run_id, parts) for run_id, parts in by_run.items()]
    return plan
