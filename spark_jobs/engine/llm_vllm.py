"""vLLM's offline batch engine, for GPU workers. vllm is imported only when this backend is used
(and only there: it pulls CUDA torch); the engine is built once per worker process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from phiflow.llm.client import LLMClient
from phiflow.llm.types import ChatRequest, ChatResult, LLMError

_ENGINES: dict[str, Any] = {}
_LOCK = threading.Lock()


def load_engine(model: str, engine_args: dict[str, Any]) -> Any:
    with _LOCK:
        if model not in _ENGINES:
            try:
                from vllm import LLM
            except ImportError as err:
                raise LLMError(f"the vllm backend needs vllm installed on this worker ({err})") from None
            _ENGINES[model] = LLM(model=model, **engine_args)
        return _ENGINES[model]


class VLLMClient(LLMClient):
    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        engine = load_engine(self.config.model_path or self.config.model, dict(self.config.engine_args))
        from vllm import SamplingParams

        for start in range(0, len(requests), self.config.batch_size * 16):
            chunk = requests[start : start + self.config.batch_size * 16]
            params = [
                SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                               seed=r.seed, stop=r.stop)
                for r in chunk
            ]
            outputs = engine.chat([r.messages for r in chunk], sampling_params=params, use_tqdm=False)
            for i, out in enumerate(outputs):
                yield start + i, ChatResult(
                    texts=[c.text for c in out.outputs], model=self.model,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=sum(len(c.token_ids) for c in out.outputs),
                    finish_reasons=[c.finish_reason or "" for c in out.outputs],
                )
