"""A local stage task's Spark start-up: spark-submit without and with the JVM class archive
(operators/jvm_archive.py), and the same job as a client of the shared local Spark Connect server
(spark_jobs/engine/connect_server.py, `spark.session: connect`). Wall seconds and CPU seconds (the
JVM and Python together; for the client, the client and what the server's JVM and Python workers spent
during the run) of a job that starts a session, reads and writes Parquet through a Python mapInArrow,
and stops, in the demo recipe's JVM options and the stage operator's logging option. Runs are
interleaved (without, with, client, without, ...) and the medians compared.

    .venv/bin/python bench/bench_spark_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM = ROOT / "spark_jobs" / "engine" / "warm_jvm.py"
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from operators import jvm_archive  # noqa: E402
from operators.spark_stage import driver_java_options  # noqa: E402
from phiflow.recipe import load_recipe  # noqa: E402
from spark_jobs.engine import connect_server  # noqa: E402

JOB = '''
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
out = sys.argv[1]
spark.range(20000).selectExpr("id", "cast(id as string) as text").write.mode("overwrite").parquet(out + "/a")
def upper(batches):
    for b in batches:
        yield b
spark.read.parquet(out + "/a").mapInArrow(upper, "id long, text string").groupBy("text").count() \\
    .write.mode("overwrite").parquet(out + "/b")
spark.stop()
'''


def submit(job: Path, out: Path, conf: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU seconds of the spark-submit process tree) of one run."""
    args = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]"]
    args += [x for k, v in conf.items() for x in ("--conf", f"{k}={v}")]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run([*args, str(job), str(out)], env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stdout[-3000:] + run.stderr[-3000:])
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def tree_cpu(pid: int) -> float:
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())


def client(job: Path, out: Path, url: str, jvm: int) -> tuple[float, float]:
    """(wall, CPU seconds of the client and of the server's process tree) of one client run."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_REMOTE": url}
    before, server_before = resource.getrusage(resource.RUSAGE_CHILDREN), tree_cpu(jvm)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, str(job), str(out)], env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stdout[-3000:] + run.stderr[-3000:])
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, own + tree_cpu(jvm) - server_before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    conf = driver_java_options(dict(load_recipe(ROOT / "recipes" / "demo.yaml").spark.conf))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PHIFLOW_JVM_CACHE"] = tmp  # a fresh archive, written by the warm-up below
        job = Path(tmp) / "job.py"
        job.write_text(JOB)
        t0 = time.perf_counter()
        jvm_archive.ensure(conf, lambda c: submit(WARM, Path(tmp) / "out", c))
        print(f"warm-up job writing the archive ({jvm_archive.archive_path().stat().st_size / 2**20:,.0f} MiB): "
              f"{time.perf_counter() - t0:.1f} s")
        os.environ["PHIFLOW_HOME"] = tmp  # the server's state folder
        server = ["spark-submit", "--master", "local[2]", *(x for k, v in conf.items() for x in ("--conf", f"{k}={v}")),
                  "--class", connect_server.SERVER_CLASS, "spark-internal"]
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
        without, with_, clients = [], [], []
        try:
            t0 = time.perf_counter()
            with connect_server.session(server, env) as url:
                print(f"Spark Connect server start (once): {time.perf_counter() - t0:.1f} s")
            jvm = int(json.loads(next(iter(connect_server.folder().glob("*.json"))).read_text())["jvm"])
            client(job, Path(tmp) / "out", url, jvm)  # the server's Python workers start once, like its JVM
            for _ in range(a.runs):
                without.append(submit(job, Path(tmp) / "out", conf))
                with_.append(submit(job, Path(tmp) / "out", jvm_archive.mapped(conf)))
                with connect_server.session(server, env) as url:
                    clients.append(client(job, Path(tmp) / "out", url, jvm))
        finally:
            connect_server.stop()
    for name, runs in (("without the archive", without), ("with the archive", with_),
                       ("Spark Connect client", clients)):
        print(f"{name}: wall {statistics.median(r[0] for r in runs):.2f} s, "
              f"CPU {statistics.median(r[1] for r in runs):.2f} s (median of {len(runs)})")
    ratio = statistics.median(r[0] for r in without) / statistics.median(r[0] for r in with_)
    cpu = statistics.median(r[1] for r in without) / statistics.median(r[1] for r in with_)
    print(f"spark-submit start: wall without/with = {ratio:.2f}; CPU without/with = {cpu:.2f}")
    ratio = statistics.median(r[0] for r in with_) / statistics.median(r[0] for r in clients)
    cpu = statistics.median(r[1] for r in with_) / statistics.median(r[1] for r in clients)
    print(f"stage run: wall spark-submit (archive)/Connect client = {ratio:.2f}; CPU = {cpu:.2f}")


if __name__ == "__main__":
    main()
