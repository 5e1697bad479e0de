"""Wikipedia multistream dumps -> pages -> clean text: the per-stream part of wikipedia_extract.

A multistream dump is a concatenation of independent bz2 streams (siteinfo, then 100 pages each,
then `</mediawiki>`); its index names the byte offset of each page's stream. So one task can read
one byte range, decompress it alone and parse its pages with mwxml, wrapped in the dump's own
header (namespaces come from there). A stream that does not parse as a whole (an entity XML does
not define, a cut page) is re-parsed page by page, so one bad page costs only itself.

Wikitext becomes text with mwparserfromhell: templates, references, files, categories and
interlanguage links go; link and table text stay; `<math>` keeps its TeX as `$...$`, code blocks
become fenced blocks, so formulas and code stay readable for a language model.
"""

from __future__ import annotations

import bz2
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import mwparserfromhell
import mwxml
from mwparserfromhell.nodes import Comment, ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode

CANONICAL_NS = {6: ("file", "image"), -2: ("media",), 14: ("category",)}
REDIRECT_RE = re.compile(r"^\s*#\s*(redirect|weiterleitung|redirection|转到|重定向|転送|перенаправление)\b", re.I)
INTERWIKI_RE = re.compile(r"^[a-z]{2,3}(-[a-z]{2,8})*$")
CODE_TAGS = {"syntaxhighlight", "source", "pre"}
DROPPED_TAGS = {"ref", "references", "gallery", "includeonly", "timeline", "graph", "mapframe", "templatestyles"}
PARSE_ERRORS = (ET.ParseError, ValueError, mwxml.errors.MalformedXML, AttributeError, KeyError)
# Behaviour switches (__TOC__, __NOTOC__, __INHALTSVERZEICHNIS__, __KEIN_INHALTSVERZEICHNIS__, __目次__):
# double underscores around a word with no lower-case letter, in every language. Dumps do not list
# a wiki's localized magic words, so the form is the rule; lower-case dunders (`__init__`) are prose.
MAGIC_WORD_RE = re.compile(r"(?<!\w)__((?:[^\W\d_]|_(?!_))+)__(?!\w)")
# Quotation templates whose text is article text (English, French, German, Spanish, Italian), and the
# parameter names that hold it; the first positional parameter otherwise. (English {{Citation}} is a
# bibliographic reference with named parameters only: it renders nothing.)
QUOTE_TEMPLATES = frozenset(
    {"quote", "quotation", "cquote", "blockquote", "citation", "citation bloc", "bloc citation", "zitat",
     "cita", "citazione"}
)  # fmt: skip
QUOTE_PARAMS = ("text", "texte", "quote", "zitat", "testo", "1")
MAX_TEMPLATE_DEPTH = 40  # deeper templates are cut before parsing (mwparserfromhell stops at 100)
_BRACES = re.compile(r"\{\{|\}\}")
_APOSTROPHES = re.compile(r"'{2,5}")
_REF_LEFTOVER = re.compile(r"<ref\b[^>]*/>|<ref\b[^>]*>.*?</ref\s*>|</?ref\b[^>]*>", re.IGNORECASE | re.DOTALL)
TEXT_TEMPLATES = {"lang": -1, "nowrap": 0, "code": 0, "mvar": 0, "math": 0, "nobr": 0, "small": 0, "abbr": 0}


