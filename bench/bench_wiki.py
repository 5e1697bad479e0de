"""wikipedia_extract pages/s per core vs a bare single-process loop over the same dumps, and the
stage's speed-up from one to two cores.

The baseline reads each dump's index, then decompresses every bz2 stream, parses it with mwxml and
cleans each page with mwparserfromhell (the stage's own `wikitext` functions), in one process,
without Spark. The sample dumps (data/sample/wiki) are repeated REPEAT times into one bigger
multistream dump per wiki (page streams copied, index offsets shifted), so Spark's job overhead is
amortized as it is on a real dump.

    .venv/bin/python bench/bench_wiki.py
"""

from __future__ import annotations

import bz2
from pathlib import Path

from common import SAMPLE, report, scratch_dir, spark_local, timed

from phiflow.recipe import parse_recipe
from phiflow.records.wikitext import (
    BrokenPage,
    StreamError,
    clean_page,
    decompress_streams,
    iter_pages,
    parse_index,
    read_header,
    stream_ranges,
)
from phiflow.storage import Lake
from spark_jobs import wikipedia_extract
from spark_jobs.engine.stage_io import StageContext

ROUNDS = 2
REPEAT = 20
STREAMS_PER_TASK = 10
WIKIS = ("enwiki", "dewiki", "frwiki", "jawiki")
DATE = "20240601"


def name(wiki: str, kind: str) -> str:
    return f"{wiki}/{DATE}/{wiki}-{DATE}-pages-articles-multistream{kind}"


def repeat_dump(wiki: str, out: Path) -> None:
    """The sample dump with its page streams REPEAT times: header stream, then the copies."""
    data = (SAMPLE / "wiki" / name(wiki, ".xml.bz2")).read_bytes()
    lines = bz2.decompress((SAMPLE / "wiki" / name(wiki, "-index.txt.bz2")).read_bytes()).decode().splitlines()
    first = min(int(line.split(":", 1)[0]) for line in lines)
    pages = data[first:]
    index = []
    for k in range(REPEAT):
        for line in lines:
            off, rest = line.split(":", 1)
            index.append(f"{int(off) + k * len(pages)}:{rest}")
    (out / wiki / DATE).mkdir(parents=True)
    (out / name(wiki, ".xml.bz2")).write_bytes(data[:first] + pages * REPEAT)
    (out / name(wiki, "-index.txt.bz2")).write_bytes(bz2.compress("\n".join(index).encode() + b"\n"))


def bare(base: Path, recipe) -> int:
    """Pages (kept or dropped) through a plain loop: index, streams, mwxml, mwparserfromhell."""
    cfg = wikipedia_extract.clean_config(recipe.stages.wikipedia_extract)
    n = 0
    for wiki in WIKIS:
        data = (base / name(wiki, ".xml.bz2")).read_bytes()
        index = bz2.decompress((base / name(wiki, "-index.txt.bz2")).read_bytes()).decode().splitlines()
        offsets = parse_index(index)
        site = read_header(data[: offsets[0][0]])
        for start, end, count in stream_ranges(offsets, len(data)):
            try:
                xml = decompress_streams(data[start:end])
            except StreamError:
                n += count
                continue
            for page in iter_pages(site, xml):
                if not isinstance(page, BrokenPage):
                    clean_page(page, site, cfg)
                n += 1
    return n


def stage(spark, recipe, lake: Lake) -> int:
    return sum(
        wikipedia_extract.run(spark, StageContext(recipe, "wiki", {"dump": f"{w}-{DATE}"}, lake)).counters["read"]
        for w in WIKIS
    )


def main() -> None:
    with scratch_dir() as d:
        for wiki in WIKIS:
            repeat_dump(wiki, d / "wiki")
        recipe = parse_recipe(
            {
                "name": "bench",
                "sources": {
                    "wiki": {
                        "kind": "wikipedia",
                        "base_url": str(d / "wiki"),
                        "dumps": [{"wiki": w, "date": "2024-06-01"} for w in WIKIS],
                    }
                },
                # tasks of STREAMS_PER_TASK streams (phi4 runs 20): one 100-page stream per task would
                # measure Spark's per-task cost, not extraction
                "stages": {"wikipedia_extract": {"failure_budget": 0.5, "streams_per_task": STREAMS_PER_TASK}},
            }
        )
        lake = Lake(str(d / "lake"))
        times: dict[int, float] = {}
        for cores in (1, 2):
            spark = spark_local(cores)
            stage(spark, recipe, lake)  # warm-up: JVM, Python workers
            best_bare = best_stage = float("inf")
            for _ in range(ROUNDS):  # interleaved, best of ROUNDS: noise on the shared machine hits both
                if cores == 1:
                    t, n_bare = timed(lambda: bare(d / "wiki", recipe))
                    best_bare = min(best_bare, t)
                t, n_stage = timed(lambda s=spark: stage(s, recipe, lake))
                best_stage = min(best_stage, t)
            times[cores] = best_stage
            if cores == 1:
                t_bare = best_bare
            spark.stop()
    assert n_bare == n_stage, (n_bare, n_stage)
    print(f"\n{n_stage} pages ({len(WIKIS)} dumps, the sample x{REPEAT})")
    report(
        "wikipedia_extract, pages/s",
        [
            ("bare loop (mwxml + mwparserfromhell), 1 core", n_bare / t_bare),
            ("phiflow stage (Spark local[1], commit incl.)", n_stage / times[1]),
            ("phiflow stage (Spark local[2], commit incl.)", n_stage / times[2]),
        ],
        baseline="bare loop (mwxml + mwparserfromhell), 1 core",
        target=">= 0.8 of the bare loop on local[1]",
    )
    print(f"  speed-up local[1] -> local[2]: x{times[1] / times[2]:.2f}")


if __name__ == "__main__":
    main()
