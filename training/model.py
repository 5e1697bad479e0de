"""GPT model construction from a :class:`RunConfig` (megatron-core local spec, RoPE)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

from phiflow.run_config import RunConfig
from training.cpu_compat import on_cpu
from training.megatron_config import transformer_config


def build_model(cfg: RunConfig) -> GPTModel:
    """The pipeline stage of this rank: embedding on the first stage, output layer on the last."""
    m = cfg.model
    model = GPTModel(
        config=transformer_config(cfg),
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=m.padded_vocab_size(cfg.parallel.tp),
        max_sequence_length=m.max_position_embeddings or m.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not m.untie_embeddings,
        position_embedding_type="rope",
        rotary_base=m.rotary_base,
    )
    if not on_cpu():
        model.cuda(torch.cuda.current_device())
    return model


def num_parameters(cfg: RunConfig) -> int:
    """Parameters of the full (unsharded) model, for FLOP and MFU estimates."""
    m = cfg.model
    h, f, layers, v = m.hidden_size, m.ffn, m.num_layers, m.padded_vocab_size()
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # attention, mlp, 2 layernorms
    embed = v * h * (2 if m.untie_embeddings else 1)
    return layers * per_layer + embed + 2 * h


def flops_per_token(cfg: RunConfig) -> float:
    """Training FLOPs per token: 6N for the matmuls plus the attention score term
    (12 * layers * hidden * seq, as in the PaLM appendix); used for MFU."""
    m = cfg.model
    # The input embedding is a lookup, not a matmul; a tied output layer still is one.
    matmul_params = num_parameters(cfg) - (m.padded_vocab_size() * m.hidden_size if m.untie_embeddings else 0)
    return 6.0 * matmul_params + 12.0 * m.num_layers * m.hidden_size * m.seq_length
