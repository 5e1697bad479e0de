"""The lake and its commit protocol, over any fsspec filesystem (local, s3://, hdfs://).

Layout of one partition::

    <root>/<dataset>/<k=v>/.../_attempts/<attempt>/part-*.parquet   data of each write attempt
    <root>/<dataset>/<k=v>/.../_attempts/<attempt>/_LEASE           its writer's heartbeat
    <root>/<dataset>/<k=v>/.../_attempts/<attempt>/_SUPERSEDED      written when a later commit replaced it
    <root>/<dataset>/<k=v>/.../_MANIFEST.json                      the commit point

A writer puts its files under a fresh attempt folder, then commits by writing `_MANIFEST.json`,
which names the attempt's files. Readers read only the files the manifest names, so a partition
without a manifest does not exist, a crashed attempt is invisible, and a rerun replaces the
partition whole in one step. The commit is a manifest swap rather than a directory move because the
only atomic operation it needs is replacing one small object: a rename on POSIX, a PUT on S3.

Writers may race (a backfill overlapping a scheduled run, a retry overlapping a zombie attempt, two
DAGs writing one dataset). What keeps every interleaving safe:
- the swap is a compare-and-swap on the manifest's generation: under an `flock` of the partition on
  a local lake, a conditional PUT (`If-Match` on the ETag read, `If-None-Match: *` for the first
  commit) on S3. A writer whose swap loses re-reads the new state and commits again on top of it
  (its commit is a replacement, so that is the whole retry); after `COMMIT_RETRIES` it fails loudly;
- garbage collection never deletes the attempt the current manifest names, an attempt whose writer
  is alive (its `_LEASE` is renewed while it writes, every quarter of `settings.attempt_ttl_s`), nor
  a superseded attempt for `settings.superseded_grace_s` after it was replaced, so a reader that
  read the previous manifest still finds its files;
- a commit first checks that every file it names exists with its size, and fails if not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from phiflow import settings, shards
from phiflow.manifest import MANIFEST_NAME, DataFile, Manifest, partition_key

log = logging.getLogger(__name__)

ATTEMPTS = "_attempts"
LEASE = "_LEASE"
SUPERSEDED = "_SUPERSEDED"
COMMIT_LOCK = "_COMMIT.lock"
RERUN = "_RERUN"  # a request to rewrite a committed partition (one shard) on its stage's next run
COMMIT_RETRIES = 25


class CommitError(RuntimeError):
    """The commit was not made: its files are missing, or it lost the race too many times."""


@dataclass
class PartitionEntry:
    """One partition as found on storage: its manifest, or why it could not be read."""

    dataset: str
    key: str
    manifest: Manifest | None
    error: str | None


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
        self._s3 = bool({"s3", "s3a"} & _protocols(self.fs))

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
        """A fresh, unique folder for one write attempt; nothing in it is visible until commit.

        This process holds the attempt's lease (a heartbeat file) until it commits or discards it."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        attempt = f"{stamp}-{uuid.uuid4().hex[:8]}"
        path = self.attempt_path(dataset, partition, attempt)
        self.fs.makedirs(path, exist_ok=True)
        _LEASES.hold(self.fs, path)
        return attempt

    def discard_attempt(self, dataset: str, partition: dict[str, str], attempt: str) -> None:
        """Remove an attempt that will not commit (its stage failed before writing anything worth keeping)."""
        path = self.attempt_path(dataset, partition, attempt)
        _LEASES.release(path)
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
        """Make `manifest.attempt` the partition's content, atomically, whatever other writers do.

        Sets `manifest.generation`. Raises CommitError when a named file is missing or the swap
        keeps losing to other writers; a success returned here is the committed state."""
        base = self.partition_path(manifest.dataset, manifest.partition)
        target = posixpath.join(base, MANIFEST_NAME)
        attempt_dir = self.attempt_path(manifest.dataset, manifest.partition, manifest.attempt)
        if not shards.is_rollup(manifest):  # a roll-up's files are its shards' attempts, kept by their GC
            with contextlib.suppress(FileNotFoundError):  # keep GC off it while the swap runs (if it is a folder)
                _LEASES.renew(self.fs, attempt_dir)
        missing = self.missing_files(manifest)
        if missing:
            raise CommitError(f"{manifest.dataset}/{manifest.key}: attempt {manifest.attempt} lacks "
                              f"{len(missing)} of its files ({'; '.join(missing[:3])}): not committed")
        for round_ in range(COMMIT_RETRIES):
            with self._partition_lock(base):
                generation, replaced, token = self._current_head(target)
                manifest.generation = generation + 1
                if self._swap(target, manifest.to_json().encode(), token):
                    if replaced and replaced != manifest.attempt:
                        self._mark_superseded(manifest, replaced)
                    break
            log.info("%s/%s: another writer committed first; retrying on top of it", manifest.dataset, manifest.key)
            time.sleep(random.uniform(0.01, 0.05) * (round_ + 1))
        else:
            raise CommitError(f"{manifest.dataset}/{manifest.key}: lost the commit race {COMMIT_RETRIES} "
                              f"times in a row; attempt {manifest.attempt} is not committed")
        _LEASES.release(attempt_dir)
        self.collect_garbage(manifest.dataset, manifest.partition)
        log.info(
            "committed %s/%s: %d rows, %d files (generation %d)",
            manifest.dataset,
            manifest.key,
            manifest.row_count,
            len(manifest.files),
            manifest.generation,
        )
        return manifest

    def collect_garbage(self, dataset: str, partition: dict[str, str], *, ttl_s: float | None = None,
                        grace_s: float | None = None, dry_run: bool = False) -> list[str]:
        """Delete attempt folders nobody needs: not the committed one, not a live writer's (lease
        renewed within `ttl_s`), not one superseded less than `grace_s` ago (readers may be on it).
        Returns their paths (`dry_run`: only says which)."""
        ttl_s = settings.attempt_ttl_s() if ttl_s is None else ttl_s
        grace_s = settings.superseded_grace_s() if grace_s is None else grace_s
        base = self.partition_path(dataset, partition)
        root = posixpath.join(base, ATTEMPTS)
        removed: list[str] = []
        with self._partition_lock(base):
            self.fs.invalidate_cache(root)
            if not self.fs.exists(root):
                return removed
            _, current, _ = self._current_head(posixpath.join(base, MANIFEST_NAME))
            keep = {current} | self._named_by_head(dataset, partition) | self._named_by_rollup(dataset, partition)
            now = time.time()
            for attempt, entries in _group_by_attempt(root, self.fs.find(root, detail=True, withdirs=True)).items():
                if attempt in keep:
                    continue
                tomb = entries.get(SUPERSEDED)
                times = [t for t in map(_mtime, entries.values() if tomb is None else [tomb]) if t is not None]
                limit = ttl_s if tomb is None else grace_s
                if times and now - max(times) > limit:  # no time known (a bare S3 prefix): keep it
                    path = posixpath.join(root, attempt)
                    if not dry_run:
                        self.fs.rm(path, recursive=True)
                    removed.append(path)
        return removed

    def _named_by_head(self, dataset: str, partition: dict[str, str]) -> set[str]:
        """Attempts of this partition whose files the committed manifest names: one attempt for a stage's
        output, several for a manifest that keeps earlier attempts' files (the dedup history index)."""
        try:
            head = self.manifest(dataset, partition)
        except ValueError:
            return set()
        prefix = f"{ATTEMPTS}/"
        files = head.files if head else []
        return {f.path[len(prefix) :].split("/", 1)[0] for f in files if f.path.startswith(prefix)}

    def _named_by_rollup(self, dataset: str, partition: dict[str, str]) -> set[str]:
        """Attempts of a shard that its snapshot's roll-up still reads: a shard recommitted after the
        roll-up (a rerun killed before it rolled up again) must not pull files from under it."""
        snapshot = shards.parent(partition)
        if snapshot is None:
            return set()
        try:
            rollup = self.manifest(dataset, snapshot)
        except ValueError:  # a corrupt roll-up names nothing worth keeping
            return set()
        return shards.attempts_named(rollup, partition[shards.SHARD]) if rollup and shards.is_rollup(rollup) else set()

    def partitions_with_attempts(self, dataset: str) -> list[dict[str, str]]:
        """Every partition holding an `_attempts` folder, committed or not (a first attempt that
        crashed leaves a partition with no manifest): what a lake-wide garbage collection visits."""
        root = self.dataset_path(dataset)
        if not self.fs.exists(root):
            return []
        found = self.fs.glob(posixpath.join(root, "**", ATTEMPTS))
        keys = {posixpath.relpath(posixpath.dirname(p.rstrip("/")), root) for p in found if self.fs.isdir(p)}
        return [parse_partition(k) for k in sorted(keys) if f"/{ATTEMPTS}/" not in f"/{k}/"]

    def missing_files(self, manifest: Manifest) -> list[str]:
        """Files the manifest names that are absent or of another size than recorded."""
        base = self.partition_path(manifest.dataset, manifest.partition)
        self.fs.invalidate_cache(base)
        problems = []
        for f in manifest.files:
            try:
                size = int(self.fs.info(posixpath.join(base, f.path)).get("size") or 0)
            except FileNotFoundError:
                problems.append(f"{f.path}: missing")
                continue
            if size != f.bytes:
                problems.append(f"{f.path}: {size} bytes, manifest says {f.bytes}")
        return problems

    # -- the compare-and-swap ----------------------------------------------------------------
    @contextlib.contextmanager
    def _partition_lock(self, base: str) -> Iterator[None]:
        """Serialize commits and collections of one partition on a local lake (a no-op elsewhere:
        S3 commits are conditional writes instead)."""
        if not self._local:
            yield
            return
        import fcntl

        os.makedirs(base, exist_ok=True)
        with open(os.path.join(base, COMMIT_LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _current_head(self, target: str) -> tuple[int, str | None, str | None]:
        """Generation and attempt of the committed manifest, and the token a conditional write needs
        (its ETag on S3). A corrupt manifest reads as generation 0 of no attempt: a commit repairs it."""
        token = None
        if self._s3:
            bucket, key, _ = self.fs.split_path(target)
            try:  # the ETag first: if the object changes before the read, the conditional write fails
                token = self.fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
            except FileNotFoundError:
                return 0, None, None
        self.fs.invalidate_cache(target)
        try:
            body = json.loads(self.fs.cat_file(target))
        except (FileNotFoundError, ValueError):  # none yet, or not JSON
            return 0, None, token
        if not isinstance(body, dict):
            return 0, None, token
        generation = body.get("generation")
        return (generation if isinstance(generation, int) else 0), body.get("attempt"), token

    def _swap(self, target: str, data: bytes, token: str | None) -> bool:
        """Write the manifest if the head is still the one read; False when another writer got there first."""
        if self._local:  # under the partition lock: the head cannot have moved
            tmp = posixpath.join(posixpath.dirname(target), f".{MANIFEST_NAME}.{uuid.uuid4().hex}")
            self.fs.pipe_file(tmp, data)
            os.replace(tmp, target)
            return True
        if self._s3:
            condition = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
            try:
                self.fs.pipe_file(target, data, **condition)
            except Exception as e:  # s3fs wraps botocore's ClientError; the code is in the text
                if _lost_condition(e):
                    return False
                raise
            return True
        _warn_unguarded(self.fs)
        self.fs.pipe_file(target, data)
        return True

    def _mark_superseded(self, manifest: Manifest, replaced: str) -> None:
        path = self.attempt_path(manifest.dataset, manifest.partition, replaced)
        note = {"by": manifest.attempt, "generation": manifest.generation, "at": time.time()}
        self.fs.pipe_file(posixpath.join(path, SUPERSEDED), json.dumps(note).encode())

    # -- rerun requests ----------------------------------------------------------------------
    def request_rerun(self, dataset: str, partition: dict[str, str], by: str) -> None:
        """Ask the stage's next run to rewrite this partition (a shard) even though it is up to date.
        Nothing committed changes until that run commits the replacement."""
        note = {"by": by, "at": time.time()}
        self.fs.pipe_file(posixpath.join(self.partition_path(dataset, partition), RERUN), json.dumps(note).encode())

    def rerun_requested(self, dataset: str, partition: dict[str, str]) -> bool:
        return bool(self.fs.exists(posixpath.join(self.partition_path(dataset, partition), RERUN)))

    def clear_rerun(self, dataset: str, partition: dict[str, str]) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(posixpath.join(self.partition_path(dataset, partition), RERUN))

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
        """Committed partitions of a dataset, in key order; a corrupt manifest raises ValueError.

        A sharded partition is its roll-up (phiflow.shards): its shards are not listed here, and a
        snapshot whose shards are not all committed yet is not listed at all."""
        for entry in self.entries(dataset):
            if entry.error is not None:
                raise ValueError(entry.error)
            if entry.manifest is not None and shards.SHARD not in entry.manifest.partition:
                yield entry.manifest

    def shards(self, dataset: str, partition: dict[str, str]) -> list[Manifest]:
        """The committed shards of a partition, in shard order (progress of a snapshot in flight)."""
        base = self.partition_path(dataset, partition)
        self.fs.invalidate_cache(base)
        found = sorted(self.fs.glob(posixpath.join(base, f"{shards.SHARD}=*", MANIFEST_NAME)))
        out = []
        for path in found:
            key = posixpath.relpath(posixpath.dirname(path), base)
            m = self.manifest(dataset, {**partition, **parse_partition(key)})
            if m is not None:
                out.append(m)
        return out

    def entries(self, dataset: str) -> Iterator[PartitionEntry]:
        """Every partition with a manifest, readable or not: what `status` and `verify` report on."""
        root = self.dataset_path(dataset)
        if not self.fs.exists(root):
            return
        for path in sorted(self.fs.glob(posixpath.join(root, "**", MANIFEST_NAME))):
            if f"/{ATTEMPTS}/" in path:
                continue
            key = posixpath.relpath(posixpath.dirname(path), root)
            try:
                m = self.manifest(dataset, parse_partition(key))
            except ValueError as e:  # JSONDecodeError is one; so are a digest mismatch and a bad key
                yield PartitionEntry(dataset, key, None, f"{dataset}/{key}: corrupt manifest ({e})")
                continue
            if m is not None:
                yield PartitionEntry(dataset, key, m, None)

    def datasets(self) -> list[str]:
        """Dataset names; `_cache`, `_artifacts`, `_checkpoints` and the like are not datasets."""
        if not self.fs.exists(self.root):
            return []
        names = (posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False) if self.fs.isdir(p))
        return sorted(n for n in names if not n.startswith(("_", ".")))

    def select_datasets(self, names: list[str] | None) -> list[str]:
        """`names` (all datasets when empty), each checked to exist: what lake-wide commands sweep."""
        known = self.datasets()
        unknown = sorted(set(names or []) - set(known))
        if unknown:
            raise ValueError(f"no such dataset under {self.url}: {', '.join(unknown)}")
        return list(names) if names else known

    def read_table(self, manifest: Manifest, columns: list[str] | None = None):  # -> pyarrow.Table
        """Read a committed partition with pyarrow (small data, tests, CLI; Spark reads data_files)."""
        import pyarrow.parquet as pq

        base = self.partition_path(manifest.dataset, manifest.partition)
        paths = [posixpath.join(base, f.path) for f in manifest.files]
        return pq.ParquetDataset(paths, filesystem=self.fs, partitioning=None).read(columns=columns)


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (tuple, list)) else {proto}


