"""Writers racing to commit one partition, in real processes, on a local lake and on S3 (moto).

What must hold under any interleaving: every commit a writer reports is a committed state (it has
its own generation, and its files stay readable through the grace period); no committed manifest
names a missing file; a concurrent reader only ever sees one whole attempt, never a missing file."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
from lake_writers import PART, race_reader, race_writer
from prod_services import MotoS3

from phiflow.storage import Lake

WRITERS = 3


def race(url: str, env: dict[str, str], rounds: int, stagger_s: float) -> tuple[list[tuple], tuple]:
    ctx = mp.get_context("spawn")  # no fork of a process holding s3fs's event-loop thread
    barrier, results, stop = ctx.Barrier(WRITERS), ctx.Queue(), ctx.Event()
    writers = [ctx.Process(target=race_writer, args=(url, env, f"w{i}", rounds, barrier, results, stagger_s))
               for i in range(WRITERS)]
    reader = ctx.Process(target=race_reader, args=(url, env, stop, results))
    for p in [*writers, reader]:
        p.start()
    events, done = [], 0
    while done < WRITERS:
        event = results.get(timeout=600)
        done += event[0] == "done"
        events.append(event)
    stop.set()
    read = results.get(timeout=120)
    for p in [*writers, reader]:
        p.join(60)
        assert p.exitcode == 0
    return events, read


def check(lake: Lake, events: list[tuple], read: tuple, rounds: int) -> None:
    committed = [e for e in events if e[0] == "committed"]
    assert not [e for e in events if e[0] == "failed"]  # losers retried on top of the winner
    assert len(committed) == WRITERS * rounds
    # Each reported success was the head once: generations 1..N, each exactly once.
    assert sorted(e[4] for e in committed) == list(range(1, WRITERS * rounds + 1))
    head = lake.require("t.ds", PART)
    assert head.generation == WRITERS * rounds and head.attempt == max(committed, key=lambda e: e[4])[3]
    assert lake.missing_files(head) == []
    # ... and each one is still readable whole (superseded ones are kept for the grace period).
    base = lake.partition_path("t.ds", PART)
    for _, name, r, attempt, _gen in committed:
        files = lake.attempt_files("t.ds", PART, attempt)
        assert files, f"{name} round {r}: committed attempt {attempt} has no files left"
        ids = lake.read_table(head.__class__(**{**head.__dict__, "attempt": attempt, "files": files}),
                              columns=["doc_id"]).column("doc_id").to_pylist()
        assert ids and all(i.startswith(f"{name}-{r}-") for i in ids)
        assert lake.fs.exists(f"{base}/_attempts/{attempt}/_SUPERSEDED") == (attempt != head.attempt)
    _, whole, failed, torn, errors = read
    assert failed == 0 and torn == 0, errors
    assert whole > 0


@pytest.mark.parametrize("stagger_s", [0.0, 0.05], ids=["same-moment", "staggered"])
def test_racing_commits_on_a_local_lake(tmp_path, stagger_s: float) -> None:
    url = str(tmp_path / "lake")
    rounds = 20
    events, read = race(url, {}, rounds, stagger_s)
    check(Lake(url), events, read, rounds)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.mark.parametrize("stagger_s", [0.0, 0.05], ids=["same-moment", "staggered"])
def test_racing_commits_on_s3(s3: MotoS3, monkeypatch, stagger_s: float) -> None:
    import s3fs

    env = s3.client_env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"race-{os.getpid()}-{int(stagger_s * 100)}"
    url = f"s3://{bucket}/lake"
    lake = Lake(url)
    lake.fs.mkdir(bucket)
    rounds = 12
    events, read = race(url, env, rounds, stagger_s)
    check(Lake(url), events, read, rounds)


def test_a_stale_conditional_write_loses_on_s3(s3: MotoS3, monkeypatch) -> None:
    """The S3 swap itself: If-Match on an old ETag and If-None-Match on an existing object both fail."""
    import s3fs

    for k, v in s3.client_env().items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    lake = Lake(f"s3://cas-{os.getpid()}/lake")
    lake.fs.mkdir(f"cas-{os.getpid()}")
    target = f"{lake.root}/x/_MANIFEST.json"
    assert lake._swap(target, b'{"generation": 1}', None)
    _, _, token = lake._current_head(target)
    assert not lake._swap(target, b'{"generation": 1}', None)  # someone committed first
    assert lake._swap(target, b'{"generation": 2}', token)
    assert not lake._swap(target, b'{"generation": 2}', token)  # the ETag moved on
    assert lake._current_head(target)[0] == 2
