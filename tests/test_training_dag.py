"""The training DAG end to end through Airflow: after the ingest DAG committed web.langid, `dag.test()`
trains the tokenizer, tokenizes (spark-submit), mixes, stress-tests the warmup, pretrains in two phases
(TP=2, 2 gloo processes; phase 2 loads phase 1's checkpoint) and midtrains from the last phase; the
checkpoint manifests carry the metrics. A second run finds every digest unchanged and does nothing."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from conftest import ROOT

from phiflow import dashboard
from phiflow.blend import load_blend
from phiflow.storage import Lake

pytestmark = pytest.mark.airflow
SNAP = {"snapshot": "CC-MAIN-2024-10"}
PART = {"recipe": "test"}
PHASE1, PHASE2 = {**PART, "phase": "phase1"}, {**PART, "phase": "phase2"}


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
        "tokenizer", "tokenize_web_langid", "mix", "stress", "pretrain_phase1", "pretrain_phase2", "midtrain"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["web.langid"]


def test_training_dag_commits_checkpoints_with_metrics(trained) -> None:
    assert trained.state == "success", {ti.task_id: ti.state for ti in trained.get_task_instances()}
    lake = Lake()
    langid = lake.require("web.langid", SNAP)
    tokens = lake.require("tokens.web.langid", SNAP)
    assert tokens.inputs[0].digest == langid.digest and tokens.row_count == langid.row_count
    blend = lake.require("blend", PART)
    assert [i.digest for i in blend.inputs] == [tokens.digest]
    first = lake.require("checkpoints.pretrain", PHASE1)
    pre, mid = lake.require("checkpoints.pretrain", PHASE2), lake.require("checkpoints.midtrain", PART)
    assert first.inputs == [blend.input_ref()]
    assert pre.inputs == [blend.input_ref(), first.input_ref()]  # phase 2 loaded phase 1's checkpoint
    assert mid.inputs == [blend.input_ref(), pre.input_ref()]  # midtraining loads the last phase
    f, p, m = first.counters, pre.counters, mid.counters
    assert (f["first_step"], f["final_step"], p["first_step"], p["final_step"]) == (1, 15, 16, 30)
    for run in (first, pre):  # one schedule over both phases, each stopping at its own step
        assert run.params["run"]["optimizer"]["total_steps"] == 30
    assert (first.params["run"]["stop_at_step"], pre.params["run"]["stop_at_step"]) == (15, 30)
    assert p["resumed_from"].startswith(first.params["checkpoint_dir"]) and p["started_from"]["partition"] == PHASE1
    assert p["steps"] == 15 and p["tp"] == 2 and p["world_size"] == 2
    assert p["loss_end_mean"] < f["loss_start_mean"] - 0.5, f["losses"] + p["losses"]  # loss falls over the run
    assert abs(f["first_loss"] - math.log(512)) < 0.5  # starts near uniform over the vocabulary
    assert p["first_loss"] < f["first_loss"] - 0.5  # phase 2 goes on from where phase 1 got, not from scratch
    blend_json = load_blend(lake, blend)
    assert [run for run in blend_json if run.startswith("pretrain")] == ["pretrain.phase1", "pretrain.phase2",
                                                                         "pretrain"]
    assert blend_json["pretrain"]["mixture"]["total_tokens"] == 2 * blend_json["pretrain.phase1"]["mixture"][
        "total_tokens"] == 30 * 8 * 64
    assert math.isfinite(p["valid_perplexity"]) and 1 < p["valid_perplexity"] < 512
    assert list(p["valid_by_source"]) == ["web"]  # the mixture's one source, on its own held-out split
    assert 1 < p["valid_by_source"]["web"]["perplexity"] < 512
    assert m["seq_length"] == 4 * p["seq_length"] == 256  # midtraining: 4x context
    assert mid.params["run"]["model"]["rotary_base"] == 250_000
    assert mid.params["run"]["optimizer"]["lr"] == pytest.approx(pre.params["run"]["optimizer"]["lr"] / 10)
    assert m["resumed_from"].startswith(pre.params["checkpoint_dir"])
    assert math.isfinite(m["valid_perplexity"]) and m["pretrain_valid_perplexity"] == p["valid_perplexity"]
    assert m["first_loss"] < f["first_loss"] - 0.5  # the pretrained weights were loaded
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
    pre = lake.require("checkpoints.pretrain", PHASE2)
    runs = {r["name"]: r for r in d.training}
    assert set(runs) == {"pretrain recipe=test/phase=phase1", "pretrain recipe=test/phase=phase2",
                         "midtrain recipe=test"}
    phase2 = runs["pretrain recipe=test/phase=phase2"]["steps"]
    assert [loss for _, loss in phase2] == pre.counters["losses"]
    assert (phase2[0][0], phase2[-1][0]) == (16, 30)  # the curve goes on at the run's step, not at 1
    assert "data-testid='curve:midtrain recipe=test'" in page


def test_second_run_does_nothing(dagbag, trained) -> None:
    lake = Lake()
    before = [lake.require(d, p) for d, p in (("tokens.web.langid", SNAP), ("blend", PART), ("stress.pretrain", PART),
                                              ("checkpoints.pretrain", PHASE1), ("checkpoints.pretrain", PHASE2),
                                              ("checkpoints.midtrain", PART))]
    again = dagbag.get_dag("phiflow_training").test()
    states = {ti.task_id: ti.state for ti in again.get_task_instances()}
    assert again.state == "success" and states["tokenize_web_langid"] == "skipped", states
    for m in before:
        assert lake.require(m.dataset, m.partition).attempt == m.attempt  # nothing recommitted


def test_stress_test_judges_each_multiplier_and_gates_pretraining(trained, tmp_path) -> None:
    """Before pretraining: the peak lr is stable, 300x it diverges (the test recipe goes on, as the demo
    does). The dashboard shows both verdicts; the same report under `continue_on_divergence: false`
    fails the stress task (pretraining, downstream, does not start) without training again."""
    import os
    from pathlib import Path

    import yaml
    from airflow.sdk.exceptions import AirflowException

    from operators.training import StressTestOperator

    lake = Lake()
    st = lake.require("stress.pretrain", PART)
    points = {p["multiplier"]: p for p in st.counters["points"]}
    stable, wild = points[1.0], points[300.0]
    assert not stable["diverged"] and stable["reason"] is None, stable
    assert wild["diverged"] and wild["reason"], wild
    assert len(stable["losses"]) == 10 and all(x is not None for x in stable["attention_logits"])
    assert wild["attention_logit_growth"] > 100 * stable["attention_logit_growth"]
    assert st.params["peak_lr"] == pytest.approx(3e-3) and st.params["warmup_steps"] == 3
    page = dashboard.render(dashboard.build_from_lake(lake))
    assert "data-testid='stress:recipe=test:x1'>stable<" in page
    assert "data-testid='stress:recipe=test:x300'>diverged: " in page
    assert "x300 diverged: pretraining went on (continue_on_divergence)" in page

    data = yaml.safe_load(Path(os.environ["PHIFLOW_RECIPE"]).read_text())
    data["training"]["stress"]["continue_on_divergence"] = False
    strict = tmp_path / "recipe.yaml"
    strict.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(AirflowException, match="lr x300 diverged; pretraining does not start"):
        StressTestOperator(task_id="stress", recipe_path=str(strict)).execute({})
    assert lake.require("stress.pretrain", PART).attempt == st.attempt  # judged again, not trained again


def test_a_sweep_from_the_phase1_checkpoint_continues_it(trained, tmp_path, monkeypatch) -> None:
    """The ablation DAG of a sweep `from: checkpoints.pretrain/phase=phase1`: each point loads that
    checkpoint (its input, its weights: a low first loss), trains its own equal tokens, and the report
    puts the base checkpoint first."""
    import os
    from pathlib import Path

    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from phiflow.recipe import load_recipe, sweep_points
    from training import sweep_report

    data = yaml.safe_load(Path(os.environ["PHIFLOW_RECIPE"]).read_text())
    data["sweeps"] = [{"name": "cont", "from": "checkpoints.pretrain/phase=phase1",
                       "pretrain": {"steps": 3, "parallel": {"tp": 1}, "checkpoint_interval": 0,
                                    "optimizer": {"warmup_steps": 1}},
                       "axes": {"lr": [1e-3, 3e-3]}}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("PHIFLOW_RECIPE", str(path))
    bag = DagBag(dag_folder=str(ROOT / "dags" / "phiflow_ablations.py"))
    run = bag.get_dag("phiflow_ablation_cont").test()
    assert run.state == "success", {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    lake, recipe = Lake(), load_recipe(path)
    base = lake.require("checkpoints.pretrain", PHASE1)
    for point, pr in sweep_points(recipe, "cont"):
        m = lake.require("checkpoints.pretrain", {"recipe": point.recipe_name})
        assert m.inputs[1] == base.input_ref() and m.counters["started_from"]["partition"] == PHASE1
        assert m.counters["resumed_from"].startswith(base.params["checkpoint_dir"])
        assert m.counters["tokens"] == 3 * 8 * 64 and m.counters["first_loss"] < base.counters["first_loss"] - 0.5
        assert sweep_report.current_checkpoint(lake, pr) == m
    report = lake.require("ablations.cont", PART)
    assert report.counters["ok"] == 2 and base.input_ref() in report.inputs, report.counters
    (path,) = [p for p in lake.data_files(report) if p.endswith("report.json")]
    rows = json.loads(lake.fs.cat_file(path))["points"]
    assert [(r["point"], r["status"]) for r in rows] == [("base", "base"), ("p0", "ok"), ("p1", "ok")]
    assert rows[0]["valid_perplexity"] == base.counters["valid_perplexity"]
