"""phiflow data DAGs, assembled from the recipe (PHIFLOW_RECIPE, default recipes/demo.yaml).

- `phiflow_ingest_<source>`, one per source, time-scheduled with data intervals: extraction,
  language id, quality, dedup and decontamination of the snapshots (or dumps) dated in the run's
  interval. `airflow backfill create` over a range and `airflow tasks clear -t <stage>` over a range
  rerun exactly those partitions of those stages.
- `phiflow_synthesis`, scheduled on the clean datasets' Assets: seed selection and synthesis of the
  partitions the triggering asset events name.

No stage logic here: the tasks, their order and their datasets come from the stage table (phiflow/stages.py).
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, chain
from airflow.timetables.interval import CronDataIntervalTimetable

from operators.dag_args import dag_args
from operators.spark_stage import SparkStageOperator, dataset_asset
from phiflow import settings, stages
from phiflow.check import require_closed
from phiflow.recipe import load_recipe

RECIPE_PATH = str(settings.default_recipe())
recipe = load_recipe(RECIPE_PATH)
require_closed(recipe)  # a recipe whose graph does not close refuses to load: the UI shows the lines


def curation_tasks(name: str) -> list[SparkStageOperator]:
    """The tasks of one source, in the stage table's order. The quality classifier is retrained on
    every run from all annotations committed so far (one `quality.classifier` partition per model),
    and quality scores this run's partitions with it."""
    model = stages.classifier_name(recipe, name)
    return [
        SparkStageOperator(
            task_id=st.name,
            stage=st.name,
            source=name,
            fixed_partition={"model": model} if st.name == "quality_train" else None,
            recipe_path=RECIPE_PATH,
        )
        for st in stages.curation_chain(recipe, name)
    ]


for name, src in recipe.sources.items():
    key = src.partition_key
    chain_names = [st.name for st in stages.curation_chain(recipe, name)]
    with DAG(
        dag_id=f"phiflow_ingest_{name}",
        # Data-interval semantics (Airflow 3 defaults cron schedules to trigger semantics, where a
        # run has no interval): a run owns [start, end), so a snapshot belongs to exactly one run.
        schedule=CronDataIntervalTimetable(src.schedule, timezone="UTC"),
        start_date=src.start_date,
        # one run at a time (dag_args): snapshots in date order, as dedup compares against earlier ones
        **dag_args(recipe, "ingest", f"{name} ({src.kind}): {' -> '.join(chain_names)}"),
        params={
            key: Param(
                None,
                type=["null", "string"],
                enum=[None, *(i for i, _ in src.dated())],
                description=f"process this {key} (manual runs); empty: the run's interval",
            ),
            "shards": Param(
                "missing",
                type="string",
                pattern=r"^(missing|all|[0-9]{1,5}(,[0-9]{1,5})*)$",
                description="sharded stages (a CommonCrawl snapshot): 'missing' runs the shards not committed "
                "from the current inputs (resume); 'all' or ids such as 3,7 rerun those shards in every stage",
            ),
        },
        doc_md=__doc__,
    ) as dag:
        chain(*curation_tasks(name))
    globals()[dag.dag_id] = dag

# Seeds come from web pages, books and code (the report's seeds); wiki text is organic data only.
seeding = {name: stages.io(recipe, "seed_select", name).input for name in stages.seed_sources(recipe)}
if seeding and recipe.stages.synthesize.workflows:
    with DAG(
        dag_id="phiflow_synthesis",
        schedule=[dataset_asset(d) for d in seeding.values()],
        start_date=min(recipe.sources[n].start_date for n in seeding),
        **dag_args(recipe, "synthesis", "seed selection and LLM synthesis of newly committed clean partitions"),
        # The offline model runs inside each task's Spark workers on this machine's cores: tasks side by
        # side only share them (one synthesize task took 347 s for 2 requests beside two others).
        max_active_tasks=1 if recipe.llm.backend == "offline" else 16,
        params={
            key: Param(None, type=["null", "string"], description=f"rerun this {key} (manual runs); empty: the newest")
            for key in sorted({recipe.sources[n].partition_key for n in seeding})
        },
        doc_md=__doc__,
    ) as synthesis:
        for name in seeding:
            seeds = SparkStageOperator(
                task_id=f"seed_select_{name}", stage="seed_select", source=name, recipe_path=RECIPE_PATH
            )
            generated = SparkStageOperator(
                task_id=f"synthesize_{name}", stage="synthesize", source=name, recipe_path=RECIPE_PATH
            )
            seeds >> generated
