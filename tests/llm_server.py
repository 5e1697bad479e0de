"""A real HTTP server on 127.0.0.1 speaking OpenAI chat completions, with scripted answers and
injected faults: the test double for every remote LLM endpoint.

    with LLMTestServer(answer=my_fn, api_key="k") as srv:
        srv.inject("prompt text", "500", "429", "timeout", "malformed", "truncated")
        ... LLMConfig(backend="openai", base_url=srv.base_url, ...)

`answer(body, i)` returns the i-th sample's text for a request body (default: a deterministic
echo). `trickle_*` send a good answer one byte every 0.1 s (the body, or the status line and
headers too); `length` serves the answer with finish_reason "length", as a model stopped at
max_tokens. Faults are queued per prompt (matched by substring of the last message), so they hit the
same prompts whatever the client's concurrency. `delay_s` slows every good answer (a stage then
stays mid-run long enough to be broken on purpose); `stop()` makes it vanish. The server records
what it saw: bodies, the Authorization headers, and how many good completions each prompt was served.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any], int], str]
FAULTS = {"500", "503", "429", "timeout", "malformed", "truncated", "no_choices", "trickle_body", "trickle_headers",
          "length"}


def echo_answer(body: dict[str, Any], i: int) -> str:
    return f"echo[{body.get('seed', 0)}]: {body['messages'][-1]['content']}"


def last_message(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


class LLMTestServer:
    def __init__(self, answer: Answer = echo_answer, api_key: str | None = None, retry_after: str = "1",
                 hang_s: float = 1.0, max_choices: int | None = None, delay_s: float = 0.0, port: int = 0) -> None:
        self.answer, self.api_key, self.retry_after, self.hang_s = answer, api_key, retry_after, hang_s
        self.delay_s = delay_s  # per good completion: makes a stage slow enough to be hit mid-run
        self.max_choices = max_choices  # simulate servers that ignore n
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.times: dict[str, list[float]] = defaultdict(list)  # arrival times per prompt
        self.served: Counter[str] = Counter()  # good completions per prompt
        self.faults_sent: Counter[str] = Counter()
        self._faults: dict[str, list[str]] = {}
        self._down = False
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def inject(self, match: str, *faults: str) -> None:
        """The next requests whose last message contains `match` get these faults, in order."""
        unknown = set(faults) - FAULTS
        assert not unknown, unknown
        with self._lock:
            self._faults.setdefault(match, []).extend(faults)

    def _next_fault(self, prompt: str) -> str | None:
        with self._lock:
            for match, queue in self._faults.items():
                if match in prompt and queue:
                    return queue.pop(0)
        return None

    def __enter__(self) -> LLMTestServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Go away like a crashed server: no new connections, open keep-alive ones cut."""
        self._down = True
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
                      length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

            def do_POST(self) -> None:
                if server._down:
                    self.close_connection = True
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                prompt = last_message(body)
                with server._lock:
                    server.bodies.append(body)
                    server.auth_headers.append(auth)
                    server.times[prompt].append(time.monotonic())
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"error": "not found"}')
                if server.api_key is not None and auth != f"Bearer {server.api_key}":
                    # A careless server that echoes what it got: clients must not pass it on verbatim.
                    return self._send(401, json.dumps({"error": f"invalid credentials: {auth}"}).encode())
                fault = server._next_fault(prompt)
                if fault in ("trickle_body", "trickle_headers", "length"):
                    with server._lock:
                        server.faults_sent[fault] += 1
                    return self._answer(body, prompt, fault)
                if fault:
                    with server._lock:
                        server.faults_sent[fault] += 1
                    return self._fault(fault)
                self._answer(body, prompt, None)

            def _answer(self, body: dict[str, Any], prompt: str, fault: str | None) -> None:
                time.sleep(server.delay_s)
                n = int(body.get("n") or 1)
                n_out = min(n, server.max_choices or n)
                texts = [server.answer(body, i) for i in range(n_out)]
                with server._lock:
                    server.served[prompt] += 1
                finish = "length" if fault == "length" else "stop"
                choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                           for i, t in enumerate(texts)]
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": sum(len(t.split()) for t in texts)}
                payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                      "choices": choices, "usage": usage}).encode()
                if fault not in ("trickle_body", "trickle_headers"):
                    return self._send(200, payload)
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n").encode()
                if fault == "trickle_body":
                    self.wfile.write(head)
                    head = b""
                try:
                    for byte in head + payload:  # one byte every 0.1 s: each read is quick, the whole is not
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:  # the client gave up
                    self.close_connection = True

            def _fault(self, fault: str) -> None:
                if fault in ("500", "503"):
                    self._send(int(fault), b'{"error": "overloaded"}')
                elif fault == "429":
                    self._send(429, b'{"error": "rate limited"}', {"Retry-After": server.retry_after})
                elif fault == "timeout":
                    time.sleep(server.hang_s)
                    self.close_connection = True
                elif fault == "malformed":
                    self._send(200, b'{"choices": [{"message": ')
                elif fault == "no_choices":
                    self._send(200, b'{"choices": []}')
                elif fault == "truncated":
                    self._send(200, b'{"id": "x", "choices": [{"index": 0, "mess', length=4096)
                    self.close_connection = True

        return Handler
