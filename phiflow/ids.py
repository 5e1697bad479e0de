"""Stable document ids: the same source record always gets the same id, on any machine."""

from __future__ import annotations

import hashlib


def doc_id(source: str, source_key: str) -> str:
    """Hash of (source, source key), e.g. ("web", WARC-Record-ID) or ("wiki", "page:rev").

    128 bits of blake2b keep collisions negligible at 10^12 documents and stay readable in logs.
    """
    return hashlib.blake2b(f"{source}\x1f{source_key}".encode(), digest_size=16).hexdigest()
