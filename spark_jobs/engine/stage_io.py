"""The thin Spark plumbing every stage shares: arguments, session, and the commit of a partition.

A stage builds one DataFrame holding its kept rows and its dropped rows (with `drop_reason`);
`write_attempt` writes the kept rows into a fresh attempt folder (with the sample of dropped rows the
recipe keeps, spark_jobs.engine.rejected) while counting the reasons and hashing the kept rows (in the same
pass when the stage names its reasons, else in a tally pass before), and `commit_written` commits the
manifest (phiflow.storage), `<dataset>.rejected` first; `commit_partition` is the two in a row.
Stages stay a few lines of engine code around their pure per-record functions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import fsspec
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from phiflow import stages
from phiflow.commit import commit_attempt
from phiflow.manifest import InputRef, Manifest
from phiflow.recipe import Recipe, load_recipe
from phiflow.schema import EXTRACTED, REJECTED, langid_schema
from phiflow.shards import SHARD_COUNTER
from phiflow.stages import StageIO
from phiflow.storage import Lake
from spark_jobs.engine import rejected
from spark_jobs.engine.digest import row_digest, row_hash

log = logging.getLogger("phiflow.stage")
T = TypeVar("T")


@dataclass
class StageContext:
    """Everything a stage run needs to know about where it is: recipe, partition, Airflow run."""

    recipe: Recipe
    source: str
    partition: dict[str, str]
    lake: Lake
    airflow: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    shards: str = "missing"  # sharded stages: which shards to run (spark_jobs.engine.shard_runner.wanted)
    shard: tuple[int, int] | None = None  # this run is shard i of n (recorded in the shard's counters)

    def io(self, stage: str) -> StageIO:
        """The datasets `stage` reads and commits for this source, from the stage table."""
        return stages.io(self.recipe, stage, self.source)

    @property
    def kind(self) -> str:
        return self.recipe.sources[self.source].kind


def parse_args(argv: list[str] | None = None) -> StageContext:
    ap = argparse.ArgumentParser(description="run one phiflow stage on one partition")
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--partition", required=True, help='JSON, e.g. {"snapshot": "CC-MAIN-2024-10"}')
    ap.add_argument("--airflow-run", default="{}", help="JSON with dag_id, run_id, task_id, try_number")
    ap.add_argument("--lake", default=None, help="lake root (default: PHIFLOW_LAKE or .phiflow/lake)")
    ap.add_argument(
        "--shards",
        default="missing",
        help="sharded stages: 'missing' (shards not committed from the current inputs and recipe), 'all', "
        "or shard ids such as 00003,00007 (rerun exactly those)",
    )
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
        shards=a.shards,
    )


# Runtime SQL settings every stage session gets, on a classic session and on a Spark Connect one.
SESSION_SQL = {
    "spark.sql.session.timeZone": "UTC",
    # Standard INT64 microsecond timestamps instead of Spark's legacy INT96: pyarrow, DuckDB and
    # Trino read the lake's files without conversion.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # A write partitioned by drop reason (spark_jobs.engine.rejected) opens a writer per reason instead of
    # sorting each task's rows first.
    "spark.sql.maxConcurrentOutputFileWriters": "64",
}


def spark_session(recipe: Recipe, app: str) -> SparkSession:
    """The session for a stage. Under spark-submit the connection decides master and memory; with
    SPARK_REMOTE set (the operator's shared local Spark Connect server, spark_jobs/engine/connect_server.py)
    the stage is a client of that server and sets only runtime SQL settings, the server having the rest;
    run directly (tests, debugging) it is local[2] with the recipe's driver memory."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    remote = os.environ.get("SPARK_REMOTE")
    if remote:
        builder = SparkSession.builder.remote(remote).appName(app)
        conf = {k: v for k, v in recipe.spark.conf.items() if k.startswith("spark.sql.")}
    else:
        builder = SparkSession.builder.appName(app)
        if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
            builder = builder.master("local[2]").config("spark.driver.memory", recipe.spark.driver_memory)
        builder = builder.config("spark.ui.showConsoleProgress", "false")
        conf = recipe.spark.conf
    for k, v in {**SESSION_SQL, **conf}.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def connected(spark: SparkSession) -> bool:
    """Whether the session is a Spark Connect client (no SparkContext on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@dataclass(frozen=True)
class Shared(Generic[T]):
    """A read-only value for executor-side functions, read as `.value` like a broadcast variable."""

    value: T


def shared(spark: SparkSession, value: T) -> Shared[T]:
    """A broadcast variable on a classic session (shipped once per executor); a Spark Connect client has
    none, so there the value travels inside the function's closure, which suits the small values of the
    embedded default that is the only place stages run as clients."""
    return Shared(value) if connected(spark) else spark.sparkContext.broadcast(value)  # type: ignore[return-value]


def spark_schema(schema: pa.Schema):  # -> pyspark StructType
    return from_arrow_schema(schema)


def content_digest(df: DataFrame) -> tuple[int, str]:
    """(row count, order-independent hash of all rows): equal for equal row sets on any layout."""
    row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(row_hash(df.columns)).alias("h")).first()
    return int(row["n"]), row_digest(row["h"])


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
    kept_hash = F.when(F.col("drop_reason").isNull(), row_hash(schema.names))
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
    return Tally(reasons, row_digest(total), dict(sorted(kept_by.items(), key=lambda kv: -kv[1])))


TALLY_PREFIX = "_tally-"  # per-task drop counts in an attempt folder (`_` keeps them out of the data)


Batches = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]  # a mapInArrow function


def dropping(fn: Batches, report_dir: str, excerpt_chars: int | None = None) -> Batches:
    """Wrap a mapInArrow function that yields kept and dropped rows (`drop_reason`): the task writes
    its drop counts to `report_dir` as `_tally-<partition id>.json` (a retried or speculative task
    rewrites the same file), and only the kept rows leave the Python task, with the dropped ones cut
    to `excerpt_chars` of text when the stage keeps rejected rows (`write_attempt(reported_drops=True)`).
    With the kept rows observed during the write, a stage whose drop reasons are open-ended
    (`extract_error:<type>`) is counted in one pass, without caching its output."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc
        from pyspark import TaskContext

        counts: dict[str, int] = {}
        for batch in fn(batches):
            reason = batch.column("drop_reason")
            if reason.null_count < len(batch):
                for item in pc.value_counts(reason.drop_null()).to_pylist():
                    counts[item["values"]] = counts.get(item["values"], 0) + int(item["counts"])
                if excerpt_chars is None:
                    batch = batch.filter(pc.is_null(reason))
                else:
                    batch = rejected.cut_dropped_text(batch, excerpt_chars)
            if len(batch):
                yield batch
        name = f"{TALLY_PREFIX}{TaskContext.get().partitionId():06d}.json"
        with fsspec.open(f"{report_dir.rstrip('/')}/{name}", "w") as out:
            json.dump(counts, out)

    return run


def rejected_excerpt(ctx: StageContext, stage: str) -> int | None:
    """The excerpt length a Python task cuts its dropped rows to, None when the stage keeps none."""
    spec = ctx.recipe.rejected
    return spec.excerpt_chars if spec.fraction_for(stage) > 0 else None


def task_drops(ctx: StageContext, dataset: str, attempt: str) -> dict[str, int]:
    """The drop counts the tasks of a written attempt reported (`dropping`), summed."""
    fs = ctx.lake.fs
    total: dict[str, int] = {}
    for path in fs.glob(f"{ctx.lake.attempt_path(dataset, ctx.partition, attempt)}/{TALLY_PREFIX}*.json"):
        for reason, n in json.loads(fs.cat_file(path)).items():
            total[reason] = total.get(reason, 0) + int(n)
    return total


@contextmanager
def persisted(*frames: DataFrame) -> Iterator[None]:
    """Keep frames a stage reads twice (tally, then write) on the executors' local disk, not in their
    memory (a partition of any size fits, as shuffle files do); release them however it ends."""
    for f in frames:
        f.persist(StorageLevel.DISK_ONLY)
    try:
        yield
    finally:
        for f in frames:
            f.unpersist()


@contextmanager
def step(spark: SparkSession, stage: str, what: str) -> Iterator[None]:
    """Name the Spark jobs of one step of a stage (the Spark UI lists them as `dedup: components`) and
    log the step's wall time, so a slow stage shows at a glance which step to look at."""
    sc = None if connected(spark) else spark.sparkContext  # job descriptions are a SparkContext's
    if sc is not None:
        sc.setJobDescription(f"{stage}: {what}")
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if sc is not None:
            sc.setJobDescription(None)  # type: ignore[arg-type]
        print(f"[phiflow]   {stage} {what}: {time.perf_counter() - t0:.1f} s", flush=True)


@dataclass(frozen=True)
class Written:
    """An attempt folder holding a stage's kept rows, not yet committed, and what was counted.
    `spark`: set when the attempt also holds the sampled dropped rows (`recipe.rejected`), by reason;
    `uri` is then the kept rows' folder inside it, and `side_schema` the reason folders' columns."""

    dataset: str
    attempt: str
    uri: str
    schema: pa.Schema
    counted: Tally
    spark: SparkSession | None = None
    side_schema: StructType | None = None  # the reason folders' columns, when `spark` is set


def write_attempt(
    ctx: StageContext,
    *,
    stage: str,
    dataset: str,
    rows: DataFrame,
    schema: pa.Schema,
    counted: Tally | None = None,
    known_reasons: Sequence[str] | None = None,
    attempt: str | None = None,
    reported_drops: bool = False,
    keep_rejected: bool = False,
) -> Written:
    """Write the kept rows of `rows` (those without a `drop_reason`) into a fresh attempt folder, and
    in the same write the share of the dropped rows `recipe.rejected` keeps (spark_jobs.engine.rejected).

    The figures come from `counted` if the stage took them first (a failure budget needs them before
    the write); else, when the stage names every drop reason it can give (`known_reasons`), they are
    observed during the write itself, one pass and no cache; else a `tally` pass runs first (persist
    costly `rows`). `known_reasons=()`: the stage drops nothing. `reported_drops`: the stage's tasks
    count their drops themselves (open-ended reasons) and pass on only the dropped rows to keep, so
    only the kept rows are counted here. `keep_rejected`: the dropped rows are documents, of which
    `<dataset>.rejected` keeps the share the recipe says. `attempt`: a folder the stage opened itself
    (its tasks write side files there)."""
    lake = ctx.lake
    attempt = attempt or lake.new_attempt(dataset, ctx.partition)
    uri = lake.uri(lake.attempt_path(dataset, ctx.partition, attempt))
    fraction = ctx.recipe.rejected.fraction_for(stage)
    side = keep_rejected and fraction > 0
    observation = None
    try:
        if counted is None and known_reasons is not None:
            rows, observation = observe_tally(rows, schema, known_reasons, name=f"tally-{attempt}")
        elif counted is None:
            counted = tally(rows, schema)
        if side:
            rows_out = rejected.with_rejected(rows, schema, fraction, ctx.recipe.rejected.excerpt_chars)
            side_schema = StructType([f for f in rows_out.schema.fields if f.name != rejected.REASON])
            rejected.write_partitioned(rows_out, uri)
            kept_dir = f"{lake.attempt_path(dataset, ctx.partition, attempt)}/{rejected.KEPT_DIR}"
            if not lake.fs.exists(kept_dir):  # nothing kept: one empty file, as an unpartitioned write leaves
                spark = rows.sparkSession
                spark.createDataFrame([], spark_schema(schema)).write.mode("append").parquet(lake.uri(kept_dir))
        else:  # append: the fresh folder holds the attempt's lease, which an overwrite would delete
            rows.filter(F.col("drop_reason").isNull()).select(*schema.names).write.mode("append").parquet(uri)
        if observation is not None:
            counted = observed_tally(observation.get, known_reasons, strict=not reported_drops)
    except BaseException:
        lake.discard_attempt(dataset, ctx.partition, attempt)
        raise
    if side:
        return Written(dataset, attempt, f"{uri}/{rejected.KEPT_DIR}", schema, counted, rows.sparkSession, side_schema)
    return Written(dataset, attempt, uri, schema, counted)


def observe_tally(
    rows: DataFrame, schema: pa.Schema, reasons: Sequence[str], *extra: Column, name: str | None = None
) -> tuple[DataFrame, Observation]:
    """`rows` with the figures of a `tally` (and the `extra` aggregates) observed by whatever action
    runs on them next, a write or a checkpoint: the tally costs no pass of its own. Read the
    Observation's `get` with `observed_tally` once the action ran."""
    reason = F.col("drop_reason")
    observation = Observation(name)
    return rows.observe(
        observation,
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(reason.isNull(), row_hash(schema.names))).alias("h"),
        F.count_if(reason.isNull()).alias("kept"),
        *(F.count_if(reason == r).alias(f"r{i}") for i, r in enumerate(reasons)),
        *extra,
    ), observation


