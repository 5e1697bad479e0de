"""A small client of Airflow's REST API (v2) for `phiflow backfill` and `make demo`: stdlib HTTP only,
no Airflow import.

Going through the API server (not the `airflow` CLI against the metadata DB) means the backfill and the
cleared task instances show in the UI with the user who asked for them, and works from any machine
that can reach the API server. Credentials come from flags or the environment and are never printed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from time import sleep
from typing import Any

from phiflow import settings

BUSY_RETRIES = 5  # a 503 (the metadata DB is busy) is retried this many times, 1 s, 2 s, ... apart


class AirflowAPIError(RuntimeError):
    """An API call failed; the message has the status and Airflow's `detail`, never the credentials."""


def as_utc(day: str, end: bool = False) -> str:
    """`2024-02-01` (or an ISO datetime) as an aware ISO datetime; a bare end date covers its whole day."""
    if len(day) == 10:
        d = date.fromisoformat(day)
        return datetime.combine(d, time.max if end else time.min, tzinfo=UTC).isoformat()
    dt = datetime.fromisoformat(day)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


@dataclass
class AirflowAPI:
    """Token-authenticated calls to one API server (`POST /auth/token` with username and password)."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0

    @classmethod
    def from_env(cls, url: str | None = None, username: str | None = None, password: str | None = None) -> AirflowAPI:
        """Flags first, then PHIFLOW_AIRFLOW_URL / _USER / _PASSWORD / _TOKEN, then the services' defaults."""
        host = os.environ.get("AIRFLOW__API__HOST", "127.0.0.1")
        port = os.environ.get("AIRFLOW__API__PORT", "8080")
        return cls(
            url=(url or os.environ.get("PHIFLOW_AIRFLOW_URL") or f"http://{host}:{port}").rstrip("/"),
            username=username or os.environ.get("PHIFLOW_AIRFLOW_USER") or "admin",
            password=password or os.environ.get("PHIFLOW_AIRFLOW_PASSWORD") or _generated_password(),
            token=os.environ.get("PHIFLOW_AIRFLOW_TOKEN"),
        )

    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token()}"
        data = json.dumps(body).encode() if body is not None else None
        attempt = 0
        while True:
            req = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:2000]
                # 503: the metadata database is busy (SQLite under a running scheduler): a moment later it is not
                if e.code == 503 and attempt < BUSY_RETRIES:
                    attempt += 1
                    sleep(attempt)
                    continue
                raise AirflowAPIError(f"{method} {path}: HTTP {e.code}: {detail}") from None
            except urllib.error.URLError as e:
                raise AirflowAPIError(f"{method} {path}: cannot reach {self.url} ({e.reason})") from None

    def _token(self) -> str:
        if not self.token:
            if not self.password:
                raise AirflowAPIError("no Airflow credentials: pass --password or set PHIFLOW_AIRFLOW_PASSWORD")
            body = {"username": self.username, "password": self.password}
            self.token = self._call("POST", "/auth/token", body, auth=False)["access_token"]
        return self.token

    # -- calls -------------------------------------------------------------------------------------
    def dag_of_task(self, task_id: str, tag: str = "phiflow") -> str:
        """The one DAG (tagged `tag`) that has a task `task_id`; ambiguity is an error, not a guess."""
        dags = self._call("GET", f"/api/v2/dags?tags={tag}&limit=1000")["dags"]
        found = [d["dag_id"] for d in dags if any(
            t["task_id"] == task_id for t in self._call("GET", f"/api/v2/dags/{d['dag_id']}/tasks")["tasks"])]
        if len(found) != 1:
            raise AirflowAPIError(f"stage {task_id!r} is in DAGs {found or 'none'}: name one with --dag")
        return found[0]

    def create_backfill(self, dag_id: str, start: str, end: str, reprocess: str, max_active_runs: int) -> dict:
        """`POST /api/v2/backfills`; reprocess: none (missing runs only), failed, completed (all)."""
        return self._call("POST", "/api/v2/backfills", {
            "dag_id": dag_id, "from_date": as_utc(start), "to_date": as_utc(end, end=True),
            "reprocess_behavior": reprocess, "max_active_runs": max_active_runs})

    def missing_runs(self, dag_id: str, start: str, end: str) -> list[str]:
        """Logical dates in [start, end] that have no run yet (`POST /api/v2/backfills/dry_run`)."""
        body = self._call("POST", "/api/v2/backfills/dry_run", {
            "dag_id": dag_id, "from_date": as_utc(start), "to_date": as_utc(end, end=True),
            "reprocess_behavior": "none"})
        return [b["logical_date"] for b in body["backfills"]]

    def clear_tasks(self, dag_id: str, task_ids: list[str], run_id: str, downstream: bool,
                    dry_run: bool = False) -> list[dict]:
        """Clear (rerun) `task_ids` in one run, whatever their state."""
        body = self._call("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", {
            "dry_run": dry_run, "task_ids": task_ids, "dag_run_id": run_id, "only_failed": False,
            "include_downstream": downstream, "reset_dag_runs": True, "note": "phiflow backfill"})
        return body["task_instances"]

    def is_paused(self, dag_id: str) -> bool:
        return bool(self._call("GET", f"/api/v2/dags/{dag_id}")["is_paused"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}?update_mask=is_paused", {"is_paused": paused})

    def dag_ids(self, tag: str = "phiflow") -> list[str]:
        """The DAGs the dag-processor has parsed, with this tag."""
        return [d["dag_id"] for d in self._call("GET", f"/api/v2/dags?tags={tag}&limit=1000")["dags"]]

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """A manual run now (no logical date: asset-scheduled DAGs have no interval); its run id."""
        body = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return body["dag_run_id"]

    def import_errors(self) -> list[dict]:
        return self._call("GET", "/api/v2/importErrors")["import_errors"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")["task_instances"]

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=1000")["dag_runs"]


def _generated_password() -> str | None:
    """The simple auth manager's generated admin password of the local services, if there is one: in
    AIRFLOW_HOME, else in the embedded default's Airflow home (so the CLI works without scripts/env.sh)."""
    home = os.environ.get("AIRFLOW_HOME") or str(settings.airflow_home())
    path = os.path.join(home, "simple_auth_manager_passwords.json.generated")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get("admin")
    return None
