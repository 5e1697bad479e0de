"""dedup: `<source>.<input>` partition -> `<source>.dedup` (survivors), `<source>.dup_clusters`
(who merged into whom) and `<source>.minhash` (the survivors' signatures, for later snapshots).

After the per-document hashing, the decisions (steps 3-6) are Spark joins, windows and star rounds
for a partition of any size (`spark_decisions`). A partition of at most `local_graph_max_docs`
documents, with its earlier matches, has them made in the driver instead (`driver_decisions`,
phiflow.records.survivors): one collect of hashes, rule values and signatures and one join back, where
the Spark plan's dozen jobs would cost more than the work; same rules, same results (tested).

1. `mapInArrow` computes a normalised-content hash, a MinHash signature and LSH band keys.
2. Documents of earlier snapshots enter as nodes too, read from their committed `<source>.minhash`
   partitions and restricted to those sharing a content hash or band key with this partition
   (a semi-join), so earlier text is never read or hashed again.
3. Exact: a window over the content hash picks one representative per hash.
4. Fuzzy, among representatives: each LSH bucket (band, key) links its members to its smallest
   doc_id (a star, not all pairs: linear in bucket size); each link is kept when the signatures
   agree on at least `threshold` of their positions; a member that fails against the root is
   checked against the bucket's other members (buckets up to `recheck_max_bucket`), so each such
   bucket's components are those of checking all its pairs.
5. Connected components by alternating large-star / small-star rounds (Kiveris et al., 2014) until
   the edges are stars: every node ends up linked to the smallest doc_id of its component.
6. The survivor of each cluster is the first member by (earlier snapshot first, the recipe's rule,
   doc_id); the cluster id is its smallest doc_id. Both depend only on the rows, so any
   partitioning of the input gives the same result. The drop reasons, the kept signatures' digest
   and the cluster count are observed while the decisions are materialized.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import ArrayType, IntegerType, LongType, StringType, StructField, StructType

from phiflow.intervals import partitions_before, snapshot_order
from phiflow.manifest import Manifest, partition_key
from phiflow.recipe import DedupParams
from phiflow.records import boilerplate, lsh_graph, survivors
from phiflow.records.minhash import SIGNATURE_FAMILY, MinHasher
from phiflow.schema import DUP_CLUSTERS, MINHASH
from spark_jobs.engine.dedup_index import HistoryIndex, minhash_rows
from spark_jobs.engine.stage_io import (
    StageContext,
    commit_partition,
    connected,
    observe_tally,
    observed_tally,
    shared,
    stage_main,
    step,
)

STAGE = "dedup"
FEATURES = [
    StructField("content_hash", StringType()),
    StructField("signature", ArrayType(IntegerType())),
    StructField("bands", ArrayType(LongType())),
]
DROP_REASONS = tuple(
    f"{kind}_duplicate{where}" for kind in ("exact", "fuzzy") for where in ("", "_of_earlier_snapshot")
)
_TOKENIZED_AT_ONCE = 256  # pages whose word lists a Python worker holds at once (an Arrow batch has 10,000)
_ID_ROW_BYTES = 128  # a row of doc_ids and a short string in Spark's hashed relation, rounded up
_BYTE_UNITS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
# Parameters the stored signatures depend on (with minhash.SIGNATURE_FAMILY, recorded in the `minhash`
# manifest's counters): earlier partitions must have been hashed with the same.
SIGNATURE_PARAMS = ("shingle_size", "num_perm", "bands", "rows", "seed", "boilerplate_min_docs",
                    "boilerplate_min_share", "boilerplate_min_words")


def hasher(params: DedupParams) -> MinHasher:
    return MinHasher(params.shingle_size, params.num_perm, params.bands, params.rows, params.seed)


def signature_batches(mh: MinHasher, keep: list[str], sites=None):  # -> mapInArrow function
    """Hash, signature and band keys per document, of its whole text. `sites`: a broadcast set of the
    sites that may have a template (phiflow.records.boilerplate); a page of one of them also gets its
    `site` and its distinct `line_keys`, from the same tokenization as its shingles."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        wanted = sites.value if sites is not None else frozenset()
        slices = (b.slice(i, _TOKENIZED_AT_ONCE) for b in batches for i in range(0, b.num_rows, _TOKENIZED_AT_ONCE))
        for batch in slices:
            texts = batch.column("text").to_pylist()
            extra, names, tokens = [], [], None
            if sites is not None:
                page_sites, keys, tokens = [], [], []
                for url, text in zip(batch.column("url").to_pylist(), texts, strict=True):
                    site = boilerplate.site_of(url)
                    k, w = boilerplate.keys_and_words(url, text) if site in wanted else (None, None)
                    page_sites.append(site if k is not None else None)
                    keys.append(k)
                    tokens.append(w)
                extra = [pa.array(page_sites, pa.string()), pa.array(keys, pa.list_(pa.int64()))]
                names = ["site", "line_keys"]
            content, sig, bands = mh.batch(texts, tokens=tokens)
            cols = [batch.column(c) for c in keep] + [content, sig, bands, *extra]
            yield pa.RecordBatch.from_arrays(cols, names=[*keep, "content_hash", "signature", "bands", *names])

    return run


