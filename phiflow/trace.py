"""`phiflow trace DOC_ID`: follow a document back through every stage to its origin.

It finds the rows carrying the id in every committed dataset (pushing the filter into the Parquet
scan), reports for each the partition, the manifest and the Airflow run that wrote it, then
follows `parent_ids` of derived rows until it reaches organic rows (a WARC record, a wiki revision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as pads

from phiflow.manifest import Manifest
from phiflow.storage import Lake

ORIGIN_FIELDS = ("url", "warc_record_id", "warc_offset", "fetch_time", "page_id", "revision_id", "title")


@dataclass
class Hit:
    manifest: Manifest
    row: dict[str, Any]


def find(lake: Lake, doc_id: str) -> list[Hit]:
    hits = []
    for dataset in lake.datasets():
        for m in lake.partitions(dataset):
            base = lake.partition_path(m.dataset, m.partition)
            # Token partitions hold Megatron .bin/.idx shards beside their doc-id sidecars (Parquet)
            tables = [f"{base}/{f.path}" for f in m.files if f.path.endswith(".parquet")]
            if not tables or "doc_id" not in {f["name"] for f in m.schema}:
                continue
            ds = pads.dataset(tables, filesystem=lake.fs, format="parquet")
            cols = [c for c in ("doc_id", "source", "source_uri", "parent_ids", *ORIGIN_FIELDS) if c in ds.schema.names]
            for row in ds.to_table(columns=cols, filter=pc.field("doc_id") == doc_id).to_pylist():
                hits.append(Hit(m, row))
    return hits


def trace(lake: Lake, doc_id: str, depth: int = 0, seen: set[str] | None = None) -> list[str]:
    """Human-readable lines, indented by derivation depth."""
    seen = seen if seen is not None else set()
    if doc_id in seen:
        return []
    seen.add(doc_id)
    pad = "  " * depth
    hits = find(lake, doc_id)
    if not hits:
        return [f"{pad}{doc_id}: not found in any committed partition of {lake.url}"]
    lines = [f"{pad}{doc_id}"]
    parents: list[str] = []
    for h in sorted(hits, key=lambda h: h.manifest.timings.get("finished", "")):
        m, af = h.manifest, h.manifest.airflow
        lines.append(
            f"{pad}  {m.dataset}/{m.key}  stage {m.stage}  attempt {m.attempt}  digest {m.digest[:12]}"
            f"  airflow {af.get('dag_id', '-')}/{af.get('run_id', '-')}/{af.get('task_id', '-')}"
        )
        parents.extend(p for p in h.row.get("parent_ids") or [] if p not in parents)
    first = next((h.row for h in hits if h.row.get("source_uri")), hits[0].row)  # sidecars carry the id only
    origin = {k: str(v) for k, v in first.items() if k in ORIGIN_FIELDS and v is not None}
    if not parents:
        lines.append(f"{pad}  origin: {first.get('source', '?')} {first.get('source_uri', '?')}  {origin}")
    for p in parents:
        lines.extend(trace(lake, p, depth + 1, seen))
    return lines
