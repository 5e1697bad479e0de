"""The training DAG end to end through Airflow: after the ingest DAG committed web.langid, `dag.test()`
trains the tokenizer, tokenizes (spark-submit), mixes, pretrains (TP=2, 2 gloo processes) and midtrains;
the checkpoint manifests carry the metrics. A second run finds every digest unchanged and does nothing."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from conftest import ROOT

from phiflow import dashboard
from phiflow.storage import Lake

pytestmark = pytest.mark.airflow
SNAP = {"snapshot": "CC-MAIN-2024-10"}
PART = {"recipe": "test"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.resetdb()
    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def trained(dagbag):
    # extract >> langid of the ingest DAG (its curation tasks downstream are not what this test is about)
    dag = dagbag.get_dag("phiflow_ingest_web").partial_subset(
        "langid", include_upstream=True, include_downstream=False)
    ingest = dag.test(logical_date=datetime(2024, 3, 1, tzinfo=UTC))
    assert ingest.state == "success"
    run = dagbag.get_dag("phiflow_training").test()
    return run


def test_training_dag_is_asset_scheduled(dagbag) -> None:
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("phiflow_training")
    assert [t.task_id for t in dag.topological_sort()] == [
        "tokenizer", "tokenize_web_langid", "mix", "pretrain", "midtrain"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["web.langid"]


def test_training_dag_commits_checkpoints_with_metrics(trained) -> None:
    assert trained.state == "success", {ti.task_id: ti.state for ti in trained.get_task_instances()}
    lake = Lake()
    langid = lake.require("web.langid", SNAP)
    tokens = lake.require("tokens.web.langid", SNAP)
    assert tokens.inputs[0].digest == langid.digest and tokens.row_count == langid.row_count
    blend = lake.require("blend", PART)
    assert [i.digest for i in blend.inputs] == [tokens.digest]
    pre, mid = lake.require("checkpoints.pretrain", PART), lake.require("checkpoints.midtrain", PART)
    assert pre.inputs == [blend.input_ref()] and mid.inputs == [blend.input_ref(), pre.input_ref()]
    p, m = pre.counters, mid.counters
    assert p["steps"] == 30 and p["tp"] == 2 and p["world_size"] == 2
    assert p["loss_end_mean"] < p["loss_start_mean"] - 0.5, p["losses"]  # loss falls
    assert abs(p["first_loss"] - math.log(512)) < 0.5  # starts near uniform over the vocabulary
    assert math.isfinite(p["valid_perplexity"]) and 1 < p["valid_perplexity"] < 512
    assert list(p["valid_by_source"]) == ["web"]  # the mixture's one source, on its own held-out split
    assert 1 < p["valid_by_source"]["web"]["perplexity"] < 512
    assert m["seq_length"] == 4 * p["seq_length"] == 256  # midtraining: 4x context
    assert mid.params["run"]["model"]["rotary_base"] == 250_000
    assert mid.params["run"]["optimizer"]["lr"] == pytest.approx(pre.params["run"]["optimizer"]["lr"] / 10)
    assert m["resumed_from"].startswith(pre.params["checkpoint_dir"])
    assert math.isfinite(m["valid_perplexity"]) and m["pretrain_valid_perplexity"] == p["valid_perplexity"]
    assert m["first_loss"] < p["loss_start_mean"] - 0.5  # the pretrained weights were loaded
    assert mid.row_count == 4 and all(math.isfinite(x) for x in m["losses"])


def test_dashboard_shows_the_committed_mixture_and_curves(trained) -> None:
    """The Mixture and Training panels read what the mix and training stages really commit."""
    lake = Lake()
    d = dashboard.build_from_lake(lake)
    page = dashboard.render(d)
    blend = lake.require("blend", PART)
    assert d.mixture == {"recipe=test": blend.counters["sources"]}
    for row in blend.counters["sources"]:
        assert f"data-testid='mix:recipe=test:{row['run']}:{row['source']}:share'>{row['share']:.1%}<" in page
    pre = lake.require("checkpoints.pretrain", PART)
    runs = {r["name"]: r for r in d.training}
    assert set(runs) == {"pretrain recipe=test", "midtrain recipe=test"}
    assert [loss for _, loss in runs["pretrain recipe=test"]["steps"]] == pre.counters["losses"]
    assert runs["pretrain recipe=test"]["steps"][-1][0] == pre.counters["final_step"]
    assert "data-testid='curve:midtrain recipe=test'" in page


def test_second_run_does_nothing(dagbag, trained) -> None:
    lake = Lake()
    before = {d: lake.require(d, p) for d, p in (("tokens.web.langid", SNAP), ("blend", PART),
                                                  ("checkpoints.pretrain", PART), ("checkpoints.midtrain", PART))}
    again = dagbag.get_dag("phiflow_training").test()
    states = {ti.task_id: ti.state for ti in again.get_task_instances()}
    assert again.state == "success" and states["tokenize_web_langid"] == "skipped", states
    for d, m in before.items():
        assert lake.require(d, m.partition).attempt == m.attempt  # nothing recommitted
