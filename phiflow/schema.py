"""Dataset schemas, defined once as pyarrow schemas (Spark derives its StructTypes from these).

Every document row carries `doc_id`, `source`, `source_uri` and `parent_ids` (empty for organic
rows, the seed ids for derived rows), so any training sample can be traced back to its origin.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

DOCUMENT_FIELDS: list[pa.Field] = [
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("parent_ids", pa.list_(pa.string())),
]

WEB_EXTRACTED = pa.schema(
    DOCUMENT_FIELDS
    + [
        pa.field("url", pa.string()),
        pa.field("warc_record_id", pa.string()),
        pa.field("warc_offset", pa.int64()),
        pa.field("fetch_time", pa.timestamp("us", tz="UTC")),
        pa.field("http_status", pa.int32()),
        pa.field("content_type", pa.string()),
        pa.field("charset", pa.string()),
        pa.field("title", pa.string()),
        pa.field("text", pa.string()),
        pa.field("html_bytes", pa.int64()),
        pa.field("text_chars", pa.int64()),
    ]
)

LANGID_FIELDS: list[pa.Field] = [
    pa.field("language", pa.string()),
    pa.field("language_score", pa.float32()),
]

# A stage emits its kept rows and its dropped rows in one Arrow stream; this column carries the
# named reason (null = kept). The stage counts reasons into the manifest and writes only kept rows.
DROP_REASON = pa.field("drop_reason", pa.string())


def with_fields(schema: pa.Schema, fields: list[pa.Field]) -> pa.Schema:
    """A stage's output schema: its input schema plus the columns it adds."""
    out = schema
    for f in fields:
        out = out.append(f)
    return out


def with_drop_reason(schema: pa.Schema) -> pa.Schema:
    return schema.append(DROP_REASON)


def describe(schema: pa.Schema) -> list[dict[str, str]]:
    """JSON-friendly schema (for manifests and OpenLineage schema facets)."""
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def fingerprint(schema: pa.Schema) -> str:
    """Digest of names and types, so readers can detect a schema change between partitions."""
    text = ";".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

# -- dedup and decontaminate (issue 4) -------------------------------------------------------
# Cluster membership written by dedup: one row per document merged into a survivor, so lineage
# shows what was merged into what. `cluster_id` is the smallest doc_id of the cluster.
DUP_CLUSTERS = pa.schema(
    [
        pa.field("cluster_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("survivor_id", pa.string(), nullable=False),
        pa.field("survivor_partition", pa.string()),  # e.g. snapshot=CC-MAIN-2024-10 (an earlier one wins)
        pa.field("kind", pa.string()),  # exact | fuzzy
    ]
)

# MinHash of every kept document of a committed dedup partition: later snapshots are deduplicated
# against these without reading or hashing the earlier text again.
MINHASH = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string()),
        pa.field("signature", pa.list_(pa.int32())),  # num_perm values (uint32 stored as int32)
        pa.field("bands", pa.list_(pa.int64())),  # one LSH key per band
    ]
)

# One row per (document, benchmark item) the hybrid n-gram rule flagged.
CONTAMINATION = pa.schema(
    DOCUMENT_FIELDS
    + [
        pa.field("benchmark", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("rule", pa.string()),  # ngram13 | ngram7_overlap (sizes from the recipe)
        pa.field("matched_ngrams", pa.list_(pa.string())),  # first few, as normalised in the document
        pa.field("matched_count", pa.int32()),
        pa.field("overlap", pa.float32()),  # share of the item's short n-grams found in the document
    ]
)

# The decontamination allowlist: benchmark n-grams frequent in every reference corpus.
NGRAM_ALLOWLIST = pa.schema(
    [
        pa.field("n", pa.int32(), nullable=False),
        pa.field("ngram_hash", pa.int64(), nullable=False),
        pa.field("doc_freq", pa.int64()),  # the smallest document frequency over the reference datasets
    ]
)