def stripped_batches(mh: MinHasher, keep: list[str], boiler, min_words: int):  # -> mapInArrow function
    """signature_batches of pages whose text has boilerplate lines, shingled without them; `boiler`: a
    broadcast of the partition's sorted boilerplate line keys."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        keys = boiler.value
        for batch in batches:
            texts = batch.column("text").to_pylist()
            urls = batch.column("url").to_pylist()
            content, sig, bands = mh.batch(texts, [boilerplate.strip(u, t, keys, min_words)
                                                   for u, t in zip(urls, texts, strict=True)])
            cols = [batch.column(c) for c in keep] + [content, sig, bands]
            yield pa.RecordBatch.from_arrays(cols, names=[*keep, "content_hash", "signature", "bands"])

    return run


def site_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow: each page's site (phiflow.records.boilerplate.site_of; "" for none), from its url."""
    for batch in batches:
        yield pa.RecordBatch.from_arrays([pa.array([boilerplate.site_of(u) for u in batch.column("url").to_pylist()],
                                                   pa.string())], names=["site"])


def template_sites(docs: DataFrame, params: DedupParams) -> frozenset[str]:
    """The sites with at least `boilerplate_min_docs` pages in the partition: only they can have a
    template (a line on that many of a site's pages), so only their pages' lines are hashed (a crawl
    partition is mostly sites with a page or two). Counted from the urls alone."""
    rows = (docs.select("url").mapInArrow(site_batches, "site string").where("site != ''").groupBy("site").count()
            .where(F.col("count") >= params.boilerplate_min_docs).collect())
    return frozenset(r["site"] for r in rows)


def boilerplate_keys(hashed: DataFrame, params: DedupParams) -> np.ndarray:
    """The partition's boilerplate: the sorted keys of the site lines found in at least
    `boilerplate_min_docs` of its documents and on at least `boilerplate_min_share` of the site's
    pages (a template is on most of a site's pages; the paragraphs a few near copies share are not).
    From the `site` and `line_keys` of signature_batches; collected to the driver and broadcast: a site's
    template is a few dozen lines."""
    paged = hashed.where(F.col("site").isNotNull())
    pages = paged.groupBy("site").agg(F.count(F.lit(1)).alias("pages"))
    lines = paged.select("site", F.explode("line_keys").alias("key")).groupBy("site", "key").count()
    shared = lines.join(pages, "site").where((F.col("count") >= params.boilerplate_min_docs)
                                             & (F.col("count") >= F.col("pages") * params.boilerplate_min_share))
    return np.sort(np.array([r["key"] for r in shared.select("key").collect()], dtype=np.int64))


