"""`make demo`: run the recipe's DAGs through Airflow on the embedded default and summarize.

Each ingest DAG runs once per snapshot with `dag.test()`, then synthesis, training and the recipe's
ablation sweeps once each (Airflow's in-process runner: SQLite, real
task instances, real spark-submit, OpenLineage events), then the summary is read from manifests.
The environment comes from scripts/env.sh (AIRFLOW_HOME, lake, lineage file under .phiflow/).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

from phiflow import settings
from phiflow.recipe import load_recipe
from phiflow.storage import Lake
from phiflow.summary import stage_table


def _ok(run) -> bool:  # run: a DagRun
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    print(f"   {run.dag_id} {run.run_id}: {run.state}  {states}", flush=True)
    if run.state != "success":
        print(f"{run.dag_id} run {run.run_id} ended {run.state}; see the task output above", file=sys.stderr)
    return run.state == "success"


def main() -> int:
    # Task logs of dag.test() go to the terminal; keep them to warnings, the summary says the rest.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    recipe = load_recipe(settings.default_recipe())
    print(f"phiflow demo: recipe {recipe.name} ({recipe.path}), lake {Lake().url}", flush=True)
    db.initdb()
    bag = DagBag(dag_folder=str(settings.PROJECT_ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    t0 = time.time()
    for name, src in recipe.sources.items():
        dag = bag.get_dag(f"phiflow_ingest_{name}")
        key = src.partition_key
        for part_id, date in src.dated():
            when = datetime(date.year, date.month, date.day, tzinfo=UTC)
            print(f"\n== {dag.dag_id}: {key} {part_id}", flush=True)
            if not _ok(dag.test(logical_date=when, run_conf={key: part_id})):
                return 1
    # Downstream DAGs follow Assets under the scheduler; here they are run once each, in order.
    synthesis = bag.get_dag("phiflow_synthesis")
    snap = next(s for s in recipe.sources.values() if hasattr(s, "snapshots")).snapshots[0].id
    print(f"\n== phiflow_synthesis: {snap} (offline SmolLM2 on CPU: a few minutes)", flush=True)
    if not _ok(synthesis.test(run_conf={"snapshot": snap})):
        return 1
    print("\n== phiflow_training: tokenize, mix, pretrain, midtrain (megatron-core, 2 gloo processes)", flush=True)
    if not _ok(bag.get_dag("phiflow_training").test()):
        return 1
    lake = Lake()
    for sweep in recipe.sweeps:  # the ablations, on the tokens the training DAG committed
        print(f"\n== phiflow_ablation_{sweep.name}: {sweep.description}", flush=True)
        if not _ok(bag.get_dag(f"phiflow_ablation_{sweep.name}").test()):
            return 1
        report = lake.require(f"ablations.{sweep.name}", {"recipe": recipe.name})
        (md,) = [p for p in lake.data_files(report) if p.endswith("report.md")]
        print(lake.fs.cat_file(md).decode(), flush=True)
    manifests = [m for d in lake.datasets() for m in lake.partitions(d)]
    print(f"\n== phiflow demo finished in {time.time() - t0:.0f} s\n")
    print(stage_table(manifests))
    sample = next((m for m in manifests if m.dataset.endswith(".langid")), None)
    doc = lake.read_table(sample, columns=["doc_id"]).column("doc_id")[0].as_py() if sample else "DOC_ID"
    home = settings.home()
    print(f"""
Where to look:
  lake (partitions + _MANIFEST.json)  {lake.url}
  OpenLineage events                  {home / "lineage" / "events.jsonl"}
  Airflow home (SQLite, task logs)    {os.environ.get("AIRFLOW_HOME")}
  partitions and staleness            .venv/bin/phiflow status
  one document back to its WARC       .venv/bin/phiflow trace {doc}
  the Airflow UI                      make airflow   (then http://127.0.0.1:8080)""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
