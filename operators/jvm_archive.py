"""Class data sharing for the local spark-submit JVM: every stage task on the embedded default starts a
JVM that loads and verifies the same thousands of Spark classes. A small job run once
(spark_jobs/engine/warm_jvm.py, with `-XX:ArchiveClassesAtExit`) writes them to an archive; every stage run
then maps it (`-XX:SharedArchiveFile`) and starts in less time and CPU, which the demo's concurrent
tasks share (bench/bench_spark_start.py).

Why a job of its own rather than the first stage run: writing an archive is fatal to the JVM when its
class path cannot be archived (a non-empty directory on it, such as a SPARK_CONF_DIR), and a stage's
exit status must not depend on that; mapping an archive that does not fit is only a warning. An
archive is named by the Spark install and the Java it was made with, so a new one writes its own; the
archives live in the user's cache (phiflow.settings.jvm_cache, ~170 MB each). Only for a local master:
on a cluster the driver JVM may start on another host, where the path means nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from phiflow import settings

JAVA_OPTIONS = "spark.driver.extraJavaOptions"
log = logging.getLogger(__name__)


def archive_path() -> Path:
    """The archive of this Spark install and Java: a JVM maps only an archive made on its own class path
    (the install's jars) by its own Java build, so each pair has its own (another clone's venv, another
    JAVA_HOME)."""
    spark = Path(importlib.util.find_spec("pyspark").origin).parent
    java = os.path.realpath(os.environ.get("JAVA_HOME") or shutil.which("java") or "java")
    key = hashlib.sha256(f"{spark}\0{java}".encode()).hexdigest()[:12]
    return settings.jvm_cache() / f"spark-{version('pyspark')}-{key}.jsa"


def with_java_option(conf: dict[str, str], option: str) -> dict[str, str]:
    """`conf` with `option` added to the driver JVM's options."""
    return {**conf, JAVA_OPTIONS: f"{conf.get(JAVA_OPTIONS, '')} {option}".strip()}


def mapped(conf: dict[str, str]) -> dict[str, str]:
    """`conf` with the driver JVM option that maps the archive, when there is one."""
    archive = archive_path()
    return with_java_option(conf, f'-XX:SharedArchiveFile="{archive}"') if archive.exists() else conf


def ensure(conf: dict[str, str], submit: Callable[[dict[str, str]], None]) -> bool:
    """Write the archive if there is none: `submit` runs the warm-up job with `conf` plus the option that
    dumps its classes into a file of its own, which becomes the archive when the job succeeds. A task
    that finds another writing it goes on without (the lock is not waited for). A failure is logged, not
    raised: the stage runs as it would without an archive. True when the archive exists afterwards."""
    archive = archive_path()
    if archive.exists():
        return True
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive.parent / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if archive.exists():
            return True
        written = archive.with_name(f"{archive.stem}.{uuid.uuid4().hex}.tmp")
        try:
            submit(with_java_option(conf, f'-XX:ArchiveClassesAtExit="{written}"'))
            if written.exists():
                os.replace(written, archive)  # atomic: a reader maps a whole archive or none
        except Exception as e:  # an archive is an optimisation, never a reason to fail a stage
            log.warning("no JVM class archive (stage JVMs start without one): %s", e)
        finally:
            written.unlink(missing_ok=True)
    return archive.exists()
