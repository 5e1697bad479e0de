"""Airflow end to end: the recipe's DAGs import, and `dag.test()` runs the ingest DAG through
spark-submit, commits both partitions, emits OpenLineage events from the manifests and asset
events with row counts; the same interval run twice changes nothing."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ROOT
from lineage_schema import validate

from phiflow.storage import Lake

pytestmark = pytest.mark.airflow
SNAP = {"snapshot": "CC-MAIN-2024-10"}
# A manual run at D owns the interval that ends at D, like the scheduled run that fires at D.
FEB_RUN = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.resetdb()
    return DagBag(dag_folder=str(ROOT / "dags"))


def lineage_events() -> list[dict]:
    path = Path(os.environ["PHIFLOW_HOME"]) / "lineage" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_dags_import_cleanly(dagbag) -> None:
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("phiflow_ingest_web")
    assert [t.task_id for t in dag.topological_sort()][:2] == ["commoncrawl_extract", "langid"]
    assert [t.task_id for t in dag.topological_sort()][-2:] == ["dedup", "decontaminate"]
    assert {"seed_select_web", "synthesize_web"} <= set(dagbag.get_dag("phiflow_synthesis").task_ids)
    assert "phiflow_ingest_broken" in dagbag.dag_ids


def test_ingest_dag_commits_and_reports_lineage(dagbag) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    run = dagbag.get_dag("phiflow_ingest_web").test(logical_date=FEB_RUN)
    assert run.state == "success"
    lake = Lake()
    ex, li = lake.require("web.extracted", SNAP), lake.require("web.langid", SNAP)
    clean = lake.require("web.clean", SNAP)
    assert clean.airflow["run_id"] == run.run_id and 0 < clean.row_count <= li.row_count
    assert ex.airflow["dag_id"] == "phiflow_ingest_web" and ex.airflow["run_id"] == run.run_id
    assert li.inputs[0].digest == ex.digest and li.row_count == ex.row_count > 150

    events = lineage_events()
    for e in events:
        validate(e)  # the OpenLineage spec's JSON schemas, facets included
    # this DAG's events (other tests of the session write theirs to the same file)
    complete = {e["job"]["name"]: e for e in events
                if e["eventType"] == "COMPLETE" and e["job"]["name"].startswith("phiflow_ingest_web.")}
    for e in complete.values():  # every lake input names its partition and schema; every output its partition
        for i in e["inputs"]:
            if "/web." in i["name"]:
                assert i["facets"]["schema"]["fields"], i
                assert i["inputFacets"]["subset"]["inputCondition"]["partitions"][0]["dimensions"] == SNAP
        for o in e["outputs"]:
            [part] = o["outputFacets"]["subset"]["outputCondition"]["partitions"]
            if o["name"].rsplit(".", 1)[-1] in ("extracted", "langid", "quality", "dedup", "clean"):
                assert part["dimensions"] == SNAP, o
    ol = complete["phiflow_ingest_web.langid"]
    (out,) = ol["outputs"]
    assert out["name"].endswith("/web.langid")
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == li.row_count
    assert {"doc_id", "language", "language_score"} <= {f["name"] for f in out["facets"]["schema"]["fields"]}
    assert [i["name"].rsplit("/", 1)[-1] for i in ol["inputs"]] == ["web.extracted"]
    assert ol["outputs"][0]["facets"]["columnLineage"]["fields"]["language"]["inputFields"][0]["field"] == "text"
    ex_inputs = complete["phiflow_ingest_web.commoncrawl_extract"]["inputs"]
    assert ex_inputs[0]["name"].endswith("CC-MAIN-2024-10/warc.paths.gz")

    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()
    extras = {e.source_task_id: e.extra for e in events}
    assert extras["langid"]["partitions"][0]["rows"] == li.row_count
    assert extras["langid"]["partitions"][0]["digest"] == li.digest


def test_same_interval_twice_is_idempotent(dagbag) -> None:
    lake = Lake()
    before = {d: lake.require(d, SNAP) for d in ("web.extracted", "web.langid")}
    first_two = dagbag.get_dag("phiflow_ingest_web").partial_subset("langid", include_upstream=True)
    run = first_two.test(logical_date=FEB_RUN)
    assert run.state == "success"
    for d, m in before.items():
        again = lake.require(d, SNAP)
        assert again.digest == m.digest and again.row_count == m.row_count
        assert again.airflow["run_id"] == run.run_id != m.airflow["run_id"]
        ids = lake.read_table(again, columns=["doc_id"]).column("doc_id").to_pylist()
        assert len(ids) == len(set(ids)) == m.row_count


def test_empty_interval_skips(dagbag) -> None:
    run = dagbag.get_dag("phiflow_ingest_web").test(logical_date=datetime(2024, 4, 1, tzinfo=UTC))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert set(states) >= {"commoncrawl_extract", "langid", "dedup"} and set(states.values()) == {"skipped"}


def test_broken_inputs_through_airflow(dagbag) -> None:
    run = dagbag.get_dag("phiflow_ingest_broken").test(logical_date=datetime(2024, 7, 1, tzinfo=UTC))
    assert run.state == "success"
    m = Lake().require("broken.extracted", {"snapshot": "CC-MAIN-BROKEN"})
    assert m.counters["dropped"]["payload_digest_mismatch"] == 3
    assert {"binary_payload", "empty_payload", "too_little_text", "http_404", "http_301", "too_large"} <= set(
        m.counters["dropped"]
    )
    assert m.counters["read"] == m.row_count + sum(m.counters["dropped"].values())
