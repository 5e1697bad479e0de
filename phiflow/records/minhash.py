"""MinHash signatures, LSH band keys and content hashes: the per-document part of dedup.

Shingles are word n-grams (phiflow.records.ngrams). Each of the `num_perm` hash functions is the classic
universal hash of the shingle's 32-bit hash x, h_p(x) = ((a_p * x + b_p) mod 2^64) mod (2^61 - 1), low
32 bits, with (a_p, b_p) drawn as datasketch draws them (`RandomState(seed)`): given the same 32-bit
shingle hashes, a signature is datasketch's `MinHash(seed=seed).hashvalues` bit for bit (tested), so at
equal parameters the stage and a datasketch loop estimate Jaccard with the same family. (The
multiply-shift family used before linked fewer near-threshold pairs on the dedup bench; docs/dedup.md.)
Signatures depend only on the text, the recipe (`shingle_size`, `num_perm`, `seed`) and
`SIGNATURE_FAMILY`, which the stage records with every stored signature, so the signatures of committed
partitions stay comparable with new ones.

A band key is a 64-bit hash of `rows` consecutive signature values; two documents become a
candidate pair when any of their `bands` keys agree, which happens with probability
1 - (1 - s^rows)^bands for Jaccard similarity s (`s_curve`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

from phiflow.records.ngrams import ngram_hashes, normalize, splitmix64, word_hashes, words

_PRIME = np.uint64((1 << 61) - 1)
_SHIFT61 = np.uint64(61)
_LOW32 = np.uint64(0xFFFFFFFF)
# The permutation family above; stored with each `minhash` partition, compared before signatures are joined.
SIGNATURE_FAMILY = "mod-mersenne61-32bit"


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
        gen = np.random.RandomState(self.seed)  # datasketch's draw, pair by pair
        pairs = [
            (gen.randint(1, _PRIME, dtype=np.uint64), gen.randint(0, _PRIME, dtype=np.uint64))
            for _ in range(self.num_perm)
        ]
        a, b = np.array(pairs, dtype=np.uint64).reshape(self.num_perm, 2).T
        return a, b

    def shingles(self, text: str | None) -> np.ndarray:
        """Distinct shingle hashes; a text shorter than one shingle is one shingle of all its words."""
        return np.unique(self._shingle_hashes(words(text)))

    def _shingle_hashes(self, tokens: list[str]) -> np.ndarray:
        h = word_hashes(tokens)
        grams = ngram_hashes(h, self.shingle_size)
        if not len(grams) and len(h):
            grams = ngram_hashes(h, len(h))
        return grams

    def signature_of(self, shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """uint32[num_perm]: per permutation, the minimum over the shingles' 32-bit hashes. Duplicate
        shingles may be passed: they do not change a minimum."""
        out = np.empty(self.num_perm, dtype=np.uint32)
        _min_hashes(shingles, a, b, out)
        return out

    def signature(self, text: str | None) -> np.ndarray:
        a, b = self._params
        return self.signature_of(self.shingles(text), a, b)

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """int64[..., bands]: one hash per band of `rows` signature values (band i uses rows
        i*r..i*r+r-1), for one signature or a (documents x num_perm) matrix of them."""
        used = sig[..., : self.bands * self.rows].astype(np.uint64).reshape(*sig.shape[:-1], self.bands, self.rows)
        acc = np.zeros(used.shape[:-1], dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(self.rows):
                acc = splitmix64(acc ^ used[..., j])
        return acc.view(np.int64)

    def batch(
        self, texts: list[str | None], shingled: list[str | None] | None = None,
        tokens: list[list[str] | None] | None = None,
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(content_hash, signature list<int32>, band keys list<int64>) for a batch of documents; the
        signatures of `shingled` when given (the texts without their boilerplate lines), the content
        hash always of `texts`. `tokens`: the texts' words where the caller has them already
        (`words(text)`; None: tokenize here).

        A document without words gets no signature and no band keys: empty pages are all exact
        duplicates of each other, and must not collide with everything else in every band.
        """
        a, b = self._params
        hashes = []
        sigs = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        has_words = np.zeros(len(texts), dtype=bool)
        for i, text in enumerate(texts):
            toks = tokens[i] if tokens is not None and tokens[i] is not None else words(text)
            hashes.append(_digest(" ".join(toks)))  # the content hash and the shingles see the same words
            if shingled is not None and shingled[i] is not text:
                toks = words(shingled[i])
            sh = self._shingle_hashes(toks)  # not made distinct: a repeat cannot change a minimum
            if len(sh):
                _min_hashes(sh, a, b, sigs[i])
                has_words[i] = True
        bands = self.band_keys(sigs)  # the whole batch at once
        lengths = np.where(has_words, 1, 0)
        return (
            pa.array(hashes, pa.string()),
            _list_array(sigs.view(np.int32), lengths * self.num_perm, pa.int32()),
            _list_array(bands, lengths * self.bands, pa.int64()),
        )


