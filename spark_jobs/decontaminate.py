"""decontaminate: `<source>.<input>` (dedup) partition -> `<source>.clean` (documents not flagged),
`<source>.contamination` (one row per flagged document and benchmark item) and
`<source>.ngram_allowlist` (the allowlist this run used, so its digest pins it in the manifests).

The Phi-4 report's hybrid rule (appendix B.1, phiflow.records.ngrams.BenchmarkIndex): any long n-gram
(13) shared with a benchmark item flags a document, unless the n-gram is on the allowlist; otherwise
a short n-gram (7) overlap ratio at or above the threshold flags it.

The allowlist is built in Spark from the reference corpus (recipe `allowlist_references`, committed
partitions up to this snapshot): only the benchmarks' own n-grams are counted (document frequency
per reference dataset), so the intermediate is bounded by the benchmarks' size, not the corpus'.
An n-gram frequent in every reference (e.g. Wikipedia and the web) is a common phrase, not a leak.
Benchmarks are small (thousands of items); their index is broadcast to every task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from phiflow import benchmarks
from phiflow.intervals import partitions_before
from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import BenchmarkFile, DecontaminateParams
from phiflow.records.ngrams import BenchmarkIndex, Item, present
from phiflow.schema import CONTAMINATION, NGRAM_ALLOWLIST, with_drop_reason
from spark_jobs.engine.stage_io import StageContext, commit_partition, shared, spark_schema, stage_main

STAGE = "decontaminate"
# A reference document holding at least this share of an item's 7-grams carries the item: its n-grams of
# that item are not counted toward commonness (docs/dedup.md, "the allowlist and leaks").
CARRIER_SHARE = 0.5
ALLOW_COUNTS = pa.schema([pa.field("n", pa.int32()), pa.field("ngram_hash", pa.int64())])


def read_benchmark(data: bytes, spec: BenchmarkFile) -> list[Item]:
    """Items of one benchmark file; the text is its `text_fields` joined by newlines."""
    rows = benchmarks.read_rows(data, spec)
    missing = {f for r in rows for f in [spec.id_field, *spec.text_fields] if f not in r}
    if missing:
        raise ValueError(f"benchmark {spec.name}: rows lack the fields {sorted(missing)}")
    return [Item(spec.name, str(r[spec.id_field]), "\n".join(str(r[f] or "") for f in spec.text_fields)) for r in rows]


def load_benchmarks(ctx: StageContext, params: DecontaminateParams) -> tuple[list[Item], list[InputRef]]:
    items, refs = [], []
    for spec in params.benchmarks:
        with fsspec.open(ctx.recipe.resolve(spec.path), "rb") as fh:
            data = fh.read()
        items += read_benchmark(data, spec)
        refs.append(
            InputRef(
                dataset="external:benchmark",
                partition={"name": spec.name, "path": spec.path},
                digest=hashlib.sha256(data).hexdigest(),
            )
        )
    return items, refs


def count_present(sizes: list[int], index, carrier_share: float):  # -> mapInArrow function
    """Per document, one row per candidate n-gram it contains (so a count is a document frequency),
    leaving out the n-grams of any item the document carries most of: a benchmark item copied across
    the reference corpus is a leak there, and counting it would allowlist it."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        idx: BenchmarkIndex = index.value
        cands = {n: idx.candidates(n) for n in sizes}
        for batch in batches:
            ns, hashes = [], []
            for text in batch.column("text").to_pylist():
                held = idx.carriers(text, carrier_share)
                for n in sizes:
                    found = present(text, n, cands[n])
                    if len(held) and len(found):
                        found = found[~np.isin(found, idx.grams_of(held, n))]
                    ns.append(np.full(len(found), n, np.int32))
                    hashes.append(found.view(np.int64))
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(np.concatenate(ns or [np.empty(0, np.int32)])),
                    pa.array(np.concatenate(hashes or [np.empty(0, np.int64)])),
                ],
                schema=ALLOW_COUNTS,
            )

    return run


def allowlist(
    spark: SparkSession, ctx: StageContext, params: DecontaminateParams, index: BenchmarkIndex
) -> tuple[DataFrame, list[Manifest]]:
    """(n, ngram_hash, doc_freq) of benchmark n-grams frequent in every reference dataset."""
    src = ctx.recipe.source(ctx.source)
    sizes = sorted({params.long_n, params.short_n})
    plain = shared(spark, index)
    used, result = [], None
    for dataset in params.allowlist_references:
        parts = partitions_before(ctx.lake, dataset, src, ctx.partition, inclusive=True)
        if not parts:
            raise FileNotFoundError(f"allowlist reference {dataset} has no committed partition up to {ctx.partition}")
        used += parts
        files = [f for m in parts for f in ctx.lake.data_files(m)]
        df = (
            spark.read.parquet(*files)
            .select("text")
            .mapInArrow(count_present(sizes, plain, CARRIER_SHARE), spark_schema(ALLOW_COUNTS))
            .groupBy("n", "ngram_hash")
            .agg(F.count(F.lit(1)).alias(f"df{len(used)}"))
        )
        result = df if result is None else result.join(df, ["n", "ngram_hash"])
    if result is None:
        return spark.createDataFrame([], spark_schema(NGRAM_ALLOWLIST)), used
    freq = [c for c in result.columns if c.startswith("df")]
    doc_freq = F.least(*map(F.col, freq)) if len(freq) > 1 else F.col(freq[0])
    frequent = result.select("n", "ngram_hash", doc_freq.alias("doc_freq"))
    return frequent.where(F.col("doc_freq") >= params.allowlist_min_docs), used