def _group_by_attempt(root: str, found: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """`find` output under `_attempts/` as {attempt: {relative path ("" for the folder): info}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path, info in found.items():
        rel = posixpath.relpath(path.rstrip("/"), root)
        if rel == ".":
            continue
        attempt, _, rest = rel.partition("/")
        out.setdefault(attempt, {})[rest] = info
    return out


def _mtime(info: dict[str, Any]) -> float | None:
    """Modification time of a listing entry across filesystems (local mtime, S3 LastModified,
    memory `created`); None when the filesystem does not say (S3's pseudo-folders)."""
    for field in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _lost_condition(e: BaseException) -> bool:
    """Did a conditional PUT fail because the object changed (412) or a concurrent conditional write
    was in flight (409)? s3fs raises an OSError whose cause is botocore's ClientError."""
    for err in (e, e.__cause__, e.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
    return False


_warned: set[str] = set()


def _warn_unguarded(fs: fsspec.AbstractFileSystem) -> None:
    name = type(fs).__name__
    if name not in _warned:
        _warned.add(name)
        log.warning("%s has no conditional write phiflow uses: concurrent commits of one partition are "
                    "not guarded on it (last writer wins)", name)


class _Leases:
    """The attempts this process is writing, each with a heartbeat thread renewing its `_LEASE`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, threading.Event] = {}

    def hold(self, fs: fsspec.AbstractFileSystem, attempt_dir: str) -> None:
        self.renew(fs, attempt_dir)
        stop = threading.Event()
        with self._lock:
            self._held[attempt_dir] = stop
        every = max(settings.attempt_ttl_s() / 4, 0.05)
        threading.Thread(target=self._beat, args=(fs, attempt_dir, stop, every), daemon=True,
                         name=f"lease {posixpath.basename(attempt_dir)}").start()

    def renew(self, fs: fsspec.AbstractFileSystem, attempt_dir: str) -> None:
        note = {"pid": os.getpid(), "host": os.uname().nodename, "at": time.time()}
        fs.pipe_file(posixpath.join(attempt_dir, LEASE), json.dumps(note).encode())

    def release(self, attempt_dir: str) -> None:
        with self._lock:
            stop = self._held.pop(attempt_dir, None)
        if stop is not None:
            stop.set()

    def _beat(self, fs: fsspec.AbstractFileSystem, attempt_dir: str, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            try:
                self.renew(fs, attempt_dir)
            except FileNotFoundError:  # the attempt was discarded or collected: nothing left to hold
                return
            except Exception:  # a transient storage error: the next beat tries again
                log.warning("could not renew the lease of %s", attempt_dir, exc_info=True)


_LEASES = _Leases()
