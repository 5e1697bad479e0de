"""The benchmark files a recipe lists (`stages.decontaminate.benchmarks`): their rows, and the
multiple-choice items of those that declare `mc` fields.

The same small sets serve twice, as the report used its benchmarks: decontamination removes training
documents that overlap them, and the ablation evaluation scores each point on them by log-likelihood.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import fsspec

from phiflow.recipe import BenchmarkFile, Recipe


def read_rows(data: bytes, spec: BenchmarkFile) -> list[dict]:
    """The rows of one benchmark file (JSON lines or parquet)."""
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def load(recipe: Recipe, spec: BenchmarkFile) -> tuple[list[dict], str]:
    """(rows, sha256 of the file) of a benchmark the recipe lists."""
    with fsspec.open(recipe.resolve(spec.path), "rb") as fh:
        data = fh.read()
    return read_rows(data, spec), hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question: the right answer is `choices[answer]` as continuation of `context`."""

    benchmark: str
    id: str
    context: str
    choices: tuple[str, ...]
    answer: int


def mc_items(recipe: Recipe) -> tuple[list[MCItem], dict[str, str]]:
    """Every multiple-choice item of the benchmarks with `mc` fields, and each file's digest."""
    items, digests = [], {}
    for spec in recipe.stages.decontaminate.benchmarks:
        if spec.mc is None:
            continue
        rows, digests[spec.name] = load(recipe, spec)
        f = spec.mc
        for r in rows:
            missing = [k for k in (spec.id_field, f.context, f.choices, f.answer) if k not in r]
            if missing:
                raise ValueError(f"benchmark {spec.name}: item {r.get(spec.id_field)!r} lacks {missing}")
            choices, answer = tuple(str(c) for c in r[f.choices]), int(r[f.answer])
            if len(choices) < 2 or not 0 <= answer < len(choices):
                raise ValueError(f"benchmark {spec.name}: item {r[spec.id_field]!r} needs >= 2 choices and "
                                 f"an answer index among them, got {len(choices)} and {answer}")
            items.append(MCItem(spec.name, str(r[spec.id_field]), str(r[f.context]), choices, answer))
    return items, digests
