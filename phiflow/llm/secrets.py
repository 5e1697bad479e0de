"""Where an API key comes from (environment variable or Airflow connection), and how it stays out
of logs: it lives in a `Secret` whose repr is a mask, and error texts pass through `redact`."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from phiflow.llm.types import LLMConfig, LLMError

MASK = "***"


class Secret:
    """A string that never prints itself (repr, str, f-strings and tracebacks show the mask)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__


@dataclass
class Endpoint:
    base_url: str  # may carry credentials (https://user:token@host/v1?key=...): never print it
    api_key: Secret | None

    @property
    def public_url(self) -> str:
        """The base URL without user info, query or fragment: what error texts and logs may show."""
        return public_url(self.base_url)

    def redact(self, text: str) -> str:
        """`text` with the key, the URL's credentials and its query replaced by the mask."""
        if self.base_url != self.public_url:
            text = text.replace(self.base_url, self.public_url)
        parts = urlsplit(self.base_url)
        basic = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode() if parts.password else ""
        secrets = [self.api_key.reveal() if self.api_key else "", parts.password or "", basic, parts.query]
        for secret in sorted(filter(None, secrets), key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


def public_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _airflow_connection(conn_id: str):  # -> airflow Connection
    """Airflow is looked up only here, only when a recipe names a connection (phiflow/ never
    imports it at module level: Spark executors and the CLI run without it)."""
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        try:
            from airflow.hooks.base import BaseHook  # Airflow 2
        except ImportError:
            raise LLMError(f"llm.api_key_conn_id={conn_id!r} needs Airflow, which is not installed here") from None
    try:
        return BaseHook.get_connection(conn_id)
    except Exception as err:  # the hook's own errors do not carry secrets, only the id
        raise LLMError(f"Airflow connection {conn_id!r} not found ({type(err).__name__})") from None


def resolve_endpoint(config: LLMConfig) -> Endpoint:
    """Base URL and key of an OpenAI-compatible server from the config, env and Airflow."""
    key: str | None = None
    base_url = config.base_url
    if config.api_key_conn_id:
        conn = _airflow_connection(config.api_key_conn_id)
        key = conn.password or None
        if base_url is None and conn.host:
            host = conn.host if "://" in conn.host else f"http://{conn.host}"
            base_url = f"{host}:{conn.port}" if conn.port else host
    if config.api_key_env:
        if config.api_key_env not in os.environ:
            raise LLMError(f"llm.api_key_env: environment variable {config.api_key_env} is not set")
        key = os.environ[config.api_key_env]
    if not base_url:
        raise LLMError("llm.base_url is required for the openai backend (or a connection with a host)")
    return Endpoint(base_url=base_url.rstrip("/"), api_key=Secret(key) if key else None)
