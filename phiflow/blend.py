"""The `blend` dataset's contract: where a recipe's blend is, and how its readers read it.

The mix stage (training/mix.py) commits `blend/recipe=<name>`: a blend JSON megatron's
BlendedMegatronDatasetBuilder takes, with each run's (weight, shard prefix) list and the mixture it came
from. Training, sweeps and `phiflow trace` read it through these functions; only the mix stage writes it.
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from phiflow.manifest import Manifest

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


def load_blend(lake: Lake, m: Manifest) -> dict[str, Any]:
    """The blend JSON of a committed blend partition."""
    (path,) = [p for p in lake.data_files(m) if p.endswith("/blend.json")]
    with lake.fs.open(path, "rb") as f:
        return json.loads(f.read())
