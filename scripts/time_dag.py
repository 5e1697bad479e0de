"""Time one DAG of the recipe under `dag.test()` on the current lake, task by task.

    .venv/bin/python scripts/time_dag.py phiflow_synthesis --empty-llm-cache

Airflow runs in a temporary home (its own SQLite database), so a running `make airflow` is not touched;
the lake is the one `make demo` filled (PHIFLOW_HOME/PHIFLOW_LAKE as usual). `--empty-llm-cache` deletes
`<lake>/_cache/llm` first, so every LLM answer is generated again. Used for the synthesis figure in the
README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("--empty-llm-cache", action="store_true", help="delete <lake>/_cache/llm first")
    args = parser.parse_args(argv)
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="phiflow-time-dag-")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from phiflow import settings

    if args.empty_llm_cache:
        shutil.rmtree(Path(settings.lake_root()) / "_cache" / "llm", ignore_errors=True)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.resetdb()
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if args.dag_id not in bag.dag_ids:
        print(f"no DAG {args.dag_id}; known: {sorted(bag.dag_ids)}", file=sys.stderr)
        return 2
    started = time.time()
    run = bag.get_dag(args.dag_id).test()
    total = time.time() - started
    tis = sorted(run.get_task_instances(), key=lambda t: t.start_date or t.queued_dttm)
    for ti in tis:
        took = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else float("nan")
        print(f"{ti.task_id:<40} {ti.state!s:<10} {took:8.1f} s")
    print(f"{args.dag_id}: {run.state} in {total:.0f} s")
    return 0 if run.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
