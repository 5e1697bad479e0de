"""Writers and readers of one test partition, in this process or in spawned ones (the race tests)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from phiflow.manifest import Manifest
from phiflow.schema import describe, fingerprint
from phiflow.storage import CommitError, Lake

PART = {"snapshot": "S1", "part": "00001"}  # two keys (a shard would be `shard=`, phiflow.shards)
SCHEMA = pa.schema([("doc_id", pa.string()), ("n", pa.int64())])


def write_attempt(lake: Lake, rows: list[dict], partition: dict = PART) -> Manifest:
    """Write `rows` into a fresh attempt of `t.ds` and return the manifest a commit would make."""
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


def race_writer(url: str, env: dict[str, str], name: str, rounds: int, barrier: Any, results: Any,
                stagger_s: float) -> None:
    """Each round: wait for the other writers, write an attempt, commit it, report what happened."""
    os.environ.update(env)
    lake = Lake(url)
    rng = random.Random(name)
    for r in range(rounds):
        rows = [{"doc_id": f"{name}-{r}-{i:03d}", "n": r} for i in range(40 + rng.randrange(40))]
        barrier.wait()
        time.sleep(rng.uniform(0, stagger_s))
        m = write_attempt(lake, rows)
        try:
            lake.commit(m)
        except CommitError as e:
            results.put(("failed", name, r, m.attempt, str(e)))
        else:
            results.put(("committed", name, r, m.attempt, m.generation))
    results.put(("done", name))


def race_reader(url: str, env: dict[str, str], stop: Any, results: Any) -> None:
    """Read the partition over and over: count whole reads, failed reads and torn ones."""
    os.environ.update(env)
    lake = Lake(url)
    whole = failed = torn = 0
    errors: list[str] = []
    while not stop.is_set():
        m = lake.manifest("t.ds", PART)
        if m is None:
            continue
        try:
            ids = lake.read_table(m, columns=["doc_id"]).column("doc_id").to_pylist()
        except (FileNotFoundError, OSError) as e:
            failed += 1
            errors.append(f"{type(e).__name__}: {e}")
            continue
        writers = {i.rsplit("-", 1)[0] for i in ids}  # "<writer>-<round>": one attempt's rows only
        if len(ids) != m.row_count or len(writers) != 1:
            torn += 1
        else:
            whole += 1
    results.put(("reader", whole, failed, torn, errors[:5]))
