"""One local Spark Connect server that the stage tasks of the embedded default share.

Under spark-submit every stage task starts a driver JVM of its own (~7 CPU-seconds with the class
archive) and Python workers of its own (fastText, numba and pyarrow imported again); the demo runs
about fifty such tasks on two cores. With `spark.session: connect` in the recipe and a local master,
the operator starts this server once (Spark's SparkConnectServer in one JVM, gRPC on 127.0.0.1) and
each stage task runs its job file as a thin client of it (`SPARK_REMOTE`). Everything a stage decides
(shards, commits, manifests, its log) still happens in the task's own process; only the Spark work
moves, so killing a task still kills the one process that can commit.

A watchdog process (`serve`, below) owns the JVM: it records the port once the server answers, stops
the JVM when no client has used it for `idle_s`, and forgets the server when the JVM dies, so the next
`session()` starts a new one. A client holds a shared lock on the server's `.use` file while it runs;
the watchdog stops a server only while it can take that lock exclusively.

    python -m spark_jobs.engine.connect_server stop     # stop this PHIFLOW_HOME's servers
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from phiflow import settings

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT_S = 300.0
# environment entries that change what the server's Python workers see: a different value, another server
_ENV_KEYS = ("PYSPARK_PYTHON", "PHIFLOW_HOME", "PHIFLOW_LAKE", "SPARK_CONF_DIR", "SPARK_LOCAL_IP", "PATH")


def folder() -> Path:
    return settings.home() / "spark-connect"


def idle_s() -> float:
    """A server nobody used for this long stops (PHIFLOW_CONNECT_IDLE_S)."""
    return float(os.environ.get("PHIFLOW_CONNECT_IDLE_S", 900))


def fingerprint(command: list[str], env: dict[str, str]) -> str:
    body = json.dumps([command, {k: env.get(k) for k in _ENV_KEYS}])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


def _running(state_file: Path) -> dict | None:
    """The recorded server, when its watchdog lives and it is ready."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("ready") and _alive(state["watchdog"]) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], env: dict[str, str], state_file: Path) -> dict:
    """Spawn the watchdog (its own session, so it outlives the task that started it) and wait for the
    server to answer."""
    log = state_file.with_suffix(".log")
    state_file.unlink(missing_ok=True)
    with open(log, "ab") as out:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "spark_jobs.engine.connect_server", "serve", "--state", str(state_file),
             "--port", str(_free_port()), "--idle", str(idle_s()), "--", *command],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=settings.PROJECT_ROOT)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        state = _running(state_file)
        if state:
            return state
        if watchdog.poll() is not None:
            break
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(watchdog.pid, signal.SIGKILL)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"the local Spark Connect server did not start (log {log}):\n{tail}")


@contextlib.contextmanager
def session(command: list[str], env: dict[str, str]) -> Iterator[str]:
    """The URL (`sc://127.0.0.1:port`) of a running server made by `command` (a spark-submit command line
    ending in its application, `spark-internal`), started when there is none, held in use until the
    block ends."""
    key = fingerprint(command, env)
    state_file = folder() / f"{key}.json"
    while True:
        with _locked(folder() / f"{key}.lock", fcntl.LOCK_EX):  # one starter at a time
            state = _running(state_file) or _start(command, env, state_file)
        with _locked(folder() / f"{key}.use", fcntl.LOCK_SH):
            now = _running(state_file)
            if now and now["watchdog"] == state["watchdog"]:  # not stopped between the two locks
                yield f"sc://127.0.0.1:{state['port']}"
                return


def serve(state_file: Path, port: int, idle: float, command: list[str]) -> int:
    """Run the server JVM; record it once it answers; stop it after `idle` seconds without a client."""
    command = [command[0], "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
               "--conf", f"spark.connect.grpc.binding.port={port}", *command[1:]]
    jvm = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: (jvm.terminate(), sys.exit(143)))
    state = {"watchdog": os.getpid(), "jvm": jvm.pid, "port": port, "ready": False, "command": command}
    use = state_file.with_suffix(".use")
    last_used = time.time()
    try:
        while jvm.poll() is None:
            if not state["ready"] and _answers(port):
                state["ready"] = True
                state_file.write_text(json.dumps(state))
                last_used = time.time()  # its starter is about to use it
                print(f"[phiflow] Spark Connect server ready on 127.0.0.1:{port} (pid {jvm.pid})", flush=True)
            with open(use, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    last_used = time.time()  # a client holds it
                else:
                    if state["ready"] and time.time() - last_used > idle:
                        state_file.unlink(missing_ok=True)  # under the lock: no client can start meanwhile
                        print(f"[phiflow] Spark Connect server idle {idle:.0f} s: stopping", flush=True)
                        jvm.terminate()
                        break
                    fcntl.flock(f, fcntl.LOCK_UN)
            time.sleep(2)
        return jvm.wait(timeout=60)
    finally:
        if _running(state_file) and json.loads(state_file.read_text())["watchdog"] == os.getpid():
            state_file.unlink(missing_ok=True)
        if jvm.poll() is None:
            jvm.kill()


def stop() -> list[int]:
    """Stop every server of this PHIFLOW_HOME (their watchdogs' process groups); the pids stopped."""
    stopped = []
    for state_file in sorted(folder().glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = json.loads(state_file.read_text())["watchdog"]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
                for _ in range(60):
                    if not _alive(pid):
                        break
                    time.sleep(0.5)
                else:
                    os.killpg(pid, signal.SIGKILL)
                stopped.append(pid)
        state_file.unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_jobs.engine.connect_server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--state", type=Path, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--idle", type=float, required=True)
    s.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("stop")
    args = parser.parse_args(argv)
    if args.cmd == "stop":
        for pid in stop():
            print(f"stopped Spark Connect server (watchdog pid {pid})")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return serve(args.state, args.port, args.idle, command)


if __name__ == "__main__":
    sys.exit(main())
