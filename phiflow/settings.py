"""Where phiflow keeps its state: one home folder and one lake root, both overridable.

The embedded default keeps everything under `.phiflow/` in the checkout; production moves the
lake with one variable (`PHIFLOW_LAKE=s3://bucket/lake`) and keeps the recipe unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def home() -> Path:
    """Root of local state (Airflow home, lineage file, caches)."""
    return Path(os.environ.get("PHIFLOW_HOME", PROJECT_ROOT / ".phiflow")).resolve()


def lake_root() -> str:
    """The lake root: a local path or an fsspec URL (s3://, hdfs://, ...)."""
    return os.environ.get("PHIFLOW_LAKE") or str(home() / "lake")


def lineage_file() -> Path:
    return home() / "lineage" / "events.jsonl"


def airflow_home() -> Path:
    return home() / "airflow"


def model_cache() -> Path:
    """Models converted for fast loading (the offline LLM's GGUF dequantized once to safetensors):
    per user, like Hugging Face's cache, so fresh clones and test lakes share it."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phiflow" / "models"
    return Path(os.environ.get("PHIFLOW_MODEL_CACHE", default))


def jvm_cache() -> Path:
    """Class archives of the local Spark JVM (operators/jvm_archive.py): per user and keyed by the Spark
    install and Java they were made with, so test homes and demo runs of one checkout share one."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phiflow" / "jvm"
    return Path(os.environ.get("PHIFLOW_JVM_CACHE", default))


def default_recipe() -> Path:
    return Path(os.environ.get("PHIFLOW_RECIPE", PROJECT_ROOT / "recipes" / "demo.yaml"))


# sqlite3 waits this long for a lock before "database is locked" (its own default is 5 s): on the
# embedded default the scheduler, the dag-processor and a CLI `backfill create` write to one file.
# scripts/env.sh points Airflow's [database] sql_alchemy_connect_args here when the DB is SQLite.
SQLITE_CONNECT_ARGS = {"timeout": 60}


def attempt_ttl_s() -> float:
    """An uncommitted attempt whose newest file (its writer's `_LEASE` heartbeat included) is older than
    this belongs to a dead writer and may be collected. Writers renew the lease every quarter of it."""
    return float(os.environ.get("PHIFLOW_ATTEMPT_TTL_S", 300))


def superseded_grace_s() -> float:
    """How long a superseded attempt stays readable after the commit that replaced it: a reader that
    read the old manifest finishes its read (Delta's VACUUM retention, Iceberg's expire-snapshots age)."""
    return float(os.environ.get("PHIFLOW_SUPERSEDED_GRACE_S", 3600))
