#!/usr/bin/env python3
"""Build reproducible Wikipedia-style multistream dumps from real multilingual text.

No Wikipedia dump can be had offline, so this script writes one in the real Wikimedia layout:
``<wiki>/<date>/<wiki>-<date>-pages-articles-multistream.xml.bz2`` (MediaWiki export schema 0.11,
the siteinfo header in its own bz2 stream, then 100 pages per stream, then ``</mediawiki>``)
and ``…-multistream-index.txt.bz2`` (``offset:page_id:title``, offset = the byte where the page's
stream starts). The text is real: the Debian installation guide (GPL-2) in the wiki's language,
and for enwiki also pages of the Python 3.11 documentation (PSF licence), both read from the
Debian packages ``scripts/build_sample_data.py`` caches. The HTML is turned into the wikitext
editors write: templates (infoboxes, citations, navboxes, inline ``{{lang}}``/``{{nowrap}}``),
``<ref>`` footnotes, wikitables, internal/external/interlanguage links, categories and files in
the wiki's localized namespace names, ``<math>``, ``<syntaxhighlight>``, plus redirects,
disambiguation pages and pages of other namespaces (talk, user, template, category, file).

Damaged input, each counted in ``EXPECTED.json``: pages with an unterminated template, pages
with an XML entity that XML does not define (``&nbsp;`` straight in the XML), and one bz2 stream
cut in half (its pages are lost, the streams after it must still be read).

Every id, timestamp and choice derives from the input, so two builds are byte-identical.

Usage: python scripts/build_sample_wiki.py [--out data/sample/wiki] [--cache .phiflow/cache]
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import html
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from resiliparse.parse.html import HTMLTree, NodeType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_sample_data import (
    GUIDE_PKG,
    PY_DOC_PKG,
    REPO_ROOT,
    SourcePage,
    deb_version,
    drop_untranslated,
    ensure_debs,
    extract_deb,
    guide_pages,
    python_doc_pages,
    stable_int,
)

DUMP_DATE = "20240601"
PAGES_PER_STREAM = 100  # what Wikimedia's multistream dumps use
PY_DOC_ARTICLES = 110
PY_DOC_MAX_BYTES = 60_000  # source HTML; keeps the sample ~1-2 MB
MIN_ARTICLE_CHARS = 400  # source pages whose prose is shorter (tables of contents) become no article
FORCED_PY_DOCS = ("library/math.html", "library/statistics.html", "library/cmath.html")
MAIN_PAGES = {"en": "Main_Page", "de": "Wikipedia:Hauptseite", "fr": "Wikipédia:Accueil_principal",
              "ja": "メインページ"}
XMLNS = "http://www.mediawiki.org/xml/export-0.11/"

# Formulas the math-heavy Python pages get as <math> (what the docs state in prose).
FORMULAS = {
    "library/math.html": [r"\operatorname{dist}(p, q) = \sqrt{\sum_i (p_i - q_i)^2}", r"e^{i\pi} + 1 = 0"],
    "library/statistics.html": [
        r"\bar{x} = \frac{1}{n}\sum_{i=1}^{n} x_i",
        r"s^2 = \frac{1}{n-1}\sum_{i=1}^{n} (x_i - \bar{x})^2",
    ],
    "library/cmath.html": [r"z = r(\cos\varphi + i\sin\varphi) = re^{i\varphi}"],
}


@dataclass(frozen=True)
class Wiki:
    """One language edition: its dump name, guide language and localized names."""

    name: str
    lang: str
    guide_lang: str
    namespaces: dict[int, str]
    redirect: str
    disambig: str
    may_refer: str
    references: str
    external_links: str
    category: str  # the guide's category title


NS_EN = {
    -2: "Media",
    -1: "Special",
    1: "Talk",
    2: "User",
    3: "User talk",
    4: "Wikipedia",
    5: "Wikipedia talk",
    6: "File",
    7: "File talk",
    8: "MediaWiki",
    9: "MediaWiki talk",
    10: "Template",
    11: "Template talk",
    12: "Help",
    13: "Help talk",
    14: "Category",
    15: "Category talk",
    100: "Portal",
    828: "Module",
}
WIKIS = [
    Wiki(
        "enwiki",
        "en",
        "en",
        NS_EN,
        "#REDIRECT",
        "Disambiguation",
        "may refer to",
        "References",
        "External links",
        "Debian installation",
    ),
    Wiki(
        "dewiki",
        "de",
        "de",
        {
            -2: "Medium",
            -1: "Spezial",
            1: "Diskussion",
            2: "Benutzer",
            3: "Benutzer Diskussion",
            4: "Wikipedia",
            5: "Wikipedia Diskussion",
            6: "Datei",
            7: "Datei Diskussion",
            8: "MediaWiki",
            9: "MediaWiki Diskussion",
            10: "Vorlage",
            11: "Vorlage Diskussion",
            12: "Hilfe",
            13: "Hilfe Diskussion",
            14: "Kategorie",
            15: "Kategorie Diskussion",
            100: "Portal",
            828: "Modul",
        },
        "#WEITERLEITUNG",
        "Begriffsklärung",
        "steht für",
        "Einzelnachweise",
        "Weblinks",
        "Debian-Installation",
    ),
    Wiki(
        "frwiki",
        "fr",
        "fr",
        {
            -2: "Média",
            -1: "Spécial",
            1: "Discussion",
            2: "Utilisateur",
            3: "Discussion utilisateur",
            4: "Wikipédia",
            5: "Discussion Wikipédia",
            6: "Fichier",
            7: "Discussion fichier",
            8: "MediaWiki",
            9: "Discussion MediaWiki",
            10: "Modèle",
            11: "Discussion modèle",
            12: "Aide",
            13: "Discussion aide",
            14: "Catégorie",
            15: "Discussion catégorie",
            100: "Portail",
            828: "Module",
        },
        "#REDIRECTION",
        "Homonymie",
        "peut désigner",
        "Références",
        "Liens externes",
        "Installation de Debian",
    ),
    Wiki(
        "jawiki",
        "ja",
        "ja",
        {
            -2: "メディア",
            -1: "特別",
            1: "ノート",
            2: "利用者",
            3: "利用者‐会話",
            4: "Wikipedia",
            5: "Wikipedia‐ノート",
            6: "ファイル",
            7: "ファイル‐ノート",
            8: "MediaWiki",
            9: "MediaWiki‐ノート",
            10: "Template",
            11: "Template‐ノート",
            12: "Help",
            13: "Help‐ノート",
            14: "Category",
            15: "Category‐ノート",
            100: "Portal",
            828: "モジュール",
        },
        "#転送",
        "Aimai",
        "は以下を指す",
        "脚注",
        "外部リンク",
        "Debianのインストール",
    ),
]
SKIP_CLASSES = {
    "navheader",
    "navfooter",
    "toc",
    "sphinxsidebar",
    "related",
    "footer",
    "headerlink",
    "footnotes",
    "list-of-tables",
    "list-of-figures",
    "list-of-examples",
}
CODE_INLINE = {"code", "tt", "kbd", "samp", "var"}
BOLD = {"strong", "b"}
ITALIC = {"em", "i", "cite", "dfn"}
SECTION_NUMBER = re.compile(r"^[\dA-Z]+(\.\d+)+\.?\s*")
_WIKI_SPECIAL = re.compile(r"[&<>|]|\[\[|\]\]|\{\{|\}\}|''|~~~|^[*#:;=]|\[(?=https?:)")


def escape_text(text: str) -> str:
    """Plain text as wikitext: entities only where the characters would otherwise be markup."""
    return _WIKI_SPECIAL.sub(lambda m: "".join(f"&#{ord(c)};" for c in m.group()), text)


# --------------------------------------------------------------------------- HTML -> wikitext


def clean_space(text: str) -> str:
    return " ".join(text.split())


def page_title(page: SourcePage, tree: HTMLTree) -> str:
    """Article title: the HTML title without section numbers or the docs' suffix."""
    title = clean_space(tree.title or page.path.stem)
    title = re.sub(r"\s+—\s+Python [\d.]+ documentation$", "", title)
    title = re.sub(r"^(Chapter|Appendix|Kapitel|Anhang|Chapitre|Annexe)?\s*[\dA-Z]+(\.\d+)*\.\s*", "", title)
    title = re.sub(r"^第\s*\d+\s*章\s*", "", title)
    title = re.sub(r"^[\dA-Z]+(\.\d+)+\s*", "", title)
    return title.replace("[", "(").replace("]", ")").replace("|", "-").replace("#", "").strip() or page.path.stem


