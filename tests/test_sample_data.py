"""Checks of the committed CommonCrawl-style sample in data/sample.

The pipeline's tests read this sample instead of the network, so it has to stay what its
README and broken/EXPECTED.json say: parseable by fastwarc, digests right, counts right,
and reproducible by scripts/build_sample_data.py.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
BROKEN = SAMPLE / "broken"
DEB_CACHE = ROOT / ".phiflow" / "cache"
SNAPSHOTS = ("CC-MAIN-2024-10", "CC-MAIN-2024-18")
PATH_RE = re.compile(r"crawl-data/(CC-MAIN-[0-9A-Z-]+)/segments/\d{13}\.\d+/warc/CC-MAIN-\d{14}-\d{14}-\d{5}\.warc\.gz")
# The Debian 12 guide ships 19 languages; lid.176 calls zh_CN "zh".
GUIDE_LANGS = {
    "ca",
    "cs",
    "da",
    "de",
    "el",
    "en",
    "es",
    "fr",
    "id",
    "it",
    "ja",
    "ko",
    "nl",
    "pt",
    "ro",
    "ru",
    "sv",
    "vi",
    "zh",
}
BROKEN_KINDS = {
    "truncated_gzip",
    "lying_http_content_length",
    "lying_warc_content_length",
    "non_utf8_no_charset",
    "mislabeled_charset",
    "meta_charset_only",
    "binary_as_html",
    "oversized_20mb",
    "empty_body",
    "no_text",
    "http_404",
    "http_301",
}


@dataclass(frozen=True)
class Response:
    """The parts of a response record the checks need."""

    uri: str
    record_id: str
    date: str
    payload_digest: str
    content_type: str | None
    status: int
    body: bytes


def sha1_base32(data: bytes) -> str:
    """CommonCrawl's payload digest form."""
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def listed_paths(root: Path, snapshot: str) -> list[str]:
    """Lines of a snapshot's warc.paths.gz."""
    with gzip.open(root / "crawl-data" / snapshot / "warc.paths.gz", "rt", encoding="ascii") as listing:
        return listing.read().split()


@cache
def responses(rel: str) -> tuple[Response, ...]:
    """All response records of one sample file, read once per test session."""
    found = []
    with (SAMPLE / rel).open("rb") as stream:
        for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
            headers = record.headers
            found.append(
                Response(
                    uri=headers.get("WARC-Target-URI"),
                    record_id=headers.get("WARC-Record-ID"),
                    date=headers.get("WARC-Date"),
                    payload_digest=headers.get("WARC-Payload-Digest"),
                    content_type=record.http_headers.get("Content-Type"),
                    status=record.http_headers.status_code,
                    body=record.reader.read(),
                )
            )
    return tuple(found)


def all_records(path: Path, quirks_mode: bool = False) -> Iterator[tuple[str, dict[str, str]]]:
    """(record type, WARC headers) of every record in a file."""
    with path.open("rb") as stream:
        for record in ArchiveIterator(stream, parse_http=False, quirks_mode=quirks_mode):
            yield record.headers.get("WARC-Type"), dict(record.headers.items())


def manifest() -> dict:
    """The build's manifest.json."""
    return json.loads((SAMPLE / "manifest.json").read_text(encoding="utf-8"))


