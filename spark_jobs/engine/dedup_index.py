"""The cross-snapshot dedup index: the band keys and content hashes of every earlier snapshot's
survivors, so that snapshot k reads what matches its own keys instead of every earlier `minhash`
partition.

Layout. The index of `<source>.minhash` is the lake partition `_index/<source>.minhash/index=current`
(under `_`, so not a dataset of its own; committed with the same compare-and-swap as any partition).
Its manifest names the files of a few *segments*, one attempt folder each, and says in its counters
which `minhash` partitions (by digest) each segment holds. A segment's rows are entries
`(band, key, origin_partition, file, row)`: one per LSH band key of a survivor, and one with band -1
whose key is the xxhash64 of its content hash; `file` and `row` locate the survivor's row in the
committed `minhash` partition (the manifest's file list, the row's position in the file), which never
changes while the partition's digest does not. They are written in `bucket=<key mod buckets>`
folders, sorted by key.

Update and compaction: after dedup commits snapshot k's `minhash` partition, k becomes one new segment,
merged with the newest segments while they are no larger (a binary counter): k snapshots live in at
most log2(k) + 1 segments, and each entry is rewritten O(log k) times over the whole history.

Lookup (`earlier_matches`): snapshot k's keys are shuffled to their buckets; one Python call per bucket
reads that bucket's entries from each segment and semi-joins them with k's keys (Arrow's hash join).
The history is never exploded, shuffled or decoded beyond the bucket's entry columns. The rows of the
matched documents only are then read from their `minhash` partitions, by position: only the row
groups that hold a match.

Staleness: the index is derived data. It is rebuilt from the committed `minhash` partitions when it
is missing, when its MinHash parameters or bucket count differ from the recipe's, or when a partition
it holds was recommitted with other rows (a backfill of an earlier snapshot); earlier snapshots it
lacks are added as one segment. Entries of partitions the run must not see (snapshots dated after
the one being deduplicated) are filtered out by origin, so a backfill of an old snapshot reads the
same history as its first run did.
"""

from __future__ import annotations

import bisect
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, ShortType, StringType, StructField, StructType

from phiflow.manifest import Manifest, sha256_json
from phiflow.schema import MINHASH, describe, fingerprint
from phiflow.storage import Lake, parse_partition
from phiflow.version import code_version
from spark_jobs.engine.stage_io import spark_schema

INDEX_PARTITION = {"index": "current"}
ENTRY = pa.schema(
    [
        pa.field("band", pa.int16()),  # -1: the content-hash entry
        pa.field("key", pa.int64()),
        pa.field("origin_partition", pa.string()),
        pa.field("file", pa.int32()),  # index in the partition manifest's file list
        pa.field("row", pa.int64()),  # position in that file
    ]
)
ENTRY_SPARK = StructType(
    [
        StructField("band", ShortType()),
        StructField("key", LongType()),
        StructField("origin_partition", StringType()),
        StructField("file", IntegerType()),
        StructField("row", LongType()),
    ]
)
LOCATION = ["origin_partition", "file", "row"]
_BUCKET_DIR = re.compile(r"(?:^|/)bucket=(\d+)/")


def index_dataset(minhash_dataset: str) -> str:
    return f"_index/{minhash_dataset}"


# -- the state, as the index manifest's counters say it --------------------------------------------
@dataclass
class Segment:
    attempt: str
    partitions: list[str]  # minhash partition keys whose survivors it holds
    entries: int

    @property
    def level(self) -> int:
        return level_of(len(self.partitions))


@dataclass
class IndexState:
    buckets: int
    signature: dict  # the MinHash parameters and family the entries were hashed with
    covered: dict[str, str]  # minhash partition key -> digest of the committed partition held
    segments: list[Segment]

    @classmethod
    def of(cls, manifest: Manifest | None) -> IndexState | None:
        if manifest is None:
            return None
        c = manifest.counters
        return cls(c["buckets"], c["signature"], dict(c["covered"]), [Segment(**s) for s in c["segments"]])

    def counters(self) -> dict:
        return {
            "buckets": self.buckets,
            "signature": self.signature,
            "covered": self.covered,
            "segments": [asdict(s) for s in self.segments],
        }


def level_of(n_partitions: int) -> int:
    return max(n_partitions, 1).bit_length() - 1


