"""Per-document quality rules: corruption outliers and Gopher/C4-style heuristics (pure functions).

Each rule is `rule(doc, params) -> None | "reason"` over a `Doc` whose statistics are computed
once; the reason names the rule and the test (`outlier:compression_low`,
`gopher_repetition:dup_line_fraction`). Rules of `HeuristicRules` can be switched off one by one
in the recipe. Thresholds follow Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al. 2020);
word statistics skip languages written without spaces, where whitespace tokens are not words.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from phiflow.recipe import C4Rules, GopherQuality, GopherRepetition, HeuristicRules, OutlierParams

MOJIBAKE_RE = re.compile(
    r"[ÃÂÐÑØÙâÅÄ][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122]"
)
BULLETS = ("-", "*", "•", "‣", "◦", "·", "–")


@dataclass
class Doc:
    text: str
    language: str | None

    @cached_property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.split("\n") if line.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in re.split(r"\n\s*\n", self.text) if p.strip()]

    def spaceless(self, skip: list[str]) -> bool:
        """Written without spaces between words (whitespace tokens are not words)."""
        return (self.language or "").split("_")[0] in skip


# -- outliers (corruption and binary text) ------------------------------------------------
def binary_fraction(text: str) -> float:
    bad = sum(
        1
        for c in text
        if (unicodedata.category(c) in ("Cc", "Co", "Cs", "Cn") and c not in "\n\t\r\f") or c == "\ufffd"
    )
    return bad / max(len(text), 1)


def mojibake_fraction(text: str) -> float:
    """Share of characters in UTF-8-read-as-Latin-1/cp1252 pairs (`Ã©`, `â€™`, `Ð¿`)."""
    return 2 * len(MOJIBAKE_RE.findall(text)) / max(len(text), 1)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(zlib.compress(data, 6)) / max(len(data), 1)


def singleton_bigram_fraction(text: str) -> float:
    """Share of character-bigram occurrences whose bigram occurs once: high for random noise."""
    chars = "".join(text.split())
    counts = Counter(chars[i : i + 2] for i in range(len(chars) - 1))
    total = sum(counts.values())
    return sum(1 for n in counts.values() if n == 1) / max(total, 1)


def outlier_reason(doc: Doc, p: OutlierParams) -> str | None:
    if not p.enabled:
        return None
    if binary_fraction(doc.text) > p.max_binary_fraction:
        return "outlier:binary"
    if mojibake_fraction(doc.text) > p.max_mojibake_fraction:
        return "outlier:mojibake"
    if len(doc.text) < p.min_chars_for_stats:
        return None
    ratio = compression_ratio(doc.text)
    if ratio < p.min_compression_ratio:
        return "outlier:compression_low"
    if ratio > p.max_compression_ratio:
        return "outlier:compression_high"
    if (
        not doc.spaceless(p.ngram_skip_languages)
        and singleton_bigram_fraction(doc.text) > p.max_singleton_bigram_fraction
    ):
        return "outlier:char_ngram_noise"
    return None


# -- Gopher repetition ---------------------------------------------------------------------
def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of their characters)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for item in items:
        if item in seen:
            dup += 1
            dup_chars += len(item)
        seen.add(item)
    return dup / max(len(items), 1), dup_chars / max(sum(len(i) for i in items), 1)


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return sum(len(w) for w in gram) * count / max(sum(len(w) for w in words), 1)


def dup_ngram_char_fraction(words: list[str], n: int) -> float:
    """Share of word characters inside n-grams that occur more than once (each word counted once)."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c) / max(sum(len(w) for w in words), 1)


def gopher_repetition(doc: Doc, p: GopherRepetition, skip: list[str]) -> str | None:
    line_frac, line_chars = _dup_fraction(doc.lines)
    if line_frac > p.max_dup_line_fraction:
        return "gopher_repetition:dup_line_fraction"
    if line_chars > p.max_dup_line_char_fraction:
        return "gopher_repetition:dup_line_char_fraction"
    if _dup_fraction(doc.paragraphs)[0] > p.max_dup_para_fraction:
        return "gopher_repetition:dup_para_fraction"
    if doc.spaceless(skip):  # characters are no words: n-gram tests would flag ordinary prose
        return None
    words = doc.text.split()
    for n, limit in sorted(p.max_top_ngram_char_fraction.items()):
        if top_ngram_char_fraction(words, n) > limit:
            return f"gopher_repetition:top_{n}gram"
    for n, limit in sorted(p.max_dup_ngram_char_fraction.items()):
        if dup_ngram_char_fraction(words, n) > limit:
            return f"gopher_repetition:dup_{n}gram"
    return None


# -- Gopher quality --------------------------------------------------------------------------
def gopher_quality(doc: Doc, p: GopherQuality) -> str | None:
    lines = doc.lines
    if lines and sum(line.startswith(BULLETS) for line in lines) / len(lines) > p.max_bullet_line_fraction:
        return "gopher_quality:bullet_lines"
    if lines and sum(line.endswith(("...", "…")) for line in lines) / len(lines) > p.max_ellipsis_line_fraction:
        return "gopher_quality:ellipsis_lines"
    if doc.spaceless(p.no_space_languages):
        return None
    words = doc.text.split()
    if len(words) < p.min_words:
        return "gopher_quality:too_few_words"
    if len(words) > p.max_words:
        return "gopher_quality:too_many_words"
    mean = sum(len(w) for w in words) / len(words)
    if not p.min_mean_word_length <= mean <= p.max_mean_word_length:
        return "gopher_quality:mean_word_length"
    symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
    if symbols / len(words) > p.max_symbol_word_ratio:
        return "gopher_quality:symbol_ratio"
    if sum(any(c.isalpha() for c in w) for w in words) / len(words) < p.min_alpha_word_fraction:
        return "gopher_quality:alpha_words"
    return None


# -- C4 --------------------------------------------------------------------------------------
def c4(doc: Doc, p: C4Rules) -> str | None:
    low = doc.text.lower()
    if "lorem ipsum" in low:
        return "c4:lorem_ipsum"
    lines = [line.lower() for line in doc.lines]
    if lines:
        boiler = sum(any(ph in line for ph in p.boilerplate_phrases) for line in lines)
        if boiler / len(lines) > p.max_boilerplate_line_fraction:
            return "c4:boilerplate_lines"
        punct = sum(line.endswith((".", "!", "?", '"', "。", "！", "？", "」")) for line in lines)
        if punct / len(lines) < p.min_terminal_punct_line_fraction:
            return "c4:terminal_punct"
    return None


HeuristicRule = Callable[[Doc, HeuristicRules], str | None]
RULES: dict[str, HeuristicRule] = {
    "gopher_repetition": lambda d, r: gopher_repetition(d, r.gopher_repetition, r.gopher_quality.no_space_languages),
    "gopher_quality": lambda d, r: gopher_quality(d, r.gopher_quality),
    "c4": lambda d, r: c4(d, r.c4),
}


def drop_reason(text: str | None, language: str | None, outliers: OutlierParams, rules: HeuristicRules) -> str | None:
    """The first failing test of a document (outliers first), or None to keep it."""
    if not text or not text.strip():
        return "empty"
    doc = Doc(text, language)
    reason = outlier_reason(doc, outliers)
    if reason:
        return reason
    for name, rule in RULES.items():
        if getattr(rules, name).enabled:
            reason = rule(doc, rules)
            if reason:
                return reason
    return None
