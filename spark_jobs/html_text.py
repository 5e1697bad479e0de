"""HTML bytes -> main text, title and charset: the per-page part of commoncrawl_extract.

Decoding trusts a declared charset only if the bytes actually decode under it (servers mislabel
pages), then tries <meta charset>, then detects. Extraction uses resiliparse's main-content
heuristics with formatting preserved, so code blocks (<pre>), list structure and table rows keep
their lines instead of being collapsed into one paragraph.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13))


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str
    charset: str
    charset_source: str  # "http", "meta" or "detected": how the charset was chosen


def _codec(name: str | None) -> str | None:
    """Normalize a charset label to a Python codec name, or None if unknown."""
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def _decode(body: bytes, codec: str | None) -> str | None:
    """The strict decoding of `body` under `codec`, or None if the bytes are not in it."""
    if not codec:
        return None
    try:
        return body.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def decode_html(body: bytes, declared: str | None) -> tuple[str, str, str]:
    """Decode a page: (text, codec, source). Never raises on bad bytes."""
    http = _codec(declared)
    if (text := _decode(body, http)) is not None:
        return text, http, "http"
    m = _META_CHARSET.search(body[:4096])
    meta = _codec(m.group(1).decode("ascii", "ignore")) if m else None
    if (text := _decode(body, meta)) is not None:
        return text, meta, "meta"
    detected = _codec(detect_encoding(body)) or "utf-8"
    return bytes_to_str(body, detected), detected, "detected"


def binary_fraction(body: bytes, sample: int = 8192) -> float:
    """Share of control bytes (NUL and friends) in the head of a payload: high for binary data."""
    head = body[:sample]
    if not head:
        return 0.0
    return (len(head) - len(head.translate(None, _CONTROL))) / len(head)  # one C pass


def html_to_text(html: str) -> tuple[str, str]:
    """(main text, title) of decoded HTML, keeping code, lists and table rows on their own lines."""
    tree = HTMLTree.parse(html)
    text = extract_plain_text(
        tree,
        preserve_formatting=True,
        main_content=True,
        list_bullets=True,
        alt_texts=False,
        links=False,
        form_fields=False,
        noscript=False,
    )
    return text.strip(), (tree.title or "").strip()


def extract(body: bytes, declared_charset: str | None) -> Extracted:
    """Decode the payload truthfully, then extract its main text."""
    html, codec, source = decode_html(body, declared_charset)
    text, title = html_to_text(html)
    return Extracted(text=text, title=title, charset=codec, charset_source=source)
