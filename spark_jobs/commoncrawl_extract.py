"""commoncrawl_extract: the WARC files of one crawl snapshot -> `<source>.extracted`, shard by shard.

spark-submit entry point. The snapshot's warc.paths listing is cut into shards of
`stages.commoncrawl_extract.shard_files` files in listing order (phiflow.shards.assign); each shard
is one Spark job (a task per WARC file) committed as `snapshot=…/shard=…` the moment it is written,
and when every shard is in, the snapshot's roll-up is committed (spark_jobs.engine.shard_runner).

Memory stays flat: a task streams its WARC through fsspec (local, http(s), s3), yields only the kept
documents, and writes a small report per file into the attempt folder (`_file-<hash>.json`: records
per drop reason and per WARC-Type, HTTP codings undone, and the file's outcome with its error). The
driver reads those reports after the write to count drops and to name every failed file; nothing of
the shard is cached or collected.

Failure budgets: a shard commits only if at most `shard_failure_budget` of its files failed, the
snapshot's roll-up only if at most `failure_budget` of all its files did. A rejected shard is retried
whole on the next run (not only its failed files): a shard's rows then come from one attempt of one
code version, and a shard is a few minutes of a cluster's time.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
from pyspark.sql import functions as F

from phiflow import shards
from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import CommonCrawlExtractParams, CommonCrawlSource
from phiflow.records.warc_records import FILE_OK, FILE_PREFIX, iter_rows
from phiflow.schema import WEB_EXTRACTED, with_drop_reason
from spark_jobs.engine.shard_runner import ShardPlan, ShardRejected, run_shards
from spark_jobs.engine.stage_io import (
    StageContext,
    commit_written,
    rejected_excerpt,
    spark_schema,
    stage_main,
    step,
    write_attempt,
)

STAGE = "commoncrawl_extract"
ROWS = with_drop_reason(WEB_EXTRACTED)
BATCH_ROWS = 512
REPORT_PREFIX = "_file-"  # per-file reports in the attempt folder; `_` keeps them out of the data files
MAX_ERROR_CHARS = 500
MAX_LOST = 100  # lost records named per file (all are counted)


class FailureBudgetExceeded(RuntimeError):
    """Too many WARC files of a snapshot failed: committing would silently lose a share of it."""


def warc_urls(src: CommonCrawlSource, base_url: str, snapshot_id: str) -> list[str]:
    """The WARC URLs of a snapshot, from its warc.paths(.gz) listing, in listing order."""
    snap = src.snapshot(snapshot_id)
    base = base_url.rstrip("/")
    with fsspec.open(f"{base}/{snap.paths}", "rt", compression="infer") as fh:
        paths = [line.strip() for line in fh if line.strip()]
    if snap.max_files:
        paths = paths[: snap.max_files]
    return [f"{base}/{p}" for p in paths]


def listing_digest(urls: list[str]) -> str:
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()


def report_name(url: str) -> str:
    return f"{REPORT_PREFIX}{hashlib.sha1(url.encode()).hexdigest()[:20]}.json"


def extract_files(
    source: str, params: CommonCrawlExtractParams, report_dir: str, excerpt_chars: int | None = None
):  # -> mapInArrow function
    """The per-task function: WARC URLs in, kept document rows out in Arrow batches, and one report
    per file written to `report_dir` (idempotent: a retried or speculative task rewrites the same name).
    With `excerpt_chars`, the dropped pages go out too, their text cut to it (`recipe.rejected`)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for url in batch.column("warc_url").to_pylist():
                t0, kept, dropped, buf = time.time(), 0, Counter(), []
                decoding: Counter[str] = Counter()
                records: dict[str, int] = {}
                lost: list[dict[str, Any]] = []  # records the reader could not get past, by offset
                outcome, error = FILE_OK, None
                try:
                    with fsspec.open(url, "rb") as fh:
                        for row in iter_rows(fh, url, source, params):
                            reason = row["drop_reason"]
                            decoding.update(row.get("_decoding", ()))
                            if reason is None:
                                kept += 1
                                buf.append(row)
                            elif reason.startswith(FILE_PREFIX):
                                outcome, records = reason[len(FILE_PREFIX) :], row["records"]
                            else:
                                dropped[reason] += 1
                                if not row["doc_id"] and len(lost) < MAX_LOST:
                                    lost.append({"url": url, "offset": row.get("warc_offset"),
                                                 "member_offset": row.get("warc_member_offset") or 0, "reason": reason})
                                elif row["doc_id"] and excerpt_chars is not None:
                                    text = row.get("text")
                                    buf.append({**row, "text": text[:excerpt_chars] if text else text})
                            if len(buf) >= BATCH_ROWS:
                                yield pa.RecordBatch.from_pylist(buf, schema=ROWS)
                                buf = []
                except OSError as err:  # cannot open: the whole file is one failure
                    outcome, error = f"open_error:{type(err).__name__}", str(err)[:MAX_ERROR_CHARS]
                if buf:
                    yield pa.RecordBatch.from_pylist(buf, schema=ROWS)
                report = {
                    "url": url,
                    "outcome": outcome,
                    "error": error or (outcome if outcome != FILE_OK else None),
                    "kept": kept,
                    "dropped": dict(dropped),
                    "records": records,  # by WARC-Type
                    "lost_records": lost,
                    "http_decoding": dict(decoding),  # codings undone, truncated streams, sniffed types
                    "seconds": round(time.time() - t0, 3),
                }
                with fsspec.open(posixpath.join(report_dir, report_name(url)), "w") as out:
                    json.dump(report, out)
                n = report["kept"] + sum(report["dropped"].values())
                print(
                    f"[phiflow] {STAGE} {url.rsplit('/', 1)[-1]}: {n} records in {report['seconds']:.1f} s, {outcome}",
                    file=sys.stderr,
                    flush=True,
                )

    return run


