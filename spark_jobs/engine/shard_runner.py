"""Run a per-document stage shard by shard inside one Spark application, then roll the snapshot up.

Why one application for all of a snapshot's shards: on the embedded default every spark-submit pays
a JVM start (tens of seconds), so an Airflow task per shard would multiply start-up by the shard
count; on a cluster a shard of a few hundred WARC files is already hundreds of parallel tasks, which
fills the executors. Each shard is committed the moment it is written, so a killed run loses at most
the shards in flight, and the rerun (`--shards missing`, the default) skips every shard already
committed from the same inputs and recipe digest (`phiflow.commit.up_to_date`). A shard is rewritten
anyway when `--shards` names it or a rerun request lies in its folder (`phiflow backfill --shards`).

A shard that fails for a data reason (`ShardRejected`: too many failed files) does not stop the
others; the stage fails at the end, naming it, and commits no roll-up. Any other error stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

from phiflow import shards, stages
from phiflow.commit import up_to_date
from phiflow.manifest import InputRef, Manifest, partition_key
from phiflow.version import code_version
from spark_jobs.engine.stage_io import StageContext, print_summary


class ShardRejected(RuntimeError):
    """One shard's data failed a check (its failure budget): the others go on, the snapshot waits."""


class ShardsFailed(RuntimeError):
    """Some shards were rejected: the snapshot is not complete and has no roll-up."""


@dataclass(frozen=True)
class ShardPlan:
    """One shard to (maybe) run: its id, what it reads (pinned, for the up-to-date check), and the
    stage's own payload (the WARC URLs of an extract shard, the input shard's manifest)."""

    index: int
    inputs: list[InputRef]
    payload: Any = None
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", shards.shard_id(self.index))


def wanted(spec: str, plans: Sequence[ShardPlan]) -> set[str] | None:
    """The shards `--shards` names to rerun whatever their state: None for `missing` (only those not
    committed from the current inputs), every shard for `all`, or the listed ids."""
    if spec == "missing":
        return None
    ids = {p.id for p in plans}
    if spec == "all":
        return ids
    named = {shards.shard_id(int(x)) if x.strip().isdigit() else x.strip() for x in spec.split(",") if x.strip()}
    unknown = sorted(named - ids)
    if unknown:
        raise ValueError(f"--shards names {unknown}, which this snapshot does not have (it has {len(ids)} shards)")
    return named


RunShard = Callable[[SparkSession, StageContext, ShardPlan], Manifest]


def run_shards(
    spark: SparkSession,
    ctx: StageContext,
    *,
    stage: str,
    output: str,
    plans: Sequence[ShardPlan],
    run_shard: RunShard,
    rollup_inputs: list[InputRef],
    before_rollup: Callable[[list[Manifest]], None] | None = None,
) -> Manifest:
    """Run the shards that need it, each committed as `<partition>/shard=…`, then commit the roll-up.
    `before_rollup` sees the committed shards first and may refuse the snapshot (a failure budget)."""
    lake = ctx.lake
    digest = ctx.recipe.stage_digest(stage)
    forced = wanted(ctx.shards, plans)
    n = len(plans)
    done, ran, rejected = 0, 0, []
    t0 = time.perf_counter()
    print(f"[phiflow] {stage} {output}/{partition_key(ctx.partition)}: {n} shards ({ctx.shards})", flush=True)
    for plan in plans:
        sub = replace(
            ctx, partition=shards.of_shard(ctx.partition, plan.id), shard=(plan.index, n), started=time.time()
        )
        rerun = (forced is not None and plan.id in forced) or lake.rerun_requested(output, sub.partition)
        if not rerun and up_to_date(lake, output, sub.partition, plan.inputs, digest) is not None:
            done += 1
            print(f"[phiflow]   shard {plan.id}: already committed from the same inputs; skipped", flush=True)
            continue
        try:
            run_shard(spark, sub, plan)
        except ShardRejected as e:
            rejected.append(f"shard {plan.id}: {e}")
            print(f"[phiflow]   shard {plan.id} REJECTED: {e}", flush=True)
            continue
        lake.clear_rerun(output, sub.partition)
        done, ran = done + 1, ran + 1
        rate = (time.perf_counter() - t0) / ran
        left = n - done - len(rejected)
        print(
            f"[phiflow]   progress {output}: {done}/{n} shards committed, {ran} this run, "
            f"{left} to go (~{rate * left / 60:.1f} min at {rate:.0f} s/shard)",
            flush=True,
        )
    if rejected:
        raise ShardsFailed(
            f"{len(rejected)} of {n} shards of {output}/{partition_key(ctx.partition)} were rejected, so the snapshot "
            f"is not complete (the others are committed; a rerun retries only these):\n  " + "\n  ".join(rejected)
        )
    return commit_rollup(
        ctx, stage=stage, output=output, ids=[p.id for p in plans], inputs=rollup_inputs, check=before_rollup
    )


