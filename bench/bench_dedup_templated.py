"""Dedup on templated sites (bench/templated_set.py): removed-set precision and recall with boilerplate-aware
shingling off and on, at the demo recipe's threshold, and what the line pass costs.

Two truths: the pages' content (template left out: what a reader calls a duplicate) and their whole text
(the stage's own measure). The stage runs in the demo recipe's Spark settings, interleaved, best of
`--repeats` for the time.

    .venv/bin/python bench/bench_dedup_templated.py [--min-docs 5] [--threshold 0.7]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_dedup import LANGID  # noqa: E402
from templated_set import Page, build, score  # noqa: E402

from phiflow.recipe import Recipe, load_recipe  # noqa: E402
from phiflow.schema import with_drop_reason  # noqa: E402
from phiflow.storage import Lake  # noqa: E402
from spark_jobs import dedup  # noqa: E402
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema  # noqa: E402

SNAP = {"snapshot": "CC-MAIN-2024-10"}


def with_dedup(recipe: Recipe, **params) -> Recipe:
    d = recipe.stages.dedup.model_copy(update=params)
    return recipe.model_copy(update={"stages": recipe.stages.model_copy(update={"dedup": d})})


def commit_pages(spark, recipe: Recipe, lake: Lake, pages: list[Page]) -> None:
    t0 = datetime(2024, 2, 20, tzinfo=UTC)
    rows = [(f"d{i:07d}", "web", f"warc://{i}", [], p.url, None, None, None, t0 + timedelta(seconds=i), 200,
             "text/html", "utf-8", "", p.text, 0, len(p.text), "en", 1.0, None) for i, p in enumerate(pages)]
    df = spark.createDataFrame(rows, spark_schema(with_drop_reason(LANGID))).repartition(4)
    ctx = StageContext(recipe=recipe, source="web", partition=dict(SNAP), lake=lake)
    commit_partition(spark, ctx, stage="langid", dataset=f"web.{recipe.stages.dedup.input}", rows=df, schema=LANGID,
                     inputs=[], counters={}, reasons={})


def clusters_of(lake: Lake, n: int) -> dict[int, int]:
    clusters = {i: i for i in range(n)}
    for r in lake.read_table(lake.require("web.dup_clusters", SNAP)).to_pylist():
        clusters[int(r["doc_id"][1:])] = int(r["cluster_id"][1:])
        clusters[int(r["survivor_id"][1:])] = int(r["cluster_id"][1:])
    return clusters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--min-docs", type=int, default=5)
    ap.add_argument("--min-words", type=int, default=None, help="default: the recipe's boilerplate_min_words")
    ap.add_argument("--min-share", type=float, default=None, help="default: the recipe's boilerplate_min_share")
    ap.add_argument("--threshold", type=float, default=None, help="default: the demo recipe's")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    demo = load_recipe(ROOT / "recipes" / "demo.yaml")
    threshold = a.threshold if a.threshold is not None else demo.stages.dedup.threshold
    off = with_dedup(demo, threshold=threshold, boilerplate_min_docs=0, cross_snapshot=False)
    on = with_dedup(off, boilerplate_min_docs=a.min_docs)
    if a.min_words is not None:
        on = with_dedup(on, boilerplate_min_words=a.min_words)
    if a.min_share is not None:
        on = with_dedup(on, boilerplate_min_share=a.min_share)
    pages = build()
    mh = dedup.hasher(off.stages.dedup)
    print(f"set: {len(pages)} pages, {sum(p.url.startswith('https://www.') for p in pages)} on templated sites; "
          f"threshold {threshold}, boilerplate_min_docs {a.min_docs}, "
          f"boilerplate_min_share {on.stages.dedup.boilerplate_min_share}, "
          f"boilerplate_min_words {on.stages.dedup.boilerplate_min_words}")
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.master("local[2]").appName("bench-dedup-templated")
               .config("spark.driver.memory", demo.spark.driver_memory).config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.enabled", "false"))
    for k, v in demo.spark.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    results, best = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in (("off", off), ("on", on)):
            lake = Lake(f"{tmp}/{name}")
            commit_pages(spark, recipe, lake, pages)
            ctx = StageContext(recipe=recipe, source="web", partition=dict(SNAP), lake=lake)
            dedup.run(spark, ctx)  # warm-up, and the clusters scored
            results[name] = (clusters_of(lake, len(pages)), lake, ctx)
        for _ in range(a.repeats):  # interleaved: noise hits both
            for name, (_, _lake, ctx) in results.items():
                t0 = time.perf_counter()
                m = dedup.run(spark, ctx)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
                if name == "on":
                    lines = m.counters.get("boilerplate_lines")
    spark.stop()
    whole = [dataclasses.replace(p, content=p.text) for p in pages]
    for name, (clusters, _, _) in results.items():
        for truth, ps in (("content", pages), ("whole text", whole)):
            p, r, removed, should = score(ps, clusters, threshold, mh.shingles)
            print(f"boilerplate {name:>3}, {truth:>10} truth: precision {p:.3f} recall {r:.3f} "
                  f"(removed {removed}, the truth removes {should})")
    print(f"stage time, best of {a.repeats}: off {best['off']:.1f} s, on {best['on']:.1f} s "
          f"(x{best['on'] / best['off']:.2f}); boilerplate lines found: {lines}")


if __name__ == "__main__":
    main()
