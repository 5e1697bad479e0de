"""quality: `<source>.langid` (web, documents) or `<source>.extracted` (wiki, code) -> `<source>.quality`.

spark-submit entry point. Per Arrow batch: corruption outliers and heuristic rules
(`quality_rules`), then the fastText classifiers of `quality.classifier/model=<name>`
(`quality_score` = P(educational), `topic`). Selection keeps the top `keep_fraction` of the
rule-surviving documents by score, plus a separate quota of the best non-STEM documents, so the
kept set is not all STEM; the manifest reports the topic mix before and after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import functions as F

from phiflow import stages
from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import QualityParams
from phiflow.records.quality_classifier import label_probs, load_bytes
from phiflow.records.quality_rules import drop_reason
from phiflow.schema import QUALITY_FIELDS, QUALITY_MODELS, with_drop_reason, with_fields
from spark_jobs.engine.shard_runner import input_shards
from spark_jobs.engine.stage_io import (
    StageContext,
    commit_partition,
    counts,
    persisted,
    quality_input,
    spark_schema,
    stage_main,
)

STAGE = "quality"


def score_batches(params: QualityParams, out: pa.Schema, models: dict[str, bytes], text_rules: bool = True):
    """The mapInArrow function: rules, then the classifiers. Code skips the text rules (words, prose
    punctuation, boilerplate phrases): its own rules ran at extraction."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        loaded = {name: load_bytes(data) for name, data in models.items()}
        for batch in batches:
            texts = batch.column("text").to_pylist()
            langs = batch.column("language").to_pylist()
            reasons = [
                drop_reason(t, lang, params.outliers, params.rules) if text_rules else None
                for t, lang in zip(texts, langs, strict=True)
            ]
            ok = [i for i, r in enumerate(reasons) if r is None]
            score = [None] * len(texts)
            topic, topic_score = [None] * len(texts), [None] * len(texts)
            if ok and "educational" in loaded:
                for i, probs in zip(
                    ok, label_probs(loaded["educational"], [texts[i] for i in ok], params.max_chars), strict=True
                ):
                    score[i] = probs.get("high", 0.0)
            if ok and "topic" in loaded:
                for i, probs in zip(
                    ok, label_probs(loaded["topic"], [texts[i] for i in ok], params.max_chars), strict=True
                ):
                    topic[i], topic_score[i] = max(probs.items(), key=lambda kv: (kv[1], kv[0]))
            cols = {f.name: batch.column(f.name) for f in batch.schema if f.name in out.names}
            cols.update(
                quality_score=pa.array(score, pa.float32()),
                topic=pa.array(topic, pa.string()),
                topic_score=pa.array(topic_score, pa.float32()),
                selected_by=pa.nulls(len(texts), pa.string()),
                drop_reason=pa.array(reasons, pa.string()),
            )
            yield pa.RecordBatch.from_arrays([cols[n] for n in out.names], schema=out)

    return run


def load_models(spark, ctx: StageContext):
    """The committed classifiers (name -> fastText bytes) of this source's model, and the manifest to pin."""
    model = stages.classifier_name(ctx.recipe, ctx.source)
    if model is None:
        return {}, None
    (dataset,) = [d for _, d in ctx.io(STAGE).references]  # the stage table's classifier dataset
    m = ctx.lake.require(dataset, {"model": model})
    table = spark.read.schema(spark_schema(QUALITY_MODELS)).parquet(*ctx.lake.data_files(m)).collect()
    return {r["name"]: bytes(r["model"]) for r in table}, m


def boundary(df, n: int):
    """(score, doc_id) of the n-th best row by score desc, doc_id asc: a total, layout-free order."""
    if n <= 0:
        return None
    rows = (
        df.orderBy(F.col("quality_score").desc(), F.col("doc_id"))
        .limit(n)
        .orderBy(F.col("quality_score"), F.col("doc_id").desc())
        .select("quality_score", "doc_id")
        .first()
    )
    return rows