def strip_boilerplate(docs: DataFrame, hashed: DataFrame, keys: np.ndarray, mh: MinHasher, keep: list[str],
                      schema: StructType, min_words: int) -> tuple[DataFrame, int]:
    """`hashed` with the pages that hold boilerplate lines hashed again without them; (rows, pages)."""
    spark = docs.sparkSession
    key_df = F.broadcast(spark.createDataFrame([(int(k),) for k in keys], "key long"))
    touched = _materialize(hashed.select("doc_id", F.explode("line_keys").alias("key"))
                           .join(key_df, "key", "left_semi").select("doc_id").distinct())
    pages = touched.count()
    redo = docs.join(touched, "doc_id", "left_semi").select(*keep, "text", "url").mapInArrow(
        stripped_batches(mh, keep, shared(spark, keys), min_words), schema)
    rest = hashed.join(touched, "doc_id", "left_anti").select(*schema.fieldNames())
    return rest.unionByName(redo), pages


def earlier_minhash(ctx: StageContext, params: DedupParams) -> list[Manifest]:
    """The committed `minhash` partitions of earlier snapshots, checked to be hashed like this run."""
    src = ctx.recipe.source(ctx.source)
    prior = [
        m
        for m in partitions_before(ctx.lake, ctx.io(STAGE).outputs[2], src, ctx.partition, inclusive=False)
        if m.partition != ctx.partition
    ]
    for m in prior:
        stale = {
            k: (m.params.get(k), getattr(params, k)) for k in SIGNATURE_PARAMS if m.params.get(k) != getattr(params, k)
        }
        if m.counters.get("signature_family") != SIGNATURE_FAMILY:
            stale["signature_family"] = (m.counters.get("signature_family"), SIGNATURE_FAMILY)
        if stale:
            raise ValueError(
                f"{m.dataset}/{m.key} was hashed with other MinHash parameters {stale} (stored, recipe): "
                "backfill dedup for the earlier snapshots first"
            )
    return prior


def history_index(spark: SparkSession, ctx: StageContext, params: DedupParams) -> HistoryIndex:
    signature = {k: getattr(params, k) for k in SIGNATURE_PARAMS} | {"family": SIGNATURE_FAMILY}
    return HistoryIndex(spark, ctx.lake, ctx.io(STAGE).outputs[2], params.history_buckets, signature)


def full_history_matches(
    spark: SparkSession, ctx: StageContext, current: DataFrame, prior: list[Manifest]
) -> DataFrame:
    """The earlier `minhash` rows sharing a content hash or a band key with `current`, by reading and
    exploding every earlier partition (`history_buckets: 0`; the reference the index is tested against)."""
    rows = minhash_rows(spark, ctx.lake, prior)
    keys = current.select(F.posexplode("bands").alias("band", "key")).distinct()
    hashes = current.select("content_hash").distinct()
    related = (
        rows.select("doc_id", F.posexplode("bands").alias("band", "key"))
        .join(keys, ["band", "key"], "left_semi")
        .select("doc_id")
        .unionByName(rows.join(hashes, "content_hash", "left_semi").select("doc_id"))
        .distinct()
    )
    return rows.join(related, "doc_id", "left_semi")


def earlier_nodes(
    ctx: StageContext, matched: DataFrame, prior: list[Manifest], current: DataFrame, rule_cols: list[str],
    schema: StructType,
) -> DataFrame:
    """Matched earlier rows (of the `prior` partitions) as graph nodes in `current`'s columns: ordered
    before it by snapshot date (`origin` < 0), without documents of this partition, with no rule values."""
    src = ctx.recipe.source(ctx.source)
    here = snapshot_order(src, ctx.partition)
    order = {
        m.key: (-1 if (pos := snapshot_order(src, m.partition)) is None or here is None else pos - 10**6)
        for m in prior
    }
    origin = F.create_map(*[F.lit(x) for kv in order.items() for x in kv])
    nodes = matched.withColumn("origin", origin[F.col("origin_partition")])
    nodes = nodes.join(current.select("doc_id"), "doc_id", "left_anti")
    for c in rule_cols:
        nodes = nodes.withColumn(c, F.lit(None).cast(schema[c].dataType))
    return nodes.select(*current.columns)


