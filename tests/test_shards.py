"""Shards and roll-ups in the core (no Spark): assignment, counters, the roll-up manifest, what the lake
lists, what GC keeps, and how status, summary and the dashboard show a snapshot in flight."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phiflow import dashboard, shards
from phiflow.manifest import Manifest
from phiflow.schema import describe, fingerprint
from phiflow.storage import Lake
from phiflow.summary import failed_files, lake_status

SNAP = {"snapshot": "S1"}
SCHEMA = pa.schema([("doc_id", pa.string())])


def commit_shard(lake: Lake, index: int, of: int, docs: list[str], digest: int, failed: list[dict] = ()) -> Manifest:
    part = shards.of_shard(SNAP, index)
    attempt = lake.new_attempt("t.ds", part)
    path = lake.attempt_path("t.ds", part, attempt)
    pq.write_table(pa.Table.from_pylist([{"doc_id": d} for d in docs], schema=SCHEMA), f"{path}/part-0.parquet",
                   filesystem=lake.fs)
    files = lake.attempt_files("t.ds", part, attempt)
    return lake.commit(Manifest(
        dataset="t.ds", partition=part, stage="test", attempt=attempt, files=files, row_count=len(docs),
        bytes=sum(f.bytes for f in files), schema=describe(SCHEMA), schema_fingerprint=fingerprint(SCHEMA),
        content_digest=f"xxh64sum:{digest}", recipe_digest="r1", timings={"seconds": 2.0},
        counters={"read": len(docs) + 1, "dropped": {"too_short": 1}, "languages": {"en": len(docs)},
                  "files": {"total": 2, "ok": 2 - len(failed), "failed_files": list(failed)},
                  shards.SHARD_COUNTER: {"index": index, "of": of}},
    ))


def rollup(parts: list[Manifest]) -> Manifest:
    return shards.rollup("t.ds", SNAP, parts, inputs=[], recipe_digest="r1", params={}, code_version="x",
                         airflow={"run_id": "r"}, timings={"seconds": 4.0})


def test_assign_cuts_the_listing_in_order_and_the_same_way_every_time() -> None:
    urls = [f"w{i}" for i in range(7)]
    assert shards.assign(urls, 3) == [["w0", "w1", "w2"], ["w3", "w4", "w5"], ["w6"]]
    assert shards.assign(urls, 3) == shards.assign(list(urls), 3)
    assert shards.assign(urls, 100) == [urls] and shards.assign([], 2) == []
    with pytest.raises(ValueError):
        shards.assign(urls, 0)
    assert shards.of_shard({"snapshot": "S1", "shard": "00009"}, 2) == {"snapshot": "S1", "shard": "00002"}
    assert shards.parent({"snapshot": "S1", "shard": "00002"}) == SNAP and shards.parent(SNAP) is None


def test_counters_of_shards_add_up_and_lists_concatenate() -> None:
    merged = shards.merge_counters([
        {"read": 3, "dropped": {"a": 1}, "files": {"failed_files": [{"url": "x"}]}, "model": "m", "shard": {"of": 2}},
        {"read": 4, "dropped": {"a": 2, "b": 1}, "files": {"failed_files": [{"url": "y"}]}, "model": "m"},
        {"read": 1, "model": "other"},
    ])
    assert merged == {"read": 8, "dropped": {"a": 3, "b": 1}, "files": {"failed_files": [{"url": "x"}, {"url": "y"}]}}


def test_rollup_names_every_shard_file_and_sums_rows_and_row_hashes(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    a = commit_shard(lake, 0, 2, ["d1", "d2"], 10)
    b = commit_shard(lake, 1, 2, ["d3"], -3, failed=[{"url": "u9", "reason": "read_error:X", "error": "boom"}])
    assert list(lake.partitions("t.ds")) == []  # shards alone are not a partition readers see
    committed = lake.commit(rollup([a, b]))
    assert [m.key for m in lake.partitions("t.ds")] == ["snapshot=S1"]
    assert committed.row_count == 3 and committed.content_digest == "xxh64sum:7"
    assert committed.counters["shards"] == {"total": 2, "ids": ["00000", "00001"]}
    assert committed.counters["read"] == 5 and committed.counters["languages"] == {"en": 3}
    assert sorted(lake.read_table(committed).column("doc_id").to_pylist()) == ["d1", "d2", "d3"]
    assert lake.missing_files(committed) == []
    # Equal rows however they are sharded: the digest is a sum over rows.
    other = rollup([b, a])
    assert other.content_digest == committed.content_digest
    with pytest.raises(ValueError, match="another recipe"):
        rollup([a, Manifest(**{**b.__dict__, "recipe_digest": "r2"})])


def test_gc_keeps_the_attempt_a_rollup_still_reads(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    a = commit_shard(lake, 0, 2, ["d1"], 1)
    b = commit_shard(lake, 1, 2, ["d2"], 2)
    whole = lake.commit(rollup([a, b]))
    # Shard 0 is recommitted, and the run dies before rolling up again: the roll-up still names a's files.
    commit_shard(lake, 0, 2, ["d1", "d4"], 5)
    lake.collect_garbage("t.ds", a.partition, ttl_s=0, grace_s=0)
    assert lake.missing_files(lake.require("t.ds", SNAP)) == [] and lake.require("t.ds", SNAP).digest == whole.digest
    # Once a new roll-up names the new attempt, the old one goes.
    lake.commit(rollup(lake.shards("t.ds", SNAP)))
    assert len(lake.collect_garbage("t.ds", a.partition, ttl_s=0, grace_s=0)) == 1


def test_status_summary_and_dashboard_show_progress_and_failed_files(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    a = commit_shard(lake, 0, 3, ["d1"], 1)
    b = commit_shard(lake, 1, 3, ["d2"], 2, failed=[{"url": "s3://cc/f7.warc.gz", "reason": "read_error:E",
                                                      "error": "truncated"}])
    text, corrupt = lake_status(lake)
    assert corrupt == 0 and "snapshot=S1" in text and "IN PROGRESS: 2/3 shards committed" in text
    page = dashboard.render(dashboard.build_from_lake(lake))
    assert "data-testid='progress:t.ds:snapshot=S1'>2 of 3 shards" in page
    c = commit_shard(lake, 2, 3, ["d3"], 3)
    whole = lake.commit(rollup([a, b, c]))
    text, _ = lake_status(lake)
    assert "IN PROGRESS" not in text and "3 shards)" in text and text.count("snapshot=S1") == 1
    assert "s3://cc/f7.warc.gz" in failed_files([whole]) and "read_error:E" in failed_files([whole])
    page = dashboard.render(dashboard.build_from_lake(lake))
    assert "progress:" not in page and "data-testid='failed-file'>s3://cc/f7.warc.gz" in page
    assert failed_files([a]) == "failed files: none"