def merge_plan(segments: list[Segment], new_partitions: int) -> int:
    """How many of the newest segments merge into the one that adds `new_partitions` partitions: while
    the newest is no larger (by level) than what is being built, it joins it (a binary counter)."""
    size, merged = new_partitions, 0
    for seg in reversed(segments):
        if seg.level > level_of(size):
            break
        size += len(seg.partitions)
        merged += 1
    return merged


@dataclass(frozen=True)
class Verdict:
    """What the index must do before snapshot k reads it: `rebuild` it whole, or `add` partitions."""

    rebuild: bool
    add: list[str]
    why: str


def verdict(state: IndexState | None, needed: dict[str, str], buckets: int, signature: dict) -> Verdict:
    """Compare the index with the committed `minhash` partitions the run needs (key -> digest)."""
    if state is None:
        return Verdict(True, sorted(needed), "no index yet")
    if state.buckets != buckets or state.signature != signature:
        return Verdict(True, sorted(needed), "built with other MinHash parameters or bucket count")
    changed = sorted(k for k, d in needed.items() if k in state.covered and state.covered[k] != d)
    if changed:
        return Verdict(True, sorted(needed), f"{', '.join(changed)} recommitted since it was indexed")
    missing = sorted(k for k in needed if k not in state.covered)
    return Verdict(False, missing, f"adds {', '.join(missing)}" if missing else "up to date")


# -- pure per-bucket and per-file logic -------------------------------------------------------------
def bucket_of(path: str) -> int | None:
    m = _BUCKET_DIR.search(path)
    return int(m.group(1)) if m else None


def probe_bucket(entries: pa.Table, keys: pa.Table, allowed: Iterable[str]) -> pa.Table:
    """Entries of partitions in `allowed` whose (band, key) is among `keys`: the documents to fetch."""
    entries = entries.filter(pc.is_in(entries["origin_partition"], value_set=pa.array(sorted(allowed), pa.string())))
    hits = entries.join(keys.select(["band", "key"]), keys=["band", "key"], join_type="left semi")
    return hits.select(LOCATION)


