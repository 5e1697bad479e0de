"""Throwaway servers of the production profile, each on a free 127.0.0.1 port and in its own process
group (killed whole at stop): an S3 server (moto), a Spark standalone cluster (a master and two
workers from the pyspark distribution) and a PostgreSQL cluster (Debian's binaries, run by a
non-root system user because postgres refuses root). Used by tests/test_production_profile.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from glob import glob
from pathlib import Path
from typing import Any

from airflow_services import free_port

SPARK_HOME = Path(importlib.util.find_spec("pyspark").origin).parent  # bin/ and jars/ of the distribution
PG_USER = "phiflowpg"


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def get_json(url: str, method: str = "GET") -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body.strip().startswith((b"{", b"[")) else body.decode()


class Group:
    """A command in its own session (process group), logging to a file; `stop` ends the whole group."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 stop_signal: int = signal.SIGTERM) -> None:
        self.log = log
        self.stop_signal = stop_signal
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, self.stop_signal)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class MotoS3:
    """moto's S3 in server mode with its request recorder, so tests can see the HTTP calls made."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(workdir / "moto-requests.jsonl")}
        self.server = Group([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                            workdir / "moto.log", env)
        wait_for(lambda: get_json(f"{self.endpoint}/moto-api/data.json") is not None, "the moto server")

    def client_env(self) -> dict[str, str]:
        """What a process needs to use this server as S3 (botocore reads AWS_ENDPOINT_URL)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def start_recording(self) -> None:
        get_json(f"{self.endpoint}/moto-api/recorder/reset-recording", "POST")
        get_json(f"{self.endpoint}/moto-api/recorder/start-recording", "POST")

    def stop_recording(self) -> list[dict]:
        """The requests since `start_recording`: method, url (path-style), headers."""
        get_json(f"{self.endpoint}/moto-api/recorder/stop-recording", "POST")
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/recorder/download-recording", timeout=10) as resp:
            return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]

    def stop(self) -> None:
        self.server.stop()


class SparkCluster:
    """A Spark standalone master and two one-core workers from the pyspark distribution."""

    def __init__(self, workdir: Path, workers: int = 2, worker_memory: str = "2g") -> None:
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.worker_dirs = [workdir / f"worker{i}" for i in range(workers)]  # executors' folders, one per app
        env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
               "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
        spark_class = str(SPARK_HOME / "bin" / "spark-class")
        master = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                  "--port", str(self.port), "--webui-port", str(self.ui_port)]
        self.groups = [Group(master, workdir / "master.log", env)]
        try:
            wait_for(self.state, "the Spark master's web UI")
            for i, work in enumerate(self.worker_dirs):
                work.mkdir()
                self.groups.append(Group([spark_class, "org.apache.spark.deploy.worker.Worker", self.url,
                                          "--cores", "1", "--memory", worker_memory, "--host", "127.0.0.1",
                                          "--webui-port", str(free_port()), "--work-dir", str(work)],
                                         workdir / f"worker{i}.log", env))
            wait_for(lambda: sum(w["state"] == "ALIVE" for w in self.state()["workers"]) == workers,
                     "the workers to register with the master")
        except BaseException:
            self.stop()
            raise

    def state(self) -> dict:
        """The master's JSON status page: workers, active and completed applications."""
        return get_json(f"http://127.0.0.1:{self.ui_port}/json/")

    def stop(self) -> None:
        for group in reversed(self.groups):
            group.stop()


class Postgres:
    """A PostgreSQL cluster in a temp folder, trust auth on 127.0.0.1, owned by a system user."""

    def __init__(self) -> None:
        bins = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise FileNotFoundError("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed")
        self.bin = Path(bins[-1]).parent
        if os.geteuid() == 0:
            if subprocess.run(["id", PG_USER], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                               check=True, capture_output=True)
            self.as_user = ["runuser", "-u", PG_USER, "--"]
        else:
            self.as_user = []
        # Not under pytest's tmp_path: its parents are private to root, and postgres runs as PG_USER.
        self.dir = Path(tempfile.mkdtemp(prefix="phiflow-pg-"))
        if self.as_user:
            shutil.chown(self.dir, PG_USER)
        self.port = free_port()
        self.url = f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"
        data = self.dir / "data"
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(data), "-U", "airflow", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        self.server = Group([*self.as_user, str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                             "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=off", "-c", "max_connections=200"],
                            self.dir / "postgres.log", stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        try:
            wait_for(lambda: self._createdb(), "PostgreSQL to accept connections", timeout=60)
        except BaseException:
            self.stop()
            raise

    def _createdb(self) -> bool:
        import psycopg2

        try:
            conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname="postgres")
        except psycopg2.OperationalError:
            return False
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()
        return True

    def query(self, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname="airflow")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