class StreamError(Exception):
    """A bz2 stream that cannot be decompressed; `reason` names why (all its pages are lost)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SiteInfo:
    """What the dump header says about its wiki: name, language, server, namespace names."""

    dbname: str
    language: str
    base: str
    namespaces: dict[int, str]
    header_xml: str  # `<mediawiki ...><siteinfo>...</siteinfo>`, reused to wrap every stream

    @property
    def server(self) -> str:
        m = re.match(r"^(https?://[^/]+)", self.base)
        return m.group(1) if m else self.base

    def names(self, key: int) -> set[str]:
        """Local and canonical names of a namespace, lower-cased (link prefixes match these)."""
        return {n.lower() for n in (self.namespaces.get(key, ""), *CANONICAL_NS.get(key, ())) if n}


@dataclass(frozen=True)
class PageData:
    page_id: int
    namespace: int
    title: str
    redirect: str | None
    revision_id: int
    timestamp: datetime | None
    wikitext: str


@dataclass(frozen=True)
class BrokenPage:
    """A page that could not be parsed; what is known about it, and why."""

    title: str
    reason: str
    page_id: int | None = None  # read from the raw XML when its <id> comes before the first revision


# -- dump layout -------------------------------------------------------------------------
def index_path(dump_path: str) -> str:
    """`x-pages-articles-multistream.xml.bz2` -> `x-pages-articles-multistream-index.txt.bz2`."""
    if not dump_path.endswith(".xml.bz2"):
        raise ValueError(f"{dump_path}: a multistream dump ends with .xml.bz2")
    return dump_path[: -len(".xml.bz2")] + "-index.txt.bz2"


def parse_index(lines: Iterator[str]) -> list[tuple[int, int]]:
    """Index lines `offset:page_id:title` -> [(stream offset, pages in it)] in file order."""
    counts: dict[int, int] = {}
    for line in lines:
        line = line.strip()
        if line:
            off = int(line.split(":", 1)[0])
            counts[off] = counts.get(off, 0) + 1
    return sorted(counts.items())


def stream_ranges(offsets: list[tuple[int, int]], file_size: int) -> list[tuple[int, int, int]]:
    """(start, end, pages) byte ranges; the last one runs to the end (it holds `</mediawiki>` too)."""
    starts = [o for o, _ in offsets]
    ends = [*starts[1:], file_size]
    return [(s, e, n) for (s, n), e in zip(offsets, ends, strict=True)]


def decompress_streams(data: bytes, complete: bool = False) -> str:
    """All bz2 streams in `data`, decoded. A stream that does not decode raises StreamError: corrupt
    when bzip2 says so, or when it ends early although `complete` (every byte the index gives the range
    was read, and more of the file follows: a damaged end-of-stream marker); truncated when the bytes
    ran out (a file cut short)."""
    out, rest = [], data
    while rest:
        dec = bz2.BZ2Decompressor()
        try:
            out.append(dec.decompress(rest))
        except OSError as err:
            raise StreamError("corrupt_stream") from err
        if not dec.eof:
            raise StreamError("corrupt_stream" if complete else "truncated_stream")
        rest = dec.unused_data
    try:
        return b"".join(out).decode("utf-8")
    except UnicodeDecodeError as err:
        raise StreamError("invalid_utf8") from err


def read_header(first_stream: bytes) -> SiteInfo:
    """The dump's first stream: `<mediawiki>` with `<siteinfo>` (and no pages)."""
    header = decompress_streams(first_stream)
    header = header[: header.index("</siteinfo>") + len("</siteinfo>")]
    root = ET.fromstring(header + "</mediawiki>")
    ns = {"mw": root.tag[1:].split("}")[0]} if root.tag.startswith("{") else {"mw": ""}

    def find(path: str) -> str:
        el = root.find(path.replace("mw:", "{{{}}}".format(ns["mw"]) if ns["mw"] else ""))
        return (el.text or "") if el is not None else ""

    names = {}
    for el in root.iter():
        if el.tag.endswith("namespace") and el.get("key") is not None:
            names[int(el.get("key"))] = el.text or ""
    lang = root.get("{http://www.w3.org/XML/1998/namespace}lang") or "und"
    return SiteInfo(find("mw:siteinfo/mw:dbname"), lang, find("mw:siteinfo/mw:base"), names, header + "\n")


# -- pages -------------------------------------------------------------------------------
def _page_data(page: mwxml.Page) -> PageData:
    """A page at its latest revision (by timestamp, then id): a full-history dump lists them all."""
    revisions = list(page)
    if not revisions:
        raise ValueError("page without revision")
    rev = max(revisions, key=lambda r: (r.timestamp.unix() if r.timestamp is not None else 0, r.id or 0))
    ts = datetime.fromtimestamp(rev.timestamp.unix(), tz=UTC) if rev.timestamp is not None else None
    return PageData(page.id, page.namespace, page.title, page.redirect, rev.id, ts, rev.text or "")


def _parse(site: SiteInfo, pages_xml: str) -> list[PageData]:
    dump = mwxml.Dump.from_file(io.StringIO(site.header_xml + pages_xml + "\n</mediawiki>\n"))
    return [_page_data(p) for p in dump]


def split_pages(xml_text: str) -> list[str]:
    """`<page>...</page>` chunks of a stream (a chunk without an end is kept: it fails alone)."""
    starts = [m.start() for m in re.finditer(r"<page>", xml_text)]
    return [xml_text[s:e] for s, e in zip(starts, [*starts[1:], len(xml_text)], strict=True)]


