"""SparkStageOperator: one phiflow stage on the partitions of one DAG run, through spark-submit.

It is the apache-spark provider's SparkSubmitOperator (so the cluster is whatever the Spark
connection says: local[*], standalone, YARN, Kubernetes) plus what a stage needs around it:
which partitions this run owns, the manifest it committed (counters into the log, XCom and the
asset event), and OpenLineage inputs and outputs taken from the manifests. With a local master and
`spark.session: connect`, the job runs instead as a client of one shared local Spark Connect server
(spark_jobs/engine/connect_server.py): no driver JVM of its own per task (except for a stage whose
LLM needs a connection or an engine of its own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException, AirflowSkipException

from operators import jvm_archive
from operators.lineage import manifest_lineage
from operators.llm_hook import LLMConnectionHook
from phiflow import settings, stages
from phiflow.intervals import source_partitions
from phiflow.manifest import Manifest
from phiflow.recipe import load_recipe
from phiflow.shards import shard_ids
from phiflow.storage import Lake
from spark_jobs.engine import connect_server

REPO_ROOT = Path(__file__).resolve().parents[1]


def dataset_asset(dataset: str, lake: Lake | None = None) -> Asset:
    """The Airflow Asset of a lake dataset; downstream DAGs schedule on it."""
    lake = lake or Lake()
    return Asset(name=dataset, uri=lake.uri(lake.dataset_path(dataset)), group="phiflow")


def stage_env() -> dict[str, str]:
    """Environment for spark-submit: this interpreter's Python for driver and workers, the lake, the logging."""
    bindir = os.path.dirname(sys.executable)
    return {
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "PHIFLOW_HOME": str(settings.home()),
        "PHIFLOW_LAKE": settings.lake_root(),
        # a cluster's own config dir, when one is named (else logging comes from `driver_java_options`)
        **({"SPARK_CONF_DIR": os.environ["SPARK_CONF_DIR"]} if os.environ.get("SPARK_CONF_DIR") else {}),
    }


def driver_java_options(conf: dict[str, str]) -> dict[str, str]:
    """Spark at WARN in task logs (spark_jobs/conf/log4j2.properties), unless a SPARK_CONF_DIR names a
    cluster's own config: a system property rather than a conf dir, which would sit on the driver's class
    path and keep it from the class archive (operators/jvm_archive.py)."""
    if os.environ.get("SPARK_CONF_DIR"):
        return conf
    option = f'-Dlog4j2.configurationFile="{REPO_ROOT / "spark_jobs" / "conf" / "log4j2.properties"}"'
    return jvm_archive.with_java_option(conf, option)


