"""Pretraining and midtraining with megatron-core: one entry, one readable loop.

    torchrun --nproc-per-node N -m training.pretrain --config run.json

(``--run run.json`` also works under plain ``python -m``; torchrun's own argument parser rejects
``--run`` as an ambiguous prefix of its ``--run-path``, so launchers pass ``--config``.)

The run JSON (``phiflow.run_config.RunConfig``) says everything: model shape, TP/PP (DP is what is left
of the world size), optimizer and schedule, blend, checkpoints, outputs. Midtraining is the same entry
with a config from ``RunConfig.midtrain``: longer sequences, RoPE base 250K, LR/10, weights loaded from
the pretraining checkpoint with a fresh optimizer and step counter (``checkpoint.finetune``).

On a machine without a GPU, ``training.cpu_compat`` redirects megatron's CUDA calls to CPU (gloo).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from phiflow.run_config import RunConfig
from training import cpu_compat

log = logging.getLogger("training.pretrain")

LATEST = "latest"  # marker file in the save dir, holds the last completed iteration
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf: the run stops rather than write a poisoned checkpoint."""


def iter_dir(save_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(save_dir) / f"iter_{step:07d}"


def latest_step(ckpt_dir: str | os.PathLike[str] | None) -> int | None:
    """Iteration named by ``<dir>/latest``, written only after a save completed on every rank."""
    if not ckpt_dir:
        return None
    marker = Path(ckpt_dir) / LATEST
    return int(marker.read_text().strip()) if marker.exists() else None


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """Everything the loop needs; built once by :func:`setup`."""

    cfg: RunConfig
    model: Any
    optimizer: Any
    scheduler: Any
    train_ds: Any
    valid_ds: Any
    dp: int
    accumulation: int
    step: int = 0
    resumed_from: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    valid_by_source: dict[str, Any] = field(default_factory=dict)  # mixture source -> its validation split
    attention_probe: Any = None  # training.attention_probe.AttentionProbe when output.attention_logits


def init_distributed(cfg: RunConfig) -> int:
    """Process group (gloo on CPU, nccl on GPU) and megatron's TP/PP/DP groups; returns dp."""
    from megatron.core import parallel_state

    cpu = cpu_compat.on_cpu()
    if cpu:
        cpu_compat.enable()
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if cpu else "nccl")
    world = dist.get_world_size()
    cfg.validate(world)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.parallel.tp, pipeline_model_parallel_size=cfg.parallel.pp
    )
    cpu_compat.seed_everything(cfg.seed)
    return world // (cfg.parallel.tp * cfg.parallel.pp)


