"""The run config: one pretraining or midtraining run, the JSON `training.pretrain --config` reads.

Its model, parallel and optimizer sections are the recipe's own models (phiflow.recipe: ModelShape,
ParallelSpec, OptimizerSpec, with their checks); a run adds only what the recipe does not say: the
tokenizer's vocabulary, the step count, the blend, the checkpoint folders, the outputs. The builders at
the end make a recipe's runs (the orchestrator writes their JSON). Validation collects every problem and
names the field, so a bad run fails before any process is launched. Contract layer: no torch, and nothing
of the project but the recipe.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from phiflow.recipe import (
    ModelShape,
    OptimizerSpec,
    ParallelSpec,
    Problem,
    Recipe,
    Strict,
    TrainingSpec,
    batch_problem,
    not_positive,
    pad_vocab_size,
    split_problem,
)

RunName = Literal["pretrain", "midtrain"]


class ConfigError(ValueError):
    """Invalid run configuration. ``problems`` holds ``(field, reason)`` pairs."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid run config: " + "; ".join(f"{f}: {r}" for f, r in problems))


class RunModel(ModelShape):
    """The recipe's model shape with the tokenizer's vocabulary (before padding)."""

    vocab_size: int = 512

    def padded_vocab_size(self, tp: int = 1) -> int:
        return pad_vocab_size(self.vocab_size, self.make_vocab_size_divisible_by, tp)


class RunOptimizer(OptimizerSpec):
    """The recipe's optimizer with the length of its schedule."""

    total_steps: int = 20


class BatchConfig(Strict):
    """Sequences per micro batch and per optimizer step; accumulation follows from dp."""

    micro_batch_size: int = 2
    global_batch_size: int = 4

    def accumulation_steps(self, dp: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * dp)


class DataConfig(Strict):
    """Blend of megatron indexed datasets: ``[(weight, prefix), ...]`` (prefix without .bin/.idx)."""

    blend: list[tuple[float, str]] = Field(default_factory=list)
    # The mixture source of each blend entry (parallel to `blend`): the final evaluation then reports
    # held-out loss per source, each on its own prefixes' validation split. Empty: blend-wide only.
    source_names: list[str] = Field(default_factory=list)
    split: str = "98,2,0"  # train, validation, test
    seed: int = 1234
    eod_token_id: int = 0
    pad_token_id: int | None = None  # default: -1 (none)
    eval_iters: int = 2  # validation micro-batches per evaluation
    cache_dir: str | None = None  # megatron dataset index cache


class CheckpointConfig(Strict):
    """Where to save and what to resume from.

    ``finetune`` (midtraining): load the model weights only, start at step 0 with a fresh optimizer
    and scheduler, as megatron's ``--finetune`` does. ``load_optimizer`` with ``finetune`` also loads
    the Adam moments (an ablation that continues from a phase-1 checkpoint: step 0, its own schedule).
    Without ``finetune`` a load resumes everything: weights, optimizer, schedule, step, RNG (the next
    phase of a run).
    """

    save_dir: str | None = None
    save_interval: int = 0  # 0: only at the end when save_dir is set
    load_dir: str | None = None
    finetune: bool = False
    load_optimizer: bool = False
    load_rng: bool = True


class OutputConfig(Strict):
    """Where logs and metrics go."""

    tensorboard_dir: str | None = None
    metrics_path: str | None = None
    log_interval: int = 1
    eval_interval: int = 0  # 0: evaluate only at the end
    # Record the max pre-softmax attention logit of each step (training.attention_probe): forward
    # hooks on the attention layers, one micro batch per step; off: no hooks, no cost.
    attention_logits: bool = False


