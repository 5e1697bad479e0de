"""The cross-snapshot history index (spark_jobs/engine/dedup_index.py): its compaction and staleness rules, its
per-bucket and per-file lookups, and, through the dedup stage, results identical to reading and
joining every earlier `minhash` partition."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phiflow.recipe import parse_recipe
from phiflow.records.minhash import planted_pair
from phiflow.storage import Lake
from spark_jobs import dedup
from spark_jobs.engine.dedup_index import (
    INDEX_PARTITION,
    IndexState,
    Segment,
    index_dataset,
    level_of,
    merge_plan,
    probe_bucket,
    read_rows,
    verdict,
)
from tests.test_dedup_stage import commit_docs, ctx, doc

SNAPS = ["CC-MAIN-2024-10", "CC-MAIN-2024-18", "CC-MAIN-2024-22", "CC-MAIN-2024-26"]


# -- pure rules -------------------------------------------------------------------------------------
def test_compaction_keeps_log_k_segments_and_every_partition_once() -> None:
    segments: list[Segment] = []
    rewrites = 0
    for k in range(1, 65):
        merged = merge_plan(segments, 1)
        absorbed = segments[len(segments) - merged :]
        rewrites += sum(len(s.partitions) for s in absorbed)
        parts = [*(p for s in absorbed for p in s.partitions), f"p{k}"]
        segments = [*segments[: len(segments) - merged], Segment(f"a{k}", parts, 0)]
        held = [p for s in segments for p in s.partitions]
        assert sorted(held) == sorted(f"p{i}" for i in range(1, k + 1))  # each once, none lost
        assert len(segments) == bin(k).count("1") <= level_of(k) + 1  # a binary counter
        assert [s.level for s in segments] == sorted((s.level for s in segments), reverse=True)
    assert rewrites <= 64 * level_of(64)  # each partition rewritten at most log2(k) times


def test_verdict_rebuilds_on_changed_rows_or_parameters_and_adds_what_is_missing() -> None:
    sig = {"num_perm": 128, "family": "f"}
    held = {"snapshot=A": "d1", "snapshot=B": "d2"}
    state = IndexState(8, sig, held, [Segment("x", list(held), 9)])
    assert verdict(None, {"snapshot=A": "d1"}, 8, sig).rebuild
    assert verdict(state, {"snapshot=A": "d1"}, 16, sig).rebuild
    assert verdict(state, {"snapshot=A": "d1"}, 8, {**sig, "num_perm": 64}).rebuild
    v = verdict(state, {"snapshot=A": "dX", "snapshot=C": "d3"}, 8, sig)  # A was backfilled
    assert v.rebuild and v.add == ["snapshot=A", "snapshot=C"] and "snapshot=A recommitted" in v.why
    v = verdict(state, {"snapshot=A": "d1", "snapshot=C": "d3"}, 8, sig)
    assert not v.rebuild and v.add == ["snapshot=C"]
    v = verdict(state, {"snapshot=A": "d1"}, 8, sig)  # a backfill of B: the index holds later ones too
    assert not v.rebuild and v.add == []


def test_probe_bucket_joins_on_band_and_key_within_the_allowed_partitions() -> None:
    entries = pa.table(
        {
            "band": pa.array([0, 1, 0, -1, 0], pa.int16()),
            "key": pa.array([5, 5, 7, 9, 5], pa.int64()),
            "origin_partition": ["s=1", "s=1", "s=1", "s=1", "s=3"],
            "file": pa.array([0, 0, 1, 1, 0], pa.int32()),
            "row": pa.array([10, 11, 12, 13, 14], pa.int64()),
        }
    )
    keys = pa.table({"band": pa.array([0, -1], pa.int16()), "key": pa.array([5, 9], pa.int64()), "bucket": [1, 1]})
    hits = probe_bucket(entries, keys, ["s=1", "s=2"])
    assert sorted(hits["row"].to_pylist()) == [10, 13]  # 11: other band; 12: other key; 14: a later snapshot
    assert hits.column_names == ["origin_partition", "file", "row"]


def test_rows_are_read_by_position_from_the_row_groups_holding_them(tmp_path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"doc_id": [f"doc{i:05d}" for i in range(1000)], "x": list(range(1000))}), path, row_group_size=100
    )
    t = read_rows(path.as_uri(), [0, 150, 151, 920, 999], ["doc_id", "x"])
    assert t.column("x").to_pylist() == [0, 150, 151, 920, 999]
    assert t.column("doc_id").to_pylist()[1] == "doc00150"
    assert read_rows(path.as_uri(), [], ["x"]).num_rows == 0


# -- through the stage ------------------------------------------------------------------------------
def four_snapshot_recipe(test_recipe, buckets: int):
    data = test_recipe.model_dump(mode="json", exclude={"path"})
    paths = data["sources"]["web"]["snapshots"][0]["paths"]  # never read: the test commits web.quality itself
    data["sources"]["web"]["snapshots"] += [
        {"id": "CC-MAIN-2024-22", "date": "2024-05-20", "paths": paths},
        {"id": "CC-MAIN-2024-26", "date": "2024-06-20", "paths": paths},
    ]
    data["stages"]["dedup"] = {**data["stages"]["dedup"], "input": "quality", "history_buckets": buckets}
    return parse_recipe(data)


def snapshots_with_history_duplicates(seed: int) -> list[list[dict]]:
    """Four snapshots: new documents, exact and near copies of earlier snapshots' (survivors and not),
    and duplicates within the snapshot."""
    rng = np.random.default_rng(seed)
    snaps: list[list[dict]] = []
    earlier: list[str] = []
    n = 0
    for s in range(4):
        rows = []
        for _ in range(30):
            a, b = planted_pair(rng, 80, float(rng.choice([0.0, 0.8, 0.95])), 5)
            rows.append(doc(n, a, day=s, quality=float(rng.random())))
            n += 1
            if rng.random() < 0.3:  # a near copy in the same snapshot
                rows.append(doc(n, b, day=s, quality=float(rng.random())))
                n += 1
        for text in earlier[:: 3 + s]:  # exact and near copies of earlier snapshots' documents
            words = text.split()
            if rng.random() < 0.5:
                words[int(rng.integers(len(words)))] = "changed"
            rows.append(doc(n, " ".join(words), day=s, quality=float(rng.random())))
            n += 1
        earlier += [r["text"] for r in rows]
        snaps.append(rows)
    return snaps


def run_all(spark, recipe, lake: Lake, snaps: list[list[dict]]) -> list:
    for sid, rows in zip(SNAPS, snaps, strict=True):
        commit_docs(spark, recipe, lake, rows, {"snapshot": sid})
    return [dedup.run(spark, ctx(recipe, lake, {"snapshot": sid})) for sid in SNAPS]


def outputs(lake: Lake, sid: str) -> tuple:
    p = {"snapshot": sid}
    kept = sorted(lake.read_table(lake.require("web.dedup", p), columns=["doc_id"]).column("doc_id").to_pylist())
    clusters = sorted(tuple(r.values()) for r in lake.read_table(lake.require("web.dup_clusters", p)).to_pylist())
    return kept, clusters, lake.require("web.minhash", p).content_digest


@pytest.mark.spark
def test_the_index_gives_the_full_history_joins_results_and_survives_loss_and_backfill(
    spark, test_recipe, tmp_path
) -> None:
    snaps = snapshots_with_history_duplicates(5)
    indexed, reference = four_snapshot_recipe(test_recipe, 4), four_snapshot_recipe(test_recipe, 0)
    a, b = Lake(str(tmp_path / "indexed")), Lake(str(tmp_path / "reference"))
    runs_a, runs_b = run_all(spark, indexed, a, snaps), run_all(spark, reference, b, snaps)
    for sid, ra, rb in zip(SNAPS, runs_a, runs_b, strict=True):
        assert outputs(a, sid) == outputs(b, sid)
        assert ra.counters["earlier_candidates"] == rb.counters["earlier_candidates"]
    dropped = runs_a[-1].counters["dropped"]
    assert dropped.get("exact_duplicate_of_earlier_snapshot") and dropped.get("fuzzy_duplicate_of_earlier_snapshot")
    assert runs_a[-1].counters["history_index"]["verdict"] == "up to date"  # each run recorded its own
    assert not b.fs.exists(b.partition_path(index_dataset("web.minhash"), INDEX_PARTITION))

    index = a.require(index_dataset("web.minhash"), INDEX_PARTITION)
    state = IndexState.of(index)
    assert state.covered == {f"snapshot={s}": a.require("web.minhash", {"snapshot": s}).digest for s in SNAPS}
    assert [len(s.partitions) for s in state.segments] == [4]  # four snapshots: one compacted segment
    entries = sum(r.row_count for r in runs_a)  # survivors' rows
    assert index.row_count == entries * (indexed.stages.dedup.bands + 1)
    a.collect_garbage(index.dataset, INDEX_PARTITION, ttl_s=0, grace_s=0)  # the merged-away segments go
    assert not a.missing_files(index)
    assert len(a.fs.ls(a.partition_path(index.dataset, INDEX_PARTITION) + "/_attempts")) == 1

    # lost: rebuilt from the committed partitions, same result
    shutil.rmtree(a.partition_path(index.dataset, INDEX_PARTITION))
    again = dedup.run(spark, ctx(indexed, a, {"snapshot": SNAPS[-1]}))
    assert again.counters["history_index"]["verdict"] == "no index yet"
    assert outputs(a, SNAPS[-1]) == outputs(b, SNAPS[-1])

    # a backfill of an earlier snapshot with other rows: the index drops what it held for it
    for lake, recipe in ((a, indexed), (b, reference)):
        commit_docs(spark, recipe, lake, snaps[1][::2], {"snapshot": SNAPS[1]})
        dedup.run(spark, ctx(recipe, lake, {"snapshot": SNAPS[1]}))
    state = IndexState.of(a.require(index.dataset, INDEX_PARTITION))
    assert state.covered[f"snapshot={SNAPS[1]}"] == a.require("web.minhash", {"snapshot": SNAPS[1]}).digest
    for lake, recipe in ((a, indexed), (b, reference)):
        dedup.run(spark, ctx(recipe, lake, {"snapshot": SNAPS[-1]}))
    assert outputs(a, SNAPS[-1]) == outputs(b, SNAPS[-1])
