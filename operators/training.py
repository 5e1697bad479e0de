"""Operators of the training DAG: tokenizer, mix, and MegatronTrainOperator (pretrain / midtrain).

MegatronTrainOperator writes the run JSON from the recipe and the committed blend, trains, and commits
`checkpoints.<run>` whose manifest carries the metrics and points at the checkpoint folder. Locally it
runs torchrun (training.launch: CPU gloo or local GPUs); on a cluster it submits an sbatch script
rendered from the same run JSON and defers to SlurmJobTrigger until the job ends. Checkpoints live in a
stable folder per (inputs, recipe) outside the attempt folders, so a retried task resumes from them.
"""

from __future__ import annotations

import math
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
from phiflow import training_plan
from phiflow.blend import DATASET as BLEND
from phiflow.blend import blend_partition, load_blend, source_names
from phiflow.commit import commit_files, up_to_date
from phiflow.manifest import Manifest, sha256_json
from phiflow.recipe import Recipe, load_recipe
from phiflow.schema import STRESS_POINTS, TRAIN_STEPS
from phiflow.storage import LEASE, Lake

REPO_ROOT = Path(__file__).resolve().parents[1]
Run = Literal["pretrain", "midtrain"]
STRESS_DATASET = "stress.pretrain"


def airflow_run(context: Any) -> dict[str, Any]:
    ti = context["ti"]
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
    """Pretrain or midtrain with megatron-core and commit `checkpoints.<run>/recipe=<name>`.

    :param run: `pretrain` or `midtrain` (midtrain loads the committed pretraining checkpoint)
    :param phase: one phase of a phased pretraining run (`training.pretrain.phases`): it trains its steps
        of the run's one schedule and commits `checkpoints.pretrain/recipe=<name>/phase=<phase>`; a later
        phase loads the one before it whole
    :param mode: `local` (torchrun here) or `slurm` (sbatch + deferral); default: the recipe's cluster.kind
    """

    ui_color = "#f3e8fb"

    def __init__(self, *, run: Run, recipe_path: str, phase: str | None = None,
                 mode: Literal["local", "slurm"] | None = None, timeout_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(f"checkpoints.{run}")], **kwargs)
        self.run, self.recipe_path, self.phase, self.mode, self.timeout_s = run, recipe_path, phase, mode, timeout_s
        self._committed = []

    def plan(self, recipe: Recipe, lake: Lake) -> dict[str, Any]:
        return run_plan(recipe, lake, self.run, self.phase)

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
        start = plan["start"]
        if start is not None:  # what it started from, and that checkpoint's figures to compare with
            counters["started_from"] = {"dataset": start.dataset, "partition": start.partition,
                                        "valid_perplexity": start.counters.get("valid_perplexity"),
                                        "seq_length": start.counters.get("seq_length")}
        if self.phase is not None:
            counters["phase"] = self.phase
            counters["first_step"] = metrics["steps"][0]["step"] if metrics["steps"] else None
        if self.run == "midtrain":
            counters["pretrain_valid_perplexity"] = start.counters.get("valid_perplexity")
            counters["pretrain_seq_length"] = start.counters.get("seq_length")
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