# -- rule ---------------------------------------------------------------------------------------
def survivor_rule(params: DedupParams, columns: list[str]) -> list[tuple[str, str]]:
    """The recipe's survivor terms (column, "asc" | "desc") whose columns the input has, doc_id left out
    (it always comes last)."""
    terms = (term.split() for term in params.survivor)
    return [(name, direction) for name, direction in terms if name != "doc_id" and name in columns]


def spark_order(rule: list[tuple[str, str]]) -> list[Column]:
    """Sort expressions of the survivor order: earlier origin first, then the rule (nulls last), doc_id."""
    terms = [F.col(n).desc_nulls_last() if d == "desc" else F.col(n).asc_nulls_last() for n, d in rule]
    return [F.col("origin").asc(), *terms, F.col("doc_id").asc()]


# -- connected components -----------------------------------------------------------------------
def _materialize(df: DataFrame, observed: bool = False) -> DataFrame:
    """Cut the lineage between rounds: a reliable checkpoint when a checkpoint dir is set (a cluster's
    SparkContext; a Spark Connect client cannot ask, and runs only on the local server: local).
    `observed`: the caller reads an Observation of `df`, which a Spark Connect client receives with a
    query's result but not with a checkpoint's; there the rows are kept on disk and counted instead
    (the caller unpersists them)."""
    spark = df.sparkSession
    if connected(spark):
        if observed:
            df.persist(StorageLevel.DISK_ONLY).count()
            return df
        return df.localCheckpoint()
    return df.checkpoint() if spark.sparkContext.getCheckpointDir() else df.localCheckpoint()


def _large_star(edges: DataFrame) -> DataFrame:
    """Link every neighbour larger than u to the smallest node of u's neighbourhood (u included)."""
    sym = edges.select(F.col("a").alias("u"), F.col("b").alias("v")).unionByName(
        edges.select(F.col("b").alias("u"), F.col("a").alias("v"))
    )
    m = sym.groupBy("u").agg(F.min("v").alias("mv")).select("u", F.least("u", "mv").alias("m"))
    out = sym.join(m, "u").where(F.col("v") > F.col("u"))
    return out.select(F.col("v").alias("a"), F.col("m").alias("b")).distinct()


def _small_star(edges: DataFrame) -> DataFrame:
    """Link u and every neighbour smaller than u to the smallest of them."""
    hi_lo = edges.select(F.greatest("a", "b").alias("u"), F.least("a", "b").alias("v"))
    m = hi_lo.groupBy("u").agg(F.min("v").alias("m"))
    j = hi_lo.join(m, "u")
    return (
        j.select(F.col("v").alias("a"), F.col("m").alias("b"))
        .where(F.col("a") != F.col("b"))
        .unionByName(j.select(F.col("u").alias("a"), F.col("m").alias("b")))
        .distinct()
    )


def _is_star_forest(edges: DataFrame) -> bool:
    """Every edge (a, b) has a > b; converged when each node has at most one outgoing edge and no edge's
    target has one: then every component is a star around its smallest node. One aggregation."""
    degrees = (
        edges.select(F.col("a").alias("node"), F.lit(1).alias("out"), F.lit(0).alias("into"))
        .unionByName(edges.select(F.col("b").alias("node"), F.lit(0).alias("out"), F.lit(1).alias("into")))
        .groupBy("node")
        .agg(F.sum("out").alias("out"), F.max("into").alias("into"))
    )
    return degrees.where((F.col("out") > 1) | ((F.col("out") == 1) & (F.col("into") == 1))).isEmpty()


def connected_components(edges: DataFrame, max_iterations: int) -> tuple[DataFrame, int]:
    """(node, root) for every node of an undirected edge list (a, b); root = smallest node of its
    component. Large-star / small-star rounds until the edges form stars around their components'
    smallest nodes (each round keeps the components; the stars are its fixed point)."""
    current = edges.where(F.col("a") != F.col("b"))  # a large-star round symmetrizes and dedups its input
    for round_no in range(1, max_iterations + 1):
        current = _materialize(_small_star(_large_star(current)))
        if _is_star_forest(current):
            roots = current.select(F.col("b").alias("node"), F.col("b").alias("root")).distinct()
            return current.select(F.col("a").alias("node"), F.col("b").alias("root")).unionByName(roots), round_no
    raise RuntimeError(
        f"connected components did not converge in {max_iterations} rounds (stages.dedup.max_iterations)"
    )


