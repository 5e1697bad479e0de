"""Attention-logit probe: the largest pre-softmax attention score per training step.

Growing attention logits are an early sign of a run becoming unstable (the Phi-4 report stress-tested
its warmup settings for this; "attention logit growth" is the classic failure of a too-high learning
rate). The probe puts a forward *pre*-hook on the ``core_attention`` submodule of every attention layer
of a megatron-core model. megatron calls it as ``core_attention(query, key, value, attention_mask,
attn_mask_type=..., ...)`` (megatron-core 0.16, ``transformer/attention.py``): query ``[sq, b, np, hn]``
and key ``[sk, b, ng, hn]`` (``ng < np`` with grouped-query attention) arrive positionally; the hook
also accepts them as keywords. It computes, under ``torch.no_grad``,

    max over layers, heads, positions of  (q . k) * softmax_scale      (softmax_scale = 1/sqrt(hn))

over the positions the softmax sees: the causal triangle for a causal layer, or the positions an
explicit boolean mask (True = masked out) leaves. Only the first training micro batch of each step is
measured per layer (a layer that already recorded since the last :meth:`AttentionProbe.take` is
skipped) and nothing is recorded in eval mode, so evaluation passes do not leak into the training
curve. Cost: one ``[b, np, sq, sk]`` score tensor per layer per step.

Each rank sees only its own layers (PP) and heads (TP): :meth:`AttentionProbe.take_global` reduces MAX
over all ranks (a collective: every rank must call it at the same point). A NaN anywhere wins.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["AttentionProbe", "all_reduce_max", "core_attention_modules"]


def core_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``core_attention`` submodules of the model's attention layers (DDP wrapper or not)."""
    found = []
    for module in model.modules():
        core = getattr(module, "core_attention", None)
        if isinstance(core, torch.nn.Module):
            found.append(core)
    return found


def _scale(core: torch.nn.Module, head_dim: int) -> float:
    """The factor megatron applies to q.k before the softmax (DotProductAttention divides its
    ``softmax_scale`` by the layer number under query-key layer scaling and the softmax multiplies it
    back)."""
    scale = getattr(core, "softmax_scale", None)
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    config = getattr(core, "config", None)
    if getattr(config, "apply_query_key_layer_scaling", False):
        scale *= getattr(core, "layer_number", 1)
    return float(scale)


def max_logit(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    causal: bool,
    attention_mask: torch.Tensor | None = None,
) -> float:
    """Largest ``scale * q.k`` of query ``[sq, b, np, hn]`` and key ``[sk, b, ng, hn]`` over the
    unmasked positions."""
    with torch.no_grad():
        q, k = query.detach().float(), key.detach().float()
        n_heads, n_groups = q.shape[2], k.shape[2]
        if n_heads != n_groups:
            k = k.repeat_interleave(n_heads // n_groups, dim=2)
        scores = torch.einsum("sbnh,tbnh->bnst", q, k) * scale  # [b, np, sq, sk]
        masked = None
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            masked = attention_mask
        elif causal and scores.shape[-2] == scores.shape[-1]:
            sq = scores.shape[-1]
            masked = torch.ones(sq, sq, dtype=torch.bool, device=scores.device).triu(1)
        if masked is not None:
            scores = scores.masked_fill(masked, float("-inf"))
        if torch.isnan(scores).any():
            return float("nan")
        return float(scores.max())


class AttentionProbe:
    """Forward pre-hooks on a model's core attention modules recording the max attention logit.

    ``take()`` returns this rank's maximum since the last call (None when no layer ran in training
    mode) and resets it; ``take_global()`` is the MAX over all ranks; ``close()`` removes the hooks.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = core_attention_modules(model)
        self._max: float | None = None
        self._seen: set[int] = set()  # layers measured since the last take()
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.training or id(module) in self._seen:
            return
        names = ("query", "key", "value", "attention_mask")
        given = dict(zip(names, args, strict=False))
        given.update({k: v for k, v in kwargs.items() if k in names})
        query, key = given.get("query"), given.get("key")
        if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor)):
            return
        if query.dim() != 4 or key.dim() != 4:  # packed (thd) sequences: not measured
            return
        self._seen.add(id(module))
        mask_type = kwargs.get("attn_mask_type") or getattr(module, "attn_mask_type", None)
        causal = getattr(mask_type, "name", "") == "causal"
        mask = given.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) else None
        value = max_logit(query, key, _scale(module, query.shape[-1]), causal, mask)
        if self._max is None or math.isnan(value) or (not math.isnan(self._max) and value > self._max):
            self._max = value  # a NaN, once seen, stays

    def take(self) -> float | None:
        """This rank's max attention logit since the last call, then reset."""
        value, self._max = self._max, None
        self._seen.clear()
        return value

    def take_global(self, group: Any = None) -> float | None:
        """MAX of :meth:`take` over all ranks of ``group`` (collective); None when no rank recorded."""
        return all_reduce_max(self.take(), group)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def all_reduce_max(value: float | None, group: Any = None) -> float | None:
    """MAX of a per-rank float over the process group; a NaN on any rank gives NaN, None (no value)
    on every rank gives None. Without an initialized process group, the value itself."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    nan = value is not None and math.isnan(value)
    local = -math.inf if value is None or nan else value
    acc = torch.tensor([local, 1.0 if nan else 0.0, 0.0 if value is None else 1.0], dtype=torch.float64)
    if dist.get_backend(group) == "nccl":
        acc = acc.cuda()
    dist.all_reduce(acc, op=dist.ReduceOp.MAX, group=group)
    if acc[2] == 0:
        return None
    if acc[1] > 0:
        return float("nan")
    return float(acc[0])
