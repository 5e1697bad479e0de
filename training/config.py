"""Typed run configuration for pretraining and midtraining.

The orchestrator writes one run JSON file and passes its path to ``training.pretrain --run``; this
module is the schema of that file. Validation collects every problem and names the field, so a bad
recipe fails before any process is launched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BatchConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "OutputConfig",
    "ParallelConfig",
    "RunConfig",
    "pad_vocab_size",
]


class ConfigError(ValueError):
    """Invalid run configuration. ``problems`` holds ``(field, reason)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("invalid run config: " + "; ".join(f"{f}: {r}" for f, r in problems))


def pad_vocab_size(vocab_size: int, multiple: int, tp: int = 1) -> int:
    """Round the tokenizer vocabulary up so the embedding splits evenly over TP ranks.

    Phi-4: tiktoken's 100,277 entries padded to a multiple of 128 give 100,352.
    """
    step = multiple * tp
    return int(math.ceil(vocab_size / step) * step)


@dataclass
class ModelConfig:
    """Decoder-only transformer shape (Phi-4: 40 layers, 5120 hidden, 40 heads, 17920 ffn)."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int | None = None  # default 4 * hidden_size
    vocab_size: int = 512  # tokenizer vocabulary before padding
    make_vocab_size_divisible_by: int = 128
    seq_length: int = 64
    max_position_embeddings: int | None = None  # default seq_length
    rotary_base: int = 10_000
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    untie_embeddings: bool = True

    @property
    def ffn(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    def padded_vocab_size(self, tp: int = 1) -> int:
        return pad_vocab_size(self.vocab_size, self.make_vocab_size_divisible_by, tp)


@dataclass
class ParallelConfig:
    """Model parallelism; data parallelism is what is left of the world size."""

    tp: int = 1
    pp: int = 1

    def dp(self, world_size: int) -> int:
        return world_size // (self.tp * self.pp)


@dataclass
class OptimizerConfig:
    """AdamW with linear warmup then linear decay (Phi-4: peak 3e-4, weight decay 0.1)."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    total_steps: int = 20
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    distributed_optimizer: bool = False  # GPU only: its checkpoints fail on CPU


@dataclass
class BatchConfig:
    """Sequences per micro batch and per optimizer step; accumulation follows from dp."""

    micro_batch_size: int = 2
    global_batch_size: int = 4

    def accumulation_steps(self, dp: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * dp)


@dataclass
class DataConfig:
    """Blend of megatron indexed datasets: ``[(weight, prefix), ...]`` (prefix without .bin/.idx)."""

    blend: list[tuple[float, str]] = field(default_factory=list)
    # The mixture source of each blend entry (parallel to `blend`): the final evaluation then reports
    # held-out loss per source, each on its own prefixes' validation split. Empty: blend-wide only.
    source_names: list[str] = field(default_factory=list)
    split: str = "98,2,0"  # train, validation, test
    seed: int = 1234
    eod_token_id: int = 0
    pad_token_id: int | None = None  # default: -1 (none)
    eval_iters: int = 2  # validation micro-batches per evaluation
    cache_dir: str | None = None  # megatron dataset index cache


@dataclass
class CheckpointConfig:
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


@dataclass
class OutputConfig:
    """Where logs and metrics go."""

    tensorboard_dir: str | None = None
    metrics_path: str | None = None
    log_interval: int = 1
    eval_interval: int = 0  # 0: evaluate only at the end
    # Record the max pre-softmax attention logit of each step (training.attention_probe): forward
    # hooks on the attention layers, one micro batch per step; off: no hooks, no cost.
    attention_logits: bool = False


