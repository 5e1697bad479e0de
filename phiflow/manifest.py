"""The partition manifest: the record of what a stage committed and how.

`_MANIFEST.json` is the commit point of a partition (see storage.py). Its `digest` covers only what
determines the rows (data, schema, inputs, recipe, parameters, code), not timings or the Airflow
run, so a rerun that produces the same rows has the same digest; downstream consumers use it to
skip work they have already done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_NAME = "_MANIFEST.json"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def partition_key(partition: dict[str, str]) -> str:
    """`snapshot=CC-MAIN-2024-10/shard=00001`: keys keep the recipe's order (Hive layout)."""
    return "/".join(f"{k}={v}" for k, v in partition.items())


def parse_partition_key(key: str) -> dict[str, str]:
    """The inverse of `partition_key`."""
    return dict(part.split("=", 1) for part in key.split("/") if part)


@dataclass
class InputRef:
    """One input partition a stage read, pinned by the digest of its manifest at read time."""

    dataset: str
    partition: dict[str, str]
    digest: str


@dataclass
class DataFile:
    path: str  # relative to the partition directory
    bytes: int


@dataclass
class Manifest:
    dataset: str
    partition: dict[str, str]
    stage: str
    attempt: str
    files: list[DataFile]
    row_count: int
    bytes: int
    schema: list[dict[str, str]]
    schema_fingerprint: str
    content_digest: str  # order-independent hash of all rows, computed from the written files
    inputs: list[InputRef] = field(default_factory=list)
    recipe_digest: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    airflow: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    generation: int = 0  # 1 for a partition's first commit, +1 for each later one; not part of the digest

    @property
    def digest(self) -> str:
        """Digest of everything that determines the rows; equal across identical reruns.

        The code version is recorded but left out: a commit that changes no output (docs, a
        refactor) must not make every downstream consumer redo its work.
        """
        return sha256_json(
            {
                "dataset": self.dataset,
                "partition": self.partition,
                "row_count": self.row_count,
                "schema_fingerprint": self.schema_fingerprint,
                "content_digest": self.content_digest,
                "inputs": [asdict(i) for i in self.inputs],
                "recipe_digest": self.recipe_digest,
                "params": self.params,
            }
        )

    @property
    def key(self) -> str:
        return partition_key(self.partition)

    def to_json(self) -> str:
        body = asdict(self)
        body["digest"] = self.digest
        return json.dumps(body, indent=2, default=str)  # key order kept: partition keys order the path

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError(f"a manifest is a JSON object, not {type(body).__name__}")
        stored = body.pop("digest", None)
        try:
            body["files"] = [DataFile(**f) for f in body.get("files", [])]
            body["inputs"] = [InputRef(**i) for i in body.get("inputs", [])]
            m = cls(**body)
        except TypeError as e:  # missing or unknown fields: hand-edited, or not a manifest
            raise ValueError(f"not a phiflow manifest: {e}") from None
        if stored is not None and stored != m.digest:
            raise ValueError(f"manifest of {m.dataset}/{m.key} does not match its digest (edited or corrupt)")
        return m

    def input_ref(self) -> InputRef:
        """How a downstream stage pins this partition as its input."""
        return InputRef(dataset=self.dataset, partition=dict(self.partition), digest=self.digest)
