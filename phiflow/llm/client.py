"""The backend-independent half of every client: cache look-up, de-duplication, counters.

A backend only implements `_generate(requests)`, yielding `(index, ChatResult)` as each request
finishes. Each result is cached the moment it arrives, so a call that fails half-way has still
paid once for everything that finished, and the retry (or the Spark task's re-attempt) picks up
from there.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator

from phiflow.llm.cache import ChatCache
from phiflow.llm.types import ChatRequest, ChatResult, LLMConfig, LLMError

log = logging.getLogger("phiflow.llm")


class LLMClient:
    """Chat completions with a persistent cache in front of a backend."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self.cache = ChatCache(config.cache_dir) if config.cache_dir else None
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.config.model

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Answer every request, in order. Identical requests in one call are generated once."""
        keys = [r.key(self.model) for r in requests]
        results: dict[str, ChatResult] = {}
        for key in dict.fromkeys(keys):
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                results[key] = hit
        todo = [k for k in dict.fromkeys(keys) if k not in results]
        first = {k: requests[keys.index(k)] for k in todo}
        self._count(requests=len(requests), cache_hits=sum(1 for k in keys if k in results))
        if todo:
            errors: list[BaseException] = []
            for i, res in self._guarded(list(first.values()), errors):
                key = todo[i]
                if len(res.texts) != first[key].n:
                    raise LLMError(f"backend returned {len(res.texts)} samples, expected {first[key].n}")
                if self.cache:
                    self.cache.put(key, res)
                results[key] = res
                self._count(generated=1, prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens)
            if errors:
                raise errors[0]
        return [results[k] for k in keys]

    def _guarded(self, requests: list[ChatRequest], errors: list[BaseException]) -> Iterator[tuple[int, ChatResult]]:
        """The backend's results; a failure is kept for the end so finished work still gets cached."""
        try:
            yield from self._generate(requests)
        except LLMError as err:
            errors.append(err)

    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        raise NotImplementedError

    def _count(self, **counts: int) -> None:
        with self._lock:
            self.stats.update(counts)

    def close(self) -> None:
        """Release connections or engines (a no-op for backends that hold none)."""
