"""seed_select: `<source>.<input_suffix>` partition -> `synthetic.seeds/source=<source>/...`.

Pages scored for educational potential, kept pages cut into passages, passages scored; both
scores stay on the seed rows, and code passages (doctests, `def` blocks) become code seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pyarrow as pa

from phiflow.manifest import Manifest
from phiflow.recipe import SeedSelectParams
from phiflow.schema import SEEDS, with_drop_reason
from spark_jobs.seed_scoring import seed_rows
from spark_jobs.stage_io import StageContext, commit_partition, persisted, spark_schema, stage_main

STAGE = "seed_select"
DATASET = "synthetic.seeds"


def out_partition(ctx: StageContext) -> dict[str, str]:
    return {"source": ctx.source, **ctx.partition}


def seed_partitions(params: SeedSelectParams):  # -> mapInArrow function
    out = with_drop_reason(SEEDS)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = [r for page in batch.to_pylist() for r in seed_rows(page, params)]
            yield pa.RecordBatch.from_pylist(rows, schema=out)

    return run


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.seed_select
    source = ctx.lake.require(f"{ctx.source}.{params.input_suffix}", ctx.partition)
    cols = ["doc_id", "source", "source_uri", "url", "language", "text"]
    if params.page_score_column:
        cols.append(params.page_score_column)
    pages = spark.read.parquet(*ctx.lake.data_files(source)).select(*cols)
    print(f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} pages", flush=True)
    rows = pages.mapInArrow(seed_partitions(params), spark_schema(with_drop_reason(SEEDS)))
    with persisted(rows):
        kept = rows.filter("drop_reason is null").groupBy("kind").count().collect()
        kinds = {r["kind"]: int(r["count"]) for r in kept}
        return commit_partition(
            spark,
            dataclasses.replace(ctx, partition=out_partition(ctx)),
            stage=STAGE,
            dataset=DATASET,
            rows=rows,
            schema=SEEDS,
            inputs=[source.input_ref()],
            counters={"read": source.row_count, "seed_kinds": kinds},
        )


if __name__ == "__main__":
    stage_main(STAGE, run)
