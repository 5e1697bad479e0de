"""Decontamination: planted benchmark leaks (verbatim and lightly edited), the allowlist of common
phrases, the short-item 7-gram rule, and the Spark stage's committed report and clean partition."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phiflow.recipe import parse_recipe
from phiflow.records.ngrams import BenchmarkIndex, Item, present, text_ngrams
from phiflow.schema import LANGID_FIELDS, WEB_EXTRACTED, with_drop_reason, with_fields
from phiflow.storage import Lake
from spark_jobs import decontaminate
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema

SNAP = {"snapshot": "CC-MAIN-2024-10"}
RNG_VOCAB = [f"w{i}" for i in range(100_000)]
COMMON = "this page is part of the free manual and may be copied and shared under the terms of its licence"


def prose(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(RNG_VOCAB, n))


def items(rng: np.random.Generator, k: int, length: int = 40) -> list[Item]:
    return [Item("bench", f"q{i}", prose(rng, length)) for i in range(k)]


def edit(rng: np.random.Generator, text: str, every: int) -> str:
    """Replace one word in each run of `every` words (at a random place in the run)."""
    toks = text.split()
    for start in range(0, len(toks), every):
        toks[min(start + int(rng.integers(every)), len(toks) - 1)] = "edited"
    return " ".join(toks)


def test_every_verbatim_leak_is_found_and_clean_documents_are_not() -> None:
    rng = np.random.default_rng(3)
    bench = items(rng, 50)
    index = BenchmarkIndex(bench, 13, 7, 0.5)
    leaks = [f"{prose(rng, 200)} {it.text} {prose(rng, 100)}" for it in bench]
    found = [index.match(doc) for doc in leaks]
    for fl, it in zip(found, bench, strict=True):
        assert [(f.item_id, f.rule) for f in fl] == [(it.item_id, "ngram13")]
    assert found[0][0].matched[0] == " ".join(bench[0].text.split()[:13]) and found[0][0].matched_count == 40 - 12
    assert not any(index.match(prose(rng, 300)) for _ in range(200))


def test_lightly_edited_leaks_are_measured() -> None:
    """Detection of leaks with one word in every k replaced: reported per rule; a 13-gram survives
    only when k > 13, the 7-gram share falls with k; the measured rates are printed for the record."""
    rng = np.random.default_rng(4)
    bench = items(rng, 60)
    index = BenchmarkIndex(bench, 13, 7, 0.5)
    rates = {}
    for every in (40, 20, 14, 10, 7, 4):
        rules = [[f.rule for f in index.match(f"{prose(rng, 50)} {edit(rng, it.text, every)}")
                  if f.item_id == it.item_id] for it in bench]
        rates[every] = (np.mean([bool(r) for r in rules]), np.mean([r == ["ngram13"] for r in rules]))
    table = {k: tuple(round(float(x), 2) for x in v) for k, v in rates.items()}
    print("edit every k words -> (detected, by 13-gram):", table)
    assert rates[40][0] == 1.0 and rates[20][0] == 1.0
    assert rates[7][1] == 0.0 and rates[4] == (0.0, 0.0)  # no 13-gram left; 7-gram share below 0.5
    detected = [rates[k][0] for k in (40, 20, 14, 10, 7, 4)]
    assert detected == sorted(detected, reverse=True)


def allowlist_from(reference: list[str], bench: list[Item], min_docs: int) -> np.ndarray:
    """The stage's allowlist rule, without Spark: benchmark n-grams in >= min_docs reference documents."""
    out = []
    for n in (13, 7):
        cands = np.unique(np.concatenate([text_ngrams(it.text, n) for it in bench]))
        grams, counts = np.unique(np.concatenate([present(d, n, cands) for d in reference]), return_counts=True)
        out.append(grams[counts >= min_docs])
    return np.concatenate(out)


def test_shared_common_phrases_do_not_flag_a_clean_corpus() -> None:
    rng = np.random.default_rng(5)
    bench = [Item("bench", f"c{i}", f"{prose(rng, 8)} {COMMON} {prose(rng, 30)}") for i in range(20)]
    reference = [f"{prose(rng, 60)} {COMMON} {prose(rng, 60)}" for _ in range(30)]
    corpus = [f"{prose(rng, 80)} {COMMON} {prose(rng, 80)}" for _ in range(100)]
    allow = allowlist_from(reference, bench, min_docs=10)
    assert set(np.unique(allow)) == set(text_ngrams(COMMON, 13)) | set(text_ngrams(COMMON, 7))
    with_allow = BenchmarkIndex(bench, 13, 7, 0.5, allowlist=allow)
    assert not any(with_allow.match(doc) for doc in corpus)
    without = BenchmarkIndex(bench, 13, 7, 0.5)  # control: the same corpus is flagged without the allowlist
    assert all(without.match(doc) for doc in corpus)
    leak = f"{prose(rng, 50)} {bench[3].text}"  # a real leak still flags through the allowlisted phrase
    assert [(f.item_id, f.rule) for f in with_allow.match(leak)] == [("c3", "ngram13")]


