"""Shared fixtures: real text from disk, a BPE trained on it, an indexed dataset, a tiny run config."""

from __future__ import annotations

import glob
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phiflow.recipe import ParallelSpec
from phiflow.run_config import BatchConfig, DataConfig, RunConfig, RunModel, RunOptimizer

VOCAB = 512
SEQ = 64


def real_texts(limit: int = 1500) -> list[str]:
    """Paragraphs of the licence texts on this machine, then stdlib docstrings: real English prose."""
    texts: list[str] = []
    for f in sorted(glob.glob("/usr/share/common-licenses/*")):
        p = Path(f)
        if p.is_file():
            texts += [t.strip() for t in p.read_text(errors="ignore").split("\n\n") if len(t.strip()) > 40]
    if len(texts) < limit:
        import collections
        import json as _json
        import pathlib

        for mod in (collections, _json, pathlib, inspect, glob):
            for _, obj in inspect.getmembers(mod):
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 40:
                    texts.append(doc)
    return list(dict.fromkeys(texts))[:limit]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    texts = real_texts()
    assert len(texts) > 500
    return texts


@pytest.fixture(scope="session")
def tokenizer(corpus: list[str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from phiflow.records.tokenizer import train_bpe

    return train_bpe(corpus, VOCAB, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def data_prefix(corpus: list[str], tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    from phiflow.records.indexed_writer import tokenize_to_indexed

    prefix = str(tmp_path_factory.mktemp("data") / "licences")
    tokenize_to_indexed(prefix, corpus, [f"doc-{i}" for i in range(len(corpus))], tokenizer)
    return prefix


@pytest.fixture(scope="session")
def make_run(data_prefix: str, tokenizer: Any) -> Callable[..., RunConfig]:
    """A tiny 4-layer hidden-64 run on the licence corpus; keyword groups override sub-configs
    (`checkpoint={"save_dir": ...}`), other keywords top-level fields (RunConfig.replace)."""

    def make(name: str, steps: int = 20, tp: int = 1, pp: int = 1, **over: Any) -> RunConfig:
        cfg = RunConfig(
            name=name,
            model=RunModel(
                num_layers=4, hidden_size=64, num_attention_heads=4, vocab_size=tokenizer.vocab_size, seq_length=SEQ
            ),
            parallel=ParallelSpec(tp=tp, pp=pp),
            optimizer=RunOptimizer(lr=3e-3, min_lr=3e-4, warmup_steps=2, total_steps=steps),
            batch=BatchConfig(micro_batch_size=2, global_batch_size=8),
            data=DataConfig(blend=[(1.0, data_prefix)], split="95,5,0", eod_token_id=tokenizer.eod),
        )
        return cfg.replace(**over)

    return make
