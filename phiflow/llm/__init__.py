"""One LLM interface for every synthesis and annotation stage.

    from phiflow.llm import LLMConfig, ChatRequest
    from spark_jobs.engine.llm_clients import make_client
    client = make_client(LLMConfig(backend="openai", model="m", base_url="http://host/v1", api_key_env="KEY"))
    [res] = client.chat([ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=64)])
    res.texts, res.cached, res.model, res.prompt_tokens, res.completion_tokens

Backends: `openai` (any OpenAI-compatible server, phiflow.llm.openai_http), `offline` (SmolLM2 on CPU,
the embedded default) and `vllm` (offline engine on GPUs); the two that run a model in-process need
torch, so they live with the executors (spark_jobs/engine/), and make_client is there.
"""

from __future__ import annotations

from phiflow.llm.client import LLMClient
from phiflow.llm.types import ChatRequest, ChatResult, LLMConfig, LLMError

__all__ = ["ChatRequest", "ChatResult", "LLMClient", "LLMConfig", "LLMError"]
