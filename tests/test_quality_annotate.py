"""quality_annotate through the scripted LLM server on the sample crawl, then quality_train on its
annotations and quality with the trained model; and the answer parser on its own.

The server answers by the document's origin (Python docs: grade 4, stem; installation guide: grade
1, society) in several shapes, and malformed for a known subset, so every count by reason is known
without running the parser."""

from __future__ import annotations

import pytest
from llm_server import LLMTestServer

from phiflow.recipe import TOPICS, parse_recipe
from phiflow.records.annotation_prompts import (
    GRADE_OUT_OF_RANGE,
    UNKNOWN_TOPIC,
    UNPARSEABLE,
    excerpt,
    messages,
    parse_answer,
    sample_rank,
)
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, langid, quality, quality_annotate, quality_train
from spark_jobs.engine.stage_io import StageContext

SNAP = {"snapshot": "CC-MAIN-2024-10"}
SAMPLE = 200
MAX_CHARS = 1000


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Grade: 4\nTopic: history", (4, "history", None)),
        ("4, History.", (4, "history", None)),
        ("**Grade:** 3/5 - Topic: Arts", (3, "arts", None)),
        ("topic: travel grade: 1", (1, "travel", None)),
        ("5 science", (5, "stem", None)),  # a STEM word stands for the stem topic
        ("Grade 0. Topic: Mathematics", (0, "stem", None)),
        ("4. other", (4, "other", None)),
        ("Grade: 3.5\nTopic: stem", (None, None, UNPARSEABLE)),  # not a grade digit
        ("I cannot grade this document.", (None, None, UNPARSEABLE)),
        ("", (None, None, UNPARSEABLE)),
        (None, (None, None, UNPARSEABLE)),
        ("Grade: 7\nTopic: stem", (None, None, GRADE_OUT_OF_RANGE)),
        ("Grade: 10", (None, None, GRADE_OUT_OF_RANGE)),
        ("Grade: 2\nTopic: cooking", (None, None, UNKNOWN_TOPIC)),
    ],
)
def test_parse_answer(answer, expected) -> None:
    assert parse_answer(answer, TOPICS) == expected


def test_prompt_and_excerpt() -> None:
    msgs = messages("some text", ["stem", "arts"])
    assert "stem, arts" in msgs[0]["content"] and msgs[-1]["content"].endswith("some text")
    assert excerpt("word " * 100, 42) == ("word " * 8).strip()  # cut at a word boundary
    assert excerpt("  short  ", 42) == "short"
    assert sample_rank("a", 0) == sample_rank("a", 0) != sample_rank("a", 1)


def variant(doc_id: str) -> int:
    return int(doc_id[-2:], 16) % 10


def scripted(origin: dict[str, str]):
    """Answers by origin in three shapes; variant 7/8/9 documents get an answer that must be dropped."""

    def answer(body: dict, i: int) -> str:
        doc = origin[body["messages"][-1]["content"]]
        python = doc.startswith("python")
        v = variant(doc.split(":", 1)[1])
        return [
            "Grade: 4\nTopic: stem" if python else "Grade: 1\nTopic: society",
            "4, Science." if python else "1 - society",
            "**Grade:** 4/5 Topic: STEM" if python else "**Grade:** 1/5 Topic: Society",
            "I am not sure.",
            "Grade: 9",
            "Grade: 2\nTopic: cooking",
        ][v % 3 if v < 7 else v - 4]

    return answer


