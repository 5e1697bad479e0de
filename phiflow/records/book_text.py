"""Book text (Project Gutenberg and other acquired long text) -> clean prose: the per-record rules of
the documents source.

Books arrive laid out for print or for Gutenberg's 70-column files: licence boilerplate around the
body, page furniture (running headers, page numbers, form feeds), words hyphenated across line ends,
paragraphs hard-wrapped at a fixed width. A language model should see the body as prose: one line
per paragraph, words whole, no furniture. Verse, lists, tables and code keep their lines: a line is
joined to the next only where it fills the book's wrap width. Each rule can be switched off and
counts what it changed; all of them run in time linear in the text (books are megabytes).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

HEAD_SCAN_CHARS = 20_000  # a Gutenberg header, even the old "small print" one, ends well before this
MIN_PAGES = 3  # page numbers without form feeds, and a running header, need this many pages
PAGE_EDGE_LINES = 2  # with form feeds: a page number is among a page's first or last two lines
MIN_PAGE_LINES = 12  # without: page-number lines are a page apart (median), not a list item or a note,
MAX_PAGE_LINES = 150  # nor a chapter (bare chapter numbers),
PAGE_STEP_SHARE = 0.66  # and count up by one or two for this share of the steps
MAX_HEADER_CHARS = 80  # a running header is a short line
HEADER_PAGE_SHARE = 0.01  # on MIN_PAGES pages and this share of them (a long book repeats more by chance)
WRAP_PERCENTILE = 0.9  # of line lengths: the wrap width, robust to short dialogue and paragraph-final lines
FULL_FRACTION = 0.75  # a line this long, relative to the wrap width, was broken by the wrap, not the author
TERMINAL = (".", "!", "?", ":", '"', "”", "’")

COUNTERS = (
    "gutenberg_markers",  # START / small-print / END marker lines found
    "gutenberg_boilerplate_chars",  # header, transcriber credits and licence removed
    "gutenberg_header_unmarked",  # 1: a Gutenberg header without START marker, left in place
    "form_feeds",
    "page_numbers",
    "running_headers",
    "dehyphenated",  # "exam-\nple" -> "example"
    "hyphens_kept",  # "well-\nknown" -> "well-known"
    "reflowed_lines",  # line breaks inside paragraphs replaced by a space
    "spaces_collapsed",  # runs of spaces/tabs made one space, trailing whitespace removed
    "blank_lines_removed",
)


@dataclass(frozen=True)
class BookCleanConfig:
    """One switch per rule; a rule switched off leaves its part of the text as it is and counts 0."""

    gutenberg: bool = True
    page_furniture: bool = True
    dehyphenate: bool = True
    reflow: bool = True
    normalize_whitespace: bool = True


def clean_book(text: str, cfg: BookCleanConfig) -> tuple[str, dict[str, int]]:
    """(clean text, counters): every name of COUNTERS is present. Line endings become `\\n` first."""
    counts = dict.fromkeys(COUNTERS, 0)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.gutenberg:
        text = _gutenberg(text, counts)
    if cfg.page_furniture:  # before dehyphenation: a word hyphenated across a page break meets its end
        text = _page_furniture(text, counts)
    if cfg.dehyphenate:
        text = _dehyphenate(text, counts)
    if cfg.reflow:
        text = _reflow(text, counts)
    if cfg.normalize_whitespace:
        text = _normalize_whitespace(text, counts)
    return text, counts


# -- Project Gutenberg ---------------------------------------------------------------------------
_PG_START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?(?:BOOK|TEXT)\b.*$", re.I | re.M)
_PG_SMALL_PRINT_END = re.compile(r"\*END\*?[ \t]*THE SMALL PRINT!", re.I)  # old header: body follows its line
_PG_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG E-?(?:BOOK|TEXT)\b"
    r"|End of (?:the |this )?Project Gutenberg(?:['’]s)?\b)",
    re.I | re.M,
)
_PG_NAME = re.compile(r"Project Gutenberg", re.I)
_PG_CREDITS = re.compile(  # the transcribers' paragraph at the top of the body
    r"\A\s*(?:Produced by|E-?text prepared by|Transcribed (?:from|by)|This e-?(?:book|text) was (?:produced|prepared))"
    r"[^\n]*(?:\n[ \t]*\S[^\n]*)*",
    re.I,
)
_PG_FIELD = re.compile(
    r"(Title|Author|Translator|Editor|Illustrator|Language|Release Date|Posting Date|Character set encoding)"
    r"[ \t]*:[ \t]*(\S.*)",
    re.I,
)
_PG_EBOOK_NUMBER = re.compile(r"E-?(?:Book|text) #(\d+)", re.I)
_PG_LICENSE = re.compile(r"Project Gutenberg(?:-tm)? License", re.I)
_BRACKETED_TAIL = re.compile(r"\s*\[[^\]]*\]\s*$")


def _gutenberg(text: str, counts: dict[str, int]) -> str:
    """The body between the START (or old small-print) marker and the first END line, credits dropped.

    Without a START marker the header's end is unknown: the text is left whole and the header is
    counted, so the stage can report such books instead of guessing.
    """
    start = _PG_START.search(text)
    head_end = start.end() if start else 0
    foot = _PG_END.search(text, head_end)
    foot_start = foot.start() if foot else len(text)
    # Old files have no START marker: their header ends with the small print. With a START marker,
    # a small print is part of the licence (at the end, sometimes without an END line).
    small = None if start else _PG_SMALL_PRINT_END.search(text, 0, foot_start)
    if small:
        head_end = _line_end(text, small.end())
    counts["gutenberg_markers"] = (start is not None) + (small is not None)
    if foot:
        counts["gutenberg_markers"] += sum(1 for _ in _PG_END.finditer(text, foot_start))
    if not (start or small) and _PG_NAME.search(text, 0, HEAD_SCAN_CHARS):
        counts["gutenberg_header_unmarked"] = 1
    body = text[head_end:foot_start]
    if start or small:
        credits = _PG_CREDITS.match(body)
        if credits:
            body = body[credits.end() :]
    counts["gutenberg_boilerplate_chars"] = len(text) - len(body)
    return body


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def gutenberg_header(text: str) -> dict[str, str]:
    """Fields of a Project Gutenberg header ("Title: ...", "Author: ..."), keys lower-cased with `_`.

    Adds `ebook_number` and `license` ("Project Gutenberg License" where the header says the text is
    under it); {} for a text whose head does not name Project Gutenberg. Continuation lines
    (indented, under a long title) are joined to their field.
    """
    start = _PG_START.search(text, 0, HEAD_SCAN_CHARS)
    head = text[: start.start() if start else HEAD_SCAN_CHARS]
    if not _PG_NAME.search(head):
        return {}
    fields: dict[str, str] = {}
    key = None
    for line in head.splitlines():
        m = _PG_FIELD.fullmatch(line.strip())
        if m and not line[:1].isspace():
            key = m.group(1).lower().replace(" ", "_")
            if key in fields:
                key = None
            else:
                fields[key] = _BRACKETED_TAIL.sub("", m.group(2)).strip()  # "March 3, 2005 [EBook #15123]"
        elif key and line[:1].isspace() and line.strip():
            fields[key] += " " + line.strip()
        else:
            key = None
    number = _PG_EBOOK_NUMBER.search(head)
    if number:
        fields["ebook_number"] = number.group(1)
    if _PG_LICENSE.search(head):
        fields["license"] = "Project Gutenberg License"
    return fields


# -- page furniture --------------------------------------------------------------------------------
# Lower-case roman numerals only: front-matter page numbers are lower case, while a line "II" is
# far more often a chapter or section number. Up to three digits: a year alone on a line ("1850",
# on a title page or under a letter) is text.
_ROMAN = r"(?=[ivxlcdm])m{0,3}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
_PAGE_NUMBER = re.compile(
    rf"[ \t]*[\[(]?(?:[-–—][ \t]*)?(?:(?i:page|pg\.?|p\.)[ \t]*)?(?P<n>\d{{1,3}}|{_ROMAN})(?:[ \t]*[-–—])?[\])]?[ \t]*"
)
_ROMAN_VALUES = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100, "d": 500, "m": 1000}
_EDGE_NUMBER = re.compile(rf"^(?:\d{{1,4}}|{_ROMAN})\s+|\s+(?:\d{{1,4}}|{_ROMAN})$")
_BARE_HEADING = re.compile(
    r"(?:chapter|chap\.|book|part|section|canto|letter|act|scene|volume|vol\.)\s+(?:\d+|[ivxlcdm]+)\.?", re.I
)
_SPACE_RUN = re.compile(r"\s+")


def _page_furniture(text: str, counts: dict[str, int]) -> str:
    """Form feeds, page-number lines and running headers out; the pages joined back together.

    With form feeds, a page number is a number line among the first or last PAGE_EDGE_LINES lines of
    a page. Without, number lines split the pages only where they read as pagination: at least
    MIN_PAGES of them, counting up by one or two (a blank page) for PAGE_STEP_SHARE of the
    steps, a median of MIN_PAGE_LINES to MAX_PAGE_LINES lines apart. Numbered lines of a code
    listing, endnote numbers or bare chapter numbers stay in an unpaginated text.

    A running header is the first or last line of a page (a page number at either of its ends
    ignored) that appears so on at least MIN_PAGES pages, and more often there than inside
    pages (a line of dialogue that happens to open three pages is text). The first page is a title
    page: never a header.

    Pages join with a line break where the previous page ends inside a paragraph (a full-width
    line without closing punctuation), so reflow and dehyphenation continue across the break;
    otherwise with a blank line.
    """
    pages = text.split("\f")
    counts["form_feeds"] = len(pages) - 1
    if len(pages) > 1:
        units = [_drop_edge_numbers(page.split("\n"), counts) for page in pages]
    else:
        units = _split_at_page_numbers(text.split("\n"), counts)
    if len(units) == 1:
        return "\n".join(units[0])
    units = _drop_running_headers(units, counts)
    full = FULL_FRACTION * _wrap_width(line for unit in units for line in unit)
    out: list[str] = []
    for unit in units:
        lo, hi = 0, len(unit)
        while lo < hi and not unit[lo].strip():
            lo += 1
        while hi > lo and not unit[hi - 1].strip():
            hi -= 1
        if lo == hi:
            continue
        if out and _ends_paragraph(out[-1], full):
            out.append("")
        out.extend(unit[lo:hi])
    return "\n".join(out)


def _drop_edge_numbers(lines: list[str], counts: dict[str, int]) -> list[str]:
    filled = [i for i, line in enumerate(lines) if line.strip()]
    drop = {i for i in {*filled[:PAGE_EDGE_LINES], *filled[-PAGE_EDGE_LINES:]} if _PAGE_NUMBER.fullmatch(lines[i])}
    counts["page_numbers"] += len(drop)
    return [line for i, line in enumerate(lines) if i not in drop]


def _split_at_page_numbers(lines: list[str], counts: dict[str, int]) -> list[list[str]]:
    numbers = [(i, _page_value(m.group("n"))) for i, line in enumerate(lines) if (m := _PAGE_NUMBER.fullmatch(line))]
    if len(numbers) < MIN_PAGES:
        return [lines]
    steps = [b - a for (_, a), (_, b) in pairwise(numbers)]
    gaps = sorted(j - i for (i, _), (j, _) in pairwise(numbers))
    if sum(1 <= s <= 2 for s in steps) < PAGE_STEP_SHARE * len(steps):
        return [lines]
    if not MIN_PAGE_LINES <= gaps[len(gaps) // 2] <= MAX_PAGE_LINES:
        return [lines]
    counts["page_numbers"] = len(numbers)
    units, prev = [], 0
    for i, _ in numbers:
        units.append(lines[prev:i])
        prev = i + 1
    units.append(lines[prev:])
    return units


def _page_value(number: str) -> int:
    if number.isdigit():
        return int(number)
    total = prev = 0
    for c in reversed(number):
        value = _ROMAN_VALUES[c]
        total += -value if value < prev else value
        prev = max(prev, value)
    return total


def _header_key(line: str) -> str | None:
    s = line.strip()
    if not s or len(s) > MAX_HEADER_CHARS or _BARE_HEADING.fullmatch(s):
        return None
    key = _SPACE_RUN.sub(" ", _EDGE_NUMBER.sub("", s)).lower()
    return key if any(c.isalpha() for c in key) else None


def _drop_running_headers(units: list[list[str]], counts: dict[str, int]) -> list[list[str]]:
    edges: list[dict[int, str]] = [{}]  # per page: line index -> header key of its first/last line
    on_pages: Counter[str] = Counter()
    for unit in units[1:]:
        filled = [i for i, line in enumerate(unit) if line.strip()]
        keys = {i: k for i in {*filled[:1], *filled[-1:]} if (k := _header_key(unit[i]))}
        on_pages.update(set(keys.values()))
        edges.append(keys)
    need = max(MIN_PAGES, int(HEADER_PAGE_SHARE * len(units)))
    candidates = {k for k, n in on_pages.items() if n >= need}
    if not candidates:
        return units
    inside: Counter[str] = Counter()
    for unit, keys in zip(units, edges, strict=True):
        for i, line in enumerate(unit):
            if i not in keys and (k := _header_key(line)) in candidates:
                inside[k] += 1
    headers = {k for k in candidates if inside[k] < on_pages[k]}
    out = []
    for unit, keys in zip(units, edges, strict=True):
        kept = [line for i, line in enumerate(unit) if keys.get(i) not in headers]
        counts["running_headers"] += len(unit) - len(kept)
        out.append(kept)
    return out


def _wrap_width(lines: Iterable[str]) -> int:
    """The book's wrap width: the WRAP_PERCENTILE of non-blank line lengths (0 without lines)."""
    lengths = Counter(len(line.rstrip()) for line in lines if line.strip())
    rank = WRAP_PERCENTILE * sum(lengths.values())
    seen = 0
    for length in sorted(lengths):
        seen += lengths[length]
        if seen >= rank:
            return length
    return 0


