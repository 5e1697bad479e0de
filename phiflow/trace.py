"""`phiflow trace`: follow a document back through every stage to its origin, along the manifests' lineage.

A document is looked up where it got furthest (the synthetic datasets, then each source's curation
datasets from the last stage back); `--sample DATASET:INDEX` starts from a
training sequence of a token dataset instead, through the doc-id sidecar of its shards. From there the
walk reads only the partitions the manifests name as inputs, one Parquet scan with the id pushed down
per stage: the same document upstream (dedup -> quality -> langid -> extracted), the parents of a
derived row (`parent_ids`: synthetic rows -> their seeds -> the seed's own chain), until a row that no
input holds, whose origin (WARC record, wiki revision, code file, book) it prints. Where a stage
dropped the document, its row in that stage's `<dataset>.rejected` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from phiflow import stages
from phiflow.blend import shard_entries
from phiflow.manifest import InputRef, Manifest, partition_key
from phiflow.storage import Lake

ORIGIN_FIELDS = ("url", "warc_record_id", "warc_offset", "warc_member_offset", "fetch_time", "wiki", "page_id",
                 "revision_id", "title", "repo", "path", "blob_sha", "license", "author", "origin_url")
REJECTED_FIELDS = ("stage", "reason", "page", "excerpt")  # phiflow.schema.REJECTED's own columns
EXCERPT_SHOWN = 120
SIDECAR = ".docs.parquet"  # phiflow/records/indexed_writer.py: a token shard's sequence -> doc_id


class TraceError(ValueError):
    """The start of a trace does not exist (a dataset, partition or sample index)."""


@dataclass
class Hit:
    manifest: Manifest
    row: dict[str, Any]


def find_in(lake: Lake, m: Manifest, doc_id: str, columns: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The row of `doc_id` in one committed partition (its Parquet files only), or None: its origin
    columns and `columns`."""
    if "doc_id" not in {f["name"] for f in m.schema}:
        return None
    base = lake.partition_path(m.dataset, m.partition)
    tables = [f"{base}/{f.path}" for f in m.files if f.path.endswith(".parquet")]
    if not tables:
        return None
    ds = pads.dataset(tables, filesystem=lake.fs, format="parquet")
    wanted = ("doc_id", "source", "source_uri", "parent_ids", *ORIGIN_FIELDS, *columns)
    cols = [c for c in wanted if c in ds.schema.names]
    rows = ds.to_table(columns=cols, filter=pc.field("doc_id") == doc_id).to_pylist()
    return rows[0] if rows else None


def locate(lake: Lake, doc_id: str) -> list[Hit]:
    """Where the document got furthest: the synthetic datasets, then each source's curation datasets
    from the last stage to the first (a dropped document is found where it was last kept), then any
    other dataset with a doc_id column."""
    datasets = [d for d in lake.datasets() if not stages.is_rejected(d)]
    groups = [[d for d in datasets if d.startswith("synthetic.") and d != "synthetic.seeds"]]
    groups += [[d for d in datasets if d.rsplit(".", 1)[-1] == suffix and not d.startswith("tokens.")]
               for suffix in reversed(stages.funnel_suffixes())]
    placed = {d for g in groups for d in g}
    groups.append([d for d in datasets if d not in placed and not d.startswith("tokens.")])
    for group in groups:
        hits = [Hit(m, row) for d in group for m in lake.partitions(d) if (row := find_in(lake, m, doc_id))]
        if hits:
            return hits
    return []


def rejections(lake: Lake, doc_id: str) -> list[Hit]:
    """Where stages dropped the document: its rows in the `<dataset>.rejected` side datasets (only the
    share of dropped rows the recipe's `rejected` keeps is there)."""
    return [Hit(m, row) for d in lake.datasets() if stages.is_rejected(d) for m in lake.partitions(d)
            if (row := find_in(lake, m, doc_id, REJECTED_FIELDS))]


def _dropped(pad: str, hit: Hit) -> list[str]:
    row, m = hit.row, hit.manifest
    where = row.get("url") or row.get("page") or ""
    excerpt = " ".join((row.get("excerpt") or "").split())[:EXCERPT_SHOWN]
    return [f"{pad}  dropped by {row['stage']}: {row['reason']}  ({m.dataset}/{m.key}, attempt {m.attempt})",
            f"{pad}    {where}  \"{excerpt}\"" if where or excerpt else f"{pad}    (no url, page or text)"]


