"""quality_train and quality on the sample enwiki dump, with annotations whose labels are known
from the source (Python docs: educational, STEM; installation guide: less so, non-STEM here):
held-out metrics in the manifest, and the non-STEM quota on top of the top fraction."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from wiki_fixtures import WIKI, wiki_recipe

from phiflow.schema import QUALITY_ANNOTATIONS, with_drop_reason
from phiflow.storage import Lake
from spark_jobs import quality, quality_train, wikipedia_extract
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema

pytestmark = pytest.mark.spark
DUMP = {"dump": "enwiki-20240601"}


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    recipe = wiki_recipe(
        tmp / "r.yaml",
        {
            "wikipedia_extract": {"failure_budget": 0.5},
            "quality": {"classifier": "edu-v1", "keep_fraction": 0.3, "non_stem_quota": 0.2, "non_stem_min_score": 0.0},
        },
    )
    lake = Lake(str(tmp / "lake"))
    ex = wikipedia_extract.run(spark, StageContext(recipe, "wiki", dict(DUMP), lake))
    labels = {
        x["page_id"]: x["source"]
        for x in map(json.loads, (WIKI / "labels.jsonl").read_text().splitlines())
        if x["wiki"] == "enwiki"
    }
    rows = [
        {
            "doc_id": r["doc_id"],
            "source": "wiki",
            "source_uri": r["source_uri"],
            "parent_ids": [],
            "language": "en",
            "text": r["text"][:1500],
            "grade": 4 if labels[r["page_id"]] == "python-doc" else 1,
            "topic": "stem" if labels[r["page_id"]] == "python-doc" else "culture",
            "answer": "",
            "model": "labels",
            "drop_reason": None,
        }
        for r in lake.read_table(ex).to_pylist()
    ]
    df = spark.createDataFrame(
        pa.Table.from_pylist(rows, schema=with_drop_reason(QUALITY_ANNOTATIONS)).to_pandas(),
        schema=spark_schema(with_drop_reason(QUALITY_ANNOTATIONS)),
    )
    commit_partition(
        spark,
        StageContext(recipe, "wiki", dict(DUMP), lake),
        stage="quality_annotate",
        dataset="wiki.annotations",
        rows=df,
        schema=QUALITY_ANNOTATIONS,
        inputs=[ex.input_ref()],
        counters={"read": len(rows)},
        reasons={None: len(rows)},
    )
    tr = quality_train.run(spark, StageContext(recipe, "wiki", {"model": "edu-v1"}, lake))
    return recipe, lake, ex, tr, labels


def test_training_records_held_out_metrics_a_degenerate_model_fails(trained) -> None:
    _, _, _, tr, _ = trained
    for name in ("educational", "topic"):
        m = tr.counters["metrics"][name]
        assert m["n"] >= 20 and 5 <= m["positives"] <= m["n"] - 5
        assert m["auc"] >= 0.9, (name, m)
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1


def test_quality_keeps_top_fraction_plus_non_stem_quota(spark, trained) -> None:
    recipe, lake, ex, tr, labels = trained
    q = quality.run(spark, StageContext(recipe, "wiki", dict(DUMP), lake))
    assert {i.digest for i in q.inputs} == {ex.digest, tr.digest}
    rows = lake.read_table(q).to_pylist()
    survivors = sum(q.counters["topics_before"].values())
    assert q.counters["selected_by"]["top_fraction"] == round(0.3 * survivors)
    assert q.counters["selected_by"]["non_stem_quota"] == round(0.2 * survivors)
    top = [r for r in rows if r["selected_by"] == "top_fraction"]
    boosted = [r for r in rows if r["selected_by"] == "non_stem_quota"]
    assert sum(labels[r["page_id"]] == "python-doc" for r in top) / len(top) >= 0.9  # scores rank the docs
    assert all(r["topic"] != "stem" for r in boosted) and all(labels[r["page_id"]] != "python-doc" for r in boosted)
    assert q.counters["topics_after"].get("culture", 0) >= len(boosted) > 0
    assert q.row_count == len(top) + len(boosted)
    assert q.counters["dropped"]["below_quality_threshold"] + q.row_count == survivors


def test_without_quota_the_kept_set_is_mostly_stem(spark, trained, tmp_path) -> None:
    _recipe, lake, *_ = trained
    params = {"classifier": "edu-v1", "keep_fraction": 0.3, "non_stem_quota": 0.0}
    no_quota = wiki_recipe(tmp_path / "r.yaml", {"quality": params})
    q = quality.run(spark, StageContext(no_quota, "wiki", dict(DUMP), lake))
    after = q.counters["topics_after"]
    assert after.get("stem", 0) / q.row_count >= 0.9 and "non_stem_quota" not in q.counters["selected_by"]
