"""MinHash / LSH per-document logic without Spark: calibration against the analytic S-curve."""

from __future__ import annotations

import numpy as np
import pytest

from phiflow.records.minhash import (
    MinHasher,
    content_hash,
    detection_probability,
    estimated_jaccard,
    jaccard,
    lsh_threshold,
    planted_pair,
    s_curve,
)

MH = MinHasher(shingle_size=5, num_perm=128, bands=16, rows=8, seed=7)


def test_candidate_rate_follows_the_s_curve() -> None:
    """Planted pairs at known Jaccard: the share that shares a band matches 1-(1-s^r)^b.

    Tolerance: 3 binomial standard deviations of the measured rate, plus 0.03 for the rounding of
    the planted similarity (each pair's true Jaccard is measured and the curve taken at the mean).
    """
    rng = np.random.default_rng(1)
    a_par, b_par = MH._params
    for target in (0.4, 0.55, 0.65, 0.75, 0.85, 0.95):
        hits, sims, est = 0, [], []
        n = 250
        for _ in range(n):
            a, b = planted_pair(rng, 80, target, MH.shingle_size)
            sa, sb = MH.shingles(a), MH.shingles(b)
            sims.append(jaccard(sa, sb))
            ga, gb = MH.signature_of(sa, a_par, b_par), MH.signature_of(sb, a_par, b_par)
            est.append(estimated_jaccard(ga, gb))
            hits += bool((MH.band_keys(ga) == MH.band_keys(gb)).any())
        expected = float(s_curve(np.mean(sims), MH.bands, MH.rows))
        tol = 3 * np.sqrt(max(expected * (1 - expected), 0.01) / n) + 0.03
        assert abs(hits / n - expected) <= tol, (target, hits / n, expected)
        assert abs(np.mean(est) - np.mean(sims)) < 0.02  # the signature is an unbiased estimate


def test_signatures_depend_only_on_text_and_recipe() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 3
    _, sigs, bands = MH.batch(["something else entirely here", text, None])
    assert np.array_equal(np.array(sigs[1].as_py(), np.int32).view(np.uint32), MH.signature(text))
    assert MinHasher(5, 128, 16, 8, seed=7).signature(text).tolist() == MH.signature(text).tolist()
    assert MinHasher(5, 128, 16, 8, seed=8).signature(text).tolist() != MH.signature(text).tolist()
    assert len(bands[1].as_py()) == MH.bands and len(sigs[1].as_py()) == MH.num_perm
    assert bands[2].as_py() == [] and sigs[2].as_py() == []  # no words: no band keys, no false buckets
    assert len(MH.shingles("two words")) == 1  # shorter than a shingle: one shingle of all its words


def test_signatures_are_datasketch_minhash_of_the_same_shingle_hashes() -> None:
    """Same family and draw as datasketch: fed our 32-bit shingle hashes, its MinHash gives the same values."""
    from datasketch import MinHash

    rng = np.random.default_rng(3)
    for n_words in (1, 4, 60, 5000):  # one shingle of all words; a few; many (several blocks of 4096)
        text = " ".join(f"w{i}" for i in rng.integers(0, 10**6, n_words))
        ref = MinHash(num_perm=MH.num_perm, seed=MH.seed, hashfunc=int, scheme="legacy")
        ref.update_batch([int(x) & 0xFFFFFFFF for x in MH.shingles(text)])
        assert np.array_equal(MH.signature(text), ref.hashvalues.astype(np.uint32)), n_words


def test_signature_agreement_scatters_like_independent_permutations() -> None:
    """The share of agreeing positions of a pair at Jaccard s is Binomial(num_perm, s) for independent
    permutations. Over many pairs with fresh words, the squared error of the estimate must match its
    variance s(1-s)/num_perm: a family whose positions are correlated scatters more or less than that.
    Tolerance: 4 standard errors of a mean of n squared errors (chi-square-like, relative sd ~ sqrt(2/n))."""
    rng = np.random.default_rng(5)
    a_par, b_par = MH._params
    errors, variances = [], []
    for _ in range(1500):
        a, b = planted_pair(rng, 120, 0.75, MH.shingle_size)
        sa, sb = MH.shingles(a), MH.shingles(b)
        s = jaccard(sa, sb)
        est = estimated_jaccard(MH.signature_of(sa, a_par, b_par), MH.signature_of(sb, a_par, b_par))
        errors.append((est - s) ** 2)
        variances.append(s * (1 - s) / MH.num_perm)
    ratio = np.mean(errors) / np.mean(variances)
    assert abs(ratio - 1) < 4 * np.sqrt(2 / len(errors)), ratio


def test_content_hash_ignores_case_punctuation_and_spacing_only() -> None:
    assert content_hash("Hello,  World!\n") == content_hash("hello world")
    assert content_hash("hello world") != content_hash("hello there world")
    assert content_hash(None) == content_hash("")


def test_detection_probability_is_the_s_curve_times_verification() -> None:
    for s in (0.3, 0.6, 0.8, 0.9):
        assert detection_probability(s, 16, 8, 128, 0.0) == pytest.approx(float(s_curve(s, 16, 8)))
        assert detection_probability(s, 16, 8, 128, 0.7) <= float(s_curve(s, 16, 8)) + 1e-12
    assert detection_probability(0.95, 16, 8, 128, 0.7) > 0.999
    assert detection_probability(0.5, 16, 8, 128, 0.7) < 1e-4
    assert lsh_threshold(16, 8) == pytest.approx(0.707, abs=1e-3)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHasher(5, 64, 16, 8, 1)
