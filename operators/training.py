"""Operators of the training DAG: tokenizer, mix, and MegatronTrainOperator (pretrain / midtrain).

MegatronTrainOperator writes the run JSON from the recipe and the committed blend, trains, and commits
`checkpoints.<run>` whose manifest carries the metrics and points at the checkpoint folder. Locally it
runs torchrun (training.launch: CPU gloo or local GPUs); on a cluster it submits an sbatch script
rendered from the same run JSON and defers to SlurmJobTrigger until the job ends. Checkpoints live in a
stable folder per (inputs, recipe) outside the attempt folders, so a retried task resumes from them.
"""

from __future__ import annotations

import posixpath
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from operators.lineage import manifest_lineage, tokenizer_lineage
from operators.spark_stage import dataset_asset, summary
from operators.triggers import SlurmJobTrigger
from phiflow import mix_stage, training_plan
from phiflow.commit import commit_files, up_to_date
from phiflow.manifest import Manifest, sha256_json
from phiflow.recipe import Recipe, load_recipe
from phiflow.schema import TRAIN_STEPS
from phiflow.storage import LEASE, Lake

REPO_ROOT = Path(__file__).resolve().parents[1]
Run = Literal["pretrain", "midtrain"]


def airflow_run(context: Any) -> dict[str, Any]:
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number}


def pending_tokenize(dataset: str):  # -> (recipe_path, context) -> partitions, for SparkStageOperator
    """Committed partitions of `dataset` whose tokens partition is missing or stale (other input digest,
    tokenizer or parameters): a consumer that sees the same partition digest again does nothing."""
    from training.tokenizer_store import resolve_tokenizer, tokenize_params

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
        from training.tokenizer_store import resolve_tokenizer

        self._info = resolve_tokenizer(load_recipe(self.recipe_path), Lake()).describe()
        self.log.info("tokenizer %s", self._info)
        return self._info

    def get_openlineage_facets_on_complete(self, task_instance: Any):  # -> OperatorLineage
        """Output: the tokenizer file (versioned by its sha256); inputs: the committed text partitions
        the offline BPE was trained on (its meta file), or nothing for a tokenizer the recipe names."""
        from training.tokenizer_store import trained_on

        return tokenizer_lineage(Lake(), self._info, trained_on(load_recipe(self.recipe_path), Lake()))


class MixOperator(_ManifestLineage, BaseOperator):
    """Run the mix stage (phiflow.mix_stage) and commit the blend; unchanged tokens: nothing to do."""

    ui_color = "#eef7e8"

    def __init__(self, *, recipe_path: str, **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(mix_stage.DATASET)], **kwargs)
        self.recipe_path = recipe_path
        self._committed = []

    def execute(self, context: Any) -> dict[str, Any]:
        from phiflow.mixture import MixtureError
        from training.indexed_writer import subsample

        try:
            m = mix_stage.run(load_recipe(self.recipe_path), Lake(), airflow_run(context), subsample=subsample)
        except MixtureError as e:
            raise AirflowException(f"infeasible mixture: {e}") from None
        self._committed = [m]
        out = {**summary(m), "epochs": m.counters["epochs"]}
        context["outlet_events"][dataset_asset(mix_stage.DATASET)].extra = {"partitions": [out]}
        return out