def sample_doc(lake: Lake, spec: str) -> tuple[Manifest, str]:
    """`tokens.web.clean[/snapshot=...]:INDEX`: the token partition and the doc_id of its INDEX-th
    training sequence (the partition's shards in order, as the blend reads them)."""
    target, _, index = spec.rpartition(":")
    if not target or not index.isdigit():
        raise TraceError(f"--sample wants DATASET[/PARTITION]:INDEX, got {spec!r}")
    dataset, _, key = target.partition("/")
    parts = [m for m in lake.partitions(dataset) if not key or m.key == key]
    if len(parts) != 1:
        found = [m.key for m in lake.partitions(dataset)]
        raise TraceError(f"{target}: {'no such partition' if not parts else 'name one partition'}; "
                         f"committed: {found or 'none'}")
    m = parts[0]
    want = int(index)
    for prefix, _tokens, documents in shard_entries(lake, m, "part"):  # the shards the pretraining blend reads
        if want < documents:
            with lake.fs.open(prefix + SIDECAR, "rb") as fh:
                return m, pq.read_table(fh, columns=["doc_id"]).column("doc_id")[want].as_py()
        want -= documents
    raise TraceError(f"{target} holds {int(index) - want} sequences; index {index} is past its end")


def _inputs(lake: Lake, m: Manifest) -> list[Manifest]:
    out = []
    for ref in m.inputs:
        if ref.dataset.startswith("external:"):
            continue
        found = lake.manifest(ref.dataset, ref.partition)
        if found is not None:
            out.append(found)
    return out


def _chain(lake: Lake, hit: Hit) -> list[Hit]:
    """The same document upstream, from `hit` back to the first stage that has it."""
    chain = [hit]
    while True:
        up = next(((m, row) for m in _inputs(lake, chain[-1].manifest)
                   if (row := find_in(lake, m, str(hit.row["doc_id"])))), None)
        if up is None:
            return chain
        chain.append(Hit(*up))


def _parents(lake: Lake, hit: Hit) -> list[Hit]:
    """The rows a derived row names in `parent_ids`, in the partitions its manifest read."""
    out = []
    for pid in hit.row.get("parent_ids") or []:
        for m in _inputs(lake, hit.manifest):
            if (row := find_in(lake, m, str(pid))) is not None:
                out.append(Hit(m, row))
                break
        else:
            out.append(Hit(hit.manifest, {"doc_id": pid, "missing": True}))
    return out


def _line(pad: str, m: Manifest) -> str:
    af = m.airflow
    return (f"{pad}  {m.dataset}/{m.key}  stage {m.stage}  attempt {m.attempt}  digest {m.digest[:12]}"
            f"  airflow {af.get('dag_id', '-')}/{af.get('run_id', '-')}/{af.get('task_id', '-')}")


def walk(lake: Lake, hit: Hit, depth: int = 0, seen: set[str] | None = None) -> list[str]:
    """Human-readable lines: each document's stages from its origin down, its parents indented."""
    seen = seen if seen is not None else set()
    doc_id = str(hit.row["doc_id"])
    pad = "  " * depth
    if hit.row.get("missing"):
        return [f"{pad}{doc_id}: a parent not found in {hit.manifest.dataset}'s inputs"]
    if doc_id in seen:
        return [f"{pad}{doc_id}: (above)"]
    seen.add(doc_id)
    chain = _chain(lake, hit)
    lines = [f"{pad}{doc_id}", *(_line(pad, h.manifest) for h in reversed(chain))]
    first = chain[-1]
    parents = _parents(lake, first)
    if not parents:
        row = first.row
        origin = {k: str(v) for k, v in row.items() if k in ORIGIN_FIELDS and v is not None}
        lines.append(f"{pad}  origin: {row.get('source', '?')} {row.get('source_uri', '?')}  {origin}"
                     + _external(first.manifest))
    for p in parents:
        lines.extend(walk(lake, p, depth + 1, seen))
    return lines


def _external(m: Manifest) -> str:
    refs: list[InputRef] = [r for r in m.inputs if r.dataset.startswith("external:")]
    return "".join(f"\n    read from {r.dataset}/{partition_key(r.partition)}" for r in refs[:3])


def trace(lake: Lake, doc_id: str) -> list[str]:
    """The document's stages from its origin down; where a stage dropped it, why (when the recipe
    kept that dropped row). A document dropped before any stage kept it is walked from its rejected row."""
    hits, gone = locate(lake, doc_id), rejections(lake, doc_id)
    if not hits and not gone:
        return [f"{doc_id}: not found in any committed partition of {lake.url}"]
    seen: set[str] = set()
    lines = [line for h in hits or gone[:1] for line in walk(lake, h, 0, seen)]
    return lines + [line for g in gone for line in _dropped("", g)]


def trace_sample(lake: Lake, spec: str) -> list[str]:
    m, doc_id = sample_doc(lake, spec)
    lines = [f"{spec}: sequence of document {doc_id} in {m.dataset}/{m.key} (attempt {m.attempt})"]
    hits = [Hit(i, row) for i in _inputs(lake, m) if (row := find_in(lake, i, doc_id))]
    if not hits:
        return [*lines, f"{doc_id}: not found in the inputs of {m.dataset}/{m.key}"]
    seen: set[str] = set()
    return lines + [line for h in hits for line in walk(lake, h, 0, seen)]
