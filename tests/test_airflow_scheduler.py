"""A real scheduler run (not dags test): `make airflow`'s services start, `airflow backfill create`
over three months commits exactly the snapshots of those intervals, `airflow tasks clear -t langid`
over one interval rewrites only that partition of that stage, `phiflow backfill` (REST API) clears one
stage in the run that processed each partition and creates runs only when asked for a whole DAG, and
`make airflow-stop` ends them. The tests share one start of the services and run in file order."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest
from airflow_services import Airflow
from conftest import ROOT

pytestmark = pytest.mark.airflow
DAG = "phiflow_ingest_web"
FEB, APR = {"snapshot": "CC-MAIN-2024-10"}, {"snapshot": "CC-MAIN-2024-18"}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    af = Airflow(tmp_path_factory.mktemp("sched"))
    with af.running(DAG) as printed:
        assert f"http://127.0.0.1:{af.port}" in printed and "password:" in printed
        yield af


def test_services_listen_on_loopback_only_and_keep_their_secrets_private(airflow: Airflow) -> None:
    home = Path(airflow.env["AIRFLOW_HOME"])
    services = [psutil.Process(int(p.read_text())) for p in (home / "run").glob("*.pid")]
    assert len(services) == 4
    procs = [q for p in services for q in [p, *p.children(recursive=True)]]
    listening = [(q.name(), c.laddr) for q in procs for c in q.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert ("127.0.0.1", airflow.port) in [(a.ip, a.port) for _, a in listening]  # the api-server
    assert all(a.ip in ("127.0.0.1", "::1") for _, a in listening), listening  # nothing else, nowhere else
    password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    for path in [home, *home.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"  # the user's alone: 700 folders, 600 files
        if path.is_file() and path.suffix in (".log", ".json", ".cfg", ""):
            assert password not in path.read_text(errors="replace") or path.name.startswith("simple_auth"), path
    assert Path(airflow.env["PHIFLOW_HOME"]).stat().st_mode & 0o077 == 0


def test_backfill_then_clear_one_stage(airflow: Airflow) -> None:
    airflow.cli("dags", "unpause", DAG)
    airflow.cli("backfill", "create", "--dag-id", DAG, "--from-date", "2024-02-01", "--to-date", "2024-04-30")
    expected = {"backfill__2024-03-01T00:00:00+00:00", "backfill__2024-04-01T00:00:00+00:00",
                "backfill__2024-05-01T00:00:00+00:00"}

    def done() -> dict | None:
        runs = {k: v for k, v in airflow.runs(DAG).items() if k in expected}
        return runs if len(runs) == 3 and all(s in ("success", "failed") for s in runs.values()) else None

    states = airflow.wait(done, "the backfill runs", timeout=1500)  # three intervals of five Spark stages
    assert set(states.values()) == {"success"}, states
    lake = airflow.lake
    feb, apr = lake.require("web.langid", FEB), lake.require("web.langid", APR)
    assert feb.airflow["run_id"] == "backfill__2024-03-01T00:00:00+00:00"  # Feb interval, Feb snapshot
    assert apr.airflow["run_id"] == "backfill__2024-05-01T00:00:00+00:00"
    extracted_apr = lake.require("web.extracted", APR)
    # A stage's task log: its own progress and counters, and Spark only when something is wrong.
    [log] = (Path(airflow.env["AIRFLOW_HOME"]) / "logs").glob(
        f"dag_id={DAG}/run_id=backfill__2024-05-01T00:00:00+00:00/task_id=langid/attempt=1.log")
    text = log.read_text()
    assert "[phiflow] langid committed web.langid/snapshot=CC-MAIN-2024-18" in text
    assert "INFO SparkContext" not in text and "INFO Executor" not in text, text[:2000]

    # -t is a substring match in Airflow 3.3 (its help says regex; "^langid$" matches nothing)
    airflow.cli("tasks", "clear", DAG, "-t", "langid", "-s", "2024-04-01", "-e", "2024-04-01", "-y")

    def rewritten():
        m = lake.manifest("web.langid", APR)
        return m if m is not None and m.generation != apr.generation else None

    langid_shards = [m.attempt for m in lake.shards("web.langid", APR)]
    again = airflow.wait(rewritten, "langid of April to be committed again")
    airflow.wait(lambda: airflow.runs(DAG)["backfill__2024-05-01T00:00:00+00:00"] == "success", "the cleared run")
    assert again.digest == apr.digest and again.airflow["try_number"] == apr.airflow["try_number"] + 1
    # A cleared sharded stage redoes only shards whose inputs or recipe changed: here none (a resume).
    assert [m.attempt for m in lake.shards("web.langid", APR)] == langid_shards and len(langid_shards) == 2
    assert lake.require("web.extracted", APR).generation == extracted_apr.generation  # upstream stage untouched
    assert lake.require("web.langid", FEB).generation == feb.generation  # other interval untouched
    events = [json.loads(line) for line in (Path(airflow.env["PHIFLOW_HOME"]) / "lineage" / "events.jsonl").open()]
    assert any(e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{DAG}.langid" and e["outputs"] for e in events)


def phiflow(af: Airflow, *args: str, rc: int = 0) -> str:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "phiflow"), *args], env=af.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == rc, out.stdout + out.stderr
    password = (Path(af.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated").read_text()
    assert af._token not in out.stdout + out.stderr
    assert all(p not in out.stdout + out.stderr for p in password.split('"') if len(p) > 8)
    return out.stdout + out.stderr


def test_phiflow_backfill_clears_one_stage_and_creates_only_what_is_asked(airflow: Airflow) -> None:
    airflow.env["PHIFLOW_AIRFLOW_URL"] = f"http://127.0.0.1:{airflow.port}"
    feb = ("--from", "2024-02-01", "--to", "2024-02-01")
    ambiguous = phiflow(airflow, "backfill", "--stage", "langid", *feb, rc=1)  # the test recipe has two sources
    assert "phiflow_ingest_web" in ambiguous and "--dag" in ambiguous and "Traceback" not in ambiguous

    # Airflow runs one backfill per DAG at a time: the scheduler closes the first one after its runs end
    airflow.wait(lambda: all(b["completed_at"] for b in airflow.api(f"/api/v2/backfills?dag_id={DAG}")["backfills"]),
                 "the first backfill to complete")
    # June has no snapshot: a stage backfill has nothing to rerun and creates no run
    june = ("--from", "2024-06-01", "--to", "2024-06-01")
    printed = phiflow(airflow, "backfill", "--stage", "langid", "--dag", DAG, *june, rc=1)
    assert "2024-06-01 holds no partition" in printed and "nothing to rerun" in printed
    assert len(airflow.api(f"/api/v2/backfills?dag_id={DAG}")["backfills"]) == 1
    # a whole-DAG backfill of the intervals without a run, on a paused DAG: unpaused, and said so
    airflow.cli("dags", "pause", DAG)
    printed = phiflow(airflow, "backfill", "--dag", DAG, "--missing-only", *june)
    assert f"unpaused {DAG}" in printed and "the intervals without a run" in printed
    run_id = "backfill__2024-07-01T00:00:00+00:00"
    airflow.wait(lambda: airflow.runs(DAG).get(run_id) in ("success", "failed"), "the backfilled run")
    assert airflow.runs(DAG)[run_id] == "success"
    assert [b["dag_id"] for b in airflow.api(f"/api/v2/backfills?dag_id={DAG}")["backfills"]] == [DAG, DAG]

    # February has its run: only langid is cleared there, and only its shard 1 rewritten (--shards)
    lake = airflow.lake
    extracted, langid = lake.require("web.extracted", FEB), lake.require("web.langid", FEB)
    shard0, shard1 = lake.shards("web.langid", FEB)
    printed = phiflow(airflow, "backfill", "--stage", "langid", "--dag", DAG, "--shards", "1", *feb)
    feb_run = "backfill__2024-03-01T00:00:00+00:00"
    assert f"requested a rerun of web.langid/{shard1.key}" in printed
    assert f"will clear {DAG}.langid in run {feb_run} (snapshot=CC-MAIN-2024-10)" in printed  # the plan, first
    assert f"cleared {DAG}.langid in run {feb_run}" in printed and "no run has processed" not in printed

    def rewritten():
        m = lake.manifest("web.langid", FEB)
        return m if m is not None and m.generation != langid.generation else None

    again = airflow.wait(rewritten, "langid of February to be committed again")
    assert again.digest == langid.digest and again.airflow["try_number"] == langid.airflow["try_number"] + 1
    now0, now1 = lake.shards("web.langid", FEB)
    assert now0.attempt == shard0.attempt and now1.attempt != shard1.attempt  # exactly the named shard
    assert not lake.rerun_requested("web.langid", shard1.partition)  # the request is used up
    assert lake.require("web.extracted", FEB).generation == extracted.generation  # only the stage reran
