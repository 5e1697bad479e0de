"""The execution sandbox holds hostile snippets: infinite loop, fork bomb, network, writes outside
its folder, huge allocations; and still runs honest code."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from phiflow.sandbox import SandboxLimits, network_namespace_available, run_python

FAST = SandboxLimits(cpu_s=1, wall_s=4, memory_mb=256)


def test_honest_code_runs_in_its_own_folder() -> None:
    code = "import os\nopen('note.txt', 'w').write('kept')\n"
    code += "print(open('note.txt').read(), os.getcwd() == os.environ['HOME'])"
    res = run_python(code, FAST)
    assert res.ok and res.reason is None and res.stdout.split() == ["kept", "True"]


def test_tests_fail_is_a_failure_not_a_crash() -> None:
    res = run_python("def add(a, b):\n    return a - b\nassert add(2, 2) == 4", FAST)
    assert not res.ok and res.reason == "exit_code" and "AssertionError" in res.stderr


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_infinite_loop_and_sleep_are_killed(code: str) -> None:
    res = run_python(code, SandboxLimits(cpu_s=1, wall_s=2))
    assert not res.ok and res.reason in ("cpu_limit", "timeout")


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])",
    "import os\nos.system('sleep 100 &')",
    "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()",
])
def test_fork_bombs_and_process_spawning_are_refused(code: str) -> None:
    res = run_python(code, FAST)
    assert not res.ok and res.reason == "sandbox_violation", res.stderr


def test_no_network() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(3)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    t = threading.Thread(target=accept)
    t.start()
    res = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')", FAST)
    t.join()
    listener.close()
    assert not res.ok and accepted == []
    if network_namespace_available():  # the kernel layer too: only a loopback, down, in its namespace
        ifaces = run_python("print(open('/proc/net/dev').read())", FAST).stdout
        assert "lo:" in ifaces and not any(n in ifaces for n in ("eth0:", "ens", "docker0:"))


def test_nothing_outside_its_folder_is_written(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    outside = tmp_path / "outside.txt"
    for code in [
        f"open({str(outside)!r}, 'w').write('pwned')",
        "open('../escape.txt', 'w').write('pwned')",
        f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('pwned')",
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
        f"import pathlib\npathlib.Path({str(outside)!r}).write_text('pwned')",
        f"import os\nfd = os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'pwned')",
        "import ctypes\nctypes.CDLL(None).system(b'touch /tmp/pwned-by-ctypes')",
    ]:
        res = run_python(code, FAST)
        assert not res.ok and res.reason == "sandbox_violation", (code, res.stderr)
    assert victim.read_text() == "original" and not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize("code", ["x = bytearray(8 * 1024 ** 3)", "xs = []\nwhile True:\n    xs.append(' ' * 10 ** 7)"])
def test_huge_allocation_fails_inside(code: str) -> None:
    res = run_python(code, SandboxLimits(cpu_s=5, wall_s=10, memory_mb=256))
    assert not res.ok and res.reason == "memory_limit"


def test_output_flood_is_bounded() -> None:
    limits = SandboxLimits(cpu_s=2, wall_s=4, file_mb=1, max_output_chars=500)
    res = run_python("while True:\n    print('x' * 1000)", limits)
    assert not res.ok and res.reason in ("file_size_limit", "cpu_limit", "timeout") and len(res.stdout) <= 500
