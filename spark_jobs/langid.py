"""langid: `<source>.extracted` partition -> `<source>.langid` partition (language, score), for the
source kinds the stage table gives it (web pages, documents).

spark-submit entry point. Reads exactly the files the input manifest names, applies fastText
lid.176 to the texts' heads with an Arrow UDF, and pins the input's manifest digest in its own.
A sharded input (a CommonCrawl snapshot) is identified shard by shard (spark_jobs.engine.shard_runner).
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import functions as F

from phiflow.manifest import Manifest
from phiflow.recipe import LangidParams
from phiflow.records.langid_model import DROP_REASONS, LANGID_STRUCT, default_model_path, langid_columns
from phiflow.schema import EXTRACTED, langid_schema
from spark_jobs.engine.shard_runner import input_shards
from spark_jobs.engine.stage_io import StageContext, commit_written, count_by, spark_schema, stage_main, write_attempt

STAGE = "langid"


def identify(params: LangidParams, model_path: str):  # -> Arrow UDF: text heads -> LANGID_STRUCT
    def lid(texts: pa.Array) -> pa.Array:
        return langid_columns(texts, params, model_path)

    return F.arrow_udf(lid, spark_schema(pa.schema(list(LANGID_STRUCT))))


def run(spark, ctx: StageContext) -> Manifest:
    io = ctx.io(STAGE)
    source = ctx.lake.require(io.input, ctx.partition)
    return input_shards(ctx, source, identify_partition, stage=STAGE, output=io.output, spark=spark)


def identify_partition(spark, ctx: StageContext, source: Manifest) -> Manifest:
    """One input partition (a shard, or an unsharded partition) -> its langid partition."""
    params = ctx.recipe.stages.langid
    model_path = (params.model_path and ctx.recipe.resolve(params.model_path)) or default_model_path()
    io = ctx.io(STAGE)
    docs = spark.read.schema(spark_schema(EXTRACTED[ctx.kind])).parquet(*ctx.lake.data_files(source))
    print(f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} documents, model {model_path}",
          flush=True)
    # Only each text's head goes to Python (cut in the JVM) and only the three result columns come
    # back: the documents themselves never leave the JVM.
    lid = identify(params, model_path)(F.substring("text", 1, params.max_chars)).alias("lid")
    rows = docs.select("*", lid).select(*docs.columns, "lid.*")
    # One pass: the drops are counted while the kept rows are written (no cache of the partition);
    # the language mix is read back from the written files' `language` column.
    out = langid_schema(ctx.kind)
    written = write_attempt(ctx, stage=STAGE, dataset=io.output, rows=rows, schema=out, known_reasons=DROP_REASONS,
                            keep_rejected=True)
    return commit_written(
        ctx,
        written,
        stage=STAGE,
        inputs=[source.input_ref()],
        counters={"read": source.row_count, "languages": count_by(spark, written, "language")},
    )


if __name__ == "__main__":
    stage_main(STAGE, run)