def fits_broadcast(spark: SparkSession, rows: int, row_bytes: int = _ID_ROW_BYTES) -> bool:
    """Whether `rows` rows of `row_bytes` fit the session's spark.sql.autoBroadcastJoinThreshold (-1: never)."""
    value = spark.conf.get("spark.sql.autoBroadcastJoinThreshold") or "-1"
    number, unit = re.fullmatch(r"\s*(-?\d+)\s*([a-zA-Z]*)\s*", value).groups()
    return 0 <= rows * row_bytes <= int(number) * _BYTE_UNITS[unit.lower().rstrip("b") or "b"]


def broadcast_when_small(df: DataFrame, rows: int, row_bytes: int = _ID_ROW_BYTES) -> DataFrame:
    """Hint a broadcast of `df` when it fits (fits_broadcast). A checkpointed frame carries no usable
    size estimate, so without the hint Spark shuffles both sides of a join with it (for the decisions,
    the documents' text); the stage knows the row counts."""
    return F.broadcast(df) if fits_broadcast(df.sparkSession, rows, row_bytes) else df


def spark_components(verified: DataFrame, counters: dict, max_iterations: int) -> DataFrame:
    """(node, root) of the verified links: in the driver when the graph fits a broadcast (rounds of Spark
    jobs cost more than the whole graph then), else by star rounds; counts the rounds."""
    if fits_broadcast(verified.sparkSession, 2 * counters["verified_pairs"]):
        pairs = verified.toArrow()
        counters["cc_rounds"] = 0
        graph = lsh_graph.components(pairs.column("a").to_pylist(), pairs.column("b").to_pylist())
        return verified.sparkSession.createDataFrame(graph, "node string, root string")
    cc, counters["cc_rounds"] = connected_components(verified, max_iterations)
    return cc


# -- the stage ----------------------------------------------------------------------------------
def _checked(pairs: DataFrame, sigs: DataFrame, threshold: float) -> DataFrame:
    """(a, b, ok): ok when the two signatures agree on at least `threshold` of their positions."""
    agree = F.aggregate(F.zip_with("sa", "sb", lambda x, y: (x == y).cast("int")), F.lit(0), lambda acc, x: acc + x)
    return (
        pairs.join(sigs.select(F.col("doc_id").alias("a"), F.col("signature").alias("sa")), "a")
        .join(sigs.select(F.col("doc_id").alias("b"), F.col("signature").alias("sb")), "b")
        .select("a", "b", (agree >= F.lit(threshold) * F.size("sa")).alias("ok"))
    )


def candidate_links(reps: DataFrame, sigs: DataFrame, threshold: float, recheck_max_bucket: int) -> DataFrame:
    """(a, b, ok) for every candidate link a < b among exact representatives; ok: verified.

    Each LSH bucket is first a star around its smallest doc_id (linear in bucket size); a member whose
    link to that root fails verification is then checked against every other member of the bucket,
    in buckets of at most `recheck_max_bucket` members. That gives each such bucket the connected
    components of verifying all its pairs, at the cost of the failed members only; a giant bucket
    (boilerplate) stays a star instead of growing quadratic. The caller materializes the result once
    (it is counted, then joined into components). `sigs`: (doc_id, signature) of `reps`, for the
    verification joins (a broadcast hint on it saves their shuffles)."""
    exploded = reps.select("doc_id", F.posexplode("bands").alias("band", "key"))
    buckets = (
        exploded.groupBy("band", "key").agg(F.min("doc_id").alias("root"), F.count(F.lit(1)).alias("n")).where("n > 1")
    )
    members = exploded.join(buckets, ["band", "key"]).select("band", "key", "doc_id", "root", "n")
    star = members.where(F.col("doc_id") != F.col("root")).select(F.col("root").alias("a"), F.col("doc_id").alias("b"))
    star = star.distinct()
    if threshold <= 0:
        return star.withColumn("ok", F.lit(True))
    members = _materialize(members)  # read by the star and twice by the recheck
    star = _materialize(_checked(star, sigs, threshold))
    failed = star.where(~F.col("ok")).select(F.col("a").alias("root"), F.col("b").alias("x"))
    rest = (
        members.where(F.col("n") <= recheck_max_bucket)
        .join(failed, "root")
        .where((F.col("doc_id") != F.col("x")) & (F.col("doc_id") != F.col("root")))
        .join(members.select("band", "key", F.col("doc_id").alias("x")), ["band", "key", "x"], "left_semi")
        .select(F.least("x", "doc_id").alias("a"), F.greatest("x", "doc_id").alias("b"))
        .distinct()
    )
    # a recheck pair can also be another bucket's star link: distinct keeps the counters exact
    # (verification depends on the pair only, so both carry the same ok)
    return star.unionByName(_checked(rest, sigs, threshold)).distinct()


