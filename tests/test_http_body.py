"""HTTP bodies as servers send them (issue 18, WARC and HTTP 1-7): content and transfer codings,
truncated streams, charsets and BOMs, a missing Content-Type, records the reader cannot get past,
files that are not WARC, and the non-response records of a file. Every input is built here, record
by record, so each category is a case of its own rather than one sample page."""

from __future__ import annotations

import gzip
import io
import os
import uuid
import zlib

import brotli
import pytest

from phiflow.recipe import CommonCrawlExtractParams
from phiflow.records.http_body import dechunk, decode_body, inflate, sniff_content_type
from phiflow.records.warc_records import FILE_OK, FILE_PREFIX, iter_rows

PARAMS = CommonCrawlExtractParams()
TEXT = (
    "Photosynthesis converts light energy into chemical energy. Plants, algae and some bacteria use it to "
    "turn carbon dioxide and water into glucose and oxygen, which feeds almost every food chain on Earth."
)
HTML = f"<!DOCTYPE html><html><head><title>Photosynthesis</title></head><body><p>{TEXT}</p></body></html>"
UMLAUT = "Die Prüfung der Größe übertrifft die Erwartungen der Schüler, die früh über Änderungen lernten."


def warc(*records: bytes, compress: bool = True) -> bytes:
    return b"".join(gzip.compress(r) if compress else r for r in records)


def record(http: bytes, *, kind: str = "response", url: str = "https://example.org/p") -> bytes:
    mime = "application/http; msgtype=response" if kind in ("response", "request") else "application/warc-fields"
    head = (
        f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\n"
        f"WARC-Target-URI: {url}\r\nWARC-Date: 2024-02-20T10:00:00Z\r\nContent-Type: {mime}\r\n"
        f"Content-Length: {len(http)}\r\n\r\n"
    )
    return head.encode() + http + b"\r\n\r\n"


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    fields = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{fields}\r\n".encode() + body


def rows(data: bytes) -> list[dict]:
    return list(iter_rows(io.BytesIO(data), "mem://test.warc.gz", "web", PARAMS))


def page(body: bytes, *headers: str) -> dict:
    """The one document row of a one-response file."""
    (row,) = [r for r in rows(warc(record(response(body, *headers)))) if r["doc_id"]]
    return row


def chunked(data: bytes, size: int = 37, ext: str = "") -> bytes:
    parts = [f"{len(data[i : i + size]):x}{ext}\r\n".encode() + data[i : i + size] + b"\r\n"
             for i in range(0, len(data), size)]  # fmt: skip
    return b"".join(parts) + b"0\r\nX-Trailer: yes\r\n\r\n"


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


HTML_TYPE = "Content-Type: text/html; charset=utf-8"


# -- content and transfer codings ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "body", "headers", "steps"),
    [
        ("gzip", gzip.compress(HTML.encode()), ["Content-Encoding: gzip"], ["gzip"]),
        ("x-gzip", gzip.compress(HTML.encode()), ["Content-Encoding: x-gzip"], ["gzip"]),
        ("deflate (zlib)", zlib.compress(HTML.encode()), ["Content-Encoding: deflate"], ["deflate"]),
        ("deflate (raw)", raw_deflate(HTML.encode()), ["Content-Encoding: deflate"], ["deflate"]),
        ("br", brotli.compress(HTML.encode()), ["Content-Encoding: br"], ["br"]),
        ("chunked + gzip", chunked(gzip.compress(HTML.encode())), ["Transfer-Encoding: chunked",
                                                                    "Content-Encoding: gzip"], ["chunked", "gzip"]),
        ("gzip twice", gzip.compress(gzip.compress(HTML.encode())), ["Content-Encoding: gzip, gzip"],
         ["gzip", "gzip"]),
        ("chunked with extensions and trailers", chunked(HTML.encode(), 11, ';ext="a b"'),
         ["Transfer-Encoding: chunked"], ["chunked"]),
        ("decoded by the crawler", HTML.encode(), ["X-Crawler-Content-Encoding: gzip",
                                                   "X-Crawler-Transfer-Encoding: chunked"], []),
    ],
)  # fmt: skip
def test_coded_bodies_are_decoded_to_the_page_text(name, body, headers, steps) -> None:
    row = page(body, HTML_TYPE, *headers)
    assert row["drop_reason"] is None, name
    assert row["text"] == TEXT and row["title"] == "Photosynthesis", name
    assert row["_decoding"] == tuple(steps), name


