"""The mix stage: `tokens.*` manifests + the recipe's `mixture:` -> one committed `blend` partition.

In-process stage (no Spark, no torch; MixOperator runs it in the Airflow worker): the arithmetic is
phiflow.mixture, the blend's layout and readers phiflow.blend. It reads only committed, current tokens
partitions (each pinned to the digest of the input partition it was built from), computes the
pretraining mixture (shares of training tokens -> epochs per source, refused beyond `max_epochs`)
and the midtraining mixture (long-context share from the `long-*` shards, the rest replayed), and
writes the blend JSON megatron's BlendedMegatronDatasetBuilder takes, a table (CSV, markdown) and a
plot. Same tokens and recipe -> nothing to do.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from phiflow import run_config
from phiflow.blend import (
    DATASET,
    blend_partition,
    mix_params,
    shard_entries,
    split_min_documents,
    tokens_dataset,
)
from phiflow.commit import commit_files, up_to_date
from phiflow.manifest import InputRef, Manifest, sha256_json
from phiflow.mixture import (
    Mixture,
    MixtureError,
    SourceAllocation,
    SourceSpec,
    compute_mixture,
    midtraining_mixture,
)
from phiflow.recipe import MixtureSource, Recipe
from phiflow.records.indexed_writer import IndexedWriter, read_sidecar
from phiflow.schema import BLEND_SOURCES
from phiflow.storage import Lake

STAGE = "mix"


@dataclass(frozen=True)
class Merger:
    """Writes one shard out of a group's small shards: training splits every shard into train and
    validation by documents, and a partition of a few synthetic documents has no held-out part alone."""

    subsample: Subsampler
    folder: str
    min_documents: int
    vocab_size: int
    eod: int

    def __call__(self, name: str, entries: Sequence[tuple[str, int, int]]) -> tuple[tuple[str, int], ...]:
        shards = tuple((p, t) for p, t, _ in entries)
        if len(entries) < 2 or min(d for _, _, d in entries) >= self.min_documents:
            return shards
        tokens = sum(t for _, t in shards)
        out = self.subsample(shards, tokens, posixpath.join(self.folder, f"merged-{name.replace(':', '-')}"),
                             self.vocab_size, self.eod)
        print(f"[phiflow] {STAGE}: {name}: {len(entries)} shards of which some hold fewer than "
              f"{self.min_documents} documents, merged into one ({out[1]} tokens)")
        return (out,)


@dataclass
class TokenSources:
    """Current tokens partitions per mixture source, and the tokenizer they share."""

    manifests: dict[str, list[Manifest]]
    tokenizer: dict[str, Any]


def current_tokens(recipe: Recipe, lake: Lake) -> TokenSources:
    """Every committed input partition of the mixture's datasets must have a current tokens partition."""
    if recipe.mixture is None:
        raise MixtureError(f"recipe {recipe.name} has no mixture section")
    out: dict[str, list[Manifest]] = {}
    tokenizers: dict[str, dict[str, Any]] = {}
    groups = [(s.name, s) for s in recipe.mixture.sources]
    groups += [(f"long_context:{s.name}", s) for s in long_context_groups(recipe)]
    for key, src in groups:
        out[key] = []
        for dataset in src.datasets:
            inputs = list(lake.partitions(dataset))
            if not inputs:
                raise MixtureError(f"mixture source {src.name!r}: dataset {dataset} has no committed partition")
            for m_in in inputs:
                t = lake.manifest(tokens_dataset(dataset), m_in.partition)
                if t is None or [i.digest for i in t.inputs] != [m_in.digest]:
                    state = "missing" if t is None else "stale (built from another version of the input)"
                    raise MixtureError(f"mixture source {src.name!r}: {tokens_dataset(dataset)}/{m_in.key} is "
                                       f"{state}; run tokenize first")
                tokenizers[t.params["tokenizer"]["digest"]] = t.params["tokenizer"]
                out[key].append(t)
    if len(tokenizers) != 1:
        raise MixtureError(f"tokens partitions were written with {len(tokenizers)} different tokenizers; "
                           "re-tokenize so they share one")
    return TokenSources(out, next(iter(tokenizers.values())))


# (shards, target tokens, output prefix, vocab size, eod) -> (prefix, tokens) of a fixed subsample
# (`subsample` below; the tests hand in their own to count calls).
Subsampler = Callable[[Sequence[tuple[str, int]], int, str, int, int], tuple[str, int]]


