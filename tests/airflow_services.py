"""Airflow's services (scripts/airflow_services.sh) in a throwaway home, lake and port, for tests that
need a real api-server and scheduler (tests/test_airflow_scheduler.py, tests/test_browser.py, ...)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import ROOT

from phiflow.storage import Lake


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

    def cli(self, *args: str, attempts: int = 3) -> str:
        """`airflow <args>`. SQLite refuses a transaction that must upgrade to writing while the scheduler
        writes ("database is locked" at once, whatever the busy timeout); such a command rolled back
        whole and is run again, as an operator would."""
        for attempt in range(attempts):
            out = subprocess.run([str(ROOT / ".venv" / "bin" / "airflow"), *args], env=self.env,
                                 capture_output=True, text=True, timeout=180)
            if out.returncode == 0 or "database is locked" not in out.stderr + out.stdout or attempt == attempts - 1:
                break
            time.sleep(2)
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

    def wait(self, predicate, what: str, timeout: float = 900):
        """Poll until `predicate` returns something. The timeout only stops a hung scheduler from holding
        CI: it is no speed check (three backfill intervals took 392 s of the old 420 s on a slow day)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(3)
        raise AssertionError(f"timed out waiting for {what}")

    def knows(self, *dag_ids: str) -> bool:
        """Whether the dag-processor has parsed these DAGs (the API answers for them)."""
        try:
            return all(self.api(f"/api/v2/dags/{d}")["dag_id"] == d for d in dag_ids)
        except OSError:
            return False

    @contextmanager
    def running(self, *dag_ids: str, unpause: tuple[str, ...] = ()) -> Iterator[str]:
        """The services up, logged in, these DAGs parsed (and unpaused); stopped at the end.
        Yields what `start` printed."""
        printed = self.services("start")
        try:
            self.login()
            self.wait(lambda: self.knows(*dag_ids), "the dag-processor to parse the DAGs", timeout=180)
            for dag_id in unpause:
                self.cli("dags", "unpause", dag_id)
            yield printed
        finally:
            self.services("stop")

    def runs(self, dag_id: str) -> dict[str, str]:
        body = self.api(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")
        return {r["dag_run_id"]: r["state"] for r in body["dag_runs"]}
