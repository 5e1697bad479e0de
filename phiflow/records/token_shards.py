"""Per-task logic of the tokenize stage, over Arrow batches (no Spark): documents -> .bin/.idx shards.

A task receives its documents sorted by (shard, doc_id). Each shard becomes one megatron indexed
dataset `part-NNNNN` (+ `.docs.parquet` sidecar: sequence -> doc_id, num_tokens); documents longer
than the long-document threshold are also written to `long-NNNNN`, the midtraining long-context
data. Files are written locally then copied to the lake when it is remote; each file's sha256 is
returned so the driver can compute the partition's content digest without reading shards back.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from phiflow.records.indexed_writer import SIDECAR_SUFFIX, IndexedWriter
from phiflow.records.tokenizer import Tokenizer

SHARD_STATS = pa.schema([
    pa.field("shard", pa.int32()),
    pa.field("kind", pa.string()),  # part | long
    pa.field("prefix", pa.string()),  # file stem inside the attempt folder, e.g. part-00003
    pa.field("documents", pa.int64()),
    pa.field("tokens", pa.int64()),
    pa.field("files", pa.list_(pa.struct([pa.field("name", pa.string()), pa.field("sha256", pa.string()),
                                          pa.field("bytes", pa.int64())]))),
])


def shard_prefix(kind: str, shard: int) -> str:
    return f"{kind}-{shard:05d}"


@dataclass
class _Shard:
    shard: int
    local_dir: str
    tokenizer: Tokenizer
    writers: dict[str, IndexedWriter] = field(default_factory=dict)

    def writer(self, kind: str) -> IndexedWriter:
        if kind not in self.writers:
            prefix = os.path.join(self.local_dir, shard_prefix(kind, self.shard))
            self.writers[kind] = IndexedWriter(prefix, self.tokenizer.vocab_size, self.tokenizer.eod)
        return self.writers[kind]


def write_shards(
    batches: Iterator[pa.RecordBatch],
    tokenizer: Tokenizer,
    target_dir: str,
    long_doc_tokens: int,
    batch_size: int = 1024,
    put: Any = None,  # (local_path, remote_path) -> None for a remote lake; None: target_dir is local
) -> Iterator[pa.RecordBatch]:
    """Tokenize batches with columns (shard, doc_id, text), sorted by (shard, doc_id); yield SHARD_STATS."""
    with tempfile.TemporaryDirectory(prefix="phiflow-tok-") as tmp:
        local_dir = target_dir if put is None else tmp
        current: _Shard | None = None
        for batch in batches:
            shards = batch.column("shard").to_pylist()
            ids = batch.column("doc_id").to_pylist()
            texts = batch.column("text").to_pylist()
            start = 0
            while start < len(shards):  # runs of one shard inside the batch
                end = start
                while end < len(shards) and shards[end] == shards[start]:
                    end += 1
                if current is None or current.shard != shards[start]:
                    if current is not None:
                        yield _close(current, target_dir, put)
                    current = _Shard(shards[start], local_dir, tokenizer)
                _add(current, ids[start:end], texts[start:end], long_doc_tokens, batch_size)
                start = end
        if current is not None:
            yield _close(current, target_dir, put)


def _add(shard: _Shard, ids: list[str], texts: list[str], long_doc_tokens: int, batch_size: int) -> None:
    for i in range(0, len(ids), batch_size):
        tokens = shard.tokenizer.encode_batch(texts[i : i + batch_size])
        chunk = ids[i : i + batch_size]
        shard.writer("part").add_documents(tokens, chunk)
        long = [(t, d) for t, d in zip(tokens, chunk, strict=True) if len(t) + 1 > long_doc_tokens]
        if long:
            shard.writer("long").add_documents([t for t, _ in long], [d for _, d in long])


def _close(shard: _Shard, target_dir: str, put: Any) -> pa.RecordBatch:
    rows = []
    for kind, w in sorted(shard.writers.items()):
        stats = w.close()
        prefix = shard_prefix(kind, shard.shard)
        files = []
        for ext in (".bin", ".idx", SIDECAR_SUFFIX):
            local = os.path.join(os.path.dirname(stats.prefix), prefix + ext)
            files.append({"name": prefix + ext, "sha256": _sha256(local), "bytes": os.path.getsize(local)})
            if put is not None:
                put(local, posixpath.join(target_dir, prefix + ext))
                os.unlink(local)
        rows.append({"shard": shard.shard, "kind": kind, "prefix": prefix, "documents": stats.documents,
                     "tokens": stats.tokens, "files": files})
    return pa.RecordBatch.from_pylist(rows, schema=SHARD_STATS)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
