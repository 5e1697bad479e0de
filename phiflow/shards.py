"""Shards: a partition committed in pieces, and the roll-up manifest that makes it whole.

A CommonCrawl snapshot is ~90,000 WARC files. Committing it as one partition means a loss at 95%
redoes 100%, so the per-document stages commit it in shards: `snapshot=…/shard=00000`, each a
partition with its own manifest. When every shard of a stage is committed, the stage commits the
snapshot's *roll-up* manifest at `snapshot=…/_MANIFEST.json`: it names the shards' data files (paths
relative to the snapshot folder), sums their rows and counters, and its content digest is the sum of
theirs (the row hash is a sum over rows, so equal rows give an equal digest however they are sharded).

Readers of a whole snapshot (dedup, decontaminate, annotation) read the roll-up like any partition and
never see a half-committed snapshot: a snapshot exists when its roll-up does. `Lake.partitions` lists
roll-ups and unsharded partitions; `Lake.entries` lists shards too (status, verify).

Core layer: no engine.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from phiflow.manifest import DataFile, InputRef, Manifest, partition_key

SHARD = "shard"  # the partition key of a shard, after the snapshot's own keys
ROLLUP_ATTEMPT = "_shards"  # the `attempt` of a roll-up manifest: its files live in its shards' attempts
SHARD_COUNTER = "shard"  # a shard manifest's counters["shard"] = {"index": i, "of": n}


def shard_id(index: int) -> str:
    """`00042`: fixed width, so shard folders sort in shard order."""
    return f"{index:05d}"


def assign(items: Sequence[str], per_shard: int) -> list[list[str]]:
    """Items (WARC paths, in listing order) cut into consecutive shards of `per_shard`: deterministic,
    so the same listing gives the same shards on every run and a rerun finds its committed shards."""
    if per_shard <= 0:
        raise ValueError(f"shard size must be positive, not {per_shard}")
    return [list(items[i : i + per_shard]) for i in range(0, len(items), per_shard)]


def of_shard(partition: dict[str, str], index: int | str) -> dict[str, str]:
    """The partition of one shard of `partition` (a snapshot)."""
    return {
        **{k: v for k, v in partition.items() if k != SHARD},
        SHARD: index if isinstance(index, str) else shard_id(index),
    }


def parent(partition: dict[str, str]) -> dict[str, str] | None:
    """The snapshot a shard belongs to; None for a partition that is not a shard."""
    if SHARD not in partition:
        return None
    return {k: v for k, v in partition.items() if k != SHARD}


def is_rollup(m: Manifest) -> bool:
    return m.attempt == ROLLUP_ATTEMPT


def shard_ids(m: Manifest) -> list[str]:
    """The shards a roll-up was made of; [] for a partition that is not a roll-up."""
    return list((m.counters.get("shards") or {}).get("ids") or []) if is_rollup(m) else []


def attempts_named(rollup: Manifest, shard: str) -> set[str]:
    """The attempt folders of one shard that a roll-up's files point into (GC must keep them)."""
    prefix = f"{SHARD}={shard}/_attempts/"
    return {f.path[len(prefix) :].split("/", 1)[0] for f in rollup.files if f.path.startswith(prefix)}


@dataclass(frozen=True)
class Progress:
    """How far a sharded partition is: shards committed of how many, and whether its roll-up exists."""

    committed: int
    total: int | None  # None: no shard says how many there are
    complete: bool

    def describe(self) -> str:
        of = "?" if self.total is None else str(self.total)
        return "complete" if self.complete else f"{self.committed}/{of} shards"


def progress(shard_manifests: Iterable[Manifest], rollup: Manifest | None) -> Progress:
    ms = list(shard_manifests)
    totals = {int((m.counters.get(SHARD_COUNTER) or {}).get("of") or 0) for m in ms} - {0}
    total = max(totals) if totals else None
    have = {m.partition.get(SHARD) for m in ms}
    complete = rollup is not None and is_rollup(rollup) and set(shard_ids(rollup)) <= have
    return Progress(len(ms), total, complete)


def merge_counters(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counters of shards summed into the snapshot's: numbers add, dicts merge key by key, lists
    concatenate (failed files), other values are kept when every shard agrees. A shard's own position
    (`counters["shard"]`) is not a counter of the whole."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k == SHARD_COUNTER:
                continue
            out[k] = _merge(out[k], v) if k in out else _copy(v)
    return {k: v for k, v in out.items() if v is not _DISAGREE}


_DISAGREE = object()


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    return list(v) if isinstance(v, list) else v


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool):
        return a if a == b else _DISAGREE
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v) if k in out else _copy(v)
        return {k: v for k, v in out.items() if v is not _DISAGREE}
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    return a if a == b else _DISAGREE


def _xxh_sum(digest: str) -> int:
    kind, _, value = digest.partition(":")
    if kind != "xxh64sum":
        raise ValueError(f"a roll-up sums row-hash digests (xxh64sum:N), not {digest!r}")
    return int(value)


def rollup(
    dataset: str,
    partition: dict[str, str],
    shards: Sequence[Manifest],
    *,
    inputs: list[InputRef],
    recipe_digest: str,
    params: dict[str, Any],
    code_version: str,
    airflow: dict[str, Any],
    timings: dict[str, Any],
) -> Manifest:
    """The roll-up manifest of `partition` from its committed shards (in shard order).

    Every shard must have the same schema and the same recipe digest as the roll-up: a snapshot is
    never stitched together from shards of two recipes."""
    if not shards:
        raise ValueError(f"{dataset}/{partition_key(partition)}: a roll-up needs at least one shard")
    for m in shards:
        if m.schema_fingerprint != shards[0].schema_fingerprint:
            raise ValueError(f"{dataset}/{m.key}: schema differs from shard {shards[0].key}'s")
        if m.recipe_digest != recipe_digest:
            raise ValueError(f"{dataset}/{m.key}: committed under another recipe; rerun it before the roll-up")
    files = [
        DataFile(path=posixpath.join(partition_key({SHARD: m.partition[SHARD]}), f.path), bytes=f.bytes)
        for m in shards
        for f in m.files
    ]
    counters = merge_counters(m.counters for m in shards)
    counters["shards"] = {"total": len(shards), "ids": [m.partition[SHARD] for m in shards]}
    return Manifest(
        dataset=dataset,
        partition=dict(partition),
        stage=shards[0].stage,
        attempt=ROLLUP_ATTEMPT,
        files=files,
        row_count=sum(m.row_count for m in shards),
        bytes=sum(f.bytes for f in files),
        schema=shards[0].schema,
        schema_fingerprint=shards[0].schema_fingerprint,
        content_digest=f"xxh64sum:{sum(_xxh_sum(m.content_digest) for m in shards)}",
        inputs=inputs,
        recipe_digest=recipe_digest,
        params=params,
        code_version=code_version,
        airflow=dict(airflow),
        timings=timings,
        counters=counters,
    )
