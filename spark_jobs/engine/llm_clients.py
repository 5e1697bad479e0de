"""The LLM client for a config: the one place that picks a backend.

`openai` is the HTTP client of the core (phiflow.llm.openai_http: any OpenAI-compatible server);
`offline` (SmolLM2 through transformers, the embedded default) and `vllm` (the offline engine on GPUs)
run the model in this process, so they live with the executors that generate, not in the core. Each
backend's heavy imports happen inside it.
"""

from __future__ import annotations

from phiflow.llm import LLMClient, LLMConfig, LLMError


def make_client(config: LLMConfig) -> LLMClient:
    if config.backend == "openai":
        from phiflow.llm.openai_http import OpenAIClient

        return OpenAIClient(config)
    if config.backend == "offline":
        from spark_jobs.engine.llm_offline import OfflineHFClient

        return OfflineHFClient(config)
    if config.backend == "vllm":
        from spark_jobs.engine.llm_vllm import VLLMClient

        return VLLMClient(config)
    raise LLMError(f"unknown llm backend {config.backend!r}")
