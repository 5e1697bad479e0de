"""A decontamination set with known answers, built from the sample's real pages (no benchmark text of
anyone's): benchmark-like items, documents that leak them lightly paraphrased, hard negatives on the
same pages, and clean documents.

- item: 20-45 consecutive words of one page (a question-sized passage) whose every 7-gram occurs
  nowhere else in the sample (the sample's pages share boilerplate, which would be a true leak);
- leak: the item with about one word in eight replaced, one deleted and one inserted, set inside
  another page's text (a light paraphrase: what a rewritten copy of a test item looks like);
- hard negative: the same page's text around the item, the item's passage cut out, plus the item's
  first six words and, elsewhere, an eight-word run of its middle (same topic, same names, a shared
  opening and a quoted fragment: two of its 7-grams; no leak);
- clean: other pages whole.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    item: int  # index of the item it concerns (-1: none)
    text: str
    leak: bool


def sample_pages(min_words: int = 200) -> list[list[str]]:
    """Words (as decontamination normalizes them) of the sample's extracted web pages, both snapshots,
    long pages only, deduplicated."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from phiflow.records.html_text import extract
    from phiflow.records.ngrams import words as ngram_words

    pages, seen = [], set()
    for f in sorted((ROOT / "data" / "sample" / "crawl-data").rglob("*.warc.gz")):
        with open(f, "rb") as fh:
            for r in ArchiveIterator(fh, record_types=WarcRecordType.response, parse_http=True):
                words = ngram_words(extract(r.reader.read(), r.http_charset).text)  # the words n-grams see
                key = " ".join(words[:50])
                if len(words) >= min_words and key not in seen:
                    seen.add(key)
                    pages.append(words)
    return pages


def build(seed: int = 7, n_items: int = 120) -> tuple[list[str], list[Case]]:
    from collections import Counter

    from phiflow.records.ngrams import ngram_hashes, text_ngrams, word_hashes

    rng = random.Random(seed)
    pages = sample_pages()
    vocab = sorted({w for p in pages for w in p})
    grams = Counter(int(g) for p in pages for g in ngram_hashes(word_hashes(p), 7))  # every occurrence
    order = rng.sample(range(len(pages)), len(pages))
    items, cases, used = [], [], []
    for pi in order:
        words = pages[pi]
        size = rng.randint(20, 45)
        start = rng.randint(60, len(words) - size - 60)
        item = words[start : start + size]
        if any(grams[int(g)] > 1 for g in text_ngrams(" ".join(item), 7)):
            continue  # shared with another page (or twice in this one): not an item with a known answer
        k = len(items)
        items.append(" ".join(item))
        used.append(pi)
        para = list(item)
        for i in rng.sample(range(size), max(1, size // 8)):
            para[i] = rng.choice(vocab)
        del para[rng.randrange(len(para))]
        para.insert(rng.randrange(len(para)), rng.choice(vocab))
        host = pages[order[-1 - k]]  # pages from the other end of the order: never an item's own
        cut = rng.randint(0, len(host))
        cases.append(Case(k, " ".join(host[:cut] + para + host[cut:]), True))
        around = words[:start] + words[start + size :]
        half = len(around) // 2
        opening = item[:6] + [rng.choice(vocab) for _ in range(12)]
        mid = size // 2 - 4
        quoted = [rng.choice(vocab), *item[mid : mid + 8], rng.choice(vocab)]
        cases.append(Case(k, " ".join(around[:half] + opening + around[half:] + quoted), False))
        if len(items) == n_items:
            break
    hosts = {order[-1 - k] for k in range(len(items))}
    clean = [pi for pi in order if pi not in set(used) | hosts][:n_items]
    cases += [Case(-1, " ".join(pages[pi]), False) for pi in clean]
    return items, cases
