"""Scaling bench: does throughput hold, and memory stay flat, as a snapshot grows? Does cross-snapshot
dedup cost the same for the 8th snapshot as for the 2nd?

Data: synthetic snapshots built from the sample's 8 WARC files (both snapshots, ~440 pages of real
Python-docs and Debian-guide HTML in 20 languages). Copy c of a file gets new WARC-Record-IDs, dates
and, for its UTF-8 pages, a copy-specific rewrite of half the words of every text node (so copies are
mostly distinct documents, not near-duplicates); one page in five is left as it is, so every copy also
holds exact duplicates of the others and dedup has real work. Payload digests and lengths are
recomputed (warcio), so the stage's digest check passes.

Runs, each in a fresh Python process with its own local[2] Spark session (so peak memory is that
run's): extract -> langid -> quality (rules) -> dedup, through the stage code, at 1x, 4x and 16x the
sample (8, 32, 128 WARC files, shards of 8 files); then dedup of 8 equal 1x snapshots in date order
(cross-snapshot on), each against all earlier ones, through the history index and, for comparison,
by reading every earlier partition whole.

Printed: a table of documents, seconds, documents/s, peak RSS of the driver (Python + JVM) and of the
Python workers, the driver JVM's live heap (in use after a full GC, the largest after any stage: what
it retains, where RSS also counts uncollected garbage), spill bytes (Spark REST API), and the line
`scale: docs/s 16x/1x = R1; peak RSS 16x/1x = R2; dedup snapshot 8/2 = R3`
(targets: R1 >= 0.8, R2 <= 1.3, R3 <= 1.3).

Run: python bench/bench_scale.py   (make bench-scale; about 15 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "data" / "sample"
SNAPSHOTS = ("CC-MAIN-2024-10", "CC-MAIN-2024-18")
UI_PORT = 4061
TEXT_NODE = re.compile(rb">([^<]+)<")
WORD = re.compile(rb"[A-Za-z]{3,}")


# -- data ---------------------------------------------------------------------------------------
def sample_files() -> list[Path]:
    out = []
    for snap in SNAPSHOTS:
        listing = gzip.decompress((SAMPLE / "crawl-data" / snap / "warc.paths.gz").read_bytes()).decode().split()
        out += [SAMPLE / rel for rel in listing]
    return out


def rewrite_words(body: bytes, copy: int) -> bytes:
    """Half of the words of every text node replaced by copy-specific words (a keyed hash decides)."""

    def word(m: re.Match) -> bytes:
        w = m.group(0)
        h = hashlib.blake2b(w + copy.to_bytes(4, "big"), digest_size=6).digest()
        if h[0] & 1:
            return w
        return bytes(97 + b % 26 for b in h[1:]) + w[:2]

    return TEXT_NODE.sub(lambda m: b">" + WORD.sub(word, m.group(1)) + b"<", body)


def copy_warc(src: Path, dst: Path, copy: int, day: date) -> None:
    """One sample WARC as copy `copy`: new record ids and dates; most UTF-8 pages rewritten."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    rng = random.Random(f"{src.name}:{copy}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fh, dst.open("wb") as out:
        writer = WARCWriter(out, gzip=True)
        for rec in ArchiveIterator(fh):
            if rec.rec_type != "response":
                continue
            uri = rec.rec_headers.get_header("WARC-Target-URI")
            body = rec.content_stream().read()
            if copy and rng.random() >= 0.2:
                try:
                    body.decode("utf-8")
                    body = rewrite_words(body, copy)
                    uri = f"{uri}?copy={copy}"
                except UnicodeDecodeError:
                    pass
            http = rec.http_headers
            http.replace_header("Content-Length", str(len(body)))
            for h in ("Content-Encoding", "Transfer-Encoding"):
                http.remove_header(h)
            rid = uuid.uuid5(uuid.NAMESPACE_URL, f"{copy}:{uri}:{rec.rec_headers.get_header('WARC-Record-ID')}")
            when = datetime.combine(day, datetime.min.time(), UTC) + timedelta(seconds=rng.randrange(86_400))
            record = writer.create_warc_record(
                uri,
                "response",
                payload=io.BytesIO(body),
                http_headers=http,
                warc_headers_dict={
                    "WARC-Record-ID": f"<urn:uuid:{rid}>",
                    "WARC-Date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
            writer.write_record(record)


def build_snapshot(root: Path, snap: str, copies: range, day: date) -> int:
    """`copies` copies of the sample's 8 files as snapshot `snap` under `root`; the number of files."""
    paths = []
    for c in copies:
        for i, f in enumerate(sample_files()):
            rel = f"crawl-data/{snap}/segments/s{c:03d}/warc/{snap}-{c:03d}-{i:02d}.warc.gz"
            copy_warc(f, root / rel, c, day)
            paths.append(rel)
    listing = root / "crawl-data" / snap / "warc.paths.gz"
    listing.write_bytes(gzip.compress("\n".join(paths).encode()))
    return len(paths)


def bench_recipe(base: Path, snapshots: list[tuple[str, date]], **dedup: int):
    from phiflow.recipe import load_recipe, parse_recipe

    data = load_recipe(ROOT / "recipes" / "demo.yaml").model_dump(mode="json", exclude={"path"})
    for src in data["sources"].values():  # the demo's relative paths, made absolute (they resolve against cwd)
        src["base_url"] = str((ROOT / "recipes" / src["base_url"]).resolve())
    for bench in data["stages"]["decontaminate"]["benchmarks"]:
        bench["path"] = str((ROOT / "recipes" / bench["path"]).resolve())
    data["sources"]["bench"] = {
        "kind": "commoncrawl",
        "base_url": str(base),
        "snapshots": [
            {"id": s, "date": d.isoformat(), "paths": f"crawl-data/{s}/warc.paths.gz"} for s, d in snapshots
        ],
    }
    data["stages"]["commoncrawl_extract"]["shard_files"] = 8
    data["stages"]["quality"]["classifier"] = None  # rules only: the bench measures the engine, not an LLM
    data["stages"]["quality"]["code_classifier"] = None
    data["stages"]["dedup"].update(dedup)
    return parse_recipe(data)


# -- measuring ----------------------------------------------------------------------------------
class Peaks(threading.Thread):
    """Peak RSS of the driver (this process and the JVM) and, apart, of the Python workers (the
    `pyspark.daemon` and the workers it forks); also per stage (`mark`), the driver split into its
    Python process and its JVM, which says where growth comes from.

    The JVM's other children are not counted: the `chmod` and `jspawnhelper` it starts (Hadoop's local
    file system sets permissions through a shell) live for milliseconds, and while one is being spawned
    (a clone of the JVM that has not yet exec'd) it reports the JVM's whole RSS: counted, the JVM
    counted twice at random moments."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.driver = self.workers = 0
        self.by_stage: dict[str, dict[str, int]] = {}
        self.stage = "start"
        self.running = True

    def mark(self, stage: str) -> None:
        self.stage = stage

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while self.running:
            python, jvm, workers = me.memory_info().rss, 0, 0
            for p in me.children(recursive=True):
                try:  # a worker may end between the listing and the reading: count the others
                    rss, cmd = p.memory_info().rss, p.cmdline()
                    if any("pyspark.daemon" in a or "pyspark.worker" in a for a in cmd):
                        workers += rss
                    elif p.ppid() == me.pid:  # the JVM; a clone being spawned is the JVM's child
                        jvm += rss
                except psutil.Error:
                    continue
            self.driver, self.workers = max(self.driver, python + jvm), max(self.workers, workers)
            st = self.by_stage.setdefault(self.stage, {"python": 0, "jvm": 0, "workers": 0})
            st["python"], st["jvm"], st["workers"] = max(st["python"], python), max(st["jvm"], jvm), \
                max(st["workers"], workers)
            time.sleep(0.1)


def live_heap(spark) -> int:
    """The driver JVM's heap in use right after a full GC: what it retains, as opposed to the RSS, which
    also counts garbage the collector has not needed to return yet."""
    jvm = spark.sparkContext._jvm
    jvm.java.lang.System.gc()
    return int(jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed())


def spill_bytes(app: str) -> int:
    url = f"http://127.0.0.1:{UI_PORT}/api/v1/applications/{app}/stages"
    with urllib.request.urlopen(url) as r:
        return sum(int(s.get("memoryBytesSpilled", 0)) + int(s.get("diskBytesSpilled", 0)) for s in json.load(r))


def session(recipe):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    b = (SparkSession.builder.master("local[2]").appName("bench-scale")
         .config("spark.driver.memory", recipe.spark.driver_memory).config("spark.ui.port", str(UI_PORT))
         .config("spark.ui.showConsoleProgress", "false").config("spark.sql.session.timeZone", "UTC")
         .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS"))
    for k, v in recipe.spark.conf.items():
        b = b.config(k, v)
    return b.getOrCreate()


def run_scale(scale: int, out: Path) -> None:
    """One run in this process: build the scale's snapshot, then the four stages; JSON figures to `out`."""
    from phiflow.storage import Lake
    from spark_jobs import commoncrawl_extract, dedup, langid, quality
    from spark_jobs.engine.stage_io import StageContext

    with tempfile.TemporaryDirectory(prefix="phiflow-scale-") as tmp:
        base = Path(tmp) / "cc"
        snap = f"BENCH-{scale:02d}X"
        files = build_snapshot(base, snap, range(scale), date(2024, 2, 1))
        recipe = bench_recipe(base, [(snap, date(2024, 2, 1))])
        spark = session(recipe)
        lake = Lake(str(Path(tmp) / "lake"))
        ctx = StageContext(recipe=recipe, source="bench", partition={"snapshot": snap}, lake=lake)
        peaks = Peaks()
        peaks.start()
        times, docs, live = {}, 0, 0
        for name, stage in (("extract", commoncrawl_extract), ("langid", langid), ("quality", quality),
                            ("dedup", dedup)):
            peaks.mark(name)
            t0 = time.perf_counter()
            m = stage.run(spark, ctx)
            times[name] = time.perf_counter() - t0
            docs = docs or int(m.counters["read"])
            live = max(live, live_heap(spark))
        peaks.running = False
        figures = {"scale": scale, "files": files, "docs": docs, "seconds": sum(times.values()), "stages": times,
                   "driver_rss": peaks.driver, "worker_rss": peaks.workers, "live_heap": live,
                   "by_stage": peaks.by_stage,
                   "spill": spill_bytes(spark.sparkContext.applicationId)}
        spark.stop()
    out.write_text(json.dumps(figures))


def run_history(snapshots: int, out: Path) -> None:
    """`snapshots` equal 1x snapshots, each through extract -> quality -> dedup in date order; dedup timed
    twice a snapshot: against every earlier partition read whole (`history_buckets: 0`), then through the
    history index (the recipe's setting; that run's partitions are the ones later snapshots read)."""
    from phiflow.storage import Lake
    from spark_jobs import commoncrawl_extract, dedup, langid, quality
    from spark_jobs.engine.stage_io import StageContext

    with tempfile.TemporaryDirectory(prefix="phiflow-history-") as tmp:
        base = Path(tmp) / "cc"
        snaps = [(f"HIST-{k:02d}", date(2024, 1, 1) + timedelta(days=30 * k)) for k in range(snapshots)]
        for k, (snap, day) in enumerate(snaps):
            build_snapshot(base, snap, range(k, k + 1), day)
        recipe = bench_recipe(base, snaps)
        full = bench_recipe(base, snaps, history_buckets=0)
        spark = session(recipe)
        lake = Lake(str(Path(tmp) / "lake"))
        times: dict[str, list[float]] = {"dedup_seconds": [], "full_join_seconds": []}
        for snap, _ in snaps:
            ctx = StageContext(recipe=recipe, source="bench", partition={"snapshot": snap}, lake=lake)
            for stage in (commoncrawl_extract, langid, quality):
                stage.run(spark, ctx)
            for key, r in (("full_join_seconds", full), ("dedup_seconds", recipe)):
                t0 = time.perf_counter()
                m = dedup.run(spark, StageContext(recipe=r, source="bench", partition=ctx.partition, lake=lake))
                times[key].append(time.perf_counter() - t0)
            indexed, joined = times["dedup_seconds"][-1], times["full_join_seconds"][-1]
            c = m.counters
            print(f"  {snap}: dedup {indexed:.1f} s (full join {joined:.1f} s), earlier partitions "
                  f"{len(c['earlier_partitions'])}, earlier candidates {c['earlier_candidates']}, merged {c['merged']}",
                  flush=True)
        spark.stop()
    out.write_text(json.dumps(times))


def child(*args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, __file__, *args, "--out", f.name], check=True)
        return json.loads(Path(f.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, help="(internal) one run at this scale")
    ap.add_argument("--history", type=int, help="(internal) dedup of this many snapshots in sequence")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--no-history", action="store_true", help="only the scales (no R3)")
    a = ap.parse_args()
    if a.scale:
        return run_scale(a.scale, a.out)
    if a.history:
        return run_history(a.history, a.out)
    rows = [child("--scale", s) for s in a.scales.split(",")]
    print(f"\n{'scale':>5} {'files':>6} {'docs':>7} {'seconds':>8} {'docs/s':>7} {'driver RSS':>11} "
          f"{'live heap':>10} {'worker RSS':>11} {'spill':>9}   seconds by stage")
    for r in rows:
        print(f"{r['scale']:>4}x {r['files']:>6} {r['docs']:>7} {r['seconds']:>8.1f} {r['docs'] / r['seconds']:>7.1f} "
              f"{r['driver_rss'] / 2**20:>7.0f} MiB {r['live_heap'] / 2**20:>6.0f} MiB "
              f"{r['worker_rss'] / 2**20:>7.0f} MiB {r['spill'] / 2**20:>5.1f} MiB"
              f"   " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items()))
    print("\npeak RSS by stage, MiB (driver Python / driver JVM / Python workers):")
    for r in rows:
        print(f"{r['scale']:>4}x   " + ", ".join(f"{k} {v['python'] / 2**20:.0f}/{v['jvm'] / 2**20:.0f}/"
                                            f"{v['workers'] / 2**20:.0f}" for k, v in r["by_stage"].items()))
    first, last = rows[0], rows[-1]
    r1 = (last["docs"] / last["seconds"]) / (first["docs"] / first["seconds"])
    r2 = (last["driver_rss"] + last["worker_rss"]) / (first["driver_rss"] + first["worker_rss"])
    if a.no_history:
        print(f"scale: docs/s {last['scale']}x/{first['scale']}x = {r1:.2f}; peak RSS = {r2:.2f}")
        return None
    print("\ndedup of 8 equal snapshots in date order (each against all earlier ones):")
    history = child("--history", "8")
    hist = history["dedup_seconds"]
    r3 = hist[7] / hist[1]
    print(f"  dedup seconds, history index: {', '.join(f'{s:.1f}' for s in hist)}")
    print(f"  dedup seconds, full join:     {', '.join(f'{s:.1f}' for s in history['full_join_seconds'])}"
          f" (8/2 = {history['full_join_seconds'][7] / history['full_join_seconds'][1]:.2f})")
    print("targets: R1 >= 0.8, R2 <= 1.3, R3 <= 1.3")
    print(f"scale: docs/s {last['scale']}x/{first['scale']}x = {r1:.2f}; peak RSS {last['scale']}x/{first['scale']}x "
          f"= {r2:.2f}; dedup snapshot 8/2 = {r3:.2f}")


if __name__ == "__main__":
    main()
