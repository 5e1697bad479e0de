"""The execution sandbox holds hostile snippets: infinite loop, fork bomb, network, writes outside
its folder, huge allocations, reads of host files and other processes' secrets; and still runs
honest code. The escapes run twice: as deployed, and with the in-interpreter audit hook switched
off, so that the OS isolation (bubblewrap's namespaces) is shown to hold by itself."""

from __future__ import annotations

import ast
import contextlib
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from phiflow.sandbox import SandboxLimits, SandboxUnavailable, run_python, unavailable_reason

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
    ifaces = run_python("print(open('/proc/net/dev').read())", FAST).stdout  # its own namespace: a loopback
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


# -- the OS layer ------------------------------------------------------------------------------------
LAYERS = pytest.mark.parametrize("audit_hook", [True, False], ids=["deployed", "os-layer-alone"])


def test_the_machine_can_sandbox() -> None:
    assert unavailable_reason() is None  # `make test` installs bubblewrap; without it the suite must fail


def test_refuses_to_run_without_bubblewrap(monkeypatch) -> None:
    monkeypatch.setenv("PHIFLOW_BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match=r"refusing to run generated code: bubblewrap .* not installed"):
        run_python("print('never')", FAST)


@pytest.fixture
def host(tmp_path):
    """A folder of the host with a file to protect, as generated code would target them."""
    (tmp_path / "victim.txt").write_text("original")
    os.chmod(tmp_path / "victim.txt", 0o644)
    return tmp_path


def host_unchanged(host) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["victim.txt"]
    assert (host / "victim.txt").read_text() == "original"
    assert stat.S_IMODE(os.stat(host / "victim.txt").st_mode) == 0o644


ESCAPES = {
    "create-via-dir_fd": "fd = os.open({d!r}, os.O_RDONLY)\n"
                         "os.close(os.open('made.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
    "unlink-via-dir_fd": "fd = os.open({d!r}, os.O_RDONLY)\nos.unlink('victim.txt', dir_fd=fd)",
    "mkdir-via-dir_fd": "fd = os.open({d!r}, os.O_RDONLY)\nos.mkdir('made', dir_fd=fd)",
    "fchmod-on-fd": "fd = os.open({v!r}, os.O_RDONLY)\nos.fchmod(fd, 0o777)",
    "sqlite": "import sqlite3\ndb = sqlite3.connect({d!r} + '/made.db')\ndb.execute('create table t(x)')\ndb.commit()",
    "hard-link": "os.link({v!r}, 'mine.txt')\nopen('mine.txt', 'w').write('pwned')",
    "dotdot": "os.open('../../../../..' + {d!r} + '/made.txt', os.O_CREAT | os.O_WRONLY)",
    "fileio": "import io\nio.FileIO({v!r}, 'w').write(b'pwned')",
    "mmap": "import mmap\nf = open({v!r}, 'r+b')\nm = mmap.mmap(f.fileno(), 0)\nm[:5] = b'pwned'",
    "proc-self-fd": "for n in os.listdir('/proc/self/fd'):\n    p = os.path.realpath(f'/proc/self/fd/{{n}}')\n"
                    "    open(p + '/../made.txt', 'w').write('pwned') if os.path.isdir(p) else None\n"
                    "open({v!r}, 'w')",
    "proc-root": "open('/proc/1/root' + {v!r}, 'w').write('pwned')",
    "rmtree-everything": "import shutil\nshutil.rmtree({d!r})",
}


@LAYERS
@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_writes_outside_its_folder_are_contained(host, name: str, audit_hook: bool) -> None:
    code = "import os\n" + ESCAPES[name].format(d=str(host), v=str(host / "victim.txt"))
    res = run_python(code, FAST, audit_hook=audit_hook)
    assert not res.ok, (name, res.stdout)
    if not audit_hook:  # the OS said no: the path is not there, or is read-only
        refusals = ("FileNotFoundError", "Read-only", "PermissionError", "unable to open database")
        assert any(e in res.stderr for e in refusals), res.stderr
    host_unchanged(host)


@LAYERS
def test_host_files_and_other_processes_are_invisible(audit_hook: bool, monkeypatch) -> None:
    secret = "sk-test-" + "7f3a9c" * 4
    monkeypatch.setenv("PHIFLOW_LLM_KEY", secret)  # in this (the parent's) environment
    project = str(Path(__file__).resolve().parents[1])
    code = f"""
import os
seen = []
for path in ["/etc/shadow", "/etc/passwd", {project + '/README.md'!r}, {project + '/setup.cfg'!r}]:
    try:
        seen.append(open(path).read())
    except OSError as e:
        print("no", path, type(e).__name__)
for pid in [p for p in os.listdir("/proc") if p.isdigit()] + [str(os.getppid())]:
    try:
        seen.append(open(f"/proc/{{pid}}/environ").read())
    except OSError:
        pass
print(len([p for p in os.listdir("/proc") if p.isdigit()]), "processes")
print(dict(os.environ))
print("\\n".join(seen))
"""
    res = run_python(code, FAST, audit_hook=audit_hook)
    assert res.ok, res.stderr
    assert secret not in res.stdout and "PHIFLOW_LLM_KEY" not in res.stdout
    assert "root:" not in res.stdout and "[metadata]" not in res.stdout and "phiflow" not in res.stdout.lower()
    assert res.stdout.count("no ") == 4
    assert int(res.stdout.split(" processes")[0].split()[-1]) <= 3  # bwrap's init, the code; no host process
    env = ast.literal_eval(res.stdout.split("processes\n", 1)[1].splitlines()[0])
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "PWD"}


@LAYERS
def test_runs_unprivileged_in_its_own_namespaces(audit_hook: bool) -> None:
    code = ("import os\nprint(os.getuid(), os.geteuid(), os.getgid())\n"
            "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
            "print(sorted(os.listdir('/')))")
    res = run_python(code, FAST, audit_hook=audit_hook)
    assert res.ok, res.stderr
    ids, caps, root = res.stdout.splitlines()
    assert ids == "65534 65534 65534" and int(caps, 16) == 0
    top = {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "root", "sandbox", "sbin", "usr"}
    assert set(ast.literal_eval(root)) <= top


@LAYERS
@pytest.mark.parametrize("code", [
    "import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 53))",
    "import socket\nsocket.create_connection(('127.0.0.1', 8080), timeout=1)",
    "import ctypes\nif ctypes.CDLL(None, use_errno=True).unshare(0x10000000):  # CLONE_NEWUSER\n"
    "    raise OSError(ctypes.get_errno(), 'unshare')",
])
def test_no_network_and_no_new_namespaces(code: str, audit_hook: bool) -> None:
    res = run_python(code, FAST, audit_hook=audit_hook)
    assert not res.ok and any(e in res.stderr for e in ("OSError", "PermissionError", "ConnectionRefused")), res.stderr


def test_the_os_layer_alone_stops_a_fork_bomb() -> None:
    code = ("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            time.sleep(3)\n            os._exit(0)\n        n += 1\n"
            "except OSError as e:\n    print(n, e.errno)")
    res = run_python(code, FAST, audit_hook=False)
    assert res.ok, res.stderr
    forked, errno = map(int, res.stdout.split())
    assert forked < FAST.max_procs and errno == 11  # EAGAIN: the process limit of uid 65534
