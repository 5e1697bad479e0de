"""Readable summaries of what the lake holds, built only from manifests (cheap at any scale)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from phiflow import shards, stages
from phiflow.manifest import Manifest, partition_key
from phiflow.recipe import Recipe
from phiflow.storage import Lake, PartitionEntry, parse_partition


def stage_table(manifests: Iterable[Manifest]) -> str:
    """Per dataset: partitions, rows in, rows out, drops by reason, seconds."""
    by_dataset: dict[str, list[Manifest]] = {}
    for m in manifests:
        by_dataset.setdefault(m.dataset, []).append(m)
    rows = []
    for dataset, ms in by_dataset.items():
        dropped: Counter[str] = Counter()
        for m in ms:
            dropped.update(m.counters.get("dropped", {}))
        rows.append((dataset, ms[0].stage, len(ms), sum(int(m.counters.get("read") or 0) for m in ms),
                     sum(m.row_count for m in ms), sum(float(m.timings.get("seconds") or 0) for m in ms),
                     ", ".join(f"{r} {n}" for r, n in dropped.most_common()) or "-"))
    dw = max([len("dataset"), *(len(r[0]) for r in rows)])  # columns as wide as the longest name: aligned
    sw = max([len("stage"), *(len(r[1]) for r in rows)])
    lines = [f"{'dataset':<{dw}} {'stage':<{sw}} {'parts':>5} {'rows in':>9} {'rows out':>9} {'seconds':>8}  "
             "dropped by reason"]
    lines += [f"{d:<{dw}} {st:<{sw}} {n:>5} {rin:>9} {rout:>9} {secs:>8.1f}  {reasons}"
              for d, st, n, rin, rout, secs, reasons in rows]
    return "\n".join(lines)


def stale_inputs(m: Manifest, current: dict[tuple[str, str], str]) -> list[str]:
    """Inputs of `m` whose committed digest differs from the one `m` was computed from."""
    stale = []
    for i in m.inputs:
        key = (i.dataset, partition_key(i.partition))
        if key in current and current[key] != i.digest:
            stale.append(f"{i.dataset}/{key[1]}")
    return stale


def lake_status(lake: Lake) -> tuple[str, int]:
    """Committed partitions per dataset, flagging stale ones (an input was re-committed differently)
    and corrupt ones (a manifest that does not parse or match its digest); the count of corrupt ones.
    A sharded partition is one line: its roll-up with its shard count, or its progress while shards
    are still missing."""
    entries = [e for d in lake.datasets() for e in lake.entries(d)]
    current = {(e.dataset, e.key): e.manifest.digest for e in entries if e.manifest is not None}
    shard_entries, whole = split_shards(entries)
    out, corrupt = [], 0
    for e in whole:
        m = e.manifest
        if m is None:
            corrupt += 1
            out.append(f"{e.dataset:<24} {e.key:<32} {'?':>9} rows  {'-':<12}  CORRUPT: {e.error}")
            continue
        stale = stale_inputs(m, current)
        flag = f"STALE: {', '.join(stale)} changed" if stale else "ok"
        n = len(shards.shard_ids(m))
        extra = f", {n} shards" if n else ""
        out.append(
            f"{m.dataset:<24} {m.key:<32} {m.row_count:>9} rows  {m.digest[:12]}  {flag}  "
            f"(run {m.airflow.get('run_id', '-')}{extra})"
        )
    for (dataset, key), parts in sorted(shard_entries.items()):
        rollup = current.get((dataset, key))
        ms = [e.manifest for e in parts if e.manifest is not None]
        corrupt += len(parts) - len(ms)
        progress = shards.progress(ms, lake.manifest(dataset, parse_partition(key)) if rollup else None)
        if not progress.complete:
            out.append(f"{dataset:<24} {key:<32} {sum(m.row_count for m in ms):>9} rows  {'-':<12}  "
                       f"IN PROGRESS: {progress.describe()} committed")
        out += [f"{e.dataset:<24} {e.key:<32} {'?':>9} rows  {'-':<12}  CORRUPT: {e.error}"
                for e in parts if e.manifest is None]
    return "\n".join(out) or f"no committed partitions under {lake.url}", corrupt


ShardGroups = dict[tuple[str, str], list[PartitionEntry]]


def split_shards(entries: list[PartitionEntry]) -> tuple[ShardGroups, list[PartitionEntry]]:
    """Shard entries grouped by (dataset, snapshot key), and every other entry."""
    grouped: dict[tuple[str, str], list[PartitionEntry]] = {}
    rest = []
    for e in entries:
        parent, sep, last = e.key.rpartition("/")
        if sep and last.startswith(f"{shards.SHARD}="):
            grouped.setdefault((e.dataset, parent), []).append(e)
        else:
            rest.append(e)
    return grouped, rest


def failed_files(manifests: Iterable[Manifest]) -> str:
    """Every input file a partition's stage could not read to its end, by name: what to retry."""
    lines = []
    for m in manifests:
        for f in (m.counters.get("files") or {}).get("failed_files") or []:
            lines.append(f"  {m.dataset}/{m.key}  {f['reason']:<28} {f['url']}  ({f.get('error') or '-'})")
    return "failed files (" + str(len(lines)) + ")\n" + "\n".join(lines) if lines else "failed files: none"


def pipeline_status(recipe: Recipe, lake: Lake) -> str:
    """Per source, every stage of its chain (the stage table's order) and how many of the source's
    partitions its main output has committed: where a source stands, at a glance."""
    committed = {d: {e.key for e in lake.entries(d) if e.manifest is not None} for d in lake.datasets()}
    lines = [f"pipeline of recipe {recipe.name} (stage table order; committed / declared partitions)"]
    for name, src in recipe.sources.items():
        wanted = {partition_key({src.partition_key: i}) for i, _ in src.dated()}
        lines.append(f"  {name} ({src.kind})")
        for st in stages.curation_chain(recipe, name):
            out = st.io(recipe, name).output
            if st.scope == "global":
                have = len(committed.get(out, ()))
                lines.append(f"    {st.name:<20} {out:<26} {have} partition(s)")
                continue
            done = len(wanted & committed.get(out, set()))
            flag = "done" if done == len(wanted) else f"{len(wanted) - done} to go"
            in_flight = {k: lake.shards(out, parse_partition(k)) for k in sorted(wanted - committed.get(out, set()))}
            partial = [f"{k}: {shards.progress(ms, None).describe()}" for k, ms in in_flight.items() if ms]
            flag += f" ({'; '.join(partial)})" if partial else ""
            lines.append(f"    {st.name:<20} {out:<26} {done}/{len(wanted)}  {flag}")
    return "\n".join(lines)