@dataclass
class RunConfig:
    """One pretraining or midtraining run."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 1234
    fail_on_nonfinite: bool = True
    inject_nonfinite_at_step: int | None = None  # test hook: poison the loss at this step
    # Stop after this step although the schedule runs to optimizer.total_steps: one phase of a run with
    # one learning-rate curve (the next phase loads this run's final checkpoint). None: the whole run.
    stop_at_step: int | None = None

    def world_size(self, dp: int = 1) -> int:
        """Processes a launch with ``dp`` data-parallel replicas needs."""
        return self.parallel.tp * self.parallel.pp * dp

    # --- validation ------------------------------------------------------------------------
    def problems(self, world_size: int | None = None) -> list[tuple[str, str]]:
        """Every ``(field, reason)`` that makes this run impossible."""
        p: list[tuple[str, str]] = []
        m, par, o, b, d, c = (self.model, self.parallel, self.optimizer, self.batch, self.data, self.checkpoint)
        positive = {
            "model.num_layers": m.num_layers,
            "model.hidden_size": m.hidden_size,
            "model.num_attention_heads": m.num_attention_heads,
            "model.vocab_size": m.vocab_size,
            "model.make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
            "model.seq_length": m.seq_length,
            "model.rotary_base": m.rotary_base,
            "parallel.tp": par.tp,
            "parallel.pp": par.pp,
            "optimizer.total_steps": o.total_steps,
            "batch.micro_batch_size": b.micro_batch_size,
            "batch.global_batch_size": b.global_batch_size,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                p.append((name, f"must be a positive integer, got {value!r}"))
        if p:
            return p  # the checks below divide by these
        if m.hidden_size % m.num_attention_heads:
            p.append(
                ("model.hidden_size", f"{m.hidden_size} not divisible by num_attention_heads {m.num_attention_heads}")
            )
        if m.num_attention_heads % par.tp:
            p.append(("model.num_attention_heads", f"{m.num_attention_heads} not divisible by parallel.tp={par.tp}"))
        if m.ffn % par.tp:
            p.append(("model.ffn_hidden_size", f"{m.ffn} not divisible by parallel.tp={par.tp}"))
        if m.num_layers % par.pp:
            p.append(("model.num_layers", f"{m.num_layers} not divisible by parallel.pp={par.pp}"))
        if m.max_position_embeddings is not None and m.max_position_embeddings < m.seq_length:
            p.append(("model.max_position_embeddings", f"{m.max_position_embeddings} < seq_length {m.seq_length}"))
        for name, value in (
            ("model.hidden_dropout", m.hidden_dropout),
            ("model.attention_dropout", m.attention_dropout),
        ):
            if not 0.0 <= value < 1.0:
                p.append((name, f"must be in [0, 1), got {value}"))
        if not (o.lr > 0 and math.isfinite(o.lr)):
            p.append(("optimizer.lr", f"must be a positive finite number, got {o.lr}"))
        if not 0 <= o.min_lr <= o.lr:
            p.append(("optimizer.min_lr", f"must be in [0, lr={o.lr}], got {o.min_lr}"))
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= o.total_steps:
            p.append(("stop_at_step", f"must be in [1, total_steps={o.total_steps}], got {self.stop_at_step}"))
        if not 0 <= o.warmup_steps <= o.total_steps:
            p.append(("optimizer.warmup_steps", f"must be in [0, total_steps={o.total_steps}], got {o.warmup_steps}"))
        if o.weight_decay < 0:
            p.append(("optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}"))
        if o.clip_grad < 0:
            p.append(("optimizer.clip_grad", f"must be >= 0 (0 disables), got {o.clip_grad}"))
        for name, beta in (("optimizer.adam_beta1", o.adam_beta1), ("optimizer.adam_beta2", o.adam_beta2)):
            if not 0.0 <= beta < 1.0:
                p.append((name, f"must be in [0, 1), got {beta}"))
        if world_size is not None:
            mp = par.tp * par.pp
            if world_size % mp:
                p.append(("parallel", f"world size {world_size} not divisible by tp*pp={mp}"))
            else:
                dp = world_size // mp
                if b.global_batch_size % (b.micro_batch_size * dp):
                    p.append(
                        (
                            "batch.global_batch_size",
                            f"{b.global_batch_size} is not micro_batch_size {b.micro_batch_size}"
                            f" x data-parallel {dp} x an integer accumulation",
                        )
                    )
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
        split = d.split.split(",")
        try:
            parts = [float(x) for x in split]
            if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
                raise ValueError
        except ValueError:
            p.append(("data.split", f"must be three non-negative weights 'train,valid,test', got {d.split!r}"))
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

    def validate(self, world_size: int | None = None) -> RunConfig:
        """Raise :class:`ConfigError` naming each bad field; return self for chaining."""
        problems = self.problems(world_size)
        if problems:
            raise ConfigError(problems)
        return self

    # --- (de)serialization -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from plain JSON data; unknown or ill-typed keys raise :class:`ConfigError`."""
        problems: list[tuple[str, str]] = []
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
        m = dataclasses.replace(
            self.model,
            seq_length=self.model.seq_length * seq_length_factor,
            max_position_embeddings=None,
            rotary_base=rotary_base,
        )
        o = dataclasses.replace(
            self.optimizer, lr=self.optimizer.lr * lr_factor, min_lr=self.optimizer.min_lr * lr_factor
        )
        ck = dataclasses.replace(self.checkpoint, load_dir=load_dir, save_dir=save_dir, finetune=True)
        return dataclasses.replace(self, model=m, optimizer=o, checkpoint=ck, **changes)


def _build(tp: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Convert JSON ``value`` to the annotated type ``tp``, recording problems under ``path``."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append((path or "<root>", f"expected an object, got {type(value).__name__}"))
            return tp()
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        for key in value:
            if key not in names:
                problems.append((_join(path, key), "unknown field"))
        kwargs = {k: _build(hints[k], v, _join(path, k), problems) for k, v in value.items() if k in names}
        return tp(**kwargs)
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
