"""`phiflow verify`: do the committed partitions still have the files their manifests name?

A manifest can outlive its data (a file deleted or truncated by hand, a bucket lifecycle rule, a
half-finished copy). `status` reads manifests only; this checks the files behind them: each exists
with the recorded size, and with `deep`, the parquet footers add up to the manifest's row count.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from phiflow.manifest import Manifest
from phiflow.storage import Lake, PartitionEntry


@dataclass
class Verdict:
    dataset: str
    key: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_entry(lake: Lake, entry: PartitionEntry, deep: bool = False) -> Verdict:
    verdict = Verdict(entry.dataset, entry.key)
    if entry.manifest is None:
        verdict.problems.append(entry.error or "no manifest")
        return verdict
    verdict.problems.extend(lake.missing_files(entry.manifest))
    if deep and not verdict.problems:
        verdict.problems.extend(_parquet_rows(lake, entry.manifest))
    return verdict


def _parquet_rows(lake: Lake, m: Manifest) -> list[str]:
    """Row count from the parquet footers (only for partitions whose files are all parquet)."""
    if not m.files or not all(f.path.endswith(".parquet") for f in m.files):
        return []
    import pyarrow.parquet as pq

    base = lake.partition_path(m.dataset, m.partition)
    rows = 0
    for f in m.files:
        try:
            with lake.fs.open(posixpath.join(base, f.path), "rb") as fh:
                rows += pq.ParquetFile(fh).metadata.num_rows
        except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError) and OSError for damaged files
            return [f"{f.path}: unreadable parquet ({type(e).__name__}: {e})"]
    return [] if rows == m.row_count else [f"parquet footers hold {rows} rows, manifest says {m.row_count}"]


def verify_lake(lake: Lake, datasets: Iterable[str] | None = None, deep: bool = False) -> list[Verdict]:
    return [verify_entry(lake, e, deep) for d in lake.select_datasets(list(datasets or [])) for e in lake.entries(d)]


def report(verdicts: list[Verdict]) -> str:
    lines = [f"{v.dataset:<24} {v.key:<32} {'ok' if v.ok else 'BROKEN: ' + '; '.join(v.problems)}"
             for v in verdicts]
    broken = sum(not v.ok for v in verdicts)
    datasets = len({v.dataset for v in verdicts})
    lines.append(f"verified {len(verdicts)} partitions of {datasets} datasets: {broken} broken")
    return "\n".join(lines)
