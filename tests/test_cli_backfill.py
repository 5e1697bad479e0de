"""The stage operator's skip of asset-triggered runs that see the same committed inputs again (`phiflow
backfill` against running services is in tests/test_airflow_scheduler.py, which shares their start-up)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowSkipException
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
    op = SparkStageOperator(task_id="langid", stage="langid", source="web",
                            recipe_path=os.environ["PHIFLOW_RECIPE"])
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


def test_a_second_run_reports_only_its_own_commits(langid_op) -> None:
    """Under dag.test() one operator object runs again: its lineage must not carry the first run's outputs."""
    op, *_, out = langid_op
    op._committed = [out]  # what a first run committed
    with pytest.raises(AirflowSkipException):
        op.execute(context("asset_triggered"))  # the second run commits nothing
    lineage = op.get_openlineage_facets_on_complete(None)
    assert op._committed == [] and lineage.outputs == [] and lineage.inputs == []


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


def test_the_cli_finds_the_embedded_defaults_credentials_without_env_sh(tmp_path, monkeypatch) -> None:
    """`.venv/bin/phiflow backfill` without `source scripts/env.sh`: no AIRFLOW_HOME, and still the
    generated admin password of the services `make airflow` started under the Phiflow home."""
    import json

    from phiflow.airflow_api import AirflowAPI

    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.delenv("PHIFLOW_AIRFLOW_PASSWORD", raising=False)
    monkeypatch.setenv("PHIFLOW_HOME", str(tmp_path))
    (tmp_path / "airflow").mkdir()
    (tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "s3cret"}))
    assert AirflowAPI.from_env().password == "s3cret"
