"""`phiflow backfill` against a real Airflow (REST API: backfill for missing runs, clear for existing ones),
and the stage operator's skip of asset-triggered runs that see the same committed inputs again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowSkipException
from airflow_services import Airflow
from conftest import ROOT
from dashboard_fixtures import commit_all, manifest

DAG = "phiflow_ingest_web"
FEB = {"snapshot": "CC-MAIN-2024-10"}


# -- the skip of asset-triggered consumers (no Airflow services, no Spark) ------------------------------
@pytest.fixture
def langid_op(tmp_path, monkeypatch, test_recipe):
    from operators.spark_stage import SparkStageOperator
    from phiflow.storage import Lake

    monkeypatch.setenv("PHIFLOW_LAKE", str(tmp_path / "lake"))
    lake = Lake()
    source = manifest("web.extracted", FEB, "commoncrawl_extract", 10, 9, {})
    out = manifest("web.langid", FEB, "langid", 9, 9, {})
    out.inputs, out.recipe_digest = [source.input_ref()], test_recipe.stage_digest("langid")
    commit_all(lake, [source, out])
    op = SparkStageOperator(task_id="langid", stage="langid", source="web", output_dataset="web.langid",
                            input_dataset="web.extracted", recipe_path=os.environ["PHIFLOW_RECIPE"])
    return op, lake, source, out


def context(run_type: str) -> dict:
    event = SimpleNamespace(extra={"partitions": [{"partition": FEB}]})
    return {"dag_run": SimpleNamespace(run_type=run_type), "params": {},
            "triggering_asset_events": {Asset(name="web.extracted", uri="file:///lake/web.extracted"): [event]},
            "ti": SimpleNamespace(dag_id=DAG, run_id="r", task_id="langid", try_number=1)}


def test_asset_triggered_run_skips_unchanged_partition(langid_op) -> None:
    op = langid_op[0]
    assert op.unchanged_output(context("asset_triggered"), FEB)
    with pytest.raises(AirflowSkipException, match="already committed"):
        op.execute(context("asset_triggered"))  # would spark-submit (and fail) if it did not skip
    for explicit in ("backfill", "manual", "scheduled"):  # clears and backfills always rerun
        assert not op.unchanged_output(context(explicit), FEB)


def test_changed_input_or_recipe_reruns(langid_op, monkeypatch) -> None:
    op, lake, source, out = langid_op
    changed = manifest("web.extracted", FEB, "commoncrawl_extract", 10, 8, {"too_short": 1})
    commit_all(lake, [changed])
    assert not op.unchanged_output(context("asset_triggered"), FEB)
    commit_all(lake, [source])  # back to the pinned digest
    assert op.unchanged_output(context("asset_triggered"), FEB)
    out.recipe_digest = "another recipe"
    commit_all(lake, [out])
    assert not op.unchanged_output(context("asset_triggered"), FEB)


# -- the CLI through the REST API of running services ----------------------------------------------------
@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    af = Airflow(tmp_path_factory.mktemp("backfill"))
    af.services("start")
    try:
        af.login()
        af.wait(lambda: _known(af), "the dag-processor to parse the DAGs", timeout=180)
        af.cli("dags", "unpause", DAG)
        yield af
    finally:
        af.services("stop")


def _known(af: Airflow) -> bool:
    try:
        return af.api(f"/api/v2/dags/{DAG}")["dag_id"] == DAG
    except Exception:
        return False


def phiflow(af: Airflow, *args: str, rc: int = 0) -> str:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "phiflow"), *args], env=af.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == rc, out.stdout + out.stderr
    password = (Path(af.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated").read_text()
    assert af._token not in out.stdout + out.stderr
    assert all(p not in out.stdout + out.stderr for p in password.split('"') if len(p) > 8)
    return out.stdout + out.stderr


@pytest.mark.airflow
def test_backfill_missing_interval_then_rerun_one_stage(airflow: Airflow) -> None:
    airflow.env["PHIFLOW_AIRFLOW_URL"] = f"http://127.0.0.1:{airflow.port}"
    rng = ("--from", "2024-02-01", "--to", "2024-02-01")
    ambiguous = phiflow(airflow, "backfill", "--stage", "langid", *rng, rc=1)  # the test recipe has two sources
    assert "phiflow_ingest_web" in ambiguous and "--dag" in ambiguous and "Traceback" not in ambiguous
    printed = phiflow(airflow, "backfill", "--stage", "langid", "--dag", DAG, *rng)
    assert "created for 1 interval(s) without a run: 2024-02-01" in printed  # no run yet: backfilled whole
    run_id = "backfill__2024-03-01T00:00:00+00:00"
    airflow.wait(lambda: airflow.runs(DAG).get(run_id) in ("success", "failed"), "the backfilled run")
    assert airflow.runs(DAG)[run_id] == "success"
    extracted, langid = airflow.lake.require("web.extracted", FEB), airflow.lake.require("web.langid", FEB)
    assert [b["dag_id"] for b in airflow.api(f"/api/v2/backfills?dag_id={DAG}")["backfills"]] == [DAG]

    printed = phiflow(airflow, "backfill", "--stage", "langid", "--dag", DAG, *rng)
    assert f"cleared {DAG}.langid in run {run_id}" in printed and "without a run" not in printed

    def rewritten():
        m = airflow.lake.manifest("web.langid", FEB)
        return m if m is not None and m.attempt != langid.attempt else None

    again = airflow.wait(rewritten, "langid of February to be rewritten")
    assert again.digest == langid.digest and again.airflow["try_number"] == langid.airflow["try_number"] + 1
    assert airflow.lake.require("web.extracted", FEB).attempt == extracted.attempt  # only the stage reran
