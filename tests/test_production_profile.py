"""The production profile on one machine, with real servers instead of the embedded defaults:

- the lake on S3 (moto's server over HTTP, s3fs configured by the environment only): the storage
  contract holds there, the commit is one PUT, and a Spark stage's committed partition published to
  S3 reads back with the same content digest (Spark itself cannot write s3a:// here: no hadoop-aws jar);
- a Spark standalone cluster (master + two workers): the web stages through Airflow's `dag.test()`,
  switched only by the Spark connection, commit the same digests as local mode;
- Airflow's metadata in PostgreSQL with the LocalExecutor: a scheduler backfill of one interval.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from airflow_services import Airflow
from conftest import ROOT, write_test_recipe
from lake_writers import PART, write_attempt
from prod_services import SPARK_HOME, MotoS3, Postgres, SparkCluster
from test_storage import rows

from phiflow.manifest import Manifest
from phiflow.storage import _LEASES, Lake
from spark_jobs import commoncrawl_extract, langid
from spark_jobs.engine.stage_io import StageContext, content_digest

SNAP = {"snapshot": "CC-MAIN-2024-10"}
FEB_RUN = datetime(2024, 3, 1, tzinfo=UTC)  # the run at March 1st owns February's interval
DAG = "phiflow_ingest_web"


# -- the lake on S3 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3_lake(s3: MotoS3, monkeypatch, request) -> Lake:
    """PHIFLOW_LAKE=s3://<fresh bucket>/lake, with S3 reached only through the environment."""
    import s3fs

    for k, v in s3.client_env().items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made under another environment is not reused
    bucket = request.node.name.replace("_", "-")[:50]
    monkeypatch.setenv("PHIFLOW_LAKE", f"s3://{bucket}/lake")
    lake = Lake()
    lake.fs.mkdir(bucket)
    return lake


def mutations(calls: list[dict]) -> list[tuple[str, str]]:
    """(method, path?query) of the recorded requests that change the bucket."""
    out = []
    for c in calls:
        if c["method"] in ("PUT", "POST", "DELETE"):
            url = urlparse(c["url"])
            out.append((c["method"], unquote(url.path) + (f"?{url.query}" if url.query else "")))
    return out