def subsample(
    shards: Sequence[tuple[str, int]], target_tokens: int, out_prefix: str | os.PathLike[str], vocab_size: int,
    eod: int, seed: int = 0,
) -> tuple[str, int]:
    """A fixed subsample of whole documents of indexed datasets, drawn in a seeded order until it holds
    `target_tokens` tokens (end-of-document tokens included), written as one indexed dataset sorted by
    doc id (same shards, target and seed: same bytes). Returns (prefix, tokens)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    order = [(p, r["sequence"], r["doc_id"], r["num_tokens"])
             for p, _ in shards for r in read_sidecar(p).to_pylist()]
    random.Random(seed).shuffle(order)
    taken, total = [], 0
    for entry in order:
        if total >= target_tokens:
            break
        taken.append(entry)
        total += entry[3]
    w = IndexedWriter(out_prefix, vocab_size, eod)
    readers: dict[str, Any] = {}
    for prefix, seq, doc_id, _ in sorted(taken, key=lambda e: e[2]):
        ds = readers.setdefault(prefix, IndexedDataset(prefix))
        w.add_documents([ds[seq][:-1].tolist()], [doc_id])  # the writer appends the end-of-document again
    stats = w.close()
    return stats.prefix, stats.tokens


def source_specs(recipe: Recipe, lake: Lake, tokens: TokenSources, kind: str,
                 subsample: Subsampler | None = None, folder: str | None = None,
                 merge: Merger | None = None) -> list[SourceSpec]:
    """Each mixture source's shards of one kind; a pretraining source with `subsample_tokens` gets one
    shard holding that fixed subsample, written into the blend's attempt `folder`; small shards are
    merged by `merge`."""
    specs = []
    assert recipe.mixture is not None
    for src in recipe.mixture.sources:
        entries = tuple(e for m in tokens.manifests[src.name] for e in shard_entries(lake, m, kind))
        shards = merge(f"{kind}:{src.name}", entries) if merge else tuple((p, t) for p, t, _ in entries)
        unique = sum(t for _, t in shards)
        if kind == "part" and src.subsample_tokens is not None and src.subsample_tokens < unique:
            if subsample is None or folder is None:
                raise MixtureError(f"source {src.name!r}: subsample_tokens needs a subsampler (MixOperator has one)")
            shards = (subsample(shards, src.subsample_tokens, posixpath.join(folder, f"subsample-{src.name}"),
                                int(tokens.tokenizer["vocab_size"]), int(tokens.tokenizer["eod"])),)
            print(f"[phiflow] {STAGE}: {src.name}: a fixed subsample of {shards[0][1]} of its {unique} unique tokens")
        specs.append(SourceSpec(src.name, src.share, sum(t for _, t in shards), src.max_epochs, shards))
    return specs


def long_context_groups(recipe: Recipe) -> list[MixtureSource]:
    return list(recipe.training.midtrain.long_context) if recipe.training is not None else []


def long_context_specs(recipe: Recipe, lake: Lake, tokens: TokenSources, merge: Merger | None = None
                       ) -> list[SourceSpec]:
    """Midtraining's long-context part: the declared long-context groups (every document of their
    datasets: books, concatenated repositories, synthetic long-context QA) at their shares, and the
    rest of the part from the pretraining sources' documents longer than `long_doc_tokens`, split by
    their mixture shares. A part nobody fills goes to the others (printed)."""
    assert recipe.training is not None
    mid = recipe.training.midtrain
    groups = []
    for g in mid.long_context:
        entries = tuple(e for m in tokens.manifests[f"long_context:{g.name}"] for e in shard_entries(lake, m, "part"))
        shards = merge(f"long_context:{g.name}", entries) if merge else tuple((p, t) for p, t, _ in entries)
        if sum(t for _, t in shards) > 0 and g.share > 0:
            unique = sum(t for _, t in shards)
            groups.append(SourceSpec(f"long_context:{g.name}", g.share, unique, g.max_epochs, shards))
    organic = [s for s in source_specs(recipe, lake, tokens, "long", merge=merge)
               if s.unique_tokens > 0 and s.share > 0]
    rest = max(0.0, 1.0 - sum(g.share for g in groups))
    if organic and rest > 0:
        weight = sum(s.share for s in organic)
        organic = [SourceSpec(f"long:{s.name}", rest * s.share / weight, s.unique_tokens, s.max_epochs, s.shards)
                   for s in organic]
    else:
        if rest > 0 and groups:
            print(f"[phiflow] {STAGE}: no pretraining document is longer than {mid.long_doc_tokens} tokens: "
                  f"the long-context groups take the whole long-context part")
        organic = []
    specs = organic + groups
    if not specs:
        raise MixtureError(f"midtrain mixture: no document is longer than training.midtrain.long_doc_tokens="
                           f"{mid.long_doc_tokens} tokens in any mixture source, and no long_context group has tokens")
    weight = sum(s.share for s in specs)
    return [SourceSpec(s.name, s.share / weight, s.unique_tokens, s.max_epochs, s.shards) for s in specs]


def compute_blends(recipe: Recipe, lake: Lake, tokens: TokenSources, subsample: Subsampler | None = None,
                   folder: str | None = None) -> dict[str, Mixture]:
    """Pretraining and midtraining mixtures; MixtureError names the run and the source."""
    merge = None
    if subsample is not None and folder is not None and recipe.training is not None:
        merge = Merger(subsample, folder, split_min_documents(recipe.training.pretrain.split),
                       int(tokens.tokenizer["vocab_size"]), int(tokens.tokenizer["eod"]))
    pre_specs = source_specs(recipe, lake, tokens, "part", subsample, folder, merge)
    out = phase_blends(recipe, pre_specs) if recipe.training is not None else {}
    if not out:
        try:
            out["pretrain"] = compute_mixture(pre_specs, run_config.pretrain_tokens(recipe))
        except MixtureError as e:
            raise MixtureError(f"pretrain mixture: {e}") from None
    if recipe.training is None:
        return out
    long_specs = long_context_specs(recipe, lake, tokens, merge)
    try:
        out["midtrain"] = midtraining_mixture(pre_specs, long_specs, run_config.midtrain_tokens(recipe),
                                              recipe.training.midtrain.long_context_share)
    except MixtureError as e:
        raise MixtureError(f"midtrain mixture: {e}") from None
    return out


def phase_blends(recipe: Recipe, specs: list[SourceSpec]) -> dict[str, Mixture]:
    """One mixture per pretraining phase (its shares over the same sources, its tokens), then `pretrain`:
    the whole run, the phases summed per source, where `max_epochs` is held (a source may be repeated
    that often over the run, not per phase). No phases: nothing."""
    assert recipe.training is not None
    out = {}
    for ph in recipe.training.pretrain.phase_plan():
        try:
            out[ph.run] = compute_mixture([replace(s, share=ph.shares.get(s.name, 0.0)) for s in specs], ph.tokens)
        except MixtureError as e:
            raise MixtureError(f"pretrain phase {ph.name}: {e}") from None
    if not out:
        return out
    total = sum(m.total_tokens for m in out.values())
    whole = []
    for s in specs:
        tokens = sum(m.by_name(s.name).tokens for m in out.values())
        epochs = tokens / s.unique_tokens if s.unique_tokens else 0.0
        if s.max_epochs is not None and epochs > s.max_epochs * (1 + 1e-6):
            raise MixtureError(f"pretrain (all phases): source {s.name!r}: {epochs:.2f} epochs over the run exceeds "
                               f"max_epochs={s.max_epochs:g} ({tokens} tokens, {s.unique_tokens} unique)")
        whole.append(SourceAllocation(s.name, tokens / total, s.unique_tokens, tokens, epochs, s.max_epochs, s.shards))
    out["pretrain"] = Mixture(total, tuple(whole))
    return out


def table_rows(blends: dict[str, Mixture]) -> list[dict[str, Any]]:
    return [{"run": run, "source": s.name, "share": s.share, "unique_tokens": s.unique_tokens, "tokens": s.tokens,
             "epochs": round(s.epochs, 4), "max_epochs": s.max_epochs, "shards": len(s.shards)}
            for run, mix in blends.items() for s in mix.sources]


def markdown(recipe: Recipe, blends: dict[str, Mixture], tokenizer: dict[str, Any]) -> str:
    """The blend's report: one Table-5-like table per run, with the report's figures where the recipe has them."""
    assert recipe.mixture is not None
    reported = {s.name: s.report_unique_tokens for s in recipe.mixture.sources}
    lines = [f"# Blend of recipe `{recipe.name}`", "",
             f"Tokenizer `{tokenizer['name']}` ({tokenizer['kind']}, vocabulary {tokenizer['vocab_size']}, "
             f"digest `{tokenizer['digest'][:12]}`).", ""]
    for run, mix in blends.items():
        phased = run == "pretrain" and any(r.startswith("pretrain.") for r in blends)
        title = "pretrain, the whole run (its phases summed)" if phased else run
        lines += [f"## {title}: {mix.total_tokens:,} training tokens", "",
                  "| source | share | unique tokens | tokens | epochs | max epochs | shards | report's unique tokens |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s in mix.sources:
            rep = reported.get(s.name.removeprefix("replay:"))
            lines.append(f"| {s.name} | {s.share:.1%} | {s.unique_tokens:,} | {s.tokens:,} | {s.epochs:.2f} | "
                         f"{'-' if s.max_epochs is None else f'{s.max_epochs:g}'} | {len(s.shards)} | "
                         f"{'-' if rep is None else f'{rep:,}'} |")
        lines.append("")
    return "\n".join(lines)


def plot(blends: dict[str, Mixture], path: str, lake: Lake) -> bool:
    """Shares, unique tokens and epochs per source and run as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(blends), 3, figsize=(13, 3.2 * len(blends)), squeeze=False)
    for row, (run, mix) in zip(axes, blends.items(), strict=True):
        names = [s.name for s in mix.sources]
        for ax, values, title in (
            (row[0], [s.share * 100 for s in mix.sources], f"{run}: share of training tokens (%)"),
            (row[1], [s.unique_tokens for s in mix.sources], f"{run}: unique tokens"),
            (row[2], [s.epochs for s in mix.sources], f"{run}: epochs"),
        ):
            ax.barh(names, values, color="#4c72b0")
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.invert_yaxis()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)
    lake.fs.pipe_file(path, buf.getvalue())
    return True