class WikitextWriter:
    """Walks an HTML page and writes the wikitext an editor would write for the same content."""

    def __init__(self, page: SourcePage, links: dict[str, str]) -> None:
        self.page = page
        self.links = links  # same-wiki HTML file name -> article title
        self.blocks: list[str] = []

    # inline ------------------------------------------------------------------------------
    def inline(self, node: Any) -> str:
        if node.type == NodeType.TEXT:
            return escape_text(clean_space_keep_edges(node.text))
        if node.type != NodeType.ELEMENT or SKIP_CLASSES & set(node.class_list):
            return ""
        tag = node.tag
        inner = "".join(self.inline(c) for c in node.child_nodes)
        if tag == "a":
            return self.link(node, inner)
        if tag in CODE_INLINE:
            return f"<code>{inner.strip()}</code>" if inner.strip() else ""
        if tag in BOLD:
            return f"'''{inner.strip()}'''" if inner.strip() else ""
        if tag in ITALIC:
            return f"''{inner.strip()}''" if inner.strip() else ""
        if tag == "br":
            return "<br />"
        if tag in ("sup", "img", "script", "style"):
            return ""
        return inner

    def link(self, node: Any, inner: str) -> str:
        href = node.getattr("href") or ""
        text = inner.strip()
        if not text:
            return ""
        if href.startswith(("http://", "https://")):
            return f"[{href} {text}]"
        target = self.links.get(href.split("#", 1)[0].rsplit("/", 1)[-1])
        if target is None or target == self.links.get(self.page.path.name):
            return text
        return f"[[{target}]]" if clean_space(html.unescape(text)) == target else f"[[{target}|{text}]]"

    # blocks ------------------------------------------------------------------------------
    def walk(self, node: Any, list_prefix: str = "") -> None:
        if node.type == NodeType.TEXT:
            if node.text.strip():
                self.blocks.append(escape_text(clean_space(node.text)))
            return
        if node.type != NodeType.ELEMENT or SKIP_CLASSES & set(node.class_list):
            return
        tag = node.tag
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            text = clean_space(html.unescape("".join(self.inline(c) for c in node.child_nodes)))
            level = min(max(int(tag[1]), 2), 5)
            if text and self.blocks:  # the first heading is the article title
                text = SECTION_NUMBER.sub("", text)
                self.blocks.append(f"{'=' * level} {text} {'=' * level}")
            return
        if tag == "p":
            text = "".join(self.inline(c) for c in node.child_nodes).strip()
            if text:
                self.blocks.append(clean_space(text))
            return
        if tag == "pre":
            self.code_block(node)
            return
        if tag in ("ul", "ol"):
            marker = "*" if tag == "ul" else "#"
            for li in node.child_nodes:
                if li.type == NodeType.ELEMENT and li.tag == "li":
                    self.list_item(li, list_prefix + marker)
            return
        if tag == "dl":
            for item in node.child_nodes:
                if item.type == NodeType.ELEMENT and item.tag in ("dt", "dd"):
                    text = clean_space("".join(self.inline(c) for c in item.child_nodes if c.tag not in ("pre", "div")))
                    if text:
                        self.blocks.append(("; " if item.tag == "dt" else ": ") + text)
                    for c in item.child_nodes:
                        if c.type == NodeType.ELEMENT and c.tag in ("pre", "div"):
                            self.walk(c)
            return
        if tag == "table":
            self.table(node)
            return
        for child in node.child_nodes:
            self.walk(child, list_prefix)

    def list_item(self, li: Any, prefix: str) -> None:
        parts, nested = [], []
        for c in li.child_nodes:
            if (
                c.type == NodeType.ELEMENT
                and c.tag in ("ul", "ol", "pre", "table", "div")
                and not (c.tag == "div" and not c.get_elements_by_tag_name("pre"))
            ):
                nested.append(c)
            elif c.type == NodeType.ELEMENT and c.tag == "p":
                parts.append("".join(self.inline(x) for x in c.child_nodes))
            else:
                parts.append(self.inline(c))
        text = clean_space(" ".join(parts))
        if text:
            self.blocks.append(f"{prefix} {text}")
        for c in nested:
            self.walk(c, prefix)

    def code_block(self, node: Any) -> None:
        code = node.text.strip("\n")
        if not code.strip():
            return
        code = code.replace("</", "<\\/") if "</syntaxhighlight" in code or "</pre" in code else code
        if self.page.source == "python-doc":
            lang = "pycon" if code.lstrip().startswith(">>>") else "python"
            self.blocks.append(f'<syntaxhighlight lang="{lang}">\n{code}\n</syntaxhighlight>')
        elif "screen" in node.class_list:
            self.blocks.append(f'<syntaxhighlight lang="console">\n{code}\n</syntaxhighlight>')
        else:
            self.blocks.append(f"<pre>\n{html.escape(code, quote=False)}\n</pre>")

    def table(self, node: Any) -> None:
        rows = [tr for tr in node.get_elements_by_tag_name("tr")]
        lines = ['{| class="wikitable"']
        for i, tr in enumerate(rows):
            cells = [c for c in tr.child_nodes if c.type == NodeType.ELEMENT and c.tag in ("td", "th")]
            if not cells:
                continue
            if i:
                lines.append("|-")
            header = all(c.tag == "th" for c in cells)
            texts = [clean_space("".join(self.inline(x) for x in c.child_nodes)) or " " for c in cells]
            lines.append(("! " + " !! ".join(texts)) if header else ("| " + " || ".join(texts)))
        lines.append("|}")
        if len(lines) > 2:
            self.blocks.append("\n".join(lines))


