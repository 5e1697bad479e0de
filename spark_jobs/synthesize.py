"""synthesize: `synthetic.seeds/source=<s>/...` -> `synthetic.generated/source=<s>/...`.

For each workflow of the recipe, the best-scored seeds of its kinds (up to its target) are handed
to executors, which run the workflow (spark_jobs.synth_workflows) against the recipe's LLM backend,
one client (and one loaded model) per Python worker, every call through the persistent cache under
the lake. Counters: generated samples, rejections by reason (manifest), LLM requests and cache hits.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import functions as F

from phiflow.manifest import Manifest
from phiflow.recipe import SynthesizeParams
from phiflow.schema import SEEDS, SYNTHETIC, with_drop_reason
from spark_jobs.llm_stage import STATS, call_stats, llm_config, llm_counters, worker_client
from spark_jobs.stage_io import StageContext, commit_partition, persisted, spark_schema, stage_main
from spark_jobs.synth_workflows import synthesize_seeds

STAGE = "synthesize"
DATASET = "synthetic.generated"


def synth_partitions(params: SynthesizeParams, config_json: str):  # -> mapInArrow function
    out = with_drop_reason(SYNTHETIC)
    for f in STATS:
        out = out.append(f)
    workflows = {w.name: w for w in params.workflows}

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        client = worker_client(config_json)
        for batch in batches:
            seeds = batch.to_pylist()
            for name in sorted({s["workflow"] for s in seeds}):
                todo = sorted((s for s in seeds if s["workflow"] == name), key=lambda s: s["doc_id"])
                for start in range(0, len(todo), params.batch_rows):
                    chunk = todo[start : start + params.batch_rows]
                    before = dict(client.stats)
                    t0 = time.time()
                    rows = synthesize_seeds(chunk, workflows[name], client, params.seed, params.sandbox)
                    req, hits = call_stats(client, before)
                    for i, r in enumerate(rows):
                        r["_llm_requests"], r["_llm_cache_hits"] = (req, hits) if i == 0 else (0, 0)
                    kept = sum(r["drop_reason"] is None for r in rows)
                    print(
                        f"[phiflow] {STAGE} {name}: {len(chunk)} seeds -> {kept}/{len(rows)} kept, "
                        f"{req} llm requests ({hits} cached) in {time.time() - t0:.1f} s",
                        flush=True,
                    )
                    if rows:
                        yield pa.RecordBatch.from_pylist(rows, schema=out)

    return run


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.synthesize
    partition = {"source": ctx.source, **ctx.partition}
    seeds_m = ctx.lake.require("synthetic.seeds", partition)
    seeds = spark.read.schema(spark_schema(SEEDS)).parquet(*ctx.lake.data_files(seeds_m))
    picked = None
    for wf in params.workflows:  # each workflow's target: its best seeds of the kinds it takes
        part = (
            seeds.filter(F.col("kind").isin(list(wf.seed_kinds)))
            .orderBy(F.desc("passage_score"), "doc_id")
            .limit(wf.max_seeds)
            .withColumn("workflow", F.lit(wf.name))
        )
        picked = part if picked is None else picked.unionByName(part)
    if picked is None:
        raise ValueError("stages.synthesize.workflows is empty: nothing to synthesize")
    cfg = llm_config(ctx)
    print(
        f"[phiflow] {STAGE} {seeds_m.dataset}/{seeds_m.key}: {seeds_m.row_count} seeds, "
        f"{len(params.workflows)} workflows, backend {cfg.backend} model {cfg.model}",
        flush=True,
    )
    out = with_drop_reason(SYNTHETIC)
    for f in STATS:
        out = out.append(f)
    rows = picked.mapInArrow(synth_partitions(params, cfg.model_dump_json()), spark_schema(out))
    with persisted(rows):
        stats = rows.agg(F.count(F.lit(1)).alias("generated"), F.sum("completion_tokens").alias("tokens")).first()
        per_wf = {
            r["workflow"]: int(r["count"])
            for r in rows.filter("drop_reason is null").groupBy("workflow").count().collect()
        }
        return commit_partition(
            spark,
            dataclasses.replace(ctx, partition=partition),
            stage=STAGE,
            dataset=DATASET,
            rows=rows,
            schema=SYNTHETIC,
            inputs=[seeds_m.input_ref()],
            counters={
                "read": seeds_m.row_count,
                "generated": int(stats["generated"]),
                "kept_by_workflow": per_wf,
                "completion_tokens": int(stats["tokens"] or 0),
                **llm_counters(rows, cfg),
            },
        )


if __name__ == "__main__":
    stage_main(STAGE, run)
