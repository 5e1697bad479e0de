"""The LLM client against a real HTTP server on 127.0.0.1 that injects faults: nothing lost,
nothing generated twice, the cache answers reruns, and the API key never reaches a log or an error."""

from __future__ import annotations

import json
import logging
import time

import pytest
from llm_server import LLMTestServer, echo_answer

from phiflow.llm import ChatRequest, LLMConfig, LLMError
from phiflow.llm.cache import ChatCache
from phiflow.llm.openai_http import retry_after
from spark_jobs.engine.llm_clients import make_client

KEY = "sk-test-5f1c0ffee-never-log-me"


def config(srv: LLMTestServer, tmp_path, **kw) -> LLMConfig:
    base = {"backend": "openai", "model": "test-model", "base_url": srv.base_url, "api_key_env": "PHIFLOW_TEST_KEY",
            "cache_dir": str(tmp_path / "cache"), "max_concurrency": 4, "timeout_s": 0.4, "max_retries": 4,
            "backoff_s": 0.01, "max_backoff_s": 0.05}
    return LLMConfig(**{**base, **kw})


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("PHIFLOW_TEST_KEY", KEY)


def all_logs(caplog) -> str:
    return "\n".join(f"{r.getMessage()} {r.args} {r.exc_text or ''}" for r in caplog.records)