def clean_space_keep_edges(text: str) -> str:
    """Collapse whitespace inside a text node but keep one space at its edges (word boundaries)."""
    core = clean_space(text)
    if not core:
        return " " if text else ""
    return (" " if text[0].isspace() else "") + core + (" " if text[-1].isspace() else "")


def content_root(page: SourcePage, tree: HTMLTree) -> Any:
    if page.source == "python-doc":
        return tree.body.query_selector('div[role="main"]') or tree.body
    return tree.body


# --------------------------------------------------------------------------- articles


@dataclass
class Article:
    title: str
    body: list[str]  # wikitext blocks
    page: SourcePage
    text_chars: int


@dataclass
class DumpPage:
    """One <page> of the export, and what an extractor is expected to do with it."""

    title: str
    ns: int
    wikitext: str
    expect: str  # "article" or the drop reason an extractor should report
    redirect: str | None = None
    raw_xml_text: str | None = None  # pre-escaped text (the invalid-entity pages)
    origin: dict[str, str] = field(default_factory=dict)


def html_article(page: SourcePage, links: dict[str, str]) -> Article | None:
    tree = HTMLTree.parse(page.text())
    writer = WikitextWriter(page, links)
    writer.walk(content_root(page, tree))
    prose = sum(len(b) for b in writer.blocks if not b.startswith(("<", "{|", "=")))
    if prose < MIN_ARTICLE_CHARS:
        return None
    return Article(links[page.path.name], writer.blocks, page, prose)


