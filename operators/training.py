"""Operators of the training DAG: tokenizer, mix, the warmup stress test, pretrain / midtrain.

The stages are training's (training.mix, training.stress, training.train_stage; a run's plan is
training.plan); these operators do the Airflow work around them: launching, deferring, task state,
outlets and lineage. MegatronTrainOperator runs the planned run here under torchrun (training.launch: CPU
gloo or local GPUs) or, on a cluster, submits an sbatch script rendered from the same run JSON and defers
to SlurmJobTrigger until the job ends; then training.train_stage commits `checkpoints.<run>`. Checkpoints
live in a stable folder per (inputs, recipe) outside the attempt folders, so a retried task resumes from them.
"""

from __future__ import annotations

import posixpath
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Literal

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from operators.lineage import manifest_lineage, tokenizer_lineage
from operators.slurm_hook import SlurmHook
from operators.spark_stage import dataset_asset, summary
from operators.triggers import SlurmJobTrigger
from phiflow.blend import DATASET as BLEND
from phiflow.commit import up_to_date
from phiflow.manifest import Manifest, sha256_json
from phiflow.recipe import Recipe, load_recipe
from phiflow.run_config import RunConfig, RunName, world_size
from phiflow.storage import LEASE, Lake
from training import stress, train_stage
from training.launch import TrainingFailed, launch
from training.plan import RunPlan, run_plan

REPO_ROOT = Path(__file__).resolve().parents[1]


def airflow_run(context: Any) -> dict[str, Any] | None:
    """The task's Airflow run as a manifest records it; None for an operator executed by hand (no `ti`)."""
    ti = context.get("ti")
    if ti is None:
        return None
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number}


def pending_tokenize(dataset: str):  # -> (recipe_path, context) -> partitions, for SparkStageOperator
    """Committed partitions of `dataset` whose tokens partition is missing or stale (other input digest,
    tokenizer or parameters): a consumer that sees the same partition digest again does nothing."""
    from phiflow.tokenizer_store import resolve_tokenizer, tokenize_params

    def pending(recipe_path: str, context: Any) -> list[dict[str, str]]:
        recipe, lake = load_recipe(recipe_path), Lake()
        digest = sha256_json(tokenize_params(recipe, resolve_tokenizer(recipe, lake)))
        return [m.partition for m in lake.partitions(dataset)
                if up_to_date(lake, f"tokens.{dataset}", m.partition, [m.input_ref()], digest) is None]

    return pending


class _ManifestLineage:
    """OpenLineage inputs and outputs from the manifests this task committed (or found current)."""

    _committed: list[Manifest]

    def get_openlineage_facets_on_complete(self, task_instance: Any):  # -> OperatorLineage
        return manifest_lineage(Lake(), self._committed)


class TokenizerOperator(BaseOperator):
    """Resolve the recipe's tokenizer before the tokenize fan-out (the offline BPE is trained once here)."""

    ui_color = "#fdf2e3"

    def __init__(self, *, recipe_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipe_path = recipe_path
        self._info: dict[str, Any] = {}

    def execute(self, context: Any) -> dict[str, Any]:
        from phiflow.tokenizer_store import resolve_tokenizer

        self._info = resolve_tokenizer(load_recipe(self.recipe_path), Lake()).describe()
        self.log.info("tokenizer %s", self._info)
        return self._info

    def get_openlineage_facets_on_complete(self, task_instance: Any):  # -> OperatorLineage
        """Output: the tokenizer file (versioned by its sha256); inputs: the committed text partitions
        the offline BPE was trained on (its meta file), or nothing for a tokenizer the recipe names."""
        from phiflow.tokenizer_store import trained_on

        return tokenizer_lineage(Lake(), self._info, trained_on(load_recipe(self.recipe_path), Lake()))


class MixOperator(_ManifestLineage, BaseOperator):
    """Run the mix stage (training.mix) and commit the blend; unchanged tokens: nothing to do."""

    ui_color = "#eef7e8"

    def __init__(self, *, recipe_path: str, **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(BLEND)], **kwargs)
        self.recipe_path = recipe_path
        self._committed = []

    def execute(self, context: Any) -> dict[str, Any]:
        from phiflow.mixture import MixtureError
        from training import mix

        try:
            m = mix.run(load_recipe(self.recipe_path), Lake(), airflow_run(context), subsample=mix.subsample)
        except MixtureError as e:
            raise AirflowException(f"infeasible mixture: {e}") from None
        self._committed = [m]
        out = {**summary(m), "epochs": m.counters["epochs"]}
        context["outlet_events"][dataset_asset(BLEND)].extra = {"partitions": [out]}
        return out


