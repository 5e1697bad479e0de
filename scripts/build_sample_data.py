#!/usr/bin/env python3
"""Build a reproducible CommonCrawl-style WARC sample from real HTML pages.

The pipeline needs real web-like input that CI can read offline, so this script takes the
HTML shipped in two Debian packages (python3.11-doc, PSF licence; installation-guide-amd64,
GPL-2, 19 languages), serves each page under its upstream URL, and writes it as
request/response/metadata WARC records laid out exactly like a CommonCrawl bucket
(``crawl-data/<snapshot>/warc.paths.gz`` + ``segments/<id>/warc/*.warc.gz``).

Every id, date and gzip header is derived from the input, so two builds from the same
``.deb`` files are byte-identical. A separate ``broken/`` snapshot holds deliberately
damaged records (truncated gzip, lying lengths, wrong charsets, binary, 20 MiB page, ...)
next to good pages; what fastwarc does on each is observed at build time and written to
``broken/EXPECTED.json``.

Usage: python scripts/build_sample_data.py [--out data/sample] [--full] [--cache .phiflow/cache]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import html
import io
import json
import re
import shutil
import subprocess
import sys
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastwarc.warc import ArchiveIterator, WarcRecordType
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

REPO_ROOT = Path(__file__).resolve().parent.parent
PY_DOC_PKG = "python3.11-doc"
GUIDE_PKG = "installation-guide-amd64"
PACKAGES = (PY_DOC_PKG, GUIDE_PKG)
PY_DOC_DIR = "usr/share/doc/python3.11/html"
GUIDE_DIR = "usr/share/doc/installation-guide-amd64"
PY_DOC_BASE = "https://docs.python.org/3.11/"
GUIDE_BASE = "https://www.debian.org/releases/bookworm/amd64/"

# Compact (committed) build: a deterministic subset that stays a few MB.
COMPACT_PY_PAGES = 120
COMPACT_GUIDE_PAGES_PER_LANG = 15

FILES_PER_SNAPSHOT = 4
FILES_PER_SEGMENT = 2
WINDOW = timedelta(hours=3)  # CC file names carry a 3 h fetch window
# Snapshot name -> (first fetch window start, segment id prefix), modelled on the real crawls.
SNAPSHOTS: dict[str, tuple[datetime, str]] = {
    "CC-MAIN-2024-10": (datetime(2024, 2, 20, 21, 10, 55, tzinfo=UTC), "1707947473347"),
    "CC-MAIN-2024-18": (datetime(2024, 4, 12, 20, 4, 58, tzinfo=UTC), "1712296815919"),
}
BROKEN_SNAPSHOT = "CC-MAIN-BROKEN"
BROKEN_START = (datetime(2024, 6, 12, 11, 3, 21, tzinfo=UTC), "1718198861111")
# One page in RECRAWL_ONE_IN is fetched again (same bytes) in the other snapshot, as real
# snapshots overlap; this gives cross-snapshot exact duplicates to the dedup stage.
RECRAWL_ONE_IN = 16
# Translations whose text is more than this share the English original are left out, so that
# labels.jsonl is right at document level (e.g. the GPL appendix is English in most languages).
UNTRANSLATED_MAX = 0.5

# fastText lid.176 labels differ from the guide's directory names only for Chinese.
LID_CODES = {"zh_CN": "zh"}
# Guide language -> legacy charsets (IANA labels) some of its pages are re-encoded in.
LEGACY_CHARSETS: dict[str, tuple[str, ...]] = {
    "ru": ("windows-1251", "KOI8-R"),
    "ja": ("Shift_JIS",),
    "zh_CN": ("GBK",),
    "ko": ("EUC-KR",),
    "de": ("ISO-8859-1",),
    "fr": ("ISO-8859-1",),
    "el": ("ISO-8859-7",),
    "cs": ("ISO-8859-2",),
}
# Documentation address ranges (RFC 5737): the sample must not claim real servers' IPs.
HOST_IPS = {"docs.python.org": "198.51.100.23", "www.debian.org": "203.0.113.80"}
HOST_SERVERS = {"docs.python.org": "nginx", "www.debian.org": "Apache"}
USER_AGENT = "phiflow-sample-builder/1.0 (CommonCrawl-style sample; offline)"
OVERSIZED_BYTES = 20 * 1024 * 1024
WARC_LENGTH_LIE = 64  # bytes the lying WARC Content-Length is off by
META_CHARSET_RE = re.compile(r'<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">')
PARAGRAPH_RE = re.compile(r"<p>.*?</p>", re.S)


@dataclass(frozen=True)
class SourcePage:
    """A real HTML file from a Debian package and the upstream URL it is served under."""

    url: str
    path: Path
    source: str  # "python-doc" or "installation-guide"
    lang: str  # the guide's directory name ("zh_CN"), "en" for the Python docs
    mtime: datetime

    def text(self) -> str:
        """Return the page as shipped (all of them are UTF-8)."""
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Fetch:
    """One HTTP exchange exactly as it is written to the WARC file."""

    url: str
    body: bytes
    content_type: str | None  # None: no Content-Type header at all
    last_modified: datetime
    status: str = "200 OK"
    http_content_length: int | None = None  # declared length; None: the true one
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass
class BrokenRecord:
    """An entry of broken/EXPECTED.json: which record is damaged, where, and how."""

    uri: str
    file: str
    kind: str
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)


def stable_int(*parts: str) -> int:
    """Hash strings to an int that is the same on every machine and Python run."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def record_id(*parts: str) -> str:
    """Deterministic WARC-Record-ID, so that rebuilds are byte-identical."""
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '|'.join(parts))}>"


