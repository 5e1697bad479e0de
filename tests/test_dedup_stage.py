"""The dedup stage in Spark: planted near-duplicates measured against the analytic LSH curve,
determinism across partitionings, the survivor rule, connected components, and cross-snapshot
dedup of the real sample against committed signatures only."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from phiflow.recipe import parse_recipe
from phiflow.records import lsh_graph
from phiflow.records.minhash import MinHasher, detection_probability, jaccard, planted_pair
from phiflow.schema import LANGID_FIELDS, WEB_EXTRACTED, with_drop_reason, with_fields
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, dedup, langid
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema, step

pytestmark = pytest.mark.spark
QUALITY = with_fields(WEB_EXTRACTED, LANGID_FIELDS).append(pa.field("quality_score", pa.float32()))
SNAP = {"snapshot": "CC-MAIN-2024-10"}
LEVELS = (0.5, 0.65, 0.75, 0.85, 0.95)
PAIRS = 24


def recipe_with(test_recipe, **dedup_params):
    data = test_recipe.model_dump(mode="json", exclude={"path"})
    data["stages"]["dedup"] = {**data["stages"]["dedup"], **dedup_params}
    return parse_recipe(data)


def ctx(recipe, lake: Lake, partition: dict = SNAP) -> StageContext:
    return StageContext(recipe=recipe, source="web", partition=dict(partition), lake=lake)


def doc(i: int, text: str, *, day: int = 0, quality: float | None = None) -> dict:
    return {"doc_id": f"d{i:05d}", "source": "web", "source_uri": f"warc://{i}", "parent_ids": [],
            "url": f"https://example.org/{i}", "fetch_time": datetime(2024, 2, 20, tzinfo=UTC) + timedelta(days=day),
            "text": text, "quality_score": quality}


def commit_docs(spark, recipe, lake: Lake, rows: list[dict], partition: dict = SNAP) -> None:
    """A `web.quality` partition (the langid schema plus quality_score), through the storage contract."""
    names = QUALITY.names
    df = spark.createDataFrame([(*(r.get(c) for c in names), None) for r in rows],
                               spark_schema(with_drop_reason(QUALITY)))
    commit_partition(spark, ctx(recipe, lake, partition), stage="dedup", dataset="web.quality", rows=df,
                     schema=QUALITY, inputs=[], counters={}, reasons={})


@pytest.fixture(scope="module")
def planted():
    """Pairs at known Jaccard (own vocabulary each), exact copies with other case/punctuation, singletons."""
    rng = np.random.default_rng(11)
    mh = MinHasher(5, 128, 16, 8, 42)
    rows, pairs = [], []
    for level in LEVELS:
        for _ in range(PAIRS):
            a, b = planted_pair(rng, 100, level, 5)
            i = len(rows)
            rows += [doc(i, a, day=1), doc(i + 1, b, day=2)]
            pairs.append((f"d{i:05d}", f"d{i + 1:05d}", jaccard(mh.shingles(a), mh.shingles(b))))
    exact = []
    for _ in range(20):
        a, _b = planted_pair(rng, 60, 0.0, 5)
        i = len(rows)
        rows += [doc(i, a, day=3, quality=0.2), doc(i + 1, a.upper().replace(" ", " , "), day=5, quality=0.9)]
        exact.append((f"d{i:05d}", f"d{i + 1:05d}"))
    for _ in range(20):
        rows.append(doc(len(rows), planted_pair(rng, 100, 0.0, 5)[0]))
    return rows, pairs, exact


@pytest.fixture(scope="module")
def planted_run(spark, test_recipe, planted, tmp_path_factory):
    recipe = recipe_with(test_recipe, input="quality")
    lake = Lake(str(tmp_path_factory.mktemp("dedup-lake")))
    commit_docs(spark, recipe, lake, planted[0])
    return recipe, lake, dedup.run(spark, ctx(recipe, lake))


def kept_and_clusters(lake: Lake, partition: dict = SNAP) -> tuple[set[str], list[tuple]]:
    kept = set(lake.read_table(lake.require("web.dedup", partition), columns=["doc_id"]).column("doc_id").to_pylist())
    cl = lake.read_table(lake.require("web.dup_clusters", partition)).to_pylist()
    return kept, sorted(tuple(r.values()) for r in cl)


def test_planted_pairs_match_the_analytic_curve(planted, planted_run) -> None:
    """Recall per similarity level and overall precision/recall (truth: Jaccard >= 0.7) against the
    analytic probability of sharing a band AND passing the 0.7 signature check.
    Tolerance per level: 3 binomial standard deviations for 24 pairs, plus 0.05."""
    _, pairs, _ = planted
    _, lake, m = planted_run
    _, clusters = kept_and_clusters(lake)
    merged = {(c[2], c[1]) for c in clusters if c[4] == "fuzzy"}  # (survivor, merged doc)
    found = [((a, b) in merged or (b, a) in merged, j) for a, b, j in pairs]
    for level in LEVELS:
        hits = [f for f, j in found if abs(j - level) < 0.03]
        expected = np.mean([detection_probability(j, 16, 8, 128, 0.7) for f, j in found if abs(j - level) < 0.03])
        tol = 3 * np.sqrt(max(expected * (1 - expected), 0.02) / len(hits)) + 0.05
        assert abs(np.mean(hits) - expected) <= tol, (level, np.mean(hits), expected)
    truth = [j >= 0.7 for _, j in found]
    detected = [f for f, _ in found]
    tp = sum(t and d for t, d in zip(truth, detected, strict=True))
    precision, recall = tp / max(sum(detected), 1), tp / sum(truth)
    p_all = [detection_probability(j, 16, 8, 128, 0.7) for _, j in found]
    exp_recall = sum(p for p, t in zip(p_all, truth, strict=True) if t) / sum(truth)
    exp_precision = sum(p for p, t in zip(p_all, truth, strict=True) if t) / sum(p_all)
    print(f"precision {precision:.3f} (analytic {exp_precision:.3f})  recall {recall:.3f} (analytic {exp_recall:.3f})")
    assert abs(recall - exp_recall) < 0.1 and abs(precision - exp_precision) < 0.1
    assert m.counters["merged"]["fuzzy"] == sum(detected) and m.counters["dropped"]["fuzzy_duplicate"] == sum(detected)


def test_exact_duplicates_keep_the_best_by_the_recipe_rule(planted, planted_run) -> None:
    _, _, exact = planted
    _, lake, m = planted_run
    kept, clusters = kept_and_clusters(lake)
    by_doc = {c[1]: c for c in clusters}
    for low_q, high_q in exact:  # quality_score desc comes before fetch_time asc in the rule
        assert high_q in kept and low_q not in kept
        assert by_doc[low_q][2] == high_q and by_doc[low_q][4] == "exact" and by_doc[low_q][0] == min(low_q, high_q)
    assert m.counters["dropped"]["exact_duplicate"] == len(exact)
    assert m.row_count == len(kept) and len(kept) + len(clusters) == m.counters["read"]
    sig = lake.read_table(lake.require("web.minhash", SNAP))
    assert set(sig.column("doc_id").to_pylist()) == kept  # signatures of the survivors, for later snapshots


def test_same_kept_set_on_other_partitionings(spark, planted, planted_run, tmp_path) -> None:
    recipe, lake, first = planted_run
    before = kept_and_clusters(lake)
    other = Lake(str(tmp_path / "lake"))
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")
    try:
        commit_docs(spark, recipe, other, list(reversed(planted[0])))
        second = dedup.run(spark, ctx(recipe, other))
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "4")
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert kept_and_clusters(other) == before
    assert second.content_digest == first.content_digest


def test_the_driver_graph_gives_the_spark_plans_outputs(spark, planted_run, tmp_path) -> None:
    """A partition small enough for the driver's candidate graph (phiflow.records.lsh_graph) commits what
    the Spark plan commits for it: the same survivors, clusters, signatures and counters."""
    recipe, lake, driver = planted_run
    spark_recipe = recipe_with(recipe, local_graph_max_docs=0)
    other = Lake(str(tmp_path / "lake"))
    commit_docs(spark, spark_recipe, other, lake.read_table(lake.require("web.quality", SNAP)).to_pylist())
    planned = dedup.run(spark, ctx(spark_recipe, other))
    assert (driver.counters["candidate_graph"], planned.counters["candidate_graph"]) == ("driver", "spark")
    assert kept_and_clusters(other) == kept_and_clusters(lake)
    for dataset in ("web.dedup", "web.dup_clusters", "web.minhash"):
        assert other.require(dataset, SNAP).content_digest == lake.require(dataset, SNAP).content_digest, dataset
    for counter in ("candidate_pairs", "verified_pairs", "clusters", "merged", "dropped"):
        assert planned.counters[counter] == driver.counters[counter], counter
    assert driver.counters["verified_pairs"] > 0


@pytest.mark.parametrize("exact", [True, False])
def test_the_driver_decisions_are_the_spark_plans_on_random_nodes(spark, test_recipe, exact) -> None:
    """Random nodes of this and two earlier snapshots: content hashes from a small alphabet (exact groups),
    band keys and signatures that link some of them, a survivor rule over a float column with nulls and
    NaN and a timestamp column with nulls, non-ASCII doc_ids: phiflow.records.survivors decides what the
    Spark windows and joins decide, row for row."""
    rng = np.random.default_rng(7 if exact else 8)
    n, bands, perm = 300, 4, 12
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    templates = rng.integers(0, 4, (10, perm))
    rows = []
    for i in range(n):
        origin = int(rng.choice([0, 0, 0, -1, -999_999]))
        sig = np.where(rng.random(perm) < 0.2, rng.integers(0, 4, perm), templates[rng.integers(0, 10)])
        score = float(rng.choice([0.1, 0.5, 0.9, np.nan])) if rng.random() > 0.2 else None
        fetched = t0 + timedelta(days=int(rng.integers(0, 5))) if rng.random() > 0.2 else None
        words = rng.random() > 0.05
        rows.append((f"{rng.choice(['d', 'é', 'Z'])}{rng.integers(0, 10**6):06d}-{i}", f"h{rng.integers(0, 40)}",
                     origin, f"snapshot=S{origin}", score, fetched,
                     rng.integers(0, 25, bands).tolist() if words else None, sig.tolist() if words else None))
    nodes = spark.createDataFrame(rows, "doc_id string, content_hash string, origin int, origin_partition string, "
                                        "quality_score double, fetch_time timestamp, bands array<bigint>, "
                                        "signature array<int>").localCheckpoint()
    params = test_recipe.stages.dedup.model_copy(update={"exact": exact, "threshold": 0.6, "recheck_max_bucket": 5,
                                                         "survivor": ["quality_score desc", "fetch_time asc"]})
    rule = dedup.survivor_rule(params, nodes.columns)
    assert rule == [("quality_score", "desc"), ("fetch_time", "asc")]
    names = ["doc_id", "cluster_id", "survivor_id", "survivor_partition", "kind", "earlier", "cluster_head"]
    driven, planned = {}, {}
    got = dedup.driver_decisions(nodes, rule, params, driven).select(*names).collect()
    want = dedup.spark_decisions(nodes, rule, params, planned, n).select(*names).collect()
    assert sorted(map(tuple, got)) == sorted(map(tuple, want))
    assert len(got) == sum(r[2] == 0 for r in rows)
    assert {r["kind"] for r in got} == {"exact", "fuzzy"} and any(r["earlier"] for r in got)
    assert sum(r["doc_id"] != r["survivor_id"] for r in got) > sum(r["cluster_head"] for r in got) > 0
    for counter in ("candidate_pairs", "verified_pairs"):
        assert driven[counter] == planned[counter] > 0, counter


@pytest.mark.parametrize(("threshold", "recheck"), [(0.7, 100), (0.5, 3), (0.0, 100)])
def test_the_driver_graph_is_the_spark_graph_on_random_buckets(spark, threshold, recheck) -> None:
    """Random band keys from a small alphabet (buckets of every size, one giant) and signatures drawn
    from a few templates (links that pass and fail): the same candidate pairs, verified pairs and
    component roots from lsh_graph as from candidate_links and the star rounds."""
    rng = np.random.default_rng(int(threshold * 10) + recheck)
    n, bands, perm = 400, 6, 20
    keys = rng.integers(0, 60, (n, bands))
    keys[rng.random(n) < 0.1, 0] = -1  # a giant bucket in band 0 (boilerplate)
    templates = rng.integers(0, 5, (8, perm))
    sigs = templates[rng.integers(0, 8, n)]
    sigs = np.where(rng.random((n, perm)) < 0.15, rng.integers(0, 5, (n, perm)), sigs)
    ids = [f"doc-{i:04d}-{rng.integers(0, 99)}" for i in rng.permutation(n)]
    rows = [(ids[i], keys[i].tolist(), sigs[i].tolist()) for i in range(n)] + [("no-bands", None, None)]
    reps = spark.createDataFrame(rows, "doc_id string, bands array<bigint>, signature array<int>")
    links = dedup.candidate_links(reps.where("bands is not null"), reps.select("doc_id", "signature"), threshold,
                                  recheck).collect()
    verified = [(r["a"], r["b"]) for r in links if r["ok"]]
    cc, _ = dedup.connected_components(spark.createDataFrame(verified, "a string, b string"), 64)
    graph = lsh_graph.from_arrow(reps.toArrow(), threshold, recheck)
    assert (graph.candidate_pairs, graph.verified_pairs) == (len(links), len(verified))
    assert 0 < len(verified) < len(links) or threshold == 0
    assert dict(graph.roots) == {r["node"]: r["root"] for r in cc.collect()}


def test_connected_components_in_spark(spark) -> None:
    """A 40-node path (needs several rounds), a star, a cycle: every node gets its component's minimum."""
    path = [(f"p{i:02d}", f"p{i + 1:02d}") for i in range(39)]
    edges = path[::-1] + [("s0", f"s{i}") for i in range(1, 6)] + [("c1", "c2"), ("c2", "c3"), ("c3", "c1")]
    edges += [("c2", "c1"), ("c1", "c2"), ("s3", "s3")]  # repeated, reversed and self links change nothing
    cc, rounds = dedup.connected_components(spark.createDataFrame(edges, "a string, b string"), 64)
    got = {r["node"]: r["root"] for r in cc.collect()}
    assert got == {**{f"p{i:02d}": "p00" for i in range(40)}, **{f"s{i}": "s0" for i in range(6)},
                   **{c: "c1" for c in ("c1", "c2", "c3")}}
    assert rounds >= 2
    with pytest.raises(RuntimeError, match="did not converge"):
        dedup.connected_components(spark.createDataFrame(path, "a string, b string"), 1)