def merged_by_kind(reasons: dict[str | None, int]) -> dict[str, int]:
    """Merged documents per kind (exact, fuzzy), from the drop reasons `<kind>_duplicate[...]`."""
    out: dict[str, int] = {}
    for reason, n in reasons.items():
        if reason is not None:
            kind = reason.split("_", 1)[0]
            out[kind] = out.get(kind, 0) + n
    return out


def driver_decisions(nodes: DataFrame, rule: list[tuple[str, str]], params: DedupParams, counters: dict) -> DataFrame:
    """This partition's documents with their decisions, made in the driver (phiflow.records.survivors) from
    the nodes' hashes, rule values and signatures: one collect and one join instead of the Spark plan's
    windows and graph jobs. `nodes` must be materialized (it is read twice)."""
    columns = ["doc_id", "content_hash", "origin", "origin_partition", *(n for n, _ in rule), "bands", "signature"]
    made = survivors.decide(nodes.select(*columns).toArrow(), rule, exact=params.exact, fuzzy=params.fuzzy,
                            threshold=params.threshold, recheck_max_bucket=params.recheck_max_bucket)
    if made.graph is not None:
        counters |= {"candidate_graph": "driver", "candidate_pairs": made.graph.candidate_pairs,
                     "verified_pairs": made.graph.verified_pairs}
        if made.graph.verified_pairs:
            counters["cc_rounds"] = 0
    decisions = broadcast_when_small(nodes.sparkSession.createDataFrame(made.rows), made.rows.num_rows)
    here = nodes.where(F.col("origin") == 0).select("doc_id", "content_hash", "signature", "bands")
    return here.join(decisions, "doc_id")


