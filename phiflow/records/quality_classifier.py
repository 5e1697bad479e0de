"""fastText quality and topic classifiers: training, held-out metrics, batch scoring (pure).

Two supervised fastText models, as in the Phi-4 report's web filtering: `educational`
(`__label__high` for LLM grade >= the recipe's threshold, else `__label__low`) and `topic`
(STEM and non-STEM categories). The held-out split is a hash of doc_id, so it is the same on every
run. Metrics (precision, recall, ROC AUC) are computed here and stored in the model partition's
manifest; a constant or random scorer gets AUC 0.5.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import fasttext

from phiflow.recipe import QualityTrainParams

_WS = re.compile(r"\s+")
fasttext.FastText.eprint = lambda *a, **k: None  # silence the load warning in every executor


def prepare(text: str | None, max_chars: int) -> str:
    """One line of lower-cased text, as fastText reads it."""
    return _WS.sub(" ", (text or "")[:max_chars]).strip().lower()


def in_holdout(doc_id: str, fraction: float, seed: int = 0) -> bool:
    h = hashlib.blake2b(f"{seed}\x1f{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction


def train(texts: Sequence[str], labels: Sequence[str], p: QualityTrainParams, max_chars: int = 20_000) -> Any:
    """A supervised model, trained in a fresh process.

    The same annotations trained fine in a fresh interpreter and diverged ("Encountered NaN") at every
    learning rate inside a pytest worker that had run other suites first: fastText's result should not
    depend on what else the host process (a Spark driver) has loaded, so training runs in a spawned one."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out = os.path.join(tmp, "train.txt"), os.path.join(tmp, "model.bin")
        with open(path, "w", encoding="utf-8") as fh:
            for text, label in zip(texts, labels, strict=True):
                fh.write(f"__label__{label} {prepare(text, max_chars)}\n")
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(fit_file, (path, p, out))
        return fasttext.load_model(out)


def fit_file(path: str, p: QualityTrainParams, out: str) -> None:
    """Train on one thread from a fastText input file and save the model. SGD can diverge on long
    documents at a high learning rate; it is retried at half the rate, twice, before giving up."""
    for attempt in range(3):
        try:
            model = fasttext.train_supervised(
                input=path,
                epoch=p.epoch,
                lr=p.lr / 2**attempt,
                wordNgrams=p.word_ngrams,
                dim=p.dim,
                minn=p.minn,
                maxn=p.maxn,
                bucket=p.bucket,
                thread=1,
                seed=p.seed,
                verbose=0,
            )
        except RuntimeError as err:
            if "NaN" not in str(err) or attempt == 2:
                raise
        else:
            model.save_model(out)
            return


def model_bytes(model: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.bin")
        model.save_model(path)
        with open(path, "rb") as fh:
            return fh.read()


def load_bytes(data: bytes) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.bin")
        with open(path, "wb") as fh:
            fh.write(data)
        return fasttext.load_model(path)


def label_probs(model: Any, texts: Sequence[str], max_chars: int) -> list[dict[str, float]]:
    """Probability of every label for each text (fastText's batched predict)."""
    labels, probs = model.predict([prepare(t, max_chars) for t in texts], k=-1)
    return [
        {lab.removeprefix("__label__"): float(p) for lab, p in zip(ls, ps, strict=True)}
        for ls, ps in zip(labels, probs, strict=True)
    ]


def roc_auc(y: Sequence[bool], scores: Sequence[float]) -> float:
    """Mann-Whitney AUC with ties counted half; 0.5 when one class is missing."""
    pos = sum(y)
    neg = len(y) - pos
    if not pos or not neg:
        return 0.5
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, t in zip(ranks, y, strict=True) if t)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def binary_metrics(y: Sequence[bool], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float | int]:
    pred = [s >= threshold for s in scores]
    tp = sum(p and t for p, t in zip(pred, y, strict=True))
    fp = sum(p and not t for p, t in zip(pred, y, strict=True))
    fn = sum(t and not p for p, t in zip(pred, y, strict=True))
    return {
        "n": len(y),
        "positives": int(sum(y)),
        "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
        "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0,
        "auc": round(roc_auc(y, scores), 4),
    }
