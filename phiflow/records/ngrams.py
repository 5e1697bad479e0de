"""Word n-grams as 64-bit hashes, and the benchmark n-gram index behind decontamination.

Shared by dedup (MinHash shingles) and decontaminate, so both stages see the same words: NFKC,
lower case, runs of letters/digits (`\\w+`; a run of CJK characters is one word). Each distinct
word is hashed once (blake2b, cached per process); an n-gram hash is a position-weighted sum of
its word hashes, finalised by splitmix64 — vectorised in numpy, no Python loop per n-gram.

`BenchmarkIndex` implements the Phi-4 report's hybrid rule (appendix B.1): a document is flagged
for a benchmark item when it shares a long n-gram (13) with it that is not on the allowlist of
frequent n-grams; otherwise when the share of the item's short n-grams (7) found in the document
reaches a threshold. Lookups are sorted-array searches, so one index serves a whole Arrow batch.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\w+")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# Odd 64-bit multipliers, one per position inside an n-gram (fixed: hashes are stored in the lake).
_POSITION = np.array(
    [int.from_bytes(hashlib.blake2b(f"phiflow-ngram-{i}".encode(), digest_size=8).digest(), "little") | 1
     for i in range(64)],
    dtype=np.uint64,
)


def normalize(text: str | None) -> str:
    """The text both exact dedup and n-grams see: NFKC, lower case, words joined by one space."""
    return " ".join(words(text))


def words(text: str | None) -> list[str]:
    return WORD.findall(unicodedata.normalize("NFKC", text or "").lower())


class _WordHashes(dict):
    """word -> 64-bit blake2b, computed on first sight. A plain dict lookup (C, no Python frame per
    word) is what makes hashing every word of a page cheap; cleared when it grows past `limit`."""

    limit = 1 << 20

    def __missing__(self, word: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        h = self[word] = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return h


_WORD_HASHES = _WordHashes()


def word_hashes(tokens: list[str]) -> np.ndarray:
    return np.fromiter(map(_WORD_HASHES.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit finaliser: spreads structured input over all bits."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of `n` consecutive words (in order; len(hashes) - n + 1 of them).

    A text shorter than `n` words has no n-gram: callers decide what that means for them.
    """
    if n > len(_POSITION):
        raise ValueError(f"n-grams longer than {len(_POSITION)} words are not supported")
    m = len(hashes) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc += hashes[j : j + m] * _POSITION[j]
    return splitmix64(acc)


def text_ngrams(text: str | None, n: int) -> np.ndarray:
    """Distinct n-gram hashes of a text, sorted."""
    return np.unique(ngram_hashes(word_hashes(words(text)), n))


# -- benchmark index -------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    benchmark: str
    item_id: str
    text: str


@dataclass(frozen=True)
class Flag:
    """One document found to contain one benchmark item, and why."""

    benchmark: str
    item_id: str
    # "ngram13" (any long n-gram match) or "ngram7_overlap" (short n-gram share >= threshold); n from the recipe
    rule: str
    matched: list[str]  # the matched n-grams as they read in the document (normalised), first few
    matched_count: int  # distinct matched n-grams of the rule's size
    overlap: float  # share of the item's distinct short n-grams found in the document


