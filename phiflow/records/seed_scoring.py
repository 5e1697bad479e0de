"""Seed curation per page (pure): score the page's educational potential, cut it into passages,
score each passage, and turn doctest/`def` passages into code seeds. Phi-4 (2.2) filters seeds in
two stages like this; the scores are transparent heuristics here, and an upstream classifier score
(the quality stage's) replaces the page heuristic when the recipe names its column."""

from __future__ import annotations

import ast
import re
from typing import Any

from phiflow.ids import doc_id
from phiflow.recipe import SeedSelectParams

# Every reason a page or passage is not a seed: the stage counts them while it writes (no cache).
DROP_REASONS = ("seed_language", "seed_page_score_low", "seed_passage_short", "seed_passage_score_low",
                "seed_code_language", "seed_code_block_long")
EDU_TERMS = re.compile(
    r"\b(example|examples|definition|define[sd]?|theorem|proof|exercise|explain[s]?|because|therefore|"
    r"function|returns?|argument|parameter|method|class|equation|formula|algorithm|step|note|"
    r"consider|suppose|value|type|error|result|compute|calculate)\b", re.I)
WORD = re.compile(r"[A-Za-z]{2,}")


def edu_score(text: str) -> float:
    """0..1 from vocabulary of explanation, code or math, and prose-likeness (not menus or lists)."""
    words = WORD.findall(text)
    if len(words) < 20:
        return 0.0
    vocab = min(1.0, len(EDU_TERMS.findall(text)) / len(words) * 25)
    code = 1.0 if (">>>" in text or re.search(r"^\s*(def|class) \w+", text, re.M)) else 0.0
    lines = [ln for ln in text.splitlines() if ln.strip()]
    prose = sum(len(ln) > 60 for ln in lines) / max(1, len(lines))
    alpha = len(" ".join(words)) / max(1, len(text))
    return round(0.45 * vocab + 0.2 * code + 0.2 * prose + 0.15 * min(1.0, alpha / 0.7), 4)


def passages(text: str, size: int) -> list[str]:
    """Paragraph-aligned chunks of about `size` characters (a long paragraph stays whole)."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if cur and len(cur) + len(para) > size:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


def doctest_code(text: str) -> str | None:
    """Runnable code from a passage: `>>>`/`...` lines, else an indented `def`/`class` block; None if
    nothing parses as at least two lines of Python."""
    lines = text.splitlines()
    prompts = [ln.strip()[4:] if ln.strip().startswith((">>> ", "... ")) else None for ln in lines]
    if any(p is not None for p in prompts):
        code = "\n".join(p for p in prompts if p is not None)
    else:
        start = next((i for i, ln in enumerate(lines) if re.match(r"\s*(def|class) \w+", ln)), None)
        if start is None:
            return None
        code = "\n".join(lines[start:])
    try:
        ast.parse(code)
    except SyntaxError:
        return None
    return code if len([ln for ln in code.splitlines() if ln.strip()]) >= 2 else None


def seed_rows(page: dict[str, Any], params: SeedSelectParams) -> list[dict[str, Any]]:
    """Seed rows of one page (with drop_reason on rejected ones; a rejected page gives one row)."""
    text = page.get("text") or ""
    base = {"source": page["source"], "source_uri": page["source_uri"], "parent_ids": [page["doc_id"]],
            "url": page.get("url"), "language": page.get("language")}
    upstream = page.get(params.page_score_column) if params.page_score_column else None
    page_score = float(upstream) if upstream is not None else edu_score(text)
    if params.keep_languages is not None and page.get("language") not in params.keep_languages:
        reason = "seed_language"
    elif page_score < params.min_page_score:
        reason = "seed_page_score_low"
    else:
        reason = None
    if reason:
        return [{**base, "doc_id": doc_id("seed", f"{page['doc_id']}:page"), "kind": "text", "passage_index": -1,
                 "text": "", "page_score": page_score, "passage_score": 0.0, "drop_reason": reason}]
    rows = []
    for i, passage in enumerate(passages(text, params.passage_chars)):
        code = doctest_code(passage)
        score = edu_score(passage)
        if len(passage) < params.min_passage_chars and code is None:
            why = "seed_passage_short"
        elif score < params.min_passage_score:
            why = "seed_passage_score_low"
        else:
            why = None
        rows.append({**base, "doc_id": doc_id("seed", f"{page['doc_id']}:{i}"), "kind": "code" if code else "text",
                     "passage_index": i, "text": code or passage, "page_score": page_score, "passage_score": score,
                     "drop_reason": why})
        if sum(r["drop_reason"] is None for r in rows) >= params.max_passages_per_page:
            break
    return rows


def code_blocks(source: str) -> list[str]:
    """The top-level functions and classes of a Python file, each with its decorators and docstring:
    a unit a programmer could have been asked to write (the instruction-reversal seed)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            out.append("\n".join(lines[start : node.end_lineno]))
    return out


def code_score(block: str) -> float:
    """0..1: documented (docstring, comments), named arguments, some logic; not a stub."""
    try:
        node = ast.parse(block).body[0]
    except (SyntaxError, ValueError, IndexError):
        return 0.0
    documented = 0.4 if ast.get_docstring(node) else 0.0
    comments = min(0.2, 0.05 * sum(ln.strip().startswith("#") for ln in block.splitlines()))
    statements = sum(isinstance(n, ast.stmt) for n in ast.walk(node))
    logic = min(0.4, statements / 20)
    return round(documented + comments + logic, 4)


def code_seed_rows(file: dict[str, Any], params: SeedSelectParams) -> list[dict[str, Any]]:
    """Code seeds of one source file of a code source: its top-level functions and classes."""
    base = {"source": file["source"], "source_uri": file["source_uri"], "parent_ids": [file["doc_id"]],
            "url": file.get("url") or file["source_uri"], "language": file.get("language"), "kind": "code",
            "page_score": 0.0}
    if file.get("language") not in params.code_languages:
        return [{**base, "doc_id": doc_id("seed", f"{file['doc_id']}:page"), "passage_index": -1, "text": "",
                 "passage_score": 0.0, "drop_reason": "seed_code_language"}]
    rows = []
    for i, block in enumerate(code_blocks(file.get("text") or "")):
        score = code_score(block)
        if len(block) < params.min_passage_chars:
            why = "seed_passage_short"
        elif len(block) > 2 * params.passage_chars:
            why = "seed_code_block_long"
        elif score < params.min_passage_score:
            why = "seed_passage_score_low"
        else:
            why = None
        rows.append({**base, "doc_id": doc_id("seed", f"{file['doc_id']}:{i}"), "passage_index": i, "text": block,
                     "passage_score": score, "drop_reason": why})
        if sum(r["drop_reason"] is None for r in rows) >= params.max_passages_per_page:
            break
    return rows