def unique_titles(pages: list[SourcePage], wiki: Wiki) -> dict[str, str]:
    """HTML file name -> unique article title (a repeated title gets the wiki's qualifier)."""
    titles: dict[str, str] = {}
    seen: Counter[str] = Counter()
    for page in pages:
        title = page_title(page, HTMLTree.parse(page.text()))
        if page.source == "python-doc":
            title = f"{title} (Python)" if "—" not in title else title
        seen[title] += 1
        if seen[title] > 1:
            title = f"{title} ({page.path.stem})"
        key = page.url.rsplit("/", 1)[-1] if page.source != "python-doc" else page.url.split("/3.11/", 1)[1]
        titles[key] = title
    return titles


def decorate(article: Article, wiki: Wiki, interlang: dict[str, str], revision_day: str) -> str:
    """Wrap an article's body in the templates, references and links a real article has."""
    h = stable_int("decorate", wiki.name, article.title)
    url = article.page.url
    category = wiki.category if article.page.source != "python-doc" else "Python (programming language)"
    publisher = "Python Software Foundation" if article.page.source == "python-doc" else "Debian"
    cite = f"{{{{cite web |url={url} |title={article.title} |publisher={publisher} |access-date={revision_day}}}}}"
    lines = [f"{{{{Short description|{article.title.split(' (')[0][:60]}}}}}"]
    if h % 3 == 0:
        lines.append(f"{{{{Use dmy dates|date={revision_day[:7]}}}}}")
    if article.page.source == "python-doc":
        lines.append(
            "{{Infobox software\n| name = Python\n| developer = [[Python Software Foundation]]\n"
            "| latest release version = 3.11.2\n| programming language = [[C (programming language)|C]], "
            "Python\n| license = [[Python Software Foundation License|PSF License]]\n}}"
        )
    elif h % 2 == 0:
        lines.append(
            "{{Infobox OS\n| name = Debian\n| developer = The Debian Project\n| family = [[Unix-like]]\n"
            "| released = {{Start date and age|1993|09|15}}\n| website = {{URL|https://www.debian.org}}\n}}"
        )
    body = list(article.body)
    first = next((i for i, b in enumerate(body) if not b.startswith(("<", "{|", "=", "*", "#", ";", ":"))), None)
    if first is not None:
        body[first] = f'{body[first]}<ref name="src">{cite}</ref>'
        later = next(
            (i for i, b in enumerate(body) if i > first + 1 and b.endswith(".") and not b.startswith(("*", "#", ":"))),
            None,
        )
        if later is not None:
            body[later] = f'{body[later]}<ref name="src" />'
    if h % 4 == 1 and first is not None:
        body.insert(first + 1, f"[[{wiki.namespaces[6]}:Debian-OpenLogo.svg|thumb|upright=0.5|{article.title}]]")
    for k, tex in enumerate(FORMULAS.get(article.page.url.split("/3.11/", 1)[-1], [])):
        block = ' display="block"' if k == 0 else ""
        body.insert(min(len(body), (first or 0) + 1 + k), f"<math{block}>{tex}</math>")
    if article.page.source == "installation-guide" and h % 5 == 2:
        body.append("{{lang|en|Debian GNU/Linux}} {{nowrap|Debian 12 «bookworm»}}")
    lines += body
    lines += [
        f"== {wiki.references} ==",
        "{{Reflist}}",
        f"== {wiki.external_links} ==",
        f"* [{url} {article.title}] ({publisher})",
        "{{Debian navbox}}" if h % 2 else "{{Authority control}}",
        f"[[{wiki.namespaces[14]}:{category}]]",
    ]
    lines += [f"[[{lang}:{title}]]" for lang, title in sorted(interlang.items()) if lang != wiki.lang]
    return "\n\n".join(lines) + "\n"