def commit_rollup(
    ctx: StageContext,
    *,
    stage: str,
    output: str,
    ids: list[str],
    inputs: list[InputRef],
    check: Callable[[list[Manifest]], None] | None = None,
) -> Manifest:
    """Commit the snapshot's roll-up from its committed shards `ids`: the snapshot becomes readable.
    The shards' rejected rows (`<output>.rejected`) are rolled up first, when every shard has them."""
    lake = ctx.lake
    have = {m.partition[shards.SHARD]: m for m in lake.shards(output, ctx.partition)}
    missing = [i for i in ids if i not in have]
    if missing:
        raise ShardsFailed(f"{output}/{partition_key(ctx.partition)}: shards {missing} are not committed; no roll-up")
    parts = [have[i] for i in ids]
    if check is not None:
        check(parts)
    side = {m.partition[shards.SHARD]: m for m in lake.shards(stages.rejected_of(output), ctx.partition)}
    if side and all(i in side for i in ids):
        _rollup(ctx, stage, stages.rejected_of(output), [side[i] for i in ids], inputs)
    committed = _rollup(ctx, stage, output, parts, inputs)
    print_summary(committed)
    return committed


def _rollup(ctx: StageContext, stage: str, dataset: str, parts: list[Manifest], inputs: list[InputRef]) -> Manifest:
    started = min(_when(m, "started") for m in parts)
    finished = max(_when(m, "finished") for m in parts)
    manifest = shards.rollup(
        dataset,
        ctx.partition,
        parts,
        inputs=inputs,
        recipe_digest=ctx.recipe.stage_digest(stage),
        params=parts[0].params,
        code_version=code_version(),
        airflow=ctx.airflow,
        timings={
            "started": started.isoformat(),
            "finished": finished.isoformat(),
            "seconds": round(sum(float(m.timings.get("seconds") or 0) for m in parts), 2),
        },
    )
    return ctx.lake.commit(manifest)


def _when(m: Manifest, key: str) -> datetime:
    value = m.timings.get(key)
    return datetime.fromisoformat(value) if value else datetime.now(UTC)


def input_shards(
    ctx: StageContext,
    source: Manifest,
    run_one: Callable[[SparkSession, StageContext, Manifest], Manifest],
    *,
    stage: str,
    output: str,
    spark: SparkSession,
    extra_inputs: Sequence[InputRef] = (),
) -> Manifest:
    """A per-document stage over its input partition: shard by shard when the input is a roll-up
    (one output shard per input shard), else the whole partition at once. `run_one` maps one input
    manifest to the committed output of the same partition."""
    if not shards.is_rollup(source):
        return run_one(spark, ctx, source)
    plans = []
    for sid in shards.shard_ids(source):
        shard_m = ctx.lake.require(source.dataset, shards.of_shard(source.partition, sid))
        plans.append(ShardPlan(int(sid), [shard_m.input_ref(), *extra_inputs], shard_m))
    return run_shards(
        spark,
        ctx,
        stage=stage,
        output=output,
        plans=plans,
        run_shard=lambda sp, sub, plan: run_one(sp, sub, plan.payload),
        rollup_inputs=[source.input_ref(), *extra_inputs],
    )
