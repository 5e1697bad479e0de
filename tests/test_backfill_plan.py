"""phiflow backfill --stage: the plan names, for each partition of the range's intervals, the one run
that processed it, whatever kind of run that was; it never plans a run of another interval and never
creates a run (which would process a partition twice)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from phiflow.backfill_plan import Rerun, intervals, stage_plan
from phiflow.recipe import CommonCrawlSource

SRC = CommonCrawlSource(kind="commoncrawl", base_url="/crawl", snapshots=[
    {"id": "CC-MAIN-2024-10", "date": "2024-02-20", "paths": "a"},
    {"id": "CC-MAIN-2024-18", "date": "2024-04-20", "paths": "b"},
    {"id": "CC-MAIN-2024-22", "date": "2024-05-20", "paths": "c"}])
FEB, APR, MAY = "snapshot=CC-MAIN-2024-10", "snapshot=CC-MAIN-2024-18", "snapshot=CC-MAIN-2024-22"


def run(run_id: str, logical: str | None, start: str | None = None, end: str | None = None, **conf) -> dict:
    return {"dag_run_id": run_id, "logical_date": logical, "data_interval_start": start,
            "data_interval_end": end, "conf": conf}


def test_a_manual_run_that_named_the_snapshot_is_the_one_cleared() -> None:
    """`make demo` runs each snapshot by hand (conf names it, logical date = the snapshot's date, data
    interval of the month before). A stage backfill of February clears the stage there, and only there."""
    runs = [run("manual__2024-02-20", "2024-02-20T00:00:00+00:00", "2024-01-20T00:00:00+00:00",
                "2024-02-20T00:00:00+00:00", snapshot="CC-MAIN-2024-10"),
            run("scheduled__2024-01-01", "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00",
                "2024-02-01T00:00:00+00:00")]
    plan = stage_plan(SRC, "@monthly", runs, date(2024, 2, 1), date(2024, 2, 29))
    assert plan.reruns == [Rerun("manual__2024-02-20", [FEB])]
    assert plan.unprocessed == [] and plan.empty == []
    assert plan.lines("d", "langid", dry_run=True) == ["would clear d.langid in run manual__2024-02-20 (" + FEB + ")"]


def test_unprocessed_and_empty_intervals_are_reported_not_run() -> None:
    runs = [run("backfill__2024-03-01", "2024-02-01T00:00:00+00:00", "2024-02-01T00:00:00+00:00",
                "2024-03-01T00:00:00+00:00")]
    plan = stage_plan(SRC, "@monthly", runs, date(2024, 2, 1), date(2024, 5, 31))
    assert plan.reruns == [Rerun("backfill__2024-03-01", [FEB])]
    assert plan.unprocessed == [APR, MAY]  # no run has them: a whole-DAG backfill is the user's to ask for
    assert plan.empty == [datetime(2024, 3, 1, tzinfo=UTC)]
    text = "\n".join(plan.lines("d", "langid", dry_run=False))
    assert f"no run has processed {APR}" in text and "--dag d" in text and "2024-03-01 holds no partition" in text


def test_of_two_runs_of_a_partition_the_latest_is_cleared() -> None:
    runs = [run("backfill__2024-05-01", "2024-04-01T00:00:00+00:00", "2024-04-01T00:00:00+00:00",
                "2024-05-01T00:00:00+00:00"),
            run("manual__2024-06-02", "2024-06-02T00:00:00+00:00", snapshot="CC-MAIN-2024-18")]
    plan = stage_plan(SRC, "@monthly", runs, date(2024, 4, 1), date(2024, 4, 1))
    assert plan.reruns == [Rerun("manual__2024-06-02", [APR])]


def test_intervals_start_in_the_range_and_not_before_the_dag() -> None:
    feb_to_apr = intervals("@monthly", SRC.start_date, date(2024, 2, 2), date(2024, 4, 1))
    assert [s.date() for s, _ in feb_to_apr] == [date(2024, 3, 1), date(2024, 4, 1)]
    assert feb_to_apr[-1][1] == datetime(2024, 5, 1, tzinfo=UTC)
    assert [s.date() for s, _ in intervals("@monthly", SRC.start_date, date(2023, 1, 1), date(2024, 2, 1))] == [
        date(2024, 2, 1)]  # the DAG starts with its first snapshot's month
    weekly = intervals("0 0 * * 1", SRC.start_date, date(2024, 2, 1), date(2024, 2, 12))
    assert [s.date() for s, _ in weekly] == [date(2024, 2, 5), date(2024, 2, 12)]


def test_partition_keys_round_trip() -> None:
    from phiflow.manifest import parse_partition_key, partition_key

    for part in ({"snapshot": "CC-MAIN-2024-10"}, {"source": "web", "snapshot": "CC-MAIN-2024-10", "shard": "00001"},
                 {"path": "a=b"}):
        assert parse_partition_key(partition_key(part)) == part
