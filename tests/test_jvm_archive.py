"""Class data sharing for the local spark-submit JVM (operators/jvm_archive.py): the warm-up job writes the
archive once, stage JVMs map it, and nothing about it can fail a stage: a class path the JVM cannot
archive, a failed warm-up or a concurrent writer leave the stage running as it would without one."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from operators import jvm_archive
from operators.jvm_archive import JAVA_OPTIONS

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[1]
WARM = ROOT / "spark_jobs" / "engine" / "warm_jvm.py"


def submit(job: Path, conf: dict[str, str], **env: str) -> None:
    args = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]"]
    args += [x for k, v in conf.items() for x in ("--conf", f"{k}={v}")]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", **env}
    run = subprocess.run([*args, str(job)], env=env, capture_output=True, text=True, timeout=300)
    if run.returncode:
        raise RuntimeError(f"spark-submit exited {run.returncode}: {(run.stdout + run.stderr)[-1500:]}")


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "lock")


def test_the_warm_up_writes_the_archive_and_stage_jvms_map_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PHIFLOW_JVM_CACHE", str(tmp_path / "jvm cache"))  # a path with a space in it
    archive = jvm_archive.archive_path()
    conf = {JAVA_OPTIONS: "-XX:+UseSerialGC"}
    assert jvm_archive.mapped(conf) == conf  # none yet
    assert jvm_archive.ensure(conf, lambda c: submit(WARM, c))
    assert archive.stat().st_size > 10 * 2**20 and files(archive.parent) == [archive.name]  # thousands of classes
    stage = jvm_archive.mapped(conf)
    assert stage[JAVA_OPTIONS] == f'-XX:+UseSerialGC -XX:SharedArchiveFile="{archive}"'  # quoted: spaces
    submit(WARM, {JAVA_OPTIONS: f"{stage[JAVA_OPTIONS]} -Xshare:on"})  # -Xshare:on: fails unless it maps
    assert jvm_archive.ensure(conf, lambda c: pytest.fail("written again"))


def test_a_class_path_that_cannot_be_archived_fails_the_warm_up_not_the_stage(tmp_path, monkeypatch) -> None:
    """A non-empty SPARK_CONF_DIR is on the driver's class path: writing an archive kills that JVM at exit
    (why the archive is not written by a stage run), and mapping one is only a warning."""
    monkeypatch.setenv("PHIFLOW_JVM_CACHE", str(tmp_path / "jvm"))
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.ui.enabled false\n")
    assert not jvm_archive.ensure({}, lambda c: submit(WARM, c, SPARK_CONF_DIR=str(conf_dir)))
    assert files(jvm_archive.archive_path().parent) == []  # no archive, no partial file
    foreign = jvm_archive.archive_path()
    foreign.write_bytes(os.urandom(4096))  # an archive this JVM cannot use
    submit(WARM, jvm_archive.mapped({}), SPARK_CONF_DIR=str(conf_dir))


def test_a_concurrent_writer_is_not_waited_for(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PHIFLOW_JVM_CACHE", str(tmp_path / "jvm"))
    folder = jvm_archive.archive_path().parent
    folder.mkdir(parents=True)
    with open(folder / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert not jvm_archive.ensure({}, lambda c: pytest.fail("a second writer ran"))
    assert jvm_archive.ensure({}, lambda c: Path(c[JAVA_OPTIONS].split("=", 1)[1].strip('"')).write_bytes(b"classes"))
    assert jvm_archive.archive_path().read_bytes() == b"classes" and files(folder) == [jvm_archive.archive_path().name]
