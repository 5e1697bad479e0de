"""`make demo`: the recipe's DAGs run by Airflow's own scheduler on the embedded default, then a summary.

It starts the local services (scripts/airflow_services.sh: api-server, scheduler, dag-processor and
triggerer on 127.0.0.1, SQLite, LocalExecutor), or uses the ones `make airflow` left running. Each
ingest DAG is backfilled over the intervals that hold its source's partitions, as a user would backfill
it, all sources at once; then the asset-scheduled DAGs run once each, in order: synthesis, training,
the ablation sweeps (each stays paused until its turn, so no asset event starts it twice). Every task
runs under the scheduler, so the UI has its log and its real start and end times. The terminal shows a
line per DAG run as it ends (and, on a terminal, a live line of the tasks running); the summary is read
from the manifests. Everything goes through the REST API (phiflow/airflow_api.py), as the UI does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phiflow import settings
from phiflow.airflow_api import AirflowAPI, AirflowAPIError
from phiflow.intervals import source_partitions
from phiflow.manifest import partition_key
from phiflow.recipe import Recipe, load_recipe
from phiflow.storage import Lake
from phiflow.summary import stage_table

SERVICES = settings.PROJECT_ROOT / "scripts" / "airflow_services.sh"
FINISHED = ("success", "failed")
LIVE = sys.stdout.isatty()
# audit trails beside each stage's documents; the demo's table shows the documents, `phiflow summary` all
SIDE_OUTPUTS = ("dup_clusters", "minhash", "ngram_allowlist", "contamination", "annotations")


def _instant(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def healthy(api: AirflowAPI) -> bool:
    try:
        with urllib.request.urlopen(f"{api.url}/api/v2/monitor/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def wait_for_dags(api: AirflowAPI, wanted: list[str], timeout: float = 600) -> None:
    """Until the dag-processor has parsed every DAG of the recipe (or reported why not)."""
    deadline = time.time() + timeout
    while True:
        errors = api.import_errors()
        if errors:
            raise AirflowAPIError("DAG import errors: " + "; ".join(f"{e['filename']}: {e['stack_trace']}"
                                                                  for e in errors))
        missing = sorted(set(wanted) - set(api.dag_ids()))
        if not missing:
            return
        if time.time() > deadline:
            raise AirflowAPIError(f"DAGs not parsed after {timeout:.0f} s: {missing}")
        time.sleep(2)


class Progress:
    """Follows DAG runs to their end: a line per run as it ends, a live line of running tasks."""

    def __init__(self, api: AirflowAPI, recipe: Recipe) -> None:
        self.api, self.recipe, self.printed = api, recipe, set()
        self.failed: list[tuple[str, str]] = []

    def label(self, run: dict[str, Any]) -> str:
        source = self.recipe.sources.get(run["dag_id"].removeprefix("phiflow_ingest_"))
        if source is None or not run.get("data_interval_start"):
            return ", ".join(f"{k}={v}" for k, v in (run.get("conf") or {}).items()) or "manual"
        start, end = (datetime.fromisoformat(run[k]) for k in ("data_interval_start", "data_interval_end"))
        parts = [partition_key(p) for p in source_partitions(source, start, end)]
        return f"{start:%Y-%m} {', '.join(parts) or '(no partition in this interval)'}"

    def wait(self, runs: dict[str, list[str]] | None = None, backfills: dict[str, dict] | None = None) -> bool:
        """Until the named runs (dag -> run ids), and every run of the named backfills, have ended."""
        runs = {d: list(ids) for d, ids in (runs or {}).items()}
        while True:
            pending, running = 0, []
            for dag in sorted({*runs, *(backfills or {})}):
                listed = self.api.dag_runs(dag)
                # A backfill's runs are created (or cleared) with it, so it is over when they are: its
                # completed_at would come up to 30 s later (the scheduler marks backfills on a 30 s timer).
                if backfills and dag in backfills:
                    lo, hi = backfills[dag]["from_date"], backfills[dag]["to_date"]
                    runs[dag] = [r["dag_run_id"] for r in listed if r.get("logical_date")
                                 and _instant(lo) <= _instant(r["logical_date"]) <= _instant(hi)]
                for r in listed:
                    if r["dag_run_id"] not in runs.get(dag, []):
                        continue
                    if r["state"] in FINISHED:
                        self.report(r)
                    else:
                        pending += 1
                        if r["state"] == "running" and LIVE:
                            running += [f"{dag.removeprefix('phiflow_')}.{t['task_id']}"
                                        for t in self.api.task_instances(dag, r["dag_run_id"])
                                        if t["state"] == "running"]
            if LIVE:
                print(f"\r\033[K   running: {', '.join(running) or '...'}", end="", flush=True)
            if not pending:
                if LIVE:
                    print("\r\033[K", end="", flush=True)
                return not self.failed
            time.sleep(1)  # a cheap GET or two; the next DAG starts up to a poll later

    def report(self, run: dict[str, Any]) -> None:
        key = (run["dag_id"], run["dag_run_id"])
        if key in self.printed:
            return
        self.printed.add(key)
        secs = 0.0
        if run.get("start_date") and run.get("end_date"):
            secs = (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()
        tis = self.api.task_instances(*key)
        states = [t["state"] for t in tis]
        done = f"{states.count('success')} tasks ok" + (f", {states.count('skipped')} skipped" if "skipped" in states
                                                         else "")
        clear = "\r\033[K" if LIVE else ""  # over the live line
        print(f"{clear}   {run['state']:<7} {run['dag_id']:<26} {self.label(run):<42} {secs:>5.0f} s  {done}",
              flush=True)
        if run["state"] != "success":
            self.failed.append(key)
            for t in tis:
                if t["state"] in ("failed", "upstream_failed") and t.get("try_number"):
                    log = (Path(os.environ["AIRFLOW_HOME"]) / "logs" / f"dag_id={key[0]}" / f"run_id={key[1]}"
                           / f"task_id={t['task_id']}" / f"attempt={t['try_number']}.log")
                    print(f"     {t['task_id']} {t['state']}: log {log}", file=sys.stderr)
                    if log.exists():
                        for line in log.read_text(errors="replace").splitlines()[-15:]:
                            print(f"       {line[:300]}", file=sys.stderr)


def run_once(api: AirflowAPI, progress: Progress, dag: str, conf: dict[str, Any] | None = None) -> bool:
    """Unpause an asset-scheduled DAG and run it once by hand."""
    api.set_paused(dag, False)
    return progress.wait(runs={dag: [api.trigger(dag, conf)]})


def main() -> int:
    recipe = load_recipe(settings.default_recipe())
    lake = Lake()
    print(f"phiflow demo: recipe {recipe.name} ({recipe.path}), lake {lake.url}", flush=True)
    api = AirflowAPI.from_env()
    started = not healthy(api)
    if started:
        # as many tasks at once as cores: every stage here is CPU-bound (Spark local mode, the offline LLM,
        # gloo training), and more side by side only share the cores
        env = {**os.environ, "AIRFLOW__CORE__PARALLELISM": str(max(2, os.cpu_count() or 2))}
        subprocess.run(["bash", str(SERVICES), "start"], check=True, env=env)
    api = AirflowAPI.from_env()  # the password the services' first start wrote
    t0 = time.time()
    try:
        ingest = [f"phiflow_ingest_{name}" for name in recipe.sources]
        downstream = ["phiflow_synthesis", "phiflow_training", *(f"phiflow_ablation_{s.name}" for s in recipe.sweeps)]
        wait_for_dags(api, ingest + downstream)
        for dag in downstream:  # paused until their turn: an asset event would start them before then
            api.set_paused(dag, True)
        progress = Progress(api, recipe)
        print("\n== ingest: one backfill per source over the intervals that hold its partitions", flush=True)
        backfills = {}
        for name, src in recipe.sources.items():
            dag = f"phiflow_ingest_{name}"
            last = max(d for _, d in src.dated())
            api.set_paused(dag, False)
            bf = api.create_backfill(dag, f"{src.start_date:%Y-%m-%d}", f"{last:%Y-%m-%d}", "completed", 1)
            backfills[dag] = bf
        if not progress.wait(backfills=backfills):
            return 1
        snap = next(s for s in recipe.sources.values() if hasattr(s, "snapshots")).snapshots[0].id
        print(f"\n== synthesis of {snap} (offline SmolLM2 on CPU: a few minutes)", flush=True)
        if not run_once(api, progress, "phiflow_synthesis", {"snapshot": snap}):
            return 1
        print("\n== training: tokenize, mix, pretrain, midtrain (megatron-core, 2 gloo processes)", flush=True)
        if not run_once(api, progress, "phiflow_training"):
            return 1
        for sweep in recipe.sweeps:  # the ablations, on the tokens the training DAG committed
            print(f"\n== ablation sweep {sweep.name}: {sweep.description}", flush=True)
            if not run_once(api, progress, f"phiflow_ablation_{sweep.name}"):
                return 1
            report = lake.require(f"ablations.{sweep.name}", {"recipe": recipe.name})
            (md,) = [p for p in lake.data_files(report) if p.endswith("report.md")]
            print(lake.fs.cat_file(md).decode(), flush=True)
    except AirflowAPIError as e:
        print(f"phiflow demo: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            subprocess.run(["bash", str(SERVICES), "stop"], check=False, capture_output=True)
    summary(lake, time.time() - t0)
    return 0


def summary(lake: Lake, seconds: float) -> None:
    manifests = [m for d in lake.datasets() for m in lake.partitions(d)]
    print(f"\n== phiflow demo finished in {seconds:.0f} s ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n")
    main = [m for m in manifests if not m.dataset.startswith("tokens.")
            and m.dataset.rsplit(".", 1)[-1] not in SIDE_OUTPUTS]
    print(stage_table(main))
    print(f"({len(manifests) - len(main)} partitions of side outputs and token shards: .venv/bin/phiflow summary)")
    sample = next((m for m in manifests if m.dataset.endswith(".langid")), None)
    doc = lake.read_table(sample, columns=["doc_id"]).column("doc_id")[0].as_py() if sample else "DOC_ID"
    home = settings.home()
    print(f"""
Where to look:
  the Airflow UI (runs, task logs)    make airflow   (then http://127.0.0.1:8080, user admin)
  the dashboard                       the UI's "phiflow" entry
  lake (partitions + _MANIFEST.json)  {lake.url}
  task logs                           {Path(os.environ["AIRFLOW_HOME"]) / "logs"}
  OpenLineage events                  {home / "lineage" / "events.jsonl"}
  partitions and staleness            .venv/bin/phiflow status
  one document back to its source     .venv/bin/phiflow trace {doc}""")


if __name__ == "__main__":
    sys.exit(main())
