"""phiflow DAGs, assembled from the recipe (PHIFLOW_RECIPE, default recipes/demo.yaml).

Per source, one time-scheduled ingest DAG: commoncrawl_extract >> langid. A run processes the
snapshots dated in its data interval, so `airflow backfill create` over a date range and
`airflow tasks clear -t langid` over a range rerun exactly those partitions. No stage logic here.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param
from airflow.timetables.interval import CronDataIntervalTimetable

from operators.spark_stage import SparkStageOperator
from phiflow import settings
from phiflow.recipe import load_recipe

RECIPE_PATH = str(settings.default_recipe())
recipe = load_recipe(RECIPE_PATH)

for name, src in recipe.sources.items():
    with DAG(
        dag_id=f"phiflow_ingest_{name}",
        description=f"{recipe.name}: {name} WARC snapshots -> {name}.extracted -> {name}.langid",
        # Data-interval semantics (Airflow 3 defaults cron schedules to trigger semantics, where a
        # run has no interval): a run owns [start, end), so a snapshot belongs to exactly one run.
        schedule=CronDataIntervalTimetable(src.schedule, timezone="UTC"),
        start_date=src.start_date,
        catchup=False,
        max_active_runs=1,
        tags=["phiflow", recipe.name, "ingest"],
        params={"snapshot": Param(None, type=["null", "string"], enum=[None, *[s.id for s in src.snapshots]],
                                  description="process this snapshot (manual runs); empty: the run's interval")},
        default_args={"retries": recipe.airflow.retries, "retry_delay": timedelta(seconds=recipe.airflow.retry_delay_s)},
        doc_md=__doc__,
    ) as dag:
        extract = SparkStageOperator(
            task_id="commoncrawl_extract", stage="commoncrawl_extract", source=name,
            output_dataset=f"{name}.extracted", recipe_path=RECIPE_PATH,
        )
        langid = SparkStageOperator(
            task_id="langid", stage="langid", source=name, output_dataset=f"{name}.langid", recipe_path=RECIPE_PATH,
        )
        extract >> langid
    globals()[dag.dag_id] = dag
