"""An ablation DAG end to end: a 3-point lr sweep on the tiny model (TP=1, 5 steps a point) over tokens
committed once in process, each point evaluated on the held-out split and scored on the multiple-choice
benchmarks (evals.pretrain). Point p1's lr (1e6) makes the loss non-finite: training stops, that point
fails, the others train and the report commits them with p1 `missing`. The recipe is fixed, p1 alone
is cleared (its map index, and the report) and run again; the report's numbers are the manifests'."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from phiflow.recipe import load_recipe, sweep_points
from phiflow.storage import Lake
from training import sweep_report
from training.plan import training_digest

pytestmark = [pytest.mark.airflow, pytest.mark.spark]
SNAP = {"snapshot": "CC-MAIN-2024-10"}
WHEN = datetime(2024, 3, 1, tzinfo=UTC)
BAD_LR = 1.0e6


def write_sweep(path, bad_lr: float) -> None:
    data = yaml.safe_load(Path(os.environ["PHIFLOW_RECIPE"]).read_text())
    data["sweeps"] = [{"name": "lr", "description": "lr on the tiny model",
                       "pretrain": {"steps": 5, "parallel": {"tp": 1}, "checkpoint_interval": 0,
                                    "optimizer": {"warmup_steps": 1}},
                       "axes": {"lr": [3.0e-3, bad_lr, 1.0e-3]}, "max_active": 1}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def swept(spark, tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    from spark_jobs import commoncrawl_extract, langid, tokenization
    from spark_jobs.engine.stage_io import StageContext

    path = tmp_path_factory.mktemp("ablation") / "recipe.yaml"
    write_sweep(path, BAD_LR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHIFLOW_RECIPE", str(path))
        recipe, lake = load_recipe(path), Lake()
        for stage, source in ((commoncrawl_extract, "web"), (langid, "web"), (tokenization, "web.langid")):
            stage.run(spark, StageContext(recipe=recipe, source=source, partition=dict(SNAP), lake=lake))
        db.resetdb()
        bag = DagBag(dag_folder=str(ROOT / "dags" / "phiflow_ablations.py"))
        assert bag.import_errors == {}
        dag = bag.get_dag("phiflow_ablation_lr")
        first = dag.test(logical_date=WHEN)
        states = {(ti.task_id, ti.map_index): ti.state for ti in first.get_task_instances()}
        started = {(ti.task_id, ti.map_index): ti.start_date for ti in first.get_task_instances()}
        failed_metrics = [json.loads(p.read_text()) for p in Path(lake.partition_path(
            "checkpoints.pretrain", {"recipe": "test_lr_p1"})).glob("_attempts/*/metrics.json")]
        report_first = lake.require("ablations.lr", {"recipe": "test"})
        write_sweep(path, 2.0e-3)  # fix the bad point, then rerun it alone
        rerun = rerun_point(dag, first.run_id, 1)
        yield {"lake": lake, "recipe": load_recipe(path), "first": states, "started": started,
               "failed_metrics": failed_metrics, "report_first": report_first,
               "rerun": rerun, "tokens": lake.require("tokens.web.langid", SNAP)}


def rerun_point(dag, run_id: str, index: int) -> dict:
    """Clear one point's mapped task instances (with downstream: the report), as the UI does, and run the
    cleared ones in order as dag.test() runs a task (dag.test itself would clear the whole run first)."""
    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    def query(session):
        return session.query(TaskInstance).filter_by(dag_id=dag.dag_id, run_id=run_id)

    with create_session() as session:
        tis = [ti for ti in query(session)
               if ti.task_id == "report" or (ti.task_id.startswith("point.") and ti.map_index == index)]
        clear_task_instances(tis, session, dag_run_state=DagRunState.RUNNING)
    for task in dag.topological_sort():
        with create_session() as session:
            for ti in query(session).filter_by(task_id=task.task_id, state=None):
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
                session.commit()
                _run_task(ti=ti, task=task)
    with create_session() as session:
        return {(ti.task_id, ti.map_index): (ti.state, ti.try_number, ti.start_date) for ti in query(session)}


def test_bad_point_fails_alone_and_the_report_marks_it(swept) -> None:
    s = swept["first"]
    assert s[("point.train", 1)] == "failed" and s[("point.evaluate", 1)] == "upstream_failed", s
    assert all(s[(t, i)] == "success" for t in ("point.mix", "point.train", "point.evaluate") for i in (0, 2)), s
    assert s[("report", -1)] == "success"
    rep = swept["report_first"]
    assert rep.counters["ok"] == 2 and rep.counters["missing"] == ["p1"]
    (metrics,) = swept["failed_metrics"]  # training stopped on the non-finite loss
    assert metrics["status"] != "ok" and "non-finite" in metrics["error"].lower(), metrics.get("error")


def test_rerun_of_the_point_and_report_match_the_manifests(swept) -> None:
    rerun, lake, recipe = swept["rerun"], swept["lake"], swept["recipe"]
    assert {state for state, _, _ in rerun.values()} == {"success"}, rerun
    for key, when in swept["started"].items():  # only p1's tasks and the report ran again
        rerun_alone = key[1] == 1 or key[0] == "report"
        assert (rerun[key][2] != when) == rerun_alone, key
    assert rerun[("point.train", 1)][1] == 2 and rerun[("point.train", 0)][1] == 1
    rep = lake.require("ablations.lr", {"recipe": "test"})
    files = {p.rsplit("/", 1)[-1]: p for p in lake.data_files(rep)}
    assert set(files) == {"report.json", "report.csv", "report.md", "report.png"}
    body = json.loads(lake.fs.cat_file(files["report.json"]))
    rows = list(csv.DictReader(io.StringIO(lake.fs.cat_file(files["report.csv"]).decode())))
    points = sweep_points(recipe, "lr")
    assert [r["point"] for r in rows] == [p.id for p, _ in points] == ["p0", "p1", "p2"]
    for (p, pr), row, csv_row in zip(points, body["points"], rows, strict=True):
        m = lake.require("checkpoints.pretrain", {"recipe": p.recipe_name})
        assert m.recipe_digest == training_digest(pr, "pretrain") and row["manifest"] == m.digest
        assert m.params["run"]["optimizer"]["lr"] == p.values["lr"] and m.counters["steps"] == 5
        assert m.counters["tp"] == 1 and math.isfinite(m.counters["valid_loss"])
        for k in sweep_report.METRICS:
            assert row[k] == m.counters[k] and float(csv_row[k]) == pytest.approx(m.counters[k])
        ev = lake.require("evals.pretrain", {"recipe": p.recipe_name})  # the point's benchmark scores
        assert ev.inputs[0] == m.input_ref() and ev.counters["items"] == 60 + 16
        for bench, n in (("arith", 60), ("cloze", 16)):
            score = ev.counters["benchmarks"][bench]
            assert score["items"] == n and score["chance"] == pytest.approx(0.25) and score["mean_logprob_right"] < 0
            assert row[f"mc_{bench}_accuracy"] == score["accuracy"] and 0 <= score["accuracy"] <= 1
        blend = lake.require("blend", {"recipe": p.recipe_name})
        assert [i.digest for i in blend.inputs] == [swept["tokens"].digest]  # shared tokens, one tokenization
    assert rep.counters["ok"] == 3 and rep.counters["missing"] == []
    best = min(body["points"], key=lambda r: r["valid_loss"])["point"]
    assert body["best"]["valid_loss"] == best and len(rep.inputs) == 6  # 3 checkpoints, 3 evaluations
    assert lake.fs.cat_file(files["report.png"])[:4] == b"\x89PNG"
