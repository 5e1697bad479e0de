"""The plan of one training run over the lake: the blend and the checkpoint it starts from, its digest,
its checkpoint folder and its run config (phiflow.run_config).

The pretrain and midtrain stages (training.train_stage), the warmup stress test (training.stress) and the
ablation report (training.sweep_report, which tells a current point from its digest and start) share it.
No torch, no Airflow: the Airflow worker imports it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from phiflow import run_config
from phiflow.blend import DATASET as BLEND
from phiflow.blend import blend_partition, load_blend, source_names
from phiflow.manifest import InputRef, Manifest, sha256_json
from phiflow.recipe import Recipe
from phiflow.run_config import RunConfig, RunName
from phiflow.storage import Lake

# Training fields the run config alone declared before the recipe did: at their defaults they stay out of
# the digest, so the checkpoints committed before the recipe had them are still current.
RECIPE_SINCE_RUN_CONFIG = {
    "model": ("max_position_embeddings", "init_method_std", "hidden_dropout", "attention_dropout",
              "untie_embeddings"),
    "optimizer": ("adam_eps", "distributed_optimizer"),
}


@dataclass(frozen=True)
class RunPlan:
    run: RunName
    phase: str | None  # one phase of a phased pretraining run, or None
    partition: dict[str, str]  # of checkpoints.<run>
    inputs: list[InputRef]  # the blend, then the checkpoint it starts from
    digest: str  # training_digest: a committed partition with these inputs and digest is current
    checkpoint_dir: str  # one folder per (inputs, digest): a retried task resumes from its saves
    cfg: RunConfig
    dp: int
    start: Manifest | None  # the committed checkpoint it loads

    @property
    def dataset(self) -> str:
        return f"checkpoints.{self.run}"


def training_digest(recipe: Recipe, run: RunName, phase: str | None = None) -> str:
    """The recipe digest of a run's checkpoint: its training section (not where, nor the stress test)."""
    assert recipe.training is not None
    training = recipe.training.model_dump(mode="json", exclude={"cluster", "stress"})
    pre = recipe.training.pretrain
    for section, names in RECIPE_SINCE_RUN_CONFIG.items():
        spec = getattr(pre, section)
        for name in names:
            if getattr(spec, name) == type(spec).model_fields[name].default:
                del training["pretrain"][section][name]
    return sha256_json({"run": run, "training": training, **({"phase": phase} if phase else {})})


def start_ref(recipe: Recipe, run: RunName, phase: str | None = None) -> tuple[str, dict[str, str]] | None:
    """(dataset, partition) of the committed checkpoint a run loads: the previous phase's (whole), the
    pretraining run's for midtraining (weights), the recipe's `init_from` (weights and Adam moments), or none."""
    if run == "midtrain":
        return "checkpoints.pretrain", run_config.final_pretrain_partition(recipe)
    names = [p.name for p in run_config.training(recipe).pretrain.phase_plan()]
    if phase is not None and names.index(phase) > 0:
        return "checkpoints.pretrain", run_config.checkpoint_partition(recipe, names[names.index(phase) - 1])
    ref = run_config.training(recipe).pretrain.init_from
    return (ref.dataset, ref.partition) if ref is not None else None


def run_plan(recipe: Recipe, lake: Lake, run: RunName, phase: str | None = None) -> RunPlan:
    """Inputs, digests, folders and the run config of this run (no side effects but folders). A padded
    vocabulary the recipe names and the tokenizer does not give is a ValueError."""
    blend_m = lake.require(BLEND, blend_partition(recipe))
    blend = load_blend(lake, blend_m)
    inputs = [blend_m.input_ref()]
    ref = start_ref(recipe, run, phase)
    start = lake.require(*ref) if ref is not None else None
    if start is not None:
        inputs.append(start.input_ref())
    load_dir = start.params["checkpoint_dir"] if start is not None else None
    digest = training_digest(recipe, run, phase)
    key = sha256_json({"inputs": [i.digest for i in inputs], "digest": digest})[:16]
    ckpt_dir = posixpath.join(lake.root, "_checkpoints", recipe.name, run, *filter(None, [phase]), key)
    tok = blend["tokenizer"]
    pre = run_config.training(recipe).pretrain
    blend_run = next(p.run for p in pre.phase_plan() if p.name == phase) if phase else run
    cfg = run_config.run_config(recipe, run, [tuple(x) for x in blend[blend_run]["blend"]],
                                tok["vocab_size"], tok["eod"], posixpath.join(ckpt_dir, "ckpt"), load_dir,
                                cache_dir=posixpath.join(ckpt_dir, "index_cache"), phase=phase)
    cfg = cfg.replace(data={"source_names": source_names(blend, blend_run)})
    part = run_config.checkpoint_partition(recipe, phase) if run == "pretrain" else blend_partition(recipe)
    padded = pre.model.padded_vocab_size
    if padded and cfg.model.padded_vocab_size(cfg.parallel.tp) != padded:
        raise ValueError(f"training.pretrain.model.padded_vocab_size is {padded}, but the tokenizer's "
                         f"{tok['vocab_size']} entries pad to {cfg.model.padded_vocab_size(cfg.parallel.tp)}")
    return RunPlan(run, phase, part, inputs, digest, ckpt_dir, cfg, pre.parallel.dp, start)