class MegatronTrainOperator(_ManifestLineage, BaseOperator):
    """Pretrain or midtrain with megatron-core and commit `checkpoints.<run>/recipe=<name>` (training.train_stage).

    :param run: `pretrain` or `midtrain` (midtrain loads the committed pretraining checkpoint)
    :param phase: one phase of a phased pretraining run (`training.pretrain.phases`): it trains its steps
        of the run's one schedule and commits `checkpoints.pretrain/recipe=<name>/phase=<phase>`; a later
        phase loads the one before it whole
    :param mode: `local` (torchrun here) or `slurm` (sbatch + deferral); default: the recipe's cluster.kind
    """

    ui_color = "#f3e8fb"

    def __init__(self, *, run: RunName, recipe_path: str, phase: str | None = None,
                 mode: Literal["local", "slurm"] | None = None, timeout_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(f"checkpoints.{run}")], **kwargs)
        self.run, self.recipe_path, self.phase, self.mode, self.timeout_s = run, recipe_path, phase, mode, timeout_s
        self._committed = []

    def plan(self, recipe: Recipe, lake: Lake) -> RunPlan:
        try:
            return run_plan(recipe, lake, self.run, self.phase)
        except ValueError as e:  # the recipe and the committed blend disagree (the padded vocabulary)
            raise AirflowException(str(e)) from None

    def execute(self, context: Any) -> dict[str, Any]:
        recipe, lake = load_recipe(self.recipe_path), Lake()
        if not lake._local:
            raise AirflowException("training reads shards and writes checkpoints on a shared filesystem: "
                                   "PHIFLOW_LAKE must be a local or mounted path")
        plan = self.plan(recipe, lake)
        done = train_stage.current(lake, plan)
        if done is not None:
            self.log.info("%s/%s is current (same blend and recipe): nothing to train", done.dataset, done.key)
            self._committed = [done]
            return {**summary(done), "metrics": done.counters, "up_to_date": True}
        attempt, work = train_stage.new_attempt(lake, plan)
        started = time.time()
        mode = self.mode or (recipe.training.cluster.kind if recipe.training else "local")
        if mode == "slurm":
            job_id = submit_slurm(recipe, plan.cfg, work)
            self.log.info("submitted slurm job %s (%s)", job_id, work)
            lease = posixpath.join(work, LEASE)  # the trigger renews it while the job waits and runs
            self.defer(trigger=SlurmJobTrigger(job_id, recipe.training.cluster.poll_s, lease),  # type: ignore[union-attr]
                       method_name="execute_complete", kwargs={"attempt": attempt, "started": started})
        try:
            launch(plan.cfg, work, dp=plan.dp, stream=sys.stdout, timeout_s=self.timeout_s)
        except TrainingFailed as e:
            raise AirflowException(str(e)) from None
        return self._commit(context, lake, plan, attempt, started)

    def execute_complete(self, context: Any, event: dict[str, Any], attempt: str, started: float) -> dict[str, Any]:
        """Back from the trigger: the job ended; commit what it wrote (metrics.json in the attempt folder)."""
        if event.get("status") != "success":
            raise AirflowException(f"slurm job {event.get('job_id')} ended {event.get('state')}: "
                                   f"{event.get('message') or event.get('exit_code')}")
        recipe, lake = load_recipe(self.recipe_path), Lake()
        return self._commit(context, lake, self.plan(recipe, lake), attempt, started)

    def _commit(self, context: Any, lake: Lake, plan: RunPlan, attempt: str, started: float) -> dict[str, Any]:
        try:
            m = train_stage.commit(lake, plan, attempt, started, airflow_run(context))
        except TrainingFailed as e:
            raise AirflowException(str(e)) from None
        self._committed = [m]
        self.log.info("committed %s/%s: %s", m.dataset, m.key, {k: v for k, v in m.counters.items() if k != "losses"})
        out = {**summary(m), "metrics": m.counters}
        context["outlet_events"][dataset_asset(plan.dataset)].extra = {"partitions": [out]}
        return out