def test_connected_components_match_union_find_on_random_graphs(spark) -> None:
    """Random sparse graphs (trees, chains, nodes with several smaller neighbours): the rounds stop only
    when every node holds its component's minimum, as a union-find over the same edges says."""
    rng = np.random.default_rng(11)
    for n_nodes, n_edges in ((60, 45), (200, 190), (300, 120)):
        edges = [(f"n{a:03d}", f"n{b:03d}") for a, b in rng.integers(0, n_nodes, (n_edges, 2)) if a != b]
        parent: dict[str, str] = {}

        def find(x: str, parent: dict[str, str] = parent) -> str:
            while parent.get(x, x) != x:
                x = parent[x]
            return x

        for a, b in edges:
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
        cc, _ = dedup.connected_components(spark.createDataFrame(edges, "a string, b string"), 64)
        expected = {x: find(x) for e in edges for x in e}
        assert {r["node"]: r["root"] for r in cc.collect()} == expected
        driver = lsh_graph.components([a for a, _ in edges], [b for _, b in edges])  # small graphs' path
        assert dict(driver) == expected


def test_a_member_failing_against_the_root_meets_the_other_members(spark) -> None:
    """r, x, y share one bucket; x and y agree with each other but not with the root r."""
    sig_r, sig_xy = [0] * 10, [0] * 5 + [1] * 5  # x, y agree with r on 50%: below a 0.7 threshold
    reps = spark.createDataFrame(
        [("r", [7, 100], sig_r), ("x", [7, 200], sig_xy), ("y", [7, 300], sig_xy), ("z", [8, 400], sig_r)],
        "doc_id string, bands array<bigint>, signature array<int>",
    )

    def edges(recheck: int) -> tuple[set, set]:
        links = dedup.candidate_links(reps, reps.select("doc_id", "signature"), 0.7, recheck).collect()
        return {(r["a"], r["b"]) for r in links}, {(r["a"], r["b"]) for r in links if r["ok"]}

    links, verified = edges(recheck=100)
    assert links == {("r", "x"), ("r", "y"), ("x", "y")} and verified == {("x", "y")}
    links, verified = edges(recheck=2)  # the bucket has 3 members: a star only
    assert links == {("r", "x"), ("r", "y")} and verified == set()


