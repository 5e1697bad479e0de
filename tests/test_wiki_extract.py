"""wikipedia_extract on the sample multistream dumps: every page accounted for by reason, broken
pages and a truncated stream skipped without losing their neighbours, clean text, stable ids,
the same rows on any split of the streams, and the failure budget."""

from __future__ import annotations

from collections import Counter

import pytest
from wiki_fixtures import EXPECTED, WIKI, wiki_recipe

from phiflow.intervals import source_partitions
from phiflow.storage import Lake
from spark_jobs import wikipedia_extract
from spark_jobs.engine.stage_io import StageContext

pytestmark = pytest.mark.spark


def ctx(recipe, lake: Lake, dump: str, **airflow) -> StageContext:
    return StageContext(recipe=recipe, source="wiki", partition={"dump": dump}, lake=lake, airflow=airflow)


def by_prefix(dropped: dict[str, int]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for reason, n in dropped.items():
        out[reason.split(":")[0]] += n
    return dict(out)


@pytest.fixture(scope="module")
def extracted(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wiki")
    recipe = wiki_recipe(tmp / "recipe.yaml", {"wikipedia_extract": {"min_text_chars": 0, "failure_budget": 0.5}})
    lake = Lake(str(tmp / "lake"))
    return (
        recipe,
        lake,
        {d: wikipedia_extract.run(spark, ctx(recipe, lake, f"{d}-20240601", run_id="a")) for d in EXPECTED["dumps"]},
    )


def test_every_page_is_kept_or_counted_by_reason(extracted) -> None:
    _, lake, manifests = extracted
    for wiki, m in manifests.items():
        exp = EXPECTED["dumps"][wiki]
        assert m.counters["read"] == exp["pages"] == m.counters["index_pages"], wiki
        assert m.row_count == exp["articles"], wiki
        assert by_prefix(m.counters["dropped"]) == exp["dropped"], wiki
        assert m.counters["language"] == exp["language"] and m.counters["streams"] == exp["page_streams"]
        table = lake.read_table(m)
        assert len(set(table.column("doc_id").to_pylist())) == m.row_count
        assert set(table.column("language").to_pylist()) == {exp["language"]}


def test_dropped_pages_are_kept_beside_by_title(extracted) -> None:
    """recipe.rejected (the demo's fraction 1.0): every dropped page with an identity is in
    wiki.extracted.rejected; the pages of a corrupt stream have none (only their count is known)."""
    _, lake, manifests = extracted
    for wiki, m in manifests.items():
        rows = lake.read_table(lake.require("wiki.extracted.rejected", m.partition)).to_pylist()
        got = Counter(r["reason"] for r in rows)
        page_level = {r: n for r, n in m.counters["dropped"].items() if not r.endswith("_stream")}
        assert dict(got) == page_level, wiki
        assert all(r["page"] and r["stage"] == "wikipedia_extract" for r in rows)
    (redirect, *_) = [r for r in lake.read_table(lake.require("wiki.extracted.rejected", {"dump": "enwiki-20240601"}))
                      .to_pylist() if r["reason"] == "redirect"]
    assert redirect["excerpt"] is None or len(redirect["excerpt"]) <= 200


def test_a_corrupt_stream_loses_only_its_pages(extracted) -> None:
    _, lake, manifests = extracted
    titles = set(lake.read_table(manifests["enwiki"], columns=["title"]).column("title").to_pylist())
    lost = EXPECTED["dumps"]["enwiki"]["lost_in_corrupt_stream"]
    assert lost and not titles & set(lost)
    offsets = set(lake.read_table(manifests["enwiki"], columns=["stream_offset"]).column("stream_offset").to_pylist())
    assert len(offsets) == 2  # the streams before and after the cut one both delivered their pages


def test_clean_text_keeps_prose_math_and_code_and_drops_markup(extracted) -> None:
    _, lake, manifests = extracted
    rows = {r["title"]: r for r in lake.read_table(manifests["enwiki"]).to_pylist()}
    for r in rows.values():
        assert "{{" not in r["text"] and "<ref" not in r["text"] and "[[" not in r["text"]
        assert "[[Category:" not in r["text"] and "Reflist" not in r["text"]
    stats = next(t for t in rows if t.startswith("statistics"))
    assert r"$$\bar{x} = \frac{1}{n}\sum_{i=1}^{n} x_i$$" in rows[stats]["text"]
    assert any("```python" in r["text"] or "```pycon" in r["text"] for r in rows.values())
    assert any("```console" in r["text"] for r in rows.values())
    assert all(r["source_uri"].startswith("https://en.wikipedia.org/w/index.php?curid=") for r in rows.values())


def test_ids_trace_to_the_revision(extracted) -> None:
    import json

    from phiflow.ids import doc_id

    _, lake, manifests = extracted
    labels = [json.loads(x) for x in (WIKI / "labels.jsonl").read_text().splitlines()]
    ja = {(r["page_id"], r["revision_id"]): r["doc_id"] for r in lake.read_table(manifests["jawiki"]).to_pylist()}
    for lab in (x for x in labels if x["wiki"] == "jawiki"):
        assert ja[(lab["page_id"], lab["rev_id"])] == doc_id("wiki", f"jawiki:{lab['page_id']}:{lab['rev_id']}")


def test_rows_do_not_depend_on_how_streams_are_split(spark, extracted, tmp_path) -> None:
    _recipe, lake, manifests = extracted
    other = wiki_recipe(
        tmp_path / "r.yaml", {"wikipedia_extract": {"min_text_chars": 0, "failure_budget": 0.5, "streams_per_task": 3}}
    )
    m = wikipedia_extract.run(spark, ctx(other, lake, "enwiki-20240601", run_id="b"))
    assert m.counters["tasks"] == 1 and manifests["enwiki"].counters["tasks"] == 3
    assert m.content_digest == manifests["enwiki"].content_digest and m.attempt != manifests["enwiki"].attempt


def test_failure_budget_blocks_the_commit(spark, tmp_path) -> None:
    recipe = wiki_recipe(tmp_path / "r.yaml", {"wikipedia_extract": {"failure_budget": 0.1}})
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(wikipedia_extract.FailureBudgetExceeded, match="corrupt_stream"):
        wikipedia_extract.run(spark, ctx(recipe, lake, "enwiki-20240601"))
    assert lake.manifest("wiki.extracted", {"dump": "enwiki-20240601"}) is None


def test_interval_maps_to_dumps(tmp_path) -> None:
    from datetime import UTC, datetime

    src = wiki_recipe(tmp_path / "r.yaml").source("wiki")
    june = source_partitions(src, datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
    assert sorted(p["dump"] for p in june) == sorted(f"{w}-20240601" for w in EXPECTED["dumps"])
    assert source_partitions(src, datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)) == []
    assert source_partitions(src, None, None, "dewiki-20240601") == [{"dump": "dewiki-20240601"}]
