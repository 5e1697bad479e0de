"""The recipe's tokenizer as a lake artifact: resolved once, pinned by digest in every tokens manifest.

`hf` and `tiktoken` tokenizers are files named by the recipe. The offline default (`offline_bpe`)
trains a byte-level BPE on a seeded sample of the mixture's committed text the first time it is
needed and stores it under `<lake>/_artifacts/tokenizer/<spec digest>/`; later calls load that file,
so every partition tokenized under one recipe uses the same vocabulary even as the lake grows.
Executors receive the tokenizer's bytes and rebuild it locally (no shared filesystem needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phiflow.records.tokenizer import Tokenizer, load_tokenizer, train_bpe

if TYPE_CHECKING:
    from phiflow.recipe import Recipe
    from phiflow.storage import Lake

ARTIFACTS = "_artifacts/tokenizer"
SUFFIX = {"hf": ".json", "offline_bpe": ".json", "tiktoken": ".tiktoken"}


@dataclass(frozen=True)
class TokenizerArtifact:
    kind: str
    data: bytes  # the tokenizer file's content
    digest: str  # sha256 of data
    location: str  # where it lives (a recipe path or the lake artifact)

    def load(self) -> Tokenizer:
        """Rebuild the tokenizer from its bytes (on an executor, in a temp file)."""
        return _load_cached(self.kind, self.digest, self.data)

    def describe(self) -> dict[str, object]:
        tok = self.load()
        return {"kind": self.kind, "digest": self.digest, "location": self.location,
                "vocab_size": tok.vocab_size, "eod": tok.eod, "name": tok.name}


_CACHE: dict[str, Tokenizer] = {}


def _load_cached(kind: str, digest: str, data: bytes) -> Tokenizer:
    if digest not in _CACHE:
        folder = Path(tempfile.gettempdir()) / "phiflow-tokenizers"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest[:16]}{SUFFIX[kind]}"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        _CACHE[digest] = load_tokenizer(path)
    return _CACHE[digest]


def _spec_digest(recipe: Recipe) -> str:
    body = {"tokenizer": recipe.tokenizer.model_dump(mode="json"),
            "text_column": recipe.stages.tokenize.text_column,
            "datasets": recipe.mixture.datasets if recipe.mixture else []}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def artifact_dir(recipe: Recipe, lake: Lake) -> str:
    return posixpath.join(lake.root, ARTIFACTS, _spec_digest(recipe)[:16])


def resolve_tokenizer(recipe: Recipe, lake: Lake, sample_datasets: list[str] | None = None) -> TokenizerArtifact:
    """The recipe's tokenizer; trains and stores the offline BPE the first time.

    ``sample_datasets`` (default: the mixture's datasets) are the text the offline BPE trains on.
    """
    spec = recipe.tokenizer
    if spec.kind != "offline_bpe":
        path = recipe.resolve(spec.path or "")
        data = Path(path).read_bytes()
        return TokenizerArtifact(spec.kind, data, hashlib.sha256(data).hexdigest(), path)
    folder = artifact_dir(recipe, lake)
    target = posixpath.join(folder, "tokenizer.json")
    if not lake.fs.exists(target):
        datasets = sample_datasets or (recipe.mixture.datasets if recipe.mixture else [])
        texts, sources = sample_texts(recipe, lake, datasets)
        if not texts:
            raise FileNotFoundError(f"no committed text in {datasets} to train the tokenizer on")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "tokenizer.json"
            train_bpe(texts, spec.vocab_size, local, min_frequency=spec.min_frequency)
            data = local.read_bytes()
        meta = {"spec": spec.model_dump(mode="json"), "sha256": hashlib.sha256(data).hexdigest(),
                "documents": len(texts), "trained_on": sources}
        lake.fs.makedirs(folder, exist_ok=True)
        lake.fs.pipe_file(posixpath.join(folder, "tokenizer.meta.json"), json.dumps(meta, indent=2).encode())
        if not lake.fs.exists(target):  # a concurrent first run may have stored one meanwhile: keep it
            lake.fs.pipe_file(target, data)
    data = lake.fs.cat_file(target)
    return TokenizerArtifact("offline_bpe", data, hashlib.sha256(data).hexdigest(), lake.uri(target))


def trained_on(recipe: Recipe, lake: Lake) -> list[dict[str, str]]:
    """The committed partitions (dataset, partition key, digest) the offline BPE was trained on, from its
    meta file; empty for a tokenizer the recipe names by path."""
    meta = posixpath.join(artifact_dir(recipe, lake), "tokenizer.meta.json")
    if recipe.tokenizer.kind != "offline_bpe" or not lake.fs.exists(meta):
        return []
    return list(json.loads(lake.fs.cat_file(meta))["trained_on"])


def sample_texts(recipe: Recipe, lake: Lake, datasets: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """A seeded sample of ``sample_docs`` documents, chosen by hash of doc_id: the same documents
    whatever the partitioning, in a fixed order (BPE training is order-sensitive on ties)."""
    spec, column = recipe.tokenizer, recipe.stages.tokenize.text_column
    scored: list[tuple[str, str]] = []
    sources = []
    for dataset in datasets:
        for m in lake.partitions(dataset):
            table = lake.read_table(m, columns=["doc_id", column])
            for doc_id, text in zip(table.column("doc_id").to_pylist(), table.column(column).to_pylist(), strict=True):
                if text:
                    scored.append((hashlib.sha256(f"{spec.seed}:{doc_id}".encode()).hexdigest(), text))
            sources.append({"dataset": m.dataset, "partition": m.key, "digest": m.digest})
            scored = sorted(scored)[: spec.sample_docs]
    return [t for _, t in scored], sources


def long_doc_tokens(recipe: Recipe) -> int:
    """Threshold for the long-context shards: the recipe's midtraining setting (none without training)."""
    return recipe.training.midtrain.long_doc_tokens if recipe.training is not None else 2**62


def tokenize_params(recipe: Recipe, artifact: TokenizerArtifact) -> dict[str, object]:
    """What determines a tokens partition besides its input: stage params, tokenizer digest, threshold.
    Its hash is the partition's recipe digest, so a consumer can tell a stale partition without Spark."""
    tok = artifact.describe()
    return {**recipe.stages.tokenize.model_dump(mode="json"), "long_doc_tokens": long_doc_tokens(recipe),
            "tokenizer": {k: tok[k] for k in ("kind", "digest", "vocab_size", "eod", "name")}}