def test_decisions_are_broadcast_only_within_the_sessions_threshold(spark) -> None:
    """The documents' text is joined with the decisions without a shuffle when the decisions fit
    spark.sql.autoBroadcastJoinThreshold, in any of its units; -1 leaves the choice to Spark."""
    decisions = spark.createDataFrame([(f"d{i}", None) for i in range(100)], "doc_id string, drop_reason string")

    def hinted(threshold: str, rows: int) -> bool:
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", threshold)
        try:
            plan = dedup.broadcast_when_small(decisions, rows)._jdf.queryExecution().analyzed().toString()
        finally:
            spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")
        return "broadcast" in plan.lower()

    assert hinted("10485760b", 100) and hinted("10m", 80_000) and hinted("2k", 16)
    assert not hinted("10m", 90_000) and not hinted("2k", 17) and not hinted("-1", 1)
    assert dedup.merged_by_kind({None: 5, "exact_duplicate": 2, "exact_duplicate_of_earlier_snapshot": 1,
                                 "fuzzy_duplicate": 4}) == {"exact": 3, "fuzzy": 4}


def test_steps_name_their_spark_jobs_and_log_their_time(spark, capsys) -> None:
    sc = spark.sparkContext
    with step(spark, "dedup", "candidates"):
        assert sc.getLocalProperty("spark.job.description") == "dedup: candidates"
        spark.range(10).count()
    assert sc.getLocalProperty("spark.job.description") is None
    with pytest.raises(ZeroDivisionError), step(spark, "dedup", "commit"):
        1 / 0  # noqa: B018
    assert sc.getLocalProperty("spark.job.description") is None  # cleared however the step ends
    assert re.findall(r"dedup (\w+): \d+\.\d s", capsys.readouterr().out) == ["candidates", "commit"]