def test_short_items_are_caught_by_the_overlap_rule() -> None:
    rng = np.random.default_rng(6)
    short = Item("quiz", "s1", prose(rng, 10))  # 10 words: no 13-gram, four 7-grams
    index = BenchmarkIndex([short], 13, 7, 0.5)
    [flag] = index.match(f"{prose(rng, 30)} {short.text} {prose(rng, 30)}")
    assert (flag.rule, flag.overlap, flag.matched_count) == ("ngram7_overlap", 1.0, 4)
    half = " ".join(short.text.split()[:8])  # two of the four 7-grams
    assert index.match(half)[0].overlap == 0.5
    assert not BenchmarkIndex([short], 13, 7, 0.75).match(half)


# -- the Spark stage ------------------------------------------------------------------------------------
LANGID = with_fields(WEB_EXTRACTED, LANGID_FIELDS)


@pytest.mark.spark
def test_stage_commits_clean_report_and_allowlist(spark, test_recipe, tmp_path) -> None:
    rng = np.random.default_rng(7)
    leak_items = [{"id": f"r{i}", "question": prose(rng, 30), "answer": prose(rng, 3)} for i in range(5)]
    common_items = [{"id": f"c{i}", "question": f"{COMMON} {prose(rng, 20)}", "answer": "x"} for i in range(3)]
    # An item copied all over the corpus that is its own allowlist reference: common there, and a leak.
    wide = {"id": "w0", "question": prose(rng, 30), "answer": "y"}
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*leak_items, *common_items, wide]))
    pq.write_table(pa.table({"key": ["k0"], "body": [prose(rng, 9)]}), tmp_path / "short.parquet")
    short = pq.read_table(tmp_path / "short.parquet").to_pylist()[0]["body"]
    texts = [f"{prose(rng, 40)} {COMMON} {prose(rng, 40)}" for _ in range(30)]  # 30 clean pages share COMMON
    texts += [f"{prose(rng, 40)} {r['question']} {prose(rng, 10)}" for r in leak_items]  # verbatim leaks
    texts += [f"{prose(rng, 20)} {short} {prose(rng, 20)}"]
    texts += [f"{prose(rng, 30)} {wide['question']} {prose(rng, 30)}" for _ in range(12)]  # d036..d047
    rows = [{"doc_id": f"d{i:03d}", "source": "web", "source_uri": f"warc://{i}", "parent_ids": [],
             "url": f"https://ex.org/{i}", "fetch_time": datetime(2024, 2, 20, tzinfo=UTC), "http_status": 200,
             "content_type": "text/html", "charset": "utf-8", "title": "", "text": t, "html_bytes": 0,
             "text_chars": len(t), "language": "en", "language_score": 0.9}
            for i, t in enumerate(texts)]
    data = test_recipe.model_dump(mode="json", exclude={"path"})
    data["stages"]["decontaminate"] = {
        "input": "langid", "allowlist_references": ["web.langid"], "allowlist_min_docs": 10,
        "benchmarks": [
            {"name": "qa", "path": str(tmp_path / "qa.jsonl"), "text_fields": ["question", "answer"]},
            {"name": "short", "path": str(tmp_path / "short.parquet"), "format": "parquet", "id_field": "key",
             "text_fields": ["body"]}]}
    recipe = parse_recipe(data)
    lake = Lake(str(tmp_path / "lake"))
    ctx = StageContext(recipe=recipe, source="web", partition=dict(SNAP), lake=lake)
    df = spark.createDataFrame(rows, spark_schema(with_drop_reason(LANGID)))
    commit_partition(spark, ctx, stage="langid", dataset="web.langid", rows=df, schema=LANGID, inputs=[], counters={},
                     reasons={})
    m = decontaminate.run(spark, ctx)
    report = lake.read_table(lake.require("web.contamination", SNAP)).to_pylist()
    got = sorted((r["doc_id"], r["benchmark"], r["item_id"], r["rule"]) for r in report)
    leaks = [(f"d{30 + i:03d}", "qa", f"r{i}", "ngram13") for i in range(5)]
    widespread = [(f"d{36 + i:03d}", "qa", "w0", "ngram13") for i in range(12)]  # not allowlisted (issue 18.18)
    assert got == [*leaks, ("d035", "short", "k0", "ngram7_overlap"), *widespread]
    assert all(r["matched_ngrams"] and r["matched_ngrams"][0] in texts[int(r["doc_id"][1:])] for r in report)
    kept = set(lake.read_table(m, columns=["doc_id"]).column("doc_id").to_pylist())
    assert kept == {f"d{i:03d}" for i in range(30)}
    assert m.counters["dropped"] == {"contaminated_ngram13": 17, "contaminated_ngram7_overlap": 1}
    allow = lake.require("web.ngram_allowlist", SNAP)
    assert allow.row_count == len(text_ngrams(COMMON, 13)) + len(text_ngrams(COMMON, 7))
    assert m.counters["allowlist_digest"] == allow.digest and allow.input_ref() in m.inputs
    assert {i.partition["name"] for i in m.inputs if i.dataset == "external:benchmark"} == {"qa", "short"}