def read_rows(uri: str, rows: list[int], columns: list[str]) -> pa.Table:
    """Rows of one parquet file by position (sorted, distinct), reading only the row groups that hold them."""
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        starts = [0]
        for i in range(pf.metadata.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
        parts = []
        for g in sorted({bisect.bisect_right(starts, r) - 1 for r in rows}):
            lo, hi = bisect.bisect_left(rows, starts[g]), bisect.bisect_left(rows, starts[g + 1])
            group = pf.read_row_group(g, columns=columns)
            parts.append(group.take(pa.array([r - starts[g] for r in rows[lo:hi]], pa.int64())))
    return pa.concat_tables(parts) if parts else pa.schema([pf.schema_arrow.field(c) for c in columns]).empty_table()


def _read_entries(uris: list[str]) -> pa.Table:
    parts = []
    for uri in uris:
        fs, path = url_to_fs(uri)
        parts.append(pq.read_table(path, filesystem=fs, schema=ENTRY))
    return pa.concat_tables(parts) if parts else ENTRY.empty_table()


# -- Spark plumbing -----------------------------------------------------------------------------------
def entries_of(rows: DataFrame, buckets: int) -> DataFrame:
    """Index entries of `minhash` rows (content_hash, bands and their location), with their bucket."""
    banded = rows.select(*LOCATION, F.posexplode("bands").alias("band", "key"))
    hashed = rows.select(*LOCATION, F.lit(-1).alias("band"), F.xxhash64("content_hash").alias("key"))
    return with_bucket(banded.unionByName(hashed).select(F.col("band").cast("short"), "key", *LOCATION), buckets)


def with_bucket(df: DataFrame, buckets: int) -> DataFrame:
    return df.withColumn("bucket", F.pmod(F.col("key"), F.lit(buckets)).cast(IntegerType()))


def query_keys(current: DataFrame, buckets: int) -> DataFrame:
    """The distinct (band, key) of the snapshot being deduplicated, content-hash keys included."""
    return with_bucket(
        current.select(F.posexplode("bands").alias("band", "key"))
        .unionByName(current.select(F.lit(-1).alias("band"), F.xxhash64("content_hash").alias("key")))
        .select(F.col("band").cast("short"), "key")
        .distinct(),
        buckets,
    )


def minhash_rows(spark: SparkSession, lake: Lake, partitions: list[Manifest]) -> DataFrame:
    """The rows of committed `minhash` partitions (not empty), each tagged with its partition key."""
    read = spark.read.schema(spark_schema(MINHASH))
    frames = [read.parquet(*lake.data_files(m)).withColumn("origin_partition", F.lit(m.key)) for m in partitions]
    rows = frames[0]
    for f in frames[1:]:
        rows = rows.unionByName(f)
    return rows


class HistoryIndex:
    """One source's index in one lake: read, brought up to date, probed, extended."""

    def __init__(self, spark: SparkSession, lake: Lake, minhash_dataset: str, buckets: int, signature: dict) -> None:
        self.spark, self.lake, self.minhash = spark, lake, minhash_dataset
        self.dataset = index_dataset(minhash_dataset)
        self.buckets, self.signature = buckets, signature

    def manifest(self) -> Manifest | None:
        try:
            return self.lake.manifest(self.dataset, INDEX_PARTITION)
        except ValueError:  # a corrupt index manifest: rebuilt like a missing one
            return None

    def ensure(self, needed: list[Manifest]) -> tuple[Manifest, Verdict]:
        """The index holding at least `needed` (not empty) as committed now: rebuilt or extended as the
        verdict says."""
        current = self.manifest()
        v = verdict(IndexState.of(current), {m.key: m.digest for m in needed}, self.buckets, self.signature)
        print(f"[phiflow] dedup index {self.dataset}: {v.why}", flush=True)
        if v.rebuild or v.add:
            by_key = {m.key: m for m in needed}
            state = self._fresh() if v.rebuild else IndexState.of(current)
            current = self._add(state, [by_key[k] for k in v.add], None if v.rebuild else current)
        return current, v

    def record(self, committed: Manifest) -> Manifest:
        """After dedup committed `committed` (a `minhash` partition): hold it in the index. A partition
        the index held with other rows makes it rebuild from what is committed now."""
        current = self.manifest()
        state = IndexState.of(current)
        if state is None or state.buckets != self.buckets or state.signature != self.signature:
            return self.ensure([committed])[0]
        if committed.key in state.covered:
            if state.covered[committed.key] == committed.digest:
                return current
            keep = [m for k in state.covered if k != committed.key and (m := self._committed(k)) is not None]
            print(f"[phiflow] dedup index {self.dataset}: {committed.key} recommitted; rebuilding", flush=True)
            return self._add(self._fresh(), [*keep, committed], None)
        return self._add(state, [committed], current)

    def _fresh(self) -> IndexState:
        return IndexState(self.buckets, self.signature, {}, [])

    def _committed(self, key: str) -> Manifest | None:
        return self.lake.manifest(self.minhash, parse_partition(key))

    def _add(self, state: IndexState, new: list[Manifest], current: Manifest | None) -> Manifest:
        """Write one segment holding `new` (not empty) and the newest segments it absorbs, and commit
        the index naming it and the segments it keeps."""
        merged = merge_plan(state.segments, len(new))
        cut = len(state.segments) - merged
        kept, absorbed = state.segments[:cut], state.segments[cut:]
        attempt = self.lake.new_attempt(self.dataset, INDEX_PARTITION)
        try:
            rows = self._minhash_rows(new)
            if absorbed and current is not None:
                rows = rows.unionByName(self._segment_entries(current, absorbed))
            uri = self.lake.uri(self.lake.attempt_path(self.dataset, INDEX_PARTITION, attempt))
            (
                rows.repartition(self.buckets, "bucket")
                .sortWithinPartitions("key")
                .write.mode("append")  # the fresh folder holds the attempt's lease
                .partitionBy("bucket")
                .parquet(uri)
            )
            entries = self.spark.read.schema(ENTRY_SPARK).parquet(uri).count()
            segment = Segment(attempt, [k for s in absorbed for k in s.partitions] + [m.key for m in new], entries)
            covered = {**state.covered, **{m.key: m.digest for m in new}}
            return self._commit(IndexState(self.buckets, self.signature, covered, [*kept, segment]), attempt)
        except BaseException:
            self.lake.discard_attempt(self.dataset, INDEX_PARTITION, attempt)
            raise

    def _minhash_rows(self, partitions: list[Manifest]) -> DataFrame:
        """Entries of committed `minhash` partitions, located by file (manifest order) and row."""
        frames = []
        for m in partitions:
            names = [x for i, f in enumerate(m.files) for x in (F.lit(posixpath.basename(f.path)), F.lit(i))]
            frames.append(
                self.spark.read.schema(spark_schema(MINHASH))
                .parquet(*self.lake.data_files(m))
                .select(
                    "content_hash",
                    "bands",
                    F.lit(m.key).alias("origin_partition"),
                    F.create_map(*names)[F.col("_metadata.file_name")].alias("file"),
                    F.col("_metadata.row_index").alias("row"),
                )
            )
        rows = frames[0]
        for f in frames[1:]:
            rows = rows.unionByName(f)
        return entries_of(rows, self.buckets)

    def _segment_entries(self, current: Manifest, segments: list[Segment]) -> DataFrame:
        uris = [u for s in segments for u in self.segment_files(current, s)]
        return with_bucket(self.spark.read.schema(ENTRY_SPARK).parquet(*uris), self.buckets)

    def segment_files(self, manifest: Manifest, segment: Segment) -> list[str]:
        prefix = f"_attempts/{segment.attempt}/"
        base = self.lake.partition_path(self.dataset, INDEX_PARTITION)
        return [self.lake.uri(posixpath.join(base, f.path)) for f in manifest.files if f.path.startswith(prefix)]

    def _commit(self, state: IndexState, attempt: str) -> Manifest:
        files = sorted(
            (f for s in state.segments for f in self.lake.attempt_files(self.dataset, INDEX_PARTITION, s.attempt)),
            key=lambda f: f.path,
        )
        manifest = Manifest(
            dataset=self.dataset,
            partition=dict(INDEX_PARTITION),
            stage="dedup",
            attempt=attempt,
            files=files,
            row_count=sum(s.entries for s in state.segments),
            bytes=sum(f.bytes for f in files),
            schema=describe(ENTRY),
            schema_fingerprint=fingerprint(ENTRY),
            content_digest=sha256_json({"covered": state.covered, "signature": state.signature}),
            params={"buckets": state.buckets, **state.signature},
            code_version=code_version(),
            counters=state.counters(),
        )
        return self.lake.commit(manifest)

    # -- lookup ---------------------------------------------------------------------------------------
    def matches(self, current: DataFrame, index: Manifest, allowed: list[str]) -> DataFrame:
        """Locations (partition, file, row) of the earlier survivors sharing a band key or content hash
        with `current`, among the partitions `allowed` (those dated before the snapshot)."""
        files: dict[int, list[str]] = {}
        base = self.lake.partition_path(self.dataset, INDEX_PARTITION)
        for f in index.files:
            b = bucket_of(f.path)
            if b is not None:
                files.setdefault(b, []).append(self.lake.uri(posixpath.join(base, f.path)))
        probe = _bucket_prober(files, allowed)
        located = StructType([f for f in ENTRY_SPARK.fields if f.name in LOCATION])
        return query_keys(current, self.buckets).groupBy("bucket").applyInArrow(probe, located).distinct()

    def fetch(self, matches: DataFrame, partitions: list[Manifest]) -> DataFrame:
        """The `minhash` rows of the matched documents, read by position from their partitions."""
        files = {m.key: self.lake.data_files(m) for m in partitions}
        schema = StructType([*spark_schema(MINHASH).fields, StructField("origin_partition", StringType())])
        return matches.groupBy("origin_partition").applyInArrow(_partition_fetcher(files), schema)


def _bucket_prober(files: dict[int, list[str]], allowed: list[str]) -> Callable[[pa.Table], pa.Table]:
    def run(keys: pa.Table) -> pa.Table:
        bucket = keys["bucket"][0].as_py()
        return probe_bucket(_read_entries(files.get(bucket, [])), keys, allowed)

    return run


def _partition_fetcher(files: dict[str, list[str]]) -> Callable[[pa.Table], pa.Table]:
    columns = MINHASH.names

    def run(wanted: pa.Table) -> pa.Table:
        key = wanted["origin_partition"][0].as_py()
        by_file: dict[int, list[int]] = {}
        for f, r in zip(wanted["file"].to_pylist(), wanted["row"].to_pylist(), strict=True):
            by_file.setdefault(f, []).append(r)
        parts = [read_rows(files[key][f], sorted(set(rows)), columns) for f, rows in sorted(by_file.items())]
        t = pa.concat_tables(parts) if parts else MINHASH.empty_table()
        return t.append_column("origin_partition", pa.array([key] * t.num_rows, pa.string()))

    return run
