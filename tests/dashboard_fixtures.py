"""Synthetic committed manifests for the dashboard's tests and bench (bench/bench_dashboard.py).

Shaped like the stages' real manifests (counters names from spark_jobs/*.py), with seeded numbers,
committed through the storage contract so the dashboard reads them like any lake.
"""

from __future__ import annotations

import random

from phiflow.manifest import Manifest
from phiflow.storage import Lake

LANGS = ("en", "de", "fr", "es", "ja")
TOPICS = ("science", "code", "history", "sports", "none")


def manifest(dataset: str, partition: dict[str, str], stage: str, read: int, kept: int,
             dropped: dict[str, int], **counters) -> Manifest:
    return Manifest(
        dataset=dataset, partition=partition, stage=stage, attempt="a0", files=[], row_count=kept, bytes=kept * 900,
        schema=[], schema_fingerprint="f", content_digest=f"{dataset}/{partition}", timings={"seconds": 1.5},
        counters={"read": read, "kept": kept, "dropped": dropped, **counters},
    )


def pipeline_manifests(intervals: int, seed: int = 0, source: str = "web") -> list[Manifest]:
    """Five document stages per interval (extracted -> langid -> quality -> dedup -> clean)."""
    rng = random.Random(seed)
    out = []
    for i in range(intervals):
        part = {"snapshot": f"CC-MAIN-{2000 + i // 12}-{i % 12 + 1:02d}"}
        read = rng.randint(500, 1000)
        drop_ex = {"too_short": rng.randint(0, 50), "not_html": rng.randint(0, 30)}
        n = read - sum(drop_ex.values())
        out.append(manifest(f"{source}.extracted", part, "commoncrawl_extract", read, n, drop_ex))
        langs = dict(zip(LANGS, _split(rng, n, len(LANGS)), strict=True))
        out.append(manifest(f"{source}.langid", part, "langid", n, n, {}, languages=langs))
        below = rng.randint(0, n // 3)
        after = dict(zip(TOPICS, _split(rng, n - below, len(TOPICS)), strict=True))
        before = {t: after[t] + (below if t == "none" else 0) for t in TOPICS}
        out.append(manifest(f"{source}.quality", part, "quality", n, n - below, {"below_quality_threshold": below},
                            topics_before=before, topics_after=after))
        examples = [{"doc_id": f"q{i}-{k}", "url": f"https://example.org/{i}/{k}", "page": None,
                     "excerpt": "click here click here"} for k in range(min(below, 3))]
        side = manifest(f"{source}.quality.rejected", part, "quality", below, below, {},
                        sampled={"below_quality_threshold": below} if below else {},
                        examples={"below_quality_threshold": examples} if below else {})
        side.params = {"fraction": 1.0, "excerpt_chars": 200}
        out.append(side)
        n -= below
        dup = {"exact_duplicate": rng.randint(0, n // 10), "near_duplicate": rng.randint(0, n // 10)}
        out.append(manifest(f"{source}.dedup", part, "dedup", n, n - sum(dup.values()), dup))
        n -= sum(dup.values())
        cont = {"contaminated_ngram13": rng.randint(0, 3), "contaminated_ngram7_overlap": rng.randint(0, 2)}
        out.append(manifest(f"{source}.clean", part, "decontaminate", n, n - sum(cont.values()), cont,
                            flags=sum(cont.values()) + 1, flagged_by_benchmark={"arith": cont["contaminated_ngram13"]}))
    return out


def training_manifests(recipe: str = "demo", steps: int = 12, seed: int = 0) -> list[Manifest]:
    """A blend and its pretraining checkpoint, with the counters the mix and training stages commit
    (the real stages' counters are checked against the dashboard in tests/test_training_dag.py)."""
    rng = random.Random(seed)
    rows = [{"run": "pretrain", "source": s, "share": share, "unique_tokens": u, "tokens": int(share * 10**6),
             "epochs": round(share * 10**6 / u, 4), "max_epochs": None, "shards": 2}
            for s, share, u in (("web", 0.3, 200_000), ("synthetic", 0.7, 90_000))]
    losses = [round(6.0 - 3 * i / steps + rng.random() / 10, 4) for i in range(steps)]
    part = {"recipe": recipe}
    stress = [{"multiplier": m, "lr": 3e-3 * m, "diverged": m > 1, "reason": "loss rose: 9.1 vs 6.3" if m > 1 else None,
               "first_loss": 6.3, "final_loss": 9.1 if m > 1 else 5.2, "max_grad_norm": 4.0 * m,
               "grad_norm_spikes": [5] if m > 1 else [], "attention_logit_growth": 900.0 if m > 1 else 1.6}
              for m in (1.0, 300.0)]
    stressed = manifest("stress.pretrain", part, "stress", 0, 2, {}, points=stress, diverged=[300.0])
    stressed.params = {"stress": {"continue_on_divergence": True}}
    return [manifest("blend", part, "mix", 0, len(rows), {}, sources=rows), stressed,
            manifest("checkpoints.pretrain", part, "pretrain", 0, steps, {}, losses=losses, final_step=steps,
                     final_loss=losses[-1], valid_perplexity=42.0)]


def _split(rng: random.Random, total: int, k: int) -> list[int]:
    cuts = sorted(rng.randint(0, total) for _ in range(k - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def commit_all(lake: Lake, manifests: list[Manifest]) -> None:
    for m in manifests:
        lake.fs.makedirs(lake.partition_path(m.dataset, m.partition), exist_ok=True)
        lake.commit(m)
