"""The content digest of a set of rows: an order-independent sum of 64-bit row hashes, so equal row
sets give equal digests on any partitioning, and a digest can be summed while rows are written."""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F


def row_hash(columns: list[str]) -> Column:
    """One row's hash, widened so that the sum over a partition of any size cannot overflow."""
    return F.xxhash64(*columns).cast("decimal(38,0)")


def row_digest(total: Any) -> str:
    """The digest of rows whose `row_hash`es sum to `total` (None: no rows)."""
    return f"xxh64sum:{total or 0}"