def observed_tally(metrics: dict[str, Any], reasons: Sequence[str], *, strict: bool = True) -> Tally:
    """The Tally of `observe_tally`'s figures; `strict`: a row whose reason is not in `reasons` is an error."""
    counts: dict[str | None, int] = {None: int(metrics["kept"])}
    counts.update({r: int(metrics[f"r{i}"]) for i, r in enumerate(reasons) if metrics[f"r{i}"]})
    unnamed = metrics["rows"] - sum(counts.values())
    if unnamed and strict:
        raise RuntimeError(f"{unnamed} rows carry a drop reason outside the stage's list {list(reasons)}")
    return Tally(counts, row_digest(metrics["h"]))


def count_by(spark: SparkSession, written: Written, column: str) -> dict[str, int]:
    """Kept rows per value of `column`, read back from the written files (one small column)."""
    return counts(spark.read.parquet(written.uri), column)


def counts(df: DataFrame, column: str) -> dict[str, int]:
    """Rows per value of `column`, most frequent first: a manifest counter a person reads at a glance."""
    groups = df.groupBy(column).count().collect()
    return dict(sorted(((str(g[column]), int(g["count"])) for g in groups), key=lambda kv: (-kv[1], kv[0])))


def commit_written(
    ctx: StageContext,
    written: Written,
    *,
    stage: str,
    inputs: list[InputRef],
    counters: dict[str, Any],
    reasons: dict[str | None, int] | None = None,
) -> Manifest:
    """Commit a written attempt with its manifest, and print the stage's summary.

    `reasons` replaces the drop counts recorded when they are not these rows' own (a side output
    records its stage's drops; extraction leaves out its file-level rows)."""
    reasons = written.counted.reasons if reasons is None else reasons
    dropped = {k: v for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]) if k is not None}
    if written.spark is not None:
        commit_rejected(ctx, written, stage=stage, inputs=inputs, dropped=dropped)
    manifest = commit_attempt(
        ctx.lake,
        dataset=written.dataset,
        partition=ctx.partition,
        attempt=written.attempt,
        stage=stage,
        schema=written.schema,
        row_count=written.counted.kept,
        content_digest=written.counted.digest,
        inputs=inputs,
        recipe_digest=ctx.recipe.stage_digest(stage),
        params=getattr(ctx.recipe.stages, stage).model_dump(mode="json"),
        counters={**counters, **_shard_counter(ctx)},
        dropped=dropped,
        airflow=ctx.airflow,
        started=ctx.started,
    )
    print_summary(manifest)
    return manifest


