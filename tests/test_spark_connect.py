"""Stages as clients of one shared local Spark Connect server (`spark.session: connect`,
spark_jobs/engine/connect_server.py): the same committed partitions as classic Spark, one server JVM
for all of them, and a server that stops when idle or when asked and is replaced when it dies.

The Airflow tests run their stages this way too (the test recipe keeps the demo's `session: connect`):
tests/test_faults.py kills a snapshot's extract client after k shards and checks the retry redoes n-k."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from phiflow.recipe import load_recipe
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, decontaminate, dedup, langid, quality, seed_select, synthesize
from spark_jobs.engine import connect_server
from spark_jobs.engine.stage_io import StageContext

FEB = {"snapshot": "CC-MAIN-2024-10"}
CHAIN = [commoncrawl_extract, langid, quality, dedup, decontaminate]
COMMAND = ["spark-submit", "--master", "local[2]", "--driver-memory", "1g",
           "--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
           "--conf", "spark.sql.shuffle.partitions=4", "--class", connect_server.SERVER_CLASS, "spark-internal"]


def server_env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}


def run_client(url: str, job: str, lake: Lake, recipe: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "spark_jobs" / f"{job}.py"), "--recipe", recipe or os.environ["PHIFLOW_RECIPE"],
         "--source", "web", "--partition", json.dumps(FEB), "--airflow-run", "{}", "--lake", lake.url,
         "--shards", "missing"],
        env={**server_env(), "SPARK_REMOTE": url}, capture_output=True, text=True, timeout=600)


def committed(lake: Lake) -> dict[tuple[str, str], tuple[int, str]]:
    """Every committed partition and shard of the lake: (rows, manifest digest)."""
    out = {}
    for dataset in lake.datasets():
        for m in lake.partitions(dataset):
            out[(dataset, m.key)] = (m.row_count, m.digest)
            for s in lake.shards(dataset, m.partition):
                out[(dataset, s.key)] = (s.row_count, s.digest)
    return out


def state_file() -> Path:
    [f] = connect_server.folder().glob("*.json")
    return f


def state() -> dict:
    return json.loads(state_file().read_text())


def test_stage_clients_commit_what_classic_spark_commits(spark, tmp_path: Path) -> None:
    remote, classic = Lake(str(tmp_path / "remote")), Lake(str(tmp_path / "classic"))
    recipe = load_recipe(os.environ["PHIFLOW_RECIPE"])
    servers = set()
    for module in CHAIN:
        job = module.__name__.rsplit(".", 1)[1]
        with connect_server.session(COMMAND, server_env()) as url:
            done = run_client(url, job, remote)
            servers.add(state()["jvm"])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "[phiflow]" in done.stdout and f"{job} committed" in done.stdout  # the client prints the stage log
        module.run(spark, StageContext(recipe, "web", dict(FEB), classic))
    assert len(servers) == 1  # one server JVM for the whole chain
    got, want = committed(remote), committed(classic)
    assert len(want) >= 15 and {d for d, _ in want} >= {"web.extracted", "web.dedup", "web.clean"}
    assert got == want  # every partition and shard: the same rows (digests cover the content)


def offline_llm_recipe(tmp_path: Path) -> Path:
    """The test recipe with the offline model (the demo's `llm:`) and one short greedy workflow."""
    data = yaml.safe_load(Path(os.environ["PHIFLOW_RECIPE"]).read_text())
    assert data["llm"]["backend"] == "offline"
    data["stages"]["seed_select"]["input_suffix"] = "langid"  # seeds straight from langid: no curation here
    data["stages"]["synthesize"] = {"workflows": [
        {"name": "rewrites", "kind": "rewrite", "output": "web_rewrites", "max_seeds": 3, "max_tokens": 12,
         "drop_truncated": False, "prompts": {"rewrite": "Rewrite in one sentence: {seed}"}}]}
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("llm", "client"), [
    ({"backend": "offline"}, True),
    ({"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_conn_id": "phiflow_llm"}, False),
    ({"backend": "vllm"}, False),
])
def test_llm_stages_are_clients_only_without_a_secret_or_an_engine(tmp_path: Path, llm: dict, client: bool) -> None:
    from operators.spark_stage import SparkStageOperator

    data = yaml.safe_load(Path(os.environ["PHIFLOW_RECIPE"]).read_text())
    data["llm"] = llm
    (path := tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def op(stage: str) -> SparkStageOperator:
        return SparkStageOperator(task_id=stage, stage=stage, source="web", recipe_path=str(path))

    assert op("synthesize").connect is client
    assert op("langid").connect  # a stage that calls no LLM is a client whatever the LLM


def test_offline_llm_stage_as_a_client_writes_what_classic_spark_writes(spark, tmp_path: Path) -> None:
    """The offline model needs no secret, so its stages run on the shared server (operators/spark_stage.py):
    the model generates in the server's Python workers the rows it generates under classic Spark."""
    path = offline_llm_recipe(tmp_path)
    recipe = load_recipe(str(path))
    classic, remote = Lake(str(tmp_path / "classic")), Lake(str(tmp_path / "remote"))
    for module in (commoncrawl_extract, langid, seed_select):
        module.run(spark, StageContext(recipe, "web", dict(FEB), classic))
    shutil.copytree(tmp_path / "classic", tmp_path / "remote")  # the same seeds; no LLM answer cached yet
    synthesize.run(spark, StageContext(recipe, "web", dict(FEB), classic))
    with connect_server.session(COMMAND, server_env()) as url:
        done = run_client(url, "synthesize", remote, str(path))
        server_log = connect_server.folder() / f"{Path(state_file()).stem}.log"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[phiflow] synthesize rewrites: 3/3 kept" in done.stdout  # each workflow's totals in the task log
    assert "[phiflow] synthesize rewrites: 3 seeds -> 3/3 kept" in server_log.read_text()  # the worker's line

    def rows(lake: Lake) -> list[tuple[str, str]]:
        table = lake.read_table(lake.require("synthetic.web_rewrites", {"source": "web", **FEB}))
        return sorted(zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist(), strict=True))

    got, want = rows(remote), rows(classic)
    assert len(want) == 3 and all(text for _, text in want)
    assert got == want  # greedy decoding, the same batches: the same texts


def test_server_stops_when_idle_and_is_replaced_when_it_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    connect_server.stop()
    monkeypatch.setenv("PHIFLOW_CONNECT_IDLE_S", "4")
    with connect_server.session(COMMAND, server_env()):
        first = state()
        time.sleep(8)  # in use: not idle, whatever the time
        assert state() == first and Path(f"/proc/{first['jvm']}").exists()
    deadline = time.time() + 60
    while Path(f"/proc/{first['jvm']}").exists():  # idle now: the watchdog stops it
        assert time.time() < deadline, "an idle server was not stopped"
        time.sleep(1)
    assert not list(connect_server.folder().glob("*.json"))

    monkeypatch.setenv("PHIFLOW_CONNECT_IDLE_S", "600")
    with connect_server.session(COMMAND, server_env()):
        second = state()
    os.kill(second["jvm"], signal.SIGKILL)  # the server dies between two stages
    deadline = time.time() + 30
    while list(connect_server.folder().glob("*.json")):  # its watchdog forgets it
        assert time.time() < deadline, "a dead server is still recorded"
        time.sleep(0.5)
    with connect_server.session(COMMAND, server_env()) as url:
        third = state()
        assert third["jvm"] != second["jvm"] and url.endswith(f":{third['port']}")
    assert connect_server.stop() == [third["watchdog"]]
    assert not Path(f"/proc/{third['jvm']}").exists() or _zombie(third["jvm"])


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
