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
    [
        *DOCUMENT_FIELDS,
        pa.field("url", pa.string()),
        pa.field("warc_record_id", pa.string()),
        pa.field("warc_offset", pa.int64()),  # the record's gzip member (CommonCrawl: the record itself)
        pa.field("warc_member_offset", pa.int64()),  # where it starts inside that member, inflated (0: first)
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


# `<dataset>.rejected`: what a stage dropped, sampled as the recipe's `rejected` says (whole or a
# deterministic share by doc_id), so an audit, `phiflow trace` and the dashboard can say why a
# document is gone. A short excerpt stands in for the text.
REJECTED = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("url", pa.string()),  # the page's URL (web), where a document was acquired (books)
        pa.field("page", pa.string()),  # title (wiki, books) or repo/path (code)
        pa.field("excerpt", pa.string()),  # the first `rejected.excerpt_chars` characters of the text
    ]
)


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
    [
        *DOCUMENT_FIELDS,
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

# -- wikipedia_extract and quality (issue 3) --------------------------------------------------
# One row per article of a Wikimedia dump. `language` comes from the dump (enwiki -> en), not from
# a classifier: a wiki's language is known, so these rows skip langid and feed quality directly.
WIKI_EXTRACTED = pa.schema(
    [
        *DOCUMENT_FIELDS,
        pa.field("wiki", pa.string()),
        pa.field("page_id", pa.int64()),
        pa.field("revision_id", pa.int64()),
        pa.field("title", pa.string()),
        pa.field("namespace", pa.int32()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("stream_offset", pa.int64()),  # byte offset of the page's bz2 stream in the dump
        pa.field("text", pa.string()),
        pa.field("wikitext_bytes", pa.int64()),
        pa.field("text_chars", pa.int64()),
        *LANGID_FIELDS,
    ]
)

# -- code and documents sources --------------------------------------------------------------
# One row per kept source file of a repository; `language` is the programming language (the name
# the langid column has for text, so quality and seed selection read one column for both).
CODE_EXTRACTED = pa.schema(
    [
        *DOCUMENT_FIELDS,
        pa.field("repo", pa.string()),
        pa.field("path", pa.string()),
        pa.field("language", pa.string()),
        pa.field("license", pa.string()),  # SPDX id or expression
        pa.field("blob_sha", pa.string()),  # git blob hash of the content
        pa.field("size_bytes", pa.int64()),
        pa.field("line_count", pa.int64()),
        pa.field("max_line_length", pa.int64()),
        pa.field("alpha_fraction", pa.float32()),
        pa.field("text", pa.string()),
        pa.field("text_chars", pa.int64()),
    ]
)

# One row per acquired document (a book, a report), its text cleaned by the book rules.
DOCUMENTS_EXTRACTED = pa.schema(
    [
        *DOCUMENT_FIELDS,
        pa.field("title", pa.string()),
        pa.field("author", pa.string()),
        pa.field("license", pa.string()),
        pa.field("origin_url", pa.string()),  # where the text was acquired
        pa.field("declared_language", pa.string()),  # from the metadata; langid decides `language`
        pa.field("text", pa.string()),
        pa.field("source_chars", pa.int64()),  # before cleaning
        pa.field("text_chars", pa.int64()),
        pa.field("cleaning", pa.string()),  # JSON: what each cleaning rule removed or changed
    ]
)

# <code source>.repos: a repository's clean files concatenated in dependency order (long-context data).
CODE_REPOS = pa.schema(
    [
        *DOCUMENT_FIELDS,  # parent_ids: the files' doc_ids, in the order they were concatenated
        pa.field("repo", pa.string()),
        pa.field("languages", pa.list_(pa.string())),
        pa.field("files", pa.int32()),
        pa.field("truncated", pa.bool_()),
        pa.field("text", pa.string()),
        pa.field("text_chars", pa.int64()),
    ]
)

EXTRACTED = {"commoncrawl": WEB_EXTRACTED, "wikipedia": WIKI_EXTRACTED, "code": CODE_EXTRACTED,
             "documents": DOCUMENTS_EXTRACTED}


def langid_schema(kind: str) -> pa.Schema:
    """A source kind's rows after language identification."""
    return with_fields(EXTRACTED[kind], LANGID_FIELDS)


# Columns quality adds to its input rows (kept rows only are written).
QUALITY_FIELDS: list[pa.Field] = [
    pa.field("quality_score", pa.float32()),  # P(educational) from the fastText classifier; null: no model
    pa.field("topic", pa.string()),  # stem | arts | history | travel | culture | entertainment | other...
    pa.field("topic_score", pa.float32()),
    pa.field("selected_by", pa.string()),  # "top_fraction" or "non_stem_quota"
]

# LLM annotations of sampled documents: the training data of the quality classifiers.
QUALITY_ANNOTATIONS = pa.schema(
    [
        *DOCUMENT_FIELDS,
        pa.field("language", pa.string()),
        pa.field("text", pa.string()),  # the excerpt the LLM saw
        pa.field("grade", pa.int32()),  # educational value 0-5
        pa.field("topic", pa.string()),
        pa.field("answer", pa.string()),  # the raw LLM answer, for audits
        pa.field("model", pa.string()),
    ]
)

# Trained classifiers: one row per model, the fastText binary inline (read back by quality).
QUALITY_MODELS = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),  # "educational" or "topic"
        pa.field("labels", pa.list_(pa.string())),
        pa.field("model", pa.binary()),
        pa.field("metrics", pa.string()),  # JSON: held-out precision, recall, AUC, sizes
    ]
)


