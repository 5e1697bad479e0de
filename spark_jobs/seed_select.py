"""seed_select: `<source>.<input_suffix>` partition -> `synthetic.seeds/source=<source>/...`.

Pages (web pages, books) scored for educational potential, kept pages cut into passages, passages
scored; both scores stay on the seed rows, and code passages (doctests, `def` blocks) become code
seeds. A code source's files give code seeds: their top-level functions and classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import functions as F

from phiflow import stages
from phiflow.manifest import Manifest
from phiflow.recipe import SeedSelectParams
from phiflow.records.seed_scoring import DROP_REASONS, code_seed_rows, seed_rows
from phiflow.schema import SEEDS, with_drop_reason
from spark_jobs.engine.stage_io import StageContext, commit_written, count_by, spark_schema, stage_main, write_attempt

STAGE = "seed_select"


def out_partition(ctx: StageContext) -> dict[str, str]:
    return {"source": ctx.source, **ctx.partition}


def seed_partitions(params: SeedSelectParams, code: bool = False):  # -> mapInArrow function
    out = with_drop_reason(SEEDS)
    rows_of = code_seed_rows if code else seed_rows

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = [r for page in batch.to_pylist() for r in rows_of(page, params)]
            yield pa.RecordBatch.from_pylist(rows, schema=out)

    return run


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.seed_select
    io = ctx.io(STAGE)
    source = ctx.lake.require(io.input, ctx.partition)
    pages = spark.read.parquet(*ctx.lake.data_files(source))
    cols = ["doc_id", "source", "source_uri", "url" if "url" in pages.columns else F.lit(None).alias("url"),
            "language", "text"]
    if params.page_score_column:
        cols.append(params.page_score_column)
    pages = pages.select(*cols)
    print(f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} pages", flush=True)
    code = ctx.kind == stages.CODE
    rows = pages.mapInArrow(seed_partitions(params, code), spark_schema(with_drop_reason(SEEDS)))
    # One pass, no cache: drops are counted while the seeds are written, the kinds read back from them.
    out_ctx = dataclasses.replace(ctx, partition=out_partition(ctx))
    written = write_attempt(out_ctx, stage=STAGE, dataset=io.output, rows=rows, schema=SEEDS,
                            known_reasons=DROP_REASONS, keep_rejected=True)
    return commit_written(
        out_ctx,
        written,
        stage=STAGE,
        inputs=[source.input_ref()],
        counters={"read": source.row_count, "seed_kinds": count_by(spark, written, "kind")},
    )


if __name__ == "__main__":
    stage_main(STAGE, run)