def _xml_reason(err: Exception) -> str:
    if isinstance(err, ET.ParseError):
        msg = str(err).split(":")[0].strip().replace(" ", "_")
        return f"invalid_xml:{msg}"
    return f"invalid_xml:{type(err).__name__}"


def iter_pages(site: SiteInfo, xml_text: str) -> Iterator[PageData | BrokenPage]:
    """Pages of one decompressed stream; whole-stream parse first, page by page if that fails."""
    xml_text = xml_text.replace("</mediawiki>", "")
    try:
        pages: list[PageData] | None = _parse(site, xml_text)
    except PARSE_ERRORS:
        pages = None
    if pages is not None:
        yield from pages
        return
    for chunk in split_pages(xml_text):
        try:
            yield from _parse(site, chunk)
        except PARSE_ERRORS as err:
            title = re.search(r"<title>(.*?)</title>", chunk)
            head = chunk.split("<revision", 1)[0]
            page_id = re.search(r"<id>\s*(\d+)\s*</id>", head)
            yield BrokenPage(
                title.group(1) if title else "", _xml_reason(err), int(page_id.group(1)) if page_id else None
            )


# -- wikitext -> text ----------------------------------------------------------------------
@dataclass(frozen=True)
class CleanConfig:
    drop_sections: frozenset[str]  # lower-cased level-2 headings whose sections are left out
    disambiguation_templates: frozenset[str]  # lower-cased


def _tname(t: Template) -> str:
    return str(t.name).strip().replace("_", " ").lower()


def _magic(m: re.Match) -> str:
    word = m.group(1)
    return "" if word == word.upper() and len(word) <= 40 else m.group(0)


class _Renderer:
    def __init__(self, site: SiteInfo) -> None:
        self.hidden_prefixes = site.names(6) | site.names(14) | site.names(-2)

    def code(self, code: Wikicode | None) -> str:
        return "".join(self.node(n) for n in code.nodes) if code is not None else ""

    def node(self, n) -> str:
        if isinstance(n, Text):
            return MAGIC_WORD_RE.sub(_magic, n.value)
        if isinstance(n, Wikilink):
            return self.link(n)
        if isinstance(n, ExternalLink):
            return self.code(n.title) if n.title is not None else ("" if n.brackets else str(n.url))
        if isinstance(n, Template):
            return self.template(n)
        if isinstance(n, Tag):
            return self.tag(n)
        if isinstance(n, Heading):
            return f"\n\n{self.code(n.title).strip()}\n\n"
        if isinstance(n, HTMLEntity):
            return n.normalize()
        if isinstance(n, Comment):
            return ""
        return ""  # template arguments and the like carry no article text

    def link(self, n: Wikilink) -> str:
        title = str(n.title).strip()
        visible = title.startswith(":")
        title = title.lstrip(":")
        if ":" in title and not visible:
            prefix = title.split(":", 1)[0].strip().lower()
            if prefix in self.hidden_prefixes or INTERWIKI_RE.match(prefix):
                return ""
        if n.text is not None:
            return self.code(n.text)
        return title.split("#", 1)[0] or title.lstrip("#")

    def template(self, t: Template) -> str:
        name = _tname(t)
        if name in QUOTE_TEMPLATES:
            named = {str(p.name).strip().lower(): p for p in t.params}
            body = next((named[k] for k in QUOTE_PARAMS if k in named), None)
            if body is None:
                body = next((p for p in t.params if not p.showkey), None)
            return f"\n{self.code(body.value).strip()}\n" if body is not None else ""
        if name in TEXT_TEMPLATES and t.params:
            pos = [p for p in t.params if not p.showkey]
            if pos:
                return self.code(pos[TEXT_TEMPLATES[name]].value)
        if name == "convert" and len(t.params) >= 2:
            return f"{self.code(t.params[0].value).strip()} {self.code(t.params[1].value).strip()}"
        return ""

    def tag(self, t: Tag) -> str:
        name = str(t.tag).strip().lower()
        markup = t.wiki_markup
        if markup in ("*", "#"):
            return "- "
        if markup in (";", ":"):
            return ""
        if name in DROPPED_TAGS:
            return ""
        if name == "math":
            tex = " ".join(str(t.contents).split())
            block = any(str(a.name).strip() == "display" and str(a.value).strip() == "block" for a in t.attributes)
            return f"\n$${tex}$$\n" if block else f"${tex}$"
        if name in CODE_TAGS:
            lang = next((str(a.value).strip() for a in t.attributes if str(a.name).strip() == "lang"), "")
            body = str(t.contents).strip("\n")
            if name == "pre":
                body = mwparserfromhell.parse(body).strip_code(normalize=True, collapse=False) if "&" in body else body
            return f"\n```{lang}\n{body}\n```\n"
        if name == "table":
            return self.table(t)
        if name == "br":
            return "\n"
        if name in ("hr",):
            return ""
        return self.code(t.contents) if t.contents is not None else ""

    def table(self, t: Tag) -> str:
        rows: list[list[str]] = [[]]
        for n in t.contents.nodes:
            if isinstance(n, Tag) and str(n.tag) == "tr":
                rows.append(
                    [
                        self.code(c.contents).strip()
                        for c in n.contents.nodes
                        if isinstance(c, Tag) and str(c.tag) in ("td", "th")
                    ]
                )
            elif isinstance(n, Tag) and str(n.tag) in ("td", "th"):
                rows[0].append(self.code(n.contents).strip())
            elif isinstance(n, Tag) and str(n.tag) == "caption":
                rows.insert(0, [self.code(n.contents).strip()])
        lines = [" | ".join(c for c in r if c) for r in rows]
        return "\n" + "\n".join(line for line in lines if line) + "\n"


