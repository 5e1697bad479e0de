"""Wikipedia pages as dumps really hold them (issue 18, Wikipedia 12 and 14): behaviour switches in
every language, and pages with several revisions. Built here, page by page."""

from __future__ import annotations

import bz2
from xml.sax.saxutils import escape

import pytest

from phiflow.records.wikitext import CleanConfig, StreamError, clean_page, decompress_streams, iter_pages, read_header

HEADER = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="de">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>dewiki</dbname>
    <base>https://de.wikipedia.org/wiki/Wikipedia:Hauptseite</base>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="6" case="first-letter">Datei</namespace>
      <namespace key="14" case="first-letter">Kategorie</namespace>
    </namespaces>
  </siteinfo>
"""
SITE = read_header(bz2.compress(HEADER.encode()))
CFG = CleanConfig(drop_sections=frozenset(), disambiguation_templates=frozenset())


def revision(rev_id: int, when: str, text: str) -> str:
    return (f"<revision><id>{rev_id}</id><timestamp>{when}</timestamp>"
            f"<contributor><username>u</username><id>1</id></contributor>"
            f'<model>wikitext</model><format>text/x-wiki</format><text xml:space="preserve">{text}</text>'
            f"<sha1>x</sha1></revision>")  # fmt: skip


def page(title: str, page_id: int, *revisions: str) -> str:
    return f"<page><title>{title}</title><ns>0</ns><id>{page_id}</id>{''.join(revisions)}</page>"


def clean(wikitext: str) -> str:
    (p,) = iter_pages(SITE, page("T", 1, revision(10, "2024-01-01T00:00:00Z", escape(wikitext))))
    text, reason = clean_page(p, SITE, CFG)
    assert reason is None
    return text


def test_behaviour_switches_are_removed_in_any_language() -> None:
    body = "Ein Satz über Berlin.\n__TOC__\n__NOTOC__ __INHALTSVERZEICHNIS__ __KEIN_INHALTSVERZEICHNIS__\n"
    body += "__SANSSOMMAIRE__ __目次__ __NOEDITSECTION__ Noch ein Satz."
    text = clean(body)
    assert "__" not in text and "Ein Satz über Berlin." in text and "Noch ein Satz." in text


def test_lower_case_dunders_are_prose() -> None:
    assert "__init__" in clean("Die Methode __init__ legt ein Objekt an.")


def test_the_latest_revision_is_taken_whatever_the_order() -> None:
    old = revision(10, "2020-01-01T00:00:00Z", "Alte Fassung des Artikels.")
    new = revision(20, "2024-05-01T00:00:00Z", "Neue Fassung des Artikels.")
    mid = revision(15, "2022-01-01T00:00:00Z", "Mittlere Fassung des Artikels.")
    (p,) = iter_pages(SITE, page("A", 1, old, mid, new))
    assert p.revision_id == 20 and "Neue Fassung" in p.wikitext
    (q,) = iter_pages(SITE, page("B", 2, new, old))  # listed newest first
    assert q.revision_id == 20


def test_a_one_sentence_stub_clears_the_default_length_floor() -> None:
    from phiflow.recipe import WikipediaExtractParams

    stub = ("'''Kleinhausen''' ist ein Ortsteil der Gemeinde [[Großdorf]] im [[Landkreis Beispiel]] in "
            "[[Bayern]] und hat etwa 120 Einwohner.\n{{Navigationsleiste Großdorf}}\n[[Kategorie:Ort in Bayern]]"
            "\n{{Stub}}")  # fmt: skip
    text = clean(stub)
    assert 100 <= len(text) < 200 and text.startswith("Kleinhausen ist ein Ortsteil")
    assert len(text) >= WikipediaExtractParams().min_text_chars  # kept: 200 used to drop it as too_short


def test_a_page_with_invalid_xml_keeps_its_title_and_page_id() -> None:
    good = page("Gut", 7, revision(70, "2024-01-01T00:00:00Z", "Ein gültiger Artikel."))
    bad = page("Kaputt", 8, revision(80, "2024-01-01T00:00:00Z", "Ein &undefiniert; Zeichen."))
    pages = list(iter_pages(SITE, good + bad))
    assert pages[0].page_id == 7
    assert (pages[1].title, pages[1].page_id, pages[1].reason) == ("Kaputt", 8, "invalid_xml:undefined_entity")


def test_templates_nested_500_deep_leave_no_braces() -> None:
    deep = "{{Infobox|a=" * 500 + "x" + "}}" * 500
    text = clean(f"Der Anfang des Artikels.\n{deep}\nDas Ende des Artikels.")
    assert "}}" not in text and "{{" not in text
    assert "Der Anfang des Artikels." in text and "Das Ende des Artikels." in text


def test_unbalanced_markup_leaves_no_apostrophes_or_ref_tags() -> None:
    for wikitext, kept in [
        ("Text.<ref>Quelle ohne Schluss. Mehr Text ohne Ende.", "Text."),
        ("Und ''kursiv '''fett'' falsch''' verschachtelt.", "verschachtelt."),
        ('Ein Satz <ref name="x">offen', "Ein Satz"),
        ("Vorher </ref> nachher.", "nachher."),
    ]:
        text = clean(wikitext)
        assert "''" not in text and "<ref" not in text and "</ref" not in text, text
        assert kept in text


def test_code_keeps_its_apostrophes() -> None:
    text = clean("Ein Beispiel:\n<syntaxhighlight lang=python>\nx = ''\n</syntaxhighlight>\nSchluss.")
    assert "x = ''" in text


def test_quotation_templates_keep_their_text() -> None:
    fr = clean("Il a dit : {{Citation|La science est une chose merveilleuse}} puis il est parti.")
    assert "La science est une chose merveilleuse" in fr
    en = clean("She wrote: {{Quote|text=Knowledge is power.|author=Bacon}} and left.")
    assert "Knowledge is power." in en and "Bacon" not in en
    de = clean("Er sagte: {{Zitat|Wissen ist Macht.}} Ende.")
    assert "Wissen ist Macht." in de
    ref = clean("A claim.{{Citation |title=A Book |author=Someone}} More text.")
    assert "A Book" not in ref  # the English bibliographic {{Citation}} is not text


def test_a_stream_is_truncated_only_where_the_file_ends() -> None:
    """A stream that stops short inside a file whose index gives it every byte (the next stream follows)
    is corrupt; where the file itself ends inside it, truncated; a rejected block is corrupt either way."""
    whole = bz2.compress(("<page><title>T</title></page>" * 300).encode())
    cut = whole[: len(whole) // 2]
    for complete, reason in ((True, "corrupt_stream"), (False, "truncated_stream")):
        with pytest.raises(StreamError) as err:
            decompress_streams(cut, complete)
        assert err.value.reason == reason
    garbled = bytearray(whole)
    garbled[10:40] = bytes(30)
    for complete in (True, False):
        with pytest.raises(StreamError) as err:
            decompress_streams(bytes(garbled), complete)
        assert err.value.reason == "corrupt_stream"
    assert decompress_streams(whole + whole, complete=True).count("<page>") == 600
