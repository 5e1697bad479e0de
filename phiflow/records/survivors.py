"""The dedup stage's decisions in one process: each document's exact group, its cluster and the
cluster's survivor, for a partition whose documents fit in the driver (`local_graph_max_docs`).

The same rules as the Spark plan of spark_jobs/dedup.py (a window over the content hash, the candidate
graph, a window over each cluster), so the same decisions (tested by committing a partition both ways);
at laptop and shard sizes the Spark plan's shuffles and jobs cost more than the whole computation here.

- Nodes are ordered by origin (earlier snapshots first), the recipe's survivor rule (nulls last, NaN
  above every number as Spark orders it), then doc_id.
- Exact: the first node of each content hash represents it.
- Fuzzy: the representatives' verified candidate graph (phiflow.records.lsh_graph) joins their groups.
- A group's cluster_id is its smallest doc_id; its survivor is its first node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from phiflow.records import lsh_graph

DECISIONS = pa.schema(
    [
        pa.field("doc_id", pa.string()),
        pa.field("cluster_id", pa.string()),
        pa.field("survivor_id", pa.string()),
        pa.field("survivor_partition", pa.string()),
        pa.field("kind", pa.string()),  # exact | fuzzy: how the survivor relates to the document
        pa.field("earlier", pa.bool_()),  # the survivor is a document of an earlier snapshot
        pa.field("cluster_head", pa.bool_()),  # one row per cluster that merges documents of this partition
    ]
)


@dataclass(frozen=True)
class Decisions:
    rows: pa.Table  # DECISIONS, one row per node of this partition (origin 0)
    graph: lsh_graph.Graph | None  # the representatives' candidate graph (fuzzy dedup only)


def order_of(nodes: pa.Table, rule: Sequence[tuple[str, str]]) -> np.ndarray:
    """Each node's position in the survivor order: origin, the rule's (column, "asc" | "desc") terms with
    nulls last, doc_id. A float column sorts as Spark sorts it: NaN above every number."""
    keys: dict[str, pa.Array] = {"origin": nodes.column("origin")}
    sort = [("origin", "ascending")]
    for i, (name, direction) in enumerate(rule):
        col = nodes.column(name).combine_chunks()
        way = "descending" if direction == "desc" else "ascending"
        if pa.types.is_floating(col.type):  # Arrow puts NaN beside the nulls; Spark, above every number
            nan = pc.is_nan(col)
            keys[f"nan{i}"], keys[f"v{i}"] = nan, pc.if_else(nan, pa.scalar(None, col.type), col)
            sort += [(f"nan{i}", way), (f"v{i}", way)]
        else:
            keys[f"v{i}"] = col
            sort.append((f"v{i}", way))
    keys["doc_id"] = nodes.column("doc_id")
    sort.append(("doc_id", "ascending"))
    order = pc.sort_indices(pa.table(keys), sort_keys=sort).to_numpy()  # nulls last: Arrow's default
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _first(labels: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Per label (0 .. size-1), the smallest value."""
    out = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(out, labels, values)
    return out


def decide(
    nodes: pa.Table,
    rule: Sequence[tuple[str, str]],
    *,
    exact: bool,
    fuzzy: bool,
    threshold: float,
    recheck_max_bucket: int,
) -> Decisions:
    """Decisions for `nodes` (doc_id, content_hash, origin, origin_partition, the rule's columns, bands,
    signature; earlier snapshots' nodes have origin < 0)."""
    n = nodes.num_rows
    if n == 0:
        return Decisions(DECISIONS.empty_table(), lsh_graph.Graph(0, 0, []) if fuzzy else None)
    rank = order_of(nodes, rule)
    by_rank = np.argsort(rank)
    ids = np.asarray(nodes.column("doc_id").to_pylist(), dtype=object)
    by_id = np.argsort(ids, kind="stable")  # code point order: Spark's string order
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[by_id] = np.arange(n)
    hashes = nodes.column("content_hash").combine_chunks()
    hashed = hashes.is_valid().to_numpy(zero_copy_only=False)
    # documents without a hash are one group, as in a Spark window over the hash
    hash_of = pc.dictionary_encode(pc.fill_null(hashes, "")).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    rep = by_rank[_first(hash_of, rank, int(hash_of.max()) + 1)[hash_of]] if exact else np.arange(n)
    group, graph = rep, None
    if fuzzy:
        is_rep = np.flatnonzero(rep == np.arange(n))
        graph = lsh_graph.from_arrow(nodes.select(["doc_id", "bands", "signature"]).take(is_rep), threshold,
                                     recheck_max_bucket)
        if graph.roots:
            position = {d: i for i, d in enumerate(ids)}
            root_of = np.arange(n)
            for node, root in graph.roots:
                root_of[position[node]] = position[root]
            group = root_of[rep]
    # group labels are node positions; per group: its smallest doc_id and its first node
    cluster = by_id[_first(group, id_rank, n)[group]]
    survivor = by_rank[_first(group, rank, n)[group]]
    here = np.flatnonzero(nodes.column("origin").to_numpy(zero_copy_only=False) == 0)
    merged = here[survivor[here] != here]
    head = np.zeros(n, dtype=bool)
    if len(merged):
        head[by_id[_first(group[merged], id_rank[merged], n)[np.unique(group[merged])]]] = True
    origin = nodes.column("origin").to_numpy(zero_copy_only=False)
    partition = np.asarray(nodes.column("origin_partition").to_pylist(), dtype=object)
    s = survivor[here]
    rows = pa.table(
        [
            pa.array(ids[here], pa.string()),
            pa.array(ids[cluster[here]], pa.string()),
            pa.array(ids[s], pa.string()),
            pa.array(partition[s], pa.string()),
            pa.array(np.where((hash_of[s] == hash_of[here]) & hashed[s] & hashed[here], "exact", "fuzzy"), pa.string()),
            pa.array(origin[s] < 0),
            pa.array(head[here]),
        ],
        schema=DECISIONS,
    )
    return Decisions(rows, graph)