class SparkStageOperator(SparkSubmitOperator):
    """Run a Spark stage of the stage table (phiflow.stages) for each partition of the run and commit it.

    :param stage: the stage's name in the table, which gives its job file, recipe block and datasets
    :param source: recipe source the stage reads (a dataset for `tokenize`)
    :param recipe_path: the recipe file; passed to the job, which validates it again
    """

    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        stage: str,
        source: str,
        recipe_path: str,
        partitions_callable: Callable[[str, Any], list[dict[str, str]]] | None = None,
        fixed_partition: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        recipe = load_recipe(recipe_path)
        lake = Lake()
        entry = stages.stage(stage)
        io = entry.io(recipe, source)
        conf = driver_java_options({
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
            **recipe.spark.conf,
        })
        super().__init__(
            application=str(REPO_ROOT / entry.job_file),
            conn_id=recipe.spark.conn_id,
            name=f"phiflow-{stage}-{source}",
            driver_memory=recipe.spark.driver_memory,
            executor_memory=recipe.spark.executor_memory,
            conf=conf,
            env_vars=stage_env(),
            outlets=[dataset_asset(d, lake) for d in self._published(io)],
            **kwargs,
        )
        self.stage = stage
        self.source = source
        self.output_dataset = io.output
        self.outputs = self._published(io)
        self.recipe_path = str(recipe_path)
        self.input_dataset = io.inputs[0] if io.inputs else None
        self.partition_by_source = entry.partitioned_by_source
        self.llm_conn_id = recipe.llm.api_key_conn_id if entry.calls_llm else None
        # A stage whose LLM needs a connection (a secret) or an engine of its own (vllm on a GPU) keeps
        # processes of its own: the secret goes to its own job's environment, never into a server other
        # tasks share. The offline model needs neither: its stages are clients like the rest, and the
        # model stays loaded in the server's reused Python workers from one task to the next.
        self.connect = (recipe.spark.session == "connect" and not self.llm_conn_id
                        and stages.llm_backend(recipe, stage) in (None, "offline"))
        self._client: subprocess.Popen | None = None
        self.partitions_callable = partitions_callable  # (recipe_path, context) -> partitions: overrides the rest
        self.fixed_partition = fixed_partition  # stages with one partition across intervals (a classifier)
        self._committed: list[Manifest] = []

    @staticmethod
    def _published(io: stages.StageIO) -> list[str]:
        """The outputs downstream DAGs schedule on: the main one, and every synthetic dataset."""
        return [io.output, *(d for d in io.outputs[1:] if d.startswith("synthetic."))]

    def partitions(self, context: Any) -> list[dict[str, str]]:
        """The input partitions this run owns: named in params, carried by the asset events that
        triggered the run, or the snapshots/dumps dated in the run's data interval."""
        if self.partitions_callable is not None:
            return self.partitions_callable(self.recipe_path, context)
        if self.fixed_partition is not None:
            return [dict(self.fixed_partition)]
        recipe = load_recipe(self.recipe_path)
        src = recipe.source(self.source)
        requested = (context.get("params") or {}).get(src.partition_key)
        events = context.get("triggering_asset_events") or {}
        if not requested and self.input_dataset and events:
            return partitions_from_events(events, self.input_dataset)
        if not requested and self.partition_by_source:  # an asset-driven stage run by hand: the newest
            return source_partitions(src, None, None)
        return source_partitions(
            src, context.get("data_interval_start"), context.get("data_interval_end"), requested
        )

    def output_partition(self, partition: dict[str, str]) -> dict[str, str]:
        """Datasets shared by all sources (synthetic.*) key their partitions by source first."""
        return {"source": self.source, **partition} if self.partition_by_source else dict(partition)

    def execute(self, context: Any) -> list[dict[str, Any]]:
        self._committed = []  # this run's commits only (under dag.test() one operator object runs again)
        parts = self.partitions(context)
        if not parts:
            raise AirflowSkipException("no partition of this source belongs to this run (interval or asset events)")
        ti = context["ti"]
        run = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "try_number": ti.try_number,
            "logical_date": str(context.get("logical_date")),
        }
        lake = Lake()
        local = self.local_master()
        if local:
            jvm_archive.ensure(self.conf, self.warm_jvm)
        if self.llm_conn_id:  # the job reads the connection from its environment, not from Airflow
            self.env_vars = {**(self.env_vars or {}), **LLMConnectionHook(self.llm_conn_id).job_environment()}
        for partition in parts:
            if self.unchanged_output(context, partition):
                continue
            self.application_args = [
                "--recipe",
                self.recipe_path,
                "--source",
                self.source,
                "--partition",
                json.dumps(partition),
                "--airflow-run",
                json.dumps(run),
                "--lake",
                lake.url,
                "--shards",
                str((context.get("params") or {}).get("shards") or "missing"),
            ]
            self._hook = None  # the hook captures application_args when it is built
            if local and self.connect:
                self.run_client()
            else:
                base = self.conf
                try:
                    self.conf = jvm_archive.mapped(base) if local else base
                    super().execute(context)
                finally:
                    self.conf = base
            for dataset in self.outputs:
                m = lake.require(dataset, self.output_partition(partition))
                if m.airflow.get("run_id") != ti.run_id or m.airflow.get("try_number") != ti.try_number:
                    raise AirflowException(f"{dataset}/{m.key} was not committed by this try (found {m.airflow})")
                self._committed.append(m)
                self.log.info(
                    "committed %s/%s: read %s, kept %s, dropped %s (digest %s)",
                    m.dataset,
                    m.key,
                    m.counters.get("read"),
                    m.row_count,
                    m.counters.get("dropped"),
                    m.digest[:16],
                )
        if not self._committed:
            raise AirflowSkipException("every partition is already committed from these inputs and parameters")
        summaries = [summary(m) for m in self._committed]
        for dataset in self.outputs:
            context["outlet_events"][dataset_asset(dataset, lake)].extra = {
                "partitions": [s for s in summaries if s["dataset"] == dataset]
            }
        return summaries

    def run_client(self) -> None:
        """The job file as a Spark Connect client of the shared local server, its output in this log."""
        env = {**os.environ, **(self.env_vars or {})}
        with connect_server.session(self.connect_command(), env) as url:
            self.log.info("Spark Connect client of %s: %s", url, os.path.basename(self.application))
            self._client = subprocess.Popen(
                [sys.executable, self.application, *self.application_args], env={**env, "SPARK_REMOTE": url},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
            try:
                for line in self._client.stdout or ():
                    self.log.info("%s", line.rstrip())
                code = self._client.wait()
            finally:
                self._client = None
        if code:
            raise AirflowException(f"{os.path.basename(self.application)} exited with status {code}")

    def connect_command(self) -> list[str]:
        """spark-submit of the Spark Connect server, with this stage's master, memory and settings: equal
        for every stage of a recipe, so they share one server. (Not the class archive: the server starts
        once, and whether the archive exists yet must not make two servers.)"""
        master = BaseHook.get_connection(self._conn_id).host
        return ["spark-submit", "--master", master, *(a for k, v in self.conf.items() for a in ("--conf", f"{k}={v}")),
                "--driver-memory", self._driver_memory, "--name", "phiflow-connect-server",
                "--class", connect_server.SERVER_CLASS, "spark-internal"]

    def on_kill(self) -> None:
        if self._client is not None:
            self._client.kill()
        else:
            super().on_kill()

    def warm_jvm(self, conf: dict[str, str]) -> None:
        """spark-submit the warm-up job (spark_jobs/engine/warm_jvm.py) as this stage would be submitted."""
        SparkSubmitHook(conf=conf, conn_id=self._conn_id, driver_memory=self._driver_memory, env_vars=self.env_vars,
                        name="phiflow-warm-jvm").submit(str(REPO_ROOT / "spark_jobs" / "engine" / "warm_jvm.py"))

    def local_master(self) -> bool:
        """Whether the Spark connection runs the driver on this machine (`local[...]`): then the driver
        JVM maps the class archive of earlier stage runs (operators/jvm_archive.py)."""
        try:
            host = BaseHook.get_connection(self._conn_id).host or ""
        except AirflowNotFoundException:
            return False
        return host.startswith("local")

    def unchanged_output(self, context: Any, partition: dict[str, str]) -> bool:
        """An asset-triggered run that sees the same committed inputs again does nothing: True when the
        output partition already pins exactly the inputs' current digests and this stage's recipe digest.
        Only for asset-triggered runs: a clear, a backfill or a manual run is an explicit rerun. A
        `partitions_callable` has already chosen exactly the stale partitions (tokenize's tokenizer-aware
        check): what it returns is run."""
        dag_run = context.get("dag_run")
        if getattr(dag_run, "run_type", None) != "asset_triggered" or self.partitions_callable is not None:
            return False
        lake = Lake()
        out = lake.manifest(self.output_dataset, self.output_partition(partition))
        if out is None or out.recipe_digest != stages.stage(self.stage).digest(load_recipe(self.recipe_path)):
            return False
        refs = [r for r in out.inputs if not r.dataset.startswith("external:")]
        if not refs or len(refs) != len(out.inputs):
            return False  # inputs outside the lake cannot be compared: rerun
        for ref in refs:
            current = lake.manifest(ref.dataset, ref.partition)
            if current is None or current.digest != ref.digest:
                return False
        self.log.info(
            "skip %s/%s: already committed from the same input digests and recipe (digest %s)",
            out.dataset,
            out.key,
            out.digest[:16],
        )
        return True

    def get_openlineage_facets_on_complete(self, task_instance: Any):  # -> OperatorLineage
        return manifest_lineage(Lake(), self._committed, load_recipe(self.recipe_path), self.source)


def partitions_from_events(events: Any, input_dataset: str) -> list[dict[str, str]]:
    """Partitions committed upstream, as carried by the asset events that triggered this run."""
    out: list[dict[str, str]] = []
    for asset, asset_events in events.items():
        if getattr(asset, "name", None) != input_dataset:
            continue
        for event in asset_events:
            for part in (event.extra or {}).get("partitions", []):
                if part["partition"] not in out:
                    out.append(part["partition"])
    return out


def summary(m: Manifest) -> dict[str, Any]:
    """What the asset event, XCom and dashboards carry about one committed partition."""
    return {
        "dataset": m.dataset,
        "partition": m.partition,
        "digest": m.digest,
        "rows": m.row_count,
        "read": m.counters.get("read"),
        "dropped": m.counters.get("dropped", {}),
        "seconds": m.timings.get("seconds"),
        "shards": len(shard_ids(m)),  # a sharded partition's event comes once, when its last shard is in
    }