def at_or_above(b) -> F.Column:
    if b is None:
        return F.lit(False)
    s, d = F.col("quality_score"), F.col("doc_id")
    return (s > F.lit(b["quality_score"])) | ((s == F.lit(b["quality_score"])) & (d <= F.lit(b["doc_id"])))


def select(rows, params: QualityParams):
    """Mark top-fraction and non-STEM-quota rows; the rest of the rule survivors get a drop reason."""
    survivors = rows.filter(F.col("drop_reason").isNull())
    n = survivors.count()
    if not n or survivors.filter(F.col("quality_score").isNotNull()).count() == 0:
        return rows.withColumn("selected_by", F.when(F.col("drop_reason").isNull(), F.lit("rules_only")))
    top = at_or_above(boundary(survivors, round(params.keep_fraction * n)))
    non_stem = ~F.col("topic").isin(params.stem_topics) & (F.col("quality_score") >= params.non_stem_min_score)
    candidates = survivors.filter(~top & non_stem)
    quota = at_or_above(boundary(candidates, round(params.non_stem_quota * n)))
    alive = F.col("drop_reason").isNull()
    return rows.withColumn(
        "selected_by",
        F.when(alive & top, "top_fraction").when(alive & non_stem & quota, "non_stem_quota"),
    ).withColumn(
        "drop_reason",
        F.when(alive & F.col("selected_by").isNull(), "below_quality_threshold").otherwise(F.col("drop_reason")),
    )


def topic_mix(df) -> dict[str, int]:
    return dict(
        sorted(
            ((r["topic"] or "none", int(r["count"])) for r in df.groupBy("topic").count().collect()),
            key=lambda kv: -kv[1],
        )
    )


def run(spark, ctx: StageContext) -> Manifest:
    dataset, _ = quality_input(ctx)
    source = ctx.lake.require(dataset, ctx.partition)
    models, model_manifest = load_models(spark, ctx)
    pinned = [model_manifest.input_ref()] if model_manifest else []

    def score_partition(spark, sub: StageContext, part: Manifest) -> Manifest:
        return score(spark, sub, part, models, pinned)

    return input_shards(
        ctx, source, score_partition, stage=STAGE, output=ctx.io(STAGE).output, spark=spark, extra_inputs=pinned
    )


def score(spark, ctx: StageContext, source: Manifest, models: dict[str, bytes], pinned: list[InputRef]) -> Manifest:
    """One input partition (a shard, or an unsharded partition) scored and selected: the top fraction
    is taken within it, so a sharded snapshot keeps the top fraction of each shard (a shard holds
    millions of documents at report scale: the same threshold, give or take sampling noise)."""
    params = ctx.recipe.stages.quality.for_source(ctx.source)
    _, schema = quality_input(ctx)
    out = with_fields(schema, QUALITY_FIELDS)
    docs = spark.read.schema(spark_schema(schema)).parquet(*ctx.lake.data_files(source))
    print(
        f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} documents, models {sorted(models)}",
        flush=True,
    )
    rows_out = with_drop_reason(out)
    scored = docs.mapInArrow(score_batches(params, rows_out, models, ctx.kind != stages.CODE), spark_schema(rows_out))
    # The scores are computed once (fastText) and read by the selection, the topic counts and the
    # write: kept on local disk, not in executor memory (stage_io.persisted).
    with persisted(scored):
        rows = select(scored, params)
        with persisted(rows):
            before = topic_mix(
                rows.filter(F.col("drop_reason").isNull() | (F.col("drop_reason") == "below_quality_threshold"))
            )
            after = topic_mix(rows.filter(F.col("drop_reason").isNull()))
            selected = counts(rows.where(F.col("selected_by").isNotNull()), "selected_by")
            return commit_partition(
                spark,
                ctx,
                stage=STAGE,
                dataset=ctx.io(STAGE).output,
                rows=rows,
                schema=out,
                inputs=[source.input_ref(), *pinned],
                counters={
                    "read": source.row_count,
                    "topics_before": before,
                    "topics_after": after,
                    "selected_by": selected,
                },
                keep_rejected=True,
            )


if __name__ == "__main__":
    stage_main(STAGE, run)
