"""The recipe's `training:` section as megatron run configs (training.config.RunConfig).

One mapping serves two callers: recipe validation at load (a bad shape fails before anything runs,
and the error names the *recipe* field) and MegatronTrainOperator, which writes the run JSON.
training.config is plain dataclasses (no torch), imported lazily so phiflow stays import-light.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from phiflow.recipe import Recipe
    from training.config import RunConfig

RunName = Literal["pretrain", "midtrain"]
TOKENS_TOLERANCE = 0.01  # mixture.total_tokens may differ this much from steps x batch x seq_length


@dataclasses.dataclass(frozen=True)
class Phase:
    """One pretraining phase as steps of the whole run: it trains steps start+1 .. end."""

    name: str
    start: int
    end: int
    tokens: int
    shares: dict[str, float]

    @property
    def run(self) -> str:
        """Its key in the blend JSON and the mixture report (`pretrain.phase1`)."""
        return f"pretrain.{self.name}"

    @property
    def partition(self) -> dict[str, str]:
        return {"phase": self.name}


def phases(recipe: Recipe) -> list[Phase]:
    """The run's phases in order, as step ranges; a recipe without phases has none (one run).

    A phase's steps are its token budget (or fraction of the run) in whole optimizer steps; the last
    phase ends at `training.pretrain.steps`, so the phases tile the run whatever the rounding."""
    t = _training(recipe).pretrain
    if not t.phases:
        return []
    per_step = t.global_batch_size * t.model.seq_length
    out, start = [], 0
    for i, p in enumerate(t.phases):
        steps = round(p.tokens / per_step) if p.tokens is not None else round(p.fraction * t.steps)
        end = t.steps if i == len(t.phases) - 1 else start + steps
        out.append(Phase(p.name, start, end, (end - start) * per_step, dict(p.mixture)))
        start = end
    return out


def checkpoint_partition(recipe: Recipe, phase: str | None = None) -> dict[str, str]:
    """`checkpoints.pretrain/recipe=<name>[/phase=<phase>]`: a phase boundary later steps can name."""
    return {"recipe": recipe.name, **({"phase": phase} if phase else {})}


def final_pretrain_partition(recipe: Recipe) -> dict[str, str]:
    """The pretraining checkpoint midtraining loads: the last phase's, or the one run's."""
    ps = phases(recipe)
    return checkpoint_partition(recipe, ps[-1].name if ps else None)

# RunConfig field -> the recipe field (under training.<run>) that sets it, where the names differ.
_PRETRAIN_FIELDS = {
    "optimizer.total_steps": "steps",
    "batch.global_batch_size": "global_batch_size",
    "batch.micro_batch_size": "micro_batch_size",
    "model.vocab_size": "model.padded_vocab_size",
    "checkpoint.save_interval": "checkpoint_interval",
    "checkpoint.save_dir": "checkpoint_interval",
    "data.split": "split",
}
_MIDTRAIN_FIELDS = {
    "optimizer.total_steps": "steps",
    "optimizer.warmup_steps": "warmup_steps",
    "optimizer.lr": "lr_factor",
    "optimizer.min_lr": "lr_factor",
    "model.seq_length": "seq_length_factor",
    "model.rotary_base": "rotary_base",
}


def pretrain_config(
    recipe: Recipe, blend: list[tuple[float, str]], vocab_size: int, eod: int,
    save_dir: str | None = None, cache_dir: str | None = None, phase: str | None = None,
    load_dir: str | None = None,
) -> RunConfig:
    """The pretraining run: the recipe's shape, batch, schedule, with the mix stage's blend.

    A phase trains its steps of the one schedule (`stop_at_step`), loading the previous phase's
    checkpoint whole (`load_dir`: weights, optimizer, schedule, step, RNG). A run `init_from` a
    checkpoint loads its weights and Adam moments with a fresh step counter and schedule."""
    from training.config import (
        BatchConfig,
        CheckpointConfig,
        DataConfig,
        ModelConfig,
        OptimizerConfig,
        ParallelConfig,
        RunConfig,
    )

    t = _training(recipe).pretrain
    m, o = t.model, t.optimizer
    return RunConfig(
        name=f"{recipe.name}-pretrain" + (f"-{phase}" if phase else ""),
        model=ModelConfig(
            num_layers=m.num_layers, hidden_size=m.hidden_size, num_attention_heads=m.num_attention_heads,
            ffn_hidden_size=m.ffn_hidden_size, vocab_size=vocab_size,
            make_vocab_size_divisible_by=m.make_vocab_size_divisible_by, seq_length=m.seq_length,
            rotary_base=m.rotary_base,
        ),
        parallel=ParallelConfig(tp=t.parallel.tp, pp=t.parallel.pp),
        optimizer=OptimizerConfig(
            lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps, total_steps=t.steps,
            weight_decay=o.weight_decay, clip_grad=o.clip_grad, adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2,
        ),
        batch=BatchConfig(micro_batch_size=t.micro_batch_size, global_batch_size=t.global_batch_size),
        data=DataConfig(blend=list(blend), split=t.split, seed=t.seed, eod_token_id=eod,
                        eval_iters=t.eval_iters, cache_dir=cache_dir),
        checkpoint=CheckpointConfig(save_dir=save_dir, save_interval=t.checkpoint_interval if save_dir else 0,
                                    load_dir=load_dir, finetune=t.init_from is not None and load_dir is not None,
                                    load_optimizer=t.init_from is not None),
        seed=t.seed,
        stop_at_step=next((p.end for p in phases(recipe) if p.name == phase), None),
    )


def midtrain_config(
    recipe: Recipe, blend: list[tuple[float, str]], vocab_size: int, eod: int,
    load_dir: str, save_dir: str | None = None, cache_dir: str | None = None,
) -> RunConfig:
    """Midtraining from the pretraining checkpoint (RunConfig.midtrain), on the long-context blend."""
    t = _training(recipe)
    mid = t.midtrain
    pre = pretrain_config(recipe, blend, vocab_size, eod, cache_dir=cache_dir)
    cfg = pre.midtrain(
        load_dir=load_dir, save_dir=save_dir, seq_length_factor=mid.seq_length_factor,
        rotary_base=mid.rotary_base, lr_factor=mid.lr_factor, name=f"{recipe.name}-midtrain",
    )
    cfg.optimizer = dataclasses.replace(cfg.optimizer, total_steps=mid.steps, warmup_steps=mid.warmup_steps)
    cfg.checkpoint.save_interval = t.pretrain.checkpoint_interval if save_dir else 0
    return cfg


def run_config(recipe: Recipe, run: RunName, blend: list[tuple[float, str]], vocab_size: int, eod: int,
               save_dir: str | None, load_dir: str | None = None, cache_dir: str | None = None,
               phase: str | None = None) -> RunConfig:
    if run == "pretrain":
        return pretrain_config(recipe, blend, vocab_size, eod, save_dir, cache_dir, phase, load_dir)
    if load_dir is None:
        raise ValueError("midtrain needs the pretraining checkpoint (load_dir)")
    return midtrain_config(recipe, blend, vocab_size, eod, load_dir, save_dir, cache_dir)


def world_size(recipe: Recipe) -> int:
    p = _training(recipe).pretrain.parallel
    return p.tp * p.pp * p.dp


def pretrain_tokens(recipe: Recipe) -> int:
    """Tokens the pretraining run consumes: the mixture's budget unless the recipe names its own."""
    t = _training(recipe).pretrain
    if recipe.mixture is not None and recipe.mixture.total_tokens:
        return recipe.mixture.total_tokens
    return t.steps * t.global_batch_size * t.model.seq_length


