"""Shared bench helpers: a timer, a local[1] Spark session (per-core figures), a scratch recipe."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def spark_one_core():
    """One executor core, so stage throughput compares with a single-process loop per core."""
    return spark_local(1)


def spark_local(cores: int):
    """A local session with `cores` executor cores (stop the previous one first to change it)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("phiflow-bench")
        .config("spark.driver.memory", "3g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .getOrCreate()
    )


@contextmanager
def scratch_dir():
    d = Path(tempfile.mkdtemp(prefix="phiflow-bench-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def report(name: str, rows: list[tuple[str, float]], baseline: str, target: str) -> None:
    """Print rates and ratios against the named baseline."""
    rates = dict(rows)
    print(f"\n{name}")
    for label, rate in rows:
        ratio = rate / rates[baseline]
        print(f"  {label:<44} {rate:10.1f} /s   x{ratio:5.2f} of {baseline}")
    print(f"  target: {target}")
