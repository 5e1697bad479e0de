"""Per-record extraction logic on real WARC files, without Spark: every broken input is counted by
its reason and never costs the good records of its file."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest
from conftest import BROKEN, SAMPLE

from phiflow.ids import doc_id
from phiflow.recipe import CommonCrawlExtractParams
from phiflow.records.html_text import binary_fraction, decode_html, extract
from phiflow.records.warc_records import FILE_OK, FILE_PREFIX, iter_rows, record_key

PARAMS = CommonCrawlExtractParams()
EXPECTED = json.loads((BROKEN / "EXPECTED.json").read_text())

# What the stage must do with each kind of breakage the sample builder planted.
OUTCOME = {
    "truncated_gzip": "payload_digest_mismatch",
    "lying_warc_content_length": "payload_digest_mismatch",
    "lying_http_content_length": None,  # the payload itself is intact: keep it
    "non_utf8_no_charset": None,
    "mislabeled_charset": None,
    "meta_charset_only": None,
    "binary_as_html": "binary_payload",
    "empty_body": "empty_payload",
    "no_text": "too_little_text",
    "http_404": "http_404",
    "http_301": "http_301",
    "oversized_20mb": "too_large",
}


def rows_of(path: Path) -> list[dict]:
    with open(path, "rb") as fh:
        return list(iter_rows(fh, str(path), "web", PARAMS))


@pytest.fixture(scope="module")
def broken_rows() -> dict[str, list[dict]]:
    return {f: rows_of(BROKEN / f) for f in EXPECTED["files"]}


def test_every_broken_record_gets_its_outcome(broken_rows) -> None:
    by_url = {r.get("url"): r for rows in broken_rows.values() for r in rows if r.get("url")}
    for rec in EXPECTED["broken_records"]:
        row = by_url[rec["uri"]]
        assert row["drop_reason"] == OUTCOME[rec["kind"]], rec


def test_good_records_of_broken_files_survive(broken_rows) -> None:
    for name, info in EXPECTED["files"].items():
        kept = {r["url"] for r in broken_rows[name] if r["drop_reason"] is None}
        assert set(info["good_uris"]) <= kept, name
        assert broken_rows[name][-1]["drop_reason"] == FILE_PREFIX + FILE_OK  # every file read to its end


def test_charsets_are_decoded_truthfully(broken_rows) -> None:
    by_kind = {r["kind"]: r["uri"] for r in EXPECTED["broken_records"]}
    by_url = {r.get("url"): r for rows in broken_rows.values() for r in rows}
    mislabeled = by_url[by_kind["mislabeled_charset"]]
    assert mislabeled["charset"] != "utf-8"  # the header lied; the bytes are not UTF-8
    assert "\ufffd" not in mislabeled["text"]
    assert any(ch in mislabeled["text"] for ch in "éèàçê")  # French accents survived
    no_charset = by_url[by_kind["non_utf8_no_charset"]]
    assert "\ufffd" not in no_charset["text"] and any(ch in no_charset["text"] for ch in "äöüß")
    meta = by_url[by_kind["meta_charset_only"]]
    assert sum("а" <= ch <= "я" for ch in meta["text"]) > 100  # Russian decoded as Cyrillic


def test_rows_carry_lineage_fields() -> None:
    paths = gzip.decompress((SAMPLE / "crawl-data/CC-MAIN-2024-10/warc.paths.gz").read_bytes()).decode().split()
    rows = rows_of(SAMPLE / paths[0])
    kept = [r for r in rows if r["drop_reason"] is None]
    assert len(kept) >= 10
    for r in kept:
        assert r["doc_id"] == doc_id("web", record_key(r["warc_record_id"], paths[0], 0))
        assert r["warc_record_id"].startswith("<urn:uuid:")
        assert r["source_uri"].endswith(paths[0]) and r["parent_ids"] == []
        assert r["fetch_time"].year == 2024 and r["http_status"] == 200 and r["text_chars"] == len(r["text"])
    assert len({r["doc_id"] for r in kept}) == len(kept)


def test_code_blocks_and_tables_keep_their_lines() -> None:
    html = b"""<html><head><title>T</title></head><body><main><h1>Title</h1>
    <p>Some explanation of the function below, long enough to count as main content here.</p>
    <pre>def add(a, b):
    return a + b</pre>
    <table><tr><th>name</th><th>value</th></tr><tr><td>alpha</td><td>1</td></tr></table>
    </main></body></html>"""
    ex = extract(html, "utf-8")
    assert "def add(a, b):\n    return a + b" in ex.text
    assert "alpha" in ex.text and ex.title == "T"


def test_decode_prefers_truth_over_labels() -> None:
    latin1 = "Café crème à la française".encode("latin-1")
    assert decode_html(latin1, "utf-8")[2] != "http"  # label rejected: bytes are not UTF-8
    assert "Café" in decode_html(latin1, "utf-8")[0]
    assert decode_html("Ünïcödé".encode(), "utf-8") == ("Ünïcödé", "utf-8", "http")
    assert binary_fraction(bytes(range(256)) * 10) > 0.05 and binary_fraction(b"<html>plain</html>") == 0


def test_unreadable_stream_is_a_file_level_row() -> None:
    rows = list(iter_rows(io.BytesIO(b"\x1f\x8b\x08\x00garbage that is not gzip"), "x.warc.gz", "web", PARAMS))
    assert len(rows) == 1 and rows[0]["drop_reason"].startswith(FILE_PREFIX)
