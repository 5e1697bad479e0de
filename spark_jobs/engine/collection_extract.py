"""The Spark plumbing the collection sources share (code repositories, books): one collection of
input units (a repository, a tarball, a Parquet/JSONL/text file) -> one `<source>.extracted` partition.

The driver lists the units; each Spark task reads its units (fetched to a local temporary copy when
the collection is remote) through the source's pure reader and yields rows, kept and dropped. A unit
that cannot be read (a corrupt archive, an unreadable file) is counted by reason; the partition
commits only if the share of such units stays within the recipe's failure budget.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import functions as F

from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import CollectionSource
from phiflow.schema import with_drop_reason
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema, tally

UNIT = pa.field("_unit", pa.string())  # which input unit a row came from (counted, not written)
UnitRows = Callable[[str], Iterator[dict[str, Any]]]


class FailureBudgetExceeded(RuntimeError):
    """Too many input units of a collection were unreadable: committing would silently lose them."""


def collection_root(ctx: StageContext) -> tuple[str, str]:
    """(collection id, its location: base_url/path resolved against the recipe)."""
    src = ctx.recipe.source(ctx.source)
    assert isinstance(src, CollectionSource)
    col = src.collection(ctx.partition[src.partition_key])
    base = ctx.recipe.resolve(src.base_url).rstrip("/")
    return col.id, f"{base}/{col.path}" if col.path not in ("", ".") else base


def remote_units(root: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under a remote folder (s3://, gs://, https listing) with one of the suffixes, sorted."""
    fs, path = fsspec.core.url_to_fs(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if fs.isfile(path):
        return [root]
    return sorted(f"{protocol}://{p}" for p in fs.find(path) if p.endswith(suffixes))


@contextmanager
def local_copy(unit: str) -> Iterator[str]:
    """A local path for a unit: itself when local, else a temporary copy (archives and tables are read
    whole by their readers; a remote git repository is not supported)."""
    if "://" not in unit or unit.startswith("file://"):
        yield unit.removeprefix("file://")
        return
    with tempfile.TemporaryDirectory(prefix="phiflow-unit-") as tmp:
        local = os.path.join(tmp, unit.rstrip("/").rsplit("/", 1)[-1])
        fs, path = fsspec.core.url_to_fs(unit)
        fs.get_file(path, local)
        yield local


def extract_units(stage: str, rows_of: UnitRows, schema: pa.Schema):  # -> mapInArrow function
    """The per-task function: unit paths in, rows (tagged with their unit) out."""
    out = with_drop_reason(schema).append(UNIT)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for unit in batch.column("unit").to_pylist():
                t0, n = time.time(), 0
                buf: list[dict[str, Any]] = []
                with local_copy(unit) as path:
                    for row in rows_of(path):
                        buf.append({**row, "_unit": unit})
                        n += 1
                        if len(buf) >= 256:
                            yield pa.RecordBatch.from_pylist(buf, schema=out)
                            buf = []
                if buf:
                    yield pa.RecordBatch.from_pylist(buf, schema=out)
                print(f"[phiflow] {stage} {unit}: {n} rows in {time.time() - t0:.2f} s", file=sys.stderr, flush=True)

    return run


def extract_collection(
    spark,
    ctx: StageContext,
    *,
    stage: str,
    units: list[str],
    rows_of: UnitRows,
    schema: pa.Schema,
    lost: frozenset[str],
    units_per_task: int,
    failure_budget: float,
    counters: Callable[[Any], dict[str, Any]] = lambda _kept: {},
) -> Manifest:
    """Read every unit in Spark tasks, check the failure budget, commit the kept rows.

    `lost` are the drop reasons that mean a unit (or part of it) could not be read; `counters` adds
    stage-specific figures computed from the kept rows before the commit."""
    col_id, root = collection_root(ctx)
    print(f"[phiflow] {stage} {ctx.source} collection {col_id}: {len(units)} input units under {root}", flush=True)
    tasks = max(1, -(-len(units) // units_per_task))
    listing = spark.createDataFrame([(u,) for u in units], "unit string").repartition(tasks, "unit")
    rows = listing.mapInArrow(extract_units(stage, rows_of, schema),
                              spark_schema(with_drop_reason(schema).append(UNIT))).persist(StorageLevel.DISK_ONLY)
    try:
        counted = tally(rows, schema)
        failed = [r["_unit"] for r in
                  rows.filter(F.col("drop_reason").isin(sorted(lost))).select("_unit").distinct().collect()]
        if units and len(failed) / len(units) > failure_budget:
            raise FailureBudgetExceeded(
                f"{len(failed)} of {len(units)} input units of {col_id} could not be read ({sorted(failed)[:5]}); "
                f"budget is {failure_budget:.0%} (stages.{stage}.failure_budget): not committing"
            )
        extra = counters(rows.filter(F.col("drop_reason").isNull()))
        listing_digest = hashlib.sha256("\n".join(units).encode()).hexdigest()
        src = ctx.recipe.source(ctx.source)
        return commit_partition(
            spark,
            ctx,
            stage=stage,
            dataset=ctx.io(stage).output,
            rows=rows,
            schema=schema,
            inputs=[InputRef(dataset=f"external:{src.kind}", partition={src.partition_key: col_id},
                             digest=listing_digest)],
            counters={"read": sum(counted.reasons.values()),
                      "units": {"total": len(units), "failed": len(failed), "failed_units": sorted(failed)[:20]},
                      **extra},
            counted=counted,
            keep_rejected=True,
        )
    finally:
        rows.unpersist()
