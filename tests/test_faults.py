"""Faults in a real scheduler run (`make airflow`'s services, LocalExecutor, not `dags test`).

Each test starts one run, waits until the stage is half-way (the scripted LLM server answers slowly,
so synthesize is mid-write for seconds; training has saved its first checkpoint), breaks one part
with SIGKILL or a stop, and then checks what a user relies on: after Spark's or Airflow's retries the
run succeeds, the partition is committed whole (every seed answered once, no row twice, no orphan
attempt folder left), what was committed before the fault stayed readable throughout, the LLM answers
paid for before the fault were reused from the cache, and training resumed from its last checkpoint.

The upstream partitions (extract, langid) are committed in-process first: the faults are about the
stages downstream of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from airflow_services import Airflow
from conftest import write_test_recipe
from llm_server import LLMTestServer

from phiflow import shards
from phiflow.manifest import Manifest
from phiflow.recipe import load_recipe
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, langid
from spark_jobs.engine.stage_io import StageContext

pytestmark = pytest.mark.airflow
SYNTH, TRAIN, INGEST = "phiflow_synthesis", "phiflow_training", "phiflow_ingest_web"
FEB = {"snapshot": "CC-MAIN-2024-10"}
APR = {"snapshot": "CC-MAIN-2024-18"}
WARCS = 4  # per snapshot of the sample; one shard each (shard_files: 1)
OUT = {"source": "web", **FEB}
SEEDS = 8  # one LLM request each, 1 s apiece: the stage is mid-run for seconds


class Faults:
    """The services, the slow LLM server (restartable on its port) and the recipe the runs read."""

    def __init__(self, home: Path) -> None:
        self.af = Airflow(home)
        self.recipe_path = home / "recipe.yaml"
        self.llm = LLMTestServer(delay_s=1.0).__enter__()
        self.port = self.llm.port
        self.requests_before = 0
        self.asked_before_restart: list[str] = []
        self.cached_before = 0

    def write_recipe(self, seed: int) -> None:
        """A new seed: new prompts, so the run does real LLM work instead of reading the cache."""
        write_test_recipe(self.recipe_path)
        data = yaml.safe_load(self.recipe_path.read_text())
        for name in ("broken", "wiki"):
            data["sources"].pop(name)
        data["airflow"] = {"retries": 2, "retry_delay_s": 4}
        data["llm"] = {"backend": "openai", "model": "scripted", "base_url": self.llm.base_url, "max_concurrency": 1,
                       "max_retries": 2, "backoff_s": 0.05}
        data["training"]["pretrain"].update({"steps": 24, "checkpoint_interval": 6,  # killed between 6 and 12
                                             "phases": []})  # one pretraining task (phases: test_training_dag)
        data["training"].pop("stress", None)
        data["training"]["midtrain"]["steps"] = 2
        data["stages"]["seed_select"]["input_suffix"] = "langid"
        data["stages"]["commoncrawl_extract"]["shard_files"] = 1
        data["stages"]["synthesize"] = {"seed": seed, "batch_rows": 2, "workflows": [
            {"name": "exercises", "kind": "rewrite", "max_seeds": SEEDS, "samples_per_seed": 1,
             "prompts": {"rewrite": "Turn into an exercise: {seed}"}}]}
        self.recipe_path.write_text(yaml.safe_dump(data, sort_keys=False))

    def restart_llm(self) -> None:
        self.asked_before_restart = self.asked()
        self.llm = LLMTestServer(delay_s=1.0, port=self.port).__enter__()
        self.requests_before = 0

    def cached(self) -> int:
        """LLM answers in the lake's cache (`_cache/llm/<xx>/<key>.json`)."""
        return len(list(Path(self.af.lake.root, "_cache", "llm").glob("*/*.json")))

    def asked(self) -> list[str]:
        """The prompts the LLM endpoint got since the run started (across a restart)."""
        since = self.llm.bodies[self.requests_before:]
        return self.asked_before_restart + [b["messages"][-1]["content"] for b in since]

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        # one run at a time, so what the LLM server sees belongs to this test (an earlier failure may have
        # left its run going)
        self.af.wait(lambda: not {"queued", "running"} & set(self.af.runs(dag_id).values()),
                     f"earlier {dag_id} runs to end", timeout=600)
        self.requests_before, self.asked_before_restart = len(self.llm.bodies), []
        self.cached_before = self.cached()
        run = self.af.api(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def task(self, dag_id: str, run_id: str, task_id: str) -> dict:
        return self.af.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def finished(self, dag_id: str, run_id: str, timeout: float = 420) -> str:
        return self.af.wait(lambda: (s := self.af.runs(dag_id).get(run_id)) in ("success", "failed") and s,
                            f"{dag_id} run {run_id} to finish", timeout=timeout)

    def mid_synthesis(self, run_id: str) -> Manifest | None:
        """Wait until synthesize is mid-stage (one answer cached, the next asked); the committed manifest then."""
        deadline = time.time() + 300
        # an answer is in the cache (the client caches each as it arrives), another is on its way
        while len(self.asked()) < 2 or self.cached() <= self.cached_before:  # polled fast: seconds of LLM phase
            assert time.time() < deadline, "synthesize did not reach the LLM"
            time.sleep(0.05)
        assert self.task(SYNTH, run_id, "synthesize_web")["state"] == "running"
        return self.af.lake.manifest("synthetic.generated", OUT)


@pytest.fixture(scope="module")
def faults(tmp_path_factory, spark):
    f = Faults(tmp_path_factory.mktemp("faults"))
    f.write_recipe(seed=0)
    ctx = StageContext(load_recipe(f.recipe_path), "web", dict(FEB), f.af.lake)
    commoncrawl_extract.run(spark, ctx)
    langid.run(spark, ctx)
    f.af.env.update({
        "PHIFLOW_RECIPE": str(f.recipe_path),
        # Spark retries a lost task itself (local[N,F] = N cores, F attempts per task), as clusters do.
        "AIRFLOW_CONN_PHIFLOW_SPARK": json.dumps({"conn_type": "spark", "host": "local[2,3]"}),
        # A dead worker is noticed in seconds, not the default five minutes.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    })
    try:
        with f.af.running(SYNTH, TRAIN, INGEST, unpause=(SYNTH, TRAIN)):
            yield f
    finally:
        f.llm.stop()


# -- processes ------------------------------------------------------------------------------------
def processes(match: Callable[[list[str]], bool]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if match(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def command(p: psutil.Process) -> str:
    """A process's command line; empty for one that ended or is a zombie meanwhile."""
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def scheduler_of(f: Faults) -> psutil.Process:
    return psutil.Process(int(Path(f.af.env["AIRFLOW_HOME"], "run", "scheduler.pid").read_text()))


def stage_driver(f: Faults, script: str) -> psutil.Process:
    """The Python driver of a spark-submitted stage (a child of the SparkSubmit JVM) of this test's
    scheduler: another test file may run the same stage at the same time under pytest-xdist."""
    found = [p for p in scheduler_of(f).children(recursive=True)
             if (cmd := command(p).split()) and len(cmd) > 1 and "python" in cmd[0]
             and cmd[1].endswith(f"spark_jobs/{script}")]
    assert len(found) == 1, [(p.pid, command(p)) for p in found]
    return found[0]


def kill_tree(root: psutil.Process) -> list[int]:
    """SIGKILL a process and everything under it, children first: a machine going away."""
    victims = [*root.children(recursive=True)[::-1], root]
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    return [p.pid for p in victims]


# -- what every recovered synthesis run must show ----------------------------------------------------
def assert_recovered(f: Faults, run_id: str, before: Manifest | None, min_try: int) -> Manifest:
    assert f.finished(SYNTH, run_id) == "success", f.task(SYNTH, run_id, "synthesize_web")
    ti = f.task(SYNTH, run_id, "synthesize_web")
    assert ti["try_number"] >= min_try, ti
    m = f.af.lake.require("synthetic.generated", OUT)
    assert before is None or m.attempt != before.attempt  # replaced whole by the recovered attempt
    assert m.airflow["run_id"] == run_id and m.airflow["try_number"] == ti["try_number"]
    rows = f.af.lake.read_table(m).to_pylist()
    assert len(rows) == m.row_count == SEEDS  # one kept sample per seed: none lost, none twice
    assert len({r["doc_id"] for r in rows}) == SEEDS and len({r["parent_ids"][0] for r in rows}) == SEEDS
    # The killed attempt's half-written files go once its writer's lease has expired (ttl 0 here).
    attempts = Path(f.af.lake.partition_path("synthetic.generated", OUT), "_attempts")
    f.af.lake.collect_garbage("synthetic.generated", OUT, ttl_s=0, grace_s=0)
    assert sorted(os.listdir(attempts)) == [m.attempt]
    assert len(set(f.asked())) == SEEDS  # every seed's prompt reached the LLM; no other did
    return m


def committed_stays_readable(f: Faults, before: Manifest | None) -> None:
    """At the moment of the fault the last committed partition is still the one readers see."""
    if before is not None:
        now = f.af.lake.require("synthetic.generated", OUT)
        assert now.attempt == before.attempt and f.af.lake.read_table(now).num_rows == before.row_count


def test_stage_driver_killed_mid_write_airflow_retries(faults: Faults) -> None:
    run_id = faults.trigger(SYNTH, FEB)
    before = faults.mid_synthesis(run_id)
    driver = stage_driver(faults, "synthesize.py")
    # The rows are computed (LLM calls) and cached, then written: kill the moment the write job has begun.
    attempts = Path(faults.af.lake.partition_path("synthetic.generated", OUT), "_attempts")
    old = {before.attempt} if before else set()
    deadline = time.time() + 120
    while not (attempts.is_dir() and set(os.listdir(attempts)) - old):
        assert time.time() < deadline and driver.is_running(), "the write never began"
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    assert faults.af.lake.manifest("synthetic.generated", OUT) == before  # the half-written attempt is not seen
    committed_stays_readable(faults, before)
    m = assert_recovered(faults, run_id, before, min_try=2)
    assert m.counters["llm_cache_hits"] == SEEDS  # every answer paid for before the kill came from the cache


def test_spark_task_killed_spark_retries_it(faults: Faults) -> None:
    faults.write_recipe(seed=1)
    run_id = faults.trigger(SYNTH, FEB)
    before = faults.mid_synthesis(run_id)
    driver = stage_driver(faults, "synthesize.py")
    jvm = driver.parent()
    workers = [p for p in jvm.children(recursive=True)
               if "pyspark.daemon" in command(p) and p.parent() is not None and p.parent().pid != jvm.pid]
    # (forked by the daemon: the processes running tasks)
    assert workers, "no Python worker of the synthesize job"
    for w in workers:
        w.send_signal(signal.SIGKILL)
    committed_stays_readable(faults, before)
    m = assert_recovered(faults, run_id, before, min_try=1)
    assert faults.task(SYNTH, run_id, "synthesize_web")["try_number"] == 1  # Spark's task retry was enough
    assert m.counters["llm_cache_hits"] >= 1


def test_airflow_worker_killed_task_is_retried(faults: Faults) -> None:
    faults.write_recipe(seed=2)
    run_id = faults.trigger(SYNTH, FEB)
    before = faults.mid_synthesis(run_id)
    ti_id = faults.task(SYNTH, run_id, "synthesize_web")["id"]
    [task_proc] = processes(lambda cmd: bool(cmd) and cmd[0] == f"airflow worker -- {ti_id}")
    scheduler = scheduler_of(faults)
    worker = task_proc
    while worker.parent() is not None and worker.parent().pid != scheduler.pid:
        worker = worker.parent()  # up to the executor's worker process, the scheduler's child
    assert worker.parent() is not None and worker.pid != scheduler.pid
    kill_tree(worker)  # the worker, its task supervisor, the task, spark-submit and the Spark JVM
    committed_stays_readable(faults, before)
    m = assert_recovered(faults, run_id, before, min_try=2)
    assert m.counters["llm_cache_hits"] >= 1  # the answer(s) received before the kill


def test_llm_server_stopped_mid_stage(faults: Faults) -> None:
    faults.write_recipe(seed=3)
    run_id = faults.trigger(SYNTH, FEB)
    before = faults.mid_synthesis(run_id)
    faults.llm.stop()
    faults.af.wait(lambda: faults.task(SYNTH, run_id, "synthesize_web")["state"] == "up_for_retry",
                   "the first try to fail on the stopped LLM server", timeout=300)
    committed_stays_readable(faults, before)
    faults.restart_llm()
    m = assert_recovered(faults, run_id, before, min_try=2)
    assert m.counters["llm_cache_hits"] >= 1


def test_training_killed_between_checkpoints_resumes(faults: Faults) -> None:
    recipe = load_recipe(faults.recipe_path)
    interval, steps = recipe.training.pretrain.checkpoint_interval, recipe.training.pretrain.steps
    assert 0 < interval < steps
    run_id = faults.trigger(TRAIN)
    ckpts = Path(faults.af.lake.root, "_checkpoints", recipe.name, "pretrain")

    def first_checkpoint() -> bool:
        return any((p / "ckpt" / "latest").is_file() for p in ckpts.glob("*")) if ckpts.is_dir() else False

    deadline = time.time() + 480
    while not first_checkpoint():  # polled fast: the next checkpoint is seconds away
        assert time.time() < deadline, "no pretraining checkpoint"
        time.sleep(0.1)
    [latest] = [p / "ckpt" / "latest" for p in ckpts.glob("*")]
    assert int(latest.read_text()) == interval  # killed between checkpoints: after the first, before the end
    scheduler = scheduler_of(faults)
    # this scheduler's training only (another test file may be training in parallel under pytest-xdist)
    agents = [p for p in scheduler.children(recursive=True) if "torch.distributed.run" in command(p)]
    assert len(agents) == 1, agents
    kill_tree(agents[0])
    assert faults.finished(TRAIN, run_id, timeout=600) == "success"
    assert faults.task(TRAIN, run_id, "pretrain")["try_number"] == 2
    m = faults.af.lake.require("checkpoints.pretrain", {"recipe": recipe.name})
    c = m.counters
    assert c["resumed_from"].endswith(f"iter_{interval:07d}")
    assert c["final_step"] == c["steps"] == steps == len(c["losses"])  # the whole curve, no step twice
    assert c["loss_end_mean"] < c["loss_start_mean"]
    assert faults.af.lake.require("checkpoints.midtrain", {"recipe": recipe.name}).inputs[1] == m.input_ref()


def test_snapshot_killed_mid_extract_resumes_from_its_committed_shards(faults: Faults, spark, tmp_path) -> None:
    """n shards; the extract driver SIGKILLed once k are committed; Airflow's retry processes exactly
    the n - k others, and the snapshot's rows are an uninterrupted run's."""
    faults.write_recipe(seed=5)
    lake = faults.af.lake
    faults.af.cli("dags", "unpause", INGEST)
    try:
        run_id = faults.trigger(INGEST, APR)
        deadline = time.time() + 300
        while not lake.shards("web.extracted", APR):
            assert time.time() < deadline, "no shard of the snapshot was committed"
            time.sleep(0.05)
        stage_driver(faults, "commoncrawl_extract.py").send_signal(signal.SIGKILL)
        first = {m.partition[shards.SHARD]: m for m in lake.shards("web.extracted", APR)}  # the driver commits: no more
        assert 1 <= len(first) < WARCS and lake.manifest("web.extracted", APR) is None  # not complete: no roll-up
        assert faults.finished(INGEST, run_id, timeout=900) == "success"
        assert faults.task(INGEST, run_id, "commoncrawl_extract")["try_number"] == 2
        now = {m.partition[shards.SHARD]: m for m in lake.shards("web.extracted", APR)}
        assert len(now) == WARCS
        redone = [sid for sid, m in now.items() if m.airflow["try_number"] == 2]
        assert len(redone) == WARCS - len(first) and not set(redone) & set(first)
        assert all(now[sid].attempt == m.attempt for sid, m in first.items())  # never rewritten
        whole = lake.require("web.extracted", APR)
        reference = commoncrawl_extract.run(
            spark, StageContext(load_recipe(faults.recipe_path), "web", dict(APR), Lake(str(tmp_path / "reference")))
        )
        assert (whole.row_count, whole.content_digest, whole.digest) == (
            reference.row_count, reference.content_digest, reference.digest)
        assert shards.shard_ids(lake.require("web.langid", APR)) == sorted(now)  # langid went shard by shard too
    finally:
        faults.af.cli("dags", "pause", INGEST)
