"""The documents source without Spark: book cleaning on a Gutenberg-shaped book whose every feature
is planted and counted, and the readers on every kind of broken input, each skip with its reason."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phiflow.records.book_text import COUNTERS, BookCleanConfig, clean_book, gutenberg_header
from phiflow.records.document_files import (
    DROP_REASONS,
    NOTES,
    DocumentRecord,
    InputProblem,
    decode_text,
    list_inputs,
    read_input,
)

ALL_ON = BookCleanConfig()
PAGE = object()  # in a block's lines: the page ends here
PAGE_LINES = 30
RUNNING_HEADER = "THE LIGHTHOUSE KEEPER"
FIRST_SENTENCE = "The lighthouse at Carrow Point stood on a shelf of black rock"
LAST_SENTENCE = "and the light burned on."

GUTENBERG_HEAD = """\
The Project Gutenberg EBook of The Lighthouse Keeper, by Margaret Hale

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.  You may copy it, give it away or
re-use it under the terms of the Project Gutenberg License included
with this eBook or online at www.gutenberg.org


Title: The Lighthouse Keeper
       A Tale of the Northern Coast

Author: Margaret Hale

Release Date: March 3, 2005 [EBook #15123]

Language: English

Character set encoding: ASCII

*** START OF THIS PROJECT GUTENBERG EBOOK THE LIGHTHOUSE KEEPER ***




"""
CREDITS = """\
Produced by Jane Doe and the Online Distributed Proofreading Team at
http://www.pgdp.net"""
GUTENBERG_FOOT = """\





End of the Project Gutenberg EBook of The Lighthouse Keeper, by Margaret Hale

*** END OF THIS PROJECT GUTENBERG EBOOK THE LIGHTHOUSE KEEPER ***

***** This file should be named 15123.txt or 15123.zip *****
This and all associated files of various formats will be found in:
        http://www.gutenberg.org/1/5/1/2/15123/

Updated editions will replace the previous one--the old editions
will be renamed.

Creating the works from public domain print editions means that no
one owns a United States copyright in these works, so the Foundation
(and you!) can copy and distribute it in the United States without
permission and without paying copyright royalties.

*** START: FULL LICENSE ***

THE FULL PROJECT GUTENBERG LICENSE
PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK

To protect the Project Gutenberg-tm mission of promoting the free
distribution of electronic works, by using or distributing this work
(or any other work associated in any way with the phrase "Project
Gutenberg"), you agree to comply with all the terms of the Full Project
Gutenberg-tm License (available with this file or online at
http://gutenberg.org/license).
"""


@dataclass
class Block:
    lines: list  # as printed: hard-wrapped, PAGE where a page ends inside the block
    expected: str  # as the cleaner must give it back
    joins: int = 0  # line breaks reflow must remove
    new_page: bool = False  # opens a page that has no running header (chapter opening)
    prose: bool = False
    blank_before: int = 1


def prose(text: str) -> Block:
    lines = textwrap.wrap(text, 70, break_on_hyphens=False)
    return Block(lines, text, len(lines) - 1, prose=True)


def wrapped(lines: list, fixes: dict[str, str]) -> Block:
    """Hand-wrapped prose; `fixes` says what each line-end hyphenation must become."""
    text = "\n".join(line for line in lines if line is not PAGE)
    for broken, fixed in fixes.items():
        assert broken in text
        text = text.replace(broken, fixed)
    return Block(lines, text.replace("\n", " "), sum(line is not PAGE for line in lines) - 1, prose=True)


def verbatim(*lines: str, expected: str | None = None, new_page: bool = False, blank_before: int = 1) -> Block:
    return Block(list(lines), "\n".join(lines) if expected is None else expected, 0, new_page, False, blank_before)


def chapter(number: str, title: str) -> list[Block]:
    return [verbatim(f"CHAPTER {number}.", new_page=True), verbatim(title, blank_before=2)]


BLOCKS = [
    verbatim(RUNNING_HEADER),
    verbatim("A TALE OF THE NORTHERN COAST", blank_before=2),
    verbatim("BY"),
    verbatim("MARGARET HALE"),
    verbatim("LONDON", "1887", blank_before=3),  # a year alone on a line is no page number
    verbatim("CONTENTS", new_page=True),
    verbatim(
        "CHAPTER I.     THE STORM",
        "CHAPTER II.    THE JOURNAL",
        "CHAPTER III.   THE RESCUE",
        expected="CHAPTER I. THE STORM\nCHAPTER II. THE JOURNAL\nCHAPTER III. THE RESCUE",
        blank_before=2,
    ),
    *chapter("I", "THE STORM"),
    prose(
        f"{FIRST_SENTENCE} some two miles from the village, and for forty years Thomas Penrose had kept "
        "its lamp burning through every kind of weather the northern sea could send against it."
    ),
    prose(
        "He was a quiet man, and the fishermen who rowed out to him with bread and oil on the first Monday of "
        "each month said that he spoke more to the gulls than to any living soul. Yet he was not unhappy; he "
        "had his books, his pipe, and the great brass lamp, which he polished every morning as another man "
        "might groom a favourite horse."
    ),
    prose(
        "On the night of the storm the wind rose at dusk, and by nine o'clock it was screaming round the "
        "gallery like a thing alive. Penrose climbed the hundred and twelve steps three times before midnight "
        "to trim the wick, and each time the glass shook in its frame so that he feared it would burst. The "
        "rain came in level sheets out of the east, and the spray rose over the gallery rail, which stood a "
        "hundred feet above the rock."
    ),
    prose(
        "Long afterwards, when the village children asked him what he had thought of in the worst hour of "
        "that night, he would smile and repeat the lines his mother had taught him when he was a boy:"
    ),
    prose(
        "His mother had been a keeper's daughter herself, born in the cottage under the old light on Gull "
        "Island, and she had taught him his letters from the notices the Board pinned to the store-room door. "
        "She used to say that a lamp was the only thing in the world that asked nothing of a man but his "
        "care, and that it paid him back every night of the year in the same coin, which was the safety of "
        "strangers he would never see."
    ),
    verbatim(
        "The lamp is lit above the sea,",
        "The ships go by in the night;",
        "And every sailor thinks of me,",
        "Who keeps the lonely light.",
    ),
    prose(
        "It was a well-known rhyme along that coast, and there was hardly a fisherman's wife between Carrow "
        "and St. Bride's who could not have finished it for him. The children knew it too, and they sang it "
        "on the harbour wall to-day, to a tune of their own, as their grandmothers had sung it before them."
    ),
    prose(
        "Towards midnight the wind backed into the north-east and the sea began to break clean over the "
        "rock, so that the whole tower shuddered at every wave and the oil in the reservoir stood up in "
        "little ridges like the sand on a beach. Penrose set his back against the lamp-room wall and waited "
        "for the worst of it, counting the seconds between the great seas as he had once counted them "
        "between the flashes of the Gull Island light across the bay."
    ),
    *chapter("II", "THE JOURNAL"),
    wrapped(
        [
            "Every keeper of the light was bound by the rules of the Trinity Board",
            "to write a line in the log at each change of the watch, and Penrose,",
            "who had been a schoolmaster's son, set so careful an exam-",
            "ple to the younger keepers that the Board printed a page of his log",
            "as a pattern for the whole service. He would have laughed at that to-",
            "day, for he thought the log a dull book and kept another of his own.",
        ],
        {"exam-\nple": "example", "to-\nday": "to-day"},
    ),
    prose(
        "That other book was his journal, and it is from its pages that most of this story is taken. He "
        "wrote in it every night by the light of a candle-end, in a small square hand, and he wrote of "
        "everything: the weather, the birds, the ships that passed, for example, and the thoughts that came "
        "to him in the long hours of the middle watch, when the lamp needed nothing and the sea was quiet."
    ),
    wrapped(
        [
            "The entry for the night of the storm begins in his ordinary way, with",
            "the height of the glass and the wind, and then it speaks of the light-",
            "house as if it were a ship labouring in a heavy sea. He had read, he",
            "says, in a book of his wife's father, an old scholar of the Anglo-",
            "Saxon chronicles, that the sea keeps an account with every man who",
            "lives beside it, and that night he thought his account was called.",
        ],
        {"light-\nhouse": "lighthouse", "Anglo-\nSaxon": "Anglo-Saxon"},
    ),
    wrapped(
        [
            "Towards two in the morning he heard a gun, and then a second, and he",
            "went out on the gallery with his glass. What he saw there the jour-",
            PAGE,
            "nal tells in a dozen words: a brig on the Mare's Teeth, her foremast",
            "gone and her people in the rigging. He wrote them down and went to do",
            "what he could.",
        ],
        {"jour-\nnal": "journal"},
    ),
    wrapped(
        [
            "His wife's people, the Trevails of St. Bride's, were a family well-",
            "known on that coast for their boats, and his mother-in-law, old Mrs.",
            "Trevail, had told him many times that a keeper's first duty was to",
            "the light and his second to the ships; but his mother-in-",
            "law was not on the rock that night, and he did not stay to argue it.",
        ],
        {"well-\nknown": "well-known", "mother-in-\nlaw": "mother-in-law"},
    ),
    prose(
        "He had no thought of anything but the light until a little before two, and he says so plainly. The "
        "keeper who lets his mind go out to the ships, he wrote once, lets his lamp go out with it; and for "
        "that reason he never allowed himself to watch the sea for more than a minute together on a bad "
        "night, but turned back to his wick and his glass and his log as a sailor turns to his rope."
    ),
    prose(
        "Yet he could not help but look when the gun fired. Every keeper on that coast had heard of the brigs "
        "that came down from the Baltic in the back end of the year, deep with timber and short of hands, "
        "and of how they would run for the shelter of the bay in any weather rather than face the open sea "
        "round the Point, trusting to the light to keep them off the reef."
    ),
    *chapter("III", "THE RESCUE"),
    prose(
        "There was no boat at the light, and no man could have rowed one through that sea. But Penrose had a "
        "coil of new rope and a rocket-line which the Board had sent him the summer before, and which he had "
        "never fired except once, for practice, on a calm day in June when the whole village came out in "
        "boats to watch him do it and cheered when the line fell true across the harbour mouth."
    ),
    prose(
        "The first rocket fell short and the second went wide, but the third carried its line clean over the "
        "brig's mainmast, and after a long while he felt the answering pull that told him someone aboard had "
        "made it fast. He hauled the heavy rope across, fixed it to the iron ring below the gallery, and "
        "waited with his lantern while the first of the crew came swinging up out of the dark."
    ),
    prose(
        "It was slow work and cold work, and more than once he thought the rope would part where it chafed "
        "on the edge of the gallery. He padded it with his own coat and then with the blankets from his bed, "
        "and every time a man came up out of the dark he took him under the arms and dragged him in through "
        "the door of the lamp-room, where the great lamp turned above them both and threw its beam out over "
        "the water as steadily as on any summer night."
    ),
    prose(
        '"Is there anyone left aboard?" he shouted, when the first man came up the line and fell on the '
        "rock at his feet."
    ),
    prose(
        '"Six more," said the man, "and the boy." Then he lay still, and Penrose left him there and went back '
        "to the rope, and did not leave it again until the boy was safe."
    ),
    prose(
        "By the time the grey light came up over the sea, seven men and a boy sat wrapped in blankets round "
        "the keeper's stove, and the brig had gone to pieces on the rocks. Penrose wrote it all down that "
        "evening in his journal, as plainly as he wrote of the birds and the weather, and the lamp was lit "
        f"again at dusk as it was every night, {LAST_SENTENCE}"
    ),
]


@dataclass
class Book:
    raw: str
    expected: str
    counts: dict[str, int]


def page_number(page: int) -> str:
    if page < 2:
        return ["i", "ii"][page]  # front matter
    n = page - 1
    return [f"- {n} -", f"{n}", f"Page {n}"][n % 3]


def build_book() -> Book:
    """A Gutenberg file: header, credits, the blocks laid out on pages with furniture, footer."""
    pages: list[list[str]] = [[]]
    with_header = [False]

    def new_page(header: bool) -> None:
        pages.append([])
        with_header.append(header)

    for block in BLOCKS:
        if block.new_page:
            new_page(False)
        elif len(pages[-1]) >= PAGE_LINES:
            new_page(True)
        if pages[-1]:
            pages[-1].extend([""] * block.blank_before)
        for i, line in enumerate(block.lines):
            if line is PAGE:
                new_page(True)
                continue
            pages[-1].append(line)
            mid_paragraph = block.prose and i + 1 < len(block.lines) and block.lines[i + 1] is not PAGE
            if len(pages[-1]) >= PAGE_LINES and mid_paragraph and not line.endswith((".", ":", '"', "?")):
                new_page(True)
    printed = [
        "\n".join([*([RUNNING_HEADER, ""] if header else []), *lines, "", "", page_number(i)])
        for i, (lines, header) in enumerate(zip(pages, with_header, strict=True))
    ]
    raw = GUTENBERG_HEAD + CREDITS + "\n\n\n\n" + "\n\f".join(printed) + GUTENBERG_FOOT
    counts = dict.fromkeys(COUNTERS, 0)
    counts.update(
        gutenberg_markers=3,  # START, "End of the Project Gutenberg EBook", END
        # The blank lines between the body's end and the first END line belong to the body.
        gutenberg_boilerplate_chars=len(GUTENBERG_HEAD) + len(CREDITS) + len(GUTENBERG_FOOT.lstrip("\n")),
        form_feeds=len(pages) - 1,
        page_numbers=len(pages),
        running_headers=sum(with_header),
        dehyphenated=3,  # exam-ple, light-house, jour-nal (across a page break)
        hyphens_kept=4,  # to-day (written so elsewhere), Anglo-Saxon, well-known (elsewhere), mother-in-law
        reflowed_lines=sum(b.joins for b in BLOCKS),
        spaces_collapsed=3,  # the runs that align the table of contents
    )
    return Book(raw, "\n\n".join(b.expected for b in BLOCKS), counts)


BOOK = build_book()


def but_blank_lines(counts: dict[str, int]) -> dict[str, int]:
    """Blank lines removed depend on how pages join: counted exactly in test_whitespace_counts."""
    return {k: v for k, v in counts.items() if k != "blank_lines_removed"}


# -- the whole book ------------------------------------------------------------------------------------
def test_book_is_book_shaped() -> None:
    lines = BOOK.raw.split("\n")
    assert len(lines) > 250 and BOOK.counts["form_feeds"] >= 6 and "\f" in BOOK.raw
    assert BOOK.raw.count(RUNNING_HEADER) > 5


def test_clean_book_gives_the_body_as_prose() -> None:
    out, counts = clean_book(BOOK.raw, ALL_ON)
    assert out == BOOK.expected
    assert out.startswith(RUNNING_HEADER) and out.endswith(LAST_SENTENCE)
    assert FIRST_SENTENCE in out
    assert "Gutenberg" not in out and "Produced by" not in out and "\f" not in out
    assert out.count(RUNNING_HEADER) == 1  # the title page's, not the running header
    assert "THE STORM" in out.split("\n") and "CHAPTER II." in out.split("\n")  # headings appear once: kept
    assert "example" in out and "exam" not in out.replace("example", "")
    assert "a family well-known on that coast" in out and "journal tells" in out
    assert "The lamp is lit above the sea,\nThe ships go by in the night;\n" in out  # verse keeps its lines
    assert but_blank_lines(counts) == but_blank_lines(BOOK.counts)
    assert counts["blank_lines_removed"] > 0


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_other_line_endings_clean_the_same(newline: str) -> None:
    assert clean_book(BOOK.raw.replace("\n", newline), ALL_ON) == clean_book(BOOK.raw, ALL_ON)


def test_pages_without_form_feeds_are_found_by_their_numbers() -> None:
    out, counts = clean_book(BOOK.raw.replace("\f", ""), ALL_ON)
    assert out == BOOK.expected
    assert but_blank_lines(counts) == {**but_blank_lines(BOOK.counts), "form_feeds": 0}


@pytest.mark.parametrize(
    ("rule", "feature", "zeroed"),
    [
        (
            "gutenberg",
            "*** START OF THIS PROJECT GUTENBERG EBOOK",
            ["gutenberg_markers", "gutenberg_boilerplate_chars"],
        ),
        ("page_furniture", "\f" + RUNNING_HEADER, ["form_feeds", "page_numbers", "running_headers"]),
        ("dehyphenate", "exam- ple", ["dehyphenated", "hyphens_kept"]),
        ("reflow", next(b for b in BLOCKS if b.prose).lines[0] + "\n", ["reflowed_lines"]),
        ("normalize_whitespace", "\n\n\n", ["spaces_collapsed", "blank_lines_removed"]),
    ],
)
def test_each_rule_off_leaves_its_feature(rule: str, feature: str, zeroed: list[str]) -> None:
    out, counts = clean_book(BOOK.raw, dataclasses.replace(ALL_ON, **{rule: False}))
    assert feature in out and feature not in clean_book(BOOK.raw, ALL_ON)[0]
    assert all(counts[k] == 0 for k in zeroed)
    assert out != BOOK.expected


def test_page_furniture_off_keeps_numbers_and_headers() -> None:
    out, counts = clean_book(BOOK.raw, dataclasses.replace(ALL_ON, page_furniture=False))
    assert "\n- 3 -\n" in out and "\nPage 2\n" in out and "\nii\n" in out
    assert out.count(RUNNING_HEADER) == BOOK.counts["running_headers"] + 1
    assert "the jour-\n" in out and "\nnal tells" in out  # the page break stands between the parts of the word
    assert counts["dehyphenated"] == BOOK.counts["dehyphenated"] - 1


def test_all_rules_off_only_normalises_line_endings() -> None:
    off = BookCleanConfig(False, False, False, False, False)
    out, counts = clean_book(BOOK.raw.replace("\n", "\r\n"), off)
    assert out == BOOK.raw and set(counts) == set(COUNTERS) and not any(counts.values())


# -- Gutenberg variants -----------------------------------------------------------------------------------
def test_old_small_print_header_and_footer() -> None:
    raw = (
        "**The Project Gutenberg Etext of Old Tales**\n"
        "**Welcome To The World of Free Plain Vanilla Electronic Texts**\n\n"
        "*****These eBooks Were Prepared By Thousands of Volunteers!*****\n\n"
        "Title: Old Tales\n\nAuthor: Anonymous\n\n"
        "**The Legal Small Print**\n\nBy using or reading any part of this etext, you agree.\n\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\n"
        "Once upon a time there was a king.\n\n"
        "End of the Project Gutenberg Etext of Old Tales\n"
    )
    out, counts = clean_book(raw, ALL_ON)
    assert out == "Once upon a time there was a king."
    assert counts["gutenberg_markers"] == 2 and counts["gutenberg_header_unmarked"] == 0


def test_header_without_start_marker_is_reported_and_kept() -> None:
    raw = "The Project Gutenberg EBook of Old Tales\n\nTitle: Old Tales\n\nOnce upon a time there was a king.\n"
    out, counts = clean_book(raw, ALL_ON)
    assert counts["gutenberg_header_unmarked"] == 1 and counts["gutenberg_boilerplate_chars"] == 0
    assert out == raw.strip()
    assert clean_book("Once upon a time.", ALL_ON)[1]["gutenberg_header_unmarked"] == 0


def test_gutenberg_header_fields() -> None:
    fields = gutenberg_header(BOOK.raw)
    assert fields["title"] == "The Lighthouse Keeper A Tale of the Northern Coast"
    assert fields["author"] == "Margaret Hale" and fields["language"] == "English"
    assert fields["release_date"] == "March 3, 2005" and fields["ebook_number"] == "15123"
    assert fields["license"] == "Project Gutenberg License"
    assert gutenberg_header("Title: not a Gutenberg file\n\ntext") == {}


# -- single rules on small texts -----------------------------------------------------------------------------
def numbered(numbers: list[int], lines_between: int) -> str:
    """Number lines, each followed by a paragraph of `lines_between` hard-wrapped lines."""
    paragraph = textwrap.fill("word " * (14 * lines_between), 70)
    return "\n\n".join(f"{n}\n\n{paragraph}" for n in numbers)


@pytest.mark.parametrize(
    "text",
    [
        numbered([1, 2, 3, 4, 5], 3),  # a numbered list: too close together for pages
        numbered([1, 2, 3, 4], 200),  # bare chapter numbers: too far apart
        numbered([7, 3, 12, 5, 9], 20),  # a page apart, but not counting up
    ],
)
def test_numbers_in_an_unpaginated_text_stay(text: str) -> None:
    out, counts = clean_book(text, ALL_ON)
    assert counts["page_numbers"] == 0
    assert [p for p in out.split("\n\n") if p.isdigit()] == [p for p in text.split("\n\n") if p.isdigit()]


def test_dialogue_opening_pages_is_no_running_header() -> None:
    line = "x" * 66
    pages = [f'"Yes."\n{line}\n{line}\n"Yes."\n{line} {chr(97 + n)}.' for n in range(5)]
    out, counts = clean_book("\f".join(pages), ALL_ON)
    assert counts["running_headers"] == 0 and out.count('"Yes."') == 10
    assert counts["form_feeds"] == 4


def test_with_form_feeds_only_numbers_at_a_page_edge_are_page_numbers() -> None:
    line = "A line of the body text that is long enough to count as prose, ok"
    pages = [f"{n}\n{line} {n}a\n{line} {n}b\n\n42\n\n{line} {n}c.\n{line} {n}d\n- {n} -" for n in range(1, 6)]
    out, counts = clean_book("\f".join(pages), ALL_ON)
    assert counts["page_numbers"] == 2 * 5 and out.count("\n42\n") == 5


def test_running_header_with_page_numbers_at_either_end() -> None:
    bodies = [f"A line of the body text, part {chr(97 + n)}, long enough to count as prose." for n in range(7)]
    pages = [
        f"{n} THE HISTORY OF ENGLAND\n\n{body}" if n % 2 else f"THE HISTORY OF ENGLAND {n}\n\n{body}"
        for n, body in enumerate(bodies, 1)
    ]
    out, counts = clean_book("TITLE PAGE\f" + "\f".join(pages), ALL_ON)
    assert counts["running_headers"] == 7 and "ENGLAND" not in out
    assert out == "\n\n".join(["TITLE PAGE", *bodies])


def test_capitalised_verse_with_long_lines_stays_but_capitalised_prose_reflows() -> None:
    prose_line = "Those words were written in the margin of a letter from his brother, and"
    assert len(prose_line) >= 70
    filler = "\n\n".join(textwrap.fill("word " * 40, 70) for _ in range(3))
    verse = (  # "And" would have fitted on the first line: no greedy wrap broke it there
        "I celebrate myself, and sing myself, and what I assume you shall\n"
        "And what I assume you shall assume\n"
        "For every atom belonging to me as good belongs to you."
    )
    prose_text = (
        f"{prose_line}\nMr. Bennet would have read them with a smile if he had seen them there\nIn the morning."
    )
    out, counts = clean_book(f"{filler}\n\n{verse}\n\n{prose_text}", ALL_ON)
    assert verse in out
    assert prose_text.replace("\n", " ") in out
    assert counts["reflowed_lines"] == 3 * 2 + 2  # the filler paragraphs and the prose, nothing of the verse


def test_lists_indented_lines_and_tables_keep_their_lines() -> None:
    filler = "\n\n".join(textwrap.fill("word " * 40, 70) for _ in range(3))
    items = "- the first item of a list, which is long enough to fill a whole line\n- the second item of that list"
    table = (  # lines as long as prose: only the columns tell it is a table
        "Vessel and master         Tonnage    Crew    Port of registry\n"
        "Brig Hope, J. Tregear        180       8    Riga"
    )
    indented = "The keeper wrote in the journal, on a line long enough to fill it, that\n    the sea was rising."
    verse = (  # lower-case verse, one line as long as prose: most of its lines are short
        "the sea is grey\nand the gulls cry over the rock where the keeper walks at the turn of the tide\n"
        "and the lamp\nwaits for the dark"
    )
    out, counts = clean_book(f"{filler}\n\n{items}\n\n{table}\n\n{indented}\n\n{verse}", ALL_ON)
    assert (
        items in out
        and "Vessel and master Tonnage Crew Port of registry\nBrig Hope, J. Tregear 180 8 Riga" in out
        and indented in out
        and verse in out
    )
    assert counts["reflowed_lines"] == 3 * 2


def test_whitespace_counts() -> None:
    out, counts = clean_book("\n\na  b\t c   \n\n\n\n   indented  d  \n\n", BookCleanConfig(False, False, False, False))
    assert out == "a b c\n\n   indented d"
    assert counts["spaces_collapsed"] == 5  # two inner runs, one more in the indented line, two trailing
    assert counts["blank_lines_removed"] == 2 + 2 + 1  # inside, leading, trailing


def test_pathological_inputs_stay_linear() -> None:
    texts = [
        ("x" * 1_000_000) + "-\nend",
        "a" + " " * 1_000_000 + "b",
        "\n".join(["1"] * 100_000),
        "ab-\n" * 100_000,
        ("x" * 500_000 + ".y-\nz ") * 2,
        ("word " * 13 + "exam-\nple ") * 20_000,
        "\f".join([f"HEADER\n{'text ' * 14}\n{n}" for n in range(10_000)]),
    ]
    for text in texts:  # about a second at most each; a quadratic step would take hours
        started = time.perf_counter()
        clean_book(text, ALL_ON)
        assert time.perf_counter() - started < 3, text[:30]


# -- readers ------------------------------------------------------------------------------------------------
MAX = 1_000_000


def read_all(path: Path, max_bytes: int = MAX) -> list[DocumentRecord | InputProblem]:
    items = list(read_input(str(path), max_bytes))
    assert all(isinstance(i, DocumentRecord) or i.reason in DROP_REASONS for i in items)
    return items


def reasons(items: list) -> list[str | None]:
    return [i.reason if isinstance(i, InputProblem) else None for i in items]


def test_list_inputs(tmp_path: Path) -> None:
    for name in [
        "b/book.txt", "b/book.json", "a.jsonl", "a.jsonl.gz", "c.parquet", "d.txt.gz", "manifest.json",
        "_SUCCESS", ".a.jsonl.crc", ".draft.txt", "_common_metadata.parquet", "notes.csv", "_tmp/x.jsonl", ".git/y.txt",
    ]:  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    expected = ["a.jsonl", "a.jsonl.gz", "b/book.txt", "c.parquet", "d.txt.gz"]
    assert list_inputs(str(tmp_path)) == [str(tmp_path / n) for n in expected]
    assert list_inputs(str(tmp_path / "a.jsonl")) == [str(tmp_path / "a.jsonl")]
    with pytest.raises(FileNotFoundError):
        list_inputs(str(tmp_path / "missing"))


def test_jsonl_with_metadata_and_bad_lines(tmp_path: Path) -> None:
    rows = [
        {"text": "First book.", "title": "One", "author": ["A. Writer", "B. Writer"], "license": "CC0",
         "url": "https://example.org/1", "lang": "en", "year": 1850, "id": "b1"},
        "not json {",
        [1, 2],
        {"title": "no text"},
        {"content": "Second book.", "source_url": "https://example.org/2", "language": "fr"},
        {"text": "  \n "},
        {"body": "Third book.", "origin": "a shelf", "text": None},
    ]  # fmt: skip
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n\n")
    items = read_all(path)
    assert reasons(items) == [None, "bad_row", "bad_row", "bad_row", None, "empty", None]
    first = items[0]
    assert first == DocumentRecord(
        origin=f"{path}:1", title="One", author="A. Writer; B. Writer", license="CC0",
        origin_url="https://example.org/1", language="en", text="First book.", extra={"year": "1850", "id": "b1"},
    )  # fmt: skip
    assert (items[4].text, items[4].origin_url, items[4].language, items[4].title) == (
        "Second book.", "https://example.org/2", "fr", None,
    )  # fmt: skip
    assert items[6].text == "Third book." and items[6].origin_url == "a shelf" and items[6].origin == f"{path}:7"


def test_jsonl_line_limits_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    big = json.dumps({"text": "x" * 5000}).encode()
    path.write_bytes(b"\n".join([big, b'{"text": "small"}', b'{"text": "caf\xe9"}', b'{"text": "\\ud800 lone"}']))
    assert reasons(read_all(path, max_bytes=1000)) == ["too_large", None, "invalid_encoding", "invalid_encoding"]


def test_truncated_gzip_keeps_the_rows_before_the_damage(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = [json.dumps({"text": " ".join(rng.choice(["sea", "rock", "light", "ship"]) for _ in range(60)), "n": n})
             for n in range(400)]  # fmt: skip
    data = gzip.compress("\n".join(lines).encode())
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    items = read_all(path)
    assert items[-1].reason == "corrupt_file" and items[-1].origin == str(path)
    good = items[:-1]
    assert 50 < len(good) < 400
    assert [d.extra["n"] for d in good] == [str(n) for n in range(len(good))]
    path.write_bytes(data)
    assert reasons(read_all(path)) == [None] * 400
    (tmp_path / "junk.jsonl.gz").write_bytes(b"not gzip at all")
    assert reasons(read_all(tmp_path / "junk.jsonl.gz")) == ["corrupt_file"]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    table = pa.table({
        "text": ["A book.", None, "", "y" * 3000],
        "content": [None, "Another.", None, None],
        "title": ["T1", "T2", None, None],
        "source_url": ["https://example.org/p", None, None, None],
        "pages": [10, 20, None, 5],
    })  # fmt: skip
    pq.write_table(table, path, row_group_size=2)
    items = read_all(path, max_bytes=1000)
    assert reasons(items) == [None, None, "empty", "too_large"]
    assert items[0] == DocumentRecord(
        f"{path}#0", "T1", None, None, "https://example.org/p", None, "A book.", {"pages": "10"}
    )
    assert items[1].text == "Another." and items[1].origin == f"{path}#1"
    pq.write_table(pa.table({"words": ["no text column"]}), tmp_path / "other.parquet")
    assert reasons(read_all(tmp_path / "other.parquet")) == ["bad_row"]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    assert reasons(read_all(tmp_path / "broken.parquet")) == ["corrupt_file"]


def test_text_file_with_sidecar(tmp_path: Path) -> None:
    (tmp_path / "guide.txt").write_text("The guide's text.\n")
    (tmp_path / "guide.json").write_text(json.dumps({
        "title": "A Guide", "author": "J. Rodin", "license": "GPL-2.0-or-later",
        "origin": "Debian package maint-guide", "language": "en", "version": "1.2",
    }))  # fmt: skip
    [doc] = read_all(tmp_path / "guide.txt")
    assert doc == DocumentRecord(
        str(tmp_path / "guide.txt"), "A Guide", "J. Rodin", "GPL-2.0-or-later", "Debian package maint-guide", "en",
        "The guide's text.\n", {"version": "1.2"},
    )  # fmt: skip


def test_text_file_with_gutenberg_header(tmp_path: Path) -> None:
    path = tmp_path / "pg15123.txt.gz"
    path.write_bytes(gzip.compress(BOOK.raw.encode()))
    [doc] = read_all(path)
    assert (doc.title, doc.author, doc.language, doc.license) == (
        "The Lighthouse Keeper A Tale of the Northern Coast", "Margaret Hale", "English", "Project Gutenberg License",
    )  # fmt: skip
    assert doc.extra["ebook_number"] == "15123" and doc.text == BOOK.raw and doc.origin_url is None
    (tmp_path / "pg15123.json").write_text(
        '{"title": "The Keeper", "origin": "https://www.gutenberg.org/ebooks/15123"}'
    )
    [doc] = read_all(path)
    assert (doc.title, doc.author, doc.origin_url) == (  # the sidecar wins field by field
        "The Keeper", "Margaret Hale", "https://www.gutenberg.org/ebooks/15123",
    )  # fmt: skip
    (tmp_path / "pg15123.json").write_text("{broken")
    [doc] = read_all(path)
    assert doc.extra["notes"] == "invalid_sidecar" and doc.author == "Margaret Hale"


def test_plain_text_file_is_titled_by_its_name(tmp_path: Path) -> None:
    (tmp_path / "the_sea.txt").write_text("Waves.")
    [doc] = read_all(tmp_path / "the_sea.txt")
    assert doc.title == "the_sea" and doc.author is None and doc.extra == {}
    (tmp_path / "the_sea.txt.json").write_text('{"author": "Anon."}')  # the sidecar may keep the suffix
    [doc] = read_all(tmp_path / "the_sea.txt")
    assert doc.title == "the_sea" and doc.author == "Anon."


def test_text_file_problems(tmp_path: Path) -> None:
    files = {
        "empty.txt": b"",
        "blank.txt": b" \n\n\t \r\n",
        "binary.txt": random.Random(7).randbytes(900),
        "controls.txt": b"valid UTF-8, but \x01\x02\x03\x1b[0m terminal codes" * 20,
        "cyrillic.txt": "Привет, мир. Это старый файл в кодировке windows-1251.".encode("cp1251"),
        "big.txt": b"x" * 2000,
        "big.txt.gz": gzip.compress(b"x" * 2000),
        "broken.txt.gz": b"\x1f\x8b\x08\x00 not really",
        "utf16.txt": "\ufeffA UTF-16 book.".encode("utf-16-le"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    got = {name: reasons(read_all(tmp_path / name, max_bytes=1000)) for name in files}
    assert got == {
        "empty.txt": ["empty"],
        "blank.txt": ["empty"],
        "binary.txt": ["invalid_encoding"],
        "controls.txt": ["invalid_encoding"],
        "cyrillic.txt": ["invalid_encoding"],
        "big.txt": ["too_large"],
        "big.txt.gz": ["too_large"],
        "broken.txt.gz": ["corrupt_file"],
        "utf16.txt": [None],
    }
    assert read_all(tmp_path / "utf16.txt")[0].text == "A UTF-16 book."


def test_cp1252_book_is_decoded_with_a_note(tmp_path: Path) -> None:
    text = "The caf\u00e9 on the quay \u2014 \u201cna\u00efve\u201d, he said \u2014 cost 5 \u20ac a night.\n" * 20
    (tmp_path / "old.txt").write_bytes(text.encode("cp1252"))
    [doc] = read_all(tmp_path / "old.txt")
    assert doc.text == text and doc.extra["notes"] == "decoded_cp1252" and "decoded_cp1252" in NOTES
    assert decode_text(text.encode("utf-8")) == (text, "")
    assert decode_text("\ufeffBOM".encode()) == ("BOM", "")


def test_unsupported_file(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b")
    assert reasons(read_all(tmp_path / "x.csv")) == ["unsupported_file"]