def midtrain_tokens(recipe: Recipe) -> int:
    t = _training(recipe)
    return t.midtrain.total_tokens or (
        t.midtrain.steps * t.pretrain.global_batch_size * t.pretrain.model.seq_length * t.midtrain.seq_length_factor
    )


def recipe_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Every `(recipe field, reason)` that would make the pretraining or midtraining run invalid."""
    from training.config import pad_vocab_size

    t = _training(recipe)
    m = t.pretrain.model
    vocab = recipe.tokenizer.vocab_size if recipe.tokenizer.kind == "offline_bpe" else (m.padded_vocab_size or 1)
    world = world_size(recipe)
    blend = [(1.0, "<blend>")]
    problems = [(_recipe_field("pretrain", f, _PRETRAIN_FIELDS), r)
                for f, r in pretrain_config(recipe, blend, vocab, 0, "<ckpt>").problems(world)]
    if not problems:
        mid = midtrain_config(recipe, blend, vocab, 0, "<pretrain>", "<midtrain>")
        problems += [(_recipe_field("midtrain", f, _MIDTRAIN_FIELDS), r) for f, r in mid.problems(world)]
    if m.padded_vocab_size and recipe.tokenizer.kind == "offline_bpe":
        padded = pad_vocab_size(vocab, m.make_vocab_size_divisible_by, t.pretrain.parallel.tp)
        if padded != m.padded_vocab_size:
            problems.append(("training.pretrain.model.padded_vocab_size",
                             f"{m.padded_vocab_size}, but tokenizer.vocab_size {vocab} pads to {padded}"))
    if recipe.mixture is not None and recipe.mixture.total_tokens:
        trained = t.pretrain.steps * t.pretrain.global_batch_size * m.seq_length
        budget = recipe.mixture.total_tokens
        if abs(trained - budget) > TOKENS_TOLERANCE * budget:
            problems.append(("mixture.total_tokens", f"{budget} tokens, but training.pretrain trains steps x "
                             f"global_batch_size x seq_length = {trained}"))
    problems += phase_problems(recipe)
    if t.midtrain.long_doc_tokens < m.seq_length:
        problems.append(("training.midtrain.long_doc_tokens",
                         f"{t.midtrain.long_doc_tokens} is shorter than the pretraining seq_length {m.seq_length}"))
    return problems


def phase_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Phases must name the mixture's sources, tile the run (fractions sum to 1, tokens to the run's) and
    each get at least one step."""
    t = _training(recipe).pretrain
    if not t.phases:
        return []
    problems = []
    sources = [s.name for s in recipe.mixture.sources] if recipe.mixture is not None else []
    for i, p in enumerate(t.phases):
        unknown = sorted(set(p.mixture) - set(sources))
        if unknown:
            problems.append((f"training.pretrain.phases[{i}].mixture", f"{unknown} are not mixture sources {sources}"))
    per_step = t.global_batch_size * t.model.seq_length
    planned = sum(p.tokens if p.tokens is not None else p.fraction * t.steps * per_step for p in t.phases)
    run_tokens = t.steps * per_step
    if abs(planned - run_tokens) > TOKENS_TOLERANCE * run_tokens:
        problems.append(("training.pretrain.phases", f"the phases plan {planned:,.0f} tokens, but the run trains "
                         f"steps x global_batch_size x seq_length = {run_tokens:,}"))
    for i, ph in enumerate(phases(recipe)):
        if ph.end <= ph.start:
            problems.append((f"training.pretrain.phases[{i}]", f"phase {ph.name} gets no step of the run's {t.steps}"))
    return problems


def _recipe_field(run: str, field: str, renames: dict[str, str]) -> str:
    if field in renames:
        return f"training.{run}.{renames[field]}"
    if run == "midtrain":  # everything else a midtrain run inherits from the pretraining section
        return _recipe_field("pretrain", field, _PRETRAIN_FIELDS)
    return f"training.{run}.{field}"


def _training(recipe: Recipe) -> Any:
    if recipe.training is None:
        raise ValueError(f"recipe {recipe.name} has no training section")
    return recipe.training
