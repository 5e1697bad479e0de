"""Scheduler overhead per task on the embedded default (LocalExecutor, SQLite).

The services of `make airflow` run in a scratch home; `airflow backfill create` runs one interval of
`phiflow_ingest_web` (five chained Spark stages). From the task instances the REST API reports, the
overhead of each hand-over is the time from the upstream task's end (success) to the downstream
task's start. Baseline in the same run: the tasks' own run time, so the ratio says what share of a
chain's wall time scheduling adds.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from datetime import datetime

from common import ROOT, scratch_dir

sys.path.insert(0, str(ROOT / "tests"))
from airflow_services import Airflow

DAG = "phiflow_ingest_web"


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> None:
    with scratch_dir() as home:
        af = Airflow(home)
        with af.running(DAG, unpause=(DAG,)):
            af.cli("backfill", "create", "--dag-id", DAG, "--from-date", "2024-02-01", "--to-date", "2024-02-01")
            run_id = "backfill__2024-03-01T00:00:00+00:00"
            state = af.wait(lambda: af.runs(DAG).get(run_id) in ("success", "failed") and af.runs(DAG)[run_id],
                            "the backfill run", timeout=900)
            tis = af.api(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]
            run = af.api(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")
    assert state == "success", tis
    ran = sorted((t for t in tis if t["start_date"] and t["end_date"]), key=lambda t: ts(t["start_date"]))
    durations = [(ts(t["end_date"]) - ts(t["start_date"])).total_seconds() for t in ran]
    gaps = [(ts(b["start_date"]) - ts(a["end_date"])).total_seconds() for a, b in itertools.pairwise(ran)]
    wall = (ts(run["end_date"]) - ts(run["start_date"])).total_seconds()
    print(f"\nscheduler overhead, {DAG} interval 2024-02, {len(ran)} chained tasks (LocalExecutor, SQLite)")
    for (a, b), g in zip(itertools.pairwise(ran), gaps, strict=True):
        print(f"  {a['task_id']:>22} -> {b['task_id']:<22} {g:6.2f} s")
    g, d = statistics.median(gaps), statistics.median(durations)
    print(f"  hand-over, upstream end -> downstream start: median {g:.2f} s, max {max(gaps):.2f} s")
    print(f"  task run time (baseline): median {d:.2f} s    overhead x{g / d:.3f} of a task")
    print(f"  run wall {wall:.1f} s, of which tasks {sum(durations):.1f} s and hand-overs {sum(gaps):.1f} s "
          f"({sum(gaps) / wall:.1%})")


if __name__ == "__main__":
    main()
