"""One WARC file -> document rows, each kept or dropped with a named reason.

The rules are plain functions over a `Page` (what the WARC response says) so they are unit-tested
without Spark; `iter_rows` applies them record by record and never lets one bad record stop the
file: a record that fails is a row with a reason, a file that breaks midway keeps what was read
before the break and ends with a file-level row saying why (and counting the file's records by type).

Between the integrity rules (digest, status: on the body as stored) and the content rules, the HTTP
body is decoded (phiflow.records.http_body: chunked, gzip, deflate, br) and a missing Content-Type is
sniffed; each row carries what was undone in `_decoding`, which the stage counts and never commits.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from fastwarc.warc import ArchiveIterator

from phiflow.ids import doc_id
from phiflow.recipe import CommonCrawlExtractParams
from phiflow.records.html_text import binary_fraction, extract, too_complex
from phiflow.records.http_body import UNKNOWN_TYPES, decode_body, sniff_content_type

# File-level outcome rows have no document; their reason starts with this prefix.
FILE_PREFIX = "file:"
FILE_OK = "ok"


@dataclass(frozen=True)
class Page:
    url: str
    record_id: str
    offset: int  # the gzip member (or, uncompressed, the record) where the record starts
    fetch_time: datetime | None
    status: int
    content_type: str
    charset: str | None
    body: bytes
    payload_digest: str | None = None  # WARC-Payload-Digest, "sha1:<base32>"
    headers: tuple[tuple[str, str], ...] = ()  # the HTTP response's header fields
    key: str = ""  # what the doc_id hashes (record_key): unique within the dataset
    member_offset: int = 0  # where the record starts inside the decompressed gzip member at `offset`


def record_key(record_id: str, warc_url: str, repeat: int) -> str:
    """The doc_id's source key: the WARC-Record-ID with the WARC file's name, and the how-manieth
    repeat of that ID within the file. A Record-ID is meant to be unique, but the same ID turns up in
    several CommonCrawl files (and a broken writer repeats it within one); with the file's name
    (unique in a crawl) and the repeat count, two records never share a doc_id, and a rerun of the
    same file gives the same ids."""
    name = warc_url.rstrip("/").rsplit("/", 1)[-1]
    return f"{record_id} {name}" + (f" #{repeat}" if repeat else "")


Rule = Callable[[Page, CommonCrawlExtractParams], str | None]


def rule_digest(page: Page, p: CommonCrawlExtractParams) -> str | None:
    """A payload that does not match its recorded digest was cut or corrupted in transit.

    fastwarc yields the last record of a truncated gzip member without an error, with a short
    body: the digest is the reliable signal.
    """
    if not page.payload_digest or not page.payload_digest.lower().startswith("sha1:"):
        return None
    actual = base64.b32encode(hashlib.sha1(page.body).digest()).decode()
    return None if actual == page.payload_digest[5:].upper() else "payload_digest_mismatch"


def rule_status(page: Page, p: CommonCrawlExtractParams) -> str | None:
    return None if page.status in p.keep_statuses else f"http_{page.status}"


def rule_content_type(page: Page, p: CommonCrawlExtractParams) -> str | None:
    return None if page.content_type in p.content_types else "not_html"


def rule_empty(page: Page, p: CommonCrawlExtractParams) -> str | None:
    return "empty_payload" if not page.body.strip() else None


def rule_size(page: Page, p: CommonCrawlExtractParams) -> str | None:
    return "too_large" if len(page.body) > p.max_html_bytes else None


def rule_binary(page: Page, p: CommonCrawlExtractParams) -> str | None:
    return "binary_payload" if binary_fraction(page.body, page.charset) > p.max_binary_fraction else None


def rule_complexity(page: Page, p: CommonCrawlExtractParams) -> str | None:
    return too_complex(page.body, p.max_elements, p.max_depth)


# Order matters: integrity on the body as stored, then (decoded) cheap header checks, the size guard
# before anything reads the body.
INTEGRITY_RULES: list[Rule] = [rule_digest, rule_status]
PAGE_RULES: list[Rule] = [rule_content_type, rule_empty, rule_size, rule_binary, rule_complexity]


def decoded(page: Page, p: CommonCrawlExtractParams) -> tuple[Page, tuple[str, ...], str | None]:
    """The page with its HTTP codings undone and its type sniffed when the server sent none: (page,
    what was done, why the body cannot be used)."""
    body = decode_body(page.body, page.headers, p.max_html_bytes)
    steps = body.steps
    ctype = page.content_type
    if ctype in UNKNOWN_TYPES:
        ctype = sniff_content_type(body.body)
        steps = (*steps, "sniffed_type")
    return dataclasses.replace(page, body=body.body, content_type=ctype), steps, body.error


def _row(source: str, warc_url: str, page: Page, **extra: Any) -> dict[str, Any]:
    return {
        "doc_id": doc_id(source, page.key or page.record_id),
        "source": source,
        "source_uri": warc_url,
        "parent_ids": [],
        "url": page.url,
        "warc_record_id": page.record_id,
        "warc_offset": page.offset,
        "warc_member_offset": page.member_offset,
        "fetch_time": page.fetch_time,
        "http_status": page.status,
        "content_type": page.content_type,
        "html_bytes": len(page.body),
        **extra,
    }


def page_row(source: str, warc_url: str, page: Page, params: CommonCrawlExtractParams) -> dict[str, Any]:
    """Apply the rules, the HTTP decoding and the extractor to one page."""
    for rule in INTEGRITY_RULES:
        if reason := rule(page, params):
            return _row(source, warc_url, page, drop_reason=reason)
    page, steps, error = decoded(page, params)
    if error:
        return _row(source, warc_url, page, drop_reason=error, _decoding=steps)
    for rule in PAGE_RULES:
        if reason := rule(page, params):
            return _row(source, warc_url, page, drop_reason=reason, _decoding=steps)
    try:
        ex = extract(page.body, page.charset)
    except Exception as err:  # a parser failure on one page must not lose the file
        return _row(source, warc_url, page, drop_reason=f"extract_error:{type(err).__name__}", _decoding=steps)
    reason = "too_little_text" if len(ex.text) < params.min_text_chars else None
    return _row(
        source,
        warc_url,
        page,
        charset=ex.charset,
        title=ex.title,
        text=ex.text,
        text_chars=len(ex.text),
        drop_reason=reason,
        _decoding=steps,
    )


def file_row(source: str, warc_url: str, reason: str, records: dict[str, int] | None = None) -> dict[str, Any]:
    """A row that reports a file-level outcome (unreadable, truncated, not a WARC file) rather than a
    document, with the file's records counted by WARC-Type."""
    return {
        "doc_id": "",
        "source": source,
        "source_uri": warc_url,
        "parent_ids": [],
        "drop_reason": FILE_PREFIX + reason,
        "records": dict(records or {}),
    }