def commit_rejected(
    ctx: StageContext, written: Written, *, stage: str, inputs: list[InputRef], dropped: dict[str, int]
) -> Manifest:
    """Commit the dropped rows a written attempt holds as `<dataset>.rejected` (same partition, same
    inputs), then take them out of the attempt. It goes before the main commit, so a committed
    partition always has its rejected rows beside it."""
    assert written.spark is not None and written.side_schema is not None
    lake, spec = ctx.lake, ctx.recipe.rejected
    dirs = rejected.reason_dirs(lake.fs, lake.attempt_path(written.dataset, ctx.partition, written.attempt))
    out = stages.rejected_of(written.dataset)
    attempt = lake.new_attempt(out, ctx.partition)
    uri = lake.uri(lake.attempt_path(out, ctx.partition, attempt))
    try:
        got = rejected.rewrite(written.spark, {r: lake.uri(p) for r, p in dirs.items()}, written.side_schema, uri,
                               stage, spec.excerpt_chars)
        manifest = commit_attempt(
            lake,
            dataset=out,
            partition=ctx.partition,
            attempt=attempt,
            stage=stage,
            schema=REJECTED,
            row_count=got.rows,
            content_digest=got.digest,
            inputs=inputs,
            recipe_digest=ctx.recipe.stage_digest(stage),
            params={"fraction": spec.fraction_for(stage), "excerpt_chars": spec.excerpt_chars},
            counters={"read": sum(dropped.values()), "sampled": got.sampled, "examples": got.examples,
                      **_shard_counter(ctx)},
            dropped={},
            airflow=ctx.airflow,
            started=ctx.started,
        )
    except BaseException:
        lake.discard_attempt(out, ctx.partition, attempt)
        raise
    for path in dirs.values():
        lake.fs.rm(path, recursive=True)
    print(f"[phiflow]   kept {got.rows} of {sum(dropped.values())} dropped rows in {out}/{manifest.key}", flush=True)
    return manifest


def _shard_counter(ctx: StageContext) -> dict[str, Any]:
    if ctx.shard is None:
        return {}
    index, of = ctx.shard
    return {SHARD_COUNTER: {"index": index, "of": of}}


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
    known_reasons: Sequence[str] | None = None,
    reasons: dict[str | None, int] | None = None,
    keep_rejected: bool = False,
) -> Manifest:
    """`write_attempt` then `commit_written`: the kept rows of `rows` become the partition's content.

    Without `counted` or `known_reasons`, `rows` is read twice (tally, write): persist it if it is costly."""
    written = write_attempt(
        ctx, stage=stage, dataset=dataset, rows=rows, schema=schema, counted=counted, known_reasons=known_reasons,
        keep_rejected=keep_rejected,
    )
    return commit_written(ctx, written, stage=stage, inputs=inputs, counters=counters, reasons=reasons)


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


def quality_input(ctx: StageContext) -> tuple[str, pa.Schema]:
    """Quality's input dataset (the stage table's: langid where it applies, else extracted) and schema."""
    dataset = stages.quality_input(ctx.recipe, ctx.source)
    kind = ctx.kind
    return dataset, langid_schema(kind) if kind in stages.NEEDS_LANGID else EXTRACTED[kind]
