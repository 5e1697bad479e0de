"""Boilerplate-aware shingling for fuzzy dedup: the lines a site repeats on many of its pages (navigation,
footers, disclaimers) are left out of the MinHash shingles, so two templated pages of one site are compared
on what differs between them, not merged for the template they share.

Pure per-record functions: a line's key is a 64-bit hash of the page's site (URL host, `www.` dropped)
and the line's normalised words, so one line repeated on two sites is two keys. The dedup stage counts in
how many documents of the partition each key occurs; keys at or above `boilerplate_min_docs` are the
partition's boilerplate, and `strip` removes their lines before shingling. The exact-duplicate hash
still sees the whole text.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import numpy as np

from phiflow.records.ngrams import words

PAGE = 0  # the key that counts a site's pages (a line key of 0 is as likely as any other 64-bit value)
MIN_LINE_WORDS = 3  # shorter lines ("Home", "Next") are not worth a key: they hardly move a Jaccard


def site_of(url: str | None) -> str:
    """The host a page was fetched from, lower-cased, without `www.`; "" when there is none (a wiki
    page, a book: no site, no boilerplate)."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https"):
        return ""
    return (parts.hostname or "").lower().removeprefix("www.")


def _key(site: str, line_words: list[str]) -> int:
    data = f"{site}\x00{' '.join(line_words)}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def _lines(site: str, text: str | None) -> list[tuple[str, list[str], int | None]]:
    """Each line with its words and its key (None: too short to have one)."""
    out = []
    for line in (text or "").split("\n"):
        w = words(line)
        out.append((line, w, _key(site, w) if len(w) >= MIN_LINE_WORDS else None))
    return out


def line_keys(url: str | None, text: str | None) -> np.ndarray:
    """int64: the distinct keys of a page's lines (none for a page without a site)."""
    return keys_and_words(url, text)[0]


def keys_and_words(url: str | None, text: str | None) -> tuple[np.ndarray, list[str]]:
    """The page's distinct line keys and its words, from one tokenization: `words(text)` is the lines'
    words in order (no word spans a newline), so the dedup stage hashes a page's shingles and its
    lines in one pass over its text."""
    site = site_of(url)
    if not site:
        return np.empty(0, dtype=np.int64), words(text)
    lines = _lines(site, text)
    keys = np.unique(np.fromiter((k for _, _, k in lines if k is not None), dtype=np.int64))
    return keys, [w for _, ws, _ in lines for w in ws]


def strip(url: str | None, text: str | None, boilerplate: np.ndarray, min_words: int) -> str | None:
    """The text without its site's boilerplate lines (`boilerplate`: sorted int64 keys). A page that
    would keep fewer than `min_words` words (all template, or copies of one page that fill the
    boilerplate count themselves) keeps its whole text, so it is still compared as it is."""
    site = site_of(url)
    if not site or not len(boilerplate) or not text:
        return text
    lines = _lines(site, text)
    keys = np.array([k if k is not None else 0 for _, _, k in lines], dtype=np.int64)
    pos = np.searchsorted(boilerplate, keys).clip(max=len(boilerplate) - 1)
    shared = (boilerplate[pos] == keys) & np.array([k is not None for _, _, k in lines])
    if not shared.any():
        return text
    kept = "\n".join(line for (line, _, _), s in zip(lines, shared, strict=True) if not s)
    return kept if len(words(kept)) >= min_words else text