def spark_decisions(
    nodes: DataFrame, rule: list[tuple[str, str]], params: DedupParams, counters: dict, graph_docs: int
) -> DataFrame:
    """This partition's documents with their decisions, by Spark joins and windows (any size): exact
    representatives by a window over the content hash, the candidate graph and its components among
    them, then each cluster's first document by a window over the cluster."""
    spark, order = nodes.sparkSession, spark_order(rule)
    by_hash = Window.partitionBy("content_hash").orderBy(*order)
    rep = F.first("doc_id").over(by_hash) if params.exact else F.col("doc_id")
    with step(spark, STAGE, "exact"):
        nodes = _materialize(nodes.withColumn("rep", rep))  # read by the candidates and the survivors
    group = F.col("rep")
    if params.fuzzy:
        reps = nodes.where(F.col("doc_id") == F.col("rep"))
        with step(spark, STAGE, "candidates"):
            sigs = broadcast_when_small(reps.select("doc_id", "signature"), graph_docs,
                                        _ID_ROW_BYTES + 4 * params.num_perm)
            links = _materialize(candidate_links(reps, sigs, params.threshold, params.recheck_max_bucket))
            row = links.agg(F.count(F.lit(1)).alias("n"), F.count_if("ok").alias("ok")).first()
        counters |= {"candidate_graph": "spark", "candidate_pairs": int(row["n"]), "verified_pairs": int(row["ok"])}
        if counters["verified_pairs"]:
            with step(spark, STAGE, "components"):
                cc = spark_components(links.where("ok").select("a", "b"), counters, params.max_iterations)
            roots = broadcast_when_small(cc.withColumnRenamed("node", "rep"), 2 * counters["verified_pairs"])
            nodes = nodes.join(roots, "rep", "left")
            group = F.coalesce(F.col("root"), F.col("rep"))
    nodes = nodes.withColumn("group", group)
    in_group = Window.partitionBy("group")
    first = F.first(F.struct("doc_id", "content_hash", "origin_partition", "origin")).over(
        Window.partitionBy("group").orderBy(*order)
    )
    merged_here = (F.col("origin") == 0) & (F.col("s.doc_id") != F.col("doc_id"))
    return (
        nodes.withColumn("cluster_id", F.min("doc_id").over(in_group))
        .withColumn("s", first)
        # one row per cluster that merges documents of this partition: what counts the clusters
        .withColumn("first_merged", F.min(F.when(merged_here, F.col("doc_id"))).over(in_group))
        .where(F.col("origin") == 0)
        .select(
            "doc_id",
            "content_hash",
            "signature",
            "bands",
            "cluster_id",
            F.col("s.doc_id").alias("survivor_id"),
            F.col("s.origin_partition").alias("survivor_partition"),
            F.when(F.col("s.content_hash") == F.col("content_hash"), "exact").otherwise("fuzzy").alias("kind"),
            (F.col("s.origin") < 0).alias("earlier"),
            F.coalesce(F.col("first_merged") == F.col("doc_id"), F.lit(False)).alias("cluster_head"),
        )
    )


