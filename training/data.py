"""Blended GPT datasets (megatron-core) from the run config's blend."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from phiflow.run_config import RunConfig
from training.cpu_compat import on_cpu

log = logging.getLogger("phiflow.training")


class TokenizerInfo:
    """What megatron's datasets need from a tokenizer: ids and a cache identity, no text handling.

    The data is already tokenized (``phiflow.records.indexed_writer``), so training never loads the real
    tokenizer; ``unique_identifiers`` keys megatron's index cache.
    """

    def __init__(self, vocab_size: int, eod: int, pad: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = -1 if pad is None else pad
        self.unique_identifiers: OrderedDict[str, Any] = OrderedDict(
            [("class", type(self).__name__), ("vocab_size", vocab_size), ("eod", eod), ("pad", self.pad)]
        )


def dataset_config(cfg: RunConfig, blend: list[tuple[float, str]] | None = None,
                   samples: int | None = None) -> GPTDatasetConfig:
    """GPT dataset config of the run's blend (or of `blend`, a part of it); on CPU the causal attention
    mask is materialized in each sample because megatron's default mask is built on "cuda"."""
    d = cfg.data
    blend = d.blend if blend is None else blend
    weights = [float(w) for w, _ in blend]
    prefixes = [p for _, p in blend]
    return GPTDatasetConfig(
        random_seed=d.seed,
        sequence_length=cfg.model.seq_length,
        blend=(prefixes, weights if len(prefixes) > 1 else None),
        split=d.split,
        path_to_cache=d.cache_dir,
        tokenizer=TokenizerInfo(cfg.model.vocab_size, d.eod_token_id, d.pad_token_id),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=on_cpu(),
        mid_level_dataset_surplus=surplus(weights, samples),
    )


SPLITS = ("train", "validation", "test")


def surplus(weights: list[float], samples: int | None) -> float:
    """Margin of samples megatron builds per dataset beyond its blend target. The blend's sampling
    rounds per dataset, a few samples off the target; 5% covers that for large runs, but a dataset
    drawn a dozen times (a small source of a short run) needs a few samples more than 5% of its own."""
    if not samples or not weights:
        return 0.05
    smallest = min(weights) / sum(weights) * samples
    return max(0.05, 4.0 / max(1.0, smallest))


def empty_splits(cfg: RunConfig, sizes: list[int], blend: list[tuple[float, str]] | None = None) -> list[str]:
    """The (prefix, split) pairs that would hold no token although the run draws samples from them.

    megatron-core's GPTDataset counts epochs by adding a split's tokens until the requested samples
    are covered: with none it never returns (a source of 3 documents and split 90,10,0 has an empty
    validation split). The split bounds are computed exactly as megatron's builder does."""
    config = dataset_config(cfg, blend)
    fractions = parse_and_normalize_split(cfg.data.split)
    bounds = [sum(fractions[:i]) for i in range(len(fractions) + 1)]
    problems = []
    for _, prefix in blend if blend is not None else cfg.data.blend:
        low = GPTDataset.build_low_level_dataset(prefix, config)
        n = GPTDataset.numel_low_level_dataset(low)
        for i, (name, size) in enumerate(zip(SPLITS, sizes, strict=True)):
            beg, end = round(bounds[i] * float(n)), round(bounds[i + 1] * float(n))
            if size > 0 and int(low.sequence_lengths[beg:end].sum()) == 0:
                problems.append(f"{prefix}: {n} documents, and split {cfg.data.split} leaves its {name} split "
                                f"{end - beg} documents with no token")
    return problems


def build_datasets(cfg: RunConfig, train_samples: int, valid_samples: int) -> tuple[Any, Any]:
    """Train and validation datasets sized for the run (every rank builds them; they are cheap)."""
    problems = empty_splits(cfg, [train_samples, valid_samples, 0])
    if problems:
        raise ValueError("data.blend: a source too small to split (more documents, or another data.split): "
                         + "; ".join(problems))
    builder = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True,
        dataset_config(cfg, samples=min(s for s in (train_samples, valid_samples) if s > 0))
    )
    train, valid, _ = builder.build()
    return train, valid


def source_valid_datasets(cfg: RunConfig, valid_samples: int) -> dict[str, Any]:
    """Per mixture source (`data.source_names`), the validation split of its own prefixes: the same
    held-out documents the blended validation set draws from, scored separately. A source whose
    split holds no document is left out (logged)."""
    groups: dict[str, list[tuple[float, str]]] = {}
    for name, entry in zip(cfg.data.source_names, cfg.data.blend, strict=True):
        groups.setdefault(name, []).append(entry)
    out = {}
    for name, blend in groups.items():
        problems = empty_splits(cfg, [1, valid_samples, 0], blend)
        if problems:
            log.warning("source %s: no held-out split to evaluate (%s)", name, "; ".join(problems))
            continue
        try:
            _, valid, _ = BlendedMegatronDatasetBuilder(
                GPTDataset, [1, valid_samples, 0], lambda: True, dataset_config(cfg, blend, samples=valid_samples)
            ).build()
        except (AssertionError, ValueError, IndexError) as e:  # megatron's complaint about an empty split
            log.warning("source %s: no held-out split to evaluate (%s)", name, e)
            continue
        if valid is not None:
            out[name] = valid
    return out


def batches(dataset: Any, micro_batch_size: int, start_sample: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Micro batches for this data-parallel rank, starting at global sample ``start_sample``.

    Micro batch ``m`` of dp rank ``r`` holds samples ``start + (m * dp + r) * micro_batch_size`` onward,
    so step ``k`` always reads samples ``[k * global_batch, (k + 1) * global_batch)``: a resumed run
    reads exactly what the uninterrupted run would have. TP/PP peers of a rank read the same samples.
    """
    dp_rank = parallel_state.get_data_parallel_rank()
    dp = parallel_state.get_data_parallel_world_size()
    index = start_sample + dp_rank * micro_batch_size
    while True:
        samples = [dataset[(index + j) % len(dataset)] for j in range(micro_batch_size)]
        # a blend of several prefixes adds a numpy `dataset_id` per sample: as_tensor takes both
        yield {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}
        index += micro_batch_size * dp
