"""A real scheduler run (not dags test): `make airflow`'s services start, `airflow backfill create`
over three months commits exactly the snapshots of those intervals, `airflow tasks clear -t langid`
over one interval rewrites only that partition of that stage, and `make airflow-stop` ends them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow_services import Airflow

pytestmark = pytest.mark.airflow
DAG = "phiflow_ingest_web"
FEB, APR = {"snapshot": "CC-MAIN-2024-10"}, {"snapshot": "CC-MAIN-2024-18"}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    af = Airflow(tmp_path_factory.mktemp("sched"))
    printed = af.services("start")
    assert f"http://127.0.0.1:{af.port}" in printed and "password:" in printed
    try:
        af.login()
        af.wait(lambda: _dag_known(af), "the dag-processor to parse the DAGs", timeout=180)
        yield af
    finally:
        af.services("stop")


def _dag_known(af: Airflow) -> bool:
    try:
        return af.api(f"/api/v2/dags/{DAG}")["dag_id"] == DAG
    except Exception:
        return False


def test_backfill_then_clear_one_stage(airflow: Airflow) -> None:
    airflow.cli("dags", "unpause", DAG)
    airflow.cli("backfill", "create", "--dag-id", DAG, "--from-date", "2024-02-01", "--to-date", "2024-04-30")
    expected = {"backfill__2024-03-01T00:00:00+00:00", "backfill__2024-04-01T00:00:00+00:00",
                "backfill__2024-05-01T00:00:00+00:00"}

    def done() -> dict | None:
        runs = {k: v for k, v in airflow.runs(DAG).items() if k in expected}
        return runs if len(runs) == 3 and all(s in ("success", "failed") for s in runs.values()) else None

    states = airflow.wait(done, "the backfill runs")
    assert set(states.values()) == {"success"}, states
    lake = airflow.lake
    feb, apr = lake.require("web.langid", FEB), lake.require("web.langid", APR)
    assert feb.airflow["run_id"] == "backfill__2024-03-01T00:00:00+00:00"  # Feb interval, Feb snapshot
    assert apr.airflow["run_id"] == "backfill__2024-05-01T00:00:00+00:00"
    extracted_apr = lake.require("web.extracted", APR)

    # -t is a substring match in Airflow 3.3 (its help says regex; "^langid$" matches nothing)
    airflow.cli("tasks", "clear", DAG, "-t", "langid", "-s", "2024-04-01", "-e", "2024-04-01", "-y")

    def rewritten():
        m = lake.manifest("web.langid", APR)
        return m if m is not None and m.attempt != apr.attempt else None

    again = airflow.wait(rewritten, "langid of April to be rewritten")
    airflow.wait(lambda: airflow.runs(DAG)["backfill__2024-05-01T00:00:00+00:00"] == "success", "the cleared run")
    assert again.digest == apr.digest and again.airflow["try_number"] == apr.airflow["try_number"] + 1
    assert lake.require("web.extracted", APR).attempt == extracted_apr.attempt  # upstream stage untouched
    assert lake.require("web.langid", FEB).attempt == feb.attempt  # other interval untouched
    events = [json.loads(line) for line in (Path(airflow.env["PHIFLOW_HOME"]) / "lineage" / "events.jsonl").open()]
    assert any(e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{DAG}.langid" and e["outputs"] for e in events)