def _ends_paragraph(line: str, full: float) -> bool:
    s = line.rstrip()
    return s.endswith(TERMINAL) or len(s) < full


# -- hyphenation -----------------------------------------------------------------------------------
_WORD = re.compile(r"\w+(?:-\w+)*")
_LEADING_WORD = re.compile(r"\w+")
_NON_WORD = re.compile(r"\W")  # splitting at it finds a word's last part in one pass, whatever its length


def _dehyphenate(text: str, counts: dict[str, int]) -> str:
    """A word broken by a hyphen at a line end is put back together on the first line.

    The hyphen goes ("exam-\\nple" -> "example") when the second part starts lower-case, unless the
    word before already holds a hyphen ("mother-in-\\nlaw") or the book itself writes the pair with a
    hyphen more often than joined ("well-known" elsewhere: "well-\\nknown" stays "well-known"). A
    capitalised or numeric second part keeps it ("Anglo-\\nSaxon", "1850-\\n1860").
    """
    lines = text.split("\n")
    freq: Counter[str] | None = None
    out: list[str] = []
    cur: str | None = lines[0]
    for nxt in lines[1:]:
        if cur is None:  # the line was only the end of the word before
            cur = nxt
            continue
        s = cur.rstrip()
        t = nxt.lstrip(" \t")
        if len(s) < 2 or s[-1] != "-" or not s[-2].isalnum() or not t[:1].isalnum():
            out.append(cur)
            cur = nxt
            continue
        head = s.rsplit(None, 1)[-1][:-1]
        parts = t.split(None, 1)
        frag, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        keep = not frag[0].islower() or "-" in head
        if not keep:
            if freq is None:
                freq = Counter(w.lower() for w in _WORD.findall(text))
            first = _NON_WORD.split(head)[-1].lower()
            second = _LEADING_WORD.match(frag).group().lower()
            keep = freq[f"{first}-{second}"] > freq[first + second]
        counts["hyphens_kept" if keep else "dehyphenated"] += 1
        out.append((s if keep else s[:-1]) + frag)
        # A line that held only the word's end goes: no blank line may open inside the paragraph.
        cur = nxt[: len(nxt) - len(t)] + rest if rest else None
    if cur is not None:
        out.append(cur)
    return "\n".join(out)