def read_reports(ctx: StageContext, dataset: str, attempt: str, urls: list[str]) -> list[dict[str, Any]]:
    """The per-file reports of a written attempt, in listing order; a file without one (its task's
    output was lost) is a failure of its own."""
    lake = ctx.lake
    base = lake.attempt_path(dataset, ctx.partition, attempt)
    out = []
    for url in urls:
        try:
            out.append(json.loads(lake.fs.cat_file(posixpath.join(base, report_name(url)))))
        except FileNotFoundError:
            out.append(
                {"url": url, "outcome": "no_report", "error": "the task wrote no report", "kept": 0, "dropped": {}}
            )
    return out


def failed_files(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every file that did not read to its end: URL, reason and error (what a retry needs)."""
    return [{"url": r["url"], "reason": r["outcome"], "error": r["error"]} for r in reports if r["outcome"] != FILE_OK]


def extract_shard(spark, ctx: StageContext, plan: ShardPlan) -> Manifest:
    """One shard: its WARC files -> its committed `snapshot=…/shard=…` partition."""
    params = ctx.recipe.stages.commoncrawl_extract
    urls: list[str] = plan.payload
    dataset = ctx.io(STAGE).output
    lake = ctx.lake
    attempt = lake.new_attempt(dataset, ctx.partition)
    report_dir = lake.uri(lake.attempt_path(dataset, ctx.partition, attempt))
    # one file per Spark partition, in listing order (a range of n ids in n slices holds one id each)
    listing = spark.range(0, len(urls), 1, len(urls)).select(
        F.element_at(F.array(*(F.lit(u) for u in urls)), F.col("id").cast("int") + 1).alias("warc_url"))
    extract = extract_files(ctx.source, params, report_dir, rejected_excerpt(ctx, STAGE))
    rows = listing.mapInArrow(extract, spark_schema(ROWS))
    with step(spark, STAGE, f"shard {ctx.partition[shards.SHARD]}, {len(urls)} files"):
        written = write_attempt(ctx, stage=STAGE, dataset=dataset, rows=rows, schema=WEB_EXTRACTED, known_reasons=(),
                                attempt=attempt, reported_drops=True, keep_rejected=True)
    reports = read_reports(ctx, dataset, attempt, urls)
    failed = failed_files(reports)
    if len(failed) / len(urls) > params.shard_failure_budget:
        lake.discard_attempt(dataset, ctx.partition, attempt)
        raise ShardRejected(
            f"{len(failed)} of {len(urls)} WARC files failed (budget {params.shard_failure_budget:.0%}, "
            f"stages.commoncrawl_extract.shard_failure_budget): "
            + "; ".join(f"{f['url'].rsplit('/', 1)[-1]} {f['reason']}" for f in failed[:5])
        )
    dropped: Counter[str] = Counter()
    records: Counter[str] = Counter()
    decoding: Counter[str] = Counter()
    lost = [x for r in reports for x in r.get("lost_records", [])]
    for r in reports:
        dropped.update(r["dropped"])
        records.update(r.get("records", {}))
        decoding.update(r.get("http_decoding", {}))
    if sum(r["kept"] for r in reports) != written.counted.kept:
        raise RuntimeError(f"{dataset}/{attempt}: the file reports do not add up to the rows written")
    return commit_written(
        ctx,
        written,
        stage=STAGE,
        inputs=plan.inputs,
        counters={
            "read": written.counted.kept + sum(dropped.values()),
            "records": dict(sorted(records.items())),
            "http_decoding": dict(sorted(decoding.items())),
            "files": {
                "total": len(urls),
                "ok": len(urls) - len(failed),
                "failed": dict(Counter(f["reason"] for f in failed)),
                "failed_files": failed,
                "lost_records": lost[: MAX_LOST * 10],
            },
        },
        reasons={None: written.counted.kept, **dropped},
    )


def snapshot_budget(params: CommonCrawlExtractParams):  # -> check of the shards before the roll-up
    def check(parts: list[Manifest]) -> None:
        total = sum(int(m.counters["files"]["total"]) for m in parts)
        failed = [f for m in parts for f in m.counters["files"]["failed_files"]]
        if total and len(failed) / total > params.failure_budget:
            raise FailureBudgetExceeded(
                f"{len(failed)} of {total} WARC files of the snapshot failed "
                f"({dict(Counter(f['reason'] for f in failed))}); budget is {params.failure_budget:.0%} "
                "(stages.commoncrawl_extract.failure_budget): the shards stay committed, the snapshot is not"
            )

    return check


def run(spark, ctx: StageContext) -> Manifest:
    src = ctx.recipe.source(ctx.source)
    params = ctx.recipe.stages.commoncrawl_extract
    snapshot = ctx.partition["snapshot"]
    urls = warc_urls(src, ctx.recipe.resolve(src.base_url), snapshot)
    if not urls:
        raise ValueError(f"{ctx.source} snapshot {snapshot}: its warc.paths listing is empty")
    cut = shards.assign(urls, params.shard_files)
    print(
        f"[phiflow] {STAGE} {ctx.source} snapshot {snapshot}: {len(urls)} WARC files in {len(cut)} shards", flush=True
    )
    external = f"external:{src.kind}"
    plans = [
        ShardPlan(i, [InputRef(external, shards.of_shard(ctx.partition, i), listing_digest(part))], part)
        for i, part in enumerate(cut)
    ]
    return run_shards(
        spark,
        ctx,
        stage=STAGE,
        output=ctx.io(STAGE).output,
        plans=plans,
        run_shard=extract_shard,
        rollup_inputs=[InputRef(external, dict(ctx.partition), listing_digest(urls))],
        before_rollup=snapshot_budget(params),
    )


if __name__ == "__main__":
    stage_main(STAGE, run)
