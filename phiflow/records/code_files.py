"""Code repositories -> source files: the per-input part of the code source (pure, no Spark).

An input unit is a git repository (working tree or bare: the committed HEAD tree is read, never
the checkout, so both read alike), a source tarball or zip, or a Parquet/JSONL table shaped like
The Stack (one row per file). Every file becomes a `SourceFile`; whatever cannot be read becomes
an `InputProblem` with a named reason, so a bad input is counted and reported, never raised.

`dependency_order` orders one repository's files so that a file follows what it imports, the
order in which a repository is concatenated into one long-context document.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import json
import lzma
import os
import posixpath
import re
import stat
import subprocess
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

# Reasons an input or one of its files is skipped (code_rules.DROP_REASONS lists these too).
EMPTY_REPOSITORY = "empty_repository"
CORRUPT_ARCHIVE = "corrupt_archive"  # also a git repository whose objects cannot be read
CORRUPT_FILE = "corrupt_file"
BAD_ROW = "bad_row"
DUPLICATE_PATH = "duplicate_path"
TOO_LARGE = "too_large"

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip")
TABLE_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")
# The Stack's column names (v1 `max_stars_*`, v2 `repo_name`, `detected_licenses`), first present wins.
REPO_COLUMNS = ("repo", "repo_name", "max_stars_repo_name")
PATH_COLUMNS = ("path", "max_stars_repo_path")
CONTENT_COLUMNS = ("content",)
LICENSE_COLUMNS = ("license", "licenses", "detected_licenses", "max_stars_repo_licenses")
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)
GIT = ("git", "-c", "safe.directory=*")  # inputs may belong to another user (a mounted volume)
GIT_FILE_MODES = {b"100644", b"100755", b"100664"}  # 120000 symlinks and 160000 submodules are skipped


@dataclass(frozen=True)
class SourceFile:
    repo: str
    path: str  # relative to the repository root, `/`-separated
    data: bytes
    blob_sha: str  # git blob sha1 of data, as `git hash-object` prints it
    origin: str  # where this file can be found again: `git+<dir>@<commit>:<path>`, `<tar>!/<member>`, `<table>#row=N`
    license_hint: str | None = None  # SPDX id the input gives (The Stack's license column)


@dataclass(frozen=True)
class InputProblem:
    """An input or file that was skipped; counted by reason and reported."""

    origin: str
    reason: str
    detail: str


def git_blob_sha(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


# -- input units -----------------------------------------------------------------------------
def _is_git(folder: str) -> bool:
    """A working tree (`.git` folder or worktree file) or a bare repository."""
    if os.path.exists(os.path.join(folder, ".git")):
        return True
    return os.path.isfile(os.path.join(folder, "HEAD")) and all(
        os.path.isdir(os.path.join(folder, d)) for d in ("objects", "refs")
    )


def _is_file_unit(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES + TABLE_SUFFIXES)


def list_inputs(root: str) -> list[str]:
    """Git repositories, archives and tables under `root`, sorted; other folders are descended into."""
    if os.path.isfile(root):
        return [root] if _is_file_unit(root) else []
    units: list[str] = []
    for folder, dirs, files in os.walk(root):
        if _is_git(folder):
            units.append(folder)
            dirs.clear()
            continue
        dirs.sort()
        units.extend(os.path.join(folder, f) for f in files if _is_file_unit(f))
    return sorted(units)


def read_input(unit: str, max_file_bytes: int) -> Iterator[SourceFile | InputProblem]:
    """Every file of one input unit, in input order; a path seen twice in one repository is a problem,
    and so is a repository or archive without a single file."""
    seen: set[tuple[str, str]] = set()
    empty = True
    for item in _read_unit(unit, max_file_bytes):
        empty = False
        if isinstance(item, SourceFile):
            key = (item.repo, item.path)
            if key in seen:
                yield InputProblem(item.origin, DUPLICATE_PATH, f"{item.repo}/{item.path} appears twice")
                continue
            seen.add(key)
        yield item
    if empty and not unit.lower().endswith(TABLE_SUFFIXES):
        yield InputProblem(os.path.abspath(unit), EMPTY_REPOSITORY, "no files")


def _read_unit(unit: str, max_file_bytes: int) -> Iterator[SourceFile | InputProblem]:
    name = unit.lower()
    if os.path.isdir(unit) and _is_git(unit):
        return _read_git(unit, max_file_bytes)
    if name.endswith(".zip"):
        return _read_zip(unit, max_file_bytes)
    if name.endswith(ARCHIVE_SUFFIXES):
        return _read_tar(unit, max_file_bytes)
    if name.endswith(".parquet"):
        return _read_parquet(unit, max_file_bytes)
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(unit, max_file_bytes)
    return iter([InputProblem(os.path.abspath(unit), CORRUPT_FILE, "not a repository, archive or table")])


def _too_large(origin: str, size: int, limit: int) -> InputProblem:
    return InputProblem(origin, TOO_LARGE, f"{size} bytes > {limit}")


# -- git ---------------------------------------------------------------------------------------
def _read_git(unit: str, max_file_bytes: int) -> Iterator[SourceFile | InputProblem]:
    """The files of HEAD's tree: `ls-tree` lists them with sizes, one `cat-file --batch` reads them."""
    folder = os.path.abspath(unit)
    name = os.path.basename(folder.rstrip("/"))
    repo = name[:-4] if name.endswith(".git") and len(name) > 4 else name
    git = [*GIT, "-C", folder]
    head = subprocess.run([*git, "rev-parse", "--verify", "-q", "HEAD^{commit}"], capture_output=True)
    if head.returncode != 0:
        yield InputProblem(folder, EMPTY_REPOSITORY, "no commit at HEAD")
        return
    commit = head.stdout.decode().strip()
    tree = subprocess.run([*git, "ls-tree", "-r", "-l", "-z", "--full-tree", commit], capture_output=True)
    if tree.returncode != 0:
        yield InputProblem(folder, CORRUPT_ARCHIVE, tree.stderr.decode(errors="replace").strip()[:500])
        return
    proc = subprocess.Popen([*git, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for entry in tree.stdout.split(b"\0"):
            meta, _, raw_path = entry.partition(b"\t")
            fields = meta.split()
            if len(fields) != 4 or fields[0] not in GIT_FILE_MODES or fields[1] != b"blob":
                continue
            path = raw_path.decode("utf-8", errors="replace")
            origin = f"git+{folder}@{commit}:{path}"
            size = int(fields[3])
            if size > max_file_bytes:
                yield _too_large(origin, size, max_file_bytes)
                continue
            # One request, one answer: the pipe never holds more than one object.
            proc.stdin.write(fields[2] + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3 or header[1] != b"blob":
                yield InputProblem(origin, CORRUPT_ARCHIVE, f"object {fields[2].decode()} cannot be read")
                if not header:  # git exited
                    return
                continue
            data = proc.stdout.read(int(header[2]) + 1)[:-1]
            yield SourceFile(repo, path, data, git_blob_sha(data), origin)
    except OSError as err:  # git died under us (broken pipe)
        yield InputProblem(folder, CORRUPT_ARCHIVE, f"git cat-file: {err}")
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()


# -- archives ----------------------------------------------------------------------------------
def _archive_stem(unit: str) -> str:
    """`six_1.16.0.orig.tar.gz` -> `six_1.16.0`: the repository name when members have no top folder."""
    name = os.path.basename(unit)
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.removesuffix(".orig")


def _member_name(name: str) -> str:
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name


def _split_top(name: str, top: str | None) -> str:
    return name[len(top) + 1 :] if top and name.startswith(top + "/") else name


def _read_tar(unit: str, max_file_bytes: int) -> Iterator[SourceFile | InputProblem]:
    """Members in archive order. The repository is the first member's top folder (a GitHub, sdist or
    Debian tarball has one), else the archive's name. Damage ends the archive with one problem."""
    path = os.path.abspath(unit)
    try:
        with tarfile.open(path, "r:*") as tf:
            top: str | None = None
            repo = ""
            for member in tf:
                name = _member_name(member.name).rstrip("/")
                if not name:
                    continue
                if not repo:
                    top = name.split("/")[0] if member.isdir() or "/" in name else None
                    repo = top or _archive_stem(unit)
                if not member.isreg():  # folders, symlinks, hard links, devices
                    continue
                origin = f"{path}!/{name}"
                if member.size > max_file_bytes:
                    yield _too_large(origin, member.size, max_file_bytes)
                    continue
                fh = tf.extractfile(member)
                data = fh.read() if fh else b""
                yield SourceFile(repo, _split_top(name, top), data, git_blob_sha(data), origin)
            # tarfile stops quietly at a missing or damaged header; a whole archive ends in a zero block.
            tf.fileobj.seek(tf.offset)
            end = tf.fileobj.read(tarfile.BLOCKSIZE)
            if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
                yield InputProblem(path, CORRUPT_ARCHIVE, f"no end-of-archive block at offset {tf.offset}")
    except ARCHIVE_ERRORS as err:
        yield InputProblem(path, CORRUPT_ARCHIVE, f"{type(err).__name__}: {err}")


def _read_zip(unit: str, max_file_bytes: int) -> Iterator[SourceFile | InputProblem]:
    """Members in archive order; the repository is their common top folder, else the archive's name."""
    path = os.path.abspath(unit)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [(i, _member_name(i.filename).rstrip("/")) for i in zf.infolist()]
            infos = [(i, n) for i, n in infos if n]
            tops = {n.split("/")[0] for _, n in infos}
            top = tops.pop() if len(tops) == 1 and all("/" in n or i.is_dir() for i, n in infos) else None
            repo = top or _archive_stem(unit)
            for info, name in infos:
                if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
                    continue
                origin = f"{path}!/{name}"
                if info.file_size > max_file_bytes:
                    yield _too_large(origin, info.file_size, max_file_bytes)
                    continue
                data = zf.read(info)
                yield SourceFile(repo, _split_top(name, top), data, git_blob_sha(data), origin)
    except ARCHIVE_ERRORS as err:
        yield InputProblem(path, CORRUPT_ARCHIVE, f"{type(err).__name__}: {err}")


# -- tables (The Stack) ------------------------------------------------------------------------
def _pick(names: list[str] | set[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _row_file(origin: str, row: dict, max_file_bytes: int) -> SourceFile | InputProblem:
    repo = row.get(_pick(row.keys(), REPO_COLUMNS) or "")
    path = row.get(_pick(row.keys(), PATH_COLUMNS) or "")
    content = row.get(_pick(row.keys(), CONTENT_COLUMNS) or "")
    if not isinstance(repo, str) or not repo or not isinstance(path, str) or not path:
        return InputProblem(origin, BAD_ROW, "no repository or path")
    if isinstance(content, str):
        data = content.encode("utf-8", errors="surrogatepass")  # a lone surrogate stays undecodable
    elif isinstance(content, bytes):
        data = content
    else:
        return InputProblem(origin, BAD_ROW, f"content is {type(content).__name__}")
    if len(data) > max_file_bytes:
        return _too_large(origin, len(data), max_file_bytes)
    hint = row.get(_pick(row.keys(), LICENSE_COLUMNS) or "")
    if isinstance(hint, list | tuple):
        hint = hint[0] if hint else None
    hint = hint if isinstance(hint, str) and hint.strip() else None
    return SourceFile(repo, path.lstrip("/"), data, git_blob_sha(data), origin, hint)


def _read_parquet(unit: str, max_file_bytes: int) -> Iterator[SourceFile | InputProblem]:
    path = os.path.abspath(unit)
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        columns = [c for group in (REPO_COLUMNS, PATH_COLUMNS, CONTENT_COLUMNS, LICENSE_COLUMNS) for c in group]
        if not (_pick(names, REPO_COLUMNS) and _pick(names, PATH_COLUMNS) and _pick(names, CONTENT_COLUMNS)):
            yield InputProblem(path, CORRUPT_FILE, f"no repository, path or content column in {sorted(names)}")
            return
        row_number = 0
        for batch in pf.iter_batches(batch_size=256, columns=[c for c in columns if c in names]):
            for row in batch.to_pylist():
                yield _row_file(f"{path}#row={row_number}", row, max_file_bytes)
                row_number += 1
    except (pa.ArrowException, OSError, ValueError) as err:
        yield InputProblem(path, CORRUPT_FILE, f"{type(err).__name__}: {err}")


def _read_jsonl(unit: str, max_file_bytes: int) -> Iterator[SourceFile | InputProblem]:
    path = os.path.abspath(unit)
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                origin = f"{path}#line={number}"
                try:
                    row = json.loads(line)
                except ValueError as err:
                    yield InputProblem(origin, BAD_ROW, f"not JSON: {err}")
                    continue
                if not isinstance(row, dict):
                    yield InputProblem(origin, BAD_ROW, "not a JSON object")
                    continue
                yield _row_file(origin, row, max_file_bytes)
    except (OSError, EOFError, zlib.error) as err:
        yield InputProblem(path, CORRUPT_FILE, f"{type(err).__name__}: {err}")


# -- dependency order --------------------------------------------------------------------------
PY_IMPORT_RE = re.compile(
    r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]*)|import[ \t]+([^\n#;]+))", re.M
)
C_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*(?:include|import)[ \t]*[<"]([^>"\n]+)[>"]', re.M)
C_LANGUAGES = {"C", "C++", "Cuda", "Objective-C", "Objective-C++"}


def _names(clause: str) -> list[str]:
    """`a as b, c` / `(a,\n b)` -> ["a", "c"]."""
    return [n.split()[0] for n in clause.strip("() \t\n").replace("\n", " ").split(",") if n.strip()]


class _Resolver:
    """Paths of one repository, indexed for import and include lookups."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.by_path = {p: i for i, p in reversed(list(enumerate(paths)))}
        self.modules: dict[str, list[int]] = {}
        self.by_base: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            self.by_base.setdefault(posixpath.basename(p), []).append(i)
            if p.endswith((".py", ".pyi")):
                parts = p.rsplit(".", 1)[0].split("/")
                if parts[-1] == "__init__":
                    parts.pop()
                for k in range(len(parts)):  # every suffix: `src/pkg/m.py` is pkg.m under a src/ layout
                    self.modules.setdefault(".".join(parts[k:]), []).append(i)

    def nearest(self, src: int, candidates: list[int]) -> int | None:
        """The candidate sharing most folders with the importing file, then the smallest path."""
        if not candidates:
            return None
        folders = self.paths[src].split("/")[:-1]

        def key(i: int) -> tuple[int, str]:
            shared = 0
            for a, b in zip(folders, self.paths[i].split("/")[:-1], strict=False):
                if a != b:
                    break
                shared += 1
            return -shared, self.paths[i]

        return min(candidates, key=key)

    def module_file(self, folder: str, dotted: str) -> int | None:
        base = posixpath.join(folder, *dotted.split(".")) if dotted else folder
        for p in (base + ".py", base + ".pyi", base + "/__init__.py"):
            if p in self.by_path:
                return self.by_path[p]
        return None

    def python(self, src: int, text: str) -> set[int]:
        found: set[int] = set()
        for rel, names, plain in PY_IMPORT_RE.findall(text):
            if plain:
                targets = [("", n) for n in _names(plain)]
            elif rel.startswith("."):
                dots = len(rel) - len(rel.lstrip("."))
                folder = posixpath.dirname(self.paths[src])
                for _ in range(dots - 1):
                    folder = posixpath.dirname(folder)
                mod = rel[dots:]
                hits = [self.module_file(folder, f"{mod}.{n}" if mod else n) for n in _names(names)]
                hits = [h for h in hits if h is not None] or [self.module_file(folder, mod)]
                found.update(h for h in hits if h is not None)
                continue
            else:
                targets = [(rel, n) for n in _names(names)]
            for base, name in targets:
                dotted = f"{base}.{name}" if base else name
                parts = dotted.split(".")
                for k in range(len(parts), 0, -1):  # the deepest module that exists
                    hit = self.nearest(src, self.modules.get(".".join(parts[:k]), []))
                    if hit is not None:
                        found.add(hit)
                        break
        return found

    def c(self, src: int, text: str) -> set[int]:
        found: set[int] = set()
        for inc in C_INCLUDE_RE.findall(text):
            inc = inc.strip()
            local = posixpath.normpath(posixpath.join(posixpath.dirname(self.paths[src]), inc))
            if local in self.by_path:
                found.add(self.by_path[local])
                continue
            tail = "/" + inc.lstrip("./")
            hits = [i for i in self.by_base.get(posixpath.basename(inc), []) if ("/" + self.paths[i]).endswith(tail)]
            hit = self.nearest(src, hits or self.by_base.get(posixpath.basename(inc), []))
            if hit is not None:
                found.add(hit)
        return found


def _components(deps: list[set[int]]) -> list[list[int]]:
    """Strongly connected components (Tarjan, iterative: deep import chains do not hit the recursion limit)."""
    n = len(deps)
    index, low, on_stack = [-1] * n, [0] * n, [False] * n
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, iter(sorted(deps[root])))]
        while work:
            v, it = work[-1]
            for w in it:
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, iter(sorted(deps[w]))))
                    break
                if on_stack[w]:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
    return out


def dependency_order(files: list[tuple[str, str, str]]) -> list[int]:
    """Indices of (path, language, text) so that a file comes after the files it imports or includes.

    Python imports (absolute, from any source root, and relative) and C-family `#include`s are
    resolved against the repository's own paths; other files have no edges. Files of an import
    cycle stay together, ordered by path; otherwise ties go by path.
    """
    paths = [p for p, _, _ in files]
    resolver = _Resolver(paths)
    deps: list[set[int]] = []
    for i, (path, language, text) in enumerate(files):
        if language == "Python" or path.endswith((".py", ".pyi")):
            found = resolver.python(i, text)
        elif language in C_LANGUAGES:
            found = resolver.c(i, text)
        else:
            found = set()
        found.discard(i)
        deps.append(found)
    comps = [sorted(c, key=lambda i: (paths[i], i)) for c in _components(deps)]
    comp_of = {i: k for k, comp in enumerate(comps) for i in comp}
    waiting = [0] * len(comps)  # dependencies of a component not yet placed
    dependents: list[set[int]] = [set() for _ in comps]
    for i, found in enumerate(deps):
        for d in found:
            a, b = comp_of[i], comp_of[d]
            if a != b and a not in dependents[b]:
                dependents[b].add(a)
                waiting[a] += 1
    ready = [(paths[c[0]], c[0], k) for k, c in enumerate(comps) if waiting[k] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, _, k = heapq.heappop(ready)
        order.extend(comps[k])
        for a in dependents[k]:
            waiting[a] -= 1
            if waiting[a] == 0:
                heapq.heappush(ready, (paths[comps[a][0]], comps[a][0], a))
    return order