# -- reflow ------------------------------------------------------------------------------------------
_LIST_MARKER = re.compile(r"[ \t]*(?:[-*•·–]|\d{1,3}[.)]|[a-z]\)|\((?:\d{1,3}|[a-z]|[ivxlc]{1,5})\))[ \t]")
_STRUCTURED = re.compile(r"\t|\S {3,}\S|^\s*\||[{}]\s*$")  # table columns, table rules, code braces


def _reflow(text: str, counts: dict[str, int]) -> str:
    """Hard-wrapped paragraphs become one line each; blank lines still separate paragraphs."""
    lines = text.split("\n")
    width = _wrap_width(lines)
    out: list[str] = []
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line)
            continue
        if block:
            out.extend(_reflow_block(block, width, counts))
            block = []
        out.append(line)
    out.pop()  # the sentinel
    return "\n".join(out)


def _reflow_block(block: list[str], width: int, counts: dict[str, int]) -> list[str]:
    """A line joins the next where it fills the wrap width and the next is no indented or list line.

    The whole block stays as it is where it looks like a table or code, or like verse: most lines
    short, or three and more lines each starting with a capital where some line ended although the
    next word would still have fitted (prose wrapped greedily never does that, verse often).
    """
    full = FULL_FRACTION * width
    if len(block) < 2 or any(_STRUCTURED.search(line) for line in block):
        return block
    short = sum(len(line.rstrip()) < full for line in block[:-1])
    if 2 * short > len(block) - 1 or _capitalised_verse(block, width):
        return block
    paragraphs = [[block[0]]]
    for prev, line in pairwise(block):
        if len(prev.rstrip()) >= full and not line[:1].isspace() and not _LIST_MARKER.match(line):
            paragraphs[-1].append(line.strip())
            counts["reflowed_lines"] += 1
        else:
            paragraphs.append([line])
    return [" ".join([p[0].rstrip(), *p[1:]]) if len(p) > 1 else p[0] for p in paragraphs]


