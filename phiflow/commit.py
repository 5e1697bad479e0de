"""Commit a partition whose data are files other than a Spark DataFrame's parquet.

Token shards (.bin/.idx), blends (JSON, CSV, PNG) and training runs (metrics, run config) follow the
same storage contract as every stage: written into an attempt folder, listed by `Lake.attempt_files`,
committed by the manifest. The caller supplies what a DataFrame commit computes itself: the row
count and a content digest of what determines the rows (stable across identical reruns).
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

from phiflow.manifest import InputRef, Manifest, sha256_json
from phiflow.schema import describe, fingerprint
from phiflow.storage import Lake
from phiflow.version import code_version


def file_digest(lake: Lake, path: str) -> str:
    """sha256 of one file of the lake (streamed)."""
    h = hashlib.sha256()
    with lake.fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def commit_files(
    lake: Lake,
    *,
    dataset: str,
    partition: dict[str, str],
    attempt: str,
    stage: str,
    schema: Any,  # pyarrow.Schema of the partition's rows (documents, sources, runs)
    row_count: int,
    content: Any,  # JSON-able description of the content; its hash is the content digest
    inputs: list[InputRef],
    recipe_digest: str,
    params: dict[str, Any],
    counters: dict[str, Any],
    airflow: dict[str, Any] | None = None,
    started: float | None = None,
) -> Manifest:
    """Commit every file the attempt folder holds, with the caller's row count and counters."""
    return commit_attempt(
        lake,
        dataset=dataset,
        partition=partition,
        attempt=attempt,
        stage=stage,
        schema=schema,
        row_count=row_count,
        content_digest=f"sha256:{sha256_json(content)}",
        inputs=inputs,
        recipe_digest=recipe_digest,
        params=params,
        counters=counters,
        dropped={},
        airflow=airflow,
        started=started,
    )


def commit_attempt(
    lake: Lake,
    *,
    dataset: str,
    partition: dict[str, str],
    attempt: str,
    stage: str,
    schema: Any,
    row_count: int,
    content_digest: str,
    inputs: list[InputRef],
    recipe_digest: str,
    params: dict[str, Any],
    counters: dict[str, Any],
    dropped: dict[str, int],
    airflow: dict[str, Any] | None = None,
    started: float | None = None,
) -> Manifest:
    """The one manifest builder: every file of the attempt folder, committed with its facts.

    Spark stages (spark_jobs.engine.stage_io.commit_partition) and file-writing stages both end here."""
    files = lake.attempt_files(dataset, partition, attempt)
    if not files:
        raise FileNotFoundError(f"{dataset}: attempt {attempt} wrote no files")
    finished = time.time()
    started = finished if started is None else started
    manifest = Manifest(
        dataset=dataset,
        partition=dict(partition),
        stage=stage,
        attempt=attempt,
        files=files,
        row_count=row_count,
        bytes=sum(f.bytes for f in files),
        schema=describe(schema),
        schema_fingerprint=fingerprint(schema),
        content_digest=content_digest,
        inputs=inputs,
        recipe_digest=recipe_digest,
        params=params,
        code_version=code_version(),
        airflow=dict(airflow or {}),
        timings={
            "started": datetime.fromtimestamp(started, UTC).isoformat(),
            "finished": datetime.fromtimestamp(finished, UTC).isoformat(),
            "seconds": round(finished - started, 2),
        },
        counters={**counters, "kept": row_count, "dropped": dropped},
    )
    return lake.commit(manifest)


def up_to_date(
    lake: Lake, dataset: str, partition: dict[str, str], inputs: list[InputRef], recipe_digest: str
) -> Manifest | None:
    """The committed partition when it was built from exactly these inputs and recipe digest.

    What makes a consumer that sees the same input digests again do nothing.
    """
    m = lake.manifest(dataset, partition)
    if m is None or m.recipe_digest != recipe_digest:
        return None
    key = sorted((i.dataset, sha256_json(i.partition), i.digest) for i in inputs)
    have = sorted((i.dataset, sha256_json(i.partition), i.digest) for i in m.inputs)
    return m if key == have else None