def _page(record: Any) -> Page:
    http = record.http_headers
    ctype = (record.http_content_type or "").split(";")[0].strip().lower()
    date = record.record_date
    if date is not None and date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    return Page(
        url=record.headers.get("WARC-Target-URI", ""),
        record_id=record.record_id,
        offset=record.stream_pos,
        fetch_time=date,
        status=int(http.status_code) if http is not None and http.status_code else 0,
        content_type=ctype,
        charset=record.http_charset,
        body=record.reader.read(),
        payload_digest=record.headers.get("WARC-Payload-Digest"),
        headers=tuple(http.astuples()) if http is not None else (),
    )


def _lost(source: str, warc_url: str, offset: int, err: BaseException, member_offset: int = 0) -> dict[str, Any]:
    """A record that could not be read, counted by its offset (its file goes on)."""
    return {
        "doc_id": "",
        "source": source,
        "source_uri": warc_url,
        "parent_ids": [],
        "warc_offset": offset,
        "warc_member_offset": member_offset,
        "drop_reason": f"bad_record:{type(err).__name__}",
    }


def iter_rows(
    stream: IO[bytes], warc_url: str, source: str, params: CommonCrawlExtractParams
) -> Iterator[dict[str, Any]]:
    """Rows of one WARC file: one per response record, then one file-level row (ok or why not).

    A record the reader cannot get past (a header over fastwarc's limit, garbage) costs that record
    only: reading resumes at the next record boundary (the next gzip member that opens a WARC record,
    or the next `WARC/1.` line in an uncompressed file), and the lost record is a row with its offset.
    A stream that cannot seek ends there, as a file-level `read_error`."""
    types: Counter[str] = Counter()
    seen: Counter[str] = Counter()  # Record-IDs met in this file
    member = Member()
    start = 0
    while True:
        last = start - 1  # the last record started in this pass
        try:
            if start:
                stream.seek(start)
            # quirks mode resynchronizes after a record whose WARC Content-Length lies, instead of
            # abandoning the rest of the file (seen on the broken sample set: 4 of 6 good records kept without it).
            for record in ArchiveIterator(stream, parse_http=False, quirks_mode=True):
                last = record.stream_pos
                inner = member.offset_of(stream, record.stream_pos)
                kind = (record.headers.get("WARC-Type") or "unknown").strip().lower()
                types[kind] += 1
                if kind != "response":
                    continue  # request, metadata, warcinfo, revisit, conversion: counted, not documents
                try:
                    record.parse_http()
                    page = _page(record)
                except Exception as err:
                    yield _lost(source, warc_url, record.stream_pos, err, inner)
                    continue
                key = record_key(page.record_id, warc_url, seen[page.record_id])
                seen[page.record_id] += 1
                yield page_row(source, warc_url, dataclasses.replace(page, key=key, member_offset=inner), params)
            break
        except Exception as err:
            if last < start:  # this pass read nothing: the record at `start` cannot be read; skip it
                nxt = _next_record(stream, start + 1)
                if nxt is not None or types:  # (a file with no readable record at all is a file failure)
                    yield _lost(source, warc_url, start, err)
            else:  # resume at the first boundary after the last record read (a bad one there fails next)
                nxt = _next_record(stream, last + 1)
            if nxt is None:
                broken = last >= start  # the file ends inside what it was reading: truncated or corrupt
                outcome = f"read_error:{type(err).__name__}" if broken or not types else FILE_OK
                yield file_row(source, warc_url, outcome, types)
                return
            start = nxt
    yield file_row(source, warc_url, FILE_OK if types else _not_warc(stream), types)


