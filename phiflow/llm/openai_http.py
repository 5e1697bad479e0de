"""OpenAI-compatible chat completions over HTTP (vLLM, SGLang, TGI, hosted APIs).

Requests run `max_concurrency` at a time on one pooled connection set. `timeout_s` bounds each
whole request (a server trickling its answer byte by byte does not hold a call past it). Transient
failures (timeouts, dropped or truncated responses, malformed JSON, 408/409/429/5xx) are retried
with exponential backoff and jitter, honouring `Retry-After` up to `max_retry_after_s`; other 4xx
fail at once. Error texts name the endpoint without its credentials. Servers that
return fewer than `n` choices are topped up with further requests (seed advanced by the count
already received), so `n` samples are always `n` samples.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from phiflow.llm.client import LLMClient
from phiflow.llm.secrets import Endpoint, resolve_endpoint
from phiflow.llm.types import ChatRequest, ChatResult, LLMConfig, LLMError

log = logging.getLogger("phiflow.llm")

RETRY_STATUSES = {408, 409, 429}


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.delay = reason, delay


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIClient(LLMClient):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config)
        self._endpoint: Endpoint | None = None
        self._http: httpx.Client | None = None

    def _connect(self) -> tuple[Endpoint, httpx.Client]:
        """The key is looked up on first use only, so building a client never needs it."""
        if self._http is None:
            self._endpoint = resolve_endpoint(self.config)
            limits = httpx.Limits(max_connections=self.config.max_concurrency)
            self._http = httpx.Client(timeout=self.config.timeout_s, limits=limits)
        assert self._endpoint is not None
        return self._endpoint, self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        self._connect()
        first_error: LLMError | None = None
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(requests))) as pool:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except LLMError as err:
                    first_error = first_error or err
                    continue
                yield futures[fut], res
        if first_error is not None:
            raise first_error

    def _one(self, req: ChatRequest) -> ChatResult:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = completion_tokens = 0
        while len(texts) < req.n:
            body = self._complete(self._payload(req, n=req.n - len(texts), seed=req.seed + len(texts)))
            choices = body["choices"][: req.n - len(texts)]
            texts += [c["message"]["content"] or "" for c in choices]
            reasons += [c.get("finish_reason") or "" for c in choices]
            usage = body.get("usage") or {}
            prompt_tokens += int(usage.get("prompt_tokens") or 0)
            completion_tokens += int(usage.get("completion_tokens") or 0)
        return ChatResult(
            texts=texts, model=self.model, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, finish_reasons=reasons,
        )

    def _payload(self, req: ChatRequest, n: int, seed: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model, "messages": req.messages, "temperature": req.temperature,
            "top_p": req.top_p, "max_tokens": req.max_tokens, "seed": seed, "n": n,
        }
        if req.stop:
            payload["stop"] = req.stop
        return payload

    def _complete(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One completion, retried; returns the parsed body with at least one choice."""
        endpoint, http = self._connect()
        url = f"{endpoint.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {endpoint.api_key.reveal()}"} if endpoint.api_key else {}
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            try:
                return self._attempt(http, url, headers, payload, endpoint)
            except _Retry as r:
                if attempt == cfg.max_retries:
                    raise LLMError(f"{endpoint.public_url}/chat/completions: gave up after {attempt + 1} attempts, "
                                   f"last: {r.reason}") from None
                backoff = min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                delay = min(cfg.max_retry_after_s, r.delay) if r.delay is not None else backoff
                self._count(retries=1)
                log.warning("llm: %s; retry %d/%d in %.2f s", r.reason, attempt + 1, cfg.max_retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, http: httpx.Client, url: str, headers: dict[str, str], payload: dict[str, Any],
                 endpoint: Endpoint) -> dict[str, Any]:
        status, retry_header, raw = _bounded(self.config.timeout_s, _post, http, url, headers, payload,
                                             time.monotonic() + self.config.timeout_s)
        if status in RETRY_STATUSES or status >= 500:
            raise _Retry(f"HTTP {status}", retry_after(retry_header))
        if status != 200:
            text = raw[:300].decode("utf-8", "replace")
            raise LLMError(f"{endpoint.public_url}/chat/completions: HTTP {status}: {endpoint.redact(text)}")
        try:
            body = json.loads(raw)
            for c in body["choices"]:
                if not isinstance(c["message"]["content"], str | None):
                    raise TypeError("content")
            if not body["choices"]:
                raise ValueError("no choices")
        except (ValueError, KeyError, TypeError, IndexError):
            raise _Retry("malformed response") from None
        return body


def _post(http: httpx.Client, url: str, headers: dict[str, str], payload: dict[str, Any],
          deadline: float) -> tuple[int, str | None, bytes]:
    """POST and read the whole body, giving up at `deadline` even while bytes keep arriving."""
    try:
        with http.stream("POST", url, json=payload, headers=headers,
                         timeout=max(0.001, deadline - time.monotonic())) as resp:
            chunks = []
            for chunk in resp.iter_bytes():
                if time.monotonic() > deadline:
                    raise _Retry("timeout (the response was still arriving)")
                chunks.append(chunk)
            return resp.status_code, resp.headers.get("retry-after"), b"".join(chunks)
    except httpx.TimeoutException:
        raise _Retry("timeout") from None
    except httpx.TransportError as err:  # refused, reset, truncated body (RemoteProtocolError)
        raise _Retry(f"transport error ({type(err).__name__})") from None


def _bounded(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a daemon thread, abandoned after `seconds`: httpx has no whole-request timeout,
    and a server trickling its status line or headers is not interrupted by `_post`'s deadline."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True, name="llm-request")
    worker.start()
    worker.join(seconds + 0.5)  # _post's own deadline usually fires first; this is the backstop
    if worker.is_alive():
        raise _Retry(f"timeout (no whole response within {seconds:g} s)")
    if "error" in box:
        raise box["error"]
    return box["value"]
