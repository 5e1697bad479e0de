"""HTTP response bodies as the server meant them: transfer and content codings undone (RFC 9112 §7,
RFC 9110 §8.4), and a missing Content-Type sniffed the way browsers do (WHATWG MIME Sniffing §7.1).

Pure functions over bytes and header pairs; `phiflow.records.warc_records` calls them once per record.

- Codings are undone in reverse order of application: the transfer codings (chunked last applied,
  so first undone), then the content codings. gzip (one or more members), deflate (zlib-wrapped or
  raw, as servers send both), br and identity are known.
- CommonCrawl stores bodies already decoded and renames the headers it acted on to
  `X-Crawler-Transfer-Encoding` / `X-Crawler-Content-Encoding`, so only the plain headers count.
- A stream cut short is decoded as far as it goes and flagged `truncated`; a body the header calls
  coded but that is not (a server mislabelling plain HTML) is kept as it is, noted `<coding>_absent`.
- Decoded output is bounded (`limit`): a decompression bomb stops at the bound, as `too_large`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

CHUNKED = "chunked"
_CHUNK_SIZE = re.compile(rb"^[ \t]*([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?$")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Decoded:
    body: bytes
    steps: tuple[str, ...] = ()  # codings undone, in order, and notes (`gzip_absent`, `gzip_truncated`)
    error: str | None = None  # why the body cannot be used: `too_large`, `unsupported_encoding`

    @property
    def truncated(self) -> bool:
        return any(s.endswith("_truncated") for s in self.steps)


def header_tokens(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """The comma-separated tokens of every header called `name` (any case), lower-cased, in order."""
    name = name.lower()
    return [t.strip().lower() for k, v in headers if k.strip().lower() == name for t in v.split(",") if t.strip()]


def decode_body(raw: bytes, headers: Iterable[tuple[str, str]], limit: int) -> Decoded:
    """`raw` (the HTTP body as stored) with its codings undone; never raises on bad bytes."""
    headers = list(headers)
    codings = [
        *reversed(header_tokens(headers, "transfer-encoding")),
        *reversed(header_tokens(headers, "content-encoding")),
    ]
    body, steps = raw, []
    for coding in codings:
        if coding in ("identity", ""):
            continue
        if coding == CHUNKED:
            out, note = dechunk(body)
        elif coding in ("gzip", "x-gzip"):
            out, note = inflate(body, 16 + zlib.MAX_WBITS, limit)
            coding = "gzip"
        elif coding == "deflate":
            out, note = inflate(body, zlib.MAX_WBITS, limit)
            if note == "absent":  # RFC 9110 says zlib-wrapped; many servers send raw deflate
                out, note = inflate(body, -zlib.MAX_WBITS, limit)
        elif coding == "br":
            out, note = unbrotli(body, limit)
        else:
            return Decoded(raw, tuple(steps), f"unsupported_encoding:{coding[:20]}")
        if note == "too_large":
            return Decoded(b"", tuple(steps), "too_large")
        steps.append(coding if note is None else f"{coding}_{note}")
        body = out
    return Decoded(body, tuple(steps))


def dechunk(data: bytes) -> tuple[bytes, str | None]:
    """The body of a chunked message: chunk-size lines, extensions (`;name=value`) and trailers gone.
    (`data`, "absent") when the first line is not a chunk size; "truncated" when it stops early."""
    out, pos = [], 0
    while True:
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        m = _CHUNK_SIZE.match(line)
        if m is None:
            if pos == 0:
                return data, "absent"
            return b"".join(out), "truncated"
        size = int(m.group(1), 16)
        if end < 0:
            return b"".join(out), "truncated"
        if size == 0:
            return b"".join(out), None  # trailer fields after the last chunk are not body
        start = end + 1
        out.append(data[start : start + size])
        if start + size > len(data):
            return b"".join(out), "truncated"
        pos = start + size
        if data[pos : pos + 2] == b"\r\n":
            pos += 2
        elif data[pos : pos + 1] == b"\n":
            pos += 1


def inflate(data: bytes, wbits: int, limit: int) -> tuple[bytes, str | None]:
    """zlib/gzip/raw-deflate decoding of `data` (gzip: every member). Notes: "absent" (not that format
    at all: `data` back), "truncated" (cut short or corrupt midway: what decoded), "too_large"."""
    out: list[bytes] = []
    size, rest = 0, data
    while rest:
        d = zlib.decompressobj(wbits)
        try:
            chunk = d.decompress(rest, limit + 1 - size)
        except zlib.error:
            if not out:
                return data, "absent"
            return b"".join(out), "truncated"
        out.append(chunk)
        size += len(chunk)
        if size > limit or d.unconsumed_tail:
            return b"", "too_large"
        if not d.eof:
            return b"".join(out), "truncated"
        rest = d.unused_data
        if wbits > 16 and rest[:2] == _GZIP_MAGIC:
            continue  # another gzip member
        break
    return b"".join(out), None


def unbrotli(data: bytes, limit: int) -> tuple[bytes, str | None]:
    import brotli

    d = brotli.Decompressor()
    try:
        out = d.process(data, output_buffer_limit=limit + 1)
    except brotli.error:
        return data, "absent"
    if len(out) > limit:
        return b"", "too_large"
    return out, None if d.is_finished() else "truncated"


# -- WHATWG MIME sniffing: rules for identifying an unknown MIME type ----------------------------------
_HTML_TAGS = (
    b"<!DOCTYPE HTML", b"<HTML", b"<HEAD", b"<SCRIPT", b"<IFRAME", b"<H1", b"<DIV", b"<FONT", b"<TABLE", b"<A",
    b"<STYLE", b"<TITLE", b"<B", b"<BODY", b"<BR", b"<P", b"<!--",
)  # fmt: skip
_BINARY_BYTES = frozenset([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])
UNKNOWN_TYPES = frozenset({"", "unknown/unknown", "application/unknown", "*/*"})
_BOMS = {b"\xef\xbb\xbf": "utf-8", b"\xfe\xff": "utf-16-be", b"\xff\xfe": "utf-16-le"}


def sniff_content_type(body: bytes) -> str:
    """text/html, text/xml, text/plain or application/octet-stream, from the first bytes."""
    head = body[:1445]  # the resource header the standard reads
    for bom, codec in _BOMS.items():
        if head.startswith(bom):  # text by its BOM; HTML if its first characters say so
            return "text/html" if _looks_html(head[len(bom) :].decode(codec, "ignore").encode()) else "text/plain"
    if _looks_html(head):
        return "text/html"
    if head.lstrip(b"\t\n\x0c\r ").startswith(b"<?xml"):
        return "text/xml"
    return "application/octet-stream" if any(b in _BINARY_BYTES for b in head) else "text/plain"


def _looks_html(head: bytes) -> bool:
    s = head.lstrip(b"\t\n\x0c\r ").upper()
    return any(s.startswith(t) and s[len(t) : len(t) + 1] in (b" ", b">") for t in _HTML_TAGS)  # + a tag-ending byte
