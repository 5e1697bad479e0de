"""The per-batch langid logic without Spark: Arrow-side text preparation equals the per-string one,
and the drop rules name their reasons."""

from __future__ import annotations

import pyarrow as pa

from phiflow.recipe import LangidParams
from spark_jobs.langid_model import default_model_path, heads, langid_batch, prepare


def test_heads_match_prepare() -> None:
    texts = ["line one\nline two\r\nthree" * 50, None, "", "日本語のテキスト\n" * 10, "é" * 30]
    for n in (1, 7, 100, 10_000):
        assert heads(pa.array(texts, pa.string()), n) == [prepare(t, n) for t in texts]


def test_batch_gets_language_score_and_reasons() -> None:
    batch = pa.RecordBatch.from_pylist(
        [
            {"doc_id": "a", "text": "Ceci est une phrase écrite en français, assez longue pour être reconnue."},
            {"doc_id": "b", "text": "This is an English sentence that is long enough to be recognised."},
            {"doc_id": "c", "text": None},
        ]
    )
    out = langid_batch(batch, LangidParams(keep_languages=["fr"], min_score=0.3), default_model_path())
    rows = out.to_pylist()
    assert [r["language"] for r in rows[:2]] == ["fr", "en"]
    assert rows[0]["drop_reason"] is None and rows[1]["drop_reason"] == "language_not_kept"
    assert rows[2]["drop_reason"] == "langid_low_score"  # an empty text gets no confident language
    assert out.schema.names[:2] == ["doc_id", "text"]  # input columns pass through untouched