class MegatronTrainOperator(_ManifestLineage, BaseOperator):
    """Pretrain or midtrain with megatron-core and commit `checkpoints.<run>/recipe=<name>`.

    :param run: `pretrain` or `midtrain` (midtrain loads the committed pretraining checkpoint)
    :param mode: `local` (torchrun here) or `slurm` (sbatch + deferral); default: the recipe's cluster.kind
    """

    ui_color = "#f3e8fb"

    def __init__(self, *, run: Run, recipe_path: str, mode: Literal["local", "slurm"] | None = None,
                 timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(f"checkpoints.{run}")], **kwargs)
        self.run, self.recipe_path, self.mode, self.timeout_s = run, recipe_path, mode, timeout_s
        self._committed = []

    # -- what to train ---------------------------------------------------------------------
    def plan(self, recipe: Recipe, lake: Lake) -> dict[str, Any]:
        """Inputs, digests, folders and the run config of this run (no side effects but folders)."""
        part = mix_stage.blend_partition(recipe)
        blend_m = lake.require(mix_stage.DATASET, part)
        blend = mix_stage.load_blend(lake, blend_m)
        inputs = [blend_m.input_ref()]
        load_dir = None
        if self.run == "midtrain":
            pre = lake.require("checkpoints.pretrain", part)
            inputs.append(pre.input_ref())
            load_dir = pre.params["checkpoint_dir"]
        assert recipe.training is not None
        training = recipe.training.model_dump(mode="json", exclude={"cluster"})
        digest = sha256_json({"run": self.run, "training": training})
        key = sha256_json({"inputs": [i.digest for i in inputs], "digest": digest})[:16]
        ckpt_dir = posixpath.join(lake.root, "_checkpoints", recipe.name, self.run, key)
        tok = blend["tokenizer"]
        cfg = training_plan.run_config(recipe, self.run, [tuple(x) for x in blend[self.run]["blend"]],
                                       tok["vocab_size"], tok["eod"], posixpath.join(ckpt_dir, "ckpt"), load_dir,
                                       cache_dir=posixpath.join(ckpt_dir, "index_cache"))
        cfg.data.source_names = mix_stage.source_names(blend, self.run)
        padded = recipe.training.pretrain.model.padded_vocab_size
        if padded and cfg.model.padded_vocab_size(cfg.parallel.tp) != padded:
            raise AirflowException(f"training.pretrain.model.padded_vocab_size is {padded}, but the tokenizer's "
                                   f"{tok['vocab_size']} entries pad to {cfg.model.padded_vocab_size(cfg.parallel.tp)}")
        return {"partition": part, "inputs": inputs, "digest": digest, "checkpoint_dir": ckpt_dir, "cfg": cfg,
                "dp": recipe.training.pretrain.parallel.dp}

    def execute(self, context: Any) -> dict[str, Any]:
        recipe, lake = load_recipe(self.recipe_path), Lake()
        if not lake._local:
            raise AirflowException("training reads shards and writes checkpoints on a shared filesystem: "
                                   "PHIFLOW_LAKE must be a local or mounted path")
        plan = self.plan(recipe, lake)
        dataset = f"checkpoints.{self.run}"
        done = up_to_date(lake, dataset, plan["partition"], plan["inputs"], plan["digest"])
        if done is not None:
            self.log.info("%s/%s is current (same blend and recipe): nothing to train", dataset, done.key)
            self._committed = [done]
            return {**summary(done), "metrics": done.counters, "up_to_date": True}
        attempt = lake.new_attempt(dataset, plan["partition"])
        work = lake.attempt_path(dataset, plan["partition"], attempt)
        started = time.time()
        mode = self.mode or (recipe.training.cluster.kind if recipe.training else "local")
        if mode == "slurm":
            job_id = submit_slurm(recipe, plan["cfg"], work)
            self.log.info("submitted slurm job %s (%s)", job_id, work)
            lease = posixpath.join(work, LEASE)  # the trigger renews it while the job waits and runs
            self.defer(trigger=SlurmJobTrigger(job_id, recipe.training.cluster.poll_s, lease),  # type: ignore[union-attr]
                       method_name="execute_complete", kwargs={"attempt": attempt, "started": started})
        from training.launch import TrainingFailed, launch

        try:
            launch(plan["cfg"], work, dp=plan["dp"], stream=sys.stdout, timeout_s=self.timeout_s)
        except TrainingFailed as e:
            raise AirflowException(str(e)) from None
        return self._commit(context, recipe, lake, plan, attempt, started)

    def execute_complete(self, context: Any, event: dict[str, Any], attempt: str, started: float) -> dict[str, Any]:
        """Back from the trigger: the job ended; commit what it wrote (metrics.json in the attempt folder)."""
        if event.get("status") != "success":
            raise AirflowException(f"slurm job {event.get('job_id')} ended {event.get('state')}: "
                                   f"{event.get('message') or event.get('exit_code')}")
        recipe, lake = load_recipe(self.recipe_path), Lake()
        return self._commit(context, recipe, lake, self.plan(recipe, lake), attempt, started)

    # -- commit ----------------------------------------------------------------------------
    def _commit(self, context: Any, recipe: Recipe, lake: Lake, plan: dict[str, Any], attempt: str,
                started: float) -> dict[str, Any]:
        import json

        dataset = f"checkpoints.{self.run}"
        work = lake.attempt_path(dataset, plan["partition"], attempt)
        metrics = json.loads(Path(work, "metrics.json").read_text())
        if metrics.get("status") != "ok":
            raise AirflowException(f"run {metrics.get('name')} failed: {metrics.get('error')}")
        cfg = plan["cfg"]
        counters = metrics_summary(metrics, cfg.model.seq_length, cfg.batch.global_batch_size)
        if self.run == "midtrain":
            pre = lake.require("checkpoints.pretrain", plan["partition"])
            counters["pretrain_valid_perplexity"] = pre.counters.get("valid_perplexity")
            counters["pretrain_seq_length"] = pre.counters.get("seq_length")
        m = commit_files(
            lake, dataset=dataset, partition=plan["partition"], attempt=attempt, stage=self.run, schema=TRAIN_STEPS,
            row_count=len(metrics["steps"]),
            content={"param_digests": metrics.get("param_digests"), "losses": [s["loss"] for s in metrics["steps"]]},
            inputs=plan["inputs"], recipe_digest=plan["digest"],
            params={"checkpoint_dir": posixpath.join(plan["checkpoint_dir"], "ckpt"), "run": cfg.to_dict()},
            counters=counters, airflow=airflow_run(context), started=started,
        )
        self._committed = [m]
        self.log.info("committed %s/%s: %s", m.dataset, m.key, {k: v for k, v in counters.items() if k != "losses"})
        out = {**summary(m), "metrics": counters}
        context["outlet_events"][dataset_asset(dataset)].extra = {"partitions": [out]}
        return out


