"""quality_annotate: a seeded sample of quality's input -> `<source>.annotations` (LLM grade and topic).

spark-submit entry point. The training data of quality_train, as in the Phi-4 report: an LLM grades
the educational value (0-5) and names the topic of an excerpt of each sampled document. The sample is
the `sample_size` documents with the lowest seeded hash of doc_id, so it is the same on any
partitioning; every call goes through the LLM cache under the lake, so a rerun costs nothing and
commits the same content. Prompt and answer parsing: `phiflow.records.annotation_prompts`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import functions as F

from phiflow import stages
from phiflow.llm import ChatRequest, LLMConfig
from phiflow.manifest import Manifest
from phiflow.recipe import QualityAnnotateParams
from phiflow.records.annotation_prompts import excerpt, messages, parse_answer, sample_rank
from phiflow.schema import QUALITY_ANNOTATIONS, with_drop_reason
from spark_jobs.engine.llm_stage import STATS, call_stats, llm_config, llm_counters, worker_client
from spark_jobs.engine.stage_io import (
    StageContext,
    commit_partition,
    persisted,
    quality_input,
    spark_schema,
    stage_main,
)

STAGE = "quality_annotate"
CHUNK = 32  # documents per LLM call: one progress line each, and a failure loses at most this much
OUT = pa.schema([*with_drop_reason(QUALITY_ANNOTATIONS), *STATS])  # the stats columns are not committed


def annotate_config(ctx: StageContext) -> LLMConfig:
    """The recipe's `llm:` section (model path, cache, threads, retries) with the stage's own backend,
    model, endpoint, key and concurrency."""
    p = ctx.recipe.stages.quality_annotate
    return llm_config(ctx).model_copy(
        update={
            "backend": p.backend,
            "model": p.model,
            "base_url": p.base_url,
            "api_key_env": p.api_key_env,
            "max_concurrency": p.max_concurrency,
        }
    )


def with_rank(seed: int):  # -> mapInArrow function
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ranks = [sample_rank(d, seed) for d in batch.column("doc_id").to_pylist()]
            yield batch.append_column("_rank", pa.array(ranks, pa.int64()))

    return run


def annotate_batches(params: QualityAnnotateParams, config_json: str, kind: str = "text"):  # -> mapInArrow
    """Grade each sampled document (`kind` code: with the code prompt)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        client = worker_client(config_json)
        for batch in batches:
            docs = sorted(batch.to_pylist(), key=lambda r: r["doc_id"])
            for start in range(0, len(docs), CHUNK):
                chunk = docs[start : start + CHUNK]
                texts = [excerpt(d["text"], params.max_chars) for d in chunk]
                before = dict(client.stats)
                t0 = time.time()
                results = client.chat(
                    [
                        ChatRequest(messages(t, params.topics, kind), max_tokens=params.max_tokens, seed=params.seed)
                        for t in texts
                    ]
                )
                rows = []
                for d, text, res in zip(chunk, texts, results, strict=True):
                    answer = res.texts[0]
                    grade, topic, reason = parse_answer(answer, params.topics)
                    rows.append(
                        {
                            **{k: d[k] for k in ("doc_id", "source", "source_uri", "parent_ids", "language")},
                            "text": text,
                            "grade": grade,
                            "topic": topic,
                            "answer": answer,
                            "model": client.model,
                            "drop_reason": reason,
                            "_llm_requests": 0,
                            "_llm_cache_hits": 0,
                        }
                    )
                req, hits = call_stats(client, before)
                rows[0]["_llm_requests"], rows[0]["_llm_cache_hits"] = req, hits
                kept = sum(r["drop_reason"] is None for r in rows)
                print(
                    f"[phiflow] {STAGE}: {len(chunk)} documents -> {kept} annotated, "
                    f"{req} llm requests ({hits} cached) in {time.time() - t0:.1f} s",
                    flush=True,
                )
                yield pa.RecordBatch.from_pylist(rows, schema=OUT)

    return run


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.quality_annotate
    dataset, schema = quality_input(ctx)
    source = ctx.lake.require(dataset, ctx.partition)
    fields = ["doc_id", "source", "source_uri", "parent_ids", "language", "text"]
    docs = spark.read.schema(spark_schema(schema)).parquet(*ctx.lake.data_files(source)).select(*fields)
    ranked = pa.schema([schema.field(f) for f in fields]).append(pa.field("_rank", pa.int64()))
    sample = (
        docs.mapInArrow(with_rank(params.seed), spark_schema(ranked))
        .orderBy("_rank", "doc_id")
        .limit(params.sample_size)
        .drop("_rank")
    )
    # spread the sample over the executors (spark.sql.shuffle.partitions parts; no SparkContext on a
    # Spark Connect client): each one calls the LLM for its share
    sample = sample.repartition("doc_id")
    cfg = annotate_config(ctx)
    print(
        f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} documents, sampling "
        f"{params.sample_size}, backend {cfg.backend} model {cfg.model}",
        flush=True,
    )
    kind = "code" if ctx.kind == stages.CODE else "text"
    rows = sample.mapInArrow(annotate_batches(params, cfg.model_dump_json(), kind), spark_schema(OUT))
    with persisted(rows):
        kept = rows.filter(F.col("drop_reason").isNull())
        topics = {r["topic"]: int(r["count"]) for r in kept.groupBy("topic").count().collect()}
        grades = {str(r["grade"]): int(r["count"]) for r in kept.groupBy("grade").count().collect()}
        return commit_partition(
            spark,
            ctx,
            stage=STAGE,
            dataset=ctx.io(STAGE).output,
            rows=rows,
            schema=QUALITY_ANNOTATIONS,
            inputs=[source.input_ref()],
            counters={
                "read": source.row_count,
                "sampled": rows.count(),
                "annotated": sum(topics.values()),
                "topics": dict(sorted(topics.items(), key=lambda kv: (-kv[1], kv[0]))),
                "grades": dict(sorted(grades.items())),
                **llm_counters(rows, cfg),
            },
        )


if __name__ == "__main__":
    stage_main(STAGE, run)
