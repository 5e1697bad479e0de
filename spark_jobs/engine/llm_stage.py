"""What the LLM-calling stages (quality_annotate, synthesize) share on the Spark side.

One client per Python worker and config (so an offline model loads once per worker), every call
through the persistent cache under the lake (so a retried task or stage pays only for what it did
not finish), and per-batch request/cache-hit counts carried in two extra columns that the stage sums
into its manifest counters and never commits.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from phiflow.llm import LLMClient, LLMConfig
from spark_jobs.engine.llm_clients import make_client
from spark_jobs.engine.stage_io import StageContext

STATS = [pa.field("_llm_requests", pa.int64()), pa.field("_llm_cache_hits", pa.int64())]  # not committed


@lru_cache(maxsize=4)
def worker_client(config_json: str) -> LLMClient:
    """One client per worker process and config (the offline model then loads once per worker)."""
    return make_client(LLMConfig.model_validate_json(config_json))


def llm_config(ctx: StageContext) -> LLMConfig:
    """The recipe's `llm:` section, its cache defaulting to `_cache/llm` under the lake."""
    cfg = ctx.recipe.llm
    if cfg.cache_dir is None:
        cfg = cfg.model_copy(update={"cache_dir": f"{ctx.lake.url}/_cache/llm"})
    return cfg


def call_stats(client: LLMClient, before: dict[str, int]) -> tuple[int, int]:
    """(requests, cache hits) the client made since `before` (a copy of its stats)."""
    return (
        client.stats["requests"] - before.get("requests", 0),
        client.stats["cache_hits"] - before.get("cache_hits", 0),
    )


def llm_counters(rows: DataFrame, cfg: LLMConfig) -> dict[str, Any]:
    """The manifest counters of the calls behind `rows`: requests, cache hits, which model."""
    s = rows.agg(F.sum("_llm_requests").alias("requests"), F.sum("_llm_cache_hits").alias("hits")).first()
    return {
        "llm_requests": int(s["requests"] or 0),
        "llm_cache_hits": int(s["hits"] or 0),
        "llm": json.loads(cfg.model_dump_json(include={"backend", "model", "base_url"})),
    }