def test_later_snapshot_dedups_against_committed_signatures_only(spark, test_recipe, tmp_path, monkeypatch) -> None:
    """The sample's 21 pages recrawled with the same bytes are dropped from CC-MAIN-2024-18, with the
    text of CC-MAIN-2024-10 deleted from the lake: only its committed signatures are read."""
    lake = Lake(str(tmp_path / "lake"))
    test_recipe = recipe_with(test_recipe, input="langid")  # no quality stage needed for this property
    snaps = [{"snapshot": "CC-MAIN-2024-10"}, {"snapshot": "CC-MAIN-2024-18"}]
    for p in snaps:
        commoncrawl_extract.run(spark, ctx(test_recipe, lake, p))
        langid.run(spark, ctx(test_recipe, lake, p))
    urls = [{r["url"]: r["text"] for r in lake.read_table(lake.require("web.langid", p)).to_pylist()} for p in snaps]
    recrawled = {u for u in urls[0] if urls[1].get(u) == urls[0][u]}
    assert len(recrawled) == 21
    first = dedup.run(spark, ctx(test_recipe, lake, snaps[0]))
    for ds in ("web.langid", "web.extracted"):
        shutil.rmtree(lake.partition_path(ds, snaps[0]))
    second = dedup.run(spark, ctx(test_recipe, lake, snaps[1]))
    assert second.counters["dropped"] == {"exact_duplicate_of_earlier_snapshot": 21}
    assert second.counters["earlier_partitions"] == ["snapshot=CC-MAIN-2024-10"]
    assert {i.dataset for i in second.inputs} == {"web.langid", "web.minhash"}
    clusters = lake.read_table(lake.require("web.dup_clusters", snaps[1])).to_pylist()
    kept_first = set(lake.read_table(first, columns=["doc_id"]).column("doc_id").to_pylist())
    assert len(clusters) == 21 and all(c["survivor_partition"] == "snapshot=CC-MAIN-2024-10" for c in clusters)
    assert {c["survivor_id"] for c in clusters} <= kept_first
    dropped_urls = {r["url"] for r in lake.read_table(lake.require("web.langid", snaps[1])).to_pylist()} - {
        r["url"] for r in lake.read_table(second).to_pylist()}
    assert dropped_urls == recrawled
    changed = recipe_with(test_recipe, num_perm=112, bands=14)
    with pytest.raises(ValueError, match="other MinHash parameters"):
        dedup.run(spark, ctx(changed, lake, snaps[1]))
    monkeypatch.setattr(dedup, "SIGNATURE_FAMILY", "another-family")  # a later change of hash functions
    with pytest.raises(ValueError, match="signature_family"):
        dedup.run(spark, ctx(test_recipe, lake, snaps[1]))
