"""MinHash signatures, LSH band keys and content hashes: the per-document part of dedup.

Shingles are word n-grams (spark_jobs.ngrams). Each of the `num_perm` hash functions is a
multiply-shift permutation of the 64-bit shingle hash, h_p(x) = ((a_p * x + b_p) mod 2^64) >> 32,
with (a_p, b_p) drawn from a seeded generator: signatures depend only on the text and the recipe
(`shingle_size`, `num_perm`, `seed`), never on the machine or the order of documents, so the
signatures of committed partitions stay comparable with new ones.

A band key is a 64-bit hash of `rows` consecutive signature values; two documents become a
candidate pair when any of their `bands` keys agree, which happens with probability
1 - (1 - s^rows)^bands for Jaccard similarity s (`s_curve`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spark_jobs.ngrams import ngram_hashes, normalize, splitmix64, word_hashes, words

_BLOCK = 4096  # shingles per block of the (shingles x permutations) product: bounds memory per document


@dataclass(frozen=True)
class MinHasher:
    shingle_size: int
    num_perm: int
    bands: int
    rows: int
    seed: int

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")

    @property
    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(self.seed))
        a = rng.integers(0, 2**63, self.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        b = rng.integers(0, 2**63, self.num_perm, dtype=np.uint64)
        return a, b

    def shingles(self, text: str | None) -> np.ndarray:
        """Distinct shingle hashes; a text shorter than one shingle is one shingle of all its words."""
        h = word_hashes(words(text))
        grams = ngram_hashes(h, self.shingle_size)
        if not len(grams) and len(h):
            grams = ngram_hashes(h, len(h))
        return np.unique(grams)

    def signature_of(self, shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """uint32[num_perm]: per permutation, the minimum over the shingles."""
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), _BLOCK):
                x = shingles[start : start + _BLOCK, None]
                v = ((x * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
                np.minimum(sig, v.min(axis=0), out=sig)
        return sig

    def signature(self, text: str | None) -> np.ndarray:
        a, b = self._params
        return self.signature_of(self.shingles(text), a, b)

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """int64[bands]: one hash per band of `rows` signature values (band i uses rows i*r..i*r+r-1)."""
        used = sig[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        acc = np.zeros(self.bands, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(self.rows):
                acc = splitmix64(acc ^ used[:, j])
        return acc.view(np.int64)

    def batch(self, texts: list[str | None]) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(content_hash, signature list<int32>, band keys list<int64>) for a batch of documents.

        A document without words gets no band keys: empty pages are all exact duplicates of each
        other, and must not collide with everything else in every band.
        """
        a, b = self._params
        hashes, sigs, bands = [], [], []
        for text in texts:
            hashes.append(content_hash(text))
            sh = self.shingles(text)
            if len(sh):
                sig = self.signature_of(sh, a, b)
                sigs.append(sig.view(np.int32))
                bands.append(self.band_keys(sig))
            else:
                sigs.append(np.empty(0, np.int32))
                bands.append(np.empty(0, np.int64))
        return (
            pa.array(hashes, pa.string()),
            _list_array(sigs, pa.int32()),
            _list_array(bands, pa.int64()),
        )


def _list_array(parts: list[np.ndarray], typ: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    values = np.concatenate(parts) if parts else np.empty(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(typ.to_pandas_dtype()), typ))


def content_hash(text: str | None) -> str:
    """Exact-duplicate key: pages equal up to case, punctuation and whitespace share it."""
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).hexdigest()


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """True Jaccard similarity of two shingle sets (tests and benchmarks measure against it)."""
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b)) / union if union else 1.0


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def s_curve(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two documents of Jaccard similarity s share at least one band."""
    return 1.0 - (1.0 - np.asarray(s, dtype=float) ** rows) ** bands


def lsh_threshold(bands: int, rows: int) -> float:
    """The similarity where the S-curve is steepest, about (1/bands)^(1/rows)."""
    return (1.0 / bands) ** (1.0 / rows)