class StressTestOperator(_ManifestLineage, BaseOperator):
    """The warmup stress test before pretraining (training.stress): the first pretraining run's config at
    each of `training.stress.lr_multipliers` x its peak learning rate, for `training.stress.steps` steps
    through the warmup. Commits `stress.pretrain/recipe=<name>` (a row per multiplier: the verdict and
    why, the loss, grad-norm spikes, attention-logit growth), then gates: a diverged point fails this
    task, so pretraining does not start, unless `continue_on_divergence`. A current report (same blend
    and settings) is not rerun, but its verdict gates again."""

    ui_color = "#fbe8e8"

    def __init__(self, *, recipe_path: str, timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(outlets=[dataset_asset(STRESS_DATASET)], **kwargs)
        self.recipe_path, self.timeout_s = recipe_path, timeout_s
        self._committed = []

    def execute(self, context: Any) -> dict[str, Any]:
        from training.stress import run_stress

        recipe, lake = load_recipe(self.recipe_path), Lake()
        assert recipe.training is not None and recipe.training.stress is not None
        spec, phases = recipe.training.stress, training_plan.phases(recipe)
        plan = run_plan(recipe, lake, "pretrain", phases[0].name if phases else None)
        part, inputs = blend_partition(recipe), plan["inputs"]
        # the gate's setting is not part of the measurement: changing it re-judges, it does not rerun
        digest = sha256_json({"stress": spec.model_dump(mode="json", exclude={"continue_on_divergence"}),
                              "run": plan["digest"]})
        done = up_to_date(lake, STRESS_DATASET, part, inputs, digest)
        if done is None:
            attempt = lake.new_attempt(STRESS_DATASET, part)
            work, started, rows = lake.attempt_path(STRESS_DATASET, part, attempt), time.time(), []
            warmup = min(plan["cfg"].optimizer.warmup_steps, spec.steps - 1)
            for mult in spec.lr_multipliers:
                metrics, verdict = run_stress(plan["cfg"], mult, posixpath.join(work, f"x{mult:g}"), steps=spec.steps,
                                              warmup_steps=warmup, dp=plan["dp"], timeout_s=self.timeout_s)
                rows.append(stress_row(mult, plan["cfg"].optimizer.lr * mult, metrics, verdict))
                self.log.info("stress x%g (lr %.3g): %s", mult, rows[-1]["lr"],
                              f"DIVERGED: {verdict['reason']}" if verdict["diverged"] else "stable")
            diverged = [r["multiplier"] for r in rows if r["diverged"]]
            done = commit_files(
                lake, dataset=STRESS_DATASET, partition=part, attempt=attempt, stage="stress", schema=STRESS_POINTS,
                row_count=len(rows), content=rows, inputs=inputs, recipe_digest=digest,
                params={"stress": spec.model_dump(mode="json"), "warmup_steps": warmup,
                        "peak_lr": plan["cfg"].optimizer.lr},
                counters={"points": rows, "diverged": diverged},
                airflow=airflow_run(context), started=started,
            )
        else:
            self.log.info("%s/%s is current (same blend and settings): its verdict gates again", done.dataset, done.key)
        self._committed = [done]
        for r in done.counters["points"]:
            self.log.info("x%g lr %.3g: %s; loss %.3f -> %.3f, max grad norm %.3g, spikes at %s, attention logit x%s",
                          r["multiplier"], r["lr"], f"DIVERGED ({r['reason']})" if r["diverged"] else "stable",
                          r["first_loss"], r["final_loss"], r["max_grad_norm"], r["grad_norm_spikes"] or "none",
                          "?" if r["attention_logit_growth"] is None else f"{r['attention_logit_growth']:.2f}")
        diverged = done.counters["diverged"]
        if diverged and not spec.continue_on_divergence:
            raise AirflowException(
                f"warmup stress test: lr x{', x'.join(f'{m:g}' for m in diverged)} diverged; pretraining does not "
                "start (lower training.pretrain.optimizer.lr or the multipliers, or set "
                "training.stress.continue_on_divergence to go on)")
        if diverged:
            self.log.warning("lr x%s diverged; going on (training.stress.continue_on_divergence)",
                             ", x".join(f"{m:g}" for m in diverged))
        return {**summary(done), "diverged": diverged}


def stress_row(multiplier: float, lr: float, metrics: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """One multiplier of the stress report: the verdict and the curves it was read from."""
    steps = metrics.get("steps") or []
    row = {"multiplier": multiplier, "lr": lr, **verdict, "steps": len(steps),
           "losses": [s["loss"] for s in steps], "grad_norms": [s["grad_norm"] for s in steps],
           "attention_logits": [s.get("max_attention_logit") for s in steps], "error": metrics.get("error")}
    return _json_safe(row)


def _json_safe(x: Any) -> Any:
    """NaN and infinities (a diverged run's figures) as None: manifests are strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def run_plan(recipe: Recipe, lake: Lake, run: Run, phase: str | None = None) -> dict[str, Any]:
    """Inputs, digests, folders and the run config of this run (no side effects but folders)."""
    blend_m = lake.require(BLEND, blend_partition(recipe))
    blend = load_blend(lake, blend_m)
    inputs = [blend_m.input_ref()]
    start = start_checkpoint(recipe, lake, run, phase)
    if start is not None:
        inputs.append(start.input_ref())
    load_dir = start.params["checkpoint_dir"] if start is not None else None
    assert recipe.training is not None
    training = recipe.training.model_dump(mode="json", exclude={"cluster", "stress"})
    digest = sha256_json({"run": run, "training": training, **({"phase": phase} if phase else {})})
    key = sha256_json({"inputs": [i.digest for i in inputs], "digest": digest})[:16]
    ckpt_dir = posixpath.join(lake.root, "_checkpoints", recipe.name, run, *filter(None, [phase]), key)
    tok = blend["tokenizer"]
    blend_run = next(p.run for p in training_plan.phases(recipe) if p.name == phase) if phase else run
    cfg = training_plan.run_config(recipe, run, [tuple(x) for x in blend[blend_run]["blend"]],
                                   tok["vocab_size"], tok["eod"], posixpath.join(ckpt_dir, "ckpt"), load_dir,
                                   cache_dir=posixpath.join(ckpt_dir, "index_cache"), phase=phase)
    cfg.data.source_names = source_names(blend, blend_run)
    part = (training_plan.checkpoint_partition(recipe, phase) if run == "pretrain"
            else blend_partition(recipe))
    padded = recipe.training.pretrain.model.padded_vocab_size
    if padded and cfg.model.padded_vocab_size(cfg.parallel.tp) != padded:
        raise AirflowException(f"training.pretrain.model.padded_vocab_size is {padded}, but the tokenizer's "
                               f"{tok['vocab_size']} entries pad to {cfg.model.padded_vocab_size(cfg.parallel.tp)}")
    return {"partition": part, "inputs": inputs, "digest": digest, "checkpoint_dir": ckpt_dir, "cfg": cfg,
            "dp": recipe.training.pretrain.parallel.dp, "start": start}


def start_checkpoint(recipe: Recipe, lake: Lake, run: Run, phase: str | None = None) -> Manifest | None:
    """The committed checkpoint this run loads: the previous phase's (whole), the pretraining run's for
    midtraining (weights), the recipe's `init_from` (weights and Adam moments), or none."""
    if run == "midtrain":
        return lake.require("checkpoints.pretrain", training_plan.final_pretrain_partition(recipe))
    names = [p.name for p in training_plan.phases(recipe)]
    if phase is not None and names.index(phase) > 0:
        previous = names[names.index(phase) - 1]
        return lake.require("checkpoints.pretrain", training_plan.checkpoint_partition(recipe, previous))
    ref = recipe.training.pretrain.init_from if recipe.training is not None else None
    return lake.require(ref.dataset, ref.partition) if ref is not None else None


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
    """Write run.json and job.sbatch into the attempt folder and submit it (SlurmHook); the job id."""
    cfg.output.metrics_path = posixpath.join(work, "metrics.json")
    cfg.validate(cfg.world_size(recipe.training.pretrain.parallel.dp))  # type: ignore[union-attr]
    cfg.save(posixpath.join(work, "run.json"))
    script = Path(work, "job.sbatch")
    script.write_text(sbatch_script(recipe, cfg, work))
    return SlurmHook().submit(script)