def test_storage_contract_on_s3(s3: MotoS3, s3_lake: Lake, monkeypatch) -> None:
    lake = s3_lake
    assert lake.url.startswith("s3://") and lake.uri(lake.root).startswith("s3://")
    manifest_key = f"/{lake.partition_path('t.ds', PART)}/_MANIFEST.json"

    first = write_attempt(lake, [{"doc_id": "a", "n": 1}, {"doc_id": "b", "n": 2}])
    assert lake.fs.find(lake.attempt_path("t.ds", PART, first.attempt))  # the files are on S3 ...
    assert lake.manifest("t.ds", PART) is None and list(lake.partitions("t.ds")) == []  # ... and invisible
    lease_key = f"/{lake.attempt_path('t.ds', PART, first.attempt)}/_LEASE"
    s3.start_recording()
    lake.commit(first)
    calls = s3.stop_recording()
    assert mutations(calls) == [("PUT", lease_key), ("PUT", manifest_key)]  # the commit is one PUT, no rename
    put = [c for c in calls if c["method"] == "PUT"][-1]
    assert not any(h.lower() == "x-amz-copy-source" for h in put["headers"])
    assert {h.lower(): v for h, v in put["headers"].items()}.get("if-none-match") == "*"  # the first commit
    assert rows(lake) == [{"doc_id": "a", "n": 1}, {"doc_id": "b", "n": 2}]

    monkeypatch.setenv("PHIFLOW_ATTEMPT_TTL_S", "1")
    crashed = write_attempt(lake, [{"doc_id": "zzz", "n": 9}])  # written, then the writer dies:
    _LEASES.release(lake.attempt_path("t.ds", PART, crashed.attempt))  # its lease is no longer renewed
    assert rows(lake) == [{"doc_id": "a", "n": 1}, {"doc_id": "b", "n": 2}]
    assert Lake().require("t.ds", PART).attempt == first.attempt  # a fresh reader agrees

    rerun = write_attempt(lake, [{"doc_id": "c", "n": 3}])
    time.sleep(1.5)  # the crashed writer's lease expires; the rerun's is renewed
    s3.start_recording()
    lake.commit(rerun)
    calls = s3.stop_recording()
    changes = mutations(calls)
    swap = [c for c in calls if c["method"] == "PUT" and unquote(urlparse(c["url"]).path) == manifest_key]
    assert len(swap) == 1 and "if-match" in {h.lower() for h in swap[0]["headers"]}  # conditional on the ETag
    assert changes.index(("PUT", manifest_key)) < min(i for i, (m, _) in enumerate(changes) if m != "PUT")
    assert rows(lake) == [{"doc_id": "c", "n": 3}]  # replaced whole, not appended
    attempts = lake.fs.ls(f"{lake.partition_path('t.ds', PART)}/_attempts", detail=False, refresh=True)
    # The crashed attempt is collected; the superseded one stays readable for the grace period.
    assert sorted(posixpath.basename(a) for a in attempts) == sorted([first.attempt, rerun.attempt])
    assert lake.read_table(first).num_rows == 2 and rerun.generation == 2

    status = subprocess.run([str(ROOT / ".venv" / "bin" / "phiflow"), "status"], env=dict(os.environ),
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    (line,) = status.stdout.splitlines()
    assert line.split()[:4] == ["t.ds", "snapshot=S1/part=00001", "1", "rows"] and rerun.digest[:12] in line


@pytest.fixture(scope="module")
def local_run(spark, test_recipe, tmp_path_factory) -> tuple[Lake, Manifest, Manifest]:
    """commoncrawl_extract and langid of one snapshot in local mode: the reference for the cluster."""
    lake = Lake(str(tmp_path_factory.mktemp("local-lake")))
    ex = commoncrawl_extract.run(spark, StageContext(recipe=test_recipe, source="web", partition=dict(SNAP), lake=lake))
    li = langid.run(spark, StageContext(recipe=test_recipe, source="web", partition=dict(SNAP), lake=lake))
    return lake, ex, li


def publish(src: Lake, dst: Lake, m: Manifest) -> Manifest:
    """Copy a committed partition's files to another lake under the same attempt, then commit there."""
    for rel in (f.path for f in m.files):
        dst.fs.pipe_file(posixpath.join(dst.partition_path(m.dataset, m.partition), rel),
                         src.fs.cat_file(posixpath.join(src.partition_path(m.dataset, m.partition), rel)))
    return dst.commit(m)


def file_digests(lake: Lake, m: Manifest) -> list[str]:
    return [hashlib.sha256(lake.fs.cat_file(url)).hexdigest() for url in lake.data_files(m)]


@pytest.mark.spark
def test_spark_partition_published_to_s3_reads_back_identical(spark, local_run, s3_lake: Lake, tmp_path) -> None:
    jars = sorted(p.name for p in (SPARK_HOME / "jars").iterdir())
    if any("hadoop-aws" in j or j.startswith(("aws-java-sdk", "bundle-2")) for j in jars):
        pytest.fail("the pyspark distribution now ships hadoop-aws: test Spark writing s3a:// directly instead")
    local, _, li = local_run
    published = publish(local, s3_lake, li)
    back = Lake().require("web.langid", SNAP)  # PHIFLOW_LAKE=s3://...: what any reader sees
    assert back.digest == li.digest and back.row_count == li.row_count
    assert file_digests(s3_lake, back) == file_digests(local, li)  # the bytes Spark wrote, unchanged
    table = s3_lake.read_table(back)
    assert table.num_rows == li.row_count and table.schema.names == local.read_table(li).schema.names
    # Spark's own content digest, recomputed from the files fetched back from S3, is the committed one.
    fetched = tmp_path / "fetched"
    s3_lake.fs.get(s3_lake.data_files(published), str(fetched) + "/")
    assert content_digest(spark.read.parquet(str(fetched))) == (li.row_count, li.content_digest)


# -- a Spark standalone cluster -----------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SparkCluster(tmp_path_factory.mktemp("spark-cluster"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.resetdb()
    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.mark.spark
@pytest.mark.airflow
def test_web_stages_on_a_standalone_cluster(cluster: SparkCluster, local_run, dagbag, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_PHIFLOW_SPARK", json.dumps(
        {"conn_type": "spark", "host": "spark://127.0.0.1", "port": cluster.port}))
    monkeypatch.setenv("PHIFLOW_LAKE", str(tmp_path / "lake"))
    dag = dagbag.get_dag(DAG).partial_subset("langid", include_upstream=True, include_downstream=False)
    run = dag.test(logical_date=FEB_RUN)
    assert run.state == "success"

    lake, (_, *reference) = Lake(), local_run
    for ref in reference:
        m = lake.require(ref.dataset, SNAP)
        assert m.airflow["run_id"] == run.run_id
        assert (m.digest, m.content_digest, m.row_count) == (ref.digest, ref.content_digest, ref.row_count)
        assert m.counters == ref.counters
    state = cluster.state()
    finished = {a["name"]: a for a in state["completedapps"] if a["state"] == "FINISHED"}
    assert {"phiflow-commoncrawl_extract-web", "phiflow-langid-web"} <= set(finished), state
    assert not state["activeapps"]
    for app in ("phiflow-commoncrawl_extract-web", "phiflow-langid-web"):
        app_id = finished[app]["id"]  # executors of each application ran on both workers
        assert all((work / app_id).is_dir() for work in cluster.worker_dirs), app_id


