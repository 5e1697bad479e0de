"""langid: `<source>.extracted` partition -> `<source>.langid` partition (language, score).

spark-submit entry point. Reads exactly the files the input manifest names, applies fastText
lid.176 to Arrow batches with `mapInArrow`, and pins the input's manifest digest in its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from phiflow.manifest import Manifest
from phiflow.recipe import LangidParams
from phiflow.schema import LANGID_FIELDS, WEB_EXTRACTED, with_drop_reason, with_fields
from spark_jobs.langid_model import default_model_path, langid_batch
from spark_jobs.stage_io import (
    StageContext,
    commit_partition,
    count_reasons,
    persisted,
    spark_schema,
    stage_main,
)

STAGE = "langid"
OUT = with_fields(WEB_EXTRACTED, LANGID_FIELDS)


def langid_partitions(params: LangidParams, model_path: str):  # -> mapInArrow function
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield langid_batch(batch, params, model_path)

    return run


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.langid
    model_path = (params.model_path and ctx.recipe.resolve(params.model_path)) or default_model_path()
    source = ctx.lake.require(f"{ctx.source}.extracted", ctx.partition)
    docs = spark.read.schema(spark_schema(WEB_EXTRACTED)).parquet(*ctx.lake.data_files(source))
    print(
        f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} documents, model {model_path}", flush=True
    )
    rows = docs.mapInArrow(langid_partitions(params, model_path), spark_schema(with_drop_reason(OUT)))
    with persisted(rows):
        return commit_partition(
            spark,
            ctx,
            stage=STAGE,
            dataset=f"{ctx.source}.langid",
            rows=rows,
            schema=OUT,
            inputs=[source.input_ref()],
            reasons=count_reasons(rows),
            counters={"read": source.row_count, "languages": kept_languages(rows)},
        )


def kept_languages(rows) -> dict[str, int]:
    """Kept documents per language, largest first (the language mix shown in summaries)."""
    kept = rows.filter(rows.drop_reason.isNull()).groupBy("language").count().collect()
    return dict(sorted(((r["language"], int(r["count"])) for r in kept), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    stage_main(STAGE, run)