def test_faults_are_retried_no_sample_lost_none_twice_and_rerun_is_cached(tmp_path, key_env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    faults = {"p03": ["500"], "p05": ["429"], "p07": ["timeout"], "p09": ["malformed"], "p11": ["truncated"],
              "p13": ["503", "500", "no_choices"]}
    prompts = [f"p{i:02d} question" for i in range(20)]
    with LLMTestServer(api_key=KEY, retry_after="0") as srv:
        for match, fs in faults.items():
            srv.inject(match, *fs)
        client = make_client(config(srv, tmp_path))
        results = client.chat([ask(p, seed=7) for p in prompts])
        assert [r.texts for r in results] == [[f"echo[7]: {p}"] for p in prompts]  # none lost, in order
        assert not any(r.cached for r in results)
        assert srv.served == {p: 1 for p in prompts}  # every good completion was paid for exactly once
        assert sum(srv.faults_sent.values()) == 8 and client.stats["retries"] == 8
        assert set(srv.auth_headers) == {f"Bearer {KEY}"}  # the key was sent, as a bearer token
        requests_before = len(srv.bodies)

        rerun = make_client(config(srv, tmp_path))  # a new worker, same cache
        again = rerun.chat([ask(p, seed=7) for p in prompts])
        assert [r.texts for r in again] == [r.texts for r in results]
        assert all(r.cached for r in again) and rerun.stats["cache_hits"] == 20
        assert len(srv.bodies) == requests_before  # the rerun did not call the server at all
    text = all_logs(caplog)
    assert "retry" in text and KEY not in text


def test_retry_after_is_honoured(tmp_path, key_env) -> None:
    with LLMTestServer(api_key=KEY, retry_after="1") as srv:
        srv.inject("slow down", "429")
        [res] = make_client(config(srv, tmp_path)).chat([ask("slow down")])
        first, second = srv.times["slow down"]
    assert res.texts == ["echo[0]: slow down"]
    assert second - first >= 0.9  # waited what the server asked, not the 0.01 s backoff


def test_gives_up_after_retries_but_keeps_what_finished(tmp_path, key_env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with LLMTestServer(api_key=KEY, retry_after="0") as srv:
        srv.inject("doomed", *["500"] * 10)
        client = make_client(config(srv, tmp_path, max_retries=2))
        with pytest.raises(LLMError, match="gave up after 3 attempts") as err:
            client.chat([ask("fine one"), ask("doomed"), ask("fine two")])
        assert KEY not in str(err.value)
        assert srv.faults_sent["500"] == 3
        served = sum(srv.served.values())
        client.chat([ask("fine one"), ask("fine two")])  # the finished ones were cached on arrival
        assert sum(srv.served.values()) == served == 2
    assert KEY not in all_logs(caplog)


def test_client_errors_fail_at_once_and_redact_the_key(tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PHIFLOW_TEST_KEY", KEY)
    with LLMTestServer(api_key="the-right-key") as srv:
        with pytest.raises(LLMError, match="HTTP 401") as err:
            make_client(config(srv, tmp_path)).chat([ask("hello")])
        assert len(srv.bodies) == 1  # 4xx other than 408/409/429 is not retried
        assert KEY not in str(err.value) and "***" in str(err.value)  # the server echoed it; we masked it
        assert srv.auth_headers == [f"Bearer {KEY}"]
    assert KEY not in all_logs(caplog) and KEY not in repr(err.value.__context__)


def test_missing_key_variable_is_named_not_guessed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PHIFLOW_TEST_KEY", raising=False)
    with LLMTestServer() as srv, pytest.raises(LLMError, match="PHIFLOW_TEST_KEY is not set"):
        make_client(config(srv, tmp_path)).chat([ask("hi")])


def test_key_and_url_from_an_airflow_connection(tmp_path, monkeypatch) -> None:
    with LLMTestServer(api_key=KEY) as srv:
        conn = {"conn_type": "http", "host": srv.base_url, "password": KEY}
        monkeypatch.setenv("AIRFLOW_CONN_PHIFLOW_LLM_TEST", json.dumps(conn))
        cfg = config(srv, tmp_path, base_url=None, api_key_env=None, api_key_conn_id="phiflow_llm_test")
        [res] = make_client(cfg).chat([ask("via airflow")])
        assert res.texts == ["echo[0]: via airflow"] and srv.auth_headers == [f"Bearer {KEY}"]


def test_connection_reaches_the_job_through_the_environment_not_airflow(monkeypatch) -> None:
    """The operator's hook exports the connection in Airflow's format; the core reads it back without
    Airflow (JSON and URI forms, a URL-encoded password), and a missing one is named, not guessed."""
    import subprocess
    import sys

    from operators.llm_hook import LLMConnectionHook
    from phiflow.llm.secrets import connection_from_env

    conn = {"conn_type": "http", "host": "https://llm.example/v1", "port": 8443, "password": KEY}
    monkeypatch.setenv("AIRFLOW_CONN_PHIFLOW_LLM_HOOK", json.dumps(conn))
    env = LLMConnectionHook("phiflow_llm_hook").job_environment()
    assert list(env) == ["AIRFLOW_CONN_PHIFLOW_LLM_HOOK"]
    code = ("import sys; from phiflow.llm.secrets import connection_from_env as c; x = c('phiflow_llm_hook'); "
            "print(x.host, x.port, x.password == sys.argv[1], 'airflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, KEY], env={**env, "PATH": ""}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["https://llm.example/v1", "8443", "True", "False"]
    monkeypatch.setenv("AIRFLOW_CONN_PHIFLOW_LLM_URI", "http://user:p%40ss@llm.internal:8000")
    uri = connection_from_env("phiflow_llm_uri")
    assert (uri.host, uri.port, uri.password) == ("llm.internal", 8000, "p@ss")
    monkeypatch.delenv("AIRFLOW_CONN_PHIFLOW_LLM_NONE", raising=False)
    with pytest.raises(LLMError, match="AIRFLOW_CONN_PHIFLOW_LLM_NONE"):
        connection_from_env("phiflow_llm_none")


def test_n_samples_topped_up_when_the_server_ignores_n(tmp_path, key_env) -> None:
    with LLMTestServer(api_key=KEY, max_choices=1) as srv:
        [res] = make_client(config(srv, tmp_path)).chat([ask("vote", n=3, seed=10, temperature=1.0)])
        assert res.texts == ["echo[10]: vote", "echo[11]: vote", "echo[12]: vote"]
        assert [b["n"] for b in srv.bodies] == [3, 2, 1]


def test_cache_key_covers_model_messages_sampling_and_seed(tmp_path, key_env) -> None:
    base = ask("same", seed=1)
    variants = [ask("same", seed=2), ask("same", seed=1, temperature=0.7), ask("same", seed=1, max_tokens=9),
                ask("other", seed=1), ask("same", seed=1, n=2)]
    keys = {base.key("m"), base.key("m2"), *(v.key("m") for v in variants)}
    assert len(keys) == 7 and ask("same", seed=1).key("m") == base.key("m")
    with LLMTestServer(api_key=KEY) as srv:
        client = make_client(config(srv, tmp_path))
        out = client.chat([ask("dup"), ask("dup"), ask("dup", seed=3)])
        assert [r.texts for r in out] == [["echo[0]: dup"], ["echo[0]: dup"], ["echo[3]: dup"]]
        assert len(srv.bodies) == 2  # identical requests in one call are generated once


def test_a_damaged_cache_entry_is_regenerated(tmp_path, key_env) -> None:
    with LLMTestServer(api_key=KEY) as srv:
        cfg = config(srv, tmp_path)
        make_client(cfg).chat([ask("fragile")])
        cache = ChatCache(cfg.cache_dir)
        path = cache._path(ask("fragile").key(cfg.model))
        with open(path, "w") as f:
            f.write('{"texts": [')
        [res] = make_client(cfg).chat([ask("fragile")])
        assert res.texts == [echo_answer({"messages": [{"content": "fragile"}]}, 0)] and not res.cached
        assert sum(srv.served.values()) == 2


def test_retry_after_header_forms() -> None:
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    assert 0 <= retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9  # a past date: no wait


def test_secret_never_prints() -> None:
    from phiflow.llm.secrets import Secret

    s = Secret(KEY)
    assert KEY not in f"{s} {s!r} {[s]}" and s.reveal() == KEY


@pytest.mark.parametrize("fault", ["trickle_body", "trickle_headers"])
def test_timeout_bounds_the_whole_request(tmp_path, key_env, fault: str) -> None:
    """A server answering one byte every 0.1 s (about 25 s for this answer) never makes a single
    read wait past the timeout; the request as a whole must still end at timeout_s."""
    with LLMTestServer(api_key=KEY) as srv:
        srv.inject("slowly", fault)
        client = make_client(config(srv, tmp_path, timeout_s=1.0, max_retries=0))
        started = time.monotonic()
        with pytest.raises(LLMError, match="gave up after 1 attempts, last: timeout"):
            client.chat([ask("slowly")])
        took = time.monotonic() - started
        assert srv.faults_sent[fault] == 1
    assert took < 4.0, took  # timeout_s plus the backstop's margin, far from the trickle's ~25 s


def test_retry_after_is_capped(tmp_path, key_env, caplog) -> None:
    caplog.set_level(logging.WARNING)
    with LLMTestServer(api_key=KEY, retry_after="86400") as srv:  # "come back tomorrow"
        srv.inject("slow down", "429")
        [res] = make_client(config(srv, tmp_path, max_retry_after_s=0.3)).chat([ask("slow down")])
    assert res.texts == ["echo[0]: slow down"]
    waits = [float(r.args[-1]) for r in caplog.records if "retry" in r.getMessage()]
    assert waits == [0.3]  # the cap, not a day


def test_credentials_in_the_base_url_never_reach_errors_or_logs(tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PHIFLOW_TEST_KEY", KEY)
    with LLMTestServer(api_key="the-right-key", retry_after="0") as srv:
        url = srv.base_url.replace("http://", "http://svc-user:url-pass-9f2e@") + "?token=q-secret-77"
        with pytest.raises(LLMError, match="HTTP 401") as denied:
            make_client(config(srv, tmp_path, base_url=url)).chat([ask("hello")])
    with LLMTestServer(retry_after="0") as srv:
        srv.inject("doomed", "500", "500")
        url = srv.base_url.replace("http://", "http://svc-user:url-pass-9f2e@") + "?token=q-secret-77"
        with pytest.raises(LLMError, match="gave up after 2 attempts") as gave_up:
            make_client(config(srv, tmp_path, base_url=url, max_retries=1)).chat([ask("doomed")])
    for err in (denied.value, gave_up.value):
        text = f"{err} {err.__context__!r}"
        assert "url-pass-9f2e" not in text and "q-secret-77" not in text and KEY not in text
        assert f"127.0.0.1:{srv.port}" in str(err) or "127.0.0.1:" in str(err)  # the endpoint is still named
    logs = all_logs(caplog)
    assert "url-pass-9f2e" not in logs and "q-secret-77" not in logs and KEY not in logs


def test_finish_reason_length_is_reported(tmp_path, key_env) -> None:
    with LLMTestServer(api_key=KEY) as srv:
        srv.inject("long story", "length")
        cut, whole = make_client(config(srv, tmp_path)).chat([ask("long story"), ask("short one")])
    assert cut.finish_reasons == ["length"] and whole.finish_reasons == ["stop"]
