"""wikipedia_extract: one Wikimedia multistream dump -> one `<source>.extracted` partition.

spark-submit entry point. The driver reads only the small index (`offset:page_id:title`) and the
header stream (siteinfo: language, namespace names); the dump is split into byte ranges of whole
bz2 streams, and each task fetches its ranges (fsspec: local, http(s), s3), decompresses them
alone and cleans their pages with `wikitext`. Pages of a stream that cannot be decompressed are
counted by reason (their number comes from the index), like unparseable pages; the partition
commits only if the pages lost that way stay within the recipe's failure budget.
"""

from __future__ import annotations

import bz2
import hashlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa

from phiflow.ids import doc_id
from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import WikiDump, WikipediaExtractParams, WikipediaSource
from phiflow.records.wikitext import (
    BrokenPage,
    CleanConfig,
    SiteInfo,
    StreamError,
    clean_page,
    decompress_streams,
    iter_pages,
    parse_index,
    read_header,
    stream_ranges,
)
from phiflow.schema import WIKI_EXTRACTED, with_drop_reason
from spark_jobs.engine.stage_io import (
    StageContext,
    commit_written,
    dropping,
    rejected_excerpt,
    spark_schema,
    stage_main,
    task_drops,
    write_attempt,
)

STAGE = "wikipedia_extract"
ROWS = with_drop_reason(WIKI_EXTRACTED)
LOST = ("truncated_stream", "corrupt_stream", "invalid_utf8", "invalid_xml")  # reasons that lose input


class FailureBudgetExceeded(RuntimeError):
    """Too many pages of a dump were unreadable: committing would silently lose a share of it."""


def clean_config(params: WikipediaExtractParams) -> CleanConfig:
    return CleanConfig(
        frozenset(s.lower() for s in params.drop_sections),
        frozenset(t.lower() for t in params.disambiguation_templates),
    )


def page_rows(
    source: str, site: SiteInfo, offset: int, xml_text: str, params: WikipediaExtractParams
) -> Iterator[dict[str, Any]]:
    """Rows (kept and dropped) of one decompressed stream."""
    cfg = clean_config(params)
    for page in iter_pages(site, xml_text):
        if isinstance(page, BrokenPage):
            yield {
                "doc_id": "",
                "source": source,
                "source_uri": "",
                "parent_ids": [],
                "title": page.title,
                "page_id": page.page_id,
                "wiki": site.dbname,
                "stream_offset": offset,
                "drop_reason": page.reason,
            }
            continue
        text, reason = clean_page(page, site, cfg)
        if reason is None and len(text) < params.min_text_chars:
            reason = "too_short"
        yield {
            "doc_id": doc_id(source, f"{site.dbname}:{page.page_id}:{page.revision_id}"),
            "source": source,
            "source_uri": f"{site.server}/w/index.php?curid={page.page_id}&oldid={page.revision_id}",
            "parent_ids": [],
            "wiki": site.dbname,
            "page_id": page.page_id,
            "revision_id": page.revision_id,
            "title": page.title,
            "namespace": page.namespace,
            "timestamp": page.timestamp,
            "stream_offset": offset,
            "text": text,  # a dropped page's goes out only as recipe.rejected's excerpt (stage_io.dropping)
            "wikitext_bytes": len(page.wikitext.encode()),
            "text_chars": len(text),
            "language": site.language,
            "language_score": 1.0,
            "drop_reason": reason,
        }