def test_a_truncated_gzip_stream_gives_what_was_there_and_says_so() -> None:
    words = " ".join(f"Sentence {i} names the sample {uuid.UUID(int=i * 7919).hex}." for i in range(400))
    long_html = HTML.replace(TEXT, f"{TEXT} {words}").encode()
    whole = gzip.compress(long_html)
    cut = whole[: len(whole) * 2 // 3]
    row = page(cut, HTML_TYPE, "Content-Encoding: gzip")
    assert row["drop_reason"] is None and row["_decoding"] == ("gzip_truncated",)
    assert row["text"].startswith(TEXT) and len(row["text"]) > len(long_html) // 2
    out, note = inflate(cut, 31, 10**7)
    assert note == "truncated" and long_html.startswith(out) and 0 < len(out) < len(long_html)


def test_a_body_labelled_coded_but_sent_plain_is_kept() -> None:
    row = page(HTML.encode(), HTML_TYPE, "Content-Encoding: gzip")
    assert row["drop_reason"] is None and row["text"] == TEXT and row["_decoding"] == ("gzip_absent",)


def test_decompression_bombs_and_unknown_codings_are_named() -> None:
    bomb = gzip.compress(b"<p>" + b"a" * 20_000_000)
    assert page(bomb, HTML_TYPE, "Content-Encoding: gzip")["drop_reason"] == "too_large"
    assert decode_body(bomb, [("Content-Encoding", "gzip")], 1_000_000).error == "too_large"
    assert page(HTML.encode(), HTML_TYPE, "Content-Encoding: zstd-custom")["drop_reason"].startswith(
        "unsupported_encoding"
    )


def test_dechunk_never_leaves_chunk_lines_in_the_body() -> None:
    data = os.urandom(3000)
    assert dechunk(chunked(data, 100, ";a=1;b")) == (data, None)
    assert dechunk(chunked(data, 100)[:-40])[1] == "truncated"  # no last chunk
    assert dechunk(b"<html>not chunked</html>") == (b"<html>not chunked</html>", "absent")
    lf_only = b"5\nhello\n6\n world\n0\n\n"
    assert dechunk(lf_only) == (b"hello world", None)


def test_multi_member_gzip_is_read_whole() -> None:
    body = gzip.compress(b"first half, ") + gzip.compress(b"second half")
    assert inflate(body, 31, 1000) == (b"first half, second half", None)


# -- charsets ----------------------------------------------------------------------------------------------
def umlaut_page(charset_meta: str = "") -> str:
    meta = f'<meta charset="{charset_meta}">' if charset_meta else ""
    return f"<html><head>{meta}<title>t</title></head><body><p>{UMLAUT}</p></body></html>"


def test_a_utf8_bom_is_not_text() -> None:
    row = page(b"\xef\xbb\xbf" + HTML.encode(), HTML_TYPE)
    assert row["drop_reason"] is None and "\ufeff" not in row["text"] and row["text"] == TEXT


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_pages_with_a_bom_are_decoded_not_taken_for_binary(codec) -> None:
    bom = b"\xff\xfe" if codec.endswith("le") else b"\xfe\xff"
    row = page(bom + umlaut_page().encode(codec), "Content-Type: text/html")
    assert row["drop_reason"] is None and row["text"] == UMLAUT and row["charset"] == codec


def test_a_latin1_header_on_utf8_bytes_does_not_make_mojibake() -> None:
    row = page(umlaut_page("utf-8").encode(), "Content-Type: text/html; charset=ISO-8859-1")
    assert row["text"] == UMLAUT and "Ã" not in row["text"] and row["charset"] == "utf-8"
    row = page(umlaut_page().encode(), "Content-Type: text/html; charset=windows-1252")  # no meta either
    assert row["text"] == UMLAUT


def test_a_real_latin1_page_stays_latin1() -> None:
    row = page(umlaut_page().encode("latin-1"), "Content-Type: text/html; charset=ISO-8859-1")
    assert row["text"] == UMLAUT and row["charset"] == "iso8859-1"


# -- a response without Content-Type --------------------------------------------------------------------
def test_a_response_without_content_type_is_sniffed() -> None:
    row = page(b"\n  " + HTML.encode())
    assert row["drop_reason"] is None and row["text"] == TEXT and "sniffed_type" in row["_decoding"]
    assert page(b"%PDF-1.7\x00\x01\x02 binary")["drop_reason"] == "not_html"
    assert sniff_content_type(b"<?xml version='1.0'?><feed/>") == "text/xml"
    assert sniff_content_type(b"just words") == "text/plain"
    assert sniff_content_type(b"<P>para") == "text/html" and sniff_content_type(b"<Pre>x") == "text/plain"
    assert sniff_content_type("\ufeff<html><body>x".encode("utf-16-le")) == "text/html"


# -- files and records ------------------------------------------------------------------------------------
def test_files_that_are_not_warc_are_failures_with_a_reason() -> None:
    assert rows(os.urandom(96 * 1024))[-1]["drop_reason"] == FILE_PREFIX + "not_warc"
    assert rows(b"")[-1]["drop_reason"] == FILE_PREFIX + "empty_file"
    assert rows(gzip.compress(os.urandom(4096)))[-1]["drop_reason"].startswith(FILE_PREFIX)
    assert rows(gzip.compress(os.urandom(4096)))[-1]["drop_reason"] != FILE_PREFIX + FILE_OK


def test_non_response_records_are_counted_by_type() -> None:
    data = warc(
        record(b"software: test\r\n", kind="warcinfo"),
        record(b"GET /p HTTP/1.1\r\nHost: example.org\r\n\r\n", kind="request"),
        record(response(HTML.encode(), HTML_TYPE)),
        record(b"fetchTimeMs: 12\r\n", kind="metadata"),
        record(response(b"", "WARC-Profile: x"), kind="revisit"),
    )
    out = rows(data)
    assert [r["text"] for r in out if r["doc_id"]] == [TEXT]
    assert out[-1]["drop_reason"] == FILE_PREFIX + FILE_OK
    assert out[-1]["records"] == {"warcinfo": 1, "request": 1, "response": 1, "metadata": 1, "revisit": 1}


# -- a bad record costs that record only -------------------------------------------------------------------
def huge_header_record() -> bytes:
    """A WARC header of 48 KB: over fastwarc's limit, which raises and used to end the file there."""
    huge = b"X-Huge: " + b"b" * 48_000
    return b"WARC/1.0\r\nWARC-Type: response\r\n" + huge + b"\r\nContent-Length: 5\r\n\r\nhello\r\n\r\n"


def good(i: int) -> bytes:
    return record(response(HTML.encode(), HTML_TYPE), url=f"https://example.org/{i}")


@pytest.mark.parametrize("compress", [True, False])
def test_reading_resumes_after_an_unreadable_record(compress) -> None:
    parts = [good(0), huge_header_record(), good(2), b"WARC/1.0\r\nWARC-Type: resp\x00\xff garbage\r\n\r\n", good(4)]
    members = [gzip.compress(p) if compress else p for p in parts]
    out = rows(b"".join(members))
    assert [r["url"] for r in out if r["doc_id"]] == [f"https://example.org/{i}" for i in (0, 2, 4)]
    lost = [r for r in out if not r["doc_id"] and not r["drop_reason"].startswith(FILE_PREFIX)]
    starts = [sum(len(m) for m in members[:k]) for k in range(len(members))]
    assert lost and lost[0]["warc_offset"] == starts[1] and lost[0]["drop_reason"] == "bad_record:OSError"
    assert {r["warc_offset"] for r in lost} <= {starts[1], starts[3]}
    assert out[-1]["drop_reason"] == FILE_PREFIX + FILE_OK and out[-1]["records"]["response"] == 3


def test_each_record_of_a_shared_gzip_member_is_located() -> None:
    """Several records in one gzip member (other writers than CommonCrawl's do it): each row's
    (warc_offset, warc_member_offset) finds exactly its record, a request record between them included."""
    recs = [good(0), good(1), record(b"GET / HTTP/1.1\r\n\r\n", kind="request"), good(3), good(4)]
    members = [gzip.compress(recs[0]), gzip.compress(b"".join(recs[1:4])), gzip.compress(recs[4])]
    data = b"".join(members)
    out = [r for r in rows(data) if r["doc_id"]]
    assert [r["url"] for r in out] == [f"https://example.org/{i}" for i in (0, 1, 3, 4)]
    for r in out:
        inflated = zlib.decompressobj(31).decompress(data[r["warc_offset"]:])
        at = inflated[r["warc_member_offset"]:]
        assert at.startswith(b"WARC/1.0\r\n") and r["warc_record_id"].encode() in at[:400], r
    assert [(r["warc_offset"], r["warc_member_offset"] > 0) for r in out] == [
        (0, False), (len(members[0]), False), (len(members[0]), True), (len(members[0]) + len(members[1]), False)]


def test_an_unreadable_last_record_is_counted_and_the_file_is_read() -> None:
    members = [gzip.compress(good(0)), gzip.compress(huge_header_record())]
    out = rows(b"".join(members))
    assert [r["url"] for r in out if r["doc_id"]] == ["https://example.org/0"]
    assert [r["warc_offset"] for r in out if r["drop_reason"] == "bad_record:OSError"] == [len(members[0])]
    assert out[-1]["drop_reason"] == FILE_PREFIX + FILE_OK



def test_the_extract_task_reports_codings_record_types_lost_records_and_files_that_are_not_warc(tmp_path) -> None:
    """The per-file reports the stage sums into its manifest (spark_jobs.commoncrawl_extract)."""
    import json

    import pyarrow as pa

    from spark_jobs.commoncrawl_extract import extract_files, report_name

    hostile = tmp_path / "hostile.warc.gz"
    members = [
        gzip.compress(record(b"software: test\r\n", kind="warcinfo")),
        gzip.compress(record(response(gzip.compress(HTML.encode()), HTML_TYPE, "Content-Encoding: gzip"))),
        gzip.compress(huge_header_record()),
        gzip.compress(record(response(chunked(HTML.encode()), "Transfer-Encoding: chunked"))),  # no type
    ]
    hostile.write_bytes(b"".join(members))
    (tmp_path / "random.warc.gz").write_bytes(os.urandom(96 * 1024))
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    urls = [p.as_uri() for p in (hostile, tmp_path / "random.warc.gz", tmp_path / "empty.warc.gz")]
    run = extract_files("web", PARAMS, str(tmp_path / "reports"))
    kept = [r for b in run(iter([pa.record_batch([pa.array(urls)], names=["warc_url"])])) for r in b.to_pylist()]
    assert [r["text"] for r in kept] == [TEXT, TEXT]
    reports = [json.loads((tmp_path / "reports" / report_name(u)).read_text()) for u in urls]
    assert [r["outcome"] for r in reports] == ["ok", "not_warc", "empty_file"]
    assert reports[0]["records"] == {"warcinfo": 1, "response": 2}
    assert reports[0]["http_decoding"] == {"gzip": 1, "chunked": 1, "sniffed_type": 1}
    assert reports[0]["lost_records"] == [
        {"url": urls[0], "offset": len(members[0]) + len(members[1]), "member_offset": 0,
         "reason": "bad_record:OSError"}
    ]


# -- pathological pages are refused before they are parsed ----------------------------------------------------
@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("nested 50,000 deep", b"<html><body>" + b"<div>" * 50_000 + b"x" + b"</div>" * 50_000, "too_complex:depth"),
        ("depth that grows one per unit", b"<html><body>" + b"<div><span>x</span>" * 3000, "too_complex:depth"),
        ("formatting bomb", b"<html><body>" + b"<b><i><u>" * 3000 + b"text", "too_complex:depth"),
        ("too many elements", b"<html><body>" + b"<span>a</span>" * 210_000, "too_complex:elements"),
    ],
)
def test_pathological_pages_are_refused_and_the_file_goes_on(name, body, reason) -> None:
    data = warc(record(response(body, HTML_TYPE), url="https://example.org/bad"), good(1))
    out = [r for r in rows(data) if r["doc_id"]]
    assert [r["drop_reason"] for r in out] == [reason, None], name


