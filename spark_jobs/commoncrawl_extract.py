"""commoncrawl_extract: the WARC files of one crawl snapshot -> one `<source>.extracted` partition.

spark-submit entry point. The snapshot's paths list is split one file per Spark task; each task
streams its WARC through fsspec (local, http(s), s3) and maps it with `warc_records.iter_rows`.
The partition commits only if the files that failed stay within the recipe's failure budget.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator

import fsspec
import pyarrow as pa

from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import CommonCrawlExtractParams, CommonCrawlSource
from phiflow.schema import WEB_EXTRACTED, with_drop_reason
from spark_jobs.stage_io import (
    StageContext,
    commit_partition,
    persisted,
    spark_schema,
    stage_main,
    tally,
)
from spark_jobs.warc_records import FILE_OK, FILE_PREFIX, iter_rows

STAGE = "commoncrawl_extract"
ROWS = with_drop_reason(WEB_EXTRACTED)
BATCH_ROWS = 512


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


def extract_files(source: str, params: CommonCrawlExtractParams):  # -> mapInArrow function
    """The per-task function: WARC URLs in, document rows (kept and dropped) out, in Arrow batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for url in batch.column("warc_url").to_pylist():
                t0, n, buf = time.time(), 0, []
                try:
                    with fsspec.open(url, "rb") as fh:
                        for row in iter_rows(fh, url, source, params):
                            buf.append(row)
                            n += 1
                            if len(buf) >= BATCH_ROWS:
                                yield pa.RecordBatch.from_pylist(buf, schema=ROWS)
                                buf = []
                except OSError as err:  # cannot open: the whole file is one failure
                    buf.append(
                        {
                            "doc_id": "",
                            "source": source,
                            "source_uri": url,
                            "parent_ids": [],
                            "drop_reason": f"{FILE_PREFIX}open_error:{type(err).__name__}",
                        }
                    )
                if buf:
                    yield pa.RecordBatch.from_pylist(buf, schema=ROWS)
                dt = max(time.time() - t0, 1e-9)
                print(
                    f"[phiflow] {STAGE} {url.rsplit('/', 1)[-1]}: {n - 1} records in {dt:.1f} s ({(n - 1) / dt:.0f}/s)",
                    file=sys.stderr,
                    flush=True,
                )

    return run


def run(spark, ctx: StageContext) -> Manifest:
    src = ctx.recipe.source(ctx.source)
    params = ctx.recipe.stages.commoncrawl_extract
    snapshot = ctx.partition["snapshot"]
    urls = warc_urls(src, ctx.recipe.resolve(src.base_url), snapshot)
    print(f"[phiflow] {STAGE} {ctx.source} snapshot {snapshot}: {len(urls)} WARC files", flush=True)
    listing = spark.sparkContext.parallelize([(u,) for u in urls], max(len(urls), 1)).toDF("warc_url string")
    rows = listing.mapInArrow(extract_files(ctx.source, params), spark_schema(ROWS))
    with persisted(rows):
        counted = tally(rows, WEB_EXTRACTED)
        reasons = counted.reasons
        file_reasons = {k[len(FILE_PREFIX) :]: v for k, v in reasons.items() if k and k.startswith(FILE_PREFIX)}
        doc_reasons = {k: v for k, v in reasons.items() if not (k and k.startswith(FILE_PREFIX))}
        failed = {k: v for k, v in file_reasons.items() if k != FILE_OK}
        n_failed = sum(failed.values())
        if urls and n_failed / len(urls) > params.failure_budget:
            raise FailureBudgetExceeded(
                f"{n_failed} of {len(urls)} WARC files failed ({failed}); budget is "
                f"{params.failure_budget:.0%} (stages.commoncrawl_extract.failure_budget): not committing"
            )
        listing_digest = hashlib.sha256("\n".join(urls).encode()).hexdigest()
        return commit_partition(
            spark,
            ctx,
            stage=STAGE,
            dataset=ctx.io(STAGE).output,
            rows=rows,
            schema=WEB_EXTRACTED,
            inputs=[InputRef(dataset=f"external:{src.kind}", partition={"snapshot": snapshot}, digest=listing_digest)],
            counters={
                "read": sum(doc_reasons.values()),
                "files": {"total": len(urls), "ok": file_reasons.get(FILE_OK, 0), "failed": failed},
            },
            counted=counted,
            reasons=doc_reasons,
        )


if __name__ == "__main__":
    stage_main(STAGE, run)
