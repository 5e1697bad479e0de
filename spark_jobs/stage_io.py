"""The thin Spark plumbing every stage shares: arguments, session, and the commit of a partition.

A stage builds one DataFrame holding its kept rows and its dropped rows (with `drop_reason`);
`commit_partition` counts the reasons, writes only the kept rows into a fresh attempt folder,
hashes what was written, and commits the manifest (phiflow.storage). Stages stay a few lines of
engine code around their pure per-record functions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from phiflow.commit import commit_attempt
from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import Recipe, load_recipe
from phiflow.storage import Lake

log = logging.getLogger("phiflow.stage")


@dataclass
class StageContext:
    """Everything a stage run needs to know about where it is: recipe, partition, Airflow run."""

    recipe: Recipe
    source: str
    partition: dict[str, str]
    lake: Lake
    airflow: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)


def parse_args(argv: list[str] | None = None) -> StageContext:
    ap = argparse.ArgumentParser(description="run one phiflow stage on one partition")
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--partition", required=True, help='JSON, e.g. {"snapshot": "CC-MAIN-2024-10"}')
    ap.add_argument("--airflow-run", default="{}", help="JSON with dag_id, run_id, task_id, try_number")
    ap.add_argument("--lake", default=None, help="lake root (default: PHIFLOW_LAKE or .phiflow/lake)")
    a = ap.parse_args(argv)
    recipe = load_recipe(a.recipe)
    if "." not in a.source:  # a dotted name is a dataset (tokenize reads any dataset)
        recipe.source(a.source)  # fail early on an unknown source
    return StageContext(
        recipe=recipe,
        source=a.source,
        partition=json.loads(a.partition),
        lake=Lake(a.lake),
        airflow=json.loads(a.airflow_run),
    )


def spark_session(recipe: Recipe, app: str) -> SparkSession:
    """The session for a stage. Under spark-submit the connection decides master and memory;
    run directly (tests, debugging) it is local[2] with the recipe's driver memory."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
        builder = builder.master("local[2]").config("spark.driver.memory", recipe.spark.driver_memory)
    builder = builder.config("spark.ui.showConsoleProgress", "false").config("spark.sql.session.timeZone", "UTC")
    # Standard INT64 microsecond timestamps instead of Spark's legacy INT96: pyarrow, DuckDB and
    # Trino read the lake's files without conversion.
    builder = builder.config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    for k, v in recipe.spark.conf.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def spark_schema(schema: pa.Schema):  # -> pyspark StructType
    return from_arrow_schema(schema)


def content_digest(df: DataFrame) -> tuple[int, str]:
    """(row count, order-independent hash of all rows): equal for equal row sets on any layout."""
    row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(_row_hash(df.columns)).alias("h")).first()
    return int(row["n"]), _digest(row["h"])


def _row_hash(columns: list[str]):  # -> Column
    return F.xxhash64(*columns).cast("decimal(38,0)")


def _digest(total: Any) -> str:
    return f"xxh64sum:{total or 0}"


@dataclass(frozen=True)
class Tally:
    """What one pass over a stage's rows (kept and dropped) knows: rows per drop reason (None: kept),
    the kept rows' content digest, and kept rows per value of an optional column (e.g. language)."""

    reasons: dict[str | None, int]
    digest: str
    kept_by: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.reasons.get(None, 0)


def tally(rows: DataFrame, schema: pa.Schema, by: str | None = None) -> Tally:
    """Count reasons, hash the kept rows (their `schema` columns, as written) and count them by `by`,
    in one aggregation: the stage's rows are read once before the write instead of once per figure."""
    keys = ["drop_reason", *([by] if by else [])]
    kept_hash = F.when(F.col("drop_reason").isNull(), _row_hash(schema.names))
    groups = rows.groupBy(*keys).agg(F.count(F.lit(1)).alias("n"), F.sum(kept_hash).alias("h")).collect()
    reasons: dict[str | None, int] = {}
    kept_by: dict[str, int] = {}
    total = 0
    for g in groups:
        reasons[g["drop_reason"]] = reasons.get(g["drop_reason"], 0) + int(g["n"])
        if g["drop_reason"] is None:
            total += g["h"] or 0
            if by:
                kept_by[str(g[by])] = int(g["n"])
    return Tally(reasons, _digest(total), dict(sorted(kept_by.items(), key=lambda kv: -kv[1])))