def extract_streams(source: str, site: SiteInfo, params: WikipediaExtractParams):  # -> mapInArrow function
    """The per-task function: byte ranges of whole bz2 streams in, page rows out."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for url, start, end, pages, last in zip(
                *(batch.column(c).to_pylist() for c in ("url", "start", "end", "pages", "last")), strict=True
            ):
                t0 = time.time()
                fs, path = fsspec.core.url_to_fs(url)
                try:
                    data = fs.cat_file(path, start, end)
                    # a range the file holds whole, with more after it, cannot be truncated: it is corrupt
                    complete = not last and len(data) == end - start
                    rows = list(page_rows(source, site, start, decompress_streams(data, complete), params))
                except StreamError as err:
                    rows = [
                        {
                            "doc_id": "",
                            "source": source,
                            "source_uri": url,
                            "parent_ids": [],
                            "wiki": site.dbname,
                            "stream_offset": start,
                            "drop_reason": err.reason,
                        }
                    ] * pages
                if rows:
                    yield pa.RecordBatch.from_pylist(rows, schema=ROWS)
                print(
                    f"[phiflow] {STAGE} {site.dbname} stream @{start}: {len(rows)} pages in {time.time() - t0:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )

    return run


def dump_plan(
    src: WikipediaSource, base_url: str, dump: WikiDump
) -> tuple[str, SiteInfo, list[tuple[int, int, int]], str]:
    """(dump URL, site info, stream ranges, index digest), reading only the index and stream 0."""
    base = base_url.rstrip("/")
    url, index_url = f"{base}/{dump.dump_path}", f"{base}/{dump.index_path}"
    with fsspec.open(index_url, "rb") as fh:
        index_bytes = fh.read()
    offsets = parse_index(bz2.decompress(index_bytes).decode("utf-8").splitlines())
    fs, path = fsspec.core.url_to_fs(url)
    site = read_header(fs.cat_file(path, 0, offsets[0][0]))
    ranges = stream_ranges(offsets, fs.size(path))
    if dump.max_streams:
        ranges = ranges[: dump.max_streams]
    return url, site, ranges, hashlib.sha256(index_bytes).hexdigest()


def run(spark, ctx: StageContext) -> Manifest:
    src = ctx.recipe.source(ctx.source)
    params = ctx.recipe.stages.wikipedia_extract
    dump = src.dump_by_id(ctx.partition["dump"])
    url, site, ranges, index_digest = dump_plan(src, ctx.recipe.resolve(src.base_url), dump)
    print(
        f"[phiflow] {STAGE} {ctx.source} dump {dump.id} ({site.language}): {len(ranges)} streams, "
        f"{sum(n for _, _, n in ranges)} pages in the index",
        flush=True,
    )
    size = max(e for _, e, _ in ranges)  # the last range runs to the end of the file (stream_ranges)
    plan = [(url, s, e, n, e == size) for s, e, n in ranges]
    tasks = max(1, -(-len(plan) // params.streams_per_task))
    listing = spark.createDataFrame(plan, "url string, start long, end long, pages long, last boolean").repartition(
        tasks, "start")
    # One pass, nothing cached: only kept pages leave the tasks, which report their drop counts into the
    # attempt folder; the failure budget is checked on those before the commit.
    lake, dataset = ctx.lake, ctx.io(STAGE).output
    attempt = lake.new_attempt(dataset, ctx.partition)
    report_dir = lake.uri(lake.attempt_path(dataset, ctx.partition, attempt))
    extract = dropping(extract_streams(ctx.source, site, params), report_dir, rejected_excerpt(ctx, STAGE))
    rows = listing.mapInArrow(extract, spark_schema(ROWS))
    written = write_attempt(ctx, stage=STAGE, dataset=dataset, rows=rows, schema=WIKI_EXTRACTED, known_reasons=(),
                            attempt=attempt, reported_drops=True, keep_rejected=True)
    reasons: dict[str | None, int] = {None: written.counted.kept, **task_drops(ctx, dataset, attempt)}
    pages = sum(n for _, _, n in ranges)
    lost = {k: v for k, v in reasons.items() if k and k.split(":")[0] in LOST}
    if pages and sum(lost.values()) / pages > params.failure_budget:
        lake.discard_attempt(dataset, ctx.partition, attempt)
        raise FailureBudgetExceeded(
            f"{sum(lost.values())} of {pages} pages of {dump.id} were unreadable ({lost}); budget is "
            f"{params.failure_budget:.0%} (stages.wikipedia_extract.failure_budget): not committing"
        )
    return commit_written(
        ctx,
        written,
        stage=STAGE,
        inputs=[InputRef(dataset=f"external:{src.kind}", partition={"dump": dump.id}, digest=index_digest)],
        counters={
            "read": sum(reasons.values()),
            "index_pages": pages,
            "wiki": site.dbname,
            "language": site.language,
            "streams": len(ranges),
            "tasks": tasks,
        },
        reasons=reasons,
    )

if __name__ == "__main__":
    stage_main(STAGE, run)