class StressTestOperator(_ManifestLineage, BaseOperator):
    """The warmup stress test before pretraining (training.stress): commits `stress.pretrain/recipe=<name>`,
    then gates: a diverged point fails this task, so pretraining does not start, unless
    `continue_on_divergence`. A current report (same blend and settings) is not rerun, but it gates again."""

    ui_color = "#fbe8e8"

    def __init__(self, *, recipe_path: str, timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(stress.DATASET)], **kwargs)
        self.recipe_path, self.timeout_s = recipe_path, timeout_s
        self._committed = []

    def execute(self, context: Any) -> dict[str, Any]:
        recipe = load_recipe(self.recipe_path)
        done = stress.run_stage(recipe, Lake(), airflow_run(context), timeout_s=self.timeout_s)
        self._committed = [done]
        try:
            diverged = stress.gate(recipe, done)
        except stress.Diverged as e:
            raise AirflowException(str(e)) from None
        if diverged:
            self.log.warning("lr x%s diverged; going on (training.stress.continue_on_divergence)",
                             ", x".join(f"{m:g}" for m in diverged))
        return {**summary(done), "diverged": diverged}


def sbatch_script(recipe: Recipe, cfg: RunConfig, work: str, python: str = "python") -> str:
    """The Slurm batch script of a run: one torchrun per node, rendezvous on the first node."""
    assert recipe.training is not None
    c = recipe.training.cluster
    world = world_size(recipe)
    if c.nodes * c.gpus_per_node != world:
        raise AirflowException(f"training.cluster: {c.nodes} nodes x {c.gpus_per_node} GPUs = "
                               f"{c.nodes * c.gpus_per_node}, but tp x pp x dp = {world}")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=phiflow-{cfg.name}", f"#SBATCH --nodes={c.nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={c.gpus_per_node}",
             f"#SBATCH --time={c.time_limit}", f"#SBATCH --output={work}/slurm-%j.out"]
    lines += [f"#SBATCH --partition={c.partition}"] if c.partition else []
    lines += [f"#SBATCH --account={c.account}"] if c.account else []
    lines += [f"#SBATCH {opt}" for opt in c.sbatch_options]
    lines += ["set -euo pipefail", *c.setup, f"cd {shlex.quote(str(REPO_ROOT))}",
              'MASTER=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              f"srun {python} -m torch.distributed.run --nnodes {c.nodes} --nproc-per-node {c.gpus_per_node} "
              '--rdzv-backend c10d --rdzv-endpoint "$MASTER:29500" --rdzv-id "$SLURM_JOB_ID" '
              f"-m training.pretrain --config {shlex.quote(posixpath.join(work, 'run.json'))}"]
    return "\n".join(lines) + "\n"


def submit_slurm(recipe: Recipe, cfg: RunConfig, work: str) -> str:
    """Write run.json and job.sbatch into the attempt folder and submit it (SlurmHook); the job id."""
    cfg = cfg.replace(output={"metrics_path": posixpath.join(work, "metrics.json")})
    cfg.validate(world_size(recipe))
    cfg.save(posixpath.join(work, "run.json"))
    script = Path(work, "job.sbatch")
    script.write_text(sbatch_script(recipe, cfg, work))
    return SlurmHook().submit(script)
