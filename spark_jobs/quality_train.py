"""quality_train: LLM annotations -> fastText classifiers in `quality.classifier/model=<name>`.

Each model is fitted on the annotations of the sources it scores (phiflow.stages.classifier_families):
code is graded with its own prompt and gets its own model.

spark-submit entry point. Reads every committed `<source>.annotations` partition of the recipe's
sources, trains the `educational` and `topic` models on the doc_id-hashed training split and
evaluates them on the held-out split; the model binaries go into the partition's parquet rows,
their held-out precision, recall and AUC into its manifest counters.
"""

from __future__ import annotations

import json

import pyarrow as pa
from pyspark.sql import functions as F

from phiflow import stages
from phiflow.manifest import Manifest
from phiflow.recipe import QualityTrainParams
from phiflow.records.quality_classifier import binary_metrics, in_holdout, label_probs, model_bytes, train
from phiflow.schema import QUALITY_ANNOTATIONS, QUALITY_MODELS, with_drop_reason
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema, stage_main

STAGE = "quality_train"


class NotEnoughAnnotations(RuntimeError):
    """A classifier needs both classes in its training and held-out splits."""


def fit(rows: list[dict], p: QualityTrainParams, stem_topics: list[str]) -> list[dict]:
    """Train and evaluate both models; one output row per model."""
    train_rows = [r for r in rows if not in_holdout(r["doc_id"], p.holdout_fraction, p.seed)]
    held = [r for r in rows if in_holdout(r["doc_id"], p.holdout_fraction, p.seed)]
    out = []
    tasks = {
        "educational": (lambda r: "high" if r["grade"] >= p.high_grade else "low", "high"),
        "topic": (lambda r: r["topic"], None),
    }
    for name, (label_of, positive) in tasks.items():
        labels = [label_of(r) for r in train_rows]
        if len(set(labels)) < 2 or len({label_of(r) for r in held}) < 2:
            raise NotEnoughAnnotations(f"{name}: need two labels in both splits, got train {sorted(set(labels))}")
        model = train([r["text"] for r in train_rows], labels, p)
        probs = label_probs(model, [r["text"] for r in held], 20_000)
        if positive:  # educational: P(high) against grade >= threshold
            y = [label_of(r) == positive for r in held]
            scores = [pr.get(positive, 0.0) for pr in probs]
        else:  # topic: P(STEM) against STEM-or-not, the split the quota acts on
            y = [r["topic"] in stem_topics for r in held]
            scores = [sum(v for k, v in pr.items() if k in stem_topics) for pr in probs]
        metrics = {
            **binary_metrics(y, scores),
            "train": len(train_rows),
            "labels": dict(sorted({lab: labels.count(lab) for lab in set(labels)}.items())),
        }
        out.append(
            {
                "name": name,
                "labels": sorted(set(labels)),
                "model": model_bytes(model),
                "metrics": json.dumps(metrics, sort_keys=True),
            }
        )
    return out


def run(spark, ctx: StageContext) -> Manifest:
    p = ctx.recipe.stages.quality_train
    model = ctx.partition["model"]
    sources = stages.classifier_families(ctx.recipe).get(model)
    if not sources:
        raise ValueError(f"no source is scored by classifier {model!r} (stages.quality.classifier / code_classifier)")
    annotations = [stages.io(ctx.recipe, "quality_annotate", s).output for s in sources]
    manifests = [m for d in annotations for m in ctx.lake.partitions(d)]
    if not manifests:
        raise NotEnoughAnnotations(f"no committed annotations of {sources}: run quality_annotate first")
    total = sum(m.row_count for m in manifests)
    table = (
        spark.read.schema(spark_schema(QUALITY_ANNOTATIONS))
        .parquet(*[f for m in manifests for f in ctx.lake.data_files(m)])
        .select("doc_id", F.substring("text", 1, p.max_chars).alias("text"), "grade", "topic")
    )
    if total > p.max_examples:  # a top-k by hash: Spark keeps a bounded heap per task, the driver k rows
        table = table.orderBy(F.xxhash64("doc_id"), "doc_id").limit(p.max_examples)
        print(f"[phiflow] {STAGE}: {total} annotations; training on a fixed sample of {p.max_examples} "
              "(stages.quality_train.max_examples)", flush=True)
    rows = sorted((r.asDict() for r in table.toLocalIterator()), key=lambda r: r["doc_id"])
    fitted = fit(rows, p, ctx.recipe.stages.quality.stem_topics)
    df = spark.createDataFrame(
        pa.Table.from_pylist(
            [{**r, "drop_reason": None} for r in fitted], schema=with_drop_reason(QUALITY_MODELS)
        ).to_pandas(),
        schema=spark_schema(with_drop_reason(QUALITY_MODELS)),
    )
    metrics = {r["name"]: json.loads(r["metrics"]) for r in fitted}
    manifest = commit_partition(
        spark,
        ctx,
        stage=STAGE,
        dataset=ctx.io(STAGE).output,
        rows=df,
        schema=QUALITY_MODELS,
        inputs=[m.input_ref() for m in manifests],
        reasons={None: len(fitted)},
        counters={"read": len(rows), "annotations": total, "metrics": metrics},
    )
    for name, m in metrics.items():
        print(
            f"[phiflow]   {name}: held-out precision {m['precision']} recall {m['recall']} AUC {m['auc']} (n={m['n']})"
        )
    return manifest


if __name__ == "__main__":
    stage_main(STAGE, run)
