"""The storage contract without Spark: commit point, invisibility of attempts, whole replacement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lake_writers import PART, write_attempt

from phiflow.manifest import MANIFEST_NAME
from phiflow.storage import _LEASES, CommitError, Lake, parse_partition


def rows(lake: Lake) -> list[dict]:
    m = lake.manifest("t.ds", PART)
    return [] if m is None else sorted(lake.read_table(m).to_pylist(), key=lambda r: r["doc_id"])


def test_attempt_is_invisible_until_commit(lake: Lake) -> None:
    m = write_attempt(lake, [{"doc_id": "a", "n": 1}])
    assert lake.manifest("t.ds", PART) is None
    assert list(lake.partitions("t.ds")) == []
    lake.commit(m)
    assert rows(lake) == [{"doc_id": "a", "n": 1}]
    assert [p.key for p in lake.partitions("t.ds")] == ["snapshot=S1/part=00001"]


def attempts_on_disk(lake: Lake) -> set[str]:
    return {a.rsplit("/", 1)[-1] for a in lake.fs.ls(f"{lake.partition_path('t.ds', PART)}/_attempts", detail=False)}


def backdate(lake: Lake, attempt: str, seconds: float) -> None:
    """Make an attempt look untouched for `seconds` (its writer died that long ago)."""
    for path in lake.fs.find(lake.attempt_path("t.ds", PART, attempt), withdirs=True):
        st = os.stat(path)
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def test_rerun_replaces_whole_and_keeps_the_superseded_attempt_for_readers(lake: Lake) -> None:
    first = lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}, {"doc_id": "b", "n": 2}]))
    second = lake.commit(write_attempt(lake, [{"doc_id": "c", "n": 3}]))
    assert rows(lake) == [{"doc_id": "c", "n": 3}]  # replaced, not appended
    assert (first.generation, second.generation) == (1, 2) and first.digest != second.digest
    # A reader that read the first manifest just before the rerun still reads it whole.
    assert attempts_on_disk(lake) == {first.attempt, second.attempt}
    assert lake.read_table(first).num_rows == 2
    assert lake.fs.exists(f"{lake.attempt_path('t.ds', PART, first.attempt)}/_SUPERSEDED")
    assert lake.collect_garbage("t.ds", PART) == []  # within the grace period
    gone = lake.collect_garbage("t.ds", PART, grace_s=0)
    assert gone == [lake.attempt_path("t.ds", PART, first.attempt)] and attempts_on_disk(lake) == {second.attempt}
    # The committed attempt is never collected, however old.
    backdate(lake, second.attempt, 10 * 86400)
    assert lake.collect_garbage("t.ds", PART, ttl_s=0, grace_s=0) == [] and rows(lake) == [{"doc_id": "c", "n": 3}]


def test_crash_before_commit_loses_nothing_committed(lake: Lake, tmp_path) -> None:
    lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}]))
    # A writer process writes an attempt, then dies before its commit.
    script = ("import sys; sys.path.insert(0, sys.argv[2]); from phiflow.storage import Lake; "
              "from lake_writers import write_attempt; "
              "print(write_attempt(Lake(sys.argv[1]), [{'doc_id': 'zzz', 'n': 9}]).attempt)")
    crashed = subprocess.run([sys.executable, "-c", script, lake.url, str(Path(__file__).parent)],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert rows(lake) == [{"doc_id": "a", "n": 1}]
    live = write_attempt(lake, [{"doc_id": "live", "n": 5}])  # a writer still at work (this process)
    backdate(lake, crashed, 600)  # its writer died ten minutes ago: the lease is stale
    rerun = lake.commit(write_attempt(lake, [{"doc_id": "b", "n": 2}]))  # the rerun completes and cleans up
    assert rows(lake) == [{"doc_id": "b", "n": 2}]
    on_disk = attempts_on_disk(lake)
    assert crashed not in on_disk and {live.attempt, rerun.attempt} <= on_disk


def test_a_live_writers_lease_keeps_its_attempt(lake: Lake, monkeypatch) -> None:
    monkeypatch.setenv("PHIFLOW_ATTEMPT_TTL_S", "0.4")  # renewed every 0.1 s
    live = write_attempt(lake, [{"doc_id": "slow", "n": 1}])
    backdate(lake, live.attempt, 3600)  # its data were written long ago; the writer is still alive
    time.sleep(0.6)
    assert lake.collect_garbage("t.ds", PART) == []
    assert lake.commit(live).generation == 1 and rows(lake) == [{"doc_id": "slow", "n": 1}]


def test_commit_refuses_an_attempt_whose_files_are_gone(lake: Lake) -> None:
    first = lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}]))
    broken = write_attempt(lake, [{"doc_id": "b", "n": 2}])
    lake.fs.rm(f"{lake.partition_path('t.ds', PART)}/{broken.files[0].path}")
    with pytest.raises(CommitError, match="lacks 1 of its files"):
        lake.commit(broken)
    assert lake.require("t.ds", PART).attempt == first.attempt and rows(lake) == [{"doc_id": "a", "n": 1}]


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
    assert parse_partition("snapshot=S1/part=00001") == PART
    with pytest.raises(ValueError, match="expected key=value"):
        parse_partition("snapshot")


def commit_two_datasets(lake: Lake) -> None:
    lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}]))
    other = write_attempt(lake, [{"doc_id": "x", "n": 1}, {"doc_id": "y", "n": 2}], {"snapshot": "S2", "part": "1"})
    lake.commit(other)


def phiflow(lake: Lake, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phiflow.cli", "--lake", lake.url, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b'{"dataset": "t.ds"}'], ids=["syntax", "list", "fields"])
def test_status_reports_a_corrupt_manifest_and_goes_on(lake: Lake, damage: bytes) -> None:
    commit_two_datasets(lake)
    lake.fs.pipe_file(f"{lake.partition_path('t.ds', PART)}/{MANIFEST_NAME}", damage)
    out = phiflow(lake, "status")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    broken, healthy = out.stdout.splitlines()
    assert broken.startswith("t.ds") and "snapshot=S1/part=00001" in broken and "CORRUPT: " in broken
    assert healthy.split()[:4] == ["t.ds", "snapshot=S2/part=1", "2", "rows"] and healthy.split()[5] == "ok"
    with pytest.raises(ValueError, match="corrupt manifest"):
        list(lake.partitions("t.ds"))  # a stage reading it fails loudly instead of skipping data
    summary = phiflow(lake, "summary")
    assert summary.returncode == 0 and "skipped: t.ds/snapshot=S1/part=00001: corrupt manifest" in summary.stderr


def test_verify_finds_deleted_truncated_and_damaged_files(lake: Lake) -> None:
    commit_two_datasets(lake)
    assert phiflow(lake, "verify", "--deep").returncode == 0
    m = lake.require("t.ds", PART)
    data = f"{lake.partition_path('t.ds', PART)}/{m.files[0].path}"
    content = lake.fs.cat_file(data)
    lake.fs.rm(data)
    out = phiflow(lake, "verify")
    assert out.returncode == 1
    assert f"BROKEN: {m.files[0].path}: missing" in out.stdout
    assert out.stdout.splitlines()[-1] == "verified 2 partitions of 1 datasets: 1 broken"
    lake.fs.pipe_file(data, content[:-10])  # truncated
    assert f"{len(content) - 10} bytes, manifest says {len(content)}" in phiflow(lake, "verify").stdout
    lake.fs.pipe_file(data, content[:8] + b"\0" * (len(content) - 16) + content[-8:])  # same size, damaged
    assert phiflow(lake, "verify").returncode == 0  # sizes alone cannot see it ...
    deep = phiflow(lake, "verify", "--deep", "t.ds")
    assert deep.returncode == 1 and "unreadable parquet" in deep.stdout  # ... the footers can
    assert phiflow(lake, "verify", "no.such").returncode == 2


def test_gc_sweeps_partitions_no_commit_will_visit_again(lake: Lake, tmp_path) -> None:
    """A crashed first attempt leaves a partition with no manifest: no later commit collects it, the
    lake-wide `phiflow gc` does (once the lease expired); live and committed attempts stay."""
    lost = write_attempt(lake, [{"doc_id": "x", "n": 1}], {"snapshot": "S9", "shard": "1"})
    committed = lake.commit(write_attempt(lake, [{"doc_id": "a", "n": 1}]))
    live = write_attempt(lake, [{"doc_id": "live", "n": 2}])  # this process is still writing it
    lost_dir = lake.attempt_path("t.ds", {"snapshot": "S9", "shard": "1"}, lost.attempt)
    _LEASES.release(lost_dir)  # its writer died long ago: no more renewals, nothing touched since
    for path in lake.fs.find(lost_dir, withdirs=True):
        os.utime(path, (1, 1))
    assert {p["snapshot"] for p in lake.partitions_with_attempts("t.ds")} == {"S1", "S9"}
    dry = phiflow(lake, "gc", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.splitlines()[-1] == "would delete 1 attempt folders"
    assert lake.fs.exists(lost_dir)
    out = phiflow(lake, "gc", "t.ds")
    assert out.returncode == 0 and lost.attempt in out.stdout
    assert out.stdout.splitlines()[-1] == "deleted 1 attempt folders" and not lake.fs.exists(lost_dir)
    assert attempts_on_disk(lake) == {committed.attempt, live.attempt}
    assert phiflow(lake, "gc", "no.such").returncode == 2