@contextmanager
def persisted(*frames: DataFrame) -> Iterator[None]:
    """Cache frames a stage reads twice (tally, then write); release them however it ends."""
    for f in frames:
        f.persist()
    try:
        yield
    finally:
        for f in frames:
            f.unpersist()


def commit_partition(
    spark: SparkSession,
    ctx: StageContext,
    *,
    stage: str,
    dataset: str,
    rows: DataFrame,
    schema: pa.Schema,
    inputs: list[InputRef],
    counters: dict[str, Any],
    counted: Tally | None = None,
    reasons: dict[str | None, int] | None = None,
) -> Manifest:
    """Write the kept rows of `rows` as the partition's new content and commit it atomically.

    `counted` is the stage's `tally(rows, schema)` if it needed the figures first (a failure budget, a
    language mix); otherwise it is taken here. Persist `rows` if it is costly: it is read twice.
    `reasons` replaces the drop counts recorded when they are not these rows' own (a side output
    records its stage's drops; extraction leaves out its file-level rows)."""
    counted = counted or tally(rows, schema)
    reasons = counted.reasons if reasons is None else reasons
    lake = ctx.lake
    attempt = lake.new_attempt(dataset, ctx.partition)
    target = lake.uri(lake.attempt_path(dataset, ctx.partition, attempt))
    rows.filter(F.col("drop_reason").isNull()).select(*schema.names).write.mode("overwrite").parquet(target)
    dropped = {k: v for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]) if k is not None}
    manifest = commit_attempt(
        lake,
        dataset=dataset,
        partition=ctx.partition,
        attempt=attempt,
        stage=stage,
        schema=schema,
        row_count=counted.kept,
        content_digest=counted.digest,
        inputs=inputs,
        recipe_digest=ctx.recipe.stage_digest(stage),
        params=getattr(ctx.recipe.stages, stage).model_dump(mode="json"),
        counters=counters,
        dropped=dropped,
        airflow=ctx.airflow,
        started=ctx.started,
    )
    print_summary(manifest)
    return manifest


def print_summary(m: Manifest) -> None:
    """One readable block at the end of every stage log (the Airflow task log shows it)."""
    c = m.counters
    print(f"[phiflow] {m.stage} committed {m.dataset}/{m.key}")
    size = f"{m.bytes} bytes, {len(m.files)} files"
    print(f"[phiflow]   read {c.get('read', '?')}  kept {c['kept']}  in {m.timings['seconds']} s  ({size})")
    for reason, n in c["dropped"].items():
        print(f"[phiflow]   dropped {n:>7}  {reason}")
    print(f"[phiflow]   manifest digest {m.digest[:16]}  attempt {m.attempt}")


def stage_main(
    stage: str, run: Callable[[SparkSession, StageContext], Manifest], argv: list[str] | None = None
) -> None:
    """The body of every `spark_jobs/<stage>.py` under spark-submit.

    spark-submit runs the job file as `__main__`; functions the stage ships to executors would then be
    pickled as `__main__.<name>`, which Python workers cannot import. Running `run` from the file's
    importable module (`spark_jobs.<stage>`) makes every reference resolvable on the workers."""
    if run.__module__ == "__main__":
        run = importlib.import_module(f"spark_jobs.{Path(sys.argv[0]).stem}").run
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = parse_args(argv)
    spark = spark_session(ctx.recipe, f"phiflow-{stage}-{ctx.source}")
    try:
        run(spark, ctx)
    finally:
        spark.stop()
