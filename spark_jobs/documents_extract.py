"""documents_extract: one collection of acquired documents (books...) -> one `<source>.extracted` partition.

spark-submit entry point. JSONL, Parquet and plain-text files (with metadata from a sidecar or a
Project Gutenberg header) are read by `document_files`; each text is cleaned by the book rules of
`book_text` (Gutenberg boilerplate, page furniture, hyphenation, hard wraps), each rule switchable in
the recipe and counted in the manifest. Language identification follows as its own stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from pyspark.sql import functions as F

from phiflow.ids import doc_id
from phiflow.manifest import Manifest
from phiflow.recipe import DocumentsExtractParams
from phiflow.records.book_text import BookCleanConfig, clean_book
from phiflow.records.document_files import DocumentRecord, InputProblem, list_inputs, read_input
from phiflow.schema import DOCUMENTS_EXTRACTED
from spark_jobs.engine.collection_extract import collection_root, extract_collection, remote_units
from spark_jobs.engine.stage_io import StageContext, stage_main

STAGE = "documents_extract"
LOST = frozenset({"corrupt_file", "unsupported_file"})
SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt", ".txt.gz")


def clean_config(params: DocumentsExtractParams) -> BookCleanConfig:
    return BookCleanConfig(gutenberg=params.gutenberg, page_furniture=params.page_furniture,
                           dehyphenate=params.dehyphenate, reflow=params.reflow,
                           normalize_whitespace=params.normalize_whitespace)


def document_row(rec: DocumentRecord, params: DocumentsExtractParams, source: str) -> dict[str, Any]:
    """One cleaned document, or a drop row (too short after cleaning, licence not allowed)."""
    text, counts = clean_book(rec.text, clean_config(params))
    notes = [n for n in rec.extra.get("notes", "").split(",") if n]
    counts = {k: v for k, v in counts.items() if v} | {f"note:{n}": 1 for n in notes}
    if params.licenses is not None and rec.license not in params.licenses:
        reason = "license_not_allowed"
    elif len(text) < params.min_text_chars:
        reason = "too_short"
    else:
        reason = None
    return {
        # the same text from the same place is the same document, whatever the cleaning rules
        "doc_id": doc_id(source, f"{rec.origin}\x1f{hashlib.sha1(rec.text.encode()).hexdigest()}"),
        "source": source,
        "source_uri": rec.origin,
        "parent_ids": [],
        "title": rec.title,
        "author": rec.author,
        "license": rec.license,
        "origin_url": rec.origin_url,
        "declared_language": rec.language,
        "text": text if reason is None else None,
        "source_chars": len(rec.text),
        "text_chars": len(text),
        "cleaning": json.dumps(counts, sort_keys=True),
        "drop_reason": reason,
    }


def unit_rows(params: DocumentsExtractParams, source: str):  # -> (local unit path) -> rows
    def rows_of(unit: str) -> Iterator[dict[str, Any]]:
        for item in read_input(unit, params.max_bytes):
            if isinstance(item, InputProblem):
                yield {"doc_id": "", "source": source, "source_uri": item.origin, "parent_ids": [],
                       "drop_reason": item.reason}
            else:
                yield document_row(item, params, source)

    return rows_of


def cleaning_totals(kept) -> dict[str, Any]:
    """What each cleaning rule did over the kept documents, and the characters cleaning removed."""
    per_rule = (kept.select(F.explode(F.from_json("cleaning", "map<string,bigint>")))
                .groupBy("key").agg(F.sum("value").alias("n")).collect())
    chars = kept.agg(F.sum("source_chars").alias("src"), F.sum("text_chars").alias("out")).first()
    return {"cleaning": {r["key"]: int(r["n"]) for r in sorted(per_rule, key=lambda r: r["key"])},
            "chars": {"before": int(chars["src"] or 0), "after": int(chars["out"] or 0)}}


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.documents_extract
    _, root = collection_root(ctx)
    units = remote_units(root, SUFFIXES) if "://" in root else list_inputs(root)
    col = ctx.recipe.source(ctx.source).collection(ctx.partition["collection"])
    if col.max_files:
        units = units[: col.max_files]
    return extract_collection(
        spark, ctx, stage=STAGE, units=units, rows_of=unit_rows(params, ctx.source), schema=DOCUMENTS_EXTRACTED,
        lost=LOST, units_per_task=params.units_per_task, failure_budget=params.failure_budget,
        counters=cleaning_totals,
    )


if __name__ == "__main__":
    stage_main(STAGE, run)
