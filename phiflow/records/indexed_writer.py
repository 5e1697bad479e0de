"""Write tokenized documents as a megatron indexed dataset (``.bin``/``.idx``) plus a doc-id sidecar.

One document = one sequence, EOD appended, as megatron's ``preprocess_data.py`` does with
``--append-eod``. The sidecar ``<prefix>.docs.parquet`` maps sequence index -> ``doc_id`` and token
count, so any training sample can be traced back to the document (and WARC record) it came from.

Pure over lists or Arrow arrays of texts, so the Spark tokenize job calls it per partition.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phiflow.records.tokenizer import Tokenizer

SIDECAR_SUFFIX = ".docs.parquet"


@dataclass(frozen=True)
class WriteStats:
    """What the tokenize stage's manifest records for a shard."""

    prefix: str
    documents: int
    tokens: int  # including one EOD per document
    dtype: str


def token_dtype(vocab_size: int) -> type[np.integer]:
    """uint16 while ids fit (half the bytes), int32 beyond; megatron reads the dtype from ``.idx``."""
    return np.uint16 if vocab_size <= 65536 else np.int32


def _as_list(values: Any) -> list[Any]:
    """Accept Python sequences and Arrow arrays/chunked arrays alike."""
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


# megatron.core.datasets.indexed_dataset's .idx layout (version 1): header, version, dtype code, then
# sequence count, document count, int32 lengths, int64 byte pointers, int64 document boundaries.
_INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
                np.uint16: 8}


def write_index(path: str, dtype: type[np.integer], lengths: Sequence[int]) -> None:
    """The ``.idx`` of one-sequence-per-document data, byte for byte what megatron's
    ``IndexedDatasetBuilder.finalize`` writes (tested against it), without importing megatron: the Spark
    tokenize job's executors need no torch."""
    n = len(lengths)
    sizes = np.asarray(lengths, dtype=np.int64)
    pointers = np.zeros(n, dtype=np.int64)
    np.cumsum(sizes[:-1] * np.dtype(dtype).itemsize, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(_INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", _DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", n) + struct.pack("<Q", n + 1))
        f.write(sizes.astype(np.int32).tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(np.arange(n + 1, dtype=np.int64).tobytes(order="C"))


class IndexedWriter:
    """Append documents in batches; :meth:`close` writes ``.idx`` and the sidecar.

    Batches are written with one ``write`` per batch instead of one per document, which is where
    the speed over a plain ``IndexedDatasetBuilder.add_document`` loop comes from; the files are the
    ones that loop writes.
    """

    def __init__(self, prefix: str | os.PathLike[str], vocab_size: int, eod: int) -> None:
        self.prefix = str(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.dtype = token_dtype(vocab_size)
        self.eod = eod
        self._data = open(self.prefix + ".bin", "wb")  # noqa: SIM115 (closed by close())
        self._doc_ids: list[str] = []
        self._lengths: list[int] = []

    def add_documents(self, token_lists: Sequence[Sequence[int]], doc_ids: Sequence[str]) -> None:
        if len(token_lists) != len(doc_ids):
            raise ValueError(f"{len(token_lists)} token lists but {len(doc_ids)} doc ids")
        if not token_lists:
            return
        lengths = [len(t) + 1 for t in token_lists]
        flat = np.empty(sum(lengths), dtype=self.dtype)
        pos = 0
        for toks, n in zip(token_lists, lengths, strict=True):
            flat[pos : pos + n - 1] = toks
            flat[pos + n - 1] = self.eod
            pos += n
        self._data.write(flat.tobytes(order="C"))
        self._doc_ids.extend(str(d) for d in doc_ids)
        self._lengths.extend(lengths)

    def close(self) -> WriteStats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._data.close()
        write_index(self.prefix + ".idx", self.dtype, self._lengths)
        table = pa.table(
            {
                "sequence": pa.array(range(len(self._doc_ids)), pa.int64()),
                "doc_id": pa.array(self._doc_ids, pa.string()),
                "num_tokens": pa.array(self._lengths, pa.int32()),
            }
        )
        pq.write_table(table, self.prefix + SIDECAR_SUFFIX)
        return WriteStats(self.prefix, len(self._doc_ids), int(sum(self._lengths)), np.dtype(self.dtype).name)


def write_tokens(
    prefix: str | os.PathLike[str],
    token_lists: Iterable[Sequence[int]],
    doc_ids: Iterable[str],
    vocab_size: int,
    eod: int,
) -> WriteStats:
    """Already-tokenized documents (e.g. an Arrow ``list<int32>`` column) -> indexed dataset."""
    w = IndexedWriter(prefix, vocab_size, eod)
    w.add_documents(_as_list(token_lists), _as_list(doc_ids))
    return w.close()


def tokenize_to_indexed(
    prefix: str | os.PathLike[str],
    texts: Iterable[str],
    doc_ids: Iterable[str],
    tokenizer: Tokenizer,
    batch_size: int = 1024,
) -> WriteStats:
    """Tokenize ``texts`` in batches (HF encodes a batch in parallel threads) and write them."""
    texts, ids = _as_list(texts), _as_list(doc_ids)
    if len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts but {len(ids)} doc ids")
    w = IndexedWriter(prefix, tokenizer.vocab_size, tokenizer.eod)
    for i in range(0, len(texts), batch_size):
        w.add_documents(tokenizer.encode_batch(texts[i : i + batch_size]), ids[i : i + batch_size])
    return w.close()


def read_sidecar(prefix: str | os.PathLike[str]) -> Any:
    """The sequence -> doc_id table of a shard (a pyarrow Table)."""
    import pyarrow.parquet as pq

    return pq.read_table(str(prefix) + SIDECAR_SUFFIX)