def test_ordinary_markup_is_not_taken_for_deep_nesting() -> None:
    flat = (
        "<html><head><script>" + "for(i=0;i<n;i++){a<b}" * 2000 + "</script><!-- <div> " * 600 + "--></head>"
        "<body>" + "<p>para<br><img src=x>" * 3000 + "<svg>" + '<path d="M0"/>' * 3000 + "</svg>"
        "<ul>" + "<li>item" * 2000 + "</ul>" + f"<p>{TEXT}</p></body></html>"
    )
    row = page(flat.encode(), HTML_TYPE)
    assert row["drop_reason"] is None and TEXT in row["text"]


def test_a_repeated_record_id_never_gives_two_rows_one_doc_id() -> None:
    rid = f"<urn:uuid:{uuid.uuid4()}>"

    def same_id(i: int) -> bytes:
        return good(i).replace(b"WARC-Record-ID: <urn:uuid:", f"WARC-Record-ID: {rid}\r\nX-Old: <".encode(), 1)

    one = b"".join(gzip.compress(same_id(i)) for i in range(3))  # repeated within a file
    rows_a = [r for r in iter_rows(io.BytesIO(one), "s3://cc/a.warc.gz", "web", PARAMS) if r["doc_id"]]
    assert [r["warc_record_id"] for r in rows_a] == [rid] * 3
    ids_a = [r["doc_id"] for r in rows_a]
    ids_b = [r["doc_id"] for r in iter_rows(io.BytesIO(one), "s3://cc/b.warc.gz", "web", PARAMS) if r["doc_id"]]
    assert len(set(ids_a + ids_b)) == 6  # ... and across files
    again = [r["doc_id"] for r in iter_rows(io.BytesIO(one), "s3://cc/a.warc.gz", "web", PARAMS) if r["doc_id"]]
    assert again == ids_a  # a rerun gives the same ids
