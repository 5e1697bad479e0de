"""Acquired documents (books and other long text) in local files -> DocumentRecords, every bad input
a counted InputProblem.

Inputs are JSONL (plain or gzipped) and Parquet rows, one document each, and plain-text files, one
document each, described by a `<name>.json` sidecar or by their Project Gutenberg header. Nothing
here raises for bad input: a row or file that cannot be read becomes an `InputProblem` with a reason
of DROP_REASONS, and a file that breaks midway keeps the rows read before the break. Files are
streamed (JSONL line by line, Parquet batch by batch); `max_bytes` bounds one document: a JSONL
line, the text of a Parquet row, a text file after decompression.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from phiflow.records.book_text import gutenberg_header

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt", ".txt.gz")
DROP_REASONS: tuple[str, ...] = (
    "empty",  # no text after stripping whitespace
    "invalid_encoding",  # not UTF-8 (nor UTF-16 with BOM, nor plausible cp1252 for a text file)
    "too_large",  # over max_bytes
    "corrupt_file",  # unreadable gzip or parquet; rows read before the damage are kept
    "bad_row",  # a JSONL line that is no JSON object, a row or Parquet file without a text string
    "unsupported_file",  # a file name without one of INPUT_SUFFIXES
)
# Remarks on a kept document, in `extra["notes"]` (comma-separated), for the stage to count.
NOTES: tuple[str, ...] = ("decoded_cp1252", "invalid_sidecar")

TEXT_FIELDS = ("text", "content", "body")
FIELD_ALIASES = {
    "title": ("title",),
    "author": ("author", "authors"),
    "license": ("license", "licence"),
    "origin_url": ("origin", "url", "source_url"),
    "language": ("language", "lang"),
}
PARQUET_BATCH_ROWS = 64  # books are large: a few rows at a time
MAX_CONTROL_FRACTION = 0.01  # more control characters than this: binary, whatever it decodes as
MIN_ASCII_FRACTION_CP1252 = 0.8  # a cp1252 guess needs mostly-ASCII bytes (Latin script with accents)
MAX_DETAIL_CHARS = 200

GZIP_ERRORS = (OSError, EOFError, zlib.error)  # BadGzipFile is an OSError; a cut stream raises EOFError
PARQUET_ERRORS = (pa.ArrowException, OSError)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # tab, newlines and form feed are text
_ASCII_BYTES = bytes(range(128))
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class DocumentRecord:
    origin: str  # the file; `path:line` (1-based) for JSONL, `path#row` (0-based) for Parquet
    title: str | None
    author: str | None
    license: str | None
    origin_url: str | None  # where the text was acquired (the input's `origin`/`url`/`source_url`)
    language: str | None  # as the metadata gives it ("en", "English"): not normalised here
    text: str
    extra: dict[str, str]  # the other metadata fields, as strings; `notes` (see NOTES)


@dataclass(frozen=True)
class InputProblem:
    """A row or file skipped: counted by `reason` (one of DROP_REASONS), `detail` for the report."""

    origin: str
    reason: str
    detail: str


Item = DocumentRecord | InputProblem


def list_inputs(root: str) -> list[str]:
    """Input files under `root` (or `root` itself), sorted.

    Sidecar `.json` metadata is no input, nor is a hidden or `_`-prefixed file or folder (`.crc`,
    `_SUCCESS` and the like that Spark and Hadoop leave next to data). A missing root raises: that is
    a configuration error, not bad input.
    """
    if os.path.isfile(root):
        return [root] if _is_input(root) else []
    if not os.path.isdir(root):
        raise FileNotFoundError(root)
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith((".", "_"))]
        found.extend(os.path.join(folder, f) for f in files if _is_input(f))
    return sorted(found)


def _is_input(path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith((".", "_")) and name.lower().endswith(INPUT_SUFFIXES)


def read_input(unit: str, max_bytes: int) -> Iterator[Item]:
    """The documents of one input file in file order, and an InputProblem for each part that is not."""
    name = unit.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        yield from _read_jsonl(unit, max_bytes)
    elif name.endswith(".parquet"):
        yield from _read_parquet(unit, max_bytes)
    elif name.endswith((".txt", ".txt.gz")):
        yield _read_text_file(unit, max_bytes)
    else:
        yield InputProblem(unit, "unsupported_file", f"not one of {', '.join(INPUT_SUFFIXES)}")


# -- rows ---------------------------------------------------------------------------------------------
def _read_jsonl(unit: str, max_bytes: int) -> Iterator[Item]:
    try:
        with gzip.open(unit, "rb") if unit.lower().endswith(".gz") else open(unit, "rb") as fh:
            for number, line in _lines(fh, max_bytes):
                origin = f"{unit}:{number}"
                if line is None:
                    yield InputProblem(origin, "too_large", f"line over {max_bytes} bytes")
                elif line.strip():
                    yield _json_row(origin, line, max_bytes)
    except GZIP_ERRORS as err:
        yield InputProblem(unit, "corrupt_file", _detail(err))


def _lines(fh: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based number, line) without reading more than max_bytes + 1 of one line; None: too long."""
    number = 0
    while line := fh.readline(max_bytes + 1):
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of it
                line = fh.readline(1 << 20)
            yield number, None
        else:
            yield number, line


