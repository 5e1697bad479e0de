"""`<dataset>.rejected`: the rows a stage drops are kept beside its output (all of them or a share chosen
by doc_id), written in the stage's one pass, committed before the output, rolled up with a sharded
snapshot, and shown by `phiflow trace`; the output itself does not change."""

from __future__ import annotations

from collections import Counter

import pytest

from phiflow.dashboard import build_from_lake, render
from phiflow.recipe import Recipe, RejectedSpec
from phiflow.storage import Lake
from phiflow.trace import trace
from spark_jobs import commoncrawl_extract, langid
from spark_jobs.engine.rejected import REASON_DIR
from spark_jobs.engine.stage_io import StageContext, content_digest

pytestmark = pytest.mark.spark
SNAP = {"snapshot": "CC-MAIN-2024-10"}
BROKEN_SNAP = {"snapshot": "CC-MAIN-BROKEN"}


def with_rejected(recipe: Recipe, fraction: float, **stages: float) -> Recipe:
    return recipe.model_copy(update={"rejected": RejectedSpec(fraction=fraction, excerpt_chars=50, stages=stages)})


def run(module, spark, recipe: Recipe, lake: Lake, source: str, partition: dict):
    """The stage over every shard: a changed `rejected` alone does not make a committed shard stale."""
    ctx = StageContext(recipe=recipe, source=source, partition=dict(partition), lake=lake, shards="all")
    return module.run(spark, ctx)


def reasons(lake: Lake, dataset: str, partition: dict) -> Counter:
    return Counter(lake.read_table(lake.require(dataset, partition), columns=["reason"]).column("reason").to_pylist())


def no_reason_folders(lake: Lake, dataset: str, partition: dict) -> bool:
    m = lake.require(dataset, partition)
    return not any(REASON_DIR in f.path and "__HIVE_DEFAULT_PARTITION__" not in f.path for f in m.files)


def test_extraction_keeps_every_dropped_page_beside_an_unchanged_output(spark, test_recipe, tmp_path) -> None:
    on, off = Lake(str(tmp_path / "on")), Lake(str(tmp_path / "off"))
    m = run(commoncrawl_extract, spark, with_rejected(test_recipe, 1.0), on, "broken", BROKEN_SNAP)
    m0 = run(commoncrawl_extract, spark, with_rejected(test_recipe, 0.0), off, "broken", BROKEN_SNAP)
    # the output is the same rows whether or not the dropped ones were written beside it
    assert (m.row_count, m.content_digest) == (m0.row_count, m0.content_digest)
    assert m.counters["dropped"] == m0.counters["dropped"]
    assert "broken.extracted.rejected" not in off.datasets()
    assert no_reason_folders(on, "broken.extracted", BROKEN_SNAP)

    side = on.require("broken.extracted.rejected", BROKEN_SNAP)
    got = reasons(on, "broken.extracted.rejected", BROKEN_SNAP)
    # every page-level drop is there, counted as the manifest counts it (a record the reader could not
    # get past has no doc_id: it is in files.lost_records instead)
    for reason in ("binary_payload", "empty_payload", "too_little_text", "http_404", "http_301", "too_large"):
        assert got[reason] == m.counters["dropped"][reason], (reason, got)
    assert all(got[r] <= n for r, n in m.counters["dropped"].items())
    assert side.counters["sampled"] == dict(got) and side.counters["read"] == sum(m.counters["dropped"].values())
    assert side.counters["shards"]["total"] == m.counters["shards"]["total"] == 2  # rolled up like the output
    rows = on.read_table(side).to_pylist()
    assert {r["stage"] for r in rows} == {"commoncrawl_extract"}
    assert all(r["url"].startswith("http") for r in rows)
    assert all(len(r["excerpt"] or "") <= 50 for r in rows)
    kept = set(on.read_table(m, columns=["doc_id"]).column("doc_id").to_pylist())
    assert kept.isdisjoint(r["doc_id"] for r in rows) and len({r["doc_id"] for r in rows}) == len(rows)
    (too_large,) = [r for r in rows if r["reason"] == "too_large"]
    lines = trace(on, too_large["doc_id"])  # never kept by any stage: walked from its rejected row
    assert lines[0] == too_large["doc_id"]
    assert lines[1].split()[0] == "broken.extracted.rejected/snapshot=CC-MAIN-BROKEN"
    assert "dropped by commoncrawl_extract: too_large" in lines[-2] and too_large["url"] in lines[-1]
    (short,) = [r for r in rows if r["reason"] == "too_little_text"]
    assert short["url"] and len(short["excerpt"] or "") < test_recipe.stages.commoncrawl_extract.min_text_chars