def run(recipe: Recipe, lake: Lake, airflow: dict[str, Any] | None = None,
        subsample: Subsampler | None = None) -> Manifest:
    """Commit `blend/recipe=<name>`, or return the committed one when tokens and recipe are unchanged."""
    started = time.time()
    tokens = current_tokens(recipe, lake)
    inputs: list[InputRef] = [m.input_ref() for ms in tokens.manifests.values() for m in ms]
    params = mix_params(recipe)
    digest = sha256_json(params)
    part = blend_partition(recipe)
    done = up_to_date(lake, DATASET, part, inputs, digest)
    if done is not None:
        print(f"[phiflow] {STAGE}: {DATASET}/{done.key} is current (digest {done.digest[:16]}), nothing to do")
        return done
    attempt = lake.new_attempt(DATASET, part)
    folder = lake.attempt_path(DATASET, part, attempt)
    try:
        blends = compute_blends(recipe, lake, tokens, subsample, folder)
    except MixtureError:
        lake.discard_attempt(DATASET, part, attempt)  # an infeasible mixture leaves no orphan folder behind
        raise
    rows = table_rows(blends)
    body = {"recipe": recipe.name, "tokenizer": tokens.tokenizer,
            **{run: {"blend": [[w, p] for w, p in mix.blend()], "mixture": mix.to_dict()}
               for run, mix in blends.items()}}
    lake.fs.pipe_file(posixpath.join(folder, "blend.json"), json.dumps(body, indent=2).encode())
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=BLEND_SOURCES.names, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    lake.fs.pipe_file(posixpath.join(folder, "blend.csv"), out.getvalue().encode())
    report = markdown(recipe, blends, tokens.tokenizer)
    lake.fs.pipe_file(posixpath.join(folder, "blend.md"), report.encode())
    plotted = plot(blends, posixpath.join(folder, "blend.png"), lake)
    m = commit_files(
        lake, dataset=DATASET, partition=part, attempt=attempt, stage=STAGE, schema=BLEND_SOURCES,
        row_count=len(rows), content={"blend": body, "rows": rows}, inputs=inputs, recipe_digest=digest,
        params=params, airflow=airflow, started=started,
        counters={"read": sum(len(ms) for ms in tokens.manifests.values()), "plot": plotted,
                  **{f"{run}_tokens": mix.total_tokens for run, mix in blends.items()},
                  "epochs": {f"{r['run']}:{r['source']}": r["epochs"] for r in rows},
                  "sources": rows},  # what the dashboard's Mixture panel shows
    )
    print(report)
    return m
