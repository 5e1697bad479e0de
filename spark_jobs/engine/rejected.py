"""`<dataset>.rejected`: the rows a stage drops, kept (a deterministic sample, as `recipe.rejected`
says) so an audit, `phiflow trace` and the dashboard can tell why a document is gone.

The dropped rows are written in the same Spark write as the kept ones, partitioned by `drop_reason`
(the kept rows are its null partition), so the stage's input is still read once. Spark then runs one
writer per reason in each task instead of sorting the task's rows (`maxConcurrentOutputFileWriters`,
set in `stage_io.spark_session`), and a dropped row's text is cut to its excerpt before it is written.
`rewrite` turns the reason folders into REJECTED rows for the `<dataset>.rejected` partition, which
`stage_io.commit_written` commits before it removes them from the main attempt (whose files are then
its kept rows only).
"""

from __future__ import annotations

import functools
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from phiflow.schema import REJECTED
from spark_jobs.engine.digest import row_digest, row_hash

REASON = "drop_reason"
REASON_DIR = f"{REASON}="
KEPT_DIR = f"{REASON_DIR}__HIVE_DEFAULT_PARTITION__"  # Spark's folder for the null (kept) partition
SAMPLE_BUCKETS = 1_000_000
EXAMPLES_PER_REASON = 3  # in the manifest's counters: what the dashboard shows without reading data
EXAMPLE_CHARS = 160


@dataclass(frozen=True)
class Rewritten:
    """What `rewrite` wrote: rows, their content digest, rows per reason (most first), examples per reason."""

    rows: int
    digest: str
    sampled: dict[str, int]
    examples: dict[str, list[dict[str, Any]]]


IDENTITY = ("doc_id", "url", "origin_url", "title", "path")  # what names a dropped row, best first


def identity(columns: list[str]) -> Column:
    """What names a dropped row: its doc_id, else its URL or title (a page too broken to get a doc_id
    still has its title). Null: nothing names it, only its count is kept (in the stage's manifest)."""
    return F.coalesce(*(F.when(F.col(c).cast("string") != "", F.col(c).cast("string")) for c in IDENTITY
                        if c in columns))


def sampled(key: Column, fraction: float) -> Column:
    """True for the share `fraction` of keys, the same ones on every run (a hash, not a random draw)."""
    if fraction >= 1:
        return key.isNotNull()
    return key.isNotNull() & (F.pmod(F.xxhash64(key), F.lit(SAMPLE_BUCKETS)) < F.lit(int(fraction * SAMPLE_BUCKETS)))


def with_rejected(rows: DataFrame, schema: pa.Schema, fraction: float, excerpt_chars: int) -> DataFrame:
    """The kept rows and the sampled dropped rows that something names (`identity`), the latter's text
    cut to its excerpt: `schema`'s columns plus `drop_reason`, ready for `write_partitioned`."""
    reason = F.col(REASON)
    keep = reason.isNull() | sampled(identity(schema.names), fraction)
    cols = [
        F.when(reason.isNull(), F.col(c)).otherwise(F.substring(c, 1, excerpt_chars)).alias(c) if c == "text" else c
        for c in schema.names
    ]
    return rows.filter(keep).select(*cols, REASON)


def write_partitioned(rows: DataFrame, uri: str) -> None:
    # append: the fresh folder holds the attempt's lease, which an overwrite would delete
    rows.write.mode("append").partitionBy(REASON).parquet(uri)


def cut_dropped_text(batch: pa.RecordBatch, excerpt_chars: int) -> pa.RecordBatch:
    """A Python stage's batch with its dropped rows' text cut to the excerpt (what reaches the JVM)."""
    if "text" not in batch.schema.names:
        return batch
    i = batch.schema.get_field_index("text")
    text = batch.column(i)
    cut = pc.if_else(pc.is_null(batch.column(REASON)), text, pc.utf8_slice_codeunits(text, 0, excerpt_chars))
    return batch.set_column(i, batch.schema.field(i), cut)


