"""The per-column langid logic without Spark: Arrow-side text preparation equals the per-string one,
and the drop rules name their reasons."""

from __future__ import annotations

import pyarrow as pa

from phiflow.recipe import LangidParams
from phiflow.records.langid_model import default_model_path, heads, langid_columns, prepare


def test_heads_match_prepare() -> None:
    texts = ["line one\nline two\r\nthree" * 50, None, "", "日本語のテキスト\n" * 10, "é" * 30]
    for n in (1, 7, 100, 10_000):
        assert heads(pa.array(texts, pa.string()), n) == [prepare(t, n) for t in texts]


def test_texts_get_language_score_and_reasons() -> None:
    texts = pa.array(
        [
            "Ceci est une phrase écrite en français, assez longue pour être reconnue.",
            "This is an English sentence that is long enough to be recognised.",
            None,
        ]
    )
    rows = langid_columns(texts, LangidParams(keep_languages=["fr"], min_score=0.3), default_model_path()).to_pylist()
    assert [r["language"] for r in rows[:2]] == ["fr", "en"]
    assert rows[0]["language_score"] > 0.3 and rows[0]["drop_reason"] is None
    assert rows[1]["drop_reason"] == "language_not_kept"
    assert rows[2]["drop_reason"] == "langid_low_score"  # an empty text gets no confident language
