"""A small Spark job whose only product is the classes it loads: run once with `-XX:ArchiveClassesAtExit`
(operators/jvm_archive.py), it leaves the JVM class archive every later stage run maps. It goes through
what the stages go through: Parquet written and read, a Python `mapInArrow`, a shuffle, a window, an
observed metric, a broadcast join and a local checkpoint, in a scratch folder it removes.

    spark-submit spark_jobs/engine/warm_jvm.py
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import Observation, SparkSession, Window
from pyspark.sql import functions as F


def same(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield from batches


def main() -> None:
    spark = SparkSession.builder.appName("phiflow-warm-jvm").getOrCreate()
    scratch = tempfile.mkdtemp(prefix="phiflow-warm-jvm-")
    try:
        rows = spark.range(2000).select("id", F.concat(F.lit("t"), F.col("id") % 4).alias("text"))
        rows.write.mode("overwrite").partitionBy("text").parquet(f"{scratch}/a")
        seen = Observation("warm")
        read = spark.read.parquet(f"{scratch}/a").mapInArrow(same, "id long, text string").observe(
            seen, F.count(F.lit(1)).alias("n"))
        ranked = read.withColumn("first", F.min("id").over(Window.partitionBy("text").orderBy("id")))
        small = F.broadcast(ranked.groupBy("text").count())
        ranked.join(small, "text").localCheckpoint().write.mode("overwrite").parquet(f"{scratch}/b")
        assert seen.get["n"] == 2000
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