def flag_documents(index):  # -> mapInArrow function over (doc_id, source, source_uri, parent_ids, text)
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        idx: BenchmarkIndex = index.value
        for batch in batches:
            out = []
            cols = {c: batch.column(c).to_pylist() for c in ("doc_id", "source", "source_uri", "parent_ids", "text")}
            for i, text in enumerate(cols["text"]):
                for f in idx.match(text):
                    out.append(
                        {
                            "doc_id": cols["doc_id"][i],
                            "source": cols["source"][i],
                            "source_uri": cols["source_uri"][i],
                            "parent_ids": cols["parent_ids"][i],
                            "benchmark": f.benchmark,
                            "item_id": f.item_id,
                            "rule": f.rule,
                            "matched_ngrams": f.matched,
                            "matched_count": f.matched_count,
                            "overlap": f.overlap,
                            "drop_reason": None,
                        }
                    )
            yield pa.RecordBatch.from_pylist(out, schema=with_drop_reason(CONTAMINATION))

    return run


def run(spark: SparkSession, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.decontaminate
    io = ctx.io(STAGE)
    source = ctx.lake.require(io.input, ctx.partition)
    docs = spark.read.parquet(*ctx.lake.data_files(source))
    items, bench_refs = load_benchmarks(ctx, params)
    plain = BenchmarkIndex(items, params.long_n, params.short_n, params.overlap_threshold)
    allow_df, references = allowlist(spark, ctx, params, plain)
    allow = commit_partition(
        spark,
        ctx,
        stage=STAGE,
        dataset=io.outputs[2],
        schema=NGRAM_ALLOWLIST,
        rows=allow_df.withColumn("drop_reason", F.lit(None).cast("string")),
        inputs=bench_refs + [m.input_ref() for m in references],
        counters={"read": len(items)},
        reasons={},
    )
    allowed = ctx.lake.read_table(allow, columns=["ngram_hash"]).column("ngram_hash").to_numpy().astype(np.int64)
    index = BenchmarkIndex(
        items,
        params.long_n,
        params.short_n,
        params.overlap_threshold,
        allowlist=allowed.view(np.uint64),
        max_report=params.max_report_ngrams,
    )
    print(
        f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} documents against {len(items)} "
        f"items of {len(params.benchmarks)} benchmarks; allowlist {allow.row_count} n-grams from "
        f"{len(references)} partitions",
        flush=True,
    )
    report = (
        docs.select("doc_id", "source", "source_uri", "parent_ids", "text")
        .mapInArrow(flag_documents(shared(spark, index)), spark_schema(with_drop_reason(CONTAMINATION)))
        .persist(StorageLevel.DISK_ONLY)  # read by the report and the document drops; on disk
    )
    try:
        per_doc = report.groupBy("doc_id").agg(F.min("rule").alias("rule"))  # the long-n rule sorts first
        rows = docs.join(per_doc, "doc_id", "left").withColumn(
            "drop_reason", F.when(F.col("rule").isNotNull(), F.concat(F.lit("contaminated_"), F.col("rule")))
        )
        by_benchmark = {
            r["benchmark"]: int(r["count"])
            for r in report.select("benchmark", "doc_id").distinct().groupBy("benchmark").count().collect()
        }
        inputs = [source.input_ref(), allow.input_ref(), *bench_refs]
        flags = commit_partition(
            spark,
            ctx,
            stage=STAGE,
            dataset=io.outputs[1],
            rows=report,
            schema=CONTAMINATION,
            inputs=inputs,
            reasons={},
            counters={"read": source.row_count},
        )
        clean = commit_partition(
            spark,
            ctx,
            stage=STAGE,
            dataset=io.output,
            rows=rows,
            schema=to_arrow_schema(docs.schema, timezone="UTC"),
            inputs=inputs,
            counters={
                "read": source.row_count,
                "flags": flags.row_count,
                "flagged_by_benchmark": by_benchmark,
                "benchmark_items": len(items),
                "allowlist_ngrams": allow.row_count,
                "allowlist_digest": allow.digest,
                "contamination_digest": flags.digest,
            },
            keep_rejected=True,
        )
    finally:
        report.unpersist()
    print(
        f"[phiflow]   flags {flags.row_count}  by benchmark {by_benchmark}  allowlist {allow.row_count} n-grams "
        f"(digest {allow.digest[:16]})",
        flush=True,
    )
    return clean


if __name__ == "__main__":
    stage_main(STAGE, run)