class RunConfig(Strict):
    """One pretraining or midtraining run (immutable: `replace` makes a changed copy)."""

    name: str = "run"
    model: RunModel = Field(default_factory=RunModel)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    optimizer: RunOptimizer = Field(default_factory=RunOptimizer)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    seed: int = 1234
    fail_on_nonfinite: bool = True
    inject_nonfinite_at_step: int | None = None  # test hook: poison the loss at this step
    # Stop after this step although the schedule runs to optimizer.total_steps: one phase of a run with
    # one learning-rate curve (the next phase loads this run's final checkpoint). None: the whole run.
    stop_at_step: int | None = None

    def world_size(self, dp: int = 1) -> int:
        """Processes a launch with ``dp`` data-parallel replicas needs."""
        return self.parallel.tp * self.parallel.pp * dp

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with `changes` of top-level fields; a section given as a mapping changes only the fields
        it names (``cfg.replace(output={"metrics_path": p})``)."""
        sections = {name: type(getattr(self, name)).model_validate({**dict(getattr(self, name)), **value})
                    for name, value in changes.items() if isinstance(value, dict)}
        return type(self).model_validate({**dict(self), **changes, **sections})

    # --- validation ------------------------------------------------------------------------
    def problems(self, world_size: int | None = None) -> list[Problem]:
        """Every ``(field, reason)`` that makes this run impossible."""
        m, par, o, b, d, c = (self.model, self.parallel, self.optimizer, self.batch, self.data, self.checkpoint)
        p = not_positive({**{f"model.{f}": getattr(m, f) for f in m.POSITIVE}, "model.vocab_size": m.vocab_size,
                          "parallel.tp": par.tp, "parallel.pp": par.pp, "optimizer.total_steps": o.total_steps,
                          "batch.micro_batch_size": b.micro_batch_size, "batch.global_batch_size": b.global_batch_size})
        if p:
            return p  # the checks below divide by these
        p += [(f"model.{f}", r) for f, r in m.problems(par)]
        p += [(f"optimizer.{f}", r) for f, r in o.problems(o.total_steps)]
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= o.total_steps:
            p.append(("stop_at_step", f"must be in [1, total_steps={o.total_steps}], got {self.stop_at_step}"))
        if world_size is not None:
            mp = par.tp * par.pp
            if world_size % mp:
                p.append(("parallel", f"world size {world_size} not divisible by tp*pp={mp}"))
            elif batch := batch_problem(b.micro_batch_size, b.global_batch_size, world_size // mp):
                p.append(("batch.global_batch_size", batch))
        if not d.blend:
            p.append(("data.blend", "needs at least one (weight, prefix) pair"))
        if d.source_names and len(d.source_names) != len(d.blend):
            p.append(("data.source_names", f"names {len(d.source_names)} sources for {len(d.blend)} blend entries"))
        for i, entry in enumerate(d.blend):
            if len(entry) != 2:
                p.append((f"data.blend[{i}]", f"must be (weight, prefix), got {entry!r}"))
                continue
            weight, prefix = entry
            if not (isinstance(weight, (int, float)) and weight > 0):
                p.append((f"data.blend[{i}]", f"weight must be > 0, got {weight!r}"))
            if not isinstance(prefix, str) or not prefix:
                p.append((f"data.blend[{i}]", f"prefix must be a path, got {prefix!r}"))
        split = split_problem(d.split)
        if split:
            p.append(("data.split", split))
        if c.save_interval < 0:
            p.append(("checkpoint.save_interval", f"must be >= 0, got {c.save_interval}"))
        if c.save_interval and not c.save_dir:
            p.append(("checkpoint.save_dir", "required when save_interval > 0"))
        if c.finetune and not c.load_dir:
            p.append(("checkpoint.load_dir", "required when finetune is set"))
        if c.finetune and c.save_dir and c.load_dir and Path(c.save_dir) == Path(c.load_dir):
            p.append(
                (
                    "checkpoint.save_dir",
                    "must differ from load_dir when finetune is set (a restart "
                    "would resume the loaded run instead of fine-tuning it)",
                )
            )
        return p

    def validate(self, world_size: int | None = None) -> RunConfig:  # type: ignore[override]
        """Raise :class:`ConfigError` naming each bad field; return self for chaining."""
        problems = self.problems(world_size)
        if problems:
            raise ConfigError(problems)
        return self

    # --- (de)serialization -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from plain JSON data; unknown or ill-typed keys raise :class:`ConfigError`."""
        problems: list[Problem] = []
        cfg = _build(cls, data, "", problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def midtrain(
        self,
        load_dir: str,
        save_dir: str | None = None,
        seq_length_factor: int = 4,
        rotary_base: int = 250_000,
        lr_factor: float = 0.1,
        **changes: Any,
    ) -> RunConfig:
        """Phi-4 midtraining (section 3.3) from this pretraining config.

        Longer sequences, RoPE base 250K, learning rates divided by 10, weights loaded from
        ``load_dir`` with a fresh optimizer and step counter (``finetune``). Checkpoints go to
        ``save_dir`` (never the pretraining dir: a restarted midtrain resumes from its own saves).
        ``changes`` replace top-level fields (e.g. ``data=...``, ``output=...``).
        """
        return self.replace(
            model={"seq_length": self.model.seq_length * seq_length_factor, "max_position_embeddings": None,
                   "rotary_base": rotary_base},
            optimizer={"lr": self.optimizer.lr * lr_factor, "min_lr": self.optimizer.min_lr * lr_factor},
            checkpoint={"load_dir": load_dir, "save_dir": save_dir, "finetune": True},
            **changes,
        )


def _build(tp: Any, value: Any, path: str, problems: list[Problem]) -> Any:
    """Convert JSON ``value`` to the annotated type ``tp``, recording problems under ``path``."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if not isinstance(value, dict):
            problems.append((path or "<root>", f"expected an object, got {type(value).__name__}"))
            return tp()
        fields = tp.model_fields
        for key in value:
            if key not in fields:
                problems.append((_join(path, key), "unknown field"))
        # every value was checked here, field by field: no coercing validation on top
        return tp.model_construct(**{k: _build(fields[k].annotation, v, _join(path, k), problems)
                                     for k, v in value.items() if k in fields})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, path, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append((path, f"expected a list, got {type(value).__name__}"))
            return []
        return [_build(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            problems.append((path, f"expected {len(args)} items, got {value!r}"))
            return tuple(value) if isinstance(value, (list, tuple)) else value
        return tuple(_build(a, v, f"{path}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        problems.append((path, f"expected {tp.__name__}, got {value!r}"))
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# -- a recipe's runs ------------------------------------------------------------------------------
Section = TypeVar("Section", bound=BaseModel)


def _section(cls: type[Section], spec: BaseModel, **more: Any) -> Section:
    """The recipe section `spec` as the run's section `cls`: the fields they share, and `more`."""
    return cls(**{k: getattr(spec, k) for k in cls.model_fields if k not in more}, **more)


def training(recipe: Recipe) -> TrainingSpec:
    if recipe.training is None:
        raise ValueError(f"recipe {recipe.name} has no training section")
    return recipe.training


def checkpoint_partition(recipe: Recipe, phase: str | None = None) -> dict[str, str]:
    """`checkpoints.pretrain/recipe=<name>[/phase=<phase>]`: a phase boundary later steps can name."""
    return {"recipe": recipe.name, **({"phase": phase} if phase else {})}


def final_pretrain_partition(recipe: Recipe) -> dict[str, str]:
    """The pretraining checkpoint midtraining loads: the last phase's, or the one run's."""
    ps = training(recipe).pretrain.phase_plan()
    return checkpoint_partition(recipe, ps[-1].name if ps else None)


def pretrain_config(
    recipe: Recipe, blend: list[tuple[float, str]], vocab_size: int, eod: int,
    save_dir: str | None = None, cache_dir: str | None = None, phase: str | None = None,
    load_dir: str | None = None,
) -> RunConfig:
    """The pretraining run: the recipe's shape, batch, schedule, with the mix stage's blend.

    A phase trains its steps of the one schedule (`stop_at_step`), loading the previous phase's
    checkpoint whole (`load_dir`: weights, optimizer, schedule, step, RNG). A run `init_from` a
    checkpoint loads its weights and Adam moments with a fresh step counter and schedule."""
    t = training(recipe).pretrain
    return RunConfig(
        name=f"{recipe.name}-pretrain" + (f"-{phase}" if phase else ""),
        model=_section(RunModel, t.model, vocab_size=vocab_size),
        parallel=_section(ParallelSpec, t.parallel),
        optimizer=_section(RunOptimizer, t.optimizer, total_steps=t.steps),
        batch=BatchConfig(micro_batch_size=t.micro_batch_size, global_batch_size=t.global_batch_size),
        data=DataConfig(blend=list(blend), split=t.split, seed=t.seed, eod_token_id=eod,
                        eval_iters=t.eval_iters, cache_dir=cache_dir),
        checkpoint=CheckpointConfig(save_dir=save_dir, save_interval=t.checkpoint_interval if save_dir else 0,
                                    load_dir=load_dir, finetune=t.init_from is not None and load_dir is not None,
                                    load_optimizer=t.init_from is not None),
        seed=t.seed,
        stop_at_step=next((p.end for p in t.phase_plan() if p.name == phase), None),
    )


def midtrain_config(
    recipe: Recipe, blend: list[tuple[float, str]], vocab_size: int, eod: int,
    load_dir: str, save_dir: str | None = None, cache_dir: str | None = None,
) -> RunConfig:
    """Midtraining from the pretraining checkpoint (RunConfig.midtrain), on the long-context blend."""
    t = training(recipe)
    mid = t.midtrain
    pre = pretrain_config(recipe, blend, vocab_size, eod, cache_dir=cache_dir)
    cfg = pre.midtrain(
        load_dir=load_dir, save_dir=save_dir, seq_length_factor=mid.seq_length_factor,
        rotary_base=mid.rotary_base, lr_factor=mid.lr_factor, name=f"{recipe.name}-midtrain",
    )
    return cfg.replace(optimizer={"total_steps": mid.steps, "warmup_steps": mid.warmup_steps},
                       checkpoint={"save_interval": t.pretrain.checkpoint_interval if save_dir else 0})


def run_config(recipe: Recipe, run: RunName, blend: list[tuple[float, str]], vocab_size: int, eod: int,
               save_dir: str | None, load_dir: str | None = None, cache_dir: str | None = None,
               phase: str | None = None) -> RunConfig:
    if run == "pretrain":
        return pretrain_config(recipe, blend, vocab_size, eod, save_dir, cache_dir, phase, load_dir)
    if load_dir is None:
        raise ValueError("midtrain needs the pretraining checkpoint (load_dir)")
    return midtrain_config(recipe, blend, vocab_size, eod, load_dir, save_dir, cache_dir)


def world_size(recipe: Recipe) -> int:
    p = training(recipe).pretrain.parallel
    return p.tp * p.pp * p.dp


def pretrain_tokens(recipe: Recipe) -> int:
    """Tokens the pretraining run consumes: the mixture's budget unless the recipe names its own."""
    t = training(recipe).pretrain
    if recipe.mixture is not None and recipe.mixture.total_tokens:
        return recipe.mixture.total_tokens
    return t.steps * t.global_batch_size * t.model.seq_length


def midtrain_tokens(recipe: Recipe) -> int:
    t = training(recipe)
    return t.midtrain.total_tokens or (
        t.midtrain.steps * t.pretrain.global_batch_size * t.pretrain.model.seq_length * t.midtrain.seq_length_factor
    )