_BLANKS = re.compile(r"\n\s*\n\s*\n+")
_SPACES = re.compile(r"[ \t\u00a0]+")


def tidy(text: str) -> str:
    """Whitespace only: spaces collapsed, one blank line between blocks, code lines untouched."""
    out, in_code = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
            out.append(line.strip())
            continue
        out.append(line.rstrip() if in_code else _SPACES.sub(" ", line).strip())
    return _BLANKS.sub("\n\n", "\n".join(out)).strip()


def flatten_deep_templates(wikitext: str, limit: int = MAX_TEMPLATE_DEPTH) -> str:
    """Cut templates nested deeper than `limit` (with their contents), before parsing: the parser
    gives up at depth 100 and leaves the rest as text (467 `}}` on a page nested 500 deep)."""
    if wikitext.count("{{") <= limit:
        return wikitext
    out, depth, last = [], 0, 0
    for m in _BRACES.finditer(wikitext):
        if m.group() == "{{":
            if depth == limit:
                out.append(wikitext[last : m.start()])
            depth += 1
            if depth <= limit:
                continue
        else:
            if depth == 0:
                continue  # a stray closing pair is text
            depth -= 1
            if depth == limit:
                last = m.end()
            continue
    if depth <= limit:
        out.append(wikitext[last:])
    return "".join(out) if out else wikitext


def scrub(text: str) -> str:
    """Markup the parser left as text when a page's markup is unbalanced: bold/italic apostrophe runs
    and <ref> tags. Code blocks are left as they are (`''` is an empty string there)."""
    out, in_code = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code:
            line = _APOSTROPHES.sub("", _REF_LEFTOVER.sub("", line))
        out.append(line)
    return "\n".join(out)


def unterminated_template(code: Wikicode) -> bool:
    """`{{` left as plain text at the top level: a template that never closes."""
    return any(isinstance(n, Text) and "{{" in n.value for n in code.nodes)


def clean_page(page: PageData, site: SiteInfo, cfg: CleanConfig) -> tuple[str, str | None]:
    """(clean text, drop reason or None) for one page of the main namespace."""
    if page.namespace != 0:
        return "", "other_namespace"
    if page.redirect or REDIRECT_RE.match(page.wikitext):
        return "", "redirect"
    code = mwparserfromhell.parse(flatten_deep_templates(page.wikitext))
    if unterminated_template(code):
        return "", "unterminated_template"
    if any(_tname(t) in cfg.disambiguation_templates for t in code.filter_templates(recursive=False)):
        return "", "disambiguation"
    for section in code.get_sections(levels=[2]):
        heading = section.filter_headings(recursive=False)[0]
        if heading.title.strip_code().strip().lower() in cfg.drop_sections:
            code.remove(section)
    return tidy(scrub(_Renderer(site).code(code))), None