_SCAN = 1 << 20
_GZIP_MEMBER = b"\x1f\x8b\x08"


class Member:
    """Where each record starts inside its gzip member. CommonCrawl writes one record per member, so a
    record's offset is its member's and a range request fetches it; other writers put several records
    in one member, where fastwarc gives them all the member's offset. The k-th record of a member is
    then found by inflating the member and walking its records (header, Content-Length, CRLF CRLF):
    extra work only for such members, and the stream is left where the reader had it."""

    def __init__(self) -> None:
        self.start, self.index = -1, 0

    def offset_of(self, stream: IO[bytes], member_start: int) -> int:
        if member_start != self.start:
            self.start, self.index = member_start, 0
            return 0
        self.index += 1
        try:
            here = stream.tell()
        except (OSError, ValueError, io.UnsupportedOperation):
            return -1  # not seekable: unknown
        try:
            return _kth_record(stream, member_start, self.index)
        finally:
            stream.seek(here)


def _kth_record(stream: IO[bytes], member_start: int, k: int) -> int:
    """Offset of the k-th record (0-based) in the inflated gzip member at `member_start`; -1 if the
    member does not hold k+1 readable records."""
    stream.seek(member_start)
    inflate = zlib.decompressobj(31)
    data, pos = b"", 0
    for _ in range(k):
        while True:  # enough of the member inflated to read this record's header and skip its block
            end = data.find(b"\r\n\r\n", pos)
            length = _content_length(data[pos:end]) if end >= 0 else None
            if length is not None and len(data) >= end + 4 + length + 4:
                break
            if inflate.eof:
                return -1
            chunk = stream.read(1 << 16)
            if not chunk:
                return -1
            data += inflate.decompress(chunk)
        pos = end + 4 + length
        while data[pos : pos + 2] == b"\r\n":  # the record's closing CRLF CRLF
            pos += 2
    return pos


def _content_length(header: bytes) -> int | None:
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return None


def _next_record(stream: IO[bytes], after: int) -> int | None:
    """Offset of the first record boundary at or after `after`: a gzip member whose first bytes
    inflate to `WARC/1.`, or (uncompressed) a `WARC/1.` at a line start. None: none, or no seeking."""
    try:
        stream.seek(0)
        gz = stream.read(2) == _GZIP_MEMBER[:2]
        pos = after
        while True:
            stream.seek(pos)
            chunk = stream.read(_SCAN + 16)
            if not chunk:
                return None
            i = 0
            while True:
                i = chunk.find(_GZIP_MEMBER if gz else b"WARC/1.", i)
                if i < 0 or i >= _SCAN:
                    break
                if (
                    _opens_record(stream, pos + i)
                    if gz
                    else (pos + i == 0 or chunk[i - 1 : i] == b"\n" or _byte_before(stream, pos + i) == b"\n")
                ):
                    return pos + i
                i += 1
            pos += _SCAN
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _byte_before(stream: IO[bytes], offset: int) -> bytes:
    stream.seek(offset - 1)
    return stream.read(1)


def _opens_record(stream: IO[bytes], offset: int) -> bool:
    stream.seek(offset)
    try:
        return zlib.decompressobj(31).decompress(stream.read(4096), 16).startswith(b"WARC/1.")
    except zlib.error:
        return False


def _not_warc(stream: IO[bytes]) -> str:
    """Why a file gave no record at all: nothing in it, or not WARC."""
    try:
        return "empty_file" if stream.tell() == 0 else "not_warc"
    except (OSError, ValueError):
        return "not_warc"
