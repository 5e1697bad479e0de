"""LLM annotation of documents for the quality classifiers: the sample, the prompt, the answer (pure).

The Phi-4 report trains its web filters on LLM judgements of educational value and topic. Small
models (SmolLM2 on CPU, `max_tokens` of 8) answer loosely ("Grade: 4\nTopic: history",
"4, History.", "**Grade:** 3/5 ... stem"), so the parser accepts the grade digit and the topic word
in any of these shapes; anything else is a counted drop reason, never a guessed label.
"""

from __future__ import annotations

import hashlib
import re

# Drop reasons (manifest counters of quality_annotate).
UNPARSEABLE = "annotation_unparseable"  # no grade in the answer
GRADE_OUT_OF_RANGE = "annotation_grade_out_of_range"  # a grade, but not 0-5
UNKNOWN_TOPIC = "annotation_unknown_topic"  # no word of the recipe's topic list

# Words small models use for the report's STEM category; mapped only when "stem" is a topic.
STEM_WORDS = frozenset(
    {"science", "sciences", "math", "mathematics", "technology", "engineering", "programming", "computing"}
)
_NUMBER = r"(\d+)(?!\.?\d)(?!\w)"  # a whole number: not 3.5, not 4th
_LABELLED_GRADE = re.compile(r"(?:grade|score|value|rating)\W{0,6}" + _NUMBER)
_FIRST_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER)
_LABELLED_TOPIC = re.compile(r"(?:topic|category|subject)\W{0,6}([a-z]+)")
_WORD = re.compile(r"[a-z]+")


def sample_rank(doc_id: str, seed: int) -> int:
    """The document's place in the seeded sample order: the lowest ranks are annotated. A hash of
    doc_id alone, so the sample does not depend on partitioning or file order."""
    h = hashlib.blake2b(f"annotate\x1f{seed}\x1f{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big", signed=True)  # fits Spark's LongType


def excerpt(text: str | None, max_chars: int) -> str:
    """The document's head, cut at a word boundary when there is one near the limit."""
    text = (text or "").strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ", max_chars * 3 // 4)
    return cut[:space] if space > 0 else cut


def messages(text: str, topics: list[str], kind: str = "text") -> list[dict[str, str]]:
    """A short instruction (the answer must fit in a few tokens) and the excerpt. Code is graded for
    what it teaches a programmer, in the answer shape text uses, so one parser reads both."""
    if kind == "code":
        rate = ("You rate source files as training data for a student model that learns to program. Grade the "
                "educational value from 0 (none: generated, data tables, boilerplate, configuration) to 5 "
                "(excellent: clear, well-documented code that teaches a concept or algorithm), and ")
        label = "Source file"
    else:
        rate = ("You rate web documents as training data for a student model. Grade the educational value from 0 "
                "(none: spam, navigation, ads) to 5 (excellent: clear, correct, textbook-like explanations), and ")
        label = "Document"
    shape = "Answer in exactly this form:\nGrade: <0-5>\nTopic: <topic>"
    system = rate + f"name the topic, one of: {', '.join(topics)}. {shape}"
    return [{"role": "system", "content": system}, {"role": "user", "content": f"{label}:\n{text}"}]


def parse_grade(answer: str) -> int | str:
    """The grade (0-5), or the drop reason."""
    m = _LABELLED_GRADE.search(answer) or _FIRST_NUMBER.search(answer)
    if not m:
        return UNPARSEABLE
    grade = int(m.group(1))
    return grade if 0 <= grade <= 5 else GRADE_OUT_OF_RANGE


def parse_topic(answer: str, topics: list[str]) -> str | None:
    """The labelled topic word if the answer labels one, else the first topic word it contains."""
    known = {t.lower(): t for t in topics}

    def lookup(word: str) -> str | None:
        if word in known:
            return known[word]
        if word.rstrip("s") in known:
            return known[word.rstrip("s")]
        return known.get("stem") if word in STEM_WORDS else None

    m = _LABELLED_TOPIC.search(answer)
    if m and (t := lookup(m.group(1))):
        return t
    for word in _WORD.findall(answer):
        if word not in ("grade", "topic") and (t := lookup(word)):
            return t
    return None


def parse_answer(answer: str | None, topics: list[str]) -> tuple[int | None, str | None, str | None]:
    """(grade, topic, None) for a usable answer, else (None, None, drop reason)."""
    text = (answer or "").lower()
    grade = parse_grade(text)
    if isinstance(grade, str):
        return None, None, grade
    topic = parse_topic(text, topics)
    if topic is None:
        return None, None, UNKNOWN_TOPIC
    return grade, topic, None