def extra_pages(wiki: Wiki, articles: list[Article]) -> list[DumpPage]:
    """Redirects, a disambiguation page and pages of other namespaces, as every dump has."""
    ns = wiki.namespaces
    out: list[DumpPage] = []
    ranked = sorted(articles, key=lambda a: stable_int("redirect", wiki.name, a.title))
    taken = {a.title for a in articles}
    for a in ranked[:8]:
        alias = a.title.lower() if a.title.lower() not in taken else f"{a.title} (Debian)"
        if alias in taken:
            continue
        taken.add(alias)
        out.append(
            DumpPage(
                alias,
                0,
                f"{wiki.redirect} [[{a.title}]]\n\n{{{{R from other capitalisation}}}}\n",
                "redirect",
                redirect=a.title,
            )
        )
    dab = sorted(a.title for a in articles)[:6]
    out.append(
        DumpPage(
            f"Debian ({wiki.disambig})",
            0,
            f"'''Debian''' {wiki.may_refer}:\n\n"
            + "\n".join(f"* [[{t}]]" for t in dab)
            + f"\n\n{{{{{wiki.disambig}}}}}\n",
            "disambiguation",
        )
    )
    first = articles[0]
    prose = next(b for b in first.body if not b.startswith(("<", "{|", "=", "*", "#", ";", ":")))
    out += [
        DumpPage(
            f"{ns[1]}:{first.title}", 1, f"== Merge proposal ==\n{prose[:300]} ~~~~\n:Agreed. ~~~~\n", "other_namespace"
        ),
        DumpPage(
            f"{ns[2]}:Example editor", 2, "{{User Debian}}\n{{Babel|" + wiki.lang + "|en-3}}\n", "other_namespace"
        ),
        DumpPage(
            f"{ns[10]}:Debian navbox",
            10,
            "{{Navbox\n| name = Debian navbox\n| title = [[Debian]]\n| list1 = "
            + " • ".join(f"[[{a.title}]]" for a in articles[:5])
            + "\n}}<noinclude>[["
            + ns[14]
            + ":Navigational boxes]]</noinclude>\n",
            "other_namespace",
        ),
        DumpPage(f"{ns[14]}:{wiki.category}", 14, f"{prose[:200]}\n\n[[{ns[14]}:Debian]]\n", "other_namespace"),
        DumpPage(
            f"{ns[6]}:Debian-OpenLogo.svg",
            6,
            "== Summary ==\n{{Information\n| description = Debian logo\n"
            "| source = https://www.debian.org/logos/\n| author = Raphaël Hertzog\n}}\n",
            "other_namespace",
        ),
        DumpPage(
            f"{ns[4]}:WikiProject Debian", 4, f"{prose[:250]}\n\n{{{{WikiProject banner shell}}}}\n", "other_namespace"
        ),
    ]
    return out


