"""The lake and its commit protocol, over any fsspec filesystem (local, s3://, hdfs://).

Layout of one partition::

    <root>/<dataset>/<k=v>/.../_attempts/<attempt>/part-*.parquet   data of each write attempt
    <root>/<dataset>/<k=v>/.../_MANIFEST.json                      the commit point

A writer puts its files under a fresh attempt folder, then commits by writing `_MANIFEST.json`,
which names the attempt's files. Readers read only the files the manifest names, so a partition
without a manifest does not exist, a crashed attempt is invisible, and a rerun replaces the
partition whole in one step. The only atomic operation this needs is replacing one small object:
a rename on POSIX and HDFS, a single PUT on S3 (which has no rename), which is why the commit
is a manifest swap rather than a directory move. Superseded attempts are deleted after commit.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import fsspec
from fsspec.core import url_to_fs

from phiflow import settings
from phiflow.manifest import MANIFEST_NAME, DataFile, Manifest, partition_key

log = logging.getLogger(__name__)

ATTEMPTS = "_attempts"


def parse_partition(key: str) -> dict[str, str]:
    """Inverse of `partition_key`."""
    out: dict[str, str] = {}
    for part in key.strip("/").split("/"):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise ValueError(f"bad partition segment {part!r} in {key!r}: expected key=value")
        out[k] = v
    return out


class Lake:
    """A lake root and the operations of the storage contract on it."""

    def __init__(self, root: str | None = None) -> None:
        self.url = (root or settings.lake_root()).rstrip("/")
        self.fs, self.root = url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        self._local = "file" in _protocols(self.fs)

    # -- paths -----------------------------------------------------------------------------
    def dataset_path(self, dataset: str) -> str:
        return posixpath.join(self.root, dataset)

    def partition_path(self, dataset: str, partition: dict[str, str]) -> str:
        return posixpath.join(self.root, dataset, partition_key(partition))

    def uri(self, path: str) -> str:
        """A path of this filesystem as a URL another engine (Spark, pyarrow) understands."""
        return self.fs.unstrip_protocol(path)

    # -- writing ---------------------------------------------------------------------------
    def new_attempt(self, dataset: str, partition: dict[str, str]) -> str:
        """A fresh, unique folder for one write attempt; nothing in it is visible until commit."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        attempt = f"{stamp}-{uuid.uuid4().hex[:8]}"
        path = posixpath.join(self.partition_path(dataset, partition), ATTEMPTS, attempt)
        self.fs.makedirs(path, exist_ok=True)
        return attempt

    def discard_attempt(self, dataset: str, partition: dict[str, str], attempt: str) -> None:
        """Remove an attempt that will not commit (its stage failed before writing anything worth keeping)."""
        path = self.attempt_path(dataset, partition, attempt)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def attempt_path(self, dataset: str, partition: dict[str, str], attempt: str) -> str:
        return posixpath.join(self.partition_path(dataset, partition), ATTEMPTS, attempt)

    def attempt_files(self, dataset: str, partition: dict[str, str], attempt: str) -> list[DataFile]:
        """The data files an attempt wrote (parquet, or any file not starting with `_`/`.`)."""
        base = self.partition_path(dataset, partition)
        root = self.attempt_path(dataset, partition, attempt)
        files = []
        for path, info in sorted(self.fs.find(root, detail=True).items()):
            name = posixpath.basename(path)
            if name.startswith(("_", ".")) or name.endswith(".crc"):
                continue
            files.append(DataFile(path=posixpath.relpath(path, base), bytes=int(info.get("size") or 0)))
        return files

    def commit(self, manifest: Manifest) -> Manifest:
        """Make `manifest.attempt` the partition's content, atomically; then drop older attempts."""
        base = self.partition_path(manifest.dataset, manifest.partition)
        target = posixpath.join(base, MANIFEST_NAME)
        data = manifest.to_json().encode()
        if self._local:
            tmp = posixpath.join(base, f".{MANIFEST_NAME}.{uuid.uuid4().hex}")
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)  # os.replace on local: atomic
        else:
            self.fs.pipe_file(target, data)  # single-object PUT: atomic on S3 and GCS
        self.collect_garbage(manifest.dataset, manifest.partition, keep=manifest.attempt)
        log.info(
            "committed %s/%s: %d rows, %d files",
            manifest.dataset,
            manifest.key,
            manifest.row_count,
            len(manifest.files),
        )
        return manifest

    def collect_garbage(self, dataset: str, partition: dict[str, str], keep: str | None) -> list[str]:
        """Delete attempt folders other than `keep` (crashed or superseded writes)."""
        root = posixpath.join(self.partition_path(dataset, partition), ATTEMPTS)
        removed = []
        if not self.fs.exists(root):
            return removed
        for path in self.fs.ls(root, detail=False):
            if posixpath.basename(path.rstrip("/")) != keep:
                self.fs.rm(path, recursive=True)
                removed.append(path)
        return removed

    # -- reading ---------------------------------------------------------------------------
    def manifest(self, dataset: str, partition: dict[str, str]) -> Manifest | None:
        """The committed manifest, or None when the partition does not exist (for readers)."""
        path = posixpath.join(self.partition_path(dataset, partition), MANIFEST_NAME)
        try:
            text = self.fs.cat_file(path).decode()
        except FileNotFoundError:
            return None
        return Manifest.from_json(text)

    def require(self, dataset: str, partition: dict[str, str]) -> Manifest:
        m = self.manifest(dataset, partition)
        if m is None:
            raise FileNotFoundError(f"{dataset}/{partition_key(partition)} is not committed in {self.url}")
        return m

    def data_files(self, manifest: Manifest) -> list[str]:
        """URLs of the committed data files of a partition (what readers must read, nothing else)."""
        base = self.partition_path(manifest.dataset, manifest.partition)
        return [self.uri(posixpath.join(base, f.path)) for f in manifest.files]

    def partitions(self, dataset: str) -> Iterator[Manifest]:
        """Committed partitions of a dataset, in key order."""
        root = self.dataset_path(dataset)
        if not self.fs.exists(root):
            return
        for path in sorted(self.fs.glob(posixpath.join(root, "**", MANIFEST_NAME))):
            if f"/{ATTEMPTS}/" in path:
                continue
            key = posixpath.relpath(posixpath.dirname(path), root)
            m = self.manifest(dataset, parse_partition(key))
            if m is not None:
                yield m

    def datasets(self) -> list[str]:
        """Dataset names; `_cache`, `_artifacts`, `_checkpoints` and the like are not datasets."""
        if not self.fs.exists(self.root):
            return []
        names = (posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False) if self.fs.isdir(p))
        return sorted(n for n in names if not n.startswith(("_", ".")))

    def read_table(self, manifest: Manifest, columns: list[str] | None = None):  # -> pyarrow.Table
        """Read a committed partition with pyarrow (small data, tests, CLI; Spark reads data_files)."""
        import pyarrow.parquet as pq

        base = self.partition_path(manifest.dataset, manifest.partition)
        paths = [posixpath.join(base, f.path) for f in manifest.files]
        return pq.ParquetDataset(paths, filesystem=self.fs, partitioning=None).read(columns=columns)


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (tuple, list)) else {proto}
