"""The pretrain and midtrain stages: one run of the recipe (training.plan), committed as
`checkpoints.<run>/recipe=<name>[/phase=<phase>]`.

MegatronTrainOperator launches the planned run (torchrun here, or an sbatch job it defers on) into an
attempt folder of this stage; `commit` turns the metrics the run wrote there into the manifest, whose
counters carry the loss curve in brief, speed and held-out perplexity, and whose params point at the
checkpoint folder. No torch here: the Airflow worker imports it.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

from phiflow.commit import commit_files, up_to_date
from phiflow.manifest import Manifest
from phiflow.schema import TRAIN_STEPS
from phiflow.storage import Lake
from training.launch import TrainingFailed
from training.plan import RunPlan


def current(lake: Lake, plan: RunPlan) -> Manifest | None:
    """The committed partition of this run if it is current (same inputs and recipe): nothing to train."""
    return up_to_date(lake, plan.dataset, plan.partition, plan.inputs, plan.digest)


def new_attempt(lake: Lake, plan: RunPlan) -> tuple[str, str]:
    """A new attempt of the run's partition and its folder, where the run writes its metrics."""
    attempt = lake.new_attempt(plan.dataset, plan.partition)
    return attempt, lake.attempt_path(plan.dataset, plan.partition, attempt)


def commit(lake: Lake, plan: RunPlan, attempt: str, started: float, airflow: dict[str, Any] | None = None
           ) -> Manifest:
    """Commit what the run wrote into the attempt folder (metrics.json); a failed run is TrainingFailed."""
    metrics_path = Path(lake.attempt_path(plan.dataset, plan.partition, attempt), "metrics.json")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("status") != "ok":
        raise TrainingFailed(f"run {metrics.get('name')} failed: {metrics.get('error')}", None, metrics)
    cfg, start = plan.cfg.replace(output={"metrics_path": str(metrics_path)}), plan.start  # the run as launched
    counters = metrics_summary(metrics, cfg.model.seq_length, cfg.batch.global_batch_size)
    if start is not None:  # what it started from, and that checkpoint's figures to compare with
        counters["started_from"] = {"dataset": start.dataset, "partition": start.partition,
                                    "valid_perplexity": start.counters.get("valid_perplexity"),
                                    "seq_length": start.counters.get("seq_length")}
    if plan.phase is not None:
        counters["phase"] = plan.phase
        counters["first_step"] = metrics["steps"][0]["step"] if metrics["steps"] else None
    if plan.run == "midtrain":
        assert start is not None  # midtraining loads the pretraining checkpoint
        counters["pretrain_valid_perplexity"] = start.counters.get("valid_perplexity")
        counters["pretrain_seq_length"] = start.counters.get("seq_length")
    return commit_files(
        lake, dataset=plan.dataset, partition=plan.partition, attempt=attempt, stage=plan.run, schema=TRAIN_STEPS,
        row_count=len(metrics["steps"]),
        content={"param_digests": metrics.get("param_digests"), "losses": [s["loss"] for s in metrics["steps"]]},
        inputs=plan.inputs, recipe_digest=plan.digest,
        params={"checkpoint_dir": posixpath.join(plan.checkpoint_dir, "ckpt"), "run": cfg.to_dict()},
        counters=counters, airflow=airflow, started=started,
    )


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
