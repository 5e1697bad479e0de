"""Where an API key comes from (environment variable or Airflow connection), and how it stays out
of logs: it lives in a `Secret` whose repr is a mask, and error texts pass through `redact`.

No Airflow here: a connection is read from the environment in Airflow's own format, where the
Airflow task that launched the stage put it (operators/llm_hook.py)."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

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


@dataclass(frozen=True)
class Connection:
    """The fields of an Airflow connection an LLM endpoint needs."""

    host: str | None
    port: int | None
    password: str | None


def connection_env_var(conn_id: str) -> str:
    """Airflow's own environment variable for a connection (`AIRFLOW_CONN_<ID>`)."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def connection_from_env(conn_id: str) -> Connection:
    """A connection in Airflow's environment-variable format (JSON or URI), read without Airflow.

    The core never imports Airflow, so a Spark executor or the CLI reads the connection from its
    environment: an Airflow task exports it there first (operators/llm_hook.py resolves it through
    Airflow's secrets backends), and outside Airflow the user sets the variable as Airflow documents."""
    var = connection_env_var(conn_id)
    raw = os.environ.get(var)
    if not raw:
        raise LLMError(f"llm.api_key_conn_id={conn_id!r}: no connection in the environment ({var}); Airflow "
                       "tasks export it from the connection store, elsewhere set it in Airflow's format")
    if raw.lstrip().startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError:
            raise LLMError(f"{var}: not valid JSON") from None  # the text may hold the key: not echoed
        port = data.get("port")
        return Connection(host=data.get("host") or None, port=int(port) if port else None,
                          password=data.get("password") or None)
    parts = urlsplit(raw)
    return Connection(host=parts.hostname or None, port=parts.port,
                      password=unquote(parts.password) if parts.password else None)


def resolve_endpoint(config: LLMConfig) -> Endpoint:
    """Base URL and key of an OpenAI-compatible server from the config, an environment variable or a
    connection."""
    key: str | None = None
    base_url = config.base_url
    if config.api_key_conn_id:
        conn = connection_from_env(config.api_key_conn_id)
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