@pytest.mark.spark
def test_annotate_train_and_score_with_cached_rerun(spark, test_recipe, tmp_path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    ctx0 = StageContext(recipe=test_recipe, source="web", partition=dict(SNAP), lake=lake)
    commoncrawl_extract.run(spark, ctx0)
    pages = langid.run(spark, ctx0)
    docs = lake.read_table(pages, columns=["doc_id", "url", "text"]).to_pylist()
    # the sample, computed here from the definition: the SAMPLE lowest seeded ranks of doc_id
    expected = sorted(docs, key=lambda d: (sample_rank(d["doc_id"], 7), d["doc_id"]))[:SAMPLE]
    assert len(expected) == SAMPLE < len(docs)
    origin = {
        f"Document:\n{excerpt(d['text'], MAX_CHARS)}": ("python:" if "docs.python.org" in d["url"] else "guide:")
        + d["doc_id"]
        for d in expected
    }
    want_drops = {
        reason: sum(variant(d["doc_id"]) == v for d in expected)
        for v, reason in ((7, UNPARSEABLE), (8, GRADE_OUT_OF_RANGE), (9, UNKNOWN_TOPIC))
    }
    kept = [d for d in expected if variant(d["doc_id"]) < 7]
    with LLMTestServer(answer=scripted(origin)) as srv:
        data = test_recipe.model_dump(mode="json")
        data["llm"]["backoff_s"] = 0.01  # the recipe's llm section still supplies cache and retries
        data["stages"]["quality_annotate"] = {
            "backend": "openai", "model": "scripted", "base_url": srv.base_url, "max_concurrency": 4,
            "sample_size": SAMPLE, "max_chars": MAX_CHARS, "max_tokens": 8, "seed": 7,
        }  # fmt: skip
        data["stages"]["quality_train"] = {"holdout_fraction": 0.3}
        data["stages"]["quality"].update(
            classifier="edu-v1", keep_fraction=0.1, non_stem_quota=0.0, max_chars=MAX_CHARS
        )
        recipe = parse_recipe(data, test_recipe.path)
        ctx = StageContext(recipe=recipe, source="web", partition=dict(SNAP), lake=lake)

        first = quality_annotate.run(spark, ctx)
        # the server saw exactly the sample's excerpts, each once, with the short output limit
        assert sorted(b["messages"][-1]["content"] for b in srv.bodies) == sorted(origin)
        assert {b["max_tokens"] for b in srv.bodies} == {8} and {b["model"] for b in srv.bodies} == {"scripted"}
        c = first.counters
        assert first.dataset == "web.annotations" and first.partition == SNAP
        assert first.inputs[0].digest == pages.digest
        assert c["read"] == len(docs) and c["sampled"] == SAMPLE
        assert c["dropped"] == {k: v for k, v in want_drops.items() if v}
        assert c["annotated"] == first.row_count == len(kept)
        assert c["llm_requests"] == SAMPLE and c["llm_cache_hits"] == 0
        n_python = sum("docs.python.org" in d["url"] for d in kept)
        assert c["topics"] == {k: v for k, v in {"stem": n_python, "society": len(kept) - n_python}.items() if v}
        assert c["grades"] == {k: v for k, v in {"4": n_python, "1": len(kept) - n_python}.items() if v}
        rows = {r["doc_id"]: r for r in lake.read_table(first).to_pylist()}
        assert set(rows) == {d["doc_id"] for d in kept}
        for d in kept:
            r = rows[d["doc_id"]]
            assert r["text"] == excerpt(d["text"], MAX_CHARS) and r["model"] == "scripted"
            assert (r["grade"], r["topic"]) == ((4, "stem") if "docs.python.org" in d["url"] else (1, "society"))
        served = sum(srv.served.values())

        again = quality_annotate.run(spark, ctx)
        assert sum(srv.served.values()) == served  # nothing asked twice
        assert again.counters["llm_cache_hits"] == again.counters["llm_requests"] == SAMPLE
        assert again.content_digest == first.content_digest and again.attempt != first.attempt

    tr = quality_train.run(spark, StageContext(recipe, "web", {"model": "edu-v1"}, lake))
    assert tr.inputs[0].digest == again.digest and tr.counters["read"] == len(kept)
    assert all(m["auc"] >= 0.8 for m in tr.counters["metrics"].values()), tr.counters["metrics"]
    q = quality.run(spark, ctx)
    assert {i.digest for i in q.inputs} == {pages.digest, tr.digest}
    scored = lake.read_table(q, columns=["url", "selected_by"]).to_pylist()
    top = [r for r in scored if r["selected_by"] == "top_fraction"]
    assert top and q.counters["selected_by"] == {"top_fraction": len(top)}
    # the model learnt the annotations: the kept top fraction is Python docs
    assert sum("docs.python.org" in r["url"] for r in top) / len(top) >= 0.9