def setup(cfg: RunConfig) -> Trainer:
    """Model wrapped in megatron DDP, optimizer, LR schedule, datasets; then load a checkpoint."""
    from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
    from megatron.core.optimizer import get_megatron_optimizer

    from training.data import build_datasets, source_valid_datasets
    from training.megatron_config import ddp_config, lr_scheduler, optimizer_config
    from training.model import build_model

    dp = init_distributed(cfg)
    o = cfg.optimizer
    module = build_model(cfg)
    model = DistributedDataParallel(config=module.config, ddp_config=ddp_config(cfg), module=module)
    # The schedules call these: DP grad all-reduce (and tied-embedding sync) after the last micro batch.
    module.config.no_sync_func = model.no_sync
    module.config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(optimizer_config(cfg, module.config.params_dtype), [model])
    scheduler = lr_scheduler(cfg, optimizer)
    b = cfg.batch
    eval_count = cfg.data.eval_iters * b.micro_batch_size * dp
    n_evals = 1 + (o.total_steps // cfg.output.eval_interval if cfg.output.eval_interval else 0)
    train_ds, valid_ds = build_datasets(cfg, o.total_steps * b.global_batch_size, eval_count * n_evals)
    trainer = Trainer(cfg, model, optimizer, scheduler, train_ds, valid_ds, dp, b.accumulation_steps(dp))
    if cfg.output.attention_logits:
        from training.attention_probe import AttentionProbe

        trainer.attention_probe = AttentionProbe(module)
    if cfg.data.source_names:
        trainer.valid_by_source = source_valid_datasets(cfg, eval_count)
    load_checkpoint(trainer)
    return trainer


# ----------------------------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------------------------
def _to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if cpu_compat.on_cpu():
        return batch
    return {k: v.cuda(non_blocking=True) for k, v in batch.items()}


def make_forward_step(trainer: Trainer) -> Any:
    """megatron's forward-step contract: run the stage, return output and a loss function."""
    inject = trainer.cfg.inject_nonfinite_at_step

    def forward_step(data_iterator: Iterator[dict[str, torch.Tensor]], model: Any) -> Any:
        batch = _to_device(next(data_iterator))
        output = model(
            batch["tokens"],
            batch["position_ids"],
            batch.get("attention_mask"),
            labels=batch["labels"],
        )
        loss_mask = batch["loss_mask"].float()

        def loss_func(output_tensor: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            losses = output_tensor.float()
            loss = (losses * loss_mask).sum() / loss_mask.sum().clamp(min=1.0)
            if inject is not None and trainer.step + 1 == inject:
                loss = loss * float("inf")
            # clone: the schedule divides the returned loss in place by the micro-batch count.
            return loss, {"lm loss": loss.detach().clone()}

        return output, loss_func

    return forward_step


def _mean_loss(reduced: list[dict[str, torch.Tensor]]) -> float:
    """Average the micro-batch losses of this rank, then over the whole world so every rank (also
    non-last pipeline stages) sees the same value and stops together on NaN."""
    from megatron.core import parallel_state

    has = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    acc = torch.zeros(2, dtype=torch.float64)
    if has and reduced:
        acc[0] = sum(float(r["lm loss"]) for r in reduced) / len(reduced)
        acc[1] = 1.0
    if not cpu_compat.on_cpu():
        acc = acc.cuda()
    dist.all_reduce(acc)
    return float(acc[0] / acc[1])


def run_batches(trainer: Trainer, dataset: Any, start_sample: int, n_micro: int, forward_only: bool) -> float:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from training.data import batches

    m, b = trainer.cfg.model, trainer.cfg.batch
    reduced = get_forward_backward_func()(
        forward_step_func=make_forward_step(trainer),
        data_iterator=batches(dataset, b.micro_batch_size, start_sample),
        model=[trainer.model],
        num_microbatches=n_micro,
        seq_length=m.seq_length,
        micro_batch_size=b.micro_batch_size,
        decoder_seq_length=m.seq_length,
        forward_only=forward_only,
    )
    return _mean_loss(reduced)


def train_step(trainer: Trainer) -> dict[str, float]:
    """Forward/backward over the accumulation micro batches, NaN check, clip, optimizer step."""
    cfg = trainer.cfg
    trainer.model.zero_grad_buffer()
    trainer.optimizer.zero_grad()
    t0 = time.perf_counter()
    start = trainer.step * cfg.batch.global_batch_size
    loss = run_batches(trainer, trainer.train_ds, start, trainer.accumulation, forward_only=False)
    step = trainer.step + 1
    if cfg.fail_on_nonfinite and not math.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite loss {loss} at step {step} of run {cfg.name!r}; stopping before the "
            f"optimizer update (last good step {trainer.step})"
        )
    _, grad_norm, _ = trainer.optimizer.step()
    trainer.scheduler.step(increment=1)
    trainer.step = step
    if not cpu_compat.on_cpu():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens = cfg.batch.global_batch_size * cfg.model.seq_length
    rec = {
        "step": step,
        "loss": loss,
        "lr": float(trainer.optimizer.param_groups[0]["lr"]),
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "step_time_s": elapsed,
        "tokens_per_s": tokens / elapsed,
    }
    if trainer.attention_probe is not None:  # MAX over all ranks (a collective: every rank is here)
        logit = trainer.attention_probe.take_global()
        rec["max_attention_logit"] = float("nan") if logit is None else logit
    mfu = model_flops_utilization(cfg, rec["tokens_per_s"], dist.get_world_size())
    if mfu is not None:
        rec["mfu"] = mfu
    return rec


def evaluate(trainer: Trainer, index: int = 0) -> dict[str, float] | None:
    """Held-out loss and perplexity on the validation split (None when the split is empty)."""
    if trainer.valid_ds is None:
        return None
    b = trainer.cfg.batch
    n = trainer.cfg.data.eval_iters
    trainer.model.eval()
    with torch.no_grad():
        loss = run_batches(trainer, trainer.valid_ds, index * n * b.micro_batch_size * trainer.dp, n, forward_only=True)
    trainer.model.train()
    return {"valid_loss": loss, "valid_perplexity": math.exp(min(loss, 700.0))}


def evaluate_sources(trainer: Trainer) -> dict[str, dict[str, float]]:
    """Held-out loss and perplexity of each mixture source, on its own validation split."""
    n, out = trainer.cfg.data.eval_iters, {}
    trainer.model.eval()
    with torch.no_grad():
        for name, ds in trainer.valid_by_source.items():
            loss = run_batches(trainer, ds, 0, n, forward_only=True)
            out[name] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    trainer.model.train()
    return out


def model_flops_utilization(cfg: RunConfig, tokens_per_s: float, world: int) -> float | None:
    """Achieved model FLOPs / peak bf16 FLOPs of the devices; None on CPU or an unknown GPU."""
    if cpu_compat.on_cpu():
        return None
    from training.model import flops_per_token

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    return tokens_per_s * flops_per_token(cfg) / (peak * world)


# ----------------------------------------------------------------------------------------------
# Checkpoints (megatron dist_checkpointing: resharding across TP/PP comes with it)
# ----------------------------------------------------------------------------------------------
def _sharded_state(trainer: Trainer, *, loading: bool, with_optimizer: bool) -> dict[str, Any]:
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    model_sd = trainer.model.module.sharded_state_dict()  # keys without DDP's "module." prefix
    state: dict[str, Any] = {"model": model_sd}
    if with_optimizer:
        state["optimizer"] = trainer.optimizer.sharded_state_dict(model_sd, is_loading=loading)
        state["scheduler"] = trainer.scheduler.state_dict()
        state["step"] = trainer.step
        # common state (a resumed run reports its whole loss curve). It must be equal on every rank, which
        # megatron checks and warns about at length: rank 0's, whose timings are the ones reported.
        history = [trainer.history]
        if not loading:
            dist.broadcast_object_list(history, src=0)
        state["history"] = history[0]
        state["topology"] = {"tp": trainer.cfg.parallel.tp, "pp": trainer.cfg.parallel.pp}
        pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
        state["rng"] = ShardedObject(
            "rng_state",
            cpu_compat.get_rng_state() if not loading else None,
            (trainer.cfg.parallel.pp, trainer.cfg.parallel.tp, trainer.dp),
            (pp, tp, parallel_state.get_data_parallel_rank()),
            replica_id=0,
        )
    return state


def save_checkpoint(trainer: Trainer) -> Path:
    """Save into ``iter_XXXXXXX/``, then (after every rank finished) point ``latest`` at it."""
    from megatron.core import dist_checkpointing

    save_dir = trainer.cfg.checkpoint.save_dir
    assert save_dir
    target = iter_dir(save_dir, trainer.step)
    if dist.get_rank() == 0:
        target.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(_sharded_state(trainer, loading=False, with_optimizer=True), str(target))
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = Path(save_dir) / (LATEST + ".tmp")
        tmp.write_text(str(trainer.step))
        tmp.replace(Path(save_dir) / LATEST)
    dist.barrier()
    trainer.checkpoints.append(str(target))
    if dist.get_rank() == 0:
        log.info("saved checkpoint %s", target)
    return target


def load_checkpoint(trainer: Trainer) -> None:
    """Resume this run from its own save dir if it has one, else load ``checkpoint.load_dir``.

    ``finetune`` (midtraining) takes the model weights only: step 0, fresh optimizer and schedule;
    with ``load_optimizer`` (an ablation continuing from a phase-1 checkpoint) also the Adam moments.
    Without ``finetune`` everything resumes (the next phase of a run: its schedule continues).
    RNG state is restored only when the TP/PP layout is unchanged (it is per model-parallel rank).
    """
    from megatron.core import dist_checkpointing

    ck = trainer.cfg.checkpoint
    resume_step = latest_step(ck.save_dir)
    if resume_step is not None:
        src, finetune = iter_dir(ck.save_dir, resume_step), False  # type: ignore[arg-type]
    elif ck.load_dir:
        load_step = latest_step(ck.load_dir)
        if load_step is None:
            raise FileNotFoundError(f"checkpoint.load_dir {ck.load_dir}: no '{LATEST}' marker")
        src, finetune = iter_dir(ck.load_dir, load_step), ck.finetune
    else:
        return
    moments = finetune and ck.load_optimizer
    template = _sharded_state(trainer, loading=True, with_optimizer=not finetune or moments)
    if moments:
        template = {k: template[k] for k in ("model", "optimizer")}
    same_layout = True
    if not finetune:
        common = dist_checkpointing.load_common_state_dict(str(src))
        if resume_step is not None:  # our own run, killed or failed: its curve so far, no step twice
            trainer.history = list(common.get("history", []))
        saved = common.get("topology", {})
        same_layout = saved == template["topology"] and trainer.cfg.checkpoint.load_rng
        if not same_layout:
            del template["rng"]
    state = dist_checkpointing.load(template, str(src))
    trainer.model.module.load_state_dict(state["model"])
    if moments:
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.step(increment=0)  # the loaded param groups carry the old run's lr: this one's
    if not finetune:
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.step = int(state["step"])
        if same_layout:
            cpu_compat.set_rng_state(state["rng"])
    trainer.resumed_from = str(src)
    if dist.get_rank() == 0:
        log.info(
            "loaded %s (finetune=%s, optimizer=%s, step=%d, rng restored=%s)",
            src,
            finetune,
            not finetune or moments,
            trainer.step,
            same_layout and not finetune,
        )


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def param_digests(trainer: Trainer) -> list[str]:
    """SHA-256 of this rank's parameters, gathered from all ranks (bit-exact resume checks)."""
    h = hashlib.sha256()
    for name, p in sorted(trainer.model.module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, h.hexdigest())
    return [str(x) for x in out]


def open_tensorboard(cfg: RunConfig) -> Any:
    """A SummaryWriter on global rank 0, or None (no dir configured, or `tensorboard` missing)."""
    if not cfg.output.tensorboard_dir or dist.get_rank() != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard event files", stacklevel=2)
        return None
    return SummaryWriter(cfg.output.tensorboard_dir)


def write_metrics(
    trainer: Trainer,
    status: str,
    error: str | None = None,
    evaluation: dict[str, Any] | None = None,
    digests: list[str] | None = None,
) -> None:
    """The run's metrics JSON (rank 0; written atomically so a reader never sees half a file)."""
    path = trainer.cfg.output.metrics_path
    if not path or dist.get_rank() != 0:
        return
    steps = trainer.history
    metrics = {
        "name": trainer.cfg.name,
        "status": status,
        "error": error,
        "world_size": dist.get_world_size(),
        "tp": trainer.cfg.parallel.tp,
        "pp": trainer.cfg.parallel.pp,
        "dp": trainer.dp,
        "device": "cpu" if cpu_compat.on_cpu() else torch.cuda.get_device_name(),
        "resumed_from": trainer.resumed_from,
        "final_step": trainer.step,
        "final_loss": steps[-1]["loss"] if steps else None,
        "mean_tokens_per_s": sum(s["tokens_per_s"] for s in steps) / len(steps) if steps else None,
        "steps": steps,
        "checkpoints": trainer.checkpoints,
        "param_digests": digests,
        **(evaluation or {}),
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(p)


# ----------------------------------------------------------------------------------------------
# Main loop
# ----------------------------------------------------------------------------------------------
def train(cfg: RunConfig) -> Trainer:
    trainer = setup(cfg)
    tb = open_tensorboard(cfg)
    o, out, ck = cfg.optimizer, cfg.output, cfg.checkpoint
    rank0 = dist.get_rank() == 0
    if rank0:
        log.info(
            "run %s: world=%d tp=%d pp=%d dp=%d accumulation=%d steps %d..%d threads=%d",
            cfg.name,
            dist.get_world_size(),
            cfg.parallel.tp,
            cfg.parallel.pp,
            trainer.dp,
            trainer.accumulation,
            trainer.step + 1,
            cfg.stop_at_step or o.total_steps,
            torch.get_num_threads(),
        )
    evaluation = None
    stop = cfg.stop_at_step or o.total_steps  # a phase ends here; its schedule runs to total_steps
    try:
        while trainer.step < stop:
            rec = train_step(trainer)
            trainer.history.append(rec)
            if rank0 and trainer.step % out.log_interval == 0:
                log.info(
                    "step %d/%d loss %.4f lr %.3e grad_norm %.3f tokens/s %.0f%s%s",
                    rec["step"],
                    o.total_steps,
                    rec["loss"],
                    rec["lr"],
                    rec["grad_norm"],
                    rec["tokens_per_s"],
                    f" mfu {rec['mfu']:.1%}" if "mfu" in rec else "",
                    f" max_attn_logit {rec['max_attention_logit']:.2f}" if "max_attention_logit" in rec else "",
                )
            if tb is not None:
                for k, v in rec.items():
                    if k != "step":
                        tb.add_scalar(f"train/{k}", v, rec["step"])
            if out.eval_interval and trainer.step % out.eval_interval == 0 and trainer.step < stop:
                mid = evaluate(trainer, trainer.step // out.eval_interval)
                if rank0 and mid:
                    log.info(
                        "step %d valid loss %.4f ppl %.2f", trainer.step, mid["valid_loss"], mid["valid_perplexity"]
                    )
                    if tb is not None:
                        tb.add_scalar("valid/loss", mid["valid_loss"], trainer.step)
            if ck.save_dir and ck.save_interval and trainer.step % ck.save_interval == 0:
                save_checkpoint(trainer)
        if ck.save_dir and not (ck.save_interval and trainer.step % ck.save_interval == 0):
            save_checkpoint(trainer)  # always leave a checkpoint of the final step
        evaluation = evaluate(trainer)
        if rank0 and evaluation:
            log.info("valid loss %.4f perplexity %.2f", evaluation["valid_loss"], evaluation["valid_perplexity"])
        if evaluation and trainer.valid_by_source:
            evaluation["valid_by_source"] = evaluate_sources(trainer)
            if rank0:
                for name, v in evaluation["valid_by_source"].items():
                    log.info("valid %s: loss %.4f perplexity %.2f", name, v["loss"], v["perplexity"])
        write_metrics(trainer, "ok", evaluation=evaluation, digests=param_digests(trainer))
    except NonFiniteLossError as e:
        write_metrics(trainer, "failed", error=str(e))
        raise
    finally:
        if tb is not None:
            tb.close()
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", "--run", dest="run", required=True, help="run config JSON (phiflow.run_config.RunConfig)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # it logs every parameter at INFO
    cfg = RunConfig.load(args.run)
    try:
        train(cfg)
    except NonFiniteLossError as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # required: checkpoint saving spawns a helper process
    sys.exit(main())