@cache
def load_builder() -> ModuleType:
    """Import scripts/build_sample_data.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_sample_data", ROOT / "scripts" / "build_sample_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_every_listed_path_exists() -> None:
    for snapshot in SNAPSHOTS:
        paths = listed_paths(SAMPLE, snapshot)
        assert len(paths) == 4
        for rel in paths:
            match = PATH_RE.fullmatch(rel)
            assert match and match.group(1) == snapshot, rel
            assert (SAMPLE / rel).is_file(), rel


def test_files_are_commoncrawl_shaped() -> None:
    """warcinfo first, then request -> response -> metadata per page, linked by ids."""
    for snapshot in SNAPSHOTS:
        for rel in listed_paths(SAMPLE, snapshot):
            records = list(all_records(SAMPLE / rel))
            assert records[0][0] == "warcinfo"
            warcinfo_id = records[0][1]["WARC-Record-ID"]
            body = records[1:]
            assert len(body) % 3 == 0 and body
            for (t1, req), (t2, resp), (t3, meta) in zip(body[::3], body[1::3], body[2::3], strict=True):
                assert (t1, t2, t3) == ("request", "response", "metadata")
                assert req["WARC-Target-URI"] == resp["WARC-Target-URI"] == meta["WARC-Target-URI"]
                assert resp["WARC-Concurrent-To"] == req["WARC-Record-ID"]
                assert meta["WARC-Concurrent-To"] == resp["WARC-Record-ID"]
                assert req["WARC-Warcinfo-ID"] == resp["WARC-Warcinfo-ID"] == warcinfo_id
                assert resp["WARC-IP-Address"]
                assert resp["WARC-Block-Digest"].startswith("sha1:")


def test_responses_have_ids_dates_and_verified_digests() -> None:
    ids = set()
    for snapshot in SNAPSHOTS:
        for rel in listed_paths(SAMPLE, snapshot):
            for resp in responses(rel):
                assert re.fullmatch(r"<urn:uuid:[0-9a-f-]{36}>", resp.record_id)
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", resp.date)
                assert resp.uri.startswith("https://")
                assert resp.payload_digest == sha1_base32(resp.body), resp.uri
                assert resp.status == 200
                ids.add(resp.record_id)
    assert len(ids) == sum(m["responses"] for m in manifest()["snapshots"].values())


def test_counts_match_readme() -> None:
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    for snapshot in SNAPSHOTS:
        row = re.search(rf"^\| {snapshot} \| (\d+) \| (\d+) \|$", readme, re.M)
        assert row, f"README has no count row for {snapshot}"
        paths = listed_paths(SAMPLE, snapshot)
        assert int(row.group(1)) == len(paths)
        assert int(row.group(2)) == sum(len(responses(rel)) for rel in paths)


def test_declared_charsets_decode_the_bodies() -> None:
    """Every page decodes strictly with its header charset, legacy ones included."""
    legacy = manifest()["legacy_charsets"]
    seen_legacy = {}
    for snapshot in SNAPSHOTS:
        for rel in listed_paths(SAMPLE, snapshot):
            for resp in responses(rel):
                charset = re.search(r"charset=([\w-]+)", resp.content_type or "")
                assert charset, resp.uri
                text = resp.body.decode(charset.group(1))
                assert re.search(rf"charset=\"?{re.escape(charset.group(1))}", text[:2000], re.I), resp.uri
                if resp.uri in legacy:
                    seen_legacy[resp.uri] = charset.group(1)
    assert seen_legacy == legacy
    assert {"windows-1251", "KOI8-R", "Shift_JIS", "ISO-8859-1"} <= set(legacy.values())


def test_labels_cover_every_guide_language() -> None:
    lines = (SAMPLE / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    labels = [json.loads(line) for line in lines]
    assert {label["lang"] for label in labels} == GUIDE_LANGS
    served = {r.uri for s in SNAPSHOTS for rel in listed_paths(SAMPLE, s) for r in responses(rel)}
    for label in labels:
        assert label["url"] in served
        url_lang = label["url"].split("/")[-2]
        assert label["lang"] == {"zh_CN": "zh"}.get(url_lang, url_lang)
    assert len(labels) == len({label["url"] for label in labels}) == manifest()["page_counts"]["installation-guide"]


def test_broken_expected_entries_are_present() -> None:
    expected = json.loads((BROKEN / "EXPECTED.json").read_text(encoding="utf-8"))
    paths = listed_paths(BROKEN, "CC-MAIN-BROKEN")
    assert sorted(expected["files"]) == sorted(paths)
    assert {b["kind"] for b in expected["broken_records"]} == BROKEN_KINDS
    for rel in paths:
        # Request records are intact for every kind of damage, so every URI is findable.
        uris = {h["WARC-Target-URI"] for t, h in all_records(BROKEN / rel, quirks_mode=True) if t == "request"}
        for entry in expected["broken_records"]:
            if entry["file"] == rel:
                assert entry["uri"] in uris, entry
        good = expected["files"][rel]["good_uris"]
        assert len(good) == expected["files"][rel]["good_response_records"] and set(good) <= uris
    oversized = next(b for b in expected["broken_records"] if b["kind"] == "oversized_20mb")
    assert oversized["payload_bytes"] >= 20 * 1024 * 1024


def test_fastwarc_behaviour_is_as_recorded() -> None:
    """If fastwarc changes how it reads the broken files, EXPECTED.json must be rebuilt."""
    expected = json.loads((BROKEN / "EXPECTED.json").read_text(encoding="utf-8"))
    builder = load_builder()
    broken = [builder.BrokenRecord(b["uri"], b["file"], b["kind"], b["detail"]) for b in expected["broken_records"]]
    assert builder.observe_with_fastwarc(BROKEN, list(expected["files"]), broken) == expected["observed_with_fastwarc"]


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    """Both build scripts (WARCs, then the wiki dumps from the same cached packages) reproduce the commit."""
    debs = sorted((DEB_CACHE / "debs").glob("*.deb"))
    if len(debs) < 2:
        pytest.skip(f"no .deb cache in {DEB_CACHE / 'debs'}; run scripts/build_sample_data.py once to fill it")
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg is not available to unpack the cached .deb files")
    cached = {deb.name.split("_")[0]: deb.name.split("_")[1] for deb in debs}
    if any(cached.get(pkg) != ver for pkg, ver in manifest()["packages"].items()):
        pytest.skip(f"cached .deb versions {cached} differ from the sample's {manifest()['packages']}")
    out = tmp_path / "sample"
    load_builder().build(out, DEB_CACHE, full=False)
    wiki = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_sample_wiki.py"), "--out", str(out / "wiki"),
                           "--cache", str(DEB_CACHE)], capture_output=True, text=True)
    assert wiki.returncode == 0, wiki.stderr
    built = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(SAMPLE).as_posix() for p in SAMPLE.rglob("*") if p.is_file())
    assert built == committed
    for rel in built:
        assert (out / rel).read_bytes() == (SAMPLE / rel).read_bytes(), rel
