"""synthesize: `synthetic.seeds/source=<s>/...` -> `synthetic.<output>/source=<s>/...`, one dataset per
distinct `output` of the recipe's workflows (`synthetic.generated` by default, `synthetic.web_rewrites`
for the web rewrites the mixture weighs on their own).

For each workflow of the recipe, the best-scored seeds of its kinds (up to its target) are handed
to executors, which run the workflow (phiflow.records.synth_workflows) against the recipe's LLM backend,
one client (and one loaded model) per Python worker, every call through the persistent cache under
the lake. The generated rows are computed once and persisted; each output dataset is then committed
from its workflows' rows, with its own counters: generated samples, kept samples per workflow,
rejections by reason (manifest), completion tokens, LLM requests and cache hits.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyspark.sql import Row
from pyspark.sql import functions as F

from phiflow.manifest import Manifest
from phiflow.recipe import SynthesizeParams
from phiflow.records.synth_workflows import seed_groups, synthesize_groups
from phiflow.schema import SEEDS, SYNTHETIC, with_drop_reason
from spark_jobs.engine.llm_stage import STATS, call_stats, llm_config, llm_counters, worker_client
from spark_jobs.engine.stage_io import StageContext, commit_partition, persisted, spark_schema, stage_main

STAGE = "synthesize"


def synth_partitions(params: SynthesizeParams, config_json: str):  # -> mapInArrow function
    out = with_drop_reason(SYNTHETIC)
    for f in STATS:
        out = out.append(f)
    workflows = {w.name: w for w in params.workflows}

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        client = worker_client(config_json)
        seeds = [s for batch in batches for s in batch.to_pylist()]  # long_context_qa groups all of them
        for name in sorted({s["workflow"] for s in seeds}):
            wf = workflows[name]
            groups = seed_groups([s for s in seeds if s["workflow"] == name], wf)
            for start in range(0, len(groups), params.batch_rows):
                chunk = groups[start : start + params.batch_rows]
                before = dict(client.stats)
                t0 = time.time()
                rows = synthesize_groups(chunk, wf, client, params.seed, params.sandbox)
                req, hits = call_stats(client, before)
                for i, r in enumerate(rows):
                    r["_llm_requests"], r["_llm_cache_hits"] = (req, hits) if i == 0 else (0, 0)
                kept = sum(r["drop_reason"] is None for r in rows)
                print(
                    f"[phiflow] {STAGE} {name}: {sum(map(len, chunk))} seeds -> {kept}/{len(rows)} kept, "
                    f"{req} llm requests ({hits} cached) in {time.time() - t0:.1f} s",
                    flush=True,
                )
                if rows:
                    yield pa.RecordBatch.from_pylist(rows, schema=out)

    return run


def output_counters(groups: list[Row]) -> dict[str, Any]:
    """One output's counters from its (workflow, drop_reason) groups: generated and kept samples, tokens."""
    return {
        "generated": sum(g["n"] for g in groups),
        "kept_by_workflow": dict(sorted((g["workflow"], g["n"]) for g in groups if g["drop_reason"] is None)),
        "completion_tokens": sum(g["tokens"] or 0 for g in groups),
    }


def run(spark, ctx: StageContext) -> dict[str, Manifest]:
    """Commit every output dataset of the recipe's workflows (those with no rows too, so that what is
    scheduled on them runs); the manifests by dataset name."""
    params = ctx.recipe.stages.synthesize
    partition = {"source": ctx.source, **ctx.partition}
    seeds_m = ctx.lake.require(ctx.io(STAGE).input, partition)
    seeds = spark.read.schema(spark_schema(SEEDS)).parquet(*ctx.lake.data_files(seeds_m))
    picked = None
    for wf in params.workflows:  # each workflow's target: its best seeds of the kinds it takes
        if wf.sources is not None and ctx.source not in wf.sources:
            continue  # not seeded from this source: its output is committed empty below
        part = (  # one partition (limit's): a long_context_qa workflow groups all its seeds together
            seeds.filter(F.col("kind").isin(list(wf.seed_kinds)))
            .orderBy(F.desc("passage_score"), "doc_id")
            .limit(wf.max_seeds)
            .coalesce(1)
            .withColumn("workflow", F.lit(wf.name))
        )
        picked = part if picked is None else picked.unionByName(part)
    if picked is None:  # no workflow seeds from this source: every output is committed empty
        picked = seeds.limit(0).withColumn("workflow", F.lit(None).cast("string"))
    cfg = llm_config(ctx)
    print(
        f"[phiflow] {STAGE} {seeds_m.dataset}/{seeds_m.key}: {seeds_m.row_count} seeds, "
        f"{len(params.workflows)} workflows into {', '.join(params.output_datasets)}, "
        f"backend {cfg.backend} model {cfg.model}",
        flush=True,
    )
    out = with_drop_reason(SYNTHETIC)
    for f in STATS:
        out = out.append(f)
    rows = picked.mapInArrow(synth_partitions(params, cfg.model_dump_json()), spark_schema(out))
    committed = {}
    with persisted(rows):  # the LLM work runs once, here; each output then reads its rows from the cache
        groups = rows.groupBy("workflow", "drop_reason").agg(
            F.count(F.lit(1)).alias("n"), F.sum("completion_tokens").alias("tokens")
        ).collect()
        # the workers' per-batch lines reach this log only where they share the driver's process (not
        # on a cluster's executors, nor on a Spark Connect server): each workflow's totals always do
        for name in sorted({g["workflow"] for g in groups}):
            mine = [g for g in groups if g["workflow"] == name]
            print(
                f"[phiflow] {STAGE} {name}: {sum(g['n'] for g in mine if g['drop_reason'] is None)}/"
                f"{sum(g['n'] for g in mine)} kept, {sum(g['tokens'] or 0 for g in mine)} completion tokens",
                flush=True,
            )
        for dataset, names in params.outputs.items():
            mine = [g for g in groups if g["workflow"] in names]
            part = rows.filter(F.col("workflow").isin(names))
            committed[dataset] = commit_partition(
                spark,
                dataclasses.replace(ctx, partition=partition),
                stage=STAGE,
                dataset=dataset,
                rows=part,
                schema=SYNTHETIC,
                inputs=[seeds_m.input_ref()],
                counters={"read": seeds_m.row_count, **output_counters(mine), **llm_counters(part, cfg)},
                known_reasons=sorted({g["drop_reason"] for g in mine} - {None}),  # counted while writing
                keep_rejected=True,
            )
    return committed


if __name__ == "__main__":
    stage_main(STAGE, run)