def _json_row(origin: str, line: bytes, max_bytes: int) -> Item:
    try:
        row = json.loads(line.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as err:
        return InputProblem(origin, "invalid_encoding", _detail(err))
    except (ValueError, RecursionError) as err:
        return InputProblem(origin, "bad_row", f"not JSON: {_detail(err)}")
    if not isinstance(row, dict):
        return InputProblem(origin, "bad_row", f"a JSON {type(row).__name__}, not an object")
    return _row_record(origin, row, max_bytes)


def _read_parquet(unit: str, max_bytes: int) -> Iterator[Item]:
    try:
        with pq.ParquetFile(unit) as pf:
            if not set(TEXT_FIELDS) & set(pf.schema_arrow.names):
                yield InputProblem(unit, "bad_row", f"no text column ({', '.join(TEXT_FIELDS)}) in any of its rows")
                return
            row_number = 0
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    yield _row_record(f"{unit}#{row_number}", row, max_bytes)
                    row_number += 1
    except PARQUET_ERRORS as err:
        yield InputProblem(unit, "corrupt_file", _detail(err))


def _row_record(origin: str, row: Mapping[str, Any], max_bytes: int) -> Item:
    text = next((row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str)), None)
    if text is None:
        return InputProblem(origin, "bad_row", f"no text string in {', '.join(TEXT_FIELDS)}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as err:  # a lone surrogate from a JSON escape: no text for any writer
        return InputProblem(origin, "invalid_encoding", _detail(err))
    if size > max_bytes:
        return InputProblem(origin, "too_large", f"text over {max_bytes} bytes")
    if not text.strip():
        return InputProblem(origin, "empty", "")
    return DocumentRecord(origin=origin, text=text, **_metadata(row))


def _metadata(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The named fields from their first non-empty alias; everything else but text into `extra`."""
    out: dict[str, Any] = {}
    used = set(TEXT_FIELDS)
    for name, aliases in FIELD_ALIASES.items():
        out[name] = None
        for key in aliases:
            value = _as_str(fields.get(key))
            if value:
                out[name] = value
                used.add(key)
                break
    out["extra"] = {k: v for k, raw in fields.items() if k not in used and (v := _as_str(raw))}
    return out


def _as_str(value: Any) -> str | None:
    """A metadata value as text (lone surrogates from JSON escapes replaced); None when empty."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "; ".join(v.strip() for v in value if v.strip())  # several authors
    elif isinstance(value, bool | int | float):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return _SURROGATE.sub("\ufffd", text) or None


# -- text files ---------------------------------------------------------------------------------------
def _read_text_file(unit: str, max_bytes: int) -> Item:
    """One document: metadata field by field from the sidecar, else the Gutenberg header; title else the name."""
    try:
        if unit.lower().endswith(".gz"):
            with gzip.open(unit, "rb") as fh:
                data = fh.read(max_bytes + 1)  # a gzip bomb stops here
        elif os.path.getsize(unit) > max_bytes:
            return InputProblem(unit, "too_large", f"file over {max_bytes} bytes")
        else:
            with open(unit, "rb") as fh:
                data = fh.read(max_bytes + 1)
    except GZIP_ERRORS as err:
        return InputProblem(unit, "corrupt_file", _detail(err))
    if len(data) > max_bytes:
        return InputProblem(unit, "too_large", f"text over {max_bytes} bytes")
    text, note = decode_text(data)
    if text is None:
        return InputProblem(unit, "invalid_encoding", note)
    if not text.strip():
        return InputProblem(unit, "empty", "")
    notes = [note] if note else []
    side, sidecar_ok = _sidecar(unit)
    if not sidecar_ok:
        notes.append("invalid_sidecar")
    header = _metadata(gutenberg_header(text))
    meta = {name: side[name] or header[name] for name in FIELD_ALIASES}
    meta["title"] = meta["title"] or _stem(unit)
    extra = {**header["extra"], **side["extra"]}
    if notes:
        extra["notes"] = ",".join(notes)
    return DocumentRecord(origin=unit, text=text, extra=extra, **meta)


def decode_text(data: bytes) -> tuple[str | None, str]:
    """(text, note) of a text file's bytes; (None, why) where they are no text.

    UTF-8 first (its BOM dropped), UTF-16 only with a BOM (without one it cannot be told from
    binary). Old Gutenberg files are often Latin-1/cp1252: bytes that are not UTF-8 but decode as
    cp1252, without NULs and mostly ASCII, are taken as cp1252 with the note `decoded_cp1252`
    rather than dropped; the ASCII test keeps a Cyrillic or Greek 8-bit file from becoming Latin
    mojibake. Whatever the decoding, more than MAX_CONTROL_FRACTION control characters is binary.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encodings = ["utf-16"]
    else:
        encodings = ["utf-8-sig"]
        ascii_share = 1 - len(data.translate(None, _ASCII_BYTES)) / max(len(data), 1)
        if b"\x00" not in data and ascii_share >= MIN_ASCII_FRACTION_CP1252:
            encodings.append("cp1252")
    for encoding in encodings:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        note = "decoded_cp1252" if encoding == "cp1252" else ""
        break
    else:
        return None, "not UTF-16 despite its BOM" if encodings == ["utf-16"] else "not UTF-8, nor plausible cp1252"
    if len(_CONTROL.findall(text)) > MAX_CONTROL_FRACTION * len(text):
        return None, f"control characters: binary, not text ({encoding})"
    return text, note


def _sidecar(unit: str) -> tuple[dict[str, Any], bool]:
    """(metadata of `<name>.json` or `<name>.txt.json` next to the file, whether it was readable)."""
    path = next((p for p in (_base(unit) + ".json", unit + ".json") if os.path.isfile(p)), None)
    if path is None:
        return _metadata({}), True
    try:
        with open(path, "rb") as fh:
            fields = json.load(fh)
    except (OSError, ValueError, RecursionError):
        fields = None
    return (_metadata(fields), True) if isinstance(fields, dict) else (_metadata({}), False)


def _base(path: str) -> str:
    for suffix in (".txt.gz", ".txt"):
        if path.lower().endswith(suffix):
            return path[: -len(suffix)]
    return path


def _stem(path: str) -> str:
    return os.path.basename(_base(path))


def _detail(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:MAX_DETAIL_CHARS]
