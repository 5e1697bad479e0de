"""tokenization (stage `tokenize`; the file is not tokenize.py, which would shadow the stdlib module
under spark-submit): any committed text partition (`web.clean`, `synthetic.generated`...) -> `tokens.<dataset>`.

spark-submit entry point; `--source` names the input *dataset* (dotted). Documents go to shards by
hash of doc_id and are sorted by doc_id inside a shard, so the shards are the same on any input
layout. Executors write megatron `.bin/.idx` shards and doc-id sidecars straight into the attempt
folder (phiflow.records.token_shards); the driver commits their listing with phiflow.commit. The
tokenizer comes from the recipe (phiflow.tokenizer_store) and its digest is part of the params, so
a new tokenizer makes every tokens partition stale.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import functions as F

from phiflow.commit import commit_files
from phiflow.manifest import Manifest, sha256_json
from phiflow.records.token_shards import SHARD_STATS, write_shards
from phiflow.schema import TOKEN_DOCS
from phiflow.storage import Lake
from phiflow.tokenizer_store import TokenizerArtifact, resolve_tokenizer, tokenize_params
from spark_jobs.engine.stage_io import StageContext, print_summary, spark_schema, stage_main

STAGE = "tokenize"


def shard_writer(artifact: TokenizerArtifact, lake_url: str, target: str, threshold: int, batch_size: int):
    """The mapInArrow function: one task writes the shards of its documents."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        lake = Lake(lake_url)
        put = None if lake._local else lake.fs.put_file
        yield from write_shards(batches, artifact.load(), target, threshold, batch_size, put)

    return run


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.tokenize
    lake, dataset = ctx.lake, ctx.io(STAGE).output
    source = lake.require(ctx.source, ctx.partition)
    artifact = resolve_tokenizer(ctx.recipe, lake)
    stage_params = tokenize_params(ctx.recipe, artifact)
    threshold = stage_params["long_doc_tokens"]
    shards = max(1, min(params.shards, source.row_count // params.min_docs_per_shard))
    print(f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} documents, "
          f"tokenizer {stage_params['tokenizer']['name']} ({artifact.digest[:12]}), {shards} shards", flush=True)
    docs = spark.read.parquet(*lake.data_files(source)).select(
        "doc_id", F.col(params.text_column).alias("text"))
    empty = F.col("text").isNull() | (F.length(F.trim("text")) == 0)
    n_empty = docs.filter(empty).count()
    kept = (docs.filter(~empty)
            .withColumn("shard", F.pmod(F.xxhash64("doc_id"), F.lit(shards)).cast("int"))
            .repartition(shards, "shard")
            .sortWithinPartitions("shard", "doc_id")
            .select("shard", "doc_id", "text"))
    attempt = lake.new_attempt(dataset, ctx.partition)
    target = lake.attempt_path(dataset, ctx.partition, attempt)
    writer = shard_writer(artifact, lake.url, target, threshold, params.batch_size)
    stats = sorted(kept.mapInArrow(writer, spark_schema(SHARD_STATS)).collect(), key=lambda r: (r["kind"], r["shard"]))
    if not stats:  # no document to tokenize (an empty synthetic output): an empty doc-id table, no shards
        with lake.fs.open(posixpath.join(target, "empty.docs.parquet"), "wb") as fh:
            pq.write_table(TOKEN_DOCS.empty_table(), fh)
    part = [s for s in stats if s["kind"] == "part"]
    long = [s for s in stats if s["kind"] == "long"]
    documents = sum(s["documents"] for s in part)
    tokens = sum(s["tokens"] for s in part)
    manifest = commit_files(
        lake, dataset=dataset, partition=ctx.partition, attempt=attempt, stage=STAGE, schema=TOKEN_DOCS,
        row_count=documents,
        content=[(s["prefix"], [(f["name"], f["sha256"]) for f in s["files"]]) for s in stats],
        inputs=[source.input_ref()], recipe_digest=sha256_json(stage_params), params=stage_params,
        airflow=ctx.airflow, started=ctx.started,
        counters={
            "read": source.row_count, "dropped": {"empty_text": n_empty} if n_empty else {},
            "documents": documents, "tokens": tokens, "sequences": documents, "shards": len(part),
            "long_documents": sum(s["documents"] for s in long), "long_tokens": sum(s["tokens"] for s in long),
            "long_doc_tokens": threshold,
            "shard_list": [{"kind": s["kind"], "prefix": s["prefix"], "documents": s["documents"],
                            "tokens": s["tokens"]} for s in stats],
        },
    )
    print_summary(manifest)
    print(f"[phiflow]   {tokens} tokens in {len(part)} shards; {manifest.counters['long_documents']} documents "
          f"longer than {threshold} tokens ({manifest.counters['long_tokens']} tokens)", flush=True)
    return manifest


if __name__ == "__main__":
    stage_main(STAGE, run)