def broken_pages(wiki: Wiki, articles: list[Article], kinds: list[str]) -> list[DumpPage]:
    """Damaged pages next to good ones: what real dumps and real edits occasionally contain."""
    out = []
    for kind in kinds:
        victim = sorted(articles, key=lambda a: stable_int("broken", kind, wiki.name, a.title))[0]
        prose = [b for b in victim.body if not b.startswith(("<", "{|", "=", "*", "#", ";", ":"))][:3]
        if kind == "unterminated_template":
            # A vandalised/half-saved edit: the infobox never closes, the parser sees raw braces.
            text = (
                "{{Infobox software\n| name = Debian\n| developer = The Debian Project\n\n" + "\n\n".join(prose) + "\n"
            )
            out.append(DumpPage(f"{victim.title} (draft)", 0, text, "unterminated_template"))
        elif kind == "invalid_xml":
            # An HTML entity written into the XML unescaped: XML only defines five named entities.
            body = "\n\n".join(prose).translate({ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"})
            out.append(
                DumpPage(f"{victim.title} (copy)", 0, "", "invalid_xml", raw_xml_text=body.replace(" ", "&nbsp;", 3))
            )
    return out


# --------------------------------------------------------------------------- XML and bz2


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def sha1_base36(data: bytes) -> str:
    """MediaWiki's revision sha1: the SHA-1 as a base-36 number, 31 digits."""
    n = int.from_bytes(hashlib.sha1(data).digest(), "big")
    digits = ""
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return digits.rjust(31, "0")


def siteinfo_xml(wiki: Wiki) -> str:
    lines = [
        f'<mediawiki xmlns="{XMLNS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{XMLNS} http://www.mediawiki.org/xml/export-0.11.xsd" version="0.11" '
        f'xml:lang="{wiki.lang}">',
        "  <siteinfo>",
        "    <sitename>Wikipedia</sitename>",
        f"    <dbname>{wiki.name}</dbname>",
        f"    <base>https://{wiki.lang}.wikipedia.org/wiki/{MAIN_PAGES[wiki.lang]}</base>",
        "    <generator>MediaWiki 1.43.0-wmf.8</generator>",
        "    <case>first-letter</case>",
        "    <namespaces>",
    ]
    for key in sorted([*wiki.namespaces, 0]):
        name = wiki.namespaces.get(key)
        lines.append(
            f'      <namespace key="{key}" case="first-letter" />'
            if name is None
            else f'      <namespace key="{key}" case="first-letter">{xml_escape(name)}</namespace>'
        )
    lines += ["    </namespaces>", "  </siteinfo>", ""]
    return "\n".join(lines)


def page_xml(page: DumpPage, page_id: int, rev_id: int, timestamp: str) -> str:
    text = page.raw_xml_text if page.raw_xml_text is not None else xml_escape(page.wikitext)
    raw = page.wikitext.encode() if page.raw_xml_text is None else page.raw_xml_text.encode()
    user = ["Debian-doc-bot", "Example editor", "Importer"][page_id % 3]
    lines = [
        "  <page>",
        f"    <title>{xml_escape(page.title)}</title>",
        f"    <ns>{page.ns}</ns>",
        f"    <id>{page_id}</id>",
    ]
    if page.redirect:
        lines.append(f'    <redirect title="{xml_escape(page.redirect)}" />')
    lines += [
        "    <revision>",
        f"      <id>{rev_id}</id>",
        f"      <parentid>{rev_id - 1 - page_id % 7}</parentid>",
        f"      <timestamp>{timestamp}</timestamp>",
        "      <contributor>",
        f"        <username>{user}</username>",
        f"        <id>{1000 + page_id % 3}</id>",
        "      </contributor>",
    ]
    if page_id % 4 == 0:
        lines.append("      <comment>copyedit</comment>")
    lines += [
        f"      <origin>{rev_id}</origin>",
        "      <model>wikitext</model>",
        "      <format>text/x-wiki</format>",
        f'      <text bytes="{len(raw)}" sha1="{sha1_base36(raw)}" xml:space="preserve">{text}</text>',
        f"      <sha1>{sha1_base36(raw)}</sha1>",
        "    </revision>",
        "  </page>",
        "",
    ]
    return "\n".join(lines)


def write_dump(out: Path, wiki: Wiki, pages: list[DumpPage], truncate_stream: int | None) -> dict[str, Any]:
    """Write the multistream dump and its index; return what an extractor should find."""
    folder = out / wiki.name / DUMP_DATE
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{wiki.name}-{DUMP_DATE}-pages-articles-multistream"
    base_time = datetime(2024, 5, 1, tzinfo=UTC)
    streams: list[bytes] = [bz2.compress(siteinfo_xml(wiki).encode(), 9)]
    index_lines: list[str] = []
    expect: Counter[str] = Counter()
    offset = len(streams[0])
    page_id, rev_id = 10, 1_200_000 + stable_int(wiki.name) % 100_000
    groups = [pages[i : i + PAGES_PER_STREAM] for i in range(0, len(pages), PAGES_PER_STREAM)]
    lost: list[str] = []
    for s, group in enumerate(groups):
        chunks = []
        for page in group:
            page_id += 1 + stable_int("gap", wiki.name, page.title) % 3
            rev_id += 1 + stable_int("rev", wiki.name, page.title) % 50
            stamp = (base_time + timedelta(minutes=stable_int("ts", page.title) % 40_000)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            chunks.append(page_xml(page, page_id, rev_id, stamp))
            index_lines.append(f"{offset}:{page_id}:{page.title}")
            page.origin.update(page_id=str(page_id), rev_id=str(rev_id))
        data = bz2.compress("".join(chunks).encode(), 9)
        if s == truncate_stream:
            data = data[: len(data) // 2]  # the stream's end-of-stream marker is gone, the next stream follows
            lost += [p.title for p in group]
            expect["corrupt_stream"] += len(group)
        else:
            expect.update(p.expect for p in group)
        streams.append(data)
        offset += len(data)
    streams.append(bz2.compress(b"</mediawiki>\n", 9))
    dump = folder / f"{stem}.xml.bz2"
    dump.write_bytes(b"".join(streams))
    index = folder / f"{stem}-index.txt.bz2"
    index.write_bytes(bz2.compress(("\n".join(index_lines) + "\n").encode(), 9))
    return {
        "dump": dump.relative_to(out).as_posix(),
        "index": index.relative_to(out).as_posix(),
        "language": wiki.lang,
        "pages": len(pages),
        "page_streams": len(groups),
        "bytes": dump.stat().st_size,
        "articles": expect.pop("article", 0),
        "dropped": dict(sorted(expect.items())),
        "lost_in_corrupt_stream": lost,
    }


# --------------------------------------------------------------------------- build


def wiki_articles(wiki: Wiki, guide: list[SourcePage], py_pages: list[SourcePage]) -> list[Article]:
    """The wiki's articles: its language's guide pages (and Python docs pages on enwiki)."""
    sources = [p for p in guide if p.lang == wiki.guide_lang]
    if wiki.lang == "en":
        eligible = [p for p in py_pages if p.path.stat().st_size <= PY_DOC_MAX_BYTES and "genindex" not in p.url]
        forced = [p for p in py_pages if p.url.split("/3.11/", 1)[1] in FORCED_PY_DOCS]
        ranked = sorted((p for p in eligible if p not in forced), key=lambda p: stable_int("wiki", p.url))
        sources += sorted(forced + ranked[: PY_DOC_ARTICLES - len(forced)], key=lambda p: p.url)
    titles = unique_titles(sources, wiki)
    links = {k.rsplit("/", 1)[-1] if "/" in k else k: v for k, v in titles.items()}
    links.update(titles)
    articles = []
    for p in sources:
        key = p.url.split("/3.11/", 1)[1] if p.source == "python-doc" else p.url.rsplit("/", 1)[-1]
        a = html_article(p, {**links, p.path.name: titles[key]})
        if a is not None:
            articles.append(a)
    return articles


def build(out: Path, cache: Path) -> dict[str, Any]:
    debs = ensure_debs(cache)
    roots = {pkg: extract_deb(deb, cache) for pkg, deb in debs.items()}
    guide, _ = drop_untranslated(guide_pages(roots[GUIDE_PKG]))
    py_pages = python_doc_pages(roots[PY_DOC_PKG])
    if out.exists():
        for f in sorted(out.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    per_wiki = {w.name: wiki_articles(w, guide, py_pages) for w in WIKIS}
    # Interlanguage links: the same guide page (same HTML file name) across editions.
    by_file: dict[str, dict[str, str]] = {}
    for w in WIKIS:
        for a in per_wiki[w.name]:
            if a.page.source == "installation-guide":
                by_file.setdefault(a.page.path.name, {})[w.lang] = a.title
    broken = {
        "enwiki": ["unterminated_template"],
        "dewiki": ["unterminated_template"],
        "frwiki": ["invalid_xml"],
        "jawiki": ["invalid_xml"],
    }
    dumps, labels = {}, []
    for w in WIKIS:
        articles = per_wiki[w.name]
        pages = [
            DumpPage(
                a.title,
                0,
                decorate(
                    a, w, by_file.get(a.page.path.name, {}) if a.page.source != "python-doc" else {}, "2024-05-20"
                ),
                "article",
                origin={"url": a.page.url, "source": a.page.source},
            )
            for a in articles
        ]
        pages += extra_pages(w, articles) + broken_pages(w, articles, broken[w.name])
        pages.sort(key=lambda p: stable_int("order", w.name, p.title))
        if w.name == "enwiki":  # talk pages of a bulk import, in a stream that the dump lost the end of
            talk = [
                DumpPage(
                    f"{w.namespaces[1]}:{a.title}",
                    1,
                    f"== Sources ==\nImported from {a.page.url}. ~~~~\n",
                    "other_namespace",
                )
                for a in articles[:PAGES_PER_STREAM]
            ]
            cut = (len(pages) // PAGES_PER_STREAM) * PAGES_PER_STREAM  # a stream boundary
            pages = pages[:cut] + talk + pages[cut:]
            dumps[w.name] = write_dump(out, w, pages, truncate_stream=cut // PAGES_PER_STREAM)
        else:
            dumps[w.name] = write_dump(out, w, pages, truncate_stream=None)
        labels += [
            {
                "wiki": w.name,
                "page_id": int(p.origin["page_id"]),
                "rev_id": int(p.origin["rev_id"]),
                "title": p.title,
                "source": p.origin["source"],
                "origin_url": p.origin["url"],
            }
            for p in pages
            if p.expect == "article" and "url" in p.origin
        ]
    (out / "labels.jsonl").write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in labels), encoding="utf-8"
    )
    versions = {pkg: deb_version(deb) for pkg, deb in debs.items()}
    expected = {"date": DUMP_DATE, "pages_per_stream": PAGES_PER_STREAM, "packages": versions, "dumps": dumps}
    (out / "EXPECTED.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_readme(out, expected)
    return expected


def write_readme(out: Path, expected: dict[str, Any]) -> None:
    rows = "\n".join(
        f"| {name} | {d['language']} | {d['pages']} | {d['page_streams']} | {d['articles']} | "
        f"{', '.join(f'{k} {v}' for k, v in d['dropped'].items())} | {d['bytes']} |"
        for name, d in expected["dumps"].items()
    )
    text = f"""# Wikipedia-style multistream dumps (generated)

Generated by `scripts/build_sample_wiki.py`; do not edit by hand. The build is deterministic.

Layout as on dumps.wikimedia.org: `<wiki>/<date>/<wiki>-<date>-pages-articles-multistream.xml.bz2`
(MediaWiki export schema 0.11; stream 0 holds `<mediawiki>` + `<siteinfo>`, then {PAGES_PER_STREAM} pages per bz2
stream, then a stream with `</mediawiki>`) and `…-multistream-index.txt.bz2` (`offset:page_id:title`).

Text: real pages of the Debian installation guide {expected["packages"][GUIDE_PKG]} (GPL-2) in the wiki's
language and, in enwiki, of the Python 3.11 documentation {expected["packages"][PY_DOC_PKG]} (PSF licence),
rewritten as wikitext (templates, refs, wikitables, links, categories, files, `<math>`, `<syntaxhighlight>`),
plus redirects, a disambiguation page and pages of other namespaces. Licences: see `../licenses/`.

| dump | lang | pages | page streams | articles | other pages by expected reason | bytes |
| --- | --- | ---: | ---: | ---: | --- | ---: |
{rows}

Damaged on purpose (`EXPECTED.json` lists them): `unterminated_template` (an infobox that never closes),
`invalid_xml` (`&nbsp;` written raw into the XML, an entity XML does not define), and in enwiki one
bz2 stream of talk pages cut in half inside the file (`corrupt_stream`: its pages are lost, the streams after it
are not; `truncated_stream` is kept for a file that ends inside a stream).
`labels.jsonl`: every article's page id, revision id, title, origin page and source (python-doc or
installation-guide).
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "sample" / "wiki")
    ap.add_argument("--cache", type=Path, default=REPO_ROOT / ".phiflow" / "cache")
    args = ap.parse_args(argv)
    expected = build(args.out.resolve(), args.cache.resolve())
    for name, d in expected["dumps"].items():
        print(
            f"{name}: {d['pages']} pages in {d['page_streams']} streams, {d['articles']} articles, "
            f"dropped {d['dropped']}, {d['bytes']} bytes"
        )
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"total on disk: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
