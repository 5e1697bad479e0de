"""The dedup stage's candidate graph in one process: LSH buckets -> verified links -> components.

The same graph as the Spark plan of spark_jobs/dedup.py (`candidate_links`, then connected components),
for a partition whose documents' band keys and signatures fit in memory: there the fixed cost of a
dozen Spark jobs (shuffles, checkpoints, star rounds) is most of the stage, and numpy sorts do the
same work in a fraction of it. Same rules, so the same pairs, counters and clusters:

- each LSH bucket (band, key) with more than one member is a star around its smallest doc_id;
- a star link is kept when the signatures agree on at least `threshold` of their positions;
- a member whose link to the root fails is checked against every other member of each bucket it shares
  with that root, in buckets of at most `recheck_max_bucket` members;
- components of the verified links, each node's root being its component's smallest doc_id.

doc_ids compare as strings (code point order, which is the UTF-8 byte order Spark sorts by).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_CHUNK = 65_536  # pairs verified at once (a chunk of two signature blocks: ~64 MB at 128 permutations)


@dataclass(frozen=True)
class Graph:
    candidate_pairs: int  # distinct candidate links (star links and rechecked pairs)
    verified_pairs: int  # of which the signatures agree
    roots: list[tuple[str, str]]  # (node, root) of every node with a verified link


def _pairs(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Unordered pairs of ranks as one sorted, distinct int64 code (smaller * n + larger)."""
    return np.unique(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b))


def agree(signatures: np.ndarray, codes: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Whether each pair's signatures agree on at least `threshold` of their positions."""
    ok = np.empty(len(codes), dtype=bool)
    need = threshold * signatures.shape[1]
    for start in range(0, len(codes), _CHUNK):
        c = codes[start : start + _CHUNK]
        same = signatures[c // n] == signatures[c % n]
        ok[start : start + _CHUNK] = same.sum(axis=1) >= need
    return ok


def _buckets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One band's multi-member buckets as (member, its bucket's root, its bucket's size) per member,
    sorted by (key, rank): a bucket's members are contiguous and its root (smallest rank) comes first.
    Ranks are row positions (the rows are sorted by doc_id)."""
    order = np.lexsort((np.arange(len(keys)), keys))
    k = keys[order]
    new = np.r_[True, k[1:] != k[:-1]]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, len(k)])
    bucket_of = np.cumsum(new) - 1
    multi = sizes[bucket_of] > 1
    return order[multi], order[starts][bucket_of][multi], sizes[bucket_of][multi]


def candidate_graph(
    doc_ids: Sequence[str], bands: np.ndarray, signatures: np.ndarray, threshold: float, recheck_max_bucket: int
) -> Graph:
    """The verified candidate graph of documents (one row each: doc_id, band keys, signature)."""
    n = len(doc_ids)
    by_id = np.argsort(np.asarray(doc_ids, dtype=object), kind="stable")
    ids = [doc_ids[i] for i in by_id]  # row r is rank r from here on
    bands, signatures = bands[by_id], signatures[by_id]
    per_band = [_buckets(bands[:, b]) for b in range(bands.shape[1])]
    star = np.unique(np.concatenate([np.empty(0, np.int64)]
                                    + [roots.astype(np.int64) * n + m for m, roots, _ in per_band]))
    star = star[star // n != star % n]
    if threshold <= 0:
        return _graph(ids, star, np.ones(len(star), dtype=bool))
    ok = agree(signatures, star, n, threshold)
    failed = star[~ok]
    rest = [_recheck(members, roots, sizes, failed, n, recheck_max_bucket) for members, roots, sizes in per_band]
    rest_codes = np.setdiff1d(np.unique(np.concatenate([star[:0], *rest])), star, assume_unique=True)
    codes = np.concatenate([star, rest_codes])
    return _graph(ids, codes, np.concatenate([ok, agree(signatures, rest_codes, n, threshold)]))


def _recheck(members: np.ndarray, roots: np.ndarray, sizes: np.ndarray, failed: np.ndarray, n: int,
             recheck_max_bucket: int) -> np.ndarray:
    """Pairs (failed member, other member) in one band's buckets of at most `recheck_max_bucket` members,
    the root left out (that link is the one that failed)."""
    failing = (sizes <= recheck_max_bucket) & np.isin(roots.astype(np.int64) * n + members, failed)
    if not failing.any():
        return np.empty(0, np.int64)
    begins = np.flatnonzero(members == roots)
    out = []
    for begin in begins[np.add.reduceat(failing.astype(np.int64), begins) > 0]:
        end = begin + int(sizes[begin])
        others = members[begin + 1 : end]
        for x in members[begin:end][failing[begin:end]]:
            rest = others[others != x]
            out.append(_pairs(np.full(len(rest), x), rest, n))
    return np.unique(np.concatenate(out))


def _graph(ids: list[str], codes: np.ndarray, ok: np.ndarray) -> Graph:
    n = len(ids)
    edges = codes[ok]
    nodes, root = _roots(edges // n, edges % n)
    return Graph(len(codes), len(edges), [(ids[i], ids[r]) for i, r in zip(nodes, root, strict=True)])


def _roots(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, root of each) of an edge list of integers; a root is its component's smallest node."""
    nodes, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    m = len(nodes)
    if m == 0:
        return nodes, nodes
    ends = index.reshape(2, -1)
    _, label = connected_components(coo_matrix((np.ones(ends.shape[1]), (ends[0], ends[1])), shape=(m, m)),
                                    directed=False)
    smallest = np.full(label.max() + 1, m, dtype=np.int64)
    np.minimum.at(smallest, label, np.arange(m))
    return nodes, nodes[smallest[label]]


def components(a: Sequence[str], b: Sequence[str]) -> list[tuple[str, str]]:
    """(node, root) of every node of an undirected edge list of doc_ids, sorted by node; root = the
    smallest doc_id of the node's component."""
    ids, index = np.unique(np.asarray([*a, *b], dtype=object), return_inverse=True)
    ends = index.reshape(2, -1)
    nodes, root = _roots(ends[0], ends[1])
    return [(ids[i], ids[r]) for i, r in zip(nodes, root, strict=True)]


def from_arrow(table: pa.Table, threshold: float, recheck_max_bucket: int) -> Graph:
    """candidate_graph of an Arrow table (doc_id, bands, signature), rows without bands left out."""
    table = table.filter(table.column("bands").is_valid())
    if table.num_rows == 0:
        return Graph(0, 0, [])
    bands = np.stack(table.column("bands").to_numpy(zero_copy_only=False)).astype(np.int64)
    sigs = np.stack(table.column("signature").to_numpy(zero_copy_only=False)).astype(np.int32)
    return candidate_graph(table.column("doc_id").to_pylist(), bands, sigs, threshold, recheck_max_bucket)
