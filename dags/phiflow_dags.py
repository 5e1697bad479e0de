"""phiflow data DAGs, assembled from the recipe (PHIFLOW_RECIPE, default recipes/demo.yaml).

- `phiflow_ingest_<source>`, one per source, time-scheduled with data intervals: extraction,
  language id, quality, dedup and decontamination of the snapshots (or dumps) dated in the run's
  interval. `airflow backfill create` over a range and `airflow tasks clear -t <stage>` over a range
  rerun exactly those partitions of those stages.
- `phiflow_synthesis`, scheduled on the clean datasets' Assets: seed selection and synthesis of the
  partitions the triggering asset events name.

No stage logic here: every task is a SparkStageOperator running `spark_jobs/<stage>.py`.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, chain
from airflow.timetables.interval import CronDataIntervalTimetable

from operators.dag_args import dag_args
from operators.spark_stage import SparkStageOperator, dataset_asset
from phiflow import settings
from phiflow.recipe import CommonCrawlSource, WikipediaSource, load_recipe

RECIPE_PATH = str(settings.default_recipe())
recipe = load_recipe(RECIPE_PATH)


def curation_chain(name: str, src: CommonCrawlSource | WikipediaSource) -> list[SparkStageOperator]:
    """The tasks of one source, in order. Web pages need language identification; a wiki's language
    is its dump's. The quality classifier is retrained on every run from all annotations committed so
    far (one `quality.classifier` partition), and quality scores this run's partitions with it."""
    web = isinstance(src, CommonCrawlSource)
    steps = [
        ("commoncrawl_extract" if web else "wikipedia_extract", f"{name}.extracted", None),
        *([("langid", f"{name}.langid", None)] if web else []),
    ]
    if recipe.stages.quality.classifier:
        steps += [
            ("quality_annotate", f"{name}.annotations", None),
            ("quality_train", "quality.classifier", {"model": recipe.stages.quality_train.name}),
        ]
    steps += [
        ("quality", f"{name}.quality", None),
        ("dedup", f"{name}.dedup", None),
        ("decontaminate", f"{name}.clean", None),
    ]
    return [
        SparkStageOperator(
            task_id=stage, stage=stage, source=name, output_dataset=out, fixed_partition=fixed, recipe_path=RECIPE_PATH
        )
        for stage, out, fixed in steps
    ]


for name, src in recipe.sources.items():
    partition_ids = [s.id for s in src.snapshots] if isinstance(src, CommonCrawlSource) else [d.id for d in src.dumps]
    key = "snapshot" if isinstance(src, CommonCrawlSource) else "dump"
    with DAG(
        dag_id=f"phiflow_ingest_{name}",
        # Data-interval semantics (Airflow 3 defaults cron schedules to trigger semantics, where a
        # run has no interval): a run owns [start, end), so a snapshot belongs to exactly one run.
        schedule=CronDataIntervalTimetable(src.schedule, timezone="UTC"),
        start_date=src.start_date,
        # one run at a time (dag_args): snapshots in date order, as dedup compares against earlier ones
        **dag_args(recipe, "ingest", f"{name} -> extracted -> langid -> ... -> {name}.clean"),
        params={
            key: Param(
                None,
                type=["null", "string"],
                enum=[None, *partition_ids],
                description=f"process this {key} (manual runs); empty: the run's interval",
            )
        },
        doc_md=__doc__,
    ) as dag:
        chain(*curation_chain(name, src))
    globals()[dag.dag_id] = dag

# Seeds come from web sources (the report seeds from web pages, books and code; wiki text is organic data).
clean = {
    name: f"{name}.{recipe.stages.seed_select.input_suffix}"
    for name, src in recipe.sources.items()
    if isinstance(src, CommonCrawlSource)
}
with DAG(
    dag_id="phiflow_synthesis",
    schedule=[dataset_asset(d) for d in clean.values()],
    start_date=min(src.start_date for src in recipe.sources.values()),
    **dag_args(recipe, "synthesis", "seed selection and LLM synthesis of newly committed clean partitions"),
    params={"snapshot": Param(None, type=["null", "string"], description="rerun this partition (manual runs)")},
    doc_md=__doc__,
) as synthesis:
    for name, input_dataset in clean.items():
        seeds = SparkStageOperator(
            task_id=f"seed_select_{name}",
            stage="seed_select",
            source=name,
            output_dataset="synthetic.seeds",
            input_dataset=input_dataset,
            partition_by_source=True,
            recipe_path=RECIPE_PATH,
        )
        generated = SparkStageOperator(
            task_id=f"synthesize_{name}",
            stage="synthesize",
            source=name,
            output_dataset="synthetic.generated",
            input_dataset=input_dataset,
            partition_by_source=True,
            recipe_path=RECIPE_PATH,
        )
        seeds >> generated
