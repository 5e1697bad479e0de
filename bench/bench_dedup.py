"""Dedup speed, quality and footprint against a datasketch loop at equal parameters, same corpus.

Corpus: the sample's pages (both snapshots, real HTML text) times ten: each copy has a share of its
words replaced (0-40%), so there are near-duplicates at many similarities. Printed:
- hashing docs/s on one core: phiflow MinHasher.batch vs datasketch MinHash.update_batch (ratio);
- end to end: the Spark dedup stage (local[2]) vs a datasketch MinHashLSH query/insert loop with the
  same verification threshold and union-find (one core), docs/s, ratio, precision and recall of the
  merges against true shingle Jaccard (>= threshold is a true duplicate);
- the stage's peak RSS (driver JVM + Python workers) and shuffle bytes (Spark REST API).

Timed runs are interleaved (datasketch, stage, datasketch, ...) and the best of `--repeats` counts
for each side; the stage runs in the demo recipe's Spark session settings after one warm-up run.

Run: python bench/bench_dedup.py [--copies 10] [--repeats 3] [--seeds 1] [--seed-offset 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phiflow.recipe import CommonCrawlExtractParams, load_recipe  # noqa: E402
from phiflow.records.minhash import SIGNATURE_FAMILY, MinHasher, jaccard  # noqa: E402
from phiflow.records.ngrams import words  # noqa: E402
from phiflow.records.warc_records import iter_rows  # noqa: E402
from phiflow.schema import LANGID_FIELDS, WEB_EXTRACTED, with_drop_reason, with_fields  # noqa: E402
from phiflow.storage import Lake  # noqa: E402
from spark_jobs import dedup  # noqa: E402
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
LANGID = with_fields(WEB_EXTRACTED, LANGID_FIELDS)


def sample_texts() -> list[str]:
    out = []
    for snap in ("CC-MAIN-2024-10", "CC-MAIN-2024-18"):
        for rel in gzip.decompress((SAMPLE / "crawl-data" / snap / "warc.paths.gz").read_bytes()).decode().split():
            with (SAMPLE / rel).open("rb") as fh:
                out += [r["text"] for r in iter_rows(fh, rel, "web", CommonCrawlExtractParams())
                        if r.get("drop_reason") is None and r.get("text")]
    return out


def corpus(copies: int) -> list[str]:
    rng = np.random.default_rng(0)
    base = sample_texts()
    docs = []
    for c in range(copies):
        for t in base:
            toks = t.split()
            rate = 0.0 if c == 0 else float(rng.choice([0.01, 0.03, 0.08, 0.2, 0.4]))
            for i in np.flatnonzero(rng.random(len(toks)) < rate):
                toks[i] = f"x{rng.integers(1_000_000)}"
            docs.append(" ".join(toks) + ("" if c == 0 else f" copy{c}"))
    return docs


def realistic_corpus(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Documents shaped like a crawl partition, not copies of the sample: mostly singletons (each two to
    four passages of different pages, 40-1,500 words, log-normal lengths around 330), one giant
    document of 200,000 words, and near-duplicates of earlier documents across the whole Jaccard
    range (1-50% of words replaced) plus exact copies, about 15% in all. The sample's pages are
    Python documentation and the Debian installation guide in 20 languages, so text is multilingual.
    Returns the documents and the (original, copy) pairs."""
    rng = np.random.default_rng(seed)
    pages = [t.split() for t in sample_texts() if len(t.split()) >= 60]
    def passage(length: int) -> list[str]:
        page = pages[int(rng.integers(len(pages)))]
        length = min(length, len(page))
        start = int(rng.integers(len(page) - length + 1))
        return page[start : start + length]
    docs: list[str] = []
    pairs: list[tuple[int, int]] = []
    giant = []
    while len(giant) < 200_000:
        giant += passage(2_000)
    docs.append(" ".join(giant[:200_000]))
    while len(docs) < n:
        if len(docs) > 100 and rng.random() < 0.15:
            src = int(rng.integers(1, len(docs)))
            toks = docs[src].split()
            rate = float(rng.choice([0.0, 0.01, 0.03, 0.08, 0.15, 0.25, 0.35, 0.5]))
            for i in np.flatnonzero(rng.random(len(toks)) < rate):
                toks[i] = f"x{rng.integers(1_000_000)}"
            pairs.append((src, len(docs)))
            docs.append(" ".join(toks))
            continue
        total = int(np.clip(rng.lognormal(np.log(330), 0.8), 40, 1500))
        parts = int(rng.integers(2, 5))
        docs.append(" ".join(w for _ in range(parts) for w in passage(max(total // parts, 10))))
    return docs, pairs


def crawl_urls(n: int, seed: int = 0) -> list[str]:
    """Page urls whose hosts have power-law page counts, as in a crawl partition: host sizes drawn from
    a Zipf(2) law (about 60% of hosts have one page in the partition, a few have hundreds), pages
    shuffled over them. The boilerplate pass hashes the lines of the pages of hosts big enough to
    have a template."""
    rng = np.random.default_rng(seed)
    hosts: list[int] = []
    host = 0
    while len(hosts) < n:
        hosts += [host] * int(min(rng.zipf(2.0), 2_000))
        host += 1
    return [f"https://site{h}.example/{i}" for i, h in enumerate(rng.permutation(hosts[:n]))]


def datasketch_loop(texts: list[str], mh: MinHasher, threshold: float, seed: int = 1) -> tuple[float, dict[int, int]]:
    """The baseline: per document MinHash (same shingles), LSH query, verify, union-find, insert."""
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=mh.num_perm, params=(mh.bands, mh.rows))
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    sigs = {}
    for i, t in enumerate(texts):
        m = MinHash(num_perm=mh.num_perm, seed=seed)
        toks = words(t)
        k = mh.shingle_size
        m.update_batch([" ".join(toks[j:j + k]).encode() for j in range(max(len(toks) - k + 1, 1))])
        for c in lsh.query(m):
            if m.jaccard(sigs[c]) >= threshold:
                a, b = find(i), find(c)
                parent[max(a, b)] = min(a, b)
        lsh.insert(i, m)
        sigs[i] = m
    return time.perf_counter() - t0, {i: find(i) for i in range(len(texts))}


def quality(clusters: dict[int, int], texts: list[str], mh: MinHasher, threshold: float, pairs) -> tuple[float, float]:
    """Precision: merged (doc, cluster root) pairs whose true Jaccard >= threshold - 0.1;
    recall: planted (original, copy) pairs with true Jaccard >= threshold that ended in one cluster."""
    sh = {}

    def s(i: int):
        if i not in sh:
            sh[i] = mh.shingles(texts[i])
        return sh[i]

    merged = [(i, r) for i, r in clusters.items() if r != i]
    good = sum(jaccard(s(i), s(r)) >= threshold - 0.1 for i, r in merged)
    true_pairs = [(a, b) for a, b in pairs if jaccard(s(a), s(b)) >= threshold]
    found = sum(clusters[a] == clusters[b] for a, b in true_pairs)
    return good / max(len(merged), 1), found / max(len(true_pairs), 1)


class PeakRss(threading.Thread):
    """Peak resident memory of this process tree (driver JVM and Python workers included)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = 0, True

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while self.running:
            try:
                procs = [me, *me.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--realistic", type=int, default=0, metavar="N",
                    help="N documents shaped like a crawl partition (realistic_corpus) instead of --copies")
    ap.add_argument("--one-site", action="store_true",
                    help="every page on one host (the degenerate case: all pages go through the boilerplate pass)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs of each side; the best counts")
    ap.add_argument("--seeds", type=int, default=1, help="hash seeds to average precision and recall over (both sides)")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="the seeds are the recipe's (stage) and 1 (datasketch) plus offset .. offset + seeds - 1; "
                         "0 includes the timed runs' own seeds")
    a = ap.parse_args()
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    p = recipe.stages.dedup
    mh = MinHasher(p.shingle_size, p.num_perm, p.bands, p.rows, p.seed)
    if a.realistic:
        texts, pairs = realistic_corpus(a.realistic)
        lengths = sorted(len(t.split()) for t in texts)
        shape = (f"realistic: median {lengths[len(lengths) // 2]} words, largest {lengths[-1]:,}, "
                 f"{len(pairs)} near or exact copies")
    else:
        texts = corpus(a.copies)
        n_base = len(texts) // a.copies
        pairs = [(i, c * n_base + i) for c in range(1, a.copies) for i in range(n_base)]
        shape = f"{n_base} sample pages x {a.copies}"
    urls = [f"https://ex.org/{i}" for i in range(len(texts))] if a.one_site else crawl_urls(len(texts))
    print(f"corpus: {len(texts)} documents ({shape}) on {len(set(u.split('/')[2] for u in urls)):,} hosts, "
          f"{sum(len(t) for t in texts) / 1e6:.1f} MB of text; shingles {p.shingle_size}, {p.num_perm} perms, "
          f"{p.bands} bands x {p.rows} rows, threshold {p.threshold}")
    import datasketch

    print(f"baseline: datasketch {datasketch.__version__}, MinHash scheme {datasketch.MinHash(num_perm=1).scheme} "
          f"(sha1 of each shingle's text); phiflow: minhash.SIGNATURE_FAMILY {SIGNATURE_FAMILY}")

    from datasketch import MinHash

    def datasketch_hashing() -> None:
        for t in texts:
            toks = words(t)
            MinHash(num_perm=p.num_perm, seed=1).update_batch(
                [" ".join(toks[j:j + p.shingle_size]).encode() for j in range(max(len(toks) - p.shingle_size + 1, 1))])

    ours = theirs = float("inf")
    for _ in range(a.repeats):  # interleaved, best of each
        ours = min(ours, timed(lambda: mh.batch(texts)))
        theirs = min(theirs, timed(datasketch_hashing))
    print(f"hashing, one core, best of {a.repeats}: phiflow {len(texts) / ours:,.0f} docs/s, "
          f"datasketch {len(texts) / theirs:,.0f} docs/s, ratio {theirs / ours:.2f}")

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers need this venv's pyarrow
    builder = (SparkSession.builder.master("local[2]").appName("bench-dedup")
               .config("spark.driver.memory", recipe.spark.driver_memory).config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.port", "4050"))
    for k, v in recipe.spark.conf.items():  # the demo recipe's session, as `make demo` runs the stage
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        ctx = StageContext(recipe=recipe, source="web", partition={"snapshot": "CC-MAIN-2024-10"}, lake=lake)
        t0 = datetime(2024, 2, 20, tzinfo=UTC)
        rows = [(f"d{i:07d}", "web", f"warc://{i}", [], url, None, None, None,
                 t0 + timedelta(seconds=i), 200, "text/html", "utf-8", "", t, 0, len(t), "en", 1.0, None)
                for i, (t, url) in enumerate(zip(texts, urls, strict=True))]
        df = spark.createDataFrame(rows, spark_schema(with_drop_reason(LANGID))).repartition(8)
        commit_partition(spark, ctx, stage="langid", dataset=f"web.{p.input}", rows=df, schema=LANGID, inputs=[],
                         counters={}, reasons={})
        dedup.run(spark, ctx)  # warm-up (JIT, Python workers), as the other benches do; the timed runs replace it
        app = spark.sparkContext.applicationId
        before = shuffle_bytes(app)
        mon = PeakRss()
        mon.start()
        m = dedup.run(spark, ctx)
        mon.running = False
        shuffled = shuffle_bytes(app) - before
        ds_seconds = stage_seconds = float("inf")
        ratios = []
        for _ in range(a.repeats):  # interleaved, best of each: this VM's speed drifts within minutes
            ds_time, ds_clusters = datasketch_loop(texts, mh, p.threshold)
            sp_time = timed(lambda: dedup.run(spark, ctx))
            ratios.append(ds_time / sp_time)
            ds_seconds, stage_seconds = min(ds_seconds, ds_time), min(stage_seconds, sp_time)
        sp_quality, ds_quality = [], []
        for k in range(a.seed_offset, a.seed_offset + a.seeds):  # other hash functions on both sides
            if k:  # k = 0: the timed runs' lake and clusters
                params = p.model_copy(update={"seed": p.seed + k})
                other = recipe.model_copy(update={"stages": recipe.stages.model_copy(update={"dedup": params})})
                dedup.run(spark, StageContext(recipe=other, source="web", partition=ctx.partition, lake=lake))
                ds_clusters = datasketch_loop(texts, mh, p.threshold, seed=1 + k)[1]
            sp_quality.append(quality(stage_clusters(lake, ctx, len(texts)), texts, mh, p.threshold, pairs))
            ds_quality.append(quality(ds_clusters, texts, mh, p.threshold, pairs))
    spark.stop()
    print(f"end to end, best of {a.repeats}: spark stage (local[2]) {len(texts) / stage_seconds:,.0f} docs/s "
          f"({stage_seconds:.1f} s), datasketch loop (1 core) {len(texts) / ds_seconds:,.0f} docs/s "
          f"({ds_seconds:.1f} s), "
          f"ratio {ds_seconds / stage_seconds:.2f} (per repeat {[round(r, 2) for r in ratios]})")
    for name, qs in (("spark stage", sp_quality), ("datasketch loop", ds_quality)):
        print(f"quality, {name}: precision {np.mean([q[0] for q in qs]):.4f} recall {np.mean([q[1] for q in qs]):.4f}"
              f" +- {standard_error([q[1] for q in qs]):.4f} (mean of {len(qs)} seeds +- its standard error; "
              f"recall per seed {[round(q[1], 4) for q in qs]})")
    if a.seeds > 1:
        diff = np.mean([q[1] for q in sp_quality]) - np.mean([q[1] for q in ds_quality])
        se = np.hypot(standard_error([q[1] for q in sp_quality]), standard_error([q[1] for q in ds_quality]))
        print(f"recall, stage - datasketch: {diff:+.4f} +- {se:.4f} ({diff / se:+.1f} standard errors)")
    print(f"stage: kept {m.row_count} of {len(texts)}, clusters {m.counters['clusters']}, "
          f"candidate pairs {m.counters['candidate_pairs']}, cc rounds {m.counters.get('cc_rounds')}; "
          f"peak RSS {mon.peak / 2**20:,.0f} MiB, shuffle written {shuffled / 2**20:,.1f} MiB")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def standard_error(values: list[float]) -> float:
    """Of the mean, from the seed-to-seed spread (0 for one seed)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def stage_clusters(lake: Lake, ctx: StageContext, n: int) -> dict[int, int]:
    """doc index -> cluster root index, from the committed dup_clusters partition."""
    cl = lake.read_table(lake.require("web.dup_clusters", ctx.partition)).to_pylist()
    by_id = {f"d{i:07d}": i for i in range(n)}
    clusters = {i: i for i in range(n)}
    for r in cl:
        clusters[by_id[r["doc_id"]]] = by_id[r["cluster_id"]]
        clusters[by_id[r["survivor_id"]]] = by_id[r["cluster_id"]]  # the survivor belongs to the cluster too
    return clusters


def shuffle_bytes(app: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:4050/api/v1/applications/{app}/stages") as r:
        return sum(s.get("shuffleWriteBytes", 0) for s in json.load(r))


if __name__ == "__main__":
    main()
