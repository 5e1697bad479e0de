"""The two Spark stages on the sample WARCs, in one shared local session: rows, counters,
idempotence, determinism across layouts, failure budget, and a crash mid-write."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import BROKEN, SAMPLE

from phiflow.manifest import Manifest
from phiflow.recipe import load_recipe
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, langid
from spark_jobs.engine.shard_runner import ShardsFailed
from spark_jobs.engine.stage_io import StageContext

pytestmark = pytest.mark.spark
SNAP = {"snapshot": "CC-MAIN-2024-10"}
EXPECTED_BROKEN = json.loads((BROKEN / "EXPECTED.json").read_text())


def ctx(
    recipe, lake: Lake, source: str = "web", partition: dict = SNAP, shards: str = "missing", **airflow
) -> StageContext:
    return StageContext(
        recipe=recipe, source=source, partition=dict(partition), lake=lake, airflow=airflow, shards=shards
    )


def rows(lake: Lake, m: Manifest, cols: list[str]) -> list[tuple]:
    return sorted(tuple(r[c] for c in cols) for r in lake.read_table(m, columns=cols).to_pylist())


@pytest.fixture(scope="module")
def committed(spark, test_recipe, tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    ex = commoncrawl_extract.run(spark, ctx(test_recipe, lake, run_id="first"))
    li = langid.run(spark, ctx(test_recipe, lake, run_id="first"))
    return lake, ex, li


def test_extract_commits_every_page_of_the_snapshot(committed) -> None:
    lake, ex, _ = committed
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    # The sample's pages of this snapshot are all good pages: every response record is kept.
    expected = manifest["snapshots"]["CC-MAIN-2024-10"]["responses"]
    assert ex.counters["read"] == expected and ex.row_count == expected - sum(ex.counters["dropped"].values())
    assert ex.counters["files"] == {"total": 4, "ok": 4, "failed": {}, "failed_files": [], "lost_records": []}
    assert ex.counters["records"]["response"] == expected  # and the other WARC-Types, counted apart
    assert ex.counters["shards"] == {"total": 2, "ids": ["00000", "00001"]}  # shard_files: 2
    table = lake.read_table(ex)
    assert table.num_rows == ex.row_count
    assert len(set(table.column("doc_id").to_pylist())) == ex.row_count  # no duplicates
    assert ex.inputs[0].dataset == "external:commoncrawl" and ex.airflow == {"run_id": "first"}


def test_langid_pins_its_input_and_matches_the_guide_labels(committed) -> None:
    lake, ex, li = committed
    assert li.inputs[0].digest == ex.digest and li.row_count == ex.row_count
    labels = {
        json.loads(line)["url"]: json.loads(line)["lang"]
        for line in (SAMPLE / "labels.jsonl").read_text().split("\n")
        if line
    }
    got = {url: lang for url, lang in rows(lake, li, ["url", "language"])}
    scored = [(labels[u], got[u]) for u in got if u in labels]
    accuracy = sum(a == b for a, b in scored) / len(scored)
    assert len(scored) >= 50
    assert accuracy >= 0.9, Counter((a, b) for a, b in scored if a != b)
    python_docs = [lang for url, lang in got.items() if "docs.python.org" in url]
    assert python_docs and Counter(python_docs).most_common(1)[0][0] == "en"
    assert sum(li.counters["languages"].values()) == li.row_count and len(li.counters["languages"]) >= 10


def test_rerun_is_idempotent_and_layout_independent(spark, committed, test_recipe) -> None:
    lake, ex, li = committed
    cols = ["doc_id", "url", "text", "language", "language_score"]
    first_rows = rows(lake, li, cols)
    shard_attempts = [m.attempt for m in lake.shards("web.extracted", SNAP)]
    # A plain rerun finds every shard committed from the same inputs: it rewrites none, re-rolls up.
    again = commoncrawl_extract.run(spark, ctx(test_recipe, lake, run_id="again"))
    assert [m.attempt for m in lake.shards("web.extracted", SNAP)] == shard_attempts
    assert again.digest == ex.digest and again.airflow == {"run_id": "again"}
    spark.conf.set("spark.sql.files.maxPartitionBytes", "64k")  # a different partitioning of the input
    try:
        li2 = langid.run(spark, ctx(test_recipe, lake, shards="all", run_id="second"))
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    ex2 = commoncrawl_extract.run(spark, ctx(test_recipe, lake, shards="all", run_id="second"))
    assert ex2.digest == ex.digest and li2.digest == li.digest
    # really rewritten, then replaced whole
    assert not set(m.attempt for m in lake.shards("web.extracted", SNAP)) & set(shard_attempts)
    assert rows(lake, li2, cols) == first_rows
    assert lake.require("web.langid", SNAP).row_count == li.row_count  # replaced, not appended


def test_broken_snapshot_counts_every_reason(spark, test_recipe, lake) -> None:
    m = commoncrawl_extract.run(
        spark, ctx(test_recipe, lake, source="broken", partition={"snapshot": "CC-MAIN-BROKEN"})
    )
    dropped = m.counters["dropped"]
    assert dropped["payload_digest_mismatch"] == 3  # truncated member + two lying WARC lengths
    for reason, n in {
        "binary_payload": 2,
        "empty_payload": 1,
        "too_little_text": 1,
        "http_404": 1,
        "http_301": 1,
        "too_large": 1,
    }.items():
        assert dropped[reason] == n, (reason, dropped)
    good = {u for f in EXPECTED_BROKEN["files"].values() for u in f["good_uris"]}
    kept = {u for (u,) in rows(lake, m, ["url"])}
    assert good <= kept
    assert m.counters["files"]["ok"] == 4


def test_failure_budget_blocks_the_commit(spark, test_recipe, lake, tmp_path) -> None:
    listing = tmp_path / "crawl-data/CC-MAIN-BAD/warc.paths.gz"
    listing.parent.mkdir(parents=True)
    import gzip

    names = ["missing-1.warc.gz", "missing-2.warc.gz", "good.warc.gz"]
    listing.write_bytes(gzip.compress("\n".join(names).encode()))
    good = sorted((SAMPLE / "crawl-data/CC-MAIN-2024-10").rglob("*.warc.gz"))[0]
    (tmp_path / "good.warc.gz").write_bytes(good.read_bytes())
    data = test_recipe.model_dump(mode="json", exclude={"path"})
    data["sources"] = {
        "bad": {
            "kind": "commoncrawl",
            "base_url": str(tmp_path),
            "snapshots": [{"id": "CC-MAIN-BAD", "date": "2024-07-01", "paths": "crawl-data/CC-MAIN-BAD/warc.paths.gz"}],
        }
    }
    from phiflow.recipe import parse_recipe

    def recipe_with(**extract):
        stages = {**data["stages"], "commoncrawl_extract": {**data["stages"]["commoncrawl_extract"], **extract}}
        return parse_recipe({**data, "stages": stages})

    bad = {"snapshot": "CC-MAIN-BAD"}
    # Shard 00000 holds the two missing files: over its own budget, it is not committed; the good
    # shard is, and the snapshot waits for the rejected one.
    with pytest.raises(ShardsFailed, match="shard 00000: 2 of 2 WARC files failed"):
        commoncrawl_extract.run(spark, ctx(recipe_with(), lake, source="bad", partition=bad))
    assert [m.key for m in lake.shards("bad.extracted", bad)] == ["snapshot=CC-MAIN-BAD/shard=00001"]
    assert lake.manifest("bad.extracted", bad) is None
    # Shards may fail whole; the snapshot's budget still refuses 2 of 3 files lost.
    with pytest.raises(commoncrawl_extract.FailureBudgetExceeded, match="2 of 3 WARC files of the snapshot failed"):
        commoncrawl_extract.run(spark, ctx(recipe_with(shard_failure_budget=1.0), lake, source="bad", partition=bad))
    assert lake.manifest("bad.extracted", bad) is None
    lenient = recipe_with(shard_failure_budget=1.0, failure_budget=0.7)
    m = commoncrawl_extract.run(spark, ctx(lenient, lake, source="bad", partition=bad))
    assert m.counters["files"]["failed"] == {"open_error:FileNotFoundError": 2} and m.row_count > 0
    failed = m.counters["files"]["failed_files"]  # by name: what a retry needs
    assert [f["url"].rsplit("/", 1)[-1] for f in failed] == ["missing-1.warc.gz", "missing-2.warc.gz"]
    assert all(f["reason"] == "open_error:FileNotFoundError" and "missing-" in f["error"] for f in failed)


def test_crash_mid_write_leaves_no_half_partition(spark, test_recipe, lake, monkeypatch) -> None:
    before = commoncrawl_extract.run(spark, ctx(test_recipe, lake))
    shard0, shard1 = lake.shards("web.extracted", SNAP)
    real_commit, commits = Lake.commit, []

    def die_on_second(self, manifest):  # shard 00000 commits; the process dies writing shard 00001
        if manifest.dataset != "web.extracted":  # its rejected rows (recipe.rejected) commit as before
            return real_commit(self, manifest)
        if commits:
            raise SystemExit("killed mid-write")
        commits.append(manifest.key)
        return real_commit(self, manifest)

    monkeypatch.setattr(Lake, "commit", die_on_second)
    with pytest.raises(SystemExit):
        commoncrawl_extract.run(spark, ctx(test_recipe, lake, shards="all", run_id="crashed"))
    monkeypatch.undo()
    assert commits == [shard0.key]
    seen = lake.require("web.extracted", SNAP)
    assert seen.attempt == before.attempt and seen.airflow == {}  # readers still see the old roll-up only
    lake.collect_garbage("web.extracted", shard0.partition, ttl_s=0, grace_s=0)
    assert lake.missing_files(seen) == []  # ... whose files survive shard 00000's recommit and a GC
    shard_path = lake.partition_path("web.extracted", shard1.partition)
    assert len(lake.fs.ls(shard_path + "/_attempts", detail=False)) == 2  # the crashed attempt: on disk, invisible
    after = commoncrawl_extract.run(spark, ctx(test_recipe, lake, run_id="rerun"))
    assert after.digest == before.digest and lake.require("web.extracted", SNAP).airflow == {"run_id": "rerun"}
    assert lake.shards("web.extracted", SNAP)[0].airflow == {"run_id": "crashed"}  # resumed, not redone
    # The crashed attempt and the superseded one go once the lease and the readers' grace have passed.
    lake.collect_garbage("web.extracted", shard1.partition, ttl_s=0, grace_s=0)
    now = lake.shards("web.extracted", SNAP)[1]
    assert lake.fs.ls(shard_path + "/_attempts", detail=False) == [
        lake.attempt_path("web.extracted", shard1.partition, now.attempt)]


def test_recipe_file_roundtrip(test_recipe) -> None:
    assert load_recipe(test_recipe.path).digest == test_recipe.digest


def test_langid_counts_each_drop_reason_in_its_one_pass(spark, committed, test_recipe) -> None:
    lake, ex, li = committed
    params = test_recipe.stages.langid.model_copy(update={"keep_languages": ["en", "de"], "min_score": 0.9})
    strict = test_recipe.model_copy(update={"stages": test_recipe.stages.model_copy(update={"langid": params})})
    m = langid.run(spark, ctx(strict, lake, run_id="strict"))
    dropped = m.counters["dropped"]
    assert set(dropped) == {"langid_low_score", "language_not_kept"} and all(dropped.values())
    assert m.row_count + sum(dropped.values()) == ex.row_count
    kept = rows(lake, m, ["language", "language_score"])
    assert len(kept) == m.row_count and {lang for lang, _ in kept} <= {"en", "de"}
    assert min(s for _, s in kept) >= 0.9
    full = {lang: n for lang, n in li.counters["languages"].items() if lang in ("en", "de")}
    assert set(m.counters["languages"]) <= set(full)


def test_observed_tally_equals_a_separate_pass_and_names_an_undeclared_reason(spark, test_recipe, lake) -> None:
    import pyarrow as pa

    from spark_jobs.engine.stage_io import tally, write_attempt

    df = spark.createDataFrame(
        [(f"d{i}", i, [None, "short", "noisy", None][i % 4]) for i in range(200)],
        "doc_id string, n long, drop_reason string",
    )
    schema = pa.schema([("doc_id", pa.string()), ("n", pa.int64())])
    part = ctx(test_recipe, lake, partition={"t": "1"})
    written = write_attempt(
        part, stage="langid", dataset="t.rows", rows=df, schema=schema, known_reasons=("short", "noisy", "unused")
    )
    assert written.counted == tally(df, schema)
    assert written.counted.reasons == {None: 100, "short": 50, "noisy": 50}
    with pytest.raises(RuntimeError, match="50 rows carry a drop reason outside"):
        write_attempt(part, stage="langid", dataset="t.rows", rows=df, schema=schema, known_reasons=("short",))
    attempts = lake.fs.ls(lake.partition_path("t.rows", {"t": "1"}) + "/_attempts", detail=False)
    assert attempts == [lake.attempt_path("t.rows", {"t": "1"}, written.attempt)]  # the failed one is gone
