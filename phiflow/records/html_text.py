"""HTML bytes -> main text, title and charset: the per-page part of commoncrawl_extract.

Decoding follows WHATWG's order (a BOM, the HTTP charset, <meta charset>), trusting a declared
charset only if the bytes actually decode under it and do not turn valid UTF-8 into mojibake
(servers mislabel pages), then detects. Extraction uses resiliparse's main-content
heuristics with formatting preserved, so code blocks (<pre>), list structure and table rows keep
their lines instead of being collapsed into one paragraph.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13))
_CONTROL_CHARS = frozenset(_CONTROL.decode("ascii"))


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str
    charset: str
    charset_source: str  # "bom", "http", "meta", "bytes" (valid UTF-8) or "detected": how it was chosen


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


_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))


def bom(body: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) when the payload starts with a byte-order mark."""
    return next(((codec, len(mark)) for mark, codec in _BOMS if body.startswith(mark)), None)


@lru_cache(maxsize=256)
def single_byte(codec: str) -> bool:
    """Whether `codec` maps every byte to one character (latin-1, cp1252, koi8-r ...): a legacy codec
    under which any bytes decode, UTF-8 ones included, as mojibake."""
    return len(bytes(range(256)).decode(codec, "replace")) == 256


def decode_html(body: bytes, declared: str | None) -> tuple[str, str, str]:
    """Decode a page: (text, codec, source). Never raises on bad bytes.

    WHATWG's order: a BOM decides (and is not part of the text); then the HTTP charset, then
    `<meta charset>`, each only if the bytes decode under it. A declared single-byte charset loses to
    UTF-8 when the bytes are valid UTF-8 with non-ASCII characters (a latin-1 header on a UTF-8 page
    would give "Ã¼" for "ü"); then UTF-8 if valid, then detection."""
    if (found := bom(body)) is not None:
        codec, skip = found
        return body[skip:].decode(codec, "replace"), codec, "bom"
    utf8 = _decode(body, "utf-8")
    m = _META_CHARSET.search(body[:4096])
    meta = _codec(m.group(1).decode("ascii", "ignore")) if m else None
    for codec, source in ((_codec(declared), "http"), (meta, "meta")):
        if (text := utf8 if codec == "utf-8" else _decode(body, codec)) is None:
            continue
        if codec != "utf-8" and utf8 is not None and not utf8.isascii() and single_byte(codec):
            return utf8, "utf-8", "bytes"
        return text, codec, source
    if utf8 is not None:
        return utf8, "utf-8", "bytes"
    detected = _codec(detect_encoding(body)) or "utf-8"
    return bytes_to_str(body, detected), detected, "detected"


def binary_fraction(body: bytes, declared: str | None = None, sample: int = 8192) -> float:
    """Share of control characters (NUL and friends) in the head of a payload: high for binary data.
    UTF-16/32 text (by BOM or declared charset) is judged on its characters, not its NUL-rich bytes."""
    head = body[:sample]
    if not head:
        return 0.0
    codec = found[0] if (found := bom(head)) is not None else _codec(declared)
    if codec and codec.startswith(("utf-16", "utf-32")):
        text = head.decode(codec, "replace")
        return sum(c in _CONTROL_CHARS for c in text) / max(len(text), 1)
    return (len(head) - len(head.translate(None, _CONTROL))) / len(head)  # one C pass


# Elements a parser closes by itself or that have no content: they do not deepen the tree.
_FLAT = frozenset(
    b"p li dt dd option optgroup tr td th thead tbody tfoot colgroup caption rb rt rp "
    b"area base br col embed hr img input link meta param source track wbr keygen".split()
)
_TAG = re.compile(rb"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^>]*?(/?)>")
_RAW_TEXT = re.compile(rb"<(script|style|textarea|xmp)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)


def too_complex(body: bytes, max_elements: int, max_depth: int) -> str | None:
    """Why a page would hold the extractor for minutes or take gigabytes, checked before parsing:
    more than `max_elements` tags, or elements nested deeper than `max_depth` (Blink stops nesting at
    512; resiliparse's main-content pass is quadratic in depth: 1.2 s at 10,000, 127 s and 1.6 GB
    were seen at 50,000). A vectorized upper bound (~35 µs a page: opening minus closing tags, prefix
    maximum) clears ordinary pages; only a page over it gets the exact count, where auto-closed and
    void elements, scripts, styles and comments do not deepen the tree."""
    if body.count(b"<") > max_elements:
        return "too_complex:elements"
    if _depth_bound(body) <= max_depth:
        return None
    depth = 0
    for m in _TAG.finditer(_RAW_TEXT.sub(b"", body)):
        close, name, self_closing = m.groups()
        if self_closing or name.lower() in _FLAT:
            continue
        depth = max(depth - 1, 0) if close else depth + 1
        if depth > max_depth:
            return "too_complex:depth"
    return None


def _depth_bound(body: bytes) -> int:
    """The prefix maximum of (tags opened - tags closed): at least the nesting depth, give or take
    stray closing tags."""
    a = np.frombuffer(body, np.uint8)
    lt = np.flatnonzero(a[:-2] == 0x3C)  # "<"
    if lt.size == 0:
        return 0
    first, second = a[lt + 1] | 0x20, a[lt + 2] | 0x20  # lower-cased
    opens = (first >= 0x61) & (first <= 0x7A)
    closes = (a[lt + 1] == 0x2F) & (second >= 0x61) & (second <= 0x7A)
    return int(np.cumsum(opens.astype(np.int32) - closes).max(initial=0))


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