@numba.njit(cache=True, nogil=True)
def _min_hashes(shingles: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[p] = min over the shingles x of h_p(x & 0xFFFFFFFF), compiled: one pass over the shingles per
    permutation, in registers (numpy needs ten passes over a permutations x shingles block for it).
    `v mod (2^61 - 1)` is folded without a division: for v < 2^64, r = (v & p) + (v >> 61) is
    congruent and below p + 8, so one subtraction of p leaves the remainder. Every constant is a
    uint64: numba would turn uint64 arithmetic with a plain int into floats."""
    for p in range(a.shape[0]):
        ap, bp, low = a[p], b[p], _LOW32
        for x in shingles:
            v = ap * (x & _LOW32) + bp  # wraps mod 2^64, as datasketch's numpy arithmetic does
            r = (v & _PRIME) + (v >> _SHIFT61)
            if r >= _PRIME:
                r -= _PRIME
            low = min(low, r & _LOW32)
        out[p] = np.uint32(low)


def _list_array(rows: np.ndarray, lengths: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A list array of the first `lengths[i]` values of each row (0 or the whole row)."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = rows[lengths > 0].reshape(-1)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, typ))


def content_hash(text: str | None) -> str:
    """Exact-duplicate key: pages equal up to case, punctuation and whitespace share it."""
    return _digest(normalize(text))


def _digest(normalized: str) -> str:
    return hashlib.blake2b(normalized.encode(), digest_size=16).hexdigest()


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


def detection_probability(s: float, bands: int, rows: int, num_perm: int, threshold: float) -> float:
    """P(some band agrees fully AND the whole signature agrees on >= threshold of its positions)
    for Jaccard s, with positions agreeing independently with probability s (ideal MinHash).

    The dedup stage keeps exactly such pairs, so this is its expected recall at similarity s.
    """
    from scipy.stats import binom

    need = int(np.ceil(threshold * num_perm - 1e-9))
    band = binom.pmf(np.arange(rows + 1), rows, s)
    rest = binom.pmf(np.arange(num_perm - bands * rows + 1), num_perm - bands * rows, s)
    every, no_full = np.array([1.0]), np.array([1.0])  # distributions of the agreement count
    for _ in range(bands):
        every, no_full = np.convolve(every, band), np.convolve(no_full, band[:rows])
    every, no_full = np.convolve(every, rest), np.convolve(no_full, rest)
    return float(every[need:].sum() - no_full[need:].sum())


def planted_pair(rng: np.random.Generator, n_words: int, similarity: float, shingle_size: int) -> tuple[str, str]:
    """Two texts of random words whose shingle sets have (about) the given Jaccard similarity.

    For calibration (tests, bench): b keeps a's first m words and replaces the rest, so they share
    m - k + 1 of their n - k + 1 shingles each; m is solved for the target similarity.
    """
    k, total = shingle_size, n_words - shingle_size + 1
    shared = round(2 * total * similarity / (1 + similarity))
    m = min(n_words, shared + k - 1) if shared else 0

    def fresh(n: int) -> list[str]:
        return ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(n)]

    a = fresh(n_words)
    return " ".join(a), " ".join(a[:m] + fresh(n_words - m))