def projection(columns: list[str], stage: str, excerpt_chars: int) -> list[Column]:
    """A stage row (any source kind's schema) as a REJECTED row."""

    def first(*names: str) -> Column:
        present = [F.col(n) for n in names if n in columns]
        return F.coalesce(*present) if len(present) > 1 else present[0] if present else F.lit(None)

    code_path = F.concat_ws("/", "repo", "path") if {"repo", "path"} <= set(columns) else None
    page = F.coalesce(*(c for c in (code_path, first("title", "repo")) if c is not None))
    text = F.substring("text", 1, excerpt_chars) if "text" in columns else F.lit(None)
    return [
        F.coalesce(F.col("doc_id"), F.lit("")).alias("doc_id"),
        first("source"),
        F.lit(stage).alias("stage"),
        F.col(REASON).alias("reason"),
        first("url", "origin_url").cast("string").alias("url"),
        page.cast("string").alias("page"),
        text.cast("string").alias("excerpt"),
    ]


def reason_dirs(fs, attempt_dir: str) -> dict[str, str]:
    """The dropped rows' folders of a partitioned write: reason -> folder."""
    out = {}
    for path in fs.ls(attempt_dir, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if name.startswith(REASON_DIR) and name != KEPT_DIR:
            out[unquote(name[len(REASON_DIR) :])] = path
    return out


def rewrite(
    spark: SparkSession, dirs: dict[str, str], written: StructType, out_uri: str, stage: str, excerpt_chars: int
) -> Rewritten:
    """The reason folders of a partitioned write as REJECTED rows in `out_uri` (one file; an empty
    one when nothing was dropped, so the side partition still records that), counted, hashed and
    sampled for examples while written: one Spark job. `written`: the folders' schema (the stage's
    rows less `drop_reason`), given so that reading them infers nothing."""
    schema = from_arrow_schema(REJECTED)
    frames = [spark.read.schema(written).parquet(uri).withColumn(REASON, F.lit(r)) for r, uri in sorted(dirs.items())]
    if not frames:
        spark.createDataFrame([], schema).coalesce(1).write.mode("append").parquet(out_uri)
        return Rewritten(0, row_digest(None), {}, {})
    rows = functools.reduce(lambda a, b: a.unionByName(b), frames)
    projected = projection(rows.columns, stage, excerpt_chars)
    rows = rows.select(*(c.cast(f.dataType).alias(f.name) for c, f in zip(projected, schema.fields, strict=True)))
    seen = Observation()  # a name of its own: concurrent commits in one session never share one
    reasons = sorted(dirs)
    rows = rows.observe(seen, F.count(F.lit(1)).alias("n"), F.sum(row_hash(schema.names)).alias("h"),
                        *(m for i, r in enumerate(reasons) for m in _reason_metrics(i, r)))
    rows.coalesce(1).write.mode("append").parquet(out_uri)
    got = seen.get
    sampled = {r: int(got[f"n{i}"]) for i, r in enumerate(reasons) if got[f"n{i}"]}
    examples = {r: [{k: x[k] for k in ("doc_id", "url", "page", "excerpt")} for x in got[f"x{i}"]]
                for i, r in enumerate(reasons) if got[f"x{i}"]}
    return Rewritten(int(got["n"]), row_digest(got["h"]),
                     dict(sorted(sampled.items(), key=lambda kv: (-kv[1], kv[0]))), examples)


def _reason_metrics(i: int, reason: str) -> list[Column]:
    """Rows of one reason, and its EXAMPLES_PER_REASON smallest doc_ids (the same ones on a rerun) with
    their excerpt shortened, for the manifest."""
    mine = F.col("reason") == reason
    example = F.struct("doc_id", "url", "page", F.substring("excerpt", 1, EXAMPLE_CHARS).alias("excerpt"))
    return [F.count_if(mine).alias(f"n{i}"),
            F.min_by(F.when(mine, example), F.when(mine, F.col("doc_id")), EXAMPLES_PER_REASON).alias(f"x{i}")]