# -- synthesis (issue 5) ---------------------------------------------------------------------
# Seeds: passages cut from kept pages, with the page's and the passage's educational score.
SEEDS = pa.schema([
    *DOCUMENT_FIELDS,
    pa.field("url", pa.string()),
    pa.field("language", pa.string()),
    pa.field("kind", pa.string()),  # text | code
    pa.field("passage_index", pa.int32()),
    pa.field("text", pa.string()),
    pa.field("page_score", pa.float32()),
    pa.field("passage_score", pa.float32()),
])

TURN = pa.struct([pa.field("role", pa.string()), pa.field("name", pa.string()), pa.field("content", pa.string())])

# Synthetic samples: parent_ids = [seed doc_id]; the seed's parent_ids lead on to the page.
SYNTHETIC = pa.schema([
    *DOCUMENT_FIELDS,
    pa.field("workflow", pa.string()),
    pa.field("kind", pa.string()),  # the workflow kind
    pa.field("sample_index", pa.int32()),
    pa.field("round", pa.int32()),  # revision rounds done / agent turns taken
    pa.field("model", pa.string()),
    pa.field("text", pa.string()),  # the training sample
    pa.field("history", pa.list_(TURN)),  # every prompt/answer that produced it (revision history)
    pa.field("meta", pa.string()),  # JSON: votes, reference answer, similarity, execution result...
    pa.field("completion_tokens", pa.int64()),
])

# -- tokenize, mix, training (issue 6) -------------------------------------------------------
# tokens.<dataset>: one row per document in the `<shard>.docs.parquet` sidecars (phiflow.records.indexed_writer):
# sequence i of shard `part-NNNNN` is the document doc_id; num_tokens counts its EOD. Long documents
# are written once more into `long-NNNNN` shards, the midtraining long-context data.
TOKEN_DOCS = pa.schema([
    pa.field("sequence", pa.int64()),
    pa.field("doc_id", pa.string()),
    pa.field("num_tokens", pa.int32()),
])

# blend: one row per (run, source) of blend.csv, the mix stage's table.
BLEND_SOURCES = pa.schema([
    pa.field("run", pa.string()),  # pretrain | midtrain
    pa.field("source", pa.string()),
    pa.field("share", pa.float64()),
    pa.field("unique_tokens", pa.int64()),
    pa.field("tokens", pa.int64()),
    pa.field("epochs", pa.float64()),
    pa.field("max_epochs", pa.float64()),
    pa.field("shards", pa.int32()),
])

# checkpoints.<run>: one row per training step in metrics.json.
TRAIN_STEPS = pa.schema([
    pa.field("step", pa.int64()),
    pa.field("loss", pa.float64()),
    pa.field("lr", pa.float64()),
    pa.field("grad_norm", pa.float64()),
    pa.field("tokens_per_s", pa.float64()),
])

# -- ablations (issue 8) -----------------------------------------------------------------------
# evals.pretrain/recipe=<point>: multiple-choice log-likelihood scores of a checkpoint, one row per benchmark.
MC_RESULTS = pa.schema([
    pa.field("benchmark", pa.string()),
    pa.field("items", pa.int64()),
    pa.field("accuracy", pa.float64()),
    pa.field("accuracy_norm", pa.float64()),  # choice log-prob per token
    pa.field("chance", pa.float64()),
    pa.field("mean_logprob_right", pa.float64()),
])

# ablations.<sweep>: one row per sweep point of report.csv (the swept axes are extra `axis_*` columns).
ABLATION_POINTS = pa.schema([
    pa.field("point", pa.string()),
    pa.field("label", pa.string()),
    pa.field("recipe", pa.string()),
    pa.field("status", pa.string()),  # ok | missing (no current checkpoint manifest) | base (what `from` named)
    pa.field("steps", pa.int64()),
    pa.field("tokens", pa.int64()),  # training tokens of the point: equal across a sweep's points
    pa.field("valid_loss", pa.float64()),
    pa.field("valid_perplexity", pa.float64()),
    pa.field("final_loss", pa.float64()),
    pa.field("loss_end_mean", pa.float64()),
    pa.field("manifest", pa.string()),  # digest of the point's checkpoints.pretrain manifest
])

# stress.pretrain: the warmup stress test, a row per learning-rate multiplier (training/stress.py)
STRESS_POINTS = pa.schema([
    pa.field("multiplier", pa.float64()),
    pa.field("lr", pa.float64()),
    pa.field("diverged", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("first_loss", pa.float64()),
    pa.field("final_loss", pa.float64()),
    pa.field("max_grad_norm", pa.float64()),
    pa.field("grad_norm_spikes", pa.list_(pa.int64())),
    pa.field("attention_logit_growth", pa.float64()),
    pa.field("nonfinite_at", pa.int64()),
])
