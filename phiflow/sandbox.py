"""Run untrusted Python (LLM-generated code) where it cannot reach the worker, its files or its secrets.

The isolation is the operating system's, through bubblewrap (`bwrap`, the sandbox of Flatpak):
- its own mount namespace, whose root is an empty read-only tmpfs holding only the read-only runtime
  (`/usr` and the interpreter's own prefix) and the code's scratch folder `/sandbox`: the host's
  files, the project, the lake and `/etc` do not exist there;
- its own PID namespace with a fresh `/proc`: no other process, and no other process's environment;
- its own network namespace (only a loopback, down), IPC and UTS namespaces;
- its own user namespace, entered without privilege: the code runs as uid 65534 with no
  capabilities, may not create further user namespaces, and starts a new session (no terminal);
  when the worker is root the launcher itself drops to uid 65534 first, so the process limit holds
  and nothing it does is root's on the host;
- an environment of exactly PATH, HOME, TMPDIR, LANG and two Python switches; `python -I -S`;
- resource limits (CPU, address space, file size, open files, processes) and a wall-clock timeout
  after which the launcher is killed, and with it (its PID namespace) everything the code started.

Why bubblewrap: a Debian package with no daemon and no setuid bit needed where unprivileged user
namespaces are allowed (kernel and Debian default); it sets up every namespace above in one exec,
and it fails closed. Landlock + seccomp (from PyPI) would confine the filesystem and the system
calls but leave `/proc` of other processes to ptrace-scope rules and need a hand-written syscall
policy; nsjail and gVisor are not Debian or PyPI packages.

A second layer inside the interpreter: an audit hook refusing process creation, sockets, ctypes
and writes outside the folder, so a hostile snippet fails fast with a readable reason.

Without bubblewrap (or where the kernel forbids its namespaces) `run_python` raises
SandboxUnavailable: generated code is never run with weaker isolation.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

NOBODY = 65534
SCRATCH = "/sandbox"

# The launcher, run by this interpreter as the worker's user: it becomes the reaper of everything below
# it (bubblewrap's PID-namespace init outlives bubblewrap for a moment; left to a PID 1 that does not
# reap, such zombies would count against uid 65534's process limit), then forks the child that sets
# the limits, makes the runtime reachable (as root: a bind mount in a private mount namespace), drops
# to 65534 and becomes bubblewrap. SIGTERM: kill bubblewrap (and so the whole sandbox), reap, exit.
LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)

def check(rc):
    if rc != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

check(libc.prctl(36, 1, 0, 0, 0))  # PR_SET_CHILD_SUBREAPER
pid = os.fork()
if pid == 0:
    try:
        for name, limit in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, name), tuple(limit))
        if cfg["bind"]:
            source, target = (p.encode() for p in cfg["bind"])
            check(libc.unshare(0x00020000))  # CLONE_NEWNS
            check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None))  # MS_REC | MS_PRIVATE
            check(libc.mount(source, target, None, 0x1000 | 0x4000, None))  # MS_BIND | MS_REC
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:
        os.write(2, f"sandbox launcher: {type(e).__name__}: {e}\n".encode())
        os._exit(125)

def stop(*_):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

signal.signal(signal.SIGTERM, stop)
code = 125
while True:
    try:
        done, status = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if done == pid:
        code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""

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

if HOOK:
    sys.addaudithook(hook)
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


class SandboxUnavailable(RuntimeError):
    """This machine cannot isolate generated code (no bubblewrap, or its namespaces are forbidden)."""


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


def bwrap_path() -> str | None:
    """`PHIFLOW_BWRAP` (a path, for a bubblewrap outside PATH), else `bwrap` on PATH."""
    return os.environ.get("PHIFLOW_BWRAP") or shutil.which("bwrap")


@functools.cache
def _probe(bwrap: str | None) -> str | None:
    """Why this machine cannot sandbox (None when it can): one trivial run, checked for its output."""
    if bwrap is None or not os.access(bwrap, os.X_OK):
        return ("bubblewrap (bwrap) is not installed: install the Debian package `bubblewrap` "
                "(`make test` and `make demo` do), or set PHIFLOW_BWRAP to its path")
    try:
        res = _run(bwrap, "print(6 * 7)", SandboxLimits(cpu_s=5, wall_s=30), {}, "", audit_hook=True)
    except OSError as e:
        return f"bubblewrap could not start: {e}"
    if res.ok and res.stdout.strip() == "42":
        return None
    return f"bubblewrap cannot create its namespaces here ({res.stderr.strip()[-300:] or res.reason})"


def unavailable_reason() -> str | None:
    """None when generated code can run here; else why not, in a sentence a user can act on."""
    return _probe(bwrap_path())


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), files: dict[str, str] | None = None,
               stdin: str = "", *, audit_hook: bool = True) -> SandboxResult:
    """Run `code` as main.py in a fresh folder (with `files` beside it) and report how it ended.

    `audit_hook=False` leaves the OS isolation alone (the tests use it to check that layer by itself)."""
    bwrap = bwrap_path()
    why = _probe(bwrap)
    if why is not None:
        raise SandboxUnavailable(f"refusing to run generated code: {why}")
    assert bwrap is not None
    return _run(bwrap, code, limits, files or {}, stdin, audit_hook)


def _run(bwrap: str, code: str, limits: SandboxLimits, files: dict[str, str], stdin: str,
         audit_hook: bool) -> SandboxResult:
    base = tempfile.mkdtemp(prefix="phiflow-sandbox-")
    work = os.path.join(base, "work")
    os.mkdir(work)
    try:
        for name, text in {**files, "main.py": code}.items():
            with open(os.path.join(work, os.path.basename(name)), "w") as f:
                f.write(text)
        runtime = os.path.realpath(sys.base_prefix)
        source = runtime
        as_root = os.geteuid() == 0
        if as_root:
            # The launcher runs as nobody: give it the folder, and a way to the runtime. `base` becomes
            # passable (not listable) for nobody; the runtime (which may live under /root) is bind-mounted
            # into it in the launcher's own mount namespace, invisible to every other process.
            for p in [work, *(os.path.join(work, n) for n in os.listdir(work))]:
                os.chown(p, NOBODY, NOBODY)
            os.chmod(base, 0o711)
            source = os.path.join(base, "runtime")
            os.mkdir(source, 0o755)
        guard = f"HOOK = {audit_hook}\n{GUARD}"
        config = {
            "argv": [bwrap, *_bwrap_args(source, runtime, work), _interpreter(runtime), "-I", "-S", "-B", "-c", guard],
            "env": {"PATH": "/usr/bin:/bin"},
            "rlimits": _rlimits(limits),
            "bind": [runtime, source] if as_root else None,
            "uid": NOBODY,
        }
        out_path, err_path = os.path.join(base, "stdout"), os.path.join(base, "stderr")
        started = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", LAUNCHER, json.dumps(config)],
                cwd="/", env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.PIPE, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
            )
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.terminate()  # the launcher kills bubblewrap, whose PID namespace takes everything with it
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _kill_group(proc.pid)
                    proc.wait()
        seconds = time.monotonic() - started
        stdout, stderr = (_read_head(p, limits.max_output_chars) for p in (out_path, err_path))
        reason = _reason(proc.returncode, stderr, timed_out)
        return SandboxResult(ok=reason is None, returncode=proc.returncode, stdout=stdout, stderr=stderr,
                             reason=reason, seconds=seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _bwrap_args(source: str, runtime: str, work: str) -> list[str]:
    """The sandbox's whole world: read-only /usr and interpreter prefix, /sandbox, /dev, its own /proc."""
    args = [
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):  # merged-/usr links, or real folders
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += [
        "--ro-bind", source, runtime,
        "--proc", "/proc", "--dev", "/dev",
        "--bind", work, SCRATCH, "--chdir", SCRATCH,
        "--remount-ro", "/",
        "--clearenv",
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": SCRATCH, "TMPDIR": SCRATCH, "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args


def _interpreter(runtime: str) -> str:
    """This Python's own interpreter binary inside its prefix (a venv's python is a link to it)."""
    own = os.path.join(runtime, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")
    return own if os.path.exists(own) else os.path.realpath(sys.executable)


def _rlimits(limits: SandboxLimits) -> dict[str, tuple[int, int]]:
    """The launcher's child sets these before it becomes bubblewrap (as 65534, so NPROC holds)."""
    mb = 1024 * 1024
    return {
        "RLIMIT_CPU": (limits.cpu_s, limits.cpu_s + 1),
        "RLIMIT_AS": (limits.memory_mb * mb,) * 2,
        "RLIMIT_FSIZE": (limits.file_mb * mb,) * 2,
        "RLIMIT_NOFILE": (limits.max_open_files,) * 2,
        "RLIMIT_NPROC": (limits.max_procs,) * 2,
        "RLIMIT_CORE": (0, 0),
    }


def _reason(returncode: int | None, stderr: str, timed_out: bool) -> str | None:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return None
    if returncode is not None and 128 < returncode < 128 + 65:  # bubblewrap reports a signal as 128 + signal
        returncode = 128 - returncode
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu_limit"
    if returncode == -signal.SIGXFSZ or "[Errno 27] File too large" in stderr:  # Python ignores SIGXFSZ
        return "file_size_limit"
    if "MemoryError" in stderr:
        return "memory_limit"
    if "PermissionError: sandbox:" in stderr:
        return "sandbox_violation"
    return "signal" if returncode is not None and returncode < 0 else "exit_code"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_head(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit * 4).decode("utf-8", "replace")[:limit]
