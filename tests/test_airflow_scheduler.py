"""A real scheduler run (not dags test): `make airflow`'s services start, `airflow backfill create`
over three months commits exactly the snapshots of those intervals, `airflow tasks clear -t langid`
over one interval rewrites only that partition of that stage, and `make airflow-stop` ends them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from phiflow.storage import Lake

pytestmark = pytest.mark.airflow
DAG = "phiflow_ingest_web"
FEB, APR = {"snapshot": "CC-MAIN-2024-10"}, {"snapshot": "CC-MAIN-2024-18"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """The services of scripts/airflow_services.sh in their own home, lake and port."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "PHIFLOW_HOME": str(home),
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(home / "lineage" / "events.jsonl"), "append": True}),
        }
        self.lake = Lake(str(home / "lake"))
        self._token: str | None = None

    def services(self, action: str) -> str:
        out = subprocess.run([str(ROOT / "scripts" / "airflow_services.sh"), action], env=self.env,
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def cli(self, *args: str) -> str:
        out = subprocess.run([str(ROOT / ".venv" / "bin" / "airflow"), *args], env=self.env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    def api(self, path: str, body: dict | None = None) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}"
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def login(self) -> None:
        pw_file = Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        password = json.loads(pw_file.read_text())["admin"]
        self._token = self.api("/auth/token", {"username": "admin", "password": password})["access_token"]

    def wait(self, predicate, what: str, timeout: float = 420):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(3)
        raise AssertionError(f"timed out waiting for {what}")

    def runs(self) -> dict[str, str]:
        body = self.api(f"/api/v2/dags/{DAG}/dagRuns?limit=100")
        return {r["dag_run_id"]: r["state"] for r in body["dag_runs"]}


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
        runs = {k: v for k, v in airflow.runs().items() if k in expected}
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
    airflow.wait(lambda: airflow.runs()["backfill__2024-05-01T00:00:00+00:00"] == "success", "the cleared run")
    assert again.digest == apr.digest and again.airflow["try_number"] == apr.airflow["try_number"] + 1
    assert lake.require("web.extracted", APR).attempt == extracted_apr.attempt  # upstream stage untouched
    assert lake.require("web.langid", FEB).attempt == feb.attempt  # other interval untouched
    events = [json.loads(line) for line in (Path(airflow.env["PHIFLOW_HOME"]) / "lineage" / "events.jsonl").open()]
    assert any(e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{DAG}.langid" and e["outputs"] for e in events)