def metrics_summary(metrics: dict[str, Any], seq_length: int, global_batch: int) -> dict[str, Any]:
    """What the checkpoint manifest says about a run: the loss curve in brief, speed, held-out perplexity."""
    losses = [s["loss"] for s in metrics["steps"]]
    k = max(1, min(5, len(losses) // 3))
    return {
        "steps": len(losses), "final_step": metrics["final_step"], "seq_length": seq_length,
        "tokens": len(losses) * global_batch * seq_length,
        "first_loss": losses[0], "final_loss": metrics["final_loss"], "min_loss": min(losses),
        "loss_start_mean": sum(losses[:k]) / k, "loss_end_mean": sum(losses[-k:]) / k,
        "losses": [round(x, 4) for x in losses],
        "mean_tokens_per_s": metrics["mean_tokens_per_s"],
        "valid_loss": metrics.get("valid_loss"), "valid_perplexity": metrics.get("valid_perplexity"),
        "valid_by_source": metrics.get("valid_by_source"),
        "world_size": metrics["world_size"], "tp": metrics["tp"], "pp": metrics["pp"], "dp": metrics["dp"],
        "device": metrics["device"], "resumed_from": metrics.get("resumed_from"),
        "checkpoints": metrics.get("checkpoints", []),
    }


def sbatch_script(recipe: Recipe, cfg: Any, work: str, python: str = "python") -> str:
    """The Slurm batch script of a run: one torchrun per node, rendezvous on the first node."""
    assert recipe.training is not None
    c = recipe.training.cluster
    world = cfg.world_size(recipe.training.pretrain.parallel.dp)
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


def submit_slurm(recipe: Recipe, cfg: Any, work: str) -> str:
    """Write run.json and job.sbatch into the attempt folder and `sbatch --parsable` it; the job id."""
    cfg.output.metrics_path = posixpath.join(work, "metrics.json")
    cfg.validate(cfg.world_size(recipe.training.pretrain.parallel.dp))  # type: ignore[union-attr]
    cfg.save(posixpath.join(work, "run.json"))
    script = Path(work, "job.sbatch")
    script.write_text(sbatch_script(recipe, cfg, work))
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise AirflowException(f"sbatch failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]
