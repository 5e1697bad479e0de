"""Test settings: every test session gets its own PHIFLOW_HOME and Airflow home in a temp folder.

The variables are set in `pytest_configure`, before any test module imports Airflow, because
Airflow reads its configuration at import time.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
BROKEN = SAMPLE / "broken"
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="phiflow-test-"))


def pytest_configure(config: pytest.Config) -> None:
    home = _SESSION_HOME
    os.environ["PHIFLOW_HOME"] = str(home)
    os.environ.pop("PHIFLOW_LAKE", None)
    os.environ["PHIFLOW_RECIPE"] = str(home / "recipe.yaml")
    os.environ["AIRFLOW_HOME"] = str(home / "airflow")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    os.environ["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "phiflow-test"
    os.environ["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
        {"type": "file", "log_file_path": str(home / "lineage" / "events.jsonl"), "append": True}
    )
    os.environ["AIRFLOW_CONN_PHIFLOW_SPARK"] = json.dumps({"conn_type": "spark", "host": "local[2]"})
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["PHIFLOW_CONNECT_IDLE_S"] = "120"  # a test module's Spark Connect server goes soon after it
    (home / "lineage").mkdir(parents=True, exist_ok=True)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    write_test_recipe(home / "recipe.yaml")


def pytest_unconfigure(config: pytest.Config) -> None:
    from spark_jobs.engine import connect_server

    connect_server.stop()  # the session home's Spark Connect server, when a stage task started one
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def web_and_wiki_only(recipe: dict) -> None:
    """The demo recipe (a dict) without its code and documents sources: those have their own tests
    (test_collection_stages.py) and would add two ingest DAGs to every Airflow test."""
    for name in ("code", "books"):
        recipe["sources"].pop(name, None)
    recipe["stages"]["quality"].pop("overrides", None)
    workflows = []
    for wf in recipe["stages"]["synthesize"]["workflows"]:
        if wf.get("sources") is not None:
            wf["sources"] = [s for s in wf["sources"] if s in recipe["sources"]]
        if wf.get("sources") != []:  # a workflow seeded only from the removed sources goes with them
            workflows.append(wf)
    recipe["stages"]["synthesize"]["workflows"] = workflows
    recipe.get("training", {}).get("midtrain", {}).pop("long_context", None)


def write_test_recipe(path: Path, **stage_overrides: dict) -> Path:
    """The demo recipe plus the broken-input snapshot, with retries off so failures surface at once."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    recipe["name"] = "test"
    web_and_wiki_only(recipe)
    recipe["airflow"] = {"retries": 0, "retry_delay_s": 0}
    for src in recipe["sources"].values():  # the copy lives in a temp dir: make relative paths absolute
        src["base_url"] = str((ROOT / "recipes" / src["base_url"]).resolve())
    recipe["sources"]["broken"] = {
        "kind": "commoncrawl",
        "base_url": str(BROKEN),
        "snapshots": [
            {"id": "CC-MAIN-BROKEN", "date": "2024-06-12", "paths": "crawl-data/CC-MAIN-BROKEN/warc.paths.gz"}
        ],
    }
    # The DAG tests run quality on its rules (no LLM annotation: the offline model is too slow for them;
    # tests/test_quality_annotate.py covers annotate -> train -> quality through a scripted LLM server).
    recipe["stages"]["quality"]["classifier"] = None
    # Training tests read web.langid, so they need only the first two ingest stages.
    recipe["mixture"]["sources"] = [{"name": "web", "datasets": ["web.langid"], "share": 1.0, "max_epochs": 4}]
    recipe["training"]["pretrain"]["phases"] = [  # two phases of the one source: the boundary, not the shares
        {"name": "phase1", "fraction": 0.5, "mixture": {"web": 1.0}},
        {"name": "phase2", "fraction": 0.5, "mixture": {"web": 1.0}}]
    recipe.pop("sweeps", None)  # the demo sweeps name the demo mixture's sources; tests write their own
    for bench in recipe["stages"].get("decontaminate", {}).get("benchmarks", []):
        bench["path"] = str((ROOT / "recipes" / bench["path"]).resolve())  # the copy lives in a temp dir
    for stage, params in stage_overrides.items():
        recipe["stages"].setdefault(stage, {}).update(params)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole test run (start-up costs 10-20 s)."""
    from pyspark.sql import SparkSession

    s = (
        SparkSession.builder.master("local[2]")
        .appName("phiflow-tests")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.maxConcurrentOutputFileWriters", "64")  # as stage_io.spark_session
        .getOrCreate()
    )
    yield s
    s.stop()


@pytest.fixture
def lake(tmp_path):
    from phiflow.storage import Lake

    return Lake(str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def test_recipe():
    from phiflow.recipe import load_recipe

    return load_recipe(os.environ["PHIFLOW_RECIPE"])