def _capitalised_verse(block: list[str], width: int) -> bool:
    if len(block) < 3 or not all(_starts_upper(line) for line in block):
        return False
    return any(len(prev.rstrip()) + 1 + len(line.split(None, 1)[0]) <= width for prev, line in pairwise(block))


def _starts_upper(line: str) -> bool:
    return next((c.isupper() for c in line if c.isalpha()), False)


# -- whitespace ----------------------------------------------------------------------------------------
# Each pattern can start only at the beginning of a run, so a long run of spaces costs its length once.
_TRAILING_SPACE = re.compile(r"(?<![ \t])[ \t]+$", re.M)
_INNER_SPACE = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)")  # indentation at the line start is structure: kept
_BLANK_RUN = re.compile(r"\n{3,}")


def _normalize_whitespace(text: str, counts: dict[str, int]) -> str:
    text, trailing = _TRAILING_SPACE.subn("", text)
    text, inner = _INNER_SPACE.subn(" ", text)
    counts["spaces_collapsed"] = trailing + inner
    removed = sum(len(m.group()) - 2 for m in _BLANK_RUN.finditer(text))
    text = _BLANK_RUN.sub("\n\n", text)
    lead = len(text) - len(text.lstrip("\n"))
    trail = len(text) - len(text.rstrip("\n"))
    counts["blank_lines_removed"] = removed + lead + max(trail - 1, 0)
    return text.strip("\n")