def sha1_base32(data: bytes) -> str:
    """Digest in the form CommonCrawl writes WARC-Payload-Digest."""
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def warc_date(moment: datetime) -> str:
    """WARC/1.0 date: second precision, UTC."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def gzip_member(data: bytes) -> bytes:
    """Compress one record like warcio's GzippingWrapper (zlib gzip header: mtime 0)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS + 16)
    return compressor.compress(data) + compressor.flush()


# --------------------------------------------------------------------------- sources


def ensure_debs(cache: Path) -> dict[str, Path]:
    """Return the cached .deb of each package, downloading missing ones with apt-get."""
    deb_dir = cache / "debs"
    deb_dir.mkdir(parents=True, exist_ok=True)
    missing = [pkg for pkg in PACKAGES if not list(deb_dir.glob(f"{pkg}_*.deb"))]
    if missing:
        hint = f"put {', '.join(missing)} .deb files into {deb_dir} or run on Debian with apt"
        if shutil.which("apt-get") is None:
            raise SystemExit(f"error: apt-get is not available and {deb_dir} lacks {missing}; {hint}")
        proc = subprocess.run(["apt-get", "download", *missing], cwd=deb_dir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(
                f"error: 'apt-get download {' '.join(missing)}' failed "
                f"(try 'apt-get update' first; or {hint}):\n{proc.stderr.strip()}"
            )
    debs: dict[str, Path] = {}
    for pkg in PACKAGES:
        found = sorted(deb_dir.glob(f"{pkg}_*.deb"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise SystemExit(f"error: need exactly one {pkg} .deb in {deb_dir}, found: {names}")
        debs[pkg] = found[0]
    return debs


def extract_deb(deb: Path, cache: Path) -> Path:
    """Unpack a .deb once (dpkg -x) and return its root; a marker makes reruns free."""
    root = cache / "extract" / deb.stem
    marker = root / ".extracted"
    if not marker.exists():
        if shutil.which("dpkg") is None:
            raise SystemExit("error: dpkg is needed to unpack the .deb files (dpkg -x)")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        marker.touch()
    return root


def deb_version(deb: Path) -> str:
    """Package version from a Debian file name: name_version_arch.deb."""
    return deb.stem.split("_")[1]


def file_mtime(path: Path) -> datetime:
    """The file's mtime as shipped in the .deb (dpkg -x keeps it)."""
    return datetime.fromtimestamp(int(path.stat().st_mtime), tz=UTC)


def python_doc_pages(root: Path) -> list[SourcePage]:
    """All real HTML pages of the Python 3.11 documentation."""
    base = root / PY_DOC_DIR
    return [
        SourcePage(PY_DOC_BASE + p.relative_to(base).as_posix(), p, "python-doc", "en", file_mtime(p))
        for p in sorted(base.rglob("*.html"))
        if not p.is_symlink()
    ]


def guide_pages(root: Path) -> list[SourcePage]:
    """All HTML pages of the Debian installation guide, one directory per language."""
    base = root / GUIDE_DIR
    return [
        SourcePage(f"{GUIDE_BASE}{d.name}/{p.name}", p, "installation-guide", d.name, file_mtime(p))
        for d in sorted(x for x in base.iterdir() if x.is_dir())
        for p in sorted(d.glob("*.html"))
    ]


def text_chunks(markup: str) -> list[str]:
    """Text between tags (longer than a heading number), to compare a translation with English."""
    chunks = (" ".join(html.unescape(chunk).split()) for chunk in re.split(r"<[^>]*>", markup))
    return [chunk for chunk in chunks if len(chunk) > 20]


def drop_untranslated(guide: list[SourcePage]) -> tuple[list[SourcePage], list[SourcePage]]:
    """Split the guide into pages that are translated and pages mostly left in English."""
    english = {p.path.name: set(text_chunks(p.text())) for p in guide if p.lang == "en"}
    kept: list[SourcePage] = []
    dropped: list[SourcePage] = []
    for page in guide:
        chunks = text_chunks(page.text())
        same = sum(len(c) for c in chunks if c in english[page.path.name])
        total = sum(len(c) for c in chunks)
        untranslated = page.lang != "en" and total > 0 and same / total > UNTRANSLATED_MAX
        (dropped if untranslated else kept).append(page)
    return kept, dropped


def select_pages(py_pages: list[SourcePage], guide: list[SourcePage], full: bool) -> list[SourcePage]:
    """Pick the pages of the build: all of them, or a hash-ordered compact subset."""
    if full:
        return sorted(py_pages + guide, key=lambda p: p.url)

    def ranked(pages: list[SourcePage]) -> list[SourcePage]:
        return sorted(pages, key=lambda p: stable_int("select", p.url))

    chosen = ranked(py_pages)[:COMPACT_PY_PAGES]
    for lang in sorted({p.lang for p in guide}):
        chosen += ranked([p for p in guide if p.lang == lang])[:COMPACT_GUIDE_PAGES_PER_LANG]
    return sorted(chosen, key=lambda p: p.url)


# --------------------------------------------------------------------------- pages -> fetches


def encodes_strictly(text: str, charset: str) -> bool:
    """Whether the page is representable in the charset without character references."""
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def choose_legacy_charsets(pages: list[SourcePage]) -> dict[str, str]:
    """URL -> legacy charset for a handful of guide pages, preferring fully representable ones."""
    chosen: dict[str, str] = {}
    for lang, charsets in LEGACY_CHARSETS.items():
        candidates = sorted(
            (p for p in pages if p.source == "installation-guide" and p.lang == lang),
            key=lambda p: stable_int("legacy", p.url),
        )
        for charset in charsets:
            pool = [p for p in candidates if p.url not in chosen]
            if pool:
                best = min(pool, key=lambda p: not encodes_strictly(p.text(), charset))
                chosen[best.url] = charset
    return chosen


def encode_page(page: SourcePage, charset: str | None) -> tuple[bytes, str]:
    """Body bytes and Content-Type; legacy pages get a truthful meta tag and header.

    Characters the legacy charset lacks become numeric character references, as real
    legacy-charset sites do, so the text survives HTML parsing unchanged.
    """
    if charset is None:
        return page.path.read_bytes(), "text/html; charset=utf-8"
    text, count = META_CHARSET_RE.subn(
        f'<meta http-equiv="Content-Type" content="text/html; charset={charset}">', page.text()
    )
    if count != 1:
        raise SystemExit(f"error: no UTF-8 meta charset to rewrite in {page.path}")
    return text.encode(charset, errors="xmlcharrefreplace"), f"text/html; charset={charset}"


def page_fetch(page: SourcePage, charset: str | None, not_after: datetime) -> Fetch:
    """A 200 response for a real page; Last-Modified is clamped before the crawl."""
    body, content_type = encode_page(page, charset)
    return Fetch(page.url, body, content_type, min(page.mtime, not_after - timedelta(days=7)))


# --------------------------------------------------------------------------- WARC writing


@dataclass(frozen=True)
class WarcFile:
    """Where one WARC file of a snapshot lives and when it was (notionally) fetched."""

    snapshot: str
    index: int
    segment: str
    start: datetime

    @property
    def name(self) -> str:
        """CommonCrawl file name: CC-MAIN-<window start>-<window end>-<5-digit number>."""
        end = self.start + WINDOW
        return f"CC-MAIN-{self.start:%Y%m%d%H%M%S}-{end:%Y%m%d%H%M%S}-{self.index:05d}.warc.gz"

    @property
    def rel_path(self) -> str:
        """Path relative to the output root, as in warc.paths.gz."""
        return f"crawl-data/{self.snapshot}/segments/{self.segment}/warc/{self.name}"


def snapshot_files(snapshot: str, start: datetime, segment_prefix: str) -> list[WarcFile]:
    """The FILES_PER_SNAPSHOT files of a snapshot, FILES_PER_SEGMENT per segment."""
    files = []
    for index in range(FILES_PER_SNAPSHOT):
        seg = index // FILES_PER_SEGMENT
        files.append(WarcFile(snapshot, index, f"{segment_prefix}.{seg}", start + seg * WINDOW))
    return files


class WarcFileWriter:
    """Writes CommonCrawl-style records (gzip per record) into one WARC file."""

    def __init__(self, stream: io.BufferedWriter, wf: WarcFile, description: str) -> None:
        self.stream = stream
        self.wf = wf
        self.writer = WARCWriter(stream, gzip=True, warc_version="1.0")
        self.warcinfo_id = record_id(wf.rel_path, "warcinfo")
        self._write_warcinfo(description)

    def _write_warcinfo(self, description: str) -> None:
        fields = {
            "isPartOf": self.wf.snapshot,
            "publisher": "phiflow sample builder (CommonCrawl layout; not a Common Crawl release)",
            "description": description,
            "operator": "phiflow",
            "software": "phiflow scripts/build_sample_data.py using warcio",
            "format": "WARC File Format 1.0",
            "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.0/",
        }
        body = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("utf-8")
        headers = {
            "WARC-Type": "warcinfo",
            "WARC-Date": warc_date(self.wf.start),
            "WARC-Filename": self.wf.name,
            "WARC-Record-ID": self.warcinfo_id,
            "Content-Length": "0",  # placeholder that keeps CC's header order; warcio sets it
            "Content-Type": "application/warc-fields",
        }
        record = self.writer.create_warc_record(
            "", "warcinfo", payload=io.BytesIO(body), length=len(body), warc_headers_dict=headers
        )
        self.writer.write_record(record)

    def _headers(self, rec_type: str, url: str, when: datetime, concurrent: str | None) -> dict[str, str]:
        headers = {
            "WARC-Type": rec_type,
            "WARC-Date": warc_date(when),
            "WARC-Record-ID": record_id(self.wf.rel_path, url, rec_type),
            "Content-Length": "0",  # placeholder that keeps CC's header order; warcio sets it
            "Content-Type": self.writer.WARC_RECORDS[rec_type],
            "WARC-Warcinfo-ID": self.warcinfo_id,
        }
        if concurrent:
            headers["WARC-Concurrent-To"] = concurrent
        if rec_type != "metadata":
            headers["WARC-IP-Address"] = HOST_IPS[urlsplit(url).hostname or ""]
        headers["WARC-Target-URI"] = url
        return headers

    def write_fetch(
        self, fetch: Fetch, when: datetime, *, metadata: bool = True, warc_length_lie: int = 0
    ) -> dict[str, tuple[int, int]]:
        """Write request, response and metadata records; return each one's byte range.

        warc_length_lie != 0 writes the response with a WARC Content-Length that is off by
        that many bytes (the block itself is unchanged), still as its own gzip member.
        """
        parts = urlsplit(fetch.url)
        host = parts.hostname or ""
        req_http = StatusAndHeaders(
            f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            [
                ("Host", host),
                ("User-Agent", USER_AGENT),
                ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                ("Accept-Language", "en-US,en;q=0.5"),
                ("Accept-Encoding", "br,gzip"),
                ("Connection", "Keep-Alive"),
            ],
            is_http_request=True,
        )
        request = self.writer.create_warc_record(
            fetch.url,
            "request",
            payload=io.BytesIO(b""),
            length=0,
            warc_headers_dict=self._headers("request", fetch.url, when, None),
            http_headers=req_http,
        )
        declared = len(fetch.body) if fetch.http_content_length is None else fetch.http_content_length
        resp_headers = [
            ("Date", format_datetime(when, usegmt=True)),
            ("Server", HOST_SERVERS[host]),
            *([("Content-Type", fetch.content_type)] if fetch.content_type is not None else []),
            ("Content-Length", str(declared)),
            ("Last-Modified", format_datetime(fetch.last_modified, usegmt=True)),
            ("ETag", f'"{hashlib.sha1(fetch.body).hexdigest()[:16]}"'),
            ("Accept-Ranges", "bytes"),
            *fetch.extra_headers,
        ]
        request_id = request.rec_headers.get_header("WARC-Record-ID")
        response = self.writer.create_warc_record(
            fetch.url,
            "response",
            payload=io.BytesIO(fetch.body),
            length=len(fetch.body),
            warc_headers_dict=self._headers("response", fetch.url, when, request_id),
            http_headers=StatusAndHeaders(fetch.status, resp_headers, protocol="HTTP/1.1"),
        )
        records = [("request", request), ("response", response)]
        if metadata:
            fetch_ms = 40 + stable_int("fetchTimeMs", self.wf.rel_path, fetch.url) % 900
            body = f"fetchTimeMs: {fetch_ms}\r\n".encode("ascii")
            response_id = response.rec_headers.get_header("WARC-Record-ID")
            meta_headers = self._headers("metadata", fetch.url, when, response_id)
            records.append(
                (
                    "metadata",
                    self.writer.create_warc_record(
                        fetch.url,
                        "metadata",
                        payload=io.BytesIO(body),
                        length=len(body),
                        warc_headers_dict=meta_headers,
                    ),
                )
            )
        ranges = {}
        for rec_type, record in records:
            start = self.stream.tell()
            if rec_type == "response" and warc_length_lie:
                self._write_lying(record, warc_length_lie)
            else:
                self.writer.write_record(record)
            ranges[rec_type] = (start, self.stream.tell())
        return ranges

    def _write_lying(self, record: ArcWarcRecord, lie: int) -> None:
        """Serialise uncompressed, change the WARC Content-Length, then gzip as one member."""
        plain = io.BytesIO()
        WARCWriter(plain, gzip=False, warc_version="1.0").write_record(record)
        head, sep, rest = plain.getvalue().partition(b"\r\n\r\n")
        true_length = len(rest) - 4  # the block, without the record's closing CRLF CRLF
        lying = head.replace(
            b"\r\nContent-Length: %d\r\n" % true_length, b"\r\nContent-Length: %d\r\n" % (true_length + lie)
        )
        if lying == head:
            raise RuntimeError("WARC Content-Length not found where expected")
        self.stream.write(gzip_member(lying + sep + rest))


def record_times(wf: WarcFile, count: int) -> list[datetime]:
    """Fetch times spread evenly over the file's window, in URL order."""
    step = WINDOW.total_seconds() / (count + 1)
    return [wf.start + timedelta(seconds=int((i + 1) * step)) for i in range(count)]


def write_paths(out: Path, snapshot: str, files: list[WarcFile]) -> None:
    """warc.paths.gz: one path per line relative to the output root (mtime 0: reproducible)."""
    listing = "".join(f"{wf.rel_path}\n" for wf in files).encode("ascii")
    target = out / "crawl-data" / snapshot / "warc.paths.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(listing, compresslevel=9, mtime=0))


def assign(pages: list[SourcePage]) -> dict[tuple[str, int], list[SourcePage]]:
    """Spread pages over snapshots and files by a stable hash of the URL.

    One page in RECRAWL_ONE_IN is also put into the other snapshot (a recrawl).
    """
    names = list(SNAPSHOTS)
    slots: dict[tuple[str, int], list[SourcePage]] = {(s, i): [] for s in names for i in range(FILES_PER_SNAPSHOT)}
    for page in sorted(pages, key=lambda p: p.url):
        h = stable_int("assign", page.url)
        home = h % len(names)
        slots[(names[home], (h >> 8) % FILES_PER_SNAPSHOT)].append(page)
        if (h >> 16) % RECRAWL_ONE_IN == 0:
            other = names[(home + 1) % len(names)]
            slots[(other, (h >> 24) % FILES_PER_SNAPSHOT)].append(page)
    return slots


def build_snapshots(
    out: Path, pages: list[SourcePage], legacy: dict[str, str], description: str
) -> dict[str, dict[str, list[str]]]:
    """Write both sample snapshots; return snapshot -> file path -> response URLs."""
    slots = assign(pages)
    written: dict[str, dict[str, list[str]]] = {}
    for snapshot, (start, prefix) in SNAPSHOTS.items():
        files = snapshot_files(snapshot, start, prefix)
        written[snapshot] = {}
        for wf in files:
            members = slots[(snapshot, wf.index)]
            path = out / wf.rel_path
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as stream:
                writer = WarcFileWriter(stream, wf, description)
                for page, when in zip(members, record_times(wf, len(members)), strict=True):
                    writer.write_fetch(page_fetch(page, legacy.get(page.url), wf.start), when)
            written[snapshot][wf.rel_path] = [p.url for p in members]
        write_paths(out, snapshot, files)
    return written


# --------------------------------------------------------------------------- broken snapshot


class PagePool:
    """Hands out distinct real pages for the broken snapshot in a stable order."""

    def __init__(self, pages: list[SourcePage]) -> None:
        self.pages = sorted(pages, key=lambda p: stable_int("broken", p.url))

    def take(self, source: str | None = None, lang: str | None = None, charset: str | None = None) -> SourcePage:
        """First unused page matching the filters (charset: fully representable in it)."""
        for page in self.pages:
            if (source and page.source != source) or (lang and page.lang != lang):
                continue
            text = page.text() if charset else ""
            if charset and not (encodes_strictly(text, charset) and not text.isascii()):
                continue
            self.pages.remove(page)
            return page
        raise SystemExit(f"error: no page left for source={source} lang={lang} charset={charset}")


def no_text_html(page: SourcePage) -> bytes:
    """The page's real markup with every text node, title and alt text removed."""
    markup = re.sub(r">[^<]+<", "><", page.text())
    return re.sub(r'\s(?:alt|title|summary)="[^"]*"', "", markup).encode("utf-8")


def oversized_html(page: SourcePage) -> bytes:
    """A >= 20 MiB page: the real paragraphs of one page repeated (gzips to very little)."""
    block = "\n".join(PARAGRAPH_RE.findall(page.text())) + "\n"
    head = '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8" />'
    head += "<title>Everything on one page</title></head><body>\n"
    tail = "</body></html>\n"
    repeats = -(-(OVERSIZED_BYTES - len(head) - len(tail)) // len(block.encode("utf-8")))
    return (head + block * repeats + tail).encode("utf-8")


def nginx_page(status: str) -> bytes:
    """The error/redirect body nginx sends, so non-200 records look real."""
    return (
        f"<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode("ascii")


class BrokenFileBuilder:
    """Collects the fetches of one broken WARC file, then writes and optionally damages it."""

    def __init__(self, wf: WarcFile, pool: PagePool) -> None:
        self.wf = wf
        self.pool = pool
        self.items: list[tuple[Fetch, BrokenRecord | None, int]] = []
        self.truncated: BrokenRecord | None = None

    def good(self, count: int) -> None:
        """Append real, well-formed pages."""
        for _ in range(count):
            page = self.pool.take()
            self.items.append((page_fetch(page, None, self.wf.start), None, 0))

    def broken(self, fetch: Fetch, kind: str, detail: str, warc_length_lie: int = 0, **facts: Any) -> None:
        """Append a damaged record and its EXPECTED.json entry."""
        facts = {"payload_bytes": len(fetch.body), **facts}
        self.items.append((fetch, BrokenRecord(fetch.url, self.wf.rel_path, kind, detail, facts), warc_length_lie))

    def truncated_last(self, fetch: Fetch, detail: str) -> None:
        """Append the file's final page, whose response gzip member write() cuts in half."""
        self.broken(fetch, "truncated_gzip", detail)
        self.truncated = self.items[-1][1]

    def write(self, out: Path, description: str) -> tuple[list[str], list[BrokenRecord]]:
        """Write the file; return the good URLs and the broken records."""
        path = out / self.wf.rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        ranges: dict[str, tuple[int, int]] = {}
        with path.open("wb") as stream:
            writer = WarcFileWriter(stream, self.wf, description)
            times = record_times(self.wf, len(self.items))
            for n, ((fetch, _, lie), when) in enumerate(zip(self.items, times, strict=True)):
                last = n == len(self.items) - 1
                ranges = writer.write_fetch(fetch, when, metadata=not (last and self.truncated), warc_length_lie=lie)
        if self.truncated:
            start, end = ranges["response"]
            cut = start + (end - start) // 2
            with path.open("r+b") as stream:
                stream.truncate(cut)
            self.truncated.facts.update(
                {"member_bytes": end - start, "member_bytes_kept": cut - start, "file_bytes": cut}
            )
        good = [f.url for f, b, _ in self.items if b is None]
        return good, [b for _, b, _ in self.items if b is not None]


def build_broken(out: Path, pages: list[SourcePage], png: Path, description: str) -> dict[str, Any]:
    """Write broken/ (its own snapshot) and return the EXPECTED.json content."""
    pool = PagePool(pages)
    start, prefix = BROKEN_START
    files = snapshot_files(BROKEN_SNAPSHOT, start, prefix)
    builders = [BrokenFileBuilder(wf, pool) for wf in files]
    before = start - timedelta(days=30)

    trunc = builders[0]
    trunc.good(5)
    page = pool.take(source="python-doc")
    trunc.truncated_last(
        page_fetch(page, None, start),
        "last record of the file: its request is intact, the response's gzip member is cut in "
        "the middle, and no metadata record follows",
    )

    lengths = builders[1]
    lengths.good(2)
    page = pool.take()
    body = page.path.read_bytes()
    lengths.broken(
        Fetch(page.url, body, "text/html; charset=utf-8", before, http_content_length=len(body) + 4096),
        "lying_http_content_length",
        "HTTP Content-Length says 4096 bytes more than the payload",
        declared_http_content_length=len(body) + 4096,
    )
    lengths.good(1)
    page = pool.take()
    body = page.path.read_bytes()
    lengths.broken(
        Fetch(page.url, body, "text/html; charset=utf-8", before, http_content_length=len(body) // 2),
        "lying_http_content_length",
        "HTTP Content-Length says half the payload size",
        declared_http_content_length=len(body) // 2,
    )
    lengths.good(1)
    page = pool.take()
    lengths.broken(
        page_fetch(page, None, start),
        "lying_warc_content_length",
        f"WARC Content-Length is {WARC_LENGTH_LIE} bytes short of the block (HTTP headers and "
        "payload intact, own gzip member); the metadata record follows",
        warc_length_lie=-WARC_LENGTH_LIE,
        warc_content_length_off_by=-WARC_LENGTH_LIE,
    )
    lengths.good(2)

    content = builders[2]
    content.good(2)
    page = pool.take(source="installation-guide", lang="de", charset="windows-1252")
    markup = META_CHARSET_RE.sub("", page.text())
    content.broken(
        Fetch(page.url, markup.encode("windows-1252"), "text/html", before),
        "non_utf8_no_charset",
        "German page in windows-1252, no charset in the header and the meta tag removed",
        true_charset="windows-1252",
    )
    page = pool.take(source="installation-guide", lang="fr", charset="iso-8859-1")
    content.broken(
        Fetch(page.url, page.text().encode("iso-8859-1"), "text/html; charset=utf-8", before),
        "mislabeled_charset",
        "French page in ISO-8859-1; header and meta tag both claim UTF-8",
        true_charset="iso-8859-1",
        declared_charset="utf-8",
    )
    page = pool.take(source="installation-guide", lang="ru", charset="windows-1251")
    markup = META_CHARSET_RE.sub('<meta charset="windows-1251">', page.text())
    content.broken(
        Fetch(page.url, markup.encode("windows-1251"), "text/html", before),
        "meta_charset_only",
        'Russian page in windows-1251, declared only by <meta charset="windows-1251">',
        true_charset="windows-1251",
    )
    content.broken(
        Fetch(PY_DOC_BASE + "_images/" + png.name, png.read_bytes(), "text/html; charset=utf-8", before),
        "binary_as_html",
        "a real PNG image (from the Python docs) served as text/html",
    )
    page = pool.take(source="python-doc")
    content.broken(
        Fetch(page.url, gzip.compress(page.path.read_bytes(), mtime=0), "text/html; charset=utf-8", before),
        "binary_as_html",
        "the page gzip-compressed but served without Content-Encoding",
    )
    content.broken(
        Fetch(PY_DOC_BASE + "empty.html", b"", "text/html; charset=utf-8", before),
        "empty_body",
        "200 OK with a 0-byte body",
    )
    page = pool.take(source="installation-guide")
    content.broken(
        Fetch(page.url, no_text_html(page), "text/html; charset=utf-8", before),
        "no_text",
        "the page's real markup with all text nodes, titles and alt texts removed",
    )
    content.broken(
        Fetch(
            PY_DOC_BASE + "library/no-such-module.html",
            nginx_page("404 Not Found"),
            "text/html",
            before,
            status="404 Not Found",
        ),
        "http_404",
        "404 Not Found with nginx's error page",
    )
    location = PY_DOC_BASE + "library/json.html"
    content.broken(
        Fetch(
            PY_DOC_BASE + "library/json",
            nginx_page("301 Moved Permanently"),
            "text/html",
            before,
            status="301 Moved Permanently",
            extra_headers=(("Location", location),),
        ),
        "http_301",
        f"301 Moved Permanently to {location}",
        location=location,
    )
    content.good(2)

    big = builders[3]
    big.good(2)
    page = pool.take(source="python-doc")
    big.broken(
        Fetch(PY_DOC_BASE + "oversized-20mb.html", oversized_html(page), "text/html; charset=utf-8", before),
        "oversized_20mb",
        f"the paragraphs of {page.url} repeated to at least 20 MiB",
    )
    big.good(1)
    page = pool.take()
    big.broken(
        page_fetch(page, None, start),
        "lying_warc_content_length",
        f"WARC Content-Length is {WARC_LENGTH_LIE} bytes longer than the block, so a reader "
        "runs into the next (metadata) record's gzip member",
        warc_length_lie=WARC_LENGTH_LIE,
        warc_content_length_off_by=WARC_LENGTH_LIE,
    )
    big.good(2)

    good_by_file: dict[str, list[str]] = {}
    broken: list[BrokenRecord] = []
    for builder in builders:
        good, damaged = builder.write(out, description)
        good_by_file[builder.wf.rel_path] = good
        broken += damaged
    write_paths(out, BROKEN_SNAPSHOT, files)
    return {
        "snapshot": BROKEN_SNAPSHOT,
        "paths_relative_to": "data/sample/broken (this file's directory)",
        "files": {path: {"good_response_records": len(urls), "good_uris": urls} for path, urls in good_by_file.items()},
        "broken_records": [
            {"uri": b.uri, "file": b.file, "kind": b.kind, "detail": b.detail, **b.facts} for b in broken
        ],
        "observed_with_fastwarc": observe_with_fastwarc(out, list(good_by_file), broken),
    }


# --------------------------------------------------------------------------- fastwarc observations


def read_responses(path: Path, quirks_mode: bool) -> dict[str, Any]:
    """Iterate a WARC file's responses with fastwarc and note what each yields."""
    records: list[dict[str, Any]] = []
    error = None
    with path.open("rb") as stream:
        try:
            iterator = ArchiveIterator(
                stream, record_types=WarcRecordType.response, parse_http=True, quirks_mode=quirks_mode
            )
            for record in iterator:
                http = record.http_headers
                payload = record.reader.read()
                records.append(
                    {
                        "uri": record.headers.get("WARC-Target-URI"),
                        "http_parsed": http is not None,
                        "status": http.status_code if http is not None else None,
                        "http_content_length": http.get("Content-Length") if http is not None else None,
                        "http_charset": record.http_charset,
                        "payload_bytes_read": len(payload),
                        "payload_digest_ok": record.headers.get("WARC-Payload-Digest") == sha1_base32(payload),
                    }
                )
        except Exception as exc:  # recording what fastwarc raises is the point
            error = f"{type(exc).__name__}: {exc}"
    return {"responses_yielded": len(records), "error": error, "records": records}


def observe_with_fastwarc(out: Path, files: list[str], broken: list[BrokenRecord]) -> dict[str, Any]:
    """Run fastwarc (default and quirks_mode) over every broken file and record the outcome."""
    broken_uris = {b.uri for b in broken}
    observed: dict[str, Any] = {
        "fastwarc_version": version("fastwarc"),
        "call": "ArchiveIterator(open(path, 'rb'), record_types=WarcRecordType.response, "
        "parse_http=True, quirks_mode=...)",
        "files": {},
    }
    for rel in files:
        modes = {}
        for mode, quirks in (("default", False), ("quirks_mode", True)):
            result = read_responses(out / rel, quirks)
            good = [r for r in result["records"] if r["uri"] not in broken_uris]
            modes[mode] = {
                "responses_yielded": result["responses_yielded"],
                "good_responses_yielded": len(good),
                "error": result["error"],
                "broken_records": [r for r in result["records"] if r["uri"] in broken_uris],
            }
        observed["files"][rel] = modes
    return observed


# --------------------------------------------------------------------------- README, labels, main


def file_table(out: Path, written: dict[str, dict[str, list[str]]]) -> list[str]:
    """Markdown rows: snapshot, file, responses, bytes."""
    rows = ["| snapshot | file | responses | bytes |", "| --- | --- | ---: | ---: |"]
    for snapshot, files in written.items():
        for rel, urls in files.items():
            rows.append(f"| {snapshot} | `{rel.split('/')[-1]}` | {len(urls)} | {(out / rel).stat().st_size} |")
    return rows


def describe_observation(obs: dict[str, Any] | None) -> str:
    """One cell of the README's broken-records table."""
    if obs is None:
        return "not yielded"
    if not obs["http_parsed"]:
        return f"yielded, HTTP not parsed, {obs['payload_bytes_read']} payload bytes"
    digest = "digest ok" if obs["payload_digest_ok"] else "digest MISMATCH"
    return f"status {obs['status']}, {obs['payload_bytes_read']} bytes, {digest}, charset {obs['http_charset']}"


def broken_readme(expected: dict[str, Any]) -> list[str]:
    """README section summarising the broken snapshot and fastwarc's behaviour on it."""
    obs = expected["observed_with_fastwarc"]
    lines = [
        "## Broken inputs (`broken/`)",
        "",
        f"`broken/crawl-data/{BROKEN_SNAPSHOT}/warc.paths.gz` lists {len(expected['files'])} files; "
        "each holds good real pages next to damaged records. `broken/EXPECTED.json` names every "
        f"damaged record and what fastwarc {obs['fastwarc_version']} does with it.",
        "",
        "| file | good responses | fastwarc default: good yielded / error | quirks_mode: good yielded / error |",
        "| --- | ---: | --- | --- |",
    ]
    for rel, info in expected["files"].items():
        d, q = obs["files"][rel]["default"], obs["files"][rel]["quirks_mode"]
        lines.append(
            f"| `{rel.split('/')[-1]}` | {info['good_response_records']} | "
            f"{d['good_responses_yielded']} / {d['error'] or 'none'} | "
            f"{q['good_responses_yielded']} / {q['error'] or 'none'} |"
        )
    lines += ["", "| kind | URI | fastwarc default | quirks_mode |", "| --- | --- | --- | --- |"]
    for b in expected["broken_records"]:
        cells = []
        for mode in ("default", "quirks_mode"):
            found = [r for r in obs["files"][b["file"]][mode]["broken_records"] if r["uri"] == b["uri"]]
            cells.append(describe_observation(found[0] if found else None))
        lines.append(f"| {b['kind']} | {b['uri']} | {cells[0]} | {cells[1]} |")
    return lines


def write_readme(
    out: Path,
    manifest: dict[str, Any],
    written: dict[str, dict[str, list[str]]],
    expected: dict[str, Any],
    full: bool,
) -> None:
    """README.md: sources, licences, how to rebuild, counts and sizes."""
    pkgs = manifest["packages"]
    snaps = manifest["snapshots"]
    lines = [
        "# CommonCrawl-style WARC sample (generated)",
        "",
        "Generated by `scripts/build_sample_data.py`; do not edit by hand. Rebuild with "
        + ("`python scripts/build_sample_data.py --full`." if full else "`python scripts/build_sample_data.py`.")
        + " The build is deterministic: same `.deb` files, same bytes.",
        "",
        "## Sources and licences",
        "",
        f"- `{PY_DOC_PKG}` {pkgs[PY_DOC_PKG]} (Debian): the Python 3.11 documentation, "
        f"served as `{PY_DOC_BASE}<path>`. Licence: PSF licence (`licenses/{PY_DOC_PKG}.copyright`).",
        f"- `{GUIDE_PKG}` {pkgs[GUIDE_PKG]} (Debian): the Debian 12 installation guide in "
        f"{len(manifest['guide_languages'])} languages, served as `{GUIDE_BASE}<lang>/<page>`. "
        f"Licence: GPL-2 (`licenses/{GUIDE_PKG}.copyright`, text in `licenses/GPL-2.html`).",
        "",
        "The pages are real; the HTTP exchange around them is made up: fetch dates come from the "
        "snapshot, IPs are RFC 5737 documentation addresses, Last-Modified is the file's mtime "
        "clamped to a week before the crawl. Paths in `warc.paths.gz` are relative to this "
        "directory, as CommonCrawl's are relative to its bucket.",
        "",
        "## Layout and counts",
        "",
        f"Pages: {manifest['pages']} ({manifest['page_counts']['python-doc']} Python docs pages, "
        f"{manifest['page_counts']['installation-guide']} installation-guide pages); "
        f"{len(manifest['recrawled'])} of them are recrawled (same bytes) in both snapshots.",
        "Each page is a `request`, a `response` and a `metadata` record; each file starts with a "
        "`warcinfo` record; every record is its own gzip member.",
        "",
        "| snapshot | files | responses |",
        "| --- | ---: | ---: |",
    ]
    for snapshot, info in manifest["snapshots"].items():
        lines.append(f"| {snapshot} | {len(info['files'])} | {info['responses']} |")
    lines += ["", *file_table(out, written), ""]
    lines += [
        "`labels.jsonl` gives the language of every installation-guide page "
        '(`{"url", "lang"}`, fastText lid.176 codes). Upstream leaves some paragraphs '
        f"untranslated; the {len(manifest['untranslated_left_out'])} translated pages whose text is "
        f"more than {UNTRANSLATED_MAX:.0%} the English original are never used (listed in "
        "`manifest.json`). Pages per language:",
        "",
        "| lang | pages | " + " | ".join(f"responses in {s}" for s in snaps) + " |",
        "| --- | ---: |" + " ---: |" * len(snaps),
        *(
            f"| {lang} | {n} | "
            + " | ".join(str(s["responses_by_language"].get(lang, 0)) for s in snaps.values())
            + " |"
            for lang, n in [*manifest["guide_languages"].items(), ("python-doc", manifest["page_counts"]["python-doc"])]
        ),
        "",
        "Pages served in a legacy charset (header and meta tag both say so; characters the "
        "charset lacks are numeric character references):",
        "",
        *(f"- {url}: {cs}" for url, cs in manifest["legacy_charsets"].items()),
        "",
        *broken_readme(expected),
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


OWN_OUTPUTS = ("crawl-data", "broken", "labels.jsonl", "manifest.json")  # wiki/, code/, books/: other scripts'


def prepare_out(out: Path) -> None:
    """Remove what an earlier build of this script wrote (the other sample scripts' folders stay),
    refusing to touch a directory this script did not make."""
    if out.exists():
        if any(out.iterdir()) and not (out / "manifest.json").exists():
            raise SystemExit(f"error: {out} is not empty and has no manifest.json; refusing to delete it")
        for name in OWN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def build(out: Path, cache: Path, full: bool) -> dict[str, Any]:
    """Build the whole sample into out and return its manifest."""
    debs = ensure_debs(cache)
    roots = {pkg: extract_deb(deb, cache) for pkg, deb in debs.items()}
    versions = {pkg: deb_version(deb) for pkg, deb in debs.items()}
    py_pages = python_doc_pages(roots[PY_DOC_PKG])
    guide, untranslated = drop_untranslated(guide_pages(roots[GUIDE_PKG]))
    pages = select_pages(py_pages, guide, full)
    legacy = choose_legacy_charsets(pages)
    description = (
        f"Real HTML from Debian {PY_DOC_PKG} {versions[PY_DOC_PKG]} and {GUIDE_PKG} "
        f"{versions[GUIDE_PKG]}, served under their upstream URLs"
    )

    prepare_out(out)
    written = build_snapshots(out, pages, legacy, description)
    png = sorted((roots[PY_DOC_PKG] / PY_DOC_DIR / "_images").glob("*.png"))[0]
    expected = build_broken(out / "broken", py_pages + guide, png, description)
    (out / "broken" / "EXPECTED.json").write_text(
        json.dumps(expected, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    guide_selected = [p for p in pages if p.source == "installation-guide"]
    labels = "".join(
        json.dumps({"url": p.url, "lang": LID_CODES.get(p.lang, p.lang)}, ensure_ascii=False) + "\n"
        for p in guide_selected
    )
    (out / "labels.jsonl").write_text(labels, encoding="utf-8")

    licenses = out / "licenses"
    licenses.mkdir()
    for pkg, root in roots.items():
        shutil.copyfile(root / "usr/share/doc" / pkg / "copyright", licenses / f"{pkg}.copyright")
    shutil.copyfile(roots[GUIDE_PKG] / GUIDE_DIR / "en" / "apf.html", licenses / "GPL-2.html")

    lang_of = {p.url: LID_CODES.get(p.lang, p.lang) if p.source == "installation-guide" else p.source for p in pages}
    seen = Counter(url for files in written.values() for urls in files.values() for url in urls)
    manifest: dict[str, Any] = {
        "packages": versions,
        "full": full,
        "pages": len(pages),
        "page_counts": dict(sorted(Counter(p.source for p in pages).items())),
        "guide_languages": dict(sorted(Counter(LID_CODES.get(p.lang, p.lang) for p in guide_selected).items())),
        "untranslated_left_out": sorted(p.url for p in untranslated),
        "recrawled": sorted(url for url, n in seen.items() if n > 1),
        "legacy_charsets": dict(sorted(legacy.items())),
        "snapshots": {
            snapshot: {
                "paths": f"crawl-data/{snapshot}/warc.paths.gz",
                "responses": sum(len(urls) for urls in files.values()),
                "responses_by_language": dict(
                    sorted(Counter(lang_of[url] for urls in files.values() for url in urls).items())
                ),
                "files": {
                    rel: {"responses": len(urls), "bytes": (out / rel).stat().st_size} for rel, urls in files.items()
                },
            }
            for snapshot, files in written.items()
        },
        "broken": {"paths": f"broken/crawl-data/{BROKEN_SNAPSHOT}/warc.paths.gz", "expected": "broken/EXPECTED.json"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    write_readme(out, manifest, written, expected, full)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the counts of what it built."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output root (default data/sample; .phiflow/sample-full with --full)")
    parser.add_argument("--full", action="store_true", help="use every page instead of the compact subset")
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO_ROOT / ".phiflow" / "cache",
        help="where .deb files are downloaded and unpacked",
    )
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / (".phiflow/sample-full" if args.full else "data/sample")
    manifest = build(out.resolve(), args.cache.resolve(), args.full)

    print(f"built {out}: {manifest['pages']} pages {manifest['page_counts']}")
    for snapshot, info in manifest["snapshots"].items():
        size = sum(f["bytes"] for f in info["files"].values())
        print(f"  {snapshot}: {info['responses']} responses in {len(info['files'])} files, {size} bytes")
    print(f"  languages: {manifest['guide_languages']}")
    print(f"  legacy charsets: {len(manifest['legacy_charsets'])} pages, recrawled: {len(manifest['recrawled'])}")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"  total on disk: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
