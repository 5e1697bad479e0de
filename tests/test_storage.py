"""The storage contract without Spark: commit point, invisibility of attempts, whole replacement."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phiflow.manifest import MANIFEST_NAME, Manifest
from phiflow.schema import describe, fingerprint
from phiflow.storage import Lake, parse_partition

PART = {"snapshot": "S1", "shard": "00001"}
SCHEMA = pa.schema([("doc_id", pa.string()), ("n", pa.int64())])


def write_attempt(lake: Lake, rows: list[dict], partition: dict = PART) -> Manifest:
    attempt = lake.new_attempt("t.ds", partition)
    path = lake.attempt_path("t.ds", partition, attempt)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), f"{path}/part-00000.parquet", filesystem=lake.fs)
    files = lake.attempt_files("t.ds", partition, attempt)
    return Manifest(
        dataset="t.ds",
        partition=dict(partition),
        stage="test",
        attempt=attempt,
        files=files,
        row_count=len(rows),
        bytes=sum(f.bytes for f in files),
        schema=describe(SCHEMA),
        schema_fingerprint=fingerprint(SCHEMA),
        content_digest=str(sorted(r["doc_id"] for r in rows)),
    )


def rows(lake: Lake) -> list[dict]:
    m = lake.manifest("t.ds", PART)
    return [] if m is None else sorted(lake.read_table(m).to_pylist(), key=lambda r: r["doc_id"])


def test_attempt_is_invisible_until_commit(lake: Lake) -> None:
    m = write_attempt(lake, [{"doc_id": "a", "n": 1}])
    assert lake.manifest("t.ds", PART) is None
    assert list(lake.partitions("t.ds")) == []
    lake.commit(m)
    assert rows(lake) == [{"doc_id": "a", "n": 1}]
    assert [p.key for p in lake.partitions("t.ds")] == ["snapshot=S1/shard=00001"]


def test_rerun_replaces_whole_and_collects_old_attempts(lake: Lake) -> None:
    first = lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}, {"doc_id": "b", "n": 2}]))
    second = lake.commit(write_attempt(lake, [{"doc_id": "c", "n": 3}]))
    assert rows(lake) == [{"doc_id": "c", "n": 3}]  # replaced, not appended
    attempts = lake.fs.ls(f"{lake.partition_path('t.ds', PART)}/_attempts", detail=False)
    assert [a.rsplit("/", 1)[-1] for a in attempts] == [second.attempt]
    assert first.digest != second.digest


def test_crash_before_commit_loses_nothing_committed(lake: Lake) -> None:
    lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}]))
    write_attempt(lake, [{"doc_id": "zzz", "n": 9}])  # written, then the writer dies: no manifest
    assert rows(lake) == [{"doc_id": "a", "n": 1}]
    lake.commit(write_attempt(lake, [{"doc_id": "b", "n": 2}]))  # the rerun completes and cleans up
    assert rows(lake) == [{"doc_id": "b", "n": 2}]
    assert len(lake.fs.ls(f"{lake.partition_path('t.ds', PART)}/_attempts", detail=False)) == 1


def test_digest_is_stable_and_detects_tampering(lake: Lake) -> None:
    m = lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}]))
    again = write_attempt(lake, [{"doc_id": "a", "n": 1}])
    assert again.digest == m.digest  # attempt, timings and Airflow run are not part of the digest
    path = f"{lake.partition_path('t.ds', PART)}/{MANIFEST_NAME}"
    body = json.loads(lake.fs.cat_file(path))
    body["row_count"] = 999
    lake.fs.pipe_file(path, json.dumps(body).encode())
    with pytest.raises(ValueError, match="does not match its digest"):
        lake.manifest("t.ds", PART)


def test_lake_root_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PHIFLOW_LAKE", f"file://{tmp_path}/elsewhere")
    lake = Lake()
    assert lake.root == f"{tmp_path}/elsewhere"
    assert lake.uri(lake.dataset_path("x.y")).startswith("file://")
    monkeypatch.setenv("PHIFLOW_LAKE", "memory://bucket/lake")
    mem = Lake()
    mem.commit(write_attempt(mem, [{"doc_id": "m", "n": 1}]))
    assert mem.require("t.ds", PART).row_count == 1


def test_parse_partition() -> None:
    assert parse_partition("snapshot=S1/shard=00001") == PART
    with pytest.raises(ValueError, match="expected key=value"):
        parse_partition("snapshot")