class _Postings:
    """Sorted n-gram hashes with the item each occurrence belongs to (one entry per item and n-gram)."""

    def __init__(self, keys: np.ndarray, items: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys, self.items = keys[order], items[order]

    @classmethod
    def build(cls, per_item: list[np.ndarray], drop: np.ndarray) -> _Postings:
        keys = [k[~np.isin(k, drop)] for k in per_item]
        items = [np.full(len(k), i, dtype=np.int32) for i, k in enumerate(keys)]
        return cls(np.concatenate(keys or [np.empty(0, np.uint64)]), np.concatenate(items or [np.empty(0, np.int32)]))

    def lookup(self, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item, doc n-gram hash) for every posting whose n-gram occurs in `doc` (sorted, distinct)."""
        if not len(self.keys) or not len(doc):
            return np.empty(0, np.int32), np.empty(0, np.uint64)
        lo = np.searchsorted(self.keys, doc, side="left")
        hi = np.searchsorted(self.keys, doc, side="right")
        hit = hi > lo
        if not hit.any():
            return np.empty(0, np.int32), np.empty(0, np.uint64)
        lo, hi, grams = lo[hit], hi[hit], doc[hit]
        counts = hi - lo
        starts = np.cumsum(counts) - counts
        idx = np.repeat(lo, counts) + np.arange(counts.sum()) - np.repeat(starts, counts)
        return self.items[idx], np.repeat(grams, counts)


class BenchmarkIndex:
    """Long and short n-grams of every benchmark item, minus an allowlist of frequent n-grams."""

    def __init__(self, items: list[Item], long_n: int, short_n: int, overlap_threshold: float,
                 allowlist: np.ndarray | None = None, max_report: int = 20) -> None:
        self.items, self.long_n, self.short_n = items, long_n, short_n
        self.overlap_threshold, self.max_report = overlap_threshold, max_report
        allow = np.unique(allowlist if allowlist is not None else np.empty(0, np.uint64)).astype(np.uint64)
        longs = [text_ngrams(it.text, long_n) for it in items]
        shorts = [text_ngrams(it.text, short_n) for it in items]
        self._grams = {long_n: longs, short_n: shorts}  # per item, for grams_of()
        self.short_total = np.array([len(s) for s in shorts], dtype=np.int64)  # denominator: all of them
        self.long = _Postings.build(longs, allow)
        self.short = _Postings.build(shorts, allow)
        self.long_rule, self.short_rule = f"ngram{long_n}", f"ngram{short_n}_overlap"

    def carriers(self, text: str | None, share: float) -> np.ndarray:
        """The items `text` carries most of (at least `share` of their short n-grams): a document that
        holds a benchmark item is evidence of a leak, not of its phrases' commonness."""
        s_items, _ = self.short.lookup(text_ngrams(text, self.short_n))
        if not len(s_items):
            return np.empty(0, np.int64)
        counts = np.bincount(s_items, minlength=len(self.items))
        ratio = np.divide(counts, self.short_total, out=np.zeros(len(self.items)), where=self.short_total > 0)
        return np.flatnonzero(ratio >= share)

    def grams_of(self, items: np.ndarray, n: int) -> np.ndarray:
        """The distinct n-grams (n: the long or the short size) of some items, sorted."""
        return np.unique(np.concatenate([self._grams[n][i] for i in items] or [np.empty(0, np.uint64)]))

    def candidates(self, n: int) -> np.ndarray:
        """Every distinct n-gram of size `n` of the benchmarks (allowlist building counts only these)."""
        return np.unique(np.concatenate([text_ngrams(it.text, n) for it in self.items] or [np.empty(0, np.uint64)]))

    def match(self, text: str | None) -> list[Flag]:
        tokens = words(text)
        hashes = word_hashes(tokens)
        flags: dict[int, Flag] = {}
        long_all = ngram_hashes(hashes, self.long_n)
        items, grams = self.long.lookup(np.unique(long_all))
        short_all = ngram_hashes(hashes, self.short_n)
        s_items, s_grams = self.short.lookup(np.unique(short_all))
        s_counts = np.bincount(s_items, minlength=len(self.items)) if len(s_items) else np.zeros(len(self.items), int)
        for item in np.unique(items):
            mine = grams[items == item]
            flags[int(item)] = self._flag(int(item), self.long_rule, mine, long_all, tokens, self.long_n, s_counts)
        ratio = np.divide(s_counts, self.short_total, out=np.zeros(len(self.items)), where=self.short_total > 0)
        for item in np.flatnonzero(ratio >= self.overlap_threshold):
            if int(item) not in flags and s_counts[item] > 0:
                mine = s_grams[s_items == item]
                flags[int(item)] = self._flag(int(item), self.short_rule, mine, short_all, tokens, self.short_n,
                                              s_counts)
        return [flags[k] for k in sorted(flags)]

    def _flag(self, item: int, rule: str, matched: np.ndarray, all_grams: np.ndarray, tokens: list[str], n: int,
              s_counts: np.ndarray) -> Flag:
        positions = np.flatnonzero(np.isin(all_grams, matched))
        seen: dict[int, str] = {}
        for p in positions:  # first occurrence of each matched n-gram, in document order
            h = int(all_grams[p])
            if h not in seen:
                seen[h] = " ".join(tokens[p : p + n])
            if len(seen) >= self.max_report:
                break
        it = self.items[item]
        total = self.short_total[item]
        return Flag(benchmark=it.benchmark, item_id=it.item_id, rule=rule, matched=list(seen.values()),
                    matched_count=len(np.unique(matched)), overlap=float(s_counts[item] / total) if total else 0.0)


def present(text: str | None, n: int, candidates: np.ndarray) -> np.ndarray:
    """The distinct n-grams of `text` that are among `candidates` (sorted): what the allowlist counts."""
    grams = text_ngrams(text, n)
    if not len(grams) or not len(candidates):
        return np.empty(0, np.uint64)
    pos = np.minimum(np.searchsorted(candidates, grams), len(candidates) - 1)
    return grams[candidates[pos] == grams]
