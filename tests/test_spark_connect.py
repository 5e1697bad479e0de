"""Stages as clients of one shared local Spark Connect server (`spark.session: connect`,
spark_jobs/engine/connect_server.py): the same committed partitions as classic Spark, one server JVM
for all of them, and a server that stops when idle or when asked and is replaced when it dies.

The Airflow tests run their stages this way too (the test recipe keeps the demo's `session: connect`):
tests/test_faults.py kills a snapshot's extract client after k shards and checks the retry redoes n-k."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from phiflow.recipe import load_recipe
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, decontaminate, dedup, langid, quality
from spark_jobs.engine import connect_server
from spark_jobs.engine.stage_io import StageContext

FEB = {"snapshot": "CC-MAIN-2024-10"}
CHAIN = [commoncrawl_extract, langid, quality, dedup, decontaminate]
COMMAND = ["spark-submit", "--master", "local[2]", "--driver-memory", "1g",
           "--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
           "--conf", "spark.sql.shuffle.partitions=4", "--class", connect_server.SERVER_CLASS, "spark-internal"]


def server_env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}


def run_client(url: str, job: str, lake: Lake) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "spark_jobs" / f"{job}.py"), "--recipe", os.environ["PHIFLOW_RECIPE"],
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


def state() -> dict:
    [f] = connect_server.folder().glob("*.json")
    return json.loads(f.read_text())


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
