"""The evaluate stage: benchmark scores of a committed checkpoint, `evals.pretrain/recipe=<name>`.

The recipe's multiple-choice benchmarks (decontaminate.benchmarks with `mc` fields) are tokenized
with the run's tokenizer and scored by log-likelihood on the checkpoint's latest step in a separate
process (training.mc_eval). The result is committed like every stage output: a manifest whose inputs
are the checkpoint manifest and the benchmark files, so a rerun with the same inputs does nothing
and a report can tell a current evaluation from a stale one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from phiflow import benchmarks
from phiflow.commit import commit_files, up_to_date
from phiflow.manifest import InputRef, Manifest, sha256_json
from phiflow.recipe import Recipe
from phiflow.schema import MC_RESULTS
from phiflow.storage import Lake

DATASET = "evals.pretrain"


def mc_evaluation(recipe: Recipe, lake: Lake, checkpoint: Manifest, airflow: dict[str, Any] | None = None
                  ) -> Manifest | None:
    """Score the checkpoint on the recipe's multiple-choice benchmarks and commit; None without any."""
    from phiflow.tokenizer_store import resolve_tokenizer
    from training.mc_eval import run_subprocess

    items, digests = benchmarks.mc_items(recipe)
    if not items:
        return None
    started = time.time()
    part = {"recipe": recipe.name}
    inputs = [checkpoint.input_ref()] + [
        InputRef(dataset="external:benchmark", partition={"name": name}, digest=digest)
        for name, digest in sorted(digests.items())]
    digest = sha256_json({"mc": [b.model_dump(mode="json") for b in recipe.stages.decontaminate.benchmarks if b.mc]})
    done = up_to_date(lake, DATASET, part, inputs, digest)
    if done is not None:
        return done
    tok = resolve_tokenizer(recipe, lake).load()
    contexts = tok.encode_batch([it.context for it in items])
    choices = [tok.encode_batch(list(it.choices)) for it in items]
    tokenized = [{"benchmark": it.benchmark, "id": it.id, "context": ctx, "choices": ch, "answer": it.answer}
                 for it, ctx, ch in zip(items, contexts, choices, strict=True)]
    attempt = lake.new_attempt(DATASET, part)
    work = Path(lake.attempt_path(DATASET, part, attempt))
    print(f"[phiflow] evaluate {checkpoint.dataset}/{checkpoint.key}: {len(items)} multiple-choice items of "
          f"{', '.join(sorted(digests))}", flush=True)
    result = run_subprocess(checkpoint.params["run"], checkpoint.params["checkpoint_dir"], tokenized, work)
    for name, r in result.items():
        print(f"[phiflow]   {name:<10} accuracy {r['accuracy']:.3f} (length-normalized {r['accuracy_norm']:.3f}, "
              f"chance {r['chance']:.3f}) over {r['items']} items", flush=True)
    (work / "items.json").unlink()  # tokens of public files: not worth keeping
    return commit_files(
        lake, dataset=DATASET, partition=part, attempt=attempt, stage="evaluate", schema=MC_RESULTS,
        row_count=len(result), content=result, inputs=inputs, recipe_digest=digest,
        params={"checkpoint_dir": checkpoint.params["checkpoint_dir"]}, airflow=airflow,
        started=started, counters={"benchmarks": result, "items": len(items)},
    )

