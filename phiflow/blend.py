"""The `blend` dataset's contract: where a recipe's blend is, and how its readers read it.

The mix stage (training/mix.py) commits `blend/recipe=<name>`: a blend JSON megatron's
BlendedMegatronDatasetBuilder takes, with each run's (weight, shard prefix) list and the mixture it came
from. Training, sweeps and `phiflow trace` read it through these functions; only the mix stage writes it,
with `mix_params` as its digest (how a reader tells a blend current for a recipe).
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from phiflow import run_config
from phiflow.manifest import Manifest
from phiflow.mixture import MixtureError

if TYPE_CHECKING:
    from phiflow.recipe import Recipe
    from phiflow.storage import Lake

DATASET = "blend"


def blend_partition(recipe: Recipe) -> dict[str, str]:
    return {"recipe": recipe.name}


def tokens_dataset(dataset: str) -> str:
    return f"tokens.{dataset}"


def shard_entries(lake: Lake, m: Manifest, kind: str = "part") -> tuple[tuple[str, int, int], ...]:
    """(absolute prefix, tokens, documents) of a committed tokens partition's shards of one kind (part | long)."""
    if not m.files:  # a partition of no documents (an empty synthetic output) has no shards
        return ()
    base = lake.partition_path(m.dataset, m.partition)
    attempt_dir = posixpath.dirname(m.files[0].path)
    return tuple((posixpath.join(base, attempt_dir, s["prefix"]), int(s["tokens"]), int(s["documents"]))
                 for s in m.counters["shard_list"] if s["kind"] == kind and s["tokens"] > 0)


def shard_prefixes(lake: Lake, m: Manifest, kind: str = "part") -> tuple[tuple[str, int], ...]:
    """(absolute prefix, tokens) of a committed tokens partition's shards of one kind (part | long)."""
    return tuple((p, t) for p, t, _ in shard_entries(lake, m, kind))



def source_names(blend: dict[str, Any], run: str) -> list[str]:
    """The mixture source of each entry of a run's blend: what training reports held-out loss by."""
    of = {p: s["name"] for s in blend[run]["mixture"]["sources"] for p, _ in s["shards"]}
    return [of[p] for _, p in blend[run]["blend"]]


def split_min_documents(split: str) -> int:
    """The fewest documents a shard needs so that every split with a weight holds one (the bounds
    megatron's builder computes: round(fraction x documents))."""
    weights = [float(w) for w in split.split(",")]
    bounds = [sum(weights[:i]) / sum(weights) for i in range(len(weights) + 1)]
    for n in range(1, 100_000):
        if all(round(bounds[i + 1] * n) > round(bounds[i] * n) for i, w in enumerate(weights) if w > 0):
            return n
    raise MixtureError(f"split {split} leaves a split empty for any shard size")


def mix_params(recipe: Recipe) -> dict[str, Any]:
    """What a recipe's blend is computed from (besides the tokens): the blend manifest's recipe digest."""
    assert recipe.mixture is not None
    params: dict[str, Any] = {"mixture": recipe.mixture.model_dump(mode="json"),
                              "pretrain_tokens": run_config.pretrain_tokens(recipe)}
    if recipe.training is not None:
        # shards smaller than the split needs are merged (Merger): the split decides the blend's shards
        params["merge_min_documents"] = split_min_documents(recipe.training.pretrain.split)
        phases = recipe.training.pretrain.phase_plan()
        if phases:  # (absent without phases: the digests of one-phase blends stay)
            params["phases"] = [vars(ph) for ph in phases]
        params["midtrain"] = {"tokens": run_config.midtrain_tokens(recipe),
                              **recipe.training.midtrain.model_dump(mode="json", include={"long_context_share",
                                                                                           "long_doc_tokens",
                                                                                           "long_context"})}
    return params


def load_blend(lake: Lake, m: Manifest) -> dict[str, Any]:
    """The blend JSON of a committed blend partition."""
    (path,) = [p for p in lake.data_files(m) if p.endswith("/blend.json")]
    with lake.fs.open(path, "rb") as f:
        return json.loads(f.read())
