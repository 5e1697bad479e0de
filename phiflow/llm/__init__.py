"""One LLM interface for every synthesis and annotation stage.

    from phiflow.llm import LLMConfig, ChatRequest, make_client
    client = make_client(LLMConfig(backend="openai", model="m", base_url="http://host/v1", api_key_env="KEY"))
    [res] = client.chat([ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=64)])
    res.texts, res.cached, res.model, res.prompt_tokens, res.completion_tokens

Backends: `openai` (any OpenAI-compatible server), `offline` (SmolLM2 on CPU, the embedded
default), `vllm` (offline engine on GPUs). Each backend's heavy imports happen inside it.
"""

from __future__ import annotations

from phiflow.llm.client import LLMClient
from phiflow.llm.types import ChatRequest, ChatResult, LLMConfig, LLMError

__all__ = ["ChatRequest", "ChatResult", "LLMClient", "LLMConfig", "LLMError", "make_client"]


def make_client(config: LLMConfig) -> LLMClient:
    if config.backend == "openai":
        from phiflow.llm.openai_http import OpenAIClient

        return OpenAIClient(config)
    if config.backend == "offline":
        from phiflow.llm.offline_hf import OfflineHFClient

        return OfflineHFClient(config)
    if config.backend == "vllm":
        from phiflow.llm.vllm_offline import VLLMClient

        return VLLMClient(config)
    raise LLMError(f"unknown llm backend {config.backend!r}")