@pytest.fixture(scope="module")
def extracted(spark, test_recipe, tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    run(commoncrawl_extract, spark, with_rejected(test_recipe, 0.0), lake, "web", SNAP)
    return lake


def english_only(recipe: Recipe, fraction: float) -> Recipe:
    stages = recipe.stages.model_copy(update={"langid": recipe.stages.langid.model_copy(
        update={"keep_languages": ["en"]})})
    return with_rejected(recipe, 0.0, langid=fraction).model_copy(update={"stages": stages})


def test_a_share_of_the_drops_is_the_same_documents_on_every_run(spark, test_recipe, extracted) -> None:
    lake = extracted
    whole = run(langid, spark, english_only(test_recipe, 1.0), lake, "web", SNAP)
    dropped = whole.counters["dropped"]["language_not_kept"]
    assert dropped >= 40  # most of the sample's pages are not English
    every = set(lake.read_table(lake.require("web.langid.rejected", SNAP)).column("doc_id").to_pylist())
    assert len(every) == dropped
    extracted_ids = set(lake.read_table(lake.require("web.extracted", SNAP), columns=["doc_id"])
                        .column("doc_id").to_pylist())
    assert every <= extracted_ids
    assert reasons(lake, "web.langid.rejected", SNAP) == Counter({"language_not_kept": dropped})
    excerpts = lake.read_table(lake.require("web.langid.rejected", SNAP)).column("excerpt").to_pylist()
    assert max(map(len, excerpts)) == 50  # whole pages, cut to excerpt_chars

    half = run(langid, spark, english_only(test_recipe, 0.5), lake, "web", SNAP)
    assert half.content_digest == whole.content_digest  # the output does not depend on the sample
    first = set(lake.read_table(lake.require("web.langid.rejected", SNAP)).column("doc_id").to_pylist())
    assert first < every and 0.25 * dropped <= len(first) <= 0.75 * dropped  # replaced whole, not appended
    run(langid, spark, english_only(test_recipe, 0.5), lake, "web", SNAP)
    again = set(lake.read_table(lake.require("web.langid.rejected", SNAP)).column("doc_id").to_pylist())
    assert again == first


def test_trace_says_which_stage_dropped_a_document_and_why(spark, test_recipe, extracted) -> None:
    lake = extracted
    run(langid, spark, english_only(test_recipe, 1.0), lake, "web", SNAP)
    row = lake.read_table(lake.require("web.langid.rejected", SNAP)).to_pylist()[0]
    lines = trace(lake, row["doc_id"])
    text = "\n".join(lines)
    # found where it was last kept (extraction), then why it is gone
    assert lines[0] == row["doc_id"] and lines[1].split()[0] == "web.extracted/snapshot=CC-MAIN-2024-10"
    assert "dropped by langid: language_not_kept  (web.langid.rejected/snapshot=CC-MAIN-2024-10" in text
    assert row["url"] in lines[-1]


def test_the_dashboard_shows_each_reason_with_examples_from_the_manifest(spark, test_recipe, extracted) -> None:
    lake = extracted
    m = run(langid, spark, english_only(test_recipe, 1.0), lake, "web", SNAP)
    side = lake.require("web.langid.rejected", SNAP)
    d = build_from_lake(lake)
    rep = d.rejected["web.langid.rejected"]
    n = m.counters["dropped"]["language_not_kept"]
    assert (rep["stage"], rep["kept"], rep["dropped"], rep["fraction"]) == ("langid", n, n, 1.0)
    examples = rep["reasons"]["language_not_kept"]["examples"]
    urls = dict(zip(*lake.read_table(side, columns=["doc_id", "url"]).to_pydict().values(), strict=True))
    assert len(examples) == 3 and all(urls[x["doc_id"]] == x["url"] for x in examples)
    assert side.counters["shards"]["total"] == 2 and len(side.counters["examples"]["language_not_kept"]) == 6
    # the digest and examples were taken while the rows were written: they are the written rows'
    assert content_digest(spark.read.parquet(*lake.data_files(side))) == (side.row_count, side.content_digest)
    ex = [x["doc_id"] for x in side.counters["examples"]["language_not_kept"]]  # 3 per shard, smallest first
    assert set(ex) <= set(urls) and all(ex[i] < ex[i + 1] for i in (0, 1, 3, 4))
    page = render(d)
    assert f"data-testid='rejected:web.langid.rejected:language_not_kept'>{n}<" in page
    assert page.count("data-testid='rejected-example:web.langid.rejected:language_not_kept'") == 3


def test_recipe_names_only_real_stages() -> None:
    with pytest.raises(ValueError, match="no such stage"):
        RejectedSpec(stages={"qualiti": 1.0})
    assert RejectedSpec(fraction=0.01, stages={"decontaminate": 1.0}).fraction_for("decontaminate") == 1.0
    assert RejectedSpec(fraction=0.01).fraction_for("langid") == 0.01


def test_the_python_extraction_path_cuts_dropped_text_before_the_jvm() -> None:
    import pyarrow as pa

    from spark_jobs.engine.rejected import cut_dropped_text

    batch = pa.RecordBatch.from_pydict({"text": ["x" * 500, "é" * 500, None], "drop_reason": [None, "too_long", "y"]})
    out = cut_dropped_text(batch, 10).to_pydict()
    assert out["text"] == ["x" * 500, "é" * 10, None]