def run(spark: SparkSession, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.dedup
    io = ctx.io(STAGE)
    source = ctx.lake.require(io.input, ctx.partition)
    docs = spark.read.parquet(*ctx.lake.data_files(source))
    out_schema = to_arrow_schema(docs.schema, timezone="UTC")
    rule = survivor_rule(params, docs.columns)
    rule_cols = [name for name, _ in rule]
    print(
        f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} documents; survivor rule "
        f"{[*rule_cols, 'doc_id']}; bands {params.bands} x rows {params.rows}, threshold {params.threshold}",
        flush=True,
    )

    prior_manifests = earlier_minhash(ctx, params) if params.cross_snapshot else []
    keep = ["doc_id", *rule_cols]
    feat_schema = StructType([docs.schema[c] for c in keep] + FEATURES)
    mh, counters, sites = hasher(params), {}, None
    if params.boilerplate_min_docs and "url" in docs.columns:
        with step(spark, STAGE, "boilerplate sites"):
            big = template_sites(docs, params)
        counters |= {"boilerplate_sites": len(big), "boilerplate_lines": 0, "boilerplate_pages": 0}
        sites = shared(spark, big) if big else None
    lined = StructType([*feat_schema.fields, StructField("site", StringType()),
                        StructField("line_keys", ArrayType(LongType()))])
    current = docs.select(*keep, "text", *(["url"] if sites is not None else [])).mapInArrow(
        signature_batches(mh, keep, sites), lined if sites is not None else feat_schema)
    hashed = False  # whether `current` is read from a checkpoint, not computed again by each reader
    if sites is not None:
        with step(spark, STAGE, "hash, boilerplate"):
            current = _materialize(current)  # read by the line counts and by everything after
            keys = boilerplate_keys(current, params)
            counters["boilerplate_lines"] = len(keys)
            if len(keys):
                current, counters["boilerplate_pages"] = strip_boilerplate(
                    docs, current, keys, mh, keep, feat_schema, params.boilerplate_min_words)
            else:
                current, hashed = current.drop("site", "line_keys"), True
    current = current.withColumn("origin", F.lit(0)).withColumn("origin_partition", F.lit(partition_key(ctx.partition)))
    nodes = current
    counters |= {"read": source.row_count, "earlier_partitions": [m.key for m in prior_manifests],
                 "earlier_candidates": 0}
    if prior_manifests:
        with step(spark, STAGE, "hash"):
            current = _materialize(current)  # read by the history lookup and by the graph
        with step(spark, STAGE, "earlier snapshots"):
            if params.history_buckets:
                hist = history_index(spark, ctx, params)
                index, verdict = hist.ensure(prior_manifests)
                matched = hist.fetch(hist.matches(current, index, counters["earlier_partitions"]), prior_manifests)
                counters["history_index"] = {
                    "segments": len(index.counters["segments"]),
                    "entries": index.row_count,
                    "verdict": verdict.why,
                }
            else:
                matched = full_history_matches(spark, ctx, current, prior_manifests)
            earlier = _materialize(earlier_nodes(ctx, matched, prior_manifests, current, rule_cols, docs.schema))
            counters["earlier_candidates"] = earlier.count()
            nodes = current.unionByName(earlier)
    graph_docs = source.row_count + counters["earlier_candidates"]
    if graph_docs <= params.local_graph_max_docs:
        with step(spark, STAGE, "decisions (driver)"):
            if not (hashed or prior_manifests):  # read by the decisions and by the join
                nodes = current = _materialize(current)
            decided = driver_decisions(nodes, rule, params, counters)
    else:
        decided = spark_decisions(nodes, rule, params, counters, graph_docs)
    decided = decided.withColumn(
        "drop_reason",
        F.when(F.col("survivor_id") == F.col("doc_id"), None).otherwise(
            F.concat(F.col("kind"), F.lit("_duplicate"), F.when(F.col("earlier"), "_of_earlier_snapshot").otherwise(""))
        ),
    )
    # the drop reasons, the minhash partition's digest and the clusters, counted while materialized
    decided, seen = observe_tally(decided, MINHASH, DROP_REASONS, F.count_if("cluster_head").alias("clusters"))
    with step(spark, STAGE, "survivors"):
        decided = _materialize(decided, observed=True)
    try:
        counted = observed_tally(seen.get, DROP_REASONS)
        counters["clusters"] = int(seen.get["clusters"])
        counters["merged"] = merged_by_kind(counted.reasons)
        merged = decided.where(F.col("drop_reason").isNotNull())
        inputs = [source.input_ref()] + [m.input_ref() for m in prior_manifests]
        common = {"inputs": inputs, "reasons": counted.reasons}
        decisions = broadcast_when_small(decided.select("doc_id", "drop_reason"), source.row_count)
        with step(spark, STAGE, "commit clusters"):
            clusters = commit_partition(
                spark,
                ctx,
                stage=STAGE,
                dataset=io.outputs[1],
                schema=DUP_CLUSTERS,
                rows=merged.withColumn("drop_reason", F.lit(None).cast("string")),
                counters={"read": source.row_count, "clusters": counters["clusters"]},
                known_reasons=(),
                **common,
            )
        with step(spark, STAGE, "commit documents"):
            kept = commit_partition(
                spark,
                ctx,
                stage=STAGE,
                dataset=io.output,
                schema=out_schema,
                rows=docs.join(decisions, "doc_id"),
                counters={**counters, "dup_clusters_digest": clusters.digest},
                known_reasons=DROP_REASONS,  # counted while written: the documents are read once
                keep_rejected=True,
                **common,
            )
        with step(spark, STAGE, "commit signatures"):
            minhash = commit_partition(
                spark,
                ctx,
                stage=STAGE,
                dataset=io.outputs[2],
                schema=MINHASH,
                rows=decided,
                counted=counted,
                counters={"read": source.row_count, "dedup_digest": kept.digest, "signature_family": SIGNATURE_FAMILY},
                **common,
            )
        if params.cross_snapshot and params.history_buckets:
            with step(spark, STAGE, "history index"):
                history_index(spark, ctx, params).record(minhash)
    finally:
        decided.unpersist()
    print(
        f"[phiflow]   clusters {counters['clusters']}  merged {counters['merged']}  candidate pairs "
        f"{counters.get('candidate_pairs', 0)}  verified {counters.get('verified_pairs', 0)}  "
        f"earlier partitions {counters['earlier_partitions']}",
        flush=True,
    )
    return kept


if __name__ == "__main__":
    stage_main(STAGE, run)
