"""Run untrusted Python (LLM-generated code) in a subprocess that cannot hurt the worker.

Layers, each enough on its own for some threats, together for all the tested ones:
- a fresh temporary folder as cwd, HOME and TMPDIR; a clean environment; `python -I -S` (no user
  site, no PYTHON* variables, no site-packages: generated code must be standard-library only);
- resource limits: CPU seconds, address space, file size, open files, processes; a wall-clock
  timeout after which the whole process group (its own session) is killed;
- no network: a new, empty network namespace (`unshare(CLONE_NEWNET)`) where the kernel allows it
  (root, or unprivileged user namespaces), and in any case an audit hook in the child that refuses
  sockets;
- when run as root, the child drops to `nobody` if `nobody` can run this interpreter (the process
  limit, which root ignores, then applies, and file permissions guard the system);
- the audit hook refuses writes, deletes and renames outside the folder, process creation (fork,
  exec, subprocess) and ctypes (which would bypass the hook). Without the uid drop (e.g. the
  interpreter lives under /root) this hook is what stops fork bombs and stray writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
NOBODY = 65534

# Runs first in the child; `root` is the only folder it may change. Hooks cannot be removed.
GUARD = r"""
import os, sys, runpy
ROOT = os.path.realpath(os.getcwd())
BLOCKED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
           "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
           "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof"}
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
               "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "os.chflags", "os.mkfifo", "os.mknod"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == ROOT or p.startswith(ROOT + os.sep)

def hook(event, args):
    if event in BLOCKED or (event == "import" and args[0] in ("ctypes", "_ctypes", "_posixsubprocess")):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS
        if writing and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing outside the sandbox folder: {path}")
    elif event in PATH_EVENTS:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                raise PermissionError(f"sandbox: {event} outside the sandbox folder: {a}")

sys.addaudithook(hook)
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512  # address space
    file_mb: int = 16  # largest file the code may write (stdout and stderr included)
    max_procs: int = 16
    max_open_files: int = 64
    max_output_chars: int = 20_000


@dataclass
class SandboxResult:
    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    reason: str | None  # None when ok; else timeout, cpu_limit, memory_limit, file_size_limit, sandbox_violation, ...
    seconds: float
    network_namespace: bool


def _libc_unshare(flags: int) -> int:
    return ctypes.CDLL(None, use_errno=True).unshare(flags)


@functools.cache
def network_namespace_available() -> bool:
    """Whether this process may create a network namespace (probed once, in a child)."""
    try:
        r = subprocess.run(["/bin/true"], preexec_fn=lambda: _check(_libc_unshare(CLONE_NEWNET)), timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@functools.cache
def can_drop_to_nobody() -> bool:
    """Running as root, and `nobody` may execute this interpreter (not so when it lives under /root)."""
    if os.geteuid() != 0:
        return False

    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    try:
        r = subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], preexec_fn=drop, timeout=30, cwd="/",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _check(rc: int) -> None:
    if rc != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")


def _child_setup(limits: SandboxLimits, netns: bool, drop_to_nobody: bool) -> None:
    """Runs in the forked child before exec: namespace first (needs privileges), then limits, then uid."""
    if netns:
        _check(_libc_unshare(CLONE_NEWNET))
    mb = 1024 * 1024
    for res, value in (
        (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
        (resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2),
        (resource.RLIMIT_FSIZE, (limits.file_mb * mb,) * 2),
        (resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2),
        (resource.RLIMIT_NPROC, (limits.max_procs,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(res, value)
    if drop_to_nobody:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def _reason(returncode: int | None, stderr: str, timed_out: bool) -> str | None:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return None
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu_limit"
    if returncode == -signal.SIGXFSZ or "[Errno 27] File too large" in stderr:  # Python ignores SIGXFSZ
        return "file_size_limit"
    if "MemoryError" in stderr:
        return "memory_limit"
    if "PermissionError: sandbox:" in stderr:
        return "sandbox_violation"
    return "signal" if returncode is not None and returncode < 0 else "exit_code"


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), files: dict[str, str] | None = None,
               stdin: str = "") -> SandboxResult:
    """Run `code` as main.py in a fresh folder (with `files` beside it) and report how it ended."""
    base = tempfile.mkdtemp(prefix="phiflow-sandbox-")
    work = os.path.join(base, "work")
    os.mkdir(work)
    try:
        for name, text in {**(files or {}), "main.py": code}.items():
            with open(os.path.join(work, os.path.basename(name)), "w") as f:
                f.write(text)
        as_root = can_drop_to_nobody()
        if as_root:  # the child runs as nobody: give it its folder, and only that
            for p in [work, *(os.path.join(work, n) for n in os.listdir(work))]:
                os.chown(p, NOBODY, NOBODY)
        netns = network_namespace_available()
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        out_path, err_path = os.path.join(base, "stdout"), os.path.join(base, "stderr")
        started = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", GUARD], cwd=work, env=env, stdin=subprocess.PIPE,
                stdout=out, stderr=err, start_new_session=True, close_fds=True,
                preexec_fn=functools.partial(_child_setup, limits, netns, as_root),
            )
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # whatever it left behind dies with it
                proc.wait()
        seconds = time.monotonic() - started
        stdout, stderr = (_read_head(p, limits.max_output_chars) for p in (out_path, err_path))
        reason = _reason(proc.returncode, stderr, timed_out)
        return SandboxResult(ok=reason is None, returncode=proc.returncode, stdout=stdout, stderr=stderr,
                             reason=reason, seconds=seconds, network_namespace=netns)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_head(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit * 4).decode("utf-8", "replace")[:limit]
