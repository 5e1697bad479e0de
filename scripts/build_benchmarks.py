"""Build the demo's small benchmark sets under data/benchmarks/ (deterministic: same sample, same bytes).

Nothing here is copied from a real benchmark. Three sets, each made to exercise one part of the
decontamination rule on the sample data (data/sample, real Debian-packaged HTML):

- `arith.jsonl`: templated arithmetic word problems from a seeded generator. Found nowhere in the
  corpus: a clean benchmark (no flags expected).
- `reading.jsonl`: reading-comprehension items whose passage is a paragraph of a sample page, quoted
  verbatim (planted leaks the 13-gram rule must find), plus items built around the line that occurs on
  the most sample pages (boilerplate: on the allowlist, so those must not flag anything by themselves).
- `cloze.parquet`: short fill-in sentences (9-12 words) cut from sample pages: too short for a 13-gram,
  caught by the 7-gram overlap rule.

Run: python scripts/build_benchmarks.py [--sample data/sample] [--out data/benchmarks]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from phiflow.recipe import CommonCrawlExtractParams
from phiflow.records.ngrams import words
from phiflow.records.warc_records import iter_rows

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = "CC-MAIN-2024-10"  # leaks are taken from the first demo snapshot
NAMES = ["Ada", "Bela", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun"]
THINGS = ["apples", "stamps", "marbles", "books", "seeds", "coins", "shells", "pencils"]


def sample_pages(sample: Path) -> list[tuple[str, str]]:
    """(url, text) of every kept page of the snapshot, in listing order."""
    listing = sample / "crawl-data" / SNAPSHOT / "warc.paths.gz"
    pages = []
    for rel in gzip.decompress(listing.read_bytes()).decode().split():
        path = sample / rel
        with path.open("rb") as fh:
            for row in iter_rows(fh, str(path), "web", CommonCrawlExtractParams()):
                if row.get("drop_reason") is None and row.get("text"):
                    pages.append((row["url"], row["text"]))
    return pages


def with_choices(row: dict, context: str, right: str, wrong: list[str]) -> dict:
    """Multiple-choice fields (the ablation evaluation scores them): the right continuation among
    distractors, in an order seeded by the item id (the shared generator is not touched, so the other
    fields stay what they were)."""
    choices = [right, *wrong]
    random.Random(row["id"]).shuffle(choices)
    return {**row, "mc_context": context, "mc_choices": choices, "mc_answer": choices.index(right)}


def arith(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        a, b, c = rng.randint(3, 90), rng.randint(2, 40), rng.randint(2, 9)
        who, other, thing = rng.choice(NAMES), rng.choice(NAMES), rng.choice(THINGS)
        q = (f"{who} has {a} {thing}. {other} gives {who} {b} more, and then {who} shares them equally "
             f"among {c} friends, keeping the remainder. How many {thing} does each friend receive, "
             f"and how many does {who} keep?")
        each, kept = divmod(a + b, c)
        row = {"id": f"arith-{i:03d}", "question": q, "answer": f"{each} each, {kept} kept"}
        near = [(each + 1, kept), (max(each - 1, 0) if each > 1 else each + 2, kept), (each, (kept + 1) % c or c)]
        out.append(with_choices(row, q + "\nAnswer:", f" {each} each, {kept} kept",
                                [f" {e} each, {k} kept" for e, k in near]))
    return out


def paragraphs(pages: list[tuple[str, str]], lo: int, hi: int) -> list[tuple[str, str]]:
    """(url, line) of lines with lo..hi words, English Python-docs and Debian-guide pages alike."""
    return [(u, line.strip()) for u, t in pages for line in t.split("\n") if lo <= len(words(line)) <= hi]


def boilerplate(pages: list[tuple[str, str]]) -> str:
    """The line of >= 13 words found on the most pages (navigation, licence footers)."""
    seen = Counter(line.strip() for _, t in pages for line in set(t.split("\n")) if len(words(line)) >= 13)
    return max(sorted(seen), key=lambda line: seen[line])


def reading(rng: random.Random, pages: list[tuple[str, str]], n_leaks: int) -> list[dict]:
    paras = paragraphs(pages, 40, 120)
    out = [{"id": f"reading-{i:03d}", "passage": p, "question": "What is the main point of the passage above?",
            "source_url": u} for i, (u, p) in enumerate(rng.sample(paras, n_leaks))]
    common = boilerplate(pages)
    for j in range(3):  # a fresh question around a common phrase: must not flag pages for the phrase alone
        who, thing = NAMES[j], THINGS[j]
        out.append({"id": f"reading-common-{j}", "passage": f"{who} read this note about {thing}: {common}",
                    "question": f"Why would {who} copy the line above into a letter about {thing}?", "source_url": ""})
    return out


def cloze(rng: random.Random, pages: list[tuple[str, str]], n: int) -> list[dict]:
    lines = paragraphs(pages, 9, 12)
    out = []
    for i, (u, line) in enumerate(rng.sample(lines, n)):
        toks = line.split()
        k = rng.randrange(len(toks))
        out.append({"id": f"cloze-{i:03d}", "text": " ".join(toks), "blank_index": k, "answer": toks[k],
                    "source_url": u})
    for row in out:  # distractors: the other items' blanked words, in a fixed order
        toks, k = row["text"].split(), row["blank_index"]
        others = [o["answer"] for o in out[1:] + out[:1] if o["answer"] != row["answer"]]
        others = list(dict.fromkeys(others))[(int(row["id"][-3:]) % 5):][:3]
        rest = " ".join(toks[k + 1 :])
        row.update(with_choices(row, " ".join(toks[:k]), f" {toks[k]} {rest}".rstrip(),
                                [f" {w} {rest}".rstrip() for w in others]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=Path, default=ROOT / "data" / "sample")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "benchmarks")
    a = ap.parse_args()
    rng = random.Random(20241212)
    pages = sample_pages(a.sample)
    a.out.mkdir(parents=True, exist_ok=True)
    sets = {"arith.jsonl": arith(rng, 60), "reading.jsonl": reading(rng, pages, 12)}
    for name, rows in sets.items():
        (a.out / name).write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    rows = cloze(rng, pages, 16)
    pq.write_table(pa.Table.from_pylist(rows), a.out / "cloze.parquet", compression="zstd")
    print(f"wrote {a.out}: " + ", ".join(f"{k} ({len(v)} items)" for k, v in {**sets, "cloze.parquet": rows}.items()))


if __name__ == "__main__":
    main()
