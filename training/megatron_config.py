"""The run config (phiflow.run_config) as megatron-core's config objects: the one translation.

bf16 on GPU; fp32 with CPU initialization on CPU. The distributed optimizer only on GPU (its
checkpoints fail on CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer import TransformerConfig

from phiflow.run_config import RunConfig
from training.cpu_compat import on_cpu


def transformer_config(cfg: RunConfig) -> TransformerConfig:
    """CPU initialization builds each weight whole from the default generator and then splits it over TP
    ranks, so a TP=2 model starts from the same weights as TP=1 (what the parity test relies on)."""
    m, par = cfg.model, cfg.parallel
    cpu = on_cpu()
    dtype = torch.float32 if cpu else torch.bfloat16
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=not cpu,
        use_cpu_initialization=cpu,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std,
        # No fused kernels without Transformer Engine / Apex.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )


def distributed_optimizer(cfg: RunConfig) -> bool:
    return cfg.optimizer.distributed_optimizer and not on_cpu()


def ddp_config(cfg: RunConfig) -> DistributedDataParallelConfig:
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=distributed_optimizer(cfg)
    )


def optimizer_config(cfg: RunConfig, params_dtype: torch.dtype) -> OptimizerConfig:
    o = cfg.optimizer
    return OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=not on_cpu(),
        params_dtype=params_dtype,
        use_distributed_optimizer=distributed_optimizer(cfg),
    )


def lr_scheduler(cfg: RunConfig, optimizer: Any) -> OptimizerParamScheduler:
    """Linear warmup, then linear decay to min_lr at total_steps; steps are optimizer steps (increment 1)."""
    o = cfg.optimizer
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_steps,
        lr_decay_steps=o.total_steps,
        lr_decay_style="linear",
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=o.total_steps,
        wd_incr_style="constant",
    )