# -- Airflow on PostgreSQL ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres():
    try:
        pg = Postgres()
    except FileNotFoundError as e:
        pytest.skip(f"{e}: apt-get install postgresql (.ci/run does)")
    yield pg
    pg.stop()


@pytest.mark.airflow
def test_scheduler_backfill_with_postgres_metadata(postgres: Postgres, tmp_path) -> None:
    af = Airflow(tmp_path)
    # Rules-only quality: the run is about the metadata DB, not the LLM-graded classifier's stages.
    recipe = write_test_recipe(tmp_path / "recipe.yaml", quality={"classifier": None})
    af.env.update({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                   "PHIFLOW_RECIPE": str(recipe)})
    af.env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)  # SQLite's lock timeout, not psycopg2's
    with af.running(DAG, unpause=(DAG,)):  # `airflow db migrate` on PostgreSQL first
        af.cli("backfill", "create", "--dag-id", DAG, "--from-date", "2024-02-01", "--to-date", "2024-02-01")
        run_id = "backfill__2024-03-01T00:00:00+00:00"
        state = af.wait(lambda: af.runs(DAG).get(run_id) in ("success", "failed") and af.runs(DAG)[run_id],
                        "the backfill run")
        tis = af.api(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]
        states = {t["task_id"]: t["state"] for t in tis}
        assert state == "success" and set(states.values()) == {"success"}, states
        assert {"commoncrawl_extract", "langid", "quality", "dedup", "decontaminate"} <= set(states)
    clean, li = af.lake.require("web.clean", SNAP), af.lake.require("web.langid", SNAP)
    assert clean.airflow["run_id"] == li.airflow["run_id"] == run_id and 0 < clean.row_count <= li.row_count
    # the runs and task states live in PostgreSQL, not in a SQLite file
    assert postgres.query(f"SELECT state FROM dag_run WHERE run_id = '{run_id}'") == [("success",)]
    assert not list(Path(af.env["AIRFLOW_HOME"]).glob("*.db"))
